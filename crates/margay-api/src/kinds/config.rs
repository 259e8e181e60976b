//! Per-cluster and per-node configuration of Margay's daemons: `AgentConfiguration` (Calico's
//! FelixConfiguration) and `ControllersConfiguration` (Calico's KubeControllersConfiguration),
//! plus the Go-style [`Duration`] and the string enums the configuration kinds share.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use ipnet::IpNet;
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::{Map, Value};

use crate::kind::Kind;
use crate::kinds::k8s::PortProtocol;
use crate::meta::ObjectMeta;
use crate::object::Object;
use crate::object_meta;
use crate::validate::{self, Errors};

/// Defines a string-valued enum. Calico matches these case-insensitively (its CRD patterns are
/// `(?i)`), so parsing does too; printing always uses the canonical spelling.
macro_rules! string_enum {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident {
            $($(#[$vmeta:meta])* $variant:ident => $text:literal),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        $vis enum $name {
            $($(#[$vmeta])* $variant),+
        }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl ::std::str::FromStr for $name {
            type Err = String;

            fn from_str(s: &str) -> Result<Self, String> {
                $name::ALL
                    .iter()
                    .copied()
                    .find(|v| v.as_str().eq_ignore_ascii_case(s))
                    .ok_or_else(|| {
                        let names: Vec<&str> = $name::ALL.iter().map(|v| v.as_str()).collect();
                        format!("{s:?} is not one of {}", names.join(", "))
                    })
            }
        }

        impl ::serde::Serialize for $name {
            fn serialize<S: ::serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> ::serde::Deserialize<'de> for $name {
            fn deserialize<D: ::serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(::serde::de::Error::custom)
            }
        }
    };
}
pub(crate) use string_enum;

// ---------------------------------------------------------------------------------------------
// Duration
// ---------------------------------------------------------------------------------------------

/// A duration written the way Go's `time.Duration` (and so Kubernetes' `metav1.Duration`) reads
/// and prints it: `"90s"`, `"1h2m3.5s"`, `"250ms"`. Printing matches `kubectl get -o yaml`
/// output, so `90s` prints as `1m30s`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Duration(std::time::Duration);

/// Go stores durations as signed 64-bit nanoseconds; accepting more would not round-trip.
const MAX_GO_DURATION_NANOS: u128 = i64::MAX as u128;

impl Duration {
    pub const ZERO: Duration = Duration(std::time::Duration::ZERO);

    pub const fn from_secs(secs: u64) -> Duration {
        Duration(std::time::Duration::from_secs(secs))
    }

    pub const fn from_mins(mins: u64) -> Duration {
        Duration(std::time::Duration::from_secs(mins * 60))
    }

    pub const fn from_millis(millis: u64) -> Duration {
        Duration(std::time::Duration::from_millis(millis))
    }

    pub const fn as_std(self) -> std::time::Duration {
        self.0
    }

    pub const fn is_zero(self) -> bool {
        self.0.is_zero()
    }
}

impl From<std::time::Duration> for Duration {
    fn from(d: std::time::Duration) -> Duration {
        Duration(d)
    }
}

impl From<Duration> for std::time::Duration {
    fn from(d: Duration) -> std::time::Duration {
        d.0
    }
}

impl FromStr for Duration {
    type Err = String;

    /// Go's `time.ParseDuration` grammar, minus negative values (no setting takes one).
    fn from_str(text: &str) -> Result<Duration, String> {
        let err = |why: &str| format!("invalid duration {text:?}: {why}");
        let mut rest = text;
        if let Some(r) = rest.strip_prefix('+') {
            rest = r;
        } else if rest.starts_with('-') {
            return Err(err("must not be negative"));
        }
        if rest == "0" {
            return Ok(Duration::ZERO);
        }
        if rest.is_empty() {
            return Err(err("expected a number and a unit, such as \"90s\""));
        }
        let not_digit = |c: char| !c.is_ascii_digit();
        let mut total: u128 = 0;
        while !rest.is_empty() {
            let (int_digits, r) = rest.split_at(rest.find(not_digit).unwrap_or(rest.len()));
            let (frac_digits, r) = match r.strip_prefix('.') {
                Some(r) => r.split_at(r.find(not_digit).unwrap_or(r.len())),
                None => ("", r),
            };
            if int_digits.is_empty() && frac_digits.is_empty() {
                return Err(err("expected a number"));
            }
            let (unit, r) = r.split_at(
                r.find(|c: char| c.is_ascii_digit() || c == '.')
                    .unwrap_or(r.len()),
            );
            let unit_nanos: u128 = match unit {
                "ns" => 1,
                "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
                "ms" => 1_000_000,
                "s" => 1_000_000_000,
                "m" => 60_000_000_000,
                "h" => 3_600_000_000_000,
                "" => return Err(err("missing unit (ns, us, ms, s, m or h)")),
                other => {
                    return Err(err(&format!(
                        "unknown unit {other:?} (expected ns, us, ms, s, m or h)"
                    )))
                }
            };
            let too_large = || err("too large (the maximum is about 292 years)");
            let int: u128 = if int_digits.is_empty() {
                0
            } else {
                int_digits.parse().map_err(|_| too_large())?
            };
            let mut nanos = int.checked_mul(unit_nanos).ok_or_else(too_large)?;
            if !frac_digits.is_empty() {
                // Digits past the 18th cannot change the result by a nanosecond.
                let digits = &frac_digits[..frac_digits.len().min(18)];
                let numerator: u128 = digits.parse().map_err(|_| too_large())?;
                nanos += numerator * unit_nanos / 10u128.pow(digits.len() as u32);
            }
            total = total.checked_add(nanos).ok_or_else(too_large)?;
            if total > MAX_GO_DURATION_NANOS {
                return Err(too_large());
            }
            rest = r;
        }
        let nanos = u64::try_from(total).map_err(|_| err("too large"))?;
        Ok(Duration(std::time::Duration::from_nanos(nanos)))
    }
}

/// `value / 10^digits` with the fraction's trailing zeros trimmed, as Go prints it.
fn decimal(value: u128, digits: u32) -> String {
    let scale = 10u128.pow(digits);
    let (int, frac) = (value / scale, value % scale);
    if frac == 0 {
        return int.to_string();
    }
    let frac = format!("{frac:0width$}", width = digits as usize);
    format!("{int}.{}", frac.trim_end_matches('0'))
}

impl fmt::Display for Duration {
    /// Go's `Duration.String()`: `0s`, `1.5µs`, `250ms`, `1m30s`, `1h0m0s`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let nanos = self.0.as_nanos();
        if nanos == 0 {
            return f.write_str("0s");
        }
        if nanos < 1_000 {
            return write!(f, "{nanos}ns");
        }
        if nanos < 1_000_000 {
            return write!(f, "{}\u{b5}s", decimal(nanos, 3));
        }
        if nanos < 1_000_000_000 {
            return write!(f, "{}ms", decimal(nanos, 6));
        }
        let secs = nanos / 1_000_000_000;
        let (hours, mins) = (secs / 3600, secs / 60 % 60);
        if hours > 0 {
            write!(f, "{hours}h")?;
        }
        if secs >= 60 {
            write!(f, "{mins}m")?;
        }
        write!(f, "{}s", decimal(nanos % 60_000_000_000, 9))
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        struct DurationVisitor;

        impl Visitor<'_> for DurationVisitor {
            type Value = Duration;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration string such as \"90s\" or \"5m0s\"")
            }

            fn visit_str<E: de::Error>(self, s: &str) -> Result<Duration, E> {
                s.parse().map_err(E::custom)
            }
        }

        d.deserialize_str(DurationVisitor)
    }
}

