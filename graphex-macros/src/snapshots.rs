//! Expansion snapshots: what the derive and `#[graphex::hooks]` emit for a
//! few inputs, pretty-printed and compared with
//! `tests/snapshots/<name>.rs`. Run with `GRAPHEX_BLESS=1` to rewrite them,
//! then read the diff: the generated code is what users see under
//! `cargo expand`.

use std::path::PathBuf;

use proc_macro2::{TokenStream, TokenTree};
use quote::quote;

/// Pretty-prints `output` under a header that shows `input`, and compares
/// it with the committed snapshot (or rewrites it with `GRAPHEX_BLESS=1`).
fn assert_snapshot(name: &str, what: &str, input: &TokenStream, output: &TokenStream) {
    let input = syn::parse2::<syn::File>(input.clone()).expect("snapshot input is a file");
    let output = syn::parse2::<syn::File>(output.clone()).expect("the expansion parses as items");
    let mut text = format!("// {what}\n//\n");
    for line in prettyplease::unparse(&input).lines() {
        text.push_str(format!("// {line}").trim_end());
        text.push('\n');
    }
    text.push_str("//\n// Regenerate with `GRAPHEX_BLESS=1 cargo test -p graphex-macros snapshots`.\n\n");
    text.push_str(&prettyplease::unparse(&output));

    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/snapshots").join(format!("{name}.rs"));
    if std::env::var_os("GRAPHEX_BLESS").is_some_and(|value| value == "1") {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &text).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|error| panic!("{}: {error}; run with GRAPHEX_BLESS=1 to create it", path.display()));
    if expected != text {
        let first = expected.lines().zip(text.lines()).position(|(old, new)| old != new);
        panic!(
            "{} is out of date (first difference at line {}); run with GRAPHEX_BLESS=1 and review the diff\n\n{text}",
            path.display(),
            first.map_or_else(|| expected.lines().count().min(text.lines().count()) + 1, |line| line + 1),
        );
    }
}

fn derive(input: TokenStream) -> TokenStream {
    crate::model_subscription(&syn::parse2(input).expect("derive input"))
}

fn full_payload_input() -> TokenStream {
    quote! {
        #[sea_orm(table_name = "users")]
        #[graphex(stream = "users", serialize_data = true, index_fields(tenant), scope = "by_tenant", authorize = "members_only")]
        pub struct Model {
            #[sea_orm(primary_key)]
            pub id: i32,
            #[graphex(rename = "login")]
            pub username: ::std::string::String,
            pub email: ::core::option::Option<::std::string::String>,
            pub tenant: ::std::string::String,
            #[graphex(skip)]
            pub password_hash: ::std::string::String,
        }
    }
}

fn id_only_input() -> TokenStream {
    quote! {
        #[sea_orm(table_name = "comments")]
        #[graphex(stream = "comments", serialize_data = false, authenticated)]
        pub struct Model {
            #[sea_orm(primary_key)]
            pub id: i64,
            pub post: i32,
            pub text: ::std::string::String,
        }
    }
}

fn hooks_empty_input() -> TokenStream {
    quote! {
        impl ActiveModelBehavior for ActiveModel {}
    }
}

fn hooks_after_save_input() -> TokenStream {
    quote! {
        #[async_trait::async_trait]
        impl ActiveModelBehavior for ActiveModel {
            async fn after_save<C>(model: Model, db: &C, insert: bool) -> Result<Model, DbErr>
            where
                C: ConnectionTrait,
            {
                audit::record(db, &model, insert).await?;
                Ok(model)
            }
        }
    }
}

#[test]
fn derive_full_payload() {
    let input = full_payload_input();
    let what = "#[derive(ModelSubscription)] with a full payload, an index field, a rename, a skipped field, scope and authorize:";
    assert_snapshot("derive_full_payload", what, &input, &derive(input.clone()));
}

#[test]
fn derive_id_only() {
    let input = id_only_input();
    let what = "#[derive(ModelSubscription)] with an id-only payload, authenticated:";
    assert_snapshot("derive_id_only", what, &input, &derive(input.clone()));
}

