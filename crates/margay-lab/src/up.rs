//! `lab up` and `lab down`: build the network, start the datastore and the agents, wire the
//! pods through the CNI plugin, wait until every node routes to every pod; and remove all of
//! it. A failure part-way removes everything made so far.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use serde_json::{json, Value};

use crate::access::{self, ETCD_LOOPBACK, ETCD_PORT};
use crate::host::{last_line, read_log, Daemon, Host, Invocation, AGENT_HEALTH, AGENT_METRICS};
use crate::spec::{DatastoreKind, LabSpec, Mode};
use crate::state::{lab_dir, LabState, Phase, PodRuntime};
use crate::topology::{PodPlan, Topology};
use crate::LabError;

/// How long agents may take to become ready, and nodes to route to every pod.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(20);
/// How long the CNI plugin waits for the agent to program a new pod's policy.
const POLICY_SETUP_TIMEOUT: Duration = Duration::from_secs(10);

pub struct UpOptions<'a> {
    pub name: String,
    pub root: PathBuf,
    /// The `margay` binary the lab runs (agents, CNI plugin, pod servers).
    pub binary: PathBuf,
    pub spec: LabSpec,
    /// Called with one line per milestone.
    pub progress: &'a (dyn Fn(&str) + Sync),
}

/// A lab name is part of namespace names: a short DNS label.
pub fn check_name(name: &str) -> Result<(), LabError> {
    if name.len() <= 32 && margay_api::validate::is_dns_label(name) {
        Ok(())
    } else {
        Err(LabError::BadName(name.to_owned()))
    }
}

pub fn up<H: Host>(host: &H, opts: &UpOptions) -> Result<LabState, LabError> {
    check_name(&opts.name)?;
    let dir = lab_dir(&opts.root, &opts.name);
    if LabState::load(&dir)?.is_some() {
        return Err(LabError::AlreadyUp {
            name: opts.name.clone(),
            dir,
        });
    }
    match opts.spec.mode {
        Mode::Ipip if !host.ipip_supported() => {
            return Err(LabError::ModeUnavailable {
                mode: Mode::Ipip,
                reason: "this kernel cannot create IPIP tunnels (no ipip module); use --mode \
                         vxlan or crosssubnet"
                    .into(),
            })
        }
        _ => {}
    }
    // A directory without state is debris of a lab whose state was never written.
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(|e| LabError::io("removing", &dir, e))?;
    }
    let topology = Topology::plan(&opts.name, &opts.spec);
    let datastore_url = match opts.spec.datastore {
        DatastoreKind::Sqlite => format!("sqlite://{}", dir.join("margay.db").display()),
        DatastoreKind::Etcd => format!("etcd://{}:{ETCD_PORT}", topology.fabric_ip),
    };
    let mut state = LabState {
        name: opts.name.clone(),
        dir,
        phase: Phase::Creating,
        datastore: opts.spec.datastore,
        datastore_url,
        binary: opts.binary.clone(),
        topology,
        pods: Default::default(),
        created: SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    };
    // Recorded before anything exists, so `down` can always find what `up` was making.
    state.save()?;
    match build(host, &mut state, opts) {
        Ok(()) => {
            state.phase = Phase::Up;
            state.save()?;
            Ok(state)
        }
        Err(e) => {
            (opts.progress)(&format!("failed: {e}; removing what was made"));
            match down(host, &state) {
                Ok(_) => Err(LabError::RolledBack(Box::new(e))),
                Err(cleanup) => Err(LabError::CleanupFailed {
                    error: Box::new(e),
                    cleanup: Box::new(cleanup),
                }),
            }
        }
    }
}

