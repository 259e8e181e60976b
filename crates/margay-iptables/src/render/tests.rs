use std::collections::{BTreeMap, BTreeSet};

use margay_api::PolicyType;
use margay_policy::program::{IpSet, LocalEndpoint, PolicyChain, ProfileChain, TierStage};
use margay_policy::PolicyKind;
use margay_testkit::program::{net, no_matches, rule};

use super::*;

/// The rules of a rendering, as `-A` lines without their hash comments.
fn lines(spec: &Spec) -> String {
    spec.text(None, "c")
}

/// Each rendering of `m` in `family`: the rules before (as text) and the rule itself.
fn rendered(m: &Matches, family: Family) -> Vec<(Vec<String>, String)> {
    matches(m, family)
        .into_iter()
        .map(|r| {
            (
                r.before.iter().map(|(s, _)| lines(s)).collect(),
                lines(&r.spec),
            )
        })
        .collect()
}

/// One endpoint `mgya` (x/a) whose ingress goes through policy `pi-1` in tier `t`, then
/// profile `pri-p`.
fn program(policy: Vec<ProgramRule>, profile: Vec<ProgramRule>) -> Program {
    let ingress = Pipeline {
        tiers: vec![TierStage {
            tier: "t".into(),
            default_action: TierDefaultAction::Pass,
            policies: vec!["pi-1".into()],
            group: None,
        }],
        profiles: vec!["pri-p".into()],
    };
    Program {
        endpoints: BTreeMap::from([(
            "mgya".to_owned(),
            LocalEndpoint {
                id: "x/a".into(),
                ips: vec!["10.0.0.1".parse().unwrap(), "fd00::a".parse().unwrap()],
                ingress,
                egress: Pipeline {
                    tiers: Vec::new(),
                    profiles: Vec::new(),
                },
            },
        )]),
        policies: BTreeMap::from([(
            "pi-1".to_owned(),
            PolicyChain {
                tier: "t".into(),
                policy: PolicyRef {
                    kind: PolicyKind::NetworkPolicy,
                    namespace: Some("x".into()),
                    name: "t.p".into(),
                },
                direction: PolicyType::Ingress,
                rules: policy,
            },
        )]),
        groups: BTreeMap::new(),
        profiles: BTreeMap::from([(
            "pri-p".to_owned(),
            ProfileChain {
                profile: "p".into(),
                direction: PolicyType::Ingress,
                rules: profile,
            },
        )]),
        ip_sets: BTreeMap::from([(
            "s-1".to_owned(),
            IpSet {
                selector: "all()".into(),
                members: BTreeSet::from([net("10.0.0.0/0"), net("fd00::1/128")]),
            },
        )]),
        port_sets: BTreeMap::new(),
        ..Program::empty("n")
    }
}

/// A chain's rules without hash comments.
fn chain(r: &Rendered, name: &str) -> Vec<String> {
    r.chain(name)
        .unwrap_or_else(|| panic!("no chain {name}"))
        .rules
        .iter()
        .map(|rule| {
            let hash = hash_comment(rule.hash.as_deref().unwrap());
            rule.spec.replace(&format!("{hash} "), "")
        })
        .collect()
}

#[test]
fn names_fit_the_kernel_limits_and_keep_their_kind() {
    assert_eq!(chain_name("pri-kns.x"), "mgy-pri-kns.x");
    let long = chain_name("pri-kns.a-namespace-with-a-long-name");
    assert_eq!(long.len(), MAX_CHAIN);
    assert!(long.starts_with("mgy-pri-_"), "{long}");
    assert_ne!(long, chain_name("pri-kns.a-namespace-with-a-long-namf"));
    assert_eq!(set_name(Family::V6, "s-0123"), "mgy60s-0123");
    let long = set_name(Family::V4, &format!("np-{}", "a".repeat(40)));
    assert_eq!(long.len(), MAX_SET);
    assert!(long.starts_with("mgy40np-_"), "{long}");
}

#[test]
fn arguments_are_written_as_iptables_save_writes_them() {
    assert_eq!(save_string("plain-word_1"), "plain-word_1");
    assert_eq!(save_string("two words"), "\"two words\"");
    assert_eq!(
        save_string("Calico's \"x\" a\\b"),
        r#""Calico\'s \"x\" a\\b""#
    );
    assert_eq!(sanitized("a\nb", 10), "a b");
    assert_eq!(sanitized("ééé", 5), "éé");
}

