//! Embedded backend (`sqlite://PATH`): one SQLite file shared by every process on the node
//! (CNI invocations, the agent, the CLI).
//!
//! Schema:
//! - `meta`: one row holding the global `revision` and `compacted`, the oldest revision whose
//!   change is still in `changes`.
//! - `kv(kind, namespace, name, value, create_rev, mod_rev)`: current values. Cluster-scoped
//!   keys have a NULL namespace; uniqueness goes through `ifnull(namespace, '')`, which is
//!   unambiguous because empty namespaces are rejected.
//! - `changes(rev, kind, namespace, name, op, value, create_rev)`: one row per revision
//!   (`op` is `put` or `delete`), which watchers poll. Only the last
//!   [`SqliteOptions::history_retention`] revisions are kept.
//!
//! Concurrency: WAL mode so readers never block the writer, a busy timeout so writers queue
//! for the lock instead of failing, and `BEGIN IMMEDIATE` for every write so the
//! read-check-write of a compare-and-swap holds the write lock throughout.
//!
//! Short-lived processes ([`SqliteOptions::short_lived`]: CLI commands, CNI invocations) run
//! statements on the calling thread and leave the WAL behind when they exit; see the option.

use std::cell::Cell;
use std::ffi::c_int;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use std::os::fd::AsFd;

use async_trait::async_trait;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use rusqlite::config::DbConfig;
use rusqlite::hooks::Wal;
use rusqlite::{params, Connection, OptionalExtension, Transaction, TransactionBehavior};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::{
    validate_key, validate_query, Datastore, Error, Event, EventStream, Key, KeyValue, ListResult,
    Query, Read, ReadResult, Result,
};

const BACKEND: &str = "sqlite";
const SCHEMA_VERSION: i64 = 1;
/// Rows a watcher reads per poll; it polls again at once when a batch was full.
const WATCH_BATCH: i64 = 1000;
/// WAL size (pages) at which a short-lived process's commit checkpoints the WAL (SQLite's
/// automatic checkpoint, for the others, is at 1000). A process that opens the file when no
/// other has it open re-reads the whole WAL (about 2 µs a page) and a checkpoint costs
/// fsyncs whatever the size: an allocation writes about 10 pages, so this checkpoints every
/// 20 or so and re-reads 100 pages on average.
const SHORT_LIVED_CHECKPOINT: c_int = 200;
/// After a checkpoint the WAL file is cut back to this size (it keeps the size of the
/// largest transaction otherwise, say an apply of many documents).
const JOURNAL_SIZE_LIMIT: i64 = 4 << 20;

/// Tuning for [`SqliteDatastore::open`].
#[derive(Debug, Clone)]
pub struct SqliteOptions {
    /// Revisions of change history kept for watchers (older ones are trimmed on write).
    pub history_retention: i64,
    /// How long a statement waits for another process's lock before failing.
    pub busy_timeout: Duration,
    /// How often a watch checks the file for new changes.
    pub poll_interval: Duration,
    /// For a process that opens the store for a few operations and exits (a CLI command, a
    /// CNI invocation):
    /// - Statements run on the calling thread instead of tokio's blocking pool. Such a
    ///   process has nothing else to schedule while a statement runs (it would wait for the
    ///   result anyway), so the pool only adds thread start-ups and hand-offs. A
    ///   long-running process must leave this off: a statement waiting on another process's
    ///   lock (up to `busy_timeout`) would stall every task on its thread.
    /// - Closing does not checkpoint. The last connection to close normally copies the WAL
    ///   into the database and deletes the WAL and shared-memory files, so every CNI
    ///   invocation on an otherwise idle node paid a checkpoint (fsyncs) and re-created both
    ///   files (another fsync, of the directory). Instead, the commit that brings the WAL to
    ///   200 pages checkpoints it and empties the file. Durability is `synchronous=NORMAL`'s
    ///   either way: a commit survives a crash of the process at once, and an OS crash or
    ///   power loss once a checkpoint has synced it.
    pub short_lived: bool,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        SqliteOptions {
            history_retention: 10_000,
            busy_timeout: Duration::from_secs(10),
            poll_interval: Duration::from_millis(25),
            short_lived: false,
        }
    }
}

/// Maps rusqlite errors into [`Error::Backend`].
trait SqlResultExt<T> {
    fn db(self) -> Result<T>;
}