fn build<H: Host>(host: &H, state: &mut LabState, opts: &UpOptions) -> Result<(), LabError> {
    let progress = opts.progress;
    let started = Instant::now();
    let t = &state.topology;
    for step in t.steps() {
        host.apply(&step)?;
    }
    progress(&format!(
        "network: fabric{}, {} nodes on {}, {} pod namespaces",
        if t.router_netns.is_some() {
            " and router"
        } else {
            ""
        },
        t.nodes.len(),
        t.subnets
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
            .join(" + "),
        t.pods.len()
    ));
    if state.datastore == DatastoreKind::Etcd {
        start_etcd(host, state)?;
        progress(&format!("datastore: etcd at {}", state.datastore_url));
    } else {
        progress(&format!("datastore: {}", state.datastore_url));
    }
    let documents = opts.spec.documents();
    let count = documents.len();
    access::with_client(state, |client| async move {
        let mut resources = Vec::with_capacity(documents.len());
        for doc in documents {
            // Checked by the spec already; a failure here is a bug worth its message.
            let decoded = margay_api::decode(doc).map_err(|e| LabError::Datastore {
                url: String::new(),
                message: e.to_string(),
            })?;
            resources.push(decoded.resource);
        }
        margay_client::apply(&client, resources, margay_client::ApplyMode::Apply)
            .await
            .map_err(|e| LabError::Datastore {
                url: String::new(),
                message: e.to_string(),
            })?;
        Ok(())
    })?;
    progress(&format!(
        "stored {count} documents (pools, namespaces, pods{})",
        if opts.spec.resources.is_empty() {
            ""
        } else {
            ", resources"
        }
    ));
    install_cni(state)?;
    start_agents(host, state, progress)?;
    wire_pods(host, state, progress)?;
    state.save()?;
    wait_for_routes(host, state)?;
    progress(&format!(
        "converged: every node routes to every pod ({:.1} s in all)",
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}

fn find_etcd() -> Option<PathBuf> {
    let fixed = Path::new("/usr/bin/etcd");
    if fixed.exists() {
        return Some(fixed.to_owned());
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("etcd"))
            .find(|p| p.exists())
    })
}

