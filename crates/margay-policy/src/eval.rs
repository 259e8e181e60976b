//! Walking a packet through the chains, as Felix's endpoint chains do, and the verdict with
//! its explanation.

use std::collections::BTreeSet;
use std::fmt;
use std::net::IpAddr;

use margay_api::{
    Action, EndpointToHostAction, IcmpFields, PolicyType, Port, PortProtocol, ProtoPort,
};
use serde::Serialize;

use crate::cluster::{direction_index, Cluster, TierChain};
use crate::compile::{CompiledRule, Entity};
use crate::{Matrix, Protocol};

/// One end of a packet.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Peer {
    /// An endpoint by id, `namespace/name`.
    Endpoint(String),
    /// An address. An endpoint's address means that endpoint; any other is external.
    Ip(IpAddr),
}

/// The first packet of a connection (replies ride on conntrack, as in Felix).
///
/// What the engine assumes about what the struct does not say:
/// - A [`Transport::Ports`] packet without a `source_port` comes from an ephemeral port that
///   no `source.ports` entry matches (so every `source.notPorts` does). [`matrix`] sends
///   such packets: the real source port of a connection is not known in advance.
/// - An ICMP packet without a `code` has one no rule names: `icmp` matches that give a code
///   never match it, and `notICMP` matches that give one always do.
/// - The address family: that of a [`Peer::Ip`]; else IPv4 for ICMP and IPv6 for ICMPv6;
///   else, between two endpoints, IPv4 when both have an IPv4 address, else IPv6 when both
///   have one. With neither (endpoints whose addresses are unknown), rules tied to a family
///   by `ipVersion` or by CIDRs (`nets`, `notNets`, ipBlocks) never match.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Packet {
    pub from: Peer,
    pub to: Peer,
    pub transport: Transport,
}

/// What a packet carries above IP, as far as rules can see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Transport {
    /// TCP, UDP or SCTP to destination port `port`.
    #[serde(rename_all = "camelCase")]
    Ports {
        protocol: Protocol,
        port: u16,
        /// `None`: ephemeral and unknown (see [`Packet`]).
        #[serde(skip_serializing_if = "Option::is_none")]
        source_port: Option<u16>,
    },
    /// ICMP (IPv4) or ICMPv6, which have a type and a code instead of ports.
    Icmp(Icmp),
}

/// An ICMP or ICMPv6 message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Icmp {
    #[serde(rename = "protocol")]
    pub version: IcmpVersion,
    pub icmp_type: u8,
    /// `None`: not known (see [`Packet`]).
    #[serde(rename = "icmpCode", skip_serializing_if = "Option::is_none")]
    pub code: Option<u8>,
}

/// Which ICMP, spelled as Calico's `protocol` field spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum IcmpVersion {
    /// ICMP, IP protocol 1, IPv4 only.
    #[serde(rename = "ICMP")]
    V4,
    /// ICMPv6, IP protocol 58, IPv6 only.
    #[serde(rename = "ICMPv6")]
    V6,
}

impl IcmpVersion {
    /// The IANA protocol number.
    pub fn number(self) -> u8 {
        match self {
            IcmpVersion::V4 => 1,
            IcmpVersion::V6 => 58,
        }
    }

    /// The address family it is carried in: 4 or 6.
    pub fn family(self) -> u8 {
        match self {
            IcmpVersion::V4 => 4,
            IcmpVersion::V6 => 6,
        }
    }
}

impl fmt::Display for IcmpVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IcmpVersion::V4 => "ICMP",
            IcmpVersion::V6 => "ICMPv6",
        })
    }
}

impl Transport {
    /// The IANA protocol number, as rules compare protocols.
    pub fn protocol_number(self) -> u8 {
        match self {
            Transport::Ports { protocol, .. } => protocol.number(),
            Transport::Icmp(icmp) => icmp.version.number(),
        }
    }

    /// The address family the protocol implies: ICMP is IPv4's, ICMPv6 is IPv6's.
    pub fn family(self) -> Option<u8> {
        match self {
            Transport::Ports { .. } => None,
            Transport::Icmp(icmp) => Some(icmp.version.family()),
        }
    }
}

