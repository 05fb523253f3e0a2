//! Every file the agent writes goes through here: one atomic-write path
//! (temporary file created with its final mode, fsync, rename), the
//! installation of a whole registration with a single directory fsync, the
//! durable positioned write that the pending-identity journal uses, the
//! reading of what an earlier run stored, and the lock that keeps two
//! registrations apart. Profile-neutral: names and modes come from the
//! caller.

use crate::error::{Error, ErrorKind, Result, ResultExt};
use std::fs::{DirBuilder, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use zeroize::Zeroizing;

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
/// for a whole set of files. `room` zero bytes are allocated after the
/// contents (see [`write_atomic`]).
fn replace_file(dir: &Path, name: &str, contents: &[u8], mode: u32, room: u64) -> Result<()> {
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
        allocate_zeros(&file, contents.len() as u64, room)?;
        file.sync_all()?;
        std::fs::rename(&temp, &target)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&temp);
        return Err(e).with_kind_context(ErrorKind::Internal, io_error(&target, "write"));
    }
    Ok(())
}

/// Extends `file` (of `len` bytes) by `room` bytes that read as zeros and
/// are allocated on the disk: fallocate where the file system has it (no
/// data is written), else written zeros. Either way, later writes into the
/// room need no new space, so they succeed on a disk that filled up since.
fn allocate_zeros(file: &File, len: u64, room: u64) -> std::io::Result<()> {
    if room == 0 {
        return Ok(());
    }
    let (Ok(offset), Ok(room_len)) = (i64::try_from(len), i64::try_from(room)) else {
        return Err(std::io::Error::from(std::io::ErrorKind::InvalidInput));
    };
    match nix::fcntl::fallocate(file, nix::fcntl::FallocateFlags::empty(), offset, room_len) {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::EOPNOTSUPP | nix::errno::Errno::ENOSYS) => {
            let mut writer = file;
            std::io::copy(&mut std::io::repeat(0).take(room), &mut writer).map(|_| ())
        }
        Err(errno) => Err(errno.into()),
    }
}

/// Writes one file atomically and durably, followed in the file by `room`
/// zero bytes already allocated on the disk, for [`write_at_durable`] to
/// fill later.
pub fn write_atomic(dir: &Path, name: &str, contents: &[u8], mode: u32, room: u64) -> Result<()> {
    replace_file(dir, name, contents, mode, room)?;
    sync_dir(dir)
}

/// Writes `bytes` at `offset` of an existing file (into its allocated room
/// when there is enough) and makes them durable. A write cut short by power
/// loss is the reader's to detect.
pub fn write_at_durable(dir: &Path, name: &str, offset: u64, bytes: &[u8]) -> Result<()> {
    use std::os::unix::fs::FileExt;
    let path = dir.join(name);
    OpenOptions::new()
        .write(true)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(&path)
        .and_then(|file| {
            file.write_all_at(bytes, offset)?;
            file.sync_all()
        })
        .with_kind_context(ErrorKind::Internal, io_error(&path, "write to"))
}

/// The contents of `dir/name`, a file an earlier run stored; `None` only
/// when it does not exist. Any other failure (an I/O error, a symbolic
/// link) is an error: taking it for "nothing stored" would let a run make a
/// new identity over the one the device has.
pub fn read_stored(dir: &Path, name: &str) -> Result<Option<Zeroizing<Vec<u8>>>> {
    let path = dir.join(name);
    let opened = OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(&path);
    let mut file = match opened {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_kind_context(ErrorKind::Internal, io_error(&path, "open")),
    };
    let mut bytes = Zeroizing::new(Vec::new());
    file.read_to_end(&mut bytes)
        .with_kind_context(ErrorKind::Internal, io_error(&path, "read"))?;
    Ok(Some(bytes))
}

