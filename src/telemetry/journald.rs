//! Events to journald in its native protocol, off the request path: the event is
//! encoded where it happens (a few hundred bytes) into the logging thread's buffers
//! (`super::batch`), and that thread sends one datagram per event to the journal
//! socket. Fields are what `tracing-journald` wrote before: `PRIORITY`, `TARGET`,
//! `CODE_FILE`, `CODE_LINE`, `SYSLOG_IDENTIFIER`, `MESSAGE` and each event field as
//! `F_<NAME>`.

use std::fmt::{self, Write as _};
use std::io::{self, IoSlice, Write};
use std::mem::MaybeUninit;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};

use rustix::fs::{MemfdFlags, SealFlags};
use rustix::io::Errno;
use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::{Context, Layer};

const SOCKET: &str = "/run/systemd/journal/socket";

/// The journal socket as a writer: each `write` is one entry (one datagram).
pub struct JournalSocket {
    socket: UnixDatagram,
    path: PathBuf,
}

impl JournalSocket {
    /// Fails when no journald listens (say, in a container without one).
    pub fn connect() -> io::Result<Self> {
        Self::connect_to(Path::new(SOCKET))
    }

    pub(super) fn connect_to(path: &Path) -> io::Result<Self> {
        let socket = Self {
            socket: Self::open(path)?,
            path: path.to_owned(),
        };
        // journald discards an empty datagram: this only proves someone listens.
        socket.socket.send(&[])?;
        Ok(socket)
    }

    fn open(path: &Path) -> io::Result<UnixDatagram> {
        let socket = UnixDatagram::unbound()?;
        socket.connect(path)?;
        Ok(socket)
    }

    fn send(&self, entry: &[u8]) -> io::Result<usize> {
        match self.socket.send(entry) {
            Err(error) if error.raw_os_error() == Some(Errno::MSGSIZE.raw_os_error()) => {
                self.send_as_memfd(entry)
            }
            sent => sent,
        }
    }

    /// An entry too large for one datagram (the socket's send buffer, about 200 KiB
    /// by default) goes the way journald's own client sends it: written to a sealed
    /// memfd whose descriptor is passed in an otherwise empty datagram.
    fn send_as_memfd(&self, entry: &[u8]) -> io::Result<usize> {
        let memfd = rustix::fs::memfd_create(
            "hubbub-journal-entry",
            MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
        )?;
        let mut file = std::fs::File::from(memfd);
        file.write_all(entry)?;
        // journald takes only a sealed memfd: its contents can no longer change.
        rustix::fs::fcntl_add_seals(
            &file,
            SealFlags::SHRINK | SealFlags::GROW | SealFlags::WRITE | SealFlags::SEAL,
        )?;
        let descriptors = [std::os::fd::AsFd::as_fd(&file)];
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        if !control.push(SendAncillaryMessage::ScmRights(&descriptors)) {
            return Err(io::Error::other("no room for the descriptor"));
        }
        rustix::net::sendmsg(
            &self.socket,
            &[IoSlice::new(&[])],
            &mut control,
            SendFlags::empty(),
        )?;
        Ok(entry.len())
    }
}

