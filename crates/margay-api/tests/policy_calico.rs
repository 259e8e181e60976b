//! Calico policy kinds: NetworkPolicy, GlobalNetworkPolicy, Tier, Profile and network sets.

use margay_api::{
    decode, parse_documents, Action, Decoded, FieldError, GlobalNetworkPolicy, GlobalNetworkSet,
    NetworkPolicy, NetworkSet, PolicyType, Port, Profile, Protocol, Resource, Source, Tier,
    TierDefaultAction,
};

fn decode_one(text: &str) -> Result<Decoded, FieldError> {
    let mut docs = parse_documents(text).expect("test YAML parses");
    assert_eq!(docs.len(), 1, "one document expected");
    decode(docs.remove(0))
}

fn ok(text: &str) -> Decoded {
    decode_one(text).unwrap_or_else(|e| panic!("expected {text} to decode, got {e}"))
}

fn err(text: &str) -> FieldError {
    match decode_one(text) {
        Ok(d) => panic!("expected an error, decoded {:?}", d.resource),
        Err(e) => e,
    }
}

fn assert_err(text: &str, field: &str, message_part: &str) {
    let e = err(text);
    assert_eq!(e.field, field, "wrong field for error {e}");
    assert!(
        e.message.contains(message_part),
        "error {e} does not mention {message_part:?}"
    );
}

/// decode → print → decode yields the same resource.
fn assert_round_trip(resource: &Resource) {
    let printed = resource.to_value();
    let again = decode(printed.clone())
        .unwrap_or_else(|e| panic!("re-decoding {printed} failed: {e}"))
        .resource;
    assert_eq!(&again, resource);
}

fn np(d: Decoded) -> NetworkPolicy {
    NetworkPolicy::try_from(d.resource).expect("a NetworkPolicy")
}

fn gnp(d: Decoded) -> GlobalNetworkPolicy {
    GlobalNetworkPolicy::try_from(d.resource).expect("a GlobalNetworkPolicy")
}

/// A namespaced Margay policy with the given ingress rules (YAML, indented by 2).
fn np_with_ingress(rules: &str) -> String {
    format!(
        "apiVersion: margay.dev/v1\nkind: NetworkPolicy\nmetadata:\n  name: p\n  namespace: ns\nspec:\n  ingress:\n{rules}"
    )
}

const FULL_POLICY: &str = r#"
apiVersion: margay.dev/v1
kind: NetworkPolicy
metadata:
  name: security.allow-web
  namespace: prod
spec:
  tier: security
  order: 100
  selector: app == 'web'
  serviceAccountSelector: role == 'frontend'
  ingress:
  - action: Allow
    protocol: TCP
    source:
      nets: [10.0.0.0/8, 192.168.1.7]
      selector: app == 'lb'
      namespaceSelector: global()
      notPorts: [22]
    destination:
      ports: [80, "8000:8080", http]
    metadata:
      annotations:
        owner: web-team
  - action: Allow
    protocol: ICMP
    ipVersion: 4
    icmp: {type: 8, code: 0}
  - action: Deny
    protocol: 132
    notProtocol: UDP
    source:
      serviceAccounts:
        names: [admin]
        selector: team == 'ops'
  egress:
  - action: Allow
    protocol: UDP
    destination:
      services: {name: kube-dns, namespace: kube-system}
  - action: Log
  - action: Pass
    notProtocol: ICMPv6
    notICMP: {type: 128}
    ipVersion: 6
    protocol: ICMPv6
    destination:
      notNets: ["fd00::/8"]
      notSelector: has(quarantine)
"#;

