//! The CPU side of programming policy (issue 7) at the scale: one node with 500
//! workload endpoints and 1,000 policies. Times building the engine's model from the stored
//! resources, computing the node's program, and rendering it for nftables. Then, for single
//! changes (a policy added or removed, an endpoint of this node added or removed, an
//! endpoint of another node added), two ways of getting from the datastore's change to the
//! nft script:
//!
//! - the full rebuild (what the agent did first): the model from every resource, the
//!   program, `same_rules` choosing between set updates and a table replace (IPv4 only);
//! - the incremental path: `Model::apply` of the one change, the program, and
//!   `policy::update` for both tables (IPv4 and IPv6), with its phases;
//!
//! and `Model::sync` of a whole snapshot holding the change, for an agent that lists
//! everything on each change. The iptables dataplane's CPU side is timed beside it: the full
//! rendering, and `render_update` + `changed_chains` for each change. As root, the kernel's
//! side is timed too, in a throwaway network namespace: the whole tables and each change's
//! update script, through a new `nft -f` process and through a libnftables context kept open
//! (the agent's way). Datastore → kernel latency is measured with the agent.
//!
//! `cargo bench -p margay-nft --bench policy_program`

use std::time::{Duration, Instant};

use margay_api::Resource;
use margay_iptables::{changed_chains, render_update, Family};
use margay_nft::policy::{render, same_rules, set_updates, update, AddressFamily};
use margay_nft::{Nft, NftCommand, NftRunner};
use margay_policy::program::{program, Program};
use margay_policy::{Change, Cluster, Model, ResourceKey};
use margay_testkit::scale::{endpoint_yaml, one, policy_yaml, resources, NODE};

const ENDPOINTS: usize = 500;
const POLICIES: usize = 1_000;
const RUNS: usize = 30;
/// Runs of the incremental path (it is fast; more runs make its p99 mean something).
const INCREMENTAL_RUNS: usize = 200;

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Model + program + (render or set updates), as the agent first did after a change.
fn change(before: &Program, all: Vec<Resource>) -> (Duration, bool) {
    let start = Instant::now();
    let cluster = Cluster::from_resources(all).expect("valid cluster");
    let after = program(&cluster, NODE);
    let rules_same = same_rules(before, &after, AddressFamily::Ipv4);
    let script = if rules_same {
        set_updates(before, &after, AddressFamily::Ipv4)
    } else {
        render(&after, AddressFamily::Ipv4)
    };
    std::hint::black_box(script);
    (start.elapsed(), rules_same)
}

fn report(what: &str, mut samples: Vec<Duration>) {
    samples.sort();
    println!(
        "{what:<52} p50 {:>8.2} ms   p99 {:>8.2} ms",
        ms(percentile(&samples, 0.5)),
        ms(percentile(&samples, 0.99))
    );
}

/// A workload endpoint like [`endpoint_yaml`], on another node.
fn remote_endpoint(i: usize) -> String {
    endpoint_yaml(i)
        .replace(&format!("node: {NODE}"), "node: elsewhere")
        .replace(&format!("name: {NODE}-k8s-"), "name: elsewhere-k8s-")
}

/// One change and the change that undoes it.
struct Scenario {
    name: &'static str,
    change: Change,
    undo: Change,
}

fn scenarios(base: &[Resource]) -> Vec<Scenario> {
    let key = |r: &Resource| ResourceKey::of_resource(r);
    let upsert_then_delete = |name, r: Resource| Scenario {
        name,
        undo: Change::Delete(key(&r)),
        change: Change::Upsert(r),
    };
    let delete_then_upsert = |name, r: Resource| Scenario {
        name,
        change: Change::Delete(key(&r)),
        undo: Change::Upsert(r),
    };
    // The endpoint removed is one that policies select and sets hold.
    let local = base
        .iter()
        .find(|r| matches!(r, Resource::WorkloadEndpoint(w) if w.metadata.name.contains("-p7-")))
        .expect("endpoint 7")
        .clone();
    let policy = base
        .iter()
        .find(|r| r.metadata().name == "knp13")
        .expect("policy 13")
        .clone();
    vec![
        upsert_then_delete("one policy added", one(&policy_yaml(POLICIES))),
        delete_then_upsert("one policy removed", policy),
        upsert_then_delete("one endpoint added", one(&endpoint_yaml(ENDPOINTS))),
        delete_then_upsert("one endpoint removed", local),
        upsert_then_delete(
            "one endpoint added on another node",
            one(&remote_endpoint(ENDPOINTS + 1)),
        ),
    ]
}

