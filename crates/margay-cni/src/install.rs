//! `margay install-cni`: puts the plugin binaries and a conflist where the runtime looks, the
//! way Calico's install-cni init container does. Every file is written beside its target and
//! renamed into place, so a runtime never sees a half-written binary or config.

use std::fs;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::config::{IPAM_TYPE, PLUGIN_TYPE};

pub const CONFLIST_NAME: &str = "10-margay.conflist";
/// Calico's network name; IPAM handles are `<network>.<containerID>`.
pub const NETWORK_NAME: &str = "k8s-pod-network";
/// The reference `bandwidth` and `portmap` plugins (containernetworking-plugins 1.1) speak at
/// most 1.0.0, and every plugin in a chain runs at the conflist's version.
pub const CONFLIST_VERSION: &str = "1.0.0";

#[derive(Debug, thiserror::Error)]
#[error("{action} {}: {source}", path.display())]
pub struct InstallError {
    action: &'static str,
    path: PathBuf,
    source: std::io::Error,
}

#[derive(Debug, Clone, Default)]
pub struct InstallOptions {
    pub bin_dir: PathBuf,
    pub conf_dir: PathBuf,
    /// The binary to install (normally the running one).
    pub source: PathBuf,
    pub datastore: Option<String>,
    pub mtu: Option<u32>,
    pub nodename: Option<String>,
    pub state_dir: Option<PathBuf>,
    pub log_file: Option<PathBuf>,
}

/// What was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installed {
    pub binaries: Vec<PathBuf>,
    pub conflist: PathBuf,
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> InstallError {
    let path = path.to_owned();
    move |source| InstallError {
        action,
        path,
        source,
    }
}

pub fn conflist(opts: &InstallOptions) -> Value {
    let mut margay = json!({
        "type": PLUGIN_TYPE,
        "log_level": "info",
        "mtu": opts.mtu.unwrap_or(0),
        "ipam": {"type": IPAM_TYPE},
        "container_settings": {"allow_ip_forwarding": false},
    });
    if let Some(ds) = &opts.datastore {
        margay["datastore"] = json!(ds);
    }
    if let Some(n) = &opts.nodename {
        margay["nodename"] = json!(n);
    }
    if let Some(dir) = &opts.state_dir {
        margay["state_dir"] = json!(dir);
    }
    if let Some(log) = &opts.log_file {
        margay["log_file_path"] = json!(log);
    }
    json!({
        "name": NETWORK_NAME,
        "cniVersion": CONFLIST_VERSION,
        "plugins": [
            margay,
            {"type": "bandwidth", "capabilities": {"bandwidth": true}},
            {"type": "portmap", "snat": true, "capabilities": {"portMappings": true}},
        ],
    })
}

fn replace_file(
    target: &Path,
    write: impl FnOnce(&Path) -> Result<(), InstallError>,
) -> Result<(), InstallError> {
    let tmp = target.with_extension("margay-tmp");
    let _ = fs::remove_file(&tmp);
    write(&tmp)?;
    fs::rename(&tmp, target).map_err(io("renaming into place", target))
}

pub fn install(opts: &InstallOptions) -> Result<Installed, InstallError> {
    fs::create_dir_all(&opts.bin_dir).map_err(io("creating", &opts.bin_dir))?;
    fs::create_dir_all(&opts.conf_dir).map_err(io("creating", &opts.conf_dir))?;
    let main = opts.bin_dir.join(PLUGIN_TYPE);
    replace_file(&main, |tmp| {
        fs::copy(&opts.source, tmp)
            .map(drop)
            .map_err(io("copying the binary to", tmp))
    })?;
    // Invoked under this name the binary is the IPAM plugin.
    let ipam = opts.bin_dir.join(IPAM_TYPE);
    replace_file(&ipam, |tmp| {
        fs::hard_link(&main, tmp).map_err(io("linking", tmp))
    })?;
    let conflist_path = opts.conf_dir.join(CONFLIST_NAME);
    let text = serde_json::to_string_pretty(&conflist(opts)).expect("JSON values serialize");
    replace_file(&conflist_path, |tmp| {
        fs::write(tmp, format!("{text}\n")).map_err(io("writing", tmp))
    })?;
    Ok(Installed {
        binaries: vec![main, ipam],
        conflist: conflist_path,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn installs_binaries_link_and_conflist_idempotently() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("src-bin");
        fs::write(&source, b"#!/bin/true\n").unwrap();
        let opts = InstallOptions {
            bin_dir: dir.path().join("bin"),
            conf_dir: dir.path().join("net.d"),
            source,
            datastore: Some("sqlite:///var/lib/margay/margay.db".into()),
            mtu: Some(1450),
            ..Default::default()
        };
        for _ in 0..2 {
            let out = install(&opts).unwrap();
            assert_eq!(fs::read(&out.binaries[1]).unwrap(), b"#!/bin/true\n");
            let conf: Value =
                serde_json::from_str(&fs::read_to_string(&out.conflist).unwrap()).unwrap();
            assert_eq!(conf["plugins"][0]["type"], "margay");
            assert_eq!(conf["plugins"][0]["mtu"], 1450);
            assert_eq!(conf["plugins"][1]["type"], "bandwidth");
            assert_eq!(conf["plugins"][2]["capabilities"]["portMappings"], true);
        }
        let leftovers: Vec<_> = fs::read_dir(dir.path().join("bin"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers.len(), 2, "{leftovers:?}");
    }

    #[test]
    fn error_names_the_path() {
        let opts = InstallOptions {
            bin_dir: "/proc/margay-cannot".into(),
            conf_dir: "/tmp".into(),
            source: "/nonexistent".into(),
            ..Default::default()
        };
        let e = install(&opts).unwrap_err().to_string();
        assert!(e.contains("/proc/margay-cannot"), "{e}");
    }
}
