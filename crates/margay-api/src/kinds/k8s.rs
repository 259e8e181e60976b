//! The Kubernetes kinds Margay reads: `v1 Namespace` and `v1 Pod`. Only what the CNI plugin
//! and the policy engine use is interpreted; the rest of a Pod spec is kept verbatim, and of
//! its status only the addresses.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

use crate::kind::Kind;
use crate::kinds::config::string_enum;
use crate::meta::ObjectMeta;
use crate::object::Object;
use crate::object_meta;
use crate::validate::{self, Errors};

string_enum! {
    /// Transport protocol of a port, as Kubernetes spells it.
    #[derive(Default)]
    pub enum PortProtocol {
        #[default]
        Tcp => "TCP",
        Udp => "UDP",
        Sctp => "SCTP",
    }
}

/// Accepts any value and keeps nothing: for parts of Kubernetes objects Margay drops.
/// Reads through `Value` rather than `IgnoredAny` so the field does not count as unknown.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Discarded;

impl<'de> Deserialize<'de> for Discarded {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Discarded, D::Error> {
        Value::deserialize(d)?;
        Ok(Discarded)
    }
}

/// A Kubernetes namespace; only its name, labels and annotations matter to Margay (they feed
/// namespace selectors and profiles). `spec` (finalizers) is accepted and dropped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Namespace {
    pub metadata: ObjectMeta,
    #[serde(default, rename = "spec", skip_serializing)]
    dropped_spec: Discarded,
}

impl Namespace {
    pub fn new(name: &str) -> Namespace {
        Namespace::from(ObjectMeta::named(name))
    }

    pub fn labels(&self) -> &BTreeMap<String, String> {
        &self.metadata.labels
    }
}

impl From<ObjectMeta> for Namespace {
    fn from(metadata: ObjectMeta) -> Namespace {
        Namespace {
            metadata,
            dropped_spec: Discarded,
        }
    }
}

impl Object for Namespace {
    const KIND: Kind = Kind::Namespace;
    object_meta!();

    fn validate_spec(&self, errs: &mut Errors) {
        // Namespaces are RFC 1123 labels, stricter than other names.
        if !self.metadata.name.is_empty() {
            validate::dns_label("metadata.name", &self.metadata.name, errs);
        }
    }
}

/// A port a container exposes under a name, which policy rules can refer to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NamedPort {
    pub name: String,
    pub protocol: PortProtocol,
    pub port: u16,
}

/// The service account Kubernetes assigns when a Pod names none.
pub const DEFAULT_SERVICE_ACCOUNT: &str = "default";

/// A Kubernetes Pod. `spec` is kept exactly as given (the Pod spec is large and evolves), so
/// an unknown spec field is never an error; the fields Margay uses are read through the
/// accessors, and [`Object::validate_spec`] checks their shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Pod {
    pub metadata: ObjectMeta,
    #[serde(default = "empty_object")]
    pub spec: Value,
    /// Only the addresses survive: they are what `kubectl get pods -o yaml` files give the
    /// policy engine to match `ipBlock`s and network sets against.
    #[serde(default, skip_serializing_if = "PodStatus::is_empty")]
    pub status: PodStatus,
}

/// The part of a Pod's status Margay keeps: `podIP` and `podIPs[].ip`. The rest (phase,
/// conditions, container states) changes constantly and means nothing to networking.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PodStatus {
    #[serde(rename = "podIP", skip_serializing_if = "Option::is_none")]
    pub pod_ip: Option<IpAddr>,
    #[serde(rename = "podIPs", skip_serializing_if = "Vec::is_empty")]
    pub pod_ips: Vec<PodIp>,
}

/// One entry of `status.podIPs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodIp {
    pub ip: IpAddr,
}

impl PodStatus {
    pub fn is_empty(&self) -> bool {
        self.pod_ip.is_none() && self.pod_ips.is_empty()
    }
}

