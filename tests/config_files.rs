//! How the configuration file is read on reload (SPEC §15, issue 20 items 4 and 11), against a
//! real keyward process: a file caught half-written never opens a route, a file still being
//! written is waited for, a FIFO in the file's place is refused without wedging later
//! reloads, and `keyward reload` never signals a process that is not keyward.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test (or tool) fails loudly

mod common;

use common::{client, Keyward, Setup, ADMIN_PASSWORD, BIN};
use nix::sys::signal::Signal;
use serde_json::{json, Value};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const ROUTES: &str = r#"
  - path: /public
    public: true
  - path: /api/admin
    require: { min_security_level: ADMINISTRATIVE }
  - path: /
    require: { min_security_level: EXTERNAL }
"#;

fn until(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if check() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn reloads(kw: &Keyward, outcome: &str) -> u64 {
    let series = format!("keyward_config_reloads_total{{outcome=\"{outcome}\"}} ");
    kw.metrics()
        .lines()
        .find_map(|line| line.strip_prefix(series.as_str())?.parse().ok())
        .unwrap_or(0)
}

/// keyward with the routes above and an EXTERNAL user's API key.
fn start_with_external_key() -> (Keyward, String) {
    let kw = Keyward::start_with(Setup {
        routes: ROUTES.into(),
        ..Setup::default()
    });
    kw.add_user(
        "ext",
        "ext-password-1",
        &["--external", "--customer", "7", "--function", "CASE-RO"],
    );
    let created = client()
        .post(kw.url("/authentication/v1/user/ext/apikey"))
        .basic_auth("admin", Some(ADMIN_PASSWORD))
        .header("content-type", "application/json")
        .body(json!({ "description": "customer key" }).to_string())
        .send()
        .unwrap();
    assert_eq!(created.status(), 201);
    let key = created.json::<Value>().unwrap()["data"]["apiKeyString"]
        .as_str()
        .unwrap()
        .to_owned();
    (kw, key)
}

fn status_with_key(kw: &Keyward, path: &str, key: &str) -> u16 {
    client()
        .get(kw.url(path))
        .header("Argus-API-Key", key)
        .send()
        .unwrap()
        .status()
        .as_u16()
}

/// The file cut right after `- path: /api/admin` (what a reload may catch of a file being
/// written in place). Before SPEC §15 the route had no `require`, which meant EXTERNAL: the
/// customer's key went from 403 to 200. Now the reload is refused, naming the route.
#[test]
fn a_file_cut_after_a_route_path_refuses_the_reload_and_keeps_the_route_closed() {
    let (kw, key) = start_with_external_key();
    assert_eq!(status_with_key(&kw, "/api/admin", &key), 403);
    assert_eq!(status_with_key(&kw, "/anything", &key), 200);
    let full = std::fs::read_to_string(&kw.config_path).unwrap();
    let cut = full.find("- path: /api/admin\n").unwrap() + "- path: /api/admin\n".len();
    std::fs::write(&kw.config_path, &full[..cut]).unwrap();
    // Old enough that the reload reads it at once (it is not "being written" any more).
    std::thread::sleep(Duration::from_millis(400));
    kw.signal(Signal::SIGHUP);
    assert!(
        until(Duration::from_secs(5), || reloads(&kw, "invalid") == 1),
        "the cut file is refused:\n{}",
        kw.stderr()
    );
    assert_eq!(reloads(&kw, "ok"), 0);
    assert_eq!(
        status_with_key(&kw, "/api/admin", &key),
        403,
        "the EXTERNAL key stays out of /api/admin"
    );
    let log = kw.stderr();
    assert!(log.contains("routes[1]"), "{log}");
}

/// A reload that arrives while the file is being written (the first half on disk, the rest
/// 100 ms later) waits until the file has settled and applies the whole of it.
#[test]
fn a_reload_waits_for_a_file_still_being_written() {
    let (kw, key) = start_with_external_key();
    let full = std::fs::read_to_string(&kw.config_path).unwrap();
    let next = full.replacen("routes:", "routes:\n  - path: /open\n    public: true", 1);
    let cut = next.find("- path: /api/admin\n").unwrap() + "- path: /api/admin\n".len();
    std::fs::write(&kw.config_path, &next[..cut]).unwrap();
    kw.signal(Signal::SIGHUP);
    std::thread::sleep(Duration::from_millis(100));
    std::fs::write(&kw.config_path, &next).unwrap();
    assert!(
        until(Duration::from_secs(5), || reloads(&kw, "ok") == 1),
        "the whole file is applied:\n{}",
        kw.stderr()
    );
    assert_eq!(reloads(&kw, "invalid"), 0, "the half file was never read");
    assert_eq!(client().get(kw.url("/open")).send().unwrap().status(), 200);
    assert_eq!(status_with_key(&kw, "/api/admin", &key), 403);
}

/// A FIFO where the file was: the reload is refused at once (naming the path), and a later
/// reload of a regular file applies. Before, the read blocked for ever, and every SIGHUP
/// after it waited behind it.
#[test]
fn a_fifo_in_place_of_the_file_is_refused_and_later_reloads_still_work() {
    let kw = Keyward::start();
    let valid = std::fs::read_to_string(&kw.config_path).unwrap();
    std::fs::remove_file(&kw.config_path).unwrap();
    let made = Command::new("mkfifo")
        .arg(&kw.config_path)
        .status()
        .unwrap();
    assert!(made.success());
    kw.signal(Signal::SIGHUP);
    assert!(
        until(Duration::from_secs(5), || reloads(&kw, "invalid") == 1),
        "the FIFO is refused:\n{}",
        kw.stderr()
    );
    let log = kw.stderr();
    assert!(log.contains("not a regular file"), "{log}");

    std::fs::remove_file(&kw.config_path).unwrap();
    let opened = valid.replacen("routes:", "routes:\n  - path: /open\n    public: true", 1);
    std::fs::write(&kw.config_path, opened).unwrap();
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(client().get(kw.url("/open")).send().unwrap().status(), 401);
    kw.signal(Signal::SIGHUP);
    assert!(
        until(Duration::from_secs(5), || client()
            .get(kw.url("/open"))
            .send()
            .unwrap()
            .status()
            == 200),
        "a later reload applies:\n{}",
        kw.stderr()
    );
}

/// A stale pid file naming another process whose command line says "keyward"
/// (`tail -f keyward.log`): `keyward reload` refuses, says what the process runs, and the
/// process is not signalled (SIGHUP would have ended it).
#[test]
fn keyward_reload_refuses_a_pid_file_naming_another_program() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("keyward.log");
    std::fs::write(&log, "").unwrap();
    let mut tail = Command::new("tail")
        .arg("-f")
        .arg(&log)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let pid_file = dir.path().join("keyward.pid");
    std::fs::write(&pid_file, format!("{}\n", tail.id())).unwrap();
    let config = dir.path().join("keyward.yaml");
    std::fs::write(
        &config,
        format!(
            "listen: {{ proxy: 127.0.0.1:1, ops: 127.0.0.1:2 }}\n\
             upstream: {{ address: 127.0.0.1:3 }}\n\
             store: {{ url: sqlite://{} }}\n\
             server: {{ pid_file: {} }}\n\
             routes:\n  - path: /\n    require: {{ min_security_level: EXTERNAL }}\n",
            dir.path().join("k.db").display(),
            pid_file.display()
        ),
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["reload", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let alive = tail.try_wait().unwrap().is_none();
    let _ = tail.kill();
    let _ = tail.wait();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{out:?}");
    assert!(alive, "tail was signalled: {out:?}");
    assert!(stderr.contains("not a running keyward"), "{stderr}");
    assert!(stderr.contains("tail"), "names what it runs: {stderr}");
}
