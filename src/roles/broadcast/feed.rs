//! One client's SSE body: `retry`, then (when resuming) the events after its
//! `Last-Event-ID` from the database, then the stream's shared frames it has not
//! seen, with a keep-alive comment whenever it is idle. No task and no queue per
//! client: the body itself reads the stream's ring of frames when hyper can write,
//! until it has caught up; then (HTTP/1.1) it joins the stream's members, which the
//! stream's task writes to itself (`direct`), and only writes out what their
//! sockets did not take at once.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::{Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use std::future::Future;

use bytes::{Bytes, BytesMut};
use futures_util::Stream;
use prometheus::{IntCounter, IntGauge};
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;

use super::direct::{Direct, Left};
use super::hub::{Subscription, frame};
use crate::http::server::WRITE_STALL_TIMEOUT;
use crate::http::wire::Wire;
use crate::storage::to_api_error;
use crate::streams::{StreamKey, Streams};

/// History is replayed in pages of this many events.
const RESUME_PAGE: u32 = 500;
const RETRY: &[u8] = b"retry:2000\n\n";
const KEEPALIVE: &[u8] = b":\n\n";

pub struct FeedMetrics {
    pub clients: IntGauge,
    pub events: IntCounter,
    pub slow_disconnects: IntCounter,
    pub catchups: IntCounter,
}

#[cfg(test)]
impl FeedMetrics {
    /// Unregistered metrics, for unit tests.
    pub(crate) fn unregistered() -> Self {
        Self {
            clients: IntGauge::new("clients", "clients").expect("gauge"),
            events: IntCounter::new("events", "events").expect("counter"),
            slow_disconnects: IntCounter::new("slow", "slow").expect("counter"),
            catchups: IntCounter::new("catchups", "catchups").expect("counter"),
        }
    }
}

enum Phase {
    Start,
    History,
    Live,
    /// A member of the stream: its task writes to the socket.
    Member,
    Done,
}

pub struct Feed {
    phase: Phase,
    subscription: Subscription,
    key: StreamKey,
    streams: Streams,
    /// The last id sent; live frames at or below it are skipped.
    last_sent: i64,
    keepalive: Duration,
    /// Fires at the latest when a keep-alive is due; when it fires early (something
    /// was written since it was set), it is set again then.
    idle: Pin<Box<Sleep>>,
    /// When something was last written: a write only notes the time, it does not
    /// move the timer (that took the runtime's timer lock once per event per
    /// client, among the broadcast role's top entries in `perf` at 10,000 clients).
    last_write: Instant,
    /// Watched only while reading the database; live, the end of the stream's ring
    /// ends the body (the hub closes every stream when the process stops).
    shutdown: CancellationToken,
    metrics: Arc<FeedMetrics>,
    /// The connection's socket, if the response is chunked HTTP/1.1: then the body
    /// joins its stream's members once it has caught up.
    wire: Option<Arc<Wire>>,
    direct: Option<Arc<Direct>>,
    /// While a member's socket takes nothing: what it had written, and since when.
    stall: Option<(u64, Pin<Box<Sleep>>)>,
    stall_limit: Duration,
    /// The response must be cut off, not ended (see [`Left::Abort`]).
    aborted: bool,
    /// Joining took frames off the ring that the client did not get (it lagged,
    /// or fell behind during the catch-up): the ring cannot give them again.
    ring_short: bool,
}

impl Feed {
    pub fn new(
        subscription: Subscription,
        key: StreamKey,
        streams: Streams,
        resume_after: Option<i64>,
        keepalive: Duration,
        shutdown: CancellationToken,
        metrics: Arc<FeedMetrics>,
    ) -> Self {
        metrics.clients.inc();
        Self {
            phase: Phase::Start,
            subscription,
            key,
            streams,
            last_sent: resume_after.unwrap_or(-1),
            keepalive,
            idle: Box::pin(tokio::time::sleep(keepalive)),
            last_write: Instant::now(),
            shutdown,
            metrics,
            wire: None,
            direct: None,
            stall: None,
            stall_limit: WRITE_STALL_TIMEOUT,
            aborted: false,
            ring_short: false,
        }
    }

    #[cfg(test)]
    pub fn with_stall_limit(mut self, limit: Duration) -> Self {
        self.stall_limit = limit;
        self
    }

