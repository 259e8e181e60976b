//! The policy benchmarks' cluster at issue 7's scale, shared by margay-nft's `policy_program`
//! (CPU side) and margay's `policy_latency` (with the agent): workload endpoints of node
//! [`NODE`] spread over [`NAMESPACES`] namespaces, and a mix of policies (2 in 10 Calico
//! NetworkPolicies with Deny and Allow, 1 in 10 GlobalNetworkPolicies with nets, the rest
//! Kubernetes NetworkPolicies with pod/namespace peers and numbered or named ports).

use margay_api::{decode, parse_documents, Resource};

pub const NODE: &str = "bench";
pub const NAMESPACES: usize = 10;

/// The `i`-th workload endpoint of [`NODE`], as YAML.
pub fn endpoint_yaml(i: usize) -> String {
    let ns = i % NAMESPACES;
    format!(
        "apiVersion: margay.dev/v1\nkind: WorkloadEndpoint\nmetadata:\n  name: {NODE}-k8s-p{i}-eth0\n  \
         namespace: ns{ns}\n  labels: {{app: app{}, tier: t{}, projectcalico.org/namespace: ns{ns}, \
         projectcalico.org/orchestrator: k8s}}\nspec:\n  orchestrator: k8s\n  node: {NODE}\n  pod: p{i}\n  \
         endpoint: eth0\n  interfaceName: mgy{i:011x}\n  ipNetworks: [\"10.{}.{}.{}/32\"]\n  profiles: [kns.ns{ns}]\n  \
         ports: [{{name: http, protocol: TCP, port: 8080}}]\n",
        i % 50,
        i % 3,
        10 + i / 65_536,
        (i / 256) % 256,
        i % 256
    )
}

/// The `i`-th policy, as YAML.
pub fn policy_yaml(i: usize) -> String {
    let ns = i % NAMESPACES;
    match i % 10 {
        0..=1 => format!(
            "apiVersion: projectcalico.org/v3\nkind: NetworkPolicy\nmetadata: {{name: cnp{i}, namespace: ns{ns}}}\n\
             spec:\n  order: {i}\n  selector: app == 'app{}'\n  ingress:\n  - action: Deny\n    source: {{selector: tier == 't{}'}}\n  \
             - action: Allow\n    protocol: TCP\n    destination: {{ports: [{}, http]}}\n",
            i % 50,
            i % 3,
            1000 + i
        ),
        2 => format!(
            "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {{name: gnp{i}}}\n\
             spec:\n  order: {i}\n  selector: tier == 't{}'\n  egress:\n  - action: Allow\n    destination: {{nets: [192.0.{}.0/24]}}\n",
            i % 3,
            i % 256
        ),
        _ => format!(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: knp{i}, namespace: ns{ns}}}\n\
             spec:\n  podSelector: {{matchLabels: {{app: app{}}}}}\n  ingress:\n  - from:\n    - podSelector: {{matchLabels: {{app: app{}}}}}\n    \
             - namespaceSelector: {{matchLabels: {{kubernetes.io/metadata.name: ns{}}}}}\n    ports: [{{port: {}}}]\n",
            i % 50,
            (i * 7) % 50,
            (i * 3) % NAMESPACES,
            if i.is_multiple_of(2) { "http".to_owned() } else { (80 + i % 20).to_string() }
        ),
    }
}

/// The first `endpoints` endpoints and then the first `policies` policies, one YAML document
/// each.
pub fn cluster_yaml(endpoints: usize, policies: usize) -> String {
    let mut text = String::new();
    for i in 0..endpoints {
        text.push_str(&endpoint_yaml(i));
        text.push_str("---\n");
    }
    for i in 0..policies {
        text.push_str(&policy_yaml(i));
        text.push_str("---\n");
    }
    text
}

/// [`cluster_yaml`], decoded.
pub fn resources(endpoints: usize, policies: usize) -> Vec<Resource> {
    parse_documents(&cluster_yaml(endpoints, policies))
        .expect("generated YAML parses")
        .into_iter()
        .map(|doc| decode(doc).expect("generated documents are valid").resource)
        .collect()
}

/// One generated document, decoded.
pub fn one(yaml: &str) -> Resource {
    let doc = parse_documents(yaml)
        .expect("generated YAML parses")
        .remove(0);
    decode(doc).expect("generated document is valid").resource
}
