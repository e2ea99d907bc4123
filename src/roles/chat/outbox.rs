//! The outbox relay: publishes stored messages to the bus in id order, marking each
//! once the broker has it. A message stored while the broker is away waits here.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use prometheus::{IntCounter, IntGauge};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::message::topic;
use super::store::MessageStore;
use crate::bus::Bus;

const BATCH: u32 = 256;
/// Other instances' messages and retries are picked up at least this often.
const POLL: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

pub struct RelayMetrics {
    pub published: IntCounter,
    pub failures: IntCounter,
    pub backlog: IntGauge,
}

pub async fn run(
    store: MessageStore,
    bus: Bus,
    wake: Arc<Notify>,
    metrics: RelayMetrics,
    shutdown: CancellationToken,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let outcome = if bus.is_connected() {
            let bus = &bus;
            let metrics = &metrics;
            store
                .relay(BATCH, |message| async move {
                    let payload = match serde_json::to_vec(&message) {
                        Ok(json) => Bytes::from(json),
                        Err(_) => return false,
                    };
                    match bus.publish(&topic(&message.channel), payload).await {
                        Ok(()) => {
                            metrics.published.inc();
                            true
                        }
                        Err(error) => {
                            metrics.failures.inc();
                            tracing::warn!(%error, id = message.id, "publishing a chat message failed");
                            false
                        }
                    }
                })
                .await
        } else {
            Ok(Some(0))
        };
        if let Ok(backlog) = store.backlog().await {
            metrics.backlog.set(backlog);
        }
        let pause = match outcome {
            // A full batch: there may be more right away.
            Ok(Some(n)) if n == BATCH as usize => {
                backoff = Duration::from_millis(100);
                Duration::ZERO
            }
            Ok(_) => {
                backoff = Duration::from_millis(100);
                POLL
            }
            Err(error) => {
                tracing::warn!(%error, "outbox relay could not read the database");
                backoff = (backoff * 2).min(MAX_BACKOFF);
                backoff
            }
        };
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = wake.notified() => {}
            () = tokio::time::sleep(pause) => {}
        }
    }
}
