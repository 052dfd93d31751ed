//! The `#[graphex(...)]` attributes as declared to darling.

use darling::util::{Flag, PathList, SpannedValue};
use darling::{FromDeriveInput, FromField};

/// Struct-level attributes of `#[derive(ModelSubscription)]`.
#[derive(FromDeriveInput)]
#[darling(attributes(graphex), supports(struct_named), forward_attrs(sea_orm))]
pub(crate) struct ModelAttrs {
    pub(crate) ident: syn::Ident,
    pub(crate) vis: syn::Visibility,
    pub(crate) data: darling::ast::Data<darling::util::Ignored, FieldAttrs>,
    /// Stream name: notifications carry it and groups start with it.
    pub(crate) stream: SpannedValue<String>,
    /// GraphQL name prefix (`User` -> `UserFields`, `userSubscription`).
    pub(crate) name: Option<SpannedValue<String>>,
    /// The `model` label in notifications.
    pub(crate) label: Option<SpannedValue<String>>,
    /// Description of the subscription field.
    pub(crate) description: Option<String>,
    /// Full payload (`true`) or id-only (`false`); absent: the global default.
    pub(crate) serialize_data: Option<bool>,
    /// Fields whose values name value-scoped groups.
    #[darling(default)]
    pub(crate) index_fields: PathList,
    /// Fields kept out of payloads, the Fields enum and filters.
    #[darling(default)]
    pub(crate) skip: PathList,
    /// `fn(&SubscribeRequest) -> Result<Scope<Entity>, Denied>`.
    pub(crate) scope: Option<syn::Path>,
    /// Only authenticated principals may subscribe.
    pub(crate) authenticated: Flag,
    /// `fn(&SubscribeRequest) -> Result<(), Denied>`.
    pub(crate) authorize: Option<syn::Path>,
    /// Path to the runtime crate.
    #[darling(rename = "crate")]
    pub(crate) krate: Option<syn::Path>,
    /// The forwarded `#[sea_orm(...)]` attributes (for `table_name`).
    pub(crate) attrs: Vec<syn::Attribute>,
}

/// Field-level attributes.
#[derive(FromField)]
#[darling(attributes(graphex), forward_attrs(sea_orm))]
pub(crate) struct FieldAttrs {
    pub(crate) ident: Option<syn::Ident>,
    pub(crate) ty: syn::Type,
    pub(crate) attrs: Vec<syn::Attribute>,
    /// Keep this field out of every payload and filter.
    pub(crate) skip: Flag,
    /// Payload / filter key for this field.
    pub(crate) rename: Option<SpannedValue<String>>,
}
