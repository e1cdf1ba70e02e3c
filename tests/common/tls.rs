//! Certificates the TLS tests make for themselves (a CA and a server certificate for
//! `127.0.0.1` and `localhost`, with rcgen), and HTTPS clients that trust that CA.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A test CA, its PEM written to `ca.pem` in a directory of the test's.
pub struct TestPki {
    ca: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
    pub ca_pem: String,
}

/// A server certificate and key, as files.
pub struct ServerFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub serial: u64,
    /// The certificate's notAfter, seconds since the Unix epoch.
    pub not_after: i64,
}

impl ServerFiles {
    pub fn pair(&self) -> (PathBuf, PathBuf) {
        (self.cert.clone(), self.key.clone())
    }
}

impl TestPki {
    pub fn new() -> TestPki {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "keyward test CA");
        let ca = rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap())
            .unwrap();
        let ca_pem = ca.pem();
        TestPki { ca, ca_pem }
    }

    /// Writes `ca.pem` into `dir`; returns its path.
    pub fn write_ca(&self, dir: &Path) -> PathBuf {
        let path = dir.join("ca.pem");
        std::fs::write(&path, &self.ca_pem).unwrap();
        path
    }

    /// A certificate for `127.0.0.1` and `localhost` with `serial`, signed by the CA, written
    /// as `<name>.crt` (the certificate, then the CA: a chain) and `<name>.key` in `dir`; valid
    /// until the first of January of the year 2100 + `serial` % 100.
    pub fn server(&self, dir: &Path, name: &str, serial: u64) -> ServerFiles {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .unwrap();
        params.serial_number = Some(rcgen::SerialNumber::from(serial));
        params.not_after = rcgen::date_time_ymd(2100 + (serial % 100) as i32, 1, 1);
        let cert = params.signed_by(&key, &self.ca).unwrap();
        let files = ServerFiles {
            cert: dir.join(format!("{name}.crt")),
            key: dir.join(format!("{name}.key")),
            serial,
            not_after: params.not_after.unix_timestamp(),
        };
        std::fs::write(&files.cert, format!("{}{}", cert.pem(), self.ca_pem)).unwrap();
        std::fs::write(&files.key, key.serialize_pem()).unwrap();
        files
    }

    /// A raw TLS connection to `addr` offering `alpn` (which the server must pick), trusting
    /// only this CA, handshake done; reads time out after 10 s.
    pub fn raw_tls(
        &self,
        addr: SocketAddr,
        alpn: &[u8],
    ) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
        use rustls_pki_types::pem::PemObject;
        let ca = rustls_pki_types::CertificateDer::from_pem_slice(self.ca_pem.as_bytes());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.unwrap()).unwrap();
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![alpn.to_vec()];
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let connection = rustls::ClientConnection::new(std::sync::Arc::new(config), name).unwrap();
        let tcp = TcpStream::connect(addr).unwrap();
        tcp.set_nodelay(true).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut tls = rustls::StreamOwned::new(connection, tcp);
        while tls.conn.is_handshaking() {
            tls.conn.complete_io(&mut tls.sock).unwrap();
        }
        assert_eq!(tls.conn.alpn_protocol(), Some(alpn));
        tls
    }

    /// A certificate for `names` (DNS names or IP addresses; empty for a client
    /// certificate) with `common_name`, signed by the CA, written as `<name>.crt` (the
    /// certificate alone) and `<name>.key` (mode 0600) in `dir`.
    pub fn leaf(&self, dir: &Path, name: &str, names: &[&str], common_name: &str) -> ServerFiles {
        use std::os::unix::fs::PermissionsExt;
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, common_name);
        let cert = params.signed_by(&key, &self.ca).unwrap();
        let files = ServerFiles {
            cert: dir.join(format!("{name}.crt")),
            key: dir.join(format!("{name}.key")),
            serial: 0,
            not_after: params.not_after.unix_timestamp(),
        };
        std::fs::write(&files.cert, cert.pem()).unwrap();
        std::fs::write(&files.key, key.serialize_pem()).unwrap();
        std::fs::set_permissions(&files.key, std::fs::Permissions::from_mode(0o600)).unwrap();
        files
    }

    /// An HTTPS client trusting only this CA. `Protocol::Http1` offers only `http/1.1`;
    /// `Protocol::Http2` offers `h2` and `http/1.1` by ALPN (the server picks `h2`).
    pub fn client(&self, protocol: Protocol) -> reqwest::blocking::Client {
        let builder = reqwest::blocking::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(self.ca_pem.as_bytes()).unwrap())
            .timeout(Duration::from_secs(20))
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy();
        match protocol {
            Protocol::Http1 => builder.http1_only(),
            Protocol::Http2 => builder,
        }
        .build()
        .unwrap()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    Http2,
}

impl Protocol {
    pub const BOTH: [Protocol; 2] = [Protocol::Http1, Protocol::Http2];

    pub fn version(self) -> reqwest::Version {
        match self {
            Protocol::Http1 => reqwest::Version::HTTP_11,
            Protocol::Http2 => reqwest::Version::HTTP_2,
        }
    }
}
