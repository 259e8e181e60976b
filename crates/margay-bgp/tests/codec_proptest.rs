//! Round trips over generated messages, and decode robustness on noise.

use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{Ipv4Net, Ipv6Net};
use margay_bgp::codec::{
    self, AddressFamily, Aggregator, AsPath, AsSegment, Capability, Context, GracefulRestart,
    Message, MpReach, MpUnreach, Notification, Open, Origin, PathAttributes, RawAttribute,
    RouteRefresh, Update,
};
use proptest::prelude::*;

fn family() -> impl Strategy<Value = AddressFamily> {
    prop_oneof![
        Just(AddressFamily::Ipv4Unicast),
        Just(AddressFamily::Ipv6Unicast)
    ]
}

fn capability() -> impl Strategy<Value = Capability> {
    prop_oneof![
        family().prop_map(Capability::Multiprotocol),
        Just(Capability::RouteRefresh),
        (
            any::<bool>(),
            0u16..4096,
            prop::collection::vec((family(), any::<bool>()), 0..3)
        )
            .prop_map(|(restart_state, restart_time, families)| {
                Capability::GracefulRestart(GracefulRestart {
                    restart_state,
                    restart_time,
                    families,
                })
            }),
        (1u32..).prop_map(Capability::FourOctetAs),
        (3u8..64, prop::collection::vec(any::<u8>(), 0..20))
            .prop_map(|(code, value)| Capability::Unknown { code, value }),
    ]
}

fn open() -> impl Strategy<Value = Message> {
    (
        1u16..,
        prop_oneof![Just(0u16), 3u16..],
        1u32..,
        prop::collection::vec(capability(), 0..8),
    )
        .prop_map(|(my_as, hold_time, id, capabilities)| {
            Message::Open(Open {
                my_as,
                hold_time,
                bgp_id: Ipv4Addr::from(id),
                capabilities,
            })
        })
}

fn v4net() -> impl Strategy<Value = Ipv4Net> {
    (any::<u32>(), 0u8..=32).prop_map(|(a, l)| Ipv4Net::new(a.into(), l).unwrap().trunc())
}

fn v6net() -> impl Strategy<Value = Ipv6Net> {
    (any::<u128>(), 0u8..=128).prop_map(|(a, l)| Ipv6Net::new(a.into(), l).unwrap().trunc())
}

fn asn(four: bool) -> BoxedStrategy<u32> {
    if four {
        prop_oneof![1u32..65536, any::<u32>()].boxed()
    } else {
        prop_oneof![4 => 1u32..65536, 1 => 65536u32..].boxed()
    }
}

fn as_path(four: bool) -> impl Strategy<Value = AsPath> {
    let seg = (any::<bool>(), prop::collection::vec(asn(four), 1..10)).prop_map(|(set, v)| {
        if set {
            AsSegment::Set(v)
        } else {
            AsSegment::Sequence(v)
        }
    });
    prop::collection::vec(seg, 0..4).prop_map(|segments| AsPath { segments })
}

/// Unknown optional transitive attributes with distinct unknown codes.
fn unknown() -> impl Strategy<Value = Vec<RawAttribute>> {
    prop::collection::btree_map(
        prop_oneof![11u8..14, 19u8..=255],
        (any::<bool>(), prop::collection::vec(any::<u8>(), 0..30)),
        0..3,
    )
    .prop_map(|m| {
        m.into_iter()
            .map(|(type_code, (partial, value))| RawAttribute {
                flags: if partial { 0xe0 } else { 0xc0 },
                type_code,
                value,
            })
            .collect()
    })
}

fn attributes(four: bool) -> impl Strategy<Value = PathAttributes> {
    let origin = prop::option::of(prop_oneof![
        Just(Origin::Igp),
        Just(Origin::Egp),
        Just(Origin::Incomplete)
    ]);
    // Valid unicast next hops only: others are treated as withdraw.
    let next_hop = prop::option::of((0x0100_0000u32..0xe000_0000).prop_map(Ipv4Addr::from));
    let aggregator = prop::option::of((asn(four), any::<u32>()).prop_map(|(asn, a)| Aggregator {
        asn,
        address: a.into(),
    }));
    (
        (
            origin,
            prop::option::of(as_path(four)),
            next_hop,
            any::<Option<u32>>(),
            any::<Option<u32>>(),
        ),
        (
            any::<bool>(),
            aggregator,
            prop::collection::vec(any::<u32>(), 0..10),
            prop::option::of(any::<u32>().prop_map(Ipv4Addr::from)),
            prop::collection::vec(any::<u32>().prop_map(Ipv4Addr::from), 0..5),
            unknown(),
        ),
    )
        .prop_map(
            move |(
                (origin, as_path, next_hop, med, local_pref),
                (
                    atomic_aggregate,
                    mut aggregator,
                    communities,
                    originator_id,
                    cluster_list,
                    unknown,
                ),
            )| {
                // RFC 6793 §4.2.3: an AGGREGATOR that is not AS_TRANS makes
                // a 2-octet receiver ignore AS4_PATH, so such a path cannot
                // round-trip on a 2-octet session.
                let wide = as_path.as_ref().is_some_and(|p| {
                    p.segments.iter().any(|s| match s {
                        AsSegment::Set(v) | AsSegment::Sequence(v) => v.iter().any(|&a| a > 0xffff),
                    })
                });
                if !four && wide && aggregator.is_some_and(|a| a.asn <= 0xffff && a.asn != 23456) {
                    aggregator = None;
                }
                PathAttributes {
                    origin,
                    as_path,
                    next_hop,
                    med,
                    local_pref,
                    atomic_aggregate,
                    aggregator,
                    communities,
                    originator_id,
                    cluster_list,
                    unknown,
                }
            },
        )
}

