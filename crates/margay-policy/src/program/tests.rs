//! The program's shape, its golden file, and its agreement with [`evaluate`]: a small
//! interpreter walks packets through programs exactly as the dataplane chains do, and must
//! reach the engine's verdict for every pair of endpoints.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;

use margay_api::{Action, Resource, TierDefaultAction};

use super::*;
use crate::tests::resources;
use crate::{evaluate, Endpoint, Packet, Peer};

// ---------------------------------------------------------------------------------------------
// The interpreter
// ---------------------------------------------------------------------------------------------

/// A packet as the dataplane sees it.
#[derive(Debug, Clone, Copy)]
struct Wire {
    src: IpAddr,
    dst: IpAddr,
    protocol: Protocol,
    sport: u16,
    dport: u16,
}

/// The ephemeral source port of every test packet: no rule names it (the engine assumes
/// source ports never match).
const EPHEMERAL: u16 = 45678;

/// Whether `pipeline` lets the packet through, walking it as the endpoint chains do.
fn allows(program: &Program, pipeline: &Pipeline, w: &Wire) -> bool {
    for stage in &pipeline.tiers {
        let mut passed = false;
        for id in &stage.policies {
            match first_verdict(program, &program.policies[id].rules, w) {
                Some(Action::Allow) => return true,
                Some(Action::Deny) => return false,
                Some(Action::Pass) => {
                    passed = true;
                    break;
                }
                _ => {}
            }
        }
        if !passed && stage.default_action == TierDefaultAction::Deny {
            return false;
        }
    }
    for id in &pipeline.profiles {
        match first_verdict(program, &program.profiles[id].rules, w) {
            Some(Action::Allow) => return true,
            Some(Action::Deny) => return false,
            _ => {}
        }
    }
    false
}

/// The action of the first matching rule that is not `Log`.
fn first_verdict(program: &Program, rules: &[ProgramRule], w: &Wire) -> Option<Action> {
    rules
        .iter()
        .filter(|r| r.action != Action::Log)
        .find(|r| rule_matches(program, &r.matches, w))
        .map(|r| r.action)
}

fn rule_matches(program: &Program, m: &Matches, w: &Wire) -> bool {
    let version = if w.src.is_ipv4() { 4 } else { 6 };
    let protocol = w.protocol.number();
    m.ip_version.is_none_or(|v| v == version)
        && m.protocol.is_none_or(|p| p == protocol)
        && m.not_protocol.is_none_or(|p| p != protocol)
        // Test packets are never ICMP.
        && m.icmp.is_none()
        && m.not_icmp.is_none()
        && end_matches(program, &m.source, w.src, w.sport, w.protocol)
        && end_matches(program, &m.destination, w.dst, w.dport, w.protocol)
}

fn end_matches(program: &Program, e: &EndMatch, addr: IpAddr, port: u16, p: Protocol) -> bool {
    let in_nets = |mut nets: std::slice::Iter<'_, IpNet>| nets.any(|n| n.contains(&addr));
    let in_set = |id: &String| {
        program.ip_sets[id]
            .members
            .iter()
            .any(|n| n.contains(&addr))
    };
    let port_matches = |m: &PortMatch| match m {
        PortMatch::Number(n) => *n == port,
        PortMatch::Range(lo, hi) => (*lo..=*hi).contains(&port),
        PortMatch::Named(id) => program.port_sets[id].members.contains(&PortSetMember {
            ip: addr,
            protocol: p,
            port,
        }),
    };
    (e.nets.is_empty() || in_nets(e.nets.iter()))
        && !in_nets(e.not_nets.iter())
        && e.ip_set.as_ref().is_none_or(in_set)
        && !e.not_ip_set.as_ref().is_some_and(in_set)
        && (e.ports.is_empty() || e.ports.iter().any(port_matches))
        && !e.not_ports.iter().any(port_matches)
}

/// Where an endpoint is programmed: its node's program and its interface.
fn programmed<'p>(
    programs: &'p BTreeMap<String, Program>,
    ep: &Endpoint,
) -> Option<(&'p Program, &'p LocalEndpoint)> {
    let program = programs.get(ep.node.as_deref()?)?;
    Some((program, program.endpoints.get(ep.interface.as_deref()?)?))
}

fn ipv4(ep: &Endpoint) -> Option<IpAddr> {
    ep.ips.iter().copied().find(IpAddr::is_ipv4)
}

