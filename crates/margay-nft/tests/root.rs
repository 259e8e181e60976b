//! Tests against the real kernel, each in throwaway network namespaces
//! (`ip netns add mgynft-<pid>-<n>`) that a guard deletes even when the test panics: the
//! host's own ruleset is never touched, and no packet leaves the namespaces.
//!
//! They need root and nft; otherwise each prints "skipped: …" and passes.

use std::time::{Duration, Instant};

mod common;

use std::collections::{BTreeMap, BTreeSet};

use margay_nft::policy::{self, AddressFamily, POLICY_TABLE};
use margay_nft::{remove_all, Applier, NftCommand, NftRunner, NodeRules};
use margay_policy::program::program;
use margay_testkit::fixture::{self, golden_node1};
use margay_testkit::netns::TestNs;
use margay_testkit::pods::{self, PodNetwork, PORTS};

macro_rules! require_root_and_nft {
    () => {
        if let Some(why) = common::missing_nft_or_root() {
            eprintln!("skipped: {why}");
            return;
        }
    };
}

/// The namespaces of these tests: `mgynft-<pid>-<n>`.
const PREFIX: &str = "mgynft";

/// margay-nft in a test namespace.
trait Nft {
    fn nft(&self) -> NftCommand;
    fn list(&self, family: &str, table: &str) -> Option<String>;
}

impl Nft for TestNs {
    fn nft(&self) -> NftCommand {
        NftCommand::in_netns(self.name())
    }

