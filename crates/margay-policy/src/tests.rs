//! Unit tests of the engine's semantics, written as Calico and Kubernetes YAML.

use std::net::IpAddr;
use std::time::Instant;

use margay_api::{decode, parse_documents, Action, GlobalNetworkPolicy, PolicyType, Resource};
use serde_json::json;

use crate::{
    evaluate, matrix, Cluster, Decision, DirectionVerdict, Icmp, IcmpVersion, NamedPort, Packet,
    Peer, PolicyError, PolicyKind, PolicyRef, Protocol, Step, Transport, Verdict,
};

/// Decodes YAML documents (Kubernetes, Calico or Margay) into resources.
pub(crate) fn resources(yaml: &str) -> Vec<Resource> {
    parse_documents(yaml)
        .expect("test YAML parses")
        .into_iter()
        .map(|doc| {
            decode(doc.clone())
                .unwrap_or_else(|e| panic!("{doc} does not decode: {e}"))
                .resource
        })
        .collect()
}

/// Namespaces x (team: a), y (team: b) and z (no labels); pods x/a, x/b, y/a, y/b, z/c with
/// `app` labels and addresses 10.0.<ns>.<n>.
const BASE: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: x, labels: {team: a}}
---
apiVersion: v1
kind: Namespace
metadata: {name: y, labels: {team: b}}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x, labels: {app: a}}
spec: {containers: [{name: c, ports: [{name: http, containerPort: 8080}]}]}
status: {podIP: 10.0.1.1}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: x, labels: {app: b}}
spec: {serviceAccountName: robot, containers: [{name: c, ports: [{name: http, containerPort: 9090}]}]}
status: {podIP: 10.0.1.2}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: y, labels: {app: a}}
status: {podIPs: [{ip: 10.0.2.1}, {ip: "fd00::2:1"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: y, labels: {app: b}}
status: {podIP: 10.0.2.2}
---
apiVersion: v1
kind: Pod
metadata: {name: c, namespace: z, labels: {app: c}}
status: {podIP: 10.0.3.1}
"#;

fn cluster(policies: &str) -> Cluster {
    try_cluster(policies).unwrap_or_else(|e| panic!("{e}"))
}

fn try_cluster(policies: &str) -> Result<Cluster, PolicyError> {
    let mut all = resources(BASE);
    all.extend(resources(policies));
    Cluster::from_resources(all)
}

fn packet(from: &str, to: &str, protocol: Protocol, port: u16) -> Packet {
    carrying(
        from,
        to,
        Transport::Ports {
            protocol,
            port,
            source_port: None,
        },
    )
}

/// `from` and `to` are ids or addresses.
fn carrying(from: &str, to: &str, transport: Transport) -> Packet {
    let peer = |p: &str| match p.parse::<IpAddr>() {
        Ok(ip) => Peer::Ip(ip),
        Err(_) => Peer::Endpoint(p.to_owned()),
    };
    Packet {
        from: peer(from),
        to: peer(to),
        transport,
    }
}

fn verdict(c: &Cluster, from: &str, to: &str, port: u16) -> Verdict {
    evaluate(c, &packet(from, to, Protocol::Tcp, port))
}

fn allowed(c: &Cluster, from: &str, to: &str, port: u16) -> bool {
    verdict(c, from, to, port).allowed
}

/// The pairs allowed on a port, as `from>to` strings, self pairs left out.
fn reach(c: &Cluster, port: u16, protocol: Protocol) -> Vec<String> {
    matrix(c, port, protocol)
        .allowed
        .into_iter()
        .filter(|(a, b)| a != b)
        .map(|(a, b)| format!("{a}>{b}"))
        .collect()
}

const EVERYONE: &[&str] = &["x/a", "x/b", "y/a", "y/b", "z/c"];

/// Every pair except self pairs, minus `except`.
fn all_pairs_but(except: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    for a in EVERYONE {
        for b in EVERYONE {
            let pair = format!("{a}>{b}");
            if a != b && !except.contains(&pair.as_str()) {
                out.push(pair);
            }
        }
    }
    out
}

/// The pairs into `to` from every other endpoint but `allowed_from`.
fn denied_into(to: &str, allowed_from: &[&str]) -> Vec<String> {
    EVERYONE
        .iter()
        .filter(|f| **f != to && !allowed_from.contains(f))
        .map(|f| format!("{f}>{to}"))
        .collect()
}

fn knp(namespace: &str, name: &str, spec: &str) -> String {
    format!(
        "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec:\n{spec}\n"
    )
}

// ---------------------------------------------------------------------------------------------
// The model
// ---------------------------------------------------------------------------------------------

#[test]
fn endpoints_carry_calico_labels_ports_and_addresses() {
    let c = cluster("");
    let ids: Vec<&str> = c.endpoints().iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, EVERYONE);
    let b = c.endpoint("x/b").unwrap();
    assert_eq!(b.service_account.as_deref(), Some("robot"));
    assert_eq!(b.ips, ["10.0.1.2".parse::<IpAddr>().unwrap()]);
    assert_eq!(
        b.named_ports,
        [NamedPort {
            name: "http".into(),
            protocol: Protocol::Tcp,
            port: 9090
        }]
    );
    assert_eq!(b.profiles, ["kns.x", "ksa.x.robot"]);
    let labels = &b.selector_labels;
    for (k, v) in [
        ("app", "b"),
        ("projectcalico.org/namespace", "x"),
        ("projectcalico.org/orchestrator", "k8s"),
        ("projectcalico.org/serviceaccount", "robot"),
        ("pcns.team", "a"),
        ("pcns.kubernetes.io/metadata.name", "x"),
        ("pcns.projectcalico.org/name", "x"),
        ("pcsa.projectcalico.org/name", "robot"),
    ] {
        assert_eq!(labels.get(k).map(String::as_str), Some(v), "{k}");
    }
    // A namespace without a Namespace resource still has its name label.
    let c_labels = &c.endpoint("z/c").unwrap().selector_labels;
    assert_eq!(c_labels["pcns.kubernetes.io/metadata.name"], "z");
    assert_eq!(c.endpoint("y/a").unwrap().ips.len(), 2);
}

#[test]
fn workload_endpoints_give_addresses_ports_and_profiles_and_pods_the_labels() {
    let extra = r#"
apiVersion: margay.dev/v1
kind: WorkloadEndpoint
metadata:
  name: node1-k8s-a-eth0
  namespace: x
  labels: {app: stale, projectcalico.org/namespace: x}
spec:
  orchestrator: k8s
  node: node1
  pod: a
  endpoint: eth0
  interfaceName: mgy0123456789a
  ipNetworks: [10.9.0.1/32]
  profiles: [kns.x]
  ports: [{name: web, protocol: TCP, port: 81}]
---
apiVersion: margay.dev/v1
kind: WorkloadEndpoint
metadata:
  name: node1-k8s-solo-eth0
  namespace: z
  labels: {app: solo}
spec:
  orchestrator: k8s
  node: node1
  pod: solo
  endpoint: eth0
  interfaceName: mgy0123456789b
  serviceAccountName: svc
  ipNetworks: [10.9.0.2/32]
  profiles: [kns.z, ksa.z.svc]
"#;
    let c = cluster(extra);
    let a = c.endpoint("x/a").unwrap();
    assert_eq!(a.labels["app"], "a", "the Pod's labels are current");
    assert_eq!(a.ips, ["10.9.0.1".parse::<IpAddr>().unwrap()]);
    assert_eq!(a.named_ports[0].name, "web");
    assert_eq!(a.profiles, ["kns.x"]);
    let solo = c.endpoint("z/solo").unwrap();
    assert_eq!(solo.labels["app"], "solo");
    assert_eq!(solo.service_account.as_deref(), Some("svc"));
    assert_eq!(solo.selector_labels["pcsa.projectcalico.org/name"], "svc");
    // An address resolves to its endpoint.
    let v = evaluate(&c, &packet("10.9.0.2", "x/a", Protocol::Tcp, 80));
    assert_eq!(v.egress.endpoint.as_deref(), Some("z/solo"));
}

#[test]
fn host_network_pods_are_not_endpoints() {
    let c = cluster(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: h, namespace: x}\nspec: {hostNetwork: true}\n",
    );
    assert!(c.endpoint("x/h").is_none());
}

#[test]
fn errors_name_the_resource() {
    // Decoding rejects doNotTrack, so build the policy directly, as a program could.
    let gnp: GlobalNetworkPolicy = serde_json::from_value(json!({
        "metadata": {"name": "untracked"},
        "spec": {"selector": "all()", "doNotTrack": true, "ingress": [{"action": "Allow"}]}
    }))
    .unwrap();
    let err = Cluster::from_resources([Resource::from(gnp)]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "GlobalNetworkPolicy untracked: doNotTrack is not supported yet"
    );
    let pre: GlobalNetworkPolicy = serde_json::from_value(json!({
        "metadata": {"name": "early"}, "spec": {"preDNAT": true, "applyOnForward": true}
    }))
    .unwrap();
    let err = Cluster::from_resources([Resource::from(pre)]).unwrap_err();
    assert!(
        err.to_string().contains("preDNAT is not supported yet"),
        "{err}"
    );

    let err = try_cluster(
        r#"
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: svc, namespace: x}
spec:
  egress:
  - action: Allow
    destination: {services: {name: api}}
"#,
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("NetworkPolicy x/svc: spec.egress[0].destination.services"),
        "{err}"
    );

    let err = try_cluster(
        r#"
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: security.p}
spec: {tier: security, selector: all()}
"#,
    )
    .unwrap_err();
    assert_eq!(
        err,
        PolicyError::UnknownTier {
            resource: "GlobalNetworkPolicy security.p".into(),
            tier: "security".into()
        }
    );

    let twice = "apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n";
    let err = try_cluster(twice).unwrap_err();
    assert_eq!(err.to_string(), "Namespace x is given more than once");
}

