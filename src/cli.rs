//! The command line (SPEC §5, §8).

use crate::config::{Config, ConfigError, Purpose, EMBEDDED_DEFAULT};
use crate::store::{Db, StoreHealth};
use crate::users::{self, UserSpec};
use anyhow::{anyhow, Context};
use clap::{Args, Parser, Subcommand};
use std::io::{BufRead, IsTerminal};
use std::path::{Path, PathBuf};

pub const DEFAULT_CONFIG: &str = "config/keyward.yaml";

#[derive(Debug, Parser)]
#[command(
    name = "keyward",
    version,
    about = "Authentication sidecar for HTTP upstreams"
)]
pub struct Cli {
    /// Configuration file [default: $KEYWARD_CONFIG, else config/keyward.yaml, else the
    /// embedded default]
    #[arg(long, global = true, value_name = "FILE", env = "KEYWARD_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the proxy and the ops listener.
    Serve,
    /// Validate the configuration and exit (0 when valid).
    CheckConfig,
    /// Validate the configuration, then make the running keyward (found through
    /// `server.pid_file`) reload it.
    Reload,
    /// Manage users in the configured store.
    #[command(subcommand)]
    User(UserCommand),
    /// Read the audit records in the configured store.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Write a new Ed25519 key pair for signed requests; prints the public key to enroll.
    Keygen {
        /// Where to write the private key (PKCS#8 PEM, mode 0600); never overwritten.
        #[arg(long, default_value = "keyward-ed25519.pem")]
        out: PathBuf,
    },
    /// Sign a request (RFC 9421): print the headers, or run curl with them.
    Sign(SignArgs),
}

#[derive(Debug, Args)]
pub struct SignArgs {
    /// The private key written by `keyward keygen`.
    #[arg(long, value_name = "FILE")]
    pub key: PathBuf,
    /// `<user name or id>/<keyID>` of the enrolled public key.
    #[arg(long, value_name = "ID")]
    pub keyid: String,
    #[arg(
        short = 'X',
        long = "request",
        default_value = "GET",
        value_name = "METHOD"
    )]
    pub method: String,
    /// The request body (signed through Content-Digest).
    #[arg(short = 'd', long = "data", value_name = "BODY")]
    pub data: Option<String>,
    /// Run curl with the headers instead of printing them.
    #[arg(long)]
    pub run: bool,
    pub url: String,
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Create a user.
    Add(AddUser),
    /// List users.
    List,
    /// Lock a user: every credential of theirs is refused.
    Lock { name: String },
    /// Unlock a user.
    Unlock { name: String },
    /// Give a user a new TOTP secret and print its otpauth:// URI (for an authenticator app).
    Totp { name: String },
    /// Set a user's password.
    Passwd {
        name: String,
        /// Read the password from the first line of standard input.
        #[arg(long)]
        password_stdin: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Print the newest records, one JSON object per line, oldest first.
    Tail {
        /// How many records.
        #[arg(short = 'n', long, default_value_t = 20)]
        lines: u32,
        /// Keep printing records as they are written (every replica's, with PostgreSQL).
        #[arg(short, long)]
        follow: bool,
    },
}

#[derive(Debug, Args)]
pub struct AddUser {
    pub name: String,
    /// A function (role) of the user; repeat for several.
    #[arg(long = "function", value_name = "F")]
    pub functions: Vec<String>,
    #[arg(long, value_name = "C")]
    pub customer: Option<String>,
    #[arg(long, value_name = "D")]
    pub domain: Option<String>,
    /// A customer user (API keys get the EXTERNAL security level).
    #[arg(long)]
    pub external: bool,
    /// Read the password from the first line of standard input.
    #[arg(long)]
    pub password_stdin: bool,
    /// Also give the user a TOTP secret and print its otpauth:// URI.
    #[arg(long)]
    pub totp: bool,
}

/// `keyward keygen`.
pub fn keygen(out: &Path) -> anyhow::Result<()> {
    use ed25519_dalek::pkcs8::{spki::der::pem::LineEnding, EncodePrivateKey, EncodePublicKey};
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut seed = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut seed);
    let signing = ed25519_dalek::SigningKey::from_bytes(&seed);
    // PKCS#8 v1 (RFC 8410 without the optional public key), which every TLS and crypto
    // library reads; v2 is refused by some (Python's cryptography among them).
    let pem = ed25519_dalek::pkcs8::KeypairBytes {
        secret_key: seed,
        public_key: None,
    }
    .to_pkcs8_pem(LineEnding::LF)
    .map_err(|e| anyhow!("cannot encode the private key: {e}"))?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(out)
        .with_context(|| format!("cannot create {} (it is never overwritten)", out.display()))?;
    file.write_all(pem.as_bytes())?;
    let public = signing.verifying_key();
    let public_pem = public
        .to_public_key_pem(LineEnding::LF)
        .map_err(|e| anyhow!("cannot encode the public key: {e}"))?;
    use base64::Engine as _;
    println!("private key written to {} (mode 0600)", out.display());
    println!(
        "public key (base64, for publicKey when enrolling): {}",
        base64::engine::general_purpose::STANDARD.encode(public.to_bytes())
    );
    print!("{public_pem}");
    Ok(())
}

