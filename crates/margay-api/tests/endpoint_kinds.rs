//! Workload and host endpoints: Calico's naming, migration and validation.

use margay_api::{
    decode, parse_documents, Decoded, FieldError, HostEndpoint, Protocol, Resource, Source,
    WorkloadEndpoint,
};

fn decode_one(text: &str) -> Result<Decoded, FieldError> {
    let mut docs = parse_documents(text).expect("test YAML parses");
    assert_eq!(docs.len(), 1, "one document expected");
    decode(docs.remove(0))
}

fn ok(text: &str) -> Decoded {
    decode_one(text).unwrap_or_else(|e| panic!("expected {text} to decode, got {e}"))
}

fn assert_err(text: &str, field: &str, message_part: &str) {
    match decode_one(text) {
        Ok(d) => panic!("expected an error, decoded {:?}", d.resource),
        Err(e) => {
            assert_eq!(e.field, field, "wrong field for error {e}");
            assert!(
                e.message.contains(message_part),
                "error {e} does not mention {message_part:?}"
            );
        }
    }
}

fn assert_round_trip(resource: &Resource) {
    let again = decode(resource.to_value())
        .expect("printed resource decodes")
        .resource;
    assert_eq!(&again, resource);
}

#[test]
fn workload_endpoint_names_match_calico() {
    // The cases of Calico's names.WorkloadEndpointIdentifiers tests.
    let cases = [
        (
            ("node-1", "k8s", "pod-name", "eth0"),
            "node--1-k8s-pod--name-eth0",
        ),
        (
            ("node-1", "cni", "abcdefa0123456", "eth0"),
            "node--1-cni-abcdefa0123456-eth0",
        ),
        (
            ("node-1", "libnetwork", "", "abcdefgh"),
            "node--1-libnetwork-libnetwork-abcdefgh",
        ),
        (
            ("node-1", "foo", "foo-foo", "abcdefgh"),
            "node--1-foo-foo--foo-abcdefgh",
        ),
        (
            ("node1", "k8s", "podname", "eth0"),
            "node1-k8s-podname-eth0",
        ),
        (
            (
                "ip-10-0-0-1.ec2.internal",
                "k8s",
                "coredns-5d78c9869d-x7k2p",
                "eth0",
            ),
            "ip--10--0--0--1.ec2.internal-k8s-coredns--5d78c9869d--x7k2p-eth0",
        ),
    ];
    for ((node, orch, id, endpoint), expected) in cases {
        assert_eq!(
            WorkloadEndpoint::name_for(node, orch, id, endpoint).as_deref(),
            Ok(expected)
        );
    }

    let field_of = |node, orch, id, endpoint| {
        WorkloadEndpoint::name_for(node, orch, id, endpoint)
            .unwrap_err()
            .field
    };
    assert_eq!(field_of("node-1", "k8s", "", "eth0"), "spec.pod");
    assert_eq!(field_of("", "k8s", "pod", "eth0"), "spec.node");
    assert_eq!(field_of("node-1", "", "pod", "eth0"), "spec.orchestrator");
    assert_eq!(
        field_of("node-1", "cni", "-abcdefa0123456", "eth0"),
        "spec.containerID"
    );
    assert_eq!(
        field_of("node-1", "foo", "foo-foo-", "abcdefgh"),
        "spec.workload"
    );
    assert_eq!(field_of("node-1", "k8s", "pod", ""), "spec.endpoint");
}

/// A workload endpoint as `calicoctl get workloadendpoint -o yaml` prints it.
const CALICO_WEP: &str = r#"
apiVersion: projectcalico.org/v3
kind: WorkloadEndpoint
metadata:
  name: node1-k8s-frontend--7c5d9-eth0
  namespace: shop
  creationTimestamp: "2025-04-01T08:00:00Z"
  uid: 2f0c7e8e-3a55-4d4c-9d8b-1c2f3e4d5a6b
  labels:
    app: frontend
    projectcalico.org/namespace: shop
    projectcalico.org/orchestrator: k8s
    projectcalico.org/serviceaccount: default
