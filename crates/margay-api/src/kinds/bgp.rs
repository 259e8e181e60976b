//! BGP kinds: the cluster's BGP settings (`BGPConfiguration`) and explicit peerings
//! (`BGPPeer`), with Calico's field names and rules.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use ipnet::IpNet;
use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::{Map, Value};

use crate::kind::Kind;
use crate::kinds::config::{
    config_node, log_level, string_enum, validate_config_name, Duration, LogSeverity, Toggle,
    AGENT_LOG_LEVELS,
};
use crate::meta::ObjectMeta;
use crate::object::Object;
use crate::object_meta;
use crate::validate::{self, Errors};

/// A BGP autonomous system number. Reads an integer, a numeric string, or the dotted form
/// `"<high>.<low>"` (`"1.10"` is 65546), as Calico does; always prints the integer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AsNumber(pub u32);

/// Calico's default AS for the cluster (a private 16-bit AS).
pub const DEFAULT_AS_NUMBER: AsNumber = AsNumber(64512);
pub const DEFAULT_BGP_PORT: u16 = 179;

impl AsNumber {
    /// The `asdot` form, `<high>.<low>`.
    pub fn dotted(self) -> String {
        format!("{}.{}", self.0 >> 16, self.0 & 0xffff)
    }
}

impl From<u32> for AsNumber {
    fn from(n: u32) -> AsNumber {
        AsNumber(n)
    }
}

impl fmt::Display for AsNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl FromStr for AsNumber {
    type Err = String;

    fn from_str(s: &str) -> Result<AsNumber, String> {
        if let Ok(n) = s.parse::<u32>() {
            return Ok(AsNumber(n));
        }
        let bad = || format!("{s:?} is not an AS number (an integer, or dotted like \"1.10\")");
        let (high, low) = s.split_once('.').ok_or_else(bad)?;
        let high: u16 = high.parse().map_err(|_| bad())?;
        let low: u16 = low.parse().map_err(|_| bad())?;
        Ok(AsNumber(u32::from(high) << 16 | u32::from(low)))
    }
}

impl Serialize for AsNumber {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u32(self.0)
    }
}

impl<'de> Deserialize<'de> for AsNumber {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<AsNumber, D::Error> {
        crate::serde_util::number_or_string(
            d,
            "an AS number (an integer, or a quoted dotted form like \"1.10\")",
            |n| match u32::try_from(n) {
                Ok(n) => Ok(AsNumber(n)),
                Err(_) if n < 0 => Err(format!("AS number {n} is negative")),
                Err(_) => Err(format!("AS number {n} is larger than 4294967295")),
            },
            crate::serde_util::parse_str::<AsNumber>,
        )
    }
}

/// A BGP community value: standard `aa:nn` (16-bit parts) or large `aa:nn:mm` (32-bit parts).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CommunityValue {
    Standard(u16, u16),
    Large(u32, u32, u32),
}

impl FromStr for CommunityValue {
    type Err = String;

    fn from_str(s: &str) -> Result<CommunityValue, String> {
        let parts: Vec<&str> = s.split(':').collect();
        let numeric = parts
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
        match (numeric, parts.as_slice()) {
            (true, [a, n]) => match (a.parse(), n.parse()) {
                (Ok(a), Ok(n)) => Ok(CommunityValue::Standard(a, n)),
                _ => Err(format!(
                    "{s:?}: a standard community's parts are 16-bit numbers"
                )),
            },
            (true, [a, n, m]) => match (a.parse(), n.parse(), m.parse()) {
                (Ok(a), Ok(n), Ok(m)) => Ok(CommunityValue::Large(a, n, m)),
                _ => Err(format!(
                    "{s:?}: a large community's parts are 32-bit numbers"
                )),
            },
            _ => Err(format!(
                "{s:?} is not a community (\"aa:nn\" or \"aa:nn:mm\")"
            )),
        }
    }
}

impl fmt::Display for CommunityValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CommunityValue::Standard(a, n) => write!(f, "{a}:{n}"),
            CommunityValue::Large(a, n, m) => write!(f, "{a}:{n}:{m}"),
        }
    }
}

/// A named community value, referred to by name from prefix advertisements.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Community {
    pub name: String,
    pub value: String,
}

/// Communities to attach when advertising `cidr`: names from `communities`, or literal values.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PrefixAdvertisement {
    pub cidr: IpNet,
    #[serde(default)]
    pub communities: Vec<String>,
}

