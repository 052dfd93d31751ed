//! Derive and attribute macros of graphex. Use them through the `graphex`
//! crate, which documents them with examples.
//!
//! Phases, one module each: `attr` declares the attributes (darling),
//! `valid` checks them into an `ast::Model`, `expand` emits glue over the
//! runtime, and `fallback` emits placeholders beside errors.

use proc_macro::TokenStream;

mod ast;
mod attr;
mod expand;
mod fallback;
mod hooks;
#[cfg(test)]
mod snapshots;
mod valid;

/// Declares a SeaORM model's live subscription. See the `graphex` crate docs.
#[proc_macro_derive(ModelSubscription, attributes(graphex))]
pub fn derive_model_subscription(input: TokenStream) -> TokenStream {
    let input = syn::parse_macro_input!(input as syn::DeriveInput);
    model_subscription(&input).into()
}

fn model_subscription(input: &syn::DeriveInput) -> proc_macro2::TokenStream {
    let mut errors = darling::Error::accumulator();
    let model = errors.handle(attr::ModelAttrs::parse(input)).and_then(|attrs| valid::model(attrs, &mut errors));
    match (errors.finish(), model) {
        (Ok(()), Some(model)) => expand::expand(&model),
        (Ok(()), None) => fallback::errors_only(
            darling::Error::custom("a subscription needs at least one field").with_span(&input.ident),
        ),
        (Err(error), model) => fallback::with_placeholders(error, model.as_ref()),
    }
}

/// Adds the graphex change hooks to an `impl ActiveModelBehavior for ActiveModel`,
/// keeping any `after_save` / `after_delete` the impl already has.
#[proc_macro_attribute]
pub fn hooks(args: TokenStream, input: TokenStream) -> TokenStream {
    hooks::expand(args.into(), input.into()).into()
}
