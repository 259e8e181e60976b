//! The Kubernetes kinds Margay reads: Namespace and Pod.

use margay_api::{
    decode, parse_documents, Decoded, FieldError, Kind, NamedPort, Namespace, Pod, PortProtocol,
    Source,
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

const POD: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  name: web-0
  namespace: shop
  labels:
    app: web
  uid: 5f1c0d4e-1b7a-4d59-9c55-0f6f3b1f3a10
  resourceVersion: "8812"
  creationTimestamp: "2025-10-18T02:00:00Z"
spec:
  nodeName: u22
  serviceAccountName: web
  containers:
  - name: app
    image: registry.example/web:1.2
    ports:
    - name: http
      containerPort: 8080
    - name: metrics
      containerPort: 9090
      protocol: TCP
    - containerPort: 9999
    resources:
      limits: {cpu: 500m}
  - name: dns-sidecar
    image: registry.example/dns:1
    ports:
    - name: dns
      containerPort: 53
      protocol: UDP
  tolerations:
  - operator: Exists
  someFutureField: {enabled: true}
status:
  podIP: 10.233.102.7
  phase: Running
"#;

#[test]
fn pod_exposes_what_cni_and_policy_read() {
    let d = decode_yaml(POD).unwrap();
    assert_eq!(d.source, Source::Kubernetes);
    assert_eq!(d.resource.kind(), Kind::Pod);
    assert!(d.warnings.is_empty(), "{:?}", d.warnings);
    let printed = d.resource.to_value();
    assert_eq!(printed["apiVersion"], "v1");
    assert_eq!(printed["kind"], "Pod");
    // Server fields go, and of the status only the addresses stay; the spec is kept
    // verbatim, unknown fields included.
    assert_eq!(printed["status"], json!({"podIP": "10.233.102.7"}));
    assert!(printed["metadata"].get("uid").is_none());
    assert_eq!(printed["spec"]["someFutureField"], json!({"enabled": true}));
    assert_round_trips(&d);

    let pod = Pod::try_from(d.resource).unwrap();
    assert_eq!(
        pod.ips(),
        ["10.233.102.7".parse::<std::net::IpAddr>().unwrap()]
    );
    assert_eq!(pod.namespace(), "shop");
    assert_eq!(pod.labels()["app"], "web");
    assert_eq!(pod.node_name(), Some("u22"));
    assert_eq!(pod.service_account(), "web");
    assert!(!pod.host_network());
    assert_eq!(
        pod.named_ports(),
        [
            NamedPort {
                name: "http".into(),
                protocol: PortProtocol::Tcp,
                port: 8080
            },
            NamedPort {
                name: "metrics".into(),
                protocol: PortProtocol::Tcp,
                port: 9090
            },
            NamedPort {
                name: "dns".into(),
                protocol: PortProtocol::Udp,
                port: 53
            },
        ]
    );
}

#[test]
fn pod_ips_come_from_status_then_calico_annotations() {
    let ips = |doc: serde_json::Value| Pod::try_from(decode(doc).unwrap().resource).unwrap().ips();
    let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
    let dual = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "a", "namespace": "x",
                     "annotations": {"cni.projectcalico.org/podIP": "10.0.0.9/32"}},
        "status": {"phase": "Running", "podIP": "10.0.0.1",
                   "podIPs": [{"ip": "10.0.0.1"}, {"ip": "fd00::1"}]}
    });
    assert_eq!(ips(dual), [ip("10.0.0.1"), ip("fd00::1")]);
    let annotated = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "a", "namespace": "x",
                     "annotations": {"cni.projectcalico.org/podIPs": "10.0.0.9/32,fd00::9/128"}}
    });
    assert_eq!(ips(annotated), [ip("10.0.0.9"), ip("fd00::9")]);
    let pending = json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "a", "namespace": "x"},
        "status": {"phase": "Pending"}
    });
    let d = decode(pending).unwrap();
    assert!(d.resource.to_value().get("status").is_none());
    assert!(Pod::try_from(d.resource).unwrap().ips().is_empty());

    let err = decode(json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "a", "namespace": "x"},
        "status": {"podIP": "10.0.0.300"}
    }))
    .unwrap_err();
    assert_eq!(err.field, "status");
    assert!(err.message.contains("podIP"), "{err}");
}

