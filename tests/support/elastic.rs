//! An elastic app tier in the one-machine production topology: the data tier of
//! `Stack`, dnsmasq for the discovery records (`nixos/lib/discovery.nix`) and HAProxy
//! with the configuration `nixos/lib/haproxy.nix` renders for an inventory, whose pools
//! are DNS server-templates. App instances come and go as on app hosts: each is one
//! process per role on its own 127.0.0.0/8 address and the role's port of the plan,
//! registered in DNS once ready, deregistered before it stops.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hubbub::domain::Role;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::dns::Dnsmasq;
use super::haproxy::Haproxy;
use super::hubbub::HubbubProcess;
use super::ports::free_port;
use super::stack::{Stack, nix_eval_json};

/// Instance `n` listens on 127.77.0.`n`.
const INSTANCE_NET: [u8; 3] = [127, 77, 0];
const WAIT: Duration = Duration::from_secs(30);

pub struct Instance {
    pub name: String,
    pub address: Ipv4Addr,
    pub processes: Vec<HubbubProcess>,
}

/// One server slot of a pool, from HAProxy's `show servers state`.
#[derive(Debug, Clone)]
pub struct ServerState {
    pub name: String,
    /// None while the slot has no address (never filled, or its record is gone).
    pub address: Option<Ipv4Addr>,
    /// 2 = running (UP), 0 = stopped (DOWN).
    pub op_state: u32,
    /// Bit 0x20: maintenance because DNS no longer lists the address.
    pub admin_state: u32,
}

impl ServerState {
    pub fn serving(&self) -> bool {
        self.address.is_some() && self.op_state == 2 && self.admin_state == 0
    }
}

pub struct ElasticTier {
    pub stack: Stack,
    pub dns: Dnsmasq,
    pub instances: Vec<Instance>,
    /// `<role>.<discovery domain>` for each role.
    names: BTreeMap<Role, String>,
    /// The role's public and admin port, shared by every instance.
    ports: BTreeMap<Role, (u16, u16)>,
    role_files: BTreeMap<Role, (PathBuf, PathBuf)>,
    socket: PathBuf,
    pub haproxy_config: PathBuf,
}

impl ElasticTier {
    /// The data tier, dnsmasq with no record, and HAProxy with empty pools.
    pub async fn start() -> anyhow::Result<Self> {
        let mut stack = Stack::data_tier().await?;
        let ports: BTreeMap<Role, (u16, u16)> = Role::ALL
            .iter()
            .map(|role| (*role, (free_port(), free_port())))
            .collect();
        let public: Vec<String> = ports
            .iter()
            .map(|(role, (public, _))| format!("{role} = {public};"))
            .collect();
        // The real inventory's discovery settings (domain, slots, hold times) and an
        // empty host list: every instance registers itself.
        let dns_inventory =
            "(let real = import ./nixos/lib/inventory.nix; in real // { hosts = {}; })";
        let dns = Dnsmasq::start(dns_inventory).await?;
        let inventory = format!(
            "(let real = import ./nixos/lib/inventory.nix; in real // {{ \
               domain = \"localhost\"; hosts = {{}}; \
               discovery = real.discovery // {{ nameserver = \"127.0.0.1:{}\"; }}; \
               ports = real.ports // {{ public = {{ {} }}; }}; }})",
            dns.port,
            public.join(" ")
        );
        let names_value = nix_eval_json(&format!(
            "(import ./nixos/lib/discovery.nix {{ inventory = {inventory}; }}).names"
        ))
        .await?;
        let names_by_role: BTreeMap<String, String> = serde_json::from_value(names_value)?;
        let names = Role::ALL
            .iter()
            .map(|role| {
                names_by_role
                    .get(role.as_str())
                    .map(|name| (*role, name.clone()))
                    .context("discovery.nix names every role")
            })
            .collect::<anyhow::Result<_>>()?;

        let certificate = stack.edge_certificate()?;
        let expression = format!(
            "(import ./nixos/lib/haproxy.nix) {{ \
               inventory = {inventory}; \
               certificate = \"{}\"; \
               httpBind = \"127.0.0.1:{}\"; \
               httpsBind = \"127.0.0.1:{}\"; \
               metricsBind = \"127.0.0.1:{}\"; \
               maxconn = 4000; \
               limits = {{ connections = 2000; requestsPer10s = 100000; streamsPerMinute = 100000; }}; }}",
            certificate.display(),
            stack.http_port,
            stack.https_port,
            free_port()
        );
        let rendered = match nix_eval_json(&expression).await? {
            serde_json::Value::String(config) => config,
            other => bail!("haproxy.nix did not return a string: {other}"),
        };
        let dir = stack.dir.path().to_path_buf();
        let socket = dir.join("haproxy.sock");
        // As services.haproxy does: its own `global` with the runtime socket, then ours.
        let haproxy_config = dir.join("haproxy-dns.cfg");
        std::fs::write(
            &haproxy_config,
            format!(
                "global\n  stats socket {} mode 600 level admin\n{rendered}",
                socket.display()
            ),
        )?;
        stack.haproxy = Some(Haproxy::start(&haproxy_config, stack.https_port, &dir).await?);

        let mut role_files = BTreeMap::new();
        for role in Role::ALL {
            role_files.insert(role, stack.write_role_files(role)?);
        }
        Ok(Self {
            stack,
            dns,
            instances: Vec::new(),
            names,
            ports,
            role_files,
            socket,
            haproxy_config,
        })
    }

