//! Connection limits on the proxy listener: `limits.header_read_timeout` and
//! `limits.max_connections`, driven with raw sockets against the real binary.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test (or tool) fails loudly

mod common;

use common::{Keyward, Setup};
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

const REQUEST: &[u8] = b"GET /public/fixed HTTP/1.1\r\nHost: keyward\r\n\r\n";

fn start(limits: &str) -> Keyward {
    let kw = Keyward::start_with(Setup {
        extra: format!("limits: {{ {limits} }}\n"),
        ..Setup::default()
    });
    // The harness's readiness probe used a connection of its own; wait for it to be gone.
    kw.wait_for_metric("keyward_connections_open", 0);
    kw
}

/// Reads one response (which must carry Content-Length): its status line and body.
fn read_response(stream: &mut TcpStream) -> (String, Vec<u8>) {
    let mut data = Vec::new();
    let mut byte = [0u8; 1];
    while !data.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => data.push(byte[0]),
            other => panic!(
                "connection ended inside a response header ({other:?}): {:?}",
                String::from_utf8_lossy(&data)
            ),
        }
    }
    let head = String::from_utf8(data).unwrap();
    let length: usize = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().unwrap())
        })
        .unwrap_or_else(|| panic!("no content-length in {head:?}"));
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).unwrap();
    (head.lines().next().unwrap().to_owned(), body)
}

/// Everything the server sends until it closes the connection.
fn read_until_closed(stream: &mut TcpStream) -> String {
    let mut data = Vec::new();
    match stream.read_to_end(&mut data) {
        Ok(_) => {}
        Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
        Err(e) => panic!("connection not closed: {e}"),
    }
    String::from_utf8_lossy(&data).into_owned()
}

struct Slow {
    stream: TcpStream,
    sent: usize,
    answer: Vec<u8>,
    closed_after: Option<Duration>,
}

