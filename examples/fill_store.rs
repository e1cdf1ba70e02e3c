//! Fills a keyward store with many API keys and gateway tokens, fast, for the scale harness
//! (`scripts/scale.sh`): rows are written straight into the tables in large transactions,
//! with secrets made and hashed exactly as keyward makes them (`kw_` secrets with their
//! checksum, HMAC-SHA-256 under the store's own pepper), so the keys work on the proxy as if
//! the admin API had created them. Creating a million keys through the admin API (one
//! transaction and one audit record each) would take longer than every measurement after it.
//!
//! `cargo run --release --example fill_store -- STORE_URL USER API_KEYS TOKENS OUT_DIR`
//!
//! The store must exist with USER in it (start keyward once with a bootstrap administrator).
//! Writes OUT_DIR/api_keys.txt and OUT_DIR/tokens.txt, one credential per line, and moves the
//! user's next key id past the keys written so that later keys do not collide.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test (or tool) fails loudly

use keyward_auth::api_key::{generate_secret, KeyHasher};
use keyward_auth::token;
use keyward_store::{PoolSettings, StoreUrl};
use std::io::Write;
use std::time::{Duration, Instant};

/// Rows per INSERT statement (SQLite's limit on bound values is 32 766; 9 values a row).
const ROWS_PER_STATEMENT: usize = 2_000;
/// Statements per transaction.
const STATEMENTS_PER_TRANSACTION: usize = 25;

struct KeyRow {
    key_id: i64,
    hash: Vec<u8>,
}

struct TokenRow {
    name: String,
    hash: Vec<u8>,
}

