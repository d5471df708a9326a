//! Directories Coffer creates files in, reached and changed without following a symlink that
//! someone else could have planted.
//!
//! Under root, `serve --dev` creates, chowns and chmods directories for its private Postgres.
//! A path is only as safe as the directories it passes through: whoever can write to one of
//! them can replace what comes after it with a symlink to `/etc`. So paths are walked one
//! component at a time from `/` on open file descriptors, every change is made through a
//! descriptor (`mkdirat`, `openat` with `O_NOFOLLOW`, `fchown`, `fchmod`), and a directory is
//! only passed through or written in when nobody but root and this process's account can
//! change it. The one exception is a sticky directory such as `/tmp`: others can add entries
//! there but cannot rename or remove ours, so an entry in it is used only if it is a real
//! directory (or file) that belongs to us.

use std::fs::{File, Permissions};
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AT_FDCWD, AtFlags, OFlag, openat, renameat};
use nix::sys::stat::{Mode, SFlag, fstatat, mkdirat};
use nix::unistd::{Gid, Uid, geteuid};

#[derive(Debug, thiserror::Error)]
pub enum UnsafePath {
    #[error("{path} is a symbolic link; refusing to follow it")]
    Symlink { path: PathBuf },
    #[error("{path} is not a directory")]
    NotDirectory { path: PathBuf },
    #[error(
        "{path} can be changed by other users (owner uid {owner}, mode {mode:04o}); \
         refusing to create or change files under it"
    )]
    Shared {
        path: PathBuf,
        owner: u32,
        mode: u32,
    },
    #[error("{path} belongs to uid {owner}, expected uid {expected}; refusing to use it")]
    Owner {
        path: PathBuf,
        owner: u32,
        expected: u32,
    },
    #[error("{path} has mode {mode:04o}, expected {expected:04o}; refusing to use it")]
    Mode {
        path: PathBuf,
        mode: u32,
        expected: u32,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io(path: &Path, source: impl Into<std::io::Error>) -> UnsafePath {
    UnsafePath::Io {
        path: path.to_owned(),
        source: source.into(),
    }
}

/// Who may change a directory, as far as the rules above care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Writers {
    /// Root and this process's account only.
    Us,
    /// Anyone may add entries, but only their owner may rename or remove them (sticky bit).
    Sticky,
    /// Someone else can replace its entries.
    Others,
}

/// An open directory and the path it was reached by (for messages and for programs that take
/// a path, such as `pg_ctl`).
#[derive(Debug)]
pub struct Dir {
    file: File,
    path: PathBuf,
}

impl Dir {
    /// Opens the directory at `path`, walking from `/` one component at a time. With
    /// `create`, missing components are made with that mode. Refuses a path that passes
    /// through a directory someone else can change, and a symlink or a foreign entry met in a
    /// sticky directory. A symlink in a directory only we can change was put there by root or
    /// us, and is followed.
    pub fn walk(path: &Path, create: Option<u32>) -> Result<Self, UnsafePath> {
        let abs = std::path::absolute(path).map_err(|e| io(path, e))?;
        let root =
            open_dir_fd(AT_FDCWD, Path::new("/"), true).map_err(|e| io(Path::new("/"), e))?;
        let mut dir = Dir {
            file: File::from(root),
            path: PathBuf::from("/"),
        };
        for component in abs.components() {
            match component {
                Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
                Component::ParentDir => {
                    // Up, to a directory whose writers the next step (or the caller,
                    // before creating anything) checks like any other.
                    let fd = open_dir_fd(&dir.file, Path::new(".."), true)
                        .map_err(|e| io(&dir.path, e))?;
                    dir = Dir {
                        file: File::from(fd),
                        path: dir.path.join(".."),
                    };
                }
                Component::Normal(name) => {
                    dir = dir.step(Path::new(name), create)?;
                }
            }
        }
        Ok(dir)
    }

