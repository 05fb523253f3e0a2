//! Every file the agent writes goes through here: one atomic-write path
//! (temporary file created with its final mode, fsync, rename), the
//! installation of a whole registration with a single directory fsync, the
//! durable append that the pending-identity journal uses, and the lock that
//! keeps two registrations apart. Profile-neutral: names and modes come from
//! the caller.

use crate::error::{Error, ErrorKind, Result, ResultExt};
use std::fs::{DirBuilder, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

pub const PRIVATE_MODE: u32 = 0o600;
pub const PUBLIC_MODE: u32 = 0o644;
pub const STATE_DIR_MODE: u32 = 0o700;

fn io_error(path: &Path, what: &str) -> impl FnOnce() -> String {
    let path = path.display().to_string();
    let what = what.to_string();
    move || format!("cannot {what} {path}")
}

/// Removes a file; a missing one is fine. Whether there was one.
fn remove_if_present(path: &Path) -> std::io::Result<bool> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// fsync of a directory, so that the renames and removals in it survive
/// power loss.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_kind_context(ErrorKind::Internal, io_error(dir, "sync directory"))
}

/// Writes `dir/name` through a temporary file in the same directory, created
/// with its final `mode` (so a secret is never readable by others, even
/// briefly) and fsynced before it is renamed over the target. The rename is
/// durable only after the directory is synced, which the caller does once
/// for a whole set of files.
fn replace_file(dir: &Path, name: &str, contents: &[u8], mode: u32) -> Result<()> {
    let target = dir.join(name);
    // No pid in the name: an early-boot service gets the same pid after
    // every reboot, and the directory lock keeps writers apart anyway.
    let temp = dir.join(format!(".{name}.tmp"));
    let result = (|| -> std::io::Result<()> {
        remove_if_present(&temp)?;
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
    Ok(())
}

/// Writes one file atomically and durably.
pub fn write_atomic(dir: &Path, name: &str, contents: &[u8], mode: u32) -> Result<()> {
    replace_file(dir, name, contents, mode)?;
    sync_dir(dir)
}

/// Appends `bytes` to an existing private file and makes them durable. A
/// record cut short by power loss is the reader's to detect.
pub fn append_durable(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    let path = dir.join(name);
    OpenOptions::new()
        .append(true)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(&path)
        .and_then(|mut file| {
            file.write_all(bytes)?;
            file.sync_all()
        })
        .with_kind_context(ErrorKind::Internal, io_error(&path, "append to"))
}

/// One file of an installation.
pub struct Entry<'a> {
    pub name: &'a str,
    pub contents: &'a [u8],
    pub mode: u32,
}

/// Installs `files` in the given order and removes `obsolete`, then syncs the
/// directory once. Not atomic as a set: the caller keeps a durable record of
/// what to install (the pending-identity journal) until this returns, and
/// replays it after a crash; installing the same files again is harmless.
pub fn install(dir: &Path, files: &[Entry<'_>], obsolete: &[&str]) -> Result<()> {
    for file in files {
        replace_file(dir, file.name, file.contents, file.mode)?;
    }
    for name in obsolete {
        let path = dir.join(name);
        remove_if_present(&path)
            .with_kind_context(ErrorKind::Internal, io_error(&path, "remove"))?;
    }
    sync_dir(dir)
}

/// Removes a file durably; a missing file is fine.
pub fn remove(dir: &Path, name: &str) -> Result<()> {
    let path = dir.join(name);
    if remove_if_present(&path).with_kind_context(ErrorKind::Internal, io_error(&path, "remove"))? {
        sync_dir(dir)?;
    }
    Ok(())
}

/// Creates the state dir (0700) if needed and tightens a looser one.
pub fn prepare(dir: &Path) -> Result<()> {
    match std::fs::symlink_metadata(dir) {
        Ok(meta) if meta.is_dir() => {
            let mode = meta.permissions().mode() & 0o7777;
            if mode & 0o077 != 0 {
                tracing::warn!(
                    "{} had mode {mode:o}; tightening it to {STATE_DIR_MODE:o}",
                    dir.display()
                );
                std::fs::set_permissions(dir, std::fs::Permissions::from_mode(STATE_DIR_MODE))
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
            let existing = dir.ancestors().find(|a| a.exists()).map(Path::to_path_buf);
            DirBuilder::new()
                .recursive(true)
                .mode(STATE_DIR_MODE)
                .create(dir)
                .with_kind_context(ErrorKind::Config, io_error(dir, "create"))?;
            // A new directory survives power loss only once the directory
            // that holds its entry is synced: without this, a cut could take
            // the whole state dir, journal and all, though every file in it
            // was synced.
            for parent in dir.ancestors().skip(1) {
                sync_dir(parent)?;
                if Some(parent) == existing.as_deref() {
                    break;
                }
            }
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
            "{} is not writable ({e}); run as root or choose another directory",
            dir.display()
        ))
    })
}

/// Holds the state dir for one registration. The lock is an flock on the
/// directory itself, so it leaves no file behind and dies with the process.
/// It is released by closing the directory, never by an explicit unlock:
/// an unlock can fail (EIO), and nix's `Flock` panics when it does.
pub struct DirLock {
    _locked: File,
}

impl DirLock {
    pub fn acquire(dir: &Path) -> Result<DirLock> {
        let handle = File::open(dir).with_kind_context(ErrorKind::Config, io_error(dir, "open"))?;
        match handle.try_lock() {
            Ok(()) => Ok(DirLock { _locked: handle }),
            Err(std::fs::TryLockError::WouldBlock) => Err(Error::new(
                ErrorKind::Busy,
                format!(
                    "another lmp-device-register is registering this device (it holds {})",
                    dir.display()
                ),
            )),
            Err(std::fs::TryLockError::Error(e)) => {
                Err(e).with_kind_context(ErrorKind::Internal, io_error(dir, "lock"))
            }
        }
    }
}

/// The names among `candidates` that exist in `dir`.
pub fn present<'n>(dir: &Path, candidates: &[&'n str]) -> Vec<&'n str> {
    candidates
        .iter()
        .copied()
        .filter(|name| dir.join(name).symlink_metadata().is_ok())
        .collect()
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
    fn a_stale_temporary_file_does_not_block_a_write() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(".public.tmp"), b"left by a crash").unwrap();
        write_atomic(dir.path(), "public", b"p", PUBLIC_MODE).unwrap();
        assert_eq!(names(dir.path()), ["public"]);
    }

    #[test]
    fn install_writes_in_order_and_removes_obsolete_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("sql.db"), b"old").unwrap();
        install(
            dir.path(),
            &[
                Entry {
                    name: "a",
                    contents: b"1",
                    mode: PRIVATE_MODE,
                },
                Entry {
                    name: "b",
                    contents: b"2",
                    mode: PUBLIC_MODE,
                },
            ],
            &["sql.db", "never-there"],
        )
        .unwrap();
        assert_eq!(names(dir.path()), ["a", "b"]);
        assert_eq!(mode_of(&dir.path().join("a")), 0o600);
        assert_eq!(present(dir.path(), &["a", "c"]), ["a"]);
    }

    #[test]
    fn append_adds_to_an_existing_file_only() {
        let dir = tempfile::tempdir().unwrap();
        assert!(append_durable(dir.path(), "journal", b"x").is_err());
        write_atomic(dir.path(), "journal", b"a\n", PRIVATE_MODE).unwrap();
        append_durable(dir.path(), "journal", b"b\n").unwrap();
        assert_eq!(
            std::fs::read(dir.path().join("journal")).unwrap(),
            b"a\nb\n"
        );
        remove(dir.path(), "journal").unwrap();
        remove(dir.path(), "journal").unwrap();
        assert!(names(dir.path()).is_empty());
    }

    #[test]
    fn second_lock_on_the_same_dir_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let _held = DirLock::acquire(dir.path()).unwrap();
        let err = DirLock::acquire(dir.path()).err().unwrap();
        assert_eq!(err.kind(), ErrorKind::Busy);
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
