//! Calico-compatible IP address management.
//!
//! Pools are carved into blocks of `blockSize`; a node claims a block through a
//! `BlockAffinity` (pending → confirmed) and allocates from it; `IPAMHandle`s index a handle's
//! addresses by block. Every write is a compare-and-swap on the object's revision, retried
//! with jitter on conflict, so many processes on many nodes can allocate at once without ever
//! giving one address to two handles.

pub mod block;
mod check;
mod error;
mod handles;
mod ops;
mod pools;
mod retry;

pub use check::{BlockUsage, Gc, GcPass, LeakReport, Problem, ProblemKind, Summary};
pub use error::{Error, Result};
pub use ops::{
    tunnel_handle, AssignArgs, AssignedIps, Family, Holder, Ipam, ReleaseRequest, Usage,
};
pub use pools::PoolUsage;
