//! `margay trace`: one packet walked through the real pipeline, from the datastore, naming
//! the exact rule or default that decides.
//!
//! Everything comes from the functions the node agent and the renderers use, on one snapshot
//! of the datastore ([`Model::load`]):
//!
//! - the policy engine ([`margay_policy::evaluate`]) on the cluster the agent builds
//!   ([`Cluster::from_resources_skipping_bad_policies`]: a policy the agent leaves out is left
//!   out here too, and named in the warnings);
//! - each node's policy program ([`program::program`]) and its two renderings, nftables
//!   ([`margay_nft::policy::table`]) and iptables ([`margay_iptables::render`]), for the
//!   chain and rule that decide;
//! - each node's route plan ([`plan::plan`]), for the route the source node picks (longest
//!   prefix match), the overlay protection of the destination node (`plan.nat`) and the route
//!   to the pod there.
//!
//! What the trace cannot know offline is said where it matters: the name of a node's uplink
//! (shown as [`UPLINK`]), and where a packet from an address that is no endpoint and no node
//! enters the cluster.

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::net::{IpAddr, Ipv4Addr};
use std::str::FromStr;

use ipnet::{IpNet, Ipv4Net};
use margay_agent::model::Model;
use margay_agent::plan::{self, Host, Plan, RouteSpec, RouteTarget, IPIP_DEVICE, VXLAN_DEVICE};
use margay_api::{AgentConfiguration, EndpointToHostAction, Node, PolicyType, ProtoPort};
use margay_client::Client;
use margay_policy::program::{self, Pipeline, Program};
use margay_policy::{
    Cluster, Decision, DirectionVerdict, Endpoint, Icmp, IcmpVersion, Packet, Peer, PolicyKind,
    PolicyRef, Protocol, RuleRef, Step, Transport,
};
use serde::Serialize;

use crate::{CtlError, Result};

/// How a route through a node's uplink names the device: the trace reads the datastore, not
/// the node, so it does not know the interface's name.
pub const UPLINK: &str = "<uplink>";

/// The uplink MTU the plans are computed with. Only device MTUs depend on it, and the trace
/// shows no MTU.
const UPLINK_MTU: u32 = 1500;

/// What `margay trace` is asked. The flags are checked together by [`trace`], which
/// refuses combinations that make no packet (a port with ICMP, an ICMP type with TCP).
#[derive(Debug, Clone)]
pub struct TraceRequest {
    /// `NS/POD` or an IP address.
    pub from: String,
    /// `NS/POD` or an IP address.
    pub to: String,
    pub protocol: TraceProtocol,
    /// The destination port: required with TCP, UDP and SCTP.
    pub port: Option<u16>,
    /// `None`: an ephemeral port, which no `source.ports` rule matches.
    pub source_port: Option<u16>,
    /// Required with ICMP and ICMPv6.
    pub icmp_type: Option<u8>,
    /// `None`: a code no rule names.
    pub icmp_code: Option<u8>,
}

/// `--protocol`: a protocol with ports, or ICMP / ICMPv6.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TraceProtocol {
    Ports(Protocol),
    Icmp(IcmpVersion),
}

/// A `--protocol` that is none of those `margay trace` can follow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown protocol {0:?}: expected TCP, UDP, SCTP, ICMP or ICMPv6")]
pub struct UnknownTraceProtocol(pub String);

impl FromStr for TraceProtocol {
    type Err = UnknownTraceProtocol;

    /// Any case, as Calico's names: `icmpv6` means ICMPv6.
    fn from_str(s: &str) -> Result<TraceProtocol, UnknownTraceProtocol> {
        if let Ok(p) = s.parse::<Protocol>() {
            return Ok(TraceProtocol::Ports(p));
        }
        [IcmpVersion::V4, IcmpVersion::V6]
            .into_iter()
            .find(|v| s.eq_ignore_ascii_case(&v.to_string()))
            .map(TraceProtocol::Icmp)
            .ok_or_else(|| UnknownTraceProtocol(s.to_owned()))
    }
}

impl fmt::Display for TraceProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TraceProtocol::Ports(p) => p.fmt(f),
            TraceProtocol::Icmp(v) => v.fmt(f),
        }
    }
}

impl TraceRequest {
    /// The packet's protocol part, or the one-line error naming the flag that does not fit.
    fn transport(&self) -> Result<Transport> {
        let error = |flag: &str, message: String| CtlError::Input {
            origin: flag.to_owned(),
            message,
        };
        // The first of `flags` that is given, refused with `message`.
        let refuse = |flags: [(&str, bool); 2], message: String| match flags
            .into_iter()
            .find(|(_, given)| *given)
        {
            Some((flag, _)) => Err(error(flag, message)),
            None => Ok(()),
        };
        match self.protocol {
            TraceProtocol::Ports(protocol) => {
                refuse(
                    [
                        ("--icmp-type", self.icmp_type.is_some()),
                        ("--icmp-code", self.icmp_code.is_some()),
                    ],
                    format!("needs --protocol ICMP or ICMPv6, not {protocol}"),
                )?;
                let port = self.port.ok_or_else(|| {
                    error("--port", format!("required with --protocol {protocol}"))
                })?;
                Ok(Transport::Ports {
                    protocol,
                    port,
                    source_port: self.source_port,
                })
            }
            TraceProtocol::Icmp(version) => {
                refuse(
                    [
                        ("--port", self.port.is_some()),
                        ("--source-port", self.source_port.is_some()),
                    ],
                    format!("{version} has no ports: give --icmp-type (and --icmp-code) instead"),
                )?;
                let icmp_type = self.icmp_type.ok_or_else(|| {
                    error("--icmp-type", format!("required with --protocol {version}"))
                })?;
                Ok(Transport::Icmp(Icmp {
                    version,
                    icmp_type,
                    code: self.icmp_code,
                }))
            }
        }
    }
}

/// The whole trace, in the order a packet meets each stage.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Trace {
    /// `protocol` and `port` (and `sourcePort` when given), or `protocol`, `icmpType` (and
    /// `icmpCode` when given).
    #[serde(flatten)]
    pub packet: Transport,
    /// 4 or 6; `None` when neither end has an address of a family the other has.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub family: Option<u8>,
    /// 1. Where the packet comes from.
    pub source: Place,
    pub destination: Place,
    /// 2. Egress policy at the source endpoint.
    pub egress: PolicyStage,
    /// 3. The route the source node picks.
    pub route: RouteStage,
    /// 4. Arrival on the destination node, when the route leads to another node (or the
    ///    packet enters from outside).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub arrival: Option<ArrivalStage>,
    /// 5. Ingress policy at the destination endpoint.
    pub ingress: PolicyStage,
    /// 6. What happens to the packet, and what decides it.
    pub verdict: FinalVerdict,
    /// Policies left out (as the agent leaves them out), plan warnings of the nodes involved.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// One end of the packet.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum Place {
    /// A Margay endpoint (given by name, or by one of its addresses).
    #[serde(rename_all = "camelCase")]
    Endpoint {
        id: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        node: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        interface: Option<String>,
        ips: Vec<IpAddr>,
        /// The address this packet uses; `None` when the endpoint has none of its family.
        #[serde(skip_serializing_if = "Option::is_none")]
        address: Option<IpAddr>,
    },
    /// An address no endpoint has: evaluated as external.
    #[serde(rename_all = "camelCase")]
    External {
        ip: IpAddr,
        /// The pool it falls in, if any.
        #[serde(skip_serializing_if = "Option::is_none")]
        pool: Option<PoolRef>,
        /// The node it is an address of, if any.
        #[serde(skip_serializing_if = "Option::is_none")]
        host: Option<HostRef>,
    },
}

impl Place {
    fn address(&self) -> Option<IpAddr> {
        match self {
            Place::Endpoint { address, .. } => *address,
            Place::External { ip, .. } => Some(*ip),
        }
    }

    fn endpoint_node(&self) -> Option<&str> {
        match self {
            Place::Endpoint { node, .. } => node.as_deref(),
            Place::External { .. } => None,
        }
    }

    fn host(&self) -> Option<&HostRef> {
        match self {
            Place::External { host, .. } => host.as_ref(),
            Place::Endpoint { .. } => None,
        }
    }
}

/// A pool an address falls in, and the block (if any) holding it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PoolRef {
    pub name: String,
    pub cidr: IpNet,
    /// `None`: no block of the pool holds the address (unallocated).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub block: Option<BlockRef>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BlockRef {
    pub cidr: IpNet,
    /// The node the block is affine to; `None` for a block without host affinity.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

/// An address of a node (not of a workload).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HostRef {
    pub node: String,
    /// `node address`, `VXLAN tunnel address`, `IPIP tunnel address`.
    pub role: String,
}

/// One direction of policy, on one endpoint's side.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyStage {
    pub direction: PolicyType,
    /// The endpoint evaluated; `None` when that end is no endpoint.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// The host endpoint evaluated, when that end is one of its `expectedIPs`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_endpoint: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    pub allowed: bool,
    /// What happened before the decision, in order (the engine's steps).
    pub steps: Vec<Step>,
    /// The engine's decision.
    pub decision: Decision,
    /// The decision in words, Calico's names: tier, policy, rule direction, index and origin.
    pub summary: String,
    /// Where the node's dataplane decides it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dataplane: Option<Dataplane>,
    /// Why the endpoint is not in its node's program (then the dispatch chains drop its
    /// traffic as coming from, or going to, an unknown workload interface).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_programmed: Option<String>,
}

/// Where, in a node's two policy renderings, something is decided.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Dataplane {
    pub node: String,
    pub interface: String,
    /// 4 or 6: which table (`ip`/`ip6`, `iptables`/`ip6tables`).
    pub family: u8,
    pub nftables: Location,
    pub iptables: Location,
    /// The policy and profile chains the endpoint chain jumps to in this direction, in order.
    pub chains: Vec<ChainRef>,
}

