//! Endpoint kinds: the workload endpoints the CNI plugin creates for pods, and host endpoints
//! for a node's own interfaces, with Calico's field names and rules.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use serde::{Deserialize, Deserializer, Serialize};

use crate::kind::Kind;
use crate::kinds::policy::{drop_blank, net_list, Protocol};
use crate::meta::ObjectMeta;
use crate::object::Object;
use crate::object_meta;
use crate::validate::{self, check_port_name, Errors, FieldError};

/// The orchestrator name Kubernetes workload endpoints carry.
pub const ORCHESTRATOR_K8S: &str = "k8s";
/// Orchestrators whose third name segment is not the workload name.
const ORCHESTRATOR_CNI: &str = "cni";
const ORCHESTRATOR_LIBNETWORK: &str = "libnetwork";

/// One network interface of a workload (for Kubernetes, a pod's `eth0`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadEndpoint {
    pub metadata: ObjectMeta,
    pub spec: WorkloadEndpointSpec,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadEndpointSpec {
    /// `k8s` for pods.
    #[serde(default)]
    pub orchestrator: String,
    /// The workload name, for orchestrators other than `k8s` and `cni`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<String>,
    #[serde(default)]
    pub node: String,
    #[serde(
        default,
        rename = "containerID",
        skip_serializing_if = "Option::is_none"
    )]
    pub container_id: Option<String>,
    /// The pod name, for `k8s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// The interface name inside the workload, e.g. `eth0`.
    #[serde(default)]
    pub endpoint: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
    /// The endpoint's addresses, each a /32 or /128.
    #[serde(default, skip_serializing_if = "Vec::is_empty", with = "net_list")]
    pub ip_networks: Vec<IpNet>,
    #[serde(default, rename = "ipNATs", skip_serializing_if = "Vec::is_empty")]
    pub ip_nats: Vec<IpNat>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4_gateway: Option<Ipv4Addr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6_gateway: Option<Ipv6Addr>,
    /// Profiles applied after policy, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub profiles: Vec<String>,
    /// The host side of the veth, e.g. `cali7cd4eff55c7`.
    #[serde(default)]
    pub interface_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// Named and host-mapped ports, which policy rules can refer to by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<WorkloadEndpointPort>,
}

/// A 1:1 NAT: connections to `externalIP` are forwarded to `internalIP`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpNat {
    #[serde(rename = "internalIP")]
    pub internal_ip: IpAddr,
    #[serde(rename = "externalIP")]
    pub external_ip: IpAddr,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadEndpointPort {
    /// May be empty for a port that is only host-mapped.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
    /// 0 when the port is not mapped on the host.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub host_port: u16,
    /// Calico prints an unset host IP as `""`.
    #[serde(
        default,
        rename = "hostIP",
        skip_serializing_if = "Option::is_none",
        deserialize_with = "ip_or_empty"
    )]
    pub host_ip: Option<IpAddr>,
}

impl WorkloadEndpoint {
    /// Calico's workload endpoint name: `<node>-<orchestrator>-<id>-<endpoint>` with each
    /// dash inside a part doubled, e.g. `node--1-k8s-pod--name-eth0`. `id` is the pod name for
    /// `k8s`, the container ID for `cni`, and the workload name otherwise; `libnetwork`
    /// repeats the orchestrator instead. The error names the spec field that is missing or
    /// begins or ends with a dash.
    pub fn name_for(
        node: &str,
        orchestrator: &str,
        id: &str,
        endpoint: &str,
    ) -> Result<String, FieldError> {
        let third = match orchestrator {
            ORCHESTRATOR_K8S => ("spec.pod", id),
            ORCHESTRATOR_CNI => ("spec.containerID", id),
            ORCHESTRATOR_LIBNETWORK => ("spec.orchestrator", orchestrator),
            _ => ("spec.workload", id),
        };
        let segments = [
            ("spec.node", node),
            ("spec.orchestrator", orchestrator),
            third,
            ("spec.endpoint", endpoint),
        ];
        let parts = segments
            .iter()
            .map(|(field, value)| escape_segment(field, value))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(parts.join("-"))
    }