/// One CIDR of service addresses to advertise.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CidrBlock {
    pub cidr: IpNet,
}

/// Where a BGP password comes from. Calico only reads it from a Secret in the node agent's
/// namespace (`secretKeyRef`); Margay keeps that shape and also accepts the password inline
/// (`value`, Margay's own field), since it has no Secrets of its own to read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BGPPassword {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_key_ref: Option<SecretKeyRef>,
    /// The password itself (Margay only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

/// TCP MD5 keys are at most 80 bytes (RFC 2385, Linux's `TCP_MD5SIG_MAXKEYLEN`).
pub const MAX_PASSWORD_LEN: usize = 80;

/// Kubernetes' `SecretKeySelector`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    #[serde(default)]
    pub name: String,
    pub key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub optional: Option<bool>,
}

fn validate_password(field: &str, pw: &BGPPassword, errs: &mut Errors) {
    let r = match (&pw.secret_key_ref, &pw.value) {
        (Some(_), Some(_)) => {
            errs.add(
                format!("{field}.value"),
                format!("cannot be set together with {field}.secretKeyRef"),
            );
            return;
        }
        (None, Some(v)) => {
            if v.is_empty() {
                errs.add(format!("{field}.value"), "must not be empty");
            } else if v.len() > MAX_PASSWORD_LEN {
                errs.add(
                    format!("{field}.value"),
                    format!(
                        "is {} bytes; TCP MD5 keys are at most {MAX_PASSWORD_LEN}",
                        v.len()
                    ),
                );
            }
            return;
        }
        (Some(r), None) => r,
        (None, None) => {
            errs.add(
                format!("{field}.secretKeyRef"),
                "is required (or, in Margay, an inline value)",
            );
            return;
        }
    };
    if r.name.is_empty() {
        errs.add(format!("{field}.secretKeyRef.name"), "is required");
    } else {
        validate::resource_name(&format!("{field}.secretKeyRef.name"), &r.name, errs);
    }
    if r.key.is_empty() {
        errs.add(format!("{field}.secretKeyRef.key"), "is required");
    }
}

string_enum! {
    /// Which addresses the BGP speaker listens on.
    #[derive(Default)]
    pub enum BindMode {
        /// All addresses.
        #[default]
        None => "None",
        /// Only the node's own BGP address.
        NodeIp => "NodeIP",
    }
}

// ---------------------------------------------------------------------------------------------
// BGPConfiguration
// ---------------------------------------------------------------------------------------------

/// Cluster-wide BGP settings (`default`) and per-node overrides (`node.<nodename>`). Calico
/// allows the mesh, AS number and service ranges only in `default`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BGPConfiguration {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: BGPConfigurationSpec,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BGPConfigurationSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_severity_screen: Option<LogSeverity>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_to_node_mesh_enabled: Option<bool>,
    /// The AS of nodes that do not set their own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub as_number: Option<AsNumber>,
    #[serde(
        default,
        rename = "serviceLoadBalancerIPs",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub service_load_balancer_ips: Vec<CidrBlock>,
    #[serde(
        default,
        rename = "serviceExternalIPs",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub service_external_ips: Vec<CidrBlock>,
    #[serde(
        default,
        rename = "serviceClusterIPs",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub service_cluster_ips: Vec<CidrBlock>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub communities: Vec<Community>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub prefix_advertisements: Vec<PrefixAdvertisement>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen_port: Option<u16>,
    /// Password for the node-to-node mesh sessions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_mesh_password: Option<BGPPassword>,
    /// Graceful-restart time for mesh sessions; unset uses the speaker's default (120s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_mesh_max_restart_time: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bind_mode: Option<BindMode>,
    /// Interfaces whose routes are not exported; a trailing `*` matches a prefix.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ignored_interfaces: Vec<String>,
    /// Whether the BGP speaker programs routes to other nodes' blocks itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub program_cluster_routes: Option<Toggle>,
}

impl BGPConfigurationSpec {
    pub fn log_severity_screen(&self) -> LogSeverity {
        self.log_severity_screen.unwrap_or_default()
    }

    pub fn node_to_node_mesh_enabled(&self) -> bool {
        self.node_to_node_mesh_enabled.unwrap_or(true)
    }

    pub fn as_number(&self) -> AsNumber {
        self.as_number.unwrap_or(DEFAULT_AS_NUMBER)
    }

