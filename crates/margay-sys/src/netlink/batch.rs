//! Many route changes per system call: a BGP speaker installs routes by the hundred
//! thousand, and one request-and-ACK round trip each would dominate the time.

use netlink_packet_core::{NetlinkBuffer, NLMSG_ERROR, NLM_F_ACK, NLM_F_CREATE, NLM_F_REPLACE};

use super::{build, retry_eintr, wire, Route, RouteSocket};
use crate::Error;

/// Requests per datagram. Only failures are answered before the last request's ACK, and an
/// answer to a failure echoes the request: 128 of them stay well inside the default socket
/// receive buffer (about 200 KiB), so no answer is ever dropped for lack of room.
const PER_DATAGRAM: usize = 128;

/// One change for [`RouteSocket::apply_routes`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteOp {
    /// Add, or replace the route with the same destination, as [`RouteSocket::replace_route`].
    Replace(Route),
    /// As [`RouteSocket::delete_route`].
    Delete(Route),
}

impl RouteSocket {
    /// Applies `ops` in order, [`PER_DATAGRAM`] requests per `sendmsg`. Only the last request
    /// of each datagram asks for an ACK; the kernel answers the others only when it refuses
    /// them, so a datagram costs one send and one or two receives instead of a round trip per
    /// route.
    ///
    /// Returns the refused changes, as (index into `ops`, error); a missing route on delete
    /// is among them ([`Error::is_not_found`]). `Err` means the socket itself failed: the
    /// changes from the failing datagram on are in an unknown state.
    pub fn apply_routes(&mut self, ops: &[RouteOp]) -> Result<Vec<(usize, Error)>, Error> {
        let mut refused = Vec::new();
        let mut request = Vec::with_capacity(PER_DATAGRAM * 64);
        for (chunk_no, chunk) in ops.chunks(PER_DATAGRAM).enumerate() {
            let base = chunk_no * PER_DATAGRAM;
            request.clear();
            let first_seq = self.seq.wrapping_add(1);
            let mut last_offset = 0;
            for op in chunk {
                self.seq = self.seq.wrapping_add(1);
                let (msg, flags) = match op {
                    RouteOp::Replace(r) => (build::new_route(r), NLM_F_CREATE | NLM_F_REPLACE),
                    RouteOp::Delete(r) => (build::delete_route(r), 0),
                };
                last_offset = request.len();
                request.extend_from_slice(&wire::encode(msg, flags, self.seq));
            }
            let mut last = NetlinkBuffer::new(&mut request[last_offset..]);
            let flags = last.flags();
            last.set_flags(flags | NLM_F_ACK);
            let last_seq = self.seq;
            self.send_batch(&request, first_seq, last_seq, |seq, failure| {
                let i = seq.wrapping_sub(first_seq) as usize;
                let op = &chunk[i];
                let what = match op {
                    RouteOp::Replace(r) => format!("replacing route {r}"),
                    RouteOp::Delete(r) => format!("deleting route {r}"),
                };
                refused.push((base + i, failure.into_error(what)));
            })
            .map_err(|f| {
                f.into_error(format!(
                    "applying {} route changes from #{base}",
                    ops.len() - base
                ))
            })?;
        }
        Ok(refused)
    }

    /// Sends one datagram of requests numbered `first_seq..=last_seq` and reads answers until
    /// the last one's ACK, handing each refusal to `on_refused`.
    fn send_batch(
        &mut self,
        request: &[u8],
        first_seq: u32,
        last_seq: u32,
        mut on_refused: impl FnMut(u32, wire::Failure),
    ) -> Result<(), wire::Failure> {
        retry_eintr(|| self.socket.send(request, 0)).map_err(wire::Failure::Io)?;
        let in_batch = |seq: u32| seq.wrapping_sub(first_seq) <= last_seq.wrapping_sub(first_seq);
        loop {
            let (size, from) = match self.recv(0) {
                Ok(r) => r,
                Err(e) => {
                    // ENOBUFS: answers were dropped; whatever is still queued belongs to this
                    // batch and must not be mistaken for the next request's.
                    self.drain();
                    return Err(wire::Failure::Io(e));
                }
            };
            if size > self.buf.len() {
                // An answer echoing a request never comes near the 32 KiB buffer.
                self.drain();
                return Err(wire::Failure::Truncated { size });
            }
            if from.port_number() != 0 {
                continue;
            }
            let mut done = false;
            let mut rest = &self.buf[..size];
            while !rest.is_empty() {
                let msg = NetlinkBuffer::new_checked(rest)?;
                let (seq, len) = (msg.sequence_number(), msg.length() as usize);
                if msg.message_type() == NLMSG_ERROR && in_batch(seq) {
                    let mut interrupted = false;
                    let mut ignore = |_: u16, _: &[u8]| Ok(());
                    match wire::read_datagram(
                        &rest[..len],
                        seq,
                        true,
                        &mut interrupted,
                        &mut ignore,
                    ) {
                        Ok(_) => {}
                        Err(f @ wire::Failure::Kernel { .. }) => on_refused(seq, f),
                        Err(f) => return Err(f),
                    }
                    done |= seq == last_seq;
                }
                rest = rest.get(len.next_multiple_of(4)..).unwrap_or_default();
            }
            if done {
                return Ok(());
            }
        }
    }
}
