//! Request messages, built as data so they can be checked without a kernel.

use std::net::IpAddr;
use std::os::fd::RawFd;

use ipnet::IpNet;
use netlink_packet_route::address::{
    AddressAttribute, AddressHeaderFlags, AddressMessage, AddressScope,
};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkExtentMask, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::neighbour::NeighbourMessage;
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use super::{Mac, Route, VethRequest};

fn family(ip: IpAddr) -> AddressFamily {
    match ip {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    }
}

/// Statistics are most of a link message's size and nothing here reads them.
fn skip_stats() -> LinkAttribute {
    LinkAttribute::ExtMask(vec![LinkExtentMask::SkipStats])
}

pub(crate) fn get_link_by_name(name: &str) -> RouteNetlinkMessage {
    let mut msg = LinkMessage::default();
    msg.attributes = vec![LinkAttribute::IfName(name.to_owned()), skip_stats()];
    RouteNetlinkMessage::GetLink(msg)
}

pub(crate) fn get_link_by_index(index: u32) -> RouteNetlinkMessage {
    let mut msg = LinkMessage::default();
    msg.header.index = index;
    msg.attributes = vec![skip_stats()];
    RouteNetlinkMessage::GetLink(msg)
}

pub(crate) fn dump_links() -> RouteNetlinkMessage {
    get_link_by_index(0)
}

fn name_mac_mtu(name: &str, mac: Option<Mac>, mtu: Option<u32>) -> Vec<LinkAttribute> {
    let mut attributes = vec![LinkAttribute::IfName(name.to_owned())];
    attributes.extend(mac.map(|mac| LinkAttribute::Address(mac.to_vec())));
    attributes.extend(mtu.map(LinkAttribute::Mtu));
    attributes
}

/// One RTM_NEWLINK creating both ends; the peer goes straight into the namespace behind
/// `peer_ns_fd` (`IFLA_NET_NS_FD` inside `VETH_INFO_PEER`), so it never appears on the host.
pub(crate) fn create_veth(req: &VethRequest, peer_ns_fd: Option<RawFd>) -> RouteNetlinkMessage {
    let mut peer = LinkMessage::default();
    peer.attributes = name_mac_mtu(req.peer_name, req.peer_mac, req.mtu);
    peer.attributes
        .extend(peer_ns_fd.map(LinkAttribute::NetNsFd));
    let mut msg = LinkMessage::default();
    msg.attributes = name_mac_mtu(req.name, req.mac, req.mtu);
    msg.attributes.push(LinkAttribute::LinkInfo(vec![
        LinkInfo::Kind(InfoKind::Veth),
        LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer))),
    ]));
    RouteNetlinkMessage::NewLink(msg)
}

fn set_link(index: u32, attributes: Vec<LinkAttribute>) -> RouteNetlinkMessage {
    let mut msg = LinkMessage::default();
    msg.header.index = index;
    msg.attributes = attributes;
    RouteNetlinkMessage::SetLink(msg)
}

pub(crate) fn set_up(index: u32) -> RouteNetlinkMessage {
    let mut msg = LinkMessage::default();
    msg.header.index = index;
    msg.header.flags = LinkFlags::Up;
    msg.header.change_mask = LinkFlags::Up;
    RouteNetlinkMessage::SetLink(msg)
}

pub(crate) fn set_mac(index: u32, mac: Mac) -> RouteNetlinkMessage {
    set_link(index, vec![LinkAttribute::Address(mac.to_vec())])
}

pub(crate) fn set_mtu(index: u32, mtu: u32) -> RouteNetlinkMessage {
    set_link(index, vec![LinkAttribute::Mtu(mtu)])
}

pub(crate) fn delete_link(index: u32) -> RouteNetlinkMessage {
    let mut msg = LinkMessage::default();
    msg.header.index = index;
    RouteNetlinkMessage::DelLink(msg)
}

