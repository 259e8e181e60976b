//! The CNI plugin driven exactly as a runtime drives it: `CNI_*` variables, the config on
//! stdin, the result or error on stdout. Each test builds its own closed world: a "node"
//! network namespace (the plugin runs inside it, so host routes, veths and sysctls land there
//! and never on the real host) and pod namespaces, all removed on drop.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::{json, Value};

#[path = "support/host.rs"]
mod host;
#[path = "support/uplink.rs"]
mod uplink;

use host::{is_root, ok as sh_ok, run as sh, unique, Netns};

const BIN: &str = env!("CARGO_BIN_EXE_margay");
const REFERENCE_PLUGINS: &str = "/usr/lib/cni";
const VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// Root tests return early, loudly, when not root (CI runs them as root).
macro_rules! require_root {
    () => {
        if !is_root() {
            eprintln!("skipped: this test needs root (network namespaces)");
            return;
        }
    };
}

/// What a plugin run printed.
struct Reply {
    code: Option<i32>,
    json: Value,
    stderr: String,
}

impl Reply {
    fn ok(self) -> Value {
        assert_eq!(
            self.code,
            Some(0),
            "plugin failed: {} {}",
            self.json,
            self.stderr
        );
        self.json
    }

    fn err(self, code: u64) -> String {
        assert_ne!(self.code, Some(0), "expected failure, got {}", self.json);
        assert_eq!(self.json["code"], code, "{} {}", self.json, self.stderr);
        self.json["msg"].as_str().unwrap_or_default().to_owned()
    }
}

/// One node: its namespace, datastore, state dir and plugin directory.
struct Node {
    ns: Netns,
    dir: tempfile::TempDir,
    name: String,
}

impl Node {
    /// A node whose datastore holds `pool` (CIDR, block size).
    fn new(pool: Option<(&str, u8)>) -> Node {
        let ns = Netns::new("n");
        uplink::add_dead_end_uplink(&ns.name);
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        std::os::unix::fs::symlink(BIN, bin.join("margay")).unwrap();
        std::os::unix::fs::symlink(BIN, bin.join("margay-ipam")).unwrap();
        for p in ["ptp", "host-local", "bandwidth", "portmap"] {
            std::os::unix::fs::symlink(Path::new(REFERENCE_PLUGINS).join(p), bin.join(p)).unwrap();
        }
        let node = Node {
            ns,
            dir,
            name: "node-a".to_owned(),
        };
        if let Some((cidr, block)) = pool {
            node.apply(&format!(
                "apiVersion: margay.dev/v1\nkind: IPPool\nmetadata: {{name: pool}}\nspec: {{cidr: {cidr}, blockSize: {block}}}\n"
            ));
        }
        node
    }

    fn datastore(&self) -> String {
        format!("sqlite://{}", self.dir.path().join("m.db").display())
    }

    fn bin_dir(&self) -> PathBuf {
        self.dir.path().join("bin")
    }

    fn ctl(&self, args: &[&str]) -> Output {
        sh(Command::new(BIN)
            .env_remove("CNI_COMMAND")
            .arg("--datastore")
            .arg(self.datastore())
            .args(args))
    }

