//! NBD configured through its generic-netlink family ("nbd"), as nbd-client does without
//! `-nonetlink`: the messages (sans-IO, below) and the few socket calls that send them.
//!
//! Why not the ioctls: with them a thread sits in NBD_DO_IT for as long as the device
//! serves, and a signal that reaches it ends the device. systemd-shutdown's
//! broadcast_signal() sends every process SIGSTOP then SIGCONT around its SIGTERM and
//! SIGKILL rounds (its src/shared/killall.c; the '@' of a root-storage daemon spares it
//! SIGTERM and SIGKILL only): the pending signal made nbd_start_device_ioctl() return, and
//! the kernel shut nbd0's socket down ("block nbd0: shutting down sockets") with the root
//! still on it. NBD_CMD_CONNECT returns once the device runs and no thread is left in the
//! kernel: a stop signal only pauses the helper.
//!
//! A crate would do this (nbd-netlink), but brings neli and anyhow into a static helper
//! that needs four messages. Generic netlink (include/uapi/linux/netlink.h, genetlink.h),
//! in the host's byte order:
//!
//! ```text
//! nlmsghdr   len (4) | type (2): the family's id | flags (2) | seq (4) | pid (4)
//! genlmsghdr cmd (1) | version (1) | reserved (2)
//! nlattr     len (2): header and payload, unpadded | type (2) | payload, padded to 4
//! ```
//!
//! The family's id is asked of the controller ("nlctrl", id 0x10, CTRL_CMD_GETFAMILY). The
//! numbers are include/uapi/linux/nbd-netlink.h's, the same in Debian 12's kernel (6.1) and
//! 13's (6.12).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Bytes of a netlink message header.
const HEADER_LEN: usize = 16;
/// Bytes of a generic-netlink header.
const GENL_HEADER_LEN: usize = 4;
/// Bytes of an attribute's header.
const ATTR_HEADER_LEN: usize = 4;

/// Byte ranges of the headers' fields.
mod field {
    use std::ops::Range;
    pub const LEN: Range<usize> = 0..4;
    pub const TYPE: Range<usize> = 4..6;
    pub const FLAGS: Range<usize> = 6..8;
    pub const SEQ: Range<usize> = 8..12;
    pub const PID: Range<usize> = 12..16;
    pub const GENL_CMD: usize = 16;
    pub const GENL_VERSION: usize = 17;
    pub const ATTR_LEN: Range<usize> = 0..2;
    pub const ATTR_TYPE: Range<usize> = 2..4;
    /// An NLMSG_ERROR's payload: the negative errno (0: an acknowledgement).
    pub const ERROR_CODE: Range<usize> = 0..4;
}

// netlink.h.
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLMSG_ERROR: u16 = 0x2;
const NLMSG_DONE: u16 = 0x3;
/// An attribute whose payload is attributes.
const NLA_F_NESTED: u16 = 0x8000;
const NLA_TYPE_MASK: u16 = 0x3fff;

// genetlink.h: the controller.
const GENL_ID_CTRL: u16 = 0x10;
const CTRL_CMD_GETFAMILY: u8 = 3;
const CTRL_VERSION: u8 = 1;
const CTRL_ATTR_FAMILY_ID: u16 = 1;
const CTRL_ATTR_FAMILY_NAME: u16 = 2;

// nbd-netlink.h.
const NBD_FAMILY_NAME: &str = "nbd";
const NBD_VERSION: u8 = 1;
const NBD_CMD_CONNECT: u8 = 1;
const NBD_CMD_DISCONNECT: u8 = 2;
const NBD_ATTR_INDEX: u16 = 1;
const NBD_ATTR_SIZE_BYTES: u16 = 2;
const NBD_ATTR_BLOCK_SIZE_BYTES: u16 = 3;
const NBD_ATTR_SERVER_FLAGS: u16 = 5;
const NBD_ATTR_SOCKETS: u16 = 7;
const NBD_SOCK_ITEM: u16 = 1;
const NBD_SOCK_FD: u16 = 1;
/// nbd.h: NBD_FLAG_HAS_FLAGS | NBD_FLAG_READ_ONLY (the kernel sets the disk read-only).
const FLAGS_READ_ONLY: u64 = (1 << 0) | (1 << 1);