pub(crate) fn add_address(index: u32, addr: IpNet) -> RouteNetlinkMessage {
    let mut msg = AddressMessage::default();
    msg.header.family = family(addr.addr());
    msg.header.prefix_len = addr.prefix_len();
    msg.header.index = index;
    msg.header.scope = AddressScope::Universe;
    if addr.addr().is_ipv6() {
        // Skip duplicate address detection: the address must be usable at once, and the
        // pod's veth has exactly one peer.
        msg.header.flags = AddressHeaderFlags::Nodad;
    }
    // Both, as iproute2 sends them: IFA_LOCAL is the address, IFA_ADDRESS the (same) peer.
    msg.attributes = vec![
        AddressAttribute::Local(addr.addr()),
        AddressAttribute::Address(addr.addr()),
    ];
    RouteNetlinkMessage::NewAddress(msg)
}

pub(crate) fn dump_addresses() -> RouteNetlinkMessage {
    RouteNetlinkMessage::GetAddress(AddressMessage::default())
}

fn route_message(route: &Route) -> RouteMessage {
    let dst = route.destination;
    let mut msg = RouteMessage::default();
    msg.header.address_family = family(dst.addr());
    msg.header.destination_prefix_length = dst.prefix_len();
    // Tables above 255 only fit in RTA_TABLE, which the kernel prefers when present.
    msg.header.table = u8::try_from(route.table).unwrap_or(RouteHeader::RT_TABLE_UNSPEC);
    if route.table > 255 {
        msg.attributes.push(RouteAttribute::Table(route.table));
    }
    if dst.prefix_len() > 0 {
        msg.attributes
            .push(RouteAttribute::Destination(RouteAddress::from(dst.addr())));
    }
    msg.attributes.extend(
        route
            .gateway
            .map(|gw| RouteAttribute::Gateway(RouteAddress::from(gw))),
    );
    msg.attributes.extend(route.oif.map(RouteAttribute::Oif));
    msg
}

pub(crate) fn new_route(route: &Route) -> RouteNetlinkMessage {
    let mut msg = route_message(route);
    msg.header.protocol = RouteProtocol::from(route.protocol);
    msg.header.scope = RouteScope::from(u8::from(route.scope));
    msg.header.kind = RouteType::Unicast;
    RouteNetlinkMessage::NewRoute(msg)
}

/// Matches on destination, table, gateway and oif only: scope "nowhere" and protocol/type
/// "unspec" are the kernel's wildcards (as `ip route del` sends them), so a route read back
/// from [`routes`](super::RouteSocket::routes) deletes whatever protocol installed it.
pub(crate) fn delete_route(route: &Route) -> RouteNetlinkMessage {
    let mut msg = route_message(route);
    msg.header.scope = RouteScope::NoWhere;
    RouteNetlinkMessage::DelRoute(msg)
}

pub(crate) fn dump_routes(ipv6: bool) -> RouteNetlinkMessage {
    let mut msg = RouteMessage::default();
    msg.header.address_family = if ipv6 {
        AddressFamily::Inet6
    } else {
        AddressFamily::Inet
    };
    RouteNetlinkMessage::GetRoute(msg)
}

