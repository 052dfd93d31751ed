//! The messages of PostgreSQL's built-in logical decoding plugin,
//! `pgoutput`, protocol version 1 (what a replication connection started
//! with `proto_version '1'` sends inside each `XLogData`), decoded from
//! their bytes. Input from the database is not trusted blindly: a
//! truncated or malformed message is an error, never a panic.
//!
//! Reference: PostgreSQL's "Logical Replication Message Formats".

/// A decoded pgoutput message.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Message {
    /// A transaction begins; its changes follow, then [`Message::Commit`].
    Begin {
        /// The LSN of the transaction's commit record.
        final_lsn: u64,
        /// Its transaction id.
        xid: u32,
    },
    /// The transaction committed.
    Commit {
        /// The LSN of the commit record.
        commit_lsn: u64,
        /// The end of the commit record: the position to confirm once the
        /// transaction's changes are published.
        end_lsn: u64,
    },
    /// A table's description, sent before its first change on this
    /// connection (and again when it changed).
    Relation(Relation),
    /// A row was inserted.
    Insert {
        /// The table's relation id.
        relation: u32,
        /// The new row.
        new: Tuple,
    },
    /// A row was updated.
    Update {
        /// The table's relation id.
        relation: u32,
        /// The old row (`REPLICA IDENTITY FULL`) or its old key (when the
        /// key changed); none otherwise.
        old: Option<Tuple>,
        /// The new row; unchanged TOASTed values are [`Value::Unchanged`].
        new: Tuple,
    },
    /// A row was deleted.
    Delete {
        /// The table's relation id.
        relation: u32,
        /// The old row (`REPLICA IDENTITY FULL`), or only its key (the
        /// other columns null).
        old: Tuple,
    },
    /// Tables were truncated: every row is gone, without a change per row.
    Truncate {
        /// Their relation ids.
        relations: Vec<u32>,
    },
    /// Anything else (origin, type, logical decoding message): nothing to publish.
    Other(u8),
}

/// A table as a [`Message::Relation`] describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Relation {
    /// Its relation id (the OID the changes name).
    pub(crate) id: u32,
    /// Its schema.
    pub(crate) namespace: String,
    /// Its name.
    pub(crate) name: String,
    /// Its replica identity: `d` default (the primary key), `n` nothing,
    /// `f` full (deletes and updates carry the whole old row), `i` an index.
    pub(crate) identity: u8,
    /// Its columns, in the order of tuple values.
    pub(crate) columns: Vec<Column>,
}

/// A column of a [`Relation`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Column {
    /// Part of the replica identity (the key).
    pub(crate) key: bool,
    /// Its name.
    pub(crate) name: String,
    /// Its type's OID.
    pub(crate) type_oid: u32,
}

/// A row's values, in the order of its relation's columns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Tuple(pub(crate) Vec<Value>);

/// One column value of a [`Tuple`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Value {
    /// NULL (or, in a delete's key-only row, not sent).
    Null,
    /// A TOASTed value the update did not change: not sent.
    Unchanged,
    /// The value in its type's text form.
    Text(String),
    /// The value in binary form (only with `binary 'true'`, not used).
    Binary(Vec<u8>),
}

impl Relation {
    /// The column lookup [`super::values_from_text`] reads a tuple of this
    /// relation through: `(type OID, text or None for NULL)`, `None` when
    /// the column was not sent (absent, unchanged, or binary).
    pub(crate) fn lookup<'a>(&'a self, tuple: &'a Tuple) -> impl Fn(&str) -> Option<(u32, Option<&'a str>)> + 'a {
        self.merged(tuple, None)
    }

    /// As [`Relation::lookup`], a value `tuple` does not carry (an
    /// unchanged TOASTed value) taken from `old`, the old row an update
    /// sends under `REPLICA IDENTITY FULL`.
    pub(crate) fn merged<'a>(
        &'a self,
        tuple: &'a Tuple,
        old: Option<&'a Tuple>,
    ) -> impl Fn(&str) -> Option<(u32, Option<&'a str>)> + 'a {
        move |name| {
            let at = self.columns.iter().position(|column| column.name == name)?;
            let type_oid = self.columns[at].type_oid;
            let value = match tuple.0.get(at)? {
                Value::Unchanged => old?.0.get(at)?,
                value => value,
            };
            match value {
                Value::Null => Some((type_oid, None)),
                Value::Text(text) => Some((type_oid, Some(text.as_str()))),
                Value::Unchanged | Value::Binary(_) => None,
            }
        }
    }

    /// The table's name as errors show it: `schema.table`.
    pub(crate) fn qualified(&self) -> String {
        format!("{}.{}", self.namespace, self.name)
    }
}

