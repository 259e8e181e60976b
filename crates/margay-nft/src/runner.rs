//! Running nft: the [`NftRunner`] seam; [`Nft`], which keeps a libnftables context open and
//! falls back to the binary; and [`NftCommand`], which runs the `nft` binary.

use margay_sys::command::{self, CommandError};
use margay_sys::netns::{NetNs, NETNS_RUN_DIR};
use margay_sys::nftables::{Nftables, NftablesError};

use crate::Error;

/// Where nft scripts go. The agent uses [`NftCommand`]; tests can record instead.
pub trait NftRunner {
    /// Runs an `nft -f` script, all or nothing.
    fn run(&mut self, script: &str) -> Result<(), Error>;
    /// `nft list table FAMILY TABLE`, or `None` when that table does not exist.
    fn list_table(&mut self, family: &str, table: &str) -> Result<Option<String>, Error>;
}

/// nft for a long-lived process: scripts go through one libnftables context, kept open (see
/// `margay_sys::nftables` for what that saves), or through the `nft` binary where the library
/// cannot be loaded. Same scripts, same transactions, same error messages.
#[derive(Debug)]
pub enum Nft {
    Library(Nftables),
    Binary(NftCommand),
}

impl Nft {
    /// nft in this thread's network namespace.
    pub fn new() -> Nft {
        Nftables::open().map_or_else(|_| Nft::Binary(NftCommand::new()), Nft::Library)
    }

    /// nft in the network namespace `name` from `ip netns add`.
    pub fn in_netns(name: &str) -> Nft {
        NetNs::open(&std::path::Path::new(NETNS_RUN_DIR).join(name))
            .ok()
            .and_then(|netns| Nftables::open_in(&netns).ok())
            .map_or_else(|| Nft::Binary(NftCommand::in_netns(name)), Nft::Library)
    }

    /// `libnftables` or `nft`, for logs.
    pub fn backend(&self) -> &'static str {
        match self {
            Nft::Library(_) => "libnftables",
            Nft::Binary(_) => "nft",
        }
    }
}

impl Default for Nft {
    fn default() -> Nft {
        Nft::new()
    }
}

/// How the library's errors read in [`Error`]: as the binary's, on one line.
const LIBRARY_COMMAND: &str = "nft (libnftables)";

fn from_library(e: NftablesError) -> Error {
    Error::Failed {
        command: LIBRARY_COMMAND.to_string(),
        stderr: command::one_line(&e.to_string(), is_marker),
    }
}

/// nft's strerror() message for a table that is not there, in English whatever the locale
/// (`command::run` runs the binary with LC_ALL=C; the library never translates).
fn is_missing(stderr: &str) -> bool {
    stderr.starts_with("Error: No such file or directory")
}

impl NftRunner for Nft {
    fn run(&mut self, script: &str) -> Result<(), Error> {
        match self {
            Nft::Library(nft) => nft.run(script).map(drop).map_err(from_library),
            Nft::Binary(nft) => nft.run(script),
        }
    }

    fn list_table(&mut self, family: &str, table: &str) -> Result<Option<String>, Error> {
        match self {
            Nft::Library(nft) => match nft.run(&format!("list table {family} {table}")) {
                Ok(listing) => Ok(Some(listing)),
                Err(NftablesError::Refused(stderr)) if is_missing(&stderr) => Ok(None),
                Err(e) => Err(from_library(e)),
            },
            Nft::Binary(nft) => nft.list_table(family, table),
        }
    }
}

/// Runs the `nft` binary in this network namespace, or in a named one
/// (`ip netns exec NAME nft …`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NftCommand {
    netns: Option<String>,
}

impl NftCommand {
    pub fn new() -> NftCommand {
        NftCommand::default()
    }

    /// Targets the network namespace `name` from `ip netns add`.
    pub fn in_netns(name: impl Into<String>) -> NftCommand {
        NftCommand {
            netns: Some(name.into()),
        }
    }

    /// Runs nft with `args` and `stdin`; returns its stdout, or its stderr as one line.
    fn nft(&self, args: &[&str], stdin: Option<&str>) -> Result<String, Error> {
        // nft reads the whole script before it writes anything, as `command::run` needs.
        command::run(self.netns.as_deref(), "nft", args, stdin, is_marker).map_err(from_command)
    }
}

impl NftRunner for NftCommand {
    fn run(&mut self, script: &str) -> Result<(), Error> {
        self.nft(&["-f", "-"], Some(script))?;
        Ok(())
    }

    fn list_table(&mut self, family: &str, table: &str) -> Result<Option<String>, Error> {
        match self.nft(&["list", "table", family, table], None) {
            Ok(listing) => Ok(Some(listing)),
            Err(Error::Failed { stderr, .. }) if is_missing(&stderr) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// One of nft's `^^^^` markers, which only make sense under the offending input on the line
/// above: left out of its stderr on one line.
fn is_marker(line: &str) -> bool {
    line.chars().all(|c| matches!(c, '^' | '~' | ' '))
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
    fn stderr_becomes_one_line() {
        let stderr =
            "/dev/stdin:3:3-20: Error: Could not process rule: No such file or directory\n\
                      \t\tip saddr @nope drop\n\
                      \t\t         ^^^^^\n";
        assert_eq!(
            command::one_line(stderr, is_marker),
            "/dev/stdin:3:3-20: Error: Could not process rule: No such file or directory \
             | ip saddr @nope drop"
        );
    }
}
