//! What the node's BGP speaker should be, computed from fake snapshots: the mesh, route
//! reflectors, explicit peers, what is advertised and what is installed (goldens and
//! assertions), and the route sink's filter. No root needed.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;

use ipnet::IpNet;
use margay_agent::bgp::{self, Desired, FilteredSink, PeerType};
use margay_agent::model::{BlockSummary, Model};
use margay_agent::plan::Host;
use margay_api::{
    decode, BGPConfiguration, BGPPeer, EncapMode, IPPool, IpOrCidr, Node, NodeBGPSpec, ObjectMeta,
    WorkloadEndpoint, WorkloadEndpointSpec,
};
use margay_bgp::sink::{MemorySink, RouteChange, RouteSink};
use serde_json::json;

fn node(name: &str, ip: &str, labels: &[(&str, &str)], cluster_id: Option<&str>) -> Node {
    let mut n = Node::new(name);
    n.metadata.labels = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    n.spec.bgp = Some(NodeBGPSpec {
        ipv4_address: Some(IpOrCidr::Cidr(ip.parse().unwrap())),
        route_reflector_cluster_id: cluster_id.map(|c| c.parse().unwrap()),
        ..Default::default()
    });
    n
}

fn block(cidr: &str, owner: &str) -> BlockSummary {
    BlockSummary {
        cidr: cidr.parse().unwrap(),
        affinity: Some(format!("host:{owner}")),
    }
}

fn endpoint(node: &str, ip: &str) -> WorkloadEndpoint {
    WorkloadEndpoint {
        metadata: ObjectMeta::namespaced("default", format!("{node}-{ip}")),
        spec: WorkloadEndpointSpec {
            node: node.into(),
            ip_networks: vec![format!("{ip}/32").parse().unwrap()],
            interface_name: "mgy0".into(),
            ..Default::default()
        },
    }
}

fn pool(name: &str, cidr: &str, vxlan: EncapMode) -> IPPool {
    let mut p = IPPool::new(name, cidr.parse().unwrap());
    p.spec.vxlan_mode = vxlan;
    p
}

/// A document as `apply` stores it (defaults applied, validated).
fn bgp_config(doc: serde_json::Value) -> BGPConfiguration {
    BGPConfiguration::try_from(decode(doc).unwrap().resource).unwrap()
}

fn bgp_peer(name: &str, spec: serde_json::Value) -> BGPPeer {
    let doc = json!({"apiVersion": "projectcalico.org/v3", "kind": "BGPPeer",
                     "metadata": {"name": name}, "spec": spec});
    BGPPeer::try_from(decode(doc).unwrap().resource).unwrap()
}

fn host(name: &str, ip: &str) -> Host {
    Host {
        node: name.into(),
        ip: ip.parse().unwrap(),
        uplink: "eth0".into(),
        uplink_mtu: 1500,
    }
}

/// Nodes a (us, .10), b (.11), c (.12); a Never pool with one block each, a pod on a with an
/// address from c's block (borrowed), a VXLAN pool with a block of a's, and a pool that is
/// not exported with another block of a's.
fn cluster() -> Model {
    let mut m = Model {
        pools: vec![
            pool("native", "10.244.0.0/16", EncapMode::Never),
            pool("overlay", "10.250.0.0/16", EncapMode::Always),
            {
                let mut p = pool("private", "10.251.0.0/16", EncapMode::Never);
                p.spec.disable_bgp_export = true;
                p
            },
        ],
        ..Default::default()
    };
    for n in [
        node("a", "192.168.1.10/24", &[("zone", "east")], None),
        node("b", "192.168.1.11/24", &[("zone", "east")], None),
        node("c", "192.168.1.12/24", &[("zone", "west")], None),
    ] {
        m.nodes.insert(n.metadata.name.clone(), n);
    }
    m.blocks = vec![
        block("10.244.0.0/26", "a"),
        block("10.244.1.0/26", "b"),
        block("10.244.2.0/26", "c"),
        block("10.250.0.0/26", "a"),
        block("10.251.0.0/26", "a"),
    ];
    m.endpoints = vec![
        endpoint("a", "10.244.0.5"),
        endpoint("a", "10.244.2.40"),
        endpoint("b", "10.244.1.7"),
        endpoint("a", "10.251.0.3"),
    ];
    m
}

