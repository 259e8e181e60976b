//! The seam between the agent's logic and the kernel: read what the agent owns, apply one
//! operation. [`LinuxKernel`] does it over rtnetlink; tests use a fake.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use ipnet::{IpNet, Ipv4Net};
use margay_sys::netlink::{
    FdbEntry, Link, Neighbour, Route, RouteScope, RouteSocket, RouteType, VxlanRequest,
};

use crate::plan::{RouteSpec, RouteTarget, IPIP_DEVICE, VXLAN_DEVICE};
use crate::reconcile::{Observed, ObservedIpip, ObservedVxlan, Op};

/// `NUD_PERMANENT`: the only neighbour entries the agent writes, and so the only ones it owns.
const NUD_PERMANENT: u16 = 0x80;

pub trait Kernel {
    fn observe(&mut self) -> Result<Observed, margay_sys::Error>;
    fn apply(&mut self, op: &Op) -> Result<(), margay_sys::Error>;
}

/// The real kernel, in the calling thread's network namespace.
pub struct LinuxKernel {
    sock: RouteSocket,
    /// Interface name → index, from the last observation (and devices made since).
    index: BTreeMap<String, u32>,
}

impl LinuxKernel {
    pub fn new() -> Result<LinuxKernel, margay_sys::Error> {
        Ok(LinuxKernel {
            sock: RouteSocket::new()?,
            index: BTreeMap::new(),
        })
    }

    fn index_of(&mut self, name: &str) -> Result<u32, margay_sys::Error> {
        if let Some(i) = self.index.get(name) {
            return Ok(*i);
        }
        let link = self
            .sock
            .link_by_name(name)?
            .ok_or_else(|| margay_sys::Error::Invalid {
                op: format!("finding {name}"),
                reason: "no such interface".into(),
            })?;
        self.index.insert(name.to_owned(), link.index);
        Ok(link.index)
    }

    fn ipv4_addresses(&mut self, index: u32) -> Result<Vec<Ipv4Net>, margay_sys::Error> {
        Ok(self
            .sock
            .addresses(Some(index))?
            .into_iter()
            .filter_map(|(_, a)| match a {
                IpNet::V4(v4) => Some(v4),
                IpNet::V6(_) => None,
            })
            .collect())
    }

    fn kernel_route(&mut self, spec: &RouteSpec) -> Result<Route, margay_sys::Error> {
        let (kind, gateway, oif, scope, onlink) = match &spec.target {
            RouteTarget::Blackhole => (
                RouteType::Blackhole,
                None,
                None,
                RouteScope::Universe,
                false,
            ),
            RouteTarget::Device { dev } => (
                RouteType::Unicast,
                None,
                Some(self.index_of(dev)?),
                RouteScope::Link,
                false,
            ),
            RouteTarget::Via {
                gateway,
                dev,
                onlink,
            } => (
                RouteType::Unicast,
                Some(*gateway),
                Some(self.index_of(dev)?),
                RouteScope::Universe,
                *onlink,
            ),
        };
        Ok(Route {
            destination: spec.dst,
            gateway,
            oif,
            scope,
            table: Route::MAIN_TABLE,
            protocol: Route::PROTO_MARGAY,
            kind,
            onlink,
        })
    }

    fn add_address_once(&mut self, index: u32, ip: Ipv4Addr) -> Result<(), margay_sys::Error> {
        match self.sock.add_address(index, IpNet::from(IpAddr::V4(ip))) {
            Err(e) if e.is_exists() => Ok(()),
            other => other,
        }
    }
}

fn observed_vxlan(link: &Link, addresses: Vec<Ipv4Net>) -> Option<ObservedVxlan> {
    let info = link.vxlan.as_ref()?;
    Some(ObservedVxlan {
        vni: info.vni,
        port: info.port,
        local: match info.local {
            Some(IpAddr::V4(v4)) => Some(v4),
            _ => None,
        },
        learning: info.learning,
        mtu: link.mtu,
        mac: link.mac.unwrap_or_default(),
        up: link.up,
        addresses,
    })
}

impl Kernel for LinuxKernel {
    fn observe(&mut self) -> Result<Observed, margay_sys::Error> {
        let links = self.sock.links()?;
        self.index = links.iter().map(|l| (l.name.clone(), l.index)).collect();
        let names: BTreeMap<u32, String> =
            links.iter().map(|l| (l.index, l.name.clone())).collect();
        let mut observed = Observed {
            links: self.index.keys().cloned().collect(),
            ..Default::default()
        };
        if let Some(link) = links.iter().find(|l| l.name == VXLAN_DEVICE) {
            let addresses = self.ipv4_addresses(link.index)?;
            observed.vxlan = observed_vxlan(link, addresses);
            for n in self.sock.neighbours(Some(link.index))? {
                if let (IpAddr::V4(ip), Some(mac)) = (n.ip, n.mac) {
                    if n.state & NUD_PERMANENT != 0 {
                        observed.neighbours.insert((ip, mac));
                    }
                }
            }
            for e in self.sock.fdb(link.index)? {
                if let Some(IpAddr::V4(dst)) = e.dst {
                    observed.fdb.insert((e.mac, dst));
                }
            }
        }
        if let Some(link) = links.iter().find(|l| l.name == IPIP_DEVICE) {
            observed.ipip = Some(ObservedIpip {
                mtu: link.mtu,
                up: link.up,
                addresses: self.ipv4_addresses(link.index)?,
            });
        }
        for ipv6 in [false, true] {
            for r in self.sock.routes(ipv6)? {
                if r.protocol != Route::PROTO_MARGAY {
                    continue;
                }
                let dev = r.oif.and_then(|i| names.get(&i).cloned());
                let target = match (r.kind, r.gateway, dev) {
                    (RouteType::Blackhole, _, _) => RouteTarget::Blackhole,
                    (_, Some(gateway), Some(dev)) => RouteTarget::Via {
                        gateway,
                        dev,
                        onlink: r.onlink,
                    },
                    (_, None, Some(dev)) => RouteTarget::Device { dev },
                    // Ours but unreadable as a plan entry: reported so the diff removes it.
                    (_, _, None) => RouteTarget::Device { dev: String::new() },
                };
                observed.routes.insert(RouteSpec {
                    dst: r.destination,
                    target,
                });
            }
        }
        Ok(observed)
    }

