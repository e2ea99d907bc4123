//! The live path under faults, against real PostgreSQL and Mosquitto: the broker
//! killed (`-9`) again and again while clients post, buffs created concurrently, a
//! subscription the broker refuses. Each ends with what a viewer must see: every
//! acknowledged event exactly once and in order.

mod support;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hubbub::domain::Role;
use serde_json::{Value, json};
use support::app::{TestApp, metric_value, spawn_roles};
use support::mosquitto::{BrokerUser, Mosquitto};
use support::postgres::Postgres;
use support::sse::SseClient;
use tokio::sync::{Mutex, watch};

const TOKEN: &str = "live-token";

fn broker_users(broadcast_acl: &[&str]) -> Vec<BrokerUser> {
    vec![
        BrokerUser::new("chat", "chat-pw", &["topic write hubbub/chat/+"]),
        BrokerUser::new("buffs", "buffs-pw", &["topic write hubbub/buffs"]),
        BrokerUser::new("broadcast", "broadcast-pw", broadcast_acl),
    ]
}

fn config(db_url: &str, broker: &Mosquitto, user: &str) -> String {
    format!(
        "[database]\nurl = \"{db_url}\"\n\n[mqtt]\nurl = \"{}\"\nusername = \"{user}\"\npassword = \"{user}-pw\"\n\n\
         [chat]\nrate_per_minute = 1000000\nrate_burst = 1000000\n\n[buffs]\nadmin_token = \"{TOKEN}\"\n\n\
         [visitors]\nsalt = \"s\"\n",
        broker.url()
    )
}

