//! Group commit for chat posts. Concurrent posts, of one channel or many, are
//! stored by one statement and one commit (`MessageStore::insert_batch`, under each
//! channel's ordering lock): fewer statements, round trips and commits per post,
//! which is what limits the post rate (docs/benchmarks.md). Every request is
//! answered only after the batch holding its post has committed, with its own
//! message; a batch is stored whole or not at all, and a failed batch answers each
//! of its posts with the error.
//!
//! A post that finds nothing queued and a slot free is stored at once by its own
//! request with the single-post statement: a quiet channel sees no added latency.
//! While batches are in flight, posts queue; the next batch goes when a slot frees
//! up or it is full. Order: within a batch, a channel's posts are numbered in the
//! order they were queued; across batches, the channels' locks order them. Posts
//! that are concurrent have no order of their own to keep; a client that waits for
//! its answer before posting again gets its posts stored in that order.

use std::sync::Arc;
use std::time::Duration;

use prometheus::{IntCounter, IntGauge};
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::http::ApiError;
use crate::storage::to_api_error;
use crate::streams::chat::{ChatMessage, MessageStore, NewPost};

/// Most posts in one statement.
const MAX_BATCH: usize = 256;
/// Batches being stored at once (each holds one database connection). Two: one
/// is written while the next one fills.
const MAX_IN_FLIGHT: usize = 2;

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
    slots: Arc<Semaphore>,
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
        let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
        tokio::spawn(run(store.clone(), metrics.clone(), receiver, slots.clone()));
        Self {
            queue,
            queue_timeout,
            store,
            slots,
            metrics,
        }
    }

    /// Stores one post; returns once it is committed.
    pub async fn insert(&self, post: NewPost) -> Result<ChatMessage, ApiError> {
        // Alone (nothing queued, a slot free), or on SQLite (one writer at a time
        // anyway): this request stores its post itself, exactly as without batching.
        if !self.store.batches() {
            return self.insert_alone(&post).await;
        }
        if self.queue.capacity() == self.queue.max_capacity()
            && let Ok(slot) = self.slots.clone().try_acquire_owned()
        {
            let stored = self.insert_alone(&post).await;
            drop(slot);
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

async fn run(
    store: MessageStore,
    metrics: BatchMetrics,
    mut receiver: mpsc::Receiver<Pending>,
    slots: Arc<Semaphore>,
) {
    while let Some(first) = receiver.recv().await {
        let mut batch = vec![first];
        drain(&mut receiver, &mut batch);
        // Wait for a free slot, taking in what arrives meanwhile.
        let permit = loop {
            if batch.len() >= MAX_BATCH {
                break slots.clone().acquire_owned().await;
            }
            tokio::select! {
                biased;
                permit = slots.clone().acquire_owned() => break permit,
                next = receiver.recv() => match next {
                    Some(pending) => {
                        batch.push(pending);
                        drain(&mut receiver, &mut batch);
                    }
                    None => break slots.clone().acquire_owned().await,
                },
            }
        };
        metrics.waiting.sub(batch.len() as i64);
        let Ok(permit) = permit else {
            // The semaphore is never closed; answer rather than hang if it were.
            fail(batch, &ApiError::internal());
            continue;
        };
        let store = store.clone();
        metrics.statements.inc();
        tokio::spawn(async move {
            execute(&store, batch).await;
            drop(permit);
        });
    }
}

/// Takes what is already queued, up to `MAX_BATCH` in the batch.
fn drain(receiver: &mut mpsc::Receiver<Pending>, batch: &mut Vec<Pending>) {
    while batch.len() < MAX_BATCH {
        match receiver.try_recv() {
            Ok(pending) => batch.push(pending),
            Err(_) => break,
        }
    }
}

async fn execute(store: &MessageStore, batch: Vec<Pending>) {
    let (posts, replies): (Vec<NewPost>, Vec<Reply>) =
        batch.into_iter().map(|p| (p.post, p.reply)).unzip();
    match store.insert_batch(&posts).await {
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

fn fail(batch: Vec<Pending>, error: &ApiError) {
    for pending in batch {
        let _ = pending.reply.send(Err(error.clone()));
    }
}
