//! The cpio "newc" format (`070701`, and its checksummed twin `070702`), as
//! the kernel unpacks it into the early rootfs (see the kernel's
//! `Documentation/driver-api/early-userspace/buffer-format.rst`).
//!
//! An archive is a run of entries, each a 110-byte ASCII header of
//! hexadecimal fields, the NUL-terminated name padded so that header + name
//! is a multiple of 4, then the data padded to a multiple of 4. The entry
//! named `TRAILER!!!` ends it.
//!
//! [`CpioWriter`] produces reproducible archives (mtime 0, uid/gid 0,
//! sequential inode numbers); [`CpioReader`] streams entries without holding
//! any data in memory and stops exactly after the trailer, so a caller can
//! keep reading whatever follows (the next initrd segment).

use std::collections::BTreeSet;
use std::fmt;
use std::io::{self, Read, Write};

/// Byte ranges of the fixed-width header fields.
mod field {
    pub type Field = std::ops::Range<usize>;
    pub const MAGIC: Field = 0..6;
    pub const INO: Field = 6..14;
    pub const MODE: Field = 14..22;
    pub const UID: Field = 22..30;
    pub const GID: Field = 30..38;
    pub const NLINK: Field = 38..46;
    pub const MTIME: Field = 46..54;
    pub const FILESIZE: Field = 54..62;
    pub const DEVMAJOR: Field = 62..70;
    pub const DEVMINOR: Field = 70..78;
    pub const RDEVMAJOR: Field = 78..86;
    pub const RDEVMINOR: Field = 86..94;
    pub const NAMESIZE: Field = 94..102;
    pub const CHECK: Field = 102..110;
}

/// Length of a newc header, before the name.
pub const HEADER_LEN: usize = field::CHECK.end;
/// Magic of the newc format without checksums.
pub const MAGIC_NEWC: &[u8; 6] = b"070701";
/// Magic of the newc format whose `check` field sums the data bytes.
pub const MAGIC_CRC: &[u8; 6] = b"070702";
/// Name of the entry that ends an archive.
pub const TRAILER: &str = "TRAILER!!!";
/// Longest name we accept when reading; the kernel's limit is `PATH_MAX`.
pub const MAX_NAME_LEN: u32 = 4096;

/// File type bits of `mode` (`S_IFMT`).
pub const S_IFMT: u32 = 0o170_000;
/// Socket.
pub const S_IFSOCK: u32 = 0o140_000;
/// Symbolic link.
pub const S_IFLNK: u32 = 0o120_000;
/// Regular file.
pub const S_IFREG: u32 = 0o100_000;
/// Block device.
pub const S_IFBLK: u32 = 0o060_000;
/// Directory.
pub const S_IFDIR: u32 = 0o040_000;
/// Character device.
pub const S_IFCHR: u32 = 0o020_000;
/// Named pipe.
pub const S_IFIFO: u32 = 0o010_000;

/// What an entry is, from the type bits of its mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// Regular file.
    File,
    /// Directory.
    Dir,
    /// Symbolic link; the target is the entry's data.
    Symlink,
    /// Character device.
    CharDevice,
    /// Block device.
    BlockDevice,
    /// Named pipe.
    Fifo,
    /// Unix socket.
    Socket,
    /// Type bits we do not know (kept, so listing still shows the entry).
    Unknown(u32),
}

impl From<u32> for EntryKind {
    fn from(mode: u32) -> Self {
        match mode & S_IFMT {
            S_IFREG => EntryKind::File,
            S_IFDIR => EntryKind::Dir,
            S_IFLNK => EntryKind::Symlink,
            S_IFCHR => EntryKind::CharDevice,
            S_IFBLK => EntryKind::BlockDevice,
            S_IFIFO => EntryKind::Fifo,
            S_IFSOCK => EntryKind::Socket,
            other => EntryKind::Unknown(other),
        }
    }
}