/// Reads through `Value` so that the status fields Margay drops never count as unknown.
impl<'de> Deserialize<'de> for PodStatus {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<PodStatus, D::Error> {
        use serde::de::Error;
        let status = Value::deserialize(d)?;
        let ip = |v: &Value, field: &str| -> Result<Option<IpAddr>, D::Error> {
            match v {
                Value::Null => Ok(None),
                Value::String(s) if s.is_empty() => Ok(None),
                Value::String(s) => s
                    .parse()
                    .map(Some)
                    .map_err(|_| D::Error::custom(format!("{field}: {s:?} is not an IP address"))),
                _ => Err(D::Error::custom(format!("{field}: must be a string"))),
            }
        };
        let pod_ip = match status.get("podIP") {
            Some(v) => ip(v, "podIP")?,
            None => None,
        };
        let mut pod_ips = Vec::new();
        match status.get("podIPs") {
            None | Some(Value::Null) => {}
            Some(Value::Array(entries)) => {
                for (i, entry) in entries.iter().enumerate() {
                    let field = format!("podIPs[{i}].ip");
                    if let Some(ip) = ip(entry.get("ip").unwrap_or(&Value::Null), &field)? {
                        pod_ips.push(PodIp { ip });
                    }
                }
            }
            Some(_) => return Err(D::Error::custom("podIPs: must be a list")),
        }
        Ok(PodStatus { pod_ip, pod_ips })
    }
}

/// Calico's CNI plugin records the addresses in these annotations too, and Calico falls back
/// on them when the status has none yet.
const ANNOTATION_POD_IPS: &str = "cni.projectcalico.org/podIPs";
const ANNOTATION_POD_IP: &str = "cni.projectcalico.org/podIP";

fn empty_object() -> Value {
    Value::Object(Map::new())
}

impl Pod {
    pub fn new(namespace: &str, name: &str, spec: Value) -> Pod {
        Pod {
            metadata: ObjectMeta::namespaced(namespace, name),
            spec,
            status: PodStatus::default(),
        }
    }

