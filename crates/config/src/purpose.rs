//! What a configuration is loaded for: the server needs every secret the file names, the
//! store commands only what reaches the store.

/// What a configuration is loaded for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// `serve`, a reload and `check-config`: everything serving needs, the secrets it reads
    /// from the environment included.
    Serve,
    /// The commands that work on the store alone (`user`, `audit`, `reload`): a secret only
    /// the server uses — `identity.ldap.bind_password_env` — need not be set where they run.
    Store,
}