#[test]
fn a_selector_that_does_not_parse_is_named_with_its_field() {
    let mut gnp: GlobalNetworkPolicy = serde_json::from_value(json!({
        "metadata": {"name": "broken"}, "spec": {"selector": "app == "}
    }))
    .unwrap();
    gnp.spec.types = vec![PolicyType::Ingress];
    let err = Cluster::from_resources([Resource::from(gnp)]).unwrap_err();
    let text = err.to_string();
    assert!(
        text.starts_with("GlobalNetworkPolicy broken: spec.selector \"app == \": column"),
        "{text}"
    );
}

#[test]
fn a_dataplane_skips_the_policies_it_cannot_use_and_enforces_the_rest() {
    let good = knp(
        "x",
        "deny-all",
        "  podSelector: {}\n  policyTypes: [Ingress]",
    );
    let bad = r#"
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: security.allow-all}
spec: {tier: security, selector: all(), types: [Ingress], ingress: [{action: Allow}]}
"#;
    // Decoding refuses a bad selector, so this one is built as if stored by older code.
    let mut broken: GlobalNetworkPolicy = serde_json::from_value(json!({
        "metadata": {"name": "broken"}, "spec": {"selector": "app == "}
    }))
    .unwrap();
    broken.spec.types = vec![PolicyType::Ingress];
    let mut all = resources(BASE);
    all.extend(resources(&good));
    all.extend(resources(bad));
    all.push(Resource::from(broken));
    // Strictly, the first bad policy fails the whole cluster…
    assert!(matches!(
        Cluster::from_resources(all.clone()),
        Err(PolicyError::Selector { .. })
    ));
    // …skipping, each bad one is reported and the others decide exactly as without them.
    let (lenient, skipped) = Cluster::from_resources_skipping_bad_policies(all).unwrap();
    let messages: Vec<String> = skipped.iter().map(ToString::to_string).collect();
    assert_eq!(messages.len(), 2, "{messages:?}");
    assert!(
        messages[0].starts_with("GlobalNetworkPolicy broken: spec.selector"),
        "{messages:?}"
    );
    assert_eq!(
        messages[1],
        "GlobalNetworkPolicy security.allow-all: tier \"security\" does not exist (add a Tier \
         resource for it)"
    );
    let strict = cluster(&good);
    for protocol in [Protocol::Tcp, Protocol::Udp] {
        assert_eq!(
            matrix(&lenient, 80, protocol),
            matrix(&strict, 80, protocol)
        );
    }
    assert!(!allowed(&lenient, "y/a", "x/a", 80));
    // Duplicates are not about one policy: still an error.
    let twice = resources("apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n");
    let mut all = resources(BASE);
    all.extend(twice);
    assert!(Cluster::from_resources_skipping_bad_policies(all).is_err());
}
// ---------------------------------------------------------------------------------------------
// Kubernetes NetworkPolicy, converted as Calico does
// ---------------------------------------------------------------------------------------------

