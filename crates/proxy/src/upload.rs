//! Signed request bodies: read whole and checked against `Content-Digest` before a single byte
//! of the request goes to the upstream, then replayed to it.
//!
//! A body is read only behind a signature that already verified (see
//! `Authenticator::verify_signature`), so an anonymous client cannot make keyward store
//! anything. Up to `signatures.body_in_memory` bytes stay in memory; a larger body spills to
//! an unnamed temporary file (created with mode 0600 and unlinked at once, so nothing is left
//! behind even after a crash). All bodies held at once are bounded by
//! `signatures.bodies_in_flight`; over it a signed upload gets 503 and `Retry-After`.
//!
//! pingora replays a body it buffered itself only up to its retry buffer (64 KiB). A body up
//! to that size is left to pingora; a larger one replaces the downstream session with
//! `VerifiedBodySession`, which serves the request body from the spool and passes everything
//! else through to the client's session. pingora cannot hand an HTTP/1.1 connection back from
//! such a session, so the response to a spooled upload carries `Connection: close`.

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use keyward_auth::signature::{BodyHasher, ExpectedDigest};
use keyward_config::SignedBodies;
use keyward_http::respond::Refusal;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::http::custom::server::Session as CustomSession;
use pingora::protocols::http::custom::CustomMessageWrite;
use pingora::protocols::http::server::Session as HttpSession;
use pingora::protocols::http::HttpTask;
use pingora::protocols::l4::socket::SocketAddr;
use pingora::protocols::Digest;
use pingora::proxy::Session;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// What pingora's retry buffer replays by itself.
pub const RETRY_BUFFER_BYTES: u64 = 64 * 1024;
/// Size of the chunks a spilled body is sent upstream in.
const FILE_CHUNK_BYTES: usize = 64 * 1024;
/// Where spilled bodies go, and the bounds on bodies held at once: all together, and per
/// user (restart-only).
pub struct UploadSpool {
    dir: PathBuf,
    in_flight: Arc<Semaphore>,
    per_user: Arc<PerUser>,
}

/// Bytes held per user (all their signing keys together), so that one client — one key, many
/// keys of one user, or one leaked signature sent on many connections — cannot hold the whole
/// in-flight bound.
struct PerUser {
    held: std::sync::Mutex<HashMap<i64, u64>>,
    limit: u64,
}

impl PerUser {
    fn take(&self, key: i64, bytes: u64) -> bool {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let now = held.get(&key).copied().unwrap_or(0);
        match now.checked_add(bytes).filter(|total| *total <= self.limit) {
            Some(total) => {
                held.insert(key, total);
                true
            }
            None => false,
        }
    }

    fn give_back(&self, key: i64, bytes: u64) {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(now) = held.get_mut(&key) {
            *now = now.saturating_sub(bytes);
            if *now == 0 {
                held.remove(&key);
            }
        }
    }
}

/// The bytes one body holds of both bounds; given back when the body is dropped.
pub struct Reservation {
    permit: Option<OwnedSemaphorePermit>,
    per_user: Arc<PerUser>,
    user_id: i64,
    bytes: u64,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.per_user.give_back(self.user_id, self.bytes);
    }
}

impl UploadSpool {
    pub fn new(settings: &SignedBodies) -> UploadSpool {
        let permits = usize::try_from(settings.in_flight)
            .unwrap_or(usize::MAX)
            .min(Semaphore::MAX_PERMITS);
        UploadSpool {
            dir: settings.spool_dir.clone(),
            in_flight: Arc::new(Semaphore::new(permits)),
            per_user: Arc::new(PerUser {
                held: Default::default(),
                limit: settings.in_flight_per_user,
            }),
        }
    }

    fn reservation(&self, user_id: i64) -> Reservation {
        Reservation {
            permit: None,
            per_user: self.per_user.clone(),
            user_id,
            bytes: 0,
        }
    }

    /// Bytes of the in-flight bound not held by any body now.
    pub fn available(&self) -> usize {
        self.in_flight.available_permits()
    }

