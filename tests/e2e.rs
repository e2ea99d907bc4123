//! The production topology on one machine (issue 7): every request through HAProxy
//! over HTTPS to two hubbub processes per role, backed by PostgreSQL, Redis and
//! Mosquitto with TLS; then the failure drills. Prints a table of the drills.

mod support;

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use hubbub::domain::Role;
use serde_json::{Value, json};
use support::follower::Follower;
use support::stack::{ADMIN_TOKEN, Stack, repo};

const WAIT: Duration = Duration::from_secs(20);

/// Followers on `channel`, each confirmed connected (a warm-up message reached all).
async fn followers(stack: &Stack, channel: &str, n: usize) -> anyhow::Result<Vec<Follower>> {
    let all: Vec<Follower> = (0..n)
        .map(|_| {
            Follower::spawn(
                stack.client.clone(),
                stack.url(&format!("/api/chat/{channel}/events")),
            )
        })
        .collect();
    let until = Instant::now() + WAIT;
    loop {
        let warmup = post_ack(stack, channel, "warm-up")
            .await
            .context("warm-up post")?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        if all.iter().all(|f| f.received().contains(&warmup)) {
            break;
        }
        ensure!(Instant::now() < until, "followers did not attach");
    }
    all.iter().for_each(Follower::forget);
    Ok(all)
}

/// Waits until HAProxy sees every pool healthy again after a drill.
async fn settle(stack: &Stack) -> anyhow::Result<()> {
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let mut healthy = true;
        for path in ["/readyz", "/api/chat/settle/messages", "/api/buffs"] {
            let ok = stack
                .client
                .get(stack.url(path))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200);
            healthy &= ok;
        }
        if healthy {
            return Ok(());
        }
        ensure!(Instant::now() < until, "the pools did not come back");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn post_chat(stack: &Stack, channel: &str, text: &str) -> anyhow::Result<reqwest::Response> {
    Ok(stack
        .client
        .post(stack.url(&format!("/api/chat/{channel}/messages")))
        .json(&json!({"user": "e2e", "text": text}))
        .send()
        .await?)
}

/// Posts and returns the id when answered 201; `None` for any other outcome.
async fn post_ack(stack: &Stack, channel: &str, text: &str) -> Option<i64> {
    let response = post_chat(stack, channel, text).await.ok()?;
    if response.status() != 201 {
        return None;
    }
    response.json::<Value>().await.ok()?["id"].as_i64()
}

async fn history_ids(stack: &Stack, channel: &str) -> anyhow::Result<Vec<i64>> {
    let mut all = Vec::new();
    let mut before: Option<i64> = None;
    loop {
        let path = match before {
            Some(b) => format!("/api/chat/{channel}/messages?limit=200&before={b}"),
            None => format!("/api/chat/{channel}/messages?limit=200"),
        };
        let page: Vec<Value> = stack
            .client
            .get(stack.url(&path))
            .send()
            .await?
            .json()
            .await?;
        let ids: Vec<i64> = page.iter().filter_map(|m| m["id"].as_i64()).collect();
        if ids.is_empty() {
            break;
        }
        before = ids.first().copied();
        let mut merged = ids;
        merged.extend(all);
        all = merged;
    }
    Ok(all)
}

