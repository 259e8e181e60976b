//! Leak detection and garbage collection with a grace period.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use margay_api::{BlockAffinity, IPAMHandle, IPPool, Kind, Node, ObjectMeta};
use margay_client::Client;
use margay_datastore::ConnectOptions;
use margay_ipam::{AssignArgs, Gc, Ipam, ProblemKind};

async fn setup() -> Ipam {
    let ds = margay_datastore::connect("memory://", &ConnectOptions::default())
        .await
        .unwrap();
    let client = Client::new(ds);
    client
        .create(&IPPool::new("p", "10.20.0.0/16".parse().unwrap()))
        .await
        .unwrap();
    for n in ["n1", "n2"] {
        client
            .create(&Node {
                metadata: ObjectMeta::named(n),
                spec: Default::default(),
            })
            .await
            .unwrap();
    }
    Ipam::new(client)
}

fn pod_args(handle: &str, node: &str, pod: &str) -> AssignArgs {
    let mut a = AssignArgs::new(handle, node);
    a.attrs = BTreeMap::from([
        ("namespace".to_owned(), "default".to_owned()),
        ("pod".to_owned(), pod.to_owned()),
    ]);
    a
}

#[tokio::test]
async fn leaked_pod_address_is_released_only_after_the_grace_period() {
    let ipam = setup().await;
    ipam.auto_assign(&pod_args("k8s-pod-network.c1", "n1", "gone"))
        .await
        .unwrap();
    let report = ipam.check().await.unwrap();
    assert_eq!(report.count(ProblemKind::LeakedAllocation), 1, "{report:?}");

    let mut gc = Gc::new(ipam.clone(), Duration::from_secs(900));
    let t0 = Instant::now();
    let pass = gc.run_once_at(t0).await.unwrap();
    assert!(pass.repaired.is_empty());
    assert_eq!(pass.waiting, 1);
    let pass = gc.run_once_at(t0 + Duration::from_secs(899)).await.unwrap();
    assert!(pass.repaired.is_empty());
    let pass = gc.run_once_at(t0 + Duration::from_secs(900)).await.unwrap();
    assert_eq!(pass.repaired.len(), 1);
    assert!(ipam
        .ips_by_handle("k8s-pod-network.c1")
        .await
        .unwrap()
        .is_empty());
    assert!(ipam.check().await.unwrap().problems.is_empty());
}

#[tokio::test]
async fn live_pod_is_never_a_leak() {
    let ipam = setup().await;
    let got = ipam
        .auto_assign(&pod_args("k8s-pod-network.c2", "n1", "web"))
        .await
        .unwrap();
    let wep = serde_json::json!({
        "apiVersion": "margay.dev/v1",
        "kind": "WorkloadEndpoint",
        "metadata": {"name": "n1-k8s-web-eth0", "namespace": "default"},
        "spec": {"node": "n1", "orchestrator": "k8s", "pod": "web", "endpoint": "eth0",
                 "containerID": "c2", "interfaceName": "mgy0", "ipNetworks": [format!("{}/32", got.v4[0])]}
    });
    let res = margay_api::decode(wep).unwrap().resource;
    margay_client::apply(ipam.client(), vec![res], margay_client::ApplyMode::Create)
        .await
        .unwrap();
    assert_eq!(Kind::WorkloadEndpoint.name(), "WorkloadEndpoint");
    let mut gc = Gc::new(ipam.clone(), Duration::from_secs(1));
    let t0 = Instant::now();
    gc.run_once_at(t0).await.unwrap();
    let pass = gc.run_once_at(t0 + Duration::from_secs(10)).await.unwrap();
    assert!(pass.repaired.is_empty());
    assert_eq!(
        ipam.ips_by_handle("k8s-pod-network.c2").await.unwrap(),
        got.v4
    );
}

#[tokio::test]
async fn deleted_node_addresses_go_at_once_and_interrupted_claims_are_cleaned() {
    let ipam = setup().await;
    ipam.auto_assign(&AssignArgs::new("manual", "n2"))
        .await
        .unwrap();
    ipam.client()
        .delete::<Node>(None, "n2", None)
        .await
        .unwrap();
    // An interrupted claim: a pending affinity with no block; a handle with no addresses.
    let cidr = "10.20.255.0/26".parse().unwrap();
    ipam.client()
        .create(&BlockAffinity {
            metadata: ObjectMeta::named(BlockAffinity::name_for("n1", &cidr)),
            spec: margay_api::BlockAffinitySpec {
                state: margay_api::AffinityState::Pending,
                node: "n1".into(),
                cidr,
                affinity_type: Some("host".into()),
                deleted: false,
            },
        })
        .await
        .unwrap();
    ipam.client()
        .create(&IPAMHandle {
            metadata: ObjectMeta::named("orphan"),
            spec: margay_api::IPAMHandleSpec {
                handle_id: "orphan".into(),
                block: BTreeMap::from([("10.20.0.0/26".to_owned(), 1)]),
                deleted: false,
            },
        })
        .await
        .unwrap();
    let report = ipam.check().await.unwrap();
    assert_eq!(
        report.count(ProblemKind::AllocationOfDeletedNode),
        1,
        "{report:?}"
    );
    assert_eq!(report.count(ProblemKind::AffinityWithoutBlock), 1);
    assert_eq!(report.count(ProblemKind::HandleMismatch), 1);
    assert_eq!(report.count(ProblemKind::BlockOfDeletedNode), 1);

    let mut gc = Gc::new(ipam.clone(), Duration::from_secs(60));
    let t0 = Instant::now();
    let pass = gc.run_once_at(t0).await.unwrap();
    assert_eq!(
        pass.repaired.len(),
        1,
        "only the deleted node's address goes at once"
    );
    let pass = gc.run_once_at(t0 + Duration::from_secs(61)).await.unwrap();
    assert!(!pass.repaired.is_empty());
    let report = ipam.check().await.unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert!(ipam
        .client()
        .get::<IPAMHandle>(None, "orphan")
        .await
        .unwrap()
        .is_none());
}