#[test]
fn ports_are_merged_and_split_in_lists_of_15_slots() {
    assert_eq!(multiport_lists(&[(80, 80)]), ["80"]);
    assert_eq!(
        multiport_lists(&[(2000, 2100), (22, 22), (81, 81), (80, 80)]),
        ["22,80:81,2000:2100"]
    );
    let many: Vec<(u16, u16)> = (1..=20).map(|p| (p * 10, p * 10)).collect();
    let lists = multiport_lists(&many);
    assert_eq!(lists.len(), 2);
    assert_eq!(lists[0].split(',').count(), 15);
    // A range takes two slots: 14 singles and a range do not fit in one list.
    let mut mixed: Vec<(u16, u16)> = (1..=14).map(|p| (p * 10, p * 10)).collect();
    mixed.push((1000, 2000));
    assert_eq!(multiport_lists(&mixed).len(), 2);
}

#[test]
fn rules_of_another_family_are_left_out() {
    let mut m = no_matches();
    m.ip_version = Some(6);
    assert!(rendered(&m, Family::V4).is_empty());
    assert_eq!(rendered(&m, Family::V6).len(), 1);

    let mut m = no_matches();
    m.destination.nets = vec![net("fd00::/64")];
    assert!(rendered(&m, Family::V4).is_empty());
    assert_eq!(
        rendered(&m, Family::V6)[0].1,
        "-d fd00::/64 -m comment --comment c"
    );

    let mut m = no_matches();
    m.protocol = Some(1);
    assert!(rendered(&m, Family::V6).is_empty(), "ICMP is IPv4's");
    m.protocol = Some(58);
    assert!(rendered(&m, Family::V4).is_empty(), "ICMPv6 is IPv6's");
    assert_eq!(
        rendered(&m, Family::V6)[0].1,
        "-p ipv6-icmp -m comment --comment c"
    );
}

#[test]
fn icmp_matches_use_each_familys_module() {
    let mut m = no_matches();
    m.protocol = Some(1);
    m.icmp = Some(IcmpFields {
        icmp_type: Some(8),
        code: Some(0),
    });
    m.not_icmp = Some(IcmpFields {
        icmp_type: Some(3),
        code: None,
    });
    assert_eq!(
        rendered(&m, Family::V4)[0].1,
        "-p icmp -m comment --comment c -m icmp --icmp-type 8/0 -m icmp ! --icmp-type 3"
    );
    m.protocol = Some(58);
    m.not_icmp = None;
    assert_eq!(
        rendered(&m, Family::V6)[0].1,
        "-p ipv6-icmp -m comment --comment c -m icmp6 --icmpv6-type 8/0"
    );
    // A code alone cannot be matched (and the API refuses it).
    m.icmp = Some(IcmpFields {
        icmp_type: None,
        code: Some(1),
    });
    assert!(rendered(&m, Family::V6).is_empty());
    // ICMP fields on another protocol never match.
    m.protocol = Some(6);
    assert!(rendered(&m, Family::V4).is_empty());
}

#[test]
fn protocols_and_ports() {
    let mut m = no_matches();
    m.not_protocol = Some(17);
    assert_eq!(
        rendered(&m, Family::V4)[0].1,
        "! -p udp -m comment --comment c"
    );
    // Numeric ports need a protocol in iptables: one rule per protocol with ports.
    m.destination.ports = vec![PortMatch::Number(80)];
    let copies: Vec<String> = rendered(&m, Family::V4).into_iter().map(|r| r.1).collect();
    assert_eq!(
        copies,
        [
            "-p tcp -m comment --comment c -m multiport --dports 80",
            "-p sctp -m comment --comment c -m multiport --dports 80",
        ]
    );
    m.protocol = Some(17);
    assert!(rendered(&m, Family::V4).is_empty(), "UDP and not UDP");
    m.protocol = Some(6);
    m.not_protocol = None;
    m.source.not_ports = vec![PortMatch::Range(1, 1023), PortMatch::Named("np-1".into())];
    assert_eq!(
        rendered(&m, Family::V4)[0].1,
        "-p tcp -m comment --comment c -m multiport ! --sports 1:1023 \
         -m set ! --match-set mgy40np-1 src,src -m multiport --dports 80"
    );
}

