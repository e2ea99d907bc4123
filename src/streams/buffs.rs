//! Buffs as a stream: append (a buff and its answers, under the buffs' ordering
//! lock, in one call), list, get, resume, and the outbox.

use chrono::{DateTime, Utc};
use sea_orm::{ConnectionTrait, DatabaseBackend, DbErr, QueryResult, TransactionTrait, Value};
use serde::{Deserialize, Serialize};

use super::outbox::OutboxTable;
use super::{BUFFS_TOPIC, StreamItem};
use crate::domain::{Answers, Question};
use crate::storage::{Database, statement};
use crate::timestamp::now;

/// A buff as the API, the bus and SSE carry it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Buff {
    pub id: i64,
    /// 1, 2, 3, … over all buffs.
    pub seq: i64,
    pub question: String,
    pub answers: Vec<String>,
    #[serde(with = "crate::timestamp::rfc3339")]
    pub created_at: DateTime<Utc>,
}

impl StreamItem for Buff {
    fn id(&self) -> i64 {
        self.id
    }

    fn seq(&self) -> i64 {
        self.seq
    }

    fn topic(&self) -> String {
        BUFFS_TOPIC.to_owned()
    }
}

/// PostgreSQL: the ordering lock, the buff and its answers in one autocommit call
/// (migration 000005), so two admins creating at once commit ids in id order and a
/// subscriber resuming after id N can never skip a buff committed later below N.
const INSERT_POSTGRES: &str = "SELECT new_id, new_seq FROM hubbub_buff_insert($1, $2, $3)";

/// A buff with its answers in one row (JSON array, in order), for either backend.
fn columns(backend: DatabaseBackend) -> &'static str {
    match backend {
        DatabaseBackend::Postgres => {
            "id, seq, question, created_at, \
             (SELECT CAST(COALESCE(json_agg(a.answer ORDER BY a.position), '[]') AS TEXT) \
                FROM buff_answers a WHERE a.buff_id = buffs.id) AS answers"
        }
        _ => {
            "id, seq, question, created_at, \
             (SELECT json_group_array(answer) FROM \
                (SELECT a.answer FROM buff_answers a WHERE a.buff_id = buffs.id ORDER BY a.position)) \
             AS answers"
        }
    }
}

fn read(row: &QueryResult) -> Result<Buff, DbErr> {
    let answers: String = row.try_get("", "answers")?;
    Ok(Buff {
        id: row.try_get("", "id")?,
        seq: row.try_get("", "seq")?,
        question: row.try_get("", "question")?,
        answers: serde_json::from_str(&answers)
            .map_err(|e| DbErr::Custom(format!("answers of a buff: {e}")))?,
        created_at: row.try_get::<DateTime<Utc>>("", "created_at")?,
    })
}

pub static OUTBOX: OutboxTable<Buff> = OutboxTable {
    table: "buffs",
    columns,
    lock_key: 4_242_002,
    read,
};

#[derive(Clone)]
pub struct BuffStore {
    db: Database,
}

impl BuffStore {
    pub fn new(db: Database) -> Self {
        Self { db }
    }

    /// Appends a buff and its answers; when this returns, it is committed.
    pub async fn create(&self, question: &Question, answers: &Answers) -> Result<Buff, DbErr> {
        let backend = self.db.backend();
        let created_at = now();
        let answer_list = answers.as_slice().to_vec();
        let (id, seq) = if backend == DatabaseBackend::Postgres {
            let json = serde_json::to_string(&answer_list)
                .map_err(|e| DbErr::Custom(format!("answers of a buff: {e}")))?;
            let row = self
                .db
                .connection()
                .query_one_raw(statement(
                    backend,
                    INSERT_POSTGRES,
                    vec![question.as_str().into(), created_at.into(), json.into()],
                ))
                .await?
                .ok_or_else(|| DbErr::RecordNotFound("insert returned no row".into()))?;
            (row.try_get("", "new_id")?, row.try_get("", "new_seq")?)
        } else {
            self.create_sqlite(question, &answer_list, created_at)
                .await?
        };
        Ok(Buff {
            id,
            seq,
            question: question.as_str().to_owned(),
            answers: answer_list,
            created_at,
        })
    }

    /// SQLite serialises writers itself: the first statement takes the write lock.
    async fn create_sqlite(
        &self,
        question: &Question,
        answers: &[String],
        created_at: DateTime<Utc>,
    ) -> Result<(i64, i64), DbErr> {
        let backend = self.db.backend();
        let txn = self.db.connection().begin().await?;
        let row = txn
            .query_one_raw(statement(
                backend,
                "INSERT INTO buffs (question, created_at, seq) \
                 VALUES ($1, $2, COALESCE((SELECT MAX(seq) FROM buffs), 0) + 1) RETURNING id, seq",
                vec![question.as_str().into(), created_at.into()],
            ))
            .await?
            .ok_or_else(|| DbErr::RecordNotFound("insert returned no row".into()))?;
        let (id, seq): (i64, i64) = (row.try_get("", "id")?, row.try_get("", "seq")?);
        let mut values: Vec<Value> = Vec::new();
        let mut rows = Vec::new();
        for (position, answer) in answers.iter().enumerate() {
            let n = values.len();
            rows.push(format!("(${}, ${}, ${})", n + 1, n + 2, n + 3));
            values.push(id.into());
            values.push(i16::try_from(position).unwrap_or(i16::MAX).into());
            values.push(answer.as_str().into());
        }
        txn.execute_raw(statement(
            backend,
            &format!(
                "INSERT INTO buff_answers (buff_id, position, answer) VALUES {}",
                rows.join(", ")
            ),
            values,
        ))
        .await?;
        txn.commit().await?;
        Ok((id, seq))
    }

    /// Newest first, older than `before`.
    pub async fn list(&self, before: Option<i64>, limit: u32) -> Result<Vec<Buff>, DbErr> {
        self.query(
            "WHERE id < $1 ORDER BY id DESC LIMIT $2",
            vec![before.unwrap_or(i64::MAX).into(), i64::from(limit).into()],
        )
        .await
    }

    pub async fn get(&self, id: i64) -> Result<Option<Buff>, DbErr> {
        Ok(self
            .query("WHERE id = $1", vec![id.into()])
            .await?
            .into_iter()
            .next())
    }

    /// Oldest first, newer than `after` (SSE resume and backfill).
    pub async fn after(&self, after: i64, limit: u32) -> Result<Vec<Buff>, DbErr> {
        self.query(
            "WHERE id > $1 ORDER BY id ASC LIMIT $2",
            vec![after.into(), i64::from(limit).into()],
        )
        .await
    }

    /// The id and seq of the last buff, `(0, 0)` when there is none.
    pub async fn head(&self) -> Result<(i64, i64), DbErr> {
        let row = self
            .db
            .connection()
            .query_one_raw(statement(
                self.db.backend(),
                "SELECT id, seq FROM buffs ORDER BY id DESC LIMIT 1",
                vec![],
            ))
            .await?;
        match row {
            Some(row) => Ok((row.try_get("", "id")?, row.try_get("", "seq")?)),
            None => Ok((0, 0)),
        }
    }

    async fn query(&self, tail: &str, values: Vec<Value>) -> Result<Vec<Buff>, DbErr> {
        let backend = self.db.backend();
        let rows = self
            .db
            .connection()
            .query_all_raw(statement(
                backend,
                &format!("SELECT {} FROM buffs {tail}", columns(backend)),
                values,
            ))
            .await?;
        rows.iter().map(read).collect()
    }
}
