//! dnsmasq serving the discovery records, with the configuration
//! `nixos/lib/discovery.nix` renders, in the foreground, stopped on drop. Instances
//! register by writing a hosts(5) file into the watched directory and deregister by
//! removing it, as app instances do with the provider's discovery service.

use std::net::{Ipv4Addr, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tempfile::TempDir;
use tokio::process::Child;

use super::ports::free_port;
use super::process::{
    command_as, find_binary, give_to, log_tail, spawn_daemon, stop_child_blocking,
    unprivileged_user,
};
use super::stack::nix_eval_json;

pub struct Dnsmasq {
    /// Holds the configuration, the log and `hosts.d`, the directory dnsmasq watches.
    dir: TempDir,
    pub port: u16,
    child: Option<Child>,
}

impl Dnsmasq {
    /// Starts dnsmasq on 127.0.0.1 with the configuration of `nixos/lib/discovery.nix`
    /// for `inventory` (a Nix expression), watching an empty `hosts.d`.
    pub async fn start(inventory: &str) -> anyhow::Result<Self> {
        let binary = find_binary("dnsmasq", &["/usr/sbin"])?;
        // dnsmasq runs as the unprivileged user and reads `hosts.d` after every change.
        let dir = super::scratch::tempdir("hubbub-dns-")?;
        let hosts = dir.path().join("hosts.d");
        std::fs::create_dir(&hosts)?;
        let port = free_port();
        let expression = format!(
            "(import ./nixos/lib/discovery.nix {{ \
               inventory = {inventory}; hostsDir = \"{}\"; port = {port}; \
               extraSettings = {{ pid-file = \"\"; user = \"\"; }}; }}).config",
            hosts.display()
        );
        let config = match nix_eval_json(&expression).await? {
            serde_json::Value::String(config) => config,
            other => bail!("discovery.nix did not return a string: {other}"),
        };
        let config_path = dir.path().join("dnsmasq.conf");
        std::fs::write(&config_path, config)?;
        let user = unprivileged_user();
        give_to(user, dir.path()).await?;
        let log = dir.path().join("dnsmasq.log");
        let mut command = command_as(user, &binary);
        command
            .arg("--keep-in-foreground")
            .arg("-C")
            .arg(&config_path);
        let child = spawn_daemon(command, &log)?;
        let mut dns = Self {
            dir,
            port,
            child: Some(child),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while dns.resolve("probe.hubbub.internal").is_err() {
            if let Some(child) = dns.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                bail!("dnsmasq exited with {status}:\n{}", log_tail(&log));
            }
            if Instant::now() > deadline {
                bail!("dnsmasq does not answer:\n{}", log_tail(&log));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(dns)
    }

    fn hosts_file(&self, instance: &str) -> PathBuf {
        self.dir.path().join("hosts.d").join(instance)
    }

    /// Registers `instance` with one hosts(5) line (address, then its names).
    pub fn register(&self, instance: &str, line: &str) -> anyhow::Result<()> {
        // Written aside, then renamed: dnsmasq never reads half a file.
        let staging = self.dir.path().join(format!(".{instance}"));
        std::fs::write(&staging, line)?;
        std::fs::rename(&staging, self.hosts_file(instance)).context("registering an instance")?;
        Ok(())
    }

    pub fn deregister(&self, instance: &str) -> anyhow::Result<()> {
        std::fs::remove_file(self.hosts_file(instance)).context("deregistering an instance")
    }

    /// The A records of `name`, sorted (empty for NXDOMAIN); an error when dnsmasq
    /// does not answer within 200 ms.
    pub fn resolve(&self, name: &str) -> anyhow::Result<Vec<Ipv4Addr>> {
        query(self.port, name)
    }

    /// Waits (up to 10 s) until `name` resolves to exactly `want`.
    pub async fn wait_for(&self, name: &str, want: &[Ipv4Addr]) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let got = self.resolve(name).unwrap_or_default();
            if got == want {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("{name} resolves to {got:?}, not {want:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn log(&self) -> String {
        log_tail(&self.dir.path().join("dnsmasq.log"))
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            stop_child_blocking(child, libc::SIGTERM);
        }
    }
}

/// One A query over UDP (RFC 1035 wire format; no resolver library needed for this).
fn query(port: u16, name: &str) -> anyhow::Result<Vec<Ipv4Addr>> {
    let mut packet = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.split('.') {
        packet.push(u8::try_from(label.len())?);
        packet.extend_from_slice(label.as_bytes());
    }
    packet.extend_from_slice(&[0, 0, 1, 0, 1]);
    let question_end = packet.len();
    let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
    socket.set_read_timeout(Some(Duration::from_millis(200)))?;
    socket.send_to(&packet, (Ipv4Addr::LOCALHOST, port))?;
    let mut answer = [0u8; 4096];
    let len = socket.recv(&mut answer)?;
    let answer = &answer[..len];
    if len < question_end || answer[..2] != packet[..2] {
        bail!("not an answer to the query");
    }
    let rcode = answer[3] & 0x0f;
    if rcode == 3 {
        return Ok(Vec::new());
    }
    if rcode != 0 {
        bail!("DNS error {rcode}");
    }
    let count = u16::from_be_bytes([answer[6], answer[7]]);
    let mut pos = question_end;
    let mut addresses = Vec::new();
    for _ in 0..count {
        // The owner name: a compression pointer, or the name written out again.
        pos += if answer.get(pos).is_some_and(|b| b & 0xc0 == 0xc0) {
            2
        } else {
            question_end - 12 - 4
        };
        let header = answer.get(pos..pos + 10).context("truncated answer")?;
        let rtype = u16::from_be_bytes([header[0], header[1]]);
        let rdlen = usize::from(u16::from_be_bytes([header[8], header[9]]));
        let data = answer
            .get(pos + 10..pos + 10 + rdlen)
            .context("truncated record")?;
        if rtype == 1 && rdlen == 4 {
            addresses.push(Ipv4Addr::new(data[0], data[1], data[2], data[3]));
        }
        pos += 10 + rdlen;
    }
    addresses.sort();
    Ok(addresses)
}
