//! Helpers shared by the integration tests.
#![allow(dead_code)] // each test binary uses its own subset

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

use margay_bgp::codec::AddressFamily;
use margay_bgp::fsm::Negotiated;
use margay_bgp::rib::{PeerConfig, Rib, RibConfig};

pub fn path(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join(rel)
}

/// Hex with whitespace and `#` comments.
pub fn hex(text: &str) -> Vec<u8> {
    let digits: String = text
        .lines()
        .map(|l| l.split('#').next().unwrap_or(""))
        .flat_map(|l| l.chars().filter(|c| !c.is_whitespace()))
        .collect();
    assert!(digits.len().is_multiple_of(2), "odd number of hex digits");
    (0..digits.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&digits[i..i + 2], 16).expect("hex digit"))
        .collect()
}

pub fn golden(name: &str) -> Vec<u8> {
    let p = path(&format!("golden/{name}.hex"));
    hex(&std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
}

/// Set MARGAY_BLESS=1 to rewrite recorded outputs instead of comparing.
pub fn bless() -> bool {
    std::env::var_os("MARGAY_BLESS").is_some()
}

/// Replays every recorded sequence in `tests/<dir>/` (at least `at_least` files) and compares
/// the output with the file, or rewrites the file under MARGAY_BLESS=1.
pub fn check_recorded(dir: &str, at_least: usize, replay: impl Fn(&str) -> String) {
    let mut files: Vec<_> = std::fs::read_dir(path(dir))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(files.len() >= at_least, "{files:?}");
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        let actual = replay(&text);
        if bless() {
            std::fs::write(&f, actual).unwrap();
        } else {
            assert_eq!(actual, text, "{}", f.display());
        }
    }
}

/// A Rib of AS 64512 (router 10.0.0.1) with three IPv4 peers up: 10.0.0.2 (eBGP, AS
/// 64513), 10.0.0.3 (iBGP) and 10.0.0.4 (eBGP, AS 64514).
pub fn three_peer_rib() -> Rib {
    let mut rib = Rib::new(RibConfig {
        local_as: 64512,
        router_id: Ipv4Addr::new(10, 0, 0, 1),
        cluster_id: None,
    });
    for (i, asn) in [(2u8, 64513u32), (3, 64512), (4, 64514)] {
        let address = IpAddr::V4(Ipv4Addr::new(10, 0, 0, i));
        rib.add_peer(PeerConfig {
            address,
            remote_as: asn,
            rr_client: false,
            next_hop_self: false,
            local_v4: Some(Ipv4Addr::new(10, 0, 0, 1)),
            local_v6: None,
        });
        rib.peer_up(
            address,
            &Negotiated {
                remote_as: asn,
                remote_id: Ipv4Addr::new(10, 0, 0, i),
                hold_time: 90,
                keepalive_time: 30,
                families: vec![AddressFamily::Ipv4Unicast],
                four_octet_as: true,
                route_refresh: true,
                graceful_restart: None,
            },
        );
    }
    rib.flush();
    rib
}
