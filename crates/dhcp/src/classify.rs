//! Who is asking: read a parsed request into a [`ClientInfo`].
//!
//! The firmware kind comes from, in order of precedence:
//! - iPXE: user class (option 77) "iPXE", or any iPXE encapsulated options
//!   (option 175). iPXE is checked first because it also sends
//!   "PXEClient" in option 60 and an architecture in option 93, and must
//!   never be handed the chainloader again (that would loop forever).
//! - UEFI HTTP boot: vendor class (option 60) starting "HTTPClient"
//!   (UEFI 2.5+ spec, section "HTTP Boot").
//! - PXE: vendor class starting "PXEClient", or an option 93 architecture
//!   (RFC 4578). Architecture 0 ("x86 BIOS") is BIOS, anything else UEFI.
//! - Plain: everything else (udhcpc, dhclient, phones...).

use std::net::Ipv4Addr;

use dhcproto::v4::{DhcpOption, Message, MessageType, OptionCode};

use crate::{wire, Mac};

/// Client system architecture values (option 93, RFC 4578 section 2.1 and
/// the IANA "Processor Architecture Types" registry) that we act on.
pub mod arch {
    /// x86 BIOS.
    pub const BIOS_X86: u16 = 0;
    /// EFI IA32.
    pub const EFI_IA32: u16 = 6;
    /// "EFI BC" in RFC 4578; x86-64 UEFI firmware sends it in practice.
    pub const EFI_BC: u16 = 7;
    /// EFI x86-64.
    pub const EFI_X86_64: u16 = 9;
    /// ARM 64-bit UEFI.
    pub const EFI_ARM64: u16 = 11;
    /// x86 UEFI HTTP boot.
    pub const EFI_IA32_HTTP: u16 = 15;
    /// x64 UEFI HTTP boot.
    pub const EFI_X86_64_HTTP: u16 = 16;
    /// ARM 64-bit UEFI HTTP boot.
    pub const EFI_ARM64_HTTP: u16 = 19;
}

/// Which boot firmware sent the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClientKind {
    /// Not a network-boot firmware: gets an address only.
    Plain,
    /// A legacy BIOS PXE ROM.
    BiosPxe,
    /// A UEFI PXE (TFTP) client.
    UefiPxe,
    /// A UEFI HTTP-boot client (vendor class "HTTPClient").
    UefiHttp,
    /// iPXE, either in ROM (QEMU's, say) or chainloaded by us.
    Ipxe,
}

impl ClientKind {
    /// Short lowercase name for logs and events.
    pub fn as_str(self) -> &'static str {
        match self {
            ClientKind::Plain => "plain",
            ClientKind::BiosPxe => "bios-pxe",
            ClientKind::UefiPxe => "uefi-pxe",
            ClientKind::UefiHttp => "uefi-http",
            ClientKind::Ipxe => "ipxe",
        }
    }

    /// Whether this is a network-boot firmware (everything but `Plain`).
    pub fn is_boot(self) -> bool {
        self != ClientKind::Plain
    }
}

impl std::fmt::Display for ClientKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a request tells about its sender.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientInfo {
    /// Ethernet address from `chaddr`.
    pub mac: Mac,
    /// Firmware kind.
    pub kind: ClientKind,
    /// Option 93, first entry (RFC 4578 allows a list; the first is the
    /// client's own). Falls back to the "Arch:NNNNN" field of option 60.
    pub arch: Option<u16>,
    /// Transaction id.
    pub xid: u32,
    /// Option 53.
    pub msg_type: MessageType,
    /// Option 60, lossily decoded.
    pub vendor_class: Option<String>,
    /// Option 97 when it is well formed (type 0 + 16-byte UUID).
    pub guid: Option<[u8; 17]>,
    /// Option 77 raw bytes.
    pub user_class: Option<Vec<u8>>,
    /// Option 175 present (iPXE encapsulated options).
    pub ipxe_options: bool,
    /// Option 50.
    pub requested_ip: Option<Ipv4Addr>,
    /// Option 54.
    pub server_id: Option<Ipv4Addr>,
    /// Option 12 as sent by the client.
    pub hostname: Option<String>,
    /// `ciaddr`.
    pub ciaddr: Ipv4Addr,
    /// `giaddr` (relay agent), unspecified when not relayed.
    pub giaddr: Ipv4Addr,
    /// Broadcast flag set by the client.
    pub broadcast: bool,
}

