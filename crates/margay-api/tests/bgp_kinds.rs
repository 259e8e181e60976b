//! BGPConfiguration and BGPPeer: Calico field names, defaults and validation.

use std::collections::BTreeMap;
use std::net::IpAddr;

use margay_api::{
    decode, parse_documents, AsNumber, BGPConfiguration, BGPPeer, BGPPeerSpec, BindMode,
    CommunityValue, Decoded, Duration, FieldError, NextHopMode, PeerAddress, ReversePeering,
    SourceAddress,
};
use serde_json::{json, Value};

fn decode_yaml(yaml: &str) -> Result<Decoded, FieldError> {
    let mut docs = parse_documents(yaml).expect("valid YAML");
    assert_eq!(docs.len(), 1, "one document expected");
    decode(docs.remove(0))
}

fn assert_round_trips(d: &Decoded) {
    let again = decode(d.resource.to_value()).expect("printed resource decodes");
    assert_eq!(again.resource, d.resource);
    assert!(again.warnings.is_empty(), "{:?}", again.warnings);
}

fn bgp_config(name: &str, spec: Value) -> Result<Decoded, FieldError> {
    decode(json!({
        "apiVersion": "projectcalico.org/v3", "kind": "BGPConfiguration",
        "metadata": {"name": name}, "spec": spec
    }))
}

fn peer(spec: Value) -> Result<Decoded, FieldError> {
    decode(json!({
        "apiVersion": "projectcalico.org/v3", "kind": "BGPPeer",
        "metadata": {"name": "rack1-tor"}, "spec": spec
    }))
}

fn peer_spec(d: Decoded) -> BGPPeerSpec {
    BGPPeer::try_from(d.resource).expect("a BGPPeer").spec
}

#[test]
fn default_bgp_configuration_gets_calico_defaults() {
    let d = decode_yaml(
        r#"
apiVersion: crd.projectcalico.org/v1
kind: BGPConfiguration
metadata:
  name: default
  resourceVersion: "123"
spec:
  logSeverityScreen: warning
  serviceClusterIPs:
  - cidr: 10.96.0.0/12
  serviceLoadBalancerAggregation: Enabled
  nodeMeshMaxRestartTime: 120s
  bindMode: NodeIP
  ignoredInterfaces: [dummy*, kube-ipvs0]
  programClusterRoutes: Enabled
"#,
    )
    .unwrap();
    assert_eq!(
        d.warnings,
        ["ignored: BGPConfiguration default: spec.serviceLoadBalancerAggregation"]
    );
    let printed = d.resource.to_value();
    assert_eq!(printed["kind"], "BGPConfiguration");
    assert_eq!(printed["apiVersion"], "margay.dev/v1");
    let spec = &printed["spec"];
    assert_eq!(spec["asNumber"], 64512);
    assert_eq!(spec["nodeToNodeMeshEnabled"], true);
    assert_eq!(spec["listenPort"], 179);
    assert_eq!(spec["logSeverityScreen"], "Warning");
    assert_eq!(spec["nodeMeshMaxRestartTime"], "2m0s");
    assert_eq!(spec["serviceClusterIPs"], json!([{"cidr": "10.96.0.0/12"}]));
    assert_round_trips(&d);

    let c = BGPConfiguration::try_from(d.resource).unwrap();
    assert_eq!(c.spec.as_number(), AsNumber(64512));
    assert_eq!(c.spec.bind_mode(), BindMode::NodeIp);
    assert_eq!(
        c.spec.node_mesh_max_restart_time,
        Some(Duration::from_secs(120))
    );
    assert_eq!(c.node(), None);
}

#[test]
fn node_bgp_configuration_is_not_defaulted_and_cannot_set_cluster_fields() {
    let d = bgp_config("node.worker-1", json!({"listenPort": 1179})).unwrap();
    assert_eq!(d.resource.to_value()["spec"], json!({"listenPort": 1179}));
    assert_round_trips(&d);

    for (field, value) in [
        ("asNumber", json!(65000)),
        ("nodeToNodeMeshEnabled", json!(false)),
        ("serviceClusterIPs", json!([{"cidr": "10.96.0.0/12"}])),
        ("serviceExternalIPs", json!([{"cidr": "192.0.2.0/24"}])),
        (
            "serviceLoadBalancerIPs",
            json!([{"cidr": "198.51.100.0/24"}]),
        ),
        ("nodeMeshMaxRestartTime", json!("30s")),
    ] {
        let err = bgp_config("node.worker-1", json!({ field: value })).unwrap_err();
        assert_eq!(err.field, format!("spec.{field}"), "{err}");
    }
    let err = bgp_config("my-bgp", json!({})).unwrap_err();
    assert_eq!(err.field, "metadata.name");
}

