//! Connection limits on the proxy listener (`limits.max_connections`,
//! `limits.header_read_timeout`).
//!
//! pingora bounds each read of a request header separately (60 s), so a client dripping a byte
//! every 50 s holds its connection forever, and it accepts any number of connections.
//! [`ConnectionLimits`] wraps pingora's HTTP proxy app: it holds a permit of a semaphore for
//! each connection's whole life (refusing connections over the cap at once), and drives the
//! connection's keep-alive loop itself so that it can re-arm a [`HeaderDeadline`] for every
//! request: an IO adapter that fails reads once a request header has taken too long.
//!
//! With `listen.tls` the listener accepts plain TCP and [`ConnectionLimits`] runs the TLS
//! handshake itself, after taking the connection's permit and within the header deadline:
//! pingora's own TLS listener would handshake before any limit applies and give a silent
//! client 60 s. An HTTP/2 connection (ALPN `h2`) must send its connection preface within the
//! deadline too, and then each header block (a HEADERS frame and its CONTINUATION frames) within
//! the deadline of its first frame header: [`H2Frames`] follows the frames by their 9-byte
//! headers as they pass. Between requests pingora's HTTP/2 idle timeout closes a connection
//! that has no request in progress (see `app`).
//!
//! SPEC §15 adds two bounds. `limits.max_connections_per_client`: one client address (an
//! IPv6 client by its /64, an IPv4-mapped peer as its IPv4 address) holds at most that many
//! connections, so one address cannot take every permit; trusted proxies are not capped, since
//! their connections carry many clients. And an HTTP/2 connection multiplies requests: each of
//! its streams in progress takes a permit of `limits.max_connections` and a slot of its
//! client's cap as a connection does (a stream over either is answered 503 at once), on top of
//! `limits.max_h2_streams` concurrent streams per connection, advertised in its SETTINGS.
//!
//! HTTP/1.1 pipelining is served (pingora's opt-in): requests a client sends before reading
//! the answers are answered one after the other, in order.

use async_trait::async_trait;
use keyward_http::ctx::RequestId;
use keyward_http::respond::Refusal;
use keyward_metrics::{ConnectionMetrics, Metrics};
use pingora::apps::{HttpServerApp, HttpServerOptions, ReusedHttpStream, ServerApp};
use pingora::http::ResponseHeader;
use pingora::listeners::tls::Acceptor;
use pingora::protocols::http::v2::server::H2Options;
use pingora::protocols::http::ServerSession;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::SslDigest;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType, ALPN,
};
use pingora::server::ShutdownWatch;
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

/// The read buffer under each accepted connection, in bytes, with and without TLS. pingora's
/// default is 64 KiB, allocated for every connection's whole life: 64 KiB of each idle
/// kept-alive connection's ~105 KiB (measured with `make scale`; nginx holds ~0.8 KiB). Large
/// reads (request bodies) bypass a read buffer anyway, and measured CPU per request did not
/// change with 64, 16, 4 or 0 KiB (plaintext GETs and 256 KiB POSTs); TLS keeps a whole record
/// (16 KiB) so that rustls's small reads of one record cost one system call.
pub const READ_BUFFER_PLAIN: usize = 4 * 1024;
pub const READ_BUFFER_TLS: usize = 16 * 1024;

/// A listening endpoint on `address` with keyward's read buffer (see [`READ_BUFFER_PLAIN`]).
pub fn listener_config(address: &str, tls: bool) -> pingora::listeners::ListenerConfig {
    let read = if tls {
        READ_BUFFER_TLS
    } else {
        READ_BUFFER_PLAIN
    };
    pingora::listeners::ListenerConfig::tcp(address)
        .l4_buffer(pingora::protocols::l4::stream::L4BufferSettings::default().read(read))
}

/// pingora's keep-alive timeout between requests on a connection (what its own HTTP app sets).
pub const KEEPALIVE_SECONDS: u64 = 60;
/// The same, for the HTTP/2 idle timeout.
pub const KEEPALIVE: Duration = Duration::from_secs(KEEPALIVE_SECONDS);
/// How long writing the 503 to a refused connection may take before it is just closed.
const REFUSAL_WRITE_TIMEOUT: Duration = Duration::from_secs(1);
/// The HTTP/2 connection preface a client sends first (RFC 9113 §3.4).
const H2_PREFACE_LEN: usize = 24;
/// An HTTP/2 frame header: length (24 bits), type, flags, stream id (RFC 9113 §4.1).
const H2_FRAME_HEADER_LEN: usize = 9;
/// The frame types that carry a header block (RFC 9113 §6.2, §6.6, §6.10).
const H2_HEADERS: u8 = 0x1;
const H2_PUSH_PROMISE: u8 = 0x5;
const H2_CONTINUATION: u8 = 0x9;
/// The flag of the frame that ends a header block.
const H2_END_HEADERS: u8 = 0x4;

/// Whether a (canonical) client address is a trusted proxy, by the running configuration.
pub type TrustedPeer = Arc<dyn Fn(IpAddr) -> bool + Send + Sync>;

/// A `ServerApp` around an HTTP app (pingora's `HttpProxy`) that enforces the connection limits.
pub struct ConnectionLimits<A> {
    inner: Arc<A>,
    permits: Arc<Semaphore>,
    header_timeout: Duration,
    metrics: ConnectionMetrics,
    /// `listen.tls`: the handshake each connection makes before HTTP.
    tls: Option<Acceptor>,
    /// `limits.max_connections_per_client`; `None`: no cap.
    per_client: Option<Arc<PerClient>>,
    trusted: TrustedPeer,
}

impl<A> ConnectionLimits<A> {
    pub fn new(
        inner: A,
        max_connections: usize,
        header_timeout: Duration,
        metrics: &Metrics,
    ) -> ConnectionLimits<A> {
        ConnectionLimits {
            inner: Arc::new(inner),
            permits: Arc::new(Semaphore::new(max_connections.min(Semaphore::MAX_PERMITS))),
            header_timeout,
            metrics: metrics.connections().clone(),
            tls: None,
            per_client: None,
            trusted: Arc::new(|_| false),
        }
    }

    /// `limits.max_connections_per_client` (`None`: no cap); `trusted` peers are not capped.
    pub fn with_client_cap(mut self, max: Option<usize>, trusted: TrustedPeer) -> Self {
        self.per_client = max.map(|max| {
            Arc::new(PerClient {
                max,
                open: std::sync::Mutex::new(HashMap::new()),
            })
        });
        self.trusted = trusted;
        self
    }

