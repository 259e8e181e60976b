//! What a lab made, on disk: written before anything is created and after each phase, so
//! `lab down` can remove a lab whose `up` crashed or whose processes were killed.

use std::collections::BTreeMap;
use std::fs;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::spec::DatastoreKind;
use crate::topology::Topology;
use crate::LabError;

/// Where labs live unless `--lab-root`/`MARGAY_LAB_ROOT` says otherwise.
pub const DEFAULT_ROOT: &str = "/var/lib/margay/lab";
const STATE_FILE: &str = "state.json";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// `up` is running, or died while running.
    Creating,
    Up,
}

/// A wired pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodRuntime {
    pub ip: IpAddr,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LabState {
    pub name: String,
    pub dir: PathBuf,
    pub phase: Phase,
    pub datastore: DatastoreKind,
    /// As the nodes reach it (for etcd, an address in the fabric).
    pub datastore_url: String,
    /// The `margay` binary the lab runs.
    pub binary: PathBuf,
    pub topology: Topology,
    /// By `ns/name`, once wired.
    pub pods: BTreeMap<String, PodRuntime>,
    /// Seconds since the Unix epoch.
    pub created: u64,
}

/// The directory of lab `name` under `root`.
pub fn lab_dir(root: &Path, name: &str) -> PathBuf {
    root.join(name)
}

impl LabState {
    pub fn load(dir: &Path) -> Result<Option<LabState>, LabError> {
        let path = dir.join(STATE_FILE);
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(LabError::io("reading", &path, e)),
        };
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| LabError::Corrupt {
                path,
                message: e.to_string(),
            })
    }

    /// Written beside and renamed over, so a crash never leaves half a file.
    pub fn save(&self) -> Result<(), LabError> {
        fs::create_dir_all(&self.dir).map_err(|e| LabError::io("creating", &self.dir, e))?;
        let path = self.dir.join(STATE_FILE);
        let tmp = self.dir.join(format!("{STATE_FILE}.tmp"));
        let text = serde_json::to_string_pretty(self).expect("lab state serializes");
        fs::write(&tmp, text).map_err(|e| LabError::io("writing", &tmp, e))?;
        fs::rename(&tmp, &path).map_err(|e| LabError::io("renaming into place", &path, e))
    }

    pub fn node_dir(&self, node: &str) -> PathBuf {
        self.dir.join("nodes").join(node)
    }

    /// The agent's and the CNI plugin's state directory on `node`.
    pub fn node_state_dir(&self, node: &str) -> PathBuf {
        self.node_dir(node).join("state")
    }

    pub fn cni_bin_dir(&self) -> PathBuf {
        self.dir.join("cni").join("bin")
    }

    pub fn pod_log(&self, id: &str) -> PathBuf {
        self.dir
            .join("pods")
            .join(format!("{}.log", id.replace('/', ".")))
    }

    pub fn netns_path(name: &str) -> PathBuf {
        Path::new(margay_sys::netns::NETNS_RUN_DIR).join(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{default_spec, Overrides};

    #[test]
    fn state_round_trips_through_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let spec = default_spec(2, 1, &Overrides::default()).unwrap();
        let mut state = LabState {
            name: "t".into(),
            dir: dir.path().join("t"),
            phase: Phase::Creating,
            datastore: DatastoreKind::Sqlite,
            datastore_url: "sqlite:///x.db".into(),
            binary: "/bin/margay".into(),
            topology: Topology::plan("t", &spec),
            pods: BTreeMap::new(),
            created: 1,
        };
        assert_eq!(LabState::load(&state.dir).unwrap(), None);
        state.save().unwrap();
        state.pods.insert(
            "default/pod-1-1".into(),
            PodRuntime {
                ip: "10.244.0.1".parse().unwrap(),
            },
        );
        state.phase = Phase::Up;
        state.save().unwrap();
        assert_eq!(LabState::load(&state.dir).unwrap(), Some(state.clone()));
        std::fs::write(state.dir.join(STATE_FILE), "{").unwrap();
        let err = LabState::load(&state.dir).unwrap_err().to_string();
        assert!(err.contains("state.json"), "{err}");
    }
}
