//! Confining requests to the served directory, and reading files block by block.
//!
//! [`sanitize`] turns a requested name into a path relative to the root or refuses it: NUL
//! bytes and `..` components are errors, backslashes count as separators (PXE ROMs and
//! Windows-made configs send `boot\x86\pxeboot.n12`), and a leading `/` means the root
//! (GRUB asks for `/grub/grub.cfg`). [`open_beneath`]
//! then opens it with `openat2(RESOLVE_BENEATH)`, so a symlink inside the root that
//! points outside of it is refused by the kernel, race-free.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Why a requested name is not served.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PathError {
    /// The name has a NUL byte.
    #[error("name contains a NUL byte")]
    Nul,
    /// The name is empty or only separators.
    #[error("empty name")]
    Empty,
    /// The name has a `..` component.
    #[error("path has a '..' component")]
    ParentDir,
    /// A component starts with a dot: hidden files are never served (in the boot server's
    /// store, half-built image versions live in hidden directories).
    #[error("hidden files are not served")]
    Hidden,
    /// Resolving the name (symlinks included) leaves the root.
    #[error("path leads outside the root")]
    Escapes,
    /// Nothing there.
    #[error("file not found")]
    NotFound,
    /// A directory or device, not a regular file.
    #[error("not a regular file")]
    NotAFile,
    /// Permission denied.
    #[error("permission denied")]
    PermissionDenied,
    /// Any other failure.
    #[error("{0}")]
    Io(#[source] io::Error),
}

impl PathError {
    /// Whether this is an attempt to reach outside the root (worth a warning).
    pub fn is_traversal(&self) -> bool {
        matches!(
            self,
            PathError::Nul | PathError::ParentDir | PathError::Escapes
        )
    }
}

/// Checks a requested name and returns it as a relative path.
pub fn sanitize(name: &[u8]) -> Result<PathBuf, PathError> {
    if name.contains(&0) {
        return Err(PathError::Nul);
    }
    // Backslash separators: some PXE ROMs send them.
    let name: Vec<u8> = name
        .iter()
        .map(|&b| if b == b'\\' { b'/' } else { b })
        .collect();
    // A leading separator names the root, as tftpd-hpa -s and dnsmasq read it: GRUB sends
    // the path of `(tftp,SERVER)/grub/grub.cfg` as "/grub/grub.cfg" (seen in dnsmasq's log
    // of a Secure Boot client), where OVMF's PXE client and shim send relative names. The
    // empty first component is skipped below like any other.
    let mut out = PathBuf::new();
    for comp in name.split(|&b| b == b'/') {
        match comp {
            b"" | b"." => {}
            b".." => return Err(PathError::ParentDir),
            c if c.first() == Some(&b'.') => return Err(PathError::Hidden),
            c => out.push(std::ffi::OsStr::from_bytes(c)),
        }
    }
    if out.as_os_str().is_empty() {
        return Err(PathError::Empty);
    }
    Ok(out)
}

fn map_open_error(e: io::Error) -> PathError {
    match e.raw_os_error() {
        Some(libc::ENOENT) | Some(libc::ENOTDIR) => PathError::NotFound,
        Some(libc::EXDEV) | Some(libc::ELOOP) => PathError::Escapes,
        Some(libc::EACCES) | Some(libc::EPERM) => PathError::PermissionDenied,
        _ => PathError::Io(e),
    }
}

/// Opens `rel` (from [`sanitize`]) beneath the directory `root`, read-only.
pub fn open_beneath(root: &File, rel: &Path) -> Result<File, PathError> {
    let c = CString::new(rel.as_os_str().as_bytes()).map_err(|_| PathError::Nul)?;
    // SAFETY: open_how is plain integers; zero is a valid value for each.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NOCTTY | libc::O_NONBLOCK) as u64;
    how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: valid NUL-terminated path, open_how of the size passed.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            root.as_raw_fd(),
            c.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    let file = if fd >= 0 {
        // SAFETY: a new descriptor we own.
        unsafe { File::from_raw_fd(fd as i32) }
    } else {
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::ENOSYS) {
            return Err(map_open_error(err));
        }
        open_beneath_fallback(root, rel)?
    };
    let meta = file.metadata().map_err(PathError::Io)?;
    if !meta.is_file() {
        return Err(PathError::NotAFile);
    }
    Ok(file)
}

