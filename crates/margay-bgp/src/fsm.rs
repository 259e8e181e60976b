//! The BGP finite state machine of RFC 4271 §8, for one TCP connection, as
//! a pure value: events in, actions out. Timers and sockets belong to the
//! caller, which reports their outcomes back as events.

use std::net::Ipv4Addr;
use std::time::Duration;

use crate::codec::{
    self, cease, code, AddressFamily, Capability, Context, DecodeError, GracefulRestart, Message,
    Notification, Open, OpenError, RouteRefresh, Update,
};

/// The hold time used while waiting for the peer's OPEN (RFC 4271 §8.2.2
/// suggests 4 minutes).
const LARGE_HOLD_TIME: Duration = Duration::from_secs(240);

/// Per-peer settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionConfig {
    pub local_as: u32,
    pub remote_as: u32,
    pub router_id: Ipv4Addr,
    /// Proposed hold time in seconds: 0 (no keepalives) or at least 3.
    pub hold_time: u16,
    /// Seconds between KEEPALIVEs; `None` is a third of the negotiated hold time, which
    /// also caps a configured value.
    pub keepalive_time: Option<u16>,
    pub connect_retry_time: Duration,
    /// Delay before restarting on its own after an error (the optional
    /// IdleHoldTimer of RFC 4271 §8.1.1).
    pub idle_hold_time: Duration,
    pub families: Vec<AddressFamily>,
    pub graceful_restart: Option<GracefulRestartConfig>,
    /// Per-family limit on accepted prefixes (RFC 4486 subcode 1).
    pub max_prefixes: Option<usize>,
}

/// What we advertise as a graceful-restart capable speaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GracefulRestartConfig {
    pub restart_time: u16,
    /// Our forwarding state survives a restart (the agent keeps kernel
    /// routes across restarts).
    pub forwarding_preserved: bool,
}

