//! The envelope of a node request or reply on Redis: versioned, bounded,
//! and signed when the deployment has a [`SigningKey`].
//!
//! One header line, then the body:
//!
//! ```text
//! graphex/1 <kind> <id> <node> <sent at> <signature>\n<body>
//! ```
//!
//! - `graphex/1`: the envelope version. Anything else (another version, or
//!   the unversioned framing of earlier releases) is counted and dropped,
//!   never executed: a later release can change everything after it.
//! - `<kind>`: `request` or `reply`.
//! - `<id>`: the request id, 128 random bits as 32 lowercase hex digits
//!   (a reply repeats the id of its request).
//! - `<node>`: the sender's node id (a request's reply goes to its
//!   `~reply:` group); 1 to 64 ASCII letters and digits.
//! - `<sent at>`: milliseconds since the Unix epoch, on the sender's clock.
//! - `<signature>`: `-`, or with a key the HMAC-SHA256 (64 hex digits) of
//!   the Redis channel the envelope is published on, a newline, the header
//!   up to the signature (without its trailing space), a newline and the
//!   body. The channel is signed so an envelope cannot be replayed to
//!   another process or another prefix; the time and the id so it cannot
//!   be replayed later (see [`MAX_CLOCK_SKEW`] and the receiver's memory
//!   of recent ids).
//!
//! Sizes: a request body is at most [`MAX_NODE_REQUEST`], a reply body at
//! most [`MAX_NODE_REPLY`], the header at most [`MAX_HEADER`] bytes.

use std::sync::Arc;
use std::time::Duration;

use hmac::{KeyInit, Mac};

use crate::layer::{MAX_NODE_REPLY, MAX_NODE_REQUEST};

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// The envelope version this release writes and reads.
pub(super) const VERSION: u32 = 1;

/// What every envelope starts with, before its version number.
const MAGIC: &str = "graphex/";

/// Longest header line (it is about 150 bytes).
pub(super) const MAX_HEADER: usize = 256;

/// With a signing key, how far an envelope's time may be from the
/// receiver's clock: 30 s. Older (or later) envelopes are dropped, and the
/// receiver remembers the ids it accepted for twice as long, so a signed
/// request cannot be executed twice.
pub(super) const MAX_CLOCK_SKEW: Duration = Duration::from_secs(30);

/// Longest node id an envelope may name.
const MAX_NODE_LEN: usize = 64;

/// The shared secret that signs the envelopes processes send each other
/// through Redis (HMAC-SHA256), for deployments whose Redis is shared with
/// clients less trusted than the servers: a process drops every node request
/// or reply that is unsigned, badly signed, or older than 30 s (see the
/// README's "Redis trust model"). Every process of the deployment needs
/// the same key; use at least 32 random bytes. `Debug` does not show it.
#[derive(Clone)]
pub struct SigningKey(Arc<[u8]>);

impl SigningKey {
    /// A key made of these bytes.
    pub fn new(bytes: impl AsRef<[u8]>) -> SigningKey {
        SigningKey(Arc::from(bytes.as_ref()))
    }

    /// Whether the key has no bytes (refused by [`super::RedisLayer::connect_with`]).
    pub(super) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn mac(&self) -> HmacSha256 {
        HmacSha256::new_from_slice(&self.0).expect("HMAC takes keys of any length")
    }
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey(<redacted>)")
    }
}

impl From<&str> for SigningKey {
    fn from(key: &str) -> SigningKey {
        SigningKey::new(key)
    }
}

impl From<String> for SigningKey {
    fn from(key: String) -> SigningKey {
        SigningKey::new(key)
    }
}

impl From<&[u8]> for SigningKey {
    fn from(key: &[u8]) -> SigningKey {
        SigningKey::new(key)
    }
}

impl From<Vec<u8>> for SigningKey {
    fn from(key: Vec<u8>) -> SigningKey {
        SigningKey::new(key)
    }
}

/// A request to another process, or the reply to one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    Request,
    Reply,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Request => "request",
            Kind::Reply => "reply",
        }
    }

    /// The largest body of this kind.
    pub(super) fn limit(self) -> usize {
        match self {
            Kind::Request => MAX_NODE_REQUEST,
            Kind::Reply => MAX_NODE_REPLY,
        }
    }
}

/// A decoded envelope, borrowing its body from the message.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Envelope<'a> {
    pub(super) id: u128,
    /// The sender's node id.
    pub(super) node: &'a str,
    /// When it was sent (sender's clock, ms since the Unix epoch).
    pub(super) sent_at: u64,
    pub(super) body: &'a [u8],
}

/// Why an envelope was not sent or not accepted. Each is counted in
/// [`super::RedisStats`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Rejected {
    /// Longer than its kind allows.
    Oversized,
    /// Not `graphex/1` (another version, or no version at all).
    UnknownVersion,
    /// A `graphex/1` header that does not parse, or of the wrong kind.
    Malformed,
    /// With a key: unsigned, or the signature does not match.
    Unverified,
    /// With a key: its time is too far from ours, or its id was seen already.
    Stale,
}

