//! Real packets against the policy engine: every local pod of a node's program in a network
//! namespace of its own, wired to a "node" namespace as the CNI plugin wires pods (a veth
//! named as the program names it, a /32 route to the pod), and one more pod on an interface
//! the program does not know. Every pod tries TCP to every other on several [`PORTS`]; the
//! SYNs that arrive must be exactly those the engine allows.
//!
//! The test loads the rules into [`PodNetwork::node`] and counts, in each pod, the SYNs it
//! receives by source and port; this module does the rest.

use std::net::IpAddr;

use margay_policy::program::Program;
use margay_policy::{evaluate, Cluster, Packet, Peer, Protocol, Transport};

use crate::netns::TestNs;

/// The ports every pod tries on every other.
pub const PORTS: [u16; 5] = [22, 80, 81, 8080, 9090];

pub struct Pod {
    /// The program's endpoint, or `None` for the pod on an interface it does not know.
    pub id: Option<String>,
    pub ns: TestNs,
    pub ip: IpAddr,
}

/// The node namespace (IPv4 forwarding on) and the pods wired to it: the program's local
/// endpoints at their IPv4 addresses, then one at 10.1.0.99 on `mgyfffffffffff`.
pub struct PodNetwork {
    pub node: TestNs,
    pub pods: Vec<Pod>,
}

impl PodNetwork {
    /// Wires the pods of `program` to a new node namespace; every namespace is `PREFIX-…`.
    pub fn wire(prefix: &'static str, program: &Program) -> PodNetwork {
        let node = TestNs::new(prefix);
        node.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);

