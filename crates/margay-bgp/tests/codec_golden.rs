//! Golden bytes both ways: parse(raw) == value and emit(value) == raw.

mod common;

use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{Ipv4Net, Ipv6Net};
use margay_bgp::codec::{
    self, AddressFamily, Aggregator, AsPath, AsSegment, Capability, Context, GracefulRestart,
    Message, MpReach, MpUnreach, Notification, Open, Origin, PathAttributes, RawAttribute,
    RouteRefresh, Update,
};

const FOUR: Context = Context {
    four_octet_as: true,
    max_message_len: 4096,
};
const TWO: Context = Context {
    four_octet_as: false,
    max_message_len: 4096,
};

fn v4(s: &str) -> Ipv4Net {
    s.parse().unwrap()
}
fn v6(s: &str) -> Ipv6Net {
    s.parse().unwrap()
}
fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn check(name: &str, ctx: Context, expected: Message) {
    let raw = common::golden(name);
    let decoded = codec::decode(&raw, &ctx)
        .unwrap_or_else(|e| panic!("{name}: {e}"))
        .unwrap_or_else(|| panic!("{name}: incomplete"));
    assert_eq!(decoded.message, expected, "{name}: decode");
    assert_eq!(decoded.len, raw.len(), "{name}: consumed");
    assert!(
        decoded.recovered.is_empty(),
        "{name}: {:?}",
        decoded.recovered
    );
    let mut out = Vec::new();
    codec::encode(&expected, &ctx, &mut out).unwrap();
    assert_eq!(hex(&out), hex(&raw), "{name}: encode");
    // Every proper prefix is "need more", never an error.
    for cut in 0..raw.len() {
        assert_eq!(
            codec::decode(&raw[..cut], &ctx),
            Ok(None),
            "{name}: cut at {cut}"
        );
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn keepalive() {
    check("keepalive", TWO, Message::Keepalive);
}

#[test]
fn notifications() {
    check(
        "notification_cease",
        TWO,
        Message::Notification(Notification {
            code: 6,
            subcode: 2,
            data: vec![],
        }),
    );
    check(
        "notification_version",
        TWO,
        Message::Notification(Notification {
            code: 2,
            subcode: 1,
            data: vec![0, 4],
        }),
    );
}

#[test]
fn route_refresh() {
    check(
        "route_refresh",
        TWO,
        Message::RouteRefresh(RouteRefresh::new(AddressFamily::Ipv6Unicast)),
    );
}

#[test]
fn open_basic() {
    let open = Open {
        my_as: 64512,
        hold_time: 90,
        bgp_id: ip("10.0.0.1"),
        capabilities: vec![
            Capability::Multiprotocol(AddressFamily::Ipv4Unicast),
            Capability::Multiprotocol(AddressFamily::Ipv6Unicast),
            Capability::RouteRefresh,
            Capability::FourOctetAs(64512),
        ],
    };
    assert_eq!(open.asn(), 64512);
    assert_eq!(
        open.families(),
        vec![AddressFamily::Ipv4Unicast, AddressFamily::Ipv6Unicast]
    );
    check("open_basic", TWO, Message::Open(open));
}

#[test]
fn open_as_trans_graceful_restart_unknown_capabilities() {
    let open = Open {
        my_as: 23456,
        hold_time: 240,
        bgp_id: ip("192.0.2.1"),
        capabilities: vec![
            Capability::FourOctetAs(4_200_000_001),
            Capability::GracefulRestart(GracefulRestart {
                restart_state: true,
                restart_time: 120,
                families: vec![
                    (AddressFamily::Ipv4Unicast, true),
                    (AddressFamily::Ipv6Unicast, false),
                ],
            }),
            Capability::Unknown {
                code: 70,
                value: vec![],
            },
            Capability::Unknown {
                code: 73,
                value: vec![4, b'n', b'o', b'd', b'e', 0],
            },
            Capability::Unknown {
                code: 1,
                value: vec![0, 1, 0, 0x80],
            },
        ],
    };
    assert_eq!(open.asn(), 4_200_000_001);
    // A multiprotocol capability was sent, just not for IPv4 unicast.
    assert_eq!(open.families(), vec![]);
    assert!(!open.route_refresh());
    assert_eq!(
        Open::new(4_200_000_001, 240, ip("192.0.2.1"), vec![]).my_as,
        codec::AS_TRANS
    );
    check("open_as_trans_gr", TWO, Message::Open(open));
}

fn ipv4_attrs() -> PathAttributes {
    PathAttributes {
        origin: Some(Origin::Igp),
        as_path: Some(AsPath::sequence(vec![64513, 64514])),
        next_hop: Some(ip("192.0.2.2")),
        med: Some(50),
        local_pref: Some(200),
        atomic_aggregate: true,
        aggregator: Some(Aggregator {
            asn: 64513,
            address: ip("192.0.2.2"),
        }),
        communities: vec![0xfc01_0064, 0xffff_ff01],
        originator_id: Some(ip("10.0.0.9")),
        cluster_list: vec![ip("10.0.0.1"), ip("10.0.0.2")],
        unknown: vec![RawAttribute {
            flags: 0xe0,
            type_code: 32,
            value: vec![0, 0, 0xfc, 1, 0, 0, 0, 1, 0, 0, 0, 2],
        }],
    }
}

#[test]
fn update_ipv4_all_attributes() {
    let update = Update {
        withdrawn: vec![v4("10.1.0.0/16")],
        attributes: ipv4_attrs(),
        mp_reach: None,
        mp_unreach: None,
        nlri: vec![
            v4("10.2.0.0/24"),
            v4("192.168.0.0/16"),
            v4("0.0.0.0/0"),
            v4("10.3.4.5/32"),
        ],
    };
    check("update_ipv4", FOUR, Message::Update(update));
}

#[test]
fn update_as4_path_on_two_octet_session() {
    let update = Update {
        attributes: PathAttributes {
            origin: Some(Origin::Egp),
            as_path: Some(AsPath::sequence(vec![65001, 4_200_000_001])),
            next_hop: Some(ip("192.0.2.2")),
            aggregator: Some(Aggregator {
                asn: 4_200_000_001,
                address: ip("192.0.2.2"),
            }),
            ..PathAttributes::default()
        },
        nlri: vec![v4("10.2.0.0/24")],
        ..Update::default()
    };
    check("update_as4_on_2byte", TWO, Message::Update(update));
}

#[test]
fn update_ipv6_reach_and_unreach() {
    let update = Update {
        attributes: PathAttributes {
            origin: Some(Origin::Incomplete),
            as_path: Some(AsPath {
                segments: vec![
                    AsSegment::Sequence(vec![64513]),
                    AsSegment::Set(vec![64600, 64601]),
                ],
            }),
            ..PathAttributes::default()
        },
        mp_reach: Some(MpReach {
            next_hop: "2001:db8::1".parse::<Ipv6Addr>().unwrap(),
            link_local: Some("fe80::1".parse().unwrap()),
            nlri: vec![v6("2001:db8:1::/48"), v6("2001:db8::/32")],
        }),
        ..Update::default()
    };
    check("update_ipv6", FOUR, Message::Update(update));
    let withdraw = Update {
        mp_unreach: Some(MpUnreach {
            withdrawn: vec![v6("2001:db8:1::/48")],
        }),
        ..Update::default()
    };
    assert_eq!(withdraw.end_of_rib_family(), None);
    check("update_ipv6_withdraw", FOUR, Message::Update(withdraw));
}

#[test]
fn end_of_rib_markers() {
    for (name, family) in [
        ("eor_ipv4", AddressFamily::Ipv4Unicast),
        ("eor_ipv6", AddressFamily::Ipv6Unicast),
    ] {
        let eor = Update::end_of_rib(family);
        assert_eq!(eor.end_of_rib_family(), Some(family));
        check(name, FOUR, Message::Update(eor));
    }
}

#[test]
fn extended_length_attribute() {
    let update = Update {
        attributes: PathAttributes {
            origin: Some(Origin::Igp),
            as_path: Some(AsPath::default()),
            next_hop: Some(ip("10.0.0.2")),
            communities: (0..70).map(|i| 0xfc00_0000 | i).collect(),
            ..PathAttributes::default()
        },
        nlri: vec![v4("10.9.0.0/16")],
        ..Update::default()
    };
    check("update_extended_length", FOUR, Message::Update(update));
}

#[test]
fn stream_of_messages() {
    // Two messages back to back: the decoder reports each one's length.
    let mut buf = common::golden("keepalive");
    buf.extend(common::golden("update_ipv4"));
    let first = codec::decode(&buf, &FOUR).unwrap().unwrap();
    assert_eq!((first.message, first.len), (Message::Keepalive, 19));
    let second = codec::decode(&buf[first.len..], &FOUR).unwrap().unwrap();
    assert_eq!(second.len, buf.len() - 19);
}

#[test]
fn capabilities_spread_over_parameters_and_out_of_order_attributes() {
    // gobgp puts each capability in its own parameter.
    let raw = common::hex(
        "ffffffffffffffffffffffffffffffff 0029 01 04 fc00 005a 0a000001 0c
         02 06 01 04 0001 00 01   02 02 02 00",
    );
    let open = match codec::decode(&raw, &TWO).unwrap().unwrap().message {
        Message::Open(o) => o,
        m => panic!("{m:?}"),
    };
    assert_eq!(
        open.capabilities,
        vec![
            Capability::Multiprotocol(AddressFamily::Ipv4Unicast),
            Capability::RouteRefresh
        ]
    );
    // Attributes in any order, NEXT_HOP first; unknown non-transitive ones
    // are dropped; extended length on a short attribute is accepted.
    let raw = common::hex(
        "ffffffffffffffffffffffffffffffff 0033 02 0000 001a
         40 03 04 0a000002   80 63 02 abcd   50 02 0006 02 01 0000fc01   40 01 01 00
         08 0a",
    );
    let update = match codec::decode(&raw, &FOUR).unwrap().unwrap().message {
        Message::Update(u) => u,
        m => panic!("{m:?}"),
    };
    assert_eq!(
        update.attributes.as_path,
        Some(AsPath::sequence(vec![64513]))
    );
    assert_eq!(update.attributes.next_hop, Some(ip("10.0.0.2")));
    assert!(update.attributes.unknown.is_empty());
    assert_eq!(update.nlri, vec![v4("10.0.0.0/8")]);
}
