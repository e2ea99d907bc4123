//! Clients a stream's task writes to itself. A client that has caught up joins its
//! stream's members; from then on each event is written to its socket by the
//! stream's task, in one loop over the members: one system call per client, no
//! task woken, nothing allocated. A client whose socket takes less than a whole
//! event keeps the rest in a small backlog that its own body writes out when the
//! socket can take it; one that falls further behind than that leaves the members
//! and catches up from the ring and the database, connected, as a new client would.

use std::collections::VecDeque;
use std::io;
use std::ops::Range;
use std::os::fd::{BorrowedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Buf, Bytes};
use prometheus::IntCounter;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::http::wire::Wire;

/// A member's unwritten bytes at most; past that it leaves the members and catches
/// up like a new client (nothing is lost, others never wait for it).
pub const BACKLOG_LIMIT: usize = 64 * 1024;
/// Members are kept in this many lists, each with its own lock, so a client
/// joining waits for one list's write, not the whole stream's.
const SHARDS: usize = 16;
/// Sweepers per stream at most (one per runtime worker up to this): beyond a few
/// cores, more would cost each small stream a wake-up per core per event.
const MAX_SWEEPERS: usize = 4;
/// Events a sweeper may be behind its stream's task; it takes all that wait at once.
const SWEEP_QUEUE: usize = 256;
/// `:` and a blank line, as one chunk.
static KEEPALIVE_CHUNK: Bytes = Bytes::from_static(b"3\r\n:\n\n\r\n");

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Status {
    Member,
    /// Fell more than [`BACKLOG_LIMIT`] behind: catches up, then may join again.
    Behind,
    /// Its socket failed: the response is cut off.
    Broken,
    /// The stream ended (the process stops): the body writes its backlog, then ends.
    Ended,
}

struct State {
    status: Status,
    /// The last event written or queued.
    last_sent: i64,
    backlog: VecDeque<Bytes>,
    backlog_bytes: usize,
    /// Bytes its body wrote from the backlog, so it can tell a stalled socket.
    drained: u64,
    waker: Option<Waker>,
}

/// One client's side of direct writing.
pub struct Direct {
    /// `wire`'s descriptor, here so a write touches no more memory than this (at
    /// 10,000 clients per event, each pointer followed is a cache miss).
    fd: RawFd,
    state: Mutex<State>,
    wire: Arc<Wire>,
    shard: usize,
}

/// How a member's body goes on once it is no member any more.
#[derive(Debug, PartialEq, Eq)]
pub enum Left {
    /// Catch up after `last_sent` (from the ring, or the database).
    Behind { last_sent: i64 },
    /// End the response: everything queued was written.
    End,
    /// Cut the connection off: the socket failed, so what is queued (perhaps the
    /// rest of a chunk) is lost, and ending the response properly would write its
    /// last chunk into the middle of another.
    Abort,
}

/// Whether an offered batch went to the client.
#[derive(PartialEq, Eq)]
enum Offered {
    /// This many events (written or queued).
    Written(u64),
    Skipped,
    /// It is no member any more, after taking this many events.
    Left(u64),
}

