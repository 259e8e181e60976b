//! etcd v3 backend (`etcd://HOST:PORT[,HOST:PORT…]`, `etcds://…` for TLS).
//!
//! Key layout: `/margay/v1/<kind>/<namespace>/<name>`, with `_cluster` in place of the
//! namespace for cluster-scoped keys (e.g. `/margay/v1/Node/_cluster/node-1`,
//! `/margay/v1/WorkloadEndpoint/default/pod-a`). Values are stored as given. etcd's own
//! revisions are the datastore's revisions: `create` is a transaction guarded by
//! `create_revision == 0`, `update`/`delete` by `mod_revision == expected`.

use std::collections::VecDeque;
use std::future::Future;
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{
    Certificate, Client, Compare, CompareOp, DeleteOptions, EventType, GetOptions, Identity,
    PutOptions, TlsOptions, Txn, TxnOp, TxnOpResponse, TxnResponse, WatchOptions, WatchStream,
};
use tracing::{debug, warn};

use crate::{
    validate_key, validate_query, ConnectOptions, Datastore, Error, Event, EventStream, Key,
    KeyValue, ListResult, Query, Read, ReadResult, Result, CLUSTER_SEGMENT,
};

const BACKEND: &str = "etcd";

/// Prefix of every key Margay writes to etcd.
pub const KEY_PREFIX: &str = "/margay/v1/";

/// Bound on every unary request, so an unreachable cluster surfaces as an error.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long [`EtcdDatastore::connect`] waits for the cluster to answer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Large lists of endpoints must not trip gRPC's 4 MiB default.
const MAX_MESSAGE_SIZE: usize = 256 * 1024 * 1024;

fn backend_error(message: String) -> Error {
    Error::Backend {
        backend: BACKEND,
        message,
    }
}

/// The etcd key for `key`.
pub fn encode_key(key: &Key) -> String {
    format!(
        "{KEY_PREFIX}{}/{}/{}",
        key.kind,
        key.namespace.as_deref().unwrap_or(CLUSTER_SEGMENT),
        key.name
    )
}

/// The inverse of [`encode_key`]; `None` for keys outside the layout.
pub fn decode_key(raw: &[u8]) -> Option<Key> {
    let rest = std::str::from_utf8(raw).ok()?.strip_prefix(KEY_PREFIX)?;
    let mut parts = rest.splitn(3, '/');
    let (kind, namespace, name) = (parts.next()?, parts.next()?, parts.next()?);
    if kind.is_empty() || namespace.is_empty() || name.is_empty() || name.contains('/') {
        return None;
    }
    let namespace = (namespace != CLUSTER_SEGMENT).then(|| namespace.to_owned());
    Some(Key {
        kind: kind.to_owned(),
        namespace,
        name: name.to_owned(),
    })
}

/// The narrowest etcd prefix covering `query`; results still go through `Query::matches`.
fn query_prefix(query: &Query) -> String {
    match &query.namespace {
        Some(ns) => format!(
            "{KEY_PREFIX}{}/{ns}/{}",
            query.kind,
            query.name_prefix.as_deref().unwrap_or("")
        ),
        None => format!("{KEY_PREFIX}{}/", query.kind),
    }
}

/// Awaits one etcd request under [`REQUEST_TIMEOUT`], naming `what` in errors.
async fn call<T>(
    what: &str,
    request: impl Future<Output = std::result::Result<T, etcd_client::Error>>,
) -> Result<T> {
    match tokio::time::timeout(REQUEST_TIMEOUT, request).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(backend_error(format!("{what}: {e}"))),
        Err(_) => Err(backend_error(format!(
            "{what}: no answer within {REQUEST_TIMEOUT:?}"
        ))),
    }
}

fn to_kv(key: Key, kv: &etcd_client::KeyValue) -> KeyValue {
    KeyValue {
        key,
        value: kv.value().to_vec(),
        create_revision: kv.create_revision(),
        mod_revision: kv.mod_revision(),
    }
}

/// The items of a prefix read that match `query`, in the trait's key order.
fn list_items(query: &Query, kvs: &[etcd_client::KeyValue]) -> Vec<KeyValue> {
    let mut items: Vec<KeyValue> = kvs
        .iter()
        .filter_map(|kv| match decode_key(kv.key()) {
            Some(key) => Some(to_kv(key, kv)),
            None => {
                warn!(key = %String::from_utf8_lossy(kv.key()), "ignoring malformed etcd key");
                None
            }
        })
        .filter(|kv| query.matches(&kv.key))
        .collect();
    // etcd orders by raw key bytes, where "a-b/x" sorts before "a/x"; the trait promises
    // (namespace, name) order.
    items.sort_by(|a, b| a.key.cmp(&b.key));
    items
}