/// One parsed header (and name) of a newc archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// True for `070702` (checksummed) archives.
    pub crc_format: bool,
    /// Inode number; entries sharing `(devmajor, devminor, ino)` and
    /// `nlink > 1` are hard links of one another.
    pub ino: u32,
    /// Type and permission bits.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Link count.
    pub nlink: u32,
    /// Modification time, seconds since the epoch.
    pub mtime: u32,
    /// Length of the data that follows.
    pub filesize: u32,
    /// Device holding the file (major).
    pub devmajor: u32,
    /// Device holding the file (minor).
    pub devminor: u32,
    /// For device nodes, the device (major).
    pub rdevmajor: u32,
    /// For device nodes, the device (minor).
    pub rdevminor: u32,
    /// `070702` only: sum of the data bytes.
    pub check: u32,
    /// Name as stored, without the terminating NUL (not always UTF-8).
    pub name: Vec<u8>,
}

impl Header {
    /// The entry's type.
    pub fn kind(&self) -> EntryKind {
        EntryKind::from(self.mode)
    }

    /// Permission bits (including setuid/setgid/sticky).
    pub fn permissions(&self) -> u32 {
        self.mode & 0o7777
    }

    /// The name, lossily decoded for display.
    pub fn name_lossy(&self) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(&self.name)
    }

    /// Is this the `TRAILER!!!` that ends an archive?
    pub fn is_trailer(&self) -> bool {
        self.name == TRAILER.as_bytes()
    }

    /// Bytes of padding after the data.
    fn data_pad(&self) -> u64 {
        pad4(u64::from(self.filesize))
    }

    /// Writes the header, name, NUL and padding.
    pub fn emit<W: Write>(&self, w: &mut W) -> io::Result<()> {
        let namesize = u32::try_from(self.name.len() + 1)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "cpio name too long"))?;
        let mut buf = [0u8; HEADER_LEN];
        buf[field::MAGIC].copy_from_slice(if self.crc_format {
            MAGIC_CRC
        } else {
            MAGIC_NEWC
        });
        let fields = [
            (field::INO, self.ino),
            (field::MODE, self.mode),
            (field::UID, self.uid),
            (field::GID, self.gid),
            (field::NLINK, self.nlink),
            (field::MTIME, self.mtime),
            (field::FILESIZE, self.filesize),
            (field::DEVMAJOR, self.devmajor),
            (field::DEVMINOR, self.devminor),
            (field::RDEVMAJOR, self.rdevmajor),
            (field::RDEVMINOR, self.rdevminor),
            (field::NAMESIZE, namesize),
            (field::CHECK, self.check),
        ];
        for (range, value) in fields {
            buf[range].copy_from_slice(format!("{value:08x}").as_bytes());
        }
        w.write_all(&buf)?;
        w.write_all(&self.name)?;
        let name_end = HEADER_LEN as u64 + u64::from(namesize);
        let zeros = [0u8; 4];
        // The NUL terminator plus the padding after it.
        w.write_all(&zeros[..1 + pad4(name_end) as usize])
    }
}

/// Why a header could not be parsed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HeaderError {
    /// The first six bytes are not a newc magic.
    #[error("bad cpio magic {found:?} (only newc 070701/070702 is supported)")]
    BadMagic {
        /// What was found instead, lossily decoded.
        found: String,
    },
    /// A field holds something other than 8 hex digits.
    #[error("cpio header field {field} is not hexadecimal: {found:?}")]
    BadField {
        /// The field's name.
        field: &'static str,
        /// Its raw text.
        found: String,
    },
    /// `namesize` is 0 or unreasonably large.
    #[error("cpio name size {0} out of range")]
    BadNameSize(u32),
    /// The name is not followed by NUL where `namesize` says.
    #[error("cpio name is not NUL-terminated")]
    NameNotTerminated,
}