        let wire = |iface: &str, ip: IpAddr| {
            let pod = node.sibling();
            node.ip(&format!(
                "link add {iface} type veth peer name eth0 netns {}",
                pod.name()
            ));
            node.ip(&format!("addr add 10.254.0.1/32 dev {iface}"));
            node.ip(&format!("link set {iface} up"));
            node.ip(&format!("route add {ip}/32 dev {iface}"));
            pod.ip("link set lo up");
            pod.ip("link set eth0 up");
            pod.ip(&format!("addr add {ip}/32 dev eth0"));
            pod.ip("route add 10.254.0.1/32 dev eth0");
            pod.ip("route add default via 10.254.0.1 dev eth0");
            pod
        };
        let mut pods: Vec<Pod> = program
            .endpoints
            .iter()
            .map(|(iface, ep)| {
                let ip = *ep.ips.iter().find(|ip| ip.is_ipv4()).unwrap();
                Pod {
                    id: Some(ep.id.clone()),
                    ns: wire(iface, ip),
                    ip,
                }
            })
            .collect();
        let stranger: IpAddr = "10.1.0.99".parse().unwrap();
        pods.push(Pod {
            id: None,
            ns: wire("mgyfffffffffff", stranger),
            ip: stranger,
        });
        PodNetwork { node, pods }
    }

    /// Every pod connects to every other on every port at once; nothing listens, so an
    /// arriving SYN is answered with a reset, and a dropped one times out.
    pub fn connect_all(&self) {
        for src in &self.pods {
            let targets: Vec<String> = self
                .pods
                .iter()
                .filter(|dst| dst.ip != src.ip)
                .flat_map(|dst| PORTS.map(|port| format!("{}/{port}", dst.ip)))
                .collect();
            src.ns.exec(&[
                "bash",
                "-c",
                &format!(
                    "for t in {}; do timeout 1 bash -c \"echo > /dev/tcp/$t\" 2>/dev/null & done; \
                     wait; true",
                    targets.join(" ")
                ),
            ]);
        }
    }

    /// Panics unless a SYN arrived (`arrived(i, j, port)`: from `pods[i]` at `pods[j]` on
    /// `port`) exactly where the engine allows it, and the engine allows some.
    pub fn assert_engine_agrees(
        &self,
        cluster: &Cluster,
        arrived: impl Fn(usize, usize, u16) -> bool,
    ) {
        let pods = &self.pods;
        let mut wrong = Vec::new();
        let mut allowed = 0;
        for (i, src) in pods.iter().enumerate() {
            for (j, dst) in pods.iter().enumerate().filter(|(_, dst)| dst.ip != src.ip) {
                for port in PORTS {
                    let arrived = arrived(i, j, port);
                    let expected = match (&src.id, &dst.id) {
                        (Some(from), Some(to)) => {
                            evaluate(
                                cluster,
                                &Packet {
                                    from: Peer::Endpoint(from.clone()),
                                    to: Peer::Endpoint(to.clone()),
                                    transport: Transport::Ports {
                                        protocol: Protocol::Tcp,
                                        port,
                                        source_port: None,
                                    },
                                },
                            )
                            .allowed
                        }
                        // An unknown workload interface: dropped whatever policy says.
                        _ => false,
                    };
                    allowed += usize::from(expected);
                    if arrived != expected {
                        wrong.push(format!(
                            "{} -> {} port {port}: arrived {arrived}, engine allows {expected}",
                            src.ip, dst.ip
                        ));
                    }
                }
            }
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
        assert!(allowed >= 5, "the fixture should allow some traffic");
    }

    /// A namespace outside the node, linked to it by a veth whose node end is `iface` (a host
    /// endpoint's interface): the node has `node_ip` on it and the outside `ip`, each with a
    /// route to the other through the link, and the outside routes the pods' 10/8 through
    /// the node.
    pub fn outside(&self, iface: &str, node_ip: IpAddr, ip: IpAddr) -> Outside {
        let ns = self.node.sibling();
        let node = &self.node;
        node.ip(&format!(
            "link add {iface} type veth peer name eth0 netns {}",
            ns.name()
        ));
        node.ip(&format!("addr add {node_ip}/32 dev {iface}"));
        node.ip(&format!("link set {iface} up"));
        node.ip(&format!("route add {ip}/32 dev {iface}"));
        ns.ip("link set lo up");
        ns.ip("link set eth0 up");
        ns.ip(&format!("addr add {ip}/32 dev eth0"));
        ns.ip(&format!("route add {node_ip}/32 dev eth0"));
        ns.ip(&format!("route add 10.0.0.0/8 via {node_ip} dev eth0"));
        Outside { ns, ip, node_ip }
    }

    /// Every pod connects to `host`, an address of the node namespace, on every port at
    /// once (nothing listens there either).
    pub fn connect_to_host(&self, host: IpAddr) {
        let targets: Vec<String> = PORTS.iter().map(|port| format!("{host}/{port}")).collect();
        for src in &self.pods {
            src.ns.exec(&[
                "bash",
                "-c",
                &format!(
                    "for t in {}; do timeout 1 bash -c \"echo > /dev/tcp/$t\" 2>/dev/null & done; \
                     wait; true",
                    targets.join(" ")
                ),
            ]);
        }
    }

    /// Panics unless a SYN to `host` (an address of the node the engine knows from its Node
    /// resource) arrived (`arrived(i, port)`: from `pods[i]` on `port`) exactly where the
    /// engine allows it. Returns how many the engine allows.
    pub fn assert_engine_agrees_to_host(
        &self,
        cluster: &Cluster,
        host: IpAddr,
        arrived: impl Fn(usize, u16) -> bool,
    ) -> usize {
        let mut wrong = Vec::new();
        let mut allowed = 0;
        for (i, src) in self.pods.iter().enumerate() {
            for port in PORTS {
                let arrived = arrived(i, port);
                let expected = src.id.as_ref().is_some_and(|from| {
                    let packet = Packet {
                        from: Peer::Endpoint(from.clone()),
                        to: Peer::Ip(host),
                        transport: Transport::Ports {
                            protocol: Protocol::Tcp,
                            port,
                            source_port: None,
                        },
                    };
                    evaluate(cluster, &packet).allowed
                });
                allowed += usize::from(expected);
                if arrived != expected {
                    wrong.push(format!(
                        "{} -> {host} port {port}: arrived {arrived}, engine allows {expected}",
                        src.ip
                    ));
                }
            }
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
        allowed
    }
}

/// A namespace outside the node, behind one of its interfaces ([`PodNetwork::outside`]).
pub struct Outside {
    pub ns: TestNs,
    pub ip: IpAddr,
    /// The node's address on the link.
    pub node_ip: IpAddr,
}

/// `from` connects to `to` on every port of [`PORTS`] at once; nothing listens, so an
/// arriving SYN is answered with a reset, and a dropped one times out.
pub fn connect(from: &TestNs, to: IpAddr) {
    let targets: Vec<String> = PORTS.iter().map(|port| format!("{to}/{port}")).collect();
    from.exec(&[
        "bash",
        "-c",
        &format!(
            "for t in {}; do timeout 1 bash -c \"echo > /dev/tcp/$t\" 2>/dev/null & done; \
             wait; true",
            targets.join(" ")
        ),
    ]);
}

/// Panics unless what passed the node between it and `outside` on each port of [`PORTS`]
/// is what the engine allows: the outside's connections to the node (`into_node(port)`: the
/// node's host endpoint let the SYN in) and the node's to the outside (`out_of_node(port)`:
/// the SYN left). Returns how many the engine allows each way.
pub fn assert_engine_agrees_through_host_endpoint(
    cluster: &Cluster,
    outside: &Outside,
    into_node: impl Fn(u16) -> bool,
    out_of_node: impl Fn(u16) -> bool,
) -> (usize, usize) {
    let mut wrong = Vec::new();
    let mut allowed = (0, 0);
    let packet = |from: IpAddr, to: IpAddr, port: u16| Packet {
        from: Peer::Ip(from),
        to: Peer::Ip(to),
        transport: Transport::Ports {
            protocol: Protocol::Tcp,
            port,
            source_port: None,
        },
    };
    for port in PORTS {
        let (outside_ip, node_ip) = (outside.ip, outside.node_ip);
        // The outside is no endpoint: only the node's side decides.
        let inward = evaluate(cluster, &packet(outside_ip, node_ip, port)).allowed;
        let outward = evaluate(cluster, &packet(node_ip, outside_ip, port)).allowed;
        allowed.0 += usize::from(inward);
        allowed.1 += usize::from(outward);
        for (what, arrived, expected) in [
            ("into the node", into_node(port), inward),
            ("out of the node", out_of_node(port), outward),
        ] {
            if arrived != expected {
                wrong.push(format!(
                    "{what} on port {port}: passed {arrived}, engine allows {expected}"
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    allowed
}
