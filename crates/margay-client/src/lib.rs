//! Typed access to Margay resources stored in a [`Datastore`].
//!
//! Values are stored as full JSON documents (`apiVersion`, `kind`, `metadata`, `spec`) without
//! `metadata.resourceVersion`, which is filled from the datastore's revision on read and used as
//! the compare-and-swap token on write.

mod apply;

use std::marker::PhantomData;
use std::time::SystemTime;

use margay_api::{Kind, Object, Resource};
use margay_datastore::{Key, KeyValue, Query, Read, ReadResult, SharedDatastore};

pub use apply::{apply, Applied, ApplyMode, ApplyOutcome};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Datastore(#[from] margay_datastore::Error),
    #[error("stored {key} is unreadable: {message}")]
    Corrupt { key: Key, message: String },
    #[error("{0}")]
    Invalid(String),
    /// Item `index` of an apply batch was refused; nothing of the batch was written.
    #[error("{message}")]
    Rejected { index: usize, message: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A handle on the datastore that speaks resources instead of bytes.
#[derive(Clone)]
pub struct Client {
    ds: SharedDatastore,
}

/// The datastore key of a resource.
pub fn key(kind: Kind, namespace: Option<&str>, name: &str) -> Key {
    Key::new(kind.name(), namespace, name)
}

impl Client {
    pub fn new(ds: SharedDatastore) -> Client {
        Client { ds }
    }

    pub fn datastore(&self) -> &SharedDatastore {
        &self.ds
    }

    pub async fn get<T: Object>(&self, namespace: Option<&str>, name: &str) -> Result<Option<T>> {
        match self.ds.get(&key(T::KIND, namespace, name)).await? {
            Some(kv) => Ok(Some(decode_typed(&kv)?)),
            None => Ok(None),
        }
    }

    /// Every object of the kind (in `namespace`, or everywhere), and the list's revision.
    pub async fn list<T: Object>(&self, namespace: Option<&str>) -> Result<(Vec<T>, i64)> {
        let res = self.ds.list(&query(T::KIND, namespace)).await?;
        let items = res.items.iter().map(decode_typed).collect::<Result<_>>()?;
        Ok((items, res.revision))
    }

    /// The objects of the kind whose names start with `prefix`, and the list's revision.
    pub async fn list_prefix<T: Object>(
        &self,
        namespace: Option<&str>,
        prefix: &str,
    ) -> Result<(Vec<T>, i64)> {
        let res = self
            .ds
            .list(&prefix_query(T::KIND, namespace, prefix))
            .await?;
        let items = res.items.iter().map(decode_typed).collect::<Result<_>>()?;
        Ok((items, res.revision))
    }

    /// Runs a batch of reads in one datastore round trip, at one revision.
    pub async fn read(&self, reads: &Reads) -> Result<ReadResults> {
        Ok(ReadResults {
            results: self.ds.read_many(&reads.reads).await?,
        })
    }

    /// Creates the object; server fields (uid, creation time) are set here.
    pub async fn create<T: Object>(&self, obj: &T) -> Result<T> {
        let doc = document_for_create(Resource::from_object(obj.clone()));
        let k = key_of(obj.metadata(), T::KIND);
        let kv = self.ds.create(&k, &encode(&doc)).await?;
        decode_typed(&kv)
    }

    /// Compare-and-swap on `metadata.resourceVersion`, which must be set (read the object first).
    pub async fn update<T: Object>(&self, obj: &T) -> Result<T> {
        let rev = obj.metadata().revision().ok_or_else(|| {
            Error::Invalid(format!(
                "update of {} {} needs metadata.resourceVersion",
                T::KIND,
                obj.metadata().name
            ))
        })?;
        let doc = Resource::from_object(obj.clone());
        let k = key_of(obj.metadata(), T::KIND);
        let kv = self.ds.update(&k, &encode(&doc), rev).await?;
        decode_typed(&kv)
    }

    /// Deletes, with compare-and-swap when `revision` is given; returns what was deleted.
    pub async fn delete<T: Object>(
        &self,
        namespace: Option<&str>,
        name: &str,
        revision: Option<i64>,
    ) -> Result<T> {
        let kv = self
            .ds
            .delete(&key(T::KIND, namespace, name), revision)
            .await?;
        decode_typed(&kv)
    }

    pub async fn get_resource(
        &self,
        kind: Kind,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Option<Resource>> {
        match self.ds.get(&key(kind, namespace, name)).await? {
            Some(kv) => Ok(Some(decode_resource(&kv)?)),
            None => Ok(None),
        }
    }

    pub async fn list_resources(
        &self,
        kind: Kind,
        namespace: Option<&str>,
    ) -> Result<Vec<Resource>> {
        let res = self.ds.list(&query(kind, namespace)).await?;
        res.items.iter().map(decode_resource).collect()
    }

    pub async fn delete_resource(
        &self,
        kind: Kind,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Resource> {
        let kv = self.ds.delete(&key(kind, namespace, name), None).await?;
        decode_resource(&kv)
    }
}

fn query(kind: Kind, namespace: Option<&str>) -> Query {
    Query {
        kind: kind.name().into(),
        namespace: namespace.map(str::to_owned),
        name_prefix: None,
    }
}

fn prefix_query(kind: Kind, namespace: Option<&str>, prefix: &str) -> Query {
    Query {
        name_prefix: Some(prefix.to_owned()),
        ..query(kind, namespace)
    }
}

/// A batch of typed reads for [`Client::read`]; each read returns the [`Slot`] its answer
/// is taken from.
#[derive(Debug, Clone, Default)]
pub struct Reads {
    reads: Vec<Read>,
}

/// Where the answer to one read of a [`Reads`] batch is: `Option<T>` for a get, `Vec<T>`
/// for a list.
#[derive(Debug)]
pub struct Slot<T> {
    index: usize,
    answer: PhantomData<fn() -> T>,
}

impl Reads {
    pub fn new() -> Reads {
        Reads::default()
    }

    fn push<T>(&mut self, read: Read) -> Slot<T> {
        self.reads.push(read);
        Slot {
            index: self.reads.len() - 1,
            answer: PhantomData,
        }
    }

    pub fn get<T: Object>(&mut self, namespace: Option<&str>, name: &str) -> Slot<Option<T>> {
        self.push(Read::Get(key(T::KIND, namespace, name)))
    }

    pub fn list<T: Object>(&mut self, namespace: Option<&str>) -> Slot<Vec<T>> {
        self.push(Read::List(query(T::KIND, namespace)))
    }

    /// The objects whose names start with `prefix`.
    pub fn list_prefix<T: Object>(
        &mut self,
        namespace: Option<&str>,
        prefix: &str,
    ) -> Slot<Vec<T>> {
        self.push(Read::List(prefix_query(T::KIND, namespace, prefix)))
    }
}

/// The answers to a [`Reads`] batch.
#[derive(Debug)]
pub struct ReadResults {
    results: Vec<ReadResult>,
}

impl ReadResults {
    pub fn get<T: Object>(&self, slot: Slot<Option<T>>) -> Result<Option<T>> {
        match self.results.get(slot.index) {
            Some(ReadResult::Get(kv)) => kv.as_ref().map(decode_typed).transpose(),
            _ => Err(Error::Invalid(format!("read {} is not a get", slot.index))),
        }
    }

    pub fn list<T: Object>(&self, slot: Slot<Vec<T>>) -> Result<Vec<T>> {
        match self.results.get(slot.index) {
            Some(ReadResult::List(list)) => list.items.iter().map(decode_typed).collect(),
            _ => Err(Error::Invalid(format!("read {} is not a list", slot.index))),
        }
    }
}

fn key_of(meta: &margay_api::ObjectMeta, kind: Kind) -> Key {
    key(kind, meta.namespace.as_deref(), &meta.name)
}

/// Sets the server-owned metadata of a new object.
pub(crate) fn document_for_create(mut res: Resource) -> Resource {
    let meta = res.metadata_mut();
    meta.uid = Some(uuid::Uuid::new_v4().to_string());
    meta.creation_timestamp =
        Some(humantime::format_rfc3339_seconds(SystemTime::now()).to_string());
    res
}

/// The stored bytes: the full document without `resourceVersion` (the revision is the truth).
pub(crate) fn encode(res: &Resource) -> Vec<u8> {
    let mut res = res.clone();
    res.metadata_mut().resource_version = None;
    serde_json::to_vec(&res.to_value()).expect("resources serialize to JSON")
}

fn decode_typed<T: Object>(kv: &KeyValue) -> Result<T> {
    let mut obj: T = serde_json::from_slice(&kv.value).map_err(|e| Error::Corrupt {
        key: kv.key.clone(),
        message: e.to_string(),
    })?;
    obj.metadata_mut().resource_version = Some(kv.mod_revision.to_string());
    Ok(obj)
}

/// The resource a stored value holds (as a watch event or a list gives it), its
/// `resourceVersion` the value's revision.
pub fn decode_resource(kv: &KeyValue) -> Result<Resource> {
    let kind = Kind::ALL
        .iter()
        .copied()
        .find(|k| k.name() == kv.key.kind)
        .ok_or_else(|| Error::Corrupt {
            key: kv.key.clone(),
            message: "unknown kind".into(),
        })?;
    let value: serde_json::Value =
        serde_json::from_slice(&kv.value).map_err(|e| Error::Corrupt {
            key: kv.key.clone(),
            message: e.to_string(),
        })?;
    let mut res = Resource::from_stored(kind, value).map_err(|e| Error::Corrupt {
        key: kv.key.clone(),
        message: e.to_string(),
    })?;
    res.metadata_mut().resource_version = Some(kv.mod_revision.to_string());
    Ok(res)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use margay_api::{IPPool, Node, ObjectMeta};
    use margay_datastore::memory::MemoryDatastore;

    use super::*;

    fn node(name: &str) -> Node {
        Node {
            metadata: ObjectMeta::named(name),
            spec: Default::default(),
        }
    }

    #[tokio::test]
    async fn a_batch_of_reads_answers_each_slot() {
        let client = Client::new(Arc::new(MemoryDatastore::new()));
        let pool = IPPool::new("p", "10.0.0.0/16".parse().unwrap());
        let pool = client.create(&pool).await.unwrap();
        for name in ["n1", "n10", "m1"] {
            client.create(&node(name)).await.unwrap();
        }
        let mut reads = Reads::new();
        let one = reads.get::<IPPool>(None, "p");
        let missing = reads.get::<Node>(None, "n2");
        let prefixed = reads.list_prefix::<Node>(None, "n1");
        let pools = reads.list::<IPPool>(None);
        let got = client.read(&reads).await.unwrap();
        assert_eq!(got.get(one).unwrap(), Some(pool.clone()));
        assert_eq!(got.get(missing).unwrap(), None);
        let names = |nodes: Vec<Node>| -> Vec<String> {
            nodes.into_iter().map(|n| n.metadata.name).collect()
        };
        assert_eq!(names(got.list(prefixed).unwrap()), ["n1", "n10"]);
        assert_eq!(got.list(pools).unwrap(), vec![pool]);
        let (listed, _) = client.list_prefix::<Node>(None, "m").await.unwrap();
        assert_eq!(names(listed), ["m1"]);
    }
}
