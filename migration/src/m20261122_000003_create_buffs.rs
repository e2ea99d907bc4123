//! Buffs (quiz questions) and their answers; `published` makes `buffs` an outbox.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Buffs {
    Table,
    Id,
    Question,
    CreatedAt,
    Published,
}

#[derive(DeriveIden)]
enum BuffAnswers {
    Table,
    BuffId,
    Position,
    Answer,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Buffs::Table)
                    .col(
                        ColumnDef::new(Buffs::Id)
                            .big_integer()
                            .not_null()
                            .auto_increment()
                            .primary_key(),
                    )
                    .col(ColumnDef::new(Buffs::Question).text().not_null())
                    .col(
                        ColumnDef::new(Buffs::CreatedAt)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(Buffs::Published)
                            .boolean()
                            .not_null()
                            .default(false),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(BuffAnswers::Table)
                    .col(ColumnDef::new(BuffAnswers::BuffId).big_integer().not_null())
                    .col(
                        ColumnDef::new(BuffAnswers::Position)
                            .small_integer()
                            .not_null(),
                    )
                    .col(ColumnDef::new(BuffAnswers::Answer).text().not_null())
                    .primary_key(
                        Index::create()
                            .col(BuffAnswers::BuffId)
                            .col(BuffAnswers::Position),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .from(BuffAnswers::Table, BuffAnswers::BuffId)
                            .to(Buffs::Table, Buffs::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("buffs_unpublished")
                    .table(Buffs::Table)
                    .col(Buffs::Published)
                    .col(Buffs::Id)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(BuffAnswers::Table).to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table(Buffs::Table).to_owned())
            .await
    }
}