#[test]
fn what_one_rule_cannot_say_goes_through_the_scratch_marks() {
    let mut m = no_matches();
    m.protocol = Some(6);
    m.source.nets = vec![net("10.0.0.0/8"), net("192.168.0.0/16")];
    m.destination.nets = vec![net("10.1.0.0/16")];
    m.destination.not_nets = vec![net("10.1.2.0/24"), net("10.1.4.0/24")];
    m.destination.ports = vec![PortMatch::Number(80), PortMatch::Named("np-1".into())];
    let [(before, rule)] = rendered(&m, Family::V4).try_into().unwrap();
    assert_eq!(
        before,
        [
            "-m comment --comment c -j MARK --set-xmark 0x80000/0x180000",
            // Source nets: one of them.
            "-s 10.0.0.0/8 -p tcp -m comment --comment c -j MARK --set-xmark 0x100000/0x100000",
            "-s 192.168.0.0/16 -p tcp -m comment --comment c -j MARK --set-xmark 0x100000/0x100000",
            "-m comment --comment c -m mark --mark 0x0/0x100000 -j MARK --set-xmark 0x0/0x80000",
            // Not destination nets: none of them.
            "-d 10.1.2.0/24 -p tcp -m comment --comment c -j MARK --set-xmark 0x0/0x80000",
            "-d 10.1.4.0/24 -p tcp -m comment --comment c -j MARK --set-xmark 0x0/0x80000",
            // Destination ports: a number or a named port.
            "-m comment --comment c -j MARK --set-xmark 0x0/0x100000",
            "-p tcp -m comment --comment c -m multiport --dports 80 -j MARK --set-xmark 0x100000/0x100000",
            "-p tcp -m comment --comment c -m set --match-set mgy40np-1 dst,dst -j MARK --set-xmark 0x100000/0x100000",
            "-m comment --comment c -m mark --mark 0x0/0x100000 -j MARK --set-xmark 0x0/0x80000",
        ]
    );
    assert_eq!(
        rule,
        "-d 10.1.0.0/16 -p tcp -m comment --comment c -m mark --mark 0x80000/0x80000"
    );
    // One net in and one out fit in one rule when on different ends.
    let mut m = no_matches();
    m.source.not_nets = vec![net("10.1.2.0/24")];
    m.destination.nets = vec![net("10.0.0.0/8"), net("0.0.0.0/0")];
    assert_eq!(
        rendered(&m, Family::V4),
        [(
            Vec::new(),
            "! -s 10.1.2.0/24 -m comment --comment c".to_owned()
        )]
    );
    // Outside of every address: never.
    m.destination.not_nets = vec![net("0.0.0.0/0")];
    assert!(rendered(&m, Family::V4).is_empty());
}

#[test]
fn log_prefixes_fit_in_29_characters() {
    assert_eq!(log_prefix("t/x/p", "mgy-pi-1", 3), "mgy t/x/p/3 ");
    let prefix = log_prefix("platform/x/platform.monitor", "mgy-pi-dcf9db903f144a7b", 12);
    assert_eq!(prefix, "mgy pi-dcf9db903f144a7b/12 ");
    let prefix = log_prefix(&"p".repeat(40), "mgy-pri-_0123456789abcdef012", 7);
    assert_eq!(prefix.len(), MAX_LOG_PREFIX);
    assert_eq!(prefix, "mgy pri-_0123456789abcdef0/7 ");
}

