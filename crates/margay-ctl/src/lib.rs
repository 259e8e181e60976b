//! What `margay get/apply/create/replace/delete`, `ipam`, `policy` and `trace` do,
//! independent of argument parsing.

pub mod input;
pub mod ipam;
pub mod output;
pub mod policy;
pub mod resources;
pub mod trace;

pub use input::{decode_all, read_sources, SourceDoc};
pub use output::OutputFormat;
pub use resources::{apply_files, delete_files, delete_named, get, NamespaceScope, Report};

/// A one-line error naming what was wrong and where.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    #[error("{origin}: {message}")]
    Input { origin: String, message: String },
    #[error("unknown resource kind {0:?} (try ippools, nodes, wep, gnp, np, bgppeers, …)")]
    UnknownKind(String),
    #[error("invalid selector {selector:?}: {message}")]
    Selector { selector: String, message: String },
    #[error("{0} not found")]
    NotFound(String),
    #[error(transparent)]
    Client(#[from] margay_client::Error),
    #[error(transparent)]
    Ipam(margay_ipam::Error),
}

pub type Result<T, E = CtlError> = std::result::Result<T, E>;
