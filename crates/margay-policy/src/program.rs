//! The dataplane program of one node: what its dataplane must enforce, as plain data.
//!
//! [`program`] turns the resolved [`Cluster`] into a [`Program`], the one intermediate
//! representation every renderer (nftables now, iptables and `margay trace` later) works
//! from. It is built from the same compiled policies, peer sets and per-endpoint chains that
//! [`evaluate`](crate::evaluate) walks, so a dataplane that does what the program says
//! decides exactly as the engine predicts.
//!
//! # Shape (Felix's)
//!
//! - Each local endpoint has, per direction, a [`Pipeline`]: the tiers that have policies
//!   for it, in order, each with its policies in order and its default action, then its
//!   profiles. Ingress is enforced on the way to the endpoint (Felix's `tw-` chains), egress
//!   on the way from it (`fw-`).
//! - Each policy becomes one chain per direction ([`PolicyChain`], `pi-<hash>` inbound,
//!   `po-<hash>` outbound) and each profile one per direction ([`ProfileChain`],
//!   `pri-<name>`, `pro-<name>`), shared by every endpoint using it. A chain is a list of
//!   rules: matches, all of which must hold, and an action.
//! - The policies of one tier of a pipeline form a policy group ([`PolicyGroup`],
//!   `gi-<hash>` inbound, `go-<hash>` outbound, Felix's `cali-gi-`/`cali-go-`): one chain
//!   per distinct list of policy chains, shared by every endpoint whose tier stage lists the
//!   same policies. The endpoint chain jumps to the group once per tier; the group walks the
//!   tier's policies. Tier boundaries (clearing the pass mark, the end-of-tier drop) stay in
//!   the endpoint chain. The id is a hash of the tier and the list, so endpoints coming and
//!   going reuse groups, and a policy added to a list makes one new group chain.
//! - Rule selectors become address sets ([`IpSet`], `s-<hash>`), named ports sets of
//!   (address, protocol, port) tuples ([`PortSet`], `np-<hash>`). A set's id is a hash of
//!   its definition, so a selector used by several rules is one set, and endpoints coming and
//!   going change set members, never rules.
//! - Traffic from a local workload to the node meets the workload's egress pipeline, then
//!   [`Program::endpoint_to_host`] (Felix's `cali-wl-to-host`); traffic from the node to a
//!   local workload meets nothing.
//! - Each host endpoint of the node ([`LocalHostEndpoint`]) has four pipelines: the node's
//!   own traffic through its interface (`fh-`/`th-`: every policy selecting it, then its
//!   profiles, after the [`HostExemptions`]), and traffic the node forwards through it
//!   (`fhfw-`/`thfw-`: its `applyOnForward` policies only). Their tiers name no group.
//!
//! # Semantics
//!
//! Walking a packet through a pipeline:
//!
//! 1. For each tier: each policy chain in turn, first matching rule acting: `Allow` accepts
//!    (this direction is allowed, stop), `Deny` drops, `Pass` ends the tier (on to the next
//!    tier, or the profiles), `Log` logs and goes on to the next rule. A policy none of whose
//!    rules decided hands over to the next policy. A tier that ends without `Pass` applies its
//!    [`TierStage::default_action`]: `Deny` drops, `Pass` goes on.
//! 2. Then each profile chain: `Allow` accepts, `Deny` drops, `Pass` goes on to the next
//!    profile, `Log` logs and continues. After the last profile the packet is dropped.
//!
//! A host endpoint's forward pipelines have no profiles and no drop at their end: what their
//! tiers let through goes on, and with no tier they are not used at all.
//!
//! A rule matches when every part of its [`Matches`] holds: empty lists and `None`s do not
//! constrain. An address is in an [`IpSet`] when one of its members contains it; a packet
//! matches a [`PortMatch::Named`] set when (address, protocol, port) of that end is a member.
//! Rules for an IP version other than the packet's never match, nor do ICMP matches on
//! anything but ICMP (with protocol 1) or ICMPv6 (protocol 58).
//!
//! Ids use only `[A-Za-z0-9_.-]`, at most 64 bytes, and interface names are 1 to 15 of
//! those characters, so renderers can use both as names without quoting.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use ipnet::IpNet;
use margay_api::{
    Action, EndpointToHostAction, IcmpFields, PolicyType, Port, ProtoPort, TierDefaultAction,
    DEFAULT_INTERFACE_PREFIX,
};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::cluster::{direction_index, Cluster};
use crate::compile::{CompiledRule, Entity};
use crate::{PolicyKind, PolicyRef, Protocol};

