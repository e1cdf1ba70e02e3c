//! The store contract, run against every backend: a SQLite file in a temporary directory and a
//! fresh PostgreSQL database (see [`super::scratch`]). Each test is written once, in terms of
//! `dyn Store`, and instantiated per backend by `contract_tests!`.

use super::scratch::ScratchDatabase;
use super::*;
use std::collections::BTreeSet;

/// A store under test and what keeps it alive (the temporary directory or database).
struct Subject {
    store: Arc<dyn Store>,
    _dir: Option<tempfile::TempDir>,
    _database: Option<ScratchDatabase>,
}

async fn sqlite() -> Subject {
    let dir = tempfile::tempdir().unwrap();
    let url = StoreUrl::Sqlite(dir.path().join("k.db"));
    Subject {
        store: connect(&url, patient(&url)).await.unwrap(),
        _dir: Some(dir),
        _database: None,
    }
}

async fn postgres() -> Subject {
    let database = ScratchDatabase::create()
        .await
        .expect("the tests need PostgreSQL (KEYWARD_TEST_POSTGRES, default 127.0.0.1:5432)");
    let url = StoreUrl::Postgres(database.url().to_owned());
    Subject {
        store: connect(&url, patient(&url)).await.unwrap(),
        _dir: None,
        _database: Some(database),
    }
}

/// The contract is about what the store answers, not how fast: 48 writes racing for one
/// user's row lock on a loaded 2-core CI machine can queue past the 2 s production wait for a
/// connection (CI saw `PoolTimedOut` once), so the suite waits longer.
fn patient(url: &StoreUrl) -> PoolSettings {
    PoolSettings {
        acquire_timeout: std::time::Duration::from_secs(60),
        ..PoolSettings::default_for(url)
    }
}

fn audit(operation: &str, target_user: &str) -> AuditEvent {
    AuditEvent {
        seq: 0,
        time: "2026-12-01T00:00:00.000Z".into(),
        request_id: "0123456789ABCDEF".into(),
        actor: "admin".into(),
        auth_method: "PASSWORD".into(),
        operation: operation.into(),
        target_user: target_user.into(),
        target_credential: String::new(),
        status: 200,
        outcome: "ok".into(),
        source_ip: Some("127.0.0.1".into()),
    }
}

fn new_user(name: &str) -> NewUser {
    NewUser {
        name: name.into(),
        domain: None,
        customer: Some("42".into()),
        functions: vec!["POWER-USER".into()],
        external: false,
        password_hash: "$argon2id$placeholder".into(),
    }
}

fn new_key(user: &User, description: &str) -> NewApiKey {
    NewApiKey {
        user_id: user.id,
        secret_hash: vec![1; 32],
        description: description.into(),
        created_by_id: user.id,
        created_by_name: user.name.clone(),
        valid_until_ms: 0,
        valid_sources: vec!["10.0.0.0/8".into()],
        functions: Some(vec!["A".into()]),
        customers: vec![],
        read_only: true,
        rate_limit: None,
        quota: None,
    }
}

fn new_token(n: u16, owner_id: i64, tenant: Option<&str>, expires_at_ms: i64) -> NewToken {
    NewToken {
        name: format!("{n:032x}"),
        token_hash: n.to_be_bytes().repeat(16),
        owner_id,
        domain: "example.com".into(),
        tenant: tenant.map(str::to_owned),
        level: "DEFAULT".into(),
        expires_at_ms,
        custom_source: None,
    }
}

async fn user(store: &dyn Store, name: &str) -> User {
    store
        .create_user(new_user(name), audit("user.create", name))
        .await
        .unwrap()
}

async fn users_round_trip_and_feed_changes(store: Arc<dyn Store>) {
    let before = store.latest_change().await.unwrap();
    let alice = user(store.as_ref(), "alice").await;
    assert_eq!(alice.functions, vec!["POWER-USER".to_string()]);
    assert!(matches!(
        store
            .create_user(new_user("alice"), audit("user.create", "alice"))
            .await,
        Err(StoreError::Conflict(_))
    ));
    assert!(store
        .set_user_locked(alice.id, true, audit("user.lock", "alice"))
        .await
        .unwrap());
    assert!(!store
        .set_user_locked(alice.id + 100, true, audit("user.lock", "nobody"))
        .await
        .unwrap());
    assert!(store
        .set_user_password(alice.id, "$argon2id$other", audit("user.passwd", "alice"))
        .await
        .unwrap());
    assert!(store
        .set_user_totp(alice.id, Some("SECRET"), audit("user.totp", "alice"))
        .await
        .unwrap());
    let fetched = store.user_by_name("alice").await.unwrap().unwrap();
    assert!(fetched.locked);
    assert_eq!(fetched.password_hash, "$argon2id$other");
    assert_eq!(fetched.totp_secret.as_deref(), Some("SECRET"));
    assert_eq!(store.user_by_id(alice.id).await.unwrap(), Some(fetched));
    assert_eq!(store.list_users().await.unwrap().len(), 1);
    let changes = store.changes_since(before, 10).await.unwrap();
    assert_eq!(changes.len(), 4);
    assert!(changes.iter().all(|c| c.user_id == alice.id));
    assert!(changes.iter().all(|c| c.kind == ChangeKind::User));
    assert_eq!(store.latest_change().await.unwrap(), changes[3].seq);
    assert_eq!(store.prune_changes(now_ms() + 1).await.unwrap(), 4);
}

