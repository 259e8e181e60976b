//! Margay's nftables rules, rendered as text from plain data and applied atomically with
//! `nft -f -`.
//!
//! - [`ruleset`] is the general model (tables, chains, address sets, rules as statement
//!   text) and its rendering as a script that replaces whole tables in one transaction.
//! - [`NodeRules`], [`render`] and [`Applier`] are the node agent's part: NAT outgoing and
//!   overlay protection in `table ip margay` / `table ip6 margay`. [`remove_all`] deletes
//!   these and the policy tables.
//! - [`policy`] renders a node's policy program (margay-policy's intermediate
//!   representation) as `table ip margay-policy` / `table ip6 margay-policy`, and updates its
//!   sets in place.
//! - [`NftRunner`] is where scripts go; [`Nft`] keeps a libnftables context open for a
//!   long-lived process (the agent), falling back to [`NftCommand`], which runs the `nft`
//!   binary; both optionally in a named network namespace.
//!
//! Margay only ever replaces or deletes its own tables, so other users of nftables
//! (kube-proxy, firewalld, Docker) are never disturbed.

mod node;
pub mod policy;
pub mod ruleset;
mod runner;

use std::io;

pub use node::{remove_all, render, ruleset as node_ruleset, Applier, NodeRules, TABLE};
pub use runner::{Nft, NftCommand, NftRunner};

/// Running nft failed. `Display` is one line naming the command, then the cause, e.g.
/// `nft -f -: /dev/stdin:5:3-40: Error: Could not process rule: No such file or directory |
/// ip saddr @nope drop`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The command could not be started or fed (nft or ip missing, …).
    #[error("{command}: {error}")]
    Spawn { command: String, error: io::Error },
    /// nft ran and refused; `stderr` is its message on one line.
    #[error("{command}: {stderr}")]
    Failed { command: String, stderr: String },
}
