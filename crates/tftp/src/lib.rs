//! TFTP for the boot path: a packet codec, sans-IO transfer state machines, a tokio
//! server and a blocking client.
//!
//! - [`wire`]: [`Packet`](wire::Packet) parse/emit and the options of RFC 2347
//!   (OACK), 2348 (`blksize`), 2349 (`timeout`, `tsize`) and 7440 (`windowsize`).
//! - [`session`]: one read transfer, server side. It takes `now` and packets and
//!   returns packets to send and its next deadline; it does no I/O and reads no clock.
//! - [`admission`]: which requests start a transfer, per source address (rate and
//!   running transfers), without I/O.
//! - [`client`]: one read transfer, client side ([`client::Transfer`]) and a blocking
//!   `std::net` driver, [`client::fetch`], usable without tokio
//!   (`default-features = false`), as in the initramfs helper.
//! - [`server`] (feature `server`): [`server::serve`] answers read requests on a
//!   caller-bound socket, each transfer on its own port from the address the request
//!   arrived on; [`root`] keeps every request inside the served directory.
//!
//! ```no_run
//! # #[cfg(feature = "server")]
//! # async fn run() -> Result<(), diskless_tftp::server::Error> {
//! use diskless_tftp::server::{serve_addr, ServerConfig};
//! serve_addr(
//!     "0.0.0.0:69".parse().unwrap(),
//!     ServerConfig::new("/srv/tftp"),
//!     async { tokio::signal::ctrl_c().await.ok(); },
//! )
//! .await
//! # }
//! ```
#![deny(missing_docs)]

pub mod admission;
pub mod client;
pub mod rtt;
pub mod session;
pub mod wire;

#[cfg(feature = "server")]
pub mod root;
#[cfg(feature = "server")]
pub mod server;