impl<T> SqlResultExt<T> for rusqlite::Result<T> {
    fn db(self) -> Result<T> {
        self.map_err(|e| backend_error(e.to_string()))
    }
}

fn backend_error(message: String) -> Error {
    Error::Backend {
        backend: BACKEND,
        message,
    }
}

/// The SQLite datastore.
pub struct SqliteDatastore {
    path: PathBuf,
    opts: SqliteOptions,
    /// One connection per process is plenty: SQLite serializes writers anyway, and the
    /// mutex keeps `Connection` (which is not `Sync`) on one thread at a time.
    conn: Arc<Mutex<Connection>>,
}

impl SqliteDatastore {
    /// Opens (creating it, its parent directory and its schema if needed) the database file.
    pub async fn open(path: impl Into<PathBuf>, opts: SqliteOptions) -> Result<Self> {
        let path = path.into();
        let open = {
            let (path, opts) = (path.clone(), opts.clone());
            move || {
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir).map_err(|e| {
                        backend_error(format!("cannot create directory {}: {e}", dir.display()))
                    })?;
                }
                let mut conn = open_connection(&path, &opts)?;
                init_schema(&mut conn)?;
                Ok(conn)
            }
        };
        let conn = if opts.short_lived {
            open()?
        } else {
            blocking(open).await?
        };
        debug!(path = %path.display(), "opened sqlite datastore");
        Ok(SqliteDatastore {
            path,
            opts,
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Drops the change history before `revision` (as etcd's compaction does): watches that
    /// need an older revision then fail with [`Error::Compacted`].
    pub async fn compact(&self, revision: i64) -> Result<()> {
        self.with_conn(move |conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .db()?;
            let (current, _) = read_meta(&tx)?;
            if revision > current {
                return Err(backend_error(format!(
                    "cannot compact to revision {revision}: the store is at {current}"
                )));
            }
            compact_to(&tx, revision)?;
            tx.commit().db()
        })
        .await
    }

    /// Runs `f` with the connection: on the calling thread when short-lived, else on the
    /// blocking thread pool.
    async fn with_conn<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        if self.opts.short_lived {
            return with_locked(&self.conn, f);
        }
        let conn = self.conn.clone();
        blocking(move || with_locked(&conn, f)).await
    }

    /// One write transaction: `f` checks and writes given the new revision; the revision
    /// is bumped and the change recorded only if it succeeds.
    async fn write(
        &self,
        f: impl FnOnce(&Transaction<'_>, i64) -> Result<(KeyValue, Change)> + Send + 'static,
    ) -> Result<KeyValue> {
        let retention = self.opts.history_retention.max(1);
        let (short_lived, busy_timeout) = (self.opts.short_lived, self.opts.busy_timeout);
        self.with_conn(move |conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .db()?;
            let (current, compacted) = read_meta(&tx)?;
            let revision = current + 1;
            let (kv, change) = f(&tx, revision)?;
            let (op, value, create_rev) = match &change {
                Change::Put => ("put", Some(kv.value.as_slice()), Some(kv.create_revision)),
                Change::Delete => ("delete", None, None),
            };
            execute(
                &tx,
                "INSERT INTO changes (rev, kind, namespace, name, op, value, create_rev)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    revision,
                    kv.key.kind,
                    kv.key.namespace,
                    kv.key.name,
                    op,
                    value,
                    create_rev
                ],
            )?;
            execute(&tx, "UPDATE meta SET revision = ?1", [revision])?;
            // Trim in batches (every retention/8 revisions) rather than on every write.
            if revision - compacted >= retention + (retention / 8).max(1) {
                compact_to(&tx, revision - retention + 1)?;
            }
            tx.commit().db()?;
            if short_lived && WAL_PAGES.take() >= SHORT_LIVED_CHECKPOINT {
                checkpoint_and_truncate(conn, busy_timeout);
            }
            Ok(kv)
        })
        .await
    }
}

enum Change {
    Put,
    Delete,
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| backend_error(format!("database task failed: {e}")))?
}

fn with_locked<T>(
    conn: &Mutex<Connection>,
    f: impl FnOnce(&mut Connection) -> Result<T>,
) -> Result<T> {
    // A panic mid-transaction rolls the transaction back on unwind, so the connection
    // behind a poisoned lock is still sound.
    let mut conn = conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    f(&mut conn)
}

