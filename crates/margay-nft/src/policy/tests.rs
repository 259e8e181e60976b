use std::collections::{BTreeMap, BTreeSet};

use margay_api::PolicyType;
use margay_policy::program::{IpSet, LocalEndpoint, PolicyChain, TierStage};
use margay_policy::PolicyKind;
use margay_testkit::program::{net, no_matches, rule};

use super::*;

/// One endpoint `mgya` (x/a) whose ingress goes through one policy `pi-1` in tier `t`
/// (default action `default_action`) holding `rules`, then profile-less; sets as given.
fn one_policy(
    rules: Vec<ProgramRule>,
    default_action: TierDefaultAction,
    ip_sets: BTreeMap<String, IpSet>,
) -> Program {
    let pipeline = |policies: Vec<String>| Pipeline {
        tiers: policies
            .into_iter()
            .map(|p| TierStage {
                tier: "t".into(),
                default_action,
                policies: vec![p],
                group: None,
            })
            .collect(),
        profiles: Vec::new(),
    };
    Program {
        endpoints: BTreeMap::from([(
            "mgya".to_owned(),
            LocalEndpoint {
                id: "x/a".into(),
                ips: vec!["10.0.0.1".parse().unwrap()],
                ingress: pipeline(vec!["pi-1".into()]),
                egress: pipeline(Vec::new()),
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
                rules,
            },
        )]),
        groups: BTreeMap::new(),
        profiles: BTreeMap::new(),
        ip_sets,
        port_sets: BTreeMap::new(),
        ..Program::empty("n")
    }
}

/// The statements of chain `name` in `family`'s rendering.
fn chain(program: &Program, family: AddressFamily, name: &str) -> Vec<String> {
    table(program, family)
        .chains
        .into_iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no chain {name}"))
        .rules
        .into_iter()
        .map(|r| r.statement)
        .collect()
}

fn statements(m: &Matches, family: AddressFamily) -> Option<(Vec<String>, String)> {
    matches(m, family).map(|r| {
        (
            r.before.into_iter().map(|(s, _)| s).collect(),
            r.conditions.join(" "),
        )
    })
}

#[test]
fn literals_are_sorted_merged_and_braced_only_when_several() {
    assert_eq!(ports_literal(&[(80, 80)]), "80");
    assert_eq!(ports_literal(&[(1000, 2000)]), "1000-2000");
    assert_eq!(
        ports_literal(&[(90, 95), (80, 80), (81, 85), (94, 100), (443, 443)]),
        "{ 80-85, 90-100, 443 }"
    );
    assert_eq!(ports_literal(&[(65535, 65535), (0, 65534)]), "0-65535");
    assert_eq!(nets_literal(&[net("10.0.0.0/8")]), "10.0.0.0/8");
    assert_eq!(
        nets_literal(&[net("10.1.0.0/16"), net("10.0.0.0/8"), net("192.0.2.7/32")]),
        "{ 10.0.0.0/8, 192.0.2.7 }"
    );
    assert_eq!(nets_literal(&[net("fd00::1/128")]), "fd00::1");
}

#[test]
fn rules_of_another_family_are_left_out() {
    let v4 = AddressFamily::Ipv4;
    let v6 = AddressFamily::Ipv6;
    let mut m = no_matches();
    m.ip_version = Some(6);
    assert!(statements(&m, v4).is_none());
    assert_eq!(statements(&m, v6), Some((vec![], String::new())));

    let mut m = no_matches();
    m.destination.nets = vec![net("fd00::/64")];
    assert!(
        statements(&m, v4).is_none(),
        "CIDRs of the other family only"
    );
    assert_eq!(statements(&m, v6).unwrap().1, "ip6 daddr fd00::/64");

    // A notNets of the other family constrains nothing.
    let mut m = no_matches();
    m.source.not_nets = vec![net("fd00::/64"), net("10.0.0.0/8")];
    assert_eq!(statements(&m, v4).unwrap().1, "ip saddr != 10.0.0.0/8");
    assert_eq!(statements(&m, v6).unwrap().1, "ip6 saddr != fd00::/64");

    let mut m = no_matches();
    m.protocol = Some(1);
    assert_eq!(statements(&m, v4).unwrap().1, "meta l4proto 1");
    assert!(statements(&m, v6).is_none(), "ICMP is IPv4's");
    m.protocol = Some(58);
    assert!(statements(&m, v4).is_none(), "ICMPv6 is IPv6's");
}

