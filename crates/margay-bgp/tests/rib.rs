//! Replays the sequences in tests/rib/*.txt against a Rib and compares the
//! deltas of each `flush` with the recorded ones. MARGAY_BLESS=1 re-records.
//!
//! Commands: `rib key=value…` (fresh Rib), `peer ADDR …`, `up ADDR …`,
//! `announce ADDR …`, `withdraw ADDR PREFIX,…`, `eor ADDR FAMILY`,
//! `originate PREFIX`, `unoriginate PREFIX`, `down ADDR [retain]`,
//! `restart-expired ADDR`, `refresh ADDR FAMILY`, `count ADDR FAMILY`,
//! `flush`. Output lines start with `<`.

mod common;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use margay_bgp::codec::{
    self, AddressFamily, AsPath, Context, Message, MpReach, Origin, PathAttributes, Update,
};
use margay_bgp::fsm::Negotiated;
use margay_bgp::rib::{Changes, KernelChange, PeerConfig, Rib, RibConfig};

fn family(s: &str) -> AddressFamily {
    match s {
        "ipv4" => AddressFamily::Ipv4Unicast,
        "ipv6" => AddressFamily::Ipv6Unicast,
        _ => panic!("family {s}"),
    }
}

fn opts(words: &[&str]) -> HashMap<String, String> {
    words
        .iter()
        .map(|w| {
            let (k, v) = w.split_once('=').unwrap_or((w, ""));
            (k.to_string(), v.to_string())
        })
        .collect()
}

fn list<T: std::str::FromStr>(s: &str) -> Vec<T>
where
    T::Err: std::fmt::Debug,
{
    s.split(',')
        .filter(|x| !x.is_empty())
        .map(|x| x.parse().unwrap())
        .collect()
}

fn announce(o: &HashMap<String, String>) -> Update {
    let nlri: Vec<IpNet> = list(&o["nlri"]);
    let attributes = PathAttributes {
        origin: Some(match o.get("origin").map(String::as_str) {
            Some("egp") => Origin::Egp,
            Some("incomplete") => Origin::Incomplete,
            _ => Origin::Igp,
        }),
        as_path: Some(AsPath::sequence(
            o.get("path").map(|p| list(p)).unwrap_or_default(),
        )),
        next_hop: o.get("nh").map(|n| n.parse().unwrap()),
        med: o.get("med").map(|n| n.parse().unwrap()),
        local_pref: o.get("lp").map(|n| n.parse().unwrap()),
        originator_id: o.get("originator").map(|n| n.parse().unwrap()),
        cluster_list: o.get("cluster-list").map(|c| list(c)).unwrap_or_default(),
        communities: o.get("communities").map(|c| list(c)).unwrap_or_default(),
        ..PathAttributes::default()
    };
    let v4: Vec<Ipv4Net> = nlri
        .iter()
        .filter_map(|n| if let IpNet::V4(n) = n { Some(*n) } else { None })
        .collect();
    let v6: Vec<Ipv6Net> = nlri
        .iter()
        .filter_map(|n| if let IpNet::V6(n) = n { Some(*n) } else { None })
        .collect();
    Update {
        attributes,
        mp_reach: o.get("nh6").map(|nh| MpReach {
            next_hop: nh.parse().unwrap(),
            link_local: None,
            nlri: v6,
        }),
        nlri: v4,
        ..Update::default()
    }
}