    fn ctl_ok(&self, args: &[&str]) -> String {
        let out = self.ctl(args);
        assert!(
            out.status.success(),
            "margay {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn apply(&self, yaml: &str) {
        let path = self.dir.path().join(format!("{}.yaml", unique("a")));
        std::fs::write(&path, yaml).unwrap();
        self.ctl_ok(&["apply", "-f", path.to_str().unwrap()]);
    }

    /// The `margay` plugin's config at `version`.
    fn conf(&self, version: &str) -> Value {
        json!({
            "cniVersion": version,
            "name": "k8s-pod-network",
            "type": "margay",
            "nodename": self.name,
            "datastore": self.datastore(),
            "state_dir": self.dir.path().join("state"),
            "mtu": 1400,
            "ipam": {"type": "margay-ipam"},
        })
    }

    /// Runs plugin `plugin` inside the node namespace, as a runtime would.
    fn run(&self, plugin: &str, command: &str, conf: &Value, pod: &Pod) -> Reply {
        self.run_env(plugin, command, conf, &pod.env())
    }

    fn run_env(
        &self,
        plugin: &str,
        command: &str,
        conf: &Value,
        env: &[(String, String)],
    ) -> Reply {
        self.run_raw(plugin, command, &conf.to_string(), env)
    }

    fn run_raw(&self, plugin: &str, command: &str, stdin: &str, env: &[(String, String)]) -> Reply {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns.name])
            .arg(self.bin_dir().join(plugin))
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("CNI_COMMAND", command)
            .env("CNI_PATH", self.bin_dir())
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        Reply {
            code: out.status.code(),
            json: if text.trim().is_empty() {
                Value::Null
            } else {
                serde_json::from_str(&text).unwrap_or_else(|e| panic!("stdout {text:?}: {e}"))
            },
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Workload endpoints in the datastore, as JSON items.
    fn endpoints(&self) -> Vec<Value> {
        let out: Value =
            serde_json::from_str(&self.ctl_ok(&["get", "wep", "-A", "-o", "json"])).unwrap();
        out["items"].as_array().cloned().unwrap_or_default()
    }

    /// Addresses allocated in the datastore.
    fn allocated(&self) -> BTreeSet<IpAddr> {
        let out: Value =
            serde_json::from_str(&self.ctl_ok(&["get", "ipamblocks", "-o", "json"])).unwrap();
        let mut ips = BTreeSet::new();
        for b in out["items"].as_array().into_iter().flatten() {
            let cidr: ipnet::IpNet = b["spec"]["cidr"].as_str().unwrap().parse().unwrap();
            for (ordinal, a) in b["spec"]["allocations"]
                .as_array()
                .unwrap()
                .iter()
                .enumerate()
            {
                if !a.is_null() {
                    ips.insert(nth(cidr, ordinal));
                }
            }
        }
        ips
    }

    /// Pod veths on the node.
    fn links(&self) -> Vec<String> {
        self.ns
            .ip_json(&["link", "show"])
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["ifname"].as_str().unwrap().to_owned())
            .filter(|name| name.starts_with("mgy"))
            .collect()
    }
}

fn nth(cidr: ipnet::IpNet, n: usize) -> IpAddr {
    match cidr.network() {
        IpAddr::V4(a) => IpAddr::V4((u32::from(a) + n as u32).into()),
        IpAddr::V6(a) => IpAddr::V6((u128::from(a) + n as u128).into()),
    }
}

/// A pod sandbox: its namespace and identity.
struct Pod {
    ns: Netns,
    namespace: String,
    name: String,
    container_id: String,
}

impl Pod {
    fn new(namespace: &str) -> Pod {
        let ns = Netns::new("p");
        let name = unique("pod");
        Pod {
            container_id: format!("cid{}", name.replace('-', "")),
            ns,
            namespace: namespace.to_owned(),
            name,
        }
    }

    fn env(&self) -> Vec<(String, String)> {
        vec![
            ("CNI_CONTAINERID".into(), self.container_id.clone()),
            ("CNI_NETNS".into(), self.ns.path().display().to_string()),
            ("CNI_IFNAME".into(), "eth0".into()),
            (
                "CNI_ARGS".into(),
                format!(
                    "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={}",
                    self.namespace, self.name, self.container_id
                ),
            ),
        ]
    }

    fn address(&self) -> Option<ipnet::IpNet> {
        let addrs = self.ns.ip_json(&["addr", "show", "dev", "eth0"]);
        addrs[0]["addr_info"]
            .as_array()?
            .iter()
            .find(|a| a["family"] == "inet")
            .map(|a| {
                format!("{}/{}", a["local"].as_str().unwrap(), a["prefixlen"])
                    .parse()
                    .unwrap()
            })
    }

    /// The host-side veth name Calico would give this pod (mgy + sha1("<ns>.<pod>")[:11]).
    fn host_veth(&self) -> String {
        let out = sh_ok(Command::new("sh").arg("-c").arg(format!(
            "printf '%s' '{}.{}' | sha1sum",
            self.namespace, self.name
        )));
        format!("mgy{}", &out[..11])
    }
}

