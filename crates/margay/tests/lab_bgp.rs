//! `margay lab --mode bgp` end to end, as a user runs it: pools `Never`/`Never`, no VXLAN
//! device, every route to a remote block learned over BGP (protocol 78) — with the full mesh
//! and with a route reflector — `margay node status` inside a node showing its peers
//! Established, and a node whose agent is killed routed around by the others. Everything
//! is taken down even when a test fails.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;

#[path = "support/host.rs"]
mod host;

use host::run;

#[path = "support/lab.rs"]
mod lab_support;

use lab_support::{skip_unless_root, Lab, BIN};

/// Margay's BGP routes' `rtm_protocol` (`Route::PROTO_MARGAY_BGP`).
const PROTO_BGP: &str = "proto 78";

/// `cmd` run inside the network namespace `netns`.
fn in_netns(netns: &str, program: &str, args: &[&str]) -> Output {
    run(Command::new("ip")
        .args(["netns", "exec", netns, program])
        .args(args))
}

fn routes(netns: &str) -> String {
    host::ok(Command::new("ip").args(["-n", netns, "route"]))
}

/// `margay node status -o json` inside `netns` (the agent's health address is there).
fn node_status(netns: &str) -> Value {
    let out = in_netns(netns, BIN, &["node", "status", "-o", "json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Every matrix of `lab probe -o json` allows all `pods`² pairs and denies none.
fn assert_fully_connected(probes: &Value, pods: usize) {
    let probes = probes["probes"].as_array().unwrap();
    assert!(!probes.is_empty());
    for m in probes {
        let denied = m["denied"].as_array().unwrap();
        assert!(
            denied.is_empty(),
            "{}/{} denied {denied:?}",
            m["port"],
            m["protocol"]
        );
        assert_eq!(m["allowed"].as_array().unwrap().len(), pods * pods);
    }
}

/// The blocks each pod's address is in, by pod, from `lab status`.
fn pod_ips(lab: &Lab) -> Vec<(String, String)> {
    let status = lab.json("status", &["-o", "json"]);
    status["pods"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["node"].as_str().unwrap().to_owned(),
                p["ip"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// The route in `netns` covering `ip` (`ip route get`), as `ip` prints it.
fn route_to(netns: &str, ip: &str) -> String {
    host::ok(Command::new("ip").args(["-n", netns, "route", "get", ip]))
}

/// A 3-node BGP lab (2 pods a node), fully connected, with no overlay anywhere and every
/// remote block routed by BGP; every node's peers Established in `margay node status`.
/// Returns the lab for more checks.
fn up_bgp(route_reflectors: usize) -> Lab {
    let lab = Lab::new("bgp");
    let rr = route_reflectors.to_string();
    let mut args = vec!["--mode", "bgp", "--nodes", "3", "--pods-per-node", "2"];
    if route_reflectors > 0 {
        args.extend(["--route-reflectors", &rr]);
    }
    let out = lab.ok("up", &args);
    assert!(out.contains("margay lab down"), "{out}");
    assert_fully_connected(&lab.json("probe", &["-o", "json"]), 6);
    let nodes = lab.node_namespaces();
    assert_eq!(nodes.len(), 3);
    let pods = pod_ips(&lab);
    for (i, netns) in nodes.iter().enumerate() {
        let links = host::ok(Command::new("ip").args(["-n", netns, "link"]));
        assert!(!links.contains("vxlan.margay"), "{netns}: {links}");
        assert!(!links.contains("tunl0"), "{netns}: {links}");
        let table = routes(netns);
        let me = format!("node-{}", i + 1);
        for (node, ip) in pods.iter().filter(|(node, _)| *node != me) {
            let route = route_to(netns, ip);
            // Straight to the pod's node over the fabric, learned over BGP.
            let node_ip = format!(
                "172.30.0.{}",
                node.trim_start_matches("node-").parse::<u8>().unwrap() + 10
            );
            assert!(
                route.contains(&format!("via {node_ip} dev eth0")),
                "{netns} to {ip} on {node}: {route}\n{table}"
            );
            let block = table
                .lines()
                .find(|l| l.contains(&format!("via {node_ip} ")) && l.contains(PROTO_BGP));
            assert!(
                block.is_some(),
                "{netns}: no BGP route via {node_ip}:\n{table}"
            );
        }
        assert!(!table.contains("proto 77 onlink"), "{netns}: {table}");

        // The table of `margay node status`, and its JSON: every peer up (the routes are
        // there, so the sessions are; the agent refreshes what it reports twice a second).
        let expected = match (route_reflectors, i) {
            (0, _) => 2,
            // The reflector peers with both clients; each client only with it.
            (_, 0) => 2,
            _ => 1,
        };
        let deadline = Instant::now() + Duration::from_secs(3);
        let status = loop {
            let status = node_status(netns);
            let up = status["bgp"]["peers"].as_array().is_some_and(|p| {
                p.iter().filter(|p| p["state"] == "Established").count() == expected
            });
            if up || Instant::now() > deadline {
                break status;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let text = in_netns(netns, BIN, &["node", "status"]);
        let text = String::from_utf8(text.stdout).unwrap();
        assert!(text.contains("| PEER ADDRESS |"), "{text}");
        let peers = status["bgp"]["peers"].as_array().unwrap();
        assert_eq!(peers.len(), expected, "{netns}: {peers:?}");
        for p in peers {
            assert_eq!(p["state"], "Established", "{netns}: {p}");
            assert!(p["since"].is_string(), "{p}");
            let kind = p["type"].as_str().unwrap();
            let want = match (route_reflectors, i) {
                (0, _) => "node-to-node mesh",
                (_, 0) => "rr client",
                _ => "route reflector",
            };
            assert_eq!(kind, want, "{netns}: {p}");
            assert!(p["prefixesAdvertised"].as_u64().unwrap() >= 1, "{p}");
        }
        assert!(text.matches("| Established ").count() == expected, "{text}");
        assert_eq!(status["bgp"]["routes"], 2, "{netns}: {}", status["bgp"]);
    }
    lab
}

#[test]
fn full_mesh_routes_every_pod_without_an_overlay() {
    if skip_unless_root() {
        return;
    }
    let lab = up_bgp(0);
    let down = lab.ok("down", &[]);
    assert!(down.contains("removed"), "{down}");
    lab.assert_gone();
}

#[test]
fn a_route_reflector_carries_the_clients_routes() {
    if skip_unless_root() {
        return;
    }
    let lab = up_bgp(1);
    // Clients learn each other's blocks only through the reflector, with the owner as next
    // hop (a reflector does not change it).
    let nodes = lab.node_namespaces();
    let metrics = in_netns(&nodes[0], "curl", &["-s", "http://127.0.0.1:9091/metrics"]);
    if metrics.status.success() {
        let text = String::from_utf8_lossy(&metrics.stdout);
        assert!(
            text.contains("margay_bgp_peer_up{peer=\"172.30.0.12\",type=\"rr client\"} 1"),
            "{text}"
        );
    } else {
        eprintln!("note: no curl; /metrics not checked");
    }
    let down = lab.ok("down", &[]);
    assert!(down.contains("removed"), "{down}");
    lab.assert_gone();
}

/// The agents (`margay node run`) in `netns`.
fn agent_pids(netns: &str) -> Vec<u32> {
    let path = Path::new("/run/netns").join(netns);
    margay_sys::netns::pids_in(&path)
        .unwrap()
        .into_iter()
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
                .is_ok_and(|c| c.contains(" node run "))
        })
        .collect()
}

#[test]
fn a_dead_node_is_routed_around_at_once() {
    if skip_unless_root() {
        return;
    }
    let lab = up_bgp(0);
    let nodes = lab.node_namespaces();
    let victim = &nodes[2];
    let pids = agent_pids(victim);
    assert_eq!(pids.len(), 1, "agents in {victim}: {pids:?}");
    let killed = Instant::now();
    host::ok(Command::new("kill").args(["-9", &pids[0].to_string()]));
    // The peers see the TCP connection close at once; the victim's routes stay for the
    // lab's graceful-restart time (3 s) and then go from every other node.
    for netns in &nodes[..2] {
        loop {
            let table = routes(netns);
            let via_victim = table
                .lines()
                .any(|l| l.contains("via 172.30.0.13 ") && l.contains(PROTO_BGP));
            if !via_victim {
                break;
            }
            assert!(
                killed.elapsed() < Duration::from_secs(15),
                "{netns} still routes via the dead node after 15 s:\n{table}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let status = node_status(netns);
        let dead = status["bgp"]["peers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["address"] == "172.30.0.13")
            .cloned()
            .unwrap();
        assert_ne!(dead["state"], "Established", "{dead}");
        let alive = status["bgp"]["peers"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["state"] == "Established")
            .count();
        assert_eq!(alive, 1, "{netns}: {}", status["bgp"]);
    }
    let took = killed.elapsed();
    eprintln!("routes via the dead node withdrawn after {took:?}");
    assert!(
        took >= Duration::from_secs(2),
        "withdrawn before the restart time: {took:?}"
    );
    // The two survivors still reach each other's pods.
    let probes = lab.json(
        "probe",
        &["-o", "json", "--port", "80", "--protocol", "tcp"],
    );
    let m = &probes["probes"][0];
    let among_survivors = m["allowed"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|pair| !pair.to_string().contains("pod-3-"))
        .count();
    assert_eq!(among_survivors, 16, "{m}");
    let down = lab.ok("down", &[]);
    assert!(down.contains("removed"), "{down}");
    lab.assert_gone();
}
