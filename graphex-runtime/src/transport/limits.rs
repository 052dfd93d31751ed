//! What one GraphQL request may cost, checked on its syntax tree before it
//! executes, on every entry point: HTTP (JSON, SSE, multipart), both
//! standard WebSocket protocols ([`Guarded`] wraps the schema as their
//! executor) and requests forwarded by another process.
//!
//! async-graphql validates after parsing, with rules that are private to it
//! and know nothing of aliases or field counts, and graphex receives the
//! user's finished `Schema` (it cannot add extensions to it). So the request
//! is parsed here once, checked, and handed to async-graphql already parsed
//! (kept in the `Request`: `Request::parsed_query`). A request that does not parse is passed
//! through untouched: async-graphql answers it with its usual error.
//!
//! The checks: the query's length and bracket nesting (before parsing, so
//! the parser never recurses deeply), selection depth, fields selected
//! (counted through fragments, with the walk stopped at the bound so a
//! fragment bomb costs no more than the bound), aliases, exactly one root
//! field in a subscription operation (the spec's "Single root field"), and
//! enum-typed arguments written as string literals (GraphQL enum literals
//! are bare names; a string is refused, variables are unaffected). Types
//! come from the schema's SDL, read once per router.
//!
//! Parsing costs about 20 µs for a 100-byte document (async-graphql's pest
//! parser, release build here), cloning a parsed one about 0.5 µs: the
//! documents that passed the checks are kept, by their exact text, in a
//! small LRU ([`DOCUMENTS`] of them, each at most [`CACHED_QUERY_BYTES`]),
//! so the mutation or subscribe an application sends again and again is
//! parsed and checked once.
//!
//! One cohesive job in one file: the checks walk one syntax tree together
//! and share its type table.
//!
//! Calls nothing else in the crate.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use async_graphql::parser::Positioned;
use async_graphql::parser::types::{
    BaseType, DocumentOperations, ExecutableDocument, OperationDefinition, OperationType, Selection, SelectionSet,
    ServiceDocument, TypeKind, TypeSystemDefinition,
};
use async_graphql::{Executor, Request, Response, ServerError, Value};
use futures_util::stream::BoxStream;

/// Bounds on one GraphQL request (query, mutation or subscription), on
/// every endpoint. Each has a default sized far above what the examples
/// and the browser page send (an introspection query selects about 200
/// fields at depth 13).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RequestLimits {
    /// Bytes of an HTTP request body, read before anything is parsed
    /// (larger: `413 Payload Too Large`). Default 1 MiB.
    pub max_body_bytes: usize,
    /// Bytes of the query text. Default 32 KiB.
    pub max_query_bytes: usize,
    /// Nesting of selection sets (`{ a { b } }` is 2). Default 32.
    pub max_depth: usize,
    /// Fields selected, counted through fragments (`__typename` counts).
    /// Default 1 000.
    pub max_fields: usize,
    /// Fields selected under an alias. Default 64.
    pub max_aliases: usize,
    /// Whether `POST` accepts `multipart/form-data` (file uploads, the
    /// GraphQL multipart request spec). Default off: `415`.
    pub uploads: bool,
}

impl Default for RequestLimits {
    fn default() -> Self {
        RequestLimits {
            max_body_bytes: 1 << 20,
            max_query_bytes: 32 << 10,
            max_depth: 32,
            max_fields: 1_000,
            max_aliases: 64,
            uploads: false,
        }
    }
}

crate::config::setters!(RequestLimits {
    max_body_bytes: usize => with_max_body_bytes,
    max_query_bytes: usize => with_max_query_bytes,
    max_depth: usize => with_max_depth,
    max_fields: usize => with_max_fields,
    max_aliases: usize => with_max_aliases,
    uploads: bool => with_uploads,
});

/// The error code of a request refused for its size or cost.
pub(crate) const LIMIT_REACHED: &str = "LIMIT_REACHED";
/// The error code of a request that breaks a GraphQL rule async-graphql
/// does not check.
const VALIDATION_FAILED: &str = "GRAPHQL_VALIDATION_FAILED";

