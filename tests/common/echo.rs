//! A real HTTP upstream for tests, the load script and `make run`: answers every request with
//! a JSON echo of what it received (method, path, query, headers, body length and SHA-256).
//!
//! `/slow/<ms>` waits that many milliseconds before answering (for drain and timeout tests).
//! A path ending in `/fixed` gets a fixed small body instead of the echo, so load tests compare
//! routes whose upstream work is identical whatever headers keyward adds.

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::net::TcpListener;

/// Counts requests the upstream has answered.
#[derive(Default)]
pub struct EchoStats {
    pub requests: AtomicU64,
}

async fn answer(
    req: Request<Incoming>,
    stats: Arc<EchoStats>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    stats.requests.fetch_add(1, Ordering::Relaxed);
    if req.uri().path().ends_with("/fixed") {
        return Ok(Response::new(Full::new(Bytes::from_static(b"ok\n"))));
    }
    let method = req.method().to_string();
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or("").to_owned();
    let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, value) in req.headers() {
        headers
            .entry(name.as_str().to_owned())
            .or_default()
            .push(String::from_utf8_lossy(value.as_bytes()).into_owned());
    }
    if let Some(ms) = path
        .strip_prefix("/slow/")
        .and_then(|ms| ms.parse::<u64>().ok())
    {
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
    }
    let body = match req.into_body().collect().await {
        Ok(body) => body.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let body_sha256: String = {
        use sha2::Digest as _;
        sha2::Sha256::digest(&body)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    };
    let echo = serde_json::json!({
        "method": method,
        "path": path,
        "query": query,
        "headers": headers,
        "body_len": body.len(),
        "body_sha256": body_sha256,
    });
    let mut response = Response::new(Full::new(Bytes::from(echo.to_string())));
    response
        .headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    Ok(response)
}

/// Serves on `listener` until the runtime stops.
pub async fn serve(listener: TcpListener, stats: Arc<EchoStats>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let stats = stats.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| answer(req, stats.clone()));
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Starts the echo upstream on its own thread and runtime; returns its address.
#[allow(dead_code)]
pub fn spawn(addr: &str) -> (SocketAddr, Arc<EchoStats>) {
    let std_listener = std::net::TcpListener::bind(addr).expect("bind echo upstream");
    std_listener.set_nonblocking(true).unwrap();
    let local = std_listener.local_addr().unwrap();
    let stats = Arc::new(EchoStats::default());
    let served = stats.clone();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let listener = TcpListener::from_std(std_listener).unwrap();
            serve(listener, served).await;
        });
    });
    (local, stats)
}
