//! The one crate in Margay that makes networking syscalls: network namespaces ([`netns`]),
//! rtnetlink ([`netlink`]), `/proc/sys` ([`sysctl`]), TCP MD5 keys ([`tcp_md5`]) and the
//! processes of a lab ([`process`]); it also runs the networking tools (`nft`,
//! `iptables-restore`, `ipset`: [`command`]) and holds libnftables contexts ([`nftables`]).
//! Everything else reaches the kernel through it, behind its own traits.
//!
//! It is synchronous and starts no runtime: the CNI plugin is a short-lived process with a
//! budget of a few milliseconds per pod. Namespace switches happen on short-lived scoped
//! threads ([`netns::NetNs::run`]), never on the caller's thread.

pub mod command;
mod error;
pub mod netlink;
pub mod netns;
pub mod nftables;
pub mod process;
pub mod sysctl;
pub mod tcp_md5;

pub use error::Error;