/// Runs one statement through the connection's statement cache: a process repeats the same
/// few statements, and parsing is much of what a small statement costs.
fn execute(conn: &Connection, sql: &str, params: impl rusqlite::Params) -> Result<usize> {
    conn.prepare_cached(sql).db()?.execute(params).db()
}

fn open_connection(path: &Path, opts: &SqliteOptions) -> Result<Connection> {
    let context = |e: rusqlite::Error| backend_error(format!("{}: {e}", path.display()));
    let conn = Connection::open(path).map_err(context)?;
    conn.busy_timeout(opts.busy_timeout).map_err(context)?;
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))
        .map_err(context)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(backend_error(format!(
            "{}: cannot enable WAL mode (journal mode is {mode})",
            path.display()
        )));
    }
    // In WAL mode NORMAL survives process crashes; only an OS crash or power loss can lose
    // the last commits, and fsync on every CNI write would cost more than it is worth.
    conn.pragma_update(None, "synchronous", "NORMAL")
        .map_err(context)?;
    conn.pragma_update(None, "journal_size_limit", JOURNAL_SIZE_LIMIT)
        .map_err(context)?;
    if opts.short_lived {
        conn.set_db_config(DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true)
            .map_err(context)?;
        // Replaces SQLite's automatic checkpoint (see `checkpoint_and_truncate`).
        conn.wal_hook(Some(note_wal_pages));
    }
    Ok(conn)
}

thread_local! {
    /// WAL size (pages) after the last commit on this thread of a short-lived connection.
    static WAL_PAGES: Cell<c_int> = const { Cell::new(0) };
}

fn note_wal_pages(_: &Wal, pages: c_int) -> rusqlite::Result<()> {
    WAL_PAGES.set(pages);
    Ok(())
}

/// The automatic checkpoint of short-lived connections, once the WAL reaches
/// [`SHORT_LIVED_CHECKPOINT`] pages. SQLite's own (PASSIVE) checkpoint leaves the WAL for the
/// next writer to start over, which it learns from shared memory; but a process that opens
/// the file when no other has it open rebuilds shared memory from the WAL, forgetting the
/// checkpoint, and one that writes once never starts over: the WAL would only grow. TRUNCATE
/// empties the file, which every later process sees. It does not wait: with other
/// connections reading or writing it copies what it can, like PASSIVE, and leaves the WAL to
/// SQLite's restart, which their shared memory then keeps working; the next commit tries
/// again. Waiting would hold up every writer on the node.
fn checkpoint_and_truncate(conn: &Connection, busy_timeout: Duration) {
    let result = conn.busy_timeout(Duration::ZERO).and_then(|()| {
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| {
            row.get::<_, i64>(0)
        })
    });
    // The commit has happened: nothing here may turn it into an error.
    match result {
        Ok(0) => debug!("sqlite WAL checkpointed and emptied"),
        Ok(_) => debug!("sqlite WAL checkpoint deferred: other connections are busy"),
        Err(e) => debug!(error = %e, "sqlite WAL checkpoint failed"),
    }
    if let Err(e) = conn.busy_timeout(busy_timeout) {
        warn!(error = %e, "cannot restore the sqlite busy timeout");
    }
}

fn init_schema(conn: &mut Connection) -> Result<()> {
    // Every CNI invocation opens the file: skip the write lock when the schema is there.
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .db()?;
    if version == SCHEMA_VERSION {
        return Ok(());
    }
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .db()?;
    let version: i64 = tx
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .db()?;
    if version > SCHEMA_VERSION {
        return Err(backend_error(format!(
            "database schema version {version} is newer than this binary supports ({SCHEMA_VERSION})"
        )));
    }
    tx.execute_batch(&format!(
        "CREATE TABLE IF NOT EXISTS meta (
             id INTEGER PRIMARY KEY CHECK (id = 0),
             revision INTEGER NOT NULL,
             compacted INTEGER NOT NULL
         );
         INSERT OR IGNORE INTO meta (id, revision, compacted) VALUES (0, 0, 0);
         CREATE TABLE IF NOT EXISTS kv (
             kind TEXT NOT NULL,
             namespace TEXT,
             name TEXT NOT NULL,
             value BLOB NOT NULL,
             create_rev INTEGER NOT NULL,
             mod_rev INTEGER NOT NULL
         );
         CREATE UNIQUE INDEX IF NOT EXISTS kv_key ON kv (kind, ifnull(namespace, ''), name);
         CREATE TABLE IF NOT EXISTS changes (
             rev INTEGER PRIMARY KEY,
             kind TEXT NOT NULL,
             namespace TEXT,
             name TEXT NOT NULL,
             op TEXT NOT NULL CHECK (op IN ('put', 'delete')),
             value BLOB,
             create_rev INTEGER
         );
         PRAGMA user_version = {SCHEMA_VERSION};"
    ))
    .db()?;
    tx.commit().db()
}