/// Everything the dataplane of one node needs to enforce policy.
///
/// Only what the node's own endpoints use is included, but sets list their members
/// cluster-wide: a remote endpoint's address is in every set whose selector selects it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Program {
    pub node: String,
    /// The workload endpoints on this node, by host-side interface name.
    pub endpoints: BTreeMap<String, LocalEndpoint>,
    /// Policy chains by id: `pi-<hash>` (inbound) and `po-<hash>` (outbound).
    pub policies: BTreeMap<String, PolicyChain>,
    /// Policy groups by id: `gi-<hash>` (inbound) and `go-<hash>` (outbound), each the
    /// policies of one tier stage shared by the endpoints listing them.
    pub groups: BTreeMap<String, PolicyGroup>,
    /// Profile chains by id: `pri-<name>` (inbound) and `pro-<name>` (outbound).
    pub profiles: BTreeMap<String, ProfileChain>,
    /// Address sets by id, `s-<hash>`.
    pub ip_sets: BTreeMap<String, IpSet>,
    /// Named-port sets by id, `np-<hash>`.
    pub port_sets: BTreeMap<String, PortSet>,
    /// Endpoints of this node that are not programmed, by id, with the reason: no
    /// interface (no WorkloadEndpoint yet), an unusable interface name, or an interface
    /// another endpoint already has. Their traffic meets no endpoint chain; dataplanes drop
    /// it as coming from (or going to) an unknown workload interface. Host endpoints that
    /// are not programmed (`HostEndpoint <name>`: an unusable interface name, a workload's
    /// interface, or one another host endpoint already has) leave their interface unpoliced.
    pub skipped: BTreeMap<String, String>,
    /// What happens to traffic from a local workload to this node, after the workload's
    /// egress policy (the node's `defaultEndpointToHostAction`, Felix's `cali-wl-to-host`):
    /// `Drop`, `Accept`, or `Return` (on to the rest of the host's input rules). Traffic from
    /// this node to a local workload is not policed, as in Calico.
    pub endpoint_to_host: EndpointToHostAction,
    /// This node's host endpoints, by interface: traffic to and from the node through the
    /// interface meets their `ingress` and `egress` pipelines (after [`HostExemptions`]),
    /// traffic the node forwards through it their `forward_ingress` and `forward_egress`.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub host_endpoints: BTreeMap<String, LocalHostEndpoint>,
    /// What comes before host endpoint policy; `Some` exactly when there are host
    /// endpoints (nothing else uses it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exemptions: Option<HostExemptions>,
}

/// The id of the address set of the cluster's nodes (their Node resources' addresses), which
/// [`HostExemptions`] use. Present only with host endpoints.
pub const HOSTS_SET: &str = "all-hosts";

/// What crosses a host endpoint without meeting its policy, as in Felix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HostExemptions {
    /// `failsafeInboundHostPorts`: packets to these ports (from `net`, when given) are
    /// accepted before host endpoint ingress policy (Felix's `cali-failsafe-in`).
    pub failsafe_inbound: Vec<ProtoPort>,
    /// `failsafeOutboundHostPorts`: packets to these ports (at `net`, when given) are
    /// accepted before host endpoint egress policy (`cali-failsafe-out`).
    pub failsafe_outbound: Vec<ProtoPort>,
    /// VXLAN (UDP to this port) and IPIP from and to the addresses of [`HOSTS_SET`], the
    /// overlay between the nodes, are accepted before host endpoint policy (Felix's "Allow
    /// VXLAN packets from/to other hosts").
    pub vxlan_port: u16,
}

