//! Password hashing: argon2id with the crate's (OWASP-recommended) default parameters.
//!
//! Hashing is deliberately slow (tens of milliseconds) and memory-hard (~19 MiB), so callers on
//! the async runtime go through [`PasswordHasher::verify`], which runs it on a small fixed pool
//! of dedicated threads: a flood of wrong passwords costs a bounded number of cores and a
//! bounded amount of memory, never the proxy's workers.

use super::AuthError;
use crate::ratelimit::client_network;
use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use prometheus::IntGauge;
use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Condvar, Mutex};
use subtle::ConstantTimeEq;
use tokio::sync::oneshot;

/// Hashes a password into a PHC string (`$argon2id$v=19$...`).
pub fn hash_password(password: &str) -> Result<String, String> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| format!("cannot hash password: {e}"))
}

/// Checks a password against a PHC string; a malformed stored hash never matches.
pub fn verify_password(password: &str, phc: &str) -> bool {
    match PasswordHash::new(phc) {
        Ok(parsed) => Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok(),
        Err(_) => false,
    }
}

/// Largest argon2 memory a worker keeps for reuse (64 MiB); a stored hash that asks for more
/// (none keyward writes does) is verified with memory allocated for that one call.
const MAX_REUSED_BLOCKS: usize = 64 * 1024;

/// Checks `password` against `phc` using `memory` as argon2's working memory, grown to the
/// size the hash's parameters need and kept for the next call: a worker thread allocates its
/// ~19 MiB once instead of on every verification.
fn verify_reusing(memory: &mut Vec<Block>, password: &str, phc: &str) -> bool {
    let Ok(parsed) = PasswordHash::new(phc) else {
        return false;
    };
    let (Some(salt), Some(expected)) = (parsed.salt, parsed.hash) else {
        return false;
    };
    let Ok(params) = Params::try_from(&parsed) else {
        return false;
    };
    if params.block_count() > MAX_REUSED_BLOCKS {
        return verify_password(password, phc);
    }
    let Ok(algorithm) = Algorithm::try_from(parsed.algorithm) else {
        return false;
    };
    let version = match parsed.version.map(Version::try_from).transpose() {
        Ok(version) => version.unwrap_or_default(),
        Err(_) => return false,
    };
    let mut salt_bytes = [0u8; 64];
    let Ok(salt) = salt.decode_b64(&mut salt_bytes) else {
        return false;
    };
    if memory.len() < params.block_count() {
        memory.resize(params.block_count(), Block::default());
    }
    let blocks = params.block_count();
    let mut out = [0u8; 64];
    let Some(out) = out.get_mut(..expected.len()) else {
        return false;
    };
    Argon2::new(algorithm, version, params)
        .hash_password_into_with_memory(password.as_bytes(), salt, out, &mut memory[..blocks])
        .is_ok()
        && bool::from(out.ct_eq(expected.as_bytes()))
}

struct Job {
    password: String,
    phc: Arc<str>,
    /// `None`: pushed out of the queue by a network with fewer waiting checks (busy).
    answer: oneshot::Sender<Option<bool>>,
}

/// Waiting verifications, one queue per client (a network, or a user in the lane), served
/// round-robin: a flood from one network (or a few) waits behind itself, and a login from
/// anywhere else is served after at most one job of each other waiting network, however long
/// the flood's queue.
struct Waiting {
    by_client: HashMap<u128, VecDeque<Job>>,
    /// Clients with waiting jobs, in the order they are served.
    turns: VecDeque<u128>,
    len: usize,
    capacity: usize,
    per_client: usize,
}

/// The two places a check may wait. Every check first asks for a place in `by_network`
/// (fair by client network, blind to which names exist); a check of a name that exists finds
/// no place there only under a flood, and then waits in `known`, a small lane fair by user
/// and served in alternation with the networks' queue: junk for names that do not exist,
/// from however many networks, cannot keep a user's right password out (SPEC §15). The
/// price: while the networks' queue is full, a name that exists is checked (401) where one
/// that does not is told to come back (503), which says the name exists to a client who
/// keeps the queue full — the documented trade-off (security model, "What a flood may cost").
struct Queues {
    by_network: Waiting,
    known: Waiting,
    /// Whether the next turn goes to the lane (it alternates while both have work).
    known_next: bool,
    open: bool,
}

