//! Running nft: the [`NftRunner`] seam, and [`NftCommand`], which runs the `nft` binary.

use margay_sys::command::{self, CommandError};

use crate::Error;

/// Where nft scripts go. The agent uses [`NftCommand`]; tests can record instead.
pub trait NftRunner {
    /// Runs an `nft -f` script, all or nothing.
    fn run(&mut self, script: &str) -> Result<(), Error>;
    /// `nft list table FAMILY TABLE`, or `None` when that table does not exist.
    fn list_table(&mut self, family: &str, table: &str) -> Result<Option<String>, Error>;
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
            // nft's strerror() message, in English whatever the host's locale: `command::run`
            // runs it with LC_ALL=C.
            Err(Error::Failed { stderr, .. })
                if stderr.starts_with("Error: No such file or directory") =>
            {
                Ok(None)
            }
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
