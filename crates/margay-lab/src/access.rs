//! Reaching a lab's datastore from the machine. SQLite is a file anyone can open; etcd
//! listens inside the fabric namespace (the lab is closed), so its client runs on a thread
//! inside that namespace — a socket belongs to the namespace it was made in.

use std::future::Future;

use margay_client::Client;
use margay_datastore::ConnectOptions;
use margay_sys::netns::NetNs;

use crate::spec::DatastoreKind;
use crate::state::LabState;
use crate::LabError;

/// The address etcd listens on inside the fabric namespace, besides the fabric's own address.
pub const ETCD_LOOPBACK: &str = "127.0.0.1:2379";
pub const ETCD_PORT: u16 = 2379;

/// Connects to the lab's datastore and runs `work` with a client, on a runtime of its own.
pub fn with_client<T, F, Fut>(state: &LabState, work: F) -> Result<T, LabError>
where
    T: Send,
    F: FnOnce(Client) -> Fut + Send,
    Fut: Future<Output = Result<T, LabError>>,
{
    let url = match state.datastore {
        DatastoreKind::Sqlite => state.datastore_url.clone(),
        DatastoreKind::Etcd => format!("etcd://{ETCD_LOOPBACK}"),
    };
    let task = || -> Result<T, LabError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| LabError::Datastore {
                url: url.clone(),
                message: format!("starting a runtime: {e}"),
            })?;
        runtime.block_on(async {
            let opts = ConnectOptions {
                short_lived: true,
                ..Default::default()
            };
            let ds =
                margay_datastore::connect(&url, &opts)
                    .await
                    .map_err(|e| LabError::Datastore {
                        url: url.clone(),
                        message: e.to_string(),
                    })?;
            work(Client::new(ds)).await
        })
    };
    match state.datastore {
        DatastoreKind::Sqlite => task(),
        DatastoreKind::Etcd => {
            let fabric = LabState::netns_path(&state.topology.fabric_netns);
            NetNs::open(&fabric)
                .and_then(|ns| ns.run(task))
                .map_err(|e| LabError::Datastore {
                    url: url.clone(),
                    message: e.to_string(),
                })?
        }
    }
}
