//! A small synchronous rtnetlink client: links, addresses, routes, neighbours.
//!
//! No async runtime: the CNI plugin is a short-lived process whose whole ADD must take a few
//! milliseconds, and each operation here is one `send` and (usually) one `recv`.

mod build;
mod parse;
mod wire;

use std::fmt;
use std::io;
use std::net::IpAddr;
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

/// A unicast route.
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
}

impl Route {
    /// `RT_TABLE_MAIN`.
    pub const MAIN_TABLE: u32 = libc::RT_TABLE_MAIN as u32;
    /// `RTPROT_BOOT`.
    pub const PROTO_BOOT: u8 = libc::RTPROT_BOOT;
}

impl fmt::Display for Route {
    /// Like `ip route`: `10.0.0.0/24 via 10.0.0.1 dev #3 scope link`, link by index.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
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
        Ok(())
    }
}

/// An ARP / NDP neighbour entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Neighbour {
    pub index: u32,
    pub ip: IpAddr,
    pub mac: Option<Mac>,
    /// `NUD_*` bits (`NUD_PERMANENT` is 0x80).
    pub state: u16,
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

fn fmt_mac(mac: Mac) -> String {
    mac.map(|b| format!("{b:02x}")).join(":")
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
                .link_by_name(req.name)?
                .ok_or_else(|| Error::invalid(op(), "created, but then not found")),
        }
    }

    /// Sets the link administratively up.
    pub fn set_up(&mut self, index: u32) -> Result<(), Error> {
        self.apply(build::set_up(index), 0, &mut ignore)
            .map_err(|f| f.into_error(format!("setting link #{index} up")))
    }

    pub fn set_mac(&mut self, index: u32, mac: Mac) -> Result<(), Error> {
        self.apply(build::set_mac(index, mac), 0, &mut ignore)
            .map_err(|f| f.into_error(format!("setting MAC of link #{index} to {}", fmt_mac(mac))))
    }

    pub fn set_mtu(&mut self, index: u32, mtu: u32) -> Result<(), Error> {
        self.apply(build::set_mtu(index, mtu), 0, &mut ignore)
            .map_err(|f| f.into_error(format!("setting MTU of link #{index} to {mtu}")))
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

    /// Adds a route, or replaces the one with the same destination (and table).
    pub fn replace_route(&mut self, route: &Route) -> Result<(), Error> {
        self.apply(
            build::new_route(route),
            NLM_F_CREATE | NLM_F_REPLACE,
            &mut ignore,
        )
        .map_err(|f| f.into_error(format!("replacing route {route}")))
    }

    /// Deletes the route matching `route`'s destination, table, gateway and oif (scope and
    /// protocol are not compared). A missing route is an [`Error::is_not_found`] error.
    pub fn delete_route(&mut self, route: &Route) -> Result<(), Error> {
        self.apply(build::delete_route(route), 0, &mut ignore)
            .map_err(|f| f.into_error(format!("deleting route {route}")))
    }

    /// The unicast routes of the main table, IPv4 or IPv6. Cache clones, and routes of a
    /// scope [`RouteScope`] cannot express, are left out.
    pub fn routes(&mut self, ipv6: bool) -> Result<Vec<Route>, Error> {
        self.dump(build::dump_routes(ipv6), |kind, payload| match kind {
            libc::RTM_NEWROUTE => parse::main_table_route(payload),
            _ => Ok(None),
        })
        .map_err(|f| f.into_error(format!("listing IPv{} routes", if ipv6 { 6 } else { 4 })))
    }

    /// ARP and NDP entries, of one link or of all.
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
        mut parse: impl FnMut(u16, &[u8]) -> Result<Option<T>, DecodeError>,
    ) -> Result<Vec<T>, Failure> {
        let mut request = wire::encode(msg, NLM_F_DUMP, 0);
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
            destination: "0.0.0.0/0".parse().unwrap(),
            gateway: Some("169.254.1.1".parse().unwrap()),
            oif: Some(2),
            scope: RouteScope::Universe,
            table: Route::MAIN_TABLE,
            protocol: Route::PROTO_BOOT,
        };
        assert_eq!(route.to_string(), "0.0.0.0/0 via 169.254.1.1 dev #2");
        route.gateway = None;
        route.scope = RouteScope::Link;
        route.table = 1000;
        assert_eq!(route.to_string(), "0.0.0.0/0 dev #2 scope link table 1000");
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
