//! A minimal IPv6 router advertisement, so iPXE does not wait for one.
//!
//! iPXE configures IPv4 (DHCP) and IPv6 (NDP) side by side and boots only when both are done;
//! on a network without an IPv6 router its router solicitations go unanswered and it waits
//! about 13 s (measured). An RA with the managed and other flags clear and a router lifetime
//! of 0 says "no router, no DHCPv6 here": iPXE's IPv6 configurator finishes at once, and no
//! host takes us for a default router. On a network we own (full mode by default), every
//! solicitation gets one, to all nodes.
//!
//! On a network we do not own (proxy mode) the same wait made a boot ~14 s slower: in
//! `diskless vm --mode proxy`, the site's DHCPACK at 01:00:58 and iPXE's request for its script
//! at 01:01:11.8 (dnsmasq.log, server.log). Debian 12's iPXE (ipxe and ipxe-qemu
//! 1.0.0+git-20190125.36a4c85) runs `ifconf` with every configurator at once from `autoboot`
//! (src/usr/autoboot.c `netboot`), and `ifconf` returns only when none is still in progress
//! (src/usr/ifmgmt.c `ifconf_progress`): the DHCP reply cannot cut the IPv6 one short, and the
//! ROM's autoboot runs before any script of ours. Its router solicitations back off from 1/4 s
//! to 10 s, the retry timer's defaults (src/include/ipxe/retry.h), so it gives up after ~16 s.
//! They carry its MAC (source link-layer option, src/net/ndp.c `ndp_tx_router_solicitation`),
//! and the first advertisement ends its IPv6 configuration (`ipv6conf_rx_router_advertisement`).
//! So in proxy mode ([`Answer::Booting`]) we answer only a client we have just given an iPXE
//! offer, once, unicast to its link-local address: no other host on the site's network sees
//! it, and the site's own router, if any, keeps the last word for every operating system.

use crate::recorder::{BootEvent, DhcpAction};
use diskless_dhcp::{ClientKind, Mac};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use std::collections::HashMap;
use std::ffi::CString;
use std::io;
use std::mem::MaybeUninit;
use std::net::{Ipv6Addr, SocketAddrV6};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::unix::AsyncFd;

const ROUTER_SOLICITATION: u8 = 133;
const ROUTER_ADVERTISEMENT: u8 = 134;
const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
const ALL_ROUTERS: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 2);

/// The RA we send (RFC 4861 section 4.2): type, code, checksum (the kernel fills it for raw
/// ICMPv6 sockets), hop limit 0 (unspecified), flags 0 (no DHCPv6), router lifetime 0 (not a
/// default router), reachable time 0, retrans timer 0, and a source link-layer option.
pub fn advertisement(mac: [u8; 6]) -> [u8; 24] {
    let mut ra = [0u8; 24];
    ra[0] = ROUTER_ADVERTISEMENT;
    ra[16] = 1; // option: source link-layer address
    ra[17] = 1; // length in units of 8 bytes
    ra[18..24].copy_from_slice(&mac);
    ra
}

/// Is this ICMPv6 message a router solicitation?
pub fn is_solicitation(packet: &[u8]) -> bool {
    packet.len() >= 8 && packet[0] == ROUTER_SOLICITATION && packet[1] == 0
}

/// The MAC in a router solicitation's source link-layer address option (RFC 4861 4.1: the
/// options follow the 8-byte header; each is type, length in units of 8 bytes, data).
pub fn solicitor_mac(packet: &[u8]) -> Option<Mac> {
    let mut options = packet.get(8..)?;
    while options.len() >= 8 {
        let length = options[1] as usize * 8;
        if length == 0 {
            return None;
        }
        if options[0] == 1 {
            return Some(Mac(options[2..8].try_into().expect("6 bytes")));
        }
        options = options.get(length..)?;
    }
    None
}

/// How long after its iPXE offer a client's solicitation is still answered in proxy mode:
/// iPXE solicits from the start of its DHCP for ~16 s (see the module docs).
pub const BOOTING_WINDOW: Duration = Duration::from_secs(30);

/// Whose solicitations are answered.
pub enum Answer {
    /// Everyone's, to all nodes (a network we own).
    All,
    /// Only those of clients the server just gave an iPXE offer, each once, unicast (a
    /// network we do not own). The DHCP server's hook arms it as each offer goes out
    /// ([`Booting::event`]), directly: not through the recorder's facts, which a reader that
    /// falls behind misses.
    Booting(Arc<Mutex<Booting>>),
}

impl Answer {
    /// What the DHCP hook arms: the clients to answer in proxy mode.
    pub fn booting(&self) -> Option<Arc<Mutex<Booting>>> {
        match self {
            Answer::All => None,
            Answer::Booting(booting) => Some(booting.clone()),
        }
    }
}

