//! A throwaway Mosquitto broker on a free loopback port: anonymous, or with a
//! password file and ACLs, optionally behind TLS with a test CA.

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::bail;
use tempfile::TempDir;
use tokio::process::{Child, Command};

use super::ports::free_port;
use super::process::{
    find_binary, run, spawn_daemon, stop_child, stop_child_blocking, wait_for_port,
    wait_for_port_closed,
};
use super::tls;

/// A broker account: name, password and ACL lines such as `topic write hubbub/chat/+`.
#[derive(Debug, Clone)]
pub struct BrokerUser {
    pub name: String,
    pub password: String,
    pub acl: Vec<String>,
}

impl BrokerUser {
    pub fn new(name: &str, password: &str, acl: &[&str]) -> Self {
        Self {
            name: name.to_owned(),
            password: password.to_owned(),
            acl: acl.iter().map(|line| (*line).to_owned()).collect(),
        }
    }
}

#[derive(Default)]
pub struct MosquittoBuilder {
    users: Vec<BrokerUser>,
    tls: bool,
    extra: String,
}

impl MosquittoBuilder {
    /// Password authentication with these users and their ACLs; anonymous access off.
    pub fn users(mut self, users: Vec<BrokerUser>) -> Self {
        self.users = users;
        self
    }

    /// More configuration lines (a plugin, say), appended as given.
    pub fn extra_config(mut self, lines: &str) -> Self {
        self.extra.push_str(lines);
        self
    }

    /// A TLS listener with a server certificate from a throwaway CA.
    pub fn tls(mut self) -> Self {
        self.tls = true;
        self
    }

    pub async fn start(self) -> anyhow::Result<Mosquitto> {
        let dir = super::scratch::tempdir("hubbub-mqtt-")?;
        let port = free_port();
        // As nixos/profiles/broker.nix: queue, not drop, for a subscriber that lags.
        let mut config =
            format!("listener {port} 127.0.0.1\npersistence false\nmax_queued_messages 100000\n");
        // Started as root, mosquitto would switch to the `mosquitto` user, which
        // cannot read our temp dir; the broker only ever listens on loopback here.
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            config.push_str("user root\n");
        }
        config.push_str("log_dest stderr\nlog_type error\nlog_type warning\nlog_type notice\n");
        if self.users.is_empty() {
            config.push_str("allow_anonymous true\n");
        } else {
            let passwords = dir.path().join("passwords");
            let acl = dir.path().join("acl");
            let passwd = find_binary("mosquitto_passwd", &[])?;
            for (i, user) in self.users.iter().enumerate() {
                let mut command = Command::new(&passwd);
                if i == 0 {
                    command.arg("-c");
                }
                command
                    .arg("-b")
                    .arg(&passwords)
                    .args([&user.name, &user.password]);
                run(command, "mosquitto_passwd").await?;
            }
            let mut acl_text = String::new();
            for user in &self.users {
                let _ = writeln!(acl_text, "user {}", user.name);
                for line in &user.acl {
                    let _ = writeln!(acl_text, "{line}");
                }
            }
            std::fs::write(&acl, acl_text)?;
            let _ = write!(
                config,
                "allow_anonymous false\npassword_file {}\nacl_file {}\n",
                passwords.display(),
                acl.display()
            );
        }
        let ca = if self.tls {
            let ca = tls::generate(dir.path())?;
            let _ = write!(
                config,
                "certfile {}\nkeyfile {}\n",
                ca.cert_pem.display(),
                ca.key_pem.display()
            );
            Some(ca.ca_pem)
        } else {
            None
        };
        config.push_str(&self.extra);
        let config_path = dir.path().join("mosquitto.conf");
        std::fs::write(&config_path, config)?;
        let mut broker = Mosquitto {
            dir,
            port,
            config: config_path,
            ca,
            child: None,
        };
        broker.start_again().await?;
        Ok(broker)
    }
}

pub struct Mosquitto {
    dir: TempDir,
    port: u16,
    config: PathBuf,
    ca: Option<PathBuf>,
    child: Option<Child>,
}

impl Mosquitto {
    pub fn builder() -> MosquittoBuilder {
        MosquittoBuilder::default()
    }

    /// An anonymous plain broker.
    pub async fn start() -> anyhow::Result<Self> {
        Self::builder().start().await
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `mqtt://127.0.0.1:PORT`, or `mqtts://localhost:PORT` with TLS.
    pub fn url(&self) -> String {
        match self.ca {
            Some(_) => format!("mqtts://localhost:{}", self.port),
            None => format!("mqtt://127.0.0.1:{}", self.port),
        }
    }

    /// The CA that signed the broker's certificate (TLS brokers only).
    pub fn ca_pem_path(&self) -> Option<&std::path::Path> {
        self.ca.as_deref()
    }

    pub async fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            stop_child(&mut child, libc::SIGTERM).await?;
        }
        wait_for_port_closed(self.port).await
    }

    /// SIGKILL: the broker dies mid-whatever, as in a crash (no DISCONNECT sent).
    pub async fn kill(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            stop_child(&mut child, libc::SIGKILL).await?;
        }
        wait_for_port_closed(self.port).await
    }

    /// SIGSTOP: a hung broker whose host still acknowledges TCP (`thaw` resumes it).
    pub fn freeze(&self) {
        self.signal(libc::SIGSTOP);
    }

    /// SIGCONT after `freeze`.
    pub fn thaw(&self) {
        self.signal(libc::SIGCONT);
    }

    fn signal(&self, signal: libc::c_int) {
        if let Some(pid) = self.child.as_ref().and_then(Child::id) {
            // SAFETY: kill(2) with a pid we spawned and still own (not yet reaped).
            unsafe {
                libc::kill(pid as libc::pid_t, signal);
            }
        }
    }

    /// What the broker logged since it last started.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("mosquitto.log")).unwrap_or_default()
    }

    pub async fn start_again(&mut self) -> anyhow::Result<()> {
        if self.child.is_some() {
            bail!("mosquitto is already running");
        }
        let binary = find_binary("mosquitto", &["/usr/sbin"])?;
        let mut command = Command::new(binary);
        command.arg("-c").arg(&self.config);
        let log = self.dir.path().join("mosquitto.log");
        let mut child = spawn_daemon(command, &log)?;
        wait_for_port(self.port, &mut child, &log).await?;
        self.child = Some(child);
        Ok(())
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            stop_child_blocking(child, libc::SIGKILL);
        }
    }
}
