//! The difference between the plan and what the kernel has, as a list of operations in the
//! order they can be applied. Pure: what is there comes in as [`Observed`].

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

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

/// How long a route to a workload interface may exist with no endpoint to account for it.
pub const WORKLOAD_ROUTE_GRACE: Duration = Duration::from_secs(10);

/// Holds back the deletion of workload routes the plan does not know yet. The CNI plugin
/// installs a pod's route before the endpoint it writes reaches the agent; deleting the route
/// in that window would cut the new pod off until the endpoint arrives (Felix waits likewise).
#[derive(Debug, Default)]
pub struct Grace {
    first_seen: BTreeMap<ipnet::IpNet, Instant>,
}

impl Grace {
    /// The operations to apply now, and when the earliest held deletion falls due.
    pub fn hold(&mut self, ops: Vec<Op>, now: Instant) -> (Vec<Op>, Option<Instant>) {
        let mut unexpected = BTreeMap::new();
        let mut due = None::<Instant>;
        let mut apply = Vec::with_capacity(ops.len());
        for op in ops {
            if let Op::DeleteRoute(RouteSpec {
                dst,
                target: RouteTarget::Device { .. },
            }) = &op
            {
                let since = self.first_seen.get(dst).copied().unwrap_or(now);
                let falls_due = since + WORKLOAD_ROUTE_GRACE;
                if now < falls_due {
                    unexpected.insert(*dst, since);
                    due = Some(due.map_or(falls_due, |d| d.min(falls_due)));
                    continue;
                }
            }
            apply.push(op);
        }
        // A route the plan came to want (or that went away) starts afresh next time.
        self.first_seen = unexpected;
        (apply, due)
    }
}

#[cfg(test)]
mod grace_tests {
    use super::*;

    fn pod(dst: &str) -> Op {
        Op::DeleteRoute(RouteSpec {
            dst: dst.parse().unwrap(),
            target: RouteTarget::Device { dev: "mgy1".into() },
        })
    }

    #[test]
    fn unknown_workload_routes_are_deleted_only_after_the_grace_period() {
        let block = Op::DeleteRoute(RouteSpec {
            dst: "10.0.1.0/26".parse().unwrap(),
            target: RouteTarget::Blackhole,
        });
        let mut grace = Grace::default();
        let t0 = Instant::now();
        // Other deletions pass at once; the workload route is held, due after the period.
        let (ops, due) = grace.hold(vec![block.clone(), pod("10.0.0.5/32")], t0);
        assert_eq!(ops, [block]);
        assert_eq!(due, Some(t0 + WORKLOAD_ROUTE_GRACE));
        let (ops, _) = grace.hold(vec![pod("10.0.0.5/32")], t0 + Duration::from_secs(5));
        assert!(ops.is_empty());
        // Its endpoint arrived (no deletion asked): the clock restarts if it is unknown again.
        let (ops, due) = grace.hold(vec![], t0 + Duration::from_secs(6));
        assert!(ops.is_empty() && due.is_none());
        let t1 = t0 + Duration::from_secs(7);
        let (ops, _) = grace.hold(vec![pod("10.0.0.5/32")], t1);
        assert!(ops.is_empty());
        let (ops, due) = grace.hold(vec![pod("10.0.0.5/32")], t1 + WORKLOAD_ROUTE_GRACE);
        assert_eq!(ops, [pod("10.0.0.5/32")]);
        assert_eq!(due, None);
    }
}
