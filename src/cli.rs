//! The command line (SPEC §5, §8).

use crate::config::{Config, ConfigError, EMBEDDED_DEFAULT};
use crate::store::Db;
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
    /// Configuration file [default: config/keyward.yaml, or the embedded default when absent]
    #[arg(long, global = true, value_name = "FILE")]
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
    /// Manage users in the configured store.
    #[command(subcommand)]
    User(UserCommand),
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
    /// Set a user's password.
    Passwd {
        name: String,
        /// Read the password from the first line of standard input.
        #[arg(long)]
        password_stdin: bool,
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
}

/// Loads the config named on the command line; without `--config`, `config/keyward.yaml` if it
/// exists, else the embedded default.
pub fn load_config(path: Option<&Path>) -> Result<Config, ConfigError> {
    match path {
        Some(path) => Config::from_file(path),
        None if Path::new(DEFAULT_CONFIG).exists() => Config::from_file(Path::new(DEFAULT_CONFIG)),
        None => Config::from_yaml(EMBEDDED_DEFAULT),
    }
}

pub fn run_user_command(config: &Config, command: UserCommand) -> anyhow::Result<()> {
    let db = Db::start(&config.store).context("cannot open the store")?;
    match command {
        UserCommand::Add(add) => {
            let AddUser {
                name,
                functions,
                customer,
                domain,
                external,
                password_stdin,
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
        }
        UserCommand::List => {
            let list = db.block_on(|store| async move { store.list_users().await })?;
            println!(
                "{:<8} {:<32} {:<10} {:<8} {:<8} {:<6} FUNCTIONS",
                "ID", "NAME", "CUSTOMER", "EXTERNAL", "LOCKED", "TOTP"
            );
            for u in list {
                println!(
                    "{:<8} {:<32} {:<10} {:<8} {:<8} {:<6} {}",
                    format!("{:x}", u.id),
                    u.name,
                    u.customer.as_deref().unwrap_or("-"),
                    u.external,
                    u.locked,
                    u.totp_secret.is_some(),
                    u.functions.join(",")
                );
            }
        }
        UserCommand::Lock { name } => {
            let user = db.block_on(|store| async move {
                Ok(users::set_locked(store.as_ref(), &name, true).await)
            })??;
            println!("locked {}", user.name);
        }
        UserCommand::Unlock { name } => {
            let user = db.block_on(|store| async move {
                Ok(users::set_locked(store.as_ref(), &name, false).await)
            })??;
            println!("unlocked {}", user.name);
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
            println!("password changed for {shown}");
        }
    }
    Ok(())
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
