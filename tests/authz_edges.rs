//! Real edges in front of a real upstream, asking keyward's `listen.authz` (SPEC §13): nginx
//! (`auth_request`, Debian's nginx-light) and Caddy (`forward_auth`), each run with the very
//! configuration the book shows (`docs/src/authz/`), started by the test on loopback ports.
//! `scripts/prereqs.sh` installs both.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test (or tool) fails loudly

mod common;

use common::{client, free_port, raw_request, Keyward, Setup, ADMIN_PASSWORD};
use ed25519_dalek::SigningKey;
use keyward::auth::signature::sign;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const ROUTES: &str = r#"
  - path: /public
    public: true
  - path: /admin
    require: { min_security_level: ADMINISTRATIVE }
  - path: /
    require: { min_security_level: EXTERNAL }
"#;

/// The book's configuration with this test's addresses.
fn documented(file: &str, edge: SocketAddr, kw: &Keyward) -> String {
    let text = std::fs::read_to_string(Path::new("docs/src/authz").join(file)).unwrap();
    assert!(text.contains("127.0.0.1:8082") && text.contains("127.0.0.1:3000"));
    text.replace("127.0.0.1:8082", &kw.authz.unwrap().to_string())
        .replace("127.0.0.1:3000", &kw.upstream().addr.to_string())
        .replace("127.0.0.1:8080", &edge.to_string())
}

/// An edge process, stopped with the test.
struct Edge {
    child: Child,
    addr: SocketAddr,
    dir: tempfile::TempDir,
    log: &'static str,
}

