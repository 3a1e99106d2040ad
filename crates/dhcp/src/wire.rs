//! The wire format: parse untrusted BOOTP/DHCP packets into dhcproto's
//! [`Message`], and emit replies with a deterministic option order, padded
//! to the BOOTP minimum.
//!
//! dhcproto does the field work. This module adds what a server facing
//! arbitrary bytes needs on top of it: the fixed header and the magic cookie
//! are checked, option lengths are walked before dhcproto sees them (a
//! truncated option is an error, not a silent stop), and options we never
//! read whose malformed lengths would trip dhcproto's `debug_assert!`s are
//! dropped.

use std::net::Ipv4Addr;

use dhcproto::v4::{DhcpOption, Message, MessageType, Opcode, OptionCode};
use dhcproto::{Decodable, Decoder, Encodable, Encoder};

/// Byte offsets of the fixed BOOTP header (RFC 951, RFC 2131 section 2).
pub mod field {
    use std::ops::Range;
    /// `op`: 1 = BOOTREQUEST, 2 = BOOTREPLY.
    pub const OP: usize = 0;
    /// `htype`: hardware address type, 1 = Ethernet.
    pub const HTYPE: usize = 1;
    /// `hlen`: hardware address length.
    pub const HLEN: usize = 2;
    /// `chaddr`: client hardware address, 16 bytes.
    pub const CHADDR: Range<usize> = 28..44;
    /// The magic cookie that starts the options area (RFC 2131 section 3).
    pub const MAGIC: Range<usize> = 236..240;
    /// First option byte.
    pub const OPTIONS: usize = 240;
}

/// The magic cookie 99.130.83.99 (RFC 2132 section 2).
pub const MAGIC_COOKIE: [u8; 4] = [99, 130, 83, 99];

/// Smallest BOOTP message: 236 header bytes plus a 64-byte vendor area
/// (RFC 951; RFC 1542 section 3.3). Some PXE ROMs drop shorter replies.
pub const BOOTP_MIN_LEN: usize = 300;

/// Length of the header plus the magic cookie.
pub const HEADER_LEN: usize = field::OPTIONS;

/// Option 0.
const PAD: u8 = 0;
/// Option 255.
const END: u8 = 255;

/// Options that we never read and whose decoder in dhcproto 0.12 asserts a
/// length in debug builds (rapid commit 80, client FQDN 81, client network
/// interface 94, bulk lease query 151..=157): they are dropped before
/// decoding so a malformed one cannot panic the server.
fn dropped_before_decode(code: u8) -> bool {
    matches!(code, 80 | 81 | 94 | 151..=157)
}

/// Why a packet could not be read as a DHCP request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseError {
    /// Shorter than the BOOTP header plus the magic cookie.
    #[error("packet is {len} bytes, shorter than the {HEADER_LEN}-byte BOOTP header and cookie")]
    TooShort {
        /// Length received.
        len: usize,
    },
    /// The four bytes after the header are not 99.130.83.99.
    #[error("bad magic cookie {0:?}, not a DHCP packet")]
    BadMagic([u8; 4]),
    /// `hlen` larger than the 16-byte `chaddr` field.
    #[error("hardware address length {0} exceeds the 16-byte chaddr field")]
    BadHlen(u8),
    /// An option's length runs past the end of the packet.
    #[error("option {code} at offset {offset} is truncated")]
    TruncatedOption {
        /// Option code.
        code: u8,
        /// Offset of the option's code byte.
        offset: usize,
    },
    /// dhcproto refused the packet.
    #[error("undecodable DHCP packet: {0}")]
    Decode(String),
    /// No option 53: a plain BOOTP request, which we do not serve.
    #[error("no DHCP message type (option 53): plain BOOTP is not served")]
    NoMessageType,
}

/// Parse an untrusted packet. Never panics.
pub fn parse(packet: &[u8]) -> Result<Message, ParseError> {
    if packet.len() < HEADER_LEN {
        return Err(ParseError::TooShort { len: packet.len() });
    }
    let magic: [u8; 4] = packet[field::MAGIC].try_into().expect("4-byte range");
    if magic != MAGIC_COOKIE {
        return Err(ParseError::BadMagic(magic));
    }
    let hlen = packet[field::HLEN];
    if usize::from(hlen) > field::CHADDR.len() {
        return Err(ParseError::BadHlen(hlen));
    }
    let clean = sanitize(packet)?;
    // dhcproto is not written for hostile input; the checks above and the
    // option walk remove every panic we know of, and this catches the rest
    // so one bad packet can never take the server down.
    let decoded = std::panic::catch_unwind(|| Message::decode(&mut Decoder::new(&clean)));
    let msg = match decoded {
        Ok(Ok(msg)) => msg,
        Ok(Err(e)) => return Err(ParseError::Decode(e.to_string())),
        Err(_) => return Err(ParseError::Decode("decoder panicked".into())),
    };
    if msg.opts().msg_type().is_none() {
        return Err(ParseError::NoMessageType);
    }
    Ok(msg)
}