    /// The Pod's addresses as Calico reads them: `status.podIPs`, else `status.podIP`, else
    /// the `cni.projectcalico.org/podIPs` / `podIP` annotations (addresses or CIDRs, comma
    /// separated). Empty when the Pod has none yet.
    pub fn ips(&self) -> Vec<IpAddr> {
        if !self.status.pod_ips.is_empty() {
            return self.status.pod_ips.iter().map(|p| p.ip).collect();
        }
        if let Some(ip) = self.status.pod_ip {
            return vec![ip];
        }
        [ANNOTATION_POD_IPS, ANNOTATION_POD_IP]
            .iter()
            .filter_map(|a| self.metadata.annotations.get(*a))
            .find(|v| !v.trim().is_empty())
            .map(|v| {
                v.split(',')
                    .filter_map(|item| {
                        let item = item.trim();
                        let addr = item.split_once('/').map_or(item, |(addr, _)| addr);
                        addr.parse().ok()
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn namespace(&self) -> &str {
        self.metadata.namespace.as_deref().unwrap_or("default")
    }

    pub fn labels(&self) -> &BTreeMap<String, String> {
        &self.metadata.labels
    }

    /// The node the Pod is scheduled to, if it has been.
    pub fn node_name(&self) -> Option<&str> {
        self.spec.get("nodeName")?.as_str()
    }

    /// `serviceAccountName`, else the deprecated `serviceAccount`, else `default`.
    pub fn service_account(&self) -> &str {
        ["serviceAccountName", "serviceAccount"]
            .iter()
            .find_map(|f| self.spec.get(f)?.as_str().filter(|s| !s.is_empty()))
            .unwrap_or(DEFAULT_SERVICE_ACCOUNT)
    }

    /// A host-network Pod shares the node's network namespace: no CNI, no workload endpoint.
    pub fn host_network(&self) -> bool {
        self.spec
            .get("hostNetwork")
            .and_then(Value::as_bool)
            .unwrap_or(false)
    }

    /// The named ports of all containers, in declaration order. Protocol defaults to TCP.
    pub fn named_ports(&self) -> Vec<NamedPort> {
        self.container_ports()
            .filter_map(|p| {
                let name = p.get("name")?.as_str().filter(|n| !n.is_empty())?;
                let port = u16::try_from(p.get("containerPort")?.as_u64()?).ok()?;
                let protocol = match p.get("protocol").and_then(Value::as_str) {
                    Some(s) => s.parse().ok()?,
                    None => PortProtocol::Tcp,
                };
                Some(NamedPort {
                    name: name.to_string(),
                    protocol,
                    port,
                })
            })
            .collect()
    }

    fn container_ports(&self) -> impl Iterator<Item = &Value> {
        self.spec
            .get("containers")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|c| c.get("ports")?.as_array())
            .flatten()
    }
}

impl Object for Pod {
    const KIND: Kind = Kind::Pod;
    object_meta!();

    fn validate_spec(&self, errs: &mut Errors) {
        let Some(spec) = self.spec.as_object() else {
            errs.add("spec", "must be a mapping");
            return;
        };
        for field in ["nodeName", "serviceAccountName", "serviceAccount"] {
            match spec.get(field) {
                None | Some(Value::Null) => {}
                Some(Value::String(s)) if s.is_empty() => {}
                Some(Value::String(s)) => {
                    validate::resource_name(&format!("spec.{field}"), s, errs)
                }
                Some(_) => errs.add(format!("spec.{field}"), "must be a string"),
            }
        }
        if !matches!(
            spec.get("hostNetwork"),
            None | Some(Value::Null | Value::Bool(_))
        ) {
            errs.add("spec.hostNetwork", "must be a boolean");
        }
        let containers = match spec.get("containers") {
            None | Some(Value::Null) => return,
            Some(Value::Array(c)) => c,
            Some(_) => {
                errs.add("spec.containers", "must be a list");
                return;
            }
        };
        for (ci, container) in containers.iter().enumerate() {
            let field = format!("spec.containers[{ci}]");
            let Some(container) = container.as_object() else {
                errs.add(field, "must be a mapping");
                continue;
            };
            match container.get("ports") {
                None | Some(Value::Null) => {}
                Some(Value::Array(ports)) => {
                    for (pi, port) in ports.iter().enumerate() {
                        validate_container_port(&format!("{field}.ports[{pi}]"), port, errs);
                    }
                }
                Some(_) => errs.add(format!("{field}.ports"), "must be a list"),
            }
        }
    }
}

fn validate_container_port(field: &str, port: &Value, errs: &mut Errors) {
    let Some(port) = port.as_object() else {
        errs.add(field, "must be a mapping");
        return;
    };
    match port.get("containerPort").and_then(Value::as_u64) {
        Some(n) => validate::port(
            &format!("{field}.containerPort"),
            u32::try_from(n).unwrap_or(u32::MAX),
            errs,
        ),
        None => errs.add(
            format!("{field}.containerPort"),
            "is required (a port number)",
        ),
    }
    match port.get("protocol") {
        None | Some(Value::Null) => {}
        Some(Value::String(p)) => {
            if let Err(e) = p.parse::<PortProtocol>() {
                errs.add(format!("{field}.protocol"), e);
            }
        }
        Some(_) => errs.add(format!("{field}.protocol"), "must be a string"),
    }
    match port.get("name") {
        None | Some(Value::Null) => {}
        Some(Value::String(name)) if name.is_empty() => {}
        Some(Value::String(name)) => {
            if !is_port_name(name) {
                errs.add(
                    format!("{field}.name"),
                    format!("{name:?} is not a valid port name (at most 15 lower-case letters, digits and '-', with a letter)"),
                );
            }
        }
        Some(_) => errs.add(format!("{field}.name"), "must be a string"),
    }
}

/// Kubernetes' IANA_SVC_NAME rule, which named ports must follow.
fn is_port_name(name: &str) -> bool {
    name.len() <= 15
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && name.chars().any(|c| c.is_ascii_lowercase())
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains("--")
}
