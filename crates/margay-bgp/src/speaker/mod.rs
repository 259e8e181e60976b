//! The BGP speaker: the pure core ([`crate::fsm`], [`crate::rib`], [`crate::codec`]) driven
//! over real TCP on tokio, with the routes it selects handed to a [`RouteSink`].
//!
//! [`Speaker::start`] binds the listener and spawns one task that owns the RIB and every
//! session's state machine; each TCP connection has a reader and a writer task that only
//! move bytes, and the sink runs on a thread of its own. Input is processed in bursts: every
//! message read so far is applied before the RIB is flushed once, so a full table costs one
//! best-path pass per prefix and the kernel gets its routes in large batches.
//!
//! Graceful restart (RFC 4724) both ways: with [`SpeakerConfig::graceful_restart_time`] set,
//! the speaker advertises the capability with forwarding preserved, and
//! [`Speaker::shutdown_for_restart`] closes the sessions without a NOTIFICATION so peers
//! keep its routes. The next instance finds the routes the previous one installed
//! ([`RouteSink::installed`]), leaves them in place, and removes those not learned again
//! once every peer has sent End-of-RIB or [`SpeakerConfig::stale_routes_time`] has passed.
//! For a peer that restarts, its routes are kept (stale) for its advertised restart time,
//! capped by [`PeerConfig::max_restart_time`], until it comes back with End-of-RIB.

mod runtime;

use std::collections::BTreeSet;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ipnet::IpNet;
use tokio::sync::{mpsc, oneshot, watch};

pub use crate::fsm::State;
use crate::sink::{RouteSink, SinkError};

/// The well-known BGP port.
pub const BGP_PORT: u16 = 179;

/// The speaker's own settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpeakerConfig {
    pub router_id: Ipv4Addr,
    pub asn: u32,
    /// Where to accept connections (`0.0.0.0:179` by default).
    pub listen: SocketAddr,
    /// Act as a route reflector for peers marked [`PeerConfig::rr_client`].
    pub cluster_id: Option<Ipv4Addr>,
    /// Advertise graceful restart with this restart time (at most 4095 s); `None` leaves
    /// the capability out, and peers then drop our routes as soon as a session ends.
    pub graceful_restart_time: Option<Duration>,
    /// How long routes a previous run installed are kept when not every peer sends
    /// End-of-RIB.
    pub stale_routes_time: Duration,
    /// Between outgoing connection attempts.
    pub connect_retry_time: Duration,
    /// The wait before a session starts again after an error.
    pub idle_hold_time: Duration,
}

impl SpeakerConfig {
    /// Listening on `0.0.0.0:179`, no reflection, graceful restart 120 s, connect retry 5 s,
    /// idle hold 2 s.
    pub fn new(router_id: Ipv4Addr, asn: u32) -> Self {
        SpeakerConfig {
            router_id,
            asn,
            listen: SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), BGP_PORT),
            cluster_id: None,
            graceful_restart_time: Some(Duration::from_secs(120)),
            stale_routes_time: Duration::from_secs(120),
            connect_retry_time: Duration::from_secs(5),
            idle_hold_time: Duration::from_secs(2),
        }
    }
}

/// One neighbour.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerConfig {
    pub address: IpAddr,
    /// The peer's TCP port (179 unless it listens elsewhere).
    pub port: u16,
    pub remote_as: u32,
    /// Source address of our connections, and our next hop towards this peer. Without it
    /// the kernel picks the source and the session's local address is used.
    pub local_address: Option<IpAddr>,
    /// TCP MD5 signature key (RFC 2385), at most 80 bytes.
    pub password: Option<String>,
    /// Proposed hold time in seconds: 0, or at least 3.
    pub hold_time: u16,
    /// Seconds between KEEPALIVEs; `None` is a third of the negotiated hold time.
    pub keepalive_time: Option<u16>,
    /// Never connect; wait for the peer to.
    pub passive: bool,
    /// A route-reflector client (with [`SpeakerConfig::cluster_id`] set).
    pub rr_client: bool,
    /// Close the session (Cease, RFC 4486) when the peer sends more prefixes than this, per
    /// family.
    pub max_prefixes: Option<usize>,
    /// Advertise ourselves as next hop for routes learned from other iBGP peers too.
    pub next_hop_self: bool,
    /// Upper bound on how long this peer's routes are kept after its session is lost, when
    /// it advertised graceful restart.
    pub max_restart_time: Duration,
}

impl PeerConfig {
    /// Active, port 179, hold time 90 s, no password, at most 120 s of graceful restart.
    pub fn new(address: IpAddr, remote_as: u32) -> Self {
        PeerConfig {
            address,
            port: BGP_PORT,
            remote_as,
            local_address: None,
            password: None,
            hold_time: 90,
            keepalive_time: None,
            passive: false,
            rr_client: false,
            max_prefixes: None,
            next_hop_self: false,
            max_restart_time: Duration::from_secs(120),
        }
    }
}

/// A peer's session, as [`Speaker::status`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerStatus {
    pub address: IpAddr,
    /// The most advanced of the peer's connections.
    pub state: State,
    /// When the session reached Established, while it is.
    pub established_since: Option<SystemTime>,
    /// Prefixes announced by the peer during this session (an announcement replacing an
    /// earlier one counts again).
    pub prefixes_received: u64,
    /// Prefixes from the peer in the RIB now (stale ones included).
    pub prefixes_accepted: usize,
    /// Prefixes advertised to the peer now.
    pub prefixes_advertised: usize,
    pub messages_received: u64,
    pub messages_sent: u64,
    /// Why the session last went down or failed to come up.
    pub last_error: Option<String>,
}