    /// The walk's step from this directory to its entry `name`.
    fn step(&self, name: &Path, create: Option<u32>) -> Result<Self, UnsafePath> {
        let writers = self.writers()?;
        if writers == Writers::Others {
            return Err(self.shared());
        }
        match self.subdir(name, create, None) {
            // Only root or we could have made this link, so where it points is our choice.
            Err(UnsafePath::Symlink { path }) if writers == Writers::Us => {
                let fd = open_dir_fd(&self.file, name, false).map_err(|e| io(&path, e))?;
                Ok(Dir {
                    file: File::from(fd),
                    path,
                })
            }
            other => other,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn metadata(&self) -> Result<std::fs::Metadata, UnsafePath> {
        self.file.metadata().map_err(|e| io(&self.path, e))
    }

    fn writers(&self) -> Result<Writers, UnsafePath> {
        let meta = self.metadata()?;
        let owner = meta.uid();
        let mode = meta.mode();
        let euid = geteuid().as_raw();
        // A user's own group is commonly writable (user private groups, umask 002), which is
        // no risk to that user; under root a writable group is someone else.
        let group_matters = euid == 0;
        let others_write = mode & 0o002 != 0 || (group_matters && mode & 0o020 != 0);
        Ok(if owner != 0 && owner != euid {
            Writers::Others
        } else if !others_write {
            Writers::Us
        } else if mode & 0o1000 != 0 {
            Writers::Sticky
        } else {
            Writers::Others
        })
    }

    fn shared(&self) -> UnsafePath {
        match self.metadata() {
            Ok(meta) => UnsafePath::Shared {
                path: self.path.clone(),
                owner: meta.uid(),
                mode: meta.mode() & 0o7777,
            },
            Err(e) => e,
        }
    }

    /// Fails unless files may be created in this directory: only root and we can change it,
    /// or it is sticky.
    pub fn check_writable_by_us_only(&self) -> Result<(), UnsafePath> {
        match self.writers()? {
            Writers::Others => Err(self.shared()),
            Writers::Us | Writers::Sticky => Ok(()),
        }
    }

    /// Opens the subdirectory `name` without following a symlink. With `create`, a missing one
    /// is made with that mode (exactly: the umask does not apply) and, with `owner`, given to
    /// that account. An existing one must belong to `owner` (by default this process's
    /// account, or root).
    pub fn subdir(
        &self,
        name: &Path,
        create: Option<u32>,
        owner: Option<(Uid, Gid)>,
    ) -> Result<Dir, UnsafePath> {
        let path = self.path.join(name);
        let created = match create {
            Some(mode) => {
                self.check_writable_by_us_only()?;
                match mkdirat(&self.file, name, Mode::from_bits_truncate(mode)) {
                    Ok(()) => Some(mode),
                    Err(Errno::EEXIST) => None,
                    Err(e) => return Err(io(&path, e)),
                }
            }
            None => None,
        };
        let fd = match open_dir_fd(&self.file, name, true) {
            Ok(fd) => fd,
            Err(Errno::ELOOP) => return Err(UnsafePath::Symlink { path }),
            Err(Errno::ENOTDIR) => return Err(self.not_a_directory(name, path)),
            Err(e) => return Err(io(&path, e)),
        };
        let dir = Dir {
            file: File::from(fd),
            path,
        };
        if let Some(mode) = created {
            if let Some((uid, gid)) = owner {
                std::os::unix::fs::fchown(&dir.file, Some(uid.as_raw()), Some(gid.as_raw()))
                    .map_err(|e| io(&dir.path, e))?;
            }
            dir.file
                .set_permissions(Permissions::from_mode(mode))
                .map_err(|e| io(&dir.path, e))?;
        }
        dir.check_owner(owner.map(|(uid, _)| uid))?;
        Ok(dir)
    }

    /// A symlink to a file also fails `O_DIRECTORY` with ENOTDIR; say which it is.
    fn not_a_directory(&self, name: &Path, path: PathBuf) -> UnsafePath {
        if self.is_symlink(name) {
            UnsafePath::Symlink { path }
        } else {
            UnsafePath::NotDirectory { path }
        }
    }

    fn is_symlink(&self, name: &Path) -> bool {
        fstatat(&self.file, name, AtFlags::AT_SYMLINK_NOFOLLOW)
            .is_ok_and(|st| SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFLNK)
    }

    /// Fails unless this directory belongs to `expected` (by default this process's account,
    /// or root).
    pub fn check_owner(&self, expected: Option<Uid>) -> Result<(), UnsafePath> {
        let owner = self.metadata()?.uid();
        let ok = match expected {
            Some(uid) => owner == uid.as_raw(),
            None => owner == 0 || owner == geteuid().as_raw(),
        };
        if ok {
            Ok(())
        } else {
            Err(UnsafePath::Owner {
                path: self.path.clone(),
                owner,
                expected: expected.unwrap_or_else(geteuid).as_raw(),
            })
        }
    }

    /// Fails unless this directory's permission bits are exactly `expected`.
    pub fn check_mode(&self, expected: u32) -> Result<(), UnsafePath> {
        let mode = self.metadata()?.mode() & 0o7777;
        if mode == expected {
            Ok(())
        } else {
            Err(UnsafePath::Mode {
                path: self.path.clone(),
                mode,
                expected,
            })
        }
    }

    /// Creates a directory with an unpredictable name, `prefix` then random characters, mode
    /// 0700, given to `owner`. It never reuses an existing entry, so nothing planted in
    /// advance can take its place.
    pub fn random_subdir(&self, prefix: &str, owner: (Uid, Gid)) -> Result<Dir, UnsafePath> {
        self.check_writable_by_us_only()?;
        for _ in 0..16 {
            // 16 characters of 32: 80 bits, beyond guessing.
            let mut bytes = [0u8; 16];
            getrandom::fill(&mut bytes).map_err(|e| io(&self.path, std::io::Error::other(e)))?;
            let suffix: String = bytes
                .iter()
                .map(|b| char::from(b"abcdefghijklmnopqrstuvwxyz234567"[usize::from(b & 31)]))
                .collect();
            let name = format!("{prefix}{suffix}");
            match mkdirat(&self.file, name.as_str(), Mode::from_bits_truncate(0o700)) {
                Ok(()) => return self.subdir_created(Path::new(&name), owner),
                Err(Errno::EEXIST) => continue,
                Err(e) => return Err(io(&self.path.join(&name), e)),
            }
        }
        Err(io(
            &self.path,
            std::io::Error::other("no free name for a new directory"),
        ))
    }

    fn subdir_created(&self, name: &Path, (uid, gid): (Uid, Gid)) -> Result<Dir, UnsafePath> {
        let path = self.path.join(name);
        let fd = open_dir_fd(&self.file, name, true).map_err(|e| io(&path, e))?;
        let file = File::from(fd);
        std::os::unix::fs::fchown(&file, Some(uid.as_raw()), Some(gid.as_raw()))
            .map_err(|e| io(&path, e))?;
        file.set_permissions(Permissions::from_mode(0o700))
            .map_err(|e| io(&path, e))?;
        let dir = Dir { file, path };
        dir.check_owner(Some(uid))?;
        Ok(dir)
    }

    /// Opens the regular file `name` in this directory without following a symlink, creating
    /// it with `mode` if `create`. It must belong to `owner` (by default this process's
    /// account, or root).
    pub fn open_file(
        &self,
        name: &str,
        write: bool,
        create: Option<u32>,
        owner: Option<Uid>,
    ) -> Result<File, UnsafePath> {
        let path = self.path.join(name);
        // O_NONBLOCK: a FIFO planted in the file's place must not hang the open.
        let mut flags = OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK;
        flags |= if write {
            OFlag::O_RDWR
        } else {
            OFlag::O_RDONLY
        };
        let mode = match create {
            Some(mode) => {
                self.check_writable_by_us_only()?;
                flags |= OFlag::O_CREAT;
                Mode::from_bits_truncate(mode)
            }
            None => Mode::empty(),
        };
        let file = match openat(&self.file, name, flags, mode) {
            Ok(fd) => File::from(fd),
            Err(Errno::ELOOP) => return Err(UnsafePath::Symlink { path }),
            Err(e) => return Err(io(&path, e)),
        };
        let meta = file.metadata().map_err(|e| io(&path, e))?;
        if !meta.is_file() {
            return Err(io(&path, std::io::Error::other("not a regular file")));
        }
        let euid = geteuid().as_raw();
        let owned = match owner {
            Some(uid) => meta.uid() == uid.as_raw(),
            None => meta.uid() == 0 || meta.uid() == euid,
        };
        if !owned {
            return Err(UnsafePath::Owner {
                path,
                owner: meta.uid(),
                expected: owner.map_or(euid, Uid::as_raw),
            });
        }
        if let Some(mode) = create {
            file.set_permissions(Permissions::from_mode(mode))
                .map_err(|e| io(&path, e))?;
        }
        Ok(file)
    }

    /// The contents of the file `name`, which must belong to `owner` (by default this
    /// process's account, or root), or `None` when there is none.
    pub fn read(&self, name: &str, owner: Option<Uid>) -> Result<Option<String>, UnsafePath> {
        let mut file = match self.open_file(name, false, None, owner) {
            Ok(file) => file,
            Err(UnsafePath::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        let mut text = String::new();
        file.read_to_string(&mut text)
            .map_err(|e| io(&self.path.join(name), e))?;
        Ok(Some(text))
    }

    /// Replaces the file `name` with `contents` (mode `mode`), through a temporary file and a
    /// rename, so a reader sees the old contents or the new, never a part.
    pub fn write(&self, name: &str, contents: &str, mode: u32) -> Result<(), UnsafePath> {
        let tmp = format!(".{name}.tmp");
        let mut file = self.open_file(&tmp, true, Some(mode), None)?;
        file.set_len(0).map_err(|e| io(&self.path.join(&tmp), e))?;
        file.write_all(contents.as_bytes())
            .map_err(|e| io(&self.path.join(&tmp), e))?;
        renameat(&self.file, tmp.as_str(), &self.file, name)
            .map_err(|e| io(&self.path.join(name), e))
    }

    /// Whether the entry `name` exists (a symlink counts; it is not followed).
    pub fn contains(&self, name: &str) -> bool {
        fstatat(&self.file, name, AtFlags::AT_SYMLINK_NOFOLLOW).is_ok()
    }
}

fn open_dir_fd(at: impl std::os::fd::AsFd, name: &Path, no_follow: bool) -> Result<OwnedFd, Errno> {
    let mut flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
    if no_follow {
        flags |= OFlag::O_NOFOLLOW;
    }
    match openat(&at, name, flags, Mode::empty()) {
        // A directory we may pass through but not list (mode 0711): a path descriptor is
        // enough to walk on and to stat. Only directories Coffer made are changed through
        // their descriptor, and those it can read.
        #[cfg(target_os = "linux")]
        Err(Errno::EACCES) => openat(&at, name, flags | OFlag::O_PATH, Mode::empty()),
        other => other,
    }
}
