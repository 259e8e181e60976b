//! `margay trace` end to end: the real binary against a SQLite datastore holding two VXLAN
//! nodes (state made as the agent and `margay ipam` make it), their pods and policies.
//!
//! Cluster: pool 10.244.0.0/16 (VXLAN Always, /26 blocks); node1 192.168.1.10/24 with
//! block 10.244.0.0/26 (tunnel address .1, pod x/a .2); node2 192.168.1.11/24 with block
//! 10.244.0.64/26 (tunnel address .65, pod y/b .66).

use std::path::PathBuf;
use std::process::{Command, Output};

use serde_json::Value;

struct Env {
    url: String,
    dir: tempfile::TempDir,
}

const CLUSTER: &str = "\
apiVersion: margay.dev/v1
kind: IPPool
metadata:
  name: pool
spec:
  cidr: 10.244.0.0/16
  blockSize: 26
  vxlanMode: Always
  ipipMode: Never
  natOutgoing: true
---
apiVersion: margay.dev/v1
kind: Node
metadata:
  name: node1
spec:
  bgp:
    ipv4Address: 192.168.1.10/24
  ipv4VXLANTunnelAddr: 10.244.0.1
  vxlanTunnelMACAddr: \"66:00:00:00:00:01\"
---
apiVersion: margay.dev/v1
kind: Node
metadata:
  name: node2
spec:
  bgp:
    ipv4Address: 192.168.1.11/24
  ipv4VXLANTunnelAddr: 10.244.0.65
  vxlanTunnelMACAddr: \"66:00:00:00:00:02\"
---
apiVersion: v1
kind: Namespace
metadata:
  name: x
---
apiVersion: v1
kind: Namespace
metadata:
  name: y
";

fn workload_endpoint(node: &str, ns: &str, pod: &str, ip: &str) -> String {
    format!(
        "apiVersion: margay.dev/v1\nkind: WorkloadEndpoint\nmetadata:\n  name: {node}-k8s-{pod}-eth0\n  \
         namespace: {ns}\n  labels:\n    app: {pod}\nspec:\n  orchestrator: k8s\n  node: {node}\n  \
         pod: {pod}\n  endpoint: eth0\n  interfaceName: mgy{ns}{pod}\n  ipNetworks:\n  - {ip}/32\n  \
         profiles:\n  - kns.{ns}\n  - ksa.{ns}.default\n---\n"
    )
}

impl Env {
    /// The two-node cluster: pool, nodes, namespaces; addresses assigned by `margay ipam`
    /// (which claims each node's block); the pods' WorkloadEndpoints.
    fn cluster() -> Env {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        let env = Env { url, dir };
        env.apply(CLUSTER);
        for (node, handle, ip) in [
            ("node1", "vxlan-tunnel-addr-node1", "10.244.0.1"),
            ("node2", "vxlan-tunnel-addr-node2", "10.244.0.65"),
            ("node1", "x.a", "10.244.0.2"),
            ("node2", "y.b", "10.244.0.66"),
        ] {
            let out = env.ok(&[
                "ipam", "assign", "--node", node, "--handle", handle, "--ip", ip,
            ]);
            assert_eq!(out.trim(), ip);
        }
        env.apply(
            &[
                workload_endpoint("node1", "x", "a", "10.244.0.2"),
                workload_endpoint("node2", "y", "b", "10.244.0.66"),
            ]
            .concat(),
        );
        env
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_margay"))
            .arg("--datastore")
            .arg(&self.url)
            .args(args)
            .env_remove("MARGAY_DATASTORE")
            .output()
            .unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "margay {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn apply(&self, yaml: &str) {
        let path = self.dir.path().join("apply.yaml");
        std::fs::write(&path, yaml).unwrap();
        self.ok(&["apply", "-f", path.to_str().unwrap()]);
    }

    fn trace(&self, from: &str, to: &str, port: u16) -> String {
        self.ok(&[
            "trace",
            "--from",
            from,
            "--to",
            to,
            "--port",
            &port.to_string(),
        ])
    }