#[test]
fn derive_with_errors() {
    let input = quote! {
        #[sea_orm(table_name = "users")]
        #[graphex(stream = "my users", index_fields(nope))]
        pub struct Model {
            #[sea_orm(primary_key)]
            pub id: i32,
        }
    };
    let what = "#[derive(ModelSubscription)] with two mistakes: the errors and a placeholder root:";
    assert_snapshot("derive_with_errors", what, &input, &derive(input.clone()));
}

#[test]
fn hooks_on_an_empty_impl() {
    let input = hooks_empty_input();
    let what = "#[graphex::hooks] on:";
    assert_snapshot("hooks_empty_impl", what, &input, &crate::hooks::expand(TokenStream::new(), input.clone()));
}

#[test]
fn hooks_around_a_user_after_save() {
    let input = hooks_after_save_input();
    let what = "#[graphex::hooks] on an impl with its own after_save:";
    assert_snapshot("hooks_user_after_save", what, &input, &crate::hooks::expand(TokenStream::new(), input.clone()));
}

/// Names the implicit prelude (and std's macros) provide. A path the macros
/// generate must not start with one: the user may have shadowed it, or have
/// no prelude at all.
const PRELUDE: &[&str] = &[
    "Option",
    "Some",
    "None",
    "Result",
    "Ok",
    "Err",
    "String",
    "Vec",
    "Box",
    "ToString",
    "ToOwned",
    "Clone",
    "Copy",
    "Default",
    "Debug",
    "PartialEq",
    "Eq",
    "PartialOrd",
    "Ord",
    "Hash",
    "Send",
    "Sync",
    "Sized",
    "Unpin",
    "Drop",
    "Fn",
    "FnMut",
    "FnOnce",
    "From",
    "Into",
    "TryFrom",
    "TryInto",
    "AsRef",
    "AsMut",
    "Iterator",
    "IntoIterator",
    "DoubleEndedIterator",
    "ExactSizeIterator",
    "Extend",
    "FromIterator",
    "Future",
    "IntoFuture",
    "drop",
    "vec",
    "format",
    "matches",
    "panic",
    "assert",
    "unreachable",
    "todo",
    "write",
    "writeln",
];

/// Every identifier from `PRELUDE` that starts a path in `tokens`.
fn bare_prelude_paths(tokens: TokenStream, found: &mut Vec<String>) {
    let mut after_colons = false;
    let mut previous_colon = false;
    for tree in tokens {
        match tree {
            TokenTree::Group(group) => {
                bare_prelude_paths(group.stream(), found);
                after_colons = false;
                previous_colon = false;
            }
            TokenTree::Punct(punct) => {
                after_colons = punct.as_char() == ':' && previous_colon;
                previous_colon = punct.as_char() == ':' && punct.spacing() == proc_macro2::Spacing::Joint;
            }
            TokenTree::Ident(ident) => {
                if !after_colons && PRELUDE.iter().any(|name| ident == name) {
                    found.push(ident.to_string());
                }
                after_colons = false;
                previous_colon = false;
            }
            TokenTree::Literal(_) => {
                after_colons = false;
                previous_colon = false;
            }
        }
    }
}

/// The expansions name std items by absolute path only. (The inputs use
/// absolute paths too, so any bare prelude name found is graphex's; the user
/// tokens of `hooks_after_save_input` are left out, as they are the user's.)
#[test]
fn no_bare_prelude_paths() {
    let mut found = Vec::new();
    bare_prelude_paths(quote!(let x: Option<u8> = ::core::option::Option::None; vec![x]), &mut found);
    assert_eq!(found, ["Option", "vec"], "the scan itself");

    let expansions = [
        derive(full_payload_input()),
        derive(id_only_input()),
        crate::hooks::expand(TokenStream::new(), hooks_empty_input()),
    ];
    for expansion in expansions {
        let mut found = Vec::new();
        bare_prelude_paths(expansion.clone(), &mut found);
        assert!(
            found.is_empty(),
            "bare prelude names {found:?} in\n{}",
            prettyplease::unparse(&syn::parse2(expansion).unwrap())
        );
    }
}
