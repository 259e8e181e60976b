//! Deltas applied to [`FakeIptables`], which refuses what the kernel refuses (deleting a
//! chain something jumps to, destroying a set a rule uses, …).

use margay_policy::program::{program, Program};
use margay_testkit::fixture::{cluster, golden_yaml, POD_D_ON_NODE2};

use super::*;
use crate::{render, Applier, FakeIptables};

fn node1(yaml: &str) -> Program {
    program(&cluster(yaml), "node1")
}

const FAMILIES: [Family; 2] = [Family::V4, Family::V6];

fn kernel(fake: &mut FakeIptables, family: Family) -> Rendered {
    let save = fake.save(family).unwrap();
    let sets = fake.ipset_save().unwrap();
    Rendered::from_kernel(family, &save, &sets)
}

/// The kernel holds exactly `want`: nothing would change.
fn assert_holds(fake: &mut FakeIptables, want: &Rendered) {
    let delta = changed_chains(&kernel(fake, want.family), want);
    assert!(delta.is_empty(), "{delta:#?}");
}

/// The chains an iptables input declares (creates or flushes), and the sets an ipset input
/// names, in order.
fn declared(input: &str) -> Vec<&str> {
    input
        .lines()
        .filter_map(|l| l.strip_prefix(':'))
        .map(|l| l.split_whitespace().next().unwrap())
        .collect()
}

fn loaded(programs: &Program) -> FakeIptables {
    let mut fake = FakeIptables::new();
    for family in FAMILIES {
        let r = render(programs, family);
        fake.ipset_restore(&r.ipset_restore()).unwrap();
        fake.restore(family, &r.iptables_restore()).unwrap();
        assert_holds(&mut fake, &r);
    }
    fake
}

#[test]
fn a_changed_rule_rewrites_only_its_chain() {
    let old = node1(&golden_yaml());
    let new = node1(&golden_yaml().replace("notPorts: [22, \"2000:2100\"]", "notPorts: [22]"));
    let mut fake = loaded(&old);
    for family in FAMILIES {
        let (was, now) = (render(&old, family), render(&new, family));
        let delta = changed_chains(&was, &now);
        let [Step::Iptables(input)] = delta.steps.as_slice() else {
            panic!("{delta:#?}");
        };
        assert_eq!(declared(input), ["mgy-pi-e29ff79e870a0f28"], "{input}");
        assert!(!input.contains("FORWARD"), "{input}");
        delta.run(&mut fake, family).unwrap();
        assert_holds(&mut fake, &now);
        // From what the kernel shows, the same delta.
        assert_eq!(
            changed_chains(&kernel(&mut fake, family), &now),
            Delta::default()
        );
    }
    let v4 = changed_chains(&render(&old, Family::V4), &render(&new, Family::V4));
    let Step::Iptables(input) = &v4.steps[0] else {
        unreachable!()
    };
    assert!(
        input.contains("-m multiport ! --dports 22 -j MARK"),
        "{input}"
    );
}

#[test]
fn a_pod_elsewhere_changes_only_set_members() {
    let old = node1(&golden_yaml());
    let yaml = golden_yaml().replace("\"10.1.1.1/32\"", "\"10.1.1.10/32\"") + POD_D_ON_NODE2;
    let new = node1(&yaml);
    let mut fake = loaded(&old);
    for family in FAMILIES {
        let delta = changed_chains(&render(&old, family), &render(&new, family));
        let [Step::Ipset(input)] = delta.steps.as_slice() else {
            panic!("{family:?}: {delta:#?}");
        };
        assert!(
            input
                .lines()
                .all(|l| l.starts_with("add mgy") || l.starts_with("del mgy")),
            "{input}"
        );
        delta.run(&mut fake, family).unwrap();
        assert_holds(&mut fake, &render(&new, family));
    }
    let v4 = changed_chains(&render(&old, Family::V4), &render(&new, Family::V4));
    let Step::Ipset(input) = &v4.steps[0] else {
        unreachable!()
    };
    for line in [
        "del mgy40s-49114dba024f6d6f 10.1.1.1",
        "add mgy40s-49114dba024f6d6f 10.1.1.10",
        "add mgy40s-49114dba024f6d6f 10.1.1.3",
        "add mgy40np-c9b53640baea6451 10.1.1.3,tcp:5432",
    ] {
        assert!(
            input.lines().any(|l| l == line),
            "missing {line:?} in\n{input}"
        );
    }
}