    /// The client's slot under `limits.max_connections_per_client`: `Ok(None)` when there is no
    /// cap for it (no cap configured, a trusted proxy, no peer address), `Err` over the cap.
    fn client_slot(&self, stream: &Stream) -> Result<Option<ClientSlot>, ()> {
        let Some(per_client) = &self.per_client else {
            return Ok(None);
        };
        let Some(peer) = peer_ip(stream) else {
            return Ok(None);
        };
        if (self.trusted)(peer) {
            return Ok(None);
        }
        per_client.take(client_key(peer)).map(Some).ok_or(())
    }

    /// Every connection makes a TLS handshake with `acceptor` first (see the module docs).
    pub fn with_tls(mut self, acceptor: Acceptor) -> ConnectionLimits<A> {
        self.tls = Some(acceptor);
        self
    }

    /// The TLS handshake of a new connection, within the header deadline; `None` when it
    /// failed or took too long (counted, logged at debug: scanners and old clients fail it
    /// all day long).
    async fn handshake(&self, acceptor: &Acceptor, stream: Stream) -> Option<Stream> {
        // pingora's TLS stream wraps a concrete IO type; a pass-through adapter makes the
        // accepted `Stream` one.
        let transport = HeaderDeadline::passthrough(stream, self.metrics.header_timeouts.clone());
        match tokio::time::timeout(self.header_timeout, acceptor.tls_handshake(transport)).await {
            Ok(Ok(tls)) => Some(Box::new(tls)),
            Ok(Err(e)) => {
                self.metrics.tls_handshake_failures.inc();
                tracing::debug!(error = %e, "TLS handshake failed");
                None
            }
            Err(_) => {
                self.metrics.tls_handshake_failures.inc();
                tracing::debug!("TLS handshake not done within limits.header_read_timeout");
                None
            }
        }
    }
}

/// The canonical IP address of a connection's peer (`::ffff:a.b.c.d` is `a.b.c.d`).
fn peer_ip(stream: &Stream) -> Option<IpAddr> {
    let digest = stream.get_socket_digest()?;
    let peer = digest.peer_addr()?.as_inet()?.ip();
    Some(peer.to_canonical())
}

/// What the per-client cap counts: an IPv4 address, or an IPv6 address's /64 (one host
/// usually holds a whole /64, as the rate limits count it).
fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        // NAT64 (`64:ff9b::/96`): each IPv4 client behind the translator counts on its own.
        IpAddr::V6(v6) if keyward_core::limit::nat64_ipv4(v6).is_some() => ip,
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(bits.into())
        }
    }
}

/// Open connections (and HTTP/2 streams) per client key.
struct PerClient {
    max: usize,
    open: std::sync::Mutex<HashMap<IpAddr, usize>>,
}

impl PerClient {
    fn take(self: &Arc<Self>, key: IpAddr) -> Option<ClientSlot> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let count = open.entry(key).or_insert(0);
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(ClientSlot {
            owner: self.clone(),
            key,
        })
    }
}

/// One connection's (or stream's) place in its client's count; given back when dropped.
struct ClientSlot {
    owner: Arc<PerClient>,
    key: IpAddr,
}

impl ClientSlot {
    /// Another slot for the same client (an HTTP/2 stream of this connection).
    fn another(&self) -> Option<ClientSlot> {
        self.owner.take(self.key)
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut open = self.owner.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = open.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.key);
            }
        }
    }
}

/// One open connection: its permit, and its place in `keyward_connections_open`.
struct Open {
    _permit: OwnedSemaphorePermit,
    gauge: prometheus::IntGauge,
}

impl Drop for Open {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

impl<A> ConnectionLimits<A>
where
    A: HttpServerApp + Send + Sync + 'static,
{
    /// Whether pingora's HTTP app would serve this stream as HTTP/1 (what the header deadline
    /// understands); h2c, HTTP/2 over TLS and custom protocols are left to it whole.
    fn is_http1(&self, stream: &Stream) -> bool {
        let options = self.inner.server_options();
        let h2c = options.is_some_and(|o| o.h2c) && stream.get_ssl_digest().is_none();
        let custom = options.is_some_and(|o| o.force_custom);
        !h2c && !custom && matches!(stream.selected_alpn_proto(), None | Some(ALPN::H1))
    }

    /// The HTTP/1 keep-alive loop of pingora's `ServerApp for HttpServerApp`, with the header
    /// deadline re-armed before each request.
    async fn serve_http1(&self, stream: Stream, shutdown: &ShutdownWatch) {
        let stream: Stream = Box::new(HeaderDeadline::new(
            stream,
            self.header_timeout,
            self.metrics.header_timeouts.clone(),
        ));
        let mut session = ServerSession::new_http1(stream);
        // Pipelined requests are answered in order (the flag carries over to every later
        // request on the connection); without it pingora answers the first and drops the rest.
        session.set_pipelining_enabled(true);
        session.set_keepalive(match *shutdown.borrow() {
            true => None,
            false => Some(KEEPALIVE_SECONDS),
        });
        session.set_keepalive_reuses_remaining(
            self.inner
                .server_options()
                .and_then(|o| o.keepalive_request_limit),
        );
        let mut result = self.inner.process_new_http(session, shutdown).await;
        while let Some(reused) = result {
            let (stream, settings) = reused.consume();
            // The stream handed back is the one wrapped above; anything else would be a
            // pingora change this loop does not understand, so the connection is closed.
            let Ok(mut deadline) = stream.into_any().downcast::<HeaderDeadline>() else {
                tracing::warn!("reused proxy stream is not a HeaderDeadline; closing");
                return;
            };
            deadline.rearm();
            let mut session = ServerSession::new_http1(deadline);
            if let Some(settings) = settings {
                settings.apply_to_session(&mut session);
            }
            result = self.inner.process_new_http(session, shutdown).await;
        }
    }
}

#[async_trait]
impl<A> ServerApp for ConnectionLimits<A>
where
    A: HttpServerApp + Send + Sync + 'static,
{
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let slot = match self.client_slot(&stream) {
            Ok(slot) => slot,
            Err(()) => {
                self.refuse(stream, "too_many_connections_from_client")
                    .await;
                return None;
            }
        };
        let Ok(permit) = self.permits.clone().try_acquire_owned() else {
            self.refuse(stream, "too_many_connections").await;
            return None;
        };
        self.metrics.open.inc();
        let _open = Open {
            _permit: permit,
            gauge: self.metrics.open.clone(),
        };
        let stream = match &self.tls {
            Some(acceptor) => match self.handshake(acceptor, stream).await {
                Some(tls) => tls,
                None => return None,
            },
            None => stream,
        };
        if self.is_http1(&stream) {
            self.serve_http1(stream, shutdown).await;
        } else if stream.selected_alpn_proto() == Some(ALPN::H2) {
            let stream: Stream = Box::new(HeaderDeadline::h2_preface(
                stream,
                self.header_timeout,
                self.metrics.header_timeouts.clone(),
            ));
            let streams = Arc::new(Streams {
                inner: self.inner.clone(),
                permits: self.permits.clone(),
                slot,
                metrics: self.metrics.clone(),
            });
            ServerApp::process_new(&streams, stream, shutdown).await;
        } else {
            // pingora's own loop; the connection cap still holds for its whole life.
            ServerApp::process_new(&self.inner, stream, shutdown).await;
        }
        None
    }

