//! Interoperability with real BGP implementations: BIRD 2 (and GoBGP for one case), each in
//! throwaway network namespaces wired with veths, against speakers running inside their own
//! namespace and programming its kernel. Needs root and the daemons; otherwise each test
//! prints `skipped: <reason>` and returns.

mod support;

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::Duration;

use ipnet::IpNet;
use margay_bgp::speaker::{PeerConfig, SpeakerConfig};
use margay_sys::netlink::{Route, RouteMonitor};
use margay_sys::netns::NetNs;
use support::{eventually, kernel_routes, lan, link, missing, wait_for, Bird, NsSpeaker, TestNs};

const T: Duration = Duration::from_secs(20);

macro_rules! require {
    ($($tool:expr),*) => {
        if let Some(reason) = missing(&[$($tool),*]) {
            eprintln!("skipped: {reason}");
            return;
        }
    };
}

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn speaker_config(id: &str, asn: u32) -> SpeakerConfig {
    SpeakerConfig {
        connect_retry_time: Duration::from_secs(2),
        idle_hold_time: Duration::from_millis(500),
        graceful_restart_time: Some(Duration::from_secs(60)),
        ..SpeakerConfig::new(id.parse().unwrap(), asn)
    }
}

fn peer(addr: &str, asn: u32, local: &str) -> PeerConfig {
    PeerConfig {
        local_address: Some(ip(local)),
        hold_time: 9,
        ..PeerConfig::new(ip(addr), asn)
    }
}

/// BIRD at 10.0.0.2 (AS 65002) with one eBGP session to Margay at 10.0.0.1 (AS 65001),
/// exporting `statics` (blackholes) and programming what it learns into its kernel.
fn bird_ebgp(statics: &[&str], extra: &str) -> String {
    let routes: String = statics
        .iter()
        .map(|r| format!("  route {r} blackhole;\n"))
        .collect();
    format!(
        r#"router id 10.0.0.2;
protocol device {{ scan time 10; }}
protocol kernel {{ ipv4 {{ import none; export where source = RTS_BGP; }}; }}
protocol static s1 {{ ipv4;
{routes}}}
protocol bgp margay {{
  local 10.0.0.2 as 65002;
  neighbor 10.0.0.1 as 65001;
  hold time 9;
  connect retry time 1;
  error wait time 1, 5;
  {extra}
  ipv4 {{ import all; export where source = RTS_STATIC; }};
}}
"#
    )
}

struct Pair {
    m: TestNs,
    b: TestNs,
}

fn pair() -> Pair {
    let m = TestNs::new("mgybgp");
    let b = m.sibling();
    link(&m, "10.0.0.1/24", &b, "10.0.0.2/24", 0);
    Pair { m, b }
}