#[test]
fn pipelines_and_actions() {
    let r = render(
        &program(
            vec![
                rule(0, Action::Log, no_matches()),
                rule(1, Action::Deny, no_matches()),
            ],
            vec![
                rule(0, Action::Pass, no_matches()),
                rule(1, Action::Allow, no_matches()),
            ],
        ),
        Family::V4,
    );
    assert_eq!(
        chain(&r, "mgy-tw-mgya"),
        [
            "-m comment --comment \"x/a ingress: replies and related traffic of allowed connections\" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
            "-m comment --comment \"x/a ingress: conntrack invalid\" -m conntrack --ctstate INVALID -j DROP",
            "-m comment --comment \"x/a ingress: clear the accept and pass marks\" -j MARK --set-xmark 0x0/0x30000",
            "-m comment --comment \"Start of tier t\" -j MARK --set-xmark 0x0/0x20000",
            "-m comment --comment \"tier t policy x/t.p\" -m mark --mark 0x0/0x20000 -j mgy-pi-1",
            "-m comment --comment \"Return if policy accepted\" -m mark --mark 0x10000/0x10000 -j RETURN",
            // Default action Pass: no drop at the end of the tier.
            "-m comment --comment \"profile p\" -j mgy-pri-p",
            "-m comment --comment \"Return if profile accepted\" -m mark --mark 0x10000/0x10000 -j RETURN",
            "-m comment --comment \"Drop if no profiles matched\" -j DROP",
        ]
    );
    assert_eq!(
        chain(&r, "mgy-pi-1"),
        [
            "-m comment --comment \"rule 0\" -j LOG --log-prefix \"mgy t/x/t.p/0 \"",
            "-m comment --comment \"rule 1\" -j DROP",
        ]
    );
    // A pass mark a tier left must not end the profile at its Pass rule's return.
    assert_eq!(
        chain(&r, "mgy-pri-p"),
        [
            "-m comment --comment \"profile p: clear the pass mark\" -j MARK --set-xmark 0x0/0x20000",
            "-m comment --comment \"rule 0\" -j MARK --set-xmark 0x20000/0x20000",
            "-m comment --comment \"rule 0: return\" -m mark --mark 0x20000/0x20000 -j RETURN",
            "-m comment --comment \"rule 1\" -j MARK --set-xmark 0x10000/0x10000",
            "-m comment --comment \"rule 1: return\" -m mark --mark 0x10000/0x10000 -j RETURN",
        ]
    );
    // No tier, no profile: the egress side drops everything new.
    let fw = chain(&r, "mgy-fw-mgya");
    assert_eq!(fw.len(), 4);
    assert_eq!(
        fw[3],
        "-m comment --comment \"Drop if no profiles matched\" -j DROP"
    );
    // hash:net cannot hold a /0: its halves.
    let all: Vec<&str> = r.sets["mgy40s-1"]
        .members
        .iter()
        .map(String::as_str)
        .collect();
    assert_eq!(all, ["0.0.0.0/1", "128.0.0.0/1"]);
    let v6 = render(&program(Vec::new(), Vec::new()), Family::V6);
    let all: Vec<&str> = v6.sets["mgy60s-1"]
        .members
        .iter()
        .map(String::as_str)
        .collect();
    assert_eq!(all, ["fd00::1"]);
}

#[test]
fn interfaces_outside_the_prefix_are_dispatched_too() {
    let mut p = program(Vec::new(), Vec::new());
    let ep = p.endpoints.remove("mgya").unwrap();
    p.endpoints.insert("cali0123".into(), ep);
    let r = render(&p, Family::V4);
    let forward = chain(&r, "mgy-FORWARD");
    assert!(
        forward.iter().any(|l| l.starts_with("-i mgy+ ")),
        "{forward:?}"
    );
    assert!(
        forward.iter().any(|l| l.starts_with("-i cali0123 ")),
        "{forward:?}"
    );
    assert!(
        forward.iter().any(|l| l.starts_with("-o cali0123 ")),
        "{forward:?}"
    );
    let dispatch = chain(&r, "mgy-from-wl-dispatch");
    assert_eq!(
        dispatch,
        [
            "-i cali0123 -m comment --comment \"x/a egress\" -g mgy-fw-cali0123",
            "-i mgy+ -m comment --comment \"Unknown interface\" -j DROP",
        ]
    );
}

#[test]
fn every_rule_is_hashed_after_the_one_before() {
    let a = render(
        &program(vec![rule(0, Action::Deny, no_matches())], Vec::new()),
        Family::V4,
    );
    let b = render(
        &program(
            vec![
                rule(0, Action::Log, no_matches()),
                rule(1, Action::Deny, no_matches()),
            ],
            Vec::new(),
        ),
        Family::V4,
    );
    let hashes = |r: &Rendered| -> Vec<String> {
        r.chain("mgy-pi-1")
            .unwrap()
            .rules
            .iter()
            .map(|rule| rule.hash.clone().unwrap())
            .collect()
    };
    // The same Deny rule after a Log rule is another rule at another place.
    assert_ne!(hashes(&a)[0], hashes(&b)[1]);
    assert_eq!(a.chain("mgy-tw-mgya"), b.chain("mgy-tw-mgya"));
    for chain in &a.chains {
        assert!(chain.name.len() <= MAX_CHAIN, "{}", chain.name);
        for rule in &chain.rules {
            let hash = rule.hash.as_deref().unwrap();
            assert!(rule.spec.contains(&hash_comment(hash)), "{}", rule.spec);
        }
    }
}