fn header_revision(what: &str, resp: &TxnResponse) -> Result<i64> {
    resp.header()
        .map(|h| h.revision())
        .ok_or_else(|| backend_error(format!("{what}: response without header")))
}

fn unexpected(what: &str) -> Error {
    backend_error(format!("{what}: unexpected transaction response"))
}

/// The etcd datastore.
pub struct EtcdDatastore {
    client: Client,
    description: String,
}

impl EtcdDatastore {
    /// Connects to `endpoints` (`HOST:PORT`) and checks that the cluster answers. TLS is used
    /// when `tls` is set or `opts` carries any TLS file.
    pub async fn connect(endpoints: &[String], tls: bool, opts: &ConnectOptions) -> Result<Self> {
        let tls = tls || opts.has_tls();
        let scheme = if tls { "https" } else { "http" };
        let urls: Vec<String> = endpoints
            .iter()
            .map(|ep| format!("{scheme}://{ep}"))
            .collect();
        let mut options = etcd_client::ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(5))
            // Keepalives make a watch on a dead connection fail instead of hanging forever.
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5));
        if tls {
            options = options.with_tls(tls_options(opts).await?);
        }
        let description = format!(
            "{}://{}",
            if tls { "etcds" } else { "etcd" },
            endpoints.join(",")
        );
        let client = Client::connect(&urls, Some(options))
            .await
            .map_err(|e| backend_error(format!("cannot connect to {description}: {e}")))?;
        let store = EtcdDatastore {
            client,
            description,
        };
        // The client connects lazily; ask for the revision so a wrong address fails here.
        match tokio::time::timeout(CONNECT_TIMEOUT, store.revision()).await {
            Ok(Ok(revision)) => {
                debug!(endpoints = %store.description, revision, "connected to etcd");
                Ok(store)
            }
            Ok(Err(e)) => Err(backend_error(format!(
                "cannot reach {}: {e}",
                store.description
            ))),
            Err(_) => Err(backend_error(format!(
                "cannot reach {}: no answer within {CONNECT_TIMEOUT:?}",
                store.description
            ))),
        }
    }

    fn kv(&self) -> etcd_client::KvClient {
        self.client
            .kv_client()
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
    }

    async fn txn(&self, what: &str, txn: Txn) -> Result<TxnResponse> {
        call(what, self.kv().txn(txn)).await
    }
}

async fn read_pem(what: &str, path: &std::path::Path) -> Result<Vec<u8>> {
    tokio::fs::read(path)
        .await
        .map_err(|e| backend_error(format!("cannot read etcd {what} {}: {e}", path.display())))
}

async fn tls_options(opts: &ConnectOptions) -> Result<TlsOptions> {
    // No system roots are compiled in: etcd clusters run on their own CA.
    let ca = opts.etcd_ca.as_deref().ok_or_else(|| {
        backend_error("TLS needs the CA that signed the etcd certificates (etcd_ca)".into())
    })?;
    let mut tls =
        TlsOptions::new().ca_certificate(Certificate::from_pem(read_pem("CA", ca).await?));
    match (&opts.etcd_cert, &opts.etcd_key) {
        (Some(cert), Some(key)) => {
            let identity = Identity::from_pem(
                read_pem("certificate", cert).await?,
                read_pem("key", key).await?,
            );
            tls = tls.identity(identity);
        }
        (None, None) => {}
        _ => {
            return Err(backend_error(
                "etcd client TLS needs both a certificate and a key".into(),
            ))
        }
    }
    Ok(tls)
}

#[async_trait]
impl Datastore for EtcdDatastore {
    async fn get(&self, key: &Key) -> Result<Option<KeyValue>> {
        validate_key(BACKEND, key)?;
        let resp = call("get", self.kv().get(encode_key(key), None)).await?;
        Ok(resp.kvs().first().map(|kv| to_kv(key.clone(), kv)))
    }

    async fn list(&self, query: &Query) -> Result<ListResult> {
        validate_query(BACKEND, query)?;
        let options = GetOptions::new().with_prefix();
        let resp = call("list", self.kv().get(query_prefix(query), Some(options))).await?;
        let revision = resp
            .header()
            .map(|h| h.revision())
            .ok_or_else(|| backend_error("list: response without header".into()))?;
        let items = list_items(query, resp.kvs());
        Ok(ListResult { items, revision })
    }

