//! Positions, history and the outbox of the Redis layer (issue 16).
//!
//! Each stream has two keys in Redis: `<prefix>~meta:<stream>`, a hash with
//! the stream's `epoch` (16 hex digits, kept as a string: Lua numbers are
//! doubles) and its last `offset`, and `<prefix>~hist:<stream>`, a Redis
//! stream of the last [`RedisOptions::history`](super::RedisOptions::history)
//! changes, entry id `<offset>-1`, fields `g` (the groups, joined by `\n`) and
//! `m` (the message). One script ([`PUBLISH`]) numbers a change, keeps it and
//! publishes it to each of its groups, so every process agrees on offsets and
//! the history holds exactly what was published.
//!
//! A published change carries its position in a header before the message:
//! `\x1eP1 <epoch as 16 hex digits> <offset> <token as 16 hex digits>\n`
//! (ASCII record separator, `P1`, then space-separated the epoch, the
//! decimal offset and the change's token, a newline). The token, also kept
//! in the change's history entry, lets a process check after a reconnection
//! that the offset it saw last still names the same change (a Redis restored
//! from an older snapshot gives offsets again, to other changes). A
//! change message is JSON and never starts with `\x1e`, so a message
//! without the header (a custom group's, or a change published by a release
//! before positions) is told apart and delivered without a position.

use std::collections::{HashMap, VecDeque};
use std::sync::LazyLock;

use bytes::Bytes;

use crate::layer::{Kept, Position};

/// The first bytes of a positioned change.
pub(super) const MAGIC: &[u8] = b"\x1eP1 ";

/// The header of a change at `position` (the publish script writes the
/// same bytes; this is for tests and documentation).
#[cfg(test)]
pub(super) fn header(position: Position, token: u64) -> Vec<u8> {
    format!("\x1eP1 {:016x} {} {token:016x}\n", position.epoch, position.offset).into_bytes()
}

/// The position, the token and the message of a published payload; `None`
/// when it has no (valid) header.
pub(super) fn parse(payload: &[u8]) -> Option<(Position, u64, &[u8])> {
    let rest = payload.strip_prefix(MAGIC)?;
    let (epoch, rest) = rest.split_at_checked(16)?;
    let rest = rest.strip_prefix(b" ")?;
    let space = rest.iter().take(21).position(|&byte| byte == b' ')?;
    let (offset, rest) = (&rest[..space], &rest[space + 1..]);
    let (token, rest) = rest.split_at_checked(16)?;
    let body = rest.strip_prefix(b"\n")?;
    Some((Position { epoch: parse_epoch(epoch)?, offset: parse_offset(offset)? }, parse_epoch(token)?, body))
}

/// An epoch as the scripts keep it: exactly 16 hex digits.
pub(super) fn parse_epoch(text: &[u8]) -> Option<u64> {
    if text.len() != 16 || !text.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    u64::from_str_radix(std::str::from_utf8(text).ok()?, 16).ok()
}

fn parse_offset(text: &[u8]) -> Option<u64> {
    if text.is_empty() || text.len() > 20 || !text.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(text).ok()?.parse().ok()
}

/// An epoch as the scripts keep it.
pub(super) fn epoch_text(epoch: u64) -> String {
    format!("{epoch:016x}")
}