#[test]
fn icmp_matches_use_the_protocols_keyword() {
    let fields = |t, c| IcmpFields {
        icmp_type: t,
        code: c,
    };
    let mut m = no_matches();
    m.protocol = Some(1);
    m.icmp = Some(fields(Some(8), Some(0)));
    assert_eq!(
        statements(&m, AddressFamily::Ipv4).unwrap().1,
        "meta l4proto 1 icmp type 8 icmp code 0"
    );
    m.icmp = None;
    m.not_icmp = Some(fields(Some(8), Some(0)));
    assert_eq!(
        statements(&m, AddressFamily::Ipv4).unwrap().1,
        "meta l4proto 1 icmp type . icmp code != { 8 . 0 }"
    );
    m.protocol = Some(58);
    m.not_icmp = Some(fields(Some(128), None));
    assert_eq!(
        statements(&m, AddressFamily::Ipv6).unwrap().1,
        "meta l4proto 58 icmpv6 type != 128"
    );
    // ICMP fields with another protocol can never match (Calico refuses them).
    m.protocol = Some(6);
    assert!(statements(&m, AddressFamily::Ipv4).is_none());
    assert!(statements(&m, AddressFamily::Ipv6).is_none());
}

#[test]
fn alternative_ports_go_through_a_scratch_mark() {
    let mut m = no_matches();
    m.protocol = Some(6);
    m.source.ports = vec![PortMatch::Number(53), PortMatch::Named("np-s".into())];
    m.destination.ports = vec![PortMatch::Range(80, 81)];
    m.destination.not_ports = vec![PortMatch::Number(81), PortMatch::Named("np-d".into())];
    let (before, conditions) = statements(&m, AddressFamily::Ipv4).unwrap();
    assert_eq!(
        before,
        [
            "counter meta mark set meta mark & 0xfff7ffff",
            "th sport 53 counter meta mark set meta mark | 0x00080000",
            "ip saddr . meta l4proto . th sport @np-s counter meta mark set meta mark | 0x00080000",
        ]
    );
    assert_eq!(
        conditions,
        "meta l4proto 6 meta mark & 0x00080000 == 0x00080000 th dport 80-81 \
         th dport != 81 ip daddr . meta l4proto . th dport != @np-d"
    );
}

#[test]
fn actions_become_marks_drops_and_logs() {
    let mut long = no_matches();
    long.protocol = Some(17);
    let program = one_policy(
        vec![
            rule(0, Action::Log, long),
            rule(1, Action::Pass, no_matches()),
            rule(2, Action::Deny, no_matches()),
            rule(3, Action::Allow, no_matches()),
        ],
        TierDefaultAction::Deny,
        BTreeMap::new(),
    );
    assert_eq!(
        chain(&program, AddressFamily::Ipv4, "pi-1"),
        [
            "meta l4proto 17 counter log prefix \"mgy t/x/t.p/0 \"",
            "counter meta mark set meta mark | 0x00020000 return",
            "counter drop",
            "counter meta mark set meta mark | 0x00010000 return",
        ]
    );
    // Log prefixes fit nft's limit, whatever the names.
    let mut program = program;
    program.policies.get_mut("pi-1").unwrap().policy.name = "\"n".repeat(100);
    let log = chain(&program, AddressFamily::Ipv4, "pi-1").remove(0);
    let prefix = log.split('"').nth(1).unwrap();
    assert_eq!(prefix.len(), MAX_LOG_PREFIX);
    assert!(prefix.starts_with("mgy t/x/'n'n"), "{prefix}");
}

#[test]
fn endpoint_chains_walk_tiers_then_profiles() {
    let mut program = one_policy(Vec::new(), TierDefaultAction::Deny, BTreeMap::new());
    let tw = chain(&program, AddressFamily::Ipv4, "tw-mgya");
    assert_eq!(
        tw,
        [
            "counter meta mark set meta mark & 0xfffcffff",
            "counter meta mark set meta mark & 0xfffdffff",
            "meta mark & 0x00020000 == 0x00000000 counter jump pi-1",
            "meta mark & 0x00010000 == 0x00010000 counter return",
            "meta mark & 0x00020000 == 0x00000000 counter drop",
            "counter drop",
        ]
    );
    // A Pass tier has no drop at its end; egress without policies or profiles drops.
    program.endpoints.get_mut("mgya").unwrap().ingress.tiers[0].default_action =
        TierDefaultAction::Pass;
    let tw = chain(&program, AddressFamily::Ipv4, "tw-mgya");
    assert_eq!(tw.len(), 5);
    assert!(!tw[4].contains("0x00020000"), "{tw:?}");
    assert_eq!(
        chain(&program, AddressFamily::Ipv4, "fw-mgya"),
        [
            "counter meta mark set meta mark & 0xfffcffff",
            "counter drop"
        ]
    );
}

