//! The reference application: four annotated tables, their mutations, and
//! the graphex endpoints. `main.rs` serves it; the end-to-end tests start it
//! on port 0.

use async_graphql::{Context, MergedSubscription, Object, Result, Schema};
use axum::Router;
use graphex::{Hub, Principal};
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ConnectOptions, ConnectionTrait, Database, DatabaseConnection, EntityTrait,
    ModelTrait, Schema as DbSchema,
};

pub mod user {
    use sea_orm::entity::prelude::*;

    /// A user: public stream, full payload.
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel, async_graphql::SimpleObject, graphex::ModelSubscription)]
    #[sea_orm(table_name = "users")]
    #[graphql(name = "User")]
    #[graphex(stream = "users", serialize_data = true)]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i32,
        #[sea_orm(unique)]
        pub username: String,
        // TEXT: MySQL makes a `String` a VARCHAR(255), and the tests send
        // notifications of up to 60 KiB.
        #[sea_orm(column_type = "Text")]
        pub email: String,
        pub tenant: String,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    #[graphex::hooks]
    impl ActiveModelBehavior for ActiveModel {}
}

pub mod note {
    use graphex::{Denied, Scope, SubscribeRequest};
    use sea_orm::entity::prelude::*;

    /// A private note: authenticated, scoped to its owner.
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel, async_graphql::SimpleObject, graphex::ModelSubscription)]
    #[sea_orm(table_name = "notes")]
    #[graphql(name = "Note")]
    #[graphex(stream = "notes", serialize_data = true, authenticated, scope = "my_notes")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i32,
        pub owner: String,
        pub text: String,
    }

    /// Only the subscriber's own notes.
    pub fn my_notes(request: &SubscribeRequest<'_>) -> Result<Scope<Entity>, Denied> {
        Ok(Scope::new().eq(Column::Owner, request.require_principal()?.id.clone()))
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    #[graphex::hooks]
    impl ActiveModelBehavior for ActiveModel {}
}

pub mod message {
    use graphex::{Denied, Scope, SubscribeRequest};
    use sea_orm::entity::prelude::*;

    /// A chat message: scoped to the subscriber's tenant, routed by (tenant, room).
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel, async_graphql::SimpleObject, graphex::ModelSubscription)]
    #[sea_orm(table_name = "messages")]
    #[graphql(name = "Message")]
    #[graphex(
        stream = "messages",
        serialize_data = true,
        authenticated,
        scope = "my_tenant",
        index_fields(tenant, room)
    )]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i32,
        pub tenant: String,
        pub room: i32,
        pub text: String,
    }

    /// Only messages of the subscriber's tenant.
    pub fn my_tenant(request: &SubscribeRequest<'_>) -> Result<Scope<Entity>, Denied> {
        let principal = request.require_principal()?;
        let tenant = principal.claim("tenant").cloned().ok_or_else(|| Denied::new("no tenant"))?;
        Ok(Scope::new().eq(Column::Tenant, tenant))
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    #[graphex::hooks]
    impl ActiveModelBehavior for ActiveModel {}
}

pub mod comment {
    use sea_orm::entity::prelude::*;

    /// A comment: public, id-only payload.
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel, async_graphql::SimpleObject, graphex::ModelSubscription)]
    #[sea_orm(table_name = "comments")]
    #[graphql(name = "Comment")]
    #[graphex(stream = "comments", serialize_data = false)]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i32,
        pub post: i32,
        pub text: String,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    #[graphex::hooks]
    impl ActiveModelBehavior for ActiveModel {}
}

/// The subscription root: one line per model.
#[derive(MergedSubscription, Default)]
pub struct Subscription(
    user::UserSubscriptionRoot,
    note::NoteSubscriptionRoot,
    message::MessageSubscriptionRoot,
    comment::CommentSubscriptionRoot,
);

/// Queries.
pub struct Query;

#[Object]
impl Query {
    /// Every user.
    async fn users(&self, ctx: &Context<'_>) -> Result<Vec<user::Model>> {
        Ok(user::Entity::find().all(db(ctx)).await?)
    }
}

fn db<'a>(ctx: &Context<'a>) -> &'a DatabaseConnection {
    ctx.data_unchecked::<DatabaseConnection>()
}

fn me<'a>(ctx: &Context<'a>) -> Result<&'a Principal> {
    ctx.data_opt::<Principal>().ok_or_else(|| "authentication required".into())
}

/// Mutations; each change goes through SeaORM's ActiveModel, so the hooks announce it.
pub struct Mutation;

#[Object]
impl Mutation {
    async fn create_user(
        &self,
        ctx: &Context<'_>,
        username: String,
        email: String,
        tenant: String,
    ) -> Result<user::Model> {
        let row =
            user::ActiveModel { username: Set(username), email: Set(email), tenant: Set(tenant), ..Default::default() };
        Ok(row.insert(db(ctx)).await?)
    }

    async fn update_user(&self, ctx: &Context<'_>, id: i32, email: String) -> Result<user::Model> {
        let row = user::Entity::find_by_id(id).one(db(ctx)).await?.ok_or("no such user")?;
        let mut row: user::ActiveModel = row.into();
        row.email = Set(email);
        Ok(row.update(db(ctx)).await?)
    }

    async fn delete_user(&self, ctx: &Context<'_>, id: i32) -> Result<bool> {
        let Some(row) = user::Entity::find_by_id(id).one(db(ctx)).await? else { return Ok(false) };
        Ok(row.delete(db(ctx)).await?.rows_affected == 1)
    }

    async fn create_note(&self, ctx: &Context<'_>, text: String) -> Result<note::Model> {
        let owner = me(ctx)?.id.clone();
        let row = note::ActiveModel { owner: Set(owner), text: Set(text), ..Default::default() };
        Ok(row.insert(db(ctx)).await?)
    }

