//! The development database: the private cluster listens on its socket only and refuses paths
//! another user could have planted, and the admin commands never pick a database silently.

use std::collections::HashSet;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use coffer::pg_local::{self, LocateError};
use sqlx::Connection;
use sqlx::postgres::PgConnectOptions;

use crate::binary::{BIN, TempDir, db_url};
use crate::helpers::{TestDb, skip_or_fail};

/// What a machine without Postgres binaries is told: the package that brings them.
const NO_POSTGRES: &str =
    "no Postgres binaries on this machine (apt-get install postgresql; .ci/run does)";

/// What a test that needs root is told when it is not.
const NOT_ROOT: &str = "not root: this test checks what coffer does when run as root";

/// Starts the private cluster of the state directory `state`; `None` where the machine has no
/// Postgres binaries and `COFFER_ALLOW_SKIP=1` allows that (else the test fails).
async fn start(state: &Path) -> Option<(PgConnectOptions, bool)> {
    let dir = state.join("postgres");
    match tokio::task::spawn_blocking(move || pg_local::start_private(&dir))
        .await
        .unwrap()
    {
        Ok(started) => Some(started),
        Err(LocateError::NoPostgres) => {
            skip_or_fail(NO_POSTGRES);
            None
        }
        Err(e) => panic!("{e}"),
    }
}

/// Starts the private cluster of `state` expecting a refusal; `None` where the machine has no
/// Postgres binaries and `COFFER_ALLOW_SKIP=1` allows that (else the test fails).
fn refused(state: &Path) -> Option<String> {
    match pg_local::start_private(&state.join("postgres")) {
        Ok(_) => {
            pg_local::stop_private(&state.join("postgres"));
            panic!("{} was accepted", state.display())
        }
        Err(LocateError::NoPostgres) => {
            skip_or_fail(NO_POSTGRES);
            None
        }
        Err(e) => Some(e.to_string()),
    }
}

/// Stops the private cluster of a state directory when the test ends, passing or not.
struct Stop(PathBuf);

impl Drop for Stop {
    fn drop(&mut self) {
        pg_local::stop_private(&self.0.join("postgres"));
    }
}

/// The TCP ports process `pid` listens on, from its descriptors and /proc/net/tcp{,6}.
fn tcp_ports_listened_on_by(pid: u32) -> Vec<u16> {
    let sockets: HashSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|fd| {
            let target = std::fs::read_link(fd.ok()?.path()).ok()?;
            let target = target.to_str()?;
            Some(
                target
                    .strip_prefix("socket:[")?
                    .strip_suffix(']')?
                    .to_owned(),
            )
        })
        .collect();
    let mut ports = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // local_address is ADDR:PORT in hex; state 0A is LISTEN; field 9 is the inode.
            if f.len() > 9 && f[3] == "0A" && sockets.contains(f[9]) {
                let port = f[1].rsplit(':').next().unwrap();
                ports.push(u16::from_str_radix(port, 16).unwrap());
            }
        }
    }
    ports
}

#[tokio::test]
async fn the_private_cluster_listens_on_its_socket_only() {
    // The check below can see a listener: this process's own.
    let own = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let own_port = own.local_addr().unwrap().port();
    assert!(tcp_ports_listened_on_by(std::process::id()).contains(&own_port));

    let state = TempDir::new();
    let Some((options, started)) = start(&state.0).await else {
        return;
    };
    let _stop = Stop(state.0.clone());
    assert!(started);
    let data = options.get_socket().expect("reached over a socket").clone();

    let mut conn = sqlx::PgConnection::connect_with(&options).await.unwrap();
    let (listen, server_addr): (String, Option<String>) =
        sqlx::query_as("SELECT current_setting('listen_addresses'), inet_server_addr()::text")
            .fetch_one(&mut conn)
            .await
            .unwrap();
    assert_eq!(listen, "", "no TCP listen address");
    assert_eq!(server_addr, None, "connected over the Unix socket");
    conn.close().await.unwrap();

    let pid_file = std::fs::read_to_string(data.join("postmaster.pid")).unwrap();
    let postmaster: u32 = pid_file.lines().next().unwrap().trim().parse().unwrap();
    assert_eq!(
        tcp_ports_listened_on_by(postmaster),
        Vec::<u16>::new(),
        "the cluster listens on no TCP port"
    );
    // Only its account (and root) can reach the socket.
    let meta = std::fs::symlink_metadata(&data).unwrap();
    assert!(meta.is_dir());
    assert_eq!(meta.mode() & 0o7777, 0o700);
    assert!(data.join(".s.PGSQL.5432").exists());
}

