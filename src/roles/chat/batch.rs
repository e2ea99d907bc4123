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
//! One channel whose ordering lock is held elsewhere (a stuck session) must not hold
//! up the others, so:
//! - a statement of several channels only *tries* their locks, and the posts of a
//!   channel whose lock is taken come back and go next in a statement of their own;
//! - a statement of one channel waits for its lock at most `lock_wait`, then its
//!   posts get 503 `channel_busy`;
//! - a channel is in at most `PER_CHANNEL` statements at a time, fewer than the
//!   slots, and has a bounded backlog: past it, its posts get 503 at once.
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

/// Most posts in one statement.
const MAX_BATCH: usize = 256;
/// Statements in flight at once (each holds one database connection): one is
/// written while the next one fills.
const MAX_IN_FLIGHT: usize = 2;
/// Statements in flight for one channel: fewer than `MAX_IN_FLIGHT`, so that a
/// channel waiting for its lock leaves a slot to the others.
const PER_CHANNEL: usize = 1;
/// Most posts of one channel waiting for it: a channel whose statements cannot
/// keep up (or whose lock is held elsewhere) is refused past this, not the others.
const MAX_CHANNEL_BACKLOG: usize = MAX_BATCH;
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
    /// How long a post may wait for room in the queue, and a statement for its
    /// channel's lock, before answering 503.
    timeout: Duration,
    store: MessageStore,
    gate: Arc<Gate>,
    metrics: BatchMetrics,
}

#[derive(Clone)]
pub struct BatchMetrics {
    /// Statements that stored posts (posts / statements is the mean batch size).
    pub statements: IntCounter,
    /// Posts waiting for a batch to be sent.
    pub waiting: IntGauge,
}

impl PostBatcher {
    /// Starts the batching task; it ends when the batcher is dropped. `timeout`
    /// bounds both the wait for room in the queue and a statement's wait for its
    /// channel's lock.
    pub fn start(store: MessageStore, timeout: Duration, metrics: BatchMetrics) -> Self {
        let (queue, receiver) = mpsc::channel(MAX_WAITING);
        let gate = Arc::new(Gate {
            busy: Mutex::new(Busy::default()),
            slots: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
            waiting: AtomicUsize::new(0),
            freed: Notify::new(),
        });
        tokio::spawn(
            Batching {
                store: store.clone(),
                metrics: metrics.clone(),
                gate: gate.clone(),
                lock_wait: timeout,
            }
            .run(receiver),
        );
        Self {
            queue,
            timeout,
            store,
            gate,
            metrics,
        }
    }

    /// Stores one post; returns once it is committed.
    pub async fn insert(&self, post: NewPost) -> Result<ChatMessage, ApiError> {
        // SQLite: one writer at a time anyway; the request stores its post itself.
        if !self.store.batches() {
            self.metrics.statements.inc();
            return self
                .store
                .insert(&post.channel, &post.user, &post.text)
                .await
                .map_err(|e| to_api_error(e, "storing a chat message"));
        }
        if self.queue.capacity() == self.queue.max_capacity()
            && self.gate.waiting.load(Ordering::Acquire) == 0
            && let Some(claim) = self.gate.claim_alone(&post.channel)
        {
            return self.insert_alone(post, claim).await;
        }
        let (reply, answer) = oneshot::channel();
        // Room first, then the post in one step: a request dropped while it waits
        // for room (its client left) leaves no post behind and the gauge right.
        match tokio::time::timeout(self.timeout, self.queue.reserve()).await {
            Ok(Ok(room)) => {
                self.metrics.waiting.inc();
                room.send(Pending { post, reply });
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
        answer.await.unwrap_or_else(|_| {
            // The batch task died (a panic): the post's fate is unknown.
            tracing::error!("a chat post batch ended without an answer");
            Err(ApiError::internal())
        })
    }

    /// A lone post on an idle channel, stored at once. In a task of its own that
    /// holds the claim: a client that leaves mid-way (its request dropped) leaves
    /// the slot and the channel claimed until the statement ends, as its database
    /// connection is.
    async fn insert_alone(&self, post: NewPost, claim: InFlight) -> Result<ChatMessage, ApiError> {
        let (store, lock_wait) = (self.store.clone(), self.timeout);
        self.metrics.statements.inc();
        let channel = post.channel.clone();
        let stored = tokio::spawn(async move {
            let stored = store
                .insert_batch(std::slice::from_ref(&post), lock_wait)
                .await;
            drop(claim);
            stored
        })
        .await;
        match stored {
            Ok(Ok(mut messages)) => messages.pop().flatten().ok_or_else(|| {
                tracing::error!("a post stored alone is missing from the result");
                ApiError::internal()
            }),
            Ok(Err(error)) => Err(statement_error(error, &channel)),
            Err(_) => {
                tracing::error!("storing a chat post alone panicked");
                Err(ApiError::internal())
            }
        }
    }
}

/// 503 naming the channel: it has too many posts waiting, or its lock is held.
fn channel_busy(channel: &Channel, why: &str) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "channel_busy",
        format!("channel {} {why}; try again shortly", channel.as_str()),
    )
    .with_retry_after(1)
}

