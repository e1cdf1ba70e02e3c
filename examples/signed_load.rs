//! Load comparison for signed requests, one tool, one run: the same number of requests on a
//! public route and with RFC 9421 signatures (each signed anew, before the clock starts, since a
//! signature is accepted once), in interleaved rounds over keep-alive connections.
//!
//! `cargo run --release --example signed_load -- PROXY_ADDR KEY_PEM KEYID KEYWARD_PID [REQUESTS] [CONNECTIONS] [ROUNDS]`
//! Used by `scripts/load.sh`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test (or tool) fails loudly

use ed25519_dalek::pkcs8::DecodePrivateKey;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper::Request;
use hyper_util::rt::TokioIo;
use std::time::Instant;

fn keyward_cpu_ticks(pid: &str) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    field(11) + field(12) // utime, stime
}

type Headers = Vec<(&'static str, String)>;

/// Sends every request over `connections` keep-alive connections; returns the elapsed seconds.
async fn run(addr: &str, path: &str, requests: Vec<Headers>, connections: usize) -> f64 {
    let mut shares: Vec<Vec<Headers>> = (0..connections).map(|_| Vec::new()).collect();
    for (i, r) in requests.into_iter().enumerate() {
        shares[i % connections].push(r);
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    for share in shares {
        let addr = addr.to_owned();
        let path = path.to_owned();
        tasks.push(tokio::spawn(async move {
            let stream = tokio::net::TcpStream::connect(&addr)
                .await
                .expect("connect");
            stream.set_nodelay(true).ok();
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .expect("handshake");
            tokio::spawn(conn);
            for headers in share {
                let mut request = Request::get(&path).header("host", &addr);
                for (name, value) in headers {
                    request = request.header(name, value);
                }
                let response = sender
                    .send_request(request.body(Empty::<Bytes>::new()).unwrap())
                    .await
                    .expect("response");
                assert_eq!(response.status(), 200, "request refused");
                response.into_body().collect().await.expect("body");
            }
        }));
    }
    for task in tasks {
        task.await.expect("connection task");
    }
    started.elapsed().as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let addr = args[1].clone();
    let key_pem = std::fs::read_to_string(&args[2]).expect("key file");
    let keyid = args[3].clone();
    let pid = args[4].clone();
    let n: usize = args.get(5).and_then(|v| v.parse().ok()).unwrap_or(50_000);
    let connections: usize = args.get(6).and_then(|v| v.parse().ok()).unwrap_or(32);
    let rounds: usize = args.get(7).and_then(|v| v.parse().ok()).unwrap_or(3);
    let key = ed25519_dalek::SigningKey::from_pkcs8_pem(&key_pem).expect("Ed25519 key");
    let hz = 100.0; // Linux USER_HZ
    let url: http::Uri = format!("http://{addr}/x/fixed").parse().unwrap();

    let (mut ratios, mut cpu_ratios, mut public_rps, mut signed_rps) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for round in 1..=rounds {
        let created = keyward::store::now_ms() / 1000;
        let signed: Vec<Headers> = (0..n)
            .map(|i| {
                keyward::auth::signature::sign(
                    &key,
                    &keyid,
                    "GET",
                    &url,
                    None,
                    created,
                    &format!("r{round}n{i}"),
                )
                .expect("sign")
            })
            .collect();
        let t0 = keyward_cpu_ticks(&pid);
        let public_secs = run(&addr, "/public/fixed", vec![Vec::new(); n], connections).await;
        let t1 = keyward_cpu_ticks(&pid);
        let signed_secs = run(&addr, "/x/fixed", signed, connections).await;
        let t2 = keyward_cpu_ticks(&pid);
        let (p, s) = (n as f64 / public_secs, n as f64 / signed_secs);
        let public_cpu = (t1 - t0) as f64 / hz * 1e6 / n as f64;
        let signed_cpu = (t2 - t1) as f64 / hz * 1e6 / n as f64;
        eprintln!(
            "round {round}: public {p:.0} req/s ({public_cpu:.1} µs CPU/req) | signed {s:.0} req/s ({signed_cpu:.1} µs CPU/req)"
        );
        public_rps.push(p);
        signed_rps.push(s);
        ratios.push(s / p);
        cpu_ratios.push(public_cpu / signed_cpu);
    }
    println!(
        "keyward public route    {:10.0} req/s   (same client, {n} requests x {rounds} rounds, {connections} connections)",
        median(public_rps)
    );
    println!(
        "keyward signed (RFC 9421) {:8.0} req/s   {:.2} of public route (CPU ratio {:.2})",
        median(signed_rps),
        median(ratios),
        median(cpu_ratios)
    );
}