#[test]
fn no_policy_means_the_namespace_profile_allows_everything() {
    let c = cluster("");
    assert_eq!(reach(&c, 80, Protocol::Tcp), all_pairs_but(&[]));
    let v = verdict(&c, "x/a", "y/b", 80);
    match &v.ingress.decision {
        Decision::ProfileRule { profile, rule } => {
            assert_eq!(profile, "kns.y");
            assert_eq!((rule.index, rule.action), (0, Action::Allow));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        v.ingress.steps,
        [Step::TierSkipped {
            tier: "default".into()
        }]
    );
}

#[test]
fn kubernetes_pod_selector_peer_is_scoped_to_the_policy_namespace() {
    let c = cluster(&knp(
        "x",
        "allow-a",
        "  podSelector: {matchLabels: {app: b}}\n  ingress:\n  - from:\n    - podSelector: {matchLabels: {app: a}}",
    ));
    // y/a has app=a too but lives in another namespace.
    assert!(allowed(&c, "x/a", "x/b", 80));
    assert!(!allowed(&c, "y/a", "x/b", 80));
    assert_eq!(
        reach(&c, 80, Protocol::Tcp),
        all_pairs_but(
            &denied_into("x/b", &["x/a"])
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>()
        )
    );
    let v = verdict(&c, "x/a", "x/b", 80);
    assert_eq!(
        v.ingress.decision,
        Decision::Rule {
            tier: "default".into(),
            policy: PolicyRef {
                kind: PolicyKind::KubernetesNetworkPolicy,
                namespace: Some("x".into()),
                name: "knp.default.allow-a".into()
            },
            rule: crate::RuleRef {
                direction: PolicyType::Ingress,
                index: 0,
                action: Action::Allow,
                origin: "spec.ingress[0].from[0]".into()
            }
        }
    );
    let denied = verdict(&c, "y/a", "x/b", 80);
    assert_eq!(
        denied.ingress.decision,
        Decision::TierDefault {
            tier: "default".into()
        }
    );
    assert!(matches!(
        denied.ingress.steps.as_slice(),
        [Step::PolicyNoMatch { policy, .. }] if policy.name == "knp.default.allow-a"
    ));
    // Egress from x/b is not governed by this policy.
    assert!(denied.egress.allowed);
}

#[test]
fn kubernetes_namespace_selector_peer_selects_every_pod_of_matching_namespaces() {
    let c = cluster(&knp(
        "x",
        "from-team-b",
        "  podSelector: {matchLabels: {app: a}}\n  ingress:\n  - from:\n    - namespaceSelector: {matchLabels: {team: b}}",
    ));
    assert!(allowed(&c, "y/a", "x/a", 80));
    assert!(allowed(&c, "y/b", "x/a", 80));
    assert!(
        !allowed(&c, "x/b", "x/a", 80),
        "its own namespace is not team b"
    );
    assert!(!allowed(&c, "z/c", "x/a", 80));

    // An empty namespace selector selects every namespace (but still only pods).
    let c = cluster(&knp(
        "x",
        "from-anywhere",
        "  podSelector: {matchLabels: {app: a}}\n  ingress:\n  - from:\n    - namespaceSelector: {}",
    ));
    for from in ["x/b", "y/a", "y/b", "z/c"] {
        assert!(allowed(&c, from, "x/a", 80), "{from}");
    }
    assert!(!allowed(&c, "192.0.2.1", "x/a", 80));
}

#[test]
fn kubernetes_pod_and_namespace_selector_together_select_matching_pods_in_matching_namespaces() {
    let c = cluster(&knp(
        "x",
        "both",
        "  podSelector: {}\n  ingress:\n  - from:\n    - namespaceSelector: {matchExpressions: [{key: team, operator: In, values: [b]}]}\n      podSelector: {matchLabels: {app: b}}",
    ));
    assert!(allowed(&c, "y/b", "x/a", 80));
    assert!(!allowed(&c, "y/a", "x/a", 80));
    assert!(!allowed(&c, "x/b", "x/a", 80));
    // Traffic inside the isolated namespace is cut too, except to itself.
    assert!(!allowed(&c, "x/a", "x/b", 80));
    assert!(allowed(&c, "x/a", "x/a", 80));
}

#[test]
fn kubernetes_ip_block_minus_except_matches_external_and_pod_addresses() {
    let c = cluster(&knp(
        "x",
        "cidr",
        "  podSelector: {matchLabels: {app: a}}\n  ingress:\n  - from:\n    - ipBlock: {cidr: 10.0.0.0/16, except: [10.0.2.0/24]}\n    - ipBlock: {cidr: 192.0.2.0/24}",
    ));
    assert!(allowed(&c, "x/b", "x/a", 80), "10.0.1.2 is inside");
    assert!(allowed(&c, "z/c", "x/a", 80), "10.0.3.1 is inside");
    assert!(!allowed(&c, "y/b", "x/a", 80), "10.0.2.2 is excepted");
    assert!(allowed(&c, "192.0.2.7", "x/a", 80));
    assert!(!allowed(&c, "198.51.100.1", "x/a", 80));
    let v = verdict(&c, "192.0.2.7", "x/a", 80);
    assert_eq!(
        v.egress.decision,
        Decision::NotAnEndpoint {
            ip: "192.0.2.7".parse().unwrap()
        }
    );
    assert_eq!(v.egress.endpoint, None);
    assert_eq!(v.ingress.endpoint.as_deref(), Some("x/a"));
    match &v.ingress.decision {
        Decision::Rule { rule, .. } => assert_eq!(rule.origin, "spec.ingress[0].from[1]"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn kubernetes_empty_from_allows_all_and_empty_ingress_isolates() {
    let open = cluster(&knp("x", "open", "  podSelector: {}\n  ingress:\n  - {}"));
    assert_eq!(reach(&open, 80, Protocol::Tcp), all_pairs_but(&[]));
    assert!(allowed(&open, "203.0.113.9", "x/a", 80));

    let closed = cluster(&knp(
        "x",
        "closed",
        "  podSelector: {}\n  policyTypes: [Ingress]",
    ));
    let mut denied = denied_into("x/a", &[]);
    denied.extend(denied_into("x/b", &[]));
    let denied: Vec<&str> = denied.iter().map(String::as_str).collect();
    assert_eq!(reach(&closed, 80, Protocol::Tcp), all_pairs_but(&denied));

    // Multiple policies are a union.
    let union = cluster(&format!(
        "{}{}",
        knp("x", "closed", "  podSelector: {}\n  policyTypes: [Ingress]"),
        knp("x", "from-z", "  podSelector: {matchLabels: {app: a}}\n  ingress:\n  - from:\n    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: z}}")
    ));
    assert!(allowed(&union, "z/c", "x/a", 80));
    assert!(!allowed(&union, "z/c", "x/b", 80));
}

#[test]
fn kubernetes_egress_policy_types() {
    // Egress rules without policyTypes: Ingress and Egress both apply.
    let c = cluster(&knp(
        "x",
        "egress-to-y",
        "  podSelector: {matchLabels: {app: a}}\n  egress:\n  - to:\n    - namespaceSelector: {matchLabels: {team: b}}",
    ));
    assert!(allowed(&c, "x/a", "y/b", 80));
    assert!(!allowed(&c, "x/a", "z/c", 80));
    assert!(
        !allowed(&c, "x/b", "x/a", 80),
        "ingress isolated too (no ingress rules)"
    );
    let v = verdict(&c, "x/a", "z/c", 80);
    assert_eq!(
        v.egress.decision,
        Decision::TierDefault {
            tier: "default".into()
        }
    );
    assert!(v.ingress.allowed, "z/c itself has no policy");

    // policyTypes: [Egress] leaves ingress open.
    let c = cluster(&knp(
        "x",
        "deny-egress",
        "  podSelector: {matchLabels: {app: a}}\n  policyTypes: [Egress]",
    ));
    assert!(allowed(&c, "x/b", "x/a", 80));
    assert!(!allowed(&c, "x/a", "x/b", 80));
    assert!(!allowed(&c, "x/a", "198.51.100.1", 80));
}

#[test]
fn kubernetes_ports_numbers_protocols_and_ranges() {
    let c = cluster(&knp(
        "x",
        "ports",
        "  podSelector: {matchLabels: {app: a}}\n  ingress:\n  - ports:\n    - port: 80\n    - {protocol: UDP, port: 53}\n    - {port: 8000, endPort: 8010}\n    - {protocol: SCTP}",
    ));
    let tcp = |port| evaluate(&c, &packet("x/b", "x/a", Protocol::Tcp, port)).allowed;
    let udp = |port| evaluate(&c, &packet("x/b", "x/a", Protocol::Udp, port)).allowed;
    let sctp = |port| evaluate(&c, &packet("x/b", "x/a", Protocol::Sctp, port)).allowed;
    assert!(tcp(80) && !udp(80), "protocol defaults to TCP");
    assert!(udp(53) && !tcp(53));
    assert!(tcp(8000) && tcp(8005) && tcp(8010) && !tcp(8011) && !tcp(7999));
    assert!(
        sctp(1) && sctp(65535),
        "a protocol without a port opens all its ports"
    );
    // One converted rule per protocol, sorted as Calico sorts them.
    let v = evaluate(&c, &packet("x/b", "x/a", Protocol::Udp, 53));
    match v.ingress.decision {
        Decision::Rule { rule, .. } => {
            assert_eq!((rule.index, rule.origin.as_str()), (2, "spec.ingress[0]"))
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn kubernetes_named_ports_resolve_per_destination() {
    // x/a names 8080 "http", x/b names 9090 "http".
    let c = cluster(&knp(
        "x",
        "http",
        "  podSelector: {}\n  ingress:\n  - ports:\n    - port: http",
    ));
    assert!(allowed(&c, "y/a", "x/a", 8080));
    assert!(!allowed(&c, "y/a", "x/a", 9090));
    assert!(allowed(&c, "y/a", "x/b", 9090));
    assert!(!allowed(&c, "y/a", "x/b", 8080));
    assert!(
        !evaluate(&c, &packet("y/a", "x/a", Protocol::Udp, 8080)).allowed,
        "the named port is TCP"
    );
    let denied: Vec<(String, String)> = ["x/a", "y/a", "y/b", "z/c"]
        .iter()
        .map(|f| (f.to_string(), "x/b".to_string()))
        .collect();
    assert_eq!(matrix(&c, 8080, Protocol::Tcp).denied, denied);
}

// ---------------------------------------------------------------------------------------------
// Calico policy: tiers, orders, actions, profiles
// ---------------------------------------------------------------------------------------------

const TIERS: &str = r#"
apiVersion: projectcalico.org/v3
kind: Tier
metadata: {name: security}
spec: {order: 100}
---
apiVersion: projectcalico.org/v3
kind: Tier
metadata: {name: platform}
spec: {order: 200, defaultAction: Pass}
"#;

#[test]
fn a_pass_default_tier_hands_over_and_a_deny_default_tier_drops() {
    // platform (Pass default) selects x/a but matches nothing; default tier allows from y.
    let c = cluster(&format!(
        r#"{TIERS}
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {{name: platform.watch}}
spec:
  tier: platform
  selector: app == 'a'
  ingress: [{{action: Allow, source: {{selector: app == 'nothing'}}}}]
---
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {{name: from-y, namespace: x}}
spec:
  selector: app == 'a'
  ingress: [{{action: Allow, source: {{namespaceSelector: team == 'b'}}}}]
"#
    ));
    let v = verdict(&c, "y/b", "x/a", 80);
    assert!(v.allowed);
    assert_eq!(
        v.ingress.steps,
        [
            Step::TierSkipped {
                tier: "security".into()
            },
            Step::PolicyNoMatch {
                tier: "platform".into(),
                policy: PolicyRef {
                    kind: PolicyKind::GlobalNetworkPolicy,
                    namespace: None,
                    name: "platform.watch".into()
                }
            },
            Step::TierDefaultPass {
                tier: "platform".into()
            },
        ]
    );
    match &v.ingress.decision {
        Decision::Rule { tier, policy, .. } => {
            assert_eq!(tier, "default");
            assert_eq!(policy.name, "default.from-y");
            assert_eq!(policy.namespace.as_deref(), Some("x"));
        }
        other => panic!("{other:?}"),
    }
    // z/c is not from y: the default tier (Deny) drops it.
    let v = verdict(&c, "z/c", "x/a", 80);
    assert_eq!(
        v.ingress.decision,
        Decision::TierDefault {
            tier: "default".into()
        }
    );

    // A Deny-default tier drops what it does not decide, whatever later tiers say.
    let c = cluster(&format!(
        r#"{TIERS}
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {{name: security.watch}}
spec:
  tier: security
  selector: app == 'a'
  ingress: [{{action: Allow, source: {{selector: app == 'b'}}}}]
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {{name: allow-all}}
spec:
  selector: all()
  ingress: [{{action: Allow}}]
"#
    ));
    assert!(allowed(&c, "y/b", "x/a", 80));
    let v = verdict(&c, "z/c", "x/a", 80);
    assert_eq!(
        v.ingress.decision,
        Decision::TierDefault {
            tier: "security".into()
        }
    );
    assert!(
        allowed(&c, "z/c", "x/b", 80),
        "security does not select x/b"
    );
}

#[test]
fn policies_order_then_name_and_missing_order_last() {
    let two = |deny_name: &str, deny_order: &str, allow_name: &str, allow_order: &str| {
        cluster(&format!(
            r#"
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {{name: {deny_name}}}
spec: {{selector: app == 'a', {deny_order} ingress: [{{action: Deny}}]}}
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {{name: {allow_name}}}
spec: {{selector: app == 'a', {allow_order} ingress: [{{action: Allow}}]}}
"#
        ))
    };
    // Equal orders: the name decides.
    assert!(!allowed(
        &two("a-deny", "order: 10,", "b-allow", "order: 10,"),
        "x/b",
        "x/a",
        80
    ));
    assert!(allowed(
        &two("b-deny", "order: 10,", "a-allow", "order: 10,"),
        "x/b",
        "x/a",
        80
    ));
    // Lower order first, whatever the names.
    assert!(allowed(
        &two("a-deny", "order: 20,", "b-allow", "order: 10,"),
        "x/b",
        "x/a",
        80
    ));
    // No order: after every ordered policy.
    assert!(allowed(
        &two("a-deny", "", "z-allow", "order: 1000000,"),
        "x/b",
        "x/a",
        80
    ));
    // Both without order: by name.
    assert!(!allowed(
        &two("a-deny", "", "b-allow", ""),
        "x/b",
        "x/a",
        80
    ));
}

#[test]
fn deny_beats_a_later_allow_and_log_continues() {
    let c = cluster(
        r#"
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: rules, namespace: x}
spec:
  selector: app == 'a'
  order: 10
  ingress:
  - action: Log
  - action: Deny
    source: {selector: app == 'b'}
  - action: Allow
---
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: later, namespace: x}
spec:
  selector: app == 'a'
  order: 20
  ingress: [{action: Allow, source: {selector: app == 'b'}}]
"#,
    );
    let v = verdict(&c, "x/b", "x/a", 80);
    assert!(!v.allowed);
    match &v.ingress.decision {
        Decision::Rule { policy, rule, .. } => {
            assert_eq!(policy.name, "default.rules");
            assert_eq!((rule.index, rule.action), (1, Action::Deny));
            assert_eq!(rule.origin, "spec.ingress[1]");
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(&v.ingress.steps[..], [Step::Logged { rule, .. }] if rule.index == 0));
    assert!(
        allowed(&c, "y/b", "x/a", 80),
        "y/b is not in x: rule 1 is scoped to x"
    );
}

#[test]
fn profiles_apply_only_when_no_tier_applied_or_the_last_passed() {
    let deny_profile = r#"
apiVersion: projectcalico.org/v3
kind: Profile
metadata: {name: kns.x}
spec:
  ingress: [{action: Deny, source: {selector: app == 'c'}}]
  egress: [{action: Allow}]
"#;
    // x's profile now denies from app=c and matches nothing else on ingress: the ksa profile
    // has no rules, so everything else is dropped too.
    let c = cluster(deny_profile);
    let v = verdict(&c, "z/c", "x/a", 80);
    match &v.ingress.decision {
        Decision::ProfileRule { profile, rule } => {
            assert_eq!(profile, "kns.x");
            assert_eq!(rule.action, Action::Deny);
        }
        other => panic!("{other:?}"),
    }
    let v = verdict(&c, "y/a", "x/a", 80);
    assert_eq!(v.ingress.decision, Decision::NoProfileMatched);
    assert_eq!(
        v.ingress.steps[1..],
        [
            Step::ProfileNoMatch {
                profile: "kns.x".into()
            },
            Step::ProfileNoMatch {
                profile: "ksa.x.default".into()
            },
        ]
    );
    assert!(
        allowed(&c, "x/a", "y/a", 80),
        "egress allowed by the profile, y open"
    );

    // A policy that applies takes the profiles out of play...
    let with_policy = format!(
        "{deny_profile}---\n{}",
        r#"
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: allow-all, namespace: x}
spec: {selector: all(), ingress: [{action: Allow}]}
"#
    );
    assert!(allowed(&cluster(&with_policy), "z/c", "x/a", 80));

    // ...unless it passes: then the profiles decide.
    let passing = format!(
        "{deny_profile}---\n{}",
        r#"
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: pass, namespace: x}
spec: {selector: all(), ingress: [{action: Pass}, {action: Allow}]}
"#
    );
    let c = cluster(&passing);
    let v = verdict(&c, "z/c", "x/a", 80);
    assert!(!v.allowed);
    assert!(matches!(v.ingress.decision, Decision::ProfileRule { .. }));
    assert!(
        matches!(&v.ingress.steps[..], [Step::Passed { rule, .. }, ..] if rule.action == Action::Pass)
    );

    // With the default profiles, passing into them allows.
    let c = cluster(
        r#"
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: pass}
spec: {selector: all(), ingress: [{action: Pass}], egress: [{action: Pass}]}
"#,
    );
    assert_eq!(reach(&c, 80, Protocol::Tcp), all_pairs_but(&[]));
}

#[test]
fn an_endpoint_always_reaches_itself() {
    let c = cluster(
        r#"
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: deny-all}
spec: {selector: all(), types: [Ingress, Egress]}
"#,
    );
    let m = matrix(&c, 80, Protocol::Tcp);
    let selfs: Vec<(String, String)> = EVERYONE
        .iter()
        .map(|e| (e.to_string(), e.to_string()))
        .collect();
    assert_eq!(m.allowed, selfs);
    assert_eq!(m.denied.len(), 20);
    let v = verdict(&c, "x/a", "x/a", 80);
    assert!(v.allowed);
    assert_eq!(v.egress.decision, Decision::Loopback);
    assert_eq!(v.ingress.decision, Decision::Loopback);
    // An address of its own is itself too.
    assert!(allowed(&c, "10.0.1.1", "x/a", 80));
}

// ---------------------------------------------------------------------------------------------
// Calico rule matches
// ---------------------------------------------------------------------------------------------

#[test]
fn network_sets_let_external_addresses_in() {
    let c = cluster(
        r#"
apiVersion: projectcalico.org/v3
kind: GlobalNetworkSet
metadata: {name: partners, labels: {role: partner}}
spec: {nets: [198.51.100.0/24]}
---
apiVersion: projectcalico.org/v3
kind: NetworkSet
metadata: {name: office, namespace: y, labels: {role: office}}
spec: {nets: [203.0.113.0/24]}
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: edge}
spec:
  selector: app == 'a'
  ingress:
  - action: Allow
    source: {selector: role == 'partner'}
  - action: Allow
    source: {namespaceSelector: team == 'b', selector: role == 'office'}
  - action: Allow
    protocol: TCP
    source: {namespaceSelector: global()}
    destination: {ports: [443]}
"#,
    );
    assert!(allowed(&c, "198.51.100.7", "x/a", 80));
    assert!(!allowed(&c, "192.0.2.7", "x/a", 80));
    assert!(
        allowed(&c, "203.0.113.5", "y/a", 80),
        "a namespaced set via namespaceSelector"
    );
    // global(): non-namespaced things only, so the partners set on 443, never a pod.
    assert!(allowed(&c, "198.51.100.7", "x/a", 443));
    assert!(!allowed(&c, "z/c", "x/a", 443));
    assert!(!allowed(&c, "z/c", "x/a", 80));
}

#[test]
fn service_accounts_and_namespace_selectors_in_calico_rules() {
    let c = cluster(
        r#"
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: sa}
spec:
  selector: app == 'a'
  ingress:
  - action: Allow
    source: {serviceAccounts: {names: [robot]}}
  - action: Allow
    source: {namespaceSelector: team == 'b', selector: app == 'b'}
"#,
    );
    assert!(allowed(&c, "x/b", "x/a", 80), "x/b runs as robot");
    assert!(!allowed(&c, "z/c", "x/a", 80));
    assert!(allowed(&c, "y/b", "y/a", 80));
    assert!(!allowed(&c, "y/a", "x/a", 80), "app a, not b");

    // In a namespaced policy, a rule selector stays in the policy's namespace...
    let c = cluster(
        r#"
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: local, namespace: x}
spec:
  selector: app == 'a'
  ingress: [{action: Allow, source: {selector: app == 'b'}}]
"#,
    );
    assert!(allowed(&c, "x/b", "x/a", 80));
    assert!(!allowed(&c, "y/b", "x/a", 80));
    // ...unless it has a namespaceSelector; all() there means every namespace.
    let c = cluster(
        r#"
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: any-ns, namespace: x}
spec:
  selector: app == 'a'
  ingress: [{action: Allow, source: {namespaceSelector: all(), selector: app == 'b'}}]
