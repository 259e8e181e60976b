//! Running another plugin (a delegated IPAM such as `host-local`) the way a runtime does:
//! found on `CNI_PATH`, same `CNI_*` environment, the config on stdin, a result or error on stdout.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command as Process, Stdio};

use serde_json::Value;

use crate::env::Command;
use crate::error::{code, CniError, Result};

pub trait Exec {
    /// Runs `plugin` for `command` with `stdin`; `Ok(None)` when it printed nothing (DEL).
    fn exec(&mut self, plugin: &str, command: Command, stdin: &[u8]) -> Result<Option<Value>>;
}

/// Executes plugins from `CNI_PATH`, passing this process's `CNI_*` environment on.
pub struct ProcessExec {
    pub path: Vec<PathBuf>,
}

fn command_name(command: Command) -> &'static str {
    match command {
        Command::Add => "ADD",
        Command::Del => "DEL",
        Command::Check => "CHECK",
        Command::Status => "STATUS",
        Command::Gc => "GC",
        Command::Version => "VERSION",
    }
}

impl ProcessExec {
    fn find(&self, plugin: &str) -> Result<PathBuf> {
        if plugin.contains('/') || plugin.is_empty() {
            return Err(CniError::invalid_config(format!(
                "ipam.type {plugin:?} is not a plugin name"
            )));
        }
        self.path
            .iter()
            .map(|dir| dir.join(plugin))
            .find(|p| is_executable(p))
            .ok_or_else(|| {
                CniError::invalid_config(format!(
                    "IPAM plugin {plugin:?} not found in CNI_PATH ({})",
                    self.path
                        .iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(":")
                ))
            })
    }
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

impl Exec for ProcessExec {
    fn exec(&mut self, plugin: &str, command: Command, stdin: &[u8]) -> Result<Option<Value>> {
        let exe = self.find(plugin)?;
        let delegate_failed = |what: String| CniError::new(code::DELEGATE, what);
        let mut child = Process::new(&exe)
            .env("CNI_COMMAND", command_name(command))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| delegate_failed(format!("running {}: {e}", exe.display())))?;
        child
            .stdin
            .take()
            .expect("stdin is piped")
            .write_all(stdin)
            .map_err(|e| delegate_failed(format!("writing to {plugin}: {e}")))?;
        let out = child
            .wait_with_output()
            .map_err(|e| delegate_failed(format!("waiting for {plugin}: {e}")))?;
        let parsed: Option<Value> = if out.stdout.iter().all(u8::is_ascii_whitespace) {
            None
        } else {
            Some(serde_json::from_slice(&out.stdout).map_err(|e| {
                delegate_failed(format!("{plugin} printed something that is not JSON: {e}"))
            })?)
        };
        if out.status.success() {
            return Ok(parsed);
        }
        Err(match parsed.as_ref().and_then(CniError::from_json) {
            Some(mut e) => {
                e.msg = format!("{plugin}: {}", e.msg);
                e
            }
            None => delegate_failed(format!("{plugin} failed ({})", out.status)),
        })
    }
}
