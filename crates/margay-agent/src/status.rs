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
            let hosts = match policy["hostEndpoints"].as_u64() {
                Some(n) if n > 0 => format!(", {n} host endpoints"),
                _ => String::new(),
            };
            format!(
                "{} policies, {} profiles, {} endpoints{hosts}, {} sets, {} rules",
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
    render_bgp(&mut out, &status["bgp"]);
    out
}

/// `SINCE`: the time of day of an RFC 3339 timestamp (as BIRD and calicoctl show it).
fn since(v: &Value) -> String {
    match v.as_str() {
        Some(t) if t.len() >= 19 => t[11..19].to_owned(),
        _ => "-".to_owned(),
    }
}

/// A table as `calicoctl node status` draws it: centred headers, cells left-aligned.
fn table(out: &mut String, headers: &[&str], rows: &[Vec<String>]) {
    let widths: Vec<usize> = headers
        .iter()
        .enumerate()
        .map(|(i, h)| {
            rows.iter()
                .map(|r| r[i].chars().count())
                .chain([h.len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let rule: String = widths
        .iter()
        .map(|w| format!("+{}", "-".repeat(w + 2)))
        .collect::<String>()
        + "+\n";
    out.push_str(&rule);
    for (h, w) in headers.iter().zip(&widths) {
        let _ = write!(out, "| {h:^w$} ");
    }
    out.push_str("|\n");
    out.push_str(&rule);
    for row in rows {
        for (cell, w) in row.iter().zip(&widths) {
            let _ = write!(out, "| {cell:<w$} ");
        }
        out.push_str("|\n");
    }
    out.push_str(&rule);
}

/// The BGP speaker: its identity, then one row per peer as `calicoctl node status` has them,
/// with the prefixes received (this session), accepted (in the RIB) and advertised.
fn render_bgp(out: &mut String, bgp: &Value) {
    if bgp.is_null() {
        return;
    }
    if bgp["enabled"] != true {
        let _ = writeln!(out, "{:<18}not enabled", "BGP");
        return;
    }
    let _ = writeln!(
        out,
        "{:<18}AS {}, router id {}, listening on {}{}",
        "BGP",
        text(&bgp["asNumber"]),
        text(&bgp["routerId"]),
        text(&bgp["listen"]),
        match bgp["clusterId"].as_str() {
            Some(id) => format!(", route reflector (cluster id {id})"),
            None => String::new(),
        }
    );
    let originated: Vec<String> = bgp["originated"]
        .as_array()
        .into_iter()
        .flatten()
        .map(text)
        .collect();
    let _ = writeln!(
        out,
        "{:<18}{}",
        "BGP advertises",
        if originated.is_empty() {
            "-".to_owned()
        } else {
            originated.join(", ")
        }
    );
    let _ = writeln!(out, "{:<18}{}", "BGP routes", text(&bgp["routes"]));
    for w in bgp["warnings"].as_array().into_iter().flatten() {
        let _ = writeln!(out, "{:<18}{}", "BGP warning", text(w));
    }
    let mut rows = Vec::new();
    for p in bgp["peers"].as_array().into_iter().flatten() {
        let established = p["state"] == "Established";
        let info = match (established, p["lastError"].as_str()) {
            (false, Some(e)) => format!("{} ({e})", text(&p["state"])),
            _ => text(&p["state"]),
        };
        rows.push(vec![
            text(&p["address"]),
            text(&p["type"]),
            if established { "up" } else { "start" }.to_owned(),
            since(&p["since"]),
            info,
            format!(
                "{}/{}/{}",
                text(&p["prefixesReceived"]),
                text(&p["prefixesAccepted"]),
                text(&p["prefixesAdvertised"])
            ),
        ]);
    }
    out.push_str("\nIPv4 BGP status\n");
    if rows.is_empty() {
        out.push_str("No IPv4 peers found.\n");
        return;
    }
    table(
        out,
        &[
            "PEER ADDRESS",
            "PEER TYPE",
            "STATE",
            "SINCE",
            "INFO",
            "PREFIXES RCVD/ACC/ADV",
        ],
        &rows,
    );
}

/// `margay node status -o yaml`: the same document as `-o json`.
pub fn render_yaml(status: &Value) -> String {
    margay_api::document::to_yaml(std::slice::from_ref(status))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn bgp_status() -> Value {
        json!({
            "node": "node-1", "ip": "172.30.0.11/24", "uplink": "eth0", "ready": true,
            "policy": {"programmed": false},
            "bgp": {
                "enabled": true, "asNumber": 64512, "routerId": "172.30.0.11",
                "listen": "0.0.0.0:179", "clusterId": "244.0.0.1",
                "originated": ["10.244.0.0/26", "10.244.9.3/32"], "routes": 1,
                "warnings": ["BGPPeer tor: spec.filters is not supported by Margay's speaker; ignored"],
                "peers": [
                    {"address": "172.30.0.12", "type": "rr client", "state": "Established",
                     "since": "2026-04-20T14:02:03Z", "prefixesReceived": 1,
                     "prefixesAccepted": 1, "prefixesAdvertised": 3, "lastError": null},
                    {"address": "172.30.0.13", "type": "node-to-node mesh", "state": "Active",
                     "since": null, "prefixesReceived": 0, "prefixesAccepted": 0,
                     "prefixesAdvertised": 0, "lastError": "connecting: Connection refused"}
                ]
            }
        })
    }

    fn check_golden(name: &str, rendered: &str) {
        let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/golden")
            .join(name);
        if std::env::var_os("MARGAY_UPDATE_GOLDEN").is_some() {
            std::fs::write(&path, rendered).unwrap();
        }
        let golden = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!("{}: {e} (MARGAY_UPDATE_GOLDEN=1 writes it)", path.display())
        });
        assert_eq!(rendered, golden, "differs from {}", path.display());
    }

    #[test]
    fn bgp_peers_as_calicoctl_shows_them() {
        check_golden("node-status-bgp.txt", &render(&bgp_status()));
        check_golden("node-status-bgp.yaml", &render_yaml(&bgp_status()));
        let text = render(&json!({"node": "n1", "bgp": {"enabled": false}}));
        assert!(text.ends_with("BGP               not enabled\n"), "{text}");
        let text = render(&json!({"node": "n1", "bgp": {"enabled": true, "peers": []}}));
        assert!(
            text.ends_with("IPv4 BGP status\nNo IPv4 peers found.\n"),
            "{text}"
        );
        // An agent without BGP support says nothing about it.
        assert!(!render(&json!({"node": "n1"})).contains("BGP"));
    }

    #[test]
    fn policy_counts_and_errors_are_shown() {
        let status = json!({
            "node": "n1", "ready": true,
            "policy": {"programmed": true, "policies": 3, "profiles": 2, "endpoints": 4,
                       "sets": 5, "rules": 21, "skippedEndpoints": {"x/c": "no interface",
                       "HostEndpoint eth1-b": "interface eth1 already belongs to HostEndpoint eth1-a"},
                       "dataplane": "iptables", "configuredDataplane": "iptables"},
            "policyErrors": ["GlobalNetworkPolicy missing.p: tier \"missing\" does not exist"],
        });
        let text = render(&status);
        for line in [
            "Dataplane         iptables\n",
            "Policy            3 policies, 2 profiles, 4 endpoints, 5 sets, 21 rules\n",
            "Not programmed    HostEndpoint eth1-b: interface eth1 already belongs to HostEndpoint eth1-a\n",
            "Not programmed    x/c: no interface\n",
            "Policy error      GlobalNetworkPolicy missing.p: tier \"missing\" does not exist\n",
        ] {
            assert!(text.contains(line), "{line:?} missing from:\n{text}");
        }
        let hosts = json!({"policy": {"programmed": true, "policies": 1, "profiles": 0,
            "endpoints": 0, "hostEndpoints": 2, "sets": 1, "rules": 3}});
        assert!(render(&hosts).contains(
            "Policy            1 policies, 0 profiles, 0 endpoints, 2 host endpoints, 1 sets, 3 rules\n"
        ));
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
