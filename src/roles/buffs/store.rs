//! Buffs in the database: one transaction per buff and its answers.

use chrono::{DateTime, Utc};
use sea_orm::{ConnectionTrait, DatabaseBackend, DbErr, QueryResult, TransactionTrait, Value};

use super::buff::Buff;
use crate::domain::{Answers, Question};
use crate::outbox::OutboxTable;
use crate::storage::{Database, statement};
use crate::timestamp::now;

/// A buff with its answers in one row (JSON array, in order), for either backend.
fn columns(backend: DatabaseBackend) -> &'static str {
    match backend {
        DatabaseBackend::Postgres => {
            "id, question, created_at, \
             (SELECT CAST(COALESCE(json_agg(a.answer ORDER BY a.position), '[]') AS TEXT) \
                FROM buff_answers a WHERE a.buff_id = buffs.id) AS answers"
        }
        _ => {
            "id, question, created_at, \
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

    /// Stores a buff and its answers in one transaction.
    pub async fn create(&self, question: &Question, answers: &Answers) -> Result<Buff, DbErr> {
        let backend = self.db.backend();
        let created_at = now();
        let txn = self.db.connection().begin().await?;
        let id: i64 = txn
            .query_one_raw(statement(
                backend,
                "INSERT INTO buffs (question, created_at) VALUES ($1, $2) RETURNING id",
                vec![question.as_str().into(), created_at.into()],
            ))
            .await?
            .ok_or_else(|| DbErr::RecordNotFound("insert returned no row".into()))?
            .try_get("", "id")?;
        let mut values: Vec<Value> = Vec::new();
        let mut rows = Vec::new();
        for (position, answer) in answers.as_slice().iter().enumerate() {
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
        Ok(Buff {
            id,
            question: question.as_str().to_owned(),
            answers: answers.as_slice().to_vec(),
            created_at,
        })
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

    /// Oldest first, newer than `after` (SSE resume).
    pub async fn after(&self, after: i64, limit: u32) -> Result<Vec<Buff>, DbErr> {
        self.query(
            "WHERE id > $1 ORDER BY id ASC LIMIT $2",
            vec![after.into(), i64::from(limit).into()],
        )
        .await
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
