//! `detect` against the real kernel, inside a throwaway network namespace that a guard deletes
//! even when the test panics. Needs root (CI runs as root); without it the test prints
//! "skipped: needs root" and passes.

use margay_sys::process::is_root;
use std::path::Path;
use std::process::{Command, Stdio};

use ipnet::IpNet;
use margay_agent::autodetect::{detect, Error, Method};
use margay_sys::netns::NetNs;

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("running ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A named network namespace, deleted on drop (also when the test panics).
struct TestNs(String);

impl TestNs {
    fn new() -> TestNs {
        let name = format!("mgyagent-{}", std::process::id());
        ip(&["netns", "add", &name]);
        TestNs(name)
    }

    /// `ip -n NS ARGS…`
    fn ip(&self, args: &str) {
        let mut all = vec!["-n", &self.0];
        all.extend(args.split_whitespace());
        ip(&all);
    }

    /// `detect` on a thread inside the namespace.
    fn detect(&self, method: &str, ipv6: bool) -> Result<IpNet, Error> {
        let method: Method = method.parse().unwrap();
        let ns = NetNs::open(&Path::new("/var/run/netns").join(&self.0)).unwrap();
        ns.run(|| detect(&method, ipv6)).unwrap()
    }
}

impl Drop for TestNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.0])
            .stdin(Stdio::null())
            .status();
    }
}

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

#[test]
fn detects_the_node_address_in_a_namespace() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let ns = TestNs::new();
    // docker0 comes first by index but is excluded by first-found; ens1 is the "NIC".
    for command in [
        "link add docker0 type veth peer name docker0p",
        "link add ens1 type veth peer name ens1p",
        "addr add 10.98.0.1/24 dev docker0",
        "addr add 10.99.0.1/24 dev ens1",
        "addr add 2001:db8:99::1/64 dev ens1 nodad",
        "link set docker0 up",
        "link set docker0p up",
        "link set ens1 up",
        "link set ens1p up",
    ] {
        ns.ip(command);
    }

    assert_eq!(
        ns.detect("first-found", false).unwrap(),
        net("10.99.0.1/24")
    );
    // ens1 also has an fe80:: address now, which is skipped.
    assert_eq!(
        ns.detect("first-found", true).unwrap(),
        net("2001:db8:99::1/64")
    );
    assert_eq!(
        ns.detect("interface=ens1", false).unwrap(),
        net("10.99.0.1/24")
    );
    assert_eq!(
        ns.detect("interface=docker.*", false).unwrap(),
        net("10.98.0.1/24")
    );
    assert_eq!(
        ns.detect("skip-interface=ens1", false)
            .unwrap_err()
            .to_string(),
        "IP autodetection (skip-interface=ens1) found no IPv4 address: no global unicast IPv4 \
         address on an up interface outside the default exclusions and not matching ens1"
    );
    assert_eq!(
        ns.detect("can-reach=10.99.0.2", false).unwrap(),
        net("10.99.0.1/24")
    );
    assert_eq!(
        ns.detect("can-reach=10.98.0.7", false).unwrap(),
        net("10.98.0.1/24")
    );
    assert_eq!(
        ns.detect("can-reach=2001:db8:99::2", true).unwrap(),
        net("2001:db8:99::1/64")
    );
    // No default route in the namespace.
    assert_eq!(
        ns.detect("can-reach=192.0.2.1", false)
            .unwrap_err()
            .to_string(),
        "IP autodetection (can-reach=192.0.2.1): finding the source address: Network is \
         unreachable (os error 101)"
    );
}