    /// Reserves `bytes` more of both in-flight bounds for one body.
    fn reserve(&self, held: &mut Reservation, bytes: u64) -> Result<(), Refusal> {
        if bytes == 0 {
            return Ok(());
        }
        let permits = u32::try_from(bytes).map_err(|_| Refusal::PayloadTooLarge)?;
        let more = self
            .in_flight
            .clone()
            .try_acquire_many_owned(permits)
            .map_err(|_| Refusal::Unavailable("signed_bodies_in_flight"))?;
        if !self.per_user.take(held.user_id, bytes) {
            return Err(Refusal::Unavailable("signed_bodies_in_flight_per_user"));
        }
        held.bytes += bytes;
        match &mut held.permit {
            Some(permit) => permit.merge(more),
            None => held.permit = Some(more),
        }
        Ok(())
    }

    async fn spill_file(&self) -> Result<tokio::fs::File, Refusal> {
        let dir = self.dir.clone();
        let file = tokio::task::spawn_blocking(move || tempfile::tempfile_in(&dir))
            .await
            .map_err(|_| Refusal::Unavailable("spool_unwritable"))?
            .map_err(|e| {
                tracing::error!(dir = %self.dir.display(), error = %e, "cannot create a spool file for a signed body (signatures.spool_dir)");
                Refusal::Unavailable("spool_unwritable")
            })?;
        Ok(tokio::fs::File::from_std(file))
    }
}

/// A signed body, read whole and hashed.
pub struct SignedBody {
    pub hasher: BodyHasher,
    stored: Stored,
    len: u64,
    _reserved: Reservation,
}

enum Stored {
    Memory(Bytes),
    File(tokio::fs::File),
}

/// The value of a `Content-Length` that frames the body, when there is exactly one.
fn declared_length(header: &RequestHeader) -> Option<u64> {
    let mut values = header.headers.get_all(http::header::CONTENT_LENGTH).iter();
    let value = values.next()?;
    match values.next() {
        Some(_) => None,
        None => value.to_str().ok()?.trim().parse().ok(),
    }
}

fn expects_continue(header: &RequestHeader) -> bool {
    header
        .headers
        .get_all(http::header::EXPECT)
        .iter()
        .any(|value| value.as_bytes().eq_ignore_ascii_case(b"100-continue"))
}

/// Reads the whole request body, hashing it as `expected` names, within the limits.
pub async fn read(
    session: &mut Session,
    expected: &ExpectedDigest,
    limits: &SignedBodies,
    spool: &UploadSpool,
    user_id: i64,
) -> Result<SignedBody, Refusal> {
    let declared = declared_length(session.req_header());
    if declared.is_some_and(|length| length > limits.max_body) {
        return Err(Refusal::PayloadTooLarge);
    }
    let mut reserved = spool.reservation(user_id);
    let mut reserved_bytes = declared.unwrap_or(0);
    spool.reserve(&mut reserved, reserved_bytes)?;

    // A client waiting for `100 Continue` gets it from keyward, which is the one reading the
    // body; the upstream then gets the body with its head and no `Expect` to answer.
    if expects_continue(session.req_header()) {
        session
            .as_downstream_mut()
            .write_continue_response()
            .await
            .map_err(|_| Refusal::BadRequest("unreadable_body"))?;
        session
            .req_header_mut()
            .remove_header(&http::header::EXPECT);
    }
    // A body that fits pingora's retry buffer is replayed by pingora itself.
    session.as_downstream_mut().enable_retry_buffering();
    let deadline = Instant::now() + limits.timeout;
    let mut hasher = expected.hasher();
    let mut memory = BytesMut::new();
    let mut file: Option<tokio::fs::File> = None;
    loop {
        let chunk = tokio::time::timeout_at(deadline.into(), session.read_request_body())
            .await
            .map_err(|_| Refusal::BodyTimeout)?
            .map_err(|_| Refusal::BadRequest("unreadable_body"))?;
        let Some(chunk) = chunk else { break };
        let len = hasher.len() + chunk.len() as u64;
        if len > limits.max_body {
            return Err(Refusal::PayloadTooLarge);
        }
        if len > reserved_bytes {
            spool.reserve(&mut reserved, len - reserved_bytes)?;
            reserved_bytes = len;
        }
        hasher.update(&chunk);
        if file.is_none() && len > limits.in_memory {
            let mut spilled = spool.spill_file().await?;
            write(&mut spilled, &memory).await?;
            memory = BytesMut::new();
            file = Some(spilled);
        }
        match &mut file {
            Some(spilled) => write(spilled, &chunk).await?,
            None => memory.extend_from_slice(&chunk),
        }
    }
    let len = hasher.len();
    let stored = match file {
        Some(mut spilled) => {
            spilled
                .flush()
                .await
                .map_err(|_| Refusal::Unavailable("spool_unwritable"))?;
            Stored::File(spilled)
        }
        None => Stored::Memory(memory.freeze()),
    };
    Ok(SignedBody {
        hasher,
        stored,
        len,
        _reserved: reserved,
    })
}