fn first_ip(result: &Value) -> IpAddr {
    let addr: ipnet::IpNet = result["ips"][0]["address"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    addr.addr()
}

#[test]
fn version_reports_every_supported_version() {
    let node_dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(BIN)
        .env("CNI_COMMAND", "VERSION")
        .current_dir(node_dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(br#"{"cniVersion":"1.1.0"}"#)
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["cniVersion"], "1.1.0");
    assert_eq!(v["supportedVersions"], json!(VERSIONS));
}

#[test]
fn add_check_del_in_every_version() {
    require_root!();
    let node = Node::new(Some(("10.60.0.0/24", 28)));
    for version in VERSIONS {
        let pod = Pod::new("shop");
        let conf = node.conf(version);
        let result = node.run("margay", "ADD", &conf, &pod).ok();
        assert_eq!(result["cniVersion"], version);
        assert_eq!(
            result["ips"][0].get("version").is_some(),
            version < "1.0.0",
            "{version}: {result}"
        );
        let ip = first_ip(&result);
        assert_eq!(result["ips"][0]["address"], format!("{ip}/32"));
        assert_eq!(
            result["interfaces"][1]["sandbox"],
            pod.ns.path().display().to_string()
        );

        // In the pod: the /32, the link route to 169.254.1.1, the default route through it.
        assert_eq!(pod.address(), Some(format!("{ip}/32").parse().unwrap()));
        let link = &pod.ns.ip_json(&["link", "show", "eth0"])[0];
        assert_eq!(link["mtu"], 1400);
        assert!(link["flags"].as_array().unwrap().contains(&json!("UP")));
        let routes = pod.ns.ip_json(&["route", "show"]);
        let routes = routes.as_array().unwrap();
        assert!(
            routes
                .iter()
                .any(|r| r["dst"] == "169.254.1.1" && r["scope"] == "link" && r["dev"] == "eth0"),
            "{routes:?}"
        );
        assert!(
            routes
                .iter()
                .any(|r| r["dst"] == "default" && r["gateway"] == "169.254.1.1"),
            "{routes:?}"
        );

        // On the node: the veth with ee:ee:ee:ee:ee:ee, proxy ARP, forwarding, the /32 route.
        let veth = pod.host_veth();
        assert_eq!(result["interfaces"][0]["name"], veth.as_str());
        let host_link = &node.ns.ip_json(&["link", "show", &veth])[0];
        assert_eq!(host_link["address"], "ee:ee:ee:ee:ee:ee");
        assert_eq!(host_link["mtu"], 1400);
        for (key, want) in [
            (format!("net/ipv4/conf/{veth}/proxy_arp"), "1"),
            (format!("net/ipv4/neigh/{veth}/proxy_delay"), "0"),
            (format!("net/ipv4/conf/{veth}/forwarding"), "1"),
        ] {
            assert_eq!(node.ns.sysctl(&key), want, "{key}");
        }
        let host_routes = node.ns.ip_json(&["route", "show", "dev", &veth]);
        assert!(
            host_routes
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r["dst"] == ip.to_string() && r["scope"] == "link"),
            "{host_routes}"
        );

        // The endpoint, Calico-shaped.
        let weps = node.endpoints();
        let wep = weps
            .iter()
            .find(|w| w["spec"]["pod"] == pod.name.as_str())
            .unwrap_or_else(|| panic!("no endpoint for {}: {weps:?}", pod.name));
        assert_eq!(wep["metadata"]["namespace"], "shop");
        assert_eq!(wep["spec"]["containerID"], pod.container_id.as_str());
        assert_eq!(wep["spec"]["interfaceName"], veth.as_str());
        assert_eq!(wep["spec"]["ipNetworks"], json!([format!("{ip}/32")]));
        assert_eq!(
            wep["spec"]["profiles"],
            json!(["kns.shop", "ksa.shop.default"])
        );
        assert_eq!(wep["spec"]["node"], "node-a");

        // CHECK with the ADD result, where the version has it.
        let mut check_conf = conf.clone();
        check_conf["prevResult"] = result.clone();
        let check = node.run("margay", "CHECK", &check_conf, &pod);
        if version < "0.4.0" {
            check.err(1);
        } else {
            assert_eq!(check.ok(), Value::Null);
        }

        // DEL, twice.
        for _ in 0..2 {
            assert_eq!(node.run("margay", "DEL", &conf, &pod).ok(), Value::Null);
        }
        assert!(!node.links().contains(&veth));
        assert!(pod.ns.ip_json(&["link", "show"]).as_array().unwrap().len() == 1);
        assert!(!node.allocated().contains(&ip));
        assert!(node
            .endpoints()
            .iter()
            .all(|w| w["spec"]["pod"] != pod.name.as_str()));
    }
}

#[test]
fn pods_reach_each_other_through_proxy_arp() {
    require_root!();
    let node = Node::new(Some(("10.61.0.0/24", 26)));
    let mut conf = node.conf("1.0.0");
    let log = node.dir.path().join("log/cni.log");
    conf["log_file_path"] = json!(log);
    conf["log_level"] = json!("Debug");
    let (a, b) = (Pod::new("default"), Pod::new("default"));
    // Pod a exists in the datastore (as the agent would mirror it from Kubernetes).
    node.apply(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {}, namespace: default, labels: {{app: web}}}}\nspec:\n  serviceAccountName: front\n  containers:\n  - name: c\n    ports: [{{name: http, containerPort: 8080}}]\n",
        a.name
    ));
    let mut forwarding = conf.clone();
    forwarding["container_settings"] = json!({"allow_ip_forwarding": true});
    // A new namespace inherits the host's ip_forward; start pod a from 0 to see the change.
    a.ns.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=0"]);
    let ip_a = first_ip(&node.run("margay", "ADD", &forwarding, &a).ok());
    let ip_b = first_ip(&node.run("margay", "ADD", &conf, &b).ok());
    assert_eq!(a.ns.sysctl("net/ipv4/ip_forward"), "1");
    let weps = node.endpoints();
    let wep = weps
        .iter()
        .find(|w| w["spec"]["pod"] == a.name.as_str())
        .unwrap();
    assert_eq!(wep["metadata"]["labels"]["app"], "web");
    assert_eq!(
        wep["metadata"]["labels"]["projectcalico.org/namespace"],
        "default"
    );
    assert_eq!(
        wep["spec"]["profiles"],
        json!(["kns.default", "ksa.default.front"])
    );
    assert_eq!(wep["spec"]["ports"][0]["name"], "http");
    assert_eq!(wep["spec"]["ports"][0]["port"], 8080);
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.contains(&a.container_id), "log file: {logged}");
    assert_ne!(ip_a, ip_b);
    let ping =
        a.ns.exec(&["ping", "-c", "1", "-W", "2", &ip_b.to_string()]);
    assert!(
        ping.status.success(),
        "{}",
        String::from_utf8_lossy(&ping.stdout)
    );
    // The gateway was resolved by proxy ARP to the host veth's fixed MAC.
    let neigh = a.ns.ip_json(&["neigh", "show", "dev", "eth0"]);
    assert!(
        neigh
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["dst"] == "169.254.1.1" && n["lladdr"] == "ee:ee:ee:ee:ee:ee"),
        "{neigh}"
    );
    for p in [&a, &b] {
        node.run("margay", "DEL", &conf, p).ok();
    }
    assert!(node.allocated().is_empty());
}

