//! `margay lab probe`: every pod tries every pod, and the real reachability matrix comes out.
//!
//! Each try's socket is created on a thread inside the source pod's network namespace; a
//! socket belongs to the namespace it was created in for ever, so all the connects and reads
//! can then run together on one runtime outside any namespace. That is what makes a fully
//! denied matrix take one timeout rather than one per pair.

use std::collections::BTreeSet;
use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;
use std::thread;
use std::time::Duration;

use margay_sys::netns::NetNs;
use serde::{Deserialize, Serialize};
use socket2::{Domain, Socket, Type};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::net::{TcpSocket, UdpSocket};
use tokio::time::{timeout_at, Instant};

/// File descriptors left for the rest of the process (runtime, servers of a test, …) on top
/// of the one socket per try, when deciding whether the soft `RLIMIT_NOFILE` must be raised.
const FD_HEADROOM: u64 = 256;

/// How often an unanswered UDP try resends: a datagram (or its answer) may be lost, and UDP
/// itself never retries.
const UDP_RESEND: Duration = Duration::from_millis(200);

/// A transport protocol, spelled `TCP`/`UDP` like Kubernetes' `NetworkPolicyPort.protocol`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
        })
    }
}

/// A protocol name that is neither TCP nor UDP.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown protocol {0:?}: expected TCP or UDP")]
pub struct UnknownProtocol(pub String);

impl FromStr for Protocol {
    type Err = UnknownProtocol;

    /// Any case: `tcp` on a command line means TCP.
    fn from_str(s: &str) -> Result<Protocol, UnknownProtocol> {
        if s.eq_ignore_ascii_case("tcp") {
            Ok(Protocol::Tcp)
        } else if s.eq_ignore_ascii_case("udp") {
            Ok(Protocol::Udp)
        } else {
            Err(UnknownProtocol(s.to_owned()))
        }
    }
}

/// A pod as the prober sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `NS/POD`: what its server answers, so a reply proves which pod was reached.
    pub id: String,
    /// Its network namespace, e.g. `/var/run/netns/…`.
    pub netns: PathBuf,
    pub ip: IpAddr,
}

/// Who reaches whom on one port. Pairs are `(from, to)`, sorted.
///
/// The JSON shape is a contract shared with `margay policy matrix`, which predicts what
/// `margay lab probe` measures: `{"port":80,"protocol":"TCP","allowed":[["x/a","y/b"]],…}`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Matrix {
    pub port: u16,
    pub protocol: Protocol,
    pub allowed: Vec<(String, String)>,
    pub denied: Vec<(String, String)>,
}

/// Several matrices, as printed by `--output json`: `{"probes":[…]}`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub probes: Vec<Matrix>,
}

/// The probe could not run (as opposed to a pair being denied, which is a result).
///
/// `Display` is one complete line including the cause, which is therefore not a `source()`.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("endpoint {id}: {error}")]
    Netns {
        id: String,
        error: margay_sys::Error,
    },
    #[error("endpoint {id}: creating a {protocol} socket: {error}")]
    Socket {
        id: String,
        protocol: Protocol,
        error: io::Error,
    },
    #[error("starting the probe runtime: {0}")]
    Runtime(io::Error),
}

/// Every endpoint tries every endpoint (itself included) on `port`, all at once, each try
/// bounded by `timeout`; the whole call takes about `timeout` at most.
///
/// A try is allowed only when the target answers with exactly its own id. Anything else is a
/// denial: refused, unreachable, a local firewall's EPERM, silence, or another pod answering.
/// It needs one socket per pair at once (900 for 30 pods), so it raises the soft limit on
/// open files to the hard one when the soft one (often 1024) is too low.
pub fn probe(
    endpoints: &[Endpoint],
    port: u16,
    protocol: Protocol,
    timeout: Duration,
) -> Result<Matrix, ProbeError> {
    let tries = endpoints.len() * endpoints.len();
    allow_open_files(tries as u64 + FD_HEADROOM);
    let mut pairs = Vec::with_capacity(tries);
    let mut asks = Vec::with_capacity(tries);
    for from in endpoints {
        let sockets = open_sockets(from, endpoints, protocol)?;
        for (to, socket) in endpoints.iter().zip(sockets) {
            pairs.push((from.id.clone(), to.id.clone()));
            asks.push(Ask {
                socket,
                target: SocketAddr::new(to.ip, port),
                want: format!("{}\n", to.id),
            });
        }
    }
    let outcomes = run_tries(asks, protocol, timeout)?;
    let mut allowed = BTreeSet::new();
    let mut denied = BTreeSet::new();
    for (pair, ok) in pairs.into_iter().zip(outcomes) {
        if ok {
            allowed.insert(pair);
        } else {
            denied.insert(pair);
        }
    }
    Ok(Matrix {
        port,
        protocol,
        allowed: allowed.into_iter().collect(),
        denied: denied.into_iter().collect(),
    })
}