/// Monotonic totals since start, for Prometheus counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub messages_received: u64,
    pub messages_sent: u64,
    pub updates_received: u64,
    pub updates_sent: u64,
    pub notifications_received: u64,
    pub notifications_sent: u64,
    /// Sessions that reached Established.
    pub sessions_established: u64,
    /// Sessions that left Established.
    pub sessions_dropped: u64,
    pub connect_failures: u64,
    /// Routes written to the sink (installs and replacements).
    pub routes_installed: u64,
    pub routes_removed: u64,
    /// Sink batches that failed, wholly or in part.
    pub sink_errors: u64,
}

/// The live counters, shared by the runtime, the sink thread and every handle.
#[derive(Debug, Default)]
struct AtomicCounters {
    messages_received: AtomicU64,
    messages_sent: AtomicU64,
    updates_received: AtomicU64,
    updates_sent: AtomicU64,
    notifications_received: AtomicU64,
    notifications_sent: AtomicU64,
    sessions_established: AtomicU64,
    sessions_dropped: AtomicU64,
    connect_failures: AtomicU64,
    routes_installed: AtomicU64,
    routes_removed: AtomicU64,
    sink_errors: AtomicU64,
}

impl AtomicCounters {
    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    fn snapshot(&self) -> Counters {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Counters {
            messages_received: get(&self.messages_received),
            messages_sent: get(&self.messages_sent),
            updates_received: get(&self.updates_received),
            updates_sent: get(&self.updates_sent),
            notifications_received: get(&self.notifications_received),
            notifications_sent: get(&self.notifications_sent),
            sessions_established: get(&self.sessions_established),
            sessions_dropped: get(&self.sessions_dropped),
            connect_failures: get(&self.connect_failures),
            routes_installed: get(&self.routes_installed),
            routes_removed: get(&self.routes_removed),
            sink_errors: get(&self.sink_errors),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SpeakerError {
    #[error("listening on {addr}: {error}")]
    Listen { addr: SocketAddr, error: io::Error },
    #[error("reading the routes a previous run installed: {0}")]
    Sink(#[from] SinkError),
    #[error("starting the route sink thread: {0}")]
    SinkThread(io::Error),
}

/// What the handle asks of the runtime.
enum Command {
    SetPeers(Vec<PeerConfig>),
    SetOriginated(BTreeSet<IpNet>),
    Status(oneshot::Sender<Vec<PeerStatus>>),
    Shutdown { restart: bool },
}

/// A running speaker. Clones are handles to the same one; when the last is dropped the
/// speaker shuts down as with [`Speaker::shutdown`].
#[derive(Debug, Clone)]
pub struct Speaker {
    commands: mpsc::UnboundedSender<Command>,
    counters: Arc<AtomicCounters>,
    stopped: watch::Receiver<bool>,
}

impl Speaker {
    /// Binds `config.listen`, reads what a previous run left in `sink`, and spawns the
    /// speaker on the current tokio runtime (which must have the time and I/O drivers).
    /// It starts with no peers and no routes of its own.
    pub fn start(config: SpeakerConfig, sink: impl RouteSink) -> Result<Speaker, SpeakerError> {
        let (commands, command_rx) = mpsc::unbounded_channel();
        let counters = Arc::new(AtomicCounters::default());
        let (stopped_tx, stopped) = watch::channel(false);
        runtime::spawn(config, sink, command_rx, counters.clone(), stopped_tx)?;
        Ok(Speaker {
            commands,
            counters,
            stopped,
        })
    }

    /// Replaces the set of peers: new ones start, removed ones are closed with a Cease
    /// NOTIFICATION, and changed ones restart with their new settings.
    pub fn set_peers(&self, peers: Vec<PeerConfig>) {
        self.send(Command::SetPeers(peers));
    }

    /// Replaces the set of prefixes this node originates (its IPAM blocks); they are
    /// advertised to every peer with us as next hop and never installed in the sink.
    pub fn set_originated(&self, prefixes: BTreeSet<IpNet>) {
        self.send(Command::SetOriginated(prefixes));
    }

    /// Every configured peer, by address. Empty once the speaker has stopped.
    pub async fn status(&self) -> Vec<PeerStatus> {
        let (tx, rx) = oneshot::channel();
        self.send(Command::Status(tx));
        rx.await.unwrap_or_default()
    }

    pub fn counters(&self) -> Counters {
        self.counters.snapshot()
    }

    /// Closes every session with a Cease NOTIFICATION, removes the learned routes from the
    /// sink, and returns once the speaker has stopped.
    pub async fn shutdown(&self) {
        self.send(Command::Shutdown { restart: false });
        self.stopped().await;
    }

    /// Closes every session without a NOTIFICATION and leaves the sink as it is, so that
    /// peers with graceful restart keep our routes and forwarding continues until the next
    /// instance takes over. Returns once the speaker has stopped.
    pub async fn shutdown_for_restart(&self) {
        self.send(Command::Shutdown { restart: true });
        self.stopped().await;
    }

    /// Returns once the speaker has stopped.
    pub async fn stopped(&self) {
        let mut stopped = self.stopped.clone();
        // An error means the runtime is gone, which is stopped too.
        let _ = stopped.wait_for(|s| *s).await;
    }

    fn send(&self, command: Command) {
        // A stopped speaker has nothing left to change; status() then reports no peers.
        let _ = self.commands.send(command);
    }
}
