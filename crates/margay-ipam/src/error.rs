use std::net::IpAddr;

/// Why an IPAM operation failed; each renders as one line for the CLI and CNI.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no enabled IP pool selects node {node:?} for {family} {usage} addresses")]
    NoPool {
        node: String,
        family: &'static str,
        usage: &'static str,
    },
    #[error("IP pools exhausted: no free {family} address for node {node:?} in pools {pools}")]
    Exhausted {
        node: String,
        family: &'static str,
        pools: String,
    },
    #[error(
        "strict affinity is on: node {node:?} has no free {family} address in its {blocks} block(s), cannot claim another (maxBlocksPerHost {max_blocks} or no free block) and may not borrow"
    )]
    StrictAffinity {
        node: String,
        family: &'static str,
        blocks: usize,
        max_blocks: u32,
    },
    #[error("requested pool {0} does not exist, is disabled, or does not select this node")]
    UnknownPool(String),
    #[error("{0} is not in any IP pool")]
    OutsidePools(IpAddr),
    #[error("{ip} is reserved by IPReservation {reservation}")]
    Reserved { ip: IpAddr, reservation: String },
    #[error("{ip} is already in use (handle {holder})")]
    InUse { ip: IpAddr, holder: String },
    #[error(
        "{ip} is in block {block}, which is affine to node {owner:?}, and strict affinity is on"
    )]
    NotAffine {
        ip: IpAddr,
        block: String,
        owner: String,
    },
    #[error("stale release of {ip}: it was re-assigned since (sequence {expected}, now {actual})")]
    StaleSequence {
        ip: IpAddr,
        expected: u64,
        actual: u64,
    },
    #[error(
        "datastore contention: gave up after {attempts} attempts ({conflicts} conflicting writes)"
    )]
    Contention { attempts: u32, conflicts: u32 },
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error(transparent)]
    Client(#[from] margay_client::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A lost race with another writer: the operation may be retried from a fresh read.
    pub(crate) fn is_conflict(&self) -> bool {
        matches!(
            self,
            Error::Client(margay_client::Error::Datastore(
                margay_datastore::Error::Conflict { .. }
                    | margay_datastore::Error::AlreadyExists(_)
                    | margay_datastore::Error::NotFound(_)
            ))
        )
    }
}