fn read_meta(conn: &Connection) -> Result<(i64, i64)> {
    conn.prepare_cached("SELECT revision, compacted FROM meta")
        .db()?
        .query_row([], |row| Ok((row.get(0)?, row.get(1)?)))
        .db()
}

fn compact_to(tx: &Transaction<'_>, revision: i64) -> Result<()> {
    let (_, compacted) = read_meta(tx)?;
    if revision <= compacted {
        return Ok(());
    }
    let trimmed = execute(tx, "DELETE FROM changes WHERE rev < ?1", [revision])?;
    execute(tx, "UPDATE meta SET compacted = ?1", [revision])?;
    debug!(revision, trimmed, "compacted sqlite change history");
    Ok(())
}

/// Current value and revisions of `key`, if any.
fn read_key(conn: &Connection, key: &Key) -> Result<Option<KeyValue>> {
    conn.prepare_cached(
        "SELECT value, create_rev, mod_rev FROM kv
         WHERE kind = ?1 AND ifnull(namespace, '') = ?2 AND name = ?3",
    )
    .db()?
    .query_row(
        params![key.kind, key.namespace.as_deref().unwrap_or(""), key.name],
        |row| {
            Ok(KeyValue {
                key: key.clone(),
                value: row.get(0)?,
                create_revision: row.get(1)?,
                mod_revision: row.get(2)?,
            })
        },
    )
    .optional()
    .db()
}

/// The current values matching `query`, in key order.
fn read_list(conn: &Connection, query: &Query) -> Result<Vec<KeyValue>> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT namespace, name, value, create_rev, mod_rev FROM kv
             WHERE kind = ?1
               AND (?2 IS NULL OR ifnull(namespace, '') = ?2)
               AND (?3 IS NULL OR substr(name, 1, length(?3)) = ?3)
             ORDER BY ifnull(namespace, ''), name",
        )
        .db()?;
    let rows = stmt
        .query_map(
            params![query.kind, query.namespace, query.name_prefix],
            |row| {
                Ok(KeyValue {
                    key: Key {
                        kind: query.kind.clone(),
                        namespace: row.get(0)?,
                        name: row.get(1)?,
                    },
                    value: row.get(2)?,
                    create_revision: row.get(3)?,
                    mod_revision: row.get(4)?,
                })
            },
        )
        .db()?;
    rows.collect::<rusqlite::Result<Vec<_>>>().db()
}

#[async_trait]
impl Datastore for SqliteDatastore {
    async fn get(&self, key: &Key) -> Result<Option<KeyValue>> {
        validate_key(BACKEND, key)?;
        let key = key.clone();
        self.with_conn(move |conn| read_key(conn, &key)).await
    }

    async fn list(&self, query: &Query) -> Result<ListResult> {
        validate_query(BACKEND, query)?;
        let query = query.clone();
        self.with_conn(move |conn| {
            // One read transaction: the items and the revision come from the same snapshot.
            let tx = conn.transaction().db()?;
            let (revision, _) = read_meta(&tx)?;
            let items = read_list(&tx, &query)?;
            Ok(ListResult { items, revision })
        })
        .await
    }

    async fn read_many(&self, reads: &[Read]) -> Result<Vec<ReadResult>> {
        for read in reads {
            match read {
                Read::Get(key) => validate_key(BACKEND, key)?,
                Read::List(query) => validate_query(BACKEND, query)?,
            }
        }
        let reads = reads.to_vec();
        self.with_conn(move |conn| {
            let tx = conn.transaction().db()?;
            let (revision, _) = read_meta(&tx)?;
            reads
                .iter()
                .map(|read| match read {
                    Read::Get(key) => read_key(&tx, key).map(ReadResult::Get),
                    Read::List(query) => read_list(&tx, query)
                        .map(|items| ReadResult::List(ListResult { items, revision })),
                })
                .collect()
        })
        .await
    }

