//! The node agent's full sync at scale (issue 5): 100 remote nodes holding 1,000 blocks of a
//! VXLAN pool, and 250 local workloads on real veths, in a throwaway network namespace.
//!
//! `cargo bench -p margay-agent --bench full_sync` (root: network namespaces). Times
//! `agent::sync_once` on a thread inside the namespace with its own current-thread runtime:
//! (a) the first sync from an empty kernel (a fresh namespace each time), (b) a sync with
//! nothing to change (asserted: zero operations), (c) a sync after one remote block appears;
//! then the pieces of (a) and (b) (model load, plan, observe, diff, apply by kind).
//!
//! `MARGAY_BENCH_REMOTE_ENDPOINTS=1` also stores one WorkloadEndpoint per remote allocation
//! (8,000), as a real cluster would: they are not routed, but the agent reads them all.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use ipnet::{IpNet, Ipv4Net};
use margay_agent::agent::sync_once;
use margay_agent::kernel::{Kernel, LinuxKernel};
use margay_agent::model::Model;
use margay_agent::plan::{self, Host};
use margay_agent::{reconcile, register};
use margay_api::{
    cidr_to_name, AllocationAttribute, EncapMode, IPAMBlock, IPPool, IpOrCidr, MacAddr, Node,
    NodeBGPSpec, ObjectMeta, WorkloadEndpoint, WorkloadEndpointSpec,
};
use margay_client::Client;
use margay_datastore::ConnectOptions;
use margay_ipam::{block, tunnel_handle};
use margay_sys::netns::NetNs;

const REMOTE_NODES: usize = 100;
const BLOCKS_PER_NODE: usize = 10;
/// Allocations in each remote block besides the node's tunnel address (in its first block).
const PODS_PER_REMOTE_BLOCK: usize = 8;
const LOCAL_WORKLOADS: usize = 250;
/// Calico's default block size: 250 workloads and the tunnel address take 4 blocks.
const BLOCK_PREFIX: u8 = 26;
const BLOCK_LEN: usize = 1 << (32 - BLOCK_PREFIX);
const LOCAL_BLOCKS: usize = (LOCAL_WORKLOADS + 1).div_ceil(BLOCK_LEN);
const POOL: &str = "10.64.0.0/14";
const NODE: &str = "bench-node";
const NODE_IP: &str = "192.168.0.1/24";
/// Fresh namespaces for (a); (b) runs STEADY times in each.
const REPEATS: usize = 5;
const STEADY: usize = 3;

static SEQ: AtomicUsize = AtomicUsize::new(0);

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// A network namespace, deleted on drop (with everything in it), panic or not.
struct Netns(String);

