use super::*;

const CHANNEL: &str = "graphex:~node:0badcafe";
const NOW: u64 = 1_800_000_000_000;

fn key() -> SigningKey {
    SigningKey::from("a shared secret of the deployment")
}

fn request(key: Option<&SigningKey>, body: &[u8]) -> Vec<u8> {
    encode(CHANNEL, Kind::Request, 0xabc, "12345678", NOW, body, key).expect("encodes")
}

#[test]
fn round_trip_unsigned_and_signed() {
    for key in [None, Some(key())] {
        let bytes = request(key.as_ref(), b"{\"query\":\"x\"}\nwith a newline");
        let header = std::str::from_utf8(&bytes[..bytes.iter().position(|b| *b == b'\n').unwrap()]).unwrap();
        assert!(header.starts_with("graphex/1 request 00000000000000000000000000000abc 12345678 1800000000000 "));
        let envelope = decode(CHANNEL, Kind::Request, &bytes, key.as_ref(), NOW).expect("decodes");
        assert_eq!(
            envelope,
            Envelope { id: 0xabc, node: "12345678", sent_at: NOW, body: b"{\"query\":\"x\"}\nwith a newline" }
        );
    }
    // A receiver without a key does not check signatures.
    assert!(decode(CHANNEL, Kind::Request, &request(Some(&key()), b"{}"), None, NOW).is_ok());
}

#[test]
fn the_kind_and_the_node_are_checked() {
    let bytes = request(None, b"{}");
    assert_eq!(decode(CHANNEL, Kind::Reply, &bytes, None, NOW), Err(Rejected::Malformed));
    assert_eq!(encode(CHANNEL, Kind::Reply, 1, "x:y", NOW, b"", None), Err(Rejected::Malformed));
    let forged = b"graphex/1 request 00000000000000000000000000000abc a/b 1 -\n{}";
    assert_eq!(decode(CHANNEL, Kind::Request, forged, None, NOW), Err(Rejected::Malformed));
    let short_id = b"graphex/1 request abc 12345678 1 -\n{}";
    assert_eq!(decode(CHANNEL, Kind::Request, short_id, None, NOW), Err(Rejected::Malformed));
    let extra = b"graphex/1 request 00000000000000000000000000000abc 12345678 1 - more\n{}";
    assert_eq!(decode(CHANNEL, Kind::Request, extra, None, NOW), Err(Rejected::Malformed));
    assert_eq!(decode(CHANNEL, Kind::Request, b"graphex/1 request", None, NOW), Err(Rejected::Malformed));
}

#[test]
fn sizes_are_bounded_on_both_sides() {
    let largest = vec![b'x'; MAX_NODE_REQUEST];
    let bytes = request(None, &largest);
    assert!(decode(CHANNEL, Kind::Request, &bytes, None, NOW).is_ok());
    let over = vec![b'x'; MAX_NODE_REQUEST + 1];
    assert_eq!(encode(CHANNEL, Kind::Request, 1, "n", NOW, &over, None), Err(Rejected::Oversized));
    let mut forged = b"graphex/1 request 00000000000000000000000000000abc 12345678 1 -\n".to_vec();
    forged.extend_from_slice(&over);
    assert_eq!(decode(CHANNEL, Kind::Request, &forged, None, NOW), Err(Rejected::Oversized));
    // A reply is smaller.
    let reply = vec![b'x'; MAX_NODE_REPLY + 1];
    assert_eq!(encode(CHANNEL, Kind::Reply, 1, "n", NOW, &reply, None), Err(Rejected::Oversized));
    let mut forged = b"graphex/1 reply 00000000000000000000000000000abc 12345678 1 -\n".to_vec();
    forged.extend_from_slice(&reply);
    assert_eq!(decode(CHANNEL, Kind::Reply, &forged, None, NOW), Err(Rejected::Oversized));
    // Huge garbage is refused before anything is parsed.
    let garbage = vec![b'\n'; MAX_HEADER + MAX_NODE_REQUEST + 1];
    assert_eq!(decode(CHANNEL, Kind::Request, &garbage, None, NOW), Err(Rejected::Oversized));
}

