//! One set of behavioural tests run against every backend (memory, SQLite, etcd), plus the
//! multi-process compare-and-swap test on SQLite and etcd.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::StreamExt;
use margay_datastore::memory::MemoryDatastore;
use margay_datastore::sqlite::{SqliteDatastore, SqliteOptions};
use margay_datastore::testing::{temp_sqlite_url, EtcdServer, ServerTls};
use margay_datastore::watcher::{watch_with_relist, WatchUpdate};
use margay_datastore::{
    connect, ConnectOptions, Datastore, Error, Event, EventStream, Key, KeyValue, ListResult,
    Query, Read, ReadResult, Result, SharedDatastore,
};
use tempfile::TempDir;

const TIMEOUT: Duration = Duration::from_secs(10);

/// Compacts a backend's history the way its operator would.
#[derive(Clone)]
enum Compactor {
    Memory(Arc<MemoryDatastore>),
    Sqlite(Arc<SqliteDatastore>),
    Etcd(String),
}

impl Compactor {
    /// Drops history before `revision`: a watch after `revision - 1` still works, after
    /// `revision - 2` fails.
    async fn compact(&self, revision: i64) {
        match self {
            Compactor::Memory(ds) => ds.compact(revision).unwrap(),
            Compactor::Sqlite(ds) => ds.compact(revision).await.unwrap(),
            Compactor::Etcd(endpoint) => {
                let mut client = etcd_client::Client::connect([endpoint], None)
                    .await
                    .unwrap();
                let options = etcd_client::CompactionOptions::new().with_physical();
                client.compact(revision, Some(options)).await.unwrap();
            }
        }
    }
}

/// A fresh, empty store of one backend, and what keeps it alive.
struct Harness {
    ds: SharedDatastore,
    compactor: Compactor,
    _dir: Option<TempDir>,
    _etcd: Option<EtcdServer>,
}

impl Harness {
    async fn memory() -> Harness {
        let ds = Arc::new(MemoryDatastore::new());
        Harness {
            ds: ds.clone(),
            compactor: Compactor::Memory(ds),
            _dir: None,
            _etcd: None,
        }
    }

    async fn sqlite() -> Harness {
        let dir = TempDir::new().unwrap();
        let opts = SqliteOptions {
            poll_interval: Duration::from_millis(10),
            ..SqliteOptions::default()
        };
        let ds = Arc::new(
            SqliteDatastore::open(dir.path().join("margay.db"), opts)
                .await
                .unwrap(),
        );
        Harness {
            ds: ds.clone(),
            compactor: Compactor::Sqlite(ds),
            _dir: Some(dir),
            _etcd: None,
        }
    }

    async fn etcd() -> Harness {
        let server = EtcdServer::start();
        let ds = connect(&server.url(), &ConnectOptions::default())
            .await
            .unwrap();
        Harness {
            ds,
            compactor: Compactor::Etcd(server.endpoint()),
            _dir: None,
            _etcd: Some(server),
        }
    }
}

fn pod(ns: &str, name: &str) -> Key {
    Key::new("Pod", Some(ns), name)
}

async fn next_event(stream: &mut EventStream) -> Event {
    match tokio::time::timeout(TIMEOUT, stream.next()).await {
        Ok(Some(Ok(event))) => event,
        Ok(other) => panic!("expected an event, got {other:?}"),
        Err(_) => panic!("no event within {TIMEOUT:?}"),
    }
}

async fn assert_quiet(stream: &mut EventStream) {
    if let Ok(item) = tokio::time::timeout(Duration::from_millis(200), stream.next()).await {
        panic!("unexpected watch item {item:?}");
    }
}

/// The (requested, compacted) of a watch that fails, at once or as its first item.
async fn expect_compacted(watch: Result<EventStream>) -> (i64, i64) {
    let err = match watch {
        Err(e) => e,
        Ok(mut stream) => match tokio::time::timeout(TIMEOUT, stream.next()).await {
            Ok(Some(Err(e))) => e,
            other => panic!("expected a compaction error, got {other:?}"),
        },
    };
    match err {
        Error::Compacted {
            requested,
            compacted,
        } => (requested, compacted),
        other => panic!("expected Error::Compacted, got {other:?}"),
    }
}

fn names(list: &ListResult) -> Vec<String> {
    list.items
        .iter()
        .map(|kv| match &kv.key.namespace {
            Some(ns) => format!("{ns}/{}", kv.key.name),
            None => kv.key.name.clone(),
        })
        .collect()
}

// ---- the conformance suite -------------------------------------------------------------