impl Netns {
    fn new(tag: &str) -> Netns {
        let name = format!(
            "mgysync{tag}{}x{}",
            std::process::id() % 100_000,
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        ip(&["netns", "add", &name]);
        Netns(name)
    }

    fn path(&self) -> PathBuf {
        PathBuf::from(format!("/var/run/netns/{}", self.0))
    }

    /// Runs `ip -n NS -batch -` on `lines`.
    fn batch(&self, lines: &[String]) {
        use std::io::Write;
        let mut child = Command::new("ip")
            .args(["-n", &self.0, "-batch", "-"])
            .stdin(Stdio::piped())
            .spawn()
            .expect("ip");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(lines.join("\n").as_bytes())
            .unwrap();
        assert!(child.wait().unwrap().success(), "ip -n {} -batch", self.0);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn ip(args: &[&str]) {
    let ok = Command::new("ip")
        .args(args)
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "ip {args:?} failed");
}

/// A deterministic stand-in for a hash (splitmix64).
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn container_id(n: u64) -> String {
    (0..4).map(|i| format!("{:016x}", mix(n * 4 + i))).collect()
}

/// The host end of local workload `i`'s veth, as the CNI plugin names them (`mgy` + 11 hex).
fn veth(i: usize) -> String {
    format!("mgy{:011x}", mix(i as u64) & 0xfff_ffff_ffff)
}

fn block_cidr(index: usize) -> IpNet {
    let base = u32::from("10.64.0.0".parse::<Ipv4Addr>().unwrap());
    let net = Ipv4Addr::from(base + (index * BLOCK_LEN) as u32);
    IpNet::V4(Ipv4Net::new(net, BLOCK_PREFIX).unwrap())
}

fn remote_name(k: usize) -> String {
    format!("remote-{k:03}")
}

fn first_block_of_remote(k: usize) -> usize {
    LOCAL_BLOCKS + k * BLOCKS_PER_NODE
}

/// One past the last block in the datastore at start: where (c) adds its blocks.
const FIRST_SPARE_BLOCK: usize = LOCAL_BLOCKS + REMOTE_NODES * BLOCKS_PER_NODE;

fn node(name: &str, ip: &str, tunnel: IpAddr, mac: [u8; 6]) -> Node {
    let mut n = Node::new(name);
    n.spec.bgp = Some(NodeBGPSpec {
        ipv4_address: Some(IpOrCidr::Cidr(ip.parse().unwrap())),
        ..Default::default()
    });
    n.spec.ipv4_vxlan_tunnel_addr = match tunnel {
        IpAddr::V4(v4) => Some(v4),
        IpAddr::V6(_) => None,
    };
    n.spec.vxlan_tunnel_mac_addr = Some(MacAddr(mac));
    n
}

fn pod_attr(node: &str, pod: u64) -> AllocationAttribute {
    AllocationAttribute {
        handle_id: Some(format!("k8s-pod-network.{}", container_id(pod))),
        secondary: BTreeMap::from([
            ("namespace".to_owned(), "default".to_owned()),
            ("node".to_owned(), node.to_owned()),
            ("pod".to_owned(), format!("pod-{pod}")),
            (
                "timestamp".to_owned(),
                "2026-11-21 10:00:00.000000000 +0000 UTC".to_owned(),
            ),
        ]),
    }
}

fn tunnel_attr(node: &str) -> AllocationAttribute {
    AllocationAttribute {
        handle_id: Some(tunnel_handle("vxlan", node)),
        secondary: BTreeMap::from([
            ("node".to_owned(), node.to_owned()),
            ("type".to_owned(), "vxlanTunnelAddress".to_owned()),
        ]),
    }
}

fn new_block(index: usize, owner: &str) -> IPAMBlock {
    let cidr = block_cidr(index);
    IPAMBlock {
        metadata: ObjectMeta::named(cidr_to_name(&cidr)),
        spec: block::new_block(cidr, Some(format!("host:{owner}")), None),
    }
}

fn endpoint(node: &str, pod: u64, ip: IpAddr, iface: String) -> WorkloadEndpoint {
    WorkloadEndpoint {
        metadata: ObjectMeta::namespaced("default", format!("{node}-k8s-pod--{pod}-eth0")),
        spec: WorkloadEndpointSpec {
            orchestrator: "k8s".into(),
            node: node.into(),
            pod: Some(format!("pod-{pod}")),
            endpoint: "eth0".into(),
            ip_networks: vec![IpNet::from(ip)],
            interface_name: iface,
            profiles: vec!["kns.default".into(), "ksa.default.default".into()],
            ..Default::default()
        },
    }
}

/// Writes the cluster: the pool, this node and the remote ones, their blocks (with
/// allocations), and the local workloads.
async fn populate(client: &Client, remote_endpoints: bool) -> (usize, usize) {
    let mut pool = IPPool::new("bench", POOL.parse().unwrap());
    pool.spec.vxlan_mode = EncapMode::Always;
    pool.spec.nat_outgoing = true;
    pool.spec.block_size = Some(BLOCK_PREFIX);
    client.create(&pool).await.unwrap();

    // This node: tunnel address first, then the workloads, in its blocks.
    let mut blocks: Vec<IPAMBlock> = (0..LOCAL_BLOCKS).map(|b| new_block(b, NODE)).collect();
    let tunnel = block::ordinal_ip(&blocks[0].spec.cidr, 0);
    assert!(block::assign(
        &mut blocks[0].spec,
        tunnel,
        &tunnel_attr(NODE)
    ));
    client
        .create(&node(NODE, NODE_IP, tunnel, [0x66, 0x6d, 0x67, 0xff, 0, 1]))
        .await
        .unwrap();
    let mut endpoints = 0;
    for i in 0..LOCAL_WORKLOADS {
        let ordinal = i + 1;
        let b = &mut blocks[ordinal / BLOCK_LEN].spec;
        let ip = block::ordinal_ip(&b.cidr, ordinal % BLOCK_LEN);
        let pod = 1_000_000 + i as u64;
        assert!(block::assign(b, ip, &pod_attr(NODE, pod)));
        client
            .create(&endpoint(NODE, pod, ip, veth(i)))
            .await
            .unwrap();
        endpoints += 1;
    }
    for b in &blocks {
        client.create(b).await.unwrap();
    }

    // Remote nodes: half in this node's subnet, half not (VXLAN Always: no difference to the
    // plan, every remote block goes through the tunnel).
    let mut block_count = LOCAL_BLOCKS;
    for k in 0..REMOTE_NODES {
        let name = remote_name(k);
        let subnet = if k % 2 == 0 { 0 } else { 1 };
        let ip = format!("192.168.{subnet}.{}/24", 2 + k);
        let mut tunnel = None;
        for j in 0..BLOCKS_PER_NODE {
            let mut b = new_block(first_block_of_remote(k) + j, &name);
            let mut ordinal = 0;
            if j == 0 {
                let t = block::ordinal_ip(&b.spec.cidr, 0);
                assert!(block::assign(&mut b.spec, t, &tunnel_attr(&name)));
                tunnel = Some(t);
                ordinal = 1;
            }
            for p in 0..PODS_PER_REMOTE_BLOCK {
                let pod = ((k * BLOCKS_PER_NODE + j) * PODS_PER_REMOTE_BLOCK + p) as u64;
                let ip = block::ordinal_ip(&b.spec.cidr, ordinal + p);
                assert!(block::assign(&mut b.spec, ip, &pod_attr(&name, pod)));
                if remote_endpoints {
                    client
                        .create(&endpoint(&name, pod, ip, veth(pod as usize)))
                        .await
                        .unwrap();
                    endpoints += 1;
                }
            }
            client.create(&b).await.unwrap();
            block_count += 1;
        }
        let mac = [0x66, 0x6d, 0x67, 0, (k >> 8) as u8, k as u8];
        client
            .create(&node(&name, &ip, tunnel.unwrap(), mac))
            .await
            .unwrap();
    }
    (block_count, endpoints)
}

/// A node namespace with an uplink holding the node's address, and the host ends of the
/// local workloads' veths (their pod ends in a second namespace, as the CNI plugin leaves
/// them).
struct NodeNs {
    node: Netns,
    /// Held for its drop (after `node`'s).
    _pods: Netns,
}

fn node_ns() -> NodeNs {
    let node = Netns::new("n");
    let pods = Netns::new("p");
    let mut lines = vec![
        "link set lo up".to_owned(),
        // No dummy driver on every kernel: a veth whose peer stays here.
        "link add eth0 type veth peer name eth0-peer".to_owned(),
        format!("addr add {NODE_IP} dev eth0"),
        "link set eth0 up".to_owned(),
        "link set eth0-peer up".to_owned(),
    ];
    for i in 0..LOCAL_WORKLOADS {
        lines.push(format!(
            "link add {} type veth peer name p{i} netns {}",
            veth(i),
            pods.0
        ));
    }
    for i in 0..LOCAL_WORKLOADS {
        lines.push(format!("link set {} up", veth(i)));
    }
    node.batch(&lines);
    let mut lines = vec!["link set lo up".to_owned()];
    lines.extend((0..LOCAL_WORKLOADS).map(|i| format!("link set p{i} up")));
    pods.batch(&lines);
    NodeNs { node, _pods: pods }
}

fn host() -> Host {
    Host {
        node: NODE.into(),
        ip: NODE_IP.parse().unwrap(),
        uplink: "eth0".into(),
        uplink_mtu: 1500,
    }
}

/// Runs `f` with a fresh current-thread runtime (as the agent has) on a thread inside `ns`.
fn in_ns<T: Send>(ns: &Netns, f: impl FnOnce(&tokio::runtime::Runtime) -> T + Send) -> T {
    let net = NetNs::open(&ns.path()).unwrap();
    net.run(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        f(&rt)
    })
    .unwrap()
}

async fn connect(url: &str) -> Client {
    Client::new(
        margay_datastore::connect(url, &ConnectOptions::default())
            .await
            .unwrap(),
    )
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn min(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::INFINITY, f64::min)
}

fn summary(v: &[f64]) -> String {
    format!(
        "median {:8.2} ms  min {:8.2} ms  (n={})",
        median(v),
        min(v),
        v.len()
    )
}

#[derive(Default)]
struct Timings {
    first: Vec<f64>,
    steady: Vec<f64>,
    new_block: Vec<f64>,
}

/// Expected operations of a first sync: the device, a neighbour and an FDB entry per remote
/// node, a route per remote block, a blackhole per local block, a route per local workload.
const FIRST_OPS: usize =
    1 + 2 * REMOTE_NODES + REMOTE_NODES * BLOCKS_PER_NODE + LOCAL_BLOCKS + LOCAL_WORKLOADS;

/// (a), (b) and (c) in one fresh namespace.
fn round(url: &str, r: usize, t: &mut Timings) {
    let ns = node_ns();
    let (first, steady, added) = in_ns(&ns.node, |rt| {
        rt.block_on(async {
            let client = connect(url).await;
            let host = host();
            let mut kernel = LinuxKernel::new().unwrap();
            let start = Instant::now();
            let report = sync_once(&client, &host, &mut kernel, &mut Default::default(), true)
                .await
                .unwrap();
            let first = ms(start.elapsed());
            assert!(report.errors.is_empty(), "{:?}", report.errors);
            assert_eq!(report.ops, FIRST_OPS);
            let seen = kernel.observe().unwrap();
            assert_eq!(seen.routes.len(), FIRST_OPS - 1 - 2 * REMOTE_NODES);
            assert_eq!(seen.neighbours.len(), REMOTE_NODES);
            assert_eq!(seen.fdb.len(), REMOTE_NODES);

            let mut steady = Vec::new();
            for _ in 0..STEADY {
                let start = Instant::now();
                let report = sync_once(&client, &host, &mut kernel, &mut Default::default(), true)
                    .await
                    .unwrap();
                steady.push(ms(start.elapsed()));
                assert_eq!(
                    report.ops, 0,
                    "a sync with nothing to change applied operations"
                );
            }

            let mut b = new_block(FIRST_SPARE_BLOCK + r, &remote_name(r % REMOTE_NODES));
            let first_ip = block::ordinal_ip(&b.spec.cidr, 0);
            let attr = pod_attr(&remote_name(r), 9_000_000 + r as u64);
            assert!(block::assign(&mut b.spec, first_ip, &attr));
            client.create(&b).await.unwrap();
            let start = Instant::now();
            let report = sync_once(&client, &host, &mut kernel, &mut Default::default(), true)
                .await
                .unwrap();
            let added = ms(start.elapsed());
            assert_eq!(report.ops, 1);
            assert!(report.errors.is_empty(), "{:?}", report.errors);
            client
                .delete::<IPAMBlock>(None, &b.metadata.name, None)
                .await
                .unwrap();
            let report = sync_once(&client, &host, &mut kernel, &mut Default::default(), true)
                .await
                .unwrap();
            assert_eq!(report.ops, 1);
            (first, steady, added)
        })
    });
    t.first.push(first);
    t.steady.extend(steady);
    t.new_block.push(added);
    drop(ns);
    // Let the kernel tear the namespace down (hundreds of links) before the next round.
    std::thread::sleep(Duration::from_secs(2));
}

#[derive(Default)]
struct Pieces {
    load: Vec<f64>,
    tunnels: Vec<f64>,
    plan: Vec<f64>,
    observe: Vec<f64>,
    diff: Vec<f64>,
    apply: Vec<f64>,
    /// Dropping the model, plan, observation and operations.
    free: Vec<f64>,
    /// Operation kind → (count, milliseconds) of the last pass.
    by_kind: BTreeMap<&'static str, (usize, f64)>,
}

/// One sync by hand, timing its pieces; returns the number of operations.
async fn pieces(client: &Client, kernel: &mut LinuxKernel, p: &mut Pieces) -> usize {
    let host = host();
    let start = Instant::now();
    let model = Model::load(client, NODE, true).await.unwrap();
    p.load.push(ms(start.elapsed()));
    let start = Instant::now();
    let changed = register::ensure_tunnels(client, &model, NODE)
        .await
        .unwrap();
    p.tunnels.push(ms(start.elapsed()));
    assert!(!changed);
    let start = Instant::now();
    let plan = plan::plan(&model, &host);
    p.plan.push(ms(start.elapsed()));
    let start = Instant::now();
    let observed = kernel.observe().unwrap();
    p.observe.push(ms(start.elapsed()));
    let start = Instant::now();
    let ops = reconcile::diff(&plan, &observed);
    p.diff.push(ms(start.elapsed()));
    p.by_kind.clear();
    let all = Instant::now();
    for op in &ops {
        let start = Instant::now();
        kernel.apply(op).unwrap();
        let e = p.by_kind.entry(op.kind()).or_default();
        e.0 += 1;
        e.1 += ms(start.elapsed());
    }
    p.apply.push(ms(all.elapsed()));
    let n = ops.len();
    let start = Instant::now();
    drop((model, plan, observed, ops));
    p.free.push(ms(start.elapsed()));
    n
}

/// What model load reads, kind by kind: items, bytes, the datastore list alone, and the list
/// decoded (as `Client::list` does). Medians of `runs`.
async fn load_by_kind(client: &Client, runs: usize) {
    async fn typed<T: margay_api::Object>(client: &Client) -> usize {
        client.list::<T>(None).await.unwrap().0.len()
    }
    println!("model load by kind (median of {runs}):");
    for kind in [
        "IPPool",
        "Node",
        "IPAMBlock",
        "WorkloadEndpoint",
        "AgentConfiguration",
    ] {
        let (mut raw, mut decoded, mut items, mut bytes) = (Vec::new(), Vec::new(), 0, 0);
        for _ in 0..runs {
            let start = Instant::now();
            let res = client
                .datastore()
                .list(&margay_datastore::Query::kind(kind))
                .await
                .unwrap();
            raw.push(ms(start.elapsed()));
            items = res.items.len();
            bytes = res.items.iter().map(|kv| kv.value.len()).sum::<usize>();
            let start = Instant::now();
            let n = match kind {
                "IPPool" => typed::<IPPool>(client).await,
                "Node" => typed::<Node>(client).await,
                "IPAMBlock" => typed::<IPAMBlock>(client).await,
                "WorkloadEndpoint" => typed::<WorkloadEndpoint>(client).await,
                _ => typed::<margay_api::AgentConfiguration>(client).await,
            };
            decoded.push(ms(start.elapsed()));
            assert_eq!(n, items);
        }
        println!(
            "  {kind:<20} {items:>6} items {:>9} bytes  list {:7.2} ms  list+decode {:7.2} ms",
            bytes,
            median(&raw),
            median(&decoded)
        );
    }
}

/// What the plan uses of a block; everything else in the document is skipped unparsed.
#[derive(serde::Deserialize)]
struct SlimBlock {
    spec: SlimBlockSpec,
}

#[derive(serde::Deserialize)]
struct SlimBlockSpec {
    #[allow(dead_code)]
    cidr: IpNet,
    #[allow(dead_code)]
    affinity: Option<String>,
}

/// The blocks decoded whole (as `Model::load` does) against only their CIDR and affinity,
/// each including dropping the result. Medians of `runs`.
async fn block_decode(client: &Client, runs: usize) {
    let (mut whole, mut slim) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let start = Instant::now();
        let (blocks, _) = client.list::<IPAMBlock>(None).await.unwrap();
        drop(blocks);
        whole.push(ms(start.elapsed()));
        let start = Instant::now();
        let res = client
            .datastore()
            .list(&margay_datastore::Query::kind("IPAMBlock"))
            .await
            .unwrap();
        let blocks: Vec<SlimBlock> = res
            .items
            .iter()
            .map(|kv| serde_json::from_slice(&kv.value).unwrap())
            .collect();
        assert!(blocks.iter().all(|b| b.spec.affinity.is_some()));
        drop((blocks, res));
        slim.push(ms(start.elapsed()));
    }
    println!(
        "IPAMBlock list, decode and drop (median of {runs}): whole IPAMBlock {:.2} ms, \
         only cidr+affinity {:.2} ms",
        median(&whole),
        median(&slim)
    );
}