impl Direct {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Writes the events of `batch` the client has not had (all of them, but
    /// for a client that just joined), or queues them behind what is not written
    /// yet; a keep-alive only to a client that is idle.
    fn offer(&self, batch: &Batch) -> Offered {
        let mut state = self.state();
        if state.status != Status::Member {
            return Offered::Left(0);
        }
        if batch.ids.is_empty() {
            // A keep-alive, only to an idle client.
            if state.backlog.is_empty() {
                match self.send(&batch.bytes) {
                    Ok(n) if n == batch.bytes.len() => {}
                    Ok(n) => {
                        state.queue(batch.bytes.slice(n..));
                        state.wake();
                    }
                    Err(error) if retry_later(&error) => {
                        state.queue(batch.bytes.clone());
                        state.wake();
                    }
                    Err(_) => return state.leave(Status::Broken),
                }
            }
            return Offered::Skipped;
        }
        let first = batch.ids.partition_point(|id| *id <= state.last_sent);
        if first == batch.ids.len() {
            return Offered::Skipped;
        }
        let start = batch.starts[first];
        // Written now, or from where the backlog must go on.
        let written = if state.backlog.is_empty() {
            match self.send(&batch.bytes[start..]) {
                Ok(n) if n == batch.bytes.len() - start => {
                    state.last_sent = batch.ids[batch.ids.len() - 1];
                    return Offered::Written((batch.ids.len() - first) as u64);
                }
                Ok(n) => start + n,
                Err(error) if retry_later(&error) => start,
                Err(_) => return state.leave(Status::Broken),
            }
        } else {
            start
        };
        // The backlog takes the rest of the event being written (its chunk must be
        // finished), then whole events while it stays within its bound.
        let mut last = batch.event_at(written).max(first);
        if written == batch.starts[last] && state.backlog_bytes > 0 {
            // Nothing of it written: it needs room like the ones after it.
            if state.backlog_bytes + batch.end(last) - written > BACKLOG_LIMIT {
                return state.leave(Status::Behind);
            }
        }
        while last + 1 < batch.ids.len()
            && state.backlog_bytes + batch.end(last + 1) - written <= BACKLOG_LIMIT
        {
            last += 1;
        }
        // A copy: a slice would keep the whole batch alive for as long as it waits.
        state.queue(Bytes::copy_from_slice(
            &batch.bytes[written..batch.end(last)],
        ));
        state.last_sent = batch.ids[last];
        let events = (last + 1 - first) as u64;
        if last + 1 < batch.ids.len() {
            state.leave(Status::Behind);
            return Offered::Left(events);
        }
        state.wake();
        Offered::Written(events)
    }

    /// Writes what the socket takes now. Around tokio: when the socket is full, its
    /// body's next write goes through tokio, which learns it then.
    fn send(&self, bytes: &[u8]) -> io::Result<usize> {
        // SAFETY: `fd` belongs to `self.wire`, which owns the socket and lives as
        // long as `self`, so the descriptor is open (and is this socket's).
        let fd = unsafe { BorrowedFd::borrow_raw(self.fd) };
        rustix::net::send(fd, bytes, rustix::net::SendFlags::NOSIGNAL).map_err(io::Error::from)
    }

    /// Writes out the backlog as far as the socket takes it; pending while a member
    /// (woken when there is more to write), ready when it is none any more.
    pub fn poll(&self, cx: &mut Context<'_>) -> Poll<Left> {
        let mut state = self.state();
        while let Some(front) = state.backlog.front_mut() {
            match self.wire.try_write(front) {
                Ok(n) => {
                    let whole = n == front.len();
                    front.advance(n);
                    if whole {
                        state.backlog.pop_front();
                    }
                    state.backlog_bytes -= n;
                    state.drained += n as u64;
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                    match self.wire.poll_write_ready(cx) {
                        Poll::Ready(Ok(())) => {}
                        Poll::Ready(Err(_)) => {
                            state.leave(Status::Broken);
                        }
                        Poll::Pending => return Poll::Pending,
                    }
                }
                Err(_) => {
                    state.leave(Status::Broken);
                }
            }
        }
        match state.status {
            Status::Member => {
                state.waker = Some(cx.waker().clone());
                Poll::Pending
            }
            Status::Behind => Poll::Ready(Left::Behind {
                last_sent: state.last_sent,
            }),
            Status::Ended => Poll::Ready(Left::End),
            Status::Broken => Poll::Ready(Left::Abort),
        }
    }

    /// Bytes written from the backlog so far, and whether some are still waiting.
    pub fn progress(&self) -> (u64, bool) {
        let state = self.state();
        (state.drained, !state.backlog.is_empty())
    }
}

/// A write the socket could not take now, but may later.
fn retry_later(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
    )
}

impl State {
    fn queue(&mut self, chunk: Bytes) {
        self.backlog_bytes += chunk.len();
        self.backlog.push_back(chunk);
    }

    fn wake(&mut self) {
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
    }

    /// Stops being a member (a broken socket overrides any other reason).
    fn leave(&mut self, status: Status) -> Offered {
        if self.status == Status::Member || status == Status::Broken {
            self.status = status;
        }
        if status == Status::Broken {
            self.backlog.clear();
            self.backlog_bytes = 0;
        }
        self.wake();
        Offered::Left(0)
    }
}

/// A stream's members.
pub struct Members {
    shards: Box<[Mutex<Vec<Arc<Direct>>>]>,
    next: AtomicUsize,
    /// The stream ended: nobody joins any more.
    closed: AtomicBool,
}

impl Default for Members {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(Vec::new())).collect(),
            next: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
        }
    }
}

impl Members {
    fn shard(&self, index: usize) -> MutexGuard<'_, Vec<Arc<Direct>>> {
        self.shards[index]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Writes `batch` to the members of the lists `shards`, one system call each,
    /// letting the worker run other tasks between lists; how many events they got
    /// in all.
    async fn write(&self, shards: Range<usize>, batch: &Batch) -> u64 {
        let mut written = 0;
        for index in shards {
            self.shard(index)
                .retain(|member| match member.offer(batch) {
                    Offered::Written(events) => {
                        written += events;
                        true
                    }
                    Offered::Skipped => true,
                    Offered::Left(events) => {
                        written += events;
                        false
                    }
                });
            tokio::task::yield_now().await;
        }
        written
    }