    async fn cleanup(&self) {
        self.inner.http_cleanup().await;
    }
}

impl<A> ConnectionLimits<A> {
    /// A connection over a cap: 503 with `reason` and closed (a TLS client is just closed).
    async fn refuse(&self, mut stream: Stream, reason: &'static str) {
        self.metrics.refused.inc();
        if self.tls.is_some() {
            // A TLS client is still waiting for a ServerHello: an HTTP answer would be
            // noise to it, and a handshake is the work being refused.
            Shutdown::shutdown(&mut *stream).await;
            return;
        }
        let refusal = Refusal::Unavailable(reason).raw_http1(RequestId::random().as_str());
        let write = async {
            stream.write_all(&refusal).await?;
            stream.flush().await
        };
        let _ = tokio::time::timeout(REFUSAL_WRITE_TIMEOUT, write).await;
        Shutdown::shutdown(&mut *stream).await;
    }
}

tokio::task_local! {
    /// The body deadline of the HTTP/2 stream this task serves (see [`arm_body_deadline`]).
    static BODY_WATCH: Arc<BodyWatch>;
}

/// `limits.body_timeout` for the request this task serves, when it is an HTTP/2 stream:
/// pingora has no read timeout for HTTP/2 bodies, so [`Streams`] resets the stream (and with
/// it the upstream request) once `deadline` passes before [`body_done`]. Over HTTP/1.1 this
/// does nothing (pingora's read timeout bounds the reads there; see `proxy`).
pub fn arm_body_deadline(deadline: std::time::Instant) {
    let _ = BODY_WATCH.try_with(|watch| watch.set(Some(Instant::from_std(deadline))));
}

/// The request's body is in (or will not be read): its deadline no longer applies.
pub fn body_done() {
    let _ = BODY_WATCH.try_with(|watch| watch.set(None));
}

/// One HTTP/2 stream's body deadline, armed and disarmed by the request's filters.
#[derive(Default)]
struct BodyWatch {
    deadline: std::sync::Mutex<Option<Instant>>,
    changed: tokio::sync::Notify,
}

impl BodyWatch {
    fn set(&self, deadline: Option<Instant>) {
        *self.deadline.lock().unwrap_or_else(|e| e.into_inner()) = deadline;
        self.changed.notify_one();
    }

    fn current(&self) -> Option<Instant> {
        *self.deadline.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Resolves once an armed deadline passes.
    async fn expired(&self) {
        loop {
            match self.current() {
                None => self.changed.notified().await,
                Some(deadline) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(deadline) => {
                            if self.current().is_some_and(|d| d <= Instant::now()) {
                                return;
                            }
                        }
                        _ = self.changed.notified() => {}
                    }
                }
            }
        }
    }
}

/// The HTTP app as one HTTP/2 connection sees it: each stream in progress takes a permit of
/// `limits.max_connections` and a slot of the connection's client under
/// `limits.max_connections_per_client`, as a connection would; a stream over either is
/// answered 503 without being read further.
struct Streams<A> {
    inner: Arc<A>,
    permits: Arc<Semaphore>,
    /// The connection's own client slot (`None`: not capped).
    slot: Option<ClientSlot>,
    metrics: ConnectionMetrics,
}

#[async_trait]
impl<A> HttpServerApp for Streams<A>
where
    A: HttpServerApp + Send + Sync + 'static,
{
    async fn process_new_http(
        self: &Arc<Self>,
        session: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        let client = match &self.slot {
            Some(slot) => match slot.another() {
                Some(stream_slot) => Some(stream_slot),
                None => {
                    self.metrics.refused.inc();
                    return refuse_stream(session, "too_many_connections_from_client").await;
                }
            },
            None => None,
        };
        let Ok(permit) = self.permits.clone().try_acquire_owned() else {
            self.metrics.refused.inc();
            return refuse_stream(session, "too_many_connections").await;
        };
        let watch = Arc::new(BodyWatch::default());
        let work = BODY_WATCH.scope(
            watch.clone(),
            self.inner.process_new_http(session, shutdown),
        );
        let result = tokio::select! {
            result = work => result,
            _ = watch.expired() => {
                // Dropping the stream's work resets the stream and the upstream request.
                tracing::debug!("HTTP/2 request body not received within limits.body_timeout; stream reset");
                None
            }
        };
        drop((permit, client));
        result
    }

    fn h2_options(&self) -> Option<H2Options> {
        self.inner.h2_options()
    }

    fn server_options(&self) -> Option<&HttpServerOptions> {
        self.inner.server_options()
    }

    async fn http_cleanup(&self) {
        self.inner.http_cleanup().await;
    }
}

/// Answers an HTTP/2 stream 503 (`reason`) at once.
async fn refuse_stream(
    mut session: ServerSession,
    reason: &'static str,
) -> Option<ReusedHttpStream> {
    let request_id = RequestId::random();
    let refusal = Refusal::Unavailable(reason);
    let body = refusal.body(request_id.as_str());
    let Ok(mut header) = ResponseHeader::build(refusal.status(), Some(4)) else {
        return None;
    };
    let fields = [
        ("content-type", "application/json".to_owned()),
        ("content-length", body.len().to_string()),
        ("retry-after", "1".to_owned()),
        (
            keyward_http::respond::REQUEST_ID_HEADER,
            request_id.as_str().to_owned(),
        ),
    ];
    for (name, value) in fields {
        let _ = header.insert_header(name, value);
    }
    if session.read_request().await.is_ok() {
        let _ = session.write_response_header(Box::new(header)).await;
        let _ = session.write_response_body(body, true).await;
        let _ = session.finish().await;
    }
    None
}

/// Where a [`HeaderDeadline`] is in the current request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Reading a request header: it must be complete by `deadline`, or, when that is `None`,
    /// within `timeout` of its first byte.
    Header {
        deadline: Option<Instant>,
        /// Line feeds since the last byte that is neither CR nor LF (the header ends at two).
        newlines: u8,
        /// A byte other than CR or LF was read (empty lines before a request are ignored).
        started: bool,
    },
    /// An HTTP/2 connection: `remaining` bytes of its preface must arrive by `deadline`.
    Preface { deadline: Instant, remaining: usize },
    /// An HTTP/2 connection after its preface: a header block (or a frame header) in progress
    /// must be complete by `deadline`; `None` while none is.
    H2 {
        deadline: Option<Instant>,
        frames: H2Frames,
    },
    /// The header is complete: reads pass straight through until re-armed.
    Body,
    /// The deadline passed: every further read fails.
    Expired,
}

