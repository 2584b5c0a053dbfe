//! Whether a data directory can be used, checked without opening it (for `--check-config`).
//! L1: std only. Invariant: the check leaves nothing behind, opens no database and takes no
//! lock, so it also passes on a directory a running broker is using.

use std::fs::OpenOptions;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// Why `persistence.path` cannot be used.
#[derive(Debug, thiserror::Error)]
#[error(
    "data directory {path}: {problem}: {error}{}",
    crate::error::access_hint(error, path, "readable and writable")
)]
pub(crate) struct DataDirError {
    path: PathBuf,
    problem: String,
    error: io::Error,
}

/// The data directory must either exist and let this process create files in it, or not
/// exist yet with a parent directory that exists and lets this process create it (the broker
/// creates only the last component, never missing parents).
pub(crate) fn check(path: &Path) -> Result<(), DataDirError> {
    let fail = |problem: String, error: io::Error| DataDirError {
        path: path.to_owned(),
        problem,
        error,
    };
    match std::fs::metadata(path) {
        Ok(_) => probe(path).map_err(|e| fail("cannot create a file in it".into(), e)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let parent = match path.parent() {
                Some(p) if !p.as_os_str().is_empty() => p,
                _ => Path::new("."),
            };
            probe(parent).map_err(|e| {
                let problem = format!(
                    "does not exist and cannot be created in {}",
                    parent.display()
                );
                fail(problem, e)
            })
        }
        Err(e) => Err(fail("cannot be inspected".into(), e)),
    }
}

/// Creates and removes a uniquely named empty file in `dir`.
fn probe(dir: &Path) -> io::Result<()> {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let file = dir.join(format!(".brokerd-check-{}-{nanos}", std::process::id()));
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&file)?;
    std::fs::remove_file(&file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usable_and_unusable_paths() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(check(dir.path()).is_ok());
        assert!(check(&dir.path().join("new")).is_ok());
        assert!(
            !dir.path().join("new").exists(),
            "the check created the directory"
        );
        let file = dir.path().join("file");
        std::fs::write(&file, "x").expect("write");
        let e = check(&file).expect_err("a regular file");
        assert_eq!(e.error.kind(), io::ErrorKind::NotADirectory, "{e}");
        let e = check(&dir.path().join("missing/data")).expect_err("no parent");
        assert_eq!(e.error.kind(), io::ErrorKind::NotFound, "{e}");
        assert_eq!(
            std::fs::read_dir(dir.path()).expect("read_dir").count(),
            1,
            "the check left a file behind"
        );
    }
}
