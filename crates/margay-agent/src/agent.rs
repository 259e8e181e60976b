//! The agent's loop: register, then sync (read the model, plan, diff, apply; program the
//! node's policy) whenever the datastore changes and on a timer; on a datastore outage keep
//! what is programmed, report not-ready and retry with backoff.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use futures::stream::StreamExt;
use futures::FutureExt;
use ipnet::{IpNet, Ipv4Net};
use margay_api::{Dataplane, Kind, Resource};
use margay_client::{decode_resource, Client};
use margay_datastore::{Event, EventStream, Query, SharedDatastore};
use margay_iptables::IptablesCommand;
use margay_nft::{Applier, Nft};
use margay_policy::program::Program;
use margay_sys::netlink::RouteSocket;
use serde_json::json;

use crate::config::{AgentOptions, IpChoice};
use crate::dataplane::PolicyDataplanes;
use crate::http::{self, Health};
use crate::kernel::{Kernel, LinuxKernel};
use crate::metrics::{Metrics, PolicyGauges};
use crate::model::Model;
use crate::plan::{self, Host, Plan, RouteTarget};
use crate::policy::{self, Change, Counts, PROGRAMMED_DIR};
use crate::reconcile::{self, Grace};
use crate::{autodetect, register, Error};

/// The kinds whose changes can change the plan (routes) but not the policy program.
const PLAN_ONLY_KINDS: [Kind; 4] = [
    Kind::IPPool,
    Kind::IPAMBlock,
    Kind::BGPConfiguration,
    Kind::BGPPeer,
];

/// The kinds the policy engine reads that the plan reads too (their changes need both).
pub(crate) const SHARED_KINDS: [Kind; 3] =
    [Kind::WorkloadEndpoint, Kind::Node, Kind::AgentConfiguration];