/// What the checks need of the schema: root type names, and for each
/// field and input field the named type of its arguments.
#[derive(Debug, Default)]
pub(crate) struct Types {
    roots: [Option<String>; 3],
    /// Object and interface fields: type → field → (its type, argument → type).
    fields: HashMap<String, HashMap<String, FieldType>>,
    /// Input object fields: type → field → type.
    inputs: HashMap<String, HashMap<String, String>>,
    enums: HashSet<String>,
}

/// A field's named type and its arguments' named types.
type FieldType = (String, HashMap<String, String>);

fn named(ty: &async_graphql::parser::types::Type) -> String {
    match &ty.base {
        BaseType::Named(name) => name.to_string(),
        BaseType::List(inner) => named(inner),
    }
}

impl Types {
    /// Reads the types from a schema's SDL.
    pub(crate) fn from_sdl(sdl: &str) -> Types {
        let mut types = Types {
            roots: [Some("Query".into()), Some("Mutation".into()), Some("Subscription".into())],
            ..Types::default()
        };
        let Ok(document): Result<ServiceDocument, _> = async_graphql::parser::parse_schema(sdl) else {
            tracing::warn!("schema SDL did not parse: argument types are not checked");
            return types;
        };
        for definition in document.definitions {
            match definition {
                TypeSystemDefinition::Schema(schema) => {
                    let schema = schema.node;
                    let name =
                        |root: Option<async_graphql::Positioned<async_graphql::Name>>| root.map(|n| n.node.to_string());
                    types.roots = [name(schema.query), name(schema.mutation), name(schema.subscription)];
                }
                TypeSystemDefinition::Type(ty) => {
                    let ty = ty.node;
                    let name = ty.name.node.to_string();
                    let fields = match ty.kind {
                        TypeKind::Object(object) => object.fields,
                        TypeKind::Interface(interface) => interface.fields,
                        TypeKind::Enum(_) => {
                            types.enums.insert(name);
                            continue;
                        }
                        TypeKind::InputObject(input) => {
                            let fields = input
                                .fields
                                .into_iter()
                                .map(|f| (f.node.name.node.to_string(), named(&f.node.ty.node)));
                            types.inputs.insert(name, fields.collect());
                            continue;
                        }
                        _ => continue,
                    };
                    let fields = fields.into_iter().map(|field| {
                        let field = field.node;
                        let arguments =
                            field.arguments.into_iter().map(|a| (a.node.name.node.to_string(), named(&a.node.ty.node)));
                        (field.name.node.to_string(), (named(&field.ty.node), arguments.collect()))
                    });
                    types.fields.insert(name, fields.collect());
                }
                TypeSystemDefinition::Directive(_) => {}
            }
        }
        types
    }

    /// Whether a literal of type `ty` is a string where an enum is due.
    fn string_for_enum(&self, ty: &str, value: &Value) -> Option<String> {
        match value {
            Value::String(_) if self.enums.contains(ty) => Some(ty.to_owned()),
            Value::List(items) => items.iter().find_map(|item| self.string_for_enum(ty, item)),
            Value::Object(fields) => {
                let input = self.inputs.get(ty)?;
                fields.iter().find_map(|(name, value)| self.string_for_enum(input.get(name.as_str())?, value))
            }
            _ => None,
        }
    }
}

/// The operation async-graphql executes for `name`, by its rules: a name
/// picks among named operations (an anonymous one has none), no name
/// needs a single operation.
pub(crate) fn selected_operation<'a>(
    document: &'a ExecutableDocument,
    name: Option<&str>,
) -> Option<&'a Positioned<OperationDefinition>> {
    match (&document.operations, name) {
        (DocumentOperations::Single(operation), None) => Some(operation),
        (DocumentOperations::Single(_), Some(_)) => None,
        (DocumentOperations::Multiple(operations), Some(name)) => operations.get(name),
        (DocumentOperations::Multiple(operations), None) if operations.len() == 1 => operations.values().next(),
        (DocumentOperations::Multiple(_), None) => None,
    }
}

