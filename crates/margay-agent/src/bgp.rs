//! BGP in the agent: what the node's speaker should be ([`desired`], plain data computed from
//! the same snapshot as the plan, unit-tested without root), and [`Bgp`], which runs a
//! [`margay_bgp::speaker::Speaker`] to match and reports it on `/status` and `/metrics`.
//!
//! Calico's rules (confd's `bgp_processor.go` and BIRD templates):
//!
//! - **Enabled** when a `BGPConfiguration` named `default` or any `BGPPeer` exists, or with
//!   `margay node run --bgp` (Calico's `CALICO_NETWORKING_BACKEND=bird`).
//! - **Identity**: router id = the node's IPv4 address; AS = the node's
//!   `spec.bgp.asNumber`, else `BGPConfiguration default` `asNumber`, else 64512. A node with
//!   `spec.bgp.routeReflectorClusterID` reflects routes.
//! - **Peers**: the node-to-node mesh (every other node with an IPv4 address, while
//!   `nodeToNodeMeshEnabled`; both ends connect, where Calico makes the lower address
//!   wait); `BGPPeer`s with `peerIP` (global without
//!   `node`/`nodeSelector`, node-specific with them); `BGPPeer`s with `peerSelector` (the
//!   selected nodes, and back again from a selected node unless `reversePeering: Manual`).
//!   A route reflector treats every peer that is not a reflector of its own cluster as a
//!   client. One session per address: node-specific over global over mesh.
//! - **Advertised**: each block affine to this node (the block itself, never what is
//!   inside), each local workload address outside this node's blocks (borrowed) as a /32,
//!   and `serviceClusterIPs`/`serviceExternalIPs`/`serviceLoadBalancerIPs`; never anything
//!   of a pool with `disableBGPExport`, nor outside every pool (services aside).
//! - **Installed**: learned routes go into the kernel with protocol
//!   [`Route::PROTO_MARGAY_BGP`] (78), which the agent's own reconciliation (77) never
//!   reads or deletes. Routes inside a pool with VXLAN or IPIP (`Always` or `CrossSubnet`)
//!   are not installed: the agent programs those itself (tunnels, and CrossSubnet's direct
//!   routes) from the datastore. So only `Never`/`Never` pools, and prefixes outside every
//!   pool (an upstream router's), are routed by BGP.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use ipnet::IpNet;
use margay_api::{
    BGPConfiguration, BGPPassword, BindMode, IPPool, NextHopMode, Node, ReversePeering,
    SourceAddress, DEFAULT_AS_NUMBER,
};
use margay_bgp::sink::{NetlinkSink, RouteChange, RouteSink, SinkError};
use margay_bgp::speaker::{PeerConfig, PeerStatus, Speaker, SpeakerConfig, State};
use margay_selector::Selector;
use margay_sys::netlink::{Route, RouteSocket};
use serde_json::{json, Value};

use crate::http::Health;
use crate::metrics::Metrics;
use crate::model::Model;
use crate::plan::Host;

/// How long a peer's routes are kept after its session is lost, when it advertised graceful
/// restart and nothing says otherwise (BIRD's default, as Calico runs it).
pub const DEFAULT_MAX_RESTART_TIME: Duration = Duration::from_secs(120);
/// How often `/status` and `/metrics` are refreshed from the speaker.
const REFRESH: Duration = Duration::from_millis(500);

/// How this node knows a peer, as `margay node status` shows it (Calico's words).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum PeerType {
    /// The node-to-node mesh.
    Mesh,
    /// A `BGPPeer` for every node.
    Global,
    /// A `BGPPeer` for this node (`node` or `nodeSelector`).
    Node,
    /// A route reflector this node is a client of (or a fellow reflector).
    Reflector,
    /// A client of this node, a route reflector.
    Client,
}

impl PeerType {
    pub fn as_str(self) -> &'static str {
        match self {
            PeerType::Mesh => "node-to-node mesh",
            PeerType::Global => "global",
            PeerType::Node => "node specific",
            PeerType::Reflector => "route reflector",
            PeerType::Client => "rr client",
        }
    }
}

/// One session the speaker should have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredPeer {
    pub config: PeerConfig,
    pub kind: PeerType,
    /// Where it comes from: `Mesh_<ip>` (Calico's name), `BGPPeer <name>`, or
    /// `BGPPeer <name> (node <node>)` for a selected node.
    pub source: String,
}

