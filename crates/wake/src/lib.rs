//! Wake-on-LAN for the lab's machines.
//!
//! - [`packet`]: the magic packet (6 × `0xff`, then the MAC 16 times), built and checked
//!   without I/O.
//! - [`Sender`]: sockets bound to one interface that send it as a UDP broadcast to port 9 and,
//!   where the process may open a raw socket, as an Ethernet frame with ethertype 0x0842.
//!
//! `diskless wake` and the dashboard's wake button both use [`Sender`].
//!
//! ```
//! use diskless_boot::Mac;
//! use diskless_wake::packet::{magic_packet, parse_magic_packet};
//!
//! let mac: Mac = "52:54:00:12:34:56".parse().unwrap();
//! let packet = magic_packet(mac);
//! assert_eq!(packet.len(), 102);
//! assert_eq!(parse_magic_packet(&packet), Some(mac));
//! ```
#![deny(missing_docs)]

pub mod packet;
mod sender;

pub use sender::{Sender, WakeError};
