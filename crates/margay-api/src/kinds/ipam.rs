//! IP address management kinds: pools, IPAM configuration, reservations, blocks, affinities
//! and handles, with Calico's field names and rules.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

use crate::kind::Kind;
use crate::meta::ObjectMeta;
use crate::object::Object;
use crate::object_meta;
use crate::validate::{self, Errors};

/// Encapsulation for traffic between nodes (`ipipMode` / `vxlanMode`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum EncapMode {
    #[default]
    Never,
    Always,
    CrossSubnet,
}

impl EncapMode {
    pub fn is_enabled(self) -> bool {
        self != EncapMode::Never
    }
}

/// What addresses from a pool may be used for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum AllowedUse {
    Workload,
    Tunnel,
    LoadBalancer,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum AssignmentMode {
    #[default]
    Automatic,
    Manual,
}

pub const DEFAULT_IPV4_BLOCK_SIZE: u8 = 26;
pub const DEFAULT_IPV6_BLOCK_SIZE: u8 = 122;

const IPV4_LINK_LOCAL: &str = "169.254.0.0/16";
const IPV6_LINK_LOCAL: &str = "fe80::/10";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IPPool {
    pub metadata: ObjectMeta,
    pub spec: IPPoolSpec,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IPPoolSpec {
    pub cidr: IpNet,
    #[serde(default)]
    pub vxlan_mode: EncapMode,
    #[serde(default)]
    pub ipip_mode: EncapMode,
    #[serde(default)]
    pub nat_outgoing: bool,
    #[serde(default)]
    pub disabled: bool,
    #[serde(default, rename = "disableBGPExport")]
    pub disable_bgp_export: bool,
    /// Prefix length of the blocks carved from this pool; defaulted on apply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_size: Option<u8>,
    /// Which nodes may take blocks from this pool; defaulted to `all()`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_uses: Vec<AllowedUse>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assignment_mode: Option<AssignmentMode>,
}

impl IPPool {
    pub fn new(name: &str, cidr: IpNet) -> IPPool {
        let mut pool = IPPool {
            metadata: ObjectMeta::named(name),
            spec: IPPoolSpec {
                cidr,
                vxlan_mode: EncapMode::Never,
                ipip_mode: EncapMode::Never,
                nat_outgoing: false,
                disabled: false,
                disable_bgp_export: false,
                block_size: None,
                node_selector: None,
                namespace_selector: None,
                allowed_uses: Vec::new(),
                assignment_mode: None,
            },
        };
        pool.apply_defaults();
        pool
    }

    /// The block prefix length, defaulted by family when unset.
    pub fn block_size(&self) -> u8 {
        self.spec.block_size.unwrap_or(match self.spec.cidr {
            IpNet::V4(_) => DEFAULT_IPV4_BLOCK_SIZE,
            IpNet::V6(_) => DEFAULT_IPV6_BLOCK_SIZE,
        })
    }

    pub fn node_selector(&self) -> &str {
        self.spec.node_selector.as_deref().unwrap_or("all()")
    }

    pub fn allows(&self, usage: AllowedUse) -> bool {
        self.spec.allowed_uses.is_empty() && usage != AllowedUse::LoadBalancer
            || self.spec.allowed_uses.contains(&usage)
    }

    pub fn overlaps(&self, other: &IPPool) -> bool {
        nets_overlap(&self.spec.cidr, &other.spec.cidr)
    }
}

/// True when the two networks share any address.
pub fn nets_overlap(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

impl Object for IPPool {
    const KIND: Kind = Kind::IPPool;
    object_meta!();

    fn apply_defaults(&mut self) {
        self.spec.block_size = Some(self.block_size());
        if self.spec.node_selector.is_none() {
            self.spec.node_selector = Some("all()".into());
        }
        if self.spec.allowed_uses.is_empty() {
            self.spec.allowed_uses = vec![AllowedUse::Workload, AllowedUse::Tunnel];
        }
        if self.spec.assignment_mode.is_none() {
            self.spec.assignment_mode = Some(AssignmentMode::Automatic);
        }
    }

    fn validate_spec(&self, errs: &mut Errors) {
        let s = &self.spec;
        validate::canonical_cidr("spec.cidr", &s.cidr, errs);
        let block = self.block_size();
        let (min, max) = match s.cidr {
            IpNet::V4(_) => (20, 32),
            IpNet::V6(_) => (116, 128),
        };
        validate::range("spec.blockSize", block, min, max, errs);
        if block < s.cidr.prefix_len() {
            errs.add(
                "spec.blockSize",
                format!(
                    "{block} is shorter than the pool's prefix /{}: a block cannot be larger than its pool",
                    s.cidr.prefix_len()
                ),
            );
        }
        if s.ipip_mode.is_enabled() && s.vxlan_mode.is_enabled() {
            errs.add(
                "spec.ipipMode",
                "ipipMode and vxlanMode cannot both be enabled on one pool",
            );
        }
        if s.ipip_mode.is_enabled() && matches!(s.cidr, IpNet::V6(_)) {
            errs.add("spec.ipipMode", "IPIP is not supported on an IPv6 pool");
        }
        let link_local: IpNet = match s.cidr {
            IpNet::V4(_) => IPV4_LINK_LOCAL.parse().expect("constant CIDR"),
            IpNet::V6(_) => IPV6_LINK_LOCAL.parse().expect("constant CIDR"),
        };
        if nets_overlap(&s.cidr, &link_local) {
            errs.add(
                "spec.cidr",
                format!("{} overlaps the link-local range {link_local}", s.cidr),
            );
        }
        if s.cidr.addr().is_loopback() || s.cidr.addr().is_multicast() {
            errs.add(
                "spec.cidr",
                format!("{} is a loopback or multicast range", s.cidr),
            );
        }
        validate::selector("spec.nodeSelector", self.node_selector(), errs);
        if let Some(ns) = &s.namespace_selector {
            validate::selector("spec.namespaceSelector", ns, errs);
        }
        if s.allowed_uses.contains(&AllowedUse::LoadBalancer) && s.allowed_uses.len() > 1 {
            errs.add(
                "spec.allowedUses",
                "LoadBalancer cannot be combined with other uses",
            );
        }
    }

    fn validate_update(&self, old: &Self, errs: &mut Errors) {
        if self.spec.cidr != old.spec.cidr {
            errs.add(
                "spec.cidr",
                format!(
                    "is immutable (stored {}, got {})",
                    old.spec.cidr, self.spec.cidr
                ),
            );
        }
        if self.block_size() != old.block_size() {
            errs.add(
                "spec.blockSize",
                format!(
                    "is immutable (stored {}, got {})",
                    old.block_size(),
                    self.block_size()
                ),
            );
        }
    }

    fn calico_ignored_fields() -> &'static [&'static str] {
        // Deprecated v1-era spellings Calico still accepts.
        &["spec.ipip", "spec.nat-outgoing"]
    }
}

/// Cluster-wide IPAM settings; Calico requires the single object to be named `default`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IPAMConfig {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: IPAMConfigSpec,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IPAMConfigSpec {
    #[serde(default)]
    pub strict_affinity: bool,
    #[serde(default = "default_true")]
    pub auto_allocate_blocks: bool,
    /// 0 means the default, 20.
    #[serde(default)]
    pub max_blocks_per_host: u32,
}