/// What the node's speaker should be, from one snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired {
    /// Whether the datastore asks for BGP (`BGPConfiguration default` or a `BGPPeer`).
    pub requested: bool,
    pub speaker: SpeakerConfig,
    /// By address.
    pub peers: BTreeMap<IpAddr, DesiredPeer>,
    pub originated: BTreeSet<IpNet>,
    /// Pools the agent routes itself (VXLAN or IPIP): learned routes inside are not installed.
    pub agent_routed: Vec<IpNet>,
    /// `reachableBy`: a route to the peer (/32) via the gateway.
    pub peer_routes: BTreeMap<IpNet, IpAddr>,
    /// Configuration that could not be used, one line each, naming the object and field.
    pub warnings: Vec<String>,
}

impl Desired {
    /// A readable form for `/status` and golden tests.
    pub fn to_json(&self) -> Value {
        let peers: Vec<Value> = self
            .peers
            .values()
            .map(|p| {
                let c = &p.config;
                json!({
                    "address": c.address.to_string(),
                    "port": c.port,
                    "type": p.kind.as_str(),
                    "source": p.source,
                    "asNumber": c.remote_as,
                    "localAddress": c.local_address.map(|a| a.to_string()),
                    "passive": c.passive,
                    "rrClient": c.rr_client,
                    "password": c.password.is_some(),
                    "holdTime": c.hold_time,
                    "keepaliveTime": c.keepalive_time,
                    "nextHopSelf": c.next_hop_self,
                    "maxRestartSeconds": c.max_restart_time.as_secs(),
                })
            })
            .collect();
        json!({
            "requested": self.requested,
            "routerId": self.speaker.router_id.to_string(),
            "asNumber": self.speaker.asn,
            "listen": self.speaker.listen.to_string(),
            "clusterId": self.speaker.cluster_id.map(|c| c.to_string()),
            "peers": peers,
            "originated": self.originated.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
            "agentRouted": self.agent_routed.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
            "peerRoutes": self
                .peer_routes
                .iter()
                .map(|(p, gw)| (p.to_string(), Value::String(gw.to_string())))
                .collect::<serde_json::Map<_, _>>(),
            "warnings": self.warnings,
        })
    }
}

fn node_ipv4(node: &Node) -> Option<Ipv4Addr> {
    match node.ipv4_address()?.addr() {
        IpAddr::V4(v4) => Some(v4),
        IpAddr::V6(_) => None,
    }
}

/// `Mesh_172_30_0_12`, Calico's protocol name for a mesh peer.
fn mesh_name(ip: Ipv4Addr) -> String {
    format!("Mesh_{}", ip.to_string().replace('.', "_"))
}

/// The password, or why there is none to use.
fn password(field: &str, owner: &str, pw: &Option<BGPPassword>) -> Result<Option<String>, String> {
    match pw {
        None => Ok(None),
        Some(BGPPassword { value: Some(v), .. }) => Ok(Some(v.clone())),
        Some(BGPPassword {
            secret_key_ref: Some(r),
            ..
        }) => Err(format!(
            "{owner}: {field}.secretKeyRef: Margay cannot read the Secret {:?} (there are no \
             Kubernetes Secrets in its datastore); put the password in {field}.value",
            r.name
        )),
        Some(_) => Err(format!("{owner}: {field}: neither value nor secretKeyRef")),
    }
}

fn secs_u16(d: Duration) -> u16 {
    u16::try_from(d.as_secs()).unwrap_or(u16::MAX).max(1)
}

/// The session to `node` of a `BGPPeer` with `peerSelector`, or to a mesh peer: its address,
/// AS and reflection role.
struct NodePeer<'a> {
    name: &'a str,
    ip: Ipv4Addr,
    asn: u32,
    cluster_id: Option<Ipv4Addr>,
}

