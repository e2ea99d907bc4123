//! The production topology on one machine, from the same Nix data as the NixOS
//! modules: PostgreSQL with password auth over TCP, Redis with a password,
//! Mosquitto with TLS, a password file and the ACLs of `nixos/lib/broker-acl.nix`,
//! two hubbub processes per role started as the module starts them, and HAProxy
//! with the configuration `nixos/lib/haproxy.nix` renders, terminating TLS.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use hubbub::domain::Role;
use tempfile::TempDir;
use tokio::process::Command;

use super::haproxy::Haproxy;
use super::hubbub::{HubbubProcess, migrate};
use super::mosquitto::{BrokerUser, Mosquitto};
use super::ports::free_port;
use super::postgres::{APP_PASSWORD, Postgres};
use super::process::run;
use super::redis::Redis;
use super::tls;

pub const ADMIN_TOKEN: &str = "e2e-admin-token";
const REDIS_PASSWORD: &str = "e2e-redis-password";

/// The repository root (Nix files are read from there).
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Evaluates a Nix expression with the real evaluator; `--json` output.
pub async fn nix_eval_json(expression: &str) -> anyhow::Result<serde_json::Value> {
    let mut command = Command::new("nix-instantiate");
    command
        .args(["--eval", "--strict", "--json", "-E", expression])
        .current_dir(repo())
        // Evaluation only; Debian's nix-bin warns about build users otherwise.
        .env("NIX_CONFIG", "build-users-group =");
    let out = run(command, "nix-instantiate --eval").await?;
    serde_json::from_str(&out).context("nix-instantiate printed no JSON")
}

/// Broker users and their ACL file lines (`topic write hubbub/chat/+`), from
/// `nixos/lib/broker-acl.nix` as the broker profile uses it.
pub async fn broker_acl() -> anyhow::Result<BTreeMap<String, Vec<String>>> {
    let value = nix_eval_json("(import ./nixos/lib/broker-acl.nix).aclStrings").await?;
    let acl: BTreeMap<String, Vec<String>> = serde_json::from_value(value)?;
    Ok(acl
        .into_iter()
        .map(|(user, lines)| {
            (
                user,
                lines.into_iter().map(|l| format!("topic {l}")).collect(),
            )
        })
        .collect())
}

pub struct Stack {
    pub dir: TempDir,
    pub postgres: Postgres,
    pub database: String,
    pub redis: Redis,
    pub broker: Mosquitto,
    pub processes: Vec<HubbubProcess>,
    pub haproxy: Option<Haproxy>,
    pub https_port: u16,
    pub http_port: u16,
    pub ca_pem: PathBuf,
    pub client: reqwest::Client,
}

impl Stack {
    pub async fn start(per_role: usize) -> anyhow::Result<Self> {
        let mut stack = Self::data_tier().await?;
        for role in Role::ALL {
            let (config, credentials) = stack.write_role_files(role)?;
            for _ in 0..per_role {
                let process =
                    HubbubProcess::start(role, &config, &credentials, stack.dir.path()).await?;
                stack.processes.push(process);
            }
        }
        stack.start_haproxy().await?;
        Ok(stack)
    }

    /// PostgreSQL (migrated), Redis and Mosquitto, without hubbub processes or HAProxy.
    pub async fn data_tier() -> anyhow::Result<Self> {
        let dir = super::scratch::tempdir("hubbub-e2e-")?;
        let postgres = Postgres::start().await?;
        let url = postgres.create_database().await?;
        let database = url.rsplit('/').next().context("database name")?.to_owned();
        let redis = Redis::start(Some(REDIS_PASSWORD)).await?;
        let acl = broker_acl().await?;
        let users = acl
            .iter()
            .map(|(user, lines)| {
                let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
                BrokerUser::new(user, &format!("{user}-mqtt-password"), &lines)
            })
            .collect();
        let broker = Mosquitto::builder().users(users).tls().start().await?;
        let ca_pem = broker.ca_pem_path().context("broker CA")?.to_path_buf();

        let stack = Self {
            dir,
            database,
            postgres,
            redis,
            broker,
            processes: Vec::new(),
            haproxy: None,
            https_port: free_port(),
            http_port: free_port(),
            ca_pem,
            client: reqwest::Client::new(),
        };
        let visitors_config = stack.write_role_files(Role::Visitors)?;
        migrate(&visitors_config.0, &visitors_config.1).await?;
        Ok(stack)
    }

