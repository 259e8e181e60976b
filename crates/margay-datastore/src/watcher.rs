//! List-then-watch that survives compaction: what long-running components (the node agent)
//! use to mirror a set of resources.

use std::time::Duration;

use futures::{Stream, StreamExt};
use tracing::{debug, warn};

use crate::{Error, Event, EventStream, ListResult, Query, Result, SharedDatastore};

/// What [`watch_with_relist`] yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchUpdate {
    /// The full current state; replaces everything seen before.
    Snapshot(ListResult),
    /// One change after the last snapshot or event.
    Event(Event),
}

const INITIAL_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Lists `query`, then watches from the list's revision. When the watch history is compacted
/// or the watch ends, it relists and yields a new [`WatchUpdate::Snapshot`]. Other errors
/// are yielded as `Err` items (for the caller to log) and retried after a backoff, so the
/// stream never ends by itself: drop it to stop.
pub fn watch_with_relist(
    ds: SharedDatastore,
    query: Query,
) -> impl Stream<Item = Result<WatchUpdate>> + Send {
    let state = State {
        ds,
        query,
        phase: Phase::List,
        delay: None,
        backoff: INITIAL_BACKOFF,
    };
    futures::stream::unfold(state, step)
}

enum Phase {
    List,
    Watch { after: i64 },
    Watching { stream: EventStream, after: i64 },
}

struct State {
    ds: SharedDatastore,
    query: Query,
    phase: Phase,
    /// Wait before the next attempt (set after an error).
    delay: Option<Duration>,
    backoff: Duration,
}

impl State {
    /// Arranges a backoff before the next attempt and hands back the error to yield.
    fn retry_later(&mut self, err: Error) -> Result<WatchUpdate> {
        self.delay = Some(self.backoff);
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        Err(err)
    }
}

async fn step(mut st: State) -> Option<(Result<WatchUpdate>, State)> {
    loop {
        if let Some(delay) = st.delay.take() {
            tokio::time::sleep(delay).await;
        }
        match std::mem::replace(&mut st.phase, Phase::List) {
            Phase::List => match st.ds.list(&st.query).await {
                Ok(list) => {
                    debug!(kind = %st.query.kind, revision = list.revision, items = list.items.len(), "listed");
                    st.phase = Phase::Watch {
                        after: list.revision,
                    };
                    st.backoff = INITIAL_BACKOFF;
                    return Some((Ok(WatchUpdate::Snapshot(list)), st));
                }
                Err(e) => {
                    warn!(kind = %st.query.kind, error = %e, "list failed; retrying");
                    let item = st.retry_later(e);
                    return Some((item, st));
                }
            },
            Phase::Watch { after } => match st.ds.watch(&st.query, after).await {
                Ok(stream) => st.phase = Phase::Watching { stream, after },
                Err(Error::Compacted { .. }) => {
                    debug!(kind = %st.query.kind, after, "watch history compacted; relisting");
                }
                Err(e) => {
                    warn!(kind = %st.query.kind, error = %e, "watch failed; retrying");
                    st.phase = Phase::Watch { after };
                    let item = st.retry_later(e);
                    return Some((item, st));
                }
            },
            Phase::Watching { mut stream, after } => match stream.next().await {
                Some(Ok(event)) => {
                    st.phase = Phase::Watching {
                        stream,
                        after: event.revision(),
                    };
                    st.backoff = INITIAL_BACKOFF;
                    return Some((Ok(WatchUpdate::Event(event)), st));
                }
                Some(Err(Error::Compacted { .. })) => {
                    debug!(kind = %st.query.kind, after, "watch fell behind compaction; relisting");
                }
                Some(Err(e)) => {
                    warn!(kind = %st.query.kind, error = %e, "watch broke; resuming");
                    st.phase = Phase::Watch { after };
                    let item = st.retry_later(e);
                    return Some((item, st));
                }
                None => {
                    warn!(kind = %st.query.kind, after, "watch ended unexpectedly; relisting");
                    // Pause first, so a backend that keeps ending watches cannot make this spin.
                    st.delay = Some(st.backoff);
                    st.backoff = (st.backoff * 2).min(MAX_BACKOFF);
                }
            },
        }
    }
}
