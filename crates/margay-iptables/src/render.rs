//! A node's [`Program`] as Felix's iptables chains and ipsets (see the crate documentation
//! for the layout). Mirrors margay-nft's `policy` module rule for rule.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;

use ipnet::IpNet;
use margay_api::{
    Action, EndpointToHostAction, IcmpFields, PortProtocol, ProtoPort, TierDefaultAction,
};
use margay_policy::program::{
    EndMatch, IpSet, LocalEndpoint, LocalHostEndpoint, Matches, Pipeline, PolicyChain, PolicyGroup,
    PortMatch, PortSet, ProfileChain, Program, ProgramRule, HOSTS_SET,
};
use margay_policy::PolicyRef;
use sha2::{Digest, Sha256};

use crate::rendered::{
    hash_comment, hex, net_member, rule_hash, Chain, Hook, Ipset, Rule, SetHeader,
};
use crate::{
    Family, Rendered, CHAIN_PREFIX, FORWARD_CHAIN, INPUT_CHAIN, MARK_ACCEPT, MARK_PASS,
    MARK_SCRATCH_ALL, MARK_SCRATCH_THIS, OUTPUT_CHAIN, WORKLOAD_INTERFACE_PREFIX,
};

const FROM_WORKLOAD_DISPATCH: &str = "mgy-from-wl-dispatch";
const TO_WORKLOAD_DISPATCH: &str = "mgy-to-wl-dispatch";
const WORKLOAD_TO_HOST: &str = "mgy-wl-to-host";
const FROM_HOST_DISPATCH: &str = "mgy-from-host-endpoint";
const TO_HOST_DISPATCH: &str = "mgy-to-host-endpoint";
const FROM_HOST_FORWARD_DISPATCH: &str = "mgy-from-hep-forward";
const TO_HOST_FORWARD_DISPATCH: &str = "mgy-to-hep-forward";
const FAILSAFE_IN: &str = "mgy-failsafe-in";
const FAILSAFE_OUT: &str = "mgy-failsafe-out";

/// iptables' limit on chain names (Felix's `MaxChainNameLength`).
pub(crate) const MAX_CHAIN: usize = 28;
/// ipset's limit on set names (IPSET_MAXNAMELEN less the NUL).
pub(crate) const MAX_SET: usize = 31;
/// The comment match's limit (XT_MAX_COMMENT_LEN less the NUL).
const MAX_COMMENT: usize = 255;
/// The LOG target's limit on prefixes.
const MAX_LOG_PREFIX: usize = 29;
/// multiport's limit: 15 ports, a range counting as two.
const MULTIPORT_SLOTS: usize = 15;
/// The protocols with ports that a port match without a protocol stands for (the engine's
/// packets are TCP, UDP or SCTP).
const PORT_PROTOCOLS: [u8; 3] = [6, 17, 132];

/// The rendering of `program` in `family`'s filter table and sets (of
/// [`Program::for_family`]: nothing but the drops of workload traffic when no local endpoint
/// has an address of the family). Deterministic.
pub fn render(program: &Program, family: Family) -> Rendered {
    let program = program.for_family(family.version());
    let program = &*program;
    let mut r = Rendered::empty(family);
    for (id, set) in &program.ip_sets {
        r.sets
            .insert(set_name(family, id), address_set(set, family));
    }
    for (id, set) in &program.port_sets {
        r.sets.insert(set_name(family, id), port_set(set, family));
    }

    r.chains.extend(host_chains(program, family));
    r.chains.push(dispatch_chain(program, Direction::From));
    r.chains.push(dispatch_chain(program, Direction::To));
    for (iface, ep) in &program.endpoints {
        for direction in [Direction::From, Direction::To] {
            r.chains.push(workload_chain(iface, ep, direction, program));
        }
    }
    for (id, group) in &program.groups {
        r.chains.push(group_chain(id, group, program));
    }
    for (id, chain) in &program.policies {
        r.chains.push(policy_chain(id, chain, family));
    }
    for (id, chain) in &program.profiles {
        r.chains.push(profile_chain(id, chain, family));
    }
    r.hooks = hooks();
    r
}

