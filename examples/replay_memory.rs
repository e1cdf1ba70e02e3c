//! Measures the memory of the signature replay window: inserts N entries (default 1,000,000)
//! into a cache built exactly as keyward builds it, and reports resident memory per entry.
//!
//! `cargo run --release --example replay_memory [N]`

use keyward::auth::signature::REPLAY_ENTRY_BYTES;
use sha2::{Digest, Sha256};
use std::time::Duration;

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
    let cache: moka::sync::Cache<[u8; 32], ()> = moka::sync::Cache::builder()
        .weigher(|_, _| REPLAY_ENTRY_BYTES)
        .max_capacity(u64::from(REPLAY_ENTRY_BYTES) * n * 2)
        .time_to_live(Duration::from_secs(330))
        .build();
    let before = resident_bytes();
    for i in 0..n {
        let key: [u8; 32] = Sha256::digest(i.to_le_bytes()).into();
        cache.insert(key, ());
    }
    cache.run_pending_tasks();
    let after = resident_bytes();
    let per_entry = (after - before) as f64 / n as f64;
    println!(
        "{} entries: {:.1} MiB resident, {per_entry:.0} bytes per entry (weigher charges {REPLAY_ENTRY_BYTES})",
        cache.entry_count(),
        (after - before) as f64 / (1024.0 * 1024.0),
    );
}
