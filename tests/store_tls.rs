//! TLS to PostgreSQL: `sslmode` (`disable`, `require`, `verify-ca`, `verify-full`) with
//! `sslrootcert`, `sslcert` and `sslkey` in the store URL. Against the shared server (Debian's
//! self-signed snakeoil certificate): `require` and `verify-ca`. Against a PostgreSQL the test
//! starts itself (`initdb`, `pg_ctl`, its own port and directory, certificates made with
//! rcgen): `verify-full` and the host name, a client certificate (`hostssl ... cert`), and
//! keyward refusing to start, or to reload, on a certificate that does not verify, naming
//! `store.url`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test (or tool) fails loudly

mod common;

use common::tls::TestPki;
use common::{client, echoed, echoed_header, free_port, Keyward, Setup};
use keyward::store::{check_connection, StoreError, StoreUrl};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The shared server's certificate (self-signed: it is its own CA).
const SNAKEOIL: &str = "/etc/ssl/certs/ssl-cert-snakeoil.pem";

fn shared_server() -> String {
    let admin = std::env::var("KEYWARD_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    admin
        .rsplit_once('/')
        .map_or(admin.clone(), |(base, _)| format!("{base}/postgres"))
}

fn check(url: &str) -> Result<(), StoreError> {
    check_connection(&StoreUrl::parse(url).unwrap(), Duration::from_secs(10))
}

/// The rustls error in a failed check's chain, as `{:?}` shows it (`InvalidCertificate(UnknownIssuer)`).
fn tls_failure(result: Result<(), StoreError>) -> String {
    let error = result.expect_err("the connection should fail");
    let tls = keyward::tls::find_rustls_error(&error)
        .unwrap_or_else(|| panic!("not a TLS failure: {error:?}"));
    format!("{tls:?}")
}

/// A CA of the test's own, written as `ca.pem` in a new directory under `dir`.
fn stranger_ca(dir: &Path) -> PathBuf {
    let own = dir.join("stranger");
    std::fs::create_dir_all(&own).unwrap();
    TestPki::new().write_ca(&own)
}

#[test]
fn the_shared_server_with_require_and_verify_ca() {
    // Its certificate names `localhost` (the server listens on 127.0.0.1).
    let base = shared_server().replace("127.0.0.1", "localhost");
    let dir = tempfile::tempdir().unwrap();
    check(&format!("{base}?sslmode=disable")).unwrap();
    check(&format!("{base}?sslmode=require")).unwrap();
    check(&format!("{base}?sslmode=verify-ca&sslrootcert={SNAKEOIL}")).unwrap();
    check(&format!(
        "{base}?sslmode=verify-full&sslrootcert={SNAKEOIL}"
    ))
    .unwrap();
    // Another CA: refused, whether verify-ca says so or require with a CA (libpq's rule).
    let other = stranger_ca(dir.path());
    for mode in ["verify-ca", "verify-full", "require"] {
        let failure = tls_failure(check(&format!(
            "{base}?sslmode={mode}&sslrootcert={}",
            other.display()
        )));
        assert!(failure.contains("UnknownIssuer"), "{mode}: {failure}");
    }
    // verify-ca without sslrootcert trusts the public roots only, not this self-signed one.
    let failure = tls_failure(check(&format!("{base}?sslmode=verify-ca")));
    assert!(failure.contains("UnknownIssuer"), "{failure}");
    // By address, the certificate does not name the host: verify-full refuses.
    let by_address = shared_server();
    let failure = tls_failure(check(&format!(
        "{by_address}?sslmode=verify-full&sslrootcert={SNAKEOIL}"
    )));
    assert!(failure.contains("NotValidForName"), "{failure}");
}

/// A PostgreSQL of the test's own: a new cluster in a temporary directory, TLS on with a
/// server certificate of `pki`'s for `names`, client certificates checked against `pki`'s CA,
/// and `hba` as its `pg_hba.conf` for TCP. Run as the `postgres` user when the test is root.
struct OwnPostgres {
    dir: tempfile::TempDir,
    port: u16,
    bin: PathBuf,
}

impl OwnPostgres {
    fn start(pki: &TestPki, names: &[&str], hba: &str) -> OwnPostgres {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("these tests need PostgreSQL's server binaries in /usr/lib/postgresql")
            .filter_map(|entry| Some(entry.ok()?.path().join("bin")))
            .filter(|bin| bin.join("initdb").exists())
            .max()
            .expect("no /usr/lib/postgresql/*/bin/initdb");
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let postgres = OwnPostgres {
            dir,
            port: free_port(),
            bin,
        };
        postgres.chown(postgres.dir.path());
        postgres.run(
            "initdb",
            &[
                "-D",
                data.to_str().unwrap(),
                "-U",
                "postgres",
                "-A",
                "trust",
                "--no-sync",
            ],
        );
        let server = pki.leaf(&data, "server", names, "postgres server");
        pki.write_ca(&data);
        let mut conf = std::fs::read_to_string(data.join("postgresql.conf")).unwrap();
        conf.push_str(&format!(
            "\nport = {}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\n\
             ssl = on\nssl_cert_file = '{}'\nssl_key_file = '{}'\nssl_ca_file = 'ca.pem'\n\
             fsync = off\n",
            postgres.port,
            postgres.dir.path().display(),
            server.cert.display(),
            server.key.display(),
        ));
        std::fs::write(data.join("postgresql.conf"), conf).unwrap();
        std::fs::write(
            data.join("pg_hba.conf"),
            format!("local all all trust\n{hba}\n"),
        )
        .unwrap();
        for entry in std::fs::read_dir(&data).unwrap() {
            postgres.chown(&entry.unwrap().path());
        }
        postgres.run(
            "pg_ctl",
            &[
                "-D",
                data.to_str().unwrap(),
                "-l",
                postgres.dir.path().join("log").to_str().unwrap(),
                "-w",
                "-t",
                "30",
                "start",
            ],
        );
        postgres
    }

    fn as_root() -> bool {
        id(&["-u"]) == 0
    }

    fn chown(&self, path: &Path) {
        if OwnPostgres::as_root() {
            let (uid, gid) = (id(&["-u", "postgres"]), id(&["-g", "postgres"]));
            std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap();
        }
    }

    /// Runs one of the server's programs (as `postgres` when root); fails the test if it fails.
    fn run(&self, program: &str, args: &[&str]) {
        let path = self.bin.join(program);
        let mut command = match OwnPostgres::as_root() {
            true => {
                let mut command = Command::new("runuser");
                command.args(["-u", "postgres", "--"]).arg(&path);
                command
            }
            false => Command::new(&path),
        };
        let out = command
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{program} failed: {out:?}\n{}",
            std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
        );
    }

    /// A URL of its `postgres` database on 127.0.0.1, with `query`.
    fn url(&self, query: &str) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/postgres?{query}",
            self.port
        )
    }
}

