//! Measures the memory of the signature replay window: claims N signatures (default
//! 1,000,000) in a window built exactly as keyward builds it, and reports resident memory per
//! entry against the budget `signatures.replay_memory` is divided by.
//!
//! `cargo run --release --example replay_memory [N]`

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test (or tool) fails loudly

use keyward::auth::replay::{ReplayWindow, ENTRY_BYTES};
use sha2::{Digest, Sha256};

fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let window = ReplayWindow::new(ENTRY_BYTES * n);
    let before = resident_bytes();
    for i in 0..n {
        let key: [u8; 32] = Sha256::digest(i.to_le_bytes()).into();
        // Expiries spread over a 330 s window, as live traffic's are.
        window
            .claim(key, 1_000 + (i % 330) as i64, 0)
            .expect("room for every entry");
    }
    let after = resident_bytes();
    let per_entry = (after - before) as f64 / n as f64;
    println!(
        "{} entries: {:.1} MiB resident, {per_entry:.0} bytes per entry (budgeted {ENTRY_BYTES})",
        window.len(),
        (after - before) as f64 / (1024.0 * 1024.0),
    );
}