/// [`read_stored`] for a text file.
pub fn read_stored_text(dir: &Path, name: &str) -> Result<Option<Zeroizing<String>>> {
    let Some(mut bytes) = read_stored(dir, name)? else {
        return Ok(None);
    };
    match String::from_utf8(std::mem::take(&mut *bytes)) {
        Ok(text) => Ok(Some(Zeroizing::new(text))),
        Err(e) => {
            drop(Zeroizing::new(e.into_bytes()));
            Err(Error::internal(format!(
                "{} is not valid UTF-8",
                dir.join(name).display()
            )))
        }
    }
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
        replace_file(dir, file.name, file.contents, file.mode, 0)?;
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

/// The names among `candidates` that exist in `dir`. Only "not found" means
/// absent: a name that cannot be inspected (EIO, EACCES) is an error rather
/// than a registration taken for missing and then replaced.
pub fn present<'n>(dir: &Path, candidates: &[&'n str]) -> Result<Vec<&'n str>> {
    let mut found = Vec::new();
    for name in candidates {
        let path = dir.join(name);
        match path.symlink_metadata() {
            Ok(_) => found.push(*name),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(e).with_kind_context(ErrorKind::Internal, io_error(&path, "inspect"))
            }
        }
    }
    Ok(found)
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
        write_atomic(dir.path(), "secret", b"s", PRIVATE_MODE, 0).unwrap();
        write_atomic(dir.path(), "public", b"p", PUBLIC_MODE, 0).unwrap();
        write_atomic(dir.path(), "public", b"p2", PUBLIC_MODE, 0).unwrap();
        assert_eq!(mode_of(&dir.path().join("secret")), 0o600);
        assert_eq!(mode_of(&dir.path().join("public")), 0o644);
        assert_eq!(std::fs::read(dir.path().join("public")).unwrap(), b"p2");
        assert_eq!(names(dir.path()), ["public", "secret"]);
    }

    #[test]
    fn a_stale_temporary_file_does_not_block_a_write() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(".public.tmp"), b"left by a crash").unwrap();
        write_atomic(dir.path(), "public", b"p", PUBLIC_MODE, 0).unwrap();
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
        assert_eq!(present(dir.path(), &["a", "c"]).unwrap(), ["a"]);
    }

    #[test]
    fn room_reads_as_zeros_and_is_filled_in_place() {
        let dir = tempfile::tempdir().unwrap();
        assert!(write_at_durable(dir.path(), "journal", 0, b"x").is_err());
        assert!(read_stored(dir.path(), "journal").unwrap().is_none());
        write_atomic(dir.path(), "journal", b"a\n", PRIVATE_MODE, 8).unwrap();
        assert_eq!(
            read_stored(dir.path(), "journal")
                .unwrap()
                .unwrap()
                .as_slice(),
            b"a\n\0\0\0\0\0\0\0\0"
        );
        write_at_durable(dir.path(), "journal", 2, b"b\n").unwrap();
        assert_eq!(
            std::fs::read(dir.path().join("journal")).unwrap(),
            b"a\nb\n\0\0\0\0\0\0"
        );
        // Past the room the file grows.
        write_at_durable(dir.path(), "journal", 9, b"cde").unwrap();
        assert_eq!(
            std::fs::read(dir.path().join("journal")).unwrap(),
            b"a\nb\n\0\0\0\0\0cde"
        );
        assert_eq!(mode_of(&dir.path().join("journal")), 0o600);
        remove(dir.path(), "journal").unwrap();
        remove(dir.path(), "journal").unwrap();
        assert!(names(dir.path()).is_empty());
    }

    #[test]
    fn only_a_missing_file_reads_as_nothing_stored() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("elsewhere"), b"k").unwrap();
        std::os::unix::fs::symlink("elsewhere", dir.path().join("link")).unwrap();
        let err = read_stored(dir.path(), "link").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Internal);
        std::fs::create_dir(dir.path().join("not-a-file")).unwrap();
        let err = read_stored(dir.path(), "not-a-file").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Internal, "{err}");
        std::fs::write(dir.path().join("binary"), b"\xff").unwrap();
        assert!(read_stored_text(dir.path(), "binary").is_err());
        assert!(read_stored_text(dir.path(), "missing").unwrap().is_none());
    }

    #[test]
    fn a_name_that_cannot_be_inspected_is_an_error_not_absent() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("file"), b"").unwrap();
        // "file/x": ENOTDIR, which is neither "there" nor "not found".
        let err = present(dir.path(), &["file/x"]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Internal);
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
