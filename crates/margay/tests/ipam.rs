//! `margay ipam` end to end: many real processes on many nodes against a real etcd (and
//! SQLite), crashes included.

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use margay_datastore::testing::EtcdServer;

struct Env {
    url: String,
    dir: tempfile::TempDir,
}

impl Env {
    fn new(url: Option<String>) -> Env {
        let dir = tempfile::tempdir().unwrap();
        let url = url.unwrap_or_else(|| format!("sqlite://{}", dir.path().join("t.db").display()));
        Env { url, dir }
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_margay"));
        c.arg("--datastore").arg(&self.url).args(args);
        c.env_remove("MARGAY_DATASTORE");
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "margay {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn apply(&self, text: &str) {
        let path = self.dir.path().join("apply.yaml");
        std::fs::write(&path, text).unwrap();
        self.ok(&["apply", "-f", path.to_str().unwrap()]);
    }

    fn setup(&self, pool: &str, block_size: u8, nodes: usize) {
        let mut text = format!(
            "apiVersion: margay.dev/v1\nkind: IPPool\nmetadata:\n  name: pool\nspec:\n  cidr: {pool}\n  blockSize: {block_size}\n"
        );
        for i in 0..nodes {
            text.push_str(&format!(
                "---\napiVersion: margay.dev/v1\nkind: Node\nmetadata:\n  name: node{i}\n"
            ));
        }
        self.apply(&text);
    }

    /// Blocks: CIDR → affinity, from `get ipamblocks -o json`.
    fn blocks(&self) -> Vec<(ipnet::IpNet, String, usize)> {
        let json: serde_json::Value =
            serde_json::from_str(&self.ok(&["get", "ipamblocks", "-o", "json"])).unwrap();
        json["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| {
                let used = b["spec"]["allocations"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|a| !a.is_null())
                    .count();
                (
                    b["spec"]["cidr"].as_str().unwrap().parse().unwrap(),
                    b["spec"]["affinity"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                    used,
                )
            })
            .collect()
    }
}