/// Numbers, keeps and publishes one change.
///
/// KEYS: meta, history. ARGV: message, history length N, epoch candidate,
/// "1" when a new epoch is required (an outbox overflowed), the channel
/// prefix, the change's token (unique per change, kept in its history
/// entry as `t`), "1" when this is a retry of an attempt whose outcome is
/// unknown (a timeout, a connection lost after sending), the captured
/// change's log position as [`crate::layer::LogPosition::text`] or empty,
/// then the groups. A captured change at or before the stream's last one
/// (`captured` in the meta) is not published again.
/// A stream without an epoch (its first change, or Redis lost its data) or
/// with the flag starts the candidate epoch, offsets from 1, history
/// emptied. A retry whose token is in the history already ran: it is not
/// published again. Returns `{epoch, offset}`.
pub(super) static PUBLISH: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
local epoch = redis.call('HGET', KEYS[1], 'epoch')
local n = tonumber(ARGV[2])
if epoch and ARGV[4] ~= '1' and ARGV[7] == '1' and n > 0 then
  for _, entry in ipairs(redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', n)) do
    local fields = entry[2]
    for i = 1, #fields, 2 do
      if fields[i] == 't' and fields[i + 1] == ARGV[6] then
        return {epoch, string.match(entry[1], '^(%d+)')}
      end
    end
  end
end
if epoch and ARGV[8] ~= '' and ARGV[4] ~= '1' then
  local captured = redis.call('HGET', KEYS[1], 'captured')
  if captured and ARGV[8] <= captured then
    return {epoch, tostring(redis.call('HGET', KEYS[1], 'offset') or '0')}
  end
end
if (not epoch) or ARGV[4] == '1' then
  epoch = ARGV[3]
  redis.call('DEL', KEYS[1], KEYS[2])
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'offset', 0)
end
local offset = redis.call('HINCRBY', KEYS[1], 'offset', 1)
local text = string.format('%d', offset)
local groups = {}
for i = 9, #ARGV do groups[#groups + 1] = ARGV[i] end
if ARGV[8] ~= '' then redis.call('HSET', KEYS[1], 'captured', ARGV[8]) end
if n > 0 then
  redis.call('XADD', KEYS[2], 'MAXLEN', n, text .. '-1', 'g', table.concat(groups, '\n'), 'm', ARGV[1], 't', ARGV[6])
end
local framed = '\30P1 ' .. epoch .. ' ' .. text .. ' ' .. ARGV[6] .. '\n' .. ARGV[1]
for i = 9, #ARGV do redis.call('PUBLISH', ARGV[5] .. ARGV[i], framed) end
return {epoch, text}
",
    )
});

/// Reads a stream's epoch, head and the history from an entry id on.
///
/// KEYS: meta, history. ARGV: the first entry id wanted (`<offset>-1`), or
/// `-` for none. Returns `{}` when the stream has no epoch, else
/// `{epoch, head, entries}` (entries as XRANGE gives them).
pub(super) static READ: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
local meta = redis.call('HMGET', KEYS[1], 'epoch', 'offset')
if not meta[1] then return {} end
local head = meta[2] or '0'
local entries = {}
if ARGV[1] ~= '-' then entries = redis.call('XRANGE', KEYS[2], ARGV[1], '+') end
return {meta[1], head, entries}
",
    )
});

/// Moves a stream to a new epoch, only if it is still in the expected one
/// (another process may have moved it already).
///
/// KEYS: meta, history. ARGV: the expected epoch, the candidate. Returns
/// `{epoch, head}` as they are afterwards (`{}` when the stream has no
/// epoch: its next change starts one).
pub(super) static MOVE: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
local meta = redis.call('HMGET', KEYS[1], 'epoch', 'offset')
if not meta[1] then return {} end
if meta[1] ~= ARGV[1] then return {meta[1], meta[2] or '0'} end
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('HSET', KEYS[1], 'epoch', ARGV[2], 'offset', 0)
return {ARGV[2], '0'}
",
    )
});

/// Moves a stream to a new epoch unconditionally (changes of it were
/// dropped). KEYS: meta, history. ARGV: the new epoch.
pub(super) static RENEW: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('HSET', KEYS[1], 'epoch', ARGV[1], 'offset', 0)
return 1
",
    )
});

/// What [`READ`] found.
#[derive(Debug)]
pub(super) struct Read {
    /// The stream's epoch and head.
    pub(super) head: Position,
    /// The history entries asked for, in order.
    pub(super) kept: Vec<Kept>,
    /// Each entry's token (0 when it has none), in the same order.
    pub(super) tokens: Vec<u64>,
}

/// Decodes [`READ`]'s (or [`MOVE`]'s) answer; `Ok(None)` when the stream
/// has no epoch.
pub(super) fn decode_read(value: redis::Value) -> redis::RedisResult<Option<Read>> {
    let items = match value {
        redis::Value::Array(items) => items,
        redis::Value::Nil => return Ok(None),
        other => return Err(malformed(format!("unexpected answer {other:?}"))),
    };
    let mut items = items.into_iter();
    let Some(epoch) = items.next() else { return Ok(None) };
    let epoch = parse_epoch(&bytes_of(epoch)?).ok_or_else(|| malformed("epoch".into()))?;
    let head = items.next().map(bytes_of).transpose()?.unwrap_or_default();
    let head = parse_offset(&head).ok_or_else(|| malformed("head offset".into()))?;
    let (mut kept, mut tokens) = (Vec::new(), Vec::new());
    if let Some(redis::Value::Array(entries)) = items.next() {
        for entry in entries {
            let (entry, token) = decode_entry(entry)?;
            kept.push(entry);
            tokens.push(token);
        }
    }
    Ok(Some(Read { head: Position { epoch, offset: head }, kept, tokens }))
}

