//! The node agent across three "nodes": network namespaces joined by a bridge in a fourth
//! (no path to the host's network), each running `margay node run` against one shared
//! datastore, with pods wired by the CNI plugin inside each node. VXLAN carries pod traffic
//! between nodes; routes, neighbours and FDB entries must be exactly what the plan says; an
//! agent restart must not change a single route.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

#[path = "support/host.rs"]
mod host;
#[path = "support/uplink.rs"]
mod uplink;

use host::{is_root, run, unique, Netns};

const BIN: &str = env!("CARGO_BIN_EXE_margay");

/// A running agent, killed on drop.
struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Node {
    name: String,
    ns: Netns,
    ip: String,
    state: PathBuf,
    agent: Option<Agent>,
}

/// Which datastore the cluster shares.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Backend {
    Sqlite,
    /// A real etcd in the fabric namespace, reached by the nodes over the bridge.
    Etcd,
}

/// The fabric bridge's own address (where etcd listens in the etcd variant).
const FABRIC_IP: &str = "192.168.77.1";

struct Cluster {
    // Nodes before the fabric: dropping a node's namespace removes its end of the link.
    nodes: Vec<Node>,
    etcd: Option<margay_datastore::testing::EtcdServer>,
    fabric: Netns,
    dir: tempfile::TempDir,
    datastore: String,
    resync: &'static str,
}

impl Cluster {
    fn new(count: usize, pool_yaml: &str, backend: Backend, resync: &'static str) -> Cluster {
        let fabric = Netns::new("f");
        fabric.ip(&["link", "add", "br0", "type", "bridge"]);
        fabric.ip(&["link", "set", "br0", "up"]);
        fabric.ip(&["link", "set", "lo", "up"]);
        let dir = tempfile::tempdir().unwrap();
        let (etcd, datastore) = match backend {
            Backend::Sqlite => (
                None,
                format!("sqlite://{}", dir.path().join("margay.db").display()),
            ),
            Backend::Etcd => {
                fabric.ip(&["addr", "add", &format!("{FABRIC_IP}/24"), "dev", "br0"]);
                let ip: std::net::IpAddr = FABRIC_IP.parse().unwrap();
                // Started from a thread inside the fabric namespace, so etcd lives there.
                let fabric_ns = margay_sys::netns::NetNs::open(&fabric.path()).unwrap();
                let etcd = fabric_ns
                    .run(|| margay_datastore::testing::EtcdServer::start_on(ip))
                    .unwrap();
                let url = etcd.url_on(ip);
                (Some(etcd), url)
            }
        };
        let mut cluster = Cluster {
            nodes: Vec::new(),
            etcd,
            fabric,
            dir,
            datastore,
            resync,
        };
        cluster.ctl_apply(pool_yaml);
        for i in 0..count {
            let ns = Netns::new("n");
            // IPv4-only nodes: without IPv6, no link-local routes appear seconds after each
            // link comes up, so the restart check below sees every route change and only those.
            let v6_off = ns.exec(&["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"]);
            let v6_default_off =
                ns.exec(&["sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1"]);
            assert!(v6_off.status.success() && v6_default_off.status.success());
            let port = format!("p{}{}", i, std::process::id() % 10_000);
            ns.ip(&["link", "add", "eth0", "type", "veth", "peer", "name", &port]);
            ns.ip(&["link", "set", &port, "netns", &cluster.fabric.name]);
            cluster.fabric.ip(&["link", "set", &port, "master", "br0"]);
            cluster.fabric.ip(&["link", "set", &port, "up"]);
            let ip = format!("192.168.77.{}", 11 + i);
            ns.ip(&["addr", "add", &format!("{ip}/24"), "dev", "eth0"]);
            ns.ip(&["link", "set", "eth0", "up"]);
            uplink::add_dead_end_uplink(&ns.name);
            let state = cluster.dir.path().join(format!("state{i}"));
            cluster.nodes.push(Node {
                name: format!("node{i}"),
                ns,
                ip,
                state,
                agent: None,
            });
        }
        for i in 0..count {
            cluster.start_agent(i);
        }
        cluster
    }

