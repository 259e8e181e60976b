//! The program's shape, its golden file, and its agreement with [`evaluate`]: a small
//! interpreter walks packets through programs exactly as the dataplane chains do, and must
//! reach the engine's verdict for every pair of endpoints.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;

use margay_api::{Action, EndpointToHostAction, PolicyType, Resource, TierDefaultAction};

use super::*;
use crate::tests::resources;
use crate::{evaluate, Decision, Endpoint, Packet, Peer, Transport};

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

/// Where one end of a test packet is, as the dataplanes see it.
#[derive(Clone, Copy)]
enum Place<'p> {
    /// A programmed workload endpoint: its node's program and its pipelines.
    Workload(&'p Program, &'p LocalEndpoint),
    /// An address of the node of this program, and the host endpoint whose interface a packet
    /// from or to it crosses, if any.
    Host(&'p Program, Option<&'p LocalHostEndpoint>),
    External,
}

impl Place<'_> {
    fn node(&self) -> Option<&str> {
        match self {
            Place::Workload(p, _) | Place::Host(p, _) => Some(&p.node),
            Place::External => None,
        }
    }
}

/// Whether a host endpoint's chain lets `w` through in `direction`, as `fh-`/`th-` do:
/// the overlay between the nodes and the failsafe ports, then its pipeline.
fn host_allows(p: &Program, hep: &LocalHostEndpoint, direction: PolicyType, w: &Wire) -> bool {
    let exemptions = p.exemptions.as_ref().unwrap();
    let (remote, failsafe, pipeline) = match direction {
        PolicyType::Ingress => (w.src, &exemptions.failsafe_inbound, &hep.ingress),
        PolicyType::Egress => (w.dst, &exemptions.failsafe_outbound, &hep.egress),
    };
    let nodes = &p.ip_sets[HOSTS_SET].members;
    let overlay = w.protocol == Protocol::Udp
        && w.dport == exemptions.vxlan_port
        && nodes.iter().any(|n| n.contains(&remote));
    let failsafe = failsafe.iter().any(|f| {
        f.protocol.to_string() == w.protocol.to_string()
            && f.port == w.dport
            && f.net.is_none_or(|net| net.contains(&remote))
    });
    overlay || failsafe || allows(p, pipeline, w)
}

/// Whether the dataplanes let `w` from `from` to `to` out of its source (egress) and into its
/// destination (ingress), as the chains do: a workload's pipelines on the forward path; from
/// a workload to its own node, its egress pipeline then the node's endpoint-to-host action;
/// from a node to its own workload, nothing (the output path returns for workloads); the
/// node's own traffic through a host endpoint, its chains.
fn verdicts(from: Place<'_>, to: Place<'_>, w: &Wire) -> (bool, bool) {
    let same_node = from.node().is_some() && from.node() == to.node();
    let egress = match from {
        Place::Workload(p, ep) => allows(p, &ep.egress, w),
        Place::Host(..) if same_node && matches!(to, Place::Workload(..)) => true,
        Place::Host(p, Some(hep)) => host_allows(p, hep, PolicyType::Egress, w),
        Place::Host(_, None) | Place::External => true,
    };
    let ingress = match to {
        Place::Workload(_, _) if same_node && matches!(from, Place::Host(..)) => true,
        Place::Workload(p, ep) => allows(p, &ep.ingress, w),
        Place::Host(p, _) if same_node => p.endpoint_to_host != EndpointToHostAction::Drop,
        Place::Host(p, Some(hep)) => host_allows(p, hep, PolicyType::Ingress, w),
        Place::Host(_, None) | Place::External => true,
    };
    (egress, ingress)
}

