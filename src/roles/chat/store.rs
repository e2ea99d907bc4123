//! Chat messages in the database: history, resume, and the outbox.

use chrono::{DateTime, Utc};
use sea_orm::{
    ConnectionTrait, DatabaseBackend, DbErr, QueryResult, Statement, TransactionTrait, Value,
};

use super::message::{ChatMessage, now};
use crate::domain::{Channel, MessageText, UserName};
use crate::storage::Database;

/// Serialises inserts per channel on PostgreSQL, so ids commit in order within a
/// channel and a subscriber never sees id 11 before id 10 (resume relies on it).
const LOCK_CHANNEL_POSTGRES: &str = "SELECT pg_advisory_xact_lock(hashtext('hubbub-chat:' || $1))";
/// Only one outbox relay publishes at a time, across every instance.
const RELAY_LOCK_POSTGRES: &str = "SELECT pg_try_advisory_xact_lock(4242001) AS locked";

#[derive(Clone)]
pub struct MessageStore {
    db: Database,
}

fn placeholders(backend: DatabaseBackend, sql: &str) -> String {
    // Statements are written with `$n`; SQLite takes `?n` just the same.
    match backend {
        DatabaseBackend::Sqlite => sql.replace('$', "?"),
        _ => sql.to_owned(),
    }
}

fn row_to_message(row: &QueryResult) -> Result<ChatMessage, DbErr> {
    Ok(ChatMessage {
        id: row.try_get("", "id")?,
        channel: row.try_get("", "channel")?,
        user: row.try_get("", "user_name")?,
        text: row.try_get("", "text")?,
        sent_at: row.try_get::<DateTime<Utc>>("", "sent_at")?,
    })
}

const COLUMNS: &str = "id, channel, user_name, text, sent_at";

impl MessageStore {
    pub fn new(db: Database) -> Self {
        Self { db }
    }

    fn statement(&self, sql: &str, values: Vec<Value>) -> Statement {
        let backend = self.db.backend();
        Statement::from_sql_and_values(backend, placeholders(backend, sql), values)
    }

    /// Stores a message; when this returns, it is committed.
    pub async fn insert(
        &self,
        channel: &Channel,
        user: &UserName,
        text: &MessageText,
    ) -> Result<ChatMessage, DbErr> {
        let sent_at = now();
        let txn = self.db.connection().begin().await?;
        if self.db.backend() == DatabaseBackend::Postgres {
            txn.execute_raw(self.statement(LOCK_CHANNEL_POSTGRES, vec![channel.as_str().into()]))
                .await?;
        }
        let row = txn
            .query_one_raw(self.statement(
                &format!(
                    "INSERT INTO chat_messages (channel, user_name, text, sent_at) \
                     VALUES ($1, $2, $3, $4) RETURNING {COLUMNS}"
                ),
                vec![
                    channel.as_str().into(),
                    user.as_str().into(),
                    text.as_str().into(),
                    sent_at.into(),
                ],
            ))
            .await?
            .ok_or_else(|| DbErr::RecordNotFound("insert returned no row".into()))?;
        let message = row_to_message(&row)?;
        txn.commit().await?;
        Ok(message)
    }

    /// Up to `limit` messages of `channel` older than `before`, oldest first.
    pub async fn history(
        &self,
        channel: &Channel,
        before: Option<i64>,
        limit: u32,
    ) -> Result<Vec<ChatMessage>, DbErr> {
        let rows = self
            .db
            .connection()
            .query_all_raw(self.statement(
                &format!(
                    "SELECT {COLUMNS} FROM chat_messages WHERE channel = $1 AND id < $2 \
                     ORDER BY id DESC LIMIT $3"
                ),
                vec![
                    channel.as_str().into(),
                    before.unwrap_or(i64::MAX).into(),
                    i64::from(limit).into(),
                ],
            ))
            .await?;
        let mut messages = rows
            .iter()
            .map(row_to_message)
            .collect::<Result<Vec<_>, _>>()?;
        messages.reverse();
        Ok(messages)
    }

    /// Up to `limit` messages of `channel` newer than `after`, oldest first (resume).
    pub async fn after(
        &self,
        channel: &str,
        after: i64,
        limit: u32,
    ) -> Result<Vec<ChatMessage>, DbErr> {
        let rows = self
            .db
            .connection()
            .query_all_raw(self.statement(
                &format!(
                    "SELECT {COLUMNS} FROM chat_messages WHERE channel = $1 AND id > $2 \
                     ORDER BY id ASC LIMIT $3"
                ),
                vec![channel.into(), after.into(), i64::from(limit).into()],
            ))
            .await?;
        rows.iter().map(row_to_message).collect()
    }

    pub async fn backlog(&self) -> Result<i64, DbErr> {
        let row = self
            .db
            .connection()
            .query_one_raw(self.statement(
                "SELECT COUNT(*) AS n FROM chat_messages WHERE published = $1",
                vec![false.into()],
            ))
            .await?
            .ok_or_else(|| DbErr::RecordNotFound("count returned no row".into()))?;
        row.try_get("", "n")
    }

    /// Runs `publish` over the oldest unpublished messages in id order, marking each
    /// published once `publish` succeeds; stops at the first failure. On PostgreSQL
    /// only one relay (of any instance) does this at a time. Returns how many were
    /// published, or `None` when another relay holds the lock.
    pub async fn relay<F, Fut>(&self, batch: u32, mut publish: F) -> Result<Option<usize>, DbErr>
    where
        F: FnMut(ChatMessage) -> Fut,
        Fut: Future<Output = bool>,
    {
        let txn = self.db.connection().begin().await?;
        if self.db.backend() == DatabaseBackend::Postgres {
            let locked: bool = txn
                .query_one_raw(self.statement(RELAY_LOCK_POSTGRES, vec![]))
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
            .query_all_raw(self.statement(
                &format!(
                    "SELECT {COLUMNS} FROM chat_messages WHERE published = $1 ORDER BY id LIMIT $2"
                ),
                vec![false.into(), i64::from(batch).into()],
            ))
            .await?;
        let mut published = 0;
        for row in &rows {
            let message = row_to_message(row)?;
            let id = message.id;
            if !publish(message).await {
                break;
            }
            txn.execute_raw(self.statement(
                "UPDATE chat_messages SET published = $1 WHERE id = $2",
                vec![true.into(), id.into()],
            ))
            .await?;
            published += 1;
        }
        txn.commit().await?;
        Ok(Some(published))
    }
}
