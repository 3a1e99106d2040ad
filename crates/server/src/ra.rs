//! A minimal IPv6 router advertisement, so iPXE does not wait for one.
//!
//! iPXE configures IPv4 (DHCP) and IPv6 (NDP) side by side and boots only when both are done;
//! on a network without an IPv6 router its router solicitations go unanswered and it waits
//! about 13 s (measured). An RA with the managed and other flags clear and a router lifetime
//! of 0 says "no router, no DHCPv6 here": iPXE's IPv6 configurator finishes at once, and no
//! host takes us for a default router. Only for networks we own (full mode by default).

use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use std::ffi::CString;
use std::io::{self, Read};
use std::net::{Ipv6Addr, SocketAddrV6};
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

/// A raw ICMPv6 socket on one interface, in the all-routers group, ready to answer router
/// solicitations. Opening it needs CAP_NET_RAW: the caller opens it before dropping
/// privileges ([`crate::Listeners::bind`]).
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

    /// Answer router solicitations until `shutdown` completes.
    pub async fn serve(self, shutdown: impl std::future::Future<Output = ()>) -> io::Result<()> {
        tokio::pin!(shutdown);
        tokio::select! {
            r = serve(self) => r,
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

async fn serve(socket: RaSocket) -> io::Result<()> {
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
    tracing::info!(%interface, "answering IPv6 router solicitations (no router, no DHCPv6)");
    let mut buf = [0u8; 1500];
    loop {
        let mut guard = fd.readable().await?;
        let n = match guard.get_inner().read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                guard.clear_ready();
                continue;
            }
            Err(e) => return Err(e),
        };
        if is_solicitation(&buf[..n]) {
            if let Err(e) = guard.get_inner().send_to(&ra, &all_nodes) {
                // Before the link-local address is ready the send fails; the client retries.
                tracing::debug!(error = %e, "router advertisement not sent");
            }
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
    fn recognises_solicitations_only() {
        assert!(is_solicitation(&[133, 0, 0, 0, 0, 0, 0, 0]));
        assert!(!is_solicitation(&[134, 0, 0, 0, 0, 0, 0, 0]));
        assert!(!is_solicitation(&[133, 0]));
    }
}
