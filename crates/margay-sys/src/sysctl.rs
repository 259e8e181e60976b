//! Kernel parameters under `/proc/sys`.
//!
//! Keys use `/` separators, e.g. `net/ipv4/conf/mgyab12/proxy_arp`, never `.`: interface names
//! may contain dots (`eth0.100`), so a dotted key would be ambiguous.
//!
//! Per-namespace keys (everything under `net/`) apply to the network namespace of the
//! **calling thread**, so call these inside [`NetNs::run`](crate::netns::NetNs::run) to reach
//! a pod's namespace.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::PathBuf;

use crate::Error;

/// Writes `value` to `/proc/sys/<key>`.
pub fn write(key: &str, value: &str) -> Result<(), Error> {
    let op = || format!("writing sysctl {key} = {value}");
    let path = path(key).map_err(|reason| Error::invalid(op(), reason))?;
    // No O_CREAT/O_TRUNC: a missing key must fail (not found), and proc files need neither.
    OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|mut file| file.write_all(value.as_bytes()))
        .map_err(|e| Error::os(op(), e))
}

/// Reads `/proc/sys/<key>`, without the trailing newline.
pub fn read(key: &str) -> Result<String, Error> {
    let op = || format!("reading sysctl {key}");
    let path = path(key).map_err(|reason| Error::invalid(op(), reason))?;
    let mut value = fs::read_to_string(path).map_err(|e| Error::os(op(), e))?;
    value.truncate(value.trim_end_matches('\n').len());
    Ok(value)
}

/// `/proc/sys/<key>`, refusing keys that would name something outside `/proc/sys`.
fn path(key: &str) -> Result<PathBuf, &'static str> {
    if key.split('/').any(|part| matches!(part, "" | "." | "..")) {
        return Err("invalid key: expected a relative path like net/ipv4/ip_forward");
    }
    Ok(PathBuf::from("/proc/sys").join(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_map_under_proc_sys() {
        assert_eq!(
            path("net/ipv4/conf/eth0.100/proxy_arp").unwrap(),
            PathBuf::from("/proc/sys/net/ipv4/conf/eth0.100/proxy_arp")
        );
        for bad in [
            "",
            "/net/ipv4/ip_forward",
            "net/../../etc",
            "net//ipv4",
            "net/./x",
        ] {
            assert!(path(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn read_existing_and_missing_keys() {
        let value = read("kernel/ostype").unwrap();
        assert_eq!(value, "Linux");
        let e = read("net/ipv4/conf/margay-no-such-link/proxy_arp").unwrap_err();
        assert!(e.is_not_found(), "{e}");
        let e = write("../../etc/passwd", "x").unwrap_err();
        assert!(e
            .to_string()
            .starts_with("writing sysctl ../../etc/passwd = x: invalid key"));
    }
}
