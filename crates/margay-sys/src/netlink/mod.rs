//! A small synchronous rtnetlink client: links (veth, VXLAN, IPIP, bridge), addresses, routes,
//! neighbours, bridge FDB entries, and a monitor of route changes.
//!
//! No async runtime: the CNI plugin is a short-lived process whose whole ADD must take a few
//! milliseconds, and each operation here is one `send` and (usually) one `recv`.

mod batch;
mod build;
mod monitor;
mod parse;
mod wire;

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsFd, AsRawFd};

use ipnet::IpNet;
use netlink_packet_core::{
    DecodeError, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_ECHO, NLM_F_EXCL, NLM_F_REPLACE,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::protocols::NETLINK_ROUTE;
use netlink_sys::{Socket, SocketAddr};
use nix::libc;

use crate::netns::NetNs;
use crate::Error;
use wire::{Failure, OnMessage};

pub use batch::RouteOp;
pub use monitor::RouteMonitor;

/// An Ethernet (MAC) address.
pub type Mac = [u8; 6];

/// A network interface, as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// `None` for links whose hardware address is not a MAC (e.g. IP tunnels).
    pub mac: Option<Mac>,
    pub mtu: u32,
    /// `IFF_UP`: administratively up.
    pub up: bool,
    /// The driver kind: "veth", "bridge", "vxlan", …; `None` for physical devices.
    pub kind: Option<String>,
    /// `IFLA_LINK`: for a veth, the index of its peer (in the peer's namespace).
    pub peer_index: Option<u32>,
    /// The VXLAN settings, when `kind` is "vxlan".
    pub vxlan: Option<VxlanInfo>,
}

/// A VXLAN device's settings (`IFLA_INFO_DATA`), as the kernel reports them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanInfo {
    pub vni: u32,
    /// UDP destination port.
    pub port: u16,
    /// Source address of the encapsulated packets.
    pub local: Option<IpAddr>,
    /// The underlay device the tunnel is bound to.
    pub parent_index: Option<u32>,
    /// Whether the device learns remote MACs from received packets.
    pub learning: bool,
}

/// The scope of a route (`rtm_scope`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum RouteScope {
    /// `RT_SCOPE_UNIVERSE` (0): via a gateway, or anything global.
    #[default]
    Universe,
    /// `RT_SCOPE_LINK` (253): directly reachable on the link.
    Link,
    /// `RT_SCOPE_HOST` (254): local to this host.
    Host,
}

impl From<RouteScope> for u8 {
    fn from(scope: RouteScope) -> u8 {
        match scope {
            RouteScope::Universe => libc::RT_SCOPE_UNIVERSE,
            RouteScope::Link => libc::RT_SCOPE_LINK,
            RouteScope::Host => libc::RT_SCOPE_HOST,
        }
    }
}

impl TryFrom<u8> for RouteScope {
    /// The scope value, when it is none of the three (e.g. site 200, nowhere 255).
    type Error = u8;

    fn try_from(value: u8) -> Result<Self, u8> {
        match value {
            libc::RT_SCOPE_UNIVERSE => Ok(RouteScope::Universe),
            libc::RT_SCOPE_LINK => Ok(RouteScope::Link),
            libc::RT_SCOPE_HOST => Ok(RouteScope::Host),
            other => Err(other),
        }
    }
}

/// The type of a route (`rtm_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum RouteType {
    /// `RTN_UNICAST`: forwarded via a gateway or out of a link.
    #[default]
    Unicast,
    /// `RTN_BLACKHOLE`: silently dropped; has no gateway and no output interface.
    Blackhole,
}

/// A unicast or blackhole route.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Route {
    pub destination: IpNet,
    pub gateway: Option<IpAddr>,
    /// Output interface index.
    pub oif: Option<u32>,
    pub scope: RouteScope,
    /// Routing table; [`Route::MAIN_TABLE`] is the usual one.
    pub table: u32,
    /// Who installed it (`rtm_protocol`); [`Route::PROTO_BOOT`] is what `ip route add` uses.
    pub protocol: u8,
    pub kind: RouteType,
    /// `RTNH_F_ONLINK`: the gateway is on the link even though no address of the link's
    /// subnets covers it (how VXLAN and IPIP routes reach other nodes' tunnel addresses).
    pub onlink: bool,
}