/// The rendering of `program` in `old`'s family, given that `old` is the rendering of
/// `old_program` ([`render`]`(old_program, family)`): exactly [`render`]`(program,
/// family)`, but the chains and sets whose part of the program did not change are taken
/// from `old` instead of being rendered again. After one change of a large program, this
/// renders a few chains instead of thousands.
pub fn render_update(old_program: &Program, old: &Rendered, program: &Program) -> Rendered {
    let family = old.family;
    let (old_program, program) = (
        old_program.for_family(family.version()),
        program.for_family(family.version()),
    );
    let (old_program, program) = (&*old_program, &*program);
    let mut r = Rendered::empty(family);
    // A name shortened with a hash could be shared; only unshortened names are reused.
    let reusable = |prefix: &str, id: &str, name: &str| name.len() == prefix.len() + id.len();
    for (id, set) in &program.ip_sets {
        let name = set_name(family, id);
        let kept = old_program
            .ip_sets
            .get(id)
            .filter(|was| was.members == set.members)
            .and_then(|_| old.sets.get(&name))
            .filter(|_| reusable(family.set_prefix(), id, &name));
        let set = kept.cloned().unwrap_or_else(|| address_set(set, family));
        r.sets.insert(name, set);
    }
    for (id, set) in &program.port_sets {
        let name = set_name(family, id);
        let kept = old_program
            .port_sets
            .get(id)
            .filter(|was| was.members == set.members)
            .filter(|_| !old_program.ip_sets.contains_key(id))
            .and_then(|_| old.sets.get(&name))
            .filter(|_| reusable(family.set_prefix(), id, &name));
        let set = kept.cloned().unwrap_or_else(|| port_set(set, family));
        r.sets.insert(name, set);
    }

    let mut by_name: HashMap<&str, Option<&Chain>> = HashMap::with_capacity(old.chains.len());
    for chain in &old.chains {
        by_name
            .entry(chain.name.as_str())
            .and_modify(|c| *c = None)
            .or_insert(Some(chain));
    }
    let old_chain = |id: &str| {
        let name = chain_name(id);
        by_name
            .get(name.as_str())
            .copied()
            .flatten()
            .filter(|_| reusable(CHAIN_PREFIX, id, &name))
            .cloned()
    };

    r.chains.extend(host_chains(program, family));
    let same_dispatch = old_program.endpoints.len() == program.endpoints.len()
        && old_program
            .endpoints
            .iter()
            .zip(&program.endpoints)
            .all(|((a, x), (b, y))| a == b && x.id == y.id);
    for direction in [Direction::From, Direction::To] {
        let kept = same_dispatch
            .then(|| {
                by_name
                    .get(direction.dispatch())
                    .copied()
                    .flatten()
                    .cloned()
            })
            .flatten();
        r.chains
            .push(kept.unwrap_or_else(|| dispatch_chain(program, direction)));
    }

    // Policies and profiles whose name, as endpoint chains' comments show it, changed.
    let mut renamed: HashSet<&str> = HashSet::new();
    for (id, chain) in &old_program.policies {
        if program.policies.get(id).map(|c| &c.policy) != Some(&chain.policy) {
            renamed.insert(id);
        }
    }
    for id in program.policies.keys() {
        if !old_program.policies.contains_key(id) {
            renamed.insert(id);
        }
    }
    for (id, chain) in &old_program.profiles {
        if program.profiles.get(id).map(|c| &c.profile) != Some(&chain.profile) {
            renamed.insert(id);
        }
    }
    for id in program.profiles.keys() {
        if !old_program.profiles.contains_key(id) {
            renamed.insert(id);
        }
    }
    // Grouped tiers name only their group; the group chain names the policies. A group
    // coming or going changes the endpoint chains listing it (they inline a tier whose
    // group the program lacks).
    let grouped =
        |g: &Option<String>, p: &Program| g.as_ref().is_some_and(|g| p.groups.contains_key(g));
    let mentions_renamed = |pipeline: &Pipeline| {
        pipeline.tiers.iter().any(|t| {
            grouped(&t.group, program) != grouped(&t.group, old_program)
                || (!grouped(&t.group, program)
                    && t.policies.iter().any(|id| renamed.contains(id.as_str())))
        }) || (!renamed.is_empty()
            && pipeline
                .profiles
                .iter()
                .any(|id| renamed.contains(id.as_str())))
    };
    for (iface, ep) in &program.endpoints {
        let was = old_program.endpoints.get(iface);
        for direction in [Direction::From, Direction::To] {
            let unchanged = was.is_some_and(|was| {
                was.id == ep.id
                    && direction.pipeline(was) == direction.pipeline(ep)
                    && !mentions_renamed(direction.pipeline(ep))
            });
            let id = direction.endpoint_id(iface);
            let kept = unchanged.then(|| old_chain(&id)).flatten();
            r.chains
                .push(kept.unwrap_or_else(|| workload_chain(iface, ep, direction, program)));
        }
    }
    for (id, group) in &program.groups {
        let unchanged = old_program.groups.get(id) == Some(group)
            && !group.policies.iter().any(|p| renamed.contains(p.as_str()));
        let kept = unchanged.then(|| old_chain(id)).flatten();
        r.chains
            .push(kept.unwrap_or_else(|| group_chain(id, group, program)));
    }
    for (id, chain) in &program.policies {
        let kept = (old_program.policies.get(id) == Some(chain))
            .then(|| old_chain(id))
            .flatten();
        r.chains
            .push(kept.unwrap_or_else(|| policy_chain(id, chain, family)));
    }
    for (id, chain) in &program.profiles {
        let kept = (old_program.profiles.get(id) == Some(chain))
            .then(|| old_chain(id))
            .flatten();
        r.chains
            .push(kept.unwrap_or_else(|| profile_chain(id, chain, family)));
    }
    r.hooks = hooks();
    r
}

/// An address set's members in `family`.
fn address_set(set: &IpSet, family: Family) -> Ipset {
    let members = set
        .members
        .iter()
        .filter(|n| family.holds(n.addr()))
        .flat_map(|n| ipset_nets(*n))
        .map(net_member)
        .collect();
    Ipset {
        header: SetHeader::new("hash:net", family),
        members,
    }
}

/// A named-port set's members in `family`.
fn port_set(set: &PortSet, family: Family) -> Ipset {
    let members = set
        .members
        .iter()
        .filter(|m| family.holds(m.ip))
        .map(|m| {
            let protocol = m.protocol.to_string().to_ascii_lowercase();
            format!("{},{protocol}:{}", m.ip, m.port)
        })
        .collect();
    Ipset {
        header: SetHeader::new("hash:ip,port", family),
        members,
    }
}

/// `mgy-fw-<iface>` (egress) or `mgy-tw-<iface>` (ingress).
fn workload_chain(
    iface: &str,
    ep: &LocalEndpoint,
    direction: Direction,
    program: &Program,
) -> Chain {
    let what = match direction {
        Direction::From => "egress",
        Direction::To => "ingress",
    };
    endpoint_chain(
        direction.endpoint_chain(iface),
        &format!("{} {what}", ep.id),
        direction.pipeline(ep),
        program,
    )
}

/// `mgy-gi-<hash>` / `mgy-go-<hash>`: one tier's policies, walked for every endpoint
/// listing them.
fn group_chain(id: &str, group: &PolicyGroup, program: &Program) -> Chain {
    let mut b = ChainBuilder::new(chain_name(id));
    policy_jumps(&mut b, &group.tier, &group.policies, program);
    b.finish()
}

/// Per policy: jump to its chain while the pass mark is clear, then return if it accepted.
fn policy_jumps(b: &mut ChainBuilder, tier: &str, policies: &[String], program: &Program) {
    let return_if_accepted = Spec::jump("-j RETURN").with(mark_set(MARK_ACCEPT));
    for policy in policies {
        let name = program
            .policies
            .get(policy)
            .map_or_else(String::new, |c| policy_name(&c.policy));
        b.push(
            &Spec::jump(format!("-j {}", chain_name(policy))).with(mark_clear(MARK_PASS)),
            &format!("tier {tier} policy {name}"),
        );
        b.push(&return_if_accepted, "Return if policy accepted");
    }
}

fn policy_chain(id: &str, chain: &PolicyChain, family: Family) -> Chain {
    let log = format!("{}/{}", chain.tier, policy_name(&chain.policy));
    let owner = format!("tier {} policy {}", chain.tier, policy_name(&chain.policy));
    rule_chain(id, &chain.rules, &log, &owner, false, family)
}

fn profile_chain(id: &str, chain: &ProfileChain, family: Family) -> Chain {
    let log = format!("profile/{}", chain.profile);
    let owner = format!("profile {}", chain.profile);
    rule_chain(id, &chain.rules, &log, &owner, true, family)
}

