//! ID tokens as the relying party checks them, signed by a real provider (npm's oidc-provider,
//! tests/oidc, whose test route `POST /test/sign` signs any claims with the keys its JWKS
//! serves): another audience, another issuer, an expired token, a wrong nonce, a changed
//! payload and an unsigned token are refused; a rotated key is fetched on its unknown `kid`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails loudly

use keyward_browser::oidc::{Identity, OidcError, Provider};
use keyward_config::OidcSettings;
use openidconnect::Nonce;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const PROVIDER_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/oidc");

struct Running {
    child: Child,
    issuer: String,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(port: u16, keys: &[(&str, &Path)]) -> Running {
    let mut child = Command::new("node")
        .arg(format!("{PROVIDER_DIR}/provider.mjs"))
        .env("OIDC_PORT", port.to_string())
        .env(
            "OIDC_CLIENTS",
            r#"[{"client_id":"keyward","client_secret":"s","redirect_uris":["http://127.0.0.1:1/cb"]}]"#,
        )
        .envs(keys.iter().map(|(k, v)| (*k, v.as_os_str())))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("node (run scripts/prereqs.sh: npm ci in tests/oidc)");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let issuer = line.trim().strip_prefix("LISTENING ").unwrap().to_owned();
    Running { child, issuer }
}

fn relying_party(issuer: &str) -> Provider {
    Provider::new(OidcSettings {
        issuer: issuer.to_owned(),
        client_id: "keyward".into(),
        client_secret: None,
        scopes: vec!["openid".into()],
        username_claim: "preferred_username".into(),
        groups_claim: Some("groups".into()),
        groups: Vec::new(),
        ca_pem: None,
        display_name: "test".into(),
        external: false,
        timeout: Duration::from_secs(5),
    })
    .unwrap()
}

async fn sign(issuer: &str, claims: &Value) -> String {
    reqwest::Client::new()
        .post(format!("{issuer}/test/sign"))
        .json(claims)
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap()
        .text()
        .await
        .unwrap()
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn refused(result: Result<Identity, OidcError>, what: &str) {
    match result {
        Err(OidcError::Refused(_)) => {}
        other => panic!("{what}: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn id_tokens_are_checked_against_the_providers_keys_and_claims() {
    let dir = tempfile::tempdir().unwrap();
    let first_keys = dir.path().join("a.json");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let provider = start(port, &[("OIDC_KEYS_OUT", &first_keys)]);
    let issuer = provider.issuer.clone();
    let rp = relying_party(&issuer);
    let nonce = Nonce::new("n-1".into());
    let good = json!({
        "iss": issuer, "aud": "keyward", "sub": "olga", "preferred_username": "olga",
        "groups": ["secops"], "nonce": "n-1", "iat": now(), "exp": now() + 300,
    });
    let identity = rp
        .verify(&sign(&issuer, &good).await, &nonce)
        .await
        .unwrap();
    assert_eq!(
        identity,
        Identity {
            name: "olga".into(),
            groups: vec!["secops".into()]
        }
    );

    let with = |key: &str, value: Value| {
        let mut claims = good.clone();
        claims[key] = value;
        claims
    };
    for (what, claims) in [
        ("another audience", with("aud", json!("other"))),
        (
            "another audience besides keyward",
            with("aud", json!(["keyward", "other"])),
        ),
        ("another issuer", with("iss", json!("http://127.0.0.1:1"))),
        ("expired", with("exp", json!(now() - 120))),
        ("another nonce", with("nonce", json!("n-2"))),
        ("no name", with("preferred_username", Value::Null)),
        (
            "a name keyward cannot hold",
            with("preferred_username", json!("a\nb")),
        ),
    ] {
        refused(rp.verify(&sign(&issuer, &claims).await, &nonce).await, what);
    }
    // The signature covers the payload: a changed name breaks it.
    let token = sign(&issuer, &good).await;
    let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
    let forged = with("preferred_username", json!("admin"));
    use base64::Engine as _;
    parts[1] = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(forged.to_string());
    refused(
        rp.verify(&parts.join("."), &nonce).await,
        "a changed payload",
    );
    // Unsigned (`alg: none`).
    let header = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#);
    refused(
        rp.verify(&format!("{header}.{}.", parts[1]), &nonce).await,
        "an unsigned token",
    );

    // The provider rotates its key: restarted with a new first key (and the old one); the
    // relying party, which knew only the old key, fetches the keys on the unknown `kid`.
    drop(provider);
    let new_key = dir.path().join("b.json");
    let out = Command::new("node")
        .arg(format!("{PROVIDER_DIR}/provider.mjs"))
        .arg("--new-key")
        .arg(&new_key)
        .output()
        .unwrap();
    assert!(out.status.success());
    let old: Value = serde_json::from_slice(&std::fs::read(&first_keys).unwrap()).unwrap();
    let new: Value = serde_json::from_slice(&std::fs::read(&new_key).unwrap()).unwrap();
    let both = dir.path().join("both.json");
    std::fs::write(&both, json!({ "keys": [new, old["keys"][0]] }).to_string()).unwrap();
    let provider = start(port, &[("OIDC_KEYS", &both)]);
    let rotated = sign(&provider.issuer, &good).await;
    let kid = |token: &str| -> String {
        let header = token.split('.').next().unwrap();
        let header: Value = serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(header)
                .unwrap(),
        )
        .unwrap();
        header["kid"].as_str().unwrap().to_owned()
    };
    assert_eq!(kid(&rotated), new["kid"].as_str().unwrap());
    // Keys are fetched again at most once per KEY_REFRESH_INTERVAL.
    tokio::time::sleep(keyward_browser::oidc::KEY_REFRESH_INTERVAL).await;
    let identity = rp.verify(&rotated, &nonce).await.unwrap();
    assert_eq!(identity.name, "olga");
}
