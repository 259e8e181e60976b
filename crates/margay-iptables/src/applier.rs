//! Keeping one family's tables in line with the node's program.

use margay_policy::program::Program;

use crate::{changed_chains, remove_all, render, render_update, Error, Family, Iptables, Rendered};

/// Applies a node's program in one family, changing only what differs: from what the kernel
/// holds the first time (and after any failure), from what it applied since. After the
/// first program, each one is rendered from the last ([`render_update`]): only the chains
/// and sets whose part of the program changed are rendered again.
#[derive(Debug)]
pub struct Applier<R: Iptables> {
    runner: R,
    family: Family,
    applied: Option<Rendered>,
    /// The program `applied` is the rendering of, when it is one.
    program: Option<Program>,
}

impl<R: Iptables> Applier<R> {
    pub fn new(runner: R, family: Family) -> Applier<R> {
        Applier {
            runner,
            family,
            applied: None,
            program: None,
        }
    }

    /// Makes the kernel hold `program`'s rendering. Returns whether anything was run.
    pub fn apply(&mut self, program: &Program) -> Result<bool, Error> {
        let new = match (&self.program, &self.applied) {
            (Some(last), Some(applied)) if last == program => applied.clone(),
            (Some(last), Some(applied)) => render_update(last, applied, program),
            _ => render(program, self.family),
        };
        self.program = None;
        let old = match self.applied.take() {
            Some(applied) => applied,
            None => self.kernel()?,
        };
        let delta = changed_chains(&old, &new);
        delta.run(&mut self.runner, self.family)?;
        self.applied = Some(new);
        self.program = Some(program.clone());
        Ok(!delta.is_empty())
    }

    /// Removes every chain, rule and set of Margay's in this family that the kernel holds.
    /// Returns whether there was any.
    pub fn remove_all(&mut self) -> Result<bool, Error> {
        self.applied = None;
        self.program = None;
        let delta = remove_all(&self.kernel()?);
        delta.run(&mut self.runner, self.family)?;
        Ok(!delta.is_empty())
    }

    /// What the kernel holds of Margay's in this family.
    pub fn kernel(&mut self) -> Result<Rendered, Error> {
        let save = self.runner.save(self.family)?;
        let sets = self.runner.ipset_save()?;
        Ok(Rendered::from_kernel(self.family, &save, &sets))
    }

    /// Forgets what was applied: the next [`apply`](Self::apply) starts from the kernel.
    pub fn forget(&mut self) {
        self.applied = None;
        self.program = None;
    }

    pub fn runner(&mut self) -> &mut R {
        &mut self.runner
    }
}