/// Why bytes are not a pgoutput message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed pgoutput message ({kind}): {reason}")]
pub(crate) struct DecodeError {
    kind: char,
    reason: &'static str,
}

/// A cursor over a message's bytes.
struct Reader<'a> {
    bytes: &'a [u8],
    kind: char,
}

impl<'a> Reader<'a> {
    fn fail<T>(&self, reason: &'static str) -> Result<T, DecodeError> {
        Err(DecodeError { kind: self.kind, reason })
    }

    fn take(&mut self, len: usize) -> Result<&'a [u8], DecodeError> {
        if self.bytes.len() < len {
            return self.fail("truncated");
        }
        let (head, rest) = self.bytes.split_at(len);
        self.bytes = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.take(2)?.try_into().expect("two bytes")))
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.take(4)?.try_into().expect("four bytes")))
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.take(8)?.try_into().expect("eight bytes")))
    }

    /// A NUL-terminated UTF-8 string.
    fn string(&mut self) -> Result<String, DecodeError> {
        let Some(end) = self.bytes.iter().position(|&byte| byte == 0) else { return self.fail("unterminated string") };
        let text = std::str::from_utf8(&self.bytes[..end]).or_else(|_| self.fail("string not UTF-8"))?.to_owned();
        self.bytes = &self.bytes[end + 1..];
        Ok(text)
    }

    fn tuple(&mut self) -> Result<Tuple, DecodeError> {
        let count = self.u16()?;
        let mut values = Vec::with_capacity(usize::from(count).min(self.bytes.len()));
        for _ in 0..count {
            values.push(match self.u8()? {
                b'n' => Value::Null,
                b'u' => Value::Unchanged,
                b't' => {
                    let len = self.u32()? as usize;
                    let text = self.take(len)?;
                    Value::Text(std::str::from_utf8(text).or_else(|_| self.fail("text value not UTF-8"))?.to_owned())
                }
                b'b' => {
                    let len = self.u32()? as usize;
                    Value::Binary(self.take(len)?.to_vec())
                }
                _ => return self.fail("unknown tuple value kind"),
            });
        }
        Ok(Tuple(values))
    }

    fn done(self) -> Result<(), DecodeError> {
        if self.bytes.is_empty() { Ok(()) } else { self.fail("trailing bytes") }
    }
}