spec:
  containerID: 4f1c2a9b8e7d
  endpoint: eth0
  interfaceName: cali7cd4eff55c7
  ipNetworks:
  - 10.244.1.17/32
  - fd00:10:244::11/128
  ipNATs:
  - {internalIP: 10.244.1.17, externalIP: 172.16.0.17}
  ipv4Gateway: 169.254.1.1
  mac: ee:ee:ee:ee:ee:ee
  node: node1
  orchestrator: k8s
  pod: frontend-7c5d9
  ports:
  - name: http
    port: 8080
    protocol: TCP
    hostPort: 0
    hostIP: ""
  - name: ""
    port: 53
    protocol: UDP
    hostPort: 5353
    hostIP: 192.0.2.10
  profiles:
  - kns.shop
  - ksa.shop.default
  serviceAccountName: default
  allowSpoofedSourcePrefixes: [192.0.2.0/24]
  qosControls:
    ingressBandwidth: 1000000
"#;

#[test]
fn calico_workload_endpoint_migrates() {
    let d = ok(CALICO_WEP);
    assert_eq!(d.source, Source::Calico);
    assert_eq!(
        d.warnings,
        vec![
            "ignored: WorkloadEndpoint node1-k8s-frontend--7c5d9-eth0: spec.allowSpoofedSourcePrefixes"
                .to_owned(),
            "ignored: WorkloadEndpoint node1-k8s-frontend--7c5d9-eth0: spec.qosControls".to_owned(),
        ]
    );
    assert_round_trip(&d.resource);
    let wep = WorkloadEndpoint::try_from(d.resource).unwrap();
    assert_eq!(wep.expected_name().unwrap(), wep.metadata.name);
    assert_eq!(wep.spec.ports[0].host_ip, None);
    assert_eq!(wep.spec.ports[1].host_port, 5353);
    assert_eq!(wep.spec.ports[1].protocol, Protocol::Udp);
    assert_eq!(wep.spec.ip_networks.len(), 2);
    assert_eq!(wep.spec.ipv4_gateway, Some("169.254.1.1".parse().unwrap()));

    // Unset host ports are left out of Margay's output.
    let v = Resource::from(wep).to_value();
    let port = v["spec"]["ports"][0].as_object().unwrap();
    assert!(!port.contains_key("hostPort") && !port.contains_key("hostIP"));
}

fn wep(spec_extra: &str) -> String {
    format!(
        "apiVersion: margay.dev/v1\nkind: WorkloadEndpoint\nmetadata:\n  name: node1-k8s-web-eth0\n  namespace: ns\nspec:\n  orchestrator: k8s\n  node: node1\n  pod: web\n  endpoint: eth0\n  interfaceName: cali0123456789a\n{spec_extra}"
    )
}

#[test]
fn workload_endpoint_name_is_defaulted_and_checked() {
    let text = wep("").replace("  name: node1-k8s-web-eth0\n", "");
    let d = ok(&text);
    assert_eq!(d.resource.metadata().name, "node1-k8s-web-eth0");

    assert_err(
        &wep("").replace("node1-k8s-web-eth0", "web"),
        "metadata.name",
        "expected \"node1-k8s-web-eth0\"",
    );
    assert_err(
        &wep("").replace("  pod: web\n", ""),
        "spec.pod",
        "is required",
    );
}