/// Raises the soft limit on open files to the hard limit if it is below `needed`, as Go
/// programs do at startup. Failing is fine: the socket that does not fit then says "Too many
/// open files".
fn allow_open_files(needed: u64) {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current.is_some_and(|soft| soft < needed) {
        let _ = setrlimit(
            Resource::Nofile,
            Rlimit {
                current: limit.maximum,
                ..limit
            },
        );
    }
}

/// One unconnected, non-blocking socket per target, created inside `from`'s namespace (and so
/// sending from it, whichever thread uses it later).
fn open_sockets(
    from: &Endpoint,
    targets: &[Endpoint],
    protocol: Protocol,
) -> Result<Vec<Socket>, ProbeError> {
    let netns_error = |error| ProbeError::Netns {
        id: from.id.clone(),
        error,
    };
    let new_socket = |ip: IpAddr| -> io::Result<Socket> {
        let domain = Domain::for_address(SocketAddr::new(ip, 0));
        let socket = match protocol {
            Protocol::Tcp => Socket::new(domain, Type::STREAM, Some(socket2::Protocol::TCP))?,
            Protocol::Udp => Socket::new(domain, Type::DGRAM, Some(socket2::Protocol::UDP))?,
        };
        socket.set_nonblocking(true)?;
        Ok(socket)
    };
    NetNs::open(&from.netns)
        .map_err(netns_error)?
        .run(|| {
            targets
                .iter()
                .map(|t| new_socket(t.ip))
                .collect::<io::Result<Vec<_>>>()
        })
        .map_err(netns_error)?
        .map_err(|error| ProbeError::Socket {
            id: from.id.clone(),
            protocol,
            error,
        })
}

/// One try: from `socket` (already in the source's namespace) to `target`, which must answer
/// `want`.
struct Ask {
    socket: Socket,
    target: SocketAddr,
    want: String,
}