    async fn create(&self, key: &Key, value: &[u8]) -> Result<KeyValue> {
        validate_key(BACKEND, key)?;
        let (key, value) = (key.clone(), value.to_vec());
        self.write(move |tx, revision| {
            if read_key(tx, &key)?.is_some() {
                return Err(Error::AlreadyExists(key));
            }
            execute(
                tx,
                "INSERT INTO kv (kind, namespace, name, value, create_rev, mod_rev)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?5)",
                params![key.kind, key.namespace, key.name, value, revision],
            )?;
            let kv = KeyValue {
                key,
                value,
                create_revision: revision,
                mod_revision: revision,
            };
            Ok((kv, Change::Put))
        })
        .await
    }

    async fn update(&self, key: &Key, value: &[u8], expected_revision: i64) -> Result<KeyValue> {
        validate_key(BACKEND, key)?;
        let (key, value) = (key.clone(), value.to_vec());
        self.write(move |tx, revision| {
            let current = read_key(tx, &key)?.ok_or_else(|| Error::NotFound(key.clone()))?;
            if current.mod_revision != expected_revision {
                return Err(Error::Conflict {
                    key,
                    expected: expected_revision,
                    actual: current.mod_revision,
                });
            }
            execute(
                tx,
                "UPDATE kv SET value = ?4, mod_rev = ?5
                 WHERE kind = ?1 AND ifnull(namespace, '') = ?2 AND name = ?3",
                params![
                    key.kind,
                    key.namespace.as_deref().unwrap_or(""),
                    key.name,
                    value,
                    revision
                ],
            )?;
            let kv = KeyValue {
                key,
                value,
                create_revision: current.create_revision,
                mod_revision: revision,
            };
            Ok((kv, Change::Put))
        })
        .await
    }

    async fn delete(&self, key: &Key, expected_revision: Option<i64>) -> Result<KeyValue> {
        validate_key(BACKEND, key)?;
        let key = key.clone();
        self.write(move |tx, _| {
            let current = read_key(tx, &key)?.ok_or_else(|| Error::NotFound(key.clone()))?;
            if let Some(expected) = expected_revision {
                if current.mod_revision != expected {
                    return Err(Error::Conflict {
                        key,
                        expected,
                        actual: current.mod_revision,
                    });
                }
            }
            execute(
                tx,
                "DELETE FROM kv WHERE kind = ?1 AND ifnull(namespace, '') = ?2 AND name = ?3",
                params![key.kind, key.namespace.as_deref().unwrap_or(""), key.name],
            )?;
            Ok((current, Change::Delete))
        })
        .await
    }

    async fn watch(&self, query: &Query, after_revision: i64) -> Result<EventStream> {
        self.watch_many(std::slice::from_ref(query), after_revision)
            .await
    }

    /// One thread and connection for all of `queries` (instead of one each): a commit wakes
    /// one poller, which reads the new changes once.
    async fn watch_many(&self, queries: &[Query], after_revision: i64) -> Result<EventStream> {
        for query in queries {
            validate_query(BACKEND, query)?;
        }
        // Fail now, not as the first item, when the history is already gone.
        let (_, compacted) = self.with_conn(|conn| read_meta(conn)).await?;
        check_compacted(after_revision, compacted)?;

        // Each watch polls from its own thread and connection: polling is blocking work,
        // and a private connection makes `PRAGMA data_version` a cheap "anything new?".
        let (tx, rx) = mpsc::channel(256);
        let (path, opts, queries) = (self.path.clone(), self.opts.clone(), queries.to_vec());
        std::thread::Builder::new()
            .name("margay-sqlite-watch".into())
            .spawn(move || watch_thread(&path, &opts, &queries, after_revision, &tx))
            .map_err(|e| backend_error(format!("cannot start watch thread: {e}")))?;
        Ok(Box::pin(futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        })))
    }

    async fn revision(&self) -> Result<i64> {
        self.with_conn(|conn| read_meta(conn).map(|(revision, _)| revision))
            .await
    }

    fn describe(&self) -> String {
        format!("sqlite://{}", self.path.display())
    }
}

fn check_compacted(after_revision: i64, compacted: i64) -> Result<()> {
    if after_revision + 1 < compacted {
        return Err(Error::Compacted {
            requested: after_revision + 1,
            compacted,
        });
    }
    Ok(())
}

type EventSender = mpsc::Sender<Result<Event>>;