#[test]
fn dual_stack_pods_get_a_128_and_the_link_local_gateway() {
    require_root!();
    let node = Node::new(Some(("10.62.0.0/24", 26)));
    node.apply(
        "apiVersion: margay.dev/v1\nkind: IPPool\nmetadata: {name: pool6}\nspec: {cidr: 'fd00:62::/120', blockSize: 124}\n",
    );
    node.ns
        .exec(&["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"]);
    let mut conf = node.conf("1.1.0");
    conf["ipam"]["assign_ipv6"] = json!("true");
    let (a, b) = (Pod::new("default"), Pod::new("default"));
    let ra = node.run("margay", "ADD", &conf, &a).ok();
    let rb = node.run("margay", "ADD", &conf, &b).ok();
    let v6 = |r: &Value| -> String {
        r["ips"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["address"].as_str().unwrap().to_owned())
            .find(|a| a.contains(':'))
            .unwrap()
    };
    assert!(v6(&ra).ends_with("/128"), "{ra}");
    let routes = a.ns.ip_json(&["-6", "route", "show", "default"]);
    assert_eq!(
        routes[0]["gateway"], "fe80::ecee:eeff:feee:eeee",
        "{routes}"
    );
    let target = v6(&rb).trim_end_matches("/128").to_owned();
    let ping = a.ns.exec(&["ping", "-6", "-c", "1", "-W", "3", &target]);
    assert!(
        ping.status.success(),
        "{}",
        String::from_utf8_lossy(&ping.stdout)
    );
    let mut check = conf.clone();
    check["prevResult"] = ra;
    node.run("margay", "CHECK", &check, &a).ok();
    for p in [&a, &b] {
        node.run("margay", "DEL", &conf, p).ok();
    }
    assert!(node.allocated().is_empty());
}