async fn write(file: &mut tokio::fs::File, bytes: &[u8]) -> Result<(), Refusal> {
    file.write_all(bytes).await.map_err(|e| {
        tracing::error!(error = %e, "cannot write a signed body to its spool file (signatures.spool_dir)");
        Refusal::Unavailable("spool_unwritable")
    })
}

impl SignedBody {
    /// Hands the checked body to pingora for forwarding. Within the retry buffer pingora
    /// already holds it; above, the downstream session is wrapped to serve it.
    pub async fn install(self, session: &mut Session) -> Result<(), Refusal> {
        if self.len <= RETRY_BUFFER_BYTES && session.as_downstream().get_retry_buffer().is_some() {
            return Ok(());
        }
        let source = match self.stored {
            Stored::Memory(bytes) => Source::Memory(Some(bytes)),
            Stored::File(mut file) => {
                file.rewind()
                    .await
                    .map_err(|_| Refusal::Unavailable("spool_unwritable"))?;
                Source::File(file)
            }
        };
        // `()` holds the place for the moment between taking the client's session out and
        // putting the wrapper in; nothing runs in between.
        let placeholder = Box::new(HttpSession::new_custom(Box::new(())));
        let mut inner = std::mem::replace(&mut session.downstream_session, placeholder);
        inner.set_keepalive(None);
        *session.downstream_session = HttpSession::new_custom(Box::new(VerifiedBodySession {
            inner: *inner,
            source,
            len: self.len,
            handed_out: 0,
            _reserved: self._reserved,
        }));
        Ok(())
    }
}

enum Source {
    Memory(Option<Bytes>),
    File(tokio::fs::File),
}

/// The client's session, with its request body served from the spool.
struct VerifiedBodySession {
    inner: HttpSession,
    source: Source,
    len: u64,
    handed_out: u64,
    _reserved: Reservation,
}

impl VerifiedBodySession {
    async fn next_chunk(&mut self) -> pingora::Result<Option<Bytes>> {
        if self.handed_out >= self.len {
            return Ok(None);
        }
        let chunk = match &mut self.source {
            Source::Memory(bytes) => bytes.take(),
            Source::File(file) => {
                let want = (self.len - self.handed_out).min(FILE_CHUNK_BYTES as u64) as usize;
                let mut buf = vec![0; want];
                file.read_exact(&mut buf).await.map_err(|e| {
                    pingora::Error::because(
                        pingora::ErrorType::ReadError,
                        "reading a spooled signed body",
                        e,
                    )
                })?;
                Some(Bytes::from(buf))
            }
        };
        self.handed_out += chunk.as_ref().map_or(0, |c| c.len() as u64);
        if chunk.is_none() {
            self.handed_out = self.len;
        }
        Ok(chunk)
    }
}

#[async_trait]
impl CustomSession for VerifiedBodySession {
    fn req_header(&self) -> &RequestHeader {
        self.inner.req_header()
    }

    fn req_header_mut(&mut self) -> &mut RequestHeader {
        self.inner.req_header_mut()
    }

    async fn read_body_bytes(&mut self) -> pingora::Result<Option<Bytes>> {
        self.next_chunk().await
    }

    async fn drain_request_body(&mut self) -> pingora::Result<()> {
        self.handed_out = self.len;
        Ok(())
    }

    async fn write_response_header(
        &mut self,
        resp: Box<ResponseHeader>,
        _end: bool,
    ) -> pingora::Result<()> {
        self.inner.write_response_header(resp).await
    }

    async fn write_response_header_ref(
        &mut self,
        resp: &ResponseHeader,
        _end: bool,
    ) -> pingora::Result<()> {
        self.inner.write_response_header_ref(resp).await
    }