/// What `id ARGS` prints, a number (running as root, these tests need the postgres user).
fn id(args: &[&str]) -> u32 {
    let out = Command::new("id").args(args).output().unwrap();
    assert!(out.status.success(), "id {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        let data = self.dir.path().join("data");
        let pg_ctl = self.bin.join("pg_ctl");
        let mut command = match OwnPostgres::as_root() {
            true => {
                let mut command = Command::new("runuser");
                command.args(["-u", "postgres", "--"]).arg(&pg_ctl);
                command
            }
            false => Command::new(&pg_ctl),
        };
        let _ = command
            .arg("-D")
            .arg(&data)
            .args(["-m", "immediate", "stop"])
            .current_dir(self.dir.path())
            .output();
    }
}

/// Starts `keyward serve` on a copy of `kw`-like config with `store_url` and waits for it to
/// exit; returns (success, stderr).
fn serve_expecting_exit(store_url: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "listen: {{ proxy: \"127.0.0.1:{}\", ops: \"127.0.0.1:{}\" }}\n\
         upstream: {{ address: \"127.0.0.1:{}\" }}\n\
         store: {{ url: \"{store_url}\" }}\n\
         server: {{ pid_file: {} }}\n\
         routes: [ {{ path: /, require: {{ min_security_level: EXTERNAL }} }} ]\n",
        free_port(),
        free_port(),
        free_port(),
        dir.path().join("keyward.pid").display(),
    );
    let path = dir.path().join("keyward.yaml");
    std::fs::write(&path, config).unwrap();
    let mut child = common::spawn_serve_with(&path, dir.path(), None, &[]);
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("keyward kept running with {store_url}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stderr = std::fs::read_to_string(dir.path().join("stderr.log")).unwrap();
    (status.success(), stderr)
}

