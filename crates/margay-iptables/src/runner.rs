//! Running iptables and ipset: the [`Iptables`] seam, and [`IptablesCommand`], which runs the
//! binaries.

use margay_sys::command::{self, CommandError};

use crate::{Error, Family};

/// Where restore inputs go and where the kernel's state is read from. The agent uses
/// [`IptablesCommand`]; tests can use [`FakeIptables`](crate::FakeIptables).
pub trait Iptables {
    /// `iptables-restore --noflush` (`ip6tables-restore --noflush`): one transaction.
    fn restore(&mut self, family: Family, input: &str) -> Result<(), Error>;
    /// `iptables-save -t filter` (`ip6tables-save -t filter`).
    fn save(&mut self, family: Family) -> Result<String, Error>;
    /// `ipset restore -exist`: line by line, no transaction.
    fn ipset_restore(&mut self, input: &str) -> Result<(), Error>;
    /// `ipset save`: every set of the network namespace, both families.
    fn ipset_save(&mut self) -> Result<String, Error>;
}

/// Which iptables binaries: those `iptables` names (the distribution's choice, through
/// `update-alternatives` on Debian), or one backend explicitly. Use the backend kube-proxy
/// uses: the two keep separate rule sets, and the kernel runs both.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Backend {
    /// `iptables-restore`, `iptables-save`, …
    #[default]
    Default,
    /// `iptables-legacy-restore`, … (x_tables).
    Legacy,
    /// `iptables-nft-restore`, … (nf_tables through the xtables compatibility layer).
    Nft,
}

impl Backend {
    /// The binary of `tool` (`restore`, `save`) for `family`: `ip6tables-nft-save`.
    fn binary(self, family: Family, tool: &str) -> String {
        let base = match family {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        };
        match self {
            Backend::Default => format!("{base}-{tool}"),
            Backend::Legacy => format!("{base}-legacy-{tool}"),
            Backend::Nft => format!("{base}-nft-{tool}"),
        }
    }
}

/// Runs the iptables and ipset binaries in this network namespace, or in a named one
/// (`ip netns exec NAME …`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IptablesCommand {
    netns: Option<String>,
    backend: Backend,
}

impl IptablesCommand {
    pub fn new() -> IptablesCommand {
        IptablesCommand::default()
    }

    /// Targets the network namespace `name` from `ip netns add`.
    pub fn in_netns(name: impl Into<String>) -> IptablesCommand {
        IptablesCommand {
            netns: Some(name.into()),
            backend: Backend::Default,
        }
    }

    pub fn with_backend(mut self, backend: Backend) -> IptablesCommand {
        self.backend = backend;
        self
    }

    /// Runs `program` with `args` and `stdin`; returns stdout, or stderr as one line.
    fn run(&self, program: &str, args: &[&str], stdin: Option<&str>) -> Result<String, Error> {
        // iptables and ipset: every non-blank line of stderr is part of the message.
        command::run(self.netns.as_deref(), program, args, stdin, |_| false).map_err(from_command)
    }
}

impl Iptables for IptablesCommand {
    fn restore(&mut self, family: Family, input: &str) -> Result<(), Error> {
        let binary = self.backend.binary(family, "restore");
        self.run(&binary, &["--noflush"], Some(input))?;
        Ok(())
    }

    fn save(&mut self, family: Family) -> Result<String, Error> {
        let binary = self.backend.binary(family, "save");
        self.run(&binary, &["-t", "filter"], None)
    }

    fn ipset_restore(&mut self, input: &str) -> Result<(), Error> {
        self.run("ipset", &["restore", "-exist"], Some(input))?;
        Ok(())
    }

    fn ipset_save(&mut self) -> Result<String, Error> {
        self.run("ipset", &["save"], None)
    }
}

fn from_command(e: CommandError) -> Error {
    match e {
        CommandError::Spawn { command, error } => Error::Spawn { command, error },
        CommandError::Failed { command, stderr } => Error::Failed { command, stderr },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binaries_follow_family_and_backend() {
        assert_eq!(
            Backend::Default.binary(Family::V4, "restore"),
            "iptables-restore"
        );
        assert_eq!(
            Backend::Legacy.binary(Family::V6, "save"),
            "ip6tables-legacy-save"
        );
        assert_eq!(Backend::Nft.binary(Family::V4, "save"), "iptables-nft-save");
    }
}