fn check_golden(name: &str, desired: &Desired) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(format!("bgp-{name}.json"));
    let mut rendered = serde_json::to_string_pretty(&desired.to_json()).unwrap();
    rendered.push('\n');
    if std::env::var_os("MARGAY_UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &rendered).unwrap();
    }
    let golden = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (MARGAY_UPDATE_GOLDEN=1 writes it)", path.display()));
    assert_eq!(rendered, golden, "{name} differs from {}", path.display());
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

#[test]
fn full_mesh_by_default() {
    let mut m = cluster();
    m.bgp_configs = vec![bgp_config(json!({
        "apiVersion": "projectcalico.org/v3", "kind": "BGPConfiguration",
        "metadata": {"name": "default"}, "spec": {"asNumber": 65000}
    }))];
    let d = bgp::desired(&m, &host("a", "192.168.1.10/24"));
    check_golden("mesh", &d);
    assert!(d.requested);
    assert_eq!(d.speaker.router_id.to_string(), "192.168.1.10");
    assert_eq!(d.speaker.asn, 65000);
    assert_eq!(d.speaker.listen.to_string(), "0.0.0.0:179");
    assert_eq!(d.speaker.cluster_id, None);
    assert_eq!(
        d.peers.keys().copied().collect::<Vec<_>>(),
        [ip("192.168.1.11"), ip("192.168.1.12")]
    );
    for p in d.peers.values() {
        assert_eq!(p.kind, PeerType::Mesh);
        assert_eq!(p.config.remote_as, 65000);
        assert_eq!(p.config.local_address, Some(ip("192.168.1.10")));
        // Both ends connect (unlike Calico's unidirectional mesh).
        assert!(!p.config.passive);
        assert!(!p.config.rr_client);
    }
    assert_eq!(d.peers[&ip("192.168.1.11")].source, "Mesh_192_168_1_11");
    // Our Never block and our VXLAN block (exported, not installed), the borrowed /32; not
    // the non-exported pool's block nor its pod, not the pod inside our own block.
    assert_eq!(
        d.originated.iter().copied().collect::<Vec<_>>(),
        [
            net("10.244.0.0/26"),
            net("10.244.2.40/32"),
            net("10.250.0.0/26")
        ]
    );
    assert_eq!(d.agent_routed, [net("10.250.0.0/16")]);
    assert!(d.warnings.is_empty(), "{:?}", d.warnings);

    // From c: c's own node AS wins.
    let mut m2 = m.clone();
    m2.nodes
        .get_mut("c")
        .unwrap()
        .spec
        .bgp
        .as_mut()
        .unwrap()
        .as_number = Some(65003.into());
    let d = bgp::desired(&m2, &host("c", "192.168.1.12/24"));
    assert_eq!(d.speaker.asn, 65003);
    assert_eq!(
        d.originated.iter().copied().collect::<Vec<_>>(),
        [net("10.244.2.0/26")]
    );
    // And a's view of c uses c's AS.
    let d = bgp::desired(&m2, &host("a", "192.168.1.10/24"));
    assert_eq!(d.peers[&ip("192.168.1.12")].config.remote_as, 65003);
}

#[test]
fn not_requested_without_bgp_resources() {
    let d = bgp::desired(&cluster(), &host("a", "192.168.1.10/24"));
    assert!(!d.requested);
    // What --bgp would run: the mesh with the default AS.
    assert_eq!(d.speaker.asn, 64512);
    assert_eq!(d.peers.len(), 2);
    let mut m = cluster();
    m.bgp_peers = vec![bgp_peer(
        "tor",
        json!({"peerIP": "192.168.1.1", "asNumber": 65100}),
    )];
    assert!(bgp::desired(&m, &host("a", "192.168.1.10/24")).requested);
}