#[test]
fn del_is_idempotent() {
    require_root!();
    let node = Node::new(Some(("10.63.0.0/24", 26)));
    let conf = node.conf("1.1.0");
    // Without a prior ADD.
    let never = Pod::new("default");
    node.run("margay", "DEL", &conf, &never).ok();
    // With the netns already gone, and without CNI_NETNS.
    let gone = Pod::new("default");
    node.run("margay", "ADD", &conf, &gone).ok();
    let full_env = gone.env();
    let env: Vec<_> = full_env
        .iter()
        .filter(|(k, _)| k != "CNI_NETNS")
        .cloned()
        .collect();
    drop(gone.ns);
    node.run_env("margay", "DEL", &conf, &full_env).ok();
    node.run_env("margay", "DEL", &conf, &env).ok();
    // With the endpoint already removed by someone else.
    let pod = Pod::new("default");
    node.run("margay", "ADD", &conf, &pod).ok();
    let wep = node.endpoints()[0]["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_owned();
    node.ctl_ok(&["delete", "wep", &wep, "-n", "default"]);
    node.run("margay", "DEL", &conf, &pod).ok();
    node.run("margay", "DEL", &conf, &pod).ok();
    assert!(node.allocated().is_empty());
    assert!(node.endpoints().is_empty());
    assert!(node.links().is_empty(), "{:?}", node.links());
}

#[test]
fn bad_input_gets_the_spec_error_code_and_changes_nothing() {
    require_root!();
    let node = Node::new(Some(("10.64.0.0/24", 26)));
    let pod = Pod::new("default");
    let conf = node.conf("1.0.0");
    node.run_raw("margay", "ADD", "{not json", &pod.env())
        .err(6);
    let mut old = conf.clone();
    old["cniVersion"] = json!("0.2.0");
    assert!(node
        .run("margay", "ADD", &old, &pod)
        .err(1)
        .contains("0.2.0"));
    let mut bad_mtu = conf.clone();
    bad_mtu["mtu"] = json!(20);
    assert!(node
        .run("margay", "ADD", &bad_mtu, &pod)
        .err(7)
        .contains("mtu"));
    let mut wrong_type = conf.clone();
    wrong_type["mtu"] = json!("big");
    node.run("margay", "ADD", &wrong_type, &pod).err(6);
    let no_ifname: Vec<_> = pod
        .env()
        .into_iter()
        .filter(|(k, _)| k != "CNI_IFNAME")
        .collect();
    assert!(node
        .run_env("margay", "ADD", &conf, &no_ifname)
        .err(4)
        .contains("CNI_IFNAME"));
    let mut unknown_args = pod.env();
    unknown_args[3].1 = format!("K8S_POD_NAMESPACE=default;K8S_POD_NAME={};FOO=1", pod.name);
    node.run_env("margay", "ADD", &conf, &unknown_args).err(4);
    // Netns that does not exist: "unknown container", nothing allocated.
    let mut missing = pod.env();
    missing[1].1 = "/var/run/netns/margay-no-such-ns".into();
    node.run_env("margay", "ADD", &conf, &missing).err(3);
    // An unreachable datastore: try again later.
    let mut unreachable = conf.clone();
    unreachable["datastore"] = json!("etcd://127.0.0.1:9");
    node.run("margay", "ADD", &unreachable, &pod).err(11);
    assert!(node.allocated().is_empty());
    assert!(node.endpoints().is_empty());
    assert!(node.links().is_empty(), "{:?}", node.links());
    assert_eq!(
        pod.ns.ip_json(&["link", "show"]).as_array().unwrap().len(),
        1
    );
}

#[test]
fn failure_after_partial_setup_is_undone() {
    require_root!();
    let node = Node::new(Some(("10.65.0.0/30", 30)));
    let conf = node.conf("1.0.0");

    // The pod already has an eth0: the veth cannot be made; the address goes back.
    let clash = Pod::new("default");
    clash.ns.ip(&[
        "link", "add", "eth0", "type", "veth", "peer", "name", "other",
    ]);
    let msg = node.run("margay", "ADD", &conf, &clash).err(101);
    assert!(msg.contains("veth"), "{msg}");
    assert!(node.allocated().is_empty());
    assert!(!node.links().contains(&clash.host_veth()));

    // A pod name the endpoint cannot carry: wired, then undone when the endpoint is refused.
    let mut bad = Pod::new("default");
    bad.name = format!("Bad_{}", bad.name);
    let msg = node.run("margay", "ADD", &conf, &bad).err(4);
    assert!(msg.contains("workload endpoint"), "{msg}");
    assert!(node.allocated().is_empty());
    assert!(node.links().is_empty(), "{:?}", node.links());
    assert_eq!(
        bad.ns.ip_json(&["link", "show"]).as_array().unwrap().len(),
        1
    );

    // Pool exhausted (a /30 holds 4): the fifth pod fails cleanly, the others are intact.
    let pods: Vec<Pod> = (0..5).map(|_| Pod::new("default")).collect();
    for p in &pods[..4] {
        node.run("margay", "ADD", &conf, p).ok();
    }
    let msg = node.run("margay", "ADD", &conf, &pods[4]).err(100);
    assert!(
        msg.contains("exhausted") || msg.contains("no free"),
        "{msg}"
    );
    assert_eq!(node.allocated().len(), 4);
    assert_eq!(node.endpoints().len(), 4);
    assert!(!node.links().contains(&pods[4].host_veth()));
    for p in &pods[..4] {
        node.run("margay", "DEL", &conf, p).ok();
    }
    assert!(node.allocated().is_empty());
}

#[test]
fn check_names_what_was_tampered_with() {
    require_root!();
    let node = Node::new(Some(("10.66.0.0/24", 26)));
    let conf = node.conf("1.1.0");
    let pod = Pod::new("default");
    let result = node.run("margay", "ADD", &conf, &pod).ok();
    let ip = first_ip(&result);
    let veth = pod.host_veth();
    let mut check = conf.clone();
    check["prevResult"] = result;
    node.run("margay", "CHECK", &check, &pod).ok();

    let tamper_and_check = |break_it: &dyn Fn(), repair: &dyn Fn(), expect: &str| {
        break_it();
        let msg = node.run("margay", "CHECK", &check, &pod).err(102);
        assert!(msg.contains(expect), "expected {expect:?} in {msg:?}");
        repair();
        node.run("margay", "CHECK", &check, &pod).ok();
    };
    tamper_and_check(
        &|| {
            pod.ns.ip(&["route", "del", "default"]);
        },
        &|| {
            pod.ns.ip(&[
                "route",
                "add",
                "default",
                "via",
                "169.254.1.1",
                "dev",
                "eth0",
            ]);
        },
        "0.0.0.0/0",
    );
    tamper_and_check(
        &|| {
            node.ns.ip(&["route", "del", &ip.to_string()]);
        },
        &|| {
            node.ns.ip(&[
                "route",
                "add",
                &ip.to_string(),
                "dev",
                &veth,
                "scope",
                "link",
            ]);
        },
        "host has no route",
    );
    tamper_and_check(
        &|| {
            node.ns.exec(&[
                "sysctl",
                "-qw",
                &format!("net.ipv4.conf.{veth}.proxy_arp=0"),
            ]);
        },
        &|| {
            node.ns.exec(&[
                "sysctl",
                "-qw",
                &format!("net.ipv4.conf.{veth}.proxy_arp=1"),
            ]);
        },
        "proxy_arp",
    );
    tamper_and_check(
        &|| {
            pod.ns
                .ip(&["addr", "del", &format!("{ip}/32"), "dev", "eth0"]);
        },
        // Removing the last address also flushed the routes through eth0.
        &|| {
            pod.ns
                .ip(&["addr", "add", &format!("{ip}/32"), "dev", "eth0"]);
            pod.ns.ip(&[
                "route",
                "add",
                "169.254.1.1",
                "dev",
                "eth0",
                "scope",
                "link",
            ]);
            pod.ns.ip(&[
                "route",
                "add",
                "default",
                "via",
                "169.254.1.1",
                "dev",
                "eth0",
            ]);
        },
        "lacks address",
    );
    let wep = node.endpoints()[0].clone();
    let wep_name = wep["metadata"]["name"].as_str().unwrap().to_owned();
    node.ctl_ok(&["delete", "wep", &wep_name, "-n", "default"]);
    let msg = node.run("margay", "CHECK", &check, &pod).err(102);
    assert!(msg.contains("does not exist"), "{msg}");
    node.ctl_ok(&["ipam", "release", "--ip", &ip.to_string()]);
    let msg = node.run("margay", "CHECK", &check, &pod).err(102);
    assert!(msg.contains("IPAM"), "{msg}");
    node.run("margay", "DEL", &conf, &pod).ok();
}

#[test]
fn status_and_gc() {
    require_root!();
    let node = Node::new(None);
    let conf = node.conf("1.1.0");
    let no_pod: [(String, String); 0] = [];
    let msg = node.run_env("margay", "STATUS", &conf, &no_pod).err(50);
    assert!(msg.contains("no enabled IP pool"), "{msg}");
    let mut unreachable = conf.clone();
    unreachable["datastore"] = json!("etcd://127.0.0.1:9");
    node.run_env("margay", "STATUS", &unreachable, &no_pod)
        .err(50);
    node.run_env("margay", "STATUS", &node.conf("1.0.0"), &no_pod)
        .err(1);
    node.apply(
        "apiVersion: margay.dev/v1\nkind: IPPool\nmetadata: {name: pool}\nspec: {cidr: 10.67.0.0/24, blockSize: 26}\n",
    );
    node.run_env("margay", "STATUS", &conf, &no_pod).ok();

    let pods: Vec<Pod> = (0..3).map(|_| Pod::new("default")).collect();
    for p in &pods {
        node.run("margay", "ADD", &conf, p).ok();
    }
    // An address held for a container whose ADD never finished (no endpoint).
    node.ctl_ok(&[
        "ipam",
        "assign",
        "--node",
        "node-a",
        "--handle",
        "k8s-pod-network.orphan",
    ]);
    assert_eq!(node.allocated().len(), 4);
    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] =
        json!([{"containerID": pods[0].container_id, "ifname": "eth0"}]);
    node.run_env("margay", "GC", &gc, &no_pod).ok();
    let weps = node.endpoints();
    assert_eq!(weps.len(), 1, "{weps:?}");
    assert_eq!(
        weps[0]["spec"]["containerID"],
        pods[0].container_id.as_str()
    );
    assert_eq!(node.allocated().len(), 1);
    node.run_env("margay", "GC", &node.conf("1.0.0"), &no_pod)
        .err(1);
    for p in &pods {
        node.run("margay", "DEL", &conf, p).ok();
    }
}

