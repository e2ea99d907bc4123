//! Logging: journald under systemd, otherwise stderr (human-readable or JSON lines).
//! Events are formatted where they happen and written by a logging thread
//! (tracing-appender's non-blocking writer), so a request never waits for a write
//! to the journal or to stderr. When that thread falls 128,000 events behind,
//! writers wait rather than drop events (fail2ban reads some of them).

use std::io::IsTerminal;

use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

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

/// Flushes what the logging thread still holds when dropped: keep it until exit.
#[must_use = "dropping the guard stops the logging thread"]
pub struct LogGuard {
    _flush_on_drop: WorkerGuard,
}

/// Installs the global subscriber; the level comes from `RUST_LOG` (default `info`).
pub fn init(output: LogOutput) -> anyhow::Result<LogGuard> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    let builder = || {
        NonBlockingBuilder::default()
            .lossy(false)
            .thread_name("hubbub-log")
    };
    let guard = match output {
        LogOutput::Journald => match crate::journald::JournalSocket::connect() {
            Ok(socket) => {
                let (writer, guard) = builder().finish(socket);
                registry
                    .with(crate::journald::JournaldLayer::new(writer, "hubbub"))
                    .try_init()?;
                guard
            }
            // No journald socket after all (e.g. a container): fall back to stderr.
            Err(_) => {
                let (writer, guard) = builder().finish(std::io::stderr());
                registry
                    .with(tracing_subscriber::fmt::layer().with_writer(writer))
                    .try_init()?;
                guard
            }
        },
        LogOutput::Json => {
            let (writer, guard) = builder().finish(std::io::stderr());
            registry
                .with(
                    tracing_subscriber::fmt::layer()
                        .json()
                        .flatten_event(true)
                        .with_writer(writer),
                )
                .try_init()?;
            guard
        }
        LogOutput::Text => {
            let (writer, guard) = builder().finish(std::io::stderr());
            registry
                .with(
                    tracing_subscriber::fmt::layer()
                        .with_ansi(std::io::stderr().is_terminal())
                        .with_writer(writer),
                )
                .try_init()?;
            guard
        }
    };
    Ok(LogGuard {
        _flush_on_drop: guard,
    })
}
