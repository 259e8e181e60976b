//! Network policy in nftables: a node's [`Program`] rendered as Margay's policy table,
//! `table ip margay-policy` (and `table ip6 margay-policy`).
//!
//! # Why a table of its own
//!
//! The node agent's `table ip margay` (NAT, overlay protection) is replaced whole by its
//! [`Applier`](crate::Applier) whenever the node's rules change. Policy changes far more
//! often, and most changes are only set members (a pod starting elsewhere in the cluster),
//! which [`set_updates`] applies in place, keeping counters and never re-reading rules. A
//! separate table lets each be applied on its own terms, and deleting one never touches the
//! other.
//!
//! # Layout (Felix's, in nftables)
//!
//! ```text
//! chain forward            filter hook forward: established/related accept, invalid drop,
//!                          [iifname vmap @from-hep-fw,] jump from-wl-dispatch,
//!                          jump to-wl-dispatch[, oifname vmap @to-hep-fw]
//! chain input              filter hook input: established/related accept, mgy* goto
//!                          wl-to-host[; the overlay between the nodes accepted,
//!                          iifname vmap @from-hep (jump fh-<iface>)]
//! chain output             filter hook output: mgy* return (not policed)[; established/
//!                          related and the overlay accepted, oifname vmap @to-hep]
//! chain wl-to-host         invalid drop, (IPv6) ICMPv6 the host must answer accepted, jump
//!                          from-wl-dispatch, then defaultEndpointToHostAction
//! chain from-wl-dispatch   iifname vmap @from-wl (goto fw-<iface>); other mgy* interfaces drop
//! chain to-wl-dispatch     oifname vmap @to-wl (goto tw-<iface>); other mgy* interfaces drop
//! chain fw-<iface>         the endpoint's egress pipeline
//! chain tw-<iface>         the endpoint's ingress pipeline
//! chain fh-<iface>, th-<iface>    a host endpoint: invalid drop, jump failsafe-in (-out),
//!                                 its pipeline
//! chain fhfw-<iface>, thfw-<iface>   its applyOnForward tiers, for forwarded traffic
//! chain failsafe-in, failsafe-out    accept the failsafe ports
//! chain gi-<hash>, go-<hash>   policy groups: one tier's policies, shared by endpoints
//! chain pi-<hash>, po-<hash>, pri-<name>, pro-<name>   policy and profile rules
//! set s-<hash>             addresses (flags interval); np-<hash>: address . protocol . port;
//!                          all-hosts: the nodes' addresses
//! ```
//!
//! The parts in brackets exist only with host endpoints.
//!
//! An endpoint chain walks its pipeline exactly as Felix's does: clear the accept and pass
//! marks; per tier, clear the pass mark, jump to each policy chain while the pass mark is
//! clear, returning as soon as the accept mark is set, and at the end of the tier drop
//! unless a policy passed (or the tier's default action is Pass); then each profile chain,
//! returning once one accepted; then drop ("no profile matched"). The policies of a tier
//! are walked by the tier stage's policy group chain (Felix's `cali-gi-`/`cali-go-`),
//! shared by every endpoint listing the same policies: the endpoint chain clears the pass
//! mark, jumps to the group while the pass mark is clear, returns if the accept mark is set
//! and drops at the end of the tier; the group jumps to each policy chain while the pass
//! mark is clear and returns as soon as the accept mark is set. Rule actions: Allow sets
//! the accept mark and returns, Deny drops, Pass sets the pass mark and returns, Log logs
//! with prefix `mgy <tier>/<policy>/<rule index>` and goes on.
//!
//! Marks rather than native verdicts: policy chains are shared by every endpoint, and an
//! Allow must end the whole pipeline yet let the packet go on to the destination's chain
//! when both ends are local. nft's `accept` would end the hook outright (skipping the
//! ingress side) and `return` only leaves the policy chain, so, as in Felix, the policy
//! chain sets a mark that the endpoint chain tests. The bits are Felix's: accept
//! `0x10000`, pass `0x20000`; and, for rules whose ports are an alternative of numbers and
//! named ports (nft has no "or" across matches), scratch bits `0x80000` (source ports) and
//! `0x100000` (destination ports), set by one rule per alternative before the rule itself.
//! A packet allowed by Margay reaches the end of the base chain and so is accepted by it
//! (its policy); other tables' chains on the hook still see it.
//!
//! Every rule has a `counter` and a comment. Rules that cannot match in a family (another
//! `ipVersion`, CIDRs of the other family only, ICMP in IPv6, ICMPv6 in IPv4) are left out
//! of that family's table, as Felix renders rules only into the chains of their family.

use std::net::IpAddr;

use ipnet::IpNet;
use margay_api::{
    Action, EndpointToHostAction, IcmpFields, PortProtocol, ProtoPort, TierDefaultAction,
};
use margay_policy::program::{
    EndMatch, IpSet, LocalEndpoint, LocalHostEndpoint, Matches, Pipeline, PolicyChain, PolicyGroup,
    PortMatch, PortSet, ProfileChain, Program, ProgramRule, HOSTS_SET,
};
use margay_policy::PolicyRef;

