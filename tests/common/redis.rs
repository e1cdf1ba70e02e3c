//! A `redis-server` of the test's own, as managed Redis runs in the clouds: TLS only
//! (`--port 0 --tls-port P`), a server certificate for `127.0.0.1` and `localhost` made by the
//! test's CA. It can be hung (SIGSTOP), stopped, and restarted on the same port with the same
//! certificates; `INFO commandstats` is read over TLS too.

use super::free_port;
use super::tls::TestPki;
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct TestRedis {
    child: Option<Child>,
    pub port: u16,
    /// `None`: plain `redis://`.
    tls: Option<RedisTls>,
    /// More `redis-server` arguments (`--maxmemory`, …).
    extra_args: Vec<String>,
    dir: tempfile::TempDir,
}

struct RedisTls {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    auth_clients: bool,
}

impl TestRedis {
    /// TLS only, server certificate for `127.0.0.1` and `localhost` from a new CA; clients are
    /// not asked for a certificate.
    pub fn start_tls() -> TestRedis {
        TestRedis::start_tls_with(&TestPki::new(), false, &["127.0.0.1", "localhost"])
    }

    /// TLS only, with a server certificate of `pki` for `names`; `auth_clients`: a client
    /// certificate from `pki`'s CA is required.
    pub fn start_tls_with(pki: &TestPki, auth_clients: bool, names: &[&str]) -> TestRedis {
        let dir = tempfile::tempdir().unwrap();
        let ca = pki.write_ca(dir.path());
        let server = pki.leaf(dir.path(), "redis", names, "redis");
        let mut redis = TestRedis {
            child: None,
            port: free_port(),
            tls: Some(RedisTls {
                ca,
                cert: server.cert,
                key: server.key,
                auth_clients,
            }),
            extra_args: Vec::new(),
            dir,
        };
        redis.spawn();
        redis
    }

    /// Plain TCP (`redis://`).
    pub fn start_plain() -> TestRedis {
        TestRedis::start_plain_with(&[])
    }

    /// Plain TCP, with more `redis-server` arguments.
    pub fn start_plain_with(extra_args: &[&str]) -> TestRedis {
        let mut redis = TestRedis {
            child: None,
            port: free_port(),
            tls: None,
            extra_args: extra_args.iter().map(|a| a.to_string()).collect(),
            dir: tempfile::tempdir().unwrap(),
        };
        redis.spawn();
        redis
    }

    fn spawn(&mut self) {
        let mut command = Command::new("redis-server");
        command
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .args(&self.extra_args)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        match &self.tls {
            Some(tls) => {
                command
                    .args(["--port", "0", "--tls-port", &self.port.to_string()])
                    .arg("--tls-cert-file")
                    .arg(&tls.cert)
                    .arg("--tls-key-file")
                    .arg(&tls.key)
                    .arg("--tls-ca-cert-file")
                    .arg(&tls.ca)
                    .args([
                        "--tls-auth-clients",
                        if tls.auth_clients { "yes" } else { "no" },
                    ]);
            }
            None => {
                command.args(["--port", &self.port.to_string()]);
            }
        }
        let child = command
            .spawn()
            .expect("the test needs redis-server (built with TLS)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not listen on {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// The CA that signed the server's certificate (TLS only).
    pub fn ca(&self) -> PathBuf {
        self.tls.as_ref().expect("a TLS Redis").ca.clone()
    }

    /// keyward's `redis:` section for this Redis, with `on_error` (`refuse` or `local`).
    pub fn section(&self, on_error: &str) -> String {
        match &self.tls {
            Some(tls) => format!(
                "redis: {{ url: \"{}\", tls: {{ ca: \"{}\" }}, on_error: {on_error} }}\n",
                self.url(),
                tls.ca.display()
            ),
            None => format!(
                "redis: {{ url: \"{}\", on_error: {on_error} }}\n",
                self.url()
            ),
        }
    }

    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        let Some(child) = &self.child else { return };
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, signal);
    }

    /// Kills it (woken first if it was hung); nothing is kept (`--save ""`).
    pub fn stop(&mut self) {
        self.signal(nix::sys::signal::Signal::SIGCONT);
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stopped, then started again on the same port with the same certificates (empty).
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Commands Redis has run (`INFO commandstats`), `INFO` itself left out.
    pub fn commands(&self) -> u64 {
        let mut command = Command::new("redis-cli");
        command.args(["-h", "127.0.0.1", "-p", &self.port.to_string()]);
        if let Some(tls) = &self.tls {
            command.arg("--tls").arg("--cacert").arg(&tls.ca);
        }
        let out = command
            .args(["INFO", "commandstats"])
            .output()
            .expect("the test needs redis-cli");
        assert!(out.status.success(), "redis-cli: {out:?}");
        commands_in(&String::from_utf8_lossy(&out.stdout))
    }
}

/// The sum of `calls=` over `cmdstat_*` lines, without `cmdstat_info`.
pub fn commands_in(info: &str) -> u64 {
    info.lines()
        .filter(|line| line.starts_with("cmdstat_") && !line.starts_with("cmdstat_info:"))
        .filter_map(|line| {
            let calls = line.split_once("calls=")?.1;
            calls.split(',').next()?.parse::<u64>().ok()
        })
        .sum()
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        self.stop();
    }
}
