//! Printing resources: calicoctl-like tables, YAML, JSON and `kind/name`.

use margay_api::{Kind, Resource, API_VERSION};
use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    Table,
    Wide,
    Yaml,
    Json,
    Name,
}

/// A table column: a header and a dotted path into the document (or a computed value).
struct Column {
    header: &'static str,
    value: fn(&Value) -> String,
}

macro_rules! col {
    ($header:literal, $path:literal) => {
        Column {
            header: $header,
            value: |v| field(v, $path),
        }
    };
    ($header:literal, |$v:ident| $body:expr) => {
        Column {
            header: $header,
            value: |$v| $body,
        }
    };
}

/// Renders the value at a dotted path: lists joined with commas, maps as `k=v` pairs.
fn field(doc: &Value, path: &str) -> String {
    let mut v = doc;
    for part in path.split('.') {
        match v.get(part) {
            Some(next) => v = next,
            None => return String::new(),
        }
    }
    render(v)
}

fn render(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Array(items) => items.iter().map(render).collect::<Vec<_>>().join(","),
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| format!("{k}={}", render(v)))
            .collect::<Vec<_>>()
            .join(","),
        other => other.to_string(),
    }
}

fn columns(kind: Kind, wide: bool) -> Vec<Column> {
    let name = col!("NAME", "metadata.name");
    let labels = col!("LABELS", "metadata.labels");
    match (kind, wide) {
        (Kind::IPPool, false) => vec![
            name,
            col!("CIDR", "spec.cidr"),
            col!("SELECTOR", "spec.nodeSelector"),
        ],
        (Kind::IPPool, true) => vec![
            name,
            col!("CIDR", "spec.cidr"),
            col!("NAT", "spec.natOutgoing"),
            col!("IPIPMODE", "spec.ipipMode"),
            col!("VXLANMODE", "spec.vxlanMode"),
            col!("DISABLED", "spec.disabled"),
            col!("DISABLEBGPEXPORT", "spec.disableBGPExport"),
            col!("SELECTOR", "spec.nodeSelector"),
        ],
        (Kind::IPAMConfig, _) => vec![
            name,
            col!("STRICTAFFINITY", "spec.strictAffinity"),
            col!("AUTOALLOCATEBLOCKS", "spec.autoAllocateBlocks"),
            col!("MAXBLOCKSPERHOST", "spec.maxBlocksPerHost"),
        ],
        (Kind::IPReservation, _) => vec![name, col!("CIDRS", "spec.reservedCIDRs")],
        (Kind::IPAMBlock, _) => vec![
            name,
            col!("CIDR", "spec.cidr"),
            col!("AFFINITY", "spec.affinity"),
        ],
        (Kind::BlockAffinity, _) => vec![
            name,
            col!("NODE", "spec.node"),
            col!("CIDR", "spec.cidr"),
            col!("STATE", "spec.state"),
        ],
        (Kind::IPAMHandle, _) => vec![name, col!("BLOCKS", "spec.block")],
        (Kind::Node, false) => vec![name],
        (Kind::Node, true) => vec![
            name,
            col!("ASN", "spec.bgp.asNumber"),
            col!("IPV4", "spec.bgp.ipv4Address"),
            col!("IPV6", "spec.bgp.ipv6Address"),
        ],
        (Kind::WorkloadEndpoint, false) => vec![
            col!("WORKLOAD", |v| workload(v)),
            col!("NODE", "spec.node"),
            col!("NETWORKS", "spec.ipNetworks"),
            col!("INTERFACE", "spec.interfaceName"),
        ],
        (Kind::WorkloadEndpoint, true) => vec![
            name,
            col!("WORKLOAD", |v| workload(v)),
            col!("NODE", "spec.node"),
            col!("NETWORKS", "spec.ipNetworks"),
            col!("INTERFACE", "spec.interfaceName"),
            col!("PROFILES", "spec.profiles"),
            labels,
        ],
        (Kind::HostEndpoint, false) => vec![name, col!("NODE", "spec.node")],
        (Kind::HostEndpoint, true) => vec![
            name,
            col!("NODE", "spec.node"),
            col!("INTERFACE", "spec.interfaceName"),
            col!("IPS", "spec.expectedIPs"),
            col!("PROFILES", "spec.profiles"),
        ],
        (Kind::Profile, false) => vec![name],
        (Kind::Profile, true) => vec![name, col!("LABELS", "spec.labelsToApply")],
        (Kind::NetworkPolicy | Kind::GlobalNetworkPolicy, false) => vec![name],
        (Kind::NetworkPolicy | Kind::GlobalNetworkPolicy, true) => vec![
            name,
            col!("TIER", "spec.tier"),
            col!("ORDER", "spec.order"),
            col!("SELECTOR", "spec.selector"),
        ],
        (Kind::Tier, _) => vec![
            name,
            col!("ORDER", "spec.order"),
            col!("DEFAULTACTION", "spec.defaultAction"),
        ],
        (Kind::NetworkSet | Kind::GlobalNetworkSet, false) => vec![name],
        (Kind::NetworkSet | Kind::GlobalNetworkSet, true) => {
            vec![name, col!("NETS", "spec.nets"), labels]
        }
        (Kind::BGPConfiguration, _) => vec![
            name,
            col!("LOGSEVERITY", "spec.logSeverityScreen"),
            col!("MESHENABLED", "spec.nodeToNodeMeshEnabled"),
            col!("ASNUMBER", "spec.asNumber"),
        ],
        (Kind::BGPPeer, _) => vec![
            name,
            col!("PEERIP", "spec.peerIP"),
            col!("NODE", |v| {
                let node = field(v, "spec.node");
                let sel = field(v, "spec.nodeSelector");
                if !node.is_empty() {
                    node
                } else if !sel.is_empty() {
                    sel
                } else {
                    "(global)".into()
                }
            }),
            col!("ASN", "spec.asNumber"),
        ],
        (
            Kind::AgentConfiguration | Kind::ControllersConfiguration | Kind::ClusterInformation,
            _,
        ) => {
            vec![name]
        }
        (Kind::KubernetesNetworkPolicy, _) => vec![name, col!("POD-SELECTOR", "spec.podSelector")],
        (Kind::Namespace, _) => vec![name, labels],
        (Kind::Pod, _) => vec![name, col!("NODE", "spec.nodeName"), labels],
    }
}

