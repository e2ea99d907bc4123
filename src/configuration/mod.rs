//! Configuration: defaults < TOML file < `HUBBUB_*` environment, validated once at start.
//!
//! Every secret has a `*_file` twin; relative file names resolve against
//! `$CREDENTIALS_DIRECTORY`, where systemd's `LoadCredential=` puts them.

mod secret;
mod service_url;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::error::{Actual, Kind};
use figment::providers::{Env, Format, Toml};
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

pub use secret::{REDACTED, Secret};
pub use service_url::{ServiceUrl, redact_urls_in};

/// Environment variables with the `HUBBUB_` prefix that are not configuration keys.
const NON_KEY_VARIABLES: &[&str] = &["CONFIG", "LOG_FORMAT", "BUILD", "COMMIT"];

/// Keys holding a secret: an error about one never shows the value.
const SECRET_KEYS: &[&str] = &[
    "database.password",
    "redis.password",
    "mqtt.password",
    "visitors.salt",
    "buffs.admin_token",
];

/// Keys whose value may carry a password (in the userinfo or the query).
const URL_KEYS: &[&str] = &["database.url", "redis.url", "mqtt.url"];

/// The query parameters of a `postgres://` URL that the driver (sqlx) understands.
const POSTGRES_PARAMETERS: &[&str] = &[
    "sslmode",
    "ssl-mode",
    "sslrootcert",
    "ssl-root-cert",
    "ssl-ca",
    "sslcert",
    "ssl-cert",
    "sslkey",
    "ssl-key",
    "statement-cache-capacity",
    "host",
    "hostaddr",
    "port",
    "dbname",
    "user",
    "password",
    "application_name",
    "options",
];

/// Keys whose `HUBBUB_*` variable is taken as the exact text it holds. figment reads
/// environment values as typed (`84729110` becomes a number, `007` the number 7,
/// `true` a boolean, `[a]` a list), which would change a password, or refuse it
/// with an error quoting it.
const TEXT_KEYS: &[&str] = &[
    "database.password",
    "redis.password",
    "mqtt.password",
    "visitors.salt",
    "buffs.admin_token",
    "database.url",
    "redis.url",
    "mqtt.url",
    "mqtt.username",
];

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration file {path} does not exist")]
    MissingFile { path: PathBuf },
    #[error("invalid configuration{}: {message}", key.as_deref().map(|k| format!(" key `{k}`")).unwrap_or_default())]
    Invalid {
        key: Option<String>,
        message: String,
    },
    #[error("cannot read `{key}` from {path}: {source}")]
    SecretFile {
        key: String,
        path: PathBuf,
        source: std::io::Error,
    },
}

impl ConfigError {
    fn invalid(key: &str, message: impl Into<String>) -> Self {
        Self::Invalid {
            key: Some(key.to_owned()),
            message: message.into(),
        }
    }