impl Default for IPAMConfigSpec {
    fn default() -> Self {
        IPAMConfigSpec {
            strict_affinity: false,
            auto_allocate_blocks: true,
            max_blocks_per_host: 0,
        }
    }
}

fn default_true() -> bool {
    true
}

pub const DEFAULT_MAX_BLOCKS_PER_HOST: u32 = 20;
pub const IPAM_CONFIG_NAME: &str = "default";

impl IPAMConfigSpec {
    pub fn effective_max_blocks_per_host(&self) -> u32 {
        if self.max_blocks_per_host == 0 {
            DEFAULT_MAX_BLOCKS_PER_HOST
        } else {
            self.max_blocks_per_host
        }
    }
}

impl Object for IPAMConfig {
    const KIND: Kind = Kind::IPAMConfig;
    object_meta!();

    fn validate_spec(&self, errs: &mut Errors) {
        if self.metadata.name != IPAM_CONFIG_NAME {
            errs.add(
                "metadata.name",
                format!("must be {IPAM_CONFIG_NAME:?} (there is one IPAM configuration)"),
            );
        }
    }

    fn calico_ignored_fields() -> &'static [&'static str] {
        &[
            "spec.ipCooldownSeconds",
            "spec.kubeVirtVMAddressPersistence",
        ]
    }
}