#[test]
fn as_numbers_accept_plain_string_and_dotted_forms() {
    for (value, expected) in [
        (json!(64512), 64512),
        (json!("64512"), 64512),
        (json!("1.10"), 65546),
        (json!(4_294_967_295u32), u32::MAX),
    ] {
        let d = bgp_config("default", json!({ "asNumber": value })).unwrap();
        let c = BGPConfiguration::try_from(d.resource.clone()).unwrap();
        assert_eq!(c.spec.as_number(), AsNumber(expected));
        assert_eq!(d.resource.to_value()["spec"]["asNumber"], json!(expected));
    }
    assert_eq!(AsNumber(65546).dotted(), "1.10");
    assert_eq!("1.10".parse::<AsNumber>(), Ok(AsNumber(65546)));

    // An unquoted 1.10 reaches us as the float 1.1: refuse rather than guess.
    let err = decode_yaml(
        "apiVersion: projectcalico.org/v3\nkind: BGPConfiguration\nmetadata: {name: default}\nspec: {asNumber: 1.10}\n",
    )
    .unwrap_err();
    assert_eq!(err.field, "spec.asNumber");
    assert!(err.message.contains("quote"), "{err}");
    for bad in [
        json!(-1),
        json!(4_294_967_296u64),
        json!("65536.1"),
        json!("AS1"),
    ] {
        let err = bgp_config("default", json!({ "asNumber": bad })).unwrap_err();
        assert_eq!(err.field, "spec.asNumber");
    }
}

#[test]
fn communities_and_prefix_advertisements_follow_calico_rules() {
    let d = bgp_config(
        "default",
        json!({
            "communities": [
                {"name": "bgp-large-community", "value": "63400:300:100"},
                {"name": "no-export", "value": "65535:65281"}
            ],
            "prefixAdvertisements": [
                {"cidr": "172.218.4.0/26", "communities": ["bgp-large-community", "63400:120"]},
                {"cidr": "10.0.0.0/8", "communities": ["no-export"]}
            ]
        }),
    )
    .unwrap();
    assert_round_trips(&d);
    let c = BGPConfiguration::try_from(d.resource).unwrap();
    assert_eq!(
        c.spec.prefix_communities(&c.spec.prefix_advertisements[0]),
        [
            CommunityValue::Large(63400, 300, 100),
            CommunityValue::Standard(63400, 120)
        ]
    );

    let err = bgp_config(
        "default",
        json!({"prefixAdvertisements": [{"cidr": "10.0.0.0/8", "communities": ["undefined-name"]}]}),
    )
    .unwrap_err();
    assert_eq!(err.field, "spec.prefixAdvertisements[0].communities[0]");

    let err = bgp_config(
        "default",
        json!({"communities": [{"name": "c", "value": "65536:1"}],
               "prefixAdvertisements": [{"cidr": "10.0.0.0/8", "communities": ["c"]}]}),
    )
    .unwrap_err();
    assert_eq!(err.field, "spec.communities[0].value");

    let err = bgp_config(
        "default",
        json!({"communities": [{"name": "c", "value": "1:2:3:4"}],
               "prefixAdvertisements": [{"cidr": "10.0.0.0/8", "communities": ["c"]}]}),
    )
    .unwrap_err();
    assert_eq!(err.field, "spec.communities[0].value");

    let err = bgp_config(
        "default",
        json!({"communities": [{"name": "unused", "value": "1:2"}]}),
    )
    .unwrap_err();
    assert_eq!(err.field, "spec.communities");

    let err = bgp_config(
        "default",
        json!({"prefixAdvertisements": [{"cidr": "10.0.0.0/33"}]}),
    )
    .unwrap_err();
    assert_eq!(err.field, "spec.prefixAdvertisements[0].cidr");
}

