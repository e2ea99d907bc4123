//! PostgreSQL only: `hubbub_chat_insert`, which takes the channel's ordering lock and
//! inserts in one call. Run in autocommit, the lock is held for the statement and its
//! commit only, not across the client's round trips of `BEGIN; lock; INSERT; COMMIT`
//! (about 1,000 posts/s per channel in docs/benchmarks.md). SQLite serialises writers
//! by itself and needs nothing.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DatabaseBackend;

#[derive(DeriveMigrationName)]
pub struct Migration;

/// The lock key is the one `src/roles/chat/store.rs` used before, so processes of the
/// previous release still serialise with this one during a rolling upgrade.
const CREATE: &str = "\
CREATE OR REPLACE FUNCTION hubbub_chat_insert(
    p_channel TEXT, p_user TEXT, p_text TEXT, p_sent_at TIMESTAMPTZ
) RETURNS SETOF chat_messages
LANGUAGE sql VOLATILE AS $$
    SELECT pg_advisory_xact_lock(hashtext('hubbub-chat:' || p_channel));
    INSERT INTO chat_messages (channel, user_name, text, sent_at)
        VALUES (p_channel, p_user, p_text, p_sent_at)
        RETURNING *;
$$";

const DROP: &str = "DROP FUNCTION IF EXISTS hubbub_chat_insert(TEXT, TEXT, TEXT, TIMESTAMPTZ)";

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
