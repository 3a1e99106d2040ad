//! One server per state directory. Two `diskless serve` on one state would each hand out
//! addresses from their own copy of `leases.json` and overwrite the other's records, and
//! SO_REUSEADDR lets the second bind ports 67 and 69 beside the first, so nothing else stops
//! it. The first holds an exclusive `flock` on `STATE/serve.lock` for as long as it runs (the
//! kernel lets go when the process ends, however it ends) and writes its PID in it; a second
//! stops at start and names that PID.

use anyhow::{bail, Context, Result};
use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

/// The lock file's name in the state directory.
pub const LOCK_FILE: &str = "serve.lock";

/// The lock, held until dropped (or the process ends).
#[derive(Debug)]
pub struct StateLock {
    _file: File,
}

/// Take the state directory `state` (created if missing) for this process, or say which
/// process has it.
pub fn lock(state: &Path) -> Result<StateLock> {
    std::fs::create_dir_all(state).with_context(|| format!("creating {}", state.display()))?;
    let path = state.join(LOCK_FILE);
    // Not through a symlink, and only a file of its own: started as root, the server must not
    // truncate a file some other name points at.
    let mut file = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(&path)
        .with_context(|| format!("opening the lock file {}", path.display()))?;
    let meta = file
        .metadata()
        .with_context(|| format!("{}", path.display()))?;
    if !meta.is_file() || meta.nlink() != 1 {
        bail!(
            "{} is not a file of its own ({} links): remove it and start again",
            path.display(),
            meta.nlink()
        );
    }
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let error = std::io::Error::last_os_error();
        if error.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(error).with_context(|| format!("locking {}", path.display()));
        }
        let mut text = String::new();
        let _ = file.read_to_string(&mut text);
        let holder = match text.trim().parse::<u32>() {
            Ok(pid) => format!("PID {pid}"),
            // It took the lock and has not written its PID yet.
            Err(_) => "a PID not written yet".to_string(),
        };
        bail!(
            "the state directory {} is in use by another diskless serve ({holder}, the holder \
             of {}): two servers on one state would hand out the same addresses; stop it \
             first, or give this one a state directory of its own (--state)",
            state.display(),
            path.display()
        );
    }
    file.set_len(0)
        .and_then(|()| file.rewind())
        .and_then(|()| writeln!(file, "{}", std::process::id()))
        .with_context(|| format!("writing this server's PID in {}", path.display()))?;
    Ok(StateLock { _file: file })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_names_the_first_holder_and_the_lock_ends_with_it() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let first = lock(&state).unwrap();
        let pid = std::process::id();
        assert_eq!(
            std::fs::read_to_string(state.join(LOCK_FILE)).unwrap(),
            format!("{pid}\n")
        );
        // flock locks belong to the open file: a second open, even in this process, is
        // refused as another server's would be.
        let err = format!("{:#}", lock(&state).unwrap_err());
        assert!(
            err.starts_with(&format!(
                "the state directory {} is in use by another diskless serve (PID {pid},",
                state.display()
            )),
            "{err}"
        );
        drop(first);
        let again = lock(&state).unwrap();
        drop(again);
    }

    #[test]
    fn a_linked_lock_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        std::fs::create_dir(&state).unwrap();
        let target = dir.path().join("precious");
        std::fs::write(&target, "keep me\n").unwrap();
        std::os::unix::fs::symlink(&target, state.join(LOCK_FILE)).unwrap();
        let err = format!("{:#}", lock(&state).unwrap_err());
        assert!(err.starts_with("opening the lock file"), "{err}");
        std::fs::remove_file(state.join(LOCK_FILE)).unwrap();
        std::fs::hard_link(&target, state.join(LOCK_FILE)).unwrap();
        let err = format!("{:#}", lock(&state).unwrap_err());
        assert!(err.contains("not a file of its own (2 links)"), "{err}");
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep me\n");
    }
}
