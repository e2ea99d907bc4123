//! PostgreSQL only: rows inserted without a `seq` (the column's default, 0) get one
//! under their stream's ordering lock, with a fresh id taken after the lock.
//!
//! Who inserts without a `seq`: the previous release, which runs side by side with
//! this one during a rolling deployment and again after a rollback of the code
//! (migrations are forward-only). Its buffs role inserts with
//! `BEGIN; INSERT INTO buffs (question, created_at) …; INSERT INTO buff_answers …; COMMIT`:
//! without this trigger the first such buff got `seq = 0`, out of the stream's order
//! (the broadcast dropped it as old), and the second failed on the unique index
//! `buffs_seq`, so the old instances could not create buffs at all. Taking the id
//! after the lock keeps ids and `seq` in the same order, as `hubbub_buff_insert`
//! does; the lock is held until that writer commits.
//!
//! Chat gets the same trigger for any writer that bypasses `hubbub_chat_insert` (the
//! previous release calls the function, which migration 000005 replaced).

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DatabaseBackend;

#[derive(DeriveMigrationName)]
pub struct Migration;

const UP: &[&str] = &[
    "CREATE OR REPLACE FUNCTION hubbub_buffs_assign_seq() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('hubbub-buffs'));
    NEW.id := nextval(pg_get_serial_sequence('buffs', 'id'));
    NEW.seq := COALESCE((SELECT MAX(b.seq) FROM buffs b), 0) + 1;
    RETURN NEW;
END
$$",
    "CREATE TRIGGER buffs_assign_seq BEFORE INSERT ON buffs
    FOR EACH ROW WHEN (NEW.seq = 0) EXECUTE FUNCTION hubbub_buffs_assign_seq()",
    "CREATE OR REPLACE FUNCTION hubbub_chat_assign_seq() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('hubbub-chat:' || NEW.channel));
    NEW.id := nextval(pg_get_serial_sequence('chat_messages', 'id'));
    NEW.seq := COALESCE(
        (SELECT MAX(m.seq) FROM chat_messages m WHERE m.channel = NEW.channel), 0) + 1;
    RETURN NEW;
END
$$",
    "CREATE TRIGGER chat_messages_assign_seq BEFORE INSERT ON chat_messages
    FOR EACH ROW WHEN (NEW.seq = 0) EXECUTE FUNCTION hubbub_chat_assign_seq()",
];

const DOWN: &[&str] = &[
    "DROP TRIGGER IF EXISTS chat_messages_assign_seq ON chat_messages",
    "DROP FUNCTION IF EXISTS hubbub_chat_assign_seq()",
    "DROP TRIGGER IF EXISTS buffs_assign_seq ON buffs",
    "DROP FUNCTION IF EXISTS hubbub_buffs_assign_seq()",
];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() == DatabaseBackend::Postgres {
            for sql in UP {
                manager.get_connection().execute_unprepared(sql).await?;
            }
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() == DatabaseBackend::Postgres {
            for sql in DOWN {
                manager.get_connection().execute_unprepared(sql).await?;
            }
        }
        Ok(())
    }
}