fn print_pieces(what: &str, p: &Pieces) {
    println!("{what} (median of {}):", p.load.len());
    for (name, v) in [
        ("model load (5 lists)", &p.load),
        ("ensure_tunnels", &p.tunnels),
        ("plan", &p.plan),
        ("observe (netlink dumps)", &p.observe),
        ("diff", &p.diff),
        ("apply", &p.apply),
        ("free (drop model etc.)", &p.free),
    ] {
        println!("  {name:<26} {:8.2} ms  (min {:.2})", median(v), min(v));
    }
    for (kind, (n, t)) in &p.by_kind {
        println!(
            "    apply {kind:<10} {n:>5} ops {t:8.2} ms  ({:.1} µs each, last pass)",
            t * 1e3 / *n as f64
        );
    }
}

fn main() {
    if !is_root() {
        eprintln!("skipped: this benchmark needs root (network namespaces)");
        return;
    }
    let remote_endpoints = std::env::var_os("MARGAY_BENCH_REMOTE_ENDPOINTS").is_some();
    let dir = tempfile::tempdir().unwrap();
    let url = margay_datastore::testing::temp_sqlite_url(dir.path());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let start = Instant::now();
    let (blocks, endpoints) = rt.block_on(async {
        let client = connect(&url).await;
        populate(&client, remote_endpoints).await
    });
    println!(
        "datastore: 1 VXLAN pool {POOL} (/{BLOCK_PREFIX} blocks), {} nodes, {blocks} blocks \
         ({LOCAL_BLOCKS} local, {} remote, {PODS_PER_REMOTE_BLOCK} allocations each), \
         {endpoints} endpoints ({LOCAL_WORKLOADS} local on real veths); written in {:.1} s",
        REMOTE_NODES + 1,
        blocks - LOCAL_BLOCKS,
        start.elapsed().as_secs_f64()
    );
    println!("load average: {}", load_average());

    let mut t = Timings::default();
    for r in 0..REPEATS {
        round(&url, r, &mut t);
    }
    println!(
        "(a) first sync, empty kernel ({FIRST_OPS} ops): {}",
        summary(&t.first)
    );
    println!(
        "(b) sync, nothing to change (0 ops):      {}",
        summary(&t.steady)
    );
    println!(
        "(c) sync after one remote block (1 op):     {}",
        summary(&t.new_block)
    );

    let mut first = Pieces::default();
    let mut steady = Pieces::default();
    for _ in 0..3 {
        let ns = node_ns();
        in_ns(&ns.node, |rt| {
            rt.block_on(async {
                let client = connect(&url).await;
                let mut kernel = LinuxKernel::new().unwrap();
                assert_eq!(pieces(&client, &mut kernel, &mut first).await, FIRST_OPS);
                assert_eq!(pieces(&client, &mut kernel, &mut steady).await, 0);
            })
        });
        drop(ns);
        std::thread::sleep(Duration::from_secs(2));
    }
    in_ns(&Netns::new("k"), |rt| {
        rt.block_on(async {
            let client = connect(&url).await;
            load_by_kind(&client, 5).await;
            block_decode(&client, 5).await;
        })
    });
    print_pieces("(a) by piece", &first);
    print_pieces("(b) by piece", &steady);
    println!("load average: {}", load_average());
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}
