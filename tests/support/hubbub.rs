//! hubbub as the NixOS module runs it: the real binary, a TOML file, and a
//! credentials directory (`CREDENTIALS_DIRECTORY`) holding the secrets as files.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hubbub::domain::Role;
use tokio::process::{Child, Command};

use super::ports::free_port;
use super::process::{log_tail, run, spawn_daemon, stop_child, stop_child_blocking};

pub const BIN: &str = env!("CARGO_BIN_EXE_hubbub");

/// Runs `hubbub migrate` with this configuration, as `hubbub-migrate.service` does.
pub async fn migrate(config: &Path, credentials: &Path) -> anyhow::Result<String> {
    let mut command = Command::new(BIN);
    command
        .arg("--config")
        .arg(config)
        .arg("migrate")
        .env("CREDENTIALS_DIRECTORY", credentials);
    run(command, "hubbub migrate").await
}

pub struct HubbubProcess {
    pub role: Role,
    /// The loopback address both listeners bind (127.0.0.1 unless started with `start_at`).
    pub host: IpAddr,
    pub port: u16,
    pub admin_port: u16,
    config: PathBuf,
    credentials: PathBuf,
    state: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl HubbubProcess {
    /// Starts `hubbub serve <role>` on fresh loopback ports and waits for `/healthz`.
    pub async fn start(
        role: Role,
        config: &Path,
        credentials: &Path,
        dir: &Path,
    ) -> anyhow::Result<Self> {
        let host = IpAddr::V4(Ipv4Addr::LOCALHOST);
        Self::start_at(
            role,
            config,
            credentials,
            dir,
            host,
            free_port(),
            free_port(),
        )
        .await
    }

    /// As `start`, with both listeners on `host` (an address of 127.0.0.0/8, so that
    /// several instances of a role share the ports, as app hosts do).
    pub async fn start_at(
        role: Role,
        config: &Path,
        credentials: &Path,
        dir: &Path,
        host: IpAddr,
        port: u16,
        admin_port: u16,
    ) -> anyhow::Result<Self> {
        let mut process = Self {
            role,
            host,
            port,
            admin_port,
            config: config.to_path_buf(),
            credentials: credentials.to_path_buf(),
            state: dir.join(format!("state-{role}-{host}-{port}")),
            log: dir.join(format!("hubbub-{role}-{host}-{port}.log")),
            child: None,
        };
        process.start_again().await?;
        Ok(process)
    }

    pub async fn start_again(&mut self) -> anyhow::Result<()> {
        if self.child.is_some() {
            bail!("{} on {} is already running", self.role, self.port);
        }
        std::fs::create_dir_all(&self.state)?;
        let mut command = Command::new(BIN);
        command
            .arg("--config")
            .arg(&self.config)
            .args(["serve", self.role.as_str()])
            .env("CREDENTIALS_DIRECTORY", &self.credentials)
            .env("STATE_DIRECTORY", &self.state)
            .env(
                "HUBBUB_HTTP__LISTEN",
                format!("{}:{}", self.host, self.port),
            )
            .env(
                "HUBBUB_ADMIN__LISTEN",
                format!("{}:{}", self.host, self.admin_port),
            )
            .env("NO_COLOR", "1")
            .env("RUST_LOG", "info");
        let mut child = spawn_daemon(command, &self.log).context("spawning hubbub")?;
        let deadline = Instant::now() + Duration::from_secs(30);
        let client = reqwest::Client::new();
        loop {
            let url = self.url("/healthz");
            if client
                .get(&url)
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
            {
                break;
            }
            if let Some(status) = child.try_wait()? {
                bail!(
                    "hubbub {} exited with {status}:\n{}",
                    self.role,
                    log_tail(&self.log)
                );
            }
            if Instant::now() > deadline {
                bail!("hubbub {} not healthy:\n{}", self.role, log_tail(&self.log));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.child = Some(child);
        Ok(())
    }

    /// SIGKILL: the process dies mid-whatever, as in a crash.
    pub async fn kill(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            stop_child(&mut child, libc::SIGKILL).await?;
        }
        Ok(())
    }

    /// SIGTERM: a graceful stop.
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            stop_child(&mut child, libc::SIGTERM).await?;
        }
        Ok(())
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}:{}{path}", self.host, self.port)
    }

    pub fn metrics_url(&self) -> String {
        format!("http://{}:{}/metrics", self.host, self.admin_port)
    }
}

impl Drop for HubbubProcess {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            stop_child_blocking(child, libc::SIGKILL);
        }
    }
}