/// [`Guard::precheck`]: the bounds of a query's raw text, checked before
/// anything parses it.
pub(crate) fn precheck(limits: &RequestLimits, query: &str) -> Result<(), ServerError> {
    if query.len() > limits.max_query_bytes {
        let message = format!("query is {} bytes, above the limit of {}", query.len(), limits.max_query_bytes);
        return Err(refusal(message, LIMIT_REACHED));
    }
    let nesting_bound = limits.max_depth.saturating_mul(2).saturating_add(16);
    if nesting(query) > nesting_bound {
        return Err(refusal(format!("query nests deeper than {}", limits.max_depth), LIMIT_REACHED));
    }
    Ok(())
}

/// A refusal, as the GraphQL error the client gets.
fn refusal(message: String, code: &str) -> ServerError {
    with_code(ServerError::new(message, None), code)
}

/// `error` with `extensions.code` set.
pub(crate) fn with_code(mut error: ServerError, code: &str) -> ServerError {
    let mut extensions = async_graphql::ErrorExtensionValues::default();
    extensions.set("code", code);
    error.extensions = Some(extensions);
    error
}

/// The limits and the schema's types: what [`Guard::check`] needs.
#[derive(Debug)]
pub(crate) struct Guard {
    pub(crate) limits: RequestLimits,
    types: Types,
    /// Documents that passed the checks, by their text.
    documents: std::sync::Mutex<hashlink::LruCache<Box<str>, ExecutableDocument>>,
}

/// Parsed documents a [`Guard`] keeps.
pub(crate) const DOCUMENTS: usize = 256;

/// The longest query text whose document is kept (so the cache holds a few
/// megabytes at most, whatever clients send).
pub(crate) const CACHED_QUERY_BYTES: usize = 2048;

impl Guard {
    pub(crate) fn new(limits: RequestLimits, sdl: &str) -> Guard {
        let documents = std::sync::Mutex::new(hashlink::LruCache::new(DOCUMENTS));
        Guard { limits, types: Types::from_sdl(sdl), documents }
    }

    /// A kept document for `query`, which passed the checks before.
    fn kept(&self, query: &str) -> Option<ExecutableDocument> {
        if query.len() > CACHED_QUERY_BYTES {
            return None;
        }
        let mut documents = self.documents.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        documents.get(query).cloned()
    }

    /// Keeps `document`, which passed the checks, for `query` (a key from
    /// [`Guard::key`]).
    fn keep(&self, query: Option<Box<str>>, document: &ExecutableDocument) {
        if let Some(query) = query {
            let mut documents = self.documents.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            documents.insert(query, document.clone());
        }
    }

    #[cfg(test)]
    fn kept_count(&self) -> usize {
        self.documents.lock().unwrap().len()
    }

    /// The key `query`'s document would be kept under, if it may be.
    fn key(query: &str) -> Option<Box<str>> {
        (query.len() <= CACHED_QUERY_BYTES).then(|| query.into())
    }

    /// Checks a request and leaves it parsed; returns the type of the
    /// operation it runs (`None`: it does not parse, or names no
    /// operation it holds; async-graphql reports that).
    pub(crate) fn check(&self, request: &mut Request) -> Result<Option<OperationType>, ServerError> {
        self.check_typed(request).map_err(|refused| refused.1)
    }

    /// [`Guard::check`], and on a refusal the type of the operation the
    /// request would have run, when it parsed (a refused subscription is
    /// answered in the streaming format it asked for).
    pub(crate) fn check_typed(
        &self,
        request: &mut Request,
    ) -> Result<Option<OperationType>, Box<(Option<OperationType>, ServerError)>> {
        self.precheck(&request.query).map_err(|error| Box::new((None, error)))?;
        let name = request.operation_name.clone();
        // The same text passed the checks before: its document, unparsed.
        if let Some(document) = self.kept(&request.query) {
            let operation = selected_operation(&document, name.as_deref()).map(|operation| operation.node.ty);
            request.set_parsed_query(document);
            return Ok(operation);
        }
        // Parsed once: a document parsed earlier (a forwarded request's
        // admission) is reused, and this one is what async-graphql executes.
        let key = Guard::key(&request.query);
        let Ok(document) = request.parsed_query() else { return Ok(None) };
        let operation = selected_operation(document, name.as_deref()).map(|operation| operation.node.ty);
        self.check_document(document).map_err(|error| Box::new((operation, error)))?;
        self.keep(key, document);
        Ok(operation)
    }