use crate::ruleset::{
    quoted_text, BaseChain, Chain, ChainType, Family, Hook, InterfaceMap, NamedPriority, Policy,
    Priority, Rule, Set, Table,
};

/// Margay's policy table, one per family: `table ip margay-policy`, `table ip6 margay-policy`.
pub const POLICY_TABLE: &str = "margay-policy";

/// The prefix of the host side of every workload interface the CNI plugin creates.
pub const WORKLOAD_INTERFACE_PREFIX: &str = "mgy";

const MARK_ACCEPT: u32 = 0x0001_0000;
const MARK_PASS: u32 = 0x0002_0000;
const MARK_SCRATCH_SOURCE: u32 = 0x0008_0000;
const MARK_SCRATCH_DESTINATION: u32 = 0x0010_0000;

const FROM_WORKLOAD_MAP: &str = "from-wl";
const TO_WORKLOAD_MAP: &str = "to-wl";
const FROM_WORKLOAD_DISPATCH: &str = "from-wl-dispatch";
const TO_WORKLOAD_DISPATCH: &str = "to-wl-dispatch";
const WORKLOAD_TO_HOST: &str = "wl-to-host";
const FROM_HOST_MAP: &str = "from-hep";
const TO_HOST_MAP: &str = "to-hep";
const FROM_HOST_FORWARD_MAP: &str = "from-hep-fw";
const TO_HOST_FORWARD_MAP: &str = "to-hep-fw";
const FAILSAFE_IN: &str = "failsafe-in";
const FAILSAFE_OUT: &str = "failsafe-out";

/// nft's limit on log prefixes (the kernel's 128 bytes, less the NUL).
const MAX_LOG_PREFIX: usize = 127;

/// Which of the two policy tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AddressFamily {
    Ipv4,
    Ipv6,
}

impl AddressFamily {
    fn table_family(self) -> Family {
        match self {
            AddressFamily::Ipv4 => Family::Ip,
            AddressFamily::Ipv6 => Family::Ip6,
        }
    }

    /// The keyword of address matches: `ip saddr`, `ip6 saddr`.
    fn keyword(self) -> &'static str {
        match self {
            AddressFamily::Ipv4 => "ip",
            AddressFamily::Ipv6 => "ip6",
        }
    }

    fn version(self) -> u8 {
        match self {
            AddressFamily::Ipv4 => 4,
            AddressFamily::Ipv6 => 6,
        }
    }

    fn holds(self, ip: IpAddr) -> bool {
        matches!(
            (self, ip),
            (AddressFamily::Ipv4, IpAddr::V4(_)) | (AddressFamily::Ipv6, IpAddr::V6(_))
        )
    }
}

/// The `nft -f` script that atomically replaces Margay's policy table of `family` with
/// `program` (creating it if missing), touching no other table. Deterministic. Every
/// function here works on [`Program::for_family`]: a family no local endpoint has an
/// address of gets a table that only drops workload traffic.
pub fn render(program: &Program, family: AddressFamily) -> String {
    let mut out = String::new();
    table(program, family).render_replace(&mut out);
    out
}

/// Whether `old` and `new` render the same rules, chains and maps in `family`, so that going
/// from one to the other only changes set members, which [`set_updates`] does in place.
///
/// Programs are compared as data; only chains whose data differ are rendered, to tell
/// whether they render the same in `family` (a rule of the other family, a comment that
/// differs past what nft keeps).
pub fn same_rules(old: &Program, new: &Program, family: AddressFamily) -> bool {
    let (old, new) = (
        old.for_family(family.version()),
        new.for_family(family.version()),
    );
    let (old, new) = (&*old, &*new);
    old.ip_sets.keys().eq(new.ip_sets.keys())
        && old.port_sets.keys().eq(new.port_sets.keys())
        && old.endpoints.keys().eq(new.endpoints.keys())
        && host_maps(old) == host_maps(new)
        && update::chain_changes(old, new, family).is_empty()
}

/// The `nft -f` script that changes the members of the sets of a table loaded from `old`
/// into those of `new`: `delete element` and `add element` commands only, empty when no
/// member changed. Sets only one of the programs has are left alone, so this is the whole
/// difference only when [`same_rules`] holds (otherwise, [`update`] or [`render`] `new`).
/// nft refuses to delete an element that is not there: a table that no longer holds `old`
/// (someone changed it) fails the script as a whole, and should be replaced with
/// [`render`].
pub fn set_updates(old: &Program, new: &Program, family: AddressFamily) -> String {
    let (old, new) = (
        old.for_family(family.version()),
        new.for_family(family.version()),
    );
    let (old, new) = update::changed_sets(&old, &new, family);
    new.render_element_updates(&old)
}

