//! PostgreSQL only: `hubbub_chat_insert_batch`, group commit for chat posts. Several
//! posts, of one channel or many, are stored by one statement and one commit,
//! under the same per-channel ordering locks `hubbub_chat_insert` takes, so ids
//! still commit in order within a channel and each channel's `seq` stays 1, 2, 3, …
//! without gaps. Nothing else changes: the single-post function stays (a lone post,
//! and the previous release, use it), and both take the same lock keys.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DatabaseBackend;

#[derive(DeriveMigrationName)]
pub struct Migration;

/// The channels' locks are taken one by one in the order of their keys, so two
/// batches sharing channels never wait for each other crosswise (no deadlock); a
/// single post holds one lock only. PL/pgSQL: the plans are cached per session
/// (a multi-statement SQL function is parsed again on every call), and in a
/// VOLATILE function the INSERT takes a new snapshot after the locks, so it sees
/// every channel's last committed `seq`. Rows are numbered and given their ids in
/// the batch's order (`ord`; the sort comes before the insert assigns the ids), so
/// within a channel id order is `seq` order is the order of the arrays.
const CREATE: &str = "\
CREATE OR REPLACE FUNCTION hubbub_chat_insert_batch(
    p_channels TEXT[], p_users TEXT[], p_texts TEXT[], p_sent_at TIMESTAMPTZ
) RETURNS SETOF chat_messages
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    lock_key INTEGER;
BEGIN
    IF cardinality(p_channels) IS DISTINCT FROM cardinality(p_users)
       OR cardinality(p_channels) IS DISTINCT FROM cardinality(p_texts) THEN
        RAISE EXCEPTION 'hubbub_chat_insert_batch: arrays of different lengths';
    END IF;
    FOR lock_key IN
        SELECT DISTINCT hashtext('hubbub-chat:' || c) FROM unnest(p_channels) AS c ORDER BY 1
    LOOP
        PERFORM pg_advisory_xact_lock(lock_key);
    END LOOP;
    RETURN QUERY
    WITH inserted AS (
        INSERT INTO chat_messages (channel, user_name, text, sent_at, seq)
        SELECT p.channel, p.user_name, p.text, p_sent_at,
               COALESCE((SELECT MAX(m.seq) FROM chat_messages m WHERE m.channel = p.channel), 0)
                 + row_number() OVER (PARTITION BY p.channel ORDER BY p.ord)
        FROM unnest(p_channels, p_users, p_texts) WITH ORDINALITY AS p(channel, user_name, text, ord)
        ORDER BY p.ord
        RETURNING *
    )
    SELECT * FROM inserted;
END
$$";

const DROP: &str =
    "DROP FUNCTION IF EXISTS hubbub_chat_insert_batch(TEXT[], TEXT[], TEXT[], TIMESTAMPTZ)";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() == DatabaseBackend::Postgres {
            manager.get_connection().execute_unprepared(CREATE).await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() == DatabaseBackend::Postgres {
            manager.get_connection().execute_unprepared(DROP).await?;
        }
        Ok(())
    }
}