/// `TCP/80`, `UDP/53 (source port 5353)`, `ICMP type 8 code 0`, `ICMPv6 type 128`.
impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Transport::Ports {
                protocol,
                port,
                source_port,
            } => {
                write!(f, "{protocol}/{port}")?;
                match source_port {
                    Some(p) => write!(f, " (source port {p})"),
                    None => Ok(()),
                }
            }
            Transport::Icmp(icmp) => {
                write!(f, "{} type {}", icmp.version, icmp.icmp_type)?;
                match icmp.code {
                    Some(c) => write!(f, " code {c}"),
                    None => Ok(()),
                }
            }
        }
    }
}

/// Which kind of resource a policy came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum PolicyKind {
    /// A `networking.k8s.io/v1` NetworkPolicy, converted as Calico does.
    KubernetesNetworkPolicy,
    NetworkPolicy,
    GlobalNetworkPolicy,
}

/// A policy as Calico names it: `knp.default.allow-a` in namespace `x`, `default.my-gnp`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct PolicyRef {
    pub kind: PolicyKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub name: String,
}

/// One rule of a policy or profile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RuleRef {
    pub direction: PolicyType,
    /// Position among the policy's rules in that direction. For a Kubernetes policy this is
    /// the converted rule (one per protocol and peer); `origin` points back at the original.
    pub index: usize,
    pub action: Action,
    /// Where the rule is written, e.g. `spec.ingress[0]` or `spec.ingress[0].from[1]`.
    pub origin: String,
}

/// What decided one direction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "by", rename_all = "camelCase")]
pub enum Decision {
    /// Traffic to the endpoint's own address never leaves the pod: always allowed.
    Loopback,
    /// This end is an external address: no endpoint, no policy on this side.
    NotAnEndpoint { ip: IpAddr },
    /// No endpoint has this id: denied, as nothing could deliver it.
    UnknownEndpoint { id: String },
    /// A policy rule that allowed or denied.
    Rule {
        tier: String,
        policy: PolicyRef,
        rule: RuleRef,
    },
    /// The end of a tier with `defaultAction: Deny` ("Drop if no policies passed packet").
    TierDefault { tier: String },
    /// A profile rule that allowed or denied.
    ProfileRule { profile: String, rule: RuleRef },
    /// Profiles applied and none of their rules matched ("Drop if no profiles matched").
    NoProfileMatched,
    /// From a workload to an address of its own node: after the workload's egress policy,
    /// the node's `defaultEndpointToHostAction` decides (Felix's "Configured
    /// DefaultEndpointToHostAction" in `cali-wl-to-host`). `Return` hands the packet on to the
    /// host's other input rules: allowed, as far as Margay is concerned.
    EndpointToHost {
        node: String,
        action: EndpointToHostAction,
    },
    /// From a node to a workload on it: allowed without policy, as in Calico (the host's
    /// output path returns for workload interfaces; the workload's ingress policy applies
    /// only to traffic the node forwards to it). Both sides say so.
    FromHost { node: String },
    /// A failsafe port of the node (`failsafeInboundHostPorts` to it, or
    /// `failsafeOutboundHostPorts` from it): accepted before host endpoint policy.
    Failsafe { node: String, port: ProtoPort },
    /// VXLAN between the cluster's nodes: accepted before host endpoint policy, as the
    /// overlay must flow whatever that policy says.
    Overlay { node: String },
}

/// A step that did not decide, for `margay trace` to print.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "step", rename_all = "camelCase")]
pub enum Step {
    /// No policy of this tier selects the endpoint in this direction.
    TierSkipped { tier: String },
    /// None of the policy's rules matched: on to the next policy.
    PolicyNoMatch { tier: String, policy: PolicyRef },
    /// A Log rule matched (Felix logs with prefix `calico-packet`) and evaluation went on.
    Logged {
        tier: String,
        policy: PolicyRef,
        rule: RuleRef,
    },
    /// A Pass rule matched: on to the next tier (or the profiles after the last).
    Passed {
        tier: String,
        policy: PolicyRef,
        rule: RuleRef,
    },
    /// The tier ended without a verdict and its `defaultAction` is Pass.
    TierDefaultPass { tier: String },
    /// None of the profile's rules matched: on to the next profile.
    ProfileNoMatch { profile: String },
    /// A profile's Log rule matched.
    ProfileLogged { profile: String, rule: RuleRef },
    /// A profile's Pass rule matched: on to the next profile.
    ProfilePassed { profile: String, rule: RuleRef },
}

