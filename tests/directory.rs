//! Directory users (SPEC §14, `identity.ldap`) against a real OpenLDAP `slapd` that each test
//! starts on loopback ports with a `slapd.conf` and an LDIF it writes (people, groups, a
//! service account), over `ldaps://` with a certificate the test makes, and over plain
//! `ldap://` on loopback. Needs Debian's `slapd` and `ldap-utils` (`scripts/prereqs.sh`).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test (or tool) fails loudly

mod common;

use common::tls::TestPki;
use common::{client, echoed, echoed_header, free_port, Keyward, Setup, ADMIN_PASSWORD};
use ed25519_dalek::SigningKey;
use keyward::store::scratch::ScratchDatabase;
use serde_json::{json, Value};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const SUFFIX: &str = "dc=example,dc=com";
const ROOT_DN: &str = "cn=admin,dc=example,dc=com";
const ROOT_PW: &str = "root-secret";
const SERVICE_DN: &str = "cn=keyward,ou=services,dc=example,dc=com";
const SERVICE_PW: &str = "service-secret";
const SERVICE_ENV: &str = "KEYWARD_TEST_LDAP_PASSWORD";
const SECOPS: &str = "cn=secops,ou=groups,dc=example,dc=com";

fn slapd_binary() -> &'static str {
    for path in ["/usr/sbin/slapd", "/usr/local/libexec/slapd"] {
        if Path::new(path).exists() {
            return path;
        }
    }
    panic!("the directory tests need OpenLDAP's slapd and ldap-utils: run scripts/prereqs.sh");
}

fn person(uid: &str, password: &str, department: &str) -> String {
    format!(
        "dn: uid={uid},ou=people,{SUFFIX}\nobjectClass: inetOrgPerson\nuid: {uid}\ncn: {uid}\n\
         sn: {uid}\ndepartmentNumber: {department}\nuserPassword: {password}\n\n"
    )
}

/// A real slapd on two loopback ports (ldap:// and ldaps://), its database in a directory of
/// the test's.
struct Slapd {
    dir: tempfile::TempDir,
    plain: u16,
    tls: u16,
    child: Option<Child>,
    ca: PathBuf,
}

impl Slapd {
    fn start() -> Slapd {
        let slapd = slapd_binary();
        let dir = tempfile::tempdir().unwrap();
        let pki = TestPki::new();
        let ca = pki.write_ca(dir.path());
        let server = pki.server(dir.path(), "slapd", 7);
        std::fs::create_dir(dir.path().join("data")).unwrap();
        let conf = format!(
            "include /etc/ldap/schema/core.schema\n\
             include /etc/ldap/schema/cosine.schema\n\
             include /etc/ldap/schema/nis.schema\n\
             include /etc/ldap/schema/inetorgperson.schema\n\
             pidfile {dir}/slapd.pid\n\
             modulepath /usr/lib/ldap\n\
             moduleload back_mdb\n\
             TLSCertificateFile {cert}\n\
             TLSCertificateKeyFile {key}\n\
             database mdb\n\
             maxsize 104857600\n\
             suffix \"{SUFFIX}\"\n\
             rootdn \"{ROOT_DN}\"\n\
             rootpw {ROOT_PW}\n\
             directory {dir}/data\n\
             index uid eq\n\
             access to attrs=userPassword by anonymous auth by * none\n\
             access to * by users read by * none\n",
            dir = dir.path().display(),
            cert = server.cert.display(),
            key = server.key.display(),
        );
        std::fs::write(dir.path().join("slapd.conf"), conf).unwrap();
        let mut ldif = format!(
            "dn: {SUFFIX}\nobjectClass: dcObject\nobjectClass: organization\ndc: example\no: Example\n\n\
             dn: ou=people,{SUFFIX}\nobjectClass: organizationalUnit\nou: people\n\n\
             dn: ou=groups,{SUFFIX}\nobjectClass: organizationalUnit\nou: groups\n\n\
             dn: ou=services,{SUFFIX}\nobjectClass: organizationalUnit\nou: services\n\n\
             dn: {SERVICE_DN}\nobjectClass: person\ncn: keyward\nsn: keyward\nuserPassword: {SERVICE_PW}\n\n"
        );
        for (uid, department) in [
            ("alice", "cust-7"),
            ("bob", "cust-8"),
            ("carol", "cust-9"),
            ("dave", "cust-9"),
            ("lou", "cust-1"),
        ] {
            ldif.push_str(&person(uid, &format!("{uid}-directory-pw"), department));
        }
        ldif.push_str(&format!(
            "dn: {SECOPS}\nobjectClass: groupOfNames\ncn: secops\n\
             member: uid=alice,ou=people,{SUFFIX}\nmember: uid=bob,ou=people,{SUFFIX}\n\n\
             dn: cn=admins,ou=groups,{SUFFIX}\nobjectClass: posixGroup\ncn: admins\ngidNumber: 500\n\
             memberUid: alice\n\n"
        ));
        std::fs::write(dir.path().join("data.ldif"), ldif).unwrap();
        let out = Command::new(Path::new(slapd).with_file_name("slapadd"))
            .arg("-f")
            .arg(dir.path().join("slapd.conf"))
            .arg("-l")
            .arg(dir.path().join("data.ldif"))
            .output()
            .unwrap();
        assert!(out.status.success(), "slapadd: {out:?}");
        let mut slapd = Slapd {
            dir,
            plain: free_port(),
            tls: free_port(),
            child: None,
            ca,
        };
        slapd.run();
        slapd
    }

