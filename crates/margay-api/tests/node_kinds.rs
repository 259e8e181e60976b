//! Node and ClusterInformation.

use std::net::Ipv4Addr;

use margay_api::{
    decode, parse_documents, AsNumber, ClusterInformation, Decoded, FieldError, IpOrCidr, Kind,
    MacAddr, Node, NodeAddressType, Source,
};
use serde_json::json;

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

/// The seed's `kubectl get clusterinformations default -o yaml`, re-indented.
const SEED_CLUSTER_INFORMATION: &str = r#"
apiVersion: crd.projectcalico.org/v1
kind: ClusterInformation
metadata:
  annotations:
    projectcalico.org/metadata: '{"uid":"a50f3373-8e19-48a0-967d-ecb45f355eeb","creationTimestamp":"2025-10-18T01:30:37Z"}'
  creationTimestamp: "2025-10-18T01:30:37Z"
  generation: 1
  name: default
  resourceVersion: "547"
  uid: 4e958562-4d71-40e8-a951-1a4b15a971c5
spec:
  calicoVersion: v3.27.4
  clusterGUID: e9932f80d13f4783b1abddd5c3786106
  clusterType: k8s,bgp,kubeadm,kdd
  datastoreReady: true
"#;

/// A node as `calicoctl get node u22 -o yaml` prints it for the seed's cluster.
const CALICO_NODE: &str = r#"
apiVersion: projectcalico.org/v3
kind: Node
metadata:
  annotations:
    projectcalico.org/kube-labels: '{"kubernetes.io/hostname":"u22"}'
  creationTimestamp: "2025-10-18T01:30:30Z"
  labels:
    kubernetes.io/hostname: u22
    kubernetes.io/os: linux
  name: u22
  resourceVersion: "4521"
  uid: 0b6d0d0c-7c4b-4b0e-9a43-8e1d0f2c5a11
spec:
  addresses:
  - address: 11.0.1.128/24
    type: CalicoNodeIP
  - address: 11.0.1.128
    type: InternalIP
  bgp:
    asNumber: "64512"
    ipv4Address: 11.0.1.128/24
    ipv4IPIPTunnelAddr: 10.233.102.0
    routeReflectorClusterID: 224.0.0.1
  ipv4VXLANTunnelAddr: 10.233.102.1
  vxlanTunnelMACAddr: 66:2C:1F:0A:BB:01
  orchRefs:
  - nodeName: u22
    orchestrator: k8s
  wireguard:
    interfaceIPv4Address: 10.233.102.2
status:
  podCIDRs:
  - 10.233.64.0/24
"#;

#[test]
fn seed_cluster_information_decodes() {
    let d = decode_yaml(SEED_CLUSTER_INFORMATION).unwrap();
    assert_eq!(d.source, Source::Calico);
    assert!(d.warnings.is_empty(), "{:?}", d.warnings);
    let printed = d.resource.to_value();
    assert_eq!(printed["apiVersion"], "margay.dev/v1");
    assert_eq!(printed["kind"], "ClusterInformation");
    assert_eq!(
        printed["spec"],
        json!({
            "clusterGUID": "e9932f80d13f4783b1abddd5c3786106",
            "clusterType": "k8s,bgp,kubeadm,kdd",
            "calicoVersion": "v3.27.4",
            "datastoreReady": true
        })
    );
    assert_round_trips(&d);
    let ci = ClusterInformation::try_from(d.resource).unwrap();
    assert!(ci.spec.datastore_ready());
    assert_eq!(ci.spec.cluster_types(), ["k8s", "bgp", "kubeadm", "kdd"]);
    assert!(ClusterInformation::new().spec.datastore_ready());
}

#[test]
fn cluster_information_must_be_named_default() {
    let err = decode(json!({
        "apiVersion": "margay.dev/v1", "kind": "ClusterInformation",
        "metadata": {"name": "cluster"}, "spec": {"datastoreReady": false}
    }))
    .unwrap_err();
    assert_eq!(err.field, "metadata.name");
    let err = decode(json!({
        "apiVersion": "margay.dev/v1", "kind": "ClusterInformation",
        "metadata": {"name": "default"}, "spec": {"datastoreReady": "yes"}
    }))
    .unwrap_err();
    assert_eq!(err.field, "spec.datastoreReady");
}