#[test]
fn slow_partial_headers_are_closed_within_the_timeout() {
    let kw = start("header_read_timeout: 1s");
    let header = b"GET /public/fixed HTTP/1.1\r\nHost: keyward\r\nX-Slow: ";
    let started = Instant::now();
    let mut slow: Vec<Slow> = (0..200)
        .map(|_| {
            let stream = kw.connect_raw(Duration::from_secs(5));
            stream.set_nonblocking(true).unwrap();
            Slow {
                stream,
                sent: 0,
                answer: Vec::new(),
                closed_after: None,
            }
        })
        .collect();
    // A few that send nothing at all: closed too, without an answer.
    let mut idle: Vec<TcpStream> = (0..5)
        .map(|_| kw.connect_raw(Duration::from_secs(5)))
        .collect();
    // Every connection sends a byte every 100 ms (pingora's own timeout is per read, so this
    // alone would keep them open for ever) and never finishes its header.
    while slow.iter().any(|s| s.closed_after.is_none())
        && started.elapsed() < Duration::from_secs(8)
    {
        for s in slow.iter_mut().filter(|s| s.closed_after.is_none()) {
            let mut buf = [0u8; 1024];
            let closed = loop {
                match s.stream.read(&mut buf) {
                    Ok(0) => break true,
                    Ok(n) => s.answer.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break false,
                    Err(_) => break true,
                }
            };
            let byte = match header.get(s.sent) {
                Some(byte) => *byte,
                None => b'x',
            };
            if closed || s.stream.write(&[byte]).is_err() {
                s.closed_after = Some(started.elapsed());
                continue;
            }
            s.sent += 1;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let latest = slow
        .iter()
        .map(|s| s.closed_after.expect("a slow connection was never closed"))
        .max()
        .unwrap();
    assert!(
        latest < Duration::from_secs(3),
        "the last slow connection was closed after {latest:?}"
    );
    assert!(slow.iter().all(|s| s.sent >= 8), "the clients did drip");
    for s in &slow {
        let answer = String::from_utf8_lossy(&s.answer);
        assert!(answer.starts_with("HTTP/1.1 408 "), "{answer:?}");
        assert!(
            answer.contains("\"reason\":\"header_timeout\""),
            "{answer:?}"
        );
    }
    for stream in &mut idle {
        assert_eq!(
            read_until_closed(stream),
            "",
            "an idle connection gets no answer"
        );
    }
    assert!(started.elapsed() < Duration::from_secs(8));
    assert_eq!(kw.metric_value("keyward_header_timeouts_total"), 205);
    kw.wait_for_metric("keyward_connections_open", 0);
    // Nothing partial reached the upstream, and keyward still serves.
    let before = kw.upstream().requests();
    let mut stream = kw.connect_raw(Duration::from_secs(5));
    stream.write_all(REQUEST).unwrap();
    assert_eq!(read_response(&mut stream).0, "HTTP/1.1 200 OK");
    assert_eq!(kw.upstream().requests(), before + 1);
}

#[test]
fn keep_alive_requests_with_pauses_longer_than_the_timeout_work() {
    let kw = start("header_read_timeout: 1s");
    let before = kw.upstream().requests();
    let mut stream = kw.connect_raw(Duration::from_secs(5));
    for _ in 0..4 {
        stream.write_all(REQUEST).unwrap();
        let (status, body) = read_response(&mut stream);
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert_eq!(body, b"ok\n");
        // Idle between requests is the keep-alive timeout's business, not the header's.
        std::thread::sleep(Duration::from_millis(1500));
    }
    assert_eq!(kw.upstream().requests(), before + 4);
    assert_eq!(kw.metric_value("keyward_header_timeouts_total"), 0);
}

#[test]
fn a_header_dripped_byte_by_byte_within_the_timeout_works() {
    let kw = start("header_read_timeout: 2s");
    let before = kw.upstream().requests();
    let mut stream = kw.connect_raw(Duration::from_secs(5));
    for round in 0..2 {
        // ~1 s for the whole header, on the first request and on a kept-alive one.
        for byte in REQUEST {
            stream.write_all(&[*byte]).unwrap();
            std::thread::sleep(Duration::from_millis(20));
        }
        let (status, body) = read_response(&mut stream);
        assert_eq!(status, "HTTP/1.1 200 OK", "round {round}");
        assert_eq!(body, b"ok\n");
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(kw.upstream().requests(), before + 2);
}

#[test]
fn connections_over_max_connections_are_refused_until_one_closes() {
    let kw = start("max_connections: 5");
    let before = kw.upstream().requests();
    let mut open: Vec<TcpStream> = (0..5)
        .map(|_| {
            let mut stream = kw.connect_raw(Duration::from_secs(5));
            stream.write_all(REQUEST).unwrap();
            assert_eq!(read_response(&mut stream).0, "HTTP/1.1 200 OK");
            stream
        })
        .collect();
    assert_eq!(kw.metric_value("keyward_connections_open"), 5);

    // The sixth is answered 503 and closed at once, without a request being read.
    let mut sixth = kw.connect_raw(Duration::from_secs(5));
    let answer = read_until_closed(&mut sixth);
    assert!(answer.starts_with("HTTP/1.1 503 "), "{answer:?}");
    assert!(answer.contains("\r\nconnection: close\r\n"), "{answer:?}");
    assert!(
        answer.contains("\"reason\":\"too_many_connections\""),
        "{answer:?}"
    );
    assert_eq!(kw.metric_value("keyward_connections_refused_total"), 1);

    // The five still work.
    for stream in &mut open {
        stream.write_all(REQUEST).unwrap();
        assert_eq!(read_response(stream).0, "HTTP/1.1 200 OK");
    }

    // Once one closes, a new connection is accepted again.
    drop(open.pop());
    kw.wait_for_metric("keyward_connections_open", 4);
    let mut again = kw.connect_raw(Duration::from_secs(5));
    again.write_all(REQUEST).unwrap();
    assert_eq!(read_response(&mut again).0, "HTTP/1.1 200 OK");
    assert_eq!(kw.metric_value("keyward_connections_open"), 5);
    assert_eq!(kw.metric_value("keyward_connections_refused_total"), 1);
    assert_eq!(kw.upstream().requests(), before + 5 + 5 + 1);
}
