//! TFTP packets on the wire: parse and emit, nothing else.
//!
//! Every TFTP packet starts with a 2-byte big-endian opcode (RFC 1350 §5):
//!
//! ```text
//!  RRQ/WRQ  | 01/02 | filename | 0 | mode | 0 | opt1 | 0 | value1 | 0 | ...
//!  DATA     | 03    | block #  | data (0..=blksize bytes)
//!  ACK      | 04    | block #
//!  ERROR    | 05    | code     | message | 0
//!  OACK     | 06    | opt1 | 0 | value1 | 0 | ...          (RFC 2347)
//! ```
//!
//! [`Packet::parse`] borrows from the datagram and never panics; [`Packet::emit`]
//! writes into a buffer of at least [`Packet::buffer_len`] bytes. Option values are
//! kept as text here; [`RequestOptions`] interprets the ones we know (RFC 2348 blksize,
//! RFC 2349 timeout and tsize, RFC 7440 windowsize) and drops the rest.

use std::fmt;

/// Byte ranges of the fixed header fields.
mod field {
    pub type Field = core::ops::Range<usize>;
    /// Opcode of every packet.
    pub const OPCODE: Field = 0..2;
    /// Block number of DATA and ACK.
    pub const BLOCK: Field = 2..4;
    /// Error code of ERROR.
    pub const ERROR_CODE: Field = 2..4;
    /// Start of DATA payload, ERROR message, RRQ/WRQ filename.
    pub const DATA: usize = 4;
    /// Start of the RRQ/WRQ filename and OACK options.
    pub const STRINGS: usize = 2;
}

/// Length of the DATA header (opcode + block number).
pub const DATA_HEADER_LEN: usize = field::DATA;

/// Default block size of RFC 1350.
pub const DEFAULT_BLKSIZE: u16 = 512;
/// Smallest block size RFC 2348 allows.
pub const MIN_BLKSIZE: u16 = 8;
/// Largest block size RFC 2348 allows (65535 minus IP and UDP headers).
pub const MAX_BLKSIZE: u16 = 65464;

macro_rules! enum_with_unknown {
    ($(#[$m:meta])* pub enum $name:ident($ty:ty) { $($(#[$vm:meta])* $var:ident = $val:expr),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vm])* $var,)+
            /// A value this implementation does not know.
            Unknown($ty),
        }
        impl From<$ty> for $name {
            fn from(v: $ty) -> Self {
                match v { $($val => $name::$var,)+ other => $name::Unknown(other) }
            }
        }
        impl From<$name> for $ty {
            fn from(v: $name) -> $ty {
                match v { $($name::$var => $val,)+ $name::Unknown(other) => other }
            }
        }
    };
}

enum_with_unknown! {
    /// TFTP opcode (RFC 1350 §5, RFC 2347).
    pub enum Opcode(u16) {
        /// Read request.
        Rrq = 1,
        /// Write request.
        Wrq = 2,
        /// Data block.
        Data = 3,
        /// Acknowledgement.
        Ack = 4,
        /// Error.
        Error = 5,
        /// Option acknowledgement (RFC 2347).
        Oack = 6,
    }
}

enum_with_unknown! {
    /// Error codes (RFC 1350 appendix, RFC 2347 for 8).
    pub enum ErrorCode(u16) {
        /// Not defined, see error message.
        NotDefined = 0,
        /// File not found.
        FileNotFound = 1,
        /// Access violation.
        AccessViolation = 2,
        /// Disk full or allocation exceeded.
        DiskFull = 3,
        /// Illegal TFTP operation.
        IllegalOperation = 4,
        /// Unknown transfer ID.
        UnknownTid = 5,
        /// File already exists.
        FileExists = 6,
        /// No such user.
        NoSuchUser = 7,
        /// The client or server refuses the negotiated options (RFC 2347).
        OptionNegotiation = 8,
    }
}

