//! Subscribing through any process: a two-channel SUBSCRIBE or UNSUBSCRIBE
//! that reaches a process other than the one holding the socket is sent,
//! through the channel layer, to the process that holds it, which runs it
//! exactly as if it had received the HTTP request itself (same token, same
//! authenticator, same schema) and sends the GraphQL response back.
//!
//! A channel id starts with the node id of the hub that opened it
//! ([`Hub::node_of`]), so the target is known without asking anyone. With
//! the in-memory layer there is no other process and nothing is forwarded.

use async_graphql::parser::types::{DocumentOperations, OperationType, Selection};
use async_graphql::{Name, Request, Variables};
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::hub::Hub;

/// The argument that names the channel of a two-channel subscribe.
const CHANNEL_ARGUMENT: &str = "channelId";

/// A GraphQL request on its way to the process holding its channel.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Forwarded {
    /// The operation text.
    pub query: String,
    /// The operation to run, if the text holds several.
    pub operation_name: Option<String>,
    /// Its variables.
    pub variables: Variables,
    /// The bearer token the client sent, authenticated by the receiving process.
    pub token: Option<String>,
}

impl Forwarded {
    /// The request to execute.
    pub(crate) fn into_request(self) -> (Request, Option<String>) {
        let mut request = Request::new(self.query).variables(self.variables);
        if let Some(name) = self.operation_name {
            request = request.operation_name(name);
        }
        (request, self.token)
    }
}

/// The channel a subscription operation names in its first `channelId`
/// argument (literal or variable), if it is a subscription operation.
pub(crate) fn target_channel(request: &Request) -> Option<String> {
    let document = async_graphql::parser::parse_query(&request.query).ok()?;
    let operation = match &document.operations {
        DocumentOperations::Single(operation) => operation,
        DocumentOperations::Multiple(operations) => operations.get(request.operation_name.as_deref()?)?,
    };
    if operation.node.ty != OperationType::Subscription {
        return None;
    }
    operation.node.selection_set.node.items.iter().find_map(|selection| {
        let Selection::Field(field) = &selection.node else { return None };
        let value = field.node.get_argument(CHANNEL_ARGUMENT)?;
        let value = value
            .node
            .clone()
            .into_const_with(|name| request.variables.get(&Name::new(name.as_str())).cloned().ok_or(()));
        match value {
            Ok(async_graphql::Value::String(channel)) => Some(channel),
            _ => None,
        }
    })
}

/// Sends `request` to the process that holds its channel, when that is
/// another process, and returns the JSON response it sent back. `None`:
/// run it here (a local channel, no channel named, or no process answers
/// for that node, which the local run reports as an unknown channel).
pub(crate) async fn to_owner(hub: &Hub, request: &Request, token: Option<&str>) -> Option<Bytes> {
    let channel = target_channel(request)?;
    if hub.channel(&channel).is_some() {
        return None;
    }
    let node = Hub::node_of(&channel).filter(|node| *node != hub.node())?;
    let forwarded = Forwarded {
        query: request.query.clone(),
        operation_name: request.operation_name.clone(),
        variables: request.variables.clone(),
        token: token.map(str::to_owned),
    };
    let body = Bytes::from(serde_json::to_vec(&forwarded).ok()?);
    match hub.request(node, body).await {
        Ok(reply) => reply,
        Err(error) => {
            tracing::warn!(%error, node, "subscribe not forwarded to the process holding the channel");
            let response = async_graphql::Response::from_errors(vec![async_graphql::ServerError::new(
                format!("the process holding this channel did not answer: {error}"),
                None,
            )]);
            serde_json::to_vec(&response).ok().map(Bytes::from)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_channel_in_literals_and_variables() {
        let literal = Request::new(r#"subscription { userSubscription(channelId: "abc", action: CREATE) { ok } }"#);
        assert_eq!(target_channel(&literal).as_deref(), Some("abc"));
        let variable = Request::new("subscription ($c: String!) { userSubscription(channelId: $c) { ok } }")
            .variables(Variables::from_json(serde_json::json!({"c": "xyz"})));
        assert_eq!(target_channel(&variable).as_deref(), Some("xyz"));
        let named = Request::new("query A { a } subscription B { s(channelId: \"n\") { ok } }").operation_name("B");
        assert_eq!(target_channel(&named).as_deref(), Some("n"));
        assert_eq!(target_channel(&Request::new("mutation { m(channelId: \"abc\") }")), None);
        assert_eq!(target_channel(&Request::new("subscription { s(other: 1) { ok } }")), None);
        assert_eq!(target_channel(&Request::new("not graphql")), None);
    }
}