impl Route {
    /// `RT_TABLE_MAIN`.
    pub const MAIN_TABLE: u32 = libc::RT_TABLE_MAIN as u32;
    /// `RTPROT_BOOT`.
    pub const PROTO_BOOT: u8 = libc::RTPROT_BOOT;
    /// Margay's own `rtm_protocol`: the node agent owns exactly the routes carrying it.
    pub const PROTO_MARGAY: u8 = 77;
    /// The routes the agent's BGP speaker learned (and `reachableBy` routes to its peers):
    /// a protocol of their own, so the agent's reconciliation (77) and the speaker never
    /// touch each other's routes. Calico's BIRD uses `proto bird` (12); Margay does not, so
    /// that a BIRD on the same host is never mistaken for it.
    pub const PROTO_MARGAY_BGP: u8 = 78;

    /// A unicast route to `destination` in the main table, as `ip route add` makes it
    /// ([`Route::PROTO_BOOT`], scope universe), with no gateway or output interface yet: set
    /// the rest with struct update syntax (`Route { oif: Some(3), ..Route::new(dst) }`).
    pub fn new(destination: IpNet) -> Route {
        Route {
            destination,
            gateway: None,
            oif: None,
            scope: RouteScope::Universe,
            table: Route::MAIN_TABLE,
            protocol: Route::PROTO_BOOT,
            kind: RouteType::Unicast,
            onlink: false,
        }
    }
}

impl fmt::Display for Route {
    /// Like `ip route`: `10.0.0.0/24 via 10.0.0.1 dev #3 scope link`, link by index.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.kind == RouteType::Blackhole {
            write!(f, "blackhole ")?;
        }
        write!(f, "{}", self.destination)?;
        if let Some(gateway) = self.gateway {
            write!(f, " via {gateway}")?;
        }
        if let Some(oif) = self.oif {
            write!(f, " dev #{oif}")?;
        }
        match self.scope {
            RouteScope::Universe => {}
            RouteScope::Link => write!(f, " scope link")?,
            RouteScope::Host => write!(f, " scope host")?,
        }
        if self.table != Route::MAIN_TABLE {
            write!(f, " table {}", self.table)?;
        }
        if self.onlink {
            write!(f, " onlink")?;
        }
        Ok(())
    }
}

/// An ARP / NDP neighbour entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Neighbour {
    pub index: u32,
    pub ip: IpAddr,
    pub mac: Option<Mac>,
    /// `NUD_*` bits ([`Neighbour::NUD_PERMANENT`] marks static entries).
    pub state: u16,
}

impl Neighbour {
    /// `NUD_PERMANENT`: a static entry, never aged out; what [`RouteSocket::add_neighbour`]
    /// writes.
    pub const NUD_PERMANENT: u16 = libc::NUD_PERMANENT;
}

/// A bridge forwarding entry of a VXLAN device: frames for `mac` are sent to the VTEP `dst`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FdbEntry {
    /// The device holding the entry.
    pub index: u32,
    pub mac: Mac,
    /// The remote VTEP; `None` for entries without one (e.g. on a plain bridge port).
    pub dst: Option<IpAddr>,
}

/// A veth pair to create with [`RouteSocket::create_veth`].
#[derive(Debug, Clone, Copy)]
pub struct VethRequest<'a> {
    /// The end that stays in the socket's namespace (the host side).
    pub name: &'a str,
    pub mac: Option<Mac>,
    /// For both ends.
    pub mtu: Option<u32>,
    pub peer_name: &'a str,
    /// Where the peer is created; `None` keeps it in the socket's namespace.
    pub peer_ns: Option<&'a NetNs>,
    pub peer_mac: Option<Mac>,
}

