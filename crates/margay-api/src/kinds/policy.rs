//! Network policy kinds: Calico's NetworkPolicy, GlobalNetworkPolicy, Tier, Profile,
//! NetworkSet and GlobalNetworkSet with Calico's field names, defaults and rules, plus the
//! Kubernetes `networking.k8s.io/v1` NetworkPolicy exactly as upstream defines it.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;
use margay_selector::{Expr, Selector};
use serde::de;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

use crate::kind::Kind;
use crate::kinds::ipam::cidr_or_ip_list;
use crate::meta::ObjectMeta;
use crate::object::Object;
use crate::object_meta;
use crate::validate::{self, check_port_name, is_dns_label, is_dns_subdomain, Errors};

/// The tier a policy belongs to when `spec.tier` is omitted.
pub const DEFAULT_TIER: &str = "default";
/// Built-in tier for Kubernetes ClusterNetworkPolicy (admin), evaluated first.
pub const KUBE_ADMIN_TIER: &str = "kube-admin";
/// Built-in tier for Kubernetes ClusterNetworkPolicy (baseline), evaluated last.
pub const KUBE_BASELINE_TIER: &str = "kube-baseline";
/// Calico fixes the order of its built-in tiers; these are the values it enforces.
pub const DEFAULT_TIER_ORDER: f64 = 1_000_000.0;
pub const KUBE_ADMIN_TIER_ORDER: f64 = 1_000.0;
pub const KUBE_BASELINE_TIER_ORDER: f64 = 10_000_000.0;
/// The order Calico gives a Kubernetes NetworkPolicy in the default tier.
pub const KUBERNETES_POLICY_ORDER: f64 = 1_000.0;

/// Label Calico's client stamps on every policy for tier lookups; not user data.
const TIER_LABEL: &str = "projectcalico.org/tier";
/// Label Calico reserves for mapping namespaces into its data model.
const NAMESPACE_LABEL: &str = "projectcalico.org/namespace";
/// Names Calico generates for converted policies, which are exempt from the tier-prefix rule.
const GENERATED_POLICY_PREFIXES: &[&str] = &[
    "knp.default.",
    "kcnp.kube-admin.",
    "kcnp.kube-baseline.",
    "ossg.",
];

const PORTS_NEED_PROTOCOL: &str = "rules that specify ports must set protocol to TCP, UDP or SCTP";
const ICMP_NEEDS_PROTOCOL: &str =
    "rules that specify ICMP fields must set protocol to ICMP or ICMPv6";
const GLOBAL_ONLY_IN_RULES: &str = "global() can only be used in a rule's namespaceSelector";

// ---------------------------------------------------------------------------------------------
// Rule building blocks
// ---------------------------------------------------------------------------------------------

/// What a rule does with a matching packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Action {
    Allow,
    Deny,
    Log,
    /// Skip the rest of this tier and continue with the next one.
    Pass,
}

/// Which direction of traffic a policy governs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum PolicyType {
    Ingress,
    Egress,
}

/// An IP protocol: one of Calico's names or a number 1-255.
///
/// Printed as Calico prints it: names as strings, numbers as integers. `6` and `TCP` are
/// different spellings of the same protocol; compare with [`Protocol::number`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    Icmp,
    IcmpV6,
    Sctp,
    UdpLite,
    Number(u8),
}

impl Protocol {
    const NAMED: [(&'static str, Protocol); 6] = [
        ("TCP", Protocol::Tcp),
        ("UDP", Protocol::Udp),
        ("ICMP", Protocol::Icmp),
        ("ICMPv6", Protocol::IcmpV6),
        ("SCTP", Protocol::Sctp),
        ("UDPLite", Protocol::UdpLite),
    ];

    /// The IANA protocol number.
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
            Protocol::Icmp => 1,
            Protocol::IcmpV6 => 58,
            Protocol::Sctp => 132,
            Protocol::UdpLite => 136,
            Protocol::Number(n) => n,
        }
    }

    /// TCP, UDP and SCTP have ports; Calico allows port matches only with them.
    pub fn supports_ports(self) -> bool {
        matches!(self.number(), 6 | 17 | 132)
    }

    pub fn is_icmp(self) -> bool {
        self.number() == 1
    }

    pub fn is_icmpv6(self) -> bool {
        self.number() == 58
    }

    fn name(self) -> Option<&'static str> {
        Self::NAMED
            .iter()
            .find(|(_, p)| *p == self)
            .map(|(n, _)| *n)
    }

    fn from_number(n: u64) -> Result<Protocol, String> {
        match u8::try_from(n) {
            Ok(n) if n > 0 => Ok(Protocol::Number(n)),
            _ => Err(format!("protocol number {n} is out of range 1-255")),
        }
    }
}

impl FromStr for Protocol {
    type Err = String;

    /// Names are case-sensitive, as Calico's validator requires; digits are a number.
    fn from_str(s: &str) -> Result<Protocol, String> {
        if let Some((_, p)) = Self::NAMED.iter().find(|(n, _)| *n == s) {
            return Ok(*p);
        }
        match s.parse::<u64>() {
            Ok(n) => Protocol::from_number(n),
            Err(_) => Err(format!(
                "unknown protocol {s:?} (expected TCP, UDP, ICMP, ICMPv6, SCTP, UDPLite or a number 1-255)"
            )),
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => f.write_str(name),
            None => write!(f, "{}", self.number()),
        }
    }
}

impl Serialize for Protocol {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.name() {
            Some(name) => s.serialize_str(name),
            None => s.serialize_u8(self.number()),
        }
    }
}

impl<'de> Deserialize<'de> for Protocol {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Protocol, D::Error> {
        crate::serde_util::number_or_string(
            d,
            "a protocol name or number",
            |n| match u64::try_from(n) {
                Ok(n) => Protocol::from_number(n).map_err(|e| e.to_string()),
                Err(_) => Err(format!("protocol number {n} is out of range 1-255")),
            },
            crate::serde_util::parse_str::<Protocol>,
        )
    }
}

