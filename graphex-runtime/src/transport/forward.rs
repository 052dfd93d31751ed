//! Subscribing through any process: a two-channel SUBSCRIBE or UNSUBSCRIBE
//! that reaches a process other than the one holding the socket is sent,
//! through the channel layer, to the process that holds it, which runs it
//! and sends the GraphQL response back.
//!
//! A channel id starts with the node id of the hub that opened it
//! ([`Hub::node_of`]), so the target is known without asking anyone. With
//! the in-memory layer there is no other process and nothing is forwarded.
//!
//! What crosses the layer, and what the receiver trusts:
//!
//! - **No token.** The sending process authenticates the client with its
//!   own [`Authenticator`] and forwards the resolved [`Principal`] (or
//!   none: anonymous). The receiver runs the request with that principal as
//!   request data, exactly as for a local HTTP request, without
//!   authenticating anything itself. A request in the old format (with a
//!   `token` field) is refused: unknown fields are.
//! - **A subscribe or unsubscribe of a local channel, nothing else.**
//!   Before anything runs, the receiver parses the document and checks that
//!   the operation async-graphql would execute (by `operationName`) is a
//!   subscription whose root fields are plain fields each naming, in their
//!   `channelId` argument (literal or variable), a channel open on this
//!   hub. A query, a mutation, a fragment at the root, a field without a
//!   channel, a channel of another process or of none is refused with a
//!   GraphQL error and nothing runs. The sender forwards only a
//!   subscription whose channel belongs to another process.
//! - **Or an operation or stop on a local single-connection stream.** A
//!   request with a `single_connection` part (graphql-sse's single
//!   connection mode, `single.rs`) names a reservation token: it is
//!   admitted only when the token starts with this process's node id, the
//!   operation id is at most [`MAX_OPERATION_ID`] bytes, and a stop carries
//!   no query. The router then runs it only when the token names a
//!   reservation held here by the same client (the forwarded principal,
//!   else the forwarded address); any operation may run, as the receiving
//!   process would have run it as that principal. Its reply is a
//!   [`single::Outcome`], not a GraphQL response.
//! - **Bounded.** A request body is at most [`MAX_NODE_REQUEST`] bytes (a
//!   larger subscribe is answered with an error, not sent), a reply at
//!   most [`MAX_NODE_REPLY`] (a larger response is replaced by an error).
//!
//! The layer carries the bytes: the Redis layer puts them in versioned,
//! size-checked envelopes with random ids, signed when the deployment sets
//! a signing key (`layer/redis/envelope.rs`).

use async_graphql::parser::Positioned;
use async_graphql::parser::types::{Field, OperationType, Selection};
use async_graphql::{Name, Request, Response, ServerError, Variables};
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::hub::Hub;
use crate::layer::{MAX_NODE_REPLY, MAX_NODE_REQUEST};
use crate::model::Principal;
use crate::transport::auth::{Authenticator, principal};
use crate::transport::limits::{Guard, selected_operation};
use crate::transport::single::{self, Outcome};

/// Bytes of a forwarded single-connection operation id: a sanity bound
/// checked before anything else (the router's own bound,
/// [`crate::ProtocolConfig::max_operation_id_bytes`], is checked next).
pub(crate) const MAX_OPERATION_ID: usize = 1024;

/// The argument that names the channel of a two-channel subscribe.
const CHANNEL_ARGUMENT: &str = "channelId";

/// What a process answers to a forwarded request it refuses to run.
const ONLY_LOCAL_SUBSCRIBES: &str =
    "a forwarded request may only subscribe or unsubscribe a channel of the process it is sent to";

/// What a process answers to a forwarded single-connection request that
/// cannot be for a stream it holds.
const ONLY_LOCAL_STREAMS: &str =
    "a forwarded single-connection request may only name a stream of the process it is sent to";

