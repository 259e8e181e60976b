//! Consistency check and leak garbage collection.
//!
//! `check` reads blocks, handles, affinities, nodes and workload endpoints once and reports
//! every inconsistency. [`Gc`] acts on them the way Calico's kube-controllers do: a leak is
//! released only after it has been seen continuously for the grace period, and re-checked
//! right before release; allocations of deleted nodes go at once.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use margay_api::{nets_overlap, BlockAffinity, IPAMBlock, IPAMHandle, Kind, Node};
use serde::{Deserialize, Serialize};

use crate::block::{ordinal_ip, sequence_of};
use crate::error::Result;
use crate::ops::{Ipam, ReleaseRequest};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ProblemKind {
    /// Two blocks overlap, so one address could be handed out twice.
    DuplicateAddress,
    /// An allocation whose handle object does not exist.
    AllocationWithoutHandle,
    /// An allocation for a pod that has no workload endpoint any more.
    LeakedAllocation,
    /// An allocation made for a node that no longer exists.
    AllocationOfDeletedNode,
    /// A handle whose per-block counts disagree with the blocks.
    HandleMismatch,
    /// A block affine to a node that no longer exists.
    BlockOfDeletedNode,
    /// An affinity whose block does not exist (an interrupted claim).
    AffinityWithoutBlock,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Problem {
    pub kind: ProblemKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip: Option<IpAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub handle: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub block: Option<IpNet>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Sequence number of the allocation, so a release from the report is refused if the
    /// address was re-assigned since.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sequence: Option<u64>,
    pub detail: String,
}

/// What identifies one problem from one GC pass to the next.
type ProblemKey = (
    ProblemKind,
    Option<IpAddr>,
    Option<String>,
    Option<IpNet>,
    Option<u64>,
);

impl Problem {
    fn new(kind: ProblemKind, detail: String) -> Problem {
        Problem {
            kind,
            ip: None,
            handle: None,
            block: None,
            node: None,
            sequence: None,
            detail,
        }
    }

    /// Identity of the problem across runs, for the grace period.
    fn key(
        &self,
    ) -> (
        ProblemKind,
        Option<IpAddr>,
        Option<String>,
        Option<IpNet>,
        Option<u64>,
    ) {
        (
            self.kind,
            self.ip,
            self.handle.clone(),
            self.block,
            self.sequence,
        )
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LeakReport {
    pub blocks: usize,
    pub allocations: usize,
    pub handles: usize,
    pub problems: Vec<Problem>,
}

impl LeakReport {
    pub fn count(&self, kind: ProblemKind) -> usize {
        self.problems.iter().filter(|p| p.kind == kind).count()
    }
}

/// Prefix of the handles the CNI plugin uses; the rest is the container ID.
const POD_HANDLE_PREFIX: &str = "k8s-pod-network.";

impl Ipam {
    /// Reads the IPAM state once and reports every inconsistency.
    pub async fn check(&self) -> Result<LeakReport> {
        let client = self.client();
        let (blocks, _) = client.list::<IPAMBlock>(None).await?;
        let (handles, _) = client.list::<IPAMHandle>(None).await?;
        let (affinities, _) = client.list::<BlockAffinity>(None).await?;
        let (nodes, _) = client.list::<Node>(None).await?;
        let weps = client
            .list_resources(Kind::WorkloadEndpoint, None)
            .await?
            .iter()
            .map(|w| {
                let v = w.to_value();
                let s = |p: &str| v["spec"][p].as_str().unwrap_or_default().to_owned();
                let ns = w.metadata().namespace.clone().unwrap_or_default();
                (ns, s("pod"), s("containerID"))
            })
            .collect::<Vec<_>>();
        let nodes: HashSet<&str> = nodes.iter().map(|n| n.metadata.name.as_str()).collect();
        let handle_names: HashMap<&str, &IPAMHandle> = handles
            .iter()
            .map(|h| (h.metadata.name.as_str(), h))
            .collect();

        let mut report = LeakReport {
            blocks: blocks.len(),
            handles: handles.len(),
            ..Default::default()
        };
        for (i, a) in blocks.iter().enumerate() {
            for b in &blocks[i + 1..] {
                if nets_overlap(&a.spec.cidr, &b.spec.cidr) {
                    let mut p = Problem::new(
                        ProblemKind::DuplicateAddress,
                        format!("blocks {} and {} overlap", a.spec.cidr, b.spec.cidr),
                    );
                    p.block = Some(a.spec.cidr);
                    report.problems.push(p);
                }
            }
        }

        // (handle, block) → allocations actually found.
        let mut found: BTreeMap<(String, String), u32> = BTreeMap::new();
        for blk in &blocks {
            if let Some(node) = blk.host_affinity() {
                if !nodes.contains(node) {
                    let mut p = Problem::new(
                        ProblemKind::BlockOfDeletedNode,
                        format!(
                            "block {} is affine to node {node:?}, which does not exist",
                            blk.spec.cidr
                        ),
                    );
                    p.block = Some(blk.spec.cidr);
                    p.node = Some(node.to_owned());
                    report.problems.push(p);
                }
            }
            for (ordinal, idx) in blk.spec.allocations.iter().enumerate() {
                let Some(idx) = idx else { continue };
                report.allocations += 1;
                let ip = ordinal_ip(&blk.spec.cidr, ordinal);
                let attr = &blk.spec.attributes[*idx];
                let handle = attr.handle_id.clone().unwrap_or_default();
                *found
                    .entry((handle.clone(), blk.spec.cidr.to_string()))
                    .or_default() += 1;
                let problem = |kind, detail: String| Problem {
                    kind,
                    ip: Some(ip),
                    handle: Some(handle.clone()),
                    block: Some(blk.spec.cidr),
                    node: attr.secondary.get("node").cloned(),
                    sequence: sequence_of(&blk.spec, ip),
                    detail,
                };
                if !handle_names.contains_key(handle.as_str()) {
                    report.problems.push(problem(
                        ProblemKind::AllocationWithoutHandle,
                        format!("{ip} is allocated to handle {handle:?}, which does not exist"),
                    ));
                    continue;
                }
                if let Some(node) = attr.secondary.get("node") {
                    if !nodes.contains(node.as_str()) {
                        report.problems.push(problem(
                            ProblemKind::AllocationOfDeletedNode,
                            format!("{ip} was allocated on node {node:?}, which does not exist"),
                        ));
                        continue;
                    }
                }
                if let (Some(ns), Some(pod)) =
                    (attr.secondary.get("namespace"), attr.secondary.get("pod"))
                {
                    let container = handle.strip_prefix(POD_HANDLE_PREFIX);
                    let alive = weps.iter().any(|(wns, wpod, cid)| {
                        wns == ns
                            && wpod == pod
                            && (cid.is_empty() || container.is_none_or(|c| c == cid))
                    });
                    if !alive {
                        report.problems.push(problem(
                            ProblemKind::LeakedAllocation,
                            format!(
                                "{ip} belongs to pod {ns}/{pod}, which has no workload endpoint"
                            ),
                        ));
                    }
                }
            }
        }
        for h in &handles {
            for (block, count) in &h.spec.block {
                let actual = found
                    .get(&(h.metadata.name.clone(), block.clone()))
                    .copied()
                    .unwrap_or(0);
                if actual != *count {
                    let mut p = Problem::new(
                        ProblemKind::HandleMismatch,
                        format!(
                            "handle {} records {count} address(es) in {block}, the block has {actual}",
                            h.metadata.name
                        ),
                    );
                    p.handle = Some(h.metadata.name.clone());
                    p.block = block.parse().ok();
                    report.problems.push(p);
                }
            }
        }
        let block_cidrs: HashSet<IpNet> = blocks.iter().map(|b| b.spec.cidr).collect();
        for a in &affinities {
            if !block_cidrs.contains(&a.spec.cidr) {
                let mut p = Problem::new(
                    ProblemKind::AffinityWithoutBlock,
                    format!(
                        "affinity {} ({:?}) names block {}, which does not exist",
                        a.metadata.name, a.spec.state, a.spec.cidr
                    ),
                );
                p.block = Some(a.spec.cidr);
                p.node = Some(a.spec.node.clone());
                p.handle = Some(a.metadata.name.clone());
                report.problems.push(p);
            }
        }
        Ok(report)
    }

    /// Releases one problem's leak, after re-checking that it still holds.
    async fn repair(&self, p: &Problem) -> Result<bool> {
        let client = self.client();
        match p.kind {
            ProblemKind::DuplicateAddress => Ok(false),
            ProblemKind::AllocationWithoutHandle
            | ProblemKind::LeakedAllocation
            | ProblemKind::AllocationOfDeletedNode => {
                let Some(ip) = p.ip else { return Ok(false) };
                let missing = self
                    .release_ips(&[ReleaseRequest {
                        ip,
                        sequence: p.sequence,
                    }])
                    .await?;
                Ok(missing.is_empty())
            }
            ProblemKind::HandleMismatch => {
                let Some(name) = &p.handle else {
                    return Ok(false);
                };
                self.reconcile_handle(name).await
            }
            ProblemKind::BlockOfDeletedNode => match p.block {
                Some(cidr) => self.release_block_if_empty(&cidr).await,
                None => Ok(false),
            },
            ProblemKind::AffinityWithoutBlock => {
                let Some(name) = &p.handle else {
                    return Ok(false);
                };
                let Some(a) = client.get::<BlockAffinity>(None, name).await? else {
                    return Ok(true);
                };
                let block = margay_api::cidr_to_name(&a.spec.cidr);
                if client.get::<IPAMBlock>(None, &block).await?.is_some() {
                    return Ok(false);
                }
                client
                    .delete::<BlockAffinity>(None, name, a.metadata.revision())
                    .await?;
                Ok(true)
            }
        }
    }

    /// Rewrites a handle's counts from the blocks (deleting it when it holds nothing).
    async fn reconcile_handle(&self, name: &str) -> Result<bool> {
        let client = self.client();
        let Some(mut h) = client.get::<IPAMHandle>(None, name).await? else {
            return Ok(true);
        };
        let mut counts = BTreeMap::new();
        for block in h.spec.block.keys() {
            let Ok(cidr) = block.parse::<IpNet>() else {
                continue;
            };
            if let Some(b) = client
                .get::<IPAMBlock>(None, &margay_api::cidr_to_name(&cidr))
                .await?
            {
                let n = crate::block::ips_of_handle(&b.spec, name).len() as u32;
                if n > 0 {
                    counts.insert(block.clone(), n);
                }
            }
        }
        if counts.is_empty() {
            client
                .delete::<IPAMHandle>(None, name, h.metadata.revision())
                .await?;
        } else {
            h.spec.block = counts;
            client.update(&h).await?;
        }
        Ok(true)
    }
}

/// Leak garbage collector with Calico's grace period. Keep one instance running: it
/// remembers when each leak was first seen.
pub struct Gc {
    ipam: Ipam,
    grace: Duration,
    first_seen: HashMap<ProblemKey, Instant>,
}

/// What one GC pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcPass {
    pub repaired: Vec<Problem>,
    /// Leaks seen but still inside their grace period.
    pub waiting: usize,
}

impl Gc {
    /// `grace` is `leakGracePeriod`; zero disables leak release (as in Calico), though
    /// allocations of deleted nodes are still released.
    pub fn new(ipam: Ipam, grace: Duration) -> Gc {
        Gc {
            ipam,
            grace,
            first_seen: HashMap::new(),
        }
    }

    pub async fn run_once(&mut self) -> Result<GcPass> {
        self.run_once_at(Instant::now()).await
    }

    /// One pass at time `now` (a parameter so tests control the clock).
    pub async fn run_once_at(&mut self, now: Instant) -> Result<GcPass> {
        let report = self.ipam.check().await?;
        let current: HashSet<_> = report.problems.iter().map(Problem::key).collect();
        self.first_seen.retain(|k, _| current.contains(k));
        let mut pass = GcPass::default();
        let mut due = Vec::new();
        for p in &report.problems {
            let immediate = p.kind == ProblemKind::AllocationOfDeletedNode;
            let seen = *self.first_seen.entry(p.key()).or_insert(now);
            if immediate || (!self.grace.is_zero() && now.duration_since(seen) >= self.grace) {
                due.push(p);
            } else {
                pass.waiting += 1;
            }
        }
        if due.is_empty() {
            return Ok(pass);
        }
        // Re-check just before releasing: the state may have changed since the report.
        let fresh: HashSet<_> = self
            .ipam
            .check()
            .await?
            .problems
            .iter()
            .map(Problem::key)
            .collect();
        for p in due {
            if fresh.contains(&p.key()) && self.ipam.repair(p).await? {
                self.first_seen.remove(&p.key());
                pass.repaired.push(p.clone());
            }
        }
        Ok(pass)
    }
}

/// Per-block figures for `ipam show --show-blocks`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BlockUsage {
    pub cidr: IpNet,
    pub pool: Option<String>,
    pub affinity: Option<String>,
    pub size: usize,
    pub in_use: usize,
    /// Allocations made for nodes other than the block's (borrowed addresses).
    pub borrowed: Vec<(IpAddr, String)>,
}

/// What `ipam show` prints.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    pub pools: Vec<crate::pools::PoolUsage>,
    pub blocks: Vec<BlockUsage>,
}

