//! The speaker's task: sessions, timers, the RIB, and the tasks that move bytes.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsFd;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ipnet::IpNet;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::{AbortHandle, JoinHandle};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::{AtomicCounters, Command, PeerConfig, PeerStatus, SpeakerConfig, SpeakerError};
use crate::codec::{self, code, AddressFamily, Context, Message, Notification};
use crate::fsm::{
    self, Action, Direction, DownReason, Event, GracefulRestartConfig, Session, SessionConfig,
    State, Timer,
};
use crate::rib::{self, KernelChange, Rib, RibConfig};
use crate::sink::{RouteChange, RouteSink};

/// Bytes asked of the socket per read: many UPDATEs, one channel message.
const READ_CHUNK: usize = 64 * 1024;
/// Inputs queued from the I/O tasks before readers wait. When the speaker is slower than
/// its peers the rest stays in the kernel's socket buffers, not in our memory.
const INPUT_QUEUE: usize = 8;
/// Inputs applied before the RIB is flushed.
const BURST: usize = 256;
/// Bytes of messages applied before the RIB is flushed (about 3,000 IPv4 /32s): small
/// flushes keep the per-flush lists small and get routes to the sink sooner.
const BURST_BYTES: usize = 16 * 1024;
/// Route changes the sink thread merges into one batch, and batches queued for it before
/// the speaker waits: a slow table pushes back instead of buffering the whole RIB.
const SINK_BATCH: usize = 4096;
const SINK_QUEUE: usize = 2;
/// How long a graceful shutdown waits for NOTIFICATIONs to be written.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

const TIMERS: [Timer; 4] = [
    Timer::ConnectRetry,
    Timer::Hold,
    Timer::Keepalive,
    Timer::IdleHold,
];

/// What the I/O tasks report.
enum Input {
    Accepted(TcpStream, SocketAddr),
    Connected {
        conn: u64,
        result: io::Result<TcpStream>,
    },
    Bytes {
        conn: u64,
        data: Vec<u8>,
    },
    /// The peer closed the connection, or reading failed.
    Closed {
        conn: u64,
        error: Option<io::Error>,
    },
}

enum WriterCmd {
    Data(Vec<u8>),
    /// Write what is queued, then close.
    Close,
}

/// A connection's byte movers.
struct Io {
    writer: mpsc::UnboundedSender<WriterCmd>,
    writer_task: JoinHandle<()>,
    reader: AbortHandle,
    local: IpAddr,
}

/// One TCP connection (or attempt) to a peer, with its state machine.
struct Conn {
    id: u64,
    dir: Direction,
    session: Session,
    deadlines: [Option<Instant>; 4],
    io: Option<Io>,
    connecting: Option<AbortHandle>,
    /// Bytes read but not yet decoded.
    buf: Vec<u8>,
    /// The session's codec context, fixed at Established.
    ctx: Context,
}

impl Conn {
    fn new(id: u64, dir: Direction, config: SessionConfig) -> Conn {
        Conn {
            id,
            dir,
            session: Session::new(config),
            deadlines: [None; 4],
            io: None,
            connecting: None,
            buf: Vec::new(),
            ctx: Context::default(),
        }
    }

    /// Drops the transport: queued bytes are still written, then the socket closes.
    /// Returns the writer task, which ends once it has.
    fn close(&mut self) -> Option<JoinHandle<()>> {
        if let Some(c) = self.connecting.take() {
            c.abort();
        }
        self.buf = Vec::new();
        let io = self.io.take()?;
        io.reader.abort();
        let _ = io.writer.send(WriterCmd::Close);
        Some(io.writer_task)
    }

    /// Drops the transport at once, without writing what is queued.
    fn abort(&mut self) {
        if let Some(c) = self.connecting.take() {
            c.abort();
        }
        if let Some(io) = self.io.take() {
            io.reader.abort();
            io.writer_task.abort();
        }
    }
}

struct Peer {
    cfg: PeerConfig,
    /// At most two: the first is the peer's own; a second exists only while an incoming
    /// connection races one already past Connect/Active (RFC 4271 §6.8).
    conns: Vec<Conn>,
    /// Drop its stale routes at this time (graceful restart, RFC 4724 §4.2).
    restart_deadline: Option<Instant>,
    /// The peer's advertised restart time, from its last session.
    restart_time: Option<Duration>,
    /// Families the peer has sent End-of-RIB for in this session.
    end_of_rib: BTreeSet<AddressFamily>,
    families: Vec<AddressFamily>,
    /// The local address the RIB uses as next-hop-self for this peer.
    rib_local: Option<IpAddr>,
    established_since: Option<SystemTime>,
    prefixes_received: u64,
    messages_received: u64,
    messages_sent: u64,
    last_error: Option<String>,
}

impl Peer {
    fn conn(&mut self, id: u64) -> Option<&mut Conn> {
        self.conns.iter_mut().find(|c| c.id == id)
    }

