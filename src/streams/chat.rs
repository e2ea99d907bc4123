//! Chat channels as streams: append (under the channel's ordering lock), history,
//! resume, and the outbox.

use std::collections::HashMap;
use std::time::Duration;

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

/// PostgreSQL: several posts, of one channel or many, in one call and one commit
/// under the same locks, waiting for them a bounded time or not at all (a function
/// from migration 000008; group commit).
const INSERT_BATCH_POSTGRES: &str = "hubbub_chat_insert_batch_bounded($1, $2, $3, $4, $5)";

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

/// A post to store.
#[derive(Debug, Clone)]
pub struct NewPost {
    pub channel: Channel,
    pub user: UserName,
    pub text: MessageText,
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

    /// Whether [`Self::insert_batch`] is there: PostgreSQL. (SQLite serialises its
    /// writers anyway; posts go one by one with [`Self::insert`].)
    pub fn batches(&self) -> bool {
        self.db.backend() == DatabaseBackend::Postgres
    }

    /// Appends several posts in one statement and one commit (PostgreSQL). Within a
    /// channel they are numbered in the order given. Each channel's ordering lock is
    /// waited for at most `lock_wait`, and then the statement fails with
    /// `lock_not_available` (see `storage::is_lock_timeout`), storing nothing; with a
    /// zero `lock_wait` it is only tried, and the posts of a channel whose lock is
    /// taken are left out, all of them (`None`). Returns, in the order of `posts`,
    /// each one's message; when this returns, they are committed.
    pub async fn insert_batch(
        &self,
        posts: &[NewPost],
        lock_wait: Duration,
    ) -> Result<Vec<Option<ChatMessage>>, DbErr> {
        if !self.batches() {
            return Err(DbErr::Custom(
                "storing posts in one statement needs PostgreSQL".into(),
            ));
        }
        let channels: Vec<String> = posts
            .iter()
            .map(|p| p.channel.as_str().to_owned())
            .collect();
        let users: Vec<String> = posts.iter().map(|p| p.user.as_str().to_owned()).collect();
        let texts: Vec<String> = posts.iter().map(|p| p.text.as_str().to_owned()).collect();
        // At least 1 ms: 0 would mean "only try".
        let wait_ms = i32::try_from(lock_wait.as_millis()).unwrap_or(i32::MAX);
        let wait_ms = if lock_wait.is_zero() {
            0
        } else {
            wait_ms.max(1)
        };
        let rows = self
            .db
            .connection()
            .query_all_raw(self.statement(
                &format!("SELECT {COLUMNS} FROM {INSERT_BATCH_POSTGRES}"),
                vec![
                    Value::from(channels),
                    Value::from(users),
                    Value::from(texts),
                    now().into(),
                    wait_ms.into(),
                ],
            ))
            .await?;
        let mut stored = rows
            .iter()
            .map(row_to_message)
            .collect::<Result<Vec<_>, _>>()?;
        // The statement numbers each channel's posts in the order given: the k-th post
        // of a channel in `posts` is that channel's k-th lowest `seq` in the result.
        stored.sort_unstable_by(|a, b| (&a.channel, a.seq).cmp(&(&b.channel, b.seq)));
        let mut by_channel: HashMap<String, Vec<ChatMessage>> = HashMap::new();
        for message in stored {
            by_channel
                .entry(message.channel.clone())
                .or_default()
                .push(message);
        }
        let mut wanted: HashMap<&str, usize> = HashMap::new();
        for post in posts {
            *wanted.entry(post.channel.as_str()).or_default() += 1;
        }
        for (channel, messages) in &by_channel {
            if wanted.get(channel.as_str()) != Some(&messages.len()) {
                return Err(DbErr::Custom(format!(
                    "a batch stored {} messages of channel {channel}, not its {} posts",
                    messages.len(),
                    wanted.get(channel.as_str()).copied().unwrap_or(0)
                )));
            }
        }
        let mut by_channel: HashMap<String, std::vec::IntoIter<ChatMessage>> = by_channel
            .into_iter()
            .map(|(channel, messages)| (channel, messages.into_iter()))
            .collect();
        Ok(posts
            .iter()
            .map(|post| {
                by_channel
                    .get_mut(post.channel.as_str())
                    .and_then(Iterator::next)
            })
            .collect())
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

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use migration::{Migrator, MigratorTrait};

    use super::*;

    /// Migration 000005 numbers the messages already stored, per channel, in id
    /// order, in time linear in the table (it was quadratic on SQLite: 12 s for
    /// these 20,000 messages of one channel, 20 minutes for 200,000).
    #[tokio::test]
    async fn existing_messages_are_numbered_per_channel_in_one_pass() {
        let (_state, db) = Database::scratch().await;
        Migrator::up(db.connection(), Some(4))
            .await
            .expect("migrations before 000005");
        // 20,000 messages in `general`, every third one in `other` interleaved.
        db.connection()
            .execute_unprepared(
                "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 30000) \
                 INSERT INTO chat_messages (channel, user_name, text, sent_at, published) \
                 SELECT CASE WHEN i % 3 = 0 THEN 'other' ELSE 'general' END, 'u', 't', \
                        '2026-01-01T00:00:00Z', 1 FROM n",
            )
            .await
            .expect("old messages");
        let started = Instant::now();
        db.migrate().await.expect("migration 000005");
        let took = started.elapsed();
        let store = MessageStore::new(db.clone());
        for (channel, count) in [("general", 20_000), ("other", 10_000)] {
            let channel = Channel::parse(channel).expect("channel");
            let (_, seq) = store.head(&channel).await.expect("head");
            assert_eq!(seq, count, "{channel:?}: the last message's seq");
            let first = store.after(&channel, 0, 3).await.expect("first");
            let seqs: Vec<i64> = first.iter().map(|m| m.seq).collect();
            assert_eq!(
                seqs,
                vec![1, 2, 3],
                "{channel:?} numbered from 1 in id order"
            );
        }
        // Linear is about 0.1 s here; quadratic was 12 s. Generous for a loaded machine.
        assert!(
            took < Duration::from_secs(5),
            "numbering 30,000 messages took {took:?}"
        );
        // And the next message continues the channel's sequence.
        let next = store
            .insert(
                &Channel::parse("other").expect("channel"),
                &UserName::parse("u").expect("user"),
                &MessageText::parse("next").expect("text"),
            )
            .await
            .expect("insert");
        assert_eq!(next.seq, 10_001);
    }
}