/// The golden node1 program, and programs that differ from it as changes make them differ:
/// members only, a policy added or removed, a local endpoint added or removed, a tier's
/// default action, another node, a policy renamed under its id (by hand), a rule moved to
/// IPv6 only (by hand), the host endpoint gone, its forwarded traffic's policy gone.
fn changed_programs() -> Vec<(&'static str, Program)> {
    use margay_policy::program::program;
    use margay_testkit::fixture::{self, golden_yaml};

    let node1 = |yaml: &str| program(&fixture::cluster(yaml), "node1");
    let without = |marker: &str| {
        let yaml = golden_yaml();
        let docs: Vec<&str> = yaml
            .split("\n---\n")
            .filter(|d| !d.contains(marker))
            .collect();
        node1(&docs.join("\n---\n"))
    };
    let base = fixture::golden_node1();
    let mut renamed = base.clone();
    renamed.policies.values_mut().next().unwrap().policy.name = "renamed".into();
    let mut v6 = base.clone();
    for chain in v6.policies.values_mut() {
        for rule in &mut chain.rules {
            if rule.action == Action::Allow && rule.matches.ip_version.is_none() {
                rule.matches.ip_version = Some(6);
            }
        }
    }
    let moved = golden_yaml()
        .replace("\"10.1.1.1/32\"", "\"10.1.1.10/32\"")
        .replace("198.51.100.0/25", "198.51.100.0/24")
        + fixture::POD_D_ON_NODE2;
    let more = golden_yaml()
        + "---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: more}
spec:
  selector: pod == 'b'
  ingress: [{action: Allow, source: {selector: pod == 'c'}}]
";
    let new_pod = golden_yaml()
        + "---
apiVersion: margay.dev/v1
kind: WorkloadEndpoint
metadata: {name: node1-k8s-e-eth0, namespace: x, labels: {pod: e, app: web}}
spec: {orchestrator: k8s, node: node1, pod: e, endpoint: eth0, interfaceName: mgy000000000e,
       ipNetworks: [10.1.0.5/32], profiles: [kns.x]}
";
    vec![
        ("golden", base),
        ("node2", program(&fixture::golden_cluster(), "node2")),
        ("members moved", node1(&moved)),
        ("policy added", node1(&more)),
        (
            "policy removed",
            without("kind: NetworkPolicy\nmetadata:\n  name: web"),
        ),
        (
            "endpoint removed",
            without("name: node1-k8s-b-eth0\n  namespace: x"),
        ),
        ("endpoint added", node1(&new_pod)),
        (
            "tier denies",
            node1(&golden_yaml().replace("defaultAction: Pass", "defaultAction: Deny")),
        ),
        ("renamed", renamed),
        ("allow rules IPv6 only", v6),
        ("host endpoint gone", without("name: node1-eth0\n")),
        ("forwarding open", without("name: node1-forward\n")),
    ]
}

#[test]
fn a_rendering_updated_from_the_last_is_the_fresh_rendering() {
    let programs = changed_programs();
    for family in [Family::V4, Family::V6] {
        for (a, old) in &programs {
            let rendered = render(old, family);
            for (b, new) in &programs {
                let updated = render_update(old, &rendered, new);
                assert!(updated == render(new, family), "{a} → {b} ({family:?})");
                // And on again, from the updated rendering.
                let (c, next) = &programs[0];
                assert!(
                    render_update(new, &updated, next) == render(next, family),
                    "{a} → {b} → {c} ({family:?})"
                );
            }
        }
    }
}

#[test]
fn an_update_renders_only_what_changed() {
    let programs: BTreeMap<&str, Program> = changed_programs().into_iter().collect();
    let base = &programs["golden"];
    let rendered = render(base, Family::V4);
    let updated = render_update(base, &rendered, &programs["policy added"]);
    let rewritten: Vec<&str> = updated
        .chains
        .iter()
        .filter(|c| rendered.chain(&c.name) != Some(*c))
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(
        rewritten,
        [
            "mgy-tw-mgy08041ab898a",
            "mgy-tw-mgy665e9bb24dc",
            // The two endpoints' new policy lists: one group chain each.
            "mgy-gi-a693c9496ae0bfad",
            "mgy-gi-ff3a00b8633c5e16",
            "mgy-pi-661d18b982953544"
        ]
    );
}