    /// Sent every table it has.
    fn synced(&self) -> bool {
        !self.families.is_empty() && self.families.iter().all(|f| self.end_of_rib.contains(f))
    }
}

struct Runtime {
    cfg: SpeakerConfig,
    rib: Rib,
    peers: BTreeMap<IpAddr, Peer>,
    /// Connection id to peer address.
    conn_peer: HashMap<u64, IpAddr>,
    next_conn: u64,
    inputs: mpsc::Sender<Input>,
    listener: Arc<TcpListener>,
    originated: BTreeSet<IpNet>,
    /// This node's addresses: a route whose next hop is one of them is never installed.
    local_addrs: HashSet<IpAddr>,
    /// Routes a previous run left in the sink and not learned again yet.
    stale: Option<HashSet<IpNet>>,
    stale_deadline: Option<Instant>,
    sweep_due: bool,
    sink: Option<std::sync::mpsc::SyncSender<Vec<RouteChange>>>,
    sink_thread: Option<std::thread::JoinHandle<()>>,
    counters: Arc<AtomicCounters>,
    /// Sends queued during one burst, per connection, written once at its end.
    out: HashMap<u64, Vec<u8>>,
    /// Writer tasks of closed connections, awaited at shutdown so NOTIFICATIONs go out.
    closing: Vec<JoinHandle<()>>,
}

pub(super) fn spawn(
    cfg: SpeakerConfig,
    mut sink: impl RouteSink,
    commands: mpsc::UnboundedReceiver<Command>,
    counters: Arc<AtomicCounters>,
    stopped: watch::Sender<bool>,
) -> Result<(), SpeakerError> {
    let listener = listen(cfg.listen).map_err(|error| SpeakerError::Listen {
        addr: cfg.listen,
        error,
    })?;
    let stale: HashSet<IpNet> = sink.installed()?.into_iter().collect();
    if !stale.is_empty() {
        info!(
            routes = stale.len(),
            "keeping routes of a previous run until peers resync"
        );
    }
    let (sink_tx, sink_rx) = std::sync::mpsc::sync_channel(SINK_QUEUE);
    let sink_counters = counters.clone();
    let sink_thread = std::thread::Builder::new()
        .name("bgp-sink".into())
        .spawn(move || run_sink(sink, sink_rx, &sink_counters))
        .map_err(SpeakerError::SinkThread)?;
    let (inputs, input_rx) = mpsc::channel(INPUT_QUEUE);
    let listener = Arc::new(listener);
    let accept = tokio::spawn(accept_loop(listener.clone(), inputs.clone()));
    let mut local_addrs = HashSet::from([IpAddr::V4(cfg.router_id)]);
    if !cfg.listen.ip().is_unspecified() {
        local_addrs.insert(cfg.listen.ip());
    }
    let rt = Runtime {
        rib: Rib::new(RibConfig {
            local_as: cfg.asn,
            router_id: cfg.router_id,
            cluster_id: cfg.cluster_id,
        }),
        stale_deadline: (!stale.is_empty()).then(|| Instant::now() + cfg.stale_routes_time),
        stale: (!stale.is_empty()).then_some(stale),
        sweep_due: false,
        cfg,
        peers: BTreeMap::new(),
        conn_peer: HashMap::new(),
        next_conn: 0,
        inputs,
        listener,
        originated: BTreeSet::new(),
        local_addrs,
        sink: Some(sink_tx),
        sink_thread: Some(sink_thread),
        counters,
        out: HashMap::new(),
        closing: Vec::new(),
    };
    tokio::spawn(async move {
        rt.run(commands, input_rx).await;
        accept.abort();
        let _ = stopped.send(true);
    });
    Ok(())
}

fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    let sock = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    // A restarted speaker must get its port back while old connections linger in TIME_WAIT.
    sock.set_reuseaddr(true)?;
    sock.bind(addr)?;
    sock.listen(128)
}