/// A GraphQL request on its way to the process holding its channel.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Forwarded {
    /// The operation text.
    pub query: String,
    /// The operation to run, if the text holds several.
    pub operation_name: Option<String>,
    /// Its variables.
    pub variables: Variables,
    /// Who asked, as the sending process authenticated them; `None`: anonymous.
    pub principal: Option<Principal>,
    /// Set for an operation or stop on a single-connection stream; absent
    /// (and not serialized) for a two-channel subscribe, whose format is
    /// unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub single_connection: Option<SingleConnection>,
}

/// An operation (or its stop) on a graphql-sse single-connection stream.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SingleConnection {
    /// The reservation's token.
    pub token: String,
    /// The operation's id on the stream.
    pub operation_id: String,
    /// `DELETE`: stop the operation (the query is empty).
    pub stop: bool,
    /// The client's address as the sending process saw it: who an
    /// anonymous client is.
    pub address: Option<std::net::IpAddr>,
}

/// A forwarded request admitted to run here.
#[derive(Debug)]
pub(crate) enum Admitted {
    /// A two-channel subscribe or unsubscribe of a local channel.
    Subscribe(Request, Option<Principal>),
    /// An operation on a single-connection stream held here.
    Operation(Request, Option<Principal>, SingleConnection),
    /// The stop of an operation on a single-connection stream held here.
    Stop(Option<Principal>, SingleConnection),
}

/// The channel a root field names in its `channelId` argument (a string
/// literal, or a variable set to a string).
fn channel_of(field: &Positioned<Field>, variables: &Variables) -> Option<String> {
    let value = field.node.get_argument(CHANNEL_ARGUMENT)?;
    let value = value.node.clone().into_const_with(|name| variables.get(&Name::new(name.as_str())).cloned().ok_or(()));
    match value {
        Ok(async_graphql::Value::String(channel)) => Some(channel),
        _ => None,
    }
}

/// The channel a subscription operation names in its first `channelId`
/// argument (literal or variable), if it is a subscription operation. Uses
/// the document [`Guard::check`] left parsed (parses only without it).
pub(crate) fn target_channel(request: &mut Request) -> Option<String> {
    let name = request.operation_name.clone();
    let variables = request.variables.clone();
    let document = request.parsed_query().ok()?;
    let operation = selected_operation(document, name.as_deref())?;
    if operation.node.ty != OperationType::Subscription {
        return None;
    }
    operation.node.selection_set.node.items.iter().find_map(|selection| {
        let Selection::Field(field) = &selection.node else { return None };
        channel_of(field, &variables)
    })
}

/// Whether `request` may run here as a forwarded request: a subscription
/// whose root fields are all plain fields naming a channel open on `hub`.
/// `Err` says why not (for the log).
fn local_subscribe(hub: &Hub, request: &mut Request) -> Result<(), &'static str> {
    let name = request.operation_name.clone();
    let variables = request.variables.clone();
    let document = request.parsed_query().map_err(|_| "not a GraphQL document")?;
    let operation = selected_operation(document, name.as_deref()).ok_or("no operation to run")?;
    if operation.node.ty != OperationType::Subscription {
        return Err("not a subscription");
    }
    let fields = &operation.node.selection_set.node.items;
    if fields.is_empty() {
        return Err("no root field");
    }
    for selection in fields {
        let Selection::Field(field) = &selection.node else { return Err("a fragment at the root") };
        let channel = channel_of(field, &variables).ok_or("a root field without a channel")?;
        if hub.channel(&channel).is_none() {
            return Err("a channel this process does not hold");
        }
    }
    Ok(())
}