fn update(four: bool) -> impl Strategy<Value = Message> {
    let reach = (
        any::<u128>(),
        prop::option::of(any::<u128>()),
        prop::collection::vec(v6net(), 0..10),
    )
        .prop_map(|(nh, ll, nlri)| MpReach {
            next_hop: Ipv6Addr::from(nh),
            link_local: ll.map(Ipv6Addr::from),
            nlri,
        });
    let unreach =
        prop::collection::vec(v6net(), 0..10).prop_map(|withdrawn| MpUnreach { withdrawn });
    (
        prop::collection::vec(v4net(), 0..20),
        attributes(four),
        prop::option::of(reach),
        prop::option::of(unreach),
        prop::collection::vec(v4net(), 0..20),
    )
        .prop_map(|(withdrawn, mut attributes, mp_reach, mp_unreach, nlri)| {
            // Reachability needs the well-known mandatory attributes, or
            // the decoder (rightly) turns it into withdrawals.
            if !nlri.is_empty() || mp_reach.is_some() {
                attributes.origin.get_or_insert(Origin::Igp);
                attributes.as_path.get_or_insert_with(AsPath::default);
            }
            if !nlri.is_empty() {
                attributes
                    .next_hop
                    .get_or_insert(Ipv4Addr::new(192, 0, 2, 1));
            }
            Message::Update(Update {
                withdrawn,
                attributes,
                mp_reach,
                mp_unreach,
                nlri,
            })
        })
}

fn message(four: bool) -> impl Strategy<Value = Message> {
    prop_oneof![
        open(),
        update(four),
        (
            any::<u8>(),
            any::<u8>(),
            prop::collection::vec(any::<u8>(), 0..50)
        )
            .prop_map(|(code, subcode, data)| Message::Notification(Notification {
                code,
                subcode,
                data
            })),
        Just(Message::Keepalive),
        (any::<u16>(), any::<u8>())
            .prop_map(|(afi, safi)| Message::RouteRefresh(RouteRefresh { afi, safi })),
    ]
}

fn ctx(four: bool) -> Context {
    Context {
        four_octet_as: four,
        ..Context::default()
    }
}

fn round_trip(msg: &Message, ctx: &Context) -> Result<(), TestCaseError> {
    let mut raw = Vec::new();
    codec::encode(msg, ctx, &mut raw).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let d = codec::decode(&raw, ctx)
        .map_err(|e| TestCaseError::fail(format!("{e}: {raw:02x?}")))?
        .ok_or_else(|| TestCaseError::fail("incomplete"))?;
    prop_assert_eq!(&d.message, msg);
    prop_assert_eq!(d.len, raw.len());
    prop_assert!(d.recovered.is_empty(), "{:?}", d.recovered);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn round_trip_four_octet(msg in message(true)) {
        round_trip(&msg, &ctx(true))?;
    }

    #[test]
    fn round_trip_two_octet(msg in message(false)) {
        round_trip(&msg, &ctx(false))?;
    }

    /// Noise after a valid header: never a panic, and whatever decodes
    /// re-encodes to something that decodes to the same value.
    #[test]
    fn noise_is_handled(t in 1u8..=5, body in prop::collection::vec(any::<u8>(), 0..200), four in any::<bool>()) {
        let ctx = ctx(four);
        let mut raw = vec![0xff; 16];
        raw.extend_from_slice(&u16::try_from(19 + body.len()).unwrap().to_be_bytes());
        raw.push(t);
        raw.extend(body);
        if let Ok(Some(d)) = codec::decode(&raw, &ctx) {
            let mut again = Vec::new();
            if codec::encode(&d.message, &ctx, &mut again).is_ok() {
                let d2 = codec::decode(&again, &ctx).unwrap().unwrap();
                prop_assert_eq!(d2.message, d.message);
            }
        }
    }
}
