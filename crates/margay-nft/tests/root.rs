//! Tests against the real kernel, each in throwaway network namespaces
//! (`ip netns add mgynft-<pid>-<n>`) that a guard deletes even when the test panics: the
//! host's own ruleset is never touched, and no packet leaves the namespaces.
//!
//! They need root and nft; otherwise each prints "skipped: …" and passes.

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

mod common;

use margay_nft::{remove_all, Applier, NftCommand, NftRunner, NodeRules};

macro_rules! require_root_and_nft {
    () => {
        if let Some(why) = common::missing_nft_or_root() {
            eprintln!("skipped: {why}");
            return;
        }
    };
}

/// Runs a command; panics with its stderr if it fails.
fn run(argv: &[&str]) -> String {
    let out = Command::new(argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", argv.join(" ")));
    assert!(
        out.status.success(),
        "{}: {}",
        argv.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A named network namespace, deleted on drop (also when the test panics).
struct TestNs {
    name: String,
}

impl TestNs {
    fn new() -> TestNs {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("mgynft-{}-{n}", std::process::id());
        run(&["ip", "netns", "add", &name]);
        TestNs { name }
    }

    fn nft(&self) -> NftCommand {
        NftCommand::in_netns(&self.name)
    }

    /// `ip netns exec NS ARGS…`
    fn exec(&self, args: &[&str]) -> String {
        let mut argv = vec!["ip", "netns", "exec", &self.name];
        argv.extend(args);
        run(&argv)
    }

    /// `ip -n NS ARGS…`
    fn ip(&self, args: &str) {
        let mut argv = vec!["ip", "-n", &self.name];
        argv.extend(args.split_whitespace());
        run(&argv);
    }

    fn list(&self, family: &str, table: &str) -> Option<String> {
        self.nft().list_table(family, table).unwrap()
    }
}

impl Drop for TestNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn nat_rules(pools: &[&str]) -> NodeRules {
    let pools: Vec<_> = pools.iter().map(|p| p.parse().unwrap()).collect();
    NodeRules {
        nat_outgoing_v4: pools.clone(),
        all_pools_v4: pools,
        nat_outgoing_v6: vec!["fd00:10:244::/56".parse().unwrap()],
        all_pools_v6: vec!["fd00:10:244::/56".parse().unwrap()],
        cluster_nodes_v4: vec!["192.0.2.10".parse().unwrap()],
        vxlan_port: Some(4789),
        ipip: true,
    }
}

const OTHER: &str = "table inet other {
    set s { type ipv4_addr; elements = { 10.9.9.9 }; }
    chain c { type filter hook input priority 0; policy accept; ip saddr @s counter; }
}";

#[test]
fn apply_replaces_only_margay_tables() {
    require_root_and_nft!();
    let ns = TestNs::new();
    ns.nft().run(OTHER).unwrap();
    let other = ns
        .list("inet", "other")
        .expect("the unrelated table exists");
    assert_eq!(ns.list("ip", "margay"), None);

    let mut applier = Applier::new(ns.nft());
    assert!(applier.apply(&nat_rules(&["10.244.0.0/16"])).unwrap());
    let v4 = ns.list("ip", "margay").expect("table ip margay");
    for line in [
        "elements = { 10.244.0.0/16 }",
        "type nat hook postrouting priority srcnat; policy accept;",
        "ip saddr @nat-outgoing ip daddr != @all-pools masquerade comment \"margay: nat outgoing\"",
        "elements = { 192.0.2.10 }",
        "type filter hook input priority filter - 1; policy accept;",
        "udp dport 4789 ip saddr != @cluster-nodes drop comment \"margay: drop vxlan from non-cluster hosts\"",
        // nft names protocol 4 from /etc/protocols.
        "ip protocol ipencap ip saddr != @cluster-nodes drop comment \"margay: drop ipip from non-cluster hosts\"",
    ] {
        assert!(v4.contains(line), "missing {line:?} in\n{v4}");
    }
    let v6 = ns.list("ip6", "margay").expect("table ip6 margay");
    assert!(
        v6.contains("ip6 saddr @nat-outgoing ip6 daddr != @all-pools masquerade"),
        "{v6}"
    );

    // Unchanged rules: nft does not run.
    assert!(!applier.apply(&nat_rules(&["10.244.0.0/16"])).unwrap());

    // Changed rules: the table holds exactly the new ones; the other table is untouched.
    assert!(applier
        .apply(&nat_rules(&["10.245.0.0/16", "10.246.0.0/16"]))
        .unwrap());
    let v4 = ns.list("ip", "margay").unwrap();
    assert!(
        v4.contains("elements = { 10.245.0.0/16, 10.246.0.0/16 }"),
        "{v4}"
    );
    assert!(!v4.contains("10.244.0.0/16"), "{v4}");
    assert_eq!(ns.list("inet", "other").as_ref(), Some(&other));

    // Fewer features: chains and sets that are no longer needed go away with the old table.
    assert!(applier.apply(&NodeRules::default()).unwrap());
    let v4 = ns.list("ip", "margay").unwrap();
    assert!(!v4.contains("chain") && !v4.contains("set"), "{v4}");

    remove_all(&mut ns.nft()).unwrap();
    assert_eq!(ns.list("ip", "margay"), None);
    assert_eq!(ns.list("ip6", "margay"), None);
    assert_eq!(ns.list("inet", "other").as_ref(), Some(&other));
    // Removing what is not there is fine.
    remove_all(&mut ns.nft()).unwrap();
}

#[test]
fn a_refused_script_changes_nothing_and_says_why() {
    require_root_and_nft!();
    let ns = TestNs::new();
    let mut applier = Applier::new(ns.nft());
    applier.apply(&nat_rules(&["10.244.0.0/16"])).unwrap();
    let before = ns.list("ip", "margay").unwrap();

    // Valid up to the last line, so nft gets as far as the kernel before failing.
    let script = format!(
        "{}table ip margay {{ chain c {{ ip saddr @nope drop; }}; }}\n",
        margay_nft::render(&nat_rules(&["10.9.0.0/16"]))
    );
    let err = ns.nft().run(&script).unwrap_err().to_string();
    let prefix = format!("ip netns exec {} nft -f -: ", ns.name);
    assert!(err.starts_with(&prefix), "{err}");
    assert!(err.contains("No such file or directory"), "{err}");
    assert!(err.contains("ip saddr @nope drop"), "{err}");
    assert!(!err.contains('\n'), "{err}");

    assert_eq!(ns.list("ip", "margay").unwrap(), before);
}

/// A named counter's packet count, from `nft list counter inet obs NAME`.
fn packets(ns: &TestNs, counter: &str) -> u64 {
    let listing = ns.exec(&["nft", "list", "counter", "inet", "obs", counter]);
    let after = listing
        .split("packets ")
        .nth(1)
        .unwrap_or_else(|| panic!("no packet count in {listing}"));
    after.split_whitespace().next().unwrap().parse().unwrap()
}

/// Waits for a counter to reach `want` (delivery across veths is asynchronous).
fn wait_packets(ns: &TestNs, counter: &str, want: u64) {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let got = packets(ns, counter);
        if got == want || Instant::now() > deadline {
            assert_eq!(got, want, "counter {counter}");
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends one UDP datagram from `ns` with bash's /dev/udp.
fn send_udp(ns: &TestNs, to: &str, port: u16) {
    ns.exec(&["bash", "-c", &format!("echo x > /dev/udp/{to}/{port}")]);
}

/// pod (10.244.1.5, in a NAT-outgoing pool) ── router (Margay's NAT) ── server
/// (192.0.2.2, outside every pool, and 10.245.0.9, inside another pool).
#[test]
fn masquerade_and_overlay_protection_work() {
    require_root_and_nft!();
    let (pod, router, server) = (TestNs::new(), TestNs::new(), TestNs::new());
    router.ip(&format!(
        "link add r0 type veth peer name eth0 netns {}",
        pod.name
    ));
    router.ip(&format!(
        "link add r1 type veth peer name eth0 netns {}",
        server.name
    ));
    router.ip("addr add 10.244.1.1/24 dev r0");
    router.ip("addr add 192.0.2.1/24 dev r1");
    router.ip("link set r0 up");
    router.ip("link set r1 up");
    router.ip("route add 10.245.0.9/32 via 192.0.2.2");
    router.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
    pod.ip("addr add 10.244.1.5/24 dev eth0");
    pod.ip("link set eth0 up");
    pod.ip("route add default via 10.244.1.1");
    server.ip("addr add 192.0.2.2/24 dev eth0");
    server.ip("addr add 10.245.0.9/32 dev eth0");
    server.ip("link set eth0 up");
    // Replies to unmasqueraded pod traffic.
    server.ip("route add 10.244.0.0/16 via 192.0.2.1");

    // What the server receives, by source, after Margay's input chain (filter - 1) ran.
    server
        .nft()
        .run(
            "table inet obs {
                counter ping_router {}
                counter ping_pod {}
                counter vxlan_router {}
                counter vxlan_pod {}
                counter other_udp_pod {}
                chain input {
                    type filter hook input priority filter + 10; policy accept;
                    icmp type echo-request ip saddr 192.0.2.1 counter name ping_router
                    icmp type echo-request ip saddr 10.244.1.5 counter name ping_pod
                    udp dport 4789 ip saddr 192.0.2.1 counter name vxlan_router
                    udp dport 4789 ip saddr 10.244.1.5 counter name vxlan_pod
                    udp dport 4790 ip saddr 10.244.1.5 counter name other_udp_pod
                }
            }",
        )
        .unwrap();

    let pools = NodeRules {
        nat_outgoing_v4: vec!["10.244.0.0/16".parse().unwrap()],
        all_pools_v4: vec![
            "10.244.0.0/16".parse().unwrap(),
            "10.245.0.0/16".parse().unwrap(),
        ],
        ..NodeRules::default()
    };
    assert!(Applier::new(router.nft()).apply(&pools).unwrap());

    // Leaving the pools: masqueraded to the router's address.
    pod.exec(&["ping", "-c1", "-W2", "-q", "192.0.2.2"]);
    wait_packets(&server, "ping_router", 1);
    assert_eq!(packets(&server, "ping_pod"), 0);
    // To another pool: the pod's own address.
    pod.exec(&["ping", "-c1", "-W2", "-q", "10.245.0.9"]);
    wait_packets(&server, "ping_pod", 1);
    assert_eq!(packets(&server, "ping_router"), 1);

    // The server is a node whose only known peer is the router.
    let overlay = NodeRules {
        cluster_nodes_v4: vec!["192.0.2.1".parse().unwrap()],
        vxlan_port: Some(4789),
        ..NodeRules::default()
    };
    assert!(Applier::new(server.nft()).apply(&overlay).unwrap());
    // Masqueraded, so from a cluster node: delivered.
    send_udp(&pod, "192.0.2.2", 4789);
    wait_packets(&server, "vxlan_router", 1);
    // From the pod, not a cluster node: dropped; other ports from it still arrive, and
    // as they are sent after the dropped one, their arrival means it would have too.
    send_udp(&pod, "10.245.0.9", 4789);
    send_udp(&pod, "10.245.0.9", 4790);
    wait_packets(&server, "other_udp_pod", 1);
    assert_eq!(packets(&server, "vxlan_pod"), 0);
}
