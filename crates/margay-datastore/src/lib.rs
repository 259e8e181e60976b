//! The datastore: one trait over a revisioned key/value store of resources, with backends
//! chosen by URL (`sqlite://PATH`, the default; `etcd://HOST:PORT[,HOST:PORT…]`).
//!
//! Values are opaque bytes (the resource crate stores JSON). Every write bumps one global
//! revision; `update`/`delete` take the revision the caller last saw and fail with
//! [`Error::Conflict`] when someone else wrote in between (compare-and-swap).
//!
//! Backends ([`connect`] picks one from a URL):
//! - `sqlite:///abs/path.db` (or `sqlite://relative.db`): one file shared by every process on
//!   the node ([`sqlite`]).
//! - `etcd://HOST:PORT[,HOST:PORT…]`, `etcds://…` for TLS: an etcd v3 cluster ([`etcd`]).
//! - `memory://` (a fresh store) or `memory://NAME` (shared by name within the process): for
//!   unit tests of other crates ([`memory`]).
//!
//! Every backend keeps a bounded history of changes for [`Datastore::watch`]; watching from
//! before it fails with [`Error::Compacted`], whose `requested` is the first revision the
//! watch needed (`after_revision + 1`) and `compacted` the oldest revision still available.
//! [`watcher::watch_with_relist`] turns that into "relist and carry on".
//!
//! Keys: kind, namespace and name must be non-empty and free of `/`, and a namespace must not
//! be `_cluster` (the etcd layout's marker for cluster-scoped keys); cluster-scoped keys have
//! `namespace: None`. Lists are sorted by [`Key`]'s order: cluster-scoped keys first, then by
//! namespace, then by name (byte order).

use std::fmt;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

use async_trait::async_trait;
use futures::Stream;

pub mod etcd;
pub mod memory;
pub mod sqlite;
#[cfg(feature = "testing")]
pub mod testing;
pub mod watcher;

/// Where a resource lives: kind, optional namespace, name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    pub kind: String,
    pub namespace: Option<String>,
    pub name: String,
}

impl Key {
    pub fn new(kind: impl Into<String>, namespace: Option<&str>, name: impl Into<String>) -> Self {
        Key {
            kind: kind.into(),
            namespace: namespace.map(str::to_owned),
            name: name.into(),
        }
    }

    pub fn cluster(kind: impl Into<String>, name: impl Into<String>) -> Self {
        Key::new(kind, None, name)
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{} {}/{}", self.kind, ns, self.name),
            None => write!(f, "{} {}", self.kind, self.name),
        }
    }
}

/// A stored value with its revisions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: Key,
    pub value: Vec<u8>,
    /// Revision of the write that created the key.
    pub create_revision: i64,
    /// Revision of the last write to the key; the CAS token.
    pub mod_revision: i64,
}

/// What to list or watch: one kind, optionally one namespace, optionally a name prefix.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Query {
    pub kind: String,
    /// `None`: every namespace (and cluster-scoped keys).
    pub namespace: Option<String>,
    pub name_prefix: Option<String>,
}

impl Query {
    pub fn kind(kind: impl Into<String>) -> Self {
        Query {
            kind: kind.into(),
            ..Default::default()
        }
    }

    pub fn matches(&self, key: &Key) -> bool {
        key.kind == self.kind
            && self
                .namespace
                .as_ref()
                .is_none_or(|ns| key.namespace.as_deref() == Some(ns.as_str()))
            && self
                .name_prefix
                .as_ref()
                .is_none_or(|p| key.name.starts_with(p.as_str()))
    }
}

/// A consistent snapshot: the items, sorted by key, and the revision it was taken at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListResult {
    pub items: Vec<KeyValue>,
    pub revision: i64,
}

/// One read of a [`Datastore::read_many`] batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Read {
    Get(Key),
    List(Query),
}

/// The answer to one [`Read`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadResult {
    Get(Option<KeyValue>),
    List(ListResult),
}

/// One change seen by a watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Created or updated; `kv.mod_revision` is the change's revision.
    Put(KeyValue),
    /// Deleted at `revision`.
    Delete { key: Key, revision: i64 },
}

impl Event {
    pub fn revision(&self) -> i64 {
        match self {
            Event::Put(kv) => kv.mod_revision,
            Event::Delete { revision, .. } => *revision,
        }
    }

    pub fn key(&self) -> &Key {
        match self {
            Event::Put(kv) => &kv.key,
            Event::Delete { key, .. } => key,
        }
    }
}