    pub fn listen_port(&self) -> u16 {
        self.listen_port.unwrap_or(DEFAULT_BGP_PORT)
    }

    pub fn bind_mode(&self) -> BindMode {
        self.bind_mode.unwrap_or_default()
    }

    /// The community values to attach to `adv`, names resolved through `communities`.
    /// Unknown names are skipped (validation rejects them).
    pub fn prefix_communities(&self, adv: &PrefixAdvertisement) -> Vec<CommunityValue> {
        let named: BTreeMap<&str, &str> = self
            .communities
            .iter()
            .map(|c| (c.name.as_str(), c.value.as_str()))
            .collect();
        adv.communities
            .iter()
            .filter_map(|c| {
                c.parse()
                    .ok()
                    .or_else(|| named.get(c.as_str())?.parse().ok())
            })
            .collect()
    }
}

impl BGPConfiguration {
    pub fn new(name: &str) -> BGPConfiguration {
        BGPConfiguration {
            metadata: ObjectMeta::named(name),
            spec: BGPConfigurationSpec::default(),
        }
    }

    /// The node a `node.<nodename>` object configures; `None` for `default`.
    pub fn node(&self) -> Option<&str> {
        config_node(&self.metadata.name)
    }
}

impl Object for BGPConfiguration {
    const KIND: Kind = Kind::BGPConfiguration;
    object_meta!();

    fn apply_defaults(&mut self) {
        // Only the cluster-wide object: in a node object they would mask `default`.
        if self.node().is_none() {
            let s = &mut self.spec;
            s.log_severity_screen.get_or_insert(LogSeverity::Info);
            s.node_to_node_mesh_enabled.get_or_insert(true);
            s.as_number.get_or_insert(DEFAULT_AS_NUMBER);
            s.listen_port.get_or_insert(DEFAULT_BGP_PORT);
        }
    }

    fn validate_spec(&self, errs: &mut Errors) {
        validate_config_name(&self.metadata.name, errs);
        let s = &self.spec;
        if self.node().is_some() {
            let cluster_wide = [
                (
                    "spec.nodeToNodeMeshEnabled",
                    s.node_to_node_mesh_enabled.is_some(),
                ),
                ("spec.asNumber", s.as_number.is_some()),
                (
                    "spec.serviceLoadBalancerIPs",
                    !s.service_load_balancer_ips.is_empty(),
                ),
                (
                    "spec.serviceExternalIPs",
                    !s.service_external_ips.is_empty(),
                ),
                ("spec.serviceClusterIPs", !s.service_cluster_ips.is_empty()),
                ("spec.nodeMeshPassword", s.node_mesh_password.is_some()),
                (
                    "spec.nodeMeshMaxRestartTime",
                    s.node_mesh_max_restart_time.is_some(),
                ),
            ];
            for (field, set) in cluster_wide {
                if set {
                    errs.add(
                        field,
                        "can only be set in the BGPConfiguration named \"default\"",
                    );
                }
            }
        }
        if let Some(level) = s.log_severity_screen {
            log_level("spec.logSeverityScreen", level, AGENT_LOG_LEVELS, errs);
        }
        if s.listen_port == Some(0) {
            errs.add("spec.listenPort", "0 is out of range 1-65535");
        }
        if let Some(pw) = &s.node_mesh_password {
            validate_password("spec.nodeMeshPassword", pw, errs);
        }
        for (i, c) in s.communities.iter().enumerate() {
            let field = format!("spec.communities[{i}]");
            if c.name.is_empty() {
                errs.add(format!("{field}.name"), "is required");
            } else {
                validate::resource_name(&format!("{field}.name"), &c.name, errs);
            }
            if let Err(e) = c.value.parse::<CommunityValue>() {
                errs.add(format!("{field}.value"), e);
            }
        }
        if !s.communities.is_empty() && s.prefix_advertisements.is_empty() {
            errs.add(
                "spec.communities",
                "communities are defined but no prefixAdvertisements use them",
            );
        }
        for (i, adv) in s.prefix_advertisements.iter().enumerate() {
            for (j, c) in adv.communities.iter().enumerate() {
                let defined = s.communities.iter().any(|d| &d.name == c);
                if !defined && c.parse::<CommunityValue>().is_err() {
                    errs.add(
                        format!("spec.prefixAdvertisements[{i}].communities[{j}]"),
                        format!("{c:?} is neither a community defined in spec.communities nor a value like \"aa:nn\""),
                    );
                }
            }
        }
        for (i, iface) in s.ignored_interfaces.iter().enumerate() {
            let ok = !iface.is_empty()
                && iface.len() <= 15
                && iface
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-*".contains(c));
            if !ok {
                errs.add(
                    format!("spec.ignoredInterfaces[{i}]"),
                    format!("{iface:?} is not an interface name or pattern"),
                );
            }
        }
    }