/// An attribute: header, payload, padding to 4 bytes.
fn attr(kind: u16, payload: &[u8]) -> Vec<u8> {
    let len = ATTR_HEADER_LEN + payload.len();
    let mut out = Vec::with_capacity(len.next_multiple_of(4));
    out.extend_from_slice(&(len as u16).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(payload);
    out.resize(len.next_multiple_of(4), 0);
    out
}

fn nested(kind: u16, attrs: &[Vec<u8>]) -> Vec<u8> {
    attr(kind | NLA_F_NESTED, &attrs.concat())
}

/// A generic-netlink request to `family` (acknowledged by the kernel: NLM_F_ACK).
fn request(family: u16, seq: u32, cmd: u8, version: u8, attrs: &[Vec<u8>]) -> Vec<u8> {
    let attrs = attrs.concat();
    let mut out = vec![0u8; HEADER_LEN + GENL_HEADER_LEN];
    let len = (out.len() + attrs.len()) as u32;
    out[field::LEN].copy_from_slice(&len.to_ne_bytes());
    out[field::TYPE].copy_from_slice(&family.to_ne_bytes());
    out[field::FLAGS].copy_from_slice(&(NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
    out[field::SEQ].copy_from_slice(&seq.to_ne_bytes());
    // pid 0: the kernel addresses the reply to the sending socket.
    out[field::PID].copy_from_slice(&0u32.to_ne_bytes());
    out[field::GENL_CMD] = cmd;
    out[field::GENL_VERSION] = version;
    out.extend_from_slice(&attrs);
    out
}

/// CTRL_CMD_GETFAMILY for `name`.
fn get_family(seq: u32, name: &str) -> Vec<u8> {
    let name = [name.as_bytes(), b"\0"].concat();
    request(
        GENL_ID_CTRL,
        seq,
        CTRL_CMD_GETFAMILY,
        CTRL_VERSION,
        &[attr(CTRL_ATTR_FAMILY_NAME, &name)],
    )
}

/// NBD_CMD_CONNECT: device `index` serves a read-only disk of `size` bytes in
/// `block_size` blocks over the socket `fd` (of the sending process).
fn connect_request(
    family: u16,
    seq: u32,
    index: u32,
    size: u64,
    block_size: u64,
    fd: u32,
) -> Vec<u8> {
    request(
        family,
        seq,
        NBD_CMD_CONNECT,
        NBD_VERSION,
        &[
            attr(NBD_ATTR_INDEX, &index.to_ne_bytes()),
            attr(NBD_ATTR_SIZE_BYTES, &size.to_ne_bytes()),
            attr(NBD_ATTR_BLOCK_SIZE_BYTES, &block_size.to_ne_bytes()),
            attr(NBD_ATTR_SERVER_FLAGS, &FLAGS_READ_ONLY.to_ne_bytes()),
            nested(
                NBD_ATTR_SOCKETS,
                &[nested(
                    NBD_SOCK_ITEM,
                    &[attr(NBD_SOCK_FD, &fd.to_ne_bytes())],
                )],
            ),
        ],
    )
}

/// NBD_CMD_DISCONNECT of device `index`: the kernel sends the server NBD_CMD_DISC and lets
/// go of the socket.
fn disconnect_request(family: u16, seq: u32, index: u32) -> Vec<u8> {
    request(
        family,
        seq,
        NBD_CMD_DISCONNECT,
        NBD_VERSION,
        &[attr(NBD_ATTR_INDEX, &index.to_ne_bytes())],
    )
}

/// The attributes in `buf`, `(type, payload)`; stops at the first malformed one.
fn attrs(mut buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        let len = u16::from_ne_bytes(buf.get(field::ATTR_LEN)?.try_into().ok()?) as usize;
        let kind = u16::from_ne_bytes(buf.get(field::ATTR_TYPE)?.try_into().ok()?);
        let payload = buf.get(ATTR_HEADER_LEN..len)?;
        buf = buf.get(len.next_multiple_of(4)..).unwrap_or(&[]);
        Some((kind & NLA_TYPE_MASK, payload))
    })
}

/// What one message of the kernel's answer says.
#[derive(Debug, PartialEq, Eq)]
enum Answer<'a> {
    /// A reply to `seq`: its generic-netlink payload (header and attributes).
    Reply { seq: u32, payload: &'a [u8] },
    /// The end of the answer to `seq`: 0 when done, else the (positive) errno.
    Done { seq: u32, errno: i32 },
}

/// The messages in a datagram the kernel sent; stops at the first malformed one.
fn answers(mut buf: &[u8]) -> Vec<Answer<'_>> {
    let mut out = Vec::new();
    while buf.len() >= HEADER_LEN {
        let len = u32::from_ne_bytes(buf[field::LEN].try_into().expect("4 bytes")) as usize;
        let Some(payload) = buf.get(HEADER_LEN..len) else {
            break;
        };
        let kind = u16::from_ne_bytes(buf[field::TYPE].try_into().expect("2 bytes"));
        let seq = u32::from_ne_bytes(buf[field::SEQ].try_into().expect("4 bytes"));
        out.push(match kind {
            NLMSG_ERROR => {
                let Some(code) = payload.get(field::ERROR_CODE) else {
                    break;
                };
                let code = i32::from_ne_bytes(code.try_into().expect("4 bytes"));
                Answer::Done { seq, errno: -code }
            }
            NLMSG_DONE => Answer::Done { seq, errno: 0 },
            _ => Answer::Reply { seq, payload },
        });
        buf = buf.get(len.next_multiple_of(4)..).unwrap_or(&[]);
    }
    out
}