/// Polls `changes` until the stream is dropped or fails; errors end the stream.
fn watch_thread(
    path: &Path,
    opts: &SqliteOptions,
    queries: &[Query],
    after: i64,
    tx: &EventSender,
) {
    let result = open_connection(path, opts).and_then(|mut conn| {
        let mut poller = Poller {
            last: after,
            data_version: None,
        };
        let wakeup = Wakeup::new(path);
        while !tx.is_closed() {
            let (events, more) = poller.poll(&mut conn, queries)?;
            for event in events {
                if tx.blocking_send(Ok(event)).is_err() {
                    return Ok(());
                }
            }
            if !more {
                wakeup.wait(opts.poll_interval);
            }
        }
        Ok(())
    });
    if let Err(e) = result {
        debug!(error = %e, "sqlite watch ended");
        let _ = tx.blocking_send(Err(e));
    }
}

/// Wakes a watch when a file in the database's directory is written (another process
/// committing appends to the WAL), so that a change reaches watchers in about a
/// millisecond rather than up to a poll interval later. The interval stays the upper bound:
/// without inotify (or on a missed event) the watch still polls at it.
struct Wakeup {
    inotify: Option<Inotify>,
}

/// After a write is seen, how long to let the commit finish (SQLite updates the WAL index
/// just after writing the commit frame) and a burst of writes arrive before polling.
const SETTLE: Duration = Duration::from_millis(1);

impl Wakeup {
    fn new(path: &Path) -> Wakeup {
        let dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)
            .and_then(|inotify| {
                inotify.add_watch(
                    dir,
                    AddWatchFlags::IN_MODIFY
                        | AddWatchFlags::IN_CREATE
                        | AddWatchFlags::IN_MOVED_TO,
                )?;
                Ok(inotify)
            })
            .map_err(|e| debug!(error = %e, "sqlite watch: no inotify; polling only"))
            .ok();
        Wakeup { inotify }
    }

    /// Returns when a file was written, or after `timeout`.
    fn wait(&self, timeout: Duration) {
        let Some(inotify) = &self.inotify else {
            std::thread::sleep(timeout);
            return;
        };
        let mut fds = [PollFd::new(inotify.as_fd(), PollFlags::POLLIN)];
        let timeout = PollTimeout::try_from(timeout).unwrap_or(PollTimeout::MAX);
        if matches!(poll(&mut fds, timeout), Ok(n) if n > 0) {
            std::thread::sleep(SETTLE);
            // Drain what arrived: one poll reads every commit so far.
            while inotify.read_events().is_ok_and(|events| !events.is_empty()) {}
        }
    }
}

struct Poller {
    /// Revision up to which `changes` has been read.
    last: i64,
    /// `PRAGMA data_version` at the last full read; it changes when anyone commits.
    data_version: Option<i64>,
}

impl Poller {
    /// New matching events, and whether more rows are waiting beyond this batch.
    fn poll(&mut self, conn: &mut Connection, queries: &[Query]) -> Result<(Vec<Event>, bool)> {
        let version: i64 = conn
            .query_row("PRAGMA data_version", [], |row| row.get(0))
            .db()?;
        if self.data_version == Some(version) {
            return Ok((Vec::new(), false));
        }
        let tx = conn.transaction().db()?;
        let (revision, compacted) = read_meta(&tx)?;
        check_compacted(self.last, compacted)?;
        let mut stmt = tx
            .prepare_cached(
                "SELECT rev, kind, namespace, name, op, value, create_rev FROM changes
                 WHERE rev > ?1 AND rev <= ?2 ORDER BY rev LIMIT ?3",
            )
            .db()?;
        let rows = stmt
            .query_map(params![self.last, revision, WATCH_BATCH], |row| {
                Ok(ChangeRow {
                    rev: row.get(0)?,
                    kind: row.get(1)?,
                    namespace: row.get(2)?,
                    name: row.get(3)?,
                    op: row.get(4)?,
                    value: row.get(5)?,
                    create_rev: row.get(6)?,
                })
            })
            .db()?
            .collect::<rusqlite::Result<Vec<_>>>()
            .db()?;
        let full = rows.len() as i64 == WATCH_BATCH;
        // A full batch may stop short of `revision`: resume after its last row, and leave
        // `data_version` unset so the next poll reads again at once.
        self.last = match rows.last() {
            Some(row) if full => row.rev,
            _ => revision.max(self.last),
        };
        if !full {
            self.data_version = Some(version);
        }
        let mut events = Vec::new();
        for row in rows {
            let key = Key {
                kind: row.kind,
                namespace: row.namespace,
                name: row.name,
            };
            if !queries.iter().any(|q| q.matches(&key)) {
                continue;
            }
            events.push(match (row.op.as_str(), row.value) {
                ("put", Some(value)) => Event::Put(KeyValue {
                    key,
                    value,
                    create_revision: row.create_rev.unwrap_or(row.rev),
                    mod_revision: row.rev,
                }),
                ("delete", _) => Event::Delete {
                    key,
                    revision: row.rev,
                },
                (op, _) => {
                    return Err(backend_error(format!(
                        "corrupt change at revision {}: op {op:?}",
                        row.rev
                    )))
                }
            });
        }
        Ok((events, full))
    }
}

