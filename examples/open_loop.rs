//! An open-loop HTTP/1.1 load client: requests are sent at a constant rate whatever the server
//! does, and each latency is measured from the request's *intended* send time (as wrk2 does),
//! so a stall delays every request scheduled behind it and shows in the percentiles instead of
//! pausing the client ("coordinated omission").
//!
//! `cargo run --release --example open_loop -- ADDR PATH RATE_PER_SEC SECONDS CONNECTIONS [-H 'Name: value']... [-F 'Name: FILE']`
//!
//! `-F` sends, with request k, line k of FILE as the header Name (cycling when the file is
//! shorter): distinct credentials per request, for cache misses (`scripts/scale.sh`).
//!
//! One thread keeps the schedule (request k is due at start + k / RATE) and hands each due
//! request to connection k mod CONNECTIONS; every connection is a keep-alive HTTP/1.1
//! connection (hyper) that sends its requests in order. The first second is a warm-up and is
//! not counted; then SECONDS are measured. Answers are awaited up to 2 s after the last
//! scheduled request; requests still unanswered then count as `late`. Prints one line:
//!
//! `sent=N ok=N errors=N late=N non_2xx=N p50_us=.. p90_us=.. p99_us=.. p999_us=.. max_us=.. mean_us=.. tick_lag_p99_us=..`
//!
//! where `errors` counts failed exchanges (`non_2xx` of them answered with another status, the
//! rest failed on the connection; the first such status or error is printed on stderr), the
//! percentiles are those of the 2xx answers and of the `late` requests (with the time they
//! waited until the deadline, a lower bound), and `tick_lag_p99_us` is how late the scheduler itself released requests (the client's
//! own timing error, included in every latency). Used by `scripts/compare.sh`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test (or tool) fails loudly

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper::Request;
use hyper_util::rt::TokioIo;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

const WARM_UP: Duration = Duration::from_secs(1);
/// How long answers are awaited after the last scheduled send.
const DRAIN: Duration = Duration::from_secs(2);
/// The first counted failure is shown, once per run.
static FAILURE_SHOWN: AtomicBool = AtomicBool::new(false);

struct Target {
    addr: String,
    path: String,
    headers: Vec<(String, String)>,
    /// `-F`: a header whose value is line k of a file for request k.
    cycled: Option<(String, Vec<String>)>,
}

/// What one connection saw, for the requests scheduled in the measured window.
#[derive(Default)]
struct Tally {
    ok: u64,
    errors: u64,
    non_2xx: u64,
    late: u64,
    latencies_us: Vec<u64>,
}

fn usage() -> ! {
    eprintln!("usage: open_loop ADDR PATH RATE_PER_SEC SECONDS CONNECTIONS [-H 'Name: value']... [-F 'Name: FILE']");
    std::process::exit(2)
}

async fn connect(addr: &str) -> Option<SendRequest<Empty<Bytes>>> {
    let stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    stream.set_nodelay(true).ok();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .ok()?;
    tokio::spawn(conn);
    Some(sender)
}

/// Why an exchange failed.
enum Failure {
    /// The whole answer came, with this status.
    Status(u16),
    /// The connection failed.
    Transport(String),
}

/// One request and its whole answer, a 2xx.
async fn exchange(
    sender: &mut SendRequest<Empty<Bytes>>,
    target: &Target,
    k: u64,
) -> Result<(), Failure> {
    let mut request = Request::get(&target.path).header("host", &target.addr);
    for (name, value) in &target.headers {
        request = request.header(name, value);
    }
    if let Some((name, values)) = &target.cycled {
        request = request.header(name, &values[(k % values.len() as u64) as usize]);
    }
    let request = request
        .body(Empty::new())
        .map_err(|e| Failure::Transport(e.to_string()))?;
    let transport = |e: hyper::Error| Failure::Transport(e.to_string());
    sender.ready().await.map_err(transport)?;
    let response = sender.send_request(request).await.map_err(transport)?;
    let status = response.status();
    response.into_body().collect().await.map_err(transport)?;
    match status.is_success() {
        true => Ok(()),
        false => Err(Failure::Status(status.as_u16())),
    }
}

/// Sends each request handed over by the scheduler, in order, on one connection (reconnecting
/// after an error).
async fn connection(
    target: Arc<Target>,
    mut sender: Option<SendRequest<Empty<Bytes>>>,
    mut due: UnboundedReceiver<(Instant, u64)>,
    measured_from: Instant,
    give_up: Instant,
) -> Tally {
    let mut tally = Tally::default();
    while let Some((intended, k)) = due.recv().await {
        let counted = intended >= measured_from;
        if sender.as_ref().is_none_or(SendRequest::is_closed) {
            sender = connect(&target.addr).await;
        }
        let answered = match sender.as_mut() {
            Some(s) => tokio::time::timeout_at(give_up.into(), exchange(s, &target, k)).await,
            None => Ok(Err(Failure::Transport("cannot connect".into()))),
        };
        let done = Instant::now();
        match answered {
            Ok(Ok(())) if counted => {
                tally.ok += 1;
                tally
                    .latencies_us
                    .push(done.duration_since(intended).as_micros() as u64);
            }
            Ok(Ok(())) => {}
            Ok(Err(failure)) => {
                let first = counted && !FAILURE_SHOWN.swap(true, Ordering::Relaxed);
                tally.errors += u64::from(counted);
                match failure {
                    Failure::Status(status) => {
                        tally.non_2xx += u64::from(counted);
                        if first {
                            eprintln!("open_loop: answered {status}");
                        }
                    }
                    Failure::Transport(error) => {
                        sender = None;
                        if first {
                            eprintln!("open_loop: {error}");
                        }
                    }
                }
            }
            // Unanswered at the deadline: counted in the percentiles too, with the time waited
            // so far (a lower bound), so that a stall cannot hide by never answering.
            Err(_) if counted => {
                sender = None;
                tally.late += 1;
                tally
                    .latencies_us
                    .push(done.duration_since(intended).as_micros() as u64);
            }
            Err(_) => sender = None,
        }
    }
    tally
}

