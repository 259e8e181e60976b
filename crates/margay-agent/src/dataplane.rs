//! Which dataplane enforces this node's policy program, as `AgentConfiguration.dataplane`
//! chooses, and switching between them while the agent runs.
//!
//! - **nftables** (the default): Margay's policy tables, `table ip margay-policy` and
//!   `table ip6 margay-policy` ([`PolicyTables`]).
//! - **iptables**: Felix's layout, the `mgy-` chains of the filter table and the `mgy4…` /
//!   `mgy6…` ipsets, in both families ([`IptablesPolicy`], one
//!   [`margay_iptables::Applier`] per family). It runs the binaries `iptables-restore` and
//!   `iptables-save` name on the host (iptables-nft or iptables-legacy, whichever the
//!   distribution selects), in the agent's own network namespace.
//!
//! [`PolicyDataplanes::program`] applies the program to the chosen dataplane first and only
//! then removes everything of the other one, so no workload is ever without rules: while both
//! hold rules (one apply's time), a packet must pass both, and both drop traffic of workload
//! interfaces they do not know. Until the old one is gone, a pod that only the new program
//! knows is therefore still cut off, and a connection both allow flows. If the chosen
//! dataplane cannot be programmed, the other keeps enforcing what it had and nothing is
//! removed; the next sync tries again.
//!
//! The dataplane not chosen is cleaned once per switch, and once after the agent starts
//! (leftovers of a switch made while the agent was down). A removal that fails is retried on
//! every sync until it succeeds. A tool that is not installed at all (no `nft`, no
//! `iptables-save`) has nothing to remove.

use std::io;

use margay_api::Dataplane;
use margay_iptables::{Applier, Family, Iptables};
use margay_nft::NftRunner;
use margay_policy::program::Program;

use crate::policy::{Change, PolicyTables};

/// Programming one dataplane failed.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error(transparent)]
    Nft(#[from] margay_nft::Error),
    #[error(transparent)]
    Iptables(#[from] margay_iptables::Error),
}

impl PolicyError {
    /// The `kind` of `margay_agent_apply_errors_total`: `nft` or `iptables`.
    pub fn kind(&self) -> &'static str {
        match self {
            PolicyError::Nft(_) => "nft",
            PolicyError::Iptables(_) => "iptables",
        }
    }

    /// The tool could not be started because it is not installed.
    fn tool_missing(&self) -> bool {
        let error = match self {
            PolicyError::Nft(margay_nft::Error::Spawn { error, .. }) => error,
            PolicyError::Iptables(margay_iptables::Error::Spawn { error, .. }) => error,
            _ => return false,
        };
        error.kind() == io::ErrorKind::NotFound
    }
}

/// The iptables dataplane: the program in both families' filter tables and ipsets.
#[derive(Debug)]
pub struct IptablesPolicy<I: Iptables> {
    v4: Applier<I>,
    v6: Applier<I>,
    /// The program both families last took.
    applied: Option<Program>,
}

impl<I: Iptables + Clone> IptablesPolicy<I> {
    pub fn new(runner: I) -> IptablesPolicy<I> {
        IptablesPolicy {
            v4: Applier::new(runner.clone(), Family::V4),
            v6: Applier::new(runner, Family::V6),
            applied: None,
        }
    }
}

impl<I: Iptables> IptablesPolicy<I> {
    /// The program last applied to both families.
    pub fn applied(&self) -> Option<&Program> {
        self.applied.as_ref()
    }

    /// Brings both families to `program`, changing only what differs: from what the kernel
    /// holds the first time (so a restart changes nothing) and after any failure, from what
    /// was applied since. A failure leaves the family that failed to be read back from the
    /// kernel on the next apply.
    pub fn apply(&mut self, program: Program) -> Result<Change, margay_iptables::Error> {
        // Endpoints whose policies changed together keep jumping to the same group chain.
        let program = match &self.applied {
            Some(old) => program.reusing_groups(old),
            None => program,
        };
        let ran_v4 = self.v4.apply(&program)?;
        let ran_v6 = self.v6.apply(&program)?;
        let change = if !(ran_v4 || ran_v6) {
            Change::Unchanged
        } else if self
            .applied
            .as_ref()
            .is_some_and(|old| only_members_differ(old, &program))
        {
            Change::Sets
        } else {
            Change::Chains
        };
        self.applied = Some(program);
        Ok(change)
    }