/// Wraps a connection's stream; while armed, fails reads once the request header has not
/// arrived whole (a blank line, CRLF CRLF or LF LF) within the timeout.
#[derive(Debug)]
pub struct HeaderDeadline {
    inner: Stream,
    timeout: Duration,
    phase: Phase,
    /// Only made when a read has to wait while armed: a request that arrives in one read (the
    /// common case) never touches the timer.
    sleep: Option<Pin<Box<Sleep>>>,
    timeouts: prometheus::IntCounter,
}

impl HeaderDeadline {
    /// Armed for the connection's first request: its header must be in within `timeout` of now.
    pub fn new(inner: Stream, timeout: Duration, timeouts: prometheus::IntCounter) -> Self {
        HeaderDeadline {
            inner,
            timeout,
            phase: Phase::Header {
                deadline: Some(Instant::now() + timeout),
                newlines: 0,
                started: false,
            },
            sleep: None,
            timeouts,
        }
    }

    /// Not armed: every read passes straight through (the transport under TLS, where the
    /// deadline applies to the decrypted stream above it).
    pub fn passthrough(inner: Stream, timeouts: prometheus::IntCounter) -> Self {
        HeaderDeadline {
            inner,
            timeout: Duration::ZERO,
            phase: Phase::Body,
            sleep: None,
            timeouts,
        }
    }

    /// Armed for an HTTP/2 connection: its 24-byte preface must be in within `timeout` of now;
    /// then each header block within `timeout` of its first byte (see [`H2Frames`]).
    pub fn h2_preface(inner: Stream, timeout: Duration, timeouts: prometheus::IntCounter) -> Self {
        HeaderDeadline {
            inner,
            timeout,
            phase: Phase::Preface {
                deadline: Instant::now() + timeout,
                remaining: H2_PREFACE_LEN,
            },
            sleep: None,
            timeouts,
        }
    }

    /// Arms the deadline for the next request on a kept-alive connection: it starts at the
    /// request's first byte (the idle time before it is pingora's keep-alive timeout).
    pub fn rearm(&mut self) {
        if self.phase != Phase::Expired {
            self.phase = Phase::Header {
                deadline: None,
                newlines: 0,
                started: false,
            };
        }
    }

    /// Counts the deadline, answers 408 when part of a header had arrived (best effort: only
    /// what the socket takes at once), and fails the read.
    fn expire(&mut self, cx: &mut Context<'_>, started: bool) -> Poll<io::Result<()>> {
        self.phase = Phase::Expired;
        self.sleep = None;
        self.timeouts.inc();
        if started {
            let response = Refusal::RequestTimeout.raw_http1(RequestId::random().as_str());
            let mut written = 0;
            while written < response.len() {
                match Pin::new(&mut self.inner).poll_write(cx, &response[written..]) {
                    Poll::Ready(Ok(n)) if n > 0 => written += n,
                    _ => break,
                }
            }
            let _ = Pin::new(&mut self.inner).poll_flush(cx);
        }
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "request header not received within limits.header_read_timeout",
        )))
    }
}

impl HeaderDeadline {
    fn poll_read_preface(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
        deadline: Instant,
        remaining: usize,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let read = &buf.filled()[before..];
                if !read.is_empty() && Instant::now() >= deadline {
                    return self.expire(cx, false);
                }
                if read.len() < remaining {
                    self.phase = Phase::Preface {
                        deadline,
                        remaining: remaining - read.len(),
                    };
                    return Poll::Ready(Ok(()));
                }
                // The preface is in; what follows it are frames.
                self.sleep = None;
                self.track_frames(cx, H2Frames::default(), None, &read[remaining..])
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                let sleep = self
                    .sleep
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                ready!(sleep.as_mut().poll(cx));
                self.expire(cx, false)
            }
        }
    }

    /// A read of an HTTP/2 connection after its preface.
    fn poll_read_frames(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
        deadline: Option<Instant>,
        frames: H2Frames,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => self.track_frames(cx, frames, deadline, &buf.filled()[before..]),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                let Some(deadline) = deadline else {
                    // No header block in progress: idle, or a body (`limits.body_timeout`).
                    return Poll::Pending;
                };
                let sleep = self
                    .sleep
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                if sleep.deadline() != deadline {
                    sleep.as_mut().reset(deadline);
                }
                ready!(sleep.as_mut().poll(cx));
                self.expire(cx, false)
            }
        }
    }

    /// Follows `read`, just read from an HTTP/2 connection, through its frames: arms the
    /// deadline when a header block starts, disarms it when none is in progress, and fails
    /// the read when one that was in progress before this read is still not done past it.
    fn track_frames(
        &mut self,
        cx: &mut Context<'_>,
        mut frames: H2Frames,
        deadline: Option<Instant>,
        read: &[u8],
    ) -> Poll<io::Result<()>> {
        let rested = frames.feed(read);
        let deadline = match (frames.in_progress(), deadline) {
            (false, _) => None,
            // The same block as before this read: still bound to its deadline. (Checked after
            // the bytes, so that a block whose end was only read late is not failed.)
            (true, Some(deadline)) if !rested => {
                if Instant::now() >= deadline {
                    return self.expire(cx, false);
                }
                Some(deadline)
            }
            // A block (or frame header) that started in this read.
            (true, _) => Some(Instant::now() + self.timeout),
        };
        if deadline.is_none() {
            self.sleep = None;
        }
        self.phase = Phase::H2 { deadline, frames };
        Poll::Ready(Ok(()))
    }
}

/// Where an HTTP/2 client's frames are, by their 9-byte frame headers (RFC 9113 §4.1), read as
/// the bytes pass (nothing is buffered but a split frame header's first bytes): whether a
/// header block is in progress, from a HEADERS frame's header to the whole payload of the
/// frame that carries END_HEADERS. The PADDED and PRIORITY flags add fields inside a frame's
/// payload, which its length already counts. A frame header that has only partly arrived
/// counts as in progress too: a client sends nothing between requests, and the rest of a
/// frame header it has started follows at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct H2Frames {
    /// The current frame header's bytes, while `have` < 9.
    header: [u8; H2_FRAME_HEADER_LEN],
    /// How many bytes of the current frame header have been read (9: its payload is next).
    have: u8,
    /// Payload bytes of the current frame still to come.
    payload: u32,
    /// The current frame ends its header block (END_HEADERS).
    ends_block: bool,
    /// A header block has started and the frame ending it has not been read whole.
    in_block: bool,
}