fn statement_error(error: DbErr, channel: &Channel) -> ApiError {
    if is_lock_timeout(&error) {
        tracing::warn!(
            channel = channel.as_str(),
            "a chat channel's ordering lock stayed held: its posts were not stored"
        );
        channel_busy(channel, "is busy: its posts could not be stored in time")
    } else {
        to_api_error(error, "storing chat messages")
    }
}

/// What the requests' fast path and the batching task share.
struct Gate {
    busy: Mutex<Busy>,
    /// Statements in flight (each holds a database connection).
    slots: Arc<Semaphore>,
    /// Posts the task has taken off the queue and not yet sent.
    waiting: AtomicUsize,
    /// A statement ended: its slot and channels are free again.
    freed: Notify,
}

impl Gate {
    fn busy(&self) -> MutexGuard<'_, Busy> {
        self.busy.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A slot and the channel, if the channel has no statement and a slot is free.
    fn claim_alone(self: &Arc<Self>, channel: &Channel) -> Option<InFlight> {
        let permit = self.slots.clone().try_acquire_owned().ok()?;
        let mut busy = self.busy();
        if busy.in_flight(channel) > 0 {
            return None;
        }
        busy.take(channel);
        drop(busy);
        Some(InFlight {
            gate: self.clone(),
            channels: HashSet::from([channel.clone()]),
            _permit: permit,
        })
    }
}

/// Statements in flight per channel (channels with none are not kept).
#[derive(Default)]
struct Busy(HashMap<Channel, usize>);

impl Busy {
    fn in_flight(&self, channel: &Channel) -> usize {
        self.0.get(channel).copied().unwrap_or(0)
    }

    fn take(&mut self, channel: &Channel) {
        *self.0.entry(channel.clone()).or_insert(0) += 1;
    }

    fn release(&mut self, channel: &Channel) {
        if let Some(count) = self.0.get_mut(channel) {
            *count -= 1;
            if *count == 0 {
                self.0.remove(channel);
            }
        }
    }
}

/// A statement in flight: its slot and its channels, freed when it is dropped.
struct InFlight {
    gate: Arc<Gate>,
    channels: HashSet<Channel>,
    _permit: OwnedSemaphorePermit,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut busy = self.gate.busy();
        for channel in &self.channels {
            busy.release(channel);
        }
        drop(busy);
        // The permit is released right after this; the task, woken, waits for it.
        self.gate.freed.notify_one();
    }
}

/// Posts taken off the queue, waiting for a slot or for their channel.
#[derive(Default)]
struct Waiting {
    posts: VecDeque<Pending>,
    /// How many of `posts` each channel has.
    by_channel: HashMap<Channel, usize>,
    /// Channels whose posts a tried statement left out (their lock was taken): they
    /// go next in a statement of their own, which waits for the lock (bounded). In
    /// one with other channels they would be left out again, or hold them up.
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

    /// Posts a tried statement left out, back at the front (they are the oldest).
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
    fn any_free(&self, busy: &Busy) -> bool {
        self.by_channel
            .keys()
            .any(|c| busy.in_flight(c) < PER_CHANNEL)
    }
}

/// The batching task.
struct Batching {
    store: MessageStore,
    metrics: BatchMetrics,
    gate: Arc<Gate>,
    lock_wait: Duration,
}

impl Batching {
    async fn run(self, mut receiver: mpsc::Receiver<Pending>) {
        let mut waiting = Waiting::default();
        // Posts a tried statement left out, sent back by its task.
        let (put_back, mut returned) = mpsc::unbounded_channel();
        // Whether a waiting post's channel is free, so that a slot is worth taking.
        let mut ready = false;
        let mut open = true;
        loop {
            if !open
                && waiting.posts.is_empty()
                && self.gate.slots.available_permits() == MAX_IN_FLIGHT
            {
                return;
            }
            tokio::select! {
                biased;
                permit = self.gate.slots.clone().acquire_owned(), if ready => {
                    let Ok(permit) = permit else {
                        // The semaphore is never closed; answer rather than hang if it were.
                        for pending in waiting.posts.drain(..) {
                            let _ = pending.reply.send(Err(ApiError::internal()));
                        }
                        return;
                    };
                    let (batch, claim) = self.claim_batch(&mut waiting, permit);
                    ready = waiting.any_free(&self.gate.busy());
                    if !batch.is_empty() {
                        self.metrics.statements.inc();
                        tokio::spawn(execute(
                            self.store.clone(),
                            batch,
                            claim,
                            self.lock_wait,
                            put_back.clone(),
                        ));
                    }
                }
                () = self.gate.freed.notified() => {
                    ready = waiting.any_free(&self.gate.busy());
                }
                Some(posts) = returned.recv() => {
                    self.metrics.waiting.add(posts.len() as i64);
                    waiting.put_back(posts);
                    ready = waiting.any_free(&self.gate.busy());
                }
                next = receiver.recv(), if open && waiting.has_room() => match next {
                    Some(pending) => {
                        ready |= self.accept(&mut waiting, pending);
                        while waiting.has_room() {
                            let Ok(pending) = receiver.try_recv() else { break };
                            ready |= self.accept(&mut waiting, pending);
                        }
                    }
                    None => open = false,
                },
            }
            self.gate
                .waiting
                .store(waiting.posts.len(), Ordering::Release);
        }
    }

