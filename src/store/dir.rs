//! The data directory on the file system: creating it (never its parents), the exclusive lock
//! that keeps a second broker out, and the free space left on its file system.
//! L1: std and rustix only. Invariant: nothing here renames or deletes anything; every failure
//! is an error carrying the OS error, never a reason to treat the directory as corrupt.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::path::{Path, PathBuf};

use super::StoreError;

/// The lock file inside the data directory; it holds the pid of the broker that owns it.
pub(crate) const LOCK_FILE: &str = "brokerd.lock";

/// An exclusive `flock` on the data directory's lock file, held while the broker runs. The
/// kernel releases it when the process ends, however it ends (kill -9 included).
#[derive(Debug)]
pub(crate) struct DirLock {
    _file: File,
}

fn dir_error(path: &Path, error: io::Error) -> StoreError {
    StoreError::Dir {
        path: path.to_owned(),
        error,
    }
}

/// Makes sure `path` is a directory: an existing one is used as it is; a missing one is
/// created, but not its parents (a missing parent is often a mount that is not there, and a
/// broker that created it would start empty on the wrong disk).
pub(crate) fn prepare(path: &Path) -> Result<(), StoreError> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(StoreError::NotADirectory {
            path: path.to_owned(),
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            std::fs::create_dir(path).map_err(|e| dir_error(path, e))
        }
        Err(e) => Err(dir_error(path, e)),
    }
}

/// Takes the exclusive lock of the data directory and writes our pid into the lock file.
/// Another process holding it is an error naming that process's pid.
pub(crate) fn lock(path: &Path) -> Result<DirLock, StoreError> {
    let lock_path = path.join(LOCK_FILE);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock_path)
        .map_err(|e| dir_error(&lock_path, e))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut text = String::new();
            let _ = file.read_to_string(&mut text);
            return Err(StoreError::Locked {
                path: path.to_owned(),
                pid: text.trim().parse().ok(),
            });
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(dir_error(&lock_path, e)),
    }
    let write_pid = |file: &mut File| -> io::Result<()> {
        file.set_len(0)?;
        file.rewind()?;
        writeln!(file, "{}", std::process::id())
    };
    write_pid(&mut file).map_err(|e| dir_error(&lock_path, e))?;
    Ok(DirLock { _file: file })
}

/// Bytes an unprivileged process may still write on the file system holding `path`.
pub(crate) fn free_bytes(path: &Path) -> io::Result<u64> {
    let s = rustix::fs::statvfs(path)?;
    Ok(s.f_bavail.saturating_mul(s.f_frsize))
}

/// `path` with `suffix` appended to its last component (for the corrupt-directory rename).
pub(crate) fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.to_owned().into_os_string();
    s.push(suffix);
    PathBuf::from(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A missing data directory is created, but never its missing parent.
    #[test]
    fn prepare_creates_the_directory_but_not_its_parents() {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        prepare(&data).unwrap();
        assert!(data.is_dir());
        prepare(&data).unwrap();
        let deep = tmp.path().join("missing-mount").join("data");
        assert!(matches!(prepare(&deep), Err(StoreError::Dir { .. })));
        assert!(!tmp.path().join("missing-mount").exists());
        let file = tmp.path().join("file");
        std::fs::write(&file, b"x").unwrap();
        assert!(matches!(
            prepare(&file),
            Err(StoreError::NotADirectory { .. })
        ));
    }

    /// A second lock on the same directory fails and names the holder's pid; dropping the
    /// first releases it.
    #[test]
    fn second_lock_names_the_holder() {
        let tmp = tempfile::tempdir().unwrap();
        let first = lock(tmp.path()).unwrap();
        match lock(tmp.path()) {
            Err(StoreError::Locked { pid, .. }) => assert_eq!(pid, Some(std::process::id())),
            other => panic!("expected Locked, got {other:?}"),
        }
        drop(first);
        let _again = lock(tmp.path()).unwrap();
    }

    #[test]
    fn free_bytes_reads_the_file_system() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(free_bytes(tmp.path()).unwrap() > 0);
    }
}