async fn api_keys_get_increasing_ids_and_revocation_is_final(store: Arc<dyn Store>) {
    let pepper = store.api_key_pepper().await.unwrap();
    assert_eq!(pepper.len(), 32);
    assert_eq!(store.api_key_pepper().await.unwrap(), pepper, "made once");
    let bob = user(store.as_ref(), "bob").await;
    let a = || audit("apikey.manage", "bob");
    let first = store
        .create_api_key(new_key(&bob, "one"), a())
        .await
        .unwrap();
    let second = store
        .create_api_key(new_key(&bob, "two"), a())
        .await
        .unwrap();
    assert_eq!((first.key_id, second.key_id), (1, 2));
    assert_eq!(second.prefix(), format!("{:x}/2", bob.id));
    assert!(store
        .revoke_api_key(bob.id, 2, a())
        .await
        .unwrap()
        .is_some());
    assert!(store
        .revoke_api_key(bob.id, 2, a())
        .await
        .unwrap()
        .is_none());
    assert!(store.api_key(bob.id, 2).await.unwrap().is_none());
    let third = store
        .create_api_key(new_key(&bob, "three"), a())
        .await
        .unwrap();
    assert_eq!(third.key_id, 3, "a revoked key's id is not reused");
    let renewed = store
        .renew_api_key(bob.id, 1, 1234, None, None, a())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(renewed.valid_until_ms, 1234);
    assert_eq!(renewed.rate_limit, None);
    assert!(store
        .renew_api_key(bob.id, 2, 1, None, None, a())
        .await
        .unwrap()
        .is_none());
    // A key's own rate limit: stored at creation, kept by a renewal without one, replaced or
    // removed by a renewal with one.
    let own = Limit::new(2.5, 7).unwrap();
    let limited = store
        .create_api_key(
            NewApiKey {
                rate_limit: Some(own),
                ..new_key(&bob, "limited")
            },
            a(),
        )
        .await
        .unwrap();
    assert_eq!(limited.rate_limit, Some(own));
    let read = store
        .api_key(bob.id, limited.key_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(read.rate_limit, Some(own), "read back exactly");
    assert_eq!(read.rate_limit.unwrap().requests_per_second(), 2.5);
    let kept = store
        .renew_api_key(bob.id, limited.key_id, 99, None, None, a())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((kept.valid_until_ms, kept.rate_limit), (99, Some(own)));
    let other = Limit::new(1000.0, 1).unwrap();
    let replaced = store
        .renew_api_key(bob.id, limited.key_id, 99, Some(Some(other)), None, a())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(replaced.rate_limit, Some(other));
    let removed = store
        .renew_api_key(bob.id, limited.key_id, 99, Some(None), None, a())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(removed.rate_limit, None);
    // A quota likewise: stored at creation, kept by a renewal without one, replaced or removed
    // by a renewal with one, and carried over (or replaced) by a roll.
    let day = Quota::new(5, QuotaPeriod::Day).unwrap();
    let month = Quota::new(1_000_000_000_000, QuotaPeriod::Month).unwrap();
    let quoted = store
        .create_api_key(
            NewApiKey {
                quota: Some(day),
                ..new_key(&bob, "quoted")
            },
            a(),
        )
        .await
        .unwrap();
    assert_eq!(quoted.quota, Some(day));
    let read = store.api_key(bob.id, quoted.key_id).await.unwrap().unwrap();
    assert_eq!(read.quota, Some(day), "read back exactly");
    let renew = |quota| {
        let store = store.clone();
        async move {
            store
                .renew_api_key(bob.id, quoted.key_id, 0, None, quota, a())
                .await
                .unwrap()
                .unwrap()
                .quota
        }
    };
    assert_eq!(renew(None).await, Some(day));
    assert_eq!(renew(Some(Some(month))).await, Some(month));
    assert_eq!(renew(Some(None)).await, None);
    assert_eq!(renew(Some(Some(day))).await, Some(day));
    let rolled = |quota| ApiKeyRoll {
        secret_hash: vec![1; 32],
        created_by_id: bob.id,
        created_by_name: "bob".into(),
        now_ms: now_ms(),
        grace_ms: 60_000,
        max_lifetime_ms: MAX_LIFETIME_MS,
        keep_never_expires: true,
        quota,
    };
    let (_, carried) = store
        .roll_api_key(bob.id, quoted.key_id, rolled(None), a())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(carried.quota, Some(day), "a roll carries the quota over");
    let (_, replaced) = store
        .roll_api_key(bob.id, carried.key_id, rolled(Some(Some(month))), a())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(replaced.quota, Some(month));
    let (_, cleared) = store
        .roll_api_key(bob.id, replaced.key_id, rolled(Some(None)), a())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(cleared.quota, None);
    for key_id in [
        quoted.key_id,
        carried.key_id,
        replaced.key_id,
        cleared.key_id,
    ] {
        assert!(store
            .revoke_api_key(bob.id, key_id, a())
            .await
            .unwrap()
            .is_some());
    }
    assert!(store
        .revoke_api_key(bob.id, limited.key_id, a())
        .await
        .unwrap()
        .is_some());
    let usage = |at_ms| KeyUsage {
        user_id: bob.id,
        key_id: 1,
        at_ms,
        ip: format!("10.1.1.{at_ms}"),
    };
    store.record_api_key_usage(&[usage(99)]).await.unwrap();
    store.record_api_key_usage(&[usage(98)]).await.unwrap();
    let listed = store.list_api_keys(bob.id).await.unwrap();
    assert_eq!(listed.len(), 2);
    assert_eq!(
        listed[0].last_used_ip.as_deref(),
        Some("10.1.1.99"),
        "older use ignored"
    );
    assert_eq!(listed[0].functions, Some(vec!["A".to_string()]));
    assert_eq!(listed[0].valid_sources, vec!["10.0.0.0/8".to_string()]);
    assert!(listed[0].read_only);
    let other = user(store.as_ref(), "other").await;
    let theirs = store
        .create_api_key(new_key(&other, "x"), a())
        .await
        .unwrap();
    assert_eq!(theirs.key_id, 1, "ids count per user");
}

async fn signature_keys_enroll_and_delete(store: Arc<dyn Store>) {
    let carol = user(store.as_ref(), "carol").await;
    let a = || audit("signature.manage", "carol");
    let enroll = |description: &str| NewSignatureKey {
        user_id: carol.id,
        public_key: vec![7; 32],
        description: description.into(),
        valid_until_ms: 0,
        valid_sources: vec![],
    };
    let one = store
        .create_signature_key(enroll("one"), a())
        .await
        .unwrap();
    let two = store
        .create_signature_key(enroll("two"), a())
        .await
        .unwrap();
    assert_eq!((one.key_id, two.key_id), (1, 2));
    assert_eq!(store.signature_key(carol.id, 1).await.unwrap(), Some(one));
    assert!(store.delete_signature_key(carol.id, 1, a()).await.unwrap());
    assert!(!store.delete_signature_key(carol.id, 1, a()).await.unwrap());
    assert!(store.signature_key(carol.id, 1).await.unwrap().is_none());
    let three = store
        .create_signature_key(enroll("three"), a())
        .await
        .unwrap();
    assert_eq!(three.key_id, 3);
    store
        .record_signature_key_usage(&[KeyUsage {
            user_id: carol.id,
            key_id: 2,
            at_ms: 5,
            ip: "10.0.0.5".into(),
        }])
        .await
        .unwrap();
    let listed = store.list_signature_keys(carol.id).await.unwrap();
    assert_eq!(listed.iter().map(|k| k.key_id).collect::<Vec<_>>(), [2, 3]);
    assert_eq!(listed[0].last_used_at_ms, 5);
}

async fn tokens_are_found_listed_counted_and_deleted(store: Arc<dyn Store>) {
    let carol = user(store.as_ref(), "carol").await;
    let dave = user(store.as_ref(), "dave").await;
    let now = now_ms();
    let a = || audit("token.mint", "carol");
    assert_eq!(store.count_tokens(carol.id, now).await.unwrap(), 0);
    let one = store
        .create_token(new_token(1, carol.id, None, now + 60_000), None, a())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(one.owner_name, "carol");
    store
        .create_token(new_token(2, carol.id, Some("t1"), now + 60_000), None, a())
        .await
        .unwrap();
    store
        .create_token(new_token(3, carol.id, None, now - 1), None, a())
        .await
        .unwrap();
    store
        .create_token(new_token(4, dave.id, None, now + 60_000), None, a())
        .await
        .unwrap();
    assert!(store
        .create_token(new_token(1, dave.id, None, now + 60_000), None, a())
        .await
        .is_err());
    assert_eq!(
        store.count_tokens(carol.id, now).await.unwrap(),
        2,
        "the expired token and dave's are not counted; the tenant token is"
    );
    assert_eq!(store.count_tokens(dave.id, now).await.unwrap(), 1);
    assert_eq!(
        store.token_by_hash(&one.token_hash).await.unwrap(),
        Some(one.clone())
    );
    let owned = store
        .list_tokens(
            TokenScope::Owner {
                owner_id: carol.id,
                domain: "example.com".into(),
            },
            now,
        )
        .await
        .unwrap();
    assert_eq!(owned, vec![one.clone()]);
    let tenant = store
        .list_tokens(TokenScope::Tenant("t1".into()), now)
        .await
        .unwrap();
    assert_eq!(tenant.len(), 1);
    assert!(store.delete_token(&one.name, a()).await.unwrap());
    assert!(!store.delete_token(&one.name, a()).await.unwrap());
    assert!(store.token_by_name(&one.name).await.unwrap().is_none());
    // Locking deletes the user's tokens.
    store
        .set_user_locked(dave.id, true, audit("user.lock", "dave"))
        .await
        .unwrap();
    assert_eq!(store.count_tokens(dave.id, now).await.unwrap(), 0);
}

/// Each change carries its audit record, written in its transaction; a write that changes
/// nothing records nothing, and creates name the credential they made.
async fn audit_records_travel_with_their_changes(store: Arc<dyn Store>) {
    let erin = user(store.as_ref(), "erin").await;
    let key = store
        .create_api_key(new_key(&erin, "k"), audit("apikey.create", "erin"))
        .await
        .unwrap();
    assert!(store
        .revoke_api_key(erin.id, 9, audit("apikey.revoke", "erin"))
        .await
        .unwrap()
        .is_none());
    store
        .append_audit(AuditEvent {
            status: 403,
            outcome: "access.denied".into(),
            ..audit("apikey.list", "erin")
        })
        .await
        .unwrap();
    let records = store.audit_tail(10).await.unwrap();
    let operations: Vec<&str> = records.iter().map(|r| r.operation.as_str()).collect();
    assert_eq!(operations, ["user.create", "apikey.create", "apikey.list"]);
    assert_eq!(records[1].target_credential, key.prefix());
    assert_eq!(records[2].status, 403);
    assert!(records.windows(2).all(|w| w[0].seq < w[1].seq));
    let after_first = store.audit_since(records[0].seq, 10).await.unwrap();
    assert_eq!(after_first, records[1..].to_vec());
    assert_eq!(store.audit_tail(1).await.unwrap(), records[2..].to_vec());
}

/// Housekeeping deletes tokens expired for longer than a day (not the recently expired, not
/// the live) and, only with a retention, the audit records older than it, oldest first.
async fn housekeeping_deletes_long_expired_tokens_and_old_audit_records(store: Arc<dyn Store>) {
    let fay = user(store.as_ref(), "fay").await;
    let now = now_ms();
    let day = EXPIRED_TOKEN_KEEP.as_millis() as i64;
    let a = || audit("token.mint", "fay");
    let token = |n, expires| {
        let store = store.clone();
        async move {
            let new = new_token(n, fay.id, None, expires);
            store.create_token(new, None, a()).await.unwrap().unwrap()
        }
    };
    let live = token(1, now + 60_000).await;
    let recently_expired = token(2, now - 1).await;
    let long_expired = [token(3, now - day - 1).await, token(4, now - 3 * day).await];
    let records = store.audit_tail(100).await.unwrap();
    assert_eq!(records.len(), 5, "user.create and four mints: {records:?}");

    // One batch is at most `limit` rows.
    assert_eq!(store.prune_expired_tokens(now - day, 1).await.unwrap(), 1);
    assert_eq!(
        housekeep(store.as_ref(), now, keep_usage(None))
            .await
            .unwrap(),
        Pruned {
            tokens: 1,
            ..Pruned::default()
        }
    );
    for gone in &long_expired {
        assert!(store.token_by_name(&gone.name).await.unwrap().is_none());
    }
    for kept in [&live, &recently_expired] {
        assert!(store.token_by_name(&kept.name).await.unwrap().is_some());
    }
    assert_eq!(
        store.audit_tail(100).await.unwrap(),
        records,
        "no retention: all kept"
    );

    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let cut = now_ms();
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    store
        .append_audit(audit("apikey.list", "fay"))
        .await
        .unwrap();
    assert_eq!(store.prune_audit(cut, 1).await.unwrap(), 1);
    assert_eq!(
        store.audit_tail(100).await.unwrap()[0],
        records[1],
        "oldest first"
    );
    let later = now_ms();
    let retention = std::time::Duration::from_millis((later - cut) as u64);
    assert_eq!(
        housekeep(store.as_ref(), later, keep_usage(Some(retention)))
            .await
            .unwrap(),
        Pruned {
            audit: 4,
            ..Pruned::default()
        }
    );
    let left = store.audit_tail(100).await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].operation, "apikey.list");
}