fn show_update(u: &Update) -> String {
    if let Some(f) = u.end_of_rib_family() {
        return format!("end-of-rib {f}");
    }
    let mut s = String::new();
    let nets = |v: Vec<String>| v.join(",");
    if !u.withdrawn.is_empty() {
        write!(
            s,
            " withdraw={}",
            nets(u.withdrawn.iter().map(|n| n.to_string()).collect())
        )
        .unwrap();
    }
    if let Some(un) = &u.mp_unreach {
        write!(
            s,
            " withdraw6={}",
            nets(un.withdrawn.iter().map(|n| n.to_string()).collect())
        )
        .unwrap();
    }
    let a = &u.attributes;
    if let Some(o) = a.origin {
        write!(s, " origin={o:?}").unwrap();
    }
    if let Some(p) = &a.as_path {
        write!(s, " path={:?}", p.segments).unwrap();
    }
    if let Some(nh) = a.next_hop {
        write!(s, " nh={nh}").unwrap();
    }
    if let Some(m) = a.med {
        write!(s, " med={m}").unwrap();
    }
    if let Some(lp) = a.local_pref {
        write!(s, " lp={lp}").unwrap();
    }
    if let Some(id) = a.originator_id {
        write!(s, " originator={id}").unwrap();
    }
    if !a.cluster_list.is_empty() {
        write!(s, " cluster-list={:?}", a.cluster_list).unwrap();
    }
    if !a.communities.is_empty() {
        write!(s, " communities={:?}", a.communities).unwrap();
    }
    if let Some(r) = &u.mp_reach {
        write!(
            s,
            " nh6={} nlri6={}",
            r.next_hop,
            nets(r.nlri.iter().map(|n| n.to_string()).collect())
        )
        .unwrap();
    }
    if !u.nlri.is_empty() {
        write!(
            s,
            " nlri={}",
            nets(u.nlri.iter().map(|n| n.to_string()).collect())
        )
        .unwrap();
    }
    s.trim_start().to_string()
}

/// Every UPDATE must encode within the session's limits.
fn check_encodes(u: &Update, ctx: &Context) {
    let mut raw = Vec::new();
    codec::encode(&Message::Update(u.clone()), ctx, &mut raw)
        .unwrap_or_else(|e| panic!("{e}: {u:?}"));
    let back = codec::decode(&raw, ctx).unwrap().unwrap();
    assert_eq!(back.message, Message::Update(u.clone()));
}

struct Harness {
    rib: Option<Rib>,
    peers: HashMap<IpAddr, (u32, Context)>,
}

impl Harness {
    fn rib(&mut self) -> &mut Rib {
        self.rib.as_mut().expect("rib first")
    }

    fn show(&self, changes: Changes, out: &mut String) {
        for k in changes.kernel {
            match k {
                KernelChange::Install(p, nh) => {
                    writeln!(out, "< kernel install {p} via {nh}").unwrap()
                }
                KernelChange::Remove(p) => writeln!(out, "< kernel remove {p}").unwrap(),
            }
        }
        for (peer, updates) in changes.updates {
            for u in updates {
                check_encodes(&u, &self.peers[&peer].1);
                writeln!(out, "< to {peer}: {}", show_update(&u)).unwrap();
            }
        }
    }