/// A port match: a number, an inclusive range (`"80:90"`), or a named port.
///
/// Printed as Calico prints it: a single port as an integer, a range or a name as a string.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Port {
    Number(u16),
    Range(u16, u16),
    Named(String),
}

impl Port {
    /// Whether the numeric port `port` falls in this match (never true for a named port,
    /// which must first be resolved against the endpoint's ports).
    pub fn contains(&self, port: u16) -> bool {
        match self {
            Port::Number(p) => *p == port,
            Port::Range(lo, hi) => (*lo..=*hi).contains(&port),
            Port::Named(_) => false,
        }
    }

    fn validate(&self, field: &str, errs: &mut Errors) {
        match self {
            Port::Number(p) => validate::port(field, u32::from(*p), errs),
            Port::Range(lo, hi) => {
                validate::port(field, u32::from(*lo), errs);
                if lo > hi {
                    errs.add(field, format!("port range {lo}:{hi} is reversed"));
                }
            }
            Port::Named(_) => {}
        }
    }
}

impl FromStr for Port {
    type Err = String;

    fn from_str(s: &str) -> Result<Port, String> {
        let number = |part: &str| {
            part.parse::<u16>()
                .map_err(|_| format!("invalid port {s:?}: {part} is not a port number"))
        };
        if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
            return number(s).map(Port::Number);
        }
        if let Some((lo, hi)) = s.split_once(':') {
            let all_digits = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
            if all_digits(lo) && all_digits(hi) {
                let (lo, hi) = (number(lo)?, number(hi)?);
                return match lo.cmp(&hi) {
                    std::cmp::Ordering::Less => Ok(Port::Range(lo, hi)),
                    std::cmp::Ordering::Equal => Ok(Port::Number(lo)),
                    std::cmp::Ordering::Greater => Err(format!(
                        "invalid port range {s:?}: minimum is greater than maximum"
                    )),
                };
            }
        }
        let named = !s.is_empty()
            && s.len() <= 128
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
        if named {
            Ok(Port::Named(s.to_owned()))
        } else {
            Err(format!(
                "invalid port {s:?}: expected a number, a range \"min:max\" or a port name"
            ))
        }
    }
}

impl fmt::Display for Port {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Port::Number(p) => write!(f, "{p}"),
            Port::Range(lo, hi) => write!(f, "{lo}:{hi}"),
            Port::Named(name) => f.write_str(name),
        }
    }
}

impl Serialize for Port {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Port::Number(p) => s.serialize_u16(*p),
            other => s.collect_str(other),
        }
    }
}

impl<'de> Deserialize<'de> for Port {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Port, D::Error> {
        crate::serde_util::number_or_string(
            d,
            "a port number, a range \"min:max\" or a port name",
            |n| {
                u16::try_from(n)
                    .map(Port::Number)
                    .map_err(|_| format!("port {n} is out of range 1-65535"))
            },
            crate::serde_util::parse_str::<Port>,
        )
    }
}

/// ICMP type and code to match; the kernel can only match a code together with a type.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IcmpFields {
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub icmp_type: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<u8>,
}

impl IcmpFields {
    fn validate(&self, path: &str, errs: &mut Errors) {
        if let Some(t) = self.icmp_type {
            validate::range(&format!("{path}.type"), t, 0, 254, errs);
        }
        if self.code.is_some() && self.icmp_type.is_none() {
            errs.add(
                format!("{path}.code"),
                "an ICMP code can only be matched together with an ICMP type",
            );
        }
    }
}

/// A Kubernetes Service to match, by name (and namespace, required in global policy).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceMatch {
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// Endpoints running as matching service accounts; names and selector are ANDed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceAccountMatch {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
}

/// Match criteria for one end (source or destination) of a packet; all present criteria
/// must match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EntityRule {
    #[serde(default, skip_serializing_if = "Vec::is_empty", with = "net_list")]
    pub nets: Vec<IpNet>,
    /// Matches Calico endpoints and network sets by label. Absent means no constraint;
    /// `all()` means "any Calico endpoint", which is not the same.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub services: Option<ServiceMatch>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<Port>,
    #[serde(default, skip_serializing_if = "Vec::is_empty", with = "net_list")]
    pub not_nets: Vec<IpNet>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_selector: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_ports: Vec<Port>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_accounts: Option<ServiceAccountMatch>,
}

impl EntityRule {
    pub fn is_empty(&self) -> bool {
        *self == EntityRule::default()
    }

    /// An empty selector string means "no constraint" in Calico; store that as absent so
    /// it cannot be confused with `all()`.
    fn normalize(&mut self) {
        for s in [
            &mut self.selector,
            &mut self.namespace_selector,
            &mut self.not_selector,
        ] {
            drop_blank(s);
        }
        if let Some(sa) = &mut self.service_accounts {
            drop_blank(&mut sa.selector);
        }
    }

