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
//!
//! What this instance commits does not wait for the relay: `committed` hands the
//! events, as they came back from the commit, to a publisher of their own (no
//! transaction, lock or read back in front of the broker), and the acknowledged
//! ones are marked published in batches by a third task. The relay then only
//! handles the rest: other instances' rows, publishes that failed, and what was
//! committed while the broker was away. So the bus carries each instance's
//! events in its commit order, but the instances' events interleave, and an
//! event can overtake an older one the relay still holds: the broadcast notices
//! the hole by its `seq` and reads the stream back from the database.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use futures_util::stream::{FuturesOrdered, FuturesUnordered};
use prometheus::{IntCounter, IntGauge};
use sea_orm::{ConnectionTrait, DatabaseBackend, DbErr, QueryResult, TransactionTrait, Value};
use tokio::sync::{Notify, mpsc};
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
/// Events this instance committed that the direct publisher answers for at once
/// (queued, in flight, or acknowledged and not yet marked). Past that, what is
/// committed waits for the relay.
const DIRECT_LIMIT: usize = 8192;
/// The relay leaves a row to the instance that committed it for this long: it
/// publishes only rows it already saw unpublished in a round at least this old
/// (or that this instance gave up on), so it does not race the direct publishers
/// of this instance or another one for fresh rows.
const GRACE: Duration = Duration::from_millis(250);

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
    bus: Bus,
    metrics: RelayMetrics,
    wake: Notify,
    direct: mpsc::Sender<Committed>,
    claims: Mutex<Claims>,
    /// Acknowledged by the broker, to be marked published.
    acked: Mutex<Vec<i64>>,
    mark: Notify,
    /// Held by `append_in_order` from the append to the hand-over.
    appending: tokio::sync::Mutex<()>,
}

/// `append_in_order` waited its turn longer than it may.
#[derive(Debug)]
pub struct TurnTimeout;

/// Ids being published by this instance, by either publisher: whoever claims an
/// id first publishes it, the other leaves it alone.
#[derive(Default)]
struct Claims {
    ids: HashSet<i64>,
    /// Marked published while a relay round was reading: that round may have
    /// read them unpublished, so they stay claimed until it ends.
    settled: Vec<i64>,
    /// A relay round is between its read and its end.
    reading: bool,
    /// Given up by this instance's direct publisher, or committed while the
    /// broker was away: the relay need not wait for them.
    released: HashSet<i64>,
}

impl Claims {
    fn remove(&mut self, ids: &[i64]) {
        for id in ids {
            self.ids.remove(id);
        }
    }

    fn release(&mut self, ids: impl IntoIterator<Item = i64>) {
        // A hint only: past the bound, the rows wait for the grace period.
        if self.released.len() >= DIRECT_LIMIT {
            self.released.clear();
        }
        self.released.extend(ids);
    }
}

/// What one relay round may publish, and what it claimed and saw.
struct RoundState {
    /// Rows up to this id were committed at least `GRACE` ago.
    threshold: i64,
    /// Younger rows this instance gave up on: the relay need not wait for them.
    released: Vec<i64>,
    claims: Vec<i64>,
    /// The table's highest id, and when it was read.
    newest: Option<(Instant, i64)>,
}

/// Most readings of the newest id kept until they are `GRACE` old.
const NEWEST_KEPT: usize = 64;

/// An event this instance committed, on its way to the direct publisher.
struct Committed {
    topic: String,
    event: StreamEvent,
}

/// How a round went.
enum Round {
    /// Another relay holds the lock.
    Standby,
    Published {
        /// A whole batch was read and some of it published: read again at once.
        full: bool,
        /// Everything there was to read went out.
        drained: bool,
    },
    /// Some publish failed: the rest waits for the next round.
    Stopped,
}

impl<T: StreamItem> Outbox<T> {
    /// Starts the relay and the direct publisher; hand what this instance commits
    /// to `committed`.
    pub fn start(
        db: Database,
        table: &'static OutboxTable<T>,
        bus: Bus,
        metrics: RelayMetrics,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        let (direct, queue) = mpsc::channel(DIRECT_LIMIT);
        let outbox = Arc::new(Self {
            db,
            table,
            bus,
            metrics,
            wake: Notify::new(),
            direct,
            claims: Mutex::new(Claims::default()),
            acked: Mutex::new(Vec::new()),
            mark: Notify::new(),
            appending: tokio::sync::Mutex::new(()),
        });
        tokio::spawn(outbox.clone().run(shutdown.clone()));
        tokio::spawn(outbox.clone().publish_direct(queue, shutdown.clone()));
        tokio::spawn(outbox.clone().mark_direct(shutdown));
        outbox
    }