/// Releases request k at `start + k / rate` to connection k mod n, until `end`; returns how
/// late each counted release was, in µs.
fn schedule(
    queues: Vec<UnboundedSender<(Instant, u64)>>,
    rate: f64,
    start: Instant,
    measured_from: Instant,
    end: Instant,
) -> Vec<u64> {
    let mut lags = Vec::new();
    let mut k: u64 = 0;
    loop {
        let intended = start + Duration::from_secs_f64(k as f64 / rate);
        if intended >= end {
            return lags;
        }
        let now = Instant::now();
        if intended > now {
            std::thread::sleep(intended - now);
            continue;
        }
        if intended >= measured_from {
            lags.push(now.duration_since(intended).as_micros() as u64);
        }
        // A connection task that ended early (it cannot: it runs until its queue closes) would
        // only drop its requests.
        let _ = queues[(k % queues.len() as u64) as usize].send((intended, k));
        k += 1;
    }
}

/// The `p` quantile of sorted values (0 when empty).
fn quantile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut args = std::env::args().skip(1);
    let mut positional = Vec::new();
    let mut headers = Vec::new();
    let mut cycled = None;
    while let Some(arg) = args.next() {
        if arg == "-F" {
            let spec = args.next().unwrap_or_else(|| usage());
            let (name, file) = spec.split_once(':').unwrap_or_else(|| usage());
            let text = std::fs::read_to_string(file.trim()).unwrap_or_else(|e| {
                eprintln!("open_loop: {}: {e}", file.trim());
                std::process::exit(2)
            });
            let values: Vec<String> = text.lines().map(str::to_owned).collect();
            if values.is_empty() {
                usage();
            }
            cycled = Some((name.trim().to_owned(), values));
        } else if arg == "-H" {
            let header = args.next().unwrap_or_else(|| usage());
            let (name, value) = header.split_once(':').unwrap_or_else(|| usage());
            headers.push((name.trim().to_owned(), value.trim().to_owned()));
        } else {
            positional.push(arg);
        }
    }
    let [addr, path, rate, seconds, connections] =
        <[String; 5]>::try_from(positional).unwrap_or_else(|_| usage());
    let rate: f64 = rate.parse().unwrap_or_else(|_| usage());
    let seconds: f64 = seconds.parse().unwrap_or_else(|_| usage());
    let connections: usize = connections.parse().unwrap_or_else(|_| usage());
    if rate <= 0.0 || seconds <= 0.0 || connections == 0 {
        usage();
    }
    let target = Arc::new(Target {
        addr,
        path,
        headers,
        cycled,
    });

    // Connections are opened before the clock starts.
    let mut senders = Vec::new();
    for _ in 0..connections {
        let sender = connect(&target.addr).await;
        if sender.is_none() {
            eprintln!("open_loop: cannot connect to {}", target.addr);
            std::process::exit(1);
        }
        senders.push(sender);
    }
    let start = Instant::now() + Duration::from_millis(10);
    let measured_from = start + WARM_UP;
    let end = measured_from + Duration::from_secs_f64(seconds);
    let give_up = end + DRAIN;
    let mut queues = Vec::new();
    let mut tasks = Vec::new();
    for sender in senders {
        let (queue, due) = unbounded_channel();
        queues.push(queue);
        tasks.push(tokio::spawn(connection(
            target.clone(),
            sender,
            due,
            measured_from,
            give_up,
        )));
    }
    let scheduler = std::thread::spawn(move || schedule(queues, rate, start, measured_from, end));

    let mut total = Tally::default();
    for task in tasks {
        let tally = task.await.expect("connection task");
        total.ok += tally.ok;
        total.errors += tally.errors;
        total.non_2xx += tally.non_2xx;
        total.late += tally.late;
        total.latencies_us.extend(tally.latencies_us);
    }
    let mut lags = scheduler.join().expect("scheduler");
    lags.sort_unstable();
    let latencies = &mut total.latencies_us;
    latencies.sort_unstable();
    let mean = if latencies.is_empty() {
        0
    } else {
        latencies.iter().sum::<u64>() / latencies.len() as u64
    };
    println!(
        "sent={} ok={} errors={} late={} non_2xx={} p50_us={} p90_us={} p99_us={} p999_us={} max_us={} mean_us={} tick_lag_p99_us={}",
        total.ok + total.errors + total.late,
        total.ok,
        total.errors,
        total.late,
        total.non_2xx,
        quantile(latencies, 0.50),
        quantile(latencies, 0.90),
        quantile(latencies, 0.99),
        quantile(latencies, 0.999),
        latencies.last().copied().unwrap_or(0),
        mean,
        quantile(&lags, 0.99),
    );
}
