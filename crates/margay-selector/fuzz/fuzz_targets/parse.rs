//! Parses arbitrary UTF-8. The parser must never panic or overflow the
//! stack, and whatever parses must print to text that parses back to an equal
//! selector (and prints identically again).
#![no_main]

use libfuzzer_sys::fuzz_target;
use margay_selector::Selector;

fuzz_target!(|input: &str| {
    match Selector::parse(input) {
        Ok(selector) => {
            let printed = selector.to_string();
            let reparsed = Selector::parse(&printed)
                .unwrap_or_else(|e| panic!("{input:?} printed as {printed:?}, which fails: {e}"));
            assert_eq!(reparsed, selector, "{input:?} printed as {printed:?}");
            assert_eq!(reparsed.to_string(), printed);
        }
        Err(e) => {
            assert!(
                e.column >= 1 && e.column <= input.chars().count() + 1,
                "{e}"
            );
        }
    }
});
