//! What the tests of margay-nft and margay-iptables share (a dev-dependency only):
//!
//! - [`fixture`]: margay-policy's golden cluster (`program-cluster.yaml`) and its node1
//!   program, which both crates' goldens render, and any YAML as a cluster.
//! - [`program`]: small values of a policy program for the renderers' unit tests.
//! - [`netns`]: throwaway named network namespaces, deleted even when a test panics.
//! - [`pods`]: the local pods of a program wired to a node namespace, trying TCP to each
//!   other, with what arrived checked against the policy engine.

pub mod fixture;
pub mod netns;
pub mod pods;
pub mod program;