/// Every difference between the programs of every node and [`evaluate`], for every pair of
/// programmed endpoints, from and to each node's address and each external address, on each
/// (protocol, port).
fn disagreements(
    cluster: &Cluster,
    checks: &[(Protocol, u16)],
    externals: &[IpAddr],
) -> Vec<String> {
    let programs: BTreeMap<String, Program> = cluster
        .endpoints()
        .iter()
        .filter_map(|ep| ep.node.clone())
        .chain(cluster.nodes.keys().cloned())
        .map(|node| (node.clone(), program(cluster, &node)))
        .collect();
    // (peer as the engine names it, address, where it is)
    let mut peers = Vec::new();
    for ep in cluster.endpoints() {
        if let (Some(ip), Some((p, local))) = (ipv4(ep), programmed(&programs, ep)) {
            peers.push((Peer::Endpoint(ep.id.clone()), ip, Place::Workload(p, local)));
        }
    }
    for (node, addresses) in &cluster.nodes {
        let program = &programs[node];
        for ip in addresses.all.iter().filter(|ip| ip.is_ipv4()) {
            let hep = program.host_endpoints.values().find(|h| h.ips.contains(ip));
            peers.push((Peer::Ip(*ip), *ip, Place::Host(program, hep)));
        }
    }
    for ip in externals {
        peers.push((Peer::Ip(*ip), *ip, Place::External));
    }
    let mut out = Vec::new();
    for (from, src, src_place) in &peers {
        for (to, dst, dst_place) in &peers {
            let workload = |p: &Place<'_>| matches!(p, Place::Workload(..));
            if from == to || !(workload(src_place) || workload(dst_place)) {
                continue;
            }
            for &(protocol, port) in checks {
                let verdict = evaluate(
                    cluster,
                    &Packet {
                        from: from.clone(),
                        to: to.clone(),
                        transport: Transport::Ports {
                            protocol,
                            port,
                            source_port: None,
                        },
                    },
                );
                let wire = Wire {
                    src: *src,
                    dst: *dst,
                    protocol,
                    sport: EPHEMERAL,
                    dport: port,
                };
                let (egress, ingress) = verdicts(*src_place, *dst_place, &wire);
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
            (Protocol::Tcp, 179),
            (Protocol::Tcp, 2379),
            (Protocol::Tcp, 8080),
            (Protocol::Tcp, 9090),
            (Protocol::Tcp, 10250),
            (Protocol::Udp, 53),
            (Protocol::Udp, 80),
            (Protocol::Udp, 4789),
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
    // node1's host endpoint: the policy selecting it, then no profile (drop); forwarded
    // traffic in from it meets the applyOnForward policy only.
    let hep = &p.host_endpoints["eth0"];
    assert_eq!(hep.name, "node1-eth0");
    let names = |pipeline: &Pipeline| -> Vec<String> {
        pipeline
            .tiers
            .iter()
            .flat_map(|t| {
                assert!(
                    t.group.is_none(),
                    "host endpoint chains jump to their policies"
                );
                &t.policies
            })
            .map(|id| p.policies[id].policy.name.clone())
            .collect()
    };
    assert_eq!(
        names(&hep.ingress),
        ["default.host-ingress", "default.node1-forward"]
    );
    assert!(hep.ingress.profiles.is_empty() && hep.egress.tiers.is_empty());
    assert_eq!(names(&hep.forward_ingress), ["default.node1-forward"]);
    assert!(hep.forward_ingress.profiles.is_empty() && hep.forward_egress.tiers.is_empty());
    let exemptions = p.exemptions.as_ref().unwrap();
    assert_eq!(exemptions.failsafe_inbound.len(), 3);
    assert_eq!(exemptions.vxlan_port, 4789);
    let net = |s: &str| s.parse::<IpNet>().unwrap();
    assert_eq!(
        p.ip_sets[HOSTS_SET].members,
        [net("198.18.0.11/32"), net("198.18.0.12/32")].into()
    );
    // Every chain and set a pipeline names is there, and nothing else.
    let mut used = BTreeSet::new();
    let host_pipelines = p
        .host_endpoints
        .values()
        .flat_map(|h| [&h.ingress, &h.egress, &h.forward_ingress, &h.forward_egress]);
    let pipelines = p
        .endpoints
        .values()
        .flat_map(|ep| [&ep.ingress, &ep.egress])
        .chain(host_pipelines);
    for pipeline in pipelines {
        {
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
        transport: Transport::Ports {
            protocol: Protocol::Tcp,
            port,
            source_port: None,
        },
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
// Traffic between workloads and their own node
// ---------------------------------------------------------------------------------------------

const NODES: &str = "
---
apiVersion: projectcalico.org/v3
kind: Node
metadata: {name: n1}
spec: {bgp: {ipv4Address: 192.0.2.1/24}, ipv4VXLANTunnelAddr: 10.0.9.1}
---
apiVersion: projectcalico.org/v3
kind: Node
metadata: {name: n2}
spec: {bgp: {ipv4Address: 192.0.2.2/24}}
";

fn tcp(from: Peer, to: Peer, port: u16) -> Packet {
    Packet {
        from,
        to,
        transport: Transport::Ports {
            protocol: Protocol::Tcp,
            port,
            source_port: None,
        },
    }
}

fn ip_peer(ip: &str) -> Peer {
    Peer::Ip(ip.parse().unwrap())
}

#[test]
fn workloads_to_their_own_node_meet_its_endpoint_to_host_action() {
    // Calico's default for every node, Accept for n2.
    let yaml = format!(
        "{PODS}{NODES}---\napiVersion: projectcalico.org/v3\nkind: FelixConfiguration\n\
         metadata: {{name: node.n2}}\nspec: {{defaultEndpointToHostAction: Accept}}\n"
    );
    let c = cluster_of(&yaml);
    assert_eq!(
        program(&c, "n1").endpoint_to_host,
        EndpointToHostAction::Drop
    );
    assert_eq!(
        program(&c, "n2").endpoint_to_host,
        EndpointToHostAction::Accept
    );
    let a = || Peer::Endpoint("x/a".into());

    // To its own node's address, or its tunnel address: egress policy, then the action.
    for node_ip in ["192.0.2.1", "10.0.9.1"] {
        let v = evaluate(&c, &tcp(a(), ip_peer(node_ip), 22));
        assert!(v.egress.allowed, "{v:?}");
        assert!(!v.allowed);
        assert_eq!(
            v.ingress.decision,
            Decision::EndpointToHost {
                node: "n1".into(),
                action: EndpointToHostAction::Drop
            }
        );
    }
    let v = evaluate(
        &c,
        &tcp(Peer::Endpoint("x/b".into()), ip_peer("192.0.2.2"), 22),
    );
    assert!(v.allowed);
    assert!(matches!(
        v.ingress.decision,
        Decision::EndpointToHost {
            action: EndpointToHostAction::Accept,
            ..
        }
    ));
    // Another node's address is no workload's and no host endpoint's: nothing on that side.
    let v = evaluate(&c, &tcp(a(), ip_peer("192.0.2.2"), 22));
    assert!(v.allowed);
    assert!(matches!(v.ingress.decision, Decision::NotAnEndpoint { .. }));

    // Egress policy still comes first.
    let deny_egress = format!(
        "{yaml}---\napiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\n\
         metadata: {{name: no-egress}}\nspec: {{selector: all(), types: [Egress, Ingress]}}\n"
    );
    let c = cluster_of(&deny_egress);
    let v = evaluate(
        &c,
        &tcp(Peer::Endpoint("x/b".into()), ip_peer("192.0.2.2"), 22),
    );
    assert!(!v.egress.allowed);
    assert!(!v.allowed);
    // From a node to its own workload: not policed, whatever the workload's ingress policy;
    // from another node, the workload's ingress policy decides.
    let v = evaluate(&c, &tcp(ip_peer("192.0.2.1"), a(), 80));
    assert!(v.allowed, "{v:?}");
    assert_eq!(v.ingress.decision, Decision::FromHost { node: "n1".into() });
    assert!(!evaluate(&c, &tcp(ip_peer("192.0.2.2"), a(), 80)).allowed);
    assert!(disagreements(&c, &[(Protocol::Tcp, 22)], &[]).is_empty());
}

#[test]
fn the_default_configuration_applies_unless_the_node_has_its_own() {
    let yaml = format!(
        "{PODS}{NODES}---\napiVersion: projectcalico.org/v3\nkind: FelixConfiguration\n\
         metadata: {{name: default}}\nspec: {{defaultEndpointToHostAction: Return}}\n\
         ---\napiVersion: projectcalico.org/v3\nkind: FelixConfiguration\n\
         metadata: {{name: node.n2}}\nspec: {{defaultEndpointToHostAction: Drop}}\n"
    );
    let c = cluster_of(&yaml);
    assert_eq!(
        program(&c, "n1").endpoint_to_host,
        EndpointToHostAction::Return
    );
    assert_eq!(
        program(&c, "n2").endpoint_to_host,
        EndpointToHostAction::Drop
    );
    let v = evaluate(
        &c,
        &tcp(Peer::Endpoint("x/a".into()), ip_peer("192.0.2.1"), 53),
    );
    assert!(v.allowed);
    assert!(disagreements(&c, &[(Protocol::Tcp, 53)], &[]).is_empty());
}

// ---------------------------------------------------------------------------------------------
// Host endpoints
// ---------------------------------------------------------------------------------------------

/// n1's eth0 as a host endpoint (192.0.2.1, labelled `host: n1`), and n2's (192.0.2.2).
const HOST_ENDPOINTS: &str = "
---
apiVersion: projectcalico.org/v3
kind: HostEndpoint
metadata: {name: n1-eth0, labels: {host: n1}}
spec: {node: n1, interfaceName: eth0, expectedIPs: [192.0.2.1]}
---
apiVersion: projectcalico.org/v3
kind: HostEndpoint
metadata: {name: n2-eth0, labels: {host: n2}}
spec: {node: n2, interfaceName: eth0, expectedIPs: [192.0.2.2]}
";

#[test]
fn host_endpoints_deny_by_default_except_failsafe_ports() {
    let c = cluster_of(&format!("{PODS}{NODES}{HOST_ENDPOINTS}"));
    let p = program(&c, "n1");
    assert_eq!(p.host_endpoints.keys().collect::<Vec<_>>(), ["eth0"]);
    let exemptions = p.exemptions.as_ref().unwrap();
    assert_eq!(exemptions.failsafe_inbound.len(), 9, "Calico's defaults");
    // From outside, from the other node, from a pod on the other node: nothing gets in but
    // the failsafe ports (SSH, BGP, etcd, the API server…) and VXLAN between the nodes.
    for from in ["198.51.100.7", "192.0.2.2"] {
        let v = evaluate(&c, &tcp(ip_peer(from), ip_peer("192.0.2.1"), 80));
        assert!(!v.ingress.allowed);
        assert_eq!(v.ingress.decision, Decision::NoProfileMatched);
        assert_eq!(v.ingress.host_endpoint.as_deref(), Some("n1-eth0"));
        let v = evaluate(&c, &tcp(ip_peer(from), ip_peer("192.0.2.1"), 22));
        assert!(v.ingress.allowed);
        assert!(matches!(v.ingress.decision, Decision::Failsafe { .. }));
    }
    // n2's own traffic leaves through its host endpoint, whose outbound failsafe ports do not
    // include SSH: Calico's defaults let a node be reached, not reach others.
    let v = evaluate(&c, &tcp(ip_peer("192.0.2.2"), ip_peer("192.0.2.1"), 22));
    assert!(!v.egress.allowed);
    assert_eq!(v.egress.host_endpoint.as_deref(), Some("n2-eth0"));
    let v = evaluate(
        &c,
        &tcp(Peer::Endpoint("x/b".into()), ip_peer("192.0.2.1"), 443),
    );
    assert!(!v.allowed);
    let vxlan = Packet {
        from: ip_peer("192.0.2.2"),
        to: ip_peer("192.0.2.1"),
        transport: Transport::Ports {
            protocol: Protocol::Udp,
            port: 4789,
            source_port: None,
        },
    };
    let v = evaluate(&c, &vxlan);
    assert!(v.allowed, "{v:?}");
    assert!(matches!(v.ingress.decision, Decision::Overlay { .. }));
    assert!(matches!(v.egress.decision, Decision::Overlay { .. }));
    // The node's own traffic out of eth0 likewise: only the outbound failsafe ports.
    let v = evaluate(&c, &tcp(ip_peer("192.0.2.1"), ip_peer("198.51.100.7"), 443));
    assert!(!v.allowed);
    assert_eq!(v.egress.host_endpoint.as_deref(), Some("n1-eth0"));
    let v = evaluate(
        &c,
        &tcp(ip_peer("192.0.2.1"), ip_peer("198.51.100.7"), 6443),
    );
    assert!(v.allowed);
    // A workload and its own node: no host endpoint on that path, either way.
    let v = evaluate(
        &c,
        &tcp(Peer::Endpoint("x/a".into()), ip_peer("192.0.2.1"), 443),
    );
    assert!(matches!(
        v.ingress.decision,
        Decision::EndpointToHost { .. }
    ));
    let v = evaluate(
        &c,
        &tcp(ip_peer("192.0.2.1"), Peer::Endpoint("x/a".into()), 443),
    );
    assert!(v.allowed);
    assert_eq!(v.egress.decision, Decision::FromHost { node: "n1".into() });
    let checks = [
        (Protocol::Tcp, 22),
        (Protocol::Tcp, 80),
        (Protocol::Tcp, 6443),
        (Protocol::Udp, 4789),
    ];
    let externals = ["198.51.100.7".parse().unwrap()];
    let diffs = disagreements(&c, &checks, &externals);
    assert!(diffs.is_empty(), "{}", diffs.join("\n"));
}

#[test]
fn host_endpoint_policy_profiles_and_failsafe_nets() {
    let yaml = format!(
        "{PODS}{NODES}{HOST_ENDPOINTS}
---
apiVersion: projectcalico.org/v3
kind: FelixConfiguration
metadata: {{name: default}}
spec:
  failsafeInboundHostPorts: [{{protocol: TCP, port: 22, net: 192.0.2.0/24}}]
  failsafeOutboundHostPorts: []
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {{name: hosts}}
spec:
  selector: has(host)
  types: [Ingress, Egress]
  ingress:
  - {{action: Allow, protocol: TCP, source: {{selector: has(host)}}, destination: {{ports: [10250]}}}}
  - {{action: Allow, protocol: TCP, source: {{selector: app == 'a'}}, destination: {{ports: [53]}}}}
  egress:
  - {{action: Allow, destination: {{nets: [198.51.100.0/24]}}}}
---
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {{name: pods-only, namespace: x}}
spec:
  selector: all()
  types: [Ingress]
  ingress: [{{action: Allow}}]
"
    );
    let c = cluster_of(&yaml);
    let p = program(&c, "n1");
    // The namespaced policy never selects a host endpoint; the global one does.
    let names: Vec<&str> = p.host_endpoints["eth0"]
        .ingress
        .tiers
        .iter()
        .flat_map(|t| &t.policies)
        .map(|id| p.policies[id].policy.name.as_str())
        .collect();
    assert_eq!(names, ["default.hosts"]);
    // A rule selecting host endpoints matches their expectedIPs.
    let rule = &p
        .policies
        .values()
        .find(|c| c.policy.name == "default.hosts")
        .unwrap()
        .rules[0];
    let set = rule.matches.source.ip_set.as_ref().unwrap();
    assert_eq!(
        p.ip_sets[set].members,
        [
            "192.0.2.1/32".parse().unwrap(),
            "192.0.2.2/32".parse().unwrap()
        ]
        .into()
    );
    // (What n1 lets in: n2's egress policy has its say on n2.)
    let to_n1 = |from: &str, port| {
        evaluate(&c, &tcp(ip_peer(from), ip_peer("192.0.2.1"), port))
            .ingress
            .allowed
    };
    assert!(to_n1("192.0.2.2", 10250));
    assert!(!to_n1("198.51.100.7", 10250));
    // The failsafe port only from its net.
    assert!(to_n1("192.0.2.2", 22));
    assert!(!to_n1("198.51.100.7", 22));
    // Pod b on n2 to n1: allowed on 53 only if it were app a.
    let v = evaluate(
        &c,
        &tcp(Peer::Endpoint("x/b".into()), ip_peer("192.0.2.1"), 53),
    );
    assert!(!v.allowed);
    assert_eq!(
        v.ingress.decision,
        Decision::TierDefault {
            tier: "default".into()
        }
    );
    // No failsafe out any more: egress only where the policy allows.
    let from_n1 = |port| {
        evaluate(
            &c,
            &tcp(ip_peer("192.0.2.1"), ip_peer("198.51.100.7"), port),
        )
    };
    assert!(from_n1(443).allowed);
    let v = evaluate(&c, &tcp(ip_peer("192.0.2.1"), ip_peer("203.0.113.1"), 53));
    assert!(!v.allowed);

    // Calico's default-allow profile, without policy: everything.
    let open = format!(
        "{PODS}{NODES}{}",
        HOST_ENDPOINTS.replace(
            "expectedIPs: [192.0.2.1]}",
            "expectedIPs: [192.0.2.1], profiles: [projectcalico-default-allow]}"
        )
    );
    let c = cluster_of(&open);
    let v = evaluate(&c, &tcp(ip_peer("198.51.100.7"), ip_peer("192.0.2.1"), 80));
    assert!(v.allowed);
    assert!(matches!(v.ingress.decision, Decision::ProfileRule { .. }));
    let checks = [
        (Protocol::Tcp, 22),
        (Protocol::Tcp, 53),
        (Protocol::Tcp, 10250),
    ];
    let externals = [
        "198.51.100.7".parse().unwrap(),
        "203.0.113.1".parse().unwrap(),
    ];
    for c in [cluster_of(&yaml), c] {
        let diffs = disagreements(&c, &checks, &externals);
        assert!(diffs.is_empty(), "{}", diffs.join("\n"));
    }
}

#[test]
fn apply_on_forward_policies_alone_police_forwarded_traffic() {
    let yaml = format!(
        "{PODS}{NODES}{HOST_ENDPOINTS}
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {{name: forwarded}}
spec:
  selector: host == 'n1'
  applyOnForward: true
  types: [Ingress]
  ingress: [{{action: Allow, source: {{nets: [192.0.2.0/24]}}}}]
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {{name: local-only}}
spec:
  selector: host == 'n1'
  types: [Egress]
  egress: [{{action: Allow}}]
"
    );
    let c = cluster_of(&yaml);
    let hep = &program(&c, "n1").host_endpoints["eth0"];
    let count = |pipeline: &Pipeline| {
        pipeline
            .tiers
            .iter()
            .map(|t| t.policies.len())
            .sum::<usize>()
    };
    assert_eq!(count(&hep.ingress), 1);
    assert_eq!(count(&hep.egress), 1);
    assert_eq!(count(&hep.forward_ingress), 1);
    assert_eq!(count(&hep.forward_egress), 0);
    assert!(hep.forward_ingress.profiles.is_empty());
}

#[test]
fn host_endpoints_the_agent_cannot_use_are_left_out_or_skipped() {
    let yaml = format!(
        "{PODS}{NODES}
---
apiVersion: projectcalico.org/v3
kind: HostEndpoint
metadata: {{name: all}}
spec: {{node: n1, interfaceName: '*'}}
---
apiVersion: projectcalico.org/v3
kind: HostEndpoint
metadata: {{name: by-address}}
spec: {{node: n1, expectedIPs: [192.0.2.1]}}
---
apiVersion: projectcalico.org/v3
kind: HostEndpoint
metadata: {{name: a-workload}}
spec: {{node: n1, interfaceName: mgya}}
---
apiVersion: projectcalico.org/v3
kind: HostEndpoint
metadata: {{name: eth1-a}}
spec: {{node: n1, interfaceName: eth1}}
---
apiVersion: projectcalico.org/v3
kind: HostEndpoint
metadata: {{name: eth1-b}}
spec: {{node: n1, interfaceName: eth1}}
"
    );
    let (c, skipped) = Cluster::from_resources_skipping_bad_policies(resources(&yaml)).unwrap();
    let skipped: Vec<String> = skipped.iter().map(ToString::to_string).collect();
    assert_eq!(
        skipped,
        [
            "HostEndpoint all: spec.interfaceName \"*\" (a host endpoint for every interface) \
             is not supported yet",
            "HostEndpoint by-address: a host endpoint without spec.interfaceName (found by its \
             expectedIPs) is not supported yet",
        ]
    );
    let p = program(&c, "n1");
    assert_eq!(p.host_endpoints["eth1"].name, "eth1-a");
    assert_eq!(
        p.skipped["HostEndpoint eth1-b"],
        "interface eth1 already belongs to HostEndpoint eth1-a"
    );
    assert_eq!(
        p.skipped["HostEndpoint a-workload"],
        "interface mgya is a workload interface"
    );
    let strict = Cluster::from_resources(resources(&yaml)).unwrap_err();
    assert!(
        strict.to_string().starts_with("HostEndpoint all: "),
        "{strict}"
    );
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
        /// Each node's `defaultEndpointToHostAction`, as an index into [`TO_HOST`].
        to_host: [usize; 2],
    }

    const TO_HOST: [&str; 3] = ["Drop", "Accept", "Return"];

    fn test_cluster() -> impl Strategy<Value = TestCluster> {
        (
            prop::collection::vec(prop::option::of(prop::sample::select(&["a", "b"][..])), 2),
            prop::collection::vec(pod(), 1..=5),
            prop::option::of(labels()),
            any::<bool>(),
            prop::collection::vec(kubernetes_policy(), 0..=2),
            prop::collection::vec(calico_policy(), 0..=3),
            prop::array::uniform2(0..3usize),
        )
            .prop_map(
                |(teams, pods, network_set, tier_pass, kubernetes, calico, to_host)| TestCluster {
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
                    to_host,
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
        for (i, action) in t.to_host.iter().enumerate() {
            docs.push(json!({"apiVersion": "projectcalico.org/v3", "kind": "Node",
                "metadata": {"name": format!("node{i}")},
                "spec": {"bgp": {"ipv4Address": format!("198.18.0.{}/24", i + 1)}}}));
            docs.push(
                json!({"apiVersion": "projectcalico.org/v3", "kind": "FelixConfiguration",
                "metadata": {"name": format!("node.node{i}")},
                "spec": {"defaultEndpointToHostAction": TO_HOST[*action]}}),
            );
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
