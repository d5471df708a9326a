//! `serve --dev`: the `dev` tenant and its key, kept in `<state dir>/dev-key` (mode 0600) and
//! printed with a ready grpcurl line at every start. The key goes to the terminal, never to
//! the logs.

use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use crate::app::App;
use crate::app::AppError;
use crate::app::tenants::KeyFor;
use crate::domain::auth::{ApiKey, Scope, Scopes, TenantName};

pub const DEV_TENANT: &str = "dev";

#[derive(Debug, thiserror::Error)]
pub enum DevError {
    #[error(transparent)]
    App(#[from] AppError),
    #[error("writing {path}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// The dev tenant's key: the saved one if it still works, else a new one (and the tenant, the
/// first time).
pub async fn ensure_dev_key(app: &App, state_dir: &Path) -> Result<ApiKey, DevError> {
    let path = state_dir.join("dev-key");
    if path.exists() {
        // Tighten a file that was created or copied with looser permissions.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(
            |source| DevError::Io {
                path: path.display().to_string(),
                source,
            },
        )?;
    }
    if let Ok(saved) = std::fs::read_to_string(&path)
        && let Ok(key) = ApiKey::parse(saved.trim())
        && let Ok(Ok(_)) = app
            .auth
            .authenticate(Some(&format!("Bearer {}", key.expose())))
            .await
    {
        return Ok(key);
    }
    let name = TenantName::parse(DEV_TENANT).expect("a valid name");
    let key = match app.find_tenant(&name).await? {
        Some(_) => {
            app.create_key(
                &KeyFor::Tenant(name),
                &Scopes::new([Scope::Read, Scope::Write, Scope::Admin]),
            )
            .await?
        }
        None => app.create_tenant(&name).await?.1,
    };
    let io = |source| DevError::Io {
        path: path.display().to_string(),
        source,
    };
    std::fs::create_dir_all(state_dir).map_err(io)?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .map_err(io)?;
    writeln!(file, "{}", key.expose()).map_err(io)?;
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
        state_dir.join("dev-key").display(),
        key.expose(),
        state_dir.join("dev-key").display(),
    )
}
