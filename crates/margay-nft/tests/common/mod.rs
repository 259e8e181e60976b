//! What the kernel-facing tests need to run at all.

use std::process::Command;

/// Why this process cannot run nft against the kernel, if it cannot.
pub fn missing_nft_or_root() -> Option<&'static str> {
    if !margay_sys::process::is_root() {
        Some("needs root")
    } else if Command::new("nft").arg("--version").output().is_err() {
        Some("nft is not installed")
    } else {
        None
    }
}
