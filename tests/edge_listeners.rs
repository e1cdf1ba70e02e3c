//! The admin listener (`listen.admin`) and live reload (`SIGHUP`, `keyward reload`,
//! `KEYWARD_CONFIG`), against a real keyward process.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test (or tool) fails loudly

mod common;

use common::{client, raw_request, Keyward, Setup, ADMIN_PASSWORD, BIN};
use nix::sys::signal::Signal;
use serde_json::{json, Value};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn create_key(base: &str) -> reqwest::blocking::Response {
    client()
        .post(format!("{base}/authentication/v1/user/admin/apikey"))
        .basic_auth("admin", Some(ADMIN_PASSWORD))
        .header("content-type", "application/json")
        .body(json!({ "description": "edge" }).to_string())
        .send()
        .unwrap()
}

/// With `listen.admin`, the admin API answers there only; the proxy listener answers admin
/// paths 404 and forwards nothing, and the admin listener forwards nothing either.
#[test]
fn the_admin_api_moves_to_its_own_listener() {
    let kw = Keyward::start_with(Setup {
        admin_listener: true,
        ..Setup::default()
    });
    let admin = format!("http://{}", kw.admin.unwrap());
    let created = create_key(&admin);
    assert_eq!(created.status(), 201);
    let key = created.json::<Value>().unwrap()["data"]["apiKeyString"]
        .as_str()
        .unwrap()
        .to_owned();
    let before = kw.upstream().requests();

    // The proxy listener: admin paths are not there, however they are spelled.
    assert_eq!(create_key(&kw.url("")).status(), 404);
    for path in [
        "/authentication/v1/apikey",
        "/authentication//v1/apikey",
        "/authentication/v1/./apikey",
        "/.TOKEN/",
        "/_admin/manage/tenants/t/tokens",
    ] {
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: x\r\nArgus-API-Key: {key}\r\nConnection: close\r\n\r\n"
        );
        let response = raw_request(kw.proxy, request.as_bytes());
        assert_eq!(response.status, 404, "{path}");
    }
    // The admin listener: nothing but the admin API, nothing forwarded.
    let other = client()
        .get(format!("{admin}/private"))
        .header("Argus-API-Key", &key)
        .send()
        .unwrap();
    assert_eq!(other.status(), 404);
    assert_eq!(kw.upstream().requests(), before, "nothing was forwarded");

    // The key made on the admin listener works on the proxy listener.
    let proxied = client()
        .get(kw.url("/private"))
        .header("Argus-API-Key", &key)
        .send()
        .unwrap();
    assert_eq!(proxied.status(), 200);
    let listed = client()
        .get(format!("{admin}/authentication/v1/apikey"))
        .header("Argus-API-Key", &key)
        .send()
        .unwrap();
    assert_eq!(listed.status(), 200);
}

/// Without `listen.admin`, the proxy listener serves the admin API as before.
#[test]
fn without_an_admin_listener_the_proxy_serves_the_admin_api() {
    let kw = Keyward::start();
    assert!(kw.admin.is_none());
    assert_eq!(create_key(&kw.url("")).status(), 201);
}

fn rewrite_config(kw: &Keyward, change: impl FnOnce(String) -> String) {
    let text = std::fs::read_to_string(&kw.config_path).unwrap();
    let changed = change(text.clone());
    assert_ne!(changed, text, "the test changes the file");
    std::fs::write(&kw.config_path, changed).unwrap();
}

fn status(kw: &Keyward, path: &str) -> u16 {
    client().get(kw.url(path)).send().unwrap().status().as_u16()
}

