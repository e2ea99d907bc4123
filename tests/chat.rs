//! Chat and the SSE broadcast against real PostgreSQL, Mosquitto (password + ACL,
//! and TLS) and Redis; and the embedded mode.

mod support;

use std::time::Duration;

use hubbub::domain::Role;
use serde_json::{Value, json};
use support::app::{TestApp, metric_value, spawn_app, spawn_roles};
use support::mosquitto::{BrokerUser, Mosquitto};
use support::postgres::Postgres;
use support::redis::Redis;
use support::sse::SseClient;

const WAIT: Duration = Duration::from_secs(10);

fn broker_users() -> Vec<BrokerUser> {
    vec![
        BrokerUser::new("chat", "chat-pw", &["topic write hubbub/chat/+"]),
        BrokerUser::new("broadcast", "broadcast-pw", &["topic read hubbub/#"]),
    ]
}

/// Config for one role process: PostgreSQL, the broker as `user`, extra TOML.
fn config(db_url: &str, broker: &Mosquitto, user: &str, extra: &str) -> String {
    let ca = broker
        .ca_pem_path()
        .map(|p| format!("ca_file = \"{}\"\n", p.display()))
        .unwrap_or_default();
    format!(
        "[database]\nurl = \"{db_url}\"\n\n[mqtt]\nurl = \"{}\"\nusername = \"{user}\"\npassword = \"{user}-pw\"\n{ca}\n[visitors]\nsalt = \"s\"\n{extra}",
        broker.url()
    )
}

struct Stack {
    _pg: Postgres,
    broker: Mosquitto,
    db_url: String,
    chat: TestApp,
    broadcast: TestApp,
}

async fn stack(tls: bool) -> Stack {
    let pg = Postgres::start().await.expect("postgres");
    let db_url = pg.create_database().await.expect("database");
    let mut builder = Mosquitto::builder().users(broker_users());
    if tls {
        builder = builder.tls();
    }
    let broker = builder.start().await.expect("mosquitto");
    let chat = spawn_roles(&config(&db_url, &broker, "chat", ""), &[Role::Chat])
        .await
        .expect("chat");
    let broadcast = spawn_roles(
        &config(&db_url, &broker, "broadcast", ""),
        &[Role::Broadcast],
    )
    .await
    .expect("broadcast");
    wait_for_mqtt(&broadcast).await;
    Stack {
        _pg: pg,
        broker,
        db_url,
        chat,
        broadcast,
    }
}

