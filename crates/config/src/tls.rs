//! TLS on the proxy listener (`listen.tls`): the certificate chain and key files, checked when
//! the config is loaded and served through a rustls certificate resolver.
//!
//! The resolver hands every handshake the certified key that is current at that moment, from
//! an [`ArcSwap`]: [`TlsCertificates::reload`] re-reads the files and swaps the key in for the
//! handshakes that follow. Open connections keep the session they negotiated, so nothing is
//! dropped by a reload, and a reload that fails leaves the current certificate in place.
//!
//! TLS 1.2 and 1.3 only (rustls implements nothing older), ALPN `h2` then `http/1.1`.

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ParsedCertificate, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{InconsistentKeys, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

/// The config key of the certificate chain file.
pub const CERT_KEY: &str = "listen.tls.cert";
/// The config key of the private key file.
pub const KEY_KEY: &str = "listen.tls.key";

/// The ALPN protocols offered, in the server's order of preference.
pub const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// `listen.tls`: where the PEM files are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate, then any intermediates (the chain a client needs), PEM.
    pub cert: PathBuf,
    /// The private key of the first certificate: PKCS#8, PKCS#1 (RSA) or SEC1 (EC), PEM.
    pub key: PathBuf,
}

/// Why a certificate or key cannot be used, named by the config key of the file at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TlsError {
    #[error("listen.tls.cert: {0}")]
    Certificate(String),
    #[error("listen.tls.key: {0}")]
    Key(String),
}

impl TlsError {
    /// The config key of the file at fault.
    pub fn key(&self) -> &'static str {
        match self {
            TlsError::Certificate(_) => CERT_KEY,
            TlsError::Key(_) => KEY_KEY,
        }
    }

    /// What is wrong with it, without the key.
    pub fn message(&self) -> &str {
        match self {
            TlsError::Certificate(message) | TlsError::Key(message) => message,
        }
    }
}

/// The listener's current certificate and key; the rustls resolver of its handshakes.
#[derive(Debug)]
pub struct TlsCertificates {
    current: ArcSwap<CertifiedKey>,
    /// The current end-entity certificate's notAfter, in seconds since the Unix epoch.
    not_after: AtomicI64,
    provider: Arc<CryptoProvider>,
}

impl TlsCertificates {
    /// Reads and checks both files. Blocking file I/O: call it off the async runtime.
    pub fn load(files: &TlsFiles) -> Result<TlsCertificates, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let (key, not_after) = certified_key(files, &provider)?;
        Ok(TlsCertificates {
            current: ArcSwap::from_pointee(key),
            not_after: AtomicI64::new(not_after),
            provider,
        })
    }

    /// Re-reads the files (they may name other paths than before) and, when both are usable,
    /// serves them to every handshake from now on; otherwise keeps the current pair and says
    /// which file is at fault. Blocking file I/O: call it off the async runtime.
    pub fn reload(&self, files: &TlsFiles) -> Result<(), TlsError> {
        let (key, not_after) = certified_key(files, &self.provider)?;
        self.current.store(Arc::new(key));
        self.not_after.store(not_after, Ordering::Relaxed);
        Ok(())
    }

    /// When the end-entity certificate handshakes get now stops being valid (its notAfter),
    /// in seconds since the Unix epoch.
    pub fn not_after(&self) -> i64 {
        self.not_after.load(Ordering::Relaxed)
    }

    /// The end-entity certificate handshakes get now (DER).
    pub fn current_certificate(&self) -> CertificateDer<'static> {
        // A CertifiedKey is only ever built with a non-empty chain (see `certified_key`).
        self.current.load().cert[0].clone()
    }

    /// The rustls server config of the listener: TLS 1.2 and 1.3, ALPN `h2` and `http/1.1`,
    /// no client certificates, certificates from `self`.
    pub fn server_config(self: &Arc<Self>) -> Result<Arc<ServerConfig>, rustls::Error> {
        let mut config = ServerConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
        Ok(Arc::new(config))
    }
}