fn exchange_with_bird(margay_passive: bool) {
    require!("bird", "birdc");
    let Pair { m, b } = pair();
    let statics = ["10.2.0.0/26", "10.2.0.64/26"];
    let bird = Bird::start(
        &b,
        &bird_ebgp(&statics, if margay_passive { "" } else { "passive on;" }),
    );
    let sp = NsSpeaker::start(&m, speaker_config("10.0.0.1", 65001));
    sp.speaker.set_peers(vec![PeerConfig {
        passive: margay_passive,
        ..peer("10.0.0.2", 65002, "10.0.0.1")
    }]);
    sp.speaker
        .set_originated(BTreeSet::from([net("10.1.0.0/26")]));
    let ctx = || format!("{}\n{}", sp.status_text(), bird.log());
    eventually(
        "Established on both sides",
        T,
        || sp.established() && bird.established("margay"),
        ctx,
    );

    // BIRD's routes in Margay's kernel, with our protocol.
    eventually(
        "BIRD's routes in Margay's kernel",
        T,
        || kernel_routes(&m, "77").lines().count() == 2,
        || kernel_routes(&m, "all"),
    );
    let routes = kernel_routes(&m, "77");
    for r in statics {
        assert!(routes.contains(&format!("{r} via 10.0.0.2")), "{routes}");
    }
    // Ours in BIRD's table and, through its kernel protocol, its kernel.
    eventually(
        "Margay's route in BIRD",
        T,
        || {
            bird.birdc(&["show", "route", "10.1.0.0/26"])
                .contains("via 10.0.0.1")
        },
        || bird.birdc(&["show", "route"]),
    );
    eventually(
        "Margay's route in BIRD's kernel",
        T,
        || kernel_routes(&b, "bird").contains("10.1.0.0/26 via 10.0.0.1"),
        || kernel_routes(&b, "all"),
    );
    let st = sp.block_on(sp.speaker.status()).remove(0);
    assert_eq!(
        (st.prefixes_accepted, st.prefixes_advertised),
        (2, 1),
        "{st:?}"
    );

    // Withdrawals both ways.
    sp.speaker.set_originated(BTreeSet::new());
    eventually(
        "the withdrawal in BIRD",
        T,
        || !bird.birdc(&["show", "route"]).contains("10.1.0.0/26"),
        || bird.birdc(&["show", "route"]),
    );
    assert!(wait_for(T, || !kernel_routes(&b, "bird").contains("10.1.0.0/26")));
    bird.reconfigure(&bird_ebgp(
        &statics[..1],
        if margay_passive { "" } else { "passive on;" },
    ));
    eventually(
        "BIRD's withdrawal in Margay's kernel",
        T,
        || kernel_routes(&m, "77").lines().count() == 1,
        || kernel_routes(&m, "77"),
    );
    assert!(kernel_routes(&m, "77").contains("10.2.0.0/26 via 10.0.0.2"));
    assert!(
        sp.established(),
        "the session survives BIRD's reconfiguration"
    );
}

/// Margay connects, BIRD is passive.
#[test]
fn bird_passive_margay_active_routes_both_ways() {
    exchange_with_bird(false);
}

/// BIRD connects, Margay is passive.
#[test]
fn bird_active_margay_passive_routes_both_ways() {
    exchange_with_bird(true);
}