/// The verdict of one direction, on one endpoint's side.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DirectionVerdict {
    /// The endpoint whose policy was evaluated (the source for egress, the destination for
    /// ingress); `None` when that end is an external address.
    pub endpoint: Option<String>,
    /// The host endpoint whose policy was evaluated, by name: that end is one of its
    /// `expectedIPs`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_endpoint: Option<String>,
    pub allowed: bool,
    pub decision: Decision,
    /// What happened before the decision, in order.
    pub steps: Vec<Step>,
}

/// Whether a packet gets through, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verdict {
    /// Both directions allowed.
    pub allowed: bool,
    /// Evaluated at the source.
    pub egress: DirectionVerdict,
    /// Evaluated at the destination (even when egress already denied, so a trace shows both).
    pub ingress: DirectionVerdict,
}

/// One end of a packet, resolved.
#[derive(Debug, Clone, Copy)]
struct End {
    endpoint: Option<usize>,
    addr: Option<IpAddr>,
}

/// A packet as rules see it.
struct Context<'c> {
    cluster: &'c Cluster,
    src: End,
    dst: End,
    protocol: u8,
    /// The destination port; `None` for ICMP.
    port: Option<u16>,
    /// `None` for ICMP, or when unknown.
    source_port: Option<u16>,
    icmp: Option<Icmp>,
    /// 4 or 6, when known.
    family: Option<u8>,
}

fn family(ip: IpAddr) -> u8 {
    if ip.is_ipv4() {
        4
    } else {
        6
    }
}

/// The only family Felix renders a rule with this protocol into: ICMP rules go into the IPv4
/// chains only, ICMPv6 rules into the IPv6 ones.
fn protocol_family(protocol: u8) -> Option<u8> {
    match protocol {
        1 => Some(4),
        58 => Some(6),
        _ => None,
    }
}

/// Whether an ICMP message has what `fields` names: each given field must equal the
/// message's (a code the packet does not give equals none).
fn icmp_fields_hold(fields: IcmpFields, icmp: Icmp) -> bool {
    fields.icmp_type.is_none_or(|t| t == icmp.icmp_type)
        && fields.code.is_none_or(|c| icmp.code == Some(c))
}

