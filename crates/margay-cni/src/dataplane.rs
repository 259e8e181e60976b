//! Wiring a pod the way Calico does: a veth whose host end has MAC ee:ee:ee:ee:ee:ee and
//! answers ARP for everything (proxy ARP), /32 (/128) addresses in the pod, a link-scope
//! route to 169.254.1.1 and the default route through it, and a /32 host route per address.
//!
//! [`Dataplane`] is the seam: [`LinuxDataplane`] talks netlink and sysctl; the plugin's logic
//! is tested against a fake.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use margay_sys::netlink::{Link, Mac, Route, RouteScope, RouteSocket, VethRequest};
use margay_sys::netns::NetNs;
use margay_sys::sysctl;

use crate::error::{code, CniError, Result};

/// The host end's MAC: every pod sees the same gateway MAC, so nothing changes on migration.
pub const HOST_MAC: Mac = [0xee; 6];
/// The pod's IPv4 next hop. Nothing owns it: the host veth answers ARP for it (proxy ARP).
pub const GATEWAY_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
/// The pod's IPv6 next hop: the host veth's EUI-64 link-local address, fixed by [`HOST_MAC`].
pub const GATEWAY_V6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0xecee, 0xeeff, 0xfeee, 0xeeee);

/// What to build for one attachment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInterfaceSpec {
    pub netns: PathBuf,
    pub container_ifname: String,
    pub host_ifname: String,
    pub mtu: u32,
    pub addresses: Vec<IpAddr>,
    pub allow_ip_forwarding: bool,
}

/// What was built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WiredInterface {
    pub host_mac: String,
    pub container_mac: String,
}

