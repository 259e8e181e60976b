//! Margay's BGP-4: a pure core with no I/O (no sockets, no clocks, no tasks),
//! and [`speaker`], the tokio runtime that drives it over TCP.
//!
//! The node agent uses the speaker: [`speaker::Speaker::start`] with a
//! [`speaker::SpeakerConfig`] and a [`sink::RouteSink`] (the kernel through
//! [`sink::NetlinkSink`], or [`sink::MemorySink`] in tests), then
//! [`set_peers`](speaker::Speaker::set_peers) and
//! [`set_originated`](speaker::Speaker::set_originated) whenever the
//! datastore changes, [`status`](speaker::Speaker::status) and
//! [`counters`](speaker::Speaker::counters) for `margay-ctl` and metrics, and
//! [`shutdown`](speaker::Speaker::shutdown) or
//! [`shutdown_for_restart`](speaker::Speaker::shutdown_for_restart) (graceful
//! restart: peers keep our routes, the kernel keeps theirs) on the way out.
//! The speaker accepts and makes connections (TCP MD5 keys through
//! `margay_sys::tcp_md5`), resolves collisions, runs the timers, answers
//! every undecodable message with the NOTIFICATION the codec maps, reflects
//! routes when given a cluster id, and hands best routes to the sink in
//! batches from a thread of its own, never installing routes via this node
//! or its own prefixes.
//!
//! The core, for whoever drives it another way:
//!
//! - [`codec`]: [`codec::decode`] takes the bytes read so far and returns
//!   one [`codec::Message`] and how many bytes it used, `Ok(None)` when more
//!   are needed, or a [`codec::DecodeError`] whose
//!   [`notification`](codec::DecodeError::notification) is the NOTIFICATION
//!   to send. [`codec::encode`] writes a message. Both take the session's
//!   [`codec::Context`] (4-octet ASNs or not, from
//!   [`fsm::Negotiated::context`]).
//! - [`fsm::Session`]: one per TCP connection. Feed it [`fsm::Event`]s
//!   (start/stop, connection outcomes, timer expiries, decoded messages or
//!   decode errors) and carry out the [`fsm::Action`]s it returns: connect,
//!   send, start/stop timers, close. With two connections to one peer, ask
//!   [`fsm::resolve_collision`] which to keep and give the other
//!   [`fsm::Event::OpenCollisionDump`].
//! - [`rib::Rib`]: one per speaker. On [`fsm::Action::Established`] call
//!   [`rib::Rib::peer_up`]; on [`fsm::Action::DeliverUpdate`]
//!   [`rib::Rib::apply_update`] (then report [`rib::Rib::prefix_count`] to
//!   the session as [`fsm::Event::PrefixCount`] for max-prefix); on
//!   [`fsm::Action::Down`] [`rib::Rib::peer_down`] with its `retain_routes`,
//!   and after the peer's graceful-restart time without a new session
//!   [`rib::Rib::restart_timer_expired`]; on [`fsm::Action::ResendRoutes`]
//!   [`rib::Rib::resend`]. Local IPAM blocks go in with
//!   [`rib::Rib::originate`]. After a batch of input, [`rib::Rib::flush`]
//!   returns the kernel route changes and the UPDATEs to send to each peer.
//!
//! ```
//! use margay_bgp::codec::{self, Context, Message};
//! use margay_bgp::fsm::{Action, Event, Session, SessionConfig};
//!
//! let mut s = Session::new(SessionConfig::new(64512, 64512, "10.0.0.1".parse().unwrap()));
//! assert!(s.handle(Event::ManualStart).contains(&Action::Connect));
//! let mut wire = Vec::new();
//! codec::encode(&Message::Keepalive, &Context::default(), &mut wire).unwrap();
//! let d = codec::decode(&wire, &Context::default()).unwrap().unwrap();
//! assert_eq!((d.message, d.len), (Message::Keepalive, 19));
//! ```

pub mod codec;
pub mod fsm;
pub mod rib;
pub mod sink;
pub mod speaker;
