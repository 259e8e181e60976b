//! Kubernetes `networking.k8s.io/v1` NetworkPolicy: upstream defaults and validation, and the
//! conversion of label selectors to Margay's selector language.

use std::collections::BTreeMap;

use margay_api::{
    decode, parse_documents, Decoded, FieldError, IntOrString, KubernetesNetworkPolicy,
    KubernetesProtocol, LabelSelector, LabelSelectorOperator, LabelSelectorRequirement, PolicyType,
    Resource, Source,
};
use margay_selector::Selector;

fn decode_one(text: &str) -> Result<Decoded, FieldError> {
    let mut docs = parse_documents(text).expect("test YAML parses");
    assert_eq!(docs.len(), 1, "one document expected");
    decode(docs.remove(0))
}

fn knp(text: &str) -> KubernetesNetworkPolicy {
    let d = decode_one(text).unwrap_or_else(|e| panic!("expected {text} to decode, got {e}"));
    assert_eq!(d.source, Source::Kubernetes);
    assert!(d.warnings.is_empty());
    KubernetesNetworkPolicy::try_from(d.resource).expect("a Kubernetes NetworkPolicy")
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

/// A policy in namespace `prod` with the given spec (YAML, indented by 2).
fn policy(spec: &str) -> String {
    format!("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: p\n  namespace: prod\nspec:\n{spec}")
}

const UPSTREAM_POLICY: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: api-allow
  namespace: prod
  uid: 7d3c2a4e-98a1-4b0e-bb8c-0c4f5ab2c9d1
  resourceVersion: "4242"
  generation: 1
  creationTimestamp: "2025-03-01T10:00:00Z"
  annotations:
    kubectl.kubernetes.io/last-applied-configuration: "{}"
spec:
  podSelector:
    matchLabels:
      app: api
  ingress:
  - from:
    - ipBlock:
        cidr: 172.17.0.0/16
        except:
        - 172.17.1.0/24
    - namespaceSelector:
        matchLabels:
          project: myproject
      podSelector:
        matchExpressions:
        - {key: role, operator: In, values: [frontend, web]}
        - {key: canary, operator: DoesNotExist}
    ports:
    - protocol: TCP
      port: http
    - port: 6379
  egress:
  - to:
    - ipBlock:
        cidr: 10.0.0.0/24
    ports:
    - protocol: TCP
      port: 32000
      endPort: 32768
    - protocol: UDP
      port: 53
"#;

#[test]
fn upstream_policy_decodes_with_defaults() {
    let p = knp(UPSTREAM_POLICY);
    assert_eq!(p.metadata.name, "api-allow");
    assert!(p.metadata.uid.is_none());
    assert!(p.metadata.annotations.is_empty());
    // Ingress always; Egress because there are egress rules.
    assert_eq!(
        p.spec.policy_types,
        vec![PolicyType::Ingress, PolicyType::Egress]
    );
    let ports = &p.spec.ingress[0].ports;
    assert_eq!(ports[0].port, Some(IntOrString::String("http".into())));
    // Upstream defaults the protocol of every port to TCP.
    assert_eq!(ports[1].protocol, Some(KubernetesProtocol::Tcp));
    assert_eq!(ports[1].port, Some(IntOrString::Int(6379)));
    let block = p.spec.ingress[0].from[0].ip_block.as_ref().unwrap();
    assert_eq!(block.cidr.to_string(), "172.17.0.0/16");
    assert_eq!(block.except[0].to_string(), "172.17.1.0/24");
    let range = &p.spec.egress[0].ports[0];
    assert_eq!(range.port, Some(IntOrString::Int(32000)));
    assert_eq!(range.end_port, Some(32768));
    assert_eq!(
        p.spec.egress[0].ports[1].protocol,
        Some(KubernetesProtocol::Udp)
    );
}

#[test]
fn upstream_policy_round_trips_and_prints_as_kubectl() {
    let resource: Resource = knp(UPSTREAM_POLICY).into();
    let v = resource.to_value();
    assert_eq!(v["apiVersion"], "networking.k8s.io/v1");
    assert_eq!(v["kind"], "NetworkPolicy");
    assert_eq!(v["spec"]["ingress"][0]["ports"][0]["port"], "http");
    assert_eq!(v["spec"]["ingress"][0]["ports"][1]["port"], 6379);
    assert_eq!(v["spec"]["ingress"][0]["ports"][1]["protocol"], "TCP");
    assert_eq!(v["spec"]["egress"][0]["ports"][0]["endPort"], 32768);
    let again = decode(v).expect("printed policy decodes").resource;
    assert_eq!(again, resource);
}

#[test]
fn policy_types_default_to_ingress_only_without_egress_rules() {
    let p = knp(&policy("  podSelector: {}\n"));
    assert_eq!(p.spec.policy_types, vec![PolicyType::Ingress]);
    assert!(p.spec.pod_selector.is_empty());

    // A default-deny-egress policy keeps its explicit types.
    let p = knp(&policy("  podSelector: {}\n  policyTypes: [Egress]\n"));
    assert_eq!(p.spec.policy_types, vec![PolicyType::Egress]);

    // An empty rule allows everything and survives printing.
    let p = knp(&policy("  podSelector: {}\n  ingress:\n  - {}\n"));
    assert_eq!(p.spec.ingress.len(), 1);
    let resource: Resource = p.into();
    assert_eq!(decode(resource.to_value()).unwrap().resource, resource);
}

#[test]
fn upstream_validation_names_the_field() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "  ingress:\n  - ports:\n    - {port: http, endPort: 90}\n",
            "spec.ingress[0].ports[0].endPort",
            "may not be specified when `port` is non-numeric",
        ),
        (
            "  ingress:\n  - ports:\n    - {endPort: 90}\n",
            "spec.ingress[0].ports[0].endPort",
            "may not be specified when `port` is not specified",
        ),
        (
            "  egress:\n  - ports:\n    - {port: 90, endPort: 80}\n",
            "spec.egress[0].ports[0].endPort",
            "must be greater than or equal to `port`",
        ),
        (
            "  egress:\n  - ports:\n    - {port: 90, endPort: 70000}\n",
            "spec.egress[0].ports[0].endPort",
            "out of range 1-65535",
        ),
        (
            "  ingress:\n  - ports:\n    - {port: 0}\n",
            "spec.ingress[0].ports[0].port",
            "out of range 1-65535",
        ),
        (
            "  ingress:\n  - ports:\n    - {port: Web_Port}\n",
            "spec.ingress[0].ports[0].port",
            "not a valid port name",
        ),
        (
            "  ingress:\n  - ports:\n    - {port: \"8080\"}\n",
            "spec.ingress[0].ports[0].port",
            "not a valid port name",
        ),
        (
            "  ingress:\n  - ports:\n    - {protocol: ICMP}\n",
            "spec.ingress[0].ports[0].protocol",
            "unknown variant `ICMP`",
        ),
        (
            "  ingress:\n  - from:\n    - ipBlock: {cidr: 10.0.0.0/8, except: [192.168.0.0/16]}\n",
            "spec.ingress[0].from[0].ipBlock.except[0]",
            "strict subset of `cidr`",
        ),
        (
            "  ingress:\n  - from:\n    - ipBlock: {cidr: 10.0.0.0/8, except: [10.0.0.0/8]}\n",
            "spec.ingress[0].from[0].ipBlock.except[0]",
            "strict subset of `cidr`",
        ),
        (
            "  ingress:\n  - from:\n    - ipBlock: {cidr: 10.0.0.1}\n",
            "spec.ingress[0].from[0].ipBlock.cidr",
            "invalid IP address",
        ),
        (
            "  egress:\n  - to:\n    - ipBlock: {cidr: 10.0.0.0/8}\n      podSelector: {}\n",
            "spec.egress[0].to[0]",
            "may not specify both ipBlock and another peer",
        ),
        (
            "  egress:\n  - to:\n    - {}\n",
            "spec.egress[0].to[0]",
            "must specify a peer",
        ),
        (
            "  podSelector:\n    matchExpressions:\n    - {key: app, operator: In}\n",
            "spec.podSelector.matchExpressions[0].values",
            "must be specified when `operator` is 'In' or 'NotIn'",
        ),
        (
            "  podSelector:\n    matchExpressions:\n    - {key: app, operator: Exists, values: [x]}\n",
            "spec.podSelector.matchExpressions[0].values",
            "may not be specified",
        ),
        (
            "  podSelector:\n    matchExpressions:\n    - {key: app, operator: Equals, values: [x]}\n",
            "spec.podSelector.matchExpressions[0].operator",
            "unknown variant `Equals`",
        ),
        (
            "  ingress:\n  - from:\n    - namespaceSelector:\n        matchLabels: {'bad key': x}\n",
            "spec.ingress[0].from[0].namespaceSelector.matchLabels.bad key",
            "label key",
        ),
        (
            "  policyTypes: [Ingress, Egress, Ingress]\n",
            "spec.policyTypes",
            "more than two",
        ),
    ];
    for (spec, field, message) in cases {
        assert_err(&policy(spec), field, message);
    }
}

