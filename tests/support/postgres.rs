//! A throwaway PostgreSQL server: unix socket and a free TCP port, in a temp dir.
//!
//! `initdb` runs once (a template cluster cached in the scratch base, see `scratch`)
//! and each server starts from a copy, so many tests can each have their own server.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context, bail};
use tempfile::TempDir;
use tokio::process::Child;

use super::ports::free_port;
use super::process::{
    command_as, find_binary, give_to, log_tail, run, spawn_daemon, stop_child, stop_child_blocking,
    unprivileged_user, wait_for_port_closed,
};
use super::scratch;

const PG_DIRS: &[&str] = &["/usr/lib/postgresql/*/bin"];
/// The application role every test database belongs to.
pub const APP_USER: &str = "hubbub";
pub const APP_PASSWORD: &str = "hubbub-test-password";

static DATABASES: AtomicU32 = AtomicU32::new(0);

pub struct Postgres {
    dir: TempDir,
    port: u16,
    bin: PathBuf,
    user: Option<&'static str>,
    child: Option<Child>,
    /// fsync and synchronous commits on, as in production (benchmarks).
    durable: bool,
}

impl Postgres {
    /// Starts a server with the role `hubbub` (password `APP_PASSWORD`, scram over TCP).
    pub async fn start() -> anyhow::Result<Self> {
        // Follow symlinks (e.g. /usr/local/bin/postgres) to the directory with psql and initdb.
        let bin = std::fs::canonicalize(find_binary("postgres", PG_DIRS)?)?
            .parent()
            .context("postgres binary has a directory")?
            .to_path_buf();
        let user = unprivileged_user();
        // SAFETY: geteuid has no preconditions and cannot fail.
        if user.is_none() && unsafe { libc::geteuid() } == 0 {
            bail!(
                "test support: PostgreSQL refuses to run as root and no unprivileged user \
                 (`postgres` or `nobody`) exists to run it; create one (useradd --system postgres)"
            );
        }
        let template = template(&bin, user).await?;
        let dir = scratch::tempdir("hubbub-pg-")?;
        let data = dir.path().join("data");
        run(
            {
                let mut cp = tokio::process::Command::new("cp");
                cp.arg("-a").arg(&template).arg(&data);
                cp
            },
            "copying the template cluster",
        )
        .await?;
        give_to(user, dir.path()).await?;
        let mut server = Self {
            dir,
            port: free_port(),
            bin,
            user,
            child: None,
            durable: false,
        };
        server.start_again().await?;
        server
            .psql(
                "postgres",
                &format!("CREATE ROLE {APP_USER} LOGIN CREATEDB PASSWORD '{APP_PASSWORD}'"),
            )
            .await?;
        Ok(server)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn socket_dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn password(&self) -> &'static str {
        APP_PASSWORD
    }

    /// A fresh database owned by `hubbub`, as a URL with the password in it.
    pub async fn create_database(&self) -> anyhow::Result<String> {
        let name = format!(
            "test_{}_{}",
            std::process::id(),
            DATABASES.fetch_add(1, Ordering::Relaxed)
        );
        self.psql(
            "postgres",
            &format!("CREATE DATABASE {name} OWNER {APP_USER}"),
        )
        .await?;
        Ok(format!(
            "postgres://{APP_USER}:{APP_PASSWORD}@127.0.0.1:{}/{name}",
            self.port
        ))
    }

    /// The same URL without the password (for `database.password_file` tests).
    pub fn url_without_password(&self, database: &str) -> String {
        format!("postgres://{APP_USER}@127.0.0.1:{}/{database}", self.port)
    }

    /// Runs SQL as the superuser over the socket; rows come back as `a|b` lines.
    pub async fn psql(&self, database: &str, sql: &str) -> anyhow::Result<String> {
        let mut command = command_as(self.user, &self.bin.join("psql"));
        command
            .args([
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-U",
                "postgres",
                "-h",
            ])
            .arg(self.dir.path())
            .args(["-p", &self.port.to_string(), "-d", database, "-c", sql]);
        run(command, "psql").await
    }