    fn run(&mut self, line: &str, out: &mut String) {
        let words: Vec<&str> = line.split_whitespace().collect();
        let addr = || -> IpAddr { words[1].parse().unwrap() };
        match words[0] {
            "rib" => {
                let o = opts(&words[1..]);
                self.rib = Some(Rib::new(RibConfig {
                    local_as: o["local-as"].parse().unwrap(),
                    router_id: o["id"].parse().unwrap(),
                    cluster_id: o.get("cluster").map(|c| c.parse().unwrap()),
                }));
                self.peers.clear();
            }
            "peer" => {
                let o = opts(&words[2..]);
                let remote_as = o["as"].parse().unwrap();
                self.peers.insert(addr(), (remote_as, Context::default()));
                self.rib().add_peer(PeerConfig {
                    address: addr(),
                    remote_as,
                    rr_client: o.contains_key("client"),
                    next_hop_self: o.contains_key("nhs"),
                    local_v4: o.get("v4").map(|a| a.parse().unwrap()),
                    local_v6: o.get("v6").map(|a| a.parse().unwrap()),
                });
            }
            "up" => {
                let o = opts(&words[2..]);
                let four_octet_as = !o.contains_key("as2");
                let entry = self.peers.get_mut(&addr()).unwrap();
                entry.1.four_octet_as = four_octet_as;
                let n = Negotiated {
                    remote_as: entry.0,
                    remote_id: o["id"].parse().unwrap(),
                    hold_time: 90,
                    keepalive_time: 30,
                    families: o
                        .get("families")
                        .map_or(vec![AddressFamily::Ipv4Unicast], |f| {
                            f.split(',').map(family).collect()
                        }),
                    four_octet_as,
                    route_refresh: true,
                    graceful_restart: None,
                };
                self.rib().peer_up(addr(), &n);
            }
            "announce" => {
                let u = announce(&opts(&words[2..]));
                self.rib().apply_update(addr(), u);
            }
            "withdraw" => {
                let nets: Vec<IpNet> = list(words[2]);
                let mut u = Update::default();
                for n in nets {
                    match n {
                        IpNet::V4(n) => u.withdrawn.push(n),
                        IpNet::V6(n) => u
                            .mp_unreach
                            .get_or_insert_with(Default::default)
                            .withdrawn
                            .push(n),
                    }
                }
                self.rib().apply_update(addr(), u);
            }
            "eor" => self
                .rib()
                .apply_update(addr(), Update::end_of_rib(family(words[2]))),
            "originate" => self.rib().originate(words[1].parse().unwrap()),
            "unoriginate" => self.rib().withdraw_local(words[1].parse().unwrap()),
            "down" => self
                .rib()
                .peer_down(addr(), words.get(2) == Some(&"retain")),
            "restart-expired" => self.rib().restart_timer_expired(addr()),
            "refresh" => self.rib().resend(addr(), family(words[2])),
            "count" => {
                let n = self.rib().prefix_count(addr(), family(words[2]));
                writeln!(out, "< count {n}").unwrap();
            }
            "flush" => {
                let changes = self.rib().flush();
                self.show(changes, out);
            }
            w => panic!("command {w}"),
        }
    }
}

fn replay(text: &str) -> String {
    let mut h = Harness {
        rib: None,
        peers: HashMap::new(),
    };
    let mut out = String::new();
    for line in text.lines() {
        if line.starts_with("< ") {
            continue;
        }
        out.push_str(line);
        out.push('\n');
        if !line.starts_with('#') && !line.trim().is_empty() {
            h.run(line, &mut out);
        }
    }
    out
}

#[test]
fn recorded_sequences() {
    common::check_recorded("rib", 5, replay);
}

#[test]
fn identical_attributes_are_packed_into_few_updates() {
    let mut rib = common::three_peer_rib();
    let from = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2));
    let n = 10_000u32;
    let prefixes: Vec<Ipv4Net> = (0..n)
        .map(|i| Ipv4Net::new(Ipv4Addr::from((10 << 24) | (i << 8)), 24).unwrap())
        .collect();
    for chunk in prefixes.chunks(800) {
        rib.apply_update(
            from,
            Update {
                attributes: PathAttributes {
                    origin: Some(Origin::Igp),
                    as_path: Some(AsPath::sequence(vec![64513])),
                    next_hop: Some(Ipv4Addr::new(10, 0, 0, 2)),
                    ..PathAttributes::default()
                },
                nlri: chunk.to_vec(),
                ..Update::default()
            },
        );
    }
    assert_eq!(
        rib.prefix_count(from, AddressFamily::Ipv4Unicast),
        n as usize
    );
    let changes = rib.flush();
    assert_eq!(changes.kernel.len(), n as usize);
    assert_eq!(changes.updates.len(), 2);
    let ctx = Context {
        four_octet_as: true,
        ..Context::default()
    };
    for (_, updates) in &changes.updates {
        let total: usize = updates.iter().map(|u| u.nlri.len()).sum();
        assert_eq!(total, n as usize);
        // A /24 takes 4 bytes: about 1000 per 4096-byte message.
        assert!(updates.len() <= 11, "{} updates", updates.len());
        let mut sizes = Vec::new();
        for u in updates {
            let mut raw = Vec::new();
            codec::encode(&Message::Update(u.clone()), &ctx, &mut raw).unwrap();
            sizes.push(raw.len());
        }
        // All but the last are nearly full.
        assert!(
            sizes[..sizes.len() - 1].iter().all(|&s| s > 4090),
            "{sizes:?}"
        );
    }
    // Nothing changed: a second flush is empty.
    assert_eq!(rib.flush(), Changes::default());
}