impl Context<'_> {
    /// Both ends resolved: `given` is the address a [`Peer::Ip`] named.
    fn new(
        cluster: &Cluster,
        src: (Option<usize>, Option<IpAddr>),
        dst: (Option<usize>, Option<IpAddr>),
        transport: Transport,
    ) -> Context<'_> {
        let address_of = |endpoint: Option<usize>, family_wanted: u8| {
            endpoint.and_then(|i| {
                cluster.endpoints[i]
                    .ips
                    .iter()
                    .copied()
                    .find(|ip| family(*ip) == family_wanted)
            })
        };
        let fixed = src.1.or(dst.1).map(family).or(transport.family());
        let family = fixed.or_else(|| {
            [4, 6]
                .into_iter()
                .find(|f| address_of(src.0, *f).is_some() && address_of(dst.0, *f).is_some())
        });
        let end = |(endpoint, given): (Option<usize>, Option<IpAddr>)| End {
            endpoint,
            addr: given.or_else(|| family.and_then(|f| address_of(endpoint, f))),
        };
        let (port, source_port, icmp) = match transport {
            Transport::Ports {
                port, source_port, ..
            } => (Some(port), source_port, None),
            Transport::Icmp(icmp) => (None, None, Some(icmp)),
        };
        Context {
            cluster,
            src: end(src),
            dst: end(dst),
            protocol: transport.protocol_number(),
            port,
            source_port,
            icmp,
            family,
        }
    }

    fn rule_matches(&self, rule: &CompiledRule) -> bool {
        rule.family.is_none_or(|f| self.family == Some(f))
            && rule.protocol.is_none_or(|p| {
                p == self.protocol && protocol_family(p).is_none_or(|f| self.family == Some(f))
            })
            && rule.not_protocol.is_none_or(|p| p != self.protocol)
            && self.icmp_matches(rule)
            && self.entity_matches(&rule.source, self.src, self.source_port)
            && self.entity_matches(&rule.destination, self.dst, self.port)
    }

    /// `icmp`/`notICMP`, as both renderers program them: only in a rule whose protocol is
    /// ICMP or ICMPv6 (Calico's validation requires it; a rule without is left out of the
    /// dataplane, so it never matches, not even as `notICMP` on a TCP packet). `notICMP: {}`
    /// names nothing to negate: both renderers program no condition for it.
    fn icmp_matches(&self, rule: &CompiledRule) -> bool {
        if rule.icmp.is_none() && rule.not_icmp.is_none() {
            return true;
        }
        matches!(rule.protocol, Some(1 | 58))
            && self.icmp.is_some_and(|icmp| {
                rule.icmp.is_none_or(|f| icmp_fields_hold(f, icmp))
                    && rule.not_icmp.is_none_or(|f| {
                        (f.icmp_type.is_none() && f.code.is_none()) || !icmp_fields_hold(f, icmp)
                    })
            })
    }

    /// `port` is `None` when the packet has no port there (ICMP) or it is unknown (an
    /// ephemeral source port): no `ports` entry matches it, and so no `notPorts` entry
    /// excludes it. A named port is one of this end's endpoint: Calico resolves source named
    /// ports against the source endpoints as it resolves destination ones.
    fn entity_matches(&self, e: &Entity, end: End, port: Option<u16>) -> bool {
        let in_nets = |nets: &[ipnet::IpNet]| {
            end.addr
                .is_some_and(|a| nets.iter().any(|n| n.contains(&a)))
        };
        let in_set = |set: usize| {
            let set = &self.cluster.sets[set];
            end.endpoint.is_some_and(|i| set.endpoints[i]) || in_nets(&set.nets)
        };
        let port_matches = |m: &Port| match (m, port) {
            (_, None) => false,
            (Port::Named(name), Some(port)) => end.endpoint.is_some_and(|i| {
                self.cluster.endpoints[i].named_ports.iter().any(|np| {
                    np.name == *name && np.protocol.number() == self.protocol && np.port == port
                })
            }),
            (m, Some(port)) => m.contains(port),
        };
        (e.nets.is_empty() || in_nets(&e.nets))
            && !in_nets(&e.not_nets)
            && e.selector.is_none_or(in_set)
            && !e.not_selector.is_some_and(in_set)
            && (e.ports.is_empty() || e.ports.iter().any(port_matches))
            && !e.not_ports.iter().any(port_matches)
    }
}

/// What decided, by index, before it is spelled out for a [`Verdict`].
#[derive(Debug, Clone, Copy)]
enum Outcome {
    Rule { policy: usize, index: usize },
    TierDefault { tier: usize },
    ProfileRule { profile: usize, index: usize },
    NoProfileMatched,
}

/// A step by index; see [`Step`].
#[derive(Debug, Clone, Copy)]
enum RawStep {
    TierSkipped(usize),
    PolicyNoMatch(usize),
    Logged(usize, usize),
    Passed(usize, usize),
    TierDefaultPass(usize),
    ProfileNoMatch(usize),
    ProfileLogged(usize, usize),
    ProfilePassed(usize, usize),
}

/// Records steps when explaining, and costs nothing when only the verdict matters.
struct Recorder<'s>(Option<&'s mut Vec<RawStep>>);

impl Recorder<'_> {
    fn push(&mut self, step: RawStep) {
        if let Some(steps) = &mut self.0 {
            steps.push(step);
        }
    }
}