/// Copy the header and the options we accept, checking each option's length.
fn sanitize(packet: &[u8]) -> Result<Vec<u8>, ParseError> {
    let mut out = Vec::with_capacity(packet.len() + 1);
    out.extend_from_slice(&packet[..HEADER_LEN]);
    let mut i = HEADER_LEN;
    while i < packet.len() {
        let code = packet[i];
        match code {
            PAD => i += 1,
            END => break,
            _ => {
                let Some(&len) = packet.get(i + 1) else {
                    return Err(ParseError::TruncatedOption { code, offset: i });
                };
                let end = i + 2 + usize::from(len);
                if end > packet.len() {
                    return Err(ParseError::TruncatedOption { code, offset: i });
                }
                if !dropped_before_decode(code) {
                    out.extend_from_slice(&packet[i..end]);
                }
                i = end;
            }
        }
    }
    out.push(END);
    Ok(out)
}

/// The client hardware address as raw bytes, `hlen` long (checked by [`parse`]).
pub(crate) fn chaddr(msg: &Message) -> &[u8] {
    // `Message::chaddr` slices by `hlen`; `parse` rejected hlen > 16.
    msg.chaddr()
}

/// A reply ready to encode: the fixed fields plus options in send order.
#[derive(Debug, Clone)]
pub(crate) struct ReplyRepr {
    pub msg_type: MessageType,
    pub xid: u32,
    pub flags_broadcast: bool,
    pub ciaddr: Ipv4Addr,
    pub yiaddr: Ipv4Addr,
    pub siaddr: Ipv4Addr,
    pub giaddr: Ipv4Addr,
    pub mac: [u8; 6],
    /// `sname` field (server host name), if any.
    pub sname: Option<String>,
    /// `file` field, if the boot file name fits (< 128 bytes).
    pub file: Option<String>,
    /// Options after 53, in the order given.
    pub options: Vec<DhcpOption>,
}

/// Encoding failed; only reachable with values no caller should build.
#[derive(Debug, thiserror::Error)]
#[error("encoding DHCP reply: {0}")]
pub struct EmitError(String);

impl ReplyRepr {
    /// Encode: header, option 53 first (some PXE ROMs look only there),
    /// the other options in the given order, End, then zero padding up to
    /// [`BOOTP_MIN_LEN`].
    pub fn emit(&self) -> Result<Vec<u8>, EmitError> {
        let mut msg = Message::new_with_id(
            self.xid,
            self.ciaddr,
            self.yiaddr,
            self.siaddr,
            self.giaddr,
            &self.mac,
        );
        msg.set_opcode(Opcode::BootReply);
        let mut flags = dhcproto::v4::Flags::default();
        if self.flags_broadcast {
            flags = flags.set_broadcast();
        }
        msg.set_flags(flags);
        if let Some(s) = &self.sname {
            msg.set_sname_str(s);
        }
        if let Some(f) = &self.file {
            msg.set_fname_str(f);
        }
        let mut buf = Vec::with_capacity(BOOTP_MIN_LEN + 64);
        let mut enc = Encoder::new(&mut buf);
        // With an empty option map dhcproto writes the header and the
        // cookie only; we write the options ourselves to fix their order.
        msg.encode(&mut enc).map_err(|e| EmitError(e.to_string()))?;
        DhcpOption::MessageType(self.msg_type)
            .encode(&mut enc)
            .map_err(|e| EmitError(e.to_string()))?;
        for opt in &self.options {
            if OptionCode::from(opt) == OptionCode::MessageType {
                continue;
            }
            opt.encode(&mut enc).map_err(|e| EmitError(e.to_string()))?;
        }
        buf.push(END);
        if buf.len() < BOOTP_MIN_LEN {
            buf.resize(BOOTP_MIN_LEN, PAD);
        }
        Ok(buf)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Build a raw BOOTREQUEST by hand (independent of dhcproto), the way a
    /// client's ROM lays it out: header, cookie, options, End.
    pub fn raw_request(
        xid: u32,
        mac: impl Into<[u8; 6]>,
        ciaddr: [u8; 4],
        opts: &[(u8, &[u8])],
    ) -> Vec<u8> {
        let mut p = vec![0u8; HEADER_LEN];
        p[field::OP] = 1;
        p[field::HTYPE] = 1;
        p[field::HLEN] = 6;
        p[4..8].copy_from_slice(&xid.to_be_bytes());
        p[12..16].copy_from_slice(&ciaddr);
        p[field::CHADDR.start..field::CHADDR.start + 6].copy_from_slice(&mac.into());
        p[field::MAGIC].copy_from_slice(&MAGIC_COOKIE);
        for (code, data) in opts {
            p.push(*code);
            p.push(data.len() as u8);
            p.extend_from_slice(data);
        }
        p.push(END);
        p
    }

    const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];

