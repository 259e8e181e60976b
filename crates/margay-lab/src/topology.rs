//! Where everything of a lab goes, as plain data: namespace names, node addresses, and the
//! list of steps that builds the network (rendered as the `ip` commands a person would type).

use std::fmt;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::spec::{LabSpec, Mode, PodSpec};

/// The fabric's bridge for node subnet `i`.
pub fn bridge(i: usize) -> String {
    format!("br{i}")
}

/// The interface name pods and nodes see for their uplink.
pub const UPLINK: &str = "eth0";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodePlan {
    pub name: String,
    pub netns: String,
    /// Its address on the fabric, with the subnet's prefix length.
    pub ip: Ipv4Net,
    /// Its default route: the fabric (one subnet) or the router (two subnets). Nothing
    /// beyond it forwards, so this only gives proxy ARP a route to answer for.
    pub gateway: Ipv4Addr,
    /// Which node subnet (and fabric bridge) it is on.
    pub subnet: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodPlan {
    #[serde(flatten)]
    pub spec: PodSpec,
    pub netns: String,
    /// The CNI container ID the lab uses for it.
    pub container_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Topology {
    pub lab: String,
    pub mode: Mode,
    pub fabric_netns: String,
    /// Only with two subnets (`crosssubnet`).
    pub router_netns: Option<String>,
    pub subnets: Vec<Ipv4Net>,
    /// The fabric's own address on bridge 0 (etcd listens there).
    pub fabric_ip: Ipv4Addr,
    pub nodes: Vec<NodePlan>,
    pub pods: Vec<PodPlan>,
}

/// One change to the machine; applied in order, each undone by deleting namespaces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Netns {
        name: String,
    },
    Bridge {
        netns: String,
        name: String,
    },
    /// A veth pair from `netns` to `peer_netns`.
    Veth {
        netns: String,
        name: String,
        peer_netns: String,
        peer: String,
    },
    Master {
        netns: String,
        link: String,
        bridge: String,
    },
    Address {
        netns: String,
        link: String,
        address: Ipv4Net,
    },
    Up {
        netns: String,
        link: String,
    },
    Route {
        netns: String,
        destination: Ipv4Net,
        via: Ipv4Addr,
    },
    Sysctl {
        netns: String,
        key: String,
        value: String,
    },
}

impl fmt::Display for Step {
    /// The equivalent `ip`/`sysctl` command.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::Netns { name } => write!(f, "ip netns add {name}"),
            Step::Bridge { netns, name } => write!(f, "ip -n {netns} link add {name} type bridge"),
            Step::Veth {
                netns,
                name,
                peer_netns,
                peer,
            } => write!(
                f,
                "ip -n {netns} link add {name} type veth peer name {peer} netns {peer_netns}"
            ),
            Step::Master {
                netns,
                link,
                bridge,
            } => write!(f, "ip -n {netns} link set {link} master {bridge}"),
            Step::Address {
                netns,
                link,
                address,
            } => write!(f, "ip -n {netns} addr add {address} dev {link}"),
            Step::Up { netns, link } => write!(f, "ip -n {netns} link set {link} up"),
            Step::Route {
                netns,
                destination,
                via,
            } => {
                let dst = if destination.prefix_len() == 0 {
                    "default".to_owned()
                } else {
                    destination.to_string()
                };
                write!(f, "ip -n {netns} route add {dst} via {via}")
            }
            Step::Sysctl { netns, key, value } => {
                write!(f, "ip netns exec {netns} sysctl -w {key}={value}")
            }
        }
    }
}

/// The `i`-th /24 of the fabric.
fn subnet(fabric: Ipv4Net, i: usize) -> Ipv4Net {
    let base = u32::from(fabric.network()) + ((i as u32) << 8);
    Ipv4Net::new(Ipv4Addr::from(base), 24).expect("24 is a valid prefix length")
}

fn host(subnet: Ipv4Net, n: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(subnet.network()) + n)
}

/// The fabric's address on subnet 0, and the router's on every subnet.
const FABRIC_HOST: u32 = 1;
const ROUTER_HOST: u32 = 254;
/// Nodes are numbered from `.11` in their subnet.
const FIRST_NODE_HOST: u32 = 11;

pub fn netns_name(lab: &str, role: &str) -> String {
    format!("{lab}-{role}")
}