impl Drop for Edge {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Edge {
    fn wait_listening(self) -> Edge {
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(self.addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "edge not listening: {}",
                std::fs::read_to_string(self.dir.path().join(self.log)).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        self
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn nginx(kw: &Keyward) -> Edge {
        let dir = tempfile::tempdir().unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let d = dir.path().display();
        std::fs::write(
            dir.path().join("server.conf"),
            documented("nginx.conf", addr, kw),
        )
        .unwrap();
        let main = format!(
            "daemon off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
             events {{ worker_connections 256; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
               fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
               include {d}/server.conf;\n}}\n"
        );
        std::fs::write(dir.path().join("nginx.conf"), main).unwrap();
        let child = Command::new(which("nginx"))
            .args(["-e", &format!("{d}/error.log"), "-p", &d.to_string(), "-c"])
            .arg(dir.path().join("nginx.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nginx (scripts/prereqs.sh installs nginx-light)");
        Edge {
            child,
            addr,
            dir,
            log: "error.log",
        }
        .wait_listening()
    }

    fn caddy(kw: &Keyward) -> Edge {
        let dir = tempfile::tempdir().unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let site = documented("Caddyfile", addr, kw);
        let file = format!("{{\n\tadmin off\n\tauto_https off\n}}\n{site}");
        std::fs::write(dir.path().join("Caddyfile"), file).unwrap();
        let log = std::fs::File::create(dir.path().join("caddy.log")).unwrap();
        let child = Command::new(which("caddy"))
            .args(["run", "--adapter", "caddyfile", "--config"])
            .arg(dir.path().join("Caddyfile"))
            .env("HOME", dir.path())
            .env("XDG_DATA_HOME", dir.path())
            .env("XDG_CONFIG_HOME", dir.path())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("caddy (scripts/prereqs.sh installs it)");
        Edge {
            child,
            addr,
            dir,
            log: "caddy.log",
        }
        .wait_listening()
    }
}

fn which(tool: &str) -> String {
    for dir in ["/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"] {
        let path = format!("{dir}/{tool}");
        if Path::new(&path).exists() {
            return path;
        }
    }
    panic!("{tool} is not installed: run scripts/prereqs.sh");
}

fn start() -> Keyward {
    let kw = Keyward::start_with(Setup {
        routes: ROUTES.into(),
        extra: "external_authz:\n  trusted_callers: [127.0.0.1/32]\n".into(),
        authz_listener: true,
        ..Setup::default()
    });
    kw.add_user("john", "john-password", &[]);
    kw
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// What every edge must do, whatever its convention: `limited_status` is how it answers a
/// rate-limited key (nginx 403, Caddy 429).
fn the_edge_holds(kw: &Keyward, edge: &Edge, limited_status: u16) {
    let forwarded = || kw.upstream().requests();
    let key = kw.create_api_key("john", json!({"description": "ci"}));

    // No credential: 401 with the challenge, nothing proxied.
    let before = forwarded();
    let resp = client().get(edge.url("/x")).send().unwrap();
    assert_eq!(resp.status(), 401);
    assert!(resp.headers().get("www-authenticate").is_some());
    assert_eq!(forwarded(), before, "nothing proxied");

    // API key, token cookie, Basic: the identity reaches the upstream, the client's own
    // X-Keyward-* headers never do.
    let resp = client()
        .get(edge.url("/x"))
        .header("Argus-API-Key", &key)
        .header("X-Keyward-User", "mallory")
        .header("X-Keyward-Security-Level", "ADMINISTRATIVE")
        .send()
        .unwrap();
    let echo = identity(resp, "APIKEY");
    assert_eq!(
        echo["headers"]["x-keyward-security-level"],
        json!(["DEFAULT"])
    );
    let minted = client()
        .post(kw.url("/.TOKEN/"))
        .basic_auth("john", Some("john-password"))
        .send()
        .unwrap();
    let cookie = minted.headers()["set-cookie"].to_str().unwrap().to_owned();
    let token = cookie.split(';').next().unwrap().to_owned();
    let resp = client()
        .get(edge.url("/x"))
        .header("Cookie", &token)
        .send()
        .unwrap();
    identity(resp, "TOKEN");
    let resp = client()
        .get(edge.url("/x"))
        .basic_auth("john", Some("john-password"))
        .header("X-Keyward-User", "mallory")
        .send()
        .unwrap();
    identity(resp, "PASSWORD");
    // Anonymous on a public route: no identity at all, the client's included.
    let resp = client()
        .get(edge.url("/public/x"))
        .header("X-Keyward-User", "mallory")
        .header("X-Keyward-Functions", "POWER-USER")
        .header("Gateway-Request-Id", "forged")
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
    let echo: Value = resp.json().unwrap();
    for name in ["x-keyward-user", "x-keyward-functions"] {
        let value = &echo["headers"][name];
        assert!(
            value.is_null() || value == &json!([""]),
            "{name} reached the upstream: {echo}"
        );
    }
    assert_ne!(echo["headers"]["gateway-request-id"], json!(["forged"]));
    // Nor in an underscore spelling, which CGI and WSGI applications read as the same header.
    let request = format!(
        "GET /public/x HTTP/1.1\r\nHost: {}\r\nX_Keyward_User: mallory\r\n\
         x_keyward_functions: POWER-USER\r\nGateway_Request_Id: forged\r\nConnection: close\r\n\r\n",
        edge.addr
    );
    let resp = raw_request(edge.addr, request.as_bytes());
    assert_eq!(resp.status, 200, "{resp:?}");
    let echo: Value = resp.json();
    for (name, value) in echo["headers"].as_object().unwrap() {
        let folded = name.to_ascii_lowercase().replace('_', "-");
        let keyward = folded.starts_with("x-keyward-") || folded == "gateway-request-id";
        assert!(
            !keyward || !name.contains('_'),
            "{name} reached the upstream: {echo}"
        );
        assert!(
            !["mallory", "POWER-USER", "forged"].contains(&value[0].as_str().unwrap_or("")),
            "{name}: {echo}"
        );
    }

    // A DEFAULT key on every spelling of an admin-only path: 403, nothing proxied.
    let before = forwarded();
    for target in [
        "/admin",
        "/%61dmin",
        "//admin",
        "/./admin",
        "/x/../admin",
        "/admin;x",
        "/%61dmin/x",
    ] {
        let request = format!(
            "GET {target} HTTP/1.1\r\nHost: {}\r\nArgus-API-Key: {key}\r\nConnection: close\r\n\r\n",
            edge.addr
        );
        let resp = raw_request(edge.addr, request.as_bytes());
        // nginx may refuse a path it cannot map itself (400) before asking: never a pass.
        assert!(
            resp.status == 403 || resp.status == 400,
            "{target}: {resp:?}"
        );
    }
    assert_eq!(forwarded(), before, "an admin path was proxied");

    // A revoked key is refused at once.
    let revocable = kw.create_api_key("john", json!({"description": "revocable"}));
    let get = |key: &str| {
        client()
            .get(edge.url("/x"))
            .header("Argus-API-Key", key)
            .send()
            .unwrap()
            .status()
    };
    assert_eq!(get(&revocable), 200);
    let prefix = revocable.rsplit_once('/').unwrap().0;
    let revoked = client()
        .delete(kw.url(&format!("/authentication/v1/user/john/apikey/{prefix}")))
        .basic_auth("admin", Some(ADMIN_PASSWORD))
        .send()
        .unwrap();
    assert_eq!(revoked.status(), 200);
    assert_eq!(get(&revocable), 401);

    // A rate-limited key.
    let slow = kw.create_api_key(
        "john",
        json!({"description": "slow", "rateLimit": {"requestsPerSecond": 0.001, "burst": 1}}),
    );
    assert_eq!(get(&slow), 200);
    let before = forwarded();
    assert_eq!(get(&slow), limited_status);
    assert_eq!(forwarded(), before);
}

/// The upstream's echo of an allowed request as john, by `method`.
fn identity(resp: reqwest::blocking::Response, method: &str) -> Value {
    assert_eq!(resp.status(), 200);
    let echo: Value = resp.json().unwrap();
    assert_eq!(echo["headers"]["x-keyward-user"], json!(["john"]), "{echo}");
    assert_eq!(
        echo["headers"]["x-keyward-auth-method"],
        json!([method]),
        "{echo}"
    );
    assert_eq!(
        echo["headers"]["gateway-request-id"][0]
            .as_str()
            .map(str::len),
        Some(16),
        "{echo}"
    );
    echo
}

/// A signed POST through the edge: `Ok(echo)` or the refusal's status and reason.
fn signed_post(kw: &Keyward, edge: &Edge, body: &[u8]) -> (u16, Value) {
    use base64::Engine as _;
    let key = SigningKey::from_bytes(&[9; 32]);
    let public = base64::engine::general_purpose::STANDARD.encode(key.verifying_key().to_bytes());
    let resp = client()
        .post(kw.url("/authentication/v1/user/john/signature"))
        .basic_auth("admin", Some(ADMIN_PASSWORD))
        .body(json!({"publicKey": public, "description": "edge"}).to_string())
        .send()
        .unwrap();
    let id = resp.json::<Value>().unwrap()["data"]["keyID"]
        .as_i64()
        .unwrap();
    let url = edge.url("/upload");
    let headers = sign(
        &key,
        &format!("john/{id}"),
        "POST",
        &url.parse().unwrap(),
        Some(body),
        now(),
        &format!("edge-{}", now()),
    )
    .unwrap();
    let mut request = client().post(url).body(body.to_vec());
    for (name, value) in headers {
        request = request.header(name, value);
    }
    let resp = request.send().unwrap();
    let status = resp.status().as_u16();
    let reason = resp
        .headers()
        .get("x-keyward-reason")
        .map(|v| json!(v.to_str().unwrap()));
    let body: Value = resp.json().unwrap_or(Value::Null);
    (status, reason.unwrap_or(body))
}

#[test]
fn nginx_auth_request_with_the_documented_configuration() {
    let kw = start();
    let edge = Edge::nginx(&kw);
    the_edge_holds(&kw, &edge, 403);
    // nginx sends no body with its question: a signed body cannot be checked.
    let before = kw.upstream().requests();
    let (status, reason) = signed_post(&kw, &edge, br#"{"case": 1}"#);
    assert_eq!(status, 403, "{reason}");
    assert_eq!(kw.upstream().requests(), before);
}

#[test]
fn caddy_forward_auth_with_the_documented_configuration() {
    let kw = start();
    let edge = Edge::caddy(&kw);
    the_edge_holds(&kw, &edge, 429);
    // Caddy sends no body with its question either.
    let before = kw.upstream().requests();
    let (status, reason) = signed_post(&kw, &edge, br#"{"case": 1}"#);
    assert_eq!(status, 403, "{reason}");
    assert_eq!(reason, json!("body_not_forwarded"), "{reason}");
    assert_eq!(kw.upstream().requests(), before);
}
