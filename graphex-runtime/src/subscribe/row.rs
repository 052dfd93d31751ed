//! Row reads for id-only models: when a subscription's filter names a field
//! other than the primary key, an id-only change cannot decide it, so the
//! changed row is read back by primary key.
//!
//! The read is per change and process, not per subscription: the first
//! subscriber that needs it runs it and keeps the row on the decoded change
//! ([`Event::row`](crate::change::codec::Event); one event serves every
//! group of the change, `hub/dispatch.rs`), every other subscription of
//! every channel of the process decides its own filter on that row in memory
//! ([`Filter::matches`](crate::subscribe::filter::Filter::matches), which
//! agrees with the SQL conditions: `tests/it/conditions.rs`).

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter};
use serde_json::Value as Json;

use crate::change::codec::Fetched;
use crate::model::ModelSubscription;

/// Reads a row back by its primary key (canonical JSON), serialized as the
/// model's `values()` does. Shared by the subscriptions of one subscribe.
pub type RowFetch = Arc<dyn Fn(Json) -> BoxFuture<'static, Fetched> + Send + Sync>;

/// The pauses before reading a row again that was not found (about 150 ms
/// in all). Only creates and updates are read back, so a row not found was
/// either deleted since, or is not visible yet: a change captured from
/// PostgreSQL's log can arrive before its transaction is visible to other
/// sessions (the log sends a transaction once its commit record is
/// flushed, a moment before the committing backend makes it visible), and
/// a notification decided on "not found" would be lost.
const NOT_FOUND_RETRIES: [Duration; 5] = [
    Duration::from_millis(5),
    Duration::from_millis(10),
    Duration::from_millis(20),
    Duration::from_millis(40),
    Duration::from_millis(80),
];

/// The row read of model `M` on `db`: one `SELECT` of the whole row,
/// bounded by the primary key (again after each of [`NOT_FOUND_RETRIES`]
/// while it is not found).
pub(crate) fn row_fetch<M: ModelSubscription>(db: DatabaseConnection) -> RowFetch {
    Arc::new(move |pk: Json| {
        let db = db.clone();
        Box::pin(async move {
            for pause in NOT_FOUND_RETRIES {
                match read_row::<M>(&db, &pk).await {
                    Some(fetched) => return fetched,
                    None => tokio::time::sleep(pause).await,
                }
            }
            read_row::<M>(&db, &pk).await.unwrap_or(Fetched::Gone)
        })
    })
}

