//! Shared execution (what Hasura calls multiplexing): native subscriptions
//! over the standard WebSocket protocols and HTTP streaming whose operation (document,
//! operation name, variables, extensions) and built subscriptions (groups,
//! keys, merged scope and client filter, row read) are equal form one
//! *group*. The group runs the operation once: one hub channel, one
//! async-graphql execution of the selection set per change, one
//! serialization of the result. Each member's frame is that payload with
//! its own operation id spliced in by its connection.
//!
//! Who shares:
//! - the connection loop (`transport/standard.rs`) marks a subscribe whose
//!   selected operation is a subscription with exactly one root field and
//!   no directive on it ([`shareable_operation`]); the connection's
//!   executor turns the mark into a [`Ticket`] in the request's data;
//! - the generated `<name>Changes` field ([`crate::ChangesArgs::shareable`]:
//!   it returns the stream as is, so nothing per request shapes its items)
//!   without `after` (a resume's replay is its own) claims the ticket after
//!   building its subscriptions exactly as an unshared one does, so
//!   authorization, scope and filter errors are answered as before;
//! - the [`Proof`] compares the built subscriptions themselves: two
//!   principals share only when their merged scopes are equal values, never
//!   because of who they are.
//!
//! SSE and multipart responses join the same groups: the HTTP handler gives
//! a shareable streaming subscription its ticket directly. Everything else
//! (two-channel, custom groups, a field written by hand, a root field with
//! a directive or in a fragment, `after`) keeps the per-subscriber path.
//!
//! A member joins at the group channel's delivery count: it takes the
//! changes queued after it joined, as an unshared subscription takes those
//! dispatched after it was added. Each member counts against its client's
//! caps as one channel and its subscriptions, like an unshared one. A member
//! more than [`crate::Config::queue_capacity`] frames behind ends alone,
//! with the slow-consumer error an unshared stream ends with.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use async_graphql::parser::types::{ExecutableDocument, OperationType, Selection};
use async_graphql::{Data, ErrorExtensions, Request, Response, Variables};
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use serde_json::Value as Json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::hub::{Channel, ClientKey, CloseReason, Hub, Resource, Subscription, SubscriptionKey};
use crate::subscribe::SubscribeError;
use crate::subscribe::filter::Filter;
use crate::subscribe::native::ChangeStream;

/// The request extension the connection loop marks a shareable subscribe
/// with (it overwrites a client's own and the executor removes it).
pub(crate) const MARK: &str = "graphexShare";

/// Runs an operation on the schema the connection serves.
pub(crate) type Execute = Arc<dyn Fn(Request, Option<Arc<Data>>) -> BoxStream<'static, Response> + Send + Sync>;

/// One frame for one member: the group's payload, spliced by the member's
/// connection.
pub(crate) struct Frame {
    pub(crate) member: Arc<Member>,
    pub(crate) payload: Arc<str>,
}

/// A member's side of its connection: the operation id, the subscribe it
/// belongs to (`generation`: an id the client reuses is another subscribe)
/// and the connection's queue of frames.
pub(crate) struct Sink {
    pub(crate) id: String,
    pub(crate) generation: u64,
    pub(crate) transport_ws: bool,
    pub(crate) outbox: mpsc::UnboundedSender<Frame>,
}

/// What a marked subscribe carries to the field that may share it.
pub(crate) struct Ticket {
    /// Document, operation name, variables and extensions, as one string.
    base: Arc<str>,
    request: Template,
    session: Option<Arc<Data>>,
    execute: Execute,
    sink: Mutex<Option<Sink>>,
    claimed: AtomicBool,
}

/// The operation, to execute again for the group.
struct Template {
    query: String,
    operation_name: Option<String>,
    variables: Variables,
    extensions: async_graphql::Extensions,
}