/// A housekeeping retention that keeps every usage row these tests write.
fn keep_usage(audit: Option<std::time::Duration>) -> Retention {
    Retention {
        audit,
        usage: std::time::Duration::from_secs(3650 * 86_400),
    }
}

/// Usage counts are added to their (key, hour) rows: a second batch for the same hour adds to
/// it, other hours and keys get rows of their own, concurrent batches (replicas flushing
/// together) lose nothing, a range reads the hours in it oldest first, and housekeeping deletes
/// hours older than the usage retention.
async fn usage_counts_add_up_per_key_and_hour(store: Arc<dyn Store>) {
    let hour = HOUR_MS;
    let base = hour_start(now_ms()) - 10 * hour;
    let count = |key_id, hour_ms, accepted, refused, rate_limited| UsageCount {
        user_id: 7,
        key_id,
        hour_ms,
        accepted,
        refused,
        rate_limited,
    };
    store
        .add_api_key_usage(&[count(1, base, 3, 1, 0), count(1, base + hour, 1, 0, 0)])
        .await
        .unwrap();
    store
        .add_api_key_usage(&[count(1, base, 2, 0, 5), count(2, base, 9, 9, 9)])
        .await
        .unwrap();
    store.add_api_key_usage(&[]).await.unwrap();
    assert_eq!(
        store
            .api_key_usage(7, 1, base, base + 2 * hour)
            .await
            .unwrap(),
        vec![count(1, base, 5, 1, 5), count(1, base + hour, 1, 0, 0)]
    );
    // The range is [from, to): the end excludes its own hour.
    assert_eq!(
        store
            .api_key_usage(7, 1, base + hour, base + 2 * hour)
            .await
            .unwrap(),
        vec![count(1, base + hour, 1, 0, 0)]
    );
    assert_eq!(
        store.api_key_usage(7, 1, base, base + hour).await.unwrap(),
        vec![count(1, base, 5, 1, 5)]
    );
    assert!(store
        .api_key_usage(7, 3, base, base + hour)
        .await
        .unwrap()
        .is_empty());
    assert!(store
        .api_key_usage(8, 1, base, base + hour)
        .await
        .unwrap()
        .is_empty());

    // Sixteen writers adding to the same two rows at once, in opposite orders: every count
    // arrives (no lost update, no deadlock).
    let writers: Vec<_> = (0..16)
        .map(|n| {
            let store = store.clone();
            let mut batch = vec![count(3, base, 1, 2, 3), count(3, base + hour, 1, 0, 0)];
            if n % 2 == 1 {
                batch.reverse();
            }
            tokio::spawn(async move { store.add_api_key_usage(&batch).await })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap().unwrap();
    }
    assert_eq!(
        store
            .api_key_usage(7, 3, base, base + 2 * hour)
            .await
            .unwrap(),
        vec![count(3, base, 16, 32, 48), count(3, base + hour, 16, 0, 0)]
    );

    // Housekeeping at 10.5 hours after the first hour began: it ended 9.5 hours before, so a
    // retention of 9.5 hours keeps it and one of 8.5 hours deletes it; the next hour stays.
    let now = base + 10 * hour + hour / 2;
    let retention = |hours_x2: u64| Retention {
        audit: None,
        usage: std::time::Duration::from_secs(hours_x2 * 1800),
    };
    assert_eq!(
        housekeep(store.as_ref(), now, retention(19))
            .await
            .unwrap()
            .usage,
        0
    );
    assert_eq!(
        store.prune_api_key_usage(base + 1, 1).await.unwrap(),
        1,
        "a batch is at most `limit` rows"
    );
    assert_eq!(
        housekeep(store.as_ref(), now, retention(17))
            .await
            .unwrap()
            .usage,
        2,
        "the other two rows of the first hour"
    );
    for key_id in [1, 2, 3] {
        let left = store
            .api_key_usage(7, key_id, base - hour, base + 2 * hour)
            .await
            .unwrap();
        assert!(left.iter().all(|c| c.hour_ms == base + hour), "{left:?}");
    }
}

/// Mints racing for the last slots under `limits.tokens_per_user` never pass it: the count
/// and the insert are one transaction (expired tokens do not count).
async fn concurrent_mints_never_pass_the_cap(store: Arc<dyn Store>) {
    let ivan = user(store.as_ref(), "ivan").await;
    let now = now_ms();
    let a = || audit("token.mint", "ivan");
    for (n, expires) in [(100, now + 60_000), (101, now - 1)] {
        let new = new_token(n, ivan.id, None, expires);
        assert!(store.create_token(new, None, a()).await.unwrap().is_some());
    }
    let mints: Vec<_> = (0..16u16)
        .map(|n| {
            let store = store.clone();
            let new = new_token(200 + n, ivan.id, None, now + 60_000);
            tokio::spawn(async move { store.create_token(new, Some(4), a()).await })
        })
        .collect();
    let mut made = 0;
    for mint in mints {
        made += usize::from(mint.await.unwrap().unwrap().is_some());
    }
    assert_eq!(made, 3, "one unexpired token held, cap 4");
    assert_eq!(store.count_tokens(ivan.id, now_ms()).await.unwrap(), 4);
}

/// Concurrent creates for one user get distinct consecutive ids (no `MAX(key_id) + 1` race
/// under READ COMMITTED), alongside last-use writes, with no write refused.
async fn concurrent_creates_get_distinct_ids(store: Arc<dyn Store>) {
    let frank = user(store.as_ref(), "frank").await;
    store
        .create_api_key(new_key(&frank, "used"), audit("apikey.create", "frank"))
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for i in 0..48 {
        let store = store.clone();
        let frank = frank.clone();
        tasks.push(tokio::spawn(async move {
            match i % 3 {
                0 => store
                    .record_api_key_usage(&[KeyUsage {
                        user_id: frank.id,
                        key_id: 1,
                        at_ms: i,
                        ip: "10.1.1.1".into(),
                    }])
                    .await
                    .map(|_| ()),
                1 => store
                    .create_api_key(new_key(&frank, &format!("k{i}")), audit("c", "frank"))
                    .await
                    .map(|_| ()),
                _ => store
                    .create_signature_key(
                        NewSignatureKey {
                            user_id: frank.id,
                            public_key: vec![1; 32],
                            description: format!("s{i}"),
                            valid_until_ms: 0,
                            valid_sources: vec![],
                        },
                        audit("c", "frank"),
                    )
                    .await
                    .map(|_| ()),
            }
        }));
    }
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    let keys: Vec<i64> = store
        .list_api_keys(frank.id)
        .await
        .unwrap()
        .iter()
        .map(|k| k.key_id)
        .collect();
    assert_eq!(keys, (1..=17).collect::<Vec<_>>());
    let signatures: Vec<i64> = store
        .list_signature_keys(frank.id)
        .await
        .unwrap()
        .iter()
        .map(|k| k.key_id)
        .collect();
    assert_eq!(signatures, (1..=16).collect::<Vec<_>>());
}

/// A follower reading `seq > last` while writers commit concurrently sees every change: a
/// row never commits behind a position the follower already passed.
async fn a_concurrent_follower_misses_no_change(store: Arc<dyn Store>) {
    const WRITES: usize = 200;
    let start = store.latest_change().await.unwrap();
    // Distinct users: no row lock orders these writers, only the feed's own rule does.
    let writers: Vec<_> = (0..WRITES)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                user(store.as_ref(), &format!("user{i}")).await;
            })
        })
        .collect();
    let follower = {
        let store = store.clone();
        tokio::spawn(async move {
            let mut seen = BTreeSet::new();
            let mut last = start;
            while seen.len() < WRITES {
                for change in store.changes_since(last, 1000).await.unwrap() {
                    assert!(change.seq > last);
                    last = change.seq;
                    seen.insert(change.seq);
                }
                tokio::task::yield_now().await;
            }
            seen
        })
    };
    for writer in writers {
        writer.await.unwrap();
    }
    let seen = tokio::time::timeout(std::time::Duration::from_secs(20), follower)
        .await
        .expect("the follower saw every change")
        .unwrap();
    let all: BTreeSet<i64> = store
        .changes_since(start, 1000)
        .await
        .unwrap()
        .iter()
        .map(|c| c.seq)
        .collect();
    assert_eq!(seen, all);
}