    /// The connection's socket (chunked HTTP/1.1 only): the body joins its
    /// stream's members once it has caught up.
    #[must_use]
    pub fn with_wire(mut self, wire: Option<Arc<Wire>>) -> Self {
        self.wire = wire;
        self
    }

    /// The next chunk to write, `None` to end the stream.
    async fn next_chunk(&mut self) -> Option<Bytes> {
        loop {
            match self.phase {
                Phase::Start => {
                    self.phase = if self.last_sent >= 0 {
                        Phase::History
                    } else {
                        Phase::Live
                    };
                    return Some(Bytes::from_static(RETRY));
                }
                Phase::History => {
                    // Only once the stream knows its position: then history and the
                    // live frames overlap rather than leave a gap.
                    tokio::select! {
                        biased;
                        () = self.shutdown.cancelled() => return None,
                        () = self.subscription.ready() => {}
                        () = &mut self.idle => match self.keepalive_due() {
                            Some(chunk) => return Some(chunk),
                            None => continue,
                        },
                    }
                    // Boxed: the query's state lives only while it runs, not in every
                    // connection's body for its whole life.
                    let page =
                        match Box::pin(self.streams.after(&self.key, self.last_sent, RESUME_PAGE))
                            .await
                        {
                            Ok(page) => page,
                            Err(error) => {
                                // The client reconnects and tries again; the log says why.
                                let _ = to_api_error(error, "reading history for a resume");
                                self.phase = Phase::Done;
                                return None;
                            }
                        };
                    if page.len() < RESUME_PAGE as usize {
                        self.phase = Phase::Live;
                    }
                    if page.is_empty() {
                        continue;
                    }
                    let mut chunk = BytesMut::new();
                    for event in &page {
                        chunk.extend_from_slice(&frame(event));
                        self.last_sent = event.id;
                    }
                    self.metrics.events.inc_by(page.len() as u64);
                    return Some(self.sent(chunk.freeze()));
                }
                Phase::Live => {
                    let received = tokio::select! {
                        biased;
                        received = self.subscription.recv() => received,
                        () = &mut self.idle => match self.keepalive_due() {
                            Some(chunk) => return Some(chunk),
                            None => continue,
                        },
                        // Caught up, and hyper wrote out all it was given: from now
                        // on the stream's task writes to the socket.
                        () = flushed(self.wire.as_deref()), if self.wire.is_some() => {
                            self.join();
                            continue;
                        }
                    };
                    match received {
                        Ok(frame) => {
                            if frame.id <= self.last_sent {
                                continue;
                            }
                            self.last_sent = frame.id;
                            self.metrics.events.inc();
                            return Some(self.sent(frame.bytes.clone()));
                        }
                        // Fell more than the ring behind (a burst: the backlog after a
                        // broker outage, a backfill): read what it missed from the
                        // database, as a resume would, without making it reconnect.
                        Err(RecvError::Lagged(skipped)) if self.last_sent >= 0 => {
                            self.metrics.catchups.inc();
                            tracing::debug!(
                                skipped,
                                "SSE client fell behind; it catches up from the database"
                            );
                            self.phase = Phase::History;
                        }
                        // Behind before its first event: it has no position to catch
                        // up from, so it reconnects (EventSource does) and resumes.
                        Err(RecvError::Lagged(skipped)) => {
                            self.metrics.slow_disconnects.inc();
                            tracing::info!(skipped, "SSE client fell behind; disconnecting it");
                            self.phase = Phase::Done;
                        }
                        Err(RecvError::Closed) => self.phase = Phase::Done,
                    }
                }
                Phase::Member => {
                    let Some(direct) = self.direct.clone() else {
                        self.phase = Phase::Live;
                        continue;
                    };
                    let left = std::future::poll_fn(|cx| self.poll_member(&direct, cx)).await;
                    self.subscription.members().leave(&direct);
                    self.direct = None;
                    self.last_write = Instant::now();
                    match left {
                        // Catches up like any client: from the ring, which still
                        // holds what came since it joined unless that is more than
                        // the ring holds (then from the database).
                        Left::Behind { last_sent } => {
                            self.last_sent = last_sent;
                            self.phase = if !std::mem::take(&mut self.ring_short) {
                                Phase::Live
                            } else if last_sent >= 0 {
                                self.metrics.catchups.inc();
                                Phase::History
                            } else {
                                // No position to read the database from: it
                                // reconnects and resumes, as in `Live`.
                                self.metrics.slow_disconnects.inc();
                                Phase::Done
                            };
                        }
                        Left::End => self.phase = Phase::Done,
                        Left::Abort => {
                            self.aborted = true;
                            self.phase = Phase::Done;
                        }
                    }
                }
                Phase::Done => return None,
            }
        }
    }