/// The family id in a CTRL_CMD_GETFAMILY reply's payload.
fn family_id(payload: &[u8]) -> Option<u16> {
    attrs(payload.get(GENL_HEADER_LEN..)?)
        .find(|(kind, _)| *kind == CTRL_ATTR_FAMILY_ID)
        .and_then(|(_, id)| Some(u16::from_ne_bytes(id.try_into().ok()?)))
}

/// A generic-netlink socket: send a request, read its answer.
struct Socket {
    fd: OwnedFd,
    seq: u32,
}

impl Socket {
    fn open() -> io::Result<Socket> {
        // SAFETY: socket() takes no pointers; the fd is owned from here on.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_GENERIC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a new fd no one else owns.
        Ok(Socket {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            seq: 0,
        })
    }

    /// Send the request `build(seq)` to the kernel; its replies' payloads, or the errno it
    /// answered with.
    fn ask(&mut self, build: impl FnOnce(u32) -> Vec<u8>) -> io::Result<Vec<Vec<u8>>> {
        self.seq += 1;
        let message = build(self.seq);
        // SAFETY: a zeroed sockaddr_nl is the kernel's address (pid 0, no groups).
        let mut to: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        to.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: the buffer and address are valid for the lengths given.
        let sent = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                message.as_ptr().cast(),
                message.len(),
                0,
                (&raw const to).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut replies = Vec::new();
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            // SAFETY: recv writes at most buf.len() bytes into buf.
            let got =
                unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if got < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            for answer in answers(&buf[..got as usize]) {
                match answer {
                    Answer::Reply { seq, payload } if seq == self.seq => {
                        replies.push(payload.to_vec())
                    }
                    Answer::Done { seq, errno } if seq == self.seq => {
                        return match errno {
                            0 => Ok(replies),
                            errno => Err(io::Error::from_raw_os_error(errno)),
                        };
                    }
                    _ => {}
                }
            }
        }
    }

    /// The id of the family "nbd" (registered when the nbd module loads).
    fn nbd_family(&mut self) -> io::Result<u16> {
        let replies = self.ask(|seq| get_family(seq, NBD_FAMILY_NAME))?;
        replies
            .iter()
            .find_map(|payload| family_id(payload))
            .ok_or_else(|| io::Error::other("the controller named no id for the family nbd"))
    }
}

/// Device `/dev/nbd{index}` serves a read-only disk of `size` bytes in `block_size` blocks
/// over `socket` (the kernel takes its own reference: the caller may close it). The disk
/// has its size when this returns. EBUSY: the device is in use, or open (opening a device
/// gives it a configuration).
pub fn connect(index: u32, socket: RawFd, size: u64, block_size: u64) -> io::Result<()> {
    let mut nl = Socket::open()?;
    let family = nl.nbd_family()?;
    nl.ask(|seq| connect_request(family, seq, index, size, block_size, socket as u32))?;
    Ok(())
}