/// The speaker `host` should run, from `model`; see the module documentation for the rules.
pub fn desired(model: &Model, host: &Host) -> Desired {
    let me = host.node.as_str();
    let mut warnings = Vec::new();
    let global = model
        .bgp_configs
        .iter()
        .find(|c| c.metadata.name == "default");
    let mine = model.bgp_configs.iter().find(|c| c.node() == Some(me));
    let requested = global.is_some() || !model.bgp_peers.is_empty();
    let global_spec = global.map(|g| g.spec.clone()).unwrap_or_default();
    let cluster_as = global_spec.as_number.unwrap_or(DEFAULT_AS_NUMBER);
    let listen_port_of = |c: Option<&BGPConfiguration>| {
        c.and_then(|c| c.spec.listen_port)
            .or(global_spec.listen_port)
            .unwrap_or(margay_bgp::speaker::BGP_PORT)
    };
    let my_node = model.nodes.get(me);
    let my_ip = my_node.and_then(node_ipv4).unwrap_or(host.ip.addr());
    let my_as = my_node.map_or(cluster_as, |n| n.as_number(cluster_as)).0;
    let my_cluster = my_node.and_then(Node::route_reflector_cluster_id);
    let empty = BTreeMap::new();
    let my_labels = my_node.map_or(&empty, |n| &n.metadata.labels);

    let mut speaker = SpeakerConfig::new(my_ip, my_as);
    let bind_mode = mine
        .and_then(|c| c.spec.bind_mode)
        .unwrap_or(global_spec.bind_mode());
    let listen_ip: IpAddr = match bind_mode {
        BindMode::NodeIp => my_ip.into(),
        BindMode::None => Ipv4Addr::UNSPECIFIED.into(),
    };
    speaker.listen = SocketAddr::new(listen_ip, listen_port_of(mine));
    speaker.cluster_id = my_cluster;

    for (field, set) in [
        ("spec.communities", !global_spec.communities.is_empty()),
        (
            "spec.prefixAdvertisements",
            !global_spec.prefix_advertisements.is_empty(),
        ),
        (
            "spec.ignoredInterfaces",
            !global_spec.ignored_interfaces.is_empty(),
        ),
        (
            "spec.programClusterRoutes",
            global_spec.program_cluster_routes.is_some(),
        ),
    ] {
        if set {
            warnings.push(format!(
                "BGPConfiguration default: {field} is not supported by Margay's speaker; ignored"
            ));
        }
    }

    // Other nodes that can be peered with, by name.
    let others: Vec<NodePeer> = model
        .nodes
        .iter()
        .filter(|(name, _)| name.as_str() != me)
        .filter_map(|(name, n)| {
            Some(NodePeer {
                name,
                ip: node_ipv4(n)?,
                asn: n.as_number(cluster_as).0,
                cluster_id: n.route_reflector_cluster_id(),
            })
        })
        .filter(|p| p.ip != my_ip)
        .collect();
    let labels_of = |name: &str| model.nodes.get(name).map_or(&empty, |n| &n.metadata.labels);
    let port_of = |name: &str| {
        let node_config = model.bgp_configs.iter().find(|c| c.node() == Some(name));
        listen_port_of(node_config)
    };
    // Towards another node: our address as source, the reflection role from both ends.
    let node_session = |p: &NodePeer| {
        let mut c = PeerConfig::new(p.ip.into(), p.asn);
        c.port = port_of(p.name);
        c.local_address = Some(my_ip.into());
        c.rr_client = my_cluster.is_some() && p.cluster_id != my_cluster;
        c
    };
    let role = |p: &NodePeer, otherwise: PeerType| {
        if p.cluster_id.is_some() {
            PeerType::Reflector
        } else if my_cluster.is_some() {
            PeerType::Client
        } else {
            otherwise
        }
    };

    let mut mesh = BTreeMap::new();
    let mut global_peers = BTreeMap::new();
    let mut node_peers = BTreeMap::new();

    if global_spec.node_to_node_mesh_enabled() {
        let mesh_password = password(
            "spec.nodeMeshPassword",
            "BGPConfiguration default",
            &global_spec.node_mesh_password,
        );
        match mesh_password {
            Err(e) => warnings.push(format!("{e}; no node-to-node mesh")),
            Ok(pw) => {
                for p in &others {
                    let mut c = node_session(p);
                    // Both ends connect (Calico's BIRD makes the mesh unidirectional: the
                    // lower address waits). The speaker resolves collisions (RFC 4271
                    // §6.8), and a session comes up as soon as either node knows the other,
                    // not a connect-retry period after the active one tried too early.
                    c.rr_client = false;
                    c.password = pw.clone();
                    c.max_restart_time = global_spec
                        .node_mesh_max_restart_time
                        .map_or(DEFAULT_MAX_RESTART_TIME, |d| d.as_std());
                    mesh.insert(
                        IpAddr::V4(p.ip),
                        DesiredPeer {
                            config: c,
                            kind: PeerType::Mesh,
                            source: mesh_name(p.ip),
                        },
                    );
                }
            }
        }
    }

    for peer in &model.bgp_peers {
        let s = &peer.spec;
        let owner = format!("BGPPeer {}", peer.metadata.name);
        let pw = match password("spec.password", &owner, &s.password) {
            Ok(pw) => pw,
            Err(e) => {
                warnings.push(format!("{e}; peering skipped"));
                continue;
            }
        };
        for (field, set) in [
            ("spec.localASNumber", s.local_as_number.is_some()),
            (
                "spec.numAllowedLocalASNumbers",
                s.num_allowed_local_as_numbers.is_some(),
            ),
            ("spec.ttlSecurity", s.ttl_security.is_some()),
            ("spec.filters", !s.filters.is_empty()),
        ] {
            if set {
                warnings.push(format!(
                    "{owner}: {field} is not supported by Margay's speaker; ignored"
                ));
            }
        }
        let scoped = s.node.is_some() || s.node_selector.is_some();
        let kind = if scoped {
            PeerType::Node
        } else {
            PeerType::Global
        };
        let into = if scoped {
            &mut node_peers
        } else {
            &mut global_peers
        };
        let tune = |c: &mut PeerConfig| {
            c.password = pw.clone();
            if let Some(k) = s.keepalive_time {
                let k = secs_u16(k.as_std());
                c.keepalive_time = Some(k);
                c.hold_time = c.hold_time.max(k.saturating_mul(3));
            }
            c.max_restart_time = s
                .max_restart_time
                .map_or(DEFAULT_MAX_RESTART_TIME, |d| d.as_std());
            c.next_hop_self = s.next_hop_mode == Some(NextHopMode::SelfHop);
        };
        let applies_here = s.selects_node(me, my_labels);
        if let Some(addr) = s.peer_ip {
            if !applies_here || addr.ip == IpAddr::V4(my_ip) {
                continue;
            }
            let Some(asn) = s.as_number else { continue };
            if !addr.ip.is_ipv4() {
                warnings.push(format!(
                    "{owner}: spec.peerIP {}: IPv6 peers are not supported yet; skipped",
                    addr.ip
                ));
                continue;
            }
            let mut c = PeerConfig::new(addr.ip, asn.0);
            c.port = addr.port_or_default();
            c.local_address = match s.source_address.unwrap_or_default() {
                SourceAddress::UseNodeIp => Some(my_ip.into()),
                SourceAddress::None => None,
            };
            c.rr_client = my_cluster.is_some()
                && !others
                    .iter()
                    .any(|o| IpAddr::V4(o.ip) == addr.ip && o.cluster_id == my_cluster);
            tune(&mut c);
            into.insert(
                addr.ip,
                DesiredPeer {
                    config: c,
                    kind,
                    source: owner.clone(),
                },
            );
            continue;
        }
        let Some(selector) = &s.peer_selector else {
            continue;
        };
        let selector = match Selector::parse(selector) {
            Ok(sel) => sel,
            Err(e) => {
                warnings.push(format!("{owner}: spec.peerSelector: {e}; skipped"));
                continue;
            }
        };
        let reverse = s.reverse_peering.unwrap_or_default() == ReversePeering::Auto
            && selector.matches(my_labels);
        for p in &others {
            let forward = applies_here && selector.matches(labels_of(p.name));
            let backward = reverse && s.selects_node(p.name, labels_of(p.name));
            if !forward && !backward {
                continue;
            }
            let mut c = node_session(p);
            tune(&mut c);
            into.insert(
                IpAddr::V4(p.ip),
                DesiredPeer {
                    config: c,
                    kind: role(p, kind),
                    source: format!("{owner} (node {})", p.name),
                },
            );
        }
    }
    let mut peers = mesh;
    peers.extend(global_peers);
    peers.extend(node_peers);

    let peer_routes = reachable_routes(model, me, my_labels, &mut warnings);

    let (originated, agent_routed) = originated(model, me, &global_spec);
    Desired {
        requested,
        speaker,
        peers,
        originated,
        agent_routed,
        peer_routes,
        warnings,
    }
}

