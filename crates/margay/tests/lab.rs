//! `margay lab` end to end, as a user runs it: up → probe → down on both modes and both
//! datastores, the Kubernetes-suite x/y/z spec, `status`/`exec`/`apply`, policies applied one
//! after another and enforced as `lab verify` predicts — and some of margay-policy's upstream
//! cases probed against their expected tables — on the nftables and on the iptables
//! dataplane, switching dataplanes while the agents run, clean-up after `kill -9` and after
//! a crashed `up`, and bad specs that must create nothing.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use margay_testkit::upstream::{self, Case, Fixture, Table};
use serde_json::Value;

#[path = "support/host.rs"]
mod host;

use host::unique;

#[path = "support/lab.rs"]
mod lab_support;

use lab_support::{skip_unless_root, Lab, BIN};

/// The upstream network-policy suite's cluster: namespaces x, y, z with pods a, b, c, each
/// serving 80 and 81 over TCP and UDP.
const XYZ: &str = r#"
nodes: [node-a, node-b, node-c]
namespaces:
  - {name: x, labels: {ns: x}}
  - {name: y, labels: {ns: y}}
  - {name: z, labels: {ns: z}}
pods:
  - {namespace: x, name: a, labels: {pod: a}}
  - {namespace: x, name: b, labels: {pod: b}}
  - {namespace: x, name: c, labels: {pod: c}}
  - {namespace: y, name: a, labels: {pod: a}}
  - {namespace: y, name: b, labels: {pod: b}}
  - {namespace: y, name: c, labels: {pod: c}}
  - {namespace: z, name: a, labels: {pod: a}}
  - {namespace: z, name: b, labels: {pod: b}}
  - {namespace: z, name: c, labels: {pod: c}}
"#;

/// Every matrix of `lab probe -o json` allows all `pods`² pairs and denies none.
fn assert_fully_connected(probes: &Value, pods: usize, matrices: usize) {
    let probes = probes["probes"].as_array().unwrap();
    assert_eq!(probes.len(), matrices, "{probes:?}");
    for m in probes {
        let denied = m["denied"].as_array().unwrap();
        assert!(
            denied.is_empty(),
            "{}/{} denied {denied:?}",
            m["port"],
            m["protocol"]
        );
        assert_eq!(m["allowed"].as_array().unwrap().len(), pods * pods);
    }
}

fn up_probe_down(mode: &str, datastore: &str, spec: Option<&str>) {
    if skip_unless_root() {
        return;
    }
    let lab = Lab::new("lab");
    let mut args = vec!["--mode", mode, "--datastore", datastore];
    let spec_path = lab.root.path().join("spec.yaml");
    let pods = match spec {
        Some(text) => {
            std::fs::write(&spec_path, text).unwrap();
            args.extend(["--spec", spec_path.to_str().unwrap()]);
            9
        }
        None => {
            args.extend(["--nodes", "3", "--pods-per-node", "2"]);
            6
        }
    };
    let out = lab.ok("up", &args);
    assert!(out.contains("margay lab down"), "{out}");
    let probes = lab.json("probe", &["-o", "json"]);
    assert_fully_connected(&probes, pods, 4);
    let status = lab.json("status", &["-o", "json"]);
    for node in status["nodes"].as_array().unwrap() {
        assert_eq!(node["agent"], "ready", "{node}");
    }
    for pod in status["pods"].as_array().unwrap() {
        assert!(pod["ip"].as_str().unwrap().starts_with("10.244."), "{pod}");
        assert_eq!(pod["serving"], true, "{pod}");
    }
    if mode == "crosssubnet" {
        // node 1 and 3 share a subnet (direct route), node 2 is across the router (VXLAN).
        let first = &status["nodes"][0]["netns"].as_str().unwrap().to_owned();
        let routes = host::ok(Command::new("ip").args(["-n", first, "route"]));
        assert!(
            routes.contains("via 172.30.0.12 dev eth0 proto 77"),
            "{routes}"
        );
        assert!(
            routes.contains("dev vxlan.margay proto 77 onlink"),
            "{routes}"
        );
    }
    let down = lab.ok("down", &[]);
    assert!(down.contains("removed"), "{down}");
    lab.assert_gone();
    // Idempotent.
    assert!(lab.ok("down", &[]).contains("is not up"));
}