impl Write for JournalSocket {
    fn write(&mut self, entry: &[u8]) -> io::Result<usize> {
        match self.send(entry) {
            // The journal's socket was made anew (its socket unit restarted): the
            // connected one would refuse every entry until hubbub restarts.
            Err(error)
                if [Errno::CONNREFUSED, Errno::NOTCONN, Errno::NOENT]
                    .iter()
                    .any(|e| error.raw_os_error() == Some(e.raw_os_error())) =>
            {
                self.socket = Self::open(&self.path)?;
                self.send(entry)
            }
            sent => sent,
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Encodes every event as one journal entry for `writer`.
pub struct JournaldLayer<W> {
    writer: W,
    identifier: String,
}

impl<W> JournaldLayer<W> {
    pub fn new(writer: W, identifier: &str) -> Self {
        Self {
            writer,
            identifier: identifier.to_owned(),
        }
    }
}

impl<S, W> Layer<S> for JournaldLayer<W>
where
    S: Subscriber,
    W: for<'w> MakeWriter<'w> + 'static,
{
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        let mut entry = Vec::with_capacity(512);
        encode(&mut entry, event, &self.identifier);
        // Nothing sensible is left to do with a failure to log.
        let _ = self.writer.make_writer().write_all(&entry);
    }
}

/// Appends `event` to `entry` as one journal entry, with `SYSLOG_IDENTIFIER=identifier`.
pub fn encode(entry: &mut Vec<u8>, event: &Event<'_>, identifier: &str) {
    let metadata = event.metadata();
    let priority: &[u8] = match *metadata.level() {
        Level::ERROR => b"3",
        Level::WARN => b"4",
        Level::INFO => b"5",
        Level::DEBUG => b"6",
        Level::TRACE => b"7",
    };
    put(entry, "PRIORITY", priority);
    put(entry, "TARGET", metadata.target().as_bytes());
    if let Some(file) = metadata.file() {
        put(entry, "CODE_FILE", file.as_bytes());
    }
    if let Some(line) = metadata.line() {
        put(
            entry,
            "CODE_LINE",
            itoa::Buffer::new().format(line).as_bytes(),
        );
    }
    put(entry, "SYSLOG_IDENTIFIER", identifier.as_bytes());
    event.record(&mut Fields { entry });
}

struct Fields<'a> {
    entry: &'a mut Vec<u8>,
}

impl Fields<'_> {
    /// The field's name as journald takes it: `MESSAGE`, or `F_` and the name in
    /// capitals, with what journald refuses left out.
    fn put_name(&mut self, field: &Field) {
        if field.name() == "message" {
            self.entry.extend_from_slice(b"MESSAGE");
        } else {
            self.entry.extend_from_slice(b"F_");
            self.entry.extend(
                field
                    .name()
                    .bytes()
                    .map(|c| if c == b'.' { b'_' } else { c })
                    .skip_while(|c| *c == b'_')
                    .filter(|c| *c == b'_' || c.is_ascii_alphanumeric())
                    .map(|c| c.to_ascii_uppercase()),
            );
        }
    }
}

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put_name(field);
        put_value(self.entry, value.as_bytes());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.put_name(field);
        // The value is formatted in place; its length is filled in afterwards.
        self.entry.push(b'\n');
        let at = self.entry.len();
        self.entry.extend_from_slice(&[0; 8]);
        let _ = write!(Utf8Sink(self.entry), "{value:?}");
        let length = (self.entry.len() - at - 8) as u64;
        self.entry[at..at + 8].copy_from_slice(&length.to_le_bytes());
        self.entry.push(b'\n');
    }
}

/// `fmt::Write` into a byte buffer.
pub(super) struct Utf8Sink<'a>(pub(super) &'a mut Vec<u8>);

impl fmt::Write for Utf8Sink<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// `NAME`, newline, the value's length (64-bit little endian), the value, newline:
/// the protocol's form that allows any bytes, newlines included, in a value.
fn put(entry: &mut Vec<u8>, name: &str, value: &[u8]) {
    entry.extend_from_slice(name.as_bytes());
    put_value(entry, value);
}

fn put_value(entry: &mut Vec<u8>, value: &[u8]) {
    entry.push(b'\n');
    entry.extend_from_slice(&(value.len() as u64).to_le_bytes());
    entry.extend_from_slice(value);
    entry.push(b'\n');
}

#[cfg(test)]
pub(super) mod tests {
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    /// Collects each entry written.
    #[derive(Clone, Default)]
    struct Entries(Arc<Mutex<Vec<Vec<u8>>>>);

