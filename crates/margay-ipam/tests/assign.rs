//! IPAM behaviour on the in-memory datastore (same semantics as SQLite and etcd).

use std::collections::BTreeMap;
use std::net::IpAddr;

use margay_api::{
    AffinityState, BlockAffinity, IPAMBlock, IPAMHandle, IPPool, IPReservation, IPReservationSpec,
    Node, ObjectMeta,
};
use margay_client::Client;
use margay_datastore::ConnectOptions;
use margay_ipam::{AssignArgs, Error, Ipam, ReleaseRequest};

async fn ipam_with_pool(cidr: &str, block_size: u8) -> Ipam {
    let ds = margay_datastore::connect("memory://", &ConnectOptions::default())
        .await
        .unwrap();
    let client = Client::new(ds);
    let mut pool = IPPool::new("pool1", cidr.parse().unwrap());
    pool.spec.block_size = Some(block_size);
    client.create(&pool).await.unwrap();
    Ipam::new(client)
}

fn args(handle: &str, node: &str, n: usize) -> AssignArgs {
    let mut a = AssignArgs::new(handle, node);
    a.num_v4 = n;
    a
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[tokio::test]
async fn first_assignment_claims_a_block_for_the_node() {
    let ipam = ipam_with_pool("10.244.0.0/16", 26).await;
    let got = ipam.auto_assign(&args("h1", "node-a", 2)).await.unwrap();
    assert_eq!(got.v4.len(), 2);
    let (blocks, _) = ipam.client().list::<IPAMBlock>(None).await.unwrap();
    assert_eq!(blocks.len(), 1);
    let block = &blocks[0];
    assert_eq!(block.spec.affinity.as_deref(), Some("host:node-a"));
    assert_eq!(block.spec.cidr.prefix_len(), 26);
    assert!(got.v4.iter().all(|a| block.spec.cidr.contains(a)));
    let aff = ipam
        .client()
        .get::<BlockAffinity>(None, &BlockAffinity::name_for("node-a", &block.spec.cidr))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(aff.spec.state, AffinityState::Confirmed);
    let handle = ipam
        .client()
        .get::<IPAMHandle>(None, "h1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(handle.spec.block[&block.spec.cidr.to_string()], 2);
    // A second node gets a different block.
    let other = ipam.auto_assign(&args("h2", "node-b", 1)).await.unwrap();
    assert!(!block.spec.cidr.contains(&other.v4[0]));
}

#[tokio::test]
async fn borrows_only_after_max_blocks_per_host_and_never_with_strict_affinity() {
    let ipam = ipam_with_pool("10.0.0.0/24", 30).await; // 64 blocks of 4 addresses
    ipam.configure(None, Some(1), None).await.unwrap();
    // node-b owns a block with free addresses.
    ipam.auto_assign(&args("b", "node-b", 1)).await.unwrap();
    // node-a fills its single allowed block, then borrows.
    let got = ipam.auto_assign(&args("a", "node-a", 6)).await.unwrap();
    assert_eq!(got.v4.len(), 6);
    let summary = ipam.summary().await.unwrap();
    let borrowed: usize = summary.blocks.iter().map(|b| b.borrowed.len()).sum();
    assert_eq!(borrowed, 2, "4 from its own block, 2 borrowed: {summary:?}");
    let a_blocks = summary
        .blocks
        .iter()
        .filter(|b| b.affinity.as_deref() == Some("host:node-a"))
        .count();
    assert_eq!(a_blocks, 1);

    ipam.configure(Some(true), None, None).await.unwrap();
    let err = ipam
        .auto_assign(&args("a2", "node-a", 1))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::StrictAffinity { .. }), "{err}");
    assert!(err.to_string().contains("may not borrow"), "{err}");
    assert!(ipam
        .client()
        .get::<IPAMHandle>(None, "a2")
        .await
        .unwrap()
        .is_none());
}

#[tokio::test]
async fn reservations_are_never_handed_out() {
    let ipam = ipam_with_pool("10.1.0.0/28", 29).await;
    let res = IPReservation {
        metadata: ObjectMeta::named("res"),
        spec: IPReservationSpec {
            reserved_cidrs: vec![
                "10.1.0.0/30".parse().unwrap(),
                "10.1.0.9/32".parse().unwrap(),
            ],
        },
    };
    ipam.client().create(&res).await.unwrap();
    let got = ipam.auto_assign(&args("h", "n", 11)).await.unwrap();
    assert_eq!(got.v4.len(), 11);
    assert!(got.v4.iter().all(|a| !res.contains(*a)), "{got:?}");
    let err = ipam.auto_assign(&args("h2", "n", 1)).await.unwrap_err();
    assert!(matches!(err, Error::Exhausted { .. }), "{err}");
    assert!(err.to_string().contains("pool1 (10.1.0.0/28)"), "{err}");
    let err = ipam
        .assign_ip(ip("10.1.0.9"), "x", "n", &BTreeMap::new())
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "10.1.0.9 is reserved by IPReservation res");
}

#[tokio::test]
async fn failed_request_leaves_nothing_allocated() {
    let ipam = ipam_with_pool("10.2.0.0/30", 30).await;
    let err = ipam.auto_assign(&args("big", "n", 5)).await.unwrap_err();
    assert!(matches!(err, Error::Exhausted { .. }));
    assert!(ipam.ips_by_handle("big").await.unwrap().is_empty());
    let summary = ipam.summary().await.unwrap();
    assert_eq!(summary.pools[0].in_use, 0);
}

