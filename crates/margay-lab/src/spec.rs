//! What a lab is made of: the YAML `--spec` file, or the defaults behind `--nodes N
//! --pods-per-node K`, checked as a whole before anything is created.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use ipnet::{IpNet, Ipv4Net};
use margay_api::validate;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::probe::Protocol;

/// How pod traffic crosses between nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// One subnet; every pool `vxlanMode: Always`.
    Vxlan,
    /// Two subnets joined by a router; pools `vxlanMode: CrossSubnet`, so same-subnet
    /// traffic is routed directly and cross-subnet traffic goes through VXLAN.
    Crosssubnet,
    /// One subnet; pools `ipipMode: Always` (needs the kernel's ipip module).
    Ipip,
    /// Native routing by BGP.
    Bgp,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Vxlan => "vxlan",
            Mode::Crosssubnet => "crosssubnet",
            Mode::Ipip => "ipip",
            Mode::Bgp => "bgp",
        }
    }

    /// The pool's `vxlanMode` and `ipipMode`.
    fn encapsulation(self) -> (&'static str, &'static str) {
        match self {
            Mode::Vxlan => ("Always", "Never"),
            Mode::Crosssubnet => ("CrossSubnet", "Never"),
            Mode::Ipip => ("Never", "Always"),
            Mode::Bgp => ("Never", "Never"),
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Mode, String> {
        match s {
            "vxlan" => Ok(Mode::Vxlan),
            "crosssubnet" => Ok(Mode::Crosssubnet),
            "ipip" => Ok(Mode::Ipip),
            "bgp" => Ok(Mode::Bgp),
            _ => Err(format!(
                "{s:?} is not a lab mode (vxlan, crosssubnet, ipip, bgp)"
            )),
        }
    }
}

/// Where the lab's cluster keeps its state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DatastoreKind {
    /// One SQLite file in the lab's directory, shared by every node.
    Sqlite,
    /// A real etcd started for the lab in the fabric namespace.
    Etcd,
}

impl DatastoreKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DatastoreKind::Sqlite => "sqlite",
            DatastoreKind::Etcd => "etcd",
        }
    }
}

impl FromStr for DatastoreKind {
    type Err = String;
    fn from_str(s: &str) -> Result<DatastoreKind, String> {
        match s {
            "sqlite" => Ok(DatastoreKind::Sqlite),
            "etcd" => Ok(DatastoreKind::Etcd),
            _ => Err(format!("{s:?} is not a lab datastore (sqlite, etcd)")),
        }
    }
}

