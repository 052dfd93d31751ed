//! Node requests over Redis: a process asks another one (a subscribe
//! forwarded to the process holding the socket) on
//! `<prefix>~node:<its node id>` and gets the answer on
//! `<prefix>~reply:<own node id>`, both through the subscriber connection.
//!
//! Every request and reply travels in an [`envelope`]:
//! versioned, size-bounded on send and on receive, with an id of 128
//! random bits, and signed when [`RedisOptions::signing_key`](super::RedisOptions::signing_key)
//! is set. An envelope that fails a check is dropped, counted in
//! [`RedisStats`](super::RedisStats) and
//! logged; nothing in it runs. With a key, the ids of accepted requests are
//! remembered while their signature is fresh, so a replayed request is
//! dropped too. What a request may *do* is the handler's business (see
//! `transport/forward.rs`): this file only carries bytes.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use tokio::sync::oneshot;

use super::envelope::{self, Kind, MAX_CLOCK_SKEW, Rejected, SigningKey};
use super::{ChannelLayer, Counters, RedisLayer, Subscriber, lock, unavailable};
use crate::change::group;
use crate::layer::{LayerError, MAX_NODE_REQUEST, NodeRequests, RequestHandler};

/// What both halves of the layer know about process-to-process requests.
#[derive(Clone, Default)]
pub(super) struct Requests {
    /// This process's node id, once it serves requests.
    node: Arc<OnceLock<String>>,
    handler: Arc<OnceLock<RequestHandler>>,
    /// Requests sent to other processes, waiting for their reply, by id.
    pending: Arc<Mutex<HashMap<u128, Waiting>>>,
    key: Option<SigningKey>,
    seen: Arc<Mutex<Seen>>,
}

/// A request waiting for its reply.
struct Waiting {
    /// The node asked: only its reply is taken.
    node: String,
    reply: oneshot::Sender<Bytes>,
}

impl Requests {
    pub(super) fn new(key: Option<SigningKey>) -> Requests {
        Requests { key, ..Requests::default() }
    }
}

/// Most request ids remembered at once (a signing deployment receiving
/// more than this many forwarded subscribes per minute drops the excess).
const MAX_SEEN: usize = 100_000;

/// The ids of signed requests accepted while their signature could still
/// be accepted: a request is fresh for [`MAX_CLOCK_SKEW`] either side of
/// its time, so for at most twice that after it was first accepted.
#[derive(Default)]
struct Seen {
    ids: HashSet<u128>,
    /// When each id was accepted (ms since the Unix epoch), oldest first.
    order: VecDeque<(u64, u128)>,
}

impl Seen {
    /// Records `id`, accepted at `now`. False when it was seen already (a
    /// replay), or when too many ids are remembered.
    fn first(&mut self, id: u128, now: u64) -> bool {
        let keep = 2 * MAX_CLOCK_SKEW.as_millis() as u64;
        while let Some(&(at, old)) = self.order.front() {
            if now.saturating_sub(at) <= keep {
                break;
            }
            self.order.pop_front();
            self.ids.remove(&old);
        }
        if self.ids.len() >= MAX_SEEN || !self.ids.insert(id) {
            return false;
        }
        self.order.push_back((now, id));
        true
    }
}