fn decode_entry(entry: redis::Value) -> redis::RedisResult<(Kept, u64)> {
    let redis::Value::Array(parts) = entry else { return Err(malformed("history entry".into())) };
    let mut parts = parts.into_iter();
    let id = bytes_of(parts.next().ok_or_else(|| malformed("entry id".into()))?)?;
    let offset = id.split(|&byte| byte == b'-').next().and_then(parse_offset);
    let offset = offset.ok_or_else(|| malformed("entry id".into()))?;
    let Some(redis::Value::Array(fields)) = parts.next() else { return Err(malformed("entry fields".into())) };
    let (mut groups, mut message, mut token) = (Vec::new(), Bytes::new(), 0);
    let mut fields = fields.into_iter();
    while let (Some(name), Some(value)) = (fields.next(), fields.next()) {
        match bytes_of(name)?.as_slice() {
            b"g" => {
                let joined = String::from_utf8(bytes_of(value)?).map_err(|_| malformed("groups".into()))?;
                groups = joined.split('\n').filter(|group| !group.is_empty()).map(str::to_owned).collect();
            }
            b"m" => message = Bytes::from(bytes_of(value)?),
            b"t" => token = parse_epoch(&bytes_of(value)?).unwrap_or(0),
            _ => {}
        }
    }
    Ok((Kept { offset, groups, message }, token))
}

fn bytes_of(value: redis::Value) -> redis::RedisResult<Vec<u8>> {
    match value {
        redis::Value::BulkString(bytes) => Ok(bytes),
        redis::Value::SimpleString(text) => Ok(text.into_bytes()),
        redis::Value::Int(number) => Ok(number.to_string().into_bytes()),
        other => Err(malformed(format!("expected a string, got {other:?}"))),
    }
}

fn malformed(what: String) -> redis::RedisError {
    redis::RedisError::from((redis::ErrorKind::Parse, "unexpected answer from a graphex script", what))
}

/// The history entry id of `offset` (the first one a read wants).
pub(super) fn entry_id(offset: u64) -> String {
    format!("{offset}-1")
}

/// What the subscriber knows of one stream: the epoch and offset of the
/// last change it delivered, and up to where a repair delivered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Seen {
    /// The stream's epoch; 0 while the stream had no epoch in Redis when
    /// this process looked (nothing published yet).
    pub(super) epoch: u64,
    /// The last offset delivered (or known to be behind this process).
    pub(super) last: u64,
    /// Offsets up to this one were delivered by a repair: live copies are duplicates.
    pub(super) floor: u64,
    /// The token of the change at `last` (0: unknown): after a
    /// reconnection, the history entry at `last` must still carry it.
    pub(super) token: u64,
}

/// What the subscriber does with a live change at `position`.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Live {
    /// Deliver it.
    Deliver,
    /// The stream changed epoch since the last change seen: declare it
    /// lost, then deliver this one.
    LostThenDeliver,
    /// Delivered already (by a repair): drop it.
    Duplicate,
}

impl Seen {
    /// The rule for a live change; updates what is known.
    pub(super) fn live(seen: &mut Option<Seen>, position: Position, token: u64) -> Live {
        let adopt = Seen { epoch: position.epoch, last: position.offset, floor: 0, token };
        let Some(known) = seen else {
            *seen = Some(adopt);
            return Live::Deliver;
        };
        if known.epoch != position.epoch {
            let lost = known.epoch != 0;
            *known = adopt;
            return if lost { Live::LostThenDeliver } else { Live::Deliver };
        }
        if position.offset <= known.floor {
            return Live::Duplicate;
        }
        // Two groups of one change share its offset: both are delivered.
        if position.offset > known.last {
            known.last = position.offset;
            known.token = token;
        }
        Live::Deliver
    }
}

