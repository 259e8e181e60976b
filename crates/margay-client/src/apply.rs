//! `apply` / `create` / `replace` of a batch of resources, all or nothing: every item is
//! checked (against what is stored and against the rest of the batch) before anything is
//! written, and a write that fails midway rolls back the writes before it.

use margay_api::{IPPool, Resource};

use crate::{decode_resource, document_for_create, encode, key, Client, Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApplyMode {
    /// Create, or replace the stored spec.
    Apply,
    /// Fail when the resource exists.
    Create,
    /// Fail when the resource does not exist; honours `resourceVersion` when given.
    Replace,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApplyOutcome {
    Created,
    Configured,
    Unchanged,
}

#[derive(Debug, Clone)]
pub struct Applied {
    pub resource: Resource,
    pub outcome: ApplyOutcome,
}

struct Planned {
    new: Resource,
    old: Option<Resource>,
}

fn reject(index: usize, message: impl Into<String>) -> Error {
    Error::Rejected {
        index,
        message: message.into(),
    }
}

/// Applies `items` (already decoded, defaulted and validated on their own).
pub async fn apply(client: &Client, items: Vec<Resource>, mode: ApplyMode) -> Result<Vec<Applied>> {
    let plan = plan(client, items, mode).await?;
    write(client, plan, mode).await
}

async fn plan(client: &Client, items: Vec<Resource>, mode: ApplyMode) -> Result<Vec<Planned>> {
    let mut plan: Vec<Planned> = Vec::with_capacity(items.len());
    for (index, new) in items.into_iter().enumerate() {
        let m = new.metadata();
        if plan.iter().any(|p| same_key(&p.new, &new)) {
            return Err(reject(index, format!("{} appears twice", new.describe())));
        }
        let old = client
            .get_resource(new.kind(), m.namespace.as_deref(), &m.name)
            .await?;
        match (&old, mode) {
            (Some(_), ApplyMode::Create) => {
                return Err(reject(index, format!("{} already exists", new.describe())))
            }
            (None, ApplyMode::Replace) => {
                return Err(reject(index, format!("{} does not exist", new.describe())))
            }
            _ => {}
        }
        if let Some(old) = &old {
            if let Some(e) = new.validate_update(old).first() {
                return Err(reject(index, e.to_string()));
            }
        }
        plan.push(Planned { new, old });
    }
    check_pool_overlaps(client, &plan).await?;
    Ok(plan)
}

fn same_key(a: &Resource, b: &Resource) -> bool {
    a.kind() == b.kind()
        && a.metadata().name == b.metadata().name
        && a.metadata().namespace == b.metadata().namespace
}

/// Pools may not overlap: check each pool of the batch against the stored pools it does not
/// replace and against the other pools of the batch.
async fn check_pool_overlaps(client: &Client, plan: &[Planned]) -> Result<()> {
    let batch: Vec<(usize, &IPPool)> = plan
        .iter()
        .enumerate()
        .filter_map(|(i, p)| match &p.new {
            Resource::IPPool(pool) => Some((i, pool)),
            _ => None,
        })
        .collect();
    if batch.is_empty() {
        return Ok(());
    }
    let (stored, _) = client.list::<IPPool>(None).await?;
    for (pos, (index, pool)) in batch.iter().enumerate() {
        let others = stored
            .iter()
            .filter(|s| {
                !batch
                    .iter()
                    .any(|(_, b)| b.metadata.name == s.metadata.name)
            })
            .chain(batch[..pos].iter().map(|(_, b)| *b));
        for other in others {
            if other.metadata.name != pool.metadata.name && pool.overlaps(other) {
                return Err(reject(
                    *index,
                    format!(
                        "spec.cidr: {} overlaps IPPool {} ({})",
                        pool.spec.cidr, other.metadata.name, other.spec.cidr
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Two versions are the same when they differ only in server-set metadata.
fn unchanged(new: &Resource, old: &Resource) -> bool {
    let mut a = new.clone();
    let mut b = old.clone();
    for r in [&mut a, &mut b] {
        let m = r.metadata_mut();
        m.uid = None;
        m.creation_timestamp = None;
        m.resource_version = None;
    }
    a == b
}

enum Done {
    Created(margay_datastore::Key, i64),
    Updated(margay_datastore::Key, Box<Resource>, i64),
}

async fn write(client: &Client, plan: Vec<Planned>, mode: ApplyMode) -> Result<Vec<Applied>> {
    let ds = client.datastore();
    let mut done: Vec<Done> = Vec::new();
    let mut applied = Vec::with_capacity(plan.len());
    for (index, Planned { new, old }) in plan.into_iter().enumerate() {
        let m = new.metadata();
        let k = key(new.kind(), m.namespace.as_deref(), &m.name);
        let result = match &old {
            Some(old) if unchanged(&new, old) => Ok((old.clone(), ApplyOutcome::Unchanged)),
            Some(old) => {
                let stored_rev = old.metadata().revision().unwrap_or_default();
                let expected = match mode {
                    ApplyMode::Replace => new.metadata().revision().unwrap_or(stored_rev),
                    _ => stored_rev,
                };
                let mut doc = new.clone();
                doc.metadata_mut().uid = old.metadata().uid.clone();
                doc.metadata_mut().creation_timestamp = old.metadata().creation_timestamp.clone();
                match ds.update(&k, &encode(&doc), expected).await {
                    Ok(kv) => {
                        done.push(Done::Updated(
                            k.clone(),
                            Box::new(old.clone()),
                            kv.mod_revision,
                        ));
                        decode_resource(&kv).map(|r| (r, ApplyOutcome::Configured))
                    }
                    Err(e) => Err(e.into()),
                }
            }
            None => {
                let doc = document_for_create(new.clone());
                match ds.create(&k, &encode(&doc)).await {
                    Ok(kv) => {
                        done.push(Done::Created(k.clone(), kv.mod_revision));
                        decode_resource(&kv).map(|r| (r, ApplyOutcome::Created))
                    }
                    Err(e) => Err(e.into()),
                }
            }
        };
        match result {
            Ok((resource, outcome)) => applied.push(Applied { resource, outcome }),
            Err(e) => {
                rollback(client, done).await;
                return Err(reject(index, format!("{}: {e}", new.describe())));
            }
        }
    }
    Ok(applied)
}

/// Best effort: undo the batch's earlier writes, newest first, unless someone changed them since.
async fn rollback(client: &Client, done: Vec<Done>) {
    let ds = client.datastore();
    for d in done.into_iter().rev() {
        let outcome = match &d {
            Done::Created(k, rev) => ds.delete(k, Some(*rev)).await.map(|_| ()),
            Done::Updated(k, old, rev) => ds.update(k, &encode(old), *rev).await.map(|_| ()),
        };
        if let Err(e) = outcome {
            tracing::warn!("rollback of a partial apply failed: {e}");
        }
    }
}
