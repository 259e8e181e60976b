//! In-process backend (`memory://`): a `BTreeMap` plus a bounded change log. Meant for unit
//! tests of other crates; it has the same semantics as the persistent backends.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};

use async_trait::async_trait;
use tokio::sync::watch;

use crate::{
    validate_key, validate_query, Datastore, Error, Event, EventStream, Key, KeyValue, ListResult,
    Query, Read, ReadResult, Result,
};

const BACKEND: &str = "memory";

/// How many revisions of change history a store keeps by default.
pub const DEFAULT_RETENTION: usize = 10_000;

struct State {
    items: BTreeMap<Key, KeyValue>,
    revision: i64,
    /// One event per revision, oldest first.
    changes: VecDeque<Event>,
    /// Oldest revision whose change is still in `changes` (or not yet written).
    compacted: i64,
    retention: usize,
}

struct Shared {
    state: Mutex<State>,
    /// Carries the current revision so that watch streams wake up on writes.
    revision_tx: watch::Sender<i64>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the state half-written (every write
        // mutates after all checks), so a poisoned lock is still usable.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Changes matching `query` after `after`, and the revision the scan covered.
    fn changes_after(&self, query: &Query, after: i64) -> Result<(Vec<Event>, i64)> {
        let state = self.lock();
        if after + 1 < state.compacted {
            return Err(Error::Compacted {
                requested: after + 1,
                compacted: state.compacted,
            });
        }
        let start = state.changes.partition_point(|e| e.revision() <= after);
        let events = state
            .changes
            .range(start..)
            .filter(|e| query.matches(e.key()))
            .cloned()
            .collect();
        Ok((events, state.revision.max(after)))
    }
}

/// The in-memory datastore.
pub struct MemoryDatastore {
    shared: Arc<Shared>,
    name: Option<String>,
}

impl Default for MemoryDatastore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryDatastore {
    /// A fresh, empty store.
    pub fn new() -> Self {
        Self::with_retention(DEFAULT_RETENTION)
    }

    /// A fresh store that keeps only the last `retention` revisions of change history
    /// (tests use a small one to exercise [`Error::Compacted`]).
    pub fn with_retention(retention: usize) -> Self {
        MemoryDatastore {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    items: BTreeMap::new(),
                    revision: 0,
                    changes: VecDeque::new(),
                    compacted: 0,
                    retention: retention.max(1),
                }),
                revision_tx: watch::channel(0).0,
            }),
            name: None,
        }
    }

    /// The store called `name` in this process (`memory://NAME`), created on first use and
    /// kept while anyone holds it.
    pub fn named(name: &str) -> Arc<MemoryDatastore> {
        static REGISTRY: OnceLock<Mutex<HashMap<String, Weak<MemoryDatastore>>>> = OnceLock::new();
        let mut registry = REGISTRY
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(store) = registry.get(name).and_then(Weak::upgrade) {
            return store;
        }
        registry.retain(|_, weak| weak.strong_count() > 0);
        let mut store = MemoryDatastore::new();
        store.name = Some(name.to_owned());
        let store = Arc::new(store);
        registry.insert(name.to_owned(), Arc::downgrade(&store));
        store
    }

    /// Drops the change history before `revision`, like etcd's compaction: watches that need
    /// an older revision then fail with [`Error::Compacted`].
    pub fn compact(&self, revision: i64) -> Result<()> {
        let mut state = self.shared.lock();
        if revision > state.revision {
            return Err(Error::Backend {
                backend: BACKEND,
                message: format!(
                    "cannot compact to revision {revision}: the store is at {}",
                    state.revision
                ),
            });
        }
        compact_to(&mut state, revision);
        Ok(())
    }

    /// Runs one write under the lock: `f` checks and mutates the items given the new
    /// revision; the revision and change log advance only if it succeeds.
    fn write(
        &self,
        f: impl FnOnce(&mut State, i64) -> Result<(KeyValue, Event)>,
    ) -> Result<KeyValue> {
        let (kv, revision) = {
            let mut state = self.shared.lock();
            let revision = state.revision + 1;
            let (kv, event) = f(&mut state, revision)?;
            state.revision = revision;
            state.changes.push_back(event);
            if state.changes.len() > state.retention {
                let oldest_kept = revision - state.retention as i64 + 1;
                compact_to(&mut state, oldest_kept);
            }
            (kv, revision)
        };
        self.shared.revision_tx.send_replace(revision);
        Ok(kv)
    }
}

fn list_items(state: &State, query: &Query) -> ListResult {
    let items = state
        .items
        .values()
        .filter(|kv| query.matches(&kv.key))
        .cloned()
        .collect();
    ListResult {
        items,
        revision: state.revision,
    }
}