/// A change waiting for Redis.
#[derive(Clone, Debug)]
pub(super) struct Pending {
    pub(super) stream: String,
    pub(super) groups: Vec<String>,
    pub(super) message: Bytes,
    /// How many changes of its stream had been dropped when it was queued:
    /// it starts a new epoch unless one was started since those drops.
    pub(super) after_drops: u64,
    /// Tells a retry from a new change ([`PUBLISH`]).
    pub(super) token: String,
    /// An attempt may have run: the retry checks the token first.
    pub(super) tried: bool,
    /// A captured change's log position ([`crate::layer::LogPosition::text`]).
    pub(super) source: Option<String>,
}

/// Changes that could not reach Redis, in order, bounded.
#[derive(Debug, Default)]
pub(super) struct Outbox {
    pub(super) queue: VecDeque<Pending>,
    /// Streams that dropped changes: (changes dropped, drops covered by the
    /// last new epoch). A stream whose drops are not all covered must move
    /// to a new epoch before (or with) its next change.
    pub(super) drops: HashMap<String, (u64, u64)>,
    /// The groups of each stream's dropped changes, told of the new epoch
    /// once it covers them (at most [`NOTIFIED_GROUPS`] per stream).
    pub(super) notify: HashMap<String, std::collections::BTreeSet<String>>,
}

/// Groups of dropped changes kept per stream for the new epoch's notice;
/// the subscribers of further ones learn of the new epoch with the next
/// change of their group.
pub(super) const NOTIFIED_GROUPS: usize = 10_000;

/// The notice of a new epoch, published to the groups of dropped changes:
/// a header at offset 0 with token 0 and no message.
pub(super) fn notice(epoch: u64) -> Vec<u8> {
    format!("\x1eP1 {epoch:016x} 0 {:016x}\n", 0).into_bytes()
}

impl Outbox {
    /// Changes of `stream` dropped so far (0 when all are covered by a new epoch).
    pub(super) fn drops(&self, stream: &str) -> u64 {
        self.drops.get(stream).map_or(0, |&(dropped, _)| dropped)
    }

    /// Whether `stream` dropped changes that no new epoch covers yet.
    pub(super) fn uncovered(&self, stream: &str) -> bool {
        self.drops.get(stream).is_some_and(|&(dropped, covered)| dropped > covered)
    }

    /// Whether a queued change must start a new epoch when it is published.
    pub(super) fn needs_new_epoch(&self, pending: &Pending) -> bool {
        self.drops.get(&pending.stream).is_some_and(|&(_, covered)| pending.after_drops > covered)
    }

    /// A new epoch of `stream` started that covers `drops` drops; returns
    /// the groups of the dropped changes to tell, once all are covered.
    pub(super) fn covered(&mut self, stream: &str, drops: u64) -> Vec<String> {
        if let Some((dropped, covered)) = self.drops.get_mut(stream) {
            *covered = (*covered).max(drops);
            if *covered >= *dropped {
                self.drops.remove(stream);
                return self.notify.remove(stream).map(|groups| groups.into_iter().collect()).unwrap_or_default();
            }
        }
        Vec::new()
    }

    /// A change of `stream` on `groups` was dropped.
    pub(super) fn dropped_on(&mut self, stream: &str, groups: &[String]) {
        let notify = self.notify.entry(stream.to_owned()).or_default();
        for group in groups {
            if notify.len() < NOTIFIED_GROUPS {
                notify.insert(group.clone());
            }
        }
        self.dropped(stream);
    }

    /// A change of `stream` was dropped.
    pub(super) fn dropped(&mut self, stream: &str) {
        self.drops.entry(stream.to_owned()).or_default().0 += 1;
    }

    /// Streams with drops no new epoch covers yet, and how many.
    pub(super) fn to_renew(&self) -> Vec<(String, u64)> {
        self.drops
            .iter()
            .filter(|(_, (dropped, covered))| dropped > covered)
            .map(|(stream, &(dropped, _))| (stream.clone(), dropped))
            .collect()
    }