/// A directory that stands for something a planted symlink points at; returns its owner and
/// mode.
fn victim(path: &Path) -> (u32, u32) {
    std::fs::create_dir(path).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(path.join("precious"), "keep").unwrap();
    owner_and_mode(path)
}

fn owner_and_mode(path: &Path) -> (u32, u32) {
    let meta = std::fs::metadata(path).unwrap();
    (meta.uid(), meta.mode() & 0o7777)
}

fn entries(path: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(path)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn a_symlink_planted_where_a_directory_goes_is_refused_and_nothing_changes_through_it() {
    let scratch = TempDir::new();
    let target = scratch.0.join("victim");
    let before = victim(&target);

    // Where the data directory goes.
    let state = scratch.0.join("data-link");
    std::fs::create_dir_all(state.join("postgres")).unwrap();
    symlink(&target, state.join("postgres/data")).unwrap();
    let Some(error) = refused(&state) else {
        return;
    };
    assert!(error.contains("symbolic link"), "{error}");
    assert_eq!(owner_and_mode(&target), before, "not chowned or chmodded");
    assert_eq!(entries(&target), ["precious"]);

    // Where the cluster's own directory goes.
    let state = scratch.0.join("dir-link");
    std::fs::create_dir(&state).unwrap();
    symlink(&target, state.join("postgres")).unwrap();
    let error = refused(&state).unwrap();
    assert!(error.contains("symbolic link"), "{error}");
    assert_eq!(owner_and_mode(&target), before);
    assert_eq!(entries(&target), ["precious"], "no lock or data made in it");

    // What LOCATION records.
    let state = scratch.0.join("location-link");
    std::fs::create_dir_all(state.join("postgres")).unwrap();
    let link = scratch.0.join("link");
    symlink(&target, &link).unwrap();
    std::fs::write(
        state.join("postgres/LOCATION"),
        format!("{}\n", link.display()),
    )
    .unwrap();
    let error = refused(&state).unwrap();
    assert!(error.contains("symbolic link"), "{error}");
    assert_eq!(owner_and_mode(&target), before);
    assert_eq!(entries(&target), ["precious"]);
}

#[test]
fn a_directory_other_users_can_change_is_refused() {
    let scratch = TempDir::new();
    let state = scratch.0.join("state");
    std::fs::create_dir(&state).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o777)).unwrap();
    let Some(error) = refused(&state) else {
        return;
    };
    assert!(error.contains("can be changed by other users"), "{error}");
    assert_eq!(entries(&state), Vec::<String>::new(), "nothing made in it");

    if !nix::unistd::geteuid().is_root() {
        skip_or_fail(NOT_ROOT);
        return;
    }
    // Under root, a directory of another user's is theirs to fill with symlinks.
    let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::chown(&state, Some(nobody.uid.as_raw()), None).unwrap();
    let error = refused(&state).unwrap();
    assert!(error.contains("belongs to uid 65534"), "{error}");
    assert_eq!(entries(&state), Vec::<String>::new());
}

