//! A minimal IPv6 router advertisement, so iPXE does not wait for one.
//!
//! iPXE configures IPv4 (DHCP) and IPv6 (NDP) side by side and boots only when both are done;
//! on a network without an IPv6 router its router solicitations go unanswered and it waits
//! about 13 s (measured). An RA with the managed and other flags clear and a router lifetime
//! of 0 says "no router, no DHCPv6 here": iPXE's IPv6 configurator finishes at once, and no
//! host takes us for a default router. Only for networks we own (full mode by default).

use std::ffi::CString;
use std::io;
use std::mem::size_of;
use std::net::Ipv6Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

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

fn check(rc: libc::c_int, what: &str) -> io::Result<()> {
    if rc < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("{what}: {e}")));
    }
    Ok(())
}

fn setsockopt<T>(
    fd: &OwnedFd,
    level: libc::c_int,
    name: libc::c_int,
    value: &T,
    what: &str,
) -> io::Result<()> {
    // SAFETY: value points to a live T of the size given.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            value as *const T as *const libc::c_void,
            size_of::<T>() as u32,
        )
    };
    check(rc, what)
}

/// A raw ICMPv6 socket on one interface, in the all-routers group, ready to answer router
/// solicitations. Opening it needs CAP_NET_RAW: the caller opens it before dropping
/// privileges ([`crate::Listeners::bind`]).
pub struct RaSocket {
    fd: OwnedFd,
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
    let interface = interface.to_string();
    let name = CString::new(interface.clone())
        .map_err(|_| io::Error::other("interface name has a NUL"))?;
    // SAFETY: plain libc calls on a socket we own.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        return Err(io::Error::other(format!("no interface {interface}")));
    }
    let mac = crate::netif::mac_of(&interface).map_err(io::Error::other)?;
    // SAFETY: socket(2); the fd is owned by OwnedFd from here on.
    let raw = unsafe {
        libc::socket(
            libc::AF_INET6,
            libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            libc::IPPROTO_ICMPV6,
        )
    };
    check(raw, "opening a raw ICMPv6 socket")?;
    // SAFETY: raw is a fresh, valid fd.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    socket2::SockRef::from(&fd)
        .bind_device(Some(interface.as_bytes()))
        .map_err(|e| io::Error::new(e.kind(), format!("binding to the interface: {e}")))?;
    let hops: libc::c_int = 255; // RFC 4861: hop limit 255, or receivers drop it
    setsockopt(
        &fd,
        libc::IPPROTO_IPV6,
        libc::IPV6_MULTICAST_HOPS,
        &hops,
        "IPV6_MULTICAST_HOPS",
    )?;
    setsockopt(
        &fd,
        libc::IPPROTO_IPV6,
        libc::IPV6_UNICAST_HOPS,
        &hops,
        "IPV6_UNICAST_HOPS",
    )?;
    setsockopt(
        &fd,
        libc::IPPROTO_IPV6,
        libc::IPV6_MULTICAST_IF,
        &(index as libc::c_int),
        "IPV6_MULTICAST_IF",
    )?;
    let group = libc::ipv6_mreq {
        ipv6mr_multiaddr: libc::in6_addr {
            s6_addr: ALL_ROUTERS.octets(),
        },
        ipv6mr_interface: index,
    };
    setsockopt(
        &fd,
        libc::IPPROTO_IPV6,
        libc::IPV6_ADD_MEMBERSHIP,
        &group,
        "joining ff02::2",
    )?;
    Ok(RaSocket {
        fd,
        index,
        mac,
        interface,
    })
}

async fn serve(socket: RaSocket) -> io::Result<()> {
    let RaSocket {
        fd,
        index,
        mac,
        interface,
    } = socket;
    // SAFETY: we own the fd and it stays open for as long as the AsyncFd that holds it.
    let fd = unsafe { tokio::io::unix::AsyncFd::register(fd) }
        .map_err(|e| io::Error::other(e.to_string()))?;
    let ra = advertisement(mac);
    let send = |fd: &OwnedFd| -> io::Result<()> {
        // SAFETY: sockaddr_in6 is plain data.
        let mut to: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
        to.sin6_family = libc::AF_INET6 as u16;
        to.sin6_addr.s6_addr = ALL_NODES.octets();
        to.sin6_scope_id = index;
        // SAFETY: buffer and address are valid for the call.
        let rc = unsafe {
            libc::sendto(
                fd.as_raw_fd(),
                ra.as_ptr() as *const _,
                ra.len(),
                0,
                &to as *const _ as *const libc::sockaddr,
                size_of::<libc::sockaddr_in6>() as u32,
            )
        };
        check(rc as libc::c_int, "sending a router advertisement")
    };
    tracing::info!(%interface, "answering IPv6 router solicitations (no router, no DHCPv6)");
    let mut buf = [0u8; 1500];
    loop {
        let mut guard = fd.readable().await?;
        // SAFETY: buf is valid for writes of its length.
        let n = unsafe {
            libc::recv(
                guard.get_inner().as_raw_fd(),
                buf.as_mut_ptr() as *mut _,
                buf.len(),
                0,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::WouldBlock {
                guard.clear_ready();
                continue;
            }
            return Err(e);
        }
        if is_solicitation(&buf[..n as usize]) {
            if let Err(e) = send(guard.get_inner()) {
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
    fn recognises_solicitations_only() {
        assert!(is_solicitation(&[133, 0, 0, 0, 0, 0, 0, 0]));
        assert!(!is_solicitation(&[134, 0, 0, 0, 0, 0, 0, 0]));
        assert!(!is_solicitation(&[133, 0]));
    }
}
