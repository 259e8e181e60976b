//! The cluster of the policy goldens (margay-policy's `program-cluster.yaml`, which
//! margay-nft's goldens use too).

#![allow(dead_code)] // Each test binary uses part of it.

use margay_policy::Cluster;

/// margay-policy's golden cluster as YAML (namespaces x, y, z; pods on node1 and node2; a
/// Kubernetes policy, a Calico policy in a Pass tier, a global policy with a network set).
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