/// The routes `reachableBy` asks for on node `me`: `peerIP`/32 via the gateway, for each
/// applicable `BGPPeer` (validation ensures both are of one family).
fn reachable_routes(
    model: &Model,
    me: &str,
    labels: &BTreeMap<String, String>,
    warnings: &mut Vec<String>,
) -> BTreeMap<IpNet, IpAddr> {
    let mut routes = BTreeMap::new();
    for peer in &model.bgp_peers {
        let s = &peer.spec;
        let (Some(addr), Some(gw)) = (s.peer_ip, s.reachable_by) else {
            continue;
        };
        if !s.selects_node(me, labels) {
            continue;
        }
        if addr.ip.is_ipv4() != gw.is_ipv4() {
            warnings.push(format!(
                "BGPPeer {}: spec.reachableBy {gw} and spec.peerIP {} are of different \
                 families; no route added",
                peer.metadata.name, addr.ip
            ));
            continue;
        }
        routes.insert(IpNet::from(addr.ip), gw);
    }
    routes
}

/// What this node advertises, and the pools whose routes the agent programs itself.
fn originated(
    model: &Model,
    me: &str,
    global: &margay_api::BGPConfigurationSpec,
) -> (BTreeSet<IpNet>, Vec<IpNet>) {
    let pools: Vec<&IPPool> = model.pools.iter().collect();
    let pool_of = |net: &IpNet| pools.iter().copied().find(|p| p.spec.cidr.contains(net));
    let exported = |net: &IpNet| pool_of(net).is_some_and(|p| !p.spec.disable_bgp_export);
    let mut out = BTreeSet::new();
    let mut mine: Vec<IpNet> = Vec::new();
    for block in &model.blocks {
        if block.host_affinity() != Some(me) || !block.cidr.addr().is_ipv4() {
            continue;
        }
        mine.push(block.cidr);
        if exported(&block.cidr) {
            out.insert(block.cidr);
        }
    }
    // Borrowed addresses: a local workload outside this node's blocks gets a /32 of its own
    // (more specific than the owner's block, so it wins everywhere).
    for wep in model.endpoints.iter().filter(|w| w.spec.node == me) {
        for net in &wep.spec.ip_networks {
            let host = IpNet::from(net.addr());
            if !host.addr().is_ipv4() || mine.iter().any(|b| b.contains(&host)) {
                continue;
            }
            if exported(&host) {
                out.insert(host);
            }
        }
    }
    for cidr in global
        .service_cluster_ips
        .iter()
        .chain(&global.service_external_ips)
        .chain(&global.service_load_balancer_ips)
    {
        if cidr.cidr.addr().is_ipv4() {
            out.insert(cidr.cidr.trunc());
        }
    }
    let agent_routed = model
        .pools
        .iter()
        .filter(|p| p.spec.vxlan_mode.is_enabled() || p.spec.ipip_mode.is_enabled())
        .map(|p| p.spec.cidr)
        .collect();
    (out, agent_routed)
}

