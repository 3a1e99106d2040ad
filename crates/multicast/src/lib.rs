//! The image carousel: one copy of a root image on the wire feeds every seat of a lab.
//!
//! The server sends the image round and round to a multicast group, paced at a configured
//! rate; a seat joins at any moment, keeps what it receives, and after a round asks the boot
//! server over HTTP (Range) for whatever it missed. No seat waits for another and nothing is
//! acknowledged, so the sender's cost does not grow with the number of seats.
//! docs/MULTICAST.md says why this and not FLUTE/ALC with RaptorQ.
//!
//! - [`wire`]: the datagram (a fixed header and one fragment of the image), parsed strictly.
//! - [`Layout`]: how the image is cut into blocks (the unit verified by its sha256) and
//!   blocks into fragments (the unit of one datagram).
//! - [`Carousel`], [`Pacer`] and [`Audience`]: what the sender sends next, when, and until
//!   when.
//! - [`igmp`]: the General Query of a server acting as IGMP querier.
//! - [`Receiver`]: which fragments a seat holds, which blocks are verified, what is missing.
//!
//! Nothing here touches a socket, a file or the clock: callers pass bytes and instants.
//!
//! ```
//! use diskless_multicast::{block_digests, Carousel, Layout, Receiver, wire::Packet};
//!
//! let image: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
//! let layout = Layout::new(image.len() as u64, 4096, 1024).unwrap();
//! let digests = block_digests(&layout, &image);
//! let mut sender = Carousel::new(layout, 7);
//! let mut seat = Receiver::new(layout, 7, digests).unwrap();
//! let mut copy = vec![0u8; image.len()];
//! let mut buf = [0u8; 2048];
//! while !seat.is_complete() {
//!     let next = sender.next_fragment();
//!     let range = next.byte_range();
//!     let len = next.packet(&image[range.start as usize..range.end as usize]).emit(&mut buf);
//!     let packet = Packet::parse(&buf[..len]).unwrap();
//!     let placed = seat.accept(&packet).unwrap();
//!     let at = placed.offset as usize;
//!     copy[at..at + packet.payload.len()].copy_from_slice(packet.payload);
//!     if let Some(block) = placed.completes {
//!         let range = layout.block_range(block);
//!         seat.check_block(block, &copy[range.start as usize..range.end as usize]).unwrap();
//!     }
//! }
//! assert_eq!(copy, image);
//! ```

#![deny(missing_docs)]

mod carousel;
pub mod igmp;
mod layout;
mod receiver;
pub mod wire;

pub use carousel::{Audience, Carousel, Fragment, Pacer};
pub use layout::{block_digests, Layout, LayoutError, DIGEST_LEN};
pub use receiver::{Placed, Receiver, RejectError};