    fn list(&self, family: &str, table: &str) -> Option<String> {
        self.nft().list_table(family, table).unwrap()
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
    let ns = TestNs::new(PREFIX);
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

    // remove_all takes the policy tables too.
    let program = golden_node1();
    for family in [AddressFamily::Ipv4, AddressFamily::Ipv6] {
        ns.nft().run(&policy::render(&program, family)).unwrap();
    }
    assert!(ns.list("ip6", POLICY_TABLE).is_some());
    remove_all(&mut ns.nft()).unwrap();
    assert_eq!(ns.list("ip", "margay"), None);
    assert_eq!(ns.list("ip6", "margay"), None);
    assert_eq!(ns.list("ip", POLICY_TABLE), None);
    assert_eq!(ns.list("ip6", POLICY_TABLE), None);
    assert_eq!(ns.list("inet", "other").as_ref(), Some(&other));
    // Removing what is not there is fine.
    remove_all(&mut ns.nft()).unwrap();
}

#[test]
fn a_refused_script_changes_nothing_and_says_why() {
    require_root_and_nft!();
    let ns = TestNs::new(PREFIX);
    let mut applier = Applier::new(ns.nft());
    applier.apply(&nat_rules(&["10.244.0.0/16"])).unwrap();
    let before = ns.list("ip", "margay").unwrap();

    // Valid up to the last line, so nft gets as far as the kernel before failing.
    let script = format!(
        "{}table ip margay {{ chain c {{ ip saddr @nope drop; }}; }}\n",
        margay_nft::render(&nat_rules(&["10.9.0.0/16"]))
    );
    let err = ns.nft().run(&script).unwrap_err().to_string();
    let prefix = format!("ip netns exec {} nft -f -: ", ns.name());
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
    let (pod, router, server) = (
        TestNs::new(PREFIX),
        TestNs::new(PREFIX),
        TestNs::new(PREFIX),
    );
    router.ip(&format!(
        "link add r0 type veth peer name eth0 netns {}",
        pod.name()
    ));
    router.ip(&format!(
        "link add r1 type veth peer name eth0 netns {}",
        server.name()
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

// ---------------------------------------------------------------------------------------------
// Policy
// ---------------------------------------------------------------------------------------------

const FAMILIES: [(AddressFamily, &str); 2] =
    [(AddressFamily::Ipv4, "ip"), (AddressFamily::Ipv6, "ip6")];

#[test]
fn policy_tables_load_beside_the_node_tables() {
    require_root_and_nft!();
    let ns = TestNs::new(PREFIX);
    Applier::new(ns.nft())
        .apply(&nat_rules(&["10.244.0.0/16"]))
        .unwrap();
    let node1 = golden_node1();
    for (family, _) in FAMILIES {
        ns.nft().run(&policy::render(&node1, family)).unwrap();
    }
    let v4 = ns.list("ip", POLICY_TABLE).expect("table ip margay-policy");
    for fragment in [
        "type filter hook forward priority filter; policy accept;",
        "iifname vmap @from-wl",
        "\"mgy456b416f2bf\" : goto fw-mgy456b416f2bf",
        "oifname \"mgy*\" counter packets 0 bytes 0 drop",
        "log prefix \"mgy platform/x/platform.monitor/0 \"",
        "ip daddr . meta l4proto . th dport @np-",
        "meta mark & 0x00010000 == 0x00010000 counter packets 0 bytes 0 return",
        "icmp type echo-request icmp code net-unreachable",
        // nft folds `meta l4proto 6 th dport` into `tcp dport`.
        "tcp dport != { 22, 2000-2100 }",
        "elements = { 192.0.2.0/24, 198.51.100.0/25 }",
        "comment \"tier default policy x/knp.default.web ingress rule 0: spec.ingress[0].from[0]\"",
    ] {
        assert!(v4.contains(fragment), "missing {fragment:?} in\n{v4}");
    }
    let v6 = ns
        .list("ip6", POLICY_TABLE)
        .expect("table ip6 margay-policy");
    assert!(v6.contains("elements = { 2001:db8::/64 }"), "{v6}");
    assert!(
        !v6.contains("icmp type"),
        "ICMPv4 rules stay out of ip6: {v6}"
    );
    // The node agent's tables are untouched, and rendering again replaces the table.
    assert!(ns.list("ip", "margay").unwrap().contains("masquerade"));
    ns.nft()
        .run(&policy::render(&node1, AddressFamily::Ipv4))
        .unwrap();
    assert_eq!(ns.list("ip", POLICY_TABLE).unwrap(), v4);
}

/// A listing without its set and map elements, and the elements of each (`set NAME`, `map
/// NAME`).
fn split_elements(listing: &str) -> (String, BTreeMap<String, BTreeSet<String>>) {
    let mut rules = String::new();
    let mut elements = BTreeMap::new();
    let mut set = String::new();
    let mut open: Option<String> = None;
    for line in listing.lines() {
        let trimmed = line.trim();
        // `set NAME {` or `map NAME {`, with ` # handle N` when listed with -a.
        if trimmed.starts_with("set ") || trimmed.starts_with("map ") {
            set = trimmed
                .split_whitespace()
                .take(2)
                .collect::<Vec<_>>()
                .join(" ");
            elements.insert(set.clone(), BTreeSet::new());
        }
        let text = match (&mut open, trimmed.strip_prefix("elements = {")) {
            (None, Some(rest)) => {
                open = Some(String::new());
                rest
            }
            (Some(_), _) => trimmed,
            (None, None) => {
                rules.push_str(line);
                rules.push('\n');
                continue;
            }
        };
        let buffer = open.as_mut().unwrap();
        buffer.push_str(text);
        buffer.push(' ');
        if let Some(all) = buffer.strip_suffix("} ") {
            let members = all.split(',').map(|e| e.trim().to_owned());
            elements
                .get_mut(&set)
                .unwrap()
                .extend(members.filter(|e| !e.is_empty()));
            open = None;
        }
    }
    (rules, elements)
}

#[test]
fn set_updates_change_members_in_place() {
    require_root_and_nft!();
    let old = golden_node1();
    // y/a moves to another address, a new db pod starts on node2 (next to y/b, so the
    // prefixes of namespace y's sets merge: 10.1.1.2 becomes 10.1.1.2/31), the trusted set
    // grows.
    let yaml = fixture::golden_yaml()
        .replace("\"10.1.1.1/32\"", "\"10.1.1.10/32\"")
        .replace("198.51.100.0/25", "198.51.100.0/24")
        + fixture::POD_D_ON_NODE2;
    let new = program(&fixture::cluster(&yaml), "node1");
    assert_ne!(old, new);

    for (family, name) in FAMILIES {
        assert!(policy::same_rules(&old, &new, family));
        let updates = policy::set_updates(&old, &new, family);
        assert!(
            updates.lines().all(|l| l
                .starts_with(&format!("delete element {name} margay-policy "))
                || l.starts_with(&format!("add element {name} margay-policy "))),
            "{updates}"
        );
        let updated = TestNs::new(PREFIX);
        updated.nft().run(&policy::render(&old, family)).unwrap();
        let list_with_handles =
            || updated.exec(&["nft", "-a", "list", "table", name, POLICY_TABLE]);
        let (rules_before, _) = split_elements(&list_with_handles());
        updated.nft().run(&updates).unwrap();
        let (rules_after, elements) = split_elements(&list_with_handles());
        // Same rules, same handles: nothing but elements changed.
        assert_eq!(rules_before, rules_after);

        let fresh = TestNs::new(PREFIX);
        fresh.nft().run(&policy::render(&new, family)).unwrap();
        let (_, want) = split_elements(&fresh.list(name, POLICY_TABLE).unwrap());
        assert_eq!(elements, want, "{name}: {updates}");
        // No change, no commands.
        assert_eq!(policy::set_updates(&new, &new, family), "");
    }
    let v4 = policy::set_updates(&old, &new, AddressFamily::Ipv4);
    for line in [
        "delete element ip margay-policy s-765c9ad873b7651e { 198.51.100.0/25 }",
        "add element ip margay-policy s-765c9ad873b7651e { 198.51.100.0/24 }",
        "delete element ip margay-policy np-c9b53640baea6451 { 10.1.1.1 . 6 . 80 }",
        "delete element ip margay-policy s-49114dba024f6d6f { 10.1.1.1, 10.1.1.2 }",
        "add element ip margay-policy s-49114dba024f6d6f { 10.1.1.10, 10.1.1.2/31 }",
    ] {
        assert!(v4.lines().any(|l| l == line), "missing {line:?} in\n{v4}");
    }

    // A new policy is a rule change: set updates alone would not do.
    let yaml = fixture::golden_yaml()
        + "---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: more}
spec:
  selector: pod == 'b'
  ingress: [{action: Allow, source: {selector: pod == 'c'}}]
";
    let more = program(&fixture::cluster(&yaml), "node1");
    assert!(!policy::same_rules(&old, &more, AddressFamily::Ipv4));
}

/// The pods of the golden node1, and one on an interface it does not know, wired to a node
/// namespace ([`PodNetwork`]): of their TCP SYNs to each other, exactly those the engine
/// allows arrive.
#[test]
fn policy_decides_as_the_engine_predicts() {
    require_root_and_nft!();
    let cluster = fixture::golden_cluster();
    let node1 = program(&cluster, "node1");
    let net = PodNetwork::wire(PREFIX, &node1);

    for (family, _) in FAMILIES {
        net.node.nft().run(&policy::render(&node1, family)).unwrap();
    }

    // Each pod counts the SYNs it receives, by source and port.
    for dst in &net.pods {
        let mut table = String::from("table inet obs {\n");
        let mut rules = String::new();
        for (i, src) in net.pods.iter().enumerate() {
            for port in PORTS {
                table += &format!("counter c{i}_{port} {{}}\n");
                rules += &format!(
                    "ip saddr {} tcp dport {port} counter name c{i}_{port}\n",
                    src.ip
                );
            }
        }
        table += &format!(
            "chain input {{\ntype filter hook input priority filter; policy accept;\n{rules}}}\n}}\n"
        );
        dst.ns.nft().run(&table).unwrap();
    }
    net.connect_all();
    net.assert_engine_agrees(&cluster, |i, j, port| {
        packets(&net.pods[j].ns, &format!("c{i}_{port}")) > 0
    });
}

/// The same pods try the node itself: with Calico's default (Drop) nothing arrives; with
/// `defaultEndpointToHostAction: Accept`, exactly what each pod's egress policy allows (and
/// nothing from the unknown interface).
#[test]
fn workloads_reach_their_node_as_the_engine_predicts() {
    require_root_and_nft!();
    let host: std::net::IpAddr = fixture::NODE1_ADDRESS.parse().unwrap();
    let drop = fixture::golden_cluster();
    let accept = fixture::cluster(&(fixture::golden_yaml() + fixture::NODE1_ACCEPTS_WORKLOADS));
    let net = PodNetwork::wire(PREFIX, &program(&drop, "node1"));
    net.node.ip(&format!("addr add {host}/32 dev lo"));
    // What gets through Margay's input chain (priority filter), by source and port.
    let mut table = String::from("table inet obs {\n");
    let mut rules = String::new();
    for (i, src) in net.pods.iter().enumerate() {
        for port in PORTS {
            table += &format!("counter c{i}_{port} {{}}\n");
            rules += &format!(
                "ip saddr {} tcp dport {port} tcp flags syn counter name c{i}_{port}\n",
                src.ip
            );
        }
    }
    table += &format!(
        "chain input {{\ntype filter hook input priority filter + 10; policy accept;\n{rules}}}\n}}\n"
    );
    net.node.nft().run(&table).unwrap();

    for (cluster, allows) in [(&drop, false), (&accept, true)] {
        let node1 = program(cluster, "node1");
        for (family, _) in FAMILIES {
            net.node.nft().run(&policy::render(&node1, family)).unwrap();
        }
        net.node
            .nft()
            .run("reset counters table inet obs\n")
            .unwrap();
        net.connect_to_host(host);
        let allowed = net.assert_engine_agrees_to_host(cluster, host, |i, port| {
            packets(&net.node, &format!("c{i}_{port}")) > 0
        });
        assert_eq!(allowed > 0, allows, "{allowed} allowed");
    }
}

/// node1's eth0 is a host endpoint, with a namespace outside it: what the outside sends the
/// node, and the node the outside, passes exactly as the engine says (failsafe ports, the
/// policies selecting it, and the drop at their tier's end), and what the node would forward
/// from the outside to its pods is dropped by the applyOnForward policy (which lets only
/// 198.18.0.0/24 in).
#[test]
fn host_endpoint_policy_decides_as_the_engine_predicts() {
    require_root_and_nft!();
    let cluster = fixture::cluster(&(fixture::golden_yaml() + fixture::NODE1_OUTSIDE_POLICY));
    let node1 = program(&cluster, "node1");
    let net = PodNetwork::wire(PREFIX, &node1);
    let node_ip = fixture::NODE1_ADDRESS.parse().unwrap();
    let outside = net.outside("eth0", node_ip, "192.0.2.50".parse().unwrap());
    for (family, _) in FAMILIES {
        net.node.nft().run(&policy::render(&node1, family)).unwrap();
    }
    // The outside counts the node's SYNs (what got out) and resets (what got in), by port;
    // each pod the outside's SYNs (what the node forwarded).
    let observe = |ns: &TestNs, counted: &[(String, String)]| {
        let mut table = String::from("table inet obs {\n");
        let mut rules = String::new();
        for (name, matches) in counted {
            table += &format!("counter {name} {{}}\n");
            rules += &format!("{matches} counter name {name}\n");
        }
        table += &format!(
            "chain input {{\ntype filter hook input priority filter; policy accept;\n{rules}}}\n}}\n"
        );
        ns.nft().run(&table).unwrap();
    };
    let mut counted = Vec::new();
    for port in PORTS {
        counted.push((
            format!("syn{port}"),
            format!("ip saddr {node_ip} tcp dport {port} tcp flags syn"),
        ));
        counted.push((
            format!("rst{port}"),
            format!("ip saddr {node_ip} tcp sport {port} tcp flags rst"),
        ));
    }
    observe(&outside.ns, &counted);
    let forwarded: Vec<(String, String)> = PORTS
        .iter()
        .map(|port| {
            let matches = format!("ip saddr {} tcp dport {port}", outside.ip);
            (format!("fwd{port}"), matches)
        })
        .collect();
    for pod in &net.pods {
        observe(&pod.ns, &forwarded);
    }

    pods::connect(&outside.ns, node_ip);
    pods::connect(&net.node, outside.ip);
    for pod in &net.pods {
        pods::connect(&outside.ns, pod.ip);
    }
    let (inward, outward) = pods::assert_engine_agrees_through_host_endpoint(
        &cluster,
        &outside,
        |port| packets(&outside.ns, &format!("rst{port}")) > 0,
        |port| packets(&outside.ns, &format!("syn{port}")) > 0,
    );
    assert!(inward > 0 && outward > 0 && inward < PORTS.len() && outward < PORTS.len());
    for pod in &net.pods {
        for port in PORTS {
            assert_eq!(
                packets(&pod.ns, &format!("fwd{port}")),
                0,
                "{} {port}",
                pod.ip
            );
        }
    }

    // Without the applyOnForward policy, forwarded traffic meets only the pods' own policy.
    let yaml = fixture::golden_yaml().replace("applyOnForward: true", "applyOnForward: false");
    let open = fixture::cluster(&(yaml + fixture::NODE1_OUTSIDE_POLICY));
    let node1 = program(&open, "node1");
    assert!(node1.host_endpoints["eth0"]
        .forward_ingress
        .tiers
        .is_empty());
    for (family, _) in FAMILIES {
        net.node.nft().run(&policy::render(&node1, family)).unwrap();
    }
    for pod in &net.pods {
        pods::connect(&outside.ns, pod.ip);
    }
    let mut arrived = 0;
    for pod in net.pods.iter().filter(|p| p.id.is_some()) {
        for port in PORTS {
            let packet = margay_policy::Packet {
                from: margay_policy::Peer::Ip(outside.ip),
                to: margay_policy::Peer::Endpoint(pod.id.clone().unwrap()),
                transport: margay_policy::Transport::Ports {
                    protocol: margay_policy::Protocol::Tcp,
                    port,
                    source_port: None,
                },
            };
            let allowed = margay_policy::evaluate(&open, &packet).allowed;
            let got = packets(&pod.ns, &format!("fwd{port}")) > 0;
            assert_eq!(got, allowed, "{} {port}", pod.ip);
            arrived += usize::from(got);
        }
    }
    assert!(arrived > 0);
}
