//! Finding a Postgres to use with no configuration: `DATABASE_URL` if set, else the private
//! cluster the state directory (`.coffer/`) records, else a server on localhost:5432 if one
//! answers, else a new private cluster run from the machine's own Postgres binaries.
//! `serve --dev` and the test suite use [`locate`]; the admin commands use [`recorded`] unless
//! given `--dev`, so they never start or pick a cluster nobody asked for.
//!
//! The private cluster listens on a Unix socket only, inside its own 0700 data directory, and
//! trusts whoever reaches that socket: only its own account and root can. Postgres refuses to
//! run as root, so under root the cluster runs as the unprivileged `postgres` account (or
//! `nobody`), and every directory is made and handed over through [`safe_fs`], which never
//! follows a symlink another user could have planted.

pub mod safe_fs;

use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::str::FromStr;
use std::time::Duration;

use nix::unistd::{Gid, Uid, User, getegid, geteuid};
use sqlx::Connection;
// A server found on loopback is spoken to without TLS: encryption there protects nothing and
// costs both sides CPU on every call. A DATABASE_URL keeps its own sslmode.
use sqlx::postgres::{PgConnectOptions, PgSslMode};

use self::safe_fs::{Dir, UnsafePath};

/// The private cluster's port. It only names the socket file (`.s.PGSQL.5432`) in the
/// cluster's own directory; nothing listens on TCP, so it cannot collide with another server.
const PORT: u16 = 5432;

/// Where a cluster goes whose account cannot reach the state directory, or whose socket path
/// would be too long there. Persistent across reboots, unlike `/tmp` on many systems.
const ELSEWHERE: &str = "/var/tmp";

/// Longest Unix socket path (`sun_path` holds 108 bytes with the terminating NUL).
const MAX_SOCKET_PATH: usize = 107;

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
    #[error("the private Postgres in {dir}: {source}")]
    Unsafe {
        dir: PathBuf,
        #[source]
        source: UnsafePath,
    },
}

/// Where the Postgres came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    DatabaseUrl,
    Localhost,
    /// The private cluster of the state directory's `dir` (`<state>/postgres`), with its data
    /// (and socket) in `data`; `started` when this process started it (and so should stop
    /// it), rather than finding it already running.
    Private {
        dir: PathBuf,
        data: PathBuf,
        started: bool,
    },
}

/// A reachable Postgres server.
#[derive(Debug, Clone)]
pub struct Located {
    pub options: PgConnectOptions,
    pub source: Source,
}

impl Located {
    /// Which database this is and how it was found, for a person; never a password.
    pub fn describe(&self) -> String {
        let database = self.options.get_database().unwrap_or("postgres");
        match &self.source {
            Source::Private { dir, data, started } => format!(
                "database {database} on the private cluster in {} (recorded in {}; {})",
                data.display(),
                dir.display(),
                if *started {
                    "started for this command, stopped when it ends"
                } else {
                    "already running"
                }
            ),
            source => {
                let server = match self.options.get_socket() {
                    Some(socket) => format!("the socket in {}", socket.display()),
                    None => format!("{}:{}", self.options.get_host(), self.options.get_port()),
                };
                let how = match source {
                    Source::DatabaseUrl => "from DATABASE_URL",
                    _ => "found on localhost",
                };
                format!("database {database} on {server} ({how})")
            }
        }
    }
}

/// Finds (or starts) a Postgres, as `serve --dev` does. `state_dir` is where a private
/// cluster lives (`.coffer`).
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
    // A cluster already made for this state directory wins over a server that appeared
    // since, so the dev database does not change under its user.
    if let Some(located) = recorded(state_dir).await? {
        return Ok(located);
    }
    for user in ["postgres".to_owned(), whoami()] {
        let options = PgConnectOptions::new()
            .host("127.0.0.1")
            .port(5432)
            .username(&user)
            .database("postgres")
            .ssl_mode(PgSslMode::Disable);
        if answers(&options).await {
            return Ok(Located {
                options,
                source: Source::Localhost,
            });
        }
    }
    private(state_dir.join("postgres")).await
}