    /// Starts slapd (again) on the same ports and database.
    fn run(&mut self) {
        let child = Command::new(slapd_binary())
            .arg("-f")
            .arg(self.dir.path().join("slapd.conf"))
            .arg("-h")
            .arg(format!(
                "ldap://127.0.0.1:{}/ ldaps://127.0.0.1:{}/",
                self.plain, self.tls
            ))
            // The stats log: one line per connection and operation, for the tests that count
            // what keyward asks of the directory.
            .args(["-d", "256"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.dir.path().join("slapd.log")).unwrap())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.search("(uid=alice)").is_none() {
            assert!(
                Instant::now() < deadline,
                "slapd did not start: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("slapd.log")).unwrap_or_default()
    }

    /// Where the log ends now.
    fn log_len(&self) -> usize {
        self.log().len()
    }

    /// What was asked of the directory since the log ended at `from`.
    fn ops_since(&self, from: usize) -> Ops {
        Ops::read(self.log().get(from..).unwrap_or_default())
    }

    fn plain_url(&self) -> String {
        format!("ldap://127.0.0.1:{}", self.plain)
    }

    fn tls_url(&self) -> String {
        format!("ldaps://127.0.0.1:{}", self.tls)
    }

    /// `ldapsearch` as the service account; `None` when slapd does not answer.
    fn search(&self, filter: &str) -> Option<String> {
        let out = Command::new("ldapsearch")
            .args([
                "-x",
                "-LLL",
                "-H",
                &self.plain_url(),
                "-D",
                SERVICE_DN,
                "-w",
                SERVICE_PW,
            ])
            .args(["-b", SUFFIX, filter, "dn"])
            .output()
            .unwrap();
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Applies an LDIF change as the directory's administrator.
    fn modify(&self, ldif: &str) {
        let mut child = Command::new("ldapmodify")
            .args(["-x", "-H", &self.plain_url(), "-D", ROOT_DN, "-w", ROOT_PW])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(ldif.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "ldapmodify: {out:?}");
    }
}

/// What slapd's stats log says keyward asked of it.
#[derive(Debug, Default, PartialEq, Eq)]
struct Ops {
    /// New connections.
    connections: usize,
    /// Searches under `user_base` (with `user_filter`).
    user_searches: usize,
    /// Reads of a whole group (revalidation: once per group per sweep).
    group_reads: usize,
    /// Searches asking one group whether it names one user (logins; revalidation only where
    /// the group read disagrees with what keyward holds).
    group_checks: Vec<String>,
    /// Binds as the service account.
    service_binds: usize,
    /// Binds as anyone else (a login's password check).
    other_binds: usize,
    /// Binds refused (invalidCredentials).
    refused_binds: usize,
}

impl Ops {
    fn read(log: &str) -> Ops {
        let mut ops = Ops::default();
        let groups = format!(",ou=groups,{SUFFIX}\"");
        for line in log.lines() {
            if line.contains(" ACCEPT from ") {
                ops.connections += 1;
            } else if line.contains(&format!("SRCH base=\"ou=people,{SUFFIX}\"")) {
                ops.user_searches += 1;
            } else if line.contains(" SRCH base=\"cn=") && line.contains(&groups) {
                if line.contains("filter=\"(objectClass=*)\"") {
                    ops.group_reads += 1;
                } else {
                    ops.group_checks.push(line.to_owned());
                }
            } else if line.contains(&format!("BIND dn=\"{SERVICE_DN}\"")) {
                ops.service_binds += 1;
            } else if line.contains(" BIND dn=\"") {
                ops.other_binds += 1;
            } else if line.contains("RESULT tag=97 err=49 ") {
                ops.refused_binds += 1;
            }
        }
        ops
    }
}

impl Drop for Slapd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The `identity.ldap` section for `url`.
fn ldap_section(slapd: &Slapd, url: &str, revalidate_every: &str) -> String {
    format!(
        r#"identity:
  ldap:
    url: {url}
    ca: {ca}
    bind_dn: {SERVICE_DN}
    bind_password_env: {SERVICE_ENV}
    user_base: ou=people,{SUFFIX}
    user_filter: "(&(objectClass=inetOrgPerson)(uid={{user}})(!(description=locked)))"
    groups:
      "{SECOPS}": [CASE-SECMON-RO]
      "cn=admins,ou=groups,{SUFFIX}": [POWER-USER]
    customer_attribute: departmentNumber
    revalidate_every: {revalidate_every}
    timeout: 2s
"#,
        ca = slapd.ca.display(),
    )
}

/// The service password in this process's environment, so that keyward and its CLI (which
/// read the same config) find it.
fn service_password_env() {
    std::env::set_var(SERVICE_ENV, SERVICE_PW);
}

fn keyward(slapd: &Slapd, url: &str, revalidate_every: &str, store_url: Option<&str>) -> Keyward {
    service_password_env();
    Keyward::start_with(Setup {
        extra: ldap_section(slapd, url, revalidate_every),
        store_url: store_url.map(str::to_owned),
        invalidation_poll: "5s".into(),
        ..Setup::default()
    })
}

fn get_basic(kw: &Keyward, user: &str, password: &str) -> reqwest::blocking::Response {
    client()
        .get(kw.url("/x"))
        .basic_auth(user, Some(password))
        .send()
        .unwrap()
}

fn mint_token(kw: &Keyward, user: &str, password: &str) -> String {
    let resp = client()
        .post(kw.url("/.TOKEN/"))
        .basic_auth(user, Some(password))
        .send()
        .unwrap();
    assert_eq!(resp.status(), 201);
    let cookie = resp.headers()["set-cookie"].to_str().unwrap().to_owned();
    cookie
        .strip_prefix("token=")
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned()
}

fn with_token(kw: &Keyward, token: &str) -> reqwest::blocking::Response {
    client()
        .get(kw.url("/x"))
        .header("cookie", format!("token={token}"))
        .send()
        .unwrap()
}

fn with_key(kw: &Keyward, key: &str) -> reqwest::blocking::Response {
    client()
        .get(kw.url("/x"))
        .header("Argus-API-Key", key)
        .send()
        .unwrap()
}

/// An API key `user` creates for themselves with their directory password.
fn own_api_key(kw: &Keyward, user: &str, password: &str) -> String {
    let resp = client()
        .post(kw.url(&format!("/authentication/v1/user/{user}/apikey")))
        .basic_auth(user, Some(password))
        .header("content-type", "application/json")
        .body(json!({ "description": "directory user's own" }).to_string())
        .send()
        .unwrap();
    assert_eq!(resp.status(), 201);
    let body: Value = resp.json().unwrap();
    body["data"]["apiKeyString"].as_str().unwrap().to_owned()
}

fn metric(kw: &Keyward, name: &str) -> i64 {
    kw.metric_value(name)
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Enrolls a signature key for `user` as the administrator; returns the keyid to sign with.
fn enroll(kw: &Keyward, user: &str, key: &SigningKey) -> String {
    use base64::Engine as _;
    let resp = client()
        .post(kw.url(&format!("/authentication/v1/user/{user}/signature")))
        .basic_auth("admin", Some(ADMIN_PASSWORD))
        .body(
            json!({
                "publicKey": base64::engine::general_purpose::STANDARD
                    .encode(key.verifying_key().to_bytes()),
                "description": "laptop"
            })
            .to_string(),
        )
        .send()
        .unwrap();
    assert_eq!(resp.status(), 201);
    let body: Value = resp.json().unwrap();
    format!("{user}/{}", body["data"]["keyID"].as_i64().unwrap())
}

fn signed_get(kw: &Keyward, key: &SigningKey, keyid: &str, nonce: u64) -> u16 {
    let url = kw.url("/x");
    let headers = keyward::auth::signature::sign(
        key,
        keyid,
        "GET",
        &url.parse().unwrap(),
        None,
        now_secs(),
        &format!("n{nonce}"),
    )
    .unwrap();
    let mut request = client().get(&url);
    for (name, value) in headers {
        request = request.header(name, value);
    }
    request.send().unwrap().status().as_u16()
}

#[test]
fn directory_logins_over_ldaps_get_functions_customer_and_credentials() {
    let slapd = Slapd::start();
    let kw = keyward(&slapd, &slapd.tls_url(), "1h", None);

    // Functions from both kinds of group (member DN, memberUid), customer from the attribute.
    let echo = echoed(get_basic(&kw, "alice", "alice-directory-pw"));
    assert_eq!(
        echoed_header(&echo, "x-keyward-functions"),
        Some("CASE-SECMON-RO,POWER-USER")
    );
    assert_eq!(echoed_header(&echo, "x-keyward-customer"), Some("cust-7"));
    assert_eq!(echoed_header(&echo, "x-keyward-user"), Some("alice"));
    assert_eq!(
        echoed_header(&echo, "x-keyward-auth-method"),
        Some("PASSWORD")
    );
    let list = kw.cli(&["user", "list"], None);
    assert!(list.status.success(), "{list:?}");
    let text = String::from_utf8_lossy(&list.stdout);
    let alice = text.lines().find(|l| l.contains("alice")).unwrap();
    assert!(alice.contains(" ldap "), "{text}");
    let admin = text.lines().find(|l| l.contains("admin")).unwrap();
    assert!(admin.contains(" local "), "{text}");

    // Refused, never forwarded, never a directory error: wrong password, unknown user, empty
    // password, and names that would be filter syntax if they were not escaped.
    let forwarded = kw.upstream().requests();
    let long = "a".repeat(10_000);
    let refused: &[(&str, &str)] = &[
        ("alice", "wrong-password"),
        ("alice", ""),
        ("nobody", "alice-directory-pw"),
        ("*", "alice-directory-pw"),
        ("a*", "alice-directory-pw"),
        (")(uid=*", "alice-directory-pw"),
        ("alice)(uid=*", "alice-directory-pw"),
        ("*)(|(uid=*", "alice-directory-pw"),
        ("\\00", "alice-directory-pw"),
        ("alice\\00", "alice-directory-pw"),
        ("alice\\2a", "alice-directory-pw"),
        (&long, "alice-directory-pw"),
    ];
    for (user, password) in refused {
        let resp = get_basic(&kw, user, password);
        assert_eq!(resp.status(), 401, "{:.40}:{password}", user);
    }
    // A NUL in the name: refused before any lookup (control characters are malformed).
    let raw = format!(
        "Basic {}",
        base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            "alice\0:alice-directory-pw"
        )
    );
    let resp = client()
        .get(kw.url("/x"))
        .header("authorization", raw)
        .send()
        .unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(kw.upstream().requests(), forwarded, "nothing forwarded");
    assert_eq!(metric(&kw, "keyward_directory_errors_total"), 0);
    assert_eq!(metric(&kw, "keyward_directory_up"), 1);
    assert!(
        !String::from_utf8_lossy(&kw.cli(&["user", "list"], None).stdout).contains("nobody"),
        "refused names are not created"
    );

    // A token minted and an API key created with the directory login carry the directory's
    // functions.
    let token = mint_token(&kw, "alice", "alice-directory-pw");
    let echo = echoed(with_token(&kw, &token));
    assert_eq!(echoed_header(&echo, "x-keyward-user"), Some("alice"));
    assert_eq!(echoed_header(&echo, "x-keyward-customer"), Some("cust-7"));
    let key = own_api_key(&kw, "alice", "alice-directory-pw");
    let echo = echoed(with_key(&kw, &key));
    assert_eq!(echoed_header(&echo, "x-keyward-user"), Some("alice"));
    assert!(echoed_header(&echo, "x-keyward-functions")
        .unwrap()
        .contains("CASE-SECMON-RO"));

    // A local user with a password is checked locally, never against the directory entry of
    // the same name.
    kw.add_user("lou", "local-lou-password", &[]);
    assert_eq!(get_basic(&kw, "lou", "local-lou-password").status(), 200);
    assert_eq!(get_basic(&kw, "lou", "lou-directory-pw").status(), 401);
}

/// An unknown name costs the directory work of a wrong password — a connection of its own and
/// a refused bind after the search — so that it answers no faster (no timing oracle on names);
/// the bind is made as an entry that does not exist, so no account's failed binds move.
#[test]
fn an_unknown_name_does_the_directory_work_of_a_wrong_password() {
    let slapd = Slapd::start();
    let kw = keyward(&slapd, &slapd.tls_url(), "1h", None);
    // The service connection is made and bound.
    assert_eq!(get_basic(&kw, "carol", "carol-directory-pw").status(), 200);
    let attempt = |user: &str, password: &str| {
        let from = slapd.log_len();
        assert_eq!(get_basic(&kw, user, password).status(), 401);
        // The log lines of the connection's end may follow the answer.
        let ops = || slapd.ops_since(from);
        wait_until(Duration::from_secs(5), "the bind logged", || {
            ops().refused_binds >= 1
        });
        std::thread::sleep(Duration::from_millis(300));
        ops()
    };
    let expected = Ops {
        connections: 1,
        user_searches: 1,
        other_binds: 1,
        refused_binds: 1,
        ..Ops::default()
    };
    for (user, password) in [
        ("alice", "wrong-password"),
        ("nobody", "alice-directory-pw"),
        ("bob", "another-wrong-password"),
        ("nobody-else", "some-password"),
    ] {
        assert_eq!(attempt(user, password), expected, "{user}");
    }
    assert!(
        slapd.log().contains(&format!(
            "BIND dn=\"cn=keyward-no-such-user,ou=people,{SUFFIX}\""
        )),
        "the unknown name's bind is made as an entry that does not exist"
    );
    assert_eq!(metric(&kw, "keyward_directory_errors_total"), 0);
}

#[test]
fn check_config_names_every_directory_problem() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("keyward.yaml");
    std::fs::write(
        &config,
        format!(
            r#"listen: {{ proxy: 127.0.0.1:1, ops: 127.0.0.1:2 }}
upstream: {{ address: 127.0.0.1:3 }}
store: {{ url: sqlite://{db} }}
routes:
  - path: /
    require: {{ min_security_level: EXTERNAL }}
identity:
  ldap:
    url: http://ldap.example.com
    ca: {dir}/missing-ca.pem
    bind_dn: {SERVICE_DN}
    bind_password_env: KEYWARD_TEST_LDAP_PASSWORD_NOT_SET
    user_base: ou=people,{SUFFIX}
    user_filter: "(uid=john)"
"#,
            db = dir.path().join("k.db").display(),
            dir = dir.path().display(),
        ),
    )
    .unwrap();
    let out = Command::new(common::BIN)
        .args(["check-config", "--config"])
        .arg(&config)
        .env_remove("KEYWARD_TEST_LDAP_PASSWORD_NOT_SET")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    for expected in [
        "identity.ldap.url",
        "identity.ldap.ca",
        "identity.ldap.bind_password_env",
        "KEYWARD_TEST_LDAP_PASSWORD_NOT_SET",
        "identity.ldap.user_filter",
        "{user}",
    ] {
        assert!(text.contains(expected), "{expected} missing from:\n{text}");
    }
}

#[test]
fn a_directory_outage_answers_503_while_cached_logins_keep_working() {
    let mut slapd = Slapd::start();
    let kw = keyward(&slapd, &slapd.plain_url(), "1h", None);
    assert_eq!(get_basic(&kw, "carol", "carol-directory-pw").status(), 200);

    slapd.stop();
    // A cached login is served; a new one gets 503 with Retry-After, never 401.
    assert_eq!(get_basic(&kw, "carol", "carol-directory-pw").status(), 200);
    let forwarded = kw.upstream().requests();
    for _ in 0..3 {
        let resp = get_basic(&kw, "dave", "dave-directory-pw");
        assert_eq!(resp.status(), 503);
        assert!(resp.headers().contains_key("retry-after"));
    }
    assert_eq!(kw.upstream().requests(), forwarded);
    assert!(metric(&kw, "keyward_directory_errors_total") >= 3);
    assert_eq!(metric(&kw, "keyward_directory_up"), 0);
    // The proxy still serves: ready.
    let ready = client().get(kw.ops_url("/readyz")).send().unwrap();
    assert_eq!(ready.status(), 200);
    assert_eq!(
        kw.stderr()
            .matches("the directory cannot be reached")
            .count(),
        1,
        "one line per transition:\n{}",
        kw.stderr()
    );

    // Back without a keyward restart.
    slapd.run();
    let echo = echoed(get_basic(&kw, "dave", "dave-directory-pw"));
    assert_eq!(echoed_header(&echo, "x-keyward-customer"), Some("cust-9"));
    assert_eq!(metric(&kw, "keyward_directory_up"), 1);
    assert_eq!(
        kw.stderr().matches("the directory answers again").count(),
        1
    );
}

fn database() -> ScratchDatabase {
    ScratchDatabase::create_blocking()
        .expect("this test needs PostgreSQL (KEYWARD_TEST_POSTGRES, default 127.0.0.1:5432)")
}

/// Polls `check` until it holds, for at most `within`.
fn wait_until(within: Duration, what: &str, mut check: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !check() {
        assert!(started.elapsed() < within, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    started.elapsed()
}

#[test]
fn directory_changes_reach_every_credential_on_two_replicas() {
    let slapd = Slapd::start();
    let database = database();
    let a = keyward(&slapd, &slapd.plain_url(), "2s", Some(database.url()));
    let b = keyward(&slapd, &slapd.plain_url(), "2s", Some(database.url()));

    // bob logs in through A, mints a token, creates a key; a signature key is enrolled.
    assert_eq!(get_basic(&a, "bob", "bob-directory-pw").status(), 200);
    let token = mint_token(&a, "bob", "bob-directory-pw");
    let key = own_api_key(&a, "bob", "bob-directory-pw");
    let signing = SigningKey::from_bytes(&[7; 32]);
    let keyid = enroll(&a, "bob", &signing);
    let mut nonce = 0u64;
    for kw in [&a, &b] {
        let echo = echoed(with_token(kw, &token));
        assert_eq!(
            echoed_header(&echo, "x-keyward-functions"),
            Some("CASE-SECMON-RO")
        );
        assert_eq!(with_key(kw, &key).status(), 200);
        nonce += 1;
        assert_eq!(signed_get(kw, &signing, &keyid, nonce), 200);
    }

    // carol and dave log in too: three directory users to revalidate. Each sweep reads each
    // group once and searches each user once; no group is asked about one user while the
    // groups say what keyward holds.
    for user in ["carol", "dave"] {
        let echo = echoed(get_basic(&a, user, &format!("{user}-directory-pw")));
        assert_eq!(echoed_header(&echo, "x-keyward-customer"), Some("cust-9"));
    }
    let sweeps = || {
        histogram(&a, "keyward_directory_sweep_seconds").1
            + histogram(&b, "keyward_directory_sweep_seconds").1
    };
    let (from, before) = (slapd.log_len(), sweeps());
    wait_until(Duration::from_secs(20), "three sweeps", || {
        sweeps() >= before + 3
    });
    let (swept, ops) = (sweeps() - before, slapd.ops_since(from));
    // A sweep may have been under way at either end.
    let (fewest, most) = (swept as usize - 1, swept as usize + 1);
    assert!(
        (2 * fewest..=2 * most).contains(&ops.group_reads),
        "{swept} sweeps: {ops:?}"
    );
    assert!(
        (3 * fewest..=3 * most).contains(&ops.user_searches),
        "{swept} sweeps: {ops:?}"
    );
    assert_eq!(ops.group_checks, Vec::<String>::new(), "{swept} sweeps");

    // Removed from the group: the forwarded functions change at the next revalidation, on
    // both replicas, for the key and the token alike.
    let from = slapd.log_len();
    slapd.modify(&format!(
        "dn: {SECOPS}\nchangetype: modify\ndelete: member\nmember: uid=bob,ou=people,{SUFFIX}\n"
    ));
    for kw in [&a, &b] {
        wait_until(Duration::from_secs(7), "functions updated", || {
            let echo = echoed(with_key(kw, &key));
            echoed_header(&echo, "x-keyward-functions")
                .unwrap_or("")
                .is_empty()
        });
        let echo = echoed(with_token(kw, &token));
        assert_eq!(
            echoed_header(&echo, "x-keyward-functions").unwrap_or(""),
            ""
        );
    }
    // The groups were asked about bob alone, the one whose groups changed.
    let checks = slapd.ops_since(from).group_checks;
    assert!(!checks.is_empty());
    assert!(checks.iter().all(|c| c.contains("uid=bob")), "{checks:#?}");

    // Locked in the directory (filtered out by user_filter): every credential is refused on
    // both replicas within revalidate_every + 5 s.
    slapd.modify(&format!(
        "dn: uid=bob,ou=people,{SUFFIX}\nchangetype: modify\nadd: description\ndescription: locked\n"
    ));
    let locked_at = Instant::now();
    for kw in [&a, &b] {
        wait_until(Duration::from_secs(7), "key refused", || {
            with_key(kw, &key).status() == 401
        });
    }
    assert!(locked_at.elapsed() < Duration::from_secs(7));
    for kw in [&a, &b] {
        assert_eq!(with_token(kw, &token).status(), 401);
        nonce += 1;
        assert_eq!(signed_get(kw, &signing, &keyid, nonce), 401);
        assert_eq!(get_basic(kw, "bob", "bob-directory-pw").status(), 401);
    }
    // Swept by one replica; the lock is audited with auth method LDAP.
    wait_until(Duration::from_secs(3), "lock counted", || {
        metric(&a, "keyward_directory_locks_total") + metric(&b, "keyward_directory_locks_total")
            == 1
    });
    let list = a.cli(&["user", "list"], None);
    let text = String::from_utf8_lossy(&list.stdout);
    let bob = text.lines().find(|l| l.contains("bob")).unwrap();
    assert!(bob.contains("true"), "{text}");
    let audit = a.cli(&["audit", "tail"], None);
    let audit = String::from_utf8_lossy(&audit.stdout);
    assert!(
        audit
            .lines()
            .any(|l| l.contains("user.lock") && l.contains("LDAP") && l.contains("bob")),
        "{audit}"
    );

    // Back in the directory: still locked in keyward until an operator unlocks them.
    slapd.modify(&format!(
        "dn: uid=bob,ou=people,{SUFFIX}\nchangetype: modify\ndelete: description\n"
    ));
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(get_basic(&a, "bob", "bob-directory-pw").status(), 401);
    assert_eq!(with_key(&b, &key).status(), 401);
}

fn histogram(kw: &Keyward, name: &str) -> (f64, u64) {
    let text = kw.metrics();
    let find = |suffix: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}_{suffix} ")))
            .map(|v| v.trim().parse::<f64>().unwrap())
            .unwrap_or(0.0)
    };
    (find("sum"), find("count") as u64)
}