/// A policy's or profile's chain in both renderings.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ChainRef {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tier: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<PolicyRef>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    /// `pi-…`, `po-…`, `pri-…`, `pro-…`.
    pub nftables: String,
    /// `mgy-pi-…`, …
    pub iptables: String,
}

/// A place in one rendering: the endpoint chain the packet goes through, and the chain and
/// rules that decide.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Location {
    /// `ip margay-policy` / `ip6 margay-policy` (nftables) or `filter` (iptables).
    pub table: String,
    pub endpoint_chain: String,
    pub chain: String,
    /// 1-based positions in `chain`, as `nft list chain` lists the rules and
    /// `iptables -L <chain> --line-numbers` numbers them. An Allow or Pass is two iptables
    /// rules (set the mark, then return). Empty when the rule could not be found.
    pub rules: Vec<usize>,
    /// The comment of the (first) deciding rule.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
}

/// How the source node routes the packet.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteStage {
    /// The node whose routes apply; `None` when the packet does not start on a node Margay
    /// knows.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub destination: Option<IpAddr>,
    /// The longest-prefix match in the node's plan.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub route: Option<RouteSpec>,
    pub path: Path,
    /// The source pool masquerades traffic leaving every pool (`natOutgoing`).
    pub nat_outgoing: bool,
    pub summary: String,
}

/// Where a route leads.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum Path {
    /// From an endpoint to itself: never leaves the pod.
    Loopback,
    /// To a workload on this node, over its veth.
    #[serde(rename_all = "camelCase")]
    LocalWorkload {
        dev: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        endpoint: Option<String>,
    },
    /// To the node itself (one of its own addresses).
    #[serde(rename_all = "camelCase")]
    LocalHost { node: String },
    /// Over `vxlan.margay` to another node.
    #[serde(rename_all = "camelCase")]
    Vxlan {
        #[serde(skip_serializing_if = "Option::is_none")]
        node: Option<String>,
        gateway: IpAddr,
        /// The outer destination: the node address the FDB entry points at.
        #[serde(skip_serializing_if = "Option::is_none")]
        underlay: Option<Ipv4Addr>,
    },
    /// Over `tunl0` to another node.
    #[serde(rename_all = "camelCase")]
    Ipip {
        #[serde(skip_serializing_if = "Option::is_none")]
        node: Option<String>,
        gateway: IpAddr,
    },
    /// Unencapsulated through the uplink to a node of the same subnet (CrossSubnet).
    #[serde(rename_all = "camelCase")]
    Direct {
        #[serde(skip_serializing_if = "Option::is_none")]
        node: Option<String>,
        gateway: IpAddr,
        dev: String,
    },
    /// A local block's blackhole: no workload on this node has the address.
    #[serde(rename_all = "camelCase")]
    Blackhole { block: IpNet },
    /// No route of Margay's: the node's own routing (its default route) takes it.
    Unrouted,
    /// Margay cannot tell (no source node, no address, a node without an address).
    #[serde(rename_all = "camelCase")]
    Unknown { reason: String },
}

impl Path {
    /// The node the path leads to, when it is another node of the cluster.
    fn next_node(&self) -> Option<&str> {
        match self {
            Path::Vxlan { node, .. } | Path::Ipip { node, .. } | Path::Direct { node, .. } => {
                node.as_deref()
            }
            _ => None,
        }
    }
}

/// The destination node's side.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ArrivalStage {
    pub node: String,
    pub overlay: Overlay,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub route: Option<RouteSpec>,
    pub path: Path,
    pub summary: Vec<String>,
}

/// What the destination node's overlay protection does with the packet.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "result", rename_all = "camelCase")]
pub enum Overlay {
    /// Encapsulated by a cluster node: accepted.
    #[serde(rename_all = "camelCase")]
    Accepted {
        encapsulation: String,
        from: Ipv4Addr,
        from_node: String,
    },
    /// Dropped, or never decapsulated.
    #[serde(rename_all = "camelCase")]
    Dropped {
        encapsulation: String,
        reason: String,
    },
    /// Routed without encapsulation: overlay protection does not apply.
    NotEncapsulated,
    /// The packet comes from outside Margay's routes: encapsulated packets are accepted
    /// only from these node addresses.
    #[serde(rename_all = "camelCase")]
    FromOutside {
        cluster_nodes: Vec<Ipv4Addr>,
        #[serde(skip_serializing_if = "Option::is_none")]
        vxlan_port: Option<u16>,
        ipip: bool,
    },
}

/// Which stage decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Stage {
    Egress,
    Route,
    Arrival,
    Ingress,
    /// Nothing stopped the packet.
    None,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FinalVerdict {
    pub allowed: bool,
    /// What the policy engine alone says (both directions).
    pub policy_allowed: bool,
    pub stage: Stage,
    /// The exact thing that decides, in words.
    pub by: String,
    /// Where the deciding policy rule or default is, when policy decides.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dataplane: Option<Dataplane>,
}

/// Traces one packet against the datastore.
///
/// # Errors
///
/// An end that is neither `NS/POD` nor an address, or names no endpoint (the message lists
/// close matches, or how to list the endpoints); flags that make no packet (a port with
/// ICMP, an ICMP type with TCP, no port with TCP, an address of the other family than ICMP's
/// or ICMPv6's); a datastore that cannot be read; resources the engine cannot use at all (a
/// duplicate, a Profile that does not compile).
pub async fn trace(client: &Client, request: &TraceRequest) -> Result<Trace> {
    let model = Model::load(client, "", true).await?;
    let (configs, _) = client.list::<AgentConfiguration>(None).await?;
    trace_model(model, &configs, request).map_err(|e| e.with_origin(&client.datastore().describe()))
}

/// An error of [`trace_model`]: bad input (reported as is) or a model the engine refuses
/// (reported with where the model came from).
#[derive(Debug)]
pub enum TraceError {
    Input(CtlError),
    Model(String),
}

impl TraceError {
    fn with_origin(self, origin: &str) -> CtlError {
        match self {
            TraceError::Input(e) => e,
            TraceError::Model(message) => CtlError::Input {
                origin: origin.to_owned(),
                message,
            },
        }
    }
}

/// Traces one packet against a loaded model; `configs` are the AgentConfigurations, so that
/// each node's plan uses its own settings.
pub fn trace_model(
    mut model: Model,
    configs: &[AgentConfiguration],
    request: &TraceRequest,
) -> Result<Trace, TraceError> {
    let transport = request.transport().map_err(TraceError::Input)?;
    let inputs = model.policy_inputs.take().unwrap_or_default();
    let (cluster, skipped) = Cluster::from_resources_skipping_bad_policies(inputs)
        .map_err(|e| TraceError::Model(e.to_string()))?;
    let from = parse_end(&cluster, "--from", &request.from).map_err(TraceError::Input)?;
    let to = parse_end(&cluster, "--to", &request.to).map_err(TraceError::Input)?;
    for (flag, end) in [("--from", &from), ("--to", &to)] {
        check_family(flag, end, transport).map_err(TraceError::Input)?;
    }
    let mut warnings: Vec<String> = skipped
        .iter()
        .map(|e| format!("left out, as the agent leaves it out: {e}"))
        .collect();
    let mut cx = Tracer {
        cluster: &cluster,
        model: &model,
        configs,
        plans: BTreeMap::new(),
        programs: BTreeMap::new(),
        warnings: Vec::new(),
    };
    let packet = Packet {
        from: from.clone(),
        to: to.clone(),
        transport,
    };
    let verdict = margay_policy::evaluate(&cluster, &packet);
    let family = packet_family(&cluster, &from, &to, transport);
    let source = cx.place(&from, &verdict.egress, family);
    let destination = cx.place(&to, &verdict.ingress, family);
    let loopback = matches!(verdict.egress.decision, Decision::Loopback);
    let egress = cx.policy_stage(&verdict.egress, PolicyType::Egress, family, transport);
    let ingress = cx.policy_stage(&verdict.ingress, PolicyType::Ingress, family, transport);
    let route = cx.route_stage(&source, &destination, loopback);
    let arrival = cx.arrival_stage(&source, &destination, &route);
    let final_verdict = final_verdict(
        verdict.allowed,
        &source,
        &destination,
        &egress,
        &route,
        arrival.as_ref(),
        &ingress,
    );
    warnings.append(&mut cx.warnings);
    Ok(Trace {
        packet: transport,
        family,
        source,
        destination,
        egress,
        route,
        arrival,
        ingress,
        verdict: final_verdict,
        warnings,
    })
}

/// `NS/POD` or an address, checked against the cluster's endpoints.
fn parse_end(cluster: &Cluster, flag: &str, text: &str) -> Result<Peer> {
    let text = text.trim();
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Ok(Peer::Ip(ip));
    }
    let error = |message: String| CtlError::Input {
        origin: flag.to_owned(),
        message,
    };
    let well_formed = text
        .split_once('/')
        .is_some_and(|(ns, pod)| !ns.is_empty() && !pod.is_empty() && !pod.contains('/'));
    if well_formed && cluster.endpoint(text).is_some() {
        return Ok(Peer::Endpoint(text.to_owned()));
    }
    let close = close_matches(cluster, text);
    let hint = if close.is_empty() {
        format!(
            "{} endpoints are stored; list them with `margay get wep -A`",
            cluster.endpoints().len()
        )
    } else {
        format!("did you mean {}?", close.join(", "))
    };
    if well_formed {
        Err(error(format!("no pod {text}: {hint}")))
    } else {
        Err(error(format!(
            "{text:?} is neither NS/POD nor an IP address: {hint}"
        )))
    }
}