/// Evaluates one direction on `endpoint`'s side, as its Felix chain would.
fn evaluate_side(
    cx: &Context<'_>,
    endpoint: usize,
    direction: PolicyType,
    record: Recorder<'_>,
) -> (bool, Outcome) {
    let cluster = cx.cluster;
    walk(
        cx,
        &cluster.chains[endpoint][direction_index(direction)],
        &cluster.endpoint_profiles[endpoint],
        direction,
        record,
    )
}

/// Walks the tiers of `chain`, then `profiles` (indices into the cluster's), as an endpoint
/// chain does.
fn walk(
    cx: &Context<'_>,
    chain: &[TierChain],
    profiles: &[usize],
    direction: PolicyType,
    mut record: Recorder<'_>,
) -> (bool, Outcome) {
    let cluster = cx.cluster;
    let mut next_tier = 0;
    'tiers: for tier_chain in chain {
        for skipped in next_tier..tier_chain.tier {
            record.push(RawStep::TierSkipped(skipped));
        }
        next_tier = tier_chain.tier + 1;
        for &p in &tier_chain.policies {
            let rules = cluster.policies[p].rules(direction).unwrap_or_default();
            let mut decided = false;
            for (index, rule) in rules.iter().enumerate() {
                if !cx.rule_matches(rule) {
                    continue;
                }
                match rule.action {
                    Action::Allow => return (true, Outcome::Rule { policy: p, index }),
                    Action::Deny => return (false, Outcome::Rule { policy: p, index }),
                    Action::Log => record.push(RawStep::Logged(p, index)),
                    Action::Pass => {
                        record.push(RawStep::Passed(p, index));
                        decided = true;
                        break;
                    }
                }
            }
            if decided {
                continue 'tiers;
            }
            record.push(RawStep::PolicyNoMatch(p));
        }
        if cluster.tiers[tier_chain.tier].default_pass {
            record.push(RawStep::TierDefaultPass(tier_chain.tier));
        } else {
            return (
                false,
                Outcome::TierDefault {
                    tier: tier_chain.tier,
                },
            );
        }
    }
    for skipped in next_tier..cluster.tiers.len() {
        record.push(RawStep::TierSkipped(skipped));
    }
    'profiles: for &profile in profiles {
        for (index, rule) in cluster.profiles[profile]
            .rules(direction)
            .iter()
            .enumerate()
        {
            if !cx.rule_matches(rule) {
                continue;
            }
            match rule.action {
                Action::Allow => return (true, Outcome::ProfileRule { profile, index }),
                Action::Deny => return (false, Outcome::ProfileRule { profile, index }),
                Action::Log => record.push(RawStep::ProfileLogged(profile, index)),
                Action::Pass => {
                    record.push(RawStep::ProfilePassed(profile, index));
                    continue 'profiles;
                }
            }
        }
        record.push(RawStep::ProfileNoMatch(profile));
    }
    (false, Outcome::NoProfileMatched)
}

/// Resolves a peer: the endpoint index (if any) and the address it named (if any).
enum Resolved {
    Endpoint(usize, Option<IpAddr>),
    /// An address of this node: its Node resource's, or one of the `expectedIPs` of this
    /// host endpoint of it.
    Host(IpAddr, String, Option<usize>),
    External(IpAddr),
    Unknown(String),
}

impl Resolved {
    fn new(cluster: &Cluster, peer: &Peer) -> Resolved {
        match peer {
            Peer::Endpoint(id) => match cluster.endpoint_index(id) {
                Some(i) => Resolved::Endpoint(i, None),
                None => Resolved::Unknown(id.clone()),
            },
            Peer::Ip(ip) => {
                if let Some(i) = cluster.endpoint_with_ip(*ip) {
                    Resolved::Endpoint(i, Some(*ip))
                } else if let Some(h) = cluster.host_endpoint_with_ip(*ip) {
                    Resolved::Host(*ip, cluster.host_endpoints[h].node.clone(), Some(h))
                } else if let Some(node) = cluster.node_with_ip(*ip) {
                    Resolved::Host(*ip, node.to_owned(), None)
                } else {
                    Resolved::External(*ip)
                }
            }
        }
    }

