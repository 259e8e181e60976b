//! The node's own IP address, found as Calico's `IP_AUTODETECTION_METHOD` finds it.
//!
//! [`choose`] is the decision, pure and tested with fake links; [`detect`] feeds it what the
//! kernel reports.

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::str::FromStr;
use std::sync::LazyLock;

use ipnet::IpNet;
use margay_sys::netlink::{Link, RouteSocket};
use regex::Regex;

/// Interfaces that first-found and skip-interface never pick: loopback, container bridges,
/// veths, VM bridges and overlay devices (Calico's list, plus Margay's `mgy` veths and
/// Docker's `br-` networks).
static DEFAULT_EXCLUDES: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        "^docker.*|^cbr.*|^dummy.*|^virbr.*|^lxcbr.*|^veth.*|^lo$|^cali.*|^mgy.*|^tunl.*|\
         ^flannel.*|^kube-ipvs.*|^cni.*|^vxlan.*|^vxlan-v6.*|^nodelocaldns.*|^br-.*",
    )
    .expect("the default exclusions are a valid regex")
});

/// Any port will do: connecting a UDP socket only asks the kernel for a route, sending nothing.
const REACH_PORT: u16 = 80;

/// How to pick the node's address (`IP_AUTODETECTION_METHOD` / `IP6_AUTODETECTION_METHOD`).
#[derive(Debug, Clone)]
pub enum Method {
    /// The first up interface, by index, outside the default exclusions.
    FirstFound,
    /// The first up interface whose name matches.
    Interface(Regex),
    /// Like [`Method::FirstFound`], also skipping interfaces whose name matches.
    SkipInterface(Regex),
    /// The address the kernel would send from to reach this one.
    CanReach(IpAddr),
}

impl FromStr for Method {
    type Err = Error;

    /// `first-found`, `interface=REGEX`, `skip-interface=REGEX` or `can-reach=ADDRESS`. As in
    /// Calico, a REGEX may be a comma-separated list, matching when any of them does.
    fn from_str(value: &str) -> Result<Method, Error> {
        let invalid = |reason: String| Error::InvalidMethod {
            value: value.into(),
            reason,
        };
        if value == "first-found" {
            return Ok(Method::FirstFound);
        }
        if let Some(list) = value.strip_prefix("interface=") {
            return interface_regex(list)
                .map(Method::Interface)
                .map_err(invalid);
        }
        if let Some(list) = value.strip_prefix("skip-interface=") {
            return interface_regex(list)
                .map(Method::SkipInterface)
                .map_err(invalid);
        }
        if let Some(target) = value.strip_prefix("can-reach=") {
            return target
                .parse()
                .map(Method::CanReach)
                .map_err(|_| invalid(format!("{target:?} is not an IP address")));
        }
        Err(invalid(
            "expected first-found, interface=REGEX, skip-interface=REGEX or can-reach=ADDRESS"
                .into(),
        ))
    }
}

