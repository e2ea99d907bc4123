//! Logging: journald under systemd, otherwise stderr (human-readable or JSON lines).
//! Events of INFO and below (the access log: one per request) are encoded where they
//! happen into the logging thread's buffers (`batch`), and that thread writes them,
//! so a request never waits for the journal or stderr; warnings and errors are
//! written at once. The access log has its own, cheaper encoder (`access`).

pub mod access;
mod batch;
pub mod journald;

use std::io::{IsTerminal, Write as _};
use std::sync::Mutex;

use tracing::Level;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::fmt::{self, MakeWriter};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use access::{AccessLayer, Form};
use batch::{Batches, Framing, Sink, Stopper};
use journald::{JournalSocket, JournaldLayer};

const QUIET_TARGET: &str = "sqlx_postgres::options=error";
const LOG_THREAD: &str = "hubbub-log";
const IDENTIFIER: &str = "hubbub";

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

/// Writes what the logging thread still holds when dropped: keep it until exit.
#[must_use = "dropping the guard stops the logging thread"]
pub struct LogGuard {
    _stop: Stopper,
}

/// What the log says when events were given up (see `batch`).
const LOSS_TARGET: &str = "hubbub::telemetry";
const LOSS_MESSAGE: &str = "log events were dropped: the log sink took nothing for 5 s";

/// Lines to stderr, a taken buffer with one call; `json` for the form of the loss report.
struct Stderr {
    json: bool,
}

impl Sink for Stderr {
    fn write_batch(&mut self, batch: &[u8]) {
        // Nothing sensible is left to do with a failure to log.
        let _ = std::io::stderr().lock().write_all(batch);
    }

    fn report_loss(&mut self, bytes: usize) {
        let time = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        let line = if self.json {
            format!(
                "{{\"timestamp\":\"{time}\",\"level\":\"WARN\",\"message\":\"{LOSS_MESSAGE}\",\"bytes\":{bytes},\"target\":\"{LOSS_TARGET}\"}}\n"
            )
        } else {
            format!("{time}  WARN {LOSS_TARGET}: {LOSS_MESSAGE} bytes={bytes}\n")
        };
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }
}

/// Entries to the journal, one datagram each.
struct Journal(JournalSocket);

impl Sink for Journal {
    fn write_batch(&mut self, batch: &[u8]) {
        for entry in batch::entries(batch) {
            let _ = self.0.write(entry);
        }
    }

    fn report_loss(&mut self, bytes: usize) {
        let mut entry = Vec::new();
        journald::put(&mut entry, "PRIORITY", b"4");
        journald::put(&mut entry, "TARGET", LOSS_TARGET.as_bytes());
        journald::put(&mut entry, "SYSLOG_IDENTIFIER", IDENTIFIER.as_bytes());
        journald::put(&mut entry, "MESSAGE", LOSS_MESSAGE.as_bytes());
        journald::put(&mut entry, "F_BYTES", bytes.to_string().as_bytes());
        let _ = self.0.write(&entry);
    }
}

/// The general layers' writer: each write is one event.
pub struct Appender<'a>(&'a Batches);

impl std::io::Write for Appender<'_> {
    fn write(&mut self, event: &[u8]) -> std::io::Result<usize> {
        self.0.append(|buffer| buffer.extend_from_slice(event));
        Ok(event.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Batches {
    type Writer = Appender<'a>;

    fn make_writer(&'a self) -> Appender<'a> {
        Appender(self)
    }
}

/// Installs the global subscriber; the level comes from `RUST_LOG` (default `info`).
pub fn init(output: LogOutput) -> anyhow::Result<LogGuard> {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info"))
        // sqlx logs the value of a connection parameter it does not know, which
        // may be a password; the configuration refuses such URLs, and this keeps
        // any that slip through out of the logs whatever RUST_LOG says.
        .add_directive(QUIET_TARGET.parse()?);
    let registry = tracing_subscriber::registry().with(filter);
    // Each event goes to one layer: the access log's (INFO and below), the queued
    // general one (INFO and below), or the immediate one. Warnings and errors are rare
    // and written at once, so none is lost when the process dies the next moment
    // (fail2ban reads some of them).
    let queued = |metadata: &tracing::Metadata<'_>| *metadata.level() > Level::WARN;
    let access_log = move || filter_fn(move |m| queued(m) && m.target() == access::TARGET);
    let general = move || filter_fn(move |m| queued(m) && m.target() != access::TARGET);
    let at_once = move || filter_fn(move |m| !queued(m));
    let journal = match output {
        LogOutput::Journald => JournalSocket::connect()
            .and_then(|queued| Ok((queued, JournalSocket::connect()?)))
            .ok(),
        _ => None,
    };
    let stop = match (output, journal) {
        (LogOutput::Journald, Some((queued_socket, direct_socket))) => {
            let (batches, stop) =
                batch::start(LOG_THREAD, Framing::Entries, Journal(queued_socket))?;
            registry
                .with(JournaldLayer::new(batches.clone(), IDENTIFIER).with_filter(general()))
                .with(
                    AccessLayer::new(batches, Form::Journal, IDENTIFIER).with_filter(access_log()),
                )
                .with(
                    JournaldLayer::new(Mutex::new(direct_socket), IDENTIFIER)
                        .with_filter(at_once()),
                )
                .try_init()?;
            stop
        }
        (LogOutput::Json, _) => {
            let (batches, stop) = batch::start(LOG_THREAD, Framing::Lines, Stderr { json: true })?;
            registry
                .with(
                    fmt::layer()
                        .json()
                        .flatten_event(true)
                        .with_writer(batches.clone())
                        .with_filter(general()),
                )
                .with(AccessLayer::new(batches, Form::Json, IDENTIFIER).with_filter(access_log()))
                .with(
                    fmt::layer()
                        .json()
                        .flatten_event(true)
                        .with_writer(std::io::stderr)
                        .with_filter(at_once()),
                )
                .try_init()?;
            stop
        }
        // Text, and journald without a journal socket after all (e.g. a container).
        (LogOutput::Text | LogOutput::Journald, _) => {
            let (batches, stop) = batch::start(LOG_THREAD, Framing::Lines, Stderr { json: false })?;
            let ansi = output == LogOutput::Text && std::io::stderr().is_terminal();
            registry
                .with(
                    fmt::layer()
                        .with_ansi(ansi)
                        .with_writer(batches.clone())
                        .with_filter(general()),
                )
                .with(AccessLayer::new(batches, Form::Text, IDENTIFIER).with_filter(access_log()))
                .with(
                    fmt::layer()
                        .with_ansi(ansi)
                        .with_writer(std::io::stderr)
                        .with_filter(at_once()),
                )
                .try_init()?;
            stop
        }
    };
    Ok(LogGuard { _stop: stop })
}
