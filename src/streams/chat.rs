//! Chat channels as streams: append (under the channel's ordering lock), history,
//! resume, and the outbox.

use chrono::{DateTime, Utc};
use sea_orm::{
    ConnectionTrait, DatabaseBackend, DbErr, QueryResult, Statement, TransactionTrait, Value,
};
use serde::{Deserialize, Serialize};

use super::outbox::OutboxTable;
use super::{StreamItem, chat_topic};
use crate::domain::{Channel, MessageText, UserName};
use crate::storage::{Database, statement};
use crate::timestamp::now;

/// A stored chat message, as the API, the bus and SSE carry it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub id: i64,
    /// 1, 2, 3, … within the channel.
    pub seq: i64,
    pub channel: String,
    pub user: String,
    pub text: String,
    #[serde(with = "crate::timestamp::rfc3339")]
    pub sent_at: DateTime<Utc>,
}

impl StreamItem for ChatMessage {
    fn id(&self) -> i64 {
        self.id
    }

    fn seq(&self) -> i64 {
        self.seq
    }

    fn topic(&self) -> String {
        chat_topic(&self.channel)
    }
}

/// PostgreSQL: lock the channel and insert in one autocommit call (a function from
/// migrations 000004 and 000005), so ids commit in order within a channel and each
/// message gets the next `seq`, while the lock is held only for the statement.
const INSERT_POSTGRES: &str = "hubbub_chat_insert($1, $2, $3, $4)";

const COLUMNS: &str = "id, seq, channel, user_name, text, sent_at";

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
        seq: row.try_get("", "seq")?,
        channel: row.try_get("", "channel")?,
        user: row.try_get("", "user_name")?,
        text: row.try_get("", "text")?,
        sent_at: row.try_get::<DateTime<Utc>>("", "sent_at")?,
    })
}

#[derive(Clone)]
pub struct MessageStore {
    db: Database,
}

impl MessageStore {
    pub fn new(db: Database) -> Self {
        Self { db }
    }

    fn statement(&self, sql: &str, values: Vec<Value>) -> Statement {
        statement(self.db.backend(), sql, values)
    }

    /// Appends a message to its channel; when this returns, it is committed.
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
        // SQLite serialises writers itself; the insert is the transaction's first
        // statement, so it holds the write lock when it reads the last seq.
        let txn = self.db.connection().begin().await?;
        let row = txn
            .query_one_raw(self.statement(
                &format!(
                    "INSERT INTO chat_messages (channel, user_name, text, sent_at, seq) \
                     VALUES ($1, $2, $3, $4, \
                       COALESCE((SELECT MAX(seq) FROM chat_messages WHERE channel = $1), 0) + 1) \
                     RETURNING {COLUMNS}"
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
        channel: &Channel,
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
                vec![
                    channel.as_str().into(),
                    after.into(),
                    i64::from(limit).into(),
                ],
            ))
            .await?;
        rows.iter().map(row_to_message).collect()
    }

    /// The id and seq of the channel's last message, `(0, 0)` when it has none.
    pub async fn head(&self, channel: &Channel) -> Result<(i64, i64), DbErr> {
        let row = self
            .db
            .connection()
            .query_one_raw(self.statement(
                "SELECT id, seq FROM chat_messages WHERE channel = $1 ORDER BY id DESC LIMIT 1",
                vec![channel.as_str().into()],
            ))
            .await?;
        match row {
            Some(row) => Ok((row.try_get("", "id")?, row.try_get("", "seq")?)),
            None => Ok((0, 0)),
        }
    }
}