    async fn read_many(&self, reads: &[Read]) -> Result<Vec<ReadResult>> {
        // One transaction of range reads: one round trip, all at its revision (etcd takes up
        // to --max-txn-ops, 128 by default, in one transaction).
        let mut ops = Vec::with_capacity(reads.len());
        for read in reads {
            ops.push(match read {
                Read::Get(key) => {
                    validate_key(BACKEND, key)?;
                    TxnOp::get(encode_key(key), None)
                }
                Read::List(query) => {
                    validate_query(BACKEND, query)?;
                    TxnOp::get(query_prefix(query), Some(GetOptions::new().with_prefix()))
                }
            });
        }
        let resp = self.txn("read", Txn::new().and_then(ops)).await?;
        let revision = header_revision("read", &resp)?;
        let answers = resp.op_responses();
        if answers.len() != reads.len() {
            return Err(unexpected("read"));
        }
        reads
            .iter()
            .zip(answers)
            .map(|(read, answer)| match (read, answer) {
                (Read::Get(key), TxnOpResponse::Get(get)) => Ok(ReadResult::Get(
                    get.kvs().first().map(|kv| to_kv(key.clone(), kv)),
                )),
                (Read::List(query), TxnOpResponse::Get(get)) => Ok(ReadResult::List(ListResult {
                    items: list_items(query, get.kvs()),
                    revision,
                })),
                _ => Err(unexpected("read")),
            })
            .collect()
    }