async fn create_get_and_already_exists(h: &Harness) {
    let ds = &h.ds;
    let key = pod("default", "web");
    assert_eq!(ds.get(&key).await.unwrap(), None);
    let before = ds.revision().await.unwrap();

    let created = ds.create(&key, b"v1").await.unwrap();
    assert_eq!(created.key, key);
    assert_eq!(created.value, b"v1");
    assert!(created.create_revision > before);
    assert_eq!(created.create_revision, created.mod_revision);
    assert_eq!(ds.revision().await.unwrap(), created.mod_revision);
    assert_eq!(ds.get(&key).await.unwrap(), Some(created.clone()));

    match ds.create(&key, b"v2").await {
        Err(Error::AlreadyExists(k)) => assert_eq!(k, key),
        other => panic!("expected AlreadyExists, got {other:?}"),
    }
    // A failed write neither changes the value nor bumps the revision.
    assert_eq!(ds.get(&key).await.unwrap(), Some(created.clone()));
    assert_eq!(ds.revision().await.unwrap(), created.mod_revision);

    // Same name, other namespace or cluster scope: different keys.
    let other_ns = ds.create(&pod("kube-system", "web"), b"x").await.unwrap();
    let cluster = ds.create(&Key::cluster("Pod", "web"), b"y").await.unwrap();
    assert!(other_ns.mod_revision > created.mod_revision);
    assert!(cluster.mod_revision > other_ns.mod_revision);
    assert_eq!(
        ds.get(&Key::cluster("Pod", "web"))
            .await
            .unwrap()
            .unwrap()
            .value,
        b"y"
    );
}

async fn update_compare_and_swap(h: &Harness) {
    let ds = &h.ds;
    let key = Key::cluster("Node", "node-1");
    let created = ds.create(&key, b"v1").await.unwrap();

    let updated = ds.update(&key, b"v2", created.mod_revision).await.unwrap();
    assert_eq!(updated.value, b"v2");
    assert_eq!(updated.create_revision, created.create_revision);
    assert!(updated.mod_revision > created.mod_revision);
    assert_eq!(ds.get(&key).await.unwrap(), Some(updated.clone()));

    // A stale revision conflicts and reports the revision that is actually stored.
    match ds.update(&key, b"v3", created.mod_revision).await {
        Err(Error::Conflict {
            key: k,
            expected,
            actual,
        }) => {
            assert_eq!(k, key);
            assert_eq!(expected, created.mod_revision);
            assert_eq!(actual, updated.mod_revision);
        }
        other => panic!("expected Conflict, got {other:?}"),
    }
    assert_eq!(ds.get(&key).await.unwrap(), Some(updated.clone()));
    assert_eq!(ds.revision().await.unwrap(), updated.mod_revision);

    // Updating a missing key is NotFound, whatever revision is given (0 included).
    for rev in [0, updated.mod_revision] {
        match ds.update(&Key::cluster("Node", "ghost"), b"x", rev).await {
            Err(Error::NotFound(k)) => assert_eq!(k, Key::cluster("Node", "ghost")),
            other => panic!("expected NotFound, got {other:?}"),
        }
    }
    assert_eq!(ds.get(&Key::cluster("Node", "ghost")).await.unwrap(), None);
}

async fn delete_with_and_without_revision(h: &Harness) {
    let ds = &h.ds;
    let a = pod("default", "a");
    let b = pod("default", "b");
    let a1 = ds.create(&a, b"a1").await.unwrap();
    let a2 = ds.update(&a, b"a2", a1.mod_revision).await.unwrap();
    let b1 = ds.create(&b, b"b1").await.unwrap();

    match ds.delete(&a, Some(a1.mod_revision)).await {
        Err(Error::Conflict {
            expected, actual, ..
        }) => {
            assert_eq!(expected, a1.mod_revision);
            assert_eq!(actual, a2.mod_revision);
        }
        other => panic!("expected Conflict, got {other:?}"),
    }
    assert!(ds.get(&a).await.unwrap().is_some());

    // Deleting returns what was stored, with its revisions.
    assert_eq!(ds.delete(&a, Some(a2.mod_revision)).await.unwrap(), a2);
    assert_eq!(ds.get(&a).await.unwrap(), None);
    assert!(ds.revision().await.unwrap() > b1.mod_revision);
    assert_eq!(ds.delete(&b, None).await.unwrap(), b1);
    assert_eq!(ds.get(&b).await.unwrap(), None);

    for expected in [None, Some(a2.mod_revision)] {
        match ds.delete(&a, expected).await {
            Err(Error::NotFound(k)) => assert_eq!(k, a),
            other => panic!("expected NotFound, got {other:?}"),
        }
    }
    // The key can be created again, as a new object.
    let again = ds.create(&a, b"a3").await.unwrap();
    assert!(again.create_revision > a2.create_revision);
}