/// The policy table of `family` for `program`, as data: what [`render`] writes. `margay
/// trace` reads chain names and rule positions from it.
pub fn table(program: &Program, family: AddressFamily) -> Table {
    let program = program.for_family(family.version());
    let program = &*program;
    let mut t = Table::new(family.table_family(), POLICY_TABLE);
    for (id, set) in &program.ip_sets {
        t.sets.push(ip_set(id, set, family));
    }
    for (id, set) in &program.port_sets {
        t.sets.push(port_set(id, set, family));
    }
    for (name, prefix) in [(FROM_WORKLOAD_MAP, "fw-"), (TO_WORKLOAD_MAP, "tw-")] {
        t.maps.push(InterfaceMap {
            name: name.to_owned(),
            elements: program
                .endpoints
                .keys()
                .map(|iface| (iface.clone(), format!("goto {prefix}{iface}")))
                .collect(),
        });
    }
    t.maps.extend(host_maps(program));
    t.chains.extend(static_chains(program, family));
    for (iface, ep) in &program.endpoints {
        t.chains.push(from_endpoint_chain(iface, ep, program));
        t.chains.push(to_endpoint_chain(iface, ep, program));
    }
    for (id, group) in &program.groups {
        t.chains.push(group_chain(id, group, program));
    }
    for (id, chain) in &program.policies {
        t.chains.push(policy_chain(id, chain, family));
    }
    for (id, chain) in &program.profiles {
        t.chains.push(profile_chain(id, chain, family));
    }
    t
}

/// An address set: the members of `family`.
fn ip_set(id: &str, set: &IpSet, family: AddressFamily) -> Set {
    let members = set.members.iter().copied();
    match family {
        AddressFamily::Ipv4 => Set::ipv4(
            id,
            members.filter_map(|n| match n {
                IpNet::V4(n) => Some(n),
                IpNet::V6(_) => None,
            }),
        ),
        AddressFamily::Ipv6 => Set::ipv6(
            id,
            members.filter_map(|n| match n {
                IpNet::V6(n) => Some(n),
                IpNet::V4(_) => None,
            }),
        ),
    }
}

/// A named-port set: the members of `family`.
fn port_set(id: &str, set: &PortSet, family: AddressFamily) -> Set {
    let members = set
        .members
        .iter()
        .map(|m| (m.ip, m.protocol.number(), m.port));
    match family {
        AddressFamily::Ipv4 => Set::ipv4_ports(
            id,
            members.filter_map(|(ip, p, port)| match ip {
                IpAddr::V4(ip) => Some((ip, p, port)),
                IpAddr::V6(_) => None,
            }),
        ),
        AddressFamily::Ipv6 => Set::ipv6_ports(
            id,
            members.filter_map(|(ip, p, port)| match ip {
                IpAddr::V6(ip) => Some((ip, p, port)),
                IpAddr::V4(_) => None,
            }),
        ),
    }
}

/// `fw-<iface>`: the endpoint's egress pipeline.
fn from_endpoint_chain(iface: &str, ep: &LocalEndpoint, program: &Program) -> Chain {
    endpoint_chain(
        format!("fw-{iface}"),
        &format!("{} egress", ep.id),
        &ep.egress,
        program,
        true,
    )
}

/// `tw-<iface>`: the endpoint's ingress pipeline.
fn to_endpoint_chain(iface: &str, ep: &LocalEndpoint, program: &Program) -> Chain {
    endpoint_chain(
        format!("tw-{iface}"),
        &format!("{} ingress", ep.id),
        &ep.ingress,
        program,
        true,
    )
}

/// `gi-<hash>` / `go-<hash>`: one tier's policies, walked for every endpoint listing them.
fn group_chain(id: &str, group: &PolicyGroup, program: &Program) -> Chain {
    let mut rules = Vec::with_capacity(group.policies.len() * 2);
    policy_jumps(&mut rules, &group.tier, &group.policies, program);
    Chain {
        name: id.to_owned(),
        base: None,
        rules,
    }
}

/// Per policy: jump to its chain while the pass mark is clear, then return if it accepted.
fn policy_jumps(rules: &mut Vec<Rule>, tier: &str, policies: &[String], program: &Program) {
    for policy in policies {
        let name = program
            .policies
            .get(policy)
            .map_or_else(String::new, |c| policy_name(&c.policy));
        rules.push(Rule::new(
            format!("{} counter jump {policy}", mark_clear(MARK_PASS)),
            format!("tier {tier} policy {name}"),
        ));
        rules.push(Rule::new(
            format!("{} counter return", mark_set(MARK_ACCEPT)),
            "return if policy accepted",
        ));
    }
}

fn policy_chain(id: &str, chain: &PolicyChain, family: AddressFamily) -> Chain {
    let log = format!("{}/{}", chain.tier, policy_name(&chain.policy));
    rule_chain(id, &chain.rules, &log, family)
}

fn profile_chain(id: &str, chain: &ProfileChain, family: AddressFamily) -> Chain {
    let log = format!("profile/{}", chain.profile);
    rule_chain(id, &chain.rules, &log, family)
}

/// `namespace/name`, or the name of a global policy.
fn policy_name(policy: &PolicyRef) -> String {
    match &policy.namespace {
        Some(ns) => format!("{ns}/{}", policy.name),
        None => policy.name.clone(),
    }
}