/// Transfer mode of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Raw bytes.
    Octet,
    /// Text: line ends become CR LF, a bare CR becomes CR NUL (RFC 764).
    Netascii,
    /// The obsolete "mail" mode.
    Mail,
}

impl Mode {
    fn parse(s: &[u8]) -> Option<Mode> {
        if s.eq_ignore_ascii_case(b"octet") {
            Some(Mode::Octet)
        } else if s.eq_ignore_ascii_case(b"netascii") {
            Some(Mode::Netascii)
        } else if s.eq_ignore_ascii_case(b"mail") {
            Some(Mode::Mail)
        } else {
            None
        }
    }

    /// The mode's name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Octet => "octet",
            Mode::Netascii => "netascii",
            Mode::Mail => "mail",
        }
    }
}

/// Why a datagram is not a TFTP packet.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseError {
    /// Shorter than the fixed part of its opcode.
    #[error("packet truncated: {len} bytes")]
    Truncated {
        /// Length of the datagram.
        len: usize,
    },
    /// Opcode we do not know.
    #[error("unknown opcode {0}")]
    UnknownOpcode(u16),
    /// A string field lacks its NUL terminator.
    #[error("{0} is not NUL-terminated")]
    Unterminated(&'static str),
    /// Mode is none of octet, netascii, mail.
    #[error("unknown transfer mode {0:?}")]
    UnknownMode(String),
    /// The request names no file.
    #[error("empty filename")]
    EmptyFilename,
}

/// One option: name and value as sent, without their NULs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawOption<'a> {
    /// Option name (case-insensitive per RFC 2347).
    pub name: &'a [u8],
    /// Option value.
    pub value: &'a [u8],
}

/// Read or write request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request<'a> {
    /// File name bytes as sent (not necessarily UTF-8).
    pub filename: &'a [u8],
    /// Transfer mode.
    pub mode: Mode,
    /// Options in the order the client sent them.
    pub options: Vec<RawOption<'a>>,
}

/// A TFTP packet, borrowing from the datagram it was parsed from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet<'a> {
    /// Read request.
    Rrq(Request<'a>),
    /// Write request.
    Wrq(Request<'a>),
    /// Data block.
    Data {
        /// Block number (wraps past 65535).
        block: u16,
        /// Payload, at most the negotiated block size.
        data: &'a [u8],
    },
    /// Acknowledgement of a block (0 acknowledges an OACK).
    Ack {
        /// Block number.
        block: u16,
    },
    /// Error; ends the transfer.
    Error {
        /// Error code.
        code: ErrorCode,
        /// Human-readable message.
        message: &'a [u8],
    },
    /// Option acknowledgement.
    Oack {
        /// Accepted options.
        options: Vec<RawOption<'a>>,
    },
}

fn be16(b: &[u8], f: field::Field) -> u16 {
    u16::from_be_bytes([b[f.start], b[f.start + 1]])
}

/// Splits `buf` at the next NUL: (before, after).
fn cstr<'a>(buf: &'a [u8], what: &'static str) -> Result<(&'a [u8], &'a [u8]), ParseError> {
    let end = buf
        .iter()
        .position(|&b| b == 0)
        .ok_or(ParseError::Unterminated(what))?;
    Ok((&buf[..end], &buf[end + 1..]))
}

fn parse_options(mut rest: &[u8]) -> Vec<RawOption<'_>> {
    let mut options = Vec::new();
    while !rest.is_empty() {
        // Some PXE ROMs pad requests with trailing NULs; an empty name ends the list.
        if rest[0] == 0 {
            break;
        }
        // An unterminated name, or a name without a value, is ignored like an
        // unknown option rather than failing the whole request.
        let Ok((name, r)) = cstr(rest, "option name") else {
            break;
        };
        let Ok((value, r)) = cstr(r, "option value") else {
            break;
        };
        options.push(RawOption { name, value });
        rest = r;
    }
    options
}

