//! Property test: many simulated nodes assign and release concurrently; afterwards the IPAM
//! state satisfies Calico's invariants.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;

use margay_api::{
    IPAMBlock, IPAMHandle, IPPool, IPReservation, IPReservationSpec, Node, ObjectMeta,
};
use margay_client::Client;
use margay_datastore::ConnectOptions;
use margay_ipam::{AssignArgs, Ipam, ReleaseRequest};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Assign { handle: u8, n: usize },
    ReleaseHandle { handle: u8 },
    ReleaseOne { handle: u8 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0u8..6, 1usize..4).prop_map(|(handle, n)| Op::Assign { handle, n }),
        1 => (0u8..6).prop_map(|handle| Op::ReleaseHandle { handle }),
        1 => (0u8..6).prop_map(|handle| Op::ReleaseOne { handle }),
    ]
}

async fn run_node(ipam: Ipam, node: usize, ops: Vec<Op>) {
    for op in ops {
        match op {
            Op::Assign { handle, n } => {
                let mut a = AssignArgs::new(format!("n{node}-h{handle}"), format!("node{node}"));
                a.num_v4 = n;
                // Exhaustion is an allowed outcome; what matters is the state afterwards.
                let _ = ipam.auto_assign(&a).await;
            }
            Op::ReleaseHandle { handle } => {
                ipam.release_handle(&format!("n{node}-h{handle}"))
                    .await
                    .unwrap();
            }
            Op::ReleaseOne { handle } => {
                let ips = ipam
                    .ips_by_handle(&format!("n{node}-h{handle}"))
                    .await
                    .unwrap();
                if let Some(ip) = ips.first() {
                    ipam.release_ips(&[ReleaseRequest {
                        ip: *ip,
                        sequence: None,
                    }])
                    .await
                    .unwrap();
                }
            }
        }
    }
}

async fn check_invariants(client: &Client) {
    let (blocks, _) = client.list::<IPAMBlock>(None).await.unwrap();
    let (handles, _) = client.list::<IPAMHandle>(None).await.unwrap();
    let (pools, _) = client.list::<IPPool>(None).await.unwrap();
    let (reservations, _) = client.list::<IPReservation>(None).await.unwrap();
    let mut owner: HashMap<IpAddr, String> = HashMap::new();
    let mut counts: BTreeMap<(String, String), u32> = BTreeMap::new();
    for b in &blocks {
        let s = &b.spec;
        assert!(
            pools.iter().any(|p| p.spec.cidr.contains(&s.cidr)),
            "block outside pools"
        );
        let allocated = s.allocations.iter().filter(|a| a.is_some()).count();
        assert_eq!(
            allocated + s.unallocated.len(),
            b.size(),
            "block {} leaks ordinals",
            s.cidr
        );
        let free: HashSet<usize> = s.unallocated.iter().copied().collect();
        assert_eq!(free.len(), s.unallocated.len(), "duplicate free ordinal");
        for (ordinal, a) in s.allocations.iter().enumerate() {
            let Some(idx) = a else { continue };
            assert!(!free.contains(&ordinal), "ordinal both free and allocated");
            let ip = margay_ipam::block::ordinal_ip(&s.cidr, ordinal);
            assert!(
                !reservations.iter().any(|r| r.contains(ip)),
                "reserved {ip} handed out"
            );
            let handle = s.attributes[*idx].handle_id.clone().unwrap();
            assert!(
                owner.insert(ip, handle.clone()).is_none(),
                "{ip} in two handles"
            );
            *counts.entry((handle, s.cidr.to_string())).or_default() += 1;
        }
    }
    let mut recorded = BTreeMap::new();
    for h in &handles {
        for (block, n) in &h.spec.block {
            recorded.insert((h.metadata.name.clone(), block.clone()), *n);
        }
    }
    assert_eq!(counts, recorded, "handles disagree with block allocations");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn concurrent_nodes_keep_ipam_consistent(
        nodes in prop::collection::vec(prop::collection::vec(op(), 1..12), 2..6),
        max_blocks in 1u32..3,
    ) {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(async {
            let ds = margay_datastore::connect("memory://", &ConnectOptions::default()).await.unwrap();
            let client = Client::new(ds);
            // A small pool so nodes run out of blocks and borrow.
            let mut pool = IPPool::new("p", "10.9.0.0/27".parse().unwrap());
            pool.spec.block_size = Some(29);
            client.create(&pool).await.unwrap();
            client.create(&IPReservation {
                metadata: ObjectMeta::named("r"),
                spec: IPReservationSpec { reserved_cidrs: vec!["10.9.0.5/32".parse().unwrap()] },
            }).await.unwrap();
            for i in 0..6 {
                client.create(&Node { metadata: ObjectMeta::named(format!("node{i}")), spec: Default::default() }).await.unwrap();
            }
            let ipam = Ipam::new(client.clone());
            ipam.configure(None, Some(max_blocks), None).await.unwrap();
            let tasks: Vec<_> = nodes
                .into_iter()
                .enumerate()
                .map(|(i, ops)| tokio::spawn(run_node(ipam.clone(), i, ops)))
                .collect();
            for t in tasks {
                t.await.unwrap();
            }
            check_invariants(&client).await;
            let report = ipam.check().await.unwrap();
            assert!(report.problems.is_empty(), "{:?}", report.problems);
        });
    }
}
