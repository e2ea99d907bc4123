//! The access log: one event per request (target `hubbub::access`), encoded by this
//! layer straight into the logging thread's buffers. The lines are what the general
//! layers write for any other event (tracing-subscriber's text and flattened JSON
//! forms, or a journal entry), at a fraction of the cost: the timestamp's date and
//! time are formatted once a second, numbers without `core::fmt`, and nothing is
//! allocated per event.

use std::cell::{Cell, RefCell};
use std::fmt::{self, Write as _};
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer};

use super::batch::Batches;
use super::journald::{self, Utf8Sink};

/// The access log's target; the general layers leave its events to this one.
pub const TARGET: &str = "hubbub::access";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    Text,
    Json,
    Journal,
}

pub struct AccessLayer {
    batches: Batches,
    form: Form,
    identifier: &'static str,
}

impl AccessLayer {
    /// `identifier` is the journal's `SYSLOG_IDENTIFIER`.
    pub fn new(batches: Batches, form: Form, identifier: &'static str) -> Self {
        Self {
            batches,
            form,
            identifier,
        }
    }
}

impl<S: Subscriber> Layer<S> for AccessLayer {
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        // Encoded before it is appended: a field's `Debug` may log in turn (with only
        // a global subscriber, tracing passes such an event on), and appending while
        // encoding would hold the slot's lock across that.
        thread_local! {
            static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
        }
        let encode = |buffer: &mut Vec<u8>| match self.form {
            Form::Text => text(buffer, event),
            Form::Json => json(buffer, event),
            Form::Journal => journald::encode(buffer, event, self.identifier),
        };
        let reused = SCRATCH.try_with(|scratch| {
            let Ok(mut buffer) = scratch.try_borrow_mut() else {
                return false;
            };
            buffer.clear();
            encode(&mut buffer);
            self.batches.append(|out| out.extend_from_slice(&buffer));
            // One oversized event does not keep its memory for good.
            if buffer.capacity() > 64 * 1024 {
                *buffer = Vec::new();
            }
            true
        });
        if reused != Ok(true) {
            let mut buffer = Vec::with_capacity(512);
            encode(&mut buffer);
            self.batches.append(|out| out.extend_from_slice(&buffer));
        }
    }
}

/// `2026-11-30T15:06:27.898673Z  INFO hubbub::access: request request_id=… route="/"`
pub fn text(line: &mut Vec<u8>, event: &Event<'_>) {
    timestamp(line);
    line.extend_from_slice(match *event.metadata().level() {
        Level::ERROR => b" ERROR ",
        Level::WARN => b"  WARN ",
        Level::INFO => b"  INFO ",
        Level::DEBUG => b" DEBUG ",
        Level::TRACE => b" TRACE ",
    });
    line.extend_from_slice(event.metadata().target().as_bytes());
    line.extend_from_slice(b": ");
    event.record(&mut TextFields { line, first: true });
    line.push(b'\n');
}

/// `{"timestamp":"…","level":"INFO","message":"request",…,"target":"hubbub::access"}`
pub fn json(line: &mut Vec<u8>, event: &Event<'_>) {
    line.extend_from_slice(b"{\"timestamp\":\"");
    timestamp(line);
    line.extend_from_slice(b"\",\"level\":\"");
    line.extend_from_slice(event.metadata().level().as_str().as_bytes());
    line.push(b'"');
    event.record(&mut JsonFields { line });
    line.extend_from_slice(b",\"target\":");
    json_string(line, event.metadata().target());
    line.extend_from_slice(b"}\n");
}

/// RFC 3339 in UTC to the microsecond, as tracing-subscriber writes it. The part up
/// to the seconds is kept per thread and redone when the second changes.
fn timestamp(out: &mut Vec<u8>) {
    thread_local! {
        static SECOND: Cell<(u64, [u8; 32], usize)> = const { Cell::new((u64::MAX, [0; 32], 0)) };
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let seconds = now.as_secs();
    let (cached, mut prefix, mut length) = SECOND.get();
    if cached != seconds {
        let Some(time) = i64::try_from(seconds)
            .ok()
            .and_then(|s| chrono::DateTime::from_timestamp(s, 0))
        else {
            return;
        };
        let mut text = Fixed {
            buffer: &mut prefix,
            length: 0,
        };
        let _ = write!(text, "{}", time.format("%Y-%m-%dT%H:%M:%S."));
        length = text.length;
        SECOND.set((seconds, prefix, length));
    }
    out.extend_from_slice(&prefix[..length]);
    let micros = now.subsec_micros();
    let mut digits = itoa::Buffer::new();
    let digits = digits.format(micros);
    out.extend(std::iter::repeat_n(b'0', 6 - digits.len()));
    out.extend_from_slice(digits.as_bytes());
    out.push(b'Z');
}

/// `fmt::Write` into a fixed buffer; what does not fit is cut off.
struct Fixed<'a> {
    buffer: &'a mut [u8],
    length: usize,
}