/// The chains whose rules depend on the program's settings, on which workload interfaces do
/// not start with [`WORKLOAD_INTERFACE_PREFIX`] and on the host endpoints: the base chains,
/// the dispatch chains, and with host endpoints the failsafe chains and theirs (a few, and
/// not shared).
fn static_chains(program: &Program, family: AddressFamily) -> Vec<Chain> {
    let mut chains = vec![
        forward_chain(program),
        input_chain(program, family),
        output_chain(program, family),
        dispatch_chain(FROM_WORKLOAD_DISPATCH, "iifname", FROM_WORKLOAD_MAP),
        dispatch_chain(TO_WORKLOAD_DISPATCH, "oifname", TO_WORKLOAD_MAP),
        workload_to_host_chain(program, family),
    ];
    if let Some(exemptions) = &program.exemptions {
        chains.push(failsafe_chain(
            FAILSAFE_IN,
            &exemptions.failsafe_inbound,
            Side::Source,
            family,
        ));
        chains.push(failsafe_chain(
            FAILSAFE_OUT,
            &exemptions.failsafe_outbound,
            Side::Destination,
            family,
        ));
    }
    for (iface, hep) in &program.host_endpoints {
        chains.extend(host_endpoint_chains(iface, hep, program));
    }
    chains
}

/// The host endpoint dispatch maps, with host endpoints: to the chains of the endpoint traffic
/// to the node arrives through (`from-hep`) or traffic from it leaves through (`to-hep`), and
/// of those whose forwarded traffic has policy (`from-hep-fw`, `to-hep-fw`, when some has).
/// Their elements `jump`, so that the base chain goes on once the endpoint's chain returns.
fn host_maps(program: &Program) -> Vec<InterfaceMap> {
    if program.host_endpoints.is_empty() {
        return Vec::new();
    }
    let map = |name: &str, prefix: &str, used: &dyn Fn(&LocalHostEndpoint) -> bool| InterfaceMap {
        name: name.to_owned(),
        elements: program
            .host_endpoints
            .iter()
            .filter(|(_, hep)| used(hep))
            .map(|(iface, _)| (iface.clone(), format!("jump {prefix}{iface}")))
            .collect(),
    };
    let forward = [
        map(FROM_HOST_FORWARD_MAP, "fhfw-", &|h| {
            !h.forward_ingress.tiers.is_empty()
        }),
        map(TO_HOST_FORWARD_MAP, "thfw-", &|h| {
            !h.forward_egress.tiers.is_empty()
        }),
    ];
    let mut maps = vec![
        map(FROM_HOST_MAP, "fh-", &|_| true),
        map(TO_HOST_MAP, "th-", &|_| true),
    ];
    maps.extend(forward.into_iter().filter(|m| !m.elements.is_empty()));
    maps
}

/// The chains of one host endpoint: `fh-<iface>` and `th-<iface>` (traffic to and from the
/// node: conntrack invalid dropped, the failsafe ports, then the pipeline, which drops what
/// it does not allow), and `fhfw-<iface>` and `thfw-<iface>` when forwarded traffic has
/// policy (the `applyOnForward` tiers; a packet they let through goes on).
fn host_endpoint_chains(iface: &str, hep: &LocalHostEndpoint, program: &Program) -> Vec<Chain> {
    let what = |direction: &str| format!("host endpoint {} {direction}", hep.name);
    let local = |name: String, direction: &str, failsafe: &str, pipeline: &Pipeline| {
        let mut chain = endpoint_chain(name, &what(direction), pipeline, program, true);
        chain.rules.splice(
            0..0,
            [
                Rule::new("ct state invalid counter drop", "conntrack invalid"),
                Rule::new(format!("counter jump {failsafe}"), "failsafe ports"),
            ],
        );
        chain
    };
    let mut chains = vec![
        local(format!("fh-{iface}"), "ingress", FAILSAFE_IN, &hep.ingress),
        local(format!("th-{iface}"), "egress", FAILSAFE_OUT, &hep.egress),
    ];
    for (prefix, direction, pipeline) in [
        ("fhfw-", "forwarded ingress", &hep.forward_ingress),
        ("thfw-", "forwarded egress", &hep.forward_egress),
    ] {
        if !pipeline.tiers.is_empty() {
            let name = format!("{prefix}{iface}");
            chains.push(endpoint_chain(
                name,
                &what(direction),
                pipeline,
                program,
                false,
            ));
        }
    }
    chains
}

/// `failsafe-in` / `failsafe-out`: accepts packets to a failsafe port, from (`Side::Source`)
/// or to (`Side::Destination`) its `net` when it has one. A port whose net is of the other
/// family has no rule in this family's table, as in Felix.
fn failsafe_chain(name: &str, ports: &[ProtoPort], remote: Side, family: AddressFamily) -> Chain {
    let rules = ports
        .iter()
        .filter(|p| p.net.is_none_or(|net| family.holds(net.addr())))
        .map(|p| {
            let net = p.net.map_or_else(String::new, |net| {
                format!("{} {} {} ", family.keyword(), remote.addr(), net.trunc())
            });
            let protocol = match p.protocol {
                PortProtocol::Tcp => 6,
                PortProtocol::Udp => 17,
                PortProtocol::Sctp => 132,
            };
            Rule::new(
                format!(
                    "{net}meta l4proto {protocol} th dport {} counter accept",
                    p.port
                ),
                format!("failsafe: {} {}", p.protocol, p.port),
            )
        })
        .collect();
    Chain {
        name: name.to_owned(),
        base: None,
        rules,
    }
}