#[test]
fn unknown_versions_and_the_old_framing_are_refused() {
    let newer = b"graphex/2 request whatever the next version says\n{}";
    assert_eq!(decode(CHANNEL, Kind::Request, newer, None, NOW), Err(Rejected::UnknownVersion));
    // Before versions: `<id>\n<node>\n<body>`, with a raw token inside.
    let old = b"7\n12345678\n{\"query\":\"mutation { x }\",\"variables\":{},\"token\":\"ann\"}";
    assert_eq!(decode(CHANNEL, Kind::Request, old, None, NOW), Err(Rejected::UnknownVersion));
    assert_eq!(decode(CHANNEL, Kind::Request, b"", None, NOW), Err(Rejected::UnknownVersion));
    let no_newline = b"graphex/3";
    assert_eq!(decode(CHANNEL, Kind::Request, no_newline, None, NOW), Err(Rejected::UnknownVersion));
}

#[test]
fn signatures_are_verified() {
    let key = key();
    let signed = request(Some(&key), b"{\"query\":\"subscription\"}");
    assert!(decode(CHANNEL, Kind::Request, &signed, Some(&key), NOW).is_ok());
    // Unsigned.
    let unsigned = request(None, b"{\"query\":\"subscription\"}");
    assert_eq!(decode(CHANNEL, Kind::Request, &unsigned, Some(&key), NOW), Err(Rejected::Unverified));
    // Another key.
    let other = SigningKey::from("another secret");
    assert_eq!(decode(CHANNEL, Kind::Request, &signed, Some(&other), NOW), Err(Rejected::Unverified));
    // A tampered body.
    let mut tampered = signed.clone();
    *tampered.last_mut().unwrap() = b']';
    assert_eq!(decode(CHANNEL, Kind::Request, &tampered, Some(&key), NOW), Err(Rejected::Unverified));
    // A tampered header (the sender's node, so the reply would go elsewhere).
    let text = String::from_utf8(signed.clone()).unwrap().replacen("12345678", "87654321", 1);
    assert_eq!(decode(CHANNEL, Kind::Request, text.as_bytes(), Some(&key), NOW), Err(Rejected::Unverified));
    // Replayed to another process.
    let elsewhere = "graphex:~node:feedbeef";
    assert_eq!(decode(elsewhere, Kind::Request, &signed, Some(&key), NOW), Err(Rejected::Unverified));
    // A truncated signature.
    let text = String::from_utf8(signed).unwrap();
    let (header, body) = text.split_once('\n').unwrap();
    let short = format!("{}\n{body}", &header[..header.len() - 2]);
    assert_eq!(decode(CHANNEL, Kind::Request, short.as_bytes(), Some(&key), NOW), Err(Rejected::Unverified));
}

#[test]
fn stale_signed_envelopes_are_refused() {
    let key = key();
    let signed = request(Some(&key), b"{}");
    let skew = MAX_CLOCK_SKEW.as_millis() as u64;
    assert!(decode(CHANNEL, Kind::Request, &signed, Some(&key), NOW + skew).is_ok());
    assert!(decode(CHANNEL, Kind::Request, &signed, Some(&key), NOW - skew).is_ok());
    assert_eq!(decode(CHANNEL, Kind::Request, &signed, Some(&key), NOW + skew + 1), Err(Rejected::Stale));
    assert_eq!(decode(CHANNEL, Kind::Request, &signed, Some(&key), NOW - skew - 1), Err(Rejected::Stale));
    // A new time needs a new signature.
    let text = String::from_utf8(signed).unwrap().replacen(&NOW.to_string(), &(NOW + 60_000).to_string(), 1);
    assert_eq!(decode(CHANNEL, Kind::Request, text.as_bytes(), Some(&key), NOW + 60_000), Err(Rejected::Unverified));
}

#[test]
fn ids_are_random_and_keys_are_not_printed() {
    assert_ne!(random_id(), random_id());
    assert_eq!(format!("{:?}", key()), "SigningKey(<redacted>)");
}