async fn list_filters_and_revision(h: &Harness) {
    let ds = &h.ds;
    assert_eq!(
        ds.list(&Query::kind("Pod")).await.unwrap().items,
        Vec::<KeyValue>::new()
    );
    for (ns, name) in [
        ("default", "web-1"),
        ("default", "web-2"),
        ("default", "db-1"),
        ("prod", "web-1"),
    ] {
        ds.create(&pod(ns, name), name.as_bytes()).await.unwrap();
    }
    ds.create(&Key::new("Service", Some("default"), "web"), b"svc")
        .await
        .unwrap();
    ds.create(&Key::new("Podx", Some("default"), "web-9"), b"other kind")
        .await
        .unwrap();
    let revision = ds.revision().await.unwrap();

    let all = ds.list(&Query::kind("Pod")).await.unwrap();
    assert_eq!(
        names(&all),
        [
            "default/db-1",
            "default/web-1",
            "default/web-2",
            "prod/web-1"
        ]
    );
    assert_eq!(all.revision, revision);
    assert_eq!(all.items[1].value, b"web-1");

    let default_ns = ds
        .list(&Query {
            namespace: Some("default".into()),
            ..Query::kind("Pod")
        })
        .await
        .unwrap();
    assert_eq!(
        names(&default_ns),
        ["default/db-1", "default/web-1", "default/web-2"]
    );

    let web = Query {
        name_prefix: Some("web".into()),
        ..Query::kind("Pod")
    };
    assert_eq!(
        names(&ds.list(&web).await.unwrap()),
        ["default/web-1", "default/web-2", "prod/web-1"]
    );
    let web_in_prod = Query {
        namespace: Some("prod".into()),
        ..web.clone()
    };
    assert_eq!(names(&ds.list(&web_in_prod).await.unwrap()), ["prod/web-1"]);
    let none = Query {
        namespace: Some("nowhere".into()),
        ..Query::kind("Pod")
    };
    let empty = ds.list(&none).await.unwrap();
    assert!(empty.items.is_empty());
    assert_eq!(empty.revision, revision);

    // The list revision moves with any write, even to other kinds.
    ds.create(&Key::cluster("Node", "n"), b"").await.unwrap();
    let later = ds.list(&Query::kind("Pod")).await.unwrap();
    assert_eq!(later.revision, revision + 1);
    assert_eq!(later.items, all.items);
}

async fn list_sort_order(h: &Harness) {
    let ds = &h.ds;
    // Written out of order; "a-b" vs "a" catches sorting by raw etcd key bytes.
    let keys = [
        Key::new("Mixed", Some("b"), "x"),
        Key::new("Mixed", Some("a-b"), "a"),
        Key::new("Mixed", Some("a"), "z"),
        Key::cluster("Mixed", "m"),
        Key::new("Mixed", Some("a"), "b"),
        Key::new("Mixed", Some("a"), "b-c"),
        Key::new("Mixed", Some("a"), "B"),
        Key::cluster("Mixed", "c"),
    ];
    for key in &keys {
        ds.create(key, b"").await.unwrap();
    }
    let list = ds.list(&Query::kind("Mixed")).await.unwrap();
    assert_eq!(
        names(&list),
        ["c", "m", "a/B", "a/b", "a/b-c", "a/z", "a-b/a", "b/x"]
    );
    let mut sorted = keys.to_vec();
    sorted.sort();
    let listed: Vec<Key> = list.items.into_iter().map(|kv| kv.key).collect();
    assert_eq!(listed, sorted);
}

async fn watch_events_in_order_and_filtered(h: &Harness) {
    let ds = &h.ds;
    let start = ds.revision().await.unwrap();
    let a1 = ds.create(&pod("ns1", "a"), b"a1").await.unwrap();
    ds.create(&pod("ns2", "b"), b"other namespace")
        .await
        .unwrap();
    ds.create(&Key::new("Service", Some("ns1"), "a"), b"other kind")
        .await
        .unwrap();
    let a2 = ds
        .update(&pod("ns1", "a"), b"a2", a1.mod_revision)
        .await
        .unwrap();
    let c1 = ds.create(&pod("ns1", "c"), b"c1").await.unwrap();
    ds.delete(&pod("ns1", "a"), None).await.unwrap();
    let deleted_at = ds.revision().await.unwrap();

    let query = Query {
        namespace: Some("ns1".into()),
        ..Query::kind("Pod")
    };
    let mut stream = ds.watch(&query, start).await.unwrap();
    assert_eq!(next_event(&mut stream).await, Event::Put(a1));
    assert_eq!(next_event(&mut stream).await, Event::Put(a2));
    assert_eq!(next_event(&mut stream).await, Event::Put(c1.clone()));
    assert_eq!(
        next_event(&mut stream).await,
        Event::Delete {
            key: pod("ns1", "a"),
            revision: deleted_at
        }
    );
    assert_quiet(&mut stream).await;

    // Live changes after the watch started arrive too, still filtered.
    ds.create(&pod("ns2", "q"), b"filtered").await.unwrap();
    let z = ds.create(&pod("ns1", "z"), b"z").await.unwrap();
    ds.delete(&pod("ns1", "c"), Some(c1.mod_revision))
        .await
        .unwrap();
    let c_deleted = ds.revision().await.unwrap();
    assert_eq!(next_event(&mut stream).await, Event::Put(z));
    assert_eq!(
        next_event(&mut stream).await,
        Event::Delete {
            key: pod("ns1", "c"),
            revision: c_deleted
        }
    );
    assert_quiet(&mut stream).await;
}

