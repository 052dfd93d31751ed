//! Turns a validated [`Model`] into glue: one enum, one confirmation type,
//! one subscription root and one trait impl, each calling the runtime.

use heck::ToLowerCamelCase;
use proc_macro2::TokenStream;
use quote::{format_ident, quote, quote_spanned};

use crate::ast::{Auth, Model};

/// The Rust names of the generated items.
pub(crate) struct Names {
    pub(crate) root: syn::Ident,
    pub(crate) confirmation: syn::Ident,
    pub(crate) fields: syn::Ident,
}

impl Names {
    pub(crate) fn new(name: &str, span: proc_macro2::Span) -> Self {
        Names {
            root: format_ident!("{}SubscriptionRoot", name, span = span),
            confirmation: format_ident!("{}Subscription", name, span = span),
            fields: format_ident!("{}Fields", name, span = span),
        }
    }
}

pub(crate) fn expand(model: &Model) -> TokenStream {
    let names = Names::new(&model.name, model.name_span);
    let fields_enum = if model.full_payload { fields_enum(model, &names) } else { TokenStream::new() };
    let confirmation = confirmation(model, &names);
    let root = root(model, &names);
    let binding = binding(model);
    quote! {
        #fields_enum
        #confirmation
        #root
        #binding
    }
}

fn fields_enum(model: &Model, names: &Names) -> TokenStream {
    let krate = &model.krate;
    let agql = graphql_crate(krate);
    let vis = &model.vis;
    let ident = &names.fields;
    let gql_name = format!("{}Fields", model.name);
    let doc = format!(
        " The payload fields of the `{}` stream (GraphQL enum `{gql_name}`), for the subscription's `data` argument.",
        model.stream
    );
    let variants = model.fields.iter().map(|field| {
        let variant = &field.variant;
        let item = &field.item;
        let doc = format!(" The `{}` field.", field.key);
        quote! {
            #[doc = #doc]
            #[graphql(name = #item)]
            #variant
        }
    });
    let arms = model.fields.iter().map(|field| {
        let variant = &field.variant;
        let key = &field.key;
        quote! { #ident::#variant => #key }
    });
    quote! {
        #[doc = #doc]
        #[derive(#krate::__private::async_graphql::Enum, ::core::clone::Clone, ::core::marker::Copy, ::core::fmt::Debug, ::core::cmp::PartialEq, ::core::cmp::Eq)]
        #[graphql(crate = #agql, name = #gql_name)]
        #vis enum #ident {
            #(#variants,)*
        }

        /// The payload key each item selects.
        #[automatically_derived]
        impl #krate::FieldsEnum for #ident {
            fn field_name(self) -> &'static str {
                match self {
                    #(#arms,)*
                }
            }
        }
    }
}

fn confirmation(model: &Model, names: &Names) -> TokenStream {
    let krate = &model.krate;
    let agql = graphql_crate(krate);
    let vis = &model.vis;
    let ident = &names.confirmation;
    let gql_name = format!("{}Subscription", model.name);
    let doc = format!(
        " The answer to a subscribe or unsubscribe on the `{}` stream (GraphQL type `{gql_name}`).",
        model.stream
    );
    quote! {
        #[doc = #doc]
        #[derive(#krate::__private::async_graphql::SimpleObject, ::core::clone::Clone, ::core::fmt::Debug)]
        #[graphql(crate = #agql, name = #gql_name)]
        #vis struct #ident {
            /// Whether the operation took effect.
            pub ok: bool,
            /// Why it did not, when `ok` is false.
            pub error: ::core::option::Option<::std::string::String>,
            /// The stream operated on.
            pub stream: ::std::string::String,
            /// The operation performed.
            pub operation: #krate::OperationSubscription,
            /// The action subscribed to.
            pub action: #krate::ActionSubscription,
        }

        /// Copies the runtime's confirmation into this GraphQL type.
        #[automatically_derived]
        impl ::core::convert::From<#krate::Confirmation> for #ident {
            fn from(confirmation: #krate::Confirmation) -> Self {
                #ident {
                    ok: confirmation.ok,
                    error: confirmation.error,
                    stream: confirmation.stream,
                    operation: confirmation.operation,
                    action: confirmation.action,
                }
            }
        }
    }
}