/// Endpoint ids close to `wanted`: the same pod name in another namespace, ids containing
/// it, or within a small edit distance. At most five, closest first.
fn close_matches(cluster: &Cluster, wanted: &str) -> Vec<String> {
    let wanted_name = wanted.rsplit('/').next().unwrap_or(wanted);
    let budget = (wanted.len() / 4).max(2);
    let mut scored: Vec<(usize, &str)> = cluster
        .endpoints()
        .iter()
        .filter_map(|ep| {
            let id = ep.id.as_str();
            let distance = edit_distance(wanted, id);
            let score = if ep.name == wanted_name {
                0
            } else if distance <= budget {
                distance
            } else if !wanted.is_empty() && id.contains(wanted) {
                budget + 1
            } else {
                return None;
            };
            Some((score, id))
        })
        .collect();
    scored.sort();
    scored
        .into_iter()
        .take(5)
        .map(|(_, id)| id.to_owned())
        .collect()
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut previous = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous + usize::from(ca != *cb);
            previous = row[j + 1];
            row[j + 1] = substitution.min(row[j] + 1).min(previous + 1);
        }
    }
    row[b.len()]
}

fn family(ip: IpAddr) -> u8 {
    if ip.is_ipv4() {
        4
    } else {
        6
    }
}

fn endpoint_address(ep: &Endpoint, wanted: u8) -> Option<IpAddr> {
    ep.ips.iter().copied().find(|ip| family(*ip) == wanted)
}

/// An address of the family ICMP (IPv4) or ICMPv6 (IPv6) is not carried in makes no packet.
fn check_family(flag: &str, end: &Peer, transport: Transport) -> Result<()> {
    match (end, transport) {
        (Peer::Ip(ip), Transport::Icmp(icmp)) if family(*ip) != icmp.version.family() => {
            let other = match icmp.version {
                IcmpVersion::V4 => IcmpVersion::V6,
                IcmpVersion::V6 => IcmpVersion::V4,
            };
            Err(CtlError::Input {
                origin: flag.to_owned(),
                message: format!(
                    "{ip} is an IPv{} address and {} is IPv{}'s: use --protocol {other}",
                    family(*ip),
                    icmp.version,
                    icmp.version.family()
                ),
            })
        }
        _ => Ok(()),
    }
}

/// The packet's address family, as the engine picks it: that of a given address, else the
/// protocol's (ICMP is IPv4, ICMPv6 IPv6), else IPv4 when both endpoints have one, else IPv6
/// when both have one.
fn packet_family(cluster: &Cluster, from: &Peer, to: &Peer, transport: Transport) -> Option<u8> {
    let given = |p: &Peer| match p {
        Peer::Ip(ip) => Some(family(*ip)),
        Peer::Endpoint(_) => None,
    };
    let endpoint = |p: &Peer| match p {
        Peer::Endpoint(id) => cluster.endpoint(id),
        Peer::Ip(_) => None,
    };
    given(from)
        .or_else(|| given(to))
        .or(transport.family())
        .or_else(|| {
            let (a, b) = (endpoint(from)?, endpoint(to)?);
            [4, 6]
                .into_iter()
                .find(|f| endpoint_address(a, *f).is_some() && endpoint_address(b, *f).is_some())
        })
}

/// Computes and caches what the trace needs per node.
struct Tracer<'a> {
    cluster: &'a Cluster,
    model: &'a Model,
    configs: &'a [AgentConfiguration],
    /// Per node: its plan, or why there is none.
    plans: BTreeMap<String, std::result::Result<Plan, String>>,
    programs: BTreeMap<String, Program>,
    warnings: Vec<String>,
}

