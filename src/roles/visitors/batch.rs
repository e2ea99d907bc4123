//! Group commit for visits. Concurrent visits are coalesced into one statement, one
//! round trip and one commit (`VisitStore::record_batch`); every request is answered
//! only after the batch holding its visit has committed, with its own count.
//!
//! A visit that finds nothing queued and a slot free is sent at once by its own
//! request, alone, with the single-visit statement: a quiet site sees no added
//! latency and no hand-over between tasks. While batches are in flight, visits queue;
//! a batch is sent when a slot frees up, when it is full (`batch_max_size`), and, if
//! `batch_max_wait_us` is above 0, not before that long has passed since its first
//! visit unless it is full (PostgreSQL's `commit_delay` idea: wait a little for
//! company only when the database is busy anyway).

use std::sync::Arc;
use std::time::Duration;

use prometheus::IntCounter;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::time::Instant;

use super::store::{Visit, VisitStore};
use crate::domain::VisitorId;
use crate::http::ApiError;
use crate::storage::to_api_error;

#[derive(Debug, Clone, Copy)]
pub struct BatchSettings {
    /// Most visits in one statement.
    pub max_size: usize,
    /// How long a batch may wait for more visits while others are in flight.
    pub max_wait: Duration,
    /// Batches executing at once (each holds one database connection).
    pub max_in_flight: usize,
    /// How long a visit may wait for room in the queue before answering 503.
    pub queue_timeout: Duration,
}

type Reply = oneshot::Sender<Result<Visit, ApiError>>;

struct Pending {
    visitor: VisitorId,
    reply: Reply,
}

/// Hands visits to the batching task; cheap to share.
pub struct VisitBatcher {
    queue: mpsc::Sender<Pending>,
    queue_timeout: Duration,
    store: VisitStore,
    slots: Arc<Semaphore>,
    batches: IntCounter,
}

impl VisitBatcher {
    /// Starts the batching task; it ends when the batcher is dropped.
    /// `batches` counts the statements (visits / batches is the mean batch size).
    pub fn start(store: VisitStore, settings: BatchSettings, batches: IntCounter) -> Self {
        let max_size = settings.max_size.max(1);
        let max_in_flight = settings.max_in_flight.max(1);
        // Room for every in-flight batch and as many waiting: beyond that, back-pressure.
        let (queue, receiver) = mpsc::channel(max_size * (max_in_flight + 1));
        let slots = Arc::new(Semaphore::new(max_in_flight));
        tokio::spawn(run(
            store.clone(),
            batches.clone(),
            receiver,
            max_size,
            settings.max_wait,
            slots.clone(),
        ));
        Self {
            queue,
            queue_timeout: settings.queue_timeout,
            store,
            slots,
            batches,
        }
    }

    /// Records one visit; returns once it is committed.
    pub async fn record(&self, visitor: VisitorId) -> Result<Visit, ApiError> {
        // Alone (nothing queued, a slot free): this request sends its visit itself,
        // with no hand-over to the batching task, exactly as without batching.
        if self.queue.capacity() == self.queue.max_capacity()
            && let Ok(slot) = self.slots.clone().try_acquire_owned()
        {
            self.batches.inc();
            let visit = self
                .store
                .record(&visitor)
                .await
                .map_err(|error| to_api_error(error, "recording visits"));
            drop(slot);
            return visit;
        }
        let (reply, answer) = oneshot::channel();
        let pending = Pending { visitor, reply };
        match tokio::time::timeout(self.queue_timeout, self.queue.send(pending)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => {
                tracing::error!("the visit batcher has stopped");
                return Err(ApiError::internal());
            }
            Err(_) => {
                tracing::warn!("visit queue full: the database is not keeping up");
                return Err(ApiError::unavailable("database"));
            }
        }
        answer.await.unwrap_or_else(|_| {
            // The batch task died (a panic): the visit's fate is unknown.
            tracing::error!("a visit batch ended without an answer");
            Err(ApiError::internal())
        })
    }
}

async fn run(
    store: VisitStore,
    batches: IntCounter,
    mut receiver: mpsc::Receiver<Pending>,
    max_size: usize,
    max_wait: Duration,
    slots: Arc<Semaphore>,
) {
    let max_in_flight = slots.available_permits();
    while let Some(first) = receiver.recv().await {
        let started = Instant::now();
        let mut batch = vec![first];
        drain(&mut receiver, &mut batch, max_size);
        // Busy: others are in flight, so a little waiting for company costs nothing
        // that the database is not already making everyone wait.
        let busy = slots.available_permits() < max_in_flight;
        if busy && !max_wait.is_zero() {
            let deadline = started + max_wait;
            while batch.len() < max_size {
                match tokio::time::timeout_at(deadline, receiver.recv()).await {
                    Ok(Some(pending)) => {
                        batch.push(pending);
                        drain(&mut receiver, &mut batch, max_size);
                    }
                    Ok(None) | Err(_) => break,
                }
            }
        }
        // Wait for a free slot, taking in what arrives meanwhile.
        let permit = loop {
            if batch.len() >= max_size {
                break slots.clone().acquire_owned().await;
            }
            tokio::select! {
                biased;
                permit = slots.clone().acquire_owned() => break permit,
                next = receiver.recv() => match next {
                    Some(pending) => {
                        batch.push(pending);
                        drain(&mut receiver, &mut batch, max_size);
                    }
                    None => break slots.clone().acquire_owned().await,
                },
            }
        };
        let Ok(permit) = permit else {
            // The semaphore is never closed; answer rather than hang if it were.
            fail(batch, &ApiError::internal());
            continue;
        };
        let store = store.clone();
        batches.inc();
        tokio::spawn(async move {
            execute(&store, batch).await;
            drop(permit);
        });
    }
}

/// Takes what is already queued, up to `max_size` in the batch.
fn drain(receiver: &mut mpsc::Receiver<Pending>, batch: &mut Vec<Pending>, max_size: usize) {
    while batch.len() < max_size {
        match receiver.try_recv() {
            Ok(pending) => batch.push(pending),
            Err(_) => break,
        }
    }
}

async fn execute(store: &VisitStore, batch: Vec<Pending>) {
    let visitors: Vec<VisitorId> = batch.iter().map(|p| p.visitor).collect();
    match store.record_batch(&visitors).await {
        Ok(visits) => {
            for (pending, visit) in batch.into_iter().zip(visits) {
                // The client may have gone away; its visit still counts.
                let _ = pending.reply.send(Ok(visit));
            }
        }
        // Logged once for the batch, answered to each of its visits.
        Err(error) => fail(batch, &to_api_error(error, "recording visits")),
    }
}

fn fail(batch: Vec<Pending>, error: &ApiError) {
    for pending in batch {
        let _ = pending.reply.send(Err(error.clone()));
    }
}