async fn accept_loop(listener: Arc<TcpListener>, inputs: mpsc::Sender<Input>) {
    loop {
        match listener.accept().await {
            Ok((stream, from)) => {
                if inputs.send(Input::Accepted(stream, from)).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                // EMFILE and the like: back off instead of spinning.
                warn!(error = %e, "accepting a BGP connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn connect(
    peer: SocketAddr,
    local: Option<IpAddr>,
    password: Option<String>,
) -> io::Result<TcpStream> {
    let sock = match peer {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    if let Some(key) = password {
        margay_sys::tcp_md5::set_tcp_md5(sock.as_fd(), peer.ip(), key.as_bytes())
            .map_err(io::Error::other)?;
    }
    if let Some(local) = local {
        sock.bind(SocketAddr::new(local, 0))?;
    }
    sock.connect(peer).await
}

async fn read_loop(mut rd: OwnedReadHalf, conn: u64, inputs: mpsc::Sender<Input>) {
    let mut buf = vec![0; READ_CHUNK];
    loop {
        let input = match rd.read(&mut buf).await {
            Ok(0) => Input::Closed { conn, error: None },
            // Copied to size: a queued read holds only what it read.
            Ok(n) => Input::Bytes {
                conn,
                data: buf[..n].to_vec(),
            },
            Err(e) => Input::Closed {
                conn,
                error: Some(e),
            },
        };
        let last = matches!(input, Input::Closed { .. });
        if inputs.send(input).await.is_err() || last {
            return;
        }
    }
}

async fn write_loop(mut wr: OwnedWriteHalf, mut cmds: mpsc::UnboundedReceiver<WriterCmd>) {
    while let Some(cmd) = cmds.recv().await {
        match cmd {
            WriterCmd::Data(bytes) => {
                if let Err(e) = wr.write_all(&bytes).await {
                    // The reader sees the connection fail and reports it.
                    debug!(error = %e, "writing to a BGP peer");
                    return;
                }
            }
            WriterCmd::Close => break,
        }
    }
    let _ = wr.shutdown().await;
}

/// Applies route changes on the sink's own thread, merging batches that queued up.
fn run_sink(
    mut sink: impl RouteSink,
    rx: std::sync::mpsc::Receiver<Vec<RouteChange>>,
    counters: &AtomicCounters,
) {
    while let Ok(mut batch) = rx.recv() {
        while batch.len() < SINK_BATCH {
            match rx.try_recv() {
                Ok(more) => batch.extend(more),
                Err(_) => break,
            }
        }
        let installs = batch
            .iter()
            .filter(|c| matches!(c, RouteChange::Install { .. }))
            .count() as u64;
        if let Err(e) = sink.apply(&batch) {
            warn!(error = %e, "programming BGP routes");
            AtomicCounters::add(&counters.sink_errors, 1);
        }
        AtomicCounters::add(&counters.routes_installed, installs);
        AtomicCounters::add(&counters.routes_removed, batch.len() as u64 - installs);
    }
}

fn describe(n: &Notification) -> String {
    let what = match n.code {
        code::MESSAGE_HEADER => "message header error",
        code::OPEN_MESSAGE => "OPEN message error",
        code::UPDATE_MESSAGE => "UPDATE message error",
        code::HOLD_TIMER_EXPIRED => "hold timer expired",
        code::FSM => "finite state machine error",
        code::CEASE => "cease",
        _ => "unknown error",
    };
    format!("{what} ({}/{})", n.code, n.subcode)
}

fn secs(d: Duration) -> u16 {
    // The capability's field has 12 bits.
    d.as_secs().min(4095) as u16
}

/// Ranks states by progress, to report the most advanced connection.
fn progress(s: State) -> u8 {
    match s {
        State::Idle => 0,
        State::Connect | State::Active => 1,
        State::OpenSent => 2,
        State::OpenConfirm => 3,
        State::Established => 4,
    }
}

impl Runtime {
    async fn run(
        mut self,
        mut commands: mpsc::UnboundedReceiver<Command>,
        mut inputs: mpsc::Receiver<Input>,
    ) {
        let restart = loop {
            let deadline = self.next_deadline();
            tokio::select! {
                biased;
                cmd = commands.recv() => match cmd {
                    None => break false,
                    Some(Command::Shutdown { restart }) => break restart,
                    Some(cmd) => self.command(cmd),
                },
                Some(input) = inputs.recv() => {
                    let mut bytes = self.input(input);
                    for _ in 1..BURST {
                        if bytes >= BURST_BYTES {
                            break;
                        }
                        match inputs.try_recv() {
                            Ok(input) => bytes += self.input(input),
                            Err(_) => break,
                        }
                    }
                }
                () = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)),
                    if deadline.is_some() => self.expire(Instant::now()),
            }
            self.flush();
        };
        self.shutdown(restart).await;
    }

    fn next_deadline(&self) -> Option<Instant> {
        let conns = self
            .peers
            .values()
            .flat_map(|p| p.conns.iter().flat_map(|c| c.deadlines.iter().flatten()));
        let peers = self
            .peers
            .values()
            .filter_map(|p| p.restart_deadline.as_ref());
        conns
            .chain(peers)
            .chain(self.stale_deadline.as_ref())
            .min()
            .copied()
    }

    fn command(&mut self, cmd: Command) {
        match cmd {
            Command::SetPeers(peers) => self.set_peers(peers),
            Command::SetOriginated(prefixes) => {
                for p in self.originated.difference(&prefixes) {
                    self.rib.withdraw_local(*p);
                }
                for p in prefixes.difference(&self.originated) {
                    self.rib.originate(*p);
                }
                self.originated = prefixes;
            }
            Command::Status(reply) => {
                let _ = reply.send(self.status());
            }
            Command::Shutdown { .. } => unreachable!("handled by the loop"),
        }
    }

    fn status(&self) -> Vec<PeerStatus> {
        self.peers
            .iter()
            .map(|(&addr, p)| PeerStatus {
                address: addr,
                state: p
                    .conns
                    .iter()
                    .map(|c| c.session.state())
                    .max_by_key(|s| progress(*s))
                    .unwrap_or(State::Idle),
                established_since: p.established_since,
                prefixes_received: p.prefixes_received,
                prefixes_accepted: self.rib.prefix_count(addr, AddressFamily::Ipv4Unicast)
                    + self.rib.prefix_count(addr, AddressFamily::Ipv6Unicast),
                prefixes_advertised: self.rib.advertised_count(addr),
                messages_received: p.messages_received,
                messages_sent: p.messages_sent,
                last_error: p.last_error.clone(),
            })
            .collect()
    }

    fn session_config(&self, p: &PeerConfig) -> SessionConfig {
        SessionConfig {
            hold_time: p.hold_time,
            keepalive_time: p.keepalive_time,
            connect_retry_time: self.cfg.connect_retry_time,
            idle_hold_time: self.cfg.idle_hold_time,
            families: vec![AddressFamily::Ipv4Unicast, AddressFamily::Ipv6Unicast],
            graceful_restart: self
                .cfg
                .graceful_restart_time
                .map(|t| GracefulRestartConfig {
                    restart_time: secs(t),
                    forwarding_preserved: true,
                }),
            max_prefixes: p.max_prefixes,
            ..SessionConfig::new(self.cfg.asn, p.remote_as, self.cfg.router_id)
        }
    }

    fn rib_peer(p: &PeerConfig, local: Option<IpAddr>) -> rib::PeerConfig {
        rib::PeerConfig {
            address: p.address,
            remote_as: p.remote_as,
            rr_client: p.rr_client,
            next_hop_self: p.next_hop_self,
            local_v4: match local {
                Some(IpAddr::V4(a)) => Some(a),
                _ => None,
            },
            local_v6: match local {
                Some(IpAddr::V6(a)) => Some(a),
                _ => None,
            },
        }
    }

    fn set_peers(&mut self, peers: Vec<PeerConfig>) {
        let wanted: BTreeMap<IpAddr, PeerConfig> =
            peers.into_iter().map(|p| (p.address, p)).collect();
        let gone: Vec<IpAddr> = self
            .peers
            .iter()
            .filter(|(a, p)| wanted.get(a) != Some(&p.cfg))
            .map(|(a, _)| *a)
            .collect();
        for addr in gone {
            self.remove_peer(addr);
        }
        for (addr, cfg) in wanted {
            if !self.peers.contains_key(&addr) {
                self.add_peer(cfg);
            }
        }
    }

    fn remove_peer(&mut self, addr: IpAddr) {
        info!(peer = %addr, "removing BGP peer");
        let ids: Vec<u64> = self
            .peers
            .get(&addr)
            .map(|p| p.conns.iter().map(|c| c.id).collect())
            .unwrap_or_default();
        for id in ids {
            self.event(addr, id, Event::ManualStop);
        }
        if let Some(mut p) = self.peers.remove(&addr) {
            for c in &mut p.conns {
                self.conn_peer.remove(&c.id);
                self.closing.extend(c.close());
            }
            if p.cfg.password.is_some() {
                self.set_listener_key(addr, b"");
            }
        }
        self.rib.remove_peer(addr);
    }

    fn add_peer(&mut self, cfg: PeerConfig) {
        info!(peer = %cfg.address, asn = cfg.remote_as, passive = cfg.passive, "adding BGP peer");
        let addr = cfg.address;
        if let Some(pw) = &cfg.password {
            self.set_listener_key(addr, pw.as_bytes());
        }
        if let Some(l) = cfg.local_address {
            self.local_addrs.insert(l);
        }
        self.rib.add_peer(Self::rib_peer(&cfg, cfg.local_address));
        let start = if cfg.passive {
            Event::ManualStartPassive
        } else {
            Event::ManualStart
        };
        let id = self.new_conn_id(addr);
        let conn = Conn::new(id, Direction::Outgoing, self.session_config(&cfg));
        self.peers.insert(
            addr,
            Peer {
                rib_local: cfg.local_address,
                cfg,
                conns: vec![conn],
                restart_deadline: None,
                restart_time: None,
                end_of_rib: BTreeSet::new(),
                families: Vec::new(),
                established_since: None,
                prefixes_received: 0,
                messages_received: 0,
                messages_sent: 0,
                last_error: None,
            },
        );
        self.event(addr, id, start);
    }

    fn set_listener_key(&mut self, peer: IpAddr, key: &[u8]) {
        if let Err(e) = margay_sys::tcp_md5::set_tcp_md5(self.listener.as_fd(), peer, key) {
            // Without the key the peer's signed SYNs are dropped: the session stays down,
            // which status() shows, rather than coming up unsigned.
            warn!(peer = %peer, error = %e, "setting the TCP MD5 key on the BGP listener");
            if let Some(p) = self.peers.get_mut(&peer) {
                p.last_error = Some(e.to_string());
            }
        }
    }

    fn new_conn_id(&mut self, addr: IpAddr) -> u64 {
        self.next_conn += 1;
        self.conn_peer.insert(self.next_conn, addr);
        self.next_conn
    }

    /// Handles one input; returns the bytes of messages it carried.
    fn input(&mut self, input: Input) -> usize {
        match input {
            Input::Accepted(stream, from) => self.accepted(stream, from),
            Input::Connected { conn, result } => {
                let Some(&addr) = self.conn_peer.get(&conn) else {
                    return 0;
                };
                let Some(c) = self.peers.get_mut(&addr).and_then(|p| p.conn(conn)) else {
                    return 0;
                };
                if c.connecting.take().is_none() || c.io.is_some() {
                    return 0; // abandoned attempt
                }
                match result {
                    Ok(stream) => {
                        self.attach(addr, conn, stream);
                        self.event(addr, conn, Event::TcpConnectionAcknowledged);
                    }
                    Err(e) => {
                        debug!(peer = %addr, error = %e, "BGP connection failed");
                        AtomicCounters::add(&self.counters.connect_failures, 1);
                        if let Some(p) = self.peers.get_mut(&addr) {
                            p.last_error = Some(format!("connecting: {e}"));
                        }
                        self.event(addr, conn, Event::TcpConnectionFails);
                    }
                }
            }
            Input::Bytes { conn, data } => {
                let len = data.len();
                if let Some(&addr) = self.conn_peer.get(&conn) {
                    self.received(addr, conn, data);
                }
                return len;
            }
            Input::Closed { conn, error } => {
                let Some(&addr) = self.conn_peer.get(&conn) else {
                    return 0;
                };
                let Some(p) = self.peers.get_mut(&addr) else {
                    return 0;
                };
                if p.conn(conn).is_some_and(|c| c.io.is_some()) {
                    p.last_error = Some(match error {
                        Some(e) => format!("connection failed: {e}"),
                        None => "connection closed by peer".into(),
                    });
                    self.event(addr, conn, Event::TcpConnectionFails);
                }
            }
        }
        0
    }

    fn accepted(&mut self, stream: TcpStream, from: SocketAddr) {
        let addr = from.ip().to_canonical();
        let Some(peer) = self.peers.get_mut(&addr) else {
            debug!(from = %from, "refusing a BGP connection from an unknown address");
            return;
        };
        let racing = peer.conns.len() > 1;
        let main = &mut peer.conns[0];
        let state = main.session.state();
        let halted = state == State::Idle && main.deadlines[Timer::IdleHold as usize].is_none();
        if halted || racing {
            debug!(peer = %addr, "refusing a BGP connection: session is down or racing already");
            return;
        }
        let id = match state {
            State::Connect | State::Active => {
                // Take the peer's connection instead of our own attempt.
                self.closing.extend(main.close());
                main.dir = Direction::Incoming;
                main.id
            }
            _ => {
                let cfg = peer.cfg.clone();
                let id = self.new_conn_id(addr);
                let mut conn = Conn::new(id, Direction::Incoming, self.session_config(&cfg));
                // Started as the peer's own session would be, so it carries on the same way
                // if it survives; the connect that starting asks for is not needed.
                let start = if cfg.passive {
                    Event::ManualStartPassive
                } else {
                    Event::ManualStart
                };
                let acts: Vec<Action> = conn
                    .session
                    .handle(start)
                    .into_iter()
                    .filter(|a| *a != Action::Connect)
                    .collect();
                let peer = self.peers.get_mut(&addr).expect("looked up above");
                if state == State::Idle {
                    // Idle, waiting to restart: the new connection simply replaces it.
                    let mut old = std::mem::replace(&mut peer.conns[0], conn);
                    old.abort();
                    self.conn_peer.remove(&old.id);
                } else {
                    peer.conns.push(conn);
                }
                self.actions(addr, id, acts);
                id
            }
        };
        self.attach(addr, id, stream);
        self.event(addr, id, Event::TcpConnectionConfirmed);
    }

    fn attach(&mut self, addr: IpAddr, id: u64, stream: TcpStream) {
        let _ = stream.set_nodelay(true);
        let local = stream
            .local_addr()
            .map(|a| a.ip().to_canonical())
            .unwrap_or(IpAddr::V4(self.cfg.router_id));
        let (rd, wr) = stream.into_split();
        let (writer, cmds) = mpsc::unbounded_channel();
        let writer_task = tokio::spawn(write_loop(wr, cmds));
        let reader = tokio::spawn(read_loop(rd, id, self.inputs.clone())).abort_handle();
        if let Some(c) = self.peers.get_mut(&addr).and_then(|p| p.conn(id)) {
            c.io = Some(Io {
                writer,
                writer_task,
                reader,
                local,
            });
        }
    }

    fn received(&mut self, addr: IpAddr, id: u64, data: Vec<u8>) {
        let Some(c) = self.peers.get_mut(&addr).and_then(|p| p.conn(id)) else {
            return;
        };
        if c.io.is_none() {
            return;
        }
        if c.buf.is_empty() {
            c.buf = data;
        } else {
            c.buf.extend_from_slice(&data);
        }
        let mut pos = 0;
        loop {
            let Some(c) = self.peers.get_mut(&addr).and_then(|p| p.conn(id)) else {
                return;
            };
            if c.io.is_none() {
                return; // closed by the last message
            }
            let ctx = c
                .session
                .negotiated()
                .map(fsm::Negotiated::context)
                .unwrap_or_default();
            let event = match codec::decode(&c.buf[pos..], &ctx) {
                Ok(None) => {
                    c.buf.drain(..pos);
                    return;
                }
                Ok(Some(d)) => {
                    pos += d.len;
                    if !d.recovered.is_empty() {
                        debug!(peer = %addr, errors = ?d.recovered, "UPDATE errors handled per RFC 7606");
                    }
                    self.count_received(addr, &d.message);
                    Event::from(d.message)
                }
                Err(e) => {
                    warn!(peer = %addr, error = %e, "undecodable BGP message");
                    pos = c.buf.len();
                    Event::DecodeError(e)
                }
            };
            self.event(addr, id, event);
        }
    }

    fn count_received(&mut self, addr: IpAddr, m: &Message) {
        AtomicCounters::add(&self.counters.messages_received, 1);
        let c: Option<&AtomicU64> = match m {
            Message::Update(_) => Some(&self.counters.updates_received),
            Message::Notification(_) => Some(&self.counters.notifications_received),
            _ => None,
        };
        if let Some(c) = c {
            AtomicCounters::add(c, 1);
        }
        if let Some(p) = self.peers.get_mut(&addr) {
            p.messages_received += 1;
            if let Message::Notification(n) = m {
                p.last_error = Some(format!("received NOTIFICATION: {}", describe(n)));
            }
        }
    }

    /// Feeds one event to a connection's state machine and carries out what follows.
    fn event(&mut self, addr: IpAddr, id: u64, event: Event) {
        let Some(c) = self.peers.get_mut(&addr).and_then(|p| p.conn(id)) else {
            return;
        };
        let before = c.session.state();
        let acts = c.session.handle(event);
        self.actions(addr, id, acts);
        let Some(p) = self.peers.get_mut(&addr) else {
            return;
        };
        let Some(c) = p.conn(id) else {
            return;
        };
        let after = c.session.state();
        if after == State::OpenConfirm && before != State::OpenConfirm {
            self.collision(addr, id);
        } else if after == State::Idle && p.conns.len() > 1 {
            // The other connection carries on for the peer.
            p.conns.retain(|c| c.id != id);
            self.conn_peer.remove(&id);
        }
    }

    /// RFC 4271 §6.8, when connection `id` has just received the peer's OPEN.
    fn collision(&mut self, addr: IpAddr, id: u64) {
        let Some(p) = self.peers.get_mut(&addr) else {
            return;
        };
        let (Some(this), Some(other)) = (
            p.conns.iter().find(|c| c.id == id),
            p.conns.iter().find(|c| c.id != id),
        ) else {
            return;
        };
        let other_state = other.session.state();
        if !matches!(
            other_state,
            State::OpenSent | State::OpenConfirm | State::Established
        ) {
            return;
        }
        let (loser, event) = if this.dir == other.dir {
            // The peer opened a second connection in the same direction: it restarted and
            // the old one is dead (RFC 4724 §4.2), so the old one fails as a lost
            // connection would, keeping its routes when graceful restart applies.
            (other.id, Event::TcpConnectionFails)
        } else {
            let remote = this.session.remote_id().unwrap_or(self.cfg.router_id);
            let established = (other_state == State::Established).then_some(other.dir);
            let winner = fsm::resolve_collision(self.cfg.router_id, remote, established);
            let loser = if this.dir == winner {
                other.id
            } else {
                this.id
            };
            (loser, Event::OpenCollisionDump)
        };
        debug!(peer = %addr, "connection collision resolved");
        self.event(addr, loser, event);
        if let Some(p) = self.peers.get_mut(&addr) {
            if p.conns.len() > 1 {
                p.conns.retain(|c| c.id != loser);
                self.conn_peer.remove(&loser);
            }
        }
    }

    fn actions(&mut self, addr: IpAddr, id: u64, acts: Vec<Action>) {
        let mut queue = VecDeque::from(acts);
        while let Some(act) = queue.pop_front() {
            let Some(p) = self.peers.get_mut(&addr) else {
                return;
            };
            let Some(c) = p.conns.iter_mut().find(|c| c.id == id) else {
                return;
            };
            match act {
                Action::Connect => {
                    if let Some(old) = c.connecting.take() {
                        old.abort();
                    }
                    c.dir = Direction::Outgoing;
                    let inputs = self.inputs.clone();
                    let target = SocketAddr::new(addr, p.cfg.port);
                    let (local, pw) = (p.cfg.local_address, p.cfg.password.clone());
                    let task = tokio::spawn(async move {
                        let result = connect(target, local, pw).await;
                        let _ = inputs.send(Input::Connected { conn: id, result }).await;
                    });
                    c.connecting = Some(task.abort_handle());
                }
                Action::Send(msg) => {
                    if c.io.is_none() {
                        continue;
                    }
                    if let Message::Notification(n) = &msg {
                        AtomicCounters::add(&self.counters.notifications_sent, 1);
                        p.last_error = Some(format!("sent NOTIFICATION: {}", describe(n)));
                    }
                    let out = self.out.entry(id).or_default();
                    match codec::encode(&msg, &c.ctx, out) {
                        Ok(()) => {
                            p.messages_sent += 1;
                            AtomicCounters::add(&self.counters.messages_sent, 1);
                        }
                        Err(e) => warn!(peer = %addr, error = %e, "encoding a BGP message"),
                    }
                    if matches!(msg, Message::Notification(_)) {
                        // Out before the close that follows.
                        self.write_out(addr, id);
                    }
                }
                Action::StartTimer(t, d) => c.deadlines[t as usize] = Some(Instant::now() + d),
                Action::StopTimer(t) => c.deadlines[t as usize] = None,
                Action::CloseConnection => {
                    self.out.remove(&id);
                    self.closing.retain(|t| !t.is_finished());
                    self.closing.extend(c.close());
                }
                Action::Established(n) => {
                    let local = c.io.as_ref().map(|io| io.local);
                    c.ctx = n.context();
                    info!(peer = %addr, remote_id = %n.remote_id, hold = n.hold_time, "BGP session established");
                    AtomicCounters::add(&self.counters.sessions_established, 1);
                    p.established_since = Some(SystemTime::now());
                    p.prefixes_received = 0;
                    p.end_of_rib.clear();
                    p.families = n.families.clone();
                    p.restart_time = n
                        .graceful_restart
                        .as_ref()
                        .map(|g| Duration::from_secs(g.restart_time.into()));
                    p.last_error = None;
                    if let Some(l) = local {
                        self.local_addrs.insert(l);
                        if p.cfg.local_address.is_none() && p.rib_local != Some(l) {
                            // Next-hop-self needs our address on this session.
                            p.rib_local = Some(l);
                            self.rib.add_peer(Self::rib_peer(&p.cfg, Some(l)));
                        }
                    }
                    self.rib.peer_up(addr, &n);
                }
                Action::Down(d) => {
                    AtomicCounters::add(&self.counters.sessions_dropped, 1);
                    info!(peer = %addr, reason = ?d.reason, keep_routes = d.retain_routes, "BGP session down");
                    p.established_since = None;
                    if let DownReason::HoldTimerExpired = d.reason {
                        p.last_error = Some("hold timer expired".into());
                    }
                    p.restart_deadline = match (d.retain_routes, p.restart_time) {
                        (true, Some(t)) => Some(Instant::now() + t.min(p.cfg.max_restart_time)),
                        _ => None,
                    };
                    self.rib.peer_down(addr, d.retain_routes);
                }
                Action::DeliverUpdate(u) => {
                    if let Some(f) = u.end_of_rib_family() {
                        p.end_of_rib.insert(f);
                        if p.synced() {
                            p.restart_deadline = None;
                        }
                        self.rib.apply_update(addr, u);
                        self.check_synced();
                        continue;
                    }
                    p.prefixes_received +=
                        (u.nlri.len() + u.mp_reach.as_ref().map_or(0, |r| r.nlri.len())) as u64;
                    let max = p.cfg.max_prefixes.is_some();
                    self.rib.apply_update(addr, u);
                    if max {
                        for f in [AddressFamily::Ipv4Unicast, AddressFamily::Ipv6Unicast] {
                            let n = self.rib.prefix_count(addr, f);
                            let more = c.session.handle(Event::PrefixCount(f, n));
                            queue.extend(more);
                        }
                    }
                }
                Action::ResendRoutes(f) => self.rib.resend(addr, f),
            }
        }
    }

    /// Queued bytes of connection `id` to its writer.
    fn write_out(&mut self, addr: IpAddr, id: u64) {
        let Some(bytes) = self.out.remove(&id) else {
            return;
        };
        if let Some(io) = self
            .peers
            .get_mut(&addr)
            .and_then(|p| p.conn(id))
            .and_then(|c| c.io.as_ref())
        {
            let _ = io.writer.send(WriterCmd::Data(bytes));
        }
    }

    fn expire(&mut self, now: Instant) {
        let mut due = Vec::new();
        for (&addr, p) in &mut self.peers {
            for c in &mut p.conns {
                for t in TIMERS {
                    if c.deadlines[t as usize].is_some_and(|d| d <= now) {
                        c.deadlines[t as usize] = None;
                        due.push((addr, c.id, t));
                    }
                }
            }
            if p.restart_deadline.is_some_and(|d| d <= now) {
                p.restart_deadline = None;
                info!(peer = %addr, "graceful restart time over: dropping its stale routes");
                self.rib.restart_timer_expired(addr);
            }
        }
        for (addr, id, t) in due {
            self.event(addr, id, Event::TimerExpired(t));
        }
        if self.stale_deadline.is_some_and(|d| d <= now) {
            self.sweep("timed out waiting for End-of-RIB");
        }
    }

    /// Sweeps the previous run's routes once every peer has resent its table: at the end of
    /// the next flush, after the routes learned before End-of-RIB went to the sink.
    fn check_synced(&mut self) {
        if self.stale.is_some() && !self.peers.is_empty() && self.peers.values().all(Peer::synced) {
            self.sweep_due = true;
        }
    }

    fn sweep(&mut self, why: &str) {
        self.stale_deadline = None;
        if let Some(stale) = self.stale.take() {
            info!(
                routes = stale.len(),
                why, "removing routes of a previous run not learned again"
            );
            self.send_to_sink(stale.into_iter().map(RouteChange::Remove).collect());
        }
    }

    fn send_to_sink(&mut self, changes: Vec<RouteChange>) {
        if let Some(sink) = &self.sink {
            if !changes.is_empty() {
                // Blocks while the sink is SINK_QUEUE batches behind: backpressure.
                let _ = sink.send(changes);
            }
        }
    }

    /// Best paths for everything that changed: routes to the sink, UPDATEs to the peers.
    fn flush(&mut self) {
        let changes = self.rib.flush();
        let mut kernel = Vec::with_capacity(changes.kernel.len());
        for k in changes.kernel {
            let change = match k {
                KernelChange::Install(prefix, next_hop)
                    if !self.local_addrs.contains(&next_hop)
                        && !self.originated.contains(&prefix) =>
                {
                    RouteChange::Install { prefix, next_hop }
                }
                // Via ourselves: never installed (and removed if an earlier one was).
                KernelChange::Install(prefix, _) | KernelChange::Remove(prefix) => {
                    RouteChange::Remove(prefix)
                }
            };
            if let (
                Some(stale),
                RouteChange::Install { prefix, .. } | RouteChange::Remove(prefix),
            ) = (self.stale.as_mut(), change)
            {
                stale.remove(&prefix);
            }
            kernel.push(change);
        }
        self.send_to_sink(kernel);
        if std::mem::take(&mut self.sweep_due) {
            self.sweep("every peer sent End-of-RIB");
        }
        for (addr, updates) in changes.updates {
            let Some(p) = self.peers.get_mut(&addr) else {
                continue;
            };
            let Some(c) = p
                .conns
                .iter_mut()
                .find(|c| c.session.state() == State::Established)
            else {
                continue;
            };
            let out = self.out.entry(c.id).or_default();
            for u in updates {
                let msg = Message::Update(u);
                match codec::encode(&msg, &c.ctx, out) {
                    Ok(()) => {
                        p.messages_sent += 1;
                        AtomicCounters::add(&self.counters.messages_sent, 1);
                        AtomicCounters::add(&self.counters.updates_sent, 1);
                    }
                    Err(e) => warn!(peer = %addr, error = %e, "encoding an UPDATE"),
                }
            }
        }
        let pending: Vec<u64> = self.out.keys().copied().collect();
        for id in pending {
            if let Some(&addr) = self.conn_peer.get(&id) {
                self.write_out(addr, id);
            } else {
                self.out.remove(&id);
            }
        }
    }

    async fn shutdown(mut self, restart: bool) {
        let addrs: Vec<IpAddr> = self.peers.keys().copied().collect();
        if restart {
            info!("BGP speaker stopping for a restart: sessions closed without NOTIFICATION");
            for p in self.peers.values_mut() {
                for c in &mut p.conns {
                    c.abort();
                }
            }
        } else {
            info!("BGP speaker stopping");
            for addr in addrs {
                self.remove_peer(addr);
            }
            self.flush();
            let closing = std::mem::take(&mut self.closing);
            let _ = tokio::time::timeout(CLOSE_GRACE, async {
                for task in closing {
                    let _ = task.await;
                }
            })
            .await;
        }
        // What was queued for the sink is still applied: the routes it holds are exactly
        // those the next instance finds.
        drop(self.sink.take());
        if let Some(thread) = self.sink_thread.take() {
            let (tx, rx) = oneshot::channel();
            std::thread::spawn(move || {
                let _ = thread.join();
                let _ = tx.send(());
            });
            let _ = rx.await;
        }
    }
}
