//! Throwaway named network namespaces (`ip netns add PREFIX-<pid>-<n>`), deleted on drop,
//! also when the test panics: the host's own tables and sets are never touched.

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Runs a command; panics with its stderr if it fails.
pub fn run(argv: &[&str]) -> String {
    let out = Command::new(argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", argv.join(" ")));
    assert!(
        out.status.success(),
        "{}: {}",
        argv.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A named network namespace, deleted on drop (also when the test panics).
pub struct TestNs {
    name: String,
    prefix: &'static str,
}

impl TestNs {
    /// A new namespace `PREFIX-<pid>-<n>` (e.g. `mgynft-…`: the prefix tells whose it is).
    pub fn new(prefix: &'static str) -> TestNs {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("{prefix}-{}-{n}", std::process::id());
        run(&["ip", "netns", "add", &name]);
        TestNs { name, prefix }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Another new namespace with the same prefix.
    pub fn sibling(&self) -> TestNs {
        TestNs::new(self.prefix)
    }

    /// `ip netns exec NS ARGS…`
    pub fn exec(&self, args: &[&str]) -> String {
        let mut argv = vec!["ip", "netns", "exec", &self.name];
        argv.extend(args);
        run(&argv)
    }

    /// `ip -n NS ARGS…`
    pub fn ip(&self, args: &str) {
        let mut argv = vec!["ip", "-n", &self.name];
        argv.extend(args.split_whitespace());
        run(&argv);
    }
}

impl Drop for TestNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}
