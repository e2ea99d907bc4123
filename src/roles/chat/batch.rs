//! Group commit for chat posts. Concurrent posts, of one channel or many, are
//! stored by one statement and one commit (`MessageStore::insert_batch`, under each
//! channel's ordering lock): fewer statements, round trips and commits per post,
//! which is what limits the post rate (docs/benchmarks.md). Every request is
//! answered only after the batch holding its post has committed, with its own
//! message; a batch is stored whole or not at all, and a failed batch answers each
//! of its posts with the error.
//!
//! A post that finds nothing waiting, its channel idle and a slot free is stored at
//! once by its own request with the single-post statement: a quiet channel sees no
//! added latency. Otherwise posts wait; the next batch goes when a slot frees up.
//!
//! A channel is in at most one statement at a time (its posts wait for the one in
//! flight): a statement stuck on one channel's ordering lock (another session holds
//! it) then holds one slot, and the other channels go on through the other. Each
//! channel has a bounded backlog; past it, its posts get 503 while other channels
//! are still served.
//!
//! Order: a channel's posts are stored in the order they were queued (its
//! statements never overlap, and within one its posts are numbered in order).
//! Posts that are concurrent have no order of their own to keep; a client that
//! waits for its answer before posting again gets its posts stored in that order.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use prometheus::{IntCounter, IntGauge};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use warp::http::StatusCode;

use crate::domain::Channel;
use crate::http::ApiError;
use crate::storage::to_api_error;
use crate::streams::chat::{ChatMessage, MessageStore, NewPost};