async fn wait_until(what: &str, limit: Duration, mut ready: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !ready().await {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A broadcast instance on `db_url` and `broker`, once it is ready.
async fn ready_broadcast(db_url: &str, broker: &Mosquitto) -> TestApp {
    let broadcast = spawn_roles(&config(db_url, broker, "broadcast"), &[Role::Broadcast])
        .await
        .expect("broadcast");
    wait_until("broadcast ready", Duration::from_secs(20), async || {
        ready(&broadcast).await
    })
    .await;
    broadcast
}

async fn ready(app: &TestApp) -> bool {
    app.get("/readyz").await.status() == 200
}

/// A viewer as EventSource is one: when the stream ends it reconnects (after
/// 100 ms) with the last id it saw. Records every id with when it arrived.
struct Viewer {
    seen: Arc<Mutex<Vec<(i64, Instant)>>>,
    reconnects: Arc<std::sync::atomic::AtomicUsize>,
    stop: watch::Sender<bool>,
}

impl Viewer {
    async fn start(url: String) -> Self {
        let seen: Arc<Mutex<Vec<(i64, Instant)>>> = Arc::default();
        let reconnects = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (stop, mut stopped) = watch::channel(false);
        let mut client = SseClient::connect(&url, None).await.expect("sse");
        let (record, count) = (seen.clone(), reconnects.clone());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stopped.changed() => return,
                    message = client.next_message(Duration::from_secs(3600)) => match message {
                        Some(message) => record.lock().await.push((message.id, Instant::now())),
                        None => {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            let last = record.lock().await.last().map(|(id, _)| *id);
                            count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            match SseClient::connect(&url, Some(last.unwrap_or(0))).await {
                                Ok(next) => client = next,
                                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                            }
                        }
                    },
                }
            }
        });
        Self {
            seen,
            reconnects,
            stop,
        }
    }

    fn reconnects(&self) -> usize {
        self.reconnects.load(std::sync::atomic::Ordering::Relaxed)
    }

    async fn ids(&self) -> Vec<i64> {
        self.seen.lock().await.iter().map(|(id, _)| *id).collect()
    }

    async fn arrival(&self, id: i64) -> Option<Instant> {
        self.seen
            .lock()
            .await
            .iter()
            .find(|(seen, _)| *seen == id)
            .map(|(_, at)| *at)
    }

    /// Waits until every id of `expected` arrived; then checks exactly once, in order.
    async fn assert_saw_exactly(&self, expected: &[i64], limit: Duration) {
        let want: HashSet<i64> = expected.iter().copied().collect();
        let deadline = Instant::now() + limit;
        loop {
            let ids = self.ids().await;
            let got: HashSet<i64> = ids.iter().copied().collect();
            if want.is_subset(&got) {
                break;
            }
            if Instant::now() > deadline {
                let missing: Vec<i64> = want.difference(&got).copied().collect();
                panic!(
                    "{} of {} acknowledged events never arrived (first missing: {:?})",
                    missing.len(),
                    want.len(),
                    &missing[..missing.len().min(10)]
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Anything extra (a duplicate) would arrive shortly after.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let ids = self.ids().await;
        let mut sorted = expected.to_vec();
        sorted.sort_unstable();
        let relevant: Vec<i64> = ids.iter().copied().filter(|id| want.contains(id)).collect();
        assert_eq!(
            relevant.len(),
            sorted.len(),
            "every acknowledged event exactly once (duplicates seen)"
        );
        assert_eq!(relevant, sorted, "in id order");
    }
}

impl Drop for Viewer {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

async fn post(client: &reqwest::Client, url: &str, text: &str) -> Option<i64> {
    let response = client
        .post(url)
        .json(&json!({"user": "poster", "text": text}))
        .send()
        .await
        .ok()?;
    if response.status() != 201 {
        return None;
    }
    response.json::<Value>().await.ok()?["id"].as_i64()
}

/// Kill -9 the broker three times while 8 clients post as fast as they can: every
/// acknowledged message reaches a reconnecting viewer exactly once and in order,
/// and a message posted 1 s after the broker is back arrives within 1 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn broker_killed_three_times_while_posting_loses_nothing_and_recovers_at_once() {
    let pg = Postgres::start().await.expect("postgres");
    let db_url = pg.create_database().await.expect("database");
    let mut broker = Mosquitto::builder()
        .users(broker_users(&["topic read hubbub/#"]))
        .start()
        .await
        .expect("mosquitto");
    let chat = spawn_roles(&config(&db_url, &broker, "chat"), &[Role::Chat])
        .await
        .expect("chat");
    let broadcast = ready_broadcast(&db_url, &broker).await;
    let viewer = Viewer::start(broadcast.url("/api/chat/faults/events")).await;
    let url = chat.url("/api/chat/faults/messages");

    let acknowledged: Arc<Mutex<Vec<i64>>> = Arc::default();
    let (stop_posting, posting) = watch::channel(false);
    let mut posters = tokio::task::JoinSet::new();
    for poster in 0..8 {
        let (client, url, acknowledged, posting) = (
            chat.client.clone(),
            url.clone(),
            acknowledged.clone(),
            posting.clone(),
        );
        posters.spawn(async move {
            let mut n = 0;
            while !*posting.borrow() {
                n += 1;
                if let Some(id) = post(&client, &url, &format!("p{poster} n{n}")).await {
                    acknowledged.lock().await.push(id);
                }
            }
        });
    }
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(800)).await;
        broker.kill().await.expect("kill -9 the broker");
        tokio::time::sleep(Duration::from_millis(500)).await;
        broker.start_again().await.expect("restart the broker");
    }
    let back = Instant::now();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    // 1 s after the broker is back, with the posters still going:
    let probe = post(&chat.client, &url, "one second after")
        .await
        .expect("probe accepted");
    let posted = Instant::now();
    wait_until(
        "the probe reaches the viewer",
        Duration::from_secs(30),
        async || viewer.arrival(probe).await.is_some(),
    )
    .await;
    let latency = viewer
        .arrival(probe)
        .await
        .map(|at| at.saturating_duration_since(posted))
        .unwrap_or_default();
    let _ = stop_posting.send(true);
    while posters.join_next().await.is_some() {}
    let mut expected = acknowledged.lock().await.clone();
    expected.push(probe);
    for i in 0..5 {
        expected.push(
            post(&chat.client, &url, &format!("after {i}"))
                .await
                .expect("accepted"),
        );
    }
    assert!(
        expected.len() > 100,
        "the posters got through: {}",
        expected.len()
    );
    assert!(
        latency <= Duration::from_secs(1),
        "a message posted {:?} after the broker came back took {latency:?} to arrive",
        posted.duration_since(back)
    );
    viewer
        .assert_saw_exactly(&expected, Duration::from_secs(30))
        .await;
    assert_eq!(
        viewer.reconnects(),
        0,
        "the viewer stayed connected through the broker's deaths"
    );
    let metrics = chat.metrics().await;
    assert!(
        metrics.contains("hubbub_outbox_backlog{outbox=\"chat\"} 0")
            || metric_value(&metrics, "hubbub_chat_messages_published_total")
                >= expected.len() as f64,
        "{metrics}"
    );
}

