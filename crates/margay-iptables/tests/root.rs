//! Tests against the real kernel, each in throwaway network namespaces
//! (`ip netns add mgyipt-<pid>-<n>`) that a guard deletes even when the test panics: the
//! host's own tables and sets are never touched, and no packet leaves the namespaces.
//!
//! They need root, iptables and ipset; otherwise each prints "skipped: …" and passes. They
//! use the binaries `iptables` names (`iptables-restore`, …: [`Backend::Default`]), and the
//! loading tests also run with `iptables-legacy-*` and `iptables-nft-*` where installed.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::Duration;

use margay_iptables::{
    changed_chains, remove_all, render, Applier, Backend, Family, Iptables, IptablesCommand,
    Rendered,
};
use margay_policy::program::program;
use margay_testkit::fixture::{self, golden_node1};
use margay_testkit::netns::{run, TestNs};
use margay_testkit::pods::{self, PodNetwork, PORTS};

const FAMILIES: [Family; 2] = [Family::V4, Family::V6];

/// Why this process cannot run the tools against the kernel, if it cannot.
fn missing_tools_or_root() -> Option<&'static str> {
    let runs = |argv: &[&str]| {
        Command::new(argv[0])
            .args(&argv[1..])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !margay_sys::process::is_root() {
        Some("needs root")
    } else if !runs(&["iptables-restore", "--version"]) {
        Some("iptables is not installed")
    } else if !runs(&["ipset", "--version"]) {
        Some("ipset is not installed")
    } else {
        None
    }
}

macro_rules! require_root_and_tools {
    () => {
        if let Some(why) = missing_tools_or_root() {
            eprintln!("skipped: {why}");
            return;
        }
    };
}

/// The backends to load with: the default, and each explicit one that is installed.
fn backends() -> Vec<Backend> {
    let mut backends = vec![Backend::Default];
    for (backend, binary) in [
        (Backend::Legacy, "iptables-legacy-restore"),
        (Backend::Nft, "iptables-nft-restore"),
    ] {
        let installed = Command::new(binary)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        if installed {
            backends.push(backend);
        }
    }
    backends
}

/// The namespaces of these tests: `mgyipt-<pid>-<n>`.
const PREFIX: &str = "mgyipt";

/// margay-iptables in a test namespace.
trait IptablesNs {
    fn iptables(&self) -> IptablesCommand;
}

impl IptablesNs for TestNs {
    fn iptables(&self) -> IptablesCommand {
        IptablesCommand::in_netns(self.name())
    }
}

/// The rules of a filter table, without `iptables-save`'s dated comments.
fn rules(runner: &mut IptablesCommand, family: Family) -> Vec<String> {
    let save = runner.save(family).unwrap();
    save.lines()
        .filter(|l| l.starts_with("-A "))
        .map(str::to_owned)
        .collect()
}

fn kernel(runner: &mut IptablesCommand, family: Family) -> Rendered {
    let save = runner.save(family).unwrap();
    let sets = runner.ipset_save().unwrap();
    Rendered::from_kernel(family, &save, &sets)
}

/// The kernel shows exactly `want`: every chain with the same rules, written as
/// `iptables-save` writes them, Margay's `FORWARD` rules, and the sets with their headers and
/// members.
fn assert_kernel_shows(runner: &mut IptablesCommand, want: &Rendered) {
    let got = kernel(runner, want.family);
    let by_name = |r: &Rendered| -> BTreeMap<String, Vec<String>> {
        r.chains
            .iter()
            .map(|c| {
                (
                    c.name.clone(),
                    c.rules.iter().map(|r| r.spec.clone()).collect(),
                )
            })
            .collect()
    };
    let (got_chains, want_chains) = (by_name(&got), by_name(want));
    for (name, rules) in &want_chains {
        assert_eq!(got_chains.get(name), Some(rules), "chain {name}");
    }
    assert_eq!(got_chains.len(), want_chains.len());
    let hooks = |r: &Rendered| -> Vec<(String, String)> {
        r.hooks
            .iter()
            .map(|h| (h.chain.clone(), h.rule.spec.clone()))
            .collect()
    };
    assert_eq!(hooks(&got), hooks(want));
    assert_eq!(got.sets, want.sets);
    assert!(changed_chains(&got, want).is_empty());
}

