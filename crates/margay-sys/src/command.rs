//! Running a networking tool (`nft`, `iptables-restore`, `ipset`, …) in this network
//! namespace or in a named one (`ip netns exec NAME …`), and reporting its failure on one line.

use std::io::{self, Write};
use std::process::{Command, Stdio};

/// Running a tool failed. `Display` is one line naming the command, then the cause, e.g.
/// `ip netns exec n1 nft -f -: Error: syntax error, unexpected junk | junk`.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// The command could not be started or fed (the tool or `ip` missing, …).
    #[error("{command}: {error}")]
    Spawn { command: String, error: io::Error },
    /// The tool ran and refused; `stderr` is its message on one line (see [`one_line`]), or
    /// its exit status when it said nothing.
    #[error("{command}: {stderr}")]
    Failed { command: String, stderr: String },
}

/// Runs `program` with `args` in the network namespace `netns` from `ip netns add` (through
/// `ip netns exec`), or in this one; feeds it `stdin`, or nothing. Returns its stdout, or
/// its stderr as one line, leaving out the lines `skip_line` picks (see [`one_line`]).
///
/// The whole of `stdin` is written before any output is read, so the program must read its
/// whole input before it writes more than a pipe holds (nft reads the whole script before it
/// writes anything).
pub fn run(
    netns: Option<&str>,
    program: &str,
    args: &[&str],
    stdin: Option<&str>,
    skip_line: fn(&str) -> bool,
) -> Result<String, CommandError> {
    let mut argv: Vec<&str> = Vec::new();
    if let Some(ns) = netns {
        argv.extend(["ip", "netns", "exec", ns]);
    }
    argv.push(program);
    argv.extend(args);
    let command = argv.join(" ");
    let spawn_error = |error: io::Error| CommandError::Spawn {
        command: command.clone(),
        error,
    };

    let mut child = Command::new(argv[0])
        .args(&argv[1..])
        // The tools' messages go through strerror(): the C locale keeps them in English,
        // which callers match on (margay-nft's `list_table`, for one).
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
        // A broken pipe means the program exited early; its stderr says why.
        if let Err(e) = pipe.write_all(text.as_bytes()) {
            if e.kind() != io::ErrorKind::BrokenPipe {
                // Killed while the pipe is still open, the program never reaches the end of a
                // truncated input: nft's might parse (e.g. cut after `delete table`), and
                // ipset applies its input line by line.
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
    let mut stderr = one_line(&String::from_utf8_lossy(&out.stderr), skip_line);
    if stderr.is_empty() {
        stderr = out.status.to_string();
    }
    Err(CommandError::Failed { command, stderr })
}

/// A tool's stderr as one line: its non-blank lines, trimmed and joined with ` | `, without
/// those `skip_line` picks (e.g. markers that only make sense under the line above).
pub fn one_line(stderr: &str, skip_line: fn(&str) -> bool) -> String {
    stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !skip_line(l))
        .collect::<Vec<_>>()
        .join(" | ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keep_all(_: &str) -> bool {
        false
    }

    #[test]
    fn stderr_becomes_one_line() {
        let stderr = "iptables-restore v1.8.9 (nf_tables): Chain 'x' does not exist\n\
                      Error occurred at line: 3\n\n";
        assert_eq!(
            one_line(stderr, keep_all),
            "iptables-restore v1.8.9 (nf_tables): Chain 'x' does not exist | Error occurred at line: 3"
        );
    }

    #[test]
    fn success_returns_stdout_in_the_c_locale() {
        let out = run(
            None,
            "sh",
            &["-c", "echo \"$LC_ALL\"; cat"],
            Some("in\n"),
            keep_all,
        );
        assert_eq!(out.unwrap(), "C\nin\n");
    }

    #[test]
    fn failure_names_the_command_and_says_why_on_one_line() {
        let e = run(
            None,
            "sh",
            &["-c", "echo ' bad  ' >&2; echo '^^^' >&2; exit 3"],
            None,
            |l| l == "^^^",
        )
        .unwrap_err();
        assert!(matches!(&e, CommandError::Failed { stderr, .. } if stderr == "bad"));
        assert_eq!(
            e.to_string(),
            "sh -c echo ' bad  ' >&2; echo '^^^' >&2; exit 3: bad"
        );
        // Nothing on stderr: the exit status.
        let e = run(None, "sh", &["-c", "exit 4"], None, keep_all).unwrap_err();
        assert_eq!(e.to_string(), "sh -c exit 4: exit status: 4");
    }

    #[test]
    fn a_missing_program_cannot_be_spawned() {
        let ns = format!("mgy-missing-{}", std::process::id());
        let e = run(Some(&ns), "nft", &["-f", "-"], None, keep_all);
        // Without `ip`, or without that namespace: either way, a one-line error naming the
        // whole command.
        let message = e.unwrap_err().to_string();
        let prefix = format!("ip netns exec {ns} nft -f -: ");
        assert!(message.starts_with(&prefix), "{message}");
        assert!(!message.contains('\n'), "{message}");
        let e = run(None, "/nonexistent/margay-tool", &[], None, keep_all).unwrap_err();
        assert!(matches!(e, CommandError::Spawn { .. }), "{e:?}");
    }

    #[test]
    fn an_early_exit_is_not_a_write_error() {
        // `true` reads nothing and exits; writing more than a pipe holds then breaks it.
        let big = "x".repeat(1 << 20);
        assert_eq!(run(None, "true", &[], Some(&big), keep_all).unwrap(), "");
        let e = run(
            None,
            "sh",
            &["-c", "echo no >&2; exit 1"],
            Some(&big),
            keep_all,
        );
        assert_eq!(e.unwrap_err().to_string(), "sh -c echo no >&2; exit 1: no");
    }
}
