//! Signature sessions: each key's clock offset, pinned by its first accepted request. A later
//! request whose offset differs by more than `signatures.skew_tolerance` is refused (clock
//! skew), so a client cannot step its clock back to sign outside the window. A session ends
//! after `signatures.session_ttl` without a request, or when an administrator evicts it.

use keyward_core::SignatureError;
use std::time::Duration;

/// A client's clock offset, pinned by its first accepted request.
#[derive(Debug, Clone, Copy)]
struct Session {
    offset_secs: i64,
}

/// The sessions of every key, by `(user id, key id)`.
pub struct SignatureSessions {
    sessions: moka::sync::Cache<(i64, i64), Session>,
}

impl SignatureSessions {
    pub fn new(capacity: u64, idle: Duration) -> SignatureSessions {
        SignatureSessions {
            sessions: moka::sync::Cache::builder()
                .max_capacity(capacity)
                .time_to_idle(idle)
                .support_invalidation_closures()
                .build(),
        }
    }

    /// Refuses `offset` when the key's session pinned one more than `tolerance_secs` away.
    pub fn check(
        &self,
        key: (i64, i64),
        offset: i64,
        tolerance_secs: i64,
    ) -> Result<(), SignatureError> {
        match self.sessions.get(&key) {
            Some(session) if (offset - session.offset_secs).abs() > tolerance_secs => {
                Err(SignatureError::ClockSkew)
            }
            _ => Ok(()),
        }
    }

    /// Starts the key's session at `offset` after an accepted request; an established session
    /// keeps its offset (and its idle timer restarts).
    pub fn pin(&self, key: (i64, i64), offset: i64) {
        self.sessions.get_with(key, || Session {
            offset_secs: offset,
        });
    }

    /// Ends a user's sessions (one key or all); returns the key ids whose session ended.
    pub fn evict(&self, user_id: i64, key_id: Option<i64>) -> Vec<i64> {
        let mut evicted: Vec<i64> = self
            .sessions
            .iter()
            .filter(|(k, _)| k.0 == user_id && key_id.is_none_or(|id| k.1 == id))
            .map(|(k, _)| k.1)
            .collect();
        for id in &evicted {
            self.sessions.invalidate(&(user_id, *id));
        }
        evicted.sort_unstable();
        evicted
    }

    pub fn invalidate_all(&self) {
        self.sessions.invalidate_all();
    }

    /// Sessions held, after pending expirations.
    pub fn count(&self) -> u64 {
        self.sessions.run_pending_tasks();
        self.sessions.entry_count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_pins_the_first_offset_and_refuses_a_jump() {
        let sessions = SignatureSessions::new(100, Duration::from_secs(60));
        assert_eq!(sessions.check((1, 1), 500, 5), Ok(()));
        sessions.pin((1, 1), 0);
        sessions.pin((1, 1), 100); // an established session keeps its offset
        assert_eq!(sessions.check((1, 1), 5, 5), Ok(()));
        assert_eq!(sessions.check((1, 1), -5, 5), Ok(()));
        assert_eq!(sessions.check((1, 1), 6, 5), Err(SignatureError::ClockSkew));
        assert_eq!(
            sessions.check((1, 2), 600, 5),
            Ok(()),
            "each key has its own"
        );
    }

    #[test]
    fn eviction_ends_one_key_or_every_key_of_a_user() {
        let sessions = SignatureSessions::new(100, Duration::from_secs(60));
        for key in [(1, 1), (1, 2), (1, 3), (2, 1)] {
            sessions.pin(key, 0);
        }
        assert_eq!(sessions.evict(1, Some(2)), vec![2]);
        assert_eq!(sessions.evict(1, None), vec![1, 3]);
        assert_eq!(sessions.evict(1, None), Vec::<i64>::new());
        assert_eq!(sessions.count(), 1);
        assert_eq!(
            sessions.check((1, 2), 100, 5),
            Ok(()),
            "an evicted session pins nothing"
        );
    }
}
