//! What the derive emits when the input is wrong: the errors, and, when the
//! model could still be read, a placeholder subscription root so that code
//! naming it does not add follow-on errors to the real ones.

use proc_macro2::TokenStream;
use quote::quote;

use crate::ast::Model;
use crate::expand::{Names, graphql_crate};

pub(crate) fn errors_only(error: darling::Error) -> TokenStream {
    error.write_errors()
}

pub(crate) fn with_placeholders(error: darling::Error, model: Option<&Model>) -> TokenStream {
    let errors = error.write_errors();
    let Some(model) = model else { return errors };
    let krate = &model.krate;
    let agql = graphql_crate(krate);
    let vis = &model.vis;
    let root = Names::new(&model.name, model.name_span).root;
    quote! {
        #errors

        /// Placeholder: the derive reported errors.
        #[derive(::core::default::Default, ::core::clone::Clone, ::core::marker::Copy, ::core::fmt::Debug)]
        #vis struct #root;

        #[#krate::__private::async_graphql::Subscription(crate = #agql)]
        impl #root {
            /// Placeholder: the derive reported errors.
            async fn placeholder(&self) -> impl #krate::__private::Stream<Item = bool> {
                #krate::__private::empty_stream()
            }
        }
    }
}