impl Tracer<'_> {
    fn plan(&mut self, node: &str) -> std::result::Result<&Plan, String> {
        if !self.plans.contains_key(node) {
            let computed = self.compute_plan(node);
            if let Ok(plan) = &computed {
                for w in &plan.warnings {
                    let w = format!("node {node}: {w}");
                    if !self.warnings.contains(&w) {
                        self.warnings.push(w);
                    }
                }
            }
            self.plans.insert(node.to_owned(), computed);
        }
        match &self.plans[node] {
            Ok(plan) => Ok(plan),
            Err(why) => Err(why.clone()),
        }
    }

    /// The plan the agent on `node` computes: its Host from its Node (address and prefix),
    /// its effective AgentConfiguration.
    fn compute_plan(&self, node: &str) -> std::result::Result<Plan, String> {
        let Some(n) = self.model.nodes.get(node) else {
            return Err(format!("node {node} is not in the datastore"));
        };
        let ip = node_ipv4_net(n).ok_or_else(|| {
            format!("node {node} has no IPv4 address (spec.bgp.ipv4Address): it has no routes")
        })?;
        let host = Host {
            node: node.to_owned(),
            ip,
            uplink: UPLINK.to_owned(),
            uplink_mtu: UPLINK_MTU,
        };
        let global = self.configs.iter().find(|c| c.metadata.name == "default");
        let mine = self.configs.iter().find(|c| c.node() == Some(node));
        let mut model = self.model.clone();
        model.config = AgentConfiguration::effective(global, mine);
        Ok(plan::plan(&model, &host))
    }

    fn program(&mut self, node: &str) -> &Program {
        self.programs
            .entry(node.to_owned())
            .or_insert_with(|| program::program(self.cluster, node))
    }

    /// The node and role of an address that belongs to a node.
    fn host_of(&self, ip: IpAddr) -> Option<HostRef> {
        self.model.nodes.iter().find_map(|(name, n)| {
            let bgp = n.spec.bgp.as_ref();
            let role = if n.ipv4_address().is_some_and(|a| a.addr() == ip)
                || n.ipv6_address().is_some_and(|a| a.addr() == ip)
            {
                "node address"
            } else if n.spec.ipv4_vxlan_tunnel_addr.map(IpAddr::from) == Some(ip)
                || n.spec.ipv6_vxlan_tunnel_addr.map(IpAddr::from) == Some(ip)
            {
                "VXLAN tunnel address"
            } else if bgp.and_then(|b| b.ipv4_ipip_tunnel_addr).map(IpAddr::from) == Some(ip) {
                "IPIP tunnel address"
            } else {
                return None;
            };
            Some(HostRef {
                node: name.clone(),
                role: role.to_owned(),
            })
        })
    }

    fn pool_of(&self, ip: IpAddr) -> Option<PoolRef> {
        let pool = self
            .model
            .pools
            .iter()
            .find(|p| p.spec.cidr.contains(&ip))?;
        let block = self
            .model
            .blocks
            .iter()
            .find(|b| b.cidr.contains(&ip))
            .map(|b| BlockRef {
                cidr: b.cidr,
                node: b.host_affinity().map(str::to_owned),
            });
        Some(PoolRef {
            name: pool.metadata.name.clone(),
            cidr: pool.spec.cidr,
            block,
        })
    }

    fn place(&self, peer: &Peer, side: &DirectionVerdict, family: Option<u8>) -> Place {
        let given = match peer {
            Peer::Ip(ip) => Some(*ip),
            Peer::Endpoint(_) => None,
        };
        match side
            .endpoint
            .as_deref()
            .and_then(|id| self.cluster.endpoint(id))
        {
            Some(ep) => Place::Endpoint {
                id: ep.id.clone(),
                node: ep.node.clone(),
                interface: ep.interface.clone(),
                ips: ep.ips.clone(),
                address: given.or_else(|| family.and_then(|f| endpoint_address(ep, f))),
            },
            None => {
                let ip = given.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
                Place::External {
                    ip,
                    pool: self.pool_of(ip),
                    host: self.host_of(ip),
                }
            }
        }
    }

    fn policy_stage(
        &mut self,
        side: &DirectionVerdict,
        direction: PolicyType,
        family: Option<u8>,
        transport: Transport,
    ) -> PolicyStage {
        let endpoint = side
            .endpoint
            .as_deref()
            .and_then(|id| self.cluster.endpoint(id));
        let node = endpoint.and_then(|e| e.node.clone());
        let mut stage = PolicyStage {
            direction,
            endpoint: side.endpoint.clone(),
            host_endpoint: side.host_endpoint.clone(),
            node: node.clone(),
            allowed: side.allowed,
            steps: side.steps.clone(),
            decision: side.decision.clone(),
            summary: decision_text(&side.decision, direction),
            dataplane: None,
            not_programmed: None,
        };
        let fixed = match &side.decision {
            Decision::EndpointToHost { node, .. } => Some((node, HostRule::ToHost)),
            Decision::FromHost { node } => Some((node, HostRule::FromHost)),
            Decision::Failsafe { node, port } => {
                let iface = side
                    .host_endpoint
                    .as_deref()
                    .and_then(|name| {
                        self.cluster
                            .host_endpoints()
                            .iter()
                            .find(|h| h.name == name)
                    })
                    .map(|h| h.interface.clone())
                    .unwrap_or_default();
                Some((node, HostRule::Failsafe(direction, port.clone(), iface)))
            }
            Decision::Overlay { node } => Some((node, HostRule::Overlay(direction))),
            _ => None,
        };
        if let Some((node, rule)) = fixed {
            stage.node = Some(node.clone());
            let program = self.program(node);
            stage.dataplane = Some(host_rule_dataplane(
                program,
                node,
                family.unwrap_or(4),
                &rule,
            ));
            return stage;
        }
        if let Some(name) = &side.host_endpoint {
            self.host_endpoint_stage(&mut stage, name, family, transport);
            return stage;
        }
        let Some(ep) = endpoint else {
            return stage;
        };
        if matches!(side.decision, Decision::Loopback) {
            return stage;
        }
        let (Some(node), Some(iface)) = (node, ep.interface.clone()) else {
            stage.not_programmed = Some(match &ep.node {
                None => "not scheduled on a node".to_owned(),
                Some(_) => "no interface (no WorkloadEndpoint for it yet)".to_owned(),
            });
            return stage;
        };
        let id = ep.id.clone();
        let program = self.program(&node);
        match program.endpoints.get(&iface) {
            Some(local) if local.id == id => {
                let pipeline = match direction {
                    PolicyType::Egress => &local.egress,
                    PolicyType::Ingress => &local.ingress,
                };
                let at = At {
                    program,
                    node: &node,
                    iface: &iface,
                    endpoint_chain: match direction {
                        PolicyType::Egress => format!("fw-{iface}"),
                        PolicyType::Ingress => format!("tw-{iface}"),
                    },
                    pipeline,
                };
                stage.dataplane = Some(locate(&at, &side.decision, family.unwrap_or(4), transport));
            }
            _ => {
                stage.not_programmed = Some(
                    program
                        .skipped
                        .get(&id)
                        .cloned()
                        .unwrap_or_else(|| format!("not in node {node}'s program")),
                );
            }
        }
        stage
    }

    /// The place in its node's renderings of a host endpoint's decision (`fh-<iface>`,
    /// `th-<iface>`), or why the endpoint is not programmed.
    fn host_endpoint_stage(
        &mut self,
        stage: &mut PolicyStage,
        name: &str,
        family: Option<u8>,
        transport: Transport,
    ) {
        let Some(hep) = self
            .cluster
            .host_endpoints()
            .iter()
            .find(|h| h.name == name)
        else {
            return;
        };
        let (node, iface) = (hep.node.clone(), hep.interface.clone());
        stage.node = Some(node.clone());
        let direction = stage.direction;
        let program = self.program(&node);
        match program.host_endpoints.get(&iface) {
            Some(local) if local.name == name => {
                let (pipeline, prefix) = match direction {
                    PolicyType::Ingress => (&local.ingress, "fh-"),
                    PolicyType::Egress => (&local.egress, "th-"),
                };
                let at = At {
                    program,
                    node: &node,
                    iface: &iface,
                    endpoint_chain: format!("{prefix}{iface}"),
                    pipeline,
                };
                stage.dataplane =
                    Some(locate(&at, &stage.decision, family.unwrap_or(4), transport));
            }
            _ => {
                stage.not_programmed = Some(
                    program
                        .skipped
                        .get(&format!("HostEndpoint {name}"))
                        .cloned()
                        .unwrap_or_else(|| format!("not in node {node}'s program")),
                );
            }
        }
    }

    fn route_stage(&mut self, source: &Place, destination: &Place, loopback: bool) -> RouteStage {
        let dst = destination.address();
        let mut stage = RouteStage {
            node: None,
            destination: dst,
            route: None,
            path: Path::Unrouted,
            nat_outgoing: false,
            summary: String::new(),
        };
        if loopback {
            stage.path = Path::Loopback;
            stage.summary = "to its own address: never leaves the pod".to_owned();
            return stage;
        }
        let source_node = match source {
            Place::Endpoint { node, .. } => node.clone(),
            Place::External { host, .. } => host.as_ref().map(|h| h.node.clone()),
        };
        let Some(node) = source_node else {
            let reason = match source {
                Place::Endpoint { id, .. } => format!("{id} is on no node"),
                Place::External { .. } => "the source is no endpoint and no node: it enters the \
                                           cluster from outside Margay's routes"
                    .to_owned(),
            };
            stage.summary.clone_from(&reason);
            stage.path = Path::Unknown { reason };
            return stage;
        };
        stage.node = Some(node.clone());
        let Some(dst) = dst else {
            let reason = "the destination has no address of the packet's family".to_owned();
            stage.summary.clone_from(&reason);
            stage.path = Path::Unknown { reason };
            return stage;
        };
        // A packet to one of the node's own addresses is delivered locally.
        if self.host_of(dst).is_some_and(|h| h.node == node) {
            stage.path = Path::LocalHost { node: node.clone() };
            stage.summary = format!("{dst} is node {node}'s own address: delivered locally");
            return stage;
        }
        let plan = match self.plan(&node) {
            Ok(plan) => plan.clone(),
            Err(reason) => {
                stage.summary.clone_from(&reason);
                stage.path = Path::Unknown { reason };
                return stage;
            }
        };
        let source_ip = source.address();
        stage.nat_outgoing = source_ip.is_some_and(|s| masquerades(&plan, s, dst));
        let route = longest_match(&plan, dst).cloned();
        stage.path = self.path_of(&plan, &node, route.as_ref());
        stage.summary = self.route_text(&node, dst, route.as_ref(), &stage.path, destination);
        if stage.nat_outgoing {
            stage
                .summary
                .push_str(" (masqueraded: natOutgoing pool, destination in no pool)");
        }
        stage.route = route;
        stage
    }

    fn path_of(&self, plan: &Plan, node: &str, route: Option<&RouteSpec>) -> Path {
        let Some(route) = route else {
            return Path::Unrouted;
        };
        match &route.target {
            RouteTarget::Blackhole => Path::Blackhole { block: route.dst },
            RouteTarget::Device { dev } => Path::LocalWorkload {
                dev: dev.clone(),
                endpoint: self
                    .cluster
                    .endpoints()
                    .iter()
                    .find(|e| {
                        e.node.as_deref() == Some(node) && e.interface.as_deref() == Some(dev)
                    })
                    .map(|e| e.id.clone()),
            },
            RouteTarget::Via { gateway, dev, .. } if dev == VXLAN_DEVICE => {
                let mac = plan
                    .neighbours
                    .iter()
                    .find(|(ip, _)| IpAddr::from(*ip) == *gateway)
                    .map(|(_, mac)| *mac);
                let underlay =
                    mac.and_then(|mac| plan.fdb.iter().find(|(m, _)| *m == mac).map(|(_, ip)| *ip));
                Path::Vxlan {
                    node: self.host_of(*gateway).map(|h| h.node),
                    gateway: *gateway,
                    underlay,
                }
            }
            RouteTarget::Via { gateway, dev, .. } if dev == IPIP_DEVICE => Path::Ipip {
                node: self.host_of(*gateway).map(|h| h.node),
                gateway: *gateway,
            },
            RouteTarget::Via { gateway, dev, .. } => Path::Direct {
                node: self.host_of(*gateway).map(|h| h.node),
                gateway: *gateway,
                dev: dev.clone(),
            },
        }
    }

    fn route_text(
        &self,
        node: &str,
        dst: IpAddr,
        route: Option<&RouteSpec>,
        path: &Path,
        destination: &Place,
    ) -> String {
        let shown = route.map(route_spec_text).unwrap_or_default();
        let on = |n: &Option<String>| n.as_deref().unwrap_or("an unknown node").to_owned();
        match path {
            Path::LocalWorkload { dev, endpoint } => format!(
                "{shown}: local workload {} over its veth {dev}",
                endpoint
                    .as_deref()
                    .unwrap_or("(no endpoint has this interface)")
            ),
            Path::Vxlan {
                node: to,
                gateway,
                underlay,
            } => format!(
                "{shown}: VXLAN ({VXLAN_DEVICE}) to node {} via its tunnel address {gateway}{}",
                on(to),
                underlay.map_or_else(String::new, |u| format!(", outer destination {u}"))
            ),
            Path::Ipip { node: to, gateway } => format!(
                "{shown}: IPIP ({IPIP_DEVICE}) to node {} at {gateway}",
                on(to)
            ),
            Path::Direct {
                node: to, gateway, ..
            } => format!(
                "{shown}: directly through the uplink to node {} at {gateway} (same subnet: \
                 CrossSubnet sends it unencapsulated)",
                on(to)
            ),
            Path::Blackhole { block } => format!(
                "{shown}: dropped. {block} is node {node}'s own block and no workload on \
                 {node} has {dst}"
            ),
            Path::Unrouted => {
                let pool = match destination {
                    Place::External { pool: Some(p), .. } => format!(
                        " ({dst} is in IPPool {} ({}), in no block: unallocated)",
                        p.name, p.cidr
                    ),
                    _ => String::new(),
                };
                format!(
                    "no route of Margay's to {dst} on node {node}: the node's own routing \
                     (its default route) takes it: it leaves the cluster{pool}"
                )
            }
            Path::Loopback | Path::LocalHost { .. } | Path::Unknown { .. } => shown,
        }
    }

    fn arrival_stage(
        &mut self,
        source: &Place,
        destination: &Place,
        route: &RouteStage,
    ) -> Option<ArrivalStage> {
        let dst = destination.address()?;
        let from_outside = matches!(source, Place::External { host: None, .. });
        let node = if from_outside {
            destination
                .endpoint_node()
                .map(str::to_owned)
                .or_else(|| destination.host().map(|h| h.node.clone()))?
        } else {
            route.path.next_node()?.to_owned()
        };
        let plan = match self.plan(&node) {
            Ok(plan) => plan.clone(),
            Err(reason) => {
                return Some(ArrivalStage {
                    node,
                    overlay: Overlay::NotEncapsulated,
                    route: None,
                    path: Path::Unknown {
                        reason: reason.clone(),
                    },
                    summary: vec![reason],
                })
            }
        };
        let overlay = if from_outside {
            Overlay::FromOutside {
                cluster_nodes: plan.nat.cluster_nodes_v4.clone(),
                vxlan_port: plan.nat.vxlan_port,
                ipip: plan.nat.ipip,
            }
        } else {
            let source_node = route.node.clone().unwrap_or_default();
            self.overlay(&source_node, &node, &route.path, &plan)
        };
        let mut summary = vec![overlay_text(&overlay, &node)];
        let (route_here, path) = if self.host_of(dst).is_some_and(|h| h.node == node) {
            (None, Path::LocalHost { node: node.clone() })
        } else {
            let r = longest_match(&plan, dst).cloned();
            let p = self.path_of(&plan, &node, r.as_ref());
            (r, p)
        };
        summary.push(match &path {
            Path::LocalHost { .. } => format!(
                "{dst} is node {node}'s own address: delivered to the host (input), where only \
                 host endpoint policy applies"
            ),
            _ => format!(
                "on {node}: {}",
                self.route_text(&node, dst, route_here.as_ref(), &path, destination)
            ),
        });
        Some(ArrivalStage {
            node,
            overlay,
            route: route_here,
            path,
            summary,
        })
    }

    /// What the destination node's overlay protection and tunnel device do with a packet the
    /// source node sends along `path`.
    fn overlay(&mut self, source_node: &str, node: &str, path: &Path, plan: &Plan) -> Overlay {
        let source_plan = self.plan(source_node).ok().cloned();
        let outer_source = self
            .model
            .nodes
            .get(source_node)
            .and_then(node_ipv4_net)
            .map(|n| n.addr());
        let accepted = |encapsulation: &str, from: Option<Ipv4Addr>| match from {
            Some(from) if plan.nat.cluster_nodes_v4.contains(&from) => Overlay::Accepted {
                encapsulation: encapsulation.to_owned(),
                from,
                from_node: source_node.to_owned(),
            },
            _ => Overlay::Dropped {
                encapsulation: encapsulation.to_owned(),
                reason: format!(
                    "node {source_node}'s address is not among node {node}'s cluster nodes"
                ),
            },
        };
        match path {
            Path::Vxlan { .. } => {
                let (Some(here), Some(there)) = (
                    plan.vxlan.as_ref(),
                    source_plan.as_ref().and_then(|p| p.vxlan.as_ref()),
                ) else {
                    return Overlay::Dropped {
                        encapsulation: "VXLAN".to_owned(),
                        reason: format!("node {node} has no VXLAN device to decapsulate it"),
                    };
                };
                if here.port != there.port || here.vni != there.vni {
                    return Overlay::Dropped {
                        encapsulation: "VXLAN".to_owned(),
                        reason: format!(
                            "node {source_node} sends VNI {} to port {}, node {node} listens \
                             for VNI {} on port {}",
                            there.vni, there.port, here.vni, here.port
                        ),
                    };
                }
                accepted("VXLAN", outer_source)
            }
            Path::Ipip { .. } => {
                if plan.ipip.is_none() {
                    return Overlay::Dropped {
                        encapsulation: "IPIP".to_owned(),
                        reason: format!("node {node} has no IPIP device to decapsulate it"),
                    };
                }
                accepted("IPIP", outer_source)
            }
            _ => Overlay::NotEncapsulated,
        }
    }
}