/// `INPUT`'s jump to [`INPUT_CHAIN`], `FORWARD`'s jump to [`FORWARD_CHAIN`] (both inserted
/// at the top) and, appended, Felix's acceptance of what policy accepted, and `OUTPUT`'s jump
/// to [`OUTPUT_CHAIN`]: in the order `iptables-save` lists them, which is how
/// [`Rendered::from_kernel`] reads them back.
fn hooks() -> Vec<Hook> {
    let jump = Spec::jump(format!("-j {FORWARD_CHAIN}"));
    let accept = Spec::jump("-j ACCEPT").with(mark_set(MARK_ACCEPT));
    let input = Spec::jump(format!("-j {INPUT_CHAIN}"));
    let output = Spec::jump(format!("-j {OUTPUT_CHAIN}"));
    vec![
        Hook {
            chain: "INPUT".into(),
            insert: true,
            rule: hashed("INPUT", "insert", &input, "Margay host policy"),
        },
        Hook {
            chain: "FORWARD".into(),
            insert: true,
            rule: hashed("FORWARD", "insert", &jump, "Margay workload policy"),
        },
        Hook {
            chain: "FORWARD".into(),
            insert: false,
            rule: hashed(
                "FORWARD",
                "append",
                &accept,
                "Policy explicitly accepted packet.",
            ),
        },
        Hook {
            chain: "OUTPUT".into(),
            insert: true,
            rule: hashed("OUTPUT", "insert", &output, "Margay host policy"),
        },
    ]
}

/// The chain of a program id (`pi-…`, `fw-mgy…`): `mgy-<id>`, shortened to 28 characters.
pub fn chain_name(id: &str) -> String {
    short_name(CHAIN_PREFIX, id, MAX_CHAIN)
}

/// The set of a program set id in `family`: `mgy40<id>` (`mgy60<id>`), shortened to 31.
pub(crate) fn set_name(family: Family, id: &str) -> String {
    short_name(family.set_prefix(), id, MAX_SET)
}

/// `prefix` + `id`, or when that is longer than `max`, `prefix` + the id's kind (what precedes
/// its first `-`) + `-_` + as much of a hash of the id as fits: `mgy-pri-_3fa…`.
fn short_name(prefix: &str, id: &str, max: usize) -> String {
    if prefix.len() + id.len() <= max {
        return format!("{prefix}{id}");
    }
    let head = match id.split_once('-') {
        Some((kind, _)) if prefix.len() + kind.len() + 2 + 8 <= max => {
            format!("{prefix}{kind}-_")
        }
        _ => format!("{prefix}_"),
    };
    let digits = max - head.len();
    format!("{head}{}", hex(&Sha256::digest(id.as_bytes()), digits))
}

/// ipset's `hash:net` cannot hold a /0: it stands for its two halves, as in Felix.
fn ipset_nets(net: IpNet) -> Vec<IpNet> {
    let net = net.trunc();
    if net.prefix_len() == 0 {
        net.subnets(1).map(Iterator::collect).unwrap_or_default()
    } else {
        vec![net]
    }
}

/// `namespace/name`, or the name of a global policy.
fn policy_name(policy: &PolicyRef) -> String {
    match &policy.namespace {
        Some(ns) => format!("{ns}/{}", policy.name),
        None => policy.name.clone(),
    }
}

#[derive(Clone, Copy)]
enum Direction {
    /// From a workload: its egress.
    From,
    /// To a workload: its ingress.
    To,
}

impl Direction {
    /// The program-side id of the endpoint chain: `fw-<iface>`, `tw-<iface>`.
    fn endpoint_id(self, iface: &str) -> String {
        match self {
            Direction::From => format!("fw-{iface}"),
            Direction::To => format!("tw-{iface}"),
        }
    }

    fn endpoint_chain(self, iface: &str) -> String {
        chain_name(&self.endpoint_id(iface))
    }

    /// The pipeline enforced in this direction: egress from a workload, ingress to it.
    fn pipeline(self, ep: &LocalEndpoint) -> &Pipeline {
        match self {
            Direction::From => &ep.egress,
            Direction::To => &ep.ingress,
        }
    }

    fn dispatch(self) -> &'static str {
        match self {
            Direction::From => FROM_WORKLOAD_DISPATCH,
            Direction::To => TO_WORKLOAD_DISPATCH,
        }
    }

    /// A spec matching packets arriving on (`From`) or leaving through (`To`) `iface`.
    fn interface(self, iface: &str) -> Spec {
        let mut spec = Spec::default();
        match self {
            Direction::From => spec.in_interface = Some(iface.to_owned()),
            Direction::To => spec.out_interface = Some(iface.to_owned()),
        }
        spec
    }
}

/// The interface patterns that lead to the dispatch chains: `mgy+`, and the name of every
/// endpoint interface that does not start with `mgy` (the nftables table dispatches on every
/// interface; so must this).
fn workload_interfaces(program: &Program) -> Vec<String> {
    let mut patterns = vec![format!("{WORKLOAD_INTERFACE_PREFIX}+")];
    patterns.extend(
        program
            .endpoints
            .keys()
            .filter(|iface| !iface.starts_with(WORKLOAD_INTERFACE_PREFIX))
            .cloned(),
    );
    patterns
}

