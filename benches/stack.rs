//! The benchmarks of `docs/benchmarks.md`, run by hand with `tests/bench [NAME...]`
//! (never in CI). Each figure is a ratio against an anchor measured in the same run
//! on the same machine: pgbench for the visit statement, warp's hello world for
//! cached reads, nginx + nchan for SSE fan-out.
//!
//! The daemons are the test support's (PostgreSQL, Redis, Mosquitto with TLS, one
//! release `hubbub` process per role, configured as the NixOS module does); the load
//! generators are wrk, pgbench and `examples/sse_load.rs`. Prints Markdown.

#[path = "../tests/support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use hubbub::domain::Role;
use serde_json::Value;
use support::postgres::APP_PASSWORD;
use support::stack::{ADMIN_TOKEN, Stack};

const ALL: &[&str] = &[
    "footprint",
    "visitors",
    "durable",
    "cached",
    "fanout",
    "chat",
    "publish",
];

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // `cargo bench` passes `--bench`; anything else names a benchmark.
    let mut wanted: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    if wanted.is_empty() || wanted.iter().any(|w| w == "all") {
        wanted = ALL.iter().map(|s| (*s).to_owned()).collect();
    }
    if let Some(unknown) = wanted.iter().find(|w| !ALL.contains(&w.as_str())) {
        bail!("unknown benchmark {unknown}; known: {}", ALL.join(" "));
    }
    let seconds: u64 = env_or("BENCH_SECONDS", 15);
    let mut stack = Stack::start(1).await?;
    let hello = hello_world(seconds).await?;
    println!(
        "# hubbub benchmarks\n\n{} · {} · {} CPUs shared by load generators and servers · \
         warp hello world this run: {:.0} req/s (`wrk -t2 -c64 -d{seconds}s`)\n",
        chrono::Utc::now().format("%Y-%m-%d %H:%M UTC"),
        env!("CARGO_PKG_VERSION"),
        std::thread::available_parallelism().map_or(0, usize::from),
        hello.rps,
    );
    for name in &wanted {
        match name.as_str() {
            "footprint" => footprint(&mut stack).await?,
            "visitors" => visitors(&mut stack, seconds, false).await?,
            "durable" => visitors(&mut stack, seconds, true).await?,
            "cached" => cached(&mut stack, seconds).await?,
            "fanout" => fanout(&mut stack).await?,
            "chat" => chat(&mut stack).await?,
            "publish" => publish(&mut stack, seconds).await?,
            _ => unreachable!("checked above"),
        }
    }
    Ok(())
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `target/release`, where cargo put the hubbub binary and the examples.
fn release_dir() -> PathBuf {
    Path::new(support::hubbub::BIN)
        .parent()
        .map_or_else(|| PathBuf::from("target/release"), Path::to_path_buf)
}

fn example(name: &str) -> anyhow::Result<PathBuf> {
    let path = release_dir().join("examples").join(name);
    ensure!(
        path.exists(),
        "{} is missing: run `cargo build --release --examples` (tests/bench does)",
        path.display()
    );
    Ok(path)
}

fn process_url(stack: &mut Stack, role: Role, path: &str) -> anyhow::Result<(String, u32)> {
    let process = stack
        .processes_of(role)
        .next()
        .context("a process per role")?;
    Ok((process.url(path), process.pid().context("running")?))
}

/// Resident memory of a process, KiB.
fn rss_kb(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("VmRSS")
}

async fn output(program: &str, args: &[String], env: &[(&str, &str)]) -> anyhow::Result<String> {
    let mut command = tokio::process::Command::new(program);
    command
        .args(args)
        .envs(env.iter().copied())
        .kill_on_drop(true);
    support::process::run(command, &format!("{program} {}", args.join(" "))).await
}

struct Wrk {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// Responses with a 2xx status.
    ok: u64,
    errors: u64,
    command: String,
}