async fn watch_many_merges_queries(h: &Harness) {
    let ds = &h.ds;
    let start = ds.revision().await.unwrap();
    let a = ds.create(&pod("ns1", "a"), b"a").await.unwrap();
    ds.create(&Key::new("Secret", Some("ns1"), "s"), b"not watched")
        .await
        .unwrap();
    let svc = ds
        .create(&Key::new("Service", Some("ns2"), "s"), b"svc")
        .await
        .unwrap();
    ds.create(&pod("ns2", "b"), b"other namespace")
        .await
        .unwrap();
    let queries = [
        Query {
            namespace: Some("ns1".into()),
            ..Query::kind("Pod")
        },
        Query::kind("Service"),
    ];
    let mut stream = ds.watch_many(&queries, start).await.unwrap();
    let mut got = vec![next_event(&mut stream).await, next_event(&mut stream).await];
    assert_quiet(&mut stream).await;
    // Live changes of either query arrive on the one stream.
    let c = ds.create(&pod("ns1", "c"), b"c").await.unwrap();
    got.push(next_event(&mut stream).await);
    got.sort_by_key(Event::revision);
    assert_eq!(got, [Event::Put(a), Event::Put(svc), Event::Put(c)]);
    assert_quiet(&mut stream).await;
}

async fn watch_resumes_from_later_revision(h: &Harness) {
    let ds = &h.ds;
    let mut written = Vec::new();
    for i in 0..5 {
        written.push(
            ds.create(&pod("default", &format!("web-{i}")), b"w")
                .await
                .unwrap(),
        );
        ds.create(&pod("default", &format!("db-{i}")), b"d")
            .await
            .unwrap();
    }
    let query = Query {
        name_prefix: Some("web-".into()),
        ..Query::kind("Pod")
    };
    // Resume right after web-2: only web-3 and web-4 remain.
    let mut stream = ds.watch(&query, written[2].mod_revision).await.unwrap();
    assert_eq!(
        next_event(&mut stream).await,
        Event::Put(written[3].clone())
    );
    assert_eq!(
        next_event(&mut stream).await,
        Event::Put(written[4].clone())
    );
    assert_quiet(&mut stream).await;

    // From the current revision: nothing old, only what comes next.
    let now = ds.revision().await.unwrap();
    let mut stream = ds.watch(&query, now).await.unwrap();
    assert_quiet(&mut stream).await;
    let next = ds.create(&pod("x", "web-new"), b"n").await.unwrap();
    assert_eq!(next_event(&mut stream).await, Event::Put(next));
}

async fn watch_from_compacted_revision_fails(h: &Harness) {
    let ds = &h.ds;
    let first = ds.create(&pod("default", "a"), b"0").await.unwrap();
    let mut last = first.clone();
    for i in 1..5 {
        last = ds
            .update(&last.key, format!("{i}").as_bytes(), last.mod_revision)
            .await
            .unwrap();
    }
    let compact_at = last.mod_revision;
    h.compactor.compact(compact_at).await;

    let query = Query::kind("Pod");
    assert_eq!(
        expect_compacted(ds.watch(&query, 0).await).await,
        (1, compact_at)
    );
    assert_eq!(
        expect_compacted(ds.watch(&query, compact_at - 2).await).await,
        (compact_at - 1, compact_at)
    );
    // The compaction revision itself is still available.
    let mut stream = ds.watch(&query, compact_at - 1).await.unwrap();
    assert_eq!(next_event(&mut stream).await, Event::Put(last));
    // Lists are unaffected.
    assert_eq!(ds.list(&query).await.unwrap().items.len(), 1);
}

