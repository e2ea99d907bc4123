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

use tracing::{Level, Metadata};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::{FilterFn, filter_fn};
use tracing_subscriber::fmt::{self, MakeWriter};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
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

/// Lines to stderr, a taken buffer with one call.
struct Stderr;

impl Sink for Stderr {
    fn write_batch(&mut self, batch: &[u8]) {
        // Nothing sensible is left to do with a failure to log.
        let _ = std::io::stderr().lock().write_all(batch);
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

// Each event goes to one layer: the access log's (INFO and below), the queued
// general one (INFO and below), or the immediate one. Warnings and errors are rare
// and written at once, so none is lost when the process dies the next moment
// (fail2ban reads some of them).
fn queued(metadata: &Metadata<'_>) -> bool {
    *metadata.level() > Level::WARN
}

fn access_log() -> FilterFn<impl Fn(&Metadata<'_>) -> bool> {
    filter_fn(|m| queued(m) && m.target() == access::TARGET)
}

fn general() -> FilterFn<impl Fn(&Metadata<'_>) -> bool> {
    filter_fn(|m| queued(m) && m.target() != access::TARGET)
}

fn at_once() -> FilterFn<impl Fn(&Metadata<'_>) -> bool> {
    filter_fn(|m| !queued(m))
}

/// The journal's layers: INFO and below through the logging thread to `queued`,
/// warnings and errors straight to `direct`.
fn journal_layers<S>(
    queued: JournalSocket,
    direct: JournalSocket,
) -> std::io::Result<(impl Layer<S>, Stopper)>
where
    S: tracing::Subscriber + for<'span> LookupSpan<'span>,
{
    let (batches, stop) = batch::start(LOG_THREAD, Framing::Entries, Journal(queued))?;
    let layers = JournaldLayer::new(batches.clone(), IDENTIFIER)
        .with_filter(general())
        .and_then(AccessLayer::new(batches, Form::Journal, IDENTIFIER).with_filter(access_log()))
        .and_then(JournaldLayer::new(Mutex::new(direct), IDENTIFIER).with_filter(at_once()));
    Ok((layers, stop))
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
    let journal = match output {
        LogOutput::Journald => JournalSocket::connect()
            .and_then(|queued| Ok((queued, JournalSocket::connect()?)))
            .ok(),
        _ => None,
    };
    let stop = match (output, journal) {
        (LogOutput::Journald, Some((queued_socket, direct_socket))) => {
            let (layers, stop) = journal_layers(queued_socket, direct_socket)?;
            registry.with(layers).try_init()?;
            stop
        }
        (LogOutput::Json, _) => {
            let (batches, stop) = batch::start(LOG_THREAD, Framing::Lines, Stderr)?;
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
            let (batches, stop) = batch::start(LOG_THREAD, Framing::Lines, Stderr)?;
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

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixDatagram;

    use super::journald::tests::{fields, get, receive};
    use super::*;

    /// The journal pipeline as `init` builds it, against a socket standing in for
    /// journald: every event one datagram, each with its own fields, the access
    /// event through its own encoder, a warning at once.
    #[test]
    fn each_event_reaches_the_journal_as_one_entry_of_its_own() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("socket");
        let journal = UnixDatagram::bind(&path).expect("bind");
        journal
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .expect("timeout");
        let queued = JournalSocket::connect_to(&path).expect("connect");
        let direct = JournalSocket::connect_to(&path).expect("connect");
        assert!(
            receive(&journal).is_empty() && receive(&journal).is_empty(),
            "the probes"
        );
        let (layers, stop) = journal_layers(queued, direct).expect("thread");
        let subscriber = tracing_subscriber::registry().with(layers);
        tracing::subscriber::with_default(subscriber, || {
            for n in 0..3u16 {
                tracing::info!(
                    target: "hubbub::access",
                    request_id = %format!("r-{n}"),
                    client_ip = %std::net::IpAddr::from([203, 0, 113, 7]),
                    method = %http::Method::POST,
                    route = "/api/chat/{channel}/messages",
                    status = 201u16 + n,
                    latency_ms = 1.5,
                    "request"
                );
            }
            tracing::info!(channel = "lobby\nsecond line", "an INFO event");
            tracing::warn!(error = "refused", "a warning");
        });
        drop(stop);
        let mut entries: Vec<Vec<(String, String)>> =
            (0..5).map(|_| fields(&receive(&journal))).collect();
        // The warning went straight to the socket, the rest through the logging
        // thread, in their order.
        let at = entries
            .iter()
            .position(|e| get(e, "PRIORITY") == "4")
            .expect("the warning");
        let warning = entries.remove(at);
        let mut entries = entries.into_iter();
        assert_eq!(get(&warning, "PRIORITY"), "4");
        assert_eq!(get(&warning, "MESSAGE"), "a warning");
        for n in 0..3u16 {
            let access = entries.next().expect("an access entry");
            assert_eq!(get(&access, "PRIORITY"), "5");
            assert_eq!(get(&access, "TARGET"), "hubbub::access");
            assert_eq!(get(&access, "SYSLOG_IDENTIFIER"), "hubbub");
            assert_eq!(get(&access, "MESSAGE"), "request");
            assert_eq!(get(&access, "F_REQUEST_ID"), format!("r-{n}"));
            assert_eq!(get(&access, "F_CLIENT_IP"), "203.0.113.7");
            assert_eq!(get(&access, "F_METHOD"), "POST");
            assert_eq!(get(&access, "F_ROUTE"), "/api/chat/{channel}/messages");
            assert_eq!(get(&access, "F_STATUS"), (201 + n).to_string());
            assert_eq!(get(&access, "F_LATENCY_MS"), "1.5");
            assert_eq!(access.iter().filter(|(n, _)| n == "MESSAGE").count(), 1);
        }
        let info = entries.next().expect("the INFO entry");
        assert_eq!(get(&info, "MESSAGE"), "an INFO event");
        assert_eq!(get(&info, "F_CHANNEL"), "lobby\nsecond line");
        journal.set_nonblocking(true).expect("nonblocking");
        let mut rest = [0u8; 16];
        assert!(journal.recv(&mut rest).is_err(), "no other datagram");
    }
}