    /// Joins the stream's members, given what the ring holds beyond `last_sent`.
    fn join(&mut self) {
        let Some(wire) = self.wire.clone() else {
            return;
        };
        let members = self.subscription.members();
        let subscription = &mut self.subscription;
        let mut sent = 0;
        let mut ring_short = false;
        let direct = members.join(wire, self.last_sent, |catchup| {
            loop {
                match subscription.try_recv() {
                    Ok(frame) => match catchup.offer(frame.id, &frame.chunk) {
                        Some(written) => sent += u64::from(written),
                        None => {
                            ring_short = true;
                            return;
                        }
                    },
                    Err(TryRecvError::Empty) => return,
                    Err(TryRecvError::Lagged(_)) => {
                        ring_short = true;
                        return catchup.behind();
                    }
                    Err(TryRecvError::Closed) => return catchup.end(),
                }
            }
        });
        self.metrics.events.inc_by(sent);
        self.ring_short = ring_short;
        self.direct = Some(direct);
        self.phase = Phase::Member;
    }

    /// A member's body: writes out what its socket did not take at once; cuts the
    /// connection off when the socket takes nothing for [`WRITE_STALL_TIMEOUT`].
    fn poll_member(&mut self, direct: &Direct, cx: &mut Context<'_>) -> Poll<Left> {
        if let Poll::Ready(left) = direct.poll(cx) {
            self.stall = None;
            return Poll::Ready(left);
        }
        let (drained, waiting) = direct.progress();
        if !waiting {
            self.stall = None;
            return Poll::Pending;
        }
        let deadline = Instant::now() + self.stall_limit;
        let stall = match &mut self.stall {
            Some((seen, stall)) if *seen == drained => stall,
            Some((seen, stall)) => {
                *seen = drained;
                stall.as_mut().reset(deadline);
                stall
            }
            None => {
                let timer = Box::pin(tokio::time::sleep_until(deadline));
                &mut self.stall.insert((drained, timer)).1
            }
        };
        match stall.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Left::Abort),
            Poll::Pending => Poll::Pending,
        }
    }

    fn sent(&mut self, chunk: Bytes) -> Bytes {
        self.last_write = Instant::now();
        chunk
    }

    /// The timer fired: a keep-alive if nothing was written for `keepalive`, else
    /// the timer set for when that will be.
    fn keepalive_due(&mut self) -> Option<Bytes> {
        let now = Instant::now();
        let due = self.last_write + self.keepalive;
        if now < due {
            self.idle.as_mut().reset(due);
            return None;
        }
        self.last_write = now;
        self.idle.as_mut().reset(now + self.keepalive);
        Some(Bytes::from_static(KEEPALIVE))
    }
}

impl Drop for Feed {
    fn drop(&mut self) {
        if let Some(direct) = self.direct.take() {
            self.subscription.members().leave(&direct);
        }
        self.metrics.clients.dec();
    }
}

/// Ready once hyper has written out all it was given (pending without a socket).
async fn flushed(wire: Option<&Wire>) {
    std::future::poll_fn(|cx| match wire {
        Some(wire) => wire.poll_flushed(cx),
        None => Poll::Pending,
    })
    .await;
}

/// The feed as a body stream. An error makes hyper cut the connection off
/// instead of ending the response.
pub fn body(feed: Feed) -> SyncStream<impl Stream<Item = Result<Bytes, io::Error>> + Send> {
    SyncStream(Mutex::new(Box::pin(futures_util::stream::unfold(
        feed,
        |mut feed| async move {
            let Some(chunk) = feed.next_chunk().await else {
                if std::mem::take(&mut feed.aborted) {
                    let cut =
                        io::Error::other("the client's socket failed or took nothing for too long");
                    return Some((Err(cut), feed));
                }
                return None;
            };
            if let Some(wire) = &feed.wire {
                wire.unflushed();
            }
            Some((Ok(chunk), feed))
        },
    ))))
}