#[test]
fn md5_right_password_establishes_wrong_one_never_does() {
    require!("bird", "birdc");
    let Pair { m, b } = pair();
    let bird = Bird::start(&b, &bird_ebgp(&["10.2.0.0/26"], r#"password "s3cret";"#));
    let sp = NsSpeaker::start(&m, speaker_config("10.0.0.1", 65001));
    sp.speaker.set_peers(vec![PeerConfig {
        password: Some("s3cret".into()),
        ..peer("10.0.0.2", 65002, "10.0.0.1")
    }]);
    let ctx = || format!("{}\n{}", sp.status_text(), bird.log());
    eventually(
        "Established with the right password",
        T,
        || sp.established() && bird.established("margay"),
        ctx,
    );
    assert!(wait_for(T, || kernel_routes(&m, "77").contains("10.2.0.0/26")));

    // The same peer with another password: the session restarts and never comes back.
    sp.speaker.set_peers(vec![PeerConfig {
        password: Some("wrong".into()),
        ..peer("10.0.0.2", 65002, "10.0.0.1")
    }]);
    assert!(
        wait_for(Duration::from_secs(5), || !bird.established("margay")),
        "the reconfigured session went down"
    );
    let came_up = wait_for(Duration::from_secs(5), || {
        sp.established() || bird.established("margay")
    });
    assert!(!came_up, "established with a wrong password:\n{}", ctx());
    assert!(
        kernel_routes(&m, "77").is_empty(),
        "routes dropped with the session"
    );
    // And it is the signature that keeps it down: BIRD logs the failed attempts as its own.
    let protocols = bird.birdc(&["show", "protocols", "all", "margay"]);
    assert!(!protocols.contains("Established"), "{protocols}");
}

#[test]
fn graceful_restart_keeps_routes_on_both_sides() {
    require!("bird", "birdc");
    let Pair { m, b } = pair();
    let statics = ["10.2.0.0/26", "10.2.0.64/26"];
    let bird = Bird::start(&b, &bird_ebgp(&statics, "graceful restart on;"));
    let config = speaker_config("10.0.0.1", 65001);
    let peers = vec![peer("10.0.0.2", 65002, "10.0.0.1")];
    let ours = BTreeSet::from([net("10.1.0.0/26")]);
    let sp = NsSpeaker::start(&m, config.clone());
    sp.speaker.set_peers(peers.clone());
    sp.speaker.set_originated(ours.clone());
    let ctx = || format!("{}\n{}", sp.status_text(), bird.log());
    eventually(
        "Established",
        T,
        || sp.established() && bird.established("margay"),
        ctx,
    );
    eventually(
        "routes both ways",
        T,
        || {
            kernel_routes(&m, "77").lines().count() == 2
                && bird
                    .birdc(&["show", "route", "10.1.0.0/26"])
                    .contains("via 10.0.0.1")
        },
        || bird.birdc(&["show", "route"]),
    );

    // Watch Margay's kernel from here on: BIRD's routes must never be deleted.
    let netns = NetNs::open(&support::netns_path(&m)).unwrap();
    let mut monitor = RouteMonitor::new_in(&netns).unwrap();
    sp.stop_for_restart();
    assert!(
        wait_for(T, || !bird.established("margay")),
        "BIRD sees the session go"
    );
    // The gap: BIRD keeps our route (stale), our kernel keeps BIRD's.
    std::thread::sleep(Duration::from_secs(2));
    let held = bird.birdc(&["show", "route", "all", "10.1.0.0/26"]);
    assert!(
        held.contains("10.1.0.0/26"),
        "BIRD dropped our route in the gap:\n{held}"
    );
    assert!(
        kernel_routes(&b, "bird").contains("10.1.0.0/26"),
        "and from its kernel"
    );
    assert_eq!(kernel_routes(&m, "77").lines().count(), 2);

    let sp = NsSpeaker::start(&m, config);
    sp.speaker.set_peers(peers);
    sp.speaker.set_originated(ours);
    let ctx = || format!("{}\n{}", sp.status_text(), bird.log());
    eventually(
        "re-established",
        T,
        || sp.established() && bird.established("margay"),
        ctx,
    );
    // BIRD's End-of-RIB has come once the peer has accepted and advertised routes; give the
    // sweep a moment, then check nothing of BIRD's was removed at any point.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(kernel_routes(&m, "77").lines().count(), 2);
    let deleted: Vec<Route> = monitor
        .drain(Duration::from_millis(200))
        .unwrap()
        .into_iter()
        .filter(|(added, r)| !added && r.protocol == Route::PROTO_MARGAY)
        .map(|(_, r)| r)
        .collect();
    assert!(
        deleted.is_empty(),
        "kernel routes removed during the restart: {deleted:?}"
    );
    let after = bird.birdc(&["show", "route", "all", "10.1.0.0/26"]);
    assert!(after.contains("via 10.0.0.1"), "{after}");
    assert!(
        !after.contains("stale"),
        "refreshed after our End-of-RIB: {after}"
    );
}

/// iBGP route-reflector config for BIRD: `me` with sessions to `peers` (address, rr
/// client?), exporting `statics`.
fn bird_ibgp(me: &str, peers: &[(&str, bool)], statics: &[&str], cluster: Option<&str>) -> String {
    let routes: String = statics
        .iter()
        .map(|r| format!("  route {r} blackhole;\n"))
        .collect();
    let mut conf = format!(
        r#"router id {me};
protocol device {{ scan time 10; }}
protocol direct {{ ipv4; }}
protocol kernel {{ ipv4 {{ import none; export where source = RTS_BGP; }}; }}
protocol static s1 {{ ipv4;
{routes}}}
"#
    );
    for (i, (addr, client)) in peers.iter().enumerate() {
        let rr = match (client, cluster) {
            (true, Some(c)) => format!("rr client; rr cluster id {c};"),
            _ => String::new(),
        };
        conf += &format!(
            r#"protocol bgp p{i} {{
  local {me} as 65000;
  direct;
  neighbor {addr} as 65000;
  hold time 9;
  connect retry time 1;
  error wait time 1, 5;
  {rr}
  ipv4 {{ import all; export where source ~ [RTS_STATIC, RTS_BGP]; }};
}}
"#
        );
    }
    conf
}

