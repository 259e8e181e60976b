//! Datastore write → policy applied in the kernel, at the scale of the policy issue: one
//! node, 500 workload endpoints, 1,000 policies (the generators of
//! `crates/margay-nft/benches/policy_program.rs`).
//!
//! `cargo bench -p margay --bench policy_latency` (root: a network namespace; `MARGAY_BIN`
//! overrides the agent binary, by default this profile's `margay`; `MARGAY_DATAPLANE=iptables`
//! runs it on the iptables dataplane; `MARGAY_DATASTORE=etcd` on an etcd started in the
//! node's namespace instead of SQLite). One node namespace, `margay node run` in it. The
//! endpoints need no devices: programming does not look at them.
//!
//! (a) Everything stored, then the agent started: time to both policy tables present (one
//!     transaction loads both with all their chains), polled every 2 ms; and the agent's
//!     `margay_agent_policy_programming_seconds` of that first program.
//! (b) 40 times, a Calico NetworkPolicy written (selecting 10 endpoints).
//! (c) 40 times, a WorkloadEndpoint of the node written.
//!
//! For (b) and (c) the latency is from the write returning to the end of the agent's apply
//! (`nft -f` or `iptables-restore` returned: the kernel holds the rules), read from the
//! timestamp of the agent's "policy programmed" log line for that change (same machine, same
//! clock). The sample waits for that line (reading the log file: polling the kernel with
//! `nft list` every few ms would keep a core busy and slow the agent down), then checks once
//! that the kernel shows the change (a new IPv4 chain in `nft list chains ip`, the interface
//! in the `to-wl` map, or the port or interface in `iptables-save`). The agent's own
//! breakdown of each
//! apply (model, program, apply) comes from the same log lines.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use margay_api::{IPPool, Resource};
use margay_client::Client;
use margay_datastore::ConnectOptions;

#[path = "../tests/support/bench.rs"]
mod bench;
#[path = "../tests/support/host.rs"]
mod host;
#[path = "../tests/support/uplink.rs"]
mod uplink;

use bench::{bin, histogram, percentile, strip_ansi};
use host::{is_root, Netns};
use margay_testkit::scale::{cluster_yaml, endpoint_yaml, one, NAMESPACES, NODE};

const ENDPOINTS: usize = 500;
const POLICIES: usize = 1_000;
const WARMUP: usize = 3;
const SAMPLES: usize = 40;
const POLL: Duration = Duration::from_millis(2);

/// Stores one resource of the kinds written here.
async fn create(client: &Client, resource: Resource) {
    match resource {
        Resource::WorkloadEndpoint(r) => drop(client.create(&r).await.unwrap()),
        Resource::NetworkPolicy(r) => drop(client.create(&r).await.unwrap()),
        Resource::GlobalNetworkPolicy(r) => drop(client.create(&r).await.unwrap()),
        Resource::KubernetesNetworkPolicy(r) => drop(client.create(&r).await.unwrap()),
        other => panic!("not written here: {:?}", other.kind()),
    }
}

