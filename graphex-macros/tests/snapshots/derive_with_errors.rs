// #[derive(ModelSubscription)] with two mistakes: the errors and a placeholder root:
//
// #[sea_orm(table_name = "users")]
// #[graphex(stream = "my users", index_fields(nope))]
// pub struct Model {
//     #[sea_orm(primary_key)]
//     pub id: i32,
// }
//
// Regenerate with `GRAPHEX_BLESS=1 cargo test -p graphex-macros snapshots`.

::core::compile_error! {
    "invalid stream `my users`: use 1 to 50 ASCII letters, digits, `_` or `.`"
}
::core::compile_error! {
    "index field names no field of `Model`"
}
/// Placeholder: the derive reported errors.
#[derive(
    ::core::default::Default,
    ::core::clone::Clone,
    ::core::marker::Copy,
    ::core::fmt::Debug
)]
pub struct UserSubscriptionRoot;
#[::graphex::__private::async_graphql::Subscription(
    crate = "::graphex::__private::async_graphql"
)]
impl UserSubscriptionRoot {
    /// Placeholder: the derive reported errors.
    async fn placeholder(&self) -> impl ::graphex::__private::Stream<Item = bool> {
        ::graphex::__private::empty_stream()
    }
}