fn parse_hex(
    buf: &[u8; HEADER_LEN],
    range: field::Field,
    name: &'static str,
) -> Result<u32, HeaderError> {
    let raw = &buf[range];
    let mut v: u32 = 0;
    for &b in raw {
        let d = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            b'A'..=b'F' => b - b'A' + 10,
            _ => {
                return Err(HeaderError::BadField {
                    field: name,
                    found: String::from_utf8_lossy(raw).into_owned(),
                })
            }
        };
        v = (v << 4) | u32::from(d);
    }
    Ok(v)
}

/// Fixed-size part of a header, parsed; the name follows.
struct FixedHeader {
    header: Header,
    namesize: u32,
}

fn parse_fixed(buf: &[u8; HEADER_LEN]) -> Result<FixedHeader, HeaderError> {
    let magic = &buf[field::MAGIC];
    let crc_format = if magic == MAGIC_NEWC {
        false
    } else if magic == MAGIC_CRC {
        true
    } else {
        return Err(HeaderError::BadMagic {
            found: String::from_utf8_lossy(magic).into_owned(),
        });
    };
    let namesize = parse_hex(buf, field::NAMESIZE, "namesize")?;
    if namesize == 0 || namesize > MAX_NAME_LEN {
        return Err(HeaderError::BadNameSize(namesize));
    }
    Ok(FixedHeader {
        header: Header {
            crc_format,
            ino: parse_hex(buf, field::INO, "ino")?,
            mode: parse_hex(buf, field::MODE, "mode")?,
            uid: parse_hex(buf, field::UID, "uid")?,
            gid: parse_hex(buf, field::GID, "gid")?,
            nlink: parse_hex(buf, field::NLINK, "nlink")?,
            mtime: parse_hex(buf, field::MTIME, "mtime")?,
            filesize: parse_hex(buf, field::FILESIZE, "filesize")?,
            devmajor: parse_hex(buf, field::DEVMAJOR, "devmajor")?,
            devminor: parse_hex(buf, field::DEVMINOR, "devminor")?,
            rdevmajor: parse_hex(buf, field::RDEVMAJOR, "rdevmajor")?,
            rdevminor: parse_hex(buf, field::RDEVMINOR, "rdevminor")?,
            check: parse_hex(buf, field::CHECK, "check")?,
            name: Vec::new(),
        },
        namesize,
    })
}

/// Padding needed to bring `len` to a multiple of 4.
fn pad4(len: u64) -> u64 {
    (4 - len % 4) % 4
}

/// Error from [`CpioReader`], with the offset (from the start of the
/// archive's stream) of the entry it concerns.
#[derive(Debug, thiserror::Error)]
#[error("cpio entry at offset {offset}{}: {kind}", name_suffix(.name))]
pub struct ReadError {
    /// Offset of the entry's header.
    pub offset: u64,
    /// The entry's name, when it was read before the failure.
    pub name: Option<String>,
    /// What went wrong.
    #[source]
    pub kind: ReadErrorKind,
}

fn name_suffix(name: &Option<String>) -> String {
    match name {
        Some(n) => format!(" ({n:?})"),
        None => String::new(),
    }
}

