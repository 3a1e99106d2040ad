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
//! - [`policy`]: what it boots — the question ([`BootPolicy`]) the core
//!   asks the caller (diskless answers with its one boot decision).
//! - [`Mac`]: the client identity, one parser and one formatter.
//! - [`config`] and [`lease`]: the network's settings ([`DhcpConfig`]),
//!   and the leases with an atomically written file.
//! - [`responder`]: [`Responder::handle`] takes the time and a packet and
//!   returns a [`Reply`] plus what happened ([`DhcpEvent`]). No I/O.
//! - [`state_file`]: the one atomic write (temp file, fsync, rename, fsync
//!   directory) every diskless state file goes through.
//! - [`server`]: [`DhcpSockets::bind`] binds port 67 (and 4011 in proxy
//!   mode) on one interface; [`run`] drives the responder on them.
//!
//! ```
//! use std::net::{Ipv4Addr, SocketAddrV4};
//! use std::time::{Duration, SystemTime};
//! use diskless_dhcp::{fuzzing::TestPolicy, DhcpConfig, LeaseStore, Mode, Responder};
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
//! let policy = TestPolicy::new(server);
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
mod mac;
pub mod policy;
pub mod responder;
pub mod server;
pub mod state_file;
pub mod wire;

pub use classify::{classify, ClientInfo, ClientKind};
pub use config::{ConfigError, DhcpConfig, Mode, Reservation};
pub use lease::{Lease, LeaseFileError, LeaseState, LeaseStore};
pub use mac::{BadMac, Mac};
pub use policy::{BootOffer, BootPolicy};
pub use responder::{Destination, DhcpEvent, EventAction, Handled, Reply, Responder};
pub use server::{run, DhcpSockets, EventSink};

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