/// The clients a proxy-mode server may answer: MACs it gave an iPXE offer, and when.
#[derive(Debug, Default)]
pub struct Booting {
    offered: HashMap<Mac, Instant>,
}

impl Booting {
    /// Note a DHCP answer: an offer to iPXE arms its MAC.
    pub fn event(&mut self, event: &BootEvent, now: Instant) {
        if let BootEvent::Dhcp {
            mac,
            firmware: ClientKind::Ipxe,
            action: DhcpAction::Offer,
            ..
        } = event
        {
            self.offered.insert(*mac, now);
        }
    }

    /// Whether to answer `mac`'s solicitation now; an answer disarms it.
    pub fn answer(&mut self, mac: Mac, now: Instant) -> bool {
        self.offered
            .retain(|_, at| now.duration_since(*at) <= BOOTING_WINDOW);
        self.offered.remove(&mac).is_some()
    }
}

/// A raw ICMPv6 socket on one interface, in the all-routers group, ready to answer router
/// solicitations. Opening it needs CAP_NET_RAW, which the server keeps only while
/// `ipv6_ra` is on ([`crate::Listeners::bind`]; `diskless serve` drops it otherwise).
pub struct RaSocket {
    socket: Socket,
    index: u32,
    mac: [u8; 6],
    interface: String,
}

impl RaSocket {
    /// Open the socket on `interface`.
    pub fn open(interface: &str) -> io::Result<RaSocket> {
        open(interface)
    }

    /// Answer router solicitations (whose: `answer`) until `shutdown` completes.
    pub async fn serve(
        self,
        answer: Answer,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> io::Result<()> {
        tokio::pin!(shutdown);
        tokio::select! {
            r = serve(self, answer) => r,
            _ = &mut shutdown => Ok(()),
        }
    }
}

fn open(interface: &str) -> io::Result<RaSocket> {
    let context =
        |what: &'static str| move |e: io::Error| io::Error::new(e.kind(), format!("{what}: {e}"));
    let name = CString::new(interface).map_err(|_| io::Error::other("interface name has a NUL"))?;
    // SAFETY: if_nametoindex reads a NUL-terminated name and nothing else.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        return Err(io::Error::other(format!("no interface {interface}")));
    }
    let mac = crate::netif::mac_of(interface).map_err(io::Error::other)?;
    let socket = Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::ICMPV6))
        .map_err(context("opening a raw ICMPv6 socket"))?;
    socket
        .bind_device(Some(interface.as_bytes()))
        .map_err(context("binding to the interface"))?;
    // RFC 4861: hop limit 255, or receivers drop it.
    socket
        .set_multicast_hops_v6(255)
        .map_err(context("IPV6_MULTICAST_HOPS"))?;
    socket
        .set_unicast_hops_v6(255)
        .map_err(context("IPV6_UNICAST_HOPS"))?;
    socket
        .set_multicast_if_v6(index)
        .map_err(context("IPV6_MULTICAST_IF"))?;
    socket
        .join_multicast_v6(&ALL_ROUTERS, index)
        .map_err(context("joining ff02::2"))?;
    socket
        .set_nonblocking(true)
        .map_err(context("O_NONBLOCK"))?;
    Ok(RaSocket {
        socket,
        index,
        mac,
        interface: interface.to_string(),
    })
}

/// Receive into a byte buffer.
fn recv_from(socket: &Socket, buf: &mut [u8]) -> io::Result<(usize, SockAddr)> {
    // SAFETY: recv_from only writes initialised bytes into the buffer, and u8 and
    // MaybeUninit<u8> have the same layout (socket2's documented use).
    let uninit = unsafe { &mut *(buf as *mut [u8] as *mut [MaybeUninit<u8>]) };
    socket.recv_from(uninit)
}