/// Eight admins create buffs at the same time: ids may be taken in one order and
/// committed in another, unless the buffs' ordering lock makes them commit in id
/// order. Every viewer, live from the start or resuming midway, sees every buff.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_buff_creators_never_make_a_viewer_miss_a_buff() {
    let pg = Postgres::start().await.expect("postgres");
    let db_url = pg.create_database().await.expect("database");
    let broker = Mosquitto::builder()
        .users(broker_users(&["topic read hubbub/#"]))
        .start()
        .await
        .expect("mosquitto");
    let buffs = spawn_roles(&config(&db_url, &broker, "buffs"), &[Role::Buffs])
        .await
        .expect("buffs");
    let broadcast = ready_broadcast(&db_url, &broker).await;
    let events = broadcast.url("/api/buffs/events");
    let live = Viewer::start(events.clone()).await;
    // A second viewer drops its connection every 20 buffs and resumes with
    // Last-Event-ID, as a flaky network makes EventSource do.
    let flaky_seen: Arc<Mutex<Vec<i64>>> = Arc::default();
    let (stop_flaky, flaky_stop) = watch::channel(false);
    let flaky = {
        let (seen, events) = (flaky_seen.clone(), events.clone());
        tokio::spawn(async move {
            let mut last = None;
            while !*flaky_stop.borrow() {
                let Ok(mut client) = SseClient::connect(&events, last).await else {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                for _ in 0..20 {
                    match client.next_message(Duration::from_millis(500)).await {
                        Some(message) => {
                            last = Some(message.id);
                            seen.lock().await.push(message.id);
                        }
                        None => break,
                    }
                }
                last = last.or(Some(0));
            }
        })
    };

    let created: Arc<Mutex<Vec<i64>>> = Arc::default();
    let mut creators = tokio::task::JoinSet::new();
    for creator in 0..8 {
        let (client, url, created) = (
            buffs.client.clone(),
            buffs.url("/api/buffs"),
            created.clone(),
        );
        creators.spawn(async move {
            for n in 0..25 {
                let response = client
                    .post(&url)
                    .bearer_auth(TOKEN)
                    .json(
                        &json!({"question": format!("c{creator} q{n}?"), "answers": ["yes", "no"]}),
                    )
                    .send()
                    .await
                    .expect("create");
                assert_eq!(response.status(), 201, "{:?}", response.text().await);
                let buff: Value = response.json().await.expect("json");
                created.lock().await.push(buff["id"].as_i64().expect("id"));
            }
        });
    }
    while let Some(done) = creators.join_next().await {
        done.expect("creator");
    }
    let created = created.lock().await.clone();
    assert_eq!(created.len(), 200);
    live.assert_saw_exactly(&created, Duration::from_secs(30))
        .await;
    wait_until(
        "the flaky viewer catches up",
        Duration::from_secs(30),
        async || {
            let seen: HashSet<i64> = flaky_seen.lock().await.iter().copied().collect();
            created.iter().all(|id| seen.contains(id))
        },
    )
    .await;
    let _ = stop_flaky.send(true);
    flaky.abort();
    let seen = flaky_seen.lock().await.clone();
    let mut sorted = created.clone();
    sorted.sort_unstable();
    assert_eq!(
        seen, sorted,
        "the resuming viewer: every buff once, in order"
    );
}