    /// The name this endpoint must have, from its spec.
    pub fn expected_name(&self) -> Result<String, FieldError> {
        let s = &self.spec;
        let id = match s.orchestrator.as_str() {
            ORCHESTRATOR_K8S => &s.pod,
            ORCHESTRATOR_CNI => &s.container_id,
            _ => &s.workload,
        };
        Self::name_for(
            &s.node,
            &s.orchestrator,
            id.as_deref().unwrap_or(""),
            &s.endpoint,
        )
    }
}

/// Dashes separate the name's parts, so a part may not begin or end with one and its own
/// dashes are doubled.
fn escape_segment(field: &str, value: &str) -> Result<String, FieldError> {
    let problem = if value.is_empty() {
        "is required to build the workload endpoint's name"
    } else if value.starts_with('-') {
        "must not begin with '-'"
    } else if value.ends_with('-') {
        "must not end with '-'"
    } else {
        return Ok(value.replace('-', "--"));
    };
    Err(FieldError {
        field: field.to_owned(),
        message: problem.to_owned(),
    })
}

impl Object for WorkloadEndpoint {
    const KIND: Kind = Kind::WorkloadEndpoint;
    object_meta!();

    /// Calico names an unnamed endpoint from its identifiers.
    fn apply_defaults(&mut self) {
        let s = &mut self.spec;
        for field in [
            &mut s.workload,
            &mut s.container_id,
            &mut s.pod,
            &mut s.service_account_name,
            &mut s.mac,
        ] {
            drop_blank(field);
        }
        if self.metadata.name.is_empty() {
            if let Ok(name) = self.expected_name() {
                self.metadata.name = name;
            }
        }
    }

    fn validate_spec(&self, errs: &mut Errors) {
        let s = &self.spec;
        match self.expected_name() {
            Err(e) => errs.0.push(e),
            Ok(expected) if !self.metadata.name.is_empty() && self.metadata.name != expected => {
                errs.add(
                    "metadata.name",
                    format!("does not match the identifiers in spec: expected {expected:?}"),
                );
            }
            Ok(_) => {}
        }
        for (field, value) in [
            ("spec.orchestrator", Some(&s.orchestrator)),
            ("spec.workload", s.workload.as_ref()),
            ("spec.node", Some(&s.node)),
            ("spec.pod", s.pod.as_ref()),
            ("spec.endpoint", Some(&s.endpoint)),
            ("spec.serviceAccountName", s.service_account_name.as_ref()),
        ] {
            if let Some(v) = value.filter(|v| !v.is_empty()) {
                validate::resource_name(field, v, errs);
            }
        }
        if let Some(id) = &s.container_id {
            check_container_id(id, errs);
        }
        check_interface_name("spec.interfaceName", &s.interface_name, false, errs);
        if let Some(mac) = &s.mac {
            if !is_mac(mac) {
                errs.add("spec.mac", format!("{mac:?} is not a MAC address"));
            }
        }
        for (i, net) in s.ip_networks.iter().enumerate() {
            // Calico supports only single addresses on an endpoint.
            if net.prefix_len() != net.max_prefix_len() {
                errs.add(
                    format!("spec.ipNetworks[{i}]"),
                    format!("{net} is not a single address (/32 or /128)"),
                );
            }
        }
        for (i, nat) in s.ip_nats.iter().enumerate() {
            let field = format!("spec.ipNATs[{i}]");
            if nat.internal_ip.is_ipv4() != nat.external_ip.is_ipv4() {
                errs.add(
                    &field,
                    "internalIP and externalIP must be of the same IP version",
                );
            }
            if !s.ip_networks.iter().any(|n| n.contains(&nat.internal_ip)) {
                errs.add(
                    format!("{field}.internalIP"),
                    format!(
                        "{} is not one of the endpoint's ipNetworks",
                        nat.internal_ip
                    ),
                );
            }
        }
        check_profiles(&s.profiles, errs);
        for (i, port) in s.ports.iter().enumerate() {
            let path = format!("spec.ports[{i}]");
            if port.name.is_empty() {
                if port.host_port == 0 {
                    errs.add(format!("{path}.name"), "is required unless hostPort is set");
                }
            } else if let Err(msg) = check_port_name(&port.name) {
                errs.add(format!("{path}.name"), msg);
            }
            check_port_protocol(&path, port.protocol, errs);
            validate::port(&format!("{path}.port"), u32::from(port.port), errs);
        }
    }

    fn calico_ignored_fields() -> &'static [&'static str] {
        // RPF exemptions and bandwidth/connection limits are not implemented.
        &["spec.allowSpoofedSourcePrefixes", "spec.qosControls"]
    }
}