fn root(model: &Model, names: &Names) -> TokenStream {
    let krate = &model.krate;
    let agql = graphql_crate(krate);
    let vis = &model.vis;
    let ident = &model.ident;
    let root = &names.root;
    let confirmation = &names.confirmation;
    let field_name = format!("{}Subscription", model.name.to_lower_camel_case());
    let method = format_ident!("{}_subscription", heck::ToSnakeCase::to_snake_case(model.name.as_str()));
    // async-graphql trims doc lines, so the leading space only reads better.
    let description = format!(" {}", model.description);
    let root_name = format!("{}SubscriptionRoot", model.name);
    let doc = format!(
        " The `{field_name}` subscription field (GraphQL type `{root_name}`): merge it into the schema's subscription root."
    );
    let changes_name = format!("{}Changes", model.name.to_lower_camel_case());
    let changes_method = format_ident!("{}_changes", heck::ToSnakeCase::to_snake_case(model.name.as_str()));
    let changes_description =
        format!(" {} One `ModelChange` event per change (standard GraphQL protocols).", model.description);
    let all_actions = format!(
        "{}::ActionSubscription::AllActions",
        graphql_crate(krate).trim_end_matches("::__private::async_graphql")
    );
    let p = quote!(#krate::__private);
    let (data_param, data_arg) = if model.full_payload {
        let fields = &names.fields;
        (
            quote! {
                #[graphql(desc = "Project notifications to these fields (all fields when omitted).")]
                data: ::core::option::Option<::std::vec::Vec<#fields>>,
            },
            quote! { #p::projection(data) },
        )
    } else {
        (TokenStream::new(), quote! { ::core::option::Option::None })
    };
    quote! {
        #[doc = #doc]
        #[derive(::core::default::Default, ::core::clone::Clone, ::core::marker::Copy, ::core::fmt::Debug)]
        #vis struct #root;

        #[#p::async_graphql::Subscription(crate = #agql, name = #root_name)]
        impl #root {
            #[doc = #description]
            #[graphql(name = #field_name)]
            // Each argument is one GraphQL argument of the field.
            #[allow(clippy::too_many_arguments)]
            async fn #method(
                &self,
                ctx: &#p::async_graphql::Context<'_>,
                #[graphql(name = "channelId", desc = "The channel id the WebSocket handshake returned.")]
                channel_id: ::std::string::String,
                #[graphql(desc = "Which changes to receive.")]
                action: #krate::ActionSubscription,
                #[graphql(desc = "Subscribe or unsubscribe.")]
                operation: #krate::OperationSubscription,
                #[graphql(desc = "Only changes of the row with this primary key.")]
                id: ::core::option::Option<#p::async_graphql::ID>,
                #[graphql(desc = "Field lookups, e.g. {post: 7, text__icontains: \"urgent\"}.")]
                filters: ::core::option::Option<#p::async_graphql::Json<#p::serde_json::Value>>,
                #data_param
                #[graphql(desc = "Frames carry each change's cursor (`\"cursor\"`), to resume from after a reconnect.")]
                cursors: ::core::option::Option<bool>,
                #[graphql(desc = "Resume: first the changes after this cursor that this subscription would have received, then live ones (implies `cursors`).")]
                after: ::core::option::Option<::std::string::String>,
            ) -> impl #p::Stream<Item = #confirmation> {
                let request = #krate::SubscribeArgs::new(channel_id, action, operation, id, filters, #data_arg)
                    .resume(cursors.unwrap_or(false), after);
                #p::confirm(#krate::subscribe::<#ident>(ctx, request).await)
            }

            #[doc = #changes_description]
            #[graphql(name = #changes_name)]
            async fn #changes_method(
                &self,
                ctx: &#p::async_graphql::Context<'_>,
                #[graphql(desc = "Which changes to receive.", default_with = #all_actions)]
                action: #krate::ActionSubscription,
                #[graphql(desc = "Only changes of the row with this primary key.")]
                id: ::core::option::Option<#p::async_graphql::ID>,
                #[graphql(desc = "Field lookups, e.g. {post: 7, text__icontains: \"urgent\"}.")]
                filters: ::core::option::Option<#p::async_graphql::Json<#p::serde_json::Value>>,
                #data_param
                #[graphql(desc = "Resume: first the changes after this cursor (`ModelChange.cursor`) that this subscription would have received, in order, then live ones.")]
                after: ::core::option::Option<::std::string::String>,
            ) -> #p::async_graphql::Result<#krate::ChangeStream> {
                let args = #krate::ChangesArgs::new(action, id, filters, #data_arg).after(after).shareable();
                #krate::changes::<#ident>(ctx, args).await
            }
        }
    }
}

