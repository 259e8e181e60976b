//! `Node` (a host running Margay's agent: its BGP identity and tunnel addresses) and
//! `ClusterInformation` (cluster-wide facts the daemons read at start-up).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use ipnet::IpNet;
use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

use crate::kind::Kind;
use crate::kinds::bgp::AsNumber;
use crate::kinds::config::{string_enum, DEFAULT_CONFIG_NAME};
use crate::meta::ObjectMeta;
use crate::object::Object;
use crate::object_meta;
use crate::validate::Errors;

/// An address written either bare (`10.0.0.1`) or with its network's prefix length
/// (`10.0.0.1/24`, host bits kept). Calico accepts both for node addresses; the form given is
/// the form printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IpOrCidr {
    Ip(IpAddr),
    Cidr(IpNet),
}

impl IpOrCidr {
    pub fn addr(&self) -> IpAddr {
        match self {
            IpOrCidr::Ip(ip) => *ip,
            IpOrCidr::Cidr(net) => net.addr(),
        }
    }

    /// The prefix length; a bare address counts as a /32 or /128.
    pub fn prefix_len(&self) -> u8 {
        match self {
            IpOrCidr::Ip(IpAddr::V4(_)) => 32,
            IpOrCidr::Ip(IpAddr::V6(_)) => 128,
            IpOrCidr::Cidr(net) => net.prefix_len(),
        }
    }

    /// The network the address is on (e.g. `10.0.0.0/24`), used to tell whether two nodes
    /// share a subnet.
    pub fn network(&self) -> IpNet {
        match self {
            IpOrCidr::Ip(ip) => IpNet::from(*ip),
            IpOrCidr::Cidr(net) => net.trunc(),
        }
    }

    pub fn is_ipv4(&self) -> bool {
        self.addr().is_ipv4()
    }
}

impl FromStr for IpOrCidr {
    type Err = String;

    fn from_str(s: &str) -> Result<IpOrCidr, String> {
        let parsed = if s.contains('/') {
            s.parse().map(IpOrCidr::Cidr).ok()
        } else {
            s.parse().map(IpOrCidr::Ip).ok()
        };
        parsed.ok_or_else(|| format!("{s:?} is not an IP address or address/prefix"))
    }
}

impl fmt::Display for IpOrCidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IpOrCidr::Ip(ip) => ip.fmt(f),
            IpOrCidr::Cidr(net) => net.fmt(f),
        }
    }
}

impl Serialize for IpOrCidr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for IpOrCidr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<IpOrCidr, D::Error> {
        String::deserialize(d)?.parse().map_err(de::Error::custom)
    }
}

/// An Ethernet address; reads `aa:bb:cc:dd:ee:ff` or `aa-bb-…`, prints lower-case with colons.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MacAddr(pub [u8; 6]);

impl FromStr for MacAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<MacAddr, String> {
        let bad = || format!("{s:?} is not a MAC address like \"66:2c:1f:0a:bb:01\"");
        let sep = if s.contains('-') { '-' } else { ':' };
        let mut bytes = [0u8; 6];
        let mut parts = s.split(sep);
        for b in &mut bytes {
            let part = parts.next().filter(|p| p.len() == 2).ok_or_else(bad)?;
            *b = u8::from_str_radix(part, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(MacAddr(bytes))
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl Serialize for MacAddr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MacAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<MacAddr, D::Error> {
        String::deserialize(d)?.parse().map_err(de::Error::custom)
    }
}

string_enum! {
    /// What a node address is.
    pub enum NodeAddressType {
        /// The address the agent detected and uses for BGP and tunnels.
        CalicoNodeIp => "CalicoNodeIP",
        InternalIp => "InternalIP",
        ExternalIp => "ExternalIP",
    }
}

/// An address the node can be reached at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeAddress {
    pub address: IpOrCidr,
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub address_type: Option<NodeAddressType>,
}

/// The node's name in an orchestrator (`k8s` for Kubernetes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrchRef {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    pub orchestrator: String,
}

/// The node's BGP identity.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeBGPSpec {
    /// Unset: the cluster's AS from BGPConfiguration `default`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub as_number: Option<AsNumber>,
    /// The node's IPv4 address with its network's prefix length, e.g. `10.0.0.1/24`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4_address: Option<IpOrCidr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6_address: Option<IpOrCidr>,
    /// The address of the node's IPIP tunnel device (Calico keeps it under `bgp`).
    #[serde(
        default,
        rename = "ipv4IPIPTunnelAddr",
        skip_serializing_if = "Option::is_none"
    )]
    pub ipv4_ipip_tunnel_addr: Option<Ipv4Addr>,
    /// Makes the node a route reflector for this cluster ID.
    #[serde(
        default,
        rename = "routeReflectorClusterID",
        skip_serializing_if = "Option::is_none"
    )]
    pub route_reflector_cluster_id: Option<Ipv4Addr>,
}

impl NodeBGPSpec {
    fn is_empty(&self) -> bool {
        self == &NodeBGPSpec::default()
    }
}

