//! The admin API's OpenAPI document (docs/openapi.json): served on the ops listener as it is
//! in the repository, and the refusals schemathesis exercises answered as it says.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test (or tool) fails loudly

mod common;

use common::{client, Keyward, ADMIN_PASSWORD};
use reqwest::blocking::Response;
use serde_json::Value;

const DOCUMENT: &str = include_str!("../docs/openapi.json");

fn document() -> Value {
    serde_json::from_str(DOCUMENT).unwrap()
}

/// The document lists `status` for `method` on `path` (a path template as in the document).
fn assert_documented(doc: &Value, method: &str, path: &str, status: u16) {
    let responses = &doc["paths"][path][method.to_ascii_lowercase()]["responses"];
    assert!(
        responses.get(status.to_string()).is_some(),
        "{method} {path} answered {status}, which docs/openapi.json does not list"
    );
}

fn json(resp: Response) -> Value {
    let content_type = resp.headers()["content-type"].to_str().unwrap().to_owned();
    assert_eq!(content_type, "application/json");
    resp.json().unwrap()
}

#[test]
fn the_ops_listener_serves_the_document_byte_for_byte() {
    let kw = Keyward::start();
    let resp = client().get(kw.ops_url("/openapi.json")).send().unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/json");
    assert!(resp.headers().contains_key("gateway-request-id"));
    let body = resp.bytes().unwrap();
    assert_eq!(&body[..], DOCUMENT.as_bytes());
    let doc: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");

    let head = client().head(kw.ops_url("/openapi.json")).send().unwrap();
    assert_eq!(head.status(), 200);
    let post = client().post(kw.ops_url("/openapi.json")).send().unwrap();
    assert_eq!(post.status(), 405);
    // The proxy listener does not serve it: the path is the upstream's.
    let before = kw.upstream().requests();
    let proxied = client()
        .get(kw.url("/openapi.json"))
        .basic_auth("admin", Some(ADMIN_PASSWORD))
        .send()
        .unwrap();
    assert_eq!(proxied.status(), 200);
    assert_eq!(kw.upstream().requests(), before + 1);
}

/// What schemathesis met first: a method a path lacks, an oversized body, a path under the
/// token namespaces that names no endpoint. Each answer is documented, in its surface's shape.
#[test]
fn admin_refusals_have_documented_statuses_and_shapes() {
    let kw = Keyward::start();
    let before = kw.upstream().requests();
    let doc = document();
    let admin = |method: &str, path: &str| {
        client()
            .request(method.parse().unwrap(), kw.url(path))
            .basic_auth("admin", Some(ADMIN_PASSWORD))
    };

    // 405 names the methods the path has (RFC 9110 §15.5.6), before any credential is read.
    let resp = client()
        .patch(kw.url("/authentication/v1/user/admin/apikey"))
        .send()
        .unwrap();
    assert_eq!(resp.status(), 405);
    assert_eq!(resp.headers()["allow"], "GET, POST");
    let body = json(resp);
    assert_eq!(body["responseCode"], 405);
    assert_eq!(body["messages"][0]["type"], "ACTION_ERROR");

    let resp = admin("PUT", "/.TOKEN/").send().unwrap();
    assert_eq!(resp.status(), 405);
    assert_eq!(resp.headers()["allow"], "GET, POST");
    let body = json(resp);
    assert_eq!(body["status"], 405);
    assert!(body["request_id"].is_string());
    let resp = admin("GET", "/authentication/v1/user/admin/signature/session")
        .send()
        .unwrap();
    assert_eq!(resp.status(), 405);
    assert_eq!(resp.headers()["allow"], "DELETE");

    // A body over the admin API's 64 KiB is 413, not a generic 400.
    let resp = admin("POST", "/authentication/v1/apikey")
        .header("content-type", "application/json")
        .body(format!(r#"{{"description":"{}"}}"#, "x".repeat(70 * 1024)))
        .send()
        .unwrap();
    assert_eq!(resp.status(), 413);
    assert_documented(&doc, "POST", "/authentication/v1/apikey", 413);
    let body = json(resp);
    assert_eq!(body["responseCode"], 413);
    assert_eq!(body["data"], Value::Null);

    // A miss under /.TOKEN/ or /_admin/ answers in the token API's shape, as its endpoints do;
    // under /authentication/ in the Argus envelope.
    for path in ["/.TOKEN/a/b", "/_admin/manage/tenants/t/other"] {
        let resp = admin("GET", path).send().unwrap();
        assert_eq!(resp.status(), 404, "{path}");
        let body = json(resp);
        assert_eq!(body["status"], 404, "{path}: {body}");
        assert_eq!(body["error"], "not_found");
        assert!(body.get("responseCode").is_none(), "{path}: {body}");
    }
    let resp = admin("GET", "/authentication/v1/nothing").send().unwrap();
    assert_eq!(resp.status(), 404);
    assert_eq!(json(resp)["responseCode"], 404);

    // A valid call, for contrast: the document's success status.
    let resp = admin("GET", "/.TOKEN/?format=json").send().unwrap();
    assert_eq!(resp.status(), 200);
    assert_documented(&doc, "GET", "/.TOKEN/", 200);
    assert_eq!(resp.headers()["castor-object-count"], "0");
    assert_eq!(
        kw.upstream().requests(),
        before,
        "admin paths are never forwarded"
    );
}
