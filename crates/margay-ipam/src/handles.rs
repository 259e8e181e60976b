//! `IPAMHandle` bookkeeping: the per-block address counts of a handle.

use std::sync::Mutex;

use margay_api::{IPAMHandle, IPAMHandleSpec, ObjectMeta};
use margay_client::Client;

use crate::error::Result;
use crate::retry::with_retry;

/// What a request last saw of its handle (read with its other inputs, or written by itself),
/// so that its next handle write need not read the handle first. A view gone stale fails the
/// compare-and-swap, and the retry reads afresh.
#[derive(Debug, Default)]
pub(crate) struct HandleView(Mutex<Option<Option<IPAMHandle>>>);

impl HandleView {
    /// A view of the handle as read (`None`: it does not exist).
    pub(crate) fn seen(handle: Option<IPAMHandle>) -> HandleView {
        HandleView(Mutex::new(Some(handle)))
    }

    /// The view, if there is one, leaving none: an attempt that fails must read afresh.
    fn take(&self) -> Option<Option<IPAMHandle>> {
        self.lock().take()
    }

    /// The handle as last seen, or as read now when there is no view.
    pub(crate) async fn current(
        &self,
        client: &Client,
        handle: &str,
    ) -> Result<Option<IPAMHandle>> {
        match self.take() {
            Some(seen) => Ok(seen),
            None => Ok(client.get::<IPAMHandle>(None, handle).await?),
        }
    }

    fn set(&self, handle: Option<IPAMHandle>) {
        *self.lock() = Some(handle);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Option<IPAMHandle>>> {
        // Only ever replaced whole, so a poisoned value is still a consistent one.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Adds `n` addresses in `block` to the handle, creating it if needed.
pub(crate) async fn increment(
    client: &Client,
    handle: &str,
    block: &str,
    n: u32,
    view: &HandleView,
) -> Result<()> {
    with_retry(|| async {
        let written = match view.current(client, handle).await? {
            Some(mut h) => {
                *h.spec.block.entry(block.to_owned()).or_default() += n;
                h.spec.deleted = false;
                client.update(&h).await?
            }
            None => {
                let h = IPAMHandle {
                    metadata: ObjectMeta::named(handle),
                    spec: IPAMHandleSpec {
                        handle_id: handle.to_owned(),
                        block: [(block.to_owned(), n)].into(),
                        deleted: false,
                    },
                };
                client.create(&h).await?
            }
        };
        view.set(Some(written));
        Ok(())
    })
    .await
}

/// Removes `n` addresses in `block` from the handle; deletes the handle when it holds none.
/// It reads the handle (it runs on release and on failed allocations, not on the fast path)
/// and leaves `view` showing what it wrote.
pub(crate) async fn decrement(
    client: &Client,
    handle: &str,
    block: &str,
    n: u32,
    view: &HandleView,
) -> Result<()> {
    with_retry(|| async {
        view.take();
        let Some(mut h) = client.get::<IPAMHandle>(None, handle).await? else {
            view.set(None);
            return Ok(());
        };
        let left = match h.spec.block.get_mut(block) {
            Some(count) => {
                *count = count.saturating_sub(n);
                *count
            }
            None => {
                view.set(Some(h));
                return Ok(());
            }
        };
        if left == 0 {
            h.spec.block.remove(block);
        }
        if h.spec.block.is_empty() {
            client
                .delete::<IPAMHandle>(None, handle, h.metadata.revision())
                .await?;
            view.set(None);
        } else {
            view.set(Some(client.update(&h).await?));
        }
        Ok(())
    })
    .await
}
