//! `margay lab`: a whole cluster in network namespaces on one machine. A fabric namespace
//! bridges the node namespaces (two subnets and a router for `crosssubnet`); each node runs
//! `margay node run`; each pod is a namespace wired by the CNI plugin, running a small server
//! that answers with its name. Nothing has a route out of the lab.

pub mod access;
pub mod host;
pub mod probe;
pub mod serve;
pub mod spec;
pub mod state;
pub mod status;
pub mod topology;
pub mod up;
pub mod verify;

use std::path::{Path, PathBuf};

pub use host::{Host, HostError, LinuxHost};
pub use spec::{LabSpec, Mode, SpecError};
pub use state::LabState;

#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error(
        "lab name {0:?} is not valid (lower-case letters, digits and '-', at most 32 characters)"
    )]
    BadName(String),
    #[error("lab {name} is already up (state in {}); take it down first: margay lab down --name {name}", dir.display())]
    AlreadyUp { name: String, dir: PathBuf },
    #[error("lab {name} is not up (no state in {}); start it with: margay lab up --name {name}", dir.display())]
    NotUp { name: String, dir: PathBuf },
    #[error("--mode {mode}: {reason}")]
    ModeUnavailable { mode: Mode, reason: String },
    #[error("margay lab needs root: it creates and enters network namespaces (try sudo)")]
    NotRoot,
    #[error("{what} not found: {hint}")]
    Missing { what: String, hint: String },
    #[error(transparent)]
    Host(#[from] HostError),
    #[error("lab datastore: {message}")]
    Datastore { url: String, message: String },
    #[error("pod {id}: {message}")]
    Pod { id: String, message: String },
    #[error("{what} did not happen within {seconds} s: {detail}")]
    Timeout {
        what: String,
        seconds: u64,
        detail: String,
    },
    #[error("{action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: not a lab state file: {message}", path.display())]
    Corrupt { path: PathBuf, message: String },
    #[error("no pod {id} in lab {lab} (pods are named NAMESPACE/NAME: {known})")]
    UnknownPod {
        id: String,
        lab: String,
        known: String,
    },
    #[error(transparent)]
    Probe(#[from] probe::ProbeError),
    #[error("{0} (everything `lab up` had made was removed)")]
    RolledBack(Box<LabError>),
    #[error(
        "{error}; removing what was made also failed: {cleanup} (run `margay lab down` again)"
    )]
    CleanupFailed {
        error: Box<LabError>,
        cleanup: Box<LabError>,
    },
}

impl LabError {
    pub fn io(action: &'static str, path: &Path, source: std::io::Error) -> LabError {
        LabError::Io {
            action,
            path: path.to_owned(),
            source,
        }
    }
}

/// The lab creates and enters network namespaces: only root may.
pub fn require_root() -> Result<(), LabError> {
    if margay_sys::process::is_root() {
        Ok(())
    } else {
        Err(LabError::NotRoot)
    }
}

/// Loads lab `name` under `root`, or says it is not up.
pub fn load(root: &Path, name: &str) -> Result<LabState, LabError> {
    up::check_name(name)?;
    let dir = state::lab_dir(root, name);
    LabState::load(&dir)?.ok_or(LabError::NotUp {
        name: name.to_owned(),
        dir,
    })
}
