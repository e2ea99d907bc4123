//! A connection's socket, shared between hyper and a response that writes its body
//! to the socket itself: the SSE fan-out writes each event once per client with one
//! system call from the stream's own loop, with no wake-up of the connection's task.
//!
//! hyper reads through [`WireIo`] and writes through the shared [`Wire`]. A body
//! that takes the socket over must only write once hyper has nothing left to write
//! ([`Wire::flushed`]) and must itself stay pending meanwhile, so the two never
//! interleave; when it ends, hyper writes the chunked body's end after it.

use std::io::{self, IoSlice};
use std::net::Shutdown;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

/// The write side of a connection, shared.
pub struct Wire {
    write: OwnedWriteHalf,
    /// Whether hyper has written out everything it was given: set when hyper flushes
    /// (it only flushes its own buffer empty), cleared by the body when it hands
    /// hyper a chunk.
    flushed: AtomicBool,
    /// The body waits for a flush: hyper's flush wakes the connection's task.
    awaiting_flush: AtomicBool,
}

/// The connection's socket as hyper uses it.
pub struct WireIo {
    read: OwnedReadHalf,
    wire: Arc<Wire>,
}

impl Wire {
    /// Splits `stream` into the hyper side and the shared write side.
    pub fn new(stream: TcpStream) -> (WireIo, Arc<Self>) {
        let (read, write) = stream.into_split();
        let wire = Arc::new(Self {
            write,
            flushed: AtomicBool::new(false),
            awaiting_flush: AtomicBool::new(false),
        });
        (
            WireIo {
                read,
                wire: wire.clone(),
            },
            wire,
        )
    }

    fn socket(&self) -> &TcpStream {
        self.write.as_ref()
    }

    /// The socket's descriptor, open for as long as this `Wire` is.
    pub fn raw_fd(&self) -> RawFd {
        self.socket().as_raw_fd()
    }

    /// Writes what the socket takes now, without waiting.
    pub fn try_write(&self, bytes: &[u8]) -> io::Result<usize> {
        self.socket().try_write(bytes)
    }

    /// Ready when the socket may take more.
    pub fn poll_write_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.socket().poll_write_ready(cx)
    }

    /// The body handed hyper a chunk: hyper has something to write again.
    pub fn unflushed(&self) {
        self.flushed.store(false, Ordering::Release);
    }

    /// Ready once hyper has written out everything it was handed. Must be polled from
    /// the connection's own task (the response body): hyper's flush wakes that task.
    pub fn poll_flushed(&self, _cx: &mut Context<'_>) -> Poll<()> {
        self.awaiting_flush.store(true, Ordering::Release);
        if self.flushed.load(Ordering::Acquire) {
            self.awaiting_flush.store(false, Ordering::Release);
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    fn poll_write_with(
        &self,
        cx: &mut Context<'_>,
        write: impl Fn(&TcpStream) -> io::Result<usize>,
    ) -> Poll<io::Result<usize>> {
        loop {
            std::task::ready!(self.socket().poll_write_ready(cx))?;
            match write(self.socket()) {
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                done => return Poll::Ready(done),
            }
        }
    }
}

impl AsyncRead for WireIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().read).poll_read(cx, buf)
    }
}

impl AsyncWrite for WireIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.wire
            .poll_write_with(cx, |socket| socket.try_write(buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.wire
            .poll_write_with(cx, |socket| socket.try_write_vectored(bufs))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // hyper flushes its own buffer first and calls this only once it is empty.
        self.wire.flushed.store(true, Ordering::Release);
        if self.wire.awaiting_flush.swap(false, Ordering::AcqRel) {
            cx.waker().wake_by_ref();
        }
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let socket = socket2::SockRef::from(self.wire.socket());
        Poll::Ready(match socket.shutdown(Shutdown::Write) {
            Err(error) if error.kind() == io::ErrorKind::NotConnected => Ok(()),
            done => done,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    async fn pair() -> (WireIo, Arc<Wire>, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let client = TcpStream::connect(listener.local_addr().expect("addr"))
            .await
            .expect("connect");
        let (server, _) = listener.accept().await.expect("accept");
        let (io, wire) = Wire::new(server);
        (io, wire, client)
    }

    /// What hyper writes and what the body writes itself arrive in the order they
    /// were written, and hyper's shutdown ends the stream.
    #[tokio::test]
    async fn both_writers_reach_the_peer_in_order_and_shutdown_ends_it() {
        let (mut io, wire, mut client) = pair().await;
        io.write_all(b"head;").await.expect("hyper writes");
        assert_eq!(wire.try_write(b"direct;").expect("direct"), 7);
        io.write_all(b"end").await.expect("hyper writes");
        io.shutdown().await.expect("shutdown");
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.expect("read");
        assert_eq!(got, b"head;direct;end");
    }

    /// The flush flag follows hyper's flushes and the body's hand-overs.
    #[tokio::test]
    async fn flushed_is_set_by_hypers_flush_and_cleared_by_a_hand_over() {
        let (mut io, wire, _client) = pair().await;
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(wire.poll_flushed(&mut cx).is_pending());
        io.flush().await.expect("flush");
        assert!(wire.poll_flushed(&mut cx).is_ready());
        wire.unflushed();
        assert!(wire.poll_flushed(&mut cx).is_pending());
        io.flush().await.expect("flush");
        assert!(wire.poll_flushed(&mut cx).is_ready());
    }
}
