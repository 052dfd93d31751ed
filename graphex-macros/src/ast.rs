//! The validated model the expansion works from. Spans are kept where an
//! error may still need them.

use proc_macro2::Span;

/// Who may subscribe.
pub(crate) enum Auth {
    Public,
    Authenticated,
    Custom(syn::Path),
}

/// One payload field.
pub(crate) struct PayloadField {
    /// The struct field.
    pub(crate) ident: syn::Ident,
    pub(crate) ty: syn::Type,
    /// Payload and filter key.
    pub(crate) key: String,
    /// The SeaORM `Column` variant.
    pub(crate) column: syn::Ident,
    /// The `<Name>Fields` enum variant.
    pub(crate) variant: syn::Ident,
    /// The GraphQL name of the enum item (`USERNAME`).
    pub(crate) item: String,
}

/// Everything the expansion needs.
pub(crate) struct Model {
    pub(crate) ident: syn::Ident,
    pub(crate) vis: syn::Visibility,
    pub(crate) krate: syn::Path,
    pub(crate) stream: String,
    /// GraphQL name prefix, PascalCase.
    pub(crate) name: String,
    pub(crate) name_span: Span,
    pub(crate) label: String,
    pub(crate) description: String,
    pub(crate) full_payload: bool,
    pub(crate) fields: Vec<PayloadField>,
    /// Index into `fields`.
    pub(crate) primary_key: usize,
    /// Index fields as (key, index into `fields`), sorted by key.
    pub(crate) index: Vec<(String, usize)>,
    pub(crate) scope: Option<syn::Path>,
    pub(crate) auth: Auth,
}
