//! Margay's CNI plugin under a real containerd (`ctr run --cni`): each container gets an
//! address from the pool and a WorkloadEndpoint, containers reach each other, and removing
//! a container releases its address and endpoint.
//!
//! ctr runs inside a "node" network namespace, so the host side of every pod stays there.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

use ipnet::Ipv4Net;
use serde_json::Value;
use support::containerd::{CniDirs, Containerd};

const BIN: &str = env!("CARGO_BIN_EXE_margay");
const POOL: &str = "10.88.213.0/24";
const REFERENCE_PLUGINS: &str = "/usr/lib/cni";

/// A network namespace playing the node. Deleted on drop.
struct NodeNetns(String);

impl NodeNetns {
    fn new() -> NodeNetns {
        let name = format!("mgyctrd{}", std::process::id());
        let added = Command::new("ip").args(["netns", "add", &name]).status();
        assert!(added.is_ok_and(|s| s.success()), "ip netns add {name}");
        let node = NodeNetns(name);
        support::uplink::add_dead_end_uplink(&node.0);
        node
    }

    fn path(&self) -> PathBuf {
        PathBuf::from("/var/run/netns").join(&self.0)
    }
}

impl Drop for NodeNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn margay(datastore: &str, args: &[&str]) -> Output {
    let out = Command::new(BIN)
        .env_remove("CNI_COMMAND")
        .arg("--datastore")
        .arg(datastore)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "margay {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// What an operator does: a pool, then `margay install-cni`, plus the reference plugins the
/// conflist chains (bandwidth, portmap).
fn install(dir: &Path, datastore: &str, node: &NodeNetns) -> CniDirs {
    let dirs = CniDirs {
        conf_dir: dir.join("net.d"),
        bin_dir: dir.join("bin"),
        node_netns: Some(node.path()),
    };
    let pool = dir.join("pool.yaml");
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        &pool,
        format!("apiVersion: margay.dev/v1\nkind: IPPool\nmetadata: {{name: pool}}\nspec: {{cidr: {POOL}, blockSize: 26}}\n"),
    )
    .unwrap();
    margay(datastore, &["apply", "-f", pool.to_str().unwrap()]);
    margay(
        datastore,
        &[
            "install-cni",
            "--bin-dir",
            dirs.bin_dir.to_str().unwrap(),
            "--conf-dir",
            dirs.conf_dir.to_str().unwrap(),
            "--nodename",
            "ctrd-node",
            "--state-dir",
            dir.join("state").to_str().unwrap(),
        ],
    );
    for plugin in ["bandwidth", "portmap"] {
        std::os::unix::fs::symlink(
            Path::new(REFERENCE_PLUGINS).join(plugin),
            dirs.bin_dir.join(plugin),
        )
        .unwrap();
    }
    dirs
}

fn json(out: Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn containers_get_addresses_talk_and_release_them() {
    let unavailable = Containerd::unavailable().or_else(|| {
        let portmap = Path::new(REFERENCE_PLUGINS).join("portmap");
        (!portmap.exists()).then(|| {
            format!(
                "{} missing (containernetworking-plugins)",
                portmap.display()
            )
        })
    });
    if let Some(why) = unavailable {
        eprintln!("skipped: {why}");
        return;
    }
    let started = Instant::now();
    let ctrd = Containerd::start();
    let node = NodeNetns::new();
    let datastore = format!("sqlite://{}", ctrd.dir().join("margay.db").display());
    let cni = install(&ctrd.dir().join("cni"), &datastore, &node);
    let pool: Ipv4Net = POOL.parse().unwrap();

    let a = ctrd.run_container("a", &cni, &["sleep", "3600"]);
    let b = ctrd.run_container("b", &cni, &["sleep", "3600"]);
    let (ip_a, ip_b) = (a.ipv4(), b.ipv4());
    for (name, ip) in [("a", ip_a), ("b", ip_b)] {
        if !pool.contains(&ip.addr()) || ip.prefix_len() != 32 {
            ctrd.fail(format!("container {name} got {ip}, not a /32 from {pool}"));
        }
    }
    if ip_a.addr() == ip_b.addr() {
        ctrd.fail(format!("both containers got {ip_a}"));
    }
    let weps = json(margay(&datastore, &["get", "wep", "-A", "-o", "json"]));
    let endpoint_ips: Vec<&str> = weps["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|w| w["spec"]["ipNetworks"][0].as_str())
        .collect();
    for ip in [ip_a, ip_b] {
        if !endpoint_ips.contains(&format!("{}/32", ip.addr()).as_str()) {
            ctrd.fail(format!("no endpoint for {ip}: {weps}"));
        }
    }

    let ping = a.exec(&["ping", "-c", "1", "-W", "2", &ip_b.addr().to_string()]);
    if !ping.status.success() {
        ctrd.fail(format!(
            "a ({ip_a}) cannot ping b ({ip_b}): {}{}",
            String::from_utf8_lossy(&ping.stdout),
            String::from_utf8_lossy(&ping.stderr)
        ));
    }

    b.remove();
    let handles = json(margay(&datastore, &["get", "ipamhandles", "-o", "json"]));
    let weps = json(margay(&datastore, &["get", "wep", "-A", "-o", "json"]));
    let count = |v: &Value| v["items"].as_array().map_or(0, Vec::len);
    if count(&handles) != 1 || count(&weps) != 1 {
        ctrd.fail(format!(
            "after removing b ({}): handles {handles}, endpoints {weps}",
            ip_b.addr()
        ));
    }
    // a is left to the harness's Drop, which must DEL and clean it up too.
    eprintln!("containerd CNI test body took {:?}", started.elapsed());
}
