//! The verbs. Each takes the validated invocation and config and returns the JSON to print
//! (or nothing); every side effect goes through [`Dataplane`], [`Exec`] or the datastore.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use margay_api::{IPAMHandle, IPPool, Pod, Profile, WorkloadEndpoint};
use margay_client::Client;
use margay_datastore::ConnectOptions;
use margay_ipam::Ipam;
use serde_json::{json, Value};

use crate::allocate::{self, handle_for, HostLock};
use crate::config::{Loaded, NetConf, DEFAULT_MTU};
use crate::dataplane::{self, Dataplane, PodInterfaceSpec, GATEWAY_V4, HOST_MAC};
use crate::delegate::Exec;
use crate::endpoint::{self, EndpointInput, Workload};
use crate::env::{Command, Invocation};
use crate::error::{code, CniError, Result};
use crate::result::{CniResult, Interface, IpConfig, RouteEntry};
use crate::version::Version;

/// Which plugin this process is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `type: margay`: wires the pod and records its endpoint.
    Main,
    /// `type: margay-ipam`: only allocates addresses, for another main plugin.
    Ipam,
}

/// The side effects a plugin run may use.
pub struct Host<D, E> {
    pub dataplane: D,
    pub exec: E,
    /// `MARGAY_DATASTORE` from the environment, used when the config names no datastore.
    pub datastore_env: Option<String>,
    /// The kernel's host name, the last resort for the node name.
    pub hostname: String,
}

pub async fn run<D: Dataplane, E: Exec + Send>(
    mode: Mode,
    inv: &Invocation,
    loaded: &Loaded,
    host: &mut Host<D, E>,
) -> Result<Option<Value>> {
    let version = loaded.version;
    match inv.command {
        Command::Version => Ok(Some(version_info())),
        Command::Check if !version.allows_check() => Err(too_old(version, "CHECK")),
        Command::Status | Command::Gc if !version.allows_gc_and_status() => Err(too_old(
            version,
            if inv.command == Command::Gc {
                "GC"
            } else {
                "STATUS"
            },
        )),
        Command::Add => add(mode, inv, loaded, host).await.map(Some),
        Command::Del => del(mode, inv, loaded, host).await.map(|()| None),
        Command::Check => check(mode, inv, loaded, host).await.map(|()| None),
        Command::Status => status(loaded, host).await.map(|()| None),
        Command::Gc => gc(mode, loaded, host).await.map(|()| None),
    }
}

pub fn version_info() -> Value {
    json!({
        "cniVersion": crate::version::LATEST.to_string(),
        "supportedVersions": Version::supported_list(),
    })
}

fn too_old(version: Version, verb: &str) -> CniError {
    CniError::new(
        code::INCOMPATIBLE_VERSION,
        format!("config version {version} does not allow {verb}"),
    )
}

/// Node name: config `nodename`, else `<state-dir>/nodename` (the agent writes it), else the
/// host name.
fn node_name(conf: &NetConf, hostname: &str) -> Result<String> {
    if let Some(n) = conf.nodename.as_deref().filter(|n| !n.is_empty()) {
        return Ok(n.to_owned());
    }
    let file = conf.state_dir().join("nodename");
    if let Ok(s) = std::fs::read_to_string(&file) {
        if !s.trim().is_empty() {
            return Ok(s.trim().to_owned());
        }
    }
    let h = hostname.trim();
    if h.is_empty() {
        return Err(CniError::invalid_config(format!(
            "no node name: set nodename in the config or write {}",
            file.display()
        )));
    }
    Ok(h.to_owned())
}

/// MTU: config `mtu`, else `<state-dir>/mtu` (the agent writes the smallest encapsulation
/// MTU there), else 1500.
fn mtu(conf: &NetConf) -> u32 {
    if conf.mtu != 0 {
        return conf.mtu;
    }
    std::fs::read_to_string(conf.state_dir().join("mtu"))
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .filter(|m| (68..=65535).contains(m))
        .unwrap_or(DEFAULT_MTU)
}

async fn connect(conf: &NetConf, datastore_env: Option<&str>) -> Result<Client> {
    let url = conf
        .datastore
        .clone()
        .or_else(|| datastore_env.map(str::to_owned))
        .unwrap_or_else(|| margay_datastore::DEFAULT_URL.to_owned());
    let opts = ConnectOptions {
        etcd_ca: conf.etcd_ca_cert_file.clone(),
        etcd_cert: conf.etcd_cert_file.clone(),
        etcd_key: conf.etcd_key_file.clone(),
        short_lived: true,
    };
    match margay_datastore::connect(&url, &opts).await {
        Ok(ds) => Ok(Client::new(ds)),
        Err(e @ margay_datastore::Error::InvalidUrl { .. }) => {
            Err(CniError::invalid_config(format!("datastore: {e}")))
        }
        Err(e) => Err(CniError::new(
            code::TRY_AGAIN_LATER,
            format!("datastore {url} is unreachable: {e}"),
        )),
    }
}

fn workload_of(inv: &Invocation) -> Workload {
    match inv.pod() {
        Some((namespace, name)) => Workload::Pod {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        },
        None => Workload::Container {
            id: inv.container_id.clone(),
        },
    }
}

fn netns_of(inv: &Invocation) -> &Path {
    inv.netns
        .as_deref()
        .expect("ADD and CHECK require CNI_NETNS")
}