impl SessionConfig {
    /// IPv4 unicast, hold time 90 s, connect retry 120 s, idle hold 5 s.
    pub fn new(local_as: u32, remote_as: u32, router_id: Ipv4Addr) -> Self {
        SessionConfig {
            local_as,
            remote_as,
            router_id,
            hold_time: 90,
            keepalive_time: None,
            connect_retry_time: Duration::from_secs(120),
            idle_hold_time: Duration::from_secs(5),
            families: vec![AddressFamily::Ipv4Unicast],
            graceful_restart: None,
            max_prefixes: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Idle,
    Connect,
    Active,
    OpenSent,
    OpenConfirm,
    Established,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Timer {
    ConnectRetry,
    Hold,
    Keepalive,
    IdleHold,
}

const TIMERS: [Timer; 4] = [
    Timer::ConnectRetry,
    Timer::Hold,
    Timer::Keepalive,
    Timer::IdleHold,
];

// Same reasoning as for `Message`.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    ManualStart,
    ManualStartPassive,
    ManualStop,
    /// An incoming connection was accepted for this session.
    TcpConnectionConfirmed,
    /// Our outgoing connection completed.
    TcpConnectionAcknowledged,
    TcpConnectionFails,
    TimerExpired(Timer),
    Open(Open),
    Keepalive,
    Update(Update),
    Notification(Notification),
    RouteRefresh(RouteRefresh),
    /// The bytes from the peer did not decode.
    DecodeError(DecodeError),
    /// [`resolve_collision`] chose the other connection.
    OpenCollisionDump,
    /// The peer's Adj-RIB-In size for a family after an UPDATE was applied
    /// (from [`crate::rib::Rib::prefix_count`]).
    PrefixCount(AddressFamily, usize),
}

impl From<Message> for Event {
    fn from(m: Message) -> Self {
        match m {
            Message::Open(o) => Event::Open(o),
            Message::Update(u) => Event::Update(u),
            Message::Notification(n) => Event::Notification(n),
            Message::Keepalive => Event::Keepalive,
            Message::RouteRefresh(r) => Event::RouteRefresh(r),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Open a TCP connection to the peer.
    Connect,
    Send(Message),
    /// Start, or restart, a timer.
    StartTimer(Timer, Duration),
    StopTimer(Timer),
    CloseConnection,
    Established(Negotiated),
    /// Left Established.
    Down(Down),
    /// An UPDATE to apply to the RIB.
    DeliverUpdate(Update),
    /// The peer asked for our routes of a family again (RFC 2918).
    ResendRoutes(AddressFamily),
}

/// What both OPENs agreed on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    pub remote_as: u32,
    pub remote_id: Ipv4Addr,
    /// Seconds; 0 means no hold timer and no keepalives.
    pub hold_time: u16,
    pub keepalive_time: u16,
    pub families: Vec<AddressFamily>,
    pub four_octet_as: bool,
    pub route_refresh: bool,
    /// The peer's graceful-restart capability, when both sides advertised one.
    pub graceful_restart: Option<GracefulRestart>,
}

impl Negotiated {
    /// The codec context for this session's UPDATEs.
    pub fn context(&self) -> Context {
        Context {
            four_octet_as: self.four_octet_as,
            ..Context::default()
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Down {
    pub reason: DownReason,
    /// Graceful restart applies (RFC 4724 §4.2): keep the peer's routes as
    /// stale instead of removing them.
    pub retain_routes: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DownReason {
    ManualStop,
    HoldTimerExpired,
    ConnectionFailed,
    NotificationReceived(Notification),
    NotificationSent(Notification),
}

/// Which side opened a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Outgoing,
    Incoming,
}

/// RFC 4271 §6.8: with two connections to one peer, keep an Established one
/// if there is one, else the one opened by the speaker with the higher BGP
/// identifier. The other gets [`Event::OpenCollisionDump`].
pub fn resolve_collision(
    local_id: Ipv4Addr,
    remote_id: Ipv4Addr,
    established: Option<Direction>,
) -> Direction {
    match established {
        Some(d) => d,
        None if u32::from(local_id) > u32::from(remote_id) => Direction::Outgoing,
        None => Direction::Incoming,
    }
}

/// One connection's state machine.
#[derive(Debug, Clone)]
pub struct Session {
    config: SessionConfig,
    state: State,
    passive: bool,
    /// Restart on our own after errors until a ManualStop.
    auto_start: bool,
    running: [bool; 4],
    remote_open: Option<Open>,
    negotiated: Option<Negotiated>,
}

impl Session {
    pub fn new(config: SessionConfig) -> Self {
        Session {
            config,
            state: State::Idle,
            passive: false,
            auto_start: false,
            running: [false; 4],
            remote_open: None,
            negotiated: None,
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    /// The peer's BGP identifier, once its OPEN arrived (for collisions).
    pub fn remote_id(&self) -> Option<Ipv4Addr> {
        self.remote_open.as_ref().map(|o| o.bgp_id)
    }

    /// Set from OpenConfirm on; what Established reported.
    pub fn negotiated(&self) -> Option<&Negotiated> {
        self.negotiated.as_ref()
    }

    pub fn handle(&mut self, event: Event) -> Vec<Action> {
        let mut acts = Vec::new();
        if let Event::TimerExpired(t) = event {
            // An expiry that raced with stopping the timer is stale.
            if !std::mem::replace(&mut self.running[t as usize], false) {
                return acts;
            }
        }
        match self.state {
            State::Idle => self.idle(event, &mut acts),
            State::Connect | State::Active => self.connecting(event, &mut acts),
            State::OpenSent => self.open_sent(event, &mut acts),
            State::OpenConfirm => self.open_confirm(event, &mut acts),
            State::Established => self.established(event, &mut acts),
        }
        acts
    }

    fn start_timer(&mut self, acts: &mut Vec<Action>, t: Timer, d: Duration) {
        self.running[t as usize] = true;
        acts.push(Action::StartTimer(t, d));
    }

    fn stop_timer(&mut self, acts: &mut Vec<Action>, t: Timer) {
        if std::mem::replace(&mut self.running[t as usize], false) {
            acts.push(Action::StopTimer(t));
        }
    }

    fn hold(&self) -> u16 {
        self.negotiated.as_ref().map_or(0, |n| n.hold_time)
    }

    fn start(&mut self, passive: bool, acts: &mut Vec<Action>) {
        self.passive = passive;
        self.auto_start = true;
        self.start_timer(acts, Timer::ConnectRetry, self.config.connect_retry_time);
        if passive {
            self.state = State::Active;
        } else {
            acts.push(Action::Connect);
            self.state = State::Connect;
        }
    }

    /// Drops the connection and everything learned on it. `restart`: come
    /// back on our own after the idle hold time.
    fn go_idle(&mut self, acts: &mut Vec<Action>, restart: bool, reason: DownReason) {
        acts.push(Action::CloseConnection);
        for t in TIMERS {
            self.stop_timer(acts, t);
        }
        if self.state == State::Established {
            // Graceful restart covers a lost connection, not a NOTIFICATION
            // or an administrative stop (RFC 4724 §4.2).
            let retain_routes = self
                .negotiated
                .as_ref()
                .is_some_and(|n| n.graceful_restart.is_some())
                && matches!(
                    reason,
                    DownReason::HoldTimerExpired | DownReason::ConnectionFailed
                );
            acts.push(Action::Down(Down {
                reason,
                retain_routes,
            }));
        }
        self.state = State::Idle;
        self.remote_open = None;
        self.negotiated = None;
        self.auto_start &= restart;
        if self.auto_start {
            self.start_timer(acts, Timer::IdleHold, self.config.idle_hold_time);
        }
    }

    /// Sends a NOTIFICATION and drops the connection.
    fn fail(&mut self, acts: &mut Vec<Action>, n: Notification, restart: bool) {
        acts.push(Action::Send(Message::Notification(n.clone())));
        self.go_idle(acts, restart, DownReason::NotificationSent(n));
    }

    fn fsm_error(&mut self, acts: &mut Vec<Action>) {
        let subcode = match self.state {
            State::OpenSent => 1,
            State::OpenConfirm => 2,
            _ => 3,
        };
        self.fail(acts, notification(code::FSM, subcode, vec![]), true);
    }

    fn idle(&mut self, event: Event, acts: &mut Vec<Action>) {
        match event {
            Event::ManualStart => self.start(false, acts),
            Event::ManualStartPassive => self.start(true, acts),
            Event::TimerExpired(Timer::IdleHold) if self.auto_start => {
                self.start(self.passive, acts)
            }
            Event::ManualStop => {
                self.auto_start = false;
                self.stop_timer(acts, Timer::IdleHold);
            }
            // RFC 4271 §8.2.2: every other event is ignored in Idle.
            _ => {}
        }
    }

    fn connecting(&mut self, event: Event, acts: &mut Vec<Action>) {
        match event {
            Event::ManualStart | Event::ManualStartPassive => {}
            Event::ManualStop => self.go_idle(acts, false, DownReason::ManualStop),
            Event::TimerExpired(Timer::ConnectRetry) => {
                self.start_timer(acts, Timer::ConnectRetry, self.config.connect_retry_time);
                if !self.passive {
                    // Abandon the attempt in progress and try again.
                    acts.push(Action::CloseConnection);
                    acts.push(Action::Connect);
                    self.state = State::Connect;
                }
            }
            Event::TcpConnectionConfirmed | Event::TcpConnectionAcknowledged => {
                self.stop_timer(acts, Timer::ConnectRetry);
                let open = self.local_open();
                acts.push(Action::Send(Message::Open(open)));
                self.start_timer(acts, Timer::Hold, LARGE_HOLD_TIME);
                self.state = State::OpenSent;
            }
            Event::TcpConnectionFails => self.go_idle(acts, true, DownReason::ConnectionFailed),
            Event::PrefixCount(..) => {}
            _ => self.go_idle(acts, true, DownReason::ConnectionFailed),
        }
    }

    fn open_sent(&mut self, event: Event, acts: &mut Vec<Action>) {
        match event {
            Event::Open(open) => self.receive_open(open, acts),
            Event::TcpConnectionFails => {
                // RFC 4271: back to Active to wait for the peer.
                acts.push(Action::CloseConnection);
                self.stop_timer(acts, Timer::Hold);
                self.start_timer(acts, Timer::ConnectRetry, self.config.connect_retry_time);
                self.state = State::Active;
            }
            other => self.common(other, acts),
        }
    }

    fn open_confirm(&mut self, event: Event, acts: &mut Vec<Action>) {
        match event {
            Event::Keepalive => {
                let negotiated = self.negotiated.clone();
                if let Some(n) = negotiated {
                    if n.hold_time > 0 {
                        self.start_timer(acts, Timer::Hold, secs(n.hold_time));
                    }
                    acts.push(Action::Established(n));
                    self.state = State::Established;
                }
            }
            other => self.common(other, acts),
        }
    }

    fn established(&mut self, event: Event, acts: &mut Vec<Action>) {
        match event {
            Event::Update(u) => {
                self.restart_hold(acts);
                acts.push(Action::DeliverUpdate(u));
            }
            Event::Keepalive => self.restart_hold(acts),
            Event::RouteRefresh(r) => {
                self.restart_hold(acts);
                let negotiated = self.negotiated.as_ref();
                if let Some(f) = r
                    .family()
                    .filter(|f| negotiated.is_some_and(|n| n.families.contains(f)))
                {
                    acts.push(Action::ResendRoutes(f));
                }
            }
            Event::PrefixCount(family, count) => {
                if let Some(max) = self.config.max_prefixes.filter(|&m| count > m) {
                    // Data: AFI, SAFI and the limit (RFC 4486 §4).
                    let (afi, safi) = family.afi_safi();
                    let mut data = afi.to_be_bytes().to_vec();
                    data.push(safi);
                    data.extend_from_slice(&u32::try_from(max).unwrap_or(u32::MAX).to_be_bytes());
                    // No automatic restart: the peer would only exceed again.
                    self.fail(
                        acts,
                        notification(code::CEASE, cease::MAX_PREFIXES, data),
                        false,
                    );
                }
            }
            other => self.common(other, acts),
        }
    }

    /// Events handled alike in OpenSent, OpenConfirm and Established.
    fn common(&mut self, event: Event, acts: &mut Vec<Action>) {
        match event {
            Event::ManualStart | Event::ManualStartPassive | Event::PrefixCount(..) => {}
            Event::TcpConnectionConfirmed | Event::TcpConnectionAcknowledged => {}
            Event::ManualStop => {
                let n = notification(code::CEASE, cease::ADMIN_SHUTDOWN, vec![]);
                acts.push(Action::Send(Message::Notification(n)));
                self.go_idle(acts, false, DownReason::ManualStop);
            }
            Event::OpenCollisionDump => {
                let n = notification(code::CEASE, cease::CONNECTION_COLLISION, vec![]);
                // The surviving connection carries on; this one stays down.
                self.fail(acts, n, false);
            }
            Event::TimerExpired(Timer::Hold) => {
                let n = notification(code::HOLD_TIMER_EXPIRED, 0, vec![]);
                acts.push(Action::Send(Message::Notification(n)));
                self.go_idle(acts, true, DownReason::HoldTimerExpired);
            }
            Event::TimerExpired(Timer::Keepalive) => {
                acts.push(Action::Send(Message::Keepalive));
                if let Some(n) = self.negotiated.as_ref().filter(|n| n.hold_time > 0) {
                    let keepalive = secs(n.keepalive_time);
                    self.start_timer(acts, Timer::Keepalive, keepalive);
                }
            }
            // ConnectRetry and IdleHold do not run in these states.
            Event::TimerExpired(_) => {}
            Event::TcpConnectionFails => self.go_idle(acts, true, DownReason::ConnectionFailed),
            Event::Notification(n) => self.go_idle(acts, true, DownReason::NotificationReceived(n)),
            Event::DecodeError(e) => self.fail(acts, e.notification(), true),
            Event::Open(_) | Event::Keepalive | Event::Update(_) | Event::RouteRefresh(_) => {
                self.fsm_error(acts)
            }
        }
    }

    fn restart_hold(&mut self, acts: &mut Vec<Action>) {
        let hold = self.hold();
        if hold > 0 {
            self.start_timer(acts, Timer::Hold, secs(hold));
        }
    }

    fn local_open(&self) -> Open {
        let c = &self.config;
        let mut caps: Vec<Capability> = c
            .families
            .iter()
            .map(|&f| Capability::Multiprotocol(f))
            .collect();
        caps.push(Capability::RouteRefresh);
        if let Some(gr) = &c.graceful_restart {
            caps.push(Capability::GracefulRestart(GracefulRestart {
                restart_state: false,
                restart_time: gr.restart_time,
                families: c
                    .families
                    .iter()
                    .map(|&f| (f, gr.forwarding_preserved))
                    .collect(),
            }));
        }
        Open::new(c.local_as, c.hold_time, c.router_id, caps)
    }

    fn receive_open(&mut self, open: Open, acts: &mut Vec<Action>) {
        match self.negotiate(&open) {
            Ok(n) => {
                acts.push(Action::Send(Message::Keepalive));
                if n.hold_time > 0 {
                    self.start_timer(acts, Timer::Keepalive, secs(n.keepalive_time));
                    self.start_timer(acts, Timer::Hold, secs(n.hold_time));
                } else {
                    self.stop_timer(acts, Timer::Hold);
                }
                self.remote_open = Some(open);
                self.negotiated = Some(n);
                self.state = State::OpenConfirm;
            }
            Err(e) => self.fail(acts, DecodeError::Open(e).notification(), true),
        }
    }

    fn negotiate(&self, open: &Open) -> Result<Negotiated, OpenError> {
        let c = &self.config;
        codec::validate_open(open)?;
        if open.asn() != c.remote_as {
            return Err(OpenError::BadPeerAs(open.asn()));
        }
        if open.bgp_id == c.router_id {
            return Err(OpenError::BadBgpIdentifier(open.bgp_id));
        }
        let theirs = open.families();
        let families: Vec<_> = c
            .families
            .iter()
            .copied()
            .filter(|f| theirs.contains(f))
            .collect();
        if families.is_empty() {
            let mut data = Vec::new();
            for &f in &c.families {
                codec::encode_capability(&Capability::Multiprotocol(f), &mut data)
                    .map_err(|_| OpenError::Malformed)?;
            }
            return Err(OpenError::UnsupportedCapability(data));
        }
        let hold_time = c.hold_time.min(open.hold_time);
        Ok(Negotiated {
            remote_as: open.asn(),
            remote_id: open.bgp_id,
            hold_time,
            keepalive_time: c
                .keepalive_time
                .map_or(hold_time / 3, |k| k.clamp(1, (hold_time / 3).max(1))),
            families,
            four_octet_as: open.four_octet_as().is_some(),
            route_refresh: open.route_refresh(),
            graceful_restart: c.graceful_restart.and(open.graceful_restart().cloned()),
        })
    }
}

fn secs(s: u16) -> Duration {
    Duration::from_secs(u64::from(s))
}

fn notification(code: u8, subcode: u8, data: Vec<u8>) -> Notification {
    Notification {
        code,
        subcode,
        data,
    }
}