/// Delegates to a real store, but the first watch finds its history compacted away (with
/// more writes in between), as when a watcher falls behind.
struct CompactOnFirstWatch {
    inner: SharedDatastore,
    compactor: Compactor,
    fired: AtomicBool,
}

#[async_trait]
impl Datastore for CompactOnFirstWatch {
    async fn get(&self, key: &Key) -> Result<Option<KeyValue>> {
        self.inner.get(key).await
    }
    async fn list(&self, query: &Query) -> Result<ListResult> {
        self.inner.list(query).await
    }
    async fn create(&self, key: &Key, value: &[u8]) -> Result<KeyValue> {
        self.inner.create(key, value).await
    }
    async fn update(&self, key: &Key, value: &[u8], expected_revision: i64) -> Result<KeyValue> {
        self.inner.update(key, value, expected_revision).await
    }
    async fn delete(&self, key: &Key, expected_revision: Option<i64>) -> Result<KeyValue> {
        self.inner.delete(key, expected_revision).await
    }
    async fn watch(&self, query: &Query, after_revision: i64) -> Result<EventStream> {
        if !self.fired.swap(true, Ordering::SeqCst) {
            let ds = &self.inner;
            ds.create(&pod("default", "c"), b"c").await?;
            ds.delete(&pod("default", "a"), None).await?;
            let b = ds.get(&pod("default", "b")).await?.expect("b exists");
            ds.update(&b.key, b"b2", b.mod_revision).await?;
            self.compactor.compact(ds.revision().await?).await;
        }
        self.inner.watch(query, after_revision).await
    }
    async fn revision(&self) -> Result<i64> {
        self.inner.revision().await
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
}

async fn watch_with_relist_recovers_from_compaction(h: &Harness) {
    h.ds.create(&pod("default", "a"), b"a").await.unwrap();
    h.ds.create(&pod("default", "b"), b"b").await.unwrap();
    h.ds.create(&Key::cluster("Node", "n"), b"not a pod")
        .await
        .unwrap();
    let wrapped: SharedDatastore = Arc::new(CompactOnFirstWatch {
        inner: h.ds.clone(),
        compactor: h.compactor.clone(),
        fired: AtomicBool::new(false),
    });
    let mut updates = Box::pin(watch_with_relist(wrapped, Query::kind("Pod")));
    let mut next = async || match tokio::time::timeout(TIMEOUT, updates.next()).await {
        Ok(Some(Ok(update))) => update,
        other => panic!("expected an update, got {other:?}"),
    };

    let WatchUpdate::Snapshot(first) = next().await else {
        panic!("expected a snapshot first");
    };
    assert_eq!(names(&first), ["default/a", "default/b"]);

    // The watch from the first snapshot's revision hits compaction: a fresh snapshot.
    let WatchUpdate::Snapshot(second) = next().await else {
        panic!("expected a snapshot after compaction");
    };
    assert_eq!(names(&second), ["default/b", "default/c"]);
    assert_eq!(second.items[0].value, b"b2");
    assert_eq!(second.revision, h.ds.revision().await.unwrap());

    // Then it carries on watching from the new snapshot.
    let d = h.ds.create(&pod("default", "d"), b"d").await.unwrap();
    assert_eq!(next().await, WatchUpdate::Event(Event::Put(d)));
}

async fn invalid_keys_are_rejected(h: &Harness) {
    let ds = &h.ds;
    let before = ds.revision().await.unwrap();
    for key in [
        Key::cluster("Pod", "a/b"),
        Key::cluster("", "a"),
        Key::new("Pod", Some(""), "a"),
        Key::new("Pod", Some("_cluster"), "a"),
    ] {
        match ds.create(&key, b"").await {
            Err(Error::Backend { message, .. }) => assert!(message.contains("invalid key")),
            other => panic!("{key:?}: expected a rejection, got {other:?}"),
        }
    }
    assert!(ds.list(&Query::kind("a/b")).await.is_err());
    assert!(ds.watch(&Query::kind(""), 0).await.is_err());
    assert_eq!(ds.revision().await.unwrap(), before);
}

async fn read_many_answers_in_order_at_one_revision(h: &Harness) {
    let ds = &h.ds;
    let a = ds.create(&pod("default", "a"), b"a").await.unwrap();
    ds.create(&pod("default", "b"), b"b").await.unwrap();
    ds.create(&pod("other", "a"), b"c").await.unwrap();
    let node = ds.create(&Key::cluster("Node", "n1"), b"n").await.unwrap();
    let in_default = Query {
        namespace: Some("default".into()),
        ..Query::kind("Pod")
    };
    let prefixed = Query {
        name_prefix: Some("n".into()),
        ..Query::kind("Node")
    };
    let reads = [
        Read::Get(a.key.clone()),
        Read::List(in_default.clone()),
        Read::Get(pod("default", "missing")),
        Read::List(prefixed.clone()),
    ];
    let got = ds.read_many(&reads).await.unwrap();
    let revision = ds.revision().await.unwrap();
    assert_eq!(
        got,
        vec![
            ReadResult::Get(Some(a)),
            ReadResult::List(ds.list(&in_default).await.unwrap()),
            ReadResult::Get(None),
            ReadResult::List(ListResult {
                items: vec![node],
                revision
            }),
        ]
    );
    assert!(ds.read_many(&[]).await.unwrap().is_empty());
    let invalid = [
        Read::Get(pod("default", "a")),
        Read::List(Query::kind("a/b")),
    ];
    assert!(ds.read_many(&invalid).await.is_err());
}

macro_rules! conformance {
    ($backend:ident: $($test:ident),* $(,)?) => {
        mod $backend {
            $(
                #[tokio::test]
                async fn $test() {
                    super::$test(&super::Harness::$backend().await).await;
                }
            )*
        }
    };
}

macro_rules! conformance_suite {
    ($($backend:ident),*) => {
        $(
            conformance!($backend:
                create_get_and_already_exists,
                update_compare_and_swap,
                delete_with_and_without_revision,
                list_filters_and_revision,
                list_sort_order,
                watch_events_in_order_and_filtered,
                watch_many_merges_queries,
                watch_resumes_from_later_revision,
                watch_from_compacted_revision_fails,
                watch_with_relist_recovers_from_compaction,
                invalid_keys_are_rejected,
                read_many_answers_in_order_at_one_revision,
            );
        )*
    };
}

conformance_suite!(memory, sqlite, etcd);

// ---- backend specifics ------------------------------------------------------------------

#[tokio::test]
async fn sqlite_trims_history_beyond_retention() {
    let dir = TempDir::new().unwrap();
    let opts = SqliteOptions {
        history_retention: 10,
        poll_interval: Duration::from_millis(10),
        ..SqliteOptions::default()
    };
    let ds = SqliteDatastore::open(dir.path().join("m.db"), opts)
        .await
        .unwrap();
    let key = Key::cluster("Node", "n");
    let mut kv = ds.create(&key, b"0").await.unwrap();
    for i in 1..40 {
        kv = ds
            .update(&key, i.to_string().as_bytes(), kv.mod_revision)
            .await
            .unwrap();
    }
    let (requested, compacted) = expect_compacted(ds.watch(&Query::kind("Node"), 0).await).await;
    assert_eq!(requested, 1);
    // At least the last `retention` revisions are kept, and trimming did happen.
    assert!(compacted > 1 && compacted <= 40 - 10 + 1, "{compacted}");
    let mut stream = ds.watch(&Query::kind("Node"), 40 - 10).await.unwrap();
    assert_eq!(next_event(&mut stream).await.revision(), 40 - 10 + 1);
}

#[tokio::test]
async fn memory_trims_history_beyond_retention() {
    let ds = MemoryDatastore::with_retention(10);
    let key = Key::cluster("Node", "n");
    let mut kv = ds.create(&key, b"0").await.unwrap();
    for i in 1..40 {
        kv = ds
            .update(&key, i.to_string().as_bytes(), kv.mod_revision)
            .await
            .unwrap();
    }
    assert_eq!(
        expect_compacted(ds.watch(&Query::kind("Node"), 0).await).await,
        (1, 31)
    );
    let mut stream = ds.watch(&Query::kind("Node"), 30).await.unwrap();
    assert_eq!(next_event(&mut stream).await.revision(), 31);
}

#[tokio::test]
async fn sqlite_watch_sees_writes_from_other_connections() {
    let dir = TempDir::new().unwrap();
    let url = temp_sqlite_url(dir.path());
    let watcher = connect(&url, &ConnectOptions::default()).await.unwrap();
    let writer = connect(&url, &ConnectOptions::default()).await.unwrap();
    let mut stream = watcher.watch(&Query::kind("Pod"), 0).await.unwrap();
    let kv = writer.create(&pod("default", "a"), b"a").await.unwrap();
    assert_eq!(next_event(&mut stream).await, Event::Put(kv.clone()));
    assert_eq!(watcher.get(&kv.key).await.unwrap(), Some(kv));
}

#[tokio::test]
async fn connect_creates_sqlite_parent_directories() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("var/lib/margay/margay.db");
    let url = format!("sqlite://{}", path.display());
    let ds = connect(&url, &ConnectOptions::default()).await.unwrap();
    assert_eq!(ds.describe(), url);
    ds.create(&Key::cluster("Node", "n"), b"").await.unwrap();
    assert!(path.is_file());
}