#[test]
fn workload_endpoint_validation_names_the_field() {
    let cases: &[(&str, &str, &str)] = &[
        ("  ipNetworks: [10.0.0.0/24]\n", "spec.ipNetworks[0]", "not a single address"),
        ("  ipNetworks: [10.0.0.1/24]\n", "spec.ipNetworks[0]", "not a single address"),
        (
            "  ipNetworks: [10.0.0.1/32]\n  ipNATs: [{internalIP: 10.0.0.2, externalIP: 192.0.2.1}]\n",
            "spec.ipNATs[0].internalIP",
            "not one of the endpoint's ipNetworks",
        ),
        (
            "  ipNetworks: [10.0.0.1/32]\n  ipNATs: [{internalIP: 10.0.0.1, externalIP: '2001:db8::1'}]\n",
            "spec.ipNATs[0]",
            "same IP version",
        ),
        ("  ipv4Gateway: 'fe80::1'\n", "spec.ipv4Gateway", "invalid IPv4 address"),
        ("  mac: ee:ee:ee:ee:ee\n", "spec.mac", "not a MAC address"),
        ("  profiles: [Bad_Profile]\n", "spec.profiles[0]", "not a valid name"),
        ("  containerID: abc_def\n", "spec.containerID", "not a valid container ID"),
        (
            "  ports: [{name: web, protocol: ICMP, port: 80}]\n",
            "spec.ports[0].protocol",
            "has no ports",
        ),
        (
            "  ports: [{name: Web, protocol: TCP, port: 80}]\n",
            "spec.ports[0].name",
            "not a valid port name",
        ),
        (
            "  ports: [{protocol: TCP, port: 80}]\n",
            "spec.ports[0].name",
            "required unless hostPort is set",
        ),
        (
            "  ports: [{name: web, protocol: TCP, port: 0}]\n",
            "spec.ports[0].port",
            "out of range 1-65535",
        ),
        (
            "  ports: [{name: web, protocol: TCP, port: 80, hostIP: nope}]\n",
            "spec.ports[0].hostIP",
            "invalid IP address",
        ),
    ];
    for (extra, field, message) in cases {
        assert_err(&wep(extra), field, message);
    }
    assert_err(
        &wep("").replace("cali0123456789a", "cali0123456789abcdef"),
        "spec.interfaceName",
        "not a valid interface name",
    );
    // Unimplemented Calico fields are unknown in Margay's own documents.
    assert_err(
        &wep("  qosControls: {ingressBandwidth: 1000}\n"),
        "spec.qosControls",
        "unknown field",
    );
}

#[test]
fn host_endpoints() {
    let d = ok(r#"
apiVersion: projectcalico.org/v3
kind: HostEndpoint
metadata:
  name: node1-eth0
  labels: {role: ingress}
spec:
  node: node1
  interfaceName: eth0
  expectedIPs: [192.0.2.10, "2001:db8::10"]
  profiles: [projectcalico-default-allow]
  ports:
  - {name: https, port: 443, protocol: TCP}
"#);
    assert!(d.warnings.is_empty());
    assert_round_trip(&d.resource);
    let hep = HostEndpoint::try_from(d.resource).unwrap();
    assert_eq!(hep.spec.expected_ips.len(), 2);
    assert!(!hep.is_all_interfaces());

    let doc = |spec: &str| {
        format!(
            "apiVersion: margay.dev/v1\nkind: HostEndpoint\nmetadata: {{name: h}}\nspec:\n{spec}"
        )
    };
    let all =
        HostEndpoint::try_from(ok(&doc("  node: node1\n  interfaceName: '*'\n")).resource).unwrap();
    assert!(all.is_all_interfaces());
    // Calico's empty interface name means "find it by expectedIPs".
    let by_ip = ok(&doc(
        "  node: node1\n  interfaceName: ''\n  expectedIPs: [10.0.0.1]\n",
    ));
    assert_eq!(
        HostEndpoint::try_from(by_ip.resource)
            .unwrap()
            .spec
            .interface_name,
        None
    );

    assert_err(
        &doc("  node: node1\n"),
        "spec.interfaceName",
        "either interfaceName or expectedIPs",
    );
    assert_err(&doc("  interfaceName: eth0\n"), "spec.node", "is required");
    assert_err(
        &doc("  node: node1\n  interfaceName: 'eth 0'\n"),
        "spec.interfaceName",
        "not a valid interface name",
    );
    assert_err(
        &doc("  node: node1\n  interfaceName: eth0\n  ports: [{name: https, port: 443, protocol: ICMP}]\n"),
        "spec.ports[0].protocol",
        "has no ports",
    );
    assert_err(
        &doc("  node: node1\n  interfaceName: eth0\n  ports: [{port: 443, protocol: TCP}]\n"),
        "spec.ports[0]",
        "missing field `name`",
    );
    assert_err(
        &doc("  node: node1\n  expectedIPs: [10.0.0.0/8]\n"),
        "spec.expectedIPs[0]",
        "invalid IP address",
    );
    assert_err(
        "apiVersion: margay.dev/v1\nkind: HostEndpoint\nmetadata: {name: h, namespace: ns}\nspec: {node: n, interfaceName: eth0}\n",
        "metadata.namespace",
        "not namespaced",
    );
}
