//! Network policy on this node: the policy engine's program for the node, applied to
//! Margay's policy tables (`table ip margay-policy`, `table ip6 margay-policy`) or to
//! iptables (see [`crate::dataplane`], which chooses), and the record of which workload
//! interfaces have their rules programmed.
//!
//! - [`PolicyModel`] keeps the engine's [`Model`] across syncs: each snapshot of the
//!   datastore's resources is applied as the differences from the last one
//!   ([`Model::sync`]), so one policy or endpoint changed recompiles only what it touches,
//!   and the node's [`Program`] is built from the model's cluster. ([`compute`] does the same
//!   from scratch.) A policy the engine cannot use is left out and reported; the rest is
//!   enforced, as Calico does. Only an error about the whole model (a Profile that cannot be
//!   compiled) gives no program, and then what is programmed stays as it is.
//! - [`PolicyTables`] applies programs: the first one replaces both tables in one `nft -f`
//!   transaction; each later one is applied as the difference from the last applied
//!   ([`nft_policy::update`], both families in one transaction): new and changed chains and
//!   sets, set members, dispatch-map elements, and the removal of what is gone. Unchanged
//!   chains keep their rules and counters. An update nft refuses (someone changed the
//!   tables), and the first apply after a table went missing, replace both tables.
//! - [`record_programmed`] writes one file per programmed interface under
//!   `<state-dir>/policy/`, which the CNI plugin waits for (`policy_setup_timeout_seconds`).

use std::collections::{BTreeMap, HashSet};
use std::io;
use std::path::Path;
use std::time::{Duration, Instant};

use margay_api::{Resource, WorkloadEndpoint};
use margay_nft::policy::{self as nft_policy, AddressFamily, POLICY_TABLE};
use margay_nft::ruleset::{Ruleset, Table};
use margay_nft::NftRunner;
use margay_policy::program::{program, Program};
use margay_policy::{Change as ModelChange, Cluster, Model, PolicyError, ResourceKey};
use serde::Serialize;

/// Both policy tables, in the order they are written.
const FAMILIES: [AddressFamily; 2] = [AddressFamily::Ipv4, AddressFamily::Ipv6];

/// The directory under the state directory that holds one file per programmed interface.
pub const PROGRAMMED_DIR: &str = "policy";

/// This node's program, from one snapshot of the datastore.
#[derive(Debug, Clone, Default)]
pub struct Computed {
    /// `None` when the model as a whole could not be built; nothing is changed then.
    pub program: Option<Program>,
    /// One line per resource left out (or, without a program, the one error).
    pub errors: Vec<String>,
    /// This node's workload interfaces → the container ID of the endpoint on each (empty for
    /// an endpoint without one).
    pub owners: BTreeMap<String, String>,
    /// How long bringing the model to the inputs took, and building the program from it.
    pub timings: (Duration, Duration),
}

/// Builds the cluster from `inputs` (the policy kinds and every WorkloadEndpoint) and the
/// program of `node`.
pub fn compute(inputs: Vec<Resource>, node: &str) -> Computed {
    let owners = owners(&inputs, node);
    match Cluster::from_resources_skipping_bad_policies(inputs) {
        Ok((cluster, skipped)) => Computed {
            program: Some(program(&cluster, node)),
            errors: skipped.iter().map(ToString::to_string).collect(),
            owners,
            timings: Default::default(),
        },
        Err(e) => Computed {
            program: None,
            errors: vec![e.to_string()],
            owners,
            timings: Default::default(),
        },
    }
}

/// The engine's model of the cluster, kept from one sync to the next (see the
/// [module](self)), and this node's workload interfaces.
#[derive(Debug, Default)]
pub struct PolicyModel {
    model: Option<Model>,
    /// This node's WorkloadEndpoints that have an interface: key → (interface, container).
    local: BTreeMap<ResourceKey, (String, String)>,
}

impl PolicyModel {
    pub fn new() -> PolicyModel {
        PolicyModel::default()
    }

