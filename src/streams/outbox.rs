//! The transactional outbox: events are stored with `published = false` in the same
//! commit that answers the client, and a relay publishes them to the bus in id
//! order. Whatever the broker's state, nothing stored is lost; on PostgreSQL one
//! relay at a time (across instances) publishes, so the order on the bus is the id
//! order, and the others stand by.
//!
//! The relay is pipelined: up to `WINDOW` publishes are in flight at once over the
//! one broker connection (which keeps their order), each completed by its own
//! PUBACK; the acknowledged prefix of a batch is marked published in one statement.
//! Delivery is at least once: a crash between the PUBACKs and the UPDATE publishes
//! those rows again, and the broadcast drops what it has already seen.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use futures_util::stream::FuturesOrdered;
use prometheus::{IntCounter, IntGauge};
use sea_orm::{ConnectionTrait, DatabaseBackend, DbErr, QueryResult, TransactionTrait, Value};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::{StreamEvent, StreamItem};
use crate::bus::Bus;
use crate::storage::{Database, statement};

/// Rows read per round.
const BATCH: u32 = 1024;
/// Publishes awaiting their PUBACK at once.
const WINDOW: usize = 256;
/// Other instances' rows and retries are picked up at least this often.
const POLL: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

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

/// How a round went.
enum Round {
    /// Another relay holds the lock.
    Standby,
    Published {
        full: bool,
    },
    /// Some publish failed: the rest waits for the next round.
    Stopped,
}

