// The derive fails, but the placeholder `UserSubscriptionRoot` keeps the merged
// subscription root below compiling: the only error is the real one.
mod user {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel, graphex::ModelSubscription)]
    #[sea_orm(table_name = "users")]
    #[graphex(stream = "my users", serialize_data = true)]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i32,
        pub username: String,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

#[derive(async_graphql::MergedSubscription, Default)]
struct Subscription(user::UserSubscriptionRoot);

struct Query;

#[async_graphql::Object]
impl Query {
    async fn ping(&self) -> bool {
        true
    }
}

fn main() {
    let _schema = async_graphql::Schema::build(Query, async_graphql::EmptyMutation, Subscription::default()).finish();
}