/// Disconnect device `/dev/nbd{index}`: the server gets NBD_CMD_DISC.
pub fn disconnect(index: u32) -> io::Result<()> {
    let mut nl = Socket::open()?;
    let family = nl.nbd_family()?;
    nl.ask(|seq| disconnect_request(family, seq, index))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// NBD_CMD_CONNECT of nbd2 as x86_64 sends it: family 0x1d, seq 7, 1 MiB in 4 KiB
    /// blocks, read-only, over fd 5.
    #[rustfmt::skip]
    const CONNECT: [u8; 80] = [
        // nlmsghdr: 80 bytes, type 0x1d, REQUEST|ACK, seq 7, pid 0.
        80, 0, 0, 0, 0x1d, 0, 5, 0, 7, 0, 0, 0, 0, 0, 0, 0,
        // genlmsghdr: NBD_CMD_CONNECT, version 1.
        1, 1, 0, 0,
        // NBD_ATTR_INDEX (1): u32 2.
        8, 0, 1, 0, 2, 0, 0, 0,
        // NBD_ATTR_SIZE_BYTES (2): u64 1 MiB.
        12, 0, 2, 0, 0, 0, 0x10, 0, 0, 0, 0, 0,
        // NBD_ATTR_BLOCK_SIZE_BYTES (3): u64 4096.
        12, 0, 3, 0, 0, 0x10, 0, 0, 0, 0, 0, 0,
        // NBD_ATTR_SERVER_FLAGS (5): HAS_FLAGS | READ_ONLY.
        12, 0, 5, 0, 3, 0, 0, 0, 0, 0, 0, 0,
        // NBD_ATTR_SOCKETS (7, nested) > NBD_SOCK_ITEM (1, nested) > NBD_SOCK_FD (1): 5.
        16, 0, 7, 0x80, 12, 0, 1, 0x80, 8, 0, 1, 0, 5, 0, 0, 0,
    ];

    #[test]
    #[cfg(target_endian = "little")]
    fn a_connect_request_is_built() {
        assert_eq!(connect_request(0x1d, 7, 2, 1 << 20, 4096, 5), CONNECT);
        assert_eq!(
            disconnect_request(0x1d, 8, 2),
            [
                28, 0, 0, 0, 0x1d, 0, 5, 0, 8, 0, 0, 0, 0, 0, 0, 0, 2, 1, 0, 0, 8, 0, 1, 0, 2, 0,
                0, 0
            ]
        );
    }

    #[test]
    #[cfg(target_endian = "little")]
    fn the_family_is_asked_by_name() {
        assert_eq!(
            get_family(1, "nbd"),
            [
                28, 0, 0, 0, 0x10, 0, 5, 0, 1, 0, 0, 0, 0, 0, 0, 0, 3, 1, 0, 0,
                // CTRL_ATTR_FAMILY_NAME (2): "nbd\0", 8 bytes.
                8, 0, 2, 0, b'n', b'b', b'd', 0
            ]
        );
        // "nbd" padded: an attribute's length leaves the padding out.
        assert_eq!(attr(2, b"ab"), [6, 0, 2, 0, b'a', b'b', 0, 0]);
    }

    /// The controller's reply (abridged: name, id, version), then the acknowledgement,
    /// in one datagram.
    #[test]
    #[cfg(target_endian = "little")]
    fn the_family_id_and_the_acknowledgement_parse() {
        let mut reply = request(
            GENL_ID_CTRL,
            4,
            1,
            2,
            &[
                attr(CTRL_ATTR_FAMILY_NAME, b"nbd\0"),
                attr(CTRL_ATTR_FAMILY_ID, &0x1du16.to_ne_bytes()),
                attr(3, &1u32.to_ne_bytes()),
            ],
        );
        // An NLMSG_ERROR with code 0 (an acknowledgement) and the request's header.
        let mut ack = vec![36, 0, 0, 0, 2, 0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        ack.extend_from_slice(&reply[..16]);
        reply.extend_from_slice(&ack);
        let got = answers(&reply);
        let [Answer::Reply { seq: 4, payload }, Answer::Done { seq: 4, errno: 0 }] = &got[..]
        else {
            panic!("{got:?}");
        };
        assert_eq!(family_id(payload), Some(0x1d));
        // EBUSY (16): a device in use.
        ack[16..20].copy_from_slice(&(-16i32).to_ne_bytes());
        assert_eq!(answers(&ack), [Answer::Done { seq: 4, errno: 16 }]);
        // Truncated: nothing.
        assert_eq!(answers(&ack[..20]), []);
        assert_eq!(family_id(&[1, 2, 0, 0, 8, 0, 1]), None);
    }

    #[test]
    fn nested_attributes_are_walked_with_their_flag_masked() {
        let sockets = nested(
            NBD_ATTR_SOCKETS,
            &[nested(NBD_SOCK_ITEM, &[attr(NBD_SOCK_FD, &[5, 0, 0, 0])])],
        );
        let (kind, items) = attrs(&sockets).next().unwrap();
        assert_eq!(kind, NBD_ATTR_SOCKETS);
        let (kind, item) = attrs(items).next().unwrap();
        assert_eq!(kind, NBD_SOCK_ITEM);
        assert_eq!(
            attrs(item).collect::<Vec<_>>(),
            [(NBD_SOCK_FD, &[5u8, 0, 0, 0][..])]
        );
    }
}
