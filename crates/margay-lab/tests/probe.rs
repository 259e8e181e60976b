//! `probe` against real servers in throwaway network namespaces, joined by a bridge in a hub
//! namespace; a guard deletes them all even when the test panics. Needs root (CI runs as
//! root); without it each test prints "skipped: needs root" and passes.

use margay_sys::process::is_root;
use std::net::IpAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use margay_lab::probe::{probe, Endpoint, Matrix, Protocol};
use margay_lab::serve::{self, ServeOptions};
use margay_sys::netns::NetNs;

const TIMEOUT: Duration = Duration::from_secs(1);
/// Served by every pod, on TCP and UDP.
const SERVED: u16 = 80;
/// Served by nobody.
const UNSERVED: u16 = 81;

fn run(program: &str, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `ip -n NS ARGS…`
fn ip_in(ns: &str, args: &str) {
    let mut all = vec!["-n", ns];
    all.extend(args.split_whitespace());
    run("ip", &all);
}

/// Pods `lab/a`, `lab/b`, … each in its own namespace at 10.99.0.1, .2, … on one bridge (in a
/// hub namespace), each serving TCP and UDP port 80. Every namespace is deleted on drop.
struct Lab {
    /// Namespace names, hub first; only those actually created, so a failed setup cleans up.
    namespaces: Vec<String>,
    endpoints: Vec<Endpoint>,
}

impl Lab {
    fn new(tag: &str, pods: usize) -> Lab {
        let prefix = format!("mgylab-{}-{tag}", std::process::id());
        let mut lab = Lab {
            namespaces: Vec::new(),
            endpoints: Vec::new(),
        };
        let hub = lab.add_namespace(format!("{prefix}-hub"));
        ip_in(&hub, "link add br0 type bridge");
        ip_in(&hub, "link set br0 up");
        for (i, pod) in ('a'..).take(pods).enumerate() {
            let ns = lab.add_namespace(format!("{prefix}-{pod}"));
            let ip: IpAddr = format!("10.99.0.{}", i + 1).parse().unwrap();
            ip_in(
                &hub,
                &format!("link add p{i} type veth peer name eth0 netns {ns}"),
            );
            ip_in(&hub, &format!("link set p{i} master br0 up"));
            ip_in(&ns, "link set lo up");
            ip_in(&ns, &format!("addr add {ip}/24 dev eth0"));
            ip_in(&ns, "link set eth0 up");

            let id = format!("lab/{pod}");
            let netns = Path::new("/var/run/netns").join(&ns);
            let opts = ServeOptions {
                name: id.clone(),
                tcp: vec![SERVED],
                udp: vec![SERVED],
            };
            // The sockets are bound in the pod's namespace and stay there, whichever thread
            // then serves them.
            let server = NetNs::open(&netns)
                .unwrap()
                .run(|| serve::bind(&opts))
                .unwrap()
                .unwrap();
            thread::spawn(move || server.run());
            lab.endpoints.push(Endpoint { id, netns, ip });
        }
        lab
    }

    fn add_namespace(&mut self, name: String) -> String {
        run("ip", &["netns", "add", &name]);
        self.namespaces.push(name.clone());
        name
    }

    /// The namespace name of pod `i`.
    fn namespace(&self, i: usize) -> &str {
        &self.namespaces[i + 1]
    }

    fn ids(&self) -> Vec<&str> {
        self.endpoints.iter().map(|e| e.id.as_str()).collect()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in &self.namespaces {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stdin(Stdio::null())
                .status();
        }
    }
}

/// Probes and checks that it took about one timeout at most.
fn timed_probe(endpoints: &[Endpoint], port: u16, protocol: Protocol) -> Matrix {
    let start = Instant::now();
    let m = probe(endpoints, port, protocol, TIMEOUT).unwrap();
    let took = start.elapsed();
    assert!(
        took < Duration::from_secs(3),
        "{port}/{protocol} took {took:?}"
    );
    m
}

/// Every `(from, to)` pair among `from` × `to`, sorted.
fn pairs(from: &[&str], to: &[&str]) -> Vec<(String, String)> {
    let mut all: Vec<_> = from
        .iter()
        .flat_map(|a| to.iter().map(|b| (a.to_string(), b.to_string())))
        .collect();
    all.sort();
    all
}

#[test]
fn served_ports_are_reached_and_unserved_ones_denied() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let lab = Lab::new("open", 3);
    let ids = lab.ids();
    let all = pairs(&ids, &ids);

    for protocol in [Protocol::Tcp, Protocol::Udp] {
        let m = timed_probe(&lab.endpoints, SERVED, protocol);
        assert_eq!((&m.allowed, &m.denied), (&all, &vec![]), "{protocol}");
        assert_eq!((m.port, m.protocol), (SERVED, protocol));

        let m = timed_probe(&lab.endpoints, UNSERVED, protocol);
        assert_eq!((&m.allowed, &m.denied), (&vec![], &all), "{protocol}");
    }

    // An endpoint at lab/a's address under another id: lab/a answers, but not as the
    // impostor, so nobody reaches the impostor; the impostor itself (in lab/a's namespace)
    // reaches everyone.
    let mut endpoints = lab.endpoints.clone();
    endpoints.push(Endpoint {
        id: "lab/impostor".into(),
        ..lab.endpoints[0].clone()
    });
    let m = timed_probe(&endpoints, SERVED, Protocol::Tcp);
    let mut with_impostor = ids.clone();
    with_impostor.push("lab/impostor");
    assert_eq!(m.denied, pairs(&with_impostor, &["lab/impostor"]));
    assert_eq!(m.allowed, pairs(&with_impostor, &ids));
}

#[test]
fn a_dropping_firewall_denies_only_the_pairs_toward_it() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let lab = Lab::new("drop", 3);
    // Silently dropped, so these tries run into the timeout rather than being refused. The
    // rule goes away with the namespace.
    run(
        "ip",
        &[
            "netns",
            "exec",
            lab.namespace(2),
            "iptables",
            "-A",
            "INPUT",
            "-p",
            "tcp",
            "--dport",
            &SERVED.to_string(),
            "-j",
            "DROP",
        ],
    );
    let ids = lab.ids();
    let m = timed_probe(&lab.endpoints, SERVED, Protocol::Tcp);
    assert_eq!(m.denied, pairs(&ids, &["lab/c"]));
    assert_eq!(m.allowed, pairs(&ids, &["lab/a", "lab/b"]));

    // UDP is not filtered.
    let m = timed_probe(&lab.endpoints, SERVED, Protocol::Udp);
    assert_eq!((m.allowed, m.denied), (pairs(&ids, &ids), vec![]));
}
