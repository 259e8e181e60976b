//! Decodes arbitrary bytes in both ASN contexts. The decoder must never
//! panic, must consume exactly the length it reports, and whatever decodes
//! must re-encode to bytes that decode to the same message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use margay_bgp::codec::{self, Context};

fuzz_target!(|data: &[u8]| {
    for four_octet_as in [false, true] {
        let ctx = Context {
            four_octet_as,
            ..Context::default()
        };
        let mut rest = data;
        while let Ok(Some(d)) = codec::decode(rest, &ctx) {
            assert!(d.len >= codec::HEADER_LEN && d.len <= rest.len());
            let mut again = Vec::new();
            if codec::encode(&d.message, &ctx, &mut again).is_ok() {
                let d2 = codec::decode(&again, &ctx)
                    .unwrap_or_else(|e| panic!("re-encoded {:?} fails: {e}", d.message))
                    .expect("complete");
                assert_eq!(d2.message, d.message);
                assert_eq!(d2.len, again.len());
            }
            rest = &rest[d.len..];
        }
    }
});
