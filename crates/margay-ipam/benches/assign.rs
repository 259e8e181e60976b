//! Assignments per second, one node alone and 16 nodes at once, on SQLite and on etcd.
//! `cargo bench -p margay-ipam --bench assign` (a throughput run, not a timed unit test).

use std::time::Instant;

use margay_api::{IPPool, Node, ObjectMeta};
use margay_client::Client;
use margay_datastore::testing::{temp_sqlite_url, EtcdServer};
use margay_datastore::ConnectOptions;
use margay_ipam::{AssignArgs, Ipam};

const TOTAL: usize = 480;

async fn run(url: &str, nodes: usize) -> f64 {
    let ds = margay_datastore::connect(url, &ConnectOptions::default())
        .await
        .unwrap();
    let client = Client::new(ds);
    client
        .create(&IPPool::new("bench", "10.128.0.0/14".parse().unwrap()))
        .await
        .unwrap();
    for n in 0..nodes {
        client
            .create(&Node {
                metadata: ObjectMeta::named(format!("node{n}")),
                spec: Default::default(),
            })
            .await
            .unwrap();
    }
    let ipam = Ipam::new(client);
    let per_node = TOTAL / nodes;
    let start = Instant::now();
    let tasks: Vec<_> = (0..nodes)
        .map(|n| {
            let ipam = ipam.clone();
            tokio::spawn(async move {
                for i in 0..per_node {
                    let a = AssignArgs::new(format!("h-{n}-{i}"), format!("node{n}"));
                    ipam.auto_assign(&a).await.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    (per_node * nodes) as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    // `cargo bench` passes --bench; nothing else to parse.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    println!("backend  nodes  assignments/s  ({TOTAL} assignments each run)");
    for nodes in [1, 16] {
        let dir = tempfile::tempdir().unwrap();
        let rate = rt.block_on(run(&temp_sqlite_url(dir.path()), nodes));
        println!("sqlite   {nodes:>5}  {rate:>13.0}");
    }
    for nodes in [1, 16] {
        let etcd = EtcdServer::start();
        let rate = rt.block_on(run(&etcd.url(), nodes));
        println!("etcd     {nodes:>5}  {rate:>13.0}");
    }
}
