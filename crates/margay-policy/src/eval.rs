//! Walking a packet through the chains, as Felix's endpoint chains do, and the verdict with
//! its explanation.

use std::collections::BTreeSet;
use std::net::IpAddr;

use margay_api::{Action, PolicyType, Port};
use serde::Serialize;

use crate::cluster::{direction_index, Cluster};
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
/// - `port` is the destination port. The source port is an ephemeral one that no
///   `source.ports` entry matches (so every `source.notPorts` does).
/// - Packets are TCP, UDP or SCTP, so rules matching `icmp`/`notICMP` (which need protocol
///   ICMP) never match them.
/// - The address family: that of an [`Peer::Ip`]; between two endpoints, IPv4 when both have
///   an IPv4 address, else IPv6 when both have one. With neither (endpoints whose addresses
///   are unknown), rules tied to a family by `ipVersion` or by CIDRs (`nets`, `notNets`,
///   ipBlocks) never match.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Packet {
    pub from: Peer,
    pub to: Peer,
    pub protocol: Protocol,
    pub port: u16,
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
    port: u16,
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

impl Context<'_> {
    /// Both ends resolved: `given` is the address a [`Peer::Ip`] named.
    fn new(
        cluster: &Cluster,
        src: (Option<usize>, Option<IpAddr>),
        dst: (Option<usize>, Option<IpAddr>),
        protocol: Protocol,
        port: u16,
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
        let fixed = src.1.or(dst.1).map(family);
        let family = fixed.or_else(|| {
            [4, 6]
                .into_iter()
                .find(|f| address_of(src.0, *f).is_some() && address_of(dst.0, *f).is_some())
        });
        let end = |(endpoint, given): (Option<usize>, Option<IpAddr>)| End {
            endpoint,
            addr: given.or_else(|| family.and_then(|f| address_of(endpoint, f))),
        };
        Context {
            cluster,
            src: end(src),
            dst: end(dst),
            protocol: protocol.number(),
            port,
            family,
        }
    }

    fn rule_matches(&self, rule: &CompiledRule) -> bool {
        rule.icmp.is_none()
            && rule.not_icmp.is_none()
            && rule.family.is_none_or(|f| self.family == Some(f))
            && rule.protocol.is_none_or(|p| p == self.protocol)
            && rule.not_protocol.is_none_or(|p| p != self.protocol)
            && self.entity_matches(&rule.source, self.src, None)
            && self.entity_matches(&rule.destination, self.dst, Some(self.port))
    }

    /// `port` is `None` for the source end, whose (ephemeral) port no rule names.
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
    mut record: Recorder<'_>,
) -> (bool, Outcome) {
    let cluster = cx.cluster;
    let chain = &cluster.chains[endpoint][direction_index(direction)];
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
    'profiles: for &profile in &cluster.endpoint_profiles[endpoint] {
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
            Peer::Ip(ip) => match cluster.endpoint_with_ip(*ip) {
                Some(i) => Resolved::Endpoint(i, Some(*ip)),
                None => Resolved::External(*ip),
            },
        }
    }

    fn parts(&self) -> (Option<usize>, Option<IpAddr>) {
        match self {
            Resolved::Endpoint(i, ip) => (Some(*i), *ip),
            Resolved::External(ip) => (None, Some(*ip)),
            Resolved::Unknown(_) => (None, None),
        }
    }
}

/// One packet, with the full explanation of both directions.
///
/// An unknown endpoint id is denied on its side with [`Decision::UnknownEndpoint`]; callers
/// that take ids from users should check them with [`Cluster::endpoint`] first.
pub fn evaluate(cluster: &Cluster, packet: &Packet) -> Verdict {
    let from = Resolved::new(cluster, &packet.from);
    let to = Resolved::new(cluster, &packet.to);
    let cx = Context::new(
        cluster,
        from.parts(),
        to.parts(),
        packet.protocol,
        packet.port,
    );
    let loopback =
        matches!((&from, &to), (Resolved::Endpoint(a, _), Resolved::Endpoint(b, _)) if a == b);
    let side = |end: &Resolved, direction: PolicyType| -> DirectionVerdict {
        let endpoint_id = |i: usize| Some(cluster.endpoints[i].id.clone());
        match end {
            Resolved::Endpoint(i, _) if loopback => DirectionVerdict {
                endpoint: endpoint_id(*i),
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
                    allowed,
                    decision: spell_outcome(cluster, direction, outcome),
                    steps: raw
                        .into_iter()
                        .map(|s| spell_step(cluster, direction, s))
                        .collect(),
                }
            }
            Resolved::External(ip) => DirectionVerdict {
                endpoint: None,
                allowed: true,
                decision: Decision::NotAnEndpoint { ip: *ip },
                steps: Vec::new(),
            },
            Resolved::Unknown(id) => DirectionVerdict {
                endpoint: None,
                allowed: false,
                decision: Decision::UnknownEndpoint { id: id.clone() },
                steps: Vec::new(),
            },
        }
    };
    let egress = side(&from, PolicyType::Egress);
    let ingress = side(&to, PolicyType::Ingress);
    Verdict {
        allowed: egress.allowed && ingress.allowed,
        egress,
        ingress,
    }
}

/// Every endpoint to every endpoint on one port, itself included (always allowed: traffic to
/// its own address never leaves the pod). Ids are `namespace/name`; pairs are sorted.
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
                    protocol,
                    port,
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