impl ResolvesServerCert for TlsCertificates {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// How far a certificate's notAfter is, for the log line of a load or reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertificateExpiry {
    /// 14 days or more away.
    Distant,
    /// Within 14 days; whole days left, rounded down.
    Soon { days_left: i64 },
    /// Already past: clients refuse the handshake.
    Past,
}

impl CertificateExpiry {
    const WARNING: i64 = 14 * 86_400;

    pub fn of(not_after: i64, now: std::time::SystemTime) -> CertificateExpiry {
        let now = now
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        match not_after.saturating_sub(now) {
            left if left <= 0 => CertificateExpiry::Past,
            left if left < Self::WARNING => CertificateExpiry::Soon {
                days_left: left / 86_400,
            },
            _ => CertificateExpiry::Distant,
        }
    }
}

/// Reads the chain and the key and checks that the key is the first certificate's; returns
/// them with the first certificate's notAfter (seconds since the Unix epoch).
fn certified_key(
    files: &TlsFiles,
    provider: &CryptoProvider,
) -> Result<(CertifiedKey, i64), TlsError> {
    let chain = read_chain(&files.cert)?;
    let not_valid = |e: &dyn std::fmt::Display| {
        TlsError::Certificate(format!(
            "{}: the first certificate is not a valid X.509 certificate: {e}",
            files.cert.display()
        ))
    };
    ParsedCertificate::try_from(&chain[0]).map_err(|e| not_valid(&e))?;
    let not_after = x509_parser::parse_x509_certificate(&chain[0])
        .map_err(|e| not_valid(&e))?
        .1
        .validity()
        .not_after
        .timestamp();
    let key = read_key(&files.key)?;
    let signing_key = provider.key_provider.load_private_key(key).map_err(|e| {
        TlsError::Key(format!(
            "{}: not a usable private key: {e}",
            files.key.display()
        ))
    })?;
    let certified = CertifiedKey::new(chain, signing_key);
    match certified.keys_match() {
        Ok(()) => Ok((certified, not_after)),
        // Every key type the ring provider loads can say its public key; this is kept for
        // safety only: the certificate was parsed, a mismatch would fail every handshake.
        Err(rustls::Error::InconsistentKeys(InconsistentKeys::Unknown)) => {
            Ok((certified, not_after))
        }
        Err(rustls::Error::InconsistentKeys(InconsistentKeys::KeyMismatch)) => {
            Err(TlsError::Key(format!(
                "the key in {} does not match the certificate in {}",
                files.key.display(),
                files.cert.display()
            )))
        }
        Err(e) => Err(not_valid(&e)),
    }
}

/// Reads a CA file for verifying a server (`redis.tls.ca`, a PostgreSQL URL's
/// `sslrootcert`): PEM certificates, each usable as a trust anchor. Returns the file's bytes.
/// Blocking file I/O; the message names the file, not the key.
pub fn read_trust_anchors(path: &Path) -> Result<Vec<u8>, String> {
    let bytes =
        crate::file::read_bounded(path, crate::file::MAX_PEM_BYTES).map_err(|e| e.to_string())?;
    let certificates = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: unreadable PEM: {e}", path.display()))?;
    if certificates.is_empty() {
        return Err(format!(
            "{} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
            path.display()
        ));
    }
    let mut roots = rustls::RootCertStore::empty();
    for (i, certificate) in certificates.into_iter().enumerate() {
        roots.add(certificate).map_err(|e| {
            format!(
                "{}: certificate {} is not usable as a CA: {e}",
                path.display(),
                i + 1
            )
        })?;
    }
    Ok(bytes)
}

/// Checks a certificate chain and its private key (a client certificate for Redis or
/// PostgreSQL) as the listener's are checked: PEM, a valid first certificate, a usable key
/// that belongs to it. Blocking file I/O.
pub fn check_key_pair(files: &TlsFiles) -> Result<(), TlsError> {
    let provider = rustls::crypto::ring::default_provider();
    certified_key(files, &provider).map(|_| ())
}

/// The rustls error somewhere in `error`'s chain: directly, inside an `io::Error` (how TLS
/// streams report a failed handshake), or behind an `Arc` (how the Redis client keeps it).
pub fn find_rustls_error<'e>(
    error: &'e (dyn std::error::Error + 'static),
) -> Option<&'e rustls::Error> {
    let mut next = Some(error);
    while let Some(error) = next {
        if let Some(found) = rustls_error_in(error) {
            return Some(found);
        }
        next = error.source();
    }
    None
}