#[tokio::test]
async fn memory_urls_share_stores_by_name() {
    let opts = ConnectOptions::default();
    let a = connect("memory://conformance-shared", &opts).await.unwrap();
    let b = connect("memory://conformance-shared", &opts).await.unwrap();
    let fresh = connect("memory://", &opts).await.unwrap();
    a.create(&Key::cluster("Node", "n"), b"").await.unwrap();
    assert!(b.get(&Key::cluster("Node", "n")).await.unwrap().is_some());
    assert!(fresh
        .get(&Key::cluster("Node", "n"))
        .await
        .unwrap()
        .is_none());
}

#[tokio::test]
async fn unreachable_etcd_fails_to_connect() {
    // Nothing listens on a port we just released.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let started = Instant::now();
    match connect(
        &format!("etcd://127.0.0.1:{port}"),
        &ConnectOptions::default(),
    )
    .await
    {
        Err(Error::Backend { message, .. }) => assert!(message.contains("cannot reach")),
        other => panic!(
            "expected a connection error, got {:?}",
            other.map(|ds| ds.describe())
        ),
    }
    assert!(started.elapsed() < Duration::from_secs(15));
}

#[tokio::test]
async fn etcd_lists_across_multiple_endpoints_and_reports_tls_misconfiguration() {
    let server = EtcdServer::start();
    let url = format!("etcd://{0},{0}", server.endpoint());
    let ds = connect(&url, &ConnectOptions::default()).await.unwrap();
    assert_eq!(ds.describe(), url);
    ds.create(&Key::cluster("Node", "n"), b"").await.unwrap();
    assert_eq!(ds.list(&Query::kind("Node")).await.unwrap().items.len(), 1);

    let missing_ca = ConnectOptions {
        etcd_ca: Some("/nonexistent/ca.pem".into()),
        ..ConnectOptions::default()
    };
    match connect(&server.url(), &missing_ca).await {
        Err(Error::Backend { message, .. }) => assert!(message.contains("/nonexistent/ca.pem")),
        other => panic!(
            "expected a TLS error, got {:?}",
            other.map(|ds| ds.describe())
        ),
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    let output = std::process::Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("the openssl command (Debian package openssl) makes the TLS test's certificates");
    assert!(
        output.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, in `dir`.
fn make_pki(dir: &Path) {
    let key = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let subject = ["-subj", "/CN=margay-test-ca", "-days", "1"];
    openssl(
        dir,
        &[
            &["req", "-x509"][..],
            &key,
            &subject,
            &["-keyout", "ca.key", "-out", "ca.pem"],
        ]
        .concat(),
    );
    // etcd also dials itself with its server certificate, hence clientAuth on it too.
    for (name, ext) in [
        (
            "server",
            "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n",
        ),
        ("client", "extendedKeyUsage=clientAuth\n"),
    ] {
        std::fs::write(dir.join(format!("{name}.ext")), ext).unwrap();
        let (key_file, csr, pem, ext_file, cn) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.pem"),
            format!("{name}.ext"),
            format!("/CN={name}"),
        );
        openssl(
            dir,
            &[
                &["req"][..],
                &key,
                &["-keyout", &key_file, "-out", &csr, "-subj", &cn],
            ]
            .concat(),
        );
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "1",
                "-out",
                &pem,
                "-extfile",
                &ext_file,
            ],
        );
    }
}