impl Counters {
    /// Counts an envelope that was not sent or not accepted.
    fn reject(&self, why: Rejected) {
        let counter = match why {
            Rejected::Oversized => &self.envelopes_oversized,
            Rejected::UnknownVersion => &self.envelopes_unknown_version,
            Rejected::Malformed => &self.envelopes_malformed,
            Rejected::Unverified => &self.envelopes_unverified,
            Rejected::Stale => &self.envelopes_stale,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

#[async_trait::async_trait]
impl NodeRequests for RedisLayer {
    fn serve_requests(&self, node: &str, handler: RequestHandler) {
        if self.requests.node.set(node.to_owned()).is_err() {
            tracing::warn!(node, "redis layer already serves requests for another node");
            return;
        }
        let _ = self.requests.handler.set(handler);
        for group in [group::node_requests(node), group::node_replies(node)] {
            self.shared.wish(&group, true);
        }
    }

    async fn request(&self, node: &str, body: Bytes) -> Result<Option<Bytes>, LayerError> {
        let Some(me) = self.requests.node.get() else { return Ok(None) };
        if body.len() > MAX_NODE_REQUEST {
            self.stats.reject(Rejected::Oversized);
            tracing::warn!(node, bytes = body.len(), "request to another process not sent: too large");
            return Err(LayerError::unavailable(format!(
                "request too large to forward ({} bytes, at most {MAX_NODE_REQUEST})",
                body.len()
            )));
        }
        // The reply comes on our own group: it must be live before we ask.
        self.ready(&group::node_replies(me)).await?;
        let channel = format!("{}{}", self.options.prefix, group::node_requests(node));
        let mut connection = self.publisher.clone();
        // Channel subscribers only: a PSUBSCRIBE monitor would make PUBLISH's
        // receiver count lie about whether the node exists.
        let mut numsub = redis::cmd("PUBSUB");
        numsub.arg("NUMSUB").arg(&channel);
        let listeners =
            tokio::time::timeout(self.options.publish_timeout, numsub.query_async::<(String, i64)>(&mut connection));
        match listeners.await {
            Ok(Ok((_, 0))) => return Ok(None),
            Ok(Ok(_)) => {}
            Ok(Err(error)) => return Err(unavailable("Redis PUBSUB failed", error)),
            Err(_) => return Err(LayerError::unavailable("Redis PUBSUB timed out")),
        }
        let id = envelope::random_id();
        let sent_at = envelope::now_ms();
        let payload = envelope::encode(&channel, Kind::Request, id, me, sent_at, &body, self.requests.key.as_ref())
            .map_err(|why| LayerError::unavailable(format!("request not sent: {}", why.as_str())))?;
        let (reply, replied) = oneshot::channel();
        lock(&self.requests.pending).insert(id, Waiting { node: node.to_owned(), reply });
        let forget = || lock(&self.requests.pending).remove(&id);
        let mut publish = redis::cmd("PUBLISH");
        publish.arg(channel).arg(payload);
        let publish = publish.exec_async(&mut connection);
        match tokio::time::timeout(self.options.publish_timeout, publish).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                forget();
                return Err(unavailable("Redis publish failed", error));
            }
            Err(_) => {
                forget();
                return Err(LayerError::unavailable("Redis publish timed out"));
            }
        }
        match tokio::time::timeout(self.options.request_timeout, replied).await {
            Ok(Ok(reply)) => Ok(Some(reply)),
            _ => {
                forget();
                Err(LayerError::unavailable(format!("process {node} did not answer in time")))
            }
        }
    }
}

impl Subscriber {
    /// A message on a node group (`channel` is its Redis channel): a
    /// request from another process, answered in a task of its own, or a
    /// reply to one of ours. Anything that fails a check is dropped.
    pub(super) fn control(&self, channel: &str, group: &str, payload: &[u8]) {
        let Some(me) = self.requests.node.get() else { return };
        let key = self.requests.key.as_ref();
        let now = envelope::now_ms();
        if group == group::node_replies(me) {
            let reply = match envelope::decode(channel, Kind::Reply, payload, key, now) {
                Ok(reply) => reply,
                Err(why) => return self.drop_envelope(group, why),
            };
            let waiting = {
                let mut pending = lock(&self.requests.pending);
                match pending.get(&reply.id) {
                    Some(waiting) if waiting.node == reply.node => pending.remove(&reply.id),
                    // An id nobody waits for any more (timed out), or an
                    // answer from a process that was not asked.
                    _ => None,
                }
            };
            if let Some(waiting) = waiting {
                let _ = waiting.reply.send(Bytes::copy_from_slice(reply.body));
            }
        } else if group == group::node_requests(me) {
            let request = match envelope::decode(channel, Kind::Request, payload, key, now) {
                Ok(request) => request,
                Err(why) => return self.drop_envelope(group, why),
            };
            if key.is_some() && !lock(&self.requests.seen).first(request.id, now) {
                return self.drop_envelope(group, Rejected::Stale);
            }
            let Some(handler) = self.requests.handler.get() else { return };
            let reply_to = format!("{}{}", self.options.prefix, group::node_replies(request.node));
            let answer = handler(Bytes::copy_from_slice(request.body));
            let (id, me, key) = (request.id, me.clone(), self.requests.key.clone());
            let (stats, mut connection) = (self.stats.clone(), self.publisher.clone());
            tokio::spawn(async move {
                let answer = answer.await;
                let sent_at = envelope::now_ms();
                let payload = match envelope::encode(&reply_to, Kind::Reply, id, &me, sent_at, &answer, key.as_ref()) {
                    Ok(payload) => payload,
                    Err(why) => {
                        stats.reject(why);
                        tracing::warn!(
                            bytes = answer.len(),
                            reason = why.as_str(),
                            "reply to another process not sent"
                        );
                        return;
                    }
                };
                if let Err(error) = redis::cmd("PUBLISH").arg(reply_to).arg(payload).exec_async(&mut connection).await {
                    tracing::warn!(%error, "reply to another process not sent");
                }
            });
        }
    }

    fn drop_envelope(&self, group: &str, why: Rejected) {
        self.stats.reject(why);
        tracing::warn!(group, reason = why.as_str(), "node request or reply dropped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_id_is_accepted_once_while_fresh() {
        let mut seen = Seen::default();
        let now = 1_800_000_000_000;
        assert!(seen.first(1, now));
        assert!(!seen.first(1, now + 1), "a replay is refused");
        assert!(seen.first(2, now + 1));
        // Forgotten once no signature of its time could still be accepted.
        let later = now + 2 * MAX_CLOCK_SKEW.as_millis() as u64 + 1;
        assert!(seen.first(3, later));
        assert_eq!(seen.ids.len(), 2, "id 1 forgotten, 2 (accepted 1 ms later) kept");
        assert!(seen.first(1, later));
    }

    #[test]
    fn the_memory_of_ids_is_bounded() {
        let mut seen = Seen::default();
        for id in 0..MAX_SEEN as u128 {
            assert!(seen.first(id, 0));
        }
        assert!(!seen.first(u128::MAX, 1), "full: refused rather than grown");
        assert_eq!(seen.ids.len(), MAX_SEEN);
    }
}
