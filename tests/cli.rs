//! The command line: check-config, the user commands, and bootstrap, against real stores.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test (or tool) fails loudly

mod common;

use common::{cli, client, spawn_serve, Keyward, BIN};
use std::process::Command;
use std::time::{Duration, Instant};

const VALID: &str = r#"
listen: { proxy: 127.0.0.1:18080, ops: 127.0.0.1:19090 }
upstream: { address: 127.0.0.1:3000 }
store: { url: sqlite://data/keyward.db }
tokens: { administrator: admin }
routes:
  - path: /
    require: { min_security_level: EXTERNAL }
"#;

fn check_config(yaml: &str) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("k.yaml");
    std::fs::write(&path, yaml).unwrap();
    Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .unwrap()
}

#[test]
fn check_config_accepts_a_valid_file_and_the_shipped_examples() {
    assert!(check_config(VALID).status.success());
    // edge.yaml names its certificate files under /etc/keyward: they are made here.
    let certs = tempfile::tempdir().unwrap();
    let files = common::tls::TestPki::new().server(certs.path(), "tls", 1);
    for example in ["keyward.yaml", "sidecar.yaml", "edge.yaml"] {
        let path = format!("{}/config/{example}", env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(&path)
            .unwrap()
            .replace("/etc/keyward/tls.crt", &files.cert.display().to_string())
            .replace("/etc/keyward/tls.key", &files.key.display().to_string());
        let out = check_config(&text);
        assert!(out.status.success(), "{example}: {out:?}");
    }
    let edge = std::fs::read_to_string(format!("{}/config/edge.yaml", env!("CARGO_MANIFEST_DIR")))
        .unwrap();
    let out = check_config(&edge);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("listen.tls.cert"),
        "edge.yaml without its certificate files: {stderr}"
    );
}

/// The keyward.yaml of every Kubernetes overlay (its ConfigMap) is a valid configuration, with
/// the environment variables its Deployment sets from Secrets and its TLS files in place.
/// scripts/check-deploy.sh checks the same files as `kubectl kustomize` renders them.
#[test]
fn check_config_accepts_the_configs_of_the_kubernetes_overlays() {
    let certs = tempfile::tempdir().unwrap();
    let pki = common::tls::TestPki::new();
    let files = pki.server(certs.path(), "tls", 1);
    // The stores' CA files (the fleet's ConfigMap keyward-store-cas at /etc/keyward/stores).
    let stores = certs.path().join("stores");
    std::fs::create_dir(&stores).unwrap();
    let ca = pki.write_ca(&stores);
    for name in ["postgres-ca.pem", "redis-ca.pem"] {
        std::fs::copy(&ca, stores.join(name)).unwrap();
    }
    let stores = format!("{}/", stores.display());
    let overlays = format!("{}/deploy/kubernetes/overlays", env!("CARGO_MANIFEST_DIR"));
    let mut checked = Vec::new();
    for entry in std::fs::read_dir(&overlays).unwrap() {
        let overlay = entry.unwrap().path();
        let name = overlay.file_name().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(overlay.join("keyward.yaml"))
            .unwrap()
            .replace(
                "/etc/keyward/tls/tls.crt",
                &files.cert.display().to_string(),
            )
            .replace("/etc/keyward/tls/tls.key", &files.key.display().to_string())
            .replace("/etc/keyward/stores/", &stores);
        // The URLs as the overlay's secret.env.example writes them.
        let example = std::fs::read_to_string(overlay.join("secret.env.example")).unwrap();
        let secret = |key: &str, default: &str| {
            example
                .lines()
                .find_map(|line| line.strip_prefix(key)?.strip_prefix('='))
                .unwrap_or(default)
                .replace("/etc/keyward/stores/", &stores)
        };
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("k.yaml");
        std::fs::write(&file, text).unwrap();
        let out = Command::new(BIN)
            .args(["check-config", "--config"])
            .arg(&file)
            .env(
                "KEYWARD_STORE_URL",
                secret("store-url", "postgres://keyward:pw@postgres:5432/keyward"),
            )
            .env(
                "KEYWARD_REDIS_URL",
                secret("redis-url", "redis://:pw@redis:6379/0"),
            )
            .output()
            .unwrap();
        assert!(out.status.success(), "{name}: {out:?}");
        checked.push(name);
    }
    checked.sort();
    assert_eq!(
        checked,
        ["authz-ingress-nginx", "edge", "fleet", "sidecar-sqlite"]
    );
}

#[test]
fn check_config_names_an_unknown_key() {
    let out = check_config(&VALID.replace("tokens:", "tokenz:"));
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.lines().any(|l| l == "tokenz: unknown key"),
        "{stderr}"
    );

    let out = check_config(&VALID.replace(
        "min_security_level: EXTERNAL",
        "min_security_level: EXTERNAL, minimum: 1",
    ));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr
            .lines()
            .any(|l| l == "routes[0].require.minimum: unknown key"),
        "{stderr}"
    );
}

