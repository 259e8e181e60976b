//! `lab verify`: the real packets (`lab probe`) against the model (`policy matrix` on the lab's
//! datastore). Every pair where they differ is either a dataplane bug or a model bug.

use std::collections::BTreeSet;

use serde::Serialize;

use crate::probe::{Matrix, Protocol};
use crate::state::LabState;
use crate::{access, status, LabError};

/// A pair the probe and the model disagree on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Difference {
    pub port: u16,
    pub protocol: Protocol,
    pub from: String,
    pub to: String,
    /// What the packets did.
    pub probed: bool,
    /// What the policy engine says.
    pub expected: bool,
}

/// The pairs of `probed` and `model` (same port and protocol) that differ.
pub fn differences(probed: &Matrix, model: &Matrix) -> Vec<Difference> {
    let allowed =
        |m: &Matrix| -> BTreeSet<(String, String)> { m.allowed.iter().cloned().collect() };
    let (by_probe, by_model) = (allowed(probed), allowed(model));
    let pairs: BTreeSet<&(String, String)> = probed
        .allowed
        .iter()
        .chain(&probed.denied)
        .chain(&model.allowed)
        .chain(&model.denied)
        .collect();
    pairs
        .into_iter()
        .filter_map(|pair| {
            let (p, m) = (by_probe.contains(pair), by_model.contains(pair));
            (p != m).then(|| Difference {
                port: probed.port,
                protocol: probed.protocol,
                from: pair.0.clone(),
                to: pair.1.clone(),
                probed: p,
                expected: m,
            })
        })
        .collect()
}

/// Probes the lab and computes the model for the same ports; returns every difference.
pub fn verify(state: &LabState, targets: &[(u16, Protocol)]) -> Result<Vec<Difference>, LabError> {
    let probed = status::probe_lab(state, targets)?;
    // A policy the agents leave out is left out of the model too (they enforce the rest).
    let (cluster, _left_out) = access::with_client(state, |client| async move {
        margay_ctl::policy::cluster_from_datastore(&client)
            .await
            .map_err(|e| LabError::Datastore {
                url: String::new(),
                message: e.to_string(),
            })
    })?;
    Ok(probed
        .iter()
        .flat_map(|p| differences(p, &margay_policy::matrix(&cluster, p.port, p.protocol)))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(a: &str, b: &str) -> (String, String) {
        (a.into(), b.into())
    }

    #[test]
    fn only_disagreeing_pairs_are_reported() {
        let probed = Matrix {
            port: 80,
            protocol: Protocol::Tcp,
            allowed: vec![pair("x/a", "x/a"), pair("x/a", "x/b")],
            denied: vec![pair("x/b", "x/a")],
        };
        let model = Matrix {
            port: 80,
            protocol: Protocol::Tcp,
            allowed: vec![pair("x/a", "x/a"), pair("x/b", "x/a")],
            denied: vec![pair("x/a", "x/b")],
        };
        let diffs = differences(&probed, &model);
        assert_eq!(
            diffs,
            [
                Difference {
                    port: 80,
                    protocol: Protocol::Tcp,
                    from: "x/a".into(),
                    to: "x/b".into(),
                    probed: true,
                    expected: false
                },
                Difference {
                    port: 80,
                    protocol: Protocol::Tcp,
                    from: "x/b".into(),
                    to: "x/a".into(),
                    probed: false,
                    expected: true
                },
            ]
        );
        assert!(differences(&probed, &probed).is_empty());
    }
}