/// wrk with 2 threads, `connections` connections, latency distribution.
async fn wrk(
    url: &str,
    connections: u32,
    seconds: u64,
    script: Option<&Path>,
) -> anyhow::Result<Wrk> {
    let mut args = vec![
        format!("-t{}", connections.min(2)),
        format!("-c{connections}"),
        format!("-d{seconds}s"),
        "--latency".to_owned(),
    ];
    if let Some(script) = script {
        args.extend(["-s".to_owned(), script.display().to_string()]);
    }
    args.push(url.to_owned());
    let out = output("wrk", &args, &[]).await?;
    let rps = out
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .context("wrk printed no Requests/sec")?;
    let percentile = |name: &str| {
        out.lines()
            .find_map(|l| l.trim().strip_prefix(name))
            .and_then(|v| duration_ms(v.trim()))
            .with_context(|| format!("wrk printed no {name}"))
    };
    let p50_ms = percentile("50%")?;
    let p99_ms = percentile("99%")?;
    // "123456 requests in 15.00s, 1.2GB read"
    let requests: u64 = out
        .lines()
        .find_map(|l| l.trim().split_once(" requests in "))
        .and_then(|(n, _)| n.trim().parse().ok())
        .context("wrk printed no request count")?;
    // "Non-2xx or 3xx responses: N" and "Socket errors: connect A, read B, write C, timeout D"
    let non_2xx: u64 = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("Non-2xx or 3xx responses:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let socket: u64 = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("Socket errors:"))
        .map_or(0, |v| {
            v.split(',')
                .filter_map(|p| p.split_whitespace().last()?.parse::<u64>().ok())
                .sum()
        });
    Ok(Wrk {
        rps,
        p50_ms,
        p99_ms,
        ok: requests.saturating_sub(non_2xx),
        errors: non_2xx + socket,
        command: format!("wrk {}", args.join(" ")),
    })
}

/// wrk prints `850.00us`, `5.12ms` or `1.20s`.
fn duration_ms(text: &str) -> Option<f64> {
    let (number, factor) = if let Some(n) = text.strip_suffix("us") {
        (n, 0.001)
    } else if let Some(n) = text.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1000.0)
    } else {
        return None;
    };
    number.parse::<f64>().ok().map(|n| n * factor)
}

fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "**missed**" }
}

// --- footprint -------------------------------------------------------------------

/// Binary size, idle RSS per role, and start → READY=1 (median of 5) per role.
async fn footprint(stack: &mut Stack) -> anyhow::Result<()> {
    let size = std::fs::metadata(support::hubbub::BIN)?.len();
    println!("## Footprint\n");
    println!(
        "Release binary: {:.1} MiB (`{}`, not stripped of symbols by cargo; Nix strips).\n",
        size as f64 / 1048576.0,
        support::hubbub::BIN
    );
    println!("| role | idle RSS | start → READY=1 (median of 5) |\n|---|---|---|");
    for role in Role::ALL {
        let (_, pid) = process_url(stack, role, "/")?;
        let rss = rss_kb(pid)?;
        let (config, credentials) = stack.write_role_files(role)?;
        let mut times = Vec::new();
        for _ in 0..5 {
            times.push(time_to_ready(role, &config, &credentials, stack.dir.path()).await?);
        }
        times.sort_by(f64::total_cmp);
        println!(
            "| {role} | {:.1} MiB | {:.0} ms |",
            rss as f64 / 1024.0,
            times[2]
        );
    }
    println!(
        "\nIdle RSS is read from `/proc/PID/status` of each role's process after start-up; \
         the start time is from spawn to the `READY=1` datagram on `NOTIFY_SOCKET`, \
         against the same PostgreSQL, Redis and Mosquitto (TLS).\n"
    );
    Ok(())
}

async fn time_to_ready(
    role: Role,
    config: &Path,
    credentials: &Path,
    dir: &Path,
) -> anyhow::Result<f64> {
    let socket_path = dir.join(format!("notify-{role}.sock"));
    let _ = std::fs::remove_file(&socket_path);
    let socket = tokio::net::UnixDatagram::bind(&socket_path)?;
    let state = dir.join(format!("ready-state-{role}"));
    std::fs::create_dir_all(&state)?;
    let started = Instant::now();
    let mut child = tokio::process::Command::new(support::hubbub::BIN)
        .arg("--config")
        .arg(config)
        .args(["serve", role.as_str()])
        .env("CREDENTIALS_DIRECTORY", credentials)
        .env("STATE_DIRECTORY", &state)
        .env("NOTIFY_SOCKET", &socket_path)
        .env(
            "HUBBUB_HTTP__LISTEN",
            format!("127.0.0.1:{}", support::ports::free_port()),
        )
        .env(
            "HUBBUB_ADMIN__LISTEN",
            format!("127.0.0.1:{}", support::ports::free_port()),
        )
        .env("RUST_LOG", "warn")
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let mut buffer = [0u8; 512];
    let ms = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let n = socket.recv(&mut buffer).await?;
            if String::from_utf8_lossy(&buffer[..n])
                .lines()
                .any(|l| l == "READY=1")
            {
                return anyhow::Ok(started.elapsed().as_secs_f64() * 1000.0);
            }
        }
    })
    .await
    .context("no READY=1 within 30 s")??;
    child.kill().await?;
    Ok(ms)
}