/// What went wrong while reading an archive.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReadErrorKind {
    /// The header is malformed.
    #[error(transparent)]
    Header(#[from] HeaderError),
    /// The stream ended inside an entry, or before the trailer.
    #[error("archive is truncated")]
    Truncated,
    /// The underlying reader (or decompressor) failed.
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Streaming reader of one newc archive.
///
/// Call [`next_entry`](Self::next_entry) for each header; the entry's data
/// can then be read through [`data`](Self::data) (whatever is left unread is
/// skipped by the next call). After the trailer `next_entry` returns
/// `Ok(None)` and the inner reader sits just past it (at a 4-byte boundary of
/// the archive), ready for whatever follows.
pub struct CpioReader<R> {
    inner: R,
    /// Offset in the stream of the next byte `inner` yields.
    offset: u64,
    /// Data bytes of the current entry not yet consumed.
    remaining: u64,
    /// Padding after the current entry's data.
    pad: u64,
    /// Start of the current entry, for error context.
    entry_offset: u64,
    entry_name: Option<String>,
    done: bool,
}

impl<R: Read> CpioReader<R> {
    /// Reads an archive that starts at the current position of `inner`.
    pub fn new(inner: R) -> Self {
        Self::with_offset(inner, 0)
    }

    /// Like [`new`](Self::new), with offsets in errors counted from
    /// `offset` (the archive's position in a larger stream).
    pub fn with_offset(inner: R, offset: u64) -> Self {
        CpioReader {
            inner,
            offset,
            remaining: 0,
            pad: 0,
            entry_offset: offset,
            entry_name: None,
            done: false,
        }
    }

    /// Offset of the next unread byte (relative to the origin given to
    /// [`with_offset`](Self::with_offset)).
    pub fn offset(&self) -> u64 {
        self.offset
    }

    fn err(&self, kind: impl Into<ReadErrorKind>) -> ReadError {
        ReadError {
            offset: self.entry_offset,
            name: self.entry_name.clone(),
            kind: kind.into(),
        }
    }

    fn read_exact_counted(&mut self, buf: &mut [u8]) -> Result<(), ReadError> {
        match self.inner.read_exact(buf) {
            Ok(()) => {
                self.offset += buf.len() as u64;
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                Err(self.err(ReadErrorKind::Truncated))
            }
            Err(e) => Err(self.err(e)),
        }
    }

    fn skip(&mut self, n: u64) -> Result<(), ReadError> {
        if n == 0 {
            return Ok(());
        }
        let copied =
            io::copy(&mut (&mut self.inner).take(n), &mut io::sink()).map_err(|e| self.err(e))?;
        self.offset += copied;
        if copied != n {
            return Err(self.err(ReadErrorKind::Truncated));
        }
        Ok(())
    }

    /// Reads the next header, skipping the unread rest of the previous
    /// entry. Returns `Ok(None)` once the trailer has been read.
    pub fn next_entry(&mut self) -> Result<Option<Header>, ReadError> {
        if self.done {
            return Ok(None);
        }
        let rest = self.remaining + self.pad;
        self.skip(rest)?;
        self.remaining = 0;
        self.pad = 0;
        self.entry_offset = self.offset;
        self.entry_name = None;

        let mut buf = [0u8; HEADER_LEN];
        self.read_exact_counted(&mut buf)?;
        let fixed = parse_fixed(&buf).map_err(|e| self.err(e))?;
        let mut header = fixed.header;
        let mut name = vec![0u8; fixed.namesize as usize];
        self.read_exact_counted(&mut name)?;
        if name.pop() != Some(0) {
            return Err(self.err(HeaderError::NameNotTerminated));
        }
        // Some writers pad names with extra NULs inside namesize (dracut
        // did, see its commit "cpio: pad names"); the name ends at the first.
        if let Some(nul) = name.iter().position(|&b| b == 0) {
            name.truncate(nul);
        }
        header.name = name;
        self.entry_name = Some(header.name_lossy().into_owned());
        let name_pad = pad4(HEADER_LEN as u64 + u64::from(fixed.namesize));
        self.skip(name_pad)?;

        if header.is_trailer() {
            // The trailer's data (normally none) belongs to the archive.
            let rest = u64::from(header.filesize) + header.data_pad();
            self.skip(rest)?;
            self.done = true;
            return Ok(None);
        }
        self.remaining = u64::from(header.filesize);
        self.pad = header.data_pad();
        Ok(Some(header))
    }

    /// Reader of the current entry's unread data.
    pub fn data(&mut self) -> EntryData<'_, R> {
        EntryData { reader: self }
    }

    /// Reads the rest of the current entry's data into a vector (for small
    /// things such as symlink targets).
    pub fn read_data_to_vec(&mut self) -> Result<Vec<u8>, ReadError> {
        let mut v = Vec::with_capacity(self.remaining.min(1 << 20) as usize);
        self.data().read_to_end(&mut v).map_err(|e| self.err(e))?;
        Ok(v)
    }

    /// Gives back the inner reader (positioned after the trailer once
    /// `next_entry` has returned `Ok(None)`).
    pub fn into_inner(self) -> R {
        self.inner
    }
}