/// The kinds whose changes can change the plan (routes) or the policy program.
fn watched() -> impl Iterator<Item = Kind> {
    PLAN_ONLY_KINDS
        .into_iter()
        .chain(margay_policy::INPUT_KINDS)
}
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A datastore that does not answer within this is treated as down (a hung connection
/// must not freeze the loop or its liveness heartbeat).
const DATASTORE_TIMEOUT: Duration = Duration::from_secs(5);
/// A whole sync includes programming the kernel, which can be thousands of routes.
const SYNC_TIMEOUT: Duration = Duration::from_secs(60);

/// What one sync did.
#[derive(Debug, Clone, Default)]
pub struct SyncReport {
    pub ops: usize,
    /// Failed operations: (metric kind, message).
    pub errors: Vec<(&'static str, String)>,
    pub plan: Plan,
    /// The pools as `node status` shows them.
    pub pools: Vec<serde_json::Value>,
    /// When a held-back deletion (see [`Grace`]) falls due: sync again by then.
    pub next_due: Option<Instant>,
    /// What the policy engine reads, from the same snapshot (see [`policy::PolicyModel`]),
    /// when it was read.
    pub policy_inputs: Option<Vec<Resource>>,
    /// Where policy goes: `AgentConfiguration.dataplane`, from the same snapshot.
    pub dataplane: Dataplane,
    /// The BGP speaker this node should run, from the same snapshot (see [`crate::bgp`]).
    pub bgp: Option<crate::bgp::Desired>,
}

/// The interface that holds `ip`, and its MTU.
pub fn uplink_of(ip: IpAddr) -> Result<(String, u32), Error> {
    let mut sock = RouteSocket::new()?;
    let index = sock
        .addresses(None)?
        .into_iter()
        .find(|(_, a)| a.addr() == ip)
        .map(|(i, _)| i)
        .ok_or_else(|| Error::Config(format!("no interface on this host has address {ip}")))?;
    let link = sock
        .link_by_index(index)?
        .ok_or_else(|| Error::Config(format!("interface {index} vanished")))?;
    Ok((link.name, link.mtu))
}

fn write_state(dir: &Path, name: &str, value: &str) -> Result<(), Error> {
    let io = |e: std::io::Error| Error::Io(format!("writing {}: {e}", dir.join(name).display()));
    std::fs::create_dir_all(dir).map_err(io)?;
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, format!("{value}\n")).map_err(io)?;
    std::fs::rename(&tmp, dir.join(name)).map_err(io)
}

fn resolve_ip(choice: &IpChoice) -> Result<Ipv4Net, Error> {
    match choice {
        IpChoice::Fixed(net) => Ok(*net),
        IpChoice::Detect(method) => match autodetect::detect(method, false)
            .map_err(|e| Error::Config(format!("IP autodetection: {e}")))?
        {
            IpNet::V4(v4) => Ok(v4),
            IpNet::V6(v6) => Err(Error::Config(format!(
                "IP autodetection found {v6}, an IPv6 address; use --ip"
            ))),
        },
    }
}

/// One pass: model → plan → diff → apply. Kernel errors are counted and reported, not fatal.
pub async fn sync_once<K: Kernel>(
    client: &Client,
    host: &Host,
    kernel: &mut K,
    grace: &mut Grace,
    with_policy: bool,
) -> Result<SyncReport, Error> {
    let mut model = Model::load(client, &host.node, with_policy).await?;
    if register::ensure_tunnels(client, &model, &host.node).await? {
        model = Model::load(client, &host.node, with_policy).await?;
    }
    let plan = plan::plan(&model, host);
    let bgp = Some(crate::bgp::desired(&model, host));
    let policy_inputs = std::mem::take(&mut model.policy_inputs);
    let dataplane = model.config.dataplane();
    let observed = kernel.observe()?;
    let (ops, next_due) = grace.hold(reconcile::diff(&plan, &observed), Instant::now());
    let mut errors = Vec::new();
    for op in &ops {
        tracing::debug!(?op, "applying");
        if let Err(e) = kernel.apply(op) {
            tracing::warn!(?op, error = %e, "applying");
            errors.push((op.kind(), e.to_string()));
        }
    }
    let pools = model
        .pools
        .iter()
        .map(|p| {
            json!({
                "name": p.metadata.name,
                "cidr": p.spec.cidr.to_string(),
                "vxlanMode": p.spec.vxlan_mode,
                "ipipMode": p.spec.ipip_mode,
                "natOutgoing": p.spec.nat_outgoing,
                "disabled": p.spec.disabled,
            })
        })
        .collect();
    Ok(SyncReport {
        ops: ops.len(),
        errors,
        plan,
        pools,
        next_due,
        policy_inputs,
        dataplane,
        bgp,
    })
}

/// What the last policy programming did, for `/status`.
struct PolicyOutcome {
    /// `None` when nothing was applied (no program, or nft failed).
    change: Option<Change>,
    took: Duration,
    /// Policy resources left out, or the error that kept what is programmed.
    errors: Vec<String>,
}

/// The Policy object of `/status`; `dataplane` is the one holding the program (`None`
/// before the first apply), `configured` the one AgentConfiguration asks for.
fn policy_json(
    applied: Option<&Program>,
    dataplane: Option<Dataplane>,
    configured: Dataplane,
    outcome: &PolicyOutcome,
) -> serde_json::Value {
    let counts = applied.map(Counts::of).unwrap_or_default();
    json!({
        "programmed": applied.is_some(),
        "dataplane": dataplane.map(Dataplane::as_str),
        "configuredDataplane": configured.as_str(),
        "policies": counts.policies,
        "profiles": counts.profiles,
        "endpoints": counts.endpoints,
        "hostEndpoints": counts.host_endpoints,
        "sets": counts.sets,
        "rules": counts.rules,
        "skippedEndpoints": applied.map(|p| &p.skipped),
        "lastChange": outcome.change,
        "lastSeconds": outcome.took.as_secs_f64(),
    })
}

fn status_json(
    host: &Host,
    report: &SyncReport,
    took: Duration,
    errors: &[String],
    policy: serde_json::Value,
    policy_errors: &[String],
) -> serde_json::Value {
    let model_plan = &report.plan;
    let remote = model_plan
        .routes
        .iter()
        .filter(|r| matches!(r.target, RouteTarget::Via { .. }))
        .count();
    let local_blocks = model_plan
        .routes
        .iter()
        .filter(|r| matches!(r.target, RouteTarget::Blackhole))
        .count();
    let workloads = model_plan
        .routes
        .iter()
        .filter(|r| matches!(r.target, RouteTarget::Device { .. }))
        .count();
    json!({
        "node": host.node,
        "ip": host.ip.to_string(),
        "uplink": host.uplink,
        "vxlan": model_plan.vxlan,
        "ipip": model_plan.ipip,
        "podMTU": model_plan.pod_mtu,
        "remoteRoutes": remote,
        "localBlocks": local_blocks,
        "localWorkloads": workloads,
        "vxlanPeers": model_plan.fdb.len(),
        "pools": report.pools,
        "ready": true,
        "lastSync": rfc3339_now(),
        // When the agent last acted on a datastore change (a sync, or a policy change
        // applied from the watch alone).
        "lastEvent": rfc3339_now(),
        "lastSyncSeconds": took.as_secs_f64(),
        "errors": errors,
        "warnings": model_plan.warnings,
        "policy": policy,
        "policyErrors": policy_errors,
    })
}

fn rfc3339_now() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

/// Every watched kind's changes after one revision, merged into one stream, kept open while
/// only policy changes arrive (each applied at once, see [`run_loop`]).
struct Watch {
    events: EventStream,
}

/// What arrived: the events already there when the first came, and when it came.
struct Arrived {
    at: Instant,
    events: Vec<Event>,
    /// A stream failed (compacted history, datastore gone): only a full sync can tell what
    /// is missing.
    broken: bool,
}

impl Watch {
    /// `None` when a watch cannot be opened (compacted, unreachable): resync now; the loop
    /// handles the outage.
    async fn open(ds: &SharedDatastore, revision: i64) -> Option<Watch> {
        let queries: Vec<Query> = watched().map(|kind| Query::kind(kind.name())).collect();
        Some(Watch {
            events: ds.watch_many(&queries, revision).await.ok()?,
        })
    }

    /// Waits until something changes, or `timeout` passes (`None`).
    async fn next(&mut self, timeout: Duration) -> Option<Arrived> {
        let first = tokio::time::timeout(timeout, self.events.next())
            .await
            .ok()?;
        let mut arrived = Arrived {
            at: Instant::now(),
            events: Vec::new(),
            broken: false,
        };
        let mut item = first;
        // A burst (a pod: block, handle, endpoint) arrives together; take what is already
        // here without waiting for more, so one pass covers it.
        loop {
            match item {
                Some(Ok(event)) => arrived.events.push(event),
                Some(Err(_)) | None => {
                    arrived.broken = true;
                    break;
                }
            }
            match self.events.next().now_or_never() {
                Some(next) => item = next,
                None => break,
            }
        }
        Some(arrived)
    }
}

/// The policy engine's changes in `events`, or `None` when one cannot be read (only a full
/// sync can then tell what is stored).
fn policy_changes(events: &[Event]) -> Option<Vec<margay_policy::Change>> {
    let mut changes = Vec::new();
    for event in events {
        let kind = margay_policy::INPUT_KINDS
            .into_iter()
            .find(|k| k.name() == event.key().kind);
        let Some(kind) = kind else { continue };
        changes.push(match event {
            Event::Put(kv) => margay_policy::Change::Upsert(decode_resource(kv).ok()?),
            Event::Delete { key, .. } => margay_policy::Change::Delete(
                margay_policy::ResourceKey::new(kind, key.namespace.as_deref(), &key.name),
            ),
        });
    }
    Some(changes)
}

/// Whether the plan (routes, tunnels, NAT, configuration) may depend on what changed: all
/// but the policy engine's own kinds. WorkloadEndpoints (their routes), Nodes and
/// AgentConfiguration are both. Only changes after `synced` (the revision the last sync's
/// snapshot includes) count.
fn needs_sync(events: &[Event], synced: i64) -> bool {
    events.iter().filter(|e| e.revision() > synced).any(|e| {
        SHARED_KINDS.iter().any(|k| k.name() == e.key().kind)
            || !margay_policy::INPUT_KINDS
                .iter()
                .any(|k| k.name() == e.key().kind)
    })
}

/// Runs until the process is stopped; returns only on a start-up error.
pub async fn run(opts: AgentOptions) -> Result<(), Error> {
    let ds = margay_datastore::connect(&opts.datastore, &opts.connect).await?;
    let client = Client::new(ds.clone());
    let ip = resolve_ip(&opts.ip)?;
    let (uplink, uplink_mtu) = uplink_of(IpAddr::V4(ip.addr()))?;
    let host = Host {
        node: opts.node.clone(),
        ip,
        uplink,
        uplink_mtu,
    };
    register::register(&client, &opts.node, ip).await?;
    write_state(&opts.state_dir, "nodename", &opts.node)?;
    let config = Model::load(&client, &opts.node, false).await?.config;
    let health = Health::new();
    let metrics = Metrics::new();
    let health_addr = opts.health_addr.or_else(|| {
        config.health_enabled().then(|| {
            let host: IpAddr = config
                .health_host()
                .parse()
                .unwrap_or([127, 0, 0, 1].into());
            SocketAddr::new(host, config.health_port())
        })
    });
    let metrics_addr = opts.metrics_addr.or_else(|| {
        config
            .prometheus_metrics_enabled()
            .then(|| SocketAddr::new([0, 0, 0, 0].into(), config.prometheus_metrics_port()))
    });
    if let Some(addr) = health_addr {
        let (_, serve) = http::bind_health(addr, health.clone())
            .await
            .map_err(|e| Error::Io(format!("health endpoint {addr}: {e}")))?;
        tokio::spawn(serve);
    }
    if let Some(addr) = metrics_addr {
        let (_, serve) = http::bind_metrics(addr, metrics.clone())
            .await
            .map_err(|e| Error::Io(format!("metrics endpoint {addr}: {e}")))?;
        tokio::spawn(serve);
    }
    let resync = opts
        .resync_interval
        .unwrap_or(config.route_refresh_interval());
    tracing::info!(node = %host.node, ip = %host.ip, uplink = %host.uplink, "agent started");
    let mut kernel = LinuxKernel::new()?;
    let node_nft = Nft::new();
    tracing::info!(backend = node_nft.backend(), "nftables");
    let mut nft = Applier::new(node_nft);
    // nftables: replaced with the first program, atomically (established connections and
    // everything else see either the tables of the last run or the new ones); iptables:
    // read back from the kernel and changed where they differ. The agent runs in its node's
    // network namespace, so both tools act on the node.
    let mut dataplanes = PolicyDataplanes::new(Nft::new(), IptablesCommand::new());
    let mut bgp = crate::bgp::Bgp::new(opts.bgp, health.clone(), metrics.clone());
    run_loop(
        &ds,
        &client,
        &host,
        &opts,
        &mut kernel,
        &mut nft,
        &mut dataplanes,
        &mut bgp,
        &health,
        &metrics,
        resync,
    )
    .await
}

#[allow(clippy::too_many_arguments)]
async fn run_loop(
    ds: &SharedDatastore,
    client: &Client,
    host: &Host,
    opts: &AgentOptions,
    kernel: &mut LinuxKernel,
    nft: &mut Applier<Nft>,
    dataplanes: &mut Dataplanes,
    bgp: &mut crate::bgp::Bgp,
    health: &Arc<Health>,
    metrics: &Arc<Metrics>,
    resync: Duration,
) -> Result<(), Error> {
    let mut backoff = Duration::from_millis(250);
    let mut pod_mtu = 0;
    let mut change_arrived: Option<Instant> = None;
    let mut last_status = json!({"node": host.node, "ready": false});
    let mut grace = Grace::default();
    // The policy errors of the last sync, each logged once.
    let mut policy_errors: Vec<String> = Vec::new();
    // The policy engine's model, kept across syncs: each snapshot applies only what changed.
    let mut policy_model = policy::PolicyModel::new();
    // The watch whose every change so far the policy model has applied. While it lasts, a
    // sync for the plan's sake need not read the policy kinds again (their changes keep
    // arriving on it); without one, the sync reads them and a new watch starts.
    let mut watch: Option<Watch> = None;
    let mut policy_status = json!(null);
    loop {
        health.heartbeat();
        // No change arrived: this is the periodic resync, which also checks that the policy
        // tables are still there.
        let timer_driven = change_arrived.is_none();
        // The revision first (watching from it misses nothing the sync reads), then the sync;
        // a datastore that fails or hangs in either is one outage.
        let attempt = async {
            let revision = tokio::time::timeout(DATASTORE_TIMEOUT, ds.revision())
                .await
                .map_err(|_| {
                    Error::Io(format!("datastore: no answer within {DATASTORE_TIMEOUT:?}"))
                })??;
            let started = Instant::now();
            let report = tokio::time::timeout(
                SYNC_TIMEOUT,
                sync_once(client, host, kernel, &mut grace, watch.is_none()),
            )
            .await
            .map_err(|_| Error::Io(format!("sync took longer than {SYNC_TIMEOUT:?}")))??;
            Ok::<_, Error>((revision, started, report))
        };
        let (revision, started, mut report) = match attempt.await {
            Ok(done) => done,
            Err(e @ (Error::Datastore(_) | Error::Connect(_) | Error::Ipam(_) | Error::Io(_))) => {
                outage(
                    health,
                    metrics,
                    &mut last_status,
                    &e.to_string(),
                    &mut backoff,
                )
                .await;
                continue;
            }
            Err(e) => {
                // The kernel could not even be read: count it, say so, retry.
                metrics.apply_error("link");
                health.set_ready(false, e.to_string());
                tokio::time::sleep(backoff).await;
                continue;
            }
        };
        let mut errors = Vec::new();
        for (kind, message) in &report.errors {
            metrics.apply_error(kind);
            errors.push(format!("{kind}: {message}"));
        }
        if let Err(e) = nft.apply(&report.plan.nat) {
            metrics.apply_error("nft");
            errors.push(format!("nft: {e}"));
        }
        if let Some(desired) = &report.bgp {
            errors.extend(bgp.sync(desired).await);
        }
        if timer_driven {
            match dataplanes.recheck() {
                Ok(true) => {
                    tracing::warn!("a policy table was removed behind the agent; replacing")
                }
                Ok(false) => {}
                Err(e) => {
                    metrics.apply_error(e.kind());
                    errors.push(format!("{}: listing the policy tables: {e}", e.kind()));
                }
            }
        }
        let policy_started = Instant::now();
        let computed = match report.policy_inputs.take() {
            Some(inputs) => Some(policy_model.compute(inputs, &host.node)),
            // The model is current (the watch's changes), but AgentConfiguration asks for
            // another dataplane: the program moves there.
            None if dataplanes.active() != Some(report.dataplane) => {
                policy_model.apply(Vec::new(), &host.node)
            }
            None => None,
        };
        if let Some(computed) = computed {
            policy_status = program_policy(
                computed,
                policy_started,
                dataplanes,
                report.dataplane,
                &opts.state_dir,
                metrics,
                &mut errors,
                &mut policy_errors,
            );
        }
        if report.plan.pod_mtu != pod_mtu {
            write_state(&opts.state_dir, "mtu", &report.plan.pod_mtu.to_string())?;
            pod_mtu = report.plan.pod_mtu;
        }
        let took = started.elapsed();
        metrics.observe_sync(took.as_secs_f64());
        let p = &report.plan;
        metrics.set_programmed(
            p.routes.len() as u64,
            p.fdb.len() as u64,
            p.neighbours.len() as u64,
        );
        last_status = status_json(
            host,
            &report,
            took,
            &errors,
            policy_status.clone(),
            &policy_errors,
        );
        health.set_status(last_status.clone());
        // From a datastore change arriving to the kernel reflecting it.
        if let Some(arrived) = change_arrived.take() {
            metrics.observe_watch_lag(arrived.elapsed().as_secs_f64());
        }
        health.set_ready(true, "in sync");
        backoff = Duration::from_millis(250);
        if report.ops > 0 {
            tracing::info!(ops = report.ops, errors = errors.len(), ?took, "synced");
        }
        let until_due = report
            .next_due
            .map_or(resync, |due| due.saturating_duration_since(Instant::now()));
        let deadline = Instant::now() + resync.min(until_due);
        // Policy changes are applied as they arrive, from the model kept in memory: no
        // snapshot is read, and the plan only when something it reads changed.
        if watch.is_none() {
            // Compacted or unreachable: the next sync reads everything again.
            let Some(opened) = Watch::open(ds, revision).await else {
                continue;
            };
            watch = Some(opened);
        }
        change_arrived = loop {
            health.heartbeat();
            let timeout = deadline.saturating_duration_since(Instant::now());
            let Some(stream) = watch.as_mut() else {
                break None;
            };
            let Some(arrived) = stream.next(timeout).await else {
                // The periodic resync reads everything, the policy kinds included.
                watch = None;
                break None;
            };
            let changes = if arrived.broken {
                None
            } else {
                policy_changes(&arrived.events)
            };
            let Some(changes) = changes else {
                watch = None;
                break Some(arrived.at);
            };
            if !changes.is_empty() {
                let mut errors = Vec::new();
                let started = Instant::now();
                if let Some(computed) = policy_model.apply(changes, &host.node) {
                    policy_status = program_policy(
                        computed,
                        started,
                        dataplanes,
                        report.dataplane,
                        &opts.state_dir,
                        metrics,
                        &mut errors,
                        &mut policy_errors,
                    );
                    if !errors.is_empty() {
                        // A failed apply: a sync from a snapshot retries it and reports.
                        watch = None;
                        break Some(arrived.at);
                    }
                    last_status["policy"] = policy_status.clone();
                    last_status["policyErrors"] = json!(policy_errors);
                }
            }
            last_status["lastEvent"] = json!(rfc3339_now());
            health.set_status(last_status.clone());
            if needs_sync(&arrived.events, revision) {
                break Some(arrived.at);
            }
            metrics.observe_watch_lag(arrived.at.elapsed().as_secs_f64());
        };
    }
}

/// The agent's two policy dataplanes, run on the node.
type Dataplanes = PolicyDataplanes<Nft, IptablesCommand>;

/// Applies this node's policy program, computed since `started`, to `dataplane` (removing
/// the other's rules after a switch, and once after a start); an error about the model
/// (no program) keeps what is programmed. After a successful apply, records the programmed
/// interfaces. Failures go to `errors` and the metrics; `reported` becomes the policy errors
/// of this program. Returns the `policy` object of `/status`.
#[allow(clippy::too_many_arguments)]
fn program_policy(
    computed: policy::Computed,
    started: Instant,
    dataplanes: &mut Dataplanes,
    dataplane: Dataplane,
    state_dir: &Path,
    metrics: &Metrics,
    errors: &mut Vec<String>,
    reported: &mut Vec<String>,
) -> serde_json::Value {
    // Each error once, not on every sync while it lasts (`/status` always shows them all).
    for e in computed.errors.iter().filter(|e| !reported.contains(e)) {
        if computed.program.is_some() {
            tracing::warn!(error = %e, "policy left out; enforcing the others");
        } else {
            tracing::warn!(error = %e, "policy refused; keeping what is programmed");
        }
    }
    let mut change = None;
    if let Some(program) = computed.program {
        let applying = Instant::now();
        let done = dataplanes.program(dataplane, program);
        let applied = applying.elapsed();
        match done.change {
            Ok(done) => {
                if done != Change::Unchanged {
                    let (model, program) = computed.timings;
                    tracing::info!(
                        change = ?done,
                        %dataplane,
                        model_ms = model.as_secs_f64() * 1e3,
                        program_ms = program.as_secs_f64() * 1e3,
                        apply_ms = applied.as_secs_f64() * 1e3,
                        "policy programmed"
                    );
                }
                change = Some(done);
            }
            Err(e) => {
                let kind = e.kind();
                metrics.apply_error(kind);
                errors.push(format!("{kind}: policy: {e}"));
            }
        }
        if let Some(from) = done.switched_from {
            tracing::info!(%from, to = %dataplane, "policy dataplane switched");
        }
        match done.removed {
            Some((stale, Ok(true))) => {
                tracing::info!(dataplane = %stale, "removed the policy rules of the dataplane not in use")
            }
            Some((stale, Err(e))) => {
                let kind = e.kind();
                tracing::warn!(dataplane = %stale, error = %e, "removing the policy rules of the dataplane not in use");
                metrics.apply_error(kind);
                errors.push(format!(
                    "{kind}: removing the {stale} policy rules (not in use): {e}"
                ));
            }
            Some((_, Ok(false))) | None => {}
        }
    }
    if let (Some(_), Some(applied)) = (change, dataplanes.applied()) {
        let programmed = policy::programmed(applied, &computed.owners);
        if let Err(e) = policy::record_programmed(&state_dir.join(PROGRAMMED_DIR), &programmed) {
            metrics.apply_error("state");
            errors.push(format!("state: {e}"));
        }
    }
    let took = started.elapsed();
    metrics.observe_policy(took.as_secs_f64());
    let counts = dataplanes.applied().map(Counts::of).unwrap_or_default();
    metrics.set_policy_dataplane(dataplanes.active());
    metrics.set_policy(PolicyGauges {
        endpoints: counts.endpoints as u64,
        rules: counts.rules as u64,
        sets: counts.sets as u64,
        errors: computed.errors.len() as u64,
    });
    let outcome = PolicyOutcome {
        change,
        took,
        errors: computed.errors,
    };
    reported.clone_from(&outcome.errors);
    policy_json(
        dataplanes.applied(),
        dataplanes.active(),
        dataplane,
        &outcome,
    )
}

async fn outage(
    health: &Health,
    metrics: &Metrics,
    status: &mut serde_json::Value,
    why: &str,
    backoff: &mut Duration,
) {
    tracing::warn!(error = why, retry_in = ?backoff, "datastore unavailable; keeping what is programmed");
    metrics.apply_error("datastore");
    let reason = format!("datastore unavailable: {why}");
    status["ready"] = json!(false);
    status["notReady"] = json!(reason);
    health.set_status(status.clone());
    health.set_ready(false, reason);
    tokio::time::sleep(*backoff).await;
    *backoff = (*backoff * 2).min(MAX_BACKOFF);
}

#[cfg(test)]
mod tests {
    use margay_datastore::Key;

    use super::*;

    fn deleted(kind: Kind, revision: i64) -> Event {
        Event::Delete {
            key: Key::new(kind.name(), None, "x"),
            revision,
        }
    }

    #[test]
    fn kinds_both_read_change_the_policy_model_and_the_plan() {
        // The policy engine's own kinds need no sync of the plan; the shared ones do, and so
        // does everything only the plan reads.
        for (kind, plan) in [
            (Kind::NetworkPolicy, false),
            (Kind::Profile, false),
            (Kind::WorkloadEndpoint, true),
            (Kind::Node, true),
            (Kind::AgentConfiguration, true),
            (Kind::IPPool, true),
            (Kind::BGPPeer, true),
        ] {
            assert_eq!(needs_sync(&[deleted(kind, 8)], 7), plan, "{kind:?}");
            // Changes the last sync's snapshot already holds count for nothing.
            assert!(!needs_sync(&[deleted(kind, 7)], 7), "{kind:?}");
            let policy = policy_changes(&[deleted(kind, 8)]).unwrap();
            assert_eq!(
                policy.len(),
                usize::from(margay_policy::INPUT_KINDS.contains(&kind)),
                "{kind:?}"
            );
        }
        // Every kind either reads is watched, once.
        let watched: Vec<Kind> = watched().collect();
        let distinct: std::collections::HashSet<&Kind> = watched.iter().collect();
        assert_eq!(distinct.len(), watched.len());
        for kind in SHARED_KINDS.iter().chain(&PLAN_ONLY_KINDS) {
            assert!(watched.contains(kind), "{kind:?}");
        }
    }
}