fn rustls_error_in<'e>(error: &'e (dyn std::error::Error + 'static)) -> Option<&'e rustls::Error> {
    if let Some(found) = error.downcast_ref::<rustls::Error>() {
        return Some(found);
    }
    if let Some(io) = error.downcast_ref::<std::io::Error>() {
        let inner: &(dyn std::error::Error + 'static) = io.get_ref()?;
        return rustls_error_in(inner);
    }
    if let Some(shared) = error.downcast_ref::<Arc<dyn std::error::Error + Send + Sync>>() {
        let inner: &(dyn std::error::Error + 'static) = &**shared;
        return rustls_error_in(inner);
    }
    None
}

/// What a failed TLS handshake with a store (Redis, PostgreSQL) means, for an operator:
/// `ca` names where the trusted CA comes from, `client` the client certificate settings.
pub fn describe_tls_failure(error: &rustls::Error, ca: &str, client: &str) -> String {
    use rustls::{AlertDescription, CertificateError};
    match error {
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)
        | rustls::Error::InvalidCertificate(CertificateError::BadSignature) => format!(
            "the server's certificate does not verify: it is not signed by a CA in {ca} ({error})"
        ),
        rustls::Error::InvalidCertificate(CertificateError::NotValidForName)
        | rustls::Error::InvalidCertificate(CertificateError::NotValidForNameContext { .. }) => {
            format!("the server's certificate is not valid for the host name in the URL ({error})")
        }
        rustls::Error::InvalidCertificate(CertificateError::Expired)
        | rustls::Error::InvalidCertificate(CertificateError::ExpiredContext { .. }) => {
            format!("the server's certificate has expired ({error})")
        }
        rustls::Error::InvalidCertificate(_) => {
            format!("the server's certificate does not verify against {ca} ({error})")
        }
        rustls::Error::AlertReceived(
            AlertDescription::CertificateRequired
            | AlertDescription::BadCertificate
            | AlertDescription::UnknownCA
            | AlertDescription::AccessDenied
            | AlertDescription::HandshakeFailure,
        ) => format!(
            "the server refused the TLS handshake ({error}): it wants a client certificate it \
             trusts ({client})"
        ),
        other => format!("the TLS handshake failed ({other})"),
    }
}

fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    // A regular file, size- and time-bounded: a FIFO here must not wedge a reload.
    let bytes = crate::file::read_bounded(path, crate::file::MAX_PEM_BYTES)
        .map_err(|e| TlsError::Certificate(e.to_string()))?;
    let chain = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Certificate(format!("{}: unreadable PEM: {e}", path.display())))?;
    if chain.is_empty() {
        return Err(TlsError::Certificate(format!(
            "{} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
            path.display()
        )));
    }
    Ok(chain)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = crate::file::read_bounded(path, crate::file::MAX_PEM_BYTES)
        .map_err(|e| TlsError::Key(e.to_string()))?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => TlsError::Key(format!(
            "{} holds no PEM private key (PKCS#8, PKCS#1 or SEC1)",
            path.display()
        )),
        e => TlsError::Key(format!("{}: unreadable PEM: {e}", path.display())),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A CA that signs server certificates for `localhost`.
    struct Pki {
        ca: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
    }

    impl Pki {
        fn new() -> Pki {
            let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, "keyward test CA");
            let key = rcgen::KeyPair::generate().unwrap();
            Pki {
                ca: rcgen::CertifiedIssuer::self_signed(params, key).unwrap(),
            }
        }

        /// (certificate PEM, key PEM) for `localhost`, with `serial`, valid until the first
        /// of January of the year 2100 + `serial` % 100.
        fn server(&self, serial: u64) -> (String, String) {
            let key = rcgen::KeyPair::generate().unwrap();
            let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
            params.serial_number = Some(rcgen::SerialNumber::from(serial));
            params.not_after = rcgen::date_time_ymd(2100 + (serial % 100) as i32, 1, 1);
            let cert = params.signed_by(&key, &self.ca).unwrap();
            (cert.pem(), key.serialize_pem())
        }
    }

    fn write_files(dir: &Path, cert: &str, key: &str) -> TlsFiles {
        let files = TlsFiles {
            cert: dir.join("tls.crt"),
            key: dir.join("tls.key"),
        };
        std::fs::write(&files.cert, cert).unwrap();
        std::fs::write(&files.key, key).unwrap();
        files
    }

    fn serial_of(der: &[u8]) -> u64 {
        let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
        u64::try_from(cert.serial.clone()).unwrap()
    }

    /// A TLS client trusting `pki`'s CA, offering `alpn`.
    fn client(pki: &Pki, alpn: &[&[u8]]) -> tokio_rustls::TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(pki.ca.der().clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        tokio_rustls::TlsConnector::from(Arc::new(config))
    }

    /// A server on an in-memory pipe: echoes what it reads until the client closes.
    fn serve_one(config: Arc<ServerConfig>) -> tokio::io::DuplexStream {
        let (client_end, server_end) = tokio::io::duplex(64 * 1024);
        tokio::spawn(async move {
            let acceptor = tokio_rustls::TlsAcceptor::from(config);
            let Ok(mut tls) = acceptor.accept(server_end).await else {
                return;
            };
            let mut buf = [0u8; 1024];
            while let Ok(n) = tls.read(&mut buf).await {
                if n == 0 || tls.write_all(&buf[..n]).await.is_err() {
                    break;
                }
                let _ = tls.flush().await;
            }
        });
        client_end
    }

    async fn connect(
        pki: &Pki,
        config: &Arc<ServerConfig>,
        alpn: &[&[u8]],
    ) -> tokio_rustls::client::TlsStream<tokio::io::DuplexStream> {
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        client(pki, alpn)
            .connect(name, serve_one(config.clone()))
            .await
            .unwrap()
    }

    fn peer_serial(tls: &tokio_rustls::client::TlsStream<tokio::io::DuplexStream>) -> u64 {
        serial_of(&tls.get_ref().1.peer_certificates().unwrap()[0])
    }

    async fn echo(tls: &mut tokio_rustls::client::TlsStream<tokio::io::DuplexStream>) -> Vec<u8> {
        tls.write_all(b"ping").await.unwrap();
        tls.flush().await.unwrap();
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf).await.unwrap();
        buf.to_vec()
    }

    #[test]
    fn the_rustls_error_is_found_where_tls_streams_and_clients_put_it() {
        let unknown = || rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, unknown());
        assert_eq!(find_rustls_error(&io), Some(&unknown()));
        let shared: Arc<dyn std::error::Error + Send + Sync> = Arc::new(io);
        assert_eq!(find_rustls_error(&shared), Some(&unknown()));
        let plain = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert_eq!(find_rustls_error(&plain), None);
        let described = describe_tls_failure(&unknown(), "redis.tls.ca", "redis.tls.cert");
        assert!(
            described.contains("not signed by a CA in redis.tls.ca"),
            "{described}"
        );
        let refused = rustls::Error::AlertReceived(rustls::AlertDescription::CertificateRequired);
        let described = describe_tls_failure(&refused, "redis.tls.ca", "redis.tls.cert");
        assert!(described.contains("client certificate"), "{described}");
    }

    #[test]
    fn expiry_is_distant_soon_or_past() {
        let now = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000_000);
        let at = |secs: i64| CertificateExpiry::of(1_000_000_000 + secs, now);
        assert_eq!(at(14 * 86_400), CertificateExpiry::Distant);
        assert_eq!(
            at(14 * 86_400 - 1),
            CertificateExpiry::Soon { days_left: 13 }
        );
        assert_eq!(at(1), CertificateExpiry::Soon { days_left: 0 });
        assert_eq!(at(0), CertificateExpiry::Past);
        assert_eq!(at(-86_400), CertificateExpiry::Past);
        assert_eq!(
            CertificateExpiry::of(i64::MIN, now),
            CertificateExpiry::Past
        );
    }

    #[tokio::test]
    async fn reload_serves_the_new_certificate_and_keeps_open_connections() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::new();
        let (cert, key) = pki.server(1001);
        let files = write_files(dir.path(), &cert, &key);
        let certificates = Arc::new(TlsCertificates::load(&files).unwrap());
        assert_eq!(certificates.not_after(), 4_133_980_800); // 2101-01-01
        let config = certificates.server_config().unwrap();

        let mut before = connect(&pki, &config, &[b"http/1.1"]).await;
        assert_eq!(peer_serial(&before), 1001);
        assert_eq!(before.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));

        // New files at the same paths, then a reload: new handshakes get the new certificate.
        let (cert, key) = pki.server(2002);
        let files = write_files(dir.path(), &cert, &key);
        certificates.reload(&files).unwrap();
        assert_eq!(serial_of(&certificates.current_certificate()), 2002);
        assert_eq!(certificates.not_after(), 4_165_516_800); // 2102-01-01
        let mut after = connect(&pki, &config, &[b"h2", b"http/1.1"]).await;
        assert_eq!(peer_serial(&after), 2002);
        assert_eq!(after.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        assert_eq!(echo(&mut after).await, b"ping");

        // The connection made before the reload still works, on its old certificate.
        assert_eq!(echo(&mut before).await, b"ping");
        assert_eq!(peer_serial(&before), 1001);
    }

    #[tokio::test]
    async fn a_failed_reload_keeps_the_current_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::new();
        let (cert, key) = pki.server(7);
        let files = write_files(dir.path(), &cert, &key);
        let certificates = Arc::new(TlsCertificates::load(&files).unwrap());
        let config = certificates.server_config().unwrap();

        // A new certificate with the old key: the pair does not match.
        let (other_cert, _) = pki.server(8);
        let files = write_files(dir.path(), &other_cert, &key);
        let error = certificates.reload(&files).unwrap_err();
        assert_eq!(error.key(), KEY_KEY);
        assert!(error.message().contains("does not match"), "{error}");
        let mut tls = connect(&pki, &config, &[b"http/1.1"]).await;
        assert_eq!(peer_serial(&tls), 7);
        assert_eq!(echo(&mut tls).await, b"ping");
    }

    #[test]
    fn each_bad_file_is_named_by_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::new();
        let (cert, key) = pki.server(1);
        let (_, other_key) = pki.server(2);
        let good = write_files(dir.path(), &cert, &key);
        assert!(TlsCertificates::load(&good).is_ok());
        // A chain: the server certificate, then its CA.
        let chain = format!("{cert}{}", pki.ca.pem());
        let chained = write_files(dir.path(), &chain, &key);
        assert!(TlsCertificates::load(&chained).is_ok());

        let missing = TlsFiles {
            cert: dir.path().join("absent.crt"),
            key: good.key.clone(),
        };
        // Each case in a directory of its own.
        let cases_made = std::cell::Cell::new(0);
        let case = |cert: &str, key: &str| {
            cases_made.set(cases_made.get() + 1);
            let case_dir = dir.path().join(format!("case{}", cases_made.get()));
            std::fs::create_dir(&case_dir).unwrap();
            write_files(&case_dir, cert, key)
        };
        let cases: [(TlsFiles, &str, &str); 6] = [
            (missing, CERT_KEY, "cannot read"),
            (
                case("not a certificate", &key),
                CERT_KEY,
                "holds no PEM certificate",
            ),
            (
                case(
                    "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
                    &key,
                ),
                CERT_KEY,
                "not a valid X.509",
            ),
            (case(&cert, &cert), KEY_KEY, "holds no PEM private key"),
            (
                case(
                    &cert,
                    "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
                ),
                KEY_KEY,
                "not a usable private key",
            ),
            (case(&cert, &other_key), KEY_KEY, "does not match"),
        ];
        for (files, key, message) in cases {
            let error = TlsCertificates::load(&files).unwrap_err();
            assert_eq!(error.key(), key, "{error}");
            assert!(error.message().contains(message), "{error}");
            assert!(error.to_string().starts_with(key), "{error}");
        }
    }
}
