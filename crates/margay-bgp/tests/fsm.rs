//! Replays the event sequences in tests/fsm/*.txt and compares the actions
//! with the recorded ones (holo's conformance style). Set MARGAY_BLESS=1 to
//! re-record after an intended change, then review the diff.
//!
//! File format: `config key=value…` starts a fresh session; `> Event` feeds
//! an event; `< Action` lines are the recorded output; `#` lines are kept.

mod common;

use std::net::Ipv4Addr;

use margay_bgp::codec::{
    self, AddressFamily, Capability, Context, GracefulRestart, Notification, Open, RouteRefresh,
};
use margay_bgp::fsm::{
    resolve_collision, Direction, Event, GracefulRestartConfig, Session, SessionConfig, Timer,
};

fn family(s: &str) -> AddressFamily {
    match s {
        "ipv4" => AddressFamily::Ipv4Unicast,
        "ipv6" => AddressFamily::Ipv6Unicast,
        _ => panic!("family {s}"),
    }
}

fn kv(args: &[&str]) -> Vec<(String, String)> {
    args.iter()
        .map(|a| {
            let (k, v) = a.split_once('=').unwrap_or((a, ""));
            (k.to_string(), v.to_string())
        })
        .collect()
}

fn config(args: &[&str]) -> SessionConfig {
    let mut c = SessionConfig::new(64512, 64512, Ipv4Addr::new(10, 0, 0, 1));
    for (k, v) in kv(args) {
        match k.as_str() {
            "local-as" => c.local_as = v.parse().unwrap(),
            "remote-as" => c.remote_as = v.parse().unwrap(),
            "id" => c.router_id = v.parse().unwrap(),
            "hold" => c.hold_time = v.parse().unwrap(),
            "families" => c.families = v.split(',').map(family).collect(),
            "gr" => {
                c.graceful_restart = Some(GracefulRestartConfig {
                    restart_time: v.parse().unwrap(),
                    forwarding_preserved: true,
                })
            }
            "max-prefixes" => c.max_prefixes = Some(v.parse().unwrap()),
            _ => panic!("config {k}"),
        }
    }
    c
}

fn open(args: &[&str]) -> Open {
    let (mut asn, mut hold, mut id, mut caps) =
        (64512u32, 90u16, Ipv4Addr::new(10, 0, 0, 2), vec![]);
    let mut as4 = false;
    for (k, v) in kv(args) {
        match k.as_str() {
            "as" => asn = v.parse().unwrap(),
            "hold" => hold = v.parse().unwrap(),
            "id" => id = v.parse().unwrap(),
            "caps" => {
                for c in v.split(',') {
                    match c.split_once(':').unwrap_or((c, "")) {
                        ("mp4", _) => {
                            caps.push(Capability::Multiprotocol(AddressFamily::Ipv4Unicast))
                        }
                        ("mp6", _) => {
                            caps.push(Capability::Multiprotocol(AddressFamily::Ipv6Unicast))
                        }
                        ("rr", _) => caps.push(Capability::RouteRefresh),
                        ("as4", _) => as4 = true,
                        ("gr", t) => caps.push(Capability::GracefulRestart(GracefulRestart {
                            restart_state: false,
                            restart_time: t.parse().unwrap(),
                            families: vec![(AddressFamily::Ipv4Unicast, true)],
                        })),
                        _ => panic!("cap {c}"),
                    }
                }
            }
            _ => panic!("open {k}"),
        }
    }
    if as4 {
        Open::new(asn, hold, id, caps)
    } else {
        Open {
            my_as: u16::try_from(asn).unwrap(),
            hold_time: hold,
            bgp_id: id,
            capabilities: caps,
        }
    }
}

fn timer(s: &str) -> Timer {
    match s {
        "ConnectRetry" => Timer::ConnectRetry,
        "Hold" => Timer::Hold,
        "Keepalive" => Timer::Keepalive,
        "IdleHold" => Timer::IdleHold,
        _ => panic!("timer {s}"),
    }
}

fn event(session: &Session, line: &str) -> Event {
    let words: Vec<&str> = line.split_whitespace().collect();
    match words[0] {
        "ManualStart" => Event::ManualStart,
        "ManualStartPassive" => Event::ManualStartPassive,
        "ManualStop" => Event::ManualStop,
        "TcpConnectionConfirmed" => Event::TcpConnectionConfirmed,
        "TcpConnectionAcknowledged" => Event::TcpConnectionAcknowledged,
        "TcpConnectionFails" => Event::TcpConnectionFails,
        "OpenCollisionDump" => Event::OpenCollisionDump,
        "Keepalive" => Event::Keepalive,
        "Expire" => Event::TimerExpired(timer(words[1])),
        "Open" => Event::Open(open(&words[1..])),
        "Notification" => Event::Notification(Notification {
            code: words[1].parse().unwrap(),
            subcode: words[2].parse().unwrap(),
            data: vec![],
        }),
        "RouteRefresh" => Event::RouteRefresh(RouteRefresh::new(family(words[1]))),
        "PrefixCount" => Event::PrefixCount(family(words[1]), words[2].parse().unwrap()),
        "Bytes" => {
            let ctx = session
                .negotiated()
                .map_or(Context::default(), |n| n.context());
            match codec::decode(&common::hex(&words[1..].join(" ")), &ctx) {
                Ok(Some(d)) => d.message.into(),
                Ok(None) => panic!("incomplete message: {line}"),
                Err(e) => Event::DecodeError(e),
            }
        }
        w => panic!("event {w}"),
    }
}

fn replay(text: &str) -> String {
    let mut out = String::new();
    let mut session: Option<Session> = None;
    for line in text.lines() {
        if line.starts_with("< ") {
            continue;
        }
        out.push_str(line);
        out.push('\n');
        if let Some(args) = line.strip_prefix("config") {
            let args: Vec<&str> = args.split_whitespace().collect();
            session = Some(Session::new(config(&args)));
        } else if let Some(ev) = line.strip_prefix("> ") {
            let s = session.as_mut().expect("config first");
            let e = event(s, ev);
            for a in s.handle(e) {
                out.push_str(&format!("< {a:?}\n"));
            }
            out.push_str(&format!("< state {:?}\n", s.state()));
        }
    }
    out
}

#[test]
fn recorded_sequences() {
    common::check_recorded("fsm", 8, replay);
}

#[test]
fn collision_keeps_connection_of_higher_id() {
    let (low, high) = (Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2));
    assert_eq!(resolve_collision(high, low, None), Direction::Outgoing);
    assert_eq!(resolve_collision(low, high, None), Direction::Incoming);
    assert_eq!(
        resolve_collision(high, low, Some(Direction::Incoming)),
        Direction::Incoming
    );
    // Compared as unsigned integers, not lexically.
    assert_eq!(
        resolve_collision(Ipv4Addr::new(9, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 1), None),
        Direction::Incoming
    );
}
