//! Checks the attributes and builds the [`Model`]. Every rule reports into
//! one accumulator, so a user sees all their mistakes at once.

use darling::util::SpannedValue;
use darling::{Error, error::Accumulator};
use heck::{ToShoutySnakeCase, ToSnakeCase, ToUpperCamelCase};

use crate::ast::{Auth, Model, PayloadField};
use crate::attr::{FieldAttrs, ModelAttrs};

/// Characters a stream may contain: it prefixes group names, where `-`
/// separates the stream from the action.
fn valid_stream(stream: &str) -> bool {
    !stream.is_empty()
        && stream.len() <= 50
        && stream.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
}

fn valid_graphql_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Reads `key = "..."` out of `#[sea_orm(...)]` attributes, ignoring what
/// graphex does not need.
fn sea_orm_value(attrs: &[syn::Attribute], key: &str) -> Option<String> {
    let mut found = None;
    for attr in attrs.iter().filter(|attr| attr.path().is_ident("sea_orm")) {
        let _ = attr.parse_nested_meta(|meta| {
            if meta.path.is_ident(key) {
                let value: syn::LitStr = meta.value()?.parse()?;
                found = Some(value.value());
            } else if meta.input.peek(syn::Token![=]) {
                let _: syn::Expr = meta.value()?.parse()?;
            }
            Ok(())
        });
    }
    found
}

fn sea_orm_flag(attrs: &[syn::Attribute], key: &str) -> bool {
    let mut found = false;
    for attr in attrs.iter().filter(|attr| attr.path().is_ident("sea_orm")) {
        let _ = attr.parse_nested_meta(|meta| {
            if meta.path.is_ident(key) {
                found = true;
            }
            if meta.input.peek(syn::Token![=]) {
                let _: syn::Expr = meta.value()?.parse()?;
            }
            Ok(())
        });
    }
    found
}

/// The default GraphQL prefix: the table name in PascalCase, a plural `s` dropped.
fn default_name(table: &str) -> String {
    let pascal = table.to_upper_camel_case();
    match pascal.strip_suffix('s') {
        Some(singular) if !singular.is_empty() && !singular.ends_with('s') => singular.to_owned(),
        _ => pascal,
    }
}