// --- visitors ----------------------------------------------------------------------

/// The visit statement of `src/roles/visitors/store.rs` for pgbench: a random
/// visitor of a 2^24 space (as wrk's random X-Forwarded-For), spread over the shards.
fn pgbench_visit_script() -> String {
    let statement = hubbub::roles::visitors::store::RECORD_POSTGRES
        .replace("$1", "sha256(int8send(:v))")
        .replace("$2", &format!(":v % {}", migration::VISIT_TOTAL_SHARDS));
    format!("\\set v random(1, 16777216)\n{statement};\n")
}

/// Every request from a random client address, believed because 127.0.0.1 is a
/// trusted proxy (as behind HAProxy): each one is a visitor of a 2^24 space.
const WRK_RANDOM_CLIENT: &str = r#"
math.randomseed(os.time())
request = function()
  local ip = string.format("10.%d.%d.%d", math.random(0, 255), math.random(0, 255), math.random(0, 255))
  return wrk.format("GET", "/", { ["X-Forwarded-For"] = ip })
end
"#;

async fn seed_visitors(stack: &Stack, count: u64) -> anyhow::Result<()> {
    // Negative numbers: never one of the visitors the load will make.
    stack
        .postgres
        .psql(
            &stack.database,
            &format!(
                "TRUNCATE visitors; \
                 UPDATE visit_totals SET visits = 0, visitors = 0; \
                 INSERT INTO visitors (visitor_id, visits) \
                   SELECT sha256(int8send(-g)), 1 FROM generate_series(1, {count}) AS g; \
                 UPDATE visit_totals SET visits = {count}, visitors = {count} WHERE shard = 0;"
            ),
        )
        .await?;
    stack
        .postgres
        .psql(&stack.database, "VACUUM ANALYZE visitors")
        .await?;
    Ok(())
}

struct Pgbench {
    tps: f64,
    latency_ms: f64,
    command: String,
}

async fn pgbench(stack: &Stack, clients: u32, seconds: u64) -> anyhow::Result<Pgbench> {
    pgbench_script(
        stack,
        clients,
        seconds,
        "visit.sql",
        &pgbench_visit_script(),
    )
    .await
}

/// pgbench with `clients` clients running `script_text` for `seconds`.
async fn pgbench_script(
    stack: &Stack,
    clients: u32,
    seconds: u64,
    name: &str,
    script_text: &str,
) -> anyhow::Result<Pgbench> {
    let script = stack.dir.path().join(name);
    std::fs::write(&script, script_text)?;
    // Beside the server binary: Debian's /usr/bin/pgbench is a wrapper that wants a
    // client package.
    let bin = std::fs::canonicalize(support::process::find_binary(
        "postgres",
        &["/usr/lib/postgresql/*/bin"],
    )?)?
    .with_file_name("pgbench");
    let args: Vec<String> = ["-n", "-M", "prepared"]
        .iter()
        .map(|s| (*s).to_owned())
        .chain([
            "-c".to_owned(),
            clients.to_string(),
            "-j".to_owned(),
            clients.min(2).to_string(),
            "-T".to_owned(),
            seconds.to_string(),
            "-f".to_owned(),
            script.display().to_string(),
            "-h".to_owned(),
            "127.0.0.1".to_owned(),
            "-p".to_owned(),
            stack.postgres.port().to_string(),
            "-U".to_owned(),
            support::postgres::APP_USER.to_owned(),
            stack.database.clone(),
        ])
        .collect();
    let out = output(
        &bin.display().to_string(),
        &args,
        &[("PGPASSWORD", APP_PASSWORD)],
    )
    .await?;
    let tps = out
        .lines()
        .find_map(|l| l.strip_prefix("tps = "))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("pgbench printed no tps")?;
    let latency_ms = out
        .lines()
        .find_map(|l| l.strip_prefix("latency average = "))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("pgbench printed no latency average")?;
    Ok(Pgbench {
        tps,
        latency_ms,
        command: format!("pgbench {}", args.join(" ")),
    })
}

/// Visits recorded in the database (the seeded ones included).
async fn visits_in_database(stack: &Stack) -> anyhow::Result<u64> {
    let out = stack
        .postgres
        .psql(
            &stack.database,
            "SELECT COALESCE(SUM(visits), 0) FROM visitors",
        )
        .await?;
    out.trim().parse().context("sum of visits")
}