// ---------------------------------------------------------------------------------------------
// Shared enums and helpers
// ---------------------------------------------------------------------------------------------

string_enum! {
    /// A log level, as Calico's `logSeverityScreen` fields spell it.
    #[derive(Default)]
    pub enum LogSeverity {
        Trace => "Trace",
        Debug => "Debug",
        #[default]
        Info => "Info",
        Warning => "Warning",
        Error => "Error",
        Fatal => "Fatal",
        Panic => "Panic",
        /// No logging (kube-controllers only).
        None => "None",
    }
}

/// Levels Felix and BGP accept for `logSeverityScreen`.
pub(crate) const AGENT_LOG_LEVELS: &[LogSeverity] = &[
    LogSeverity::Trace,
    LogSeverity::Debug,
    LogSeverity::Info,
    LogSeverity::Warning,
    LogSeverity::Error,
    LogSeverity::Fatal,
];

/// Levels kube-controllers accepts for `logSeverityScreen`.
const CONTROLLERS_LOG_LEVELS: &[LogSeverity] = &[
    LogSeverity::None,
    LogSeverity::Debug,
    LogSeverity::Info,
    LogSeverity::Warning,
    LogSeverity::Error,
    LogSeverity::Fatal,
    LogSeverity::Panic,
];

pub(crate) fn log_level(
    field: &str,
    level: LogSeverity,
    allowed: &[LogSeverity],
    errs: &mut Errors,
) {
    if !allowed.contains(&level) {
        let names: Vec<&str> = allowed.iter().map(|l| l.as_str()).collect();
        errs.add(
            field,
            format!(
                "{level} is not accepted here (expected one of {})",
                names.join(", ")
            ),
        );
    }
}

string_enum! {
    /// Calico's `Enabled`/`Disabled` switches.
    pub enum Toggle {
        Enabled => "Enabled",
        Disabled => "Disabled",
    }
}

impl Toggle {
    pub fn is_enabled(self) -> bool {
        self == Toggle::Enabled
    }
}

/// The one cluster-wide configuration object of each configuration kind.
pub const DEFAULT_CONFIG_NAME: &str = "default";
/// Per-node configuration objects are named `node.<nodename>`.
pub const NODE_CONFIG_PREFIX: &str = "node.";

/// The name of the per-node configuration object for `node`.
pub fn node_config_name(node: &str) -> String {
    format!("{NODE_CONFIG_PREFIX}{node}")
}

/// The node a `node.<nodename>` configuration object applies to; `None` for `default`.
pub fn config_node(name: &str) -> Option<&str> {
    name.strip_prefix(NODE_CONFIG_PREFIX)
}

/// `default` or `node.<nodename>`, as Felix and confd look them up.
pub(crate) fn validate_config_name(name: &str, errs: &mut Errors) {
    match config_node(name) {
        Some(node) if !node.is_empty() => validate::resource_name("metadata.name", node, errs),
        _ if name == DEFAULT_CONFIG_NAME => {}
        _ => errs.add(
            "metadata.name",
            format!("{name:?} must be \"default\" or \"node.<nodename>\""),
        ),
    }
}

