//! SSE fan-out load tool (`tests/bench`): opens N subscribers on an event stream,
//! publishes M messages, and reports delivery latency, throughput and the server's
//! memory per connection. Works against hubbub (`--format chat`) and against any
//! plain pub/sub over SSE such as nginx + nchan (`--format raw`).
//!
//! Every published message carries `ts=<ns>`, the publisher's clock; subscribers run
//! in the same process, so latency = receive time - that stamp, with no clock skew.
//! Prints one JSON object on stdout.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use clap::{Parser, ValueEnum};
use futures_util::StreamExt;
use serde_json::json;
use tokio::sync::{Mutex, Semaphore};

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    /// hubbub chat: JSON `{"user","text"}`.
    Chat,
    /// The body as is (nchan's publisher).
    Raw,
}

#[derive(Parser)]
struct Args {
    /// The event stream URL every subscriber opens.
    #[arg(long)]
    subscribe: String,
    #[arg(long, default_value_t = 1000)]
    subscribers: usize,
    /// Where messages are POSTed.
    #[arg(long)]
    publish: String,
    #[arg(long, value_enum, default_value = "chat")]
    format: Format,
    #[arg(long, default_value_t = 100)]
    messages: usize,
    /// Messages per second; 0 = as fast as `--concurrency` allows.
    #[arg(long, default_value_t = 10)]
    rate: u64,
    /// Publishes in flight at once.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Server processes whose resident memory is summed (before and after connecting).
    #[arg(long = "rss-pid")]
    rss_pids: Vec<u32>,
    /// Give up waiting for deliveries after this long.
    #[arg(long, default_value_t = 120)]
    timeout_secs: u64,
    /// Spread subscribers and messages over this many channels: `{channel}` in
    /// both URLs becomes `c0`, `c1`, …; subscriber i and message n go to channel
    /// i % N and n % N.
    #[arg(long, default_value_t = 1)]
    channels: usize,
}

fn channel_url(template: &str, channel: usize) -> String {
    template.replace("{channel}", &format!("c{channel}"))
}

/// What one subscriber saw.
#[derive(Default)]
struct Seen {
    warm: bool,
    latencies_us: Vec<u32>,
    /// The message number (`n=`) of each latency.
    messages: Vec<u32>,
    last_at: Option<Instant>,
}

struct Shared {
    base: Instant,
    connected: AtomicUsize,
    broken: AtomicUsize,
    /// Streams the server ended (e.g. a slow client cut off) and that resumed
    /// with `Last-Event-ID`, as EventSource does.
    resumed: AtomicUsize,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let shared = Arc::new(Shared {
        base: Instant::now(),
        connected: AtomicUsize::new(0),
        broken: AtomicUsize::new(0),
        resumed: AtomicUsize::new(0),
    });
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .connect_timeout(Duration::from_secs(10))
        .build()?;
    let rss_idle_kb = rss_kb(&args.rss_pids)?;

