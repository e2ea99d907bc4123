//! The transactional outbox: rows are stored with `published = false` in the same
//! commit that answers the client, and a relay publishes them to the bus in id
//! order, marking each once the broker has it. Whatever the broker's state, nothing
//! stored is lost; on PostgreSQL one relay at a time (across instances) publishes,
//! so the order on the bus is the id order.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use prometheus::{IntCounter, IntGauge};
use sea_orm::{ConnectionTrait, DatabaseBackend, DbErr, QueryResult, TransactionTrait};
use serde::Serialize;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::bus::Bus;
use crate::storage::{Database, statement};

const BATCH: u32 = 256;
/// Other instances' rows and retries are picked up at least this often.
const POLL: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// A row that travels through the outbox.
pub trait OutboxRow: Serialize + Send + Sync + 'static {
    fn id(&self) -> i64;
    fn topic(&self) -> String;
}

/// Where the rows are and how to read one.
pub struct OutboxTable<T> {
    pub table: &'static str,
    /// Selected columns (they may differ by backend), read by `read`.
    pub columns: fn(DatabaseBackend) -> &'static str,
    /// PostgreSQL advisory lock key held by the relay that publishes.
    pub lock_key: i64,
    pub read: fn(&QueryResult) -> Result<T, DbErr>,
}

pub struct RelayMetrics {
    pub published: IntCounter,
    pub failures: IntCounter,
    pub backlog: IntGauge,
}

pub struct Outbox<T: 'static> {
    db: Database,
    table: &'static OutboxTable<T>,
    wake: Arc<Notify>,
}

impl<T: OutboxRow> Outbox<T> {
    /// Starts the relay; `wake()` after a commit publishes without waiting for the poll.
    pub fn start(
        db: Database,
        table: &'static OutboxTable<T>,
        bus: Bus,
        metrics: RelayMetrics,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        let outbox = Arc::new(Self {
            db,
            table,
            wake: Arc::new(Notify::new()),
        });
        tokio::spawn(outbox.clone().run(bus, metrics, shutdown));
        outbox
    }

    pub fn wake(&self) {
        self.wake.notify_one();
    }

    async fn run(self: Arc<Self>, bus: Bus, metrics: RelayMetrics, shutdown: CancellationToken) {
        let mut backoff = Duration::from_millis(100);
        loop {
            let outcome = if bus.is_connected() {
                self.relay_once(&bus, &metrics).await
            } else {
                Ok(Some(0))
            };
            if let Ok(backlog) = self.backlog().await {
                metrics.backlog.set(backlog);
            }
            let pause = match outcome {
                // A full batch: there may be more right away.
                Ok(Some(n)) if n == BATCH as usize => Duration::ZERO,
                Ok(_) => {
                    backoff = Duration::from_millis(100);
                    POLL
                }
                Err(error) => {
                    tracing::warn!(%error, table = self.table.table, "outbox relay could not read the database");
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    backoff
                }
            };
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = self.wake.notified() => {}
                () = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// Publishes the oldest unpublished rows in id order, stopping at the first
    /// failure. `None` when another relay holds the lock.
    async fn relay_once(&self, bus: &Bus, metrics: &RelayMetrics) -> Result<Option<usize>, DbErr> {
        let backend = self.db.backend();
        let txn = self.db.connection().begin().await?;
        if backend == DatabaseBackend::Postgres {
            let locked: bool = txn
                .query_one_raw(statement(
                    backend,
                    "SELECT pg_try_advisory_xact_lock($1) AS locked",
                    vec![self.table.lock_key.into()],
                ))
                .await?
                .map(|row| row.try_get("", "locked"))
                .transpose()?
                .unwrap_or(false);
            if !locked {
                txn.rollback().await?;
                return Ok(None);
            }
        }
        let rows = txn
            .query_all_raw(statement(
                backend,
                &format!(
                    "SELECT {} FROM {} WHERE published = $1 ORDER BY id LIMIT $2",
                    (self.table.columns)(backend),
                    self.table.table
                ),
                vec![false.into(), i64::from(BATCH).into()],
            ))
            .await?;
        let mut published = 0;
        for row in &rows {
            let item = (self.table.read)(row)?;
            let payload = match serde_json::to_vec(&item) {
                Ok(json) => Bytes::from(json),
                Err(error) => {
                    tracing::error!(%error, id = item.id(), "cannot encode an outbox row");
                    break;
                }
            };
            if let Err(error) = bus.publish(&item.topic(), payload).await {
                metrics.failures.inc();
                tracing::warn!(%error, id = item.id(), table = self.table.table, "publishing failed; will retry");
                break;
            }
            metrics.published.inc();
            txn.execute_raw(statement(
                backend,
                &format!(
                    "UPDATE {} SET published = $1 WHERE id = $2",
                    self.table.table
                ),
                vec![true.into(), item.id().into()],
            ))
            .await?;
            published += 1;
        }
        txn.commit().await?;
        Ok(Some(published))
    }

    async fn backlog(&self) -> Result<i64, DbErr> {
        let backend = self.db.backend();
        let row = self
            .db
            .connection()
            .query_one_raw(statement(
                backend,
                &format!(
                    "SELECT COUNT(*) AS n FROM {} WHERE published = $1",
                    self.table.table
                ),
                vec![false.into()],
            ))
            .await?
            .ok_or_else(|| DbErr::RecordNotFound("count returned no row".into()))?;
        row.try_get("", "n")
    }
}