/// Every difference between the programs of every node and [`evaluate`], for every pair of
/// programmed endpoints and from and to each external address, on each (protocol, port).
fn disagreements(
    cluster: &Cluster,
    checks: &[(Protocol, u16)],
    externals: &[IpAddr],
) -> Vec<String> {
    let programs: BTreeMap<String, Program> = cluster
        .endpoints()
        .iter()
        .filter_map(|ep| ep.node.clone())
        .map(|node| (node.clone(), program(cluster, &node)))
        .collect();
    // (peer as the engine names it, address, where it is programmed)
    let mut peers = Vec::new();
    for ep in cluster.endpoints() {
        if let (Some(ip), Some(local)) = (ipv4(ep), programmed(&programs, ep)) {
            peers.push((Peer::Endpoint(ep.id.clone()), ip, Some(local)));
        }
    }
    for ip in externals {
        peers.push((Peer::Ip(*ip), *ip, None));
    }
    let mut out = Vec::new();
    for (from, src, src_local) in &peers {
        for (to, dst, dst_local) in &peers {
            if from == to || (src_local.is_none() && dst_local.is_none()) {
                continue;
            }
            for &(protocol, port) in checks {
                let verdict = evaluate(
                    cluster,
                    &Packet {
                        from: from.clone(),
                        to: to.clone(),
                        protocol,
                        port,
                    },
                );
                let wire = Wire {
                    src: *src,
                    dst: *dst,
                    protocol,
                    sport: EPHEMERAL,
                    dport: port,
                };
                let egress = src_local.is_none_or(|(p, ep)| allows(p, &ep.egress, &wire));
                let ingress = dst_local.is_none_or(|(p, ep)| allows(p, &ep.ingress, &wire));
                if egress != verdict.egress.allowed || ingress != verdict.ingress.allowed {
                    out.push(format!(
                        "{from:?} -> {to:?} {port}/{protocol}: program egress {egress} \
                         ingress {ingress}, engine egress {} ingress {} ({:?} / {:?})",
                        verdict.egress.allowed,
                        verdict.ingress.allowed,
                        verdict.egress.decision,
                        verdict.ingress.decision
                    ));
                }
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The golden program
// ---------------------------------------------------------------------------------------------

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

fn fixture() -> Cluster {
    let path = golden_dir().join("program-cluster.yaml");
    let yaml = std::fs::read_to_string(&path).unwrap();
    Cluster::from_resources(resources(&yaml)).unwrap_or_else(|e| panic!("{e}"))
}

/// Regenerate after an intended change: `MARGAY_UPDATE_GOLDEN=1 cargo test -p margay-policy
/// program`, then review the diff.
#[test]
fn program_matches_golden_file() {
    let path = golden_dir().join("program.json");
    let mut rendered = serde_json::to_string_pretty(&program(&fixture(), "node1")).unwrap();
    rendered.push('\n');
    if std::env::var_os("MARGAY_UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &rendered).unwrap();
    }
    let golden = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (MARGAY_UPDATE_GOLDEN=1 writes it)", path.display()));
    assert!(
        rendered == golden,
        "the program differs from {}; after an intended change, regenerate with \
         MARGAY_UPDATE_GOLDEN=1\n--- rendered ---\n{rendered}",
        path.display()
    );
}

#[test]
fn golden_cluster_programs_agree_with_the_engine() {
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    let diffs = disagreements(
        &fixture(),
        &[
            (Protocol::Tcp, 80),
            (Protocol::Tcp, 81),
            (Protocol::Tcp, 22),
            (Protocol::Tcp, 8080),
            (Protocol::Tcp, 9090),
            (Protocol::Udp, 53),
            (Protocol::Udp, 80),
        ],
        &[
            ip("192.0.2.7"),
            ip("198.51.100.200"),
            ip("203.0.113.5"),
            ip("10.2.0.1"),
        ],
    );
    assert!(diffs.is_empty(), "{}", diffs.join("\n"));
}

#[test]
fn golden_pipelines_follow_tiers_then_profiles() {
    let p = program(&fixture(), "node1");
    let ids: Vec<(&str, &str)> = p
        .endpoints
        .iter()
        .map(|(iface, ep)| (iface.as_str(), ep.id.as_str()))
        .collect();
    assert_eq!(
        ids,
        [
            ("mgy08041ab898a", "x/b"),
            ("mgy456b416f2bf", "x/a"),
            ("mgy665e9bb24dc", "y/b")
        ]
    );
    assert_eq!(
        p.skipped,
        BTreeMap::from([(
            "z/pending".to_owned(),
            "no interface (no WorkloadEndpoint for it yet)".to_owned()
        )])
    );
    let a = &p.endpoints["mgy456b416f2bf"];
    let tiers: Vec<(&str, TierDefaultAction, usize)> = a
        .ingress
        .tiers
        .iter()
        .map(|t| (t.tier.as_str(), t.default_action, t.policies.len()))
        .collect();
    assert_eq!(
        tiers,
        [
            ("platform", TierDefaultAction::Pass, 1),
            ("default", TierDefaultAction::Deny, 2)
        ]
    );
    // By order: the global policy (500) before the Kubernetes one (1000).
    let default = &a.ingress.tiers[1].policies;
    assert_eq!(p.policies[&default[0]].policy.name, "default.allow-trusted");
    assert_eq!(p.policies[&default[1]].policy.name, "knp.default.web");
    assert_eq!(a.ingress.profiles, ["pri-kns.x", "pri-ksa.x.default"]);
    assert_eq!(a.egress.profiles, ["pro-kns.x", "pro-ksa.x.default"]);
    // The global policy is ingress only.
    let egress: Vec<&str> = a.egress.tiers[1]
        .policies
        .iter()
        .map(String::as_str)
        .collect();
    assert_eq!(egress, [default[1].replacen("pi-", "po-", 1)]);
    // y/b has no policy, only its profiles.
    let b = &p.endpoints["mgy665e9bb24dc"];
    assert!(b.ingress.tiers.is_empty() && b.egress.tiers.is_empty());
    assert_eq!(b.ingress.profiles, ["pri-kns.y", "pri-ksa.y.default"]);
    // Every chain and set a pipeline names is there, and nothing else.
    let mut used = BTreeSet::new();
    for ep in p.endpoints.values() {
        for pipeline in [&ep.ingress, &ep.egress] {
            used.extend(
                pipeline
                    .tiers
                    .iter()
                    .flat_map(|t| t.policies.iter().cloned()),
            );
            used.extend(pipeline.profiles.iter().cloned());
        }
    }
    let chains: BTreeSet<String> = p
        .policies
        .keys()
        .chain(p.profiles.keys())
        .cloned()
        .collect();
    assert_eq!(used, chains);
}

#[test]
fn golden_rules_keep_actions_icmp_and_comments() {
    let p = program(&fixture(), "node1");
    let monitor: Vec<&PolicyChain> = p
        .policies
        .values()
        .filter(|c| c.policy.name == "platform.monitor")
        .collect();
    assert_eq!(monitor.len(), 2, "one chain per direction");
    let (ingress, egress) = if monitor[0].direction == PolicyType::Ingress {
        (monitor[0], monitor[1])
    } else {
        (monitor[1], monitor[0])
    };
    let actions: Vec<Action> = ingress.rules.iter().map(|r| r.action).collect();
    assert_eq!(actions, [Action::Log, Action::Pass, Action::Deny]);
    assert_eq!(
        ingress.rules[0].comment,
        "tier platform policy x/platform.monitor ingress rule 0: spec.ingress[0]"
    );
    let icmp = egress.rules[0].matches.icmp.unwrap();
    assert_eq!((icmp.icmp_type, icmp.code), (Some(8), Some(0)));
    assert_eq!(egress.rules[0].matches.protocol, Some(1));
}

// ---------------------------------------------------------------------------------------------
// Units
// ---------------------------------------------------------------------------------------------

/// A WorkloadEndpoint for pod `ns/name` on `node` with interface `iface`.
fn wep(ns: &str, name: &str, node: &str, iface: &str, ip: &str, labels: &str) -> String {
    format!(
        "---\napiVersion: margay.dev/v1\nkind: WorkloadEndpoint\n\
         metadata: {{name: {node}-k8s-{name}-eth0, namespace: {ns}, labels: {{{labels}}}}}\n\
         spec: {{orchestrator: k8s, node: {node}, pod: {name}, endpoint: eth0, \
         interfaceName: {iface}, ipNetworks: [{ip}/32], profiles: [kns.{ns}], \
         ports: [{{name: web, protocol: TCP, port: 8{}}}]}}\n",
        ip.rsplit('.').next().unwrap()
    )
}

fn cluster_of(yaml: &str) -> Cluster {
    Cluster::from_resources(resources(yaml)).unwrap_or_else(|e| panic!("{e}"))
}

const PODS: &str = "
---
apiVersion: margay.dev/v1
kind: WorkloadEndpoint
metadata: {name: n1-k8s-a-eth0, namespace: x, labels: {app: a}}
spec: {orchestrator: k8s, node: n1, pod: a, endpoint: eth0, interfaceName: mgya, ipNetworks: [10.0.0.1/32], profiles: [kns.x], ports: [{name: web, protocol: TCP, port: 81}]}
---
apiVersion: margay.dev/v1
kind: WorkloadEndpoint
metadata: {name: n2-k8s-b-eth0, namespace: x, labels: {app: b}}
spec: {orchestrator: k8s, node: n2, pod: b, endpoint: eth0, interfaceName: mgyb, ipNetworks: [10.0.0.2/32], profiles: [kns.x], ports: [{name: web, protocol: UDP, port: 82}]}
";

const ALLOW_FROM_B: &str = "
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: from-b}
spec:
  selector: app == 'a'
  ingress: [{action: Allow, source: {selector: app == 'b'}}]
";

#[test]
fn only_this_nodes_endpoints_with_interfaces_are_programmed() {
    let mut yaml = PODS.to_owned();
    yaml += &wep("y", "dup", "n1", "mgya", "10.0.1.1", "app: c");
    yaml += &wep("y", "odd", "n1", "mgyodd", "10.0.1.2", "app: c");
    yaml += "---\napiVersion: v1\nkind: Pod\nmetadata: {name: elsewhere, namespace: y}\n\
             spec: {nodeName: n2, containers: [{name: c}]}\n";
    let mut all = resources(&yaml);
    // Validation refuses such a name; resources built in code are not validated.
    for r in &mut all {
        if let Resource::WorkloadEndpoint(w) = r {
            if w.spec.interface_name == "mgyodd" {
                w.spec.interface_name = "mgy:odd".to_owned();
            }
        }
    }
    let c = Cluster::from_resources(all).unwrap();
    let p = program(&c, "n1");
    assert_eq!(p.node, "n1");
    assert_eq!(p.endpoints.keys().collect::<Vec<_>>(), ["mgya"]);
    assert_eq!(p.endpoints["mgya"].id, "x/a");
    assert_eq!(
        p.skipped,
        BTreeMap::from([
            (
                "y/dup".to_owned(),
                "interface mgya already belongs to x/a".to_owned()
            ),
            (
                "y/odd".to_owned(),
                "interface name \"mgy:odd\" is not 1 to 15 characters of [A-Za-z0-9_.-]".to_owned()
            ),
        ])
    );
    let p = program(&c, "n2");
    assert_eq!(p.endpoints.keys().collect::<Vec<_>>(), ["mgyb"]);
    assert_eq!(p.skipped.keys().collect::<Vec<_>>(), ["y/elsewhere"]);
    let p = program(&c, "nowhere");
    assert!(p.endpoints.is_empty() && p.policies.is_empty() && p.profiles.is_empty());
}

#[test]
fn only_what_local_endpoints_use_is_included() {
    let c = cluster_of(&format!("{PODS}{ALLOW_FROM_B}"));
    // The policy selects x/a only: on n2 there is nothing of it, and b's profile only.
    let p = program(&c, "n2");
    assert!(p.policies.is_empty() && p.ip_sets.is_empty(), "{p:#?}");
    assert_eq!(
        p.profiles.keys().collect::<Vec<_>>(),
        ["pri-kns.x", "pro-kns.x"]
    );
    let p = program(&c, "n1");
    assert_eq!(p.policies.len(), 1, "ingress only");
    let (id, chain) = p.policies.iter().next().unwrap();
    assert!(id.starts_with("pi-") && id.len() == 3 + 16, "{id}");
    assert_eq!(chain.direction, PolicyType::Ingress);
    assert_eq!(chain.tier, "default");
    // The set lists b, which runs elsewhere.
    let set = &p.ip_sets[chain.rules[0].matches.source.ip_set.as_ref().unwrap()];
    assert_eq!(
        set.members
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        ["10.0.0.2/32"]
    );
    assert_eq!(set.selector, "app == \"b\"");
}

#[test]
fn ids_are_stable_and_sets_shared() {
    let second = "
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: also-from-b}
spec:
  order: 5
  selector: app == 'a'
  ingress: [{action: Deny, protocol: TCP, source: {selector: app == 'b'}, destination: {ports: [web]}}]
";
    let one = program(&cluster_of(&format!("{PODS}{ALLOW_FROM_B}")), "n1");
    let two = program(&cluster_of(&format!("{PODS}{ALLOW_FROM_B}{second}")), "n1");
    // Adding a policy does not rename the others.
    for id in one.policies.keys() {
        assert_eq!(one.policies[id], two.policies[id]);
    }
    // The same selector in two policies is one set.
    assert_eq!(two.policies.len(), 2);
    assert_eq!(two.ip_sets.len(), 1);
    let tier = &two.endpoints["mgya"].ingress.tiers[0];
    let sets: Vec<&Option<String>> = tier
        .policies
        .iter()
        .map(|id| &two.policies[id].rules[0].matches.source.ip_set)
        .collect();
    assert_eq!(sets[0], sets[1]);
    // The named port resolves on the endpoints the destination covers (no selector: all).
    let named = &two.policies[&tier.policies[0]].rules[0]
        .matches
        .destination
        .ports;
    let PortMatch::Named(id) = &named[0] else {
        panic!("{named:?}")
    };
    let set = &two.port_sets[id];
    assert_eq!(set.port, "web");
    assert_eq!(set.selector, None);
    let members: Vec<(String, Protocol, u16)> = set
        .members
        .iter()
        .map(|m| (m.ip.to_string(), m.protocol, m.port))
        .collect();
    assert_eq!(
        members,
        [
            ("10.0.0.1".to_owned(), Protocol::Tcp, 81),
            ("10.0.0.2".to_owned(), Protocol::Udp, 82)
        ]
    );
}

#[test]
fn new_endpoints_change_set_members_not_rules() {
    let before = program(&cluster_of(&format!("{PODS}{ALLOW_FROM_B}")), "n1");
    let more = wep("x", "b2", "n2", "mgyc", "10.0.0.3", "app: b");
    let after = program(&cluster_of(&format!("{PODS}{ALLOW_FROM_B}{more}")), "n1");
    assert_eq!(before.policies, after.policies);
    assert_eq!(before.profiles, after.profiles);
    assert_eq!(before.endpoints, after.endpoints);
    assert_eq!(
        before.ip_sets.keys().collect::<Vec<_>>(),
        after.ip_sets.keys().collect::<Vec<_>>()
    );
    assert_ne!(before.ip_sets, after.ip_sets);
    let members = &after.ip_sets.values().next().unwrap().members;
    assert_eq!(members.len(), 2);
}

#[test]
fn named_ports_count_addresses_a_selected_network_set_covers() {
    // x/a is not labelled role: inside, but its address is in a network set that is: the
    // engine matches the selector by address and the named port by endpoint, so x/b may
    // reach x/a's `web` (81/TCP) through the set.
    let c = cluster_of(&format!(
        "{PODS}
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkSet
metadata: {{name: inside, labels: {{role: inside}}}}
spec: {{nets: [10.0.0.1/32]}}
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {{name: to-inside-web}}
spec:
  selector: app == 'b'
  types: [Egress]
  egress: [{{action: Allow, protocol: TCP, destination: {{selector: role == 'inside', ports: [web]}}}}]
"
    ));
    let p = program(&c, "n2");
    let set = p.port_sets.values().next().unwrap();
    assert_eq!(set.selector.as_deref(), Some("role == \"inside\""));
    let members: Vec<String> = set.members.iter().map(|m| m.ip.to_string()).collect();
    assert_eq!(members, ["10.0.0.1"]);
    let diffs = disagreements(&c, &[(Protocol::Tcp, 81), (Protocol::Tcp, 82)], &[]);
    assert!(diffs.is_empty(), "{}", diffs.join("\n"));
    let packet = |port| Packet {
        from: Peer::Endpoint("x/b".into()),
        to: Peer::Endpoint("x/a".into()),
        protocol: Protocol::Tcp,
        port,
    };
    assert!(evaluate(&c, &packet(81)).egress.allowed);
    assert!(!evaluate(&c, &packet(82)).egress.allowed);
}

#[test]
fn long_or_odd_profile_names_are_hashed() {
    assert_eq!(named_id("pri-", "kns.x"), "pri-kns.x");
    let long = "ksa.".to_owned() + &"n".repeat(70);
    let id = named_id("pri-", &long);
    assert_eq!(id.len(), 4 + 1 + 16);
    assert!(id.starts_with("pri-_"));
    assert_ne!(named_id("pro-", "a/b"), "pro-a/b");
    assert_eq!(hash("x").len(), 16);
}

// ---------------------------------------------------------------------------------------------
// Random clusters
// ---------------------------------------------------------------------------------------------

mod random {
    //! Random small clusters — labels, network sets, Kubernetes policies and Calico policies
    //! in two tiers with every action — whose programs must agree with the engine.

    use proptest::prelude::*;
    use serde_json::{json, Value};

    use super::*;
    use margay_api::decode;

    const NAMESPACES: [&str; 2] = ["n0", "n1"];
    const PORTS: [(Protocol, u16); 3] = [
        (Protocol::Tcp, 80),
        (Protocol::Tcp, 81),
        (Protocol::Udp, 80),
    ];
    const SELECTORS: [&str; 7] = [
        "all()",
        "has(k)",
        "k == 'u'",
        "k != 'v'",
        "j in {'u', 'v'}",
        "!has(j)",
        "k == 'u' && j == 'v'",
    ];
    const NAMESPACE_SELECTORS: [&str; 4] = ["all()", "team == 'a'", "!has(team)", "global()"];
    const NETS: [&str; 5] = [
        "10.0.0.0/16",
        "10.0.1.0/24",
        "10.0.0.1/32",
        "10.0.0.0/30",
        "192.0.2.0/24",
    ];
    const ACTIONS: [&str; 4] = ["Allow", "Deny", "Pass", "Log"];

    type Labels = BTreeMap<String, String>;

    fn labels() -> impl Strategy<Value = Labels> {
        prop::collection::btree_map(
            prop::sample::select(&["k", "j"][..]).prop_map(str::to_owned),
            prop::sample::select(&["u", "v"][..]).prop_map(str::to_owned),
            0..=2,
        )
    }

    #[derive(Debug, Clone)]
    struct Pod {
        namespace: usize,
        node: usize,
        labels: Labels,
        /// The port it names `web`, if any.
        web: Option<(Protocol, u16)>,
    }

    fn pod() -> impl Strategy<Value = Pod> {
        (
            0..2usize,
            0..2usize,
            labels(),
            prop::option::of(prop::sample::select(&PORTS[..])),
        )
            .prop_map(|(namespace, node, labels, web)| Pod {
                namespace,
                node,
                labels,
                web,
            })
    }

    fn port() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(json!(80)),
            Just(json!(81)),
            Just(json!("79:80")),
            Just(json!("web")),
        ]
    }

    fn ports() -> impl Strategy<Value = Vec<Value>> {
        prop::collection::vec(port(), 0..=2)
    }

    /// A Calico rule end. Ports only with a protocol (Calico requires one).
    fn entity(with_ports: bool) -> impl Strategy<Value = Value> {
        (
            prop::option::of(prop::sample::select(&SELECTORS[..])),
            prop::option::of(prop::sample::select(&SELECTORS[..])),
            prop::option::of(prop::sample::select(&NAMESPACE_SELECTORS[..])),
            prop::option::of(prop::sample::select(&NETS[..])),
            prop::option::of(prop::sample::select(&NETS[..])),
            ports(),
            ports(),
        )
            .prop_map(
                move |(sel, not_sel, ns_sel, nets, not_nets, ports, not_ports)| {
                    let mut e = json!({});
                    if let Some(s) = sel {
                        e["selector"] = json!(s);
                    }
                    if let Some(s) = not_sel {
                        e["notSelector"] = json!(s);
                    }
                    if let Some(s) = ns_sel {
                        e["namespaceSelector"] = json!(s);
                    }
                    if let Some(n) = nets {
                        e["nets"] = json!([n]);
                    }
                    if let Some(n) = not_nets {
                        e["notNets"] = json!([n]);
                    }
                    if with_ports && !ports.is_empty() {
                        e["ports"] = json!(ports);
                    }
                    if with_ports && !not_ports.is_empty() {
                        e["notPorts"] = json!(not_ports);
                    }
                    e
                },
            )
    }

    fn calico_rule() -> impl Strategy<Value = Value> {
        (
            prop::sample::select(&ACTIONS[..]),
            prop::option::of(prop::sample::select(&["TCP", "UDP"][..])),
            prop::option::of(prop::sample::select(&["TCP", "UDP"][..])),
        )
            .prop_flat_map(|(action, protocol, not_protocol)| {
                let with_ports = protocol.is_some();
                (entity(with_ports), entity(with_ports)).prop_map(move |(source, destination)| {
                    let mut r =
                        json!({"action": action, "source": source, "destination": destination});
                    if let Some(p) = protocol {
                        r["protocol"] = json!(p);
                    }
                    if let Some(p) = not_protocol {
                        r["notProtocol"] = json!(p);
                    }
                    r
                })
            })
    }

    #[derive(Debug, Clone)]
    struct CalicoPolicy {
        /// `None`: global.
        namespace: Option<usize>,
        tiered: bool,
        order: Option<u8>,
        selector: &'static str,
        ingress: Option<Vec<Value>>,
        egress: Option<Vec<Value>>,
    }

    fn calico_policy() -> impl Strategy<Value = CalicoPolicy> {
        (
            prop::option::of(0..2usize),
            any::<bool>(),
            prop::option::of(0..3u8),
            prop::sample::select(&SELECTORS[..]),
            prop::option::of(prop::collection::vec(calico_rule(), 0..=3)),
            prop::option::of(prop::collection::vec(calico_rule(), 0..=3)),
        )
            .prop_map(|(namespace, tiered, order, selector, ingress, egress)| {
                CalicoPolicy {
                    namespace,
                    tiered,
                    order,
                    selector,
                    ingress,
                    egress,
                }
            })
    }

    /// A Kubernetes rule: peers (pod selector and/or namespace selector, or an ipBlock) and
    /// ports (numbers, `web`, a range, UDP).
    fn kubernetes_rule() -> impl Strategy<Value = Value> {
        let peer = prop_oneof![
            (prop::option::of(labels()), prop::option::of(labels())).prop_map(|(pods, ns)| {
                let mut p = json!({});
                if let Some(l) = pods {
                    p["podSelector"] = json!({"matchLabels": l});
                }
                if let Some(l) = ns {
                    p["namespaceSelector"] = json!({"matchLabels": l});
                }
                if p == json!({}) {
                    p["podSelector"] = json!({});
                }
                p
            }),
            Just(json!({"ipBlock": {"cidr": "10.0.0.0/16", "except": ["10.0.1.0/24"]}})),
        ];
        let port = prop_oneof![
            Just(json!({"port": 80})),
            Just(json!({"port": "web"})),
            Just(json!({"port": 79, "endPort": 80})),
            Just(json!({"port": 80, "protocol": "UDP"})),
            Just(json!({"protocol": "UDP"})),
        ];
        (
            prop::collection::vec(peer, 0..=2),
            prop::collection::vec(port, 0..=2),
        )
            .prop_map(|(peers, ports)| json!({"peers": peers, "ports": ports}))
    }

    #[derive(Debug, Clone)]
    struct KubernetesPolicy {
        namespace: usize,
        selector: Labels,
        ingress: Option<Vec<Value>>,
        egress: Option<Vec<Value>>,
    }

    fn kubernetes_policy() -> impl Strategy<Value = KubernetesPolicy> {
        (
            0..2usize,
            labels(),
            prop::option::of(prop::collection::vec(kubernetes_rule(), 0..=2)),
            prop::option::of(prop::collection::vec(kubernetes_rule(), 0..=2)),
        )
            .prop_map(|(namespace, selector, ingress, egress)| KubernetesPolicy {
                namespace,
                selector,
                ingress: ingress.or_else(|| egress.is_none().then(Vec::new)),
                egress,
            })
    }

    #[derive(Debug, Clone)]
    struct TestCluster {
        namespace_labels: Vec<Labels>,
        pods: Vec<Pod>,
        /// The labels of a global network set over 10.0.0.0/30 (pod addresses) and
        /// 192.0.2.0/24 (external ones).
        network_set: Option<Labels>,
        tier_pass: bool,
        kubernetes: Vec<KubernetesPolicy>,
        calico: Vec<CalicoPolicy>,
    }

    fn test_cluster() -> impl Strategy<Value = TestCluster> {
        (
            prop::collection::vec(prop::option::of(prop::sample::select(&["a", "b"][..])), 2),
            prop::collection::vec(pod(), 1..=5),
            prop::option::of(labels()),
            any::<bool>(),
            prop::collection::vec(kubernetes_policy(), 0..=2),
            prop::collection::vec(calico_policy(), 0..=3),
        )
            .prop_map(
                |(teams, pods, network_set, tier_pass, kubernetes, calico)| TestCluster {
                    namespace_labels: teams
                        .into_iter()
                        .map(|t| {
                            t.map(|t| ("team".to_owned(), t.to_owned()))
                                .into_iter()
                                .collect()
                        })
                        .collect(),
                    pods,
                    network_set,
                    tier_pass,
                    kubernetes,
                    calico,
                },
            )
    }

    fn to_resources(t: &TestCluster) -> Vec<margay_api::Resource> {
        let mut docs = vec![json!({"apiVersion": "projectcalico.org/v3", "kind": "Tier",
            "metadata": {"name": "t1"},
            "spec": {"order": 100, "defaultAction": if t.tier_pass { "Pass" } else { "Deny" }}})];
        for (i, labels) in t.namespace_labels.iter().enumerate() {
            docs.push(json!({"apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": NAMESPACES[i], "labels": labels}}));
        }
        for (i, pod) in t.pods.iter().enumerate() {
            let ns = NAMESPACES[pod.namespace];
            let node = format!("node{}", pod.node);
            let ports: Vec<Value> = pod
                .web
                .iter()
                .map(|(p, n)| json!({"name": "web", "protocol": p.to_string(), "port": n}))
                .collect();
            docs.push(json!({"apiVersion": "margay.dev/v1", "kind": "WorkloadEndpoint",
                "metadata": {"name": format!("{node}-k8s-p{i}-eth0"), "namespace": ns, "labels": pod.labels},
                "spec": {"orchestrator": "k8s", "node": node, "pod": format!("p{i}"), "endpoint": "eth0",
                         "interfaceName": format!("mgy{i:011x}"),
                         "ipNetworks": [format!("10.0.{}.{}/32", pod.namespace, i + 1)],
                         "profiles": [format!("kns.{ns}")], "ports": ports}}));
        }
        if let Some(labels) = &t.network_set {
            docs.push(
                json!({"apiVersion": "projectcalico.org/v3", "kind": "GlobalNetworkSet",
                "metadata": {"name": "nets", "labels": labels},
                "spec": {"nets": ["10.0.0.0/30", "192.0.2.0/24"]}}),
            );
        }
        for (i, p) in t.kubernetes.iter().enumerate() {
            let mut spec = json!({"podSelector": {"matchLabels": p.selector}});
            let mut types = Vec::new();
            for (rules, field, peers, ty) in [
                (&p.ingress, "ingress", "from", "Ingress"),
                (&p.egress, "egress", "to", "Egress"),
            ] {
                if let Some(rules) = rules {
                    types.push(ty);
                    spec[field] = rules
                        .iter()
                        .map(|r| json!({peers: r["peers"], "ports": r["ports"]}))
                        .collect();
                }
            }
            spec["policyTypes"] = json!(types);
            docs.push(
                json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                "metadata": {"name": format!("k{i}"), "namespace": NAMESPACES[p.namespace]},
                "spec": spec}),
            );
        }
        for (i, p) in t.calico.iter().enumerate() {
            let tier = if p.tiered { "t1" } else { "default" };
            let mut spec = json!({"tier": tier, "selector": p.selector});
            if let Some(order) = p.order {
                spec["order"] = json!(order);
            }
            let mut types = Vec::new();
            for (rules, field, ty) in [
                (&p.ingress, "ingress", "Ingress"),
                (&p.egress, "egress", "Egress"),
            ] {
                if let Some(rules) = rules {
                    types.push(ty);
                    spec[field] = json!(rules);
                }
            }
            spec["types"] = json!(types);
            let name = format!("{tier}.c{i}");
            docs.push(match p.namespace {
                Some(ns) => json!({"apiVersion": "projectcalico.org/v3", "kind": "NetworkPolicy",
                    "metadata": {"name": name, "namespace": NAMESPACES[ns]}, "spec": spec}),
                None => json!({"apiVersion": "projectcalico.org/v3", "kind": "GlobalNetworkPolicy",
                    "metadata": {"name": name}, "spec": spec}),
            });
        }
        docs.into_iter()
            .map(|d| {
                decode(d.clone())
                    .unwrap_or_else(|e| panic!("{d}: {e}"))
                    .resource
            })
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        #[test]
        fn programs_agree_with_the_engine(t in test_cluster()) {
            let cluster = Cluster::from_resources(to_resources(&t)).unwrap();
            let externals = ["192.0.2.9".parse().unwrap(), "10.0.1.200".parse().unwrap()];
            let diffs = disagreements(&cluster, &PORTS, &externals);
            prop_assert!(diffs.is_empty(), "{}", diffs.join("\n"));
        }
    }
}