    fn validate(&self, path: &str, errs: &mut Errors) {
        for (name, nets) in [("nets", &self.nets), ("notNets", &self.not_nets)] {
            for (i, net) in nets.iter().enumerate() {
                validate::canonical_cidr(&format!("{path}.{name}[{i}]"), net, errs);
            }
        }
        if let Some(s) = &self.selector {
            selector_without_global(&format!("{path}.selector"), s, errs);
        }
        if let Some(s) = &self.not_selector {
            validate::selector(&format!("{path}.notSelector"), s, errs);
        }
        if let Some(s) = &self.namespace_selector {
            let field = format!("{path}.namespaceSelector");
            validate::selector(&field, s, errs);
            if let Ok(sel) = Selector::parse(s) {
                if uses_global(sel.expr()) && *sel.expr() != Expr::Global {
                    errs.add(field, "global() cannot be combined with other selectors");
                }
            }
        }
        for (name, ports) in [("ports", &self.ports), ("notPorts", &self.not_ports)] {
            for (i, port) in ports.iter().enumerate() {
                port.validate(&format!("{path}.{name}[{i}]"), errs);
            }
        }
        if let Some(sa) = &self.service_accounts {
            if let Some(s) = &sa.selector {
                validate::selector(&format!("{path}.serviceAccounts.selector"), s, errs);
            }
        }
        if let Some(svc) = &self.services {
            let field = format!("{path}.services");
            if svc.name.is_empty() {
                errs.add(format!("{field}.name"), "is required");
            } else {
                validate::resource_name(&format!("{field}.name"), &svc.name, errs);
            }
            if let Some(ns) = &svc.namespace {
                validate::dns_label(&format!("{field}.namespace"), ns, errs);
            }
            // A service match takes its addresses from the service's endpoints.
            let conflicts = [
                ("namespaceSelector", self.namespace_selector.is_some()),
                ("selector", self.selector.is_some()),
                ("notSelector", self.not_selector.is_some()),
                ("serviceAccounts", self.service_accounts.is_some()),
                ("nets", !self.nets.is_empty()),
                ("notNets", !self.not_nets.is_empty()),
            ];
            for (other, set) in conflicts {
                if set {
                    errs.add(
                        &field,
                        format!("cannot be combined with {other} in the same rule"),
                    );
                }
            }
        }
    }
}

/// Free-form information about a rule.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RuleMetadata {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// One policy or profile rule: match criteria and an action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Rule {
    pub action: Action,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_version: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<Protocol>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icmp: Option<IcmpFields>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_protocol: Option<Protocol>,
    #[serde(default, rename = "notICMP", skip_serializing_if = "Option::is_none")]
    pub not_icmp: Option<IcmpFields>,
    #[serde(default, skip_serializing_if = "EntityRule::is_empty")]
    pub source: EntityRule,
    #[serde(default, skip_serializing_if = "EntityRule::is_empty")]
    pub destination: EntityRule,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<RuleMetadata>,
}

impl Rule {
    /// A rule with only an action, matching every packet.
    pub fn new(action: Action) -> Rule {
        Rule {
            action,
            ip_version: None,
            protocol: None,
            icmp: None,
            not_protocol: None,
            not_icmp: None,
            source: EntityRule::default(),
            destination: EntityRule::default(),
            metadata: None,
        }
    }

    fn normalize(&mut self) {
        self.source.normalize();
        self.destination.normalize();
    }

    fn validate(&self, path: &str, errs: &mut Errors) {
        if let Some(v) = self.ip_version {
            if v != 4 && v != 6 {
                errs.add(format!("{path}.ipVersion"), format!("{v} is not 4 or 6"));
            }
        }
        let has_ports = self.protocol.is_some_and(Protocol::supports_ports);
        for (side, entity) in [("source", &self.source), ("destination", &self.destination)] {
            entity.validate(&format!("{path}.{side}"), errs);
            if !has_ports {
                for (name, ports) in [("ports", &entity.ports), ("notPorts", &entity.not_ports)] {
                    if !ports.is_empty() {
                        errs.add(format!("{path}.{side}.{name}"), PORTS_NEED_PROTOCOL);
                    }
                }
            }
        }
        // Destination services match each endpoint's own ports.
        if self.destination.services.is_some() {
            for (name, ports) in [
                ("ports", &self.destination.ports),
                ("notPorts", &self.destination.not_ports),
            ] {
                if !ports.is_empty() {
                    errs.add(
                        format!("{path}.destination.{name}"),
                        "cannot be combined with services",
                    );
                }
            }
        }

        let icmp_protocol = self.protocol.is_some_and(|p| p.is_icmp() || p.is_icmpv6());
        for (name, fields) in [("icmp", &self.icmp), ("notICMP", &self.not_icmp)] {
            if let Some(fields) = fields {
                let field = format!("{path}.{name}");
                fields.validate(&field, errs);
                if !icmp_protocol {
                    errs.add(field, ICMP_NEEDS_PROTOCOL);
                }
            }
        }
        if let Some(v) = self.ip_version {
            for p in [self.protocol, self.not_protocol].into_iter().flatten() {
                if p.is_icmp() && v != 4 {
                    errs.add(format!("{path}.ipVersion"), "must be 4 with protocol ICMP");
                }
                if p.is_icmpv6() && v != 6 {
                    errs.add(
                        format!("{path}.ipVersion"),
                        "must be 6 with protocol ICMPv6",
                    );
                }
            }
        }

        // All the CIDRs of a rule must be of one family, matching ipVersion if set.
        let (mut seen_v4, mut seen_v6) = (false, false);
        for (name, nets) in [
            ("source.nets", &self.source.nets),
            ("source.notNets", &self.source.not_nets),
            ("destination.nets", &self.destination.nets),
            ("destination.notNets", &self.destination.not_nets),
        ] {
            let v4 = nets.iter().any(|n| matches!(n, IpNet::V4(_)));
            let v6 = nets.iter().any(|n| matches!(n, IpNet::V6(_)));
            let field = format!("{path}.{name}");
            if let Some(v) = self.ip_version {
                if (v4 && v != 4) || (v6 && v != 6) {
                    errs.add(&field, format!("CIDR family does not match ipVersion {v}"));
                }
            }
            seen_v4 |= v4;
            seen_v6 |= v6;
            // Reported at each field with CIDRs once both families have appeared.
            if (v4 || v6) && seen_v4 && seen_v6 {
                errs.add(&field, "a rule cannot mix IPv4 and IPv6 CIDRs");
            }
        }

        if let Some(meta) = &self.metadata {
            for key in meta.annotations.keys() {
                // Annotation keys follow label-key rules; values are free-form.
                validate::label(&format!("{path}.metadata.annotations"), key, "", errs);
            }
        }
    }
}