    fn trace_json(&self, from: &str, to: &str, port: u16) -> Value {
        let out = self.ok(&[
            "trace",
            "--from",
            from,
            "--to",
            to,
            "--port",
            &port.to_string(),
            "-o",
            "json",
        ]);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
    }
}

fn assert_contains(text: &str, wanted: &str) {
    assert!(text.contains(wanted), "missing {wanted:?} in:\n{text}");
}

#[test]
fn across_nodes_allowed_by_the_namespace_profiles_over_vxlan() {
    let env = Env::cluster();
    let text = env.trace("x/a", "y/b", 80);
    assert_contains(
        &text,
        "from x/a: endpoint on node node1, interface mgyxa, 10.244.0.2",
    );
    assert_contains(
        &text,
        "=> allowed by profile kns.x, egress rule 0 (Calico's default: allow everything)",
    );
    assert_contains(
        &text,
        "10.244.0.64/26 via 10.244.0.65 dev vxlan.margay onlink: VXLAN (vxlan.margay) to node \
         node2 via its tunnel address 10.244.0.65, outer destination 192.168.1.11",
    );
    assert_contains(
        &text,
        "VXLAN from 192.168.1.10 (node node1, a cluster node): accepted by node node2's overlay \
         protection",
    );
    assert_contains(&text, "=> allowed by profile kns.y, ingress rule 0");
    assert_contains(&text, "6. Verdict: ALLOWED");

    let json = env.trace_json("x/a", "y/b", 80);
    assert_eq!(json["egress"]["decision"]["by"], "profileRule");
    assert_eq!(json["egress"]["decision"]["profile"], "kns.x");
    assert_eq!(json["ingress"]["decision"]["profile"], "kns.y");
    let egress = &json["egress"]["dataplane"];
    assert_eq!(egress["nftables"]["table"], "ip margay-policy");
    assert_eq!(egress["nftables"]["chain"], "pro-kns.x");
    assert_eq!(egress["nftables"]["endpointChain"], "fw-mgyxa");
    assert_eq!(egress["nftables"]["rules"], serde_json::json!([1]));
    // Allow is two iptables rules: set the accept mark, then return.
    assert_eq!(egress["iptables"]["chain"], "mgy-pro-kns.x");
    assert_eq!(egress["iptables"]["endpointChain"], "mgy-fw-mgyxa");
    assert_eq!(egress["iptables"]["rules"], serde_json::json!([1, 2]));
    let route = &json["route"];
    assert_eq!(route["node"], "node1");
    assert_eq!(route["path"]["kind"], "vxlan");
    assert_eq!(route["path"]["node"], "node2");
    assert_eq!(route["path"]["underlay"], "192.168.1.11");
    assert_eq!(route["route"]["dst"], "10.244.0.64/26");
    assert_eq!(json["arrival"]["overlay"]["result"], "accepted");
    assert_eq!(json["arrival"]["path"]["kind"], "localWorkload");
    assert_eq!(json["arrival"]["path"]["endpoint"], "y/b");
    assert_eq!(json["verdict"]["allowed"], true);

    // An endpoint's address means that endpoint.
    let by_ip = env.trace_json("10.244.0.2", "10.244.0.66", 80);
    assert_eq!(by_ip["source"]["type"], "endpoint");
    assert_eq!(by_ip["source"]["id"], "x/a");
    assert_eq!(by_ip["destination"]["id"], "y/b");
    assert_eq!(by_ip["verdict"]["allowed"], true);
}

const DEFAULT_DENY: &str = "\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: default-deny
  namespace: y
spec:
  podSelector: {}
  policyTypes: [Ingress]
";