#[test]
fn route_reflectors_with_peer_selector_as_calico_documents() {
    // a is the reflector; the mesh is off; everyone peers with the reflectors.
    let mut m = cluster();
    m.nodes.insert(
        "a".into(),
        node(
            "a",
            "192.168.1.10/24",
            &[("route-reflector", "true")],
            Some("244.0.0.1"),
        ),
    );
    m.bgp_configs = vec![bgp_config(json!({
        "apiVersion": "projectcalico.org/v3", "kind": "BGPConfiguration",
        "metadata": {"name": "default"}, "spec": {"nodeToNodeMeshEnabled": false}
    }))];
    m.bgp_peers = vec![bgp_peer(
        "peer-with-route-reflectors",
        json!({"nodeSelector": "all()", "peerSelector": "route-reflector == 'true'"}),
    )];
    let rr = bgp::desired(&m, &host("a", "192.168.1.10/24"));
    check_golden("reflector", &rr);
    assert_eq!(rr.speaker.cluster_id, Some("244.0.0.1".parse().unwrap()));
    // The reflector peers with every node (reverse peering), each its client.
    assert_eq!(rr.peers.len(), 2);
    for p in rr.peers.values() {
        assert_eq!(p.kind, PeerType::Client);
        assert!(p.config.rr_client);
        assert!(!p.config.passive);
    }
    let client = bgp::desired(&m, &host("b", "192.168.1.11/24"));
    check_golden("reflector-client", &client);
    assert_eq!(client.speaker.cluster_id, None);
    // b peers with the reflector only: no mesh to c.
    assert_eq!(
        client.peers.keys().copied().collect::<Vec<_>>(),
        [ip("192.168.1.10")]
    );
    let p = &client.peers[&ip("192.168.1.10")];
    assert_eq!(p.kind, PeerType::Reflector);
    assert!(!p.config.rr_client);

    // Two reflectors of one cluster: not each other's clients.
    m.nodes.insert(
        "b".into(),
        node(
            "b",
            "192.168.1.11/24",
            &[("route-reflector", "true")],
            Some("244.0.0.1"),
        ),
    );
    let rr = bgp::desired(&m, &host("a", "192.168.1.10/24"));
    let b = &rr.peers[&ip("192.168.1.11")];
    assert_eq!(b.kind, PeerType::Reflector);
    assert!(!b.config.rr_client);
    let c = &rr.peers[&ip("192.168.1.12")];
    assert!(c.config.rr_client);

    // reversePeering: Manual leaves the reflector to its own BGPPeers.
    m.bgp_peers = vec![bgp_peer(
        "manual",
        json!({"nodeSelector": "!has(route-reflector)", "peerSelector": "route-reflector == 'true'",
               "reversePeering": "Manual"}),
    )];
    let rr = bgp::desired(&m, &host("a", "192.168.1.10/24"));
    assert!(rr.peers.is_empty(), "{:?}", rr.peers);
    let c = bgp::desired(&m, &host("c", "192.168.1.12/24"));
    assert_eq!(c.peers.len(), 2);
}