/// The chains rendered whole every time (a few, whatever the size of the program): the
/// top-level chains, `mgy-wl-to-host`, and with host endpoints their dispatch chains, the
/// failsafe chains and the host endpoints' own chains.
fn host_chains(program: &Program, family: Family) -> Vec<Chain> {
    let mut chains = vec![
        forward_chain(program),
        input_chain(program, family),
        output_chain(program, family),
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
    for dispatch in HostDispatch::ALL {
        if host_dispatch_used(program, dispatch) {
            chains.push(host_dispatch_chain(program, dispatch));
        }
    }
    for (iface, hep) in &program.host_endpoints {
        for dispatch in HostDispatch::ALL {
            let pipeline = dispatch.pipeline(hep);
            if dispatch.forward() && pipeline.tiers.is_empty() {
                continue;
            }
            let what = format!("host endpoint {} {}", hep.name, dispatch.what());
            let mut b = ChainBuilder::new(chain_name(&dispatch.endpoint_id(iface)));
            endpoint_rules(&mut b, &what, pipeline, program, dispatch.failsafe());
            if !dispatch.forward() {
                b.push(&Spec::jump("-j DROP"), "Drop if no profiles matched");
            }
            chains.push(b.finish());
        }
    }
    chains
}

/// The four ways through a host endpoint, as Felix names their chains.
#[derive(Clone, Copy)]
enum HostDispatch {
    /// To the node (`mgy-fh-`).
    From,
    /// From the node (`mgy-th-`).
    To,
    /// Forwarded in (`mgy-fhfw-`).
    FromForward,
    /// Forwarded out (`mgy-thfw-`).
    ToForward,
}

impl HostDispatch {
    const ALL: [HostDispatch; 4] = [
        HostDispatch::From,
        HostDispatch::To,
        HostDispatch::FromForward,
        HostDispatch::ToForward,
    ];

    fn forward(self) -> bool {
        matches!(self, HostDispatch::FromForward | HostDispatch::ToForward)
    }

    fn dispatch(self) -> &'static str {
        match self {
            HostDispatch::From => FROM_HOST_DISPATCH,
            HostDispatch::To => TO_HOST_DISPATCH,
            HostDispatch::FromForward => FROM_HOST_FORWARD_DISPATCH,
            HostDispatch::ToForward => TO_HOST_FORWARD_DISPATCH,
        }
    }

    /// The program-side id of the endpoint's chain: `fh-<iface>`, …
    fn endpoint_id(self, iface: &str) -> String {
        let prefix = match self {
            HostDispatch::From => "fh-",
            HostDispatch::To => "th-",
            HostDispatch::FromForward => "fhfw-",
            HostDispatch::ToForward => "thfw-",
        };
        format!("{prefix}{iface}")
    }

    fn what(self) -> &'static str {
        match self {
            HostDispatch::From => "ingress",
            HostDispatch::To => "egress",
            HostDispatch::FromForward => "forwarded ingress",
            HostDispatch::ToForward => "forwarded egress",
        }
    }

    fn pipeline(self, hep: &LocalHostEndpoint) -> &Pipeline {
        match self {
            HostDispatch::From => &hep.ingress,
            HostDispatch::To => &hep.egress,
            HostDispatch::FromForward => &hep.forward_ingress,
            HostDispatch::ToForward => &hep.forward_egress,
        }
    }

    /// The failsafe chain the endpoint's chain jumps to first: the node's own traffic only.
    fn failsafe(self) -> Option<&'static str> {
        match self {
            HostDispatch::From => Some(FAILSAFE_IN),
            HostDispatch::To => Some(FAILSAFE_OUT),
            HostDispatch::FromForward | HostDispatch::ToForward => None,
        }
    }

    fn direction(self) -> Direction {
        match self {
            HostDispatch::From | HostDispatch::FromForward => Direction::From,
            HostDispatch::To | HostDispatch::ToForward => Direction::To,
        }
    }
}

/// Whether some host endpoint's traffic goes through `dispatch`: any, for the node's own
/// traffic; one whose forwarded traffic has policy, for the forward ones.
fn host_dispatch_used(program: &Program, dispatch: HostDispatch) -> bool {
    program
        .host_endpoints
        .values()
        .any(|hep| !dispatch.forward() || !dispatch.pipeline(hep).tiers.is_empty())
}

/// `-i <iface> -g mgy-fh-<iface>` (and the others) per host endpoint, the forward ones only
/// for endpoints whose forwarded traffic has policy. Other interfaces are not policed: no
/// drop at the end.
fn host_dispatch_chain(program: &Program, dispatch: HostDispatch) -> Chain {
    let mut b = ChainBuilder::new(dispatch.dispatch().to_owned());
    for (iface, hep) in &program.host_endpoints {
        if dispatch.forward() && dispatch.pipeline(hep).tiers.is_empty() {
            continue;
        }
        let mut spec = dispatch.direction().interface(iface);
        spec.target = format!("-g {}", chain_name(&dispatch.endpoint_id(iface)));
        b.push(
            &spec,
            &format!("host endpoint {} {}", hep.name, dispatch.what()),
        );
    }
    b.finish()
}

/// `mgy-failsafe-in` / `mgy-failsafe-out`: accepts packets to a failsafe port, from
/// (`Side::Source`) or to (`Side::Destination`) its `net` when it has one. A port whose net
/// is of the other family has no rule in this family's table, as in Felix.
fn failsafe_chain(name: &str, ports: &[ProtoPort], remote: Side, family: Family) -> Chain {
    let mut b = ChainBuilder::new(name.to_owned());
    for p in ports
        .iter()
        .filter(|p| p.net.is_none_or(|net| family.holds(net.addr())))
    {
        let protocol = match p.protocol {
            PortProtocol::Tcp => 6,
            PortProtocol::Udp => 17,
            PortProtocol::Sctp => 132,
        };
        let mut spec = Spec {
            protocol: Some((false, protocol)),
            ..Spec::jump("-j ACCEPT").with(format!("-m multiport --dports {}", p.port))
        };
        if let Some(net) = p.net {
            *remote.address(&mut spec) = Some((false, net));
        }
        b.push(&spec, &format!("Failsafe: {} {}", p.protocol, p.port));
    }
    b.finish()
}

/// With host endpoints: accepts the overlay between the nodes (VXLAN to the configured port,
/// and in IPv4 IPIP) from (`Side::Source`) or to (`Side::Destination`) the cluster's nodes,
/// which host endpoint policy must not cut.
fn overlay_rules(b: &mut ChainBuilder, program: &Program, remote: Side, family: Family) {
    let Some(exemptions) = &program.exemptions else {
        return;
    };
    let nodes = format!(
        "-m set --match-set {} {}",
        set_name(family, HOSTS_SET),
        remote.flag()
    );
    let vxlan = Spec {
        protocol: Some((false, 17)),
        ..Spec::jump("-j ACCEPT")
            .with(format!("-m multiport --dports {}", exemptions.vxlan_port))
            .with(nodes.clone())
    };
    b.push(
        &vxlan,
        "VXLAN between the cluster's nodes: not subject to host endpoint policy",
    );
    if family == Family::V4 {
        let ipip = Spec {
            protocol: Some((false, 4)),
            ..Spec::jump("-j ACCEPT").with(nodes)
        };
        b.push(
            &ipip,
            "IPIP between the cluster's nodes: not subject to host endpoint policy",
        );
    }
}

/// With host endpoints, the end of `mgy-INPUT` or `mgy-OUTPUT`: the overlay, then the host
/// endpoint dispatch (`dispatch`), whose endpoint chain returns with the accept mark when its
/// policy allows ("Host endpoint policy accepted packet.", as in Felix).
fn host_endpoint_rules(
    b: &mut ChainBuilder,
    program: &Program,
    remote: Side,
    dispatch: HostDispatch,
    family: Family,
) {
    if program.host_endpoints.is_empty() {
        return;
    }
    overlay_rules(b, program, remote, family);
    b.push(
        &Spec::jump(clear_marks(MARK_ACCEPT | MARK_PASS)),
        "Clear the accept and pass marks",
    );
    b.push(
        &Spec::jump(format!("-j {}", dispatch.dispatch())),
        "Host endpoint policy",
    );
    b.push(
        &Spec::jump("-j ACCEPT").with(mark_set(MARK_ACCEPT)),
        "Host endpoint policy accepted packet.",
    );
}

