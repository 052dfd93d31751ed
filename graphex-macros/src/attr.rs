//! The `#[graphex(...)]` attributes as declared to darling.

use darling::util::{Flag, PathList, SpannedValue};
use darling::{FromDeriveInput, FromField, FromMeta};

/// Struct-level attributes of `#[derive(ModelSubscription)]`.
#[derive(FromDeriveInput)]
#[darling(attributes(graphex), supports(struct_named), forward_attrs(sea_orm))]
pub(crate) struct ModelAttrs {
    pub(crate) ident: syn::Ident,
    pub(crate) vis: syn::Visibility,
    pub(crate) data: darling::ast::Data<darling::util::Ignored, FieldAttrs>,
    /// Stream name: notifications carry it and groups start with it.
    /// Required; checked in `valid` so that its absence is reported at the
    /// struct, beside any other mistake.
    pub(crate) stream: Option<SpannedValue<String>>,
    /// GraphQL name prefix (`User` -> `UserFields`, `userSubscription`).
    pub(crate) name: Option<SpannedValue<String>>,
    /// The `model` label in notifications.
    pub(crate) label: Option<SpannedValue<String>>,
    /// Description of the subscription field.
    pub(crate) description: Option<String>,
    /// Full payload (`true`) or id-only (`false`); absent: the global default.
    #[darling(default, with = bool_value)]
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
    #[darling(default, with = flag)]
    pub(crate) authenticated: Flag,
    /// `fn(&SubscribeRequest) -> Result<(), Denied>`.
    pub(crate) authorize: Option<syn::Path>,
    /// Path to the runtime crate.
    #[darling(rename = "crate")]
    pub(crate) krate: Option<syn::Path>,
    /// The forwarded `#[sea_orm(...)]` attributes (for `table_name`).
    pub(crate) attrs: Vec<syn::Attribute>,
}

impl ModelAttrs {
    /// Reads the attributes. A wrong shape (enum, union, tuple or unit
    /// struct) is reported at what makes it wrong, not at the derive.
    pub(crate) fn parse(input: &syn::DeriveInput) -> darling::Result<Self> {
        Self::from_derive_input(input).map_err(|error| error.with_span(&shape_span(input)))
    }
}

/// Where a derive input stops being a struct with named fields.
fn shape_span(input: &syn::DeriveInput) -> proc_macro2::Span {
    use syn::spanned::Spanned;
    match &input.data {
        syn::Data::Struct(data) => match &data.fields {
            syn::Fields::Named(_) => input.ident.span(),
            syn::Fields::Unnamed(fields) => fields.span(),
            syn::Fields::Unit => data.semi_token.map_or_else(|| input.ident.span(), |semi| semi.span),
        },
        syn::Data::Enum(data) => data.enum_token.span,
        syn::Data::Union(data) => data.union_token.span,
    }
}

/// A `bool` key: `key`, `key = true` or `key = false`. darling's own error
/// for anything else ("Unknown value") does not say what is expected.
fn bool_value(meta: &syn::Meta) -> darling::Result<Option<bool>> {
    bool::from_meta(meta).map(Some).map_err(|_| {
        let error =
            darling::Error::custom(format!("`{}` takes `true` or `false`", darling::util::path_to_string(meta.path())));
        match meta {
            syn::Meta::NameValue(name_value) => error.with_span(&name_value.value),
            _ => error.with_span(meta),
        }
    })
}

/// A bare switch such as `authenticated`. darling's own error for a value
/// ("Unexpected type `string`") does not say that none is wanted.
fn flag(meta: &syn::Meta) -> darling::Result<Flag> {
    Flag::from_meta(meta).map_err(|_| {
        let key = darling::util::path_to_string(meta.path());
        let error = darling::Error::custom(format!("`{key}` takes no value: write `{key}` alone"));
        match meta {
            syn::Meta::NameValue(name_value) => error.with_span(&name_value.value),
            _ => error.with_span(meta),
        }
    })
}

/// Field-level attributes.
#[derive(FromField)]
#[darling(attributes(graphex), forward_attrs(sea_orm))]
pub(crate) struct FieldAttrs {
    pub(crate) ident: Option<syn::Ident>,
    pub(crate) ty: syn::Type,
    pub(crate) attrs: Vec<syn::Attribute>,
    /// Keep this field out of every payload and filter.
    #[darling(default, with = flag)]
    pub(crate) skip: Flag,
    /// Payload / filter key for this field.
    pub(crate) rename: Option<SpannedValue<String>>,
}