#[test]
fn full_policy_decodes_and_round_trips() {
    let d = ok(FULL_POLICY);
    assert_eq!(d.source, Source::Margay);
    assert!(d.warnings.is_empty());
    assert_round_trip(&d.resource);
    let p = np(d);
    assert_eq!(p.spec.tier, "security");
    assert_eq!(p.spec.order, Some(100.0));
    assert_eq!(p.spec.types, vec![PolicyType::Ingress, PolicyType::Egress]);
    let r0 = &p.spec.ingress[0];
    assert_eq!(r0.protocol, Some(Protocol::Tcp));
    assert_eq!(
        r0.destination.ports,
        vec![
            Port::Number(80),
            Port::Range(8000, 8080),
            Port::Named("http".into())
        ]
    );
    assert_eq!(r0.source.nets[1].to_string(), "192.168.1.7/32");
    assert_eq!(p.spec.ingress[2].protocol, Some(Protocol::Number(132)));
    assert!(p.spec.ingress[2].protocol.unwrap().supports_ports());
    assert_eq!(p.spec.egress[1].action, Action::Log);
}

#[test]
fn printed_policy_uses_calico_spellings() {
    let d = ok(FULL_POLICY);
    let v = d.resource.to_value();
    assert_eq!(v["spec"]["order"], serde_json::json!(100));
    let rule = &v["spec"]["ingress"][0];
    assert_eq!(rule["protocol"], "TCP");
    assert_eq!(
        rule["destination"]["ports"],
        serde_json::json!([80, "8000:8080", "http"])
    );
    assert_eq!(v["spec"]["ingress"][2]["protocol"], 132);
    assert_eq!(v["spec"]["egress"][2]["notICMP"]["type"], 128);
    // An empty entity rule is left out, as Calico's `omitzero` does.
    assert!(v["spec"]["egress"][1].get("source").is_none());
}

#[test]
fn policy_defaults() {
    let base =
        "apiVersion: margay.dev/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: ns}\n";
    let p = np(ok(&format!("{base}spec: {{}}")));
    assert_eq!(p.spec.tier, "default");
    assert_eq!(p.spec.selector, "all()");
    assert_eq!(p.spec.order, None);
    assert_eq!(p.spec.types, vec![PolicyType::Ingress]);

    let p = np(ok(&format!("{base}spec:\n  egress: [{{action: Allow}}]")));
    assert_eq!(p.spec.types, vec![PolicyType::Egress]);

    let p = np(ok(&format!(
        "{base}spec:\n  ingress: [{{action: Deny}}]\n  egress: [{{action: Allow}}]"
    )));
    assert_eq!(p.spec.types, vec![PolicyType::Ingress, PolicyType::Egress]);

    // Explicit types are kept, even with no rules (a default-deny policy).
    let p = np(ok(&format!("{base}spec:\n  types: [Egress]")));
    assert_eq!(p.spec.types, vec![PolicyType::Egress]);

    // An empty rule selector means "no constraint" and is not confused with all().
    let p = np(ok(&format!(
        "{base}spec:\n  ingress: [{{action: Allow, source: {{selector: '', namespaceSelector: ''}}}}]"
    )));
    assert!(p.spec.ingress[0].source.is_empty());
}

