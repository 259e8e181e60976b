//! Running iptables and ipset: the [`Iptables`] seam, and [`IptablesCommand`], which runs the
//! binaries.

use std::io::{self, Write};
use std::process::{Command, Stdio};

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

    /// Runs `args` with `stdin`; returns stdout, or stderr as one line.
    fn run(&self, args: &[&str], stdin: Option<&str>) -> Result<String, Error> {
        let mut argv: Vec<&str> = Vec::new();
        if let Some(ns) = &self.netns {
            argv.extend(["ip", "netns", "exec", ns]);
        }
        argv.extend(args);
        let command = argv.join(" ");
        let spawn_error = |error: io::Error| Error::Spawn {
            command: command.clone(),
            error,
        };
        let mut child = Command::new(argv[0])
            .args(&argv[1..])
            .env("LC_ALL", "C")
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(spawn_error)?;
        if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
            // ipset applies its input line by line, so a truncated input must not reach its
            // end: on a write error other than an early exit (a broken pipe, which its
            // stderr explains), the child is killed while the pipe is still open.
            if let Err(e) = pipe.write_all(text.as_bytes()) {
                if e.kind() != io::ErrorKind::BrokenPipe {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(spawn_error(e));
                }
            }
        }
        let out = child.wait_with_output().map_err(spawn_error)?;
        if out.status.success() {
            return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
        }
        let mut stderr = one_line(&String::from_utf8_lossy(&out.stderr));
        if stderr.is_empty() {
            stderr = out.status.to_string();
        }
        Err(Error::Failed { command, stderr })
    }
}

impl Iptables for IptablesCommand {
    fn restore(&mut self, family: Family, input: &str) -> Result<(), Error> {
        let binary = self.backend.binary(family, "restore");
        self.run(&[&binary, "--noflush"], Some(input))?;
        Ok(())
    }

    fn save(&mut self, family: Family) -> Result<String, Error> {
        let binary = self.backend.binary(family, "save");
        self.run(&[&binary, "-t", "filter"], None)
    }

    fn ipset_restore(&mut self, input: &str) -> Result<(), Error> {
        self.run(&["ipset", "restore", "-exist"], Some(input))?;
        Ok(())
    }

    fn ipset_save(&mut self) -> Result<String, Error> {
        self.run(&["ipset", "save"], None)
    }
}

/// A tool's stderr as one line.
fn one_line(stderr: &str) -> String {
    stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" | ")
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

    #[test]
    fn stderr_becomes_one_line() {
        let stderr = "iptables-restore v1.8.9 (nf_tables): Chain 'x' does not exist\n\
                      Error occurred at line: 3\n\n";
        assert_eq!(
            one_line(stderr),
            "iptables-restore v1.8.9 (nf_tables): Chain 'x' does not exist | Error occurred at line: 3"
        );
    }
}
