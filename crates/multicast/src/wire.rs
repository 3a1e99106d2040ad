//! The carousel's datagram: a fixed 28-byte header and one fragment of the image.
//!
//! ```text
//!  0      4       5      6        8          16      20         22         24      28
//!  | DLMC | ver=1 | kind | length | session  | block | fragment | reserved | round | payload
//!  magic          1=data  payload   u64        u32     u16        0          u32
//!                         bytes
//! ```
//!
//! Integers are big-endian. [`Packet::parse`] borrows from the datagram, never panics, and
//! refuses anything that is not exactly one well-formed data packet of this version: a
//! datagram from another program on the group's port, a truncated or padded one, one from a
//! later protocol version. Whether the packet belongs to the seat's session and layout is the
//! [`crate::Receiver`]'s question; whether its bytes are the image's is the block digest's.

use std::fmt;

/// Byte ranges of the header fields.
mod field {
    pub type Field = core::ops::Range<usize>;
    pub const MAGIC: Field = 0..4;
    pub const VERSION: usize = 4;
    pub const KIND: usize = 5;
    pub const LENGTH: Field = 6..8;
    pub const SESSION: Field = 8..16;
    pub const BLOCK: Field = 16..20;
    pub const FRAGMENT: Field = 20..22;
    pub const RESERVED: Field = 22..24;
    pub const ROUND: Field = 24..28;
    pub const PAYLOAD: usize = 28;
}

/// The first bytes of every packet.
pub const MAGIC: [u8; 4] = *b"DLMC";
/// The protocol version this code speaks.
pub const VERSION: u8 = 1;
/// Bytes of the header.
pub const HEADER_LEN: usize = field::PAYLOAD;

/// The kind of a packet (only data so far; the byte leaves room for announcements).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A fragment of the image.
    Data,
    /// A kind this implementation does not know.
    Unknown(u8),
}

impl From<u8> for Kind {
    fn from(v: u8) -> Kind {
        match v {
            1 => Kind::Data,
            other => Kind::Unknown(other),
        }
    }
}

impl From<Kind> for u8 {
    fn from(k: Kind) -> u8 {
        match k {
            Kind::Data => 1,
            Kind::Unknown(other) => other,
        }
    }
}

/// One data packet: which fragment of which block of which session, and its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet<'a> {
    /// The sending session (the join answer names it).
    pub session: u64,
    /// Block number in the image.
    pub block: u32,
    /// Fragment number in the block.
    pub fragment: u16,
    /// How many times the sender had gone round the image when it sent this.
    pub round: u32,
    /// The fragment's bytes.
    pub payload: &'a [u8],
}

/// Why a datagram is not a packet of ours.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseError {
    /// Shorter than the header.
    #[error("datagram of {0} bytes is shorter than the {HEADER_LEN}-byte header")]
    Short(usize),
    /// Does not start with [`MAGIC`].
    #[error("not a diskless multicast packet (magic {0:02x?})")]
    Magic([u8; 4]),
    /// Another protocol version.
    #[error("protocol version {0}, this helper speaks {VERSION}")]
    Version(u8),
    /// A kind we do not know.
    #[error("unknown packet kind {0}")]
    Kind(u8),
    /// Reserved bytes that are not zero.
    #[error("reserved header bytes are not zero")]
    Reserved,
    /// The length field disagrees with the datagram.
    #[error("header says {said} payload bytes, the datagram has {got}")]
    Length {
        /// What the header said.
        said: usize,
        /// What followed the header.
        got: usize,
    },
    /// A data packet without data.
    #[error("empty payload")]
    Empty,
}

fn be16(b: &[u8], f: field::Field) -> u16 {
    u16::from_be_bytes(b[f].try_into().expect("2-byte field"))
}

fn be32(b: &[u8], f: field::Field) -> u32 {
    u32::from_be_bytes(b[f].try_into().expect("4-byte field"))
}