/// Addresses IPAM must never hand out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IPReservation {
    pub metadata: ObjectMeta,
    pub spec: IPReservationSpec,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IPReservationSpec {
    /// CIDRs or single addresses (stored as /32 or /128).
    #[serde(rename = "reservedCIDRs", with = "cidr_or_ip_list")]
    pub reserved_cidrs: Vec<IpNet>,
}

impl IPReservation {
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.spec.reserved_cidrs.iter().any(|n| n.contains(&ip))
    }
}

impl Object for IPReservation {
    const KIND: Kind = Kind::IPReservation;
    object_meta!();

    fn validate_spec(&self, errs: &mut Errors) {
        if self.spec.reserved_cidrs.is_empty() {
            errs.add("spec.reservedCIDRs", "must list at least one CIDR");
        }
    }
}

/// Accepts `10.0.0.0/24` or a bare address `10.0.0.7` (a /32), as Calico does.
pub mod cidr_or_ip_list {
    use super::*;

    pub fn parse(s: &str) -> Result<IpNet, String> {
        if let Ok(net) = s.parse::<IpNet>() {
            return Ok(net.trunc());
        }
        s.parse::<IpAddr>()
            .map(IpNet::from)
            .map_err(|_| format!("{s:?} is neither a CIDR nor an IP address"))
    }

    pub fn serialize<S: Serializer>(nets: &[IpNet], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(nets.iter().map(ToString::to_string))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<IpNet>, D::Error> {
        let raw = Vec::<String>::deserialize(d)?;
        raw.iter()
            .map(|s| parse(s).map_err(serde::de::Error::custom))
            .collect()
    }
}

/// The name Calico gives an object derived from a CIDR: `10.233.102.0/24` → `10-233-102-0-24`.
pub fn cidr_to_name(cidr: &IpNet) -> String {
    cidr.to_string().replace(['.', ':', '/'], "-")
}

/// A block of addresses carved from a pool, with its allocations.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IPAMBlock {
    pub metadata: ObjectMeta,
    pub spec: IPAMBlockSpec,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IPAMBlockSpec {
    pub cidr: IpNet,
    /// `host:<node>` (or `virtual:<name>`); absent for an unaffine block.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity_claim_time: Option<String>,
    /// Ordinal → index into `attributes`, `None` when the address is free.
    pub allocations: Vec<Option<usize>>,
    /// Free ordinals, a FIFO: allocation pops the front, release pushes to the back.
    pub unallocated: Vec<usize>,
    #[serde(default)]
    pub attributes: Vec<AllocationAttribute>,
    #[serde(default)]
    pub sequence_number: u64,
    /// Ordinal (as a string, as Calico stores it) → `sequenceNumber` when it was allocated.
    #[serde(default)]
    pub sequence_number_for_allocation: BTreeMap<String, u64>,
    #[serde(default)]
    pub deleted: bool,
    #[serde(default)]
    pub strict_affinity: bool,
}

/// Who holds an allocation.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllocationAttribute {
    #[serde(default, rename = "handle_id", skip_serializing_if = "Option::is_none")]
    pub handle_id: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secondary: BTreeMap<String, String>,
}

impl IPAMBlock {
    /// The node this block is affine to, from `host:<node>`.
    pub fn host_affinity(&self) -> Option<&str> {
        self.spec.affinity.as_deref()?.strip_prefix("host:")
    }

