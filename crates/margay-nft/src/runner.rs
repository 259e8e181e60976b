//! Running nft: the [`NftRunner`] seam, and [`NftCommand`], which runs the `nft` binary.

use std::io::{self, Write};
use std::process::{Command, Stdio};

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
        let mut argv: Vec<&str> = Vec::new();
        if let Some(ns) = &self.netns {
            argv.extend(["ip", "netns", "exec", ns]);
        }
        argv.push("nft");
        argv.extend(args);
        let command = argv.join(" ");
        let spawn_error = |error: io::Error| Error::Spawn {
            command: command.clone(),
            error,
        };

        let mut child = Command::new(argv[0])
            .args(&argv[1..])
            // nft's messages go through strerror(): the C locale keeps them in English, which
            // `list_table` relies on.
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
            // nft reads the whole script before it writes anything, so writing first cannot
            // deadlock. A broken pipe means nft exited early; its stderr says why.
            if let Err(e) = pipe.write_all(text.as_bytes()) {
                if e.kind() != io::ErrorKind::BrokenPipe {
                    // Killed while the pipe is still open, nft never reaches the end of a
                    // truncated script, which might parse (e.g. cut after `delete table`).
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

impl NftRunner for NftCommand {
    fn run(&mut self, script: &str) -> Result<(), Error> {
        self.nft(&["-f", "-"], Some(script))?;
        Ok(())
    }

    fn list_table(&mut self, family: &str, table: &str) -> Result<Option<String>, Error> {
        match self.nft(&["list", "table", family, table], None) {
            Ok(listing) => Ok(Some(listing)),
            Err(Error::Failed { stderr, .. })
                if stderr.starts_with("Error: No such file or directory") =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }
}

/// nft's stderr as one line: its error lines and the offending input, without the
/// `^^^^` markers that only make sense under that input.
fn one_line(stderr: &str) -> String {
    stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.chars().all(|c| matches!(c, '^' | '~' | ' ')))
        .collect::<Vec<_>>()
        .join(" | ")
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
            one_line(stderr),
            "/dev/stdin:3:3-20: Error: Could not process rule: No such file or directory \
             | ip saddr @nope drop"
        );
    }
}