    impl Write for Entries {
        fn write(&mut self, entry: &[u8]) -> io::Result<usize> {
            self.0.lock().expect("lock").push(entry.to_vec());
            Ok(entry.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Entries {
        type Writer = Self;

        fn make_writer(&'a self) -> Self {
            self.clone()
        }
    }

    /// Reads `NAME\n<len><value>\n` fields back.
    pub(crate) fn fields(mut entry: &[u8]) -> Vec<(String, String)> {
        let mut fields = Vec::new();
        while let Some(newline) = entry.iter().position(|b| *b == b'\n') {
            let name = String::from_utf8_lossy(&entry[..newline]).into_owned();
            let length = u64::from_le_bytes(entry[newline + 1..newline + 9].try_into().expect("8"));
            let start = newline + 9;
            let end = start + usize::try_from(length).expect("length");
            fields.push((
                name,
                String::from_utf8_lossy(&entry[start..end]).into_owned(),
            ));
            assert_eq!(entry[end], b'\n');
            entry = &entry[end + 1..];
        }
        assert!(entry.is_empty());
        fields
    }

    /// The value of field `name` of an entry read back by `fields`.
    pub(crate) fn get(fields: &[(String, String)], name: &str) -> String {
        fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("no {name} in {fields:?}"))
    }

    /// What a journald socket receives: the datagram, or the sealed memfd's contents.
    pub(crate) fn receive(socket: &UnixDatagram) -> Vec<u8> {
        use std::io::{IoSliceMut, Read, Seek};
        use std::os::fd::OwnedFd;

        use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};

        let mut datagram = vec![0u8; 1024 * 1024];
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let received = rustix::net::recvmsg(
            socket,
            &mut [IoSliceMut::new(&mut datagram)],
            &mut control,
            RecvFlags::empty(),
        )
        .expect("recvmsg");
        let mut descriptors: Vec<OwnedFd> = Vec::new();
        for message in control.drain() {
            if let RecvAncillaryMessage::ScmRights(fds) = message {
                descriptors.extend(fds);
            }
        }
        match descriptors.pop() {
            None => {
                datagram.truncate(received.bytes);
                datagram
            }
            Some(fd) => {
                assert_eq!(received.bytes, 0, "a memfd comes in an empty datagram");
                let seals = rustix::fs::fcntl_get_seals(&fd).expect("seals");
                assert!(seals.contains(SealFlags::WRITE | SealFlags::SHRINK | SealFlags::GROW));
                let mut file = std::fs::File::from(fd);
                file.rewind().expect("rewind");
                let mut entry = Vec::new();
                file.read_to_end(&mut entry).expect("read");
                entry
            }
        }
    }

    #[test]
    fn an_entry_too_large_for_a_datagram_still_reaches_the_journal() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("socket");
        let journal = UnixDatagram::bind(&path).expect("bind");
        let mut socket = JournalSocket::connect_to(&path).expect("connect");
        assert!(receive(&journal).is_empty(), "the probe");

        let small = b"MESSAGE=hello\n".to_vec();
        socket.write_all(&small).expect("small entry");
        assert_eq!(receive(&journal), small);

        // Larger than a datagram may be with the default send buffer
        // (net.core.wmem_default, 208 KiB).
        let mut large = Vec::new();
        put(&mut large, "MESSAGE", &vec![b'x'; 512 * 1024]);
        socket.write_all(&large).expect("large entry");
        assert!(receive(&journal) == large, "the large entry arrives whole");
    }

    #[test]
    fn a_journal_socket_made_anew_is_reconnected() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("socket");
        let journal = UnixDatagram::bind(&path).expect("bind");
        let mut socket = JournalSocket::connect_to(&path).expect("connect");
        assert!(receive(&journal).is_empty(), "the probe");
        drop(journal);
        std::fs::remove_file(&path).expect("remove");
        let journal = UnixDatagram::bind(&path).expect("bind again");
        let entry = b"MESSAGE=after the restart\n".to_vec();
        socket.write_all(&entry).expect("entry");
        assert_eq!(receive(&journal), entry);
    }

    #[test]
    fn one_entry_per_event_with_the_journal_fields() {
        let entries = Entries::default();
        let subscriber =
            tracing_subscriber::registry().with(JournaldLayer::new(entries.clone(), "hubbub"));
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(
                target: "hubbub::access",
                request_id = "r-1",
                route = "/api/chat/{channel}/messages",
                status = 201u16,
                latency_ms = 1.5,
                "request"
            );
            tracing::warn!(error = "two\nlines", "something failed");
        });
        let entries = entries.0.lock().expect("lock");
        assert_eq!(entries.len(), 2);
        let access = fields(&entries[0]);
        assert_eq!(get(&access, "PRIORITY"), "5");
        assert_eq!(get(&access, "TARGET"), "hubbub::access");
        assert_eq!(get(&access, "SYSLOG_IDENTIFIER"), "hubbub");
        assert_eq!(get(&access, "MESSAGE"), "request");
        assert_eq!(get(&access, "F_REQUEST_ID"), "r-1");
        assert_eq!(get(&access, "F_ROUTE"), "/api/chat/{channel}/messages");
        assert_eq!(get(&access, "F_STATUS"), "201");
        assert_eq!(get(&access, "F_LATENCY_MS"), "1.5");
        let warning = fields(&entries[1]);
        assert_eq!(get(&warning, "PRIORITY"), "4");
        assert_eq!(get(&warning, "F_ERROR"), "two\nlines");
    }
}
