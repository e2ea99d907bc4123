//! Visitors and the sharded visit totals.
//!
//! `visitors` holds one row per visitor identity (an HMAC of the client address,
//! never the address itself). `visit_totals` keeps running totals split over
//! `VISIT_TOTAL_SHARDS` rows: a visit bumps only the shard of its visitor, and
//! the stats are the sum of a handful of rows, so reading them never counts the
//! visitors table and no single row serialises every request.

use sea_orm_migration::prelude::*;

use crate::VISIT_TOTAL_SHARDS;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Visitors {
    Table,
    VisitorId,
    Visits,
    FirstSeen,
    LastSeen,
}

#[derive(DeriveIden)]
enum VisitTotals {
    Table,
    Shard,
    Visits,
    Visitors,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Visitors::Table)
                    .col(
                        ColumnDef::new(Visitors::VisitorId)
                            .binary()
                            .not_null()
                            .primary_key(),
                    )
                    .col(ColumnDef::new(Visitors::Visits).big_integer().not_null())
                    .col(
                        ColumnDef::new(Visitors::FirstSeen)
                            .timestamp_with_time_zone()
                            .not_null()
                            .default(Expr::current_timestamp()),
                    )
                    .col(
                        ColumnDef::new(Visitors::LastSeen)
                            .timestamp_with_time_zone()
                            .not_null()
                            .default(Expr::current_timestamp()),
                    )
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(VisitTotals::Table)
                    .col(
                        ColumnDef::new(VisitTotals::Shard)
                            .small_integer()
                            .not_null()
                            .primary_key(),
                    )
                    .col(
                        ColumnDef::new(VisitTotals::Visits)
                            .big_integer()
                            .not_null()
                            .default(0),
                    )
                    .col(
                        ColumnDef::new(VisitTotals::Visitors)
                            .big_integer()
                            .not_null()
                            .default(0),
                    )
                    .to_owned(),
            )
            .await?;

        let mut seed = Query::insert();
        seed.into_table(VisitTotals::Table).columns([
            VisitTotals::Shard,
            VisitTotals::Visits,
            VisitTotals::Visitors,
        ]);
        for shard in 0..VISIT_TOTAL_SHARDS {
            seed.values([shard.into(), 0i64.into(), 0i64.into()])
                .map_err(|e| DbErr::Custom(format!("seeding visit_totals: {e}")))?;
        }
        manager.exec_stmt(seed).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(VisitTotals::Table).to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table(Visitors::Table).to_owned())
            .await
    }
}
