//! `margay node status`: the agent's `/status` JSON as a few readable lines.

use std::fmt::Write;

use serde_json::Value;

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".to_owned(),
        other => other.to_string(),
    }
}

/// The dataplane holding the program, and the one configured while a switch is pending.
fn dataplane(policy: &Value) -> String {
    let (active, configured) = (&policy["dataplane"], &policy["configuredDataplane"]);
    match (active.as_str(), configured.as_str()) {
        (Some(a), Some(c)) if a != c => {
            format!("{a} (configured: {c}; not switched yet, see the errors)")
        }
        (Some(a), _) => a.to_owned(),
        (None, Some(c)) => format!("{c} (nothing programmed yet)"),
        (None, None) => "-".to_owned(),
    }
}

pub fn render(status: &Value) -> String {
    let mut out = String::new();
    let mut line = |k: &str, v: String| {
        let _ = writeln!(out, "{k:<18}{v}");
    };
    line("Node", text(&status["node"]));
    line(
        "Address",
        format!("{} via {}", text(&status["ip"]), text(&status["uplink"])),
    );
    let vxlan = &status["vxlan"];
    line(
        "VXLAN",
        if vxlan.is_null() {
            "not in use".to_owned()
        } else {
            format!(
                "vxlan.margay vni {} port {} mtu {} address {}",
                text(&vxlan["vni"]),
                text(&vxlan["port"]),
                text(&vxlan["mtu"]),
                text(&vxlan["address"])
            )
        },
    );
    let ipip = &status["ipip"];
    line(
        "IPIP",
        if ipip.is_null() {
            "not in use".to_owned()
        } else {
            format!(
                "tunl0 mtu {} address {}",
                text(&ipip["mtu"]),
                text(&ipip["address"])
            )
        },
    );
    for pool in status["pools"].as_array().into_iter().flatten() {
        line(
            "Pool",
            format!(
                "{} {} vxlan {} ipip {} natOutgoing {}",
                text(&pool["name"]),
                text(&pool["cidr"]),
                text(&pool["vxlanMode"]),
                text(&pool["ipipMode"]),
                text(&pool["natOutgoing"])
            ),
        );
    }
    line("Pod MTU", text(&status["podMTU"]));
    line("Remote routes", text(&status["remoteRoutes"]));
    line("VXLAN peers", text(&status["vxlanPeers"]));
    line("Local blocks", text(&status["localBlocks"]));
    line("Local workloads", text(&status["localWorkloads"]));
    line(
        "Last sync",
        format!(
            "{} ({:.1} ms)",
            text(&status["lastSync"]),
            status["lastSyncSeconds"].as_f64().unwrap_or(0.0) * 1000.0
        ),
    );
    let policy = &status["policy"];
    line("Dataplane", dataplane(policy));
    line(
        "Policy",
        if policy["programmed"] == true {
            format!(
                "{} policies, {} profiles, {} endpoints, {} sets, {} rules",
                text(&policy["policies"]),
                text(&policy["profiles"]),
                text(&policy["endpoints"]),
                text(&policy["sets"]),
                text(&policy["rules"])
            )
        } else {
            "not programmed".to_owned()
        },
    );
    for (id, why) in policy["skippedEndpoints"].as_object().into_iter().flatten() {
        line("Not programmed", format!("{id}: {}", text(why)));
    }
    line("Ready", text(&status["ready"]));
    for e in status["errors"].as_array().into_iter().flatten() {
        line("Error", text(e));
    }
    for e in status["policyErrors"].as_array().into_iter().flatten() {
        line("Policy error", text(e));
    }
    for w in status["warnings"].as_array().into_iter().flatten() {
        line("Warning", text(w));
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn policy_counts_and_errors_are_shown() {
        let status = json!({
            "node": "n1", "ready": true,
            "policy": {"programmed": true, "policies": 3, "profiles": 2, "endpoints": 4,
                       "sets": 5, "rules": 21, "skippedEndpoints": {"x/c": "no interface"},
                       "dataplane": "iptables", "configuredDataplane": "iptables"},
            "policyErrors": ["GlobalNetworkPolicy missing.p: tier \"missing\" does not exist"],
        });
        let text = render(&status);
        for line in [
            "Dataplane         iptables\n",
            "Policy            3 policies, 2 profiles, 4 endpoints, 5 sets, 21 rules\n",
            "Not programmed    x/c: no interface\n",
            "Policy error      GlobalNetworkPolicy missing.p: tier \"missing\" does not exist\n",
        ] {
            assert!(text.contains(line), "{line:?} missing from:\n{text}");
        }
        let text = render(&json!({"node": "n1", "policy": {"programmed": false}}));
        assert!(
            text.contains("Policy            not programmed\n"),
            "{text}"
        );
        assert!(text.contains("Dataplane         -\n"), "{text}");
        let text = render(
            &json!({"policy": {"programmed": true, "dataplane": "nftables",
                                             "configuredDataplane": "iptables"}}),
        );
        assert!(
            text.contains(
                "Dataplane         nftables (configured: iptables; not switched yet, see the errors)\n"
            ),
            "{text}"
        );
        let text = render(&json!({"policy": {"programmed": false, "dataplane": null,
                                             "configuredDataplane": "iptables"}}));
        assert!(
            text.contains("Dataplane         iptables (nothing programmed yet)\n"),
            "{text}"
        );
    }
}
