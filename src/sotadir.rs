//! The sota directory: one atomic-write helper used for every file, a
//! journaled commit so that the set of registration files appears as a whole
//! or not at all, and the locks that keep two registrations apart.

use crate::error::{Error, ErrorKind, Result, ResultExt};
use nix::fcntl::{Flock, FlockArg};
use std::fs::{DirBuilder, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

pub const PRIVATE_MODE: u32 = 0o600;
pub const PUBLIC_MODE: u32 = 0o644;
pub const SOTA_DIR_MODE: u32 = 0o700;

/// Files whose presence means "this device is registered" (as the C++ tool
/// decides it): aktualizr-lite creates `sql.db` on its first run.
pub const REGISTERED_MARKERS: [&str; 2] = ["sql.db", "client.pem"];
pub const PRIVATE_KEY: &str = "pkey.pem";
const STAGING_DIR: &str = ".lmp-device-register.staging";
const COMMIT_MANIFEST: &str = "COMMIT";

fn io_error(path: &Path, what: &str) -> impl FnOnce() -> String {
    let path = path.display().to_string();
    let what = what.to_string();
    move || format!("cannot {what} {path}")
}

/// fsync of a directory, so that a rename in it survives power loss.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_kind_context(ErrorKind::Internal, io_error(dir, "sync directory"))
}

/// Writes `contents` to `dir/name` atomically: a temporary file in the same
/// directory, created with its final `mode` (so a secret is never readable by
/// others, even briefly), fsynced, renamed over the target, directory fsynced.
pub fn write_atomic(dir: &Path, name: &str, contents: &[u8], mode: u32) -> Result<()> {
    let target = dir.join(name);
    let temp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| -> std::io::Result<()> {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&temp)?;
        // The umask may have narrowed `mode`; restoring a public file's 0644
        // before any byte is written never exposes anything.
        file.set_permissions(std::fs::Permissions::from_mode(mode))?;
        file.write_all(contents)?;
        file.sync_all()?;
        std::fs::rename(&temp, &target)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&temp);
        return Err(e).with_kind_context(ErrorKind::Internal, io_error(&target, "write"));
    }
    sync_dir(dir)
}

/// Creates the sota dir (0700) if needed and tightens a looser one.
pub fn prepare(dir: &Path) -> Result<()> {
    match std::fs::symlink_metadata(dir) {
        Ok(meta) if meta.is_dir() => {
            let mode = meta.permissions().mode() & 0o7777;
            if mode & 0o077 != 0 {
                tracing::warn!(
                    "{} had mode {mode:o}; tightening it to {SOTA_DIR_MODE:o}",
                    dir.display()
                );
                std::fs::set_permissions(dir, std::fs::Permissions::from_mode(SOTA_DIR_MODE))
                    .with_kind_context(ErrorKind::Config, io_error(dir, "change the mode of"))?;
            }
        }
        Ok(_) => {
            return Err(Error::config(format!(
                "{} exists and is not a directory",
                dir.display()
            )))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            DirBuilder::new()
                .recursive(true)
                .mode(SOTA_DIR_MODE)
                .create(dir)
                .with_kind_context(ErrorKind::Config, io_error(dir, "create"))?;
        }
        Err(e) => {
            return Err(e).with_kind_context(ErrorKind::Config, io_error(dir, "inspect"));
        }
    }
    nix::unistd::access(
        dir,
        nix::unistd::AccessFlags::W_OK | nix::unistd::AccessFlags::X_OK,
    )
    .map_err(|e| {
        Error::config(format!(
            "{} is not writable ({e}); run as root or pass --sota-dir",
            dir.display()
        ))
    })
}

/// Holds the sota dir for one registration. The lock is an flock on the
/// directory itself, so it leaves no file behind and dies with the process.
pub struct DirLock {
    _lock: Flock<File>,
}

impl DirLock {
    pub fn acquire(dir: &Path) -> Result<DirLock> {
        let handle = File::open(dir).with_kind_context(ErrorKind::Config, io_error(dir, "open"))?;
        let lock = Flock::lock(handle, FlockArg::LockExclusiveNonblock).map_err(|(_, errno)| {
            if errno == nix::errno::Errno::EWOULDBLOCK {
                Error::new(
                    ErrorKind::Busy,
                    format!(
                        "another lmp-device-register is registering this device (it holds {})",
                        dir.display()
                    ),
                )
            } else {
                Error::new(
                    ErrorKind::Internal,
                    format!("cannot lock {}: {errno}", dir.display()),
                )
            }
        })?;
        Ok(DirLock { _lock: lock })
    }
}