impl Queues {
    fn push(&mut self, network: u128, user: Option<i64>, job: Job) -> Result<(), Job> {
        let job = match self.by_network.push(network, job) {
            Ok(()) => return Ok(()),
            Err(job) => job,
        };
        match user {
            // Ids are signed in the store; any injective map to the lane's key will do.
            Some(user) => self.known.push(u128::from(user as u64), job),
            None => Err(job),
        }
    }

    fn pop(&mut self) -> Option<Job> {
        let (first, second) = match self.known_next {
            true => (&mut self.known, &mut self.by_network),
            false => (&mut self.by_network, &mut self.known),
        };
        if let Some(job) = first.pop() {
            self.known_next = !self.known_next;
            return Some(job);
        }
        second.pop()
    }
}

impl Waiting {
    fn new(capacity: usize, per_client: usize) -> Waiting {
        Waiting {
            by_client: HashMap::new(),
            turns: VecDeque::new(),
            len: 0,
            capacity,
            per_client,
        }
    }

    /// Queues `job` in `client`'s turn. A full queue makes room by pushing out the newest job
    /// of the network with the most waiting, when that is more than this network's: however
    /// many networks flood, a network with nothing waiting always gets a place (longest
    /// queue drop), so junk cannot keep a login out.
    fn push(&mut self, client: u128, job: Job) -> Result<(), Job> {
        let mine = self.by_client.get(&client).map_or(0, VecDeque::len);
        if mine >= self.per_client {
            return Err(job);
        }
        if self.len >= self.capacity {
            let longest = self
                .by_client
                .iter()
                .max_by_key(|(_, queue)| queue.len())
                .map(|(network, queue)| (*network, queue.len()));
            match longest {
                Some((network, len)) if len > mine + 1 => {
                    if let Some(pushed_out) = self
                        .by_client
                        .get_mut(&network)
                        .and_then(VecDeque::pop_back)
                    {
                        let _ = pushed_out.answer.send(None);
                        self.len -= 1;
                    }
                }
                _ => return Err(job),
            }
        }
        let queue = self.by_client.entry(client).or_default();
        if queue.is_empty() {
            self.turns.push_back(client);
        }
        queue.push_back(job);
        self.len += 1;
        Ok(())
    }

    fn pop(&mut self) -> Option<Job> {
        let client = self.turns.pop_front()?;
        let queue = self.by_client.get_mut(&client)?;
        let job = queue.pop_front()?;
        self.len -= 1;
        if queue.is_empty() {
            self.by_client.remove(&client);
        } else {
            self.turns.push_back(client);
        }
        Some(job)
    }
}

struct Pool {
    waiting: Mutex<Queues>,
    ready: Condvar,
    /// `keyward_password_checks_waiting`: checks queued, not yet on a hashing thread.
    waiting_gauge: IntGauge,
}

impl Pool {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queues> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Called with the lock held, after every change of the queues, so the gauge is exact.
    fn report(&self, queues: &Queues) {
        self.waiting_gauge
            .set((queues.by_network.len + queues.known.len) as i64);
    }
}

/// Ends the workers when the last hasher is dropped.
struct Shutdown(Arc<Pool>);

impl Drop for Shutdown {
    fn drop(&mut self) {
        self.0.lock().open = false;
        self.0.ready.notify_all();
    }
}