/// Where a rule list lives, which decides the service-match rules that apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RuleScope {
    Namespaced,
    Global,
    Profile,
}

fn normalize_rules(ingress: &mut [Rule], egress: &mut [Rule]) {
    ingress
        .iter_mut()
        .chain(egress.iter_mut())
        .for_each(Rule::normalize);
}

fn validate_rules(ingress: &[Rule], egress: &[Rule], scope: RuleScope, errs: &mut Errors) {
    for (dir, rules) in [("ingress", ingress), ("egress", egress)] {
        for (i, rule) in rules.iter().enumerate() {
            let path = format!("spec.{dir}[{i}]");
            rule.validate(&path, errs);
            if scope == RuleScope::Profile {
                continue;
            }
            // Services may only name the remote end: the source of ingress, the
            // destination of egress.
            let (local, remote) = match dir {
                "ingress" => (("destination", &rule.destination), ("source", &rule.source)),
                _ => (("source", &rule.source), ("destination", &rule.destination)),
            };
            if local.1.services.is_some() {
                errs.add(
                    format!("{path}.{}.services", local.0),
                    format!("not allowed in the {} of an {dir} rule", local.0),
                );
            }
            if scope == RuleScope::Global {
                if let Some(svc) = &remote.1.services {
                    if svc.namespace.is_none() {
                        errs.add(
                            format!("{path}.{}.services.namespace", remote.0),
                            "is required in a global policy",
                        );
                    }
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Policies
// ---------------------------------------------------------------------------------------------

/// Namespaced Calico policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkPolicy {
    pub metadata: ObjectMeta,
    pub spec: NetworkPolicySpec,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkPolicySpec {
    #[serde(default = "default_tier")]
    pub tier: String,
    /// Lower orders apply first; absent means "last" within the tier.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "order")]
    pub order: Option<f64>,
    /// The endpoints the policy applies to; defaulted to `all()`.
    #[serde(default)]
    pub selector: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_selector: Option<String>,
    /// Defaulted from the presence of ingress/egress rules, as Calico does.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub types: Vec<PolicyType>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingress: Vec<Rule>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress: Vec<Rule>,
}

impl Object for NetworkPolicy {
    const KIND: Kind = Kind::NetworkPolicy;
    object_meta!();

    fn apply_defaults(&mut self) {
        let s = &mut self.spec;
        default_policy(
            &mut s.tier,
            &mut s.selector,
            &mut s.service_account_selector,
            &mut s.types,
            &mut s.ingress,
            &mut s.egress,
        );
    }

    fn validate_spec(&self, errs: &mut Errors) {
        let s = &self.spec;
        validate_policy(
            &PolicyView {
                name: &self.metadata.name,
                global: false,
                tier: &s.tier,
                selector: &s.selector,
                service_account_selector: s.service_account_selector.as_deref(),
                types: &s.types,
            },
            errs,
        );
        validate_rules(&s.ingress, &s.egress, RuleScope::Namespaced, errs);
    }

    fn calico_ignored_fields() -> &'static [&'static str] {
        POLICY_IGNORED_FIELDS
    }

    fn migrate_calico(body: &mut Map<String, Value>) {
        migrate_policy(body);
    }
}

/// Cluster-wide Calico policy; also selects host endpoints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GlobalNetworkPolicy {
    pub metadata: ObjectMeta,
    pub spec: GlobalNetworkPolicySpec,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GlobalNetworkPolicySpec {
    #[serde(default = "default_tier")]
    pub tier: String,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "order")]
    pub order: Option<f64>,
    #[serde(default)]
    pub selector: String,
    /// Restricts the policy to endpoints in matching namespaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_selector: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub types: Vec<PolicyType>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingress: Vec<Rule>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress: Vec<Rule>,
    /// Also apply to traffic forwarded through a host endpoint.
    #[serde(default, skip_serializing_if = "is_false")]
    pub apply_on_forward: bool,
    /// Accepted so Calico documents decode, but rejected when true: the dataplane does not
    /// implement untracked policy yet.
    #[serde(default, skip_serializing_if = "is_false")]
    pub do_not_track: bool,
    /// Accepted so Calico documents decode, but rejected when true: the dataplane does not
    /// implement pre-DNAT policy yet.
    #[serde(default, rename = "preDNAT", skip_serializing_if = "is_false")]
    pub pre_dnat: bool,
}

impl Object for GlobalNetworkPolicy {
    const KIND: Kind = Kind::GlobalNetworkPolicy;
    object_meta!();

    fn apply_defaults(&mut self) {
        let s = &mut self.spec;
        drop_blank(&mut s.namespace_selector);
        default_policy(
            &mut s.tier,
            &mut s.selector,
            &mut s.service_account_selector,
            &mut s.types,
            &mut s.ingress,
            &mut s.egress,
        );
    }

    fn validate_spec(&self, errs: &mut Errors) {
        let s = &self.spec;
        validate_policy(
            &PolicyView {
                name: &self.metadata.name,
                global: true,
                tier: &s.tier,
                selector: &s.selector,
                service_account_selector: s.service_account_selector.as_deref(),
                types: &s.types,
            },
            errs,
        );
        if let Some(ns) = &s.namespace_selector {
            selector_without_global("spec.namespaceSelector", ns, errs);
        }
        if s.do_not_track {
            errs.add("spec.doNotTrack", "doNotTrack is not supported yet");
        }
        if s.pre_dnat {
            errs.add("spec.preDNAT", "preDNAT is not supported yet");
        }
        validate_rules(&s.ingress, &s.egress, RuleScope::Global, errs);
    }

    fn calico_ignored_fields() -> &'static [&'static str] {
        POLICY_IGNORED_FIELDS
    }

    fn migrate_calico(body: &mut Map<String, Value>) {
        migrate_policy(body);
    }
}

/// `spec.performanceHints` only tunes Felix's caching. Rule `http` matches need an L7 proxy.
const POLICY_IGNORED_FIELDS: &[&str] = &[
    "spec.performanceHints",
    "spec.ingress[*].http",
    "spec.egress[*].http",
];

/// The fields shared by both policy kinds that [`validate_policy`] checks.
struct PolicyView<'a> {
    name: &'a str,
    global: bool,
    tier: &'a str,
    selector: &'a str,
    service_account_selector: Option<&'a str>,
    types: &'a [PolicyType],
}

