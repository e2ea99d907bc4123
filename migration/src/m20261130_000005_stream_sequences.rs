//! Per-stream sequence numbers: `seq` counts 1, 2, 3, … within a chat channel and
//! within the buffs, assigned under the stream's ordering lock, so a broadcast
//! instance that sees seq 7 after seq 5 knows the broker dropped one and reads it
//! back from the database. Existing rows are numbered in id order.
//!
//! PostgreSQL: `hubbub_chat_insert` now assigns `seq` too, and
//! `hubbub_buff_insert` gives buffs the same one-call lock-and-insert (a buff and
//! its answers), so two admins creating at once commit ids in order.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DatabaseBackend;

#[derive(DeriveMigrationName)]
pub struct Migration;

const NUMBER_POSTGRES: &[&str] = &[
    "ALTER TABLE chat_messages ADD COLUMN seq BIGINT NOT NULL DEFAULT 0",
    "UPDATE chat_messages SET seq = n.seq FROM \
       (SELECT id, row_number() OVER (PARTITION BY channel ORDER BY id) AS seq FROM chat_messages) n \
     WHERE chat_messages.id = n.id",
    "ALTER TABLE buffs ADD COLUMN seq BIGINT NOT NULL DEFAULT 0",
    "UPDATE buffs SET seq = n.seq FROM \
       (SELECT id, row_number() OVER (ORDER BY id) AS seq FROM buffs) n \
     WHERE buffs.id = n.id",
];

/// One pass with a window function (SQLite 3.33+ for `UPDATE … FROM`; sqlx bundles a
/// newer one), as on PostgreSQL: a correlated `COUNT(*)` per row is quadratic in a
/// channel's length (20,000 messages in one channel took 12 s, 200,000 would take
/// about 20 minutes, at every start of a laptop's `hubbub serve`).
const NUMBER_SQLITE: &[&str] = &[
    "ALTER TABLE chat_messages ADD COLUMN seq BIGINT NOT NULL DEFAULT 0",
    "UPDATE chat_messages SET seq = n.seq FROM \
       (SELECT id, row_number() OVER (PARTITION BY channel ORDER BY id) AS seq FROM chat_messages) AS n \
     WHERE chat_messages.id = n.id",
    "ALTER TABLE buffs ADD COLUMN seq BIGINT NOT NULL DEFAULT 0",
    "UPDATE buffs SET seq = n.seq FROM \
       (SELECT id, row_number() OVER (ORDER BY id) AS seq FROM buffs) AS n \
     WHERE buffs.id = n.id",
];

const INDEXES: &[&str] = &[
    "CREATE UNIQUE INDEX chat_messages_channel_seq ON chat_messages (channel, seq)",
    "CREATE UNIQUE INDEX buffs_seq ON buffs (seq)",
];

/// The same lock key as migration 000004 (and the release before it), so
/// processes of either release serialise with each other during a rolling
/// upgrade. Each statement of a VOLATILE SQL function takes a new snapshot: the
/// INSERT, coming after the lock, sees the channel's last committed `seq`.
const CHAT_INSERT: &str = "\
CREATE OR REPLACE FUNCTION hubbub_chat_insert(
    p_channel TEXT, p_user TEXT, p_text TEXT, p_sent_at TIMESTAMPTZ
) RETURNS SETOF chat_messages
LANGUAGE sql VOLATILE AS $$
    SELECT pg_advisory_xact_lock(hashtext('hubbub-chat:' || p_channel));
    INSERT INTO chat_messages (channel, user_name, text, sent_at, seq)
        VALUES (p_channel, p_user, p_text, p_sent_at,
                COALESCE((SELECT MAX(m.seq) FROM chat_messages m WHERE m.channel = p_channel), 0) + 1)
        RETURNING *;
$$";

const CHAT_INSERT_OLD: &str = "\
CREATE OR REPLACE FUNCTION hubbub_chat_insert(
    p_channel TEXT, p_user TEXT, p_text TEXT, p_sent_at TIMESTAMPTZ
) RETURNS SETOF chat_messages
LANGUAGE sql VOLATILE AS $$
    SELECT pg_advisory_xact_lock(hashtext('hubbub-chat:' || p_channel));
    INSERT INTO chat_messages (channel, user_name, text, sent_at)
        VALUES (p_channel, p_user, p_text, p_sent_at)
        RETURNING *;
$$";

/// A buff and its answers (a JSON array of strings, in order) under the buffs'
/// ordering lock, in one autocommit call; returns the new id and seq.
const BUFF_INSERT: &str = "\
CREATE OR REPLACE FUNCTION hubbub_buff_insert(
    p_question TEXT, p_created_at TIMESTAMPTZ, p_answers TEXT
) RETURNS TABLE (new_id BIGINT, new_seq BIGINT)
LANGUAGE sql VOLATILE AS $$
    SELECT pg_advisory_xact_lock(hashtext('hubbub-buffs'));
    WITH created AS (
        INSERT INTO buffs (question, created_at, seq)
            VALUES (p_question, p_created_at,
                    COALESCE((SELECT MAX(b.seq) FROM buffs b), 0) + 1)
            RETURNING buffs.id, buffs.seq
    ), answered AS (
        INSERT INTO buff_answers (buff_id, position, answer)
            SELECT created.id, CAST(a.ord - 1 AS SMALLINT), a.answer
            FROM created, json_array_elements_text(CAST(p_answers AS JSON))
                 WITH ORDINALITY AS a(answer, ord)
    )
    SELECT created.id, created.seq FROM created;
$$";

const BUFF_INSERT_DROP: &str =
    "DROP FUNCTION IF EXISTS hubbub_buff_insert(TEXT, TIMESTAMPTZ, TEXT)";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    /// In one transaction on SQLite too (sea-orm's default there is none): a process
    /// stopped halfway would otherwise leave the column without the migration
    /// recorded, and every later start would fail on `duplicate column`.
    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }

    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        let postgres = manager.get_database_backend() == DatabaseBackend::Postgres;
        let number = if postgres {
            NUMBER_POSTGRES
        } else {
            NUMBER_SQLITE
        };
        for sql in number.iter().chain(INDEXES) {
            db.execute_unprepared(sql).await?;
        }
        if postgres {
            db.execute_unprepared(CHAT_INSERT).await?;
            db.execute_unprepared(BUFF_INSERT).await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        if manager.get_database_backend() == DatabaseBackend::Postgres {
            db.execute_unprepared(BUFF_INSERT_DROP).await?;
            db.execute_unprepared(CHAT_INSERT_OLD).await?;
        }
        for sql in [
            "DROP INDEX chat_messages_channel_seq",
            "DROP INDEX buffs_seq",
            "ALTER TABLE chat_messages DROP COLUMN seq",
            "ALTER TABLE buffs DROP COLUMN seq",
        ] {
            db.execute_unprepared(sql).await?;
        }
        Ok(())
    }
}
