//! A cold cluster boots in any order: `hubbub migrate` and `hubbub serve` started
//! before PostgreSQL wait for it (retrying with backoff up to
//! `database.startup_wait_secs`) instead of failing, and go on once it is up.

mod support;

use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use support::hubbub::BIN;
use support::ports::free_port;
use support::postgres::Postgres;
use tokio::process::{Child, Command};

/// Long enough for a loaded machine, far below the 5-minute default.
const WAIT_SECS: &str = "90";

fn hubbub(args: &[&str], url: &str, dir: &Path, log: &Path) -> Child {
    let log = std::fs::File::create(log).expect("log file");
    Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .env("HUBBUB_DATABASE__URL", url)
        .env("HUBBUB_DATABASE__STARTUP_WAIT_SECS", WAIT_SECS)
        .env("HUBBUB_DATABASE__ACQUIRE_TIMEOUT_MS", "1000")
        .env("HUBBUB_VISITORS__SALT", "boot-order-salt")
        .env("HUBBUB_HTTP__LISTEN", format!("127.0.0.1:{}", free_port()))
        .env("HUBBUB_ADMIN__LISTEN", format!("127.0.0.1:{}", free_port()))
        .env("STATE_DIRECTORY", dir.join("state"))
        .env_remove("JOURNAL_STREAM")
        .env_remove("NOTIFY_SOCKET")
        .stdout(log.try_clone().expect("log file"))
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .expect("spawn hubbub")
}

/// Waits until `log` contains `text` (the process still running), or panics.
async fn wait_for_log(child: &mut Child, log: &Path, text: &str, within: Duration) {
    let started = Instant::now();
    loop {
        let content = std::fs::read_to_string(log).unwrap_or_default();
        if content.contains(text) {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("hubbub exited ({status}) before logging {text:?}:\n{content}");
        }
        assert!(
            started.elapsed() < within,
            "no {text:?} within {within:?}:\n{content}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn exit_status(child: &mut Child, within: Duration, log: &Path) -> ExitStatus {
    match tokio::time::timeout(within, child.wait()).await {
        Ok(status) => status.expect("wait for hubbub"),
        Err(_) => panic!(
            "hubbub still running after {within:?}:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        ),
    }
}

/// A database that exists but whose server is down: the state after a power cut.
async fn stopped_postgres() -> (Postgres, String) {
    let mut postgres = Postgres::start().await.expect("postgres");
    let url = postgres.create_database().await.expect("database");
    postgres.stop().await.expect("stop postgres");
    (postgres, url)
}

#[tokio::test]
async fn migrate_started_before_postgresql_waits_and_then_migrates() {
    let (mut postgres, url) = stopped_postgres().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("migrate.log");
    let mut migrate = hubbub(&["migrate"], &url, dir.path(), &log);

    // It is waiting (and says so), not failing.
    wait_for_log(
        &mut migrate,
        &log,
        "waiting for the database",
        Duration::from_secs(30),
    )
    .await;
    postgres.start_again().await.expect("start postgres");

    let status = exit_status(&mut migrate, Duration::from_secs(60), &log).await;
    let output = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(status.success(), "migrate failed: {status}\n{output}");
    assert!(output.contains("migrations applied"), "{output}");
    let database = url.rsplit('/').next().expect("database name");
    let applied = postgres
        .psql(database, "SELECT count(*) FROM seaql_migrations")
        .await
        .expect("migrations table");
    assert_ne!(applied.trim(), "0", "no migration recorded");
}

/// A PostgreSQL that has just come up can accept hubbub's first connection and be
/// slow to give the migration another (CI saw the pool time out under load). A
/// connection limit of one makes that state last: the migration waits it out
/// instead of failing for good (exit 1, which systemd does not restart).
#[tokio::test]
async fn migrate_waits_for_a_connection_after_the_first() {
    let postgres = Postgres::start().await.expect("postgres");
    let url = postgres.create_database().await.expect("database");
    let database = url.rsplit('/').next().expect("database name");
    let user = url
        .split("://")
        .nth(1)
        .and_then(|rest| rest.split(':').next())
        .expect("user in the URL");
    let limit = |n: i32| format!("ALTER ROLE {user} CONNECTION LIMIT {n}");
    postgres.psql(database, &limit(1)).await.expect("limit");
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("migrate.log");
    let mut migrate = hubbub(&["migrate"], &url, dir.path(), &log);

    wait_for_log(
        &mut migrate,
        &log,
        "waiting for the database",
        Duration::from_secs(30),
    )
    .await;
    postgres.psql(database, &limit(-1)).await.expect("no limit");

    let status = exit_status(&mut migrate, Duration::from_secs(60), &log).await;
    let output = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(status.success(), "migrate failed: {status}\n{output}");
    assert!(output.contains("migrations applied"), "{output}");
}

#[tokio::test]
async fn serve_started_before_postgresql_waits_and_then_serves() {
    let (mut postgres, url) = stopped_postgres().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("serve.log");
    let mut serve = hubbub(&["serve", "visitors"], &url, dir.path(), &log);

    wait_for_log(
        &mut serve,
        &log,
        "waiting for the database",
        Duration::from_secs(30),
    )
    .await;
    postgres.start_again().await.expect("start postgres");
    wait_for_log(
        &mut serve,
        &log,
        "hubbub is serving",
        Duration::from_secs(60),
    )
    .await;
    serve.start_kill().expect("stop hubbub");
    let _ = serve.wait().await;
}

#[tokio::test]
async fn migrate_gives_up_at_the_deadline_with_a_clear_message() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("migrate.log");
    let url = format!("postgres://hubbub@127.0.0.1:{}/hubbub", free_port());
    let started = Instant::now();
    let mut migrate = Command::new(BIN)
        .arg("migrate")
        .current_dir(dir.path())
        .env("HUBBUB_DATABASE__URL", &url)
        .env("HUBBUB_DATABASE__STARTUP_WAIT_SECS", "2")
        .env("HUBBUB_DATABASE__ACQUIRE_TIMEOUT_MS", "300")
        .env_remove("JOURNAL_STREAM")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"))
        .kill_on_drop(true)
        .spawn()
        .expect("spawn hubbub");
    let status = exit_status(&mut migrate, Duration::from_secs(30), &log).await;
    let output = std::fs::read_to_string(&log).unwrap_or_default();
    // EX_TEMPFAIL: hubbub-migrate.service restarts on it.
    assert_eq!(status.code(), Some(75), "{output}");
    assert!(
        output.contains("did not accept a connection within 2 s")
            && output.contains("database.startup_wait_secs"),
        "{output}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "took {:?}",
        started.elapsed()
    );
}