    /// Brings the model to `inputs` (the policy kinds and every WorkloadEndpoint, one
    /// snapshot) and gives the program of `node`: what [`compute`] gives for the same inputs.
    pub fn compute(&mut self, inputs: Vec<Resource>, node: &str) -> Computed {
        let started = Instant::now();
        self.local = inputs
            .iter()
            .filter_map(|r| match r {
                Resource::WorkloadEndpoint(wep) => {
                    local_interface(wep, node).map(|local| (ResourceKey::of_resource(r), local))
                }
                _ => None,
            })
            .collect();
        let status = match &mut self.model {
            Some(model) => model.sync(inputs),
            None => Model::from_resources(inputs, true).map(|model| {
                self.model = Some(model);
            }),
        };
        self.program(status, started, node)
    }

    /// Applies `changes` (what the datastore's watch reported since the last snapshot or
    /// the last changes), in order, and gives the program of `node`; `None` before the
    /// first snapshot, which only [`PolicyModel::compute`] gives.
    pub fn apply(&mut self, changes: Vec<ModelChange>, node: &str) -> Option<Computed> {
        let started = Instant::now();
        let model = self.model.as_mut()?;
        let mut status = Ok(());
        for change in changes {
            match &change {
                ModelChange::Upsert(r @ Resource::WorkloadEndpoint(wep)) => {
                    let key = ResourceKey::of_resource(r);
                    match local_interface(wep, node) {
                        Some(local) => self.local.insert(key, local),
                        None => self.local.remove(&key),
                    };
                }
                ModelChange::Delete(key) => {
                    self.local.remove(key);
                }
                ModelChange::Upsert(_) => {}
            }
            // Each result is the state after that change: the last one is the model's.
            status = model.apply(change);
        }
        Some(self.program(status, started, node))
    }

    fn program(&self, status: Result<(), PolicyError>, started: Instant, node: &str) -> Computed {
        let owners = self.local.values().cloned().collect();
        let modelled = started.elapsed();
        let model = match (status, &self.model) {
            (Ok(()), Some(model)) => model,
            (Err(e), _) => {
                return Computed {
                    program: None,
                    errors: vec![e.to_string()],
                    owners,
                    timings: (modelled, Duration::ZERO),
                }
            }
            (Ok(()), None) => unreachable!("a model that built is kept"),
        };
        match model.cluster() {
            Ok(cluster) => {
                let started = Instant::now();
                let program = program(cluster, node);
                Computed {
                    program: Some(program),
                    errors: model.skipped().iter().map(ToString::to_string).collect(),
                    owners,
                    timings: (modelled, started.elapsed()),
                }
            }
            Err(e) => Computed {
                program: None,
                errors: vec![e.to_string()],
                owners,
                timings: (modelled, Duration::ZERO),
            },
        }
    }
}

fn owners(inputs: &[Resource], node: &str) -> BTreeMap<String, String> {
    inputs
        .iter()
        .filter_map(|r| match r {
            Resource::WorkloadEndpoint(wep) => local_interface(wep, node),
            _ => None,
        })
        .collect()
}

fn local_interface(wep: &WorkloadEndpoint, node: &str) -> Option<(String, String)> {
    let s = &wep.spec;
    (s.node == node && !s.interface_name.is_empty()).then(|| {
        (
            s.interface_name.clone(),
            s.container_id.clone().unwrap_or_default(),
        )
    })
}

/// What one apply of a program did ([`PolicyTables::apply`], or the iptables dataplane's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Change {
    /// nftables: both tables replaced in one transaction (the first program, after a table
    /// went missing, or after an update nft refused).
    Replaced,
    /// Only what differs rewritten (and set members updated): nftables, the chains, sets and
    /// dispatch-map elements that changed ([`nft_policy::update`]); iptables, the chains
    /// whose rules changed.
    Chains,
    /// Only set members changed, in place.
    Sets,
    /// Nothing to do.
    Unchanged,
}

/// The policy tables, and the program they hold.
#[derive(Debug)]
pub struct PolicyTables<R: NftRunner> {
    runner: R,
    /// The program the kernel holds, as far as the agent knows; `None` before the first
    /// apply (the tables are then replaced whatever they hold) and after a failure that
    /// leaves their state unknown.
    applied: Option<Program>,
}

impl<R: NftRunner> PolicyTables<R> {
    pub fn new(runner: R) -> PolicyTables<R> {
        PolicyTables {
            runner,
            applied: None,
        }
    }

    /// The program last applied.
    pub fn applied(&self) -> Option<&Program> {
        self.applied.as_ref()
    }

