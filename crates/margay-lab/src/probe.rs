//! `margay lab probe`: every pod tries every pod, and the real reachability matrix comes out.
//!
//! Each try's socket is created on a thread inside the source pod's network namespace; a
//! socket belongs to the namespace it was created in for ever, so all the connects and reads
//! can then run together on one runtime outside any namespace. That is what makes a fully
//! denied matrix take one timeout rather than one per pair.

use std::collections::BTreeSet;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::thread;
use std::time::Duration;

use margay_sys::netns::NetNs;
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

/// The matrix types are the policy engine's, so that what `margay policy matrix` predicts and
/// what the probe measures are the same values.
pub use margay_policy::{render_table, Matrix, Protocol, Report, UnknownProtocol};

/// The transports the lab can probe and serve: the kernels it runs on are built without SCTP
/// sockets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Transport {
    Tcp,
    Udp,
}

impl Transport {
    /// `None` for SCTP.
    pub(crate) fn of(protocol: Protocol) -> Option<Transport> {
        match protocol {
            Protocol::Tcp => Some(Transport::Tcp),
            Protocol::Udp => Some(Transport::Udp),
            Protocol::Sctp => None,
        }
    }

    pub(crate) fn protocol(self) -> Protocol {
        match self {
            Transport::Tcp => Protocol::Tcp,
            Transport::Udp => Protocol::Udp,
        }
    }

    /// A socket of this transport in `ip`'s family.
    pub(crate) fn socket(self, ip: IpAddr) -> io::Result<Socket> {
        let domain = Domain::for_address(SocketAddr::new(ip, 0));
        match self {
            Transport::Tcp => Socket::new(domain, Type::STREAM, Some(socket2::Protocol::TCP)),
            Transport::Udp => Socket::new(domain, Type::DGRAM, Some(socket2::Protocol::UDP)),
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
    #[error("SCTP cannot be probed: this kernel has no SCTP sockets")]
    Sctp,
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
    let transport = Transport::of(protocol).ok_or(ProbeError::Sctp)?;
    let tries = endpoints.len() * endpoints.len();
    allow_open_files(tries as u64 + FD_HEADROOM);
    let mut pairs = Vec::with_capacity(tries);
    let mut asks = Vec::with_capacity(tries);
    for from in endpoints {
        let sockets = open_sockets(from, endpoints, transport)?;
        for (to, socket) in endpoints.iter().zip(sockets) {
            pairs.push((from.id.clone(), to.id.clone()));
            asks.push(Ask {
                socket,
                target: SocketAddr::new(to.ip, port),
                want: format!("{}\n", to.id),
            });
        }
    }
    let outcomes = run_tries(asks, transport, timeout)?;
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
    transport: Transport,
) -> Result<Vec<Socket>, ProbeError> {
    let netns_error = |error| ProbeError::Netns {
        id: from.id.clone(),
        error,
    };
    let new_socket = |ip: IpAddr| -> io::Result<Socket> {
        let socket = transport.socket(ip)?;
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
            protocol: transport.protocol(),
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
    transport: Transport,
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
                    match transport {
                        Transport::Tcp => ask_tcp(ask.socket, ask.target, ask.want.len()).await,
                        Transport::Udp => ask_udp(ask.socket, ask.target).await,
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

#[cfg(test)]
mod tests {
    use super::*;

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
    fn sctp_cannot_be_probed() {
        let e = probe(&[], 80, Protocol::Sctp, Duration::from_secs(1)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "SCTP cannot be probed: this kernel has no SCTP sockets"
        );
    }

    #[test]
    fn no_endpoints_is_an_empty_matrix() {
        let m = probe(&[], 80, Protocol::Udp, Duration::from_secs(1)).unwrap();
        assert_eq!((m.allowed.len(), m.denied.len()), (0, 0));
    }
}
