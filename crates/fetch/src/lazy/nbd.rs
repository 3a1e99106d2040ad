//! The kernel's NBD device driven over a socketpair: the wire format of its requests and
//! replies (sans-IO, below); [`super::netlink`] hands it the socket.
//!
//! Why NBD and not ublk: the block device has to exist in Debian 12's kernel (6.1) as well
//! as Debian 13's (6.12); ublk is built only in 6.12 (`CONFIG_BLK_DEV_UBLK` is unset in
//! 6.1's config), NBD in both (`CONFIG_BLK_DEV_NBD=m`). Configured by the kernel's netlink
//! interface, the driver needs no handshake: the helper holds both ends of a Unix
//! socketpair, gives one to the kernel (NBD_CMD_CONNECT) and answers on the other.
//!
//! The transmission format is the protocol's (nbd's doc/proto.md, "Transmission phase";
//! include/uapi/linux/nbd.h), all numbers big-endian:
//!
//! ```text
//! request  magic 0x25609513 (4) | flags (2) type (2) | handle (8) | offset (8) | length (4)
//! reply    magic 0x67446698 (4) | error (4) | handle (8) [| data, for a read that succeeded]
//! ```

use std::fs::File;
use std::os::fd::AsRawFd;

/// Bytes of a request header.
pub const REQUEST_LEN: usize = 28;
/// Bytes of a simple reply's header.
pub const REPLY_LEN: usize = 16;

const REQUEST_MAGIC: u32 = 0x2560_9513;
const REPLY_MAGIC: u32 = 0x6744_6698;

/// Byte ranges of a request's fields.
mod field {
    use std::ops::Range;
    pub const MAGIC: Range<usize> = 0..4;
    pub const FLAGS: Range<usize> = 4..6;
    pub const TYPE: Range<usize> = 6..8;
    pub const HANDLE: Range<usize> = 8..16;
    pub const OFFSET: Range<usize> = 16..24;
    pub const LENGTH: Range<usize> = 24..28;
    pub const REPLY_MAGIC: Range<usize> = 0..4;
    pub const REPLY_ERROR: Range<usize> = 4..8;
    pub const REPLY_HANDLE: Range<usize> = 8..16;
}

/// A request's command (nbd.h `NBD_CMD_*`); the ones a read-only export gets are named.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Read,
    Write,
    /// The kernel disconnects (NBD_DISCONNECT): no reply, the server ends.
    Disconnect,
    Flush,
    Trim,
    Unknown(u16),
}

impl From<u16> for Command {
    fn from(code: u16) -> Command {
        match code {
            0 => Command::Read,
            1 => Command::Write,
            2 => Command::Disconnect,
            3 => Command::Flush,
            4 => Command::Trim,
            other => Command::Unknown(other),
        }
    }
}

/// A request from the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    pub command: Command,
    /// Echoed in the reply; the kernel matches replies to requests by it.
    pub handle: [u8; 8],
    pub offset: u64,
    pub length: u32,
}

impl Request {
    pub fn parse(buf: &[u8; REQUEST_LEN]) -> Result<Request, String> {
        let magic = u32::from_be_bytes(buf[field::MAGIC].try_into().expect("4 bytes"));
        if magic != REQUEST_MAGIC {
            return Err(format!("NBD request with magic {magic:#010x}"));
        }
        let _flags = u16::from_be_bytes(buf[field::FLAGS].try_into().expect("2 bytes"));
        Ok(Request {
            command: u16::from_be_bytes(buf[field::TYPE].try_into().expect("2 bytes")).into(),
            handle: buf[field::HANDLE].try_into().expect("8 bytes"),
            offset: u64::from_be_bytes(buf[field::OFFSET].try_into().expect("8 bytes")),
            length: u32::from_be_bytes(buf[field::LENGTH].try_into().expect("4 bytes")),
        })
    }

    /// The request as the kernel sends it (for the tests).
    #[cfg(test)]
    pub fn emit(&self, buf: &mut [u8; REQUEST_LEN]) {
        let code = match self.command {
            Command::Read => 0,
            Command::Write => 1,
            Command::Disconnect => 2,
            Command::Flush => 3,
            Command::Trim => 4,
            Command::Unknown(c) => c,
        };
        buf[field::MAGIC].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
        buf[field::FLAGS].copy_from_slice(&0u16.to_be_bytes());
        buf[field::TYPE].copy_from_slice(&u16::to_be_bytes(code));
        buf[field::HANDLE].copy_from_slice(&self.handle);
        buf[field::OFFSET].copy_from_slice(&self.offset.to_be_bytes());
        buf[field::LENGTH].copy_from_slice(&self.length.to_be_bytes());
    }
}