/// Data of the current entry of a [`CpioReader`]; ends with the entry. A
/// stream that ends early reads as `UnexpectedEof`.
pub struct EntryData<'a, R> {
    reader: &'a mut CpioReader<R>,
}

impl<R: Read> Read for EntryData<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let r = &mut *self.reader;
        if r.remaining == 0 || buf.is_empty() {
            return Ok(0);
        }
        let want = buf
            .len()
            .min(usize::try_from(r.remaining).unwrap_or(usize::MAX));
        let n = r.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "cpio entry data truncated",
            ));
        }
        r.remaining -= n as u64;
        r.offset += n as u64;
        Ok(n)
    }
}

/// Writes a reproducible newc archive.
///
/// Paths are relative ("scripts/diskless", no leading slash). Parent
/// directories missing from the archive are added (mode 0755) before their
/// children, because the kernel does not create them. Each directory is
/// written once: add one explicitly before its children to give it another
/// mode. Every entry has mtime 0, uid/gid 0 and inode numbers counted from 1,
/// so the same calls always give the same bytes.
pub struct CpioWriter<W: Write> {
    inner: W,
    written: u64,
    next_ino: u32,
    dirs: BTreeSet<String>,
}

impl<W: Write> fmt::Debug for CpioWriter<W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CpioWriter")
            .field("written", &self.written)
            .field("next_ino", &self.next_ino)
            .finish_non_exhaustive()
    }
}

/// Mode given to directories the writer adds on its own.
pub const IMPLICIT_DIR_MODE: u32 = 0o755;

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

/// Checks that `path` is a plain relative path: no leading slash, no empty,
/// `.` or `..` components, no NUL.
fn check_path(path: &str) -> io::Result<()> {
    if path.is_empty() || path.starts_with('/') || path.contains('\0') {
        return Err(invalid(format!(
            "cpio path {path:?} must be relative and non-empty"
        )));
    }
    if path == TRAILER {
        return Err(invalid(format!("cpio path {path:?} would end the archive")));
    }
    if path
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(invalid(format!(
            "cpio path {path:?} has an empty, '.' or '..' component"
        )));
    }
    Ok(())
}

impl<W: Write> CpioWriter<W> {
    /// Starts an archive on `inner`.
    pub fn new(inner: W) -> Self {
        CpioWriter {
            inner,
            written: 0,
            next_ino: 1,
            dirs: BTreeSet::new(),
        }
    }

    fn emit(
        &mut self,
        name: &str,
        mode: u32,
        nlink: u32,
        rdev: (u32, u32),
        data: &[u8],
    ) -> io::Result<()> {
        let filesize = u32::try_from(data.len())
            .map_err(|_| invalid(format!("cpio entry {name:?} is larger than 4 GiB")))?;
        self.emit_header(name, mode, nlink, rdev, filesize)?;
        self.inner.write_all(data)?;
        self.finish_data(filesize)
    }

    fn emit_header(
        &mut self,
        name: &str,
        mode: u32,
        nlink: u32,
        rdev: (u32, u32),
        filesize: u32,
    ) -> io::Result<()> {
        let ino = if name == TRAILER { 0 } else { self.next_ino };
        let header = Header {
            crc_format: false,
            ino,
            mode,
            uid: 0,
            gid: 0,
            nlink,
            mtime: 0,
            filesize,
            devmajor: 0,
            devminor: 0,
            rdevmajor: rdev.0,
            rdevminor: rdev.1,
            check: 0,
            name: name.as_bytes().to_vec(),
        };
        if name != TRAILER {
            self.next_ino = self
                .next_ino
                .checked_add(1)
                .ok_or_else(|| invalid("too many cpio entries".into()))?;
        }
        header.emit(&mut self.inner)?;
        let namesize = name.len() as u64 + 1;
        self.written += HEADER_LEN as u64 + namesize + pad4(HEADER_LEN as u64 + namesize);
        Ok(())
    }

