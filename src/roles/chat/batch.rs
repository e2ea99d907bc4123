//! Group commit for chat posts. Concurrent posts, of one channel or many, are
//! stored by one statement and one commit (`MessageStore::insert_batch`, under each
//! channel's ordering lock): fewer statements, round trips and commits per post,
//! which is what limits the post rate (docs/benchmarks.md). Every request is
//! answered only after the statement holding its post has committed, with its own
//! message; a statement stores its posts whole or not at all, and a failed one
//! answers each of its posts with the error.
//!
//! A post that finds nothing waiting, its channel idle and a slot free is stored at
//! once, alone: a quiet channel sees no added latency. Otherwise posts wait; the
//! next batch goes when a slot frees up.
//!
//! Channels whose ordering lock is held elsewhere (stuck sessions) must not hold up
//! the others, so:
//! - a statement only *tries* its channels' locks, and stores the posts of the
//!   channels it got; the posts of the others come back and go next in a statement
//!   of their own channel, which waits for the lock, at most `lock_wait` (then they
//!   get 503 `channel_busy`);
//! - such waiting statements hold at most `MAX_WAITING_STATEMENTS` of the
//!   `MAX_IN_FLIGHT` slots, so however many channels are held, a slot is left for
//!   the others;
//! - a channel is in one statement at a time and has a bounded backlog: past it, its
//!   posts get 503 at once.
//!
//! Order: within a statement, a channel's posts are numbered in the order they were
//! queued; posts that are concurrent (none answered yet) have no order of their own
//! to keep. A client that waits for its answer before posting again gets its posts
//! stored in that order.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use prometheus::{IntCounter, IntGauge};
use sea_orm::DbErr;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use warp::http::StatusCode;

use crate::domain::Channel;
use crate::http::ApiError;
use crate::storage::{is_lock_timeout, to_api_error};
use crate::streams::chat::{ChatMessage, MessageStore, NewPost};
use crate::streams::outbox::Outbox;

/// Most posts in one statement.
const MAX_BATCH: usize = 256;
/// Statements in flight at once (each holds one database connection): one is
/// written while the next one fills.
const MAX_IN_FLIGHT: usize = 2;
/// Statements in flight that wait for a channel's lock (fewer than `MAX_IN_FLIGHT`).
const MAX_WAITING_STATEMENTS: usize = 1;
/// Most posts of one channel waiting for it: a channel whose statements cannot
/// keep up (or whose lock is held elsewhere) is refused past this, not the others;
/// several such channels still leave room in `MAX_WAITING`.
const MAX_CHANNEL_BACKLOG: usize = MAX_BATCH / 2;
/// Most posts taken off the queue and waiting in all; past it, the queue fills up
/// and posts get 503 after the queue timeout.
const MAX_WAITING: usize = MAX_BATCH * (MAX_IN_FLIGHT + 1);

type Reply = oneshot::Sender<Result<ChatMessage, ApiError>>;

struct Pending {
    post: NewPost,
    reply: Reply,
}

/// Hands posts to the batching task; cheap to share.
pub struct PostBatcher {
    queue: mpsc::Sender<Pending>,
    /// How long a post may wait for room in the queue before answering 503.
    queue_timeout: Duration,
    shared: Arc<Shared>,
}

#[derive(Clone)]
pub struct BatchMetrics {
    /// Statements that stored posts (posts / statements is the mean batch size).
    pub statements: IntCounter,
    /// Posts waiting for a batch to be sent.
    pub waiting: IntGauge,
}