/// `mgy-FORWARD`: the source workload's egress policy, then the destination's ingress
/// policy; with host endpoints whose forwarded traffic has policy, before them the
/// `applyOnForward` ingress policy of the one the packet arrives through, and after them the
/// egress policy of the one it leaves through.
fn forward_chain(program: &Program) -> Chain {
    let mut b = ChainBuilder::new(FORWARD_CHAIN.to_owned());
    b.push(
        &Spec::jump(clear_marks(
            MARK_PASS | MARK_SCRATCH_ALL | MARK_SCRATCH_THIS,
        )),
        "Clear the pass and scratch marks",
    );
    if host_dispatch_used(program, HostDispatch::FromForward) {
        b.push(
            &Spec::jump(format!("-j {FROM_HOST_FORWARD_DISPATCH}")),
            "applyOnForward ingress policy of the host endpoint it arrives through",
        );
    }
    for (direction, what) in [
        (Direction::From, "Egress policy of the source workload"),
        (Direction::To, "Ingress policy of the destination workload"),
    ] {
        for pattern in workload_interfaces(program) {
            let mut spec = direction.interface(&pattern);
            spec.target = format!("-j {}", direction.dispatch());
            b.push(&spec, what);
        }
    }
    if host_dispatch_used(program, HostDispatch::ToForward) {
        b.push(
            &Spec::jump(format!("-j {TO_HOST_FORWARD_DISPATCH}")),
            "applyOnForward egress policy of the host endpoint it leaves through",
        );
    }
    b.finish()
}

/// `mgy-INPUT`: what workloads send to this node goes to `mgy-wl-to-host` (`-g`: its
/// verdict is final, and its RETURN goes back to `INPUT`); with host endpoints, the rest
/// meets the policy of the one it arrives through.
fn input_chain(program: &Program, family: Family) -> Chain {
    let mut b = ChainBuilder::new(INPUT_CHAIN.to_owned());
    for pattern in workload_interfaces(program) {
        let mut spec = Direction::From.interface(&pattern);
        spec.target = format!("-g {WORKLOAD_TO_HOST}");
        b.push(&spec, "From a workload to this host");
    }
    host_endpoint_rules(&mut b, program, Side::Source, HostDispatch::From, family);
    b.finish()
}

/// `mgy-OUTPUT`: this node's traffic to its workloads is not policed, as in Calico
/// (kubelet's probes, for one, come this way); with host endpoints, the rest meets the
/// policy of the one it leaves through.
fn output_chain(program: &Program, family: Family) -> Chain {
    let mut b = ChainBuilder::new(OUTPUT_CHAIN.to_owned());
    for pattern in workload_interfaces(program) {
        let mut spec = Direction::To.interface(&pattern);
        spec.target = "-j RETURN".into();
        b.push(
            &spec,
            "From this host to a workload: allowed without policy",
        );
    }
    host_endpoint_rules(&mut b, program, Side::Destination, HostDispatch::To, family);
    b.finish()
}

/// Felix's ICMPv6 types a workload may always send to its host, before its egress policy: the
/// host is its router, and these are how it finds it (multicast listener query, report and
/// done; router solicitation; neighbour solicitation and advertisement).
const ICMPV6_TO_HOST: [u8; 6] = [130, 131, 132, 133, 135, 136];

/// `mgy-wl-to-host` (Felix's `cali-wl-to-host`): the workload's egress policy (through the
/// dispatch chain, whose endpoint chain returns when it allows), then the node's
/// `defaultEndpointToHostAction`.
fn workload_to_host_chain(program: &Program, family: Family) -> Chain {
    let mut b = ChainBuilder::new(WORKLOAD_TO_HOST.to_owned());
    if family == Family::V6 {
        for icmp_type in ICMPV6_TO_HOST {
            let spec = Spec {
                protocol: Some((false, 58)),
                ..Spec::jump("-j ACCEPT").with(format!("-m icmp6 --icmpv6-type {icmp_type}"))
            };
            b.push(
                &spec,
                "ICMPv6 the host must answer: it is the workload's router",
            );
        }
    }
    b.push(
        &Spec::jump(format!("-j {FROM_WORKLOAD_DISPATCH}")),
        "Egress policy of the source workload",
    );
    let target = match program.endpoint_to_host {
        EndpointToHostAction::Drop => "-j DROP",
        EndpointToHostAction::Accept => "-j ACCEPT",
        EndpointToHostAction::Return => "-j RETURN",
    };
    b.push(
        &Spec::jump(target),
        &format!(
            "Configured DefaultEndpointToHostAction: {}",
            program.endpoint_to_host
        ),
    );
    b.finish()
}

/// `-i <iface> -g mgy-fw-<iface>` (or `-o` … `mgy-tw-`) per endpoint: the endpoint chain's
/// RETURN then comes back to `mgy-FORWARD`. A workload interface no endpoint has is dropped.
fn dispatch_chain(program: &Program, direction: Direction) -> Chain {
    let mut b = ChainBuilder::new(direction.dispatch().to_owned());
    let what = match direction {
        Direction::From => "egress",
        Direction::To => "ingress",
    };
    for (iface, ep) in &program.endpoints {
        let mut spec = direction.interface(iface);
        spec.target = format!("-g {}", direction.endpoint_chain(iface));
        b.push(&spec, &format!("{} {what}", ep.id));
    }
    let mut unknown = direction.interface(&format!("{WORKLOAD_INTERFACE_PREFIX}+"));
    unknown.target = "-j DROP".into();
    b.push(&unknown, "Unknown interface");
    b.finish()
}

fn endpoint_chain(name: String, what: &str, pipeline: &Pipeline, program: &Program) -> Chain {
    let mut b = ChainBuilder::new(name);
    endpoint_rules(&mut b, what, pipeline, program, None);
    b.push(&Spec::jump("-j DROP"), "Drop if no profiles matched");
    b.finish()
}