async fn allocate_addresses<D, E: Exec>(
    inv: &Invocation,
    loaded: &Loaded,
    client: &Client,
    node: &str,
    host: &mut Host<D, E>,
) -> Result<Vec<IpAddr>> {
    let conf = &loaded.conf;
    if !conf.ipam_in_process() {
        let out = host
            .exec
            .exec(conf.ipam_type(), Command::Add, &loaded.raw)?
            .ok_or_else(|| {
                CniError::new(
                    code::DELEGATE,
                    format!("{} printed no result", conf.ipam_type()),
                )
            })?;
        let result = CniResult::from_json(&out, &format!("{}'s result", conf.ipam_type()))?;
        if result.ips.is_empty() {
            return Err(CniError::new(
                code::DELEGATE,
                format!("{} returned no address", conf.ipam_type()),
            ));
        }
        return Ok(result.addresses());
    }
    let mut requested = conf.requested_ips()?;
    requested.extend(&inv.args.ips);
    let mut attrs = BTreeMap::new();
    match inv.pod() {
        Some((ns, pod)) => {
            attrs.insert("namespace".to_owned(), ns.to_owned());
            attrs.insert("pod".to_owned(), pod.to_owned());
        }
        None => {
            attrs.insert("containerID".to_owned(), inv.container_id.clone());
        }
    }
    let handle = handle_for(&conf.name, &inv.container_id);
    let pools = conf.pool_refs();
    let _lock = HostLock::acquire(conf.state_dir())?;
    allocate::allocate(
        client,
        &allocate::Request {
            handle: &handle,
            node,
            requested: &requested,
            ipv4: conf.assign_ipv4(),
            ipv6: conf.assign_ipv6(),
            pools: &pools,
            attrs,
        },
    )
    .await
}

async fn release_addresses<E: Exec>(
    inv: &Invocation,
    loaded: &Loaded,
    client: &Client,
    exec: &mut E,
) -> Result<()> {
    let conf = &loaded.conf;
    if conf.ipam.is_none() {
        return Ok(());
    }
    if !conf.ipam_in_process() {
        exec.exec(conf.ipam_type(), Command::Del, &loaded.raw)?;
        return Ok(());
    }
    let _lock = HostLock::acquire(conf.state_dir())?;
    let released = allocate::release(client, &handle_for(&conf.name, &inv.container_id)).await?;
    tracing::info!(?released, "released addresses");
    Ok(())
}

/// Best effort on the way out of a failed ADD: the original error is what the runtime sees.
async fn undo_allocation<D, E: Exec>(
    inv: &Invocation,
    loaded: &Loaded,
    client: &Client,
    host: &mut Host<D, E>,
) {
    if let Err(e) = release_addresses(inv, loaded, client, &mut host.exec).await {
        tracing::error!(error = %e, "could not release the addresses of a failed ADD");
    }
}

fn host_prefix(ip: IpAddr) -> IpNet {
    IpNet::from(ip)
}

async fn add<D: Dataplane, E: Exec>(
    mode: Mode,
    inv: &Invocation,
    loaded: &Loaded,
    host: &mut Host<D, E>,
) -> Result<Value> {
    let conf = &loaded.conf;
    let version = loaded.version;
    let netns = netns_of(inv);
    let node = node_name(conf, &host.hostname)?;
    let workload = workload_of(inv);
    if mode == Mode::Main {
        // Name problems and a missing netns are found before anything is allocated.
        workload.endpoint_name(&node, &inv.ifname)?;
        host.dataplane.check_netns(netns)?;
    }
    let client = connect(conf, host.datastore_env.as_deref()).await?;
    let addresses = allocate_addresses(inv, loaded, &client, &node, host).await?;
    let outcome = match mode {
        Mode::Ipam => ipam_result(&client, &addresses).await,
        Mode::Main => wire(inv, loaded, &client, &node, &workload, &addresses, host).await,
    };
    match outcome {
        Ok(result) => Ok(result.to_json(version)),
        Err(e) => {
            undo_allocation(inv, loaded, &client, host).await;
            Err(e)
        }
    }
}

/// The result `margay-ipam` gives a main plugin such as `ptp`. Each address carries its
/// pool's prefix and Margay's link-local gateway: `ptp` then routes the whole pool through
/// the host exactly as Margay's own plugin does (169.254.1.1 on the link, the pool via it),
/// and the host routes each pod's /32. A default route through a gateway outside the
/// address's prefix is something `ptp` cannot install, so none is returned.
async fn ipam_result(client: &Client, ips: &[IpAddr]) -> Result<CniResult> {
    let (pools, _) = client.list::<IPPool>(None).await?;
    let mut result = CniResult::default();
    for ip in ips {
        let prefix = pools.iter().find(|p| p.spec.cidr.contains(ip)).map_or_else(
            || host_prefix(*ip).prefix_len(),
            |p| p.spec.cidr.prefix_len(),
        );
        result.ips.push(IpConfig {
            address: IpNet::new(*ip, prefix).expect("a pool's prefix fits its family"),
            gateway: Some(match ip {
                IpAddr::V4(_) => IpAddr::V4(GATEWAY_V4),
                IpAddr::V6(_) => IpAddr::V6(dataplane::GATEWAY_V6),
            }),
            interface: None,
        });
    }
    Ok(result)
}