#[test]
fn calico_node_migrates_with_wireguard_dropped() {
    let d = decode_yaml(CALICO_NODE).unwrap();
    assert_eq!(d.resource.kind(), Kind::Node);
    assert_eq!(d.warnings, ["ignored: Node u22: spec.wireguard"]);
    let printed = d.resource.to_value();
    assert_eq!(printed["kind"], "Node");
    assert!(printed.get("status").is_none());
    assert_eq!(printed["spec"]["bgp"]["asNumber"], 64512);
    assert_eq!(printed["spec"]["bgp"]["ipv4Address"], "11.0.1.128/24");
    assert_eq!(printed["spec"]["vxlanTunnelMACAddr"], "66:2c:1f:0a:bb:01");
    assert_eq!(printed["spec"]["addresses"][1]["address"], "11.0.1.128");
    assert_eq!(printed["metadata"]["labels"]["kubernetes.io/os"], "linux");
    assert_round_trips(&d);

    let node = Node::try_from(d.resource).unwrap();
    let addr = node.ipv4_address().unwrap();
    assert_eq!(
        addr.addr(),
        "11.0.1.128".parse::<std::net::IpAddr>().unwrap()
    );
    assert_eq!(addr.prefix_len(), 24);
    assert_eq!(addr.network(), "11.0.1.0/24".parse().unwrap());
    assert_eq!(node.as_number(AsNumber(65000)), AsNumber(64512));
    assert_eq!(
        node.route_reflector_cluster_id(),
        Some(Ipv4Addr::new(224, 0, 0, 1))
    );
    assert_eq!(node.kubernetes_node_name(), Some("u22"));
    let bgp = node.spec.bgp.as_ref().unwrap();
    assert_eq!(
        bgp.ipv4_ipip_tunnel_addr,
        Some(Ipv4Addr::new(10, 233, 102, 0))
    );
    assert_eq!(
        node.spec.vxlan_tunnel_mac_addr,
        Some(MacAddr([0x66, 0x2c, 0x1f, 0x0a, 0xbb, 0x01]))
    );
    assert_eq!(
        node.spec.addresses[0].address_type,
        Some(NodeAddressType::CalicoNodeIp)
    );
    assert_eq!(
        node.spec.addresses[1].address,
        IpOrCidr::Ip("11.0.1.128".parse().unwrap())
    );
}

#[test]
fn node_defaults_to_cluster_as_and_has_no_bgp_when_unset() {
    let d = decode(json!({
        "apiVersion": "margay.dev/v1", "kind": "Node", "metadata": {"name": "worker-1"},
        "spec": {"ipv6VXLANTunnelAddr": "fd00::1", "vxlanTunnelMACAddrV6": "66-2c-1f-0a-bb-02"}
    }))
    .unwrap();
    assert_round_trips(&d);
    let node = Node::try_from(d.resource).unwrap();
    assert_eq!(node.as_number(AsNumber(64512)), AsNumber(64512));
    assert_eq!(node.ipv4_address(), None);
    assert_eq!(
        node.spec.vxlan_tunnel_mac_addr_v6.unwrap().to_string(),
        "66:2c:1f:0a:bb:02"
    );
    assert_eq!(Node::new("worker-1").spec, Default::default());
}

#[test]
fn node_validation_names_the_field() {
    let check = |spec: serde_json::Value| {
        decode(json!({
            "apiVersion": "projectcalico.org/v3", "kind": "Node",
            "metadata": {"name": "worker-1"}, "spec": spec
        }))
        .unwrap_err()
    };
    let cases = [
        (json!({"bgp": {}}), "spec.bgp"),
        (
            json!({"bgp": {"ipv4Address": "fd00::1/64"}}),
            "spec.bgp.ipv4Address",
        ),
        (
            json!({"bgp": {"ipv6Address": "10.0.0.1/24"}}),
            "spec.bgp.ipv6Address",
        ),
        (
            json!({"bgp": {"ipv4Address": "10.0.0.300/24"}}),
            "spec.bgp.ipv4Address",
        ),
        (
            json!({"bgp": {"ipv4Address": "10.0.0.1/24", "asNumber": 0}}),
            "spec.bgp.asNumber",
        ),
        (
            json!({"bgp": {"routeReflectorClusterID": "fd00::1"}}),
            "spec.bgp.routeReflectorClusterID",
        ),
        (
            json!({"ipv4VXLANTunnelAddr": "fd00::1"}),
            "spec.ipv4VXLANTunnelAddr",
        ),
        (
            json!({"vxlanTunnelMACAddr": "66:2c:1f:0a:bb"}),
            "spec.vxlanTunnelMACAddr",
        ),
        (
            json!({"addresses": [{"address": "10.0.0.1", "type": "PublicIP"}]}),
            "spec.addresses[0].type",
        ),
        (
            json!({"orchRefs": [{"orchestrator": ""}]}),
            "spec.orchRefs[0].orchestrator",
        ),
        (json!({"orchestratorRefs": []}), "spec.orchestratorRefs"),
    ];
    for (spec, field) in cases {
        let err = check(spec.clone());
        assert_eq!(err.field, field, "{spec}: {err}");
    }
}

#[test]
fn mac_and_address_forms() {
    assert!("66:2c:1f:0a:bb:01:02".parse::<MacAddr>().is_err());
    assert!("662c1f0abb01".parse::<MacAddr>().is_err());
    assert!("66:2c:1f:0a:bb:zz".parse::<MacAddr>().is_err());
    let cidr: IpOrCidr = "fd00::5/64".parse().unwrap();
    assert_eq!(cidr.to_string(), "fd00::5/64");
    assert_eq!(cidr.network().to_string(), "fd00::/64");
    let bare: IpOrCidr = "10.0.0.5".parse().unwrap();
    assert_eq!(bare.prefix_len(), 32);
    assert!("10.0.0.0/40".parse::<IpOrCidr>().is_err());
}
