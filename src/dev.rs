//! `serve --dev`: the `dev` tenant and its key, kept in `<state dir>/dev-key` (mode 0600) and
//! printed with a ready grpcurl line at every start. The key goes to the terminal, never to
//! the logs.

use std::net::SocketAddr;
use std::path::Path;

use crate::app::App;
use crate::app::AppError;
use crate::app::tenants::KeyFor;
use crate::domain::auth::{ApiKey, Scope, Scopes, TenantName};
use crate::pg_local::safe_fs::{Dir, UnsafePath};

pub const DEV_TENANT: &str = "dev";

/// The key's file in the state directory.
const DEV_KEY_FILE: &str = "dev-key";

#[derive(Debug, thiserror::Error)]
pub enum DevError {
    #[error(transparent)]
    App(#[from] AppError),
    #[error("the dev key in {dir}")]
    Unsafe {
        dir: String,
        #[source]
        source: UnsafePath,
    },
}

/// The dev tenant's key: the saved one if it still works, else a new one (and the tenant, the
/// first time).
///
/// The state directory may be made and written by root, so it is reached through
/// [`Dir`]: never through a symlink someone else planted, and never inside a directory
/// someone else can change. The key file is opened without following a symlink and
/// tightened to 0600 through its descriptor.
pub async fn ensure_dev_key(app: &App, state_dir: &Path) -> Result<ApiKey, DevError> {
    let refuse = |source| DevError::Unsafe {
        dir: state_dir.display().to_string(),
        source,
    };
    let state = Dir::walk(state_dir, Some(0o755)).map_err(refuse)?;
    state.check_writable_by_us_only().map_err(refuse)?;
    if let Some(saved) = state.read(DEV_KEY_FILE, None).map_err(refuse)?
        && let Ok(key) = ApiKey::parse(saved.trim())
        && let Ok(Ok(_)) = app
            .auth
            .authenticate(Some(&format!("Bearer {}", key.expose())))
            .await
    {
        // Tighten a file that was created or copied with looser permissions.
        state
            .open_file(DEV_KEY_FILE, false, Some(0o600), None)
            .map_err(refuse)?;
        return Ok(key);
    }
    let name = TenantName::parse(DEV_TENANT).expect("a valid name");
    let key = match app.tenants.find_tenant(&name).await? {
        Some(_) => {
            app.tenants
                .create_key(
                    &KeyFor::Tenant(name),
                    &Scopes::new([Scope::Read, Scope::Write, Scope::Admin]),
                )
                .await?
        }
        None => app.tenants.create_tenant(&name).await?.1,
    };
    state
        .write(DEV_KEY_FILE, &format!("{}\n", key.expose()), 0o600)
        .map_err(refuse)?;
    Ok(key)
}

/// What a newcomer needs to make a first call.
pub fn banner(key: &ApiKey, grpc_addr: SocketAddr, state_dir: &Path) -> String {
    format!(
        "\n\
         Coffer dev server on {grpc_addr} (tenant \"{DEV_TENANT}\")\n\
         API key (also in {}): {}\n\
         Try:\n  \
           grpcurl -plaintext -H \"authorization: Bearer $(cat {})\" \\\n    \
             -d '{{\"external_id\": \"user-1\", \"email\": \"ada@example.com\", \"name\": \"Ada\"}}' \\\n    \
             {grpc_addr} coffer.v1.Customers/CreateCustomer\n",
        state_dir.join(DEV_KEY_FILE).display(),
        key.expose(),
        state_dir.join(DEV_KEY_FILE).display(),
    )
}