fn default_tier() -> String {
    DEFAULT_TIER.to_owned()
}

fn default_policy(
    tier: &mut String,
    selector: &mut String,
    service_account_selector: &mut Option<String>,
    types: &mut Vec<PolicyType>,
    ingress: &mut [Rule],
    egress: &mut [Rule],
) {
    if tier.is_empty() {
        *tier = default_tier();
    }
    if selector.trim().is_empty() {
        *selector = "all()".into();
    }
    drop_blank(service_account_selector);
    // Calico: ingress unless there are only egress rules; both when both are present.
    if types.is_empty() {
        *types = match (ingress.is_empty(), egress.is_empty()) {
            (_, true) => vec![PolicyType::Ingress],
            (true, false) => vec![PolicyType::Egress],
            (false, false) => vec![PolicyType::Ingress, PolicyType::Egress],
        };
    }
    normalize_rules(ingress, egress);
}

fn validate_policy(p: &PolicyView<'_>, errs: &mut Errors) {
    if is_dns_label(p.tier) {
        validate_policy_name(p.name, p.tier, p.global, errs);
    } else {
        errs.add(
            "spec.tier",
            format!(
                "{:?} is not a valid tier name (a DNS label: lower-case letters, digits and '-')",
                p.tier
            ),
        );
    }
    selector_without_global("spec.selector", p.selector, errs);
    if let Some(s) = p.service_account_selector {
        selector_without_global("spec.serviceAccountSelector", s, errs);
    }
    for (i, t) in p.types.iter().enumerate() {
        if p.types[..i].contains(t) {
            errs.add(
                format!("spec.types[{i}]"),
                format!("{t:?} is listed more than once"),
            );
        }
    }
}

/// Calico's policy names: a DNS label, optionally prefixed `<tier>.`; namespaced policies
/// may also carry the generated `knp.default.`/`ossg.default.` prefixes. A policy outside the
/// default tier must be prefixed with its tier (`names.ValidateTieredPolicyName`).
fn validate_policy_name(name: &str, tier: &str, global: bool, errs: &mut Errors) {
    if name.is_empty() {
        return;
    }
    let generated = GENERATED_POLICY_PREFIXES
        .iter()
        .any(|p| name.starts_with(p));
    let shape_ok = match name.split_once('.') {
        None => is_dns_label(name),
        Some((prefix, rest)) => {
            is_dns_label(prefix) && is_dns_label(rest)
                || !global
                    && ["knp.default.", "ossg.default."]
                        .iter()
                        .any(|p| name.strip_prefix(p).is_some_and(is_dns_subdomain))
        }
    };
    if !shape_ok {
        errs.add(
            "metadata.name",
            format!(
                "{name:?} is not a valid policy name: use lower-case letters, digits and '-', \
                 optionally prefixed by the tier and a dot (e.g. \"security.allow-dns\")"
            ),
        );
        return;
    }
    if generated {
        return;
    }
    let tier_ok = if tier == DEFAULT_TIER {
        !name.contains('.') || name.starts_with("default.")
    } else {
        name.strip_prefix(tier)
            .is_some_and(|rest| rest.starts_with('.'))
    };
    if !tier_ok {
        let message = match name.split_once('.') {
            Some((prefix, _)) if tier == DEFAULT_TIER => format!(
                "{name:?} is prefixed with tier {prefix:?} but spec.tier is \"default\": \
                 set spec.tier or drop the prefix"
            ),
            _ => {
                let base = name.split_once('.').map_or(name, |(_, rest)| rest);
                format!(
                    "a policy in tier {tier:?} must be named \"{tier}.<name>\" (e.g. \"{tier}.{base}\")"
                )
            }
        };
        errs.add("metadata.name", message);
    }
}