/// Most posts in one statement.
const MAX_BATCH: usize = 256;
/// Statements in flight at once (each holds one database connection). Two: one is
/// written while the next one fills, or one is stuck on a channel's lock while the
/// other channels go on.
const MAX_IN_FLIGHT: usize = 2;
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
    /// How long a post may wait for room in the queue before answering 503.
    queue_timeout: Duration,
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
    /// Starts the batching task; it ends when the batcher is dropped.
    pub fn start(store: MessageStore, queue_timeout: Duration, metrics: BatchMetrics) -> Self {
        // Room for every in-flight batch and as many waiting: beyond that, back-pressure.
        let (queue, receiver) = mpsc::channel(MAX_BATCH * (MAX_IN_FLIGHT + 1));
        let gate = Arc::new(Gate {
            busy: Mutex::new(HashSet::new()),
            slots: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
            waiting: AtomicUsize::new(0),
            freed: Notify::new(),
        });
        tokio::spawn(run(store.clone(), metrics.clone(), gate.clone(), receiver));
        Self {
            queue,
            queue_timeout,
            store,
            gate,
            metrics,
        }
    }

    /// Stores one post; returns once it is committed.
    pub async fn insert(&self, post: NewPost) -> Result<ChatMessage, ApiError> {
        // Alone (nothing waiting, its channel idle, a slot free), or on SQLite (one
        // writer at a time anyway): this request stores its post itself, exactly as
        // without batching.
        if !self.store.batches() {
            return self.insert_alone(&post).await;
        }
        if self.queue.capacity() == self.queue.max_capacity()
            && self.gate.waiting.load(Ordering::Acquire) == 0
            && let Some(in_flight) = self.gate.claim_alone(&post.channel)
        {
            let stored = self.insert_alone(&post).await;
            drop(in_flight);
            return stored;
        }
        let (reply, answer) = oneshot::channel();
        // Room first, then the post in one step: a request dropped while it waits
        // for room (its client left) leaves no post behind and the gauge right.
        match tokio::time::timeout(self.queue_timeout, self.queue.reserve()).await {
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

    async fn insert_alone(&self, post: &NewPost) -> Result<ChatMessage, ApiError> {
        self.metrics.statements.inc();
        self.store
            .insert(&post.channel, &post.user, &post.text)
            .await
            .map_err(|e| to_api_error(e, "storing a chat message"))
    }
}

/// What the requests' fast path and the batching task share.
struct Gate {
    /// Channels with a statement in flight.
    busy: Mutex<HashSet<Channel>>,
    /// Statements in flight (each holds a database connection).
    slots: Arc<Semaphore>,
    /// Posts the task has taken off the queue and not yet sent.
    waiting: AtomicUsize,
    /// A statement ended: its slot and channels are free again.
    freed: Notify,
}

impl Gate {
    fn busy(&self) -> MutexGuard<'_, HashSet<Channel>> {
        self.busy.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A slot and the channel, if both are free right now.
    fn claim_alone(self: &Arc<Self>, channel: &Channel) -> Option<InFlight> {
        let permit = self.slots.clone().try_acquire_owned().ok()?;
        if !self.busy().insert(channel.clone()) {
            return None;
        }
        Some(InFlight {
            gate: self.clone(),
            channels: HashSet::from([channel.clone()]),
            _permit: permit,
        })
    }

    /// Takes the next batch out of `waiting`: in queue order, every post whose
    /// channel has no statement in flight, up to `MAX_BATCH`. The others stay, in
    /// order. Returns the batch, its claim, and whether a post that could go at
    /// once is left (the batch was full).
    fn claim_batch(
        self: &Arc<Self>,
        waiting: &mut Waiting,
        permit: OwnedSemaphorePermit,
    ) -> (Vec<Pending>, InFlight, bool) {
        let mut busy = self.busy();
        let mut batch = Vec::new();
        let mut channels = HashSet::new();
        let mut left = VecDeque::with_capacity(waiting.posts.len());
        let mut more = false;
        for pending in std::mem::take(&mut waiting.posts) {
            let channel = &pending.post.channel;
            let ours = channels.contains(channel);
            if !ours && busy.contains(channel) {
                left.push_back(pending);
            } else if batch.len() == MAX_BATCH {
                more |= !ours;
                left.push_back(pending);
            } else {
                if !ours {
                    busy.insert(channel.clone());
                    channels.insert(channel.clone());
                }
                waiting.taken(channel);
                batch.push(pending);
            }
        }
        drop(busy);
        waiting.posts = left;
        self.waiting.store(waiting.posts.len(), Ordering::Release);
        let claim = InFlight {
            gate: self.clone(),
            channels,
            _permit: permit,
        };
        (batch, claim, more)
    }

    /// Whether a waiting post could go now.
    fn any_free(&self, waiting: &Waiting) -> bool {
        let busy = self.busy();
        waiting.by_channel.keys().any(|c| !busy.contains(c))
    }
}

/// A statement in flight: its slot and its channels, freed when it is dropped
/// (also when the request storing a post alone is dropped mid-way).
struct InFlight {
    gate: Arc<Gate>,
    channels: HashSet<Channel>,
    _permit: OwnedSemaphorePermit,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut busy = self.gate.busy();
        for channel in &self.channels {
            busy.remove(channel);
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

    fn taken(&mut self, channel: &Channel) {
        if let Some(count) = self.by_channel.get_mut(channel) {
            *count -= 1;
            if *count == 0 {
                self.by_channel.remove(channel);
            }
        }
    }
}

async fn run(
    store: MessageStore,
    metrics: BatchMetrics,
    gate: Arc<Gate>,
    mut receiver: mpsc::Receiver<Pending>,
) {
    let mut waiting = Waiting::default();
    // Whether a waiting post's channel is free, so that a slot is worth taking.
    let mut ready = false;
    let mut open = true;
    loop {
        if !open && waiting.posts.is_empty() {
            return;
        }
        tokio::select! {
            biased;
            permit = gate.slots.clone().acquire_owned(), if ready => {
                let Ok(permit) = permit else {
                    // The semaphore is never closed; answer rather than hang if it were.
                    for pending in std::mem::take(&mut waiting.posts) {
                        let _ = pending.reply.send(Err(ApiError::internal()));
                    }
                    return;
                };
                let (batch, claim, more) = gate.claim_batch(&mut waiting, permit);
                ready = more;
                if batch.is_empty() {
                    continue;
                }
                metrics.waiting.sub(batch.len() as i64);
                metrics.statements.inc();
                tokio::spawn(execute(store.clone(), batch, claim));
            }
            next = receiver.recv(), if open && waiting.has_room() => match next {
                Some(pending) => {
                    ready |= accept(&gate, &metrics, &mut waiting, pending);
                    while waiting.has_room() {
                        let Ok(pending) = receiver.try_recv() else { break };
                        ready |= accept(&gate, &metrics, &mut waiting, pending);
                    }
                }
                None => open = false,
            },
            () = gate.freed.notified() => ready = gate.any_free(&waiting),
        }
    }
}

/// Adds an arrival to `waiting`, or refuses it when its channel's backlog is full.
/// Returns whether it can go at once (its channel is free).
fn accept(gate: &Gate, metrics: &BatchMetrics, waiting: &mut Waiting, pending: Pending) -> bool {
    let free = !gate.busy().contains(&pending.post.channel);
    match waiting.push(pending) {
        Ok(()) => free,
        Err(refused) => {
            metrics.waiting.dec();
            tracing::warn!(
                channel = refused.post.channel.as_str(),
                "chat channel backlog full: its posts are not being stored fast enough"
            );
            let _ = refused.reply.send(Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "channel_busy",
                format!(
                    "channel {} has too many posts waiting to be stored; try again shortly",
                    refused.post.channel.as_str()
                ),
            )
            .with_retry_after(1)));
            false
        }
    }
}

async fn execute(store: MessageStore, batch: Vec<Pending>, claim: InFlight) {
    let (posts, replies): (Vec<NewPost>, Vec<Reply>) =
        batch.into_iter().map(|p| (p.post, p.reply)).unzip();
    let stored = store.insert_batch(&posts).await;
    // The channels are free for the next statement before anyone is answered.
    drop(claim);
    match stored {
        Ok(messages) => {
            for (reply, message) in replies.into_iter().zip(messages) {
                // The client may have gone away; its post is stored all the same.
                let _ = reply.send(Ok(message));
            }
        }
        // Logged once for the batch, answered to each of its posts.
        Err(error) => {
            let error = to_api_error(error, "storing chat messages");
            for reply in replies {
                let _ = reply.send(Err(error.clone()));
            }
        }
    }
}