/// With host endpoints: the overlay between the nodes (VXLAN to the configured port, and in
/// IPv4 IPIP) from (`Side::Source`) or to (`Side::Destination`) the cluster's nodes, which
/// host endpoint policy must not cut.
fn overlay_rules(program: &Program, remote: Side, family: AddressFamily) -> Vec<Rule> {
    let Some(exemptions) = &program.exemptions else {
        return Vec::new();
    };
    let nodes = format!("{} {} @{HOSTS_SET}", family.keyword(), remote.addr());
    let mut rules = vec![Rule::new(
        format!("udp dport {} {nodes} counter accept", exemptions.vxlan_port),
        "VXLAN between the cluster's nodes: not subject to host endpoint policy",
    )];
    if family == AddressFamily::Ipv4 {
        rules.push(Rule::new(
            format!("meta l4proto 4 {nodes} counter accept"),
            "IPIP between the cluster's nodes: not subject to host endpoint policy",
        ));
    }
    rules
}

/// The conditions that match a workload interface on `key` (`iifname`, `oifname`): the
/// [`WORKLOAD_INTERFACE_PREFIX`] wildcard, and the endpoint interfaces that do not start
/// with it (whose packets the dispatch maps take as well).
fn workload_interfaces(program: &Program, key: &str) -> Vec<String> {
    let mut conditions = vec![format!("{key} \"{WORKLOAD_INTERFACE_PREFIX}*\"")];
    let others: Vec<String> = program
        .endpoints
        .keys()
        .filter(|iface| !iface.starts_with(WORKLOAD_INTERFACE_PREFIX))
        .map(|iface| format!("\"{iface}\""))
        .collect();
    if !others.is_empty() {
        conditions.push(format!("{key} {{ {} }}", others.join(", ")));
    }
    conditions
}

/// `input` (hook input): what workloads send to this node goes to [`WORKLOAD_TO_HOST`];
/// with host endpoints, the rest meets the policy of the one it arrives through.
fn input_chain(program: &Program, family: AddressFamily) -> Chain {
    let mut rules = vec![Rule::new(
        "ct state established,related counter accept",
        "replies and related traffic of allowed connections",
    )];
    for condition in workload_interfaces(program, "iifname") {
        rules.push(Rule::new(
            format!("{condition} counter goto {WORKLOAD_TO_HOST}"),
            "from a workload to this host",
        ));
    }
    if !program.host_endpoints.is_empty() {
        rules.extend(overlay_rules(program, Side::Source, family));
        rules.push(Rule::new(
            format!("counter iifname vmap @{FROM_HOST_MAP}"),
            "ingress policy of the host endpoint it arrives through",
        ));
    }
    Chain {
        name: "input".into(),
        base: Some(BaseChain {
            kind: ChainType::Filter,
            hook: Hook::Input,
            priority: Priority::new(NamedPriority::Filter, 0),
            policy: Policy::Accept,
        }),
        rules,
    }
}

/// `output` (hook output): this node's traffic to its workloads is not policed, as in
/// Calico (kubelet's probes, for one, come this way); with host endpoints, the rest meets the
/// policy of the one it leaves through.
fn output_chain(program: &Program, family: AddressFamily) -> Chain {
    let mut rules: Vec<Rule> = workload_interfaces(program, "oifname")
        .into_iter()
        .map(|condition| {
            Rule::new(
                format!("{condition} counter return"),
                "from this host to a workload: allowed without policy",
            )
        })
        .collect();
    if !program.host_endpoints.is_empty() {
        rules.push(Rule::new(
            "ct state established,related counter accept",
            "replies and related traffic of allowed connections",
        ));
        rules.extend(overlay_rules(program, Side::Destination, family));
        rules.push(Rule::new(
            format!("counter oifname vmap @{TO_HOST_MAP}"),
            "egress policy of the host endpoint it leaves through",
        ));
    }
    Chain {
        name: "output".into(),
        base: Some(BaseChain {
            kind: ChainType::Filter,
            hook: Hook::Output,
            priority: Priority::new(NamedPriority::Filter, 0),
            policy: Policy::Accept,
        }),
        rules,
    }
}

/// Felix's ICMPv6 types a workload may always send to its host, before its egress policy: the
/// host is its router, and these are how it finds it (multicast listener query, report and
/// done; router solicitation; neighbour solicitation and advertisement).
const ICMPV6_TO_HOST: [u8; 6] = [130, 131, 132, 133, 135, 136];

