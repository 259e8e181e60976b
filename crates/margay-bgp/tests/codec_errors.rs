//! Every malformed input maps to the NOTIFICATION RFC 4271 §6 names, or is
//! handled without one where RFC 7606 says so.

mod common;

use ipnet::{Ipv4Net, Ipv6Net};
use margay_bgp::codec::{self, Context, Message, MpUnreach, Update};

const FOUR: Context = Context {
    four_octet_as: true,
    max_message_len: 4096,
};
const TWO: Context = Context {
    four_octet_as: false,
    max_message_len: 4096,
};

fn msg(msg_type: u8, body: &str) -> Vec<u8> {
    let body = common::hex(body);
    let mut m = vec![0xff; 16];
    m.extend_from_slice(&u16::try_from(19 + body.len()).unwrap().to_be_bytes());
    m.push(msg_type);
    m.extend(body);
    m
}

fn update(withdrawn: &str, attrs: &str, nlri: &str) -> Vec<u8> {
    let (w, a) = (common::hex(withdrawn), common::hex(attrs));
    let body = format!(
        "{:04x}{withdrawn}{:04x}{attrs}{nlri}",
        w.len(),
        a.len(),
        withdrawn = withdrawn.replace(' ', ""),
        attrs = attrs.replace(' ', "")
    );
    msg(2, &body)
}

/// (code, subcode, data) of a NOTIFICATION.
type Expected = (u8, u8, Vec<u8>);

/// The NOTIFICATION for a rejected message.
fn rejected(raw: &[u8], ctx: &Context) -> Expected {
    match codec::decode(raw, ctx) {
        Err(e) => {
            let n = e.notification();
            (n.code, n.subcode, n.data)
        }
        Ok(d) => panic!("accepted: {d:?}"),
    }
}

#[test]
fn header_errors() {
    let mut bad_marker = msg(4, "");
    bad_marker[3] = 0xfe;
    let cases: Vec<(Vec<u8>, Expected)> = vec![
        (bad_marker, (1, 1, vec![])),
        (
            common::hex("ffffffffffffffffffffffffffffffff 0012 04"),
            (1, 2, vec![0x00, 0x12]),
        ),
        (
            common::hex("ffffffffffffffffffffffffffffffff 1001 02"),
            (1, 2, vec![0x10, 0x01]),
        ),
        (msg(4, "00"), (1, 2, vec![0x00, 0x14])),
        (msg(5, "0001 00 01 00"), (1, 2, vec![0x00, 0x18])),
        (msg(3, "06"), (1, 2, vec![0x00, 0x14])),
        (msg(1, "04 fc00"), (1, 2, vec![0x00, 0x16])),
        (msg(2, "0000"), (1, 2, vec![0x00, 0x15])),
        (msg(6, ""), (1, 3, vec![6])),
        (msg(0, ""), (1, 3, vec![0])),
    ];
    for (raw, expected) in cases {
        assert_eq!(rejected(&raw, &FOUR), expected, "{raw:02x?}");
    }
    // Header errors are reported before the body has arrived.
    let partial = &common::hex("ffffffffffffffffffffffffffffffff 2000 02")[..19];
    assert_eq!(rejected(partial, &FOUR).1, 2);
}

#[test]
fn open_errors() {
    let cases = [
        ("03 fc00 005a 0a000001 00", (2, 1, vec![0, 4])),
        ("04 0000 005a 0a000001 00", (2, 2, vec![])),
        ("04 fc00 005a 0a000001 06 02 04 41 02 0000", (2, 0, vec![])),
        (
            "04 5ba0 005a 0a000001 08 02 06 41 04 00000000",
            (2, 2, vec![]),
        ),
        ("04 fc00 005a 00000000 00", (2, 3, vec![])),
        ("04 fc00 005a 0a000001 04 01 02 abcd", (2, 4, vec![])),
        ("04 fc00 0001 0a000001 00", (2, 6, vec![])),
        ("04 fc00 0002 0a000001 00", (2, 6, vec![])),
        // Optional parameters length disagrees with the message.
        ("04 fc00 005a 0a000001 05 02 02 0200", (2, 0, vec![])),
        ("04 fc00 005a 0a000001 00 00", (2, 0, vec![])),
        // A capability overruns its parameter.
        ("04 fc00 005a 0a000001 04 02 02 4104", (2, 0, vec![])),
        // Known capabilities with the wrong length.
        ("04 fc00 005a 0a000001 05 02 03 41 01 00", (2, 0, vec![])),
        ("04 fc00 005a 0a000001 05 02 03 02 01 00", (2, 0, vec![])),
        ("04 fc00 005a 0a000001 05 02 03 40 01 00", (2, 0, vec![])),
        (
            "04 fc00 005a 0a000001 07 02 05 01 03 0001 00",
            (2, 0, vec![]),
        ),
    ];
    for (body, expected) in cases {
        assert_eq!(rejected(&msg(1, body), &TWO), expected, "{body}");
    }
}