#[test]
fn chains_come_and_go_in_an_order_the_kernel_accepts() {
    let old = node1(&golden_yaml());
    // A new pod on node1 (new endpoint chains, dispatch changes); the Calico policy gone
    // (its chains deleted after the endpoint chains stop jumping to them).
    let start = golden_yaml()
        .find("apiVersion: projectcalico.org/v3\nkind: NetworkPolicy")
        .unwrap();
    let end = golden_yaml()[start..].find("---").unwrap() + start;
    let mut yaml = golden_yaml();
    yaml.replace_range(start..end + 4, "");
    yaml += "---
apiVersion: margay.dev/v1
kind: WorkloadEndpoint
metadata:
  name: node1-k8s-e-eth0
  namespace: z
  labels: {pod: e}
spec:
  orchestrator: k8s
  node: node1
  pod: e
  endpoint: eth0
  interfaceName: mgy000000000e0
  ipNetworks: [10.1.2.4/32]
  profiles: [kns.z]
";
    let new = node1(&yaml);
    let mut fake = loaded(&old);
    let (was, now) = (render(&old, Family::V4), render(&new, Family::V4));
    let delta = changed_chains(&was, &now);
    let Some(Step::Iptables(input)) = delta.steps.iter().find(|s| matches!(s, Step::Iptables(_)))
    else {
        panic!("{delta:#?}")
    };
    for chain in [
        "mgy-fw-mgy000000000e0",
        "mgy-tw-mgy000000000e0",
        "mgy-from-wl-dispatch",
        "mgy-pri-kns.z",
        "mgy-fw-mgy456b416f2bf",
        "mgy-pi-dcf9db903f144a7b",
    ] {
        assert!(declared(input).contains(&chain), "{chain} in\n{input}");
    }
    assert!(input.contains("-X mgy-pi-dcf9db903f144a7b\n"), "{input}");
    assert!(!declared(input).contains(&"mgy-pri-kns.x"), "{input}");
    delta.run(&mut fake, Family::V4).unwrap();
    assert_holds(&mut fake, &now);
    // Its sets are destroyed once no rule uses them.
    let destroyed = "destroy mgy40s-49114dba024f6d6f\ndestroy mgy40s-fecc9d818f2abf80\n";
    assert_eq!(delta.steps.last(), Some(&Step::Ipset(destroyed.into())));
}

/// The host endpoint goes, then comes back: its chains, the dispatch chains, the failsafe
/// chains and the node set come and go in an order the kernel accepts, and the top-level
/// chains are rewritten around them.
#[test]
fn host_endpoints_come_and_go_in_an_order_the_kernel_accepts() {
    let with = node1(&golden_yaml());
    let docs: Vec<String> = golden_yaml()
        .split("\n---\n")
        .filter(|d| !d.contains("name: node1-eth0\n"))
        .map(str::to_owned)
        .collect();
    let without = node1(&docs.join("\n---\n"));
    assert!(without.host_endpoints.is_empty());
    let mut fake = loaded(&with);
    for family in FAMILIES {
        for (old, new) in [(&with, &without), (&without, &with)] {
            let (was, now) = (render(old, family), render(new, family));
            let delta = changed_chains(&was, &now);
            delta.run(&mut fake, family).unwrap();
            assert_holds(&mut fake, &now);
        }
        let gone = changed_chains(&render(&with, family), &render(&without, family));
        let input = gone
            .steps
            .iter()
            .find_map(|s| match s {
                Step::Iptables(input) => Some(input),
                Step::Ipset(_) => None,
            })
            .unwrap();
        for chain in [
            "mgy-fh-eth0",
            "mgy-th-eth0",
            "mgy-fhfw-eth0",
            "mgy-failsafe-in",
            "mgy-from-host-endpoint",
        ] {
            assert!(
                input.contains(&format!("-X {chain}\n")),
                "{chain} in\n{input}"
            );
        }
        for chain in ["mgy-INPUT", "mgy-OUTPUT", "mgy-FORWARD"] {
            assert!(declared(input).contains(&chain), "{chain} in\n{input}");
        }
        assert!(
            !declared(input).iter().any(|c| c.starts_with("mgy-tw-")),
            "{input}"
        );
    }
}