/// A VXLAN device to create with [`RouteSocket::create_vxlan`].
#[derive(Debug, Clone, Copy)]
pub struct VxlanRequest<'a> {
    pub name: &'a str,
    pub vni: u32,
    /// UDP destination port (4789 is IANA's; the kernel's default would be 8472).
    pub port: u16,
    /// Source address for encapsulated packets.
    pub local: Option<IpAddr>,
    /// The underlay device to bind the tunnel to.
    pub parent_index: Option<u32>,
    pub mtu: Option<u32>,
    pub mac: Option<Mac>,
    /// Learn remote MACs from received packets (the kernel's default is on; Calico turns it
    /// off and programs static FDB entries instead).
    pub learning: bool,
}

fn fmt_mac(mac: Mac) -> String {
    mac.map(|b| format!("{b:02x}")).join(":")
}

/// Like `ip neigh`: `10.0.0.1 lladdr ee:ee:ee:ee:ee:ee dev #3`.
fn fmt_neighbour(n: &Neighbour) -> String {
    match n.mac {
        Some(mac) => format!("{} lladdr {} dev #{}", n.ip, fmt_mac(mac), n.index),
        None => format!("{} dev #{}", n.ip, n.index),
    }
}

/// Like `bridge fdb`: `66:00:00:00:00:01 dev #3 dst 192.0.2.7`.
fn fmt_fdb(e: &FdbEntry) -> String {
    match e.dst {
        Some(dst) => format!("{} dev #{} dst {dst}", fmt_mac(e.mac), e.index),
        None => format!("{} dev #{}", fmt_mac(e.mac), e.index),
    }
}

/// Initial receive buffer: the kernel sizes dump datagrams to the reader's buffer, up to
/// 32 KiB. Grown if a larger datagram ever arrives.
const RECV_BUF: usize = 32 * 1024;
/// How many times a dump or lookup is tried when its reply was inconsistent or too large.
const DUMP_ATTEMPTS: usize = 3;

/// Synchronous rtnetlink socket (`NETLINK_ROUTE`) bound in one network namespace.
///
/// The namespace is fixed when the socket is created, so a socket made with
/// [`RouteSocket::new_in`] can be used from any thread afterwards.
pub struct RouteSocket {
    socket: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl fmt::Debug for RouteSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RouteSocket")
            .field("fd", &self.socket.as_raw_fd())
            .field("seq", &self.seq)
            .finish_non_exhaustive()
    }
}

impl RouteSocket {
    /// A socket in the calling thread's network namespace.
    pub fn new() -> Result<Self, Error> {
        let socket =
            Socket::new(NETLINK_ROUTE).map_err(|e| Error::os("opening rtnetlink socket", e))?;
        // The kernel's own explanation of a refusal (extended ACK) is worth having in
        // messages; a kernel without it (< 4.12) just does not send it.
        let _ = socket.set_ext_ack(true);
        // No bind(): the kernel binds the socket on the first send, saving two syscalls.
        Ok(RouteSocket {
            socket,
            seq: 0,
            buf: vec![0; RECV_BUF],
        })
    }

    /// A socket created inside `ns` (on a short-lived thread, see [`NetNs::run`]).
    pub fn new_in(ns: &NetNs) -> Result<Self, Error> {
        ns.run(RouteSocket::new)?
    }

    /// The link named `name`, or `None` if there is none.
    pub fn link_by_name(&mut self, name: &str) -> Result<Option<Link>, Error> {
        self.get_link(build::get_link_by_name(name))
            .map_err(|f| f.into_error(format!("looking up link {name}")))
    }

    /// The link with `index`, or `None` if there is none.
    pub fn link_by_index(&mut self, index: u32) -> Result<Option<Link>, Error> {
        self.get_link(build::get_link_by_index(index))
            .map_err(|f| f.into_error(format!("looking up link #{index}")))
    }