/// An endpoint chain's rules up to its last: conntrack, the jump to `failsafe` (a host
/// endpoint's own traffic), then the pipeline's tiers and profiles.
fn endpoint_rules(
    b: &mut ChainBuilder,
    what: &str,
    pipeline: &Pipeline,
    program: &Program,
    failsafe: Option<&str>,
) {
    b.push(
        &Spec::jump("-j ACCEPT").with("-m conntrack --ctstate RELATED,ESTABLISHED"),
        &format!("{what}: replies and related traffic of allowed connections"),
    );
    b.push(
        &Spec::jump("-j DROP").with("-m conntrack --ctstate INVALID"),
        &format!("{what}: conntrack invalid"),
    );
    if let Some(failsafe) = failsafe {
        b.push(&Spec::jump(format!("-j {failsafe}")), "Failsafe ports");
    }
    b.push(
        &Spec::jump(clear_marks(MARK_ACCEPT | MARK_PASS)),
        &format!("{what}: clear the accept and pass marks"),
    );
    let return_if_accepted = Spec::jump("-j RETURN").with(mark_set(MARK_ACCEPT));
    for stage in &pipeline.tiers {
        let tier = &stage.tier;
        b.push(
            &Spec::jump(clear_marks(MARK_PASS)),
            &format!("Start of tier {tier}"),
        );
        match stage
            .group
            .as_ref()
            .filter(|g| program.groups.contains_key(*g))
        {
            Some(group) => {
                b.push(
                    &Spec::jump(format!("-j {}", chain_name(group))).with(mark_clear(MARK_PASS)),
                    &format!("tier {tier} policy group {group}"),
                );
                b.push(&return_if_accepted, "Return if policy accepted");
            }
            None => policy_jumps(b, tier, &stage.policies, program),
        }
        if stage.default_action == TierDefaultAction::Deny {
            b.push(
                &Spec::jump("-j DROP").with(mark_clear(MARK_PASS)),
                &format!("End of tier {tier}. Drop if no policies passed packet"),
            );
        }
    }
    for profile in &pipeline.profiles {
        let name = program
            .profiles
            .get(profile)
            .map_or("", |c| c.profile.as_str());
        b.push(
            &Spec::jump(format!("-j {}", chain_name(profile))),
            &format!("profile {name}"),
        );
        b.push(&return_if_accepted, "Return if profile accepted");
    }
}

/// A policy or profile chain. `log` names it in log prefixes (`<tier>/<policy>`), `owner` in
/// comments. A profile chain with a Pass rule first clears the pass mark, which a tier may
/// have left set: the rule after a Pass returns when the mark is set.
fn rule_chain(
    id: &str,
    rules: &[ProgramRule],
    log: &str,
    owner: &str,
    profile: bool,
    family: Family,
) -> Chain {
    let name = chain_name(id);
    let rendered: Vec<(&ProgramRule, Vec<RuleMatch>)> = rules
        .iter()
        .map(|rule| (rule, matches(&rule.matches, family)))
        .filter(|(_, m)| !m.is_empty())
        .collect();
    let mut b = ChainBuilder::new(name.clone());
    if profile && rendered.iter().any(|(r, _)| r.action == Action::Pass) {
        b.push(
            &Spec::jump(clear_marks(MARK_PASS)),
            &format!("{owner}: clear the pass mark"),
        );
    }
    for (rule, alternatives) in rendered {
        let comment = &rule.comment;
        for m in alternatives {
            for (spec, purpose) in &m.before {
                b.push(spec, &format!("{comment}: {purpose}"));
            }
            let mut spec = m.spec;
            let then_return = |bit: u32| Spec::jump("-j RETURN").with(mark_set(bit));
            match rule.action {
                Action::Allow => {
                    spec.target = set_mark(MARK_ACCEPT);
                    b.push(&spec, comment);
                    b.push(&then_return(MARK_ACCEPT), &format!("{comment}: return"));
                }
                Action::Pass => {
                    spec.target = set_mark(MARK_PASS);
                    b.push(&spec, comment);
                    b.push(&then_return(MARK_PASS), &format!("{comment}: return"));
                }
                Action::Deny => {
                    spec.target = "-j DROP".into();
                    b.push(&spec, comment);
                }
                Action::Log => {
                    spec.target = format!(
                        "-j LOG --log-prefix {}",
                        save_string(&log_prefix(log, &name, rule.index))
                    );
                    b.push(&spec, comment);
                }
            }
        }
    }
    b.finish()
}

/// `mgy <tier>/<policy>/<index> `, or when that is longer than the LOG target allows,
/// `mgy <chain id>/<index> ` (the chain id cut to fit).
fn log_prefix(log: &str, chain: &str, index: usize) -> String {
    let full = sanitized(&format!("mgy {log}/{index} "), usize::MAX);
    if full.len() <= MAX_LOG_PREFIX {
        return full;
    }
    let tail = format!("/{index} ");
    let id = chain.strip_prefix(CHAIN_PREFIX).unwrap_or(chain);
    let budget = MAX_LOG_PREFIX.saturating_sub("mgy ".len() + tail.len());
    format!("mgy {}{tail}", &id[..budget.min(id.len())])
}

/// `text` without control characters, cut to at most `max` bytes.
fn sanitized(text: &str, max: usize) -> String {
    let mut out = String::new();
    for c in text.chars() {
        let c = if c.is_control() { ' ' } else { c };
        if out.len() + c.len_utf8() > max {
            break;
        }
        out.push(c);
    }
    out
}