/// `Option<IpNet>` written as a CIDR or a bare address (a /32 or /128).
mod opt_cidr_or_ip {
    use super::*;
    use crate::kinds::ipam::cidr_or_ip_list;

    pub fn serialize<S: Serializer>(net: &Option<IpNet>, s: S) -> Result<S::Ok, S::Error> {
        match net {
            Some(n) => s.collect_str(n),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<IpNet>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|s| cidr_or_ip_list::parse(&s).map_err(de::Error::custom))
            .transpose()
    }
}

// ---------------------------------------------------------------------------------------------
// AgentConfiguration (FelixConfiguration)
// ---------------------------------------------------------------------------------------------

string_enum! {
    /// Where the agent programs network policy. Margay's own field: Calico chooses between
    /// iptables, nftables and eBPF with separate switches. A value not listed here is
    /// refused, naming `spec.dataplane`.
    #[derive(Default)]
    pub enum Dataplane {
        #[default]
        Nftables => "nftables",
        Iptables => "iptables",
    }
}

string_enum! {
    /// What happens to traffic from a workload to its own host, after egress policy.
    #[derive(Default)]
    pub enum EndpointToHostAction {
        #[default]
        Drop => "Drop",
        Accept => "Accept",
        Return => "Return",
    }
}

/// A protocol, port and optional source/destination network that policy can never block.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProtoPort {
    /// Calico defaults an omitted protocol to TCP for backwards compatibility.
    #[serde(default)]
    pub protocol: PortProtocol,
    pub port: u16,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "opt_cidr_or_ip"
    )]
    pub net: Option<IpNet>,
}

impl ProtoPort {
    pub fn new(protocol: PortProtocol, port: u16) -> ProtoPort {
        ProtoPort {
            protocol,
            port,
            net: None,
        }
    }
}

/// Calico's failsafe defaults: SSH, DHCP, BGP, etcd, Typha and the Kubernetes API.
const DEFAULT_FAILSAFE_INBOUND: &[(PortProtocol, u16)] = &[
    (PortProtocol::Tcp, 22),
    (PortProtocol::Udp, 68),
    (PortProtocol::Tcp, 179),
    (PortProtocol::Tcp, 2379),
    (PortProtocol::Tcp, 2380),
    (PortProtocol::Tcp, 5473),
    (PortProtocol::Tcp, 6443),
    (PortProtocol::Tcp, 6666),
    (PortProtocol::Tcp, 6667),
];

/// Calico's failsafe defaults: DNS, DHCP, BGP, etcd, Typha and the Kubernetes API.
const DEFAULT_FAILSAFE_OUTBOUND: &[(PortProtocol, u16)] = &[
    (PortProtocol::Udp, 53),
    (PortProtocol::Udp, 67),
    (PortProtocol::Tcp, 179),
    (PortProtocol::Tcp, 2379),
    (PortProtocol::Tcp, 2380),
    (PortProtocol::Tcp, 5473),
    (PortProtocol::Tcp, 6443),
    (PortProtocol::Tcp, 6666),
    (PortProtocol::Tcp, 6667),
];

fn proto_ports(table: &[(PortProtocol, u16)]) -> Vec<ProtoPort> {
    table
        .iter()
        .map(|&(p, port)| ProtoPort::new(p, port))
        .collect()
}

/// An inclusive range of Linux routing table indices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteTableRange {
    pub min: u32,
    pub max: u32,
}

pub const DEFAULT_INTERFACE_PREFIX: &str = "mgy";
pub const DEFAULT_AGENT_LOG_FILE: &str = "/var/log/margay/agent.log";
/// Calico's default: interfaces that usually carry the host's uplink.
pub const DEFAULT_MTU_IFACE_PATTERN: &str = "^((en|wl|ww|sl|ib)[Pcopsvx].*|(eth|wlan|wwan).*)";
pub const DEFAULT_VXLAN_VNI: u32 = 4096;
pub const DEFAULT_VXLAN_PORT: u16 = 4789;
pub const DEFAULT_HEALTH_HOST: &str = "localhost";
pub const DEFAULT_HEALTH_PORT: u16 = 9099;
pub const DEFAULT_AGENT_METRICS_PORT: u16 = 9091;
pub const DEFAULT_REPORTING_INTERVAL: Duration = Duration::from_secs(30);
pub const DEFAULT_ROUTE_REFRESH_INTERVAL: Duration = Duration::from_secs(90);
/// Felix's current default (older API comments still say 10s).
pub const DEFAULT_IPTABLES_REFRESH_INTERVAL: Duration = Duration::from_secs(180);
pub const DEFAULT_ROUTE_TABLE_RANGE: RouteTableRange = RouteTableRange { min: 1, max: 250 };
const MAX_VXLAN_VNI: u32 = (1 << 24) - 1;
/// A veth is named prefix + 11 hex digits and Linux names hold 15 characters.
const MAX_WORKLOAD_PREFIX_LEN: usize = 4;