/// warp wants a `Sync` body stream; a database read in flight is not `Sync`. The
/// body is only ever polled through `&mut`, so a mutex that is never contended
/// (`get_mut`, no locking) makes it so.
pub struct SyncStream<S>(Mutex<Pin<Box<S>>>);

impl<S: Stream> Stream for SyncStream<S> {
    type Item = S::Item;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        self.get_mut()
            .0
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .as_mut()
            .poll_next(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Channel, MessageText, UserName};
    use crate::roles::broadcast::hub::{Hub, HubMetrics, Refused, Subscription};
    use crate::roles::broadcast::test_support::store_and_offer;
    use crate::storage::Database;
    use crate::streams::StreamEvent;
    use crate::streams::chat::MessageStore;

    fn ids(chunk: &[u8]) -> Vec<i64> {
        String::from_utf8_lossy(chunk)
            .lines()
            .filter_map(|line| line.strip_prefix("id:"))
            .map(|id| id.parse().expect("id"))
            .collect()
    }

    /// A burst of more events than the ring holds (the backlog after a broker
    /// outage, a backfill) while a client reads nothing: the client then gets
    /// every event, in order, from the database and the ring, without being cut
    /// off (before, it was disconnected and had to reconnect and resume).
    #[tokio::test]
    async fn a_client_behind_by_more_than_the_ring_catches_up_connected() {
        let (_state, db) = Database::scratch().await;
        db.migrate().await.expect("migrate");
        let streams = Streams::new(db.clone());
        let hub = Hub::new(
            streams.clone(),
            HubMetrics::unregistered(),
            1000,
            Duration::from_secs(3600),
            CancellationToken::new(),
        );
        let store = MessageStore::new(db);
        let channel = Channel::parse("burst").expect("channel");
        let key = StreamKey::Chat(channel.clone());
        let post = async || {
            let message = store
                .insert(
                    &channel,
                    &UserName::parse("u").expect("user"),
                    &MessageText::parse("m").expect("text"),
                )
                .await
                .expect("insert");
            StreamEvent::encode(&message).expect("encode")
        };
        let metrics = Arc::new(FeedMetrics::unregistered());
        let mut subscription = hub.subscribe(&key).expect("subscribe");
        subscription.ready().await;
        let mut feed = Feed::new(
            subscription,
            key.clone(),
            streams,
            None,
            Duration::from_secs(3600),
            CancellationToken::new(),
            metrics.clone(),
        );
        assert_eq!(feed.next_chunk().await.as_deref(), Some(RETRY));
        let first = post().await;
        hub.offer(&key, first.clone());
        let chunk = feed.next_chunk().await.expect("the first event");
        assert_eq!(ids(&chunk), vec![first.id]);

        // A client that keeps up, to know when the whole burst went out.
        let mut watcher = hub.subscribe(&key).expect("subscribe");
        let mut burst = Vec::new();
        for _ in 0..CLIENT_BURST {
            let event = post().await;
            burst.push(event.id);
            hub.offer(&key, event);
            let frame = tokio::time::timeout(Duration::from_secs(10), watcher.recv())
                .await
                .expect("in time")
                .expect("frame");
            assert_eq!(Some(frame.id), burst.last().copied());
        }
        let mut got = Vec::new();
        while got.len() < burst.len() {
            let chunk = tokio::time::timeout(Duration::from_secs(10), feed.next_chunk())
                .await
                .expect("in time")
                .expect("the client stays connected");
            got.extend(ids(&chunk));
        }
        assert_eq!(got, burst, "every event once, in order");
        assert_eq!(metrics.catchups.get(), 1);
        assert_eq!(metrics.slow_disconnects.get(), 0);
    }

