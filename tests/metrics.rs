//! The operations metrics, read off `/metrics` after real traffic: request and upstream
//! latency histograms, requests in flight, upstream errors (a refused upstream shows in the
//! 5xx rate), upstream health, build info and the process metrics. The page must also pass
//! `promtool check metrics` when promtool is installed.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test (or tool) fails loudly

mod common;

use common::{client, free_port, Keyward, Setup, Upstream, ADMIN_PASSWORD};
use std::time::{Duration, Instant};

const ROUTES: &str = r#"
  - path: /public
    public: true
  - path: /slow
    public: true
  - path: /
    require: { min_security_level: EXTERNAL }
"#;

/// The value of the sample `series` (name plus labels, exactly as rendered), 0 if absent.
fn sample(page: &str, series: &str) -> f64 {
    page.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn request_latency_in_flight_and_upstream_latency_follow_real_traffic() {
    let kw = Keyward::start_with(Setup {
        routes: ROUTES.into(),
        ..Setup::default()
    });
    let before = kw.metrics();
    for _ in 0..3 {
        assert_eq!(
            client().get(kw.url("/public/a")).send().unwrap().status(),
            200
        );
    }
    for _ in 0..2 {
        assert_eq!(client().get(kw.url("/app")).send().unwrap().status(), 401);
    }
    let resp = client()
        .get(kw.url("/authentication/v1/apikey"))
        .basic_auth("admin", Some(ADMIN_PASSWORD))
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);

    // One slow request in flight while the page is read.
    let slow_url = kw.url("/slow/1500");
    let slow = std::thread::spawn(move || client().get(slow_url).send().unwrap().status());
    let deadline = Instant::now() + Duration::from_secs(5);
    while sample(&kw.metrics(), "keyward_requests_in_flight") < 1.0 {
        assert!(
            Instant::now() < deadline,
            "the slow request never showed in flight"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(slow.join().unwrap(), 200);

    let after = kw.metrics();
    let delta = |series: &str| sample(&after, series) - sample(&before, series);
    let count = |kind: &str| {
        delta(&format!(
            "keyward_request_duration_seconds_count{{route_kind=\"{kind}\"}}"
        ))
    };
    assert_eq!(count("public"), 4.0, "{after}");
    assert_eq!(count("protected"), 2.0);
    assert_eq!(count("admin"), 1.0);
    assert_eq!(delta("keyward_upstream_duration_seconds_count"), 4.0);
    // The slow request's 1.5 s is in the upstream latency, and in its request's.
    assert!(delta("keyward_upstream_duration_seconds_sum") >= 1.5);
    assert!(
        delta("keyward_upstream_duration_seconds_bucket{le=\"1\"}") == 3.0,
        "the three fast ones under 1 s, the slow one above:\n{after}"
    );
    assert_eq!(sample(&after, "keyward_requests_in_flight"), 0.0);

    assert_eq!(
        sample(
            &after,
            &format!(
                "keyward_build_info{{version=\"{}\"}}",
                env!("CARGO_PKG_VERSION")
            )
        ),
        1.0
    );
    assert!(
        sample(&after, "process_resident_memory_bytes") > 1e6,
        "{after}"
    );
    assert!(sample(&after, "process_open_fds") > 0.0);
    assert!(after.contains("process_cpu_seconds_total"));
    assert!(after.contains("keyward_config_reloads_total{outcome=\"invalid\"} 0"));
    promtool_accepts(&after);
}

#[test]
fn a_refused_upstream_counts_as_an_upstream_error_and_a_5xx() {
    let closed = format!("127.0.0.1:{}", free_port());
    let kw = Keyward::start_with(Setup {
        routes: ROUTES.into(),
        upstream_address: Some(closed.clone()),
        ..Setup::default()
    });
    let before = kw.metrics();
    for _ in 0..2 {
        assert_eq!(
            client().get(kw.url("/public/x")).send().unwrap().status(),
            502
        );
    }
    let after = kw.metrics();
    let delta = |series: &str| sample(&after, series) - sample(&before, series);
    assert_eq!(
        delta("keyward_upstream_errors_total{reason=\"connect_refused\"}"),
        2.0,
        "{after}"
    );
    assert_eq!(
        delta("keyward_upstream_responses_total{status_class=\"5xx\"}"),
        2.0
    );
    assert_eq!(delta("keyward_upstream_duration_seconds_count"), 0.0);
    // One upstream is not health-checked (it is always tried): it reports healthy.
    assert_eq!(
        sample(
            &after,
            &format!("keyward_upstream_healthy{{address=\"{closed}\"}}")
        ),
        1.0
    );
}

#[test]
fn upstream_health_is_reported_per_address() {
    let up = Upstream::start();
    let down = format!("127.0.0.1:{}", free_port());
    let kw = Keyward::start_with(Setup {
        routes: ROUTES.into(),
        upstream_addresses: Some(vec![up.addr.to_string(), down.clone()]),
        ..Setup::default()
    });
    let healthy = |address: &str| {
        sample(
            &kw.metrics(),
            &format!("keyward_upstream_healthy{{address=\"{address}\"}}"),
        )
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while healthy(&down) != 0.0 {
        assert!(Instant::now() < deadline, "{}", kw.metrics());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(healthy(&up.addr.to_string()), 1.0);
}

/// `promtool check metrics` on the page, when promtool is installed (CI installs it).
fn promtool_accepts(page: &str) {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let Ok(mut child) = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    else {
        eprintln!("promtool is not installed: skipping `promtool check metrics`");
        return;
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(page.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
