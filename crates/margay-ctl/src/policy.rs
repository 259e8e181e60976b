//! `margay policy matrix`: the reachability the policy engine computes, from the datastore or
//! from files, without touching any dataplane.

use margay_client::Client;
use margay_policy::{Cluster, Protocol, Report};

use crate::{decode_all, read_sources, CtlError, Result};

fn model_error(origin: &str, e: margay_policy::PolicyError) -> CtlError {
    CtlError::Input {
        origin: origin.to_owned(),
        message: e.to_string(),
    }
}

/// Everything the engine reads, as stored. A policy the engine cannot use is left out, as
/// the agent leaves it out (each one in the warnings), so the matrix is what the dataplanes
/// enforce.
pub async fn cluster_from_datastore(client: &Client) -> Result<(Cluster, Vec<String>)> {
    let mut resources = Vec::new();
    for kind in margay_policy::INPUT_KINDS {
        resources.extend(client.list_resources(kind, None).await?);
    }
    let (cluster, skipped) = Cluster::from_resources_skipping_bad_policies(resources)
        .map_err(|e| model_error(&client.datastore().describe(), e))?;
    Ok((cluster, left_out(&skipped)))
}

/// Namespaces, Pods (labels, named ports, `status.podIPs`) and policies of every kind, from
/// files as `kubectl get -o yaml` or `calicoctl get -o yaml` print them; the warnings include
/// each policy left out, as the agent would leave it out.
pub fn cluster_from_files(paths: &[String]) -> Result<(Cluster, Vec<String>)> {
    let docs = read_sources(paths)?;
    let (resources, mut warnings) = decode_all(&docs, "default")?;
    let (cluster, skipped) = Cluster::from_resources_skipping_bad_policies(resources)
        .map_err(|e| model_error(&paths.join(", "), e))?;
    warnings.extend(left_out(&skipped));
    Ok((cluster, warnings))
}

fn left_out(skipped: &[margay_policy::PolicyError]) -> Vec<String> {
    skipped
        .iter()
        .map(|e| format!("left out, as the agent leaves it out: {e}"))
        .collect()
}

/// One matrix per (port, protocol): the ones asked for, or else every named port the
/// endpoints declare (80/TCP when they declare none).
pub fn matrices(cluster: &Cluster, port: Option<u16>, protocol: Option<Protocol>) -> Report {
    let mut targets: Vec<(u16, Protocol)> = cluster
        .endpoints()
        .iter()
        .flat_map(|e| e.named_ports.iter().map(|p| (p.port, p.protocol)))
        .filter(|(p, pr)| port.is_none_or(|want| want == *p) && protocol.is_none_or(|w| w == *pr))
        .collect();
    targets.sort();
    targets.dedup();
    if targets.is_empty() {
        targets.push((port.unwrap_or(80), protocol.unwrap_or(Protocol::Tcp)));
    }
    Report {
        probes: targets
            .into_iter()
            .map(|(port, protocol)| margay_policy::matrix(cluster, port, protocol))
            .collect(),
    }
}

/// The tables, one per matrix, with a count line under each.
pub fn render(cluster: &Cluster, report: &Report) -> String {
    let ids: Vec<String> = cluster.endpoints().iter().map(|e| e.id.clone()).collect();
    let mut out = String::new();
    for m in &report.probes {
        out.push_str(&margay_policy::render_table(m, &ids));
        out.push_str(&format!(
            "\n{}/{}: {} allowed, {} denied\n\n",
            m.port,
            m.protocol,
            m.allowed.len(),
            m.denied.len()
        ));
    }
    out
}
