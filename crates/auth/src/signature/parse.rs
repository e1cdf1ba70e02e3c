//! Parsing what a signed request carries: `Signature-Input` and `Signature` (RFC 9421 §4, as
//! structured fields with `sfv`), its `keyid`, and an enrolled public key.

use base64::Engine as _;
use ed25519_dalek::VerifyingKey;
use keyward_core::SignatureError;
use pingora::http::RequestHeader;
use sfv::{BareItem, Dictionary, FieldType, InnerList, Item, List, ListEntry, Parser};

/// Components every signature must cover; `content-digest` too when there is a body.
pub(crate) const REQUIRED_COMPONENTS: [&str; 4] = ["@method", "@authority", "@path", "@query"];
/// Longest accepted `Signature-Input` / `Signature` value.
pub(crate) const MAX_HEADER_LEN: usize = 4096;
/// Longest accepted `keyid` (`<user name or id>/<keyID>`); longer ones are malformed.
pub const MAX_KEYID_LEN: usize = 256;

/// The parsed `Signature-Input` member and its `Signature`.
#[derive(Debug, Clone)]
pub struct SignedRequest {
    pub components: Vec<String>,
    /// The `@signature-params` value: the inner list re-serialised.
    pub params: String,
    pub created: i64,
    pub expires: Option<i64>,
    pub nonce: Option<String>,
    pub keyid: String,
    pub signature: [u8; 64],
}

pub(crate) fn single_header<'a>(
    header: &'a RequestHeader,
    name: &str,
) -> Result<&'a str, SignatureError> {
    let mut values = header.headers.get_all(name).iter();
    let value = values.next().ok_or(SignatureError::Malformed)?;
    if values.next().is_some() || value.len() > MAX_HEADER_LEN {
        return Err(SignatureError::Malformed);
    }
    value.to_str().map_err(|_| SignatureError::Malformed)
}

/// Parses `Signature-Input` and `Signature`. One signature per request: several labels are
/// refused rather than picked between.
pub fn parse_headers(header: &RequestHeader) -> Result<SignedRequest, SignatureError> {
    let input: Dictionary = Parser::new(single_header(header, "signature-input")?)
        .parse()
        .map_err(|_| SignatureError::Malformed)?;
    let signatures: Dictionary = Parser::new(single_header(header, "signature")?)
        .parse()
        .map_err(|_| SignatureError::Malformed)?;
    if input.len() != 1 {
        return Err(SignatureError::Malformed);
    }
    let (label, entry) = input.into_iter().next().ok_or(SignatureError::Malformed)?;
    let ListEntry::InnerList(list) = entry else {
        return Err(SignatureError::Malformed);
    };
    let signature = match signatures.get(label.as_str()) {
        Some(ListEntry::Item(Item {
            bare_item: BareItem::ByteSequence(bytes),
            ..
        })) => <[u8; 64]>::try_from(bytes.as_slice()).map_err(|_| SignatureError::Malformed)?,
        _ => return Err(SignatureError::Malformed),
    };
    let mut components = Vec::with_capacity(list.items.len());
    for item in &list.items {
        // Component parameters (`;sf`, `;key`, `;req`, `;bs`) are not supported: refused.
        let name = item
            .bare_item
            .as_string()
            .ok_or(SignatureError::Malformed)?;
        if !item.params.is_empty() {
            return Err(SignatureError::Malformed);
        }
        let name = name.as_str().to_owned();
        if components.contains(&name) || name.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(SignatureError::Malformed);
        }
        components.push(name);
    }
    let int_param = |name: &str| -> Result<Option<i64>, SignatureError> {
        match list.params.get(name) {
            None => Ok(None),
            Some(value) => value
                .as_integer()
                .map(|i| Some(i64::from(i)))
                .ok_or(SignatureError::Malformed),
        }
    };
    let str_param = |name: &str| -> Result<Option<String>, SignatureError> {
        match list.params.get(name) {
            None => Ok(None),
            Some(value) => value
                .as_string()
                .map(|s| Some(s.as_str().to_owned()))
                .ok_or(SignatureError::Malformed),
        }
    };
    let created = int_param("created")?.ok_or(SignatureError::Malformed)?;
    let expires = int_param("expires")?;
    let nonce = str_param("nonce")?;
    let keyid = str_param("keyid")?.ok_or(SignatureError::Malformed)?;
    if keyid.len() > MAX_KEYID_LEN {
        return Err(SignatureError::Malformed);
    }
    if let Some(alg) = str_param("alg")? {
        if alg != "ed25519" {
            return Err(SignatureError::Malformed);
        }
    }
    let params = serialize_inner_list(list)?;
    Ok(SignedRequest {
        components,
        params,
        created,
        expires,
        nonce,
        keyid,
        signature,
    })
}

fn serialize_inner_list(list: InnerList) -> Result<String, SignatureError> {
    let as_list: List = vec![ListEntry::InnerList(list)];
    as_list.serialize().ok_or(SignatureError::Malformed)
}

/// Parses an enrolled public key: base64 of the 32 raw bytes, or a PEM `PUBLIC KEY`.
pub fn parse_public_key(text: &str) -> Result<VerifyingKey, String> {
    let text = text.trim();
    if text.starts_with("-----BEGIN") {
        use ed25519_dalek::pkcs8::DecodePublicKey;
        return VerifyingKey::from_public_key_pem(text)
            .map_err(|e| format!("not an Ed25519 public key in PEM: {e}"));
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text)
        .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(text))
        .or_else(|_| base64::engine::general_purpose::URL_SAFE.decode(text))
        .map_err(|_| "publicKey must be base64 or PEM".to_owned())?;
    let raw = <[u8; 32]>::try_from(bytes.as_slice())
        .map_err(|_| "an Ed25519 public key has 32 bytes".to_owned())?;
    VerifyingKey::from_bytes(&raw).map_err(|e| format!("not a valid Ed25519 public key: {e}"))
}

/// `keyid="<user name or id>/<keyID>"`.
pub fn parse_keyid(keyid: &str) -> Option<(String, i64)> {
    let (user, key_id) = keyid.rsplit_once('/')?;
    if user.is_empty() || !canonical_number(key_id) {
        return None;
    }
    // A numeric user part is an id: one spelling per id (no leading zeros), so that spellings
    // of one key cannot each cost a store read and a cache entry.
    if user.bytes().all(|b| b.is_ascii_digit()) && !canonical_number(user) {
        return None;
    }
    Some((user.to_owned(), key_id.parse().ok()?))
}

/// Digits only, without leading zeros (`0` itself is fine).
fn canonical_number(text: &str) -> bool {
    !text.is_empty()
        && text.bytes().all(|b| b.is_ascii_digit())
        && (text == "0" || !text.starts_with('0'))
}