/// Sends `request` to the process that holds its channel, when that is
/// another process, as the principal `token` stands for (authenticated
/// here), and returns the JSON response it sent back. `None`: run it here
/// (a local channel, no channel named, or no process answers for that
/// node, which the local run reports as an unknown channel).
pub(crate) async fn to_owner(
    hub: &Hub,
    request: &mut Request,
    auth: &dyn Authenticator,
    token: Option<&str>,
) -> Option<Bytes> {
    let channel = target_channel(request)?;
    if hub.channel(&channel).is_some() {
        return None;
    }
    let node = Hub::node_of(&channel).filter(|node| *node != hub.node())?;
    tracing::debug!(node, channel, "subscribe forwarded to the process holding the channel");
    let forwarded = Forwarded {
        query: request.query.clone(),
        operation_name: request.operation_name.clone(),
        variables: request.variables.clone(),
        principal: principal(auth, token).await,
        single_connection: None,
    };
    let body = Bytes::from(serde_json::to_vec(&forwarded).ok()?);
    if body.len() > MAX_NODE_REQUEST {
        let message = format!(
            "subscribe too large to forward to the process holding this channel ({MAX_NODE_REQUEST} bytes at most)"
        );
        return Some(reply(&Response::from_errors(vec![ServerError::new(message, None)])));
    }
    match hub.request(node, body).await {
        Ok(reply) => reply,
        Err(error) => {
            tracing::warn!(%error, node, "subscribe not forwarded to the process holding the channel");
            let message = format!("the process holding this channel did not answer: {error}");
            Some(reply(&Response::from_errors(vec![ServerError::new(message, None)])))
        }
    }
}

/// The request another process forwarded here, and the principal to run it
/// as, if it may run here (see the [module documentation](self)); else the
/// message of the error to send back ([`refusal`]). Nothing is executed.
/// The query's raw bounds ([`Guard::precheck`]) are checked before it is
/// parsed: a request published straight to Redis has not been through the
/// sending process's checks.
pub(crate) fn admit(hub: &Hub, guard: &Guard, body: &[u8]) -> Result<Admitted, String> {
    let forwarded = match serde_json::from_slice::<Forwarded>(body) {
        Ok(forwarded) => forwarded,
        Err(error) => {
            tracing::warn!(%error, "malformed forwarded request refused");
            return Err(format!("malformed forwarded request: {error}"));
        }
    };
    if let Some(target) = &forwarded.single_connection {
        let why = if Hub::node_of(&target.token) != Some(hub.node()) || target.token.len() != single::TOKEN_BYTES {
            Some("a token of another process")
        } else if target.operation_id.is_empty() || target.operation_id.len() > MAX_OPERATION_ID {
            Some("no operation id, or too long")
        } else if target.stop && !forwarded.query.is_empty() {
            Some("a stop with a query")
        } else {
            None
        };
        if let Some(why) = why {
            tracing::warn!(reason = why, "forwarded single-connection request refused");
            return Err(ONLY_LOCAL_STREAMS.to_owned());
        }
    }
    let mut request = Request::new(forwarded.query).variables(forwarded.variables);
    if let Some(name) = forwarded.operation_name {
        request = request.operation_name(name);
    }
    if let Some(target) = forwarded.single_connection {
        if target.stop {
            return Ok(Admitted::Stop(forwarded.principal, target));
        }
        if let Err(error) = guard.precheck(&request.query) {
            tracing::warn!(%error, "forwarded request refused");
            return Err(error.message);
        }
        return Ok(Admitted::Operation(request, forwarded.principal, target));
    }
    if let Err(error) = guard.precheck(&request.query) {
        tracing::warn!(%error, "forwarded request refused");
        return Err(error.message);
    }
    if let Err(why) = local_subscribe(hub, &mut request) {
        tracing::warn!(reason = why, "forwarded request refused");
        return Err(ONLY_LOCAL_SUBSCRIBES.to_owned());
    }
    Ok(Admitted::Subscribe(request, forwarded.principal))
}

