//! The signature base (RFC 9421 §2.5): the covered components of a request, serialised as
//! the signer signed them; and signing, as `keyward sign` does.

use super::parse::{single_header, REQUIRED_COMPONENTS};
use base64::Engine as _;
use keyward_core::SignatureError;
use pingora::http::RequestHeader;
use sha2::{Digest, Sha256};

/// The parts of a request a signature can cover.
pub struct RequestView<'a> {
    pub header: &'a RequestHeader,
    pub body: Option<&'a [u8]>,
    pub tls: bool,
}

/// Appends `@authority`: the host, lower-cased, without the scheme's default port.
fn push_authority(view: &RequestView<'_>, base: &mut String) -> Result<(), SignatureError> {
    let raw = match view.header.uri.authority() {
        Some(authority) => authority.as_str(),
        None => single_header(view.header, "host")?,
    };
    let raw = raw.trim();
    let default_port = if view.tls { ":443" } else { ":80" };
    let start = base.len();
    base.push_str(raw.strip_suffix(default_port).unwrap_or(raw));
    base[start..].make_ascii_lowercase();
    Ok(())
}

/// Appends the value of one covered component (RFC 9421 §2.1, §2.2).
fn push_component(
    view: &RequestView<'_>,
    name: &str,
    base: &mut String,
) -> Result<(), SignatureError> {
    let uri = &view.header.uri;
    let path = match uri.path() {
        "" => "/",
        path => path,
    };
    let scheme = if view.tls { "https" } else { "http" };
    match name {
        "@method" => base.push_str(view.header.method.as_str()),
        "@authority" => push_authority(view, base)?,
        "@path" => base.push_str(path),
        "@query" => {
            base.push('?');
            base.push_str(uri.query().unwrap_or(""));
        }
        "@scheme" => base.push_str(scheme),
        "@target-uri" => {
            base.push_str(scheme);
            base.push_str("://");
            push_authority(view, base)?;
            base.push_str(path);
            if let Some(query) = uri.query() {
                base.push('?');
                base.push_str(query);
            }
        }
        "@request-target" => {
            base.push_str(path);
            if let Some(query) = uri.query() {
                base.push('?');
                base.push_str(query);
            }
        }
        derived if derived.starts_with('@') => return Err(SignatureError::Malformed),
        field => {
            let mut values = view.header.headers.get_all(field).iter().peekable();
            if values.peek().is_none() {
                return Err(SignatureError::MissingComponent);
            }
            for (i, value) in values.enumerate() {
                if i > 0 {
                    base.push_str(", ");
                }
                let text = value.to_str().map_err(|_| SignatureError::Malformed)?;
                base.push_str(text.trim());
            }
        }
    }
    Ok(())
}

/// The signature base (RFC 9421 §2.5), written into one string.
pub fn signature_base(
    view: &RequestView<'_>,
    components: &[impl AsRef<str>],
    params: &str,
) -> Result<String, SignatureError> {
    let mut base = String::with_capacity(256 + params.len());
    for name in components {
        let name = name.as_ref();
        base.push('"');
        base.push_str(name);
        base.push_str("\": ");
        let start = base.len();
        push_component(view, name, &mut base)?;
        if base[start..].contains('\n') {
            return Err(SignatureError::Malformed);
        }
        base.push('\n');
    }
    base.push_str("\"@signature-params\": ");
    base.push_str(params);
    Ok(base)
}

/// Signs a request the way `keyward sign` does: covers `@method`, `@authority`, `@path`,
/// `@query` and, with a body, `content-digest` (sha-256). Returns the headers to add.
pub fn sign(
    signing_key: &ed25519_dalek::SigningKey,
    keyid: &str,
    method: &str,
    url: &http::Uri,
    body: Option<&[u8]>,
    created: i64,
    nonce: &str,
) -> Result<Vec<(&'static str, String)>, String> {
    use ed25519_dalek::Signer;
    let mut header = RequestHeader::build(
        method,
        url.path_and_query()
            .map_or(b"/".as_slice(), |p| p.as_str().as_bytes()),
        None,
    )
    .map_err(|e| format!("bad request line: {e}"))?;
    let host = url
        .authority()
        .ok_or("the URL needs a host")?
        .as_str()
        .to_owned();
    header
        .insert_header("host", host)
        .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    let mut components: Vec<String> = REQUIRED_COMPONENTS.iter().map(|c| c.to_string()).collect();
    if let Some(body) = body.filter(|b| !b.is_empty()) {
        let digest = format!(
            "sha-256=:{}:",
            base64::engine::general_purpose::STANDARD.encode(Sha256::digest(body))
        );
        header
            .insert_header("content-digest", digest.clone())
            .map_err(|e| e.to_string())?;
        out.push(("Content-Digest", digest));
        components.push("content-digest".into());
    }
    let quoted: Vec<String> = components.iter().map(|c| format!("\"{c}\"")).collect();
    let params = format!(
        "({});created={created};nonce=\"{nonce}\";alg=\"ed25519\";keyid=\"{keyid}\"",
        quoted.join(" ")
    );
    let view = RequestView {
        header: &header,
        body,
        tls: url.scheme_str() == Some("https"),
    };
    let base = signature_base(&view, &components, &params).map_err(|e| e.to_string())?;
    let signature = signing_key.sign(base.as_bytes());
    out.push(("Signature-Input", format!("sig1={params}")));
    out.push((
        "Signature",
        format!(
            "sig1=:{}:",
            base64::engine::general_purpose::STANDARD.encode(signature.to_bytes())
        ),
    ));
    Ok(out)
}
