//! Parsing what a signed request carries: `Signature-Input` and `Signature` (RFC 9421 §4, as
//! structured fields with `sfv`), its `keyid`, and an enrolled public key.
//!
//! Both fields are read with `sfv`'s visitors, which hand over each part as it is parsed,
//! borrowed from the header value: nothing is built that the check does not keep (the owned
//! `Dictionary`, with a map per parameter list and a string per key, cost more than half of
//! keyward's own work on a signed request). `sfv` still validates every byte of both fields.

use base64::Engine as _;
use ed25519_dalek::VerifyingKey;
use keyward_core::SignatureError;
use pingora::http::RequestHeader;
use sfv::visitor::{
    DictionaryVisitor, EntryVisitor, Ignored, InnerListVisitor, ItemVisitor, ParameterVisitor,
};
use sfv::{BareItemFromInput, KeyRef, ListSerializer, Parser, StringRef};
use std::borrow::Cow;

/// Components every signature must cover; `content-digest` too when there is a body.
pub(crate) const REQUIRED_COMPONENTS: [&str; 4] = ["@method", "@authority", "@path", "@query"];
/// Longest accepted `Signature-Input` / `Signature` value.
pub(crate) const MAX_HEADER_LEN: usize = 4096;
/// Longest accepted `keyid` (`<user name or id>/<keyID>`); longer ones are malformed.
pub const MAX_KEYID_LEN: usize = 256;
/// Most components one signature may cover: more is not a request keyward signs for, only
/// work for the verifier.
pub const MAX_COMPONENTS: usize = 32;

/// The parsed `Signature-Input` member and its `Signature`, borrowed from the request's
/// headers where the text allows.
#[derive(Debug, Clone)]
pub struct SignedRequest<'a> {
    pub components: Vec<Cow<'a, str>>,
    /// The `@signature-params` value: the inner list re-serialised.
    pub params: String,
    pub created: i64,
    pub expires: Option<i64>,
    pub nonce: Option<Cow<'a, str>>,
    pub keyid: Cow<'a, str>,
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
/// refused rather than picked between, and so is a label given twice or a signature
/// parameter given twice (RFC 9651 would keep the last; a signer that repeats one is not
/// trusted to mean it).
pub fn parse_headers(header: &RequestHeader) -> Result<SignedRequest<'_>, SignatureError> {
    let input = Parser::new(single_header(header, "signature-input")?)
        .parse_dictionary_with_visitor(InputVisitor::default())
        .map_err(|_| SignatureError::Malformed)?;
    let signature = Parser::new(single_header(header, "signature")?)
        .parse_dictionary_with_visitor(SignatureVisitor {
            label: input.label,
            signature: None,
        })
        .map_err(|_| SignatureError::Malformed)?;

    let mut created = None;
    let mut expires = None;
    let mut nonce = None;
    let mut keyid = None;
    for (name, value) in &input.params {
        match name.as_str() {
            "created" => created = Some(integer(value)?),
            "expires" => expires = Some(integer(value)?),
            "nonce" => nonce = Some(string(value)?),
            "keyid" => keyid = Some(string(value)?),
            "alg" if string(value)? != "ed25519" => return Err(SignatureError::Malformed),
            _ => {}
        }
    }
    let created = created.ok_or(SignatureError::Malformed)?;
    let keyid = keyid.ok_or(SignatureError::Malformed)?;
    if keyid.len() > MAX_KEYID_LEN {
        return Err(SignatureError::Malformed);
    }
    let params = serialize_params(&input)?;
    Ok(SignedRequest {
        components: input.components.iter().map(text_of).collect(),
        params,
        created,
        expires,
        nonce,
        keyid,
        signature,
    })
}

fn integer(value: &BareItemFromInput<'_>) -> Result<i64, SignatureError> {
    value
        .as_integer()
        .map(i64::from)
        .ok_or(SignatureError::Malformed)
}

fn string<'a>(value: &BareItemFromInput<'a>) -> Result<Cow<'a, str>, SignatureError> {
    match value {
        BareItemFromInput::String(text) => Ok(text_of(text)),
        _ => Err(SignatureError::Malformed),
    }
}

/// A structured-field string as text: borrowed from the header unless it held escapes.
fn text_of<'a>(text: &Cow<'a, StringRef>) -> Cow<'a, str> {
    match text {
        Cow::Borrowed(text) => Cow::Borrowed(text.as_str()),
        Cow::Owned(text) => Cow::Owned(text.as_str().to_owned()),
    }
}

/// `@signature-params`: the member's inner list with its parameters, serialised as RFC 9651
/// §4.1 writes it, whatever spacing the client used.
fn serialize_params(input: &SignatureInput<'_>) -> Result<String, SignatureError> {
    let mut out = String::with_capacity(128);
    let mut list = ListSerializer::with_buffer(&mut out);
    let mut inner = list.inner_list();
    for name in &input.components {
        let _ = inner.bare_item(&**name);
    }
    let mut params = inner.finish();
    for (name, value) in &input.params {
        params = params.parameter(name, value);
    }
    let _ = params.finish();
    let _ = list.finish();
    Ok(out)
}

/// Why a field's visitor stopped: the field is not one keyward accepts. (`sfv` wraps it; the
/// caller maps every parse failure to `Malformed`.)
#[derive(Debug)]
struct Refused;

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("not a signature keyward accepts")
    }
}

impl std::error::Error for Refused {}