#[test]
fn vxlan_on_sqlite_is_fully_connected() {
    up_probe_down("vxlan", "sqlite", None);
}

#[test]
fn vxlan_on_etcd_is_fully_connected() {
    up_probe_down("vxlan", "etcd", None);
}

#[test]
fn crosssubnet_on_sqlite_xyz_spec_is_fully_connected() {
    up_probe_down("crosssubnet", "sqlite", Some(XYZ));
}

#[test]
fn crosssubnet_on_etcd_xyz_spec_is_fully_connected() {
    up_probe_down("crosssubnet", "etcd", Some(XYZ));
}

#[test]
fn exec_apply_status_and_probe_filters() {
    if skip_unless_root() {
        return;
    }
    let lab = Lab::new("lab");
    lab.ok("up", &["--nodes", "2", "--pods-per-node", "1"]);
    let status = lab.json("status", &["-o", "json"]);
    let ip = status["pods"][0]["ip"].as_str().unwrap().to_owned();
    // exec runs in the pod: its eth0 carries its address; the exit code comes through.
    let addr = lab.ok(
        "exec",
        &[
            "default/pod-1-1",
            "--",
            "ip",
            "-4",
            "-o",
            "addr",
            "show",
            "eth0",
        ],
    );
    assert!(addr.contains(&format!("{ip}/32")), "{addr}");
    let code = lab.run("exec", &["pod-2-1", "--", "sh", "-c", "exit 7"]);
    assert_eq!(code.status.code(), Some(7));
    let unknown = lab.run("exec", &["x/nope", "--", "true"]);
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("no pod x/nope"));
    // apply goes to the lab's datastore.
    let set = lab.root.path().join("set.yaml");
    std::fs::write(
        &set,
        "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkSet\nmetadata: {name: ext}\n\
         spec: {nets: [192.0.2.0/24]}\n",
    )
    .unwrap();
    let applied = lab.ok("apply", &["-f", set.to_str().unwrap()]);
    assert!(applied.contains("created"), "{applied}");
    // The endpoints carry the pods' labels (stored as Pod documents before CNI ADD).
    let db = format!("sqlite://{}/margay.db", lab.dir().display());
    let weps = host::ok(Command::new(BIN).env_remove("CNI_COMMAND").args([
        "--datastore",
        &db,
        "get",
        "wep",
        "-A",
        "-o",
        "json",
    ]));
    assert!(weps.contains("\"app\": \"pod-1-1\""), "{weps}");
    assert!(host::ok(Command::new(BIN).env_remove("CNI_COMMAND").args([
        "--datastore",
        &db,
        "get",
        "globalnetworksets",
        "-o",
        "name"
    ]))
    .contains("ext"));
    // One port and protocol; a port nobody serves is honestly all denied.
    let one = lab.json(
        "probe",
        &["--port", "81", "--protocol", "udp", "-o", "json"],
    );
    assert_eq!(one["probes"][0]["protocol"], "UDP");
    assert_fully_connected(&one, 2, 1);
    let none = lab.json("probe", &["--port", "8080", "-o", "json"]);
    assert_eq!(none["probes"][0]["denied"].as_array().unwrap().len(), 4);
    // With no policy, the real packets and the policy model agree on every pair.
    let verify = lab.ok("verify", &[]);
    assert!(
        verify.contains(
            "probe and policy matrix agree on every pair (80/TCP, 80/UDP, 81/TCP, 81/UDP)"
        ),
        "{verify}"
    );
    let table = lab.ok("probe", &["--port", "80", "--protocol", "tcp"]);
    assert!(table.contains("80/TCP: 4 allowed, 0 denied"), "{table}");
    // A second lab beside it, and a refusal to start the first twice.
    let again = lab.run("up", &[]);
    assert!(String::from_utf8_lossy(&again.stderr).contains("is already up"));
    lab.ok("down", &[]);
    lab.assert_gone();
}

/// Upstream-style policies, applied one after another to the x/y/z cluster.
const DENY_INGRESS_IN_X: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: default-deny-ingress, namespace: x}
spec: {podSelector: {}, policyTypes: [Ingress]}
"#;

