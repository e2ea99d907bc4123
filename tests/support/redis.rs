//! A throwaway Redis server on a free loopback port, persistence off.

use anyhow::bail;
use tempfile::TempDir;
use tokio::process::{Child, Command};

use super::ports::free_port;
use super::process::{
    find_binary, spawn_daemon, stop_child, stop_child_blocking, wait_for_port, wait_for_port_closed,
};

pub struct Redis {
    dir: TempDir,
    port: u16,
    password: Option<String>,
    child: Option<Child>,
}

impl Redis {
    pub async fn start(password: Option<&str>) -> anyhow::Result<Self> {
        let mut redis = Self {
            dir: super::scratch::tempdir("hubbub-redis-")?,
            port: free_port(),
            password: password.map(str::to_owned),
            child: None,
        };
        redis.start_again().await?;
        Ok(redis)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        match &self.password {
            Some(password) => format!("redis://:{password}@127.0.0.1:{}", self.port),
            None => self.url_without_password(),
        }
    }

    pub fn url_without_password(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub async fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            stop_child(&mut child, libc::SIGTERM).await?;
        }
        wait_for_port_closed(self.port).await
    }

    pub async fn start_again(&mut self) -> anyhow::Result<()> {
        if self.child.is_some() {
            bail!("redis is already running");
        }
        let binary = find_binary("redis-server", &[])?;
        let mut command = Command::new(binary);
        command
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(self.dir.path());
        if let Some(password) = &self.password {
            command.args(["--requirepass", password]);
        }
        let log = self.dir.path().join("redis.log");
        let mut child = spawn_daemon(command, &log)?;
        wait_for_port(self.port, &mut child, &log).await?;
        self.child = Some(child);
        Ok(())
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            stop_child_blocking(child, libc::SIGKILL);
        }
    }
}