#[test]
fn groups_whose_endpoints_move_together_keep_their_ids() {
    let second = "
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: also-from-b}
spec:
  order: 5
  selector: app in {'a', 'c'}
  ingress: [{action: Deny, protocol: TCP, source: {selector: app == 'b'}}]
";
    let c = wep("x", "c", "n1", "mgyc", "10.0.0.3", "app: c");
    let one = program(&cluster_of(&format!("{PODS}{c}{ALLOW_FROM_B}")), "n1");
    let two = program(
        &cluster_of(&format!("{PODS}{c}{ALLOW_FROM_B}{second}")),
        "n1",
    );
    let group = |p: &Program, iface: &str| p.endpoints[iface].ingress.tiers[0].group.clone();
    // a's policies change from [from-b] to [also-from-b, from-b]: a new group by content,
    // whose id the old one lends it; c had no group before and gets the new one's own id.
    assert_ne!(group(&one, "mgya"), group(&two, "mgya"));
    let kept = two.clone().reusing_groups(&one);
    assert_eq!(group(&kept, "mgya"), group(&one, "mgya"));
    assert_eq!(group(&kept, "mgyc"), group(&two, "mgyc"));
    let id = group(&one, "mgya").unwrap();
    assert_eq!(kept.groups[&id], two.groups[&group(&two, "mgya").unwrap()]);
    assert_eq!(kept.groups.len(), two.groups.len());
    // Only names changed: every packet gets the same verdict.
    assert_eq!(kept.policies, two.policies);
    assert_eq!(kept.ip_sets, two.ip_sets);
    // A program with itself is unchanged; the policy removed again, a's group keeps the id.
    assert_eq!(two.clone().reusing_groups(&two), two);
    let back = one.clone().reusing_groups(&kept);
    assert_eq!(group(&back, "mgya"), group(&kept, "mgya"));
    assert_eq!(back.groups[&id], one.groups[&id]);
}