/// 8 parallel loops over 4 nodes: distinct addresses, each in a block affine to its node;
/// `ipam show` agrees; releasing every handle leaves nothing in use.
fn parallel_assign_and_release(env: &Env, per_loop: usize) {
    env.setup("10.244.0.0/16", 26, 4);
    let results: Vec<Vec<(usize, IpAddr)>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|l| {
                s.spawn(move || {
                    (0..per_loop)
                        .map(|i| {
                            let node = format!("node{}", l % 4);
                            let handle = format!("h-{l}-{i}");
                            let out =
                                env.ok(&["ipam", "assign", "--node", &node, "--handle", &handle]);
                            (l % 4, out.trim().parse().unwrap())
                        })
                        .collect()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let all: Vec<(usize, IpAddr)> = results.into_iter().flatten().collect();
    let distinct: HashSet<IpAddr> = all.iter().map(|(_, ip)| *ip).collect();
    assert_eq!(all.len(), 8 * per_loop);
    assert_eq!(distinct.len(), all.len(), "an address was handed out twice");

    let blocks = env.blocks();
    for (node, ip) in &all {
        let (cidr, affinity, _) = blocks.iter().find(|(c, _, _)| c.contains(ip)).unwrap();
        assert_eq!(affinity, &format!("host:node{node}"), "{ip} in {cidr}");
    }
    let in_use: usize = blocks.iter().map(|(_, _, u)| u).sum();
    assert_eq!(in_use, all.len());
    let show = env.ok(&["ipam", "show", "--show-blocks"]);
    let pool_row: Vec<&str> = show
        .lines()
        .find(|l| l.starts_with("IP Pool"))
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(
        pool_row[2..5],
        ["10.244.0.0/16", "65536", &all.len().to_string()],
        "{show}"
    );
    assert_eq!(
        show.lines().filter(|l| l.starts_with("Block")).count(),
        blocks.len()
    );

    std::thread::scope(|s| {
        for l in 0..8 {
            s.spawn(move || {
                for i in 0..per_loop {
                    env.ok(&["ipam", "release", "--handle", &format!("h-{l}-{i}")]);
                }
            });
        }
    });
    let in_use: usize = env.blocks().iter().map(|(_, _, u)| u).sum();
    assert_eq!(in_use, 0);
    assert_eq!(env.ok(&["get", "ipamhandles", "-o", "name"]), "");
    env.ok(&["ipam", "check"]);
}

#[test]
fn parallel_processes_on_etcd() {
    let etcd = EtcdServer::start();
    parallel_assign_and_release(&Env::new(Some(etcd.url())), 100);
}

#[test]
fn parallel_processes_on_sqlite() {
    parallel_assign_and_release(&Env::new(None), 25);
}

#[test]
fn strict_affinity_refuses_to_borrow() {
    let env = Env::new(None);
    env.setup("10.30.0.0/24", 26, 2);
    env.ok(&[
        "ipam",
        "configure",
        "--strict-affinity=true",
        "--max-blocks-per-host",
        "1",
    ]);
    env.ok(&["ipam", "assign", "--node", "node1", "--handle", "b"]);
    env.ok(&[
        "ipam", "assign", "--node", "node0", "--handle", "a", "--num", "64",
    ]);
    let out = env.run(&["ipam", "assign", "--node", "node0", "--handle", "a2"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("strict affinity is on") && err.contains("may not borrow"),
        "{err}"
    );

    env.ok(&["ipam", "configure", "--strict-affinity=false"]);
    let ip: IpAddr = env
        .ok(&["ipam", "assign", "--node", "node0", "--handle", "a2"])
        .trim()
        .parse()
        .unwrap();
    let borrowed = env.ok(&["ipam", "show", "--show-borrowed"]);
    assert!(
        borrowed.contains(&ip.to_string()) && borrowed.contains("node1"),
        "{borrowed}"
    );
    let who = env.ok(&["ipam", "show", "--ip", &ip.to_string()]);
    assert!(
        who.contains("handle: a2") && who.contains("node: node0"),
        "{who}"
    );
}

#[test]
fn ipam_errors_are_one_line() {
    let env = Env::new(None);
    env.setup("10.31.0.0/30", 30, 1);
    env.apply("apiVersion: margay.dev/v1\nkind: IPReservation\nmetadata:\n  name: r\nspec:\n  reservedCIDRs: [10.31.0.3]\n");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--ip", "10.31.0.3"], "10.31.0.3 is reserved by IPReservation r"),
        (vec!["--ip", "192.0.2.1"], "192.0.2.1 is not in any IP pool"),
        (vec!["--num", "4"], "IP pools exhausted: no free IPv4 address for node \"node0\" in pools pool (10.31.0.0/30)"),
        (vec!["--ipv6", "1", "--num", "0"], "no enabled IP pool selects node \"node0\" for IPv6 workload addresses"),
    ];
    for (extra, expected) in cases {
        let mut args = vec!["ipam", "assign", "--node", "node0", "--handle", "x"];
        args.extend(extra);
        let out = env.run(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains(expected), "{args:?}: {err}");
    }
    assert!(env.blocks().iter().all(|(_, _, used)| *used == 0));
}

/// `kill -9` assigners at random moments, repeatedly: no duplicate ever, and GC with a
/// short grace period reclaims every leak.
#[test]
fn crashed_assigners_leave_no_duplicates_and_gc_reclaims_leaks() {
    let env = Env::new(None);
    env.setup("10.40.0.0/22", 28, 3);
    let mut killed = 0;
    for round in 0..12 {
        let children: Vec<_> = (0..6)
            .map(|i| {
                env.cmd(&[
                    "ipam",
                    "assign",
                    "--node",
                    &format!("node{}", i % 3),
                    "--handle",
                    &format!("crash-{round}-{i}"),
                    "--num",
                    "3",
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
            })
            .collect();
        // Spread the kills over a process's life: start-up, reads, writes.
        std::thread::sleep(Duration::from_millis(3 + (round * 7) % 40));
        for mut c in children {
            if c.try_wait().unwrap().is_none() {
                c.kill().unwrap();
                killed += 1;
            }
            c.wait().unwrap();
        }
    }
    assert!(
        killed > 0,
        "no assigner was killed mid-flight; the test proves nothing"
    );

    let report_path = env.dir.path().join("report.json");
    let _ = env.run(&["ipam", "check", "-o", report_path.to_str().unwrap()]);
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report_path).unwrap()).unwrap();
    let kinds: BTreeMap<String, usize> =
        report["problems"]
            .as_array()
            .unwrap()
            .iter()
            .fold(BTreeMap::new(), |mut m, p| {
                *m.entry(p["kind"].as_str().unwrap().to_owned()).or_default() += 1;
                m
            });
    assert!(!kinds.contains_key("duplicateAddress"), "{kinds:?}");

    env.ok(&[
        "ipam",
        "gc",
        "--grace-period",
        "1s",
        "--interval",
        "250ms",
        "--until-clean",
        "--timeout",
        "60s",
    ]);
    let out = env.run(&["ipam", "check"]);
    assert!(
        out.status.success(),
        "leaks left after GC: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    // What GC left is what assigners recorded: the blocks' allocations equal the handles'
    // counts, and no handle holds more than it asked for.
    let handles: serde_json::Value =
        serde_json::from_str(&env.ok(&["get", "ipamhandles", "-o", "json"])).unwrap();
    let counts: Vec<u64> = handles["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            h["spec"]["block"]
                .as_object()
                .unwrap()
                .values()
                .map(|v| v.as_u64().unwrap())
                .sum()
        })
        .collect();
    assert!(counts.iter().all(|c| (1..=3).contains(c)), "{counts:?}");
    let in_use: usize = env.blocks().iter().map(|(_, _, u)| u).sum();
    assert_eq!(in_use as u64, counts.iter().sum::<u64>());
}