    /// All links of the namespace.
    pub fn links(&mut self) -> Result<Vec<Link>, Error> {
        self.dump(build::dump_links(), |kind, payload| match kind {
            libc::RTM_NEWLINK => parse::link(payload).map(Some),
            _ => Ok(None),
        })
        .map_err(|f| f.into_error("listing links".into()))
    }

    /// Creates a veth pair with one `RTM_NEWLINK` (`NLM_F_CREATE|NLM_F_EXCL`): the peer is
    /// created directly inside `req.peer_ns`, and both ends get their name, MAC and MTU in the
    /// same message. Returns the link on this socket's side.
    pub fn create_veth(&mut self, req: &VethRequest) -> Result<Link, Error> {
        let op = || match req.peer_ns {
            Some(ns) => format!(
                "creating veth {} (peer {} in netns {})",
                req.name,
                req.peer_name,
                ns.path().display()
            ),
            None => format!("creating veth {} (peer {})", req.name, req.peer_name),
        };
        let msg = build::create_veth(req, req.peer_ns.map(|ns| ns.as_fd().as_raw_fd()));
        self.create_link(msg, req.name, op)
    }

    /// Creates a VXLAN device with one `RTM_NEWLINK` (`NLM_F_CREATE|NLM_F_EXCL`), like
    /// `ip link add NAME type vxlan id VNI dstport PORT [local IP] [dev PARENT] [nolearning]`.
    /// It is left down.
    pub fn create_vxlan(&mut self, req: &VxlanRequest) -> Result<Link, Error> {
        let op = || format!("creating vxlan {} (vni {})", req.name, req.vni);
        self.create_link(build::create_vxlan(req), req.name, op)
    }

    /// Creates an IPIP tunnel device, like `ip link add NAME type ipip [local IP]`. Kernels
    /// without the ipip module refuse with an [`Error::is_not_supported`] error ("Unknown
    /// device type").
    pub fn create_ipip(
        &mut self,
        name: &str,
        mtu: Option<u32>,
        local: Option<Ipv4Addr>,
    ) -> Result<Link, Error> {
        let op = || format!("creating ipip {name}");
        self.create_link(build::create_ipip(name, mtu, local), name, op)
    }

    /// Creates a bridge with one `RTM_NEWLINK` (`NLM_F_CREATE|NLM_F_EXCL`), like
    /// `ip link add NAME type bridge`, with the kernel's defaults (STP off). It is left down;
    /// attach ports with [`set_master`](Self::set_master).
    pub fn create_bridge(&mut self, name: &str) -> Result<Link, Error> {
        let op = || format!("creating bridge {name}");
        self.create_link(build::create_bridge(name), name, op)
    }

    /// Sends a link creation and returns the new link, which must be named `name`.
    fn create_link(
        &mut self,
        msg: RouteNetlinkMessage,
        name: &str,
        op: impl Fn() -> String,
    ) -> Result<Link, Error> {
        // NLM_F_ECHO: kernels since 6.3 send the new link back, saving a lookup.
        let mut created = None;
        self.apply(
            msg,
            NLM_F_CREATE | NLM_F_EXCL | NLM_F_ECHO,
            &mut |kind, payload| {
                if kind == libc::RTM_NEWLINK {
                    created = Some(parse::link(payload)?);
                }
                Ok(())
            },
        )
        .map_err(|f| f.into_error(op()))?;
        match created {
            Some(link) => Ok(link),
            None => self
                .link_by_name(name)?
                .ok_or_else(|| Error::invalid(op(), "created, but then not found")),
        }
    }

    /// Sets the link administratively up.
    pub fn set_up(&mut self, index: u32) -> Result<(), Error> {
        self.apply(build::set_up(index), 0, &mut ignore)
            .map_err(|f| f.into_error(format!("setting link #{index} up")))
    }