impl<'a> Packet<'a> {
    /// Parse a whole datagram (see the module docs for what is refused).
    pub fn parse(datagram: &'a [u8]) -> Result<Packet<'a>, ParseError> {
        if datagram.len() < HEADER_LEN {
            return Err(ParseError::Short(datagram.len()));
        }
        let magic: [u8; 4] = datagram[field::MAGIC].try_into().expect("4 bytes");
        if magic != MAGIC {
            return Err(ParseError::Magic(magic));
        }
        if datagram[field::VERSION] != VERSION {
            return Err(ParseError::Version(datagram[field::VERSION]));
        }
        match Kind::from(datagram[field::KIND]) {
            Kind::Data => {}
            Kind::Unknown(k) => return Err(ParseError::Kind(k)),
        }
        if datagram[field::RESERVED].iter().any(|&b| b != 0) {
            return Err(ParseError::Reserved);
        }
        let said = usize::from(be16(datagram, field::LENGTH));
        let payload = &datagram[field::PAYLOAD..];
        if said != payload.len() {
            return Err(ParseError::Length {
                said,
                got: payload.len(),
            });
        }
        if payload.is_empty() {
            return Err(ParseError::Empty);
        }
        Ok(Packet {
            session: u64::from_be_bytes(datagram[field::SESSION].try_into().expect("8 bytes")),
            block: be32(datagram, field::BLOCK),
            fragment: be16(datagram, field::FRAGMENT),
            round: be32(datagram, field::ROUND),
            payload,
        })
    }

    /// Bytes of the datagram [`Packet::emit`] writes.
    pub fn buffer_len(&self) -> usize {
        HEADER_LEN + self.payload.len()
    }

    /// Write the datagram into the start of `buf` and return its length.
    ///
    /// Panics if `buf` is shorter than [`Packet::buffer_len`] or the payload is longer than
    /// a `u16` counts (a layout's fragment never is).
    pub fn emit(&self, buf: &mut [u8]) -> usize {
        let len = self.buffer_len();
        let buf = &mut buf[..len];
        buf[field::MAGIC].copy_from_slice(&MAGIC);
        buf[field::VERSION] = VERSION;
        buf[field::KIND] = Kind::Data.into();
        let payload_len = u16::try_from(self.payload.len()).expect("a fragment fits a u16");
        buf[field::LENGTH].copy_from_slice(&payload_len.to_be_bytes());
        buf[field::SESSION].copy_from_slice(&self.session.to_be_bytes());
        buf[field::BLOCK].copy_from_slice(&self.block.to_be_bytes());
        buf[field::FRAGMENT].copy_from_slice(&self.fragment.to_be_bytes());
        buf[field::RESERVED].fill(0);
        buf[field::ROUND].copy_from_slice(&self.round.to_be_bytes());
        buf[field::PAYLOAD..].copy_from_slice(self.payload);
        len
    }
}

impl fmt::Display for Packet<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "session {:016x} block {} fragment {} round {} ({} bytes)",
            self.session,
            self.block,
            self.fragment,
            self.round,
            self.payload.len()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static BYTES: [u8; 31] = [
        b'D', b'L', b'M', b'C', 1, 1, 0x00, 0x03, // magic, version, kind, length 3
        0, 0, 0, 0, 0, 0, 0x12, 0x34, // session
        0, 0, 0x01, 0x02, // block 258
        0, 5, 0, 0, // fragment 5, reserved
        0, 0, 0, 9, // round 9
        0xaa, 0xbb, 0xcc,
    ];

    fn packet() -> Packet<'static> {
        Packet {
            session: 0x1234,
            block: 258,
            fragment: 5,
            round: 9,
            payload: &BYTES[28..],
        }
    }

    #[test]
    fn test_parse() {
        assert_eq!(Packet::parse(&BYTES), Ok(packet()));
    }

    #[test]
    fn test_emit() {
        let mut buf = [0xa5u8; 40];
        assert_eq!(packet().emit(&mut buf), 31);
        assert_eq!(&buf[..31], &BYTES[..]);
        assert!(
            buf[31..].iter().all(|&b| b == 0xa5),
            "wrote past the packet"
        );
    }

    #[test]
    fn a_truncated_or_padded_packet_is_refused() {
        assert_eq!(
            Packet::parse(&BYTES[..30]),
            Err(ParseError::Length { said: 3, got: 2 })
        );
        assert_eq!(Packet::parse(&BYTES[..20]), Err(ParseError::Short(20)));
        let mut padded = BYTES.to_vec();
        padded.push(0);
        assert_eq!(
            Packet::parse(&padded),
            Err(ParseError::Length { said: 3, got: 4 })
        );
    }

    #[test]
    fn foreign_and_future_datagrams_are_refused() {
        let mut other = BYTES;
        other[0] = b'X';
        assert!(matches!(Packet::parse(&other), Err(ParseError::Magic(_))));
        let mut later = BYTES;
        later[4] = 2;
        assert_eq!(Packet::parse(&later), Err(ParseError::Version(2)));
        let mut kind = BYTES;
        kind[5] = 7;
        assert_eq!(Packet::parse(&kind), Err(ParseError::Kind(7)));
        let mut reserved = BYTES;
        reserved[23] = 1;
        assert_eq!(Packet::parse(&reserved), Err(ParseError::Reserved));
        let mut empty = BYTES[..28].to_vec();
        empty[7] = 0;
        assert_eq!(Packet::parse(&empty), Err(ParseError::Empty));
    }

    #[test]
    fn errors_say_what_is_wrong() {
        assert_eq!(
            Packet::parse(&BYTES[..30]).unwrap_err().to_string(),
            "header says 3 payload bytes, the datagram has 2"
        );
    }

    #[test]
    fn parse_never_panics_on_any_prefix_or_byte_flip() {
        for len in 0..BYTES.len() {
            let _ = Packet::parse(&BYTES[..len]);
        }
        for i in 0..BYTES.len() {
            let mut b = BYTES;
            b[i] ^= 0xff;
            if let Ok(p) = Packet::parse(&b) {
                let mut out = [0u8; 31];
                assert_eq!(p.emit(&mut out), 31);
                assert_eq!(out, b, "parse then emit gives the datagram back");
            }
        }
    }
}