struct ChangeRow {
    rev: i64,
    kind: String,
    namespace: Option<String>,
    name: String,
    op: String,
    value: Option<Vec<u8>>,
    create_rev: Option<i64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn short_lived() -> SqliteOptions {
        SqliteOptions {
            short_lived: true,
            ..SqliteOptions::default()
        }
    }

    fn wal_len(db: &Path) -> u64 {
        std::fs::metadata(db.with_extension("db-wal")).map_or(0, |m| m.len())
    }

    /// Short-lived stores open, write once and close, as CNI invocations do: the WAL they
    /// leave is read by the next one, and writers' checkpoints keep it bounded.
    #[tokio::test]
    async fn short_lived_stores_leave_a_bounded_wal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.db");
        let key = Key::cluster("Node", "n");
        let first = SqliteDatastore::open(&path, short_lived()).await.unwrap();
        first.create(&key, b"0").await.unwrap();
        drop(first);
        assert!(wal_len(&path) > 0, "closing checkpointed the WAL away");

        // A write touches a few pages; enough writes to fill the WAL three times over.
        let writes = 3 * SHORT_LIVED_CHECKPOINT / 2;
        let mut largest = 0;
        for i in 1..=writes {
            let ds = SqliteDatastore::open(&path, short_lived()).await.unwrap();
            let kv = ds.get(&key).await.unwrap().unwrap();
            assert_eq!(kv.value, (i - 1).to_string().as_bytes());
            ds.update(&key, i.to_string().as_bytes(), kv.mod_revision)
                .await
                .unwrap();
            drop(ds);
            largest = largest.max(wal_len(&path));
        }
        // A checkpoint happened (else the WAL would hold every write) and the WAL never grew
        // past the checkpoint threshold plus one write.
        let frame = 4096 + 24;
        let bound = (SHORT_LIVED_CHECKPOINT + 16) as u64 * frame;
        assert!(
            largest <= bound,
            "WAL reached {largest} bytes (bound {bound})"
        );

        let agent = SqliteDatastore::open(&path, SqliteOptions::default())
            .await
            .unwrap();
        let kv = agent.get(&key).await.unwrap().unwrap();
        assert_eq!(kv.value, writes.to_string().as_bytes());
        assert_eq!(agent.revision().await.unwrap(), i64::from(writes) + 1);
    }

    /// A reader that pins the WAL defers the checkpoint without failing or delaying writes;
    /// the first commit after it is gone empties the WAL.
    #[tokio::test]
    async fn a_busy_checkpoint_neither_fails_nor_waits() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.db");
        let ds = SqliteDatastore::open(&path, short_lived()).await.unwrap();
        let key = Key::cluster("Node", "n");
        let mut kv = ds.create(&key, b"0").await.unwrap();
        let reader = Connection::open(&path).unwrap();
        reader.execute_batch("BEGIN; SELECT * FROM kv;").unwrap();

        let started = std::time::Instant::now();
        let mut i = 0;
        while wal_len(&path) <= (SHORT_LIVED_CHECKPOINT as u64 + 50) * 4120 {
            i += 1;
            kv = ds
                .update(&key, i.to_string().as_bytes(), kv.mod_revision)
                .await
                .unwrap();
        }
        // Far below the busy timeout (10 s) that a waiting checkpoint would have used.
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );

        reader.execute_batch("COMMIT").unwrap();
        ds.update(&key, b"last", kv.mod_revision).await.unwrap();
        assert_eq!(wal_len(&path), 0);
    }
}