"#,
    );
    assert!(allowed(&c, "y/b", "x/a", 80));
    assert!(!allowed(&c, "198.51.100.1", "x/a", 80));
}

#[test]
fn negative_matches() {
    let c = cluster(
        r#"
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: negatives}
spec:
  selector: app == 'a'
  ingress:
  - action: Allow
    protocol: TCP
    source: {notSelector: app == 'c', notNets: [10.0.2.0/24]}
    destination: {notPorts: [22, "1000:2000"]}
  - action: Allow
    notProtocol: TCP
"#,
    );
    let tcp = |from: &str, port| allowed(&c, from, "x/a", port);
    assert!(tcp("x/b", 80));
    assert!(!tcp("z/c", 80), "notSelector");
    assert!(!tcp("y/b", 80), "notNets");
    assert!(!tcp("x/b", 22) && !tcp("x/b", 1500), "notPorts");
    assert!(tcp("x/b", 2001));
    // notProtocol: anything but TCP, from anyone.
    assert!(evaluate(&c, &packet("z/c", "x/a", Protocol::Udp, 22)).allowed);
    assert!(evaluate(&c, &packet("y/b", "x/a", Protocol::Sctp, 22)).allowed);
    // A notNets rule is IPv4 only: y/a to x/a is IPv4 (both have one), so it applies.
    assert!(!tcp("y/a", 1500));
}

#[test]
fn named_and_source_ports_in_calico_rules() {
    let c = cluster(
        r#"
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: named}
spec:
  selector: has(app)
  ingress:
  - action: Allow
    protocol: TCP
    destination: {ports: [http]}
  - action: Allow
    protocol: UDP
    source: {ports: [53]}
"#,
    );
    assert!(allowed(&c, "z/c", "x/a", 8080));
    assert!(allowed(&c, "z/c", "x/b", 9090));
    assert!(!allowed(&c, "z/c", "x/b", 8080));
    assert!(!allowed(&c, "z/c", "y/a", 8080), "y/a has no named ports");
    // The source port is ephemeral: a source port match never matches.
    assert!(!evaluate(&c, &packet("z/c", "x/a", Protocol::Udp, 53)).allowed);
}

#[test]
fn ip_version_and_family() {
    let c = cluster(
        r#"
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: v6-only}
spec:
  selector: app == 'a'
  ingress: [{action: Allow, ipVersion: 6}]
"#,
    );
    assert!(allowed(&c, "fd00::9", "y/a", 80));
    assert!(!allowed(&c, "192.0.2.9", "y/a", 80));
    assert!(!allowed(&c, "x/b", "y/a", 80), "x/b and y/a talk IPv4");
}

fn icmp(version: IcmpVersion, icmp_type: u8, code: Option<u8>) -> Transport {
    Transport::Icmp(Icmp {
        version,
        icmp_type,
        code,
    })
}

fn with_source_port(protocol: Protocol, source_port: u16, port: u16) -> Transport {
    Transport::Ports {
        protocol,
        port,
        source_port: Some(source_port),
    }
}

/// The index of the rule that decided a direction, `None` for anything else.
fn deciding_rule(v: &DirectionVerdict) -> Option<usize> {
    match &v.decision {
        Decision::Rule { rule, .. } => Some(rule.index),
        _ => None,
    }
}