    fn finish_data(&mut self, filesize: u32) -> io::Result<()> {
        let pad = pad4(u64::from(filesize));
        self.inner.write_all(&[0u8; 4][..pad as usize])?;
        self.written += u64::from(filesize) + pad;
        Ok(())
    }

    /// Adds the missing parent directories of `path`, outermost first.
    fn add_parents(&mut self, path: &str) -> io::Result<()> {
        let mut end = 0;
        while let Some(i) = path[end..].find('/') {
            let parent = &path[..end + i];
            if !self.dirs.contains(parent) {
                self.dirs.insert(parent.to_owned());
                self.emit(parent, S_IFDIR | IMPLICIT_DIR_MODE, 2, (0, 0), &[])?;
            }
            end += i + 1;
        }
        Ok(())
    }

    /// Adds a directory with permission bits `mode` (type bits are
    /// ignored). A directory already in the archive is not added again.
    pub fn add_dir(&mut self, path: &str, mode: u32) -> io::Result<()> {
        check_path(path)?;
        if self.dirs.contains(path) {
            return Ok(());
        }
        self.add_parents(path)?;
        self.dirs.insert(path.to_owned());
        self.emit(path, S_IFDIR | (mode & 0o7777), 2, (0, 0), &[])
    }

    /// Adds a regular file with permission bits `mode` (type bits ignored).
    pub fn add_file(&mut self, path: &str, mode: u32, data: &[u8]) -> io::Result<()> {
        check_path(path)?;
        self.add_parents(path)?;
        self.emit(path, S_IFREG | (mode & 0o7777), 1, (0, 0), data)
    }

