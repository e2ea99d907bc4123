//! The `hubbub` binary itself: configuration precedence, redaction, migrate,
//! systemd notification and graceful shutdown.

mod support;

use std::os::unix::net::UnixDatagram;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use support::ports::free_port;
use support::postgres::Postgres;

const BIN: &str = env!("CARGO_BIN_EXE_hubbub");

/// Runs hubbub with a clean environment plus `vars`, in `dir`.
fn hubbub(dir: &std::path::Path, args: &[&str], vars: &[(&str, &str)]) -> Output {
    let mut command = Command::new(BIN);
    command.current_dir(dir).args(args).env_clear();
    if let Ok(path) = std::env::var("PATH") {
        command.env("PATH", path);
    }
    for (key, value) in vars {
        command.env(key, value);
    }
    command.output().expect("run hubbub")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn toml_value(config: &str, table: &str, key: &str) -> Option<String> {
    let parsed: toml::Table = config.parse().expect("check-config prints TOML");
    let value = match table {
        "" => parsed.get(key)?,
        table => parsed.get(table)?.get(key)?,
    };
    Some(match value {
        toml::Value::String(s) => s.clone(),
        other => other.to_string(),
    })
}

#[test]
fn defaults_then_file_then_environment() {
    let dir = tempfile::tempdir().expect("tempdir");
    let defaults = hubbub(dir.path(), &["check-config"], &[]);
    assert!(defaults.status.success(), "{}", stderr(&defaults));
    let text = stdout(&defaults);
    assert_eq!(
        toml_value(&text, "http", "listen").as_deref(),
        Some("127.0.0.1:8080")
    );
    assert_eq!(
        toml_value(&text, "admin", "listen").as_deref(),
        Some("127.0.0.1:9464")
    );
    assert_eq!(
        toml_value(&text, "http", "body_limit").as_deref(),
        Some("16384")
    );
    assert_eq!(
        toml_value(&text, "database", "migrate_on_start").as_deref(),
        Some("true")
    );

    let config = dir.path().join("hubbub.toml");
    std::fs::write(
        &config,
        "[http]\nlisten = \"127.0.0.1:7000\"\nbody_limit = 1000\n[visitors]\nowner_name = \"File Owner\"\n",
    )
    .expect("write config");
    let config_arg = config.to_str().expect("path");
    let from_file = hubbub(dir.path(), &["--config", config_arg, "check-config"], &[]);
    let text = stdout(&from_file);
    assert_eq!(
        toml_value(&text, "http", "listen").as_deref(),
        Some("127.0.0.1:7000")
    );
    assert_eq!(
        toml_value(&text, "visitors", "owner_name").as_deref(),
        Some("File Owner")
    );

    let from_env = hubbub(
        dir.path(),
        &["check-config"],
        &[
            ("HUBBUB_CONFIG", config_arg),
            ("HUBBUB_HTTP__LISTEN", "127.0.0.1:9000"),
            ("HUBBUB_DATABASE__MIGRATE_ON_START", "false"),
            ("HUBBUB_LOG_FORMAT", "json"),
        ],
    );
    assert!(from_env.status.success(), "{}", stderr(&from_env));
    let text = stdout(&from_env);
    assert_eq!(
        toml_value(&text, "http", "listen").as_deref(),
        Some("127.0.0.1:9000")
    );
    assert_eq!(
        toml_value(&text, "http", "body_limit").as_deref(),
        Some("1000"),
        "file value kept"
    );
    assert_eq!(
        toml_value(&text, "visitors", "owner_name").as_deref(),
        Some("File Owner")
    );
    assert_eq!(
        toml_value(&text, "database", "migrate_on_start").as_deref(),
        Some("false")
    );
}

#[test]
fn unknown_or_invalid_keys_exit_2_naming_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("bad.toml");
    std::fs::write(
        &config,
        "[http]\nlisten = \"127.0.0.1:1\"\nlisten_port = 5\n",
    )
    .expect("write");
    let output = hubbub(
        dir.path(),
        &["--config", config.to_str().expect("path"), "check-config"],
        &[],
    );
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("listen_port"),
        "{}",
        stderr(&output)
    );

    let output = hubbub(
        dir.path(),
        &["check-config"],
        &[("HUBBUB_HTTP__BODY_LIMT", "5")],
    );
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("body_limt"), "{}", stderr(&output));

    let output = hubbub(
        dir.path(),
        &["check-config"],
        &[("HUBBUB_HTTP__LISTEN", "not-an-address")],
    );
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("http.listen"),
        "{}",
        stderr(&output)
    );

    let output = hubbub(
        dir.path(),
        &["check-config"],
        &[("HUBBUB_DATABASE__URL", "mysql://x/y")],
    );
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("database.url"),
        "{}",
        stderr(&output)
    );

    let missing = hubbub(
        dir.path(),
        &["--config", "/nonexistent/hubbub.toml", "check-config"],
        &[],
    );
    assert_eq!(missing.status.code(), Some(2));
    assert!(stderr(&missing).contains("/nonexistent/hubbub.toml"));
}