    #[test]
    fn parses_a_minimal_discover() {
        let p = raw_request(7, MAC, [0; 4], &[(53, &[1])]);
        let m = parse(&p).unwrap();
        assert_eq!(m.xid(), 7);
        assert_eq!(m.opts().msg_type(), Some(MessageType::Discover));
        assert_eq!(chaddr(&m), &MAC);
    }

    #[test]
    fn rejects_short_and_bad_magic() {
        assert_eq!(parse(&[1, 2, 3]), Err(ParseError::TooShort { len: 3 }));
        let mut p = raw_request(7, MAC, [0; 4], &[(53, &[1])]);
        p[field::MAGIC.start] = 0;
        assert!(matches!(parse(&p), Err(ParseError::BadMagic(_))));
    }

    #[test]
    fn rejects_truncated_option_and_missing_type() {
        let mut p = raw_request(7, MAC, [0; 4], &[(53, &[1])]);
        p.pop(); // End
        p.extend_from_slice(&[60, 20, b'P']);
        assert_eq!(
            parse(&p),
            Err(ParseError::TruncatedOption {
                code: 60,
                offset: 243
            })
        );
        let p = raw_request(7, MAC, [0; 4], &[(12, b"host")]);
        assert_eq!(parse(&p), Err(ParseError::NoMessageType));
    }

    #[test]
    fn bad_hlen_is_an_error_not_a_panic() {
        let mut p = raw_request(7, MAC, [0; 4], &[(53, &[1])]);
        p[field::HLEN] = 200;
        assert_eq!(parse(&p), Err(ParseError::BadHlen(200)));
    }

    #[test]
    fn malformed_unused_options_do_not_panic_the_decoder() {
        // Option 94 must be 3 bytes and 80 empty: dhcproto debug-asserts both.
        let p = raw_request(
            7,
            MAC,
            [0; 4],
            &[(53, &[1]), (94, &[1]), (80, &[1, 2]), (81, &[])],
        );
        let m = parse(&p).unwrap();
        assert_eq!(m.opts().msg_type(), Some(MessageType::Discover));
    }

    #[test]
    fn emit_puts_type_first_and_pads_to_300() {
        let r = ReplyRepr {
            msg_type: MessageType::Offer,
            xid: 0x01020304,
            flags_broadcast: true,
            ciaddr: Ipv4Addr::UNSPECIFIED,
            yiaddr: Ipv4Addr::new(10, 0, 0, 5),
            siaddr: Ipv4Addr::new(10, 0, 0, 1),
            giaddr: Ipv4Addr::UNSPECIFIED,
            mac: MAC,
            sname: None,
            file: Some("undionly.kpxe".into()),
            options: vec![
                DhcpOption::ServerIdentifier(Ipv4Addr::new(10, 0, 0, 1)),
                DhcpOption::SubnetMask(Ipv4Addr::new(255, 255, 255, 0)),
            ],
        };
        let b = r.emit().unwrap();
        assert_eq!(b.len(), BOOTP_MIN_LEN);
        assert_eq!(b[field::OP], 2);
        assert_eq!(&b[4..8], &[1, 2, 3, 4]);
        assert_eq!(&b[10..12], &[0x80, 0]); // broadcast flag
        assert_eq!(&b[16..20], &[10, 0, 0, 5]);
        assert_eq!(&b[20..24], &[10, 0, 0, 1]);
        assert_eq!(&b[108..121], b"undionly.kpxe");
        assert_eq!(b[121], 0);
        assert_eq!(&b[240..243], &[53, 1, 2]);
        assert_eq!(&b[243..249], &[54, 4, 10, 0, 0, 1]);
        assert_eq!(&b[249..255], &[1, 4, 255, 255, 255, 0]);
        assert_eq!(b[255], END);
        assert!(b[256..].iter().all(|&x| x == 0));
        // And it reads back.
        let m = Message::decode(&mut Decoder::new(&b)).unwrap();
        assert_eq!(m.yiaddr(), Ipv4Addr::new(10, 0, 0, 5));
    }
}