/// One regex out of Calico's comma-separated list (`eth0, ens.*`).
fn interface_regex(list: &str) -> Result<Regex, String> {
    let parts: Vec<&str> = list.split(',').map(str::trim).collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err("an interface name regex is empty".into());
    }
    let pattern = match parts.as_slice() {
        [one] => one.to_string(),
        many => many
            .iter()
            .map(|p| format!("(?:{p})"))
            .collect::<Vec<_>>()
            .join("|"),
    };
    Regex::new(&pattern).map_err(|e| match e {
        // The syntax error's last line is the explanation; the lines above draw the pattern
        // with a caret, which does not belong in a one-line message.
        regex::Error::Syntax(text) => text
            .lines()
            .last()
            .unwrap_or_default()
            .trim_start_matches("error: ")
            .to_string(),
        other => other.to_string(),
    })
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Method::FirstFound => f.write_str("first-found"),
            Method::Interface(re) => write!(f, "interface={re}"),
            Method::SkipInterface(re) => write!(f, "skip-interface={re}"),
            Method::CanReach(target) => write!(f, "can-reach={target}"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid IP autodetection method {value:?}: {reason}")]
    InvalidMethod { value: String, reason: String },
    /// The method found nothing; `reason` says where it looked.
    #[error("IP autodetection ({method}) found no {family} address: {reason}")]
    NotFound {
        method: String,
        family: &'static str,
        reason: String,
    },
    #[error("IP autodetection (can-reach={target}): finding the source address: {error}")]
    Unreachable { target: IpAddr, error: io::Error },
    #[error("IP autodetection: {0}")]
    Netlink(#[from] margay_sys::Error),
}

/// Picks the node's address, with its prefix (e.g. `192.168.1.10/24`), from the links and
/// their `(link index, address)` pairs. `reach_source` is the kernel's source address towards
/// the target of [`Method::CanReach`] (unused by the other methods).
pub fn choose(
    method: &Method,
    links: &[Link],
    addrs: &[(u32, IpNet)],
    ipv6: bool,
    reach_source: Option<IpAddr>,
) -> Result<IpNet, Error> {
    let family = if ipv6 { "IPv6" } else { "IPv4" };
    let not_found = |reason: String| Error::NotFound {
        method: method.to_string(),
        family,
        reason,
    };
    let none_on = |interfaces: String| {
        not_found(format!(
            "no global unicast {family} address on an up interface {interfaces}"
        ))
    };
    let excluded = |name: &str| DEFAULT_EXCLUDES.is_match(name);
    match method {
        Method::FirstFound => {
            first_up(links, addrs, ipv6, |name| !excluded(name)).ok_or_else(|| {
                none_on(
                    "outside the default exclusions (lo, docker*, veth*, cali*, mgy*, …)".into(),
                )
            })
        }
        Method::SkipInterface(skip) => first_up(links, addrs, ipv6, |name| {
            !excluded(name) && !skip.is_match(name)
        })
        .ok_or_else(|| {
            none_on(format!(
                "outside the default exclusions and not matching {skip}"
            ))
        }),
        Method::Interface(re) => first_up(links, addrs, ipv6, |name| re.is_match(name))
            .ok_or_else(|| none_on(format!("matching {re}"))),
        Method::CanReach(target) => {
            if target.is_ipv6() != ipv6 {
                return Err(not_found(format!("{target} is not an {family} address")));
            }
            let source = reach_source
                .ok_or_else(|| not_found("no source address towards it was given".into()))?;
            // The prefix is that of the address on its interface.
            addrs
                .iter()
                .map(|(_, net)| *net)
                .find(|net| net.addr() == source)
                .ok_or_else(|| {
                    not_found(format!(
                        "the kernel reaches {target} from {source}, which is on no local \
                         interface"
                    ))
                })
        }
    }
}

/// The first global unicast address of the family on the up interface with the lowest index
/// whose name is `wanted`. (Calico walks Go's index-ordered list backwards, an order its docs
/// only call "system dependent"; ascending is what people expect and can predict.)
fn first_up(
    links: &[Link],
    addrs: &[(u32, IpNet)],
    ipv6: bool,
    wanted: impl Fn(&str) -> bool,
) -> Option<IpNet> {
    let mut candidates: Vec<&Link> = links
        .iter()
        .filter(|link| link.up && wanted(&link.name))
        .collect();
    candidates.sort_by_key(|link| link.index);
    candidates.iter().find_map(|link| {
        addrs
            .iter()
            .find(|(index, net)| {
                *index == link.index
                    && net.addr().is_ipv6() == ipv6
                    && is_global_unicast(net.addr())
            })
            .map(|(_, net)| *net)
    })
}

/// Go's `IP.IsGlobalUnicast`, which Calico uses: private ranges count, loopback, link-local,
/// multicast and unspecified do not.
fn is_global_unicast(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(ip) => {
            !(ip.is_loopback()
                || ip.is_link_local()
                || ip.is_multicast()
                || ip.is_unspecified()
                || ip == Ipv4Addr::BROADCAST)
        }
        IpAddr::V6(ip) => {
            !(ip.is_loopback()
                || ip.is_unicast_link_local()
                || ip.is_multicast()
                || ip.is_unspecified())
        }
    }
}

/// [`choose`] with the calling thread's network namespace as it is now.
pub fn detect(method: &Method, ipv6: bool) -> Result<IpNet, Error> {
    let reach_source = match method {
        Method::CanReach(target) => Some(source_towards(*target)?),
        _ => None,
    };
    let mut socket = RouteSocket::new()?;
    let links = socket.links()?;
    let addrs = socket.addresses(None)?;
    choose(method, &links, &addrs, ipv6, reach_source)
}