#[test]
fn global_policy_decodes_and_round_trips() {
    let d = ok(r#"
apiVersion: margay.dev/v1
kind: GlobalNetworkPolicy
metadata: {name: allow-ping}
spec:
  order: 10.5
  selector: all()
  namespaceSelector: env == 'dev'
  applyOnForward: true
  ingress:
  - action: Allow
    protocol: ICMP
    icmp: {type: 8}
    source:
      services: {name: pinger, namespace: tools}
"#);
    assert_round_trip(&d.resource);
    let p = gnp(d);
    assert!(p.spec.apply_on_forward);
    assert_eq!(p.spec.order, Some(10.5));
    assert_eq!(p.spec.namespace_selector.as_deref(), Some("env == 'dev'"));
}

#[test]
fn unimplemented_dataplane_features_are_rejected() {
    let gnp = |extra: &str| {
        format!("apiVersion: margay.dev/v1\nkind: GlobalNetworkPolicy\nmetadata: {{name: p}}\nspec:\n  applyOnForward: true\n  {extra}\n")
    };
    assert_err(
        &gnp("doNotTrack: true"),
        "spec.doNotTrack",
        "doNotTrack is not supported yet",
    );
    assert_err(
        &gnp("preDNAT: true"),
        "spec.preDNAT",
        "preDNAT is not supported yet",
    );
    // false is accepted, and not printed.
    let d = ok(&gnp("doNotTrack: false"));
    assert!(d.resource.to_value()["spec"].get("doNotTrack").is_none());
}

#[test]
fn rule_validation_names_the_field() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "  - action: Allow\n    destination: {ports: [80]}\n",
            "spec.ingress[0].destination.ports",
            "protocol to TCP, UDP or SCTP",
        ),
        (
            "  - action: Allow\n    protocol: ICMP\n    source: {notPorts: [http]}\n",
            "spec.ingress[0].source.notPorts",
            "protocol to TCP, UDP or SCTP",
        ),
        (
            "  - action: Allow\n    icmp: {type: 8}\n",
            "spec.ingress[0].icmp",
            "protocol to ICMP",
        ),
        (
            "  - action: Allow\n    protocol: TCP\n    notICMP: {type: 8}\n",
            "spec.ingress[0].notICMP",
            "protocol to ICMP",
        ),
        (
            "  - action: Allow\n    protocol: ICMP\n    icmp: {code: 1}\n",
            "spec.ingress[0].icmp.code",
            "together with an ICMP type",
        ),
        (
            "  - action: Allow\n    protocol: ICMP\n    icmp: {type: 255}\n",
            "spec.ingress[0].icmp.type",
            "out of range 0-254",
        ),
        (
            "  - action: Allow\n    protocol: TCP\n    destination: {ports: [0]}\n",
            "spec.ingress[0].destination.ports[0]",
            "out of range 1-65535",
        ),
        (
            "  - action: Allow\n    protocol: TCP\n    destination: {ports: ['0:100']}\n",
            "spec.ingress[0].destination.ports[0]",
            "out of range 1-65535",
        ),
        (
            "  - action: Allow\n    source: {nets: [10.0.0.1/8]}\n",
            "spec.ingress[0].source.nets[0]",
            "did you mean 10.0.0.0/8",
        ),
        (
            "  - action: Allow\n    source: {nets: [10.0.0.0/8]}\n    destination: {notNets: ['fd00::/8']}\n",
            "spec.ingress[0].destination.notNets",
            "mix IPv4 and IPv6",
        ),
        (
            "  - action: Allow\n    ipVersion: 6\n    source: {nets: [10.0.0.0/8]}\n",
            "spec.ingress[0].source.nets",
            "ipVersion 6",
        ),
        (
            "  - action: Allow\n    ipVersion: 6\n    protocol: ICMP\n",
            "spec.ingress[0].ipVersion",
            "must be 4 with protocol ICMP",
        ),
        (
            "  - action: Allow\n    ipVersion: 4\n    notProtocol: ICMPv6\n",
            "spec.ingress[0].ipVersion",
            "must be 6 with protocol ICMPv6",
        ),
        (
            "  - action: Allow\n    ipVersion: 5\n",
            "spec.ingress[0].ipVersion",
            "not 4 or 6",
        ),
        (
            "  - action: Allow\n    source: {selector: 'app =='}\n",
            "spec.ingress[0].source.selector",
            "invalid selector",
        ),
        (
            "  - action: Allow\n    source: {selector: global()}\n",
            "spec.ingress[0].source.selector",
            "namespaceSelector",
        ),
        (
            "  - action: Allow\n    source: {namespaceSelector: global() && has(a)}\n",
            "spec.ingress[0].source.namespaceSelector",
            "cannot be combined",
        ),
        (
            "  - action: Allow\n    source: {serviceAccounts: {selector: '!!'}}\n",
            "spec.ingress[0].source.serviceAccounts.selector",
            "invalid selector",
        ),
        (
            "  - action: Allow\n    source: {services: {name: svc}, selector: a == 'b'}\n",
            "spec.ingress[0].source.services",
            "cannot be combined with selector",
        ),
        (
            "  - action: Allow\n    source: {services: {namespace: ns}}\n",
            "spec.ingress[0].source.services.name",
            "is required",
        ),
        (
            "  - action: Allow\n    destination: {services: {name: svc}}\n",
            "spec.ingress[0].destination.services",
            "not allowed in the destination of an ingress rule",
        ),
        (
            "  - action: Allow\n    metadata: {annotations: {'bad key!': x}}\n",
            "spec.ingress[0].metadata.annotations",
            "label key",
        ),
    ];
    for (rules, field, message) in cases {
        assert_err(&np_with_ingress(rules), field, message);
    }
}