fn compact_to(state: &mut State, revision: i64) {
    if revision <= state.compacted {
        return;
    }
    let drop = state.changes.partition_point(|e| e.revision() < revision);
    state.changes.drain(..drop);
    state.compacted = revision;
}

#[async_trait]
impl Datastore for MemoryDatastore {
    async fn get(&self, key: &Key) -> Result<Option<KeyValue>> {
        validate_key(BACKEND, key)?;
        Ok(self.shared.lock().items.get(key).cloned())
    }

    async fn list(&self, query: &Query) -> Result<ListResult> {
        validate_query(BACKEND, query)?;
        Ok(list_items(&self.shared.lock(), query))
    }

    async fn read_many(&self, reads: &[Read]) -> Result<Vec<ReadResult>> {
        for read in reads {
            match read {
                Read::Get(key) => validate_key(BACKEND, key)?,
                Read::List(query) => validate_query(BACKEND, query)?,
            }
        }
        let state = self.shared.lock();
        Ok(reads
            .iter()
            .map(|read| match read {
                Read::Get(key) => ReadResult::Get(state.items.get(key).cloned()),
                Read::List(query) => ReadResult::List(list_items(&state, query)),
            })
            .collect())
    }

    async fn create(&self, key: &Key, value: &[u8]) -> Result<KeyValue> {
        validate_key(BACKEND, key)?;
        self.write(|state, revision| {
            if state.items.contains_key(key) {
                return Err(Error::AlreadyExists(key.clone()));
            }
            let kv = KeyValue {
                key: key.clone(),
                value: value.to_vec(),
                create_revision: revision,
                mod_revision: revision,
            };
            state.items.insert(key.clone(), kv.clone());
            Ok((kv.clone(), Event::Put(kv)))
        })
    }

    async fn update(&self, key: &Key, value: &[u8], expected_revision: i64) -> Result<KeyValue> {
        validate_key(BACKEND, key)?;
        self.write(|state, revision| {
            let current = state
                .items
                .get_mut(key)
                .ok_or_else(|| Error::NotFound(key.clone()))?;
            if current.mod_revision != expected_revision {
                return Err(Error::Conflict {
                    key: key.clone(),
                    expected: expected_revision,
                    actual: current.mod_revision,
                });
            }
            current.value = value.to_vec();
            current.mod_revision = revision;
            Ok((current.clone(), Event::Put(current.clone())))
        })
    }

    async fn delete(&self, key: &Key, expected_revision: Option<i64>) -> Result<KeyValue> {
        validate_key(BACKEND, key)?;
        self.write(|state, revision| {
            let current = state
                .items
                .get(key)
                .ok_or_else(|| Error::NotFound(key.clone()))?;
            if let Some(expected) = expected_revision {
                if current.mod_revision != expected {
                    return Err(Error::Conflict {
                        key: key.clone(),
                        expected,
                        actual: current.mod_revision,
                    });
                }
            }
            let old = state
                .items
                .remove(key)
                .ok_or_else(|| Error::NotFound(key.clone()))?;
            Ok((
                old,
                Event::Delete {
                    key: key.clone(),
                    revision,
                },
            ))
        })
    }

    async fn watch(&self, query: &Query, after_revision: i64) -> Result<EventStream> {
        validate_query(BACKEND, query)?;
        // Fail now, not as the first item, when the history is already gone.
        self.shared.changes_after(query, after_revision)?;
        let state = WatchState {
            shared: self.shared.clone(),
            revision_rx: self.shared.revision_tx.subscribe(),
            query: query.clone(),
            last: after_revision,
            pending: VecDeque::new(),
            failed: false,
        };
        Ok(Box::pin(futures::stream::unfold(state, next_event)))
    }

    async fn revision(&self) -> Result<i64> {
        Ok(self.shared.lock().revision)
    }

    fn describe(&self) -> String {
        format!("memory://{}", self.name.as_deref().unwrap_or(""))
    }
}

struct WatchState {
    shared: Arc<Shared>,
    revision_rx: watch::Receiver<i64>,
    query: Query,
    /// Revision up to which the change log has been read.
    last: i64,
    pending: VecDeque<Event>,
    failed: bool,
}

async fn next_event(mut st: WatchState) -> Option<(Result<Event>, WatchState)> {
    loop {
        if let Some(event) = st.pending.pop_front() {
            return Some((Ok(event), st));
        }
        if st.failed {
            return None;
        }
        // Mark the current revision seen before reading, so a write landing after the read
        // still wakes `changed()` below.
        st.revision_rx.borrow_and_update();
        match st.shared.changes_after(&st.query, st.last) {
            Ok((events, scanned)) => {
                st.last = scanned;
                st.pending.extend(events);
            }
            Err(e) => {
                st.failed = true;
                return Some((Err(e), st));
            }
        }
        if st.pending.is_empty() && st.revision_rx.changed().await.is_err() {
            return None;
        }
    }
}