#[test]
fn explicit_peers_scoping_passwords_and_timers() {
    let mut m = cluster();
    m.bgp_configs = vec![bgp_config(json!({
        "apiVersion": "projectcalico.org/v3", "kind": "BGPConfiguration",
        "metadata": {"name": "default"},
        "spec": {"nodeToNodeMeshEnabled": false, "listenPort": 1179,
                 "serviceClusterIPs": [{"cidr": "10.96.0.0/12"}]}
    }))];
    m.bgp_peers = vec![
        bgp_peer(
            "tor",
            json!({"peerIP": "192.168.1.1:1790", "asNumber": 65100,
                   "password": {"value": "s3cret"}, "keepaliveTime": "40s",
                   "maxRestartTime": "15s", "reachableBy": "192.168.1.254"}),
        ),
        bgp_peer(
            "east-only",
            json!({"nodeSelector": "zone == 'east'", "peerIP": "192.168.9.9", "asNumber": 65200,
                   "sourceAddress": "None", "nextHopMode": "Self"}),
        ),
        bgp_peer(
            "c-only",
            json!({"node": "c", "peerIP": "192.168.9.10", "asNumber": 65201}),
        ),
        bgp_peer(
            "secret",
            json!({"peerIP": "192.168.9.11", "asNumber": 65202,
                   "password": {"secretKeyRef": {"name": "bgp", "key": "pw"}}}),
        ),
    ];
    let d = bgp::desired(&m, &host("a", "192.168.1.10/24"));
    check_golden("explicit", &d);
    assert_eq!(d.speaker.listen.to_string(), "0.0.0.0:1179");
    assert_eq!(
        d.peers.keys().copied().collect::<Vec<_>>(),
        [ip("192.168.1.1"), ip("192.168.9.9")]
    );
    let tor = &d.peers[&ip("192.168.1.1")];
    assert_eq!(tor.kind, PeerType::Global);
    assert_eq!(tor.config.port, 1790);
    assert_eq!(tor.config.password.as_deref(), Some("s3cret"));
    assert_eq!(tor.config.keepalive_time, Some(40));
    assert_eq!(tor.config.hold_time, 120);
    assert_eq!(tor.config.max_restart_time.as_secs(), 15);
    assert_eq!(tor.config.local_address, Some(ip("192.168.1.10")));
    let east = &d.peers[&ip("192.168.9.9")];
    assert_eq!(east.kind, PeerType::Node);
    assert_eq!(east.config.local_address, None);
    assert!(east.config.next_hop_self);
    assert_eq!(
        d.peer_routes,
        BTreeMap::from([(net("192.168.1.1/32"), ip("192.168.1.254"))])
    );
    assert!(d.originated.contains(&net("10.96.0.0/12")));
    assert_eq!(d.warnings.len(), 1, "{:?}", d.warnings);
    assert!(
        d.warnings[0].starts_with("BGPPeer secret: spec.password.secretKeyRef:"),
        "{}",
        d.warnings[0]
    );
    // c: the global peer and its own, not the east one.
    let c = bgp::desired(&m, &host("c", "192.168.1.12/24"));
    assert_eq!(
        c.peers.keys().copied().collect::<Vec<_>>(),
        [ip("192.168.1.1"), ip("192.168.9.10")]
    );
}

#[test]
fn filtered_sink_holds_back_agent_routed_pools_and_follows_changes() {
    let memory = MemorySink::new();
    let mut sink = FilteredSink::new(memory.clone(), vec![net("10.250.0.0/16")]);
    let gw = ip("192.168.1.11");
    sink.apply(&[
        RouteChange::Install {
            prefix: net("10.244.1.0/26"),
            next_hop: gw,
        },
        RouteChange::Install {
            prefix: net("10.250.1.0/26"),
            next_hop: gw,
        },
    ])
    .unwrap();
    assert_eq!(
        memory.routes().into_keys().collect::<Vec<_>>(),
        [net("10.244.1.0/26")]
    );
    // The VXLAN pool becomes Never/Never: its learned route goes in; the other pool turns
    // VXLAN: its route comes out. A reachableBy route is added beside them.
    sink.set_filter(
        vec![net("10.244.0.0/16")],
        BTreeMap::from([(net("192.168.9.9/32"), ip("192.168.1.254"))]),
    )
    .unwrap();
    assert_eq!(
        memory.routes().into_iter().collect::<Vec<_>>(),
        [
            (net("10.250.1.0/26"), gw),
            (net("192.168.9.9/32"), ip("192.168.1.254"))
        ]
    );
    // The reachableBy route is not the speaker's: never reported as installed by it, never
    // removed by it.
    assert_eq!(sink.installed().unwrap(), [net("10.250.1.0/26")]);
    sink.apply(&[RouteChange::Remove(net("192.168.9.9/32"))])
        .unwrap();
    assert!(memory.routes().contains_key(&net("192.168.9.9/32")));
    sink.apply(&[RouteChange::Remove(net("10.250.1.0/26"))])
        .unwrap();
    // No pool routed by the agent any more: the learned route held back so far goes in, and
    // the reachableBy route goes.
    sink.set_filter(vec![], BTreeMap::new()).unwrap();
    assert_eq!(
        memory.routes().into_iter().collect::<Vec<_>>(),
        [(net("10.244.1.0/26"), gw)]
    );
}