async fn journeys(stack: &mut Stack) -> anyhow::Result<String> {
    let page = stack.client.get(stack.url("/")).send().await?;
    ensure!(page.status() == 200, "visitor page {}", page.status());
    ensure!(
        page.headers().contains_key("strict-transport-security"),
        "HSTS header"
    );
    ensure!(page.text().await?.contains("You have visited this page"));
    let stats: Value = stack
        .client
        .get(stack.url("/api/stats"))
        .send()
        .await?
        .json()
        .await?;
    ensure!(stats["total_visits"].as_i64() >= Some(1), "{stats}");

    let follower = followers(stack, "journey", 1).await?.remove(0);
    let id = post_ack(stack, "journey", "hello through the proxy")
        .await
        .context("post")?;
    follower.expect_exactly(&[id], WAIT).await?;
    ensure!(history_ids(stack, "journey").await?.ends_with(&[id]));

    let quiz = json!({"question": "through the proxy?", "answers": ["yes", "no"]});
    let refused = stack
        .client
        .post(stack.url("/api/buffs"))
        .json(&quiz)
        .send()
        .await?;
    ensure!(refused.status() == 401, "no token: {}", refused.status());
    let created = stack
        .client
        .post(stack.url("/buff"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&quiz)
        .send()
        .await?;
    ensure!(
        created.status() == 201,
        "old route with token: {}",
        created.status()
    );
    let buff: Value = created.json().await?;
    let listed: Vec<Value> = stack
        .client
        .get(stack.url("/buffs"))
        .send()
        .await?
        .json()
        .await?;
    ensure!(
        listed.first().map(|b| &b["id"]) == Some(&buff["id"]),
        "listed on the old route"
    );
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let redirect = http
        .get(format!("http://127.0.0.1:{}/", stack.http_port))
        .send()
        .await?;
    ensure!(
        redirect.status().is_redirection(),
        "http → https: {}",
        redirect.status()
    );
    Ok("page, stats, chat, SSE, buffs, old routes, https redirect".into())
}

async fn sse_failover(stack: &mut Stack) -> anyhow::Result<String> {
    let clients = followers(stack, "failover", 6).await?;
    let mut sent = Vec::new();
    for i in 0..5 {
        sent.push(
            post_ack(stack, "failover", &format!("before {i}"))
                .await
                .context("post")?,
        );
    }
    stack
        .processes_of(Role::Broadcast)
        .next()
        .context("a broadcast process")?
        .kill()
        .await?;
    for i in 0..10 {
        sent.push(
            post_ack(stack, "failover", &format!("during {i}"))
                .await
                .context("post")?,
        );
    }
    let mut reconnects = 0;
    for client in &clients {
        client.expect_exactly(&sent, WAIT).await?;
        reconnects += client.reconnects.load(Ordering::Relaxed);
    }
    ensure!(
        reconnects >= 1,
        "the clients of the killed process reconnected"
    );
    for process in stack.processes_of(Role::Broadcast) {
        if !process.is_running() {
            process.start_again().await?;
        }
    }
    Ok(format!(
        "6 clients got all {} messages exactly once; {reconnects} reconnects",
        sent.len()
    ))
}

async fn broker_restart(stack: &mut Stack) -> anyhow::Result<String> {
    let follower = followers(stack, "broker", 1).await?.remove(0);
    let poster = {
        let stack_client = stack.client.clone();
        let url = stack.url("/api/chat/broker/messages");
        tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0..60 {
                let response = stack_client
                    .post(&url)
                    .json(&json!({"user": "e2e", "text": format!("m{i}")}))
                    .send()
                    .await;
                if let Ok(r) = response
                    && r.status() == 201
                    && let Ok(body) = r.json::<Value>().await
                    && let Some(id) = body["id"].as_i64()
                {
                    acked.push(id);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            acked
        })
    };
    tokio::time::sleep(Duration::from_millis(800)).await;
    stack.broker.stop().await?;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    stack.broker.start_again().await?;
    let acked = poster.await?;
    ensure!(
        acked.len() == 60,
        "chat kept answering 201 while the broker was away: {}",
        acked.len()
    );
    follower
        .expect_exactly(&acked, Duration::from_secs(40))
        .await?;
    Ok(format!(
        "{} acknowledged, all delivered in order once",
        acked.len()
    ))
}

async fn postgres_restart(stack: &mut Stack) -> anyhow::Result<String> {
    let before = post_ack(stack, "pg", "before the outage")
        .await
        .context("post")?;
    stack.postgres.stop().await?;
    let during = stack
        .client
        .get(stack.url("/api/stats"))
        .send()
        .await?
        .status();
    ensure!(during == 503, "stats during the outage: {during}");
    let post_during = post_chat(stack, "pg", "during").await?.status();
    ensure!(post_during == 503, "post during the outage: {post_during}");
    stack.postgres.start_again().await?;
    let started = Instant::now();
    let after = loop {
        if let Some(id) = post_ack(stack, "pg", "after").await {
            break id;
        }
        ensure!(started.elapsed() < WAIT, "no recovery within {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    settle(stack).await?;
    let history = history_ids(stack, "pg").await?;
    ensure!(
        history.contains(&before) && history.contains(&after),
        "{history:?}"
    );
    ensure!(
        history.len() == 2,
        "nothing from the outage was half-stored: {history:?}"
    );
    Ok(format!(
        "503 during, recovered in {:.1} s, no write lost",
        started.elapsed().as_secs_f64()
    ))
}

async fn redis_outage(stack: &mut Stack) -> anyhow::Result<String> {
    stack.redis.stop().await?;
    let ready = stack.client.get(stack.url("/readyz")).send().await?;
    ensure!(ready.status() == 200, "readyz {}", ready.status());
    let ready: Value = ready.json().await?;
    ensure!(ready["status"] == "degraded", "{ready}");
    let before: Value = stack
        .client
        .get(stack.url("/api/stats"))
        .send()
        .await?
        .json()
        .await?;
    let page = stack.client.get(stack.url("/")).send().await?;
    ensure!(
        page.status() == 200,
        "visit without redis: {}",
        page.status()
    );
    // The stats are cached in each process (500 ms), not in Redis: they catch up.
    let expected = before["total_visits"].as_i64().map(|t| t + 1);
    let started = Instant::now();
    loop {
        let after: Value = stack
            .client
            .get(stack.url("/api/stats"))
            .send()
            .await?
            .json()
            .await?;
        if after["total_visits"].as_i64() == expected {
            break;
        }
        ensure!(
            started.elapsed() < Duration::from_secs(5),
            "stats without redis: {before} → {after}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let id = post_ack(stack, "redis", "no redis")
        .await
        .context("chat without redis")?;
    stack.redis.start_again().await?;
    let started = Instant::now();
    loop {
        let ready: Value = stack
            .client
            .get(stack.url("/readyz"))
            .send()
            .await?
            .json()
            .await?;
        if ready["status"] == "ready" {
            break;
        }
        ensure!(started.elapsed() < WAIT, "still {ready}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(format!(
        "degraded, exact counts, chat {id} accepted; ready again"
    ))
}

async fn chat_killed_mid_load(stack: &mut Stack) -> anyhow::Result<String> {
    let follower = followers(stack, "crash", 1).await?.remove(0);
    let poster = {
        let client = stack.client.clone();
        let url = stack.url("/api/chat/crash/messages");
        tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut failed = 0;
            for i in 0..80 {
                match client
                    .post(&url)
                    .json(&json!({"user": "e2e", "text": format!("c{i}")}))
                    .send()
                    .await
                {
                    Ok(r) if r.status() == 201 => {
                        if let Some(id) =
                            r.json::<Value>().await.ok().and_then(|b| b["id"].as_i64())
                        {
                            acked.push(id);
                        }
                    }
                    _ => failed += 1,
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (acked, failed)
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    stack
        .processes_of(Role::Chat)
        .next()
        .context("chat process")?
        .kill()
        .await?;
    let (acked, failed) = poster.await?;
    let history: BTreeSet<i64> = history_ids(stack, "crash").await?.into_iter().collect();
    let lost: Vec<i64> = acked
        .iter()
        .filter(|id| !history.contains(id))
        .copied()
        .collect();
    ensure!(lost.is_empty(), "acknowledged but lost: {lost:?}");
    let until = Instant::now() + Duration::from_secs(40);
    while follower.received().len() < acked.len() && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let delivered: BTreeSet<i64> = follower.received().into_iter().collect();
    ensure!(
        acked.iter().all(|id| delivered.contains(id)),
        "acknowledged but not delivered"
    );
    for process in stack.processes_of(Role::Chat) {
        if !process.is_running() {
            process.start_again().await?;
        }
    }
    Ok(format!(
        "{} acknowledged, none lost; {failed} refused while the proxy noticed",
        acked.len()
    ))
}

/// Requests that are refused whatever happens may be sent again: one that went out
/// on a pooled keep-alive connection the proxy was closing at that moment gets no
/// answer at all (the HTTP/1.1 race browsers answer by sending it once more), and
/// the drill is about the answer, not that race.
trait SendRefused {
    async fn send_refused(self) -> reqwest::Result<reqwest::Response>;
}

impl SendRefused for reqwest::RequestBuilder {
    async fn send_refused(self) -> reqwest::Result<reqwest::Response> {
        let again = self.try_clone();
        match (self.send().await, again) {
            (Err(error), Some(again)) if error.is_request() => again.send().await,
            (result, _) => result,
        }
    }
}

async fn bad_input(stack: &mut Stack) -> anyhow::Result<String> {
    let mut checked = 0;
    let cases = [
        (
            "/api/chat/UPPER/messages",
            json!({"user": "a", "text": "b"}),
            400,
        ),
        (
            "/api/chat/ok/messages",
            json!({"user": "", "text": "b"}),
            400,
        ),
        (
            "/api/chat/ok/messages",
            json!({"user": "a", "text": "x".repeat(2001)}),
            400,
        ),
        (
            "/api/chat/ok/messages",
            json!({"user": "a", "text": "bell\u{7}"}),
            400,
        ),
    ];
    for (path, body, status) in cases {
        let got = stack
            .client
            .post(stack.url(path))
            .json(&body)
            .send_refused()
            .await?
            .status();
        ensure!(got == status, "{path} {body}: {got}");
        checked += 1;
    }
    let buff = json!({"question": "q", "answers": ["a", "A"]});
    let got = stack
        .client
        .post(stack.url("/api/buffs"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&buff)
        .send_refused()
        .await?
        .status();
    ensure!(got == 400, "duplicate answers: {got}");
    let huge = "x".repeat(64 * 1024);
    let got = stack
        .client
        .post(stack.url("/api/chat/ok/messages"))
        .header("content-type", "application/json")
        .body(huge)
        .send_refused()
        .await?
        .status();
    ensure!(got == 413, "oversized: {got}");
    let got = stack
        .client
        .post(stack.url("/api/chat/ok/messages"))
        .header("content-type", "text/plain")
        .body("{}")
        .send_refused()
        .await?
        .status();
    ensure!(got == 415, "content type: {got}");
    checked += 3;

    // A forged X-Forwarded-For must not change who the visitor is.
    let first: Value = stack
        .client
        .get(stack.url("/api/stats"))
        .send()
        .await?
        .json()
        .await?;
    for forged in ["203.0.113.1", "203.0.113.2, 10.0.0.1", "garbage"] {
        let page = stack
            .client
            .get(stack.url("/"))
            .header("x-forwarded-for", forged)
            .send()
            .await?
            .text()
            .await?;
        ensure!(page.contains("You have visited"), "page");
    }
    let second: Value = stack
        .client
        .get(stack.url("/api/stats"))
        .send()
        .await?
        .json()
        .await?;
    ensure!(
        second["unique_visitors"] == first["unique_visitors"],
        "forged XFF made new visitors: {first} → {second}"
    );
    checked += 1;

    // Slow clients (headers trickling in) do not starve the others.
    let mut slow = Vec::new();
    for _ in 0..50 {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", stack.http_port)).await?;
        use tokio::io::AsyncWriteExt;
        stream.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await?;
        slow.push(stream);
    }
    let started = Instant::now();
    for _ in 0..10 {
        let status = stack
            .client
            .get(stack.url("/healthz"))
            .send_refused()
            .await?
            .status();
        ensure!(status == 200, "healthz under slowloris: {status}");
    }
    ensure!(
        started.elapsed() < Duration::from_secs(5),
        "slow clients slowed others: {:?}",
        started.elapsed()
    );
    drop(slow);
    checked += 1;
    Ok(format!("{checked} rules held"))
}

async fn fail2ban_filter(stack: &mut Stack) -> anyhow::Result<String> {
    let quiz = json!({"question": "q", "answers": ["a", "b"]});
    for token in [None, Some("wrong-1"), Some("wrong-2")] {
        let mut request = stack.client.post(stack.url("/api/buffs")).json(&quiz);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        ensure!(request.send().await?.status() == 401);
    }
    let logs = stack.logs();
    let expected = logs
        .lines()
        .filter(|l| l.contains("authentication failed client_ip="))
        .count();
    let log = stack.dir.path().join("all-hubbub.log");
    std::fs::write(&log, &logs)?;
    let filter = repo().join("nixos/files/fail2ban/hubbub-auth.conf");
    let output = tokio::process::Command::new("fail2ban-regex")
        .args(["--print-no-missed", "--print-all-matched"])
        .arg(&log)
        .arg(&filter)
        .output()
        .await?;
    let text = String::from_utf8_lossy(&output.stdout);
    ensure!(output.status.success(), "fail2ban-regex: {text}");
    let matched = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Lines:"))
        .and_then(|l| l.split(',').find(|part| part.contains("matched")))
        .and_then(|m| m.split_whitespace().next())
        .and_then(|n| n.parse::<usize>().ok())
        .context(format!("no match count in fail2ban-regex output: {text}"))?;
    ensure!(expected >= 3, "the failures were logged: {expected}");
    ensure!(
        matched == expected,
        "filter matched {matched}, failures {expected}"
    );
    Ok(format!(
        "{matched} of {} lines matched = the auth failures",
        logs.lines().count()
    ))
}

async fn backup_restore(stack: &mut Stack) -> anyhow::Result<String> {
    let db = stack.database.clone();
    let count = |sql: &'static str| {
        let stack = &*stack;
        let db = db.clone();
        async move {
            stack
                .postgres
                .psql(&db, sql)
                .await
                .map(|s| s.trim().to_owned())
        }
    };
    let source_counts = count("SELECT (SELECT count(*) FROM chat_messages) || '/' || (SELECT count(*) FROM buffs) || '/' || (SELECT sum(visits) FROM visitors)").await?;
    let source_digest =
        count("SELECT md5(string_agg(id || ':' || text, ',' ORDER BY id)) FROM chat_messages")
            .await?;
    // Dump as services.postgresqlBackup does: pg_dump -C, compressed with zstd.
    let dump = stack.dir.path().join("hubbub.sql.zstd");
    let socket = stack.postgres.socket_dir().display().to_string();
    let port = stack.postgres.port().to_string();
    let script = format!(
        "pg_dump -C -h '{socket}' -p {port} -U postgres '{db}' | zstd -q -9 -o '{}'",
        dump.display()
    );
    let status = tokio::process::Command::new("bash")
        .args(["-c", &script])
        .env("PATH", pg_path())
        .status()
        .await?;
    ensure!(status.success(), "pg_dump failed");
    // Restore with the very script `hubbub-db-restore` installs, into a scratch database.
    let restore = repo().join("nixos/modules/hubbub-db-restore.sh");
    let output = tokio::process::Command::new("bash")
        .arg(&restore)
        .arg(&dump)
        .arg("restored")
        .env("PATH", pg_path())
        .env("PGHOST", &socket)
        .env("PGPORT", &port)
        .env("PGUSER", "postgres")
        .env("HUBBUB_DB_RESTORE_AS_ROOT", "1")
        .output()
        .await?;
    ensure!(
        output.status.success(),
        "restore: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let restored_counts = stack.postgres.psql("restored", "SELECT (SELECT count(*) FROM chat_messages) || '/' || (SELECT count(*) FROM buffs) || '/' || (SELECT sum(visits) FROM visitors)").await?;
    let restored_digest = stack
        .postgres
        .psql(
            "restored",
            "SELECT md5(string_agg(id || ':' || text, ',' ORDER BY id)) FROM chat_messages",
        )
        .await?;
    ensure!(
        restored_counts.trim() == source_counts,
        "{source_counts} vs {}",
        restored_counts.trim()
    );
    ensure!(restored_digest.trim() == source_digest, "contents differ");
    Ok(format!(
        "rows {source_counts} (messages/buffs/visits) identical after restore"
    ))
}

/// 500 SSE clients and 50 posts/s for 20 s, all through HAProxy: every post is
/// acknowledged, and every client receives every message once, in order, without
/// having to reconnect.
async fn load_smoke(stack: &mut Stack) -> anyhow::Result<String> {
    const CLIENTS: usize = 500;
    const RATE: u64 = 50;
    const SECONDS: u64 = 20;
    let clients = followers(stack, "load", CLIENTS).await?;
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(1000 / RATE));
    let mut posts = tokio::task::JoinSet::new();
    for i in 0..RATE * SECONDS {
        tick.tick().await;
        let client = stack.client.clone();
        let url = stack.url("/api/chat/load/messages");
        // Each post on its own task, so a slow answer does not lower the rate.
        posts.spawn(async move {
            let response = client
                .post(&url)
                .json(&json!({"user": "load", "text": format!("l{i}")}))
                .send()
                .await
                .map_err(|e| format!("post {i}: {e}"))?;
            let status = response.status();
            let body: Value = response
                .json()
                .await
                .map_err(|e| format!("post {i}: {e}"))?;
            match body["id"].as_i64() {
                Some(id) if status == 201 => Ok(id),
                _ => Err(format!("post {i}: {status} {body}")),
            }
        });
    }
    let mut acked = Vec::new();
    let mut errors = Vec::new();
    while let Some(joined) = posts.join_next().await {
        match joined? {
            Ok(id) => acked.push(id),
            Err(error) => errors.push(error),
        }
    }
    let posting = started.elapsed();
    ensure!(
        errors.is_empty(),
        "{} posts failed, first: {}",
        errors.len(),
        errors[0]
    );
    acked.sort_unstable();
    let until = Instant::now() + Duration::from_secs(60);
    while clients.iter().any(|c| c.received().len() < acked.len()) && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let drained = started.elapsed();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let wrong = clients.iter().filter(|c| c.received() != acked).count();
    let reconnects: usize = clients
        .iter()
        .map(|c| c.reconnects.load(Ordering::Relaxed))
        .sum();
    ensure!(
        wrong == 0,
        "{wrong} of {CLIENTS} clients did not get exactly the {} messages in order \
         (first such got {} ids); {reconnects} reconnects",
        acked.len(),
        clients
            .iter()
            .find(|c| c.received() != acked)
            .map_or(0, |c| c.received().len()),
    );
    ensure!(reconnects == 0, "{reconnects} reconnects under load");
    Ok(format!(
        "{} posts in {:.1} s, {} deliveries, all in {:.1} s",
        acked.len(),
        posting.as_secs_f64(),
        acked.len() * CLIENTS,
        drained.as_secs_f64()
    ))
}

fn pg_path() -> String {
    let pg_bin = std::fs::read_dir("/usr/lib/postgresql")
        .ok()
        .and_then(|d| d.flatten().map(|e| e.path().join("bin")).max())
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    format!("{pg_bin}:{}", std::env::var("PATH").unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn production_topology_drills() {
    let mut stack = Stack::start(2).await.expect("the stack starts");
    let mut table = Vec::new();
    macro_rules! drill {
        ($name:expr, $f:ident) => {{
            let started = Instant::now();
            let outcome = $f(&mut stack).await.map_err(|e| format!("{e:#}"));
            table.push(($name, outcome, started.elapsed().as_secs_f64()));
            if let Err(error) = settle(&stack).await {
                panic!("after {}: {error:#}", $name);
            }
        }};
    }
    drill!("journeys", journeys);
    drill!("SSE failover", sse_failover);
    drill!("broker restart while posting", broker_restart);
    drill!("PostgreSQL restart", postgres_restart);
    drill!("Redis killed", redis_outage);
    drill!("chat process killed mid-load", chat_killed_mid_load);
    drill!("bad input through the proxy", bad_input);
    drill!("fail2ban filter on real logs", fail2ban_filter);
    drill!("backup and restore", backup_restore);
    drill!("load smoke", load_smoke);

    println!("\n{:<32} {:<6} {:>7}  detail", "drill", "result", "seconds");
    for (name, outcome, seconds) in &table {
        let (result, detail) = match outcome {
            Ok(detail) => ("ok", detail.as_str()),
            Err(error) => ("FAIL", error.as_str()),
        };
        println!("{name:<32} {result:<6} {seconds:>7.1}  {detail}");
    }
    let failed: Vec<&str> = table
        .iter()
        .filter(|(_, o, _)| o.is_err())
        .map(|(n, _, _)| *n)
        .collect();
    assert!(failed.is_empty(), "drills failed: {failed:?}");
}