// ---------------------------------------------------------------------------------------------
// The route sink: the kernel, minus what the agent routes itself
// ---------------------------------------------------------------------------------------------

struct Filtered<S> {
    sink: S,
    /// Every route the speaker wants installed.
    wanted: BTreeMap<IpNet, IpAddr>,
    /// Learned routes inside these are the agent's business: not installed.
    agent_routed: Vec<IpNet>,
    /// `reachableBy` routes, installed whatever the speaker says.
    peer_routes: BTreeMap<IpNet, IpAddr>,
}

impl<S: RouteSink> Filtered<S> {
    fn allowed(&self, prefix: &IpNet) -> bool {
        !self.agent_routed.iter().any(|p| p.contains(prefix))
            && !self.peer_routes.contains_key(prefix)
    }

    /// The changes that bring the kernel from `before` to the current filter and statics.
    fn refilter(
        &mut self,
        before_filter: &[IpNet],
        before_statics: &BTreeMap<IpNet, IpAddr>,
    ) -> Vec<RouteChange> {
        let was_allowed = |p: &IpNet| {
            !before_filter.iter().any(|f| f.contains(p)) && !before_statics.contains_key(p)
        };
        let mut changes = Vec::new();
        for (prefix, gw) in &self.peer_routes {
            if before_statics.get(prefix) != Some(gw) {
                changes.push(RouteChange::Install {
                    prefix: *prefix,
                    next_hop: *gw,
                });
            }
        }
        for prefix in before_statics.keys() {
            if !self.peer_routes.contains_key(prefix) {
                changes.push(match self.wanted.get(prefix) {
                    Some(gw) if self.allowed(prefix) => RouteChange::Install {
                        prefix: *prefix,
                        next_hop: *gw,
                    },
                    _ => RouteChange::Remove(*prefix),
                });
            }
        }
        for (prefix, gw) in &self.wanted {
            if before_statics.contains_key(prefix) || self.peer_routes.contains_key(prefix) {
                continue;
            }
            match (was_allowed(prefix), self.allowed(prefix)) {
                (false, true) => changes.push(RouteChange::Install {
                    prefix: *prefix,
                    next_hop: *gw,
                }),
                (true, false) => changes.push(RouteChange::Remove(*prefix)),
                _ => {}
            }
        }
        changes
    }
}

