//! An elastic app tier (issue 15): in the one-machine production topology, HAProxy
//! finds the app instances through DNS (dnsmasq with the records `nixos/lib/discovery.nix`
//! renders; HAProxy configured by `nixos/lib/haproxy.nix` from an inventory). Under load
//! (visits, stats and buff reads, chat posts, 200 SSE clients) the app tier goes from one
//! instance to three and back to one: no request fails, every SSE client resumes on
//! another instance and gets every chat message exactly once, in order, and HAProxy is
//! never reloaded. Prints its figures.

mod support;

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use hubbub::domain::Role;
use serde_json::{Value, json};
use support::elastic::ElasticTier;
use support::follower::Follower;

const SSE_CLIENTS: usize = 200;
const CHANNEL: &str = "scale";
/// How long the load runs in each shape of the tier.
const DWELL: Duration = Duration::from_secs(2);

/// Outcomes of the load, shared by its tasks.
#[derive(Default)]
struct Tally {
    requests: AtomicUsize,
    failures: AtomicUsize,
    /// The first few failures, for the report.
    failed: Mutex<Vec<String>>,
    /// Ids of the chat messages answered 201, in no particular order.
    acked: Mutex<Vec<i64>>,
}

impl Tally {
    fn fail(&self, what: String) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut failed) = self.failed.lock()
            && failed.len() < 10
        {
            failed.push(what);
        }
    }
}