/// Settings of the node agent (Calico's Felix). The object named `default` applies to every
/// node; `node.<nodename>` overrides it field by field for one node, so every field is optional
/// and only `default` is filled with defaults (see [`AgentConfigurationSpec::with_defaults`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentConfiguration {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: AgentConfigurationSpec,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentConfigurationSpec {
    /// Margay only: where the agent programs network policy, `nftables` (default) or
    /// `iptables`. A running agent switches when it changes (docs/agent.md). Calico's
    /// `nftablesMode` maps onto it; `iptablesBackend` (which iptables binaries) is ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataplane: Option<Dataplane>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_severity_screen: Option<LogSeverity>,
    /// A path, or `none` to log to the screen only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_file_path: Option<String>,
    /// How often the agent reports its status; zero disables reporting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reporting_interval: Option<Duration>,
    /// Comma-separated prefixes of workload interfaces; the first names new veths.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface_prefix: Option<String>,
    /// Unset: decided from the IP pools.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipip_enabled: Option<bool>,
    /// Unset or 0: detected from the host's interfaces.
    #[serde(default, rename = "ipipMTU", skip_serializing_if = "Option::is_none")]
    pub ipip_mtu: Option<u32>,
    /// Unset: decided from the IP pools.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vxlan_enabled: Option<bool>,
    #[serde(default, rename = "vxlanVNI", skip_serializing_if = "Option::is_none")]
    pub vxlan_vni: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vxlan_port: Option<u16>,
    /// Unset or 0: detected from the host's interfaces.
    #[serde(default, rename = "vxlanMTU", skip_serializing_if = "Option::is_none")]
    pub vxlan_mtu: Option<u32>,
    /// Unset or 0: detected from the host's interfaces.
    #[serde(
        default,
        rename = "vxlanMTUV6",
        skip_serializing_if = "Option::is_none"
    )]
    pub vxlan_mtu_v6: Option<u32>,
    /// A regular expression over interface names used for MTU detection; the agent compiles it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu_iface_pattern: Option<String>,
    /// Source address for natOutgoing traffic; unset means masquerade.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nat_outgoing_address: Option<Ipv4Addr>,
    /// Unset: Calico's defaults; `[]` disables failsafe ports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failsafe_inbound_host_ports: Option<Vec<ProtoPort>>,
    /// Unset: Calico's defaults; `[]` disables failsafe ports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failsafe_outbound_host_ports: Option<Vec<ProtoPort>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_endpoint_to_host_action: Option<EndpointToHostAction>,
    /// Zero disables the periodic route resync.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route_refresh_interval: Option<Duration>,
    /// The periodic full resync of filtering rules (Margay has no separate nftables setting);
    /// zero disables it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iptables_refresh_interval: Option<Duration>,
    /// Deprecated by Calico in favour of `routeTableRanges`, which wins when both are set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route_table_range: Option<RouteTableRange>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route_table_ranges: Option<Vec<RouteTableRange>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remove_external_routes: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_enabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prometheus_metrics_enabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prometheus_metrics_port: Option<u16>,
}

impl AgentConfigurationSpec {
    pub fn dataplane(&self) -> Dataplane {
        self.dataplane.unwrap_or_default()
    }

    pub fn log_severity_screen(&self) -> LogSeverity {
        self.log_severity_screen.unwrap_or_default()
    }

    /// The log file, or `None` when file logging is off (`none`).
    pub fn log_file_path(&self) -> Option<&str> {
        let path = self
            .log_file_path
            .as_deref()
            .unwrap_or(DEFAULT_AGENT_LOG_FILE);
        (!path.eq_ignore_ascii_case("none")).then_some(path)
    }

    /// Zero means status reporting is off.
    pub fn reporting_interval(&self) -> std::time::Duration {
        self.reporting_interval
            .unwrap_or(DEFAULT_REPORTING_INTERVAL)
            .as_std()
    }

    /// Every prefix that marks an interface as a workload's.
    pub fn interface_prefixes(&self) -> Vec<&str> {
        self.interface_prefix
            .as_deref()
            .unwrap_or(DEFAULT_INTERFACE_PREFIX)
            .split(',')
            .collect()
    }

    /// The prefix the CNI plugin gives new veths (the first listed).
    pub fn workload_interface_prefix(&self) -> &str {
        let all = self
            .interface_prefix
            .as_deref()
            .unwrap_or(DEFAULT_INTERFACE_PREFIX);
        all.split(',').next().unwrap_or(all)
    }

    /// `None` means auto-detect.
    pub fn ipip_mtu(&self) -> Option<u32> {
        self.ipip_mtu.filter(|m| *m != 0)
    }

    /// `None` means auto-detect.
    pub fn vxlan_mtu(&self) -> Option<u32> {
        self.vxlan_mtu.filter(|m| *m != 0)
    }

    /// `None` means auto-detect.
    pub fn vxlan_mtu_v6(&self) -> Option<u32> {
        self.vxlan_mtu_v6.filter(|m| *m != 0)
    }

    pub fn vxlan_vni(&self) -> u32 {
        self.vxlan_vni.unwrap_or(DEFAULT_VXLAN_VNI)
    }

    pub fn vxlan_port(&self) -> u16 {
        self.vxlan_port.unwrap_or(DEFAULT_VXLAN_PORT)
    }

    pub fn mtu_iface_pattern(&self) -> &str {
        self.mtu_iface_pattern
            .as_deref()
            .unwrap_or(DEFAULT_MTU_IFACE_PATTERN)
    }

    pub fn failsafe_inbound_host_ports(&self) -> Vec<ProtoPort> {
        self.failsafe_inbound_host_ports
            .clone()
            .unwrap_or_else(|| proto_ports(DEFAULT_FAILSAFE_INBOUND))
    }