    /// When the process stops, a live client's body ends (its stream is closed by
    /// the hub; the body no longer watches the shutdown itself), and nobody new
    /// joins a stream.
    #[tokio::test]
    async fn live_bodies_end_when_the_process_stops() {
        let (_state, db) = Database::scratch().await;
        db.migrate().await.expect("migrate");
        let streams = Streams::new(db);
        let shutdown = CancellationToken::new();
        let active = IntGauge::new("streams", "streams").expect("gauge");
        let hub = Hub::new(
            streams.clone(),
            HubMetrics {
                streams: active.clone(),
                gaps: IntCounter::new("gaps", "gaps").expect("counter"),
                backfills: IntCounter::new("backfills", "backfills").expect("counter"),
                sent: IntCounter::new("sent", "sent").expect("counter"),
            },
            1000,
            Duration::from_secs(3600),
            shutdown.clone(),
        );
        let metrics = Arc::new(FeedMetrics::unregistered());
        let key = StreamKey::Chat(Channel::parse("stopping").expect("channel"));
        let mut feeds = Vec::new();
        for _ in 0..2 {
            let mut subscription = hub.subscribe(&key).expect("subscribe");
            subscription.ready().await;
            let mut feed = Feed::new(
                subscription,
                key.clone(),
                streams.clone(),
                None,
                Duration::from_secs(3600),
                shutdown.clone(),
                metrics.clone(),
            );
            assert_eq!(feed.next_chunk().await.as_deref(), Some(RETRY));
            feeds.push(feed);
        }
        assert_eq!(active.get(), 1);
        shutdown.cancel();
        for mut feed in feeds {
            let end = tokio::time::timeout(Duration::from_secs(10), feed.next_chunk())
                .await
                .expect("the body ends when the process stops");
            assert!(end.is_none());
        }
        assert_eq!(active.get(), 0);
        assert!(matches!(hub.subscribe(&key), Err(Refused::ShuttingDown)));
    }

    /// A keep-alive goes out after `keepalive` without a write, counted from the
    /// last write (not from the timer's first setting).
    #[tokio::test]
    async fn a_keepalive_follows_the_last_write_by_the_interval() {
        let (_state, db) = Database::scratch().await;
        db.migrate().await.expect("migrate");
        let streams = Streams::new(db.clone());
        let hub = Hub::new(
            streams.clone(),
            HubMetrics::unregistered(),
            1000,
            Duration::from_secs(3600),
            CancellationToken::new(),
        );
        let metrics = Arc::new(FeedMetrics::unregistered());
        let channel = Channel::parse("quiet").expect("channel");
        let key = StreamKey::Chat(channel.clone());
        let mut subscription = hub.subscribe(&key).expect("subscribe");
        subscription.ready().await;
        let interval = Duration::from_millis(300);
        let mut feed = Feed::new(
            subscription,
            key.clone(),
            streams,
            None,
            interval,
            CancellationToken::new(),
            metrics,
        );
        assert_eq!(feed.next_chunk().await.as_deref(), Some(RETRY));
        tokio::time::sleep(interval / 2).await;
        let message = MessageStore::new(db)
            .insert(
                &channel,
                &UserName::parse("u").expect("user"),
                &MessageText::parse("m").expect("text"),
            )
            .await
            .expect("insert");
        hub.offer(&key, StreamEvent::encode(&message).expect("encode"));
        let event = feed.next_chunk().await.expect("the event");
        let written = Instant::now();
        assert_eq!(ids(&event), vec![message.id]);
        let next = tokio::time::timeout(Duration::from_secs(10), feed.next_chunk())
            .await
            .expect("a keep-alive in time")
            .expect("still connected");
        assert_eq!(&next[..], KEEPALIVE);
        assert!(
            written.elapsed() >= interval - Duration::from_millis(10),
            "the keep-alive came {:?} after the event",
            written.elapsed()
        );
    }