/// Runs every try concurrently; `true` where allowed.
///
/// The runtime gets a thread of its own so that callers already inside a tokio runtime (where
/// `block_on` would panic) can call [`probe`] too.
fn run_tries(
    asks: Vec<Ask>,
    protocol: Protocol,
    timeout: Duration,
) -> Result<Vec<bool>, ProbeError> {
    let run = move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .map_err(ProbeError::Runtime)?;
        Ok(runtime.block_on(async move {
            let deadline = Instant::now() + timeout;
            let tries = asks.into_iter().map(|ask| async move {
                let answer = async {
                    match protocol {
                        Protocol::Tcp => ask_tcp(ask.socket, ask.target, ask.want.len()).await,
                        Protocol::Udp => ask_udp(ask.socket, ask.target).await,
                    }
                };
                matches!(
                    timeout_at(deadline, answer).await,
                    Ok(Ok(got)) if got == ask.want.as_bytes()
                )
            });
            futures::future::join_all(tries).await
        }))
    };
    thread::scope(|scope| {
        scope
            .spawn(run)
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// Connects and reads the first line (at most one byte past `len`, enough to tell a longer
/// answer from the expected one).
async fn ask_tcp(socket: Socket, target: SocketAddr, len: usize) -> io::Result<Vec<u8>> {
    let socket = TcpSocket::from_std_stream(socket.into());
    let stream = socket.connect(target).await?;
    let mut line = Vec::new();
    BufReader::new(stream.take(len as u64 + 1))
        .read_until(b'\n', &mut line)
        .await?;
    Ok(line)
}

/// Sends a datagram every [`UDP_RESEND`] until one comes back. The socket is connected, so
/// only the target's answers arrive, and an ICMP port unreachable fails it at once
/// (ECONNREFUSED).
async fn ask_udp(socket: Socket, target: SocketAddr) -> io::Result<Vec<u8>> {
    let socket = UdpSocket::from_std(socket.into())?;
    socket.connect(target).await?;
    let mut buf = vec![0; 2048];
    loop {
        socket.send(b"margay lab probe\n").await?;
        if let Ok(n) = tokio::time::timeout(UDP_RESEND, socket.recv(&mut buf)).await {
            buf.truncate(n?);
            return Ok(buf);
        }
    }
}

/// The matrix as a truth table, like the Kubernetes network-policy e2e suite prints: sources
/// are rows, targets columns, `.` allowed, `X` denied (`?` for a pair not probed). Columns
/// are numbered, and each row starts with its number and id, so the rows are also the legend
/// and 30 pods with long ids still fit a terminal.
pub fn render_table(m: &Matrix, ids: &[String]) -> String {
    let allowed: BTreeSet<(&str, &str)> = m
        .allowed
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    let denied: BTreeSet<(&str, &str)> = m
        .denied
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    let num = ids.len().to_string().len();
    let id_width = ids.iter().map(|id| id.chars().count()).max().unwrap_or(0);
    let columns = (1..=ids.len())
        .map(|i| format!("{i:>num$}"))
        .collect::<Vec<_>>()
        .join(" ");
    let mut out = format!(
        "{}/{} (rows: from, columns: to; . allowed, X denied)\n",
        m.port, m.protocol
    );
    out += &format!("{:pad$}{columns}\n", "", pad = num + 1 + id_width + 2);
    for (i, from) in ids.iter().enumerate() {
        let cells = ids
            .iter()
            .map(|to| {
                let pair = (from.as_str(), to.as_str());
                let cell = if allowed.contains(&pair) {
                    "."
                } else if denied.contains(&pair) {
                    "X"
                } else {
                    "?"
                };
                format!("{cell:>num$}")
            })
            .collect::<Vec<_>>()
            .join(" ");
        out += &format!("{:>num$} {from:<id_width$}  {cells}\n", i + 1);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn protocol_parses_any_case_and_displays_upper_case() {
        for s in ["TCP", "tcp", "Tcp"] {
            assert_eq!(s.parse::<Protocol>(), Ok(Protocol::Tcp));
        }
        assert_eq!("uDp".parse::<Protocol>(), Ok(Protocol::Udp));
        assert_eq!(
            "sctp".parse::<Protocol>().unwrap_err().to_string(),
            r#"unknown protocol "sctp": expected TCP or UDP"#
        );
        assert_eq!(Protocol::Tcp.to_string(), "TCP");
        assert_eq!(Protocol::Udp.to_string(), "UDP");
    }

    /// The contract with `margay policy matrix`: do not change this shape.
    #[test]
    fn report_json_shape_is_pinned() {
        let report = Report {
            probes: vec![
                Matrix {
                    port: 80,
                    protocol: Protocol::Tcp,
                    allowed: pairs(&[("x/a", "x/a"), ("x/a", "y/b")]),
                    denied: pairs(&[("y/b", "x/a")]),
                },
                Matrix {
                    port: 53,
                    protocol: Protocol::Udp,
                    allowed: vec![],
                    denied: pairs(&[("x/a", "y/b")]),
                },
            ],
        };
        let json = r#"{"probes":[{"port":80,"protocol":"TCP","allowed":[["x/a","x/a"],["x/a","y/b"]],"denied":[["y/b","x/a"]]},{"port":53,"protocol":"UDP","allowed":[],"denied":[["x/a","y/b"]]}]}"#;
        assert_eq!(serde_json::to_string(&report).unwrap(), json);
        assert_eq!(serde_json::from_str::<Report>(json).unwrap(), report);
    }

    #[test]
    fn table_has_sources_as_rows_and_targets_as_columns() {
        let ids: Vec<String> = ["x/a", "x/b", "y/long-name"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let m = Matrix {
            port: 80,
            protocol: Protocol::Tcp,
            allowed: pairs(&[
                ("x/a", "x/a"),
                ("x/a", "x/b"),
                ("x/b", "x/b"),
                ("y/long-name", "x/a"),
                ("y/long-name", "y/long-name"),
            ]),
            denied: pairs(&[
                ("x/a", "y/long-name"),
                ("x/b", "x/a"),
                ("x/b", "y/long-name"),
            ]),
        };
        assert_eq!(
            render_table(&m, &ids),
            "\
80/TCP (rows: from, columns: to; . allowed, X denied)
               1 2 3
1 x/a          . . X
2 x/b          X . X
3 y/long-name  . ? .
"
        );
    }

    #[test]
    fn table_columns_stay_aligned_past_nine_pods() {
        let ids: Vec<String> = (1..=10).map(|i| format!("n/p{i}")).collect();
        let m = Matrix {
            port: 53,
            protocol: Protocol::Udp,
            allowed: vec![],
            denied: ids
                .iter()
                .flat_map(|a| ids.iter().map(|b| (a.clone(), b.clone())))
                .collect(),
        };
        let table = render_table(&m, &ids);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(
            lines[0],
            "53/UDP (rows: from, columns: to; . allowed, X denied)"
        );
        assert_eq!(lines[1], "           1  2  3  4  5  6  7  8  9 10");
        assert_eq!(lines[2], " 1 n/p1    X  X  X  X  X  X  X  X  X  X");
        assert_eq!(lines[11], "10 n/p10   X  X  X  X  X  X  X  X  X  X");
    }

    #[test]
    fn a_missing_namespace_is_an_error_naming_the_endpoint() {
        let endpoints = [Endpoint {
            id: "x/gone".into(),
            netns: "/var/run/netns/margay-lab-no-such-namespace".into(),
            ip: "10.99.0.1".parse().unwrap(),
        }];
        let e = probe(&endpoints, 80, Protocol::Tcp, Duration::from_secs(1)).unwrap_err();
        assert!(
            e.to_string().starts_with(
                "endpoint x/gone: opening netns /var/run/netns/margay-lab-no-such-namespace: "
            ),
            "{e}"
        );
    }

    #[test]
    fn no_endpoints_is_an_empty_matrix() {
        let m = probe(&[], 80, Protocol::Udp, Duration::from_secs(1)).unwrap();
        assert_eq!((m.allowed.len(), m.denied.len()), (0, 0));
    }
}