#[test]
fn malformed_values_name_the_field() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "  - protocol: TCP\n",
            "spec.ingress[0]",
            "missing field `action`",
        ),
        (
            "  - action: Drop\n",
            "spec.ingress[0].action",
            "unknown variant `Drop`",
        ),
        (
            "  - action: Allow\n    protocol: tcp\n",
            "spec.ingress[0].protocol",
            "unknown protocol \"tcp\"",
        ),
        (
            "  - action: Allow\n    protocol: 0\n",
            "spec.ingress[0].protocol",
            "out of range 1-255",
        ),
        (
            "  - action: Allow\n    protocol: 256\n",
            "spec.ingress[0].protocol",
            "out of range 1-255",
        ),
        (
            "  - action: Allow\n    protocol: TCP\n    destination: {ports: ['90:80']}\n",
            "spec.ingress[0].destination.ports[0]",
            "minimum is greater than maximum",
        ),
        (
            "  - action: Allow\n    protocol: TCP\n    destination: {ports: [70000]}\n",
            "spec.ingress[0].destination.ports[0]",
            "out of range",
        ),
        (
            "  - action: Allow\n    protocol: TCP\n    destination: {ports: ['not a name']}\n",
            "spec.ingress[0].destination.ports[0]",
            "invalid port",
        ),
        (
            "  - action: Allow\n    protocol: ICMP\n    icmp: {type: 8, code: 256}\n",
            "spec.ingress[0].icmp.code",
            "256",
        ),
        (
            "  - action: Allow\n    source: {nets: [example.com]}\n",
            "spec.ingress[0].source.nets",
            "neither a CIDR nor an IP address",
        ),
    ];
    for (rules, field, message) in cases {
        assert_err(&np_with_ingress(rules), field, message);
    }
}

#[test]
fn policy_level_validation() {
    let doc = |name: &str, spec: &str| {
        format!("apiVersion: margay.dev/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: ns}}\nspec:\n{spec}")
    };
    assert_err(
        &doc("p", "  selector: app = 'x'\n"),
        "spec.selector",
        "invalid selector",
    );
    assert_err(
        &doc("p", "  selector: global()\n"),
        "spec.selector",
        "namespaceSelector",
    );
    assert_err(
        &doc("p", "  serviceAccountSelector: \"x in {\"\n"),
        "spec.serviceAccountSelector",
        "invalid selector",
    );
    assert_err(
        &doc("p", "  types: [Ingress, Ingress]\n"),
        "spec.types[1]",
        "more than once",
    );
    assert_err(
        &doc("p", "  types: [Sideways]\n"),
        "spec.types[0]",
        "unknown variant",
    );
    assert_err(
        &doc("p", "  tier: Security\n"),
        "spec.tier",
        "not a valid tier name",
    );
}

#[test]
fn tiered_policy_names_follow_calico() {
    let doc = |kind: &str, name: &str, tier: &str| {
        let ns = if kind == "NetworkPolicy" {
            ", namespace: ns"
        } else {
            ""
        };
        format!("apiVersion: margay.dev/v1\nkind: {kind}\nmetadata: {{name: {name}{ns}}}\nspec: {{tier: {tier}}}")
    };
    for kind in ["NetworkPolicy", "GlobalNetworkPolicy"] {
        ok(&doc(kind, "security.allow-dns", "security"));
        ok(&doc(kind, "allow-dns", "default"));
        ok(&doc(kind, "default.allow-dns", "default"));
        assert_err(
            &doc(kind, "allow-dns", "security"),
            "metadata.name",
            "must be named \"security.<name>\" (e.g. \"security.allow-dns\")",
        );
        assert_err(
            &doc(kind, "other.allow-dns", "security"),
            "metadata.name",
            "must be named \"security.<name>\"",
        );
        assert_err(
            &doc(kind, "security.allow-dns", "default"),
            "metadata.name",
            "but spec.tier is \"default\"",
        );
        assert_err(
            &doc(kind, "a.b.c", "a"),
            "metadata.name",
            "not a valid policy name",
        );
    }
    // Names Calico generates for converted Kubernetes policies are exempt.
    ok(&doc("NetworkPolicy", "knp.default.allow.web", "default"));
    assert_err(
        &doc("GlobalNetworkPolicy", "knp.default.allow", "default"),
        "metadata.name",
        "not a valid policy name",
    );
}