/// Waits until the app's broker connection is up (its subscriptions follow at once).
async fn wait_for_mqtt(app: &TestApp) {
    for _ in 0..100 {
        if metric_value(&app.metrics().await, "hubbub_mqtt_connected") == 1.0 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no MQTT connection");
}

async fn post(app: &TestApp, channel: &str, user: &str, text: &str) -> reqwest::Response {
    app.client
        .post(app.url(&format!("/api/chat/{channel}/messages")))
        .json(&json!({ "user": user, "text": text }))
        .send()
        .await
        .expect("post")
}

/// A post sent in the background; its status once it is answered.
fn spawn_post(
    app: &TestApp,
    channel: &str,
    text: &str,
) -> tokio::task::JoinHandle<reqwest::StatusCode> {
    let request = app
        .client
        .post(app.url(&format!("/api/chat/{channel}/messages")))
        .json(&json!({"user": "alice", "text": text}));
    tokio::spawn(async move { request.send().await.expect("post").status() })
}

async fn post_ok(app: &TestApp, channel: &str, text: &str) -> i64 {
    let response = post(app, channel, "alice", text).await;
    assert_eq!(response.status(), 201);
    let body: Value = response.json().await.expect("json");
    body["id"].as_i64().expect("id")
}

async fn events(app: &TestApp, channel: &str, last: Option<i64>) -> SseClient {
    SseClient::connect(&app.url(&format!("/api/chat/{channel}/events")), last)
        .await
        .expect("sse")
}

#[tokio::test]
async fn post_history_and_live_delivery_through_mosquitto_with_acl() {
    let s = stack(false).await;
    let mut general = events(&s.broadcast, "general", None).await;
    assert_eq!(general.headers["content-type"], "text/event-stream");
    assert_eq!(general.headers["cache-control"], "no-cache");
    assert_eq!(general.headers["x-accel-buffering"], "no");
    let mut other = events(&s.broadcast, "other", None).await;

    let response = post(&s.chat, "general", "  alice ", "hello <b>world</b>").await;
    assert_eq!(response.status(), 201);
    let stored: Value = response.json().await.expect("json");
    assert_eq!(stored["channel"], "general");
    assert_eq!(stored["user"], "alice", "trimmed");
    assert_eq!(stored["text"], "hello <b>world</b>");
    assert!(
        chrono::DateTime::parse_from_rfc3339(stored["sent_at"].as_str().expect("sent_at")).is_ok()
    );

    let live = general.next_message(WAIT).await.expect("live message");
    assert_eq!(live.data, stored, "SSE carries exactly the stored message");
    assert_eq!(live.id, stored["id"].as_i64().expect("id"));

    let other_id = post_ok(&s.chat, "other", "elsewhere").await;
    assert_eq!(other.next_message(WAIT).await.expect("other").id, other_id);
    assert!(
        general
            .next_message(Duration::from_millis(500))
            .await
            .is_none(),
        "channels stay apart"
    );

    let mut ids = vec![live.id];
    for i in 0..5 {
        ids.push(post_ok(&s.chat, "general", &format!("m{i}")).await);
    }
    let history: Vec<Value> = s
        .chat
        .get("/api/chat/general/messages")
        .await
        .json()
        .await
        .expect("json");
    let history_ids: Vec<i64> = history
        .iter()
        .map(|m| m["id"].as_i64().expect("id"))
        .collect();
    assert_eq!(history_ids, ids, "ascending, only this channel");
    let page: Vec<Value> = s
        .chat
        .get(&format!(
            "/api/chat/general/messages?before={}&limit=2",
            ids[4]
        ))
        .await
        .json()
        .await
        .expect("json");
    let page_ids: Vec<i64> = page.iter().map(|m| m["id"].as_i64().expect("id")).collect();
    assert_eq!(page_ids, vec![ids[2], ids[3]]);
    assert_eq!(general.ids(5, WAIT).await, ids[1..].to_vec());

    let metrics = s.chat.metrics().await;
    assert_eq!(
        metric_value(&metrics, "hubbub_chat_messages_posted_total"),
        7.0
    );
    assert_eq!(
        metric_value(&s.broadcast.metrics().await, "hubbub_sse_clients"),
        2.0
    );
}

/// Raw requests to the broadcast instance, as clients other than EventSource
/// send them: an HTTP/1.0 client gets a plain stream (no chunked framing: the
/// stream's members are written chunks, so it must stay out of them), a HEAD
/// request only the headers, and an HTTP/1.1 one well-formed chunks.
#[tokio::test]
async fn http_1_0_and_head_requests_get_well_formed_streams() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn open(s: &Stack, request: &str) -> tokio::net::TcpStream {
        let address = s.broadcast.address.trim_start_matches("http://");
        let mut socket = tokio::net::TcpStream::connect(address)
            .await
            .expect("connect");
        socket.write_all(request.as_bytes()).await.expect("request");
        socket
    }
    /// What came until `needle` did (or the connection ended).
    async fn until(socket: &mut tokio::net::TcpStream, got: &mut Vec<u8>, needle: &str) {
        let mut buffer = [0u8; 8192];
        while !String::from_utf8_lossy(got).contains(needle) {
            match tokio::time::timeout(WAIT, socket.read(&mut buffer))
                .await
                .expect("in time")
            {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buffer[..n]),
            }
        }
    }

    let s = stack(false).await;
    let path = "/api/chat/raw/events";
    let mut old = open(&s, &format!("GET {path} HTTP/1.0\r\n\r\n")).await;
    let mut new = open(&s, &format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n")).await;
    let (mut old_got, mut new_got) = (Vec::new(), Vec::new());
    until(&mut old, &mut old_got, "retry:2000\n\n").await;
    until(&mut new, &mut new_got, "retry:2000\n\n").await;
    // Both caught up (and the HTTP/1.1 one a member) by the time these arrive.
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(post_ok(&s.chat, "raw", &format!("m{i}")).await);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let last = format!("id:{}\n\n", ids[2]);
    until(&mut old, &mut old_got, &last).await;
    until(&mut new, &mut new_got, &last).await;

    let old_text = String::from_utf8_lossy(&old_got).into_owned();
    let (head, body) = old_text.split_once("\r\n\r\n").expect("head");
    assert!(head.starts_with("HTTP/1.0 200"), "{head}");
    assert!(!head.to_lowercase().contains("transfer-encoding"), "{head}");
    let expected: String = ids
        .iter()
        .map(|id| format!("id:{id}\n\n"))
        .collect::<Vec<_>>()
        .join("|");
    let got: Vec<String> = body
        .split("\n\n")
        .filter_map(|event| event.lines().find(|l| l.starts_with("id:")))
        .map(|id| format!("{id}\n\n"))
        .collect();
    assert_eq!(
        got.join("|"),
        expected,
        "a plain stream of the events: {body:?}"
    );
    assert!(
        body.starts_with("retry:2000\n\nevent:message\ndata:"),
        "{body:?}"
    );

    let new_text = String::from_utf8_lossy(&new_got).into_owned();
    let (head, mut rest) = new_text.split_once("\r\n\r\n").expect("head");
    assert!(
        head.to_lowercase().contains("transfer-encoding: chunked"),
        "{head}"
    );
    let mut events = String::new();
    while !rest.is_empty() {
        let (size, after) = rest.split_once("\r\n").expect("a chunk size line");
        let size = usize::from_str_radix(size, 16).expect("a chunk size");
        events.push_str(&after[..size]);
        assert_eq!(&after[size..size + 2], "\r\n", "a chunk's end");
        rest = &after[size + 2..];
    }
    assert!(events.ends_with(&last), "{events:?}");

    let mut head_only = open(&s, &format!("HEAD {path} HTTP/1.1\r\nHost: x\r\n\r\n")).await;
    let mut got = Vec::new();
    until(&mut head_only, &mut got, "\r\n\r\n").await;
    post_ok(&s.chat, "raw", "after head").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut more = [0u8; 1024];
    let extra = tokio::time::timeout(Duration::from_millis(300), head_only.read(&mut more)).await;
    assert!(
        !matches!(extra, Ok(Ok(n)) if n > 0),
        "HEAD got a body: {:?}",
        extra.map(|r| r.map(|n| String::from_utf8_lossy(&more[..n]).into_owned()))
    );
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.ends_with("\r\n\r\n"), "{text}");
}