/// Why a request cannot be served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClassifyError {
    /// Not Ethernet, or `hlen` not 6.
    #[error("hardware type {htype} with address length {hlen} is not Ethernet")]
    NotEthernet {
        /// `htype`.
        htype: u8,
        /// `hlen`.
        hlen: u8,
    },
    /// Option 97 present with the wrong length or type byte.
    #[error("malformed client GUID (option 97): {0} bytes, want 17 starting with 0")]
    BadGuid(usize),
}

/// Read a parsed request.
pub fn classify(msg: &Message) -> Result<ClientInfo, ClassifyError> {
    let htype = u8::from(msg.htype());
    let hw = wire::chaddr(msg);
    if htype != 1 || hw.len() != 6 {
        return Err(ClassifyError::NotEthernet {
            htype,
            hlen: msg.hlen(),
        });
    }
    let mac = Mac(hw.try_into().expect("length checked"));
    let opts = msg.opts();

    let vendor_class = match opts.get(OptionCode::ClassIdentifier) {
        Some(DhcpOption::ClassIdentifier(b)) => Some(String::from_utf8_lossy(b).into_owned()),
        _ => None,
    };
    let user_class = match opts.get(OptionCode::UserClass) {
        Some(DhcpOption::UserClass(b)) => Some(b.clone()),
        _ => None,
    };
    let ipxe_options = opts.get(OptionCode::Unknown(175)).is_some();
    let arch = match opts.get(OptionCode::ClientSystemArchitecture) {
        Some(DhcpOption::ClientSystemArchitecture(a)) => Some(u16::from(*a)),
        _ => vendor_class.as_deref().and_then(arch_from_vendor_class),
    };
    let guid = match opts.get(OptionCode::ClientMachineIdentifier) {
        // A missing GUID violates the PXE spec, but ROMs in the wild omit
        // it and still boot (pixiecore's dhcp.go notes the same); we only
        // echo it back, so absence is fine.
        None => None,
        Some(DhcpOption::ClientMachineIdentifier(g)) => {
            if g.len() == 17 && g[0] == 0 {
                Some(g.as_slice().try_into().expect("length checked"))
            } else {
                return Err(ClassifyError::BadGuid(g.len()));
            }
        }
        Some(_) => None,
    };

    let vc = vendor_class.as_deref().unwrap_or("");
    let kind = if user_class.as_deref().is_some_and(is_ipxe_user_class) || ipxe_options {
        ClientKind::Ipxe
    } else if vc.starts_with("HTTPClient") {
        ClientKind::UefiHttp
    } else if vc.starts_with("PXEClient") || arch.is_some() {
        match arch {
            None | Some(arch::BIOS_X86) => ClientKind::BiosPxe,
            Some(_) => ClientKind::UefiPxe,
        }
    } else {
        ClientKind::Plain
    };

    Ok(ClientInfo {
        mac,
        kind,
        arch,
        xid: msg.xid(),
        msg_type: opts.msg_type().unwrap_or(MessageType::Unknown(0)),
        vendor_class,
        guid,
        user_class,
        ipxe_options,
        requested_ip: match opts.get(OptionCode::RequestedIpAddress) {
            Some(DhcpOption::RequestedIpAddress(ip)) => Some(*ip),
            _ => None,
        },
        server_id: match opts.get(OptionCode::ServerIdentifier) {
            Some(DhcpOption::ServerIdentifier(ip)) => Some(*ip),
            _ => None,
        },
        hostname: match opts.get(OptionCode::Hostname) {
            Some(DhcpOption::Hostname(h)) => Some(h.clone()),
            _ => None,
        },
        ciaddr: msg.ciaddr(),
        giaddr: msg.giaddr(),
        broadcast: msg.flags().broadcast(),
    })
}