    fn parts(&self) -> (Option<usize>, Option<IpAddr>) {
        match self {
            Resolved::Endpoint(i, ip) => (Some(*i), *ip),
            Resolved::Host(ip, ..) | Resolved::External(ip) => (None, Some(*ip)),
            Resolved::Unknown(_) => (None, None),
        }
    }

    /// The node of a workload endpoint, or the node an address belongs to.
    fn node<'c>(&'c self, cluster: &'c Cluster) -> Option<&'c str> {
        match self {
            Resolved::Endpoint(i, _) => cluster.endpoints[*i].node.as_deref(),
            Resolved::Host(_, node, _) => Some(node),
            Resolved::External(_) | Resolved::Unknown(_) => None,
        }
    }
}

/// What decides between a workload and its own node, where no workload ingress or host
/// endpoint policy applies: to the node, the workload's egress policy (`None` here: its own
/// side decides it) and then the node's `defaultEndpointToHostAction` (Felix's
/// `cali-wl-to-host`); from the node, nothing either way, as the host's output path returns
/// for workload interfaces (Felix's `cali-OUTPUT`). `None` for any other packet.
fn local_host_sides(
    cluster: &Cluster,
    from: &Resolved,
    to: &Resolved,
) -> Option<(Option<DirectionVerdict>, DirectionVerdict)> {
    let same_node = from.node(cluster).is_some() && from.node(cluster) == to.node(cluster);
    let verdict = |endpoint: Option<String>, allowed: bool, decision: Decision| DirectionVerdict {
        endpoint,
        host_endpoint: None,
        allowed,
        decision,
        steps: Vec::new(),
    };
    match (from, to) {
        (Resolved::Endpoint(..), Resolved::Host(_, node, _)) if same_node => {
            let action = cluster.host_settings(node).endpoint_to_host;
            let decision = Decision::EndpointToHost {
                node: node.clone(),
                action,
            };
            Some((
                None,
                verdict(None, action != EndpointToHostAction::Drop, decision),
            ))
        }
        (Resolved::Host(_, node, _), Resolved::Endpoint(i, _)) if same_node => {
            let decision = Decision::FromHost { node: node.clone() };
            Some((
                Some(verdict(None, true, decision.clone())),
                verdict(Some(cluster.endpoints[*i].id.clone()), true, decision),
            ))
        }
        _ => None,
    }
}

/// The protocol number of a failsafe port's protocol.
fn port_protocol_number(protocol: PortProtocol) -> u8 {
    match protocol {
        PortProtocol::Tcp => 6,
        PortProtocol::Udp => 17,
        PortProtocol::Sctp => 132,
    }
}

/// Evaluates one direction on host endpoint `host`'s side (the node's own traffic through
/// it), as Felix's `cali-fh-`/`cali-th-` chains do: the overlay between the nodes and the
/// failsafe ports first, then its pipeline.
fn host_side(cx: &Context<'_>, host: usize, direction: PolicyType) -> DirectionVerdict {
    let cluster = cx.cluster;
    let hep = &cluster.host_endpoints[host];
    let settings = cluster.host_settings(&hep.node);
    // The other end of the packet: where it comes from, or where it goes.
    let remote = match direction {
        PolicyType::Ingress => cx.src.addr,
        PolicyType::Egress => cx.dst.addr,
    };
    let verdict = |allowed: bool, decision: Decision, steps: Vec<Step>| DirectionVerdict {
        endpoint: None,
        host_endpoint: Some(hep.name.clone()),
        allowed,
        decision,
        steps,
    };
    let to_node = |ip: &IpAddr| cluster.nodes.values().any(|n| n.underlay.contains(ip));
    if cx.protocol == 17
        && cx.port == Some(settings.vxlan_port)
        && remote.is_some_and(|ip| to_node(&ip))
    {
        let node = hep.node.clone();
        return verdict(true, Decision::Overlay { node }, Vec::new());
    }
    let failsafe = match direction {
        PolicyType::Ingress => &settings.failsafe_inbound,
        PolicyType::Egress => &settings.failsafe_outbound,
    };
    let exempt = failsafe.iter().find(|f| {
        port_protocol_number(f.protocol) == cx.protocol
            && cx.port == Some(f.port)
            && f.net
                .is_none_or(|net| remote.is_some_and(|ip| net.contains(&ip)))
    });
    if let Some(port) = exempt {
        let decision = Decision::Failsafe {
            node: hep.node.clone(),
            port: port.clone(),
        };
        return verdict(true, decision, Vec::new());
    }
    let mut raw = Vec::new();
    let (allowed, outcome) = walk(
        cx,
        &cluster.host_chains[host][direction_index(direction)],
        &cluster.host_profiles[host],
        direction,
        Recorder(Some(&mut raw)),
    );
    let steps = raw
        .into_iter()
        .map(|s| spell_step(cluster, direction, s))
        .collect();
    verdict(allowed, spell_outcome(cluster, direction, outcome), steps)
}