#[test]
fn secrets_come_from_credential_files_and_are_never_printed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let credentials = dir.path().join("credentials");
    std::fs::create_dir(&credentials).expect("mkdir");
    std::fs::write(credentials.join("db-password"), "pg-secret-1\n").expect("write");
    std::fs::write(credentials.join("admin-tokens"), "token-a\ntoken-b\n").expect("write");
    let absolute = dir.path().join("salt");
    std::fs::write(&absolute, "salt-secret-3").expect("write");
    let config = dir.path().join("hubbub.toml");
    std::fs::write(
        &config,
        format!(
            "[database]\nurl = \"postgres://hubbub@db.internal/hubbub\"\npassword_file = \"db-password\"\n\
             [redis]\nurl = \"redis://:inline-redis-secret@cache:6379\"\n\
             [buffs]\nadmin_token_file = \"admin-tokens\"\n\
             [visitors]\nsalt_file = \"{}\"\n",
            absolute.display()
        ),
    )
    .expect("write config");
    let output = hubbub(
        dir.path(),
        &["--config", config.to_str().expect("path"), "check-config"],
        &[("CREDENTIALS_DIRECTORY", credentials.to_str().expect("path"))],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let text = stdout(&output);
    for secret in [
        "pg-secret-1",
        "token-a",
        "token-b",
        "salt-secret-3",
        "inline-redis-secret",
    ] {
        assert!(!text.contains(secret), "{secret} leaked:\n{text}");
    }
    assert_eq!(
        toml_value(&text, "database", "password").as_deref(),
        Some("<redacted>")
    );
    assert_eq!(
        toml_value(&text, "buffs", "admin_token").as_deref(),
        Some("<redacted>")
    );
    assert_eq!(
        toml_value(&text, "visitors", "salt").as_deref(),
        Some("<redacted>")
    );
    assert!(
        toml_value(&text, "redis", "url")
            .expect("redis url")
            .contains("redacted")
    );

    // A missing credential names the key and the file, not a value.
    std::fs::remove_file(credentials.join("db-password")).expect("rm");
    let output = hubbub(
        dir.path(),
        &["--config", config.to_str().expect("path"), "check-config"],
        &[("CREDENTIALS_DIRECTORY", credentials.to_str().expect("path"))],
    );
    assert_eq!(output.status.code(), Some(2));
    let err = stderr(&output);
    assert!(
        err.contains("database.password_file") && err.contains("db-password"),
        "{err}"
    );
}

#[test]
fn migrate_status_then_apply_on_sqlite() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let vars = [("STATE_DIRECTORY", state.to_str().expect("path"))];
    let before = hubbub(dir.path(), &["migrate", "--status"], &vars);
    assert!(before.status.success(), "{}", stderr(&before));
    assert!(
        stdout(&before).contains("pending m20261122_000001_create_visitors"),
        "{}",
        stdout(&before)
    );
    let apply = hubbub(dir.path(), &["migrate"], &vars);
    assert!(apply.status.success(), "{}", stderr(&apply));
    let after = hubbub(dir.path(), &["migrate", "--status"], &vars);
    assert!(stdout(&after).contains("applied m20261122_000001_create_visitors"));
    assert!(
        state.join("hubbub.db").exists(),
        "SQLite lives in the state directory"
    );
}