/// From namespace y into x, on port 80 named as the pods name it.
const ALLOW_Y_TO_X_BY_NAMED_PORT: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-y-http, namespace: x}
spec:
  podSelector: {}
  policyTypes: [Ingress]
  ingress:
    - from: [{namespaceSelector: {matchLabels: {ns: y}}}]
      ports: [{port: serve-80-tcp, protocol: TCP}]
"#;

/// A tier ahead of the default one: y passes on to the Kubernetes policies, TCP 80 from z
/// is denied everywhere, the rest passes.
const SECURITY_TIER: &str = r#"
apiVersion: projectcalico.org/v3
kind: Tier
metadata: {name: security}
spec: {order: 100}
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: security.guard}
spec:
  tier: security
  order: 10
  selector: all()
  types: [Ingress]
  ingress:
    - action: Pass
      source: {namespaceSelector: ns == 'y'}
    - action: Deny
      protocol: TCP
      source: {namespaceSelector: ns == 'z'}
      destination: {ports: [80]}
    - action: Pass
"#;

/// Names a tier nobody made: the agents must report it and keep enforcing the rest.
const MISSING_TIER: &str = r#"
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: missing.allow-all}
spec: {tier: missing, selector: all(), types: [Ingress], ingress: [{action: Allow}]}
"#;