#[test]
fn pod_accessor_defaults() {
    let pod = Pod::new(
        "default",
        "probe",
        json!({"hostNetwork": true, "serviceAccount": "legacy"}),
    );
    assert_eq!(pod.node_name(), None);
    assert_eq!(pod.service_account(), "legacy");
    assert!(pod.host_network());
    assert!(pod.named_ports().is_empty());

    let d = decode(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "bare", "namespace": "default"}
    }))
    .unwrap();
    let pod = Pod::try_from(d.resource.clone()).unwrap();
    assert_eq!(pod.service_account(), "default");
    assert_eq!(pod.spec, json!({}));
    assert_round_trips(&d);
}

#[test]
fn pod_validation_checks_the_fields_margay_reads() {
    let check = |spec: serde_json::Value| {
        decode(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web-0", "namespace": "shop"}, "spec": spec
        }))
        .unwrap_err()
    };
    let port = |p: serde_json::Value| json!({"containers": [{"name": "app", "ports": [p]}]});
    let cases = [
        (json!("nope"), "spec"),
        (json!({"nodeName": 7}), "spec.nodeName"),
        (json!({"hostNetwork": "yes"}), "spec.hostNetwork"),
        (json!({"containers": {"name": "app"}}), "spec.containers"),
        (
            json!({"containers": [{"ports": {}}]}),
            "spec.containers[0].ports",
        ),
        (
            port(json!({"name": "http"})),
            "spec.containers[0].ports[0].containerPort",
        ),
        (
            port(json!({"containerPort": 70000})),
            "spec.containers[0].ports[0].containerPort",
        ),
        (
            port(json!({"containerPort": 80, "protocol": "ICMP"})),
            "spec.containers[0].ports[0].protocol",
        ),
        (
            port(json!({"containerPort": 80, "name": "HTTP"})),
            "spec.containers[0].ports[0].name",
        ),
        (
            port(json!({"containerPort": 80, "name": "a-very-long-port-name"})),
            "spec.containers[0].ports[0].name",
        ),
        (
            port(json!({"containerPort": 80, "name": "8080"})),
            "spec.containers[0].ports[0].name",
        ),
    ];
    for (spec, field) in cases {
        let err = check(spec.clone());
        assert_eq!(err.field, field, "{spec}: {err}");
    }

    let err = decode(json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web-0"}, "spec": {}
    }))
    .unwrap_err();
    assert_eq!(err.field, "metadata.namespace");

    // Metadata stays strict even though the spec is free-form.
    let err = decode(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "web-0", "namespace": "shop", "labelz": {}}, "spec": {}
    }))
    .unwrap_err();
    assert_eq!(err.field, "metadata.labelz");
}

#[test]
fn namespace_keeps_metadata_and_drops_spec_and_status() {
    let d = decode_yaml(
        r#"
apiVersion: v1
kind: Namespace
metadata:
  name: shop
  labels:
    kubernetes.io/metadata.name: shop
    team: payments
  annotations:
    owner: payments@example.com
  uid: 1d3b3a7e-0c55-4d21-9d0a-3c3b7f4d2a11
  resourceVersion: "77"
  creationTimestamp: "2025-10-18T01:29:00Z"
spec:
  finalizers:
  - kubernetes
status:
  phase: Active
"#,
    )
    .unwrap();
    assert_eq!(d.resource.kind(), Kind::Namespace);
    assert!(d.warnings.is_empty(), "{:?}", d.warnings);
    let printed = d.resource.to_value();
    assert_eq!(
        printed,
        json!({
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {
                "name": "shop",
                "labels": {"kubernetes.io/metadata.name": "shop", "team": "payments"},
                "annotations": {"owner": "payments@example.com"}
            }
        })
    );
    assert_round_trips(&d);
    let ns = Namespace::try_from(d.resource).unwrap();
    assert_eq!(ns.labels()["team"], "payments");
    assert_eq!(Namespace::new("shop").metadata.name, "shop");
}

#[test]
fn namespace_names_are_dns_labels() {
    for name in ["team.payments", "Shop"] {
        let err =
            decode(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}))
                .unwrap_err();
        assert_eq!(err.field, "metadata.name", "{name}");
    }
    let err = decode(json!({
        "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}, "data": {}
    }))
    .unwrap_err();
    assert_eq!(err.field, "data");
}