    /// The bounds checked on the raw text, before anything parses it: query
    /// bytes, and bracket nesting (which bounds the parser's recursion;
    /// selection depth is checked after parsing, arguments may nest a
    /// little deeper).
    pub(crate) fn precheck(&self, query: &str) -> Result<(), ServerError> {
        precheck(&self.limits, query)
    }

    fn check_document(&self, document: &ExecutableDocument) -> Result<(), ServerError> {
        let mut walk = Walk { guard: self, document, fields: 0, aliases: 0, expanding: Vec::new() };
        // Every operation is checked, not only the one that runs: they all
        // cost parsing and validation.
        for (_, operation) in document.operations.iter() {
            let operation = &operation.node;
            let root = match operation.ty {
                OperationType::Query => &self.types.roots[0],
                OperationType::Mutation => &self.types.roots[1],
                OperationType::Subscription => &self.types.roots[2],
            };
            for variable in &operation.variable_definitions {
                let variable = &variable.node;
                if let Some(default) = &variable.default_value {
                    let ty = named(&variable.var_type.node);
                    if let Some(enum_type) = self.types.string_for_enum(&ty, &default.node) {
                        return Err(string_for_enum(&enum_type, &format!("${}", variable.name.node)));
                    }
                }
            }
            if operation.ty == OperationType::Subscription {
                let mut roots = 0;
                walk.count_roots(&operation.selection_set.node, &mut roots)?;
                if roots != 1 {
                    return Err(refusal(
                        format!("a subscription operation selects exactly one root field, this one selects {roots}"),
                        VALIDATION_FAILED,
                    ));
                }
            }
            walk.selection_set(&operation.selection_set.node, root.as_deref(), 1)?;
        }
        // Fragments are checked where they are spread, in their place and
        // type: an unused fragment is refused by async-graphql's validation
        // ("never used"), and walking definitions on their own as well would
        // count their fields twice.
        Ok(())
    }
}

fn string_for_enum(enum_type: &str, place: &str) -> ServerError {
    refusal(
        format!(
            "`{place}` is of enum type `{enum_type}`: write the value without quotes (a string is not an enum value)"
        ),
        VALIDATION_FAILED,
    )
}

/// One pass over a document's selections.
struct Walk<'a> {
    guard: &'a Guard,
    document: &'a ExecutableDocument,
    fields: usize,
    aliases: usize,
    /// Fragments being expanded (a cycle is not followed; async-graphql
    /// refuses it).
    expanding: Vec<&'a str>,
}