    async fn update_note(&self, ctx: &Context<'_>, id: i32, text: String) -> Result<note::Model> {
        let row = note::Entity::find_by_id(id).one(db(ctx)).await?.ok_or("no such note")?;
        if row.owner != me(ctx)?.id {
            return Err("not your note".into());
        }
        let mut row: note::ActiveModel = row.into();
        row.text = Set(text);
        Ok(row.update(db(ctx)).await?)
    }

    async fn delete_note(&self, ctx: &Context<'_>, id: i32) -> Result<bool> {
        let Some(row) = note::Entity::find_by_id(id).one(db(ctx)).await? else { return Ok(false) };
        if row.owner != me(ctx)?.id {
            return Err("not your note".into());
        }
        Ok(row.delete(db(ctx)).await?.rows_affected == 1)
    }

    async fn create_message(&self, ctx: &Context<'_>, room: i32, text: String) -> Result<message::Model> {
        let tenant = me(ctx)?.claim("tenant").and_then(|tenant| tenant.as_str()).ok_or("no tenant")?.to_owned();
        let row = message::ActiveModel { tenant: Set(tenant), room: Set(room), text: Set(text), ..Default::default() };
        Ok(row.insert(db(ctx)).await?)
    }

    async fn create_comment(&self, ctx: &Context<'_>, post: i32, text: String) -> Result<comment::Model> {
        let row = comment::ActiveModel { post: Set(post), text: Set(text), ..Default::default() };
        Ok(row.insert(db(ctx)).await?)
    }

    async fn update_comment(&self, ctx: &Context<'_>, id: i32, text: String) -> Result<comment::Model> {
        let row = comment::Entity::find_by_id(id).one(db(ctx)).await?.ok_or("no such comment")?;
        let mut row: comment::ActiveModel = row.into();
        row.text = Set(text);
        Ok(row.update(db(ctx)).await?)
    }

    async fn delete_comment(&self, ctx: &Context<'_>, id: i32) -> Result<bool> {
        let Some(row) = comment::Entity::find_by_id(id).one(db(ctx)).await? else { return Ok(false) };
        Ok(row.delete(db(ctx)).await?.rows_affected == 1)
    }
}

/// `Bearer <username>`: the user of that name, with their tenant as a claim.
pub struct UsernameAuth(pub DatabaseConnection);

#[async_trait::async_trait]
impl graphex::Authenticator for UsernameAuth {
    async fn authenticate(&self, token: &str) -> Option<Principal> {
        use sea_orm::{ColumnTrait, QueryFilter};
        let user = user::Entity::find().filter(user::Column::Username.eq(token)).one(&self.0).await.ok()??;
        // MySQL's and MariaDB's default collations would let `ALICE` or
        // `alice ` in as alice.
        if user.username != token {
            return None;
        }
        Some(Principal::new(user.username).with_claim("tenant", user.tenant))
    }
}

/// Connects and creates the tables (SQLite, PostgreSQL, MySQL or MariaDB).
/// `schema` selects a PostgreSQL schema (created if missing), so tests can
/// share one database.
pub async fn connect(url: &str, schema: Option<&str>) -> DatabaseConnection {
    if let Some(schema) = schema {
        let admin = Database::connect(url).await.expect("database reachable");
        admin.execute_unprepared(&format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\"")).await.expect("schema created");
    }
    let mut options = ConnectOptions::new(url);
    if url.starts_with("sqlite::memory:") {
        // One connection: every pooled connection would get its own empty
        // memory database; and never reaped, which would empty it.
        options.max_connections(1).idle_timeout(None).max_lifetime(None);
    }
    if let Some(schema) = schema {
        options.set_schema_search_path(schema);
    }
    let db = Database::connect(options).await.expect("database reachable");
    let builder = DbSchema::new(db.get_database_backend());
    for statement in [
        builder.create_table_from_entity(user::Entity).if_not_exists().to_owned(),
        builder.create_table_from_entity(note::Entity).if_not_exists().to_owned(),
        builder.create_table_from_entity(message::Entity).if_not_exists().to_owned(),
        builder.create_table_from_entity(comment::Entity).if_not_exists().to_owned(),
    ] {
        db.execute(&statement).await.expect("table created");
    }
    db
}

/// The GraphQL schema over `db`.
pub fn schema(db: DatabaseConnection) -> Schema<Query, Mutation, Subscription> {
    Schema::build(Query, Mutation, Subscription::default()).data(db).limit_depth(32).limit_complexity(1_000).finish()
}

/// The whole app: GraphQL over HTTP at `/graphql`, the two-channel socket at
/// `/ws/graphql/`, the browser client page at `/graphql/client/`, the
/// hub's Prometheus metrics at `/metrics`.
pub fn app(db: DatabaseConnection, hub: Hub) -> Router {
    serve(schema(db.clone()), hub, db)
}

/// [`app`] with introspection disabled, as some production servers run
/// (the client page then completes GraphQL keywords only).
#[allow(dead_code, reason = "served by tests/browser.rs only")]
pub fn app_without_introspection(db: DatabaseConnection, hub: Hub) -> Router {
    let schema =
        Schema::build(Query, Mutation, Subscription::default()).data(db.clone()).disable_introspection().finish();
    serve(schema, hub, db)
}

fn serve(schema: Schema<Query, Mutation, Subscription>, hub: Hub, db: DatabaseConnection) -> Router {
    let client = graphex::client_page(graphex::ClientPage::from_config(hub.config()));
    let metrics = graphex::metrics_router(hub.clone());
    graphex::router(schema, hub, UsernameAuth(db)).merge(client).merge(metrics)
}