/// Pages, stats and buff lists from `readers` tasks, chat posts from `posters` tasks,
/// each request after the previous one, until `stop`.
fn start_load(
    tier: &ElasticTier,
    readers: usize,
    posters: usize,
    stop: &Arc<AtomicBool>,
    tally: &Arc<Tally>,
) -> tokio::task::JoinSet<()> {
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..readers {
        let (client, stop, tally) = (tier.client(), stop.clone(), tally.clone());
        let urls = ["/", "/api/stats", "/api/buffs"].map(|path| tier.url(path));
        tasks.spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                for url in &urls {
                    tally.requests.fetch_add(1, Ordering::Relaxed);
                    match client.get(url).send().await {
                        Ok(response) if response.status() == 200 => {
                            // Read the body: a response cut short is a failure too.
                            if let Err(error) = response.bytes().await {
                                tally.fail(format!("GET {url}: body: {error}"));
                            }
                        }
                        Ok(response) => tally.fail(format!("GET {url}: {}", response.status())),
                        Err(error) => tally.fail(format!("GET {url}: {error}")),
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
    }
    for poster in 0..posters {
        let (client, stop, tally) = (tier.client(), stop.clone(), tally.clone());
        let url = tier.url(&format!("/api/chat/{CHANNEL}/messages"));
        tasks.spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                tally.requests.fetch_add(1, Ordering::Relaxed);
                let body =
                    json!({"user": format!("poster{poster}"), "text": format!("message {n}")});
                match client.post(&url).json(&body).send().await {
                    Ok(response) if response.status() == 201 => {
                        match response
                            .json::<Value>()
                            .await
                            .ok()
                            .and_then(|v| v["id"].as_i64())
                        {
                            Some(id) => {
                                if let Ok(mut acked) = tally.acked.lock() {
                                    acked.push(id);
                                }
                            }
                            None => tally.fail(format!("POST {url}: 201 without an id")),
                        }
                    }
                    Ok(response) => tally.fail(format!("POST {url}: {}", response.status())),
                    Err(error) => tally.fail(format!("POST {url}: {error}")),
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
    }
    tasks
}

/// `SSE_CLIENTS` followers of the channel, each confirmed connected (a warm-up message
/// reached all), with what they received so far forgotten.
async fn followers(tier: &ElasticTier) -> anyhow::Result<Vec<Follower>> {
    let url = tier.url(&format!("/api/chat/{CHANNEL}/events"));
    let all: Vec<Follower> = (0..SSE_CLIENTS)
        .map(|_| Follower::spawn(tier.client(), url.clone()))
        .collect();
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let response = tier
            .client()
            .post(tier.url(&format!("/api/chat/{CHANNEL}/messages")))
            .json(&json!({"user": "scale", "text": "warm-up"}))
            .send()
            .await?;
        ensure!(
            response.status() == 201,
            "warm-up post: {}",
            response.status()
        );
        let id = response.json::<Value>().await?["id"]
            .as_i64()
            .context("warm-up id")?;
        let wait = Instant::now() + Duration::from_secs(2);
        while Instant::now() < wait && !all.iter().all(|f| f.received().contains(&id)) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if all.iter().all(|f| f.received().contains(&id)) {
            break;
        }
        ensure!(Instant::now() < until, "the SSE clients did not attach");
    }
    all.iter().for_each(Follower::forget);
    Ok(all)
}

/// The metrics of instance `instance`'s `role` process.
async fn metrics(tier: &ElasticTier, instance: usize, role: Role) -> anyhow::Result<String> {
    let process = tier.instances[instance]
        .processes
        .iter()
        .find(|p| p.role == role)
        .context("no process of that role")?;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    Ok(client
        .get(process.metrics_url())
        .send()
        .await?
        .text()
        .await?)
}

/// Requests the instance's `role` process answered for that role.
async fn served(tier: &ElasticTier, instance: usize, role: Role) -> anyhow::Result<f64> {
    let text = metrics(tier, instance, role).await?;
    let label = format!("role=\"{role}\"");
    Ok(text
        .lines()
        .filter(|l| l.starts_with("hubbub_http_requests_total{") && l.contains(&label))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum())
}

async fn sse_clients(tier: &ElasticTier, instance: usize) -> anyhow::Result<f64> {
    let text = metrics(tier, instance, Role::Broadcast).await?;
    Ok(support::app::metric_value(&text, "hubbub_sse_clients"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn app_tier_scales_out_and_in_under_load_without_reloading_haproxy() -> anyhow::Result<()> {
    let started = Instant::now();
    let mut tier = ElasticTier::start().await?;
    tier.add_instance(1).await?;
    let haproxy_pid = tier.haproxy_info("Pid").await?;
    let haproxy_config = std::fs::read(&tier.haproxy_config)?;

    let clients = followers(&tier).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let load_started = Instant::now();
    let mut load = start_load(&tier, 3, 2, &stop, &tally);
    let mut steps = Vec::new();
    let mut step =
        |what: &str, at: Instant| steps.push(format!("{what} {:.1} s", at.elapsed().as_secs_f64()));

    tokio::time::sleep(DWELL).await;
    for n in [2, 3] {
        let at = Instant::now();
        tier.add_instance(n).await?;
        step(&format!("+instance{n}"), at);
        tokio::time::sleep(DWELL).await;
    }
    // The new instances take their share of the requests without HAProxy being touched.
    for instance in [1, 2] {
        for role in [Role::Visitors, Role::Chat, Role::Buffs] {
            let count = served(&tier, instance, role).await?;
            ensure!(
                count > 0.0,
                "instance{} served no {role} request",
                instance + 1
            );
        }
    }
    // Scale in, removing the instance that holds every SSE stream first.
    for n in [1, 2] {
        let at = Instant::now();
        tier.remove_instance(n).await?;
        step(&format!("-instance{n}"), at);
        tokio::time::sleep(DWELL).await;
    }
    stop.store(true, Ordering::Relaxed);
    while let Some(joined) = load.join_next().await {
        joined?;
    }
    let load_time = load_started.elapsed();

    let mut acked = tally.acked.lock().map(|a| a.clone()).unwrap_or_default();
    acked.sort_unstable();
    let until = Instant::now() + Duration::from_secs(60);
    while clients.iter().any(|c| c.received_len() < acked.len()) && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let exact = clients.iter().filter(|c| c.received() == acked).count();
    let resumes: usize = clients
        .iter()
        .map(|c| c.reconnects.load(Ordering::Relaxed))
        .sum();
    let refused: usize = clients
        .iter()
        .map(|c| c.refused.load(Ordering::Relaxed))
        .sum();
    let resumed_clients = clients
        .iter()
        .filter(|c| c.reconnects.load(Ordering::Relaxed) > 0)
        .count();
    let on_last = sse_clients(&tier, 0).await?;
    let requests = tally.requests.load(Ordering::Relaxed);
    let failures = tally.failures.load(Ordering::Relaxed);
    let failed = tally.failed.lock().map(|f| f.clone()).unwrap_or_default();
    let slots_in_use: usize = {
        let mut n = 0;
        for role in Role::ALL {
            n += tier
                .servers(role)
                .await?
                .iter()
                .filter(|s| s.serving())
                .count();
        }
        n
    };

    println!(
        "\nscale 1 -> 3 -> 1 under load in {:.1} s ({}): {requests} requests ({:.0}/s), \
         {failures} failed; {} chat messages, {exact}/{SSE_CLIENTS} SSE clients got each \
         exactly once in order; {resumes} SSE resumes ({resumed_clients} clients), \
         {refused} refused reconnects; {on_last} streams on the last instance; \
         HAProxy pid {haproxy_pid}, never reloaded; total {:.1} s",
        load_time.as_secs_f64(),
        steps.join(", "),
        requests as f64 / load_time.as_secs_f64(),
        acked.len(),
        started.elapsed().as_secs_f64(),
    );

    ensure!(
        failures == 0,
        "{failures} requests failed, first: {failed:?}"
    );
    ensure!(!acked.is_empty(), "no chat message was posted");
    ensure!(
        exact == SSE_CLIENTS,
        "{} of {SSE_CLIENTS} SSE clients did not get exactly the {} messages in order \
         (first such got {} ids)",
        SSE_CLIENTS - exact,
        acked.len(),
        clients
            .iter()
            .find(|c| c.received() != acked)
            .map_or(0, Follower::received_len),
    );
    ensure!(
        resumed_clients == SSE_CLIENTS,
        "only {resumed_clients} SSE clients resumed, though all were on the first instance"
    );
    ensure!(refused == 0, "{refused} SSE reconnects were refused");
    ensure!(
        on_last == SSE_CLIENTS as f64,
        "the last instance holds {on_last} streams, not {SSE_CLIENTS}"
    );
    ensure!(
        slots_in_use == 4,
        "{slots_in_use} servers in use, not one per pool"
    );
    ensure!(
        tier.haproxy_info("Pid").await? == haproxy_pid,
        "HAProxy was restarted"
    );
    let uptime: u64 = tier.haproxy_info("Uptime_sec").await?.parse()?;
    ensure!(
        uptime + 1 >= load_started.elapsed().as_secs(),
        "HAProxy's process is younger than the load ({uptime} s)"
    );
    ensure!(
        std::fs::read(&tier.haproxy_config)? == haproxy_config,
        "the HAProxy configuration changed"
    );
    Ok(())
}