#[test]
fn check_config_names_a_bad_cidr() {
    let out = check_config(&format!(
        "{VALID}trusted_proxies: [10.0.0.0/8, 300.1.1.0/24]\n"
    ));
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("trusted_proxies[1]"), "{stderr}");
    assert!(stderr.contains("300.1.1.0/24"), "{stderr}");
}

#[test]
fn check_config_names_a_bad_security_level() {
    let out = check_config(&VALID.replace("EXTERNAL", "HIGH"));
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("routes[0].require.min_security_level"),
        "{stderr}"
    );
}

#[test]
fn user_commands_round_trip_and_lock_beats_the_basic_cache() {
    let kw = Keyward::start();
    kw.add_user(
        "john",
        "john-password",
        &[
            "--function",
            "CASE-SECMON-RO",
            "--customer",
            "7",
            "--external",
        ],
    );
    let dup = kw.cli(
        &["user", "add", "john", "--password-stdin"],
        Some("another-password\n"),
    );
    assert!(!dup.status.success());
    assert!(String::from_utf8_lossy(&dup.stderr).contains("already exists"));

    let list = kw.cli(&["user", "list"], None);
    assert!(list.status.success());
    let text = String::from_utf8_lossy(&list.stdout);
    let john = text
        .lines()
        .find(|l| l.contains("john"))
        .expect("john listed");
    assert!(
        john.contains("CASE-SECMON-RO") && john.contains("true"),
        "{john}"
    );
    assert!(!text.contains("john-password"));

    let get = || {
        client()
            .get(kw.url("/x"))
            .basic_auth("john", Some("john-password"))
            .send()
            .unwrap()
            .status()
    };
    // Warm the Basic cache, then lock from another process.
    assert_eq!(get(), 200);
    assert_eq!(get(), 200);
    assert!(kw.cli(&["user", "lock", "john"], None).status.success());
    let locked_at = Instant::now();
    let list = kw.cli(&["user", "list"], None);
    let text = String::from_utf8_lossy(&list.stdout).into_owned();
    assert!(text
        .lines()
        .any(|l| l.contains("john") && l.contains("true  ")));
    // The change feed is polled every 100 ms in the test config.
    while get() != 401 {
        assert!(
            locked_at.elapsed() < Duration::from_secs(2),
            "locked user still admitted"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    assert!(kw.cli(&["user", "unlock", "john"], None).status.success());
    let unlocked_at = Instant::now();
    while get() != 200 {
        assert!(unlocked_at.elapsed() < Duration::from_secs(2));
        std::thread::sleep(Duration::from_millis(20));
    }

    // A password change drops the cached login too.
    let out = kw.cli(
        &["user", "passwd", "john", "--password-stdin"],
        Some("new-password-9\n"),
    );
    assert!(out.status.success(), "{out:?}");
    let changed_at = Instant::now();
    while get() != 401 {
        assert!(changed_at.elapsed() < Duration::from_secs(2));
        std::thread::sleep(Duration::from_millis(20));
    }
    let new = client()
        .get(kw.url("/x"))
        .basic_auth("john", Some("new-password-9"))
        .send()
        .unwrap();
    assert_eq!(new.status(), 200);
}

#[test]
fn user_commands_refuse_bad_input() {
    let kw = Keyward::start();
    let short = kw.cli(&["user", "add", "eve", "--password-stdin"], Some("short\n"));
    assert!(!short.status.success());
    let slash = kw.cli(
        &["user", "add", "a/b", "--password-stdin"],
        Some("long-enough-1\n"),
    );
    assert!(!slash.status.success());
    let missing = kw.cli(&["user", "lock", "nobody"], None);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no user named"));
    // Without --password-stdin and without a terminal there is nothing to read from.
    let no_tty = kw.cli(&["user", "add", "eve"], None);
    assert!(!no_tty.status.success());
    assert!(String::from_utf8_lossy(&no_tty.stderr).contains("--password-stdin"));
}

#[test]
fn serve_refuses_to_start_without_the_bootstrap_password() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("k.yaml");
    let yaml = VALID
        .replace("18080", &common::free_port().to_string())
        .replace("19090", &common::free_port().to_string())
        .replace(
            "sqlite://data/keyward.db",
            &format!("sqlite://{}", dir.path().join("k.db").display()),
        )
        + "bootstrap:\n  admin: { name: admin, password_env: KEYWARD_TEST_ADMIN_PASSWORD }\n";
    std::fs::write(&path, yaml).unwrap();
    let mut child = spawn_serve(&path, dir.path(), None);
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("keyward started without the bootstrap password");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!status.success());
    let stderr = std::fs::read_to_string(dir.path().join("stderr.log")).unwrap();
    assert!(stderr.contains("KEYWARD_TEST_ADMIN_PASSWORD"), "{stderr}");

    // Once the user exists, the variable is no longer needed.
    let out = cli(
        &path,
        &["user", "add", "admin", "--password-stdin"],
        Some("admin-password-1\n"),
    );
    assert!(out.status.success(), "{out:?}");
    let mut child = spawn_serve(&path, dir.path(), None);
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        child.try_wait().unwrap().is_none(),
        "keyward should be running"
    );
    let _ = child.kill();
    let _ = child.wait();
}