#[test]
fn version_names_build_and_commit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let output = hubbub(dir.path(), &["--version"], &[]);
    let text = stdout(&output);
    assert!(
        text.starts_with(&format!("hubbub {}", env!("CARGO_PKG_VERSION"))),
        "{text}"
    );
    assert!(
        text.contains("build ") && text.contains("commit "),
        "{text}"
    );
}

/// Under systemd: READY=1 once listening, STOPPING=1 on SIGTERM, then a clean exit.
#[test]
fn notifies_systemd_and_shuts_down_gracefully_on_sigterm() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).expect("bind notify socket");
    socket
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let port = free_port();
    let admin_port = free_port();
    let child = Command::new(BIN)
        .current_dir(dir.path())
        .args(["serve", "visitors"])
        .env("NOTIFY_SOCKET", &socket_path)
        .env("STATE_DIRECTORY", dir.path().join("state"))
        .env("HUBBUB_HTTP__LISTEN", format!("127.0.0.1:{port}"))
        .env("HUBBUB_ADMIN__LISTEN", format!("127.0.0.1:{admin_port}"))
        .env("HUBBUB_LOG_FORMAT", "json")
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn hubbub");

    let mut buf = [0u8; 256];
    let n = socket.recv(&mut buf).expect("READY=1 within 20 s");
    assert_eq!(buf[..n].trim_ascii(), b"READY=1");
    // Ready means listening.
    std::net::TcpStream::connect(("127.0.0.1", port)).expect("listening when READY=1 is sent");

    let started = Instant::now();
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill")
            .success()
    );
    let n = socket.recv(&mut buf).expect("STOPPING=1");
    assert_eq!(buf[..n].trim_ascii(), b"STOPPING=1");
    let output = child.wait_with_output().expect("wait");
    assert!(output.status.success(), "exit status {:?}", output.status);
    assert!(started.elapsed() < Duration::from_secs(10));
    let logs = String::from_utf8_lossy(&output.stderr);
    let first = logs.lines().next().expect("a log line");
    let json: serde_json::Value =
        serde_json::from_str(first).expect("HUBBUB_LOG_FORMAT=json gives JSON lines");
    assert!(json.get("level").is_some(), "{first}");
}

/// systemd may stop a unit the moment it reported `READY=1`: that SIGTERM must
/// already find the handler (a graceful stop: STOPPING=1, exit 0), not the default
/// action that kills the process. Repeated, because it is a race.
#[test]
fn a_sigterm_right_after_ready_is_a_graceful_stop() {
    for round in 0..20 {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket_path = dir.path().join("notify.sock");
        let socket = UnixDatagram::bind(&socket_path).expect("bind notify socket");
        socket
            .set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        let child = Command::new(BIN)
            .current_dir(dir.path())
            .args(["serve", "visitors"])
            .env("NOTIFY_SOCKET", &socket_path)
            .env("STATE_DIRECTORY", dir.path().join("state"))
            .env("HUBBUB_HTTP__LISTEN", "127.0.0.1:0")
            .env("HUBBUB_ADMIN__LISTEN", "127.0.0.1:0")
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn hubbub");
        let mut buf = [0u8; 256];
        let n = socket.recv(&mut buf).expect("READY=1 within 20 s");
        assert_eq!(buf[..n].trim_ascii(), b"READY=1");
        // SAFETY: kill(2) on our own child, not yet reaped.
        unsafe {
            libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
        }
        let stopping = socket
            .recv(&mut buf)
            .map(|n| buf[..n].trim_ascii().to_vec());
        let output = child.wait_with_output().expect("wait");
        assert!(
            output.status.success() && stopping.as_deref().ok() == Some(&b"STOPPING=1"[..]),
            "round {round}: exit {:?}, notification {stopping:?}",
            output.status
        );
    }
}