    async fn create(&self, key: &Key, value: &[u8]) -> Result<KeyValue> {
        validate_key(BACKEND, key)?;
        let raw = encode_key(key);
        let txn = Txn::new()
            .when([Compare::create_revision(raw.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(raw, value, None)]);
        let resp = self.txn("create", txn).await?;
        if !resp.succeeded() {
            return Err(Error::AlreadyExists(key.clone()));
        }
        let revision = header_revision("create", &resp)?;
        Ok(KeyValue {
            key: key.clone(),
            value: value.to_vec(),
            create_revision: revision,
            mod_revision: revision,
        })
    }

    async fn update(&self, key: &Key, value: &[u8], expected_revision: i64) -> Result<KeyValue> {
        validate_key(BACKEND, key)?;
        let raw = encode_key(key);
        // `version > 0` too: a missing key has mod_revision 0, which must not match.
        let txn = Txn::new()
            .when([
                Compare::mod_revision(raw.clone(), CompareOp::Equal, expected_revision),
                Compare::version(raw.clone(), CompareOp::Greater, 0),
            ])
            .and_then([TxnOp::put(
                raw.clone(),
                value,
                Some(PutOptions::new().with_prev_key()),
            )])
            .or_else([TxnOp::get(raw, None)]);
        let resp = self.txn("update", txn).await?;
        let ops = resp.op_responses();
        if !resp.succeeded() {
            return Err(failed_compare(key, expected_revision, ops.first()));
        }
        let revision = header_revision("update", &resp)?;
        let create_revision = match ops.first() {
            Some(TxnOpResponse::Put(put)) => put.prev_key().map(|kv| kv.create_revision()),
            _ => None,
        }
        .ok_or_else(|| unexpected("update"))?;
        Ok(KeyValue {
            key: key.clone(),
            value: value.to_vec(),
            create_revision,
            mod_revision: revision,
        })
    }

    async fn delete(&self, key: &Key, expected_revision: Option<i64>) -> Result<KeyValue> {
        validate_key(BACKEND, key)?;
        let raw = encode_key(key);
        let mut compares = vec![Compare::version(raw.clone(), CompareOp::Greater, 0)];
        if let Some(expected) = expected_revision {
            compares.push(Compare::mod_revision(
                raw.clone(),
                CompareOp::Equal,
                expected,
            ));
        }
        let txn = Txn::new()
            .when(compares)
            .and_then([TxnOp::delete(
                raw.clone(),
                Some(DeleteOptions::new().with_prev_key()),
            )])
            .or_else([TxnOp::get(raw, None)]);
        let resp = self.txn("delete", txn).await?;
        let ops = resp.op_responses();
        if !resp.succeeded() {
            return Err(failed_compare(
                key,
                expected_revision.unwrap_or_default(),
                ops.first(),
            ));
        }
        match ops.first() {
            Some(TxnOpResponse::Delete(del)) => del
                .prev_kvs()
                .first()
                .map(|kv| to_kv(key.clone(), kv))
                .ok_or_else(|| unexpected("delete")),
            _ => Err(unexpected("delete")),
        }
    }

    async fn watch(&self, query: &Query, after_revision: i64) -> Result<EventStream> {
        validate_query(BACKEND, query)?;
        let start = after_revision + 1;
        let options = WatchOptions::new().with_prefix().with_start_revision(start);
        let mut client = self
            .client
            .watch_client()
            .max_decoding_message_size(MAX_MESSAGE_SIZE);
        let stream = call("watch", client.watch(query_prefix(query), Some(options))).await?;
        let state = WatchState {
            stream,
            query: query.clone(),
            next: start,
            pending: VecDeque::new(),
            done: false,
        };
        Ok(Box::pin(futures::stream::unfold(state, next_event)))
    }

    async fn revision(&self) -> Result<i64> {
        // A count of one (absent) key is the cheapest request that carries the revision.
        let options = GetOptions::new().with_count_only();
        let resp = call("revision", self.kv().get(KEY_PREFIX, Some(options))).await?;
        resp.header()
            .map(|h| h.revision())
            .ok_or_else(|| backend_error("revision: response without header".into()))
    }

    fn describe(&self) -> String {
        self.description.clone()
    }
}

/// The error for a failed update/delete guard, from the `or_else` read of the key.
fn failed_compare(key: &Key, expected: i64, op: Option<&TxnOpResponse>) -> Error {
    match op {
        Some(TxnOpResponse::Get(get)) => match get.kvs().first() {
            Some(current) => Error::Conflict {
                key: key.clone(),
                expected,
                actual: current.mod_revision(),
            },
            None => Error::NotFound(key.clone()),
        },
        _ => unexpected("compare-and-swap"),
    }
}

struct WatchState {
    /// Holds the request half too: dropping it would make etcd end the stream.
    stream: WatchStream,
    query: Query,
    /// The first revision not yet delivered (for `Error::Compacted`).
    next: i64,
    pending: VecDeque<Event>,
    done: bool,
}

async fn next_event(mut st: WatchState) -> Option<(Result<Event>, WatchState)> {
    loop {
        if let Some(event) = st.pending.pop_front() {
            return Some((Ok(event), st));
        }
        if st.done {
            return None;
        }
        let resp = match st.stream.message().await {
            Ok(Some(resp)) => resp,
            Ok(None) => {
                debug!("etcd watch stream ended");
                return None;
            }
            Err(e) => {
                st.done = true;
                return Some((Err(backend_error(format!("watch: {e}"))), st));
            }
        };
        if resp.compact_revision() > 0 {
            st.done = true;
            let err = Error::Compacted {
                requested: st.next,
                compacted: resp.compact_revision(),
            };
            return Some((Err(err), st));
        }
        if resp.canceled() {
            st.done = true;
            let err = backend_error(format!("watch canceled: {}", resp.cancel_reason()));
            return Some((Err(err), st));
        }
        for event in resp.events() {
            let Some(kv) = event.kv() else { continue };
            st.next = st.next.max(kv.mod_revision() + 1);
            let Some(key) = decode_key(kv.key()) else {
                warn!(key = %String::from_utf8_lossy(kv.key()), "ignoring malformed etcd key");
                continue;
            };
            if !st.query.matches(&key) {
                continue;
            }
            st.pending.push_back(match event.event_type() {
                EventType::Put => Event::Put(to_kv(key, kv)),
                EventType::Delete => Event::Delete {
                    key,
                    revision: kv.mod_revision(),
                },
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_layout_round_trips() {
        let namespaced = Key::new("WorkloadEndpoint", Some("default"), "pod-a");
        let cluster = Key::cluster("Node", "node-1");
        assert_eq!(
            encode_key(&namespaced),
            "/margay/v1/WorkloadEndpoint/default/pod-a"
        );
        assert_eq!(encode_key(&cluster), "/margay/v1/Node/_cluster/node-1");
        for key in [namespaced, cluster] {
            assert_eq!(decode_key(encode_key(&key).as_bytes()), Some(key));
        }
        assert_eq!(decode_key(b"/margay/v1/Node/_cluster"), None);
        assert_eq!(decode_key(b"/other/Node/_cluster/n"), None);
    }

    #[test]
    fn query_prefixes_are_as_narrow_as_possible() {
        let mut query = Query::kind("Pod");
        assert_eq!(query_prefix(&query), "/margay/v1/Pod/");
        query.name_prefix = Some("web".into());
        assert_eq!(query_prefix(&query), "/margay/v1/Pod/");
        query.namespace = Some("default".into());
        assert_eq!(query_prefix(&query), "/margay/v1/Pod/default/web");
    }
}
