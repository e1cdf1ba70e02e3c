//! Test harness: a real keyward process on ephemeral loopback ports, in front of a real echoing
//! HTTP upstream, with a temporary SQLite store, driven by a real HTTP client.

#![allow(dead_code)]

pub mod echo;
pub mod redis;
pub mod tcp_cut;
pub mod tls;

use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const ADMIN_PASSWORD: &str = "admin-password-1";
pub const BIN: &str = env!("CARGO_BIN_EXE_keyward");

/// A free loopback port (bound, then released for keyward to take).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub struct Upstream {
    pub addr: SocketAddr,
    pub stats: Arc<echo::EchoStats>,
}

impl Upstream {
    pub fn start() -> Upstream {
        let (addr, stats) = echo::spawn("127.0.0.1:0");
        Upstream { addr, stats }
    }

    pub fn requests(&self) -> u64 {
        self.stats.requests.load(Ordering::Relaxed)
    }
}

/// What to put in the config besides listeners, upstream and store.
pub struct Setup {
    pub routes: String,
    pub extra: String,
    /// `None`: an upstream is started; `Some(addr)`: use this address instead.
    pub upstream_address: Option<String>,
    /// Several upstreams (the edge case), instead of one.
    pub upstream_addresses: Option<Vec<String>>,
    /// The store file, relative to keyward's directory.
    pub store_file: String,
    /// Environment variables for the keyward process.
    pub env: Vec<(String, String)>,
    /// keyward's directory, prepared by the test; `None`: a fresh temporary one.
    pub dir: Option<tempfile::TempDir>,
    /// A `postgres://` store instead of the SQLite file.
    pub store_url: Option<String>,
    /// `cache.invalidation_poll`.
    pub invalidation_poll: String,
    /// Give the admin API a listener of its own (`listen.admin`).
    pub admin_listener: bool,
    /// `listen.tls`: (certificate file, key file); the proxy URL is then `https://`.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// `listen.proxy` on `[::]` (dual-stack); the tests still connect to 127.0.0.1.
    pub dual_stack: bool,
    /// Open the external-authorization listener (`listen.authz`); the test's `extra` names
    /// `external_authz.trusted_callers`.
    pub authz_listener: bool,
    /// `tokens.secure_cookie` (keyward behind a TLS proxy).
    pub secure_cookie: bool,
    /// `listen.proxy`'s port, chosen by the test (which had to name it elsewhere first, as an
    /// OpenID provider's redirect URI); `None`: a free one.
    pub proxy_port: Option<u16>,
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            routes: r#"
  - path: /public
    public: true
  - path: /
    require: { min_security_level: EXTERNAL }
"#
            .into(),
            extra: String::new(),
            upstream_address: None,
            upstream_addresses: None,
            store_file: "keyward.db".into(),
            env: Vec::new(),
            dir: None,
            store_url: None,
            invalidation_poll: "100ms".into(),
            admin_listener: false,
            tls: None,
            dual_stack: false,
            authz_listener: false,
            proxy_port: None,
            secure_cookie: false,
        }
    }
}

pub struct Keyward {
    pub child: Child,
    pub proxy: SocketAddr,
    pub ops: SocketAddr,
    /// `listen.admin`, when the setup asked for it.
    pub admin: Option<SocketAddr>,
    /// `listen.authz`, when the setup asked for it.
    pub authz: Option<SocketAddr>,
    pub upstream: Option<Upstream>,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    env: Vec<(String, String)>,
    /// The proxy listener speaks TLS.
    pub tls: bool,
}

impl Keyward {
    pub fn start() -> Keyward {
        Keyward::start_with(Setup::default())
    }