/// A host endpoint of this node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LocalHostEndpoint {
    /// The HostEndpoint's name.
    pub name: String,
    pub ips: Vec<IpAddr>,
    /// To the node through the interface (Felix's `cali-fh-`): every policy selecting it,
    /// then its profiles; with neither, everything is dropped.
    pub ingress: Pipeline,
    /// From the node through the interface (`cali-th-`).
    pub egress: Pipeline,
    /// Forwarded in through the interface (`cali-fhfw-`): only the `applyOnForward`
    /// policies, no profiles; with no tier, the chain is not used (forwarded traffic is
    /// allowed), and after its tiers the packet goes on.
    pub forward_ingress: Pipeline,
    /// Forwarded out through the interface (`cali-thfw-`), likewise.
    pub forward_egress: Pipeline,
}

impl Program {
    /// The program of node `node` with nothing in it.
    pub fn empty(node: &str) -> Program {
        Program {
            node: node.to_owned(),
            endpoints: BTreeMap::new(),
            policies: BTreeMap::new(),
            groups: BTreeMap::new(),
            profiles: BTreeMap::new(),
            ip_sets: BTreeMap::new(),
            port_sets: BTreeMap::new(),
            skipped: BTreeMap::new(),
            endpoint_to_host: EndpointToHostAction::default(),
            host_endpoints: BTreeMap::new(),
            exemptions: None,
        }
    }

    /// This program with the ids of its new policy groups replaced, where it can, by those
    /// of `previous`'s groups that are going away: a group of `previous` whose endpoints all
    /// move to one new group (a policy added to or removed from the policies they share)
    /// lends that group its id. The group's chain is then rewritten in place, and the chains
    /// of its endpoints, which name it, stay as they are: one chain rewritten instead of one
    /// per endpoint. A new group takes the id of the going group it shares the most users
    /// with, when all its users were that group's; ids are only names, so what the program
    /// enforces does not change.
    pub fn reusing_groups(mut self, previous: &Program) -> Program {
        let users = |program: &Program| {
            let mut users: BTreeMap<String, BTreeSet<(String, bool)>> = BTreeMap::new();
            for (iface, ep) in &program.endpoints {
                for (pipeline, ingress) in [(&ep.ingress, true), (&ep.egress, false)] {
                    for group in pipeline.tiers.iter().filter_map(|t| t.group.as_ref()) {
                        users
                            .entry(group.clone())
                            .or_default()
                            .insert((iface.clone(), ingress));
                    }
                }
            }
            users
        };
        let (old_users, new_users) = (users(previous), users(&self));
        let mut going: BTreeMap<&String, &BTreeSet<(String, bool)>> = old_users
            .iter()
            .filter(|(id, _)| previous.groups.contains_key(*id) && !self.groups.contains_key(*id))
            .collect();
        let mut arriving: Vec<(&String, &BTreeSet<(String, bool)>)> = new_users
            .iter()
            .filter(|(id, _)| self.groups.contains_key(*id) && !previous.groups.contains_key(*id))
            .collect();
        // The largest first, so that the group most endpoints move to keeps the name.
        arriving.sort_by_key(|(id, users)| (std::cmp::Reverse(users.len()), *id));
        let mut renames: HashMap<String, String> = HashMap::new();
        for (id, users) in arriving {
            let lender = going
                .iter()
                .find(|(_, had)| users.is_subset(had))
                .map(|(old, _)| (*old).clone());
            if let Some(old) = lender {
                going.remove(&old);
                renames.insert(id.clone(), old);
            }
        }
        if renames.is_empty() {
            return self;
        }
        for (id, old) in &renames {
            if let Some(group) = self.groups.remove(id) {
                self.groups.insert(old.clone(), group);
            }
        }
        for ep in self.endpoints.values_mut() {
            for pipeline in [&mut ep.ingress, &mut ep.egress] {
                for stage in &mut pipeline.tiers {
                    if let Some(old) = stage.group.as_ref().and_then(|g| renames.get(g)) {
                        stage.group = Some(old.clone());
                    }
                }
            }
        }
        self
    }

