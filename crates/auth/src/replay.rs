//! The replay window: every accepted signature, remembered until it can no longer verify.
//!
//! A bounded cache would be the wrong shape here: one that evicts its oldest entry when full
//! forgets a signature that is still inside its validity window, and that signature then
//! replays. So the window never evicts a live entry. Each fingerprint is kept until its own
//! expiry (`created + max_age + max_future`: past it, the signature is refused as stale
//! anyway) and, when `signatures.replay_memory` is used up by live entries, a *new* signature
//! is refused (503 with `Retry-After`, `keyward_replay_window_full_total`) rather than an old
//! one forgotten. Refusing is the safe failure: a client retries with a new signature once
//! entries expire; a forgotten signature would let an eavesdropper repeat a request.
//!
//! The window is sharded by the fingerprint's first byte (fingerprints are SHA-256 digests,
//! so shards fill evenly), each shard a map of fingerprint to expiry beside a min-heap of
//! expiries, so expired entries leave in order, a few at each insert, with no timer thread.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

const SHARDS: usize = 64;

/// Memory budgeted per remembered signature: the map's slot (32-byte fingerprint, 8-byte
/// expiry, control byte, at most 1/8 empty) and the heap's entry (40 bytes), both doubled for
/// the growth slack of a table or vector just grown. Measured with `tests/memory.rs`.
pub const ENTRY_BYTES: u64 = 192;

/// Why a signature cannot be claimed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimRefused {
    /// Already in the window: a replay.
    Replay,
    /// The window holds `capacity` live signatures; none may be forgotten early.
    Full,
}

#[derive(Default)]
struct Shard {
    expiry_of: HashMap<[u8; 32], i64>,
    by_expiry: BinaryHeap<Reverse<(i64, [u8; 32])>>,
}

impl Shard {
    /// Drops the entries whose expiry (whole seconds) is before `now`; returns how many.
    fn purge(&mut self, now: i64) -> u64 {
        let mut purged = 0;
        while let Some(Reverse((expires, fingerprint))) = self.by_expiry.peek().copied() {
            if expires >= now {
                break;
            }
            self.by_expiry.pop();
            // Every heap entry counts until it leaves, released ones included: the bound is
            // on memory, and a released claim's heap entry holds memory until its expiry.
            purged += 1;
            if self.expiry_of.get(&fingerprint) == Some(&expires) {
                self.expiry_of.remove(&fingerprint);
            }
        }
        // A window emptied after a burst gives its memory back.
        if self.expiry_of.is_empty() && self.expiry_of.capacity() > 1024 {
            self.expiry_of = HashMap::new();
            self.by_expiry = BinaryHeap::new();
        }
        purged
    }

    fn live(&self, fingerprint: &[u8; 32], now: i64) -> bool {
        self.expiry_of
            .get(fingerprint)
            .is_some_and(|expires| *expires >= now)
    }
}

pub struct ReplayWindow {
    shards: Box<[Mutex<Shard>]>,
    /// Live-or-not-yet-purged entries in all shards.
    len: AtomicU64,
    capacity: u64,
}

impl ReplayWindow {
    /// A window of at most `memory_bytes / ENTRY_BYTES` signatures (at least one).
    pub fn new(memory_bytes: u64) -> ReplayWindow {
        ReplayWindow {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            len: AtomicU64::new(0),
            capacity: (memory_bytes / ENTRY_BYTES).max(1),
        }
    }

    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Signatures remembered now (expired ones count until an insert or sweep purges them).
    pub fn len(&self) -> u64 {
        self.len.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn shard(&self, fingerprint: &[u8; 32]) -> std::sync::MutexGuard<'_, Shard> {
        let index = usize::from(fingerprint[0]) % SHARDS;
        // A poisoned shard (a panic while held; nothing here panics) is still a valid map.
        self.shards[index]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether `fingerprint` was accepted and is still inside its window (`now`: seconds).
    pub fn seen(&self, fingerprint: &[u8; 32], now: i64) -> bool {
        self.shard(fingerprint).live(fingerprint, now)
    }

    /// Remembers `fingerprint` until `expires` (seconds): the first claim wins, a second one
    /// is a replay, and a full window refuses rather than forgets.
    pub fn claim(&self, fingerprint: [u8; 32], expires: i64, now: i64) -> Result<(), ClaimRefused> {
        {
            let mut shard = self.shard(&fingerprint);
            let purged = shard.purge(now);
            self.len.fetch_sub(purged, Ordering::Relaxed);
            if shard.live(&fingerprint, now) {
                return Err(ClaimRefused::Replay);
            }
            if self.reserve() {
                shard.expiry_of.insert(fingerprint, expires);
                shard.by_expiry.push(Reverse((expires, fingerprint)));
                return Ok(());
            }
        }
        // Full as counted: other shards may hold expired entries not purged yet.
        self.sweep(now);
        let mut shard = self.shard(&fingerprint);
        if shard.live(&fingerprint, now) {
            return Err(ClaimRefused::Replay);
        }
        if !self.reserve() {
            return Err(ClaimRefused::Full);
        }
        shard.expiry_of.insert(fingerprint, expires);
        shard.by_expiry.push(Reverse((expires, fingerprint)));
        Ok(())
    }

    /// Takes one place of the capacity, if one is free.
    fn reserve(&self) -> bool {
        self.len
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |len| {
                (len < self.capacity).then_some(len + 1)
            })
            .is_ok()
    }