impl PostBatcher {
    /// Starts the batching task; it ends when the batcher is dropped and nothing
    /// is left to store. `timeout` bounds both the wait for room in the queue and
    /// a statement's wait for its channel's lock.
    /// What it commits goes to `outbox`, each channel's in its commit order.
    pub fn start(
        store: MessageStore,
        outbox: Arc<Outbox<ChatMessage>>,
        timeout: Duration,
        metrics: BatchMetrics,
    ) -> Self {
        let (queue, receiver) = mpsc::channel(MAX_WAITING);
        let (put_back, returned) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            store,
            outbox,
            metrics,
            // Never zero: a zero wait only tries, and a channel left out would be
            // left out again and again (`acquire_timeout_ms = 0` is accepted).
            lock_wait: timeout.max(Duration::from_millis(1)),
            busy: Mutex::new(HashSet::new()),
            slots: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
            waiters: Arc::new(Semaphore::new(MAX_WAITING_STATEMENTS)),
            pending: AtomicUsize::new(0),
            freed: Notify::new(),
            put_back,
        });
        tokio::spawn(run(shared.clone(), receiver, returned));
        Self {
            queue,
            queue_timeout: timeout,
            shared,
        }
    }

    /// Stores one post; returns once it is committed.
    pub async fn insert(&self, post: NewPost) -> Result<ChatMessage, ApiError> {
        let shared = &self.shared;
        // SQLite: one writer at a time anyway; the request stores its post itself.
        if !shared.store.batches() {
            shared.metrics.statements.inc();
            let stored = shared
                .outbox
                .append_in_order(
                    self.queue_timeout,
                    shared.store.insert(&post.channel, &post.user, &post.text),
                )
                .await;
            let Ok(stored) = stored else {
                tracing::warn!("chat posts wait for SQLite: the database is not keeping up");
                return Err(ApiError::unavailable("database"));
            };
            return stored.map_err(|e| to_api_error(e, "storing a chat message"));
        }
        let (reply, answer) = oneshot::channel();
        let pending = Pending { post, reply };
        if shared.pending.load(Ordering::Acquire) == 0
            && let Some(claim) = shared.claim_alone(&pending.post.channel)
        {
            // In a task of its own that holds the claim: a client that leaves
            // mid-way (its request dropped) leaves the slot and the channel claimed
            // until the statement ends, as its database connection is.
            tokio::spawn(execute(shared.clone(), vec![pending], claim));
        } else {
            // Room first, then the post in one step: a request dropped while it
            // waits for room (its client left) leaves no post behind.
            match tokio::time::timeout(self.queue_timeout, self.queue.reserve()).await {
                Ok(Ok(room)) => {
                    shared.queued(1);
                    room.send(pending);
                }
                Ok(Err(_)) => {
                    tracing::error!("the chat post batcher has stopped");
                    return Err(ApiError::internal());
                }
                Err(_) => {
                    tracing::warn!("chat post queue full: the database is not keeping up");
                    return Err(ApiError::unavailable("database"));
                }
            }
        }
        answer.await.unwrap_or_else(|_| {
            // The batch task died (a panic): the post's fate is unknown.
            tracing::error!("a chat post batch ended without an answer");
            Err(ApiError::internal())
        })
    }
}

/// 503 naming the channel: it has too many posts waiting, or a lock stayed held.
fn channel_busy(channel: &Channel, why: &str) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "channel_busy",
        format!("channel {} {why}; try again shortly", channel.as_str()),
    )
    .with_retry_after(1)
}

/// What the requests, the batching task and the statements share.
struct Shared {
    store: MessageStore,
    outbox: Arc<Outbox<ChatMessage>>,
    metrics: BatchMetrics,
    /// How long a statement of one channel waits for its lock.
    lock_wait: Duration,
    /// Channels with a statement in flight.
    busy: Mutex<HashSet<Channel>>,
    /// Statements in flight (each holds a database connection).
    slots: Arc<Semaphore>,
    /// Statements in flight that wait for a lock.
    waiters: Arc<Semaphore>,
    /// Posts queued or waiting, not yet in a statement (the fast path goes only
    /// when there are none); `metrics.waiting` shows the same.
    pending: AtomicUsize,
    /// A statement ended: its slot and channel are free again.
    freed: Notify,
    /// Posts a statement left out (their channel's lock was taken), back to the task.
    put_back: mpsc::UnboundedSender<Vec<Pending>>,
}

impl Shared {
    fn busy(&self) -> MutexGuard<'_, HashSet<Channel>> {
        self.busy.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn queued(&self, posts: usize) {
        self.pending.fetch_add(posts, Ordering::AcqRel);
        self.metrics.waiting.add(posts as i64);
    }

    fn dequeued(&self, posts: usize) {
        self.pending.fetch_sub(posts, Ordering::AcqRel);
        self.metrics.waiting.sub(posts as i64);
    }

    /// A slot and the channel, if the channel has no statement and a slot is free.
    fn claim_alone(self: &Arc<Self>, channel: &Channel) -> Option<InFlight> {
        let slot = self.slots.clone().try_acquire_owned().ok()?;
        if !self.busy().insert(channel.clone()) {
            return None;
        }
        Some(InFlight {
            shared: self.clone(),
            channels: HashSet::from([channel.clone()]),
            slot: Some(slot),
            waiter: None,
        })
    }
}