#[tokio::test]
async fn resume_with_last_event_id_gets_exactly_the_missed_messages() {
    let s = stack(false).await;
    let mut client = events(&s.broadcast, "room", None).await;
    let first = post_ok(&s.chat, "room", "first").await;
    assert_eq!(client.next_message(WAIT).await.expect("first").id, first);
    drop(client);

    let mut missed = Vec::new();
    for i in 0..4 {
        missed.push(post_ok(&s.chat, "room", &format!("missed {i}")).await);
    }
    let mut resumed = events(&s.broadcast, "room", Some(first)).await;
    assert_eq!(resumed.ids(4, WAIT).await, missed);
    let later = post_ok(&s.chat, "room", "live again").await;
    assert_eq!(resumed.ids(1, WAIT).await, vec![later]);
    assert!(
        resumed
            .next_message(Duration::from_millis(500))
            .await
            .is_none(),
        "no duplicates"
    );

    // The query form, for clients that cannot set headers.
    let url = s.broadcast.url(&format!(
        "/api/chat/room/events?last_event_id={}",
        missed[1]
    ));
    let mut by_query = SseClient::connect(&url, None).await.expect("sse");
    assert_eq!(
        by_query.ids(3, WAIT).await,
        vec![missed[2], missed[3], later]
    );

    let bad = s
        .broadcast
        .client
        .get(s.broadcast.url("/api/chat/room/events"))
        .header("last-event-id", "abc")
        .send()
        .await
        .expect("request");
    assert_eq!(bad.status(), 400);
}

#[tokio::test]
async fn two_broadcast_instances_deliver_everything() {
    let s = stack(false).await;
    let second = spawn_roles(
        &config(&s.db_url, &s.broker, "broadcast", ""),
        &[Role::Broadcast],
    )
    .await
    .expect("second broadcast");
    wait_for_mqtt(&second).await;
    let mut on_first = events(&s.broadcast, "fanout", None).await;
    let mut on_second = events(&second, "fanout", None).await;
    let mut ids = Vec::new();
    for i in 0..10 {
        ids.push(post_ok(&s.chat, "fanout", &format!("n{i}")).await);
    }
    assert_eq!(on_first.ids(10, WAIT).await, ids);
    assert_eq!(on_second.ids(10, WAIT).await, ids);
}

#[tokio::test]
async fn broker_outage_loses_nothing() {
    let mut s = stack(false).await;
    let mut client = events(&s.broadcast, "outage", None).await;
    let before = post_ok(&s.chat, "outage", "before").await;
    assert_eq!(client.ids(1, WAIT).await, vec![before]);

    s.broker.stop().await.expect("stop broker");
    let mut during = Vec::new();
    for i in 0..5 {
        during.push(post_ok(&s.chat, "outage", &format!("during {i}")).await);
    }
    let ready: Value = s.chat.get("/readyz").await.json().await.expect("json");
    assert_eq!(ready["status"], "degraded", "{ready}");
    assert_eq!(ready["checks"]["mqtt"], "down");
    assert_eq!(
        s.broadcast.get("/readyz").await.status(),
        503,
        "broadcast needs the broker"
    );

    s.broker.start_again().await.expect("restart broker");
    // Having missed whatever was published while it was away, the broadcast
    // instance reads it back from the database once for the stream, and the
    // client, still connected, gets it all in order.
    assert_eq!(
        client.ids(5, Duration::from_secs(30)).await,
        during,
        "all of them, in order, on the same connection"
    );
    let after = post_ok(&s.chat, "outage", "after").await;
    assert_eq!(client.ids(1, WAIT).await, vec![after]);
    assert!(
        client
            .next_message(Duration::from_millis(500))
            .await
            .is_none(),
        "no duplicates"
    );
    let metrics = s.chat.metrics().await;
    assert!(
        metrics.contains("hubbub_outbox_backlog{outbox=\"chat\"} 0"),
        "{metrics}"
    );
    assert_eq!(
        metric_value(&metrics, "hubbub_chat_messages_published_total"),
        7.0
    );
}

/// What an instance commits goes to the broker at once, not through the relay: while
/// another session holds the relay's lock (a relay of another instance, standing by
/// here), posts still go live, and are marked published.
#[tokio::test]
async fn posts_go_live_while_another_instance_holds_the_relay() {
    use sea_orm::{ConnectionTrait, TransactionTrait};
    let s = stack(false).await;
    let db = sea_orm::Database::connect(&s.db_url)
        .await
        .expect("connect");
    let relay = db.begin().await.expect("begin");
    relay
        .execute_unprepared("SELECT pg_advisory_xact_lock(4242001)")
        .await
        .expect("the chat relay's lock");
    let mut client = events(&s.broadcast, "direct", None).await;
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(post_ok(&s.chat, "direct", &format!("n{i}")).await);
    }
    assert_eq!(client.ids(3, WAIT).await, ids, "live without the relay");
    let mut unpublished = -1;
    for _ in 0..50 {
        unpublished = unpublished_rows(&db).await;
        if unpublished == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(unpublished, 0, "marked published while the lock is held");
    relay.rollback().await.expect("let go");
    // The relay, free again, finds nothing to publish a second time (clients
    // would not show it, as the broadcast drops repeats; the count does).
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(
        metric_value(
            &s.chat.metrics().await,
            "hubbub_chat_messages_published_total"
        ),
        3.0,
        "each published once"
    );
}

/// A burst of posts goes to the broker in rounds of up to 256: they must leave in
/// commit order, or every broadcast instance sees holes in the channel's `seq` and
/// reads the channel back from the database. (Publishes polled together used to
/// queue in whatever order tokio's cooperative budget let them.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_posts_reaches_the_bus_in_commit_order() {
    let s = stack(false).await;
    let chat = spawn_roles(
        &config(
            &s.db_url,
            &s.broker,
            "chat",
            "[chat]\nrate_per_minute = 1000000\nrate_burst = 1000000\n",
        ),
        &[Role::Chat],
    )
    .await
    .expect("chat");
    wait_for_mqtt(&chat).await;
    // Four channels, each under its backlog bound (a channel with too many posts
    // waiting is refused).
    let mut clients = Vec::new();
    for channel in 0..4 {
        clients.push(events(&s.broadcast, &format!("burst{channel}"), None).await);
    }
    for round in 0..3 {
        let posts: Vec<_> = (0..400)
            .map(|i| spawn_post(&chat, &format!("burst{}", i % 4), &format!("r{round} n{i}")))
            .collect();
        for post in posts {
            assert_eq!(post.await.expect("post"), 201);
        }
    }
    for client in &mut clients {
        let ids = client.ids(300, Duration::from_secs(30)).await;
        assert_eq!(ids.len(), 300);
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "in order, once each");
    }
    let metrics = s.broadcast.metrics().await;
    assert_eq!(
        metric_value(&metrics, "hubbub_broadcast_gaps_total"),
        0.0,
        "the bus carried the channel in order"
    );
}

