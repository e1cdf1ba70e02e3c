//! `/authentication/v1/user/{user}/lock` (SPEC §5): lock and unlock from the admin API.

use crate::call::{AdminApi, Call, POWER_USER};
use crate::envelope::{AdminError, Reply};
use keyward_auth::SecurityLevel;
use keyward_store::User;
use serde_json::json;

/// Locking needs POWER-USER at level DEFAULT or above, whoever the target is.
fn authorize(call: &Call<'_>) -> Result<(), AdminError> {
    let caller = call.caller;
    if caller.level < SecurityLevel::Default || !caller.has_function(POWER_USER) {
        return Err(AdminError::Forbidden(format!(
            "locking users needs {POWER_USER} at security level DEFAULT or above"
        )));
    }
    if caller.read_only {
        return Err(AdminError::Forbidden(
            "a read-only key cannot change anything".into(),
        ));
    }
    Ok(())
}

pub async fn set_locked(
    api: &AdminApi,
    call: &Call<'_>,
    target: &User,
    locked: bool,
) -> Result<Reply, AdminError> {
    authorize(call)?;
    let user_id = target.id;
    let audit = call.audit(200, &target.name, "");
    let changed = api
        .db
        .call(move |store| async move { store.set_user_locked(user_id, locked, audit).await })
        .await?;
    if !changed {
        return Err(AdminError::NotFound(format!(
            "no such user: {}",
            target.name
        )));
    }
    // Every credential of the user is refused from the next request on this keyward; other
    // processes follow through the change feed.
    api.auth.invalidate_user(user_id);
    Ok(Reply::ok(json!({
        "id": target.id,
        "name": target.name,
        "locked": locked,
    })))
}