fn node_ipv4_net(node: &Node) -> Option<Ipv4Net> {
    let address = node.ipv4_address()?;
    match address.addr() {
        IpAddr::V4(v4) => Ipv4Net::new(v4, address.prefix_len()).ok(),
        IpAddr::V6(_) => None,
    }
}

/// The route the kernel would pick among the plan's: the longest prefix containing `ip`.
fn longest_match(plan: &Plan, ip: IpAddr) -> Option<&RouteSpec> {
    plan.routes
        .iter()
        .filter(|r| r.dst.contains(&ip))
        .max_by_key(|r| r.dst.prefix_len())
}

/// Whether the node's NAT rules masquerade `src` → `dst` (source in a natOutgoing pool,
/// destination in no pool).
fn masquerades(plan: &Plan, src: IpAddr, dst: IpAddr) -> bool {
    let nat = &plan.nat;
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            nat.nat_outgoing_v4.iter().any(|n| n.contains(&s))
                && !nat.all_pools_v4.iter().any(|n| n.contains(&d))
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            nat.nat_outgoing_v6.iter().any(|n| n.contains(&s))
                && !nat.all_pools_v6.iter().any(|n| n.contains(&d))
        }
        _ => false,
    }
}

/// A route as `ip route` prints it.
fn route_spec_text(route: &RouteSpec) -> String {
    let dst = if route.dst.prefix_len() == route.dst.max_prefix_len() {
        route.dst.addr().to_string()
    } else {
        route.dst.to_string()
    };
    match &route.target {
        RouteTarget::Blackhole => format!("blackhole {dst}"),
        RouteTarget::Device { dev } => format!("{dst} dev {dev} scope link"),
        RouteTarget::Via {
            gateway,
            dev,
            onlink,
        } => format!(
            "{dst} via {gateway} dev {dev}{}",
            if *onlink { " onlink" } else { "" }
        ),
    }
}

fn overlay_text(overlay: &Overlay, node: &str) -> String {
    match overlay {
        Overlay::Accepted {
            encapsulation,
            from,
            from_node,
        } => format!(
            "{encapsulation} from {from} (node {from_node}, a cluster node): accepted by node \
             {node}'s overlay protection"
        ),
        Overlay::Dropped {
            encapsulation,
            reason,
        } => format!("{encapsulation}: dropped on node {node}: {reason}"),
        Overlay::NotEncapsulated => {
            format!("not encapsulated: node {node}'s overlay protection does not apply")
        }
        Overlay::FromOutside {
            cluster_nodes,
            vxlan_port,
            ipip,
        } => {
            let nodes: Vec<String> = cluster_nodes.iter().map(ToString::to_string).collect();
            let mut kinds = Vec::new();
            if let Some(port) = vxlan_port {
                kinds.push(format!("VXLAN (UDP {port})"));
            }
            if *ipip {
                kinds.push("IPIP".to_owned());
            }
            if kinds.is_empty() {
                format!(
                    "arrives on node {node} from outside Margay's routes; node {node} uses no \
                     overlay, so none is filtered"
                )
            } else {
                format!(
                    "arrives on node {node} from outside Margay's routes: plain routed packets \
                     pass; {} is accepted only from cluster nodes ({}), dropped from any other \
                     host",
                    kinds.join(" or "),
                    nodes.join(", ")
                )
            }
        }
    }
}

fn direction_word(direction: PolicyType) -> &'static str {
    match direction {
        PolicyType::Ingress => "ingress",
        PolicyType::Egress => "egress",
    }
}

/// `policy knp.default.web in namespace x`, `global policy default.deny`.
fn policy_text(policy: &PolicyRef) -> String {
    match (&policy.namespace, policy.kind) {
        (Some(ns), _) => format!("policy {} in namespace {ns}", policy.name),
        (None, PolicyKind::GlobalNetworkPolicy) => format!("global policy {}", policy.name),
        (None, _) => format!("policy {}", policy.name),
    }
}

/// `ingress rule 0 (spec.ingress[0].from[1])`.
fn rule_text(rule: &RuleRef) -> String {
    format!(
        "{} rule {} ({})",
        direction_word(rule.direction),
        rule.index,
        rule.origin
    )
}

/// What decided, as Calico names it: `tier default, policy knp.default.web in namespace x,
/// ingress rule 0 (spec.ingress[0].from[0])`, `profile kns.x, egress rule 0 (…)`, the end of
/// a tier, the end of the profiles.
pub fn decision_by(decision: &Decision) -> String {
    match decision {
        Decision::Loopback => "its own address: traffic to it never leaves the pod".into(),
        Decision::NotAnEndpoint { ip } => format!("no policy: {ip} is no Margay endpoint"),
        Decision::UnknownEndpoint { id } => format!("no endpoint {id}"),
        Decision::Rule { tier, policy, rule } => {
            format!("tier {tier}, {}, {}", policy_text(policy), rule_text(rule))
        }
        Decision::TierDefault { tier } => format!(
            "the end of tier {tier}: no policy in it allowed or passed the packet \
             (\"Drop if no policies passed packet\")"
        ),
        Decision::ProfileRule { profile, rule } => {
            format!("profile {profile}, {}", rule_text(rule))
        }
        Decision::NoProfileMatched => "the end of the profiles: none of their rules matched \
                                       (\"Drop if no profiles matched\")"
            .into(),
        Decision::EndpointToHost { node, action } => format!(
            "node {node}'s defaultEndpointToHostAction, {action}, which applies to what its \
             workloads send to it (\"Configured DefaultEndpointToHostAction\")"
        ),
        Decision::FromHost { node } => {
            format!("node {node}'s output path to its own workloads, which Calico does not police")
        }
        Decision::Failsafe { node, port } => format!(
            "a failsafe port of node {node}, {} {}{}, which host endpoint policy never blocks",
            port.protocol,
            port.port,
            port.net
                .map_or_else(String::new, |net| format!(" (with {net})"))
        ),
        Decision::Overlay { node } => format!(
            "the overlay (VXLAN) between the cluster's nodes, which node {node}'s host \
             endpoint policy does not apply to"
        ),
    }
}

/// The decision as a sentence: `denied by the end of tier default: …`.
pub fn decision_text(decision: &Decision, direction: PolicyType) -> String {
    match decision {
        Decision::Loopback => "allowed: traffic to its own address never leaves the pod".into(),
        Decision::NotAnEndpoint { ip } => format!(
            "not evaluated: {ip} is no Margay endpoint, so there is no {} policy on this side",
            direction_word(direction)
        ),
        Decision::Rule { rule, .. } | Decision::ProfileRule { rule, .. } => {
            format!("{} by {}", action_word(rule), decision_by(decision))
        }
        Decision::UnknownEndpoint { .. }
        | Decision::TierDefault { .. }
        | Decision::NoProfileMatched => format!("denied by {}", decision_by(decision)),
        Decision::EndpointToHost { action, .. } => match action {
            EndpointToHostAction::Drop => format!("denied by {}", decision_by(decision)),
            EndpointToHostAction::Accept => format!("allowed by {}", decision_by(decision)),
            EndpointToHostAction::Return => format!(
                "handed on to the host's other input rules by {}",
                decision_by(decision)
            ),
        },
        Decision::FromHost { .. } => {
            format!("allowed without policy: {}", decision_by(decision))
        }
        Decision::Failsafe { .. } | Decision::Overlay { .. } => {
            format!("allowed by {}", decision_by(decision))
        }
    }
}