/// A secret set in the environment is taken as the text it is, whatever it looks
/// like; a secret of the wrong type in the file is refused without showing it.
#[test]
fn secrets_of_any_type_never_appear_in_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    // figment would read these as a number, a boolean, a list: here they are text.
    for (key, value) in [
        ("HUBBUB_DATABASE__PASSWORD", "84729110"),
        ("HUBBUB_REDIS__PASSWORD", "true"),
        ("HUBBUB_VISITORS__SALT", "[84729110]"),
        ("HUBBUB_BUFFS__ADMIN_TOKEN", "{a = 84729110}"),
    ] {
        let output = hubbub(
            dir.path(),
            &["check-config"],
            &[
                (key, value),
                ("HUBBUB_DATABASE__URL", "postgres://hubbub@db/hubbub"),
                ("HUBBUB_REDIS__URL", "redis://cache:6379"),
            ],
        );
        let shown = format!("{}{}", stdout(&output), stderr(&output));
        assert!(output.status.success(), "{key}={value}: {shown}");
        assert!(!shown.contains("84729110"), "{key}={value}: {shown}");
    }
    // The exact text: `007` stays `007` (figment alone makes it the number 7).
    let output = hubbub(
        dir.path(),
        &["check-config"],
        &[
            ("HUBBUB_MQTT__URL", "mqtt://broker:1883"),
            ("HUBBUB_MQTT__USERNAME", "007"),
        ],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(
        toml_value(&stdout(&output), "mqtt", "username").as_deref(),
        Some("007")
    );

    for (toml, key) in [
        ("[database]\npassword = 84729110\n", "database.password"),
        ("[visitors]\nsalt = 84729110.5\n", "visitors.salt"),
        (
            "[buffs]\nadmin_token = [\"84729110\"]\n",
            "buffs.admin_token",
        ),
        ("[mqtt]\npassword = { v = \"84729110\" }\n", "mqtt.password"),
        ("[redis]\nurl = 84729110\n", "redis.url"),
    ] {
        let config = dir.path().join("typed.toml");
        std::fs::write(&config, toml).expect("write");
        let output = hubbub(
            dir.path(),
            &["--config", config.to_str().expect("path"), "check-config"],
            &[],
        );
        let err = stderr(&output);
        assert_eq!(output.status.code(), Some(2), "{toml}: {err}");
        assert!(err.contains(key), "{toml}: {err}");
        assert!(!err.contains("84729110"), "{toml}: {err}");
    }
}

/// A table that holds secrets given as a value of another type (a URL where
/// `[database]` belongs, say): the error names the key, never the value.
#[test]
fn a_secret_table_of_the_wrong_type_is_refused_without_showing_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (toml, key) in [
        ("database = \"postgres://u:hunter2@h/db\"\n", "database"),
        ("visitors = \"hunter2\"\n", "visitors"),
        ("buffs = 84729110\n", "buffs"),
    ] {
        let config = dir.path().join("table.toml");
        std::fs::write(&config, toml).expect("write");
        let output = hubbub(
            dir.path(),
            &["--config", config.to_str().expect("path"), "check-config"],
            &[],
        );
        let err = stderr(&output);
        assert_eq!(output.status.code(), Some(2), "{toml}: {err}");
        assert!(err.contains(&format!("`{key}`")), "{toml}: {err}");
        assert!(
            !err.contains("hunter2") && !err.contains("84729110"),
            "{toml}: {err}"
        );
    }
    for (variable, value) in [
        ("HUBBUB_REDIS", "redis://:hunter2@cache:6379"),
        ("HUBBUB_MQTT", "mqtts://hubbub:hunter2@broker:8883"),
    ] {
        let output = hubbub(dir.path(), &["check-config"], &[(variable, value)]);
        let err = stderr(&output);
        assert_eq!(output.status.code(), Some(2), "{variable}: {err}");
        assert!(!err.contains("hunter2"), "{variable}: {err}");
    }
}