    /// Joins the client on `wire`, which has been sent everything up to
    /// `last_sent`. `catch_up` is given the client with its list locked (so no event
    /// of the stream is written to that list meanwhile) and offers it what the
    /// stream sent after `last_sent`. The client is a member afterwards unless
    /// `catch_up` could not give it everything; its body polls it either way.
    pub fn join(
        &self,
        wire: Arc<Wire>,
        last_sent: i64,
        catch_up: impl FnOnce(&Catchup<'_>),
    ) -> Arc<Direct> {
        let shard = self.next.fetch_add(1, Ordering::Relaxed) % self.shards.len();
        let direct = Arc::new(Direct {
            fd: wire.raw_fd(),
            wire,
            shard,
            state: Mutex::new(State {
                status: Status::Member,
                last_sent,
                backlog: VecDeque::new(),
                backlog_bytes: 0,
                drained: 0,
                waker: None,
            }),
        });
        let mut members = self.shard(shard);
        // Under the list's lock: `end_all` sets the flag before it takes the lists.
        if self.closed.load(Ordering::Acquire) {
            Catchup(&direct).end();
        } else {
            catch_up(&Catchup(&direct));
        }
        if direct.state().status == Status::Member {
            members.push(direct.clone());
        }
        direct
    }

    /// The client's body is gone: it is no member any more.
    pub fn leave(&self, direct: &Arc<Direct>) {
        direct.state().status = Status::Ended;
        self.shard(direct.shard)
            .retain(|member| !Arc::ptr_eq(member, direct));
    }

    /// The stream ends: every member's body writes out its backlog and ends, and
    /// nobody joins any more.
    pub fn end_all(&self) {
        self.closed.store(true, Ordering::Release);
        for index in 0..self.shards.len() {
            for member in self.shard(index).drain(..) {
                let mut state = member.state();
                if state.status == Status::Member {
                    state.status = Status::Ended;
                    state.wake();
                }
            }
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        (0..self.shards.len()).map(|i| self.shard(i).len()).sum()
    }
}

/// Consecutive events of a stream as one run of bytes (their chunks one after
/// the other), so a member that has had none of them gets them all with one
/// system call: when events come faster than they are written, a sweeper takes
/// all that are waiting at once. Without ids: a keep-alive.
pub struct Batch {
    ids: Vec<i64>,
    /// Where each event's chunk starts in `bytes`.
    starts: Vec<usize>,
    bytes: Bytes,
}

impl Batch {
    /// The index of the event whose chunk holds byte `offset`.
    fn event_at(&self, offset: usize) -> usize {
        self.starts
            .partition_point(|start| *start <= offset)
            .saturating_sub(1)
    }

    /// Where event `index`'s chunk ends.
    fn end(&self, index: usize) -> usize {
        self.starts
            .get(index + 1)
            .copied()
            .unwrap_or(self.bytes.len())
    }

    fn one(id: i64, chunk: Bytes) -> Self {
        Self {
            ids: vec![id],
            starts: vec![0],
            bytes: chunk,
        }
    }

    fn keepalive() -> Self {
        Self {
            ids: Vec::new(),
            starts: Vec::new(),
            bytes: KEEPALIVE_CHUNK.clone(),
        }
    }

    /// `events` (in order, at least one), as one batch.
    fn of(events: &[(i64, Bytes)]) -> Self {
        if let [(id, chunk)] = events {
            return Self::one(*id, chunk.clone());
        }
        let mut bytes = Vec::with_capacity(events.iter().map(|(_, chunk)| chunk.len()).sum());
        let mut ids = Vec::with_capacity(events.len());
        let mut starts = Vec::with_capacity(events.len());
        for (id, chunk) in events {
            ids.push(*id);
            starts.push(bytes.len());
            bytes.extend_from_slice(chunk);
        }
        Self {
            ids,
            starts,
            bytes: Bytes::from(bytes),
        }
    }
}

/// Who writes a stream's events to its members: one sweeper task per runtime
/// worker (up to [`MAX_SWEEPERS`]), each with its share of the member lists, so a
/// stream of many clients is written from several cores at once. Each also sends
/// its members the keep-alive when it has written nothing for a while, whatever
/// the stream's task is busy with (a database that is down, say). They end when
/// this is dropped (with the stream's task).
pub struct Sweepers {
    queues: Vec<mpsc::Sender<(i64, Bytes)>>,
}

impl Sweepers {
    pub fn start(members: &Arc<Members>, sent: IntCounter, keepalive: Duration) -> Self {
        let lists = members.shards.len();
        let count = tokio::runtime::Handle::current()
            .metrics()
            .num_workers()
            .clamp(1, MAX_SWEEPERS);
        let queues = (0..count)
            .map(|i| {
                let (queue, work) = mpsc::channel(SWEEP_QUEUE);
                tokio::spawn(sweep(
                    members.clone(),
                    i * lists / count..(i + 1) * lists / count,
                    work,
                    sent.clone(),
                    keepalive,
                ));
                queue
            })
            .collect();
        Self { queues }
    }

    /// Hands event `id`'s chunk to every sweeper, waiting while one is
    /// [`SWEEP_QUEUE`] events behind. Must come after the event is in the ring:
    /// a client joining takes from the ring what its list was not sent yet.
    pub async fn send(&self, id: i64, chunk: Bytes) {
        for queue in &self.queues {
            // A sweeper ends only when its queue does.
            let _ = queue.send((id, chunk.clone())).await;
        }
    }
}

async fn sweep(
    members: Arc<Members>,
    shards: Range<usize>,
    mut work: mpsc::Receiver<(i64, Bytes)>,
    sent: IntCounter,
    keepalive: Duration,
) {
    let mut waiting = Vec::new();
    let mut last_write = Instant::now();
    let idle = tokio::time::sleep(keepalive);
    tokio::pin!(idle);
    loop {
        tokio::select! {
            biased;
            taken = work.recv_many(&mut waiting, SWEEP_QUEUE) => {
                if taken == 0 {
                    return;
                }
                let batch = Batch::of(&waiting);
                waiting.clear();
                sent.inc_by(members.write(shards.clone(), &batch).await);
                // Only noted: the timer moves when it fires (once per interval, not
                // once per event).
                last_write = Instant::now();
            }
            () = &mut idle => {
                if last_write.elapsed() >= keepalive {
                    members.write(shards.clone(), &Batch::keepalive()).await;
                    last_write = Instant::now();
                }
                idle.as_mut().reset(last_write + keepalive);
            }
        }
    }
}

/// A client about to join, being sent what it missed.
pub struct Catchup<'a>(&'a Arc<Direct>);

impl Catchup<'_> {
    /// Writes event `id` unless the client has it already: `Some(true)` if it
    /// did, `None` once the client cannot take more (its socket failed, or it fell
    /// behind: then this event may not have been taken either).
    pub fn offer(&self, id: i64, chunk: &Bytes) -> Option<bool> {
        match self.0.offer(&Batch::one(id, chunk.clone())) {
            Offered::Written(_) => Some(true),
            Offered::Left(_) => None,
            Offered::Skipped => Some(false),
        }
    }

