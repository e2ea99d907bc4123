//! Database schema migrations for hubbub, applied by `hubbub migrate` (or on start
//! when `database.migrate_on_start` is true). The same migrations run on PostgreSQL
//! (production) and SQLite (embedded default).

pub use sea_orm_migration::MigrationStatus;
pub use sea_orm_migration::prelude::*;

mod m20261122_000001_create_visitors;
mod m20261122_000002_create_chat_messages;
mod m20261122_000003_create_buffs;
mod m20261129_000004_chat_insert_function;
mod m20261130_000005_stream_sequences;
mod m20261201_000006_legacy_stream_writers;
mod m20261202_000007_chat_insert_batch;
mod m20261203_000008_chat_insert_batch_bounded;

/// Number of rows the visit totals are spread over, so concurrent visits by
/// different visitors rarely contend on one row.
pub const VISIT_TOTAL_SHARDS: i16 = 16;

pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261122_000001_create_visitors::Migration),
            Box::new(m20261122_000002_create_chat_messages::Migration),
            Box::new(m20261122_000003_create_buffs::Migration),
            Box::new(m20261129_000004_chat_insert_function::Migration),
            Box::new(m20261130_000005_stream_sequences::Migration),
            Box::new(m20261201_000006_legacy_stream_writers::Migration),
            Box::new(m20261202_000007_chat_insert_batch::Migration),
            Box::new(m20261203_000008_chat_insert_batch_bounded::Migration),
        ]
    }
}
