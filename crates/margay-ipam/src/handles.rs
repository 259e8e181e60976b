//! `IPAMHandle` bookkeeping: the per-block address counts of a handle.

use margay_api::{IPAMHandle, IPAMHandleSpec, ObjectMeta};
use margay_client::Client;

use crate::error::Result;
use crate::retry::with_retry;

/// Adds `n` addresses in `block` to the handle, creating it if needed.
pub(crate) async fn increment(client: &Client, handle: &str, block: &str, n: u32) -> Result<()> {
    with_retry(|| async {
        match client.get::<IPAMHandle>(None, handle).await? {
            Some(mut h) => {
                *h.spec.block.entry(block.to_owned()).or_default() += n;
                h.spec.deleted = false;
                client.update(&h).await?;
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
                client.create(&h).await?;
            }
        }
        Ok(())
    })
    .await
}

/// Removes `n` addresses in `block` from the handle; deletes the handle when it holds none.
pub(crate) async fn decrement(client: &Client, handle: &str, block: &str, n: u32) -> Result<()> {
    with_retry(|| async {
        let Some(mut h) = client.get::<IPAMHandle>(None, handle).await? else {
            return Ok(());
        };
        let left = match h.spec.block.get_mut(block) {
            Some(count) => {
                *count = count.saturating_sub(n);
                *count
            }
            None => return Ok(()),
        };
        if left == 0 {
            h.spec.block.remove(block);
        }
        if h.spec.block.is_empty() {
            client
                .delete::<IPAMHandle>(None, handle, h.metadata.revision())
                .await?;
        } else {
            client.update(&h).await?;
        }
        Ok(())
    })
    .await
}
