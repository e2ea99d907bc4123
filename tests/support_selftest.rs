//! The test support itself: each daemon really starts, authenticates, stops and
//! comes back with its data.

mod support;

use std::process::Stdio;
use std::time::Duration;

use support::mosquitto::{BrokerUser, Mosquitto};
use support::postgres::Postgres;
use support::redis::Redis;
use support::stack::Stack;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::Command;

/// The client side as an application sees it: TCP with the role's password.
async fn psql_over_tcp(url: &str) -> std::process::Output {
    Command::new("psql")
        .args(["-X", "-A", "-t", "-c", "SELECT current_user", url])
        .output()
        .await
        .expect("psql")
}

#[tokio::test]
async fn postgres_databases_password_auth_and_restart() {
    let mut pg = Postgres::start().await.expect("postgres");
    let first = pg.create_database().await.expect("db");
    let second = pg.create_database().await.expect("db");
    assert_ne!(first, second);
    let ok = psql_over_tcp(&first).await;
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&ok.stdout).trim(), "hubbub");
    let wrong = psql_over_tcp(&first.replace("hubbub-test-password", "wrong")).await;
    assert!(!wrong.status.success(), "a wrong password must be refused");

    let db = first.rsplit('/').next().expect("name").to_owned();
    pg.psql(&db, "CREATE TABLE t (x int); INSERT INTO t VALUES (42)")
        .await
        .expect("insert");
    pg.stop().await.expect("stop");
    assert!(TcpStream::connect(("127.0.0.1", pg.port())).await.is_err());
    pg.start_again().await.expect("start again");
    assert_eq!(
        pg.psql(&db, "SELECT x FROM t")
            .await
            .expect("select")
            .trim(),
        "42"
    );
}

#[tokio::test]
async fn several_postgres_servers_at_once() {
    let (a, b) = tokio::join!(Postgres::start(), Postgres::start());
    let (a, b) = (a.expect("a"), b.expect("b"));
    assert_ne!(a.port(), b.port());
    assert_eq!(a.psql("postgres", "SELECT 1").await.expect("a").trim(), "1");
    assert_eq!(b.psql("postgres", "SELECT 2").await.expect("b").trim(), "2");
}

async fn redis_command(port: u16, command: &str) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    stream
        .write_all(format!("{command}\r\n").as_bytes())
        .await
        .expect("write");
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).await.expect("read");
    line.trim().to_owned()
}

#[tokio::test]
async fn redis_password_stop_and_start() {
    let mut redis = Redis::start(Some("pw")).await.expect("redis");
    assert!(
        redis_command(redis.port(), "PING")
            .await
            .starts_with("-NOAUTH")
    );
    let mut stream = TcpStream::connect(("127.0.0.1", redis.port()))
        .await
        .expect("connect");
    stream
        .write_all(b"AUTH pw\r\nPING\r\n")
        .await
        .expect("write");
    let mut buf = vec![0u8; 64];
    tokio::time::sleep(Duration::from_millis(100)).await;
    let n = stream.read(&mut buf).await.expect("read");
    assert_eq!(&buf[..n], b"+OK\r\n+PONG\r\n");
    redis.stop().await.expect("stop");
    assert!(
        TcpStream::connect(("127.0.0.1", redis.port()))
            .await
            .is_err()
    );
    redis.start_again().await.expect("start");
    assert!(
        redis_command(redis.port(), "PING")
            .await
            .starts_with("-NOAUTH")
    );
}

/// Subscribes with mosquitto_sub, publishes with mosquitto_pub; returns what arrived.
async fn pub_sub(broker: &Mosquitto, sub_auth: &[&str], pub_auth: &[&str], topic: &str) -> String {
    let port = broker.port().to_string();
    let mut tls_args: Vec<String> = Vec::new();
    let host = if let Some(ca) = broker.ca_pem_path() {
        tls_args = vec!["--cafile".into(), ca.display().to_string()];
        "localhost"
    } else {
        "127.0.0.1"
    };
    let mut sub = Command::new("mosquitto_sub")
        .args([
            "-h", host, "-p", &port, "-t", "hubbub/#", "-C", "1", "-W", "3",
        ])
        .args(sub_auth)
        .args(&tls_args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("mosquitto_sub");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _ = Command::new("mosquitto_pub")
        .args([
            "-h", host, "-p", &port, "-t", topic, "-m", "hello", "-q", "1",
        ])
        .args(pub_auth)
        .args(&tls_args)
        .output()
        .await
        .expect("mosquitto_pub");
    let mut out = String::new();
    if let Some(mut stdout) = sub.stdout.take() {
        let _ = stdout.read_to_string(&mut out).await;
    }
    let _ = sub.wait().await;
    out.trim().to_owned()
}

#[tokio::test]
async fn mosquitto_anonymous_acl_and_tls() {
    let open = Mosquitto::start().await.expect("broker");
    assert_eq!(pub_sub(&open, &[], &[], "hubbub/chat/x").await, "hello");

    let users = vec![
        BrokerUser::new("chat", "chat-pw", &["topic write hubbub/chat/+"]),
        BrokerUser::new("broadcast", "bc-pw", &["topic read hubbub/#"]),
    ];
    let locked = Mosquitto::builder()
        .users(users.clone())
        .start()
        .await
        .expect("broker");
    let reader = ["-u", "broadcast", "-P", "bc-pw"];
    assert_eq!(
        pub_sub(
            &locked,
            &reader,
            &["-u", "chat", "-P", "chat-pw"],
            "hubbub/chat/x"
        )
        .await,
        "hello"
    );
    assert_eq!(
        pub_sub(
            &locked,
            &reader,
            &["-u", "chat", "-P", "chat-pw"],
            "hubbub/buffs"
        )
        .await,
        "",
        "the ACL forbids chat to publish buffs"
    );
    assert_eq!(
        pub_sub(&locked, &reader, &[], "hubbub/chat/x").await,
        "",
        "anonymous clients are refused"
    );

    let mut tls = Mosquitto::builder()
        .users(users)
        .tls()
        .start()
        .await
        .expect("broker");
    assert!(tls.url().starts_with("mqtts://localhost:"));
    assert_eq!(
        pub_sub(
            &tls,
            &reader,
            &["-u", "chat", "-P", "chat-pw"],
            "hubbub/chat/y"
        )
        .await,
        "hello"
    );
    tls.stop().await.expect("stop");
    tls.start_again().await.expect("start again");
    assert_eq!(
        pub_sub(
            &tls,
            &reader,
            &["-u", "chat", "-P", "chat-pw"],
            "hubbub/chat/z"
        )
        .await,
        "hello"
    );
}

/// The e2e topology's start-up on its own (PostgreSQL over TCP, Redis with a
/// password, Mosquitto with TLS, one process per role, HAProxy over HTTPS): what
/// `tests/run` also runs from a checkout in a mode-0700 directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_production_topology_starts_behind_haproxy() {
    let stack = Stack::start(1).await.expect("the stack starts");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    for path in [
        "/readyz",
        "/api/stats",
        "/api/buffs",
        "/api/chat/selftest/messages",
    ] {
        loop {
            let status = stack
                .client
                .get(stack.url(path))
                .send()
                .await
                .map(|r| r.status().as_u16());
            if status.as_ref().is_ok_and(|s| *s == 200) {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "GET {path} through HAProxy: {status:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let posted = stack
        .client
        .post(stack.url("/api/chat/selftest/messages"))
        .json(&serde_json::json!({"user": "selftest", "text": "hello"}))
        .send()
        .await
        .expect("post through HAProxy");
    assert_eq!(posted.status(), 201);
}
