//! `margay ipam …`: show, assign, release, check, configure, gc.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use ipnet::IpNet;
use margay_ipam::{AssignArgs, Gc, Ipam, LeakReport, ReleaseRequest, Usage};

use crate::output::render_table;
use crate::{CtlError, Result};

fn ipam_error(e: margay_ipam::Error) -> CtlError {
    CtlError::Ipam(e)
}

fn percent(part: u128, whole: u128) -> String {
    if whole == 0 {
        return "0%".into();
    }
    format!("{}%", part * 100 / whole)
}

/// What `ipam show` should include.
#[derive(Debug, Clone, Default)]
pub struct ShowOptions {
    pub blocks: bool,
    pub borrowed: bool,
    pub configuration: bool,
    pub ip: Option<IpAddr>,
}

pub async fn show(ipam: &Ipam, opts: &ShowOptions) -> Result<String> {
    if let Some(ip) = opts.ip {
        return show_ip(ipam, ip).await;
    }
    if opts.configuration {
        let c = ipam.config().await.map_err(ipam_error)?;
        return Ok(render_table(
            &["PROPERTY", "VALUE"],
            &[
                vec!["StrictAffinity".into(), c.strict_affinity.to_string()],
                vec![
                    "AutoAllocateBlocks".into(),
                    c.auto_allocate_blocks.to_string(),
                ],
                vec![
                    "MaxBlocksPerHost".into(),
                    c.effective_max_blocks_per_host().to_string(),
                ],
            ],
        ));
    }
    let summary = ipam.summary().await.map_err(ipam_error)?;
    if opts.borrowed {
        let rows: Vec<Vec<String>> = summary
            .blocks
            .iter()
            .flat_map(|b| {
                b.borrowed.iter().map(move |(ip, node)| {
                    vec![
                        ip.to_string(),
                        node.clone(),
                        b.cidr.to_string(),
                        b.affinity
                            .as_deref()
                            .map(|a| a.trim_start_matches("host:").to_owned())
                            .unwrap_or_default(),
                    ]
                })
            })
            .collect();
        return Ok(render_table(
            &["IP", "BORROWING-NODE", "BLOCK", "BLOCK OWNER"],
            &rows,
        ));
    }
    let mut rows = Vec::new();
    for p in &summary.pools {
        let free = p.size - p.in_use;
        rows.push(vec![
            "IP Pool".into(),
            p.cidr.to_string(),
            p.size.to_string(),
            format!("{} ({})", p.in_use, percent(p.in_use, p.size)),
            format!("{free} ({})", percent(free, p.size)),
            String::new(),
        ]);
        if opts.blocks {
            for b in summary.blocks.iter().filter(|b| p.cidr.contains(&b.cidr)) {
                let (size, used) = (b.size as u128, b.in_use as u128);
                rows.push(vec![
                    "Block".into(),
                    b.cidr.to_string(),
                    size.to_string(),
                    format!("{used} ({})", percent(used, size)),
                    format!("{} ({})", size - used, percent(size - used, size)),
                    b.affinity.clone().unwrap_or_default(),
                ]);
            }
        }
    }
    let mut headers = vec!["GROUPING", "CIDR", "IPS TOTAL", "IPS IN USE", "IPS FREE"];
    if opts.blocks {
        headers.push("AFFINITY");
    } else {
        rows.iter_mut().for_each(|r| {
            r.pop();
        });
    }
    Ok(render_table(&headers, &rows))
}

async fn show_ip(ipam: &Ipam, ip: IpAddr) -> Result<String> {
    match ipam.holder(ip).await.map_err(ipam_error)? {
        None => Ok(format!("IP {ip} is not assigned\n")),
        Some(h) => {
            let mut out = format!("IP {ip} is in use\n");
            out.push_str(&format!("  block: {}\n", h.block));
            if let Some(a) = &h.block_affinity {
                out.push_str(&format!("  block affinity: {a}\n"));
            }
            if let Some(handle) = &h.handle {
                out.push_str(&format!("  handle: {handle}\n"));
            }
            if let Some(seq) = h.sequence {
                out.push_str(&format!("  sequence: {seq}\n"));
            }
            if !h.attributes.is_empty() {
                out.push_str("Attributes:\n");
                for (k, v) in &h.attributes {
                    out.push_str(&format!("  {k}: {v}\n"));
                }
            }
            Ok(out)
        }
    }
}

/// `ipam assign`: one address per line on success.
#[derive(Debug, Clone)]
pub struct AssignOptions {
    pub node: String,
    pub handle: String,
    pub num_v4: usize,
    pub num_v6: usize,
    pub pools: Vec<IpNet>,
    pub ip: Option<IpAddr>,
    pub attrs: Vec<String>,
}

/// Assigns, and warns (through `warn`) when the node is not registered: `ipam gc` treats
/// addresses of unknown nodes as leaks, as Calico's node controller does.
pub async fn assign(
    ipam: &Ipam,
    opts: &AssignOptions,
    warn: &mut dyn FnMut(String),
) -> Result<String> {
    if ipam
        .client()
        .get::<margay_api::Node>(None, &opts.node)
        .await?
        .is_none()
    {
        warn(format!(
            "node {:?} is not registered (margay node run registers it); `ipam gc` releases addresses of unknown nodes",
            opts.node
        ));
    }
    let mut attrs = BTreeMap::new();
    for a in &opts.attrs {
        let (k, v) = a.split_once('=').ok_or_else(|| CtlError::Input {
            origin: "--attr".into(),
            message: format!("{a:?} is not key=value"),
        })?;
        attrs.insert(k.to_owned(), v.to_owned());
    }
    if let Some(ip) = opts.ip {
        ipam.assign_ip(ip, &opts.handle, &opts.node, &attrs)
            .await
            .map_err(ipam_error)?;
        return Ok(format!("{ip}\n"));
    }
    let args = AssignArgs {
        handle: opts.handle.clone(),
        node: opts.node.clone(),
        num_v4: opts.num_v4,
        num_v6: opts.num_v6,
        pools: opts.pools.clone(),
        attrs,
        usage: Usage::Workload,
    };
    let got = ipam.auto_assign(&args).await.map_err(ipam_error)?;
    Ok(got
        .v4
        .iter()
        .chain(got.v6.iter())
        .map(|ip| format!("{ip}\n"))
        .collect())
}