pub(crate) fn dump_neighbours() -> RouteNetlinkMessage {
    RouteNetlinkMessage::GetNeighbour(NeighbourMessage::default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netlink::wire;
    use netlink_packet_core::{
        NetlinkMessage, NetlinkPayload, NLA_HEADER_SIZE, NLA_TYPE_MASK, NLM_F_ACK, NLM_F_CREATE,
        NLM_F_ECHO, NLM_F_EXCL,
    };
    use std::fmt::Write;

    const GOLDEN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/create_veth.hex");

    /// The request `RouteSocket::create_veth` sends, for fixed inputs and a fixed fd.
    fn golden_request() -> Vec<u8> {
        let flags = NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL | NLM_F_ECHO;
        wire::encode(create_veth(&golden_veth(), Some(7)), flags, 1)
    }

    fn golden_veth() -> VethRequest<'static> {
        VethRequest {
            name: "mgy0123456789a",
            mac: Some([0xee; 6]),
            mtu: Some(1450),
            peer_name: "eth0",
            peer_ns: None,
            peer_mac: Some([0x0a, 0x58, 0x0a, 0x00, 0x00, 0x07]),
        }
    }

    #[derive(Clone, Copy)]
    enum Nest {
        Link,
        LinkInfo,
        VethData,
    }

    fn name(nest: Nest, kind: u16) -> &'static str {
        match (nest, kind) {
            (Nest::Link, 1) => "IFLA_ADDRESS",
            (Nest::Link, 3) => "IFLA_IFNAME",
            (Nest::Link, 4) => "IFLA_MTU",
            (Nest::Link, 18) => "IFLA_LINKINFO {",
            (Nest::Link, 28) => "IFLA_NET_NS_FD",
            (Nest::LinkInfo, 1) => "IFLA_INFO_KIND",
            (Nest::LinkInfo, 2) => "IFLA_INFO_DATA {",
            (Nest::VethData, 1) => "VETH_INFO_PEER { ifinfomsg, then the peer's attributes",
            _ => "unexpected attribute",
        }
    }

    fn line(out: &mut String, depth: usize, bytes: &[u8], note: &str) {
        let hex: Vec<String> = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let _ = writeln!(
            out,
            "{:indent$}{}  # {note}",
            "",
            hex.join(" "),
            indent = depth * 2
        );
    }

    /// Renders the request one structure per line, so a diff shows which attribute changed.
    fn annotate(out: &mut String, depth: usize, mut data: &[u8], nest: Nest) {
        while data.len() >= NLA_HEADER_SIZE {
            let len = usize::from(u16::from_ne_bytes([data[0], data[1]]));
            let kind = u16::from_ne_bytes([data[2], data[3]]) & NLA_TYPE_MASK;
            let padded = len.next_multiple_of(4).min(data.len());
            let child = match (nest, kind) {
                (Nest::Link, 18) => Some(Nest::LinkInfo),
                (Nest::LinkInfo, 2) => Some(Nest::VethData),
                (Nest::VethData, 1) => Some(Nest::Link),
                _ => None,
            };
            match child {
                Some(child) => {
                    line(out, depth, &data[..NLA_HEADER_SIZE], name(nest, kind));
                    let mut value = &data[NLA_HEADER_SIZE..len];
                    if let Nest::VethData = nest {
                        line(out, depth + 1, &value[..16], "ifinfomsg (peer)");
                        value = &value[16..];
                    }
                    annotate(out, depth + 1, value, child);
                    let _ = writeln!(out, "{:indent$}# }}", "", indent = depth * 2);
                }
                None => line(out, depth, &data[..padded], name(nest, kind)),
            }
            data = &data[padded..];
        }
    }

    fn render(request: &[u8]) -> String {
        let mut out = String::from(
            "# RTM_NEWLINK creating veth mgy0123456789a (mac ee:ee:ee:ee:ee:ee, mtu 1450) with\n\
             # peer eth0 (mac 0a:58:0a:00:00:07, mtu 1450) in the netns behind fd 7; seq 1.\n\
             # Native byte order (x86_64/aarch64: little endian). Only the hex before '#' counts.\n\
             #\n\
             # Regenerate: MARGAY_UPDATE_GOLDEN=1 cargo test -p margay-sys golden\n\
             # Verified: it parses back with netlink-packet-route into the same request (same\n\
             # test), and tests/root.rs `create_veth_*` send this\n\
             # builder's output, with a real namespace fd, to the kernel and check both ends\n\
             # with `ip -j link show`.\n",
        );
        line(
            &mut out,
            0,
            &request[..16],
            "nlmsghdr: len, RTM_NEWLINK, REQUEST|ACK|ECHO|EXCL|CREATE, seq, pid",
        );
        line(&mut out, 0, &request[16..32], "ifinfomsg");
        annotate(&mut out, 0, &request[32..], Nest::Link);
        out
    }

    fn parse_hex(text: &str) -> Vec<u8> {
        text.lines()
            .flat_map(|l| l.split('#').next().unwrap_or_default().split_whitespace())
            .map(|b| u8::from_str_radix(b, 16).expect("hex byte"))
            .collect()
    }

    #[test]
    #[cfg(target_endian = "little")]
    fn golden_create_veth_request() {
        let request = golden_request();
        if std::env::var_os("MARGAY_UPDATE_GOLDEN").is_some() {
            std::fs::write(GOLDEN, render(&request)).unwrap();
        }
        let golden = std::fs::read_to_string(GOLDEN).unwrap();
        assert_eq!(
            parse_hex(&golden),
            request,
            "create_veth request changed; now:\n{}",
            render(&request)
        );
        // And back: the bytes decode into the request the builder makes.
        let parsed = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&request).unwrap();
        assert_eq!(parsed.header.sequence_number, 1);
        let NetlinkPayload::InnerMessage(msg) = parsed.payload else {
            panic!("not a route message: {parsed:?}");
        };
        assert_eq!(msg, create_veth(&golden_veth(), Some(7)));
    }

    #[test]
    fn route_requests() {
        let route = Route {
            destination: "10.65.0.7/32".parse().unwrap(),
            gateway: None,
            oif: Some(9),
            scope: crate::netlink::RouteScope::Link,
            table: 1000,
            protocol: Route::PROTO_BOOT,
        };
        let RouteNetlinkMessage::NewRoute(add) = new_route(&route) else {
            unreachable!()
        };
        assert_eq!(add.header.destination_prefix_length, 32);
        assert_eq!(add.header.table, RouteHeader::RT_TABLE_UNSPEC);
        assert_eq!(add.header.scope, RouteScope::Link);
        assert_eq!(add.header.protocol, RouteProtocol::Boot);
        assert_eq!(add.header.kind, RouteType::Unicast);
        assert_eq!(
            add.attributes,
            vec![
                RouteAttribute::Table(1000),
                RouteAttribute::Destination(RouteAddress::Inet("10.65.0.7".parse().unwrap())),
                RouteAttribute::Oif(9),
            ]
        );
        let default = Route {
            destination: "0.0.0.0/0".parse().unwrap(),
            gateway: Some("169.254.1.1".parse().unwrap()),
            oif: None,
            scope: crate::netlink::RouteScope::Universe,
            table: Route::MAIN_TABLE,
            protocol: Route::PROTO_BOOT,
        };
        let RouteNetlinkMessage::DelRoute(del) = delete_route(&default) else {
            unreachable!()
        };
        assert_eq!(del.header.table, 254);
        assert_eq!(del.header.scope, RouteScope::NoWhere);
        assert_eq!(del.header.protocol, RouteProtocol::Unspec);
        assert_eq!(
            del.attributes,
            vec![RouteAttribute::Gateway(RouteAddress::Inet(
                "169.254.1.1".parse().unwrap()
            ))]
        );
    }

    #[test]
    fn address_requests() {
        let RouteNetlinkMessage::NewAddress(v6) = add_address(3, "fd00::7/128".parse().unwrap())
        else {
            unreachable!()
        };
        assert_eq!(v6.header.family, AddressFamily::Inet6);
        assert_eq!((v6.header.prefix_len, v6.header.index), (128, 3));
        assert_eq!(v6.header.flags, AddressHeaderFlags::Nodad);
        let RouteNetlinkMessage::NewAddress(v4) = add_address(3, "10.0.0.7/32".parse().unwrap())
        else {
            unreachable!()
        };
        assert_eq!(v4.header.flags, AddressHeaderFlags::empty());
        assert_eq!(
            v4.attributes,
            vec![
                AddressAttribute::Local("10.0.0.7".parse().unwrap()),
                AddressAttribute::Address("10.0.0.7".parse().unwrap()),
            ]
        );
    }

    #[test]
    fn set_up_changes_only_the_up_flag() {
        let RouteNetlinkMessage::SetLink(msg) = set_up(4) else {
            unreachable!()
        };
        assert_eq!(msg.header.index, 4);
        assert_eq!(msg.header.flags, LinkFlags::Up);
        assert_eq!(msg.header.change_mask, LinkFlags::Up);
        assert!(msg.attributes.is_empty());
    }
}