impl<'a> Packet<'a> {
    /// Parses one datagram.
    pub fn parse(buf: &'a [u8]) -> Result<Packet<'a>, ParseError> {
        if buf.len() < field::OPCODE.end {
            return Err(ParseError::Truncated { len: buf.len() });
        }
        let opcode = Opcode::from(be16(buf, field::OPCODE));
        let need_block = |buf: &[u8]| {
            if buf.len() < field::BLOCK.end {
                Err(ParseError::Truncated { len: buf.len() })
            } else {
                Ok(())
            }
        };
        match opcode {
            Opcode::Rrq | Opcode::Wrq => {
                let (filename, rest) = cstr(&buf[field::STRINGS..], "filename")?;
                let (mode, rest) = cstr(rest, "mode")?;
                if filename.is_empty() {
                    return Err(ParseError::EmptyFilename);
                }
                let mode = Mode::parse(mode).ok_or_else(|| {
                    ParseError::UnknownMode(String::from_utf8_lossy(mode).into_owned())
                })?;
                let req = Request {
                    filename,
                    mode,
                    options: parse_options(rest),
                };
                Ok(if opcode == Opcode::Rrq {
                    Packet::Rrq(req)
                } else {
                    Packet::Wrq(req)
                })
            }
            Opcode::Data => {
                need_block(buf)?;
                Ok(Packet::Data {
                    block: be16(buf, field::BLOCK),
                    data: &buf[field::DATA..],
                })
            }
            Opcode::Ack => {
                need_block(buf)?;
                // Trailing bytes after the block number are tolerated.
                Ok(Packet::Ack {
                    block: be16(buf, field::BLOCK),
                })
            }
            Opcode::Error => {
                need_block(buf)?;
                let rest = &buf[field::DATA..];
                // A missing NUL at the end of the message is common; take it all.
                let message = match rest.iter().position(|&b| b == 0) {
                    Some(end) => &rest[..end],
                    None => rest,
                };
                Ok(Packet::Error {
                    code: ErrorCode::from(be16(buf, field::ERROR_CODE)),
                    message,
                })
            }
            Opcode::Oack => Ok(Packet::Oack {
                options: parse_options(&buf[field::STRINGS..]),
            }),
            Opcode::Unknown(op) => Err(ParseError::UnknownOpcode(op)),
        }
    }

    /// The opcode of this packet.
    pub fn opcode(&self) -> Opcode {
        match self {
            Packet::Rrq(_) => Opcode::Rrq,
            Packet::Wrq(_) => Opcode::Wrq,
            Packet::Data { .. } => Opcode::Data,
            Packet::Ack { .. } => Opcode::Ack,
            Packet::Error { .. } => Opcode::Error,
            Packet::Oack { .. } => Opcode::Oack,
        }
    }

    /// Bytes [`emit`](Self::emit) writes.
    pub fn buffer_len(&self) -> usize {
        let opts =
            |o: &[RawOption]| -> usize { o.iter().map(|o| o.name.len() + o.value.len() + 2).sum() };
        match self {
            Packet::Rrq(r) | Packet::Wrq(r) => {
                2 + r.filename.len() + 1 + r.mode.as_str().len() + 1 + opts(&r.options)
            }
            Packet::Data { data, .. } => field::DATA + data.len(),
            Packet::Ack { .. } => field::DATA,
            Packet::Error { message, .. } => field::DATA + message.len() + 1,
            Packet::Oack { options } => 2 + opts(options),
        }
    }

    /// Writes the packet to the start of `buf` and returns its length.
    ///
    /// # Panics
    /// If `buf` is shorter than [`buffer_len`](Self::buffer_len).
    pub fn emit(&self, buf: &mut [u8]) -> usize {
        let len = self.buffer_len();
        let buf = &mut buf[..len];
        buf[field::OPCODE].copy_from_slice(&u16::from(self.opcode()).to_be_bytes());
        let mut w = Writer {
            buf,
            at: field::STRINGS,
        };
        match self {
            Packet::Rrq(r) | Packet::Wrq(r) => {
                w.cstr(r.filename);
                w.cstr(r.mode.as_str().as_bytes());
                for o in &r.options {
                    w.cstr(o.name);
                    w.cstr(o.value);
                }
            }
            Packet::Data { block, data } => {
                w.put(&block.to_be_bytes());
                w.put(data);
            }
            Packet::Ack { block } => w.put(&block.to_be_bytes()),
            Packet::Error { code, message } => {
                w.put(&u16::from(*code).to_be_bytes());
                w.cstr(message);
            }
            Packet::Oack { options } => {
                for o in options {
                    w.cstr(o.name);
                    w.cstr(o.value);
                }
            }
        }
        debug_assert_eq!(w.at, len);
        len
    }

    /// Emits into a new vector.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = vec![0; self.buffer_len()];
        self.emit(&mut v);
        v
    }
}