/// `keyward sign`.
pub fn sign(args: &SignArgs) -> anyhow::Result<()> {
    use ed25519_dalek::pkcs8::DecodePrivateKey;
    let pem = std::fs::read_to_string(&args.key)
        .with_context(|| format!("cannot read {}", args.key.display()))?;
    let signing = ed25519_dalek::SigningKey::from_pkcs8_pem(&pem)
        .map_err(|e| anyhow!("{} is not an Ed25519 private key: {e}", args.key.display()))?;
    let url: http::Uri = args.url.parse().context("invalid URL")?;
    let mut nonce = [0u8; 16];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut nonce);
    use base64::Engine as _;
    let nonce = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(nonce);
    let created = crate::store::now_ms() / 1000;
    let method = args.method.to_ascii_uppercase();
    let headers = crate::auth::signature::sign(
        &signing,
        &args.keyid,
        &method,
        &url,
        args.data.as_deref().map(str::as_bytes),
        created,
        &nonce,
    )
    .map_err(|e| anyhow!(e))?;
    if !args.run {
        for (name, value) in headers {
            println!("{name}: {value}");
        }
        return Ok(());
    }
    let mut curl = std::process::Command::new("curl");
    curl.args(["-sS", "-X", &method]);
    for (name, value) in &headers {
        curl.arg("-H").arg(format!("{name}: {value}"));
    }
    if let Some(body) = &args.data {
        curl.arg("--data-binary").arg(body);
    }
    let status = curl.arg(&args.url).status().context("cannot run curl")?;
    if !status.success() {
        return Err(anyhow!("curl exited with {status}"));
    }
    Ok(())
}

/// Loads the config named on the command line; without `--config`, `config/keyward.yaml` if it
/// exists, else the embedded default.
pub fn load_config(path: Option<&Path>, purpose: Purpose) -> Result<Config, ConfigError> {
    match config_path(path) {
        Some(path) => Config::from_file_for(&path, purpose),
        None => Config::from_yaml_for(EMBEDDED_DEFAULT, purpose),
    }
}

/// What `command` needs of the configuration: `serve` and `check-config` everything serving
/// needs (and `check-config` says what is missing); the commands that only work on the store
/// (or signal the server, which reads the file itself) not the secrets only the server uses,
/// such as the directory's bind password.
pub fn purpose_of(command: &Command) -> Purpose {
    match command {
        Command::Serve | Command::CheckConfig => Purpose::Serve,
        Command::Reload
        | Command::User(_)
        | Command::Audit(_)
        | Command::Keygen { .. }
        | Command::Sign(_) => Purpose::Store,
    }
}

/// The file the configuration is read from (and re-read on reload); `None`: the embedded
/// default.
pub fn config_path(path: Option<&Path>) -> Option<PathBuf> {
    match path {
        Some(path) => Some(path.to_owned()),
        None if Path::new(DEFAULT_CONFIG).exists() => Some(PathBuf::from(DEFAULT_CONFIG)),
        None => None,
    }
}

/// `keyward reload`: sends SIGHUP to the process in `server.pid_file`, once the file it will
/// read is known to be valid (the caller validated `config`).
pub fn reload(config: &Config) -> anyhow::Result<()> {
    let pid_file = &config.server.pid_file;
    let text = std::fs::read_to_string(pid_file).with_context(|| {
        format!(
            "cannot read the pid file {} (server.pid_file): is keyward serve running with this configuration?",
            pid_file.display()
        )
    })?;
    let pid: i32 = text
        .trim()
        .parse()
        .map_err(|_| anyhow!("{}: not a process id", pid_file.display()))?;
    // A stale file may name a process that is not keyward any more: never signal that one.
    if let Err(why) = is_keyward(pid) {
        return Err(anyhow!(
            "{} names process {pid}, which is not a running keyward ({why}); not signalled",
            pid_file.display()
        ));
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGHUP,
    )
    .with_context(|| format!("cannot signal process {pid}"))?;
    println!("asked keyward (pid {pid}) to reload; its log says whether the reload succeeded");
    Ok(())
}