#[test]
fn icmp_rules_match_type_and_code() {
    let c = cluster(
        r#"
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: icmp}
spec:
  selector: app == 'a'
  ingress:
  - action: Allow
    protocol: ICMP
    icmp: {type: 8}
  - action: Allow
    protocol: 1
    icmp: {type: 3, code: 4}
"#,
    );
    let ingress = |from: &str, to: &str, t: Transport| evaluate(&c, &carrying(from, to, t)).ingress;
    let v4 = |t, code| ingress("z/c", "x/a", icmp(IcmpVersion::V4, t, code));
    // A type alone matches every code, and a packet whose code is not given.
    assert_eq!(deciding_rule(&v4(8, None)), Some(0));
    assert_eq!(deciding_rule(&v4(8, Some(0))), Some(0));
    assert!(!v4(0, Some(0)).allowed, "another type");
    // Type and code (protocol given by number): both must be the packet's.
    assert_eq!(deciding_rule(&v4(3, Some(4))), Some(1));
    assert!(!v4(3, Some(1)).allowed, "another code");
    assert!(
        !v4(3, None).allowed,
        "a code not given is none the rule names"
    );
    // ICMP rules never match TCP, nor ICMPv6 (another protocol).
    assert!(!evaluate(&c, &packet("z/c", "x/a", Protocol::Tcp, 8)).allowed);
    assert!(!ingress("fd00::9", "y/a", icmp(IcmpVersion::V6, 8, None)).allowed);
    // ICMP between endpoints is IPv4: y/a's IPv4 address is matched.
    assert!(ingress("y/b", "y/a", icmp(IcmpVersion::V4, 8, None)).allowed);
}

#[test]
fn not_icmp_negates_and_never_matches_other_protocols() {
    let c = cluster(
        r#"
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: not-icmp}
spec:
  selector: app == 'a'
  ingress:
  - action: Deny
    protocol: ICMP
    notICMP: {type: 8}
  - action: Allow
    protocol: ICMP
  - action: Deny
    protocol: ICMPv6
    notICMP: {type: 128, code: 0}
  - action: Allow
    protocol: 58
"#,
    );
    let ingress = |from: &str, t: Transport| evaluate(&c, &carrying(from, "y/a", t)).ingress;
    let v4 = |t, code| ingress("z/c", icmp(IcmpVersion::V4, t, code));
    let v6 = |t, code| ingress("fd00::9", icmp(IcmpVersion::V6, t, code));
    assert_eq!(
        deciding_rule(&v4(8, Some(0))),
        Some(1),
        "echo is not denied"
    );
    assert_eq!(
        deciding_rule(&v4(0, Some(0))),
        Some(0),
        "anything but echo is"
    );
    // Type and code negated together: only 128/0 gets past the Deny.
    assert_eq!(deciding_rule(&v6(128, Some(0))), Some(3));
    assert_eq!(deciding_rule(&v6(128, Some(1))), Some(2));
    assert_eq!(deciding_rule(&v6(129, Some(0))), Some(2));
    assert_eq!(
        deciding_rule(&v6(128, None)),
        Some(2),
        "an unknown code is not 0"
    );
    // notICMP is no "anything but": a TCP packet is not ICMP, so the Deny does not match.
    let tcp = ingress("z/c", with_source_port(Protocol::Tcp, 8, 80));
    assert_eq!(
        tcp.decision,
        Decision::TierDefault {
            tier: "default".into()
        }
    );
}

#[test]
fn icmp_and_icmpv6_rules_are_tied_to_their_families() {
    let c = cluster(
        r#"
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: families}
spec:
  selector: app == 'a'
  ingress:
  - action: Allow
    protocol: ICMPv6
  - action: Allow
    protocol: ICMP
    icmp: {type: 8}
    source: {nets: [10.0.0.0/8]}
"#,
    );
    let allowed = |from: &str, t: Transport| evaluate(&c, &carrying(from, "y/a", t)).allowed;
    let echo = icmp(IcmpVersion::V4, 8, Some(0));
    let echo6 = icmp(IcmpVersion::V6, 128, Some(0));
    assert!(allowed("x/b", echo), "x/b's IPv4 address is in 10.0.0.0/8");
    assert!(allowed("x/b", echo6), "ICMPv6 between endpoints is IPv6");
    assert!(allowed("fd00::9", echo6));
    // Felix renders ICMP rules into IPv4 chains only and ICMPv6 rules into IPv6 ones, so
    // protocol 58 in an IPv4 packet (and 1 in an IPv6 one) matches neither rule.
    assert!(!allowed("10.0.9.9", echo6));
    assert!(!allowed("fd00::9", echo));
}

#[test]
fn known_source_ports_match_source_port_rules() {
    let c = cluster(
        r#"
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: source-ports}
spec:
  selector: app == 'a'
  ingress:
  - action: Allow
    protocol: UDP
    source: {ports: [53, "5000:5010"]}
  - action: Allow
    protocol: TCP
    source: {ports: [http]}
  - action: Deny
    protocol: TCP
    source: {notPorts: ["1:1023"]}
  - action: Allow
    protocol: TCP
"#,
    );
    let rule =
        |from: &str, t: Transport| deciding_rule(&evaluate(&c, &carrying(from, "y/a", t)).ingress);
    let udp = |sport| rule("x/b", with_source_port(Protocol::Udp, sport, 53));
    let tcp = |from: &str, sport| rule(from, with_source_port(Protocol::Tcp, sport, 80));
    assert_eq!(udp(53), Some(0), "a number");
    assert_eq!(udp(5005), Some(0), "a range");
    assert_eq!(udp(5011), None, "outside both: the tier's default");
    // A named source port is the source endpoint's: x/b names 9090 http, x/a 8080.
    assert_eq!(tcp("x/b", 9090), Some(1));
    assert_eq!(tcp("x/a", 8080), Some(1));
    assert_eq!(
        tcp("x/a", 9090),
        Some(2),
        "not x/a's http, and not below 1024"
    );
    assert_eq!(tcp("z/c", 8080), Some(2), "z/c names no ports");
    assert_eq!(
        tcp("10.9.9.9", 9090),
        Some(2),
        "an external address names no ports"
    );
    // notPorts: a privileged source port is let through.
    assert_eq!(tcp("x/a", 80), Some(3));
}

#[test]
fn an_unknown_source_port_matches_no_ports_and_every_not_ports() {
    let c = cluster(
        r#"
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: source-ports}
spec:
  selector: app == 'a'
  ingress:
  - action: Allow
    protocol: UDP
    source: {ports: ["1:65535"]}
  - action: Deny
    protocol: TCP
    source: {notPorts: ["1:65535"]}
  - action: Allow
"#,
    );
    let rule = |p| deciding_rule(&evaluate(&c, &packet("x/b", "y/a", p, 53)).ingress);
    assert_eq!(
        rule(Protocol::Udp),
        Some(2),
        "no source.ports entry matches"
    );
    assert_eq!(rule(Protocol::Tcp), Some(1), "every source.notPorts does");
    // The matrix makes the same assumption.
    assert!(!reach(&c, 53, Protocol::Tcp).contains(&"x/b>y/a".to_owned()));
    assert!(reach(&c, 53, Protocol::Udp).contains(&"x/b>y/a".to_owned()));
}

#[test]
fn transports_serialize_flat() {
    let json = |t: Transport| serde_json::to_value(t).unwrap();
    assert_eq!(
        json(Transport::Ports {
            protocol: Protocol::Udp,
            port: 53,
            source_port: None
        }),
        json!({"protocol": "UDP", "port": 53})
    );
    assert_eq!(
        json(with_source_port(Protocol::Tcp, 40000, 80)),
        json!({"protocol": "TCP", "port": 80, "sourcePort": 40000})
    );
    assert_eq!(
        json(icmp(IcmpVersion::V6, 128, Some(0))),
        json!({"protocol": "ICMPv6", "icmpType": 128, "icmpCode": 0})
    );
    assert_eq!(
        json(icmp(IcmpVersion::V4, 8, None)),
        json!({"protocol": "ICMP", "icmpType": 8})
    );
    assert_eq!(
        icmp(IcmpVersion::V4, 3, Some(4)).to_string(),
        "ICMP type 3 code 4"
    );
    assert_eq!(
        with_source_port(Protocol::Tcp, 40000, 80).to_string(),
        "TCP/80 (source port 40000)"
    );
}

#[test]
fn matrix_is_fast_for_a_hundred_endpoints_and_policies() {
    let mut yaml = String::new();
    for n in 0..10 {
        yaml += &format!("---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: ns{n}, labels: {{idx: '{n}'}}}}\n");
        for p in 0..10 {
            yaml += &format!(
                "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: p{p}, namespace: ns{n}, labels: {{app: a{}, tier: t{}}}}}\nspec: {{containers: [{{name: c, ports: [{{name: web, containerPort: {}}}]}}]}}\nstatus: {{podIP: 10.1.{n}.{p}}}\n",
                p % 3,
                p % 2,
                8000 + p
            );
        }
        for k in 0..10 {
            yaml += &knp(
                &format!("ns{n}"),
                &format!("pol{k}"),
                &format!(
                    "  podSelector: {{matchLabels: {{app: a{}}}}}\n  ingress:\n  - from:\n    - namespaceSelector: {{matchLabels: {{idx: '{}'}}}}\n      podSelector: {{matchLabels: {{tier: t{}}}}}\n    ports: [{{port: web}}, {{port: 80}}]\n  egress:\n  - to:\n    - ipBlock: {{cidr: 10.1.0.0/16, except: [10.1.{k}.0/24]}}",
                    k % 3,
                    (n + k) % 10,
                    k % 2
                ),
            );
        }
    }
    let c = Cluster::from_resources(resources(&yaml)).unwrap();
    assert_eq!(c.endpoints().len(), 100);
    let start = Instant::now();
    let m = matrix(&c, 80, Protocol::Tcp);
    let elapsed = start.elapsed();
    assert_eq!(m.allowed.len() + m.denied.len(), 10_000);
    assert!(m.allowed.len() > 100 && !m.denied.is_empty());
    // Generous for unoptimised test builds; release builds take a few milliseconds.
    assert!(elapsed.as_millis() < 1000, "matrix took {elapsed:?}");
}