/// Of concurrent deletes of one token and concurrent creates of one user name, exactly one
/// wins; the pepper is the same for everyone asking at once.
async fn races_have_one_winner(store: Arc<dyn Store>) {
    let heidi = user(store.as_ref(), "heidi").await;
    let token = store
        .create_token(
            new_token(9, heidi.id, None, now_ms() + 60_000),
            None,
            audit("t", "heidi"),
        )
        .await
        .unwrap()
        .unwrap();
    let deletes: Vec<_> = (0..8)
        .map(|_| {
            let store = store.clone();
            let name = token.name.clone();
            tokio::spawn(async move { store.delete_token(&name, audit("d", "heidi")).await })
        })
        .collect();
    let mut won = 0;
    for delete in deletes {
        won += usize::from(delete.await.unwrap().unwrap());
    }
    assert_eq!(won, 1);
    let creates: Vec<_> = (0..8)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .create_user(new_user("ivan"), audit("c", "ivan"))
                    .await
            })
        })
        .collect();
    let mut created = 0;
    for create in creates {
        match create.await.unwrap() {
            Ok(_) => created += 1,
            Err(StoreError::Conflict(_)) => {}
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert_eq!(created, 1);
    let peppers: Vec<_> = (0..8)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { store.api_key_pepper().await.unwrap() })
        })
        .collect();
    let mut distinct = BTreeSet::new();
    for pepper in peppers {
        distinct.insert(pepper.await.unwrap());
    }
    assert_eq!(distinct.len(), 1);
}