/// Verifications run on a fixed pool of dedicated threads (`limits.password_hash_threads`),
/// never on the async runtime nor tokio's blocking pool: memory is bounded by the pool's size
/// (one argon2 working set and one malloc arena per thread), however many wrong passwords
/// arrive at once. Waiting verifications are bounded too — [`QUEUE_PER_THREAD`] per thread in
/// all, [`QUEUE_PER_CLIENT_PER_THREAD`] per thread for one client network — and a check that
/// finds no place is refused at once (`PasswordChecksBusy`, 503 with `Retry-After`) instead
/// of waiting behind a flood.
#[derive(Clone)]
pub struct PasswordHasher {
    pool: Arc<Pool>,
    _shutdown: Arc<Shutdown>,
    /// Verified against when the user does not exist, so the answer takes as long as for a
    /// wrong password and does not reveal which user names exist.
    dummy_hash: Arc<str>,
}

/// Waiting verifications per hashing thread, all clients together.
pub const QUEUE_PER_THREAD: usize = 64;
/// Waiting verifications per hashing thread for one client network.
pub const QUEUE_PER_CLIENT_PER_THREAD: usize = 8;
/// Places per hashing thread in the lane of names that exist, all users together.
pub const KNOWN_LANE_PER_THREAD: usize = 8;
/// Places per hashing thread in that lane for one user.
pub const KNOWN_LANE_PER_USER_PER_THREAD: usize = 2;