    /// Sets the link named `name` up, and its MTU if given, in one `RTM_SETLINK` without a
    /// lookup: for devices known by name, such as the IPIP fallback device `tunl0` that the
    /// ipip module creates in every namespace. A missing link is an [`Error::is_not_found`]
    /// error.
    pub fn set_up_by_name(&mut self, name: &str, mtu: Option<u32>) -> Result<(), Error> {
        self.apply(build::set_up_by_name(name, mtu), 0, &mut ignore)
            .map_err(|f| f.into_error(format!("setting link {name} up")))
    }

    pub fn set_mac(&mut self, index: u32, mac: Mac) -> Result<(), Error> {
        self.apply(build::set_mac(index, mac), 0, &mut ignore)
            .map_err(|f| f.into_error(format!("setting MAC of link #{index} to {}", fmt_mac(mac))))
    }

    pub fn set_mtu(&mut self, index: u32, mtu: u32) -> Result<(), Error> {
        self.apply(build::set_mtu(index, mtu), 0, &mut ignore)
            .map_err(|f| f.into_error(format!("setting MTU of link #{index} to {mtu}")))
    }

    /// Makes the link `index` a port of the bridge (or other controller device) `master`,
    /// like `ip link set DEV master BRIDGE`; `master` 0 detaches it (`nomaster`).
    pub fn set_master(&mut self, index: u32, master: u32) -> Result<(), Error> {
        self.apply(build::set_master(index, master), 0, &mut ignore)
            .map_err(|f| match master {
                0 => f.into_error(format!("detaching link #{index} from its master")),
                _ => f.into_error(format!("setting master of link #{index} to #{master}")),
            })
    }

    /// Deletes the link; for a veth, that removes both ends.
    pub fn delete_link(&mut self, index: u32) -> Result<(), Error> {
        self.apply(build::delete_link(index), 0, &mut ignore)
            .map_err(|f| f.into_error(format!("deleting link #{index}")))
    }

    /// Adds an address (`NLM_F_EXCL`). IPv6 addresses skip duplicate address detection so
    /// they are usable at once.
    pub fn add_address(&mut self, index: u32, addr: IpNet) -> Result<(), Error> {
        self.apply(
            build::add_address(index, addr),
            NLM_F_CREATE | NLM_F_EXCL,
            &mut ignore,
        )
        .map_err(|f| f.into_error(format!("adding address {addr} to link #{index}")))
    }

    /// IPv4 and IPv6 addresses as (link index, address/prefix), of one link or of all.
    pub fn addresses(&mut self, index: Option<u32>) -> Result<Vec<(u32, IpNet)>, Error> {
        self.dump(build::dump_addresses(), |kind, payload| match kind {
            libc::RTM_NEWADDR => Ok(parse::address(payload)?
                .filter(|(link, _)| index.is_none_or(|index| *link == index))),
            _ => Ok(None),
        })
        .map_err(|f| f.into_error("listing addresses".into()))
    }

    /// Adds a route (`NLM_F_EXCL`: an existing one is an [`Error::is_exists`] error).
    pub fn add_route(&mut self, route: &Route) -> Result<(), Error> {
        self.apply(
            build::new_route(route),
            NLM_F_CREATE | NLM_F_EXCL,
            &mut ignore,
        )
        .map_err(|f| f.into_error(format!("adding route {route}")))
    }

    /// Adds a route, or replaces the one with the same destination (and table). Replacing an
    /// IPv6 route with an identical one still notifies a change (IPv4 does not): compare
    /// with [`routes`](Self::routes) first to leave the kernel alone.
    pub fn replace_route(&mut self, route: &Route) -> Result<(), Error> {
        self.apply(
            build::new_route(route),
            NLM_F_CREATE | NLM_F_REPLACE,
            &mut ignore,
        )
        .map_err(|f| f.into_error(format!("replacing route {route}")))
    }

    /// Deletes the route matching `route`'s destination, table, type and protocol, and its
    /// gateway and oif when they are given (scope is not compared; protocol 0 matches any).
    /// Matching the protocol means a delete never removes a route someone else installed.
    /// A missing route is an [`Error::is_not_found`] error.
    pub fn delete_route(&mut self, route: &Route) -> Result<(), Error> {
        self.apply(build::delete_route(route), 0, &mut ignore)
            .map_err(|f| f.into_error(format!("deleting route {route}")))
    }