async fn directory_users_are_upserted_and_revalidated(store: Arc<dyn Store>) {
    let before = store.latest_change().await.unwrap();
    let login = |functions: &[&str], customer: Option<&str>, seen: Option<i64>| DirectoryLogin {
        source: UserSource::Ldap,
        name: "dora".into(),
        customer: customer.map(str::to_owned),
        functions: functions.iter().map(|f| f.to_string()).collect(),
        external: false,
        seen_ms: seen,
    };
    let now = now_ms();
    let dora = store
        .upsert_directory_user(login(&["A"], Some("c1"), Some(now)), audit("", "dora"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(dora.source, UserSource::Ldap);
    assert_eq!(dora.password_hash, "", "no local password");
    assert_eq!(
        (dora.functions.clone(), dora.customer.as_deref()),
        (vec!["A".to_string()], Some("c1"))
    );
    // The same answer again: no change published, no audit record.
    let again = store
        .upsert_directory_user(login(&["A"], Some("c1"), Some(now + 1)), audit("", "dora"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(again.id, dora.id);
    let changes = store.changes_since(before, 10).await.unwrap();
    assert_eq!(changes.len(), 1, "created once");
    // The directory changed the groups: updated, published.
    let moved = store
        .upsert_directory_user(login(&["B"], None, None), audit("", "dora"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (moved.functions, moved.customer),
        (vec!["B".to_string()], None)
    );
    assert_eq!(store.changes_since(before, 10).await.unwrap().len(), 2);
    let records = store.audit_tail(10).await.unwrap();
    let operations: Vec<_> = records.iter().map(|r| r.operation.as_str()).collect();
    assert!(
        operations.ends_with(&["user.create", "user.update"]),
        "{operations:?}"
    );
    // A local user's name is never taken over by the directory.
    let local = user(store.as_ref(), "lou").await;
    assert_eq!(local.source, UserSource::Local);
    let taken = store
        .upsert_directory_user(
            DirectoryLogin {
                name: "lou".into(),
                ..login(&[], None, Some(now))
            },
            audit("", "lou"),
        )
        .await
        .unwrap();
    assert_eq!(taken, None);
    assert_eq!(store.user_by_name("lou").await.unwrap().unwrap(), local);

    // Revalidated: those seen lately, or holding live credentials; never local or locked ones.
    let idle = store
        .upsert_directory_user(
            DirectoryLogin {
                name: "idle".into(),
                ..login(&[], None, Some(now - 3_600_000))
            },
            audit("", "idle"),
        )
        .await
        .unwrap()
        .unwrap();
    let ids = |users: Vec<User>| users.into_iter().map(|u| u.id).collect::<Vec<_>>();
    let due = store
        .directory_users_to_revalidate(0, 10, now - 60_000, now)
        .await
        .unwrap();
    assert_eq!(ids(due), vec![dora.id]);
    store
        .create_token(
            new_token(9, idle.id, None, now + 60_000),
            None,
            audit("token.mint", "idle"),
        )
        .await
        .unwrap();
    let due = store
        .directory_users_to_revalidate(0, 10, now - 60_000, now)
        .await
        .unwrap();
    assert_eq!(ids(due), vec![dora.id, idle.id]);
    // In batches, by id.
    let first = store
        .directory_users_to_revalidate(0, 1, now - 60_000, now)
        .await
        .unwrap();
    assert_eq!(ids(first), vec![dora.id]);
    let next = store
        .directory_users_to_revalidate(dora.id, 1, now - 60_000, now)
        .await
        .unwrap();
    assert_eq!(ids(next), vec![idle.id]);
    store
        .set_user_locked(dora.id, true, audit("user.lock", "dora"))
        .await
        .unwrap();
    let due = store
        .directory_users_to_revalidate(0, 10, now - 60_000, now)
        .await
        .unwrap();
    assert_eq!(
        ids(due),
        vec![idle.id],
        "locked users are not searched again"
    );

    // OpenID Connect users: their own source; neither provider takes over the other's users,
    // and the directory's sweep never searches for them.
    let olga = store
        .upsert_directory_user(
            DirectoryLogin {
                source: UserSource::Oidc,
                name: "olga".into(),
                ..login(&["A"], None, Some(now))
            },
            audit("", "olga"),
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (olga.source, olga.password_hash.as_str()),
        (UserSource::Oidc, "")
    );
    for (source, name) in [(UserSource::Oidc, "idle"), (UserSource::Ldap, "olga")] {
        let taken = store
            .upsert_directory_user(
                DirectoryLogin {
                    source,
                    name: name.into(),
                    ..login(&["POWER-USER"], None, Some(now))
                },
                audit("", name),
            )
            .await
            .unwrap();
        assert_eq!(taken, None, "{source:?} took over {name}");
    }
    assert_eq!(store.user_by_name("olga").await.unwrap().unwrap(), olga);
    let due = store
        .directory_users_to_revalidate(0, 10, now - 60_000, now)
        .await
        .unwrap();
    assert_eq!(
        ids(due),
        vec![idle.id],
        "OIDC users are not the directory's"
    );
}

/// The directory sweep is a lease held for the whole sweep: one holder at a time however long
/// it sweeps, taken over only when it runs out, and the next sweep `every` after the last one
/// finished.
async fn the_directory_sweep_is_a_lease_held_for_the_whole_sweep(store: Arc<dyn Store>) {
    const EVERY: i64 = 60_000;
    const LEASE: i64 = 30_000;
    let now = now_ms();
    // Racers: exactly one holds it.
    let racing = (0..8).map(|i| {
        let store = store.clone();
        tokio::spawn(async move {
            let holder = format!("racer-{i}");
            let won = store
                .claim_directory_sweep(&holder, EVERY, LEASE, now)
                .await
                .unwrap();
            won.then_some(holder)
        })
    });
    let mut winners = Vec::new();
    for race in racing {
        winners.extend(race.await.unwrap());
    }
    assert_eq!(winners.len(), 1, "{winners:?}");
    let holder = winners.remove(0);

    // Held, and renewed between batches: nobody else gets it, not even long after `every`
    // (a sweep slower than the period is not overlapped).
    let mut at = now;
    for _ in 0..10 {
        at += LEASE / 2;
        assert!(!store
            .claim_directory_sweep("other", EVERY, LEASE, at)
            .await
            .unwrap());
        assert!(store
            .renew_directory_sweep(&holder, LEASE, at)
            .await
            .unwrap());
    }
    assert!(at - now > 2 * EVERY);
    assert!(!store
        .claim_directory_sweep("other", EVERY, LEASE, at + LEASE - 1)
        .await
        .unwrap());
    // Only the holder renews or finishes it.
    assert!(!store
        .renew_directory_sweep("other", LEASE, at)
        .await
        .unwrap());
    assert!(!store.finish_directory_sweep("other", at).await.unwrap());

    // Not renewed (the replica crashed): once the lease ran out another replica takes over,
    // and the crashed one can neither renew nor finish what it no longer holds.
    let ran_out = at + LEASE;
    let racing = (0..8).map(|i| {
        let store = store.clone();
        tokio::spawn(async move {
            let holder = format!("successor-{i}");
            let won = store
                .claim_directory_sweep(&holder, EVERY, LEASE, ran_out)
                .await
                .unwrap();
            won.then_some(holder)
        })
    });
    let mut successors = Vec::new();
    for race in racing {
        successors.extend(race.await.unwrap());
    }
    assert_eq!(successors.len(), 1, "{successors:?}");
    let successor = successors.remove(0);
    assert!(!store
        .renew_directory_sweep(&holder, LEASE, ran_out + 1)
        .await
        .unwrap());
    assert!(!store
        .finish_directory_sweep(&holder, ran_out + 1)
        .await
        .unwrap());

    // Finished: the next sweep starts `every` after the finish, not after the claim.
    let finished = ran_out + 5_000;
    assert!(store
        .finish_directory_sweep(&successor, finished)
        .await
        .unwrap());
    assert!(!store
        .renew_directory_sweep(&successor, LEASE, finished)
        .await
        .unwrap());
    assert!(!store
        .claim_directory_sweep("next", EVERY, LEASE, finished + EVERY - 1)
        .await
        .unwrap());
    assert!(store
        .claim_directory_sweep("next", EVERY, LEASE, finished + EVERY)
        .await
        .unwrap());
    assert!(!store
        .claim_directory_sweep("after", EVERY, LEASE, finished + EVERY + 1)
        .await
        .unwrap());
}

macro_rules! contract_tests {
    ($backend:ident: $($test:ident),* $(,)?) => {
        mod $backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $test() {
                    let subject = super::$backend().await;
                    super::$test(subject.store.clone()).await;
                }
            )*
        }
    };
}

contract_tests!(sqlite:
    users_round_trip_and_feed_changes,
    usage_counts_add_up_per_key_and_hour,
    api_keys_get_increasing_ids_and_revocation_is_final,
    signature_keys_enroll_and_delete,
    tokens_are_found_listed_counted_and_deleted,
    audit_records_travel_with_their_changes,
    housekeeping_deletes_long_expired_tokens_and_old_audit_records,
    concurrent_mints_never_pass_the_cap,
    concurrent_creates_get_distinct_ids,
    a_concurrent_follower_misses_no_change,
    races_have_one_winner,
    directory_users_are_upserted_and_revalidated,
    the_directory_sweep_is_a_lease_held_for_the_whole_sweep,
);

contract_tests!(postgres:
    users_round_trip_and_feed_changes,
    usage_counts_add_up_per_key_and_hour,
    api_keys_get_increasing_ids_and_revocation_is_final,
    signature_keys_enroll_and_delete,
    tokens_are_found_listed_counted_and_deleted,
    audit_records_travel_with_their_changes,
    housekeeping_deletes_long_expired_tokens_and_old_audit_records,
    concurrent_mints_never_pass_the_cap,
    concurrent_creates_get_distinct_ids,
    a_concurrent_follower_misses_no_change,
    races_have_one_winner,
    directory_users_are_upserted_and_revalidated,
    the_directory_sweep_is_a_lease_held_for_the_whole_sweep,
);

/// Replicas starting together against an empty database migrate it once, without racing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_replicas_migrate_an_empty_database_together() {
    let database = ScratchDatabase::create().await.unwrap();
    let url = StoreUrl::Postgres(database.url().to_owned());
    let opens: Vec<_> = (0..6)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { connect(&url, PoolSettings::default_for(&url)).await })
        })
        .collect();
    let mut stores = Vec::new();
    for open in opens {
        stores.push(open.await.unwrap().expect("every replica opens the store"));
    }
    let first = stores[0].api_key_pepper().await.unwrap();
    for store in &stores {
        assert_eq!(store.api_key_pepper().await.unwrap(), first);
    }
}

/// A committed change wakes every listener; an uncommitted one does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_changes_wake_listeners() {
    let subject = postgres().await;
    let registry_gauge = || prometheus::IntGauge::new("listening", "test").unwrap();
    let signals: Vec<Arc<FeedSignal>> = (0..2)
        .map(|_| {
            Arc::new(FeedSignal {
                wake: tokio::sync::Notify::new(),
                listening: registry_gauge(),
            })
        })
        .collect();
    for signal in &signals {
        assert!(subject.store.listen(signal.clone()));
    }
    for signal in &signals {
        // The first wake follows the connection (catch-up); then each change wakes again.
        tokio::time::timeout(std::time::Duration::from_secs(10), signal.wake.notified())
            .await
            .expect("woken once listening");
        assert_eq!(signal.listening.get(), 1);
    }
    user(subject.store.as_ref(), "judy").await;
    for signal in &signals {
        tokio::time::timeout(std::time::Duration::from_secs(5), signal.wake.notified())
            .await
            .expect("a change wakes the listener");
    }
}