    /// The CLI, run from the fabric namespace (where etcd is reachable in that variant).
    fn ctl(&self, args: &[&str]) -> Output {
        run(Command::new("ip")
            .args(["netns", "exec", &self.fabric.name, BIN])
            .env_remove("CNI_COMMAND")
            .arg("--datastore")
            .arg(&self.datastore)
            .args(args))
    }

    fn ctl_apply(&self, yaml: &str) {
        let path = self.dir.path().join(format!("{}.yaml", unique("y")));
        std::fs::write(&path, yaml).unwrap();
        let out = self.ctl(&["apply", "-f", path.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn start_agent(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        let log = std::fs::File::create(self.dir.path().join(format!("agent{i}.log"))).unwrap();
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &n.ns.name,
                BIN,
                "--datastore",
                &self.datastore,
            ])
            .args(["node", "run", "--name", &n.name])
            .args(["--ip", &format!("{}/24", n.ip)])
            .arg("--state-dir")
            .arg(&n.state)
            .args([
                "--health-addr",
                "127.0.0.1:9099",
                "--metrics-addr",
                "127.0.0.1:9091",
            ])
            .args(["--resync-interval", self.resync])
            .env_remove("CNI_COMMAND")
            .env("MARGAY_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        n.agent = Some(Agent(child));
    }

    fn stop_agent(&mut self, i: usize) {
        self.nodes[i].agent = None;
    }

    fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("agent{i}.log"))).unwrap_or_default()
    }

    /// `margay node status -o json` from inside the node.
    fn status(&self, i: usize) -> Option<Value> {
        let out = self.nodes[i]
            .ns
            .exec(&[BIN, "node", "status", "-o", "json"]);
        out.status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).ok())
            .flatten()
    }

    fn http_get(&self, i: usize, url: &str) -> Option<String> {
        let out = self.nodes[i]
            .ns
            .exec(&["busybox", "wget", "-q", "-O", "-", url]);
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn wait_until(&self, what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !done() {
            if Instant::now() > deadline {
                let logs: Vec<String> = (0..self.nodes.len()).map(|i| self.log(i)).collect();
                panic!(
                    "timed out waiting for {what}\nagent logs:\n{}",
                    logs.join("\n---\n")
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The plugin's config on node `i`; ADD waits up to `policy_timeout` seconds for the
    /// agent to program the pod's policy (0: not at all).
    fn cni_conf(&self, i: usize, policy_timeout: u32) -> Value {
        let n = &self.nodes[i];
        json!({
            "cniVersion": "1.0.0", "name": "k8s-pod-network", "type": "margay",
            "nodename": n.name, "datastore": self.datastore, "state_dir": n.state,
            "ipam": {"type": "margay-ipam"},
            "policy_setup_timeout_seconds": policy_timeout,
        })
    }

    /// Wires a pod with the CNI plugin inside node `i`; it returns once the pod's policy is
    /// programmed, so the pod can send and receive at once.
    fn add_pod(&self, i: usize, name: &str) -> (Netns, String) {
        let pod = Netns::new("p");
        let out = self.cni(i, "ADD", &self.cni_conf(i, 10), &pod, name);
        let result: Value = serde_json::from_slice(&out.stdout).unwrap();
        let ip = result["ips"][0]["address"]
            .as_str()
            .unwrap_or_else(|| panic!("ADD failed: {result}"))
            .trim_end_matches("/32")
            .to_owned();
        (pod, ip)
    }

    fn del_pod(&self, i: usize, pod: &Netns, name: &str) {
        let out = self.cni(i, "DEL", &self.cni_conf(i, 0), pod, name);
        assert!(
            out.status.success(),
            "DEL: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }

    fn cni(&self, i: usize, command: &str, conf: &Value, pod: &Netns, name: &str) -> Output {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.nodes[i].ns.name, BIN])
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", format!("c{}", pod.name.replace('x', "")))
            .env("CNI_NETNS", pod.path())
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", "/nonexistent")
            .env(
                "CNI_ARGS",
                format!("K8S_POD_NAMESPACE=default;K8S_POD_NAME={name}"),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(conf.to_string().as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    }

    /// The agent-owned routes of node `i`, as `dst → "dev X [via G] [onlink]" / "blackhole"`.
    fn routes(&self, i: usize) -> BTreeSet<String> {
        self.nodes[i]
            .ns
            .json("ip", &["route", "show", "proto", "77"])
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                let mut s = r["dst"].as_str().unwrap().to_owned();
                if r["type"] == "blackhole" {
                    s.push_str(" blackhole");
                }
                if let Some(gw) = r["gateway"].as_str() {
                    s.push_str(&format!(" via {gw}"));
                }
                if let Some(dev) = r["dev"].as_str() {
                    s.push_str(&format!(" dev {dev}"));
                }
                if r["flags"]
                    .as_array()
                    .is_some_and(|f| f.contains(&json!("onlink")))
                {
                    s.push_str(" onlink");
                }
                s
            })
            .collect()
    }

    fn node_json(&self, name: &str) -> Value {
        let out = self.ctl(&["get", "node", name, "-o", "json"]);
        serde_json::from_slice(&out.stdout).unwrap()
    }

    fn blocks_of(&self, node: &str) -> Vec<String> {
        let out = self.ctl(&["get", "ipamblocks", "-o", "json"]);
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|b| b["spec"]["affinity"] == format!("host:{node}"))
            .map(|b| b["spec"]["cidr"].as_str().unwrap().to_owned())
            .collect()
    }
}

const VXLAN_POOL: &str = "apiVersion: margay.dev/v1\nkind: IPPool\nmetadata: {name: pool}\nspec: {cidr: 10.77.0.0/16, blockSize: 26, vxlanMode: Always, natOutgoing: true}\n";

fn ping(from: &Netns, to: &str) -> bool {
    from.exec(&["ping", "-c", "1", "-W", "2", to])
        .status
        .success()
}

#[test]
fn three_nodes_over_vxlan() {
    if !is_root() {
        eprintln!("skipped: this test needs root (network namespaces)");
        return;
    }
    let mut c = Cluster::new(3, VXLAN_POOL, Backend::Sqlite, "30s");
    c.wait_until("all agents ready with two VXLAN peers", || {
        (0..3).all(|i| {
            c.status(i)
                .is_some_and(|s| s["ready"] == true && s["vxlanPeers"] == 2)
        })
    });

    // Every node registered with its address, a tunnel address and a VTEP MAC.
    let mut tunnel = Vec::new();
    let mut vtep = Vec::new();
    for n in &c.nodes {
        let node = c.node_json(&n.name);
        assert_eq!(node["spec"]["bgp"]["ipv4Address"], format!("{}/24", n.ip));
        assert_eq!(
            node["spec"]["addresses"],
            json!([{"address": format!("{}/24", n.ip), "type": "CalicoNodeIP"}])
        );
        tunnel.push(
            node["spec"]["ipv4VXLANTunnelAddr"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
        vtep.push(
            node["spec"]["vxlanTunnelMACAddr"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
        assert_eq!(
            std::fs::read_to_string(n.state.join("mtu")).unwrap().trim(),
            "1450"
        );
    }

    let pods: Vec<(Netns, String)> = (0..3).map(|i| c.add_pod(i, &format!("pod{i}"))).collect();
    c.wait_until("routes to every pod's block on every node", || {
        (0..3).all(|i| {
            let routes = c.routes(i);
            (0..3).all(|j| {
                i == j
                    || c.blocks_of(&c.nodes[j].name)
                        .iter()
                        .all(|b| routes.iter().any(|r| r.starts_with(&format!("{b} via"))))
            })
        })
    });
    for (i, (pod, _)) in pods.iter().enumerate() {
        for (j, (_, ip)) in pods.iter().enumerate() {
            if i != j {
                assert!(ping(pod, ip), "pod{i} cannot ping pod{j} ({ip})");
            }
        }
    }
    // TCP across nodes: busybox nc listens in pod 1, pod 0 sends.
    let listener = Command::new("ip")
        .args([
            "netns",
            "exec",
            &pods[1].0.name,
            "busybox",
            "nc",
            "-l",
            "-p",
            "5000",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let mut sender = Command::new("ip")
        .args([
            "netns",
            "exec",
            &pods[0].0.name,
            "busybox",
            "nc",
            &pods[1].1,
            "5000",
        ])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    sender
        .stdin
        .take()
        .unwrap()
        .write_all(b"hello over vxlan\n")
        .unwrap();
    let _ = sender.wait();
    let got = listener.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&got.stdout), "hello over vxlan\n");

    // Node 0's dataplane is exactly the plan: its block blackholed, its pod's /32, each remote
    // block via the remote tunnel address onlink over vxlan.margay, and one neighbour and one
    // FDB entry per remote VTEP.
    let mut expected: BTreeSet<String> = BTreeSet::new();
    for b in c.blocks_of("node0") {
        expected.insert(format!("{b} blackhole"));
    }
    let veth = {
        let weps: Value =
            serde_json::from_slice(&c.ctl(&["get", "wep", "-A", "-o", "json"]).stdout).unwrap();
        weps["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|w| w["spec"]["node"] == "node0")
            .unwrap()["spec"]["interfaceName"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    expected.insert(format!("{} dev {veth}", pods[0].1));
    for (node, tunnel) in c.nodes.iter().zip(&tunnel).skip(1) {
        for b in c.blocks_of(&node.name) {
            expected.insert(format!("{b} via {tunnel} dev vxlan.margay onlink"));
        }
    }
    assert_eq!(c.routes(0), expected);
    let neigh = c.nodes[0]
        .ns
        .json("ip", &["neigh", "show", "dev", "vxlan.margay"]);
    let neigh: BTreeSet<(String, String)> = neigh
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["dst"].as_str().unwrap().into(),
                n["lladdr"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        neigh,
        BTreeSet::from([
            (tunnel[1].clone(), vtep[1].clone()),
            (tunnel[2].clone(), vtep[2].clone())
        ])
    );
    let fdb = c.nodes[0]
        .ns
        .json("bridge", &["fdb", "show", "dev", "vxlan.margay"]);
    let fdb: BTreeSet<(String, String)> = fdb
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| Some((e["mac"].as_str()?.into(), e["dst"].as_str()?.into())))
        .collect();
    assert_eq!(
        fdb,
        BTreeSet::from([
            (vtep[1].clone(), c.nodes[1].ip.clone()),
            (vtep[2].clone(), c.nodes[2].ip.clone())
        ])
    );
    let link = &c.nodes[0]
        .ns
        .json("ip", &["-d", "link", "show", "vxlan.margay"])[0];
    assert_eq!(link["mtu"], 1450);
    assert_eq!(link["linkinfo"]["info_data"]["id"], 4096);
    assert_eq!(link["linkinfo"]["info_data"]["port"], 4789);

    // Health and metrics answer.
    assert_eq!(
        c.http_get(0, "http://127.0.0.1:9099/readiness")
            .as_deref()
            .map(str::trim),
        Some("ready")
    );
    assert!(c.http_get(0, "http://127.0.0.1:9099/liveness").is_some());
    let metrics = c.http_get(0, "http://127.0.0.1:9091/metrics").unwrap();
    for name in [
        "margay_agent_sync_duration_seconds",
        "margay_agent_routes_programmed",
        "margay_agent_fdb_entries_programmed",
        "margay_agent_watch_lag_seconds",
        "margay_agent_policy_programming_seconds",
        "margay_agent_policy_endpoints_programmed",
    ] {
        assert!(
            metrics.contains(name),
            "{name} missing from /metrics:\n{metrics}"
        );
    }
    let status = c.nodes[0].ns.exec(&[BIN, "node", "status"]);
    let status = String::from_utf8_lossy(&status.stdout);
    assert!(status.contains("vxlan.margay vni 4096"), "{status}");

    // NAT outgoing is programmed in the node's nftables.
    let nft = c.nodes[0]
        .ns
        .exec(&["nft", "list", "table", "ip", "margay"]);
    let nft = String::from_utf8_lossy(&nft.stdout);
    assert!(
        nft.contains("masquerade") && nft.contains("10.77.0.0/16"),
        "{nft}"
    );

    // Policy is programmed for the node's one pod (no policy: its profiles allow all).
    let status = c.status(0).unwrap();
    assert_eq!(status["policy"]["endpoints"], 1, "{status}");
    assert_eq!(status["policyErrors"], json!([]), "{status}");
    let node0 = c.nodes[0].ns.name.clone();
    let policy_table = || {
        host::ok(Command::new("ip").args([
            "netns",
            "exec",
            &node0,
            "nft",
            "-s",
            "list",
            "table",
            "ip",
            "margay-policy",
        ]))
    };
    let policy_before = policy_table();
    assert!(policy_before.contains(&veth), "{policy_before}");

    // A restart changes no route (count route events in the node while the agent restarts),
    // reloads the same policy tables, and drops no packet between pods meanwhile.
    let mut monitor = Command::new("ip")
        .args(["-n", &c.nodes[0].ns.name, "monitor", "route"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let pinger = Command::new("ip")
        .args(["netns", "exec", &pods[0].0.name])
        .args(["ping", "-c", "40", "-i", "0.1", "-W", "1", &pods[1].1])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    c.stop_agent(0);
    c.start_agent(0);
    c.wait_until("node0's agent ready again", || {
        c.status(0).is_some_and(|s| s["ready"] == true)
    });
    std::thread::sleep(Duration::from_millis(500));
    let _ = monitor.kill();
    let events = monitor.wait_with_output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&events.stdout),
        "",
        "route events during an agent restart"
    );
    assert_eq!(c.routes(0), expected);
    let pinged = pinger.wait_with_output().unwrap();
    let pinged = String::from_utf8_lossy(&pinged.stdout);
    assert!(
        pinged.contains(" 0% packet loss"),
        "pod traffic during the restart: {pinged}"
    );
    assert_eq!(policy_table(), policy_before);

    // Deleting a pod removes its route; deleting a node removes everything that was its.
    let (pod0, _) = &pods[0];
    c.del_pod(0, pod0, "pod0");
    c.wait_until("pod0's route gone", || {
        !c.routes(0)
            .iter()
            .any(|r| r.starts_with(&format!("{} ", pods[0].1)))
    });
    c.stop_agent(2);
    assert!(c.ctl(&["delete", "node", "node2"]).status.success());
    c.wait_until(
        "node2's routes, neighbour and FDB entry gone from node0",
        || {
            let routes = c.routes(0);
            let fdb = c.nodes[0]
                .ns
                .json("bridge", &["fdb", "show", "dev", "vxlan.margay"]);
            !routes.iter().any(|r| r.contains(&tunnel[2]))
                && !fdb.to_string().contains(&c.nodes[2].ip)
        },
    );
    // What remains still works: node0 reaches pod1 on node1 through the tunnel.
    assert!(
        ping(&c.nodes[0].ns, &pods[1].1),
        "node0 cannot reach pod1 any more"
    );
}

/// Pods `web` (app=web), `client` (role=client) and `other` in namespace default, and a
/// Kubernetes policy letting only clients into web.
const WEB_POLICY: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: default, labels: {app: web}}
spec: {nodeName: node1, containers: [{name: c}]}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: default, labels: {role: client}}
spec: {nodeName: node0, containers: [{name: c}]}
---
apiVersion: v1
kind: Pod
metadata: {name: other, namespace: default}
spec: {nodeName: node0, containers: [{name: c}]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: clients-only, namespace: default}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress: [{from: [{podSelector: {matchLabels: {role: client}}}]}]
"#;

#[test]
fn policy_is_enforced_from_a_pods_first_packet_and_errors_keep_it() {
    if !is_root() {
        eprintln!("skipped: this test needs root (network namespaces)");
        return;
    }
    let mut c = Cluster::new(2, VXLAN_POOL, Backend::Sqlite, "30s");
    c.wait_until("both agents ready with one VXLAN peer", || {
        (0..2).all(|i| {
            c.status(i)
                .is_some_and(|s| s["ready"] == true && s["vxlanPeers"] == 1)
        })
    });
    c.ctl_apply(WEB_POLICY);
    let (client, _) = c.add_pod(0, "client");
    let (other, _) = c.add_pod(0, "other");
    // A first pod on node1 gives it its block; once node0 routes to it, routing is settled.
    let (_early, early_ip) = c.add_pod(1, "early");
    c.wait_until("node0's pods reach node1's block", || {
        ping(&other, &early_ip)
    });

    // ADD with policy_setup_timeout_seconds returns once the agent has programmed the pod:
    // its policy holds from the first packet.
    let (_web, web_ip) = c.add_pod(1, "web");
    assert!(ping(&client, &web_ip), "the client cannot reach web");
    assert!(
        !ping(&other, &web_ip),
        "other reaches web despite the policy"
    );
    let status = c.status(1).unwrap();
    assert_eq!(status["policy"]["endpoints"], 2, "{status}");
    assert_eq!(status["policy"]["policies"], 1, "{status}");
    let text = c.nodes[1].ns.exec(&[BIN, "node", "status"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("Policy            1 policies, 2 profiles, 2 endpoints, 1 sets, 3 rules\n"),
        "{text}"
    );

    // A policy in a tier that does not exist is reported and left out; the rest stays
    // enforced, and the agent stays ready.
    c.ctl_apply(
        "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\n\
         metadata: {name: missing.allow-all}\n\
         spec: {tier: missing, selector: all(), types: [Ingress], ingress: [{action: Allow}]}\n",
    );
    c.wait_until("node1 reporting the policy error", || {
        c.status(1).is_some_and(|s| {
            s["policyErrors"].as_array().is_some_and(|errors| {
                errors.iter().any(|e| {
                    e.as_str().is_some_and(|e| {
                        e.starts_with("GlobalNetworkPolicy missing.allow-all: tier \"missing\"")
                    })
                })
            })
        })
    });
    let status = c.status(1).unwrap();
    assert_eq!(status["ready"], true, "{status}");
    assert_eq!(status["policy"]["policies"], 1, "{status}");
    assert!(!ping(&other, &web_ip), "the bad policy let other in");
    assert!(ping(&client, &web_ip), "the bad policy cut the client off");
    let metrics = c.http_get(1, "http://127.0.0.1:9091/metrics").unwrap();
    assert!(
        metrics.contains("margay_agent_policy_errors 1\n"),
        "{metrics}"
    );

    // Without an agent, nothing programs the new pod: ADD fails after the timeout and
    // leaves nothing behind.
    c.stop_agent(1);
    let late = Netns::new("p");
    let started = Instant::now();
    let out = c.cni(1, "ADD", &c.cni_conf(1, 2), &late, "late");
    let took = started.elapsed();
    let reply: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        !out.status.success(),
        "ADD succeeded without an agent: {reply}"
    );
    assert_eq!(reply["code"], 11, "{reply}");
    assert!(
        reply["msg"]
            .as_str()
            .unwrap()
            .contains("was not programmed within 2s (policy_setup_timeout_seconds): is the agent running on node node1?"),
        "{reply}"
    );
    assert!(took >= Duration::from_secs(2), "gave up after {took:?}");
    let weps = c.ctl(&["get", "wep", "-A", "-o", "json"]);
    let weps = String::from_utf8_lossy(&weps.stdout);
    assert!(!weps.contains("\"late\""), "{weps}");
    let handles = c.ctl(&["get", "ipamhandles", "-o", "name"]);
    let handles = String::from_utf8_lossy(&handles.stdout);
    let cid = format!("c{}", late.name.replace('x', ""));
    assert!(!handles.contains(&cid), "{handles}");
    let links = c.nodes[1].ns.json("ip", &["link", "show"]);
    let veths = links
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["ifname"].as_str().unwrap().starts_with("mgy"))
        .count();
    assert_eq!(veths, 2, "{links}");
    assert!(
        late.json("ip", &["link", "show"])
            .as_array()
            .unwrap()
            .iter()
            .all(|l| l["ifname"] != "eth0"),
        "eth0 left in the pod"
    );
}

#[test]
fn etcd_backed_nodes_ride_out_a_datastore_outage() {
    if !is_root() {
        eprintln!("skipped: this test needs root (network namespaces)");
        return;
    }
    let c = Cluster::new(2, VXLAN_POOL, Backend::Etcd, "1s");
    c.wait_until("both agents ready with one VXLAN peer", || {
        (0..2).all(|i| {
            c.status(i)
                .is_some_and(|s| s["ready"] == true && s["vxlanPeers"] == 1)
        })
    });
    let (a, ip_a) = c.add_pod(0, "pod-a");
    let (b, ip_b) = c.add_pod(1, "pod-b");
    c.wait_until("routes to each other's blocks", || {
        ping(&a, &ip_b) && ping(&b, &ip_a)
    });
    let routes = c.routes(0);

    // etcd stops answering (SIGSTOP): readiness goes false, what is programmed stays.
    let pid = c.etcd.as_ref().unwrap().pid().to_string();
    let signal = |sig: &str| {
        assert!(Command::new("kill")
            .args([sig, &pid])
            .status()
            .unwrap()
            .success())
    };
    signal("-STOP");
    c.wait_until("node0 not ready while etcd is frozen", || {
        c.http_get(0, "http://127.0.0.1:9099/readiness").is_none()
    });
    assert_eq!(c.routes(0), routes, "routes changed during the outage");
    assert!(ping(&a, &ip_b), "traffic stopped during the outage");
    signal("-CONT");
    c.wait_until("node0 ready again", || {
        c.http_get(0, "http://127.0.0.1:9099/readiness").is_some()
    });
    assert_eq!(c.routes(0), routes);
}

/// This kernel may lack the ipip module; then the IPIP path cannot run at all.
fn kernel_has_ipip() -> bool {
    let probe = Netns::new("i");
    probe
        .exec(&["ip", "link", "add", "mgyprobe", "type", "ipip"])
        .status
        .success()
}

#[test]
fn ipip_pool_carries_pod_traffic() {
    if !is_root() {
        eprintln!("skipped: this test needs root (network namespaces)");
        return;
    }
    if !kernel_has_ipip() {
        eprintln!("skipped: this kernel has no ipip module (`ip link add … type ipip` fails); IPIP is covered by the plan and netlink golden tests only");
        return;
    }
    let pool = VXLAN_POOL.replace("vxlanMode: Always", "ipipMode: Always");
    let c = Cluster::new(2, &pool, Backend::Sqlite, "30s");
    c.wait_until("both agents ready", || {
        (0..2).all(|i| c.status(i).is_some_and(|s| s["ready"] == true))
    });
    let (a, _) = c.add_pod(0, "pod-a");
    let (_b, ip_b) = c.add_pod(1, "pod-b");
    c.wait_until("pod-a reaches pod-b over IPIP", || ping(&a, &ip_b));
    assert!(c.routes(0).iter().any(|r| r.contains("dev tunl0 onlink")));
}

/// `iptables-save -c` and `ip6tables-save -c` of `ns`: every rule of Margay's (`mgy-` in it)
/// with its packet counter.
fn margay_rules(ns: &Netns) -> Vec<(String, u64)> {
    ["iptables-save", "ip6tables-save"]
        .iter()
        .flat_map(|tool| {
            let out = ns.exec(&[tool, "-c", "-t", "filter"]);
            assert!(out.status.success(), "{tool}: {out:?}");
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter(|l| l.starts_with('[') && l.contains("mgy-"))
                .map(|l| {
                    let (counters, rule) = l.split_once("] ").unwrap();
                    let packets = counters[1..].split(':').next().unwrap().parse().unwrap();
                    (format!("{tool}: {rule}"), packets)
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

fn nft_tables(ns: &Netns) -> String {
    String::from_utf8_lossy(&ns.exec(&["nft", "list", "tables"]).stdout).into_owned()
}

#[test]
fn a_dataplane_switched_while_the_agent_was_down_takes_over_at_start_without_loss() {
    if !is_root() {
        eprintln!("skipped: this test needs root (network namespaces)");
        return;
    }
    let mut c = Cluster::new(1, VXLAN_POOL, Backend::Sqlite, "30s");
    c.wait_until("the agent ready", || {
        c.status(0).is_some_and(|s| s["ready"] == true)
    });
    let (a, _) = c.add_pod(0, "pod-a");
    let (_b, ip_b) = c.add_pod(0, "pod-b");
    assert!(ping(&a, &ip_b), "pod-a cannot reach pod-b");
    assert_eq!(c.status(0).unwrap()["policy"]["dataplane"], "nftables");
    assert!(nft_tables(&c.nodes[0].ns).contains("table ip margay-policy"));
    assert!(margay_rules(&c.nodes[0].ns).is_empty());

    // Switched to iptables while the agent is down: its nftables tables keep enforcing until
    // the agent is back, programs iptables, and only then deletes them. Pings between the two
    // pods (through both, for a moment) lose nothing.
    c.stop_agent(0);
    c.ctl_apply(
        "apiVersion: projectcalico.org/v3\nkind: FelixConfiguration\n\
         metadata: {name: default}\nspec: {dataplane: iptables}\n",
    );
    let pinger = Command::new("ip")
        .args(["netns", "exec", &a.name])
        .args(["ping", "-c", "30", "-i", "0.1", "-W", "1", &ip_b])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    c.start_agent(0);
    c.wait_until("the agent on iptables", || {
        c.status(0).is_some_and(|s| {
            s["ready"] == true && s["policy"]["dataplane"] == "iptables" && s["errors"] == json!([])
        })
    });
    let pinged = pinger.wait_with_output().unwrap();
    let pinged = String::from_utf8_lossy(&pinged.stdout);
    assert!(
        pinged.contains(" 0% packet loss"),
        "pod traffic during the switch: {pinged}"
    );
    let node = &c.nodes[0].ns;
    let tables = nft_tables(node);
    assert!(!tables.contains("margay-policy"), "{tables}");
    assert!(
        tables.contains("table ip margay"),
        "the NAT table stays: {tables}"
    );
    let rules = margay_rules(node);
    assert!(
        rules
            .iter()
            .any(|(r, _)| r.starts_with("iptables-save: -A FORWARD ")
                && r.ends_with("-j mgy-FORWARD")),
        "{rules:#?}"
    );
    assert!(
        rules.iter().any(|(r, _)| r.contains("-A mgy-fw-mgy")),
        "{rules:#?}"
    );
    assert!(ping(&a, &ip_b), "pod-a cannot reach pod-b on iptables");
    let metrics = c.http_get(0, "http://127.0.0.1:9091/metrics").unwrap();
    assert!(
        metrics.contains("margay_agent_policy_dataplane{dataplane=\"iptables\"} 1\n"),
        "{metrics}"
    );
    let text = node.exec(&[BIN, "node", "status"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("Dataplane         iptables\n"), "{text}");

    // A restart on iptables rewrites no chain: every rule keeps its counters.
    let before = margay_rules(node);
    assert!(
        before.iter().any(|(_, packets)| *packets > 0),
        "{before:#?}"
    );
    c.stop_agent(0);
    c.start_agent(0);
    c.wait_until("the agent ready again on iptables", || {
        c.status(0)
            .is_some_and(|s| s["ready"] == true && s["policy"]["dataplane"] == "iptables")
    });
    let after = margay_rules(&c.nodes[0].ns);
    assert_eq!(
        after.iter().map(|(r, _)| r).collect::<Vec<_>>(),
        before.iter().map(|(r, _)| r).collect::<Vec<_>>()
    );
    for ((rule, was), (_, now)) in before.iter().zip(&after) {
        assert!(now >= was, "{rule}: counter {was} went to {now}: rewritten");
    }
    assert_eq!(c.status(0).unwrap()["policy"]["lastChange"], "unchanged");
}