/// Passwords in URLs (userinfo and query) are hidden by check-config, and a
/// parameter the driver would log with its value is refused by name.
#[test]
fn passwords_in_url_queries_are_redacted() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A fragment (ignored by the driver) and libpq's `options` may hold one too.
    for url in [
        "postgres://u@h/db#password=hunter2",
        "postgres://u@h/db?options=-c%20app.password%3Dhunter2&sslmode=require",
    ] {
        let output = hubbub(
            dir.path(),
            &["check-config"],
            &[("HUBBUB_DATABASE__URL", url)],
        );
        let text = stdout(&output);
        assert!(output.status.success(), "{url}: {}", stderr(&output));
        assert!(!text.contains("hunter2"), "{url}: {text}");
    }
    let output = hubbub(
        dir.path(),
        &["check-config"],
        &[(
            "HUBBUB_DATABASE__URL",
            "postgres://u@h/db?password=hunter2&sslkey=/run/keys/client.key&sslmode=require",
        )],
    );
    let text = stdout(&output);
    assert!(output.status.success(), "{}", stderr(&output));
    let url = toml_value(&text, "database", "url").expect("database.url");
    assert!(
        !text.contains("hunter2") && !text.contains("client.key"),
        "{text}"
    );
    assert!(
        url.contains("sslmode=require") && url.contains("redacted"),
        "{url}"
    );

    let output = hubbub(
        dir.path(),
        &["check-config"],
        &[(
            "HUBBUB_DATABASE__URL",
            "postgres://u@h/db?sslpassword=hunter2",
        )],
    );
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(2), "{err}");
    assert!(
        err.contains("sslpassword") && !err.contains("hunter2"),
        "{err}"
    );
}

/// What `migrate` logs and prints while it cannot reach PostgreSQL, with the
/// password in the URL's userinfo and in its query: never the password.
#[test]
fn database_errors_never_show_the_password() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    for url in [
        format!("postgres://hubbub:hunter2@127.0.0.1:{port}/hubbub"),
        format!("postgres://hubbub@127.0.0.1:{port}/hubbub?password=hunter2"),
    ] {
        let output = hubbub(
            dir.path(),
            &["migrate"],
            &[
                ("HUBBUB_DATABASE__URL", &url),
                ("HUBBUB_DATABASE__STARTUP_WAIT_SECS", "1"),
                ("HUBBUB_DATABASE__ACQUIRE_TIMEOUT_MS", "300"),
                ("RUST_LOG", "trace"),
            ],
        );
        let shown = format!("{}{}", stdout(&output), stderr(&output));
        assert_eq!(output.status.code(), Some(75), "{shown}");
        assert!(shown.contains("waiting for the database"), "{shown}");
        assert!(!shown.contains("hunter2"), "{shown}");
    }
}

/// A relay to `target` that holds every connection `delay` before passing it on:
/// a database that answers slowly (a loaded or booting host).
async fn slow_relay(target: u16, delay: Duration) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the relay");
    let port = listener.local_addr().expect("relay address").port();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                if let Ok(mut server) = tokio::net::TcpStream::connect(("127.0.0.1", target)).await
                {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                }
            });
        }
    });
    port
}