/// A port a pod's server listens on, named so policies can refer to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortSpec {
    pub name: String,
    pub port: u16,
    pub protocol: Protocol,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamespaceSpec {
    pub name: String,
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodSpec {
    pub namespace: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub node: String,
    pub ports: Vec<PortSpec>,
}

impl PodSpec {
    /// `namespace/name`, the key of matrices and of `lab exec`.
    pub fn id(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolSpec {
    pub name: String,
    pub cidr: Ipv4Net,
    pub block_size: u8,
}

/// A checked lab: everything `lab up` needs, nothing left to default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LabSpec {
    pub mode: Mode,
    pub datastore: DatastoreKind,
    /// The node network; its first /24 is the (first) node subnet.
    pub fabric: Ipv4Net,
    pub nodes: Vec<String>,
    pub pools: Vec<PoolSpec>,
    pub namespaces: Vec<NamespaceSpec>,
    pub pods: Vec<PodSpec>,
    /// Extra documents to apply (policies…), in order.
    pub resources: Vec<Value>,
    /// `bgp` mode: the first this many nodes are route reflectors, the mesh is off, and
    /// every node peers with the reflectors; 0 is the full mesh.
    #[serde(default)]
    pub route_reflectors: usize,
}

/// The lab's route reflectors' cluster ID and label, as in Calico's documentation.
pub const RR_CLUSTER_ID: &str = "244.0.0.1";
pub const RR_LABEL: &str = "route-reflector";
/// How long a lost BGP peer's routes are kept in `bgp` mode (graceful restart), instead of
/// the 120 s default: a node that dies is routed around within seconds.
pub const LAB_BGP_MAX_RESTART: &str = "3s";

pub const DEFAULT_FABRIC: &str = "172.30.0.0/16";
pub const DEFAULT_POOL: &str = "10.244.0.0/16";
pub const DEFAULT_BLOCK_SIZE: u8 = 26;
/// Ports every pod serves when none are declared, as in the upstream network-policy suite.
pub const DEFAULT_PORTS: [u16; 2] = [80, 81];
/// Node addresses are `.11` upwards in their /24, so at most this many nodes.
pub const MAX_NODES: usize = 200;

/// The whole spec file, as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct SpecFile {
    mode: Option<String>,
    datastore: Option<String>,
    fabric: Option<String>,
    #[serde(default)]
    nodes: Vec<NodeEntry>,
    #[serde(default)]
    pools: Vec<PoolEntry>,
    #[serde(default)]
    namespaces: Vec<NamespaceEntry>,
    #[serde(default)]
    pods: Vec<PodEntry>,
    #[serde(default)]
    resources: Vec<Value>,
    route_reflectors: Option<i64>,
}

/// A node is a name, or `{name: …}`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum NodeEntry {
    Name(String),
    Object { name: String },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct PoolEntry {
    name: Option<String>,
    cidr: String,
    block_size: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NamespaceEntry {
    name: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PodEntry {
    namespace: Option<String>,
    name: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    node: Option<String>,
    ports: Option<Vec<PortEntry>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PortEntry {
    name: Option<String>,
    // Wider than u16 so an out-of-range value gets our message, not serde's.
    port: i64,
    protocol: Option<String>,
}

/// Flags of `lab up`; for `mode` and `datastore` a flag wins over the spec.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub mode: Option<Mode>,
    pub datastore: Option<DatastoreKind>,
    /// `--route-reflectors N`.
    pub route_reflectors: Option<usize>,
}

/// A spec that cannot be used; `Display` is one line naming the file and field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{origin}: {field}: {message}")]
pub struct SpecError {
    pub origin: String,
    pub field: String,
    pub message: String,
}

/// The lab made by `--nodes N --pods-per-node K`: nodes `node-1…`, pods `pod-<node>-<k>`
/// in namespace `default` labelled `app=<pod>`, serving TCP and UDP on ports 80 and 81.
pub fn default_spec(
    nodes: usize,
    pods_per_node: usize,
    overrides: &Overrides,
) -> Result<LabSpec, SpecError> {
    let mut file = SpecFile::default();
    for n in 1..=nodes {
        file.nodes.push(NodeEntry::Name(format!("node-{n}")));
        for k in 1..=pods_per_node {
            let name = format!("pod-{n}-{k}");
            file.pods.push(PodEntry {
                namespace: None,
                labels: BTreeMap::from([("app".to_owned(), name.clone())]),
                name,
                node: Some(format!("node-{n}")),
                ports: None,
            });
        }
    }
    check(file, "--nodes", overrides)
}

/// Parses and checks a spec file's text; `origin` names it in errors.
pub fn parse_spec(text: &str, origin: &str, overrides: &Overrides) -> Result<LabSpec, SpecError> {
    let err = |field: &str, message: String| SpecError {
        origin: origin.to_owned(),
        field: field.to_owned(),
        message,
    };
    let deserializer = serde_norway::Deserializer::from_str(text);
    let file: SpecFile = serde_path_to_error::deserialize(deserializer).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." { "(top)".into() } else { path };
        let message = e.into_inner().to_string();
        // The YAML parser may name part of the path itself ("pods[0]: unknown field…").
        let message = match message.split_once(": ") {
            Some((prefix, rest)) if field.starts_with(prefix) => rest.to_owned(),
            _ => message,
        };
        err(&field, message)
    })?;
    check(file, origin, overrides)
}

fn check(file: SpecFile, origin: &str, overrides: &Overrides) -> Result<LabSpec, SpecError> {
    let err = |field: String, message: String| SpecError {
        origin: origin.to_owned(),
        field,
        message,
    };
    let mode = match (overrides.mode, &file.mode) {
        (Some(m), _) => m,
        (None, Some(m)) => m.parse().map_err(|e| err("mode".into(), e))?,
        (None, None) => Mode::Vxlan,
    };
    let datastore = match (overrides.datastore, &file.datastore) {
        (Some(d), _) => d,
        (None, Some(d)) => d.parse().map_err(|e| err("datastore".into(), e))?,
        (None, None) => DatastoreKind::Sqlite,
    };
    let fabric_text = file.fabric.as_deref().unwrap_or(DEFAULT_FABRIC);
    let fabric: Ipv4Net = fabric_text.parse().map_err(|_| {
        err(
            "fabric".into(),
            format!("{fabric_text:?} is not an IPv4 CIDR like {DEFAULT_FABRIC}"),
        )
    })?;
    if fabric.prefix_len() > 23 {
        return Err(err(
            "fabric".into(),
            format!("{fabric} is too small: the lab needs a /23 or larger (two /24 subnets)"),
        ));
    }
    let fabric = fabric.trunc();

    if file.nodes.is_empty() {
        return Err(err("nodes".into(), "a lab needs at least one node".into()));
    }
    if file.nodes.len() > MAX_NODES {
        return Err(err(
            "nodes".into(),
            format!(
                "{} nodes; a lab holds at most {MAX_NODES}",
                file.nodes.len()
            ),
        ));
    }
    let route_reflectors = match (overrides.route_reflectors, file.route_reflectors) {
        (Some(n), _) => n as i64,
        (None, Some(n)) => n,
        (None, None) => 0,
    };
    let rr_field = if overrides.route_reflectors.is_some() {
        "--route-reflectors"
    } else {
        "routeReflectors"
    };
    if route_reflectors < 0 || route_reflectors as usize > file.nodes.len() {
        return Err(err(
            rr_field.into(),
            format!(
                "{route_reflectors} is not between 0 and the number of nodes ({})",
                file.nodes.len()
            ),
        ));
    }
    if route_reflectors > 0 && mode != Mode::Bgp {
        return Err(err(
            rr_field.into(),
            format!("route reflectors need --mode bgp (this lab is {mode})"),
        ));
    }
    let route_reflectors = route_reflectors as usize;
    let mut nodes = Vec::new();
    for (i, entry) in file.nodes.iter().enumerate() {
        let name = match entry {
            NodeEntry::Name(n) | NodeEntry::Object { name: n } => n.clone(),
        };
        dns_label(&name).map_err(|m| err(format!("nodes[{i}]"), m))?;
        if nodes.contains(&name) {
            return Err(err(
                format!("nodes[{i}]"),
                format!("duplicate node {name:?}"),
            ));
        }
        nodes.push(name);
    }

    let mut pools = Vec::new();
    let pool_entries = if file.pools.is_empty() {
        vec![PoolEntry {
            name: None,
            cidr: DEFAULT_POOL.into(),
            block_size: None,
        }]
    } else {
        file.pools
    };
    for (i, p) in pool_entries.iter().enumerate() {
        let field = |f: &str| format!("pools[{i}].{f}");
        let cidr: IpNet = p.cidr.parse().map_err(|_| {
            err(
                field("cidr"),
                format!("{:?} is not a CIDR like {DEFAULT_POOL}", p.cidr),
            )
        })?;
        let IpNet::V4(cidr) = cidr else {
            return Err(err(
                field("cidr"),
                format!("{cidr}: IPv6 pools are not supported in the lab (the agent has no IPv6 overlay yet)"),
            ));
        };
        let cidr = cidr.trunc();
        if cidr.contains(&fabric.network()) || fabric.contains(&cidr.network()) {
            return Err(err(
                field("cidr"),
                format!("{cidr} overlaps the lab fabric {fabric} (the node network)"),
            ));
        }
        for reserved in ["127.0.0.0/8", "169.254.0.0/16", "224.0.0.0/4"] {
            let reserved: Ipv4Net = reserved.parse().expect("constant CIDR");
            if cidr.contains(&reserved.network()) || reserved.contains(&cidr.network()) {
                return Err(err(
                    field("cidr"),
                    format!("{cidr} overlaps the reserved range {reserved}"),
                ));
            }
        }
        if let Some(other) = pools.iter().find(|o: &&PoolSpec| {
            o.cidr.contains(&cidr.network()) || cidr.contains(&o.cidr.network())
        }) {
            return Err(err(
                field("cidr"),
                format!("{cidr} overlaps pool {} ({})", other.name, other.cidr),
            ));
        }
        let block_size = match p.block_size {
            None => DEFAULT_BLOCK_SIZE,
            Some(b) if (i64::from(cidr.prefix_len())..=32).contains(&b) => b as u8,
            Some(b) => {
                return Err(err(
                    field("blockSize"),
                    format!(
                        "{b} must be between the pool's prefix /{} and 32",
                        cidr.prefix_len()
                    ),
                ))
            }
        };
        let name = p.name.clone().unwrap_or_else(|| {
            if i == 0 {
                "default-ipv4-ippool".into()
            } else {
                format!("lab-pool-{}", i + 1)
            }
        });
        dns_subdomain(&name).map_err(|m| err(field("name"), m))?;
        pools.push(PoolSpec {
            name,
            cidr,
            block_size,
        });
    }

    let mut namespaces: Vec<NamespaceSpec> = Vec::new();
    for (i, ns) in file.namespaces.iter().enumerate() {
        dns_label(&ns.name).map_err(|m| err(format!("namespaces[{i}].name"), m))?;
        if namespaces.iter().any(|n| n.name == ns.name) {
            return Err(err(
                format!("namespaces[{i}].name"),
                format!("duplicate namespace {:?}", ns.name),
            ));
        }
        labels(&ns.labels).map_err(|m| err(format!("namespaces[{i}].labels"), m))?;
        namespaces.push(NamespaceSpec {
            name: ns.name.clone(),
            labels: with_name_label(&ns.name, &ns.labels),
        });
    }

    let mut pods: Vec<PodSpec> = Vec::new();
    let mut seen = BTreeMap::new();
    for (i, p) in file.pods.iter().enumerate() {
        let field = |f: &str| format!("pods[{i}].{f}");
        let namespace = p.namespace.clone().unwrap_or_else(|| "default".into());
        dns_label(&namespace).map_err(|m| err(field("namespace"), m))?;
        dns_label(&p.name).map_err(|m| err(field("name"), m))?;
        let id = format!("{namespace}/{}", p.name);
        if let Some(first) = seen.insert(id.clone(), i) {
            return Err(err(
                format!("pods[{i}]"),
                format!("duplicate pod {id} (also pods[{first}])"),
            ));
        }
        labels(&p.labels).map_err(|m| err(field("labels"), m))?;
        let node = match &p.node {
            Some(n) if nodes.contains(n) => n.clone(),
            Some(n) => {
                return Err(err(
                    field("node"),
                    format!("unknown node {n:?} (nodes: {})", nodes.join(", ")),
                ))
            }
            // Spread pods without a node over the nodes in turn.
            None => nodes[i % nodes.len()].clone(),
        };
        let ports = match &p.ports {
            None => default_ports(),
            Some(ports) => {
                let mut out: Vec<PortSpec> = Vec::new();
                for (j, port) in ports.iter().enumerate() {
                    let field = |f: &str| format!("pods[{i}].ports[{j}].{f}");
                    let number = u16::try_from(port.port)
                        .ok()
                        .filter(|p| *p != 0)
                        .ok_or_else(|| {
                            err(
                                field("port"),
                                format!("{} is out of range 1-65535", port.port),
                            )
                        })?;
                    let protocol = match port.protocol.as_deref() {
                        None => Protocol::Tcp,
                        Some(text) => lab_protocol(text).map_err(|m| err(field("protocol"), m))?,
                    };
                    let name = port
                        .name
                        .clone()
                        .unwrap_or_else(|| port_name(number, protocol));
                    validate::check_port_name(&name).map_err(|m| err(field("name"), m))?;
                    if out.iter().any(|o| o.name == name) {
                        return Err(err(field("name"), format!("duplicate port name {name:?}")));
                    }
                    if out
                        .iter()
                        .any(|o| o.port == number && o.protocol == protocol)
                    {
                        return Err(err(
                            field("port"),
                            format!("{number}/{protocol} is declared twice"),
                        ));
                    }
                    out.push(PortSpec {
                        name,
                        port: number,
                        protocol,
                    });
                }
                out
            }
        };
        if !namespaces.iter().any(|n| n.name == namespace) {
            namespaces.push(NamespaceSpec {
                name: namespace.clone(),
                labels: with_name_label(&namespace, &BTreeMap::new()),
            });
        }
        pods.push(PodSpec {
            namespace,
            name: p.name.clone(),
            labels: p.labels.clone(),
            node,
            ports,
        });
    }

    let spec = LabSpec {
        mode,
        datastore,
        fabric,
        nodes,
        pools,
        namespaces,
        pods,
        resources: file.resources,
        route_reflectors,
    };
    // Every document is decoded now, so a bad one stops `up` before anything exists.
    for (i, doc) in spec.documents().into_iter().enumerate() {
        let what = margay_api::document::describe_document(&doc);
        margay_api::decode(doc).map_err(|e| {
            let field = if i >= spec.generated_documents() {
                format!("resources[{}]", i - spec.generated_documents())
            } else {
                what
            };
            err(field, e.to_string())
        })?;
    }
    Ok(spec)
}

impl LabSpec {
    /// Number of documents made from pools, namespaces and pods (before `resources`).
    fn generated_documents(&self) -> usize {
        self.pools.len() + self.namespaces.len() + self.pods.len() + self.bgp_documents().len()
    }

    /// `bgp` mode: BGPConfiguration `default` (mesh on unless there are route reflectors;
    /// a short graceful-restart time), and with reflectors their Nodes (label and cluster
    /// ID, before the agents register them) and the BGPPeer every node uses to peer with
    /// them, as Calico documents.
    fn bgp_documents(&self) -> Vec<Value> {
        if self.mode != Mode::Bgp {
            return Vec::new();
        }
        let mesh = self.route_reflectors == 0;
        let mut docs = vec![json!({
            "apiVersion": "projectcalico.org/v3",
            "kind": "BGPConfiguration",
            "metadata": {"name": "default"},
            "spec": {
                "nodeToNodeMeshEnabled": mesh,
                "nodeMeshMaxRestartTime": LAB_BGP_MAX_RESTART,
            },
        })];
        if mesh {
            return docs;
        }
        for node in self.nodes.iter().take(self.route_reflectors) {
            docs.push(json!({
                "apiVersion": "projectcalico.org/v3",
                "kind": "Node",
                "metadata": {"name": node, "labels": {RR_LABEL: "true"}},
                "spec": {"bgp": {"routeReflectorClusterID": RR_CLUSTER_ID}},
            }));
        }
        docs.push(json!({
            "apiVersion": "projectcalico.org/v3",
            "kind": "BGPPeer",
            "metadata": {"name": "peer-with-route-reflectors"},
            "spec": {
                "nodeSelector": "all()",
                "peerSelector": format!("{RR_LABEL} == 'true'"),
                "maxRestartTime": LAB_BGP_MAX_RESTART,
            },
        }));
        docs
    }

    /// Everything `up` stores: pools (encapsulated as the mode says), Namespaces, Pods (node
    /// and named ports, so endpoints carry them), then the spec's own resources.
    pub fn documents(&self) -> Vec<Value> {
        let (vxlan, ipip) = self.mode.encapsulation();
        let mut docs = Vec::new();
        for p in &self.pools {
            docs.push(json!({
                "apiVersion": "projectcalico.org/v3",
                "kind": "IPPool",
                "metadata": {"name": p.name},
                "spec": {
                    "cidr": p.cidr.to_string(),
                    "blockSize": p.block_size,
                    "vxlanMode": vxlan,
                    "ipipMode": ipip,
                    // The lab is closed: nothing leaves it, so nothing is masqueraded.
                    "natOutgoing": false,
                    "nodeSelector": "all()",
                },
            }));
        }
        for ns in &self.namespaces {
            docs.push(json!({
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {"name": ns.name, "labels": ns.labels},
            }));
        }
        for pod in &self.pods {
            let ports: Vec<Value> = pod
                .ports
                .iter()
                .map(|p| {
                    json!({"name": p.name, "containerPort": p.port, "protocol": p.protocol.to_string()})
                })
                .collect();
            docs.push(json!({
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": pod.name, "namespace": pod.namespace, "labels": pod.labels},
                "spec": {
                    "nodeName": pod.node,
                    "containers": [{"name": "serve", "ports": ports}],
                },
            }));
        }
        docs.extend(self.bgp_documents());
        docs.extend(self.resources.iter().cloned());
        docs
    }
}

fn default_ports() -> Vec<PortSpec> {
    let mut ports = Vec::new();
    for protocol in [Protocol::Tcp, Protocol::Udp] {
        for port in DEFAULT_PORTS {
            ports.push(PortSpec {
                name: port_name(port, protocol),
                port,
                protocol,
            });
        }
    }
    ports
}

/// `serve-80-tcp`, the naming of the upstream network-policy suite.
fn port_name(port: u16, protocol: Protocol) -> String {
    format!("serve-{port}-{}", protocol.to_string().to_ascii_lowercase())
}

fn lab_protocol(text: &str) -> Result<Protocol, String> {
    match text.to_ascii_uppercase().as_str() {
        "TCP" => Ok(Protocol::Tcp),
        "UDP" => Ok(Protocol::Udp),
        "SCTP" => Err("SCTP is not served in the lab (this kernel has no SCTP sockets)".into()),
        _ => Err(format!("{text:?} is not TCP or UDP")),
    }
}

/// Kubernetes adds `kubernetes.io/metadata.name` to every namespace; policies select on it.
fn with_name_label(name: &str, labels: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    let mut out = labels.clone();
    out.insert("kubernetes.io/metadata.name".into(), name.into());
    out
}

/// An RFC 1123 label: what Kubernetes accepts for namespace and pod names (the lab also puts
/// them in namespace names).
fn dns_label(name: &str) -> Result<(), String> {
    if validate::is_dns_label(name) {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a valid name (lower-case letters, digits and '-', at most 63, \
             starting and ending with a letter or digit)"
        ))
    }
}

