//! A `margay lab` driven through the real binary, for the lab tests: a unique name under its
//! own root, taken down on drop. Each test file adds the methods only it needs.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

use crate::host::{is_root, run, unique};

pub const BIN: &str = env!("CARGO_BIN_EXE_margay");

pub struct Lab {
    pub name: String,
    pub root: tempfile::TempDir,
}

impl Lab {
    pub fn new(tag: &str) -> Lab {
        Lab {
            name: unique(tag),
            root: tempfile::tempdir().unwrap(),
        }
    }

    pub fn cmd(&self, sub: &str, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.args(["lab", sub, "--name", &self.name])
            .arg("--lab-root")
            .arg(self.root.path())
            .args(args)
            .env_remove("CNI_COMMAND")
            .env_remove("MARGAY_DATASTORE")
            .env_remove("MARGAY_LAB_ROOT");
        c
    }

    pub fn run(&self, sub: &str, args: &[&str]) -> Output {
        run(&mut self.cmd(sub, args))
    }

    pub fn ok(&self, sub: &str, args: &[&str]) -> String {
        let out = self.run(sub, args);
        assert!(
            out.status.success(),
            "lab {sub} {args:?} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    pub fn json(&self, sub: &str, args: &[&str]) -> Value {
        serde_json::from_str(&self.ok(sub, args)).unwrap()
    }

    pub fn dir(&self) -> PathBuf {
        self.root.path().join(&self.name)
    }

    /// The node namespaces, in node order.
    pub fn node_namespaces(&self) -> Vec<String> {
        let status = self.json("status", &["-o", "json"]);
        status["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["netns"].as_str().unwrap().to_owned())
            .collect()
    }

    /// Nothing of the lab is left: no namespace, no process, no state.
    pub fn assert_gone(&self) {
        let prefix = format!("{}-", self.name);
        let left: Vec<String> = std::fs::read_dir("/run/netns")
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with(&prefix))
                    .collect()
            })
            .unwrap_or_default();
        assert!(left.is_empty(), "namespaces left: {left:?}");
        assert!(!self.dir().exists(), "{} left", self.dir().display());
        let procs = processes_mentioning(self.root.path());
        assert!(procs.is_empty(), "processes left: {procs:?}");
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = self.run("down", &[]);
    }
}

/// Live processes whose command line mentions `path` (the lab's agents, CNI, etcd).
pub fn processes_mentioning(path: &Path) -> Vec<String> {
    let needle = path.to_string_lossy().into_owned();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains(&needle))
        .collect()
}

pub fn skip_unless_root() -> bool {
    if is_root() {
        return false;
    }
    eprintln!("skipped: lab tests need root (network namespaces)");
    true
}