    /// Starts instance `n` (one process per role on 127.77.0.`n`), waits until every
    /// process is ready, registers it, and waits until HAProxy serves from it.
    pub async fn add_instance(&mut self, n: u8) -> anyhow::Result<()> {
        let address = Ipv4Addr::new(INSTANCE_NET[0], INSTANCE_NET[1], INSTANCE_NET[2], n);
        let name = format!("instance{n}");
        let mut processes = Vec::new();
        for role in Role::ALL {
            let (config, credentials) = &self.role_files[&role];
            let (port, admin) = self.ports[&role];
            let process = HubbubProcess::start_at(
                role,
                config,
                credentials,
                self.stack.dir.path(),
                IpAddr::V4(address),
                port,
                admin,
            )
            .await?;
            processes.push(process);
        }
        // An address in DNS serves at once (HAProxy does not wait for a check), so
        // an instance registers only when every role is ready.
        for process in &processes {
            wait_ready(process).await?;
        }
        let line = format!(
            "{address} {}\n",
            self.names.values().cloned().collect::<Vec<_>>().join(" ")
        );
        self.dns.register(&name, &line)?;
        self.instances.push(Instance {
            name,
            address,
            processes,
        });
        let want = self.addresses();
        for dns_name in self.names.values() {
            self.dns.wait_for(dns_name, &want).await?;
        }
        self.wait_pools(|servers| {
            servers
                .iter()
                .any(|s| s.address == Some(address) && s.serving())
        })
        .await
        .with_context(|| format!("HAProxy does not serve from {address}"))
    }

    /// Deregisters instance `n`, waits until HAProxy sends it nothing new, then stops
    /// its processes with SIGTERM (they finish what is in flight and end their SSE
    /// streams, whose clients resume elsewhere).
    pub async fn remove_instance(&mut self, n: u8) -> anyhow::Result<()> {
        let address = Ipv4Addr::new(INSTANCE_NET[0], INSTANCE_NET[1], INSTANCE_NET[2], n);
        let index = self
            .instances
            .iter()
            .position(|i| i.address == address)
            .context("no such instance")?;
        let mut instance = self.instances.remove(index);
        self.dns.deregister(&instance.name)?;
        let want = self.addresses();
        for dns_name in self.names.values() {
            self.dns.wait_for(dns_name, &want).await?;
        }
        self.wait_pools(|servers| !servers.iter().any(|s| s.address == Some(address)))
            .await
            .with_context(|| format!("HAProxy still lists {address}"))?;
        let stops = instance.processes.iter_mut().map(HubbubProcess::stop);
        for result in futures_util::future::join_all(stops).await {
            result?;
        }
        Ok(())
    }

    fn addresses(&self) -> Vec<Ipv4Addr> {
        let mut addresses: Vec<Ipv4Addr> = self.instances.iter().map(|i| i.address).collect();
        addresses.sort();
        addresses
    }

    /// Waits until `done` holds for the server slots of every pool.
    async fn wait_pools(&self, done: impl Fn(&[ServerState]) -> bool) -> anyhow::Result<()> {
        let deadline = Instant::now() + WAIT;
        loop {
            let mut all = true;
            for role in Role::ALL {
                all &= done(&self.servers(role).await?);
            }
            if all {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("pools not as expected after {WAIT:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// One command on HAProxy's runtime API; its whole answer.
    pub async fn runtime(&self, command: &str) -> anyhow::Result<String> {
        let mut stream = tokio::net::UnixStream::connect(&self.socket)
            .await
            .context("connecting to HAProxy's runtime API")?;
        stream.write_all(format!("{command}\n").as_bytes()).await?;
        let mut answer = String::new();
        tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut answer))
            .await
            .context("HAProxy's runtime API did not answer")??;
        Ok(answer)
    }

    /// The server slots of `role`'s pool.
    pub async fn servers(&self, role: Role) -> anyhow::Result<Vec<ServerState>> {
        let answer = self.runtime(&format!("show servers state {role}")).await?;
        answer
            .lines()
            .filter(|line| !line.starts_with('#') && line.split(' ').count() > 6)
            .map(|line| {
                let fields: Vec<&str> = line.split(' ').collect();
                Ok(ServerState {
                    name: fields[3].to_owned(),
                    address: fields[4].parse().ok(),
                    op_state: fields[5].parse()?,
                    admin_state: fields[6].parse()?,
                })
            })
            .collect()
    }

    /// A field of `show info` (`Pid`, `Uptime_sec`, ...).
    pub async fn haproxy_info(&self, field: &str) -> anyhow::Result<String> {
        let info = self.runtime("show info").await?;
        info.lines()
            .find_map(|line| line.strip_prefix(&format!("{field}: ")))
            .map(str::to_owned)
            .with_context(|| format!("no {field} in show info"))
    }

    pub fn url(&self, path: &str) -> String {
        self.stack.url(path)
    }

    pub fn client(&self) -> reqwest::Client {
        self.stack.client.clone()
    }
}

/// Waits until the process answers `/readyz` with 200.
async fn wait_ready(process: &HubbubProcess) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + WAIT;
    loop {
        let ready = client
            .get(process.url("/readyz"))
            .timeout(Duration::from_secs(3))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200);
        if ready {
            return Ok(());
        }
        if Instant::now() > deadline {
            let log = process.log();
            let tail = &log[log.floor_char_boundary(log.len().saturating_sub(3000))..];
            bail!("{} on {} not ready:\n{tail}", process.role, process.host);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
