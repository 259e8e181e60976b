//! Allocation inside one block, as pure functions on [`IPAMBlockSpec`]: Calico's layout
//! (`allocations` ordinal → attribute index, `unallocated` FIFO, shared `attributes`,
//! per-ordinal sequence numbers).

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use margay_api::{block_len, AllocationAttribute, IPAMBlockSpec};

/// A new, empty block; every ordinal free, in address order.
pub fn new_block(
    cidr: IpNet,
    affinity: Option<String>,
    claim_time: Option<String>,
) -> IPAMBlockSpec {
    let len = block_len(&cidr);
    IPAMBlockSpec {
        cidr,
        affinity,
        affinity_claim_time: claim_time,
        allocations: vec![None; len],
        unallocated: (0..len).collect(),
        attributes: Vec::new(),
        sequence_number: 0,
        sequence_number_for_allocation: BTreeMap::new(),
        deleted: false,
        strict_affinity: false,
    }
}

/// The address at `ordinal` of the block.
pub fn ordinal_ip(cidr: &IpNet, ordinal: usize) -> IpAddr {
    match cidr.network() {
        IpAddr::V4(a) => IpAddr::V4((u32::from(a) + ordinal as u32).into()),
        IpAddr::V6(a) => IpAddr::V6((u128::from(a) + ordinal as u128).into()),
    }
}

/// The ordinal of `ip` in the block, if it is inside.
pub fn ip_ordinal(cidr: &IpNet, ip: IpAddr) -> Option<usize> {
    if !cidr.contains(&ip) {
        return None;
    }
    Some(match (cidr.network(), ip) {
        (IpAddr::V4(n), IpAddr::V4(a)) => (u32::from(a) - u32::from(n)) as usize,
        (IpAddr::V6(n), IpAddr::V6(a)) => (u128::from(a) - u128::from(n)) as usize,
        _ => return None,
    })
}

/// Index of an attribute equal to `attr`, adding it when new (Calico shares attributes
/// between the ordinals of one handle).
fn attribute_index(block: &mut IPAMBlockSpec, attr: &AllocationAttribute) -> usize {
    if let Some(i) = block.attributes.iter().position(|a| a == attr) {
        return i;
    }
    block.attributes.push(attr.clone());
    block.attributes.len() - 1
}

fn record(block: &mut IPAMBlockSpec, ordinal: usize, attr: &AllocationAttribute) {
    let idx = attribute_index(block, attr);
    block.allocations[ordinal] = Some(idx);
    block.sequence_number += 1;
    block
        .sequence_number_for_allocation
        .insert(ordinal.to_string(), block.sequence_number);
}

/// Takes up to `count` free addresses from the head of the FIFO, skipping `excluded` ones
/// (reservations), which stay free in place.
pub fn auto_assign(
    block: &mut IPAMBlockSpec,
    count: usize,
    attr: &AllocationAttribute,
    excluded: &(dyn Fn(IpAddr) -> bool + Sync),
) -> Vec<IpAddr> {
    let mut taken = Vec::new();
    let mut kept = Vec::with_capacity(block.unallocated.len());
    let free = std::mem::take(&mut block.unallocated);
    for ordinal in free {
        let ip = ordinal_ip(&block.cidr, ordinal);
        if taken.len() < count && !excluded(ip) {
            taken.push((ordinal, ip));
        } else {
            kept.push(ordinal);
        }
    }
    block.unallocated = kept;
    for (ordinal, _) in &taken {
        record(block, *ordinal, attr);
    }
    taken.into_iter().map(|(_, ip)| ip).collect()
}

/// Claims one given address; `false` when it is already in use.
pub fn assign(block: &mut IPAMBlockSpec, ip: IpAddr, attr: &AllocationAttribute) -> bool {
    let Some(ordinal) = ip_ordinal(&block.cidr, ip) else {
        return false;
    };
    let Some(pos) = block.unallocated.iter().position(|o| *o == ordinal) else {
        return false;
    };
    block.unallocated.remove(pos);
    record(block, ordinal, attr);
    true
}

/// Why a release was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReleaseRefusal {
    NotAllocated,
    /// The address was released and handed out again since the caller saw it.
    StaleSequence {
        expected: u64,
        actual: u64,
    },
}

/// Releases one address: the ordinal goes to the back of the FIFO so it is reused last.
/// Returns the handle that held it.
pub fn release(
    block: &mut IPAMBlockSpec,
    ip: IpAddr,
    sequence: Option<u64>,
) -> Result<Option<String>, ReleaseRefusal> {
    let ordinal = ip_ordinal(&block.cidr, ip).ok_or(ReleaseRefusal::NotAllocated)?;
    let idx = block.allocations[ordinal].ok_or(ReleaseRefusal::NotAllocated)?;
    if let Some(expected) = sequence {
        let actual = block
            .sequence_number_for_allocation
            .get(&ordinal.to_string())
            .copied()
            .unwrap_or_default();
        if actual != expected {
            return Err(ReleaseRefusal::StaleSequence { expected, actual });
        }
    }
    let handle = block.attributes[idx].handle_id.clone();
    block.allocations[ordinal] = None;
    block.unallocated.push(ordinal);
    block
        .sequence_number_for_allocation
        .remove(&ordinal.to_string());
    compact_attributes(block);
    Ok(handle)
}

