//! What the kernel-facing tests need to run at all, and the cluster of the policy goldens.

use std::process::Command;

use margay_policy::Cluster;

/// margay-policy's golden cluster as YAML (namespaces x, y, z; pods on node1 and node2; a
/// Kubernetes policy, a Calico policy in a Pass tier, a global policy with a network set),
/// whose node1 program is `program.json` there and `policy-*.nft` here.
pub fn golden_yaml() -> String {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../margay-policy/tests/golden/program-cluster.yaml"
    );
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The cluster of Kubernetes, Calico or Margay YAML documents.
pub fn cluster(yaml: &str) -> Cluster {
    let resources = margay_api::parse_documents(yaml)
        .unwrap()
        .into_iter()
        .map(|doc| margay_api::decode(doc).unwrap().resource);
    Cluster::from_resources(resources).unwrap_or_else(|e| panic!("{e}"))
}

pub fn golden_cluster() -> Cluster {
    cluster(&golden_yaml())
}
/// Why this process cannot run nft against the kernel, if it cannot.
pub fn missing_nft_or_root() -> Option<&'static str> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    // "Uid:\treal\teffective\t…"
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1));
    if euid != Some("0") {
        Some("needs root")
    } else if Command::new("nft").arg("--version").output().is_err() {
        Some("nft is not installed")
    } else {
        None
    }
}
