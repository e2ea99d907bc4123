//! Chat messages: the durable record and the outbox (`published` is false until the
//! broker acknowledged the message).

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum ChatMessages {
    Table,
    Id,
    Channel,
    UserName,
    Text,
    SentAt,
    Published,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(ChatMessages::Table)
                    .col(
                        ColumnDef::new(ChatMessages::Id)
                            .big_integer()
                            .not_null()
                            .auto_increment()
                            .primary_key(),
                    )
                    .col(
                        ColumnDef::new(ChatMessages::Channel)
                            .string_len(64)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(ChatMessages::UserName)
                            .string_len(64)
                            .not_null(),
                    )
                    .col(ColumnDef::new(ChatMessages::Text).text().not_null())
                    .col(
                        ColumnDef::new(ChatMessages::SentAt)
                            .timestamp_with_time_zone()
                            .not_null()
                            .default(Expr::current_timestamp()),
                    )
                    .col(
                        ColumnDef::new(ChatMessages::Published)
                            .boolean()
                            .not_null()
                            .default(false),
                    )
                    .to_owned(),
            )
            .await?;
        // History and resume read one channel in id order.
        manager
            .create_index(
                Index::create()
                    .name("chat_messages_channel_id")
                    .table(ChatMessages::Table)
                    .col(ChatMessages::Channel)
                    .col(ChatMessages::Id)
                    .to_owned(),
            )
            .await?;
        // The outbox relay reads unpublished messages in id order.
        manager
            .create_index(
                Index::create()
                    .name("chat_messages_unpublished")
                    .table(ChatMessages::Table)
                    .col(ChatMessages::Published)
                    .col(ChatMessages::Id)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(ChatMessages::Table).to_owned())
            .await
    }
}
