//! The two ways of running nft scripts, [`Nft::Library`] (a libnftables context kept open)
//! and the binary, against the real kernel in throwaway namespaces (`mgynftr-<pid>-<n>`,
//! deleted even when a test panics). They must be interchangeable: same tables, same
//! listings, same all-or-nothing refusals.
//!
//! They need root, nft and libnftables; otherwise each prints "skipped: …" and passes.

mod common;

use margay_nft::{Nft, NftCommand, NftRunner};
use margay_testkit::netns::TestNs;

const PREFIX: &str = "mgynftr";

/// The library's runner in `ns`, or why there is none.
fn library_in(ns: &TestNs) -> Result<Nft, String> {
    if let Some(why) = common::missing_nft_or_root() {
        return Err(why.to_string());
    }
    match Nft::in_netns(ns.name()) {
        nft @ Nft::Library(_) => Ok(nft),
        Nft::Binary(_) => Err("libnftables.so.1 cannot be loaded".to_string()),
    }
}

macro_rules! library_or_skip {
    ($ns:expr) => {
        match library_in(&$ns) {
            Ok(nft) => nft,
            Err(why) => {
                eprintln!("skipped: {why}");
                return;
            }
        }
    };
}

const TABLE: &str = "table ip mgytest {
    set s { type ipv4_addr; flags interval; elements = { 10.1.0.0/16 }; }
    chain c { type filter hook forward priority 0; policy accept; ip saddr @s counter jump d; }
    chain d { counter return; }
}
";

#[test]
fn the_library_and_the_binary_see_and_leave_the_same_tables() {
    let ns = TestNs::new(PREFIX);
    let mut library = library_or_skip!(ns);
    let mut binary = NftCommand::in_netns(ns.name());

    assert_eq!(library.list_table("ip", "mgytest").unwrap(), None);
    assert_eq!(binary.list_table("ip", "mgytest").unwrap(), None);

    library.run(TABLE).unwrap();
    let listed = library.list_table("ip", "mgytest").unwrap().expect("table");
    assert!(listed.contains("jump d"), "{listed}");
    assert_eq!(
        binary.list_table("ip", "mgytest").unwrap(),
        Some(listed.clone())
    );

    // A change made by the binary (another process) is seen by the library's next script:
    // the context's cache follows the kernel, not only its own commits.
    binary.run("add chain ip mgytest e\n").unwrap();
    library
        .run("add rule ip mgytest d counter jump e\n")
        .expect("chain e is known to the library");
    assert_eq!(
        library.list_table("ip", "mgytest").unwrap(),
        binary.list_table("ip", "mgytest").unwrap()
    );
}

#[test]
fn a_refused_script_changes_nothing_through_either() {
    let ns = TestNs::new(PREFIX);
    let mut library = library_or_skip!(ns);
    let mut binary = NftCommand::in_netns(ns.name());
    library.run(TABLE).unwrap();
    let before = library.list_table("ip", "mgytest").unwrap();

    // Valid up to the last line, so nft gets as far as the kernel before failing.
    let script = "add chain ip mgytest f\nflush chain ip mgytest d\nadd rule ip mgytest d ip saddr @nope drop\n";
    let from_library = library.run(script).unwrap_err().to_string();
    let from_binary = binary.run(script).unwrap_err().to_string();
    for err in [&from_library, &from_binary] {
        assert!(err.contains("No such file or directory"), "{err}");
        assert!(!err.contains('\n'), "one line: {err}");
    }
    assert!(
        from_library.starts_with("nft (libnftables): "),
        "{from_library}"
    );
    assert_eq!(library.list_table("ip", "mgytest").unwrap(), before);
    assert_eq!(binary.list_table("ip", "mgytest").unwrap(), before);
}

#[test]
fn a_namespace_that_cannot_be_entered_falls_back_to_the_binary() {
    let nft = Nft::in_netns("mgynftr-no-such-namespace");
    assert_eq!(nft.backend(), "nft");
}