impl Ipam {
    pub async fn summary(&self) -> Result<Summary> {
        let client = self.client();
        let (pools, _) = client.list::<margay_api::IPPool>(None).await?;
        let (blocks, _) = client.list::<IPAMBlock>(None).await?;
        let mut out = Summary::default();
        for b in &blocks {
            let pool = pools.iter().find(|p| p.spec.cidr.contains(&b.spec.cidr));
            let owner = b.host_affinity();
            let borrowed = b
                .spec
                .allocations
                .iter()
                .enumerate()
                .filter_map(|(ordinal, idx)| {
                    let node = b.spec.attributes[(*idx)?].secondary.get("node")?;
                    (Some(node.as_str()) != owner)
                        .then(|| (ordinal_ip(&b.spec.cidr, ordinal), node.clone()))
                })
                .collect();
            out.blocks.push(BlockUsage {
                cidr: b.spec.cidr,
                pool: pool.map(|p| p.metadata.name.clone()),
                affinity: b.spec.affinity.clone(),
                size: b.size(),
                in_use: crate::block::in_use(&b.spec),
                borrowed,
            });
        }
        out.blocks.sort_by_key(|b| b.cidr);
        for p in &pools {
            let in_use = out
                .blocks
                .iter()
                .filter(|b| p.spec.cidr.contains(&b.cidr))
                .map(|b| b.in_use as u128)
                .sum();
            out.pools.push(crate::pools::PoolUsage {
                name: p.metadata.name.clone(),
                cidr: p.spec.cidr,
                size: 1u128 << (p.spec.cidr.max_prefix_len() - p.spec.cidr.prefix_len()),
                in_use,
            });
        }
        Ok(out)
    }
}