#[test]
fn bird_reflects_between_two_margay_clients() {
    require!("bird", "birdc");
    let r = TestNs::new("mgybgp");
    let (c1, c2) = (r.sibling(), r.sibling());
    lan(
        &r,
        "10.0.0.254/24",
        &[(&c1, "10.0.0.1/24"), (&c2, "10.0.0.2/24")],
    );
    let bird = Bird::start(
        &r,
        &bird_ibgp(
            "10.0.0.254",
            &[("10.0.0.1", true), ("10.0.0.2", true)],
            &[],
            Some("10.0.0.254"),
        ),
    );
    let s1 = NsSpeaker::start(&c1, speaker_config("10.0.0.1", 65000));
    let s2 = NsSpeaker::start(&c2, speaker_config("10.0.0.2", 65000));
    s1.speaker
        .set_peers(vec![peer("10.0.0.254", 65000, "10.0.0.1")]);
    s2.speaker
        .set_peers(vec![peer("10.0.0.254", 65000, "10.0.0.2")]);
    s1.speaker
        .set_originated(BTreeSet::from([net("10.11.0.0/26")]));
    s2.speaker
        .set_originated(BTreeSet::from([net("10.12.0.0/26")]));
    let ctx = || format!("{}\n{}\n{}", s1.status_text(), s2.status_text(), bird.log());
    eventually(
        "both clients Established",
        T,
        || s1.established() && s2.established(),
        ctx,
    );
    eventually(
        "client 1's route in client 2's kernel",
        T,
        || kernel_routes(&c2, "77").contains("10.11.0.0/26 via 10.0.0.1"),
        || kernel_routes(&c2, "all"),
    );
    eventually(
        "client 2's route in client 1's kernel",
        T,
        || kernel_routes(&c1, "77").contains("10.12.0.0/26 via 10.0.0.2"),
        || kernel_routes(&c1, "all"),
    );
    // Its own route does not come back to a client as something to install.
    assert!(!kernel_routes(&c1, "77").contains("10.11.0.0/26"));
}

#[test]
fn margay_reflects_between_two_bird_clients() {
    require!("bird", "birdc");
    let r = TestNs::new("mgybgp");
    let (c1, c2) = (r.sibling(), r.sibling());
    lan(
        &r,
        "10.0.0.254/24",
        &[(&c1, "10.0.0.1/24"), (&c2, "10.0.0.2/24")],
    );
    let b1 = Bird::start(
        &c1,
        &bird_ibgp(
            "10.0.0.1",
            &[("10.0.0.254", false)],
            &["10.21.0.0/26"],
            None,
        ),
    );
    let b2 = Bird::start(
        &c2,
        &bird_ibgp(
            "10.0.0.2",
            &[("10.0.0.254", false)],
            &["10.22.0.0/26"],
            None,
        ),
    );
    let sp = NsSpeaker::start(
        &r,
        SpeakerConfig {
            cluster_id: Some("10.0.0.254".parse().unwrap()),
            ..speaker_config("10.0.0.254", 65000)
        },
    );
    sp.speaker.set_peers(
        ["10.0.0.1", "10.0.0.2"]
            .map(|a| PeerConfig {
                rr_client: true,
                ..peer(a, 65000, "10.0.0.254")
            })
            .to_vec(),
    );
    let ctx = || format!("{}\n{}\n{}", sp.status_text(), b1.log(), b2.log());
    eventually("both clients Established", T, || sp.established(), ctx);
    for (bird, prefix, from) in [
        (&b2, "10.21.0.0/26", "10.0.0.1"),
        (&b1, "10.22.0.0/26", "10.0.0.2"),
    ] {
        eventually(
            "the reflected route",
            T,
            || {
                bird.birdc(&["show", "route", prefix])
                    .contains(&format!("via {from}"))
            },
            || bird.birdc(&["show", "route", "all"]),
        );
        let all = bird.birdc(&["show", "route", "all", prefix]);
        assert!(all.contains(&format!("BGP.originator_id: {from}")), "{all}");
        assert!(all.contains("BGP.cluster_list: 10.0.0.254"), "{all}");
    }
    // The reflector installs both in its own kernel.
    eventually(
        "both in the reflector's kernel",
        T,
        || {
            let k = kernel_routes(&r, "77");
            k.contains("10.21.0.0/26 via 10.0.0.1") && k.contains("10.22.0.0/26 via 10.0.0.2")
        },
        || kernel_routes(&r, "all"),
    );
}