fn usage() -> ! {
    eprintln!("usage: fill_store STORE_URL USER API_KEYS TOKENS OUT_DIR");
    std::process::exit(2)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// The same SQL on both backends: multi-row INSERTs built by sqlx's `QueryBuilder` (a macro
/// rather than a generic function: sqlx's executor bounds do not name a borrowed builder).
macro_rules! fill_with {
    ($db:ty, $pool:expr, $rows:expr) => {{
        let pool = $pool;
        let rows: &Rows<'_> = $rows;
        for batch in rows
            .keys
            .chunks(ROWS_PER_STATEMENT * STATEMENTS_PER_TRANSACTION)
        {
            let mut tx = pool.begin().await.expect("a transaction");
            for chunk in batch.chunks(ROWS_PER_STATEMENT) {
                let mut insert = sqlx::QueryBuilder::<$db>::new(
                    "INSERT INTO api_keys (user_id, key_id, secret_hash, description, \
                     created_at_ms, created_by_id, created_by_name, valid_until_ms, read_only) ",
                );
                insert.push_values(chunk, |mut row, key| {
                    row.push_bind(rows.user_id)
                        .push_bind(key.key_id)
                        .push_bind(key.hash.clone())
                        .push_bind("scale harness")
                        .push_bind(rows.now)
                        .push_bind(rows.user_id)
                        .push_bind(rows.user_name.to_owned())
                        .push_bind(rows.until)
                        .push_bind(false);
                });
                insert
                    .build()
                    .execute(&mut *tx)
                    .await
                    .expect("the keys are written");
            }
            tx.commit().await.expect("the keys are committed");
        }
        let next = rows.first_key_id + rows.keys.len() as i64;
        let mut update = sqlx::QueryBuilder::<$db>::new("UPDATE users SET next_api_key_id = ");
        update
            .push_bind(next)
            .push(" WHERE id = ")
            .push_bind(rows.user_id);
        update
            .build()
            .execute(pool)
            .await
            .expect("the next key id moves on");
        for batch in rows
            .tokens
            .chunks(ROWS_PER_STATEMENT * STATEMENTS_PER_TRANSACTION)
        {
            let mut tx = pool.begin().await.expect("a transaction");
            for chunk in batch.chunks(ROWS_PER_STATEMENT) {
                let mut insert = sqlx::QueryBuilder::<$db>::new(
                    "INSERT INTO tokens (name, token_hash, owner_id, domain, level, \
                     created_at_ms, expires_at_ms) ",
                );
                insert.push_values(chunk, |mut row, token| {
                    row.push_bind(token.name.clone())
                        .push_bind(token.hash.clone())
                        .push_bind(rows.user_id)
                        .push_bind("scale")
                        .push_bind("DEFAULT")
                        .push_bind(rows.now)
                        .push_bind(rows.until);
                });
                insert
                    .build()
                    .execute(&mut *tx)
                    .await
                    .expect("the tokens are written");
            }
            tx.commit().await.expect("the tokens are committed");
        }
    }};
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [url, user, keys, tokens, out] = args.as_slice() else {
        usage()
    };
    let keys: usize = keys.parse().unwrap_or_else(|_| usage());
    let tokens: usize = tokens.parse().unwrap_or_else(|_| usage());
    let out = std::path::Path::new(out);
    let started = Instant::now();

    // keyward's own store code reads (or makes) the pepper and finds the user.
    let store_url = StoreUrl::parse(url).expect("a store URL");
    let store = keyward_store::connect(
        &store_url,
        PoolSettings {
            max_connections: 2,
            acquire_timeout: Duration::from_secs(10),
        },
    )
    .await
    .expect("the store opens");
    let hasher = KeyHasher::new(store.api_key_pepper().await.expect("the pepper"));
    let owner = store
        .user_by_name(user)
        .await
        .expect("the store answers")
        .unwrap_or_else(|| panic!("no user {user:?} in the store"));

    enum Pool {
        Sqlite(sqlx::SqlitePool),
        Postgres(sqlx::PgPool),
    }
    let (pool, first_key_id): (Pool, i64) = match &store_url {
        StoreUrl::Sqlite(path) => {
            let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", path.display()))
                .await
                .expect("SQLite opens");
            let next = sqlx::query_scalar("SELECT next_api_key_id FROM users WHERE id = ?")
                .bind(owner.id)
                .fetch_one(&pool)
                .await
                .expect("the user's next key id");
            (Pool::Sqlite(pool), next)
        }
        StoreUrl::Postgres(url) => {
            let pool = sqlx::PgPool::connect(url)
                .await
                .expect("PostgreSQL connects");
            let next = sqlx::query_scalar("SELECT next_api_key_id FROM users WHERE id = $1")
                .bind(owner.id)
                .fetch_one(&pool)
                .await
                .expect("the user's next key id");
            (Pool::Postgres(pool), next)
        }
    };

    // Secrets and hashes: the CPU part, on every core.
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (key_rows, key_lines) = made_in_parallel(threads, keys, |i| {
        let secret = generate_secret();
        let key_id = first_key_id + i as i64;
        let line = format!("{:x}/{key_id}/{secret}", owner.id);
        (
            KeyRow {
                key_id,
                hash: hasher.hash(&secret),
            },
            line,
        )
    });
    let (token_rows, token_lines) = made_in_parallel(threads, tokens, |_| {
        let value = token::generate();
        let hash = hasher.hash(&value);
        (
            TokenRow {
                name: token::name_for(&hash),
                hash,
            },
            value,
        )
    });
    write_lines(&out.join("api_keys.txt"), &key_lines);
    write_lines(&out.join("tokens.txt"), &token_lines);

    let now = now_ms();
    let until = now + 365 * 86_400_000;
    let rows = Rows {
        user_id: owner.id,
        user_name: &owner.name,
        now,
        until,
        first_key_id,
        keys: &key_rows,
        tokens: &token_rows,
    };
    match &pool {
        Pool::Sqlite(pool) => fill_with!(sqlx::Sqlite, pool, &rows),
        Pool::Postgres(pool) => fill_with!(sqlx::Postgres, pool, &rows),
    }
    eprintln!(
        "fill_store: {keys} API keys and {tokens} tokens for {user} in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

/// `count` items made by `make(i)` on `threads` threads, in order.
fn made_in_parallel<T: Send, F>(threads: usize, count: usize, make: F) -> (Vec<T>, Vec<String>)
where
    F: Fn(usize) -> (T, String) + Sync,
{
    let chunk = count.div_ceil(threads).max(1);
    let parts: Vec<Vec<(T, String)>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..count)
            .step_by(chunk)
            .map(|start| {
                let make = &make;
                scope.spawn(move || (start..(start + chunk).min(count)).map(make).collect())
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    parts.into_iter().flatten().unzip()
}

fn write_lines(path: &std::path::Path, lines: &[String]) {
    let mut file = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    for line in lines {
        writeln!(file, "{line}").unwrap();
    }
    file.flush().unwrap();
}

/// What [`fill`] writes.
struct Rows<'a> {
    user_id: i64,
    user_name: &'a str,
    now: i64,
    until: i64,
    first_key_id: i64,
    keys: &'a [KeyRow],
    tokens: &'a [TokenRow],
}