/// `john` with a password, and one Basic request through `kw` (the store answers it).
fn john_is_served(kw: &Keyward) {
    kw.add_user("john", "john-password", &[]);
    let resp = client()
        .get(kw.url("/x"))
        .basic_auth("john", Some("john-password"))
        .send()
        .unwrap();
    assert_eq!(echoed_header(&echoed(resp), "x-keyward-user"), Some("john"));
}

#[test]
fn verify_full_checks_the_host_name_and_keyward_serves_with_it() {
    let pki = TestPki::new();
    let files = tempfile::tempdir().unwrap();
    let ca = pki.write_ca(files.path());
    let postgres = OwnPostgres::start(
        &pki,
        &["127.0.0.1", "localhost"],
        "hostssl all all 127.0.0.1/32 trust",
    );
    let verify_full = postgres.url(&format!("sslmode=verify-full&sslrootcert={}", ca.display()));
    check(&verify_full).unwrap();
    // `hostssl` only: a plain-text connection is refused by the server.
    assert!(check(&postgres.url("sslmode=disable")).is_err());

    let kw = Keyward::start_with(Setup {
        store_url: Some(verify_full.clone()),
        ..Setup::default()
    });
    john_is_served(&kw);

    // Another CA: keyward does not start, and names the key.
    let other = stranger_ca(files.path());
    let wrong = postgres.url(&format!(
        "sslmode=verify-full&sslrootcert={}",
        other.display()
    ));
    // Both test CAs have one name: the server's issuer is found, its signature does not verify.
    let failure = tls_failure(check(&wrong));
    assert!(failure.contains("BadSignature"), "{failure}");
    let (ok, stderr) = serve_expecting_exit(&wrong);
    assert!(!ok, "{stderr}");
    assert!(
        stderr.contains(
            "store.url: TLS to PostgreSQL failed: the server's certificate does not verify"
        ),
        "{stderr}"
    );

    // The same CA file replaced by another on reload: refused, naming the key, and keyward
    // keeps serving.
    let config = std::fs::read_to_string(&kw.config_path).unwrap();
    std::fs::write(&kw.config_path, config.replace(&verify_full, &wrong)).unwrap();
    kw.signal(nix::sys::signal::Signal::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !kw.stderr().contains("configuration reload failed") {
        assert!(Instant::now() < deadline, "{}", kw.stderr());
        std::thread::sleep(Duration::from_millis(100));
    }
    let stderr = kw.stderr();
    let line = stderr
        .lines()
        .find(|l| l.contains("configuration reload failed"))
        .unwrap();
    assert!(
        line.contains("store.url: TLS to PostgreSQL failed"),
        "{line}"
    );
    let resp = client()
        .get(kw.url("/x"))
        .basic_auth("john", Some("john-password"))
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
}

#[test]
fn a_certificate_for_another_host_is_refused_naming_the_key() {
    let pki = TestPki::new();
    let files = tempfile::tempdir().unwrap();
    let ca = pki.write_ca(files.path());
    let postgres = OwnPostgres::start(&pki, &["db.example"], "hostssl all all 127.0.0.1/32 trust");
    // `require` encrypts without checking (what it is for); `verify-full` checks the name.
    check(&postgres.url("sslmode=require")).unwrap();
    let verify_full = postgres.url(&format!("sslmode=verify-full&sslrootcert={}", ca.display()));
    let failure = tls_failure(check(&verify_full));
    assert!(failure.contains("NotValidForName"), "{failure}");
    let (ok, stderr) = serve_expecting_exit(&verify_full);
    assert!(!ok, "{stderr}");
    assert!(
        stderr.contains("store.url: TLS to PostgreSQL failed: the server's certificate is not valid for the host name"),
        "{stderr}"
    );
    // sqlx 0.8 checks the name with `verify-ca` too (its check-skipping verifier predates
    // rustls's NotValidForNameContext; fixed in sqlx 0.9): refused, and the message says so.
    let verify_ca = postgres.url(&format!("sslmode=verify-ca&sslrootcert={}", ca.display()));
    let (ok, stderr) = serve_expecting_exit(&verify_ca);
    assert!(!ok, "{stderr}");
    assert!(
        stderr.contains("verify-ca checks the host name too"),
        "{stderr}"
    );
}

#[test]
fn a_server_that_wants_a_client_certificate_gets_one() {
    let pki = TestPki::new();
    let files = tempfile::tempdir().unwrap();
    let ca = pki.write_ca(files.path());
    // `cert`: the client certificate must chain to the server's ssl_ca_file and its common
    // name is the user's name.
    let postgres = OwnPostgres::start(
        &pki,
        &["127.0.0.1", "localhost"],
        "hostssl all all 127.0.0.1/32 cert",
    );
    let client_cert = pki.leaf(files.path(), "client", &[], "postgres");
    let with_cert = postgres.url(&format!(
        "sslmode=verify-full&sslrootcert={}&sslcert={}&sslkey={}",
        ca.display(),
        client_cert.cert.display(),
        client_cert.key.display()
    ));
    check(&with_cert).unwrap();
    let kw = Keyward::start_with(Setup {
        store_url: Some(with_cert),
        ..Setup::default()
    });
    john_is_served(&kw);

    // Without a certificate the server refuses the connection.
    let without = postgres.url(&format!("sslmode=verify-full&sslrootcert={}", ca.display()));
    let error = check(&without).expect_err("a client certificate is required");
    assert!(error.to_string().contains("certificate"), "{error}");
    let (ok, stderr) = serve_expecting_exit(&without);
    assert!(!ok, "{stderr}");
    assert!(stderr.contains("store.url: "), "{stderr}");

    // One from a CA the server does not trust: refused in the handshake.
    let stranger_dir = files.path().join("stranger-client");
    std::fs::create_dir(&stranger_dir).unwrap();
    let stranger = TestPki::new().leaf(&stranger_dir, "client", &[], "postgres");
    let untrusted = postgres.url(&format!(
        "sslmode=verify-full&sslrootcert={}&sslcert={}&sslkey={}",
        ca.display(),
        stranger.cert.display(),
        stranger.key.display()
    ));
    assert!(check(&untrusted).is_err());
    let (ok, stderr) = serve_expecting_exit(&untrusted);
    assert!(!ok, "{stderr}");
    assert!(stderr.contains("store.url: "), "{stderr}");
}

#[test]
fn check_config_names_the_store_url_for_unusable_tls_files() {
    let files = tempfile::tempdir().unwrap();
    let not_pem = files.path().join("junk.pem");
    std::fs::write(&not_pem, "not a certificate").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("keyward.yaml");
    for (query, says) in [
        (
            format!("sslmode=verify-full&sslrootcert={}", not_pem.display()),
            "sslrootcert: ",
        ),
        (
            "sslmode=verify-all".to_owned(),
            "sslmode=verify-all is not one of",
        ),
        (
            format!("sslcert={}", not_pem.display()),
            "sslcert without sslkey",
        ),
    ] {
        std::fs::write(
            &config,
            format!(
                "listen: {{ proxy: \"127.0.0.1:{}\", ops: \"127.0.0.1:{}\" }}\n\
                 upstream: {{ address: \"127.0.0.1:3000\" }}\n\
                 store: {{ url: \"postgres://keyward:s3cret@db.example/keyward?{query}\" }}\n\
                 routes: [ {{ path: /, public: true }} ]\n",
                free_port(),
                free_port(),
            ),
        )
        .unwrap();
        let out = common::cli(&config, &["check-config"], None);
        assert_eq!(out.status.code(), Some(2), "{out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(&format!("store.url: {says}")) || stderr.contains(says),
            "{stderr}"
        );
        assert!(stderr.contains("store.url: "), "{stderr}");
        assert!(!stderr.contains("s3cret"), "{stderr}");
    }
}