impl<'a> Walk<'a> {
    fn selection_set(&mut self, set: &'a SelectionSet, ty: Option<&str>, depth: usize) -> Result<(), ServerError> {
        let limits = &self.guard.limits;
        if depth > limits.max_depth {
            return Err(refusal(format!("selections nest deeper than {}", limits.max_depth), LIMIT_REACHED));
        }
        for selection in &set.items {
            match &selection.node {
                Selection::Field(field) => {
                    let field = &field.node;
                    self.fields += 1;
                    if self.fields > limits.max_fields {
                        return Err(refusal(format!("more than {} fields selected", limits.max_fields), LIMIT_REACHED));
                    }
                    if field.alias.is_some() {
                        self.aliases += 1;
                        if self.aliases > limits.max_aliases {
                            return Err(refusal(format!("more than {} aliases", limits.max_aliases), LIMIT_REACHED));
                        }
                    }
                    let definition = ty.and_then(|ty| self.guard.types.fields.get(ty)?.get(field.name.node.as_str()));
                    if let Some((_, arguments)) = definition {
                        for (name, value) in &field.arguments {
                            let Some(arg_type) = arguments.get(name.node.as_str()) else { continue };
                            // Variables are typed by their definition, not checked here.
                            let value = value.node.clone().into_const_with(|_| Ok::<_, ()>(Value::Null));
                            let Ok(value) = value else { continue };
                            if let Some(enum_type) = self.guard.types.string_for_enum(arg_type, &value) {
                                return Err(string_for_enum(
                                    &enum_type,
                                    &format!("{}({}:)", field.name.node, name.node),
                                ));
                            }
                        }
                    }
                    let inner = definition.map(|(ty, _)| ty.as_str());
                    if !field.selection_set.node.items.is_empty() {
                        self.selection_set(&field.selection_set.node, inner, depth + 1)?;
                    }
                }
                Selection::InlineFragment(fragment) => {
                    let fragment = &fragment.node;
                    let on = fragment.type_condition.as_ref().map(|on| on.node.on.node.as_str()).or(ty);
                    self.selection_set(&fragment.selection_set.node, on, depth)?;
                }
                Selection::FragmentSpread(spread) => {
                    let name = spread.node.fragment_name.node.as_str();
                    let Some(fragment) = self.document.fragments.get(name) else { continue };
                    if self.expanding.contains(&name) {
                        continue;
                    }
                    self.expanding.push(name);
                    let on = fragment.node.type_condition.node.on.node.as_str();
                    let result = self.selection_set(&fragment.node.selection_set.node, Some(on), depth);
                    self.expanding.pop();
                    result?;
                }
            }
        }
        Ok(())
    }

    /// Counts the root fields of a subscription, through fragments.
    fn count_roots(&mut self, set: &'a SelectionSet, roots: &mut usize) -> Result<(), ServerError> {
        for selection in &set.items {
            match &selection.node {
                Selection::Field(_) => *roots += 1,
                Selection::InlineFragment(fragment) => self.count_roots(&fragment.node.selection_set.node, roots)?,
                Selection::FragmentSpread(spread) => {
                    let name = spread.node.fragment_name.node.as_str();
                    let Some(fragment) = self.document.fragments.get(name) else { continue };
                    if self.expanding.contains(&name) {
                        continue;
                    }
                    self.expanding.push(name);
                    let result = self.count_roots(&fragment.node.selection_set.node, roots);
                    self.expanding.pop();
                    result?;
                }
            }
            if *roots > 1 {
                break;
            }
        }
        Ok(())
    }
}

/// The deepest nesting of `{`, `[` and `(` outside strings and comments.
fn nesting(query: &str) -> usize {
    let bytes = query.as_bytes();
    let (mut depth, mut deepest, mut i) = (0usize, 0usize, 0usize);
    while i < bytes.len() {
        match bytes[i] {
            b'{' | b'[' | b'(' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b'}' | b']' | b')' => depth = depth.saturating_sub(1),
            b'#' => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            }
            b'"' if bytes[i..].starts_with(b"\"\"\"") => {
                i += 3;
                while i < bytes.len() && !bytes[i..].starts_with(b"\"\"\"") {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
                i += 2;
            }
            b'"' => {
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' && bytes[i] != b'\n' {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
            }
            _ => {}
        }
        i += 1;
    }
    deepest
}

/// An executor that checks each request with a [`Guard`] before the
/// schema runs it: what the standard WebSocket protocols execute through.
#[derive(Clone)]
pub(crate) struct Guarded<E> {
    pub(crate) inner: E,
    pub(crate) guard: Arc<Guard>,
}

impl<E: Executor> Executor for Guarded<E> {
    async fn execute(&self, mut request: Request) -> Response {
        match self.guard.check(&mut request) {
            Ok(_) => self.inner.execute(request).await,
            Err(error) => Response::from_errors(vec![error]),
        }
    }

    fn execute_stream(
        &self,
        mut request: Request,
        session_data: Option<Arc<async_graphql::Data>>,
    ) -> BoxStream<'static, Response> {
        match self.guard.check(&mut request) {
            Ok(_) => self.inner.execute_stream(request, session_data),
            Err(error) => Box::pin(futures_util::stream::once(async move { Response::from_errors(vec![error]) })),
        }
    }
}

#[cfg(test)]
mod tests;