#[test]
fn the_rendering_loads_and_iptables_save_shows_it() {
    require_root_and_tools!();
    eprintln!("iptables: {}", run(&["iptables", "--version"]).trim());
    let node1 = golden_node1();
    for backend in backends() {
        let ns = TestNs::new(PREFIX);
        let mut runner = ns.iptables().with_backend(backend);
        // Someone else's rule in FORWARD stays where it is.
        runner
            .restore(
                Family::V4,
                "*filter\n-A FORWARD -s 192.0.2.1/32 -j DROP\nCOMMIT\n",
            )
            .unwrap();
        for family in FAMILIES {
            let rendered = render(&node1, family);
            runner.ipset_restore(&rendered.ipset_restore()).unwrap();
            runner
                .restore(family, &rendered.iptables_restore())
                .unwrap_or_else(|e| panic!("{backend:?}: {e}"));
            assert_kernel_shows(&mut runner, &rendered);
        }
        let save = runner.save(Family::V4).unwrap();
        let forward: Vec<&str> = save
            .lines()
            .filter(|l| l.starts_with("-A FORWARD "))
            .collect();
        assert_eq!(forward.len(), 3, "{backend:?}: {save}");
        assert!(forward[0].ends_with("-j mgy-FORWARD"), "{forward:?}");
        assert!(forward[1].contains("192.0.2.1"), "{forward:?}");
        assert!(forward[2].ends_with("-j ACCEPT"), "{forward:?}");
    }
}