    /// The configuration key this error is about, when there is one.
    pub fn key(&self) -> Option<&str> {
        match self {
            Self::Invalid { key, .. } => key.as_deref(),
            Self::SecretFile { key, .. } => Some(key),
            Self::MissingFile { .. } => None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// How long a graceful shutdown may take before remaining connections are cut.
    pub shutdown_timeout_secs: u64,
    pub http: HttpSettings,
    pub admin: AdminSettings,
    pub database: DatabaseSettings,
    pub redis: RedisSettings,
    pub mqtt: MqttSettings,
    pub visitors: VisitorsSettings,
    pub chat: ChatSettings,
    pub broadcast: BroadcastSettings,
    pub buffs: BuffsSettings,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            shutdown_timeout_secs: 10,
            http: HttpSettings::default(),
            admin: AdminSettings::default(),
            database: DatabaseSettings::default(),
            redis: RedisSettings::default(),
            mqtt: MqttSettings::default(),
            visitors: VisitorsSettings::default(),
            chat: ChatSettings::default(),
            broadcast: BroadcastSettings::default(),
            buffs: BuffsSettings::default(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpSettings {
    /// The public listener (behind the reverse proxy in production).
    pub listen: SocketAddr,
    /// Peers whose `X-Forwarded-For` and `X-Request-Id` are believed.
    pub trusted_proxies: Vec<IpNet>,
    /// Largest request body accepted, in bytes.
    pub body_limit: u64,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            trusted_proxies: Vec::new(),
            body_limit: 16 * 1024,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminSettings {
    /// The metrics listener; never exposed publicly.
    pub listen: SocketAddr,
}

impl Default for AdminSettings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 9464)),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseSettings {
    /// `postgres://…` or `sqlite://…`; unset means SQLite in the state directory.
    pub url: Option<ServiceUrl>,
    pub password: Option<Secret>,
    pub password_file: Option<PathBuf>,
    pub migrate_on_start: bool,
    pub max_connections: u32,
    /// How long a request waits for a database connection before answering 503.
    pub acquire_timeout_ms: u64,
    /// How long `migrate` and `serve` wait at start for the database to accept a
    /// connection, retrying with backoff, before they give up (0: try once).
    pub startup_wait_secs: u64,
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        Self {
            url: None,
            password: None,
            password_file: None,
            migrate_on_start: true,
            max_connections: 16,
            acquire_timeout_ms: 3000,
            startup_wait_secs: 300,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisSettings {
    /// Unset means an in-process cache (and per-instance rate limits).
    pub url: Option<ServiceUrl>,
    pub password: Option<Secret>,
    pub password_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MqttSettings {
    /// `mqtt://host:1883` or `mqtts://host:8883`; unset means the in-process bus.
    pub url: Option<ServiceUrl>,
    pub username: Option<String>,
    pub password: Option<Secret>,
    pub password_file: Option<PathBuf>,
    /// CA certificate for `mqtts://` brokers with a private CA.
    pub ca_file: Option<PathBuf>,
    pub client_id: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VisitorsSettings {
    pub owner_name: String,
    pub owner_url: Option<String>,
    /// Key of the HMAC that turns client addresses into visitor identities.
    pub salt: Option<Secret>,
    pub salt_file: Option<PathBuf>,
    /// How long `/api/stats` answers may be served from the cache.
    pub stats_cache_ms: u64,
    /// Most visits recorded by one statement (1: no batching).
    pub batch_max_size: usize,
    /// How long a batch may wait for more visits while others are in flight.
    pub batch_max_wait_us: u64,
    /// Batches executing at once, each on its own database connection.
    pub batch_max_in_flight: usize,
    /// IPv6 clients are one visitor per network of this prefix length (128: per address).
    pub ipv6_prefix: u8,
}

impl Default for VisitorsSettings {
    fn default() -> Self {
        Self {
            owner_name: "hubbub".to_owned(),
            owner_url: None,
            salt: None,
            salt_file: None,
            stats_cache_ms: 500,
            batch_max_size: 256,
            batch_max_wait_us: 0,
            batch_max_in_flight: 2,
            ipv6_prefix: 128,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ChatSettings {
    pub rate_per_minute: u32,
    pub rate_burst: u32,
    /// IPv6 clients share one rate limit per network of this prefix length.
    pub rate_limit_ipv6_prefix: u8,
}

impl Default for ChatSettings {
    fn default() -> Self {
        Self {
            rate_per_minute: 60,
            rate_burst: 20,
            rate_limit_ipv6_prefix: 64,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BroadcastSettings {
    pub keepalive_secs: u64,
    /// Chat channels with clients on one instance at once (the buffs stream is
    /// always allowed); a client asking for one more gets 503 `too_many_streams`. Each costs a ring of
    /// 1,024 shared frames (about 40 KiB) and a task, so random channel names cannot
    /// grow memory without bound.
    pub max_streams: usize,
}

impl Default for BroadcastSettings {
    fn default() -> Self {
        Self {
            keepalive_secs: 15,
            max_streams: 1000,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BuffsSettings {
    /// Admin bearer tokens, one per line.
    pub admin_token: Option<Secret>,
    pub admin_token_file: Option<PathBuf>,
    pub cache_ttl_secs: u64,
}

impl Default for BuffsSettings {
    fn default() -> Self {
        Self {
            admin_token: None,
            admin_token_file: None,
            cache_ttl_secs: 30,
        }
    }
}

/// Where the process environment says things are; read once, passed explicitly.
#[derive(Debug, Clone, Default)]
pub struct Environment {
    pub credentials_directory: Option<PathBuf>,
    pub state_directory: Option<PathBuf>,
    pub xdg_state_home: Option<PathBuf>,
}

impl Environment {
    pub fn from_process() -> Self {
        let path = |name: &str| {
            std::env::var_os(name)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        Self {
            credentials_directory: path("CREDENTIALS_DIRECTORY"),
            // systemd passes a colon-separated list when several are configured.
            state_directory: std::env::var("STATE_DIRECTORY")
                .ok()
                .and_then(|v| v.split(':').next().map(PathBuf::from))
                .filter(|p| !p.as_os_str().is_empty()),
            xdg_state_home: path("XDG_STATE_HOME"),
        }
    }

    /// `$STATE_DIRECTORY`, else `$XDG_STATE_HOME/hubbub`, else `./.hubbub`.
    pub fn state_dir(&self) -> PathBuf {
        if let Some(dir) = &self.state_directory {
            dir.clone()
        } else if let Some(dir) = &self.xdg_state_home {
            dir.join("hubbub")
        } else {
            PathBuf::from(".hubbub")
        }
    }

    fn resolve(&self, file: &Path) -> PathBuf {
        match &self.credentials_directory {
            Some(dir) if file.is_relative() => dir.join(file),
            _ => file.to_path_buf(),
        }
    }
}

impl Settings {
    /// Loads defaults, then the TOML file, then `HUBBUB_*` variables; reads every
    /// `*_file` secret and validates the result.
    pub fn load(file: Option<&Path>, env: &Environment) -> Result<Self, ConfigError> {
        let mut figment = Figment::new();
        if let Some(path) = file {
            if !path.is_file() {
                return Err(ConfigError::MissingFile {
                    path: path.to_path_buf(),
                });
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        let variables = Env::prefixed("HUBBUB_")
            .ignore(NON_KEY_VARIABLES)
            .split("__");
        let text = TextVariables(
            variables
                .iter()
                .filter(|(key, _)| TEXT_KEYS.contains(&key.as_str()))
                .map(|(key, value)| (key.as_str().to_owned(), value))
                .collect(),
        );
        // The filter sees the variable's key before figment lowercases it.
        figment = figment
            .merge(variables.filter(|key| {
                !TEXT_KEYS
                    .iter()
                    .any(|text| key.as_str().eq_ignore_ascii_case(text))
            }))
            .merge(text);
        Self::from_figment(figment, env)
    }

    /// Loads from TOML text alone (no file, no environment): for tests and tools.
    pub fn from_toml(toml_text: &str, env: &Environment) -> Result<Self, ConfigError> {
        Self::from_figment(Figment::new().merge(Toml::string(toml_text)), env)
    }

    fn from_figment(figment: Figment, env: &Environment) -> Result<Self, ConfigError> {
        let mut settings: Settings = figment.extract().map_err(|error| {
            let key = (!error.path.is_empty()).then(|| error.path.join("."));
            let message = match key.as_deref() {
                Some(key) if may_hold_a_secret(key) => without_value(&error),
                // Any other value is shown, but never a URL's password.
                _ => redact_urls_in(&error.to_string()),
            };
            ConfigError::Invalid { key, message }
        })?;
        settings.read_secret_files(env)?;
        settings.validate()?;
        Ok(settings)
    }

    fn read_secret_files(&mut self, env: &Environment) -> Result<(), ConfigError> {
        read_secret(
            "database.password",
            &mut self.database.password,
            &self.database.password_file,
            env,
        )?;
        read_secret(
            "redis.password",
            &mut self.redis.password,
            &self.redis.password_file,
            env,
        )?;
        read_secret(
            "mqtt.password",
            &mut self.mqtt.password,
            &self.mqtt.password_file,
            env,
        )?;
        read_secret(
            "visitors.salt",
            &mut self.visitors.salt,
            &self.visitors.salt_file,
            env,
        )?;
        read_secret(
            "buffs.admin_token",
            &mut self.buffs.admin_token,
            &self.buffs.admin_token_file,
            env,
        )?;
        if let Some(ca) = &self.mqtt.ca_file {
            self.mqtt.ca_file = Some(env.resolve(ca));
        }
        Ok(())
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if let Some(url) = &self.database.url {
            match url.scheme() {
                "postgres" | "postgresql" | "sqlite" => {}
                other => {
                    return Err(ConfigError::invalid(
                        "database.url",
                        format!("scheme `{other}` is not supported; use postgres:// or sqlite://"),
                    ));
                }
            }
            if url.scheme().starts_with("postgres")
                && let Some((name, _)) = url
                    .url()
                    .query_pairs()
                    .find(|(name, _)| !POSTGRES_PARAMETERS.contains(&name.as_ref()))
            {
                // sqlx would log the parameter's value (a `sslpassword`, say) and ignore it.
                return Err(ConfigError::invalid(
                    "database.url",
                    format!(
                        "unknown connection parameter `{name}` (known: {})",
                        POSTGRES_PARAMETERS.join(", ")
                    ),
                ));
            }
            if url.has_password() && self.database.password.is_some() {
                return Err(ConfigError::invalid(
                    "database.password",
                    "set the password either in database.url or in database.password(_file), not both",
                ));
            }
        }
        if let Some(url) = &self.redis.url
            && url.scheme() != "redis"
        {
            return Err(ConfigError::invalid(
                "redis.url",
                format!(
                    "scheme `{}` is not supported (this build speaks to Redis without TLS); \
                     use redis:// over a private network",
                    url.scheme()
                ),
            ));
        }
        if let Some(url) = &self.mqtt.url {
            match url.scheme() {
                "mqtt" | "mqtts" => {}
                other => {
                    return Err(ConfigError::invalid(
                        "mqtt.url",
                        format!("scheme `{other}` is not supported; use mqtt:// or mqtts://"),
                    ));
                }
            }
            if url.url().host_str().is_none() {
                return Err(ConfigError::invalid("mqtt.url", "the URL needs a host"));
            }
        }
        if self.mqtt.password.is_some() && self.mqtt.username.is_none() {
            return Err(ConfigError::invalid(
                "mqtt.username",
                "mqtt.password is set, so a username is needed",
            ));
        }
        if let Some(owner_url) = &self.visitors.owner_url {
            let ok = url::Url::parse(owner_url)
                .map(|u| matches!(u.scheme(), "http" | "https"))
                .unwrap_or(false);
            if !ok {
                return Err(ConfigError::invalid(
                    "visitors.owner_url",
                    "must be an http:// or https:// URL",
                ));
            }
        }
        if self.visitors.owner_name.trim().is_empty() {
            return Err(ConfigError::invalid(
                "visitors.owner_name",
                "must not be empty",
            ));
        }
        if self.http.body_limit == 0 {
            return Err(ConfigError::invalid("http.body_limit", "must be above 0"));
        }
        if self.database.max_connections == 0 {
            return Err(ConfigError::invalid(
                "database.max_connections",
                "must be above 0",
            ));
        }
        if self.chat.rate_per_minute == 0 || self.chat.rate_burst == 0 {
            return Err(ConfigError::invalid(
                "chat.rate_per_minute",
                "rate_per_minute and rate_burst must be above 0",
            ));
        }
        for (key, prefix) in [
            (
                "chat.rate_limit_ipv6_prefix",
                self.chat.rate_limit_ipv6_prefix,
            ),
            ("visitors.ipv6_prefix", self.visitors.ipv6_prefix),
        ] {
            if !(1..=128).contains(&prefix) {
                return Err(ConfigError::invalid(
                    key,
                    "must be a prefix length from 1 to 128",
                ));
            }
        }
        if self.visitors.batch_max_size == 0 || self.visitors.batch_max_size > 10_000 {
            return Err(ConfigError::invalid(
                "visitors.batch_max_size",
                "must be from 1 to 10000",
            ));
        }
        // Each batch in flight holds a database connection; far beyond any pool, and
        // large values overflow the queue's size (a panic at start, not an error).
        if self.visitors.batch_max_in_flight == 0 || self.visitors.batch_max_in_flight > 1_000 {
            return Err(ConfigError::invalid(
                "visitors.batch_max_in_flight",
                "must be from 1 to 1000",
            ));
        }
        // The caches' expiry is what bounds staleness after a missed invalidation;
        // moka also panics at start beyond 1,000 years.
        if self.visitors.stats_cache_ms > 3_600_000 {
            return Err(ConfigError::invalid(
                "visitors.stats_cache_ms",
                "must be at most 3600000 (1 hour)",
            ));
        }
        if self.buffs.cache_ttl_secs > 3_600 {
            return Err(ConfigError::invalid(
                "buffs.cache_ttl_secs",
                "must be at most 3600 (1 hour)",
            ));
        }
        if self.visitors.batch_max_wait_us > 1_000_000 {
            return Err(ConfigError::invalid(
                "visitors.batch_max_wait_us",
                "must be at most 1000000 (1 s)",
            ));
        }
        if self.broadcast.keepalive_secs == 0 {
            return Err(ConfigError::invalid(
                "broadcast.keepalive_secs",
                "must be above 0",
            ));
        }
        if self.broadcast.max_streams == 0 {
            return Err(ConfigError::invalid(
                "broadcast.max_streams",
                "must be above 0",
            ));
        }
        Ok(())
    }

    /// The effective configuration as TOML, every secret shown as `<redacted>`.
    pub fn to_redacted_toml(&self) -> Result<String, toml::ser::Error> {
        toml::to_string_pretty(self)
    }

    /// The database URL in force: the configured one, else SQLite in the state dir.
    pub fn database_url(&self, env: &Environment) -> String {
        match &self.database.url {
            Some(url) => url.url().to_string(),
            None => format!(
                "sqlite://{}?mode=rwc",
                env.state_dir().join("hubbub.db").display()
            ),
        }
    }
}

/// `HUBBUB_*` variables of [`TEXT_KEYS`], as strings exactly as they were set.
struct TextVariables(Vec<(String, String)>);

impl Provider for TextVariables {
    fn metadata(&self) -> Metadata {
        Metadata::named("`HUBBUB_` environment variable(s)")
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        let mut dict = Dict::new();
        for (key, value) in &self.0 {
            insert_nested(&mut dict, key, Value::from(value.clone()));
        }
        Ok(Profile::Default.collect(dict))
    }
}

/// Puts `value` at the dotted `key` of `dict`, creating the tables on the way.
fn insert_nested(dict: &mut Dict, key: &str, value: Value) {
    match key.split_once('.') {
        None => {
            dict.insert(key.to_owned(), value);
        }
        Some((table, rest)) => {
            let entry = dict
                .entry(table.to_owned())
                .or_insert_with(|| Value::from(Dict::new()));
            if let Value::Dict(_, inner) = entry {
                insert_nested(inner, rest, value);
            }
        }
    }
}

/// Whether the value at `key` is, or may contain, a secret: a secret key, a URL
/// key, or a table above one (`database = "postgres://u:PASSWORD@h/db"` where
/// `[database]` belongs).
fn may_hold_a_secret(key: &str) -> bool {
    SECRET_KEYS.iter().chain(URL_KEYS).any(|secret| {
        secret == &key
            || secret
                .strip_prefix(key)
                .is_some_and(|rest| rest.starts_with('.'))
    })
}

/// What went wrong with a secret (or a URL that may hold one), and where it was
/// set, without the value: figment's own messages quote it (`found unsigned int
/// `84729110``).
fn without_value(error: &figment::Error) -> String {
    let kind = |actual: &Actual| match actual {
        Actual::Bool(_) => "a boolean",
        Actual::Unsigned(_) | Actual::Signed(_) => "an integer",
        Actual::Float(_) => "a number",
        Actual::Char(_) | Actual::Str(_) => "a string",
        Actual::Bytes(_) => "bytes",
        Actual::Seq => "a list",
        Actual::Map => "a table",
        _ => "a value of another type",
    };
    let what = match &error.kind {
        Kind::InvalidType(actual, expected) => {
            format!("expected {expected}, found {}", kind(actual))
        }
        Kind::InvalidValue(actual, expected) => {
            format!("invalid {}, expected {expected}", kind(actual))
        }
        // Our own deserializers (Secret, ServiceUrl) never quote the value.
        Kind::Message(message) => message.clone(),
        _ => "invalid value".to_owned(),
    };
    // The file when there is one (`TOML file` alone does not say which).
    let source = error
        .metadata
        .as_ref()
        .map(|metadata| match &metadata.source {
            Some(figment::Source::File(path)) => format!(" (set in {})", path.display()),
            _ => format!(" (set in {})", metadata.name),
        })
        .unwrap_or_default();
    format!("{what}{source}; the value is not shown")
}

/// Fills `value` from `file` when only the file is given; both at once is an error.
fn read_secret(
    key: &str,
    value: &mut Option<Secret>,
    file: &Option<PathBuf>,
    env: &Environment,
) -> Result<(), ConfigError> {
    let Some(file) = file else { return Ok(()) };
    if value.is_some() {
        return Err(ConfigError::invalid(
            key,
            format!("set either `{key}` or `{key}_file`, not both"),
        ));
    }
    let path = env.resolve(file);
    let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::SecretFile {
        key: format!("{key}_file"),
        path: path.clone(),
        source,
    })?;
    let text = text.trim_end_matches(['\n', '\r']);
    if text.trim().is_empty() {
        return Err(ConfigError::invalid(
            &format!("{key}_file"),
            format!("{} is empty", path.display()),
        ));
    }
    *value = Some(Secret::new(text));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_with(credentials: Option<&Path>) -> Environment {
        Environment {
            credentials_directory: credentials.map(Path::to_path_buf),
            state_directory: Some(PathBuf::from("/var/lib/hubbub")),
            xdg_state_home: None,
        }
    }

    #[test]
    fn secret_keys_and_the_tables_above_them_may_hold_a_secret() {
        for key in [
            "database",
            "database.password",
            "database.url",
            "redis",
            "mqtt.url",
            "visitors",
            "buffs.admin_token",
        ] {
            assert!(may_hold_a_secret(key), "{key}");
        }
        for key in [
            "http",
            "database.max_connections",
            "data",
            "database.passwords",
            "mqtt.username",
            "visitors.salt_file",
        ] {
            assert!(!may_hold_a_secret(key), "{key}");
        }
    }

    #[test]
    fn defaults_are_the_embedded_mode() {
        let settings = Settings::from_toml("", &env_with(None)).expect("defaults");
        assert_eq!(settings.http.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(settings.admin.listen.to_string(), "127.0.0.1:9464");
        assert_eq!(settings.http.body_limit, 16384);
        assert!(settings.database.migrate_on_start);
        assert!(settings.redis.url.is_none() && settings.mqtt.url.is_none());
        assert_eq!(
            settings.database_url(&env_with(None)),
            "sqlite:///var/lib/hubbub/hubbub.db?mode=rwc"
        );
    }

    #[test]
    fn batch_and_cache_bounds_are_checked_naming_the_key() {
        for (toml, key) in [
            (
                "[visitors]\nbatch_max_in_flight = 0\n",
                "visitors.batch_max_in_flight",
            ),
            (
                "[visitors]\nbatch_max_in_flight = 4611686018427387904\n",
                "visitors.batch_max_in_flight",
            ),
            (
                "[visitors]\nbatch_max_size = 0\n",
                "visitors.batch_max_size",
            ),
            (
                "[visitors]\nstats_cache_ms = 40000000000000\n",
                "visitors.stats_cache_ms",
            ),
            (
                "[buffs]\ncache_ttl_secs = 40000000000\n",
                "buffs.cache_ttl_secs",
            ),
            ("[visitors]\nipv6_prefix = 0\n", "visitors.ipv6_prefix"),
            (
                "[chat]\nrate_limit_ipv6_prefix = 129\n",
                "chat.rate_limit_ipv6_prefix",
            ),
        ] {
            let error = Settings::from_toml(toml, &env_with(None)).expect_err(toml);
            assert_eq!(error.key(), Some(key), "{toml}: {error}");
        }
        let fine = "[visitors]\nbatch_max_in_flight = 1000\nstats_cache_ms = 3600000\n\
                    [buffs]\ncache_ttl_secs = 3600\n";
        Settings::from_toml(fine, &env_with(None)).expect("at the bounds");
    }

    #[test]
    fn unknown_keys_are_named() {
        let error = Settings::from_toml("[database]\nurll = \"x\"\n", &env_with(None))
            .expect_err("unknown key");
        assert_eq!(error.key(), Some("database.urll"), "{error}");
        let error = Settings::from_toml("colour = 1\n", &env_with(None)).expect_err("unknown key");
        assert!(error.to_string().contains("colour"), "{error}");
    }

    #[test]
    fn wrong_types_name_the_key() {
        let error = Settings::from_toml("[http]\nbody_limit = \"big\"\n", &env_with(None))
            .expect_err("type");
        assert_eq!(error.key(), Some("http.body_limit"), "{error}");
    }

    #[test]
    fn secret_files_resolve_against_the_credentials_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("redis-password"), "r3dis\n").expect("write");
        let settings = Settings::from_toml(
            "[redis]\nurl = \"redis://cache:6379\"\npassword_file = \"redis-password\"\n",
            &env_with(Some(dir.path())),
        )
        .expect("settings");
        let password = settings.redis.password.as_ref().expect("password read");
        assert_eq!(password.expose(), "r3dis", "trailing newline trimmed");
        let toml = settings.to_redacted_toml().expect("toml");
        assert!(!toml.contains("r3dis") && toml.contains(REDACTED), "{toml}");
    }

    #[test]
    fn a_secret_and_its_file_together_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("pw"), "x").expect("write");
        let error = Settings::from_toml(
            "[mqtt]\nusername = \"u\"\npassword = \"a\"\npassword_file = \"pw\"\n",
            &env_with(Some(dir.path())),
        )
        .expect_err("both");
        assert_eq!(error.key(), Some("mqtt.password"));
    }

    #[test]
    fn empty_secret_files_and_bad_urls_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("empty"), "\n").expect("write");
        let error = Settings::from_toml(
            "[visitors]\nsalt_file = \"empty\"\n",
            &env_with(Some(dir.path())),
        )
        .expect_err("empty");
        assert_eq!(error.key(), Some("visitors.salt_file"));
        for (toml, key) in [
            ("[database]\nurl = \"mysql://db/x\"\n", "database.url"),
            ("[redis]\nurl = \"http://cache\"\n", "redis.url"),
            ("[redis]\nurl = \"rediss://cache:6380\"\n", "redis.url"),
            ("[mqtt]\nurl = \"tcp://broker\"\n", "mqtt.url"),
            (
                "[visitors]\nowner_url = \"javascript:alert(1)\"\n",
                "visitors.owner_url",
            ),
        ] {
            let error = Settings::from_toml(toml, &env_with(None)).expect_err(toml);
            assert_eq!(error.key(), Some(key), "{error}");
        }
    }

    #[test]
    fn passwords_in_urls_do_not_leak_from_errors() {
        let error = Settings::from_toml(
            "[database]\nurl = \"postgres://u:hunter2@db/x\"\npassword = \"p\"\n",
            &env_with(None),
        )
        .expect_err("both passwords");
        assert!(!error.to_string().contains("hunter2"), "{error}");
    }
}
