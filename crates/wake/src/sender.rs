//! Sending magic packets out of one interface: a UDP broadcast to port 9 (any user with
//! `SO_BINDTODEVICE` rights, routed by no table: the socket is bound to the device) and the
//! raw Ethernet frame with ethertype 0x0842 (an `AF_PACKET` socket: root or CAP_NET_RAW).

use crate::packet::{magic_packet, ETHERTYPE, UDP_PORT};
use diskless_boot::Mac;
use socket2::{Domain, SockAddr, Socket, Type};
use std::ffi::CString;
use std::net::{Ipv4Addr, SocketAddrV4};

/// Why magic packets could not be sent.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WakeError {
    /// The interface does not exist (in this network namespace).
    #[error("no interface named {0}")]
    NoInterface(String),
    /// A socket could not be made or bound.
    #[error("{what} on {interface}: {source}")]
    Socket {
        /// What was being done.
        what: &'static str,
        /// The interface.
        interface: String,
        /// The cause.
        source: std::io::Error,
    },
    /// Sending failed.
    #[error("sending the magic packet for {mac} ({how}) on {interface}: {source}")]
    Send {
        /// The target.
        mac: Mac,
        /// `UDP broadcast` or `Ethernet 0x0842`.
        how: &'static str,
        /// The interface.
        interface: String,
        /// The cause.
        source: std::io::Error,
    },
}

/// Sockets bound to one interface, ready to send magic packets.
pub struct Sender {
    interface: String,
    udp: Socket,
    /// The `AF_PACKET` socket and the interface index, or why there is none.
    ethernet: Result<(Socket, i32), String>,
}

impl Sender {
    /// Open the sockets on `interface`. The UDP socket is required; the raw Ethernet one is
    /// used when it can be opened ([`Sender::ethernet_unavailable`] says why not).
    pub fn open(interface: &str) -> Result<Sender, WakeError> {
        let name = CString::new(interface).map_err(|_| WakeError::NoInterface(interface.into()))?;
        // SAFETY: if_nametoindex reads a NUL-terminated string.
        let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if index == 0 {
            return Err(WakeError::NoInterface(interface.into()));
        }
        let socket_error = |what| {
            let interface = interface.to_string();
            move |source| WakeError::Socket {
                what,
                interface,
                source,
            }
        };
        let udp = Socket::new(Domain::IPV4, Type::DGRAM, None)
            .map_err(socket_error("opening a UDP socket"))?;
        udp.set_broadcast(true)
            .map_err(socket_error("allowing broadcast (SO_BROADCAST)"))?;
        // The limited broadcast 255.255.255.255 would leave by the default route's interface;
        // bound to the device it leaves by the lab's, with or without a route.
        udp.bind_device(Some(interface.as_bytes()))
            .map_err(socket_error("binding to the device (SO_BINDTODEVICE)"))?;
        // Protocol 0: this socket only sends, it receives nothing.
        let ethernet = Socket::new(Domain::PACKET, Type::DGRAM, None)
            .map(|s| (s, index as i32))
            .map_err(|e| {
                format!("no raw socket ({e}): the Ethernet 0x0842 frame needs root or CAP_NET_RAW")
            });
        Ok(Sender {
            interface: interface.to_string(),
            udp,
            ethernet,
        })
    }

    /// Why the Ethernet 0x0842 frame is not sent (only the UDP broadcast is), if it is not.
    pub fn ethernet_unavailable(&self) -> Option<&str> {
        self.ethernet.as_ref().err().map(String::as_str)
    }

    /// Send the magic packet for `mac`: the UDP broadcast, then the Ethernet frame if it can.
    pub fn send(&self, mac: Mac) -> Result<(), WakeError> {
        let packet = magic_packet(mac);
        let to = SocketAddrV4::new(Ipv4Addr::BROADCAST, UDP_PORT);
        self.udp
            .send_to(&packet, &to.into())
            .map_err(|source| WakeError::Send {
                mac,
                how: "UDP broadcast",
                interface: self.interface.clone(),
                source,
            })?;
        if let Ok((socket, index)) = &self.ethernet {
            socket
                .send_to(&packet, &broadcast_link_address(*index))
                .map_err(|source| WakeError::Send {
                    mac,
                    how: "Ethernet 0x0842",
                    interface: self.interface.clone(),
                    source,
                })?;
        }
        Ok(())
    }
}

/// The Ethernet broadcast address on interface `index`, for an `AF_PACKET`/`SOCK_DGRAM`
/// socket: the kernel writes the Ethernet header (our MAC, ff:ff:ff:ff:ff:ff, 0x0842).
fn broadcast_link_address(index: i32) -> SockAddr {
    // SAFETY: the closure writes a sockaddr_ll, which fits in a sockaddr_storage, and returns
    // its length.
    let ((), addr) = unsafe {
        SockAddr::try_init(|storage, len| {
            let ll = &mut *(storage as *mut libc::sockaddr_ll);
            ll.sll_family = libc::AF_PACKET as u16;
            ll.sll_protocol = ETHERTYPE.to_be();
            ll.sll_ifindex = index;
            ll.sll_halen = 6;
            ll.sll_addr[..6].fill(0xff);
            *len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            Ok(())
        })
    }
    .expect("a sockaddr_ll fits");
    addr
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_interface_is_named() {
        let err = Sender::open("nosuchif0").err().unwrap().to_string();
        assert_eq!(err, "no interface named nosuchif0");
    }

    #[test]
    fn link_address_is_a_broadcast_on_the_interface() {
        let addr = broadcast_link_address(7);
        assert_eq!(addr.family(), libc::AF_PACKET as u16);
        // SAFETY: the family says this is a sockaddr_ll.
        let ll = unsafe { &*(addr.as_ptr() as *const libc::sockaddr_ll) };
        assert_eq!(
            (ll.sll_ifindex, ll.sll_halen, u16::from_be(ll.sll_protocol)),
            (7, 6, 0x0842)
        );
        assert_eq!(&ll.sll_addr[..6], &[0xff; 6]);
    }
}