#[tokio::test]
async fn assign_given_ip_and_errors() {
    let ipam = ipam_with_pool("10.3.0.0/24", 26).await;
    ipam.assign_ip(ip("10.3.0.70"), "h", "n", &BTreeMap::new())
        .await
        .unwrap();
    assert_eq!(
        ipam.ips_by_handle("h").await.unwrap(),
        vec![ip("10.3.0.70")]
    );
    let err = ipam
        .assign_ip(ip("10.3.0.70"), "h2", "n", &BTreeMap::new())
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "10.3.0.70 is already in use (handle h)");
    let err = ipam
        .assign_ip(ip("192.168.9.9"), "h3", "n", &BTreeMap::new())
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "192.168.9.9 is not in any IP pool");
}

#[tokio::test]
async fn no_pool_selects_the_node() {
    let ipam = ipam_with_pool("10.4.0.0/24", 26).await;
    let mut pool = ipam
        .client()
        .get::<IPPool>(None, "pool1")
        .await
        .unwrap()
        .unwrap();
    pool.spec.node_selector = Some("zone == 'east'".into());
    ipam.client().update(&pool).await.unwrap();
    let err = ipam.auto_assign(&args("h", "west-1", 1)).await.unwrap_err();
    assert!(matches!(err, Error::NoPool { .. }), "{err}");
    let mut node = Node {
        metadata: ObjectMeta::named("east-1"),
        spec: Default::default(),
    };
    node.metadata.labels.insert("zone".into(), "east".into());
    ipam.client().create(&node).await.unwrap();
    ipam.auto_assign(&args("h", "east-1", 1)).await.unwrap();
}

#[tokio::test]
async fn release_by_handle_is_idempotent_and_stale_release_is_refused() {
    let ipam = ipam_with_pool("10.5.0.0/24", 26).await;
    let got = ipam.auto_assign(&args("h", "n", 3)).await.unwrap();
    let released = ipam.release_handle("h").await.unwrap();
    assert_eq!(released.len(), 3);
    assert!(ipam.release_handle("h").await.unwrap().is_empty());
    assert!(ipam
        .client()
        .get::<IPAMHandle>(None, "h")
        .await
        .unwrap()
        .is_none());

    // Re-assign one address; a release carrying the old sequence number is refused.
    let first = got.v4[0];
    ipam.assign_ip(first, "h2", "n", &BTreeMap::new())
        .await
        .unwrap();
    let holder = ipam.holder(first).await.unwrap().unwrap();
    let stale = holder.sequence.unwrap() - 1;
    let err = ipam
        .release_ips(&[ReleaseRequest {
            ip: first,
            sequence: Some(stale),
        }])
        .await
        .unwrap_err();
    assert!(matches!(err, Error::StaleSequence { .. }), "{err}");
    assert_eq!(ipam.ips_by_handle("h2").await.unwrap(), vec![first]);
    let missing = ipam
        .release_ips(&[ReleaseRequest {
            ip: first,
            sequence: holder.sequence,
        }])
        .await
        .unwrap();
    assert!(missing.is_empty());
    assert!(ipam
        .client()
        .get::<IPAMHandle>(None, "h2")
        .await
        .unwrap()
        .is_none());
}

#[tokio::test]
async fn freed_addresses_are_reused_last() {
    let ipam = ipam_with_pool("10.6.0.0/29", 29).await;
    let a = ipam.auto_assign(&args("a", "n", 1)).await.unwrap().v4[0];
    ipam.release_handle("a").await.unwrap();
    let next: Vec<IpAddr> = ipam.auto_assign(&args("b", "n", 8)).await.unwrap().v4;
    assert_eq!(next[0], ip("10.6.0.1"));
    assert_eq!(*next.last().unwrap(), a);
}

#[tokio::test]
async fn empty_block_release() {
    let ipam = ipam_with_pool("10.7.0.0/24", 26).await;
    let got = ipam.auto_assign(&args("a", "n", 1)).await.unwrap();
    let (blocks, _) = ipam.client().list::<IPAMBlock>(None).await.unwrap();
    let cidr = blocks[0].spec.cidr;
    assert!(!ipam.release_block_if_empty(&cidr).await.unwrap());
    ipam.release_ips(&[ReleaseRequest {
        ip: got.v4[0],
        sequence: None,
    }])
    .await
    .unwrap();
    assert!(ipam.release_block_if_empty(&cidr).await.unwrap());
    assert!(ipam
        .client()
        .list::<IPAMBlock>(None)
        .await
        .unwrap()
        .0
        .is_empty());
    assert!(ipam
        .client()
        .list::<BlockAffinity>(None)
        .await
        .unwrap()
        .0
        .is_empty());
}

#[tokio::test]
async fn ipv6_and_dual_stack() {
    let ipam = ipam_with_pool("10.8.0.0/24", 26).await;
    ipam.client()
        .create(&IPPool::new("v6", "fd00:10::/120".parse().unwrap()))
        .await
        .unwrap();
    let mut a = args("dual", "n", 1);
    a.num_v6 = 2;
    let got = ipam.auto_assign(&a).await.unwrap();
    assert_eq!(got.v4.len(), 1);
    assert_eq!(got.v6.len(), 2);
    assert!(got.v6.iter().all(|a| a.is_ipv6()));
    assert_eq!(ipam.ips_by_handle("dual").await.unwrap().len(), 3);
}
