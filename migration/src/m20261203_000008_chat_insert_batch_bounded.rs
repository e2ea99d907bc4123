//! PostgreSQL only: `hubbub_chat_insert_batch_bounded`, group commit that never
//! waits for a channel's ordering lock without bound. The batch function of 000007
//! waits as long as it takes for every channel's lock, so one channel whose lock a
//! stuck session holds kept the whole statement, and every other channel in it,
//! waiting. This one either *tries* each lock and stores only the posts of the
//! channels it got (`p_lock_wait_ms = 0`; the caller sends the rest again), or
//! waits for them at most `p_lock_wait_ms` (then PostgreSQL cancels it with
//! `lock_not_available`, 55P03, and nothing is stored). Same columns, same locks,
//! same numbering as 000007, whose function stays for the previous release.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DatabaseBackend;

#[derive(DeriveMigrationName)]
pub struct Migration;

/// `set_config(…, true)` lasts to the end of the transaction, which for this
/// autocommit call is the statement. A post of a channel whose lock was not
/// taken is left out whole, never in part, so each channel's `seq` stays gapless.
const CREATE: &str = "\
CREATE OR REPLACE FUNCTION hubbub_chat_insert_batch_bounded(
    p_channels TEXT[], p_users TEXT[], p_texts TEXT[], p_sent_at TIMESTAMPTZ,
    p_lock_wait_ms INTEGER
) RETURNS SETOF chat_messages
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    ch TEXT;
    locked TEXT[] := '{}';
BEGIN
    IF cardinality(p_channels) IS DISTINCT FROM cardinality(p_users)
       OR cardinality(p_channels) IS DISTINCT FROM cardinality(p_texts) THEN
        RAISE EXCEPTION 'hubbub_chat_insert_batch_bounded: arrays of different lengths';
    END IF;
    IF p_lock_wait_ms > 0 THEN
        PERFORM set_config('lock_timeout', p_lock_wait_ms || 'ms', true);
    END IF;
    FOR ch IN
        SELECT c FROM (SELECT DISTINCT c FROM unnest(p_channels) AS c) AS d
        ORDER BY hashtext('hubbub-chat:' || c), c
    LOOP
        IF p_lock_wait_ms > 0 THEN
            PERFORM pg_advisory_xact_lock(hashtext('hubbub-chat:' || ch));
            locked := locked || ch;
        ELSIF pg_try_advisory_xact_lock(hashtext('hubbub-chat:' || ch)) THEN
            locked := locked || ch;
        END IF;
    END LOOP;
    RETURN QUERY
    WITH inserted AS (
        INSERT INTO chat_messages (channel, user_name, text, sent_at, seq)
        SELECT p.channel, p.user_name, p.text, p_sent_at,
               COALESCE((SELECT MAX(m.seq) FROM chat_messages m WHERE m.channel = p.channel), 0)
                 + row_number() OVER (PARTITION BY p.channel ORDER BY p.ord)
        FROM unnest(p_channels, p_users, p_texts) WITH ORDINALITY AS p(channel, user_name, text, ord)
        WHERE p.channel = ANY(locked)
        ORDER BY p.ord
        RETURNING *
    )
    SELECT * FROM inserted;
END
$$";

const DROP: &str = "DROP FUNCTION IF EXISTS \
     hubbub_chat_insert_batch_bounded(TEXT[], TEXT[], TEXT[], TIMESTAMPTZ, INTEGER)";

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