/// `wl-to-host`: the workload's egress policy (through the dispatch chain, whose endpoint
/// chain returns when it allows), then the node's `defaultEndpointToHostAction`.
fn workload_to_host_chain(program: &Program, family: AddressFamily) -> Chain {
    let mut rules = vec![Rule::new(
        "ct state invalid counter drop",
        "conntrack invalid",
    )];
    if family == AddressFamily::Ipv6 {
        let types: Vec<String> = ICMPV6_TO_HOST.iter().map(u8::to_string).collect();
        rules.push(Rule::new(
            format!("icmpv6 type {{ {} }} counter accept", types.join(", ")),
            "neighbour discovery, router solicitation and multicast listeners: the host is the \
             workload's router",
        ));
    }
    rules.push(Rule::new(
        format!("counter jump {FROM_WORKLOAD_DISPATCH}"),
        "egress policy of the source workload",
    ));
    let verdict = match program.endpoint_to_host {
        EndpointToHostAction::Drop => "drop",
        EndpointToHostAction::Accept => "accept",
        EndpointToHostAction::Return => "return",
    };
    rules.push(Rule::new(
        format!("counter {verdict}"),
        format!(
            "configured DefaultEndpointToHostAction: {}",
            program.endpoint_to_host
        ),
    ));
    Chain {
        name: WORKLOAD_TO_HOST.into(),
        base: None,
        rules,
    }
}

/// `forward` (hook forward): the source workload's egress policy, then the destination's
/// ingress policy; with host endpoints, before them the `applyOnForward` ingress policy of the
/// one the packet arrives through, and after them the egress policy of the one it leaves
/// through (Felix's `cali-from-hep-forward` and `cali-to-hep-forward`).
fn forward_chain(program: &Program) -> Chain {
    let maps = host_maps(program);
    let used = |name: &str| maps.iter().any(|m| m.name == name);
    let mut rules = vec![
        Rule::new(
            "ct state established,related counter accept",
            "replies and related traffic of allowed connections",
        ),
        Rule::new("ct state invalid counter drop", "conntrack invalid"),
    ];
    if used(FROM_HOST_FORWARD_MAP) {
        rules.push(Rule::new(
            format!("counter iifname vmap @{FROM_HOST_FORWARD_MAP}"),
            "applyOnForward ingress policy of the host endpoint it arrives through",
        ));
    }
    rules.push(Rule::new(
        format!("counter jump {FROM_WORKLOAD_DISPATCH}"),
        "egress policy of the source workload",
    ));
    rules.push(Rule::new(
        format!("counter jump {TO_WORKLOAD_DISPATCH}"),
        "ingress policy of the destination workload",
    ));
    if used(TO_HOST_FORWARD_MAP) {
        rules.push(Rule::new(
            format!("counter oifname vmap @{TO_HOST_FORWARD_MAP}"),
            "applyOnForward egress policy of the host endpoint it leaves through",
        ));
    }
    Chain {
        name: "forward".into(),
        base: Some(BaseChain {
            kind: ChainType::Filter,
            hook: Hook::Forward,
            priority: Priority::new(NamedPriority::Filter, 0),
            policy: Policy::Accept,
        }),
        rules,
    }
}

/// `iifname vmap @from-wl` (or `oifname` …): `goto` the endpoint's chain, whose `return`
/// then comes back to the forward chain; a workload interface not in the map is dropped.
fn dispatch_chain(name: &str, key: &str, map: &str) -> Chain {
    Chain {
        name: name.into(),
        base: None,
        rules: vec![
            Rule::new(
                format!("counter {key} vmap @{map}"),
                "to the chain of the workload's interface",
            ),
            Rule::new(
                format!("{key} \"{WORKLOAD_INTERFACE_PREFIX}*\" counter drop"),
                "unknown workload interface",
            ),
        ],
    }
}

fn mark_set(bit: u32) -> String {
    format!("meta mark & {bit:#010x} == {bit:#010x}")
}

fn mark_clear(bit: u32) -> String {
    format!("meta mark & {bit:#010x} == 0x00000000")
}

fn set_mark(bit: u32) -> String {
    format!("meta mark set meta mark | {bit:#010x}")
}

fn clear_marks(bits: u32) -> String {
    format!("meta mark set meta mark & {:#010x}", !bits)
}