    /// Removes every `mgy-` chain, Margay's rules in `INPUT`, `FORWARD` and `OUTPUT` and
    /// every `mgy4…`/`mgy6…` set, as the kernel holds them. Returns whether there was any.
    pub fn remove(&mut self) -> Result<bool, margay_iptables::Error> {
        self.applied = None;
        let v4 = self.v4.remove_all()?;
        let v6 = self.v6.remove_all()?;
        Ok(v4 || v6)
    }

    /// The next apply reads the kernel again and repairs whatever differs (the periodic
    /// resync, as Felix's `iptablesRefreshInterval`).
    pub fn forget(&mut self) {
        self.v4.forget();
        self.v6.forget();
    }
}

/// Whether `old` and `new` have the same chains and differ only in set members.
fn only_members_differ(old: &Program, new: &Program) -> bool {
    old.endpoints == new.endpoints
        && old.host_endpoints == new.host_endpoints
        && old.endpoint_to_host == new.endpoint_to_host
        && old.exemptions == new.exemptions
        && old.policies == new.policies
        && old.profiles == new.profiles
        && old.ip_sets.keys().eq(new.ip_sets.keys())
        && old.port_sets.keys().eq(new.port_sets.keys())
}

/// The other dataplane.
fn other(dataplane: Dataplane) -> Dataplane {
    match dataplane {
        Dataplane::Nftables => Dataplane::Iptables,
        Dataplane::Iptables => Dataplane::Nftables,
    }
}

/// What one [`PolicyDataplanes::program`] did.
#[derive(Debug)]
pub struct Programmed {
    /// Applying the program to the chosen dataplane. On an error, the dataplane active before
    /// (if any) still holds its program.
    pub change: Result<Change, PolicyError>,
    /// The dataplane that held the program before this call, when this call switched away
    /// from it.
    pub switched_from: Option<Dataplane>,
    /// The dataplane not chosen, cleaned after the apply: whether it held anything, or why
    /// removing failed (retried on the next call). `None` when it was known to be clean.
    pub removed: Option<(Dataplane, Result<bool, PolicyError>)>,
}

/// Both dataplanes, and which one holds the program.
#[derive(Debug)]
pub struct PolicyDataplanes<N: NftRunner, I: Iptables> {
    nft: PolicyTables<N>,
    iptables: IptablesPolicy<I>,
    /// The dataplane that holds the program: the last one applied successfully.
    active: Option<Dataplane>,
    /// Whether the dataplane not active is known to hold nothing of Margay's: false when
    /// the agent starts, after a switch, and while its removal fails.
    other_clean: bool,
}

impl<N: NftRunner, I: Iptables + Clone> PolicyDataplanes<N, I> {
    pub fn new(nft: N, iptables: I) -> PolicyDataplanes<N, I> {
        PolicyDataplanes {
            nft: PolicyTables::new(nft),
            iptables: IptablesPolicy::new(iptables),
            active: None,
            other_clean: false,
        }
    }
}

impl<N: NftRunner, I: Iptables> PolicyDataplanes<N, I> {
    /// The dataplane that holds the program; `None` before the first successful apply.
    pub fn active(&self) -> Option<Dataplane> {
        self.active
    }

    /// The program the active dataplane holds.
    pub fn applied(&self) -> Option<&Program> {
        match self.active? {
            Dataplane::Nftables => self.nft.applied(),
            Dataplane::Iptables => self.iptables.applied(),
        }
    }

    /// On the periodic resync: makes the next [`program`](Self::program) repair the active
    /// dataplane if someone changed it behind the agent's back. nftables: if a policy table is
    /// gone, both are replaced (returns true); iptables: the kernel's chains and sets are read
    /// back and whatever differs is rewritten.
    pub fn recheck(&mut self) -> Result<bool, PolicyError> {
        match self.active {
            Some(Dataplane::Nftables) => Ok(self.nft.forget_if_missing()?),
            Some(Dataplane::Iptables) => {
                self.iptables.forget();
                Ok(false)
            }
            None => Ok(false),
        }
    }

