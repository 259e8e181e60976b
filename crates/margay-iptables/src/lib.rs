//! Network policy in iptables and ipset: a node's [`Program`](margay_policy::program::Program)
//! rendered as Felix's chains, with Margay's prefix `mgy-`, and applied chain by chain.
//!
//! The same intermediate representation as margay-nft's `policy` module, with exactly the
//! same semantics; what differs is only what iptables needs.
//!
//! - [`render`] gives a [`Rendered`]: the `mgy-` chains of the filter table, the rules
//!   Margay owns in `INPUT`, `FORWARD` and `OUTPUT`, and the `mgy40…` (`mgy60…`) ipsets.
//!   [`Rendered::iptables_restore`] and [`Rendered::ipset_restore`] are the inputs that
//!   load it into a kernel that has none of it.
//! - [`render_update`] gives the same rendering from the previous program and its rendering,
//!   rendering again only the chains and sets whose part of the program changed.
//! - [`changed_chains`] is the [`Delta`] from one rendering to another: an
//!   `iptables-restore --noflush` input that rewrites only the chains whose rules changed,
//!   creates the new ones and deletes those no longer used, and the `ipset restore` inputs
//!   around it (sets created and members added before the rules that use them, sets
//!   destroyed after). [`remove_all`] is the delta to nothing.
//! - [`Rendered::from_kernel`] reads what `iptables-save` and `ipset save` show back into a
//!   [`Rendered`], so a restarted agent changes only what differs from the kernel.
//! - [`Iptables`] is where inputs go: [`IptablesCommand`] runs the binaries (optionally in a
//!   named network namespace), [`FakeIptables`] keeps a model of the kernel's tables for
//!   tests. [`Applier`] ties them together.
//!
//! # Layout (Felix's)
//!
//! ```text
//! INPUT, OUTPUT           -I 1: -j mgy-INPUT, -j mgy-OUTPUT
//! FORWARD                 -I 1: -j mgy-FORWARD
//!                         -A:   -m mark --mark 0x10000/0x10000 -j ACCEPT ("Policy explicitly
//!                               accepted packet.")
//! mgy-INPUT               -i mgy+ -g mgy-wl-to-host[; the overlay between the nodes
//!                         accepted; -j mgy-from-host-endpoint; ACCEPT on the accept mark]
//! mgy-OUTPUT              -o mgy+ -j RETURN (not policed)[; the overlay accepted;
//!                         -j mgy-to-host-endpoint; ACCEPT on the accept mark]
//! mgy-wl-to-host          (IPv6) ICMPv6 the host must answer accepted; -j
//!                         mgy-from-wl-dispatch; defaultEndpointToHostAction
//! mgy-FORWARD             clear the pass and scratch marks; [-j mgy-from-hep-forward;]
//!                         -i mgy+ -j mgy-from-wl-dispatch; -o mgy+ -j mgy-to-wl-dispatch[;
//!                         -j mgy-to-hep-forward]
//! mgy-from-host-endpoint, mgy-to-host-endpoint, mgy-from-hep-forward, mgy-to-hep-forward
//!                         -i (-o) <iface> -g mgy-fh- (th-, fhfw-, thfw-) <iface>
//! mgy-fh-<iface>, mgy-th-<iface>   a host endpoint: conntrack, -j mgy-failsafe-in (-out),
//!                         its pipeline; mgy-fhfw-, mgy-thfw-: its applyOnForward tiers
//! mgy-failsafe-in, mgy-failsafe-out   accept the failsafe ports
//! mgy-from-wl-dispatch    -i <iface> -g mgy-fw-<iface> per endpoint; -i mgy+ -j DROP
//!                         ("Unknown interface")
//! mgy-to-wl-dispatch      -o <iface> -g mgy-tw-<iface> per endpoint; -o mgy+ -j DROP
//! mgy-fw-<iface>          the endpoint's egress pipeline
//! mgy-tw-<iface>          the endpoint's ingress pipeline
//! mgy-gi-<hash>, mgy-go-<hash>   policy groups: one tier's policy jumps, shared
//! mgy-pi-<hash>, mgy-po-<hash>, mgy-pri-<name>, mgy-pro-<name>   policy and profile rules
//! ipset mgy40s-<hash>     hash:net; mgy40np-<hash>: hash:ip,port (10.1.0.1,tcp:80);
//!                         mgy40all-hosts: the nodes' addresses
//! ```
//!
//! The parts in brackets exist only with host endpoints.
//!
//! An endpoint chain accepts established and related packets and drops invalid ones, clears
//! the accept and pass marks, and then walks the pipeline as Felix's does: per tier, "Start
//! of tier X" clears the pass mark, the tier's policy group chain is jumped to while the pass
//! mark is clear (it jumps to each policy chain while the pass mark is clear and returns once
//! the accept mark is set), "Return if policy accepted" returns once the accept mark is set, and "End of tier
//! X. Drop if no policies passed packet" drops unless the tier's default action is Pass; then
//! each profile chain, "Return if profile accepted", and "Drop if no profiles matched".
//! Allow sets the accept mark `0x10000` and returns, Pass sets the pass mark `0x20000` and
//! returns (two rules each, as in Felix: iptables cannot set a mark and return in one), Deny
//! drops, Log logs (`LOG --log-prefix`, at most 29 characters: `mgy <tier>/<policy>/<rule> `,
//! or the chain's id when that is too long). The accept mark left on an allowed packet is
//! what the rule appended to `FORWARD` accepts, after every other `FORWARD` rule had its say.
//!
//! What one rule cannot say in iptables (several nets, numbers and named ports together, more
//! than 15 ports, an address that must be in one net and outside another) goes through
//! Felix's scratch bits: rules before the rule set `0x80000` ("every block matched") and use
//! `0x100000` ("this block matched"), and the rule itself requires `0x80000`.
//!
//! Every rule carries two comments: `mgy:<hash>`, a hash of the chain name, the previous
//! rule's hash and the rule (as Felix's `cali:` comments), by which [`changed_chains`] and
//! [`Rendered::from_kernel`] compare chains, and what the rule is for.
//!
//! Names: chains at most 28 characters, sets at most 31 (the kernel's limits); a longer one
//! keeps its kind and replaces the rest with a hash (`mgy-pri-_<hash>`), as Felix does.