    /// Events this instance just committed, in commit order: published at once.
    /// Whatever cannot go that way (the broker is away, too many are waiting)
    /// wakes the relay, which reads it back from the table.
    pub fn committed<'a>(&self, items: impl IntoIterator<Item = &'a T>) {
        if !self.bus.can_publish() {
            lock(&self.claims).release(items.into_iter().map(StreamItem::id));
            self.wake.notify_one();
            return;
        }
        for item in items {
            let event = match StreamEvent::encode(item) {
                Ok(event) => event,
                Err(error) => {
                    tracing::error!(%error, id = item.id(), "cannot encode an outbox row");
                    self.wake.notify_one();
                    return;
                }
            };
            let id = event.id;
            {
                let mut claims = lock(&self.claims);
                let on_their_way = claims.ids.len() - claims.settled.len();
                if on_their_way >= DIRECT_LIMIT || claims.ids.len() >= 4 * DIRECT_LIMIT {
                    claims.release([id]);
                    drop(claims);
                    self.wake.notify_one();
                    return;
                }
                if !claims.ids.insert(id) {
                    // The relay read it back first and publishes it.
                    continue;
                }
            }
            // Room is certain: the queue holds no more than the claims.
            if self
                .direct
                .try_send(Committed {
                    topic: item.topic(),
                    event,
                })
                .is_err()
            {
                self.release(&[id]);
                return;
            }
        }
    }

    /// Runs `append` (which commits one row) and hands its row to `committed`,
    /// one append at a time, so concurrent appends reach the bus in commit order.
    /// Waits at most `wait` for the one before. (Chat's batches on PostgreSQL keep
    /// their order by holding their channels instead.)
    pub async fn append_in_order<E>(
        &self,
        wait: Duration,
        append: impl Future<Output = Result<T, E>>,
    ) -> Result<Result<T, E>, TurnTimeout> {
        let _turn = tokio::time::timeout(wait, self.appending.lock())
            .await
            .map_err(|_| TurnTimeout)?;
        let appended = append.await;
        if let Ok(item) = &appended {
            self.committed([item]);
        }
        Ok(appended)
    }

    /// The direct publisher gives these up (not acknowledged, or not marked):
    /// the relay takes them over.
    fn release(&self, ids: &[i64]) {
        let mut claims = lock(&self.claims);
        claims.remove(ids);
        claims.release(ids.iter().copied());
        drop(claims);
        self.wake.notify_one();
    }

    /// The direct publisher marked these published.
    fn settle(&self, ids: Vec<i64>) {
        let mut claims = lock(&self.claims);
        if claims.reading {
            claims.settled.extend(ids);
        } else {
            claims.remove(&ids);
        }
    }

    /// A relay round starts reading: what is marked from now on stays claimed
    /// until it ends.
    fn start_round(&self) {
        lock(&self.claims).reading = true;
    }

    /// A relay round ended (marked, or left for the next round): its own claims
    /// and those settled meanwhile go.
    fn end_round(&self, round: &[i64]) {
        let mut claims = lock(&self.claims);
        claims.reading = false;
        let settled = std::mem::take(&mut claims.settled);
        claims.remove(&settled);
        claims.remove(round);
    }

    /// Publishes what `committed` queued, in its order, in rounds: everything that
    /// is waiting (up to `WINDOW`) goes out together, and the next round once the
    /// broker has acknowledged this one. An event alone goes out at once; under
    /// load, what arrives during a round goes out in one burst, which the broadcast
    /// writes to each client in one `send` (one by one, the broadcast used 2.6
    /// times the CPU for the same deliveries, docs/benchmarks.md).
    async fn publish_direct(
        self: Arc<Self>,
        mut queue: mpsc::Receiver<Committed>,
        shutdown: CancellationToken,
    ) {
        let mut in_flight = FuturesUnordered::new();
        let mut received = Vec::new();
        loop {
            let room = if in_flight.is_empty() { WINDOW } else { 0 };
            tokio::select! {
                biased;
                () = shutdown.cancelled() => return,
                Some((id, outcome)) = in_flight.next(), if !in_flight.is_empty() => {
                    match outcome {
                        Ok(()) => {
                            self.metrics.published.inc();
                            lock(&self.acked).push(id);
                            self.mark.notify_one();
                        }
                        Err(error) => {
                            self.metrics.failures.inc();
                            tracing::warn!(%error, id, table = self.table.table, "publishing failed; the relay will retry");
                            self.release(&[id]);
                        }
                    }
                }
                n = queue.recv_many(&mut received, room), if room > 0 => {
                    if n == 0 {
                        return;
                    }
                    // Queued one after the other, so they leave in this order. After
                    // a failure the rest goes to the relay too (later rounds may
                    // still overtake them; the broadcast reads such holes back).
                    let mut given_up = Vec::new();
                    for Committed { topic, event } in received.drain(..) {
                        let id = event.id;
                        if !given_up.is_empty() {
                            given_up.push(id);
                            continue;
                        }
                        match self.bus.queue(&topic, event.json).await {
                            Ok(ack) => in_flight.push(async move { (id, ack.wait().await) }),
                            Err(error) => {
                                self.metrics.failures.inc();
                                tracing::warn!(%error, id, table = self.table.table, "publishing failed; the relay will retry");
                                given_up.push(id);
                            }
                        }
                    }
                    if !given_up.is_empty() {
                        self.release(&given_up);
                    }
                }
            }
        }
    }

    /// Marks what the direct publisher got acknowledged, all that is waiting in
    /// one statement, while the next ones are acknowledged.
    async fn mark_direct(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            let stopping = tokio::select! {
                () = shutdown.cancelled() => true,
                () = self.mark.notified() => false,
            };
            let ids = std::mem::take(&mut *lock(&self.acked));
            if !ids.is_empty() {
                match self.mark_unless_locked(&ids).await {
                    Ok(()) => self.settle(ids),
                    Err(error) => {
                        tracing::warn!(%error, table = self.table.table, "could not mark published events; the relay will publish them again");
                        // The broadcast drops the repeats.
                        self.release(&ids);
                    }
                }
            }
            if stopping {
                return;
            }
        }
    }

    /// Marks `ids` published, except rows a relay's transaction holds: that relay
    /// is publishing them and marks them itself (so neither ever waits for, or
    /// deadlocks with, the other).
    async fn mark_unless_locked(&self, ids: &[i64]) -> Result<(), DbErr> {
        let backend = self.db.backend();
        let connection = self.db.connection();
        if backend != DatabaseBackend::Postgres {
            return mark_published(connection, backend, self.table.table, ids).await;
        }
        let table = self.table.table;
        connection
            .execute_raw(statement(
                backend,
                &format!(
                    "UPDATE {table} SET published = TRUE WHERE id IN \
                     (SELECT id FROM {table} WHERE id = ANY($1) AND published = FALSE \
                      FOR UPDATE SKIP LOCKED)"
                ),
                vec![Value::from(ids.to_vec())],
            ))
            .await?;
        Ok(())
    }

    async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let bus = &self.bus;
        let metrics = &self.metrics;
        let mut backoff = Duration::from_millis(100);
        let mut backlog_read: Option<Instant> = None;
        let mut threshold = 0;
        // The table's newest id as rounds read it: the threshold once `GRACE` old.
        let mut newest: VecDeque<(Instant, i64)> = VecDeque::new();
        loop {
            while let Some(&(at, id)) = newest.front()
                && at.elapsed() >= GRACE
            {
                threshold = threshold.max(id);
                newest.pop_front();
            }
            // Not connected: nothing to try, and nothing to back off from either, so
            // the backlog goes out as soon as the broker is back.
            let outcome = if bus.can_publish() {
                let released = {
                    let mut claims = lock(&self.claims);
                    // Old enough now anyway.
                    claims.released.retain(|id| *id > threshold);
                    claims.released.iter().copied().collect()
                };
                let mut round = RoundState {
                    threshold,
                    released,
                    claims: Vec::new(),
                    newest: None,
                };
                self.start_round();
                let outcome = self.relay_once(bus, metrics, &mut round).await;
                self.end_round(&round.claims);
                if let Some(reading) = round.newest {
                    // Full: the latest reading replaces the one before it.
                    if newest.len() >= NEWEST_KEPT {
                        newest.pop_back();
                    }
                    newest.push_back(reading);
                }
                outcome
            } else {
                Ok(Round::Standby)
            };
            // A round that published everything it read leaves nothing behind (as
            // of its read; later rows woke the relay again): no count needed. Else
            // (standing by, failing, or working through a backlog) the count over
            // the table, every `POLL` at most.
            if matches!(outcome, Ok(Round::Published { drained: true, .. })) {
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
    /// The ids it claims go to `claims`, let go of whatever becomes of the round.
    async fn relay_once(
        &self,
        bus: &Bus,
        metrics: &RelayMetrics,
        round: &mut RoundState,
    ) -> Result<Round, DbErr> {
        let backend = self.db.backend();
        if backend != DatabaseBackend::Postgres {
            let connection = self.db.connection();
            round.newest = Some(self.newest(connection).await?);
            let rows = self.unpublished(connection, round).await?;
            let (round, marked) = self
                .publish_round(connection, &rows, bus, metrics, round)
                .await?;
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
        round.newest = Some(self.newest(&txn).await?);
        let rows = self.unpublished(&txn, round).await?;
        let (round, marked) = self.publish_round(&txn, &rows, bus, metrics, round).await?;
        txn.commit().await?;
        metrics.published.inc_by(marked);
        Ok(round)
    }

    /// The table's highest id, and when it was read: nearly every row up to it
    /// had committed by then. (An id is drawn before its commit: a row whose
    /// commit stalled longer than `GRACE` after a later id's may be published by
    /// both publishers, or by the relay behind newer ones; the broadcast drops the
    /// repeat or reads the hole back.)
    async fn newest(&self, connection: &impl ConnectionTrait) -> Result<(Instant, i64), DbErr> {
        let sql = format!("SELECT COALESCE(MAX(id), 0) AS n FROM {}", self.table.table);
        let newest = number(connection, self.db.backend(), &sql).await?;
        Ok((Instant::now(), newest))
    }

    /// The oldest unpublished rows the round may publish (old enough, or given up
    /// by this instance), a batch at most. `FALSE` written in, not bound: the plan
    /// follows the column's statistics (few unpublished rows: the index) even once
    /// PostgreSQL caches a generic plan.
    async fn unpublished(
        &self,
        connection: &impl ConnectionTrait,
        round: &RoundState,
    ) -> Result<Vec<QueryResult>, DbErr> {
        let backend = self.db.backend();
        let (released, listed) = match backend {
            DatabaseBackend::Postgres => ("id = ANY($2)", Value::from(round.released.clone())),
            _ => (
                "id IN (SELECT value FROM json_each($2))",
                Value::from(json_list(&round.released)),
            ),
        };
        connection
            .query_all_raw(statement(
                backend,
                &format!(
                    "SELECT {} FROM {} WHERE published = FALSE AND (id <= $1 OR {released}) \
                     ORDER BY id LIMIT $3",
                    (self.table.columns)(backend),
                    self.table.table
                ),
                vec![round.threshold.into(), listed, i64::from(BATCH).into()],
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
        round: &mut RoundState,
    ) -> Result<(Round, u64), DbErr> {
        let backend = self.db.backend();
        let mut skipped = 0;
        let mut acked: Vec<i64> = Vec::with_capacity(rows.len());
        let mut stopped = false;
        let mut in_flight = FuturesOrdered::new();
        let mut pending = rows.iter();
        loop {
            while !stopped && in_flight.len() < WINDOW {
                let Some(row) = pending.next() else { break };
                let item = (self.table.read)(row)?;
                let id = item.id();
                {
                    let mut claims = lock(&self.claims);
                    claims.released.remove(&id);
                    // This instance's direct publisher has it.
                    if !claims.ids.insert(id) {
                        skipped += 1;
                        continue;
                    }
                }
                round.claims.push(id);
                let event = match StreamEvent::encode(&item) {
                    Ok(event) => event,
                    Err(error) => {
                        tracing::error!(%error, id = item.id(), "cannot encode an outbox row");
                        stopped = true;
                        break;
                    }
                };
                // Queued one after the other, so they leave in id order.
                let id = event.id;
                match bus.queue(&item.topic(), event.json).await {
                    Ok(ack) => in_flight.push_back(async move { (id, ack.wait().await) }),
                    Err(error) => {
                        metrics.failures.inc();
                        tracing::warn!(%error, id, table = self.table.table, "publishing failed; will retry");
                        stopped = true;
                        break;
                    }
                }
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
        // A batch that was all the direct publisher's is no reason to read again
        // at once.
        let full = rows.len() == BATCH as usize && skipped < rows.len();
        let round = if stopped {
            Round::Stopped
        } else {
            Round::Published {
                full,
                drained: rows.len() < BATCH as usize && skipped == 0,
            }
        };
        Ok((round, acked.len() as u64))
    }

    async fn backlog(&self) -> Result<i64, DbErr> {
        let sql = format!(
            "SELECT COUNT(*) AS n FROM {} WHERE published = FALSE",
            self.table.table
        );
        number(self.db.connection(), self.db.backend(), &sql).await
    }
}

/// The number `n` that a query of one row selects.
async fn number(
    connection: &impl ConnectionTrait,
    backend: DatabaseBackend,
    sql: &str,
) -> Result<i64, DbErr> {
    connection
        .query_one_raw(statement(backend, sql, vec![]))
        .await?
        .ok_or_else(|| DbErr::RecordNotFound(format!("no row from {sql}")))?
        .try_get("", "n")
}

/// Ids as a JSON array, for SQLite's `json_each`.
fn json_list(ids: &[i64]) -> String {
    let list: Vec<String> = ids.iter().map(i64::to_string).collect();
    format!("[{}]", list.join(","))
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
        _ => (
            format!(
                "UPDATE {table} SET published = 1 WHERE id IN (SELECT value FROM json_each($1))"
            ),
            Value::from(json_list(ids)),
        ),
    };
    txn.execute_raw(statement(backend, &sql, vec![value]))
        .await?;
    Ok(())
}

/// Nothing that holds these locks can panic; were one poisoned anyway, its data
/// (ids) is still consistent enough to go on with.
fn lock<V>(mutex: &Mutex<V>) -> MutexGuard<'_, V> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