/// One packet, with the full explanation of both directions.
///
/// An unknown endpoint id is denied on its side with [`Decision::UnknownEndpoint`]; callers
/// that take ids from users should check them with [`Cluster::endpoint`] first.
pub fn evaluate(cluster: &Cluster, packet: &Packet) -> Verdict {
    let from = Resolved::new(cluster, &packet.from);
    let to = Resolved::new(cluster, &packet.to);
    let cx = Context::new(cluster, from.parts(), to.parts(), packet.transport);
    let loopback =
        matches!((&from, &to), (Resolved::Endpoint(a, _), Resolved::Endpoint(b, _)) if a == b);
    let side = |end: &Resolved, direction: PolicyType| -> DirectionVerdict {
        let endpoint_id = |i: usize| Some(cluster.endpoints[i].id.clone());
        match end {
            Resolved::Endpoint(i, _) if loopback => DirectionVerdict {
                endpoint: endpoint_id(*i),
                host_endpoint: None,
                allowed: true,
                decision: Decision::Loopback,
                steps: Vec::new(),
            },
            Resolved::Endpoint(i, _) => {
                let mut raw = Vec::new();
                let (allowed, outcome) =
                    evaluate_side(&cx, *i, direction, Recorder(Some(&mut raw)));
                DirectionVerdict {
                    endpoint: endpoint_id(*i),
                    host_endpoint: None,
                    allowed,
                    decision: spell_outcome(cluster, direction, outcome),
                    steps: raw
                        .into_iter()
                        .map(|s| spell_step(cluster, direction, s))
                        .collect(),
                }
            }
            Resolved::Host(_, _, Some(h)) => host_side(&cx, *h, direction),
            Resolved::Host(ip, _, None) | Resolved::External(ip) => DirectionVerdict {
                endpoint: None,
                host_endpoint: None,
                allowed: true,
                decision: Decision::NotAnEndpoint { ip: *ip },
                steps: Vec::new(),
            },
            Resolved::Unknown(id) => DirectionVerdict {
                endpoint: None,
                host_endpoint: None,
                allowed: false,
                decision: Decision::UnknownEndpoint { id: id.clone() },
                steps: Vec::new(),
            },
        }
    };
    let (egress, ingress) = match local_host_sides(cluster, &from, &to) {
        Some((egress, ingress)) => (
            egress.unwrap_or_else(|| side(&from, PolicyType::Egress)),
            ingress,
        ),
        None => (
            side(&from, PolicyType::Egress),
            side(&to, PolicyType::Ingress),
        ),
    };
    Verdict {
        allowed: egress.allowed && ingress.allowed,
        egress,
        ingress,
    }
}