    pub fn failsafe_outbound_host_ports(&self) -> Vec<ProtoPort> {
        self.failsafe_outbound_host_ports
            .clone()
            .unwrap_or_else(|| proto_ports(DEFAULT_FAILSAFE_OUTBOUND))
    }

    pub fn default_endpoint_to_host_action(&self) -> EndpointToHostAction {
        self.default_endpoint_to_host_action.unwrap_or_default()
    }

    /// Zero disables the periodic resync.
    pub fn route_refresh_interval(&self) -> std::time::Duration {
        self.route_refresh_interval
            .unwrap_or(DEFAULT_ROUTE_REFRESH_INTERVAL)
            .as_std()
    }

    /// Zero disables the periodic resync.
    pub fn iptables_refresh_interval(&self) -> std::time::Duration {
        self.iptables_refresh_interval
            .unwrap_or(DEFAULT_IPTABLES_REFRESH_INTERVAL)
            .as_std()
    }

    /// The routing tables the agent may use: `routeTableRanges`, else `routeTableRange`, else
    /// 1-250.
    pub fn route_tables(&self) -> Vec<RouteTableRange> {
        match (&self.route_table_ranges, self.route_table_range) {
            (Some(ranges), _) => ranges.clone(),
            (None, Some(range)) => vec![range],
            (None, None) => vec![DEFAULT_ROUTE_TABLE_RANGE],
        }
    }

    pub fn remove_external_routes(&self) -> bool {
        self.remove_external_routes.unwrap_or(true)
    }

    pub fn health_enabled(&self) -> bool {
        self.health_enabled.unwrap_or(false)
    }

    pub fn health_host(&self) -> &str {
        self.health_host.as_deref().unwrap_or(DEFAULT_HEALTH_HOST)
    }

    pub fn health_port(&self) -> u16 {
        self.health_port.unwrap_or(DEFAULT_HEALTH_PORT)
    }

    pub fn prometheus_metrics_enabled(&self) -> bool {
        self.prometheus_metrics_enabled.unwrap_or(false)
    }

    pub fn prometheus_metrics_port(&self) -> u16 {
        self.prometheus_metrics_port
            .unwrap_or(DEFAULT_AGENT_METRICS_PORT)
    }

    /// This spec with `node`'s settings taking precedence, as Felix layers `node.<name>` over
    /// `default`.
    pub fn overlay(&self, node: &AgentConfigurationSpec) -> AgentConfigurationSpec {
        macro_rules! pick {
            ($($field:ident),* $(,)?) => {
                AgentConfigurationSpec {
                    $($field: node.$field.clone().or_else(|| self.$field.clone())),*
                }
            };
        }
        pick!(
            dataplane,
            log_severity_screen,
            log_file_path,
            reporting_interval,
            interface_prefix,
            ipip_enabled,
            ipip_mtu,
            vxlan_enabled,
            vxlan_vni,
            vxlan_port,
            vxlan_mtu,
            vxlan_mtu_v6,
            mtu_iface_pattern,
            nat_outgoing_address,
            failsafe_inbound_host_ports,
            failsafe_outbound_host_ports,
            default_endpoint_to_host_action,
            route_refresh_interval,
            iptables_refresh_interval,
            route_table_range,
            route_table_ranges,
            remove_external_routes,
            health_enabled,
            health_host,
            health_port,
            prometheus_metrics_enabled,
            prometheus_metrics_port,
        )
    }

    /// Fills every unset field that has a fixed default. Fields whose absence means
    /// "automatic" (encapsulation switches, MTUs, NAT address, route tables) stay unset.
    pub fn with_defaults(&self) -> AgentConfigurationSpec {
        AgentConfigurationSpec {
            dataplane: Some(self.dataplane()),
            log_severity_screen: Some(self.log_severity_screen()),
            log_file_path: Some(
                self.log_file_path
                    .clone()
                    .unwrap_or_else(|| DEFAULT_AGENT_LOG_FILE.into()),
            ),
            reporting_interval: Some(self.reporting_interval().into()),
            interface_prefix: Some(
                self.interface_prefix
                    .clone()
                    .unwrap_or_else(|| DEFAULT_INTERFACE_PREFIX.into()),
            ),
            vxlan_vni: Some(self.vxlan_vni()),
            vxlan_port: Some(self.vxlan_port()),
            mtu_iface_pattern: Some(self.mtu_iface_pattern().into()),
            failsafe_inbound_host_ports: Some(self.failsafe_inbound_host_ports()),
            failsafe_outbound_host_ports: Some(self.failsafe_outbound_host_ports()),
            default_endpoint_to_host_action: Some(self.default_endpoint_to_host_action()),
            route_refresh_interval: Some(self.route_refresh_interval().into()),
            iptables_refresh_interval: Some(self.iptables_refresh_interval().into()),
            remove_external_routes: Some(self.remove_external_routes()),
            health_enabled: Some(self.health_enabled()),
            health_host: Some(self.health_host().into()),
            health_port: Some(self.health_port()),
            prometheus_metrics_enabled: Some(self.prometheus_metrics_enabled()),
            prometheus_metrics_port: Some(self.prometheus_metrics_port()),
            ..self.clone()
        }
    }
}

