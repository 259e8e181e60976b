//! The plan for every encapsulation mode, as golden data, and the diff against a kernel that
//! already has it (a restart must change nothing) or has something else.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use ipnet::IpNet;
use margay_agent::model::{BlockSummary, Model};
use margay_agent::plan::{self, Host, Plan, RouteSpec, RouteTarget, VXLAN_DEVICE};
use margay_agent::reconcile::{diff, Observed, ObservedVxlan, Op};
use margay_api::{
    EncapMode, IPPool, IpOrCidr, MacAddr, Node, NodeBGPSpec, ObjectMeta, WorkloadEndpoint,
    WorkloadEndpointSpec,
};

fn node(name: &str, ip: &str, tunnel: Option<&str>, mac: u8) -> Node {
    let mut n = Node::new(name);
    n.spec.bgp = Some(NodeBGPSpec {
        ipv4_address: Some(IpOrCidr::Cidr(ip.parse().unwrap())),
        ipv4_ipip_tunnel_addr: tunnel.map(|t| t.parse().unwrap()),
        ..Default::default()
    });
    n.spec.ipv4_vxlan_tunnel_addr = tunnel.map(|t| t.parse().unwrap());
    n.spec.vxlan_tunnel_mac_addr = tunnel.map(|_| MacAddr([0x66, 0, 0, 0, 0, mac]));
    n
}

fn block(cidr: &str, owner: &str) -> BlockSummary {
    BlockSummary {
        cidr: cidr.parse().unwrap(),
        affinity: Some(format!("host:{owner}")),
    }
}

fn endpoint(node: &str, ip: &str, iface: &str) -> WorkloadEndpoint {
    WorkloadEndpoint {
        metadata: ObjectMeta::namespaced("default", format!("{node}-k8s-{iface}-eth0")),
        spec: WorkloadEndpointSpec {
            node: node.into(),
            ip_networks: vec![format!("{ip}/32").parse().unwrap()],
            interface_name: iface.into(),
            ..Default::default()
        },
    }
}

/// Node a (us) 192.168.1.10/24, b in the same subnet, c in another; one block each; a local
/// pod, and a pod on b with an address borrowed from c's block.
fn model(vxlan: EncapMode, ipip: EncapMode) -> Model {
    let mut pool = IPPool::new("pool", "10.244.0.0/16".parse().unwrap());
    pool.spec.vxlan_mode = vxlan;
    pool.spec.ipip_mode = ipip;
    pool.spec.nat_outgoing = true;
    let mut model = Model {
        pools: vec![pool],
        ..Default::default()
    };
    for n in [
        node("a", "192.168.1.10/24", Some("10.244.0.1"), 0xa),
        node("b", "192.168.1.11/24", Some("10.244.1.1"), 0xb),
        node("c", "192.168.2.12/24", Some("10.244.2.1"), 0xc),
    ] {
        model.nodes.insert(n.metadata.name.clone(), n);
    }
    model.blocks = vec![
        block("10.244.0.0/26", "a"),
        block("10.244.1.0/26", "b"),
        block("10.244.2.0/26", "c"),
    ];
    model.endpoints = vec![
        endpoint("a", "10.244.0.5", "mgy1111"),
        endpoint("b", "10.244.2.40", "mgy2222"),
    ];
    model
}

fn host() -> Host {
    Host {
        node: "a".into(),
        ip: "192.168.1.10/24".parse().unwrap(),
        uplink: "eth0".into(),
        uplink_mtu: 1500,
    }
}

fn check_golden(name: &str, plan: &Plan) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(format!("{name}.json"));
    let mut rendered = serde_json::to_string_pretty(plan).unwrap();
    rendered.push('\n');
    if std::env::var_os("MARGAY_UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &rendered).unwrap();
    }
    let golden = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (MARGAY_UPDATE_GOLDEN=1 writes it)", path.display()));
    assert_eq!(
        rendered,
        golden,
        "plan {name} differs from {}",
        path.display()
    );
}