fn binding(model: &Model) -> TokenStream {
    let krate = &model.krate;
    let ident = &model.ident;
    let p = quote!(#krate::__private);
    let stream = &model.stream;
    let label = &model.label;
    let full = model.full_payload;
    let primary_key = proc_macro2::Literal::usize_unsuffixed(model.primary_key);
    let pk_field = &model.fields[model.primary_key];
    let pk_ident = &pk_field.ident;
    let pk_key = &pk_field.key;
    let field_count = proc_macro2::Literal::usize_unsuffixed(model.fields.len());
    let field_consts = model.fields.iter().map(|field| {
        let key = &field.key;
        let column = &field.column;
        let ty = &field.ty;
        quote! {
            #krate::Field {
                name: #key,
                column: Column::#column,
                parse: #p::parse_value::<#ty>,
                canonical: #p::canonical_value::<#ty>,
            }
        }
    });
    let inserts = model.fields.iter().map(|field| {
        let key = &field.key;
        let field_ident = &field.ident;
        quote! {
            values.insert(::std::borrow::ToOwned::to_owned(#key), #p::field_value(#key, &self.#field_ident));
        }
    });
    let index_names = model.index.iter().map(|(key, _)| key);
    let index_values = model.index.iter().map(|(key, position)| {
        let field_ident = &model.fields[*position].ident;
        quote! { (#key, #p::field_value(#key, &self.#field_ident)) }
    });
    let authorize = match &model.auth {
        Auth::Public => quote! { #p::allow_public(request) },
        Auth::Authenticated => quote! { #p::allow_authenticated(request) },
        Auth::Custom(path) => quote_spanned! {path_span(path)=>
            let authorize: fn(&#krate::SubscribeRequest<'_>) -> ::core::result::Result<(), #krate::Denied> = #path;
            authorize(request)
        },
    };
    let scope = match &model.scope {
        None => quote! { #p::no_scope::<Entity>(request) },
        Some(path) => quote_spanned! {path_span(path)=>
            let scope: fn(&#krate::SubscribeRequest<'_>) -> ::core::result::Result<#krate::Scope<Entity>, #krate::Denied> = #path;
            scope(request)
        },
    };
    quote! {
        /// Binds this model to its live subscription: stream, fields, keys,
        /// scope and authorization, as read by the graphex runtime.
        #[automatically_derived]
        impl #krate::ModelSubscription for #ident {
            type Entity = Entity;
            const STREAM: &'static str = #stream;
            const LABEL: &'static str = #label;
            const FULL_PAYLOAD: bool = #full;
            const PRIMARY_KEY: usize = #primary_key;
            const FIELDS: &'static [#krate::Field<Entity>] = &[#(#field_consts),*];
            const INDEX_FIELDS: &'static [&'static str] = &[#(#index_names),*];

            fn primary_key(&self) -> #p::serde_json::Value {
                #p::field_value(#pk_key, &self.#pk_ident)
            }

            fn values(&self) -> #p::serde_json::Map<::std::string::String, #p::serde_json::Value> {
                let mut values = #p::serde_json::Map::with_capacity(#field_count);
                #(#inserts)*
                values
            }

            fn index_values(&self) -> ::std::vec::Vec<(&'static str, #p::serde_json::Value)> {
                ::std::vec![#(#index_values),*]
            }

            fn authorize(request: &#krate::SubscribeRequest<'_>) -> ::core::result::Result<(), #krate::Denied> {
                #authorize
            }

            fn scope(
                request: &#krate::SubscribeRequest<'_>,
            ) -> ::core::result::Result<#krate::Scope<Entity>, #krate::Denied> {
                #scope
            }
        }
    }
}

fn path_span(path: &syn::Path) -> proc_macro2::Span {
    syn::spanned::Spanned::span(path)
}

/// The async-graphql path inside the runtime, as the string its derives take.
pub(crate) fn graphql_crate(krate: &syn::Path) -> String {
    let krate: String = quote!(#krate).to_string().chars().filter(|c| !c.is_whitespace()).collect();
    format!("{krate}::__private::async_graphql")
}