pub(crate) fn model(attrs: ModelAttrs, errors: &mut Accumulator) -> Option<Model> {
    let ModelAttrs {
        ident,
        vis,
        data,
        stream,
        name,
        label,
        description,
        serialize_data,
        index_fields,
        skip,
        scope,
        authenticated,
        authorize,
        krate,
        attrs,
    } = attrs;

    let stream = match stream {
        Some(stream) => {
            if !valid_stream(&stream) {
                errors.push(
                    Error::custom(format!(
                        "invalid stream `{}`: use 1 to 50 ASCII letters, digits, `_` or `.`",
                        stream.as_str()
                    ))
                    .with_span(&stream.span()),
                );
            }
            stream.into_inner()
        }
        None => {
            errors.push(
                Error::custom(
                    "missing `stream`: name the stream notifications go to, e.g. `#[graphex(stream = \"users\")]`",
                )
                .with_span(&ident),
            );
            String::new()
        }
    };

    let table = sea_orm_value(&attrs, "table_name");
    let (name, name_span) = match name {
        Some(name) => {
            if !valid_graphql_name(&name) {
                errors.push(
                    Error::custom(format!("`{}` is not a valid GraphQL name", name.as_str())).with_span(&name.span()),
                );
            }
            (name.as_str().to_upper_camel_case(), name.span())
        }
        None => match &table {
            Some(table) => (default_name(table), ident.span()),
            None => {
                errors.push(
                    Error::custom("no `#[sea_orm(table_name = \"...\")]` to name the subscription after: add `#[graphex(name = \"...\")]`")
                        .with_span(&ident),
                );
                (ident.to_string(), ident.span())
            }
        },
    };
    let label = label.map(SpannedValue::into_inner).unwrap_or_else(|| name.to_snake_case());
    let description = description.unwrap_or_else(|| format!("Live changes of {name} (stream `{stream}`)."));
    let full_payload = serialize_data.unwrap_or(cfg!(feature = "full-payload-default"));

    let auth = match (authenticated.is_present(), authorize) {
        (true, Some(path)) => {
            errors.push(Error::custom("use either `authenticated` or `authorize`, not both").with_span(&path));
            Auth::Custom(path)
        }
        (true, None) => Auth::Authenticated,
        (false, Some(path)) => Auth::Custom(path),
        (false, None) => Auth::Public,
    };

    let struct_fields: Vec<FieldAttrs> = data.take_struct().map(|fields| fields.fields).unwrap_or_default();
    let has_field = |path: &syn::Path| {
        path.get_ident().is_some_and(|wanted| struct_fields.iter().any(|field| field.ident.as_ref() == Some(wanted)))
    };
    for path in skip.iter() {
        if !has_field(path) {
            errors.push(Error::custom(format!("`skip` names no field of `{ident}`")).with_span(path));
        }
    }
    let skipped_by_list = |field: &syn::Ident| skip.iter().find(|path| path.is_ident(field));

    let mut fields = Vec::new();
    let mut primary_keys = Vec::new();
    let mut skipped_primary_key = false;
    for field in &struct_fields {
        let Some(field_ident) = field.ident.clone() else { continue };
        let is_pk = sea_orm_flag(&field.attrs, "primary_key");
        let listed = skipped_by_list(&field_ident);
        let skipped = field.skip.is_present() || listed.is_some();
        if is_pk && skipped {
            skipped_primary_key = true;
            let span = match listed {
                Some(path) => syn::spanned::Spanned::span(path),
                None => field.skip.span(),
            };
            errors.push(
                Error::custom("the primary key cannot be skipped: every notification carries it").with_span(&span),
            );
        }
        if skipped || sea_orm_flag(&field.attrs, "ignore") {
            continue;
        }
        let key = match &field.rename {
            Some(rename) => {
                if !valid_graphql_name(rename) {
                    errors.push(
                        Error::custom(format!("`{}` is not a valid field name", rename.as_str()))
                            .with_span(&rename.span()),
                    );
                }
                rename.as_str().to_owned()
            }
            None => field_ident.to_string().trim_start_matches("r#").to_owned(),
        };
        if is_pk {
            primary_keys.push((fields.len(), field_ident.span()));
        }
        let plain = field_ident.to_string().trim_start_matches("r#").to_owned();
        fields.push(PayloadField {
            column: syn::Ident::new(&plain.to_upper_camel_case(), field_ident.span()),
            variant: syn::Ident::new(&key.to_upper_camel_case(), field_ident.span()),
            item: key.to_shouty_snake_case(),
            key,
            ident: field_ident,
            ty: field.ty.clone(),
        });
    }

    let primary_key = match primary_keys.as_slice() {
        [(index, _)] => *index,
        // A skipped primary key was reported above.
        [] if skipped_primary_key => 0,
        [] => {
            errors.push(
                Error::custom("no `#[sea_orm(primary_key)]` field: a subscription needs a primary key")
                    .with_span(&ident),
            );
            0
        }
        [_, (_, second), ..] => {
            errors.push(Error::custom("composite primary keys are not supported by graphex").with_span(second));
            0
        }
    };

    let mut index: Vec<(String, usize)> = Vec::new();
    for path in index_fields.iter() {
        let found = path.get_ident().and_then(|wanted| fields.iter().position(|field| &field.ident == wanted));
        match found {
            Some(position) if index.iter().any(|(_, seen)| *seen == position) => {
                errors.push(
                    Error::custom(format!("`{}` is already an index field", fields[position].ident)).with_span(path),
                );
            }
            Some(position) => index.push((fields[position].key.clone(), position)),
            None if has_field(path) => {
                errors.push(
                    Error::custom(format!(
                        "`{}` is skipped, so it cannot be an index field",
                        path.get_ident().map(ToString::to_string).unwrap_or_default()
                    ))
                    .with_span(path),
                );
            }
            None => errors.push(Error::custom(format!("index field names no field of `{ident}`")).with_span(path)),
        }
    }
    index.sort();

    let krate = krate.unwrap_or_else(|| syn::parse_quote!(::graphex));
    if fields.is_empty() {
        return None;
    }
    Some(Model {
        ident,
        vis,
        krate,
        stream,
        name,
        name_span,
        label,
        description,
        full_payload,
        fields,
        primary_key,
        index,
        scope,
        auth,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_names() {
        assert_eq!(default_name("users"), "User");
        assert_eq!(default_name("blog_posts"), "BlogPost");
        assert_eq!(default_name("address"), "Address");
        assert_eq!(default_name("s"), "S");
    }

    #[test]
    fn streams() {
        assert!(valid_stream("users"));
        assert!(valid_stream("app.users_v2"));
        assert!(!valid_stream("users-x"));
        assert!(!valid_stream("users x"));
        assert!(!valid_stream(""));
    }
}
