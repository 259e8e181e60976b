//! Reading the kernel's link, address, route, neighbour and FDB messages.
//!
//! Only the attributes Margay uses are decoded. Parsing whole messages with
//! netlink-packet-route would fail on any attribute a newer kernel formats differently
//! (rust-netlink/netlink-packet-route#151), and decoding statistics and the like is wasted work.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use netlink_packet_core::{
    parse_ip, parse_string, parse_u16_be, parse_u32, parse_u8, DecodeError, Emitable, NlaBuffer,
    NlasIterator, NLA_HEADER_SIZE, NLA_TYPE_MASK,
};
use netlink_packet_route::address::AddressHeader;
use netlink_packet_route::link::{LinkFlags, LinkHeader};
use netlink_packet_route::neighbour::{NeighbourFlags, NeighbourHeader};
use netlink_packet_route::route::{RouteFlags, RouteHeader, RouteType as NlRouteType};
use netlink_packet_route::AddressFamily;
use nix::libc;

use super::{FdbEntry, Link, Mac, Neighbour, Route, RouteScope, RouteType, VxlanInfo};

// <linux/if_link.h>, which the libc crate does not cover.
const IFLA_VXLAN_ID: u16 = 1;
const IFLA_VXLAN_LINK: u16 = 3;
const IFLA_VXLAN_LOCAL: u16 = 4;
const IFLA_VXLAN_LEARNING: u16 = 7;
const IFLA_VXLAN_PORT: u16 = 15;
const IFLA_VXLAN_LOCAL6: u16 = 17;

/// The attributes after a fixed-size header, as (type, value).
fn attributes(
    payload: &[u8],
    header_len: usize,
) -> impl Iterator<Item = Result<(u16, &[u8]), DecodeError>> {
    NlasIterator::new(payload.get(header_len..).unwrap_or_default()).map(|nla| {
        nla.map(|nla: NlaBuffer<&[u8]>| {
            let (kind, len) = (nla.kind() & NLA_TYPE_MASK, usize::from(nla.length()));
            // `value()` borrows the buffer view; slice the underlying bytes instead.
            (kind, &nla.into_inner()[NLA_HEADER_SIZE..len])
        })
    })
}

fn mac(value: &[u8]) -> Option<Mac> {
    value.try_into().ok()
}

fn ip_net(ip: IpAddr, prefix_len: u8) -> Result<IpNet, DecodeError> {
    IpNet::new(ip, prefix_len).map_err(|_| format!("invalid prefix {ip}/{prefix_len}").into())
}

