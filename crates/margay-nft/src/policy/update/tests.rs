//! Programs compared as data decide as the rendered texts did, and [`update`] brings a
//! loaded table to exactly what a fresh load of the new program gives (checked against the
//! kernel, as root, in throwaway network namespaces).

use std::collections::BTreeMap;
use std::process::Command;

use margay_api::Action;
use margay_policy::program::{program, Program};
use margay_testkit::fixture::{self, golden_yaml};
use margay_testkit::netns::TestNs;
use serde_json::Value;

use super::super::{same_rules, set_updates, table};
use super::*;

const FAMILIES: [AddressFamily; 2] = [AddressFamily::Ipv4, AddressFamily::Ipv6];

/// The golden YAML without the documents `drop` matches, plus `more`.
fn golden_with(drop: &[&str], more: &str) -> String {
    let mut docs: Vec<&str> = Vec::new();
    let yaml = golden_yaml();
    for doc in yaml.split("\n---\n") {
        if !drop.iter().any(|d| doc.contains(d)) {
            docs.push(doc);
        }
    }
    let mut out = docs.join("\n---\n");
    out.push_str(more);
    out
}

fn node1(yaml: &str) -> Program {
    program(&fixture::cluster(yaml), "node1")
}

const MORE_POLICY: &str = "
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: more}
spec:
  selector: pod == 'b'
  ingress: [{action: Allow, source: {selector: pod == 'c'}}]
";

const POD_E_ON_NODE1: &str = "
---
apiVersion: margay.dev/v1
kind: WorkloadEndpoint
metadata:
  name: node1-k8s-e-eth0
  namespace: x
  labels: {pod: e, app: web}
spec:
  orchestrator: k8s
  node: node1
  pod: e
  endpoint: eth0
  interfaceName: mgy000000000e
  ipNetworks: [10.1.0.5/32]
  profiles: [kns.x]
  ports: [{name: web, protocol: TCP, port: 8081}]
";

/// Programs that differ from the golden node1 program in every way a change can: set
/// members only, a policy (and its set) added or removed, local endpoints added or removed,
/// a tier's default action, another node, nothing at all, the host endpoint gone, its
/// forwarded traffic's policy gone, the failsafe ports; and, made by hand, a policy renamed
/// under the same id, comments that differ only past what nft keeps, a rule moved to IPv6
/// only.
fn programs() -> Vec<(&'static str, Program)> {
    let base = fixture::golden_node1();
    let golden = fixture::golden_cluster();
    let moved = golden_yaml()
        .replace("\"10.1.1.1/32\"", "\"10.1.1.10/32\"")
        .replace("198.51.100.0/25", "198.51.100.0/24")
        + fixture::POD_D_ON_NODE2;
    let mut renamed = base.clone();
    renamed.policies.values_mut().next().unwrap().policy.name = "renamed".into();
    let long = |tail: &str| {
        let mut p = base.clone();
        let rule = &mut p.policies.values_mut().next().unwrap().rules[0];
        rule.comment = format!("{}{tail}", "c".repeat(130));
        p
    };
    let mut v6 = base.clone();
    for chain in v6.policies.values_mut() {
        for rule in &mut chain.rules {
            if rule.action == Action::Allow && rule.matches.ip_version.is_none() {
                rule.matches.ip_version = Some(6);
            }
        }
    }
    vec![
        ("golden", base.clone()),
        ("node2", program(&golden, "node2")),
        ("node3", program(&golden, "node3")),
        ("members moved", node1(&moved)),
        ("policy added", node1(&(golden_yaml() + MORE_POLICY))),
        (
            "policy removed",
            node1(&golden_with(
                &["kind: NetworkPolicy\nmetadata:\n  name: web"],
                "",
            )),
        ),
        (
            "endpoint removed",
            node1(&golden_with(
                &["name: node1-k8s-b-eth0\n  namespace: x"],
                "",
            )),
        ),
        ("endpoint added", node1(&(golden_yaml() + POD_E_ON_NODE1))),
        (
            "tier denies",
            node1(&golden_yaml().replace("defaultAction: Pass", "defaultAction: Deny")),
        ),
        ("renamed", renamed),
        ("long comment a", long("a")),
        ("long comment b", long("b")),
        ("allow rules IPv6 only", v6),
        (
            "host endpoint gone",
            node1(&golden_with(&["name: node1-eth0\n"], "")),
        ),
        (
            "forwarding open",
            node1(&golden_with(&["name: node1-forward\n"], "")),
        ),
        (
            "failsafe ports changed",
            node1(&golden_yaml().replace("port: 2379, net:", "port: 2380, net:")),
        ),
    ]
}