/// The private cluster `state_dir` records, started if it is not running; `None` when the
/// state directory records none. Creates nothing otherwise.
pub async fn recorded(state_dir: &Path) -> Result<Option<Located>, LocateError> {
    let dir = state_dir.join("postgres");
    if !records_cluster(&dir) {
        return Ok(None);
    }
    private(dir).await.map(Some)
}

async fn private(dir: PathBuf) -> Result<Located, LocateError> {
    let private = dir.clone();
    let (options, started) = tokio::task::spawn_blocking(move || start_private(&private))
        .await
        .map_err(|e| LocateError::Private {
            dir: dir.clone(),
            detail: e.to_string(),
        })??;
    let data = options.get_socket().cloned().unwrap_or_default();
    Ok(Located {
        options,
        source: Source::Private { dir, data, started },
    })
}

/// Whether `dir` (`<state>/postgres`) holds a cluster or records where one lives. Looks only;
/// [`start_private`] checks what it finds before using it.
fn records_cluster(dir: &Path) -> bool {
    dir.join("LOCATION").symlink_metadata().is_ok()
        || dir
            .join("data")
            .join("PG_VERSION")
            .symlink_metadata()
            .is_ok()
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

/// This process's user name, the other role a local server may let in.
fn whoami() -> String {
    User::from_uid(geteuid())
        .ok()
        .flatten()
        .map_or_else(|| "postgres".to_owned(), |u| u.name)
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

/// The account the cluster runs as and owns its files: this process's own, or under root
/// `postgres` (else `nobody`), which Postgres requires.
#[derive(Debug, Clone)]
struct Account {
    uid: Uid,
    gid: Gid,
    /// Whether commands must switch to it (this process is root).
    switch: bool,
}

fn cluster_account() -> Result<Account, String> {
    if !geteuid().is_root() {
        return Ok(Account {
            uid: geteuid(),
            gid: getegid(),
            switch: false,
        });
    }
    ["postgres", "nobody"]
        .into_iter()
        .find_map(|name| {
            User::from_name(name)
                .ok()
                .flatten()
                .filter(|user| !user.uid.is_root())
        })
        .map(|user| Account {
            uid: user.uid,
            gid: user.gid,
            switch: true,
        })
        .ok_or_else(|| "running as root and no postgres or nobody account exists".to_owned())
}

/// Starts (or reuses) the private cluster of `dir` (`<state>/postgres`), returning options
/// that reach it over its socket and whether this call started it. Blocking.
///
/// Its data lives in `dir/data` when the cluster's account can reach it and the socket path
/// fits; otherwise in a new directory with a random name under `/var/tmp`, which
/// `dir/LOCATION` records. Either must be a real directory (not a symlink) owned by the
/// cluster's account with mode 0700, or it is refused.
pub fn start_private(dir: &Path) -> Result<(PgConnectOptions, bool), LocateError> {
    start_cluster(dir, None)
}

/// As [`start_private`], but a new cluster is made a streaming replica of the private cluster
/// `primary` reaches (its socket), by `pg_basebackup -R` rather than `initdb`: it follows the
/// primary and answers reads. For tests of the read replica and for trying one out; the
/// primary's default `wal_level = replica` and its local `replication` trust line suffice.
pub fn start_private_replica(
    dir: &Path,
    primary: &PgConnectOptions,
) -> Result<(PgConnectOptions, bool), LocateError> {
    start_cluster(dir, Some(primary))
}

fn start_cluster(
    dir: &Path,
    replica_of: Option<&PgConnectOptions>,
) -> Result<(PgConnectOptions, bool), LocateError> {
    let fail = |detail: String| LocateError::Private {
        dir: dir.to_owned(),
        detail,
    };
    let refuse = |source: UnsafePath| LocateError::Unsafe {
        dir: dir.to_owned(),
        source,
    };
    let bindir = find_bindir().ok_or(LocateError::NoPostgres)?;
    let account = cluster_account().map_err(fail)?;
    // The state directory may be reached through a symlink its owner made; the cluster's
    // own directory, which Coffer makes, never is.
    let (Some(state), Some(name)) = (dir.parent(), dir.file_name()) else {
        return Err(fail("not a directory path".into()));
    };
    let pg = Dir::walk(state, Some(0o755))
        .and_then(|state| state.subdir(Path::new(name), Some(0o755), None))
        .map_err(refuse)?;
    pg.check_writable_by_us_only().map_err(refuse)?;
    // One starter at a time (parallel test binaries race here).
    let lock = pg
        .open_file("lock", true, Some(0o600), None)
        .map_err(refuse)?;
    lock.lock().map_err(|e| fail(format!("locking: {e}")))?;
    let data = data_dir(&pg, &account).map_err(refuse)?;
    let cluster = Cluster {
        bindir,
        data: data.path().to_owned(),
        account,
        fail: &fail,
    };

    if !data.contains("PG_VERSION") {
        match replica_of {
            None => cluster.initdb()?,
            Some(primary) => cluster.base_backup(primary)?,
        }
    }
    let pid_file = data
        .read("postmaster.pid", Some(cluster.account.uid))
        .ok()
        .flatten();
    let running = pid_file.as_deref().and_then(PidFile::parse);
    let port = match running {
        Some(pid) if cluster.is_running()? => {
            if pid.socket_only_in(&cluster.data) {
                drop(lock);
                return Ok((socket_options(&cluster.data, pid.port), false));
            }
            // Started by an older Coffer, listening on TCP: restart it socket-only.
            cluster.stop();
            cluster.start(&data)?
        }
        _ => cluster.start(&data)?,
    };
    drop(lock);
    Ok((socket_options(&cluster.data, port), true))
}

/// The cluster's data directory, made if missing (see [`start_private`]).
fn data_dir(pg: &Dir, account: &Account) -> Result<Dir, UnsafePath> {
    let owner = (account.uid, account.gid);
    if let Some(location) = pg.read("LOCATION", None)? {
        if let Some(data) = open_recorded(Path::new(location.trim()), account)? {
            return Ok(data);
        }
        // The recorded directory is gone (a cleaner of /var/tmp took it): start afresh.
    } else if fits_in(pg.path(), account) {
        let data = pg.subdir(Path::new("data"), Some(0o700), Some(owner))?;
        data.check_mode(0o700)?;
        return Ok(data);
    }
    let elsewhere = Dir::walk(Path::new(ELSEWHERE), None)?;
    let data = elsewhere.random_subdir("coffer-postgres-", owner)?;
    pg.write("LOCATION", &format!("{}\n", data.path().display()), 0o644)?;
    Ok(data)
}

/// The directory `LOCATION` names, if it still exists; it must be the cluster's, mode 0700.
fn open_recorded(path: &Path, account: &Account) -> Result<Option<Dir>, UnsafePath> {
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(not_a_location(path));
    };
    if !path.is_absolute() {
        return Err(not_a_location(path));
    }
    let parent = Dir::walk(parent, None)?;
    match parent.subdir(Path::new(name), None, Some((account.uid, account.gid))) {
        Ok(data) => {
            data.check_mode(0o700)?;
            Ok(Some(data))
        }
        Err(UnsafePath::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

fn not_a_location(path: &Path) -> UnsafePath {
    UnsafePath::Io {
        path: path.to_owned(),
        source: std::io::Error::other("LOCATION must hold an absolute path to a directory"),
    }
}

/// Whether the data directory can live in `pg`: its socket path is short enough, and (under
/// root) the cluster's account can pass through every directory above it.
fn fits_in(pg: &Path, account: &Account) -> bool {
    let data = pg.join("data");
    let socket = data.join(format!(".s.PGSQL.{PORT}"));
    socket.as_os_str().len() <= MAX_SOCKET_PATH && (!account.switch || reachable_by(&data, account))
}

/// Whether every directory above `path` lets `account` through (others' execute bit, or owned
/// by it).
fn reachable_by(path: &Path, account: &Account) -> bool {
    path.ancestors().skip(1).all(|p| {
        std::fs::metadata(p).is_ok_and(|m| m.uid() == account.uid.as_raw() || m.mode() & 0o001 != 0)
    })
}

fn socket_options(data: &Path, port: u16) -> PgConnectOptions {
    PgConnectOptions::new()
        .socket(data)
        .port(port)
        .username("postgres")
        .database("postgres")
        .ssl_mode(PgSslMode::Disable)
}

/// What `postmaster.pid` says about a running server: lines 4 to 6 are the port, the first
/// socket directory and the first TCP listen address (empty when there is none).
struct PidFile {
    port: u16,
    socket_dir: PathBuf,
    listen: String,
}

impl PidFile {
    fn parse(text: &str) -> Option<Self> {
        let lines: Vec<&str> = text.lines().collect();
        Some(Self {
            port: lines.get(3)?.trim().parse().ok()?,
            socket_dir: PathBuf::from(lines.get(4)?.trim()),
            listen: lines.get(5).map_or("", |l| l.trim()).to_owned(),
        })
    }

    /// Whether the server listens on no TCP address and has its socket in `data` (compared as
    /// files, since one directory has many spellings).
    fn socket_only_in(&self, data: &Path) -> bool {
        let same = |a: &Path, b: &Path| match (std::fs::metadata(a), std::fs::metadata(b)) {
            (Ok(a), Ok(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()),
            _ => false,
        };
        self.listen.is_empty() && same(&self.socket_dir, data)
    }
}

struct Cluster<'a> {
    bindir: PathBuf,
    data: PathBuf,
    account: Account,
    fail: &'a dyn Fn(String) -> LocateError,
}

impl Cluster<'_> {
    fn run(&self, program: &str, args: &[&str]) -> Result<std::process::Output, LocateError> {
        command(&self.bindir, &self.data, &self.account, program)
            .args(args)
            .output()
            .map_err(|e| (self.fail)(format!("{program}: {e}")))
    }

    fn initdb(&self) -> Result<(), LocateError> {
        let d = self.data.to_string_lossy();
        // Trust is safe only because nothing but the socket reaches the cluster, and the
        // socket sits in the 0700 data directory that only the cluster's account (and root)
        // can enter; TCP connections are refused outright should anyone enable them.
        let out = self.run(
            "initdb",
            &[
                "-D",
                &d,
                "-U",
                "postgres",
                "--auth-local=trust",
                "--auth-host=reject",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        )?;
        if !out.status.success() {
            return Err((self.fail)(format!(
                "initdb failed: {}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        Ok(())
    }

    /// Copies the private cluster `primary` reaches into this (empty) data directory, set up
    /// to stream from it (`standby.signal` and `primary_conninfo`).
    fn base_backup(&self, primary: &PgConnectOptions) -> Result<(), LocateError> {
        let d = self.data.to_string_lossy();
        let socket = primary
            .get_socket()
            .ok_or_else(|| (self.fail)("the primary must be a private cluster (a socket)".into()))?
            .to_string_lossy()
            .into_owned();
        let port = primary.get_port().to_string();
        let out = self.run(
            "pg_basebackup",
            &[
                "-D",
                &d,
                "-h",
                &socket,
                "-p",
                &port,
                "-U",
                "postgres",
                "-R",
                "-X",
                "stream",
                "-c",
                "fast",
                "--no-sync",
            ],
        )?;
        if !out.status.success() {
            return Err((self.fail)(format!(
                "pg_basebackup failed: {}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        // The primary's socket lives in its data directory, and the copy brings its lock file
        // along, which would stop this server from opening its own socket.
        let lock = self
            .data
            .join(format!(".s.PGSQL.{}.lock", primary.get_port()));
        match std::fs::remove_file(&lock) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err((self.fail)(format!("{}: {e}", lock.display()))),
        }
        Ok(())
    }

    fn is_running(&self) -> Result<bool, LocateError> {
        let d = self.data.to_string_lossy();
        Ok(self.run("pg_ctl", &["-D", &d, "status"])?.status.success())
    }

    /// Starts the server listening on its socket only; returns its port.
    fn start(&self, data: &Dir) -> Result<u16, LocateError> {
        let d = self.data.to_string_lossy();
        // pg_ctl hands these options to the server through a shell, hence the quoting;
        // `-h ''` is an empty listen_addresses: no TCP socket at all.
        let opts = format!(
            "-p {PORT} -h '' -k {} -c unix_socket_permissions=0700",
            shell_quote(&d)
        );
        let log = self.data.join("server.log");
        let out = self.run(
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
            let tail = data
                .read("server.log", Some(self.account.uid))
                .ok()
                .flatten()
                .unwrap_or_default();
            return Err((self.fail)(format!(
                "pg_ctl start failed: {}{}",
                String::from_utf8_lossy(&out.stderr),
                tail.lines().rev().take(5).collect::<Vec<_>>().join("\n")
            )));
        }
        Ok(PORT)
    }

    fn stop(&self) {
        let d = self.data.to_string_lossy();
        let _ = self.run("pg_ctl", &["-D", &d, "-m", "fast", "-w", "stop"]);
    }
}

/// A command from `bindir` run as the cluster's account, from inside its data directory (the
/// account may not be able to enter this process's working directory).
fn command(bindir: &Path, data: &Path, account: &Account, program: &str) -> Command {
    let mut cmd = Command::new(bindir.join(program));
    cmd.current_dir(data).env_remove("PGDATA");
    if account.switch {
        cmd.uid(account.uid.as_raw()).gid(account.gid.as_raw());
    }
    cmd
}

/// `s` as one word for a POSIX shell.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Stops the private cluster of `dir` (`<state>/postgres`), started by [`locate`],
/// [`recorded`] or [`start_private`].
pub fn stop_private(dir: &Path) {
    let (Some(bindir), Ok(account)) = (find_bindir(), cluster_account()) else {
        return;
    };
    let location = Dir::walk(dir, None)
        .and_then(|pg| pg.read("LOCATION", None))
        .ok()
        .flatten();
    let data = match location {
        Some(loc) => PathBuf::from(loc.trim()),
        None => std::path::absolute(dir.join("data")).unwrap_or_else(|_| dir.join("data")),
    };
    let d = data.to_string_lossy();
    let _ = command(&bindir, &data, &account, "pg_ctl")
        .args(["-D", &d, "-m", "fast", "-w", "stop"])
        .output();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_is_one_shell_word() {
        assert_eq!(shell_quote("/a b/c"), "'/a b/c'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }

    #[test]
    fn the_pid_file_tells_a_socket_only_server() {
        let dir = std::env::temp_dir();
        let d = dir.display();
        let socket_only =
            format!("42\n{d}\n1700000000\n5432\n{d}\n\n  5432001    163842\nready   \n");
        let pid = PidFile::parse(&socket_only).unwrap();
        assert_eq!(pid.port, 5432);
        assert!(pid.socket_only_in(&dir));
        assert!(!pid.socket_only_in(Path::new("/")));
        let on_tcp = format!("42\n{d}\n1700000000\n40123\n{d}\n127.0.0.1\n  1\nready   \n");
        let pid = PidFile::parse(&on_tcp).unwrap();
        assert_eq!(pid.port, 40123);
        assert!(!pid.socket_only_in(&dir));
    }
}