const FAMILIES: [AddressFamily; 2] = [AddressFamily::Ipv4, AddressFamily::Ipv6];

/// The incremental path for one scenario: apply, program, update scripts; then undone
/// (not timed), so that every run starts from the same model. Then the iptables side, and
/// the kernel's when there is one.
fn incremental(
    model: &mut Model,
    before: &Program,
    scenario: &Scenario,
    kernel: Option<&mut Kernel>,
) {
    let (mut applied, mut programmed, mut scripted, mut total) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut after = before.clone();
    let mut script = String::new();
    for _ in 0..INCREMENTAL_RUNS {
        let t0 = Instant::now();
        model.apply(scenario.change.clone()).expect("valid cluster");
        let t1 = Instant::now();
        after = program(model.cluster().expect("valid cluster"), NODE);
        let t2 = Instant::now();
        script = FAMILIES
            .iter()
            .map(|&f| update(before, &after, f))
            .collect();
        let t3 = Instant::now();
        applied.push(t1 - t0);
        programmed.push(t2 - t1);
        scripted.push(t3 - t2);
        total.push(t3 - t0);
        model.apply(scenario.undo.clone()).expect("valid cluster");
    }
    let name = scenario.name;
    println!(
        "incremental: {name} ({} lines of nft, both tables)",
        script.lines().count()
    );
    report("  Model::apply", applied);
    report("  program for the node", programmed);
    report("  policy::update, IPv4 and IPv6", scripted);
    report("  total (CPU, before nft -f)", total);

    let rendered = [Family::V4, Family::V6].map(|f| margay_iptables::render(before, f));
    let mut iptables = Vec::new();
    for _ in 0..RUNS {
        let t0 = Instant::now();
        for old in &rendered {
            let new = render_update(before, old, &after);
            std::hint::black_box(changed_chains(old, &new));
        }
        iptables.push(t0.elapsed());
    }
    report("  iptables: render_update + changed_chains, both", iptables);

    if let Some(kernel) = kernel {
        for backend in [Backend::Binary, Backend::Library] {
            let mut loaded = Vec::new();
            for _ in 0..KERNEL_RUNS {
                kernel.load(Backend::Library, before);
                let t0 = Instant::now();
                kernel.run(backend, &script);
                loaded.push(t0.elapsed());
            }
            report(
                &format!("  kernel: the update, {}", backend.label()),
                loaded,
            );
        }
    }
}

const KERNEL_RUNS: usize = 10;

/// The two ways Margay runs nft scripts, timed side by side.
#[derive(Clone, Copy)]
enum Backend {
    /// A new `nft -f -` process per script.
    Binary,
    /// One libnftables context kept open, as the agent does.
    Library,
}

/// A throwaway network namespace to time nft in (deleted on drop).
struct Kernel {
    binary: Nft,
    library: Nft,
    /// Deleted on drop, after the runners (fields drop in order).
    _ns: margay_testkit::netns::TestNs,
}

impl Kernel {
    /// `None` unless this process is root and has nft.
    fn new() -> Option<Kernel> {
        let nft = std::process::Command::new("nft").arg("--version").output();
        if !(margay_sys::process::is_root() && nft.is_ok()) {
            return None;
        }
        let ns = margay_testkit::netns::TestNs::new("mgybench");
        let library = Nft::in_netns(ns.name());
        assert_eq!(library.backend(), "libnftables", "libnftables loads");
        Some(Kernel {
            binary: Nft::Binary(NftCommand::in_netns(ns.name())),
            library,
            _ns: ns,
        })
    }

    fn run(&mut self, backend: Backend, script: &str) {
        let runner = match backend {
            Backend::Binary => &mut self.binary,
            Backend::Library => &mut self.library,
        };
        if !script.is_empty() {
            runner.run(script).expect("nft accepts the script");
        }
    }

    /// Both tables replaced by `program`'s.
    fn load(&mut self, backend: Backend, program: &Program) {
        let script: String = FAMILIES.iter().map(|&f| render(program, f)).collect();
        self.run(backend, &script);
    }
}

