//! DHCP for network boot: full DHCP (RFC 2131) and proxyDHCP (PXE 2.1),
//! deciding what each boot firmware gets.
//!
//! The crate has a sans-IO core and a thin tokio loop:
//!
//! - [`wire`]: parse untrusted packets into dhcproto messages, emit
//!   replies (option 53 first, padded to the 300-byte BOOTP minimum).
//! - [`classify`]: who is asking — MAC, message type, architecture
//!   (option 93), and the firmware kind ([`ClientKind`]: plain, BIOS PXE,
//!   UEFI PXE, UEFI HTTP, iPXE).
//! - [`policy`]: what it boots — the caller's [`BootPolicy`], or the ready
//!   [`StandardPolicy`] (BIOS `undionly.kpxe`, UEFI `ipxe.efi`, iPXE its
//!   per-client script URL).
//! - [`config`] and [`lease`]: the network's settings ([`DhcpConfig`]),
//!   and the leases with an atomically written file.
//! - [`responder`]: [`Responder::handle`] takes the time and a packet and
//!   returns a [`Reply`] plus what happened ([`DhcpEvent`]). No I/O.
//! - [`server`]: [`run`] binds port 67 (and 4011 in proxy mode) on one
//!   interface and drives the responder.
//!
//! ```
//! use std::net::{Ipv4Addr, SocketAddrV4};
//! use std::time::{Duration, SystemTime};
//! use diskless_dhcp::{DhcpConfig, LeaseStore, Mode, Responder, StandardPolicy};
//!
//! let server = Ipv4Addr::new(10, 9, 0, 1);
//! let config = DhcpConfig {
//!     mode: Mode::Full,
//!     server_ip: server,
//!     netmask: Ipv4Addr::new(255, 255, 255, 0),
//!     router: None,
//!     dns: vec![],
//!     domain: None,
//!     range: Some((Ipv4Addr::new(10, 9, 0, 100), Ipv4Addr::new(10, 9, 0, 199))),
//!     lease_time: Duration::from_secs(3600),
//!     reservations: vec![],
//! };
//! let mut responder = Responder::new(config, LeaseStore::new()).unwrap();
//! let policy = StandardPolicy::new(server);
//! // Garbage is an error for the caller to log, never a panic.
//! let from = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68);
//! assert!(responder.handle(SystemTime::now(), b"junk", 67, from, &policy).is_err());
//! ```
#![deny(missing_docs)]

pub mod classify;
pub mod config;
#[doc(hidden)]
pub mod fuzzing;
pub mod lease;
pub mod policy;
pub mod responder;
pub mod server;
pub mod wire;

pub use classify::{classify, ClientInfo, ClientKind};
pub use config::{ConfigError, DhcpConfig, Mode, Reservation};
pub use lease::{Lease, LeaseFileError, LeaseState, LeaseStore};
pub use policy::{BootOffer, BootPolicy, StandardPolicy};
pub use responder::{Destination, DhcpEvent, EventAction, Handled, Reply, Responder};
pub use server::{run, EventSink};

/// DHCP server port.
pub const SERVER_PORT: u16 = 67;
/// DHCP client port.
pub const CLIENT_PORT: u16 = 68;
/// PXE boot-server (proxyDHCP request) port.
pub const PXE_PORT: u16 = 4011;

/// Everything that can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DhcpError {
    /// The packet is not a readable DHCP message.
    #[error("malformed packet: {0}")]
    Parse(#[from] wire::ParseError),
    /// The packet is readable but cannot be served.
    #[error("unusable request: {0}")]
    Classify(#[from] classify::ClassifyError),
    /// A reply could not be encoded.
    #[error(transparent)]
    Emit(#[from] wire::EmitError),
    /// The configuration is invalid.
    #[error("invalid DHCP configuration: {0}")]
    Config(#[from] ConfigError),
    /// The lease file could not be read or written.
    #[error(transparent)]
    LeaseFile(#[from] LeaseFileError),
    /// A socket operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Cause.
        source: std::io::Error,
    },
}

impl DhcpError {
    /// Whether this error is about one packet (log it and go on) rather
    /// than about the server.
    pub fn is_packet_error(&self) -> bool {
        matches!(self, DhcpError::Parse(_) | DhcpError::Classify(_))
    }
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: [u8; 6]) -> String {
    let m = mac;
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        m[0], m[1], m[2], m[3], m[4], m[5]
    )
}

/// Parse `aa:bb:cc:dd:ee:ff` or `aa-bb-cc-dd-ee-ff` (any case).
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split([':', '-']);
    for b in mac.iter_mut() {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_round_trip() {
        let m = [0x52, 0x54, 0, 0xab, 0xcd, 0xef];
        assert_eq!(format_mac(m), "52:54:00:ab:cd:ef");
        assert_eq!(parse_mac("52:54:00:ab:cd:ef"), Some(m));
        assert_eq!(parse_mac("52-54-00-AB-CD-EF"), Some(m));
        assert_eq!(parse_mac("52:54:00:ab:cd"), None);
        assert_eq!(parse_mac("52:54:00:ab:cd:ef:00"), None);
        assert_eq!(parse_mac("5:54:00:ab:cd:eff"), None);
    }
}