/// The directory's bind password (`identity.ldap.bind_password_env`) is the server's: the
/// commands that work on the store run without it, while `check-config` and `serve` name the
/// missing variable.
#[test]
fn store_commands_run_without_the_directory_bind_password() {
    const VAR: &str = "KEYWARD_TEST_CLI_LDAP_PASSWORD_NEVER_SET";
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("k.yaml");
    let yaml = VALID
        .replace("18080", &common::free_port().to_string())
        .replace("19090", &common::free_port().to_string())
        .replace(
            "sqlite://data/keyward.db",
            &format!("sqlite://{}", dir.path().join("k.db").display()),
        )
        + &format!(
            r#"server: {{ pid_file: {pid} }}
identity:
  ldap:
    url: ldaps://ldap.example.com
    bind_dn: cn=keyward,ou=services,dc=example,dc=com
    bind_password_env: {VAR}
    user_base: ou=people,dc=example,dc=com
    user_filter: "(uid={{user}})"
"#,
            pid = dir.path().join("keyward.pid").display()
        );
    std::fs::write(&path, yaml).unwrap();
    assert!(std::env::var_os(VAR).is_none());

    let out = cli(
        &path,
        &["user", "add", "admin", "--password-stdin"],
        Some("admin-password-1\n"),
    );
    assert!(out.status.success(), "{out:?}");
    let out = cli(&path, &["user", "list"], None);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("admin"));
    let out = cli(&path, &["user", "lock", "admin"], None);
    assert!(out.status.success(), "{out:?}");
    let out = cli(&path, &["audit", "tail"], None);
    assert!(out.status.success(), "{out:?}");
    // `reload` gets past the configuration (no server runs here, so it stops at the pid file).
    let out = cli(&path, &["reload"], None);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("pid file") && !stderr.contains(VAR),
        "{stderr}"
    );

    let out = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("identity.ldap.bind_password_env") && stderr.contains(VAR),
        "{stderr}"
    );

    let mut child = spawn_serve(&path, dir.path(), None);
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("keyward started without the directory's bind password");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!status.success());
    let stderr = std::fs::read_to_string(dir.path().join("stderr.log")).unwrap();
    assert!(stderr.contains(VAR), "{stderr}");
}

/// The README walk-through as a script: `keyward user lock john`, and the very next request
/// with john's (cached) Basic login is refused. The CLI returns once the running keyward has
/// applied the change feed up to the lock (`keyward_change_feed_applied_seq` on its ops
/// listener); before, it was refused only within `cache.invalidation_poll` (a full second
/// here, so the old behaviour would show every time). Unlock and password changes likewise.
#[test]
fn a_cli_change_is_in_force_on_the_running_keyward_when_the_command_returns() {
    let kw = Keyward::start_with(common::Setup {
        invalidation_poll: "1s".into(),
        ..common::Setup::default()
    });
    kw.add_user("john", "john-password", &[]);
    let get = |password: &str| {
        client()
            .get(kw.url("/anything"))
            .basic_auth("john", Some(password))
            .send()
            .unwrap()
            .status()
    };
    for _ in 0..2 {
        assert_eq!(get("john-password"), 200);
    }
    for round in 0..3 {
        let started = Instant::now();
        let out = kw.cli(&["user", "lock", "john"], None);
        assert!(out.status.success(), "{out:?}");
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "waited {:?}",
            started.elapsed()
        );
        assert_eq!(get("john-password"), 401, "round {round}: refused at once");
        let out = kw.cli(&["user", "unlock", "john"], None);
        assert!(out.status.success(), "{out:?}");
        assert_eq!(get("john-password"), 200, "round {round}: admitted at once");
    }
    let out = kw.cli(
        &["user", "passwd", "john", "--password-stdin"],
        Some("new-password-2\n"),
    );
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        get("john-password"),
        401,
        "the old password, cached, is refused"
    );
    assert_eq!(get("new-password-2"), 200);
    let metrics = kw.metrics();
    assert!(
        metrics.contains("keyward_change_feed_applied_seq "),
        "{metrics}"
    );
}
