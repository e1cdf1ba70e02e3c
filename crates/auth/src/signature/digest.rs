//! `Content-Digest` (RFC 9530): what the signature says the body hashes to, and hashing the
//! body as it streams in.

use super::parse::single_header;
use keyward_core::SignatureError;
use pingora::http::RequestHeader;
use sfv::{BareItem, Dictionary, Item, ListEntry, Parser};
use sha2::{Digest, Sha256, Sha512};

/// What `Content-Digest` (RFC 9530) says the body hashes to: every sha-256 / sha-512 member
/// present must match, and at least one must be present. Parsed before the body is read, so
/// the body can be hashed as it streams in (and spooled) instead of held whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpectedDigest {
    sha256: Option<Vec<u8>>,
    sha512: Option<Vec<u8>>,
}

impl ExpectedDigest {
    pub fn from_header(header: &RequestHeader) -> Result<ExpectedDigest, SignatureError> {
        let digest: Dictionary = Parser::new(single_header(header, "content-digest")?)
            .parse()
            .map_err(|_| SignatureError::Malformed)?;
        let mut expected = ExpectedDigest {
            sha256: None,
            sha512: None,
        };
        for (algorithm, entry) in &digest {
            let ListEntry::Item(Item {
                bare_item: BareItem::ByteSequence(value),
                ..
            }) = entry
            else {
                return Err(SignatureError::Malformed);
            };
            match algorithm.as_str() {
                "sha-256" => expected.sha256 = Some(value.clone()),
                "sha-512" => expected.sha512 = Some(value.clone()),
                _ => {}
            }
        }
        if expected.sha256.is_none() && expected.sha512.is_none() {
            return Err(SignatureError::Malformed);
        }
        Ok(expected)
    }

    /// A hasher computing exactly the algorithms this digest names.
    pub fn hasher(&self) -> BodyHasher {
        BodyHasher {
            sha256: self.sha256.as_ref().map(|_| Sha256::new()),
            sha512: self.sha512.as_ref().map(|_| Sha512::new()),
            len: 0,
        }
    }

    /// Whether the hashed body is the one `Content-Digest` names.
    pub fn check(&self, body: BodyHasher) -> Result<(), SignatureError> {
        let matches = |expected: &Option<Vec<u8>>, actual: Option<Vec<u8>>| match (expected, actual)
        {
            (Some(expected), Some(actual)) => *expected == actual,
            _ => true,
        };
        let sha256 = body.sha256.map(|h| h.finalize().to_vec());
        let sha512 = body.sha512.map(|h| h.finalize().to_vec());
        match matches(&self.sha256, sha256) && matches(&self.sha512, sha512) {
            true => Ok(()),
            false => Err(SignatureError::DigestMismatch),
        }
    }
}

/// The running hashes of a request body, fed chunk by chunk.
#[derive(Clone)]
pub struct BodyHasher {
    sha256: Option<Sha256>,
    sha512: Option<Sha512>,
    len: u64,
}

impl BodyHasher {
    pub fn update(&mut self, chunk: &[u8]) {
        if let Some(h) = &mut self.sha256 {
            h.update(chunk);
        }
        if let Some(h) = &mut self.sha512 {
            h.update(chunk);
        }
        self.len += chunk.len() as u64;
    }

    /// Bytes hashed so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Checks a whole body against `Content-Digest`.
pub fn check_content_digest(header: &RequestHeader, body: &[u8]) -> Result<(), SignatureError> {
    let expected = ExpectedDigest::from_header(header)?;
    let mut hasher = expected.hasher();
    hasher.update(body);
    expected.check(hasher)
}

/// Whether a request carries a body (and so must cover `content-digest`).
/// Any `Transfer-Encoding`, or any `Content-Length` in any form (`N`, `N, N`, repeated) that
/// is not all zeros, means a body: a request must never be taken as body-less by one reading
/// and framed with a body by another.
pub fn has_body(header: &RequestHeader) -> bool {
    let headers = &header.headers;
    headers.contains_key(http::header::TRANSFER_ENCODING)
        || headers
            .get_all(http::header::CONTENT_LENGTH)
            .iter()
            .any(|value| {
                value
                    .as_bytes()
                    .iter()
                    .any(|b| !matches!(b, b'0' | b',' | b' ' | b'\t'))
            })
}