impl<T: StreamItem> Outbox<T> {
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
        let mut backlog_read: Option<Instant> = None;
        loop {
            // Not connected: nothing to try, and nothing to back off from either, so
            // the backlog goes out as soon as the broker is back.
            let outcome = if bus.can_publish() {
                self.relay_once(&bus, &metrics).await
            } else {
                Ok(Round::Standby)
            };
            // A round that published everything it read leaves nothing behind (as
            // of its read; later rows woke the relay again): no count needed. Else
            // (standing by, failing, or working through a backlog) the count over
            // the table, every `POLL` at most.
            if matches!(outcome, Ok(Round::Published { full: false })) {
                metrics.backlog.set(0);
                backlog_read = Some(Instant::now());
            } else if backlog_read.is_none_or(|at| at.elapsed() >= POLL) {
                if let Ok(backlog) = self.backlog().await {
                    metrics.backlog.set(backlog);
                }
                backlog_read = Some(Instant::now());
            }
            let pause = match outcome {
                // A full batch: there may be more right away.
                Ok(Round::Published { full: true, .. }) => Duration::ZERO,
                Ok(Round::Published { .. } | Round::Standby) => {
                    backoff = Duration::from_millis(100);
                    POLL
                }
                Ok(Round::Stopped) => {
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    backoff
                }
                Err(error) => {
                    tracing::warn!(%error, table = self.table.table, "outbox relay could not use the database");
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    backoff
                }
            };
            if pause.is_zero() {
                if shutdown.is_cancelled() {
                    return;
                }
                continue;
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = self.wake.notified() => {}
                () = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// Publishes the oldest unpublished rows in id order, many in flight at once,
    /// and marks the acknowledged prefix published in one statement.
    ///
    /// PostgreSQL: in a transaction holding the relay's advisory lock, so only one
    /// relay publishes. SQLite: no transaction (one process owns the file): a read
    /// transaction held across the PUBACKs could not become a write transaction
    /// once a post had committed meanwhile (SQLITE_BUSY), and the whole round
    /// would go out again.
    async fn relay_once(&self, bus: &Bus, metrics: &RelayMetrics) -> Result<Round, DbErr> {
        let backend = self.db.backend();
        if backend != DatabaseBackend::Postgres {
            let connection = self.db.connection();
            let rows = self.unpublished(connection).await?;
            let (round, marked) = self.publish_round(connection, &rows, bus, metrics).await?;
            metrics.published.inc_by(marked);
            return Ok(round);
        }
        let txn = self.db.connection().begin().await?;
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
            return Ok(Round::Standby);
        }
        // A statement of its own after the lock: its snapshot then holds everything
        // the previous relay committed before letting go of the lock. (Read in the
        // statement that takes the lock, the snapshot predates the lock, and rows
        // that relay just published would be published again.)
        let rows = self.unpublished(&txn).await?;
        let (round, marked) = self.publish_round(&txn, &rows, bus, metrics).await?;
        txn.commit().await?;
        metrics.published.inc_by(marked);
        Ok(round)
    }

    /// The oldest unpublished rows, a batch at most. `FALSE` written in, not bound:
    /// the plan follows the column's statistics (few unpublished rows: the index)
    /// even once PostgreSQL caches a generic plan.
    async fn unpublished(
        &self,
        connection: &impl ConnectionTrait,
    ) -> Result<Vec<QueryResult>, DbErr> {
        let backend = self.db.backend();
        connection
            .query_all_raw(statement(
                backend,
                &format!(
                    "SELECT {} FROM {} WHERE published = FALSE ORDER BY id LIMIT $1",
                    (self.table.columns)(backend),
                    self.table.table
                ),
                vec![i64::from(BATCH).into()],
            ))
            .await
    }

    /// One batch: publish, then mark the acknowledged prefix (how many it marked).
    async fn publish_round(
        &self,
        txn: &impl ConnectionTrait,
        rows: &[QueryResult],
        bus: &Bus,
        metrics: &RelayMetrics,
    ) -> Result<(Round, u64), DbErr> {
        let backend = self.db.backend();
        let full = rows.len() == BATCH as usize;
        let mut acked: Vec<i64> = Vec::with_capacity(rows.len());
        let mut stopped = false;
        let mut in_flight = FuturesOrdered::new();
        let mut pending = rows.iter();
        loop {
            while !stopped && in_flight.len() < WINDOW {
                let Some(row) = pending.next() else { break };
                let item = (self.table.read)(row)?;
                let event = match StreamEvent::encode(&item) {
                    Ok(event) => event,
                    Err(error) => {
                        tracing::error!(%error, id = item.id(), "cannot encode an outbox row");
                        stopped = true;
                        break;
                    }
                };
                let topic = item.topic();
                in_flight.push_back(async move {
                    let outcome = bus.publish(&topic, event.json).await;
                    (event.id, outcome)
                });
            }
            let Some((id, outcome)) = in_flight.next().await else {
                break;
            };
            match outcome {
                // Only the unbroken prefix counts: a later row acknowledged after an
                // earlier failure goes out again, in order, next round.
                Ok(()) if !stopped => acked.push(id),
                Ok(()) => {}
                Err(error) => {
                    if !stopped {
                        metrics.failures.inc();
                        tracing::warn!(%error, id, table = self.table.table, "publishing failed; will retry");
                    }
                    stopped = true;
                }
            }
        }
        if !acked.is_empty() {
            mark_published(txn, backend, self.table.table, &acked).await?;
        }
        let round = if stopped {
            Round::Stopped
        } else {
            Round::Published { full }
        };
        Ok((round, acked.len() as u64))
    }

    async fn backlog(&self) -> Result<i64, DbErr> {
        let backend = self.db.backend();
        let row = self
            .db
            .connection()
            .query_one_raw(statement(
                backend,
                &format!(
                    "SELECT COUNT(*) AS n FROM {} WHERE published = FALSE",
                    self.table.table
                ),
                vec![],
            ))
            .await?
            .ok_or_else(|| DbErr::RecordNotFound("count returned no row".into()))?;
        row.try_get("", "n")
    }
}

/// One `UPDATE … WHERE id = ANY(…)` for the whole acknowledged prefix.
///
/// PostgreSQL gets the ids as one `BIGINT[]` parameter: a constant array to the
/// planner, matched through a hash table if it scans the table. They used to travel
/// as text cast to `BIGINT[]` in the statement, which is not a constant: a plan
/// that scanned the table parsed the whole list again for every row (`perf`:
/// PostgreSQL's `array_in` and the array comparison on top, the relay's UPDATE
/// active in most samples, posts to one channel at a third of their rate).
async fn mark_published(
    txn: &impl ConnectionTrait,
    backend: DatabaseBackend,
    table: &str,
    ids: &[i64],
) -> Result<(), DbErr> {
    let (sql, value) = match backend {
        DatabaseBackend::Postgres => (
            format!("UPDATE {table} SET published = TRUE WHERE id = ANY($1)"),
            Value::from(ids.to_vec()),
        ),
        _ => {
            let list = ids.iter().map(i64::to_string).collect::<Vec<_>>().join(",");
            (
                format!(
                    "UPDATE {table} SET published = 1 WHERE id IN (SELECT value FROM json_each($1))"
                ),
                Value::from(format!("[{list}]")),
            )
        }
    };
    txn.execute_raw(statement(backend, &sql, vec![value]))
        .await?;
    Ok(())
}