/// An `RTM_NEWLINK` payload.
pub(crate) fn link(payload: &[u8]) -> Result<Link, DecodeError> {
    let header = LinkHeader::parse(payload)?;
    let mut link = Link {
        index: header.index,
        name: String::new(),
        mac: None,
        mtu: 0,
        up: header.flags.contains(LinkFlags::Up),
        kind: None,
        peer_index: None,
        vxlan: None,
    };
    let mut info_data = None;
    for attribute in attributes(payload, header.buffer_len()) {
        match attribute? {
            (libc::IFLA_IFNAME, value) => link.name = parse_string(value)?,
            (libc::IFLA_ADDRESS, value) => link.mac = mac(value),
            (libc::IFLA_MTU, value) => link.mtu = parse_u32(value)?,
            (libc::IFLA_LINK, value) => link.peer_index = Some(parse_u32(value)?),
            (libc::IFLA_LINKINFO, value) => {
                for info in attributes(value, 0) {
                    match info? {
                        (libc::IFLA_INFO_KIND, kind) => link.kind = Some(parse_string(kind)?),
                        (libc::IFLA_INFO_DATA, data) => info_data = Some(data),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    // IFLA_INFO_DATA's layout depends on the kind, which need not come first.
    if let (Some("vxlan"), Some(data)) = (link.kind.as_deref(), info_data) {
        link.vxlan = Some(vxlan(data)?);
    }
    Ok(link)
}

/// A VXLAN device's `IFLA_INFO_DATA`.
fn vxlan(data: &[u8]) -> Result<VxlanInfo, DecodeError> {
    let mut info = VxlanInfo {
        vni: 0,
        port: 0,
        local: None,
        parent_index: None,
        // Always reported; should it be missing, the kernel's default (learning) applies.
        learning: true,
    };
    for attribute in attributes(data, 0) {
        match attribute? {
            (IFLA_VXLAN_ID, value) => info.vni = parse_u32(value)?,
            (IFLA_VXLAN_LINK, value) => info.parent_index = Some(parse_u32(value)?),
            (IFLA_VXLAN_LOCAL | IFLA_VXLAN_LOCAL6, value) => info.local = Some(parse_ip(value)?),
            (IFLA_VXLAN_LEARNING, value) => info.learning = parse_u8(value)? != 0,
            (IFLA_VXLAN_PORT, value) => info.port = parse_u16_be(value)?,
            _ => {}
        }
    }
    Ok(info)
}

/// An `RTM_NEWADDR` payload as (link index, address/prefix).
pub(crate) fn address(payload: &[u8]) -> Result<Option<(u32, IpNet)>, DecodeError> {
    let header = AddressHeader::parse(payload)?;
    let (mut local, mut address) = (None, None);
    for attribute in attributes(payload, header.buffer_len()) {
        match attribute? {
            (libc::IFA_LOCAL, value) => local = Some(parse_ip(value)?),
            (libc::IFA_ADDRESS, value) => address = Some(parse_ip(value)?),
            _ => {}
        }
    }
    // On point-to-point links IFA_ADDRESS is the peer's; IFA_LOCAL is always our own.
    match local.or(address) {
        Some(ip) => Ok(Some((header.index, ip_net(ip, header.prefix_len)?))),
        None => Ok(None),
    }
}

/// An `RTM_NEWROUTE` payload, if it is a unicast or blackhole route of the main table that
/// [`Route`] can describe (not a cache clone, local or broadcast route).
pub(crate) fn main_table_route(payload: &[u8]) -> Result<Option<Route>, DecodeError> {
    Ok(route(payload)?.filter(|r| r.table == Route::MAIN_TABLE))
}

/// An `RTM_NEWROUTE` / `RTM_DELROUTE` payload of any table, if [`Route`] can describe it.
pub(crate) fn route(payload: &[u8]) -> Result<Option<Route>, DecodeError> {
    let header = RouteHeader::parse(payload)?;
    let Ok(scope) = RouteScope::try_from(u8::from(header.scope)) else {
        return Ok(None);
    };
    let kind = match header.kind {
        NlRouteType::Unicast => RouteType::Unicast,
        NlRouteType::BlackHole => RouteType::Blackhole,
        _ => return Ok(None),
    };
    if header.flags.contains(RouteFlags::Cloned) {
        return Ok(None);
    }
    let unspecified = match header.address_family {
        AddressFamily::Inet => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        AddressFamily::Inet6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        _ => return Ok(None),
    };
    let (mut destination, mut gateway, mut oif) = (unspecified, None, None);
    let mut table = u32::from(header.table);
    for attribute in attributes(payload, header.buffer_len()) {
        match attribute? {
            (libc::RTA_DST, value) => destination = parse_ip(value)?,
            (libc::RTA_GATEWAY, value) => gateway = Some(parse_ip(value)?),
            (libc::RTA_OIF, value) => oif = Some(parse_u32(value)?),
            (libc::RTA_TABLE, value) => table = parse_u32(value)?,
            _ => {}
        }
    }
    if kind == RouteType::Blackhole {
        // IPv6 reports its blackholes as "dev lo", an internal detail; a blackhole read back
        // must equal the one that was written.
        (gateway, oif) = (None, None);
    }
    Ok(Some(Route {
        destination: ip_net(destination, header.destination_prefix_length)?,
        gateway,
        oif,
        scope,
        table,
        protocol: header.protocol.into(),
        kind,
        onlink: header.flags.contains(RouteFlags::Onlink),
    }))
}

/// An `RTM_NEWNEIGH` payload, if it is an IPv4/IPv6 neighbour.
pub(crate) fn neighbour(payload: &[u8]) -> Result<Option<Neighbour>, DecodeError> {
    let header = NeighbourHeader::parse(payload)?;
    if !matches!(header.family, AddressFamily::Inet | AddressFamily::Inet6) {
        return Ok(None);
    }
    let (mut ip, mut lladdr) = (None, None);
    for attribute in attributes(payload, header.buffer_len()) {
        match attribute? {
            (libc::NDA_DST, value) => ip = Some(parse_ip(value)?),
            (libc::NDA_LLADDR, value) => lladdr = mac(value),
            _ => {}
        }
    }
    Ok(ip.map(|ip| Neighbour {
        index: header.ifindex,
        ip,
        mac: lladdr,
        state: header.state.into(),
    }))
}

/// An `AF_BRIDGE` `RTM_NEWNEIGH` payload, if it is an entry the device holds itself
/// (`NTF_SELF`; the rest belong to the bridge it is enslaved to) and has a MAC.
pub(crate) fn fdb_entry(payload: &[u8]) -> Result<Option<FdbEntry>, DecodeError> {
    let header = NeighbourHeader::parse(payload)?;
    if header.family != AddressFamily::Bridge || !header.flags.contains(NeighbourFlags::Own) {
        return Ok(None);
    }
    let (mut lladdr, mut dst) = (None, None);
    for attribute in attributes(payload, header.buffer_len()) {
        match attribute? {
            (libc::NDA_LLADDR, value) => lladdr = mac(value),
            (libc::NDA_DST, value) => dst = Some(parse_ip(value)?),
            _ => {}
        }
    }
    Ok(lladdr.map(|mac| FdbEntry {
        index: header.ifindex,
        mac,
        dst,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_core::Emitable;
    use netlink_packet_route::address::{AddressAttribute, AddressMessage};
    use netlink_packet_route::link::{
        InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkInfo, LinkMessage, Stats64,
    };
    use netlink_packet_route::neighbour::{
        NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState,
    };
    use netlink_packet_route::route::{
        RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteScope as NlScope,
    };

    fn bytes(msg: &impl Emitable) -> Vec<u8> {
        let mut out = vec![0; msg.buffer_len()];
        msg.emit(&mut out);
        out
    }

    #[test]
    fn link_fields_are_read_and_other_attributes_ignored() {
        let mut msg = LinkMessage::default();
        msg.header.index = 7;
        msg.header.flags = LinkFlags::Up | LinkFlags::Broadcast;
        msg.attributes = vec![
            LinkAttribute::IfName("mgy1234".into()),
            LinkAttribute::Stats64(Stats64::default()),
            LinkAttribute::Address(vec![0xee; 6]),
            LinkAttribute::Mtu(1450),
            LinkAttribute::Link(3),
            LinkAttribute::LinkInfo(vec![LinkInfo::Kind(InfoKind::Veth)]),
        ];
        assert_eq!(
            link(&bytes(&msg)).unwrap(),
            Link {
                index: 7,
                name: "mgy1234".into(),
                mac: Some([0xee; 6]),
                mtu: 1450,
                up: true,
                kind: Some("veth".into()),
                peer_index: Some(3),
                vxlan: None,
            }
        );
        // Not 6 bytes (e.g. an IPIP tunnel's IPv4 "address"): no MAC.
        msg.attributes = vec![LinkAttribute::Address(vec![10, 0, 0, 1])];
        msg.header.flags = LinkFlags::empty();
        let tunnel = link(&bytes(&msg)).unwrap();
        assert_eq!((tunnel.mac, tunnel.up, tunnel.kind), (None, false, None));
    }

    #[test]
    fn vxlan_settings_are_read_from_info_data() {
        let mut msg = LinkMessage::default();
        msg.attributes = vec![
            LinkAttribute::IfName("vxlan.margay".into()),
            LinkAttribute::LinkInfo(vec![
                LinkInfo::Kind(InfoKind::Vxlan),
                LinkInfo::Data(InfoData::Vxlan(vec![
                    InfoVxlan::Id(4096),
                    InfoVxlan::Local("192.0.2.10".parse().unwrap()),
                    InfoVxlan::Link(2),
                    InfoVxlan::Ttl(0),
                    InfoVxlan::Learning(false),
                    InfoVxlan::Port(4789),
                ])),
            ]),
        ];
        assert_eq!(
            link(&bytes(&msg)).unwrap().vxlan,
            Some(VxlanInfo {
                vni: 4096,
                port: 4789,
                local: Some("192.0.2.10".parse().unwrap()),
                parent_index: Some(2),
                learning: false,
            })
        );
        msg.attributes = vec![LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Vxlan),
            LinkInfo::Data(InfoData::Vxlan(vec![
                InfoVxlan::Id(1),
                InfoVxlan::Local6("fd00::a".parse().unwrap()),
                InfoVxlan::Learning(true),
                InfoVxlan::Port(8472),
            ])),
        ])];
        let info = link(&bytes(&msg)).unwrap().vxlan.unwrap();
        assert_eq!(info.local, Some("fd00::a".parse().unwrap()));
        assert_eq!((info.parent_index, info.learning), (None, true));
    }

    #[test]
    fn address_prefers_local_over_peer() {
        let mut msg = AddressMessage::default();
        msg.header.family = AddressFamily::Inet;
        msg.header.prefix_len = 32;
        msg.header.index = 4;
        msg.attributes = vec![
            AddressAttribute::Address("10.0.0.2".parse().unwrap()),
            AddressAttribute::Local("10.0.0.1".parse().unwrap()),
            AddressAttribute::Label("eth0".into()),
        ];
        assert_eq!(
            address(&bytes(&msg)).unwrap(),
            Some((4, "10.0.0.1/32".parse().unwrap()))
        );
        msg.header.family = AddressFamily::Inet6;
        msg.header.prefix_len = 128;
        msg.attributes = vec![AddressAttribute::Address("fd00::5".parse().unwrap())];
        assert_eq!(
            address(&bytes(&msg)).unwrap(),
            Some((4, "fd00::5/128".parse().unwrap()))
        );
    }

    fn route_msg(table: u8, kind: NlRouteType) -> RouteMessage {
        let mut msg = RouteMessage::default();
        msg.header.address_family = AddressFamily::Inet;
        msg.header.table = table;
        msg.header.kind = kind;
        msg.header.protocol = RouteProtocol::Boot;
        msg.header.scope = NlScope::Universe;
        msg.attributes = vec![
            RouteAttribute::Table(u32::from(table)),
            RouteAttribute::Gateway(RouteAddress::Inet("169.254.1.1".parse().unwrap())),
            RouteAttribute::Oif(2),
        ];
        msg
    }

    #[test]
    fn default_route_of_the_main_table() {
        let msg = route_msg(254, NlRouteType::Unicast);
        assert_eq!(
            main_table_route(&bytes(&msg)).unwrap(),
            Some(Route {
                destination: "0.0.0.0/0".parse().unwrap(),
                gateway: Some("169.254.1.1".parse().unwrap()),
                oif: Some(2),
                scope: RouteScope::Universe,
                table: 254,
                protocol: 3,
                kind: RouteType::Unicast,
                onlink: false,
            })
        );
    }

    #[test]
    fn other_tables_types_and_clones_are_skipped() {
        for msg in [
            route_msg(255, NlRouteType::Unicast),
            route_msg(254, NlRouteType::Local),
            route_msg(254, NlRouteType::Unreachable),
            {
                let mut m = route_msg(254, NlRouteType::Unicast);
                m.header.flags = RouteFlags::Cloned;
                m
            },
            {
                let mut m = route_msg(254, NlRouteType::Unicast);
                m.header.scope = NlScope::Site;
                m
            },
        ] {
            assert_eq!(main_table_route(&bytes(&msg)).unwrap(), None, "{msg:?}");
        }
        // Other tables are still routes, for the monitor.
        let local = route(&bytes(&route_msg(255, NlRouteType::Unicast))).unwrap();
        assert_eq!(local.map(|r| r.table), Some(255));
    }

    #[test]
    fn blackhole_has_no_nexthop_even_when_reported_via_lo() {
        let mut msg = route_msg(254, NlRouteType::BlackHole);
        msg.header.address_family = AddressFamily::Inet6;
        msg.header.destination_prefix_length = 64;
        msg.header.protocol = RouteProtocol::from(77);
        msg.attributes = vec![
            RouteAttribute::Destination(RouteAddress::Inet6("fd00:65::".parse().unwrap())),
            RouteAttribute::Oif(1),
        ];
        assert_eq!(
            main_table_route(&bytes(&msg)).unwrap(),
            Some(Route {
                kind: RouteType::Blackhole,
                protocol: Route::PROTO_MARGAY,
                ..Route::new("fd00:65::/64".parse().unwrap())
            })
        );
    }

    #[test]
    fn onlink_flag_is_read_among_others() {
        let mut msg = route_msg(254, NlRouteType::Unicast);
        msg.header.flags = RouteFlags::Onlink | RouteFlags::Linkdown;
        let route = main_table_route(&bytes(&msg)).unwrap().unwrap();
        assert!(route.onlink);
        msg.header.flags = RouteFlags::Linkdown;
        assert!(!main_table_route(&bytes(&msg)).unwrap().unwrap().onlink);
    }

    #[test]
    fn host_route_with_link_scope() {
        let mut msg = RouteMessage::default();
        msg.header.address_family = AddressFamily::Inet6;
        msg.header.destination_prefix_length = 128;
        msg.header.table = 254;
        msg.header.kind = NlRouteType::Unicast;
        msg.header.scope = NlScope::Link;
        msg.attributes = vec![
            RouteAttribute::Destination(RouteAddress::Inet6("fd00::7".parse().unwrap())),
            RouteAttribute::Oif(9),
        ];
        let route = main_table_route(&bytes(&msg)).unwrap().unwrap();
        assert_eq!(route.destination, "fd00::7/128".parse::<IpNet>().unwrap());
        assert_eq!((route.gateway, route.oif), (None, Some(9)));
        assert_eq!((route.scope, route.protocol), (RouteScope::Link, 0));
    }

    #[test]
    fn neighbour_fields() {
        let mut msg = NeighbourMessage::default();
        msg.header.family = AddressFamily::Inet;
        msg.header.ifindex = 5;
        msg.header.state = NeighbourState::Permanent;
        msg.attributes = vec![
            NeighbourAttribute::Destination(NeighbourAddress::Inet("169.254.1.1".parse().unwrap())),
            NeighbourAttribute::LinkLayerAddress(vec![0xee; 6]),
        ];
        assert_eq!(
            neighbour(&bytes(&msg)).unwrap(),
            Some(Neighbour {
                index: 5,
                ip: "169.254.1.1".parse().unwrap(),
                mac: Some([0xee; 6]),
                state: 0x80,
            })
        );
        msg.header.family = AddressFamily::Bridge;
        assert_eq!(neighbour(&bytes(&msg)).unwrap(), None);
    }

    #[test]
    fn fdb_entries_of_the_device_itself() {
        let mut msg = NeighbourMessage::default();
        msg.header.family = AddressFamily::Bridge;
        msg.header.ifindex = 5;
        msg.header.state = NeighbourState::Permanent;
        msg.header.flags = NeighbourFlags::Own;
        msg.attributes = vec![
            NeighbourAttribute::LinkLayerAddress(vec![0x66, 0, 0, 0, 0, 1]),
            NeighbourAttribute::Destination(NeighbourAddress::Other(vec![192, 0, 2, 7])),
        ];
        assert_eq!(
            fdb_entry(&bytes(&msg)).unwrap(),
            Some(FdbEntry {
                index: 5,
                mac: [0x66, 0, 0, 0, 0, 1],
                dst: Some("192.0.2.7".parse().unwrap()),
            })
        );
        // The bridge's entries for a port, and ARP entries, are not the device's.
        msg.header.flags = NeighbourFlags::Controller;
        assert_eq!(fdb_entry(&bytes(&msg)).unwrap(), None);
        msg.header.flags = NeighbourFlags::Own;
        msg.header.family = AddressFamily::Inet;
        assert_eq!(fdb_entry(&bytes(&msg)).unwrap(), None);
    }

    #[test]
    fn truncated_payloads_are_errors() {
        assert!(link(&[0; 8]).is_err());
        let mut msg = LinkMessage::default();
        msg.attributes = vec![LinkAttribute::Mtu(1500)];
        let mut raw = bytes(&msg);
        raw.truncate(raw.len() - 2);
        assert!(link(&raw).is_err());
    }
}