/// Interface, then endpoint; undoes the interface if the endpoint cannot be written.
async fn wire<D: Dataplane, E: Exec>(
    inv: &Invocation,
    loaded: &Loaded,
    client: &Client,
    node: &str,
    workload: &Workload,
    addresses: &[IpAddr],
    host: &mut Host<D, E>,
) -> Result<CniResult> {
    let conf = &loaded.conf;
    let netns = netns_of(inv);
    let host_ifname = workload.host_veth_name(conf.interface_prefix());
    let pod = match workload {
        Workload::Pod { namespace, name } => client.get::<Pod>(Some(namespace), name).await?,
        Workload::Container { .. } => None,
    };
    let mtu = mtu(conf);
    let spec = PodInterfaceSpec {
        netns: netns.to_path_buf(),
        container_ifname: inv.ifname.clone(),
        host_ifname: host_ifname.clone(),
        mtu,
        addresses: addresses.to_vec(),
        allow_ip_forwarding: conf.container_settings.allow_ip_forwarding,
    };
    let wired = host.dataplane.add(&spec)?;
    let wep = endpoint::build(&EndpointInput {
        workload,
        node,
        container_id: &inv.container_id,
        ifname: &inv.ifname,
        network: &conf.name,
        host_ifname: &host_ifname,
        container_mac: &wired.container_mac,
        addresses,
        pod: pod.as_ref(),
    });
    let written = match wep {
        Ok(wep) => match workload {
            Workload::Container { .. } => match ensure_profile(client, &conf.name).await {
                Ok(()) => write_endpoint(client, wep).await,
                Err(e) => Err(e),
            },
            Workload::Pod { .. } => write_endpoint(client, wep).await,
        },
        Err(e) => Err(e),
    };
    let written = match (written, conf.policy_setup_timeout()) {
        (Ok(()), Some(timeout)) => {
            let marker = programmed_marker(conf.state_dir(), &host_ifname);
            if wait_for_policy(&marker, &inv.container_id, timeout).await {
                Ok(())
            } else {
                undo_endpoint(client, node, workload, inv).await;
                Err(CniError::new(
                    code::TRY_AGAIN_LATER,
                    format!(
                        "the policy of {host_ifname} was not programmed within {}s \
                         (policy_setup_timeout_seconds): is the agent running on node {node}?",
                        timeout.as_secs()
                    ),
                )
                .with_details(format!("waited for {}", marker.display())))
            }
        }
        (written, _) => written,
    };
    if let Err(e) = written {
        if let Err(undo) = host.dataplane.remove(Some(netns), &inv.ifname) {
            tracing::error!(error = %undo, "could not remove the interface of a failed ADD");
        }
        return Err(e);
    }
    let mut result = CniResult {
        interfaces: vec![
            Interface {
                name: host_ifname,
                mac: wired.host_mac,
                sandbox: None,
                mtu: Some(mtu),
            },
            Interface {
                name: inv.ifname.clone(),
                mac: wired.container_mac,
                sandbox: Some(netns.display().to_string()),
                mtu: Some(mtu),
            },
        ],
        ..Default::default()
    };
    for ip in addresses {
        result.ips.push(IpConfig {
            address: host_prefix(*ip),
            gateway: None,
            interface: Some(1),
        });
    }
    for (dst, gw) in dataplane::container_routes(addresses) {
        if gw.is_some() {
            result.routes.push(RouteEntry { dst, gw });
        }
    }
    Ok(result)
}

/// The directory under the state directory where the node agent records, one file per host
/// veth, the interfaces whose policy it has programmed; each file holds the container ID of
/// the endpoint programmed.
pub const PROGRAMMED_DIR: &str = "policy";

/// How often ADD looks for the agent's record while waiting.
const POLICY_POLL: Duration = Duration::from_millis(25);

/// The file the node agent writes once `host_ifname`'s policy is programmed.
pub fn programmed_marker(state_dir: &Path, host_ifname: &str) -> PathBuf {
    state_dir.join(PROGRAMMED_DIR).join(host_ifname)
}

/// Waits until `marker` names `container_id` (a file left for an earlier sandbox of the same
/// pod names another), looking every [`POLICY_POLL`]; false once `timeout` has passed.
async fn wait_for_policy(marker: &Path, container_id: &str, timeout: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if std::fs::read_to_string(marker).is_ok_and(|c| c.trim() == container_id) {
            return true;
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return false;
        }
        tokio::time::sleep(POLICY_POLL.min(deadline - now)).await;
    }
}

/// Best effort on the way out of a failed ADD: deletes the endpoint it wrote.
async fn undo_endpoint(client: &Client, node: &str, workload: &Workload, inv: &Invocation) {
    let deleted = match workload.endpoint_name(node, &inv.ifname) {
        Ok(name) => delete_endpoint(client, workload.namespace(), &name, &inv.container_id).await,
        Err(e) => Err(e),
    };
    if let Err(e) = deleted {
        tracing::error!(error = %e, "could not delete the endpoint of a failed ADD");
    }
}