#[tokio::test]
async fn etcd_over_mutual_tls() {
    let pki = TempDir::new().unwrap();
    make_pki(pki.path());
    let file = |name: &str| -> PathBuf { pki.path().join(name) };
    let server = EtcdServer::start_tls(&ServerTls {
        ca: file("ca.pem"),
        cert: file("server.pem"),
        key: file("server.key"),
    });
    assert!(server.url().starts_with("etcds://"));
    let opts = ConnectOptions {
        etcd_ca: Some(file("ca.pem")),
        etcd_cert: Some(file("client.pem")),
        etcd_key: Some(file("client.key")),
        ..ConnectOptions::default()
    };
    let ds = connect(&server.url(), &opts).await.unwrap();
    let mut stream = ds.watch(&Query::kind("Node"), 0).await.unwrap();
    let kv = ds.create(&Key::cluster("Node", "n"), b"tls").await.unwrap();
    assert_eq!(next_event(&mut stream).await, Event::Put(kv.clone()));

    // Certificate options turn TLS on for etcd:// as well.
    let plain_scheme = connect(&format!("etcd://{}", server.endpoint()), &opts)
        .await
        .unwrap();
    assert_eq!(plain_scheme.get(&kv.key).await.unwrap(), Some(kv));

    // The server demands a client certificate.
    let ca_only = ConnectOptions {
        etcd_ca: Some(file("ca.pem")),
        ..ConnectOptions::default()
    };
    assert!(connect(&server.url(), &ca_only).await.is_err());
    let cert_without_key = ConnectOptions {
        etcd_key: None,
        ..opts.clone()
    };
    match connect(&server.url(), &cert_without_key).await {
        Err(Error::Backend { message, .. }) => assert!(message.contains("certificate and a key")),
        other => panic!(
            "expected a TLS error, got {:?}",
            other.map(|ds| ds.describe())
        ),
    }
}