/// Rewrites Calico's spellings: CRD (`crd.projectcalico.org/v1`) names of default-tier
/// policies carry a `default.` prefix the v3 API hides; the tier label is Calico bookkeeping.
fn migrate_policy(body: &mut Map<String, Value>) {
    let tier = body
        .get("spec")
        .and_then(|s| s.get("tier"))
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
        .unwrap_or(DEFAULT_TIER)
        .to_owned();
    if let Some(Value::Object(meta)) = body.get_mut("metadata") {
        if tier == DEFAULT_TIER {
            if let Some(Value::String(name)) = meta.get_mut("name") {
                if let Some(rest) = name.strip_prefix("default.").filter(|r| !r.is_empty()) {
                    *name = rest.to_owned();
                }
            }
        }
        if let Some(Value::Object(labels)) = meta.get_mut("labels") {
            labels.remove(TIER_LABEL);
            if labels.is_empty() {
                meta.remove("labels");
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Tiers
// ---------------------------------------------------------------------------------------------

/// What happens to traffic selected by a tier's policies that no rule decided.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum TierDefaultAction {
    #[default]
    Deny,
    Pass,
}

/// An ordered group of policies; tiers apply in `order`, policies within a tier in theirs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Tier {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: TierSpec,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TierSpec {
    /// Absent means "after every ordered tier".
    #[serde(default, skip_serializing_if = "Option::is_none", with = "order")]
    pub order: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_action: Option<TierDefaultAction>,
}

impl Tier {
    /// The order and default action Calico fixes for its built-in tiers.
    fn built_in(name: &str) -> Option<(f64, TierDefaultAction)> {
        match name {
            DEFAULT_TIER => Some((DEFAULT_TIER_ORDER, TierDefaultAction::Deny)),
            KUBE_ADMIN_TIER => Some((KUBE_ADMIN_TIER_ORDER, TierDefaultAction::Pass)),
            KUBE_BASELINE_TIER => Some((KUBE_BASELINE_TIER_ORDER, TierDefaultAction::Pass)),
            _ => None,
        }
    }

    pub fn default_action(&self) -> TierDefaultAction {
        self.spec.default_action.unwrap_or_default()
    }
}

impl Object for Tier {
    const KIND: Kind = Kind::Tier;
    object_meta!();

    fn apply_defaults(&mut self) {
        let built_in = Tier::built_in(&self.metadata.name);
        if let Some((order, action)) = built_in {
            self.spec.order.get_or_insert(order);
            self.spec.default_action.get_or_insert(action);
        }
        self.spec
            .default_action
            .get_or_insert_with(Default::default);
    }

    fn validate_spec(&self, errs: &mut Errors) {
        let name = &self.metadata.name;
        // Tier names appear inside policy names, so they cannot contain dots.
        if !name.is_empty() && !is_dns_label(name) {
            errs.add(
                "metadata.name",
                format!("{name:?} is not a valid tier name (a DNS label: lower-case letters, digits and '-', at most 63 characters)"),
            );
        }
        if let Some((order, action)) = Tier::built_in(name) {
            if self.spec.order != Some(order) {
                errs.add(
                    "spec.order",
                    format!("the built-in tier {name:?} must have order {order}"),
                );
            }
            if self.default_action() != action {
                errs.add(
                    "spec.defaultAction",
                    format!("the built-in tier {name:?} must have defaultAction {action:?}"),
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Profiles and network sets
// ---------------------------------------------------------------------------------------------

/// Rules and labels applied to every endpoint that lists the profile (Calico creates
/// `kns.<namespace>` and `ksa.<namespace>.<serviceaccount>` profiles for Kubernetes).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Profile {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: ProfileSpec,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProfileSpec {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingress: Vec<Rule>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress: Vec<Rule>,
    /// Labels added to each endpoint using the profile; the endpoint's own labels win.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels_to_apply: BTreeMap<String, String>,
}

impl Object for Profile {
    const KIND: Kind = Kind::Profile;
    object_meta!();

    fn apply_defaults(&mut self) {
        normalize_rules(&mut self.spec.ingress, &mut self.spec.egress);
    }

    fn validate_spec(&self, errs: &mut Errors) {
        validate_rules(
            &self.spec.ingress,
            &self.spec.egress,
            RuleScope::Profile,
            errs,
        );
        for (k, v) in &self.spec.labels_to_apply {
            validate::label(&format!("spec.labelsToApply.{k}"), k, v, errs);
        }
    }

    fn calico_ignored_fields() -> &'static [&'static str] {
        &["spec.ingress[*].http", "spec.egress[*].http"]
    }
}

/// A named set of networks in one namespace, selectable by label from policy rules.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkSet {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: NetworkSetSpec,
}

/// A cluster-wide set of networks, selectable by label from policy rules.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GlobalNetworkSet {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: NetworkSetSpec,
}

/// The spec shared by both network set kinds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkSetSpec {
    /// CIDRs or single addresses; a CIDR with host bits is masked, as Calico accepts it.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        with = "cidr_or_ip_list"
    )]
    pub nets: Vec<IpNet>,
}

impl NetworkSetSpec {
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.nets.iter().any(|n| n.contains(&ip))
    }
}

fn validate_network_set(meta: &ObjectMeta, errs: &mut Errors) {
    if meta.labels.contains_key(NAMESPACE_LABEL) {
        errs.add(
            format!("metadata.labels.{NAMESPACE_LABEL}"),
            "is reserved: Calico sets it to map namespaces into policy",
        );
    }
}

/// Domain-based egress sets are a Calico Enterprise feature.
const NETWORK_SET_IGNORED_FIELDS: &[&str] = &["spec.allowedEgressDomains"];

impl Object for NetworkSet {
    const KIND: Kind = Kind::NetworkSet;
    object_meta!();

    fn validate_spec(&self, errs: &mut Errors) {
        validate_network_set(&self.metadata, errs);
    }

    fn calico_ignored_fields() -> &'static [&'static str] {
        NETWORK_SET_IGNORED_FIELDS
    }
}

impl Object for GlobalNetworkSet {
    const KIND: Kind = Kind::GlobalNetworkSet;
    object_meta!();

    fn validate_spec(&self, errs: &mut Errors) {
        validate_network_set(&self.metadata, errs);
    }

    fn calico_ignored_fields() -> &'static [&'static str] {
        NETWORK_SET_IGNORED_FIELDS
    }
}

// ---------------------------------------------------------------------------------------------
// Kubernetes NetworkPolicy (networking.k8s.io/v1)
// ---------------------------------------------------------------------------------------------

/// A Kubernetes NetworkPolicy, decoded exactly as the API server stores it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KubernetesNetworkPolicy {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: KubernetesNetworkPolicySpec,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KubernetesNetworkPolicySpec {
    /// The pods in the policy's namespace it applies to; empty selects all of them.
    #[serde(default)]
    pub pod_selector: LabelSelector,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingress: Vec<NetworkPolicyIngressRule>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress: Vec<NetworkPolicyEgressRule>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policy_types: Vec<PolicyType>,
}

/// Traffic allowed in: from any of `from` (all sources when empty) to any of `ports` (all
/// ports when empty).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkPolicyIngressRule {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<NetworkPolicyPort>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<NetworkPolicyPeer>,
}