    /// Fast shutdown; the data stays for `start_again`.
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            stop_child(&mut child, libc::SIGINT).await?;
        }
        wait_for_port_closed(self.port).await
    }

    /// Durable commits (fsync, synchronous_commit, full_page_writes on, as production
    /// runs) from the next `start_again`; off by default, for speed.
    pub fn set_durable(&mut self, durable: bool) {
        self.durable = durable;
    }

    /// Starts the server (again) on the same port with the same data.
    pub async fn start_again(&mut self) -> anyhow::Result<()> {
        if self.child.is_some() {
            bail!("postgres is already running");
        }
        let log = self.dir.path().join("postgres.log");
        let mut command = command_as(self.user, &self.bin.join("postgres"));
        command
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .arg("-k")
            .arg(self.dir.path())
            .args(["-p", &self.port.to_string(), "-h", "127.0.0.1"])
            .args(["-c", "max_connections=200"]);
        if self.durable {
            command.args(["-c", "fsync=on", "-c", "synchronous_commit=on"]);
            command.args(["-c", "full_page_writes=on"]);
        } else {
            // Throwaway data: durability off, speed on.
            command.args(["-c", "fsync=off", "-c", "synchronous_commit=off"]);
            command.args(["-c", "full_page_writes=off"]);
        }
        let child = spawn_daemon(command, &log)?;
        self.child = Some(child);
        self.wait_until_accepting(&log).await
    }

    async fn wait_until_accepting(&mut self, log: &Path) -> anyhow::Result<()> {
        let deadline = std::time::Instant::now() + super::process::START_TIMEOUT;
        loop {
            let error = match self.psql("postgres", "SELECT 1").await {
                Ok(_) => return Ok(()),
                Err(error) => error,
            };
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                bail!("postgres exited with {status}:\n{}", log_tail(log));
            }
            if std::time::Instant::now() > deadline {
                bail!(
                    "postgres did not accept connections ({error:#}):\n{}",
                    log_tail(log)
                );
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            // Immediate shutdown: nothing here is worth keeping.
            stop_child_blocking(child, libc::SIGQUIT);
        }
    }
}

/// The cached `initdb` result, made once per build directory and PostgreSQL version.
async fn template(bin: &Path, user: Option<&'static str>) -> anyhow::Result<PathBuf> {
    let mut command = tokio::process::Command::new(bin.join("postgres"));
    command.arg("--version");
    let version = run(command, "postgres --version").await?;
    let version: String = version
        .split_whitespace()
        .last()
        .unwrap_or("unknown")
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '.')
        .collect();
    scratch::reachable()?;
    let cache = scratch::base();
    let owner = match user {
        Some(user) => user.to_owned(),
        // SAFETY: getuid has no preconditions and cannot fail.
        None => format!("uid{}", unsafe { libc::getuid() }),
    };
    let template = cache.join(format!("hubbub-pg-template-{version}-{owner}"));
    if template.join("PG_VERSION").exists() {
        return Ok(template);
    }
    std::fs::create_dir_all(&cache)?;
    // Built under a unique name and renamed into place, so parallel test processes
    // never see half a template; the loser of a race just discards its copy.
    let scratch = tempfile::Builder::new()
        .prefix("hubbub-pg-template-")
        .tempdir_in(&cache)?;
    give_to(user, scratch.path()).await?;
    let data = scratch.path().join("data");
    let mut initdb = command_as(user, &bin.join("initdb"));
    initdb
        .arg("-D")
        .arg(&data)
        .args(["-U", "postgres", "-E", "UTF8", "--locale=C"])
        .args([
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "--no-instructions",
        ]);
    run(initdb, "initdb").await?;
    match std::fs::rename(&data, &template) {
        Ok(()) => Ok(template),
        Err(_) if template.join("PG_VERSION").exists() => Ok(template),
        Err(error) => Err(error).context("moving the template cluster into place"),
    }
}