pub fn node_netns(lab: &str, node: &str) -> String {
    format!("{lab}-node-{node}")
}

/// Namespace and pod names have no '.', so `ns.pod` is unambiguous.
pub fn pod_netns(lab: &str, namespace: &str, pod: &str) -> String {
    format!("{lab}-pod-{namespace}.{pod}")
}

impl Topology {
    pub fn plan(lab: &str, spec: &LabSpec) -> Topology {
        let subnet_count = if spec.mode == Mode::Crosssubnet { 2 } else { 1 };
        let subnets: Vec<Ipv4Net> = (0..subnet_count).map(|i| subnet(spec.fabric, i)).collect();
        let fabric_ip = host(subnets[0], FABRIC_HOST);
        let mut per_subnet = vec![0u32; subnet_count];
        let nodes = spec
            .nodes
            .iter()
            .enumerate()
            .map(|(i, name)| {
                // Alternate subnets, so both same-subnet and cross-subnet pairs exist.
                let s = i % subnet_count;
                let ip = host(subnets[s], FIRST_NODE_HOST + per_subnet[s]);
                per_subnet[s] += 1;
                NodePlan {
                    name: name.clone(),
                    netns: node_netns(lab, name),
                    ip: Ipv4Net::new(ip, 24).expect("24 is a valid prefix length"),
                    gateway: if subnet_count > 1 {
                        host(subnets[s], ROUTER_HOST)
                    } else {
                        fabric_ip
                    },
                    subnet: s,
                }
            })
            .collect();
        let pods = spec
            .pods
            .iter()
            .map(|p| PodPlan {
                netns: pod_netns(lab, &p.namespace, &p.name),
                // Container IDs allow letters, digits and '-' only; the namespace's length
                // keeps `ns-pod` unambiguous.
                container_id: format!("lab-{}-{}-{}", p.namespace.len(), p.namespace, p.name),
                spec: p.clone(),
            })
            .collect();
        Topology {
            lab: lab.to_owned(),
            mode: spec.mode,
            fabric_netns: netns_name(lab, "fabric"),
            router_netns: (subnet_count > 1).then(|| netns_name(lab, "router")),
            subnets,
            fabric_ip,
            nodes,
            pods,
        }
    }

    /// Every namespace of the lab, in the order `down` removes them (pods, nodes, router,
    /// fabric: users before the links they hang on).
    pub fn namespaces(&self) -> Vec<String> {
        let mut out: Vec<String> = self.pods.iter().map(|p| p.netns.clone()).collect();
        out.extend(self.nodes.iter().map(|n| n.netns.clone()));
        out.extend(self.router_netns.iter().cloned());
        out.push(self.fabric_netns.clone());
        out
    }

    pub fn node(&self, name: &str) -> Option<&NodePlan> {
        self.nodes.iter().find(|n| n.name == name)
    }

    pub fn pod(&self, id: &str) -> Option<&PodPlan> {
        self.pods.iter().find(|p| p.spec.id() == id)
    }

    /// The network: fabric (and router), nodes with their uplinks, and empty pod namespaces
    /// for the CNI plugin to wire.
    pub fn steps(&self) -> Vec<Step> {
        let fabric = &self.fabric_netns;
        let mut steps = vec![Step::Netns {
            name: fabric.clone(),
        }];
        // The fabric only bridges; it must never route between the subnets itself.
        steps.push(sysctl(fabric, "net.ipv4.ip_forward", "0"));
        for i in 0..self.subnets.len() {
            steps.push(Step::Bridge {
                netns: fabric.clone(),
                name: bridge(i),
            });
            steps.push(up(fabric, &bridge(i)));
        }
        steps.push(Step::Address {
            netns: fabric.clone(),
            link: bridge(0),
            address: Ipv4Net::new(self.fabric_ip, 24).expect("valid prefix"),
        });
        if let Some(router) = &self.router_netns {
            steps.push(Step::Netns {
                name: router.clone(),
            });
            for (i, subnet) in self.subnets.iter().enumerate() {
                let port = format!("r{i}");
                let inside = format!("eth{i}");
                steps.extend(plug(fabric, &port, router, &inside, i));
                steps.push(Step::Address {
                    netns: router.clone(),
                    link: inside.clone(),
                    address: Ipv4Net::new(host(*subnet, ROUTER_HOST), 24).expect("valid"),
                });
                steps.push(up(router, &inside));
            }
            steps.push(sysctl(router, "net.ipv4.ip_forward", "1"));
            // Replies from the fabric (etcd) to nodes on the other subnets go via the router.
            for subnet in &self.subnets[1..] {
                steps.push(Step::Route {
                    netns: fabric.clone(),
                    destination: *subnet,
                    via: host(self.subnets[0], ROUTER_HOST),
                });
            }
        }
        for (i, node) in self.nodes.iter().enumerate() {
            steps.push(Step::Netns {
                name: node.netns.clone(),
            });
            steps.extend(plug(
                fabric,
                &format!("n{i}"),
                &node.netns,
                UPLINK,
                node.subnet,
            ));
            steps.push(Step::Address {
                netns: node.netns.clone(),
                link: UPLINK.into(),
                address: node.ip,
            });
            steps.push(up(&node.netns, UPLINK));
            steps.push(Step::Route {
                netns: node.netns.clone(),
                destination: Ipv4Net::default(),
                via: node.gateway,
            });
        }
        for pod in &self.pods {
            steps.push(Step::Netns {
                name: pod.netns.clone(),
            });
        }
        steps
    }
}