    pub fn start_with(setup: Setup) -> Keyward {
        let dir = setup.dir.unwrap_or_else(|| tempfile::tempdir().unwrap());
        let (upstream, upstream_line) = match (setup.upstream_address, setup.upstream_addresses) {
            (_, Some(many)) => (
                None,
                format!(
                    "addresses: [{}]\n  health_check_interval: 200ms",
                    many.join(", ")
                ),
            ),
            (Some(address), None) => (None, format!("address: {address}")),
            (None, None) => {
                let upstream = Upstream::start();
                let line = format!("address: {}", upstream.addr);
                (Some(upstream), line)
            }
        };
        let mut dir = dir;
        let mut upstream = upstream;
        // A port found free may be taken by another test's process before keyward binds it:
        // keyward then exits naming the address, and is started again on fresh ports.
        for attempt in 1.. {
            let proxy_port = setup.proxy_port.unwrap_or_else(free_port);
            let proxy: SocketAddr = format!("127.0.0.1:{proxy_port}").parse().unwrap();
            let ops: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
            let admin: Option<SocketAddr> = setup
                .admin_listener
                .then(|| format!("127.0.0.1:{}", free_port()).parse().unwrap());
            let authz: Option<SocketAddr> = setup
                .authz_listener
                .then(|| format!("127.0.0.1:{}", free_port()).parse().unwrap());
            let mut admin_line = admin.map_or(String::new(), |a| format!("\n  admin: {a}"));
            if let Some(authz) = authz {
                admin_line.push_str(&format!("\n  authz: {authz}"));
            }
            let tls_line = match &setup.tls {
                Some((cert, key)) => format!(
                    "  tls: {{ cert: {}, key: {} }}",
                    cert.display(),
                    key.display()
                ),
                None => String::new(),
            };
            let proxy_listen = match setup.dual_stack {
                true => format!("\"[::]:{}\"", proxy.port()),
                false => proxy.to_string(),
            };
            let config = format!(
                r#"
listen:
  proxy: {proxy_listen}
  ops: {ops}{admin_line}
{tls_line}
upstream:
  {upstream_line}
  connect_timeout: 2s
  read_timeout: 3s
store:
  url: {store_url}
bootstrap:
  admin:
    name: admin
    password_env: KEYWARD_TEST_ADMIN_PASSWORD
    functions: [POWER-USER]
tokens:
  administrator: admin
  secure_cookie: {secure_cookie}
server:
  threads: 2
  grace_period: 2s
  shutdown_timeout: 1s
  pid_file: {pid_file}
cache:
  invalidation_poll: {poll}
routes:{routes}
{extra}
"#,
                secure_cookie = setup.secure_cookie,
                store_url = setup.store_url.clone().unwrap_or_else(|| format!(
                    "sqlite://{}",
                    dir.path().join(&setup.store_file).display()
                )),
                poll = setup.invalidation_poll,
                pid_file = dir.path().join("keyward.pid").display(),
                routes = &setup.routes,
                extra = &setup.extra,
            );
            let config_path = dir.path().join("keyward.yaml");
            std::fs::write(&config_path, config).unwrap();
            let child =
                spawn_serve_with(&config_path, dir.path(), Some(ADMIN_PASSWORD), &setup.env);
            let mut keyward = Keyward {
                child,
                proxy,
                ops,
                admin,
                authz,
                upstream,
                dir,
                config_path,
                env: setup.env.clone(),
                tls: setup.tls.is_some(),
            };
            match keyward.try_ready() {
                Ok(()) => return keyward,
                Err(stderr) if attempt < 4 && stderr.contains("in use") => {
                    upstream = keyward.upstream.take();
                    dir = std::mem::replace(&mut keyward.dir, tempfile::tempdir().unwrap());
                    drop(keyward);
                }
                Err(stderr) => panic!("{stderr}"),
            }
        }
        unreachable!("the loop returns or panics")
    }

