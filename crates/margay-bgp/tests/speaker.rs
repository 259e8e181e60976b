//! The speaker over real TCP on loopback (127.0.0.0/8 is all local, so each speaker gets an
//! address of its own), with in-memory sinks. No root needed.

use std::collections::BTreeSet;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use margay_bgp::codec::{self, AsPath, Context, Message, Open, Origin, PathAttributes, Update};
use margay_bgp::sink::MemorySink;
use margay_bgp::speaker::{PeerConfig, PeerStatus, Speaker, SpeakerConfig, State};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

/// A port free on `addr` right now.
fn free_port(addr: &str) -> u16 {
    TcpListener::bind((addr, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Node {
    speaker: Speaker,
    sink: MemorySink,
    addr: IpAddr,
    port: u16,
}

fn node(addr: &str, asn: u32, sink: MemorySink) -> Node {
    let port = free_port(addr);
    let a: Ipv4Addr = addr.parse().unwrap();
    let cfg = SpeakerConfig {
        listen: SocketAddr::new(a.into(), port),
        connect_retry_time: Duration::from_secs(1),
        idle_hold_time: Duration::from_millis(200),
        stale_routes_time: Duration::from_secs(30),
        ..SpeakerConfig::new(a, asn)
    };
    Node {
        speaker: Speaker::start(cfg, sink.clone()).unwrap(),
        sink,
        addr: a.into(),
        port,
    }
}

fn peer_of(other: &Node, asn: u32, local: &Node) -> PeerConfig {
    PeerConfig {
        port: other.port,
        local_address: Some(local.addr),
        hold_time: 9,
        ..PeerConfig::new(other.addr, asn)
    }
}

async fn eventually<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    while !check().await {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn state(s: &Speaker) -> Vec<State> {
    s.status().await.iter().map(|p| p.state).collect()
}

async fn peer(s: &Speaker) -> PeerStatus {
    s.status().await.remove(0)
}

const T: Duration = Duration::from_secs(10);

#[tokio::test]
async fn two_speakers_exchange_and_withdraw_routes() {
    let a = node("127.0.0.11", 65001, MemorySink::new());
    let b = node("127.0.0.12", 65002, MemorySink::new());
    a.speaker.set_peers(vec![peer_of(&b, 65002, &a)]);
    b.speaker.set_peers(vec![PeerConfig {
        passive: true,
        ..peer_of(&a, 65001, &b)
    }]);
    a.speaker
        .set_originated(BTreeSet::from([net("10.1.0.0/26")]));
    b.speaker
        .set_originated(BTreeSet::from([net("10.2.0.0/26"), net("10.2.0.64/26")]));
    eventually("routes both ways", T, || async {
        a.sink.routes().len() == 2 && b.sink.routes().len() == 1
    })
    .await;
    assert_eq!(a.sink.routes()[&net("10.2.0.64/26")], b.addr);
    assert_eq!(b.sink.routes()[&net("10.1.0.0/26")], a.addr);
    let st = peer(&a.speaker).await;
    assert_eq!(st.state, State::Established);
    assert!(st.established_since.is_some());
    assert_eq!((st.prefixes_accepted, st.prefixes_advertised), (2, 1));
    assert_eq!(st.prefixes_received, 2);

    b.speaker
        .set_originated(BTreeSet::from([net("10.2.0.0/26")]));
    eventually("the withdrawal", T, || async { a.sink.routes().len() == 1 }).await;
    let c = a.speaker.counters();
    assert_eq!(c.sessions_established, 1);
    assert!(c.updates_received >= 3 && c.updates_sent >= 2, "{c:?}");

    // A Cease: b drops the session and a's routes from its sink.
    a.speaker.shutdown().await;
    eventually("b to see the Cease", T, || async {
        b.sink.routes().is_empty()
            && peer(&b.speaker)
                .await
                .last_error
                .is_some_and(|e| e.contains("cease"))
    })
    .await;
    assert!(
        a.sink.routes().is_empty(),
        "a shutdown removes learned routes"
    );
    assert!(a.speaker.status().await.is_empty());
    b.speaker.shutdown().await;
}

#[tokio::test]
async fn both_active_collide_into_one_session() {
    let a = node("127.0.0.21", 65000, MemorySink::new());
    let b = node("127.0.0.22", 65000, MemorySink::new());
    a.speaker.set_peers(vec![peer_of(&b, 65000, &a)]);
    b.speaker.set_peers(vec![peer_of(&a, 65000, &b)]);
    b.speaker
        .set_originated(BTreeSet::from([net("10.3.0.0/24")]));
    eventually("Established", T, || async {
        state(&a.speaker).await == [State::Established]
            && state(&b.speaker).await == [State::Established]
    })
    .await;
    eventually("the route", T, || async { a.sink.routes().len() == 1 }).await;
    // It stays up: the losing connection went away without taking the session along.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(state(&a.speaker).await, [State::Established]);
    assert_eq!(a.speaker.counters().sessions_dropped, 0);
    assert_eq!(b.speaker.counters().sessions_dropped, 0);
}

#[tokio::test]
async fn restart_keeps_routes_until_end_of_rib_then_sweeps_the_rest() {
    let b = node("127.0.0.32", 65002, MemorySink::new());
    b.speaker
        .set_originated(BTreeSet::from([net("10.4.0.0/24")]));
    // What the previous instance left: one route b still has, one it no longer does.
    let left =
        MemorySink::with_routes([(net("10.4.0.0/24"), b.addr), (net("10.5.0.0/24"), b.addr)]);
    let a = node("127.0.0.31", 65001, left);
    assert_eq!(a.sink.routes().len(), 2, "nothing removed at start");
    b.speaker.set_peers(vec![PeerConfig {
        passive: true,
        ..peer_of(&a, 65001, &b)
    }]);
    a.speaker.set_peers(vec![peer_of(&b, 65002, &a)]);
    eventually("the sweep", T, || async { a.sink.routes().len() == 1 }).await;
    assert_eq!(a.sink.routes()[&net("10.4.0.0/24")], b.addr);
    assert_eq!(a.speaker.counters().routes_removed, 1);

    // Restart a: b keeps a's routes (stale) while it is gone.
    a.speaker
        .set_originated(BTreeSet::from([net("10.6.0.0/24")]));
    eventually("b learns a's route", T, || async {
        b.sink.routes().len() == 1
    })
    .await;
    a.speaker.shutdown_for_restart().await;
    assert_eq!(
        a.sink.routes().len(),
        1,
        "forwarding kept across the restart"
    );
    eventually("b sees the session drop", T, || async {
        peer(&b.speaker).await.state != State::Established
    })
    .await;
    assert_eq!(b.sink.routes().len(), 1, "b keeps a's routes as stale");
    let a2 = Node {
        speaker: Speaker::start(
            SpeakerConfig {
                listen: SocketAddr::new(a.addr, a.port),
                idle_hold_time: Duration::from_millis(200),
                ..SpeakerConfig::new("127.0.0.31".parse().unwrap(), 65001)
            },
            a.sink.clone(),
        )
        .unwrap(),
        ..a
    };
    a2.speaker.set_peers(vec![peer_of(&b, 65002, &a2)]);
    eventually("re-established", T, || async {
        state(&a2.speaker).await == [State::Established]
    })
    .await;
    // a2 originates nothing: b drops the stale route at a2's End-of-RIB.
    eventually("b's stale route to go", T, || async {
        b.sink.routes().is_empty()
    })
    .await;
    assert_eq!(a2.sink.routes().len(), 1);
}

#[tokio::test]
async fn more_prefixes_than_allowed_closes_the_session() {
    let a = node("127.0.0.41", 65001, MemorySink::new());
    let b = node("127.0.0.42", 65002, MemorySink::new());
    a.speaker.set_peers(vec![PeerConfig {
        max_prefixes: Some(2),
        ..peer_of(&b, 65002, &a)
    }]);
    b.speaker.set_peers(vec![peer_of(&a, 65001, &b)]);
    b.speaker.set_originated(
        ["10.7.0.0/24", "10.7.1.0/24", "10.7.2.0/24"]
            .into_iter()
            .map(net)
            .collect(),
    );
    eventually("the Cease", T, || async {
        peer(&a.speaker)
            .await
            .last_error
            .is_some_and(|e| e.contains("cease (6/1)"))
    })
    .await;
    // And it stays down: the peer would only exceed the limit again.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(state(&a.speaker).await, [State::Idle]);
    assert!(a.sink.routes().is_empty());
}

/// A hand-driven peer: what the speaker answers to bytes that do not decode.
#[tokio::test]
async fn undecodable_bytes_get_the_notification_the_codec_maps() {
    let a = node("127.0.0.51", 65001, MemorySink::new());
    let me: Ipv4Addr = "127.0.0.52".parse().unwrap();
    a.speaker.set_peers(vec![PeerConfig {
        passive: true,
        port: 1,
        ..PeerConfig::new(me.into(), 65002)
    }]);
    eventually("the peer to be configured", T, || async {
        state(&a.speaker).await == [State::Active]
    })
    .await;
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind(SocketAddr::new(me.into(), 0)).unwrap();
    let mut s: TcpStream = sock.connect(SocketAddr::new(a.addr, a.port)).await.unwrap();
    let ctx = Context::default();
    let mut wire = Vec::new();
    codec::encode(
        &Message::Open(Open::new(65002, 9, me, vec![])),
        &ctx,
        &mut wire,
    )
    .unwrap();
    // Then a header whose marker is not all ones.
    wire.extend_from_slice(&[0u8; 19]);
    s.write_all(&wire).await.unwrap();
    let mut got = Vec::new();
    let read = tokio::time::timeout(T, s.read_to_end(&mut got)).await;
    assert!(read.is_ok(), "the speaker closes the connection");
    let mut msgs = Vec::new();
    let mut rest = &got[..];
    while let Some(d) = codec::decode(rest, &ctx).unwrap() {
        rest = &rest[d.len..];
        msgs.push(d.message);
    }
    assert!(matches!(msgs[0], Message::Open(_)), "{msgs:?}");
    let Some(Message::Notification(n)) = msgs.last() else {
        panic!("no NOTIFICATION: {msgs:?}");
    };
    // Message header error, connection not synchronized.
    assert_eq!((n.code, n.subcode), (1, 1));
    eventually("status to say so", T, || async {
        peer(&a.speaker)
            .await
            .last_error
            .is_some_and(|e| e.contains("message header error"))
    })
    .await;
}

/// Routes via this node itself are never installed, whoever announces them.
#[tokio::test]
async fn routes_via_ourselves_are_not_installed() {
    let a = node("127.0.0.61", 65001, MemorySink::new());
    let me: Ipv4Addr = "127.0.0.62".parse().unwrap();
    a.speaker.set_peers(vec![PeerConfig {
        passive: true,
        ..PeerConfig::new(me.into(), 65002)
    }]);
    eventually("the peer to be configured", T, || async {
        state(&a.speaker).await == [State::Active]
    })
    .await;
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind(SocketAddr::new(me.into(), 0)).unwrap();
    let mut s = sock.connect(SocketAddr::new(a.addr, a.port)).await.unwrap();
    let ctx = Context::default();
    let update = |prefix: &str, nh: Ipv4Addr| {
        Message::Update(Update {
            attributes: PathAttributes {
                origin: Some(Origin::Igp),
                as_path: Some(AsPath::sequence(vec![65002])),
                next_hop: Some(nh),
                ..PathAttributes::default()
            },
            nlri: vec![prefix.parse().unwrap()],
            ..Update::default()
        })
    };
    let mut wire = Vec::new();
    for m in [
        Message::Open(Open::new(65002, 0, me, vec![])),
        Message::Keepalive,
    ] {
        codec::encode(&m, &ctx, &mut wire).unwrap();
    }
    // Open::new advertises 4-octet ASNs, so the session uses them.
    let ctx4 = Context {
        four_octet_as: true,
        ..ctx
    };
    for m in [
        update("10.8.0.0/24", "127.0.0.61".parse().unwrap()),
        update("10.8.1.0/24", me),
    ] {
        codec::encode(&m, &ctx4, &mut wire).unwrap();
    }
    s.write_all(&wire).await.unwrap();
    eventually("the route via the peer", T, || async {
        a.sink.routes().len() == 1
    })
    .await;
    assert_eq!(a.sink.routes()[&net("10.8.1.0/24")], IpAddr::V4(me));
    assert_eq!(
        peer(&a.speaker).await.prefixes_accepted,
        2,
        "in the RIB still"
    );
}
