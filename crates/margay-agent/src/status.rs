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
    line("Ready", text(&status["ready"]));
    for e in status["errors"].as_array().into_iter().flatten() {
        line("Error", text(e));
    }
    for w in status["warnings"].as_array().into_iter().flatten() {
        line("Warning", text(w));
    }
    out
}
