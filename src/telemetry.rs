//! Logging: journald under systemd, otherwise stderr (human-readable or JSON lines).
//! Events are formatted where they happen and written by a logging thread
//! (tracing-appender's non-blocking writer), so a request never waits for a write
//! to the journal or to stderr; warnings and errors are written at once. When that
//! thread falls 128,000 events behind, requests wait rather than lose events.

use std::io::IsTerminal;
use std::sync::Mutex;

use tracing::Level;
use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::fmt;

use crate::journald::{JournalSocket, JournaldLayer};
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

/// Flushes what the logging thread still holds when dropped: keep it until exit.
#[must_use = "dropping the guard stops the logging thread"]
pub struct LogGuard {
    _flush_on_drop: WorkerGuard,
}

/// Lines are gathered and written together: the logging thread flushes whenever it
/// has written everything queued, so nothing waits long in the buffer.
fn buffered_stderr() -> Lingering<std::io::BufWriter<std::io::Stderr>> {
    Lingering(std::io::BufWriter::with_capacity(
        64 * 1024,
        std::io::stderr(),
    ))
}

/// How long the logging thread rests after writing everything queued. Events that
/// arrive meanwhile queue up without waking it: under load that saves a wake-up
/// (a futex call and a context switch) per request; events wait at most this long.
const LINGER: std::time::Duration = std::time::Duration::from_millis(1);

/// A writer for the logging thread that rests for `LINGER` after each flush.
struct Lingering<W>(W);

impl<W: std::io::Write> std::io::Write for Lingering<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let flushed = self.0.flush();
        std::thread::sleep(LINGER);
        flushed
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
    let builder = || {
        NonBlockingBuilder::default()
            .lossy(false)
            .thread_name("hubbub-log")
    };
    // INFO and below (the access log: one event per request) go through the logging
    // thread. Warnings and errors are rare and written at once, so none is lost when
    // the process dies the next moment (fail2ban reads some of them).
    let queued = || filter_fn(|metadata| *metadata.level() > Level::WARN);
    let at_once = || filter_fn(|metadata| *metadata.level() <= Level::WARN);
    let journal = match output {
        LogOutput::Journald => JournalSocket::connect()
            .and_then(|queued| Ok((queued, JournalSocket::connect()?)))
            .ok(),
        _ => None,
    };
    let guard = match (output, journal) {
        (LogOutput::Journald, Some((queued_socket, direct_socket))) => {
            let (writer, guard) = builder().finish(Lingering(queued_socket));
            registry
                .with(JournaldLayer::new(writer, "hubbub").with_filter(queued()))
                .with(
                    JournaldLayer::new(Mutex::new(direct_socket), "hubbub").with_filter(at_once()),
                )
                .try_init()?;
            guard
        }
        (LogOutput::Json, _) => {
            let (writer, guard) = builder().finish(buffered_stderr());
            registry
                .with(
                    fmt::layer()
                        .json()
                        .flatten_event(true)
                        .with_writer(writer)
                        .with_filter(queued()),
                )
                .with(
                    fmt::layer()
                        .json()
                        .flatten_event(true)
                        .with_writer(std::io::stderr)
                        .with_filter(at_once()),
                )
                .try_init()?;
            guard
        }
        // Text, and journald without a journal socket after all (e.g. a container).
        (LogOutput::Text | LogOutput::Journald, _) => {
            let (writer, guard) = builder().finish(buffered_stderr());
            let ansi = output == LogOutput::Text && std::io::stderr().is_terminal();
            registry
                .with(
                    fmt::layer()
                        .with_ansi(ansi)
                        .with_writer(writer)
                        .with_filter(queued()),
                )
                .with(
                    fmt::layer()
                        .with_ansi(ansi)
                        .with_writer(std::io::stderr)
                        .with_filter(at_once()),
                )
                .try_init()?;
            guard
        }
    };
    Ok(LogGuard {
        _flush_on_drop: guard,
    })
}
