//! The IPAM operations: auto-assign, assign a given address, release by address or handle,
//! look-ups and block release.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::time::SystemTime;

use ipnet::IpNet;
use margay_api::{
    cidr_to_name, AffinityState, AllocationAttribute, AllowedUse, AssignmentMode, BlockAffinity,
    BlockAffinitySpec, IPAMBlock, IPAMConfig, IPAMConfigSpec, IPAMHandle, IPPool, IPReservation,
    Node, ObjectMeta, IPAM_CONFIG_NAME,
};
use margay_client::{Client, Reads};
use rand::seq::SliceRandom;
use rand::SeedableRng;

use crate::block;
use crate::error::{Error, Result};
use crate::handles::{self, HandleView};
use crate::pools::{
    block_count, block_for_ip, candidate_pools, fully_reserved, node_seed, nth_block,
    reservation_of,
};
use crate::retry::with_retry;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    fn name(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }
}

/// What the addresses are for; decides which pools may be used (`allowedUses`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    Workload,
    Tunnel,
}

impl Usage {
    fn allowed_use(self) -> AllowedUse {
        match self {
            Usage::Workload => AllowedUse::Workload,
            Usage::Tunnel => AllowedUse::Tunnel,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Usage::Workload => "workload",
            Usage::Tunnel => "tunnel",
        }
    }
}

/// An auto-assign request.
#[derive(Debug, Clone)]
pub struct AssignArgs {
    pub handle: String,
    pub node: String,
    pub num_v4: usize,
    pub num_v6: usize,
    /// Only these pools (by CIDR); empty means every pool that selects the node.
    pub pools: Vec<IpNet>,
    /// Secondary attributes (namespace, pod, type…); `node` and `timestamp` are added.
    pub attrs: BTreeMap<String, String>,
    pub usage: Usage,
}