#[test]
fn verdicts_serialize_as_plain_data() {
    let c = cluster(&knp(
        "x",
        "allow-a",
        "  podSelector: {}\n  ingress:\n  - from:\n    - podSelector: {matchLabels: {app: a}}",
    ));
    let v = verdict(&c, "z/c", "x/b", 80);
    let json = serde_json::to_value(&v).unwrap();
    assert_eq!(json["allowed"], false);
    assert_eq!(
        json["ingress"]["decision"],
        json!({"by": "tierDefault", "tier": "default"})
    );
    assert_eq!(
        json["ingress"]["steps"][0],
        json!({"step": "policyNoMatch", "tier": "default",
               "policy": {"kind": "KubernetesNetworkPolicy", "namespace": "x", "name": "knp.default.allow-a"}})
    );
    assert_eq!(json["egress"]["decision"]["by"], "profileRule");
    let unknown = evaluate(&c, &packet("x/nope", "x/a", Protocol::Tcp, 80));
    assert!(!unknown.allowed);
    assert_eq!(
        unknown.egress.decision,
        Decision::UnknownEndpoint {
            id: "x/nope".into()
        }
    );
}

// ---------------------------------------------------------------------------------------------
// matrix() and evaluate() against a straightforward reading of the rules
// ---------------------------------------------------------------------------------------------

mod reference {
    //! Random small clusters of Kubernetes NetworkPolicies, behind an optional Calico
    //! GlobalNetworkPolicy in a tier `guard` (default action Pass) whose rules match on
    //! protocol, `notProtocol`, `icmp`, `notICMP`, source ports and destination ports.
    //! Reachability is computed directly from the semantics: the first guard rule that
    //! matches decides (Pass, or no match, hands over); then a pod is isolated in a direction
    //! when any Kubernetes policy of that type selects it, and reachable only through the
    //! union of their rules. No selector language, no tiers beyond the guard.

    use std::collections::BTreeMap;
    use std::net::{Ipv4Addr, Ipv6Addr};

    use proptest::prelude::*;
    use serde_json::{json, Value};

    use super::*;

    const NAMESPACES: [&str; 3] = ["n0", "n1", "n2"];
    const KEYS: [&str; 2] = ["k", "j"];
    const VALUES: [&str; 2] = ["u", "v"];
    const PORTS: [u16; 2] = [80, 81];
    /// Source ports packets may come from: around the ports rules name.
    const SOURCE_PORTS: [u16; 3] = [79, 80, 81];
    /// ICMP types: echo reply, echo request, ICMPv6 echo request.
    const ICMP_TYPES: [u8; 3] = [0, 8, 128];
    const ICMP_CODES: [u8; 2] = [0, 1];

    type Labels = BTreeMap<String, String>;

    #[derive(Debug, Clone)]
    struct TestPod {
        namespace: usize,
        labels: Labels,
        /// The port it names `web` (TCP), if any.
        web: Option<u16>,
    }

    #[derive(Debug, Clone)]
    enum TestPeer {
        Pods {
            pods: Option<Labels>,
            namespaces: Option<Labels>,
        },
        /// `10.0.0.0/<prefix>` minus the /24 of namespace `except`.
        Block { prefix: u8, except: Option<usize> },
    }

    #[derive(Debug, Clone)]
    enum TestPort {
        Number(u16),
        Web,
        Range(u16, u16),
    }

    #[derive(Debug, Clone)]
    struct TestRule {
        peers: Vec<TestPeer>,
        ports: Vec<TestPort>,
    }

    #[derive(Debug, Clone)]
    struct TestPolicy {
        namespace: usize,
        selector: Labels,
        ingress: Option<Vec<TestRule>>,
        egress: Option<Vec<TestRule>>,
    }

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum TestProtocol {
        Tcp,
        Udp,
        Icmp,
        IcmpV6,
    }

    impl TestProtocol {
        fn number(self) -> u8 {
            match self {
                TestProtocol::Tcp => 6,
                TestProtocol::Udp => 17,
                TestProtocol::Icmp => 1,
                TestProtocol::IcmpV6 => 58,
            }
        }

        fn has_ports(self) -> bool {
            matches!(self, TestProtocol::Tcp | TestProtocol::Udp)
        }

        /// Calico's name, or the number (Calico takes both).
        fn json(self, by_number: bool) -> Value {
            match (self, by_number) {
                (_, true) => json!(self.number()),
                (TestProtocol::Tcp, false) => json!("TCP"),
                (TestProtocol::Udp, false) => json!("UDP"),
                (TestProtocol::Icmp, false) => json!("ICMP"),
                (TestProtocol::IcmpV6, false) => json!("ICMPv6"),
            }
        }
    }

    /// `icmp`/`notICMP`: a type and a code, each optional (a code only with a type).
    type IcmpMatch = (Option<u8>, Option<u8>);

    #[derive(Debug, Clone)]
    struct GuardRule {
        action: Action,
        /// The protocol, and whether it is written as a number.
        protocol: Option<(TestProtocol, bool)>,
        not_protocol: Option<TestProtocol>,
        icmp: Option<IcmpMatch>,
        not_icmp: Option<IcmpMatch>,
        source_ports: Vec<TestPort>,
        source_not_ports: Vec<TestPort>,
        destination_ports: Vec<TestPort>,
    }

    #[derive(Debug, Clone)]
    struct Guard {
        selector: Labels,
        ingress: Vec<GuardRule>,
        egress: Vec<GuardRule>,
    }

    #[derive(Debug, Clone)]
    struct TestCluster {
        namespace_labels: Vec<Labels>,
        pods: Vec<TestPod>,
        policies: Vec<TestPolicy>,
        guard: Option<Guard>,
    }

    /// What a test packet carries.
    #[derive(Debug, Clone, Copy)]
    enum TestTransport {
        Ports {
            protocol: TestProtocol,
            port: u16,
            source_port: Option<u16>,
        },
        Icmp {
            v6: bool,
            icmp_type: u8,
            code: Option<u8>,
        },
    }

    impl TestTransport {
        fn protocol(self) -> TestProtocol {
            match self {
                TestTransport::Ports { protocol, .. } => protocol,
                TestTransport::Icmp { v6: false, .. } => TestProtocol::Icmp,
                TestTransport::Icmp { v6: true, .. } => TestProtocol::IcmpV6,
            }
        }

        /// Between two endpoints with both families, only ICMPv6 is IPv6.
        fn family(self) -> u8 {
            match self {
                TestTransport::Icmp { v6: true, .. } => 6,
                _ => 4,
            }
        }

        fn engine(self) -> Transport {
            match self {
                TestTransport::Ports {
                    protocol,
                    port,
                    source_port,
                } => Transport::Ports {
                    protocol: match protocol {
                        TestProtocol::Tcp => Protocol::Tcp,
                        TestProtocol::Udp => Protocol::Udp,
                        TestProtocol::Icmp | TestProtocol::IcmpV6 => {
                            unreachable!("ICMP packets are TestTransport::Icmp")
                        }
                    },
                    port,
                    source_port,
                },
                TestTransport::Icmp {
                    v6,
                    icmp_type,
                    code,
                } => Transport::Icmp(Icmp {
                    version: if v6 { IcmpVersion::V6 } else { IcmpVersion::V4 },
                    icmp_type,
                    code,
                }),
            }
        }
    }

    fn labels() -> impl Strategy<Value = Labels> {
        prop::collection::btree_map(
            prop::sample::select(&KEYS[..]).prop_map(str::to_owned),
            prop::sample::select(&VALUES[..]).prop_map(str::to_owned),
            0..=2,
        )
    }

    fn peer() -> impl Strategy<Value = TestPeer> {
        prop_oneof![
            (prop::option::of(labels()), prop::option::of(labels()))
                .prop_filter("a peer names something", |(p, n)| p.is_some()
                    || n.is_some())
                .prop_map(|(pods, namespaces)| TestPeer::Pods { pods, namespaces }),
            (
                prop::sample::select(&[8u8, 16, 24][..]),
                prop::option::of(0..3usize)
            )
                // An exception must lie strictly inside the block.
                .prop_map(|(prefix, except)| TestPeer::Block {
                    prefix,
                    except: except.filter(|_| prefix < 24),
                }),
        ]
    }

    fn port() -> impl Strategy<Value = TestPort> {
        prop_oneof![
            prop::sample::select(&PORTS[..]).prop_map(TestPort::Number),
            Just(TestPort::Web),
            Just(TestPort::Range(79, 80)),
        ]
    }

    fn rule() -> impl Strategy<Value = TestRule> {
        (
            prop::collection::vec(peer(), 0..=2),
            prop::collection::vec(port(), 0..=2),
        )
            .prop_map(|(peers, ports)| TestRule { peers, ports })
    }

    fn policy() -> impl Strategy<Value = TestPolicy> {
        (
            0..3usize,
            labels(),
            prop::option::of(prop::collection::vec(rule(), 0..=2)),
            prop::option::of(prop::collection::vec(rule(), 0..=2)),
        )
            .prop_map(|(namespace, selector, ingress, egress)| TestPolicy {
                namespace,
                selector,
                // Kubernetes defaults empty policyTypes to Ingress.
                ingress: ingress.or_else(|| egress.is_none().then(Vec::new)),
                egress,
            })
    }

