//! A full table into the kernel, Margay against BIRD 2, side by side in one run.
//!
//! A feeder BIRD in its own namespace holds 100,000 static /32s and exports them over eBGP
//! to two receivers in namespaces of their own: a Margay speaker (in a child process, this
//! binary re-executed, so that its memory is measured alone) and a BIRD 2 with a `kernel`
//! protocol. Both receivers are passive and the feeder connects to both as soon as it
//! starts, so they get the same stream at the same time. For each receiver: the time from
//! the feeder's start until all 100,000 routes are in the receiver's kernel table (counted
//! over netlink by protocol: 77 for Margay, `bird` for BIRD), and its peak resident memory
//! (VmHWM).
//!
//! Needs root and BIRD; otherwise it prints `skipped: <reason>`. Run with
//! `cargo bench -p margay-bgp --bench feed` (MGY_FEED_ROUTES overrides the count).

#[path = "../tests/support/mod.rs"]
mod support;

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read};
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use margay_bgp::sink::NetlinkSink;
use margay_bgp::speaker::{PeerConfig, Speaker, SpeakerConfig};
use margay_sys::netlink::{Route, RouteSocket};
use margay_sys::netns::NetNs;
use support::{count_routes, link, missing, Bird, TestNs};

const CHILD_ENV: &str = "MGY_FEED_CHILD";
/// `RTPROT_BIRD`.
const PROTO_BIRD: u8 = 12;

fn routes_wanted() -> usize {
    std::env::var("MGY_FEED_ROUTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000)
}

fn main() {
    if std::env::var_os(CHILD_ENV).is_some() {
        child();
        return;
    }
    // `cargo bench` passes --bench; `cargo test --benches` passes nothing: only a real
    // benchmark run does the work.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    if let Some(reason) = missing(&["bird", "birdc"]) {
        eprintln!("skipped: {reason}");
        return;
    }
    parent();
}

/// The Margay receiver: runs in its namespace until stdin closes.
fn child() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let sink = NetlinkSink::new(RouteSocket::new().unwrap(), Route::PROTO_MARGAY_BGP);
        let speaker =
            Speaker::start(SpeakerConfig::new(Ipv4Addr::new(10, 0, 1, 2), 65001), sink).unwrap();
        speaker.set_peers(vec![PeerConfig {
            passive: true,
            local_address: Some("10.0.1.2".parse().unwrap()),
            ..PeerConfig::new("10.0.1.1".parse().unwrap(), 65000)
        }]);
        println!("ready");
        // The parent closes our stdin when it is done.
        tokio::task::spawn_blocking(|| {
            let _ = std::io::stdin().read_to_end(&mut Vec::new());
        })
        .await
        .unwrap();
    });
}

fn feeder_config(n: usize) -> String {
    let mut conf = String::from(
        "router id 10.0.1.1;\nprotocol device { scan time 10; }\nprotocol static feed { ipv4;\n",
    );
    for i in 0..n as u32 {
        let a = Ipv4Addr::from(u32::from(Ipv4Addr::new(100, 64, 0, 0)) + i);
        let _ = writeln!(conf, "  route {a}/32 blackhole;");
    }
    conf.push_str("}\n");
    for (name, peer, local, asn) in [
        ("margay", "10.0.1.2", "10.0.1.1", 65001),
        ("birdrx", "10.0.2.2", "10.0.2.1", 65002),
    ] {
        let _ = writeln!(
            conf,
            "protocol bgp {name} {{ local {local} as 65000; neighbor {peer} as {asn}; \
             connect delay time 1; ipv4 {{ import none; export all; }}; }}"
        );
    }
    conf
}

const RECEIVER: &str = r#"router id 10.0.2.2;
protocol device { scan time 10; }
protocol kernel { ipv4 { import none; export all; }; }
protocol bgp feed { local 10.0.2.2 as 65002; neighbor 10.0.2.1 as 65000; passive on;
  ipv4 { import all; export none; }; }
"#;

fn vm_hwm_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Polls the namespace's table until `want` routes of `protocol` are in it; the time it
/// took from `t0`.
fn time_to_fill(ns: &TestNs, protocol: u8, want: usize, t0: Instant) -> Option<Duration> {
    let netns = NetNs::open(&support::netns_path(ns)).unwrap();
    let mut sock = RouteSocket::new_in(&netns).unwrap();
    let deadline = Duration::from_secs(300);
    loop {
        if count_routes(&mut sock, protocol) >= want {
            return Some(t0.elapsed());
        }
        if t0.elapsed() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn parent() {
    let n = routes_wanted();
    let feeder = TestNs::new("mgybgp");
    let (m, b) = (feeder.sibling(), feeder.sibling());
    link(&feeder, "10.0.1.1/24", &m, "10.0.1.2/24", 0);
    link(&feeder, "10.0.2.1/24", &b, "10.0.2.2/24", 1);

    let receiver = Bird::start(&b, RECEIVER);
    let exe = std::env::current_exe().unwrap();
    let mut child = support::Daemon(
        Command::new("ip")
            .args(["netns", "exec", m.name()])
            .arg(&exe)
            .env(CHILD_ENV, "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("starting the Margay child"),
    );
    let mut line = String::new();
    BufReader::new(child.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "ready", "margay child did not start");
    let margay_pid = child.0.id();

    let conf = feeder_config(n);
    let t0 = Instant::now();
    let feed = Bird::start(&feeder, &conf);
    let (margay_t, bird_t) = std::thread::scope(|s| {
        let mt = s.spawn(|| time_to_fill(&m, Route::PROTO_MARGAY_BGP, n, t0));
        let bt = s.spawn(|| time_to_fill(&b, PROTO_BIRD, n, t0));
        (mt.join().unwrap(), bt.join().unwrap())
    });
    let margay_mem = vm_hwm_kib(margay_pid);
    let bird_mem = vm_hwm_kib(receiver.pid());
    drop(child.0.stdin.take());

    let secs = |d: Option<Duration>| {
        d.map_or("timeout".to_owned(), |d| {
            format!("{:.2} s", d.as_secs_f64())
        })
    };
    println!("\n{n} IPv4 /32s from a BIRD feeder, from feeder start until all are in the receiver's kernel");
    println!(
        "{:<22} {:>12} {:>16}",
        "receiver", "time", "peak RSS (VmHWM)"
    );
    println!(
        "{:<22} {:>12} {:>12} KiB",
        "margay (speaker)",
        secs(margay_t),
        margay_mem
    );
    println!(
        "{:<22} {:>12} {:>12} KiB",
        "bird 2 (kernel proto)",
        secs(bird_t),
        bird_mem
    );
    if let (Some(mt), Some(bt)) = (margay_t, bird_t) {
        println!(
            "ratio margay/bird: time {:.2}, memory {:.2}",
            mt.as_secs_f64() / bt.as_secs_f64(),
            margay_mem as f64 / bird_mem.max(1) as f64
        );
    }
    let fed = feed.birdc(&["show", "protocols"]);
    if margay_t.is_none() || bird_t.is_none() {
        eprintln!("{fed}");
    }
}
