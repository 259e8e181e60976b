//! Margay's policy engine: one model of Calico's network policy semantics, pure (no I/O),
//! which the dataplane renderers, `margay policy matrix` and `margay trace` all share so that
//! they can never disagree.
//!
//! [`Cluster::from_resources`] resolves the resources once: endpoints with the labels
//! selectors see, Kubernetes NetworkPolicies converted as Calico's converter does, every
//! policy's selector matched against every endpoint, every rule selector turned into the set
//! of endpoints and network-set CIDRs it stands for (what Felix programs as an IP set).
//! [`evaluate`] then walks one packet through the chains as Felix's would, explaining each
//! step; [`matrix`] does the same for every pair of endpoints, without the explanation;
//! [`program::program`] gives one node's dataplane the same decisions as plain data (the
//! intermediate representation the renderers share).
//!
//! # Semantics (Calico's)
//!
//! - Each direction is judged on its own side: egress at the source endpoint, ingress at the
//!   destination endpoint. A peer that is no endpoint (an external address) has no side.
//!   Traffic from an endpoint to itself never leaves the pod and is always allowed.
//! - Tiers apply in `order` (missing: after every ordered tier), ties by name; the `default`
//!   tier has order 1,000,000. A tier none of whose policies selects the endpoint in that
//!   direction is skipped. Within a tier, policies apply in `order` (missing: last), ties by
//!   name, then namespace, then kind; within a policy, rules in order. `Allow` and `Deny`
//!   decide, `Pass` jumps to the next tier, `Log` continues. A policy none of whose rules
//!   matches hands over to the next policy; a tier that ends without a verdict applies its
//!   `defaultAction`: `Deny` decides, `Pass` goes on to the next tier.
//! - Profiles apply only when no tier applied, or the last one applied passed: the endpoint's
//!   profiles in order, the first matching rule decides (`Pass` moves to the next profile),
//!   and a packet no profile rule matches is dropped ("Drop if no profiles matched").
//! - A node's own addresses (its Node's) are no endpoints, but a workload's packet to its own
//!   node meets the node's `defaultEndpointToHostAction` after the workload's egress policy,
//!   and the node's packets to its own workloads are not policed. A packet to or from one of
//!   a host endpoint's `expectedIPs` meets, on that side, the overlay exemption and the
//!   failsafe ports, then the endpoint's policies and profiles, as a workload's.
//!
//! What the engine cannot know is listed where it matters: [`Packet`] (unknown source ports
//! and ICMP codes, address families), [`Endpoint`] (service account labels, host-network
//! pods) and [`Cluster::from_resources`] (Services, untracked and pre-DNAT policy).

mod cluster;
mod compile;
mod eval;
mod matrix;
mod model;
pub mod program;

pub use cluster::{Cluster, Endpoint, HostEndpoint, HostSettings, NamedPort};
pub use eval::{
    evaluate, matrix, Decision, DirectionVerdict, Icmp, IcmpVersion, Packet, Peer, PolicyKind,
    PolicyRef, RuleRef, Step, Transport, Verdict,
};
pub use matrix::{render_table, Matrix, Protocol, Report, UnknownProtocol};
pub use model::{Change, Model, ResourceKey};

/// Every kind [`Cluster::from_resources`] reads; a change to any of them can change a matrix
/// or a node's program.
pub const INPUT_KINDS: [margay_api::Kind; 13] = [
    margay_api::Kind::Namespace,
    margay_api::Kind::Pod,
    margay_api::Kind::WorkloadEndpoint,
    margay_api::Kind::KubernetesNetworkPolicy,
    margay_api::Kind::NetworkPolicy,
    margay_api::Kind::GlobalNetworkPolicy,
    margay_api::Kind::Tier,
    margay_api::Kind::Profile,
    margay_api::Kind::NetworkSet,
    margay_api::Kind::GlobalNetworkSet,
    margay_api::Kind::Node,
    margay_api::Kind::AgentConfiguration,
    margay_api::Kind::HostEndpoint,
];

/// Why resources could not be turned into a [`Cluster`]. Every variant names the resource
/// (`GlobalNetworkPolicy default.deny-all`, `Pod shop/web-0`), and `Display` is one complete
/// line including the cause.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PolicyError {
    /// A feature the engine does not implement. Never silently ignored: a policy evaluated
    /// without part of its meaning would make every prediction wrong.
    #[error("{resource}: {feature} is not supported yet")]
    Unsupported { resource: String, feature: String },
    #[error("{resource}: {field}: {error}")]
    Selector {
        resource: String,
        field: String,
        error: margay_selector::ParseError,
    },
    /// Calico refuses a policy in a tier that does not exist; so does the engine.
    #[error("{resource}: tier {tier:?} does not exist (add a Tier resource for it)")]
    UnknownTier { resource: String, tier: String },
    #[error("{resource} is given more than once")]
    Duplicate { resource: String },
    #[error("{resource}: {field}: {message}")]
    Invalid {
        resource: String,
        field: String,
        message: String,
    },
}

#[cfg(test)]
mod tests;