pub type EventStream = Pin<Box<dyn Stream<Item = Result<Event>> + Send>>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0} not found")]
    NotFound(Key),
    #[error("{0} already exists")]
    AlreadyExists(Key),
    #[error("{key} was modified concurrently (expected revision {expected}, found {actual})")]
    Conflict {
        key: Key,
        expected: i64,
        actual: i64,
    },
    /// `requested`: the first revision the watch needed; `compacted`: the oldest revision
    /// whose change is still available.
    #[error("revision {requested} has been compacted (oldest available is {compacted})")]
    Compacted { requested: i64, compacted: i64 },
    #[error("invalid datastore URL {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("datastore {backend}: {message}")]
    Backend {
        backend: &'static str,
        message: String,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The one datastore interface every Margay component uses.
#[async_trait]
pub trait Datastore: Send + Sync {
    async fn get(&self, key: &Key) -> Result<Option<KeyValue>>;

    /// All keys matching `query`, sorted by (namespace, name), at one revision.
    async fn list(&self, query: &Query) -> Result<ListResult>;

    /// Fails with [`Error::AlreadyExists`] when the key exists.
    async fn create(&self, key: &Key, value: &[u8]) -> Result<KeyValue>;

    /// Compare-and-swap: writes only if the key's `mod_revision` is still `expected_revision`.
    async fn update(&self, key: &Key, value: &[u8], expected_revision: i64) -> Result<KeyValue>;

    /// Deletes the key; with `Some(rev)` only if its `mod_revision` is still `rev`.
    /// Returns the value that was deleted.
    async fn delete(&self, key: &Key, expected_revision: Option<i64>) -> Result<KeyValue>;

    /// Changes matching `query` with revision > `after_revision`, in revision order.
    /// Fails (immediately or as a stream item) with [`Error::Compacted`] when that history
    /// is gone; the caller then relists (see [`watcher`]).
    async fn watch(&self, query: &Query, after_revision: i64) -> Result<EventStream>;

    /// The changes matching any of `queries` after `after_revision`, as one stream: each
    /// query's changes in revision order (the backends here give all of them in revision
    /// order). This default merges one [`Datastore::watch`] per query.
    async fn watch_many(&self, queries: &[Query], after_revision: i64) -> Result<EventStream> {
        let mut streams = Vec::with_capacity(queries.len());
        for query in queries {
            streams.push(self.watch(query, after_revision).await?);
        }
        Ok(Box::pin(futures::stream::select_all(streams)))
    }

    /// The store's current revision.
    async fn revision(&self) -> Result<i64>;

    /// Several reads in one round trip, answered in order. The backends here read them all
    /// at one revision (one SQLite read transaction, one etcd transaction, one lock); this
    /// default, for other implementations, reads them one by one.
    async fn read_many(&self, reads: &[Read]) -> Result<Vec<ReadResult>> {
        let mut out = Vec::with_capacity(reads.len());
        for read in reads {
            out.push(match read {
                Read::Get(key) => ReadResult::Get(self.get(key).await?),
                Read::List(query) => ReadResult::List(self.list(query).await?),
            });
        }
        Ok(out)
    }

    /// A short human description ("sqlite:///var/lib/margay/margay.db").
    fn describe(&self) -> String;
}

pub type SharedDatastore = Arc<dyn Datastore>;

/// The datastore used when none is configured.
pub const DEFAULT_URL: &str = "sqlite:///var/lib/margay/margay.db";

/// The segment that stands for "no namespace" in the etcd key layout; reserved everywhere
/// so that every backend accepts exactly the same keys.
pub(crate) const CLUSTER_SEGMENT: &str = "_cluster";

/// Connection settings that do not fit in the URL.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnectOptions {
    /// CA bundle (PEM) that signed the etcd servers' certificates.
    pub etcd_ca: Option<PathBuf>,
    /// Client certificate (PEM) for etcd mutual TLS; needs `etcd_key`.
    pub etcd_cert: Option<PathBuf>,
    /// Client private key (PEM) for etcd mutual TLS; needs `etcd_cert`.
    pub etcd_key: Option<PathBuf>,
    /// The caller is a single-purpose process that exits after a few operations (a CLI
    /// command, a CNI invocation): SQLite then runs statements on the calling thread and
    /// leaves its write-ahead log for the next process (see [`sqlite::SqliteOptions`]). A
    /// long-running process (the agent) leaves this off. The other backends ignore it.
    pub short_lived: bool,
}