    /// Checks that both tables still exist (someone may have flushed the ruleset); when one
    /// is missing, the next [`apply`](Self::apply) replaces both whatever the program.
    /// Returns whether one was missing. The agent calls it on its periodic resync.
    pub fn forget_if_missing(&mut self) -> Result<bool, margay_nft::Error> {
        if self.applied.is_none() {
            return Ok(false);
        }
        for family in ["ip", "ip6"] {
            if self.runner.list_table(family, POLICY_TABLE)?.is_none() {
                self.applied = None;
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Deletes both policy tables if either exists, in one transaction, touching nothing
    /// else (the NAT table `margay` stays). Returns whether there was any. The next
    /// [`apply`](Self::apply) loads them whole.
    pub fn remove(&mut self) -> Result<bool, margay_nft::Error> {
        self.applied = None;
        let mut present = false;
        for family in FAMILIES {
            let name = table_family(family).as_str();
            present |= self.runner.list_table(name, POLICY_TABLE)?.is_some();
        }
        if present {
            let tables = FAMILIES
                .iter()
                .map(|&f| Table::new(table_family(f), POLICY_TABLE))
                .collect();
            self.runner.run(&Ruleset { tables }.render_removal())?;
        }
        Ok(present)
    }

    /// Brings the tables to `program`: the first time (and whenever the tables' state is
    /// unknown) by replacing both, afterwards by updating both in place, in one transaction,
    /// from the program last applied. On failure the tables are as they were (every script is
    /// one transaction) and the next apply retries.
    pub fn apply(&mut self, program: Program) -> Result<Change, margay_nft::Error> {
        let old = self.applied.take();
        // Endpoints whose policies changed together keep naming the same group chain.
        let program = match &old {
            Some(old) => program.reusing_groups(old),
            None => program,
        };
        let change = match &old {
            Some(old) if *old == program => Change::Unchanged,
            Some(old) => {
                let script: String = FAMILIES
                    .iter()
                    .map(|&f| nft_policy::update(old, &program, f))
                    .collect();
                if script.is_empty() {
                    Change::Unchanged
                } else if let Err(e) = self.runner.run(&script) {
                    // nft refuses to delete an element or chain that is not there: someone
                    // changed the tables. Replacing them restores the program whatever they
                    // hold; if that fails too, their state is unknown (`applied` stays
                    // `None`).
                    tracing::warn!(error = %e, "updating the policy tables in place failed; replacing them");
                    replace(&mut self.runner, &program)?;
                    Change::Replaced
                } else if members_only(&script) {
                    Change::Sets
                } else {
                    Change::Chains
                }
            }
            None => {
                replace(&mut self.runner, &program)?;
                Change::Replaced
            }
        };
        self.applied = Some(program);
        Ok(change)
    }
}

/// Whether an update script only changes set members: then [`nft_policy::update`] wrote
/// nothing but element lines of address and named-port sets (endpoints coming or going
/// change chains and the dispatch maps too).
fn members_only(script: &str) -> bool {
    script.lines().all(|line| {
        let mut words = line.split_whitespace();
        let verb = (words.next(), words.next());
        let set = words.nth(2).unwrap_or_default();
        matches!(verb, (Some("add" | "delete"), Some("element")))
            && (set.starts_with("s-") || set.starts_with("np-"))
    })
}

fn table_family(family: AddressFamily) -> margay_nft::ruleset::Family {
    match family {
        AddressFamily::Ipv4 => margay_nft::ruleset::Family::Ip,
        AddressFamily::Ipv6 => margay_nft::ruleset::Family::Ip6,
    }
}

fn replace<R: NftRunner>(runner: &mut R, program: &Program) -> Result<(), margay_nft::Error> {
    let script: String = FAMILIES
        .iter()
        .map(|&f| nft_policy::render(program, f))
        .collect();
    runner.run(&script)
}

/// What a program holds, as `/status` and the metrics count it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Counts {
    /// Policies with a chain for at least one local endpoint.
    pub policies: usize,
    pub profiles: usize,
    pub endpoints: usize,
    /// This node's host endpoints with chains.
    pub host_endpoints: usize,
    /// Address sets and named-port sets.
    pub sets: usize,
    /// Rules of the policy and profile chains.
    pub rules: usize,
}

impl Counts {
    pub fn of(program: &Program) -> Counts {
        let policies: HashSet<_> = program.policies.values().map(|c| &c.policy).collect();
        let profiles: HashSet<_> = program.profiles.values().map(|c| &c.profile).collect();
        let rules = program
            .policies
            .values()
            .map(|c| c.rules.len())
            .sum::<usize>()
            + program
                .profiles
                .values()
                .map(|c| c.rules.len())
                .sum::<usize>();
        Counts {
            policies: policies.len(),
            profiles: profiles.len(),
            endpoints: program.endpoints.len(),
            host_endpoints: program.host_endpoints.len(),
            sets: program.ip_sets.len() + program.port_sets.len(),
            rules,
        }
    }
}

/// The programmed interfaces of `program`, each with the container ID from `owners`.
pub fn programmed(
    program: &Program,
    owners: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    program
        .endpoints
        .keys()
        .map(|iface| {
            (
                iface.clone(),
                owners.get(iface).cloned().unwrap_or_default(),
            )
        })
        .collect()
}

/// Makes `dir` hold exactly one file per interface of `programmed`, named after it and
/// holding the container ID of its endpoint (so that a file left from an earlier sandbox of
/// the same pod, whose interface has the same name, does not count for the new one). Each
/// file is written to a temporary name and renamed into place, so a reader sees it whole or
/// not at all; files of interfaces no longer programmed are removed. Unchanged files are
/// left alone.
pub fn record_programmed(dir: &Path, programmed: &BTreeMap<String, String>) -> io::Result<()> {
    let context = |what: &str, path: &Path, e: io::Error| {
        io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
    };
    std::fs::create_dir_all(dir).map_err(|e| context("creating", dir, e))?;
    let entries = std::fs::read_dir(dir).map_err(|e| context("reading", dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| context("reading", dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        // Temporary files of an interrupted write start with a dot; they go too.
        if !programmed.contains_key(&name) {
            let path = entry.path();
            std::fs::remove_file(&path).map_err(|e| context("removing", &path, e))?;
        }
    }
    for (iface, container) in programmed {
        let path = dir.join(iface);
        let content = format!("{container}\n");
        if std::fs::read_to_string(&path).is_ok_and(|c| c == content) {
            continue;
        }
        let tmp = dir.join(format!(".{iface}.tmp"));
        std::fs::write(&tmp, &content).map_err(|e| context("writing", &tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| context("renaming", &path, e))?;
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Records scripts; fails the runs it is told to; lists a table unless it is `gone`.
    #[derive(Default)]
    struct Recorder {
        scripts: Vec<String>,
        fail: usize,
        gone: Option<&'static str>,
    }

    impl NftRunner for Recorder {
        fn run(&mut self, script: &str) -> Result<(), margay_nft::Error> {
            if self.fail > 0 {
                self.fail -= 1;
                return Err(margay_nft::Error::Failed {
                    command: "nft -f -".into(),
                    stderr: "refused".into(),
                });
            }
            self.scripts.push(script.to_owned());
            Ok(())
        }

        fn list_table(
            &mut self,
            family: &str,
            table: &str,
        ) -> Result<Option<String>, margay_nft::Error> {
            assert_eq!(table, POLICY_TABLE);
            let gone = self.gone == Some(family) || self.gone == Some("both");
            Ok((!gone).then(|| format!("table {family} {table} {{}}")))
        }
    }

    fn inputs(yaml: &str) -> Vec<Resource> {
        margay_api::parse_documents(yaml)
            .unwrap()
            .into_iter()
            .map(|doc| margay_api::decode(doc).unwrap().resource)
            .collect()
    }

    /// Pods x/a (on n1, interface mgya) and x/b (on n2), plus `more`.
    pub(crate) fn cluster(b_ip: &str, more: &str) -> Vec<Resource> {
        let mut yaml = format!(
            r#"
apiVersion: margay.dev/v1
kind: WorkloadEndpoint
metadata: {{name: n1-k8s-a-eth0, namespace: x, labels: {{app: a}}}}
spec: {{node: n1, orchestrator: k8s, pod: a, endpoint: eth0, containerID: cid-a,
        interfaceName: mgya, ipNetworks: [10.0.0.1/32], profiles: [kns.x]}}
---
apiVersion: margay.dev/v1
kind: WorkloadEndpoint
metadata: {{name: n2-k8s-b-eth0, namespace: x, labels: {{app: b}}}}
spec: {{node: n2, orchestrator: k8s, pod: b, endpoint: eth0, containerID: cid-b,
        interfaceName: mgyb, ipNetworks: [{b_ip}], profiles: [kns.x]}}
"#
        );
        yaml.push_str(more);
        inputs(&yaml)
    }

    pub(crate) const FROM_B: &str = r#"
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: from-b, namespace: x}
spec:
  podSelector: {matchLabels: {app: a}}
  ingress: [{from: [{podSelector: {matchLabels: {app: b}}}]}]
"#;

    /// A policy in a tier that does not exist: left out and reported.
    const BAD_TIER: &str = r#"
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: missing.p}
spec: {tier: missing, selector: all(), types: [Ingress]}
"#;

    /// The same program, errors and interface owners.
    fn assert_same(got: &Computed, want: &Computed) {
        assert_eq!(got.program, want.program);
        assert_eq!(got.errors, want.errors);
        assert_eq!(got.owners, want.owners);
    }

    #[test]
    fn the_program_owners_and_errors_of_a_node() {
        let computed = compute(cluster("10.0.0.2/32", &format!("{FROM_B}{BAD_TIER}")), "n1");
        let program = computed.program.unwrap();
        assert_eq!(program.endpoints.keys().collect::<Vec<_>>(), ["mgya"]);
        assert_eq!(
            computed.errors,
            [
                "GlobalNetworkPolicy missing.p: tier \"missing\" does not exist (add a Tier \
              resource for it)"
            ]
        );
        assert_eq!(
            computed.owners,
            BTreeMap::from([("mgya".to_owned(), "cid-a".to_owned())])
        );
        assert_eq!(
            Counts::of(&program),
            Counts {
                policies: 1,
                profiles: 1,
                endpoints: 1,
                host_endpoints: 0,
                sets: 1,
                rules: 3,
            }
        );
    }

    #[test]
    fn rules_changes_replace_the_tables_and_member_changes_update_sets() {
        let mut tables = PolicyTables::new(Recorder::default());
        let first = compute(cluster("10.0.0.2/32", FROM_B), "n1")
            .program
            .unwrap();
        assert_eq!(tables.apply(first.clone()).unwrap(), Change::Replaced);
        let script = &tables.runner.scripts[0];
        assert!(script.contains("delete table ip margay-policy"), "{script}");
        assert!(
            script.contains("delete table ip6 margay-policy"),
            "{script}"
        );
        assert!(script.contains("10.0.0.2"), "{script}");
        assert_eq!(tables.apply(first).unwrap(), Change::Unchanged);
        assert_eq!(tables.runner.scripts.len(), 1);

        // Pod b moves to another address: only the set changes, in place.
        let moved = compute(cluster("10.0.0.3/32", FROM_B), "n1")
            .program
            .unwrap();
        assert_eq!(tables.apply(moved.clone()).unwrap(), Change::Sets);
        let update = tables.runner.scripts.last().unwrap();
        assert!(
            update.starts_with("delete element ip margay-policy"),
            "{update}"
        );
        assert!(update.contains("add element ip margay-policy"), "{update}");
        assert!(!update.contains("table ip"), "{update}");

        // No policy any more: the rules change, updated in place in one transaction.
        let open = compute(cluster("10.0.0.3/32", ""), "n1").program.unwrap();
        assert_eq!(tables.apply(open).unwrap(), Change::Chains);
        assert_eq!(tables.applied().unwrap().policies.len(), 0);
        let update = tables.runner.scripts.last().unwrap();
        assert!(!update.contains("delete table"), "{update}");
        assert!(update.contains("delete chain ip margay-policy"), "{update}");
        // No endpoint has an IPv6 address: that table holds only the drops, unchanged.
        assert!(!update.contains("ip6 margay-policy"), "{update}");
    }

    #[test]
    fn a_policy_added_for_endpoints_sharing_a_group_rewrites_the_group_not_their_chains() {
        let mut tables = PolicyTables::new(Recorder::default());
        let first = compute(cluster("10.0.0.2/32", FROM_B), "n1")
            .program
            .unwrap();
        tables.apply(first.clone()).unwrap();
        let also = r#"
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: also}
spec: {selector: app == 'a', ingress: [{action: Deny, protocol: UDP}]}
"#;
        let second = compute(cluster("10.0.0.2/32", &format!("{FROM_B}{also}")), "n1")
            .program
            .unwrap();
        assert_eq!(tables.apply(second).unwrap(), Change::Chains);
        let update = tables.runner.scripts.last().unwrap();
        let group = &first.endpoints["mgya"].ingress.tiers[0]
            .group
            .clone()
            .unwrap();
        assert!(
            update.contains(&format!("flush chain ip margay-policy {group}\n")),
            "{update}"
        );
        assert!(!update.contains("tw-mgya"), "{update}");
        assert_eq!(
            tables.applied().unwrap().endpoints["mgya"].ingress.tiers[0]
                .group
                .as_ref(),
            Some(group)
        );
    }

    #[test]
    fn the_model_kept_across_syncs_gives_what_a_fresh_build_gives() {
        let mut model = PolicyModel::new();
        for (b_ip, more) in [
            ("10.0.0.2/32", FROM_B.to_owned()),
            ("10.0.0.3/32", FROM_B.to_owned()),
            ("10.0.0.3/32", format!("{FROM_B}{BAD_TIER}")),
            ("10.0.0.3/32", String::new()),
            ("10.0.0.2/32", FROM_B.to_owned()),
        ] {
            let kept = model.compute(cluster(b_ip, &more), "n1");
            let fresh = compute(cluster(b_ip, &more), "n1");
            assert_same(&kept, &fresh);
        }
    }

    #[test]
    fn changes_applied_one_by_one_give_what_the_snapshot_gives() {
        let mut model = PolicyModel::new();
        assert!(model.apply(Vec::new(), "n1").is_none(), "no snapshot yet");
        model.compute(cluster("10.0.0.2/32", FROM_B), "n1");
        let key = |r: &Resource| ResourceKey::of_resource(r);
        let policy = |inputs: &[Resource]| {
            inputs
                .iter()
                .find(|r| !matches!(r, Resource::WorkloadEndpoint(_)))
                .cloned()
                .unwrap()
        };
        let moved = cluster("10.0.0.3/32", FROM_B);
        let b = moved.iter().find(|r| r.metadata().name == "n2-k8s-b-eth0");
        // Pod b moves, a new local pod c arrives, the policy goes, pod a goes.
        let c = inputs(
            r#"
apiVersion: margay.dev/v1
kind: WorkloadEndpoint
metadata: {name: n1-k8s-c-eth0, namespace: x, labels: {app: c}}
spec: {node: n1, orchestrator: k8s, pod: c, endpoint: eth0, containerID: cid-c,
       interfaceName: mgyc, ipNetworks: [10.0.0.9/32], profiles: [kns.x]}
"#,
        );
        let a = cluster("10.0.0.2/32", "")
            .into_iter()
            .find(|r| r.metadata().name == "n1-k8s-a-eth0")
            .unwrap();
        let steps: Vec<(Vec<ModelChange>, Vec<Resource>)> = vec![
            (vec![ModelChange::Upsert(b.unwrap().clone())], moved.clone()),
            (
                vec![ModelChange::Upsert(c[0].clone())],
                [moved.clone(), c.clone()].concat(),
            ),
            (
                vec![ModelChange::Delete(key(&policy(&moved)))],
                [cluster("10.0.0.3/32", ""), c.clone()].concat(),
            ),
            (
                vec![ModelChange::Delete(key(&a))],
                [cluster("10.0.0.3/32", ""), c.clone()]
                    .concat()
                    .into_iter()
                    .filter(|r| r.metadata().name != "n1-k8s-a-eth0")
                    .collect(),
            ),
        ];
        for (changes, snapshot) in steps {
            let applied = model.apply(changes, "n1").unwrap();
            let fresh = compute(snapshot, "n1");
            assert_same(&applied, &fresh);
        }
    }

    #[test]
    fn a_failed_apply_keeps_the_last_program_and_is_retried() {
        let mut tables = PolicyTables::new(Recorder::default());
        let first = compute(cluster("10.0.0.2/32", FROM_B), "n1")
            .program
            .unwrap();
        tables.apply(first.clone()).unwrap();
        let open = compute(cluster("10.0.0.2/32", ""), "n1").program.unwrap();
        // The update and the replacement both refused: the tables' state is unknown, and
        // the next apply replaces them.
        tables.runner.fail = 2;
        assert_eq!(
            tables.apply(open.clone()).unwrap_err().to_string(),
            "nft -f -: refused"
        );
        assert_eq!(tables.applied(), None);
        assert_eq!(tables.apply(open.clone()).unwrap(), Change::Replaced);
        // The first apply refused: still nothing applied, replaced on the retry.
        let mut fresh = PolicyTables::new(Recorder::default());
        fresh.runner.fail = 1;
        assert!(fresh.apply(first.clone()).is_err());
        assert_eq!(fresh.applied(), None);
        assert_eq!(fresh.apply(first).unwrap(), Change::Replaced);

        // Updates refused (the tables were changed behind the agent's back): replaced.
        let back = compute(cluster("10.0.0.2/32", FROM_B), "n1")
            .program
            .unwrap();
        let moved = compute(cluster("10.0.0.3/32", FROM_B), "n1")
            .program
            .unwrap();
        tables.apply(back).unwrap();
        tables.runner.fail = 1;
        let before = tables.runner.scripts.len();
        assert_eq!(tables.apply(moved).unwrap(), Change::Replaced);
        assert_eq!(tables.runner.scripts.len(), before + 1);
        assert!(tables
            .runner
            .scripts
            .last()
            .unwrap()
            .contains("delete table"));
    }

    #[test]
    fn a_table_that_vanished_is_replaced_on_the_next_apply() {
        let mut tables = PolicyTables::new(Recorder::default());
        let program = compute(cluster("10.0.0.2/32", FROM_B), "n1")
            .program
            .unwrap();
        assert!(!tables.forget_if_missing().unwrap(), "nothing applied yet");
        tables.apply(program.clone()).unwrap();
        assert!(!tables.forget_if_missing().unwrap());
        assert_eq!(tables.apply(program.clone()).unwrap(), Change::Unchanged);
        tables.runner.gone = Some("ip6");
        assert!(tables.forget_if_missing().unwrap());
        assert_eq!(tables.apply(program).unwrap(), Change::Replaced);
    }

    #[test]
    fn removing_deletes_both_tables_only_when_there_are_any() {
        let mut tables = PolicyTables::new(Recorder::default());
        tables.runner.gone = Some("both");
        assert!(!tables.remove().unwrap());
        assert!(tables.runner.scripts.is_empty());
        tables.runner.gone = Some("ip");
        assert!(tables.remove().unwrap());
        assert_eq!(
            tables.runner.scripts,
            ["table ip margay-policy {}\ndelete table ip margay-policy\n\
              table ip6 margay-policy {}\ndelete table ip6 margay-policy\n"]
        );
        // Whatever was applied before, the next program loads the tables whole.
        let program = compute(cluster("10.0.0.2/32", FROM_B), "n1")
            .program
            .unwrap();
        tables.apply(program.clone()).unwrap();
        tables.remove().unwrap();
        assert_eq!(tables.applied(), None);
        assert_eq!(tables.apply(program).unwrap(), Change::Replaced);
    }

    #[test]
    fn programmed_interfaces_are_recorded_one_file_each() {
        let dir = tempfile::tempdir().unwrap();
        let policy = dir.path().join(PROGRAMMED_DIR);
        let first = BTreeMap::from([
            ("mgya".to_owned(), "cid-a".to_owned()),
            ("mgyb".to_owned(), String::new()),
        ]);
        record_programmed(&policy, &first).unwrap();
        std::fs::write(policy.join(".mgyz.tmp"), "debris").unwrap();
        assert_eq!(
            std::fs::read_to_string(policy.join("mgya")).unwrap(),
            "cid-a\n"
        );
        assert_eq!(std::fs::read_to_string(policy.join("mgyb")).unwrap(), "\n");
        let second = BTreeMap::from([("mgya".to_owned(), "cid-a2".to_owned())]);
        record_programmed(&policy, &second).unwrap();
        let mut names: Vec<String> = std::fs::read_dir(&policy)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["mgya"]);
        assert_eq!(
            std::fs::read_to_string(policy.join("mgya")).unwrap(),
            "cid-a2\n"
        );
    }
}
