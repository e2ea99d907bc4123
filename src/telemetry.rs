//! Logging: journald under systemd, otherwise stderr (human-readable or JSON lines).

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

const QUIET_TARGET: &str = "sqlx_postgres::options=error";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogOutput {
    Journald,
    Text,
    Json,
}

impl LogOutput {
    /// Journald when systemd connected our stderr to the journal (`JOURNAL_STREAM`),
    /// else JSON lines with `HUBBUB_LOG_FORMAT=json`, else text.
    pub fn from_process() -> Self {
        if std::env::var_os("JOURNAL_STREAM").is_some() {
            Self::Journald
        } else if std::env::var("HUBBUB_LOG_FORMAT").is_ok_and(|v| v.eq_ignore_ascii_case("json")) {
            Self::Json
        } else {
            Self::Text
        }
    }
}

/// Installs the global subscriber; the level comes from `RUST_LOG` (default `info`).
pub fn init(output: LogOutput) -> anyhow::Result<()> {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info"))
        // sqlx logs the value of a connection parameter it does not know, which
        // may be a password; the configuration refuses such URLs, and this keeps
        // any that slip through out of the logs whatever RUST_LOG says.
        .add_directive(QUIET_TARGET.parse()?);
    let registry = tracing_subscriber::registry().with(filter);
    match output {
        LogOutput::Journald => match tracing_journald::layer() {
            Ok(journald) => registry
                .with(journald.with_syslog_identifier("hubbub".to_owned()))
                .try_init()?,
            // No journald socket after all (e.g. a container): fall back to stderr.
            Err(_) => registry
                .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
                .try_init()?,
        },
        LogOutput::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_writer(std::io::stderr),
            )
            .try_init()?,
        LogOutput::Text => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(std::io::stderr().is_terminal())
                    .with_writer(std::io::stderr),
            )
            .try_init()?,
    }
    Ok(())
}