#[test]
fn global_services_need_a_namespace() {
    assert_err(
        "apiVersion: margay.dev/v1\nkind: GlobalNetworkPolicy\nmetadata: {name: p}\nspec:\n  egress:\n  - action: Allow\n    destination: {services: {name: svc}}\n",
        "spec.egress[0].destination.services.namespace",
        "required in a global policy",
    );
    assert_err(
        "apiVersion: margay.dev/v1\nkind: GlobalNetworkPolicy\nmetadata: {name: p}\nspec:\n  egress:\n  - action: Allow\n    source: {services: {name: svc, namespace: ns}}\n",
        "spec.egress[0].source.services",
        "not allowed in the source of an egress rule",
    );
}

const CALICO_POLICY: &str = r#"
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata:
  name: allow-web
  namespace: prod
  creationTimestamp: "2025-01-02T03:04:05Z"
  resourceVersion: "12345"
  uid: 0b8f2f32-7c55-4a1e-a0a6-2b2c8b3f1d40
  labels:
    projectcalico.org/tier: default
    team: web
spec:
  tier: default
  order: 500
  selector: app == 'web'
  performanceHints: [AssumeNeededOnEveryNode]
  types: [Ingress]
  ingress:
  - action: Allow
    protocol: TCP
    source: {}
    destination:
      ports: [443]
  - action: Allow
    protocol: TCP
    http:
      methods: [GET]
      paths: [{prefix: /public}]
    destination: {}
"#;

#[test]
fn calico_policy_migrates_with_warnings() {
    let d = ok(CALICO_POLICY);
    assert_eq!(d.source, Source::Calico);
    assert_eq!(
        d.warnings,
        vec![
            "ignored: NetworkPolicy allow-web: spec.performanceHints".to_owned(),
            "ignored: NetworkPolicy allow-web: spec.ingress[1].http".to_owned(),
        ]
    );
    assert_round_trip(&d.resource);
    let p = np(d);
    assert_eq!(p.metadata.namespace.as_deref(), Some("prod"));
    assert!(p.metadata.uid.is_none());
    // Calico's tier bookkeeping label is dropped; the user's labels stay.
    assert_eq!(p.metadata.labels.keys().collect::<Vec<_>>(), vec!["team"]);
    assert_eq!(p.spec.ingress.len(), 2);
    assert!(p.spec.ingress[1].destination.is_empty());
}

#[test]
fn ignored_calico_fields_are_unknown_in_margay_documents() {
    let margay = CALICO_POLICY
        .replace("projectcalico.org/v3", "margay.dev/v1")
        .replace("    projectcalico.org/tier: default\n", "");
    let e = err(&margay);
    assert_eq!(e.message, "unknown field");
    assert_eq!(e.field, "spec.performanceHints");

    let margay = margay.replace("  performanceHints: [AssumeNeededOnEveryNode]\n", "");
    let e = err(&margay);
    assert_eq!(e.message, "unknown field");
    assert!(e.field.contains("http"), "{e}");
}