impl Lab {
    /// `lab apply`, then waits (at most 5 s) until every agent has synced since: `lab verify`
    /// is polled afterwards anyway, but a probe that fails costs a second per port.
    fn apply(&self, yaml: &str) {
        let path = self.root.path().join(format!("{}.yaml", unique("policy")));
        std::fs::write(&path, yaml).unwrap();
        let synced = |statuses: Vec<Value>| -> Vec<Value> {
            statuses
                .into_iter()
                .map(|s| s["lastEvent"].clone())
                .collect()
        };
        let before = synced(self.agent_statuses());
        self.ok("apply", &["-f", path.to_str().unwrap()]);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            let now = synced(self.agent_statuses());
            if now.iter().zip(&before).all(|(n, b)| n != b) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Until `lab verify` finds the packets doing what the policy engine predicts.
    fn wait_verified(&self, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let out = self.run("verify", &[]);
            if out.status.success() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "after {what}, probe and policy matrix still differ:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Whether `from` reaches `to` on `port`/`protocol`, probed.
    fn reaches(&self, from: &str, to: &str, port: u16, protocol: &str) -> bool {
        let probe = self.json(
            "probe",
            &[
                "--port",
                &port.to_string(),
                "--protocol",
                protocol,
                "-o",
                "json",
            ],
        );
        let pair = serde_json::json!([from, to]);
        probe["probes"][0]["allowed"]
            .as_array()
            .unwrap()
            .contains(&pair)
    }

    /// `margay node status -o json` of every node, from inside its namespace.
    fn agent_statuses(&self) -> Vec<Value> {
        let status = self.json("status", &["-o", "json"]);
        status["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| {
                let netns = n["netns"].as_str().unwrap();
                let out = host::ok(
                    Command::new("ip")
                        .args(["netns", "exec", netns, BIN, "node", "status", "-o", "json"])
                        .env_remove("CNI_COMMAND"),
                );
                serde_json::from_str(&out).unwrap()
            })
            .collect()
    }
}

/// Policies one after another, each enforced as the engine predicts (`lab verify`) and spot
/// checked; last, a policy in a missing tier that every agent must report while enforcing
/// what it had. The lab is the x/y/z spec with no policy; the missing tier's policy is left
/// in place.
fn policy_sequence(lab: &Lab) {
    // No policy: everything reaches everything.
    assert!(lab.reaches("z/a", "x/a", 81, "tcp"));

    lab.apply(DENY_INGRESS_IN_X);
    lab.wait_verified("default-deny ingress in x");
    assert!(!lab.reaches("y/a", "x/a", 80, "tcp"));
    assert!(
        lab.reaches("x/a", "y/a", 80, "tcp"),
        "egress is not isolated"
    );

    lab.apply(ALLOW_Y_TO_X_BY_NAMED_PORT);
    lab.wait_verified("allowing y into x by named port");
    assert!(lab.reaches("y/a", "x/a", 80, "tcp"));
    assert!(!lab.reaches("y/a", "x/a", 81, "tcp"));
    assert!(
        !lab.reaches("y/a", "x/b", 80, "udp"),
        "the named port is TCP"
    );
    assert!(!lab.reaches("z/a", "x/a", 80, "tcp"));

    lab.apply(SECURITY_TIER);
    lab.wait_verified("a tier with Pass and Deny");
    assert!(
        lab.reaches("y/a", "x/a", 80, "tcp"),
        "y passes on to the default tier"
    );
    assert!(
        !lab.reaches("z/a", "y/a", 80, "tcp"),
        "the tier denies TCP 80 from z"
    );
    assert!(lab.reaches("z/a", "y/a", 81, "tcp"), "the rest passes");
    let statuses = lab.agent_statuses();
    for s in &statuses {
        assert_eq!(s["policy"]["endpoints"], 3, "{s}");
        assert_eq!(s["policyErrors"], serde_json::json!([]), "{s}");
    }

    // A policy naming a missing tier: every agent reports it, stays ready, and keeps
    // enforcing what it had.
    lab.apply(MISSING_TIER);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let statuses = lab.agent_statuses();
        let reported = statuses.iter().all(|s| {
            s["policyErrors"]
                == serde_json::json!([
                    "GlobalNetworkPolicy missing.allow-all: tier \"missing\" does not exist \
                     (add a Tier resource for it)"
                ])
        });
        if reported {
            for s in &statuses {
                assert_eq!(s["ready"], true, "{s}");
                assert_eq!(s["policy"]["policies"], 3, "{s}");
            }
            break;
        }
        assert!(
            Instant::now() < deadline,
            "policy error not reported: {statuses:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!lab.reaches("z/a", "y/a", 80, "tcp"));
    assert!(!lab.reaches("y/a", "x/a", 81, "tcp"));
    assert!(lab.reaches("y/a", "x/a", 80, "tcp"));
    // The model leaves the policy out as the agents do: packets and model still agree.
    lab.wait_verified("a policy in a missing tier");
}

/// margay-policy's upstream cases (tests/upstream/cases) run on real packets: ingress and
/// egress isolation, namespace and pod selectors together, numeric and named ports (ingress
/// and egress), client- and server-side policies together, UDP against TCP. Cases that
/// relabel objects, need SCTP or the fixture's fixed pod addresses (ipBlock) cannot run in
/// the lab.
const LAB_CASES: [&str; 7] = ["002", "010", "014", "017", "019", "028", "040"];

/// Applies each of [`LAB_CASES`] to the x/y/z lab in turn, waits until `lab verify` agrees,
/// and requires `lab probe` to give the case's expected tables; then deletes the case's
/// policies. All mismatches are reported together. The lab is left with no policy.
fn upstream_cases(lab: &Lab) {
    let fixture = Fixture::load_default().unwrap_or_else(|e| panic!("{e}"));
    let mut failures = Vec::new();
    for number in LAB_CASES {
        let file = upstream::case_file(number).unwrap_or_else(|e| panic!("{e}"));
        let short = file.file_name().unwrap().to_string_lossy().into_owned();
        let case = Case::load(&file, &fixture).unwrap_or_else(|e| panic!("{short}: {e}"));
        assert!(
            case.labels.is_empty() && case.documents.iter().all(|d| d["kind"] != "Pod"),
            "{short}: the lab cannot relabel or replace its pods"
        );
        lab.apply(&case.resources_yaml);
        lab.wait_verified(&format!("case {short}"));
        let mut report = String::new();
        for check in &case.checks {
            let got = lab.probe_table(&fixture.pods, check.port, &check.protocol);
            if got != check.expect {
                report.push_str(&upstream::diff(&fixture.pods, check, &got));
            }
        }
        if !report.is_empty() {
            failures.push(format!("=== {short}\n{}{report}", case.header()));
        }
        lab.delete(&case.resources_yaml);
    }
    lab.wait_verified("deleting the last case's policies");
    assert!(
        failures.is_empty(),
        "{} of {} upstream cases probed otherwise than expected:\n{}",
        failures.len(),
        LAB_CASES.len(),
        failures.join("\n")
    );
}

/// `AgentConfiguration default` choosing the policy dataplane of every agent.
fn dataplane_config(dataplane: &str) -> String {
    format!(
        "apiVersion: margay.dev/v1\nkind: AgentConfiguration\nmetadata: {{name: default}}\n\
         spec: {{dataplane: {dataplane}}}\n"
    )
}

/// What a node's kernel holds of Margay's policy, in each dataplane.
#[derive(Debug)]
struct NodePolicy {
    /// `iptables-save` and `ip6tables-save` lines naming an `mgy-` chain.
    iptables: Vec<String>,
    /// Names of `mgy…` ipsets.
    ipsets: Vec<String>,
    /// `nft list tables` lines of the `margay-policy` tables.
    nft: Vec<String>,
}

impl Lab {
    fn xyz() -> Lab {
        let lab = Lab::new("lab");
        let spec = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/lab/xyz.yaml");
        lab.ok("up", &["--spec", spec]);
        lab
    }

    /// The lab's node namespaces.
    fn node_policy(netns: &str) -> NodePolicy {
        let exec =
            |args: &[&str]| host::ok(Command::new("ip").args(["netns", "exec", netns]).args(args));
        let iptables = [
            exec(&["iptables-save", "-t", "filter"]),
            exec(&["ip6tables-save", "-t", "filter"]),
        ]
        .concat()
        .lines()
        .filter(|l| l.contains("mgy-"))
        .map(str::to_owned)
        .collect();
        let ipsets = exec(&["ipset", "list", "-n"])
            .lines()
            .filter(|l| l.starts_with("mgy"))
            .map(str::to_owned)
            .collect();
        let nft = exec(&["nft", "list", "tables"])
            .lines()
            .filter(|l| l.contains("margay-policy"))
            .map(str::to_owned)
            .collect();
        NodePolicy {
            iptables,
            ipsets,
            nft,
        }
    }

    /// Applies `AgentConfiguration default` with `dataplane` and waits until every agent
    /// reports it in use and every node's kernel holds policy in that dataplane only.
    fn switch_dataplane(&self, dataplane: &str) {
        self.apply(&dataplane_config(dataplane));
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let statuses = self.agent_statuses();
            let kernels: Vec<NodePolicy> = self
                .node_namespaces()
                .iter()
                .map(|ns| Lab::node_policy(ns))
                .collect();
            let switched = statuses.iter().all(|s| {
                s["policy"]["dataplane"] == dataplane && s["errors"] == serde_json::json!([])
            }) && kernels.iter().all(|k| match dataplane {
                "iptables" => {
                    k.iptables
                        .iter()
                        .any(|l| l.starts_with("-A FORWARD ") && l.contains("-j mgy-FORWARD"))
                        && k.iptables.iter().any(|l| l.starts_with(":mgy-FORWARD"))
                        && k.nft.is_empty()
                }
                _ => k.iptables.is_empty() && k.ipsets.is_empty() && k.nft.len() == 2,
            });
            if switched {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the agents did not switch to {dataplane}:\n{statuses:#?}\n{kernels:#?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The CLI on the lab's datastore.
    fn ctl(&self, args: &[&str]) -> String {
        let db = format!("sqlite://{}/margay.db", self.dir().display());
        host::ok(
            Command::new(BIN)
                .env_remove("CNI_COMMAND")
                .env_remove("MARGAY_DATASTORE")
                .args(["--datastore", &db])
                .args(args),
        )
    }

    /// Deletes the documents of `yaml` from the lab's datastore.
    fn delete(&self, yaml: &str) {
        let path = self.root.path().join(format!("{}.yaml", unique("delete")));
        std::fs::write(&path, yaml).unwrap();
        self.ctl(&["delete", "-f", path.to_str().unwrap()]);
    }

    /// `lab probe` of one port and protocol as a truth table over `pods`.
    fn probe_table(&self, pods: &[String], port: u16, protocol: &str) -> Table {
        let probe = self.json(
            "probe",
            &[
                "--port",
                &port.to_string(),
                "--protocol",
                &protocol.to_ascii_lowercase(),
                "-o",
                "json",
            ],
        );
        let pairs = |key: &str| -> Vec<(String, String)> {
            serde_json::from_value(probe["probes"][0][key].clone()).unwrap()
        };
        Table::from_matrix(pods, &pairs("allowed"), &pairs("denied"))
            .unwrap_or_else(|e| panic!("lab probe {port}/{protocol}: {e}"))
    }
}

#[test]
fn policies_are_enforced_as_the_engine_predicts() {
    if skip_unless_root() {
        return;
    }
    let lab = Lab::xyz();
    // nftables by default, and nothing in iptables.
    for s in lab.agent_statuses() {
        assert_eq!(s["policy"]["dataplane"], "nftables", "{s}");
    }
    for netns in lab.node_namespaces() {
        let kernel = Lab::node_policy(&netns);
        assert!(
            kernel.iptables.is_empty() && kernel.ipsets.is_empty(),
            "{kernel:?}"
        );
        assert_eq!(kernel.nft.len(), 2, "{kernel:?}");
    }
    upstream_cases(&lab);
    policy_sequence(&lab);
    lab.ok("down", &[]);
    lab.assert_gone();
}

#[test]
fn policies_are_enforced_on_iptables_and_the_dataplane_switches_at_runtime() {
    if skip_unless_root() {
        return;
    }
    let lab = Lab::xyz();
    lab.switch_dataplane("iptables");
    let netns = &lab.node_namespaces()[0];
    let text = host::ok(
        Command::new("ip")
            .args(["netns", "exec", netns, BIN, "node", "status"])
            .env_remove("CNI_COMMAND"),
    );
    assert!(text.contains("Dataplane         iptables\n"), "{text}");
    lab.wait_verified("switching to iptables");
    upstream_cases(&lab);
    policy_sequence(&lab);

    // Back to nftables while the agents run: the mgy- chains and sets go, the tables come,
    // and enforcement is the same.
    lab.delete(MISSING_TIER);
    lab.switch_dataplane("nftables");
    lab.wait_verified("switching back to nftables");
    assert!(!lab.reaches("z/a", "y/a", 80, "tcp"));
    assert!(lab.reaches("y/a", "x/a", 80, "tcp"));
    lab.ok("down", &[]);
    lab.assert_gone();
}

/// A server (`margay lab serve`) in a node's namespace, answering with its name on some TCP
/// ports; stopped on drop, also when the test panics.
struct NodeServer(std::process::Child);

impl NodeServer {
    fn start(netns: &str, name: &str, ports: &[u16]) -> NodeServer {
        let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
        let child = Command::new("ip")
            .args(["netns", "exec", netns, BIN, "lab", "serve", "--name", name])
            .args(["--tcp", &ports.join(",")])
            .env_remove("CNI_COMMAND")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        NodeServer(child)
    }
}

impl Drop for NodeServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `bash` connecting to `ip:port` and printing the first line it reads, within 2 s.
fn connect_script(ip: &str, port: u16) -> String {
    format!("exec 3<>/dev/tcp/{ip}/{port} && head -1 <&3")
}

/// Whether a TCP connection from node namespace `netns` to `ip:port` reaches `name`'s server.
fn node_connects(netns: &str, ip: &str, port: u16, name: &str) -> bool {
    let out = host::run(
        Command::new("ip")
            .args(["netns", "exec", netns, "timeout", "2", "bash", "-c"])
            .arg(connect_script(ip, port)),
    );
    out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == name
}

/// Whether a TCP connection from `pod` to `ip:port` reaches `name`'s server.
fn pod_connects(lab: &Lab, pod: &str, ip: &str, port: u16, name: &str) -> bool {
    let script = connect_script(ip, port);
    let out = lab.run("exec", &[pod, "--", "timeout", "2", "bash", "-c", &script]);
    out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == name
}

/// Until `done` holds (at most 10 s).
fn wait_for(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within 10 s");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// node-1's uplink as a host endpoint, with Calico's default-allow profile.
fn node1_host_endpoint(ip: &str) -> String {
    format!(
        "apiVersion: projectcalico.org/v3\nkind: HostEndpoint\n\
         metadata: {{name: node-1-eth0, labels: {{role: node}}}}\n\
         spec: {{node: node-1, interfaceName: eth0, expectedIPs: [{ip}], \
         profiles: [projectcalico-default-allow]}}\n"
    )
}

/// Denies TCP into the nodes' host endpoints.
const DENY_TCP_TO_NODES: &str = r#"
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: deny-tcp-to-nodes}
spec:
  selector: role == 'node'
  types: [Ingress]
  ingress: [{action: Deny, protocol: TCP}]
"#;

/// node-1 accepts what its workloads send it.
const NODE1_ACCEPTS_WORKLOADS: &str = r#"
apiVersion: projectcalico.org/v3
kind: FelixConfiguration
metadata: {name: node.node-1}
spec: {defaultEndpointToHostAction: Accept}
"#;

/// Traffic to node-1 itself, with a server on it answering on a failsafe port (179, BGP) and
/// another (8080): a pod on node-1 reaches it only once `defaultEndpointToHostAction` is
/// Accept (Calico's default is Drop), a pod on node-2 and node-2 itself always; then node-1's
/// uplink becomes a host endpoint and a policy denies TCP into it: 8080 is cut off from
/// node-2 and its pod, 179 still connects, and pods still reach each other as the engine
/// predicts (VXLAN between the nodes is not subject to host endpoint policy); deleting the
/// policy opens 8080 again.
fn host_sequence(lab: &Lab) {
    let status = lab.json("status", &["-o", "json"]);
    let node_ip = |i: usize| -> String {
        let ip = status["nodes"][i]["ip"].as_str().unwrap();
        ip.split('/').next().unwrap().to_owned()
    };
    let namespaces = lab.node_namespaces();
    let (ip, node2) = (node_ip(0), &namespaces[1]);
    let _server = NodeServer::start(&namespaces[0], "node-1", &[179, 8080]);
    wait_for("node-1's server", || {
        node_connects(node2, &ip, 8080, "node-1")
    });
    assert!(pod_connects(lab, "x/b", &ip, 8080, "node-1"));
    assert!(!pod_connects(lab, "x/a", &ip, 8080, "node-1"));
    lab.apply(NODE1_ACCEPTS_WORKLOADS);
    wait_for("x/a reaching its node", || {
        pod_connects(lab, "x/a", &ip, 8080, "node-1")
    });
    lab.delete(NODE1_ACCEPTS_WORKLOADS);
    wait_for("x/a cut off from its node again", || {
        !pod_connects(lab, "x/a", &ip, 8080, "node-1")
    });

    let host_endpoint = node1_host_endpoint(&ip);
    lab.apply(&host_endpoint);
    // The default-allow profile: nothing changes yet.
    assert!(node_connects(node2, &ip, 8080, "node-1"));
    lab.apply(DENY_TCP_TO_NODES);
    wait_for("8080 denied into node-1", || {
        !node_connects(node2, &ip, 8080, "node-1")
    });
    assert!(!pod_connects(lab, "x/b", &ip, 8080, "node-1"));
    assert!(node_connects(node2, &ip, 179, "node-1"), "failsafe port");
    assert!(
        pod_connects(lab, "x/b", &ip, 179, "node-1"),
        "failsafe port"
    );
    lab.wait_verified("a host endpoint denying TCP");
    for s in lab.agent_statuses() {
        let hosts = if s["node"] == "node-1" { 1 } else { 0 };
        assert_eq!(s["policy"]["hostEndpoints"], hosts, "{s}");
    }
    lab.delete(DENY_TCP_TO_NODES);
    wait_for("8080 open again", || {
        node_connects(node2, &ip, 8080, "node-1")
    });
    lab.delete(&host_endpoint);
}

#[test]
fn host_endpoints_and_traffic_to_nodes_on_both_dataplanes() {
    if skip_unless_root() {
        return;
    }
    let lab = Lab::xyz();
    host_sequence(&lab);
    lab.switch_dataplane("iptables");
    host_sequence(&lab);
    lab.ok("down", &[]);
    lab.assert_gone();
}

#[test]
fn down_after_kill_9_of_the_agents_cleans_up() {
    if skip_unless_root() {
        return;
    }
    let lab = Lab::new("lab");
    lab.ok("up", &["--nodes", "2", "--pods-per-node", "1"]);
    let status = lab.json("status", &["-o", "json"]);
    for node in status["nodes"].as_array().unwrap() {
        let netns = node["netns"].as_str().unwrap();
        let pids = host::ok(Command::new("ip").args(["netns", "pids", netns]));
        for pid in pids.split_whitespace() {
            host::ok(Command::new("kill").args(["-9", pid]));
        }
    }
    let mut agents = Vec::new();
    for _ in 0..100 {
        let status = lab.json("status", &["-o", "json"]);
        agents = status["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["agent"].as_str().unwrap().to_owned())
            .collect();
        if agents.iter().all(|a| a == "not running") {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(agents, ["not running", "not running"]);
    lab.ok("down", &[]);
    lab.assert_gone();
}

#[test]
fn down_after_a_killed_up_cleans_up() {
    if skip_unless_root() {
        return;
    }
    let lab = Lab::new("lab");
    let mut up = lab
        .cmd(
            "up",
            &[
                "--nodes",
                "3",
                "--pods-per-node",
                "5",
                "--datastore",
                "etcd",
            ],
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Part-way through, whatever "part-way" is on this machine: down must cope either way.
    std::thread::sleep(Duration::from_millis(300));
    up.kill().unwrap();
    up.wait().unwrap();
    assert!(
        lab.dir().join("state.json").exists(),
        "up records its state first"
    );
    lab.ok("down", &[]);
    lab.assert_gone();
}

#[test]
fn bad_specs_create_nothing() {
    if skip_unless_root() {
        return;
    }
    let cases = [
        (
            "nodes: [n1]\npods: [{name: a, node: n9}]",
            "pods[0].node: unknown node \"n9\" (nodes: n1)",
        ),
        (
            "nodes: [n1]\npods: [{name: a}, {name: a}]",
            "pods[1]: duplicate pod default/a (also pods[0])",
        ),
        (
            "nodes: [n1]\npods: [{name: a, ports: [{port: 65536}]}]",
            "pods[0].ports[0].port: 65536 is out of range 1-65535",
        ),
        (
            "nodes: [n1]\npools: [{cidr: 172.30.8.0/22}]",
            "pools[0].cidr: 172.30.8.0/22 overlaps the lab fabric 172.30.0.0/16 (the node network)",
        ),
    ];
    for (text, message) in cases {
        let lab = Lab::new("lab");
        let path = lab.root.path().join("bad.yaml");
        std::fs::write(&path, text).unwrap();
        let out = lab.run("up", &["--spec", path.to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert_eq!(
            stderr.trim(),
            format!("error: {}: {message}", path.display()),
            "{text}"
        );
        lab.assert_gone();
    }
}

#[test]
fn modes_this_machine_cannot_run_are_refused() {
    if skip_unless_root() {
        return;
    }
    let lab = Lab::new("lab");
    // BGP runs (crates/margay/tests/lab_bgp.rs); route reflectors need it.
    let rr = lab.run("up", &["--route-reflectors", "1"]);
    assert!(!rr.status.success());
    assert!(
        String::from_utf8_lossy(&rr.stderr)
            .contains("--route-reflectors: route reflectors need --mode bgp (this lab is vxlan)"),
        "{}",
        String::from_utf8_lossy(&rr.stderr)
    );
    lab.assert_gone();
    let ipip_module = Path::new("/sys/module/ipip").exists();
    let ipip = lab.run(
        "up",
        &["--mode", "ipip", "--nodes", "1", "--pods-per-node", "1"],
    );
    if ipip_module {
        eprintln!("skipped: this kernel has ipip, so --mode ipip is not refused here");
        assert!(ipip.status.success());
        lab.ok("down", &[]);
    } else {
        assert!(!ipip.status.success());
        assert!(
            String::from_utf8_lossy(&ipip.stderr)
                .contains("--mode ipip: this kernel cannot create IPIP tunnels (no ipip module)"),
            "{}",
            String::from_utf8_lossy(&ipip.stderr)
        );
    }
    lab.assert_gone();
}