    fn test_protocol() -> impl Strategy<Value = TestProtocol> {
        prop::sample::select(
            &[
                TestProtocol::Tcp,
                TestProtocol::Udp,
                TestProtocol::Icmp,
                TestProtocol::IcmpV6,
            ][..],
        )
    }

    fn icmp_match() -> impl Strategy<Value = IcmpMatch> {
        (
            prop::option::of(prop::sample::select(&ICMP_TYPES[..])),
            prop::option::of(prop::sample::select(&ICMP_CODES[..])),
        )
            .prop_map(|(icmp_type, code)| (icmp_type, code.filter(|_| icmp_type.is_some())))
    }

    /// A rule Calico accepts: ports only with TCP or UDP, ICMP matches only with ICMP or
    /// ICMPv6.
    fn guard_rule() -> impl Strategy<Value = GuardRule> {
        (
            prop::sample::select(&[Action::Allow, Action::Deny, Action::Pass][..]),
            prop::option::of((test_protocol(), any::<bool>())),
            prop::option::of(test_protocol()),
            (
                prop::option::of(icmp_match()),
                prop::option::of(icmp_match()),
            ),
            (
                prop::collection::vec(port(), 0..=2),
                prop::collection::vec(port(), 0..=1),
                prop::collection::vec(port(), 0..=1),
            ),
        )
            .prop_map(
                |(
                    action,
                    protocol,
                    not_protocol,
                    (icmp, not_icmp),
                    (sports, not_sports, dports),
                )| {
                    let is_icmp = protocol.is_some_and(|(p, _)| !p.has_ports());
                    let has_ports = protocol.is_some_and(|(p, _)| p.has_ports());
                    let ports = |list: Vec<TestPort>| if has_ports { list } else { Vec::new() };
                    GuardRule {
                        action,
                        protocol,
                        not_protocol,
                        icmp: icmp.filter(|_| is_icmp),
                        not_icmp: not_icmp.filter(|_| is_icmp),
                        source_ports: ports(sports),
                        source_not_ports: ports(not_sports),
                        destination_ports: ports(dports),
                    }
                },
            )
    }

    fn guard() -> impl Strategy<Value = Guard> {
        (
            labels(),
            prop::collection::vec(guard_rule(), 1..=3),
            prop::collection::vec(guard_rule(), 1..=3),
        )
            .prop_map(|(selector, ingress, egress)| Guard {
                selector,
                ingress,
                egress,
            })
    }

    fn test_cluster() -> impl Strategy<Value = TestCluster> {
        (
            prop::collection::vec(labels(), 3),
            prop::collection::vec(
                (
                    0..3usize,
                    labels(),
                    prop::option::of(prop::sample::select(&PORTS[..])),
                )
                    .prop_map(|(namespace, labels, web)| TestPod {
                        namespace,
                        labels,
                        web,
                    }),
                1..=6,
            ),
            prop::collection::vec(policy(), 0..=4),
            prop::option::weighted(0.8, guard()),
        )
            .prop_map(|(namespace_labels, pods, policies, guard)| TestCluster {
                namespace_labels,
                pods,
                policies,
                guard,
            })
    }

    fn transport() -> impl Strategy<Value = TestTransport> {
        prop_oneof![
            (
                prop::sample::select(&[TestProtocol::Tcp, TestProtocol::Udp][..]),
                prop::sample::select(&PORTS[..]),
                prop::option::of(prop::sample::select(&SOURCE_PORTS[..])),
            )
                .prop_map(|(protocol, port, source_port)| TestTransport::Ports {
                    protocol,
                    port,
                    source_port,
                }),
            (
                any::<bool>(),
                prop::sample::select(&ICMP_TYPES[..]),
                prop::option::of(prop::sample::select(&ICMP_CODES[..])),
            )
                .prop_map(|(v6, icmp_type, code)| TestTransport::Icmp {
                    v6,
                    icmp_type,
                    code,
                }),
        ]
    }

    fn ip(pod: usize, t: &TestCluster) -> Ipv4Addr {
        Ipv4Addr::new(10, 0, t.pods[pod].namespace as u8, pod as u8 + 1)
    }

    fn ipv6(pod: usize, t: &TestCluster) -> Ipv6Addr {
        Ipv6Addr::new(
            0xfd00,
            0,
            0,
            0,
            0,
            0,
            t.pods[pod].namespace as u16,
            pod as u16 + 1,
        )
    }

    fn id(pod: usize, t: &TestCluster) -> String {
        format!("{}/p{pod}", NAMESPACES[t.pods[pod].namespace])
    }

    fn subset(selector: &Labels, labels: &Labels) -> bool {
        selector.iter().all(|(k, v)| labels.get(k) == Some(v))
    }

    fn namespace_labels(ns: usize, t: &TestCluster) -> Labels {
        let mut labels = t.namespace_labels[ns].clone();
        labels.insert("kubernetes.io/metadata.name".into(), NAMESPACES[ns].into());
        labels
    }

    /// Whether `peer` (in a policy of namespace `policy_ns`) matches pod `other`.
    fn peer_matches(
        peer: &TestPeer,
        policy_ns: usize,
        other: usize,
        family: u8,
        t: &TestCluster,
    ) -> bool {
        let pod = &t.pods[other];
        match peer {
            TestPeer::Pods { pods, namespaces } => {
                let ns_ok = match namespaces {
                    Some(sel) => subset(sel, &namespace_labels(pod.namespace, t)),
                    None => pod.namespace == policy_ns,
                };
                ns_ok && pods.as_ref().is_none_or(|sel| subset(sel, &pod.labels))
            }
            // The block is IPv4: an IPv6 packet is never in it.
            TestPeer::Block { prefix, except } => {
                let addr = u32::from(ip(other, t));
                let mask = u32::MAX << (32 - u32::from(*prefix));
                let inside = addr & mask == u32::from(Ipv4Addr::new(10, 0, 0, 0)) & mask;
                family == 4 && inside && except.is_none_or(|e| pod.namespace != e)
            }
        }
    }

    /// Whether `port` (of `protocol`, at pod `pod`'s end) is `p`; `web` is a TCP port.
    fn port_is(
        p: &TestPort,
        pod: usize,
        protocol: TestProtocol,
        port: u16,
        t: &TestCluster,
    ) -> bool {
        match p {
            TestPort::Number(n) => *n == port,
            TestPort::Range(lo, hi) => (*lo..=*hi).contains(&port),
            TestPort::Web => protocol == TestProtocol::Tcp && t.pods[pod].web == Some(port),
        }
    }

    /// Whether `local`'s Kubernetes policies let traffic with `other` through, in one
    /// direction.
    fn kubernetes_allows(
        local: usize,
        other: usize,
        dst: usize,
        packet: TestTransport,
        ingress: bool,
        t: &TestCluster,
    ) -> bool {
        let pod = &t.pods[local];
        let selecting: Vec<&Vec<TestRule>> = t
            .policies
            .iter()
            .filter(|p| p.namespace == pod.namespace && subset(&p.selector, &pod.labels))
            .filter_map(|p| {
                if ingress {
                    p.ingress.as_ref()
                } else {
                    p.egress.as_ref()
                }
            })
            .collect();
        if selecting.is_empty() {
            return true;
        }
        // Kubernetes ports are TCP ports (the protocol defaults to TCP).
        let port_matches = |pm: &TestPort| match packet {
            TestTransport::Ports {
                protocol: TestProtocol::Tcp,
                port,
                ..
            } => port_is(pm, dst, TestProtocol::Tcp, port, t),
            _ => false,
        };
        t.policies
            .iter()
            .filter(|p| p.namespace == pod.namespace && subset(&p.selector, &pod.labels))
            .any(|p| {
                let rules = if ingress { &p.ingress } else { &p.egress };
                rules.iter().flatten().any(|r| {
                    (r.peers.is_empty()
                        || r.peers
                            .iter()
                            .any(|peer| peer_matches(peer, p.namespace, other, packet.family(), t)))
                        && (r.ports.is_empty() || r.ports.iter().any(port_matches))
                })
            })
    }