/// Creates the network's profile for non-Kubernetes endpoints unless it exists (an existing
/// one, the operator's or an earlier ADD's, is kept as it is).
async fn ensure_profile(client: &Client, network: &str) -> Result<()> {
    if client.get::<Profile>(None, network).await?.is_some() {
        return Ok(());
    }
    match client.create(&endpoint::network_profile(network)).await {
        Ok(_) | Err(margay_client::Error::Datastore(margay_datastore::Error::AlreadyExists(_))) => {
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

/// Creates the endpoint, or takes over the one an earlier sandbox of the same pod left.
async fn write_endpoint(client: &Client, wep: WorkloadEndpoint) -> Result<()> {
    let errors = margay_api::Object::validate(&wep);
    if let Some(e) = errors.first() {
        return Err(CniError::invalid_env(format!(
            "workload endpoint {}: {e}",
            wep.metadata.name
        )));
    }
    for _ in 0..5 {
        match client.create(&wep).await {
            Ok(_) => return Ok(()),
            Err(margay_client::Error::Datastore(margay_datastore::Error::AlreadyExists(_))) => {}
            Err(e) => return Err(e.into()),
        }
        let ns = wep.metadata.namespace.as_deref();
        let Some(existing) = client
            .get::<WorkloadEndpoint>(ns, &wep.metadata.name)
            .await?
        else {
            continue;
        };
        tracing::info!(
            endpoint = %wep.metadata.name,
            old = ?existing.spec.container_id,
            "replacing the endpoint of an earlier sandbox"
        );
        let mut replacement = wep.clone();
        replacement.metadata.resource_version = existing.metadata.resource_version.clone();
        replacement.metadata.uid = existing.metadata.uid.clone();
        replacement.metadata.creation_timestamp = existing.metadata.creation_timestamp.clone();
        match client.update(&replacement).await {
            Ok(_) => return Ok(()),
            Err(margay_client::Error::Datastore(
                margay_datastore::Error::Conflict { .. } | margay_datastore::Error::NotFound(_),
            )) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(CniError::new(
        code::TRY_AGAIN_LATER,
        format!(
            "workload endpoint {}: too many concurrent writers",
            wep.metadata.name
        ),
    ))
}

/// Deletes the endpoint only if it still belongs to this container: a newer sandbox of the
/// same pod may already own it.
async fn delete_endpoint(
    client: &Client,
    namespace: &str,
    name: &str,
    container_id: &str,
) -> Result<()> {
    for _ in 0..5 {
        let Some(existing) = client
            .get::<WorkloadEndpoint>(Some(namespace), name)
            .await?
        else {
            return Ok(());
        };
        if existing.spec.container_id.as_deref() != Some(container_id) {
            tracing::info!(
                endpoint = name,
                owner = ?existing.spec.container_id,
                "endpoint belongs to another sandbox; keeping it"
            );
            return Ok(());
        }
        match client
            .delete::<WorkloadEndpoint>(Some(namespace), name, existing.metadata.revision())
            .await
        {
            Ok(_) | Err(margay_client::Error::Datastore(margay_datastore::Error::NotFound(_))) => {
                return Ok(())
            }
            Err(margay_client::Error::Datastore(margay_datastore::Error::Conflict { .. })) => {
                continue
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(CniError::new(
        code::TRY_AGAIN_LATER,
        format!("workload endpoint {name}: too many concurrent writers"),
    ))
}

async fn del<D: Dataplane, E: Exec + Send>(
    mode: Mode,
    inv: &Invocation,
    loaded: &Loaded,
    host: &mut Host<D, E>,
) -> Result<()> {
    let conf = &loaded.conf;
    let Host {
        dataplane,
        exec,
        datastore_env,
        hostname,
    } = host;
    let datastore_env = datastore_env.as_deref();
    if mode == Mode::Ipam {
        let client = connect(conf, datastore_env).await?;
        return release_addresses(inv, loaded, &client, exec).await;
    }
    let node = node_name(conf, hostname)?;
    let workload = workload_of(inv);
    // The kernel takes tens of milliseconds to delete a veth (it waits for RCU), so the
    // datastore work runs beside it on its own thread and runtime instead of after it.
    let datastore_work = || -> Result<()> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| CniError::new(code::IO_FAILURE, format!("async runtime: {e}")))?;
        runtime.block_on(async {
            let client = connect(conf, datastore_env).await?;
            // A name that cannot be built was never written.
            if let Ok(name) = workload.endpoint_name(&node, &inv.ifname) {
                delete_endpoint(&client, workload.namespace(), &name, &inv.container_id).await?;
            }
            release_addresses(inv, loaded, &client, exec).await
        })
    };
    let (removed, recorded) = std::thread::scope(|s| {
        let datastore = s.spawn(datastore_work);
        let removed = dataplane.remove(inv.netns.as_deref(), &inv.ifname);
        let recorded = datastore.join().unwrap_or_else(|_| {
            Err(CniError::new(
                code::IO_FAILURE,
                "the datastore thread panicked",
            ))
        });
        (removed, recorded)
    });
    removed.and(recorded)
}

fn mismatch(msg: String) -> CniError {
    CniError::new(code::CHECK_MISMATCH, msg)
}

async fn check<D: Dataplane, E: Exec>(
    mode: Mode,
    inv: &Invocation,
    loaded: &Loaded,
    host: &mut Host<D, E>,
) -> Result<()> {
    let conf = &loaded.conf;
    let prev = conf
        .prev_result
        .as_ref()
        .ok_or_else(|| CniError::invalid_config("CHECK needs prevResult"))?;
    let prev = CniResult::from_json(prev, "prevResult")?;
    let client = connect(conf, host.datastore_env.as_deref()).await?;
    let expected: Vec<IpAddr> = prev
        .ips
        .iter()
        .filter(|ip| {
            ip.interface
                .and_then(|i| prev.interfaces.get(i))
                .is_none_or(|iface| iface.sandbox.is_some() && iface.name == inv.ifname)
        })
        .map(|ip| ip.address.addr())
        .collect();
    if expected.is_empty() {
        return Err(mismatch(format!(
            "prevResult has no address for interface {}",
            inv.ifname
        )));
    }
    if conf.ipam_in_process() {
        let handle = handle_for(&conf.name, &inv.container_id);
        let held = Ipam::new(client.clone()).ips_by_handle(&handle).await?;
        for ip in &expected {
            if !held.contains(ip) {
                return Err(mismatch(format!(
                    "IPAM: {ip} is not allocated to handle {handle}"
                )));
            }
        }
    } else if conf.ipam.is_some() {
        host.exec
            .exec(conf.ipam_type(), Command::Check, &loaded.raw)?;
    }
    if mode == Mode::Ipam {
        return Ok(());
    }
    let node = node_name(conf, &host.hostname)?;
    let workload = workload_of(inv);
    let host_ifname = workload.host_veth_name(conf.interface_prefix());
    let observed = host
        .dataplane
        .inspect(netns_of(inv), &inv.ifname, &host_ifname)?;
    compare(&observed, inv, &host_ifname, &expected, mtu(conf))?;
    let name = workload.endpoint_name(&node, &inv.ifname)?;
    let wep = client
        .get::<WorkloadEndpoint>(Some(workload.namespace()), &name)
        .await?
        .ok_or_else(|| mismatch(format!("workload endpoint {name} does not exist")))?;
    if wep.spec.container_id.as_deref() != Some(inv.container_id.as_str()) {
        return Err(mismatch(format!(
            "workload endpoint {name} belongs to container {:?}, not {}",
            wep.spec.container_id.unwrap_or_default(),
            inv.container_id
        )));
    }
    let want: BTreeSet<IpNet> = expected.iter().map(|ip| host_prefix(*ip)).collect();
    let have: BTreeSet<IpNet> = wep.spec.ip_networks.iter().copied().collect();
    if want != have {
        return Err(mismatch(format!(
            "workload endpoint {name} has ipNetworks {have:?}, expected {want:?}"
        )));
    }
    Ok(())
}

/// CHECK's comparison of what is there with what ADD builds.
fn compare(
    observed: &dataplane::ObservedPod,
    inv: &Invocation,
    host_ifname: &str,
    expected: &[IpAddr],
    mtu: u32,
) -> Result<()> {
    let ifname = &inv.ifname;
    let container = observed
        .container
        .as_ref()
        .ok_or_else(|| mismatch(format!("interface {ifname} is missing from the pod")))?;
    if !container.up {
        return Err(mismatch(format!("interface {ifname} in the pod is down")));
    }
    if container.mtu != mtu {
        return Err(mismatch(format!(
            "interface {ifname} in the pod has MTU {}, expected {mtu}",
            container.mtu
        )));
    }
    for ip in expected {
        if !container.addresses.contains(&host_prefix(*ip)) {
            return Err(mismatch(format!(
                "interface {ifname} in the pod lacks address {}",
                host_prefix(*ip)
            )));
        }
    }
    for (dst, gw) in dataplane::container_routes(expected) {
        if !observed.container_routes.contains(&(dst, gw)) {
            let via = gw.map(|g| format!(" via {g}")).unwrap_or_default();
            return Err(mismatch(format!("the pod has no route to {dst}{via}")));
        }
    }
    let hostside = observed
        .host
        .as_ref()
        .ok_or_else(|| mismatch(format!("host veth {host_ifname} is missing")))?;
    if !hostside.up {
        return Err(mismatch(format!("host veth {host_ifname} is down")));
    }
    if hostside.mac != dataplane::format_mac(&HOST_MAC) {
        return Err(mismatch(format!(
            "host veth {host_ifname} has MAC {}, expected {}",
            hostside.mac,
            dataplane::format_mac(&HOST_MAC)
        )));
    }
    for ip in expected {
        if !observed.host_routes.contains(&host_prefix(*ip)) {
            return Err(mismatch(format!(
                "the host has no route to {} via {host_ifname}",
                host_prefix(*ip)
            )));
        }
    }
    if expected.iter().any(IpAddr::is_ipv4) {
        for (key, want) in dataplane::host_sysctls(host_ifname, true, false) {
            let have = observed
                .host_sysctls
                .iter()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| v.as_str());
            if have != Some(want) {
                return Err(mismatch(format!(
                    "sysctl {key} is {}, expected {want}",
                    have.unwrap_or("unreadable")
                )));
            }
        }
    }
    Ok(())
}

/// STATUS: ready when the datastore answers and an enabled pool exists.
async fn status<D, E: Exec>(loaded: &Loaded, host: &mut Host<D, E>) -> Result<()> {
    let conf = &loaded.conf;
    let unavailable = |msg: String| CniError::new(code::NOT_AVAILABLE, msg);
    let client = connect(conf, host.datastore_env.as_deref())
        .await
        .map_err(|e| unavailable(e.msg))?;
    let (pools, _) = client
        .list::<IPPool>(None)
        .await
        .map_err(|e| unavailable(format!("datastore is unreachable: {e}")))?;
    if conf.ipam_in_process() && !pools.iter().any(|p| !p.spec.disabled) {
        return Err(unavailable("no enabled IP pool exists".to_owned()));
    }
    if conf.ipam.is_some() && !conf.ipam_in_process() {
        host.exec
            .exec(conf.ipam_type(), Command::Status, &loaded.raw)?;
    }
    Ok(())
}

/// GC: releases addresses and endpoints of this node's attachments that the runtime no
/// longer knows (`cni.dev/valid-attachments`).
async fn gc<D, E: Exec>(mode: Mode, loaded: &Loaded, host: &mut Host<D, E>) -> Result<()> {
    let conf = &loaded.conf;
    let valid = conf.valid_attachments.as_ref().ok_or_else(|| {
        CniError::invalid_config("GC needs cni.dev/valid-attachments in the config")
    })?;
    let valid_ids: BTreeSet<&str> = valid.iter().map(|a| a.container_id.as_str()).collect();
    let node = node_name(conf, &host.hostname)?;
    let client = connect(conf, host.datastore_env.as_deref()).await?;
    if mode == Mode::Main {
        let (weps, _) = client.list::<WorkloadEndpoint>(None).await?;
        for wep in weps {
            let cid = wep.spec.container_id.as_deref().unwrap_or_default();
            let attached = valid.iter().any(|a| {
                a.container_id == cid && (a.ifname.is_empty() || a.ifname == wep.spec.endpoint)
            });
            if wep.spec.node != node || cid.is_empty() || attached {
                continue;
            }
            tracing::info!(endpoint = %wep.metadata.name, "GC: removing a stale endpoint");
            let ns = wep.metadata.namespace.as_deref().unwrap_or_default();
            delete_endpoint(&client, ns, &wep.metadata.name, cid).await?;
        }
    }
    if conf.ipam_in_process() {
        let prefix = format!("{}.", conf.name);
        let ipam = Ipam::new(client.clone());
        let (handles, _) = client.list::<IPAMHandle>(None).await?;
        let _lock = HostLock::acquire(conf.state_dir())?;
        for h in handles {
            let name = &h.metadata.name;
            let Some(cid) = name.strip_prefix(&prefix) else {
                continue;
            };
            if valid_ids.contains(cid) || !handle_on_node(&ipam, name, &node).await? {
                continue;
            }
            let released = ipam.release_handle(name).await?;
            tracing::info!(handle = %name, ?released, "GC: released a stale handle");
        }
    } else if conf.ipam.is_some() {
        host.exec.exec(conf.ipam_type(), Command::Gc, &loaded.raw)?;
    }
    Ok(())
}

/// Whether a handle's addresses were allocated for this node (allocation attribute `node`).
async fn handle_on_node(ipam: &Ipam, handle: &str, node: &str) -> Result<bool> {
    for ip in ipam.ips_by_handle(handle).await? {
        if let Some(holder) = ipam.holder(ip).await? {
            if holder.attributes.get("node").map(String::as_str) == Some(node) {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use margay_api::IPPool;

    use super::*;
    use crate::config;
    use crate::dataplane::{ObservedLink, ObservedPod, WiredInterface};

    /// Records what would have been wired; fails `add` when told to.
    #[derive(Default)]
    struct FakeDataplane {
        wired: Vec<PodInterfaceSpec>,
        removed: Vec<String>,
        fail_add: bool,
    }

    impl Dataplane for FakeDataplane {
        fn add(&mut self, spec: &PodInterfaceSpec) -> Result<WiredInterface> {
            if self.fail_add {
                return Err(CniError::dataplane("creating the veth pair: File exists"));
            }
            self.wired.push(spec.clone());
            Ok(WiredInterface {
                host_mac: "ee:ee:ee:ee:ee:ee".into(),
                container_mac: "02:00:00:00:00:01".into(),
            })
        }
        fn remove(&mut self, _netns: Option<&Path>, container_ifname: &str) -> Result<()> {
            self.removed.push(container_ifname.to_owned());
            Ok(())
        }
        fn inspect(&mut self, _: &Path, _: &str, host_ifname: &str) -> Result<ObservedPod> {
            let spec = self.wired.last().expect("wired");
            let link = |addresses| ObservedLink {
                mac: "ee:ee:ee:ee:ee:ee".into(),
                mtu: spec.mtu,
                up: true,
                addresses,
            };
            Ok(ObservedPod {
                container: Some(link(
                    spec.addresses.iter().map(|a| IpNet::from(*a)).collect(),
                )),
                container_routes: dataplane::container_routes(&spec.addresses),
                host: Some(link(Vec::new())),
                host_routes: spec.addresses.iter().map(|a| IpNet::from(*a)).collect(),
                host_sysctls: dataplane::host_sysctls(host_ifname, true, false)
                    .into_iter()
                    .map(|(k, v)| (k, v.to_owned()))
                    .collect(),
            })
        }
        fn check_netns(&mut self, netns: &Path) -> Result<()> {
            if netns.ends_with("missing") {
                return Err(CniError::new(code::UNKNOWN_CONTAINER, "no netns"));
            }
            Ok(())
        }
    }

    struct NoExec;
    impl Exec for NoExec {
        fn exec(&mut self, plugin: &str, _: Command, _: &[u8]) -> Result<Option<Value>> {
            panic!("unexpected delegate {plugin}")
        }
    }

    fn invocation(command: Command, container_id: &str, netns: &str) -> Invocation {
        Invocation {
            command,
            container_id: container_id.into(),
            netns: Some(PathBuf::from(netns)),
            ifname: "eth0".into(),
            args: Default::default(),
            path: Vec::new(),
        }
    }

    struct World {
        host: Host<FakeDataplane, NoExec>,
        state: tempfile::TempDir,
        url: String,
        /// Keeps the named in-memory store alive between plugin runs.
        client: Client,
    }

    impl World {
        async fn new(name: &str) -> World {
            let url = format!("memory://cni-{name}");
            let client = Client::new(
                margay_datastore::connect(&url, &ConnectOptions::default())
                    .await
                    .unwrap(),
            );
            let mut pool = IPPool::new("pool", "10.9.0.0/24".parse().unwrap());
            margay_api::Object::apply_defaults(&mut pool);
            client.create(&pool).await.unwrap();
            World {
                host: Host {
                    dataplane: FakeDataplane::default(),
                    exec: NoExec,
                    datastore_env: None,
                    hostname: "fallback-host".into(),
                },
                state: tempfile::tempdir().unwrap(),
                url,
                client,
            }
        }

        fn client(&self) -> Client {
            self.client.clone()
        }

        fn loaded(&self, command: Command, extra: Value) -> Loaded {
            let mut conf = json!({
                "cniVersion": "1.1.0", "name": "k8s-pod-network", "type": "margay",
                "nodename": "n1", "datastore": self.url, "state_dir": self.state.path(),
                "ipam": {"type": "margay-ipam"},
            });
            for (k, v) in extra.as_object().unwrap() {
                conf[k] = v.clone();
            }
            config::load(conf.to_string().into_bytes(), command).unwrap()
        }

        async fn run(
            &mut self,
            command: Command,
            cid: &str,
            pod: &str,
            extra: Value,
        ) -> Result<Option<Value>> {
            let mut inv = invocation(command, cid, "/var/run/netns/x");
            inv.args.pod_namespace = Some("ns".into());
            inv.args.pod_name = Some(pod.into());
            let loaded = self.loaded(command, extra);
            run(Mode::Main, &inv, &loaded, &mut self.host).await
        }

        async fn endpoints(&self) -> Vec<WorkloadEndpoint> {
            self.client()
                .list::<WorkloadEndpoint>(None)
                .await
                .unwrap()
                .0
        }

        async fn held(&self, cid: &str) -> Vec<IpAddr> {
            Ipam::new(self.client())
                .ips_by_handle(&handle_for("k8s-pod-network", cid))
                .await
                .unwrap()
        }
    }

    #[tokio::test]
    async fn add_then_del_leaves_nothing() {
        let mut w = World::new("add-del").await;
        let out = w
            .run(Command::Add, "c1", "web", json!({}))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(out["ips"][0]["interface"], 1);
        assert_eq!(w.host.dataplane.wired[0].mtu, DEFAULT_MTU);
        assert_eq!(w.held("c1").await.len(), 1);
        let weps = w.endpoints().await;
        assert_eq!(weps.len(), 1);
        assert_eq!(weps[0].spec.node, "n1");
        let mut prev = json!({});
        prev["prevResult"] = out;
        w.run(Command::Check, "c1", "web", prev).await.unwrap();
        w.run(Command::Del, "c1", "web", json!({})).await.unwrap();
        w.run(Command::Del, "c1", "web", json!({})).await.unwrap();
        assert!(w.held("c1").await.is_empty());
        assert!(w.endpoints().await.is_empty());
    }

    #[tokio::test]
    async fn the_wait_for_policy_needs_the_agents_record_for_this_container() {
        let state = tempfile::tempdir().unwrap();
        let marker = programmed_marker(state.path(), "mgy0123456789a");
        let started = std::time::Instant::now();
        assert!(!wait_for_policy(&marker, "c1", Duration::from_millis(120)).await);
        assert!(started.elapsed() >= Duration::from_millis(120));
        std::fs::create_dir_all(marker.parent().unwrap()).unwrap();
        // A record for an earlier sandbox of the same pod does not count…
        std::fs::write(&marker, "c0\n").unwrap();
        assert!(!wait_for_policy(&marker, "c1", Duration::from_millis(60)).await);
        // …the agent's record for this one, arriving while ADD waits, does.
        let writer = {
            let marker = marker.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(100)).await;
                std::fs::write(&marker, "c1\n").unwrap();
            })
        };
        assert!(wait_for_policy(&marker, "c1", Duration::from_secs(5)).await);
        writer.await.unwrap();
    }

    #[tokio::test]
    async fn add_fails_and_undoes_everything_when_policy_is_not_programmed_in_time() {
        let mut w = World::new("policy-wait").await;
        let wait = json!({"policy_setup_timeout_seconds": 1});
        let started = std::time::Instant::now();
        let err = w
            .run(Command::Add, "c1", "web", wait.clone())
            .await
            .unwrap_err();
        assert!(started.elapsed() >= Duration::from_secs(1));
        assert_eq!(err.code, code::TRY_AGAIN_LATER);
        let veth = Workload::Pod {
            namespace: "ns".into(),
            name: "web".into(),
        }
        .host_veth_name("mgy");
        assert!(
            err.msg.starts_with(&format!(
                "the policy of {veth} was not programmed within 1s"
            )),
            "{}",
            err.msg
        );
        assert_eq!(w.host.dataplane.removed, ["eth0"]);
        assert!(w.held("c1").await.is_empty());
        assert!(w.endpoints().await.is_empty());

        // The agent has recorded the endpoint: ADD returns as soon as it sees that.
        let marker = programmed_marker(w.state.path(), &veth);
        std::fs::create_dir_all(marker.parent().unwrap()).unwrap();
        std::fs::write(&marker, "c2\n").unwrap();
        let started = std::time::Instant::now();
        w.run(Command::Add, "c2", "web", wait).await.unwrap();
        assert!(started.elapsed() < Duration::from_secs(1));
        assert_eq!(w.endpoints().await.len(), 1);
    }

    #[tokio::test]
    async fn containers_get_their_networks_profile_once() {
        let mut w = World::new("profile").await;
        let loaded = w.loaded(Command::Add, json!({}));
        for cid in ["ctr-1", "ctr-2"] {
            let inv = invocation(Command::Add, cid, "/var/run/netns/x");
            run(Mode::Main, &inv, &loaded, &mut w.host).await.unwrap();
        }
        let (profiles, _) = w.client().list::<Profile>(None).await.unwrap();
        assert_eq!(profiles.len(), 1);
        assert_eq!(
            profiles[0].spec,
            endpoint::network_profile("k8s-pod-network").spec
        );
        // The operator's own profile of that name is left as it is; pods need none.
        let mut mine = profiles[0].clone();
        mine.spec.ingress.clear();
        w.client().update(&mine).await.unwrap();
        let inv = invocation(Command::Add, "ctr-3", "/var/run/netns/x");
        run(Mode::Main, &inv, &loaded, &mut w.host).await.unwrap();
        w.run(Command::Add, "c4", "web", json!({})).await.unwrap();
        let (profiles, _) = w.client().list::<Profile>(None).await.unwrap();
        assert_eq!(profiles.len(), 1);
        assert!(profiles[0].spec.ingress.is_empty());
    }

    #[tokio::test]
    async fn dataplane_failure_releases_the_address() {
        let mut w = World::new("dp-fail").await;
        w.host.dataplane.fail_add = true;
        let err = w
            .run(Command::Add, "c1", "web", json!({}))
            .await
            .unwrap_err();
        assert_eq!(err.code, code::DATAPLANE);
        assert!(w.held("c1").await.is_empty());
        assert!(w.endpoints().await.is_empty());
    }

    #[tokio::test]
    async fn missing_netns_fails_before_allocating() {
        let mut w = World::new("no-netns").await;
        let inv = invocation(Command::Add, "c1", "/var/run/netns/missing");
        let loaded = w.loaded(Command::Add, json!({}));
        let err = run(Mode::Main, &inv, &loaded, &mut w.host)
            .await
            .unwrap_err();
        assert_eq!(err.code, code::UNKNOWN_CONTAINER);
        assert!(w.held("c1").await.is_empty());
    }

    #[tokio::test]
    async fn a_new_sandbox_takes_the_endpoint_and_the_old_del_leaves_it() {
        let mut w = World::new("sandboxes").await;
        w.run(Command::Add, "old", "web", json!({})).await.unwrap();
        w.run(Command::Add, "new", "web", json!({})).await.unwrap();
        w.run(Command::Del, "old", "web", json!({})).await.unwrap();
        let weps = w.endpoints().await;
        assert_eq!(weps.len(), 1);
        assert_eq!(weps[0].spec.container_id.as_deref(), Some("new"));
        assert!(w.held("old").await.is_empty());
        assert_eq!(w.held("new").await.len(), 1);
    }

    #[tokio::test]
    async fn requested_address_is_honoured() {
        let mut w = World::new("requested").await;
        let out = w
            .run(
                Command::Add,
                "c1",
                "web",
                json!({"runtimeConfig": {"ips": ["10.9.0.77/24"]}}),
            )
            .await
            .unwrap()
            .unwrap();
        assert_eq!(out["ips"][0]["address"], "10.9.0.77/32");
        let taken = w
            .run(
                Command::Add,
                "c2",
                "api",
                json!({"runtimeConfig": {"ips": ["10.9.0.77"]}}),
            )
            .await
            .unwrap_err();
        assert_eq!(taken.code, code::IPAM);
        assert!(w.held("c2").await.is_empty());
    }

    #[tokio::test]
    async fn check_reports_a_missing_route() {
        let mut w = World::new("check").await;
        let out = w
            .run(Command::Add, "c1", "web", json!({}))
            .await
            .unwrap()
            .unwrap();
        let mut observed = w
            .host
            .dataplane
            .inspect(Path::new("/x"), "eth0", "mgyx")
            .unwrap();
        observed.container_routes.pop();
        let inv = invocation(Command::Check, "c1", "/var/run/netns/x");
        let prev = CniResult::from_json(&out, "x").unwrap();
        let err = compare(&observed, &inv, "mgyx", &prev.addresses(), DEFAULT_MTU).unwrap_err();
        assert!(err.msg.contains("no route to 0.0.0.0/0"), "{}", err.msg);
    }

    #[tokio::test]
    async fn verbs_need_their_versions() {
        let mut w = World::new("versions").await;
        let err = w
            .run(Command::Check, "c1", "web", json!({"cniVersion": "0.3.1"}))
            .await
            .unwrap_err();
        assert_eq!(err.code, code::INCOMPATIBLE_VERSION);
        let err = w
            .run(Command::Status, "c1", "web", json!({"cniVersion": "1.0.0"}))
            .await
            .unwrap_err();
        assert_eq!(err.code, code::INCOMPATIBLE_VERSION);
    }

    #[tokio::test]
    async fn node_name_falls_back_to_the_state_file_then_the_hostname() {
        let w = World::new("nodename").await;
        let mut conf = w.loaded(Command::Add, json!({})).conf;
        conf.nodename = None;
        assert_eq!(
            node_name(&conf, "fallback-host\n").unwrap(),
            "fallback-host"
        );
        std::fs::write(w.state.path().join("nodename"), "from-agent\n").unwrap();
        assert_eq!(node_name(&conf, "fallback-host").unwrap(), "from-agent");
        std::fs::write(w.state.path().join("mtu"), "1410\n").unwrap();
        assert_eq!(mtu(&conf), 1410);
    }
}
