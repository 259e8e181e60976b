//! margay-policy's golden cluster, and YAML documents as a cluster.

use margay_policy::program::{program, Program};
use margay_policy::Cluster;

/// margay-policy's golden cluster as YAML (namespaces x, y, z; pods on node1 and node2; a
/// Kubernetes policy, a Calico policy in a Pass tier, a global policy with a network set),
/// whose node1 program is `program.json` there, margay-nft's `policy-*.nft` and
/// margay-iptables' `policy-*.{rules,ipset}`.
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

/// The golden cluster's program for node1.
pub fn golden_node1() -> Program {
    program(&golden_cluster(), "node1")
}

/// A YAML document to append to the golden cluster: a db pod `y/d` starting on node2 at
/// 10.1.1.3, next to `y/b`. node1's program only sees its address in sets.
pub const POD_D_ON_NODE2: &str = "---
apiVersion: margay.dev/v1
kind: WorkloadEndpoint
metadata:
  name: node2-k8s-d-eth0
  namespace: y
  labels: {pod: d, app: db}
spec:
  orchestrator: k8s
  node: node2
  pod: d
  endpoint: eth0
  interfaceName: mgy0000000000d
  ipNetworks: [10.1.1.3/32, \"fd00:10:1::4/128\"]
  profiles: [kns.y]
  ports: [{name: web, protocol: TCP, port: 5432}]
";

/// node1's address in the golden cluster (its Node resource's).
pub const NODE1_ADDRESS: &str = "198.18.0.11";

/// A YAML document to append to the golden cluster: node1 accepts what its workloads send
/// it (after their egress policy) instead of Calico's default, Drop.
pub const NODE1_ACCEPTS_WORKLOADS: &str = "---
apiVersion: projectcalico.org/v3
kind: FelixConfiguration
metadata: {name: node.node1}
spec: {defaultEndpointToHostAction: Accept}
";

/// A YAML document to append to the golden cluster: node1's host endpoint lets TCP 80 in
/// from 192.0.2.0/24 and TCP 81 out to it (which its other policies do not).
pub const NODE1_OUTSIDE_POLICY: &str = "---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: outside}
spec:
  order: 50
  selector: host == 'node1'
  types: [Ingress, Egress]
  ingress: [{action: Allow, protocol: TCP, source: {nets: [192.0.2.0/24]}, destination: {ports: [80]}}]
  egress: [{action: Allow, protocol: TCP, destination: {nets: [192.0.2.0/24], ports: [81]}}]
";
