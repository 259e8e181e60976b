//! The rendering of margay-policy's golden program (node1 of `program-cluster.yaml`, as in
//! margay-nft's `policy-*.nft`), compared byte for byte with `tests/golden/`: the
//! `iptables-restore --noflush` input (`policy-ipv4.rules`) and the `ipset restore` input
//! (`policy-ipv4.ipset`) of each family. The root tests load them into a kernel.
//!
//! Regenerate after an intended change: `MARGAY_UPDATE_GOLDEN=1 cargo test -p
//! margay-iptables --test golden`, then review the diff.

use std::path::PathBuf;

use margay_iptables::{render, Family};
use margay_testkit::fixture::golden_node1;

fn files() -> Vec<(String, String)> {
    let node1 = golden_node1();
    let mut files = Vec::new();
    for (family, name) in [(Family::V4, "ipv4"), (Family::V6, "ipv6")] {
        let rendered = render(&node1, family);
        files.push((format!("policy-{name}.rules"), rendered.iptables_restore()));
        files.push((format!("policy-{name}.ipset"), rendered.ipset_restore()));
    }
    files
}

#[test]
fn renderings_match_golden_files() {
    let update = std::env::var_os("MARGAY_UPDATE_GOLDEN").is_some();
    for (name, text) in files() {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/golden")
            .join(&name);
        if update {
            std::fs::write(&path, &text).unwrap();
            continue;
        }
        let golden = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (set MARGAY_UPDATE_GOLDEN=1)", path.display()));
        assert!(
            text == golden,
            "{name} differs from {}; after an intended change, regenerate with \
             MARGAY_UPDATE_GOLDEN=1\n--- rendered ---\n{text}--- golden ---\n{golden}",
            path.display()
        );
    }
}
