//! Endpoint-to-remote-route latency of the node agent (issue 5).
//!
//! `cargo bench -p margay --bench agent_latency` (root: network namespaces; `MARGAY_BIN`
//! overrides the agent binary, by default this profile's `margay`). Two nodes as in
//! `tests/agent.rs` (network namespaces joined by a bridge in a fabric namespace, a VXLAN
//! pool with `vxlanMode: Always`, `margay node run` in each against one SQLite datastore).
//! 100 times (after 5 warm-ups), at a random moment, this process writes a WorkloadEndpoint
//! of node1 whose address lies in no block of the pool (a borrowed address), so node0's agent
//! must add a /32 via node1's tunnel; the time from the write returning to the route's
//! RTM_NEWROUTE in node0 is read from a netlink route monitor in node0 (checked every
//! 0.2 ms, without waiting: the figure is within 0.25 ms).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ipnet::IpNet;
use margay_api::{EncapMode, IPAMBlock, IPPool, Node, ObjectMeta, WorkloadEndpoint};
use margay_api::{NodeBGPSpec, WorkloadEndpointSpec};
use margay_client::Client;
use margay_datastore::ConnectOptions;
use margay_sys::netlink::RouteMonitor;
use margay_sys::netns::NetNs;

#[path = "../tests/support/bench.rs"]
mod bench;
#[path = "../tests/support/host.rs"]
mod host;
#[path = "../tests/support/uplink.rs"]
mod uplink;

use bench::{bin, histogram, percentile, strip_ansi};
use host::{is_root, Netns};

const WARMUP: usize = 5;
const SAMPLES: usize = 100;
/// Waits between samples, spread so writes land at any phase of the watchers' polling.
const GAP_MS: (u64, u64) = (40, 140);
/// How often the monitor is checked.
const CHECK_EVERY: Duration = Duration::from_micros(200);

/// A running agent, killed on drop.
struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Two nodes and their fabric. Fields drop in order: agents, then node namespaces, then the
/// fabric, then the directory holding the datastore and logs.
struct Cluster {
    agents: Vec<Agent>,
    nodes: Vec<Netns>,
    fabric: Netns,
    dir: tempfile::TempDir,
    datastore: String,
}

impl Cluster {
    fn new(count: usize) -> Cluster {
        let fabric = Netns::new("f");
        fabric.ip(&["link", "add", "br0", "type", "bridge"]);
        fabric.ip(&["link", "set", "br0", "up"]);
        let dir = tempfile::tempdir().unwrap();
        let datastore = format!("sqlite://{}", dir.path().join("margay.db").display());
        let mut c = Cluster {
            agents: Vec::new(),
            nodes: Vec::new(),
            fabric,
            dir,
            datastore,
        };
        for i in 0..count {
            let ns = Netns::new(&format!("n{i}x"));
            // IPv4-only nodes, as in tests/agent.rs: no link-local routes come and go.
            for key in ["all", "default"] {
                let set = format!("net.ipv6.conf.{key}.disable_ipv6=1");
                assert!(ns.exec(&["sysctl", "-qw", &set]).status.success());
            }
            let port = format!("l{i}x{}", std::process::id() % 100_000);
            ns.ip(&["link", "add", "eth0", "type", "veth", "peer", "name", &port]);
            ns.ip(&["link", "set", &port, "netns", &c.fabric.name]);
            c.fabric.ip(&["link", "set", &port, "master", "br0"]);
            c.fabric.ip(&["link", "set", &port, "up"]);
            ns.ip(&["addr", "add", &format!("{}/24", node_ip(i)), "dev", "eth0"]);
            ns.ip(&["link", "set", "eth0", "up"]);
            uplink::add_dead_end_uplink(&ns.name);
            c.nodes.push(ns);
        }
        c
    }