/// The source address the kernel picks for `target`: connecting a UDP socket resolves the
/// route without sending a packet.
fn source_towards(target: IpAddr) -> Result<IpAddr, Error> {
    let unreachable = |error| Error::Unreachable { target, error };
    let any: IpAddr = match target {
        IpAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
        IpAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
    };
    let socket = UdpSocket::bind(SocketAddr::new(any, 0)).map_err(unreachable)?;
    socket
        .connect(SocketAddr::new(target, REACH_PORT))
        .map_err(unreachable)?;
    Ok(socket.local_addr().map_err(unreachable)?.ip())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(index: u32, name: &str, up: bool) -> Link {
        Link {
            index,
            name: name.into(),
            mac: None,
            mtu: 1500,
            up,
            kind: None,
            peer_index: None,
            vxlan: None,
        }
    }

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    /// A typical node: loopback, a down NIC, two NICs, Docker, a pod veth, a VXLAN device.
    fn host() -> (Vec<Link>, Vec<(u32, IpNet)>) {
        let links = vec![
            link(1, "lo", true),
            link(2, "eth0", false),
            link(3, "eth1", true),
            link(4, "ens5", true),
            link(5, "docker0", true),
            link(6, "mgy0123456789a", true),
            link(7, "vxlan.margay", true),
        ];
        let addrs = vec![
            (1, net("127.0.0.1/8")),
            (1, net("::1/128")),
            (2, net("192.168.9.9/24")),
            (3, net("fe80::1/64")),
            (3, net("169.254.3.3/16")),
            (3, net("10.0.1.5/16")),
            (3, net("2001:db8:1::5/64")),
            (4, net("172.31.4.4/20")),
            (4, net("fd00:4::4/64")),
            (5, net("172.17.0.1/16")),
            (6, net("169.254.1.1/32")),
            (7, net("10.244.0.0/32")),
        ];
        (links, addrs)
    }

    fn pick(method: &str, ipv6: bool) -> Result<IpNet, Error> {
        let (links, addrs) = host();
        choose(&method.parse().unwrap(), &links, &addrs, ipv6, None)
    }

    #[test]
    fn first_found_takes_the_first_up_unexcluded_interface_with_a_global_address() {
        // lo is excluded, eth0 is down, and eth1's link-local addresses are skipped.
        assert_eq!(pick("first-found", false).unwrap(), net("10.0.1.5/16"));
        assert_eq!(pick("first-found", true).unwrap(), net("2001:db8:1::5/64"));
    }

    #[test]
    fn first_found_orders_interfaces_by_index_not_by_listing() {
        let (mut links, addrs) = host();
        links.reverse();
        let found = choose(&Method::FirstFound, &links, &addrs, false, None).unwrap();
        assert_eq!(found, net("10.0.1.5/16"));
    }

    #[test]
    fn first_found_never_picks_an_excluded_interface() {
        let excluded = [
            "docker0",
            "cbr0",
            "dummy0",
            "virbr0",
            "lxcbr0",
            "veth1234",
            "lo",
            "cali12345",
            "mgy0123",
            "tunl0",
            "flannel.1",
            "kube-ipvs0",
            "cni0",
            "vxlan.calico",
            "vxlan-v6.x",
            "nodelocaldns",
            "br-1a2b3c",
        ];
        let links: Vec<Link> = excluded
            .iter()
            .enumerate()
            .map(|(i, name)| link(i as u32 + 1, name, true))
            .collect();
        let addrs: Vec<(u32, IpNet)> = links
            .iter()
            .map(|l| (l.index, net(&format!("10.1.{}.1/24", l.index))))
            .collect();
        let e = choose(&Method::FirstFound, &links, &addrs, false, None).unwrap_err();
        assert_eq!(
            e.to_string(),
            "IP autodetection (first-found) found no IPv4 address: no global unicast IPv4 \
             address on an up interface outside the default exclusions (lo, docker*, veth*, \
             cali*, mgy*, …)"
        );
        // Only whole-name "lo" is loopback; "lower0" and "br0" are ordinary interfaces.
        let links = vec![link(1, "lower0", true), link(2, "br0", true)];
        let addrs = vec![(1, net("10.9.0.1/24")), (2, net("10.9.1.1/24"))];
        let found = choose(&Method::FirstFound, &links, &addrs, false, None).unwrap();
        assert_eq!(found, net("10.9.0.1/24"));
    }

    #[test]
    fn interface_takes_the_first_matching_up_interface() {
        assert_eq!(
            pick("interface=ens.*", false).unwrap(),
            net("172.31.4.4/20")
        );
        assert_eq!(pick("interface=ens.*", true).unwrap(), net("fd00:4::4/64"));
        // The default exclusions do not apply when the interface is named.
        assert_eq!(
            pick("interface=docker0", false).unwrap(),
            net("172.17.0.1/16")
        );
        // A comma-separated list matches any of its regexes.
        assert_eq!(
            pick("interface=nope, ens5", false).unwrap(),
            net("172.31.4.4/20")
        );
        // eth0 matches but is down.
        let e = pick("interface=eth0", false).unwrap_err();
        assert_eq!(
            e.to_string(),
            "IP autodetection (interface=eth0) found no IPv4 address: no global unicast IPv4 \
             address on an up interface matching eth0"
        );
    }

    #[test]
    fn skip_interface_is_first_found_without_the_matching_interfaces() {
        assert_eq!(
            pick("skip-interface=eth1", false).unwrap(),
            net("172.31.4.4/20")
        );
        assert_eq!(
            pick("skip-interface=^eth", true).unwrap(),
            net("fd00:4::4/64")
        );
        let e = pick("skip-interface=eth.*,ens5", false).unwrap_err();
        assert_eq!(
            e.to_string(),
            "IP autodetection (skip-interface=(?:eth.*)|(?:ens5)) found no IPv4 address: no \
             global unicast IPv4 address on an up interface outside the default exclusions \
             and not matching (?:eth.*)|(?:ens5)"
        );
    }

    #[test]
    fn can_reach_takes_the_kernels_source_address_with_its_prefix() {
        let (links, addrs) = host();
        let method: Method = "can-reach=172.31.0.2".parse().unwrap();
        let source = Some("172.31.4.4".parse().unwrap());
        let found = choose(&method, &links, &addrs, false, source).unwrap();
        assert_eq!(found, net("172.31.4.4/20"));

        let method: Method = "can-reach=2001:db8:1::1".parse().unwrap();
        let source = Some("2001:db8:1::5".parse().unwrap());
        let found = choose(&method, &links, &addrs, true, source).unwrap();
        assert_eq!(found, net("2001:db8:1::5/64"));

        let method: Method = "can-reach=8.8.8.8".parse().unwrap();
        let source = Some("100.64.0.1".parse().unwrap());
        let e = choose(&method, &links, &addrs, false, source).unwrap_err();
        assert_eq!(
            e.to_string(),
            "IP autodetection (can-reach=8.8.8.8) found no IPv4 address: the kernel reaches \
             8.8.8.8 from 100.64.0.1, which is on no local interface"
        );
        let e = choose(&method, &links, &addrs, true, source).unwrap_err();
        assert_eq!(
            e.to_string(),
            "IP autodetection (can-reach=8.8.8.8) found no IPv6 address: 8.8.8.8 is not an \
             IPv6 address"
        );
    }

    #[test]
    fn methods_parse_and_print_back() {
        for text in [
            "first-found",
            "interface=eth0",
            "interface=en.*",
            "skip-interface=^docker",
            "can-reach=10.0.0.1",
            "can-reach=2001:db8::1",
        ] {
            let method: Method = text.parse().unwrap();
            assert_eq!(method.to_string(), text);
        }
    }

    #[test]
    fn bad_methods_are_named_with_the_reason() {
        for (text, message) in [
            (
                "last-found",
                "invalid IP autodetection method \"last-found\": expected first-found, \
                 interface=REGEX, skip-interface=REGEX or can-reach=ADDRESS",
            ),
            (
                "interface=eth[",
                "invalid IP autodetection method \"interface=eth[\": unclosed character class",
            ),
            (
                "skip-interface=",
                "invalid IP autodetection method \"skip-interface=\": an interface name regex \
                 is empty",
            ),
            (
                "interface=eth0,",
                "invalid IP autodetection method \"interface=eth0,\": an interface name regex \
                 is empty",
            ),
            (
                "can-reach=www.example.com",
                "invalid IP autodetection method \"can-reach=www.example.com\": \
                 \"www.example.com\" is not an IP address",
            ),
        ] {
            let e = text.parse::<Method>().unwrap_err();
            assert_eq!(e.to_string(), message, "{text}");
        }
    }

    #[test]
    fn global_unicast_is_gos_definition() {
        for (ip, global) in [
            ("10.0.0.1", true),
            ("192.168.1.1", true),
            ("8.8.8.8", true),
            ("127.0.0.1", false),
            ("169.254.1.1", false),
            ("224.0.0.1", false),
            ("0.0.0.0", false),
            ("255.255.255.255", false),
            ("2001:db8::1", true),
            ("fd00::1", true),
            ("::1", false),
            ("fe80::1", false),
            ("ff02::1", false),
            ("::", false),
        ] {
            assert_eq!(is_global_unicast(ip.parse().unwrap()), global, "{ip}");
        }
    }
}
