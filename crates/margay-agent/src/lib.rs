//! The node agent (`margay node run`): Felix's routing and policy.
//!
//! It registers the node, then keeps the kernel in step with the datastore: it reads the
//! model ([`model`]), computes the desired dataplane as plain data ([`plan`]), diffs it
//! against what the kernel has and applies only the difference ([`reconcile`], through the
//! [`kernel::Kernel`] seam), and programs the node's network policy into nftables or
//! iptables ([`policy`], [`dataplane`]), on every change and on a resync timer ([`agent`]).
//! With BGP enabled it also runs the node's BGP speaker ([`bgp`]).

pub mod agent;
pub mod autodetect;
pub mod bgp;
pub mod config;
pub mod dataplane;
pub mod http;
pub mod kernel;
pub mod metrics;
pub mod model;
pub mod plan;
pub mod policy;
pub mod reconcile;
pub mod register;
pub mod status;

/// Why the agent stopped or a step failed; one line each.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("datastore: {0}")]
    Datastore(#[from] margay_client::Error),
    #[error("datastore: {0}")]
    Connect(#[from] margay_datastore::Error),
    #[error("IPAM: {0}")]
    Ipam(#[from] margay_ipam::Error),
    #[error("kernel: {0}")]
    Kernel(#[from] margay_sys::Error),
    #[error("nftables: {0}")]
    Nft(#[from] margay_nft::Error),
    #[error("{0}")]
    Config(String),
    #[error("{0}")]
    Io(String),
    #[error("{0}: too many concurrent writers")]
    Contention(String),
}