/// Decodes one pgoutput message.
pub(crate) fn decode(bytes: &[u8]) -> Result<Message, DecodeError> {
    let Some((&kind, body)) = bytes.split_first() else {
        return Err(DecodeError { kind: '?', reason: "empty" });
    };
    let mut reader = Reader { bytes: body, kind: char::from(kind) };
    let message = match kind {
        b'B' => {
            let final_lsn = reader.u64()?;
            let _commit_time = reader.u64()?;
            let xid = reader.u32()?;
            Message::Begin { final_lsn, xid }
        }
        b'C' => {
            let _flags = reader.u8()?;
            let commit_lsn = reader.u64()?;
            let end_lsn = reader.u64()?;
            let _commit_time = reader.u64()?;
            Message::Commit { commit_lsn, end_lsn }
        }
        b'R' => {
            let id = reader.u32()?;
            let namespace = reader.string()?;
            let name = reader.string()?;
            let identity = reader.u8()?;
            let count = reader.u16()?;
            let mut columns = Vec::with_capacity(usize::from(count).min(reader.bytes.len()));
            for _ in 0..count {
                let flags = reader.u8()?;
                let name = reader.string()?;
                let type_oid = reader.u32()?;
                let _type_modifier = reader.u32()?;
                columns.push(Column { key: flags & 1 == 1, name, type_oid });
            }
            Message::Relation(Relation { id, namespace, name, identity, columns })
        }
        b'I' => {
            let relation = reader.u32()?;
            if reader.u8()? != b'N' {
                return reader.fail("insert without a new tuple");
            }
            Message::Insert { relation, new: reader.tuple()? }
        }
        b'U' => {
            let relation = reader.u32()?;
            let (old, new) = match reader.u8()? {
                b'K' | b'O' => {
                    let old = reader.tuple()?;
                    if reader.u8()? != b'N' {
                        return reader.fail("update without a new tuple");
                    }
                    (Some(old), reader.tuple()?)
                }
                b'N' => (None, reader.tuple()?),
                _ => return reader.fail("update without a new tuple"),
            };
            Message::Update { relation, old, new }
        }
        b'D' => {
            let relation = reader.u32()?;
            if !matches!(reader.u8()?, b'K' | b'O') {
                return reader.fail("delete without an old tuple");
            }
            Message::Delete { relation, old: reader.tuple()? }
        }
        b'T' => {
            let count = reader.u32()?;
            let _options = reader.u8()?;
            let mut relations = Vec::with_capacity((count as usize).min(reader.bytes.len() / 4));
            for _ in 0..count {
                relations.push(reader.u32()?);
            }
            Message::Truncate { relations }
        }
        other => return Ok(Message::Other(other)),
    };
    reader.done()?;
    Ok(message)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// Writes messages as pgoutput does.
    #[derive(Default)]
    struct Writer(Vec<u8>);

    impl Writer {
        fn kind(mut self, kind: u8) -> Self {
            self.0.push(kind);
            self
        }
        fn u8(mut self, value: u8) -> Self {
            self.0.push(value);
            self
        }
        fn u16(mut self, value: u16) -> Self {
            self.0.extend(value.to_be_bytes());
            self
        }
        fn u32(mut self, value: u32) -> Self {
            self.0.extend(value.to_be_bytes());
            self
        }
        fn u64(mut self, value: u64) -> Self {
            self.0.extend(value.to_be_bytes());
            self
        }
        fn string(mut self, value: &str) -> Self {
            self.0.extend(value.as_bytes());
            self.0.push(0);
            self
        }
        fn tuple(mut self, values: &[Option<&str>]) -> Self {
            self = self.u16(values.len() as u16);
            for value in values {
                self = match value {
                    None => self.u8(b'n'),
                    Some("(unchanged)") => self.u8(b'u'),
                    Some(text) => {
                        let mut this = self.u8(b't').u32(text.len() as u32);
                        this.0.extend(text.as_bytes());
                        this
                    }
                };
            }
            self
        }
    }

    fn users() -> Writer {
        Writer::default()
            .kind(b'R')
            .u32(16_384)
            .string("public")
            .string("users")
            .u8(b'd')
            .u16(3)
            .u8(1)
            .string("id")
            .u32(23)
            .u32(u32::MAX)
            .u8(0)
            .string("name")
            .u32(25)
            .u32(u32::MAX)
            .u8(0)
            .string("bio")
            .u32(25)
            .u32(u32::MAX)
    }

    #[test]
    fn every_change_message_decodes() {
        let Message::Relation(relation) = decode(&users().0).unwrap() else { panic!("a relation") };
        assert_eq!(relation.qualified(), "public.users");
        assert_eq!(
            relation
                .columns
                .iter()
                .map(|column| (column.key, column.name.as_str(), column.type_oid))
                .collect::<Vec<_>>(),
            [(true, "id", 23), (false, "name", 25), (false, "bio", 25)]
        );

        let begin = Writer::default().kind(b'B').u64(0x16B3748).u64(7).u32(731);
        assert_eq!(decode(&begin.0), Ok(Message::Begin { final_lsn: 0x16B3748, xid: 731 }));
        let commit = Writer::default().kind(b'C').u8(0).u64(0x16B3748).u64(0x16B3778).u64(7);
        assert_eq!(decode(&commit.0), Ok(Message::Commit { commit_lsn: 0x16B3748, end_lsn: 0x16B3778 }));

        let insert = Writer::default().kind(b'I').u32(16_384).u8(b'N').tuple(&[Some("1"), Some("neo"), None]);
        let Message::Insert { relation: 16_384, new } = decode(&insert.0).unwrap() else { panic!("an insert") };
        let lookup = relation.lookup(&new);
        assert_eq!(lookup("id"), Some((23, Some("1"))));
        assert_eq!(lookup("bio"), Some((25, None)), "NULL");
        assert_eq!(lookup("missing"), None);

        // An update that left a TOASTed column alone: not sent.
        let update =
            Writer::default().kind(b'U').u32(16_384).u8(b'N').tuple(&[Some("1"), Some("trinity"), Some("(unchanged)")]);
        let Message::Update { old: None, new, .. } = decode(&update.0).unwrap() else { panic!("an update") };
        assert_eq!(new.0[2], Value::Unchanged);
        assert_eq!(relation.lookup(&new)("bio"), None, "an unchanged value is not sent");

        // REPLICA IDENTITY FULL: the old row too.
        let full =
            Writer::default().kind(b'U').u32(16_384).u8(b'O').tuple(&[Some("1"), Some("neo"), None]).u8(b'N').tuple(&[
                Some("1"),
                Some("trinity"),
                None,
            ]);
        let Message::Update { old: Some(old), .. } = decode(&full.0).unwrap() else { panic!("an update") };
        assert_eq!(old.0[1], Value::Text("neo".into()));

        let delete = Writer::default().kind(b'D').u32(16_384).u8(b'K').tuple(&[Some("1"), None, None]);
        assert!(matches!(decode(&delete.0), Ok(Message::Delete { relation: 16_384, .. })));
        let truncate = Writer::default().kind(b'T').u32(2).u8(0).u32(16_384).u32(16_390);
        assert_eq!(decode(&truncate.0), Ok(Message::Truncate { relations: vec![16_384, 16_390] }));
        assert_eq!(decode(b"O\0\0\0\0\0\0\0\x01origin\0"), Ok(Message::Other(b'O')));
    }

    #[test]
    fn malformed_messages_are_errors() {
        let insert = Writer::default().kind(b'I').u32(1).u8(b'N').tuple(&[Some("12345")]).0;
        for cut in 0..insert.len() {
            assert!(decode(&insert[..cut]).is_err(), "cut at {cut}");
        }
        let mut trailing = insert.clone();
        trailing.push(0);
        assert!(decode(&trailing).is_err());
        let bad_kind = Writer::default().kind(b'I').u32(1).u8(b'N').u16(1).u8(b'x').0;
        assert!(decode(&bad_kind).is_err());
        let not_utf8 = Writer::default().kind(b'I').u32(1).u8(b'N').u16(1).u8(b't').u32(1).u8(0xff).0;
        assert!(decode(&not_utf8).is_err());
        let unterminated = Writer::default().kind(b'R').u32(1).u8(b'p').0;
        assert!(decode(&unterminated).is_err());
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode(&bytes);
        }

        #[test]
        fn huge_counts_allocate_nothing_up_front(kind in prop::sample::select(vec![b'R', b'I', b'T']), count in any::<u32>()) {
            // A count the bytes cannot hold fails as truncated.
            let bytes = match kind {
                b'R' => Writer::default().kind(b'R').u32(1).string("s").string("t").u8(b'd').u16(count as u16).0,
                b'I' => Writer::default().kind(b'I').u32(1).u8(b'N').u16(count as u16).0,
                _ => Writer::default().kind(b'T').u32(count).u8(0).0,
            };
            if count as u16 > 0 || kind == b'T' && count > 0 {
                prop_assert!(decode(&bytes).is_err());
            }
        }
    }
}