/// The speaker's [`RouteSink`], wrapping the kernel's: learned routes inside pools the agent
/// routes itself are held back (and removed if the pool's mode changes), and `reachableBy`
/// routes are added beside them. Clones share one table; the agent keeps one to change the
/// filter while the speaker runs.
pub struct FilteredSink<S> {
    inner: Arc<Mutex<Filtered<S>>>,
}

impl<S> Clone for FilteredSink<S> {
    fn clone(&self) -> Self {
        FilteredSink {
            inner: self.inner.clone(),
        }
    }
}

impl<S: RouteSink> FilteredSink<S> {
    pub fn new(sink: S, agent_routed: Vec<IpNet>) -> Self {
        FilteredSink {
            inner: Arc::new(Mutex::new(Filtered {
                sink,
                wanted: BTreeMap::new(),
                agent_routed,
                peer_routes: BTreeMap::new(),
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Filtered<S>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Learned routes in the kernel now (those the speaker installed and the filter let
    /// through).
    pub fn learned_routes(&self) -> usize {
        let f = self.lock();
        f.wanted.keys().filter(|p| f.allowed(p)).count()
    }

    /// Changes the pools the agent routes and the `reachableBy` routes; applies the
    /// difference at once.
    pub fn set_filter(
        &self,
        agent_routed: Vec<IpNet>,
        peer_routes: BTreeMap<IpNet, IpAddr>,
    ) -> Result<(), SinkError> {
        let mut f = self.lock();
        if f.agent_routed == agent_routed && f.peer_routes == peer_routes {
            return Ok(());
        }
        let before_filter = std::mem::replace(&mut f.agent_routed, agent_routed);
        let before_statics = std::mem::replace(&mut f.peer_routes, peer_routes);
        let changes = f.refilter(&before_filter, &before_statics);
        if changes.is_empty() {
            return Ok(());
        }
        f.sink.apply(&changes)
    }
}

impl<S: RouteSink> RouteSink for FilteredSink<S> {
    fn installed(&mut self) -> Result<Vec<IpNet>, SinkError> {
        let mut f = self.lock();
        let statics: BTreeSet<IpNet> = f.peer_routes.keys().copied().collect();
        Ok(f.sink
            .installed()?
            .into_iter()
            .filter(|p| !statics.contains(p))
            .collect())
    }

    fn apply(&mut self, changes: &[RouteChange]) -> Result<(), SinkError> {
        let mut f = self.lock();
        let mut out = Vec::with_capacity(changes.len());
        for change in changes {
            match *change {
                RouteChange::Install { prefix, next_hop } => {
                    f.wanted.insert(prefix, next_hop);
                    if f.allowed(&prefix) {
                        out.push(*change);
                    } else if !f.peer_routes.contains_key(&prefix) {
                        // Maybe installed before the pool's mode changed, or by a previous
                        // run: removing what is not there is not an error.
                        out.push(RouteChange::Remove(prefix));
                    }
                }
                RouteChange::Remove(prefix) => {
                    f.wanted.remove(&prefix);
                    if !f.peer_routes.contains_key(&prefix) {
                        out.push(*change);
                    }
                }
            }
        }
        if out.is_empty() {
            return Ok(());
        }
        f.sink.apply(&out)
    }
}

// ---------------------------------------------------------------------------------------------
// Running the speaker
// ---------------------------------------------------------------------------------------------

/// What `/status` says about a peer besides the speaker's own view.
#[derive(Debug, Clone)]
struct PeerMeta {
    kind: PeerType,
    source: String,
    port: u16,
    remote_as: u32,
}

#[derive(Debug, Default)]
struct Shared {
    meta: BTreeMap<IpAddr, PeerMeta>,
    /// The last desired state, for `/status`.
    summary: Value,
}

struct Running {
    speaker: Speaker,
    config: SpeakerConfig,
    peers: Vec<PeerConfig>,
    originated: BTreeSet<IpNet>,
    sink: FilteredSink<NetlinkSink>,
    refresher: tokio::task::JoinHandle<()>,
}

/// The agent's speaker: started, changed and stopped to match each sync's [`Desired`].
pub struct Bgp {
    /// `margay node run --bgp`: on even without BGP resources.
    forced: bool,
    running: Option<Running>,
    shared: Arc<Mutex<Shared>>,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
}

impl Bgp {
    pub fn new(forced: bool, health: Arc<Health>, metrics: Arc<Metrics>) -> Bgp {
        health.set_bgp(json!({"enabled": false}));
        Bgp {
            forced,
            running: None,
            shared: Arc::new(Mutex::new(Shared::default())),
            health,
            metrics,
        }
    }

    /// Brings the speaker to `desired`: starts it (when `--bgp` or the datastore asks for
    /// it), restarts it for a new identity, stops it when nothing asks for it any more, and
    /// hands it the peers, prefixes and install filter. Returns the errors to report, one
    /// line each.
    pub async fn sync(&mut self, desired: &Desired) -> Vec<String> {
        let mut errors = Vec::new();
        if !(self.forced || desired.requested) {
            if let Some(running) = self.running.take() {
                tracing::info!("BGP no longer configured: stopping the speaker");
                running.refresher.abort();
                running.speaker.shutdown().await;
                self.health.set_bgp(json!({"enabled": false}));
                self.metrics.set_bgp(&[], None);
            }
            return errors;
        }
        // Router id, AS, listen address and reflection are the speaker's own: a change
        // restarts it (gracefully: peers and the kernel keep the routes meanwhile).
        if let Some(running) = self.running.take_if(|r| r.config != desired.speaker) {
            tracing::info!(
                from = ?running.config,
                to = ?desired.speaker,
                "BGP identity changed: restarting the speaker"
            );
            running.refresher.abort();
            running.speaker.shutdown_for_restart().await;
        }
        if self.running.is_none() {
            match self.start(desired) {
                Ok(running) => self.running = Some(running),
                Err(e) => {
                    errors.push(format!("bgp: {e}"));
                    return errors;
                }
            }
        }
        let Some(running) = self.running.as_mut() else {
            return errors;
        };
        if let Err(e) = running
            .sink
            .set_filter(desired.agent_routed.clone(), desired.peer_routes.clone())
        {
            errors.push(format!("bgp: route: {e}"));
        }
        let peers: Vec<PeerConfig> = desired.peers.values().map(|p| p.config.clone()).collect();
        if peers != running.peers {
            tracing::info!(peers = peers.len(), "BGP peers changed");
            running.speaker.set_peers(peers.clone());
            running.peers = peers;
        }
        if desired.originated != running.originated {
            tracing::debug!(
                prefixes = desired.originated.len(),
                "BGP originated changed"
            );
            running.speaker.set_originated(desired.originated.clone());
            running.originated = desired.originated.clone();
        }
        {
            let mut shared = self.shared.lock().unwrap_or_else(|e| e.into_inner());
            shared.meta = desired
                .peers
                .iter()
                .map(|(addr, p)| {
                    (
                        *addr,
                        PeerMeta {
                            kind: p.kind,
                            source: p.source.clone(),
                            port: p.config.port,
                            remote_as: p.config.remote_as,
                        },
                    )
                })
                .collect();
            shared.summary = desired.to_json();
        }
        let (speaker, sink) = (running.speaker.clone(), running.sink.clone());
        refresh(&speaker, &sink, &self.shared, &self.health, &self.metrics).await;
        errors
    }

    fn start(&self, desired: &Desired) -> Result<Running, String> {
        let sock = RouteSocket::new().map_err(|e| format!("route socket: {e}"))?;
        let sink = FilteredSink::new(
            NetlinkSink::new(sock, Route::PROTO_MARGAY_BGP),
            desired.agent_routed.clone(),
        );
        let speaker =
            Speaker::start(desired.speaker.clone(), sink.clone()).map_err(|e| e.to_string())?;
        tracing::info!(
            router_id = %desired.speaker.router_id,
            asn = desired.speaker.asn,
            listen = %desired.speaker.listen,
            cluster_id = ?desired.speaker.cluster_id,
            "BGP speaker started"
        );
        let refresher = tokio::spawn({
            let (speaker, sink, shared, health, metrics) = (
                speaker.clone(),
                sink.clone(),
                self.shared.clone(),
                self.health.clone(),
                self.metrics.clone(),
            );
            async move {
                loop {
                    tokio::time::sleep(REFRESH).await;
                    refresh(&speaker, &sink, &shared, &health, &metrics).await;
                }
            }
        });
        Ok(Running {
            speaker,
            config: desired.speaker.clone(),
            peers: Vec::new(),
            originated: BTreeSet::new(),
            sink,
            refresher,
        })
    }
}

/// `/status`'s `bgp` object and the BGP metrics, from the speaker now.
async fn refresh(
    speaker: &Speaker,
    sink: &FilteredSink<NetlinkSink>,
    shared: &Mutex<Shared>,
    health: &Health,
    metrics: &Metrics,
) {
    let peers = speaker.status().await;
    let counters = speaker.counters();
    let (meta, summary) = {
        let s = shared.lock().unwrap_or_else(|e| e.into_inner());
        (s.meta.clone(), s.summary.clone())
    };
    let now = SystemTime::now();
    let rows: Vec<Value> = peers
        .iter()
        .map(|p| peer_json(p, meta.get(&p.address), now))
        .collect();
    let labelled: Vec<(String, &'static str, &PeerStatus)> = peers
        .iter()
        .map(|p| {
            (
                p.address.to_string(),
                meta.get(&p.address).map_or("unknown", |m| m.kind.as_str()),
                p,
            )
        })
        .collect();
    metrics.set_bgp(&labelled, Some(counters));
    let c = counters;
    health.set_bgp(json!({
        "enabled": true,
        "routerId": summary["routerId"],
        "asNumber": summary["asNumber"],
        "listen": summary["listen"],
        "clusterId": summary["clusterId"],
        "originated": summary["originated"],
        "warnings": summary["warnings"],
        "peers": rows,
        "established": peers.iter().filter(|p| p.state == State::Established).count(),
        // Learned routes in the kernel (protocol 78).
        "routes": sink.learned_routes(),
        "counters": {
            "messagesReceived": c.messages_received,
            "messagesSent": c.messages_sent,
            "updatesReceived": c.updates_received,
            "updatesSent": c.updates_sent,
            "sessionsEstablished": c.sessions_established,
            "sessionsDropped": c.sessions_dropped,
            "routesInstalled": c.routes_installed,
            "routesRemoved": c.routes_removed,
            "sinkErrors": c.sink_errors,
        },
    }));
}

fn state_name(s: State) -> &'static str {
    match s {
        State::Idle => "Idle",
        State::Connect => "Connect",
        State::Active => "Active",
        State::OpenSent => "OpenSent",
        State::OpenConfirm => "OpenConfirm",
        State::Established => "Established",
    }
}

fn peer_json(p: &PeerStatus, meta: Option<&PeerMeta>, now: SystemTime) -> Value {
    let since = p.established_since;
    json!({
        "address": p.address.to_string(),
        "port": meta.map(|m| m.port),
        "asNumber": meta.map(|m| m.remote_as),
        "type": meta.map_or("unknown", |m| m.kind.as_str()),
        "source": meta.map(|m| m.source.clone()),
        "state": state_name(p.state),
        "since": since.map(|t| humantime::format_rfc3339_seconds(t).to_string()),
        "uptimeSeconds": since.map(|t| now.duration_since(t).unwrap_or_default().as_secs()),
        "prefixesReceived": p.prefixes_received,
        "prefixesAccepted": p.prefixes_accepted,
        "prefixesAdvertised": p.prefixes_advertised,
        "messagesReceived": p.messages_received,
        "messagesSent": p.messages_sent,
        "lastError": p.last_error,
    })
}