/// Sends an operation (or, without `request`, the stop of one) on a
/// single-connection stream to the process holding it, when that is
/// another process, as `principal` (authenticated here); returns what it
/// answered. `None`: the token is this process's (or names no process).
pub(crate) async fn single_to_owner(
    hub: &Hub,
    request: Option<&Request>,
    principal: Option<Principal>,
    target: SingleConnection,
) -> Option<Outcome> {
    let node = Hub::node_of(&target.token).filter(|node| *node != hub.node())?.to_owned();
    let forwarded = Forwarded {
        query: request.map(|request| request.query.clone()).unwrap_or_default(),
        operation_name: request.and_then(|request| request.operation_name.clone()),
        variables: request.map(|request| request.variables.clone()).unwrap_or_default(),
        principal,
        single_connection: Some(target),
    };
    let body = Bytes::from(serde_json::to_vec(&forwarded).ok()?);
    if body.len() > MAX_NODE_REQUEST {
        let message = format!(
            "operation too large to forward to the process holding this stream ({MAX_NODE_REQUEST} bytes at most)"
        );
        return Some(Outcome::refused(axum::http::StatusCode::PAYLOAD_TOO_LARGE, message));
    }
    Some(match hub.request(&node, body).await {
        // No process answers for that node: nobody holds the stream.
        Ok(None) => Outcome::not_found(),
        Ok(Some(reply)) => serde_json::from_slice::<Outcome>(&reply).unwrap_or_else(|_| {
            // A GraphQL error: the owner refused the forwarded request.
            let message = serde_json::from_slice::<serde_json::Value>(&reply)
                .ok()
                .and_then(|reply| reply["errors"][0]["message"].as_str().map(str::to_owned))
                .unwrap_or_else(|| "malformed reply".to_owned());
            Outcome::refused(axum::http::StatusCode::BAD_GATEWAY, message)
        }),
        Err(error) => {
            tracing::warn!(%error, %node, "single-connection request not forwarded to the process holding the stream");
            let message = format!("the process holding this stream did not answer: {error}");
            Outcome::refused(axum::http::StatusCode::SERVICE_UNAVAILABLE, message)
        }
    })
}

/// What an admitted single-connection request's outcome is sent back as.
pub(crate) fn single_reply(outcome: &Outcome) -> Bytes {
    Bytes::from(serde_json::to_vec(outcome).unwrap_or_default())
}

/// The response refusing a forwarded request, saying why.
pub(crate) fn refusal(message: String) -> Response {
    Response::from_errors(vec![ServerError::new(message, None)])
}