    /// Adds an arrival to `waiting`, or refuses it when its channel's backlog is
    /// full. Returns whether it can go at once (its channel is free).
    fn accept(&self, waiting: &mut Waiting, pending: Pending) -> bool {
        let free = self.gate.busy().in_flight(&pending.post.channel) < PER_CHANNEL;
        match waiting.push(pending) {
            Ok(()) => free,
            Err(refused) => {
                self.metrics.waiting.dec();
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

    /// Takes the next batch out of `waiting`, in queue order: a channel that must go
    /// alone, if one is free, else every post whose channel is free and need not go
    /// alone, up to `MAX_BATCH`. The others stay, in order. Posts whose client has
    /// gone (its request was dropped, unanswered) are dropped, not stored.
    fn claim_batch(
        &self,
        waiting: &mut Waiting,
        permit: OwnedSemaphorePermit,
    ) -> (Vec<Pending>, InFlight) {
        let mut busy = self.gate.busy();
        let free = |busy: &Busy, c: &Channel| busy.in_flight(c) < PER_CHANNEL;
        let alone = waiting
            .posts
            .iter()
            .map(|p| &p.post.channel)
            .find(|c| waiting.alone.contains(*c) && free(&busy, c))
            .cloned();
        if let Some(channel) = &alone {
            waiting.alone.remove(channel);
        }
        let mut batch = Vec::new();
        let mut channels = HashSet::new();
        let mut left = VecDeque::with_capacity(waiting.posts.len());
        for pending in std::mem::take(&mut waiting.posts) {
            let channel = &pending.post.channel;
            let fits = match &alone {
                Some(only) => channel == only,
                None => {
                    channels.contains(channel)
                        || (free(&busy, channel) && !waiting.alone.contains(channel))
                }
            };
            if !fits || batch.len() == MAX_BATCH {
                left.push_back(pending);
                continue;
            }
            waiting.taken(channel);
            self.metrics.waiting.dec();
            if pending.reply.is_closed() {
                continue;
            }
            if channels.insert(channel.clone()) {
                busy.take(channel);
            }
            batch.push(pending);
        }
        drop(busy);
        waiting.posts = left;
        let claim = InFlight {
            gate: self.gate.clone(),
            channels,
            _permit: permit,
        };
        (batch, claim)
    }
}

/// Stores a batch and answers its posts. One channel: its lock is waited for, at
/// most `lock_wait`. Several: their locks are only tried, and the posts of a
/// channel whose lock was taken go back to the task (`put_back`), before the
/// claim is let go, so that they go next.
async fn execute(
    store: MessageStore,
    batch: Vec<Pending>,
    claim: InFlight,
    lock_wait: Duration,
    put_back: mpsc::UnboundedSender<Vec<Pending>>,
) {
    let wait = if claim.channels.len() == 1 {
        lock_wait
    } else {
        Duration::ZERO
    };
    let (posts, replies): (Vec<NewPost>, Vec<Reply>) =
        batch.into_iter().map(|p| (p.post, p.reply)).unzip();
    match store.insert_batch(&posts, wait).await {
        Ok(messages) => {
            let mut left_out = Vec::new();
            let mut answers = Vec::with_capacity(replies.len());
            for ((post, reply), message) in posts.into_iter().zip(replies).zip(messages) {
                match message {
                    Some(message) => answers.push((reply, message)),
                    None => left_out.push(Pending { post, reply }),
                }
            }
            if !left_out.is_empty() {
                // The task only goes when the batcher is dropped and nothing is in
                // flight; were it gone, these requests would be answered 500.
                let _ = put_back.send(left_out);
            }
            // The channels are free for the next statement before anyone is answered.
            drop(claim);
            for (reply, message) in answers {
                // The client may have gone away; its post is stored all the same.
                let _ = reply.send(Ok(message));
            }
        }
        // Logged once for the batch, answered to each of its posts.
        Err(error) => {
            drop(claim);
            let error = statement_error(error, &posts[0].channel);
            for reply in replies {
                let _ = reply.send(Err(error.clone()));
            }
        }
    }
}
