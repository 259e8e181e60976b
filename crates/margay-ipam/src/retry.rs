//! Bounded retry with jitter for compare-and-swap loops.

use std::future::Future;
use std::time::Duration;

use rand::Rng;

use crate::error::{Error, Result};

/// Calico retries datastore conflicts up to 100 times.
pub(crate) const MAX_ATTEMPTS: u32 = 100;

/// Runs `op` until it succeeds or fails with something other than a conflict; after
/// `MAX_ATTEMPTS` conflicts, [`Error::Contention`].
pub(crate) async fn with_retry<T, F, Fut>(mut op: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let mut conflicts = 0;
    loop {
        match op().await {
            Err(e) if e.is_conflict() => {
                conflicts += 1;
                if conflicts >= MAX_ATTEMPTS {
                    return Err(Error::Contention {
                        attempts: conflicts,
                        conflicts,
                    });
                }
                tracing::debug!("IPAM write conflict ({conflicts}), retrying: {e}");
                // Jitter spreads competing writers apart; the cap keeps latency bounded.
                let cap = 1u64 << conflicts.min(5);
                let ms = rand::rng().random_range(0..=cap);
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
            other => return other,
        }
    }
}
