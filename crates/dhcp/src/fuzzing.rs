//! Shared by the fuzz target (`fuzz/fuzz_targets/dhcp_packet.rs`), the
//! mutation test, the crate's tests and its example: drive the parser and
//! both responders with arbitrary bytes and check the invariants that must
//! hold for any input; [`TestPolicy`] is the boot policy they answer with.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::classify::{arch, ClientInfo, ClientKind};
use crate::{
    wire, BootOffer, BootPolicy, DhcpConfig, LeaseStore, Mac, Mode, Reservation, Responder,
    PXE_PORT, SERVER_PORT,
};

/// A DISCOVER's worth of client facts, for policy tests elsewhere.
pub fn client_info(mac: Mac, kind: ClientKind, arch: Option<u16>) -> ClientInfo {
    ClientInfo {
        mac,
        kind,
        arch,
        xid: 1,
        msg_type: dhcproto::v4::MessageType::Discover,
        vendor_class: None,
        guid: None,
        user_class: None,
        ipxe_options: false,
        requested_ip: None,
        server_id: None,
        hostname: None,
        ciaddr: Ipv4Addr::UNSPECIFIED,
        giaddr: Ipv4Addr::UNSPECIFIED,
        broadcast: false,
    }
}

/// The iPXE chainload a standalone DHCP server would give, for tests: BIOS
/// PXE `undionly.kpxe`, UEFI x86-64 PXE `ipxe.efi`, UEFI HTTP boot
/// `http://SERVER/ipxe.efi`, iPXE `http://SERVER/boot/MAC.ipxe` (or
/// `script_url` when set), anything else nothing. (diskless's own table is
/// its boot decision, `diskless_boot::decision`.)
#[derive(Debug, Clone)]
pub struct TestPolicy {
    /// Server address in the URLs.
    pub server: Ipv4Addr,
    /// The script URL iPXE gets instead of the default.
    pub script_url: Option<String>,
    /// Option 12 for every client.
    pub hostname: Option<String>,
}

impl TestPolicy {
    /// The policy for a server at `server`.
    pub fn new(server: Ipv4Addr) -> Self {
        TestPolicy {
            server,
            script_url: None,
            hostname: None,
        }
    }
}

impl BootPolicy for TestPolicy {
    fn boot(&self, client: &ClientInfo) -> Option<BootOffer> {
        let server = self.server;
        Some(match (client.kind, client.arch) {
            (ClientKind::Ipxe, _) => BootOffer::Url(self.script_url.clone().unwrap_or_else(|| {
                format!("http://{server}/boot/{}.ipxe", client.mac.hyphenated())
            })),
            (ClientKind::BiosPxe, _) => BootOffer::Tftp("undionly.kpxe".into()),
            (ClientKind::UefiPxe, Some(arch::EFI_BC | arch::EFI_X86_64)) => {
                BootOffer::Tftp("ipxe.efi".into())
            }
            (ClientKind::UefiHttp, None | Some(arch::EFI_X86_64_HTTP)) => {
                BootOffer::Url(format!("http://{server}/ipxe.efi"))
            }
            _ => return None,
        })
    }

    fn hostname(&self, _mac: Mac) -> Option<String> {
        self.hostname.clone()
    }
}

fn config(mode: Mode) -> DhcpConfig {
    let full = mode == Mode::Full;
    DhcpConfig {
        mode,
        server_ip: Ipv4Addr::new(10, 9, 0, 1),
        netmask: Ipv4Addr::new(255, 255, 255, 0),
        router: Some(Ipv4Addr::new(10, 9, 0, 1)),
        dns: vec![Ipv4Addr::new(10, 9, 0, 1)],
        domain: Some("lab.test".into()),
        range: full.then(|| (Ipv4Addr::new(10, 9, 0, 100), Ipv4Addr::new(10, 9, 0, 103))),
        lease_time: Duration::from_secs(600),
        reservations: if full {
            vec![Reservation {
                mac: Mac([0x52, 0x54, 0, 0x12, 0x34, 0x56]),
                ip: Ipv4Addr::new(10, 9, 0, 9),
                hostname: Some("ws9".into()),
            }]
        } else {
            vec![]
        },
    }
}

/// A full-mode and a proxy-mode responder, with a clock.
pub struct Harness {
    full: Responder,
    proxy: Responder,
    policy: TestPolicy,
    now: SystemTime,
}

impl Default for Harness {
    fn default() -> Self {
        Self::new()
    }
}

impl Harness {
    /// Fresh responders.
    pub fn new() -> Self {
        Harness {
            full: Responder::new(config(Mode::Full), LeaseStore::new()).expect("valid"),
            proxy: Responder::new(config(Mode::Proxy), LeaseStore::new()).expect("valid"),
            policy: TestPolicy::new(Ipv4Addr::new(10, 9, 0, 1)),
            now: UNIX_EPOCH + Duration::from_secs(1_750_000_000),
        }
    }

    /// Feed `data` to the parser and to both responders on port 67 and
    /// 4011; panics if an invariant fails.
    pub fn packet(&mut self, data: &[u8]) {
        // The clock moves with the input so that expiry paths run too.
        self.now += Duration::from_secs(u64::from(data.first().copied().unwrap_or(0)));
        let parsed = wire::parse(data);
        let from = SocketAddrV4::new(Ipv4Addr::new(10, 9, 0, 50), 68);
        for port in [SERVER_PORT, PXE_PORT] {
            for (mode, r) in [(Mode::Full, &mut self.full), (Mode::Proxy, &mut self.proxy)] {
                let handled = r.handle(self.now, data, port, from, &self.policy);
                if parsed.is_err() {
                    assert!(handled.is_err(), "unparsable input was answered");
                }
                let Ok(h) = handled else { continue };
                let Some(reply) = h.reply else { continue };
                assert!(reply.bytes.len() >= wire::BOOTP_MIN_LEN, "short reply");
                let m = wire::parse(&reply.bytes).expect("our reply parses");
                assert_eq!(u8::from(m.opcode()), 2, "reply is a BOOTREPLY");
                let yiaddr = m.yiaddr();
                if mode == Mode::Proxy || port == PXE_PORT {
                    assert!(yiaddr.is_unspecified(), "proxy handed out {yiaddr}");
                } else if !yiaddr.is_unspecified() {
                    assert!(r.config().is_client_address(yiaddr), "offered {yiaddr}");
                }
            }
        }
        // Leases stay consistent: one holder per address, all assignable.
        let mut seen = std::collections::HashSet::new();
        for l in self.full.leases().iter() {
            assert!(seen.insert(l.ip), "{} leased twice", l.ip);
            assert!(self.full.config().is_client_address(l.ip));
        }
    }
}
