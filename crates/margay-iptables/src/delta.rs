//! From one rendering to another: only the chains whose rules changed, and set members.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt::Write as _;

use crate::rendered::{same_rules, set_references, write_hooks, write_rules, write_set};
use crate::{Error, Family, Iptables, Rendered};

/// One input for one tool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// An `iptables-restore --noflush` (`ip6tables-restore --noflush`) input, applied in one
    /// transaction.
    Iptables(String),
    /// An `ipset restore` input (run with `-exist`, so a member added twice or deleted when
    /// missing is no error).
    Ipset(String),
}

/// What changes the kernel from one rendering to another, as inputs to run in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Delta {
    pub steps: Vec<Step>,
}

impl Delta {
    /// Nothing to change.
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// Runs the steps in order, stopping at the first that fails. A failed `ipset restore`
    /// may have applied part of its input (ipset has no transactions): after an error, read
    /// the kernel again ([`Rendered::from_kernel`]) before the next delta.
    pub fn run<R: Iptables + ?Sized>(&self, runner: &mut R, family: Family) -> Result<(), Error> {
        for step in &self.steps {
            match step {
                Step::Iptables(input) => runner.restore(family, input)?,
                Step::Ipset(input) => runner.ipset_restore(input)?,
            }
        }
        Ok(())
    }
}

/// The delta from `old` (what the kernel holds: a previous rendering, or
/// [`Rendered::from_kernel`]) to `new`, in Felix's order:
///
/// 1. `ipset restore`: new sets created with their members; members deleted from and added
///    to the sets both have; a set whose header changed but can be swapped (same dimensions
///    and family) refilled in a temporary set `mgy4t<n>` (`mgy6t<n>`) swapped in and
///    destroyed.
/// 2. `iptables-restore --noflush`, one transaction: every chain that is new or whose rules'
///    hashes differ is declared (which creates it, or flushes it) and filled; chains no
///    longer rendered are flushed, and deleted once nothing jumps to them; Margay's rules in
///    built-in chains are deleted and added again if they differ. Unchanged chains are not
///    touched, so their counters stay.
/// 3. `ipset restore`: sets no longer used destroyed.
///
/// A set whose header changed so that it cannot be swapped (another type or family) is
/// destroyed and created again in step 1, after an `iptables-restore` that flushes the
/// chains using it (rewritten in step 2). Until step 2 those chains match nothing.
pub fn changed_chains(old: &Rendered, new: &Rendered) -> Delta {
    let family = new.family;
    let mut before = String::new();
    let mut after = String::new();
    let mut recreated = BTreeSet::new();
    let mut temporaries = (0..)
        .map(|n| format!("{}{n}", family.temporary_set_prefix()))
        .filter(|name| !old.sets.contains_key(name) && !new.sets.contains_key(name));
    for (name, set) in &new.sets {
        match old.sets.get(name) {
            None => write_set(&mut before, name, set),
            Some(was) if was.header == set.header => {
                for member in was.members.difference(&set.members) {
                    let _ = writeln!(before, "del {name} {member}");
                }
                for member in set.members.difference(&was.members) {
                    let _ = writeln!(before, "add {name} {member}");
                }
            }
            Some(was) if was.header.swappable_with(&set.header) => {
                let temporary = temporaries.next().unwrap_or_default();
                write_set(&mut before, &temporary, set);
                let _ = writeln!(before, "swap {temporary} {name}");
                let _ = writeln!(before, "destroy {temporary}");
            }
            Some(_) => {
                recreated.insert(name.as_str());
                let _ = writeln!(before, "destroy {name}");
                write_set(&mut before, name, set);
            }
        }
    }
    for name in old.sets.keys().filter(|n| !new.sets.contains_key(*n)) {
        let _ = writeln!(after, "destroy {name}");
    }

    // Chains using a set that is created again must let go of it first.
    let released: BTreeSet<&str> = if recreated.is_empty() {
        BTreeSet::new()
    } else {
        old.chains
            .iter()
            .filter(|c| {
                c.rules
                    .iter()
                    .any(|r| set_references(&r.spec).any(|s| recreated.contains(s)))
            })
            .map(|c| c.name.as_str())
            .collect()
    };
    let old_chains: HashMap<&str, _> = old.chains.iter().map(|c| (c.name.as_str(), c)).collect();
    let new_chains: HashSet<&str> = new.chains.iter().map(|c| c.name.as_str()).collect();
    let rewritten: Vec<_> = new
        .chains
        .iter()
        .filter(|c| {
            released.contains(c.name.as_str())
                || old_chains
                    .get(c.name.as_str())
                    .is_none_or(|was| !same_rules(was.rules.iter(), c.rules.iter()))
        })
        .collect();
    let deleted: Vec<&str> = old
        .chains
        .iter()
        .map(|c| c.name.as_str())
        .filter(|name| !new_chains.contains(name))
        .collect();
    let hooks_same = old.hooks.len() == new.hooks.len()
        && old
            .hooks
            .iter()
            .zip(&new.hooks)
            .all(|(a, b)| a.chain == b.chain)
        && same_rules(
            old.hooks.iter().map(|h| &h.rule),
            new.hooks.iter().map(|h| &h.rule),
        );

    let mut steps = Vec::new();
    if !released.is_empty() {
        let mut release = String::from("*filter\n");
        for name in &released {
            let _ = writeln!(release, "-F {name}");
        }
        release.push_str("COMMIT\n");
        steps.push(Step::Iptables(release));
    }
    if !before.is_empty() {
        steps.push(Step::Ipset(before));
    }
    if !rewritten.is_empty() || !deleted.is_empty() || !hooks_same {
        let mut main = String::from("*filter\n");
        for chain in &rewritten {
            let _ = writeln!(main, ":{} - [0:0]", chain.name);
        }
        for name in &deleted {
            let _ = writeln!(main, ":{name} - [0:0]");
        }
        if !hooks_same {
            for hook in &old.hooks {
                let _ = writeln!(main, "-D {} {}", hook.chain, hook.rule.spec);
            }
        }
        for chain in &rewritten {
            write_rules(&mut main, chain);
        }
        if !hooks_same {
            write_hooks(&mut main, &new.hooks);
        }
        for name in &deleted {
            let _ = writeln!(main, "-X {name}");
        }
        main.push_str("COMMIT\n");
        steps.push(Step::Iptables(main));
    }
    if !after.is_empty() {
        steps.push(Step::Ipset(after));
    }
    Delta { steps }
}

/// The delta that removes everything of Margay's that `current` (read with
/// [`Rendered::from_kernel`]) holds: its rules in built-in chains, every `mgy-` chain and
/// every `mgy4…` (`mgy6…`) set. For switching dataplanes at runtime.
pub fn remove_all(current: &Rendered) -> Delta {
    changed_chains(current, &Rendered::empty(current.family))
}

#[cfg(test)]
mod tests;
