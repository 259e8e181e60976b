//! CPU cost of a full table from one peer: 100,000 IPv4 prefixes arrive in
//! UPDATEs of 800, then one flush selects best paths and builds the
//! UPDATEs for two other peers (one iBGP, one eBGP).

#[path = "../tests/common/mod.rs"]
mod common;

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use ipnet::Ipv4Net;
use margay_bgp::codec::{AsPath, Origin, PathAttributes, Update};

const PREFIXES: u32 = 100_000;

/// A realistic mix: 100 distinct paths, prefixes /24 from 10.0.0.0/8 up.
fn updates() -> Vec<Update> {
    let prefixes: Vec<Ipv4Net> = (0..PREFIXES)
        .map(|i| Ipv4Net::new(Ipv4Addr::from((10 << 24) + (i << 8)), 24).unwrap())
        .collect();
    prefixes
        .chunks(800)
        .enumerate()
        .map(|(i, chunk)| Update {
            attributes: PathAttributes {
                origin: Some(Origin::Igp),
                as_path: Some(AsPath::sequence(vec![64513, 65000 + (i as u32 % 100)])),
                next_hop: Some(Ipv4Addr::new(10, 0, 0, 2)),
                ..PathAttributes::default()
            },
            nlri: chunk.to_vec(),
            ..Update::default()
        })
        .collect()
}

fn full_table(c: &mut Criterion) {
    let from = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2));
    let input = updates();
    c.bench_function("rib_100k_prefixes_one_peer_to_two", |b| {
        b.iter_batched(
            || (common::three_peer_rib(), input.clone()),
            |(mut rib, input)| {
                for u in input {
                    rib.apply_update(from, u);
                }
                let changes = rib.flush();
                assert_eq!(changes.kernel.len(), PREFIXES as usize);
                black_box(changes)
            },
            BatchSize::LargeInput,
        )
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10);
    targets = full_table
}
criterion_main!(benches);