/// What CHECK finds on the host and in the pod.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObservedPod {
    pub container: Option<ObservedLink>,
    pub container_routes: Vec<(IpNet, Option<IpAddr>)>,
    pub host: Option<ObservedLink>,
    /// Destinations routed to the host veth.
    pub host_routes: Vec<IpNet>,
    /// (sysctl key, value) on the host veth.
    pub host_sysctls: Vec<(String, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedLink {
    pub mac: String,
    pub mtu: u32,
    pub up: bool,
    pub addresses: Vec<IpNet>,
}

pub trait Dataplane {
    /// Builds everything or nothing: a failure part-way removes what was made.
    fn add(&mut self, spec: &PodInterfaceSpec) -> Result<WiredInterface>;
    /// Removes the pod's interface (and so the host end). Missing netns or interface is fine.
    fn remove(&mut self, netns: Option<&Path>, container_ifname: &str) -> Result<()>;
    fn inspect(
        &mut self,
        netns: &Path,
        container_ifname: &str,
        host_ifname: &str,
    ) -> Result<ObservedPod>;
    /// Fails with "unknown container" when the netns cannot be opened.
    fn check_netns(&mut self, netns: &Path) -> Result<()>;
}

pub fn format_mac(mac: &Mac) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Host sysctls for a pod's veth, per address family in use.
pub fn host_sysctls(host_ifname: &str, ipv4: bool, ipv6: bool) -> Vec<(String, &'static str)> {
    let mut out = Vec::new();
    if ipv4 {
        out.push((format!("net/ipv4/conf/{host_ifname}/proxy_arp"), "1"));
        out.push((format!("net/ipv4/neigh/{host_ifname}/proxy_delay"), "0"));
        out.push((format!("net/ipv4/conf/{host_ifname}/forwarding"), "1"));
    }
    if ipv6 {
        out.push((format!("net/ipv6/conf/{host_ifname}/proxy_ndp"), "1"));
        out.push((format!("net/ipv6/conf/{host_ifname}/accept_dad"), "0"));
        out.push((format!("net/ipv6/conf/{host_ifname}/forwarding"), "1"));
    }
    out
}

/// The pod's routes: a link route to the gateway, then the default route through it.
pub fn container_routes(addresses: &[IpAddr]) -> Vec<(IpNet, Option<IpAddr>)> {
    let mut routes = Vec::new();
    if addresses.iter().any(IpAddr::is_ipv4) {
        routes.push((IpNet::from(IpAddr::V4(GATEWAY_V4)), None));
        routes.push((
            "0.0.0.0/0".parse().expect("literal"),
            Some(GATEWAY_V4.into()),
        ));
    }
    if addresses.iter().any(IpAddr::is_ipv6) {
        routes.push(("::/0".parse().expect("literal"), Some(GATEWAY_V6.into())));
    }
    routes
}

fn dp_err(context: &str, e: margay_sys::Error) -> CniError {
    CniError::dataplane(format!("{context}: {e}"))
}

/// The real dataplane: netlink and /proc/sys.
#[derive(Debug, Default)]
pub struct LinuxDataplane;

impl LinuxDataplane {
    fn open_netns(netns: &Path) -> Result<NetNs> {
        NetNs::open(netns).map_err(|e| {
            if e.is_not_found() {
                CniError::new(
                    code::UNKNOWN_CONTAINER,
                    format!("network namespace {} does not exist", netns.display()),
                )
            } else {
                dp_err("opening the pod's network namespace", e)
            }
        })
    }

    /// Everything after the veth exists; the caller deletes the veth if this fails.
    fn configure(
        spec: &PodInterfaceSpec,
        ns: &NetNs,
        host: &mut RouteSocket,
        host_link: &Link,
    ) -> Result<WiredInterface> {
        let ipv4 = spec.addresses.iter().any(IpAddr::is_ipv4);
        let ipv6 = spec.addresses.iter().any(IpAddr::is_ipv6);
        for (key, value) in host_sysctls(&spec.host_ifname, ipv4, ipv6) {
            sysctl::write(&key, value).map_err(|e| dp_err("host sysctl", e))?;
        }
        host.set_up(host_link.index)
            .map_err(|e| dp_err("bringing the host veth up", e))?;

        let mut pod = RouteSocket::new_in(ns).map_err(|e| dp_err("pod netlink socket", e))?;
        let container = pod
            .link_by_name(&spec.container_ifname)
            .map_err(|e| dp_err("finding the pod interface", e))?
            .ok_or_else(|| {
                CniError::dataplane(format!(
                    "{} vanished from the pod right after it was created",
                    spec.container_ifname
                ))
            })?;
        pod.set_up(container.index)
            .map_err(|e| dp_err("bringing the pod interface up", e))?;
        for addr in &spec.addresses {
            pod.add_address(container.index, IpNet::from(*addr))
                .map_err(|e| dp_err(&format!("adding {addr} in the pod"), e))?;
        }
        for (dst, gw) in container_routes(&spec.addresses) {
            let route = Route {
                gateway: gw,
                oif: Some(container.index),
                scope: if gw.is_some() {
                    RouteScope::Universe
                } else {
                    RouteScope::Link
                },
                ..Route::new(dst)
            };
            pod.add_route(&route)
                .map_err(|e| dp_err(&format!("adding the pod route to {dst}"), e))?;
        }
        if spec.allow_ip_forwarding {
            ns.run(|| {
                if ipv4 {
                    sysctl::write("net/ipv4/ip_forward", "1")?;
                }
                if ipv6 {
                    sysctl::write("net/ipv6/conf/all/forwarding", "1")?;
                }
                Ok::<(), margay_sys::Error>(())
            })
            .map_err(|e| dp_err("entering the pod", e))?
            .map_err(|e| dp_err("enabling forwarding in the pod", e))?;
        }
        for addr in &spec.addresses {
            // Replace, not add: a route left by a pod that vanished without DEL must not
            // block a new pod that was given the same address. Margay's protocol number
            // makes it the agent's to keep correct.
            host.replace_route(&Route {
                oif: Some(host_link.index),
                scope: RouteScope::Link,
                protocol: Route::PROTO_MARGAY,
                ..Route::new(IpNet::from(*addr))
            })
            .map_err(|e| dp_err(&format!("adding the host route to {addr}"), e))?;
        }
        Ok(WiredInterface {
            host_mac: format_mac(&HOST_MAC),
            container_mac: container.mac.as_ref().map(format_mac).unwrap_or_default(),
        })
    }
}

impl Dataplane for LinuxDataplane {
    fn check_netns(&mut self, netns: &Path) -> Result<()> {
        Self::open_netns(netns).map(drop)
    }

    fn add(&mut self, spec: &PodInterfaceSpec) -> Result<WiredInterface> {
        let ns = Self::open_netns(&spec.netns)?;
        let mut host = RouteSocket::new().map_err(|e| dp_err("host netlink socket", e))?;
        // A host veth of this name belongs to an earlier sandbox of the same pod that was
        // never deleted; Calico removes it too.
        if let Some(stale) = host
            .link_by_name(&spec.host_ifname)
            .map_err(|e| dp_err("looking up the host veth", e))?
        {
            tracing::warn!(veth = %spec.host_ifname, "removing a stale host veth");
            host.delete_link(stale.index)
                .map_err(|e| dp_err("removing a stale host veth", e))?;
        }
        let host_link = host
            .create_veth(&VethRequest {
                name: &spec.host_ifname,
                mac: Some(HOST_MAC),
                mtu: Some(spec.mtu),
                peer_name: &spec.container_ifname,
                peer_ns: Some(&ns),
                peer_mac: None,
            })
            .map_err(|e| dp_err("creating the veth pair", e))?;
        match Self::configure(spec, &ns, &mut host, &host_link) {
            Ok(wired) => Ok(wired),
            Err(e) => {
                if let Err(undo) = host.delete_link(host_link.index) {
                    tracing::error!(%undo, "could not remove the half-wired veth");
                }
                Err(e)
            }
        }
    }

    fn remove(&mut self, netns: Option<&Path>, container_ifname: &str) -> Result<()> {
        let Some(netns) = netns else { return Ok(()) };
        let ns = match NetNs::open(netns) {
            Ok(ns) => ns,
            Err(e) if e.is_not_found() => return Ok(()),
            Err(e) => return Err(dp_err("opening the pod's network namespace", e)),
        };
        let mut pod = RouteSocket::new_in(&ns).map_err(|e| dp_err("pod netlink socket", e))?;
        match pod.link_by_name(container_ifname) {
            Ok(Some(link)) => match pod.delete_link(link.index) {
                Err(e) if !e.is_not_found() => Err(dp_err("deleting the pod interface", e)),
                _ => Ok(()),
            },
            Ok(None) => Ok(()),
            Err(e) => Err(dp_err("looking up the pod interface", e)),
        }
    }

    fn inspect(
        &mut self,
        netns: &Path,
        container_ifname: &str,
        host_ifname: &str,
    ) -> Result<ObservedPod> {
        let ns = Self::open_netns(netns)?;
        let mut observed = ObservedPod::default();
        let mut pod = RouteSocket::new_in(&ns).map_err(|e| dp_err("pod netlink socket", e))?;
        if let Some((link, routes)) = observe(&mut pod, container_ifname, "the pod")? {
            observed.container = Some(link);
            observed.container_routes = routes
                .into_iter()
                .map(|r| (r.destination, r.gateway))
                .collect();
        }
        let mut host = RouteSocket::new().map_err(|e| dp_err("host netlink socket", e))?;
        if let Some((link, routes)) = observe(&mut host, host_ifname, "the host")? {
            observed.host = Some(link);
            observed.host_routes = routes.into_iter().map(|r| r.destination).collect();
            for (key, _) in host_sysctls(host_ifname, true, false) {
                let value = sysctl::read(&key).unwrap_or_default();
                observed.host_sysctls.push((key, value.trim().to_owned()));
            }
        }
        Ok(observed)
    }
}

/// A link by name, its addresses (link-local ones aside) and the routes through it.
fn observe(
    sock: &mut RouteSocket,
    name: &str,
    side: &str,
) -> Result<Option<(ObservedLink, Vec<Route>)>> {
    let Some(link) = sock
        .link_by_name(name)
        .map_err(|e| dp_err(&format!("looking up {name} in {side}"), e))?
    else {
        return Ok(None);
    };
    let addresses = sock
        .addresses(Some(link.index))
        .map_err(|e| dp_err(&format!("listing addresses in {side}"), e))?
        .into_iter()
        .map(|(_, a)| a)
        .filter(|a| !is_link_local(a.addr()))
        .collect();
    let mut routes = Vec::new();
    for ipv6 in [false, true] {
        for r in sock
            .routes(ipv6)
            .map_err(|e| dp_err(&format!("listing routes in {side}"), e))?
        {
            if r.oif == Some(link.index) && !is_connected_or_local(&r) {
                routes.push(r);
            }
        }
    }
    let observed = ObservedLink {
        mac: link.mac.as_ref().map(format_mac).unwrap_or_default(),
        mtu: link.mtu,
        up: link.up,
        addresses,
    };
    Ok(Some((observed, routes)))
}

fn is_link_local(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => v6.segments()[0] & 0xffc0 == 0xfe80,
    }
}