    async fn write_body(&mut self, data: Bytes, end: bool) -> pingora::Result<()> {
        self.inner.write_response_body(data, end).await
    }

    async fn write_trailers(&mut self, trailers: http::HeaderMap) -> pingora::Result<()> {
        self.inner.write_response_trailers(trailers).await
    }

    async fn response_duplex_vec(&mut self, tasks: Vec<HttpTask>) -> pingora::Result<bool> {
        self.inner.response_duplex_vec(tasks).await
    }

    fn set_read_timeout(&mut self, timeout: Option<Duration>) {
        self.inner.set_read_timeout(timeout)
    }

    fn get_read_timeout(&self) -> Option<Duration> {
        self.inner.get_read_timeout()
    }

    fn set_write_timeout(&mut self, timeout: Option<Duration>) {
        self.inner.set_write_timeout(timeout)
    }

    fn get_write_timeout(&self) -> Option<Duration> {
        self.inner.get_write_timeout()
    }

    fn set_total_drain_timeout(&mut self, timeout: Option<Duration>) {
        self.inner.set_total_drain_timeout(timeout)
    }

    fn get_total_drain_timeout(&self) -> Option<Duration> {
        self.inner.get_total_drain_timeout()
    }

    fn request_summary(&self) -> String {
        self.inner.request_summary()
    }

    fn response_written(&self) -> Option<&ResponseHeader> {
        self.inner.response_written()
    }

    async fn shutdown(&mut self, _code: u32, _ctx: &str) {
        self.inner.shutdown().await
    }

    fn is_body_done(&mut self) -> bool {
        self.handed_out >= self.len
    }

    async fn finish(&mut self) -> pingora::Result<()> {
        self.inner.finish_body().await
    }

    fn is_body_empty(&mut self) -> bool {
        self.len == 0
    }

    async fn read_body_or_idle(
        &mut self,
        no_body_expected: bool,
    ) -> pingora::Result<Option<Bytes>> {
        match self.handed_out >= self.len {
            // The client's own body is long read: wait on its connection as pingora would.
            true => self.inner.read_body_or_idle(true).await,
            false if no_body_expected => self.inner.read_body_or_idle(true).await,
            false => self.next_chunk().await,
        }
    }

    fn body_bytes_sent(&self) -> usize {
        self.inner.body_bytes_sent()
    }

    fn body_bytes_read(&self) -> usize {
        self.inner.body_bytes_read()
    }

    fn digest(&self) -> Option<&Digest> {
        self.inner.digest()
    }

    fn digest_mut(&mut self) -> Option<&mut Digest> {
        self.inner.digest_mut()
    }

    fn client_addr(&self) -> Option<&SocketAddr> {
        self.inner.client_addr()
    }

    fn server_addr(&self) -> Option<&SocketAddr> {
        self.inner.server_addr()
    }

    fn pseudo_raw_h1_request_header(&self) -> Bytes {
        self.inner.to_h1_raw()
    }

    fn enable_retry_buffering(&mut self) {}

    /// A retry can replay the body only if none of it went out yet.
    fn retry_buffer_truncated(&self) -> bool {
        self.handed_out > 0
    }

    fn get_retry_buffer(&self) -> Option<Bytes> {
        None
    }

    async fn finish_custom(&mut self) -> pingora::Result<()> {
        Ok(())
    }

    fn take_custom_message_reader(
        &mut self,
    ) -> Option<
        Box<dyn futures::Stream<Item = pingora::Result<Bytes>> + Unpin + Send + Sync + 'static>,
    > {
        None
    }

    fn restore_custom_message_reader(
        &mut self,
        _reader: Box<
            dyn futures::Stream<Item = pingora::Result<Bytes>> + Unpin + Send + Sync + 'static,
        >,
    ) -> pingora::Result<()> {
        Ok(())
    }

    fn take_custom_message_writer(&mut self) -> Option<Box<dyn CustomMessageWrite>> {
        None
    }

    fn restore_custom_message_writer(
        &mut self,
        _writer: Box<dyn CustomMessageWrite>,
    ) -> pingora::Result<()> {
        Ok(())
    }

    fn is_upgrade_req(&self) -> bool {
        self.inner.is_upgrade_req()
    }

    fn was_upgraded(&self) -> bool {
        self.inner.was_upgraded()
    }
}
