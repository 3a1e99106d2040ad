//! The one way diskless writes a state file (leases, the client record, installed boot
//! files): a temporary file in the same directory, fsync, rename over the target, fsync the
//! directory. A crash leaves the old file or the new one, whole, never a mix.
//!
//! It lives in this crate because the lease file is the lowest state file; the server and
//! the image store use it too.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

/// A state file that could not be written, with the step and the path.
#[derive(Debug, thiserror::Error)]
#[error("{op} {path}: {source}")]
pub struct WriteError {
    /// What was being done: creating, writing, syncing, renaming into place, ...
    pub op: &'static str,
    /// The file (the temporary one for the steps before the rename).
    pub path: PathBuf,
    /// Cause.
    pub source: std::io::Error,
}

/// Whether a failed save starts a failing spell (to log) or goes on with one (logged
/// already): a state file that cannot be written (a full disk, no descriptor left) is
/// reported once, and its recovery once, not at every try.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FailingSpell {
    failing: bool,
}

impl FailingSpell {
    /// A save failed: whether it is the first of a spell (log it).
    pub fn failed(&mut self) -> bool {
        !std::mem::replace(&mut self.failing, true)
    }

    /// A save succeeded: whether it ends a spell (log the recovery).
    pub fn succeeded(&mut self) -> bool {
        std::mem::replace(&mut self.failing, false)
    }

    /// Whether the last save failed.
    pub fn is_failing(&self) -> bool {
        self.failing
    }
}

/// Replace `path` with `bytes` atomically and durably (see the module docs).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), WriteError> {
    write_with_mode(path, bytes, 0o666)
}

/// [`write_atomic`] for a secret: the file is mode 0600 from its creation on.
pub fn write_atomic_private(path: &Path, bytes: &[u8]) -> Result<(), WriteError> {
    write_with_mode(path, bytes, 0o600)
}

/// The write, the new file created with `mode` (less the umask).
fn write_with_mode(path: &Path, bytes: &[u8], mode: u32) -> Result<(), WriteError> {
    use std::os::unix::fs::OpenOptionsExt;
    let io = |op, p: &Path| {
        let p = p.to_path_buf();
        move |source| WriteError {
            op,
            path: p,
            source,
        }
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
    let tmp = dir.join(format!(
        ".{}.tmp.{}",
        name.as_deref().unwrap_or("state"),
        std::process::id()
    ));
    let result = (|| {
        // A temporary file left by a crash would keep its own mode: start afresh.
        let _ = fs::remove_file(&tmp);
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
            .map_err(io("creating", &tmp))?;
        f.write_all(bytes).map_err(io("writing", &tmp))?;
        f.sync_all().map_err(io("syncing", &tmp))?;
        drop(f);
        fs::rename(&tmp, path).map_err(io("renaming into place", path))?;
        // Make the rename itself durable.
        fs::File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(io("syncing directory of", path))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_spell_is_reported_once_and_its_end_once() {
        let mut spell = FailingSpell::default();
        assert!(!spell.succeeded());
        assert!(spell.failed());
        assert!(!spell.failed());
        assert!(!spell.failed());
        assert!(spell.is_failing());
        assert!(spell.succeeded());
        assert!(!spell.succeeded());
        assert!(spell.failed(), "a new spell is reported again");
    }

    #[test]
    fn replaces_whole_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        write_atomic(&path, b"one").unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
        let err = write_atomic(&dir.path().join("no/such/dir/x"), b"").unwrap_err();
        assert_eq!(err.op, "creating", "{err}");
    }
}