/// Kernels before 5.6: resolve through /proc and compare prefixes.
fn open_beneath_fallback(root: &File, rel: &Path) -> Result<File, PathError> {
    let root_path =
        std::fs::read_link(format!("/proc/self/fd/{}", root.as_raw_fd())).map_err(PathError::Io)?;
    let full = root_path.join(rel).canonicalize().map_err(map_open_error)?;
    if !full.starts_with(&root_path) {
        return Err(PathError::Escapes);
    }
    File::open(&full).map_err(map_open_error)
}

/// Opens the served directory.
pub fn open_root(root: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY)
        .open(root)
}

/// Bytes of a transfer, readable at any offset (retransmissions go back).
pub trait BlockSource: Send {
    /// Bytes transferred in total.
    fn len(&self) -> u64;
    /// Whether there is nothing to send.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Fills `buf` entirely with the bytes at `offset`.
    fn read_exact_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    /// Fills `bufs` in turn with the bytes from `offset` on.
    fn read_vectored_exact_at(
        &mut self,
        mut offset: u64,
        bufs: &mut [&mut [u8]],
    ) -> io::Result<()> {
        for b in bufs.iter_mut() {
            self.read_exact_at(offset, b)?;
            offset += b.len() as u64;
        }
        Ok(())
    }
}

/// Bytes in memory (a generated file), sent as they are.
pub struct MemorySource {
    bytes: Vec<u8>,
}

impl MemorySource {
    /// Serves `bytes`.
    pub fn new(bytes: Vec<u8>) -> Self {
        MemorySource { bytes }
    }
}

impl BlockSource for MemorySource {
    fn len(&self) -> u64 {
        self.bytes.len() as u64
    }
    fn read_exact_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        let part = start
            .checked_add(buf.len())
            .and_then(|end| self.bytes.get(start..end))
            .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
        buf.copy_from_slice(part);
        Ok(())
    }
}

/// An octet-mode transfer: the file as is, read with `pread`.
pub struct OctetSource {
    file: File,
    len: u64,
}

impl OctetSource {
    /// Wraps an open file.
    pub fn new(file: File) -> io::Result<Self> {
        let len = file.metadata()?.len();
        Ok(OctetSource { file, len })
    }
}

impl BlockSource for OctetSource {
    fn len(&self) -> u64 {
        self.len
    }
    fn read_vectored_exact_at(&mut self, offset: u64, bufs: &mut [&mut [u8]]) -> io::Result<()> {
        let want: usize = bufs.iter().map(|b| b.len()).sum();
        let iov: Vec<libc::iovec> = bufs
            .iter_mut()
            .map(|b| libc::iovec {
                iov_base: b.as_mut_ptr() as *mut libc::c_void,
                iov_len: b.len(),
            })
            .collect();
        // SAFETY: each iovec points into a live, exclusively borrowed buffer.
        let n = unsafe {
            libc::preadv(
                self.file.as_raw_fd(),
                iov.as_ptr(),
                iov.len() as libc::c_int,
                offset as libc::off_t,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        if n as usize == want {
            return Ok(());
        }
        // Short read (rare, e.g. a signal): finish buffer by buffer.
        let mut done = n as usize;
        let mut off = offset;
        for b in bufs.iter_mut() {
            let l = b.len();
            if done >= l {
                done -= l;
            } else {
                self.read_exact_at(off + done as u64, &mut b[done..])?;
                done = 0;
            }
            off += l as u64;
        }
        Ok(())
    }
    fn read_exact_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.file.read_exact_at(buf, offset).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                io::Error::other("file shrank during the transfer")
            } else {
                e
            }
        })
    }
}

