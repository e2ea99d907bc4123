//! Chat messages in the database: history, resume, and the outbox.

use chrono::{DateTime, Utc};
use sea_orm::{
    ConnectionTrait, DatabaseBackend, DbErr, QueryResult, Statement, TransactionTrait, Value,
};

use super::message::ChatMessage;
use crate::domain::{Channel, MessageText, UserName};
use crate::outbox::OutboxTable;
use crate::storage::{Database, statement};
use crate::timestamp::now;

/// PostgreSQL: lock the channel and insert in one autocommit call (a function from
/// migration 000004), so ids commit in order within a channel and a subscriber never
/// sees id 11 before id 10 (resume relies on it), while the lock is held only for the
/// statement, not across round trips.
const INSERT_POSTGRES: &str = "hubbub_chat_insert($1, $2, $3, $4)";

#[derive(Clone)]
pub struct MessageStore {
    db: Database,
}

/// The outbox of chat messages.
pub static OUTBOX: OutboxTable<ChatMessage> = OutboxTable {
    table: "chat_messages",
    columns: |_| COLUMNS,
    lock_key: 4_242_001,
    read: row_to_message,
};

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
        statement(self.db.backend(), sql, values)
    }

    /// Stores a message; when this returns, it is committed.
    pub async fn insert(
        &self,
        channel: &Channel,
        user: &UserName,
        text: &MessageText,
    ) -> Result<ChatMessage, DbErr> {
        let sent_at = now();
        let values = vec![
            channel.as_str().into(),
            user.as_str().into(),
            text.as_str().into(),
            sent_at.into(),
        ];
        if self.db.backend() == DatabaseBackend::Postgres {
            let row = self
                .db
                .connection()
                .query_one_raw(
                    self.statement(&format!("SELECT {COLUMNS} FROM {INSERT_POSTGRES}"), values),
                )
                .await?
                .ok_or_else(|| DbErr::RecordNotFound("insert returned no row".into()))?;
            return row_to_message(&row);
        }
        // SQLite serialises writers itself.
        let txn = self.db.connection().begin().await?;
        let row = txn
            .query_one_raw(self.statement(
                &format!(
                    "INSERT INTO chat_messages (channel, user_name, text, sent_at) \
                     VALUES ($1, $2, $3, $4) RETURNING {COLUMNS}"
                ),
                values,
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
}
