//! The agent's HTTP endpoints — `/liveness`, `/readiness` and `/status` on the health address,
//! `/metrics` on the metrics address — and the client `margay node status` uses.

use std::future::{Future, IntoFuture};
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::metrics::Metrics;

/// How long the sync loop may go without [`Health::heartbeat`] before `/liveness` fails.
pub const DEFAULT_LIVENESS_TIMEOUT: Duration = Duration::from_secs(90);

/// How long [`fetch_status`] waits for the whole exchange: the agent answers from memory, so
/// anything slower means it is wedged.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// The OpenMetrics content type: what `prometheus-client` encodes (counters with `_total`, a
/// final `# EOF`).
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What the sync loop tells the health endpoints. Updates take an uncontended lock for a few
/// nanoseconds.
#[derive(Debug)]
pub struct Health {
    state: Mutex<HealthState>,
}

#[derive(Debug)]
struct HealthState {
    ready: bool,
    /// Why the agent is not ready (shown by `/readiness` while it is not).
    reason: String,
    last_beat: Instant,
    liveness_timeout: Duration,
    /// `None` until the agent first publishes its view.
    status: Option<Value>,
    /// The BGP speaker's view (`/status`'s `bgp`), refreshed apart from the syncs.
    bgp: Option<Value>,
}

impl Health {
    pub fn new() -> Arc<Health> {
        Health::with_liveness_timeout(DEFAULT_LIVENESS_TIMEOUT)
    }

    /// Like [`Health::new`], with a liveness timeout other than 90 s.
    pub fn with_liveness_timeout(liveness_timeout: Duration) -> Arc<Health> {
        Arc::new(Health {
            state: Mutex::new(HealthState {
                ready: false,
                reason: "the first sync has not been applied yet".into(),
                // Counting from creation gives the loop one timeout to start beating.
                last_beat: Instant::now(),
                liveness_timeout,
                status: None,
                bgp: None,
            }),
        })
    }

    /// Ready once the first full sync is applied and the datastore answers; `reason` says why
    /// not (it is ignored when `ready`).
    pub fn set_ready(&self, ready: bool, reason: impl Into<String>) {
        let mut state = self.lock();
        state.ready = ready;
        state.reason = reason.into();
    }

    /// The sync loop is alive; call it on every turn of the loop, including idle ones.
    pub fn heartbeat(&self) {
        self.lock().last_beat = Instant::now();
    }

    /// The agent's view, served as JSON on `/status`.
    pub fn set_status(&self, status: Value) {
        self.lock().status = Some(status);
    }

    /// The BGP speaker's view, served as `bgp` in `/status`.
    pub fn set_bgp(&self, bgp: Value) {
        self.lock().bgp = Some(bgp);
    }

    /// What `/status` serves: the agent's view with the BGP speaker's in it.
    pub fn status(&self) -> Option<Value> {
        let state = self.lock();
        let mut status = state.status.clone()?;
        if let (Some(object), Some(bgp)) = (status.as_object_mut(), &state.bgp) {
            object.insert("bgp".into(), bgp.clone());
        }
        Some(status)
    }

    pub fn is_ready(&self) -> bool {
        self.lock().ready
    }

    fn lock(&self) -> MutexGuard<'_, HealthState> {
        // The state is plain data, consistent after every single assignment, so a panic
        // elsewhere while holding the lock leaves nothing half-done.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Binds `addr` now, so that a port clash fails at startup with an error naming the address,
/// and returns the bound address (useful with port 0) and a future that serves `/liveness`,
/// `/readiness` and `/status` until it is dropped.
pub async fn bind_health(
    addr: SocketAddr,
    health: Arc<Health>,
) -> io::Result<(SocketAddr, impl Future<Output = io::Result<()>> + Send)> {
    let router = Router::new()
        .route("/liveness", get(liveness))
        .route("/readiness", get(readiness))
        .route("/status", get(status))
        .with_state(health);
    bind("health", addr, router).await
}

/// Like [`bind_health`], for `/metrics` (OpenMetrics text).
pub async fn bind_metrics(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
) -> io::Result<(SocketAddr, impl Future<Output = io::Result<()>> + Send)> {
    let router = Router::new()
        .route("/metrics", get(metrics_text))
        .with_state(metrics);
    bind("metrics", addr, router).await
}

async fn bind(
    what: &str,
    addr: SocketAddr,
    router: Router,
) -> io::Result<(SocketAddr, impl Future<Output = io::Result<()>> + Send)> {
    let listener = TcpListener::bind(addr).await.map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("binding the {what} endpoint to {addr}: {e}"),
        )
    })?;
    let bound = listener.local_addr()?;
    Ok((bound, axum::serve(listener, router).into_future()))
}