    /// Queues a change; `false` (and the drop counted) when the outbox is
    /// full and the change was dropped.
    pub(super) fn push(&mut self, pending: Pending, bound: usize) -> bool {
        if self.queue.len() >= bound {
            self.dropped_on(&pending.stream, &pending.groups);
            return false;
        }
        self.queue.push_back(pending);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip_and_plain_messages_have_none() {
        let position = Position { epoch: 0x0123_4567_89ab_cdef, offset: 42 };
        let mut payload = header(position, 0xfeed);
        assert_eq!(payload, b"\x1eP1 0123456789abcdef 42 000000000000feed\n");
        payload.extend_from_slice(br#"{"v":2}"#);
        assert_eq!(parse(&payload), Some((position, 0xfeed, &br#"{"v":2}"#[..])));
        let max = Position { epoch: u64::MAX, offset: u64::MAX };
        let payload = header(max, u64::MAX);
        assert_eq!(parse(&payload), Some((max, u64::MAX, &b""[..])));
        // Messages without a header: JSON change messages, custom payloads.
        assert_eq!(parse(br#"{"stream":"users"}"#), None);
        assert_eq!(parse(b""), None);
        // Damaged headers are not positions.
        let token = "000000000000feed";
        for damaged in [
            format!("\x1eP1 0123 42 {token}\n{{}}"),
            format!("\x1eP1 0123456789abcdeg 42 {token}\n{{}}"),
            format!("\x1eP1 0123456789abcdef x {token}\n{{}}"),
            format!("\x1eP1 0123456789abcdef 42 {token}"),
            "\x1eP1 0123456789abcdef 42\n{}".to_owned(),
            "\x1eP1 0123456789abcdef 42 feed\n{}".to_owned(),
            format!("\x1eP2 0123456789abcdef 42 {token}\n{{}}"),
        ] {
            assert_eq!(parse(damaged.as_bytes()), None, "{damaged:?}");
        }
    }

    #[test]
    fn live_changes_follow_the_continuity_rule() {
        let at = |epoch, offset| Position { epoch, offset };
        let mut seen = None;
        assert_eq!(Seen::live(&mut seen, at(7, 3), 30), Live::Deliver, "first seen: adopted");
        assert_eq!(Seen::live(&mut seen, at(7, 3), 30), Live::Deliver, "another group of the same change");
        assert_eq!(Seen::live(&mut seen, at(7, 4), 40), Live::Deliver);
        assert_eq!((seen.unwrap().last, seen.unwrap().token), (4, 40));
        assert_eq!(Seen::live(&mut seen, at(9, 1), 10), Live::LostThenDeliver, "a new epoch");
        assert_eq!(seen, Some(Seen { epoch: 9, last: 1, floor: 0, token: 10 }));
        // After a repair up to 5, live copies up to 5 are duplicates.
        seen = Some(Seen { epoch: 9, last: 5, floor: 5, token: 50 });
        assert_eq!(Seen::live(&mut seen, at(9, 4), 40), Live::Duplicate);
        assert_eq!(Seen::live(&mut seen, at(9, 5), 50), Live::Duplicate);
        assert_eq!(Seen::live(&mut seen, at(9, 6), 60), Live::Deliver);
        assert_eq!(seen.unwrap().token, 60);
        // Nothing had been published when this process looked: any epoch is adopted.
        let mut empty = Some(Seen { epoch: 0, last: 0, floor: 0, token: 0 });
        assert_eq!(Seen::live(&mut empty, at(3, 1), 10), Live::Deliver);
    }

    #[test]
    fn a_full_outbox_drops_and_a_new_epoch_covers_the_drops() {
        let mut outbox = Outbox::default();
        let pending = |outbox: &Outbox| Pending {
            stream: "users".into(),
            groups: vec!["users-create".into()],
            message: Bytes::new(),
            after_drops: outbox.drops("users"),
            token: "t".into(),
            tried: false,
            source: None,
        };
        let before = pending(&outbox);
        assert!(outbox.push(before, 1));
        assert!(!outbox.push(pending(&outbox), 1), "full: dropped");
        assert!(outbox.uncovered("users"));
        let first = outbox.queue.pop_front().unwrap();
        assert!(!outbox.needs_new_epoch(&first), "queued before the drop: the old epoch");
        let after = pending(&outbox);
        assert!(outbox.push(after.clone(), 1));
        assert!(!outbox.push(pending(&outbox), 1), "a second drop");
        let later = Pending { after_drops: outbox.drops("users"), ..after.clone() };
        assert!(outbox.needs_new_epoch(&after));
        outbox.covered("users", after.after_drops);
        assert!(outbox.needs_new_epoch(&later), "the second drop is not covered by the first new epoch");
        outbox.covered("users", later.after_drops);
        assert!(!outbox.uncovered("users"));
        assert!(outbox.drops.is_empty());
    }
}
