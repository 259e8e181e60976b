//! The desired dataplane, computed from the model as plain data: no I/O here, so every mode
//! (VXLAN, IPIP, CrossSubnet, Never) is unit-tested against golden plans.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};

use ipnet::{IpNet, Ipv4Net};
use margay_api::{EncapMode, IPPool, Node};
use margay_nft::NodeRules;
use serde::Serialize;

use crate::model::Model;

pub const VXLAN_DEVICE: &str = "vxlan.margay";
pub const IPIP_DEVICE: &str = "tunl0";
/// Per-packet overhead subtracted from the host MTU, as Calico does.
pub const VXLAN_OVERHEAD: u32 = 50;
pub const IPIP_OVERHEAD: u32 = 20;

/// Where a route sends traffic.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "camelCase", tag = "type")]
pub enum RouteTarget {
    /// A local block: drop what no workload route claims (and a stable prefix for BGP).
    Blackhole,
    /// A local workload, straight to its veth.
    Device { dev: String },
    /// A remote node: via its tunnel address over a tunnel device (onlink), or via its
    /// address directly when it shares our subnet.
    Via {
        gateway: IpAddr,
        dev: String,
        onlink: bool,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct RouteSpec {
    pub dst: IpNet,
    pub target: RouteTarget,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VxlanDevice {
    pub vni: u32,
    pub port: u16,
    /// The node's own address: the VTEP's source and where remote FDB entries point.
    pub local: Ipv4Addr,
    pub mtu: u32,
    pub mac: [u8; 6],
    /// The node's tunnel address (from IPAM), put on the device as a /32.
    pub address: Ipv4Addr,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct IpipDevice {
    pub mtu: u32,
    pub address: Ipv4Addr,
}

/// The node's side of the plan: who it is and what its uplink looks like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    pub node: String,
    /// The node's address with its subnet's prefix (decides CrossSubnet).
    pub ip: Ipv4Net,
    /// The interface holding `ip`; direct routes to same-subnet nodes leave through it.
    pub uplink: String,
    pub uplink_mtu: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Plan {
    pub routes: BTreeSet<RouteSpec>,
    pub vxlan: Option<VxlanDevice>,
    pub ipip: Option<IpipDevice>,
    /// On the VXLAN device: remote tunnel address → remote VTEP MAC (permanent).
    pub neighbours: BTreeSet<(Ipv4Addr, [u8; 6])>,
    /// On the VXLAN device: remote VTEP MAC → remote node address.
    pub fdb: BTreeSet<([u8; 6], Ipv4Addr)>,
    #[serde(skip)]
    pub nat: NodeRules,
    /// What the CNI plugin should give pods: the smallest MTU of the encapsulations in use.
    pub pod_mtu: u32,
    /// Why parts of the model could not be planned (a remote node without an address…).
    pub warnings: Vec<String>,
}

/// How traffic to one remote node is carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Carrier {
    Vxlan,
    Ipip,
    Direct,
}

fn encap_for(pool: &IPPool, same_subnet: bool) -> Option<Carrier> {
    let pick = |mode: EncapMode, carrier: Carrier| match mode {
        EncapMode::Always => Some(carrier),
        EncapMode::CrossSubnet if same_subnet => Some(Carrier::Direct),
        EncapMode::CrossSubnet => Some(carrier),
        EncapMode::Never => None,
    };
    pick(pool.spec.vxlan_mode, Carrier::Vxlan).or_else(|| pick(pool.spec.ipip_mode, Carrier::Ipip))
}

fn node_ipv4(node: &Node) -> Option<Ipv4Addr> {
    match node.ipv4_address()?.addr() {
        IpAddr::V4(v4) => Some(v4),
        IpAddr::V6(_) => None,
    }
}

fn vxlan_mac(node: &Node) -> Option<[u8; 6]> {
    node.spec.vxlan_tunnel_mac_addr.map(|m| m.0)
}

fn ipip_addr(node: &Node) -> Option<Ipv4Addr> {
    node.spec.bgp.as_ref()?.ipv4_ipip_tunnel_addr
}

pub fn plan(model: &Model, host: &Host) -> Plan {
    let mut out = Plan::default();
    let me = host.node.as_str();
    let pools: Vec<&IPPool> = model.pools.iter().collect();
    let pool_of = |net: &IpNet| pools.iter().copied().find(|p| p.spec.cidr.contains(net));
    let vxlan_in_use = pools.iter().any(|p| {
        !p.spec.disabled && p.spec.vxlan_mode.is_enabled() && p.spec.cidr.addr().is_ipv4()
    });
    let ipip_in_use = pools
        .iter()
        .any(|p| !p.spec.disabled && p.spec.ipip_mode.is_enabled());
    let my_node = model.nodes.get(me);
    let config = &model.config;

    if vxlan_in_use {
        match my_node.and_then(|n| Some((n.spec.ipv4_vxlan_tunnel_addr?, vxlan_mac(n)?))) {
            Some((address, mac)) => {
                out.vxlan = Some(VxlanDevice {
                    vni: config.vxlan_vni(),
                    port: config.vxlan_port(),
                    local: host.ip.addr(),
                    mtu: config
                        .vxlan_mtu()
                        .unwrap_or(host.uplink_mtu.saturating_sub(VXLAN_OVERHEAD)),
                    mac,
                    address,
                })
            }
            None => out
                .warnings
                .push(format!("node {me} has no VXLAN tunnel address or MAC yet")),
        }
    }
    if ipip_in_use {
        match my_node.and_then(ipip_addr) {
            Some(address) => {
                out.ipip = Some(IpipDevice {
                    mtu: config
                        .ipip_mtu()
                        .unwrap_or(host.uplink_mtu.saturating_sub(IPIP_OVERHEAD)),
                    address,
                })
            }
            None => out
                .warnings
                .push(format!("node {me} has no IPIP tunnel address yet")),
        }
    }
    out.pod_mtu = [
        out.vxlan.as_ref().map(|v| v.mtu),
        out.ipip.as_ref().map(|i| i.mtu),
    ]
    .into_iter()
    .flatten()
    .min()
    .unwrap_or(host.uplink_mtu);

    // Remote VTEPs: every other node's tunnel address → MAC, MAC → node address.
    if let Some(dev) = &out.vxlan {
        for (name, node) in &model.nodes {
            if name == me {
                continue;
            }
            if let (Some(tunnel), Some(mac), Some(ip)) = (
                node.spec.ipv4_vxlan_tunnel_addr,
                vxlan_mac(node),
                node_ipv4(node),
            ) {
                if mac != dev.mac {
                    out.neighbours.insert((tunnel, mac));
                    out.fdb.insert((mac, ip));
                }
            }
        }
    }

    // How to reach a remote node's addresses from a given pool.
    let route_to = |out: &mut Plan, dst: IpNet, owner: &str| {
        let Some(pool) = pool_of(&dst) else { return };
        let Some(node) = model.nodes.get(owner) else {
            out.warnings.push(format!(
                "{dst} belongs to node {owner}, which does not exist"
            ));
            return;
        };
        let Some(node_ip) = node_ipv4(node) else {
            out.warnings.push(format!(
                "node {owner} has no IPv4 address; {dst} is not routed"
            ));
            return;
        };
        let same_subnet = host.ip.trunc().contains(&node_ip);
        let target = match encap_for(pool, same_subnet) {
            None => return, // Never/Never: BGP's routes, not ours.
            Some(Carrier::Direct) => RouteTarget::Via {
                gateway: node_ip.into(),
                dev: host.uplink.clone(),
                onlink: false,
            },
            Some(Carrier::Vxlan) => {
                let tunnel = node
                    .spec
                    .ipv4_vxlan_tunnel_addr
                    .filter(|_| out.vxlan.is_some());
                let Some(tunnel) = tunnel else {
                    out.warnings.push(format!(
                        "no VXLAN path to node {owner}; {dst} is not routed"
                    ));
                    return;
                };
                RouteTarget::Via {
                    gateway: tunnel.into(),
                    dev: VXLAN_DEVICE.to_owned(),
                    onlink: true,
                }
            }
            Some(Carrier::Ipip) => {
                if out.ipip.is_none() {
                    out.warnings
                        .push(format!("no IPIP path to node {owner}; {dst} is not routed"));
                    return;
                }
                RouteTarget::Via {
                    gateway: node_ip.into(),
                    dev: IPIP_DEVICE.to_owned(),
                    onlink: true,
                }
            }
        };
        out.routes.insert(RouteSpec { dst, target });
    };

    // Blocks: ours are blackholed, remote ones routed to their node.
    let mut block_owner: BTreeMap<IpNet, &str> = BTreeMap::new();
    for block in &model.blocks {
        let Some(owner) = block.host_affinity() else {
            continue;
        };
        let cidr = block.cidr;
        block_owner.insert(cidr, owner);
        if owner == me {
            out.routes.insert(RouteSpec {
                dst: cidr,
                target: RouteTarget::Blackhole,
            });
        } else if cidr.addr().is_ipv4() {
            route_to(&mut out, cidr, owner);
        }
    }

    // Workloads: ours to their veth; a remote one whose address is outside its node's blocks
    // (borrowed) gets its own /32 to that node.
    for wep in &model.endpoints {
        let s = &wep.spec;
        for net in &s.ip_networks {
            let host_net = IpNet::from(net.addr());
            if s.node == me {
                if !s.interface_name.is_empty() {
                    out.routes.insert(RouteSpec {
                        dst: host_net,
                        target: RouteTarget::Device {
                            dev: s.interface_name.clone(),
                        },
                    });
                }
                continue;
            }
            // Blocks never overlap, so the only candidate is the last one starting at or
            // before the address: a lookup, not a scan of every block per endpoint.
            let in_own_block = block_owner
                .range(..=host_net)
                .next_back()
                .is_some_and(|(cidr, owner)| *owner == s.node && cidr.contains(&host_net));
            if !in_own_block && host_net.addr().is_ipv4() {
                route_to(&mut out, host_net, &s.node);
            }
        }
    }

    out.nat = nat_rules(
        model,
        out.vxlan.as_ref().map(|v| v.port),
        out.ipip.is_some(),
    );
    out
}

fn nat_rules(model: &Model, vxlan_port: Option<u16>, ipip: bool) -> NodeRules {
    let mut rules = NodeRules::default();
    for pool in model.pools.iter().filter(|p| !p.spec.disabled) {
        match pool.spec.cidr {
            IpNet::V4(v4) => {
                rules.all_pools_v4.push(v4);
                if pool.spec.nat_outgoing {
                    rules.nat_outgoing_v4.push(v4);
                }
            }
            IpNet::V6(v6) => {
                rules.all_pools_v6.push(v6);
                if pool.spec.nat_outgoing {
                    rules.nat_outgoing_v6.push(v6);
                }
            }
        }
    }
    rules.cluster_nodes_v4 = model.nodes.values().filter_map(node_ipv4).collect();
    rules.vxlan_port = vxlan_port;
    rules.ipip = ipip;
    rules
}