/// A host running Margay's agent. Calico's `status` is dropped on migration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Node {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: NodeSpec,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bgp: Option<NodeBGPSpec>,
    #[serde(
        default,
        rename = "ipv4VXLANTunnelAddr",
        skip_serializing_if = "Option::is_none"
    )]
    pub ipv4_vxlan_tunnel_addr: Option<Ipv4Addr>,
    #[serde(
        default,
        rename = "vxlanTunnelMACAddr",
        skip_serializing_if = "Option::is_none"
    )]
    pub vxlan_tunnel_mac_addr: Option<MacAddr>,
    #[serde(
        default,
        rename = "ipv6VXLANTunnelAddr",
        skip_serializing_if = "Option::is_none"
    )]
    pub ipv6_vxlan_tunnel_addr: Option<Ipv6Addr>,
    #[serde(
        default,
        rename = "vxlanTunnelMACAddrV6",
        skip_serializing_if = "Option::is_none"
    )]
    pub vxlan_tunnel_mac_addr_v6: Option<MacAddr>,
    /// Calico's spelling (`orchRefs`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub orch_refs: Vec<OrchRef>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<NodeAddress>,
}

impl Node {
    pub fn new(name: &str) -> Node {
        Node {
            metadata: ObjectMeta::named(name),
            spec: NodeSpec::default(),
        }
    }

    /// The node's IPv4 BGP address (with prefix), if it has one.
    pub fn ipv4_address(&self) -> Option<IpOrCidr> {
        self.spec.bgp.as_ref()?.ipv4_address
    }

    pub fn ipv6_address(&self) -> Option<IpOrCidr> {
        self.spec.bgp.as_ref()?.ipv6_address
    }

    /// The node's AS, falling back to the cluster's.
    pub fn as_number(&self, cluster: AsNumber) -> AsNumber {
        self.spec
            .bgp
            .as_ref()
            .and_then(|b| b.as_number)
            .unwrap_or(cluster)
    }

    pub fn route_reflector_cluster_id(&self) -> Option<Ipv4Addr> {
        self.spec.bgp.as_ref()?.route_reflector_cluster_id
    }

    /// The Kubernetes node this corresponds to, from the `k8s` orchestrator reference.
    pub fn kubernetes_node_name(&self) -> Option<&str> {
        self.spec
            .orch_refs
            .iter()
            .find(|r| r.orchestrator == "k8s")?
            .node_name
            .as_deref()
    }
}

impl Object for Node {
    const KIND: Kind = Kind::Node;
    object_meta!();

    fn validate_spec(&self, errs: &mut Errors) {
        let s = &self.spec;
        if let Some(bgp) = &s.bgp {
            if bgp.is_empty() {
                errs.add("spec.bgp", "must not be empty (omit it instead)");
            }
            if let Some(a) = bgp.ipv4_address.filter(|a| !a.is_ipv4()) {
                errs.add(
                    "spec.bgp.ipv4Address",
                    format!("{a} is not an IPv4 address"),
                );
            }
            if let Some(a) = bgp.ipv6_address.filter(|a| a.is_ipv4()) {
                errs.add(
                    "spec.bgp.ipv6Address",
                    format!("{a} is not an IPv6 address"),
                );
            }
            if bgp.as_number == Some(AsNumber(0)) {
                errs.add("spec.bgp.asNumber", "0 is not a valid AS number");
            }
        }
        for (i, r) in s.orch_refs.iter().enumerate() {
            if r.orchestrator.is_empty() {
                errs.add(format!("spec.orchRefs[{i}].orchestrator"), "is required");
            }
        }
    }

    fn calico_ignored_fields() -> &'static [&'static str] {
        // WireGuard is not implemented; host endpoint templates (which read interfaces) neither.
        &["spec.wireguard", "spec.interfaces"]
    }
}

/// Cluster-wide facts, one object named `default`, written by the installer and read by
/// every daemon at start-up.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterInformation {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: ClusterInformationSpec,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterInformationSpec {
    #[serde(
        default,
        rename = "clusterGUID",
        skip_serializing_if = "Option::is_none"
    )]
    pub cluster_guid: Option<String>,
    /// Comma-separated traits, e.g. `k8s,bgp,kubeadm,kdd`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_type: Option<String>,
    /// Kept verbatim from Calico (e.g. `v3.27.4`): it records what the cluster ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calico_version: Option<String>,
    /// Daemons wait while this is false (set during upgrades and migrations).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datastore_ready: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl ClusterInformationSpec {
    /// Unset counts as ready, as in Calico.
    pub fn datastore_ready(&self) -> bool {
        self.datastore_ready.unwrap_or(true)
    }

    pub fn cluster_types(&self) -> Vec<&str> {
        self.cluster_type
            .as_deref()
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .collect()
    }
}

impl ClusterInformation {
    pub fn new() -> ClusterInformation {
        ClusterInformation {
            metadata: ObjectMeta::named(DEFAULT_CONFIG_NAME),
            spec: ClusterInformationSpec::default(),
        }
    }
}

impl Default for ClusterInformation {
    fn default() -> ClusterInformation {
        ClusterInformation::new()
    }
}

impl Object for ClusterInformation {
    const KIND: Kind = Kind::ClusterInformation;
    object_meta!();

    fn validate_spec(&self, errs: &mut Errors) {
        if self.metadata.name != DEFAULT_CONFIG_NAME {
            errs.add(
                "metadata.name",
                format!(
                    "must be {DEFAULT_CONFIG_NAME:?} (there is one cluster information object)"
                ),
            );
        }
    }
}