fn dns_subdomain(name: &str) -> Result<(), String> {
    if validate::is_dns_subdomain(name) {
        Ok(())
    } else {
        Err(format!("{name:?} is not a valid resource name"))
    }
}

fn labels(labels: &BTreeMap<String, String>) -> Result<(), String> {
    let mut errs = validate::Errors::default();
    for (key, value) in labels {
        validate::label("", key, value, &mut errs);
    }
    errs.into_result().map_err(|e| e.message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<LabSpec, SpecError> {
        parse_spec(text, "lab.yaml", &Overrides::default())
    }

    fn error(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    const XYZ: &str = r#"
nodes: [n1, n2, n3]
namespaces:
  - {name: x, labels: {ns: x}}
  - {name: y, labels: {ns: y}}
pods:
  - {namespace: x, name: a, node: n1, labels: {pod: a}}
  - namespace: y
    name: b
    labels: {pod: b}
    ports:
      - {name: http, port: 8080}
      - {port: 53, protocol: udp}
  - {namespace: z, name: c}
"#;

    #[test]
    fn a_spec_is_completed_with_defaults() {
        let spec = parse(XYZ).unwrap();
        assert_eq!(spec.mode, Mode::Vxlan);
        assert_eq!(spec.datastore, DatastoreKind::Sqlite);
        assert_eq!(spec.fabric.to_string(), DEFAULT_FABRIC);
        assert_eq!(spec.pools[0].name, "default-ipv4-ippool");
        assert_eq!(spec.pools[0].cidr.to_string(), DEFAULT_POOL);
        assert_eq!(spec.pools[0].block_size, 26);
        // Namespace z is made for the pod that lives there; all carry the name label.
        let names: Vec<_> = spec.namespaces.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["x", "y", "z"]);
        assert_eq!(spec.namespaces[0].labels["ns"], "x");
        assert_eq!(
            spec.namespaces[2].labels["kubernetes.io/metadata.name"],
            "z"
        );
        // Pods without ports serve 80 and 81 on TCP and UDP under upstream's names.
        let a = &spec.pods[0];
        let a_ports: Vec<_> = a
            .ports
            .iter()
            .map(|p| format!("{}={}/{}", p.name, p.port, p.protocol))
            .collect();
        assert_eq!(
            a_ports,
            [
                "serve-80-tcp=80/TCP",
                "serve-81-tcp=81/TCP",
                "serve-80-udp=80/UDP",
                "serve-81-udp=81/UDP"
            ]
        );
        let b = &spec.pods[1];
        assert_eq!(b.ports[0].name, "http");
        assert_eq!(b.ports[0].protocol, Protocol::Tcp);
        assert_eq!(b.ports[1].name, "serve-53-udp");
        // A pod without a node is spread by position: pods[2] lands on the third node.
        assert_eq!(spec.pods[1].node, "n2");
        assert_eq!(spec.pods[2].node, "n3");
        assert_eq!(spec.pods[2].id(), "z/c");
    }

    #[test]
    fn bgp_mode_documents_mesh_or_route_reflectors() {
        let bgp = |rr: Option<usize>| {
            default_spec(
                3,
                1,
                &Overrides {
                    mode: Some(Mode::Bgp),
                    route_reflectors: rr,
                    ..Overrides::default()
                },
            )
        };
        let docs = bgp(None).unwrap().documents();
        assert_eq!(docs[0]["spec"]["vxlanMode"], "Never");
        assert_eq!(docs[0]["spec"]["ipipMode"], "Never");
        let kinds: Vec<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
        assert_eq!(
            kinds.iter().filter(|k| **k == "BGPConfiguration").count(),
            1
        );
        assert!(!kinds.contains(&"BGPPeer"));
        let config = docs
            .iter()
            .find(|d| d["kind"] == "BGPConfiguration")
            .unwrap();
        assert_eq!(config["spec"]["nodeToNodeMeshEnabled"], true);

        let spec = bgp(Some(1)).unwrap();
        assert_eq!(spec.route_reflectors, 1);
        let docs = spec.documents();
        let config = docs
            .iter()
            .find(|d| d["kind"] == "BGPConfiguration")
            .unwrap();
        assert_eq!(config["spec"]["nodeToNodeMeshEnabled"], false);
        let nodes: Vec<&Value> = docs.iter().filter(|d| d["kind"] == "Node").collect();
        assert_eq!(nodes.len(), 1);
        assert_eq!(nodes[0]["metadata"]["name"], "node-1");
        assert_eq!(nodes[0]["metadata"]["labels"][RR_LABEL], "true");
        assert_eq!(
            nodes[0]["spec"]["bgp"]["routeReflectorClusterID"],
            RR_CLUSTER_ID
        );
        let peer = docs.iter().find(|d| d["kind"] == "BGPPeer").unwrap();
        assert_eq!(peer["spec"]["peerSelector"], "route-reflector == 'true'");
        // Every generated document decodes (check() ran them through decode()).

        assert_eq!(
            bgp(Some(4)).unwrap_err().to_string(),
            "--nodes: --route-reflectors: 4 is not between 0 and the number of nodes (3)"
        );
        let err = default_spec(
            3,
            1,
            &Overrides {
                route_reflectors: Some(1),
                ..Overrides::default()
            },
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "--nodes: --route-reflectors: route reflectors need --mode bgp (this lab is vxlan)"
        );
        let err = parse_spec(
            "mode: bgp\nnodes: [a, b]\nrouteReflectors: -1\n",
            "lab.yaml",
            &Overrides::default(),
        )
        .unwrap_err();
        assert_eq!(err.field, "routeReflectors");
        let spec = parse_spec(
            "mode: bgp\nnodes: [a, b]\nrouteReflectors: 2\n",
            "lab.yaml",
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(spec.route_reflectors, 2);
    }

    #[test]
    fn documents_carry_mode_labels_and_named_ports() {
        let spec = parse_spec(
            XYZ,
            "lab.yaml",
            &Overrides {
                mode: Some(Mode::Crosssubnet),
                datastore: Some(DatastoreKind::Etcd),
                route_reflectors: None,
            },
        )
        .unwrap();
        assert_eq!(spec.datastore, DatastoreKind::Etcd);
        let docs = spec.documents();
        assert_eq!(docs[0]["spec"]["vxlanMode"], "CrossSubnet");
        assert_eq!(docs[0]["spec"]["ipipMode"], "Never");
        assert_eq!(docs[0]["spec"]["natOutgoing"], false);
        let pod_b = docs.iter().find(|d| d["metadata"]["name"] == "b").unwrap();
        assert_eq!(pod_b["metadata"]["labels"]["pod"], "b");
        assert_eq!(pod_b["spec"]["nodeName"], "n2");
        assert_eq!(
            pod_b["spec"]["containers"][0]["ports"][1],
            json!({"name": "serve-53-udp", "containerPort": 53, "protocol": "UDP"})
        );
    }

    #[test]
    fn default_lab_has_numbered_nodes_and_pods() {
        let spec = default_spec(3, 2, &Overrides::default()).unwrap();
        assert_eq!(spec.nodes, ["node-1", "node-2", "node-3"]);
        let pods: Vec<_> = spec.pods.iter().map(|p| (p.id(), p.node.clone())).collect();
        assert_eq!(pods[0], ("default/pod-1-1".into(), "node-1".into()));
        assert_eq!(pods[5], ("default/pod-3-2".into(), "node-3".into()));
        assert_eq!(spec.pods[3].labels["app"], "pod-2-2");
        assert_eq!(spec.namespaces.len(), 1);
        assert!(default_spec(0, 2, &Overrides::default()).is_err());
    }

    #[test]
    fn bad_specs_name_the_file_and_field() {
        assert_eq!(
            error("nodes: [n1]\npods: [{name: a, node: n9}]"),
            "lab.yaml: pods[0].node: unknown node \"n9\" (nodes: n1)"
        );
        assert_eq!(
            error("nodes: [n1]\npods: [{name: a}, {name: b}, {name: a}]"),
            "lab.yaml: pods[2]: duplicate pod default/a (also pods[0])"
        );
        assert_eq!(
            error("nodes: [n1]\npods: [{name: a, ports: [{port: 70000}]}]"),
            "lab.yaml: pods[0].ports[0].port: 70000 is out of range 1-65535"
        );
        assert_eq!(
            error("nodes: [n1]\npools: [{cidr: 172.30.4.0/24}]"),
            "lab.yaml: pools[0].cidr: 172.30.4.0/24 overlaps the lab fabric 172.30.0.0/16 \
             (the node network)"
        );
        assert_eq!(
            error("nodes: [n1]\nfabric: 10.0.0.0/8"),
            "lab.yaml: pools[0].cidr: 10.244.0.0/16 overlaps the lab fabric 10.0.0.0/8 \
             (the node network)"
        );
        assert!(
            error("nodes: [n1]\nextra: 1").starts_with("lab.yaml: extra: unknown field `extra`")
        );
        assert!(error("nodes: [n1]\npods: [{name: a, colour: red}]")
            .starts_with("lab.yaml: pods[0].colour: unknown field `colour`"));
        assert!(
            error("nodes: [n1]\nmode: wormhole").contains("mode: \"wormhole\" is not a lab mode")
        );
        assert!(
            error("nodes: [n1]\npods: [{name: a, ports: [{port: 80, protocol: SCTP}]}]")
                .contains("pods[0].ports[0].protocol: SCTP is not served in the lab")
        );
        assert!(error("nodes: [n1, n1]").contains("nodes[1]: duplicate node"));
        assert!(error("nodes: [N1]").contains("nodes[0]: \"N1\" is not a valid name"));
        assert!(error("nodes: [n1]\npools: [{cidr: 'fd00::/48'}]").contains("IPv6 pools"));
        assert!(
            error("nodes: [n1]\npools: [{cidr: 10.1.0.0/16}, {cidr: 10.1.2.0/24}]")
                .contains("pools[1].cidr: 10.1.2.0/24 overlaps pool default-ipv4-ippool")
        );
        assert!(
            error("nodes: [n1]\npools: [{cidr: 10.1.0.0/16, blockSize: 8}]")
                .contains("pools[0].blockSize: 8 must be between")
        );
        assert!(error("nodes: [n1]\nfabric: 172.30.0.0/24")
            .contains("fabric: 172.30.0.0/24 is too small"));
        assert!(error("nodes: []").contains("nodes: a lab needs at least one node"));
    }

    #[test]
    fn resources_are_decoded_before_anything_is_made() {
        let good = "nodes: [n1]\nresources:\n  - apiVersion: projectcalico.org/v3\n    kind: \
                    GlobalNetworkSet\n    metadata: {name: ext}\n    spec: {nets: [1.2.3.0/24]}\n";
        assert_eq!(parse(good).unwrap().resources.len(), 1);
        let bad = "nodes: [n1]\nresources:\n  - apiVersion: projectcalico.org/v3\n    kind: \
                   Gizmo\n    metadata: {name: g}\n";
        assert!(
            error(bad).starts_with("lab.yaml: resources[0]: "),
            "{}",
            error(bad)
        );
    }
}