    /// Kills the process (as a crash would) and starts it again with the same config, on the
    /// same ports and store.
    pub fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = spawn_serve_with(
            &self.config_path,
            self.dir.path(),
            Some(ADMIN_PASSWORD),
            &self.env,
        );
        self.wait_ready();
    }

    fn wait_ready(&mut self) {
        if let Err(why) = self.try_ready() {
            panic!("{why}");
        }
    }

    /// Waits until keyward answers; `Err`: why not (its stderr).
    fn try_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let client = client();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!(
                    "keyward exited early ({status}):\n{}",
                    self.stderr()
                ));
            }
            let ready = client
                .get(self.ops_url("/readyz"))
                .send()
                .is_ok_and(|resp| resp.status() == 200);
            if ready {
                // `/readyz` waits for the listeners; the harness checks the proxy answers too.
                // The plain client cannot speak TLS: a TCP connection shows the listener.
                let proxy_up = match self.tls {
                    true => std::net::TcpStream::connect(self.proxy).is_ok(),
                    false => client.get(self.url("/public")).send().is_ok(),
                };
                if proxy_up {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                return Err(format!("keyward not ready after 30s:\n{}", self.stderr()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn url(&self, path: &str) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}{}", self.proxy, path)
    }

    pub fn ops_url(&self, path: &str) -> String {
        format!("http://{}{}", self.ops, path)
    }

    pub fn upstream(&self) -> &Upstream {
        self.upstream
            .as_ref()
            .expect("this keyward has a test upstream")
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }

    /// Runs `keyward <args> --config <this config>`, feeding `stdin`.
    pub fn cli(&self, args: &[&str], stdin: Option<&str>) -> Output {
        cli(&self.config_path, args, stdin)
    }

    /// Creates a user through the CLI.
    pub fn add_user(&self, name: &str, password: &str, extra: &[&str]) {
        let mut args = vec!["user", "add", name, "--password-stdin"];
        args.extend_from_slice(extra);
        let out = self.cli(&args, Some(&format!("{password}\n")));
        assert!(out.status.success(), "user add failed: {out:?}");
    }

    /// Gives `user` a TOTP secret with `keyward user totp`; returns the generator for it.
    pub fn enable_totp(&self, user: &str) -> totp_rs::TOTP {
        let out = self.cli(&["user", "totp", user], None);
        let uri = String::from_utf8_lossy(&out.stdout)
            .trim()
            .strip_prefix("TOTP: ")
            .unwrap_or_else(|| panic!("user totp printed no URI: {out:?}"))
            .to_owned();
        totp_rs::TOTP::from_url(uri).unwrap()
    }

    pub fn metrics(&self) -> String {
        client()
            .get(self.ops_url("/metrics"))
            .send()
            .unwrap()
            .text()
            .unwrap()
    }

    /// The value of an unlabelled metric; panics (with the exposition) when it is missing.
    pub fn metric_value(&self, name: &str) -> i64 {
        let text = self.metrics();
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing:\n{text}"))
    }

    /// Waits up to 5 s for an unlabelled metric to reach `value`.
    pub fn wait_for_metric(&self, name: &str, value: i64) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.metric_value(name) != value {
            assert!(
                Instant::now() < deadline,
                "{name} stayed at {} (want {value})",
                self.metric_value(name)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Creates an API key for `user` as the bootstrap administrator; returns the key string.
    pub fn create_api_key(&self, user: &str, body: serde_json::Value) -> String {
        let resp = client()
            .post(self.url(&format!("/authentication/v1/user/{user}/apikey")))
            .basic_auth("admin", Some(ADMIN_PASSWORD))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .unwrap();
        assert_eq!(resp.status(), 201);
        let body: serde_json::Value = resp.json().unwrap();
        body["data"]["apiKeyString"].as_str().unwrap().to_owned()
    }

    /// A raw TCP connection to the proxy listener, without Nagle, reads bounded by `timeout`.
    pub fn connect_raw(&self, timeout: Duration) -> std::net::TcpStream {
        let stream = std::net::TcpStream::connect(self.proxy).unwrap();
        stream.set_nodelay(true).unwrap();
        stream.set_read_timeout(Some(timeout)).unwrap();
        stream
    }

    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), signal).unwrap();
    }
}

impl Drop for Keyward {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn spawn_serve(config: &Path, dir: &Path, admin_password: Option<&str>) -> Child {
    spawn_serve_with(config, dir, admin_password, &[])
}

/// [`spawn_serve`] with environment variables set (logging switches are cleared first, so a
/// test sees only what it asks for).
pub fn spawn_serve_with(
    config: &Path,
    dir: &Path,
    admin_password: Option<&str>,
    env: &[(String, String)],
) -> Child {
    let stderr = std::fs::File::create(dir.join("stderr.log")).unwrap();
    let mut command = Command::new(BIN);
    command
        .args(["serve", "--config"])
        .arg(config)
        .current_dir(dir)
        .env_remove("RUST_LOG")
        .env_remove("KEYWARD_LOG_THIRD_PARTY")
        .env_remove("KEYWARD_TEST_ADMIN_PASSWORD")
        .stdout(Stdio::null())
        .stderr(stderr);
    if let Some(password) = admin_password {
        command.env("KEYWARD_TEST_ADMIN_PASSWORD", password);
    }
    for (name, value) in env {
        command.env(name, value);
    }
    command.spawn().unwrap()
}

pub fn cli(config: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .arg("--config")
        .arg(config)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        let mut input = child.stdin.take().unwrap();
        if let Some(text) = stdin {
            input.write_all(text.as_bytes()).unwrap();
        }
    }
    child.wait_with_output().unwrap()
}

