//! Last uses of keys, recorded in memory on the request path (one short lock, no I/O) and
//! written to the store in batches by a background service.

use keyward_store::{now_ms, KeyUsage};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

#[derive(Default)]
pub struct UsageRecorder {
    /// (user id, key id) → (ms, client address) of the latest use.
    uses: Mutex<HashMap<(i64, i64), (i64, IpAddr)>>,
}

impl UsageRecorder {
    pub fn record(&self, user_id: i64, key_id: i64, ip: IpAddr) {
        if let Ok(mut uses) = self.uses.lock() {
            uses.insert((user_id, key_id), (now_ms(), ip));
        }
    }

    /// Takes everything recorded since the last call.
    pub fn drain(&self) -> Vec<KeyUsage> {
        match self.uses.lock() {
            Ok(mut uses) => uses
                .drain()
                .map(|((user_id, key_id), (at_ms, ip))| KeyUsage {
                    user_id,
                    key_id,
                    at_ms,
                    ip: ip.to_string(),
                })
                .collect(),
            Err(_) => Vec::new(),
        }
    }
}