    /// What it missed is not all there any more: it does not join, and catches up
    /// after what it was given.
    pub fn behind(&self) {
        self.0.state().leave(Status::Behind);
    }

    /// The stream ended: it does not join, and ends after what it was given.
    pub fn end(&self) {
        self.0.state().leave(Status::Ended);
    }
}

#[cfg(test)]
mod tests {
    //! Through hyper and real sockets, as in production: a client's body starts
    //! in hyper's hands (retry, history, ring) and then joins the members, so the
    //! chunks of both writers must follow each other whole.

    use std::net::SocketAddr;
    use std::time::Duration;

    use hyper::server::conn::http1;
    use hyper_util::rt::TokioIo;
    use hyper_util::service::TowerToHyperService;
    use prometheus::IntCounter;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio_util::sync::CancellationToken;
    use warp::Filter;
    use warp::reply::Reply;

    use super::*;
    use crate::domain::{Channel, MessageText, UserName};
    use crate::roles::broadcast::feed::{self, Feed, FeedMetrics};
    use crate::roles::broadcast::hub::{Hub, HubMetrics};
    use crate::roles::broadcast::test_support::store_and_offer;
    use crate::storage::Database;
    use crate::streams::chat::MessageStore;
    use crate::streams::{StreamEvent, StreamKey, Streams};

    const WAIT: Duration = Duration::from_secs(20);

    struct Server {
        address: SocketAddr,
        hub: Hub,
        key: StreamKey,
        store: MessageStore,
        channel: Channel,
        metrics: Arc<FeedMetrics>,
        sent: IntCounter,
        shutdown: CancellationToken,
        db: Database,
        _state: tempfile::TempDir,
    }

