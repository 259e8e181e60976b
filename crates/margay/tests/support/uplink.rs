//! The one thing a namespace needs to play a node for Margay's pods: a default route. Proxy
//! ARP answers for 169.254.1.1 only when the node routes it out of another interface, as with
//! Calico. The uplink is a veth whose peer stays in the same namespace, so nothing leaves it.

use std::process::Command;

pub fn add_dead_end_uplink(netns: &str) {
    for args in [
        &["link", "set", "lo", "up"][..],
        &[
            "link",
            "add",
            "uplink",
            "type",
            "veth",
            "peer",
            "name",
            "uplink-peer",
        ],
        &["link", "set", "uplink", "up"],
        &["link", "set", "uplink-peer", "up"],
        &["route", "add", "default", "dev", "uplink"],
    ] {
        let ok = Command::new("ip")
            .args(["-n", netns])
            .args(args)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "ip -n {netns} {args:?} failed");
    }
}