impl Backend {
    fn label(self) -> &'static str {
        match self {
            Backend::Binary => "nft -f (a process)",
            Backend::Library => "libnftables (kept open)",
        }
    }
}

fn main() {
    let base = resources(ENDPOINTS, POLICIES);
    let (mut model, mut prog, mut rendered) = (Vec::new(), Vec::new(), Vec::new());
    let mut first = None;
    for _ in 0..RUNS.min(10) {
        let input = base.clone();
        let t0 = Instant::now();
        let cluster = Cluster::from_resources(input).expect("valid cluster");
        let t1 = Instant::now();
        let p = program(&cluster, NODE);
        let t2 = Instant::now();
        let script = render(&p, AddressFamily::Ipv4);
        let t3 = Instant::now();
        model.push(t1 - t0);
        prog.push(t2 - t1);
        rendered.push(t3 - t2);
        if first.is_none() {
            println!(
                "{ENDPOINTS} endpoints, {POLICIES} policies: {} policy chains, {} sets, {} lines of nft",
                p.policies.len(),
                p.ip_sets.len() + p.port_sets.len(),
                script.lines().count()
            );
            first = Some(p);
        }
    }
    report("full: model from resources", model.clone());
    report("full: program for the node", prog.clone());
    report("full: render nft", rendered.clone());
    let full: Vec<Duration> = (0..model.len())
        .map(|i| model[i] + prog[i] + rendered[i])
        .collect();
    report("full: total (CPU, before nft -f)", full);

    let before = first.expect("at least one run");
    let mut add_policy = Vec::new();
    let mut add_endpoint = Vec::new();
    for _ in 0..RUNS {
        let mut with_policy = base.clone();
        with_policy.extend(resources(0, POLICIES + 1).into_iter().skip(POLICIES));
        let (took, same) = change(&before, with_policy);
        assert!(!same, "a new policy changes rules");
        add_policy.push(took);
        let mut with_endpoint = base.clone();
        with_endpoint.extend(resources(ENDPOINTS + 1, 0).into_iter().skip(ENDPOINTS));
        let (took, _) = change(&before, with_endpoint);
        add_endpoint.push(took);
    }
    report("full rebuild: one policy added", add_policy);
    report("full rebuild: one endpoint added", add_endpoint);

    let mut iptables = Vec::new();
    for _ in 0..RUNS.min(10) {
        let t0 = Instant::now();
        for family in [Family::V4, Family::V6] {
            std::hint::black_box(margay_iptables::render(&before, family));
        }
        iptables.push(t0.elapsed());
    }
    report("full: iptables render, IPv4 and IPv6", iptables);

    let mut kernel = Kernel::new();
    match &mut kernel {
        Some(kernel) => {
            for backend in [Backend::Binary, Backend::Library] {
                let mut loads = Vec::new();
                for _ in 0..KERNEL_RUNS {
                    let t0 = Instant::now();
                    kernel.load(backend, &before);
                    loads.push(t0.elapsed());
                }
                report(
                    &format!("kernel: both whole tables, {}", backend.label()),
                    loads,
                );
            }
        }
        None => println!("kernel: skipped (needs root and nft)"),
    }

    let t0 = Instant::now();
    let mut model = Model::from_resources(base.clone(), true).expect("no duplicates");
    println!(
        "Model::from_resources (once, at start)               {:>8.2} ms",
        ms(t0.elapsed())
    );
    assert_eq!(
        program(model.cluster().expect("valid cluster"), NODE),
        before
    );
    for scenario in scenarios(&base) {
        incremental(&mut model, &before, &scenario, kernel.as_mut());
    }

    // An agent that lists every resource on each change: the snapshot, diffed.
    let mut with_policy = base.clone();
    with_policy.push(one(&policy_yaml(POLICIES)));
    let mut synced = Vec::new();
    for _ in 0..RUNS {
        let snapshot = with_policy.clone();
        let t0 = Instant::now();
        model.sync(snapshot).expect("valid cluster");
        synced.push(t0.elapsed());
        model.sync(base.clone()).expect("valid cluster");
    }
    report("Model::sync of a snapshot with one policy added", synced);
}