impl ConnectOptions {
    /// Whether any TLS setting is present (which turns TLS on for `etcd://` too).
    pub fn has_tls(&self) -> bool {
        self.etcd_ca.is_some() || self.etcd_cert.is_some() || self.etcd_key.is_some()
    }
}

/// A parsed datastore URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatastoreUrl {
    /// `sqlite:///abs/path.db` or `sqlite://relative.db`.
    Sqlite(PathBuf),
    /// `etcd://HOST:PORT[,HOST:PORT…]`; `tls` for `etcds://`.
    Etcd { endpoints: Vec<String>, tls: bool },
    /// `memory://` (`None`: a fresh store) or `memory://NAME` (shared within the process).
    Memory(Option<String>),
}

impl DatastoreUrl {
    pub fn parse(url: &str) -> Result<Self> {
        let invalid = |reason: String| Error::InvalidUrl {
            url: url.to_owned(),
            reason,
        };
        let Some((scheme, rest)) = url.split_once("://") else {
            return Err(invalid(
                "expected SCHEME://…, with scheme sqlite, etcd, etcds or memory".into(),
            ));
        };
        match scheme {
            "sqlite" => {
                if rest.is_empty() {
                    return Err(invalid(
                        "missing database path (sqlite:///abs/path.db or sqlite://relative.db)"
                            .into(),
                    ));
                }
                if rest.ends_with('/') {
                    return Err(invalid(format!(
                        "{rest:?} is a directory, not a database file"
                    )));
                }
                Ok(DatastoreUrl::Sqlite(PathBuf::from(rest)))
            }
            "etcd" | "etcds" => {
                let rest = rest.strip_suffix('/').unwrap_or(rest);
                if rest.is_empty() {
                    return Err(invalid(
                        "missing endpoints (etcd://HOST:PORT[,HOST:PORT…])".into(),
                    ));
                }
                let endpoints = rest
                    .split(',')
                    .map(|ep| parse_endpoint(ep).map_err(&invalid))
                    .collect::<Result<Vec<_>>>()?;
                Ok(DatastoreUrl::Etcd {
                    endpoints,
                    tls: scheme == "etcds",
                })
            }
            "memory" => {
                if rest.contains('/') {
                    return Err(invalid("memory://NAME takes a plain name".into()));
                }
                Ok(DatastoreUrl::Memory(
                    (!rest.is_empty()).then(|| rest.to_owned()),
                ))
            }
            other => Err(invalid(format!(
                "unknown scheme {other:?}; expected sqlite, etcd, etcds or memory"
            ))),
        }
    }
}

/// Checks one `HOST:PORT` (IPv6 hosts in brackets) and returns it trimmed.
fn parse_endpoint(endpoint: &str) -> std::result::Result<String, String> {
    let endpoint = endpoint.trim();
    let Some((host, port)) = endpoint.rsplit_once(':') else {
        return Err(format!("endpoint {endpoint:?} is not HOST:PORT"));
    };
    if host.is_empty() || host.contains(['/', '@', '?', '#']) {
        return Err(format!("endpoint {endpoint:?} has an invalid host"));
    }
    if host.contains(':') && !(host.starts_with('[') && host.ends_with(']')) {
        return Err(format!(
            "endpoint {endpoint:?}: IPv6 addresses go in brackets ([::1]:2379)"
        ));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(endpoint.to_owned()),
        _ => Err(format!(
            "endpoint {endpoint:?} has an invalid port {port:?}"
        )),
    }
}

/// Opens the datastore named by `url` (see the crate docs for the schemes).
pub async fn connect(url: &str, opts: &ConnectOptions) -> Result<SharedDatastore> {
    match DatastoreUrl::parse(url)? {
        DatastoreUrl::Sqlite(path) => Ok(Arc::new(
            sqlite::SqliteDatastore::open(
                path,
                sqlite::SqliteOptions {
                    short_lived: opts.short_lived,
                    ..sqlite::SqliteOptions::default()
                },
            )
            .await?,
        )),
        DatastoreUrl::Etcd { endpoints, tls } => Ok(Arc::new(
            etcd::EtcdDatastore::connect(&endpoints, tls, opts).await?,
        )),
        DatastoreUrl::Memory(None) => Ok(Arc::new(memory::MemoryDatastore::new())),
        DatastoreUrl::Memory(Some(name)) => Ok(memory::MemoryDatastore::named(&name)),
    }
}