#[test]
fn an_empty_program_still_drops_unknown_workloads() {
    let program = Program::empty("n");
    let script = render(&program, AddressFamily::Ipv6);
    assert!(script.starts_with(
        "table ip6 margay-policy {}\ndelete table ip6 margay-policy\ntable ip6 margay-policy {\n"
    ));
    assert!(script.contains("\tmap from-wl {\n\t\ttype ifname : verdict\n\t}\n"));
    assert!(script.contains("iifname \"mgy*\" counter drop"));
    assert!(script.contains("oifname \"mgy*\" counter drop"));
}

#[test]
fn members_change_in_place_and_rules_are_compared() {
    let mut m = no_matches();
    m.source.ip_set = Some("s-1".into());
    let sets = |members: &[&str]| {
        BTreeMap::from([(
            "s-1".to_owned(),
            IpSet {
                selector: "app == \"a\"".into(),
                members: members.iter().map(|s| net(s)).collect::<BTreeSet<_>>(),
            },
        )])
    };
    let old = one_policy(
        vec![rule(0, Action::Allow, m.clone())],
        TierDefaultAction::Deny,
        sets(&["10.0.0.1/32", "10.0.0.2/32", "fd00::1/128"]),
    );
    let new = one_policy(
        vec![rule(0, Action::Allow, m.clone())],
        TierDefaultAction::Deny,
        sets(&["10.0.0.2/32", "10.0.0.3/32", "10.0.0.4/32", "fd00::1/128"]),
    );
    for family in [AddressFamily::Ipv4, AddressFamily::Ipv6] {
        assert!(same_rules(&old, &new, family));
        assert_eq!(set_updates(&old, &old, family), "");
    }
    // Elements are the merged prefixes: 10.0.0.2 and 10.0.0.3 become 10.0.0.2/31, which
    // replaces 10.0.0.2 (deletions come first, so they never overlap).
    assert_eq!(
        set_updates(&old, &new, AddressFamily::Ipv4),
        "delete element ip margay-policy s-1 { 10.0.0.1, 10.0.0.2 }\n\
         add element ip margay-policy s-1 { 10.0.0.2/31, 10.0.0.4 }\n"
    );
    assert_eq!(set_updates(&old, &new, AddressFamily::Ipv6), "");

    let mut other = m;
    other.protocol = Some(6);
    let changed = one_policy(
        vec![rule(0, Action::Allow, other)],
        TierDefaultAction::Deny,
        sets(&["10.0.0.1/32"]),
    );
    assert!(!same_rules(&old, &changed, AddressFamily::Ipv4));
}

#[test]
fn a_family_no_local_endpoint_has_an_address_of_only_drops_workload_traffic() {
    let mut m = no_matches();
    m.source.ip_set = Some("s-1".into());
    let sets = BTreeMap::from([(
        "s-1".to_owned(),
        IpSet {
            selector: "all()".into(),
            members: [net("10.0.0.2/32"), net("fd00::2/128")].into(),
        },
    )]);
    let v4_only = one_policy(
        vec![rule(0, Action::Allow, m)],
        TierDefaultAction::Deny,
        sets,
    );
    let names = |p: &Program, f| -> Vec<String> {
        let t = table(p, f);
        t.chains
            .into_iter()
            .map(|c| c.name)
            .chain(t.sets.into_iter().map(|s| s.name))
            .collect()
    };
    assert_eq!(
        names(&v4_only, AddressFamily::Ipv6),
        [
            "forward",
            "input",
            "output",
            "from-wl-dispatch",
            "to-wl-dispatch",
            "wl-to-host"
        ]
    );
    assert!(names(&v4_only, AddressFamily::Ipv4).contains(&"pi-1".to_owned()));
    assert!(render(&v4_only, AddressFamily::Ipv6).contains("oifname \"mgy*\" counter drop"));

    // The endpoint gains an IPv6 address: the IPv6 table gets everything.
    let mut dual = v4_only.clone();
    dual.endpoints
        .get_mut("mgya")
        .unwrap()
        .ips
        .push("fd00::1".parse().unwrap());
    assert!(!same_rules(&v4_only, &dual, AddressFamily::Ipv6));
    assert!(same_rules(&v4_only, &dual, AddressFamily::Ipv4));
    let script = update(&v4_only, &dual, AddressFamily::Ipv6);
    for line in [
        "add set ip6 margay-policy s-1 { type ipv6_addr; flags interval; }",
        "add element ip6 margay-policy s-1 { fd00::2 }",
        "add chain ip6 margay-policy pi-1",
        "add element ip6 margay-policy to-wl { \"mgya\" : goto tw-mgya }",
    ] {
        assert!(script.contains(line), "{line} missing from:\n{script}");
    }
    assert_eq!(update(&v4_only, &dual, AddressFamily::Ipv4), "");
}