    /// Adds a regular file of exactly `len` bytes copied from `data`, for
    /// contents too large to hold in memory.
    pub fn add_file_from_reader<R: Read>(
        &mut self,
        path: &str,
        mode: u32,
        len: u64,
        data: R,
    ) -> io::Result<()> {
        check_path(path)?;
        let filesize = u32::try_from(len)
            .map_err(|_| invalid(format!("cpio entry {path:?} is larger than 4 GiB")))?;
        self.add_parents(path)?;
        self.emit_header(path, S_IFREG | (mode & 0o7777), 1, (0, 0), filesize)?;
        let copied = io::copy(&mut data.take(len), &mut self.inner)?;
        if copied != len {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("cpio entry {path:?}: source gave {copied} of {len} bytes"),
            ));
        }
        self.finish_data(filesize)
    }

    /// Adds a symbolic link to `target` (mode 0777, as Linux links have).
    pub fn add_symlink(&mut self, path: &str, target: &str) -> io::Result<()> {
        check_path(path)?;
        if target.is_empty() || target.contains('\0') {
            return Err(invalid(format!(
                "symlink {path:?} has an empty or NUL-bearing target"
            )));
        }
        self.add_parents(path)?;
        self.emit(path, S_IFLNK | 0o777, 1, (0, 0), target.as_bytes())
    }

    /// Adds a character device node (the kernel creates it with `mknod`).
    pub fn add_char_device(
        &mut self,
        path: &str,
        mode: u32,
        major: u32,
        minor: u32,
    ) -> io::Result<()> {
        check_path(path)?;
        self.add_parents(path)?;
        self.emit(path, S_IFCHR | (mode & 0o7777), 1, (major, minor), &[])
    }

    /// Bytes written so far.
    pub fn bytes_written(&self) -> u64 {
        self.written
    }

    /// Writes the trailer, pads the archive with zeros to a multiple of 512
    /// bytes (as GNU cpio does; the kernel skips zeros between archives), and
    /// returns the inner writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.emit(TRAILER, 0, 1, (0, 0), &[])?;
        let pad = (512 - self.written % 512) % 512;
        self.inner.write_all(&[0u8; 512][..pad as usize])?;
        self.written += pad;
        self.inner.flush()?;
        Ok(self.inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    /// A small archive exercising every writer call.
    fn sample() -> Vec<u8> {
        let mut w = CpioWriter::new(Vec::new());
        w.add_dir("conf", 0o700).unwrap();
        w.add_file("conf/conf.d/diskless", 0o644, b"IMAGE=http://x/y\n")
            .unwrap();
        w.add_file("scripts/diskless", 0o755, b"#!/bin/sh\necho hi\n")
            .unwrap();
        w.add_file("scripts/local-top/empty", 0o644, b"").unwrap();
        w.add_symlink("bin/sh", "busybox").unwrap();
        w.add_file_from_reader("bin/busybox", 0o755, 5, &b"12345"[..])
            .unwrap();
        w.finish().unwrap()
    }

    fn read_all(bytes: &[u8]) -> Vec<(Header, Vec<u8>)> {
        let mut r = CpioReader::new(bytes);
        let mut out = Vec::new();
        while let Some(h) = r.next_entry().unwrap() {
            let data = r.read_data_to_vec().unwrap();
            out.push((h, data));
        }
        out
    }

    #[test]
    fn header_emit_parse_round_trip() {
        let h = Header {
            crc_format: false,
            ino: 0x1234,
            mode: S_IFCHR | 0o600,
            uid: 1,
            gid: 2,
            nlink: 3,
            mtime: 0xdead_beef,
            filesize: 0,
            devmajor: 8,
            devminor: 1,
            rdevmajor: 5,
            rdevminor: 1,
            check: 0,
            name: b"dev/console".to_vec(),
        };
        let mut buf = Vec::new();
        h.emit(&mut buf).unwrap();
        assert_eq!(buf.len() % 4, 0);
        assert_eq!(&buf[..6], b"070701");
        let mut r = CpioReader::new(&buf[..]);
        assert_eq!(r.next_entry().unwrap(), Some(h));
    }

    #[test]
    fn parents_come_first_once_each() {
        let entries = read_all(&sample());
        let names: Vec<String> = entries
            .iter()
            .map(|(h, _)| h.name_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            [
                "conf",
                "conf/conf.d",
                "conf/conf.d/diskless",
                "scripts",
                "scripts/diskless",
                "scripts/local-top",
                "scripts/local-top/empty",
                "bin",
                "bin/sh",
                "bin/busybox",
            ]
        );
        // Explicit mode kept, implicit parents 0755.
        assert_eq!(entries[0].0.mode, S_IFDIR | 0o700);
        assert_eq!(entries[1].0.mode, S_IFDIR | 0o755);
        assert_eq!(entries[8].0.kind(), EntryKind::Symlink);
        assert_eq!(entries[8].1, b"busybox");
        assert_eq!(entries[9].1, b"12345");
        // Deterministic, distinct inodes.
        let inos: BTreeSet<u32> = entries.iter().map(|(h, _)| h.ino).collect();
        assert_eq!(inos.len(), entries.len());
        assert!(entries
            .iter()
            .all(|(h, _)| h.mtime == 0 && h.uid == 0 && h.gid == 0));
    }

    #[test]
    fn output_is_reproducible_and_block_padded() {
        let a = sample();
        assert_eq!(a, sample());
        assert_eq!(a.len() % 512, 0);
    }

    #[test]
    fn reader_stops_right_after_trailer() {
        let mut w = CpioWriter::new(Vec::new());
        w.add_file("a", 0o644, b"x").unwrap();
        w.emit(TRAILER, 0, 1, (0, 0), &[]).unwrap();
        let mut bytes = std::mem::take(&mut w.inner);
        let archive_len = bytes.len();
        bytes.extend_from_slice(b"NEXT");
        let mut r = CpioReader::new(&bytes[..]);
        assert!(r.next_entry().unwrap().is_some());
        assert!(r.next_entry().unwrap().is_none());
        assert_eq!(r.offset(), archive_len as u64);
        let mut rest = Vec::new();
        r.into_inner().read_to_end(&mut rest).unwrap();
        assert_eq!(rest, b"NEXT");
    }

    #[test]
    fn bad_paths_are_refused() {
        let mut w = CpioWriter::new(Vec::new());
        for p in [
            "",
            "/etc/passwd",
            "a/../b",
            "../x",
            "a//b",
            "./a",
            "a/.",
            "TRAILER!!!",
            "a\0b",
        ] {
            let e = w.add_file(p, 0o644, b"").unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{p:?}");
        }
        assert_eq!(w.bytes_written(), 0);
    }

    #[test]
    fn truncated_and_garbage_input_give_errors_with_offset() {
        let bytes = sample();
        let mut r = CpioReader::new(&bytes[..200]);
        let err = loop {
            match r.next_entry() {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("truncated archive read to its end"),
                Err(e) => break e,
            }
        };
        assert!(matches!(err.kind, ReadErrorKind::Truncated), "{err}");
        let mut garbage = bytes.clone();
        garbage[0] = b'9';
        let err = CpioReader::new(&garbage[..]).next_entry().unwrap_err();
        assert!(matches!(
            err.kind,
            ReadErrorKind::Header(HeaderError::BadMagic { .. })
        ));
        assert_eq!(err.offset, 0);
    }

    fn have_cpio() -> bool {
        Command::new("cpio").arg("--version").output().is_ok()
    }

    #[test]
    fn gnu_cpio_lists_and_extracts_our_archive() {
        if !have_cpio() {
            eprintln!("skipping: cpio(1) not installed");
            return;
        }
        let bytes = sample();
        let mut child = Command::new("cpio")
            .args(["-t", "--quiet"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(&bytes).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        let listed: Vec<&str> = std::str::from_utf8(&out.stdout).unwrap().lines().collect();
        let ours: Vec<String> = read_all(&bytes)
            .iter()
            .map(|(h, _)| h.name_lossy().into_owned())
            .collect();
        assert_eq!(listed, ours);

        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new("cpio")
            .args([
                "-i",
                "--quiet",
                "--make-directories",
                "--no-absolute-filenames",
            ])
            .current_dir(dir.path())
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(&bytes).unwrap();
        assert!(child.wait().unwrap().success());
        let p = dir.path();
        assert_eq!(
            std::fs::read(p.join("scripts/diskless")).unwrap(),
            b"#!/bin/sh\necho hi\n"
        );
        assert_eq!(
            std::fs::read_link(p.join("bin/sh")).unwrap().to_str(),
            Some("busybox")
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(p.join("scripts/diskless"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, 0o755);
        let mode = std::fs::metadata(p.join("conf"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, 0o700);
    }

    #[test]
    fn we_read_what_gnu_cpio_writes() {
        if !have_cpio() {
            eprintln!("skipping: cpio(1) not installed");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        std::fs::create_dir_all(p.join("d/e")).unwrap();
        std::fs::write(p.join("d/e/f"), b"hello\n").unwrap();
        std::fs::write(p.join("odd-len-name"), b"abc").unwrap();
        std::os::unix::fs::symlink("e/f", p.join("d/link")).unwrap();
        let list = "d\nd/e\nd/e/f\nodd-len-name\nd/link\n";
        let mut child = Command::new("cpio")
            .args(["-o", "-H", "newc", "--quiet"])
            .current_dir(p)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(list.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        let entries = read_all(&out.stdout);
        let names: Vec<String> = entries
            .iter()
            .map(|(h, _)| h.name_lossy().into_owned())
            .collect();
        assert_eq!(names, ["d", "d/e", "d/e/f", "odd-len-name", "d/link"]);
        assert_eq!(entries[2].1, b"hello\n");
        assert_eq!(entries[3].1, b"abc");
        assert_eq!(entries[4].0.kind(), EntryKind::Symlink);
        assert_eq!(entries[4].1, b"e/f");
    }
}