    impl Server {
        /// The stream's SSE endpoint on a real socket served by hyper; `send_buffer`
        /// shrinks the server side's socket buffer so a client that reads nothing
        /// fills it soon.
        async fn start(send_buffer: Option<usize>) -> Self {
            Self::start_with(
                send_buffer,
                Duration::from_secs(3600),
                Duration::from_secs(30),
            )
            .await
        }

        /// With members sent a keep-alive after `keepalive` without an event, and
        /// cut off when their socket takes nothing for `stall`.
        async fn start_with(
            send_buffer: Option<usize>,
            keepalive: Duration,
            stall: Duration,
        ) -> Self {
            let (state, db) = Database::scratch().await;
            db.migrate().await.expect("migrate");
            let streams = Streams::new(db.clone());
            let sent = IntCounter::new("sent", "sent").expect("counter");
            let shutdown = CancellationToken::new();
            let hub = Hub::new(
                streams.clone(),
                HubMetrics {
                    sent: sent.clone(),
                    ..HubMetrics::unregistered()
                },
                1000,
                keepalive,
                shutdown.clone(),
            );
            let channel = Channel::parse("members").expect("channel");
            let key = StreamKey::Chat(channel.clone());
            let metrics = Arc::new(FeedMetrics::unregistered());
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let address = listener.local_addr().expect("address");
            let (hub2, key2, metrics2) = (hub.clone(), key.clone(), metrics.clone());
            tokio::spawn(async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        return;
                    };
                    stream.set_nodelay(true).expect("nodelay");
                    if let Some(size) = send_buffer {
                        socket2::SockRef::from(&stream)
                            .set_send_buffer_size(size)
                            .expect("send buffer");
                    }
                    let (io, wire) = Wire::new(stream);
                    let (hub, key, streams, metrics) = (
                        hub2.clone(),
                        key2.clone(),
                        streams.clone(),
                        metrics2.clone(),
                    );
                    let route = warp::header::optional::<i64>("last-event-id").then(
                        move |last: Option<i64>| {
                            let (hub, key, streams, metrics, wire) = (
                                hub.clone(),
                                key.clone(),
                                streams.clone(),
                                metrics.clone(),
                                wire.clone(),
                            );
                            async move {
                                let mut subscription = hub.subscribe(&key).expect("subscribe");
                                subscription.ready().await;
                                let feed = Feed::new(
                                    subscription,
                                    key,
                                    streams,
                                    last,
                                    Duration::from_secs(3600),
                                    CancellationToken::new(),
                                    metrics,
                                )
                                .with_wire(Some(wire))
                                .with_stall_limit(stall);
                                warp::reply::stream(feed::body(feed)).into_response()
                            }
                        },
                    );
                    let service = TowerToHyperService::new(warp::service(route));
                    tokio::spawn(async move {
                        let _ = http1::Builder::new()
                            .serve_connection(TokioIo::new(io), service)
                            .await;
                    });
                }
            });
            let store = MessageStore::new(db.clone());
            Self {
                address,
                hub,
                key,
                store,
                channel,
                metrics,
                sent,
                shutdown,
                db,
                _state: state,
            }
        }

        /// Stores a message of `size` characters and offers it to the hub, as the
        /// bus would; its id.
        async fn post(&self, size: usize) -> i64 {
            store_and_offer(&self.store, &self.channel, &self.hub, &self.key, size).await
        }

        /// Waits until the number of members passes `done`.
        async fn until_members(&self, done: impl Fn(usize) -> bool, what: &str) {
            let deadline = tokio::time::Instant::now() + WAIT;
            while !done(self.members().await) {
                assert!(tokio::time::Instant::now() < deadline, "{what}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }

        async fn members(&self) -> usize {
            let subscription = self.hub.subscribe(&self.key).expect("subscribe");
            subscription.members().len()
        }
    }

    /// An SSE client that checks the chunked framing byte for byte.
    struct Client {
        stream: TcpStream,
        raw: Vec<u8>,
        text: String,
    }

    impl Client {
        async fn connect(address: SocketAddr, last_event_id: Option<i64>) -> Self {
            Self::connect_with(address, last_event_id, None).await
        }

        /// With a receive buffer of `receive_buffer` bytes, if given.
        async fn connect_with(
            address: SocketAddr,
            last_event_id: Option<i64>,
            receive_buffer: Option<u32>,
        ) -> Self {
            let socket = tokio::net::TcpSocket::new_v4().expect("socket");
            if let Some(size) = receive_buffer {
                socket.set_recv_buffer_size(size).expect("receive buffer");
            }
            let mut stream = socket.connect(address).await.expect("connect");
            let resume = last_event_id
                .map(|id| format!("Last-Event-ID: {id}\r\n"))
                .unwrap_or_default();
            stream
                .write_all(format!("GET /events HTTP/1.1\r\nHost: test\r\n{resume}\r\n").as_bytes())
                .await
                .expect("request");
            let mut client = Self {
                stream,
                raw: Vec::new(),
                text: String::new(),
            };
            let end = loop {
                if let Some(end) = client.raw.windows(4).position(|w| w == b"\r\n\r\n") {
                    break end + 4;
                }
                client.read().await;
            };
            let head = String::from_utf8_lossy(&client.raw[..end]).to_lowercase();
            assert!(head.starts_with("http/1.1 200"), "{head}");
            assert!(head.contains("transfer-encoding: chunked"), "{head}");
            client.raw.drain(..end);
            client
        }

        async fn read(&mut self) {
            let mut buffer = [0u8; 65536];
            let n = tokio::time::timeout(WAIT, self.stream.read(&mut buffer))
                .await
                .expect("data in time")
                .expect("read");
            assert!(n > 0, "the server closed the stream");
            self.raw.extend_from_slice(&buffer[..n]);
        }

        /// Moves every whole chunk from `raw` to `text`; a malformed one fails.
        /// `true` once the body's last chunk came.
        fn dechunk(&mut self) -> bool {
            loop {
                let Some(line) = self.raw.windows(2).position(|w| w == b"\r\n") else {
                    return false;
                };
                let size = std::str::from_utf8(&self.raw[..line])
                    .ok()
                    .and_then(|s| usize::from_str_radix(s, 16).ok())
                    .unwrap_or_else(|| {
                        panic!(
                            "not a chunk size: {:?}",
                            String::from_utf8_lossy(&self.raw[..line.min(40)])
                        )
                    });
                if self.raw.len() < line + 2 + size + 2 {
                    return false;
                }
                if size == 0 {
                    assert_eq!(&self.raw[line..], b"\r\n\r\n", "the last chunk is last");
                    return true;
                }
                let data = &self.raw[line + 2..line + 2 + size];
                assert_eq!(&self.raw[line + 2 + size..line + 4 + size], b"\r\n");
                self.text
                    .push_str(std::str::from_utf8(data).expect("utf-8"));
                self.raw.drain(..line + 4 + size);
            }
        }

        /// The ids of the next events, until `last` is among them.
        async fn ids_until(&mut self, last: i64) -> Vec<i64> {
            let mut ids = Vec::new();
            loop {
                assert!(!self.dechunk(), "the body ended");
                while let Some(end) = self.text.find("\n\n") {
                    let event: String = self.text.drain(..end + 2).collect();
                    if let Some(id) = event.lines().find_map(|l| l.strip_prefix("id:")) {
                        ids.push(id.parse().expect("id"));
                    }
                }
                if ids.last() == Some(&last) {
                    return ids;
                }
                self.read().await;
            }
        }

        /// Reads until the body's last chunk; what came before it.
        async fn until_the_end(&mut self) -> String {
            while !self.dechunk() {
                self.read().await;
            }
            std::mem::take(&mut self.text)
        }
    }

    /// Clients join one after the other while events flow, each resuming from
    /// before the first: every one gets every event exactly once and in order,
    /// whichever writer (hyper or the stream's sweepers) wrote it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn clients_joining_while_events_flow_get_each_event_once_in_order() {
        let server = Arc::new(Server::start(None).await);
        let first = server.post(10).await;
        let mut posts = Vec::new();
        let poster = {
            let server = server.clone();
            tokio::spawn(async move {
                let mut ids = Vec::new();
                for _ in 0..300 {
                    ids.push(server.post(50).await);
                    tokio::task::yield_now().await;
                }
                ids
            })
        };
        let mut clients = Vec::new();
        for _ in 0..24 {
            clients.push(Client::connect(server.address, Some(first)).await);
            tokio::time::sleep(Duration::from_millis(15)).await;
        }
        posts.extend(poster.await.expect("poster"));
        let last = *posts.last().expect("posts");
        for client in &mut clients {
            assert_eq!(
                client.ids_until(last).await,
                posts,
                "every event once, in order"
            );
        }
        assert_eq!(
            server.members().await,
            clients.len(),
            "all joined the members"
        );
        assert!(server.sent.get() > 0, "the sweepers wrote events");

        // Clients that hang up are gone from the members at the next write.
        drop(clients);
        let deadline = tokio::time::Instant::now() + WAIT;
        while server.members().await > 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "members left behind"
            );
            server.post(10).await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The same race, tighter: the events are in the database already and are
    /// offered back to back while clients resume from the start and join, so
    /// events keep arriving between a client's last read of the ring and its
    /// joining. Each client must still get each event once, in order.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn joining_races_a_fast_stream_without_losing_or_repeating_an_event() {
        let server = Arc::new(Server::start(None).await);
        // The stream starts (at the head) before the rows exist.
        let watcher = server.hub.subscribe(&server.key).expect("subscribe");
        let mut events = Vec::new();
        for _ in 0..1500 {
            let message = server
                .store
                .insert(
                    &server.channel,
                    &UserName::parse("u").expect("user"),
                    &MessageText::parse("m").expect("text"),
                )
                .await
                .expect("insert");
            events.push(StreamEvent::encode(&message).expect("encode"));
        }
        let ids: Vec<i64> = events.iter().map(|event| event.id).collect();
        let offerer = {
            let server = server.clone();
            tokio::spawn(async move {
                for (n, event) in events.into_iter().enumerate() {
                    server.hub.offer(&server.key, event);
                    if n % 8 == 0 {
                        tokio::time::sleep(Duration::from_micros(200)).await;
                    }
                }
            })
        };
        let mut clients = Vec::new();
        for _ in 0..32 {
            clients.push(Client::connect(server.address, Some(0)).await);
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        offerer.await.expect("offerer");
        let last = *ids.last().expect("ids");
        for client in &mut clients {
            assert_eq!(
                client.ids_until(last).await,
                ids,
                "every event once, in order"
            );
        }
        drop(watcher);
    }

    /// A client resuming with more history than its socket takes, and not
    /// reading: its body must not join the members (whose writes go straight to
    /// the socket) before hyper has written out the history it was given, or the
    /// two writers' chunks would interleave.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_client_joins_only_once_hyper_has_written_out_its_history() {
        let server = Server::start(Some(4096)).await;
        // Less than hyper buffers (it then polls the body again at once), more than
        // the sockets take.
        let mut history = Vec::new();
        for _ in 0..120 {
            let message = server
                .store
                .insert(
                    &server.channel,
                    &UserName::parse("u").expect("user"),
                    &MessageText::parse(&"h".repeat(1500)).expect("text"),
                )
                .await
                .expect("insert");
            history.push(message.id);
        }
        let mut client = Client::connect_with(server.address, Some(0), Some(4096)).await;
        for _ in 0..20 {
            history.push(server.post(1500).await);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let last = *history.last().expect("events");
        assert_eq!(
            client.ids_until(last).await,
            history,
            "every event once, in order"
        );
        let next = server.post(10).await;
        assert_eq!(client.ids_until(next).await, vec![next]);
    }

    /// When the process stops, every member's response ends properly (the last
    /// chunk follows what it was sent), so hyper's graceful shutdown is not kept
    /// waiting and clients reconnect elsewhere.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn members_responses_end_when_the_process_stops() {
        let server = Server::start(None).await;
        let mut clients = Vec::new();
        for _ in 0..3 {
            clients.push(Client::connect(server.address, None).await);
        }
        server
            .until_members(|members| members >= clients.len(), "clients never joined")
            .await;
        let id = server.post(10).await;
        for client in &mut clients {
            assert_eq!(client.ids_until(id).await, vec![id]);
        }
        server.shutdown.cancel();
        for client in &mut clients {
            let rest = tokio::time::timeout(WAIT, client.until_the_end())
                .await
                .expect("the response ends");
            assert!(!rest.contains("id:"), "{rest}");
        }
    }

    /// An idle stream's members get a keep-alive comment from the sweepers
    /// (their bodies no longer have a timer of their own), and one that hung up
    /// leaves the members.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn idle_members_get_keepalives_and_departed_ones_leave() {
        let server =
            Server::start_with(None, Duration::from_millis(200), Duration::from_secs(30)).await;
        let mut client = Client::connect(server.address, None).await;
        let gone = Client::connect(server.address, None).await;
        server
            .until_members(|members| members >= 2, "clients never joined")
            .await;
        drop(gone);
        let started = tokio::time::Instant::now();
        while !client.text.contains(":\n\n") {
            client.read().await;
            assert!(!client.dechunk());
        }
        assert!(started.elapsed() < Duration::from_secs(2));
        server
            .until_members(|members| members <= 1, "the departed client stayed")
            .await;
    }

    /// A member whose socket takes nothing for the stall limit, with part of an
    /// event still queued, is cut off: ending its response properly would write
    /// the last chunk into the middle of that event.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_member_whose_socket_takes_nothing_is_cut_off_not_ended() {
        let server = Server::start_with(
            Some(4096),
            Duration::from_secs(3600),
            Duration::from_millis(500),
        )
        .await;
        let mut client = Client::connect_with(server.address, None, Some(4096)).await;
        server
            .until_members(|members| members >= 1, "the client never joined")
            .await;
        // More than the sockets hold, less than the backlog's bound.
        for _ in 0..20 {
            server.post(1500).await;
        }
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let mut buffer = [0u8; 65536];
        // Until the connection ends, or (kept alive) the response did.
        while !client.raw.ends_with(b"0\r\n\r\n") {
            match tokio::time::timeout(WAIT, client.stream.read(&mut buffer))
                .await
                .expect("the connection ends")
            {
                Ok(0) | Err(_) => break,
                Ok(n) => client.raw.extend_from_slice(&buffer[..n]),
            }
        }
        assert!(
            !client.raw.ends_with(b"0\r\n\r\n"),
            "the response was ended, not cut off"
        );
        assert!(
            client.raw.len() < 20 * 1500,
            "only what the sockets held came"
        );
    }

    /// A client that joins after its stream ended (the process stops) does not
    /// become a member nobody would ever end: its body ends at once.
    #[tokio::test]
    async fn nobody_joins_a_stream_that_ended() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let _client = TcpStream::connect(listener.local_addr().expect("address"))
            .await
            .expect("connect");
        let (server, _) = listener.accept().await.expect("accept");
        let (_io, wire) = Wire::new(server);
        let members = Members::default();
        members.end_all();
        let direct = members.join(wire, -1, |_| {});
        assert_eq!(members.len(), 0);
        let waker = futures_util::task::noop_waker();
        let mut cx = std::task::Context::from_waker(&waker);
        assert_eq!(direct.poll(&mut cx), Poll::Ready(Left::End));
    }

    /// While the stream's task is stuck reading the database (it is down, and a
    /// resubscription asked every stream to read what it missed), its members
    /// still get their keep-alives: a proxy's idle timeout must not cut them all
    /// off at once during the outage.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn members_get_keepalives_while_their_stream_waits_for_the_database() {
        use sea_orm::ConnectionTrait;

        let server =
            Server::start_with(None, Duration::from_millis(300), Duration::from_secs(30)).await;
        let mut client = Client::connect(server.address, None).await;
        server
            .until_members(|members| members >= 1, "the client never joined")
            .await;
        server
            .db
            .connection()
            .execute_unprepared("ALTER TABLE chat_messages RENAME TO elsewhere")
            .await
            .expect("break the stream's reads");
        server.hub.resync_all();
        let started = tokio::time::Instant::now();
        let mut keepalives = 0;
        while keepalives < 3 {
            client.read().await;
            assert!(!client.dechunk());
            keepalives += client.text.matches(":\n\n").count();
            client.text.clear();
        }
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
    }

    /// A member that stops reading fills its socket and then its backlog: it
    /// leaves the members (nobody waits for it), catches up (from the database:
    /// it missed more than the ring holds) once it reads again, connected, and
    /// loses nothing; then it joins again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_member_that_stops_reading_catches_up_connected_and_loses_nothing() {
        let server = Server::start(Some(4096)).await;
        let mut slow = Client::connect_with(server.address, None, Some(4096)).await;
        let mut fast = Client::connect(server.address, None).await;
        server
            .until_members(|members| members >= 2, "clients never joined")
            .await;
        let mut posts = Vec::new();
        for _ in 0..1200 {
            posts.push(server.post(300).await);
            if posts.len() % 100 == 0 {
                // The one that reads keeps up meanwhile.
                let last = *posts.last().expect("posts");
                assert_eq!(fast.ids_until(last).await.last(), Some(&last));
            }
        }
        assert_eq!(
            server.members().await,
            1,
            "the silent client left the members"
        );
        let last = *posts.last().expect("posts");
        assert_eq!(
            slow.ids_until(last).await,
            posts,
            "every event once, in order"
        );
        assert_eq!(server.metrics.catchups.get(), 1);
        server
            .until_members(|members| members >= 2, "it never joined again")
            .await;
        let next = server.post(10).await;
        assert_eq!(slow.ids_until(next).await, vec![next]);
        assert_eq!(server.metrics.slow_disconnects.get(), 0);
    }
}