impl Ticket {
    /// The ticket of a request the connection loop marked (the mark names
    /// the operation id and its subscribe's generation); removes the mark.
    pub(crate) fn take(
        request: &mut Request,
        session: Option<Arc<Data>>,
        execute: &Execute,
        transport_ws: bool,
        outbox: &mpsc::UnboundedSender<Frame>,
    ) -> Option<Ticket> {
        let mark = request.extensions.0.remove(MARK)?;
        let async_graphql::Value::Object(mark) = mark else { return None };
        let Some(async_graphql::Value::String(id)) = mark.get("id") else { return None };
        let generation = match mark.get("generation") {
            Some(async_graphql::Value::Number(number)) => number.as_u64()?,
            _ => return None,
        };
        let sink = Sink { id: id.clone(), generation, transport_ws, outbox: outbox.clone() };
        Ticket::new(request, session, execute, sink)
    }

    /// The ticket of `request`, whose frames go to `sink` (an HTTP
    /// streaming response's, or a marked subscribe's).
    pub(crate) fn new(request: &Request, session: Option<Arc<Data>>, execute: &Execute, sink: Sink) -> Option<Ticket> {
        let extensions: BTreeMap<&String, &async_graphql::Value> = request.extensions.0.iter().collect();
        // With connection data (a WebSocket connection) the execution's
        // stream waits at shutdown for the connection's 1001; without (an
        // HTTP stream) it ends: the two never share.
        let base = format!(
            "{}\u{0}{}\u{0}{:?}\u{0}{}\u{0}{}",
            if session.is_some() { "ws" } else { "http" },
            request.query,
            request.operation_name,
            serde_json::to_string(&request.variables).ok()?,
            serde_json::to_string(&extensions).ok()?,
        );
        Some(Ticket {
            base: Arc::from(base),
            request: Template {
                query: request.query.clone(),
                operation_name: request.operation_name.clone(),
                variables: request.variables.clone(),
                extensions: request.extensions.clone(),
            },
            session,
            execute: execute.clone(),
            sink: Mutex::new(Some(sink)),
            claimed: AtomicBool::new(false),
        })
    }

    /// The mark the connection loop adds to a shareable subscribe.
    pub(crate) fn mark(id: &str, generation: u64) -> Json {
        serde_json::json!({"id": id, "generation": generation})
    }

    /// The ticket, once: a second field of the same execution does not share.
    pub(crate) fn claim(&self) -> Option<Sink> {
        if self.claimed.swap(true, Ordering::AcqRel) {
            return None;
        }
        lock(&self.sink).take()
    }
}

/// Whether the operation `name` selects is a subscription of exactly one
/// root field, with no directive: its result is that field's alone.
pub(crate) fn shareable_operation(document: &ExecutableDocument, name: Option<&str>) -> bool {
    let Some(operation) = crate::transport::limits::selected_operation(document, name) else { return false };
    let operation = &operation.node;
    operation.ty == OperationType::Subscription
        && operation.directives.is_empty()
        && matches!(
            operation.selection_set.node.items.as_slice(),
            [item] if matches!(&item.node, Selection::Field(field) if field.node.directives.is_empty())
        )
}

/// What makes two subscribes' streams equal: their subscriptions (groups
/// and keys), the merged scope and client filter, and the database a row
/// check reads (the same connection object, by address).
#[derive(PartialEq)]
pub(crate) struct Proof {
    subscriptions: Vec<(Arc<str>, SubscriptionKey)>,
    filter: Option<Arc<Filter>>,
    row: Option<usize>,
}

impl Proof {
    pub(crate) fn of(subscriptions: &[Subscription], database: Option<usize>) -> Proof {
        Proof {
            subscriptions: subscriptions.iter().map(|s| (s.group.clone(), s.key.clone())).collect(),
            filter: subscriptions.first().map(|s| s.filter.clone()),
            row: subscriptions.first().and_then(|s| s.row.as_ref()).and(database.or(Some(0))),
        }
    }

    fn subscription_count(&self) -> usize {
        self.subscriptions.len()
    }
}