impl fmt::Write for Fixed<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let end = self.length + s.len();
        let target = self.buffer.get_mut(self.length..end).ok_or(fmt::Error)?;
        target.copy_from_slice(s.as_bytes());
        self.length = end;
        Ok(())
    }
}

/// Fields as tracing-subscriber's default text visitor writes them: the message
/// bare (terminal escapes neutralised), then `name=value` with the value's `Debug`.
struct TextFields<'a> {
    line: &'a mut Vec<u8>,
    first: bool,
}

impl TextFields<'_> {
    fn name(&mut self, field: &Field) {
        if !std::mem::take(&mut self.first) {
            self.line.push(b' ');
        }
        let name = field.name();
        self.line
            .extend_from_slice(name.strip_prefix("r#").unwrap_or(name).as_bytes());
        self.line.push(b'=');
    }

    fn message(&mut self, value: fmt::Arguments<'_>) {
        if !std::mem::take(&mut self.first) {
            self.line.push(b' ');
        }
        let start = self.line.len();
        let _ = Utf8Sink(self.line).write_fmt(value);
        neutralise_terminal_escapes(self.line, start);
    }
}

impl Visit for TextFields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message(format_args!("{value}"));
            return;
        }
        self.name(field);
        let plain = value
            .bytes()
            .all(|b| (b' '..=b'~').contains(&b) && b != b'"' && b != b'\\');
        if plain {
            self.line.push(b'"');
            self.line.extend_from_slice(value.as_bytes());
            self.line.push(b'"');
        } else {
            let _ = write!(Utf8Sink(self.line), "{value:?}");
        }
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.name(field);
        integer(self.line, value);
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.name(field);
        integer(self.line, value);
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.name(field);
        // ryu and `Debug` agree on the digits; they differ on when to switch to an
        // exponent, which this range never needs.
        if value == 0.0 || (1e-4..1e15).contains(&value.abs()) {
            self.line
                .extend_from_slice(ryu::Buffer::new().format_finite(value).as_bytes());
        } else {
            let _ = write!(Utf8Sink(self.line), "{value:?}");
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            self.message(format_args!("{value:?}"));
            return;
        }
        self.name(field);
        let _ = write!(Utf8Sink(self.line), "{value:?}");
    }
}

/// What tracing-subscriber does to a message: terminal control characters are
/// written as escapes, so a log line cannot drive the terminal that shows it.
fn neutralise_terminal_escapes(line: &mut Vec<u8>, start: usize) {
    let control = |c: char| {
        matches!(
            c,
            '\x1b' | '\x07' | '\x08' | '\x0c' | '\x7f' | '\u{80}'..='\u{9f}'
        )
    };
    let Ok(written) = std::str::from_utf8(&line[start..]) else {
        return;
    };
    if !written.chars().any(control) {
        return;
    }
    let mut escaped = String::with_capacity(written.len() + 8);
    for c in written.chars() {
        if control(c) {
            if (c as u32) < 0x80 {
                let _ = write!(escaped, "\\x{:02x}", c as u32);
            } else {
                let _ = write!(escaped, "\\u{{{:x}}}", c as u32);
            }
        } else {
            escaped.push(c);
        }
    }
    line.truncate(start);
    line.extend_from_slice(escaped.as_bytes());
}

/// Fields as tracing-subscriber's flattened JSON writes them: `,"name":value`,
/// numbers and booleans as such, everything else as a string.
struct JsonFields<'a> {
    line: &'a mut Vec<u8>,
}

impl JsonFields<'_> {
    fn name(&mut self, field: &Field) {
        self.line.push(b',');
        json_string(self.line, field.name());
        self.line.push(b':');
    }
}

impl Visit for JsonFields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.name(field);
        json_string(self.line, value);
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.name(field);
        integer(self.line, value);
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.name(field);
        integer(self.line, value);
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.name(field);
        self.line
            .extend_from_slice(if value { b"true" } else { b"false" });
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.name(field);
        // serde_json's own number form (null for NaN and infinities).
        let _ = serde_json::to_writer(&mut *self.line, &value);
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.name(field);
        // Formatted in place; escaped afterwards only when it needs it.
        self.line.push(b'"');
        let start = self.line.len();
        let _ = write!(Utf8Sink(self.line), "{value:?}");
        if self.line[start..]
            .iter()
            .any(|b| *b < b' ' || *b == b'"' || *b == b'\\')
        {
            let written = String::from_utf8_lossy(&self.line[start..]).into_owned();
            self.line.truncate(start - 1);
            json_string(self.line, &written);
        } else {
            self.line.push(b'"');
        }
    }
}