/// What `ipam release` releases.
#[derive(Debug, Clone)]
pub enum ReleaseTarget {
    Ips(Vec<IpAddr>),
    Handle(String),
    Report(String),
}

pub async fn release(ipam: &Ipam, target: &ReleaseTarget) -> Result<String> {
    match target {
        ReleaseTarget::Handle(h) => {
            let ips = ipam.release_handle(h).await.map_err(ipam_error)?;
            Ok(format!(
                "released {} address(es) of handle {h}\n",
                ips.len()
            ))
        }
        ReleaseTarget::Ips(ips) => {
            let reqs: Vec<ReleaseRequest> = ips
                .iter()
                .map(|ip| ReleaseRequest {
                    ip: *ip,
                    sequence: None,
                })
                .collect();
            let missing = ipam.release_ips(&reqs).await.map_err(ipam_error)?;
            if let Some(ip) = missing.first() {
                return Err(CtlError::Ipam(margay_ipam::Error::Invalid(format!(
                    "{ip} is not assigned"
                ))));
            }
            Ok(format!("released {} address(es)\n", ips.len()))
        }
        ReleaseTarget::Report(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| CtlError::Input {
                origin: path.clone(),
                message: e.to_string(),
            })?;
            let report: LeakReport = serde_json::from_str(&text).map_err(|e| CtlError::Input {
                origin: path.clone(),
                message: format!("not an `ipam check` report: {e}"),
            })?;
            // Sequence numbers make this safe without locking the datastore: an address
            // re-assigned since the report was written is refused, not released.
            let reqs: Vec<ReleaseRequest> = report
                .problems
                .iter()
                .filter_map(|p| {
                    Some(ReleaseRequest {
                        ip: p.ip?,
                        sequence: p.sequence,
                    })
                })
                .collect();
            let missing = ipam.release_ips(&reqs).await.map_err(ipam_error)?;
            Ok(format!(
                "released {} address(es) from {path} ({} already free)\n",
                reqs.len() - missing.len(),
                missing.len()
            ))
        }
    }
}

/// `ipam check`: a summary; the full report as JSON to `report_path` when given.
pub async fn check(ipam: &Ipam, report_path: Option<&str>) -> Result<(String, bool)> {
    let report = ipam.check().await.map_err(ipam_error)?;
    let mut out = format!(
        "Checked {} block(s), {} allocation(s), {} handle(s): {} problem(s) found.\n",
        report.blocks,
        report.allocations,
        report.handles,
        report.problems.len()
    );
    for p in &report.problems {
        out.push_str(&format!("  {:?}: {}\n", p.kind, p.detail));
    }
    if let Some(path) = report_path {
        let json = serde_json::to_string_pretty(&report).expect("reports serialize");
        std::fs::write(path, json + "\n").map_err(|e| CtlError::Input {
            origin: path.to_owned(),
            message: e.to_string(),
        })?;
        out.push_str(&format!("Report written to {path}\n"));
    }
    Ok((out, report.problems.is_empty()))
}

pub async fn configure(
    ipam: &Ipam,
    strict: Option<bool>,
    max_blocks: Option<u32>,
    auto_allocate: Option<bool>,
) -> Result<String> {
    let c = ipam
        .configure(strict, max_blocks, auto_allocate)
        .await
        .map_err(ipam_error)?;
    Ok(format!(
        "StrictAffinity: {}, AutoAllocateBlocks: {}, MaxBlocksPerHost: {}\n",
        c.strict_affinity,
        c.auto_allocate_blocks,
        c.effective_max_blocks_per_host()
    ))
}

/// `ipam gc`: passes every `interval`; with `until_clean`, stops once a pass finds nothing
/// left to wait for (or after `timeout`).
pub async fn gc(
    ipam: &Ipam,
    grace: Duration,
    interval: Duration,
    until_clean: bool,
    timeout: Option<Duration>,
    log: &mut dyn FnMut(String),
) -> Result<()> {
    let mut gc = Gc::new(ipam.clone(), grace);
    let started = std::time::Instant::now();
    loop {
        let pass = gc.run_once().await.map_err(ipam_error)?;
        for p in &pass.repaired {
            log(format!("released {:?}: {}", p.kind, p.detail));
        }
        if until_clean && pass.waiting == 0 {
            return Ok(());
        }
        if timeout.is_some_and(|t| started.elapsed() >= t) {
            return Err(CtlError::Ipam(margay_ipam::Error::Invalid(format!(
                "gc timed out with {} leak(s) still inside their grace period",
                pass.waiting
            ))));
        }
        tokio::time::sleep(interval).await;
    }
}

/// `leakGracePeriod` of the stored ControllersConfiguration (Calico's default, 15m, when there
/// is none). Zero means leak release is off; deleted nodes' addresses are still released.
pub async fn configured_grace_period(client: &margay_client::Client) -> Result<Duration> {
    use margay_api::ControllersConfiguration;
    let config = client
        .get::<ControllersConfiguration>(None, "default")
        .await?
        .unwrap_or_else(ControllersConfiguration::new_default);
    Ok(config.leak_grace_period().unwrap_or(Duration::ZERO))
}