fn requirement(
    key: &str,
    operator: LabelSelectorOperator,
    values: &[&str],
) -> LabelSelectorRequirement {
    LabelSelectorRequirement {
        key: key.into(),
        operator,
        values: values.iter().map(|v| v.to_string()).collect(),
    }
}

#[test]
fn label_selectors_convert_like_calico() {
    let selector = LabelSelector {
        match_labels: BTreeMap::from([
            ("tier".to_owned(), "web".to_owned()),
            ("app".to_owned(), "shop".to_owned()),
        ]),
        match_expressions: vec![
            requirement("env", LabelSelectorOperator::In, &["prod", "staging"]),
            requirement("track", LabelSelectorOperator::NotIn, &["canary"]),
            requirement("app.kubernetes.io/name", LabelSelectorOperator::Exists, &[]),
            requirement("legacy", LabelSelectorOperator::DoesNotExist, &[]),
        ],
    };
    let text = selector.to_selector_string();
    // Labels sorted by key, then the expressions in order, as Calico's converter writes them.
    assert_eq!(
        text,
        "app == 'shop' && tier == 'web' && env in { 'prod', 'staging' } && \
         track not in { 'canary' } && has(app.kubernetes.io/name) && ! has(legacy)"
    );
    let parsed = Selector::parse(&text).expect("converted selector parses");
    let labels = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let matching = labels(&[
        ("app", "shop"),
        ("tier", "web"),
        ("env", "prod"),
        ("app.kubernetes.io/name", "shop"),
    ]);
    assert!(parsed.matches(&matching));
    let mut canary = matching.clone();
    canary.insert("track".into(), "canary".into());
    assert!(!parsed.matches(&canary));
    let mut legacy = matching.clone();
    legacy.insert("legacy".into(), "yes".into());
    assert!(!parsed.matches(&legacy));

    let empty = LabelSelector::default();
    assert_eq!(empty.to_selector_string(), "all()");
    assert!(Selector::parse(&empty.to_selector_string())
        .unwrap()
        .is_all());
}

#[test]
fn decoded_selectors_convert() {
    let p = knp(UPSTREAM_POLICY);
    assert_eq!(p.spec.pod_selector.to_selector_string(), "app == 'api'");
    let peer = &p.spec.ingress[0].from[1];
    assert_eq!(
        peer.namespace_selector
            .as_ref()
            .unwrap()
            .to_selector_string(),
        "project == 'myproject'"
    );
    assert_eq!(
        peer.pod_selector.as_ref().unwrap().to_selector_string(),
        "role in { 'frontend', 'web' } && ! has(canary)"
    );
}
