//! The blog of the Django Channels + Ariadne article: authors, `postBlog`,
//! and `getLatestBlog`, a subscription that tells readers about the latest
//! post as it is published: pushed by the post's SeaORM hook through
//! graphex, never polled. `main.rs` serves it; the tests start it on port 0.

use async_graphql::{Context, ID, InputObject, Object, Result, Schema, SimpleObject, Subscription};
use axum::Router;
use futures_util::{Stream, StreamExt};
use graphex::{ActionSubscription, ChangesArgs, Hub};
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, ConnectOptions, ConnectionTrait, Database, DatabaseConnection,
    EntityTrait, QueryFilter, QueryOrder, Schema as DbSchema,
};

pub mod author {
    use sea_orm::entity::prelude::*;

    /// A blog author.
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel, graphex::ModelSubscription)]
    #[sea_orm(table_name = "authors")]
    #[graphex(stream = "authors", serialize_data = true)]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i32,
        #[sea_orm(unique)]
        pub username: String,
        pub age: i32,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    #[graphex::hooks]
    impl ActiveModelBehavior for ActiveModel {}
}

pub mod blog {
    use sea_orm::entity::prelude::*;

    /// A blog post; id-only notifications (readers load the post).
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel, graphex::ModelSubscription)]
    #[sea_orm(table_name = "blogs")]
    #[graphex(stream = "blogs", serialize_data = false)]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i32,
        pub title: String,
        pub content: String,
        pub author_id: i32,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    #[graphex::hooks]
    impl ActiveModelBehavior for ActiveModel {}
}

/// `Author { username age }`.
#[derive(SimpleObject, Clone, Debug)]
pub struct Author {
    username: String,
    age: i32,
}

impl From<author::Model> for Author {
    fn from(row: author::Model) -> Self {
        Author { username: row.username, age: row.age }
    }
}

/// `Blog { pk title content author }`.
#[derive(SimpleObject, Clone, Debug)]
pub struct Blog {
    pk: i32,
    title: String,
    content: String,
    author: Author,
}

/// The input of `postBlog`.
#[derive(InputObject)]
pub struct PostBlogInput {
    author_username: String,
    title: String,
    content: String,
}

/// The answer of `postBlog`.
#[derive(SimpleObject)]
pub struct PostBlogResult {
    message: String,
    blog: Blog,
}

fn db<'a>(ctx: &Context<'a>) -> &'a DatabaseConnection {
    ctx.data_unchecked::<DatabaseConnection>()
}

/// A post with its author.
async fn load(db: &DatabaseConnection, row: blog::Model) -> Result<Blog> {
    let author = author::Entity::find_by_id(row.author_id).one(db).await?.ok_or("the author is gone")?;
    Ok(Blog { pk: row.id, title: row.title, content: row.content, author: author.into() })
}

async fn latest(db: &DatabaseConnection) -> Result<Option<Blog>> {
    match blog::Entity::find().order_by_desc(blog::Column::Id).one(db).await? {
        Some(row) => Ok(Some(load(db, row).await?)),
        None => Ok(None),
    }
}

/// Queries.
pub struct Query;

#[Object]
impl Query {
    /// Every author.
    async fn authors(&self, ctx: &Context<'_>) -> Result<Vec<Author>> {
        Ok(author::Entity::find().all(db(ctx)).await?.into_iter().map(Author::from).collect())
    }

    /// The latest post, if any.
    async fn latest_blog(&self, ctx: &Context<'_>) -> Result<Option<Blog>> {
        latest(db(ctx)).await
    }
}

/// Mutations: rows go through SeaORM's ActiveModel, so the hooks announce them.
pub struct Mutation;

#[Object]
impl Mutation {
    async fn create_author(&self, ctx: &Context<'_>, username: String, age: i32) -> Result<Author> {
        let row = author::ActiveModel { username: Set(username), age: Set(age), ..Default::default() };
        Ok(row.insert(db(ctx)).await?.into())
    }

    async fn post_blog(&self, ctx: &Context<'_>, input: PostBlogInput) -> Result<PostBlogResult> {
        let author = author::Entity::find()
            .filter(author::Column::Username.eq(&input.author_username))
            .one(db(ctx))
            .await?
            .ok_or("Author does not exist")?;
        let row = blog::ActiveModel {
            title: Set(input.title),
            content: Set(input.content),
            author_id: Set(author.id),
            ..Default::default()
        };
        let row = row.insert(db(ctx)).await?;
        Ok(PostBlogResult { message: "Blog posted".into(), blog: load(db(ctx), row).await? })
    }
}

/// Subscriptions.
pub struct BlogSubscription;

#[Subscription]
impl BlogSubscription {
    /// The latest post now (if any), then every post as it is published.
    async fn get_latest_blog(&self, ctx: &Context<'_>) -> Result<impl Stream<Item = Blog>> {
        let db = db(ctx).clone();
        // Listen first, then read the current latest, so no post falls between.
        let args = ChangesArgs::new(ActionSubscription::Create, None::<ID>, None, None);
        let changes = graphex::changes::<blog::Model>(ctx, args).await?;
        let current = latest(&db).await?;
        let seen = current.as_ref().map_or(0, |blog| blog.pk);
        let published = changes.filter_map(move |change| {
            let db = db.clone();
            async move {
                let id = change.ok()?.id.0.as_i64()?;
                if id <= i64::from(seen) {
                    return None;
                }
                let row = blog::Entity::find_by_id(i32::try_from(id).ok()?).one(&db).await.ok()??;
                load(&db, row).await.ok()
            }
        });
        Ok(futures_util::stream::iter(current).chain(published))
    }
}

/// The GraphQL schema over `db`.
pub fn schema(db: DatabaseConnection) -> Schema<Query, Mutation, BlogSubscription> {
    Schema::build(Query, Mutation, BlogSubscription).data(db).limit_depth(32).limit_complexity(1_000).finish()
}

/// Connects and creates the tables.
pub async fn connect(url: &str) -> DatabaseConnection {
    let mut options = ConnectOptions::new(url);
    if url.starts_with("sqlite::memory:") {
        // One connection: every pooled connection would get its own empty
        // memory database. It must never be reaped either (that would drop
        // the database), so no idle timeout or lifetime.
        options.max_connections(1).idle_timeout(None).max_lifetime(None);
    }
    let db = Database::connect(options).await.expect("database reachable");
    let builder = DbSchema::new(db.get_database_backend());
    for statement in [
        builder.create_table_from_entity(author::Entity).if_not_exists().to_owned(),
        builder.create_table_from_entity(blog::Entity).if_not_exists().to_owned(),
    ] {
        db.execute(&statement).await.expect("table created");
    }
    db
}

/// The whole app: GraphQL over HTTP and the standard WebSocket protocols at `/graphql`.
pub fn app(db: DatabaseConnection, hub: Hub) -> Router {
    graphex::router(schema(db), hub, graphex::Anonymous)
}