/// What `same_rules` compared before it compared data: the rendered table without members.
fn skeleton(program: &Program, family: AddressFamily) -> String {
    let mut t = table(program, family);
    for set in &mut t.sets {
        set.elements = set.elements.cleared();
    }
    let mut out = String::new();
    t.render_replace(&mut out);
    out
}

#[test]
fn programs_compared_as_data_decide_as_their_renderings() {
    let programs = programs();
    let mut same = 0;
    for (a, old) in &programs {
        for (b, new) in &programs {
            for family in FAMILIES {
                let rules_same = same_rules(old, new, family);
                assert_eq!(
                    rules_same,
                    skeleton(old, family) == skeleton(new, family),
                    "same_rules({a}, {b}, {family:?})"
                );
                let members = set_updates(old, new, family);
                assert_eq!(
                    members,
                    table(new, family).render_element_updates(&table(old, family)),
                    "set_updates({a}, {b}, {family:?})"
                );
                let script = update(old, new, family);
                if rules_same {
                    same += 1;
                    assert_eq!(script, members, "update({a}, {b}, {family:?})");
                } else {
                    assert!(!script.contains("delete table"), "{script}");
                }
            }
        }
    }
    // Beyond each program with itself: members moved, comments cut alike, the other family.
    assert!(same > 2 * programs.len(), "{same}");
}

#[test]
fn an_update_touches_only_what_changed() {
    let programs: BTreeMap<&str, Program> = programs().into_iter().collect();
    let base = &programs["golden"];
    let v4 = AddressFamily::Ipv4;
    assert_eq!(update(base, base, v4), "");

    let added = update(base, &programs["policy added"], v4);
    let lines: Vec<&str> = added.lines().collect();
    assert!(
        lines[0].starts_with("add set ip margay-policy s-"),
        "{added}"
    );
    assert!(lines
        .iter()
        .any(|l| l.starts_with("add chain ip margay-policy pi-")));
    // The ingress chains of x/b and y/b, which the policy selects, and nothing else are
    // rewritten.
    let flushed: Vec<&&str> = lines
        .iter()
        .filter(|l| l.starts_with("flush chain"))
        .collect();
    assert_eq!(
        flushed,
        [
            &"flush chain ip margay-policy tw-mgy08041ab898a",
            &"flush chain ip margay-policy tw-mgy665e9bb24dc"
        ],
        "{added}"
    );
    assert!(!added.contains("delete"), "{added}");

    // The host endpoint goes: its chains, its maps and the node set go; the base chains
    // using them are rewritten; nothing else.
    let gone = update(base, &programs["host endpoint gone"], v4);
    for line in [
        "flush chain ip margay-policy input",
        "flush chain ip margay-policy forward",
        "delete map ip margay-policy from-hep",
        "delete map ip margay-policy from-hep-fw",
        "delete chain ip margay-policy fh-eth0",
        "delete chain ip margay-policy failsafe-in",
        "delete set ip margay-policy all-hosts",
    ] {
        assert!(gone.lines().any(|l| l == line), "{line} in\n{gone}");
    }
    assert!(!gone.contains("tw-") && !gone.contains("fw-mgy"), "{gone}");
    // Only the forwarded traffic's policy goes: its chain, its map and the forward rule.
    let open = update(base, &programs["forwarding open"], v4);
    assert!(
        open.contains("delete map ip margay-policy from-hep-fw"),
        "{open}"
    );
    assert!(
        open.contains("delete chain ip margay-policy fhfw-eth0"),
        "{open}"
    );
    assert!(!open.contains("from-hep {"), "{open}");
    let back = update(&programs["host endpoint gone"], base, v4);
    assert!(
        back.starts_with("add set ip margay-policy all-hosts"),
        "{back}"
    );
    assert!(back.contains("add map ip margay-policy from-hep { type ifname : verdict; }"));

    let removed = update(base, &programs["endpoint removed"], v4);
    for line in [
        "delete element ip margay-policy from-wl { \"mgy08041ab898a\" }",
        "delete element ip margay-policy to-wl { \"mgy08041ab898a\" }",
        "flush chain ip margay-policy fw-mgy08041ab898a",
        "delete chain ip margay-policy tw-mgy08041ab898a",
    ] {
        assert!(removed.lines().any(|l| l == line), "{line} in\n{removed}");
    }
    let came = update(base, &programs["endpoint added"], v4);
    assert!(
        came.lines().any(|l| {
            l
            == "add element ip margay-policy from-wl { \"mgy000000000e\" : goto fw-mgy000000000e }"
        }),
        "{came}"
    );
}