    /// Forgets a claim that was not used after all (the fleet's window could not confirm it).
    /// Its heap entry stays, counted, until its expiry: claims released over and over (a
    /// signature resent while Redis is down) fill the window like accepted ones, never memory
    /// beyond it.
    pub fn release(&self, fingerprint: &[u8; 32]) {
        self.shard(fingerprint).expiry_of.remove(fingerprint);
    }

    /// Purges expired entries from every shard.
    pub fn sweep(&self, now: i64) {
        for shard in self.shards.iter() {
            let purged = shard
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .purge(now);
            self.len.fetch_sub(purged, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp(n: u32) -> [u8; 32] {
        use sha2::Digest;
        sha2::Sha256::digest(n.to_be_bytes()).into()
    }

    #[test]
    fn a_claimed_signature_replays_until_its_expiry() {
        let window = ReplayWindow::new(1 << 20);
        assert_eq!(window.claim(fp(1), 100, 10), Ok(()));
        assert_eq!(window.claim(fp(1), 100, 50), Err(ClaimRefused::Replay));
        assert!(window.seen(&fp(1), 100));
        assert!(!window.seen(&fp(1), 101));
        assert_eq!(window.claim(fp(1), 200, 101), Ok(()));
    }

    #[test]
    fn a_full_window_refuses_new_signatures_and_forgets_none() {
        let window = ReplayWindow::new(100 * ENTRY_BYTES);
        assert_eq!(window.capacity(), 100);
        for n in 0..100 {
            assert_eq!(window.claim(fp(n), 1_000, 0), Ok(()), "{n}");
        }
        assert_eq!(window.claim(fp(100), 1_000, 1), Err(ClaimRefused::Full));
        // Every live one still replays, whatever came after it.
        for n in 0..100 {
            assert_eq!(window.claim(fp(n), 1_000, 2), Err(ClaimRefused::Replay));
        }
        // Once they expire, there is room again.
        assert_eq!(window.claim(fp(100), 2_000, 1_001), Ok(()));
        assert_eq!(window.len(), 1);
    }

    #[test]
    fn expiries_need_not_arrive_in_order() {
        let window = ReplayWindow::new(10 * ENTRY_BYTES);
        for n in 0..10 {
            // Alternating far and near expiries.
            let expires = if n % 2 == 0 { 1_000 } else { 100 };
            window.claim(fp(n), expires, 0).unwrap();
        }
        assert_eq!(window.claim(fp(10), 1_000, 50), Err(ClaimRefused::Full));
        // At 101 the five near ones are gone and the five far ones remain.
        for n in 10..15 {
            assert_eq!(window.claim(fp(n), 1_000, 101), Ok(()), "{n}");
        }
        assert_eq!(window.claim(fp(15), 1_000, 101), Err(ClaimRefused::Full));
        for n in (0..10).step_by(2) {
            assert!(window.seen(&fp(n), 101));
        }
    }

    #[test]
    fn a_released_claim_may_come_again_and_holds_its_memory_until_expiry() {
        let window = ReplayWindow::new(2 * ENTRY_BYTES);
        window.claim(fp(1), 100, 0).unwrap();
        window.release(&fp(1));
        assert!(!window.seen(&fp(1), 0));
        // The same signature again (Redis answers now): accepted, and a replay after it.
        assert_eq!(window.claim(fp(1), 100, 0), Ok(()));
        assert_eq!(window.claim(fp(1), 100, 0), Err(ClaimRefused::Replay));
        // Two heap entries are held: the window is full until they expire.
        assert_eq!(window.claim(fp(2), 100, 0), Err(ClaimRefused::Full));
        window.sweep(101);
        assert_eq!(window.len(), 0);
        assert_eq!(window.claim(fp(2), 200, 101), Ok(()));
    }

    #[test]
    fn concurrent_claims_of_one_signature_have_one_winner() {
        let window = std::sync::Arc::new(ReplayWindow::new(1 << 20));
        let winners: usize = (0..8)
            .map(|_| {
                let window = window.clone();
                std::thread::spawn(move || window.claim(fp(7), 100, 0).is_ok())
            })
            .map(|t| t.join().unwrap() as usize)
            .sum();
        assert_eq!(winners, 1);
    }
}