    /// The program as the dataplane of one IP version (4 or 6) enforces it: the whole
    /// program when the node has host endpoints or some local endpoint has an address of
    /// that version, and otherwise the
    /// program with no endpoints, chains or sets, whose dataplane drops every packet of that
    /// version from or to a workload interface (as from or to an unknown one). Such packets
    /// can only be spoofed or link-local: no local workload has an address to send from or
    /// to receive at. This keeps an IPv4-only node from loading (and, on every change,
    /// rewriting) a second copy of every chain for a family it has no traffic in.
    pub fn for_family(&self, version: u8) -> Cow<'_, Program> {
        // Host endpoints police both families whatever the workloads' addresses.
        let in_use = !self.host_endpoints.is_empty()
            || self.endpoints.values().any(|ep| {
                ep.ips
                    .iter()
                    .any(|ip| matches!((ip, version), (IpAddr::V4(_), 4) | (IpAddr::V6(_), 6)))
            });
        if in_use {
            return Cow::Borrowed(self);
        }
        Cow::Owned(Program {
            skipped: self.skipped.clone(),
            endpoint_to_host: self.endpoint_to_host,
            ..Program::empty(&self.node)
        })
    }
}

/// A workload endpoint on this node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LocalEndpoint {
    /// `namespace/name`.
    pub id: String,
    pub ips: Vec<IpAddr>,
    /// Enforced on packets to the endpoint.
    pub ingress: Pipeline,
    /// Enforced on packets from the endpoint.
    pub egress: Pipeline,
}

/// What one direction of one endpoint goes through, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Pipeline {
    /// Only the tiers with at least one policy for this endpoint and direction.
    pub tiers: Vec<TierStage>,
    /// Profile chain ids.
    pub profiles: Vec<String>,
}

/// One tier of a pipeline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TierStage {
    pub tier: String,
    /// What happens when no policy of the tier decided and none passed.
    pub default_action: TierDefaultAction,
    /// Policy chain ids, in order.
    pub policies: Vec<String>,
    /// The [`PolicyGroup`] holding [`policies`](Self::policies), which the endpoint chain
    /// jumps to in their place. `None` (or an id the program lacks): the endpoint chain
    /// jumps to each policy chain itself; the verdicts are the same.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
}

/// The policies of one tier stage, shared by every endpoint (and direction) listing exactly
/// these: the group chain jumps to each in turn while no policy passed, returning as soon as
/// one accepted. It never drops by itself; the end of the tier is the endpoint chain's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyGroup {
    pub tier: String,
    pub direction: PolicyType,
    /// Policy chain ids, in order.
    pub policies: Vec<String>,
}

/// One policy's rules for one direction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyChain {
    pub tier: String,
    pub policy: PolicyRef,
    pub direction: PolicyType,
    pub rules: Vec<ProgramRule>,
}

/// One profile's rules for one direction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProfileChain {
    pub profile: String,
    pub direction: PolicyType,
    pub rules: Vec<ProgramRule>,
}

/// One rule: when all its matches hold, its action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProgramRule {
    /// Position among its policy's (or profile's) rules in this direction, as in
    /// [`RuleRef::index`](crate::RuleRef::index).
    pub index: usize,
    pub action: Action,
    /// Names the tier, policy (or profile), direction, index and where the rule is written,
    /// e.g. `tier default policy x/knp.default.web ingress rule 0: spec.ingress[0].from[0]`.
    pub comment: String,
    pub matches: Matches,
}

/// The conditions of a rule. All must hold; empty lists and `None`s match everything.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Matches {
    /// 4 or 6: from `ipVersion`, or implied by the rule's CIDRs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip_version: Option<u8>,
    /// IP protocol number.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_protocol: Option<u8>,
    /// ICMP (protocol 1) or ICMPv6 (protocol 58) type and code; never matches other
    /// protocols.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub icmp: Option<IcmpFields>,
    /// Matches ICMP packets that do not have this type (and code, if given).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_icmp: Option<IcmpFields>,
    pub source: EndMatch,
    pub destination: EndMatch,
}

/// The conditions on one end (source or destination) of a packet.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EndMatch {
    /// The address is in one of these.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub nets: Vec<IpNet>,
    /// The address is in none of these.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_nets: Vec<IpNet>,
    /// The address is in this [`IpSet`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip_set: Option<String>,
    /// The address is not in this [`IpSet`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_ip_set: Option<String>,
    /// The port matches one of these.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortMatch>,
    /// The port matches none of these.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_ports: Vec<PortMatch>,
}