/// A statement in flight: its slot, its channels, and when it waits for a lock,
/// a waiter's place; all freed when it is dropped.
struct InFlight {
    shared: Arc<Shared>,
    channels: HashSet<Channel>,
    slot: Option<OwnedSemaphorePermit>,
    waiter: Option<OwnedSemaphorePermit>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut busy = self.shared.busy();
        for channel in &self.channels {
            busy.remove(channel);
        }
        drop(busy);
        // Released before the task is woken, so it sees them free.
        drop(self.slot.take());
        drop(self.waiter.take());
        self.shared.freed.notify_one();
    }
}

/// Posts taken off the queue, waiting for a slot or for their channel.
#[derive(Default)]
struct Waiting {
    posts: VecDeque<Pending>,
    /// How many of `posts` each channel has.
    by_channel: HashMap<Channel, usize>,
    /// Channels whose posts a statement left out (their lock was taken): they go
    /// next in a statement of their own, which waits for the lock (bounded).
    alone: HashSet<Channel>,
}

impl Waiting {
    fn has_room(&self) -> bool {
        self.posts.len() < MAX_WAITING
    }

    fn push(&mut self, pending: Pending) -> Result<(), Pending> {
        let count = self
            .by_channel
            .entry(pending.post.channel.clone())
            .or_insert(0);
        if *count >= MAX_CHANNEL_BACKLOG {
            return Err(pending);
        }
        *count += 1;
        self.posts.push_back(pending);
        Ok(())
    }

    /// Posts a statement left out, back at the front (they are the oldest).
    fn put_back(&mut self, posts: Vec<Pending>) {
        for pending in posts.into_iter().rev() {
            *self
                .by_channel
                .entry(pending.post.channel.clone())
                .or_insert(0) += 1;
            self.alone.insert(pending.post.channel.clone());
            self.posts.push_front(pending);
        }
    }

    fn taken(&mut self, channel: &Channel) {
        if let Some(count) = self.by_channel.get_mut(channel) {
            *count -= 1;
            if *count == 0 {
                self.by_channel.remove(channel);
            }
        }
    }

    /// Whether a waiting post could go now.
    fn any_free(&self, shared: &Shared) -> bool {
        let waiter = shared.waiters.available_permits() > 0;
        let busy = shared.busy();
        self.by_channel
            .keys()
            .any(|c| !busy.contains(c) && (waiter || !self.alone.contains(c)))
    }
}

async fn run(
    shared: Arc<Shared>,
    mut receiver: mpsc::Receiver<Pending>,
    mut returned: mpsc::UnboundedReceiver<Vec<Pending>>,
) {
    let mut waiting = Waiting::default();
    // Whether a waiting post's channel is free, so that a slot is worth taking.
    let mut ready = false;
    let mut open = true;
    loop {
        if !open
            && waiting.posts.is_empty()
            && returned.is_empty()
            && shared.slots.available_permits() == MAX_IN_FLIGHT
        {
            return;
        }
        tokio::select! {
            biased;
            slot = shared.slots.clone().acquire_owned(), if ready => {
                let Ok(slot) = slot else {
                    // The semaphore is never closed; answer rather than hang if it were.
                    for pending in waiting.posts.drain(..) {
                        let _ = pending.reply.send(Err(ApiError::internal()));
                    }
                    return;
                };
                let (batch, claim) = claim_batch(&shared, &mut waiting, slot);
                ready = waiting.any_free(&shared);
                if !batch.is_empty() {
                    tokio::spawn(execute(shared.clone(), batch, claim));
                }
            }
            () = shared.freed.notified() => ready = waiting.any_free(&shared),
            Some(posts) = returned.recv() => {
                waiting.put_back(posts);
                ready = waiting.any_free(&shared);
            }
            next = receiver.recv(), if open && waiting.has_room() => match next {
                Some(pending) => {
                    ready |= accept(&shared, &mut waiting, pending);
                    while waiting.has_room() {
                        let Ok(pending) = receiver.try_recv() else { break };
                        ready |= accept(&shared, &mut waiting, pending);
                    }
                }
                None => open = false,
            },
        }
    }
}

/// Adds an arrival to `waiting`, or refuses it when its channel's backlog is full.
/// Returns whether it can go at once (its channel is free).
fn accept(shared: &Shared, waiting: &mut Waiting, pending: Pending) -> bool {
    let channel = &pending.post.channel;
    let free = !shared.busy().contains(channel) && !waiting.alone.contains(channel);
    match waiting.push(pending) {
        Ok(()) => free,
        Err(refused) => {
            shared.dequeued(1);
            tracing::warn!(
                channel = refused.post.channel.as_str(),
                "chat channel backlog full: its posts are not being stored fast enough"
            );
            let _ = refused.reply.send(Err(channel_busy(
                &refused.post.channel,
                "has too many posts waiting to be stored",
            )));
            false
        }
    }
}

