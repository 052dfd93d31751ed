//! `#[graphex::hooks]`: puts the announce calls into the user's
//! `ActiveModelBehavior` impl. A method the user wrote keeps its body; the
//! announce runs after it, on what it returned.

use proc_macro2::TokenStream;
use quote::quote;
use syn::parse::Parser;

const TARGET: &str = "#[graphex::hooks] goes on `impl ActiveModelBehavior for ActiveModel`";

/// The impl with the hooks added; on a mistake, the errors beside the impl as
/// written (minus a malformed hook method), so that the entity still has its
/// `ActiveModelBehavior` and the user sees only the real error.
pub(crate) fn expand(args: TokenStream, input: TokenStream) -> TokenStream {
    let mut item: syn::ItemImpl = match syn::parse2(input.clone()) {
        Ok(item) => item,
        Err(error) => return placeholder(syn::Error::new(error.span(), TARGET), input),
    };
    // Bad arguments still get the default path's hooks, so only they are reported.
    let (krate, args_error) = match parse_args(args) {
        Ok(krate) => (krate, None),
        Err(error) => (syn::parse_quote!(::graphex), Some(error)),
    };
    match (add_hooks(&mut item, &krate), args_error) {
        (Ok(()), None) => quote!(#item),
        (Ok(()), Some(error)) | (Err(error), None) => placeholder(error, quote!(#item)),
        (Err(error), Some(mut errors)) => {
            errors.combine(error);
            placeholder(errors, quote!(#item))
        }
    }
}

fn placeholder(error: syn::Error, item: TokenStream) -> TokenStream {
    let error = error.into_compile_error();
    quote!(#error #item)
}

/// `crate = "..."`, the path of the graphex crate.
fn parse_args(args: TokenStream) -> syn::Result<syn::Path> {
    let mut krate: syn::Path = syn::parse_quote!(::graphex);
    let parser = syn::meta::parser(|meta| {
        if meta.path.is_ident("crate") {
            let value: syn::LitStr = meta.value()?.parse()?;
            krate = value.parse()?;
            Ok(())
        } else {
            Err(meta.error("unknown argument; expected `crate = \"...\"`"))
        }
    });
    parser.parse2(args)?;
    Ok(krate)
}

/// Wraps the user's hook methods and adds the missing ones. A malformed
/// method is reported and removed; the rest of `item` is still completed.
fn add_hooks(item: &mut syn::ItemImpl, krate: &syn::Path) -> syn::Result<()> {
    let p = quote!(#krate::__private);

    let trait_is_behavior = item
        .trait_
        .as_ref()
        .and_then(|(_, path, _)| path.segments.last())
        .is_some_and(|segment| segment.ident == "ActiveModelBehavior");
    if !trait_is_behavior {
        return Err(syn::Error::new_spanned(&item.self_ty, TARGET));
    }

    let mut has_save = false;
    let mut has_delete = false;
    let mut errors: Option<syn::Error> = None;
    item.items.retain_mut(|impl_item| {
        let syn::ImplItem::Fn(method) = impl_item else { return true };
        let wrapped = if method.sig.ident == "after_save" {
            has_save = true;
            wrap_after_save(method, &p)
        } else if method.sig.ident == "after_delete" {
            has_delete = true;
            wrap_after_delete(method, &p)
        } else {
            return true;
        };
        match wrapped {
            Ok(()) => true,
            Err(error) => {
                match &mut errors {
                    Some(errors) => errors.combine(error),
                    None => errors = Some(error),
                }
                false
            }
        }
    });
    if !has_save {
        item.items.push(syn::parse_quote! {
            /// Announces the saved row to its subscribers (added by `#[graphex::hooks]`).
            async fn after_save<C>(
                model: <<Self as #p::sea_orm::ActiveModelTrait>::Entity as #p::sea_orm::EntityTrait>::Model,
                db: &C,
                insert: bool,
            ) -> ::core::result::Result<
                <<Self as #p::sea_orm::ActiveModelTrait>::Entity as #p::sea_orm::EntityTrait>::Model,
                #p::sea_orm::DbErr,
            >
            where
                C: #p::sea_orm::ConnectionTrait,
            {
                #p::announce_saved(&model, db, insert).await?;
                ::core::result::Result::Ok(model)
            }
        });
    }
    if !has_delete {
        item.items.push(syn::parse_quote! {
            /// Announces the deleted row to its subscribers (added by `#[graphex::hooks]`).
            async fn after_delete<C>(self, db: &C) -> ::core::result::Result<Self, #p::sea_orm::DbErr>
            where
                C: #p::sea_orm::ConnectionTrait,
            {
                #p::announce_deleted(&self, db).await?;
                ::core::result::Result::Ok(self)
            }
        });
    }
    let has_async_trait =
        item.attrs.iter().any(|attr| attr.path().segments.last().is_some_and(|segment| segment.ident == "async_trait"));
    if !has_async_trait {
        item.attrs.push(syn::parse_quote!(#[#p::async_trait::async_trait]));
    }
    errors.map_or(Ok(()), Err)
}

/// Gives the method's typed parameters our own names, and returns the
/// `let <user pattern> = <our name>;` lines that bind the user's patterns
/// again inside their body. Our names are `mixed_site`: the user's body
/// cannot see them, and they cannot capture the user's.
fn rebind_params(method: &mut syn::ImplItemFn, names: &[&str]) -> Vec<TokenStream> {
    let mut rebinds = Vec::new();
    let typed = method.sig.inputs.iter_mut().filter_map(|input| match input {
        syn::FnArg::Typed(typed) => Some(typed),
        syn::FnArg::Receiver(_) => None,
    });
    for (position, typed) in typed.enumerate() {
        let name = names.get(position).map_or_else(|| format!("arg{position}"), |name| (*name).to_owned());
        let ours = local(&name);
        let original = std::mem::replace(&mut *typed.pat, syn::parse_quote!(#ours));
        rebinds.push(quote!(let #original = #ours;));
    }
    rebinds
}

/// A local variable of the generated code, invisible to the user's tokens.
fn local(name: &str) -> syn::Ident {
    syn::Ident::new(name, proc_macro2::Span::mixed_site())
}

/// Runs the user's `after_save` body, then announces the model it returned.
fn wrap_after_save(method: &mut syn::ImplItemFn, p: &TokenStream) -> syn::Result<()> {
    if method.sig.inputs.len() != 3 {
        return Err(syn::Error::new_spanned(&method.sig, "after_save takes (model, db, insert)"));
    }
    let output = match &method.sig.output {
        syn::ReturnType::Type(_, ty) => ty.clone(),
        syn::ReturnType::Default => {
            return Err(syn::Error::new_spanned(&method.sig, "after_save returns Result<Model, DbErr>"));
        }
    };
    let rebinds = rebind_params(method, &["model", "db", "insert"]);
    let body = &method.block;
    // `db` and `insert` are copied into the user's block (a reference and a
    // bool), so ours are still there after it.
    let (db, insert, returned, saved) = (local("db"), local("insert"), local("returned"), local("saved"));
    method.block = syn::parse_quote!({
        let #returned: #output = async move {
            #(#rebinds)*
            #body
        }
        .await;
        let #saved = #returned?;
        #p::announce_saved(&#saved, #db, #insert).await?;
        ::core::result::Result::Ok(#saved)
    });
    Ok(())
}

/// Runs the user's `after_delete` body, then announces what it returned.
fn wrap_after_delete(method: &mut syn::ImplItemFn, p: &TokenStream) -> syn::Result<()> {
    let typed = method.sig.inputs.iter().filter(|input| matches!(input, syn::FnArg::Typed(_))).count();
    if typed != 1 || method.sig.receiver().is_none() {
        return Err(syn::Error::new_spanned(&method.sig, "after_delete takes (self, db)"));
    }
    let output = match &method.sig.output {
        syn::ReturnType::Type(_, ty) => ty.clone(),
        syn::ReturnType::Default => {
            return Err(syn::Error::new_spanned(&method.sig, "after_delete returns Result<Self, DbErr>"));
        }
    };
    let rebinds = rebind_params(method, &["db"]);
    let body = &method.block;
    // `db` is a reference, copied into the user's block.
    let (db, returned, deleted) = (local("db"), local("returned"), local("deleted"));
    method.block = syn::parse_quote!({
        let #returned: #output = async move {
            #(#rebinds)*
            #body
        }
        .await;
        let #deleted = #returned?;
        #p::announce_deleted(&#deleted, #db).await?;
        ::core::result::Result::Ok(#deleted)
    });
    Ok(())
}
