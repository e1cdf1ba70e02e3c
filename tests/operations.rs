//! What an operator does on day one, and what used to go wrong: a port in use, two listeners
//! on one port, a store URL only `serve` refused, a CLI command on another store than the
//! server's, readiness through a graceful shutdown, and store errors that repeat themselves.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test (or tool) fails loudly

mod common;

use common::{cli, client, free_port, spawn_serve, Keyward, Setup, BIN};
use std::process::Command;
use std::time::{Duration, Instant};

fn config_with(dir: &std::path::Path, proxy: &str, ops: &str, store: &str) -> std::path::PathBuf {
    let path = dir.join("keyward.yaml");
    std::fs::write(
        &path,
        format!(
            r#"
listen: {{ proxy: "{proxy}", ops: "{ops}" }}
upstream: {{ address: 127.0.0.1:9 }}
store: {{ url: "{store}" }}
server: {{ pid_file: {pid} }}
routes:
  - path: /
    require: {{ min_security_level: EXTERNAL }}
"#,
            pid = dir.join("keyward.pid").display()
        ),
    )
    .unwrap();
    path
}

fn stderr_of(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn a_port_in_use_stops_keyward_at_once_naming_the_listener() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_address = taken.local_addr().unwrap().to_string();
    let store = format!("sqlite://{}", dir.path().join("k.db").display());
    for (proxy, ops, key) in [
        (
            taken_address.clone(),
            format!("127.0.0.1:{}", free_port()),
            "listen.proxy",
        ),
        (
            format!("127.0.0.1:{}", free_port()),
            taken_address.clone(),
            "listen.ops",
        ),
    ] {
        let config = config_with(dir.path(), &proxy, &ops, &store);
        let started = Instant::now();
        let mut child = spawn_serve(&config, dir.path(), None);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "keyward kept running with {key} in use"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(!status.success());
        let log = std::fs::read_to_string(dir.path().join("stderr.log")).unwrap();
        assert!(log.contains(key) && log.contains("already in use"), "{log}");
        assert!(log.contains(&taken_address), "{log}");
    }
}

#[test]
fn check_config_refuses_what_serve_would_refuse() {
    let dir = tempfile::tempdir().unwrap();
    let store = format!("sqlite://{}", dir.path().join("k.db").display());
    // Two listeners on one port.
    let config = config_with(dir.path(), "127.0.0.1:18555", "127.0.0.1:18555", &store);
    let out = cli(&config, &["check-config"], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr_of(&out).contains("listen.ops"),
        "{}",
        stderr_of(&out)
    );
    let config = config_with(dir.path(), "0.0.0.0:18556", "127.0.0.1:18556", &store);
    assert_eq!(cli(&config, &["check-config"], None).status.code(), Some(2));

    // Store URLs `serve` could not use.
    std::fs::create_dir(dir.path().join("data")).unwrap();
    std::fs::write(dir.path().join("plain-file"), "x").unwrap();
    for url in [
        "sqlite://:memory:".to_owned(),
        format!("sqlite://{}?mode=ro", dir.path().join("k.db").display()),
        format!("sqlite://{}/", dir.path().join("data").display()),
        format!("sqlite://{}", dir.path().join("data").display()),
        format!("sqlite://{}", dir.path().join("plain-file/k.db").display()),
    ] {
        let config = config_with(dir.path(), "127.0.0.1:18557", "127.0.0.1:18558", &url);
        let out = cli(&config, &["check-config"], None);
        assert_eq!(out.status.code(), Some(2), "{url} was accepted");
        assert!(
            stderr_of(&out).contains("store.url"),
            "{url}: {}",
            stderr_of(&out)
        );
    }
}

#[test]
fn cli_commands_say_which_store_they_use() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("k.db");
    let store = format!("sqlite://{}", db.display());
    let config = config_with(dir.path(), "127.0.0.1:18559", "127.0.0.1:18560", &store);
    let out = cli(
        &config,
        &["user", "add", "bob", "--password-stdin"],
        Some("bob-password-1\n"),
    );
    assert!(out.status.success(), "{}", stderr_of(&out));
    let said = stderr_of(&out);
    assert!(
        said.contains(&format!("creating a new store {store}")),
        "{said}"
    );
    assert!(said.contains(&config.display().to_string()), "{said}");
    let out = cli(&config, &["user", "list"], None);
    let said = stderr_of(&out);
    assert!(said.contains(&format!("using store {store}")), "{said}");

    // KEYWARD_CONFIG names the file when --config is absent, as for `serve`.
    let out = Command::new(BIN)
        .args(["user", "list"])
        .env("KEYWARD_CONFIG", &config)
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("bob"));
}

#[test]
fn a_store_error_names_the_store_and_says_it_once() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("k.db");
    std::fs::write(&db, vec![b'x'; 8192]).unwrap();
    let store = format!("sqlite://{}", db.display());
    let config = config_with(dir.path(), "127.0.0.1:18561", "127.0.0.1:18562", &store);
    let out = cli(&config, &["user", "list"], None);
    assert!(!out.status.success());
    let said = stderr_of(&out);
    let line = said
        .lines()
        .find(|l| l.contains("cannot open the store"))
        .unwrap_or_else(|| panic!("{said}"));
    assert!(line.contains(&store), "{line}");
    assert_eq!(line.matches("not a database").count(), 1, "{line}");
}

#[test]
fn readyz_says_503_while_a_shutdown_drains() {
    let kw = Keyward::start_with(Setup {
        routes: "\n  - path: /slow\n    public: true\n  - path: /\n    require: { min_security_level: EXTERNAL }\n".into(),
        ..Setup::default()
    });
    assert_eq!(
        client().get(kw.ops_url("/readyz")).send().unwrap().status(),
        200
    );
    let slow_url = kw.url("/slow/1500");
    let slow = std::thread::spawn(move || client().get(slow_url).send().map(|r| r.status()));
    std::thread::sleep(Duration::from_millis(300));
    kw.signal(nix::sys::signal::Signal::SIGTERM);
    std::thread::sleep(Duration::from_millis(300));
    let resp = client().get(kw.ops_url("/readyz")).send().unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.text().unwrap(), "shutting down\n");
    assert_eq!(
        client()
            .get(kw.ops_url("/healthz"))
            .send()
            .unwrap()
            .status(),
        200
    );
    // The request in flight finishes.
    assert_eq!(slow.join().unwrap().unwrap(), 200);
}