fn until(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

const OPEN_ROUTE: &str = "routes:\n  - path: /open\n    public: true";

/// `SIGHUP` switches routes for new requests without a restart, while requests keep flowing;
/// none of them fails.
#[test]
fn sighup_reloads_routes_under_load() {
    let kw = Keyward::start();
    assert_eq!(status(&kw, "/open"), 401, "not public before the reload");
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicUsize::new(0));
    let served = Arc::new(AtomicUsize::new(0));
    let loaders: Vec<_> = (0..4)
        .map(|_| {
            let (stop, failures, served) = (stop.clone(), failures.clone(), served.clone());
            let url = kw.url("/public");
            std::thread::spawn(move || {
                let client = client();
                while !stop.load(Ordering::Relaxed) {
                    match client.get(&url).send() {
                        Ok(r) if r.status() == 200 => served.fetch_add(1, Ordering::Relaxed),
                        _ => failures.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    rewrite_config(&kw, |text| text.replacen("routes:", OPEN_ROUTE, 1));
    kw.signal(Signal::SIGHUP);
    assert!(
        until(Duration::from_secs(5), || status(&kw, "/open") == 200),
        "the new route applies:\n{}",
        kw.stderr()
    );
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::Relaxed);
    for loader in loaders {
        loader.join().unwrap();
    }
    assert_eq!(failures.load(Ordering::Relaxed), 0, "no request failed");
    assert!(served.load(Ordering::Relaxed) > 10);
    assert!(kw
        .metrics()
        .contains("keyward_config_reloads_total{outcome=\"ok\"} 1"));
    assert!(kw.stderr().contains("configuration reloaded"));
}

/// An invalid file changes nothing: every problem is logged, the failure counted, and the
/// running configuration keeps serving. A later valid file applies.
#[test]
fn an_invalid_reload_keeps_the_running_configuration() {
    let mut kw = Keyward::start();
    rewrite_config(&kw, |text| text.replacen("routes:", OPEN_ROUTE, 1));
    kw.signal(Signal::SIGHUP);
    assert!(until(Duration::from_secs(5), || status(&kw, "/open") == 200));

    let valid = std::fs::read_to_string(&kw.config_path).unwrap();
    rewrite_config(&kw, |text| {
        text.replacen("public: true", "public: true\n    colour: red", 1)
    });
    kw.signal(Signal::SIGHUP);
    assert!(until(Duration::from_secs(5), || kw.metrics().contains(
        "keyward_config_reloads_total{outcome=\"invalid\"} 1"
    )));
    let log = kw.stderr();
    assert!(log.contains("routes[0].colour"), "{log}");
    assert!(log.contains("still running on the previous one"), "{log}");
    assert_eq!(status(&kw, "/open"), 200, "the running routes still apply");
    assert!(kw.child.try_wait().unwrap().is_none(), "still running");

    // `keyward reload` refuses the invalid file itself, without signalling.
    let refused = kw.cli(&["reload"], None);
    assert_eq!(refused.status.code(), Some(2), "{refused:?}");
    std::fs::write(&kw.config_path, valid.replacen("/open", "/opened", 1)).unwrap();
    let accepted = kw.cli(&["reload"], None);
    assert!(accepted.status.success(), "{accepted:?}");
    assert!(until(Duration::from_secs(5), || status(&kw, "/opened") == 200));
    assert_eq!(status(&kw, "/open"), 401);
}

/// Settings that need a restart keep their running value and are named in the log.
#[test]
fn a_reload_names_what_needs_a_restart() {
    let kw = Keyward::start();
    let ops = kw.ops.to_string();
    rewrite_config(&kw, |text| {
        text.replacen(&ops, "127.0.0.1:1", 1)
            .replacen("routes:", OPEN_ROUTE, 1)
    });
    kw.signal(Signal::SIGHUP);
    assert!(until(Duration::from_secs(5), || status(&kw, "/open") == 200));
    let log = kw.stderr();
    assert!(
        log.contains("needs_restart") && log.contains("listen.ops"),
        "{log}"
    );
    assert!(
        kw.metrics().contains("keyward_config_reloads_total"),
        "ops listener unchanged"
    );
}

/// `KEYWARD_CONFIG` names the file when `--config` is absent.
#[test]
fn keyward_config_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    std::fs::write(&path, "listen: nope\n").unwrap();
    let out = Command::new(BIN)
        .arg("check-config")
        .env("KEYWARD_CONFIG", &path)
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("listen"));
}
