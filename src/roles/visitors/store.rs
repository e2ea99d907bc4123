//! The visit counter in the database: one round trip and one commit for a visit or
//! for a whole batch of them, no hot row, no `COUNT(*)`.

use std::collections::{BTreeMap, HashMap};

use sea_orm::{ConnectionTrait, DatabaseBackend, DbErr, Statement, TransactionTrait, Value};
use serde::{Deserialize, Serialize};

use crate::domain::VisitorId;
use crate::storage::Database;
use migration::VISIT_TOTAL_SHARDS;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    pub unique_visitors: i64,
    pub total_visits: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Visit {
    /// How many times this visitor has been seen, this visit included.
    pub visits: i64,
    pub totals: Totals,
}

impl Visit {
    pub fn is_first(&self) -> bool {
        self.visits == 1
    }
}

/// PostgreSQL: the upsert, the shard bump and the totals in one statement. All parts
/// share one snapshot, so the sums are read before this visit's own bump and the
/// visit is added back in.
/// Public so `tests/bench` runs this very statement under pgbench.
pub const RECORD_POSTGRES: &str = "\
WITH v AS (
    INSERT INTO visitors (visitor_id, visits) VALUES ($1, 1)
    ON CONFLICT (visitor_id) DO UPDATE
        SET visits = visitors.visits + 1, last_seen = CURRENT_TIMESTAMP
    RETURNING visits
), bump AS (
    UPDATE visit_totals
       SET visits = visit_totals.visits + 1,
           visitors = visit_totals.visitors + (SELECT CASE WHEN visits = 1 THEN 1 ELSE 0 END FROM v)
     WHERE shard = $2
)
SELECT v.visits AS visits,
       CAST(t.visits + 1 AS BIGINT) AS total_visits,
       CAST(t.visitors + CASE WHEN v.visits = 1 THEN 1 ELSE 0 END AS BIGINT) AS unique_visitors
  FROM v,
       (SELECT COALESCE(SUM(visits), 0) AS visits, COALESCE(SUM(visitors), 0) AS visitors
          FROM visit_totals) AS t";

/// PostgreSQL: many visits in one statement. `$1` holds each distinct visitor once
/// (sorted, so concurrent batches lock visitor rows in one order and never deadlock)
/// and `$2` how many visits it has in the batch; the whole batch bumps one shard
/// (`$3`). Returns every visitor's count after the batch and the totals after it.
pub const RECORD_BATCH_POSTGRES: &str = "\
WITH input AS (
    SELECT visitor_id, n FROM unnest($1::bytea[], $2::int8[]) AS t(visitor_id, n)
), v AS (
    INSERT INTO visitors (visitor_id, visits)
    SELECT visitor_id, n FROM input
    ON CONFLICT (visitor_id) DO UPDATE
        SET visits = visitors.visits + EXCLUDED.visits, last_seen = CURRENT_TIMESTAMP
    RETURNING visitor_id, visits
), counts AS (
    SELECT CAST(COALESCE(SUM(input.n), 0) AS BIGINT) AS visits,
           CAST(COUNT(*) FILTER (WHERE v.visits = input.n) AS BIGINT) AS visitors
      FROM input JOIN v USING (visitor_id)
), bump AS (
    UPDATE visit_totals
       SET visits = visit_totals.visits + (SELECT visits FROM counts),
           visitors = visit_totals.visitors + (SELECT visitors FROM counts)
     WHERE shard = $3
)
SELECT v.visitor_id AS visitor_id,
       v.visits AS visits,
       CAST(t.visits + c.visits AS BIGINT) AS total_visits,
       CAST(t.visitors + c.visitors AS BIGINT) AS unique_visitors
  FROM v, counts AS c,
       (SELECT COALESCE(SUM(visits), 0) AS visits, COALESCE(SUM(visitors), 0) AS visitors
          FROM visit_totals) AS t";

/// SQLite has no data-modifying CTEs; the same steps in one local transaction.
const UPSERT_SQLITE: &str = "\
INSERT INTO visitors (visitor_id, visits) VALUES (?, ?)
ON CONFLICT (visitor_id) DO UPDATE
    SET visits = visits + excluded.visits, last_seen = CURRENT_TIMESTAMP
RETURNING visits";
const BUMP_SQLITE: &str =
    "UPDATE visit_totals SET visits = visits + ?, visitors = visitors + ? WHERE shard = ?";

const TOTALS: &str = "\
SELECT CAST(COALESCE(SUM(visits), 0) AS BIGINT) AS total_visits,
       CAST(COALESCE(SUM(visitors), 0) AS BIGINT) AS unique_visitors
  FROM visit_totals";

#[derive(Clone)]
pub struct VisitStore {
    db: Database,
}

impl VisitStore {
    pub fn new(db: Database) -> Self {
        Self { db }
    }

    /// Records one visit atomically and returns the visitor's count and the totals.
    pub async fn record(&self, visitor: &VisitorId) -> Result<Visit, DbErr> {
        match self.db.backend() {
            DatabaseBackend::Postgres => self.record_postgres(visitor).await,
            _ => self
                .record_batch(std::slice::from_ref(visitor))
                .await?
                .pop()
                .ok_or_else(|| DbErr::RecordNotFound("visit returned no count".into())),
        }
    }