#[test]
fn other_bgp_configuration_errors_name_the_field() {
    let cases = [
        (json!({"listenPort": 0}), "spec.listenPort"),
        (json!({"listenPort": 70000}), "spec.listenPort"),
        (
            json!({"logSeverityScreen": "Panic"}),
            "spec.logSeverityScreen",
        ),
        (json!({"bindMode": "All"}), "spec.bindMode"),
        (
            json!({"ignoredInterfaces": ["way-too-long-interface"]}),
            "spec.ignoredInterfaces[0]",
        ),
        (
            json!({"nodeMeshPassword": {}}),
            "spec.nodeMeshPassword.secretKeyRef",
        ),
        (
            json!({"nodeMeshPassword": {"secretKeyRef": {"name": "bgp", "key": ""}}}),
            "spec.nodeMeshPassword.secretKeyRef.key",
        ),
        (
            json!({"programClusterRoutes": "Yes"}),
            "spec.programClusterRoutes",
        ),
    ];
    for (spec, field) in cases {
        let err = bgp_config("default", spec.clone()).unwrap_err();
        assert_eq!(err.field, field, "{spec}: {err}");
    }
}

#[test]
fn explicit_peer_decodes_with_defaults() {
    let d = decode_yaml(
        r#"
apiVersion: projectcalico.org/v3
kind: BGPPeer
metadata:
  name: rack1-tor
spec:
  nodeSelector: rack == 'rack1'
  peerIP: 192.168.1.1
  asNumber: "64513"
  localASNumber: 64600
  keepaliveTime: 20s
  maxRestartTime: 2m
  ttlSecurity: 1
  numAllowedLocalASNumbers: 2
  filters: [export-pods]
  reachableBy: 10.0.0.1
  password:
    secretKeyRef:
      name: bgp-passwords
      key: rack1
"#,
    )
    .unwrap();
    assert!(d.warnings.is_empty(), "{:?}", d.warnings);
    let printed = d.resource.to_value();
    assert_eq!(printed["spec"]["sourceAddress"], "UseNodeIP");
    assert_eq!(printed["spec"]["nextHopMode"], "Auto");
    assert_eq!(printed["spec"]["asNumber"], 64513);
    assert_eq!(printed["spec"]["maxRestartTime"], "2m0s");
    assert!(printed["spec"].get("reversePeering").is_none());
    assert_round_trips(&d);

    let s = peer_spec(d);
    assert_eq!(
        s.peer_ip.unwrap().ip,
        "192.168.1.1".parse::<IpAddr>().unwrap()
    );
    assert_eq!(s.peer_ip.unwrap().port_or_default(), 179);
    assert_eq!(s.keepalive_time, Some(Duration::from_secs(20)));
    let labels = BTreeMap::from([("rack".to_string(), "rack1".to_string())]);
    assert!(s.selects_node("worker-1", &labels));
    assert!(!s.selects_node("worker-1", &BTreeMap::new()));
}

#[test]
fn peer_ip_accepts_ports_in_calico_format() {
    for (text, ip, port) in [
        ("10.0.0.1:1179", "10.0.0.1", Some(1179)),
        ("[fd00::1]:1179", "fd00::1", Some(1179)),
        ("fd00::1", "fd00::1", None),
    ] {
        let addr: PeerAddress = text.parse().unwrap();
        assert_eq!(addr.ip, ip.parse::<IpAddr>().unwrap());
        assert_eq!(addr.port, port);
        assert_eq!(addr.to_string(), text);
    }
    let d = peer(json!({"peerIP": "[fd00::1]:1179", "asNumber": 65001})).unwrap();
    assert_eq!(d.resource.to_value()["spec"]["peerIP"], "[fd00::1]:1179");
    let err = peer(json!({"peerIP": "router.example", "asNumber": 65001})).unwrap_err();
    assert_eq!(err.field, "spec.peerIP");
    let err = peer(json!({"peerIP": "10.0.0.1:0", "asNumber": 65001})).unwrap_err();
    assert_eq!(err.field, "spec.peerIP");
}