impl PasswordHasher {
    /// Starts `threads` (at least 1) worker threads; they end when the last clone is dropped.
    /// `waiting` follows how many checks are queued (`keyward_password_checks_waiting`).
    pub fn new(threads: usize, waiting: IntGauge) -> PasswordHasher {
        let threads = threads.max(1);
        let dummy = hash_password("keyward-dummy-password").unwrap_or_default();
        let pool = Arc::new(Pool {
            waiting: Mutex::new(Queues {
                by_network: Waiting::new(
                    threads * QUEUE_PER_THREAD,
                    threads * QUEUE_PER_CLIENT_PER_THREAD,
                ),
                known: Waiting::new(
                    threads * KNOWN_LANE_PER_THREAD,
                    threads * KNOWN_LANE_PER_USER_PER_THREAD,
                ),
                known_next: false,
                open: true,
            }),
            ready: Condvar::new(),
            waiting_gauge: waiting,
        });
        for i in 0..threads {
            let pool = pool.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("keyward-argon2-{i}"))
                .spawn(move || {
                    let mut memory = Vec::new();
                    loop {
                        let job = {
                            let mut waiting = pool.lock();
                            loop {
                                if let Some(job) = waiting.pop() {
                                    pool.report(&waiting);
                                    break job;
                                }
                                if !waiting.open {
                                    return;
                                }
                                waiting =
                                    pool.ready.wait(waiting).unwrap_or_else(|p| p.into_inner());
                            }
                        };
                        let matched = verify_reusing(&mut memory, &job.password, &job.phc);
                        let _ = job.answer.send(Some(matched));
                    }
                });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start a password hashing thread");
            }
        }
        PasswordHasher {
            _shutdown: Arc::new(Shutdown(pool.clone())),
            pool,
            dummy_hash: dummy.into(),
        }
    }

    /// Verifies `password` against `user`'s hash (`(user id, PHC string)`), or against the
    /// dummy hash when the name is unknown (always false then), in `client`'s turn.
    /// `Err(PasswordChecksBusy)`: no place to wait.
    pub async fn verify(
        &self,
        password: String,
        user: Option<(i64, String)>,
        client: IpAddr,
    ) -> Result<bool, AuthError> {
        let known = user.is_some();
        let (user, phc) = match user {
            Some((id, phc)) => (Some(id), Arc::from(phc)),
            None => (None, self.dummy_hash.clone()),
        };
        let (answer, answered) = oneshot::channel();
        let job = Job {
            password,
            phc,
            answer,
        };
        {
            let mut queues = self.pool.lock();
            let pushed = queues.push(client_network(client), user, job);
            self.pool.report(&queues);
            pushed.map_err(|_| AuthError::PasswordChecksBusy)?;
        }
        self.pool.ready.notify_one();
        match answered.await {
            Ok(Some(matched)) => Ok(known && matched),
            Ok(None) => Err(AuthError::PasswordChecksBusy),
            Err(_) => Ok(false),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_then_verify() {
        let phc = hash_password("correct horse").unwrap();
        assert!(phc.starts_with("$argon2id$"));
        assert!(verify_password("correct horse", &phc));
        assert!(!verify_password("wrong horse", &phc));
        assert!(!verify_password("correct horse", "not a hash"));
    }

    #[test]
    fn reused_memory_verifies_like_the_crate() {
        let phc = hash_password("correct horse").unwrap();
        let mut memory = Vec::new();
        assert!(verify_reusing(&mut memory, "correct horse", &phc));
        assert!(!verify_reusing(&mut memory, "wrong horse", &phc));
        assert!(
            verify_reusing(&mut memory, "correct horse", &phc),
            "memory reused"
        );
        assert!(!verify_reusing(&mut memory, "correct horse", "not a hash"));
        let other = hash_password("").unwrap();
        assert!(verify_reusing(&mut memory, "", &other));
    }

    #[tokio::test]
    async fn pool_verifies() {
        let hasher = PasswordHasher::new(2, unregistered_gauge());
        let phc = hash_password("pw").unwrap();
        let checks = (0..6).map(|i| {
            let hasher = hasher.clone();
            let phc = phc.clone();
            tokio::spawn(async move {
                hasher
                    .verify(
                        if i % 2 == 0 { "pw" } else { "no" }.into(),
                        Some((1, phc)),
                        LOCAL,
                    )
                    .await
                    .unwrap()
            })
        });
        let results: Vec<bool> = futures_join(checks).await;
        assert_eq!(results, [true, false, true, false, true, false]);
    }

    async fn futures_join(
        handles: impl Iterator<Item = tokio::task::JoinHandle<bool>>,
    ) -> Vec<bool> {
        let mut out = Vec::new();
        for handle in handles {
            out.push(handle.await.unwrap());
        }
        out
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_waiting_gauge_counts_queued_checks_and_returns_to_zero() {
        let gauge = unregistered_gauge();
        let hasher = PasswordHasher::new(1, gauge.clone());
        let phc = hash_password("pw").unwrap();
        // Ten networks, one check each, one hashing thread: nine wait while one is hashed.
        let checks: Vec<_> = (0..10u8)
            .map(|n| {
                let (hasher, phc) = (hasher.clone(), phc.clone());
                tokio::spawn(async move {
                    let client = IpAddr::V4(std::net::Ipv4Addr::new(10, n, 0, 1));
                    hasher.verify("no".into(), Some((1, phc)), client).await
                })
            })
            .collect();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let mut most = 0;
        while most < 5 && std::time::Instant::now() < deadline {
            most = most.max(gauge.get());
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        assert!(
            most >= 5,
            "the gauge peaked at {most} with ten checks queued"
        );
        for check in checks {
            assert_eq!(check.await.unwrap(), Ok(false));
        }
        assert_eq!(gauge.get(), 0);
    }

    #[tokio::test]
    async fn unknown_user_never_verifies() {
        let hasher = PasswordHasher::new(1, unregistered_gauge());
        assert!(!hasher
            .verify("keyward-dummy-password".into(), None, LOCAL)
            .await
            .unwrap());
    }

    fn unregistered_gauge() -> IntGauge {
        IntGauge::new("waiting", "checks waiting").unwrap()
    }

    const LOCAL: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    fn job() -> (Job, oneshot::Receiver<Option<bool>>) {
        let (answer, answered) = oneshot::channel();
        let job = Job {
            password: String::new(),
            phc: Arc::from(""),
            answer,
        };
        (job, answered)
    }

    #[test]
    fn waiting_checks_take_turns_by_client_and_are_bounded() {
        let mut waiting = Waiting::new(6, 4);
        let mut receivers = Vec::new();
        // A flood from client 1 fills its share; client 2 still finds a place.
        for _ in 0..4 {
            let (job, rx) = job();
            assert!(waiting.push(1, job).is_ok());
            receivers.push(rx);
        }
        assert!(waiting.push(1, job().0).is_err(), "per-client bound");
        let (job2, mut rx2) = job();
        assert!(waiting.push(2, job2).is_ok());
        // The flood's first job, then client 2's, though three more of the flood came first.
        waiting.pop().unwrap().answer.send(Some(true)).unwrap();
        waiting.pop().unwrap().answer.send(Some(true)).unwrap();
        assert_eq!(rx2.try_recv(), Ok(Some(true)));
        assert_eq!(waiting.len, 3);
        for _ in 0..3 {
            let (job, rx) = job();
            assert!(waiting.push(3, job).is_ok());
            receivers.push(rx);
        }
        // Full (1 and 3 hold three each): a network with nothing waiting pushes out the newest
        // job of a longest queue, twice, and then its queue is as long as theirs.
        assert!(waiting.push(4, job().0).is_ok());
        assert!(waiting.push(4, job().0).is_ok());
        assert!(waiting.push(4, job().0).is_err(), "total bound");
        assert_eq!(waiting.len, 6);
        let pushed_out = receivers
            .iter_mut()
            .map(|rx| rx.try_recv())
            .filter(|answer| *answer == Ok(None))
            .count();
        assert_eq!(pushed_out, 2);
        while waiting.pop().is_some() {}
        assert_eq!(waiting.len, 0);
        assert!(waiting.by_client.is_empty() && waiting.turns.is_empty());
    }

    #[test]
    fn a_name_that_exists_waits_in_its_lane_when_the_networks_queue_is_full() {
        let mut queues = Queues {
            by_network: Waiting::new(4, 1),
            known: Waiting::new(3, 2),
            known_next: false,
            open: true,
        };
        // Junk from four networks (one check each) fills the networks' queue; no longest queue
        // to push out, so a fifth network's junk finds no place.
        let mut flood = Vec::new();
        for network in 10..14 {
            let (job, rx) = job();
            assert!(queues.push(network, None, job).is_ok());
            flood.push(rx);
        }
        assert!(
            queues.push(20, None, job().0).is_err(),
            "unknown name: busy"
        );
        // A name that exists waits in the lane, two places per user, three in all.
        let (known, mut known_rx) = job();
        assert!(queues.push(20, Some(7), known).is_ok());
        let (again, mut again_rx) = job();
        assert!(queues.push(21, Some(7), again).is_ok());
        assert!(
            queues.push(22, Some(7), job().0).is_err(),
            "per user in the lane"
        );
        assert!(queues.push(22, Some(8), job().0).is_ok());
        // Full: a user with nothing waiting pushes out the newest of a user with more (the
        // lane's longest queue drop), then every user holds one and the next finds no place.
        assert!(queues.push(23, Some(9), job().0).is_ok());
        assert!(queues.push(24, Some(10), job().0).is_err(), "lane full");
        assert_eq!(again_rx.try_recv(), Ok(None), "pushed out");
        // Served in alternation: a network's check, then the lane's first.
        queues.pop().unwrap().answer.send(Some(false)).unwrap();
        queues.pop().unwrap().answer.send(Some(true)).unwrap();
        assert_eq!(known_rx.try_recv(), Ok(Some(true)));
        assert_eq!(flood[0].try_recv(), Ok(Some(false)));
        let mut served = 2;
        while queues.pop().is_some() {
            served += 1;
        }
        assert_eq!(served, 7);
    }

    #[tokio::test]
    async fn a_full_queue_answers_busy_at_once() {
        let hasher = PasswordHasher::new(1, unregistered_gauge());
        let phc = hash_password("pw").unwrap();
        let checks: Vec<_> = (0..200)
            .map(|_| {
                let hasher = hasher.clone();
                let phc = phc.clone();
                tokio::spawn(async move { hasher.verify("no".into(), Some((1, phc)), LOCAL).await })
            })
            .collect();
        let mut busy = 0;
        for check in checks {
            if check.await.unwrap() == Err(AuthError::PasswordChecksBusy) {
                busy += 1;
            }
        }
        // One thread: at most 8 waiting for one client and 2 for the user in the lane, plus
        // those hashed meanwhile.
        assert!(busy >= 150, "{busy}");
    }
}