    /// The single-visit statement.
    async fn record_postgres(&self, visitor: &VisitorId) -> Result<Visit, DbErr> {
        let shard = visitor.shard(VISIT_TOTAL_SHARDS);
        let row = self
            .db
            .connection()
            .query_one_raw(Statement::from_sql_and_values(
                DatabaseBackend::Postgres,
                RECORD_POSTGRES,
                [visitor.as_bytes().to_vec().into(), shard.into()],
            ))
            .await?
            .ok_or_else(|| DbErr::RecordNotFound("visit upsert returned no row".into()))?;
        Ok(Visit {
            visits: row.try_get("", "visits")?,
            totals: Totals {
                total_visits: row.try_get("", "total_visits")?,
                unique_visitors: row.try_get("", "unique_visitors")?,
            },
        })
    }

    /// Records several visits in one statement (PostgreSQL) or one transaction
    /// (SQLite): one commit for all. A visitor may appear several times; each visit
    /// counts, and the answer, one per visit in the same order, gives each its own
    /// count (the first of a visitor's visits in the batch gets the lowest).
    pub async fn record_batch(&self, visitors: &[VisitorId]) -> Result<Vec<Visit>, DbErr> {
        let backend = self.db.backend();
        if let ([one], DatabaseBackend::Postgres) = (visitors, backend) {
            // Alone: the single-visit statement, exactly as without batching.
            return Ok(vec![self.record_postgres(one).await?]);
        }
        // Each visitor once, sorted: one row each, locked in the same order by every batch.
        let mut counts: BTreeMap<[u8; 32], i64> = BTreeMap::new();
        for visitor in visitors {
            *counts.entry(*visitor.as_bytes()).or_default() += 1;
        }
        // A batch counts in one shard row; which one only spreads the writers.
        let shard = i16::from(rand::random::<u8>()) % VISIT_TOTAL_SHARDS;
        let (after, totals) = match backend {
            DatabaseBackend::Postgres => self.batch_postgres(&counts, shard).await?,
            backend => self.batch_sqlite(backend, &counts, shard).await?,
        };
        let mut seen: HashMap<[u8; 32], i64> = HashMap::with_capacity(counts.len());
        visitors
            .iter()
            .map(|visitor| {
                let id = visitor.as_bytes();
                let (Some(last), Some(n)) = (after.get(id), counts.get(id)) else {
                    return Err(DbErr::RecordNotFound(
                        "a batched visitor is missing from the result".into(),
                    ));
                };
                let nth = seen.entry(*id).or_default();
                *nth += 1;
                Ok(Visit {
                    visits: last - n + *nth,
                    totals,
                })
            })
            .collect()
    }

    async fn batch_postgres(
        &self,
        counts: &BTreeMap<[u8; 32], i64>,
        shard: i16,
    ) -> Result<(HashMap<[u8; 32], i64>, Totals), DbErr> {
        let ids: Vec<Vec<u8>> = counts.keys().map(|id| id.to_vec()).collect();
        let ns: Vec<i64> = counts.values().copied().collect();
        let rows = self
            .db
            .connection()
            .query_all_raw(Statement::from_sql_and_values(
                DatabaseBackend::Postgres,
                RECORD_BATCH_POSTGRES,
                [Value::from(ids), Value::from(ns), shard.into()],
            ))
            .await?;
        let mut totals = Totals {
            unique_visitors: 0,
            total_visits: 0,
        };
        let mut after = HashMap::with_capacity(rows.len());
        for row in &rows {
            let id: Vec<u8> = row.try_get("", "visitor_id")?;
            let id: [u8; 32] = id
                .try_into()
                .map_err(|_| DbErr::Custom("a visitor id is not 32 bytes".into()))?;
            after.insert(id, row.try_get::<i64>("", "visits")?);
            totals = Totals {
                total_visits: row.try_get("", "total_visits")?,
                unique_visitors: row.try_get("", "unique_visitors")?,
            };
        }
        Ok((after, totals))
    }

    async fn batch_sqlite(
        &self,
        backend: DatabaseBackend,
        counts: &BTreeMap<[u8; 32], i64>,
        shard: i16,
    ) -> Result<(HashMap<[u8; 32], i64>, Totals), DbErr> {
        let txn = self.db.connection().begin().await?;
        let mut after = HashMap::with_capacity(counts.len());
        let (mut visits, mut new_visitors) = (0i64, 0i64);
        for (id, n) in counts {
            let row = txn
                .query_one_raw(Statement::from_sql_and_values(
                    backend,
                    UPSERT_SQLITE,
                    [id.to_vec().into(), (*n).into()],
                ))
                .await?
                .ok_or_else(|| DbErr::RecordNotFound("visit upsert returned no row".into()))?;
            let count: i64 = row.try_get("", "visits")?;
            // A row that did not exist before holds exactly this batch's visits.
            new_visitors += i64::from(count == *n);
            visits += n;
            after.insert(*id, count);
        }
        txn.execute_raw(Statement::from_sql_and_values(
            backend,
            BUMP_SQLITE,
            [visits.into(), new_visitors.into(), shard.into()],
        ))
        .await?;
        let totals = read_totals(&txn, backend).await?;
        txn.commit().await?;
        Ok((after, totals))
    }

    pub async fn totals(&self) -> Result<Totals, DbErr> {
        read_totals(self.db.connection(), self.db.backend()).await
    }
}

async fn read_totals<C: ConnectionTrait>(
    connection: &C,
    backend: DatabaseBackend,
) -> Result<Totals, DbErr> {
    let row = connection
        .query_one_raw(Statement::from_string(backend, TOTALS))
        .await?
        .ok_or_else(|| DbErr::RecordNotFound("totals query returned no row".into()))?;
    Ok(Totals {
        total_visits: row.try_get("", "total_visits")?,
        unique_visitors: row.try_get("", "unique_visitors")?,
    })
}