/// Whether process `pid` runs a keyward binary, judged by its executable (`/proc/PID/exe`),
/// never by its command line (which any process can fill with "keyward": `tail -f
/// keyward.log`). It is keyward when its executable is this very file (same device and
/// inode as [`std::env::current_exe`]), or a file named `keyward` (another install, or this
/// one replaced by an upgrade since it started). `Err` says what it is instead.
pub fn is_keyward(pid: i32) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let exe = format!("/proc/{pid}/exe");
    let target = std::fs::read_link(&exe).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => "no such process".to_owned(),
        _ => format!("its executable cannot be read: {e}"),
    })?;
    // `stat` through the link reaches the running file even when it was deleted or replaced.
    if let (Ok(running), Ok(this)) = (
        std::fs::metadata(&exe),
        std::env::current_exe().and_then(std::fs::metadata),
    ) {
        if running.dev() == this.dev() && running.ino() == this.ino() {
            return Ok(());
        }
    }
    let shown = target.to_string_lossy();
    let name = shown.trim_end_matches(" (deleted)");
    match Path::new(name).file_name().and_then(|n| n.to_str()) {
        Some("keyward") => Ok(()),
        _ => Err(format!("its executable is {shown}")),
    }
}

/// An error and its causes on one line, each cause once: sqlx and thiserror wrappers repeat
/// their source's message in their own, which `{:#}` would print again.
pub fn error_chain(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if line.contains(text.as_str()) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

/// Opens the configured store for a one-off command, and says which one: a command run
/// with another configuration than the server's must not write to a store nobody reads.
fn open_store(config: &Config, source: Option<&Path>) -> anyhow::Result<Db> {
    let source = match source {
        Some(path) => path.display().to_string(),
        None => "the embedded default configuration".to_owned(),
    };
    match &config.store {
        crate::store::StoreUrl::Sqlite(path) if !path.exists() => eprintln!(
            "keyward: creating a new store {} (from {})",
            config.store, source
        ),
        _ => eprintln!("keyward: using store {} (from {})", config.store, source),
    }
    let (errors, up) = crate::metrics::Metrics::new().store_series();
    Db::start(
        &config.store,
        config.store_pool,
        StoreHealth::new(errors, up),
    )
    .map_err(|e| crate::app::store_open_error(e, &config.store))
}

/// `keyward audit tail [-n N] [--follow]`.
pub fn run_audit_command(
    config: &Config,
    source: Option<&Path>,
    command: AuditCommand,
) -> anyhow::Result<()> {
    let AuditCommand::Tail { lines, follow } = command;
    let db = open_store(config, source)?;
    let limit = i64::from(lines);
    let mut last = 0;
    for record in db.block_on(|store| async move { store.audit_tail(limit).await })? {
        last = record.seq;
        println!("{}", record.to_json());
    }
    if !follow {
        return Ok(());
    }
    loop {
        std::thread::sleep(std::time::Duration::from_millis(500));
        let after = last;
        for record in db.block_on(|store| async move { store.audit_since(after, 1000).await })? {
            last = record.seq;
            println!("{}", record.to_json());
        }
    }
}

pub fn run_user_command(
    config: &Config,
    source: Option<&Path>,
    command: UserCommand,
) -> anyhow::Result<()> {
    let db = open_store(config, source)?;
    match command {
        UserCommand::Add(add) => {
            let AddUser {
                name,
                functions,
                customer,
                domain,
                external,
                password_stdin,
                totp,
            } = add;
            let password = read_password(password_stdin)?;
            let spec = UserSpec {
                name,
                domain,
                customer,
                functions,
                external,
            };
            let user = db.block_on(|store| async move {
                Ok(users::add_user(store.as_ref(), spec, &password).await)
            })??;
            println!("created user {} (id {:x})", user.name, user.id);
            if totp {
                let name = user.name.clone();
                let uri = db.block_on(|store| async move {
                    Ok(users::new_totp(store.as_ref(), &name).await)
                })??;
                println!("TOTP: {uri}");
            }
        }
        UserCommand::List => {
            let list = db.block_on(|store| async move { store.list_users().await })?;
            println!(
                "{:<8} {:<32} {:<10} {:<8} {:<8} {:<6} {:<6} FUNCTIONS",
                "ID", "NAME", "CUSTOMER", "EXTERNAL", "LOCKED", "TOTP", "SOURCE"
            );
            for u in list {
                println!(
                    "{:<8} {:<32} {:<10} {:<8} {:<8} {:<6} {:<6} {}",
                    format!("{:x}", u.id),
                    u.name,
                    u.customer.as_deref().unwrap_or("-"),
                    u.external,
                    u.locked,
                    u.totp_secret.is_some(),
                    u.source.as_str(),
                    u.functions.join(",")
                );
            }
        }
        UserCommand::Lock { name } => {
            let user = db.block_on(|store| async move {
                Ok(users::set_locked(store.as_ref(), &name, true).await)
            })??;
            wait_until_applied(config, &db);
            println!("locked {}", user.name);
        }
        UserCommand::Unlock { name } => {
            let user = db.block_on(|store| async move {
                Ok(users::set_locked(store.as_ref(), &name, false).await)
            })??;
            wait_until_applied(config, &db);
            println!("unlocked {}", user.name);
        }
        UserCommand::Totp { name } => {
            let uri =
                db.block_on(
                    |store| async move { Ok(users::new_totp(store.as_ref(), &name).await) },
                )??;
            wait_until_applied(config, &db);
            println!("TOTP: {uri}");
        }
        UserCommand::Passwd {
            name,
            password_stdin,
        } => {
            let password = read_password(password_stdin)?;
            let shown = name.clone();
            db.block_on(|store| async move {
                Ok(users::set_password(store.as_ref(), &name, &password).await)
            })??;
            wait_until_applied(config, &db);
            println!("password changed for {shown}");
        }
    }
    Ok(())
}

/// Waits until the keyward serving this configuration on this host (its `listen.ops`) has
/// applied the store's change feed up to the change just written
/// (`keyward_change_feed_applied_seq`), so that a lock, unlock or password change is in force
/// there when the command returns: the next request is refused, not one
/// `cache.invalidation_poll` later. No keyward answering there: nothing to wait for. One that
/// has not applied it within two polls and a second is named on standard error (it applies it
/// at its next read of the feed). Other replicas of a fleet apply it within their own
/// notification or poll.
fn wait_until_applied(config: &Config, db: &Db) {
    use std::time::{Duration, Instant};
    let Ok(written) = db.block_on(|store| async move { store.latest_change().await }) else {
        return;
    };
    let Ok(ops) = config.listen_ops.parse::<std::net::SocketAddr>() else {
        return;
    };
    let ops = crate::ops::local_address(ops);
    let limit = config
        .cache
        .invalidation_poll
        .saturating_mul(2)
        .saturating_add(Duration::from_secs(1))
        .min(Duration::from_secs(30));
    let deadline = Instant::now() + limit;
    loop {
        match applied_change(ops) {
            // Nobody listens there: no running keyward to wait for.
            Err(_) => return,
            // A keyward without the gauge (an older one): it applies it within its poll.
            Ok(None) => return,
            Ok(Some(applied)) if applied >= written => return,
            Ok(Some(_)) if Instant::now() >= deadline => {
                eprintln!(
                    "keyward: the keyward at {ops} has not applied this change yet; it will at its next read of the change feed"
                );
                return;
            }
            Ok(Some(_)) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

/// `keyward_change_feed_applied_seq` as the ops listener at `ops` reports it.
fn applied_change(ops: std::net::SocketAddr) -> std::io::Result<Option<i64>> {
    use std::io::{Read, Write};
    use std::time::Duration;
    let mut stream = std::net::TcpStream::connect_timeout(&ops, Duration::from_millis(500))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.set_write_timeout(Some(Duration::from_secs(2)))?;
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: keyward\r\nConnection: close\r\n\r\n")?;
    let mut page = Vec::new();
    stream.take(16 * 1024 * 1024).read_to_end(&mut page)?;
    Ok(String::from_utf8_lossy(&page).lines().find_map(|line| {
        let value = line.strip_prefix("keyward_change_feed_applied_seq ")?;
        value.trim().parse::<f64>().ok().map(|v| v as i64)
    }))
}

/// A password from stdin (`--password-stdin`) or typed twice at the terminal; never from the
/// command line, where it would show in `ps` and shell history.
fn read_password(from_stdin: bool) -> anyhow::Result<String> {
    if from_stdin {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .context("cannot read the password from standard input")?;
        return Ok(line.trim_end_matches(['\r', '\n']).to_owned());
    }
    if !std::io::stdin().is_terminal() {
        return Err(anyhow!(
            "no terminal to ask for a password; pass --password-stdin and pipe it in"
        ));
    }
    let first = rpassword::prompt_password("Password: ")?;
    let second = rpassword::prompt_password("Repeat password: ")?;
    if first != second {
        return Err(anyhow!("the passwords differ"));
    }
    Ok(first)
}