#[test]
fn crd_policy_names_lose_the_default_tier_prefix() {
    let d = ok(r#"
apiVersion: crd.projectcalico.org/v1
kind: GlobalNetworkPolicy
metadata:
  name: default.deny-all
  labels: {projectcalico.org/tier: default}
spec:
  selector: all()
  types: [Ingress, Egress]
"#);
    assert!(d.warnings.is_empty());
    let p = gnp(d);
    assert_eq!(p.metadata.name, "deny-all");
    assert!(p.metadata.labels.is_empty());
    assert_eq!(p.spec.tier, "default");

    // In another tier the prefix is the tier and part of the name.
    let d = ok(r#"
apiVersion: crd.projectcalico.org/v1
kind: NetworkPolicy
metadata: {name: security.deny-all, namespace: ns}
spec: {tier: security}
"#);
    assert_eq!(np(d).metadata.name, "security.deny-all");
}

#[test]
fn tiers() {
    let tier = |name: &str, spec: &str| {
        ok(&format!(
            "apiVersion: margay.dev/v1\nkind: Tier\nmetadata: {{name: {name}}}\nspec: {spec}"
        ))
    };
    let t = Tier::try_from(tier("security", "{order: 100}").resource).unwrap();
    assert_eq!(t.spec.order, Some(100.0));
    assert_eq!(t.spec.default_action, Some(TierDefaultAction::Deny));

    let d = tier("platform", "{defaultAction: Pass}");
    assert_round_trip(&d.resource);
    let t = Tier::try_from(d.resource).unwrap();
    assert_eq!(t.default_action(), TierDefaultAction::Pass);
    assert_eq!(t.spec.order, None);

    // Built-in tiers get Calico's fixed order and action.
    let t = Tier::try_from(tier("kube-admin", "{}").resource).unwrap();
    assert_eq!(t.spec.order, Some(1000.0));
    assert_eq!(t.default_action(), TierDefaultAction::Pass);
    let t = Tier::try_from(tier("default", "{}").resource).unwrap();
    assert_eq!(t.spec.order, Some(1_000_000.0));

    let doc = |name: &str, spec: &str| {
        format!("apiVersion: margay.dev/v1\nkind: Tier\nmetadata: {{name: {name}}}\nspec: {spec}")
    };
    assert_err(
        &doc("default", "{order: 5}"),
        "spec.order",
        "must have order 1000000",
    );
    assert_err(
        &doc("kube-baseline", "{defaultAction: Deny}"),
        "spec.defaultAction",
        "must have defaultAction Pass",
    );
    assert_err(
        &doc("sec.urity", "{}"),
        "metadata.name",
        "not a valid tier name",
    );
    assert_err(
        &doc("security", "{defaultAction: Allow}"),
        "spec.defaultAction",
        "unknown variant `Allow`",
    );
}

#[test]
fn calico_profile_migrates() {
    let d = ok(r#"
apiVersion: projectcalico.org/v3
kind: Profile
metadata:
  name: kns.default
  resourceVersion: "1"
spec:
  ingress:
  - action: Allow
    destination: {}
    source: {}
  - action: Allow
    http: {methods: [GET]}
  egress:
  - action: Allow
    destination: {}
    source: {}
  labelsToApply:
    pcns.projectcalico.org/name: default
"#);
    assert_eq!(
        d.warnings,
        vec!["ignored: Profile kns.default: spec.ingress[1].http".to_owned()]
    );
    assert_round_trip(&d.resource);
    let p = Profile::try_from(d.resource).unwrap();
    assert_eq!(p.spec.ingress[0].action, Action::Allow);
    assert_eq!(
        p.spec
            .labels_to_apply
            .get("pcns.projectcalico.org/name")
            .map(String::as_str),
        Some("default")
    );

    assert_err(
        "apiVersion: margay.dev/v1\nkind: Profile\nmetadata: {name: p}\nspec:\n  labelsToApply: {'-bad': x}\n",
        "spec.labelsToApply.-bad",
        "label key",
    );
}

#[test]
fn network_sets() {
    let d = ok(r#"
apiVersion: projectcalico.org/v3
kind: GlobalNetworkSet
metadata:
  name: blocked
  labels: {role: blocked}
spec:
  nets: [198.51.100.0/28, 203.0.113.9, "2001:db8::1/64"]
  allowedEgressDomains: [example.com]
"#);
    assert_eq!(
        d.warnings,
        vec!["ignored: GlobalNetworkSet blocked: spec.allowedEgressDomains".to_owned()]
    );
    assert_round_trip(&d.resource);
    let s = GlobalNetworkSet::try_from(d.resource).unwrap();
    let nets: Vec<String> = s.spec.nets.iter().map(ToString::to_string).collect();
    // Calico accepts host bits in set CIDRs; they are masked off.
    assert_eq!(nets, ["198.51.100.0/28", "203.0.113.9/32", "2001:db8::/64"]);
    assert!(s.spec.contains("203.0.113.9".parse().unwrap()));

    let d = ok("apiVersion: margay.dev/v1\nkind: NetworkSet\nmetadata: {name: s, namespace: ns}\n");
    assert!(NetworkSet::try_from(d.resource)
        .unwrap()
        .spec
        .nets
        .is_empty());

    let e = err("apiVersion: margay.dev/v1\nkind: NetworkSet\nmetadata: {name: s, namespace: ns}\nspec: {allowedEgressDomains: [a.com]}\n");
    assert_eq!(
        (e.field.as_str(), e.message.as_str()),
        ("spec.allowedEgressDomains", "unknown field")
    );
    assert_err(
        "apiVersion: margay.dev/v1\nkind: NetworkSet\nmetadata: {name: s, namespace: ns, labels: {projectcalico.org/namespace: x}}\n",
        "metadata.labels.projectcalico.org/namespace",
        "reserved",
    );
    assert_err(
        "apiVersion: margay.dev/v1\nkind: NetworkSet\nmetadata: {name: s}\n",
        "metadata.namespace",
        "required",
    );
}

#[test]
fn ports_parse_and_print_as_calico() {
    let cases = [
        ("80", Port::Number(80), "80"),
        ("80:90", Port::Range(80, 90), "80:90"),
        ("80:80", Port::Number(80), "80"),
        ("http-alt", Port::Named("http-alt".into()), "http-alt"),
        ("my_port.v1", Port::Named("my_port.v1".into()), "my_port.v1"),
    ];
    for (text, port, printed) in cases {
        assert_eq!(text.parse::<Port>(), Ok(port.clone()));
        assert_eq!(port.to_string(), printed);
    }
    for bad in ["", "65536", "1:2:3", "90:80", "a b", "-1:5", "*"] {
        assert!(bad.parse::<Port>().is_err(), "{bad:?} should not parse");
    }
    assert!(Port::Range(80, 90).contains(85));
    assert!(!Port::Named("http".into()).contains(80));
    assert_eq!(
        serde_json::to_value(Port::Number(53)).unwrap(),
        serde_json::json!(53)
    );
    assert_eq!(
        serde_json::from_value::<Port>(serde_json::json!("1000:2000")).unwrap(),
        Port::Range(1000, 2000)
    );
}

#[test]
fn protocols_parse_and_print_as_calico() {
    for (text, proto, number) in [
        ("TCP", Protocol::Tcp, 6),
        ("UDP", Protocol::Udp, 17),
        ("ICMP", Protocol::Icmp, 1),
        ("ICMPv6", Protocol::IcmpV6, 58),
        ("SCTP", Protocol::Sctp, 132),
        ("UDPLite", Protocol::UdpLite, 136),
        ("47", Protocol::Number(47), 47),
    ] {
        assert_eq!(text.parse::<Protocol>(), Ok(proto));
        assert_eq!(proto.to_string(), text);
        assert_eq!(proto.number(), number);
    }
    assert!(Protocol::Number(17).supports_ports());
    assert!(!Protocol::Icmp.supports_ports());
    assert!(Protocol::Number(58).is_icmpv6());
    assert_eq!(
        serde_json::to_value(Protocol::Number(47)).unwrap(),
        serde_json::json!(47)
    );
    assert_eq!(
        serde_json::to_value(Protocol::IcmpV6).unwrap(),
        serde_json::json!("ICMPv6")
    );
    for bad in ["tcp", "any", "0", "256", ""] {
        assert!(bad.parse::<Protocol>().is_err(), "{bad:?} should not parse");
    }
}