/// GoBGP as the second implementation: gobgpd at 10.0.0.2, routes added with its CLI.
#[test]
fn gobgp_routes_both_ways() {
    require!("gobgpd", "gobgp");
    let Pair { m, b } = pair();
    // gobgpd's API listens on loopback.
    b.ip("link set lo up");
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("gobgpd.toml");
    std::fs::write(
        &conf,
        r#"[global.config]
  as = 65002
  router-id = "10.0.0.2"
  local-address-list = ["10.0.0.2"]
[[neighbors]]
  [neighbors.config]
    neighbor-address = "10.0.0.1"
    peer-as = 65001
  [neighbors.timers.config]
    connect-retry = 1
    hold-time = 9
    keepalive-interval = 3
"#,
    )
    .unwrap();
    let log = std::fs::File::create(dir.path().join("gobgpd.log")).unwrap();
    let daemon = support::Daemon(
        std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                b.name(),
                "gobgpd",
                "-t",
                "toml",
                "--api-hosts",
                "127.0.0.1:50051",
                "-f",
            ])
            .arg(&conf)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting gobgpd"),
    );
    let gobgp = |args: &[&str]| {
        let mut argv = vec![
            "ip",
            "netns",
            "exec",
            b.name(),
            "gobgp",
            "-u",
            "127.0.0.1",
            "-p",
            "50051",
        ];
        argv.extend(args);
        let out = std::process::Command::new(argv[0])
            .args(&argv[1..])
            .output()
            .unwrap();
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let gobgp_log = || std::fs::read_to_string(dir.path().join("gobgpd.log")).unwrap_or_default();
    assert!(
        wait_for(T, || gobgp(&["neighbor"]).is_some()),
        "gobgpd API did not come up: {}",
        gobgp_log()
    );
    assert!(daemon.running(), "gobgpd exited: {}", gobgp_log());
    gobgp(&["global", "rib", "add", "10.2.0.0/26", "-a", "ipv4"]).expect("adding a route");
    let sp = NsSpeaker::start(&m, speaker_config("10.0.0.1", 65001));
    sp.speaker
        .set_peers(vec![peer("10.0.0.2", 65002, "10.0.0.1")]);
    sp.speaker
        .set_originated(BTreeSet::from([net("10.1.0.0/26")]));
    let ctx = || format!("{}\n{}", sp.status_text(), gobgp_log());
    eventually(
        "Established",
        T,
        || sp.established() && gobgp(&["neighbor"]).is_some_and(|s| s.contains("Establ")),
        ctx,
    );
    eventually(
        "GoBGP's route in Margay's kernel",
        T,
        || kernel_routes(&m, "77").contains("10.2.0.0/26 via 10.0.0.2"),
        || kernel_routes(&m, "all"),
    );
    eventually(
        "ours in GoBGP's RIB",
        T,
        || gobgp(&["global", "rib", "-a", "ipv4"]).is_some_and(|s| s.contains("10.1.0.0/26")),
        || gobgp(&["global", "rib", "-a", "ipv4"]).unwrap_or_default(),
    );
    let rib = gobgp(&["global", "rib", "-a", "ipv4", "10.1.0.0/26"]).unwrap();
    assert!(
        rib.contains("10.0.0.1") && rib.contains("65001"),
        "next hop and AS path: {rib}"
    );
    // Withdrawals both ways.
    gobgp(&["global", "rib", "del", "10.2.0.0/26", "-a", "ipv4"]).unwrap();
    assert!(
        wait_for(T, || kernel_routes(&m, "77").is_empty()),
        "{}",
        kernel_routes(&m, "77")
    );
    sp.speaker.set_originated(BTreeSet::new());
    assert!(wait_for(T, || !gobgp(&["global", "rib", "-a", "ipv4"])
        .unwrap_or_default()
        .contains("10.1.0.0/26")));
}
