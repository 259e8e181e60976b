//! What the kernel-facing tests need to run at all.

use std::process::Command;

/// Why this process cannot run nft against the kernel, if it cannot.
pub fn missing_nft_or_root() -> Option<&'static str> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    // "Uid:\treal\teffective\t…"
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1));
    if euid != Some("0") {
        Some("needs root")
    } else if Command::new("nft").arg("--version").output().is_err() {
        Some("nft is not installed")
    } else {
        None
    }
}
