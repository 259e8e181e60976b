//! What the policy tests share (a dev-dependency only): margay-nft's and margay-iptables',
//! margay-policy's upstream runner and the `margay` crate's lab tests.
//!
//! - [`fixture`]: margay-policy's golden cluster (`program-cluster.yaml`) and its node1
//!   program, which both crates' goldens render, and any YAML as a cluster.
//! - [`program`]: small values of a policy program for the renderers' unit tests.
//! - [`netns`]: throwaway named network namespaces, deleted even when a test panics.
//! - [`pods`]: the local pods of a program wired to a node namespace, trying TCP to each
//!   other, with what arrived checked against the policy engine.
//! - [`scale`]: the policy benchmarks' generated cluster (500 endpoints, 1,000 policies).
//! - [`upstream`]: margay-policy's upstream NetworkPolicy cases (fixture, case files, truth
//!   tables), parsed strictly.

pub mod fixture;
pub mod netns;
pub mod pods;
pub mod program;
pub mod scale;
pub mod upstream;
