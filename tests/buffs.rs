//! Buffs against real PostgreSQL, Redis and Mosquitto: auth, validation, the old
//! routes, cache invalidation across instances, Redis outage, SSE delivery.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use hubbub::domain::Role;
use serde_json::{Value, json};
use support::app::{TestApp, metric_value, spawn_app, spawn_roles};
use support::mosquitto::{BrokerUser, Mosquitto};
use support::ports::free_port;
use support::postgres::Postgres;
use support::redis::Redis;
use support::sse::SseClient;

const TOKENS: &str = "admin_token = \"first-token\\nsecond-token\"";
const WAIT: Duration = Duration::from_secs(10);

async fn create(app: &TestApp, path: &str, token: Option<&str>, body: &Value) -> reqwest::Response {
    let mut request = app.client.post(app.url(path)).json(body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.expect("post")
}

fn quiz(question: &str) -> Value {
    json!({ "question": question, "answers": ["me", "you"] })
}

async fn ids(app: &TestApp, path: &str) -> Vec<i64> {
    let list: Vec<Value> = app.get(path).await.json().await.expect("json");
    list.iter().map(|b| b["id"].as_i64().expect("id")).collect()
}

#[tokio::test]
async fn create_list_get_with_tokens_and_the_old_routes() {
    let app = spawn_app(&format!("[buffs]\n{TOKENS}\n"))
        .await
        .expect("app");
    let missing = create(&app, "/api/buffs", None, &quiz("who?")).await;
    assert_eq!(missing.status(), 401);
    assert_eq!(
        missing.headers()["www-authenticate"],
        "Bearer realm=\"hubbub\""
    );
    assert_eq!(
        missing.json::<Value>().await.expect("json")["error"],
        "unauthorized"
    );
    assert_eq!(
        create(&app, "/api/buffs", Some("wrong"), &quiz("who?"))
            .await
            .status(),
        401
    );
    assert_eq!(
        create(&app, "/buff", Some("first-tokenX"), &quiz("who?"))
            .await
            .status(),
        401,
        "exact token"
    );

    let created = create(&app, "/api/buffs", Some("first-token"), &quiz("  who?  ")).await;
    assert_eq!(created.status(), 201);
    let buff: Value = created.json().await.expect("json");
    assert_eq!(buff["question"], "who?");
    assert_eq!(buff["answers"], json!(["me", "you"]));
    assert!(chrono::DateTime::parse_from_rfc3339(buff["created_at"].as_str().expect("ts")).is_ok());
    // The rotated-in second token works too, on the old route.
    let old = create(&app, "/buff", Some("second-token"), &quiz("which?")).await;
    assert_eq!(old.status(), 201);
    let old: Value = old.json().await.expect("json");

    let newest_first = vec![
        old["id"].as_i64().expect("id"),
        buff["id"].as_i64().expect("id"),
    ];
    assert_eq!(ids(&app, "/api/buffs").await, newest_first);
    assert_eq!(
        ids(&app, "/buffs").await,
        newest_first,
        "old route, same answer"
    );
    assert_eq!(
        ids(&app, "/api/buffs?limit=1").await,
        newest_first[..1].to_vec()
    );
    assert_eq!(
        ids(&app, &format!("/api/buffs?before={}", newest_first[0])).await,
        newest_first[1..].to_vec()
    );

    let one: Value = app
        .get(&format!("/api/buffs/{}", buff["id"]))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(one, buff);
    assert_eq!(app.get("/api/buffs/999999").await.status(), 404);
    assert_eq!(app.get("/api/buffs/abc").await.status(), 400);
    for query in ["limit=0", "limit=101", "before=x"] {
        assert_eq!(
            app.get(&format!("/api/buffs?{query}")).await.status(),
            400,
            "{query}"
        );
    }
    let metrics = app.metrics().await;
    assert_eq!(metric_value(&metrics, "hubbub_auth_failures_total"), 3.0);
    assert_eq!(metric_value(&metrics, "hubbub_buffs_created_total"), 2.0);
    app.stop().await;
}

#[tokio::test]
async fn bad_buffs_are_refused_naming_the_field_and_only_after_auth() {
    let app = spawn_app(&format!("[buffs]\n{TOKENS}\n"))
        .await
        .expect("app");
    let token = Some("first-token");
    let cases = [
        (json!({"question": "", "answers": ["a", "b"]}), "question"),
        (
            json!({"question": "q".repeat(501), "answers": ["a", "b"]}),
            "question",
        ),
        (
            json!({"question": "q\u{1}", "answers": ["a", "b"]}),
            "question",
        ),
        (json!({"question": "q", "answers": ["a"]}), "answers"),
        (
            json!({"question": "q", "answers": ["a","b","c","d","e","f","g","h","i","j","k"]}),
            "answers",
        ),
        (
            json!({"question": "q", "answers": ["same", "Same "]}),
            "answers",
        ),
        (json!({"question": "q", "answers": ["a", " "]}), "answers"),
        (
            json!({"question": "q", "answers": ["a", "x".repeat(201)]}),
            "answers",
        ),
        (json!({"question": "q"}), "answers"),
        (json!({"question": "q", "answers": "a,b"}), "answers"),
    ];
    for (body, field) in cases {
        let response = create(&app, "/api/buffs", token, &body).await;
        assert_eq!(response.status(), 400, "{body}");
        let error: Value = response.json().await.expect("json");
        assert!(
            error["message"].as_str().expect("msg").starts_with(field),
            "{error}"
        );
        // Without a token the same body says nothing but 401.
        assert_eq!(create(&app, "/api/buffs", None, &body).await.status(), 401);
    }
    let wrong_type = app
        .client
        .post(app.url("/api/buffs"))
        .bearer_auth("first-token")
        .header("content-type", "text/plain")
        .body("{}")
        .send()
        .await
        .expect("post");
    assert_eq!(wrong_type.status(), 415);
    let huge = json!({"question": "q".repeat(20_000), "answers": ["a", "b"]});
    assert_eq!(create(&app, "/api/buffs", token, &huge).await.status(), 413);
    assert!(
        ids(&app, "/api/buffs").await.is_empty(),
        "nothing was stored"
    );
    app.stop().await;
}

/// Two buffs instances on one PostgreSQL database and one Redis, no bus.
async fn two_instances_sharing_redis() -> (Postgres, Redis, TestApp, TestApp) {
    let pg = Postgres::start().await.expect("postgres");
    let db_url = pg.create_database().await.expect("db");
    let redis = Redis::start(Some("rpw")).await.expect("redis");
    let toml = format!(
        "[database]\nurl = \"{db_url}\"\n[redis]\nurl = \"{}\"\n[buffs]\n{TOKENS}\ncache_ttl_secs = 300\n",
        redis.url()
    );
    let a = spawn_roles(&toml, &[Role::Buffs]).await.expect("a");
    let b = spawn_roles(&toml, &[Role::Buffs]).await.expect("b");
    (pg, redis, a, b)
}

#[tokio::test]
async fn a_new_buff_is_visible_on_every_instance_at_once_and_redis_outage_degrades() {
    let (_pg, mut redis, a, b) = two_instances_sharing_redis().await;
    assert!(ids(&b, "/api/buffs").await.is_empty());
    assert!(ids(&b, "/api/buffs").await.is_empty());
    assert_eq!(
        metric_value(&b.metrics().await, "hubbub_buffs_cache_hits_total"),
        1.0,
        "second read cached"
    );

    let created: Value = create(&a, "/api/buffs", Some("first-token"), &quiz("fresh?"))
        .await
        .json()
        .await
        .expect("json");
    let id = created["id"].as_i64().expect("id");
    assert_eq!(
        ids(&b, "/api/buffs").await,
        vec![id],
        "B sees A's buff at once, not after 300 s"
    );

    redis.stop().await.expect("stop redis");
    assert_eq!(
        ids(&b, "/api/buffs").await,
        vec![id],
        "served from the database"
    );
    let ready: Value = b.get("/readyz").await.json().await.expect("json");
    assert_eq!(ready["status"], "degraded");
    let second: Value = create(&a, "/api/buffs", Some("first-token"), &quiz("still?"))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(
        ids(&b, "/api/buffs").await,
        vec![second["id"].as_i64().expect("id"), id]
    );
    redis.start_again().await.expect("restart redis");
}

/// Instances that share Redis but no bus learn of new buffs from the version key. A
/// page cached before a Redis outage is not served after it: a buff created while
/// Redis was down could not bump the key, and Redis may come back (from its
/// snapshot) with the version the page was cached under.
#[tokio::test]
async fn pages_cached_before_a_redis_outage_are_not_served_after_it() {
    let (_pg, mut redis, a, b) = two_instances_sharing_redis().await;
    let first: Value = create(&a, "/api/buffs", Some("first-token"), &quiz("before?"))
        .await
        .json()
        .await
        .expect("json");
    let first = first["id"].as_i64().expect("id");
    assert_eq!(ids(&b, "/api/buffs").await, vec![first]);
    assert_eq!(ids(&b, "/api/buffs").await, vec![first], "cached");

    // Redis snapshots the version key, as a persistent Redis does when it stops.
    let saved = Command::new("redis-cli")
        .args([
            "-p",
            &redis.port().to_string(),
            "--no-auth-warning",
            "-a",
            "rpw",
            "SAVE",
        ])
        .output()
        .expect("redis-cli");
    assert!(saved.status.success(), "{saved:?}");
    redis.stop().await.expect("stop redis");
    let during: Value = create(&a, "/api/buffs", Some("first-token"), &quiz("during?"))
        .await
        .json()
        .await
        .expect("json");
    let during = during["id"].as_i64().expect("id");
    assert_eq!(
        ids(&b, "/api/buffs").await,
        vec![during, first],
        "from the database"
    );
    redis.start_again().await.expect("restart redis");
    assert_eq!(
        ids(&b, "/api/buffs").await,
        vec![during, first],
        "not the page cached before the outage"
    );
}

#[tokio::test]
async fn new_buffs_stream_over_sse_and_resume() {
    let pg = Postgres::start().await.expect("postgres");
    let db_url = pg.create_database().await.expect("db");
    let broker = Mosquitto::builder()
        .users(vec![
            BrokerUser::new("buffs", "buffs-pw", &["topic readwrite hubbub/buffs"]),
            BrokerUser::new("broadcast", "broadcast-pw", &["topic read hubbub/#"]),
        ])
        .start()
        .await
        .expect("mosquitto");
    let role_toml = |user: &str| {
        format!(
            "[database]\nurl = \"{db_url}\"\n[mqtt]\nurl = \"{}\"\nusername = \"{user}\"\npassword = \"{user}-pw\"\n[buffs]\n{TOKENS}\n",
            broker.url()
        )
    };
    let buffs = spawn_roles(&role_toml("buffs"), &[Role::Buffs])
        .await
        .expect("buffs");
    let broadcast = spawn_roles(&role_toml("broadcast"), &[Role::Broadcast])
        .await
        .expect("broadcast");
    for _ in 0..100 {
        if metric_value(&broadcast.metrics().await, "hubbub_mqtt_connected") == 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let url = broadcast.url("/api/buffs/events");
    let mut client = SseClient::connect(&url, None).await.expect("sse");
    let first: Value = create(&buffs, "/api/buffs", Some("first-token"), &quiz("live?"))
        .await
        .json()
        .await
        .expect("json");
    let event = client.next_message(WAIT).await.expect("event");
    assert_eq!(event.data, first);
    drop(client);
    let mut missed = Vec::new();
    for i in 0..3 {
        let buff: Value = create(
            &buffs,
            "/api/buffs",
            Some("first-token"),
            &quiz(&format!("q{i}")),
        )
        .await
        .json()
        .await
        .expect("json");
        missed.push(buff["id"].as_i64().expect("id"));
    }
    let mut resumed = SseClient::connect(&url, Some(event.id)).await.expect("sse");
    assert_eq!(resumed.ids(3, WAIT).await, missed);
    assert!(
        resumed
            .next_message(Duration::from_millis(500))
            .await
            .is_none()
    );
}

/// The exact line fail2ban's filter matches, from the real binary.
#[test]
fn authentication_failures_are_logged_as_one_stable_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_hubbub"))
        .args(["serve", "buffs"])
        .env("STATE_DIRECTORY", dir.path())
        .env("HUBBUB_HTTP__LISTEN", format!("127.0.0.1:{port}"))
        .env("HUBBUB_ADMIN__LISTEN", format!("127.0.0.1:{}", free_port()))
        .env("HUBBUB_BUFFS__ADMIN_TOKEN", "t0ken")
        .env("RUST_LOG", "warn")
        .env("NO_COLOR", "1")
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let client = reqwest::Client::new();
        for _ in 0..100 {
            if client
                .get(format!("http://127.0.0.1:{port}/healthz"))
                .send()
                .await
                .is_ok()
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for (path, token) in [("/api/buffs", None), ("/buff", Some("nope"))] {
            let mut request = client
                .post(format!("http://127.0.0.1:{port}{path}"))
                .json(&quiz("q"));
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            assert_eq!(request.send().await.expect("post").status(), 401);
        }
    });
    let _ = child.kill();
    let _ = child.wait();
    let failures: Vec<String> = lines
        .by_ref()
        .map_while(Result::ok)
        .filter(|line| line.contains("authentication failed"))
        .collect();
    assert_eq!(failures.len(), 2, "{failures:?}");
    assert!(
        failures[0].ends_with("authentication failed client_ip=127.0.0.1 route=/api/buffs"),
        "{}",
        failures[0]
    );
    assert!(failures[0].contains(" WARN "), "{}", failures[0]);
    assert!(
        failures[1].ends_with("authentication failed client_ip=127.0.0.1 route=/buff"),
        "{}",
        failures[1]
    );
    assert!(
        !failures
            .iter()
            .any(|l| l.contains("nope") || l.contains("t0ken")),
        "tokens never logged"
    );
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .expect("status")
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// One anonymous client asking for 100,000 distinct `before` values (each a page of
/// up to 100 buffs): the cache holds the newest page per `limit` and nothing more,
/// and the process does not grow.
#[tokio::test]
async fn distinct_before_values_leave_the_cache_at_its_bound_and_memory_flat() {
    use futures_util::StreamExt;

    let app = spawn_app(&format!("[buffs]\n{TOKENS}\n"))
        .await
        .expect("app");
    for i in 0..3 {
        let created = create(
            &app,
            "/api/buffs",
            Some("first-token"),
            &quiz(&format!("q{i}?")),
        )
        .await;
        assert_eq!(created.status(), 201);
    }
    // Every canonical page: the newest buffs for each limit.
    for limit in 1..=100 {
        assert_eq!(
            app.get(&format!("/api/buffs?limit={limit}")).await.status(),
            200
        );
    }
    let entries = |metrics: &str| metric_value(metrics, "hubbub_buffs_cache_entries");
    let canonical = entries(&app.metrics().await);
    assert!(
        (1.0..=100.0).contains(&canonical),
        "{canonical} pages cached"
    );

    let rss_before = rss_kib();
    let client = app.client.clone();
    let base = app.url("/api/buffs?limit=100&before=");
    let requests = futures_util::stream::iter(1..=100_000u32)
        .map(|before| {
            let request = client.get(format!("{base}{before}")).send();
            async move { request.await.map(|r| r.status()) }
        })
        .buffer_unordered(32);
    tokio::pin!(requests);
    let mut answered = 0u32;
    while let Some(status) = requests.next().await {
        assert_eq!(status.expect("list"), 200);
        answered += 1;
        if answered.is_multiple_of(10_000) {
            let grown = rss_kib().saturating_sub(rss_before);
            assert!(
                grown < 32 * 1024,
                "grew {} MiB after {answered} requests",
                grown / 1024
            );
        }
    }
    let metrics = app.metrics().await;
    assert_eq!(
        entries(&metrics),
        canonical,
        "no page of a client's making was kept"
    );
    assert!(metric_value(&metrics, "hubbub_buffs_cache_bytes") <= 16.0 * 1024.0 * 1024.0);
    app.stop().await;
}

/// The hot cached reads (`/api/stats`, the newest `/api/buffs` page) are answered
/// ahead of warp's filters. From the real binary: they answer exactly as the same
/// routes do through warp (a query sends them there), with the same headers, one
/// access-log event each with the same fields, the same metrics; HEAD, other
/// queries and new buffs behave as before.
#[test]
fn hot_reads_answer_as_their_routes_do_through_warp() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log_path = dir.path().join("stderr.log");
    let port = free_port();
    let admin_port = free_port();
    /// Killed when the test ends, failed or not.
    struct Daemon(std::process::Child);
    impl Drop for Daemon {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let daemon = Command::new(env!("CARGO_BIN_EXE_hubbub"))
        .args(["serve", "visitors", "buffs"])
        .env("STATE_DIRECTORY", dir.path())
        .env("HUBBUB_HTTP__LISTEN", format!("127.0.0.1:{port}"))
        .env("HUBBUB_ADMIN__LISTEN", format!("127.0.0.1:{admin_port}"))
        .env("HUBBUB_BUFFS__ADMIN_TOKEN", "t0ken")
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stderr(std::fs::File::create(&log_path).expect("log file"))
        .spawn()
        .map(Daemon)
        .expect("spawn");
    let base = format!("http://127.0.0.1:{port}");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let client = reqwest::Client::new();
        for _ in 0..200 {
            if client.get(format!("{base}/healthz")).send().await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let post = |question: &str| {
            client
                .post(format!("{base}/api/buffs"))
                .bearer_auth("t0ken")
                .json(&quiz(question))
                .send()
        };
        for question in ["one?", "two?"] {
            assert_eq!(post(question).await.expect("post").status(), 201);
        }
        // (fast, through warp): the same answer is expected from both.
        let pairs = [
            ("/api/stats", "/api/stats?via=warp"),
            ("/api/buffs", "/api/buffs?before="),
            ("/api/buffs?limit=1", "/api/buffs?limit=1&before="),
        ];
        for (fast, warp) in pairs {
            let (a, b) = (
                client.get(format!("{base}{fast}")).send().await.expect("get"),
                client.get(format!("{base}{warp}")).send().await.expect("get"),
            );
            assert_eq!(a.status(), 200, "{fast}");
            assert_eq!(a.status(), b.status(), "{fast}");
            let names = |r: &reqwest::Response| {
                let mut names: Vec<String> =
                    r.headers().keys().map(|k| k.as_str().to_owned()).collect();
                names.sort();
                names
            };
            assert_eq!(names(&a), names(&b), "{fast}");
            for name in names(&a) {
                if name != "date" && name != "x-request-id" {
                    assert_eq!(a.headers()[&name], b.headers()[&name], "{fast}: {name}");
                }
            }
            for name in ["x-request-id", "x-content-type-options", "referrer-policy"] {
                assert!(a.headers().contains_key(name), "{fast}: {name}");
            }
            assert_ne!(a.headers()["x-request-id"], b.headers()["x-request-id"]);
            let (a, b) = (a.bytes().await.expect("body"), b.bytes().await.expect("body"));
            assert_eq!(a, b, "{fast}");
            assert!(!a.is_empty());
        }
        let head = client
            .head(format!("{base}/api/buffs"))
            .send()
            .await
            .expect("head");
        assert_eq!(head.status(), 200);
        assert_eq!(head.headers()["content-type"], "application/json");
        assert!(head.bytes().await.expect("body").is_empty());

        // A new buff is on the very next fast read; other pages and bad queries go
        // through warp as before.
        let listed = |path: &'static str| {
            let client = client.clone();
            let url = format!("{base}{path}");
            async move {
                let list: Vec<Value> = client
                    .get(url)
                    .send()
                    .await
                    .expect("get")
                    .json()
                    .await
                    .expect("json");
                list.iter()
                    .map(|b| b["question"].as_str().expect("question").to_owned())
                    .collect::<Vec<_>>()
            }
        };
        assert_eq!(listed("/api/buffs").await, ["two?", "one?"]);
        assert_eq!(post("three?").await.expect("post").status(), 201);
        assert_eq!(listed("/api/buffs").await, ["three?", "two?", "one?"]);
        assert_eq!(listed("/api/buffs?limit=1").await, ["three?"]);
        assert_eq!(listed("/api/buffs?before=2").await, ["one?"]);
        let refused = client
            .get(format!("{base}/api/buffs?limit=1000"))
            .send()
            .await
            .expect("get");
        assert_eq!(refused.status(), 400);
        assert_eq!(
            refused.json::<Value>().await.expect("json")["error"],
            "invalid_field"
        );

        let metrics = client
            .get(format!("http://127.0.0.1:{admin_port}/metrics"))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text");
        let series = |labels: &str| {
            metrics
                .lines()
                .find_map(|line| line.strip_prefix(labels)?.trim().parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        // Fast and warp answers count in the same series, under the route template.
        let requests = |route: &str, method: &str, status: &str| {
            series(&format!(
                "hubbub_http_requests_total{{method=\"{method}\",role=\"{}\",route=\"{route}\",status=\"{status}\"}}",
                if route == "/api/stats" { "visitors" } else { "buffs" }
            ))
        };
        assert_eq!(requests("/api/stats", "GET", "200"), 2.0, "{metrics}");
        assert_eq!(requests("/api/buffs", "GET", "200"), 8.0, "{metrics}");
        assert_eq!(requests("/api/buffs", "HEAD", "200"), 1.0, "{metrics}");
        assert_eq!(requests("/api/buffs", "GET", "400"), 1.0, "{metrics}");
        assert_eq!(
            series("hubbub_http_request_duration_seconds_count{method=\"GET\",role=\"visitors\",route=\"/api/stats\"}"),
            2.0
        );
        assert!(!metrics.contains("route=\"unmatched\""), "{metrics}");
    });
    // Every request above has its access-log event (written within a few ms).
    let access = |log: &str| -> Vec<String> {
        log.lines()
            .filter(|line| line.contains("hubbub::access") && line.contains("route=\"/api/"))
            .map(str::to_owned)
            .collect()
    };
    let deadline = std::time::Instant::now() + WAIT;
    let mut lines = Vec::new();
    while std::time::Instant::now() < deadline {
        lines = access(&std::fs::read_to_string(&log_path).expect("log"));
        if lines.len() >= 15 {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(daemon);
    // 3 creates, 6 compared reads, HEAD, 4 listings, the refused one.
    assert_eq!(lines.len(), 15, "{lines:#?}");
    // The fields, with the varying values (time, id, latency) left out.
    let shape = |line: &str| -> String {
        line.split_whitespace()
            .skip(1)
            .map(|word| match word.split_once('=') {
                Some((key @ ("request_id" | "latency_ms"), _)) => format!("{key}=*"),
                _ => word.to_owned(),
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    let stats: Vec<String> = lines
        .iter()
        .filter(|l| l.contains("route=\"/api/stats\""))
        .map(|l| shape(l))
        .collect();
    assert_eq!(stats.len(), 2);
    assert_eq!(stats[0], stats[1]);
    assert_eq!(
        stats[0],
        "INFO hubbub::access: request request_id=* client_ip=127.0.0.1 method=GET \
         route=\"/api/stats\" status=200 latency_ms=*"
    );
    let head = lines
        .iter()
        .find(|l| l.contains("method=HEAD"))
        .expect("HEAD logged");
    assert!(
        shape(head).ends_with("route=\"/api/buffs\" status=200 latency_ms=*"),
        "{head}"
    );
}