mod applier;
mod delta;
mod fake;
mod render;
mod rendered;
mod runner;

use std::io;
use std::net::IpAddr;

pub use applier::Applier;
pub use delta::{changed_chains, remove_all, Delta, Step};
pub use fake::FakeIptables;
pub use render::{chain_name, render, render_update};
pub use rendered::{Chain, Hook, Ipset, Rendered, Rule, SetHeader};
pub use runner::{Backend, Iptables, IptablesCommand};

/// The prefix of every chain Margay owns.
pub const CHAIN_PREFIX: &str = "mgy-";
/// The chain `FORWARD` jumps to.
pub const FORWARD_CHAIN: &str = "mgy-FORWARD";
/// The chain `INPUT` jumps to.
pub const INPUT_CHAIN: &str = "mgy-INPUT";
/// The chain `OUTPUT` jumps to.
pub const OUTPUT_CHAIN: &str = "mgy-OUTPUT";
/// The prefix of the host side of every workload interface the CNI plugin creates.
pub const WORKLOAD_INTERFACE_PREFIX: &str = "mgy";

/// Felix's mark bits: policy accepted, policy passed, and the two scratch bits.
pub const MARK_ACCEPT: u32 = 0x1_0000;
pub const MARK_PASS: u32 = 0x2_0000;
pub const MARK_SCRATCH_ALL: u32 = 0x8_0000;
pub const MARK_SCRATCH_THIS: u32 = 0x10_0000;

/// Which of the two filter tables (`iptables`, `ip6tables`) and its ipsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn version(self) -> u8 {
        match self {
            Family::V4 => 4,
            Family::V6 => 6,
        }
    }

    fn holds(self, ip: IpAddr) -> bool {
        matches!(
            (self, ip),
            (Family::V4, IpAddr::V4(_)) | (Family::V6, IpAddr::V6(_))
        )
    }

    /// The prefix of this family's main sets, as Felix's `cali40` / `cali60`.
    pub fn set_prefix(self) -> &'static str {
        match self {
            Family::V4 => "mgy40",
            Family::V6 => "mgy60",
        }
    }

    /// The prefix of this family's temporary sets (swaps), as Felix's `cali4t`.
    pub fn temporary_set_prefix(self) -> &'static str {
        match self {
            Family::V4 => "mgy4t",
            Family::V6 => "mgy6t",
        }
    }

    /// What every set of this family's name starts with: `mgy4`, `mgy6`.
    fn any_set_prefix(self) -> &'static str {
        match self {
            Family::V4 => "mgy4",
            Family::V6 => "mgy6",
        }
    }

    /// ipset's name of the family: `inet`, `inet6`.
    fn ipset_family(self) -> &'static str {
        match self {
            Family::V4 => "inet",
            Family::V6 => "inet6",
        }
    }
}

/// Running iptables or ipset failed. `Display` is one line naming the command, then the cause,
/// e.g. `ip netns exec n1 iptables-restore --noflush: iptables-restore: line 3 failed`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The command could not be started or fed (binary or `ip` missing, …).
    #[error("{command}: {error}")]
    Spawn { command: String, error: io::Error },
    /// The command ran and refused; `stderr` is its message on one line.
    #[error("{command}: {stderr}")]
    Failed { command: String, stderr: String },
}