    /// A client joins the members with an event in its ring that it has not
    /// sent yet (it arrived between its last read and its joining): the join
    /// writes it, and the stream's writers do not write it again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn joining_sends_what_the_ring_holds_once() {
        let mut joining = Joining::start(false).await;
        let early = joining.post(10).await;
        // The stream's sweepers are done with it (they write as soon as it is in
        // the ring, and find no member).
        tokio::time::sleep(Duration::from_millis(100)).await;
        joining.feed.join();
        assert!(matches!(joining.feed.phase, Phase::Member));
        let late = joining.post(10).await;
        assert_eq!(joining.read_until(late).await, vec![early, late]);
    }

    /// A feed on one end of a real socket (with small buffers when `small`),
    /// caught up to one event and about to join, with a watcher that sees what the
    /// stream sends.
    struct Joining {
        feed: Feed,
        client: tokio::net::TcpStream,
        hub: Hub,
        key: StreamKey,
        store: MessageStore,
        channel: Channel,
        watcher: Subscription,
        _state: tempfile::TempDir,
    }

    impl Joining {
        async fn start(small: bool) -> Self {
            let (state, db) = Database::scratch().await;
            db.migrate().await.expect("migrate");
            let streams = Streams::new(db.clone());
            let hub = Hub::new(
                streams.clone(),
                HubMetrics::unregistered(),
                1000,
                Duration::from_secs(3600),
                CancellationToken::new(),
            );
            let channel = Channel::parse("joining").expect("channel");
            let key = StreamKey::Chat(channel.clone());
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let socket = tokio::net::TcpSocket::new_v4().expect("socket");
            if small {
                socket.set_recv_buffer_size(4096).expect("receive buffer");
            }
            let client = socket
                .connect(listener.local_addr().expect("address"))
                .await
                .expect("connect");
            let (server, _) = listener.accept().await.expect("accept");
            if small {
                socket2::SockRef::from(&server)
                    .set_send_buffer_size(4096)
                    .expect("send buffer");
            }
            let (_io, wire) = Wire::new(server);
            let mut subscription = hub.subscribe(&key).expect("subscribe");
            subscription.ready().await;
            let watcher = hub.subscribe(&key).expect("subscribe");
            let feed = Feed::new(
                subscription,
                key.clone(),
                streams,
                None,
                Duration::from_secs(3600),
                CancellationToken::new(),
                Arc::new(FeedMetrics::unregistered()),
            )
            .with_wire(Some(wire));
            let mut joining = Self {
                feed,
                client,
                hub,
                key,
                store: MessageStore::new(db),
                channel,
                watcher,
                _state: state,
            };
            assert_eq!(joining.feed.next_chunk().await.as_deref(), Some(RETRY));
            let first = joining.post(10).await;
            let chunk = joining.feed.next_chunk().await.expect("the first event");
            assert_eq!(ids(&chunk), vec![first]);
            joining
        }

        /// Stores and offers an event of `size` characters, once it is in the ring.
        async fn post(&mut self, size: usize) -> i64 {
            let id = store_and_offer(&self.store, &self.channel, &self.hub, &self.key, size).await;
            let frame = self.watcher.recv().await.expect("in the ring");
            assert_eq!(frame.id, id);
            id
        }

        /// Joins, then collects what reaches the client until `last`.
        async fn join_and_read_until(mut self, last: i64) -> Vec<i64> {
            self.feed.join();
            self.read_until(last).await
        }

        /// Collects what reaches the client, written by the stream or by the
        /// body, until `last`.
        async fn read_until(mut self, last: i64) -> Vec<i64> {
            use tokio::io::AsyncReadExt;
            let mut client = self.client;
            let reader = tokio::spawn(async move {
                let mut raw = Vec::new();
                let mut buffer = [0u8; 65536];
                while let Ok(Ok(n)) =
                    tokio::time::timeout(Duration::from_secs(2), client.read(&mut buffer)).await
                {
                    if n == 0 {
                        break;
                    }
                    raw.extend_from_slice(&buffer[..n]);
                }
                ids(&raw)
            });
            let mut from_body = Vec::new();
            while from_body.last() != Some(&last) {
                match tokio::time::timeout(Duration::from_secs(2), self.feed.next_chunk()).await {
                    Ok(Some(chunk)) => from_body.extend(ids(&chunk)),
                    _ => break,
                }
            }
            let mut got = reader.await.expect("reader");
            got.extend(from_body);
            got
        }
    }

    /// More events arrived between the body's last read of the ring and its
    /// joining than the ring holds: the client reads them from the database
    /// instead of skipping them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_client_whose_ring_overflowed_as_it_joined_loses_nothing() {
        let mut joining = Joining::start(false).await;
        let mut burst = Vec::new();
        for _ in 0..CLIENT_BURST {
            burst.push(joining.post(10).await);
        }
        let last = *burst.last().expect("burst");
        assert_eq!(joining.join_and_read_until(last).await, burst);
    }

    /// The events waiting in the ring as a client joins are more than its socket
    /// and backlog take: it gets the rest from the database, nothing is lost.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_client_that_falls_behind_while_joining_loses_nothing() {
        let mut joining = Joining::start(true).await;
        let mut burst = Vec::new();
        for _ in 0..120 {
            burst.push(joining.post(1500).await);
        }
        let last = *burst.last().expect("burst");
        assert_eq!(joining.join_and_read_until(last).await, burst);
    }

    /// More than the ring holds.
    const CLIENT_BURST: usize = crate::roles::broadcast::hub::CLIENT_BUFFER + 200;
}
