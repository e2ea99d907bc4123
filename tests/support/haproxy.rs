//! HAProxy with a given configuration, in the foreground, stopped on drop.

use std::path::Path;
use std::time::Duration;

use anyhow::bail;
use tokio::process::{Child, Command};

use super::process::{
    find_binary, log_tail, run, spawn_daemon, stop_child_blocking, wait_for_port,
};

pub struct Haproxy {
    child: Option<Child>,
}

impl Haproxy {
    /// Checks `config` with `haproxy -c`, then runs it and waits for `port`.
    pub async fn start(config: &Path, port: u16, dir: &Path) -> anyhow::Result<Self> {
        let binary = find_binary("haproxy", &["/usr/sbin"])?;
        let mut check = Command::new(&binary);
        check.arg("-c").arg("-f").arg(config);
        run(check, "haproxy -c").await?;
        let log = dir.join("haproxy.log");
        let mut command = Command::new(&binary);
        command.arg("-db").arg("-f").arg(config);
        let mut child = spawn_daemon(command, &log)?;
        if let Err(error) = wait_for_port(port, &mut child, &log).await {
            bail!("{error}\n{}", log_tail(&log));
        }
        // Give the first health checks a moment to mark the servers up.
        tokio::time::sleep(Duration::from_millis(300)).await;
        Ok(Self { child: Some(child) })
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            stop_child_blocking(child, libc::SIGTERM);
        }
    }
}