    /// The unicast and blackhole routes of the main table, IPv4 or IPv6. Other types (local,
    /// unreachable, …), cache clones, and routes of a scope [`RouteScope`] cannot express are
    /// left out.
    pub fn routes(&mut self, ipv6: bool) -> Result<Vec<Route>, Error> {
        self.dump(build::dump_routes(ipv6), |kind, payload| match kind {
            libc::RTM_NEWROUTE => parse::main_table_route(payload),
            _ => Ok(None),
        })
        .map_err(|f| f.into_error(format!("listing IPv{} routes", if ipv6 { 6 } else { 4 })))
    }

    /// ARP and NDP entries, of one link or of all, with their `NUD_*` state.
    pub fn neighbours(&mut self, index: Option<u32>) -> Result<Vec<Neighbour>, Error> {
        self.dump(build::dump_neighbours(), |kind, payload| match kind {
            libc::RTM_NEWNEIGH => {
                Ok(parse::neighbour(payload)?
                    .filter(|n| index.is_none_or(|index| n.index == index)))
            }
            _ => Ok(None),
        })
        .map_err(|f| f.into_error("listing neighbours".into()))
    }

    /// Writes a permanent ARP/NDP entry, replacing any entry for the same IP on the link
    /// (`NLM_F_CREATE|NLM_F_REPLACE`, so writing the same entry again is harmless). The entry
    /// is always `NUD_PERMANENT`: `n.state` is not sent.
    pub fn add_neighbour(&mut self, n: &Neighbour) -> Result<(), Error> {
        self.apply(
            build::new_neighbour(n),
            NLM_F_CREATE | NLM_F_REPLACE,
            &mut ignore,
        )
        .map_err(|f| f.into_error(format!("replacing neighbour {}", fmt_neighbour(n))))
    }

    /// Deletes the entry for `n.ip` on `n.index`. A missing entry is an
    /// [`Error::is_not_found`] error.
    pub fn delete_neighbour(&mut self, n: &Neighbour) -> Result<(), Error> {
        self.apply(build::delete_neighbour(n), 0, &mut ignore)
            .map_err(|f| f.into_error(format!("deleting neighbour {}", fmt_neighbour(n))))
    }

    /// The bridge forwarding entries the device `index` holds itself (`NTF_SELF`), as
    /// `bridge fdb show dev DEV` lists them: one per remote, so a MAC with several remotes
    /// appears several times. The kernel filters the dump to the device.
    pub fn fdb(&mut self, index: u32) -> Result<Vec<FdbEntry>, Error> {
        self.dump_request(build::dump_fdb(index), |kind, payload| match kind {
            libc::RTM_NEWNEIGH => Ok(parse::fdb_entry(payload)?.filter(|e| e.index == index)),
            _ => Ok(None),
        })
        .map_err(|f| f.into_error(format!("listing FDB entries of link #{index}")))
    }

    /// Writes a permanent FDB entry sending frames for `e.mac` to the VTEP `e.dst`, replacing
    /// the entry's remote if the MAC is already known (`NLM_F_CREATE|NLM_F_REPLACE`), like
    /// `bridge fdb replace MAC dev DEV dst IP self permanent`.
    pub fn replace_fdb(&mut self, e: &FdbEntry) -> Result<(), Error> {
        self.apply(build::new_fdb(e), NLM_F_CREATE | NLM_F_REPLACE, &mut ignore)
            .map_err(|f| f.into_error(format!("replacing FDB entry {}", fmt_fdb(e))))
    }

    /// Deletes the FDB entry for `e.mac` (only its remote `e.dst`, when given). A missing
    /// entry is an [`Error::is_not_found`] error.
    pub fn delete_fdb(&mut self, e: &FdbEntry) -> Result<(), Error> {
        self.apply(build::delete_fdb(e), 0, &mut ignore)
            .map_err(|f| f.into_error(format!("deleting FDB entry {}", fmt_fdb(e))))
    }