/// Takes the next batch out of `waiting`, in queue order: the posts of a channel
/// that must go alone, if one is free and a waiting statement may start; else every
/// post whose channel is free and need not go alone, up to `MAX_BATCH`. The others
/// stay, in order. Posts whose client has gone (its request dropped, unanswered)
/// are dropped, not stored.
fn claim_batch(
    shared: &Arc<Shared>,
    waiting: &mut Waiting,
    slot: OwnedSemaphorePermit,
) -> (Vec<Pending>, InFlight) {
    let mut busy = shared.busy();
    let alone = waiting
        .posts
        .iter()
        .map(|p| &p.post.channel)
        .find(|c| waiting.alone.contains(*c) && !busy.contains(*c))
        .cloned();
    let waiter = alone
        .as_ref()
        .and_then(|_| shared.waiters.clone().try_acquire_owned().ok());
    let alone = alone.filter(|_| waiter.is_some());
    if let Some(channel) = &alone {
        waiting.alone.remove(channel);
    }
    let mut batch = Vec::new();
    let mut channels = HashSet::new();
    let mut left = VecDeque::with_capacity(waiting.posts.len());
    let mut gone = 0;
    for pending in std::mem::take(&mut waiting.posts) {
        let channel = &pending.post.channel;
        let fits = match &alone {
            Some(only) => channel == only,
            None => {
                channels.contains(channel)
                    || !(busy.contains(channel) || waiting.alone.contains(channel))
            }
        };
        if !fits || batch.len() == MAX_BATCH {
            left.push_back(pending);
            continue;
        }
        waiting.taken(channel);
        if pending.reply.is_closed() {
            gone += 1;
            continue;
        }
        if channels.insert(channel.clone()) {
            busy.insert(channel.clone());
        }
        batch.push(pending);
    }
    drop(busy);
    waiting.posts = left;
    shared.dequeued(batch.len() + gone);
    let claim = InFlight {
        shared: shared.clone(),
        channels,
        slot: Some(slot),
        waiter,
    };
    (batch, claim)
}

/// Stores a batch and answers its posts. A statement holding a waiter's place (a
/// channel going alone) waits for its lock, at most `lock_wait`; any other only
/// tries its channels' locks, and the posts of a channel whose lock was taken go
/// back to the task, before the claim is let go, so that they go next.
async fn execute(shared: Arc<Shared>, batch: Vec<Pending>, claim: InFlight) {
    let wait = if claim.waiter.is_some() {
        shared.lock_wait
    } else {
        Duration::ZERO
    };
    let (posts, replies): (Vec<NewPost>, Vec<Reply>) =
        batch.into_iter().map(|p| (p.post, p.reply)).unzip();
    match shared.store.insert_batch(&posts, wait).await {
        Ok(messages) => {
            let mut left_out = Vec::new();
            let mut answers = Vec::with_capacity(replies.len());
            for ((post, reply), message) in posts.into_iter().zip(replies).zip(messages) {
                match message {
                    Some(message) => answers.push((reply, message)),
                    None => left_out.push(Pending { post, reply }),
                }
            }
            if !answers.is_empty() {
                shared.metrics.statements.inc();
            }
            if !left_out.is_empty() {
                shared.queued(left_out.len());
                // The task ends only once nothing is in flight; were it gone, these
                // requests would be answered 500.
                let _ = shared.put_back.send(left_out);
            }
            // Handed over while the channels are still claimed: a channel's next
            // statement commits after this one, and its events follow these.
            shared
                .outbox
                .committed(answers.iter().map(|(_, message)| message));
            // The channels are free for the next statement before anyone is answered.
            drop(claim);
            for (reply, message) in answers {
                // The client may have gone away; its post is stored all the same.
                let _ = reply.send(Ok(message));
            }
        }
        // Logged once for the batch, answered to each of its posts.
        Err(error) => {
            let error = statement_error(error, &claim.channels);
            drop(claim);
            for reply in replies {
                let _ = reply.send(Err(error.clone()));
            }
        }
    }
}

fn statement_error(error: DbErr, channels: &HashSet<Channel>) -> ApiError {
    match channels.iter().next() {
        Some(channel) if is_lock_timeout(&error) => {
            tracing::warn!(
                channel = channel.as_str(),
                "a chat statement gave up waiting for a lock (the channel's ordering lock, or the table's): its posts were not stored"
            );
            channel_busy(
                channel,
                "is busy: its posts could not be stored in time (a lock stayed held)",
            )
        }
        _ => to_api_error(error, "storing chat messages"),
    }
}