impl H2Frames {
    /// Follows `bytes`; returns whether nothing was in progress at some point of them (before,
    /// between two frames or after), i.e. whether what is in progress now started within them.
    fn feed(&mut self, mut bytes: &[u8]) -> bool {
        let mut rested = !self.in_progress();
        while !bytes.is_empty() {
            let have = usize::from(self.have);
            if have < H2_FRAME_HEADER_LEN {
                let take = (H2_FRAME_HEADER_LEN - have).min(bytes.len());
                self.header[have..have + take].copy_from_slice(&bytes[..take]);
                self.have += take as u8;
                bytes = &bytes[take..];
                if usize::from(self.have) < H2_FRAME_HEADER_LEN {
                    break;
                }
                self.start_frame();
            } else {
                let take = bytes.len().min(self.payload as usize);
                self.payload -= take as u32;
                bytes = &bytes[take..];
            }
            if self.payload == 0 {
                self.end_frame();
            }
            rested |= !self.in_progress();
        }
        rested
    }

    /// The current frame's header is in.
    fn start_frame(&mut self) {
        let [l0, l1, l2, kind, flags, ..] = self.header;
        self.payload = u32::from_be_bytes([0, l0, l1, l2]);
        let end_headers = flags & H2_END_HEADERS != 0;
        self.ends_block = match kind {
            // PUSH_PROMISE is not a client's to send (h2 closes the connection for it), but
            // it would start a header block.
            H2_HEADERS | H2_PUSH_PROMISE => {
                self.in_block = true;
                end_headers
            }
            // Outside a block it is a protocol error, the h2 codec's to answer.
            H2_CONTINUATION => self.in_block && end_headers,
            // Another frame inside a block is a protocol error too: the block stays open.
            _ => false,
        };
    }

    /// The current frame has been read whole.
    fn end_frame(&mut self) {
        if self.ends_block {
            self.in_block = false;
        }
        self.ends_block = false;
        self.have = 0;
    }

    /// Whether a header block, or a frame header, has started and is not complete.
    fn in_progress(&self) -> bool {
        self.in_block || (self.have > 0 && usize::from(self.have) < H2_FRAME_HEADER_LEN)
    }
}

/// Scans newly read bytes for the end of a request header; returns whether it was found.
/// The end is two line feeds with nothing but carriage returns between them (CRLF CRLF or
/// LF LF), after a byte other than CR or LF (empty lines before a request are not its end).
/// Line by line with `memchr` rather than byte by byte: this runs on every request, and a
/// header line's first byte decides whether the line is empty.
fn header_ends(bytes: &[u8], newlines: &mut u8, started: &mut bool) -> bool {
    let mut rest = bytes;
    if !*started {
        let Some(first) = rest.iter().position(|&b| b != b'\n' && b != b'\r') else {
            return false;
        };
        *started = true;
        *newlines = 0;
        rest = &rest[first..];
    }
    loop {
        let line_end = memchr::memchr(b'\n', rest);
        // A byte other than CR before the next LF (or in the unfinished line) ends the run of
        // empty lines.
        let line = &rest[..line_end.unwrap_or(rest.len())];
        if line.iter().any(|&b| b != b'\r') {
            *newlines = 0;
        }
        let Some(at) = line_end else {
            return false;
        };
        *newlines += 1;
        if *newlines == 2 {
            return true;
        }
        rest = &rest[at + 1..];
    }
}

impl AsyncRead for HeaderDeadline {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Phase::Preface {
            deadline,
            remaining,
        } = this.phase
        {
            return this.poll_read_preface(cx, buf, deadline, remaining);
        }
        if let Phase::H2 { deadline, frames } = this.phase {
            return this.poll_read_frames(cx, buf, deadline, frames);
        }
        let Phase::Header {
            deadline,
            mut newlines,
            mut started,
        } = this.phase
        else {
            if this.phase == Phase::Expired {
                return Poll::Ready(Err(io::ErrorKind::TimedOut.into()));
            }
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        };
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let read = &buf.filled()[before..];
                if read.is_empty() {
                    // End of stream: pingora sees the close.
                    return Poll::Ready(Ok(()));
                }
                let now = Instant::now();
                let deadline = match deadline {
                    Some(deadline) if now >= deadline => return this.expire(cx, true),
                    Some(deadline) => deadline,
                    None => now + this.timeout,
                };
                this.phase = match header_ends(read, &mut newlines, &mut started) {
                    true => {
                        this.sleep = None;
                        Phase::Body
                    }
                    false => Phase::Header {
                        deadline: Some(deadline),
                        newlines,
                        started,
                    },
                };
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                let Some(deadline) = deadline else {
                    // Idle between requests: pingora's keep-alive timeout applies.
                    return Poll::Pending;
                };
                let sleep = this
                    .sleep
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                if sleep.deadline() != deadline {
                    sleep.as_mut().reset(deadline);
                }
                ready!(sleep.as_mut().poll(cx));
                this.expire(cx, started)
            }
        }
    }
}

impl AsyncWrite for HeaderDeadline {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[async_trait]
impl Shutdown for HeaderDeadline {
    async fn shutdown(&mut self) {
        Shutdown::shutdown(&mut *self.inner).await
    }
}

impl UniqueID for HeaderDeadline {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for HeaderDeadline {
    fn get_ssl(&self) -> Option<&pingora::protocols::tls::TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for HeaderDeadline {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for HeaderDeadline {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest)
    }
}

impl GetSocketDigest for HeaderDeadline {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, socket_digest: SocketDigest) {
        self.inner.set_socket_digest(socket_digest)
    }
}

#[async_trait]
impl Peek for HeaderDeadline {
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ends(chunks: &[&[u8]]) -> Option<usize> {
        let (mut newlines, mut started) = (0, false);
        chunks
            .iter()
            .position(|chunk| header_ends(chunk, &mut newlines, &mut started))
    }

    /// The byte-by-byte scan `header_ends` replaced: the model it must agree with.
    fn model_ends(bytes: &[u8], newlines: &mut u8, started: &mut bool) -> bool {
        for &byte in bytes {
            match byte {
                b'\n' if *started => {
                    *newlines += 1;
                    if *newlines == 2 {
                        return true;
                    }
                }
                b'\n' | b'\r' => {}
                _ => {
                    *started = true;
                    *newlines = 0;
                }
            }
        }
        false
    }

    /// Random mixes of CR, LF, a letter and a space, cut into random reads: the line-by-line
    /// scan finds the end in the same read as the byte-by-byte model, or neither does.
    #[test]
    fn agrees_with_the_byte_by_byte_scan() {
        use rand::{Rng as _, SeedableRng as _};
        let mut rng = rand::rngs::StdRng::seed_from_u64(26);
        for _ in 0..20_000 {
            let len = rng.gen_range(0..40);
            let bytes: Vec<u8> = (0..len)
                .map(|_| [b'\r', b'\n', b'a', b' '][rng.gen_range(0..4)])
                .collect();
            let mut cuts: Vec<usize> = (0..rng.gen_range(0..4))
                .map(|_| rng.gen_range(0..=len))
                .collect();
            cuts.sort_unstable();
            let mut chunks = Vec::new();
            let mut from = 0;
            for cut in cuts.into_iter().chain([len]) {
                chunks.push(&bytes[from..cut]);
                from = cut;
            }
            let (mut n, mut s) = (0, false);
            let ours = chunks.iter().position(|c| header_ends(c, &mut n, &mut s));
            let (mut n, mut s) = (0, false);
            let model = chunks.iter().position(|c| model_ends(c, &mut n, &mut s));
            assert_eq!(
                ours,
                model,
                "{:?} in {:?}",
                String::from_utf8_lossy(&bytes),
                chunks
            );
        }
    }