/// The kernel's own routes (IPv6 fe80::/64 and multicast) are not ours to check.
fn is_connected_or_local(r: &Route) -> bool {
    let dst = r.destination.addr();
    is_link_local(dst) && r.destination.prefix_len() < dst_bits(dst) || dst.is_multicast()
}

fn dst_bits(ip: IpAddr) -> u8 {
    if ip.is_ipv4() {
        32
    } else {
        128
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_v6_is_the_eui64_of_the_host_mac() {
        // EUI-64: flip the U/L bit of the first octet, insert ff:fe in the middle.
        let mut eui = [0u8; 8];
        eui[..3].copy_from_slice(&HOST_MAC[..3]);
        eui[3] = 0xff;
        eui[4] = 0xfe;
        eui[5..].copy_from_slice(&HOST_MAC[3..]);
        eui[0] ^= 0x02;
        let mut octets = [0u8; 16];
        octets[0] = 0xfe;
        octets[1] = 0x80;
        octets[8..].copy_from_slice(&eui);
        assert_eq!(Ipv6Addr::from(octets), GATEWAY_V6);
    }

    #[test]
    fn routes_per_family() {
        let v4: IpAddr = "10.0.0.1".parse().unwrap();
        let v6: IpAddr = "fd00::1".parse().unwrap();
        assert_eq!(container_routes(&[v4]).len(), 2);
        assert_eq!(container_routes(&[v6]).len(), 1);
        assert_eq!(container_routes(&[v4, v6]).len(), 3);
        assert_eq!(host_sysctls("mgyx", true, true).len(), 6);
    }
}