const NH: &str = "40 03 04 0a000002";
const ORIGIN: &str = "40 01 01 00";
const PATH2: &str = "40 02 04 02 01 fc01";

#[test]
fn update_errors_that_reset_the_session() {
    let cases = [
        // Withdrawn routes / attribute lengths run past the message.
        (msg(2, "0010 0000"), (3, 1, vec![])),
        (msg(2, "0000 0010"), (3, 1, vec![])),
        (update("21 0a000000 00", "", ""), (3, 10, vec![])),
        (
            update("", &format!("{ORIGIN} {PATH2} {NH}"), "18 0a"),
            (3, 10, vec![]),
        ),
        (
            update("", &format!("{ORIGIN} {PATH2} {NH}"), "21 0a000000 00"),
            (3, 10, vec![]),
        ),
        (
            update("", "40 63 01 00", ""),
            (3, 2, common::hex("40 63 01 00")),
        ),
        (
            update("", "80 0f 03 0002 01 80 0f 03 0002 01", ""),
            (3, 1, vec![]),
        ),
        (
            update("", "80 0e 0d 0002 01 08 0000000000000001 00", ""),
            (3, 9, common::hex("80 0e 0d 0002 01 08 0000000000000001 00")),
        ),
        (
            update("", "80 0e 03 0002 01", ""),
            (3, 9, common::hex("80 0e 03 0002 01")),
        ),
        (
            update("", "80 0f 05 0002 01 81 00", ""),
            (3, 9, common::hex("80 0f 05 0002 01 81 00")),
        ),
        (
            update("", "c0 0f 03 0002 01", ""),
            (3, 4, common::hex("c0 0f 03 0002 01")),
        ),
    ];
    for (raw, expected) in cases {
        assert_eq!(rejected(&raw, &TWO), expected, "{raw:02x?}");
    }
}

fn net(s: &str) -> Ipv4Net {
    s.parse().unwrap()
}

/// Decodes an UPDATE that RFC 7606 handles without a NOTIFICATION and
/// returns it with the first recovered error's (code, subcode, data).
fn recovered(raw: &[u8], ctx: &Context) -> (Update, (u8, u8, Vec<u8>)) {
    let d = codec::decode(raw, ctx)
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap();
    let first = d
        .recovered
        .first()
        .unwrap_or_else(|| panic!("nothing recovered: {d:?}"));
    let n = codec::DecodeError::Update(first.clone()).notification();
    match d.message {
        Message::Update(u) => (u, (n.code, n.subcode, n.data)),
        m => panic!("{m:?}"),
    }
}

