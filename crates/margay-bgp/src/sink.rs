//! Where the speaker's best routes go: the side-effect seam. [`NetlinkSink`] programs the
//! kernel's main table; [`MemorySink`] keeps them in memory for tests.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use ipnet::IpNet;
use margay_sys::netlink::{Route, RouteOp, RouteSocket, RouteType};

/// One change to the forwarding table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteChange {
    /// Add the route, or replace the one with the same prefix.
    Install { prefix: IpNet, next_hop: IpAddr },
    /// Remove the route; one that is not there is not an error.
    Remove(IpNet),
}

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error(transparent)]
    Sys(#[from] margay_sys::Error),
    /// Some changes of a batch were refused; the others were applied.
    #[error("{refused} of {total} route changes refused, the first: {first}")]
    Refused {
        refused: usize,
        total: usize,
        first: margay_sys::Error,
    },
}

/// The forwarding table the speaker writes to. The speaker calls it from a thread of its own,
/// in batches, so a slow table never stalls the BGP sessions.
pub trait RouteSink: Send + 'static {
    /// The routes a previous run of the speaker left installed. They are kept, as stale,
    /// until the peers have sent their tables again (End-of-RIB) or a timeout passes; those
    /// not learned again are then removed. This is how forwarding survives a restart.
    fn installed(&mut self) -> Result<Vec<IpNet>, SinkError>;

    /// Applies `changes` in order.
    fn apply(&mut self, changes: &[RouteChange]) -> Result<(), SinkError>;
}

/// Changes converted to requests at a time.
const OPS_PER_CALL: usize = 1024;

/// The kernel's main table, through rtnetlink, with the routes tagged with one
/// `rtm_protocol` so that the sink only ever sees and removes its own.
#[derive(Debug)]
pub struct NetlinkSink {
    sock: RouteSocket,
    protocol: u8,
    ops: Vec<RouteOp>,
}

impl NetlinkSink {
    /// Writes through `sock` (whose namespace it programs) with routes of `protocol`,
    /// normally [`Route::PROTO_MARGAY`].
    pub fn new(sock: RouteSocket, protocol: u8) -> Self {
        NetlinkSink {
            sock,
            protocol,
            ops: Vec::new(),
        }
    }

    fn route(&self, prefix: IpNet, next_hop: Option<IpAddr>) -> Route {
        Route {
            gateway: next_hop,
            protocol: self.protocol,
            ..Route::new(prefix)
        }
    }
}

impl RouteSink for NetlinkSink {
    /// Only routes of this sink's protocol that have a gateway and nothing else: the shape
    /// it writes. Blackholes and device routes (the agent's own, should it share the
    /// protocol) are never treated as stale BGP routes.
    fn installed(&mut self) -> Result<Vec<IpNet>, SinkError> {
        let mut found = Vec::new();
        for ipv6 in [false, true] {
            found.extend(
                self.sock
                    .routes(ipv6)?
                    .into_iter()
                    .filter(|r| {
                        r.protocol == self.protocol
                            && r.kind == RouteType::Unicast
                            && r.gateway.is_some()
                            && !r.onlink
                    })
                    .map(|r| r.destination),
            );
        }
        Ok(found)
    }

    fn apply(&mut self, changes: &[RouteChange]) -> Result<(), SinkError> {
        let mut ops = std::mem::take(&mut self.ops);
        let (mut refused, mut first) = (0, None);
        // In slices, so the requests built for the kernel never outgrow one slice.
        for chunk in changes.chunks(OPS_PER_CALL) {
            ops.clear();
            ops.extend(chunk.iter().map(|c| match *c {
                RouteChange::Install { prefix, next_hop } => {
                    RouteOp::Replace(self.route(prefix, Some(next_hop)))
                }
                RouteChange::Remove(prefix) => RouteOp::Delete(self.route(prefix, None)),
            }));
            let result = self.sock.apply_routes(&ops);
            let failures = match result {
                Ok(f) => f,
                Err(e) => {
                    self.ops = ops;
                    return Err(e.into());
                }
            };
            for (i, e) in failures {
                if matches!(chunk[i], RouteChange::Remove(_)) && e.is_not_found() {
                    continue;
                }
                refused += 1;
                first.get_or_insert(e);
            }
        }
        self.ops = ops;
        match first {
            None => Ok(()),
            Some(first) => Err(SinkError::Refused {
                refused,
                total: changes.len(),
                first,
            }),
        }
    }
}

/// A table in memory, shared by its clones: tests hand one to the speaker and read the
/// routes from another.
#[derive(Debug, Clone, Default)]
pub struct MemorySink {
    state: Arc<Mutex<MemoryState>>,
}

#[derive(Debug, Default)]
struct MemoryState {
    routes: BTreeMap<IpNet, IpAddr>,
    batches: usize,
}

impl MemorySink {
    pub fn new() -> Self {
        MemorySink::default()
    }

    /// A table that already holds `routes`, as a previous run would have left it.
    pub fn with_routes(routes: impl IntoIterator<Item = (IpNet, IpAddr)>) -> Self {
        let sink = MemorySink::default();
        sink.lock().routes.extend(routes);
        sink
    }

    pub fn routes(&self) -> BTreeMap<IpNet, IpAddr> {
        self.lock().routes.clone()
    }

    /// How many [`RouteSink::apply`] calls there were.
    pub fn batches(&self) -> usize {
        self.lock().batches
    }

    fn lock(&self) -> MutexGuard<'_, MemoryState> {
        // A panicking test thread must not hide the table from the others.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl RouteSink for MemorySink {
    fn installed(&mut self) -> Result<Vec<IpNet>, SinkError> {
        Ok(self.lock().routes.keys().copied().collect())
    }

    fn apply(&mut self, changes: &[RouteChange]) -> Result<(), SinkError> {
        let mut state = self.lock();
        state.batches += 1;
        for c in changes {
            match *c {
                RouteChange::Install { prefix, next_hop } => {
                    state.routes.insert(prefix, next_hop);
                }
                RouteChange::Remove(prefix) => {
                    state.routes.remove(&prefix);
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_sink_applies_in_order_and_shares_its_table() {
        let mut sink = MemorySink::with_routes([(
            "10.1.0.0/24".parse().unwrap(),
            "192.0.2.1".parse().unwrap(),
        )]);
        let reader = sink.clone();
        let p: IpNet = "10.2.0.0/24".parse().unwrap();
        sink.apply(&[
            RouteChange::Install {
                prefix: p,
                next_hop: "192.0.2.2".parse().unwrap(),
            },
            RouteChange::Remove("10.1.0.0/24".parse().unwrap()),
            RouteChange::Remove("10.3.0.0/24".parse().unwrap()),
        ])
        .unwrap();
        assert_eq!(
            reader.routes().into_iter().collect::<Vec<_>>(),
            [(p, "192.0.2.2".parse().unwrap())]
        );
        assert_eq!(reader.batches(), 1);
        assert_eq!(sink.installed().unwrap(), [p]);
    }
}