#[test]
fn peer_validation_follows_calico() {
    let cases = [
        // peerIP xor peerSelector
        (
            json!({"peerIP": "10.0.0.1", "peerSelector": "all()", "asNumber": 1}),
            "spec.peerIP",
        ),
        (json!({"asNumber": 65001}), "spec.peerIP"),
        // node and nodeSelector are exclusive
        (
            json!({"node": "worker-1", "nodeSelector": "all()", "peerIP": "10.0.0.1", "asNumber": 1}),
            "spec.node",
        ),
        // asNumber goes with peerIP, never with peerSelector
        (json!({"peerIP": "10.0.0.1"}), "spec.asNumber"),
        (
            json!({"peerSelector": "rr == 'true'", "asNumber": 65001}),
            "spec.asNumber",
        ),
        (
            json!({"peerIP": "10.0.0.1", "asNumber": 0}),
            "spec.asNumber",
        ),
        (
            json!({"peerIP": "10.0.0.1", "asNumber": 1, "localASNumber": 0}),
            "spec.localASNumber",
        ),
        // selectors must parse
        (json!({"peerSelector": "rr == "}), "spec.peerSelector"),
        (
            json!({"nodeSelector": "has(", "peerIP": "10.0.0.1", "asNumber": 1}),
            "spec.nodeSelector",
        ),
        // reachableBy needs a peerIP of the same family
        (
            json!({"peerSelector": "all()", "reachableBy": "10.0.0.1"}),
            "spec.reachableBy",
        ),
        (
            json!({"peerIP": "fd00::1", "asNumber": 1, "reachableBy": "10.0.0.1"}),
            "spec.reachableBy",
        ),
        (
            json!({"peerIP": "10.0.0.1", "asNumber": 1, "password": {"secretKeyRef": {"key": "k"}}}),
            "spec.password.secretKeyRef.name",
        ),
        (
            json!({"peerIP": "10.0.0.1", "asNumber": 1, "password": {"value": ""}}),
            "spec.password.value",
        ),
        (
            json!({"peerIP": "10.0.0.1", "asNumber": 1,
                   "password": {"value": "x", "secretKeyRef": {"name": "s", "key": "k"}}}),
            "spec.password.value",
        ),
        (
            json!({"peerIP": "10.0.0.1", "asNumber": 1, "password": {"value": "x".repeat(81)}}),
            "spec.password.value",
        ),
        (
            json!({"peerIP": "10.0.0.1", "asNumber": 1, "ttlSecurity": 256}),
            "spec.ttlSecurity",
        ),
        (
            json!({"peerIP": "10.0.0.1", "asNumber": 1, "sourceAddress": "Node"}),
            "spec.sourceAddress",
        ),
        (
            json!({"peerIP": "10.0.0.1", "asNumber": 1, "nextHopMode": "Other"}),
            "spec.nextHopMode",
        ),
        (
            json!({"peerIP": "10.0.0.1", "asNumber": 1, "filters": ["Bad Name"]}),
            "spec.filters[0]",
        ),
        (
            json!({"peerIP": "10.0.0.1", "asNumber": 1, "keepaliveTime": "20"}),
            "spec.keepaliveTime",
        ),
    ];
    for (spec, field) in cases {
        let err = peer(spec.clone()).unwrap_err();
        assert_eq!(err.field, field, "{spec}: {err}");
    }
}

#[test]
fn selector_peer_and_deprecated_keep_original_next_hop() {
    let d = peer(json!({
        "nodeSelector": "!has(route-reflector)",
        "peerSelector": "route-reflector == 'true'",
        "keepOriginalNextHop": true
    }))
    .unwrap();
    assert!(d.warnings.is_empty(), "{:?}", d.warnings);
    assert_round_trips(&d);
    let s = peer_spec(d);
    assert_eq!(s.next_hop_mode, Some(NextHopMode::Keep));
    assert_eq!(s.reverse_peering, Some(ReversePeering::Auto));
    assert_eq!(s.source_address, Some(SourceAddress::UseNodeIp));

    // nextHopMode wins over the deprecated flag, as in Calico.
    let s = peer_spec(
        peer(json!({"peerIP": "10.0.0.1", "asNumber": 1, "keepOriginalNextHop": true, "nextHopMode": "Self"}))
            .unwrap(),
    );
    assert_eq!(s.next_hop_mode, Some(NextHopMode::SelfHop));

    // Margay's own API does not know the deprecated field.
    let err = decode(json!({
        "apiVersion": "margay.dev/v1", "kind": "BGPPeer", "metadata": {"name": "p"},
        "spec": {"peerIP": "10.0.0.1", "asNumber": 1, "keepOriginalNextHop": true}
    }))
    .unwrap_err();
    assert_eq!(err.field, "spec.keepOriginalNextHop");
}

#[test]
fn inline_password_value_is_accepted_and_round_trips() {
    let d = peer(json!({"peerIP": "10.0.0.1", "asNumber": 1, "password": {"value": "s3cret"}}))
        .unwrap();
    assert_round_trips(&d);
    let s = peer_spec(d);
    let pw = s.password.unwrap();
    assert_eq!(pw.value.as_deref(), Some("s3cret"));
    assert!(pw.secret_key_ref.is_none());
}