// ---- many processes, one counter -------------------------------------------------------

const CHILD_URL_ENV: &str = "MARGAY_CAS_CHILD_URL";
const CHILD_INCREMENTS_ENV: &str = "MARGAY_CAS_CHILD_INCREMENTS";
const CHILD_SHORT_LIVED_ENV: &str = "MARGAY_CAS_CHILD_SHORT_LIVED";
const PROCESSES: usize = 8;
const INCREMENTS: u64 = 200;

fn counter_key() -> Key {
    Key::cluster("Counter", "shared")
}

/// The body of each child process; a no-op in a normal test run.
#[tokio::test]
async fn cas_child() {
    let Ok(url) = std::env::var(CHILD_URL_ENV) else {
        return;
    };
    let increments: u64 = std::env::var(CHILD_INCREMENTS_ENV)
        .unwrap()
        .parse()
        .unwrap();
    // Half the children run as CLI/CNI processes do, half as the agent does.
    let opts = ConnectOptions {
        short_lived: std::env::var_os(CHILD_SHORT_LIVED_ENV).is_some(),
        ..ConnectOptions::default()
    };
    let ds = connect(&url, &opts).await.unwrap();
    let key = counter_key();
    let mut conflicts = 0;
    for _ in 0..increments {
        loop {
            let current = ds.get(&key).await.unwrap().expect("counter exists");
            let mut doc: serde_json::Value = serde_json::from_slice(&current.value).unwrap();
            let count = doc["count"].as_u64().expect("count is a number");
            doc["count"] = (count + 1).into();
            let value = serde_json::to_vec(&doc).unwrap();
            match ds.update(&key, &value, current.mod_revision).await {
                Ok(_) => break,
                Err(Error::Conflict { .. }) => conflicts += 1,
                Err(e) => panic!("increment failed: {e}"),
            }
        }
    }
    println!(
        "cas child {}: {increments} increments, {conflicts} conflicts",
        std::process::id()
    );
}

async fn run_cas_processes(url: &str) {
    let ds = connect(url, &ConnectOptions::default()).await.unwrap();
    ds.create(&counter_key(), br#"{"count":0,"owner":"conformance"}"#)
        .await
        .unwrap();
    let exe = std::env::current_exe().unwrap();
    let started = Instant::now();
    let children = (0..PROCESSES).map(|i| {
        let mut child = tokio::process::Command::new(&exe);
        child
            .args(["--exact", "cas_child", "--nocapture", "--test-threads=1"])
            .env(CHILD_URL_ENV, url)
            .env(CHILD_INCREMENTS_ENV, INCREMENTS.to_string())
            .stdin(Stdio::null())
            .kill_on_drop(true);
        if i % 2 == 0 {
            child.env(CHILD_SHORT_LIVED_ENV, "1");
        }
        child.output()
    });
    for output in futures::future::join_all(children).await {
        let output = output.unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success() && stdout.contains("1 passed"),
            "child failed ({}):\n{stdout}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        // libtest prints "test cas_child ... " before the child's own line.
        for line in stdout
            .lines()
            .filter_map(|l| l.find("cas child ").map(|i| &l[i..]))
        {
            eprintln!("{line}");
        }
    }
    let counter = ds.get(&counter_key()).await.unwrap().unwrap();
    let doc: serde_json::Value = serde_json::from_slice(&counter.value).unwrap();
    eprintln!(
        "{url}: {PROCESSES} processes x {INCREMENTS} increments in {:?}",
        started.elapsed()
    );
    assert_eq!(doc["count"], PROCESSES as u64 * INCREMENTS);
    assert_eq!(doc["owner"], "conformance");
}

#[tokio::test]
async fn sqlite_multi_process_compare_and_swap() {
    let dir = TempDir::new().unwrap();
    run_cas_processes(&temp_sqlite_url(dir.path())).await;
}

#[tokio::test]
async fn etcd_multi_process_compare_and_swap() {
    let server = EtcdServer::start();
    run_cas_processes(&server.url()).await;
}