fn workload(v: &Value) -> String {
    let pod = field(v, "spec.pod");
    if pod.is_empty() {
        field(v, "spec.workload")
    } else {
        pod
    }
}

/// Renders `items` of `kind`. `with_namespace` adds a NAMESPACE column (for `-A`).
pub fn render_resources(
    kind: Kind,
    items: &[Resource],
    format: OutputFormat,
    single: bool,
    with_namespace: bool,
) -> String {
    match format {
        OutputFormat::Table | OutputFormat::Wide => {
            let mut cols = columns(kind, format == OutputFormat::Wide);
            if with_namespace && kind.namespaced() {
                cols.insert(0, col!("NAMESPACE", "metadata.namespace"));
            }
            let docs: Vec<Value> = items.iter().map(Resource::to_value).collect();
            table(&cols, &docs)
        }
        OutputFormat::Name => items
            .iter()
            .map(|r| {
                format!(
                    "{}/{}\n",
                    kind.name().to_ascii_lowercase(),
                    r.metadata().name
                )
            })
            .collect(),
        OutputFormat::Yaml | OutputFormat::Json => {
            let doc = if single && items.len() == 1 {
                items[0].to_value()
            } else {
                list_document(kind, items)
            };
            if format == OutputFormat::Json {
                let mut s = serde_json::to_string_pretty(&doc).expect("JSON values print");
                s.push('\n');
                s
            } else {
                margay_api::document::to_yaml(&[doc])
            }
        }
    }
}

/// A `<Kind>List` document, which `apply` reads back.
fn list_document(kind: Kind, items: &[Resource]) -> Value {
    serde_json::json!({
        "apiVersion": if kind.api_version() == API_VERSION { API_VERSION } else { "v1" },
        "kind": format!("{}List", kind.document_kind()),
        "items": items.iter().map(Resource::to_value).collect::<Vec<_>>(),
    })
}

fn table(cols: &[Column], docs: &[Value]) -> String {
    let rows: Vec<Vec<String>> = docs
        .iter()
        .map(|d| cols.iter().map(|c| (c.value)(d)).collect())
        .collect();
    let headers: Vec<&str> = cols.iter().map(|c| c.header).collect();
    render_table(&headers, &rows)
}

/// Space-aligned columns, as calicoctl prints them.
pub fn render_table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let headers: Vec<String> = headers.iter().map(|h| (*h).to_owned()).collect();
    let widths: Vec<usize> = (0..headers.len())
        .map(|i| {
            std::iter::once(&headers)
                .chain(rows.iter())
                .map(|r| r[i].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in std::iter::once(&headers).chain(rows.iter()) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 < row.len() {
                line.push_str(&format!("{:<width$}   ", cell, width = widths[i]));
            } else {
                line.push_str(cell);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use margay_api::IPPool;

    #[test]
    fn ippool_table_matches_calicoctl_layout() {
        let pool = IPPool::new("default-ipv4-ippool", "10.233.64.0/18".parse().unwrap());
        let out = render_resources(
            Kind::IPPool,
            &[pool.into()],
            OutputFormat::Table,
            false,
            false,
        );
        assert_eq!(
            out,
            "NAME                  CIDR             SELECTOR\ndefault-ipv4-ippool   10.233.64.0/18   all()\n"
        );
    }

    #[test]
    fn list_yaml_reads_back_as_documents() {
        let pools: Vec<Resource> = ["10.1.0.0/16", "10.2.0.0/16"]
            .iter()
            .enumerate()
            .map(|(i, c)| IPPool::new(&format!("p{i}"), c.parse().unwrap()).into())
            .collect();
        let text = render_resources(Kind::IPPool, &pools, OutputFormat::Yaml, false, false);
        let docs = margay_api::parse_documents(&text).unwrap();
        assert_eq!(docs.len(), 2);
        let back = margay_api::decode(docs[1].clone()).unwrap().resource;
        assert_eq!(back, pools[1]);
    }
}
