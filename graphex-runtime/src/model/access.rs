//! Who is asking, what they may subscribe to, and the server-forced filter.

use sea_orm::{EntityTrait, IdenStatic};
use serde_json::{Map, Value as Json};

use super::Lookup;

/// The authenticated identity behind a request or a WebSocket.
///
/// The application builds it (see [`crate::Authenticator`]); graphex uses
/// `id` for channel ownership and `authenticated` authorization, and hands
/// the whole value to scope and authorization functions. It is
/// serializable because a subscribe forwarded to another process carries
/// the principal its sender authenticated (never the token).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Principal {
    /// Stable identity, e.g. a user id or name.
    pub id: String,
    /// Free-form claims (tenant, roles, ...).
    pub claims: Map<String, Json>,
}

impl Principal {
    /// A principal with no claims.
    pub fn new(id: impl Into<String>) -> Self {
        Principal { id: id.into(), claims: Map::new() }
    }

    /// Adds a claim.
    pub fn with_claim(mut self, key: impl Into<String>, value: impl Into<Json>) -> Self {
        self.claims.insert(key.into(), value.into());
        self
    }

    /// A claim's value.
    pub fn claim(&self, key: &str) -> Option<&Json> {
        self.claims.get(key)
    }
}

/// A subscribe was refused by authorization or scope. The message reaches
/// the client in the confirmation's `error`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Denied(String);

impl Denied {
    /// A denial with a message for the client.
    pub fn new(message: impl Into<String>) -> Self {
        Denied(message.into())
    }

    /// The message the client gets.
    pub fn message(&self) -> &str {
        &self.0
    }
}

/// What scope and authorization functions see of a subscribe request.
pub struct SubscribeRequest<'a> {
    pub(crate) ctx: &'a async_graphql::Context<'a>,
    pub(crate) principal: Option<&'a Principal>,
}

impl std::fmt::Debug for SubscribeRequest<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SubscribeRequest").field("principal", &self.principal).finish_non_exhaustive()
    }
}

impl<'a> SubscribeRequest<'a> {
    /// Builds a request view over a resolver context.
    pub fn new(ctx: &'a async_graphql::Context<'a>) -> Self {
        let principal = ctx.data_opt::<Principal>();
        SubscribeRequest { ctx, principal }
    }

    /// The requesting principal, if the request was authenticated.
    pub fn principal(&self) -> Option<&'a Principal> {
        self.principal
    }

    /// The principal, or a denial saying authentication is required.
    pub fn require_principal(&self) -> Result<&'a Principal, Denied> {
        self.principal.ok_or_else(|| Denied::new("authentication required"))
    }

    /// Application data attached to the GraphQL request or schema.
    pub fn data<T: std::any::Any + Send + Sync>(&self) -> Option<&'a T> {
        self.ctx.data_opt::<T>()
    }
}

/// Everyone may subscribe.
pub fn allow_public(_: &SubscribeRequest<'_>) -> Result<(), Denied> {
    Ok(())
}

/// Only authenticated principals may subscribe.
pub fn allow_authenticated(request: &SubscribeRequest<'_>) -> Result<(), Denied> {
    request.require_principal().map(|_| ())
}

/// The server-forced filter of a subscription: typed over the entity's
/// columns, so a scope naming a column the model lacks does not compile.
///
/// ```ignore
/// fn my_notes(req: &SubscribeRequest<'_>) -> Result<Scope<Entity>, Denied> {
///     Ok(Scope::new().eq(Column::Owner, req.require_principal()?.id.clone()))
/// }
/// ```
pub struct Scope<E: EntityTrait> {
    pub(crate) clauses: Vec<(E::Column, Lookup, Json)>,
}

impl<E: EntityTrait> Default for Scope<E> {
    fn default() -> Self {
        Scope { clauses: Vec::new() }
    }
}

impl<E: EntityTrait> std::fmt::Debug for Scope<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut list = f.debug_list();
        for (column, lookup, value) in &self.clauses {
            list.entry(&(column.as_str().to_owned(), lookup, value));
        }
        list.finish()
    }
}

impl<E: EntityTrait> Scope<E> {
    /// No restriction.
    pub fn new() -> Self {
        Self::default()
    }

    /// Requires `column == value`.
    pub fn eq(self, column: E::Column, value: impl Into<Json>) -> Self {
        self.filter(column, Lookup::Exact, value)
    }

    /// Requires `column <lookup> value`.
    pub fn filter(mut self, column: E::Column, lookup: Lookup, value: impl Into<Json>) -> Self {
        self.clauses.push((column, lookup, value.into()));
        self
    }

    /// The scope's clauses as (column name, lookup, value).
    pub fn clauses(&self) -> impl Iterator<Item = (String, Lookup, &Json)> {
        self.clauses.iter().map(|(column, lookup, value)| (column.as_str().to_owned(), *lookup, value))
    }
}

/// A scope function that forces nothing: the default.
pub fn no_scope<E: EntityTrait>(_: &SubscribeRequest<'_>) -> Result<Scope<E>, Denied> {
    Ok(Scope::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn principal_claims() {
        let principal = Principal::new("alice").with_claim("tenant", "acme");
        assert_eq!(principal.claim("tenant"), Some(&Json::from("acme")));
        assert_eq!(principal.claim("missing"), None);
    }
}