/// sea-orm records its connect options, the URL included, in a trace-level span
/// around the first connection, and sqlx logs a first connection slower than 2 s
/// inside that span: with `RUST_LOG=trace` and a database that answers slowly,
/// the log line must not carry the password, however it was given (userinfo,
/// percent-encoded; `?password=`; `database.password_file`).
#[tokio::test(flavor = "multi_thread")]
async fn trace_logs_of_a_slow_connection_never_show_the_password() {
    // Characters that must be percent-encoded in a URL: the password reaches
    // PostgreSQL decoded, or migrate --status fails.
    const PASSWORD: &str = "s3cr@t/p%ss:w0rd";
    const ENCODED: &str = "s3cr%40t%2Fp%25ss%3Aw0rd";
    let postgres = Postgres::start().await.expect("postgres");
    let url = postgres.create_database().await.expect("database");
    let database = url.rsplit('/').next().expect("database name").to_owned();
    postgres
        .psql(
            "postgres",
            &format!("ALTER ROLE hubbub PASSWORD '{PASSWORD}'"),
        )
        .await
        .expect("set the password");
    let port = slow_relay(postgres.port(), Duration::from_millis(2500)).await;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("db-password"), PASSWORD).expect("password file");
    let credentials = dir.path().to_str().expect("path").to_owned();
    let base = format!("127.0.0.1:{port}/{database}");
    for (url, password_file) in [
        (format!("postgres://hubbub:{ENCODED}@{base}"), None),
        (format!("postgres://hubbub@{base}?password={ENCODED}"), None),
        (format!("postgres://hubbub@{base}"), Some("db-password")),
    ] {
        let mut command = tokio::process::Command::new(BIN);
        command
            .current_dir(dir.path())
            .args(["migrate", "--status"])
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HUBBUB_DATABASE__URL", &url)
            .env("HUBBUB_DATABASE__ACQUIRE_TIMEOUT_MS", "20000")
            .env("HUBBUB_DATABASE__STARTUP_WAIT_SECS", "60")
            .env("CREDENTIALS_DIRECTORY", &credentials)
            .env("RUST_LOG", "trace");
        if let Some(file) = password_file {
            command.env("HUBBUB_DATABASE__PASSWORD_FILE", file);
        }
        let output = tokio::time::timeout(Duration::from_secs(60), command.output())
            .await
            .expect("migrate --status within 60 s")
            .expect("run hubbub");
        let shown = format!("{}{}", stdout(&output), stderr(&output));
        assert!(output.status.success(), "{url}: {shown}");
        // The event inside sea-orm's span did happen (what this test is about).
        assert!(
            shown.contains("time to acquire exceeded slow threshold"),
            "{url}: no slow-connection event:\n{shown}"
        );
        for secret in [PASSWORD, ENCODED] {
            assert!(!shown.contains(secret), "{url}: {secret} in\n{shown}");
        }
    }
}

/// Started by hand with a low soft limit of open files (here 256) under a higher
/// hard limit, `hubbub serve` raises its soft limit to the hard one, as a broadcast
/// instance with thousands of SSE clients needs.
#[test]
fn serve_raises_its_open_files_soft_limit_to_the_hard_limit() {
    fn soft_limit(pid: u32) -> Option<String> {
        std::fs::read_to_string(format!("/proc/{pid}/limits"))
            .ok()?
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .and_then(|l| l.split_whitespace().nth(3).map(str::to_owned))
    }
    let low = "ulimit -Sn 256 && exec \"$0\" \"$@\"";
    let hard = String::from_utf8_lossy(
        &Command::new("sh")
            .args(["-c", "ulimit -Hn"])
            .output()
            .expect("sh")
            .stdout,
    )
    .trim()
    .to_owned();
    assert_ne!(hard, "256", "the test needs a hard limit above 256");
    // The control: what a process started that way has without raising it.
    let mut control = Command::new("sh")
        .args(["-c", low, "sleep", "10"])
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(10);
    while soft_limit(control.id()).as_deref() != Some("256") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(soft_limit(control.id()).as_deref(), Some("256"));
    let _ = control.kill();
    let _ = control.wait();

    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let mut child = Command::new("sh")
        .args(["-c", low, BIN, "serve", "visitors"])
        .current_dir(dir.path())
        .env("STATE_DIRECTORY", dir.path())
        .env("HUBBUB_HTTP__LISTEN", format!("127.0.0.1:{port}"))
        .env("HUBBUB_ADMIN__LISTEN", format!("127.0.0.1:{}", free_port()))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    // Listening means started: the limit is raised before anything else.
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let soft = soft_limit(child.id());
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(soft, Some(hard), "soft limit raised to the hard limit");
}