#[test]
fn update_errors_treated_as_withdraw() {
    let withdraw = Update {
        withdrawn: vec![net("10.9.0.0/16"), net("10.2.0.0/24")],
        ..Update::default()
    };
    let h = common::hex;
    let cases = [
        (
            format!("40 01 01 03 {PATH2} {NH}"),
            (3, 6, h("40 01 01 03")),
        ),
        (
            format!("40 01 02 0000 {PATH2} {NH}"),
            (3, 5, h("40 01 02 0000")),
        ),
        (
            format!("c0 01 01 00 {PATH2} {NH}"),
            (3, 4, h("c0 01 01 00")),
        ),
        (
            format!("{ORIGIN} 40 02 04 05 01 fc01 {NH}"),
            (3, 11, vec![]),
        ),
        (format!("{ORIGIN} 40 02 02 02 00 {NH}"), (3, 11, vec![])),
        (
            format!("{ORIGIN} 40 02 04 02 02 fc01 {NH}"),
            (3, 11, vec![]),
        ),
        (
            format!("{ORIGIN} {PATH2} 40 03 04 00000000"),
            (3, 8, h("40 03 04 00000000")),
        ),
        (
            format!("{ORIGIN} {PATH2} 40 03 04 e0000001"),
            (3, 8, h("40 03 04 e0000001")),
        ),
        (
            format!("{ORIGIN} {PATH2} 40 03 05 0a00000200"),
            (3, 5, h("40 03 05 0a00000200")),
        ),
        (format!("{ORIGIN} {PATH2}"), (3, 3, vec![3])),
        (format!("{PATH2} {NH}"), (3, 3, vec![1])),
        (format!("{ORIGIN} {NH}"), (3, 3, vec![2])),
        (String::new(), (3, 3, vec![1])),
        (
            format!("{ORIGIN} {PATH2} {NH} 80 04 03 000001"),
            (3, 5, h("80 04 03 000001")),
        ),
        (
            format!("{ORIGIN} {PATH2} {NH} 40 05 00"),
            (3, 5, h("40 05 00")),
        ),
        (
            format!("{ORIGIN} {PATH2} {NH} c0 08 03 000001"),
            (3, 5, h("c0 08 03 000001")),
        ),
        (
            format!("{ORIGIN} {PATH2} {NH} c0 08 00"),
            (3, 5, h("c0 08 00")),
        ),
        (
            format!("{ORIGIN} {PATH2} {NH} 80 09 05 0a00000100"),
            (3, 5, h("80 09 05 0a00000100")),
        ),
        (
            format!("{ORIGIN} {PATH2} {NH} 80 0a 06 0a0000010000"),
            (3, 5, h("80 0a 06 0a0000010000")),
        ),
        (
            format!("{ORIGIN} {PATH2} 40 04 04 00000001 {NH}"),
            (3, 4, h("40 04 04 00000001")),
        ),
        // The last attribute runs past the attribute section.
        (
            format!("{ORIGIN} {PATH2} 40 03 08 0a000002"),
            (3, 5, h("40 03 08 0a000002")),
        ),
        // Too few bytes left for an attribute header.
        (format!("{ORIGIN} {PATH2} {NH} 40 01"), (3, 1, vec![])),
    ];
    for (attrs, expected) in cases {
        let raw = update("10 0a09", &attrs, "18 0a0200");
        assert_eq!(
            recovered(&raw, &TWO),
            (withdraw.clone(), expected),
            "{attrs}"
        );
    }
}

#[test]
fn treat_as_withdraw_covers_ipv6_routes() {
    let raw = update(
        "",
        "40 01 01 07 40 02 00 80 0e 1c 0002 01 10 20010db8000000000000000000000001 00 30 20010db80001
         80 0f 08 0002 01 20 20010db9",
        "",
    );
    let v6 = |s: &str| s.parse::<Ipv6Net>().unwrap();
    let expected = Update {
        mp_unreach: Some(MpUnreach {
            withdrawn: vec![v6("2001:db9::/32"), v6("2001:db8:1::/48")],
        }),
        ..Update::default()
    };
    assert_eq!(
        recovered(&raw, &FOUR),
        (expected, (3, 6, common::hex("40 01 01 07")))
    );
}

#[test]
fn attributes_discarded_but_route_kept() {
    let cases = [
        ("40 06 01 00", (3, 5, common::hex("40 06 01 00"))),
        ("80 06 00", (3, 4, common::hex("80 06 00"))),
        (
            "c0 07 05 fc01 0a0000",
            (3, 5, common::hex("c0 07 05 fc01 0a0000")),
        ),
        ("c0 11 02 02 00", (3, 11, vec![])),
        (
            "c0 12 04 0a000001",
            (3, 5, common::hex("c0 12 04 0a000001")),
        ),
    ];
    for (extra, expected) in cases {
        let raw = update("", &format!("{ORIGIN} {PATH2} {NH} {extra}"), "18 0a0200");
        let (u, err) = recovered(&raw, &TWO);
        assert_eq!(err, expected, "{extra}");
        assert_eq!(u.nlri, vec![net("10.2.0.0/24")], "{extra}");
        assert!(
            !u.attributes.atomic_aggregate && u.attributes.aggregator.is_none(),
            "{extra}"
        );
        assert_eq!(u.attributes.as_path.unwrap().first_as(), Some(0xfc01));
    }
}

#[test]
fn duplicate_attributes_keep_the_first() {
    let raw = update(
        "",
        &format!("{ORIGIN} 40 01 01 02 {PATH2} {NH}"),
        "18 0a0200",
    );
    let d = codec::decode(&raw, &TWO).unwrap().unwrap();
    assert!(d.recovered.is_empty());
    let Message::Update(u) = d.message else {
        panic!()
    };
    assert_eq!(u.attributes.origin, Some(codec::Origin::Igp));
}

#[test]
fn arbitrary_bytes_never_panic() {
    // A cheap deterministic sweep; proptest and the fuzz target go further.
    let base = common::golden("update_ipv4");
    for i in 19..base.len() {
        for v in [0x00, 0x01, 0x7f, 0x80, 0xff] {
            let mut m = base.clone();
            m[i] = v;
            for ctx in [TWO, FOUR] {
                let _ = codec::decode(&m, &ctx);
            }
        }
    }
}