/// Rows no direct publisher will send (another instance's that it gave up, or an
/// outage's) are the relay's: once they are older than its grace period it drains
/// them a batch after another, not a batch per poll.
#[tokio::test]
async fn the_relay_drains_a_backlog_it_did_not_commit_at_full_speed() {
    use sea_orm::ConnectionTrait;
    let s = stack(false).await;
    let db = sea_orm::Database::connect(&s.db_url)
        .await
        .expect("connect");
    db.execute_unprepared(
        "INSERT INTO chat_messages (channel, user_name, text, sent_at, seq) \
         SELECT 'backlog', 'bob', 'n' || g, now(), g FROM generate_series(1, 5000) AS g",
    )
    .await
    .expect("another instance's rows");
    let started = std::time::Instant::now();
    while unpublished_rows(&db).await > 0 {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the backlog never drained"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took = started.elapsed();
    eprintln!("5,000 rows relayed in {took:?}");
    // A poll and the grace period, then five batches back to back (0.9 s here);
    // the relay that took a batch every other poll needed 5 s.
    assert!(took < Duration::from_secs(4), "took {took:?}");
}

#[tokio::test]
async fn tls_broker_with_a_private_ca() {
    let s = stack(true).await;
    assert!(s.broker.url().starts_with("mqtts://"));
    let mut client = events(&s.broadcast, "secure", None).await;
    let id = post_ok(&s.chat, "secure", "over TLS").await;
    assert_eq!(client.ids(1, WAIT).await, vec![id]);
}

#[tokio::test]
async fn bad_input_is_refused_with_the_field_named() {
    let app = spawn_app("").await.expect("app");
    let long_channel = "c".repeat(65);
    let cases: Vec<(&str, Value, &str)> = vec![
        ("Upper", json!({"user": "a", "text": "b"}), "channel"),
        ("a%23b", json!({"user": "a", "text": "b"}), "channel"),
        ("a+b", json!({"user": "a", "text": "b"}), "channel"),
        ("-lead", json!({"user": "a", "text": "b"}), "channel"),
        (&long_channel, json!({"user": "a", "text": "b"}), "channel"),
        ("ok", json!({"user": "   ", "text": "b"}), "user"),
        ("ok", json!({"user": "u".repeat(65), "text": "b"}), "user"),
        ("ok", json!({"user": "a\u{1}b", "text": "b"}), "user"),
        ("ok", json!({"user": "a", "text": ""}), "text"),
        ("ok", json!({"user": "a", "text": "x".repeat(2001)}), "text"),
        ("ok", json!({"user": "a", "text": "bell\u{7}"}), "text"),
        ("ok", json!({"user": "a"}), "text"),
        ("ok", json!({"user": 5, "text": "b"}), "user"),
    ];
    for (channel, body, field) in cases {
        let response = app
            .client
            .post(app.url(&format!("/api/chat/{channel}/messages")))
            .json(&body)
            .send()
            .await
            .expect("post");
        assert_eq!(response.status(), 400, "{channel} {body}");
        let error: Value = response.json().await.expect("json");
        assert!(
            error["message"]
                .as_str()
                .expect("message")
                .starts_with(field),
            "{error}"
        );
    }
    // A slash makes it another path altogether: no such route.
    assert_eq!(post(&app, "a/b", "a", "b").await.status(), 404);
    let wrong_type = app
        .client
        .post(app.url("/api/chat/ok/messages"))
        .header("content-type", "text/plain")
        .body(r#"{"user":"a","text":"b"}"#)
        .send()
        .await
        .expect("post");
    assert_eq!(wrong_type.status(), 415);
    let huge = format!(r#"{{"user":"a","text":"{}"}}"#, "x".repeat(20_000));
    let too_big = app
        .client
        .post(app.url("/api/chat/ok/messages"))
        .header("content-type", "application/json")
        .body(huge)
        .send()
        .await
        .expect("post");
    assert_eq!(too_big.status(), 413);
    let malformed = app
        .client
        .post(app.url("/api/chat/ok/messages"))
        .header("content-type", "application/json")
        .body("{\"user\":")
        .send()
        .await
        .expect("post");
    assert_eq!(malformed.status(), 400);
    assert_eq!(
        malformed.json::<Value>().await.expect("json")["error"],
        "malformed_json"
    );
    for query in ["limit=0", "limit=201", "limit=x", "before=-1", "before=abc"] {
        let response = app.get(&format!("/api/chat/ok/messages?{query}")).await;
        assert_eq!(response.status(), 400, "{query}");
    }
    // Nothing was stored by any of it.
    let history: Vec<Value> = app
        .get("/api/chat/ok/messages")
        .await
        .json()
        .await
        .expect("json");
    assert!(history.is_empty());
    app.stop().await;
}

#[tokio::test]
async fn rate_limit_is_shared_by_chat_instances_through_redis() {
    let pg = Postgres::start().await.expect("postgres");
    let db_url = pg.create_database().await.expect("db");
    let redis = Redis::start(None).await.expect("redis");
    let toml = format!(
        "[database]\nurl = \"{db_url}\"\n[redis]\nurl = \"{}\"\n[chat]\nrate_per_minute = 6\nrate_burst = 3\n",
        redis.url()
    );
    let a = spawn_roles(&toml, &[Role::Chat]).await.expect("a");
    let b = spawn_roles(&toml, &[Role::Chat]).await.expect("b");
    assert_eq!(post(&a, "r", "u", "1").await.status(), 201);
    assert_eq!(post(&b, "r", "u", "2").await.status(), 201);
    assert_eq!(post(&a, "r", "u", "3").await.status(), 201);
    let limited = post(&b, "r", "u", "4").await;
    assert_eq!(limited.status(), 429, "the burst of 3 is shared");
    let retry: u64 = limited.headers()["retry-after"]
        .to_str()
        .expect("header")
        .parse()
        .expect("secs");
    assert!((1..=10).contains(&retry), "{retry}");
    assert_eq!(
        limited.json::<Value>().await.expect("json")["error"],
        "rate_limited"
    );
    let history: Vec<Value> = a
        .get("/api/chat/r/messages")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(history.len(), 3, "the refused message was not stored");
}

/// 30 posts from 30 addresses of one IPv6 /64 with a burst of 5: the /64 is one
/// client, in Redis' shared limiter and in the local one alike.
#[tokio::test]
async fn an_ipv6_64_is_one_client_for_the_rate_limit() {
    let pg = Postgres::start().await.expect("postgres");
    let db_url = pg.create_database().await.expect("db");
    let redis = Redis::start(None).await.expect("redis");
    let limits = "[http]\ntrusted_proxies = [\"127.0.0.1/32\"]\n[chat]\nrate_per_minute = 1\nrate_burst = 5\n";
    let shared = spawn_roles(
        &format!(
            "{limits}[database]\nurl = \"{db_url}\"\n[redis]\nurl = \"{}\"\n",
            redis.url()
        ),
        &[Role::Chat],
    )
    .await
    .expect("with redis");
    let local = spawn_app(limits).await.expect("embedded");
    for app in [&shared, &local] {
        let post_from = |ip: String| async move {
            app.client
                .post(app.url("/api/chat/v6/messages"))
                .header("x-forwarded-for", ip)
                .json(&json!({"user": "u", "text": "hi"}))
                .send()
                .await
                .expect("post")
                .status()
        };
        let mut accepted = 0;
        for host in 1..=30u32 {
            if post_from(format!("2001:db8:5:6:{host:x}::{host:x}")).await == 201 {
                accepted += 1;
            }
        }
        assert_eq!(accepted, 5, "one bucket for the whole /64");
        assert_eq!(
            post_from("2001:db8:5:7::1".to_owned()).await,
            201,
            "the next /64"
        );
        assert_eq!(post_from("203.0.113.5".to_owned()).await, 201, "IPv4 apart");
    }
    local.stop().await;
}

#[tokio::test]
async fn embedded_mode_delivers_in_process() {
    let app = spawn_app("").await.expect("app");
    let mut client = events(&app, "local", None).await;
    let id = post_ok(&app, "local", "no broker needed").await;
    let message = client.next_message(WAIT).await.expect("message");
    assert_eq!(message.id, id);
    assert_eq!(message.data["text"], "no broker needed");
    app.stop().await;
}

#[tokio::test]
async fn demo_page_uses_only_same_origin_paths() {
    let app = spawn_app("").await.expect("app");
    for path in ["/chat/", "/chat"] {
        let page = app.get(path).await;
        assert_eq!(page.status(), 200, "{path}");
        assert!(
            page.headers()["content-security-policy"]
                .to_str()
                .expect("csp")
                .contains("script-src 'self'")
        );
        let html = page.text().await.expect("html");
        for attr in ["src=\"", "href=\""] {
            for (i, _) in html.match_indices(attr) {
                let url = &html[i + attr.len()..];
                assert!(
                    (url.starts_with('/') && !url.starts_with("//")) || url.starts_with('#'),
                    "{attr}{}",
                    &url[..20.min(url.len())]
                );
            }
        }
        assert!(!html.contains("<script>"), "no inline script (CSP)");
    }
    let js = app.get("/assets/chat.js").await;
    assert!(
        js.headers()["content-type"]
            .to_str()
            .expect("ct")
            .starts_with("text/javascript")
    );
    let js = js.text().await.expect("js");
    assert!(
        js.contains("textContent") && !js.contains("innerHTML"),
        "messages are text, never HTML"
    );
    assert!(!js.contains("http://") && !js.contains("https://"));
    app.stop().await;
}

/// A chat instance on PostgreSQL, and another session holding the ordering lock of
/// channel `held` until the returned transaction ends.
async fn chat_with_channel_held() -> (
    Postgres,
    TestApp,
    sea_orm::DatabaseConnection,
    sea_orm::DatabaseTransaction,
) {
    // Long enough that no statement gives up on the lock while a test holds it.
    chat_with_channel_held_for(20_000).await
}

/// `hold(db, channel)`: a transaction holding `channel`'s ordering lock.
async fn hold(db: &sea_orm::DatabaseConnection, channel: &str) -> sea_orm::DatabaseTransaction {
    use sea_orm::{ConnectionTrait, TransactionTrait};
    let holder = db.begin().await.expect("begin");
    holder
        .execute_unprepared(&format!(
            "SELECT pg_advisory_xact_lock(hashtext('hubbub-chat:{channel}'))"
        ))
        .await
        .expect("lock");
    holder
}

/// A chat instance whose statements wait at most `lock_wait_ms` for a channel's
/// lock (`database.acquire_timeout_ms`), and channel `held`'s lock held.
async fn chat_with_channel_held_for(
    lock_wait_ms: u64,
) -> (
    Postgres,
    TestApp,
    sea_orm::DatabaseConnection,
    sea_orm::DatabaseTransaction,
) {
    let pg = Postgres::start().await.expect("postgres");
    let db_url = pg.create_database().await.expect("database");
    let chat = spawn_app(&format!(
        "[database]\nurl = \"{db_url}\"\nacquire_timeout_ms = {lock_wait_ms}\n\n\
         [visitors]\nsalt = \"s\"\n\n\
         [chat]\nrate_per_minute = 1000000\nrate_burst = 100000\n"
    ))
    .await
    .expect("chat");
    let db = sea_orm::Database::connect(&db_url).await.expect("connect");
    let holder = hold(&db, "held").await;
    (pg, chat, db, holder)
}

/// On PostgreSQL, posts to one channel take the channel's ordering lock (ids commit in
/// id order, which lets a client resuming with `Last-Event-ID` skip nothing): while
/// another session holds it, a post waits; other channels do not.
#[tokio::test]
async fn a_post_waits_for_its_channels_ordering_lock() {
    let (_pg, chat, _db, holder) = chat_with_channel_held().await;
    let waiting = spawn_post(&chat, "held", "waits");
    let other = post(&chat, "free", "alice", "goes through").await;
    assert_eq!(other.status(), 201, "another channel is not held up");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!waiting.is_finished(), "the post waits for the lock");
    holder.rollback().await.expect("release");
    assert_eq!(waiting.await.expect("task"), 201);
}

/// Group commit: concurrent posts to two chat instances are stored in batches (one
/// statement for many posts, several channels in one batch, and batches of two
/// instances at once), and still every channel is 1, 2, 3, … in id order without a
/// gap, every answer names the row it stored, that row is committed when the answer
/// arrives, and every subscriber gets every message of its channel once, in order.
#[tokio::test]
async fn concurrent_posts_are_stored_in_batches_in_order_exactly_once() {
    use futures_util::StreamExt;
    use sea_orm::{ConnectionTrait, DatabaseBackend, Statement, TransactionTrait};

    const CHANNELS: [&str; 3] = ["batch-a", "batch-b", "batch-c"];
    const POSTS: usize = 600;
    /// Posts in flight at once (half to each instance).
    const CONCURRENCY: usize = 64;
    let pg = Postgres::start().await.expect("postgres");
    let db_url = pg.create_database().await.expect("database");
    let broker = Mosquitto::builder()
        .users(broker_users())
        .start()
        .await
        .expect("mosquitto");
    let unlimited = "\n[chat]\nrate_per_minute = 1000000\nrate_burst = 100000\n";
    let mut chats = Vec::new();
    for _ in 0..2 {
        chats.push(
            spawn_roles(&config(&db_url, &broker, "chat", unlimited), &[Role::Chat])
                .await
                .expect("chat"),
        );
    }
    let chats = std::sync::Arc::new(chats);
    let broadcast = spawn_roles(
        &config(&db_url, &broker, "broadcast", ""),
        &[Role::Broadcast],
    )
    .await
    .expect("broadcast");
    wait_for_mqtt(&broadcast).await;
    let mut subscribers = Vec::new();
    for channel in CHANNELS {
        subscribers.push(events(&broadcast, channel, None).await);
    }
    let db = sea_orm::Database::connect(&db_url).await.expect("connect");
    let query = |sql: &str, values: Vec<sea_orm::Value>| {
        Statement::from_sql_and_values(DatabaseBackend::Postgres, sql, values)
    };

    // Batches form for certain: with `batch-a`'s lock held, a post to it holds one
    // slot of each instance (a channel is in one statement at a time), and its next
    // posts queue until it is released; the other channels go on meanwhile.
    let holder = db.begin().await.expect("begin");
    holder
        .execute_unprepared("SELECT pg_advisory_xact_lock(hashtext('hubbub-chat:batch-a'))")
        .await
        .expect("lock");
    let post_checked = {
        let (chats, db) = (chats.clone(), db.clone());
        move |n: usize, channel: &'static str| {
            let (chats, db) = (chats.clone(), db.clone());
            async move {
                let text = format!("post {n}");
                let response = post(&chats[n % 2], channel, "alice", &text).await;
                assert_eq!(response.status(), 201, "post {n}");
                let body: Value = response.json().await.expect("json");
                let (id, seq) = (
                    body["id"].as_i64().expect("id"),
                    body["seq"].as_i64().expect("seq"),
                );
                assert_eq!(body["channel"], channel);
                assert_eq!(body["text"], text.as_str());
                // The moment the answer arrives, its row is there for anyone to read.
                let row = db
                    .query_one_raw(Statement::from_sql_and_values(
                        DatabaseBackend::Postgres,
                        "SELECT channel, seq, text FROM chat_messages WHERE id = $1",
                        [id.into()],
                    ))
                    .await
                    .expect("read")
                    .unwrap_or_else(|| {
                        panic!("post {n} answered (id {id}) before it was committed")
                    });
                let stored: (String, i64, String) = (
                    row.try_get("", "channel").expect("channel"),
                    row.try_get("", "seq").expect("seq"),
                    row.try_get("", "text").expect("text"),
                );
                assert_eq!(
                    stored,
                    (channel.to_owned(), seq, text),
                    "the answer names its own row"
                );
                (channel, id, seq)
            }
        }
    };
    let held: Vec<_> = (POSTS..POSTS + 4)
        .map(|n| tokio::spawn(post_checked(n, "batch-a")))
        .collect();
    let waiting_for = |n: usize, sql: &'static str| {
        let db = db.clone();
        let chats = chats.clone();
        async move {
            for _ in 0..300 {
                let count = if sql.is_empty() {
                    let mut sum = 0.0;
                    for chat in chats.iter() {
                        sum += metric_value(&chat.metrics().await, "hubbub_chat_posts_waiting");
                    }
                    sum as usize
                } else {
                    let row = db
                        .query_one_raw(Statement::from_string(DatabaseBackend::Postgres, sql))
                        .await
                        .expect("count")
                        .expect("row");
                    usize::try_from(row.try_get::<i64>("", "n").expect("n")).expect("count")
                };
                if count >= n {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            panic!("never {n}: {sql}");
        }
    };
    waiting_for(
        2,
        "SELECT COUNT(*) AS n FROM pg_locks WHERE locktype = 'advisory' AND NOT granted",
    )
    .await;
    let all = {
        let post_checked = post_checked.clone();
        tokio::spawn(
            futures_util::stream::iter(0..POSTS)
                .map(move |n| post_checked(n, CHANNELS[n % CHANNELS.len()]))
                .buffer_unordered(CONCURRENCY)
                .collect::<Vec<_>>(),
        )
    };
    waiting_for(CONCURRENCY, "").await;
    holder.rollback().await.expect("release");
    let mut answers = all.await.expect("posts");
    for post in held {
        answers.push(post.await.expect("held post"));
    }

    let mut statements = 0.0;
    for chat in chats.iter() {
        statements += metric_value(&chat.metrics().await, "hubbub_chat_insert_statements_total");
    }
    assert!(
        statements <= (answers.len() - CONCURRENCY + 4) as f64,
        "the {CONCURRENCY} queued posts went in a few statements: {statements} for {}",
        answers.len()
    );
    for (channel, subscriber) in CHANNELS.iter().zip(&mut subscribers) {
        let rows = db
            .query_all_raw(query(
                "SELECT id, seq FROM chat_messages WHERE channel = $1 ORDER BY id",
                vec![(*channel).into()],
            ))
            .await
            .expect("rows");
        let stored: Vec<(i64, i64)> = rows
            .iter()
            .map(|r| {
                (
                    r.try_get("", "id").expect("id"),
                    r.try_get("", "seq").expect("seq"),
                )
            })
            .collect();
        let seqs: Vec<i64> = stored.iter().map(|(_, seq)| *seq).collect();
        let expected: Vec<i64> = (1..=stored.len() as i64).collect();
        assert_eq!(
            seqs, expected,
            "{channel}: seq follows id order without a gap"
        );
        let mut answered: Vec<(i64, i64)> = answers
            .iter()
            .filter(|(c, ..)| c == channel)
            .map(|(_, id, seq)| (*id, *seq))
            .collect();
        answered.sort_unstable();
        assert_eq!(
            answered, stored,
            "{channel}: exactly the answered posts are stored"
        );
        let ids: Vec<i64> = stored.iter().map(|(id, _)| *id).collect();
        assert_eq!(
            subscriber.ids(ids.len(), WAIT).await,
            ids,
            "{channel}: every message once, in order"
        );
        assert!(
            subscriber
                .next_message(Duration::from_millis(300))
                .await
                .is_none(),
            "{channel}: no duplicates"
        );
    }
}

/// Group commit must not couple channels: while one channel's ordering lock is held
/// (posts to it wait), posts to other channels still go through, however many posts
/// wait for the held one.
///
/// Failed from group commit (c4a4e40) until a channel was kept to one statement at
/// a time: the first two posts to the held channel took both batch slots (fast
/// path) and the next batch mixed the held channel with the free one, so every
/// channel of the instance waited for the lock.
#[tokio::test]
async fn a_held_channel_does_not_hold_up_other_channels() {
    let (_pg, chat, _db, holder) = chat_with_channel_held().await;
    let mut waiting = Vec::new();
    for n in 0..3 {
        waiting.push(spawn_post(&chat, "held", &format!("waits {n}")));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    free_channel_is_served(&chat, "goes through", Duration::from_secs(5)).await;
    holder.rollback().await.expect("release");
    for post in waiting {
        assert_eq!(post.await.expect("task"), 201);
    }
}

/// A channel whose posts cannot be stored (its lock held elsewhere) gets a bounded
/// backlog: past it, its own posts are refused at once with 503 and a body naming
/// the channel, while other channels are still served; the backlog is stored once
/// the lock is released.
#[tokio::test]
async fn a_held_channels_backlog_is_bounded_and_only_it_is_refused() {
    /// More than can wait: a statement of at most 256 posts (waiting for the
    /// lock) and a backlog of 128; the rest are refused.
    const POSTS: usize = 450;
    const CAN_WAIT: usize = 1 + 256 + 128;
    let (_pg, chat, db, holder) = chat_with_channel_held().await;
    let mut posts = Vec::new();
    for n in 0..POSTS {
        let (client, url) = (chat.client.clone(), chat.url("/api/chat/held/messages"));
        posts.push(tokio::spawn(async move {
            let response = client
                .post(url)
                .json(&json!({"user": "alice", "text": format!("post {n}")}))
                .send()
                .await
                .expect("post");
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.expect("json"))
        }));
    }
    // Refusals come while the lock is still held.
    let mut refused = 0;
    for _ in 0..100 {
        refused = posts.iter().filter(|p| p.is_finished()).count();
        if refused >= POSTS - CAN_WAIT {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        refused >= POSTS - CAN_WAIT,
        "{refused} posts to the held channel refused at once"
    );
    free_channel_is_served(&chat, "goes through", Duration::from_secs(5)).await;
    holder.rollback().await.expect("release");
    let (mut stored, mut refused) = (0, 0);
    for post in posts {
        let (status, body) = post.await.expect("task");
        match status {
            201 => stored += 1,
            503 => {
                refused += 1;
                assert_eq!(body["error"], "channel_busy", "{body}");
                assert!(
                    body["message"].as_str().unwrap_or("").contains("held"),
                    "{body}"
                );
            }
            other => panic!("unexpected status {other}: {body}"),
        }
    }
    assert_eq!(stored + refused, POSTS);
    assert!(
        stored <= CAN_WAIT,
        "{stored} stored: the backlog is bounded"
    );
    assert_eq!(
        metric_value(&chat.metrics().await, "hubbub_chat_posts_waiting"),
        0.0,
        "nothing is left waiting"
    );
    assert_eq!(
        stored_in(&db, "held").await,
        stored as i64,
        "every post answered 201 is stored, and no refused one"
    );
}

/// Channels whose locks are held elsewhere hold up only themselves: a statement
/// only tries its channels' locks, so `free`, batched with `held`, is stored, and
/// the held channels' own statements (which wait for their locks) never take every
/// slot. Failed before (reviews of issue 13): `free` waited for `held`'s lock in the
/// same statement, and two held channels' posts took both slots for the full wait.
#[tokio::test]
async fn held_channels_do_not_hold_up_the_others() {
    let (_pg, chat, db, holder) = chat_with_channel_held().await;
    let (x, y) = (hold(&db, "x").await, hold(&db, "y").await);
    let waiting_on_x = spawn_post(&chat, "x", "x");
    let waiting_on_y = spawn_post(&chat, "y", "y");
    wait_for_lock_waiters(&db, 1).await;
    let held = spawn_post(&chat, "held", "held");
    for n in 0..3 {
        free_channel_is_served(&chat, &format!("goes {n}"), Duration::from_secs(2)).await;
    }
    assert!(!held.is_finished(), "`held` waits for its lock");
    for holder in [holder, x, y] {
        holder.rollback().await.expect("release");
    }
    for post in [held, waiting_on_x, waiting_on_y] {
        assert_eq!(post.await.expect("task"), 201);
    }
    assert_eq!(
        metric_value(&chat.metrics().await, "hubbub_chat_posts_waiting"),
        0.0
    );
}

/// A post whose client left before it went into a statement is not stored: nobody
/// was told it was, and its client will post it again.
#[tokio::test]
async fn a_post_whose_client_left_while_it_waited_is_not_stored() {
    let (_pg, chat, db, holder) = chat_with_channel_held().await;
    let first = spawn_post(&chat, "held", "stays");
    wait_for_lock_waiters(&db, 1).await;
    for n in 0..4 {
        let gave_up = chat
            .client
            .post(chat.url("/api/chat/held/messages"))
            .timeout(Duration::from_millis(300))
            .json(&json!({"user": "alice", "text": format!("left {n}")}))
            .send()
            .await;
        assert!(
            gave_up.is_err(),
            "the client gives up while the lock is held"
        );
    }
    holder.rollback().await.expect("release");
    assert_eq!(first.await.expect("task"), 201);
    assert_eq!(stored_in(&db, "held").await, 1);
    assert_eq!(
        metric_value(&chat.metrics().await, "hubbub_chat_posts_waiting"),
        0.0
    );
}

/// A statement waits for a held channel's lock a bounded time
/// (`database.acquire_timeout_ms`): its posts then get 503 `channel_busy`, naming
/// the channel, rather than waiting for as long as the lock is held.
#[tokio::test]
async fn a_post_gives_up_on_a_lock_held_too_long() {
    let (_pg, chat, _db, holder) = chat_with_channel_held_for(300).await;
    let started = std::time::Instant::now();
    let refused = tokio::time::timeout(
        Duration::from_secs(10),
        post(&chat, "held", "alice", "waits"),
    )
    .await
    .expect("an answer while the lock is still held");
    assert_eq!(refused.status(), 503);
    assert!(started.elapsed() >= Duration::from_millis(300));
    let body: Value = refused.json().await.expect("json");
    assert_eq!(body["error"], "channel_busy", "{body}");
    assert!(
        body["message"].as_str().unwrap_or("").contains("held"),
        "{body}"
    );
    assert_eq!(post(&chat, "free", "bob", "goes").await.status(), 201);
    holder.rollback().await.expect("release");
    assert_eq!(post(&chat, "held", "alice", "now").await.status(), 201);
}

/// Chat messages not yet marked published.
async fn unpublished_rows(db: &sea_orm::DatabaseConnection) -> i64 {
    use sea_orm::ConnectionTrait;
    db.query_one_raw(sea_orm::Statement::from_string(
        sea_orm::DatabaseBackend::Postgres,
        "SELECT COUNT(*) AS n FROM chat_messages WHERE published = FALSE",
    ))
    .await
    .expect("count")
    .expect("row")
    .try_get::<i64>("", "n")
    .expect("n")
}

/// Waits until `n` sessions wait for an advisory lock.
async fn wait_for_lock_waiters(db: &sea_orm::DatabaseConnection, n: i64) {
    use sea_orm::ConnectionTrait;
    for _ in 0..400 {
        let row = db
            .query_one_raw(sea_orm::Statement::from_string(
                sea_orm::DatabaseBackend::Postgres,
                "SELECT COUNT(*) AS n FROM pg_locks WHERE locktype = 'advisory' AND NOT granted",
            ))
            .await
            .expect("count")
            .expect("row");
        if row.try_get::<i64>("", "n").expect("n") >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("never {n} sessions waiting for a lock");
}

/// A post to channel `free` is answered 201 within `within`, whatever else is held.
async fn free_channel_is_served(chat: &TestApp, text: &str, within: Duration) {
    let answer = tokio::time::timeout(within, post(chat, "free", "bob", text))
        .await
        .expect("a post to `free` is not held up by the held channels");
    assert_eq!(answer.status(), 201);
}

/// How many messages `channel` has in the database.
async fn stored_in(db: &sea_orm::DatabaseConnection, channel: &str) -> i64 {
    use sea_orm::ConnectionTrait;
    db.query_one_raw(sea_orm::Statement::from_sql_and_values(
        sea_orm::DatabaseBackend::Postgres,
        "SELECT COUNT(*) AS n FROM chat_messages WHERE channel = $1",
        [channel.into()],
    ))
    .await
    .expect("count")
    .expect("row")
    .try_get("", "n")
    .expect("n")
}