fn start_etcd<H: Host>(host: &H, state: &LabState) -> Result<(), LabError> {
    let binary = find_etcd().ok_or_else(|| LabError::Missing {
        what: "etcd".into(),
        hint: "run scripts/setup.sh (it installs etcd-server), or use --datastore sqlite".into(),
    })?;
    let peer = "http://127.0.0.1:2380";
    let fabric = state.topology.fabric_ip;
    host.spawn(&Daemon {
        netns: state.topology.fabric_netns.clone(),
        program: binary,
        args: vec![
            "--name=lab".into(),
            format!("--data-dir={}", state.dir.join("etcd").display()),
            format!("--listen-client-urls=http://{fabric}:{ETCD_PORT},http://{ETCD_LOOPBACK}"),
            format!("--advertise-client-urls=http://{fabric}:{ETCD_PORT}"),
            format!("--listen-peer-urls={peer}"),
            format!("--initial-advertise-peer-urls={peer}"),
            format!("--initial-cluster=lab={peer}"),
            "--listen-metrics-urls=http://127.0.0.1:2381".into(),
            // A lone member elects itself when its election timer fires: keep it short.
            "--heartbeat-interval=10".into(),
            "--election-timeout=100".into(),
            "--logger=zap".into(),
            "--log-level=warn".into(),
        ],
        log: state.dir.join("etcd.log"),
        ready_line: None,
    })?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match access::with_client(state, |client| async move {
            client
                .datastore()
                .revision()
                .await
                .map(drop)
                .map_err(|e| LabError::Datastore {
                    url: String::new(),
                    message: e.to_string(),
                })
        }) {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() > deadline => {
                return Err(LabError::Timeout {
                    what: "etcd answering".into(),
                    seconds: 20,
                    detail: format!(
                        "{e}; its log ends: {}",
                        last_line(&read_log(&state.dir.join("etcd.log")))
                    ),
                })
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// The plugin binaries (links to the lab's `margay`) and each node's network configuration.
fn install_cni(state: &LabState) -> Result<(), LabError> {
    let bin = state.cni_bin_dir();
    std::fs::create_dir_all(&bin).map_err(|e| LabError::io("creating", &bin, e))?;
    for name in [
        margay_cni::config::PLUGIN_TYPE,
        margay_cni::config::IPAM_TYPE,
    ] {
        let link = bin.join(name);
        std::os::unix::fs::symlink(&state.binary, &link)
            .map_err(|e| LabError::io("linking", &link, e))?;
    }
    for node in &state.topology.nodes {
        let conf_dir = state.node_dir(&node.name).join("net.d");
        std::fs::create_dir_all(&conf_dir).map_err(|e| LabError::io("creating", &conf_dir, e))?;
        let mut conflist = margay_cni::install::conflist(&margay_cni::install::InstallOptions {
            bin_dir: bin.clone(),
            conf_dir: conf_dir.clone(),
            source: state.binary.clone(),
            datastore: Some(state.datastore_url.clone()),
            mtu: None,
            nodename: Some(node.name.clone()),
            state_dir: Some(state.node_state_dir(&node.name)),
            log_file: Some(state.node_dir(&node.name).join("cni.log")),
        });
        // ADD returns once the node's agent has programmed the pod's policy, so a pod is
        // never probed before its rules exist (until then it sends and receives nothing).
        conflist["plugins"][0]["policy_setup_timeout_seconds"] =
            POLICY_SETUP_TIMEOUT.as_secs().into();
        let path = conf_dir.join("10-margay.conflist");
        let text = serde_json::to_string_pretty(&conflist).expect("JSON serializes");
        std::fs::write(&path, text).map_err(|e| LabError::io("writing", &path, e))?;
    }
    Ok(())
}

fn start_agents<H: Host>(
    host: &H,
    state: &LabState,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<(), LabError> {
    for node in &state.topology.nodes {
        let dir = state.node_dir(&node.name);
        std::fs::create_dir_all(&dir).map_err(|e| LabError::io("creating", &dir, e))?;
        let mut args = vec![
            "--datastore".into(),
            state.datastore_url.clone(),
            "node".into(),
            "run".into(),
            "--name".into(),
            node.name.clone(),
            "--ip".into(),
            node.ip.to_string(),
            "--state-dir".into(),
            state.node_state_dir(&node.name).display().to_string(),
            "--health-addr".into(),
            AGENT_HEALTH.into(),
            "--metrics-addr".into(),
            AGENT_METRICS.into(),
        ];
        if state.topology.mode == Mode::Bgp {
            // The speaker runs (BGPConfiguration default also asks for it).
            args.push("--bgp".into());
        }
        host.spawn(&Daemon {
            netns: node.netns.clone(),
            program: state.binary.clone(),
            args,
            log: dir.join("agent.log"),
            ready_line: None,
        })?;
    }
    let total = state.topology.nodes.len();
    let deadline = Instant::now() + READY_TIMEOUT;
    let mut waiting: Vec<_> = state.topology.nodes.iter().collect();
    while !waiting.is_empty() {
        waiting.retain(|node| {
            !host
                .agent_status(&node.netns)
                .is_ok_and(|s| s["ready"] == json!(true))
        });
        if waiting.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            let node = waiting[0];
            let log = read_log(&state.node_dir(&node.name).join("agent.log"));
            return Err(LabError::Timeout {
                what: format!("the agent on {} becoming ready", node.name),
                seconds: READY_TIMEOUT.as_secs(),
                detail: format!("its log ends: {}", last_line(&log)),
            });
        }
        std::thread::sleep(POLL);
    }
    progress(&format!("agents: {total}/{total} ready"));
    Ok(())
}

/// The network configuration a runtime hands the first plugin of the list.
fn plugin_config(state: &LabState, node: &str) -> Result<Vec<u8>, LabError> {
    let path = state.node_dir(node).join("net.d/10-margay.conflist");
    let text = std::fs::read_to_string(&path).map_err(|e| LabError::io("reading", &path, e))?;
    let list: Value = serde_json::from_str(&text).map_err(|e| LabError::Corrupt {
        path: path.clone(),
        message: e.to_string(),
    })?;
    let mut conf = list["plugins"][0].clone();
    conf["name"] = list["name"].clone();
    conf["cniVersion"] = list["cniVersion"].clone();
    Ok(serde_json::to_vec(&conf).expect("JSON serializes"))
}

fn cni_invocation(state: &LabState, pod: &PodPlan, command: &str) -> Result<Invocation, LabError> {
    let node = state
        .topology
        .node(&pod.spec.node)
        .expect("pods are on known nodes (checked by the spec)");
    let bin = state.cni_bin_dir();
    Ok(Invocation {
        netns: node.netns.clone(),
        program: bin.join(margay_cni::config::PLUGIN_TYPE),
        args: Vec::new(),
        env: vec![
            ("CNI_COMMAND".into(), command.into()),
            ("CNI_CONTAINERID".into(), pod.container_id.clone()),
            (
                "CNI_NETNS".into(),
                LabState::netns_path(&pod.netns).display().to_string(),
            ),
            ("CNI_IFNAME".into(), "eth0".into()),
            ("CNI_PATH".into(), bin.display().to_string()),
            (
                "CNI_ARGS".into(),
                format!(
                    "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};\
                     K8S_POD_INFRA_CONTAINER_ID={}",
                    pod.spec.namespace, pod.spec.name, pod.container_id
                ),
            ),
        ],
        stdin: plugin_config(state, &pod.spec.node)?,
    })
}

/// CNI ADD as a runtime runs it; returns the pod's first address.
fn cni_add<H: Host>(host: &H, state: &LabState, pod: &PodPlan) -> Result<IpAddr, LabError> {
    let id = pod.spec.id();
    let fail = |message: String| LabError::Pod {
        id: id.clone(),
        message,
    };
    let done = host.run(&cni_invocation(state, pod, "ADD")?)?;
    let reply: Value = serde_json::from_slice(&done.stdout).unwrap_or(Value::Null);
    if done.code != Some(0) {
        return Err(fail(format!(
            "CNI ADD failed (code {}): {}",
            reply["code"],
            reply["msg"]
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| String::from_utf8_lossy(&done.stderr).trim().to_owned())
        )));
    }
    let address = reply["ips"][0]["address"]
        .as_str()
        .and_then(|a| a.split('/').next())
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| fail(format!("CNI ADD returned no address: {reply}")))?;
    Ok(address)
}

fn serve_args(pod: &PodPlan) -> Vec<String> {
    let mut args = vec!["lab".into(), "serve".into(), "--name".into(), pod.spec.id()];
    for (flag, protocol) in [
        ("--tcp", crate::probe::Protocol::Tcp),
        ("--udp", crate::probe::Protocol::Udp),
    ] {
        let ports: Vec<String> = pod
            .spec
            .ports
            .iter()
            .filter(|p| p.protocol == protocol)
            .map(|p| p.port.to_string())
            .collect();
        if !ports.is_empty() {
            args.push(flag.into());
            args.push(ports.join(","));
        }
    }
    args
}

/// Pods of different nodes are wired in parallel; on one node one after the other, as a
/// kubelet's runtime mostly does.
fn wire_pods<H: Host>(
    host: &H,
    state: &mut LabState,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<(), LabError> {
    let total = state.topology.pods.len();
    let wired = AtomicUsize::new(0);
    let results = Mutex::new(Vec::new());
    let pods_dir = state.dir.join("pods");
    std::fs::create_dir_all(&pods_dir).map_err(|e| LabError::io("creating", &pods_dir, e))?;
    let frozen: &LabState = state;
    std::thread::scope(|scope| {
        for node in &frozen.topology.nodes {
            let (wired, results) = (&wired, &results);
            scope.spawn(move || {
                for pod in frozen
                    .topology
                    .pods
                    .iter()
                    .filter(|p| p.spec.node == node.name)
                {
                    let outcome = cni_add(host, frozen, pod).and_then(|ip| {
                        host.spawn(&Daemon {
                            netns: pod.netns.clone(),
                            program: frozen.binary.clone(),
                            args: serve_args(pod),
                            log: frozen.pod_log(&pod.spec.id()),
                            ready_line: Some("ready".into()),
                        })?;
                        Ok(ip)
                    });
                    let failed = outcome.is_err();
                    results
                        .lock()
                        .expect("no panics while held")
                        .push((pod.spec.id(), outcome));
                    if failed {
                        return;
                    }
                    let n = wired.fetch_add(1, Ordering::SeqCst) + 1;
                    if n == total || n % 10 == 0 {
                        progress(&format!("pods: {n}/{total} wired"));
                    }
                }
            });
        }
    });
    for (id, outcome) in results.into_inner().expect("threads are done") {
        let ip = outcome?;
        state.pods.insert(id, PodRuntime { ip });
    }
    Ok(())
}

/// Until every node has a route covering every pod of the other nodes (the agents have seen
/// every block) and its agent counts every local pod (it has seen every endpoint), so that a
/// probe right after `up` measures policy, not convergence.
fn wait_for_routes<H: Host>(host: &H, state: &LabState) -> Result<(), LabError> {
    let deadline = Instant::now() + READY_TIMEOUT;
    for node in &state.topology.nodes {
        let remote: Vec<(String, std::net::Ipv4Addr)> = state
            .topology
            .pods
            .iter()
            .filter(|p| p.spec.node != node.name)
            .filter_map(|p| match state.pods.get(&p.spec.id()).map(|r| r.ip) {
                Some(IpAddr::V4(ip)) => Some((p.spec.id(), ip)),
                _ => None,
            })
            .collect();
        let local = state
            .topology
            .pods
            .iter()
            .filter(|p| p.spec.node == node.name)
            .count() as u64;
        loop {
            let counted = host
                .agent_status(&node.netns)
                .ok()
                .and_then(|s| s["localWorkloads"].as_u64())
                .unwrap_or(0);
            let routes = host.routes(&node.netns)?;
            // The default route covers everything; only more specific routes count.
            let missing = remote
                .iter()
                .find(|(_, ip)| !routes.iter().any(|r| r.prefix_len() > 0 && r.contains(ip)));
            if missing.is_none() && counted >= local {
                break;
            }
            if Instant::now() > deadline {
                let what = match missing {
                    Some((id, ip)) => format!("node {} routing to pod {id} ({ip})", node.name),
                    None => format!(
                        "the agent on {} seeing its {local} pods (it counts {counted})",
                        node.name
                    ),
                };
                return Err(LabError::Timeout {
                    what,
                    seconds: READY_TIMEOUT.as_secs(),
                    detail: format!(
                        "see {}",
                        state.node_dir(&node.name).join("agent.log").display()
                    ),
                });
            }
            std::thread::sleep(POLL);
        }
    }
    Ok(())
}

/// What `down` removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Removed {
    pub namespaces: usize,
    pub processes: usize,
}

/// Removes every namespace of the lab (killing what runs inside) and its directory.
/// Namespaces already gone are skipped, so this is safe to repeat and after a crash.
pub fn down<H: Host>(host: &H, state: &LabState) -> Result<Removed, LabError> {
    let mut removed = Removed::default();
    let mut first_error = None;
    for name in state.topology.namespaces() {
        match host.remove_netns(&name) {
            Ok(Some(processes)) => {
                removed.namespaces += 1;
                removed.processes += processes;
            }
            Ok(None) => {}
            // Keep going: leave as little behind as possible, then report.
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    if let Some(e) = first_error {
        return Err(e.into());
    }
    if state.dir.exists() {
        std::fs::remove_dir_all(&state.dir).map_err(|e| LabError::io("removing", &state.dir, e))?;
    }
    Ok(removed)
}

/// `lab down --name NAME`: `None` when there is no such lab (nothing to do).
pub fn down_by_name<H: Host>(
    host: &H,
    root: &Path,
    name: &str,
) -> Result<Option<Removed>, LabError> {
    check_name(name)?;
    match LabState::load(&lab_dir(root, name))? {
        Some(state) => down(host, &state).map(Some),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::sync::Mutex;

    use ipnet::Ipv4Net;

    use super::*;
    use crate::host::{Finished, HostError};
    use crate::spec::{default_spec, Overrides};
    use crate::topology::Step;

    /// Records what the lab asks of the machine; fails where told to.
    #[derive(Default)]
    struct FakeHost {
        namespaces: Mutex<BTreeSet<String>>,
        spawned: Mutex<Vec<String>>,
        cni_calls: Mutex<Vec<String>>,
        /// Fail the CNI ADD of this container.
        fail_cni: Option<String>,
        /// Fail this step.
        fail_step: Option<String>,
        ipip: bool,
    }

    impl Host for FakeHost {
        fn apply(&self, step: &Step) -> Result<(), HostError> {
            if self.fail_step.as_deref() == Some(&step.to_string()) {
                return Err(HostError::new(step.to_string(), "injected failure"));
            }
            if let Step::Netns { name } = step {
                assert!(self.namespaces.lock().unwrap().insert(name.clone()));
            }
            Ok(())
        }
        fn remove_netns(&self, name: &str) -> Result<Option<usize>, HostError> {
            Ok(self.namespaces.lock().unwrap().remove(name).then_some(1))
        }
        fn processes(&self, _: &str) -> Result<usize, HostError> {
            Ok(1)
        }
        fn spawn(&self, daemon: &Daemon) -> Result<u32, HostError> {
            assert!(self.namespaces.lock().unwrap().contains(&daemon.netns));
            self.spawned.lock().unwrap().push(format!(
                "{} {}",
                daemon.netns,
                daemon.args[..4].join(" ")
            ));
            Ok(1)
        }
        fn run(&self, inv: &Invocation) -> Result<Finished, HostError> {
            let env = |k: &str| {
                inv.env
                    .iter()
                    .find(|(key, _)| key == k)
                    .map(|(_, v)| v.clone())
                    .unwrap()
            };
            let cid = env("CNI_CONTAINERID");
            let mut calls = self.cni_calls.lock().unwrap();
            calls.push(format!("{} {} {cid}", inv.netns, env("CNI_COMMAND")));
            if self.fail_cni.as_deref() == Some(&cid) {
                return Ok(Finished {
                    code: Some(100),
                    stdout: br#"{"code":100,"msg":"pool exhausted"}"#.to_vec(),
                    stderr: Vec::new(),
                });
            }
            let conf: Value = serde_json::from_slice(&inv.stdin).unwrap();
            assert_eq!(conf["type"], "margay");
            assert_eq!(conf["name"], "k8s-pod-network");
            let ip = format!("10.244.0.{}/32", calls.len());
            Ok(Finished {
                code: Some(0),
                stdout: serde_json::to_vec(&json!({"ips": [{"address": ip}]})).unwrap(),
                stderr: Vec::new(),
            })
        }
        fn exec(&self, _: &str, _: &[String]) -> Result<i32, HostError> {
            Ok(0)
        }
        fn agent_status(&self, _: &str) -> Result<Value, HostError> {
            Ok(json!({"ready": true, "localWorkloads": 2}))
        }
        fn routes(&self, _: &str) -> Result<Vec<Ipv4Net>, HostError> {
            Ok(vec!["10.244.0.0/24".parse().unwrap()])
        }
        fn ipip_supported(&self) -> bool {
            self.ipip
        }
    }

    fn options<'a>(
        root: &Path,
        spec: LabSpec,
        progress: &'a (dyn Fn(&str) + Sync),
    ) -> UpOptions<'a> {
        UpOptions {
            name: "fake".into(),
            root: root.to_owned(),
            binary: "/usr/bin/margay".into(),
            spec,
            progress,
        }
    }

    #[test]
    fn up_builds_everything_then_down_removes_it() {
        let root = tempfile::tempdir().unwrap();
        let host = FakeHost::default();
        let spec = default_spec(2, 2, &Overrides::default()).unwrap();
        let lines = Mutex::new(Vec::new());
        let progress = |l: &str| lines.lock().unwrap().push(l.to_owned());
        let state = up(&host, &options(root.path(), spec.clone(), &progress)).unwrap();
        assert_eq!(state.phase, Phase::Up);
        assert_eq!(host.namespaces.lock().unwrap().len(), 2 + 4 + 1);
        // Agents first, then each pod's server right after its CNI ADD, in its own namespace.
        let spawned = host.spawned.lock().unwrap().clone();
        assert_eq!(
            spawned[0],
            format!(
                "fake-node-node-1 --datastore {} node run",
                state.datastore_url
            )
        );
        assert!(spawned
            .contains(&"fake-pod-default.pod-2-2 lab serve --name default/pod-2-2".to_owned()));
        let calls = host.cni_calls.lock().unwrap().clone();
        assert!(calls.contains(&"fake-node-node-2 ADD lab-7-default-pod-2-1".to_owned()));
        assert_eq!(state.pods.len(), 4);
        // Every node got its own CNI configuration pointing at its state directory.
        let conf =
            std::fs::read_to_string(state.node_dir("node-2").join("net.d/10-margay.conflist"))
                .unwrap();
        assert!(conf.contains("\"nodename\": \"node-2\""), "{conf}");
        assert!(
            conf.contains("\"policy_setup_timeout_seconds\": 10"),
            "{conf}"
        );
        assert!(lines.lock().unwrap().iter().any(|l| l == "pods: 4/4 wired"));
        // The datastore holds the spec's documents.
        let pods = crate::access::with_client(&state, |client| async move {
            Ok(client.list::<margay_api::Pod>(None).await.unwrap().0.len())
        })
        .unwrap();
        assert_eq!(pods, 4);
        // Up twice is refused; down removes all, and again finds nothing to do.
        let again = up(&host, &options(root.path(), spec, &progress)).unwrap_err();
        assert!(
            again.to_string().contains("lab fake is already up"),
            "{again}"
        );
        let removed = down_by_name(&host, root.path(), "fake").unwrap().unwrap();
        assert_eq!(removed.namespaces, 7);
        assert!(host.namespaces.lock().unwrap().is_empty());
        assert!(!state.dir.exists());
        assert_eq!(down_by_name(&host, root.path(), "fake").unwrap(), None);
    }

    #[test]
    fn a_failure_part_way_removes_everything_made() {
        let spec = default_spec(2, 2, &Overrides::default()).unwrap();
        let failing = [
            FakeHost {
                fail_cni: Some("lab-7-default-pod-2-1".into()),
                ..FakeHost::default()
            },
            FakeHost {
                fail_step: Some("ip -n fake-node-node-2 route add default via 172.30.0.1".into()),
                ..FakeHost::default()
            },
        ];
        for host in failing {
            let root = tempfile::tempdir().unwrap();
            let err = up(&host, &options(root.path(), spec.clone(), &|_| {})).unwrap_err();
            let text = err.to_string();
            assert!(
                text.ends_with("(everything `lab up` had made was removed)"),
                "{text}"
            );
            assert!(
                text.contains("pod default/pod-2-1: CNI ADD failed (code 100): pool exhausted")
                    || text.contains("route add default via 172.30.0.1: injected failure"),
                "{text}"
            );
            assert!(host.namespaces.lock().unwrap().is_empty());
            assert!(!root.path().join("fake").exists());
        }
    }

    #[test]
    fn unavailable_modes_are_refused_before_anything_is_made() {
        let root = tempfile::tempdir().unwrap();
        let host = FakeHost::default();
        let spec = default_spec(
            1,
            1,
            &Overrides {
                mode: Some(Mode::Ipip),
                ..Overrides::default()
            },
        )
        .unwrap();
        let err = up(&host, &options(root.path(), spec, &|_| {}))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("--mode ipip: this kernel cannot create IPIP tunnels"),
            "{err}"
        );
        assert!(host.namespaces.lock().unwrap().is_empty());
        assert!(!root.path().join("fake").exists());
        let err = up(
            &host,
            &UpOptions {
                name: "Bad_Name".into(),
                ..options(
                    root.path(),
                    default_spec(1, 1, &Overrides::default()).unwrap(),
                    &|_| {},
                )
            },
        )
        .unwrap_err();
        assert!(err
            .to_string()
            .contains("lab name \"Bad_Name\" is not valid"));
    }
}