impl AssignArgs {
    pub fn new(handle: impl Into<String>, node: impl Into<String>) -> AssignArgs {
        AssignArgs {
            handle: handle.into(),
            node: node.into(),
            num_v4: 1,
            num_v6: 0,
            pools: Vec::new(),
            attrs: BTreeMap::new(),
            usage: Usage::Workload,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AssignedIps {
    pub v4: Vec<IpAddr>,
    pub v6: Vec<IpAddr>,
}

/// One address to release; with `sequence`, only if it was not re-assigned since.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleaseRequest {
    pub ip: IpAddr,
    pub sequence: Option<u64>,
}

/// What IPAM reads once per request, in one datastore round trip.
struct Snapshot {
    config: IPAMConfigSpec,
    pools: Vec<IPPool>,
    reservations: Vec<IPReservation>,
    node_labels: BTreeMap<String, String>,
    /// The node's block affinities as of the snapshot (re-read after a claim).
    affinities: Vec<BlockAffinity>,
    /// The request's handle as of the snapshot.
    handle: HandleView,
}

/// The IPAM engine over a datastore client.
#[derive(Clone)]
pub struct Ipam {
    client: Client,
}

fn now() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

/// Handle of a node's tunnel address: `vxlan-tunnel-addr-<node>` / `ipip-tunnel-addr-<node>`.
pub fn tunnel_handle(encap: &str, node: &str) -> String {
    format!("{encap}-tunnel-addr-{node}")
}

impl Ipam {
    pub fn new(client: Client) -> Ipam {
        Ipam { client }
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The IPAM configuration, Calico's defaults when none is stored.
    pub async fn config(&self) -> Result<IPAMConfigSpec> {
        Ok(self
            .client
            .get::<IPAMConfig>(None, IPAM_CONFIG_NAME)
            .await?
            .map(|c| c.spec)
            .unwrap_or_default())
    }

    /// Changes the stored configuration (creating it with defaults first if absent).
    pub async fn configure(
        &self,
        strict_affinity: Option<bool>,
        max_blocks_per_host: Option<u32>,
        auto_allocate_blocks: Option<bool>,
    ) -> Result<IPAMConfigSpec> {
        with_retry(|| async {
            let existing = self
                .client
                .get::<IPAMConfig>(None, IPAM_CONFIG_NAME)
                .await?;
            let mut cfg = existing.clone().unwrap_or_else(|| IPAMConfig {
                metadata: ObjectMeta::named(IPAM_CONFIG_NAME),
                spec: IPAMConfigSpec::default(),
            });
            if let Some(v) = strict_affinity {
                cfg.spec.strict_affinity = v;
            }
            if let Some(v) = max_blocks_per_host {
                cfg.spec.max_blocks_per_host = v;
            }
            if let Some(v) = auto_allocate_blocks {
                cfg.spec.auto_allocate_blocks = v;
            }
            let stored = if existing.is_some() {
                self.client.update(&cfg).await?
            } else {
                self.client.create(&cfg).await?
            };
            Ok(stored.spec)
        })
        .await
    }

    async fn snapshot(&self, node: &str, handle: &str) -> Result<Snapshot> {
        let mut reads = Reads::new();
        let config = reads.get::<IPAMConfig>(None, IPAM_CONFIG_NAME);
        let pools = reads.list::<IPPool>(None);
        let reservations = reads.list::<IPReservation>(None);
        let node_obj = reads.get::<Node>(None, node);
        let affinities = reads.list_prefix::<BlockAffinity>(None, &affinity_prefix(node));
        let handle_obj = reads.get::<IPAMHandle>(None, handle);
        let got = self.client.read(&reads).await?;
        Ok(Snapshot {
            config: got.get(config)?.map(|c| c.spec).unwrap_or_default(),
            pools: got.list(pools)?,
            reservations: got.list(reservations)?,
            node_labels: got
                .get(node_obj)?
                .map(|n| n.metadata.labels)
                .unwrap_or_default(),
            affinities: got.list(affinities)?,
            handle: HandleView::seen(got.get(handle_obj)?),
        })
    }

    /// The node's block affinities (names start with the node's; `spec.node` decides).
    async fn node_affinities(&self, node: &str) -> Result<Vec<BlockAffinity>> {
        let (affinities, _) = self
            .client
            .list_prefix::<BlockAffinity>(None, &affinity_prefix(node))
            .await?;
        Ok(affinities)
    }

    fn attribute(
        args_handle: &str,
        node: &str,
        attrs: &BTreeMap<String, String>,
    ) -> AllocationAttribute {
        let mut secondary = attrs.clone();
        secondary.insert("node".into(), node.to_owned());
        secondary.entry("timestamp".into()).or_insert_with(now);
        AllocationAttribute {
            handle_id: Some(args_handle.to_owned()),
            secondary,
        }
    }

    /// Assigns `num_v4` IPv4 and `num_v6` IPv6 addresses to a handle on a node: first from
    /// the node's blocks, then from newly claimed blocks (up to `maxBlocksPerHost`), then —
    /// unless strict affinity is on — borrowed from other nodes' blocks. All or nothing: on
    /// failure the addresses this call took are released.
    pub async fn auto_assign(&self, args: &AssignArgs) -> Result<AssignedIps> {
        if args.handle.is_empty() || args.node.is_empty() {
            return Err(Error::Invalid("a handle and a node are required".into()));
        }
        let snap = self.snapshot(&args.node, &args.handle).await?;
        let attr = Self::attribute(&args.handle, &args.node, &args.attrs);
        let v4 = self
            .assign_family(&snap, args, &attr, Family::V4, args.num_v4)
            .await?;
        match self
            .assign_family(&snap, args, &attr, Family::V6, args.num_v6)
            .await
        {
            Ok(v6) => Ok(AssignedIps { v4, v6 }),
            Err(e) => {
                self.undo(&v4).await;
                Err(e)
            }
        }
    }

    async fn undo(&self, ips: &[IpAddr]) {
        if ips.is_empty() {
            return;
        }
        let reqs: Vec<ReleaseRequest> = ips
            .iter()
            .map(|ip| ReleaseRequest {
                ip: *ip,
                sequence: None,
            })
            .collect();
        if let Err(e) = self.release_ips(&reqs).await {
            tracing::warn!("could not return addresses after a failed assignment: {e}");
        }
    }

    async fn assign_family(
        &self,
        snap: &Snapshot,
        args: &AssignArgs,
        attr: &AllocationAttribute,
        family: Family,
        count: usize,
    ) -> Result<Vec<IpAddr>> {
        if count == 0 {
            return Ok(Vec::new());
        }
        let v6 = family == Family::V6;
        let usable = candidate_pools(&snap.pools, &snap.node_labels, v6, args.usage.allowed_use());
        let requested: Vec<&IpNet> = args
            .pools
            .iter()
            .filter(|p| p.addr().is_ipv6() == v6)
            .collect();
        for r in &requested {
            if !usable.iter().any(|p| p.spec.cidr == **r) {
                return Err(Error::UnknownPool(r.to_string()));
            }
        }
        let pools: Vec<&IPPool> = usable
            .into_iter()
            .filter(|p| {
                if requested.is_empty() {
                    p.spec.assignment_mode != Some(AssignmentMode::Manual)
                } else {
                    requested.contains(&&p.spec.cidr)
                }
            })
            .collect();
        if pools.is_empty() {
            return Err(Error::NoPool {
                node: args.node.clone(),
                family: family.name(),
                usage: args.usage.name(),
            });
        }
        let mut got = Vec::new();
        match self
            .fill(snap, args, attr, family, &pools, count, &mut got)
            .await
        {
            Ok(()) => Ok(got),
            Err(e) => {
                self.undo(&got).await;
                Err(e)
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn fill(
        &self,
        snap: &Snapshot,
        args: &AssignArgs,
        attr: &AllocationAttribute,
        family: Family,
        pools: &[&IPPool],
        count: usize,
        got: &mut Vec<IpAddr>,
    ) -> Result<()> {
        let excluded = |ip: IpAddr| reservation_of(&snap.reservations, ip).is_some();
        let max_blocks = snap.config.effective_max_blocks_per_host();
        let mut affine_count;
        let mut fresh_affinities = None;
        // Blocks this call has taken from: each is tried once.
        let mut tried = HashSet::new();
        loop {
            let affinities = fresh_affinities.as_ref().unwrap_or(&snap.affinities);
            let affine = affine_blocks(&args.node, pools, affinities);
            affine_count = affine.len();
            for cidr in affine.iter().filter(|c| tried.insert(**c)) {
                let ips = self
                    .assign_from_block(
                        cidr,
                        count - got.len(),
                        attr,
                        &args.handle,
                        &snap.handle,
                        &excluded,
                    )
                    .await?;
                got.extend(ips);
                if got.len() == count {
                    return Ok(());
                }
            }
            let may_claim = snap.config.auto_allocate_blocks && (affine.len() as u32) < max_blocks;
            if !may_claim {
                break;
            }
            let Some(cidr) = self
                .claim_free_block(&args.node, pools, &snap.reservations, &tried)
                .await?
            else {
                break;
            };
            tried.insert(cidr);
            let ips = self
                .assign_from_block(
                    &cidr,
                    count - got.len(),
                    attr,
                    &args.handle,
                    &snap.handle,
                    &excluded,
                )
                .await?;
            got.extend(ips);
            if got.len() == count {
                return Ok(());
            }
            fresh_affinities = Some(self.node_affinities(&args.node).await?);
        }
        if snap.config.strict_affinity {
            return Err(Error::StrictAffinity {
                node: args.node.clone(),
                family: family.name(),
                blocks: affine_count,
                max_blocks,
            });
        }
        for cidr in self.borrowable_blocks(&args.node, pools).await? {
            let ips = self
                .assign_from_block(
                    &cidr,
                    count - got.len(),
                    attr,
                    &args.handle,
                    &snap.handle,
                    &excluded,
                )
                .await?;
            got.extend(ips);
            if got.len() == count {
                return Ok(());
            }
        }
        Err(Error::Exhausted {
            node: args.node.clone(),
            family: family.name(),
            pools: pools
                .iter()
                .map(|p| format!("{} ({})", p.metadata.name, p.spec.cidr))
                .collect::<Vec<_>>()
                .join(", "),
        })
    }

    /// Blocks of `pools` affine to other nodes (or none) that have free addresses, in an
    /// order seeded by the node name so competing nodes spread out.
    async fn borrowable_blocks(&self, node: &str, pools: &[&IPPool]) -> Result<Vec<IpNet>> {
        let (blocks, _) = self.client.list::<IPAMBlock>(None).await?;
        let mine = format!("host:{node}");
        let mut out: Vec<IpNet> = blocks
            .into_iter()
            .filter(|b| b.spec.affinity.as_deref() != Some(mine.as_str()) && !b.spec.deleted)
            .filter(|b| !b.spec.unallocated.is_empty())
            .filter(|b| pools.iter().any(|p| p.spec.cidr.contains(&b.spec.cidr)))
            .map(|b| b.spec.cidr)
            .collect();
        out.sort();
        out.shuffle(&mut rand::rngs::StdRng::seed_from_u64(node_seed(node)));
        Ok(out)
    }

    /// Takes up to `n` addresses from one block (compare-and-swap, retried).
    async fn assign_from_block(
        &self,
        cidr: &IpNet,
        n: usize,
        attr: &AllocationAttribute,
        handle: &str,
        view: &HandleView,
        excluded: &(dyn Fn(IpAddr) -> bool + Sync),
    ) -> Result<Vec<IpAddr>> {
        let name = cidr_to_name(cidr);
        let block_key = cidr.to_string();
        with_retry(|| async {
            let Some(mut blk) = self.client.get::<IPAMBlock>(None, &name).await? else {
                return Ok(Vec::new());
            };
            if blk.spec.deleted {
                return Ok(Vec::new());
            }
            let ips = block::auto_assign(&mut blk.spec, n, attr, excluded);
            if ips.is_empty() {
                return Ok(ips);
            }
            self.write_allocation(&blk, handle, view, &block_key, ips.len() as u32)
                .await?;
            Ok(ips)
        })
        .await
    }

    /// Records `n` new addresses of `handle` in the handle, then writes the block; the
    /// handle goes first (as Calico) so a crash in between leaves a handle count that `check`
    /// finds, never an allocation without an owner record.
    async fn write_allocation(
        &self,
        blk: &IPAMBlock,
        handle: &str,
        view: &HandleView,
        block_key: &str,
        n: u32,
    ) -> Result<()> {
        handles::increment(&self.client, handle, block_key, n, view).await?;
        if let Err(e) = self.client.update(blk).await {
            handles::decrement(&self.client, handle, block_key, n, view).await?;
            return Err(e.into());
        }
        Ok(())
    }

    /// Another block of `pools` for the node: one of its own with free addresses that is not
    /// in `tried`, else a newly claimed one; `None` when every block is taken.
    async fn claim_free_block(
        &self,
        node: &str,
        pools: &[&IPPool],
        reservations: &[IPReservation],
        tried: &HashSet<IpNet>,
    ) -> Result<Option<IpNet>> {
        let (blocks, _) = self.client.list::<IPAMBlock>(None).await?;
        // Another process of the node may have claimed a block since this one read its
        // affinities: taking from that block, rather than claiming one more, keeps pods
        // started at once from claiming a block each.
        let mine = format!("host:{node}");
        let own = pools.iter().find_map(|p| {
            blocks.iter().find(|b| {
                p.spec.cidr.contains(&b.spec.cidr)
                    && b.spec.affinity.as_deref() == Some(mine.as_str())
                    && !b.spec.deleted
                    && !b.spec.unallocated.is_empty()
                    && !tried.contains(&b.spec.cidr)
            })
        });
        if let Some(b) = own {
            return Ok(Some(b.spec.cidr));
        }
        let taken: HashSet<IpNet> = blocks.into_iter().map(|b| b.spec.cidr).collect();
        let seed = node_seed(node) as u128;
        for pool in pools {
            let n = block_count(pool);
            let start = seed % n;
            for i in 0..n {
                let cidr = nth_block(pool, (start + i) % n);
                if taken.contains(&cidr) || fully_reserved(reservations, &cidr) {
                    continue;
                }
                if self.try_claim(node, &cidr).await? {
                    return Ok(Some(cidr));
                }
            }
        }
        Ok(None)
    }

    /// Calico's two-phase claim: a pending affinity, the block, then the affinity confirmed.
    /// `false` when another node got the block first.
    async fn try_claim(&self, node: &str, cidr: &IpNet) -> Result<bool> {
        let aff_name = BlockAffinity::name_for(node, cidr);
        let pending = BlockAffinity {
            metadata: ObjectMeta::named(&aff_name),
            spec: BlockAffinitySpec {
                state: AffinityState::Pending,
                node: node.to_owned(),
                cidr: *cidr,
                affinity_type: Some("host".into()),
                deleted: false,
            },
        };
        match self.client.create(&pending).await {
            // An existing affinity of ours is left over from an interrupted claim: reuse it.
            Ok(_)
            | Err(margay_client::Error::Datastore(margay_datastore::Error::AlreadyExists(_))) => {}
            Err(e) => return Err(e.into()),
        }
        let host = format!("host:{node}");
        let blk = IPAMBlock {
            metadata: ObjectMeta::named(cidr_to_name(cidr)),
            spec: block::new_block(*cidr, Some(host.clone()), Some(now())),
        };
        let ours = match self.client.create(&blk).await {
            Ok(_) => true,
            Err(margay_client::Error::Datastore(margay_datastore::Error::AlreadyExists(_))) => {
                // Ours already if an earlier attempt died between block and confirmation.
                self.client
                    .get::<IPAMBlock>(None, &cidr_to_name(cidr))
                    .await?
                    .is_some_and(|b| b.spec.affinity.as_deref() == Some(host.as_str()))
            }
            Err(e) => {
                self.drop_affinity(&aff_name).await;
                return Err(e.into());
            }
        };
        if !ours {
            self.drop_affinity(&aff_name).await;
            return Ok(false);
        }
        with_retry(|| async {
            let Some(mut a) = self.client.get::<BlockAffinity>(None, &aff_name).await? else {
                return Ok(false);
            };
            if a.spec.state != AffinityState::Confirmed {
                a.spec.state = AffinityState::Confirmed;
                self.client.update(&a).await?;
            }
            Ok(true)
        })
        .await
    }

    async fn drop_affinity(&self, name: &str) {
        if let Err(e) = self.client.delete::<BlockAffinity>(None, name, None).await {
            tracing::debug!("removing pending affinity {name}: {e}");
        }
    }
}

/// Name prefix of the node's `BlockAffinity`s (`<node>-<block>`). Other nodes' names can
/// share it (`node` and `node-1`), so callers still check `spec.node`.
fn affinity_prefix(node: &str) -> String {
    format!("{node}-")
}

/// The node's confirmed blocks inside `pools`, in pool then address order.
fn affine_blocks(node: &str, pools: &[&IPPool], affinities: &[BlockAffinity]) -> Vec<IpNet> {
    let mut out: Vec<(usize, IpNet)> = affinities
        .iter()
        .filter(|a| {
            a.spec.node == node && a.spec.state == AffinityState::Confirmed && !a.spec.deleted
        })
        .filter_map(|a| {
            let pos = pools
                .iter()
                .position(|p| p.spec.cidr.contains(&a.spec.cidr))?;
            Some((pos, a.spec.cidr))
        })
        .collect();
    out.sort();
    out.into_iter().map(|(_, c)| c).collect()
}

/// Who holds an address (`ipam show --ip`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Holder {
    pub ip: IpAddr,
    pub block: IpNet,
    pub block_affinity: Option<String>,
    pub handle: Option<String>,
    pub attributes: BTreeMap<String, String>,
    pub sequence: Option<u64>,
}

impl Ipam {
    /// Assigns one given address to a handle, claiming its block for the node if nobody has.
    pub async fn assign_ip(
        &self,
        ip: IpAddr,
        handle: &str,
        node: &str,
        attrs: &BTreeMap<String, String>,
    ) -> Result<()> {
        let snap = self.snapshot(node, handle).await?;
        let pool = snap
            .pools
            .iter()
            .find(|p| p.spec.cidr.contains(&ip))
            .ok_or(Error::OutsidePools(ip))?;
        if let Some(r) = reservation_of(&snap.reservations, ip) {
            return Err(Error::Reserved {
                ip,
                reservation: r.metadata.name.clone(),
            });
        }
        let cidr = block_for_ip(pool, ip);
        let name = cidr_to_name(&cidr);
        let attr = Self::attribute(handle, node, attrs);
        let block_key = cidr.to_string();
        let mine = format!("host:{node}");
        with_retry(|| async {
            let mut blk = match self.client.get::<IPAMBlock>(None, &name).await? {
                Some(b) => b,
                None => {
                    self.try_claim(node, &cidr).await?;
                    match self.client.get::<IPAMBlock>(None, &name).await? {
                        Some(b) => b,
                        None => {
                            return Err(margay_client::Error::Datastore(
                                margay_datastore::Error::NotFound(margay_client::key(
                                    margay_api::Kind::IPAMBlock,
                                    None,
                                    &name,
                                )),
                            )
                            .into())
                        }
                    }
                }
            };
            if snap.config.strict_affinity {
                if let Some(owner) = blk.spec.affinity.as_deref().filter(|a| *a != mine) {
                    return Err(Error::NotAffine {
                        ip,
                        block: cidr.to_string(),
                        owner: owner.trim_start_matches("host:").to_owned(),
                    });
                }
            }
            if !block::assign(&mut blk.spec, ip, &attr) {
                let holder = self
                    .holder_in(&blk, ip)
                    .and_then(|h| h.handle)
                    .unwrap_or_else(|| "unknown".into());
                return Err(Error::InUse { ip, holder });
            }
            self.write_allocation(&blk, handle, &snap.handle, &block_key, 1)
                .await
        })
        .await
    }

    fn holder_in(&self, blk: &IPAMBlock, ip: IpAddr) -> Option<Holder> {
        let ordinal = block::ip_ordinal(&blk.spec.cidr, ip)?;
        let idx = blk.spec.allocations[ordinal]?;
        let attr = &blk.spec.attributes[idx];
        Some(Holder {
            ip,
            block: blk.spec.cidr,
            block_affinity: blk.spec.affinity.clone(),
            handle: attr.handle_id.clone(),
            attributes: attr.secondary.clone(),
            sequence: block::sequence_of(&blk.spec, ip),
        })
    }

    /// Who holds `ip`, if anyone.
    pub async fn holder(&self, ip: IpAddr) -> Result<Option<Holder>> {
        let (blocks, _) = self.client.list::<IPAMBlock>(None).await?;
        Ok(blocks
            .iter()
            .find(|b| b.spec.cidr.contains(&ip))
            .and_then(|b| self.holder_in(b, ip)))
    }

    /// Releases addresses; returns those that were not allocated. A sequence-checked release
    /// of an address re-assigned since fails with [`Error::StaleSequence`] and releases
    /// nothing in that block.
    pub async fn release_ips(&self, reqs: &[ReleaseRequest]) -> Result<Vec<IpAddr>> {
        let (blocks, _) = self.client.list::<IPAMBlock>(None).await?;
        let mut by_block: BTreeMap<IpNet, Vec<&ReleaseRequest>> = BTreeMap::new();
        let mut unallocated = Vec::new();
        for r in reqs {
            match blocks.iter().find(|b| b.spec.cidr.contains(&r.ip)) {
                Some(b) => by_block.entry(b.spec.cidr).or_default().push(r),
                None => unallocated.push(r.ip),
            }
        }
        for (cidr, reqs) in by_block {
            unallocated.extend(self.release_in_block(&cidr, &reqs).await?);
        }
        Ok(unallocated)
    }

    async fn release_in_block(
        &self,
        cidr: &IpNet,
        reqs: &[&ReleaseRequest],
    ) -> Result<Vec<IpAddr>> {
        let name = cidr_to_name(cidr);
        let (freed, missing) = with_retry(|| async {
            let Some(mut blk) = self.client.get::<IPAMBlock>(None, &name).await? else {
                return Ok((HashMap::new(), reqs.iter().map(|r| r.ip).collect()));
            };
            let mut freed: HashMap<String, u32> = HashMap::new();
            let mut missing = Vec::new();
            for r in reqs {
                match block::release(&mut blk.spec, r.ip, r.sequence) {
                    Ok(handle) => *freed.entry(handle.unwrap_or_default()).or_default() += 1,
                    Err(block::ReleaseRefusal::NotAllocated) => missing.push(r.ip),
                    Err(block::ReleaseRefusal::StaleSequence { expected, actual }) => {
                        return Err(Error::StaleSequence {
                            ip: r.ip,
                            expected,
                            actual,
                        })
                    }
                }
            }
            if !freed.is_empty() {
                self.client.update(&blk).await?;
            }
            Ok((freed, missing))
        })
        .await?;
        let block_key = cidr.to_string();
        for (handle, n) in freed {
            if !handle.is_empty() {
                handles::decrement(&self.client, &handle, &block_key, n, &HandleView::default())
                    .await?;
            }
        }
        Ok(missing)
    }

    /// The addresses a handle holds.
    pub async fn ips_by_handle(&self, handle: &str) -> Result<Vec<IpAddr>> {
        let Some(h) = self.client.get::<IPAMHandle>(None, handle).await? else {
            return Ok(Vec::new());
        };
        let mut ips = Vec::new();
        for cidr in h.spec.block.keys() {
            let Ok(cidr) = cidr.parse::<IpNet>() else {
                continue;
            };
            if let Some(b) = self
                .client
                .get::<IPAMBlock>(None, &cidr_to_name(&cidr))
                .await?
            {
                ips.extend(block::ips_of_handle(&b.spec, handle));
            }
        }
        Ok(ips)
    }

    /// Releases everything a handle holds and deletes it. Idempotent: an unknown handle is
    /// not an error. Returns the released addresses.
    pub async fn release_handle(&self, handle: &str) -> Result<Vec<IpAddr>> {
        let Some(h) = self.client.get::<IPAMHandle>(None, handle).await? else {
            return Ok(Vec::new());
        };
        let blocks: Vec<String> = h.spec.block.keys().cloned().collect();
        // Releasing addresses does not write the handle, so it is deleted at the revision
        // read here unless someone changed it meanwhile (then the retry reads it again).
        let view = HandleView::seen(Some(h));
        let mut released = Vec::new();
        for cidr in &blocks {
            let Ok(cidr) = cidr.parse::<IpNet>() else {
                continue;
            };
            let name = cidr_to_name(&cidr);
            let ips = with_retry(|| async {
                let Some(mut blk) = self.client.get::<IPAMBlock>(None, &name).await? else {
                    return Ok(Vec::new());
                };
                let ips = block::ips_of_handle(&blk.spec, handle);
                for ip in &ips {
                    // Cannot fail: the address was just found allocated to the handle.
                    let _ = block::release(&mut blk.spec, *ip, None);
                }
                if !ips.is_empty() {
                    self.client.update(&blk).await?;
                }
                Ok(ips)
            })
            .await?;
            released.extend(ips);
        }
        with_retry(|| async {
            match view.current(&self.client, handle).await? {
                Some(h) => {
                    self.client
                        .delete::<IPAMHandle>(None, handle, h.metadata.revision())
                        .await?;
                    Ok(())
                }
                None => Ok(()),
            }
        })
        .await?;
        Ok(released)
    }

    /// Releases a block with no allocations, and its affinity (pendingDeletion first, as
    /// Calico, so no node allocates from it meanwhile). `false` if the block is in use.
    pub async fn release_block_if_empty(&self, cidr: &IpNet) -> Result<bool> {
        let name = cidr_to_name(cidr);
        let Some(blk) = self.client.get::<IPAMBlock>(None, &name).await? else {
            return Ok(true);
        };
        if block::in_use(&blk.spec) > 0 {
            return Ok(false);
        }
        let affinity = blk
            .host_affinity()
            .map(|node| BlockAffinity::name_for(node, cidr));
        if let Some(aff) = &affinity {
            if let Some(mut a) = self.client.get::<BlockAffinity>(None, aff).await? {
                a.spec.state = AffinityState::PendingDeletion;
                self.client.update(&a).await?;
            }
        }
        match self
            .client
            .delete::<IPAMBlock>(None, &name, blk.metadata.revision())
            .await
        {
            Ok(_) => {}
            // Someone allocated from it after all: keep it, and restore the affinity.
            Err(margay_client::Error::Datastore(margay_datastore::Error::Conflict { .. })) => {
                if let Some(aff) = &affinity {
                    if let Some(mut a) = self.client.get::<BlockAffinity>(None, aff).await? {
                        a.spec.state = AffinityState::Confirmed;
                        self.client.update(&a).await?;
                    }
                }
                return Ok(false);
            }
            Err(e) => return Err(e.into()),
        }
        if let Some(aff) = &affinity {
            self.drop_affinity(aff).await;
        }
        Ok(true)
    }
}