#[tokio::test]
async fn under_root_an_unreachable_checkout_gets_a_fresh_random_directory() {
    if !nix::unistd::geteuid().is_root() {
        skip_or_fail(NOT_ROOT);
        return;
    }
    let scratch = TempDir::new();
    // The cluster's account cannot pass through a 0700 directory of root's.
    std::fs::set_permissions(&scratch.0, std::fs::Permissions::from_mode(0o700)).unwrap();
    let state = scratch.0.join("state");
    let Some((options, started)) = start(&state).await else {
        return;
    };
    let stop = Stop(state.clone());
    assert!(started);
    let recorded = std::fs::read_to_string(state.join("postgres/LOCATION")).unwrap();
    let data = PathBuf::from(recorded.trim());
    // Declared after the directory's removal, so the cluster stops before it goes.
    let _remove = RemoveDir(data.clone());
    let _stop = stop;

    assert_eq!(data.parent(), Some(Path::new("/var/tmp")));
    let name = data.file_name().unwrap().to_string_lossy().into_owned();
    let random = name
        .strip_prefix("coffer-postgres-")
        .expect("a coffer name");
    assert!(random.len() >= 16, "{name} is hard to guess");
    let meta = std::fs::symlink_metadata(&data).unwrap();
    assert!(meta.is_dir(), "a real directory");
    let account = ["postgres", "nobody"]
        .into_iter()
        .find_map(|n| nix::unistd::User::from_name(n).unwrap())
        .unwrap();
    assert_eq!(
        meta.uid(),
        account.uid.as_raw(),
        "owned by the cluster's account"
    );
    assert_eq!(meta.mode() & 0o7777, 0o700);
    assert_eq!(options.get_socket(), Some(&data));
    let mut conn = sqlx::PgConnection::connect_with(&options).await.unwrap();
    let one: i32 = sqlx::query_scalar("SELECT 1")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(one, 1);
    conn.close().await.unwrap();

    // Reused, not made again.
    let (again, started) = start(&state).await.unwrap();
    assert!(!started);
    assert_eq!(again.get_socket(), Some(&data));

    // A recorded directory that is not the account's is refused.
    pg_local::stop_private(&state.join("postgres"));
    std::os::unix::fs::chown(&data, Some(0), None).unwrap();
    let refusal = tokio::task::spawn_blocking(move || refused(&state).unwrap())
        .await
        .unwrap();
    assert!(refusal.contains("belongs to uid 0"), "{refusal}");
}

struct RemoveDir(PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `coffer` with no DATABASE_URL (unless `url`) and the state directory `state`.
fn coffer(state: &Path, args: &[&str], url: Option<&str>) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env_remove("DATABASE_URL")
        .env_remove("COFFER_DEV")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env("COFFER_STATE_DIR", state);
    if let Some(url) = url {
        cmd.env("DATABASE_URL", url);
    }
    cmd.output().expect("running coffer")
}

#[tokio::test]
async fn admin_commands_name_their_database_and_pick_none_silently() {
    let db = TestDb::new().await;
    let state = TempDir::new();
    for args in [
        &["tenant", "list"][..],
        &["key", "list"],
        &["migrate"],
        &["bench", "customers"],
    ] {
        let out = coffer(&state.0, args, None);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}: {stderr}");
        assert!(
            stderr.contains("no database given")
                && stderr.contains("DATABASE_URL")
                && stderr.contains("--dev"),
            "{args:?}: {stderr}"
        );
    }
    assert_eq!(
        entries(&state.0),
        Vec::<String>::new(),
        "no cluster made or started"
    );

    // --dev finds one as `serve --dev` does, and says which.
    let out = coffer(
        &state.0,
        &["--dev", "--database-name", &db.name, "tenant", "list"],
        None,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("using database {} on ", db.name)),
        "{stderr}"
    );
    pg_local::stop_private(&state.0.join("postgres"));

    // A URL is named without its password.
    let url = db_url(&db);
    let (url, password) = match std::env::var("DATABASE_URL") {
        Ok(given) if !given.is_empty() => (url, None),
        // The test servers trust their clients, so the password is carried but never asked for.
        _ => (
            url.replacen("postgres://postgres@", "postgres://postgres:n0t-shown@", 1),
            Some("n0t-shown"),
        ),
    };
    let out = coffer(&state.0, &["key", "list"], Some(&url));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("using database {} on ", db.name))
            && stderr.contains("(from DATABASE_URL)"),
        "{stderr}"
    );
    if let Some(password) = password {
        assert!(url.contains(password));
        assert!(!stderr.contains(password), "{stderr}");
    }
}

#[tokio::test]
async fn admin_commands_use_the_private_cluster_the_state_directory_records() {
    let state = TempDir::new();
    let Some((options, _)) = start(&state.0).await else {
        return;
    };
    let _stop = Stop(state.0.clone());
    let data = options.get_socket().unwrap().clone();

    let out = coffer(&state.0, &["tenant", "list"], None);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let expected = format!(
        "using database coffer on the private cluster in {}",
        data.display()
    );
    assert!(stderr.contains(&expected), "{stderr}");
    assert!(stderr.contains("already running"), "{stderr}");

    // Stopped, it is started for the command and stopped after it.
    pg_local::stop_private(&state.0.join("postgres"));
    let out = coffer(&state.0, &["tenant", "create", "acme"], None);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains(&expected), "{stderr}");
    assert!(stderr.contains("started for this command"), "{stderr}");
    assert!(
        !data.join("postmaster.pid").exists(),
        "stopped when the command ended"
    );
}