struct Writer<'b> {
    buf: &'b mut [u8],
    at: usize,
}

impl Writer<'_> {
    fn put(&mut self, b: &[u8]) {
        self.buf[self.at..self.at + b.len()].copy_from_slice(b);
        self.at += b.len();
    }
    fn cstr(&mut self, b: &[u8]) {
        self.put(b);
        self.put(&[0]);
    }
}

/// Writes a DATA header for `block` into `buf[..4]`; the payload follows at
/// [`DATA_HEADER_LEN`]. Lets a sender read file bytes straight into its send buffer.
pub fn emit_data_header(buf: &mut [u8], block: u16) {
    buf[field::OPCODE].copy_from_slice(&u16::from(Opcode::Data).to_be_bytes());
    buf[field::BLOCK].copy_from_slice(&block.to_be_bytes());
}

/// Emits an ERROR packet with a text message.
pub fn error_packet(code: ErrorCode, message: &str) -> Vec<u8> {
    Packet::Error {
        code,
        message: message.as_bytes(),
    }
    .to_vec()
}

/// The options of a request we understand, already range-checked.
///
/// Values out of range are dropped as if not sent, except a blksize above
/// [`MAX_BLKSIZE`], which RFC 2348 lets the server answer with a smaller size.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RequestOptions {
    /// RFC 2348 block size, clamped to [`MAX_BLKSIZE`].
    pub blksize: Option<u16>,
    /// RFC 2349 timeout in seconds (1..=255).
    pub timeout: Option<u8>,
    /// RFC 2349 transfer size (0 in a read request: "tell me").
    pub tsize: Option<u64>,
    /// RFC 7440 window size (1..=65535).
    pub windowsize: Option<u16>,
}

/// Option names we know.
pub mod option {
    /// RFC 2348.
    pub const BLKSIZE: &str = "blksize";
    /// RFC 2349.
    pub const TIMEOUT: &str = "timeout";
    /// RFC 2349.
    pub const TSIZE: &str = "tsize";
    /// RFC 7440.
    pub const WINDOWSIZE: &str = "windowsize";
}