/// One member of a group.
pub(crate) struct Member {
    sink: Sink,
    /// The frame's head: `{"type":"next","id":"1","payload":` (or `data`).
    head: Box<str>,
    /// Deliveries of the group channel before this member joined.
    from: u64,
    /// Frames queued on the connection and not yet taken.
    pending: AtomicUsize,
    ended: CancellationToken,
    reason: OnceLock<Option<End>>,
}

impl Member {
    pub(crate) fn id(&self) -> &str {
        &self.sink.id
    }

    pub(crate) fn generation(&self) -> u64 {
        self.sink.generation
    }

    /// The member's frame for `payload`.
    pub(crate) fn frame(&self, payload: &str) -> String {
        let mut frame = String::with_capacity(self.head.len() + payload.len() + 1);
        frame.push_str(&self.head);
        frame.push_str(payload);
        frame.push('}');
        frame
    }

    /// Whether the member still takes frames (it did not end as a slow
    /// consumer).
    pub(crate) fn live(&self) -> bool {
        !self.ended_slow()
    }

    /// The connection took one of this member's frames.
    pub(crate) fn taken(&self) {
        self.pending.fetch_sub(1, Ordering::Relaxed);
    }

    fn end(&self, reason: Option<End>) {
        let _ = self.reason.set(reason);
        self.ended.cancel();
    }
}

/// Why a member ended before its group did.
#[derive(Clone)]
enum End {
    /// Its frames were not taken (slow consumer).
    Closed(CloseReason),
    /// The group could not start: the refusal its first member got.
    Refused(async_graphql::Error),
}

/// One shared execution.
struct Group {
    base: Arc<str>,
    proof: Proof,
    /// Set once the first member opened it and added the subscriptions.
    channel: OnceLock<Arc<Channel>>,
    members: Mutex<Members>,
    stop: CancellationToken,
}

#[derive(Default)]
struct Members {
    list: Vec<Arc<Member>>,
    closed: bool,
}

/// The groups of one hub, by operation.
#[derive(Default)]
pub(crate) struct Registry {
    groups: Mutex<HashMap<Arc<str>, Vec<Arc<Group>>>>,
}

impl Registry {
    /// Groups running.
    pub(crate) fn len(&self) -> usize {
        lock(&self.groups).values().map(Vec::len).sum()
    }

    /// Members of the groups running.
    pub(crate) fn members(&self) -> usize {
        lock(&self.groups).values().flatten().map(|group| lock(&group.members).list.len()).sum()
    }

    fn remove(&self, group: &Arc<Group>) {
        let mut groups = lock(&self.groups);
        if let Some(list) = groups.get_mut(&group.base) {
            list.retain(|other| !Arc::ptr_eq(other, group));
            if list.is_empty() {
                groups.remove(&group.base);
            }
        }
    }
}

/// Given to the group's own execution: the stream its field returns.
pub(crate) struct Feed(Mutex<Option<ChangeStream>>);

impl Feed {
    pub(crate) fn take(&self) -> Option<ChangeStream> {
        lock(&self.0).take()
    }
}

