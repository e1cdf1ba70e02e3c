//! The id every request gets: in the access log, the audit log and `X-Request-Id`.

use rand::Rng;

/// `Gateway-Request-Id`: 16 upper-case hex digits (64 random bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestId([u8; 16]);

impl RequestId {
    pub fn random() -> RequestId {
        let value: u64 = rand::thread_rng().gen();
        let mut out = [0u8; 16];
        for (i, byte) in out.iter_mut().enumerate() {
            let nibble = (value >> (60 - 4 * i)) & 0xf;
            *byte = b"0123456789ABCDEF"[nibble as usize];
        }
        RequestId(out)
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII hex digits are ever written into the array.
        std::str::from_utf8(&self.0).unwrap_or("0000000000000000")
    }
}