impl AgentConfiguration {
    pub fn new(name: &str) -> AgentConfiguration {
        AgentConfiguration {
            metadata: ObjectMeta::named(name),
            spec: AgentConfigurationSpec::default(),
        }
    }

    /// The node a `node.<nodename>` object configures; `None` for the cluster-wide `default`.
    pub fn node(&self) -> Option<&str> {
        config_node(&self.metadata.name)
    }

    /// What the agent on a node runs with: the node's object over `default` over built-in
    /// defaults. Either object may be missing.
    pub fn effective(
        global: Option<&AgentConfiguration>,
        node: Option<&AgentConfiguration>,
    ) -> AgentConfigurationSpec {
        let global = global.map(|g| g.spec.clone()).unwrap_or_default();
        match node {
            Some(n) => global.overlay(&n.spec),
            None => global,
        }
        .with_defaults()
    }
}

impl Object for AgentConfiguration {
    const KIND: Kind = Kind::AgentConfiguration;
    object_meta!();

    fn apply_defaults(&mut self) {
        // Only the cluster-wide object: defaults in a node object would mask `default`.
        if self.node().is_none() {
            self.spec = self.spec.with_defaults();
        }
    }

    fn validate_spec(&self, errs: &mut Errors) {
        validate_config_name(&self.metadata.name, errs);
        let s = &self.spec;
        if let Some(level) = s.log_severity_screen {
            log_level("spec.logSeverityScreen", level, AGENT_LOG_LEVELS, errs);
        }
        if let Some(path) = &s.log_file_path {
            if !path.starts_with('/') && !path.eq_ignore_ascii_case("none") {
                errs.add(
                    "spec.logFilePath",
                    format!("{path:?} must be an absolute path or \"none\""),
                );
            }
        }
        if let Some(prefixes) = &s.interface_prefix {
            validate_interface_prefixes(prefixes, errs);
        }
        for (field, mtu, min) in [
            ("spec.ipipMTU", s.ipip_mtu, 68),
            ("spec.vxlanMTU", s.vxlan_mtu, 68),
            ("spec.vxlanMTUV6", s.vxlan_mtu_v6, 1280),
        ] {
            // 0 asks for auto-detection; anything else must be a usable MTU for the family.
            if let Some(mtu) = mtu.filter(|m| *m != 0) {
                validate::range(field, mtu, min, 65535, errs);
            }
        }
        if let Some(vni) = s.vxlan_vni {
            validate::range("spec.vxlanVNI", vni, 0, MAX_VXLAN_VNI, errs);
        }
        if let Some(port) = s.vxlan_port {
            validate::port("spec.vxlanPort", port.into(), errs);
        }
        for (field, ports) in [
            (
                "spec.failsafeInboundHostPorts",
                &s.failsafe_inbound_host_ports,
            ),
            (
                "spec.failsafeOutboundHostPorts",
                &s.failsafe_outbound_host_ports,
            ),
        ] {
            for (i, p) in ports.iter().flatten().enumerate() {
                validate::port(&format!("{field}[{i}].port"), p.port.into(), errs);
            }
        }
        if let Some(r) = s.route_table_range {
            validate_route_table_range("spec.routeTableRange", r, errs);
        }
        for (i, r) in s.route_table_ranges.iter().flatten().enumerate() {
            validate_route_table_range(&format!("spec.routeTableRanges[{i}]"), *r, errs);
        }
        if let Some(host) = &s.health_host {
            let ok = !host.is_empty()
                && host.len() <= 64
                && host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || ":._+-".contains(c));
            if !ok {
                errs.add(
                    "spec.healthHost",
                    format!("{host:?} is not a host name or address"),
                );
            }
        }
    }

    fn calico_ignored_fields() -> &'static [&'static str] {
        AGENT_IGNORED_FIELDS
    }

    fn migrate_calico(body: &mut Map<String, Value>) {
        // Calico's nftables switch maps onto Margay's dataplane choice; `Auto` (or an explicit
        // `dataplane`) keeps Margay's own choice.
        let Some(Value::Object(spec)) = body.get_mut("spec") else {
            return;
        };
        let Some(mode) = spec.remove("nftablesMode") else {
            return;
        };
        let dataplane = match mode.as_str().map(str::to_ascii_lowercase).as_deref() {
            Some("enabled") => Dataplane::Nftables,
            Some("disabled") => Dataplane::Iptables,
            _ => return,
        };
        spec.entry("dataplane")
            .or_insert_with(|| Value::String(dataplane.as_str().into()));
    }
}

fn validate_interface_prefixes(prefixes: &str, errs: &mut Errors) {
    for (i, prefix) in prefixes.split(',').enumerate() {
        let ok = !prefix.is_empty()
            && prefix.len() <= 15
            && prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !ok {
            errs.add(
                "spec.interfacePrefix",
                format!("{prefix:?} is not an interface name prefix"),
            );
        } else if i == 0 && prefix.len() > MAX_WORKLOAD_PREFIX_LEN {
            errs.add(
                "spec.interfacePrefix",
                format!(
                    "{prefix:?} is longer than {MAX_WORKLOAD_PREFIX_LEN} characters: veth names (prefix + 11 characters) would exceed Linux's 15"
                ),
            );
        }
    }
}

fn validate_route_table_range(field: &str, r: RouteTableRange, errs: &mut Errors) {
    if r.min == 0 {
        errs.add(field, "min must be at least 1");
    }
    if r.min > r.max {
        errs.add(
            field,
            format!("min {} is greater than max {}", r.min, r.max),
        );
    }
}