#[test]
fn plans_for_every_mode() {
    for (name, vxlan, ipip) in [
        ("vxlan-always", EncapMode::Always, EncapMode::Never),
        (
            "vxlan-crosssubnet",
            EncapMode::CrossSubnet,
            EncapMode::Never,
        ),
        ("ipip-always", EncapMode::Never, EncapMode::Always),
        ("ipip-crosssubnet", EncapMode::Never, EncapMode::CrossSubnet),
        ("never", EncapMode::Never, EncapMode::Never),
    ] {
        check_golden(name, &plan::plan(&model(vxlan, ipip), &host()));
    }
}

#[test]
fn vxlan_plan_in_words() {
    let p = plan::plan(&model(EncapMode::Always, EncapMode::Never), &host());
    let via = |gw: &str| RouteTarget::Via {
        gateway: gw.parse().unwrap(),
        dev: VXLAN_DEVICE.into(),
        onlink: true,
    };
    let route = |dst: &str, target| RouteSpec {
        dst: dst.parse().unwrap(),
        target,
    };
    let expected = [
        route("10.244.0.0/26", RouteTarget::Blackhole),
        route(
            "10.244.0.5/32",
            RouteTarget::Device {
                dev: "mgy1111".into(),
            },
        ),
        route("10.244.1.0/26", via("10.244.1.1")),
        route("10.244.2.0/26", via("10.244.2.1")),
        // Borrowed: lives on b, inside c's block.
        route("10.244.2.40/32", via("10.244.1.1")),
    ];
    assert_eq!(p.routes.iter().cloned().collect::<Vec<_>>(), expected);
    assert_eq!(p.vxlan.as_ref().unwrap().mtu, 1450);
    assert_eq!(p.pod_mtu, 1450);
    assert_eq!(p.neighbours.len(), 2);
    assert_eq!(
        p.fdb.iter().map(|(_, ip)| *ip).collect::<Vec<Ipv4Addr>>(),
        vec![
            "192.168.1.11".parse::<Ipv4Addr>().unwrap(),
            "192.168.2.12".parse().unwrap()
        ]
    );
    assert_eq!(p.nat.vxlan_port, Some(4789));
    assert_eq!(p.nat.nat_outgoing_v4.len(), 1);
}

#[test]
fn crosssubnet_goes_direct_only_inside_the_subnet() {
    let p = plan::plan(&model(EncapMode::CrossSubnet, EncapMode::Never), &host());
    let target_of = |dst: &str| {
        let dst: IpNet = dst.parse().unwrap();
        p.routes
            .iter()
            .find(|r| r.dst == dst)
            .unwrap()
            .target
            .clone()
    };
    assert_eq!(
        target_of("10.244.1.0/26"),
        RouteTarget::Via {
            gateway: "192.168.1.11".parse().unwrap(),
            dev: "eth0".into(),
            onlink: false
        }
    );
    assert!(
        matches!(target_of("10.244.2.0/26"), RouteTarget::Via { dev, .. } if dev == VXLAN_DEVICE)
    );
}

#[test]
fn never_leaves_remote_routes_to_bgp() {
    let p = plan::plan(&model(EncapMode::Never, EncapMode::Never), &host());
    assert!(p.vxlan.is_none() && p.ipip.is_none());
    assert!(p
        .routes
        .iter()
        .all(|r| !matches!(r.target, RouteTarget::Via { .. })));
    assert_eq!(p.pod_mtu, 1500);
}

#[test]
fn a_node_without_a_tunnel_address_is_a_warning_not_a_route() {
    let mut m = model(EncapMode::Always, EncapMode::Never);
    m.nodes.get_mut("c").unwrap().spec.ipv4_vxlan_tunnel_addr = None;
    let p = plan::plan(&m, &host());
    assert!(
        p.warnings.iter().any(|w| w.contains("node c")),
        "{:?}",
        p.warnings
    );
    assert!(!p
        .routes
        .iter()
        .any(|r| r.dst == "10.244.2.0/26".parse::<IpNet>().unwrap()));
}

/// What the kernel reports once the plan is programmed.
fn programmed(p: &Plan) -> Observed {
    let v = p.vxlan.clone().unwrap();
    Observed {
        routes: p.routes.clone(),
        vxlan: Some(ObservedVxlan {
            vni: v.vni,
            port: v.port,
            local: Some(v.local),
            learning: false,
            mtu: v.mtu,
            mac: v.mac,
            up: true,
            addresses: vec![ipnet::Ipv4Net::from(v.address)],
        }),
        ipip: None,
        neighbours: p.neighbours.clone(),
        fdb: p.fdb.clone(),
        links: ["lo", "eth0", "mgy1111", VXLAN_DEVICE]
            .into_iter()
            .map(String::from)
            .collect(),
    }
}