/// Whether this process can run nft against the kernel in namespaces; why not otherwise.
fn missing_nft_or_root() -> Option<&'static str> {
    if !margay_sys::process::is_root() {
        Some("needs root")
    } else if Command::new("nft").arg("--version").output().is_err() {
        Some("nft is not installed")
    } else {
        None
    }
}

/// `nft -j list table` without handles and the metainfo, chains and sets by name (set and
/// map elements sorted), and each chain's rules in order: what two loads of the same table
/// have in common however they were made.
fn normalised(ns: &TestNs, family: AddressFamily) -> Value {
    let name = family.table_family().to_string();
    let listing = ns.exec(&["nft", "-j", "list", "table", &name, POLICY_TABLE]);
    let mut doc: Value = serde_json::from_str(&listing).expect("nft -j gives JSON");
    strip_handles(&mut doc);
    let mut objects: BTreeMap<String, Value> = BTreeMap::new();
    let mut rules: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for item in doc["nftables"].as_array().expect("an nftables list") {
        let Some((kind, body)) = item.as_object().and_then(|o| o.iter().next()) else {
            continue;
        };
        match kind.as_str() {
            "metainfo" => {}
            "rule" => rules
                .entry(body["chain"].as_str().unwrap_or_default().to_owned())
                .or_default()
                .push(body.clone()),
            _ => {
                let mut body = body.clone();
                if let Some(elements) = body.get_mut("elem").and_then(Value::as_array_mut) {
                    elements.sort_by_key(Value::to_string);
                }
                let key = format!("{kind} {}", body["name"].as_str().unwrap_or_default());
                objects.insert(key, body);
            }
        }
    }
    serde_json::json!({"objects": objects, "rules": rules})
}

fn strip_handles(value: &mut Value) {
    match value {
        Value::Object(map) => {
            map.remove("handle");
            map.values_mut().for_each(strip_handles);
        }
        Value::Array(items) => items.iter_mut().for_each(strip_handles),
        _ => {}
    }
}

fn run(ns: &TestNs, script: &str) {
    if script.is_empty() {
        return;
    }
    let path = std::env::temp_dir().join(format!("{}.nft", ns.name()));
    std::fs::write(&path, script).unwrap();
    let path_text = path.to_string_lossy().into_owned();
    let out = Command::new("ip")
        .args(["netns", "exec", ns.name(), "nft", "-f", &path_text])
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&path);
    assert!(
        out.status.success(),
        "{}\n{script}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// From the golden program to every other and back, and from each program to the next, in
/// both families: the table loaded from the first and updated to the second lists exactly
/// as the second loaded fresh.
#[test]
fn updates_give_the_table_a_fresh_load_gives() {
    if let Some(why) = missing_nft_or_root() {
        eprintln!("skipped: {why}");
        return;
    }
    let programs = programs();
    let fresh = TestNs::new("mgynftu");
    let updated = fresh.sibling();
    let mut want = BTreeMap::new();
    for (i, (_, p)) in programs.iter().enumerate() {
        for family in FAMILIES {
            run(&fresh, &render(p, family));
            want.insert((i, family), normalised(&fresh, family));
        }
    }
    for (i, (a, old)) in programs.iter().enumerate() {
        for (j, (b, new)) in programs.iter().enumerate() {
            if i != 0 && j != 0 && j != i + 1 && i != j + 1 {
                continue;
            }
            for family in FAMILIES {
                run(&updated, &render(old, family));
                run(&updated, &update(old, new, family));
                let got = normalised(&updated, family);
                let want = &want[&(j, family)];
                assert!(
                    got == *want,
                    "{a} → {b} ({family:?}):\n{}\ngot:\n{got:#}\nwant:\n{want:#}",
                    update(old, new, family)
                );
            }
        }
    }
}