    /// A single link, `None` on ENODEV.
    fn get_link(&mut self, msg: RouteNetlinkMessage) -> Result<Option<Link>, Failure> {
        let mut request = wire::encode(msg, 0, 0);
        for attempt in 1.. {
            let mut link = None;
            let result = self.exchange(&mut request, false, &mut |kind, payload| {
                if kind == libc::RTM_NEWLINK {
                    link = Some(parse::link(payload)?);
                }
                Ok(())
            });
            match result {
                Ok(()) => return Ok(link),
                Err(f) if f.errno() == Some(libc::ENODEV) => return Ok(None),
                Err(Failure::Truncated { .. }) if attempt < DUMP_ATTEMPTS => {}
                Err(f) => return Err(f),
            }
        }
        unreachable!("the loop returns")
    }

    /// Runs a dump, retrying it if the kernel flags it inconsistent or it outgrows the buffer.
    fn dump<T>(
        &mut self,
        msg: RouteNetlinkMessage,
        parse: impl FnMut(u16, &[u8]) -> Result<Option<T>, DecodeError>,
    ) -> Result<Vec<T>, Failure> {
        self.dump_request(wire::encode(msg, NLM_F_DUMP, 0), parse)
    }

    /// [`dump`](Self::dump) with an already encoded request.
    fn dump_request<T>(
        &mut self,
        mut request: Vec<u8>,
        mut parse: impl FnMut(u16, &[u8]) -> Result<Option<T>, DecodeError>,
    ) -> Result<Vec<T>, Failure> {
        for attempt in 1.. {
            let mut items = Vec::new();
            let result = self.exchange(&mut request, false, &mut |kind, payload| {
                items.extend(parse(kind, payload)?);
                Ok(())
            });
            match result {
                Ok(()) => return Ok(items),
                Err(Failure::Truncated { .. } | Failure::DumpInterrupted)
                    if attempt < DUMP_ATTEMPTS => {}
                Err(f) => return Err(f),
            }
        }
        unreachable!("the loop returns")
    }

    /// Sends a change with `NLM_F_ACK | flags` and waits for the ACK. Never retried: a
    /// change is not idempotent.
    fn apply(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
        on_msg: &mut OnMessage<'_>,
    ) -> Result<(), Failure> {
        let mut request = wire::encode(msg, NLM_F_ACK | flags, 0);
        self.exchange(&mut request, true, on_msg)
    }

    /// Sends `request` under a new sequence number and reads replies until it is complete.
    fn exchange(
        &mut self,
        request: &mut [u8],
        acked: bool,
        on_msg: &mut OnMessage<'_>,
    ) -> Result<(), Failure> {
        self.seq = self.seq.wrapping_add(1);
        wire::set_seq(request, self.seq);
        retry_eintr(|| self.socket.send(request, 0)).map_err(Failure::Io)?;
        let mut interrupted = false;
        let result = loop {
            let (size, from) = match self.recv(0) {
                Ok(received) => received,
                Err(e) => break Err(Failure::Io(e)),
            };
            if size > self.buf.len() {
                self.buf.resize(size.next_multiple_of(4096), 0);
                break Err(Failure::Truncated { size });
            }
            if from.port_number() != 0 {
                continue; // not from the kernel
            }
            let datagram = &self.buf[..size];
            match wire::read_datagram(datagram, self.seq, acked, &mut interrupted, on_msg) {
                Ok(true) => break Ok(()),
                Ok(false) => {}
                Err(f) => break Err(f),
            }
        };
        match result {
            Ok(()) if interrupted => Err(Failure::DumpInterrupted),
            Ok(()) | Err(Failure::Kernel { .. }) => result,
            Err(_) => {
                self.drain();
                result
            }
        }
    }