fn action_word(rule: &RuleRef) -> &'static str {
    match rule.action {
        margay_api::Action::Allow => "allowed",
        margay_api::Action::Deny => "denied",
        margay_api::Action::Log => "logged",
        margay_api::Action::Pass => "passed",
    }
}

fn step_text(step: &Step, direction: PolicyType) -> String {
    match step {
        Step::TierSkipped { tier } => format!(
            "tier {tier}: skipped (no policy of it selects the endpoint for {})",
            direction_word(direction)
        ),
        Step::PolicyNoMatch { tier, policy } => format!(
            "tier {tier}, {}: no rule matched, on to the next policy",
            policy_text(policy)
        ),
        Step::Logged { tier, policy, rule } => format!(
            "tier {tier}, {}, {}: Log, and on",
            policy_text(policy),
            rule_text(rule)
        ),
        Step::Passed { tier, policy, rule } => format!(
            "tier {tier}, {}, {}: Pass, on to the next tier",
            policy_text(policy),
            rule_text(rule)
        ),
        Step::TierDefaultPass { tier } => {
            format!("tier {tier}: no verdict, and its default action Pass goes on")
        }
        Step::ProfileNoMatch { profile } => {
            format!("profile {profile}: no rule matched, on to the next profile")
        }
        Step::ProfileLogged { profile, rule } => {
            format!("profile {profile}, {}: Log, and on", rule_text(rule))
        }
        Step::ProfilePassed { profile, rule } => format!(
            "profile {profile}, {}: Pass, on to the next profile",
            rule_text(rule)
        ),
    }
}

/// The comments the renderers give the endpoint chain's closing rules (a tier's end, the
/// end of the profiles), per rendering.
struct EndComments {
    tier_end: fn(&str) -> String,
    no_profile: &'static str,
}

const NFT_COMMENTS: EndComments = EndComments {
    tier_end: |tier| format!("end of tier {tier}: drop if no policies passed packet"),
    no_profile: "drop if no profiles matched",
};

const IPTABLES_COMMENTS: EndComments = EndComments {
    tier_end: |tier| format!("End of tier {tier}. Drop if no policies passed packet"),
    no_profile: "Drop if no profiles matched",
};

/// A rule of a node's renderings that decides by itself, outside any endpoint's pipeline.
enum HostRule {
    /// From a workload to its node: the last rule of `wl-to-host` (`mgy-wl-to-host`), the
    /// node's `defaultEndpointToHostAction`, after the workload's egress policy.
    ToHost,
    /// From a node to its workload: the output chain returns for workload interfaces.
    FromHost,
    /// A failsafe port, in `failsafe-in` (ingress) or `failsafe-out` (egress), which the
    /// chain of the host endpoint on this interface jumps to.
    Failsafe(PolicyType, ProtoPort, String),
    /// The overlay between the nodes, in the input (ingress) or output (egress) chain.
    Overlay(PolicyType),
}

/// Where `rule` is in the node's renderings: the chain it is in, the chain that leads there,
/// and its position, found by the comment the renderers give it.
fn host_rule_dataplane(program: &Program, node: &str, family: u8, rule: &HostRule) -> Dataplane {
    let (nft_family, ipt_family) = if family == 6 {
        (
            margay_nft::policy::AddressFamily::Ipv6,
            margay_iptables::Family::V6,
        )
    } else {
        (
            margay_nft::policy::AddressFamily::Ipv4,
            margay_iptables::Family::V4,
        )
    };
    let overlay = |text: &str| text.starts_with("VXLAN between the cluster's nodes");
    // (the chain leading there, the chain, whether a rule's comment is the one), per rendering.
    type Find = Box<dyn Fn(&str) -> bool>;
    let (nft_from_owned, ipt_from_owned);
    let ((nft_from, nft_chain, nft_is), (ipt_from, ipt_chain, ipt_is)): (
        (&str, &str, Find),
        (&str, &str, Find),
    ) = match rule {
        HostRule::ToHost => (
            (
                "input",
                "wl-to-host",
                Box::new(|c: &str| c.starts_with("configured DefaultEndpointToHostAction")),
            ),
            (
                "mgy-INPUT",
                "mgy-wl-to-host",
                Box::new(|c: &str| c.starts_with("Configured DefaultEndpointToHostAction")),
            ),
        ),
        HostRule::FromHost => (
            (
                "output",
                "output",
                Box::new(|c: &str| c == "from this host to a workload: allowed without policy"),
            ),
            (
                "mgy-OUTPUT",
                "mgy-OUTPUT",
                Box::new(|c: &str| c == "From this host to a workload: allowed without policy"),
            ),
        ),
        HostRule::Failsafe(direction, port, iface) => {
            let text = format!("{} {}", port.protocol, port.port);
            let (from, nft, ipt) = match direction {
                PolicyType::Ingress => (format!("fh-{iface}"), "failsafe-in", "mgy-failsafe-in"),
                PolicyType::Egress => (format!("th-{iface}"), "failsafe-out", "mgy-failsafe-out"),
            };
            nft_from_owned = from;
            ipt_from_owned = margay_iptables::chain_name(&nft_from_owned);
            let (nft_text, ipt_text) = (format!("failsafe: {text}"), format!("Failsafe: {text}"));
            (
                (
                    nft_from_owned.as_str(),
                    nft,
                    Box::new(move |c: &str| c == nft_text),
                ),
                (
                    ipt_from_owned.as_str(),
                    ipt,
                    Box::new(move |c: &str| c == ipt_text),
                ),
            )
        }
        HostRule::Overlay(direction) => {
            let (nft, ipt) = match direction {
                PolicyType::Ingress => ("input", "mgy-INPUT"),
                PolicyType::Egress => ("output", "mgy-OUTPUT"),
            };
            ((nft, nft, Box::new(overlay)), (ipt, ipt, Box::new(overlay)))
        }
    };
    let table = margay_nft::policy::table(program, nft_family);
    let nft = table
        .chains
        .iter()
        .find(|c| c.name == nft_chain)
        .and_then(|c| {
            c.rules
                .iter()
                .position(|r| nft_is(&r.comment))
                .map(|i| (i + 1, c.rules[i].comment.clone()))
        });
    let rendered = margay_iptables::render(program, ipt_family);
    let ipt = rendered.chain(ipt_chain).and_then(|c| {
        c.rules.iter().enumerate().find_map(|(i, r)| {
            spec_comments(&r.spec)
                .into_iter()
                .find(|comment| ipt_is(comment))
                .map(|comment| (i + 1, comment))
        })
    });
    let location = |table: String, from: &str, chain: &str, at: Option<(usize, String)>| Location {
        table,
        endpoint_chain: from.to_owned(),
        chain: chain.to_owned(),
        rules: at.iter().map(|(n, _)| *n).collect(),
        comment: at.map(|(_, c)| c),
    };
    Dataplane {
        node: node.to_owned(),
        interface: String::new(),
        family,
        nftables: location(
            format!("{} {}", table.family, table.name),
            nft_from,
            nft_chain,
            nft,
        ),
        iptables: location("filter".to_owned(), ipt_from, ipt_chain, ipt),
        chains: Vec::new(),
    }
}

/// One endpoint's pipeline in one direction, in its node's program.
struct At<'a> {
    program: &'a Program,
    node: &'a str,
    iface: &'a str,
    /// The program-side id of the chain walking it: `fw-<iface>`, `tw-<iface>` for a
    /// workload, `fh-<iface>`, `th-<iface>` for a host endpoint.
    endpoint_chain: String,
    pipeline: &'a Pipeline,
}