/// Valid FelixConfiguration fields Margay's agent does not implement.
const AGENT_IGNORED_FIELDS: &[&str] = &[
    // Whole families Margay has no equivalent for.
    "spec.bpf*",
    "spec.wireguard*",
    "spec.nftables*",
    "spec.flowLogs*",
    "spec.debug*",
    "spec.xdp*",
    "spec.usageReporting*",
    "spec.endpointReporting*",
    "spec.windows*",
    "spec.istio*",
    "spec.go*",
    "spec.metadata*",
    "spec.aws*",
    // Single fields, listed so that a typo in an implemented neighbour stays an error.
    "spec.allowIPIPPacketsFromWorkloads",
    "spec.allowVXLANPacketsFromWorkloads",
    "spec.cgroupV2Path",
    "spec.chainInsertMode",
    "spec.dataplaneDriver",
    "spec.dataplaneWatchdogTimeout",
    "spec.deviceRouteProtocol",
    "spec.deviceRouteSourceAddress",
    "spec.deviceRouteSourceAddressIPv6",
    "spec.disableConntrackInvalidCheck",
    "spec.endpointStatusPathPrefix",
    "spec.externalNodesList",
    "spec.featureDetectOverride",
    "spec.featureGates",
    "spec.floatingIPs",
    "spec.genericXDPEnabled",
    "spec.healthTimeoutOverrides",
    "spec.interfaceExclude",
    "spec.interfaceRefreshInterval",
    "spec.ipForwarding",
    "spec.ipsetsRefreshInterval",
    "spec.iptablesBackend",
    "spec.iptablesFilterAllowAction",
    "spec.iptablesFilterDenyAction",
    "spec.iptablesLockFilePath",
    "spec.iptablesLockProbeInterval",
    "spec.iptablesLockTimeout",
    "spec.iptablesMangleAllowAction",
    "spec.iptablesMarkMask",
    "spec.iptablesNATOutgoingInterfaceFilter",
    "spec.iptablesPostWriteCheckInterval",
    "spec.ipv4ElevatedRoutePriority",
    "spec.ipv4NormalRoutePriority",
    "spec.ipv6ElevatedRoutePriority",
    "spec.ipv6NormalRoutePriority",
    "spec.ipv6Support",
    "spec.kubeNodePortRanges",
    "spec.liveMigrationRouteConvergenceTime",
    "spec.logActionRateLimit",
    "spec.logActionRateLimitBurst",
    "spec.logDebugFilenameRegex",
    "spec.logPrefix",
    "spec.logSeverityFile",
    "spec.logSeveritySys",
    "spec.maxIpsetSize",
    "spec.natOutgoingExclusions",
    "spec.natPortRange",
    "spec.netlinkTimeout",
    "spec.openstackRegion",
    "spec.policySyncPathPrefix",
    "spec.programClusterRoutes",
    "spec.prometheusGoMetricsEnabled",
    "spec.prometheusMetricsCAFile",
    "spec.prometheusMetricsCertFile",
    "spec.prometheusMetricsClientAuth",
    "spec.prometheusMetricsHost",
    "spec.prometheusMetricsKeyFile",
    "spec.prometheusProcessMetricsEnabled",
    "spec.prometheusWireGuardMetricsEnabled",
    "spec.reportingTTL",
    "spec.requireMTUFile",
    "spec.routeSource",
    "spec.routeSyncDisabled",
    "spec.serviceLoopPrevention",
    "spec.sidecarAccelerationEnabled",
    "spec.useInternalDataplaneDriver",
    "spec.workloadSourceSpoofing",
];

// ---------------------------------------------------------------------------------------------
// ControllersConfiguration (KubeControllersConfiguration)
// ---------------------------------------------------------------------------------------------

pub const DEFAULT_CONTROLLERS_METRICS_PORT: u16 = 9094;
pub const DEFAULT_RECONCILER_PERIOD: Duration = Duration::from_mins(5);
pub const DEFAULT_LEAK_GRACE_PERIOD: Duration = Duration::from_mins(15);
pub const DEFAULT_COMPACTION_PERIOD: Duration = Duration::from_mins(10);

/// Settings of Margay's cluster controllers (Calico's kube-controllers). There is one object,
/// named `default`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ControllersConfiguration {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: ControllersConfigurationSpec,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ControllersConfigurationSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_severity_screen: Option<LogSeverity>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_checks: Option<Toggle>,
    /// Zero disables compaction (etcd datastore only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etcd_v3_compaction_period: Option<Duration>,
    /// Zero disables the metrics server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prometheus_metrics_port: Option<u16>,
    /// A controller that is absent here does not run, as in Calico.
    #[serde(default)]
    pub controllers: ControllersConfig,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ControllersConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<NodeControllerConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<ReconcilerConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_endpoint: Option<ReconcilerConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<ReconcilerConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<ReconcilerConfig>,
}

/// The node controller: cleans up after deleted nodes, syncs labels and garbage-collects
/// leaked IP addresses.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeControllerConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reconciler_period: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync_labels: Option<Toggle>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_endpoint: Option<AutoHostEndpointConfig>,
    /// How long an address must look leaked before it is released; zero disables IP GC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leak_grace_period: Option<Duration>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AutoHostEndpointConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_create: Option<Toggle>,
}