/// Joins the group of equal subscribes, or starts it. `open` opens and
/// fills the group's channel (not counted against a client: its members
/// are) and returns it with its stream and delivery counter.
pub(crate) async fn join(
    hub: &Hub,
    ticket: &Ticket,
    sink: Sink,
    proof: Proof,
    client: Option<ClientKey>,
    open: impl Future<Output = Result<(Arc<Channel>, ChangeStream, Arc<AtomicU64>), SubscribeError>>,
) -> Result<ChangeStream, SubscribeError> {
    let counted = Counted::take(hub, client, proof.subscription_count())?;
    let registry = hub.shared();
    let group = {
        let mut groups = lock(&registry.groups);
        if let Some(group) = groups.get(&ticket.base).and_then(|list| list.iter().find(|group| group.proof == proof)) {
            let mut members = lock(&group.members);
            if !members.closed {
                // A group still opening its channel has delivered nothing.
                let from = group.channel.get().map_or(0, |channel| channel.sent());
                let member = Arc::new(Member::new(sink, from));
                members.list.push(member.clone());
                hub.counters().shared_joins.fetch_add(1, Ordering::Relaxed);
                return Ok(member_stream(MemberGuard { hub: hub.clone(), group: group.clone(), member, counted }));
            }
        }
        // Registered before its channel opens: equal subscribes arriving
        // meanwhile (the layer may take a while to be ready) join it.
        let group = Arc::new(Group {
            base: ticket.base.clone(),
            proof,
            channel: OnceLock::new(),
            members: Mutex::default(),
            stop: CancellationToken::new(),
        });
        groups.entry(group.base.clone()).or_default().push(group.clone());
        group
    };
    let member = Arc::new(Member::new(sink, 0));
    lock(&group.members).list.push(member.clone());
    let mut opening = Opening { hub, group: group.clone(), member: member.clone(), refusal: None, done: false };
    let (channel, stream, delivered) = match open.await {
        Ok(opened) => opened,
        Err(error) => {
            opening.refusal = Some(error.extend());
            return Err(error);
        }
    };
    opening.done = true;
    let _ = group.channel.set(channel);
    let template = &ticket.request;
    let mut request = Request::new(template.query.clone()).data(Feed(Mutex::new(Some(stream))));
    request.operation_name = template.operation_name.clone();
    request.variables = template.variables.clone();
    request.extensions = template.extensions.clone();
    let results = (ticket.execute)(request, ticket.session.clone());
    hub.spawn(run(hub.clone(), group.clone(), results, delivered));
    Ok(member_stream(MemberGuard { hub: hub.clone(), group, member, counted }))
}

/// A group's start by its first member. If it does not finish (the open
/// was refused, or the subscribe was dropped meanwhile: the client left),
/// the group is forgotten and those who joined meanwhile end: with the
/// refusal the first member got, else as disconnected (they subscribe
/// again).
struct Opening<'a> {
    hub: &'a Hub,
    group: Arc<Group>,
    member: Arc<Member>,
    refusal: Option<async_graphql::Error>,
    done: bool,
}

impl Drop for Opening<'_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        self.hub.shared().remove(&self.group);
        let joined = {
            let mut members = lock(&self.group.members);
            members.closed = true;
            std::mem::take(&mut members.list)
        };
        for other in joined.iter().filter(|other| !Arc::ptr_eq(other, &self.member)) {
            let end = match &self.refusal {
                Some(refusal) => End::Refused(refusal.clone()),
                None => End::Closed(CloseReason::Disconnected),
            };
            other.end(Some(end));
        }
    }
}

