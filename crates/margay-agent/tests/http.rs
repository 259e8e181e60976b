//! The health, status and metrics endpoints, served on 127.0.0.1 port 0 and read with a raw
//! HTTP/1.1 client (independent of `fetch_status`, which is tested against them too).

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use margay_agent::http::{bind_health, bind_metrics, fetch_status, Health};
use margay_agent::metrics::Metrics;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

async fn serve_health(health: &Arc<Health>) -> SocketAddr {
    let (addr, server) = bind_health(any_port(), health.clone()).await.unwrap();
    tokio::spawn(server);
    addr
}

/// `GET path` → (status code, header block, body).
async fn get(addr: SocketAddr, path: &str) -> (u16, String, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).await.unwrap();
    let (head, body) = reply.split_once("\r\n\r\n").expect("a complete reply");
    let code = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (code, head.to_ascii_lowercase(), body.to_string())
}

#[tokio::test]
async fn liveness_fails_when_the_loop_stops_beating() {
    let health = Health::with_liveness_timeout(Duration::from_millis(300));
    let addr = serve_health(&health).await;
    // The timeout counts from creation, so a starting agent is live.
    let (code, _, body) = get(addr, "/liveness").await;
    assert_eq!((code, body.as_str()), (200, "live\n"));

    tokio::time::sleep(Duration::from_millis(400)).await;
    let (code, _, body) = get(addr, "/liveness").await;
    assert_eq!(code, 503);
    assert!(
        body.starts_with("the sync loop last beat ") && body.ends_with("s ago (timeout 0.3s)\n"),
        "{body}"
    );

    health.heartbeat();
    let (code, _, body) = get(addr, "/liveness").await;
    assert_eq!((code, body.as_str()), (200, "live\n"));
}

#[tokio::test]
async fn readiness_follows_set_ready() {
    let health = Health::new();
    let addr = serve_health(&health).await;
    assert!(!health.is_ready());
    let (code, _, body) = get(addr, "/readiness").await;
    assert_eq!(
        (code, body.as_str()),
        (503, "not ready: the first sync has not been applied yet\n")
    );

    health.set_ready(true, "");
    assert!(health.is_ready());
    let (code, _, body) = get(addr, "/readiness").await;
    assert_eq!((code, body.as_str()), (200, "ready\n"));

    health.set_ready(false, "datastore unreachable: connection refused");
    assert!(!health.is_ready());
    let (code, _, body) = get(addr, "/readiness").await;
    assert_eq!(
        (code, body.as_str()),
        (
            503,
            "not ready: datastore unreachable: connection refused\n"
        )
    );
    // Liveness is independent of readiness.
    assert_eq!(get(addr, "/liveness").await.0, 200);
}

#[tokio::test]
async fn status_serves_the_published_json() {
    let health = Health::new();
    let addr = serve_health(&health).await;
    let e = fetch_status(addr).await.unwrap_err();
    assert_eq!(
        e.to_string(),
        format!("the agent on {addr} answered 503 Service Unavailable: no status published yet")
    );

    let status = json!({
        "node": "node1",
        "ready": true,
        "routes": 12,
        "peers": [{"node": "node2", "address": "10.0.0.2"}],
    });
    health.set_status(status.clone());
    assert_eq!(fetch_status(addr).await.unwrap(), status);
    let (code, head, body) = get(addr, "/status").await;
    assert_eq!(code, 200);
    assert!(head.contains("content-type: application/json"), "{head}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap(),
        status
    );
}

#[tokio::test]
async fn fetch_status_says_when_no_agent_is_running() {
    // A port that was free a moment ago and has no listener now.
    let addr = std::net::TcpListener::bind(any_port())
        .unwrap()
        .local_addr()
        .unwrap();
    let e = fetch_status(addr).await.unwrap_err();
    assert_eq!(
        e.to_string(),
        format!("no agent answering on {addr}: connection refused")
    );
}

#[tokio::test]
async fn metrics_expose_every_metric_after_updates() {
    let metrics = Metrics::new();
    let (addr, server) = bind_metrics(any_port(), metrics.clone()).await.unwrap();
    tokio::spawn(server);
    metrics.observe_sync(0.002);
    metrics.observe_watch_lag(0.05);
    metrics.set_programmed(7, 2, 3);
    metrics.apply_error("link");

    let (code, head, body) = get(addr, "/metrics").await;
    assert_eq!(code, 200);
    assert!(
        head.contains("content-type: application/openmetrics-text; version=1.0.0"),
        "{head}"
    );
    for line in [
        "margay_agent_sync_duration_seconds_count 1\n",
        "margay_agent_watch_lag_seconds_count 1\n",
        "margay_agent_routes_programmed 7\n",
        "margay_agent_fdb_entries_programmed 2\n",
        "margay_agent_neighbours_programmed 3\n",
        "margay_agent_apply_errors_total{kind=\"link\"} 1\n",
    ] {
        assert!(body.contains(line), "{line:?} missing from:\n{body}");
    }
    // The health endpoints are on the other address only.
    assert_eq!(get(addr, "/readiness").await.0, 404);
}

#[tokio::test]
async fn a_port_in_use_fails_at_bind_naming_the_address() {
    let taken = std::net::TcpListener::bind(any_port()).unwrap();
    let addr = taken.local_addr().unwrap();
    let Err(e) = bind_health(addr, Health::new()).await else {
        panic!("binding a taken port succeeded");
    };
    assert_eq!(e.kind(), io::ErrorKind::AddrInUse);
    assert!(
        e.to_string().starts_with(&format!(
            "binding the health endpoint to {addr}: Address already in use"
        )),
        "{e}"
    );
    let Err(e) = bind_metrics(addr, Metrics::new()).await else {
        panic!("binding a taken port succeeded");
    };
    assert!(
        e.to_string()
            .starts_with(&format!("binding the metrics endpoint to {addr}: ")),
        "{e}"
    );
}