/// A controller whose only setting is its resync period.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReconcilerConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reconciler_period: Option<Duration>,
}

impl ReconcilerConfig {
    pub fn reconciler_period(&self) -> std::time::Duration {
        self.reconciler_period
            .unwrap_or(DEFAULT_RECONCILER_PERIOD)
            .as_std()
    }

    fn fill_defaults(&mut self) {
        self.reconciler_period
            .get_or_insert(DEFAULT_RECONCILER_PERIOD);
    }
}

impl NodeControllerConfig {
    pub fn reconciler_period(&self) -> std::time::Duration {
        self.reconciler_period
            .unwrap_or(DEFAULT_RECONCILER_PERIOD)
            .as_std()
    }

    pub fn sync_labels(&self) -> bool {
        self.sync_labels.unwrap_or(Toggle::Enabled).is_enabled()
    }

    pub fn auto_create_host_endpoints(&self) -> bool {
        self.host_endpoint
            .as_ref()
            .and_then(|h| h.auto_create)
            .is_some_and(Toggle::is_enabled)
    }

    /// `None` when IP garbage collection is disabled (a zero period).
    pub fn leak_grace_period(&self) -> Option<std::time::Duration> {
        let period = self.leak_grace_period.unwrap_or(DEFAULT_LEAK_GRACE_PERIOD);
        (!period.is_zero()).then(|| period.as_std())
    }

    fn fill_defaults(&mut self) {
        self.reconciler_period
            .get_or_insert(DEFAULT_RECONCILER_PERIOD);
        self.sync_labels.get_or_insert(Toggle::Enabled);
        self.leak_grace_period
            .get_or_insert(DEFAULT_LEAK_GRACE_PERIOD);
        if let Some(hep) = &mut self.host_endpoint {
            hep.auto_create.get_or_insert(Toggle::Disabled);
        }
    }
}

impl ControllersConfigurationSpec {
    /// IP leak grace period; `None` when GC is off (node controller absent, or a zero period).
    pub fn leak_grace_period(&self) -> Option<std::time::Duration> {
        self.controllers.node.as_ref()?.leak_grace_period()
    }

    pub fn health_checks(&self) -> bool {
        self.health_checks.unwrap_or(Toggle::Enabled).is_enabled()
    }

    /// `None` when the metrics server is off (port 0).
    pub fn prometheus_metrics_port(&self) -> Option<u16> {
        let port = self
            .prometheus_metrics_port
            .unwrap_or(DEFAULT_CONTROLLERS_METRICS_PORT);
        (port != 0).then_some(port)
    }
}

impl ControllersConfiguration {
    /// What kube-controllers creates when no configuration exists: every controller on.
    pub fn new_default() -> ControllersConfiguration {
        let mut c = ControllersConfiguration {
            metadata: ObjectMeta::named(DEFAULT_CONFIG_NAME),
            spec: ControllersConfigurationSpec {
                controllers: ControllersConfig {
                    node: Some(NodeControllerConfig::default()),
                    policy: Some(ReconcilerConfig::default()),
                    workload_endpoint: Some(ReconcilerConfig::default()),
                    service_account: Some(ReconcilerConfig::default()),
                    namespace: Some(ReconcilerConfig::default()),
                },
                ..Default::default()
            },
        };
        c.apply_defaults();
        c
    }

    /// See [`ControllersConfigurationSpec::leak_grace_period`].
    pub fn leak_grace_period(&self) -> Option<std::time::Duration> {
        self.spec.leak_grace_period()
    }
}

impl Object for ControllersConfiguration {
    const KIND: Kind = Kind::ControllersConfiguration;
    object_meta!();

    fn apply_defaults(&mut self) {
        let s = &mut self.spec;
        s.log_severity_screen.get_or_insert(LogSeverity::Info);
        s.health_checks.get_or_insert(Toggle::Enabled);
        s.etcd_v3_compaction_period
            .get_or_insert(DEFAULT_COMPACTION_PERIOD);
        s.prometheus_metrics_port
            .get_or_insert(DEFAULT_CONTROLLERS_METRICS_PORT);
        let c = &mut s.controllers;
        if let Some(node) = &mut c.node {
            node.fill_defaults();
        }
        for r in [
            &mut c.policy,
            &mut c.workload_endpoint,
            &mut c.service_account,
            &mut c.namespace,
        ]
        .into_iter()
        .flatten()
        {
            r.fill_defaults();
        }
    }

    fn validate_spec(&self, errs: &mut Errors) {
        if self.metadata.name != DEFAULT_CONFIG_NAME {
            errs.add(
                "metadata.name",
                format!("must be {DEFAULT_CONFIG_NAME:?} (there is one controllers configuration)"),
            );
        }
        if let Some(level) = self.spec.log_severity_screen {
            log_level(
                "spec.logSeverityScreen",
                level,
                CONTROLLERS_LOG_LEVELS,
                errs,
            );
        }
    }

    fn calico_ignored_fields() -> &'static [&'static str] {
        // serde_ignored marks the inside of an `Option` with a `?` segment.
        &[
            "spec.debugProfilePort",
            "spec.controllers.loadBalancer",
            "spec.controllers.policyMigration",
            "spec.controllers.node.hostEndpoint.createDefaultHostEndpoint",
            "spec.controllers.node.hostEndpoint.templates",
        ]
    }
}