/// The one member of `Signature-Input`, as parsed.
#[derive(Default)]
struct SignatureInput<'de> {
    label: Option<&'de KeyRef>,
    members: usize,
    components: Vec<Cow<'de, StringRef>>,
    params: Vec<(&'de KeyRef, BareItemFromInput<'de>)>,
}

#[derive(Default)]
struct InputVisitor<'de>(SignatureInput<'de>);

impl<'de> DictionaryVisitor<'de> for InputVisitor<'de> {
    type Out = SignatureInput<'de>;
    type Error = Refused;

    fn entry(&mut self, key: &'de KeyRef) -> Result<impl EntryVisitor<'de>, Refused> {
        self.0.members += 1;
        if self.0.members > 1 {
            return Err(Refused);
        }
        self.0.label = Some(key);
        Ok(&mut self.0)
    }

    fn finish(self) -> Result<SignatureInput<'de>, Refused> {
        match self.0.members {
            1 => Ok(self.0),
            _ => Err(Refused),
        }
    }
}

impl<'de> EntryVisitor<'de> for &mut SignatureInput<'de> {
    type Error = Refused;

    fn item(self) -> Result<impl ItemVisitor<'de>, Refused> {
        // A member must be an inner list of components.
        Err::<Ignored, _>(Refused)
    }

    fn inner_list(self) -> Result<impl InnerListVisitor<'de>, Refused> {
        Ok(self)
    }
}

impl<'de> InnerListVisitor<'de> for &mut SignatureInput<'de> {
    type Error = Refused;

    fn item(&mut self) -> Result<impl ItemVisitor<'de>, Refused> {
        Ok(Component(&mut self.components))
    }

    fn finish(self) -> Result<impl ParameterVisitor<'de>, Refused> {
        Ok(SignatureParams(&mut self.params))
    }
}

/// One covered component: a lower-case string, once, without parameters (`;sf`, `;key`,
/// `;req`, `;bs` are not supported: refused).
struct Component<'a, 'de>(&'a mut Vec<Cow<'de, StringRef>>);

impl<'de> ItemVisitor<'de> for Component<'_, 'de> {
    type Out = ();
    type Error = Refused;

    fn bare_item(
        self,
        bare_item: BareItemFromInput<'de>,
    ) -> Result<impl ParameterVisitor<'de, Out = ()>, Refused> {
        let BareItemFromInput::String(name) = bare_item else {
            return Err(Refused);
        };
        if self.0.len() >= MAX_COMPONENTS
            || self.0.iter().any(|seen| seen.as_str() == name.as_str())
            || name.as_str().bytes().any(|b| b.is_ascii_uppercase())
        {
            return Err(Refused);
        }
        self.0.push(name);
        Ok(NoParameters)
    }
}

struct NoParameters;

impl<'de> ParameterVisitor<'de> for NoParameters {
    type Out = ();
    type Error = Refused;

    fn parameter(&mut self, _: &'de KeyRef, _: BareItemFromInput<'de>) -> Result<(), Refused> {
        Err(Refused)
    }

    fn finish(self) -> Result<(), Refused> {
        Ok(())
    }
}

/// The signature's parameters, in order, each name once.
struct SignatureParams<'a, 'de>(&'a mut Vec<(&'de KeyRef, BareItemFromInput<'de>)>);

impl<'de> ParameterVisitor<'de> for SignatureParams<'_, 'de> {
    type Out = ();
    type Error = Refused;

    fn parameter(
        &mut self,
        key: &'de KeyRef,
        value: BareItemFromInput<'de>,
    ) -> Result<(), Refused> {
        if self.0.iter().any(|(seen, _)| *seen == key) {
            return Err(Refused);
        }
        self.0.push((key, value));
        Ok(())
    }

    fn finish(self) -> Result<(), Refused> {
        Ok(())
    }
}

/// `Signature`: the 64-byte value under the `Signature-Input` member's label; other members
/// are not looked at. The label given twice is refused.
struct SignatureVisitor<'de> {
    label: Option<&'de KeyRef>,
    signature: Option<[u8; 64]>,
}

impl<'de> DictionaryVisitor<'de> for SignatureVisitor<'de> {
    type Out = [u8; 64];
    type Error = Refused;

    fn entry(&mut self, key: &'de KeyRef) -> Result<impl EntryVisitor<'de>, Refused> {
        if Some(key) != self.label {
            return Ok(None);
        }
        if self.signature.is_some() {
            return Err(Refused);
        }
        Ok(Some(SignatureValue(&mut self.signature)))
    }

    fn finish(self) -> Result<[u8; 64], Refused> {
        self.signature.ok_or(Refused)
    }
}

struct SignatureValue<'a>(&'a mut Option<[u8; 64]>);

impl<'de> EntryVisitor<'de> for SignatureValue<'_> {
    type Error = Refused;

    fn item(self) -> Result<impl ItemVisitor<'de>, Refused> {
        Ok(self)
    }

    fn inner_list(self) -> Result<impl InnerListVisitor<'de>, Refused> {
        Err::<Ignored, _>(Refused)
    }
}

impl<'de> ItemVisitor<'de> for SignatureValue<'_> {
    type Out = ();
    type Error = Refused;

    fn bare_item(
        self,
        bare_item: BareItemFromInput<'de>,
    ) -> Result<impl ParameterVisitor<'de, Out = ()>, Refused> {
        let BareItemFromInput::ByteSequence(bytes) = bare_item else {
            return Err(Refused);
        };
        *self.0 = Some(<[u8; 64]>::try_from(bytes.as_slice()).map_err(|_| Refused)?);
        // The signature's own parameters carry nothing keyward reads.
        Ok(Ignored)
    }
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