#[test]
fn deltas_and_removal_apply_to_the_kernel() {
    require_root_and_tools!();
    let old = golden_node1();
    // A pod starts elsewhere and the trusted set grows: set members only.
    let yaml = fixture::golden_yaml().replace("198.51.100.0/25", "198.51.100.0/24")
        + fixture::POD_D_ON_NODE2;
    let members = program(&fixture::cluster(&yaml), "node1");
    // Then a policy rule changes and a pod starts here: chains.
    let yaml = yaml.replace("notPorts: [22, \"2000:2100\"]", "notPorts: [22]")
        + "---
apiVersion: margay.dev/v1
kind: WorkloadEndpoint
metadata:
  name: node1-k8s-e-eth0
  namespace: z
  labels: {pod: e}
spec:
  orchestrator: k8s
  node: node1
  pod: e
  endpoint: eth0
  interfaceName: mgy000000000e0
  ipNetworks: [10.1.2.4/32, \"fd00:10:2::4/128\"]
  profiles: [kns.z]
";
    let new = program(&fixture::cluster(&yaml), "node1");
    for backend in backends() {
        let ns = TestNs::new(PREFIX);
        // Someone else's set and rule, which stay.
        let mut other = ns.iptables().with_backend(backend);
        other.ipset_restore("create other hash:ip\n").unwrap();
        let rule = "-A FORWARD -m set --match-set other src -j DROP";
        other
            .restore(Family::V4, &format!("*filter\n{rule}\nCOMMIT\n"))
            .unwrap();
        for family in FAMILIES {
            let mut applier = Applier::new(ns.iptables().with_backend(backend), family);
            assert!(applier.apply(&old).unwrap());
            assert_kernel_shows(applier.runner(), &render(&old, family));

            let rules_before = rules(applier.runner(), family);
            assert!(applier.apply(&members).unwrap());
            assert_kernel_shows(applier.runner(), &render(&members, family));
            assert!(
                rules(applier.runner(), family) == rules_before,
                "{backend:?} {family:?}: only set members change"
            );

            assert!(applier.apply(&new).unwrap());
            assert_kernel_shows(applier.runner(), &render(&new, family));
            assert!(!applier.apply(&new).unwrap(), "nothing left to change");

            // A fresh applier (an agent restarted) finds nothing to change either.
            let mut restarted = Applier::new(ns.iptables().with_backend(backend), family);
            assert!(!restarted.apply(&new).unwrap());

            assert!(restarted.remove_all().unwrap());
            let left = kernel(restarted.runner(), family);
            assert_eq!(left, Rendered::empty(family), "{backend:?} {family:?}");
            assert!(remove_all(&left).is_empty());
        }
        assert!(rules(&mut other, Family::V4).contains(&rule.to_owned()));
        assert!(other.ipset_save().unwrap().contains("create other hash:ip"));
    }
}

/// The pods of the golden node1, and one on an interface it does not know, wired to a node
/// namespace ([`PodNetwork`]): of their TCP SYNs to each other, exactly those the engine
/// allows arrive.
#[test]
fn policy_decides_as_the_engine_predicts() {
    require_root_and_tools!();
    let cluster = fixture::golden_cluster();
    let node1 = program(&cluster, "node1");
    let net = PodNetwork::wire(PREFIX, &node1);

    for family in FAMILIES {
        assert!(Applier::new(net.node.iptables(), family)
            .apply(&node1)
            .unwrap());
    }

    // Each pod counts the SYNs it receives, by source and port, in its INPUT chain.
    for dst in &net.pods {
        let mut input = String::from("*filter\n");
        for (i, src) in net.pods.iter().enumerate() {
            for port in PORTS {
                input += &format!(
                    "-A INPUT -s {}/32 -p tcp -m tcp --dport {port} --tcp-flags SYN,ACK SYN \
                     -m comment --comment c{i}_{port}\n",
                    src.ip
                );
            }
        }
        input += "COMMIT\n";
        dst.ns.iptables().restore(Family::V4, &input).unwrap();
    }
    net.connect_all();
    // Every connection has ended (answered or timed out): what arrived is counted.
    std::thread::sleep(Duration::from_millis(100));
    let counts: Vec<BTreeMap<String, u64>> = net.pods.iter().map(|p| syn_counts(&p.ns)).collect();
    net.assert_engine_agrees(&cluster, |i, j, port| {
        counts[j][&format!("c{i}_{port}")] > 0
    });
    // Allowed packets were accepted by Margay's rule at the end of FORWARD.
    let save = net.node.exec(&["iptables-save", "-c", "-t", "filter"]);
    let accepted = save
        .lines()
        .find(|l| l.contains("-A FORWARD ") && l.ends_with("-j ACCEPT"))
        .unwrap_or_else(|| panic!("{save}"));
    assert!(!accepted.starts_with("[0:"), "{accepted}");
}

/// The SYNs each INPUT rule counted, by comment, from `iptables-save -c`.
fn syn_counts(ns: &TestNs) -> BTreeMap<String, u64> {
    let save = ns.exec(&["iptables-save", "-c", "-t", "filter"]);
    save.lines()
        .filter_map(|line| {
            // "[packets:bytes] -A INPUT … --comment cI_PORT"
            let packets = line.strip_prefix('[')?.split(':').next()?.parse().ok()?;
            let comment = line.split("--comment ").nth(1)?.split_whitespace().next()?;
            Some((comment.to_owned(), packets))
        })
        .collect()
}

/// The same pods try the node itself: with Calico's default (Drop) nothing gets in; with
/// `defaultEndpointToHostAction: Accept`, exactly what each pod's egress policy allows (and
/// nothing from the unknown interface). What got in is what the node answered: it resets
/// every connection (nothing listens), and its resets leave through OUTPUT, which Margay
/// does not police towards workloads.
#[test]
fn workloads_reach_their_node_as_the_engine_predicts() {
    require_root_and_tools!();
    let host: std::net::IpAddr = fixture::NODE1_ADDRESS.parse().unwrap();
    let drop = fixture::golden_cluster();
    let accept = fixture::cluster(&(fixture::golden_yaml() + fixture::NODE1_ACCEPTS_WORKLOADS));
    let net = PodNetwork::wire(PREFIX, &program(&drop, "node1"));
    net.node.ip(&format!("addr add {host}/32 dev lo"));
    let mut counting = String::from("*filter\n");
    for (i, src) in net.pods.iter().enumerate() {
        for port in PORTS {
            counting += &format!(
                "-A OUTPUT -d {}/32 -p tcp -m tcp --sport {port} --tcp-flags RST RST \
                 -m comment --comment c{i}_{port}\n",
                src.ip
            );
        }
    }
    counting += "COMMIT\n";
    net.node.iptables().restore(Family::V4, &counting).unwrap();

    let mut appliers: Vec<Applier<IptablesCommand>> = FAMILIES
        .into_iter()
        .map(|family| Applier::new(net.node.iptables(), family))
        .collect();
    for (cluster, allows) in [(&drop, false), (&accept, true)] {
        let node1 = program(cluster, "node1");
        for applier in &mut appliers {
            applier.apply(&node1).unwrap();
        }
        let before = syn_counts(&net.node);
        net.connect_to_host(host);
        std::thread::sleep(Duration::from_millis(100));
        let after = syn_counts(&net.node);
        let allowed = net.assert_engine_agrees_to_host(cluster, host, |i, port| {
            let key = format!("c{i}_{port}");
            after[&key] > before[&key]
        });
        assert_eq!(allowed > 0, allows, "{allowed} allowed");
    }
}

/// node1's eth0 is a host endpoint, with a namespace outside it: what the outside sends the
/// node, and the node the outside, passes exactly as the engine says, and what the node would
/// forward from the outside to its pods is dropped by the applyOnForward policy; without it,
/// forwarded traffic meets only the pods' policy. (As the nftables test of the same name.)
#[test]
fn host_endpoint_policy_decides_as_the_engine_predicts() {
    require_root_and_tools!();
    let cluster = fixture::cluster(&(fixture::golden_yaml() + fixture::NODE1_OUTSIDE_POLICY));
    let node1 = program(&cluster, "node1");
    let net = PodNetwork::wire(PREFIX, &node1);
    let node_ip: std::net::IpAddr = fixture::NODE1_ADDRESS.parse().unwrap();
    let outside = net.outside("eth0", node_ip, "192.0.2.50".parse().unwrap());
    let mut appliers: Vec<Applier<IptablesCommand>> = FAMILIES
        .into_iter()
        .map(|family| Applier::new(net.node.iptables(), family))
        .collect();
    for applier in &mut appliers {
        applier.apply(&node1).unwrap();
    }
    // The outside counts the node's SYNs (what got out) and resets (what got in), by port;
    // each pod the outside's SYNs (what the node forwarded).
    let mut counting = String::from("*filter\n");
    for port in PORTS {
        counting += &format!(
            "-A INPUT -s {node_ip}/32 -p tcp -m tcp --dport {port} --tcp-flags SYN,ACK SYN \
             -m comment --comment syn{port}\n\
             -A INPUT -s {node_ip}/32 -p tcp -m tcp --sport {port} --tcp-flags RST RST \
             -m comment --comment rst{port}\n"
        );
    }
    counting += "COMMIT\n";
    outside
        .ns
        .iptables()
        .restore(Family::V4, &counting)
        .unwrap();
    let mut forwarded = String::from("*filter\n");
    for port in PORTS {
        forwarded += &format!(
            "-A INPUT -s {}/32 -p tcp -m tcp --dport {port} -m comment --comment fwd{port}\n",
            outside.ip
        );
    }
    forwarded += "COMMIT\n";
    for pod in &net.pods {
        pod.ns.iptables().restore(Family::V4, &forwarded).unwrap();
    }

    pods::connect(&outside.ns, node_ip);
    pods::connect(&net.node, outside.ip);
    for pod in &net.pods {
        pods::connect(&outside.ns, pod.ip);
    }
    std::thread::sleep(Duration::from_millis(100));
    let seen = syn_counts(&outside.ns);
    let (inward, outward) = pods::assert_engine_agrees_through_host_endpoint(
        &cluster,
        &outside,
        |port| seen[&format!("rst{port}")] > 0,
        |port| seen[&format!("syn{port}")] > 0,
    );
    assert!(inward > 0 && outward > 0 && inward < PORTS.len() && outward < PORTS.len());
    for pod in &net.pods {
        let seen = syn_counts(&pod.ns);
        for port in PORTS {
            assert_eq!(seen[&format!("fwd{port}")], 0, "{} {port}", pod.ip);
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
    for applier in &mut appliers {
        applier.apply(&node1).unwrap();
    }
    for pod in &net.pods {
        pods::connect(&outside.ns, pod.ip);
    }
    std::thread::sleep(Duration::from_millis(100));
    let mut arrived = 0;
    for pod in net.pods.iter().filter(|p| p.id.is_some()) {
        let seen = syn_counts(&pod.ns);
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
            let got = seen[&format!("fwd{port}")] > 0;
            assert_eq!(got, allowed, "{} {port}", pod.ip);
            arrived += usize::from(got);
        }
    }
    assert!(arrived > 0);
}