/// aktualizr-lite holds an exclusive flock on its lock file while it runs;
/// a shared, non-blocking flock fails exactly then.
pub fn ensure_aklite_not_running(lock_path: &Path) -> Result<()> {
    let file = match File::open(lock_path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            return Err(e).with_kind_context(ErrorKind::Internal, io_error(lock_path, "open"))
        }
    };
    match Flock::lock(file, FlockArg::LockSharedNonblock) {
        Ok(_released_on_drop) => Ok(()),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => Err(Error::new(
            ErrorKind::Busy,
            format!(
                "aktualizr-lite is running (it holds {}); stop it before registering",
                lock_path.display()
            ),
        )),
        Err((_, errno)) => Err(Error::new(
            ErrorKind::Internal,
            format!("cannot test {}: {errno}", lock_path.display()),
        )),
    }
}

/// The marker files present in the sota dir.
pub fn registration_markers(dir: &Path) -> Vec<&'static str> {
    REGISTERED_MARKERS
        .into_iter()
        .filter(|name| dir.join(name).symlink_metadata().is_ok())
        .collect()
}

/// One file of a commit.
pub struct StagedFile<'a> {
    pub name: &'a str,
    pub contents: &'a [u8],
    pub mode: u32,
}

/// Installs `files` (in the given order) and removes `obsolete`, as one unit:
/// everything is first written and fsynced into a staging directory with a
/// manifest written last; the renames that follow are replayed by
/// [`recover`] if the run dies half-way.
pub fn commit(dir: &Path, files: &[StagedFile<'_>], obsolete: &[&str]) -> Result<()> {
    let staging = dir.join(STAGING_DIR);
    discard_staging(&staging)?;
    DirBuilder::new()
        .mode(SOTA_DIR_MODE)
        .create(&staging)
        .with_kind_context(ErrorKind::Internal, io_error(&staging, "create"))?;
    let staged = (|| -> Result<()> {
        for file in files {
            write_atomic(&staging, file.name, file.contents, file.mode)?;
        }
        let mut manifest = String::new();
        for file in files {
            manifest.push_str("install ");
            manifest.push_str(file.name);
            manifest.push('\n');
        }
        for name in obsolete {
            manifest.push_str("remove ");
            manifest.push_str(name);
            manifest.push('\n');
        }
        write_atomic(&staging, COMMIT_MANIFEST, manifest.as_bytes(), PRIVATE_MODE)
    })();
    if let Err(e) = staged {
        let _ = discard_staging(&staging);
        return Err(e);
    }
    sync_dir(dir)?;
    apply_staging(dir, &staging)
}

fn discard_staging(staging: &Path) -> Result<()> {
    match std::fs::remove_dir_all(staging) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_kind_context(ErrorKind::Internal, io_error(staging, "remove")),
    }
}

fn apply_staging(dir: &Path, staging: &Path) -> Result<()> {
    let manifest = std::fs::read_to_string(staging.join(COMMIT_MANIFEST)).with_kind_context(
        ErrorKind::Internal,
        io_error(staging, "read the manifest in"),
    )?;
    for line in manifest.lines() {
        let (action, name) = line
            .split_once(' ')
            .filter(|(_, name)| !name.contains('/') && !matches!(*name, "" | "." | ".."))
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::Internal,
                    format!("corrupt manifest in {}: {line:?}", staging.display()),
                )
            })?;
        let target = dir.join(name);
        let outcome = match action {
            "install" => match std::fs::rename(staging.join(name), &target) {
                // Already moved by an earlier, interrupted commit.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                other => other,
            },
            "remove" => match std::fs::remove_file(&target) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                other => other,
            },
            _ => {
                return Err(Error::new(
                    ErrorKind::Internal,
                    format!("corrupt manifest in {}: {line:?}", staging.display()),
                ))
            }
        };
        outcome.with_kind_context(ErrorKind::Internal, io_error(&target, action))?;
    }
    sync_dir(dir)?;
    discard_staging(staging)?;
    sync_dir(dir)
}