/// A port condition on one end of a packet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum PortMatch {
    Number(u16),
    /// Inclusive.
    Range(u16, u16),
    /// (address, protocol, port) of this end is in the [`PortSet`] with this id.
    Named(String),
}

/// The addresses a rule selector stands for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct IpSet {
    /// The definition: the rule's selector with its namespace, service account and
    /// namespace-selector scoping folded in, in canonical form.
    pub selector: String,
    /// The addresses (as /32 or /128) of every endpoint in the cluster it selects, and the
    /// nets of the network sets it selects.
    pub members: BTreeSet<IpNet>,
}

/// What a named port stands for on the endpoints a rule end selects.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PortSet {
    /// The port name.
    pub port: String,
    /// The selector of the rule end (as in [`IpSet::selector`]); `None` when the end has no
    /// selector, so every endpoint counts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// For every endpoint in the cluster with a port of that name, each of its addresses
    /// that the selector covers (the endpoint is selected, or the address is in a selected
    /// network set) with that port's protocol and number.
    pub members: BTreeSet<PortSetMember>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct PortSetMember {
    pub ip: IpAddr,
    pub protocol: Protocol,
    pub port: u16,
}

/// The longest id; longer names are shortened with a hash, as Felix does.
const MAX_ID: usize = 64;
/// The hex digits of a hash in an id (64 bits).
const HASH_DIGITS: usize = 16;
/// Linux's limit on interface names (IFNAMSIZ less the NUL).
const MAX_INTERFACE: usize = 15;

/// The program of node `node`: its endpoints (those whose endpoint names this node and an
/// interface), their pipelines, and the chains and sets these use.
pub fn program(cluster: &Cluster, node: &str) -> Program {
    let mut builder = Builder {
        cluster,
        program: Program {
            endpoint_to_host: cluster.host_settings(node).endpoint_to_host,
            ..Program::empty(node)
        },
        policy_ids: vec![[None, None]; cluster.policies.len()],
        group_ids: HashMap::new(),
        ip_set_ids: HashMap::new(),
        port_set_ids: HashMap::new(),
    };
    // Endpoints are sorted by id, so the first of two claiming an interface is stable.
    for (i, ep) in cluster.endpoints.iter().enumerate() {
        if ep.node.as_deref() != Some(node) {
            continue;
        }
        let skip = |why: String| (ep.id.clone(), why);
        let skipped = match &ep.interface {
            None => Some(skip(
                "no interface (no WorkloadEndpoint for it yet)".to_owned(),
            )),
            Some(iface) if !plain_interface(iface) => Some(skip(format!(
                "interface name {iface:?} is not 1 to {MAX_INTERFACE} characters of \
                 [A-Za-z0-9_.-]"
            ))),
            Some(iface) => match builder.program.endpoints.get(iface) {
                Some(other) => Some(skip(format!(
                    "interface {iface} already belongs to {}",
                    other.id
                ))),
                None => {
                    let local = LocalEndpoint {
                        id: ep.id.clone(),
                        ips: ep.ips.clone(),
                        ingress: builder.pipeline(i, PolicyType::Ingress),
                        egress: builder.pipeline(i, PolicyType::Egress),
                    };
                    builder.program.endpoints.insert(iface.clone(), local);
                    None
                }
            },
        };
        if let Some((id, why)) = skipped {
            builder.program.skipped.insert(id, why);
        }
    }
    for (i, hep) in cluster.host_endpoints.iter().enumerate() {
        if hep.node != node {
            continue;
        }
        let iface = &hep.interface;
        let why = if !plain_interface(iface) {
            Some(format!(
                "interface name {iface:?} is not 1 to {MAX_INTERFACE} characters of \
                 [A-Za-z0-9_.-]"
            ))
        } else if iface.starts_with(DEFAULT_INTERFACE_PREFIX)
            || builder.program.endpoints.contains_key(iface)
        {
            Some(format!("interface {iface} is a workload interface"))
        } else {
            builder.program.host_endpoints.get(iface).map(|other| {
                format!(
                    "interface {iface} already belongs to HostEndpoint {}",
                    other.name
                )
            })
        };
        if let Some(why) = why {
            builder
                .program
                .skipped
                .insert(format!("HostEndpoint {}", hep.name), why);
            continue;
        }
        let local = LocalHostEndpoint {
            name: hep.name.clone(),
            ips: hep.ips.clone(),
            ingress: builder.host_pipeline(i, PolicyType::Ingress, false),
            egress: builder.host_pipeline(i, PolicyType::Egress, false),
            forward_ingress: builder.host_pipeline(i, PolicyType::Ingress, true),
            forward_egress: builder.host_pipeline(i, PolicyType::Egress, true),
        };
        builder.program.host_endpoints.insert(iface.clone(), local);
    }
    if !builder.program.host_endpoints.is_empty() {
        let settings = cluster.host_settings(node);
        builder.program.exemptions = Some(HostExemptions {
            failsafe_inbound: settings.failsafe_inbound,
            failsafe_outbound: settings.failsafe_outbound,
            vxlan_port: settings.vxlan_port,
        });
        let members = cluster
            .nodes
            .values()
            .flat_map(|n| n.underlay.iter().map(|ip| IpNet::from(*ip)))
            .collect();
        builder.program.ip_sets.insert(
            HOSTS_SET.to_owned(),
            IpSet {
                selector: "the cluster's nodes".to_owned(),
                members,
            },
        );
    }
    builder.program
}

