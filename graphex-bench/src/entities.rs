//! The benchmark's tables. Every row carries `created_us`, the wall-clock
//! time (microseconds since the Unix epoch) taken just before it is saved,
//! from which clients compute the end-to-end latency.

use sea_orm::{ConnectOptions, ConnectionTrait, Database, DatabaseConnection, Schema};

/// Chat messages routed by room: full payload, value-indexed on `room_id`.
pub mod message {
    use sea_orm::entity::prelude::*;

    /// A message in a room.
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel, graphex::ModelSubscription)]
    #[sea_orm(table_name = "messages")]
    #[graphex(stream = "messages", name = "Message", serialize_data = true, index_fields(room_id))]
    pub struct Model {
        /// Primary key.
        #[sea_orm(primary_key)]
        pub id: i32,
        /// The room.
        pub room_id: i32,
        /// Who wrote it.
        pub author: String,
        /// The text.
        pub body: String,
        /// When it was saved (µs since the Unix epoch).
        pub created_us: i64,
    }

    /// No relations.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    #[graphex::hooks]
    impl ActiveModelBehavior for ActiveModel {}
}

/// The same messages without index fields: a room is a plain filter on the coarse group.
pub mod plain_message {
    use sea_orm::entity::prelude::*;

    /// A message in a room.
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel, graphex::ModelSubscription)]
    #[sea_orm(table_name = "plain_messages")]
    #[graphex(stream = "plain_messages", name = "PlainMessage", serialize_data = true)]
    pub struct Model {
        /// Primary key.
        #[sea_orm(primary_key)]
        pub id: i32,
        /// The room.
        pub room_id: i32,
        /// Who wrote it.
        pub author: String,
        /// The text.
        pub body: String,
        /// When it was saved (µs since the Unix epoch).
        pub created_us: i64,
    }

    /// No relations.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    #[graphex::hooks]
    impl ActiveModelBehavior for ActiveModel {}
}

/// The same messages in id-only payload mode.
pub mod id_message {
    use sea_orm::entity::prelude::*;

    /// A message in a room.
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel, graphex::ModelSubscription)]
    #[sea_orm(table_name = "id_messages")]
    #[graphex(stream = "id_messages", name = "IdMessage", serialize_data = false)]
    pub struct Model {
        /// Primary key.
        #[sea_orm(primary_key)]
        pub id: i32,
        /// The room.
        pub room_id: i32,
        /// Who wrote it.
        pub author: String,
        /// The text.
        pub body: String,
        /// When it was saved (µs since the Unix epoch).
        pub created_us: i64,
    }

    /// No relations.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    #[graphex::hooks]
    impl ActiveModelBehavior for ActiveModel {}
}

/// The messages of the async-graphql alternative: plain SeaORM, no graphex.
pub mod alt_message {
    use sea_orm::entity::prelude::*;

    /// A message in a room.
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel, async_graphql::SimpleObject)]
    #[sea_orm(table_name = "alt_messages")]
    #[graphql(name = "Message", rename_fields = "snake_case")]
    pub struct Model {
        /// Primary key.
        #[sea_orm(primary_key)]
        pub id: i32,
        /// The room.
        pub room_id: i32,
        /// Who wrote it.
        pub author: String,
        /// The text.
        pub body: String,
        /// When it was saved (µs since the Unix epoch).
        pub created_us: i64,
    }

    /// No relations.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// A fresh in-memory SQLite database with every benchmark table.
pub async fn database() -> Result<DatabaseConnection, sea_orm::DbErr> {
    let mut options = ConnectOptions::new("sqlite::memory:");
    // One connection: every pooled connection would get its own empty memory database.
    options.max_connections(1).sqlx_logging(false);
    // A system that cannot keep up (the alternative's latency run queues
    // 1 000 inserts behind its fan-out) is measured as slow, not failed by
    // the pool's default 30 s acquire timeout.
    options.acquire_timeout(std::time::Duration::from_secs(600));
    // No ping on every acquire (sqlx's default), which for SQLite is a
    // round trip to the connection's worker thread before each insert: an
    // in-memory database's one connection cannot go stale. Unless
    // `GRAPHEX_BENCH_PING_ON_ACQUIRE=1` (to compare).
    options.test_before_acquire(std::env::var("GRAPHEX_BENCH_PING_ON_ACQUIRE").as_deref() == Ok("1"));
    let db = Database::connect(options).await?;
    let builder = Schema::new(db.get_database_backend());
    for statement in [
        builder.create_table_from_entity(message::Entity),
        builder.create_table_from_entity(plain_message::Entity),
        builder.create_table_from_entity(id_message::Entity),
        builder.create_table_from_entity(alt_message::Entity),
    ] {
        db.execute(&statement).await?;
    }
    Ok(db)
}

/// The text of every message (a typical chat line, 81 bytes).
pub const BODY: &str = "The quick brown fox jumps over the lazy dog, then checks the room for new replies";

/// The author of every message in `room`.
pub fn author(room: i32) -> String {
    format!("user-{room}")
}

/// Microseconds since the Unix epoch, now.
pub fn now_us() -> i64 {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    i64::try_from(since.as_micros()).unwrap_or(i64::MAX)
}