/// Where `decision` is made in the node's nftables table and iptables chains.
fn locate(at: &At<'_>, decision: &Decision, family: u8, transport: Transport) -> Dataplane {
    let At {
        program,
        node,
        iface,
        pipeline,
        ..
    } = *at;
    let endpoint_id = at.endpoint_chain.clone();
    // The program chain that decides and the comment of the deciding rule, or the
    // endpoint chain's closing rule.
    enum Target {
        Rule { chain: String, comment: String },
        TierEnd(String),
        NoProfile,
        Nothing,
    }
    let rule_comment = |rules: &[program::ProgramRule], index: usize| {
        rules
            .iter()
            .find(|r| r.index == index)
            .map(|r| r.comment.clone())
            .unwrap_or_default()
    };
    let target = match decision {
        Decision::Rule { policy, rule, .. } => pipeline
            .tiers
            .iter()
            .flat_map(|t| &t.policies)
            .find_map(|id| {
                let chain = program.policies.get(id)?;
                (chain.policy == *policy).then(|| Target::Rule {
                    chain: id.clone(),
                    comment: rule_comment(&chain.rules, rule.index),
                })
            })
            .unwrap_or(Target::Nothing),
        Decision::ProfileRule { profile, rule } => pipeline
            .profiles
            .iter()
            .find_map(|id| {
                let chain = program.profiles.get(id)?;
                (chain.profile == *profile).then(|| Target::Rule {
                    chain: id.clone(),
                    comment: rule_comment(&chain.rules, rule.index),
                })
            })
            .unwrap_or(Target::Nothing),
        Decision::TierDefault { tier } => Target::TierEnd(tier.clone()),
        Decision::NoProfileMatched => Target::NoProfile,
        Decision::Loopback
        | Decision::NotAnEndpoint { .. }
        | Decision::UnknownEndpoint { .. }
        | Decision::EndpointToHost { .. }
        | Decision::FromHost { .. }
        | Decision::Failsafe { .. }
        | Decision::Overlay { .. } => Target::Nothing,
    };

    // nftables.
    let nft_family = if family == 6 {
        margay_nft::policy::AddressFamily::Ipv6
    } else {
        margay_nft::policy::AddressFamily::Ipv4
    };
    let table = margay_nft::policy::table(program, nft_family);
    let nft_positions = |chain: &str, comment: &str| -> Vec<usize> {
        table
            .chains
            .iter()
            .find(|c| c.name == chain)
            .and_then(|c| c.rules.iter().position(|r| r.comment == comment))
            .map(|p| vec![p + 1])
            .unwrap_or_default()
    };
    let (nft_chain, nft_comment) = match &target {
        Target::Rule { chain, comment } => (chain.clone(), Some(comment.clone())),
        Target::TierEnd(tier) => (endpoint_id.clone(), Some((NFT_COMMENTS.tier_end)(tier))),
        Target::NoProfile => (
            endpoint_id.clone(),
            Some(NFT_COMMENTS.no_profile.to_owned()),
        ),
        Target::Nothing => (endpoint_id.clone(), None),
    };
    let nftables = Location {
        table: format!("{} {}", table.family, table.name),
        endpoint_chain: endpoint_id.clone(),
        rules: nft_comment
            .as_deref()
            .map(|c| nft_positions(&nft_chain, c))
            .unwrap_or_default(),
        chain: nft_chain,
        comment: nft_comment,
    };

    // iptables.
    let ipt_family = if family == 6 {
        margay_iptables::Family::V6
    } else {
        margay_iptables::Family::V4
    };
    let rendered = margay_iptables::render(program, ipt_family);
    let endpoint_chain = margay_iptables::chain_name(&endpoint_id);
    let (ipt_chain, ipt_comment, decides) = match &target {
        Target::Rule { chain, comment } => (
            margay_iptables::chain_name(chain),
            Some(comment.clone()),
            true,
        ),
        Target::TierEnd(tier) => (
            endpoint_chain.clone(),
            Some((IPTABLES_COMMENTS.tier_end)(tier)),
            false,
        ),
        Target::NoProfile => (
            endpoint_chain.clone(),
            Some(IPTABLES_COMMENTS.no_profile.to_owned()),
            false,
        ),
        Target::Nothing => (endpoint_chain.clone(), None, false),
    };
    let rules = match (&ipt_comment, rendered.chain(&ipt_chain)) {
        (Some(comment), Some(chain)) => {
            iptables_positions(&chain.rules, comment, decides, transport)
        }
        _ => Vec::new(),
    };
    let iptables = Location {
        table: "filter".to_owned(),
        endpoint_chain,
        chain: ipt_chain,
        rules,
        comment: ipt_comment,
    };
    let mut chains: Vec<ChainRef> = pipeline
        .tiers
        .iter()
        .flat_map(|t| t.policies.iter().map(move |id| (t, id)))
        .map(|(t, id)| ChainRef {
            tier: Some(t.tier.clone()),
            policy: program.policies.get(id).map(|c| c.policy.clone()),
            profile: None,
            nftables: id.clone(),
            iptables: margay_iptables::chain_name(id),
        })
        .collect();
    chains.extend(pipeline.profiles.iter().map(|id| ChainRef {
        tier: None,
        policy: None,
        profile: program.profiles.get(id).map(|c| c.profile.clone()),
        nftables: id.clone(),
        iptables: margay_iptables::chain_name(id),
    }));
    Dataplane {
        node: node.to_owned(),
        interface: iface.to_owned(),
        family,
        nftables,
        iptables,
        chains,
    }
}

/// The 1-based positions of the iptables rules carrying `comment`. For a program rule
/// (`rule` true): the rule for the packet's protocol when the renderer wrote one per
/// protocol, followed by its `: return` rule (Allow and Pass are two rules).
fn iptables_positions(
    rules: &[margay_iptables::Rule],
    comment: &str,
    rule: bool,
    transport: Transport,
) -> Vec<usize> {
    let comments: Vec<Vec<String>> = rules.iter().map(|r| spec_comments(&r.spec)).collect();
    let has = |i: usize, text: &str| comments[i].iter().any(|c| c == text);
    let candidates: Vec<usize> = (0..rules.len()).filter(|i| has(*i, comment)).collect();
    if !rule {
        return candidates.first().map(|i| vec![i + 1]).unwrap_or_default();
    }
    // As iptables-save spells `-p`.
    let proto = match transport {
        Transport::Ports { protocol, .. } => protocol.to_string().to_ascii_lowercase(),
        Transport::Icmp(Icmp {
            version: IcmpVersion::V4,
            ..
        }) => "icmp".to_owned(),
        Transport::Icmp(Icmp {
            version: IcmpVersion::V6,
            ..
        }) => "ipv6-icmp".to_owned(),
    };
    let for_protocol = |i: &&usize| {
        let words: Vec<&str> = rules[**i].spec.split_whitespace().collect();
        match words.iter().position(|w| *w == "-p") {
            None => true,
            Some(p) => {
                let negated = p > 0 && words[p - 1] == "!";
                let named = words.get(p + 1).is_some_and(|w| *w == proto);
                named != negated
            }
        }
    };
    let Some(&first) = candidates
        .iter()
        .find(for_protocol)
        .or_else(|| candidates.first())
    else {
        return Vec::new();
    };
    let mut positions = vec![first + 1];
    let returns = format!("{comment}: return");
    if first + 1 < rules.len() && has(first + 1, &returns) {
        positions.push(first + 2);
    }
    positions
}

/// The texts of a rule's `-m comment --comment` matches, as `iptables-save` writes them
/// (bare words, or double-quoted with `\` escapes); Margay's `mgy:<hash>` comment excluded.
fn spec_comments(spec: &str) -> Vec<String> {
    const MARKER: &str = "--comment ";
    let mut out = Vec::new();
    let mut rest = spec;
    while let Some(at) = rest.find(MARKER) {
        rest = &rest[at + MARKER.len()..];
        let mut text = String::new();
        let mut chars = rest.char_indices();
        let end = if rest.starts_with('"') {
            chars.next();
            let mut end = rest.len();
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, escaped)) = chars.next() {
                            text.push(escaped);
                        }
                    }
                    '"' => {
                        end = i + 1;
                        break;
                    }
                    c => text.push(c),
                }
            }
            end
        } else {
            let end = rest.find(' ').unwrap_or(rest.len());
            text.push_str(&rest[..end]);
            end
        };
        rest = &rest[end..];
        if !text.starts_with("mgy:") {
            out.push(text);
        }
    }
    out
}

fn final_verdict(
    policy_allowed: bool,
    source: &Place,
    destination: &Place,
    egress: &PolicyStage,
    route: &RouteStage,
    arrival: Option<&ArrivalStage>,
    ingress: &PolicyStage,
) -> FinalVerdict {
    let denied = |stage: Stage, by: String| FinalVerdict {
        allowed: false,
        policy_allowed,
        stage,
        by,
        dataplane: None,
    };
    let denied_by_policy = |stage: Stage, side: &PolicyStage| FinalVerdict {
        dataplane: side.dataplane.clone(),
        ..denied(stage, policy_verdict_text(side))
    };
    if matches!(route.path, Path::Loopback) {
        return FinalVerdict {
            allowed: true,
            policy_allowed,
            stage: Stage::None,
            by: "traffic to its own address never leaves the pod".into(),
            dataplane: None,
        };
    }
    if !egress.allowed {
        return denied_by_policy(Stage::Egress, egress);
    }
    if let Some(why) = &egress.not_programmed {
        return denied(
            Stage::Egress,
            format!(
                "{} is not programmed on its node ({why}): the dispatch chain drops traffic \
                 from an unknown workload interface",
                egress.endpoint.as_deref().unwrap_or_default()
            ),
        );
    }
    match &route.path {
        Path::Blackhole { block } => {
            return denied(
                Stage::Route,
                format!(
                    "the blackhole route for block {block} on node {}",
                    route.node.as_deref().unwrap_or_default()
                ),
            )
        }
        Path::Unrouted if matches!(destination, Place::Endpoint { .. }) => {
            return denied(
                Stage::Route,
                format!(
                    "no route to {} on node {}: it leaves through the node's default route \
                     instead of reaching the pod",
                    route.destination.map(|d| d.to_string()).unwrap_or_default(),
                    route.node.as_deref().unwrap_or_default()
                ),
            )
        }
        Path::Unknown { reason } if route.node.is_some() => {
            return denied(Stage::Route, reason.clone())
        }
        _ => {}
    }
    if let Some(arrival) = arrival {
        if let Overlay::Dropped {
            encapsulation,
            reason,
        } = &arrival.overlay
        {
            return denied(
                Stage::Arrival,
                format!(
                    "node {}'s overlay protection ({encapsulation}): {reason}",
                    arrival.node
                ),
            );
        }
        match &arrival.path {
            Path::Blackhole { block } => {
                return denied(
                    Stage::Arrival,
                    format!(
                        "the blackhole route for block {block} on node {}: no workload there \
                         has {}",
                        arrival.node,
                        route.destination.map(|d| d.to_string()).unwrap_or_default()
                    ),
                )
            }
            Path::Unrouted if matches!(destination, Place::Endpoint { .. }) => {
                return denied(
                    Stage::Arrival,
                    format!(
                        "no route to the pod on node {}: it has no workload route for {}",
                        arrival.node,
                        route.destination.map(|d| d.to_string()).unwrap_or_default()
                    ),
                )
            }
            _ => {}
        }
    }
    // A node's own traffic to a workload on it goes through output, not forward: as in
    // Calico, no policy applies to it.
    let host_to_local = source
        .host()
        .is_some_and(|h| destination.endpoint_node() == Some(h.node.as_str()));
    if host_to_local {
        return FinalVerdict {
            allowed: true,
            policy_allowed,
            stage: Stage::None,
            by: "not policed: a node's own traffic to a workload on it takes the output path, \
                 whose chain returns for workload interfaces, as Calico's does"
                .to_owned(),
            dataplane: ingress.dataplane.clone(),
        };
    }
    if !ingress.allowed {
        return denied_by_policy(Stage::Ingress, ingress);
    }
    if let Some(why) = &ingress.not_programmed {
        return denied(
            Stage::Ingress,
            format!(
                "{} is not programmed on its node ({why}): the dispatch chain drops traffic \
                 to an unknown workload interface",
                ingress.endpoint.as_deref().unwrap_or_default()
            ),
        );
    }
    let by = match (&route.path, destination) {
        (Path::Unrouted, _) => format!(
            "as far as Margay goes: it leaves the cluster through node {}'s default route",
            route.node.as_deref().unwrap_or_default()
        ),
        (_, Place::External { .. }) if ingress.host_endpoint.is_some() => {
            format!("allowed into the node by {}", policy_verdict_text(ingress))
        }
        (_, Place::External { .. })
            if matches!(ingress.decision, Decision::EndpointToHost { .. }) =>
        {
            format!("allowed into the node by {}", policy_verdict_text(ingress))
        }
        (_, Place::External { .. }) => "no policy on the destination's side".into(),
        _ => "both directions allowed, and routed to the pod".into(),
    };
    FinalVerdict {
        allowed: true,
        policy_allowed,
        stage: Stage::None,
        by,
        dataplane: None,
    }
}