fn plain_interface(name: &str) -> bool {
    (1..=MAX_INTERFACE).contains(&name.len()) && name.bytes().all(plain_byte)
}

fn plain_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-')
}

/// The first 64 bits of SHA-256 of `text`, in hex.
fn hash(text: &str) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let digest = Sha256::digest(text.as_bytes());
    let mut hex = String::with_capacity(HASH_DIGITS);
    for b in &digest[..HASH_DIGITS / 2] {
        hex.push(char::from(DIGITS[usize::from(b >> 4)]));
        hex.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    hex
}

/// `prefix` + `name` when that is a short plain id, else `prefix` + `_` + a hash of `name`.
fn named_id(prefix: &str, name: &str) -> String {
    let id = format!("{prefix}{name}");
    if id.len() <= MAX_ID && name.bytes().all(plain_byte) {
        id
    } else {
        format!("{prefix}_{}", hash(name))
    }
}

fn kind_name(kind: PolicyKind) -> &'static str {
    match kind {
        PolicyKind::KubernetesNetworkPolicy => "KubernetesNetworkPolicy",
        PolicyKind::NetworkPolicy => "NetworkPolicy",
        PolicyKind::GlobalNetworkPolicy => "GlobalNetworkPolicy",
    }
}

fn direction_name(direction: PolicyType) -> &'static str {
    match direction {
        PolicyType::Ingress => "ingress",
        PolicyType::Egress => "egress",
    }
}

/// How rule comments name a policy: `namespace/name`, or the name of a global one.
fn policy_display(policy: &PolicyRef) -> String {
    match &policy.namespace {
        Some(ns) => format!("{ns}/{}", policy.name),
        None => policy.name.clone(),
    }
}

struct Builder<'c> {
    cluster: &'c Cluster,
    program: Program,
    /// Policy index → its chain ids, `[ingress, egress]`, once made.
    policy_ids: Vec<[Option<String>; 2]>,
    /// (direction index, tier index, policy indices) → PolicyGroup id.
    group_ids: HashMap<(usize, usize, Vec<usize>), String>,
    /// Peer set index → IpSet id.
    ip_set_ids: HashMap<usize, String>,
    /// (peer set index of the rule end, port name) → PortSet id.
    port_set_ids: HashMap<(Option<usize>, String), String>,
}