/// Traffic allowed out: to any of `to` (all destinations when empty) on any of `ports`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkPolicyEgressRule {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<NetworkPolicyPort>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<NetworkPolicyPeer>,
}

/// The protocols a Kubernetes NetworkPolicy port may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum KubernetesProtocol {
    #[serde(rename = "TCP")]
    Tcp,
    #[serde(rename = "UDP")]
    Udp,
    #[serde(rename = "SCTP")]
    Sctp,
}

impl From<KubernetesProtocol> for Protocol {
    fn from(p: KubernetesProtocol) -> Protocol {
        match p {
            KubernetesProtocol::Tcp => Protocol::Tcp,
            KubernetesProtocol::Udp => Protocol::Udp,
            KubernetesProtocol::Sctp => Protocol::Sctp,
        }
    }
}

/// Kubernetes' `IntOrString`: a port number or a named container port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum IntOrString {
    Int(i32),
    String(String),
}

impl Serialize for IntOrString {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            IntOrString::Int(i) => s.serialize_i32(*i),
            IntOrString::String(v) => s.serialize_str(v),
        }
    }
}

impl<'de> Deserialize<'de> for IntOrString {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<IntOrString, D::Error> {
        crate::serde_util::number_or_string(
            d,
            "an integer or a string",
            |n| {
                i32::try_from(n)
                    .map(IntOrString::Int)
                    .map_err(|_| format!("{n} does not fit in a 32-bit integer"))
            },
            |s| Ok(IntOrString::String(s.to_owned())),
        )
    }
}

/// A port (or, with `endPort`, a range) and protocol; protocol defaults to TCP.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkPolicyPort {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<KubernetesProtocol>,
    /// All ports when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<IntOrString>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_port: Option<i32>,
}

impl NetworkPolicyPort {
    /// Upstream `ValidateNetworkPolicyPort`.
    fn validate(&self, path: &str, errs: &mut Errors) {
        match &self.port {
            Some(IntOrString::Int(p)) => {
                validate::range(&format!("{path}.port"), *p, 1, 65535, errs);
                if let Some(end) = self.end_port {
                    if end < *p {
                        errs.add(
                            format!("{path}.endPort"),
                            format!("{end} must be greater than or equal to `port` ({p})"),
                        );
                    }
                    validate::range(&format!("{path}.endPort"), end, 1, 65535, errs);
                }
            }
            Some(IntOrString::String(name)) => {
                if self.end_port.is_some() {
                    errs.add(
                        format!("{path}.endPort"),
                        "may not be specified when `port` is non-numeric",
                    );
                }
                if let Err(msg) = check_port_name(name) {
                    errs.add(format!("{path}.port"), msg);
                }
            }
            None => {
                if self.end_port.is_some() {
                    errs.add(
                        format!("{path}.endPort"),
                        "may not be specified when `port` is not specified",
                    );
                }
            }
        }
    }
}

/// One allowed peer: pods (by pod and/or namespace selector) or an IP block.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkPolicyPeer {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<LabelSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_block: Option<IPBlock>,
}

impl NetworkPolicyPeer {
    /// Upstream `ValidateNetworkPolicyPeer`.
    fn validate(&self, path: &str, errs: &mut Errors) {
        if let Some(s) = &self.pod_selector {
            s.validate(&format!("{path}.podSelector"), errs);
        }
        if let Some(s) = &self.namespace_selector {
            s.validate(&format!("{path}.namespaceSelector"), errs);
        }
        if let Some(b) = &self.ip_block {
            b.validate(&format!("{path}.ipBlock"), errs);
        }
        let count = [
            self.pod_selector.is_some(),
            self.namespace_selector.is_some(),
            self.ip_block.is_some(),
        ]
        .into_iter()
        .filter(|set| *set)
        .count();
        if count == 0 {
            errs.add(path, "must specify a peer");
        } else if count > 1 && self.ip_block.is_some() {
            errs.add(path, "may not specify both ipBlock and another peer");
        }
    }
}

/// A CIDR, minus the `except` CIDRs inside it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IPBlock {
    pub cidr: IpNet,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub except: Vec<IpNet>,
}

impl IPBlock {
    /// Upstream `ValidateIPBlock`: each exception must be a strict subset of `cidr`. Host
    /// bits are allowed, as upstream parses CIDRs leniently.
    fn validate(&self, path: &str, errs: &mut Errors) {
        let cidr = self.cidr.trunc();
        for (i, except) in self.except.iter().enumerate() {
            let inner = except.trunc();
            let strict_subset = cidr.contains(&inner) && inner.prefix_len() > cidr.prefix_len();
            if !strict_subset {
                errs.add(
                    format!("{path}.except[{i}]"),
                    format!("{except} must be a strict subset of `cidr` ({})", self.cidr),
                );
            }
        }
    }
}

/// A Kubernetes label selector; the requirements are ANDed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LabelSelector {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_expressions: Vec<LabelSelectorRequirement>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LabelSelectorRequirement {
    pub key: String,
    pub operator: LabelSelectorOperator,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum LabelSelectorOperator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

impl LabelSelector {
    /// True for `{}`, which selects everything.
    pub fn is_empty(&self) -> bool {
        self.match_labels.is_empty() && self.match_expressions.is_empty()
    }