    /// The role's TOML (as the module renders `settings`) and its credentials dir.
    pub fn write_role_files(&self, role: Role) -> anyhow::Result<(PathBuf, PathBuf)> {
        let dir = self.dir.path();
        let credentials = dir.join(format!("credentials-{role}"));
        std::fs::create_dir_all(&credentials)?;
        let write = |name: &str, value: &str| std::fs::write(credentials.join(name), value);
        write("db-password", APP_PASSWORD)?;
        write("redis-password", REDIS_PASSWORD)?;
        write("visitor-salt", "e2e-visitor-salt")?;
        write("admin-tokens", &format!("{ADMIN_TOKEN}\n"))?;
        std::fs::copy(&self.ca_pem, credentials.join("mqtt-ca.pem"))?;
        let mqtt = match role {
            Role::Visitors => String::new(),
            role => {
                write("mqtt-password", &format!("{role}-mqtt-password"))?;
                format!(
                    "[mqtt]\nurl = \"mqtts://localhost:{}\"\nusername = \"{role}\"\n\
                     password_file = \"mqtt-password\"\nca_file = \"mqtt-ca.pem\"\n\n",
                    self.broker.port()
                )
            }
        };
        let config = format!(
            "[http]\ntrusted_proxies = [\"127.0.0.1/32\"]\n\n\
             [database]\nurl = \"{}\"\npassword_file = \"db-password\"\nmigrate_on_start = false\n\n\
             [redis]\nurl = \"redis://127.0.0.1:{}\"\npassword_file = \"redis-password\"\n\n\
             {mqtt}\
             [visitors]\nsalt_file = \"visitor-salt\"\n\n\
             [chat]\nrate_per_minute = 1000000\nrate_burst = 100000\n\n\
             [buffs]\nadmin_token_file = \"admin-tokens\"\n",
            self.postgres.url_without_password(&self.database),
            self.redis.port(),
        );
        let path = dir.join(format!("{role}.toml"));
        std::fs::write(&path, config)?;
        Ok((path, credentials))
    }

    async fn start_haproxy(&mut self) -> anyhow::Result<()> {
        let combined = self.edge_certificate()?;
        let dir = self.dir.path();
        let backends: BTreeMap<String, Vec<serde_json::Value>> = Role::ALL
            .iter()
            .map(|role| {
                let servers = self
                    .processes
                    .iter()
                    .filter(|p| p.role == *role)
                    .enumerate()
                    .map(|(i, p)| {
                        serde_json::json!({
                            "name": format!("{role}{i}"),
                            "address": "127.0.0.1",
                            "port": p.port,
                        })
                    })
                    .collect();
                (role.as_str().to_owned(), servers)
            })
            .collect();
        let config = render_haproxy(&backends, &combined, self.http_port, self.https_port).await?;
        let path = dir.join("haproxy.cfg");
        std::fs::write(&path, config)?;
        self.haproxy = Some(Haproxy::start(&path, self.https_port, dir).await?);
        Ok(())
    }

    /// The edge certificate HAProxy serves (certificate and key in one PEM, as HAProxy
    /// wants them), with `client` set to trust its CA; returns the PEM's path.
    pub fn edge_certificate(&mut self) -> anyhow::Result<PathBuf> {
        let cert_dir = self.dir.path().join("edge-tls");
        std::fs::create_dir_all(&cert_dir)?;
        let edge = tls::generate(&cert_dir)?;
        let combined = cert_dir.join("edge.pem");
        std::fs::write(
            &combined,
            format!(
                "{}{}",
                std::fs::read_to_string(&edge.cert_pem)?,
                std::fs::read_to_string(&edge.key_pem)?
            ),
        )?;
        let ca = reqwest::Certificate::from_pem(&std::fs::read(&edge.ca_pem)?)?;
        self.client = reqwest::Client::builder()
            .add_root_certificate(ca)
            // Per read, not per request: SSE streams stay open for the whole run.
            .connect_timeout(std::time::Duration::from_secs(5))
            .read_timeout(std::time::Duration::from_secs(30))
            .build()?;
        Ok(combined)
    }

    /// `https://localhost:PORT/path` through HAProxy.
    pub fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.https_port)
    }

    pub fn processes_of(&mut self, role: Role) -> impl Iterator<Item = &mut HubbubProcess> {
        self.processes.iter_mut().filter(move |p| p.role == role)
    }

    /// Every log line all hubbub processes wrote so far.
    pub fn logs(&self) -> String {
        self.processes.iter().map(HubbubProcess::log).collect()
    }
}

/// haproxy.cfg for these backends, from `nixos/lib/haproxy.nix`.
async fn render_haproxy(
    backends: &BTreeMap<String, Vec<serde_json::Value>>,
    cert: &Path,
    http_port: u16,
    https_port: u16,
) -> anyhow::Result<String> {
    let backends_nix = serde_json::to_string(&serde_json::to_string(backends)?)?;
    let expression = format!(
        "(import ./nixos/lib/haproxy.nix) {{ \
           backends = builtins.fromJSON {backends_nix}; \
           certificate = \"{}\"; \
           httpBind = \"127.0.0.1:{http_port}\"; \
           httpsBind = \"127.0.0.1:{https_port}\"; \
           metricsBind = \"127.0.0.1:{}\"; \
           maxconn = 4000; \
           limits = {{ connections = 2000; requestsPer10s = 100000; streamsPerMinute = 100000; }}; }}",
        cert.display(),
        free_port()
    );
    match nix_eval_json(&expression).await? {
        serde_json::Value::String(config) => Ok(config),
        other => bail!("haproxy.nix did not return a string: {other}"),
    }
}