impl Builder<'_> {
    fn pipeline(&mut self, endpoint: usize, direction: PolicyType) -> Pipeline {
        let cluster = self.cluster;
        Pipeline {
            tiers: self.tiers(
                &cluster.chains[endpoint][direction_index(direction)],
                direction,
                true,
            ),
            profiles: self.profiles(&cluster.endpoint_profiles[endpoint], direction),
        }
    }

    /// A host endpoint's pipeline: for traffic to or from the node, or with `forward`, for
    /// traffic it forwards (the `applyOnForward` policies, no profiles). Its tiers name no
    /// group: a host endpoint chain jumps to its policies itself.
    fn host_pipeline(&mut self, host: usize, direction: PolicyType, forward: bool) -> Pipeline {
        let cluster = self.cluster;
        let chains = if forward {
            &cluster.host_forward_chains[host]
        } else {
            &cluster.host_chains[host]
        };
        Pipeline {
            tiers: self.tiers(&chains[direction_index(direction)], direction, false),
            profiles: if forward {
                Vec::new()
            } else {
                self.profiles(&cluster.host_profiles[host], direction)
            },
        }
    }

    fn profiles(&mut self, profiles: &[usize], direction: PolicyType) -> Vec<String> {
        profiles
            .iter()
            .map(|&p| self.profile(p, direction))
            .collect()
    }

    fn tiers(
        &mut self,
        chains: &[crate::cluster::TierChain],
        direction: PolicyType,
        grouped: bool,
    ) -> Vec<TierStage> {
        let cluster = self.cluster;
        chains
            .iter()
            .map(|chain| {
                let tier = cluster.tiers[chain.tier].name.clone();
                let policies: Vec<String> = chain
                    .policies
                    .iter()
                    .map(|&p| self.policy(p, direction))
                    .collect();
                let key = (
                    direction_index(direction),
                    chain.tier,
                    chain.policies.clone(),
                );
                let group = match self.group_ids.get(&key) {
                    _ if !grouped => None,
                    Some(id) => Some(id.clone()),
                    None => {
                        let id = self.group(&tier, &policies, direction);
                        self.group_ids.insert(key, id.clone());
                        Some(id)
                    }
                };
                TierStage {
                    tier,
                    default_action: if cluster.tiers[chain.tier].default_pass {
                        TierDefaultAction::Pass
                    } else {
                        TierDefaultAction::Deny
                    },
                    policies,
                    group,
                }
            })
            .collect()
    }

    /// The id of the group of `policies` (of tier `tier`), made if new.
    fn group(&mut self, tier: &str, policies: &[String], direction: PolicyType) -> String {
        let prefix = match direction {
            PolicyType::Ingress => "gi-",
            PolicyType::Egress => "go-",
        };
        let mut key = String::with_capacity(tier.len() + policies.len() * 20);
        key.push_str(tier);
        for id in policies {
            key.push('\n');
            key.push_str(id);
        }
        let id = format!("{prefix}{}", hash(&key));
        if !self.program.groups.contains_key(&id) {
            self.program.groups.insert(
                id.clone(),
                PolicyGroup {
                    tier: tier.to_owned(),
                    direction,
                    policies: policies.to_vec(),
                },
            );
        }
        id
    }

    fn policy(&mut self, index: usize, direction: PolicyType) -> String {
        if let Some(id) = &self.policy_ids[index][direction_index(direction)] {
            return id.clone();
        }
        let cluster = self.cluster;
        let policy = &cluster.policies[index];
        let prefix = match direction {
            PolicyType::Ingress => "pi-",
            PolicyType::Egress => "po-",
        };
        let key = format!(
            "{}/{}/{}",
            kind_name(policy.kind),
            policy.namespace.as_deref().unwrap_or_default(),
            policy.name
        );
        let id = format!("{prefix}{}", hash(&key));
        self.policy_ids[index][direction_index(direction)] = Some(id.clone());
        if !self.program.policies.contains_key(&id) {
            let tier = cluster.tiers[policy.tier].name.clone();
            let reference = policy.reference();
            let owner = format!("tier {tier} policy {}", policy_display(&reference));
            let rules = policy.rules(direction).unwrap_or_default();
            let rules = self.rules(rules, direction, &owner);
            self.program.policies.insert(
                id.clone(),
                PolicyChain {
                    tier,
                    policy: reference,
                    direction,
                    rules,
                },
            );
        }
        id
    }

    fn profile(&mut self, index: usize, direction: PolicyType) -> String {
        let profile = &self.cluster.profiles[index];
        let prefix = match direction {
            PolicyType::Ingress => "pri-",
            PolicyType::Egress => "pro-",
        };
        let id = named_id(prefix, &profile.name);
        if !self.program.profiles.contains_key(&id) {
            let owner = format!("profile {}", profile.name);
            let rules = self.rules(profile.rules(direction), direction, &owner);
            self.program.profiles.insert(
                id.clone(),
                ProfileChain {
                    profile: profile.name.clone(),
                    direction,
                    rules,
                },
            );
        }
        id
    }

    fn rules(
        &mut self,
        rules: &[CompiledRule],
        direction: PolicyType,
        owner: &str,
    ) -> Vec<ProgramRule> {
        rules
            .iter()
            .enumerate()
            .map(|(index, rule)| ProgramRule {
                index,
                action: rule.action,
                comment: format!(
                    "{owner} {} rule {index}: {}",
                    direction_name(direction),
                    rule.origin
                ),
                matches: Matches {
                    ip_version: rule.family,
                    protocol: rule.protocol,
                    not_protocol: rule.not_protocol,
                    icmp: rule.icmp,
                    not_icmp: rule.not_icmp,
                    source: self.end(&rule.source),
                    destination: self.end(&rule.destination),
                },
            })
            .collect()
    }

    fn end(&mut self, entity: &Entity) -> EndMatch {
        let mut ports = |list: &[Port]| -> Vec<PortMatch> {
            list.iter()
                .map(|port| match port {
                    Port::Number(n) => PortMatch::Number(*n),
                    Port::Range(lo, hi) => PortMatch::Range(*lo, *hi),
                    Port::Named(name) => PortMatch::Named(self.port_set(entity.selector, name)),
                })
                .collect()
        };
        let (ports, not_ports) = (ports(&entity.ports), ports(&entity.not_ports));
        EndMatch {
            nets: entity.nets.clone(),
            not_nets: entity.not_nets.clone(),
            ip_set: entity.selector.map(|s| self.ip_set(s)),
            not_ip_set: entity.not_selector.map(|s| self.ip_set(s)),
            ports,
            not_ports,
        }
    }

    fn ip_set(&mut self, set: usize) -> String {
        if let Some(id) = self.ip_set_ids.get(&set) {
            return id.clone();
        }
        let cluster = self.cluster;
        let peers = &cluster.sets[set];
        let id = format!("s-{}", hash(&peers.selector));
        let members = cluster
            .endpoints
            .iter()
            .zip(&peers.endpoints)
            .filter(|(_, selected)| **selected)
            .flat_map(|(ep, _)| ep.ips.iter().map(|ip| IpNet::from(*ip)))
            .chain(peers.nets.iter().copied())
            .collect();
        self.program.ip_sets.insert(
            id.clone(),
            IpSet {
                selector: peers.selector.clone(),
                members,
            },
        );
        self.ip_set_ids.insert(set, id.clone());
        id
    }

    /// Mirrors the engine: a named port matches when the endpoint at that end has a port of
    /// that name, protocol and number; the end's selector (checked by its own set) is folded
    /// in only to keep the set small, address by address exactly as the selector's set
    /// covers them.
    fn port_set(&mut self, selector: Option<usize>, name: &str) -> String {
        let key = (selector, name.to_owned());
        if let Some(id) = self.port_set_ids.get(&key) {
            return id.clone();
        }
        let cluster = self.cluster;
        let peers = selector.map(|s| &cluster.sets[s]);
        let definition = format!(
            "port {name} of {}",
            peers.map_or("any endpoint", |p| p.selector.as_str())
        );
        let id = format!("np-{}", hash(&definition));
        let mut members = BTreeSet::new();
        for (i, ep) in cluster.endpoints.iter().enumerate() {
            for np in ep.named_ports.iter().filter(|np| np.name == name) {
                for ip in &ep.ips {
                    let covered = peers.is_none_or(|p| {
                        p.endpoints[i] || p.nets.iter().any(|net| net.contains(ip))
                    });
                    if covered {
                        members.insert(PortSetMember {
                            ip: *ip,
                            protocol: np.protocol,
                            port: np.port,
                        });
                    }
                }
            }
        }
        self.program.port_sets.insert(
            id.clone(),
            PortSet {
                port: name.to_owned(),
                selector: peers.map(|p| p.selector.clone()),
                members,
            },
        );
        self.port_set_ids.insert(key, id.clone());
        id
    }
}

#[cfg(test)]
mod tests;