/// A child process, killed on drop.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn iptables_save(ns: &Netns) -> String {
    let out = ns.exec(&["iptables-save", "-t", "filter"]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn poll_until(what: &str, mut done: impl FnMut() -> bool) -> Instant {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if done() {
            return Instant::now();
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(POLL);
    }
}

fn stats(v: &[f64]) -> String {
    if v.is_empty() {
        return "(none)".into();
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let mean = s.iter().sum::<f64>() / s.len() as f64;
    format!(
        "p50 {:7.2}  p99 {:7.2}  max {:7.2}  min {:7.2}  mean {:7.2} ms (n={})",
        percentile(&s, 50.0),
        percentile(&s, 99.0),
        s[s.len() - 1],
        s[0],
        mean,
        s.len()
    )
}

/// One "policy programmed" line of the agent's log: when it was logged (just after the
/// apply returned), and its `model_ms`, `program_ms`, `apply_ms`.
struct Programmed {
    at: SystemTime,
    times: [f64; 3],
}

fn breakdown(log: &str) -> Vec<Programmed> {
    strip_ansi(log)
        .lines()
        .filter(|l| l.contains("policy programmed"))
        .filter_map(|l| {
            let field = |name: &str| -> Option<f64> {
                l.split(&format!("{name}="))
                    .nth(1)?
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            };
            let at = humantime::parse_rfc3339(l.split_whitespace().next()?).ok()?;
            Some(Programmed {
                at,
                times: [field("model_ms")?, field("program_ms")?, field("apply_ms")?],
            })
        })
        .collect()
}

/// Write → applied for each write: the first apply logged after it.
fn applied_after(rows: &[Programmed], writes: &[SystemTime]) -> Vec<f64> {
    writes
        .iter()
        .filter_map(|w| {
            let row = rows.iter().find(|r| r.at >= *w)?;
            Some(row.at.duration_since(*w).ok()?.as_secs_f64() * 1e3)
        })
        .collect()
}

fn print_breakdown(rows: &[Programmed]) {
    for (i, name) in ["model", "program", "apply (nft -f / restore)"]
        .iter()
        .enumerate()
    {
        let v: Vec<f64> = rows.iter().map(|r| r.times[i]).collect();
        println!("    {name:26} {}", stats(&v));
    }
}

fn main() {
    if !is_root() {
        eprintln!("skipped: this benchmark needs root (network namespaces)");
        return;
    }
    let iptables = std::env::var("MARGAY_DATAPLANE").is_ok_and(|d| d == "iptables");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let etcd = std::env::var("MARGAY_DATASTORE").is_ok_and(|d| d == "etcd");
    let dir = tempfile::tempdir().unwrap();
    let ns = Netns::new("pl");
    ns.ip(&["link", "set", "lo", "up"]);
    // Everything below runs in the node's namespace: etcd, when used, listens on its
    // loopback, and the writes and the agent reach it there.
    let node_ns = margay_sys::netns::NetNs::open(&ns.path()).unwrap();
    node_ns
        .run(|| measure(&ns, dir.path(), etcd, iptables, &rt))
        .unwrap();
}

fn measure(
    ns: &Netns,
    dir: &std::path::Path,
    etcd: bool,
    iptables: bool,
    rt: &tokio::runtime::Runtime,
) {
    let etcd_server = etcd.then(margay_datastore::testing::EtcdServer::start);
    let datastore = match &etcd_server {
        Some(server) => server.url(),
        None => format!("sqlite://{}", dir.join("margay.db").display()),
    };
    // No dummy module everywhere: a veth pair, both ends in the node.
    ns.ip(&[
        "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p",
    ]);
    ns.ip(&["link", "set", "eth0p", "up"]);
    ns.ip(&["addr", "add", "192.168.79.11/24", "dev", "eth0"]);
    ns.ip(&["link", "set", "eth0", "up"]);
    uplink::add_dead_end_uplink(&ns.name);

    // Everything stored first (not timed).
    let mut text = String::new();
    if iptables {
        text.push_str(
            "apiVersion: margay.dev/v1\nkind: AgentConfiguration\nmetadata: {name: default}\n\
             spec: {dataplane: iptables}\n---\n",
        );
    }
    text.push_str(&cluster_yaml(ENDPOINTS, POLICIES));
    let file = dir.join("resources.yaml");
    std::fs::write(&file, text).unwrap();
    let stored = Command::new(bin())
        .args(["--datastore", &datastore, "apply", "-f"])
        .arg(&file)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(stored.success());
    let client = rt.block_on(async {
        Client::new(
            margay_datastore::connect(&datastore, &ConnectOptions::default())
                .await
                .unwrap(),
        )
    });
    let mut pool = IPPool::new("pool", "10.0.0.0/8".parse().unwrap());
    pool.spec.block_size = Some(26);
    rt.block_on(client.create(&pool)).unwrap();

    // (a) The agent started with everything stored.
    let log_path = dir.join("agent.log");
    let started = Instant::now();
    let _agent = Killed(
        Command::new("ip")
            .args(["netns", "exec", &ns.name])
            .arg(bin())
            .args(["--datastore", &datastore])
            .args(["node", "run", "--name", NODE])
            .args(["--ip", "192.168.79.11/24"])
            .arg("--state-dir")
            .arg(dir.join("state"))
            .args(["--health-addr", "127.0.0.1:9099"])
            .args(["--metrics-addr", "127.0.0.1:9091"])
            .args(["--resync-interval", "300s"])
            .env_remove("CNI_COMMAND")
            .env("MARGAY_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log_path).unwrap())
            .spawn()
            .unwrap(),
    );
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let first = if iptables {
        poll_until("the iptables chains", || {
            iptables_save(ns).contains("-A mgy-FORWARD")
        })
    } else {
        poll_until("both policy tables", || {
            let out = ns.exec(&["nft", "list", "tables"]);
            String::from_utf8_lossy(&out.stdout).contains("table ip6 margay-policy")
        })
    };
    let full = (first - started).as_secs_f64() * 1e3;
    let metrics = || {
        let out = ns.exec(&[
            "busybox",
            "wget",
            "-q",
            "-O",
            "-",
            "http://127.0.0.1:9091/metrics",
        ]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let chains = if iptables {
        iptables_save(ns)
            .lines()
            .filter(|l| l.starts_with(":mgy-"))
            .count()
    } else {
        let out = ns.exec(&["nft", "list", "chains", "ip"]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.trim_start().starts_with("chain "))
            .count()
    };
    std::thread::sleep(Duration::from_millis(300));
    let (sum, count) = histogram(&metrics(), "margay_agent_policy_programming_seconds");
    let dataplane = if iptables { "iptables" } else { "nftables" };
    let store = if etcd { "etcd" } else { "SQLite" };
    println!(
        "policy latency, {dataplane}, {store}: one node, {ENDPOINTS} endpoints, {POLICIES} policies"
    );
    println!(
        "(a) agent start → first full program in the kernel: {full:.0} ms ({chains} IPv4 chains); \
         agent's margay_agent_policy_programming_seconds: {:.0} ms over {count} programs",
        sum * 1e3
    );
    print_breakdown(&breakdown(&log()));

    // Each sample waits for the agent's log line of the apply (reading a file: polling the
    // kernel with `nft list` every few ms would take a core from the agent), then checks
    // the kernel once: the count of IPv4 chains (b), the `to-wl` dispatch map (c).
    let applies = || breakdown(&log()).len();
    let count_chains = || {
        let out = ns.exec(&["nft", "list", "chains", "ip"]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.trim_start().starts_with("chain "))
            .count()
    };
    let poll_cost = {
        let t = Instant::now();
        for _ in 0..10 {
            count_chains();
        }
        t.elapsed().as_secs_f64() * 1e3 / 10.0
    };
    println!("    (one poll of `nft list chains ip`: {poll_cost:.1} ms)");
    std::thread::sleep(Duration::from_millis(200));
    let before = breakdown(&log()).len();
    let mut b_writes = Vec::new();
    for i in 0..WARMUP + SAMPLES {
        std::thread::sleep(Duration::from_millis(40 + (i as u64 * 37) % 60));
        let name = format!("latpol{i}");
        let ns_i = i % NAMESPACES;
        let policy = one(&format!(
            "apiVersion: projectcalico.org/v3\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: ns{ns_i}}}\n\
             spec:\n  order: {}\n  selector: app == 'app{ns_i}'\n  ingress:\n  - action: Allow\n    protocol: TCP\n    \
             source: {{selector: tier == 't{}'}}\n    destination: {{ports: [{}]}}\n",
            5000 + i,
            i % 3,
            20000 + i
        ));
        let chains_before = (!iptables).then(count_chains);
        let applied = applies();
        rt.block_on(create(&client, policy));
        let written_at = SystemTime::now();
        poll_until(&name, || applies() > applied);
        let port = format!("{}", 20000 + i);
        match chains_before {
            Some(n) => assert!(count_chains() > n, "{name}: no new chain"),
            None => assert!(iptables_save(ns).contains(&port), "{name}: not in iptables"),
        }
        if i >= WARMUP {
            b_writes.push(written_at);
        }
    }
    std::thread::sleep(Duration::from_millis(200));
    let rows = breakdown(&log());
    let b_rows = &rows[before..];
    println!(
        "(b) NetworkPolicy written → applied in the kernel: {}",
        stats(&applied_after(b_rows, &b_writes))
    );
    print_breakdown(&b_rows[b_rows.len().saturating_sub(SAMPLES)..]);

    let before = rows.len();
    let mut c_writes = Vec::new();
    for i in 0..WARMUP + SAMPLES {
        std::thread::sleep(Duration::from_millis(40 + (i as u64 * 37) % 60));
        let n = ENDPOINTS + i;
        let iface = format!("mgy{n:011x}");
        let applied = applies();
        rt.block_on(create(&client, one(&endpoint_yaml(n))));
        let written_at = SystemTime::now();
        poll_until(&iface, || applies() > applied);
        let dispatched = if iptables {
            iptables_save(ns)
        } else {
            let out = ns.exec(&["nft", "list", "map", "ip", "margay-policy", "to-wl"]);
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        assert!(dispatched.contains(&iface), "{iface}: not dispatched");
        if i >= WARMUP {
            c_writes.push(written_at);
        }
    }
    std::thread::sleep(Duration::from_millis(200));
    let rows = breakdown(&log());
    let c_rows = &rows[before..];
    println!(
        "(c) WorkloadEndpoint written → applied in the kernel: {}",
        stats(&applied_after(c_rows, &c_writes))
    );
    print_breakdown(&c_rows[c_rows.len().saturating_sub(SAMPLES)..]);
    let (sum, count) = histogram(&metrics(), "margay_agent_watch_lag_seconds");
    println!(
        "margay_agent_watch_lag_seconds (change heard → sync done): mean {:.2} ms over {count} syncs",
        sum * 1e3 / count.max(1.0)
    );
}