#[test]
fn the_applier_starts_from_the_kernel_and_keeps_other_rules() {
    let node = node1(&golden_yaml());
    let mut fake = FakeIptables::new();
    // Someone else's rules and sets, and leftovers of an older Margay.
    fake.ipset_restore("create KUBE-X hash:ip family inet\nadd KUBE-X 10.9.9.9\ncreate mgy40s-old hash:net family inet\n")
        .unwrap();
    fake.restore(
        Family::V4,
        "*filter\n:KUBE-FORWARD - [0:0]\n:mgy-old - [0:0]\n-A KUBE-FORWARD -m set --match-set KUBE-X dst -j ACCEPT\n\
         -A mgy-old -m set --match-set mgy40s-old src -j DROP\n-A FORWARD -j KUBE-FORWARD\n-A FORWARD -j mgy-old\nCOMMIT\n",
    )
    .unwrap();
    let mut applier = Applier::new(fake, Family::V4);
    assert!(applier.apply(&node).unwrap());
    let want = render(&node, Family::V4);
    let fake = applier.runner();
    assert_holds(fake, &want);
    let save = fake.save(Family::V4).unwrap();
    assert!(save.contains("-A FORWARD -j KUBE-FORWARD\n"), "{save}");
    assert!(!save.contains("mgy-old"), "{save}");
    let forward: Vec<&str> = save
        .lines()
        .filter(|l| l.starts_with("-A FORWARD "))
        .collect();
    assert!(forward[0].ends_with("-j mgy-FORWARD"), "{forward:?}");
    assert!(forward[2].ends_with("-j ACCEPT"), "{forward:?}");
    let sets = fake.ipset_save().unwrap();
    assert!(sets.contains("add KUBE-X 10.9.9.9"), "{sets}");
    assert!(!sets.contains("mgy40s-old"), "{sets}");

    // Nothing changed: nothing run.
    let inputs = applier.runner().inputs.len();
    assert!(!applier.apply(&node).unwrap());
    assert_eq!(applier.runner().inputs.len(), inputs);
    // Nor after forgetting: the kernel already holds it.
    applier.forget();
    assert!(!applier.apply(&node).unwrap());

    assert!(applier.remove_all().unwrap());
    let fake = applier.runner();
    let save = fake.save(Family::V4).unwrap();
    assert!(!save.contains("mgy"), "{save}");
    assert!(save.contains("-A KUBE-FORWARD -m set --match-set KUBE-X dst -j ACCEPT"));
    assert_eq!(
        fake.ipset_save().unwrap(),
        "create KUBE-X hash:ip family inet hashsize 1024 maxelem 65536\nadd KUBE-X 10.9.9.9\n"
    );
    assert!(!applier.remove_all().unwrap(), "nothing left to remove");
}

#[test]
fn sets_of_another_type_are_swapped_or_created_again() {
    let node = node1(&golden_yaml());
    let want = render(&node, Family::V4);
    let mut fake = loaded(&node);
    // What an older Margay might have left: the same names as hash:ip (swappable) and as
    // hash:ip,port (not), with rules using them.
    let swappable = "mgy40s-765c9ad873b7651e";
    let unswappable = "mgy40s-49114dba024f6d6f";
    let mut kernel_state = kernel(&mut fake, Family::V4);
    remove_all(&kernel_state)
        .run(&mut fake, Family::V4)
        .unwrap();
    for (name, kind) in [(swappable, "hash:ip"), (unswappable, "hash:ip,port")] {
        let set = kernel_state.sets.get_mut(name).unwrap();
        set.header.kind = kind.into();
        set.header.maxelem = 65_536;
        set.members.clear();
    }
    fake.ipset_restore(&kernel_state.ipset_restore()).unwrap();
    fake.restore(Family::V4, &kernel_state.iptables_restore())
        .unwrap();
    kernel_state = kernel(&mut fake, Family::V4);

    let delta = changed_chains(&kernel_state, &want);
    let steps: Vec<String> = delta
        .steps
        .iter()
        .map(|s| match s {
            Step::Iptables(i) => format!("iptables:\n{i}"),
            Step::Ipset(i) => format!("ipset:\n{i}"),
        })
        .collect();
    // First the chain using the unswappable set lets go of it.
    assert_eq!(
        steps[0],
        "iptables:\n*filter\n-F mgy-pi-dcf9db903f144a7b\nCOMMIT\n"
    );
    assert!(
        steps[1].contains(&format!(
            "create mgy4t0 hash:net family inet hashsize 1024 maxelem 1048576\n\
         add mgy4t0 192.0.2.0/24\nadd mgy4t0 198.51.100.0/25\n\
         swap mgy4t0 {swappable}\ndestroy mgy4t0\n"
        )),
        "{}",
        steps[1]
    );
    assert!(steps[1].contains(&format!(
        "destroy {unswappable}\ncreate {unswappable} hash:net"
    )));
    assert_eq!(
        declared(&steps[2]),
        ["mgy-pi-dcf9db903f144a7b"],
        "only the released chain is rewritten: {}",
        steps[2]
    );
    delta.run(&mut fake, Family::V4).unwrap();
    assert_holds(&mut fake, &want);
}

#[test]
fn a_failed_step_is_reported_and_the_applier_rereads_the_kernel() {
    let node = node1(&golden_yaml());
    let mut fake = FakeIptables::new();
    // A set of Margay's name that no swap can fix, used by a rule Margay does not know.
    fake.ipset_restore("create mgy40s-765c9ad873b7651e hash:ip,port family inet\n")
        .unwrap();
    fake.restore(
        Family::V4,
        "*filter\n:OTHER - [0:0]\n-A OTHER -m set --match-set mgy40s-765c9ad873b7651e src -j DROP\nCOMMIT\n",
    )
    .unwrap();
    let mut applier = Applier::new(fake, Family::V4);
    let err = applier.apply(&node).unwrap_err().to_string();
    assert!(
        err.starts_with("fake ipset restore -exist: line ") && err.contains("in use"),
        "{err}"
    );
    applier
        .runner()
        .restore(Family::V4, "*filter\n-F OTHER\nCOMMIT\n")
        .unwrap();
    assert!(applier.apply(&node).unwrap());
    assert_holds(applier.runner(), &render(&node, Family::V4));
}