/// An endpoint chain walking `pipeline`. With `last`, it ends with the profiles and drops what
/// none accepted; without (a host endpoint's forwarded traffic, which has no profiles), what
/// its tiers let through goes on.
fn endpoint_chain(
    name: String,
    what: &str,
    pipeline: &Pipeline,
    program: &Program,
    last: bool,
) -> Chain {
    let mut rules = vec![Rule::new(
        format!("counter {}", clear_marks(MARK_ACCEPT | MARK_PASS)),
        format!("{what}: clear the accept and pass marks"),
    )];
    for stage in &pipeline.tiers {
        let tier = &stage.tier;
        rules.push(Rule::new(
            format!("counter {}", clear_marks(MARK_PASS)),
            format!("start of tier {tier}"),
        ));
        match stage
            .group
            .as_ref()
            .filter(|g| program.groups.contains_key(*g))
        {
            Some(group) => {
                rules.push(Rule::new(
                    format!("{} counter jump {group}", mark_clear(MARK_PASS)),
                    format!("tier {tier} policy group {group}"),
                ));
                rules.push(Rule::new(
                    format!("{} counter return", mark_set(MARK_ACCEPT)),
                    "return if policy accepted",
                ));
            }
            None => policy_jumps(&mut rules, tier, &stage.policies, program),
        }
        if stage.default_action == TierDefaultAction::Deny {
            rules.push(Rule::new(
                format!("{} counter drop", mark_clear(MARK_PASS)),
                format!("end of tier {tier}: drop if no policies passed packet"),
            ));
        }
    }
    for profile in &pipeline.profiles {
        let name = program
            .profiles
            .get(profile)
            .map_or("", |c| c.profile.as_str());
        rules.push(Rule::new(
            format!("counter jump {profile}"),
            format!("profile {name}"),
        ));
        rules.push(Rule::new(
            format!("{} counter return", mark_set(MARK_ACCEPT)),
            "return if profile accepted",
        ));
    }
    if last {
        rules.push(Rule::new("counter drop", "drop if no profiles matched"));
    }
    Chain {
        name,
        base: None,
        rules,
    }
}

/// A policy or profile chain; `log` names it in log prefixes (`<tier>/<policy>`).
fn rule_chain(name: &str, rules: &[ProgramRule], log: &str, family: AddressFamily) -> Chain {
    let mut out = Vec::new();
    for rule in rules {
        let Some(m) = matches(&rule.matches, family) else {
            continue;
        };
        let verdict = match rule.action {
            Action::Allow => format!("{} return", set_mark(MARK_ACCEPT)),
            Action::Deny => "drop".to_owned(),
            Action::Pass => format!("{} return", set_mark(MARK_PASS)),
            Action::Log => {
                let prefix = format!("mgy {log}/{} ", rule.index);
                format!("log prefix \"{}\"", quoted_text(&prefix, MAX_LOG_PREFIX))
            }
        };
        for (statement, which) in m.before {
            out.push(Rule::new(statement, format!("{}: {which}", rule.comment)));
        }
        let mut statement = m.conditions.join(" ");
        if !statement.is_empty() {
            statement.push(' ');
        }
        statement.push_str("counter ");
        statement.push_str(&verdict);
        out.push(Rule::new(statement, rule.comment.clone()));
    }
    Chain {
        name: name.to_owned(),
        base: None,
        rules: out,
    }
}

/// A rule's matches as nft: the rules that must run first (statement, what it is for) and
/// the conditions of the rule itself.
struct Rendered {
    before: Vec<(String, &'static str)>,
    conditions: Vec<String>,
}

/// `None` when the rule can never match a packet of `family`.
fn matches(m: &Matches, family: AddressFamily) -> Option<Rendered> {
    if m.ip_version.is_some_and(|v| v != family.version()) {
        return None;
    }
    let mut r = Rendered {
        before: Vec::new(),
        conditions: Vec::new(),
    };
    if let Some(p) = m.protocol {
        r.conditions.push(format!("meta l4proto {p}"));
    }
    if let Some(p) = m.not_protocol {
        r.conditions.push(format!("meta l4proto != {p}"));
    }
    if m.icmp.is_some() || m.not_icmp.is_some() {
        let keyword = match (m.protocol, family) {
            (Some(1), AddressFamily::Ipv4) => "icmp",
            (Some(58), AddressFamily::Ipv6) => "icmpv6",
            _ => return None,
        };
        if let Some(icmp) = m.icmp {
            r.conditions.extend(icmp_matches(keyword, icmp, false));
        }
        if let Some(icmp) = m.not_icmp {
            r.conditions.extend(icmp_matches(keyword, icmp, true));
        }
    } else {
        match (m.protocol, family) {
            (Some(1), AddressFamily::Ipv6) | (Some(58), AddressFamily::Ipv4) => return None,
            _ => {}
        }
    }
    end_matches(&m.source, Side::Source, family, &mut r)?;
    end_matches(&m.destination, Side::Destination, family, &mut r)?;
    Some(r)
}

fn icmp_matches(keyword: &str, icmp: IcmpFields, negated: bool) -> Vec<String> {
    match (icmp.icmp_type, icmp.code, negated) {
        (Some(t), Some(c), false) => {
            vec![format!("{keyword} type {t}"), format!("{keyword} code {c}")]
        }
        // The negation of both together: one concatenated comparison.
        (Some(t), Some(c), true) => {
            vec![format!(
                "{keyword} type . {keyword} code != {{ {t} . {c} }}"
            )]
        }
        (Some(t), None, false) => vec![format!("{keyword} type {t}")],
        (Some(t), None, true) => vec![format!("{keyword} type != {t}")],
        (None, Some(c), false) => vec![format!("{keyword} code {c}")],
        (None, Some(c), true) => vec![format!("{keyword} code != {c}")],
        // `icmp: {}`: any ICMP, which the protocol match already says.
        (None, None, _) => Vec::new(),
    }
}

#[derive(Clone, Copy)]
enum Side {
    Source,
    Destination,
}

impl Side {
    fn addr(self) -> &'static str {
        match self {
            Side::Source => "saddr",
            Side::Destination => "daddr",
        }
    }