/// Every endpoint to every endpoint on one port, itself included (always allowed: traffic to
/// its own address never leaves the pod), from an unknown source port (see [`Packet`]). Ids
/// are `namespace/name`; pairs are sorted.
pub fn matrix(cluster: &Cluster, port: u16, protocol: Protocol) -> Matrix {
    let mut allowed = BTreeSet::new();
    let mut denied = BTreeSet::new();
    let n = cluster.endpoints.len();
    for from in 0..n {
        for to in 0..n {
            let ok = from == to || {
                let cx = Context::new(
                    cluster,
                    (Some(from), None),
                    (Some(to), None),
                    Transport::Ports {
                        protocol,
                        port,
                        source_port: None,
                    },
                );
                evaluate_side(&cx, from, PolicyType::Egress, Recorder(None)).0
                    && evaluate_side(&cx, to, PolicyType::Ingress, Recorder(None)).0
            };
            let pair = (
                cluster.endpoints[from].id.clone(),
                cluster.endpoints[to].id.clone(),
            );
            if ok {
                allowed.insert(pair);
            } else {
                denied.insert(pair);
            }
        }
    }
    Matrix {
        port,
        protocol,
        allowed: allowed.into_iter().collect(),
        denied: denied.into_iter().collect(),
    }
}

fn rule_ref(rule: &CompiledRule, direction: PolicyType, index: usize) -> RuleRef {
    RuleRef {
        direction,
        index,
        action: rule.action,
        origin: rule.origin.clone(),
    }
}

fn policy_rule(
    cluster: &Cluster,
    direction: PolicyType,
    policy: usize,
    index: usize,
) -> (String, crate::PolicyRef, RuleRef) {
    let p = &cluster.policies[policy];
    let rules = p.rules(direction).unwrap_or_default();
    (
        cluster.tiers[p.tier].name.clone(),
        p.reference(),
        rule_ref(&rules[index], direction, index),
    )
}

fn profile_rule(
    cluster: &Cluster,
    direction: PolicyType,
    profile: usize,
    index: usize,
) -> (String, RuleRef) {
    let p = &cluster.profiles[profile];
    (
        p.name.clone(),
        rule_ref(&p.rules(direction)[index], direction, index),
    )
}

fn spell_outcome(cluster: &Cluster, direction: PolicyType, outcome: Outcome) -> Decision {
    match outcome {
        Outcome::Rule { policy, index } => {
            let (tier, policy, rule) = policy_rule(cluster, direction, policy, index);
            Decision::Rule { tier, policy, rule }
        }
        Outcome::TierDefault { tier } => Decision::TierDefault {
            tier: cluster.tiers[tier].name.clone(),
        },
        Outcome::ProfileRule { profile, index } => {
            let (profile, rule) = profile_rule(cluster, direction, profile, index);
            Decision::ProfileRule { profile, rule }
        }
        Outcome::NoProfileMatched => Decision::NoProfileMatched,
    }
}

fn spell_step(cluster: &Cluster, direction: PolicyType, step: RawStep) -> Step {
    let tier_name = |t: usize| cluster.tiers[t].name.clone();
    match step {
        RawStep::TierSkipped(t) => Step::TierSkipped { tier: tier_name(t) },
        RawStep::PolicyNoMatch(p) => {
            let policy = &cluster.policies[p];
            Step::PolicyNoMatch {
                tier: tier_name(policy.tier),
                policy: policy.reference(),
            }
        }
        RawStep::Logged(p, index) => {
            let (tier, policy, rule) = policy_rule(cluster, direction, p, index);
            Step::Logged { tier, policy, rule }
        }
        RawStep::Passed(p, index) => {
            let (tier, policy, rule) = policy_rule(cluster, direction, p, index);
            Step::Passed { tier, policy, rule }
        }
        RawStep::TierDefaultPass(t) => Step::TierDefaultPass { tier: tier_name(t) },
        RawStep::ProfileNoMatch(p) => Step::ProfileNoMatch {
            profile: cluster.profiles[p].name.clone(),
        },
        RawStep::ProfileLogged(p, index) => {
            let (profile, rule) = profile_rule(cluster, direction, p, index);
            Step::ProfileLogged { profile, rule }
        }
        RawStep::ProfilePassed(p, index) => {
            let (profile, rule) = profile_rule(cluster, direction, p, index);
            Step::ProfilePassed { profile, rule }
        }
    }
}