/// Policy for a node's own interface (or, with interface `*`, all of the node's traffic).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HostEndpoint {
    pub metadata: ObjectMeta,
    pub spec: HostEndpointSpec,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HostEndpointSpec {
    #[serde(default)]
    pub node: String,
    /// A Linux interface name or `*`; when absent, the interface holding one of
    /// `expectedIPs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface_name: Option<String>,
    /// The interface's addresses, which is what policy selectors match the endpoint by.
    #[serde(default, rename = "expectedIPs", skip_serializing_if = "Vec::is_empty")]
    pub expected_ips: Vec<IpAddr>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub profiles: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<EndpointPort>,
}

/// A named port of a host endpoint, which policy rules can refer to by name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointPort {
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
}

impl HostEndpoint {
    /// True for the `*` endpoint that covers all of the node's interfaces.
    pub fn is_all_interfaces(&self) -> bool {
        self.spec.interface_name.as_deref() == Some("*")
    }
}

impl Object for HostEndpoint {
    const KIND: Kind = Kind::HostEndpoint;
    object_meta!();

    fn apply_defaults(&mut self) {
        drop_blank(&mut self.spec.interface_name);
    }

    fn validate_spec(&self, errs: &mut Errors) {
        let s = &self.spec;
        if s.node.is_empty() {
            errs.add("spec.node", "is required");
        } else {
            validate::resource_name("spec.node", &s.node, errs);
        }
        match &s.interface_name {
            Some(iface) => check_interface_name("spec.interfaceName", iface, true, errs),
            None if s.expected_ips.is_empty() => errs.add(
                "spec.interfaceName",
                "either interfaceName or expectedIPs must be set",
            ),
            None => {}
        }
        check_profiles(&s.profiles, errs);
        for (i, port) in s.ports.iter().enumerate() {
            let path = format!("spec.ports[{i}]");
            if let Err(msg) = check_port_name(&port.name) {
                errs.add(format!("{path}.name"), msg);
            }
            check_port_protocol(&path, port.protocol, errs);
            validate::port(&format!("{path}.port"), u32::from(port.port), errs);
        }
    }
}

fn check_profiles(profiles: &[String], errs: &mut Errors) {
    for (i, p) in profiles.iter().enumerate() {
        validate::resource_name(&format!("spec.profiles[{i}]"), p, errs);
    }
}

fn check_port_protocol(path: &str, protocol: Protocol, errs: &mut Errors) {
    if !protocol.supports_ports() {
        errs.add(
            format!("{path}.protocol"),
            format!("{protocol} has no ports (use TCP, UDP or SCTP)"),
        );
    }
}

/// Linux interface names: 1-15 of `[A-Za-z0-9_.-]`; host endpoints may also use `*`.
fn check_interface_name(field: &str, name: &str, allow_star: bool, errs: &mut Errors) {
    let ok = (allow_star && name == "*")
        || (!name.is_empty()
            && name.len() <= 15
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')));
    if !ok {
        errs.add(
            field,
            format!("{name:?} is not a valid interface name (1-15 letters, digits, '_', '.', '-')"),
        );
    }
}

/// Container IDs: alphanumerics and inner dashes, as Calico requires.
fn check_container_id(id: &str, errs: &mut Errors) {
    let ok = !id.is_empty()
        && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        && !id.starts_with('-')
        && !id.ends_with('-');
    if !ok {
        errs.add(
            "spec.containerID",
            format!("{id:?} is not a valid container ID"),
        );
    }
}

/// Six hex octets separated by `:` or `-`.
fn is_mac(s: &str) -> bool {
    let Some(sep) = s.chars().find(|c| *c == ':' || *c == '-') else {
        return false;
    };
    let octets: Vec<&str> = s.split(sep).collect();
    octets.len() == 6
        && octets
            .iter()
            .all(|o| o.len() == 2 && o.chars().all(|c| c.is_ascii_hexdigit()))
}

fn is_zero(n: &u16) -> bool {
    *n == 0
}

fn ip_or_empty<'de, D: Deserializer<'de>>(d: D) -> Result<Option<IpAddr>, D::Error> {
    match Option::<String>::deserialize(d)?.as_deref() {
        None | Some("") => Ok(None),
        Some(s) => s.parse().map(Some).map_err(serde::de::Error::custom),
    }
}