/// The previous release's buffs role runs beside this one during a rolling
/// deployment (and again after a rollback of the code: migrations stay). It inserts
/// a buff in its own transaction without a `seq`, as below. Its buffs must take
/// their place in the stream like any other (migration 000006): before, the first
/// got `seq = 0` and the second failed on the unique index `buffs_seq`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn buffs_inserted_by_the_previous_release_keep_the_stream_whole() {
    use sea_orm::{ConnectionTrait, DbBackend, Statement, TransactionTrait};

    let pg = Postgres::start().await.expect("postgres");
    let db_url = pg.create_database().await.expect("database");
    let broker = Mosquitto::builder()
        .users(broker_users(&["topic read hubbub/#"]))
        .start()
        .await
        .expect("mosquitto");
    let buffs = spawn_roles(&config(&db_url, &broker, "buffs"), &[Role::Buffs])
        .await
        .expect("buffs");
    let broadcast = ready_broadcast(&db_url, &broker).await;
    let viewer = Viewer::start(broadcast.url("/api/buffs/events")).await;
    let old_release = sea_orm::Database::connect(db_url.as_str())
        .await
        .expect("connect");

    let created: Arc<Mutex<Vec<i64>>> = Arc::default();
    let mut creators = tokio::task::JoinSet::new();
    for creator in 0..4 {
        // This release, through the API.
        let (client, url, made) = (
            buffs.client.clone(),
            buffs.url("/api/buffs"),
            created.clone(),
        );
        creators.spawn(async move {
            for n in 0..10 {
                let response = client
                    .post(&url)
                    .bearer_auth(TOKEN)
                    .json(&json!({"question": format!("new c{creator} q{n}?"), "answers": ["yes", "no"]}))
                    .send()
                    .await
                    .expect("create");
                assert_eq!(response.status(), 201, "{:?}", response.text().await);
                let buff: Value = response.json().await.expect("json");
                made.lock().await.push(buff["id"].as_i64().expect("id"));
            }
        });
        // The previous release: its statements, word for word.
        let (db, created) = (old_release.clone(), created.clone());
        creators.spawn(async move {
            for n in 0..10 {
                let txn = db.begin().await.expect("begin");
                let row = txn
                    .query_one_raw(Statement::from_sql_and_values(
                        DbBackend::Postgres,
                        "INSERT INTO buffs (question, created_at) VALUES ($1, $2) RETURNING id",
                        [format!("old c{creator} q{n}?").into(), chrono::Utc::now().into()],
                    ))
                    .await
                    .expect("the previous release's INSERT")
                    .expect("a row");
                let id: i64 = row.try_get("", "id").expect("id");
                tokio::time::sleep(Duration::from_millis(5)).await;
                txn.execute_raw(Statement::from_sql_and_values(
                    DbBackend::Postgres,
                    "INSERT INTO buff_answers (buff_id, position, answer) VALUES ($1, $2, $3), ($4, $5, $6)",
                    [
                        id.into(),
                        0i16.into(),
                        "yes".into(),
                        id.into(),
                        1i16.into(),
                        "no".into(),
                    ],
                ))
                .await
                .expect("answers");
                txn.commit().await.expect("commit");
                created.lock().await.push(id);
            }
        });
    }
    while let Some(done) = creators.join_next().await {
        done.expect("creator");
    }
    let created = created.lock().await.clone();
    assert_eq!(created.len(), 80);
    // The stream is whole: seq 1, 2, 3, … in id order.
    let out_of_place = pg
        .psql(
            db_url.rsplit('/').next().expect("database name"),
            "SELECT count(*) FROM (SELECT seq, row_number() OVER (ORDER BY id) AS n FROM buffs) s \
             WHERE seq <> n",
        )
        .await
        .expect("psql");
    assert_eq!(
        out_of_place.trim(),
        "0",
        "buffs whose seq is not their place"
    );
    viewer
        .assert_saw_exactly(&created, Duration::from_secs(30))
        .await;
}