    let connecting = Instant::now();
    let seen: Vec<Arc<Mutex<Seen>>> = (0..args.subscribers)
        .map(|_| Arc::new(Mutex::new(Seen::default())))
        .collect();
    // Bounded so the server's accept backlog is not overrun.
    let gate = Arc::new(Semaphore::new(256));
    ensure!(
        args.channels >= 1 && (args.channels == 1 || args.subscribe.contains("{channel}")),
        "--channels above 1 needs {{channel}} in --subscribe and --publish"
    );
    for (i, slot) in seen.iter().enumerate() {
        let permit = gate.clone().acquire_owned().await?;
        tokio::spawn(subscribe(
            client.clone(),
            channel_url(&args.subscribe, i % args.channels),
            slot.clone(),
            shared.clone(),
            permit,
        ));
    }
    let deadline = Instant::now() + Duration::from_secs(args.timeout_secs);
    while shared.connected.load(Ordering::Relaxed) < args.subscribers {
        ensure!(
            Instant::now() < deadline,
            "only {} of {} subscribers connected ({} broken)",
            shared.connected.load(Ordering::Relaxed),
            args.subscribers,
            shared.broken.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let connect_secs = connecting.elapsed().as_secs_f64();

    // Warm up until every subscriber has received something, so the measured
    // messages only meet subscriptions that are live.
    loop {
        for channel in 0..args.channels {
            publish(&client, &args, channel, "warm-up").await?;
        }
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let mut all = true;
        for slot in &seen {
            all &= slot.lock().await.warm;
        }
        if all {
            break;
        }
        ensure!(Instant::now() < deadline, "subscribers never warmed up");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_connected_kb = rss_kb(&args.rss_pids)?;

    let publishing = Instant::now();
    let (accepted_by_channel, refused) = publish_all(&client, &args, &shared).await;
    let accepted: usize = accepted_by_channel.iter().sum();
    let expected_for = |i: usize| accepted_by_channel[i % args.channels];
    let publish_secs = publishing.elapsed().as_secs_f64();

    let deadline = Instant::now() + Duration::from_secs(args.timeout_secs);
    loop {
        let mut complete = 0;
        for (i, slot) in seen.iter().enumerate() {
            complete += usize::from(slot.lock().await.latencies_us.len() >= expected_for(i));
        }
        if complete == args.subscribers || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Anything extra (a duplicate) arrives shortly after.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let mut latencies = Vec::new();
    let mut complete = 0;
    let mut duplicated = 0;
    let mut last_delivery = publishing;
    let mut expected_deliveries = 0;
    // Each message's first delivery: the path in front of the fan-out, under load.
    let mut first_us: std::collections::HashMap<u32, u32> = std::collections::HashMap::new();
    for (i, slot) in seen.iter().enumerate() {
        let seen = slot.lock().await;
        expected_deliveries += expected_for(i);
        complete += usize::from(seen.latencies_us.len() == expected_for(i));
        duplicated += usize::from(seen.latencies_us.len() > expected_for(i));
        latencies.extend_from_slice(&seen.latencies_us);
        for (message, latency) in seen.messages.iter().zip(&seen.latencies_us) {
            let first = first_us.entry(*message).or_insert(u32::MAX);
            *first = (*first).min(*latency);
        }
        if let Some(at) = seen.last_at {
            last_delivery = last_delivery.max(at);
        }
    }
    latencies.sort_unstable();
    let mut first: Vec<u32> = first_us.into_values().collect();
    first.sort_unstable();
    let delivered = latencies.len();
    let delivery_secs = last_delivery.duration_since(publishing).as_secs_f64();
    let per_connection_kb =
        rss_connected_kb.saturating_sub(rss_idle_kb) as f64 / args.subscribers.max(1) as f64;
    let report = json!({
        "subscribers": args.subscribers,
        "connect_secs": round(connect_secs),
        "messages_accepted": accepted,
        "messages_refused": refused,
        "accepted_per_sec": round(accepted as f64 / publish_secs),
        "deliveries": delivered,
        "deliveries_expected": expected_deliveries,
        "channels": args.channels,
        "subscribers_complete": complete,
        "subscribers_with_duplicates": duplicated,
        "subscribers_broken": shared.broken.load(Ordering::Relaxed),
        "resumed_streams": shared.resumed.load(Ordering::Relaxed),
        "delivered_per_sec": round(delivered as f64 / delivery_secs.max(1e-9)),
        "latency_ms": {
            "p50": percentile_ms(&latencies, 0.50),
            "p99": percentile_ms(&latencies, 0.99),
            "max": percentile_ms(&latencies, 1.0),
        },
        "first_delivery_ms": {
            "p50": percentile_ms(&first, 0.50),
            "p99": percentile_ms(&first, 0.99),
        },
        "rss_kb": {"idle": rss_idle_kb, "connected": rss_connected_kb},
        "rss_kb_per_connection": round(per_connection_kb),
    });
    println!("{report}");
    Ok(())
}

async fn subscribe(
    client: reqwest::Client,
    url: String,
    slot: Arc<Mutex<Seen>>,
    shared: Arc<Shared>,
    permit: tokio::sync::OwnedSemaphorePermit,
) {
    let mut permit = Some(permit);
    let mut last_id: Option<String> = None;
    loop {
        let mut request = client.get(&url).header("accept", "text/event-stream");
        if let Some(id) = &last_id {
            request = request.header("last-event-id", id.as_str());
        }
        let response = request.send().await;
        let first = permit.take().is_some();
        let response = match response {
            Ok(r) if r.status().is_success() => r,
            _ => {
                shared.broken.fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        if first {
            shared.connected.fetch_add(1, Ordering::Relaxed);
        }
        let mut stream = response.bytes_stream();
        let mut buffer = Vec::new();
        while let Some(Ok(chunk)) = stream.next().await {
            let now = shared.base.elapsed();
            let at = Instant::now();
            buffer.extend_from_slice(&chunk);
            while let Some(end) = find(&buffer, b"\n\n") {
                let event: Vec<u8> = buffer.drain(..end + 2).collect();
                if let Some(id) = field(&event, b"id:") {
                    last_id = Some(id);
                }
                if field(&event, b"data:").is_none() {
                    continue; // a comment (keep-alive) or `retry:`
                }
                let mut seen = slot.lock().await;
                seen.warm = true;
                if let Some(sent_ns) = stamp(&event) {
                    let latency = now.as_nanos().saturating_sub(sent_ns) / 1000;
                    seen.latencies_us
                        .push(u32::try_from(latency).unwrap_or(u32::MAX));
                    seen.messages.push(number(&event).unwrap_or(u32::MAX));
                    seen.last_at = Some(at);
                }
            }
        }
        // The server ended the stream: resume where it stopped.
        shared.resumed.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The value of the first `name` line of an SSE event.
fn field(event: &[u8], name: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(event).ok()?;
    let name = std::str::from_utf8(name).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(name))
        .map(|v| v.trim_start().to_owned())
}

/// Publishes the measured messages; returns (accepted per channel, refused).
async fn publish_all(
    client: &reqwest::Client,
    args: &Args,
    shared: &Shared,
) -> (Vec<usize>, usize) {
    let gate = Arc::new(Semaphore::new(args.concurrency));
    let mut tick = (args.rate > 0).then(|| {
        let mut interval = tokio::time::interval(Duration::from_nanos(1_000_000_000 / args.rate));
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        interval
    });
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..args.messages {
        if let Some(tick) = tick.as_mut() {
            tick.tick().await;
        }
        let Ok(permit) = gate.clone().acquire_owned().await else {
            break;
        };
        let client = client.clone();
        let body = body(
            args,
            &format!("ts={} n={n}", shared.base.elapsed().as_nanos()),
        );
        let channel = n % args.channels;
        let (url, content_type) = (channel_url(&args.publish, channel), content_type(args));
        tasks.spawn(async move {
            let ok = client
                .post(url)
                .header("content-type", content_type)
                .body(body)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            drop(permit);
            (channel, ok)
        });
    }
    let (mut accepted, mut refused) = (vec![0; args.channels], 0);
    while let Some(done) = tasks.join_next().await {
        match done {
            Ok((channel, true)) => accepted[channel] += 1,
            _ => refused += 1,
        }
    }
    (accepted, refused)
}

async fn publish(
    client: &reqwest::Client,
    args: &Args,
    channel: usize,
    text: &str,
) -> anyhow::Result<()> {
    let response = client
        .post(channel_url(&args.publish, channel))
        .header("content-type", content_type(args))
        .body(body(args, text))
        .send()
        .await
        .context("publishing")?;
    if !response.status().is_success() {
        bail!("publishing: {}", response.status());
    }
    Ok(())
}

fn body(args: &Args, text: &str) -> String {
    match args.format {
        Format::Chat => json!({"user": "bench", "text": text}).to_string(),
        Format::Raw => text.to_owned(),
    }
}

fn content_type(args: &Args) -> &'static str {
    match args.format {
        Format::Chat => "application/json",
        Format::Raw => "text/plain",
    }
}

/// The message number after ` n=` in an event.
fn number(event: &[u8]) -> Option<u32> {
    number_after(event, b" n=")
}

/// The nanoseconds after `ts=` in an event.
fn stamp(event: &[u8]) -> Option<u128> {
    number_after(event, b"ts=")
}

/// The decimal number right after the first `marker` in `event`.
fn number_after<T: std::str::FromStr>(event: &[u8], marker: &[u8]) -> Option<T> {
    let start = event.windows(marker.len()).position(|w| w == marker)? + marker.len();
    let digits = event[start..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .count();
    std::str::from_utf8(&event[start..start + digits])
        .ok()?
        .parse()
        .ok()
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Summed `VmRSS` of these processes, in KiB.
fn rss_kb(pids: &[u32]) -> anyhow::Result<u64> {
    let mut total = 0;
    for pid in pids {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .with_context(|| format!("reading /proc/{pid}/status"))?;
        total += status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .with_context(|| format!("no VmRSS for {pid}"))?;
    }
    Ok(total)
}

fn percentile_ms(sorted_us: &[u32], q: f64) -> f64 {
    if sorted_us.is_empty() {
        return 0.0;
    }
    let index = ((sorted_us.len() - 1) as f64 * q).round() as usize;
    round(f64::from(sorted_us[index]) / 1000.0)
}

fn round(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}
