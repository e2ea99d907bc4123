//! Fan-out inside one broadcast instance, one entry per active stream (a chat
//! channel or the buffs): created when its first client arrives, removed when its
//! last one leaves.
//!
//! Each active stream has a task that owns its order. It starts from the stream's
//! head in the database, then takes the stream's events from the bus and checks
//! each one's `seq`: the next one is framed once and shared by every client; an
//! older one is a duplicate and dropped; a newer one means events were lost on the
//! way (the broker dropped them, or this instance was not subscribed), so the task
//! reads what is missing from the database once, for all its clients, and carries
//! on. After a resubscription every active stream does the same. Clients stay
//! connected throughout.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use prometheus::{IntCounter, IntGauge};
use tokio::sync::{broadcast, mpsc, watch};
use tokio_util::sync::{CancellationToken, DropGuard};

use super::direct::{Members, Sweepers};
use crate::streams::{StreamEvent, StreamKey, Streams};

/// How far a client may fall behind before it is cut off (it then resumes from
/// history, so nothing is lost; others are never slowed down by it).
pub const CLIENT_BUFFER: usize = 1024;
/// Bus events queued for one stream's task (more, while it reads the database,
/// and it backfills from the database instead).
const INBOX: usize = 1024;
/// Backfill reads pages of this many events.
const BACKFILL_PAGE: u32 = 500;
const MAX_RETRY: Duration = Duration::from_secs(2);

/// One event, framed for SSE once, shared by every client of its stream.
#[derive(Debug)]
pub struct Frame {
    pub id: i64,
    /// The SSE event, for a body that hyper writes.
    pub bytes: Bytes,
    /// The same as one HTTP/1.1 chunk, for members (`bytes` is a slice of it).
    pub chunk: Bytes,
}

impl Frame {
    fn new(event: &StreamEvent) -> Self {
        let bytes = frame(event);
        let size = format!("{:X}\r\n", bytes.len());
        let mut chunk = Vec::with_capacity(size.len() + bytes.len() + 2);
        chunk.extend_from_slice(size.as_bytes());
        chunk.extend_from_slice(&bytes);
        chunk.extend_from_slice(b"\r\n");
        let chunk = Bytes::from(chunk);
        Self {
            id: event.id,
            bytes: chunk.slice(size.len()..size.len() + bytes.len()),
            chunk,
        }
    }
}

/// `event:message`, the JSON, the id: what EventSource parses.
pub fn frame(event: &StreamEvent) -> Bytes {
    let id = event.id.to_string();
    let mut bytes = Vec::with_capacity(event.json.len() + id.len() + 28);
    bytes.extend_from_slice(b"event:message\ndata:");
    bytes.extend_from_slice(&event.json);
    bytes.extend_from_slice(b"\nid:");
    bytes.extend_from_slice(id.as_bytes());
    bytes.extend_from_slice(b"\n\n");
    Bytes::from(bytes)
}

pub struct HubMetrics {
    pub streams: IntGauge,
    pub gaps: IntCounter,
    pub backfills: IntCounter,
    /// Events written to members by their stream's task (`hubbub_sse_events_sent_total`).
    pub sent: IntCounter,
}

#[cfg(test)]
impl HubMetrics {
    /// Unregistered metrics, for unit tests.
    pub(crate) fn unregistered() -> Self {
        Self {
            streams: IntGauge::new("streams", "streams").expect("gauge"),
            gaps: IntCounter::new("gaps", "gaps").expect("counter"),
            backfills: IntCounter::new("backfills", "backfills").expect("counter"),
            sent: IntCounter::new("sent", "sent").expect("counter"),
        }
    }
}

enum Input {
    Live(StreamEvent),
    Resync,
}

struct Entry {
    generation: u64,
    sender: broadcast::Sender<Arc<Frame>>,
    inbox: mpsc::Sender<Input>,
    /// Set when the inbox overflowed: the task backfills instead.
    resync: Arc<AtomicBool>,
    ready: watch::Receiver<bool>,
    members: Arc<Members>,
    /// Stops the stream's task when the entry goes, whatever the task is waiting
    /// for (a database that is down, say), so a stream nobody watches any more
    /// never lingers with its ring.
    _stop: DropGuard,
}

impl Entry {
    /// The task reads the stream from the database before its next event (the
    /// flag holds when the inbox is full).
    fn resync(&self) {
        self.resync.store(true, Ordering::Release);
        let _ = self.inbox.try_send(Input::Resync);
    }
}