/// The dynamic-security plugin: `MOSQUITTO_DYNSEC_PLUGIN` (the flake's check sets
/// it: nixpkgs puts it in mosquitto's `lib` output), else beside the broker (Debian:
/// /usr/lib/<triplet>/).
fn dynsec_plugin() -> std::path::PathBuf {
    if let Some(path) = std::env::var_os("MOSQUITTO_DYNSEC_PLUGIN") {
        return path.into();
    }
    let broker = support::process::find_binary("mosquitto", &["/usr/sbin"]).expect("mosquitto");
    let broker = std::fs::canonicalize(&broker).unwrap_or(broker);
    let mut candidates: Vec<std::path::PathBuf> = broker
        .parent()
        .and_then(|bin| bin.parent())
        .map(|prefix| vec![prefix.join("lib/mosquitto_dynamic_security.so")])
        .unwrap_or_default();
    if let Ok(dirs) = std::fs::read_dir("/usr/lib") {
        candidates.extend(
            dirs.flatten()
                .map(|d| d.path().join("mosquitto_dynamic_security.so")),
        );
    }
    candidates
        .into_iter()
        .find(|p| p.is_file())
        .expect("mosquitto_dynamic_security.so (part of the mosquitto package)")
}

async fn mosquitto_ctrl(args: &[&str]) {
    let ctrl = support::process::find_binary("mosquitto_ctrl", &[]).expect("mosquitto_ctrl");
    let mut command = tokio::process::Command::new(ctrl);
    command.args(args);
    support::process::run(command, "mosquitto_ctrl")
        .await
        .expect("mosquitto_ctrl");
}