impl Rejected {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Rejected::Oversized => "oversized",
            Rejected::UnknownVersion => "unknown version",
            Rejected::Malformed => "malformed",
            Rejected::Unverified => "unsigned or badly signed",
            Rejected::Stale => "stale or replayed",
        }
    }
}

/// Milliseconds since the Unix epoch, now.
pub(super) fn now_ms() -> u64 {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
}

/// 128 bits from the OS random source: a request id nobody can guess.
pub(super) fn random_id() -> u128 {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).expect("the OS random source is available");
    u128::from_le_bytes(bytes)
}

/// The envelope of `body`, sent by `node` on the Redis `channel`; signed
/// when `key` is set. Refused when `body` is longer than `kind` allows or
/// `node` is not a valid node id.
pub(super) fn encode(
    channel: &str,
    kind: Kind,
    id: u128,
    node: &str,
    sent_at: u64,
    body: &[u8],
    key: Option<&SigningKey>,
) -> Result<Vec<u8>, Rejected> {
    if body.len() > kind.limit() {
        return Err(Rejected::Oversized);
    }
    if !valid_node(node) {
        return Err(Rejected::Malformed);
    }
    let header = format!("{MAGIC}{VERSION} {} {id:032x} {node} {sent_at}", kind.as_str());
    let signature = match key {
        Some(key) => hex(&sign(key, channel, &header, body)),
        None => "-".to_owned(),
    };
    let mut envelope = Vec::with_capacity(header.len() + signature.len() + 2 + body.len());
    envelope.extend_from_slice(header.as_bytes());
    envelope.push(b' ');
    envelope.extend_from_slice(signature.as_bytes());
    envelope.push(b'\n');
    envelope.extend_from_slice(body);
    Ok(envelope)
}

/// The envelope of `kind` received on the Redis `channel`. With `key`, its
/// signature and time (against `now`, ms since the Unix epoch) are checked;
/// the replay of an id is the caller's to check.
pub(super) fn decode<'a>(
    channel: &str,
    kind: Kind,
    payload: &'a [u8],
    key: Option<&SigningKey>,
    now: u64,
) -> Result<Envelope<'a>, Rejected> {
    if payload.len() > MAX_HEADER + kind.limit() {
        return Err(Rejected::Oversized);
    }
    let end = payload.iter().take(MAX_HEADER + 1).position(|byte| *byte == b'\n');
    let header = end.and_then(|end| std::str::from_utf8(&payload[..end]).ok());
    // The version comes first, whatever follows it in other versions.
    let version = header
        .unwrap_or_else(|| std::str::from_utf8(&payload[..payload.len().min(MAX_HEADER)]).unwrap_or_default())
        .split(' ')
        .next()
        .and_then(|first| first.strip_prefix(MAGIC));
    if version != Some("1") {
        return Err(Rejected::UnknownVersion);
    }
    let (Some(header), Some(end)) = (header, end) else { return Err(Rejected::Malformed) };
    let body = &payload[end + 1..];
    if body.len() > kind.limit() {
        return Err(Rejected::Oversized);
    }
    let fields: Vec<&str> = header.split(' ').collect();
    let [_, found, id, node, sent_at, signature] = fields[..] else { return Err(Rejected::Malformed) };
    let id = (id.len() == 32 && id.bytes().all(|byte| matches!(byte, b'0'..=b'9' | b'a'..=b'f')))
        .then(|| u128::from_str_radix(id, 16).ok())
        .flatten();
    let sent_at = sent_at.parse::<u64>().ok();
    let (Some(id), Some(sent_at)) = (id, sent_at) else { return Err(Rejected::Malformed) };
    if found != kind.as_str() || !valid_node(node) {
        return Err(Rejected::Malformed);
    }
    if let Some(key) = key {
        let signed = &header[..header.len() - signature.len() - 1];
        let mut mac = key.mac();
        feed(&mut mac, channel, signed, body);
        let tag = unhex(signature).ok_or(Rejected::Unverified)?;
        // Constant time: `verify_slice` compares without an early exit.
        mac.verify_slice(&tag).map_err(|_| Rejected::Unverified)?;
        if now.abs_diff(sent_at) > MAX_CLOCK_SKEW.as_millis() as u64 {
            return Err(Rejected::Stale);
        }
    }
    Ok(Envelope { id, node, sent_at, body })
}

fn valid_node(node: &str) -> bool {
    !node.is_empty() && node.len() <= MAX_NODE_LEN && node.bytes().all(|byte| byte.is_ascii_alphanumeric())
}

fn sign(key: &SigningKey, channel: &str, header: &str, body: &[u8]) -> Vec<u8> {
    let mut mac = key.mac();
    feed(&mut mac, channel, header, body);
    mac.finalize().into_bytes().to_vec()
}

fn feed(mac: &mut HmacSha256, channel: &str, header: &str, body: &[u8]) {
    mac.update(channel.as_bytes());
    mac.update(b"\n");
    mac.update(header.as_bytes());
    mac.update(b"\n");
    mac.update(body);
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if text.len() != 64 {
        return None;
    }
    (0..text.len()).step_by(2).map(|at| u8::from_str_radix(text.get(at..at + 2)?, 16).ok()).collect()
}

#[cfg(test)]
mod tests;