    /// One datagram into `buf`, returning its full size (`MSG_TRUNC`: larger than the buffer
    /// if it did not fit) and sender.
    fn recv(&mut self, flags: libc::c_int) -> io::Result<(usize, SocketAddr)> {
        retry_eintr(|| {
            self.socket
                .recv_from(&mut &mut self.buf[..], flags | libc::MSG_TRUNC)
        })
    }

    /// Discards what is left of an abandoned reply, so that a dump still in progress does not
    /// block the next request. The kernel queues the next part of a dump while the previous
    /// `recv` returns, so an empty queue means the reply is over.
    fn drain(&mut self) {
        while self.recv(libc::MSG_DONTWAIT).is_ok() {}
    }
}

fn ignore(_: u16, _: &[u8]) -> Result<(), DecodeError> {
    Ok(())
}

fn retry_eintr<T>(mut call: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    loop {
        match call() {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            result => return result,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_scope_round_trips_through_u8() {
        for scope in [RouteScope::Universe, RouteScope::Link, RouteScope::Host] {
            assert_eq!(RouteScope::try_from(u8::from(scope)), Ok(scope));
        }
        assert_eq!(u8::from(RouteScope::Link), 253);
        assert_eq!(RouteScope::try_from(200), Err(200));
    }

    #[test]
    fn route_display_reads_like_ip_route() {
        let mut route = Route {
            gateway: Some("169.254.1.1".parse().unwrap()),
            oif: Some(2),
            ..Route::new("0.0.0.0/0".parse().unwrap())
        };
        assert_eq!(route.to_string(), "0.0.0.0/0 via 169.254.1.1 dev #2");
        route.onlink = true;
        assert_eq!(route.to_string(), "0.0.0.0/0 via 169.254.1.1 dev #2 onlink");
        route.gateway = None;
        route.onlink = false;
        route.scope = RouteScope::Link;
        route.table = 1000;
        assert_eq!(route.to_string(), "0.0.0.0/0 dev #2 scope link table 1000");
        let blackhole = Route {
            kind: RouteType::Blackhole,
            protocol: Route::PROTO_MARGAY,
            ..Route::new("10.65.0.0/26".parse().unwrap())
        };
        assert_eq!(blackhole.to_string(), "blackhole 10.65.0.0/26");
    }

    #[test]
    fn new_route_is_what_ip_route_add_makes() {
        let route = Route::new("10.0.0.0/8".parse().unwrap());
        assert_eq!(
            (route.table, route.protocol, route.scope, route.kind),
            (254, 3, RouteScope::Universe, RouteType::Unicast)
        );
        assert_eq!(
            (route.gateway, route.oif, route.onlink),
            (None, None, false)
        );
    }

    #[test]
    fn neighbours_and_fdb_entries_print_like_iproute2() {
        let mut n = Neighbour {
            index: 3,
            ip: "10.65.1.0".parse().unwrap(),
            mac: Some([0x66, 0, 0, 0, 0, 1]),
            state: Neighbour::NUD_PERMANENT,
        };
        assert_eq!(
            fmt_neighbour(&n),
            "10.65.1.0 lladdr 66:00:00:00:00:01 dev #3"
        );
        n.mac = None;
        assert_eq!(fmt_neighbour(&n), "10.65.1.0 dev #3");
        let mut e = FdbEntry {
            index: 3,
            mac: [0x66, 0, 0, 0, 0, 1],
            dst: Some("192.0.2.7".parse().unwrap()),
        };
        assert_eq!(fmt_fdb(&e), "66:00:00:00:00:01 dev #3 dst 192.0.2.7");
        e.dst = None;
        assert_eq!(fmt_fdb(&e), "66:00:00:00:00:01 dev #3");
    }

    #[test]
    fn sockets_can_move_between_threads() {
        fn assert_send<T: Send>() {}
        assert_send::<RouteSocket>();
    }

    #[test]
    fn mac_is_printed_in_colon_hex() {
        assert_eq!(
            fmt_mac([0xee, 0xee, 0xee, 0xee, 0x0a, 0x01]),
            "ee:ee:ee:ee:0a:01"
        );
    }
}