fn integer(out: &mut Vec<u8>, value: impl itoa::Integer) {
    out.extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
}

fn json_string(out: &mut Vec<u8>, value: &str) {
    if value.bytes().all(|b| b >= b' ' && b != b'"' && b != b'\\') {
        out.push(b'"');
        out.extend_from_slice(value.as_bytes());
        out.push(b'"');
    } else {
        let _ = serde_json::to_writer(&mut *out, value);
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::fmt::MakeWriter;
    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    /// What tracing-subscriber's own layers write, to compare with.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().expect("lock").extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Captured {
        type Writer = Self;

        fn make_writer(&'a self) -> Self {
            self.clone()
        }
    }

    /// Runs `emit` under a layer that encodes with `encode` and returns its lines.
    fn ours(encode: fn(&mut Vec<u8>, &Event<'_>), emit: impl Fn()) -> String {
        struct Encode(fn(&mut Vec<u8>, &Event<'_>), Arc<Mutex<Vec<u8>>>);
        impl<S: Subscriber> Layer<S> for Encode {
            fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
                (self.0)(&mut self.1.lock().expect("lock"), event);
            }
        }
        let out = Arc::new(Mutex::new(Vec::new()));
        let subscriber = tracing_subscriber::registry().with(Encode(encode, out.clone()));
        tracing::subscriber::with_default(subscriber, emit);
        let out = out.lock().expect("lock").clone();
        String::from_utf8(out).expect("UTF-8")
    }

    fn theirs(json: bool, emit: impl Fn()) -> String {
        let captured = Captured::default();
        let layer = tracing_subscriber::fmt::layer()
            .with_ansi(false)
            .with_writer(captured.clone());
        if json {
            let subscriber = tracing_subscriber::registry().with(layer.json().flatten_event(true));
            tracing::subscriber::with_default(subscriber, emit);
        } else {
            tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), emit);
        }
        let out = captured.0.lock().expect("lock").clone();
        String::from_utf8(out).expect("UTF-8")
    }

    /// Every kind of value an access event (or a careless future field) can carry.
    fn emit() {
        let ip: std::net::IpAddr = "2001:db8::7".parse().expect("ip");
        for latency in [
            0.525683,
            0.0,
            12.5,
            1.0,
            3e-7,
            2.5e-5,
            1e-4,
            123456.789,
            1e15,
            4e17,
            f64::NAN,
            f64::INFINITY,
        ] {
            tracing::info!(
                target: "hubbub::access",
                request_id = %"0947ccfd-6bb3-4398-b223-f37f3c880c82",
                client_ip = %ip,
                method = %http::Method::GET,
                route = "/api/chat/{channel}/messages",
                status = 200u16,
                latency_ms = latency,
                "request"
            );
        }
        tracing::info!(
            target: "hubbub::access",
            quoted = "a \"b\" \\ c\n\u{1b}[31m é",
            debug = ?Some("x\"y"),
            display = %"tab\there\u{1b}",
            negative = -5i64,
            flag = true,
            r#type = "raw",
            "message with \u{1b}[2J an escape and \u{9b} C1"
        );
        tracing::warn!(target: "hubbub::access", "no fields");
        tracing::error!(target: "hubbub::access", status = 500u16, "an error");
        tracing::debug!(target: "hubbub::access", "debug");
    }

    /// Drops the leading timestamp (ours and theirs differ only in the instant).
    fn without_time(text: &str, json: bool) -> Vec<String> {
        text.lines()
            .map(|line| {
                if json {
                    let mut value: serde_json::Value = serde_json::from_str(line).expect("JSON");
                    let time = value["timestamp"].as_str().expect("timestamp").to_owned();
                    assert!(is_rfc3339_micros(&time), "{time}");
                    value["timestamp"] = serde_json::Value::Null;
                    // Key order matters to readers of the raw lines: keep it.
                    let keys: Vec<&str> = line
                        .split("\":")
                        .map(|k| k.rsplit('"').next().unwrap_or(""))
                        .collect();
                    format!("{value} keys {keys:?}")
                } else {
                    let (time, rest) = line.split_once(' ').expect("timestamp");
                    assert!(is_rfc3339_micros(time), "{time}");
                    rest.to_owned()
                }
            })
            .collect()
    }

    fn is_rfc3339_micros(time: &str) -> bool {
        chrono::DateTime::parse_from_rfc3339(time).is_ok()
            && time.len() == "2026-11-30T15:06:27.898673Z".len()
            && time.ends_with('Z')
    }

    #[test]
    fn text_lines_are_tracing_subscribers_own() {
        let ours = ours(text, emit);
        let theirs = theirs(false, emit);
        assert_eq!(
            without_time(&ours, false),
            without_time(&theirs, false),
            "\n{ours}\n{theirs}"
        );
        assert!(
            ours.contains(
                "route=\"/api/chat/{channel}/messages\" status=200 latency_ms=0.525683\n"
            ),
            "{ours}"
        );
    }

    #[test]
    fn json_lines_are_tracing_subscribers_own() {
        let ours = ours(json, emit);
        let theirs = theirs(true, emit);
        assert_eq!(
            without_time(&ours, true),
            without_time(&theirs, true),
            "\n{ours}\n{theirs}"
        );
    }

    #[test]
    fn the_time_is_now_to_the_microsecond() {
        for _ in 0..3 {
            let before = chrono::Utc::now();
            let mut out = Vec::new();
            timestamp(&mut out);
            let after = chrono::Utc::now();
            let time =
                chrono::DateTime::parse_from_rfc3339(std::str::from_utf8(&out).expect("UTF-8"))
                    .expect("RFC 3339");
            assert!(
                before.trunc_subsecs_micros() <= time && time <= after,
                "{before} {time} {after}"
            );
            std::thread::sleep(std::time::Duration::from_millis(600));
        }
    }

    /// Set in the child process that `a_field_that_logs_…` starts.
    const IN_CHILD: &str = "HUBBUB_TEST_NESTED_LOGGING_CHILD";

    #[test]
    fn a_field_that_logs_while_it_is_formatted_does_not_hang_the_thread() {
        // In a process of its own: only a global subscriber passes on an event
        // logged inside another one, and only while no test anywhere in the process
        // has a scoped subscriber (tracing drops such an event otherwise).
        let mut child = std::process::Command::new(std::env::current_exe().expect("test binary"))
            .args([
                "--exact",
                "telemetry::access::tests::nested_logging_child",
                "--ignored",
                "--nocapture",
            ])
            .env(IN_CHILD, "1")
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("child");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait") {
                break status;
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                panic!("the child hung: logging inside a field's Debug deadlocked");
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        };
        let mut out = String::new();
        std::io::Read::read_to_string(&mut child.stdout.take().expect("stdout"), &mut out)
            .expect("read");
        assert!(status.success(), "{out}");
        assert!(out.contains("1 passed"), "the child ran the test: {out}");
    }

    #[test]
    #[ignore = "run by a_field_that_logs_while_it_is_formatted_does_not_hang_the_thread"]
    fn nested_logging_child() {
        use tracing_subscriber::filter::filter_fn;

        use super::super::batch::{self, Framing, Sink};

        if std::env::var_os(IN_CHILD).is_none() {
            return;
        }
        struct Lines(std::sync::mpsc::Sender<String>);
        impl Sink for Lines {
            fn write_batch(&mut self, batch: &[u8]) {
                for line in String::from_utf8_lossy(batch).lines() {
                    let _ = self.0.send(line.to_owned());
                }
            }
        }
        struct LogsWhenFormatted;
        impl fmt::Debug for LogsWhenFormatted {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                tracing::info!(target: "hubbub::access", "nested");
                f.write_str("formatted")
            }
        }
        let (lines, written) = std::sync::mpsc::channel();
        let (batches, stop) =
            batch::start("test-access", Framing::Lines, Lines(lines)).expect("thread");
        // Never stopped: were the thread hung, stopping would wait for it.
        std::mem::forget(stop);
        let layer = AccessLayer::new(batches, Form::Text, "hubbub")
            .with_filter(filter_fn(|metadata| metadata.target() == TARGET));
        tracing::subscriber::set_global_default(tracing_subscriber::registry().with(layer))
            .expect("the only global subscriber");
        tracing::info!(target: "hubbub::access", field = ?LogsWhenFormatted, "outer");
        let mut seen: Vec<String> = Vec::new();
        while seen.len() < 2 {
            seen.push(
                written
                    .recv_timeout(std::time::Duration::from_secs(5))
                    .expect("written"),
            );
        }
        assert!(seen[0].ends_with("hubbub::access: nested"), "{seen:?}");
        assert!(
            seen[1].ends_with("hubbub::access: outer field=formatted"),
            "{seen:?}"
        );
    }

    trait TruncMicros {
        fn trunc_subsecs_micros(self) -> Self;
    }

    impl TruncMicros for chrono::DateTime<chrono::Utc> {
        fn trunc_subsecs_micros(self) -> Self {
            chrono::SubsecRound::trunc_subsecs(self, 6)
        }
    }
}