    /// Applies `program` to `chosen`, then, if the other dataplane may hold anything of
    /// Margay's, removes it. Nothing is removed unless the apply succeeded.
    pub fn program(&mut self, chosen: Dataplane, program: Program) -> Programmed {
        let change = match chosen {
            Dataplane::Nftables => self.nft.apply(program).map_err(PolicyError::from),
            Dataplane::Iptables => self.iptables.apply(program).map_err(PolicyError::from),
        };
        if change.is_err() {
            return Programmed {
                change,
                switched_from: None,
                removed: None,
            };
        }
        let previous = self.active.replace(chosen);
        if previous != Some(chosen) {
            self.other_clean = false;
        }
        let removed = (!self.other_clean).then(|| {
            let stale = other(chosen);
            let result = match stale {
                Dataplane::Nftables => self.nft.remove().map_err(PolicyError::from),
                Dataplane::Iptables => self.iptables.remove().map_err(PolicyError::from),
            };
            let result = match result {
                Err(e) if e.tool_missing() => Ok(false),
                other => other,
            };
            self.other_clean = result.is_ok();
            (stale, result)
        });
        Programmed {
            change,
            switched_from: previous.filter(|p| *p != chosen),
            removed,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::rc::Rc;

    use margay_iptables::FakeIptables;
    use margay_nft::policy::POLICY_TABLE;

    use super::*;
    use crate::policy::compute;
    use crate::policy::tests::{cluster, FROM_B};

    /// Everything either dataplane's tools were asked to do, in order.
    type Log = Rc<RefCell<Vec<String>>>;

    /// nft: which policy tables exist; scripts logged as `nft replace`, `nft sets`, `nft
    /// remove`.
    #[derive(Clone)]
    struct FakeNft {
        log: Log,
        tables: Rc<RefCell<bool>>,
        fail: Rc<RefCell<usize>>,
        missing: bool,
    }

    impl NftRunner for FakeNft {
        fn run(&mut self, script: &str) -> Result<(), margay_nft::Error> {
            if self.missing {
                return Err(margay_nft::Error::Spawn {
                    command: "nft -f -".into(),
                    error: io::ErrorKind::NotFound.into(),
                });
            }
            let what = if script.starts_with("delete element") || script.starts_with("add") {
                "nft sets"
            } else if script.lines().any(|l| l.trim_start().starts_with("chain ")) {
                "nft replace"
            } else {
                "nft remove"
            };
            if std::mem::take(&mut *self.fail.borrow_mut()) > 0 {
                return Err(margay_nft::Error::Failed {
                    command: "nft -f -".into(),
                    stderr: "refused".into(),
                });
            }
            self.log.borrow_mut().push(what.into());
            match what {
                "nft replace" => *self.tables.borrow_mut() = true,
                "nft remove" => *self.tables.borrow_mut() = false,
                _ => {}
            }
            Ok(())
        }

        fn list_table(
            &mut self,
            family: &str,
            table: &str,
        ) -> Result<Option<String>, margay_nft::Error> {
            assert_eq!(table, POLICY_TABLE);
            if self.missing {
                return Err(margay_nft::Error::Spawn {
                    command: "nft list table".into(),
                    error: io::ErrorKind::NotFound.into(),
                });
            }
            Ok((*self.tables.borrow()).then(|| format!("table {family} {table} {{}}")))
        }
    }

    /// iptables and ipset: one model of the kernel shared by both families' appliers;
    /// writes logged as `iptables-restore v4`, `ip6tables-restore v6`, `ipset restore`.
    #[derive(Clone)]
    struct FakeIpt {
        log: Log,
        kernel: Rc<RefCell<FakeIptables>>,
        fail: Rc<RefCell<usize>>,
    }

    impl Iptables for FakeIpt {
        fn restore(&mut self, family: Family, input: &str) -> Result<(), margay_iptables::Error> {
            if std::mem::take(&mut *self.fail.borrow_mut()) > 0 {
                return Err(margay_iptables::Error::Failed {
                    command: "iptables-restore --noflush".into(),
                    stderr: "refused".into(),
                });
            }
            self.log
                .borrow_mut()
                .push(format!("iptables-restore v{}", family.version()));
            self.kernel.borrow_mut().restore(family, input)
        }

        fn save(&mut self, family: Family) -> Result<String, margay_iptables::Error> {
            self.kernel.borrow_mut().save(family)
        }

        fn ipset_restore(&mut self, input: &str) -> Result<(), margay_iptables::Error> {
            self.log.borrow_mut().push("ipset restore".into());
            self.kernel.borrow_mut().ipset_restore(input)
        }

        fn ipset_save(&mut self) -> Result<String, margay_iptables::Error> {
            self.kernel.borrow_mut().ipset_save()
        }
    }

    struct Node {
        log: Log,
        nft_tables: Rc<RefCell<bool>>,
        nft_fail: Rc<RefCell<usize>>,
        ipt_fail: Rc<RefCell<usize>>,
        kernel: Rc<RefCell<FakeIptables>>,
        dataplanes: PolicyDataplanes<FakeNft, FakeIpt>,
    }

    impl Node {
        fn new() -> Node {
            Node::with_nft(false)
        }

        /// `missing`: a host without the nft binary.
        fn with_nft(missing: bool) -> Node {
            let log = Log::default();
            let nft = FakeNft {
                log: log.clone(),
                tables: Rc::default(),
                fail: Rc::default(),
                missing,
            };
            let ipt = FakeIpt {
                log: log.clone(),
                kernel: Rc::default(),
                fail: Rc::default(),
            };
            Node {
                log,
                nft_tables: nft.tables.clone(),
                nft_fail: nft.fail.clone(),
                ipt_fail: ipt.fail.clone(),
                kernel: ipt.kernel.clone(),
                dataplanes: PolicyDataplanes::new(nft, ipt),
            }
        }

        /// The log since the last call.
        fn take(&self) -> Vec<String> {
            std::mem::take(&mut *self.log.borrow_mut())
        }

        /// Whether the fake kernel holds anything of Margay's in iptables or ipset.
        fn iptables_holds_margay(&self) -> bool {
            let mut kernel = self.kernel.borrow_mut();
            let dump = [
                kernel.save(Family::V4).unwrap(),
                kernel.save(Family::V6).unwrap(),
                kernel.ipset_save().unwrap(),
            ]
            .concat();
            dump.contains("mgy")
        }

        fn iptables_forward_rules(&self, family: Family) -> bool {
            self.kernel
                .borrow_mut()
                .save(family)
                .unwrap()
                .lines()
                .any(|l| l.starts_with("-A FORWARD ") && l.ends_with(" -j mgy-FORWARD"))
        }
    }

    fn program(b_ip: &str) -> Program {
        compute(cluster(b_ip, FROM_B), "n1").program.unwrap()
    }

    fn iptables_writes(log: &[String]) -> usize {
        log.iter().filter(|l| !l.starts_with("nft")).count()
    }

    #[test]
    fn starting_on_nftables_replaces_the_tables_then_clears_iptables_once() {
        let mut node = Node::new();
        let done = node
            .dataplanes
            .program(Dataplane::Nftables, program("10.0.0.2/32"));
        assert_eq!(done.change.unwrap(), Change::Replaced);
        assert_eq!(done.switched_from, None);
        assert!(matches!(
            done.removed,
            Some((Dataplane::Iptables, Ok(false)))
        ));
        // Nothing of Margay's in iptables: read, nothing written.
        assert_eq!(node.take(), ["nft replace"]);
        assert_eq!(node.dataplanes.active(), Some(Dataplane::Nftables));

        // Known clean from now on: only set updates, no more look at iptables.
        let done = node
            .dataplanes
            .program(Dataplane::Nftables, program("10.0.0.3/32"));
        assert_eq!(done.change.unwrap(), Change::Sets);
        assert!(done.removed.is_none());
        assert_eq!(node.take(), ["nft sets"]);
    }

    #[test]
    fn starting_on_iptables_programs_it_then_removes_nftables_leftovers() {
        let mut node = Node::new();
        // Left from a run on nftables, switched while the agent was down.
        *node.nft_tables.borrow_mut() = true;
        let done = node
            .dataplanes
            .program(Dataplane::Iptables, program("10.0.0.2/32"));
        assert_eq!(done.change.unwrap(), Change::Chains);
        assert!(matches!(
            done.removed,
            Some((Dataplane::Nftables, Ok(true)))
        ));
        let log = node.take();
        assert_eq!(log.last().unwrap(), "nft remove", "{log:?}");
        assert!(log.contains(&"iptables-restore v4".to_owned()), "{log:?}");
        assert!(log.contains(&"iptables-restore v6".to_owned()), "{log:?}");
        assert!(!*node.nft_tables.borrow());
        assert!(node.iptables_forward_rules(Family::V4));
        assert!(node.iptables_forward_rules(Family::V6));

        // A pod elsewhere moves: members only, nothing for nft.
        let done = node
            .dataplanes
            .program(Dataplane::Iptables, program("10.0.0.3/32"));
        assert_eq!(done.change.unwrap(), Change::Sets);
        assert!(done.removed.is_none());
        assert_eq!(node.take(), ["ipset restore"]);
        assert_eq!(
            node.dataplanes
                .program(Dataplane::Iptables, program("10.0.0.3/32"))
                .change
                .unwrap(),
            Change::Unchanged
        );
        assert_eq!(node.take(), Vec::<String>::new());
    }

    #[test]
    fn a_switch_programs_the_new_dataplane_before_removing_the_old() {
        let mut node = Node::new();
        node.dataplanes
            .program(Dataplane::Nftables, program("10.0.0.2/32"))
            .change
            .unwrap();
        node.take();

        // nftables → iptables: every iptables write, then the tables go.
        let done = node
            .dataplanes
            .program(Dataplane::Iptables, program("10.0.0.2/32"));
        assert_eq!(done.change.unwrap(), Change::Chains);
        assert_eq!(done.switched_from, Some(Dataplane::Nftables));
        assert!(matches!(
            done.removed,
            Some((Dataplane::Nftables, Ok(true)))
        ));
        let log = node.take();
        let writes = iptables_writes(&log);
        assert!(writes >= 3, "{log:?}");
        assert_eq!(log[writes..], ["nft remove"], "{log:?}");
        assert_eq!(node.dataplanes.active(), Some(Dataplane::Iptables));
        assert_eq!(node.dataplanes.applied(), Some(&program("10.0.0.2/32")));

        // iptables → nftables: the tables first, then every chain, rule and set removed.
        let done = node
            .dataplanes
            .program(Dataplane::Nftables, program("10.0.0.2/32"));
        assert_eq!(done.change.unwrap(), Change::Replaced);
        assert_eq!(done.switched_from, Some(Dataplane::Iptables));
        assert!(matches!(
            done.removed,
            Some((Dataplane::Iptables, Ok(true)))
        ));
        let log = node.take();
        assert_eq!(log[0], "nft replace", "{log:?}");
        assert!(iptables_writes(&log) >= 3, "{log:?}");
        assert!(!node.iptables_holds_margay());
        assert!(*node.nft_tables.borrow());

        // And back again: the state of the first stint is not reused.
        let done = node
            .dataplanes
            .program(Dataplane::Iptables, program("10.0.0.2/32"));
        assert_eq!(done.change.unwrap(), Change::Chains);
        assert!(node.iptables_forward_rules(Family::V4));
        assert_eq!(node.take().last().unwrap(), "nft remove");
    }

    #[test]
    fn a_failed_switch_keeps_the_old_dataplane_and_removes_nothing() {
        let mut node = Node::new();
        node.dataplanes
            .program(Dataplane::Nftables, program("10.0.0.2/32"))
            .change
            .unwrap();
        node.take();
        *node.ipt_fail.borrow_mut() = 1;
        let done = node
            .dataplanes
            .program(Dataplane::Iptables, program("10.0.0.2/32"));
        let error = done.change.unwrap_err();
        assert_eq!(error.kind(), "iptables");
        assert_eq!(error.to_string(), "iptables-restore --noflush: refused");
        assert!(done.removed.is_none());
        assert_eq!(done.switched_from, None);
        assert!(!node.take().contains(&"nft remove".to_owned()));
        assert!(
            *node.nft_tables.borrow(),
            "the old dataplane still enforces"
        );
        assert_eq!(node.dataplanes.active(), Some(Dataplane::Nftables));

        // The next sync switches.
        let done = node
            .dataplanes
            .program(Dataplane::Iptables, program("10.0.0.2/32"));
        assert_eq!(done.change.unwrap(), Change::Chains);
        assert_eq!(node.take().last().unwrap(), "nft remove");
        assert!(node.iptables_forward_rules(Family::V4));
    }

    #[test]
    fn a_failed_removal_is_retried_until_it_succeeds() {
        let mut node = Node::new();
        node.dataplanes
            .program(Dataplane::Nftables, program("10.0.0.2/32"))
            .change
            .unwrap();
        *node.nft_fail.borrow_mut() = 1;
        let done = node
            .dataplanes
            .program(Dataplane::Iptables, program("10.0.0.2/32"));
        assert_eq!(done.change.unwrap(), Change::Chains);
        let (stale, result) = done.removed.unwrap();
        assert_eq!(stale, Dataplane::Nftables);
        assert_eq!(result.unwrap_err().kind(), "nft");
        assert_eq!(node.dataplanes.active(), Some(Dataplane::Iptables));
        node.take();

        let done = node
            .dataplanes
            .program(Dataplane::Iptables, program("10.0.0.2/32"));
        assert_eq!(done.change.unwrap(), Change::Unchanged);
        assert!(matches!(
            done.removed,
            Some((Dataplane::Nftables, Ok(true)))
        ));
        assert_eq!(node.take(), ["nft remove"]);
        let done = node
            .dataplanes
            .program(Dataplane::Iptables, program("10.0.0.2/32"));
        assert!(done.removed.is_none());
    }

    #[test]
    fn a_dataplane_whose_tool_is_not_installed_has_nothing_to_remove() {
        let mut node = Node::with_nft(true);
        let done = node
            .dataplanes
            .program(Dataplane::Iptables, program("10.0.0.2/32"));
        assert_eq!(done.change.unwrap(), Change::Chains);
        assert!(matches!(
            done.removed,
            Some((Dataplane::Nftables, Ok(false)))
        ));
        assert!(node
            .dataplanes
            .program(Dataplane::Iptables, program("10.0.0.2/32"))
            .removed
            .is_none());
    }

    #[test]
    fn the_periodic_recheck_repairs_the_active_dataplane() {
        let mut node = Node::new();
        node.dataplanes
            .program(Dataplane::Iptables, program("10.0.0.2/32"))
            .change
            .unwrap();
        // Someone flushes every table and destroys every set: the agent does not notice
        // until the periodic recheck.
        *node.kernel.borrow_mut() = FakeIptables::new();
        node.take();
        let done = node
            .dataplanes
            .program(Dataplane::Iptables, program("10.0.0.2/32"));
        assert_eq!(done.change.unwrap(), Change::Unchanged);
        assert!(!node.iptables_forward_rules(Family::V4));
        assert!(!node.dataplanes.recheck().unwrap());
        let done = node
            .dataplanes
            .program(Dataplane::Iptables, program("10.0.0.2/32"));
        assert_ne!(done.change.unwrap(), Change::Unchanged);
        assert!(node.iptables_forward_rules(Family::V4));
        assert!(node.iptables_forward_rules(Family::V6));

        // nftables: a table gone is noticed and both are replaced.
        node.dataplanes
            .program(Dataplane::Nftables, program("10.0.0.2/32"))
            .change
            .unwrap();
        *node.nft_tables.borrow_mut() = false;
        assert!(node.dataplanes.recheck().unwrap());
        node.take();
        let done = node
            .dataplanes
            .program(Dataplane::Nftables, program("10.0.0.2/32"));
        assert_eq!(done.change.unwrap(), Change::Replaced);
        assert_eq!(node.take(), ["nft replace"]);
    }
}