/// An argument as `iptables-save` writes it (xtables_save_string): bare when it is only
/// letters, digits, `_` and `-`, else in double quotes with `"`, `\` and `'` escaped.
fn save_string(value: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    if !value.is_empty() && value.chars().all(plain) {
        return value.to_owned();
    }
    let mut out = String::from("\"");
    for c in value.chars() {
        if matches!(c, '"' | '\\' | '\'') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// One rule's conditions, in the order `iptables-save` prints them: addresses,
/// interfaces, protocol, then matches; and its target.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Spec {
    /// (negated, net)
    source: Option<(bool, IpNet)>,
    destination: Option<(bool, IpNet)>,
    in_interface: Option<String>,
    out_interface: Option<String>,
    /// (negated, protocol number)
    protocol: Option<(bool, u8)>,
    matches: Vec<String>,
    target: String,
}

impl Spec {
    fn jump(target: impl Into<String>) -> Spec {
        Spec {
            target: target.into(),
            ..Spec::default()
        }
    }

    fn with(mut self, m: impl Into<String>) -> Spec {
        self.matches.push(m.into());
        self
    }

    /// The rule as `iptables-save` prints it, with the hash comment when given.
    #[cfg(test)]
    fn text(&self, hash: Option<&str>, comment: &str) -> String {
        let (before, after) = self.text_around(comment);
        match hash {
            Some(hash) => format!("{before}{} {after}", hash_comment(hash)),
            None => format!("{before}{after}"),
        }
    }

    /// The rule's text before where the hash comment goes (ending with a space, or empty)
    /// and from the other comment on.
    fn text_around(&self, comment: &str) -> (String, String) {
        let not = |negated: bool| if negated { "! " } else { "" };
        let mut before = String::new();
        if let Some((negated, net)) = self.source {
            let _ = write!(before, "{}-s {} ", not(negated), net.trunc());
        }
        if let Some((negated, net)) = self.destination {
            let _ = write!(before, "{}-d {} ", not(negated), net.trunc());
        }
        if let Some(iface) = &self.in_interface {
            let _ = write!(before, "-i {iface} ");
        }
        if let Some(iface) = &self.out_interface {
            let _ = write!(before, "-o {iface} ");
        }
        if let Some((negated, p)) = self.protocol {
            let _ = write!(before, "{}-p {} ", not(negated), protocol_name(p));
        }
        let mut after = format!("-m comment --comment {}", save_string(comment));
        for m in &self.matches {
            after.push(' ');
            after.push_str(m);
        }
        if !self.target.is_empty() {
            after.push(' ');
            after.push_str(&self.target);
        }
        (before, after)
    }
}

/// The names iptables itself knows (and `iptables-save` prints); other protocols by number.
fn protocol_name(p: u8) -> String {
    match p {
        1 => "icmp".into(),
        4 => "ipencap".into(),
        6 => "tcp".into(),
        17 => "udp".into(),
        58 => "ipv6-icmp".into(),
        132 => "sctp".into(),
        136 => "udplite".into(),
        other => other.to_string(),
    }
}

/// A rule with its hash comment, after the rule whose hash is `previous`.
fn hashed(chain: &str, previous: &str, spec: &Spec, comment: &str) -> Rule {
    let comment = sanitized(comment, MAX_COMMENT);
    let (before, after) = spec.text_around(&comment);
    let mut text = before;
    let hashed_from = text.len();
    text.push_str(&after);
    let hash = rule_hash(chain, previous, &text);
    text.insert_str(hashed_from, &format!("{} ", hash_comment(&hash)));
    Rule {
        spec: text,
        hash: Some(hash),
    }
}

struct ChainBuilder {
    chain: Chain,
}

impl ChainBuilder {
    fn new(name: String) -> ChainBuilder {
        ChainBuilder {
            chain: Chain {
                name,
                rules: Vec::new(),
            },
        }
    }

    fn push(&mut self, spec: &Spec, comment: &str) {
        let previous = self
            .chain
            .rules
            .last()
            .and_then(|r| r.hash.as_deref())
            .unwrap_or_default();
        let rule = hashed(&self.chain.name, previous, spec, comment);
        self.chain.rules.push(rule);
    }

    fn finish(self) -> Chain {
        self.chain
    }
}

fn set_mark(bits: u32) -> String {
    format!("-j MARK --set-xmark {bits:#x}/{bits:#x}")
}

fn clear_marks(bits: u32) -> String {
    format!("-j MARK --set-xmark 0x0/{bits:#x}")
}

fn mark_set(bit: u32) -> String {
    format!("-m mark --mark {bit:#x}/{bit:#x}")
}

fn mark_clear(bit: u32) -> String {
    format!("-m mark --mark 0x0/{bit:#x}")
}

/// One rendering of a rule's matches: the rules that must run first (with what they are
/// for) and the conditions of the rule itself.
#[derive(Debug, PartialEq, Eq)]
struct RuleMatch {
    before: Vec<(Spec, &'static str)>,
    spec: Spec,
}

/// What one rule cannot say: either one of the alternatives must match, or none of them.
enum Block {
    Any(&'static str, Vec<Spec>),
    None(&'static str, Vec<Spec>),
}

/// A rule's matches in `family`: one [`RuleMatch`] per protocol it stands for (several only
/// for numeric ports without a protocol, which iptables cannot match without one); none when
/// the rule can never match in `family` (another `ipVersion`, CIDRs of the other family
/// only, ICMP in IPv6, ICMPv6 in IPv4, an ICMP code without a type, which the API refuses).
fn matches(m: &Matches, family: Family) -> Vec<RuleMatch> {
    if m.ip_version.is_some_and(|v| v != family.version()) {
        return Vec::new();
    }
    let mut icmp = Vec::new();
    if m.icmp.is_some() || m.not_icmp.is_some() {
        let (module, option) = match (m.protocol, family) {
            (Some(1), Family::V4) => ("icmp", "--icmp-type"),
            (Some(58), Family::V6) => ("icmp6", "--icmpv6-type"),
            _ => return Vec::new(),
        };
        for (fields, negated) in [(m.icmp, false), (m.not_icmp, true)] {
            let Some(fields) = fields else { continue };
            match icmp_match(module, option, fields, negated) {
                Ok(Some(condition)) => icmp.push(condition),
                Ok(None) => {}
                Err(()) => return Vec::new(),
            }
        }
    } else if matches!(
        (m.protocol, family),
        (Some(1), Family::V6) | (Some(58), Family::V4)
    ) {
        return Vec::new();
    }
    let numeric_ports = [&m.source, &m.destination].iter().any(|e| {
        e.ports
            .iter()
            .chain(&e.not_ports)
            .any(|p| !matches!(p, PortMatch::Named(_)))
    });
    let protocols: Vec<Option<(bool, u8)>> = match (m.protocol, m.not_protocol) {
        (Some(p), Some(not)) if p == not => return Vec::new(),
        (Some(p), _) => vec![Some((false, p))],
        (None, not) if numeric_ports => PORT_PROTOCOLS
            .into_iter()
            .filter(|p| Some(*p) != not)
            .map(|p| Some((false, p)))
            .collect(),
        (None, Some(not)) => vec![Some((true, not))],
        (None, None) => vec![None],
    };
    protocols
        .into_iter()
        .filter_map(|protocol| {
            let mut spec = Spec {
                protocol,
                matches: icmp.clone(),
                ..Spec::default()
            };
            let mut blocks = Vec::new();
            end_matches(&m.source, Side::Source, family, &mut spec, &mut blocks)?;
            end_matches(
                &m.destination,
                Side::Destination,
                family,
                &mut spec,
                &mut blocks,
            )?;
            Some(with_blocks(spec, blocks))
        })
        .collect()
}

/// `-m icmp --icmp-type 8/0`, `-m icmp ! --icmp-type 8`; `Ok(None)` for `icmp: {}` (any
/// ICMP, which the protocol already says); `Err` for a code without a type.
fn icmp_match(
    module: &str,
    option: &str,
    icmp: IcmpFields,
    negated: bool,
) -> Result<Option<String>, ()> {
    let not = if negated { "! " } else { "" };
    match (icmp.icmp_type, icmp.code) {
        (Some(t), Some(c)) => Ok(Some(format!("-m {module} {not}{option} {t}/{c}"))),
        (Some(t), None) => Ok(Some(format!("-m {module} {not}{option} {t}"))),
        (None, Some(_)) => Err(()),
        (None, None) => Ok(None),
    }
}

/// The rules before a rule whose matches need blocks (Felix's scheme): set "every block
/// matched" (and clear "this block matched"); per block of alternatives, each that matches
/// sets "this block", and when none did, "every block" is cleared; per block that must not
/// match, each alternative that matches clears "every block". The rule then requires
/// "every block matched".
fn with_blocks(mut spec: Spec, blocks: Vec<Block>) -> RuleMatch {
    if blocks.is_empty() {
        return RuleMatch {
            before: Vec::new(),
            spec,
        };
    }
    let start = format!(
        "-j MARK --set-xmark {MARK_SCRATCH_ALL:#x}/{:#x}",
        MARK_SCRATCH_ALL | MARK_SCRATCH_THIS
    );
    let mut before = vec![(Spec::jump(start), "scratch marks")];
    let mut first = true;
    for block in blocks {
        match block {
            Block::Any(purpose, alternatives) => {
                if !first {
                    before.push((Spec::jump(clear_marks(MARK_SCRATCH_THIS)), purpose));
                }
                first = false;
                for mut alternative in alternatives {
                    alternative.protocol = spec.protocol;
                    alternative.target = set_mark(MARK_SCRATCH_THIS);
                    before.push((alternative, purpose));
                }
                before.push((
                    Spec::jump(clear_marks(MARK_SCRATCH_ALL)).with(mark_clear(MARK_SCRATCH_THIS)),
                    purpose,
                ));
            }
            Block::None(purpose, alternatives) => {
                for mut alternative in alternatives {
                    alternative.protocol = spec.protocol;
                    alternative.target = clear_marks(MARK_SCRATCH_ALL);
                    before.push((alternative, purpose));
                }
            }
        }
    }
    spec.matches.push(mark_set(MARK_SCRATCH_ALL));
    RuleMatch { before, spec }
}

#[derive(Clone, Copy)]
enum Side {
    Source,
    Destination,
}

impl Side {
    fn address(self, spec: &mut Spec) -> &mut Option<(bool, IpNet)> {
        match self {
            Side::Source => &mut spec.source,
            Side::Destination => &mut spec.destination,
        }
    }

    fn address_spec(self, net: IpNet) -> Spec {
        let mut spec = Spec::default();
        *self.address(&mut spec) = Some((false, net));
        spec
    }

    /// ipset's direction flag.
    fn flag(self) -> &'static str {
        match self {
            Side::Source => "src",
            Side::Destination => "dst",
        }
    }

    fn multiport(self) -> &'static str {
        match self {
            Side::Source => "--sports",
            Side::Destination => "--dports",
        }
    }

    fn purposes(self) -> [&'static str; 3] {
        match self {
            Side::Source => ["source nets", "not source nets", "source ports"],
            Side::Destination => [
                "destination nets",
                "not destination nets",
                "destination ports",
            ],
        }
    }
}

/// Adds one end's conditions to `spec`, and what one rule cannot say to `blocks`; `None`
/// when they can never hold in `family`.
fn end_matches(
    e: &EndMatch,
    side: Side,
    family: Family,
    spec: &mut Spec,
    blocks: &mut Vec<Block>,
) -> Option<()> {
    let [nets_purpose, not_nets_purpose, ports_purpose] = side.purposes();
    let of_family = |nets: &[IpNet]| -> Vec<IpNet> {
        let nets: Vec<IpNet> = nets
            .iter()
            .map(IpNet::trunc)
            .filter(|n| family.holds(n.addr()))
            .collect();
        IpNet::aggregate(&nets)
    };
    if !e.nets.is_empty() {
        match of_family(&e.nets).as_slice() {
            [] => return None,
            // Every address of the family: no condition.
            [net] if net.prefix_len() == 0 => {}
            [net] => *side.address(spec) = Some((false, *net)),
            nets => blocks.push(Block::Any(
                nets_purpose,
                nets.iter().map(|n| side.address_spec(*n)).collect(),
            )),
        }
    }
    match of_family(&e.not_nets).as_slice() {
        [] => {}
        [net] if net.prefix_len() == 0 => return None,
        [net] if side.address(spec).is_none() => *side.address(spec) = Some((true, *net)),
        nets => blocks.push(Block::None(
            not_nets_purpose,
            nets.iter().map(|n| side.address_spec(*n)).collect(),
        )),
    }
    let flag = side.flag();
    if let Some(set) = &e.ip_set {
        let set = set_name(family, set);
        spec.matches
            .push(format!("-m set --match-set {set} {flag}"));
    }
    if let Some(set) = &e.not_ip_set {
        let set = set_name(family, set);
        spec.matches
            .push(format!("-m set ! --match-set {set} {flag}"));
    }

    let (numbers, named) = split_ports(&e.ports);
    let mut alternatives: Vec<String> = multiport_lists(&numbers)
        .into_iter()
        .map(|list| format!("-m multiport {} {list}", side.multiport()))
        .collect();
    alternatives.extend(named.iter().map(|set| {
        let set = set_name(family, set);
        format!("-m set --match-set {set} {flag},{flag}")
    }));
    match alternatives.len() {
        0 => {}
        1 => spec.matches.append(&mut alternatives),
        _ => blocks.push(Block::Any(
            ports_purpose,
            alternatives
                .into_iter()
                .map(|a| Spec::default().with(a))
                .collect(),
        )),
    }
    let (numbers, named) = split_ports(&e.not_ports);
    for list in multiport_lists(&numbers) {
        spec.matches
            .push(format!("-m multiport ! {} {list}", side.multiport()));
    }
    for set in named {
        let set = set_name(family, set);
        spec.matches
            .push(format!("-m set ! --match-set {set} {flag},{flag}"));
    }
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

/// Ranges sorted and merged, as multiport lists (`80,1000:2000`) of at most 15 slots each.
fn multiport_lists(ranges: &[(u16, u16)]) -> Vec<String> {
    let mut sorted = ranges.to_vec();
    sorted.sort_unstable();
    let mut merged: Vec<(u16, u16)> = Vec::new();
    for (lo, hi) in sorted {
        match merged.last_mut() {
            Some(last) if u32::from(lo) <= u32::from(last.1) + 1 => last.1 = last.1.max(hi),
            _ => merged.push((lo, hi)),
        }
    }
    let mut lists = Vec::new();
    let mut items: Vec<String> = Vec::new();
    let mut slots = 0;
    for (lo, hi) in merged {
        let (item, cost) = if lo == hi {
            (lo.to_string(), 1)
        } else {
            (format!("{lo}:{hi}"), 2)
        };
        if slots + cost > MULTIPORT_SLOTS {
            lists.push(items.join(","));
            items.clear();
            slots = 0;
        }
        items.push(item);
        slots += cost;
    }
    if !items.is_empty() {
        lists.push(items.join(","));
    }
    lists
}

#[cfg(test)]
mod tests;
