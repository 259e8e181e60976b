//! In-process address management for an attachment, on the `margay-ipam` crate.
//!
//! A host-wide lock serialises IPAM among the plugin processes of one node, as Calico's
//! `ipam.lock` does: parallel pod starts then queue briefly instead of colliding on the same
//! block and retrying compare-and-swap writes.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::net::IpAddr;
use std::path::Path;

use ipnet::IpNet;
use margay_api::IPPool;
use margay_client::Client;
use margay_ipam::{AssignArgs, Ipam};

use crate::error::{code, CniError, Result};

const LOCK_FILE: &str = "ipam.lock";

/// The handle an attachment's addresses are held under: `<network>.<containerID>`.
pub fn handle_for(network: &str, container_id: &str) -> String {
    format!("{network}.{container_id}")
}

/// Holds the node's IPAM lock until dropped (closing the file releases it).
pub struct HostLock {
    _file: File,
}

impl HostLock {
    pub fn acquire(state_dir: &Path) -> Result<HostLock> {
        let io = |what: &str, e: std::io::Error| {
            CniError::new(
                code::IO_FAILURE,
                format!("{what} {}: {e}", state_dir.join(LOCK_FILE).display()),
            )
        };
        std::fs::create_dir_all(state_dir).map_err(|e| io("creating the directory of", e))?;
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(state_dir.join(LOCK_FILE))
            .map_err(|e| io("opening", e))?;
        file.lock().map_err(|e| io("locking", e))?;
        Ok(HostLock { _file: file })
    }
}

/// What to allocate.
pub struct Request<'a> {
    pub handle: &'a str,
    pub node: &'a str,
    pub requested: &'a [IpAddr],
    pub ipv4: bool,
    pub ipv6: bool,
    /// Pool names or CIDRs (`ipv4_pools`/`ipv6_pools`); empty means any pool for the node.
    pub pools: &'a [&'a str],
    pub attrs: BTreeMap<String, String>,
}

/// Allocates; on failure nothing stays allocated.
pub async fn allocate(client: &Client, req: &Request<'_>) -> Result<Vec<IpAddr>> {
    let ipam = Ipam::new(client.clone());
    if !req.requested.is_empty() {
        for ip in req.requested {
            if let Err(e) = ipam.assign_ip(*ip, req.handle, req.node, &req.attrs).await {
                release(client, req.handle).await?;
                return Err(e.into());
            }
        }
        return Ok(req.requested.to_vec());
    }
    let mut args = AssignArgs::new(req.handle, req.node);
    args.num_v4 = usize::from(req.ipv4);
    args.num_v6 = usize::from(req.ipv6);
    args.attrs = req.attrs.clone();
    args.pools = resolve_pools(client, req.pools).await?;
    let assigned = match ipam.auto_assign(&args).await {
        Ok(a) => a,
        Err(e) => {
            release(client, req.handle).await?;
            return Err(e.into());
        }
    };
    Ok(assigned.v4.into_iter().chain(assigned.v6).collect())
}

/// Releases everything under the handle; an unknown handle is fine.
pub async fn release(client: &Client, handle: &str) -> Result<Vec<IpAddr>> {
    Ok(Ipam::new(client.clone()).release_handle(handle).await?)
}

/// Calico accepts pool names or CIDRs in `ipv4_pools`; IPAM wants CIDRs.
async fn resolve_pools(client: &Client, refs: &[&str]) -> Result<Vec<IpNet>> {
    let mut out = Vec::with_capacity(refs.len());
    for r in refs {
        if let Ok(cidr) = r.parse::<IpNet>() {
            out.push(cidr);
            continue;
        }
        match client.get::<IPPool>(None, r).await? {
            Some(pool) => out.push(pool.spec.cidr),
            None => {
                return Err(CniError::new(
                    code::IPAM,
                    format!("IPAM: ipam pool {r:?} is neither a CIDR nor the name of an IPPool"),
                ))
            }
        }
    }
    Ok(out)
}