/// Drops attributes no allocation refers to, renumbering the references.
fn compact_attributes(block: &mut IPAMBlockSpec) {
    let mut used = vec![false; block.attributes.len()];
    for idx in block.allocations.iter().flatten() {
        used[*idx] = true;
    }
    if used.iter().all(|u| *u) {
        return;
    }
    let mut remap = vec![usize::MAX; used.len()];
    let mut kept = Vec::new();
    for (i, attr) in block.attributes.drain(..).enumerate() {
        if used[i] {
            remap[i] = kept.len();
            kept.push(attr);
        }
    }
    block.attributes = kept;
    for idx in block.allocations.iter_mut().flatten() {
        *idx = remap[*idx];
    }
}

/// Addresses held by `handle` in this block.
pub fn ips_of_handle(block: &IPAMBlockSpec, handle: &str) -> Vec<IpAddr> {
    block
        .allocations
        .iter()
        .enumerate()
        .filter_map(|(ordinal, a)| {
            let attr = &block.attributes[(*a)?];
            (attr.handle_id.as_deref() == Some(handle)).then(|| ordinal_ip(&block.cidr, ordinal))
        })
        .collect()
}

pub fn in_use(block: &IPAMBlockSpec) -> usize {
    block.allocations.iter().filter(|a| a.is_some()).count()
}

/// The sequence number recorded for the allocation of `ip`.
pub fn sequence_of(block: &IPAMBlockSpec, ip: IpAddr) -> Option<u64> {
    let ordinal = ip_ordinal(&block.cidr, ip)?;
    block.allocations[ordinal]?;
    block
        .sequence_number_for_allocation
        .get(&ordinal.to_string())
        .copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(h: &str) -> AllocationAttribute {
        AllocationAttribute {
            handle_id: Some(h.into()),
            secondary: Default::default(),
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn fifo_reuses_released_addresses_last() {
        let mut b = new_block("10.0.0.0/30".parse().unwrap(), None, None);
        let got = auto_assign(&mut b, 2, &attr("a"), &|_| false);
        assert_eq!(got, vec![ip("10.0.0.0"), ip("10.0.0.1")]);
        assert_eq!(release(&mut b, ip("10.0.0.0"), None), Ok(Some("a".into())));
        let got = auto_assign(&mut b, 2, &attr("b"), &|_| false);
        assert_eq!(got, vec![ip("10.0.0.2"), ip("10.0.0.3")]);
        assert_eq!(b.unallocated, vec![0]);
        assert_eq!(in_use(&b), 3);
    }

    #[test]
    fn reserved_addresses_are_skipped_and_stay_free() {
        let mut b = new_block("10.0.0.0/30".parse().unwrap(), None, None);
        let got = auto_assign(&mut b, 4, &attr("a"), &|a| a == ip("10.0.0.1"));
        assert_eq!(got, vec![ip("10.0.0.0"), ip("10.0.0.2"), ip("10.0.0.3")]);
        assert_eq!(b.unallocated, vec![1]);
    }

    #[test]
    fn stale_release_of_a_reassigned_address_is_refused() {
        let mut b = new_block("10.0.0.0/31".parse().unwrap(), None, None);
        auto_assign(&mut b, 1, &attr("a"), &|_| false);
        let old_seq = sequence_of(&b, ip("10.0.0.0")).unwrap();
        release(&mut b, ip("10.0.0.0"), Some(old_seq)).unwrap();
        assert!(assign(&mut b, ip("10.0.0.0"), &attr("b")));
        assert!(matches!(
            release(&mut b, ip("10.0.0.0"), Some(old_seq)),
            Err(ReleaseRefusal::StaleSequence { .. })
        ));
        assert_eq!(ips_of_handle(&b, "b"), vec![ip("10.0.0.0")]);
    }

    #[test]
    fn attributes_are_shared_and_compacted() {
        let mut b = new_block("10.0.0.0/29".parse().unwrap(), None, None);
        auto_assign(&mut b, 2, &attr("a"), &|_| false);
        auto_assign(&mut b, 1, &attr("b"), &|_| false);
        assert_eq!(b.attributes.len(), 2);
        release(&mut b, ip("10.0.0.0"), None).unwrap();
        release(&mut b, ip("10.0.0.1"), None).unwrap();
        assert_eq!(b.attributes, vec![attr("b")]);
        assert_eq!(b.allocations[2], Some(0));
    }

    #[test]
    fn ipv6_ordinals() {
        let cidr: IpNet = "fd00::/122".parse().unwrap();
        assert_eq!(ordinal_ip(&cidr, 63), ip("fd00::3f"));
        assert_eq!(ip_ordinal(&cidr, ip("fd00::3f")), Some(63));
        assert_eq!(ip_ordinal(&cidr, ip("fd00::40")), None);
    }
}
