//! One module per family of kinds.

pub mod bgp;
pub mod config;
pub mod endpoint;
pub mod ipam;
pub mod k8s;
pub mod node;
pub mod policy;

pub use bgp::*;
pub use config::*;
pub use endpoint::*;
pub use ipam::*;
pub use k8s::*;
pub use node::*;
pub use policy::*;