/// A netascii transfer: LF becomes CR LF and a bare CR becomes CR NUL (RFC 764), done on
/// the fly. The encoded length is counted once up front (for `tsize`); reads resume from
/// remembered block starts, so retransmissions do not rescan the file.
pub struct NetasciiSource {
    file: File,
    len: u64,
    /// (encoded offset, source offset, pending second byte) at recent read starts.
    marks: std::collections::VecDeque<Cursor>,
    cursor: Cursor,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Cursor {
    enc: u64,
    src: u64,
    /// Second byte of an expansion cut at a block boundary.
    pending: Option<u8>,
}

const MAX_MARKS: usize = 256;

impl NetasciiSource {
    /// Scans `file` to size its encoded form.
    pub fn new(file: File) -> io::Result<Self> {
        let mut len = 0u64;
        let mut buf = vec![0u8; 64 << 10];
        let mut off = 0u64;
        loop {
            let n = file.read_at(&mut buf, off)?;
            if n == 0 {
                break;
            }
            off += n as u64;
            len += n as u64
                + buf[..n]
                    .iter()
                    .filter(|&&b| b == b'\n' || b == b'\r')
                    .count() as u64;
        }
        let start = Cursor {
            enc: 0,
            src: 0,
            pending: None,
        };
        Ok(NetasciiSource {
            file,
            len,
            marks: [start].into(),
            cursor: start,
        })
    }
}

impl BlockSource for NetasciiSource {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_exact_at(&mut self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        if offset != self.cursor.enc {
            // Resume from the latest mark at or before `offset`.
            let mark = self
                .marks
                .iter()
                .rev()
                .find(|m| m.enc <= offset)
                .copied()
                .unwrap_or(Cursor {
                    enc: 0,
                    src: 0,
                    pending: None,
                });
            self.cursor = mark;
            // Skip forward to `offset` by encoding into a scratch buffer.
            let mut scratch = vec![0u8; 4096];
            while self.cursor.enc < offset {
                let n = ((offset - self.cursor.enc) as usize).min(scratch.len());
                self.encode(&mut scratch[..n])?;
            }
        }
        if self.marks.back().is_none_or(|m| m.enc < offset) {
            self.marks.push_back(self.cursor);
            if self.marks.len() > MAX_MARKS {
                self.marks.pop_front();
            }
        }
        self.encode(out)
    }
}

impl NetasciiSource {
    /// Encodes exactly `out.len()` bytes from the cursor on.
    fn encode(&mut self, out: &mut [u8]) -> io::Result<()> {
        let mut i = 0;
        let mut raw = [0u8; 4096];
        while i < out.len() {
            if let Some(p) = self.cursor.pending.take() {
                out[i] = p;
                i += 1;
                self.cursor.enc += 1;
                continue;
            }
            let want = (out.len() - i).min(raw.len());
            let n = self.file.read_at(&mut raw[..want], self.cursor.src)?;
            if n == 0 {
                return Err(io::Error::other("file shrank during the transfer"));
            }
            let mut used = 0;
            for &b in &raw[..n] {
                if i == out.len() {
                    break;
                }
                used += 1;
                let second = match b {
                    b'\n' => Some(b'\n'),
                    b'\r' => Some(0),
                    _ => None,
                };
                match second {
                    None => {
                        out[i] = b;
                        i += 1;
                        self.cursor.enc += 1;
                    }
                    Some(s) => {
                        out[i] = b'\r';
                        i += 1;
                        self.cursor.enc += 1;
                        if i < out.len() {
                            out[i] = s;
                            i += 1;
                            self.cursor.enc += 1;
                        } else {
                            self.cursor.pending = Some(s);
                        }
                    }
                }
            }
            self.cursor.src += used as u64;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn sanitize_cases() {
        assert_eq!(
            sanitize(b"pxelinux.0").unwrap(),
            PathBuf::from("pxelinux.0")
        );
        assert_eq!(
            sanitize(b"boot\\x86\\.\\pxeboot.n12").unwrap(),
            PathBuf::from("boot/x86/pxeboot.n12")
        );
        assert_eq!(sanitize(b"a//b/").unwrap(), PathBuf::from("a/b"));
        assert!(matches!(
            sanitize(b"../etc/shadow"),
            Err(PathError::ParentDir)
        ));
        assert!(matches!(sanitize(b"a/../../b"), Err(PathError::ParentDir)));
        assert!(matches!(
            sanitize(b"images/lab/.staging-1/root.squashfs"),
            Err(PathError::Hidden)
        ));
        assert!(matches!(sanitize(b".ssh/id_rsa"), Err(PathError::Hidden)));
        assert_eq!(sanitize(b"./a/./b").unwrap(), PathBuf::from("a/b"));
        assert!(matches!(
            sanitize(b"..\\..\\etc"),
            Err(PathError::ParentDir)
        ));
        // Rooted names stay beneath the root.
        assert_eq!(
            sanitize(b"/etc/passwd").unwrap(),
            PathBuf::from("etc/passwd")
        );
        assert_eq!(
            sanitize(b"\\etc\\passwd").unwrap(),
            PathBuf::from("etc/passwd")
        );
        assert_eq!(
            sanitize(b"/grub/grub.cfg").unwrap(),
            PathBuf::from("grub/grub.cfg")
        );
        assert!(matches!(sanitize(b"/../etc"), Err(PathError::ParentDir)));
        assert!(matches!(sanitize(b"a\0b"), Err(PathError::Nul)));
        assert!(matches!(sanitize(b"./"), Err(PathError::Empty)));
        assert!(sanitize(b"..").unwrap_err().is_traversal());
    }

    #[test]
    fn open_beneath_refuses_escaping_symlinks() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), b"s").unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/ok"), b"ok").unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), dir.path().join("out")).unwrap();
        std::os::unix::fs::symlink("/etc/hostname", dir.path().join("abs")).unwrap();
        std::os::unix::fs::symlink("sub/ok", dir.path().join("in")).unwrap();
        let root = open_root(dir.path()).unwrap();
        assert!(open_beneath(&root, Path::new("sub/ok")).is_ok());
        assert!(open_beneath(&root, Path::new("in")).is_ok(), "inside link");
        assert!(matches!(
            open_beneath(&root, Path::new("out")),
            Err(PathError::Escapes)
        ));
        assert!(matches!(
            open_beneath(&root, Path::new("abs")),
            Err(PathError::Escapes)
        ));
        assert!(matches!(
            open_beneath(&root, Path::new("sub")),
            Err(PathError::NotAFile)
        ));
        assert!(matches!(
            open_beneath(&root, Path::new("nope")),
            Err(PathError::NotFound)
        ));
        assert!(matches!(
            open_beneath_fallback(&root, Path::new("out")),
            Err(PathError::Escapes)
        ));
    }

    #[test]
    fn netascii_encodes_and_seeks() {
        let mut f = tempfile::tempfile().unwrap();
        let text = b"line1\nline2\r\nx\r".repeat(50);
        f.write_all(&text).unwrap();
        let mut src = NetasciiSource::new(f).unwrap();
        let mut expect = Vec::new();
        for &b in &text {
            match b {
                b'\n' => expect.extend_from_slice(b"\r\n"),
                b'\r' => expect.extend_from_slice(b"\r\0"),
                _ => expect.push(b),
            }
        }
        assert_eq!(src.len(), expect.len() as u64);
        // Block size 7 cuts expansions in half; read forward, then go back (retransmit).
        let blk = 7usize;
        let mut got = Vec::new();
        let mut off = 0;
        while off < expect.len() {
            let n = blk.min(expect.len() - off);
            let mut b = vec![0; n];
            src.read_exact_at(off as u64, &mut b).unwrap();
            got.extend_from_slice(&b);
            off += n;
        }
        assert_eq!(got, expect);
        for back in [0usize, 21, 700, 5] {
            let mut b = vec![0; blk];
            src.read_exact_at(back as u64, &mut b).unwrap();
            assert_eq!(&b[..], &expect[back..back + blk], "offset {back}");
        }
    }
}