/// Finishes a commit that was interrupted after its manifest was written, or
/// throws away one that was interrupted before. Returns whether a commit was
/// completed.
pub fn recover(dir: &Path) -> Result<bool> {
    let staging = dir.join(STAGING_DIR);
    if !staging.exists() {
        return Ok(false);
    }
    if staging.join(COMMIT_MANIFEST).exists() {
        tracing::warn!("completing a registration commit that was interrupted");
        apply_staging(dir, &staging)?;
        Ok(true)
    } else {
        tracing::warn!("discarding an incomplete registration commit");
        discard_staging(&staging)?;
        sync_dir(dir)?;
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode_of(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn atomic_write_sets_the_mode_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        write_atomic(dir.path(), "secret", b"s", PRIVATE_MODE).unwrap();
        write_atomic(dir.path(), "public", b"p", PUBLIC_MODE).unwrap();
        write_atomic(dir.path(), "public", b"p2", PUBLIC_MODE).unwrap();
        assert_eq!(mode_of(&dir.path().join("secret")), 0o600);
        assert_eq!(mode_of(&dir.path().join("public")), 0o644);
        assert_eq!(std::fs::read(dir.path().join("public")).unwrap(), b"p2");
        assert_eq!(names(dir.path()), ["public", "secret"]);
    }

    #[test]
    fn commit_installs_in_order_and_removes_obsolete_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("sql.db"), b"old").unwrap();
        commit(
            dir.path(),
            &[
                StagedFile {
                    name: "a",
                    contents: b"1",
                    mode: PRIVATE_MODE,
                },
                StagedFile {
                    name: "b",
                    contents: b"2",
                    mode: PUBLIC_MODE,
                },
            ],
            &["sql.db"],
        )
        .unwrap();
        assert_eq!(names(dir.path()), ["a", "b"]);
        assert_eq!(mode_of(&dir.path().join("a")), 0o600);
    }

    #[test]
    fn recover_replays_a_manifested_commit_and_drops_an_unfinished_one() {
        let dir = tempfile::tempdir().unwrap();
        let staging = dir.path().join(STAGING_DIR);
        std::fs::create_dir(&staging).unwrap();
        std::fs::write(staging.join("a"), b"1").unwrap();
        assert!(!recover(dir.path()).unwrap());
        assert!(names(dir.path()).is_empty());

        std::fs::create_dir(&staging).unwrap();
        std::fs::write(staging.join("b"), b"2").unwrap();
        // "a" was already moved before the interruption.
        std::fs::write(dir.path().join("a"), b"1").unwrap();
        std::fs::write(staging.join(COMMIT_MANIFEST), "install a\ninstall b\n").unwrap();
        assert!(recover(dir.path()).unwrap());
        assert_eq!(names(dir.path()), ["a", "b"]);
    }

    #[test]
    fn second_lock_on_the_same_dir_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let _held = DirLock::acquire(dir.path()).unwrap();
        let err = DirLock::acquire(dir.path()).err().unwrap();
        assert_eq!(err.kind(), ErrorKind::Busy);
    }

    #[test]
    fn aklite_lock_held_exclusively_means_busy() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("aklite.lock");
        ensure_aklite_not_running(&path).unwrap();
        let held = Flock::lock(
            File::create(&path).unwrap(),
            FlockArg::LockExclusiveNonblock,
        )
        .unwrap();
        assert_eq!(
            ensure_aklite_not_running(&path).unwrap_err().kind(),
            ErrorKind::Busy
        );
        drop(held);
        ensure_aklite_not_running(&path).unwrap();
    }

    #[test]
    fn prepare_creates_private_dir_and_tightens_loose_one() {
        let dir = tempfile::tempdir().unwrap();
        let sota = dir.path().join("var/sota");
        prepare(&sota).unwrap();
        assert_eq!(mode_of(&sota), 0o700);
        std::fs::set_permissions(&sota, std::fs::Permissions::from_mode(0o755)).unwrap();
        prepare(&sota).unwrap();
        assert_eq!(mode_of(&sota), 0o700);
    }
}