/// iPXE sends option 77 as the bare string "iPXE"; RFC 3004 clients send
/// length-prefixed entries. Accept both.
fn is_ipxe_user_class(uc: &[u8]) -> bool {
    if uc == b"iPXE" {
        return true;
    }
    let mut rest = uc;
    while let Some((&len, tail)) = rest.split_first() {
        let len = usize::from(len);
        if len > tail.len() {
            return false;
        }
        if &tail[..len] == b"iPXE" {
            return true;
        }
        rest = &tail[len..];
    }
    false
}

/// "PXEClient:Arch:00007:UNDI:003016" -> 7 (PXE spec 2.1, option 60 format).
fn arch_from_vendor_class(vc: &str) -> Option<u16> {
    let mut parts = vc.split(':');
    parts.next()?;
    if parts.next()? != "Arch" {
        return None;
    }
    parts.next()?.parse().ok()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::wire::parse;
    use crate::wire::tests::raw_request;

    pub const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0xab, 0xcd, 0xef];
    const GUID: [u8; 17] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16];
    const PRL: &[u8] = &[
        1, 3, 6, 12, 15, 43, 60, 66, 67, 128, 129, 130, 131, 132, 133, 134, 135,
    ];

    /// A legacy BIOS PXE ROM (Intel PXE 2.1 layout): arch 0, UNDI 2.1,
    /// GUID, max message size.
    pub fn bios_pxe_discover() -> Vec<u8> {
        raw_request(
            0x1111_0001,
            MAC,
            [0; 4],
            &[
                (53, &[1]),
                (57, &[0x04, 0xec]),
                (93, &[0, 0]),
                (94, &[1, 2, 1]),
                (97, &GUID),
                (55, PRL),
                (60, b"PXEClient:Arch:00000:UNDI:002001"),
            ],
        )
    }

    /// OVMF's UEFI PXE DISCOVER: arch 7, UNDI 3.16.
    pub fn uefi_pxe_discover() -> Vec<u8> {
        raw_request(
            0x2222_0001,
            MAC,
            [0; 4],
            &[
                (53, &[1]),
                (57, &[0x05, 0xc0]),
                (55, PRL),
                (97, &GUID),
                (94, &[1, 3, 0]),
                (93, &[0, 7]),
                (60, b"PXEClient:Arch:00007:UNDI:003000"),
            ],
        )
    }

    /// A UEFI HTTP-boot DISCOVER: arch 16, vendor class HTTPClient.
    pub fn uefi_http_discover() -> Vec<u8> {
        raw_request(
            0x3333_0001,
            MAC,
            [0; 4],
            &[
                (53, &[1]),
                (55, &[1, 3, 6, 15, 60, 67]),
                (97, &GUID),
                (93, &[0, 16]),
                (60, b"HTTPClient:Arch:00016:UNDI:003000"),
            ],
        )
    }

    /// iPXE (as in QEMU's option ROM): user class iPXE, option 175 with
    /// feature flags, PXEClient vendor class, arch 0.
    pub fn ipxe_discover() -> Vec<u8> {
        raw_request(
            0x4444_0001,
            MAC,
            [0; 4],
            &[
                (53, &[1]),
                (57, &[0x05, 0xdc]),
                (93, &[0, 0]),
                (94, &[1, 2, 1]),
                (60, b"PXEClient:Arch:00000:UNDI:002001"),
                (77, b"iPXE"),
                (
                    55,
                    &[1, 3, 6, 7, 12, 15, 17, 26, 43, 60, 66, 67, 119, 128, 175],
                ),
                (
                    175,
                    &[0xb1, 0x05, 0x01, 0x80, 0x86, 0x10, 0x0e, 0x13, 0x01, 0x01],
                ),
                (61, &[1, 0x52, 0x54, 0x00, 0xab, 0xcd, 0xef]),
            ],
        )
    }

    /// busybox udhcpc.
    pub fn udhcpc_discover() -> Vec<u8> {
        raw_request(
            0x5555_0001,
            MAC,
            [0; 4],
            &[
                (53, &[1]),
                (61, &[1, 0x52, 0x54, 0x00, 0xab, 0xcd, 0xef]),
                (57, &[0x02, 0x40]),
                (60, b"udhcp 1.35.0"),
                (55, &[1, 3, 6, 12, 15, 28, 42]),
            ],
        )
    }

    fn info(p: &[u8]) -> ClientInfo {
        classify(&parse(p).unwrap()).unwrap()
    }

    #[test]
    fn bios_pxe() {
        let c = info(&bios_pxe_discover());
        assert_eq!(c.kind, ClientKind::BiosPxe);
        assert_eq!(c.arch, Some(0));
        assert_eq!(c.mac, Mac(MAC));
        assert_eq!(c.guid, Some(GUID));
        assert_eq!(c.msg_type, MessageType::Discover);
    }

    #[test]
    fn uefi_pxe() {
        let c = info(&uefi_pxe_discover());
        assert_eq!(c.kind, ClientKind::UefiPxe);
        assert_eq!(c.arch, Some(arch::EFI_BC));
    }

    #[test]
    fn uefi_http() {
        let c = info(&uefi_http_discover());
        assert_eq!(c.kind, ClientKind::UefiHttp);
        assert_eq!(c.arch, Some(arch::EFI_X86_64_HTTP));
    }

    #[test]
    fn ipxe_wins_over_pxeclient() {
        let c = info(&ipxe_discover());
        assert_eq!(c.kind, ClientKind::Ipxe);
        assert!(c.ipxe_options);
        assert_eq!(c.arch, Some(0));
    }

    #[test]
    fn ipxe_by_option_175_alone_or_rfc3004_user_class() {
        let p = raw_request(1, MAC, [0; 4], &[(53, &[1]), (175, &[0x13, 1, 1])]);
        assert_eq!(info(&p).kind, ClientKind::Ipxe);
        let p = raw_request(1, MAC, [0; 4], &[(53, &[1]), (77, b"\x03abc\x04iPXE")]);
        assert_eq!(info(&p).kind, ClientKind::Ipxe);
        let p = raw_request(1, MAC, [0; 4], &[(53, &[1]), (77, b"\x09iPXE")]);
        assert_eq!(info(&p).kind, ClientKind::Plain);
    }

    #[test]
    fn plain_client() {
        let c = info(&udhcpc_discover());
        assert_eq!(c.kind, ClientKind::Plain);
        assert_eq!(c.arch, None);
        assert_eq!(c.vendor_class.as_deref(), Some("udhcp 1.35.0"));
    }

    #[test]
    fn arch_from_option_60_when_93_missing() {
        let p = raw_request(
            1,
            MAC,
            [0; 4],
            &[(53, &[1]), (60, b"PXEClient:Arch:00009:UNDI:003016")],
        );
        let c = info(&p);
        assert_eq!(c.kind, ClientKind::UefiPxe);
        assert_eq!(c.arch, Some(9));
    }

    #[test]
    fn missing_guid_accepted_bad_guid_rejected() {
        let p = raw_request(1, MAC, [0; 4], &[(53, &[1]), (93, &[0, 0])]);
        assert_eq!(info(&p).guid, None);
        let p = raw_request(1, MAC, [0; 4], &[(53, &[1]), (97, &[1, 2, 3])]);
        assert_eq!(
            classify(&parse(&p).unwrap()),
            Err(ClassifyError::BadGuid(3))
        );
    }

    #[test]
    fn non_ethernet_rejected() {
        let mut p = udhcpc_discover();
        p[crate::wire::field::HTYPE] = 6;
        assert!(matches!(
            classify(&parse(&p).unwrap()),
            Err(ClassifyError::NotEthernet { htype: 6, .. })
        ));
    }
}
