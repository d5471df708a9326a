//! Finding a Postgres to use with no configuration: `DATABASE_URL` if set, else a server on
//! localhost:5432 if one answers, else a private cluster run from the machine's own Postgres
//! binaries with its data under `.coffer/`. `serve --dev` and the test suite both use this, so
//! the README's commands need nothing running beforehand.
//!
//! Postgres refuses to run as root, so when Coffer runs as root the private cluster runs as the
//! unprivileged `postgres` account (or `nobody`), in a directory that account can reach.

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::str::FromStr;
use std::time::Duration;

use sqlx::Connection;
// A server found on loopback is spoken to without TLS: encryption there protects nothing and
// costs both sides CPU on every call. A DATABASE_URL keeps its own sslmode.
use sqlx::postgres::{PgConnectOptions, PgSslMode};

#[derive(Debug, thiserror::Error)]
pub enum LocateError {
    #[error("DATABASE_URL is not a valid Postgres URL: {0}")]
    BadUrl(#[source] sqlx::Error),
    #[error(
        "no Postgres found: DATABASE_URL is unset, nothing answers on 127.0.0.1:5432, and no Postgres binaries (initdb, pg_ctl) are installed. \
         Install them (Debian/Ubuntu: `apt-get install postgresql`; macOS: `brew install postgresql`), \
         or run `docker compose up -d postgres` and set DATABASE_URL=postgres://postgres:postgres@127.0.0.1:5432/coffer"
    )]
    NoPostgres,
    #[error("starting a private Postgres in {dir}: {detail}")]
    Private { dir: PathBuf, detail: String },
}

/// Where the Postgres came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    DatabaseUrl,
    Localhost,
    /// A private cluster under `dir`; `started` when this process started it (and so should
    /// stop it), rather than finding it already running.
    Private {
        dir: PathBuf,
        started: bool,
    },
}

/// A reachable Postgres server.
#[derive(Debug, Clone)]
pub struct Located {
    pub options: PgConnectOptions,
    pub source: Source,
}

/// Finds (or starts) a Postgres. `state_dir` is where a private cluster lives (`.coffer`).
pub async fn locate(state_dir: &Path) -> Result<Located, LocateError> {
    if let Ok(url) = std::env::var("DATABASE_URL")
        && !url.is_empty()
    {
        let options = PgConnectOptions::from_str(&url).map_err(LocateError::BadUrl)?;
        return Ok(Located {
            options,
            source: Source::DatabaseUrl,
        });
    }
    for user in ["postgres", &whoami()] {
        let options = PgConnectOptions::new()
            .host("127.0.0.1")
            .port(5432)
            .username(user)
            .database("postgres")
            .ssl_mode(PgSslMode::Disable);
        if answers(&options).await {
            return Ok(Located {
                options,
                source: Source::Localhost,
            });
        }
    }
    let dir = state_dir.join("postgres");
    let private = dir.clone();
    let (options, started) = tokio::task::spawn_blocking(move || start_private(&private))
        .await
        .map_err(|e| LocateError::Private {
            dir: dir.clone(),
            detail: e.to_string(),
        })??;
    Ok(Located {
        options,
        source: Source::Private { dir, started },
    })
}

async fn answers(options: &PgConnectOptions) -> bool {
    matches!(
        tokio::time::timeout(
            Duration::from_secs(2),
            sqlx::PgConnection::connect_with(options)
        )
        .await,
        Ok(Ok(_))
    )
}

fn whoami() -> String {
    std::env::var("USER").unwrap_or_else(|_| "postgres".into())
}

/// The directory holding `initdb` and `pg_ctl`: `pg_config --bindir`, the newest
/// `/usr/lib/postgresql/*/bin`, or the PATH.
fn find_bindir() -> Option<PathBuf> {
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output()
        && out.status.success()
    {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if dir.join("initdb").exists() {
            return Some(dir);
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Some(bin);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .find(|p| p.join("initdb").exists() && p.join("pg_ctl").exists())
    })
}

/// The account a root-run cluster runs as: (uid, gid) from /etc/passwd.
fn unprivileged_account() -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    ["postgres", "nobody"].iter().find_map(|name| {
        passwd.lines().find_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            (f.len() > 3 && f[0] == *name)
                .then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))?
        })
    })
}

fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    // /proc/self belongs to the process's effective user.
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// Starts (or reuses) the private cluster in `dir`, returning options for it and whether this
/// call started it. Blocking.
pub fn start_private(dir: &Path) -> Result<(PgConnectOptions, bool), LocateError> {
    let fail = |detail: String| LocateError::Private {
        dir: dir.to_owned(),
        detail,
    };
    let bindir = find_bindir().ok_or(LocateError::NoPostgres)?;
    let account = if is_root() {
        Some(unprivileged_account().ok_or_else(|| {
            fail("running as root and no postgres or nobody account exists".into())
        })?)
    } else {
        None
    };
    // As root, the cluster's account must reach the data directory; the project checkout may
    // sit under a private home (/root), so fall back to a directory under /var/tmp.
    let data = match account {
        Some(acct) if !reachable_by(dir, acct) => {
            let fallback = PathBuf::from("/var/tmp/coffer-postgres").join(dir_key(dir));
            std::fs::create_dir_all(dir).map_err(|e| fail(e.to_string()))?;
            std::fs::write(dir.join("LOCATION"), format!("{}\n", fallback.display()))
                .map_err(|e| fail(e.to_string()))?;
            fallback
        }
        _ => dir.join("data"),
    };
    std::fs::create_dir_all(&data).map_err(|e| fail(e.to_string()))?;
    // One starter at a time (parallel test binaries race here).
    let lock_path = data.with_extension("lock");
    let lock = std::fs::File::create(&lock_path).map_err(|e| fail(e.to_string()))?;
    lock.lock().map_err(|e| fail(e.to_string()))?;
    if let Some((uid, gid)) = account {
        chown_recursive(&data, uid, gid).map_err(|e| fail(e.to_string()))?;
    }
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| fail(e.to_string()))?;

    let run = |program: &str, args: &[&str]| -> Result<std::process::Output, LocateError> {
        let mut cmd = Command::new(bindir.join(program));
        cmd.args(args).current_dir(&data).env_remove("PGDATA");
        if let Some((uid, gid)) = account {
            cmd.uid(uid).gid(gid);
        }
        cmd.output().map_err(|e| fail(format!("{program}: {e}")))
    };

    if !data.join("PG_VERSION").exists() {
        let d = data.to_string_lossy();
        let out = run(
            "initdb",
            &[
                "-D",
                &d,
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        )?;
        if !out.status.success() {
            return Err(fail(format!(
                "initdb failed: {}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
    }
    let (port, started) = match running_port(&data) {
        Some(port)
            if run("pg_ctl", &["-D", &data.to_string_lossy(), "status"])?
                .status
                .success() =>
        {
            (port, false)
        }
        _ => {
            let port = free_port().map_err(|e| fail(e.to_string()))?;
            let d = data.to_string_lossy();
            let opts = format!("-p {port} -c listen_addresses=127.0.0.1 -k {d}");
            let log = data.join("server.log");
            let out = run(
                "pg_ctl",
                &[
                    "-D",
                    &d,
                    "-l",
                    &log.to_string_lossy(),
                    "-o",
                    &opts,
                    "-w",
                    "-t",
                    "30",
                    "start",
                ],
            )?;
            if !out.status.success() {
                let tail = std::fs::read_to_string(&log).unwrap_or_default();
                return Err(fail(format!(
                    "pg_ctl start failed: {}{}",
                    String::from_utf8_lossy(&out.stderr),
                    tail.lines().rev().take(5).collect::<Vec<_>>().join("\n")
                )));
            }
            (port, true)
        }
    };
    drop(lock);
    let options = PgConnectOptions::new()
        .host("127.0.0.1")
        .port(port)
        .username("postgres")
        .database("postgres")
        .ssl_mode(PgSslMode::Disable);
    Ok((options, started))
}

/// The port of a cluster that is running, from line 4 of its `postmaster.pid`.
fn running_port(data: &Path) -> Option<u16> {
    std::fs::read_to_string(data.join("postmaster.pid"))
        .ok()?
        .lines()
        .nth(3)?
        .trim()
        .parse()
        .ok()
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A stable name for `dir`'s fallback location. `absolute` does not touch the file system, so
/// the name is the same before and after the directory exists.
fn dir_key(dir: &Path) -> String {
    use sha2::{Digest, Sha256};
    let abs = std::path::absolute(dir).unwrap_or_else(|_| dir.to_owned());
    let digest = Sha256::digest(abs.to_string_lossy().as_bytes());
    digest[..6].iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether every ancestor of `dir` lets `account` through (others' execute bit, or owned by it).
fn reachable_by(dir: &Path, (uid, _gid): (u32, u32)) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(abs) = std::path::absolute(dir) else {
        return false;
    };
    abs.ancestors().skip(1).all(|p| match std::fs::metadata(p) {
        Ok(m) => m.uid() == uid || m.mode() & 0o001 != 0,
        Err(_) => true, // not created yet: created below by us, mode 0755
    })
}

fn chown_recursive(path: &Path, uid: u32, gid: u32) -> std::io::Result<()> {
    std::os::unix::fs::chown(path, Some(uid), Some(gid))?;
    if path.is_dir() {
        for entry in std::fs::read_dir(path)? {
            chown_recursive(&entry?.path(), uid, gid)?;
        }
    }
    Ok(())
}

/// Stops a private cluster started by [`locate`].
pub fn stop_private(dir: &Path) {
    let data = match std::fs::read_to_string(dir.join("LOCATION")) {
        Ok(loc) => PathBuf::from(loc.trim()),
        Err(_) => dir.join("data"),
    };
    if let Some(bindir) = find_bindir() {
        let mut cmd = Command::new(bindir.join("pg_ctl"));
        cmd.args(["-D", &data.to_string_lossy(), "-m", "fast", "-w", "stop"])
            .current_dir(&data);
        if is_root()
            && let Some((uid, gid)) = unprivileged_account()
        {
            cmd.uid(uid).gid(gid);
        }
        let _ = cmd.output();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fallback_name_does_not_depend_on_the_directory_existing() {
        let relative = Path::new("does-not-exist-yet/postgres");
        let absolute = std::env::current_dir().unwrap().join(relative);
        assert_eq!(dir_key(relative), dir_key(&absolute));
    }
}