    fn port(self) -> &'static str {
        match self {
            Side::Source => "sport",
            Side::Destination => "dport",
        }
    }

    fn scratch(self) -> u32 {
        match self {
            Side::Source => MARK_SCRATCH_SOURCE,
            Side::Destination => MARK_SCRATCH_DESTINATION,
        }
    }

    fn ports_purpose(self) -> &'static str {
        match self {
            Side::Source => "source ports",
            Side::Destination => "destination ports",
        }
    }
}

/// Appends one end's conditions; `None` when they can never hold in `family`.
fn end_matches(e: &EndMatch, side: Side, family: AddressFamily, r: &mut Rendered) -> Option<()> {
    let addr = format!("{} {}", family.keyword(), side.addr());
    let of_family = |nets: &[IpNet]| -> Vec<IpNet> {
        nets.iter()
            .copied()
            .filter(|n| family.holds(n.addr()))
            .collect()
    };
    if !e.nets.is_empty() {
        let nets = of_family(&e.nets);
        if nets.is_empty() {
            return None;
        }
        r.conditions.push(format!("{addr} {}", nets_literal(&nets)));
    }
    let not_nets = of_family(&e.not_nets);
    if !not_nets.is_empty() {
        r.conditions
            .push(format!("{addr} != {}", nets_literal(&not_nets)));
    }
    if let Some(set) = &e.ip_set {
        r.conditions.push(format!("{addr} @{set}"));
    }
    if let Some(set) = &e.not_ip_set {
        r.conditions.push(format!("{addr} != @{set}"));
    }
    let port = format!("th {}", side.port());
    let tuple = format!("{addr} . meta l4proto . {port}");
    let (numbers, named) = split_ports(&e.ports);
    let mut alternatives = Vec::new();
    if !numbers.is_empty() {
        alternatives.push(format!("{port} {}", ports_literal(&numbers)));
    }
    alternatives.extend(named.iter().map(|set| format!("{tuple} @{set}")));
    match alternatives.len() {
        0 => {}
        1 => r.conditions.append(&mut alternatives),
        _ => {
            let bit = side.scratch();
            r.before.push((
                format!("counter {}", clear_marks(bit)),
                side.ports_purpose(),
            ));
            for alternative in alternatives {
                r.before.push((
                    format!("{alternative} counter {}", set_mark(bit)),
                    side.ports_purpose(),
                ));
            }
            r.conditions.push(mark_set(bit));
        }
    }
    let (numbers, named) = split_ports(&e.not_ports);
    if !numbers.is_empty() {
        r.conditions
            .push(format!("{port} != {}", ports_literal(&numbers)));
    }
    r.conditions
        .extend(named.iter().map(|set| format!("{tuple} != @{set}")));
    Some(())
}

/// Numeric ports as inclusive ranges, and the ids of named-port sets.
fn split_ports(ports: &[PortMatch]) -> (Vec<(u16, u16)>, Vec<&str>) {
    let mut numbers = Vec::new();
    let mut named = Vec::new();
    for p in ports {
        match p {
            PortMatch::Number(n) => numbers.push((*n, *n)),
            PortMatch::Range(lo, hi) => numbers.push((*lo, *hi)),
            PortMatch::Named(set) => named.push(set.as_str()),
        }
    }
    (numbers, named)
}

/// `80`, `1000-2000` or `{ 80, 1000-2000 }`: sorted and merged, since nft rejects
/// overlapping intervals in a set.
fn ports_literal(ranges: &[(u16, u16)]) -> String {
    let mut sorted = ranges.to_vec();
    sorted.sort_unstable();
    let mut merged: Vec<(u16, u16)> = Vec::new();
    for (lo, hi) in sorted {
        match merged.last_mut() {
            Some(last) if u32::from(lo) <= u32::from(last.1) + 1 => last.1 = last.1.max(hi),
            _ => merged.push((lo, hi)),
        }
    }
    let items: Vec<String> = merged
        .iter()
        .map(|&(lo, hi)| {
            if lo == hi {
                lo.to_string()
            } else {
                format!("{lo}-{hi}")
            }
        })
        .collect();
    braced(items)
}

/// Prefixes of one family, aggregated: `10.0.0.0/8` or `{ 10.0.0.0/8, 192.0.2.1 }`.
fn nets_literal(nets: &[IpNet]) -> String {
    let items = IpNet::aggregate(&nets.to_vec())
        .into_iter()
        .map(|n| {
            if n.prefix_len() == n.max_prefix_len() {
                n.addr().to_string()
            } else {
                n.to_string()
            }
        })
        .collect();
    braced(items)
}

fn braced(items: Vec<String>) -> String {
    match items.as_slice() {
        [one] => one.clone(),
        _ => format!("{{ {} }}", items.join(", ")),
    }
}

mod update;

pub use update::update;

#[cfg(test)]
mod tests;