#[test]
fn diff_from_nothing_builds_everything_in_order() {
    let p = plan::plan(&model(EncapMode::Always, EncapMode::Never), &host());
    let empty = Observed {
        links: ["lo", "eth0", "mgy1111"]
            .into_iter()
            .map(String::from)
            .collect(),
        ..Default::default()
    };
    let ops = diff(&p, &empty);
    assert!(matches!(ops[0], Op::CreateVxlan(_)));
    assert_eq!(
        ops.iter()
            .filter(|o| matches!(o, Op::ReplaceRoute(_)))
            .count(),
        5
    );
    assert_eq!(
        ops.iter()
            .filter(|o| matches!(o, Op::ReplaceFdb(..)))
            .count(),
        2
    );
    assert_eq!(
        ops.iter()
            .filter(|o| matches!(o, Op::ReplaceNeighbour(..)))
            .count(),
        2
    );
    // Entries before the routes that need them.
    let first_route = ops
        .iter()
        .position(|o| matches!(o, Op::ReplaceRoute(_)))
        .unwrap();
    let last_fdb = ops
        .iter()
        .rposition(|o| matches!(o, Op::ReplaceFdb(..)))
        .unwrap();
    assert!(last_fdb < first_route);
}

#[test]
fn a_restart_against_a_programmed_kernel_changes_nothing() {
    for mode in [EncapMode::Always, EncapMode::CrossSubnet] {
        let p = plan::plan(&model(mode, EncapMode::Never), &host());
        assert_eq!(diff(&p, &programmed(&p)), Vec::<Op>::new());
    }
}

#[test]
fn what_disappears_is_removed_and_nothing_else() {
    let before = plan::plan(&model(EncapMode::Always, EncapMode::Never), &host());
    let observed = programmed(&before);
    let mut m = model(EncapMode::Always, EncapMode::Never);
    m.nodes.remove("c");
    m.blocks.retain(|b| b.host_affinity() != Some("c"));
    m.endpoints.retain(|e| e.spec.node != "b");
    let after = plan::plan(&m, &host());
    let ops = diff(&after, &observed);
    let deleted: Vec<String> = ops
        .iter()
        .map(|o| match o {
            Op::DeleteRoute(r) => format!("route {}", r.dst),
            Op::DeleteFdb(_, ip) => format!("fdb {ip}"),
            Op::DeleteNeighbour(ip, _) => format!("neigh {ip}"),
            other => format!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(
        deleted,
        vec![
            "route 10.244.2.0/26",
            "route 10.244.2.40/32",
            "neigh 10.244.2.1",
            "fdb 192.168.2.12"
        ]
    );
}

#[test]
fn a_changed_vni_recreates_the_device_and_its_entries() {
    let p = plan::plan(&model(EncapMode::Always, EncapMode::Never), &host());
    let mut observed = programmed(&p);
    observed.vxlan.as_mut().unwrap().vni = 1;
    let ops = diff(&p, &observed);
    assert_eq!(ops[0], Op::DeleteVxlan);
    assert!(matches!(ops[1], Op::CreateVxlan(_)));
    assert_eq!(
        ops.iter()
            .filter(|o| matches!(o, Op::ReplaceFdb(..)))
            .count(),
        2
    );
    // Routes over the new device are re-added; the others stay.
    assert_eq!(
        ops.iter()
            .filter(|o| matches!(o, Op::ReplaceRoute(_)))
            .count(),
        3
    );
}

#[test]
fn a_route_to_a_missing_veth_waits_for_it() {
    let p = plan::plan(&model(EncapMode::Always, EncapMode::Never), &host());
    let mut observed = programmed(&p);
    observed.links.remove("mgy1111");
    observed
        .routes
        .retain(|r| !matches!(r.target, RouteTarget::Device { .. }));
    assert_eq!(diff(&p, &observed), Vec::<Op>::new());
}