fn check_segment(what: &str, value: &str) -> std::result::Result<(), String> {
    if value.is_empty() {
        Err(format!("{what} is empty"))
    } else if value.contains('/') {
        Err(format!("{what} {value:?} contains '/'"))
    } else {
        Ok(())
    }
}

fn check_namespace(namespace: Option<&str>) -> std::result::Result<(), String> {
    match namespace {
        Some(CLUSTER_SEGMENT) => Err(format!("namespace {CLUSTER_SEGMENT:?} is reserved")),
        Some(ns) => check_segment("namespace", ns),
        None => Ok(()),
    }
}

/// Rejects keys that some backend could not store faithfully (see the crate docs).
pub(crate) fn validate_key(backend: &'static str, key: &Key) -> Result<()> {
    check_segment("kind", &key.kind)
        .and_then(|()| check_namespace(key.namespace.as_deref()))
        .and_then(|()| check_segment("name", &key.name))
        .map_err(|reason| Error::Backend {
            backend,
            message: format!("invalid key {key}: {reason}"),
        })
}

pub(crate) fn validate_query(backend: &'static str, query: &Query) -> Result<()> {
    check_segment("kind", &query.kind)
        .and_then(|()| check_namespace(query.namespace.as_deref()))
        .and_then(|()| match &query.name_prefix {
            Some(p) if p.contains('/') => Err(format!("name prefix {p:?} contains '/'")),
            _ => Ok(()),
        })
        .map_err(|reason| Error::Backend {
            backend,
            message: format!("invalid query for kind {:?}: {reason}", query.kind),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(url: &str) -> String {
        match DatastoreUrl::parse(url) {
            Err(Error::InvalidUrl { reason, .. }) => reason,
            other => panic!("{url}: expected InvalidUrl, got {other:?}"),
        }
    }

    #[test]
    fn parses_sqlite_urls() {
        assert_eq!(
            DatastoreUrl::parse(DEFAULT_URL).unwrap(),
            DatastoreUrl::Sqlite("/var/lib/margay/margay.db".into())
        );
        assert_eq!(
            DatastoreUrl::parse("sqlite://data/m.db").unwrap(),
            DatastoreUrl::Sqlite("data/m.db".into())
        );
        assert!(reason("sqlite://").contains("missing database path"));
        assert!(reason("sqlite:///var/lib/").contains("directory"));
    }

    #[test]
    fn parses_etcd_urls() {
        assert_eq!(
            DatastoreUrl::parse("etcd://10.0.0.1:2379,[::1]:2379,etcd-2:2379/").unwrap(),
            DatastoreUrl::Etcd {
                endpoints: vec![
                    "10.0.0.1:2379".into(),
                    "[::1]:2379".into(),
                    "etcd-2:2379".into()
                ],
                tls: false
            }
        );
        assert_eq!(
            DatastoreUrl::parse("etcds://e:2379").unwrap(),
            DatastoreUrl::Etcd {
                endpoints: vec!["e:2379".into()],
                tls: true
            }
        );
        assert!(reason("etcd://").contains("missing endpoints"));
        assert!(reason("etcd://host").contains("not HOST:PORT"));
        assert!(reason("etcd://host:http").contains("invalid port"));
        assert!(reason("etcd://a:1,:2").contains("invalid host"));
        assert!(reason("etcd://::1:2379").contains("brackets"));
    }

    #[test]
    fn parses_memory_and_rejects_unknown_urls() {
        assert_eq!(
            DatastoreUrl::parse("memory://").unwrap(),
            DatastoreUrl::Memory(None)
        );
        assert_eq!(
            DatastoreUrl::parse("memory://shared").unwrap(),
            DatastoreUrl::Memory(Some("shared".into()))
        );
        assert!(reason("postgres://x").contains("unknown scheme \"postgres\""));
        assert!(reason("/var/lib/margay.db").contains("expected SCHEME://"));
    }

    #[test]
    fn validates_keys() {
        assert!(validate_key("t", &Key::new("Pod", Some("ns"), "a")).is_ok());
        assert!(validate_key("t", &Key::cluster("Node", "n1")).is_ok());
        for bad in [
            Key::cluster("", "n"),
            Key::cluster("Node", ""),
            Key::cluster("Node", "a/b"),
            Key::new("Pod", Some(""), "a"),
            Key::new("Pod", Some("_cluster"), "a"),
        ] {
            assert!(validate_key("t", &bad).is_err(), "{bad:?} accepted");
        }
    }
}