    fn start_agent(&mut self, i: usize) {
        let log = std::fs::File::create(self.log_path(i)).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &self.nodes[i].name])
            .arg(bin())
            .args(["--datastore", &self.datastore])
            .args(["node", "run", "--name", &format!("node{i}")])
            .args(["--ip", &format!("{}/24", node_ip(i))])
            .arg("--state-dir")
            .arg(self.dir.path().join(format!("state{i}")))
            .args(["--health-addr", "127.0.0.1:9099"])
            .args(["--metrics-addr", "127.0.0.1:9091"])
            .args(["--resync-interval", "30s"])
            .env_remove("CNI_COMMAND")
            .env("MARGAY_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.agents.push(Agent(child));
    }

    fn log_path(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("agent{i}.log"))
    }

    fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.log_path(i)).unwrap_or_default()
    }

    /// The agent's /metrics, from inside the node.
    fn metrics(&self, i: usize) -> String {
        let out = self.nodes[i].exec(&[
            "busybox",
            "wget",
            "-q",
            "-O",
            "-",
            "http://127.0.0.1:9091/metrics",
        ]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn wait_until(&self, what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !done() {
            if Instant::now() > deadline {
                let logs: Vec<String> = (0..self.nodes.len()).map(|i| self.log(i)).collect();
                panic!("timed out waiting for {what}\n{}", logs.join("\n---\n"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn node_ip(i: usize) -> String {
    format!("192.168.78.{}", 11 + i)
}

/// `took=…` of the agent's "synced" lines that applied exactly one operation, in ms.
fn one_op_syncs(log: &str) -> Vec<f64> {
    strip_ansi(log)
        .lines()
        .filter(|l| l.contains("synced") && l.contains("ops=1 "))
        .filter_map(|l| {
            let took = l.split("took=").nth(1)?.split_whitespace().next()?;
            parse_duration_ms(took)
        })
        .collect()
}

/// Rust's `Debug` of a Duration: `1.234567ms`, `812.3µs`, `1.2s`.
fn parse_duration_ms(s: &str) -> Option<f64> {
    for (unit, scale) in [("ms", 1.0), ("µs", 1e-3), ("ns", 1e-6), ("s", 1e3)] {
        if let Some(n) = s.strip_suffix(unit) {
            return n.parse::<f64>().ok().map(|n| n * scale);
        }
    }
    None
}

fn stats(v: &[f64]) -> String {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let mean = s.iter().sum::<f64>() / s.len() as f64;
    format!(
        "p50 {:6.2}  p90 {:6.2}  p99 {:6.2}  max {:6.2}  min {:6.2}  mean {:6.2} ms (n={})",
        percentile(&s, 50.0),
        percentile(&s, 90.0),
        percentile(&s, 99.0),
        s[s.len() - 1],
        s[0],
        mean,
        s.len()
    )
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// xorshift64*, seeded from the clock: the gaps between samples.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

fn endpoint(i: usize, ip: Ipv4Addr) -> WorkloadEndpoint {
    WorkloadEndpoint {
        metadata: ObjectMeta::namespaced("default", format!("node1-k8s-lat{i}-eth0")),
        spec: WorkloadEndpointSpec {
            orchestrator: "k8s".into(),
            node: "node1".into(),
            pod: Some(format!("lat{i}")),
            endpoint: "eth0".into(),
            ip_networks: vec![IpNet::from(IpAddr::V4(ip))],
            // Not a device of node1: its own agent plans nothing for it.
            interface_name: format!("mgylat{i:08}"),
            profiles: vec!["kns.default".into()],
            ..Default::default()
        },
    }
}

/// A /24 of the pool that no block overlaps: its addresses are routed per endpoint.
fn unblocked_prefix(blocks: &[IPAMBlock]) -> Ipv4Addr {
    (1..=254u8)
        .rev()
        .map(|x| Ipv4Addr::new(10, 77, x, 0))
        .find(|net| {
            let p: IpNet = format!("{net}/24").parse().unwrap();
            !blocks
                .iter()
                .any(|b| b.spec.cidr.contains(&p) || p.contains(&b.spec.cidr))
        })
        .expect("a /24 of 10.77.0.0/16 without blocks")
}

fn main() {
    if !is_root() {
        eprintln!("skipped: this benchmark needs root (network namespaces)");
        return;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut c = Cluster::new(2);
    let client = rt.block_on(async {
        Client::new(
            margay_datastore::connect(&c.datastore, &ConnectOptions::default())
                .await
                .unwrap(),
        )
    });
    let mut pool = IPPool::new("pool", "10.77.0.0/16".parse().unwrap());
    pool.spec.vxlan_mode = EncapMode::Always;
    pool.spec.nat_outgoing = true;
    pool.spec.block_size = Some(26);
    rt.block_on(client.create(&pool)).unwrap();
    // A third registered node with no agent, as a cluster has (its record is read, not used).
    let mut idle = Node::new("node2");
    idle.spec.bgp = Some(NodeBGPSpec {
        ipv4_address: Some(margay_api::IpOrCidr::Cidr(
            "192.168.78.13/24".parse().unwrap(),
        )),
        ..Default::default()
    });
    rt.block_on(client.create(&idle)).unwrap();
    c.start_agent(0);
    c.start_agent(1);
    c.wait_until("node0 routing node1's block through the tunnel", || {
        c.nodes[0]
            .ip(&["route", "show", "proto", "77"])
            .contains("dev vxlan.margay")
    });
    let node1 = rt
        .block_on(client.get::<Node>(None, "node1"))
        .unwrap()
        .unwrap();
    let tunnel1 = IpAddr::V4(node1.spec.ipv4_vxlan_tunnel_addr.unwrap());
    let (blocks, _) = rt.block_on(client.list::<IPAMBlock>(None)).unwrap();
    let prefix = unblocked_prefix(&blocks);
    let node0_ns = NetNs::open(Path::new(&c.nodes[0].path())).unwrap();
    let mut monitor = RouteMonitor::new_in(&node0_ns).unwrap();
    // Let start-up settle (both agents' first syncs, link-local noise).
    std::thread::sleep(Duration::from_millis(500));
    monitor.drain(Duration::ZERO).unwrap();

    let mut rng = Rng(SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1);
    let load_before = load_average();
    let mut metrics_before = String::new();
    let mut samples = Vec::new();
    let mut other_events = 0;
    for i in 0..WARMUP + SAMPLES {
        if i == WARMUP {
            metrics_before = c.metrics(0);
        }
        let gap = GAP_MS.0 + rng.next() % (GAP_MS.1 - GAP_MS.0);
        std::thread::sleep(Duration::from_millis(gap));
        other_events += monitor.drain(Duration::ZERO).unwrap().len();
        let ip = Ipv4Addr::from(u32::from(prefix) + 1 + i as u32);
        let want = IpNet::from(IpAddr::V4(ip));
        rt.block_on(client.create(&endpoint(i, ip))).unwrap();
        let written = Instant::now();
        let seen = loop {
            let events = monitor.drain(Duration::ZERO).unwrap();
            let now = Instant::now();
            if let Some((_, route)) = events.iter().find(|(new, r)| *new && r.destination == want) {
                assert_eq!(route.gateway, Some(tunnel1), "{route:?}");
                other_events += events.len() - 1;
                break now;
            }
            other_events += events.len();
            if written.elapsed() > Duration::from_secs(10) {
                panic!("no route to {want} in node0 after 10 s\n{}", c.log(0));
            }
            std::thread::sleep(CHECK_EVERY);
        };
        if i >= WARMUP {
            samples.push((seen - written).as_secs_f64() * 1e3);
        }
    }
    let metrics_after = c.metrics(0);
    let load_after = load_average();

    println!(
        "endpoint → remote /32 route in node0 ({SAMPLES} borrowed addresses of node1 in \
         {prefix}/24, {WARMUP} warm-ups, {}–{} ms apart)",
        GAP_MS.0, GAP_MS.1
    );
    println!("latency:       {}", stats(&samples));
    let syncs = one_op_syncs(&c.log(0));
    let syncs = &syncs[syncs.len().saturating_sub(SAMPLES)..];
    println!(
        "agent's sync:  {}  (`took` of its one-op syncs)",
        stats(syncs)
    );
    let mut lag = BTreeMap::new();
    for name in [
        "margay_agent_watch_lag_seconds",
        "margay_agent_sync_duration_seconds",
    ] {
        let (s0, n0) = histogram(&metrics_before, name);
        let (s1, n1) = histogram(&metrics_after, name);
        lag.insert(name, ((s1 - s0) * 1e3 / (n1 - n0).max(1.0), n1 - n0));
    }
    for (name, (mean, n)) in &lag {
        println!("{name}: mean {mean:.2} ms over {n} syncs");
    }
    println!("other route events in node0 meanwhile: {other_events}");
    println!("load average: before {load_before}, after {load_after}");
}