    /// Whether a guard rule matches a packet from `src` to `dst`.
    fn guard_rule_matches(
        r: &GuardRule,
        src: usize,
        dst: usize,
        packet: TestTransport,
        t: &TestCluster,
    ) -> bool {
        let protocol = packet.protocol();
        let (source_port, port, icmp) = match packet {
            TestTransport::Ports {
                port, source_port, ..
            } => (source_port, Some(port), None),
            TestTransport::Icmp {
                icmp_type, code, ..
            } => (None, None, Some((icmp_type, code))),
        };
        // Each given field is the packet's; a code the packet does not give is no code.
        let holds = |(want_type, want_code): IcmpMatch, (icmp_type, code): (u8, Option<u8>)| {
            want_type.is_none_or(|w| w == icmp_type) && want_code.is_none_or(|w| code == Some(w))
        };
        let icmp_ok = match (r.icmp, icmp) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(m), Some(packet)) => holds(m, packet),
        };
        let not_icmp_ok = match (r.not_icmp, icmp) {
            (None, _) => true,
            (Some(_), None) => false,
            // Nothing to negate: no condition.
            (Some((None, None)), Some(_)) => true,
            (Some(m), Some(packet)) => !holds(m, packet),
        };
        // An unknown (or missing) port is none that a list names.
        let any_port = |list: &[TestPort], pod: usize, port: Option<u16>| {
            port.is_some_and(|port| list.iter().any(|p| port_is(p, pod, protocol, port, t)))
        };
        r.protocol.is_none_or(|(p, _)| p == protocol)
            && r.not_protocol.is_none_or(|p| p != protocol)
            && icmp_ok
            && not_icmp_ok
            && (r.source_ports.is_empty() || any_port(&r.source_ports, src, source_port))
            && !any_port(&r.source_not_ports, src, source_port)
            && (r.destination_ports.is_empty() || any_port(&r.destination_ports, dst, port))
    }

    /// What the guard decides on `local`'s side: `None` when it does not select the pod, no
    /// rule matches (its tier passes) or a Pass rule matches.
    fn guard_decides(
        local: usize,
        src: usize,
        dst: usize,
        packet: TestTransport,
        ingress: bool,
        t: &TestCluster,
    ) -> Option<bool> {
        let guard = t.guard.as_ref()?;
        if !subset(&guard.selector, &t.pods[local].labels) {
            return None;
        }
        let rules = if ingress {
            &guard.ingress
        } else {
            &guard.egress
        };
        match rules
            .iter()
            .find(|r| guard_rule_matches(r, src, dst, packet, t))?
            .action
        {
            Action::Allow => Some(true),
            Action::Deny => Some(false),
            _ => None,
        }
    }

    fn side_allows(
        local: usize,
        other: usize,
        packet: TestTransport,
        ingress: bool,
        t: &TestCluster,
    ) -> bool {
        let (src, dst) = if ingress {
            (other, local)
        } else {
            (local, other)
        };
        guard_decides(local, src, dst, packet, ingress, t)
            .unwrap_or_else(|| kubernetes_allows(local, other, dst, packet, ingress, t))
    }

    fn reference_allowed(from: usize, to: usize, packet: TestTransport, t: &TestCluster) -> bool {
        from == to
            || side_allows(from, to, packet, false, t) && side_allows(to, from, packet, true, t)
    }

    fn selector_json(labels: &Labels) -> Value {
        json!({"matchLabels": labels})
    }

    /// The same labels as a Calico selector.
    fn calico_selector(labels: &Labels) -> String {
        if labels.is_empty() {
            return "all()".to_owned();
        }
        labels
            .iter()
            .map(|(k, v)| format!("{k} == '{v}'"))
            .collect::<Vec<_>>()
            .join(" && ")
    }

    fn rule_json(rule: &TestRule, ingress: bool) -> Value {
        let peers: Vec<Value> = rule
            .peers
            .iter()
            .map(|peer| match peer {
                TestPeer::Pods { pods, namespaces } => {
                    let mut v = json!({});
                    if let Some(p) = pods {
                        v["podSelector"] = selector_json(p);
                    }
                    if let Some(n) = namespaces {
                        v["namespaceSelector"] = selector_json(n);
                    }
                    v
                }
                TestPeer::Block { prefix, except } => {
                    let mut block = json!({"cidr": format!("10.0.0.0/{prefix}")});
                    if let Some(e) = except {
                        block["except"] = json!([format!("10.0.{e}.0/24")]);
                    }
                    json!({"ipBlock": block})
                }
            })
            .collect();
        let ports: Vec<Value> = rule
            .ports
            .iter()
            .map(|p| match p {
                TestPort::Number(n) => json!({"port": n}),
                TestPort::Web => json!({"port": "web"}),
                TestPort::Range(lo, hi) => json!({"port": lo, "endPort": hi}),
            })
            .collect();
        let peer_field = if ingress { "from" } else { "to" };
        json!({peer_field: peers, "ports": ports})
    }

    fn calico_ports(ports: &[TestPort]) -> Value {
        ports
            .iter()
            .map(|p| match p {
                TestPort::Number(n) => json!(n),
                TestPort::Web => json!("web"),
                TestPort::Range(lo, hi) => json!(format!("{lo}:{hi}")),
            })
            .collect()
    }

    fn icmp_json((icmp_type, code): IcmpMatch) -> Value {
        let mut v = json!({});
        if let Some(t) = icmp_type {
            v["type"] = json!(t);
        }
        if let Some(c) = code {
            v["code"] = json!(c);
        }
        v
    }

    fn guard_rule_json(r: &GuardRule) -> Value {
        let mut v = json!({"action": format!("{:?}", r.action)});
        if let Some((p, by_number)) = r.protocol {
            v["protocol"] = p.json(by_number);
        }
        if let Some(p) = r.not_protocol {
            v["notProtocol"] = p.json(false);
        }
        if let Some(m) = r.icmp {
            v["icmp"] = icmp_json(m);
        }
        if let Some(m) = r.not_icmp {
            v["notICMP"] = icmp_json(m);
        }
        v["source"] = json!({});
        if !r.source_ports.is_empty() {
            v["source"]["ports"] = calico_ports(&r.source_ports);
        }
        if !r.source_not_ports.is_empty() {
            v["source"]["notPorts"] = calico_ports(&r.source_not_ports);
        }
        v["destination"] = json!({});
        if !r.destination_ports.is_empty() {
            v["destination"]["ports"] = calico_ports(&r.destination_ports);
        }
        v
    }

    fn to_resources(t: &TestCluster) -> Vec<Resource> {
        let mut docs = Vec::new();
        for (i, labels) in t.namespace_labels.iter().enumerate() {
            docs.push(json!({"apiVersion": "v1", "kind": "Namespace",
                             "metadata": {"name": NAMESPACES[i], "labels": labels}}));
        }
        for (i, pod) in t.pods.iter().enumerate() {
            let ports: Vec<Value> = pod
                .web
                .iter()
                .map(|p| json!({"name": "web", "containerPort": p}))
                .collect();
            docs.push(json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": format!("p{i}"), "namespace": NAMESPACES[pod.namespace], "labels": pod.labels},
                "spec": {"containers": [{"name": "c", "ports": ports}]},
                "status": {"podIPs": [{"ip": ip(i, t).to_string()}, {"ip": ipv6(i, t).to_string()}]}}));
        }
        for (i, p) in t.policies.iter().enumerate() {
            let mut types = Vec::new();
            let mut spec = json!({"podSelector": selector_json(&p.selector)});
            if let Some(rules) = &p.ingress {
                types.push("Ingress");
                spec["ingress"] = rules.iter().map(|r| rule_json(r, true)).collect();
            }
            if let Some(rules) = &p.egress {
                types.push("Egress");
                spec["egress"] = rules.iter().map(|r| rule_json(r, false)).collect();
            }
            spec["policyTypes"] = json!(types);
            docs.push(
                json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                "metadata": {"name": format!("pol{i}"), "namespace": NAMESPACES[p.namespace]},
                "spec": spec}),
            );
        }
        if let Some(guard) = &t.guard {
            docs.push(json!({"apiVersion": "projectcalico.org/v3", "kind": "Tier",
                "metadata": {"name": "guard"}, "spec": {"order": 100, "defaultAction": "Pass"}}));
            docs.push(
                json!({"apiVersion": "projectcalico.org/v3", "kind": "GlobalNetworkPolicy",
                "metadata": {"name": "guard.rules"},
                "spec": {"tier": "guard", "selector": calico_selector(&guard.selector),
                         "types": ["Ingress", "Egress"],
                         "ingress": guard.ingress.iter().map(guard_rule_json).collect::<Vec<_>>(),
                         "egress": guard.egress.iter().map(guard_rule_json).collect::<Vec<_>>()}}),
            );
        }
        docs.into_iter()
            .map(|d| {
                decode(d.clone())
                    .unwrap_or_else(|e| panic!("{d}: {e}"))
                    .resource
            })
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        #[test]
        fn matrix_matches_the_reference(t in test_cluster(), port in prop::sample::select(&PORTS[..])) {
            let cluster = Cluster::from_resources(to_resources(&t)).unwrap();
            let m = matrix(&cluster, port, Protocol::Tcp);
            // The matrix's packets come from an unknown source port.
            let packet = TestTransport::Ports { protocol: TestProtocol::Tcp, port, source_port: None };
            let mut expected_allowed = Vec::new();
            let mut expected_denied = Vec::new();
            for from in 0..t.pods.len() {
                for to in 0..t.pods.len() {
                    let pair = (id(from, &t), id(to, &t));
                    if reference_allowed(from, to, packet, &t) {
                        expected_allowed.push(pair);
                    } else {
                        expected_denied.push(pair);
                    }
                }
            }
            expected_allowed.sort();
            expected_denied.sort();
            prop_assert_eq!(m.allowed, expected_allowed);
            prop_assert_eq!(m.denied, expected_denied);
        }

        #[test]
        fn evaluate_matches_the_reference_for_icmp_and_source_ports(
            t in test_cluster(),
            packets in prop::collection::vec(transport(), 1..=4),
        ) {
            let cluster = Cluster::from_resources(to_resources(&t)).unwrap();
            for packet in packets {
                for from in 0..t.pods.len() {
                    for to in 0..t.pods.len() {
                        let verdict = evaluate(&cluster, &Packet {
                            from: Peer::Endpoint(id(from, &t)),
                            to: Peer::Endpoint(id(to, &t)),
                            transport: packet.engine(),
                        });
                        prop_assert_eq!(
                            verdict.allowed,
                            reference_allowed(from, to, packet, &t),
                            "{:?} from {} to {}: {:?}", packet, id(from, &t), id(to, &t), verdict
                        );
                    }
                }
            }
        }
    }
}
