//! `lab status` and what `lab probe` and `lab exec` need from a lab's state.

use std::collections::BTreeSet;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

use crate::host::Host;
use crate::probe::{self, Endpoint, Matrix, Protocol};
use crate::state::LabState;
use crate::topology::PodPlan;
use crate::LabError;

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeStatus {
    pub name: String,
    pub ip: String,
    pub netns: String,
    /// `ready`, `not ready: …` or `not running`.
    pub agent: String,
    pub remote_routes: Option<u64>,
    pub local_workloads: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PodStatus {
    pub pod: String,
    pub node: String,
    pub ip: Option<String>,
    pub netns: String,
    pub ports: String,
    /// Whether its server is still running.
    pub serving: bool,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LabStatus {
    pub name: String,
    pub mode: String,
    pub datastore: String,
    pub phase: String,
    pub nodes: Vec<NodeStatus>,
    pub pods: Vec<PodStatus>,
}

fn agent_state(status: Result<Value, crate::HostError>) -> (String, Option<u64>, Option<u64>) {
    match status {
        Ok(s) if s["ready"] == Value::Bool(true) => (
            "ready".into(),
            // The agent's own routes to other nodes, and those BGP learned.
            s["remoteRoutes"]
                .as_u64()
                .map(|r| r + s["bgp"]["routes"].as_u64().unwrap_or(0)),
            s["localWorkloads"].as_u64(),
        ),
        Ok(s) => (
            format!(
                "not ready: {}",
                s["notReady"].as_str().unwrap_or("starting")
            ),
            None,
            None,
        ),
        Err(_) => ("not running".into(), None, None),
    }
}

fn ports(pod: &PodPlan) -> String {
    pod.spec
        .ports
        .iter()
        .map(|p| format!("{}/{}", p.port, p.protocol))
        .collect::<Vec<_>>()
        .join(",")
}

pub fn collect<H: Host>(host: &H, state: &LabState) -> LabStatus {
    let nodes = state
        .topology
        .nodes
        .iter()
        .map(|n| {
            let (agent, remote_routes, local_workloads) = agent_state(host.agent_status(&n.netns));
            NodeStatus {
                name: n.name.clone(),
                ip: n.ip.addr().to_string(),
                netns: n.netns.clone(),
                agent,
                remote_routes,
                local_workloads,
            }
        })
        .collect();
    let pods = state
        .topology
        .pods
        .iter()
        .map(|p| PodStatus {
            pod: p.spec.id(),
            node: p.spec.node.clone(),
            ip: state.pods.get(&p.spec.id()).map(|r| r.ip.to_string()),
            netns: p.netns.clone(),
            ports: ports(p),
            serving: host.processes(&p.netns).is_ok_and(|n| n > 0),
        })
        .collect();
    LabStatus {
        name: state.name.clone(),
        mode: state.topology.mode.to_string(),
        datastore: state.datastore_url.clone(),
        phase: format!("{:?}", state.phase).to_lowercase(),
        nodes,
        pods,
    }
}

pub fn render(status: &LabStatus) -> String {
    let mut out = format!(
        "Lab {} ({}, {}): {}\n\n",
        status.name, status.mode, status.datastore, status.phase
    );
    let rows: Vec<Vec<String>> = status
        .nodes
        .iter()
        .map(|n| {
            let count = |v: Option<u64>| v.map_or("-".into(), |v| v.to_string());
            vec![
                n.name.clone(),
                n.ip.clone(),
                n.agent.clone(),
                count(n.local_workloads),
                count(n.remote_routes),
                n.netns.clone(),
            ]
        })
        .collect();
    out.push_str(&margay_ctl::output::render_table(
        &["NODE", "IP", "AGENT", "PODS", "REMOTE ROUTES", "NETNS"],
        &rows,
    ));
    out.push('\n');
    let rows: Vec<Vec<String>> = status
        .pods
        .iter()
        .map(|p| {
            vec![
                p.pod.clone(),
                p.node.clone(),
                p.ip.clone().unwrap_or_else(|| "-".into()),
                p.ports.clone(),
                if p.serving { "serving" } else { "stopped" }.into(),
            ]
        })
        .collect();
    out.push_str(&margay_ctl::output::render_table(
        &["POD", "NODE", "IP", "PORTS", "SERVER"],
        &rows,
    ));
    out
}

/// The pod `ns/name` (or `name` in namespace `default`).
pub fn find_pod<'a>(state: &'a LabState, id: &str) -> Result<&'a PodPlan, LabError> {
    let id = if id.contains('/') {
        id.to_owned()
    } else {
        format!("default/{id}")
    };
    state.topology.pod(&id).ok_or_else(|| LabError::UnknownPod {
        known: state
            .topology
            .pods
            .iter()
            .map(|p| p.spec.id())
            .collect::<Vec<_>>()
            .join(", "),
        id,
        lab: state.name.clone(),
    })
}

/// Every (port, protocol) some pod serves, in order.
pub fn served_ports(state: &LabState) -> Vec<(u16, Protocol)> {
    let set: BTreeSet<(u16, Protocol)> = state
        .topology
        .pods
        .iter()
        .flat_map(|p| p.spec.ports.iter().map(|port| (port.port, port.protocol)))
        .collect();
    set.into_iter().collect()
}

/// The wired pods as probe endpoints.
pub fn endpoints(state: &LabState) -> Vec<Endpoint> {
    state
        .topology
        .pods
        .iter()
        .filter_map(|p| {
            state.pods.get(&p.spec.id()).map(|r| Endpoint {
                id: p.spec.id(),
                netns: LabState::netns_path(&p.netns),
                ip: r.ip,
            })
        })
        .collect()
}

/// The bound on each try of `lab probe`.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Probes every pod from every pod on each of `targets` (all served ports when empty).
pub fn probe_lab(state: &LabState, targets: &[(u16, Protocol)]) -> Result<Vec<Matrix>, LabError> {
    let targets = if targets.is_empty() {
        served_ports(state)
    } else {
        targets.to_vec()
    };
    let endpoints = endpoints(state);
    // One socket per pair at once: 900 for 30 pods, near the usual soft limit.
    margay_sys::process::raise_open_files_limit()
        .map_err(|e| LabError::Host(crate::HostError::new("preparing the probe", e)))?;
    targets
        .iter()
        .map(|(port, protocol)| {
            probe::probe(&endpoints, *port, *protocol, PROBE_TIMEOUT).map_err(LabError::from)
        })
        .collect()
}
