//! What the root tests and benchmarks of this crate share: running commands, and throwaway
//! network namespaces with unique names that are deleted on drop, even when a test panics.
#![allow(dead_code)] // each test crate uses its own subset

use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::Value;

static SEQ: AtomicUsize = AtomicUsize::new(0);

pub fn is_root() -> bool {
    margay_sys::process::is_root()
}

/// A name no other test (or test process) uses: `mg<tag><pid>x<n>`.
pub fn unique(tag: &str) -> String {
    format!(
        "mg{tag}{}x{}",
        std::process::id() % 100_000,
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

pub fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"))
}

/// Runs the command, which must succeed; returns its stdout.
pub fn ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A named network namespace, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Netns {
        let name = unique(tag);
        ok(Command::new("ip").args(["netns", "add", &name]));
        Netns { name }
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from("/var/run/netns").join(&self.name)
    }

    pub fn ip(&self, args: &[&str]) -> String {
        ok(Command::new("ip").args(["-n", &self.name]).args(args))
    }

    /// `ip -j -n NS ARGS…` (or `bridge -j -n …` with `tool`), parsed.
    pub fn json(&self, tool: &str, args: &[&str]) -> Value {
        let out = ok(Command::new(tool).args(["-j", "-n", &self.name]).args(args));
        serde_json::from_str(if out.trim().is_empty() { "[]" } else { &out }).unwrap()
    }

    pub fn ip_json(&self, args: &[&str]) -> Value {
        self.json("ip", args)
    }

    pub fn exec(&self, args: &[&str]) -> Output {
        run(Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args))
    }

    pub fn sysctl(&self, key: &str) -> String {
        let out = self.exec(&["cat", &format!("/proc/sys/{key}")]);
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}