    fn calico_ignored_fields() -> &'static [&'static str] {
        &[
            "spec.localWorkloadPeeringIPV4",
            "spec.localWorkloadPeeringIPV6",
            "spec.serviceLoadBalancerAggregation",
        ]
    }
}

// ---------------------------------------------------------------------------------------------
// BGPPeer
// ---------------------------------------------------------------------------------------------

/// A peer address, `IP`, `IPv4:port` or `[IPv6]:port`. Without a port the peer's listen port
/// (or 179) is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PeerAddress {
    pub ip: IpAddr,
    pub port: Option<u16>,
}

impl PeerAddress {
    pub fn port_or_default(&self) -> u16 {
        self.port.unwrap_or(DEFAULT_BGP_PORT)
    }
}

impl FromStr for PeerAddress {
    type Err = String;

    fn from_str(s: &str) -> Result<PeerAddress, String> {
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Ok(PeerAddress { ip, port: None });
        }
        s.parse::<SocketAddr>()
            .map(|a| PeerAddress {
                ip: a.ip(),
                port: Some(a.port()),
            })
            .map_err(|_| format!("{s:?} is not an IP address, IPv4:port or [IPv6]:port"))
    }
}

impl fmt::Display for PeerAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.port {
            Some(port) => write!(f, "{}", SocketAddr::new(self.ip, port)),
            None => write!(f, "{}", self.ip),
        }
    }
}

impl Serialize for PeerAddress {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PeerAddress {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<PeerAddress, D::Error> {
        String::deserialize(d)?.parse().map_err(de::Error::custom)
    }
}

string_enum! {
    /// The source address of the BGP session.
    #[derive(Default)]
    pub enum SourceAddress {
        /// The node's own BGP address.
        #[default]
        UseNodeIp => "UseNodeIP",
        /// Let the kernel choose.
        None => "None",
    }
}

string_enum! {
    /// How the next hop of routes sent to the peer is set.
    #[derive(Default)]
    pub enum NextHopMode {
        /// BGP's usual rules.
        #[default]
        Auto => "Auto",
        /// `next hop self`: we are the next hop.
        SelfHop => "Self",
        Keep => "Keep",
    }
}

string_enum! {
    /// For `peerSelector` peerings: whether the selected nodes peer back automatically.
    #[derive(Default)]
    pub enum ReversePeering {
        #[default]
        Auto => "Auto",
        Manual => "Manual",
    }
}

/// A BGP peering: which nodes (`node`, `nodeSelector`, or all) peer with whom (`peerIP` or
/// the nodes matching `peerSelector`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BGPPeer {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: BGPPeerSpec,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BGPPeerSpec {
    /// Only this node peers; with neither `node` nor `nodeSelector`, every node does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<String>,
    #[serde(default, rename = "peerIP", skip_serializing_if = "Option::is_none")]
    pub peer_ip: Option<PeerAddress>,
    /// Peer with the nodes this selects (their AS comes from their Node or the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_selector: Option<String>,
    /// The peer's AS; required with `peerIP`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub as_number: Option<AsNumber>,
    /// Our AS towards this peer, overriding the node's.
    #[serde(
        default,
        rename = "localASNumber",
        skip_serializing_if = "Option::is_none"
    )]
    pub local_as_number: Option<AsNumber>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<BGPPassword>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_address: Option<SourceAddress>,
    /// Graceful-restart time; unset uses the speaker's default (120s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_restart_time: Option<Duration>,
    /// Keepalive interval; unset uses the speaker's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keepalive_time: Option<Duration>,
    /// How many times our AS may appear in a received path (disables loop prevention).
    #[serde(
        default,
        rename = "numAllowedLocalASNumbers",
        skip_serializing_if = "Option::is_none"
    )]
    pub num_allowed_local_as_numbers: Option<u32>,
    /// GTSM: the peer is at most this many hops away.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_security: Option<u8>,
    /// Names of BGP filters to apply, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<String>,
    /// Gateway to the peer; a static route to the peer via it is added.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reachable_by: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_hop_mode: Option<NextHopMode>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reverse_peering: Option<ReversePeering>,
}