async fn liveness(State(health): State<Arc<Health>>) -> (StatusCode, String) {
    let state = health.lock();
    let since = state.last_beat.elapsed();
    if since <= state.liveness_timeout {
        (StatusCode::OK, "live\n".into())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "the sync loop last beat {:.1}s ago (timeout {:.1}s)\n",
                since.as_secs_f64(),
                state.liveness_timeout.as_secs_f64()
            ),
        )
    }
}

async fn readiness(State(health): State<Arc<Health>>) -> (StatusCode, String) {
    let state = health.lock();
    if state.ready {
        (StatusCode::OK, "ready\n".into())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", state.reason),
        )
    }
}

async fn status(State(health): State<Arc<Health>>) -> Response {
    match health.status() {
        Some(status) => Json(status).into_response(),
        None => (StatusCode::SERVICE_UNAVAILABLE, "no status published yet\n").into_response(),
    }
}

async fn metrics_text(State(metrics): State<Arc<Metrics>>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, OPENMETRICS)], metrics.encode())
}

/// [`fetch_status`] failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Nothing listens there, or it did not answer in time: the agent is not running.
    #[error("no agent answering on {addr}: {reason}")]
    NotAnswering { addr: SocketAddr, reason: String },
    /// Something answered, but not with the agent's status.
    #[error("the agent on {addr} {reason}")]
    BadReply { addr: SocketAddr, reason: String },
}

/// `GET /status` from the agent's health address: one HTTP/1.1 request on a fresh connection
/// (`Connection: close`, so the reply ends at EOF).
pub async fn fetch_status(addr: SocketAddr) -> Result<Value, Error> {
    let reply = tokio::time::timeout(FETCH_TIMEOUT, exchange(addr))
        .await
        .map_err(|_| Error::NotAnswering {
            addr,
            reason: format!("no reply within {}s", FETCH_TIMEOUT.as_secs()),
        })?
        .map_err(|e| Error::NotAnswering {
            addr,
            reason: match e.kind() {
                // The usual case, worded for people rather than as "(os error 111)".
                io::ErrorKind::ConnectionRefused => "connection refused".into(),
                _ => e.to_string(),
            },
        })?;
    let bad = |reason: String| Error::BadReply { addr, reason };
    let (status_line, body) = split_reply(&reply).map_err(bad)?;
    // "HTTP/1.1 200 OK"
    let code = status_line.split_whitespace().nth(1);
    if code != Some("200") {
        return Err(bad(format!(
            "answered {}: {}",
            status_line.split_once(' ').map_or(status_line, |(_, s)| s),
            String::from_utf8_lossy(body).trim()
        )));
    }
    serde_json::from_slice(body).map_err(|e| bad(format!("sent invalid JSON: {e}")))
}

async fn exchange(addr: SocketAddr) -> io::Result<Vec<u8>> {
    let mut stream = TcpStream::connect(addr).await?;
    let request = format!(
        "GET /status HTTP/1.1\r\nHost: {addr}\r\nAccept: application/json\r\n\
         Connection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply).await?;
    Ok(reply)
}

/// The status line and the body of a complete HTTP/1.1 reply; the body is cut at
/// `Content-Length` when there is one.
fn split_reply(reply: &[u8]) -> Result<(&str, &[u8]), String> {
    let end = reply
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| format!("sent an incomplete HTTP reply ({} bytes)", reply.len()))?;
    let head = std::str::from_utf8(&reply[..end])
        .map_err(|_| "sent an HTTP reply whose headers are not UTF-8".to_string())?;
    let body = &reply[end + 4..];
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let length = lines.find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse::<usize>().ok())
            .flatten()
    });
    Ok((
        status_line,
        &body[..length.unwrap_or(body.len()).min(body.len())],
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_are_split_at_the_blank_line_and_cut_at_content_length() {
        let reply = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                      Content-Length: 2\r\n\r\n{}trailing";
        assert_eq!(split_reply(reply).unwrap(), ("HTTP/1.1 200 OK", &b"{}"[..]));
        let reply = b"HTTP/1.1 503 Service Unavailable\r\n\r\nnot yet\n";
        assert_eq!(
            split_reply(reply).unwrap(),
            ("HTTP/1.1 503 Service Unavailable", &b"not yet\n"[..])
        );
        assert_eq!(
            split_reply(b"HTTP/1.1 200 OK\r\n").unwrap_err(),
            "sent an incomplete HTTP reply (17 bytes)"
        );
    }
}
