//! The node agent's scripts and the policy tables of margay-policy's golden program, compared
//! byte for byte with `tests/golden/*.nft`, and checked by nft itself (`nft -c`: parse and
//! validate against the kernel, change nothing).
//!
//! Regenerate after an intended change: `MARGAY_UPDATE_GOLDEN=1 cargo test -p margay-nft
//! --test golden`, then review the diff.

use std::path::PathBuf;
use std::process::Command;

use margay_nft::policy::{self, AddressFamily};
use margay_nft::{render, NodeRules};
use margay_testkit::fixture::golden_node1;

mod common;

fn cases() -> Vec<(&'static str, NodeRules)> {
    let v4 = |s: &str| s.parse().unwrap();
    let v6 = |s: &str| s.parse().unwrap();
    let addr = |s: &str| s.parse().unwrap();
    vec![
        ("empty", NodeRules::default()),
        (
            "v4-nat",
            NodeRules {
                nat_outgoing_v4: vec![v4("10.244.0.0/16")],
                // Unsorted, duplicated and nested on purpose: the script must not care.
                all_pools_v4: vec![
                    v4("10.244.0.0/16"),
                    v4("172.16.0.0/24"),
                    v4("10.244.0.0/16"),
                    v4("10.244.128.0/18"),
                ],
                ..NodeRules::default()
            },
        ),
        (
            "vxlan-ipip",
            NodeRules {
                nat_outgoing_v4: vec![v4("10.244.0.0/16")],
                all_pools_v4: vec![v4("10.244.0.0/16")],
                cluster_nodes_v4: vec![
                    addr("192.0.2.12"),
                    addr("192.0.2.10"),
                    addr("198.51.100.7"),
                ],
                vxlan_port: Some(4789),
                ipip: true,
                ..NodeRules::default()
            },
        ),
        (
            // No node known yet: every overlay packet is dropped, and the empty set must
            // still be valid nft.
            "vxlan-no-nodes",
            NodeRules {
                vxlan_port: Some(4789),
                ..NodeRules::default()
            },
        ),
        (
            "dual-stack",
            NodeRules {
                nat_outgoing_v4: vec![v4("10.244.0.0/16")],
                all_pools_v4: vec![v4("10.244.0.0/16"), v4("10.250.0.0/16")],
                nat_outgoing_v6: vec![v6("fd00:10:244::/56")],
                all_pools_v6: vec![v6("fd00:10:244::/56"), v6("fd00:10:250::/56")],
                cluster_nodes_v4: vec![addr("192.0.2.10")],
                vxlan_port: Some(4789),
                ipip: false,
            },
        ),
    ]
}

/// Every golden script: the node agent's cases, and node1's policy tables.
fn scripts() -> Vec<(&'static str, String)> {
    let mut scripts: Vec<(&str, String)> = cases()
        .into_iter()
        .map(|(name, rules)| (name, render(&rules)))
        .collect();
    let node1 = golden_node1();
    scripts.push(("policy-ipv4", policy::render(&node1, AddressFamily::Ipv4)));
    scripts.push(("policy-ipv6", policy::render(&node1, AddressFamily::Ipv6)));
    scripts
}

fn golden_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(format!("{name}.nft"))
}

#[test]
fn scripts_match_golden_files() {
    let update = std::env::var_os("MARGAY_UPDATE_GOLDEN").is_some();
    for (name, script) in scripts() {
        let path = golden_path(name);
        if update {
            std::fs::write(&path, &script).unwrap();
            continue;
        }
        let golden = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (set MARGAY_UPDATE_GOLDEN=1)", path.display()));
        assert!(
            script == golden,
            "{name}: the script differs from {}; after an intended change, regenerate with \
             MARGAY_UPDATE_GOLDEN=1\n--- rendered ---\n{script}--- golden ---\n{golden}",
            path.display()
        );
    }
}

#[test]
fn golden_files_pass_nft_check() {
    // Check mode still talks to the kernel (it validates there, then aborts the transaction),
    // so it needs CAP_NET_ADMIN.
    if let Some(why) = common::missing_nft_or_root() {
        eprintln!("skipped: {why}");
        return;
    }
    for (name, _) in scripts() {
        let path = golden_path(name);
        let out = Command::new("nft")
            .arg("-c")
            .arg("-f")
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "nft -c -f {}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