/// One read of the row of `M` whose primary key is `pk`; `None`: no row
/// has that key (yet).
async fn read_row<M: ModelSubscription>(db: &DatabaseConnection, pk: &Json) -> Option<Fetched> {
    let pk_field = &M::FIELDS[M::PRIMARY_KEY];
    // A key that does not parse as the primary key's type names no row.
    let Ok(key) = (pk_field.parse)(pk.clone()) else { return Some(Fetched::Gone) };
    match <M::Entity as EntityTrait>::find().filter(pk_field.column.eq(key)).one(db).await {
        // The key's own row only: under a case-insensitive or PAD SPACE
        // collation (MySQL's and MariaDB's defaults) `= 'bob'` also finds
        // `Bob` or `bob `. Comparing in memory keeps the primary key's index
        // for the read.
        Ok(Some(row)) => {
            let values = row.values();
            let asked = (pk_field.canonical)(pk.clone());
            if asked.is_ok_and(|asked| values.get(pk_field.name) == Some(&asked)) {
                Some(Fetched::Row(values))
            } else {
                Some(Fetched::Gone)
            }
        }
        Ok(None) => None,
        Err(error) => {
            tracing::warn!(stream = M::STREAM, %error, "row read failed; notifications filtered on it dropped");
            Some(Fetched::Failed)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use serde_json::{Map, json};

    use super::*;
    use crate::change::codec::Change;
    use crate::hub::{Channel, Delivery, Hub, Subscription};
    use crate::model::{Action, Lookup};
    use crate::subscribe::filter::{Clause, Filter};

    /// A row read that counts its calls and answers `{id, room}` (room = id
    /// mod 3) after a pause, so that concurrent readers overlap; `None` for
    /// ids above 100.
    fn counted_reads() -> (RowFetch, Arc<AtomicUsize>) {
        let reads = Arc::new(AtomicUsize::new(0));
        let counter = reads.clone();
        let fetch: RowFetch = Arc::new(move |pk: Json| {
            counter.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                let id = pk.as_i64().unwrap_or_default();
                if id > 100 {
                    return Fetched::Gone;
                }
                Fetched::Row(Map::from_iter([("id".to_owned(), json!(id)), ("room".to_owned(), json!(id % 3))]))
            })
        });
        (fetch, reads)
    }

    fn on_room(group: &str, lookup: Lookup, value: Json, fetch: &RowFetch) -> Subscription {
        let mut subscription = Subscription::of_users(group, Action::Update, Some(json!({"room": value})));
        subscription.filter = Arc::new(Filter::of(vec![Clause { field: 1, name: "room", lookup, value }]));
        subscription.row = Some(fetch.clone());
        subscription
    }

    /// Publishes an id-only change and returns how many frames each channel takes from it.
    async fn frames_per_channel(
        hub: &Hub,
        group: &str,
        change: Change,
        channels: &mut [(Arc<Channel>, tokio::sync::mpsc::Receiver<Delivery>)],
    ) -> Vec<usize> {
        hub.publish(&[group.to_owned()], change.encode()).await;
        let deliveries: Vec<Option<Delivery>> = channels.iter_mut().map(|(_, rx)| rx.try_recv().ok()).collect();
        // Every channel decides at once, as sockets in different shards would.
        let decisions = channels.iter().zip(&deliveries).map(|((channel, _), delivery)| async move {
            let mut frames = Vec::new();
            if let Some(delivery) = delivery {
                channel.frames(delivery, &mut frames).await;
            }
            frames.len()
        });
        futures_util::future::join_all(decisions).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_read_per_change_decides_every_channel() {
        let hub = Hub::default();
        let (fetch, reads) = counted_reads();
        let group = "users-update";
        let filters = [
            (Lookup::Exact, json!(1)),
            (Lookup::Exact, json!(2)),
            (Lookup::Gte, json!(1)),
            (Lookup::Lt, json!(1)),
            (Lookup::In, json!([0, 1])),
            (Lookup::IsNull, json!(true)),
        ];
        let mut channels = Vec::new();
        for (lookup, value) in &filters {
            let (channel, rx) = hub.open_channel(None).unwrap();
            hub.add_subscription(&channel, on_room(group, *lookup, value.clone(), &fetch)).await.unwrap();
            channels.push((channel, rx));
        }
        // One channel with two subscriptions on the group, one matching.
        hub.add_subscription(&channels[1].0, on_room(group, Lookup::Gt, json!(0), &fetch)).await.unwrap();

        let update = |pk: i64| Change { action: Action::Update, ..Change::user_created(pk, None) };
        // Row 4 is in room 1.
        let taken = frames_per_channel(&hub, group, update(4), &mut channels).await;
        assert_eq!(taken, [1, 1, 1, 0, 1, 0]);
        assert_eq!(reads.load(Ordering::SeqCst), 1, "one read for seven subscriptions on six channels");

        let taken = frames_per_channel(&hub, group, update(6), &mut channels).await;
        assert_eq!(taken, [0, 0, 0, 1, 1, 0]);
        assert_eq!(reads.load(Ordering::SeqCst), 2, "one more change, one more read");

        // A row that is gone matches no filter that needs it.
        let taken = frames_per_channel(&hub, group, update(101), &mut channels).await;
        assert_eq!(taken, [0; 6]);
        assert_eq!(reads.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn one_read_for_a_change_sent_to_several_groups() {
        let hub = Hub::default();
        let (fetch, reads) = counted_reads();
        let (coarse, instance) = ("users-update", "users-update-4");
        let mut channels = Vec::new();
        for (group, lookup, value) in [(coarse, Lookup::Exact, json!(1)), (instance, Lookup::Gte, json!(0))] {
            let (channel, rx) = hub.open_channel(None).unwrap();
            hub.add_subscription(&channel, on_room(group, lookup, value, &fetch)).await.unwrap();
            channels.push((channel, rx));
        }
        let update = Change { action: Action::Update, ..Change::user_created(4, None) };
        hub.publish(&[coarse.to_owned(), instance.to_owned()], update.encode()).await;
        let deliveries: Vec<Delivery> = channels.iter_mut().map(|(_, rx)| rx.try_recv().unwrap()).collect();
        assert!(
            Arc::ptr_eq(deliveries[0].event().unwrap(), deliveries[1].event().unwrap()),
            "one event for both groups"
        );
        for ((channel, _), delivery) in channels.iter().zip(&deliveries) {
            let mut frames = Vec::new();
            channel.frames(delivery, &mut frames).await;
            assert_eq!(frames.len(), 1);
        }
        assert_eq!(reads.load(Ordering::SeqCst), 1);

        // The same content in another change (its own nonce) is read again.
        let again = Change { action: Action::Update, ..Change::user_created(4, None) };
        let taken = frames_per_channel(&hub, coarse, again, &mut channels).await;
        assert_eq!(taken, [1, 0]);
        assert_eq!(reads.load(Ordering::SeqCst), 2);
    }

    mod tag {
        #![allow(unreachable_pub, missing_docs)]
        use sea_orm::entity::prelude::*;

        #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
        #[sea_orm(table_name = "tags")]
        pub struct Model {
            #[sea_orm(primary_key, auto_increment = false)]
            pub slug: String,
            pub title: String,
        }

        #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
        pub enum Relation {}

        impl ActiveModelBehavior for ActiveModel {}
    }

    /// What the derive would generate for an id-only `tag`, written out.
    impl ModelSubscription for tag::Model {
        type Entity = tag::Entity;
        const STREAM: &'static str = "tags";
        const LABEL: &'static str = "tag";
        const FULL_PAYLOAD: bool = false;
        const PRIMARY_KEY: usize = 0;
        const FIELDS: &'static [crate::model::Field<tag::Entity>] = &[
            crate::model::Field {
                name: "slug",
                column: tag::Column::Slug,
                parse: crate::model::parse_value::<String>,
                canonical: crate::model::canonical_value::<String>,
            },
            crate::model::Field {
                name: "title",
                column: tag::Column::Title,
                parse: crate::model::parse_value::<String>,
                canonical: crate::model::canonical_value::<String>,
            },
        ];
        const INDEX_FIELDS: &'static [&'static str] = &[];

        fn primary_key(&self) -> Json {
            Json::from(self.slug.clone())
        }
        fn values(&self) -> Map<String, Json> {
            Map::from_iter([("slug".to_owned(), json!(self.slug)), ("title".to_owned(), json!(self.title))])
        }
        fn index_values(&self) -> Vec<(&'static str, Json)> {
            Vec::new()
        }
        fn authorize(_: &crate::model::SubscribeRequest<'_>) -> Result<(), crate::model::Denied> {
            Ok(())
        }
        fn scope(
            _: &crate::model::SubscribeRequest<'_>,
        ) -> Result<crate::model::Scope<tag::Entity>, crate::model::Denied> {
            Ok(crate::model::Scope::new())
        }
    }

    #[tokio::test]
    async fn a_row_read_keeps_only_the_key_asked_for() {
        use sea_orm::ConnectionTrait;
        let mut options = sea_orm::ConnectOptions::new("sqlite::memory:");
        options.max_connections(1);
        let db = sea_orm::Database::connect(options).await.unwrap();
        // A case-insensitive primary key, as under MySQL's and MariaDB's
        // default collations: `slug = 'BOB'` finds `bob`.
        db.execute_unprepared("CREATE TABLE tags (slug TEXT COLLATE NOCASE PRIMARY KEY, title TEXT NOT NULL)")
            .await
            .unwrap();
        db.execute_unprepared("INSERT INTO tags VALUES ('bob', 'Bob')").await.unwrap();
        let fetch = row_fetch::<tag::Model>(db);
        let Fetched::Row(row) = fetch(json!("bob")).await else { panic!("bob's row") };
        assert_eq!(row, Map::from_iter([("slug".to_owned(), json!("bob")), ("title".to_owned(), json!("Bob"))]));
        assert!(matches!(fetch(json!("BOB")).await, Fetched::Gone), "a change of BOB is not decided on bob's row");
        assert!(matches!(fetch(json!("alice")).await, Fetched::Gone));
    }

    #[tokio::test]
    async fn a_row_not_yet_visible_is_read_again() {
        use sea_orm::ConnectionTrait;
        let mut options = sea_orm::ConnectOptions::new("sqlite::memory:");
        options.max_connections(1);
        let db = sea_orm::Database::connect(options).await.unwrap();
        db.execute_unprepared("CREATE TABLE tags (slug TEXT PRIMARY KEY, title TEXT NOT NULL)").await.unwrap();
        // The row becomes visible a moment after the change arrives, as a
        // change captured from the log can arrive before its transaction is
        // visible to other sessions.
        let writer = db.clone();
        let insert = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(30)).await;
            writer.execute_unprepared("INSERT INTO tags VALUES ('late', 'Late')").await.unwrap();
        });
        let fetch = row_fetch::<tag::Model>(db);
        let Fetched::Row(row) = fetch(json!("late")).await else { panic!("the late row is found") };
        assert_eq!(row["title"], json!("Late"));
        insert.await.unwrap();
        // A row that never appears is gone after the retries.
        assert!(matches!(fetch(json!("never")).await, Fetched::Gone));
    }

    #[tokio::test]
    async fn deletes_are_not_read_back() {
        let hub = Hub::default();
        let (fetch, reads) = counted_reads();
        let group = "users-delete";
        let (channel, rx) = hub.open_channel(None).unwrap();
        let mut subscription = on_room(group, Lookup::Exact, json!(1), &fetch);
        subscription.key.action = Action::Delete;
        hub.add_subscription(&channel, subscription).await.unwrap();
        let mut channels = [(channel, rx)];
        let delete = Change { action: Action::Delete, ..Change::user_created(4, None) };
        let taken = frames_per_channel(&hub, group, delete, &mut channels).await;
        assert_eq!(taken, [0], "the row is gone: as before, a filter the change cannot decide drops it");
        assert_eq!(reads.load(Ordering::SeqCst), 0);
    }
}