struct Inner {
    entries: Mutex<HashMap<StreamKey, Entry>>,
    generations: AtomicU64,
    streams: Streams,
    metrics: HubMetrics,
    /// Active chat streams at most (the buffs stream is always allowed).
    max_streams: usize,
    /// A keep-alive goes to the members after this long without an event.
    keepalive: Duration,
    shutdown: CancellationToken,
}

/// Why a client cannot join a stream.
#[derive(Debug)]
pub enum Refused {
    /// A new stream was asked for while `max_streams` are active on this instance.
    TooManyStreams,
    /// The process is stopping.
    ShuttingDown,
}

#[derive(Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

/// A client's live feed; leaving the stream when dropped.
pub struct Subscription {
    receiver: Option<broadcast::Receiver<Arc<Frame>>>,
    ready: watch::Receiver<bool>,
    members: Arc<Members>,
    generation: u64,
    key: StreamKey,
    hub: Hub,
}

impl Hub {
    pub fn new(
        streams: Streams,
        metrics: HubMetrics,
        max_streams: usize,
        keepalive: Duration,
        shutdown: CancellationToken,
    ) -> Self {
        let hub = Self {
            inner: Arc::new(Inner {
                entries: Mutex::new(HashMap::new()),
                generations: AtomicU64::new(0),
                streams,
                metrics,
                max_streams,
                keepalive,
                shutdown: shutdown.clone(),
            }),
        };
        tokio::spawn(close_on_shutdown(Arc::downgrade(&hub.inner), shutdown));
        hub
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<StreamKey, Entry>> {
        self.inner
            .entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Joins the stream, starting it when it has no client here yet, unless
    /// `max_streams` are active already.
    pub fn subscribe(&self, key: &StreamKey) -> Result<Subscription, Refused> {
        let mut entries = self.entries();
        // Under the lock: `close_on_shutdown` clears the streams under it too, so no
        // stream opened here outlives it.
        if self.inner.shutdown.is_cancelled() {
            return Err(Refused::ShuttingDown);
        }
        // The buffs stream is one and always allowed; it does not count.
        let chats = entries.len() - usize::from(entries.contains_key(&StreamKey::Buffs));
        if *key != StreamKey::Buffs && !entries.contains_key(key) && chats >= self.inner.max_streams
        {
            return Err(Refused::TooManyStreams);
        }
        let entry = entries.entry(key.clone()).or_insert_with(|| {
            let (sender, _) = broadcast::channel(CLIENT_BUFFER);
            let (inbox, queue) = mpsc::channel(INBOX);
            let (ready_tx, ready) = watch::channel(false);
            let resync = Arc::new(AtomicBool::new(false));
            let generation = self.inner.generations.fetch_add(1, Ordering::Relaxed);
            let stop = self.inner.shutdown.child_token();
            let members = Arc::new(Members::default());
            self.inner.metrics.streams.inc();
            tokio::spawn(
                StreamTask {
                    key: key.clone(),
                    streams: self.inner.streams.clone(),
                    sender: sender.clone(),
                    sweepers: Sweepers::start(
                        &members,
                        self.inner.metrics.sent.clone(),
                        self.inner.keepalive,
                    ),
                    members: members.clone(),
                    resync: resync.clone(),
                    hub: self.clone(),
                    position: (0, 0),
                }
                .run(queue, ready_tx, stop.clone()),
            );
            Entry {
                generation,
                sender,
                inbox,
                resync,
                ready,
                members,
                _stop: stop.drop_guard(),
            }
        });
        Ok(Subscription {
            receiver: Some(entry.sender.subscribe()),
            ready: entry.ready.clone(),
            members: entry.members.clone(),
            generation: entry.generation,
            key: key.clone(),
            hub: self.clone(),
        })
    }

    /// An event from the bus, for the stream's task if the stream is active here.
    pub fn offer(&self, key: &StreamKey, event: StreamEvent) {
        let entries = self.entries();
        if let Some(entry) = entries.get(key)
            && entry.inbox.try_send(Input::Live(event)).is_err()
        {
            entry.resync.store(true, Ordering::Release);
        }
    }

    /// Events may have been missed (resubscribed, or the dispatcher fell behind the
    /// bus): every active stream reads what it missed from the database.
    pub fn resync_all(&self) {
        self.entries().values().for_each(Entry::resync);
    }

    /// An event of `key` came without its `seq` (a process of the previous release
    /// published it): the stream reads what is new from the database.
    pub fn resync(&self, key: &StreamKey) {
        if let Some(entry) = self.entries().get(key) {
            entry.resync();
        }
    }

    #[cfg(test)]
    pub fn active_streams(&self) -> usize {
        self.entries().len()
    }
}

impl Subscription {
    /// Resolves once the stream's task knows where the stream stands, so a resume
    /// read from history after this cannot fall between history and live.
    pub async fn ready(&mut self) {
        let _ = self.ready.wait_for(|ready| *ready).await;
    }

    pub async fn recv(&mut self) -> Result<Arc<Frame>, broadcast::error::RecvError> {
        match self.receiver.as_mut() {
            Some(receiver) => receiver.recv().await,
            None => Err(broadcast::error::RecvError::Closed),
        }
    }

    /// The next frame if one is there already.
    pub fn try_recv(&mut self) -> Result<Arc<Frame>, broadcast::error::TryRecvError> {
        match self.receiver.as_mut() {
            Some(receiver) => receiver.try_recv(),
            None => Err(broadcast::error::TryRecvError::Closed),
        }
    }

    pub fn members(&self) -> Arc<Members> {
        self.members.clone()
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut entries = self.hub.entries();
        // Our receiver goes under the lock, so two clients leaving at once cannot
        // both count the other and leave the stream behind.
        drop(self.receiver.take());
        let last = entries.get(&self.key).is_some_and(|entry| {
            entry.generation == self.generation && entry.sender.receiver_count() == 0
        });
        if last {
            // Dropping the entry's inbox sender ends the stream's task.
            entries.remove(&self.key);
            self.hub.inner.metrics.streams.dec();
        }
    }
}

/// When the process stops, every stream ends: its entry goes (stopping its task),
/// so both senders of its ring are gone and every client's body sees the end.
/// Clients' bodies thus never watch the shutdown themselves: with 10,000 of them on
/// one stream, each event made each of them lock the shutdown token's shared state
/// (`perf`: the token's lock and waiter list among the broadcast role's top entries).
async fn close_on_shutdown(inner: std::sync::Weak<Inner>, shutdown: CancellationToken) {
    shutdown.cancelled().await;
    let Some(inner) = inner.upgrade() else { return };
    let closed = {
        let mut entries = inner.entries.lock().unwrap_or_else(PoisonError::into_inner);
        let closed = entries.len();
        entries.clear();
        closed
    };
    inner.metrics.streams.sub(closed as i64);
}

struct StreamTask {
    key: StreamKey,
    streams: Streams,
    sender: broadcast::Sender<Arc<Frame>>,
    /// Clients written to by the stream's sweepers; ended when this task ends.
    members: Arc<Members>,
    /// Write each event to the members; they end when this task does.
    sweepers: Sweepers,
    resync: Arc<AtomicBool>,
    hub: Hub,
    /// Id and seq of the last event sent to the clients.
    position: (i64, i64),
}

impl StreamTask {
    /// `shutdown` fires when the process stops or the stream loses its last client.
    async fn run(
        mut self,
        mut inbox: mpsc::Receiver<Input>,
        ready: watch::Sender<bool>,
        shutdown: CancellationToken,
    ) {
        // Where the stream stands: what is older is in the database for any client
        // that resumes, what is newer comes through here.
        let mut retry = Duration::from_millis(50);
        loop {
            let head = tokio::select! {
                () = shutdown.cancelled() => return,
                head = self.streams.head(&self.key) => head,
            };
            match head {
                Ok(head) => {
                    self.position = head;
                    break;
                }
                Err(error) => {
                    tracing::warn!(%error, stream = ?self.key, "cannot read the stream's head; retrying");
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(retry) => {}
                    }
                    retry = (retry * 2).min(MAX_RETRY);
                }
            }
        }
        let _ = ready.send(true);
        loop {
            let input = tokio::select! {
                biased;
                () = shutdown.cancelled() => return,
                input = inbox.recv() => input,
            };
            let Some(input) = input else { return };
            if self.resync.swap(false, Ordering::AcqRel) && !self.backfill(&shutdown).await {
                return;
            }
            if let Input::Live(event) = input {
                let (_, seq) = self.position;
                if event.seq <= seq {
                    continue; // a duplicate (at-least-once delivery) or already backfilled
                }
                if event.seq > seq + 1 {
                    self.hub.inner.metrics.gaps.inc();
                    tracing::info!(stream = ?self.key, after = seq, got = event.seq, "gap in a stream; reading it back from the database");
                    if !self.backfill(&shutdown).await {
                        return;
                    }
                    if event.seq <= self.position.1 {
                        continue;
                    }
                }
                self.send(&event).await;
            }
        }
    }

    /// To the ring first, then to the members: a client joining takes what is in
    /// the ring with its members' list locked, so it gets every event once.
    async fn send(&mut self, event: &StreamEvent) {
        self.position = (event.id, event.seq);
        let frame = Arc::new(Frame::new(event));
        let _ = self.sender.send(frame.clone());
        // After the ring: see `Members::join`.
        self.sweepers.send(frame.id, frame.chunk.clone()).await;
    }

    /// Everything after the current position, from the database, in order.
    /// `false` when shutting down.
    async fn backfill(&mut self, shutdown: &CancellationToken) -> bool {
        self.hub.inner.metrics.backfills.inc();
        let mut retry = Duration::from_millis(50);
        // Read on by id, whatever the `seq`s say: a page of events that are all
        // behind the position (rows of an odd `seq`) must not be read again forever.
        let mut cursor = self.position.0;
        loop {
            let page = tokio::select! {
                () = shutdown.cancelled() => return false,
                page = self.streams.after(&self.key, cursor, BACKFILL_PAGE) => page,
            };
            match page {
                Ok(page) => {
                    let full = page.len() == BACKFILL_PAGE as usize;
                    for event in &page {
                        cursor = cursor.max(event.id);
                        if event.seq > self.position.1 {
                            self.send(event).await;
                        }
                    }
                    if !full {
                        return true;
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, stream = ?self.key, "backfill from the database failed; retrying");
                    tokio::select! {
                        () = shutdown.cancelled() => return false,
                        () = tokio::time::sleep(retry) => {}
                    }
                    retry = (retry * 2).min(MAX_RETRY);
                }
            }
        }
    }
}

impl Drop for StreamTask {
    fn drop(&mut self) {
        self.members.end_all();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Barrier;

    use sea_orm::ConnectionTrait;

    use super::*;
    use crate::domain::{Channel, MessageText, UserName};
    use crate::storage::Database;
    use crate::streams::chat::MessageStore;

    const WAIT: Duration = Duration::from_secs(10);

    struct Fixture {
        hub: Hub,
        db: Database,
        store: MessageStore,
        channel: Channel,
        gaps: IntCounter,
        _state: tempfile::TempDir,
    }

    async fn fixture() -> Fixture {
        fixture_with(1000).await
    }

    async fn fixture_with(max_streams: usize) -> Fixture {
        let (state, db) = Database::scratch().await;
        db.migrate().await.expect("migrate");
        let gaps = IntCounter::new("gaps", "gaps").expect("counter");
        let hub = Hub::new(
            Streams::new(db.clone()),
            HubMetrics {
                streams: IntGauge::new("streams", "streams").expect("gauge"),
                gaps: gaps.clone(),
                backfills: IntCounter::new("backfills", "backfills").expect("counter"),
                sent: IntCounter::new("sent", "sent").expect("counter"),
            },
            max_streams,
            Duration::from_secs(3600),
            CancellationToken::new(),
        );
        Fixture {
            hub,
            db: db.clone(),
            store: MessageStore::new(db),
            channel: Channel::parse("room").expect("channel"),
            gaps,
            _state: state,
        }
    }

    impl Fixture {
        fn key(&self) -> StreamKey {
            StreamKey::Chat(self.channel.clone())
        }

        async fn post(&self) -> StreamEvent {
            let message = self
                .store
                .insert(
                    &self.channel,
                    &UserName::parse("alice").expect("user"),
                    &MessageText::parse("hi").expect("text"),
                )
                .await
                .expect("insert");
            StreamEvent::encode(&message).expect("encode")
        }
    }

    async fn next_id(subscription: &mut Subscription) -> i64 {
        tokio::time::timeout(WAIT, subscription.recv())
            .await
            .expect("a frame in time")
            .expect("a frame")
            .id
    }

    #[tokio::test]
    async fn a_gap_is_read_back_from_the_database_once_and_in_order() {
        let f = fixture().await;
        for _ in 0..3 {
            f.post().await;
        }
        let mut client = f.hub.subscribe(&f.key()).expect("subscribe");
        client.ready().await;
        let missed: Vec<StreamEvent> = vec![f.post().await, f.post().await];
        let third = f.post().await;
        // The broker dropped the first two: the stream sees seq 6 after seq 3.
        f.hub.offer(&f.key(), third.clone());
        for event in missed.iter().chain([&third]) {
            assert_eq!(next_id(&mut client).await, event.id);
        }
        assert_eq!(f.gaps.get(), 1);
        // Late duplicates of what was backfilled are dropped.
        f.hub.offer(&f.key(), missed[0].clone());
        f.hub.offer(&f.key(), third.clone());
        let next = f.post().await;
        f.hub.offer(&f.key(), next.clone());
        assert_eq!(
            next_id(&mut client).await,
            next.id,
            "no duplicate before it"
        );
        // After a resubscription the stream catches up without any live event.
        let unseen = f.post().await;
        f.hub.resync_all();
        assert_eq!(next_id(&mut client).await, unseen.id);
        assert_eq!(f.gaps.get(), 1);
    }

    #[tokio::test]
    async fn a_frame_is_the_sse_event_of_its_json() {
        let event = StreamEvent {
            id: 42,
            seq: 7,
            json: Bytes::from_static(br#"{"id":42,"seq":7}"#),
        };
        assert_eq!(
            &frame(&event)[..],
            b"event:message\ndata:{\"id\":42,\"seq\":7}\nid:42\n\n"
        );
    }

    /// Clients of one stream leaving at the same moment, from several threads:
    /// the stream must go with them (it used to stay, with its ring, when each
    /// counted the other's receiver).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_leavers_never_leave_their_stream_behind() {
        let f = fixture().await;
        for round in 0..3000 {
            let clients: Vec<Subscription> = (0..4)
                .map(|_| f.hub.subscribe(&f.key()).expect("subscribe"))
                .collect();
            let barrier = Arc::new(Barrier::new(clients.len()));
            let threads: Vec<_> = clients
                .into_iter()
                .map(|subscription| {
                    let barrier = barrier.clone();
                    std::thread::spawn(move || {
                        barrier.wait();
                        drop(subscription);
                    })
                })
                .collect();
            for thread in threads {
                thread.join().expect("thread");
            }
            assert_eq!(
                f.hub.active_streams(),
                0,
                "round {round}: stream left behind"
            );
        }
    }

    /// A client asking for one channel after another (random names, say) cannot
    /// make the instance hold more than `max_streams` streams; the buffs stream and
    /// streams that are already active stay open to everyone.
    #[tokio::test]
    async fn active_streams_are_bounded() {
        let f = fixture_with(3).await;
        let key = |name: &str| StreamKey::Chat(Channel::parse(name).expect("channel"));
        let mut held: Vec<Subscription> = ["a", "b", "c"]
            .iter()
            .map(|name| f.hub.subscribe(&key(name)).expect("within the bound"))
            .collect();
        assert!(f.hub.subscribe(&key("d")).is_err(), "a fourth stream");
        held.push(f.hub.subscribe(&key("a")).expect("an active stream"));
        held.push(f.hub.subscribe(&StreamKey::Buffs).expect("the buffs"));
        assert_eq!(f.hub.active_streams(), 4);
        drop(held.remove(1)); // `b` has no client left
        held.push(f.hub.subscribe(&key("d")).expect("room again"));
    }

    /// A stream whose last client left while its task was still waiting for the
    /// database (down, or slow) must end with it: before, the task retried until
    /// the database came back, holding its ring, once per channel name asked for.
    #[tokio::test]
    async fn a_stream_left_while_the_database_fails_ends_its_task() {
        let f = fixture().await;
        f.db.connection()
            .execute_unprepared("DROP TABLE chat_messages")
            .await
            .expect("break the stream's reads");
        let baseline = Arc::strong_count(&f.hub.inner);
        let mut client = f.hub.subscribe(&f.key()).expect("subscribe");
        assert!(
            tokio::time::timeout(Duration::from_millis(300), client.ready())
                .await
                .is_err(),
            "the head cannot be read"
        );
        drop(client);
        assert_eq!(f.hub.active_streams(), 0);
        let deadline = tokio::time::Instant::now() + WAIT;
        while Arc::strong_count(&f.hub.inner) > baseline {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the stream's task still runs"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// During a rolling deployment the previous release's relay publishes events
    /// without a `seq`: they must still reach the clients (read back from the
    /// database), not be dropped as malformed until the next event of this release.
    #[tokio::test]
    async fn an_event_of_the_previous_release_reaches_the_clients() {
        let f = fixture().await;
        let (bus, bus_rx) = broadcast::channel(16);
        let (_resubscribed, resubscribed_rx) = broadcast::channel(1);
        let stop = CancellationToken::new();
        tokio::spawn(super::super::dispatch(
            bus_rx,
            resubscribed_rx,
            f.hub.clone(),
            stop.clone(),
        ));
        let mut client = f.hub.subscribe(&f.key()).expect("subscribe");
        client.ready().await;
        let event = f.post().await;
        // What the previous release published: the message without its seq.
        let mut old: serde_json::Value = serde_json::from_slice(&event.json).expect("json");
        old.as_object_mut().expect("object").remove("seq");
        bus.send(crate::bus::BusMessage {
            topic: f.key().topic(),
            payload: Bytes::from(serde_json::to_vec(&old).expect("json")),
        })
        .expect("dispatcher listens");
        assert_eq!(next_id(&mut client).await, event.id);
        stop.cancel();
    }
}