impl Member {
    fn new(sink: Sink, from: u64) -> Member {
        let kind = if sink.transport_ws { "next" } else { "data" };
        let id = serde_json::to_string(&sink.id).unwrap_or_else(|_| "\"\"".into());
        Member {
            head: format!(r#"{{"type":"{kind}","id":{id},"payload":"#).into_boxed_str(),
            sink,
            from,
            pending: AtomicUsize::new(0),
            ended: CancellationToken::new(),
            reason: OnceLock::new(),
        }
    }
}

/// The group's execution: each result serialized once and offered to
/// every member that joined before the delivery it came from.
async fn run(hub: Hub, group: Arc<Group>, mut results: BoxStream<'static, Response>, delivered: Arc<AtomicU64>) {
    // However the task ends (its stream ended, or it panicked), its members
    // end with it rather than wait for frames that will not come.
    let _ending = Ending { hub: hub.clone(), group: group.clone() };
    let capacity = hub.config().queue_capacity.max(1);
    loop {
        let response = tokio::select! {
            biased;
            () = group.stop.cancelled() => return,
            response = results.next() => response,
        };
        let Some(response) = response else { return };
        let delivery = delivered.load(Ordering::Acquire);
        let payload: Arc<str> = match serde_json::to_string(&response) {
            Ok(payload) => Arc::from(payload),
            Err(error) => {
                tracing::error!(%error, "shared result not serializable");
                return;
            }
        };
        let members = lock(&group.members);
        for member in &members.list {
            if delivery > member.from {
                offer(&hub, member, &payload, capacity);
            }
        }
    }
}

/// Ends a group's members when its task ends: the execution ended (its
/// channel closed, or the server shuts down), and every member ends after
/// the frames it was given. After a stop (the last member left) there are
/// none.
struct Ending {
    hub: Hub,
    group: Arc<Group>,
}

impl Drop for Ending {
    fn drop(&mut self) {
        self.hub.shared().remove(&self.group);
        let members = {
            let mut members = lock(&self.group.members);
            members.closed = true;
            std::mem::take(&mut members.list)
        };
        for member in members {
            member.end(None);
        }
    }
}

fn offer(hub: &Hub, member: &Arc<Member>, payload: &Arc<str>, capacity: usize) {
    // Set before the token is cancelled, and read without its lock.
    if member.reason.get().is_some() {
        return;
    }
    if member.pending.fetch_add(1, Ordering::Relaxed) >= capacity {
        member.pending.fetch_sub(1, Ordering::Relaxed);
        hub.counters().overflowed.fetch_add(1, Ordering::Relaxed);
        hub.counters().slow_consumers.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(operation = %member.sink.id, "shared subscription's frames not taken: ending a slow consumer");
        member.end(Some(End::Closed(CloseReason::SlowConsumer)));
        return;
    }
    hub.counters().delivered.fetch_add(1, Ordering::Relaxed);
    if member.sink.outbox.send(Frame { member: member.clone(), payload: payload.clone() }).is_err() {
        member.pending.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A member's channel and subscription counts against its client.
struct Counted {
    hub: Hub,
    client: Option<ClientKey>,
    subscriptions: usize,
}

impl Counted {
    fn take(hub: &Hub, client: Option<ClientKey>, subscriptions: usize) -> Result<Counted, SubscribeError> {
        hub.take(client.as_ref(), Resource::Channels, 1)?;
        if let Err(error) = hub.take(client.as_ref(), Resource::Subscriptions, subscriptions) {
            hub.release(client.as_ref(), Resource::Channels, 1);
            return Err(error.into());
        }
        Ok(Counted { hub: hub.clone(), client, subscriptions })
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.hub.release(self.client.as_ref(), Resource::Channels, 1);
        self.hub.release(self.client.as_ref(), Resource::Subscriptions, self.subscriptions);
    }
}

/// Leaves the group when the member's stream is dropped (client
/// `complete`, disconnect); the last member stops the execution.
struct MemberGuard {
    hub: Hub,
    group: Arc<Group>,
    member: Arc<Member>,
    #[allow(dead_code)] // released on drop
    counted: Counted,
}

impl Drop for MemberGuard {
    fn drop(&mut self) {
        self.member.end(None);
        let registry = self.hub.shared();
        let mut groups = lock(&registry.groups);
        let mut members = lock(&self.group.members);
        members.list.retain(|member| !Arc::ptr_eq(member, &self.member));
        if members.list.is_empty() && !members.closed {
            members.closed = true;
            if let Some(list) = groups.get_mut(&self.group.base) {
                list.retain(|other| !Arc::ptr_eq(other, &self.group));
                if list.is_empty() {
                    groups.remove(&self.group.base);
                }
            }
            self.group.stop.cancel();
        }
    }
}

/// What async-graphql holds for a member: no items of its own (its frames
/// come from the group), an error when it ended as a slow consumer, and
/// its end when the group's execution ends.
fn member_stream(guard: MemberGuard) -> ChangeStream {
    let stream = futures_util::stream::unfold(Some(guard), |guard| async move {
        let guard = guard?;
        guard.member.ended.cancelled().await;
        let error = match guard.member.reason.get().cloned().flatten()? {
            End::Closed(reason) => crate::subscribe::native::closed_error(Some(reason)),
            End::Refused(error) => error,
        };
        Some((Err(error), None))
    });
    ChangeStream::from_stream(stream.boxed())
}

/// Connection loop side: whether a member's frame still belongs to the
/// operation the client has under that id.
pub(crate) fn current(frame: &Frame, generations: &HashMap<String, u64>) -> bool {
    generations.get(frame.member.id()) == Some(&frame.member.generation()) && !frame.member.ended_slow()
}

impl Member {
    fn ended_slow(&self) -> bool {
        matches!(self.reason.get(), Some(Some(_)))
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shareable(query: &str, name: Option<&str>) -> bool {
        shareable_operation(&async_graphql::parser::parse_query(query).unwrap(), name)
    }

    #[test]
    fn only_a_subscription_of_one_plain_root_field_is_shareable() {
        assert!(shareable("subscription { userChanges { id } }", None));
        assert!(shareable(
            "subscription S { a: userChanges(action: CREATE) { ...F } } fragment F on ModelChange { id }",
            None
        ));
        assert!(shareable("query Q { a } subscription S { userChanges { id } }", Some("S")));
        assert!(!shareable("query Q { a } subscription S { userChanges { id } }", Some("Q")));
        assert!(!shareable("query Q { a } subscription S { userChanges { id } }", None), "no operation selected");
        assert!(!shareable("{ userChanges { id } }", None), "a query");
        assert!(!shareable("subscription { a: userChanges { id } b: userChanges { id } }", None));
        assert!(!shareable("subscription { ... on Subscription { userChanges { id } } }", None));
        assert!(!shareable("subscription { ...F } fragment F on Subscription { userChanges { id } }", None));
        assert!(!shareable("subscription($on: Boolean!) { userChanges @include(if: $on) { id } }", None));
        assert!(!shareable("subscription @live { userChanges { id } }", None));
    }

    fn member(outbox: &mpsc::UnboundedSender<Frame>) -> Arc<Member> {
        let sink = Sink { id: "7".into(), generation: 1, transport_ws: true, outbox: outbox.clone() };
        Arc::new(Member::new(sink, 0))
    }

    #[test]
    fn a_frame_is_the_payload_under_the_member_s_id() {
        let (tx, _rx) = mpsc::unbounded_channel();
        assert_eq!(member(&tx).frame(r#"{"data":null}"#), r#"{"type":"next","id":"7","payload":{"data":null}}"#);
        let sink = Sink { id: "a\"b".into(), generation: 1, transport_ws: false, outbox: tx };
        assert_eq!(Member::new(sink, 0).frame("{}"), r#"{"type":"data","id":"a\"b","payload":{}}"#);
    }

    #[tokio::test]
    async fn a_member_that_does_not_take_its_frames_ends_alone_as_a_slow_consumer() {
        let hub = Hub::new(crate::Config::default().with_queue_capacity(2));
        let (tx, mut rx) = mpsc::unbounded_channel();
        let (slow, quick) = (member(&tx), member(&tx));
        let payload: Arc<str> = Arc::from("{}");
        for _ in 0..2 {
            offer(&hub, &slow, &payload, 2);
        }
        let mut slow_frames = Vec::new();
        for _ in 0..3 {
            offer(&hub, &quick, &payload, 2);
            loop {
                let frame = rx.recv().await.unwrap();
                if Arc::ptr_eq(&frame.member, &quick) {
                    frame.member.taken();
                    break;
                }
                slow_frames.push(frame);
            }
        }
        assert!(!slow.ended.is_cancelled() && !quick.ended.is_cancelled());
        offer(&hub, &slow, &payload, 2);
        assert!(matches!(slow.reason.get(), Some(Some(End::Closed(CloseReason::SlowConsumer)))));
        assert!(!quick.ended.is_cancelled(), "the others go on");
        assert_eq!(hub.stats().slow_consumers, 1);
        let generations = HashMap::from([("7".to_owned(), 1)]);
        assert_eq!(slow_frames.len(), 2);
        assert!(slow_frames.iter().all(|frame| !current(frame, &generations)), "its queued frames are dropped");
    }
}