async fn serve(socket: RaSocket, answer: Answer) -> io::Result<()> {
    let RaSocket {
        socket,
        index,
        mac,
        interface,
    } = socket;
    // SAFETY: we own the socket and it stays open for as long as the AsyncFd that holds it.
    let fd = unsafe { AsyncFd::register(socket) }.map_err(|e| io::Error::other(e.to_string()))?;
    let ra = advertisement(mac);
    let all_nodes = SockAddr::from(SocketAddrV6::new(ALL_NODES, 0, 0, index));
    let booting = match answer {
        Answer::All => {
            tracing::info!(%interface, "answering IPv6 router solicitations (no router, no DHCPv6)");
            None
        }
        Answer::Booting(booting) => {
            tracing::info!(
                %interface,
                "answering the IPv6 router solicitations of the iPXE clients being booted, \
                 unicast (no router, no DHCPv6)"
            );
            Some(booting)
        }
    };
    let mut buf = [0u8; 1500];
    loop {
        let mut guard = fd.readable().await?;
        let (n, source) = match recv_from(guard.get_inner(), &mut buf) {
            Ok(got) => got,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                guard.clear_ready();
                continue;
            }
            Err(e) => return Err(e),
        };
        let packet = &buf[..n];
        if !is_solicitation(packet) {
            continue;
        }
        let to = match &booting {
            None => &all_nodes,
            Some(booting) => match solicitor_mac(packet) {
                Some(client)
                    if booting
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .answer(client, Instant::now()) =>
                {
                    tracing::info!(%client, "router advertisement to an iPXE client being booted");
                    &source
                }
                _ => continue,
            },
        };
        if let Err(e) = guard.get_inner().send_to(&ra, to) {
            // Before the link-local address is ready the send fails; the client retries.
            tracing::debug!(error = %e, "router advertisement not sent");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advertisement_says_no_router_and_no_dhcpv6() {
        let ra = advertisement([0x52, 0x54, 0, 1, 2, 3]);
        assert_eq!(ra[0], 134);
        assert_eq!(ra[5], 0, "M and O flags clear");
        assert_eq!(&ra[6..8], &[0, 0], "router lifetime 0");
        assert_eq!(&ra[16..24], &[1, 1, 0x52, 0x54, 0, 1, 2, 3]);
    }

    #[test]
    fn opens_on_an_interface_and_names_a_missing_one() {
        let err = RaSocket::open("nosuchif0").err().unwrap();
        assert!(err.to_string().contains("nosuchif0"), "{err}");
        if !diskless_testkit::is_root() {
            return diskless_testkit::skip("a raw ICMPv6 socket needs root");
        }
        let socket = RaSocket::open("lo").unwrap();
        assert_eq!(socket.interface, "lo");
    }

    #[test]
    fn a_solicitation_names_its_sender() {
        // iPXE's: header, then the source link-layer address option.
        let rs = [
            133, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0x52, 0x54, 0, 0x12, 0x34, 0x56,
        ];
        assert_eq!(
            solicitor_mac(&rs),
            Some(Mac([0x52, 0x54, 0, 0x12, 0x34, 0x56]))
        );
        // Behind an option of another type; none at all; a zero length (malformed).
        let mut later = rs[..8].to_vec();
        later.extend([14, 1, 0, 0, 0, 0, 0, 0]);
        later.extend(&rs[8..]);
        assert_eq!(
            solicitor_mac(&later),
            Some(Mac([0x52, 0x54, 0, 0x12, 0x34, 0x56]))
        );
        assert_eq!(solicitor_mac(&rs[..8]), None);
        assert_eq!(
            solicitor_mac(&[133, 0, 0, 0, 0, 0, 0, 0, 1, 0, 1, 2, 3, 4, 5, 6]),
            None
        );
    }

    #[test]
    fn in_proxy_mode_only_a_client_just_offered_ipxe_is_answered_once() {
        let offer = |mac: Mac, firmware| BootEvent::Dhcp {
            mac,
            firmware,
            action: DhcpAction::Offer,
            ip: None,
            detail: None,
        };
        let (ipxe, pxe, stranger) = (
            Mac([2, 0, 0, 0, 0, 1]),
            Mac([2, 0, 0, 0, 0, 2]),
            Mac([2, 0, 0, 0, 0, 3]),
        );
        let start = Instant::now();
        let mut booting = Booting::default();
        booting.event(&offer(ipxe, ClientKind::Ipxe), start);
        // A PXE ROM does not solicit routers; its iPXE, offered next, does.
        booting.event(&offer(pxe, ClientKind::BiosPxe), start);
        assert!(!booting.answer(stranger, start), "a host we did not offer");
        assert!(!booting.answer(pxe, start));
        assert!(booting.answer(ipxe, start + Duration::from_secs(2)));
        assert!(
            !booting.answer(ipxe, start + Duration::from_secs(3)),
            "once per offer"
        );
        booting.event(&offer(ipxe, ClientKind::Ipxe), start);
        assert!(
            !booting.answer(ipxe, start + BOOTING_WINDOW + Duration::from_secs(1)),
            "too late"
        );
    }

    #[test]
    fn recognises_solicitations_only() {
        assert!(is_solicitation(&[133, 0, 0, 0, 0, 0, 0, 0]));
        assert!(!is_solicitation(&[134, 0, 0, 0, 0, 0, 0, 0]));
        assert!(!is_solicitation(&[133, 0]));
    }
}