#[test]
fn kubernetes_default_deny_is_the_end_of_tier_default() {
    let env = Env::cluster();
    env.apply(DEFAULT_DENY);
    let text = env.trace("x/a", "y/b", 80);
    let json = env.trace_json("x/a", "y/b", 80);
    // The policy chain that was walked, named in the step.
    let pi = json["ingress"]["dataplane"]["chains"][0]["nftables"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(pi.starts_with("pi-"), "{pi}");
    assert_contains(
        &text,
        &format!(
            "tier default, policy knp.default.default-deny in namespace y: no rule matched, on \
             to the next policy [{pi} / mgy-{pi}]"
        ),
    );
    assert_contains(
        &text,
        "=> denied by the end of tier default: no policy in it allowed or passed the packet \
         (\"Drop if no policies passed packet\")",
    );
    assert_contains(
        &text,
        "6. Verdict: DENIED by the end of tier default: no policy in it allowed or passed the \
         packet (\"Drop if no policies passed packet\") (at y/b ingress)",
    );
    assert_contains(
        &text,
        "nftables  table ip margay-policy chain tw-mgyyb rule 5",
    );
    assert_contains(&text, "iptables  table filter chain mgy-tw-mgyyb rule 7");

    assert_eq!(json["ingress"]["decision"]["by"], "tierDefault");
    assert_eq!(json["ingress"]["decision"]["tier"], "default");
    assert_eq!(json["verdict"]["allowed"], false);
    assert_eq!(json["verdict"]["stage"], "ingress");
    let dataplane = &json["verdict"]["dataplane"];
    assert_eq!(dataplane["node"], "node2");
    assert_eq!(dataplane["nftables"]["chain"], "tw-mgyyb");
    assert_eq!(
        dataplane["nftables"]["comment"],
        "end of tier default: drop if no policies passed packet"
    );
    assert_eq!(dataplane["iptables"]["chain"], "mgy-tw-mgyyb");
    assert_eq!(
        dataplane["iptables"]["comment"],
        "End of tier default. Drop if no policies passed packet"
    );
    let chain = &json["ingress"]["dataplane"]["chains"][0];
    assert_eq!(chain["tier"], "default");
    assert_eq!(chain["policy"]["name"], "knp.default.default-deny");
    assert_eq!(chain["policy"]["namespace"], "y");
    // Egress still allowed at the source: only the destination's side denies.
    assert_eq!(json["egress"]["allowed"], true);

    // node2's own traffic to its pod takes the output path, which no policy applies to.
    let host = env.trace_json("10.244.0.65", "y/b", 80);
    assert_eq!(host["source"]["host"]["node"], "node2");
    assert_eq!(host["source"]["host"]["role"], "VXLAN tunnel address");
    assert_eq!(host["route"]["path"]["kind"], "localWorkload");
    assert_eq!(host["verdict"]["allowed"], true);
    assert_eq!(host["verdict"]["policyAllowed"], true);
    assert_eq!(host["ingress"]["decision"]["by"], "fromHost");
    assert_eq!(host["verdict"]["dataplane"]["nftables"]["chain"], "output");
    // node1's traffic crosses to node2 and meets y/b's ingress policy there.
    let remote = env.trace_json("192.168.1.10", "y/b", 80);
    assert_eq!(remote["source"]["host"]["role"], "node address");
    assert_eq!(remote["route"]["path"]["kind"], "vxlan");
    assert_eq!(remote["verdict"]["stage"], "ingress");
}

#[test]
fn table_output_golden() {
    let env = Env::cluster();
    env.apply(DEFAULT_DENY);
    check_golden("trace-default-deny", &env.trace("x/a", "y/b", 80));
}

fn check_golden(name: &str, rendered: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(format!("{name}.txt"));
    if std::env::var_os("MARGAY_UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, rendered).unwrap();
    }
    let golden = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (MARGAY_UPDATE_GOLDEN=1 writes it)", path.display()));
    assert_eq!(
        rendered,
        golden,
        "trace {name} differs from {}",
        path.display()
    );
}

#[test]
fn calico_deny_rule_is_named_by_its_index() {
    let env = Env::cluster();
    env.apply(
        "\
apiVersion: margay.dev/v1
kind: NetworkPolicy
metadata:
  name: block-81
  namespace: x
spec:
  order: 10
  selector: all()
  types: [Egress]
  egress:
  - action: Allow
    protocol: UDP
  - action: Deny
    protocol: TCP
    destination:
      ports: [81]
  - action: Allow
",
    );
    let text = env.trace("x/a", "y/b", 81);
    assert_contains(
        &text,
        "=> denied by tier default, policy default.block-81 in namespace x, egress rule 1 \
         (spec.egress[1])",
    );
    let json = env.trace_json("x/a", "y/b", 81);
    let decision = &json["egress"]["decision"];
    assert_eq!(decision["by"], "rule");
    assert_eq!(decision["tier"], "default");
    assert_eq!(decision["policy"]["kind"], "NetworkPolicy");
    assert_eq!(decision["policy"]["name"], "default.block-81");
    assert_eq!(decision["rule"]["index"], 1);
    assert_eq!(decision["rule"]["action"], "Deny");
    assert_eq!(decision["rule"]["origin"], "spec.egress[1]");
    let dataplane = &json["verdict"]["dataplane"];
    let po = dataplane["nftables"]["chain"].as_str().unwrap();
    assert!(po.starts_with("po-"), "{po}");
    // Rule 0 (an Allow) is one nft rule and two iptables rules, so rule 1 is the second nft
    // rule and the third iptables rule.
    assert_eq!(dataplane["nftables"]["rules"], serde_json::json!([2]));
    assert_eq!(dataplane["iptables"]["chain"], format!("mgy-{po}"));
    assert_eq!(dataplane["iptables"]["rules"], serde_json::json!([3]));
    assert_eq!(json["verdict"]["stage"], "egress");
    assert_contains(
        &text,
        &format!("nftables  table ip margay-policy chain {po} rule 2"),
    );

    // Port 80 goes on to the last rule: allowed, rules 4-5 in iptables.
    let json = env.trace_json("x/a", "y/b", 80);
    assert_eq!(json["egress"]["decision"]["rule"]["index"], 2);
    assert_eq!(
        json["egress"]["dataplane"]["iptables"]["rules"],
        serde_json::json!([4, 5])
    );
}

/// Seed 003: traffic from another CNI's pod behind the tunnel (an address in no pool) to a
/// pod whose namespace profile only admits endpoints: "Drop if no profiles matched".
#[test]
fn external_source_is_evaluated_as_external_and_ingress_decides() {
    let env = Env::cluster();
    env.apply(
        "\
apiVersion: margay.dev/v1
kind: Profile
metadata:
  name: kns.y
spec:
  ingress:
  - action: Allow
    source:
      selector: all()
  egress:
  - action: Allow
",
    );
    let text = env.trace("10.222.2.82", "y/b", 80);
    assert_contains(
        &text,
        "from 10.222.2.82 is no Margay endpoint: evaluated as external; in no IP pool",
    );
    assert_contains(
        &text,
        "=> not evaluated: 10.222.2.82 is no Margay endpoint, so there is no egress policy on \
         this side",
    );
    assert_contains(
        &text,
        "6. Verdict: DENIED by the end of the profiles: none of their rules matched (\"Drop if \
         no profiles matched\") (at y/b ingress)",
    );
    let json = env.trace_json("10.222.2.82", "y/b", 80);
    assert_eq!(json["source"]["type"], "external");
    assert!(json["source"].get("pool").is_none());
    assert_eq!(json["egress"]["decision"]["by"], "notAnEndpoint");
    assert_eq!(json["egress"]["allowed"], true);
    assert_eq!(json["route"]["path"]["kind"], "unknown");
    assert_eq!(json["arrival"]["node"], "node2");
    assert_eq!(json["arrival"]["overlay"]["result"], "fromOutside");
    assert_eq!(
        json["arrival"]["overlay"]["clusterNodes"],
        serde_json::json!(["192.168.1.10", "192.168.1.11"])
    );
    assert_eq!(json["ingress"]["decision"]["by"], "noProfileMatched");
    let steps = json["ingress"]["steps"].as_array().unwrap();
    assert!(steps
        .iter()
        .any(|s| s["step"] == "profileNoMatch" && s["profile"] == "kns.y"));
    assert_eq!(json["verdict"]["stage"], "ingress");
    let dataplane = &json["verdict"]["dataplane"];
    assert_eq!(dataplane["nftables"]["chain"], "tw-mgyyb");
    assert_eq!(
        dataplane["nftables"]["comment"],
        "drop if no profiles matched"
    );
    assert_eq!(dataplane["iptables"]["chain"], "mgy-tw-mgyyb");
    assert_eq!(
        dataplane["iptables"]["comment"],
        "Drop if no profiles matched"
    );
    // The last rule of each endpoint chain.
    assert_eq!(dataplane["nftables"]["rules"], serde_json::json!([6]));
    assert_eq!(dataplane["iptables"]["rules"], serde_json::json!([8]));

    // The same profile lets a pod in.
    let pod = env.trace_json("x/a", "y/b", 80);
    assert_eq!(pod["ingress"]["decision"]["by"], "profileRule");
    assert_eq!(pod["verdict"]["allowed"], true);
}

#[test]
fn pool_addresses_without_an_endpoint_meet_the_blackholes() {
    let env = Env::cluster();
    // In node2's block: VXLAN to node2, dropped by node2's blackhole.
    let text = env.trace("x/a", "10.244.0.70", 80);
    assert_contains(
        &text,
        "to   10.244.0.70 is no Margay endpoint: evaluated as external; in IPPool pool \
         (10.244.0.0/16), block 10.244.0.64/26 of node node2",
    );
    assert_contains(
        &text,
        "on node2: blackhole 10.244.0.64/26: dropped. 10.244.0.64/26 is node node2's own block \
         and no workload on node2 has 10.244.0.70",
    );
    let json = env.trace_json("x/a", "10.244.0.70", 80);
    assert_eq!(json["destination"]["pool"]["block"]["node"], "node2");
    assert_eq!(json["route"]["path"]["kind"], "vxlan");
    assert_eq!(json["arrival"]["path"]["kind"], "blackhole");
    assert_eq!(json["verdict"]["allowed"], false);
    assert_eq!(json["verdict"]["stage"], "arrival");

    // In the source node's own block: dropped there.
    let json = env.trace_json("x/a", "10.244.0.9", 80);
    assert_eq!(json["route"]["path"]["kind"], "blackhole");
    assert_eq!(json["route"]["path"]["block"], "10.244.0.0/26");
    assert!(json.get("arrival").is_none());
    assert_eq!(json["verdict"]["stage"], "route");
    assert_contains(
        &env.trace("x/a", "10.244.0.9", 80),
        "6. Verdict: DENIED by the blackhole route for block 10.244.0.0/26 on node node1",
    );

    // In the pool but in no block: no route, out through the default route.
    let json = env.trace_json("x/a", "10.244.9.9", 80);
    assert!(json["destination"]["pool"].get("block").is_none());
    assert_eq!(json["route"]["path"]["kind"], "unrouted");
    assert_eq!(json["route"]["natOutgoing"], false);
    assert_eq!(json["verdict"]["allowed"], true);

    // Outside every pool: masqueraded (natOutgoing) and out.
    let json = env.trace_json("x/a", "8.8.8.8", 80);
    assert_eq!(json["route"]["path"]["kind"], "unrouted");
    assert_eq!(json["route"]["natOutgoing"], true);
}

#[test]
fn bad_input_is_one_line_and_a_denial_still_exits_zero() {
    let env = Env::cluster();
    let out = env.run(&["trace", "--from", "x/aa", "--to", "y/b", "--port", "80"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr, "error: --from: no pod x/aa: did you mean x/a?\n");

    let out = env.run(&["trace", "--from", "x/a", "--to", "q/zz", "--port", "80"]);
    assert!(!out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "error: --to: no pod q/zz: 2 endpoints are stored; list them with `margay get wep -A`\n"
    );

    let out = env.run(&["trace", "--from", "b", "--to", "x/a", "--port", "80"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "error: --from: \"b\" is neither NS/POD nor an IP address: did you mean y/b?\n"
    );

    env.apply(DEFAULT_DENY);
    let out = env.run(&["trace", "--from", "x/a", "--to", "y/b", "--port", "80"]);
    assert!(out.status.success());
    assert_contains(&String::from_utf8_lossy(&out.stdout), "DENIED");
}

/// Echo requests (8/0) into y are allowed; any other ICMP but echo is denied by a notICMP
/// rule; anything else meets the end of the tier.
const ICMP_ECHO_ONLY: &str = "\
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata:
  name: echo
  namespace: y
spec:
  selector: all()
  types: [Ingress]
  ingress:
  - action: Allow
    protocol: ICMP
    icmp: {type: 8, code: 0}
  - action: Deny
    protocol: ICMP
    notICMP: {type: 8}
";

#[test]
fn icmp_is_traced_by_type_and_code() {
    let env = Env::cluster();
    env.apply(ICMP_ECHO_ONLY);
    let icmp = |icmp_type: &str, code: Option<&str>, output: &str| {
        let mut args = vec![
            "trace",
            "--from",
            "x/a",
            "--to",
            "y/b",
            "--protocol",
            "icmp",
            "--icmp-type",
            icmp_type,
            "-o",
            output,
        ];
        if let Some(code) = code {
            args.extend(["--icmp-code", code]);
        }
        env.ok(&args)
    };
    let json = |icmp_type, code| -> Value {
        let out = icmp(icmp_type, code, "json");
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
    };

    let text = icmp("8", Some("0"), "table");
    check_golden("trace-icmp-echo", &text);
    assert_contains(&text, "Trace ICMP type 8 code 0 from x/a to y/b (IPv4)");
    assert_contains(
        &text,
        "=> allowed by tier default, policy default.echo in namespace y, ingress rule 0 \
         (spec.ingress[0])",
    );
    let echo = json("8", Some("0"));
    assert_eq!(echo["protocol"], "ICMP");
    assert_eq!(echo["icmpType"], 8);
    assert_eq!(echo["icmpCode"], 0);
    assert!(echo.get("port").is_none());
    assert_eq!(echo["verdict"]["allowed"], true);
    // The Allow is the first nft rule, and two iptables rules (the `-p icmp` one).
    let ingress = &echo["ingress"]["dataplane"];
    assert_eq!(ingress["nftables"]["rules"], serde_json::json!([1]));
    assert_eq!(ingress["iptables"]["rules"], serde_json::json!([1, 2]));

    // Not echo: the notICMP Deny, the second nft rule and the third iptables one.
    let reply = json("0", Some("0"));
    assert_eq!(reply["ingress"]["decision"]["rule"]["index"], 1);
    assert_eq!(reply["verdict"]["stage"], "ingress");
    assert_eq!(
        reply["verdict"]["dataplane"]["nftables"]["rules"],
        serde_json::json!([2])
    );
    assert_eq!(
        reply["verdict"]["dataplane"]["iptables"]["rules"],
        serde_json::json!([3])
    );
    // Echo with another code: not the Allow's 8/0, and the Deny spares type 8.
    let odd = json("8", Some("1"));
    assert_eq!(odd["ingress"]["decision"]["by"], "tierDefault");
    // Without a code, the code is none a rule names: the Allow (8/0) does not match.
    let unknown = json("8", None);
    assert!(unknown.get("icmpCode").is_none());
    assert_eq!(unknown["ingress"]["decision"]["by"], "tierDefault");
    assert_contains(
        &icmp("8", None, "table"),
        "Trace ICMP type 8 from x/a to y/b",
    );

    // ICMP rules never match TCP.
    let tcp = env.trace_json("x/a", "y/b", 80);
    assert_eq!(tcp["ingress"]["decision"]["by"], "tierDefault");
}

#[test]
fn source_port_is_traced() {
    let env = Env::cluster();
    env.apply(
        "\
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata:
  name: from-dns
  namespace: y
spec:
  selector: all()
  types: [Ingress]
  ingress:
  - action: Allow
    protocol: UDP
    source:
      ports: [53]
",
    );
    let udp = |source_port: Option<&str>, output: &str| {
        let mut args = vec![
            "trace",
            "--from",
            "x/a",
            "--to",
            "y/b",
            "--protocol",
            "UDP",
            "--port",
            "5353",
            "-o",
            output,
        ];
        if let Some(p) = source_port {
            args.extend(["--source-port", p]);
        }
        env.ok(&args)
    };
    let text = udp(Some("53"), "table");
    check_golden("trace-source-port", &text);
    assert_contains(
        &text,
        "Trace UDP/5353 (source port 53) from x/a to y/b (IPv4)",
    );
    assert_contains(&text, "6. Verdict: ALLOWED");
    let json: Value = serde_json::from_str(&udp(Some("53"), "json")).unwrap();
    assert_eq!(json["protocol"], "UDP");
    assert_eq!(json["port"], 5353);
    assert_eq!(json["sourcePort"], 53);
    assert_eq!(json["ingress"]["decision"]["rule"]["index"], 0);

    // Another source port, or none (ephemeral, as `policy matrix` assumes): denied.
    let other: Value = serde_json::from_str(&udp(Some("54"), "json")).unwrap();
    assert_eq!(other["verdict"]["allowed"], false);
    let ephemeral: Value = serde_json::from_str(&udp(None, "json")).unwrap();
    assert!(ephemeral.get("sourcePort").is_none());
    assert_eq!(ephemeral["verdict"]["allowed"], false);
}

#[test]
fn flags_that_make_no_packet_are_one_line_errors() {
    let env = Env::cluster();
    let fails = |args: &[&str], wanted: &str| {
        let mut all = vec!["trace", "--from", "x/a", "--to", "y/b"];
        all.extend(args);
        let out = env.run(&all);
        assert!(!out.status.success(), "{all:?} succeeded");
        assert_eq!(String::from_utf8_lossy(&out.stderr), wanted, "{all:?}");
    };
    fails(
        &["--protocol", "ICMP", "--icmp-type", "8", "--port", "80"],
        "error: --port: ICMP has no ports: give --icmp-type (and --icmp-code) instead\n",
    );
    fails(
        &[
            "--protocol",
            "ICMPv6",
            "--icmp-type",
            "128",
            "--source-port",
            "1",
        ],
        "error: --source-port: ICMPv6 has no ports: give --icmp-type (and --icmp-code) instead\n",
    );
    fails(
        &["--protocol", "ICMP"],
        "error: --icmp-type: required with --protocol ICMP\n",
    );
    fails(
        &["--port", "80", "--icmp-type", "8"],
        "error: --icmp-type: needs --protocol ICMP or ICMPv6, not TCP\n",
    );
    fails(
        &["--protocol", "udp", "--port", "53", "--icmp-code", "0"],
        "error: --icmp-code: needs --protocol ICMP or ICMPv6, not UDP\n",
    );
    fails(&[], "error: --port: required with --protocol TCP\n");
    let out = env.run(&[
        "trace",
        "--from",
        "10.244.0.2",
        "--to",
        "y/b",
        "--protocol",
        "ICMPv6",
        "--icmp-type",
        "128",
    ]);
    assert!(!out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "error: --from: 10.244.0.2 is an IPv4 address and ICMPv6 is IPv6's: use --protocol ICMP\n"
    );
    let out = env.run(&["trace", "--from", "x/a", "--to", "y/b", "--protocol", "GRE"]);
    assert!(!out.status.success());
    assert_contains(
        &String::from_utf8_lossy(&out.stderr),
        "unknown protocol \"GRE\": expected TCP, UDP, SCTP, ICMP or ICMPv6",
    );
}

/// A pod's packet to its own node: its egress policy, then the node's
/// `defaultEndpointToHostAction` (Calico's default Drop; Accept when configured), located in
/// both renderings' `wl-to-host` chains. To another node, nothing decides on that side.
#[test]
fn a_pod_to_its_own_node_meets_the_endpoint_to_host_action() {
    let env = Env::cluster();
    let own = env.trace_json("x/a", "192.168.1.10", 22);
    assert_eq!(own["egress"]["allowed"], true);
    assert_eq!(own["ingress"]["decision"]["by"], "endpointToHost");
    assert_eq!(own["ingress"]["decision"]["action"], "Drop");
    assert_eq!(own["ingress"]["node"], "node1");
    assert_eq!(own["verdict"]["allowed"], false);
    assert_eq!(own["verdict"]["stage"], "ingress");
    let nft = &own["verdict"]["dataplane"]["nftables"];
    assert_eq!(nft["chain"], "wl-to-host");
    assert_eq!(
        nft["comment"],
        "configured DefaultEndpointToHostAction: Drop"
    );
    assert_eq!(
        own["verdict"]["dataplane"]["iptables"]["chain"],
        "mgy-wl-to-host"
    );
    let text = env.trace("x/a", "10.244.0.1", 22);
    assert!(
        text.contains("=> denied by node node1's defaultEndpointToHostAction, Drop"),
        "{text}"
    );

    let other = env.trace_json("x/a", "192.168.1.11", 22);
    assert_eq!(other["ingress"]["decision"]["by"], "notAnEndpoint");
    assert_eq!(other["verdict"]["allowed"], true);

    env.apply(
        "apiVersion: projectcalico.org/v3\nkind: FelixConfiguration\nmetadata:\n  \
         name: node.node1\nspec:\n  defaultEndpointToHostAction: Accept\n",
    );
    let own = env.trace_json("x/a", "192.168.1.10", 22);
    assert_eq!(own["ingress"]["decision"]["action"], "Accept");
    assert_eq!(own["verdict"]["allowed"], true);
}

/// A packet to a node's address listed by one of its host endpoints: the failsafe ports
/// first, then the policies selecting the endpoint, located in its `fh-` chains.
#[test]
fn a_packet_to_a_host_endpoint_meets_failsafe_ports_then_its_policy() {
    let env = Env::cluster();
    env.apply(
        "apiVersion: projectcalico.org/v3\nkind: HostEndpoint\nmetadata:\n  name: node1-eth0\n  \
         labels: {role: node}\nspec:\n  node: node1\n  interfaceName: eth0\n  \
         expectedIPs: [192.168.1.10]\n---\napiVersion: projectcalico.org/v3\n\
         kind: GlobalNetworkPolicy\nmetadata:\n  name: web-only\nspec:\n  \
         selector: role == 'node'\n  types: [Ingress]\n  \
         ingress: [{action: Allow, protocol: TCP, destination: {ports: [443]}}]\n",
    );
    let denied = env.trace_json("192.0.2.9", "192.168.1.10", 8080);
    assert_eq!(denied["ingress"]["hostEndpoint"], "node1-eth0");
    assert_eq!(denied["ingress"]["decision"]["by"], "tierDefault");
    assert_eq!(denied["verdict"]["allowed"], false);
    assert_eq!(
        denied["verdict"]["dataplane"]["nftables"]["chain"],
        "fh-eth0"
    );
    assert_eq!(
        denied["verdict"]["dataplane"]["iptables"]["chain"],
        "mgy-fh-eth0"
    );
    let allowed = env.trace_json("192.0.2.9", "192.168.1.10", 443);
    assert_eq!(allowed["verdict"]["allowed"], true);
    assert_eq!(allowed["ingress"]["decision"]["by"], "rule");
    let failsafe = env.trace_json("192.0.2.9", "192.168.1.10", 22);
    assert_eq!(failsafe["ingress"]["decision"]["by"], "failsafe");
    assert_eq!(failsafe["ingress"]["decision"]["port"]["port"], 22);
    assert_eq!(
        failsafe["ingress"]["dataplane"]["nftables"]["chain"],
        "failsafe-in"
    );
    let text = env.trace("192.0.2.9", "192.168.1.10", 22);
    assert!(
        text.contains("5. Ingress at host endpoint node1-eth0 (node node1)"),
        "{text}"
    );
    // A pod on node1 to its node: its endpoint-to-host action, not the host endpoint.
    let own = env.trace_json("x/a", "192.168.1.10", 8080);
    assert_eq!(own["ingress"]["decision"]["by"], "endpointToHost");
}
