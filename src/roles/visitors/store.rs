//! The visit counter in the database: one round trip per visit, no hot row, no
//! `COUNT(*)`.

use sea_orm::{ConnectionTrait, DatabaseBackend, DbErr, Statement, TransactionTrait};
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

/// SQLite has no data-modifying CTEs; the same steps in one local transaction.
const UPSERT_SQLITE: &str = "\
INSERT INTO visitors (visitor_id, visits) VALUES (?, 1)
ON CONFLICT (visitor_id) DO UPDATE SET visits = visits + 1, last_seen = CURRENT_TIMESTAMP
RETURNING visits";
const BUMP_SQLITE: &str =
    "UPDATE visit_totals SET visits = visits + 1, visitors = visitors + ? WHERE shard = ?";

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
        let shard = visitor.shard(VISIT_TOTAL_SHARDS);
        let id = visitor.as_bytes().to_vec();
        match self.db.backend() {
            DatabaseBackend::Postgres => {
                let row = self
                    .db
                    .connection()
                    .query_one_raw(Statement::from_sql_and_values(
                        DatabaseBackend::Postgres,
                        RECORD_POSTGRES,
                        [id.into(), shard.into()],
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
            backend => {
                let txn = self.db.connection().begin().await?;
                let row = txn
                    .query_one_raw(Statement::from_sql_and_values(
                        backend,
                        UPSERT_SQLITE,
                        [id.into()],
                    ))
                    .await?
                    .ok_or_else(|| DbErr::RecordNotFound("visit upsert returned no row".into()))?;
                let visits: i64 = row.try_get("", "visits")?;
                let new_visitor = i64::from(visits == 1);
                txn.execute_raw(Statement::from_sql_and_values(
                    backend,
                    BUMP_SQLITE,
                    [new_visitor.into(), shard.into()],
                ))
                .await?;
                let totals = read_totals(&txn, backend).await?;
                txn.commit().await?;
                Ok(Visit { visits, totals })
            }
        }
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
