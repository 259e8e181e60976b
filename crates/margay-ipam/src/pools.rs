//! Choosing pools for a node and enumerating the blocks of a pool.

use std::collections::BTreeMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::net::IpAddr;

use ipnet::IpNet;
use margay_api::{AllowedUse, IPPool, IPReservation};
use margay_selector::Selector;

/// Pools usable by a node for one family and use, honouring an optional caller filter.
pub(crate) fn candidate_pools<'a>(
    pools: &'a [IPPool],
    node_labels: &BTreeMap<String, String>,
    v6: bool,
    usage: AllowedUse,
) -> Vec<&'a IPPool> {
    let mut out: Vec<&IPPool> = pools
        .iter()
        .filter(|p| p.spec.cidr.addr().is_ipv6() == v6)
        .filter(|p| !p.spec.disabled && p.allows(usage))
        .filter(|p| {
            Selector::parse(p.node_selector())
                .map(|s| s.matches(node_labels))
                .unwrap_or(false)
        })
        .collect();
    out.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    out
}

/// A stable per-node seed, so competing nodes start their searches in different places
/// (Calico seeds its block generator with a hash of the hostname).
pub(crate) fn node_seed(node: &str) -> u64 {
    let mut h = DefaultHasher::new();
    node.hash(&mut h);
    h.finish()
}

/// Number of blocks in a pool (capped: a /8 pool of /26 blocks has 262 144).
pub(crate) fn block_count(pool: &IPPool) -> u128 {
    1u128 << (pool.block_size() - pool.spec.cidr.prefix_len())
}

/// The `index`-th block of a pool.
pub(crate) fn nth_block(pool: &IPPool, index: u128) -> IpNet {
    let size = pool.block_size();
    let host_bits = u32::from(pool.spec.cidr.max_prefix_len() - size);
    let base = match pool.spec.cidr.network() {
        IpAddr::V4(a) => IpAddr::V4((u32::from(a) + ((index as u32) << host_bits)).into()),
        IpAddr::V6(a) => IpAddr::V6((u128::from(a) + (index << host_bits)).into()),
    };
    IpNet::new(base, size).expect("block prefix is valid for its family")
}

/// The block of `pool` containing `ip`.
pub(crate) fn block_for_ip(pool: &IPPool, ip: IpAddr) -> IpNet {
    IpNet::new(ip, pool.block_size())
        .expect("block prefix is valid for its family")
        .trunc()
}

/// The reservation holding `ip`, if any.
pub(crate) fn reservation_of(reservations: &[IPReservation], ip: IpAddr) -> Option<&IPReservation> {
    reservations.iter().find(|r| r.contains(ip))
}

/// True when every address of the block is reserved (no point claiming it).
pub(crate) fn fully_reserved(reservations: &[IPReservation], block: &IpNet) -> bool {
    reservations
        .iter()
        .flat_map(|r| r.spec.reserved_cidrs.iter())
        .any(|r| r.contains(&block.network()) && r.prefix_len() <= block.prefix_len())
}

/// Per-pool totals for `ipam show`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PoolUsage {
    pub name: String,
    pub cidr: IpNet,
    pub size: u128,
    pub in_use: u128,
}
