//! Audit records live in the store, written in the transaction of the change they describe:
//! `keyward audit tail` reads them back, after a `kill -9` as well, on SQLite and PostgreSQL.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test (or tool) fails loudly

mod common;

use common::{client, Keyward, Setup, ADMIN_PASSWORD};
use keyward::store::scratch::ScratchDatabase;
use serde_json::{json, Value};

fn tail(kw: &Keyward) -> Vec<Value> {
    let out = kw.cli(&["audit", "tail", "-n", "100"], None);
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn records_survive_a_crash(store_url: Option<String>) {
    let mut kw = Keyward::start_with(Setup {
        store_url,
        ..Setup::default()
    });
    kw.add_user("john", "john-password", &[]);
    let created: Value = client()
        .post(kw.url("/authentication/v1/user/john/apikey"))
        .basic_auth("admin", Some(ADMIN_PASSWORD))
        .header("content-type", "application/json")
        .body(json!({ "description": "audited" }).to_string())
        .send()
        .unwrap()
        .json()
        .unwrap();
    let prefix = created["data"]["keyDescriptor"]["prefix"]
        .as_str()
        .unwrap()
        .to_owned();
    let denied = client()
        .get(kw.url("/authentication/v1/user/admin/apikey"))
        .basic_auth("john", Some("john-password"))
        .send()
        .unwrap();
    assert_eq!(denied.status(), 403);
    let unauthenticated = client()
        .get(kw.url("/authentication/v1/user/admin/apikey"))
        .basic_auth("john", Some("wrong-password"))
        .send()
        .unwrap();
    assert_eq!(unauthenticated.status(), 401);
    // The answer was sent; nothing gets a chance to flush anything now.
    kw.signal(nix::sys::signal::Signal::SIGKILL);
    let _ = kw.child.wait();

    let records = tail(&kw);
    let find = |operation: &str| {
        records
            .iter()
            .find(|r| r["operation"] == operation)
            .unwrap_or_else(|| panic!("no {operation} record in {records:?}"))
    };
    let create = find("apikey.create");
    assert_eq!(create["actor"], "admin");
    assert_eq!(create["target_user"], "john");
    assert_eq!(create["target_credential"], prefix.as_str());
    assert_eq!(create["status"], 201);
    assert_eq!(create["source_ip"], "127.0.0.1");
    let listed = find("apikey.list");
    assert_eq!(
        (listed["actor"].as_str(), listed["status"].as_u64()),
        (Some("john"), Some(403))
    );
    let added: Vec<_> = records
        .iter()
        .filter(|r| r["operation"] == "user.create")
        .map(|r| (r["target_user"].as_str(), r["auth_method"].as_str()))
        .collect();
    assert_eq!(
        added,
        [
            (Some("admin"), Some("LOCAL")),
            (Some("john"), Some("LOCAL"))
        ],
        "the bootstrap administrator and the CLI's user"
    );
    assert!(records
        .windows(2)
        .all(|w| w[0]["seq"].as_i64() < w[1]["seq"].as_i64()));
    // Unauthenticated calls are logged, never stored.
    assert!(
        !records.iter().any(|r| r["auth_method"] == "-"),
        "{records:?}"
    );
}

#[test]
fn sqlite_audit_records_survive_a_crash() {
    records_survive_a_crash(None);
}

#[test]
fn postgres_audit_records_survive_a_crash() {
    let db = ScratchDatabase::create_blocking().expect("PostgreSQL for the audit test");
    records_survive_a_crash(Some(db.url().to_owned()));
}

/// The store's housekeeping (run when keyward starts, then every minute): tokens expired for
/// more than a day and, with `audit.retention`, audit records older than it are deleted; the
/// recently expired token and the newer records stay.
#[test]
fn housekeeping_deletes_long_expired_tokens_and_records_past_the_retention() {
    let mut kw = Keyward::start_with(Setup {
        extra: "audit: { retention: 30d }\n".into(),
        ..Setup::default()
    });
    kw.add_user("john", "john-password", &[]);
    let db = format!("sqlite://{}", kw.dir.path().join("keyward.db").display());
    let day_ms: i64 = 86_400_000;
    let now = keyward::store::now_ms();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let count = |sql: &'static str| {
        runtime.block_on(async {
            let pool = sqlx::SqlitePool::connect(&db).await.unwrap();
            let n: i64 = sqlx::query_scalar(sql).fetch_one(&pool).await.unwrap();
            pool.close().await;
            n
        })
    };
    // Two tokens as another replica (or time) would have left them, and the oldest audit
    // record aged past the retention.
    runtime.block_on(async {
        let pool = sqlx::SqlitePool::connect(&db).await.unwrap();
        for (name, expires) in [
            ("a".repeat(32), now - 2 * day_ms),
            ("b".repeat(32), now - 60_000),
        ] {
            sqlx::query(
                "INSERT INTO tokens (name, token_hash, owner_id, domain, level, created_at_ms, \
                 expires_at_ms) SELECT ?, ?, id, 'example.com', 'DEFAULT', ?, ? FROM users \
                 WHERE name = 'john'",
            )
            .bind(&name)
            .bind(name.as_bytes())
            .bind(expires - day_ms)
            .bind(expires)
            .execute(&pool)
            .await
            .unwrap();
        }
        sqlx::query("UPDATE audit SET at_ms = ? WHERE seq = (SELECT MIN(seq) FROM audit)")
            .bind(now - 31 * day_ms)
            .execute(&pool)
            .await
            .unwrap();
        pool.close().await;
    });
    let records = count("SELECT COUNT(*) FROM audit");
    assert!(records >= 2, "{records}");
    kw.restart();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while count("SELECT COUNT(*) FROM tokens") != 1 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(
        count("SELECT COUNT(*) FROM tokens WHERE name LIKE 'b%'"),
        1,
        "the recently expired token stays"
    );
    assert_eq!(count("SELECT COUNT(*) FROM tokens"), 1, "{}", kw.stderr());
    assert_eq!(count("SELECT COUNT(*) FROM audit"), records - 1);
    assert!(
        kw.stderr().contains("store housekeeping deleted"),
        "{}",
        kw.stderr()
    );
}