    fn apply(&mut self, op: &Op) -> Result<(), margay_sys::Error> {
        match op {
            Op::CreateVxlan(d) => {
                let link = self.sock.create_vxlan(&VxlanRequest {
                    name: VXLAN_DEVICE,
                    vni: d.vni,
                    port: d.port,
                    local: Some(IpAddr::V4(d.local)),
                    parent_index: None,
                    mtu: Some(d.mtu),
                    mac: Some(d.mac),
                    learning: false,
                })?;
                self.index.insert(VXLAN_DEVICE.to_owned(), link.index);
                // An IPv4 VTEP needs no IPv6 link-local address; without one, no kernel
                // route appears on it seconds later (after DAD), so the routing table
                // settles as soon as the agent is done.
                let gen_mode = format!("net/ipv6/conf/{VXLAN_DEVICE}/addr_gen_mode");
                if let Err(e) = margay_sys::sysctl::write(&gen_mode, "1") {
                    tracing::debug!(error = %e, "IPv6 off on this host; nothing to disable");
                }
                self.add_address_once(link.index, d.address)?;
                self.sock.set_up(link.index)
            }
            Op::DeleteVxlan => {
                let index = self.index_of(VXLAN_DEVICE)?;
                self.index.remove(VXLAN_DEVICE);
                self.sock.delete_link(index)
            }
            Op::SetVxlanMtu(mtu) => {
                let index = self.index_of(VXLAN_DEVICE)?;
                self.sock.set_mtu(index, *mtu)
            }
            Op::SetVxlanMac(mac) => {
                let index = self.index_of(VXLAN_DEVICE)?;
                self.sock.set_mac(index, *mac)
            }
            Op::AddVxlanAddress(ip) => {
                let index = self.index_of(VXLAN_DEVICE)?;
                self.add_address_once(index, *ip)
            }
            Op::SetVxlanUp => {
                let index = self.index_of(VXLAN_DEVICE)?;
                self.sock.set_up(index)
            }
            Op::SetupIpip(d) => {
                let index = match self.sock.link_by_name(IPIP_DEVICE)? {
                    Some(link) => link.index,
                    None => self.sock.create_ipip(IPIP_DEVICE, Some(d.mtu), None)?.index,
                };
                self.index.insert(IPIP_DEVICE.to_owned(), index);
                self.sock.set_mtu(index, d.mtu)?;
                self.add_address_once(index, d.address)?;
                self.sock.set_up(index)
            }
            Op::ReplaceNeighbour(ip, mac) | Op::DeleteNeighbour(ip, mac) => {
                let n = Neighbour {
                    index: self.index_of(VXLAN_DEVICE)?,
                    ip: IpAddr::V4(*ip),
                    mac: Some(*mac),
                    state: NUD_PERMANENT,
                };
                if matches!(op, Op::ReplaceNeighbour(..)) {
                    self.sock.add_neighbour(&n)
                } else {
                    self.sock.delete_neighbour(&n)
                }
            }
            Op::ReplaceFdb(mac, ip) | Op::DeleteFdb(mac, ip) => {
                let e = FdbEntry {
                    index: self.index_of(VXLAN_DEVICE)?,
                    mac: *mac,
                    dst: Some(IpAddr::V4(*ip)),
                };
                if matches!(op, Op::ReplaceFdb(..)) {
                    self.sock.replace_fdb(&e)
                } else {
                    self.sock.delete_fdb(&e)
                }
            }
            Op::ReplaceRoute(spec) => {
                let route = self.kernel_route(spec)?;
                self.sock.replace_route(&route)
            }
            Op::DeleteRoute(spec) => {
                let mut route = Route {
                    destination: spec.dst,
                    gateway: None,
                    oif: None,
                    scope: RouteScope::Universe,
                    table: Route::MAIN_TABLE,
                    protocol: Route::PROTO_MARGAY,
                    kind: RouteType::Unicast,
                    onlink: false,
                };
                if let RouteTarget::Blackhole = spec.target {
                    route.kind = RouteType::Blackhole;
                }
                match self.sock.delete_route(&route) {
                    Err(e) if e.is_not_found() => Ok(()),
                    other => other,
                }
            }
        }
    }
}