    #[test]
    fn finds_the_blank_line_across_reads() {
        assert_eq!(ends(&[b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"]), Some(0));
        assert_eq!(
            ends(&[b"GET / HTTP/1.1\r\nHost: a\r", b"\n\r", b"\n"]),
            Some(2)
        );
        assert_eq!(ends(&[b"GET / HTTP/1.1\nHost: a\n\n"]), Some(0));
        assert_eq!(ends(&[b"GET / HTTP/1.1\r\nHost: a\r\n"]), None);
    }

    const TIMEOUT: Duration = Duration::from_millis(200);

    fn wrapped() -> (
        HeaderDeadline,
        tokio::io::DuplexStream,
        prometheus::IntCounter,
    ) {
        let (ours, client) = tokio::io::duplex(4096);
        let counter = prometheus::IntCounter::new("t", "t").unwrap();
        (
            HeaderDeadline::new(Box::new(ours), TIMEOUT, counter.clone()),
            client,
            counter,
        )
    }

    async fn read_some(stream: &mut HeaderDeadline) -> io::Result<Vec<u8>> {
        use tokio::io::AsyncReadExt;
        let mut buf = vec![0u8; 1024];
        let n = stream.read(&mut buf).await?;
        buf.truncate(n);
        Ok(buf)
    }

    #[tokio::test]
    async fn a_header_late_by_pieces_fails_and_gets_408() {
        use tokio::io::AsyncReadExt;
        let (mut stream, mut client, counter) = wrapped();
        let started = Instant::now();
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            loop {
                match read_some(&mut stream).await {
                    Ok(bytes) => got.extend(bytes),
                    Err(e) => return (got, e.kind(), started.elapsed()),
                }
            }
        });
        // A byte every 50 ms: each read is quick, the header as a whole is late.
        for byte in b"GET / HTTP/1.1\r\nHost: x" {
            if client.write_all(&[*byte]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let (got, kind, elapsed) = reader.await.unwrap();
        assert_eq!(kind, io::ErrorKind::TimedOut);
        assert!(elapsed >= TIMEOUT && elapsed < TIMEOUT * 2, "{elapsed:?}");
        assert!(got.len() < 8, "only what arrived in time was read");
        let mut answer = vec![0u8; 15];
        client.read_exact(&mut answer).await.unwrap();
        assert_eq!(&answer, b"HTTP/1.1 408 Re");
        assert_eq!(counter.get(), 1);
    }

    #[tokio::test]
    async fn body_and_idle_time_between_requests_are_not_limited() {
        let (mut stream, mut client, counter) = wrapped();
        client
            .write_all(b"POST / HTTP/1.1\r\nContent-Length: 4\r\n\r\nab")
            .await
            .unwrap();
        assert_eq!(read_some(&mut stream).await.unwrap().len(), 40);
        // The header is complete: a body slower than the timeout passes.
        tokio::time::sleep(TIMEOUT * 2).await;
        client.write_all(b"cd").await.unwrap();
        assert_eq!(read_some(&mut stream).await.unwrap(), b"cd");
        // Re-armed for the next request: the idle time before its first byte does not count.
        stream.rearm();
        tokio::time::sleep(TIMEOUT * 2).await;
        client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        assert_eq!(read_some(&mut stream).await.unwrap().len(), 16);
        tokio::time::sleep(TIMEOUT / 2).await;
        client.write_all(b"Host: x\r\n\r\n").await.unwrap();
        assert_eq!(read_some(&mut stream).await.unwrap().len(), 11);
        // But its header is held to the deadline from that first byte.
        stream.rearm();
        client.write_all(b"GET /").await.unwrap();
        assert_eq!(read_some(&mut stream).await.unwrap(), b"GET /");
        let kind = read_some(&mut stream).await.unwrap_err().kind();
        assert_eq!(kind, io::ErrorKind::TimedOut);
        assert_eq!(counter.get(), 1);
    }

    #[tokio::test]
    async fn an_h2_preface_must_arrive_in_time_then_reads_pass_through() {
        let counter = prometheus::IntCounter::new("t", "t").unwrap();
        let (ours, mut client) = tokio::io::duplex(4096);
        let mut stream = HeaderDeadline::h2_preface(Box::new(ours), TIMEOUT, counter.clone());
        client
            .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(read_some(&mut stream).await.unwrap().len(), H2_PREFACE_LEN);
        // The preface is in: the connection may wait for its first frame.
        tokio::time::sleep(TIMEOUT * 2).await;
        let settings = frame(SETTINGS, 0, &[0, 3, 0, 0, 0, 100]);
        client.write_all(&settings).await.unwrap();
        assert_eq!(read_some(&mut stream).await.unwrap(), settings);
        assert_eq!(counter.get(), 0);

        // Part of a preface, then silence: the read fails at the deadline, nothing is written.
        let (ours, mut client) = tokio::io::duplex(4096);
        let mut stream = HeaderDeadline::h2_preface(Box::new(ours), TIMEOUT, counter.clone());
        client.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
        assert_eq!(read_some(&mut stream).await.unwrap().len(), 16);
        let started = Instant::now();
        let kind = read_some(&mut stream).await.unwrap_err().kind();
        assert_eq!(kind, io::ErrorKind::TimedOut);
        assert!(started.elapsed() < TIMEOUT * 2);
        assert_eq!(counter.get(), 1);
        drop(stream);
        let mut rest = Vec::new();
        use tokio::io::AsyncReadExt;
        client.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty(), "no HTTP/1 answer on an h2 connection");
    }

    #[tokio::test]
    async fn a_passthrough_stream_never_expires() {
        let counter = prometheus::IntCounter::new("t", "t").unwrap();
        let (ours, mut client) = tokio::io::duplex(4096);
        let mut stream = HeaderDeadline::passthrough(Box::new(ours), counter.clone());
        client.write_all(b"\x16\x03\x01").await.unwrap();
        assert_eq!(read_some(&mut stream).await.unwrap(), b"\x16\x03\x01");
        tokio::time::sleep(TIMEOUT * 2).await;
        client.write_all(b"rest").await.unwrap();
        assert_eq!(read_some(&mut stream).await.unwrap(), b"rest");
        assert_eq!(counter.get(), 0);
    }

    #[test]
    fn the_per_client_cap_counts_ipv4_by_address_and_ipv6_by_64() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(client_key(ip("192.0.2.7")), ip("192.0.2.7"));
        assert_eq!(
            client_key(ip("2001:db8:1:2:aaaa::1")),
            client_key(ip("2001:db8:1:2:bbbb::9"))
        );
        assert_ne!(
            client_key(ip("2001:db8:1:2::1")),
            client_key(ip("2001:db8:1:3::1"))
        );
        let cap = Arc::new(PerClient {
            max: 2,
            open: std::sync::Mutex::new(HashMap::new()),
        });
        let a = cap.take(ip("192.0.2.7")).unwrap();
        let b = a.another().unwrap();
        assert!(cap.take(ip("192.0.2.7")).is_none());
        assert!(
            cap.take(ip("192.0.2.8")).is_some(),
            "another address has its own"
        );
        drop(b);
        let c = cap.take(ip("192.0.2.7")).unwrap();
        drop((a, c));
        assert!(cap.open.lock().unwrap().is_empty(), "counts are given back");
    }

    #[tokio::test]
    async fn a_body_watch_fires_only_while_armed() {
        let watch = BodyWatch::default();
        watch.set(Some(Instant::now() + Duration::from_millis(50)));
        watch.set(None);
        let quiet = tokio::time::timeout(Duration::from_millis(150), watch.expired()).await;
        assert!(quiet.is_err(), "disarmed: never fires");
        watch.set(Some(Instant::now() + Duration::from_millis(50)));
        let started = Instant::now();
        tokio::time::timeout(Duration::from_secs(2), watch.expired())
            .await
            .unwrap();
        assert!(started.elapsed() >= Duration::from_millis(50));
    }

    // HTTP/2 frames (RFC 9113 §6) the tests send, besides the tracked ones.
    const DATA: u8 = 0x0;
    const SETTINGS: u8 = 0x4;
    const WINDOW_UPDATE: u8 = 0x8;
    const END_STREAM: u8 = 0x1;
    const PADDED: u8 = 0x8;
    const PRIORITY: u8 = 0x20;
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

    /// A frame on stream 1 (SETTINGS: 0).
    fn frame(kind: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
        let length = (payload.len() as u32).to_be_bytes();
        let stream: u32 = if kind == SETTINGS { 0 } else { 1 };
        let mut bytes = vec![length[1], length[2], length[3], kind, flags];
        bytes.extend(stream.to_be_bytes());
        bytes.extend(payload);
        bytes
    }

    /// Frames, with whether a header block is in progress while each one's payload is read
    /// and once it has been read whole.
    fn frames() -> Vec<(Vec<u8>, bool, bool)> {
        // HEADERS with a pad length, a priority and 2 bytes of padding around 3 of HPACK.
        let padded = [2, 0, 0, 0, 3, 15, 0x82, 0x87, 0x84, 0, 0];
        vec![
            (frame(SETTINGS, 0, &[0, 3, 0, 0, 0, 100]), false, false),
            (frame(H2_HEADERS, PRIORITY | PADDED, &padded), true, true),
            (frame(H2_CONTINUATION, 0, &[0x41, 1]), true, true),
            (frame(H2_CONTINUATION, 0, &[]), true, true),
            (frame(H2_CONTINUATION, H2_END_HEADERS, b"abc"), true, false),
            (
                frame(DATA, END_STREAM | PADDED, &[1, b'x', b'y', 0]),
                false,
                false,
            ),
            (
                frame(H2_HEADERS, H2_END_HEADERS | END_STREAM, &[]),
                true,
                false,
            ),
            (frame(H2_HEADERS, H2_END_HEADERS, &[0x82; 20]), true, false),
            (frame(WINDOW_UPDATE, 0, &[0, 1, 0, 0]), false, false),
            (
                frame(H2_HEADERS, H2_END_HEADERS | PADDED, &[3, 0x82, 0, 0, 0]),
                true,
                false,
            ),
            (frame(DATA, 0, &[]), false, false),
        ]
    }

    /// The frames' bytes, and whether a header block or frame header is in progress after
    /// each prefix of them (`[0]`: none read).
    fn frames_and_states() -> (Vec<u8>, Vec<bool>) {
        let (mut bytes, mut states) = (Vec::new(), vec![false]);
        for (frame, during, after) in frames() {
            for at in 1..=frame.len() {
                states.push(match at {
                    at if at < H2_FRAME_HEADER_LEN => true,
                    at if at == frame.len() => after,
                    _ => during,
                });
            }
            bytes.extend(frame);
        }
        (bytes, states)
    }

    /// Between two frames, no header block open.
    fn at_boundary(frames: &H2Frames) -> bool {
        frames.have == 0 && frames.payload == 0 && !frames.in_block && !frames.ends_block
    }

    #[test]
    fn h2_frames_are_followed_however_the_reads_split_them() {
        let (bytes, states) = frames_and_states();
        // A byte at a time.
        let mut frames = H2Frames::default();
        for (at, byte) in bytes.iter().enumerate() {
            frames.feed(&[*byte]);
            assert_eq!(frames.in_progress(), states[at + 1], "after byte {at}");
        }
        assert!(at_boundary(&frames), "{frames:?}");
        // In three reads split at every pair of offsets.
        for i in 0..=bytes.len() {
            for j in i..=bytes.len() {
                let mut frames = H2Frames::default();
                let mut at = 0;
                for end in [i, j, bytes.len()] {
                    let rested = frames.feed(&bytes[at..end]);
                    assert_eq!(frames.in_progress(), states[end], "split {i}/{j} at {end}");
                    assert_eq!(
                        rested,
                        states[at..=end].contains(&false),
                        "split {i}/{j}: rested within {at}..{end}"
                    );
                    at = end;
                }
                assert!(at_boundary(&frames), "split {i}/{j}: {frames:?}");
            }
        }
    }

    #[test]
    fn h2_frame_lengths_are_24_bits() {
        let mut frames = H2Frames::default();
        let mut header = frame(H2_HEADERS, H2_END_HEADERS, &[]);
        header[..3].copy_from_slice(&[1, 2, 3]);
        frames.feed(&header);
        assert_eq!(frames.payload, 0x01_02_03);
        frames.feed(&vec![0; 0x01_02_03 - 1]);
        assert!(frames.in_progress());
        frames.feed(&[0]);
        assert!(!frames.in_progress());
        // Not END_HEADERS on a CONTINUATION outside a block: nothing to end (the codec's error).
        frames.feed(&frame(H2_CONTINUATION, H2_END_HEADERS, b"x"));
        assert!(!frames.in_progress());
        // Another frame inside a block does not end it.
        frames.feed(&frame(H2_HEADERS, 0, b"x"));
        frames.feed(&frame(DATA, H2_END_HEADERS, b"x"));
        assert!(frames.in_progress());
    }

    fn h2_wrapped(
        timeout: Duration,
    ) -> (
        HeaderDeadline,
        tokio::io::DuplexStream,
        prometheus::IntCounter,
    ) {
        let (ours, client) = tokio::io::duplex(1 << 16);
        let counter = prometheus::IntCounter::new("t", "t").unwrap();
        let stream = HeaderDeadline::h2_preface(Box::new(ours), timeout, counter.clone());
        (stream, client, counter)
    }

    /// Reads until a read fails (within 3 s): what was read, the error, and when it failed.
    fn read_until_error(
        mut stream: HeaderDeadline,
    ) -> tokio::task::JoinHandle<(Vec<u8>, io::ErrorKind, Instant)> {
        tokio::spawn(async move {
            let mut got = Vec::new();
            let read = async {
                loop {
                    match read_some(&mut stream).await {
                        Ok(bytes) if bytes.is_empty() => panic!("end of stream"),
                        Ok(bytes) => got.extend(bytes),
                        Err(e) => return (e.kind(), Instant::now()),
                    }
                }
            };
            let (kind, failed) = tokio::time::timeout(Duration::from_secs(3), read)
                .await
                .expect("the reads did not fail");
            (got, kind, failed)
        })
    }

    #[tokio::test]
    async fn an_h2_header_block_trickled_in_continuations_fails_at_the_deadline() {
        use tokio::io::AsyncReadExt;
        let (stream, mut client, counter) = h2_wrapped(TIMEOUT);
        let reader = read_until_error(stream);
        let mut start = PREFACE.to_vec();
        start.extend(frame(SETTINGS, 0, &[]));
        start.extend(frame(H2_HEADERS, 0, &[0x82, 0x87]));
        client.write_all(&start).await.unwrap();
        let started = Instant::now();
        // A CONTINUATION whose every byte is in time on its own, the block as a whole is late.
        let continuation = frame(H2_CONTINUATION, H2_END_HEADERS, &[0x84; 20]);
        for byte in continuation {
            if client.write_all(&[byte]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let (got, kind, failed) = reader.await.unwrap();
        assert_eq!(kind, io::ErrorKind::TimedOut);
        let elapsed = failed - started;
        assert!(elapsed >= TIMEOUT && elapsed < TIMEOUT * 2, "{elapsed:?}");
        assert!(got.len() < start.len() + 20, "the block was cut short");
        assert_eq!(counter.get(), 1);
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty(), "no HTTP/1 answer on an h2 connection");
    }

    #[tokio::test]
    async fn an_h2_header_block_stalled_anywhere_fails_at_the_deadline() {
        let headers = frame(H2_HEADERS, H2_END_HEADERS, &[0x82; 10]);
        // In the preface's read or after it; stalled inside the HEADERS payload, after a
        // HEADERS without END_HEADERS, or inside a frame header.
        let mut stalls: Vec<Vec<Vec<u8>>> = Vec::new();
        for cut in [1, 8, 9, 14] {
            stalls.push(vec![[PREFACE, &headers[..cut]].concat()]);
            stalls.push(vec![PREFACE.to_vec(), headers[..cut].to_vec()]);
        }
        stalls.push(vec![[PREFACE, &frame(H2_HEADERS, 0, &[0x82])[..]].concat()]);
        let mut settings = frame(SETTINGS, 0, &[]);
        settings.extend(&headers[..3]);
        stalls.push(vec![PREFACE.to_vec(), settings]);
        for writes in stalls {
            let (stream, mut client, counter) = h2_wrapped(TIMEOUT);
            let reader = read_until_error(stream);
            let mut stalled = Instant::now();
            for write in &writes {
                stalled = Instant::now();
                client.write_all(write).await.unwrap();
                tokio::time::sleep(TIMEOUT / 4).await;
            }
            let (got, kind, failed) = reader.await.unwrap();
            assert_eq!(kind, io::ErrorKind::TimedOut, "{writes:?}");
            assert_eq!(got, writes.concat());
            let elapsed = failed - stalled;
            assert!(elapsed >= TIMEOUT && elapsed < TIMEOUT * 2, "{elapsed:?}");
            assert_eq!(counter.get(), 1);
        }
    }

    #[tokio::test]
    async fn h2_idle_time_and_bodies_are_not_limited_and_each_block_has_its_own_deadline() {
        const TIMEOUT: Duration = Duration::from_millis(500);
        let (mut stream, mut client, counter) = h2_wrapped(TIMEOUT);
        let mut start = PREFACE.to_vec();
        start.extend(frame(SETTINGS, 0, &[]));
        start.extend(frame(H2_HEADERS, H2_END_HEADERS, &[0x83, 0x87, 0x84]));
        start.extend(frame(DATA, 0, b"abc"));
        let data = frame(DATA, END_STREAM, &[b'x'; 10]);
        // Each write after the pause before it; the reads wait all along.
        let writes = vec![
            (Duration::ZERO, start),
            // Idle between frames, then a DATA frame whose payload is slow: bodies are
            // `limits.body_timeout`'s.
            (TIMEOUT * 2, data[..12].to_vec()),
            (TIMEOUT * 2, data[12..].to_vec()),
            // Two blocks that each take 60 % of the timeout, the second starting in the read
            // that ends the first: each is held to its own deadline.
            (TIMEOUT * 2, frame(H2_HEADERS, 0, &[0x82])),
            (
                TIMEOUT * 6 / 10,
                [
                    frame(H2_CONTINUATION, H2_END_HEADERS, &[0x84]),
                    frame(H2_HEADERS, 0, &[0x82]),
                ]
                .concat(),
            ),
            (
                TIMEOUT * 6 / 10,
                frame(H2_CONTINUATION, H2_END_HEADERS, &[0x84]),
            ),
            (TIMEOUT * 2, frame(DATA, 0, b"z")),
        ];
        let total: usize = writes.iter().map(|(_, bytes)| bytes.len()).sum();
        let writer = tokio::spawn(async move {
            for (pause, bytes) in writes {
                tokio::time::sleep(pause).await;
                client.write_all(&bytes).await.unwrap();
            }
            client
        });
        let mut read = 0;
        while read < total {
            read += read_some(&mut stream).await.unwrap().len();
        }
        assert_eq!(read, total);
        drop(writer.await.unwrap());
        assert_eq!(counter.get(), 0);
    }

    #[test]
    fn empty_lines_before_the_request_do_not_end_it() {
        assert_eq!(ends(&[b"\r\n\r\n\n", b"GET / HTTP/1.1\r\n"]), None);
        assert_eq!(ends(&[b"\r\n\r\n", b"GET / HTTP/1.1\r\n\r\n"]), Some(1));
    }
}
