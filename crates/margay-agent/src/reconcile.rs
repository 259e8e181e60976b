//! The difference between the plan and what the kernel has, as a list of operations in the
//! order they can be applied. Pure: what is there comes in as [`Observed`].

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use crate::plan::{IpipDevice, Plan, RouteSpec, RouteTarget, VxlanDevice, VXLAN_DEVICE};

/// The VXLAN device as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedVxlan {
    pub vni: u32,
    pub port: u16,
    pub local: Option<Ipv4Addr>,
    pub learning: bool,
    pub mtu: u32,
    pub mac: [u8; 6],
    pub up: bool,
    pub addresses: Vec<Ipv4Net>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedIpip {
    pub mtu: u32,
    pub up: bool,
    pub addresses: Vec<Ipv4Net>,
}

/// What is programmed now: only what the agent owns (routes with its protocol number, its
/// devices and their permanent entries), plus the names of existing links.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    pub routes: BTreeSet<RouteSpec>,
    pub vxlan: Option<ObservedVxlan>,
    pub ipip: Option<ObservedIpip>,
    pub neighbours: BTreeSet<(Ipv4Addr, [u8; 6])>,
    pub fdb: BTreeSet<([u8; 6], Ipv4Addr)>,
    pub links: BTreeSet<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    CreateVxlan(VxlanDevice),
    DeleteVxlan,
    SetVxlanMtu(u32),
    SetVxlanMac([u8; 6]),
    AddVxlanAddress(Ipv4Addr),
    SetVxlanUp,
    /// tunl0: MTU, address and up, all at once (idempotent).
    SetupIpip(IpipDevice),
    ReplaceNeighbour(Ipv4Addr, [u8; 6]),
    ReplaceFdb([u8; 6], Ipv4Addr),
    ReplaceRoute(RouteSpec),
    DeleteRoute(RouteSpec),
    DeleteNeighbour(Ipv4Addr, [u8; 6]),
    DeleteFdb([u8; 6], Ipv4Addr),
}

impl Op {
    /// The metric label of a failed operation.
    pub fn kind(&self) -> &'static str {
        match self {
            Op::CreateVxlan(_)
            | Op::DeleteVxlan
            | Op::SetVxlanMtu(_)
            | Op::SetVxlanMac(_)
            | Op::AddVxlanAddress(_)
            | Op::SetVxlanUp
            | Op::SetupIpip(_) => "link",
            Op::ReplaceNeighbour(..) | Op::DeleteNeighbour(..) => "neighbour",
            Op::ReplaceFdb(..) | Op::DeleteFdb(..) => "fdb",
            Op::ReplaceRoute(_) | Op::DeleteRoute(_) => "route",
        }
    }
}

fn route_dev(route: &RouteSpec) -> Option<&str> {
    match &route.target {
        RouteTarget::Blackhole => None,
        RouteTarget::Device { dev } | RouteTarget::Via { dev, .. } => Some(dev),
    }
}

/// Device attributes that cannot be changed in place.
fn vxlan_identity_differs(want: &VxlanDevice, have: &ObservedVxlan) -> bool {
    want.vni != have.vni
        || want.port != have.port
        || Some(want.local) != have.local
        || have.learning
}

pub fn diff(plan: &Plan, observed: &Observed) -> Vec<Op> {
    let mut ops = Vec::new();
    // When the device is (re)created, nothing observed on it survives.
    let mut vxlan_fresh = false;
    match (&plan.vxlan, &observed.vxlan) {
        (Some(want), None) => {
            ops.push(Op::CreateVxlan(want.clone()));
            vxlan_fresh = true;
        }
        (Some(want), Some(have)) if vxlan_identity_differs(want, have) => {
            ops.push(Op::DeleteVxlan);
            ops.push(Op::CreateVxlan(want.clone()));
            vxlan_fresh = true;
        }
        (Some(want), Some(have)) => {
            if want.mtu != have.mtu {
                ops.push(Op::SetVxlanMtu(want.mtu));
            }
            if want.mac != have.mac {
                ops.push(Op::SetVxlanMac(want.mac));
            }
            if !have.addresses.iter().any(|a| a.addr() == want.address) {
                ops.push(Op::AddVxlanAddress(want.address));
            }
            if !have.up {
                ops.push(Op::SetVxlanUp);
            }
        }
        (None, _) => {}
    }
    if let Some(want) = &plan.ipip {
        let ok = observed.ipip.as_ref().is_some_and(|have| {
            have.up
                && have.mtu == want.mtu
                && have.addresses.iter().any(|a| a.addr() == want.address)
        });
        if !ok {
            ops.push(Op::SetupIpip(want.clone()));
        }
    }

    let kept = |set_has: bool| set_has && !vxlan_fresh;
    for &(ip, mac) in &plan.neighbours {
        if !kept(observed.neighbours.contains(&(ip, mac))) {
            ops.push(Op::ReplaceNeighbour(ip, mac));
        }
    }
    for &(mac, ip) in &plan.fdb {
        if !kept(observed.fdb.contains(&(mac, ip))) {
            ops.push(Op::ReplaceFdb(mac, ip));
        }
    }

    let device_exists =
        |dev: &str| observed.links.contains(dev) || (dev == VXLAN_DEVICE && plan.vxlan.is_some());
    let on_fresh_device = |r: &RouteSpec| vxlan_fresh && route_dev(r) == Some(VXLAN_DEVICE);
    let wanted: BTreeSet<&RouteSpec> = plan
        .routes
        .iter()
        .filter(|r| route_dev(r).is_none_or(device_exists))
        .collect();
    for route in &wanted {
        if !observed.routes.contains(*route) || on_fresh_device(route) {
            ops.push(Op::ReplaceRoute((*route).clone()));
        }
    }
    let wanted_dsts: BTreeSet<_> = wanted.iter().map(|r| r.dst).collect();
    for route in &observed.routes {
        if !wanted_dsts.contains(&route.dst) {
            ops.push(Op::DeleteRoute(route.clone()));
        }
    }

    if !vxlan_fresh {
        for &(ip, mac) in &observed.neighbours {
            if !plan.neighbours.contains(&(ip, mac)) {
                ops.push(Op::DeleteNeighbour(ip, mac));
            }
        }
        for &(mac, ip) in &observed.fdb {
            if !plan.fdb.contains(&(mac, ip)) {
                ops.push(Op::DeleteFdb(mac, ip));
            }
        }
    }
    if plan.vxlan.is_none() && observed.vxlan.is_some() {
        ops.push(Op::DeleteVxlan);
    }
    ops
}