impl BGPPeerSpec {
    /// Whether the peering applies to the node `name` with `labels`.
    pub fn selects_node(&self, name: &str, labels: &BTreeMap<String, String>) -> bool {
        match (&self.node, &self.node_selector) {
            (Some(node), _) => node == name,
            (None, Some(sel)) => margay_selector::Selector::parse(sel)
                .map(|s| s.matches(labels))
                .unwrap_or(false),
            (None, None) => true,
        }
    }
}

impl BGPPeer {
    pub fn new(name: &str, spec: BGPPeerSpec) -> BGPPeer {
        BGPPeer {
            metadata: ObjectMeta::named(name),
            spec,
        }
    }
}

impl Object for BGPPeer {
    const KIND: Kind = Kind::BGPPeer;
    object_meta!();

    fn apply_defaults(&mut self) {
        let s = &mut self.spec;
        s.source_address.get_or_insert_default();
        s.next_hop_mode.get_or_insert_default();
        // Reverse peering only means something for node-to-node (selector) peerings.
        if s.peer_selector.is_some() {
            s.reverse_peering.get_or_insert_default();
        }
    }

    fn validate_spec(&self, errs: &mut Errors) {
        let s = &self.spec;
        match (&s.node, &s.node_selector) {
            (Some(_), Some(_)) => {
                errs.add("spec.node", "cannot be set together with spec.nodeSelector")
            }
            (Some(node), None) => validate::resource_name("spec.node", node, errs),
            (None, Some(sel)) => validate::selector("spec.nodeSelector", sel, errs),
            (None, None) => {}
        }
        match (&s.peer_ip, &s.peer_selector) {
            (Some(_), Some(_)) => errs.add(
                "spec.peerIP",
                "cannot be set together with spec.peerSelector",
            ),
            (None, None) => errs.add(
                "spec.peerIP",
                "one of spec.peerIP or spec.peerSelector is required",
            ),
            (Some(addr), None) => {
                if addr.port == Some(0) {
                    errs.add("spec.peerIP", "port 0 is out of range 1-65535");
                }
                if s.as_number.is_none() {
                    errs.add("spec.asNumber", "is required when spec.peerIP is set");
                }
            }
            (None, Some(sel)) => {
                validate::selector("spec.peerSelector", sel, errs);
                if s.as_number.is_some() {
                    errs.add(
                        "spec.asNumber",
                        "must not be set with spec.peerSelector (the selected nodes' AS numbers are used)",
                    );
                }
            }
        }
        for (field, asn) in [
            ("spec.asNumber", s.as_number),
            ("spec.localASNumber", s.local_as_number),
        ] {
            if asn == Some(AsNumber(0)) {
                errs.add(field, "0 is not a valid AS number");
            }
        }
        if let Some(gw) = s.reachable_by {
            match s.peer_ip {
                None => errs.add("spec.reachableBy", "requires spec.peerIP"),
                Some(peer) if peer.ip.is_ipv4() != gw.is_ipv4() => errs.add(
                    "spec.reachableBy",
                    format!(
                        "{gw} and spec.peerIP {} are of different IP families",
                        peer.ip
                    ),
                ),
                Some(_) => {}
            }
        }
        if let Some(pw) = &s.password {
            validate_password("spec.password", pw, errs);
        }
        for (i, f) in s.filters.iter().enumerate() {
            validate::resource_name(&format!("spec.filters[{i}]"), f, errs);
        }
    }

    fn calico_ignored_fields() -> &'static [&'static str] {
        // BGP peering with workloads is not implemented.
        &["spec.localWorkloadSelector"]
    }

    fn migrate_calico(body: &mut Map<String, Value>) {
        // The deprecated `keepOriginalNextHop: true` means `nextHopMode: Keep`; Calico ignores
        // it when nextHopMode is set.
        let Some(Value::Object(spec)) = body.get_mut("spec") else {
            return;
        };
        if let Some(keep) = spec.remove("keepOriginalNextHop") {
            if keep == Value::Bool(true) {
                spec.entry("nextHopMode")
                    .or_insert_with(|| Value::String(NextHopMode::Keep.as_str().into()));
            }
        }
    }
}
