//! A demo upstream that echoes each request as JSON: `cargo run --example echo_upstream -- ADDR`
//! (default 127.0.0.1:3000). Used by `make run` and `scripts/load.sh`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test (or tool) fails loudly

#[path = "../tests/common/echo.rs"]
mod echo;

fn main() {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:3000".into());
    let (local, _stats) = echo::spawn(&addr);
    eprintln!("echo upstream listening on {local}");
    loop {
        std::thread::park();
    }
}
