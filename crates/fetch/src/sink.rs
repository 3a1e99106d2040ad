//! The one place the image is written: every transport (HTTP, TFTP, a local file) writes
//! into a [`Sink`], which
//!
//! - refuses a size that cannot fit in the tmpfs or in RAM before a byte is written
//!   ([`Sink::expect_total`]);
//! - writes the file and hashes exactly the bytes written, printing progress as it goes;
//! - keeps its file, byte count and digest state after a failed attempt, so an HTTP download
//!   resumes where it stopped;
//! - at the end checks the length, makes the file durable and compares the digest, deleting
//!   the file on a mismatch so nothing mounts it ([`Sink::finish`]).

use crate::progress::Progress;
use crate::ram;
use sha2::{Digest, Sha256};
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Why one attempt failed; `Fatal` errors are not worth retrying (the image cannot fit).
#[derive(Debug)]
pub enum AttemptError {
    Retry(String),
    Fatal(String),
}

impl From<io::Error> for AttemptError {
    fn from(e: io::Error) -> Self {
        AttemptError::Retry(e.to_string())
    }
}

impl AttemptError {
    /// The message, whichever kind.
    pub fn message(self) -> String {
        match self {
            AttemptError::Retry(m) | AttemptError::Fatal(m) => m,
        }
    }
}

/// The image file being written (see the module docs).
pub struct Sink {
    file: File,
    out: PathBuf,
    /// None: no whole-file digest (an image mounted through dm-verity, which checks each
    /// block as it is read).
    hasher: Option<Sha256>,
    bytes: u64,
    total: Option<u64>,
    progress: Progress,
}

impl Sink {
    /// A new, empty image file at `out`, replacing whatever is there, hashed as it is
    /// written when `hashed`.
    pub fn create(out: &Path, hashed: bool) -> Result<Sink, AttemptError> {
        let _ = fs::remove_file(out);
        let file = File::create(out)
            .map_err(|e| AttemptError::Fatal(format!("cannot create {}: {e}", out.display())))?;
        Ok(Sink {
            file,
            out: out.to_path_buf(),
            hasher: hashed.then(Sha256::new),
            bytes: 0,
            total: None,
            progress: Progress::new(None, 0),
        })
    }

    /// Bytes written so far (by every attempt).
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The transport has learnt the image's size: refuse it when what is still to come cannot
    /// fit (a resumed download's bytes are already on the RAM disk), and show progress
    /// against it from here on.
    pub fn expect_total(&mut self, total: u64) -> Result<(), AttemptError> {
        let dir = self.out.parent().unwrap_or(Path::new("/"));
        let space = ram::tmpfs_free(dir).map_err(AttemptError::Retry)?;
        let available = ram::mem_available().map_err(AttemptError::Retry)?;
        ram::fits(total, self.bytes, space, available).map_err(AttemptError::Fatal)?;
        self.total = Some(total);
        self.progress = Progress::new(Some(total), self.bytes);
        Ok(())
    }

    /// A write failure as an attempt error: a full RAM disk is fatal, and says what to do.
    pub fn write_error(&self, e: io::Error) -> AttemptError {
        if e.raw_os_error() == Some(libc::ENOSPC) {
            AttemptError::Fatal(format!(
                "the RAM disk holding {} is full: raise diskless.size= on the kernel command line",
                self.out.display()
            ))
        } else {
            AttemptError::Retry(format!("writing {}: {e}", self.out.display()))
        }
    }

    /// Give up on this image: delete the file.
    pub fn discard(&self) {
        let _ = fs::remove_file(&self.out);
    }

    /// Fewer bytes than the announced size: the attempt failed, the sink may be resumed.
    pub fn check_complete(&self) -> Result<(), AttemptError> {
        match self.total {
            Some(total) if self.bytes != total => Err(AttemptError::Retry(format!(
                "short download: {} of {total} bytes",
                self.bytes
            ))),
            _ => Ok(()),
        }
    }

    /// Everything has arrived: check the length, sync, and compare the digest with
    /// `expected` (a mismatch deletes the file). Returns the image's size.
    /// With no `expected` digest (the sink was made unhashed) only the length is checked.
    pub fn finish(mut self, expected: Option<&[u8; 32]>) -> Result<u64, AttemptError> {
        self.check_complete()?;
        self.file.sync_all()?;
        self.progress.finish(self.bytes);
        match (self.hasher.take(), expected) {
            (Some(hasher), Some(expected)) => {
                verify(hasher.finalize().into(), expected, &self.out)?
            }
            (None, None) => {}
            _ => unreachable!("a sink is hashed exactly when a digest is expected"),
        }
        Ok(self.bytes)
    }
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        if let Some(hasher) = &mut self.hasher {
            hasher.update(&buf[..n]);
        }
        self.bytes += n as u64;
        self.progress.update(self.bytes);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Compare digests; on mismatch the file is deleted so nothing can mount it by mistake.
pub(crate) fn verify(
    actual: [u8; 32],
    expected: &[u8; 32],
    out: &Path,
) -> Result<(), AttemptError> {
    if &actual == expected {
        return Ok(());
    }
    let _ = fs::remove_file(out);
    Err(AttemptError::Retry(format!(
        "sha256 mismatch: expected {}, got {} (image corrupt or replaced on the server; not mounted)",
        hex(expected),
        hex(&actual)
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_matching_image_is_kept_a_mismatching_one_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("image");
        let mut sink = Sink::create(&out, true).unwrap();
        sink.write_all(b"pay").unwrap();
        sink.write_all(b"load").unwrap();
        assert_eq!(sink.bytes(), 7);
        let digest: [u8; 32] = Sha256::digest(b"payload").into();
        assert_eq!(sink.finish(Some(&digest)).unwrap(), 7);
        assert_eq!(fs::read(&out).unwrap(), b"payload");

        let mut sink = Sink::create(&out, true).unwrap();
        sink.write_all(b"payload").unwrap();
        let err = sink.finish(Some(&[0u8; 32])).unwrap_err().message();
        assert!(err.contains("sha256 mismatch"), "{err}");
        assert!(
            !out.exists(),
            "a corrupt image must not stay on the RAM disk"
        );
    }

    #[test]
    fn a_short_image_is_an_attempt_to_resume() {
        let dir = tempfile::tempdir().unwrap();
        let mut sink = Sink::create(&dir.path().join("image"), true).unwrap();
        sink.expect_total(10).unwrap();
        sink.write_all(b"12345").unwrap();
        let err = sink.check_complete().unwrap_err().message();
        assert_eq!(err, "short download: 5 of 10 bytes");
        sink.write_all(b"67890").unwrap();
        let digest: [u8; 32] = Sha256::digest(b"1234567890").into();
        assert_eq!(sink.finish(Some(&digest)).unwrap(), 10);
    }
}