/// A broker that refuses one of the broadcast role's subscriptions in its SUBACK
/// (Mosquitto's dynamic-security plugin; its plain `acl_file` never refuses a
/// subscription, it only withholds messages): the instance logs an error and never
/// reports ready, so HAProxy keeps clients away from it.
#[tokio::test]
async fn a_refused_subscription_keeps_the_broadcast_instance_unready() {
    let pg = Postgres::start().await.expect("postgres");
    let db_url = pg.create_database().await.expect("database");
    let dir = tempfile::tempdir().expect("tempdir");
    let dynsec = dir.path().join("dynsec.json");
    let dynsec_path = dynsec.display().to_string();
    mosquitto_ctrl(&["dynsec", "init", &dynsec_path, "admin", "admin-pw"]).await;
    let broker = Mosquitto::builder()
        .extra_config(&format!(
            "plugin {}\nplugin_opt_config_file {dynsec_path}\n",
            dynsec_plugin().display()
        ))
        .start()
        .await
        .expect("mosquitto");
    let port = broker.port().to_string();
    let admin = [
        "-h",
        "127.0.0.1",
        "-p",
        &port,
        "-u",
        "admin",
        "-P",
        "admin-pw",
        "dynsec",
    ];
    for command in [
        &["createClient", "broadcast", "-p", "broadcast-pw"][..],
        &["createRole", "chat-reader"],
        // Subscriptions are refused unless a role allows them: this one allows
        // the chat channels only, so `hubbub/buffs` gets a SUBACK failure.
        &[
            "addRoleACL",
            "chat-reader",
            "subscribePattern",
            "hubbub/chat/#",
            "allow",
        ],
        &["addClientRole", "broadcast", "chat-reader"],
    ] {
        mosquitto_ctrl(&[&admin[..], command].concat()).await;
    }
    let broadcast = spawn_roles(&config(&db_url, &broker, "broadcast"), &[Role::Broadcast])
        .await
        .expect("broadcast");
    // Connected (the refusal comes in the SUBACK), yet never ready.
    for _ in 0..30 {
        let response = broadcast.get("/readyz").await;
        assert_eq!(response.status(), 503);
        let body: Value = response.json().await.expect("json");
        assert_eq!(body["checks"]["mqtt"], "down", "{body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        metric_value(&broadcast.metrics().await, "hubbub_mqtt_connected"),
        0.0
    );
    // Once the operator grants it, the instance's periodic retry (every 10 s)
    // subscribes and it becomes ready: it was connected all along.
    mosquitto_ctrl(
        &[
            &admin[..],
            &[
                "addRoleACL",
                "chat-reader",
                "subscribeLiteral",
                "hubbub/buffs",
                "allow",
            ],
        ]
        .concat(),
    )
    .await;
    wait_until("ready once granted", Duration::from_secs(20), async || {
        ready(&broadcast).await
    })
    .await;
}

/// The embedded database (SQLite) with a real broker: the relay must keep up
/// with clients posting without publishing anything twice. It used to hold a
/// read transaction across the PUBACKs, so its UPDATE failed (SQLite cannot
/// upgrade a read snapshot that another writer has passed: SQLITE_BUSY) whenever a
/// post committed meanwhile, and the whole round went out again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_sqlite_relay_publishes_each_message_once_while_clients_post() {
    let broker = Mosquitto::start().await.expect("mosquitto");
    // Everything the relay puts on the bus, one line per publish.
    let mut bus_log = tokio::process::Command::new(
        support::process::find_binary("mosquitto_sub", &[]).expect("mosquitto_sub"),
    )
    .args(["-h", "127.0.0.1", "-p", &broker.port().to_string()])
    .args(["-t", "hubbub/chat/#", "-q", "1", "-F", "%p"])
    .stdout(std::process::Stdio::piped())
    .kill_on_drop(true)
    .spawn()
    .expect("mosquitto_sub");
    let lines = {
        use tokio::io::AsyncBufReadExt;
        let stdout = bus_log.stdout.take().expect("stdout");
        let lines: Arc<Mutex<Vec<String>>> = Arc::default();
        let sink = lines.clone();
        tokio::spawn(async move {
            let mut reader = tokio::io::BufReader::new(stdout).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                sink.lock().await.push(line);
            }
        });
        lines
    };
    let app = spawn_roles(
        &format!(
            "[mqtt]\nurl = \"{}\"\n\n[chat]\nrate_per_minute = 1000000\nrate_burst = 1000000\n",
            broker.url()
        ),
        &[Role::Chat],
    )
    .await
    .expect("chat on SQLite");
    wait_until("connected", Duration::from_secs(20), async || {
        ready(&app).await
    })
    .await;
    // Probes until mosquitto_sub shows it is subscribed; then, once the outbox is
    // empty, the count starts from nothing.
    let deadline = Instant::now() + Duration::from_secs(20);
    while lines.lock().await.is_empty() {
        assert!(Instant::now() < deadline, "mosquitto_sub never saw a probe");
        post(&app.client, &app.url("/api/chat/sqlite/messages"), "probe").await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    wait_until("the probes relayed", Duration::from_secs(20), async || {
        app.metrics()
            .await
            .contains("hubbub_outbox_backlog{outbox=\"chat\"} 0")
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    lines.lock().await.clear();

    let acknowledged: Arc<Mutex<Vec<i64>>> = Arc::default();
    let mut posters = tokio::task::JoinSet::new();
    let until = Instant::now() + Duration::from_secs(3);
    for poster in 0..8 {
        let (client, url, acknowledged) = (
            app.client.clone(),
            app.url("/api/chat/sqlite/messages"),
            acknowledged.clone(),
        );
        posters.spawn(async move {
            let mut n = 0;
            while Instant::now() < until {
                n += 1;
                if let Some(id) = post(&client, &url, &format!("p{poster} n{n}")).await {
                    acknowledged.lock().await.push(id);
                }
            }
        });
    }
    while posters.join_next().await.is_some() {}
    let acknowledged = acknowledged.lock().await.clone();
    wait_until("the outbox drained", Duration::from_secs(30), async || {
        app.metrics()
            .await
            .contains("hubbub_outbox_backlog{outbox=\"chat\"} 0")
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut published: Vec<i64> = lines
        .lock()
        .await
        .iter()
        .map(|line| {
            serde_json::from_str::<Value>(line).expect("json")["id"]
                .as_i64()
                .expect("id")
        })
        .collect();
    let total = published.len();
    published.sort_unstable();
    published.dedup();
    let mut want = acknowledged.clone();
    want.sort_unstable();
    assert_eq!(published, want, "every acknowledged message on the bus");
    assert_eq!(
        total,
        want.len(),
        "{} publishes for {} messages: rounds went out again",
        total,
        want.len()
    );
}

/// A broker that hangs (here SIGSTOP) while its host still acknowledges TCP: once
/// our send buffer is full a write never completes. The session must notice within
/// a keep-alive interval or two (the publishes fail, the outbox keeps the rows),
/// and use the broker again once it is back. Before, the connection task sat in
/// that write for good: the keep-alive check never ran again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_broker_is_given_up_and_used_again_once_back() {
    use hubbub::bus::Bus;
    use hubbub::configuration::{Environment, Settings};

    let broker = Mosquitto::start().await.expect("mosquitto");
    let settings = Settings::from_toml(
        &format!("[mqtt]\nurl = \"{}\"\n", broker.url()),
        &Environment::default(),
    )
    .expect("settings");
    let metrics = hubbub::metrics::Metrics::new().expect("metrics");
    let bus = Bus::from_settings(&settings, Vec::new(), &metrics).expect("bus");
    wait_until("connected", Duration::from_secs(20), async || {
        bus.can_publish()
    })
    .await;
    bus.publish("hubbub/test", bytes::Bytes::from_static(b"before"))
        .await
        .expect("a live broker acknowledges");

    broker.freeze();
    // 30 MB: more than the kernel buffers both ways hold, so writes block.
    let payload = bytes::Bytes::from(vec![b'x'; 200 * 1024]);
    let publishes: Vec<_> = (0..150)
        .map(|_| {
            let (bus, payload) = (bus.clone(), payload.clone());
            tokio::spawn(async move { bus.publish("hubbub/test", payload).await })
        })
        .collect();
    let frozen = Instant::now();
    wait_until(
        "the hung broker given up",
        Duration::from_secs(45),
        async || !bus.can_publish(),
    )
    .await;
    let noticed = frozen.elapsed();
    for publish in publishes {
        assert!(
            publish.await.expect("task").is_err(),
            "no publish succeeds against a hung broker"
        );
    }
    broker.thaw();
    wait_until("reconnected", Duration::from_secs(20), async || {
        bus.can_publish()
    })
    .await;
    bus.publish("hubbub/test", bytes::Bytes::from_static(b"after"))
        .await
        .expect("acknowledged again");
    // Keep-alive 10 s: a stalled write or a missing PINGRESP, 10 to 20 s.
    assert!(
        noticed < Duration::from_secs(30),
        "noticed after {noticed:?}"
    );
}

/// `hubbub serve` stopped by SIGTERM says goodbye to the broker (DISCONNECT): the
/// broker logs a clean disconnect, not a connection that dropped. (Before, the
/// runtime ended with the connection task, which never got to send it.)
#[tokio::test]
async fn a_stopping_process_disconnects_from_the_broker() {
    let broker = Mosquitto::start().await.expect("mosquitto");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("hubbub.toml");
    std::fs::write(
        &config,
        format!(
            "[mqtt]\nurl = \"{}\"\nclient_id = \"live-goodbye\"\n",
            broker.url()
        ),
    )
    .expect("config");
    let credentials = dir.path().join("credentials");
    std::fs::create_dir_all(&credentials).expect("credentials");
    let mut chat =
        support::hubbub::HubbubProcess::start(Role::Chat, &config, &credentials, dir.path())
            .await
            .expect("hubbub serve chat");
    wait_until("connected", Duration::from_secs(20), async || {
        broker.log().contains("live-goodbye")
    })
    .await;
    chat.stop().await.expect("SIGTERM");
    wait_until(
        "the broker saw the client go",
        Duration::from_secs(10),
        async || {
            let log = broker.log();
            log.contains("Client live-goodbye disconnected")
                || log.contains("Client live-goodbye closed its connection")
        },
    )
    .await;
    let log = broker.log();
    assert!(
        log.contains("Client live-goodbye disconnected"),
        "no DISCONNECT from the stopping process:\n{log}"
    );
}