    /// The equivalent selector in Margay's (Calico's) selector language, built term by term
    /// as Calico's converter does (`k == 'v'`, `k in { 'a', 'b' }`, `has(k)`, `! has(k)`,
    /// joined with `&&`). An empty selector gives `all()`. Scoping a pod selector to
    /// Kubernetes pods and to the policy's namespace is the policy engine's job.
    pub fn to_selector_string(&self) -> String {
        let mut terms: Vec<String> = self
            .match_labels
            .iter()
            .map(|(k, v)| format!("{k} == '{v}'"))
            .collect();
        for req in &self.match_expressions {
            let key = &req.key;
            let values = req.values.join("', '");
            terms.push(match req.operator {
                LabelSelectorOperator::In => format!("{key} in {{ '{values}' }}"),
                LabelSelectorOperator::NotIn => format!("{key} not in {{ '{values}' }}"),
                LabelSelectorOperator::Exists => format!("has({key})"),
                LabelSelectorOperator::DoesNotExist => format!("! has({key})"),
            });
        }
        if terms.is_empty() {
            "all()".to_owned()
        } else {
            terms.join(" && ")
        }
    }

    /// Upstream `ValidateLabelSelector`.
    fn validate(&self, path: &str, errs: &mut Errors) {
        for (k, v) in &self.match_labels {
            validate::label(&format!("{path}.matchLabels.{k}"), k, v, errs);
        }
        for (i, req) in self.match_expressions.iter().enumerate() {
            let path = format!("{path}.matchExpressions[{i}]");
            validate::label(&format!("{path}.key"), &req.key, "", errs);
            let needs_values = matches!(
                req.operator,
                LabelSelectorOperator::In | LabelSelectorOperator::NotIn
            );
            if needs_values && req.values.is_empty() {
                errs.add(
                    format!("{path}.values"),
                    "must be specified when `operator` is 'In' or 'NotIn'",
                );
            }
            if !needs_values && !req.values.is_empty() {
                errs.add(
                    format!("{path}.values"),
                    "may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
                );
            }
            for (j, v) in req.values.iter().enumerate() {
                // A fixed valid key, so that only the value is checked here.
                validate::label(&format!("{path}.values[{j}]"), "k", v, errs);
            }
        }
    }
}

impl Object for KubernetesNetworkPolicy {
    const KIND: Kind = Kind::KubernetesNetworkPolicy;
    object_meta!();

    /// Upstream defaulting: TCP on every port; Ingress always applies and Egress too when
    /// egress rules are present, if `policyTypes` is unset.
    fn apply_defaults(&mut self) {
        let s = &mut self.spec;
        let ports = s
            .ingress
            .iter_mut()
            .flat_map(|r| r.ports.iter_mut())
            .chain(s.egress.iter_mut().flat_map(|r| r.ports.iter_mut()));
        for port in ports {
            port.protocol.get_or_insert(KubernetesProtocol::Tcp);
        }
        if s.policy_types.is_empty() {
            s.policy_types.push(PolicyType::Ingress);
            if !s.egress.is_empty() {
                s.policy_types.push(PolicyType::Egress);
            }
        }
    }

    /// Upstream `ValidateNetworkPolicySpec`.
    fn validate_spec(&self, errs: &mut Errors) {
        let s = &self.spec;
        s.pod_selector.validate("spec.podSelector", errs);
        for (i, rule) in s.ingress.iter().enumerate() {
            for (j, port) in rule.ports.iter().enumerate() {
                port.validate(&format!("spec.ingress[{i}].ports[{j}]"), errs);
            }
            for (j, peer) in rule.from.iter().enumerate() {
                peer.validate(&format!("spec.ingress[{i}].from[{j}]"), errs);
            }
        }
        for (i, rule) in s.egress.iter().enumerate() {
            for (j, port) in rule.ports.iter().enumerate() {
                port.validate(&format!("spec.egress[{i}].ports[{j}]"), errs);
            }
            for (j, peer) in rule.to.iter().enumerate() {
                peer.validate(&format!("spec.egress[{i}].to[{j}]"), errs);
            }
        }
        if s.policy_types.len() > 2 {
            errs.add(
                "spec.policyTypes",
                "may not specify more than two policyTypes",
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Shared helpers
// ---------------------------------------------------------------------------------------------

/// Accepts CIDRs or bare addresses (as /32 or /128) like [`cidr_or_ip_list`], but keeps a
/// CIDR's host bits as written so validation can reject a non-canonical network, as Calico
/// does for rule nets and endpoint networks.
pub mod net_list {
    use super::*;

    pub fn parse(s: &str) -> Result<IpNet, String> {
        s.parse::<IpNet>()
            .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
            .map_err(|_| format!("{s:?} is neither a CIDR nor an IP address"))
    }

    pub fn serialize<S: Serializer>(nets: &[IpNet], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(nets.iter().map(ToString::to_string))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<IpNet>, D::Error> {
        let raw = Vec::<String>::deserialize(d)?;
        raw.iter()
            .map(|s| parse(s).map_err(de::Error::custom))
            .collect()
    }
}

/// Orders print as integers when whole (`order: 100`, as Calico prints them).
mod order {
    use super::*;

    /// Whole numbers below 2^53 convert to i64 exactly.
    const EXACT: f64 = 9_007_199_254_740_992.0;

    pub fn serialize<S: Serializer>(v: &Option<f64>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(o) if o.fract() == 0.0 && o.abs() < EXACT => s.serialize_i64(*o as i64),
            Some(o) => s.serialize_f64(*o),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
        Option::<f64>::deserialize(d)
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// Calico omits empty strings, so a blank value means unset.
pub(crate) fn drop_blank(s: &mut Option<String>) {
    if s.as_deref().is_some_and(|v| v.trim().is_empty()) {
        *s = None;
    }
}

fn uses_global(expr: &Expr) -> bool {
    match expr {
        Expr::Global => true,
        Expr::Not(inner) => uses_global(inner),
        Expr::And(operands) | Expr::Or(operands) => operands.iter().any(uses_global),
        _ => false,
    }
}

fn selector_without_global(field: &str, value: &str, errs: &mut Errors) {
    validate::selector(field, value, errs);
    if Selector::parse(value).is_ok_and(|s| uses_global(s.expr())) {
        errs.add(field, GLOBAL_ONLY_IN_RULES);
    }
}