fn parse_decimal(v: &[u8]) -> Option<u64> {
    // Strict digits: "+5", " 5" or an empty value are not numbers.
    if v.is_empty() || v.len() > 20 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

impl RequestOptions {
    /// Picks the known options out of a request (or an OACK); unknown ones are ignored.
    pub fn from_raw(raw: &[RawOption<'_>]) -> RequestOptions {
        let mut o = RequestOptions::default();
        for opt in raw {
            let Some(v) = parse_decimal(opt.value) else {
                continue;
            };
            let name = opt.name;
            if name.eq_ignore_ascii_case(option::BLKSIZE.as_bytes()) {
                if v >= u64::from(MIN_BLKSIZE) {
                    o.blksize = Some(v.min(u64::from(MAX_BLKSIZE)) as u16);
                }
            } else if name.eq_ignore_ascii_case(option::TIMEOUT.as_bytes()) {
                if (1..=255).contains(&v) {
                    o.timeout = Some(v as u8);
                }
            } else if name.eq_ignore_ascii_case(option::TSIZE.as_bytes()) {
                o.tsize = Some(v);
            } else if name.eq_ignore_ascii_case(option::WINDOWSIZE.as_bytes())
                && (1..=65535).contains(&v)
            {
                o.windowsize = Some(v as u16);
            }
        }
        o
    }

    /// Whether any option is set.
    pub fn is_empty(&self) -> bool {
        *self == RequestOptions::default()
    }

    /// The options as (name, decimal value) pairs in a fixed order, for an RRQ or OACK.
    pub fn to_pairs(&self) -> Vec<(&'static str, String)> {
        let mut v = Vec::new();
        if let Some(b) = self.blksize {
            v.push((option::BLKSIZE, b.to_string()));
        }
        if let Some(t) = self.timeout {
            v.push((option::TIMEOUT, t.to_string()));
        }
        if let Some(t) = self.tsize {
            v.push((option::TSIZE, t.to_string()));
        }
        if let Some(w) = self.windowsize {
            v.push((option::WINDOWSIZE, w.to_string()));
        }
        v
    }
}

/// Emits an OACK (or, with `request`, an RRQ) from owned pairs.
pub fn emit_with_options(
    opcode: Opcode,
    request: Option<(&[u8], Mode)>,
    pairs: &[(&str, String)],
) -> Vec<u8> {
    let options: Vec<RawOption> = pairs
        .iter()
        .map(|(n, v)| RawOption {
            name: n.as_bytes(),
            value: v.as_bytes(),
        })
        .collect();
    let packet = match (opcode, request) {
        (Opcode::Rrq, Some((filename, mode))) => Packet::Rrq(Request {
            filename,
            mode,
            options,
        }),
        (Opcode::Wrq, Some((filename, mode))) => Packet::Wrq(Request {
            filename,
            mode,
            options,
        }),
        _ => Packet::Oack { options },
    };
    packet.to_vec()
}

/// Shows bytes from the wire as text, escaping what is not printable.
pub struct Lossy<'a>(pub &'a [u8]);

impl fmt::Display for Lossy<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for chunk in self.0.utf8_chunks() {
            for c in chunk.valid().chars() {
                if c.is_control() {
                    write!(f, "{}", c.escape_default())?;
                } else {
                    write!(f, "{c}")?;
                }
            }
            for b in chunk.invalid() {
                write!(f, "\\x{b:02x}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static RRQ_BYTES: [u8; 40] =
        *b"\x00\x01pxelinux.0\x00octet\x00tsize\x000\x00blksize\x001468\x00";

    #[test]
    fn test_parse_rrq() {
        let p = Packet::parse(&RRQ_BYTES).unwrap();
        let Packet::Rrq(r) = &p else { panic!("{p:?}") };
        assert_eq!(r.filename, b"pxelinux.0");
        assert_eq!(r.mode, Mode::Octet);
        assert_eq!(r.options.len(), 2);
        let o = RequestOptions::from_raw(&r.options);
        assert_eq!(o.tsize, Some(0));
        assert_eq!(o.blksize, Some(1468));
        assert_eq!(o.windowsize, None);
    }

    #[test]
    fn test_emit_rrq_roundtrip() {
        let p = Packet::parse(&RRQ_BYTES).unwrap();
        let mut buf = [0xa5u8; 64];
        let n = p.emit(&mut buf);
        assert_eq!(&buf[..n], &RRQ_BYTES[..]);
        assert_eq!(buf[n], 0xa5);
    }

    #[test]
    fn test_data_ack_error() {
        let d = [0, 3, 0xff, 0xfe, b'h', b'i'];
        assert_eq!(
            Packet::parse(&d).unwrap(),
            Packet::Data {
                block: 65534,
                data: b"hi"
            }
        );
        assert_eq!(
            Packet::parse(&[0, 4, 1, 2]).unwrap(),
            Packet::Ack { block: 0x0102 }
        );
        let e = Packet::parse(b"\x00\x05\x00\x08no\x00").unwrap();
        assert_eq!(
            e,
            Packet::Error {
                code: ErrorCode::OptionNegotiation,
                message: b"no"
            }
        );
        // Unterminated error text is accepted.
        let e = Packet::parse(b"\x00\x05\x00\x63abc").unwrap();
        assert_eq!(
            e,
            Packet::Error {
                code: ErrorCode::Unknown(99),
                message: b"abc"
            }
        );
        let mut buf = [0xa5u8; 16];
        let n = Packet::Ack { block: 7 }.emit(&mut buf);
        assert_eq!(&buf[..n + 1], &[0, 4, 0, 7, 0xa5]);
        let mut hdr = [0xa5u8; 5];
        emit_data_header(&mut hdr, 0x1234);
        assert_eq!(hdr, [0, 3, 0x12, 0x34, 0xa5]);
    }

    #[test]
    fn test_malformed() {
        assert_eq!(Packet::parse(&[0]), Err(ParseError::Truncated { len: 1 }));
        assert_eq!(
            Packet::parse(&[0, 4, 1]),
            Err(ParseError::Truncated { len: 3 })
        );
        assert_eq!(Packet::parse(&[0, 9]), Err(ParseError::UnknownOpcode(9)));
        assert_eq!(
            Packet::parse(b"\x00\x01file"),
            Err(ParseError::Unterminated("filename"))
        );
        assert_eq!(
            Packet::parse(b"\x00\x01file\x00octet"),
            Err(ParseError::Unterminated("mode"))
        );
        assert_eq!(
            Packet::parse(b"\x00\x01\x00octet\x00"),
            Err(ParseError::EmptyFilename)
        );
        // A NUL inside the name ends it; the rest becomes the mode and is refused.
        assert_eq!(
            Packet::parse(b"\x00\x01a\x00../etc\x00octet\x00"),
            Err(ParseError::UnknownMode("../etc".into()))
        );
    }

    #[test]
    fn test_options_tolerance() {
        // Case-insensitive names and mode, unknown options, out-of-range values,
        // a dangling name and NUL padding.
        let p = Packet::parse(
            b"\x00\x01f\x00NetASCII\x00BLKSIZE\x0099999\x00multicast\x00\x00windowsize\x000\x00timeout\x00x\x00tsize\x00\x00\x00",
        )
        .unwrap();
        let Packet::Rrq(r) = p else { panic!() };
        assert_eq!(r.mode, Mode::Netascii);
        let o = RequestOptions::from_raw(&r.options);
        assert_eq!(o.blksize, Some(MAX_BLKSIZE));
        assert_eq!(o.windowsize, None);
        assert_eq!(o.timeout, None);
        assert_eq!(o.tsize, None);
        let p = Packet::parse(b"\x00\x01f\x00octet\x00blksize\x007\x00windowsize").unwrap();
        let Packet::Rrq(r) = p else { panic!() };
        assert_eq!(
            RequestOptions::from_raw(&r.options),
            RequestOptions::default()
        );
    }

    #[test]
    fn test_oack_roundtrip() {
        let o = RequestOptions {
            blksize: Some(1468),
            timeout: None,
            tsize: Some(123456789),
            windowsize: Some(16),
        };
        let bytes = emit_with_options(Opcode::Oack, None, &o.to_pairs());
        assert_eq!(
            &bytes[..],
            b"\x00\x06blksize\x001468\x00tsize\x00123456789\x00windowsize\x0016\x00"
        );
        let Packet::Oack { options } = Packet::parse(&bytes).unwrap() else {
            panic!()
        };
        assert_eq!(RequestOptions::from_raw(&options), o);
    }

    #[test]
    fn test_lossy() {
        assert_eq!(Lossy(b"a\nb\xff").to_string(), "a\\nb\\xff");
    }
}