/// errno values a reply carries (nbd's proto.md: EPERM, EIO, EINVAL...).
pub const EPERM: u32 = 1;
pub const EINVAL: u32 = 22;

/// A reply's header: `error` 0 for success (a read's data follows it).
pub fn emit_reply(handle: [u8; 8], error: u32, buf: &mut [u8; REPLY_LEN]) {
    buf[field::REPLY_MAGIC].copy_from_slice(&REPLY_MAGIC.to_be_bytes());
    buf[field::REPLY_ERROR].copy_from_slice(&error.to_be_bytes());
    buf[field::REPLY_HANDLE].copy_from_slice(&handle);
}

/// What a read-only export answers to `request` that is not a read within `size` bytes:
/// the error for the reply, or None when it is a read to serve.
pub fn refusal(request: &Request, size: u64) -> Option<u32> {
    match request.command {
        Command::Read => {
            let end = request.offset.checked_add(u64::from(request.length));
            (end.is_none_or(|end| end > size)).then_some(EINVAL)
        }
        // Nothing is ever written, so there is nothing to flush.
        Command::Flush => Some(0),
        Command::Write | Command::Trim => Some(EPERM),
        Command::Disconnect | Command::Unknown(_) => Some(EINVAL),
    }
}

/// BLKGETSIZE64: _IOR(0x12, 114, size_t).
const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;

/// The device's size as the kernel sees it (0 until it is connected).
pub fn size(device: &File) -> u64 {
    let mut size: u64 = 0;
    // SAFETY: BLKGETSIZE64 writes one u64.
    let rc = unsafe { libc::ioctl(device.as_raw_fd(), BLKGETSIZE64 as _, &mut size) };
    if rc < 0 {
        0
    } else {
        size
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A read as the 6.1 kernel sends it: magic, type 0, handle, offset 8192, 4096 bytes.
    const READ: [u8; REQUEST_LEN] = [
        0x25, 0x60, 0x95, 0x13, 0x00, 0x00, 0x00, 0x00, 1, 2, 3, 4, 5, 6, 7, 8, 0, 0, 0, 0, 0, 0,
        0x20, 0x00, 0x00, 0x00, 0x10, 0x00,
    ];

    #[test]
    fn a_read_request_parses() {
        let r = Request::parse(&READ).unwrap();
        assert_eq!(
            r,
            Request {
                command: Command::Read,
                handle: [1, 2, 3, 4, 5, 6, 7, 8],
                offset: 8192,
                length: 4096
            }
        );
        let mut buf = [0xa5; REQUEST_LEN];
        r.emit(&mut buf);
        assert_eq!(buf, READ);
    }

    #[test]
    fn commands_and_bad_magic() {
        let mut buf = READ;
        buf[7] = 2;
        assert_eq!(Request::parse(&buf).unwrap().command, Command::Disconnect);
        buf[7] = 9;
        assert_eq!(Request::parse(&buf).unwrap().command, Command::Unknown(9));
        // Flags (FUA and the like) in the upper half do not change the command.
        buf[5] = 1;
        buf[7] = 0;
        assert_eq!(Request::parse(&buf).unwrap().command, Command::Read);
        buf[0] = 0;
        assert!(Request::parse(&buf).unwrap_err().contains("magic"));
    }

    #[test]
    fn the_reply_header_echoes_the_handle() {
        let mut buf = [0xa5; REPLY_LEN];
        emit_reply([9; 8], EPERM, &mut buf);
        assert_eq!(
            buf,
            [0x67, 0x44, 0x66, 0x98, 0, 0, 0, 1, 9, 9, 9, 9, 9, 9, 9, 9]
        );
    }

    #[test]
    fn a_read_only_export_refuses_the_rest() {
        let read = |offset, length| Request {
            command: Command::Read,
            handle: [0; 8],
            offset,
            length,
        };
        assert_eq!(refusal(&read(0, 4096), 8192), None);
        assert_eq!(refusal(&read(4096, 4096), 8192), None);
        assert_eq!(refusal(&read(4096, 4097), 8192), Some(EINVAL));
        assert_eq!(refusal(&read(u64::MAX, 1), 8192), Some(EINVAL));
        let write = Request {
            command: Command::Write,
            ..read(0, 1)
        };
        assert_eq!(refusal(&write, 8192), Some(EPERM));
        let flush = Request {
            command: Command::Flush,
            ..read(0, 0)
        };
        assert_eq!(refusal(&flush, 8192), Some(0));
    }
}