fn up(netns: &str, link: &str) -> Step {
    Step::Up {
        netns: netns.into(),
        link: link.into(),
    }
}

fn sysctl(netns: &str, key: &str, value: &str) -> Step {
    Step::Sysctl {
        netns: netns.into(),
        key: key.into(),
        value: value.into(),
    }
}

/// A veth from the fabric's bridge `subnet` to `inside` in `netns`.
fn plug(fabric: &str, port: &str, netns: &str, inside: &str, subnet: usize) -> Vec<Step> {
    vec![
        Step::Veth {
            netns: fabric.into(),
            name: port.into(),
            peer_netns: netns.into(),
            peer: inside.into(),
        },
        Step::Master {
            netns: fabric.into(),
            link: port.into(),
            bridge: bridge(subnet),
        },
        up(fabric, port),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{default_spec, parse_spec, Overrides};

    fn golden(name: &str, actual: &str) {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/golden")
            .join(name);
        if std::env::var_os("MARGAY_UPDATE_GOLDEN").is_some() {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, actual).unwrap();
        }
        let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!("{}: {e} (MARGAY_UPDATE_GOLDEN=1 writes it)", path.display())
        });
        assert_eq!(actual, expected, "{} differs", path.display());
    }

    fn render(t: &Topology) -> String {
        t.steps().iter().map(|s| format!("{s}\n")).collect()
    }

    #[test]
    fn vxlan_lab_steps_match_golden() {
        let spec = default_spec(3, 1, &Overrides::default()).unwrap();
        let t = Topology::plan("margay", &spec);
        assert_eq!(t.nodes[2].ip.to_string(), "172.30.0.13/24");
        assert_eq!(t.nodes[2].gateway.to_string(), "172.30.0.1");
        assert_eq!(t.pods[0].netns, "margay-pod-default.pod-1-1");
        assert_eq!(t.pods[0].container_id, "lab-7-default-pod-1-1");
        golden("vxlan-3x1.steps", &render(&t));
    }

    #[test]
    fn crosssubnet_lab_alternates_subnets_behind_a_router() {
        let spec = parse_spec(
            "mode: crosssubnet\nfabric: 10.9.0.0/16\nnodes: [a, b, c]\npools: [{cidr: 10.244.0.0/16}]",
            "t.yaml",
            &Overrides::default(),
        )
        .unwrap();
        let t = Topology::plan("lab2", &spec);
        let ips: Vec<_> = t
            .nodes
            .iter()
            .map(|n| (n.ip.to_string(), n.gateway.to_string()))
            .collect();
        assert_eq!(
            ips,
            [
                ("10.9.0.11/24".to_owned(), "10.9.0.254".to_owned()),
                ("10.9.1.11/24".to_owned(), "10.9.1.254".to_owned()),
                ("10.9.0.12/24".to_owned(), "10.9.0.254".to_owned()),
            ]
        );
        assert_eq!(
            t.namespaces(),
            [
                "lab2-node-a",
                "lab2-node-b",
                "lab2-node-c",
                "lab2-router",
                "lab2-fabric"
            ]
        );
        golden("crosssubnet-3.steps", &render(&t));
    }
}