/// The reply to a forwarded request: `response` as JSON, or an error when
/// that is longer than a reply may be.
pub(crate) fn reply(response: &Response) -> Bytes {
    let body = serde_json::to_vec(response).unwrap_or_default();
    if body.len() <= MAX_NODE_REPLY {
        return Bytes::from(body);
    }
    tracing::warn!(bytes = body.len(), "response to a forwarded request replaced: too large");
    let message = format!("the response is larger than a forwarded reply may be ({MAX_NODE_REPLY} bytes)");
    Bytes::from(serde_json::to_vec(&Response::from_errors(vec![ServerError::new(message, None)])).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Config;

    #[test]
    fn finds_the_channel_in_literals_and_variables() {
        let mut literal = Request::new(r#"subscription { userSubscription(channelId: "abc", action: CREATE) { ok } }"#);
        assert_eq!(target_channel(&mut literal).as_deref(), Some("abc"));
        let mut variable = Request::new("subscription ($c: String!) { userSubscription(channelId: $c) { ok } }")
            .variables(Variables::from_json(serde_json::json!({"c": "xyz"})));
        assert_eq!(target_channel(&mut variable).as_deref(), Some("xyz"));
        let mut named = Request::new("query A { a } subscription B { s(channelId: \"n\") { ok } }").operation_name("B");
        assert_eq!(target_channel(&mut named).as_deref(), Some("n"));
        // One named operation and no name: async-graphql runs it.
        let mut only = Request::new("subscription B { s(channelId: \"n\") { ok } }");
        assert_eq!(target_channel(&mut only).as_deref(), Some("n"));
        assert_eq!(target_channel(&mut Request::new("mutation { m(channelId: \"abc\") }")), None);
        assert_eq!(target_channel(&mut Request::new("subscription { s(other: 1) { ok } }")), None);
        assert_eq!(target_channel(&mut Request::new("not graphql")), None);
    }

    fn forwarded(query: &str, operation_name: Option<&str>, variables: serde_json::Value) -> Vec<u8> {
        let principal = Principal::new("ann").with_claim("tenant", "t1");
        let forwarded = Forwarded {
            query: query.to_owned(),
            operation_name: operation_name.map(str::to_owned),
            variables: Variables::from_json(variables),
            principal: Some(principal),
            single_connection: None,
        };
        serde_json::to_vec(&forwarded).unwrap()
    }

    fn refusal(outcome: Result<Admitted, String>) -> String {
        match outcome {
            Ok(admitted) => panic!("admitted: {admitted:?}"),
            Err(message) => message,
        }
    }

    #[tokio::test]
    async fn only_subscribes_of_local_channels_are_admitted() {
        let hub = Hub::new(Config::default());
        let guard = Guard::new(crate::RequestLimits::default(), "type Query { a: Int }");
        let (channel, _deliveries) = hub.open_channel(None).expect("opened");
        let local = channel.id().to_owned();
        let (here, vars) = ("subscription ($c: String!) { s(channelId: $c) { ok } }", serde_json::json!({"c": local}));

        let Ok(Admitted::Subscribe(request, principal)) = admit(&hub, &guard, &forwarded(here, None, vars.clone()))
        else {
            panic!("admitted as a subscribe")
        };
        assert_eq!(request.query, here);
        assert_eq!(principal, Some(Principal::new("ann").with_claim("tenant", "t1")), "the principal arrives");
        let literal =
            format!("subscription {{ a: s(channelId: \"{local}\") {{ ok }} b: t(channelId: \"{local}\") {{ ok }} }}");
        assert!(admit(&hub, &guard, &forwarded(&literal, None, serde_json::json!({}))).is_ok());
        let named = format!("query Q {{ q }} subscription S {{ s(channelId: \"{local}\") {{ ok }} }}");
        assert!(admit(&hub, &guard, &forwarded(&named, Some("S"), serde_json::json!({}))).is_ok());

        let other_node = format!("ffffffff{}", &local[8..]);
        let refused = [
            (format!("mutation {{ createUser(channelId: \"{local}\") {{ id }} }}"), None, serde_json::json!({})),
            (format!("query {{ s(channelId: \"{local}\") }}"), None, serde_json::json!({})),
            // The operation async-graphql would run is the query.
            (named.clone(), Some("Q"), serde_json::json!({})),
            (named.clone(), None, serde_json::json!({})),
            (named.clone(), Some("Missing"), serde_json::json!({})),
            (here.to_owned(), Some("S"), vars.clone()),
            (here.to_owned(), None, serde_json::json!({"c": other_node})),
            (here.to_owned(), None, serde_json::json!({"c": "unknown"})),
            (here.to_owned(), None, serde_json::json!({})),
            (here.to_owned(), None, serde_json::json!({"c": 5})),
            // Every root field must name a local channel.
            (format!("subscription {{ s(channelId: \"{local}\") {{ ok }} __typename }}"), None, serde_json::json!({})),
            (
                format!(
                    "subscription {{ s(channelId: \"{local}\") {{ ok }} t(channelId: \"{other_node}\") {{ ok }} }}"
                ),
                None,
                serde_json::json!({}),
            ),
            (
                format!("subscription {{ ...F }} fragment F on S {{ s(channelId: \"{local}\") {{ ok }} }}"),
                None,
                serde_json::json!({}),
            ),
            ("subscription { }".to_owned(), None, serde_json::json!({})),
            ("not graphql".to_owned(), None, serde_json::json!({})),
        ];
        for (query, name, variables) in refused {
            let message = refusal(admit(&hub, &guard, &forwarded(&query, name, variables)));
            assert_eq!(message, ONLY_LOCAL_SUBSCRIBES, "{query}");
        }

        // The old format carried the client's token: refused, not run as anonymous.
        let old = serde_json::json!({"query": here, "operation_name": null, "variables": vars, "token": "ann"});
        let message = refusal(admit(&hub, &guard, &serde_json::to_vec(&old).unwrap()));
        assert!(message.starts_with("malformed forwarded request: unknown field `token`"), "{message}");

        // Published straight to Redis, it has not been through the sender's
        // checks: the raw bounds hold before anything parses it.
        let deep =
            format!("subscription {{ s(channelId: \"{local}\", f: {}{}) {{ ok }} }}", "[".repeat(500), "]".repeat(500));
        let message = refusal(admit(&hub, &guard, &forwarded(&deep, None, serde_json::json!({}))));
        assert_eq!(message, "query nests deeper than 32");
    }

    #[tokio::test]
    async fn single_connection_requests_name_a_stream_of_this_process() {
        let hub = Hub::new(Config::default());
        let guard = Guard::new(crate::RequestLimits::default(), "type Query { a: Int }");
        let token = hub.reservation_token();
        let body = |query: &str, token: &str, operation_id: &str, stop: bool| {
            let mut forwarded: serde_json::Value =
                serde_json::from_slice(&forwarded(query, None, serde_json::json!({}))).expect("JSON");
            forwarded["single_connection"] =
                serde_json::json!({"token": token, "operation_id": operation_id, "stop": stop, "address": "10.0.0.1"});
            serde_json::to_vec(&forwarded).unwrap()
        };
        match admit(&hub, &guard, &body("mutation { m }", &token, "op", false)) {
            Ok(Admitted::Operation(request, principal, target)) => {
                assert_eq!(request.query, "mutation { m }", "any operation: it runs as its principal");
                assert_eq!(principal.map(|principal| principal.id), Some("ann".to_owned()));
                assert_eq!(
                    (target.token, target.operation_id, target.address),
                    (token.clone(), "op".to_owned(), Some([10, 0, 0, 1].into()))
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(admit(&hub, &guard, &body("", &token, "op", true)), Ok(Admitted::Stop(..))));
        let other_node = format!("ffffffff{}", &token[8..]);
        let refused = [
            body("{ a }", &other_node, "op", false),
            body("{ a }", &token[..20], "op", false),
            body("{ a }", &token, "", false),
            body("{ a }", &token, &"x".repeat(MAX_OPERATION_ID + 1), false),
            body("{ a }", &token, "op", true),
        ];
        for body in refused {
            assert_eq!(refusal(admit(&hub, &guard, &body)), ONLY_LOCAL_STREAMS);
        }
        let deep = format!("{{ a(f: {}{}) }}", "[".repeat(500), "]".repeat(500));
        assert_eq!(refusal(admit(&hub, &guard, &body(&deep, &token, "op", false))), "query nests deeper than 32");
        // A two-channel subscribe is sent as before: no `single_connection` key.
        let plain: serde_json::Value =
            serde_json::from_slice(&forwarded("{ a }", None, serde_json::json!({}))).unwrap();
        let mut keys: Vec<&String> = plain.as_object().unwrap().keys().collect();
        keys.sort();
        assert_eq!(keys, ["operation_name", "principal", "query", "variables"]);
    }

    #[test]
    fn replies_are_bounded() {
        let small = Response::new(async_graphql::Value::from_json(serde_json::json!({"s": {"ok": true}})).unwrap());
        assert_eq!(reply(&small), Bytes::from(serde_json::to_vec(&small).unwrap()));
        let large = Response::new(async_graphql::Value::String("x".repeat(MAX_NODE_REPLY)));
        let replaced = reply(&large);
        assert!(replaced.len() < MAX_NODE_REPLY);
        let replaced: serde_json::Value = serde_json::from_slice(&replaced).unwrap();
        assert!(replaced["errors"][0]["message"].as_str().unwrap().contains("larger than a forwarded reply"));
    }
}
