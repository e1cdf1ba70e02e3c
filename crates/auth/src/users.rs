//! User management shared by the CLI and the bootstrap administrator: validation, hashing, and
//! the store calls. Every change is audited like an admin call, with the local operator as the
//! actor (auth method `LOCAL`).

use crate::password::hash_password;
use keyward_store::{AuditEvent, NewUser, Store, StoreError, User};

pub const MIN_PASSWORD_LEN: usize = 8;
const MAX_NAME_LEN: usize = 255;

#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("invalid user name {0:?}: use 1-255 characters without spaces, '/' or control characters, not only digits")]
    InvalidName(String),
    #[error("invalid function name {0:?}: use letters, digits, '-' and '_'")]
    InvalidFunction(String),
    #[error("the password must have at least {MIN_PASSWORD_LEN} characters")]
    WeakPassword,
    #[error("no user named {0:?}")]
    NoSuchUser(String),
    #[error("{0}")]
    Hash(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What an operator gives to create a user.
#[derive(Debug, Clone, Default)]
pub struct UserSpec {
    pub name: String,
    pub domain: Option<String>,
    pub customer: Option<String>,
    pub functions: Vec<String>,
    pub external: bool,
}

/// Names appear in key ids (`<user name or id>/<keyID>`), so `/` is out, and an all-digit name
/// would be read as a numeric id.
pub fn validate_name(name: &str) -> Result<(), UserError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && !name.chars().all(|c| c.is_ascii_digit())
        && !name
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '/' || c == ':' || c == ',');
    if ok {
        Ok(())
    } else {
        Err(UserError::InvalidName(name.to_owned()))
    }
}

pub fn validate_function(function: &str) -> Result<(), UserError> {
    let ok = !function.is_empty()
        && function.len() <= 128
        && function
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(UserError::InvalidFunction(function.to_owned()))
    }
}

pub fn validate_password(password: &str) -> Result<(), UserError> {
    if password.chars().count() < MIN_PASSWORD_LEN {
        return Err(UserError::WeakPassword);
    }
    Ok(())
}

/// The audit record of a change made on this machine (`keyward user ...`, bootstrap): the
/// actor is the operating-system user running the command.
pub fn local_audit(operation: &str, target_user: &str) -> AuditEvent {
    AuditEvent {
        seq: 0,
        time: keyward_store::audit::now_rfc3339(),
        request_id: keyward_core::RequestId::random().as_str().to_owned(),
        actor: std::env::var("USER")
            .or_else(|_| std::env::var("LOGNAME"))
            .unwrap_or_else(|_| "local".into()),
        auth_method: "LOCAL".into(),
        operation: operation.into(),
        target_user: target_user.into(),
        target_credential: String::new(),
        status: 200,
        outcome: "ok".into(),
        source_ip: None,
    }
}

pub async fn add_user(
    store: &dyn Store,
    spec: UserSpec,
    password: &str,
) -> Result<User, UserError> {
    validate_name(&spec.name)?;
    spec.functions
        .iter()
        .try_for_each(|f| validate_function(f))?;
    validate_password(password)?;
    let password_hash = hash_password(password).map_err(UserError::Hash)?;
    let mut functions = spec.functions;
    functions.sort();
    functions.dedup();
    let audit = local_audit("user.create", &spec.name);
    Ok(store
        .create_user(
            NewUser {
                name: spec.name,
                domain: spec.domain,
                customer: spec.customer,
                functions,
                external: spec.external,
                password_hash,
            },
            audit,
        )
        .await?)
}

async fn existing(store: &dyn Store, name: &str) -> Result<User, UserError> {
    store
        .user_by_name(name)
        .await?
        .ok_or_else(|| UserError::NoSuchUser(name.to_owned()))
}

pub async fn set_locked(store: &dyn Store, name: &str, locked: bool) -> Result<User, UserError> {
    let user = existing(store, name).await?;
    let operation = if locked { "user.lock" } else { "user.unlock" };
    if !store
        .set_user_locked(user.id, locked, local_audit(operation, name))
        .await?
    {
        return Err(UserError::NoSuchUser(name.to_owned()));
    }
    Ok(User { locked, ..user })
}

pub async fn set_password(store: &dyn Store, name: &str, password: &str) -> Result<(), UserError> {
    validate_password(password)?;
    let user = existing(store, name).await?;
    let hash = hash_password(password).map_err(UserError::Hash)?;
    if !store
        .set_user_password(user.id, &hash, local_audit("user.password", name))
        .await?
    {
        return Err(UserError::NoSuchUser(name.to_owned()));
    }
    Ok(())
}

/// Gives the user a new TOTP secret; returns the `otpauth://` URI to enroll an authenticator.
pub async fn new_totp(store: &dyn Store, name: &str) -> Result<String, UserError> {
    let user = existing(store, name).await?;
    let secret = crate::totp::generate_secret();
    let uri = crate::totp::provisioning_uri(&secret, &user.name).map_err(UserError::Hash)?;
    if !store
        .set_user_totp(user.id, Some(&secret), local_audit("user.totp", name))
        .await?
    {
        return Err(UserError::NoSuchUser(name.to_owned()));
    }
    Ok(uri)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for good in ["john", "superuser@admindomain.example.com", "a-b_c.d"] {
            assert!(validate_name(good).is_ok(), "{good}");
        }
        for bad in ["", "12345", "a/b", "a b", "a:b", "a\u{7}"] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn functions_and_passwords() {
        assert!(validate_function("CASE-SECMON-RO").is_ok());
        assert!(validate_function("no spaces").is_err());
        assert!(validate_password("short").is_err());
        assert!(validate_password("long enough").is_ok());
    }
}