/// PostgreSQL as the test support runs it (fsync off), or durable (fsync and
/// synchronous commits on, as production runs it). hubbub's pool reconnects.
async fn set_durable(stack: &mut Stack, durable: bool) -> anyhow::Result<()> {
    stack.postgres.stop().await?;
    stack.postgres.set_durable(durable);
    stack.postgres.start_again().await?;
    let (url, _) = process_url(stack, Role::Visitors, "/readyz")?;
    let until = Instant::now() + Duration::from_secs(30);
    while reqwest::get(&url).await.map(|r| r.status()).ok() != Some(reqwest::StatusCode::OK) {
        ensure!(
            Instant::now() < until,
            "visitors not ready after the restart"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

async fn visitors(stack: &mut Stack, seconds: u64, durable: bool) -> anyhow::Result<()> {
    if durable {
        set_durable(stack, true).await?;
    }
    let (url, _) = process_url(stack, Role::Visitors, "/")?;
    let script = stack.dir.path().join("random-client.lua");
    std::fs::write(&script, WRK_RANDOM_CLIENT)?;
    let mode = if durable {
        "durable commits: fsync and synchronous_commit on"
    } else {
        "fsync off"
    };
    println!("## Visitor page (PostgreSQL with {mode}, Redis), 64 connections, {seconds} s each\n");
    println!(
        "| visitors in the table | hubbub `GET /` req/s | p99 | pgbench visit tps (limit) | ratio | errors | 200 answers / visits stored | lost |\n|---|---|---|---|---|---|---|---|"
    );
    let mut throughput = Vec::new();
    let mut commands = Vec::new();
    for count in [1_000u64, 1_000_000] {
        seed_visitors(stack, count).await?;
        let run = wrk(&url, 64, seconds, Some(&script)).await?;
        let stored = visits_in_database(stack).await?.saturating_sub(count);
        // Answered but not stored would be lost. Stored beyond the answers are the
        // requests still in flight when wrk stopped (at most one per connection).
        let lost = run.ok.saturating_sub(stored);
        seed_visitors(stack, count).await?;
        let anchor = pgbench(stack, 64, seconds).await?;
        let ratio = run.rps / anchor.tps;
        println!(
            "| {count} | {:.0} | {:.1} ms ({}) | {:.0} | {ratio:.2} ({}) | {} | {} / {stored} | {lost} ({}) |",
            run.rps,
            run.p99_ms,
            verdict(run.p99_ms <= 20.0),
            anchor.tps,
            verdict(ratio >= 1.0),
            run.errors,
            run.ok,
            verdict(lost == 0),
        );
        throughput.push(run.rps);
        commands = vec![run.command, anchor.command];
    }
    let growth = throughput[1] / throughput[0];
    println!(
        "\nCost growth, 1,000,000 vs 1,000 visitors: {growth:.2} of the throughput ({}; target ≥ 0.8). \
         Visits stored beyond the 200 answers are requests still in flight when wrk stopped.\n",
        verdict(growth >= 0.8)
    );
    // One client at a time: what a lone visit costs, against the statement alone.
    seed_visitors(stack, 1_000).await?;
    let lone = wrk(&url, 1, seconds.min(10), Some(&script)).await?;
    seed_visitors(stack, 1_000).await?;
    let lone_anchor = pgbench(stack, 1, seconds.min(10)).await?;
    println!(
        "One connection: hubbub p50 {:.2} ms ({:.0} req/s), pgbench latency {:.2} ms ({:.0} tps): \
         p50 / statement latency = {:.2}.\n",
        lone.p50_ms,
        lone.rps,
        lone_anchor.latency_ms,
        lone_anchor.tps,
        lone.p50_ms / lone_anchor.latency_ms
    );
    commands.push(lone.command);
    commands.push(lone_anchor.command);
    println!("```\n{}\n```\n", commands.join("\n"));
    if durable {
        set_durable(stack, false).await?;
    }
    Ok(())
}

// --- cached reads ----------------------------------------------------------------------

/// warp's hello world (`examples/hello_warp.rs`) under wrk: the machine's anchor,
/// quoted with every run.
async fn hello_world(seconds: u64) -> anyhow::Result<Wrk> {
    let client = reqwest::Client::new();
    let port = support::ports::free_port();
    let mut hello = tokio::process::Command::new(example("hello_warp")?)
        .arg(format!("127.0.0.1:{port}"))
        .kill_on_drop(true)
        .spawn()?;
    let hello_url = format!("http://127.0.0.1:{port}/");
    let until = Instant::now() + Duration::from_secs(10);
    while client.get(&hello_url).send().await.is_err() {
        ensure!(Instant::now() < until, "hello_warp did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let run = wrk(&hello_url, 64, seconds, None).await;
    hello.kill().await?;
    run
}

async fn cached(stack: &mut Stack, seconds: u64) -> anyhow::Result<()> {
    let (buffs_url, _) = process_url(stack, Role::Buffs, "/api/buffs")?;
    let client = reqwest::Client::new();
    for i in 0..20 {
        let response = client
            .post(&buffs_url)
            .bearer_auth(ADMIN_TOKEN)
            .json(&serde_json::json!({"question": format!("bench {i}?"), "answers": ["yes", "no"]}))
            .send()
            .await?;
        ensure!(
            response.status() == 201,
            "creating a buff: {}",
            response.status()
        );
    }
    let (stats_url, _) = process_url(stack, Role::Visitors, "/api/stats")?;
    let port = support::ports::free_port();
    let mut hello = tokio::process::Command::new(example("hello_warp")?)
        .arg(format!("127.0.0.1:{port}"))
        .kill_on_drop(true)
        .spawn()?;
    let hello_url = format!("http://127.0.0.1:{port}/");
    let until = Instant::now() + Duration::from_secs(10);
    while client.get(&hello_url).send().await.is_err() {
        ensure!(Instant::now() < until, "hello_warp did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("## Cached reads against warp's hello world, 64 connections, {seconds} s each\n");
    let baseline = wrk(&hello_url, 64, seconds, None).await?;
    println!(
        "| route | req/s | p99 | ratio to hello world | errors |\n|---|---|---|---|---|\n| hello world (`examples/hello_warp.rs`) | {:.0} | {:.1} ms | 1.00 | {} |",
        baseline.rps, baseline.p99_ms, baseline.errors
    );
    let mut commands = vec![baseline.command];
    for (name, url) in [("`/api/stats`", stats_url), ("`/api/buffs`", buffs_url)] {
        let run = wrk(&url, 64, seconds, None).await?;
        let ratio = run.rps / baseline.rps;
        println!(
            "| {name} | {:.0} | {:.1} ms | {ratio:.2} ({}) | {} |",
            run.rps,
            run.p99_ms,
            verdict(ratio >= 0.5),
            run.errors
        );
        commands.push(run.command);
    }
    hello.kill().await?;
    println!("\n```\n{}\n```\n", commands.join("\n"));
    Ok(())
}

// --- SSE fan-out and chat throughput -------------------------------------------------------

async fn sse_load(args: &[String]) -> anyhow::Result<Value> {
    let out = output(&example("sse_load")?.display().to_string(), args, &[]).await?;
    Ok(serde_json::from_str(out.trim())?)
}

fn load_args(
    subscribe: &str,
    publish: &str,
    format: &str,
    extra: &[(&str, String)],
) -> Vec<String> {
    let mut args = vec![
        "--subscribe".to_owned(),
        subscribe.to_owned(),
        "--publish".to_owned(),
        publish.to_owned(),
        "--format".to_owned(),
        format.to_owned(),
    ];
    for (k, v) in extra {
        args.push(format!("--{k}"));
        args.push(v.clone());
    }
    args
}

/// nginx with nchan: one channel published by POST and subscribed over SSE, the
/// same shape as hubbub's chat channel.
async fn start_nchan(dir: &Path) -> anyhow::Result<(tokio::process::Child, u16, Vec<u32>)> {
    let port = support::ports::free_port();
    let prefix = dir.join("nginx");
    std::fs::create_dir_all(prefix.join("logs"))?;
    let config = prefix.join("nginx.conf");
    std::fs::write(
        &config,
        format!(
            "load_module /usr/lib/nginx/modules/ngx_nchan_module.so;\n\
             daemon off;\nuser root;\nworker_processes 2;\nworker_rlimit_nofile 65536;\n\
             pid {p}/nginx.pid;\nerror_log {p}/logs/error.log warn;\n\
             events {{ worker_connections 30000; }}\n\
             http {{\n  access_log off;\n\
               server {{\n    listen 127.0.0.1:{port} backlog=4096;\n\
                 location ~ ^/sub/(\\w+)$ {{ nchan_subscriber eventsource; nchan_channel_id $1; }}\n\
                 location ~ ^/pub/(\\w+)$ {{ nchan_publisher; nchan_channel_id $1; nchan_message_buffer_length 1000; }}\n\
               }}\n}}\n",
            p = prefix.display()
        ),
    )?;
    let child = tokio::process::Command::new("nginx")
        .arg("-p")
        .arg(&prefix)
        .arg("-c")
        .arg(&config)
        // Workers outlive a killed master; they must not hold our stdout open.
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("nginx (apt install nginx libnginx-mod-nchan)")?;
    let until = Instant::now() + Duration::from_secs(10);
    let master = child.id().context("nginx pid")?;
    loop {
        let children = std::fs::read_to_string(format!("/proc/{master}/task/{master}/children"))
            .unwrap_or_default();
        let workers: Vec<u32> = children
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect();
        if workers.len() >= 2
            && tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
        {
            let mut pids = vec![master];
            pids.extend(workers);
            return Ok((child, port, pids));
        }
        ensure!(Instant::now() < until, "nginx did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `nginx -s stop`: the master takes its workers down with it.
async fn stop_nchan(dir: &Path, mut master: tokio::process::Child) -> anyhow::Result<()> {
    let prefix = dir.join("nginx");
    output(
        "nginx",
        &[
            "-p".to_owned(),
            prefix.display().to_string(),
            "-c".to_owned(),
            prefix.join("nginx.conf").display().to_string(),
            "-s".to_owned(),
            "stop".to_owned(),
        ],
        &[],
    )
    .await?;
    tokio::time::timeout(Duration::from_secs(10), master.wait())
        .await
        .context("nginx did not stop")??;
    Ok(())
}

fn latency_row(name: &str, r: &Value) -> String {
    format!(
        "| {name} | {} | {}/{} | {} / {} / {} ms | {} / {} ms | {} | {:.1} KiB | {} |",
        r["subscribers"],
        r["deliveries"],
        r["deliveries_expected"],
        r["latency_ms"]["p50"],
        r["latency_ms"]["p99"],
        r["latency_ms"]["max"],
        r["first_delivery_ms"]["p50"],
        r["first_delivery_ms"]["p99"],
        r["delivered_per_sec"],
        r["rss_kb_per_connection"].as_f64().unwrap_or(0.0),
        r["subscribers_broken"],
    )
}

async fn fanout(stack: &mut Stack) -> anyhow::Result<()> {
    let subscribers: usize = env_or("BENCH_SUBSCRIBERS", 10_000);
    let messages: usize = env_or("BENCH_MESSAGES", 50);
    let extra = |pids: &[u32]| {
        let mut e = vec![
            ("subscribers", subscribers.to_string()),
            ("messages", messages.to_string()),
            ("rate", "10".to_owned()),
        ];
        e.extend(pids.iter().map(|p| ("rss-pid", p.to_string())));
        e
    };
    let (nchan, port, nginx_pids) = start_nchan(stack.dir.path()).await?;
    let nchan_args = load_args(
        &format!("http://127.0.0.1:{port}/sub/bench"),
        &format!("http://127.0.0.1:{port}/pub/bench"),
        "raw",
        &extra(&nginx_pids),
    );
    let nchan_report = sse_load(&nchan_args).await;
    stop_nchan(stack.dir.path(), nchan).await?;
    let nchan_report = nchan_report?;

    let (subscribe, broadcast_pid) =
        process_url(stack, Role::Broadcast, "/api/chat/fanout/events")?;
    let (publish, _) = process_url(stack, Role::Chat, "/api/chat/fanout/messages")?;
    let hubbub_args = load_args(&subscribe, &publish, "chat", &extra(&[broadcast_pid]));
    let hubbub_report = sse_load(&hubbub_args).await?;

    println!("## SSE fan-out: {subscribers} subscribers, {messages} messages at 10/s\n");
    println!(
        "| server | subscribers | deliveries | latency p50 / p99 / max | first delivery p50 / p99 | delivered/s | RSS per connection | broken |\n|---|---|---|---|---|---|---|---|"
    );
    println!(
        "{}",
        latency_row("nginx + nchan (2 workers)", &nchan_report)
    );
    println!(
        "{}",
        latency_row("hubbub broadcast (1 process)", &hubbub_report)
    );
    let p99 = |r: &Value| r["latency_ms"]["p99"].as_f64().unwrap_or(f64::MAX);
    let mem = |r: &Value| r["rss_kb_per_connection"].as_f64().unwrap_or(f64::MAX);
    let latency_ratio = p99(&hubbub_report) / p99(&nchan_report).max(0.01);
    let memory_ratio = mem(&hubbub_report) / mem(&nchan_report).max(0.01);
    println!(
        "\np99 latency: {latency_ratio:.2} × nchan's ({}; target ≤ 1.0). Memory per connection: \
         {memory_ratio:.2} × nchan's ({}; target ≤ 1.0). All delivered: {}.\n",
        verdict(latency_ratio <= 1.0),
        verdict(memory_ratio <= 1.0),
        hubbub_report["deliveries"] == hubbub_report["deliveries_expected"]
    );
    println!(
        "hubbub's latency is POST → PostgreSQL → outbox → Mosquitto (TLS) → broadcast → SSE; \
         nchan's is POST → SSE inside nginx.\n\n```\nsse_load {}\nsse_load {}\n```\n",
        nchan_args.join(" "),
        hubbub_args.join(" ")
    );
    Ok(())
}

/// 1,000 subscribers, posts as fast as hubbub accepts them (64 clients); then nginx
/// with nchan, the same subscribers and messages, published at the rate hubbub
/// accepted. Compared: events delivered per second, all delivered exactly once.
async fn chat(stack: &mut Stack) -> anyhow::Result<()> {
    let messages: usize = env_or("BENCH_CHAT_MESSAGES", 2_000);
    let subscribers: usize = env_or("BENCH_CHAT_SUBSCRIBERS", 1_000);
    let (subscribe, broadcast_pid) =
        process_url(stack, Role::Broadcast, "/api/chat/throughput/events")?;
    let (publish, _) = process_url(stack, Role::Chat, "/api/chat/throughput/messages")?;
    let args = load_args(
        &subscribe,
        &publish,
        "chat",
        &[
            ("subscribers", subscribers.to_string()),
            ("messages", messages.to_string()),
            ("rate", "0".to_owned()),
            ("concurrency", "64".to_owned()),
            ("rss-pid", broadcast_pid.to_string()),
        ],
    );
    let report = sse_load(&args).await?;
    let accepted = report["accepted_per_sec"].as_f64().unwrap_or(0.0);
    let (nchan, port, nginx_pids) = start_nchan(stack.dir.path()).await?;
    let mut nchan_extra = vec![
        ("subscribers", subscribers.to_string()),
        ("messages", messages.to_string()),
        ("rate", (accepted.max(1.0) as u64).to_string()),
        ("concurrency", "64".to_owned()),
    ];
    nchan_extra.extend(nginx_pids.iter().map(|p| ("rss-pid", p.to_string())));
    let nchan_args = load_args(
        &format!("http://127.0.0.1:{port}/sub/throughput"),
        &format!("http://127.0.0.1:{port}/pub/throughput"),
        "raw",
        &nchan_extra,
    );
    let nchan_report = sse_load(&nchan_args).await;
    stop_nchan(stack.dir.path(), nchan).await?;
    let nchan_report = nchan_report?;
    println!(
        "## Chat end to end: POST → PostgreSQL → MQTT → SSE, {subscribers} subscribers, {messages} messages\n"
    );
    println!(
        "| server | subscribers | deliveries | latency p50 / p99 / max | first delivery p50 / p99 | delivered/s | RSS per connection | broken |\n|---|---|---|---|---|---|---|---|"
    );
    println!(
        "{}",
        latency_row("nginx + nchan (2 workers)", &nchan_report)
    );
    println!("{}", latency_row("hubbub (1 process per role)", &report));
    let delivered = |r: &Value| r["delivered_per_sec"].as_f64().unwrap_or(0.0);
    let ratio = delivered(&report) / delivered(&nchan_report).max(1.0);
    let exact = report["deliveries"] == report["deliveries_expected"]
        && report["subscribers_with_duplicates"] == 0;
    println!(
        "\nhubbub accepted {accepted} posts/s from 64 clients; nchan was published to at that rate. \
         Delivered events/s: {ratio:.2} × nchan's ({}; target ≥ 1.0). Every delivery exactly once: {exact} \
         ({} streams cut as slow and resumed).\n\n```\nsse_load {}\nsse_load {}\n```\n",
        verdict(ratio >= 1.0),
        report["resumed_streams"],
        args.join(" "),
        nchan_args.join(" ")
    );
    Ok(())
}

// --- publish path -----------------------------------------------------------------------

/// The chat insert of `src/streams/chat.rs` for pgbench, into one of `channels`
/// channels named as `sse_load --channels` names them.
fn pgbench_chat_script(channels: usize) -> String {
    format!(
        "\\set c random(0, {})\nSELECT id FROM hubbub_chat_insert('c' || :c, 'pgbench', 'a message of about this length', now());\n",
        channels - 1
    )
}

/// What the database alone gets from the chat insert, with no chat process running
/// (so no relay competes), its rows removed afterwards.
async fn chat_insert_tps(
    stack: &mut Stack,
    seconds: u64,
    channels: usize,
) -> anyhow::Result<(f64, String)> {
    for process in stack.processes_of(Role::Chat) {
        process.stop().await?;
    }
    let result = pgbench_script(
        stack,
        64,
        seconds,
        &format!("chat-insert-{channels}.sql"),
        &pgbench_chat_script(channels),
    )
    .await
    .map(|run| (run.tps, run.command));
    // Two calls: psql runs one -c in one transaction, and VACUUM refuses that.
    for sql in [
        "DELETE FROM chat_messages WHERE user_name = 'pgbench'",
        "VACUUM ANALYZE chat_messages",
    ] {
        stack.postgres.psql(&stack.database, sql).await?;
    }
    for process in stack.processes_of(Role::Chat) {
        process.start_again().await?;
    }
    result
}

/// Accepted posts per second (1 subscriber per channel, 64 posting clients) against
/// pgbench of the insert statement, one channel and 100; then the delivery latency
/// at half the single-channel rate (an upper bound of the relay's lag: it includes
/// the POST, the broker, the broadcast and the SSE client).
async fn publish(stack: &mut Stack, seconds: u64) -> anyhow::Result<()> {
    let messages: usize = env_or("BENCH_PUBLISH_MESSAGES", 20_000);
    let (subscribe, _) = process_url(stack, Role::Broadcast, "/api/chat/{channel}/events")?;
    let (post, chat_pid) = process_url(stack, Role::Chat, "/api/chat/{channel}/messages")?;
    println!(
        "## Publish path: 64 posting clients, 1 subscriber per channel, {messages} messages\n"
    );
    println!(
        "| channels | pgbench chat insert tps (limit) | hubbub accepted/s | ratio (target ≥ 0.6) | delivered | latency p50 / p99 |\n|---|---|---|---|---|---|"
    );
    let mut commands = Vec::new();
    let mut single_channel_tps = 0.0;
    for channels in [1usize, 100] {
        let (tps, pgbench_command) = chat_insert_tps(stack, seconds, channels).await?;
        let (_, chat_pid_now) = process_url(stack, Role::Chat, "/")?;
        let args = load_args(
            &subscribe,
            &post,
            "chat",
            &[
                ("subscribers", channels.to_string()),
                ("channels", channels.to_string()),
                ("messages", messages.to_string()),
                ("rate", "0".to_owned()),
                ("concurrency", "64".to_owned()),
                ("rss-pid", chat_pid_now.to_string()),
            ],
        );
        let report = sse_load(&args).await?;
        let accepted = report["accepted_per_sec"].as_f64().unwrap_or(0.0);
        let ratio = accepted / tps.max(1.0);
        println!(
            "| {channels} | {tps:.0} | {accepted:.0} | {ratio:.2} ({}) | {}/{} | {} / {} ms |",
            verdict(ratio >= 0.6),
            report["deliveries"],
            report["deliveries_expected"],
            report["latency_ms"]["p50"],
            report["latency_ms"]["p99"],
        );
        if channels == 1 {
            single_channel_tps = tps;
        }
        commands.push(pgbench_command);
        commands.push(format!("sse_load {}", args.join(" ")));
    }
    let _ = chat_pid;
    let rate = (single_channel_tps / 2.0).max(1.0) as u64;
    let lag_messages = (rate * seconds).max(100);
    let args = load_args(
        &subscribe,
        &post,
        "chat",
        &[
            ("subscribers", "1".to_owned()),
            ("messages", lag_messages.to_string()),
            ("rate", rate.to_string()),
            ("concurrency", "64".to_owned()),
        ],
    );
    let report = sse_load(&args).await?;
    let p99 = report["latency_ms"]["p99"].as_f64().unwrap_or(f64::MAX);
    println!(
        "\nOffered half the single-channel rate ({rate}/s, {lag_messages} messages): POST → SSE latency \
         p50 {} ms, p99 {p99} ms ({}; target for the relay's lag p99 ≤ 100 ms), {} of {} delivered.\n",
        report["latency_ms"]["p50"],
        verdict(p99 <= 100.0),
        report["deliveries"],
        report["deliveries_expected"],
    );
    commands.push(format!("sse_load {}", args.join(" ")));
    println!("```\n{}\n```\n", commands.join("\n"));
    Ok(())
}
