//! Watching route changes: a socket subscribed to the kernel's route notifications.

use std::fmt;
use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::time::Duration;

use netlink_sys::protocols::NETLINK_ROUTE;
use netlink_sys::{Socket, SocketAddr};
use nix::errno::Errno;
use nix::libc;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use super::{parse, retry_eintr, wire, Route, RECV_BUF};
use crate::netns::NetNs;
use crate::Error;

/// The receive buffer asked for. Notifications queue up until they are read, and the agent
/// may change thousands of routes at once; the memory is only used while events wait.
const MONITOR_RECV_BUF: usize = 8 * 1024 * 1024;

/// Counts route changes: a socket subscribed to `RTNLGRP_IPV4_ROUTE` and
/// `RTNLGRP_IPV6_ROUTE` in the network namespace it was created in.
///
/// The kernel queues events from creation on until they are [drained](Self::drain). If more
/// arrive than the receive buffer holds, the next drain fails (ENOBUFS) rather than
/// under-count.
pub struct RouteMonitor {
    socket: Socket,
    buf: Vec<u8>,
}

impl fmt::Debug for RouteMonitor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RouteMonitor")
            .field("fd", &self.socket.as_raw_fd())
            .finish_non_exhaustive()
    }
}

impl RouteMonitor {
    /// A monitor of the calling thread's network namespace.
    pub fn new() -> Result<Self, Error> {
        let op = "subscribing to route changes";
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(|e| Error::os(op, e))?;
        // Past net.core.rmem_max (often 208 KiB, a few hundred events) when allowed
        // (CAP_NET_ADMIN); otherwise as large as rmem_max lets it be.
        if rustix::net::sockopt::set_socket_recv_buffer_size_force(&socket, MONITOR_RECV_BUF)
            .is_err()
        {
            let size = libc::c_int::try_from(MONITOR_RECV_BUF).unwrap_or(libc::c_int::MAX);
            socket.set_rx_buf_sz(size).map_err(|e| Error::os(op, e))?;
        }
        let groups = (libc::RTMGRP_IPV4_ROUTE | libc::RTMGRP_IPV6_ROUTE) as u32;
        socket
            .bind(&SocketAddr::new(0, groups))
            .map_err(|e| Error::os(op, e))?;
        Ok(RouteMonitor {
            socket,
            buf: vec![0; RECV_BUF],
        })
    }

    /// A monitor created inside `ns` (on a short-lived thread, see [`NetNs::run`]).
    pub fn new_in(ns: &NetNs) -> Result<Self, Error> {
        ns.run(RouteMonitor::new)?
    }

    /// The route changes received until `timeout` passes with nothing new, as
    /// (`RTM_NEWROUTE`, route): true for an added or replaced route, false for a deleted one.
    /// Routes [`Route`] cannot describe (local, broadcast, multicast, unreachable… types, cache
    /// clones) are left out; all tables are included.
    pub fn drain(&mut self, timeout: Duration) -> Result<Vec<(bool, Route)>, Error> {
        let op = "reading route changes";
        let mut events = Vec::new();
        while self.wait(timeout).map_err(|e| Error::os(op, e))? {
            let received = retry_eintr(|| {
                self.socket
                    .recv_from(&mut &mut self.buf[..], libc::MSG_DONTWAIT | libc::MSG_TRUNC)
            });
            let (size, from) = match received {
                Ok(received) => received,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(Error::os(op, e)),
            };
            if size > self.buf.len() {
                return Err(Error::invalid(
                    op,
                    format!("a notification of {size} bytes was larger than the receive buffer"),
                ));
            }
            if from.port_number() != 0 {
                continue; // not from the kernel
            }
            wire::read_notifications(&self.buf[..size], &mut |kind, payload| {
                let is_new = match kind {
                    libc::RTM_NEWROUTE => true,
                    libc::RTM_DELROUTE => false,
                    _ => return Ok(()),
                };
                events.extend(parse::route(payload)?.map(|route| (is_new, route)));
                Ok(())
            })
            .map_err(|f| f.into_error(op.into()))?;
        }
        Ok(events)
    }

    /// Whether a notification (or an error, such as ENOBUFS) is ready within `timeout`.
    fn wait(&self, timeout: Duration) -> nix::Result<bool> {
        // Rounded up: a sub-millisecond timeout must still wait, not just peek.
        let timeout = PollTimeout::try_from(timeout.as_nanos().div_ceil(1_000_000))
            .unwrap_or(PollTimeout::MAX);
        loop {
            let mut fds = [PollFd::new(self.socket.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, timeout) {
                Err(Errno::EINTR) => continue,
                ready => return ready.map(|n| n > 0),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monitors_can_move_between_threads() {
        fn assert_send<T: Send>() {}
        assert_send::<RouteMonitor>();
    }
}