#[test]
fn parallel_adds_and_dels_on_one_node() {
    require_root!();
    let node = Node::new(Some(("10.68.0.0/24", 28)));
    let conf = node.conf("1.0.0");
    let pods: Vec<Pod> = (0..24).map(|_| Pod::new("default")).collect();
    let ips: Vec<IpAddr> = std::thread::scope(|s| {
        let handles: Vec<_> = pods
            .iter()
            .map(|p| s.spawn(|| first_ip(&node.run("margay", "ADD", &conf, p).ok())))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let distinct: BTreeSet<_> = ips.iter().collect();
    assert_eq!(distinct.len(), pods.len());
    assert_eq!(node.allocated().len(), pods.len());
    assert_eq!(node.endpoints().len(), pods.len());
    std::thread::scope(|s| {
        for p in &pods {
            s.spawn(|| node.run("margay", "DEL", &conf, p).ok());
        }
    });
    assert!(node.allocated().is_empty());
    assert!(node.endpoints().is_empty());
    assert!(node.links().is_empty(), "{:?}", node.links());
}

#[test]
fn delegates_to_host_local_ipam() {
    require_root!();
    let node = Node::new(None);
    let mut conf = node.conf("1.0.0");
    let data_dir = node.dir.path().join("host-local");
    conf["ipam"] = json!({
        "type": "host-local",
        "ranges": [[{"subnet": "10.69.0.0/24"}]],
        "dataDir": data_dir,
    });
    let pod = Pod::new("default");
    let result = node.run("margay", "ADD", &conf, &pod).ok();
    let ip = first_ip(&result);
    assert!(ip.to_string().starts_with("10.69.0."), "{result}");
    assert_eq!(pod.address(), Some(format!("{ip}/32").parse().unwrap()));
    let reservation = data_dir.join("k8s-pod-network").join(ip.to_string());
    assert!(reservation.exists());
    node.run("margay", "DEL", &conf, &pod).ok();
    assert!(!reservation.exists());
    // A delegate that is not on CNI_PATH: invalid config, nothing left behind.
    conf["ipam"] = json!({"type": "no-such-ipam"});
    let msg = node.run("margay", "ADD", &conf, &pod).err(7);
    assert!(msg.contains("no-such-ipam"), "{msg}");
    assert!(node.links().is_empty(), "{:?}", node.links());
}

#[test]
fn margay_ipam_serves_the_reference_ptp_plugin() {
    require_root!();
    let node = Node::new(Some(("10.70.0.0/24", 26)));
    let conf = json!({
        "cniVersion": "1.0.0",
        "name": "ptp-net",
        "type": "ptp",
        "ipam": {"type": "margay-ipam"},
        "nodename": "node-a",
        "datastore": node.datastore(),
        "state_dir": node.dir.path().join("state"),
    });
    let (a, b) = (Pod::new("default"), Pod::new("default"));
    let ra = node.run("ptp", "ADD", &conf, &a).ok();
    let rb = node.run("ptp", "ADD", &conf, &b).ok();
    let (ip_a, ip_b) = (first_ip(&ra), first_ip(&rb));
    assert!(ip_a.to_string().starts_with("10.70.0."), "{ra}");
    assert_eq!(node.allocated(), BTreeSet::from([ip_a, ip_b]));
    let ping =
        a.ns.exec(&["ping", "-c", "1", "-W", "2", &ip_b.to_string()]);
    assert!(
        ping.status.success(),
        "{}",
        String::from_utf8_lossy(&ping.stdout)
    );
    for p in [&a, &b] {
        node.run("ptp", "DEL", &conf, p).ok();
    }
    assert!(node.allocated().is_empty());
}

#[test]
fn installed_chain_with_bandwidth_and_portmap() {
    require_root!();
    let node = Node::new(Some(("10.71.0.0/24", 26)));
    let install_dir = node.dir.path().join("install");
    let out = node.ctl_ok(&[
        "install-cni",
        "--bin-dir",
        install_dir.join("bin").to_str().unwrap(),
        "--conf-dir",
        install_dir.join("net.d").to_str().unwrap(),
        "--mtu",
        "1400",
        "--nodename",
        "node-a",
        "--state-dir",
        node.dir.path().join("state").to_str().unwrap(),
    ]);
    assert!(out.contains("10-margay.conflist"), "{out}");
    assert!(install_dir.join("bin/margay-ipam").exists());
    let conflist: Value = serde_json::from_str(
        &std::fs::read_to_string(install_dir.join("net.d/10-margay.conflist")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        conflist["plugins"][0]["datastore"],
        node.datastore().as_str()
    );
    let pod = Pod::new("default");
    let runtime_config = json!({
        "portMappings": [{"hostPort": 18080, "containerPort": 80, "protocol": "tcp"}],
        "bandwidth": {"ingressRate": 1_000_000, "ingressBurst": 100_000},
    });
    // ADD through the chain, each plugin fed the previous result, as libcni does.
    // One plugin's config as libcni builds it from the conflist: name, version, runtime
    // config, and the previous result when there is one.
    let plugin_conf = |plugin: &Value, prev: &Value| -> (String, Value) {
        let mut conf = plugin.clone();
        conf["name"] = conflist["name"].clone();
        conf["cniVersion"] = conflist["cniVersion"].clone();
        conf["runtimeConfig"] = runtime_config.clone();
        if !prev.is_null() {
            conf["prevResult"] = prev.clone();
        }
        (conf["type"].as_str().unwrap().to_owned(), conf)
    };
    let mut prev = Value::Null;
    for plugin in conflist["plugins"].as_array().unwrap() {
        let (plugin_type, conf) = plugin_conf(plugin, &prev);
        prev = node.run(&plugin_type, "ADD", &conf, &pod).ok();
    }
    let ip = first_ip(&prev);
    let veth = pod.host_veth();
    let qdisc = node.ns.ip(&["link", "show", &veth]);
    assert!(qdisc.contains(&veth));
    let tc = sh_ok(Command::new("ip").args([
        "netns",
        "exec",
        &node.ns.name,
        "tc",
        "qdisc",
        "show",
        "dev",
        &veth,
    ]));
    assert!(tc.contains("tbf"), "bandwidth did not shape {veth}: {tc}");
    let nat = node.ns.exec(&["iptables-save", "-t", "nat"]);
    let nat = String::from_utf8_lossy(&nat.stdout);
    assert!(
        nat.contains("18080") && nat.contains(&ip.to_string()),
        "portmap rules missing: {nat}"
    );
    for plugin in conflist["plugins"].as_array().unwrap().iter().rev() {
        let (plugin_type, conf) = plugin_conf(plugin, &prev);
        node.run(&plugin_type, "DEL", &conf, &pod).ok();
    }
    let nat = node.ns.exec(&["iptables-save", "-t", "nat"]);
    assert!(!String::from_utf8_lossy(&nat.stdout).contains("18080"));
    assert!(node.allocated().is_empty());
    assert!(node.links().is_empty(), "{:?}", node.links());
}