/// The Redis the fleet tests share (`KEYWARD_TEST_REDIS`, default `127.0.0.1:6379`), checked
/// to answer `PING` so that a missing server fails with a clear message.
pub fn redis_address() -> SocketAddr {
    use std::io::Read;
    let address: SocketAddr = std::env::var("KEYWARD_TEST_REDIS")
        .unwrap_or_else(|_| "127.0.0.1:6379".into())
        .parse()
        .expect("KEYWARD_TEST_REDIS is host:port");
    let answer = std::net::TcpStream::connect_timeout(&address, Duration::from_secs(2)).and_then(
        |mut stream| {
            stream.set_read_timeout(Some(Duration::from_secs(2)))?;
            stream.write_all(b"PING\r\n")?;
            let mut buf = [0u8; 7];
            stream.read_exact(&mut buf)?;
            Ok(buf)
        },
    );
    match answer {
        Ok(buf) if &buf == b"+PONG\r\n" => address,
        other => panic!(
            "the fleet tests need a Redis server at {address} (set KEYWARD_TEST_REDIS): {other:?}"
        ),
    }
}

pub fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(20))
        .no_proxy()
        .build()
        .unwrap()
}

/// A client whose connections come from `address` (another loopback address: its own client
/// budgets and limits), with `client()`'s 20 s timeout.
pub fn client_from(address: &str) -> reqwest::blocking::Client {
    client_from_with_timeout(address, Duration::from_secs(20))
}

pub fn client_from_with_timeout(address: &str, timeout: Duration) -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(timeout)
        .no_proxy()
        .local_address(address.parse::<std::net::IpAddr>().unwrap())
        .build()
        .unwrap()
}

/// The upstream's echo of a forwarded request.
pub fn echoed(resp: reqwest::blocking::Response) -> serde_json::Value {
    assert_eq!(resp.status(), 200, "expected the upstream's answer");
    resp.json().unwrap()
}

/// The first value the upstream saw for `name`.
pub fn echoed_header<'a>(echo: &'a serde_json::Value, name: &str) -> Option<&'a str> {
    echo["headers"][name][0].as_str()
}

/// A response read off a raw socket.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    /// Header names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
}

/// Sends `request` byte for byte (no client normalises anything) and reads the answer until
/// the server closes; the request should carry `Connection: close`.
pub fn raw_request(addr: SocketAddr, request: &[u8]) -> RawResponse {
    use std::io::Read;
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(request).unwrap();
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    parse_raw_response(&raw)
}

fn parse_raw_response(raw: &[u8]) -> RawResponse {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no complete response: {:?}", String::from_utf8_lossy(raw)));
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line: {head}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let mut body = raw[end + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    if chunked {
        body = dechunk(&body);
    }
    RawResponse {
        status,
        headers,
        body,
    }
}

fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(line_end) = raw.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size_text = String::from_utf8_lossy(&raw[..line_end]);
        let size =
            usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16).unwrap_or(0);
        if size == 0 || raw.len() < line_end + 2 + size {
            return out;
        }
        out.extend_from_slice(&raw[line_end + 2..line_end + 2 + size]);
        raw = &raw[(line_end + 4 + size).min(raw.len())..];
    }
}

/// An upstream that reads requests as Python web frameworks do (tests/upstreams/wsgi_echo.py:
/// wsgiref's percent-decoding and header folding, Werkzeug's path routing).
pub struct FrameworkUpstream {
    child: Child,
    pub addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl FrameworkUpstream {
    pub fn start() -> FrameworkUpstream {
        FrameworkUpstream::start_with(&[])
    }

    /// With `--case-insensitive`, it routes as Express, ASP.NET and IIS do.
    pub fn start_with(args: &[&str]) -> FrameworkUpstream {
        let dir = tempfile::tempdir().unwrap();
        let port_file = dir.path().join("port");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/upstreams/wsgi_echo.py");
        let child = Command::new("python3")
            .arg(script)
            .arg(&port_file)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 runs the framework upstream");
        let deadline = Instant::now() + Duration::from_secs(20);
        let port = loop {
            if let Ok(text) = std::fs::read_to_string(&port_file) {
                break text.trim().parse::<u16>().unwrap();
            }
            assert!(
                Instant::now() < deadline,
                "the framework upstream did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        FrameworkUpstream {
            child,
            addr: format!("127.0.0.1:{port}").parse().unwrap(),
            _dir: dir,
        }
    }
}

impl Drop for FrameworkUpstream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