/// `<what decided> (at y/b ingress)`.
fn policy_verdict_text(stage: &PolicyStage) -> String {
    let at = match (&stage.endpoint, &stage.host_endpoint, &stage.node) {
        (Some(ep), ..) => ep.clone(),
        (None, Some(hep), _) => format!("host endpoint {hep}"),
        (None, None, Some(node)) => format!("node {node}"),
        (None, None, None) => String::new(),
    };
    format!(
        "{} (at {at} {})",
        decision_by(&stage.decision),
        direction_word(stage.direction)
    )
}

/// `table ip margay-policy chain po-… rule 2`.
fn location_text(location: &Location) -> String {
    let rules = match location.rules.as_slice() {
        [] => String::new(),
        [one] => format!(" rule {one}"),
        [first, .., last] => format!(" rules {first}-{last}"),
    };
    format!("table {} chain {}{rules}", location.table, location.chain)
}

fn place_text(place: &Place) -> String {
    match place {
        Place::Endpoint {
            id,
            node,
            interface,
            ips,
            address,
        } => {
            let ips: Vec<String> = ips.iter().map(ToString::to_string).collect();
            let mut text = format!(
                "{id}: endpoint on node {}, interface {}, {}",
                node.as_deref().unwrap_or("(none: not scheduled)"),
                interface.as_deref().unwrap_or("(none)"),
                if ips.is_empty() {
                    "no addresses".to_owned()
                } else {
                    ips.join(", ")
                }
            );
            if address.is_none() {
                text.push_str(" (none of the packet's family)");
            }
            text
        }
        Place::External { ip, pool, host } => {
            let mut text = format!("{ip} is no Margay endpoint: evaluated as external");
            if let Some(h) = host {
                let _ = write!(text, "; it is node {}'s {}", h.node, h.role);
            }
            match pool {
                Some(PoolRef {
                    name,
                    cidr,
                    block: Some(b),
                }) => {
                    let _ = write!(
                        text,
                        "; in IPPool {name} ({cidr}), block {} of {}",
                        b.cidr,
                        b.node
                            .as_deref()
                            .map_or_else(|| "no node".to_owned(), |n| format!("node {n}"))
                    );
                }
                Some(PoolRef {
                    name,
                    cidr,
                    block: None,
                }) => {
                    let _ = write!(
                        text,
                        "; in IPPool {name} ({cidr}), in no block (unallocated)"
                    );
                }
                None => text.push_str("; in no IP pool"),
            }
            text
        }
    }
}

fn policy_lines(out: &mut String, stage: &PolicyStage) {
    let chains = stage
        .dataplane
        .as_ref()
        .map_or(&[][..], |d| d.chains.as_slice());
    for step in &stage.steps {
        let chain = match step {
            Step::PolicyNoMatch { policy, .. }
            | Step::Logged { policy, .. }
            | Step::Passed { policy, .. } => {
                chains.iter().find(|c| c.policy.as_ref() == Some(policy))
            }
            Step::ProfileNoMatch { profile }
            | Step::ProfileLogged { profile, .. }
            | Step::ProfilePassed { profile, .. } => chains
                .iter()
                .find(|c| c.profile.as_deref() == Some(profile.as_str())),
            Step::TierSkipped { .. } | Step::TierDefaultPass { .. } => None,
        };
        let _ = write!(out, "     {}", step_text(step, stage.direction));
        if let Some(c) = chain {
            let _ = write!(out, " [{} / {}]", c.nftables, c.iptables);
        }
        out.push('\n');
    }
    let _ = writeln!(out, "     => {}", stage.summary);
    if let Some(dp) = &stage.dataplane {
        dataplane_lines(out, dp, true);
    }
    if let Some(why) = &stage.not_programmed {
        let _ = writeln!(out, "     not programmed on its node: {why}");
    }
}

/// The nftables and iptables lines of a location; with the endpoint chain when `via`.
fn dataplane_lines(out: &mut String, dp: &Dataplane, via: bool) {
    let iptables = if dp.family == 6 {
        "ip6tables"
    } else {
        "iptables"
    };
    for (name, location) in [("nftables", &dp.nftables), (iptables, &dp.iptables)] {
        let _ = write!(out, "     {name:<9} {}", location_text(location));
        if via && location.chain != location.endpoint_chain {
            let _ = write!(out, " (from endpoint chain {})", location.endpoint_chain);
        }
        out.push('\n');
    }
}

/// The trace as text: the six stages, one block each.
pub fn render(trace: &Trace) -> String {
    let mut out = String::new();
    let end = |p: &Place| match p {
        Place::Endpoint { id, .. } => id.clone(),
        Place::External { ip, .. } => ip.to_string(),
    };
    let _ = writeln!(
        out,
        "Trace {} from {} to {}{}",
        trace.packet,
        end(&trace.source),
        end(&trace.destination),
        trace
            .family
            .map_or_else(String::new, |f| format!(" (IPv{f})"))
    );
    let _ = writeln!(out);
    let _ = writeln!(out, "1. Source");
    let _ = writeln!(out, "     from {}", place_text(&trace.source));
    let _ = writeln!(out, "     to   {}", place_text(&trace.destination));
    let at = |stage: &PolicyStage| match (&stage.endpoint, &stage.host_endpoint, &stage.node) {
        (Some(ep), _, Some(node)) => format!(" at {ep} (node {node})"),
        (Some(ep), _, None) => format!(" at {ep}"),
        (None, Some(hep), Some(node)) => format!(" at host endpoint {hep} (node {node})"),
        (None, _, Some(node)) => format!(" at node {node}"),
        (None, _, None) => String::new(),
    };
    let _ = writeln!(out, "2. Egress{}", at(&trace.egress));
    policy_lines(&mut out, &trace.egress);
    let route = &trace.route;
    let _ = writeln!(
        out,
        "3. Route{}",
        route
            .node
            .as_ref()
            .map_or_else(String::new, |n| format!(" on node {n}"))
    );
    let _ = writeln!(out, "     {}", route.summary);
    match &trace.arrival {
        Some(arrival) => {
            let _ = writeln!(out, "4. Arrival on node {}", arrival.node);
            for line in &arrival.summary {
                let _ = writeln!(out, "     {line}");
            }
        }
        None => {
            let why = match &route.path {
                Path::LocalWorkload { .. } => "same node: no overlay",
                Path::Loopback => "never leaves the pod",
                Path::LocalHost { .. } => "delivered to the source node itself",
                Path::Blackhole { .. } => "dropped on the source node",
                Path::Unrouted => "leaves the cluster",
                _ => "no destination node",
            };
            let _ = writeln!(out, "4. Arrival: none ({why})");
        }
    }
    let _ = writeln!(out, "5. Ingress{}", at(&trace.ingress));
    policy_lines(&mut out, &trace.ingress);
    let v = &trace.verdict;
    if v.allowed {
        let _ = writeln!(out, "6. Verdict: ALLOWED ({})", v.by);
    } else {
        let _ = writeln!(out, "6. Verdict: DENIED by {}", v.by);
    }
    if let Some(dp) = &v.dataplane {
        dataplane_lines(&mut out, dp, false);
    }
    for w in &trace.warnings {
        let _ = writeln!(out, "warning: {w}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iptables_comments_are_read_back() {
        let spec = r#"-p tcp -m comment --comment "mgy:abc" -m comment --comment "tier default policy x/a ingress rule 0: spec.ingress[0] \"q\"" -j MARK"#;
        assert_eq!(
            spec_comments(spec),
            vec!["tier default policy x/a ingress rule 0: spec.ingress[0] \"q\"".to_owned()]
        );
        assert_eq!(
            spec_comments("-m comment --comment mgy:1 -m comment --comment plain -j DROP"),
            vec!["plain".to_owned()]
        );
    }

    #[test]
    fn edit_distance_counts_edits() {
        assert_eq!(edit_distance("x/a", "x/a"), 0);
        assert_eq!(edit_distance("x/a", "x/b"), 1);
        assert_eq!(edit_distance("x/web", "y/web-0"), 3);
        assert_eq!(edit_distance("", "abc"), 3);
    }
}