    pub fn size(&self) -> usize {
        block_len(&self.spec.cidr)
    }
}

/// Number of addresses in a block (blocks are at most 2^12 addresses by the size rules).
pub fn block_len(cidr: &IpNet) -> usize {
    1usize << (cidr.max_prefix_len() - cidr.prefix_len())
}

impl Object for IPAMBlock {
    const KIND: Kind = Kind::IPAMBlock;
    object_meta!();

    fn validate_spec(&self, errs: &mut Errors) {
        let s = &self.spec;
        validate::canonical_cidr("spec.cidr", &s.cidr, errs);
        let host_bits = s.cidr.max_prefix_len() - s.cidr.prefix_len();
        if host_bits > 12 {
            errs.add(
                "spec.cidr",
                format!("{} is larger than any block size allows", s.cidr),
            );
            return;
        }
        let len = self.size();
        if s.allocations.len() != len {
            errs.add(
                "spec.allocations",
                format!(
                    "has {} entries, the block has {len} addresses",
                    s.allocations.len()
                ),
            );
        }
        for (i, ord) in s.unallocated.iter().enumerate() {
            if *ord >= len {
                errs.add(
                    format!("spec.unallocated[{i}]"),
                    format!("ordinal {ord} is outside the block"),
                );
            }
        }
        for (i, a) in s.allocations.iter().enumerate() {
            if let Some(idx) = a {
                if *idx >= s.attributes.len() {
                    errs.add(
                        format!("spec.allocations[{i}]"),
                        format!("attribute index {idx} does not exist"),
                    );
                }
            }
        }
    }
}

/// The state of a node's claim on a block (Calico's two-phase protocol).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum AffinityState {
    #[default]
    Pending,
    Confirmed,
    PendingDeletion,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BlockAffinity {
    pub metadata: ObjectMeta,
    pub spec: BlockAffinitySpec,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BlockAffinitySpec {
    #[serde(default)]
    pub state: AffinityState,
    pub node: String,
    pub cidr: IpNet,
    /// `host` (a node) or `virtual`.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub affinity_type: Option<String>,
    #[serde(default)]
    pub deleted: bool,
}

impl BlockAffinity {
    /// Calico's name: `<node>-<cidr as name>`.
    pub fn name_for(node: &str, cidr: &IpNet) -> String {
        format!("{node}-{}", cidr_to_name(cidr))
    }
}

impl Object for BlockAffinity {
    const KIND: Kind = Kind::BlockAffinity;
    object_meta!();

    fn validate_spec(&self, errs: &mut Errors) {
        validate::canonical_cidr("spec.cidr", &self.spec.cidr, errs);
        if self.spec.node.is_empty() {
            errs.add("spec.node", "is required");
        }
    }

    fn migrate_calico(body: &mut Map<String, Value>) {
        // The CRD stores `deleted` as the string "true"/"false".
        if let Some(Value::Object(spec)) = body.get_mut("spec") {
            if let Some(Value::String(s)) = spec.get("deleted") {
                let b = s == "true";
                spec.insert("deleted".into(), Value::Bool(b));
            }
        }
    }
}

/// Index from a handle (one pod, one tunnel) to the blocks holding its addresses.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IPAMHandle {
    pub metadata: ObjectMeta,
    pub spec: IPAMHandleSpec,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IPAMHandleSpec {
    #[serde(rename = "handleID")]
    pub handle_id: String,
    /// Block CIDR → number of addresses this handle holds in it.
    #[serde(default)]
    pub block: BTreeMap<String, u32>,
    #[serde(default)]
    pub deleted: bool,
}

impl Object for IPAMHandle {
    const KIND: Kind = Kind::IPAMHandle;
    object_meta!();

    fn validate_spec(&self, errs: &mut Errors) {
        if self.spec.handle_id.is_empty() {
            errs.add("spec.handleID", "is required");
        }
        for cidr in self.spec.block.keys() {
            if cidr.parse::<IpNet>().is_err() {
                errs.add(format!("spec.block.{cidr}"), "is not a CIDR");
            }
        }
    }
}
