//! Reading and writing the initramfs archives the Linux kernel unpacks at
//! boot.
//!
//! - [`CpioWriter`] builds a reproducible cpio "newc" archive (the format the
//!   kernel accepts), adding parent directories before their children.
//! - [`CpioReader`] streams the entries of one archive.
//! - [`InitrdReader`] walks a whole initrd: concatenated segments, each plain
//!   or compressed (gzip, xz, zstd, lz4 legacy, lzma, bzip2), with zero
//!   padding between them, as the kernel does. It streams: listing a 100 MB
//!   initrd holds only buffers in memory.
//! - [`extract()`] unpacks an initrd into a directory (modes, owners, links,
//!   devices), refusing entries that would land outside it;
//!   [`read_path()`] returns one file as the booted system would see it.
//!
//! ```
//! use diskless_initramfs::{CpioReader, CpioWriter};
//!
//! let mut w = CpioWriter::new(Vec::new());
//! w.add_file("scripts/diskless", 0o755, b"#!/bin/sh\n")?;
//! w.add_symlink("bin/sh", "busybox")?;
//! let archive = w.finish()?;
//!
//! let mut r = CpioReader::new(&archive[..]);
//! let mut names = Vec::new();
//! while let Some(entry) = r.next_entry()? {
//!     names.push(entry.name_lossy().into_owned());
//! }
//! assert_eq!(names, ["scripts", "scripts/diskless", "bin", "bin/sh"]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![deny(missing_docs)]

pub mod compress;
pub mod cpio;
pub mod extract;
pub mod initrd;
pub mod listing;
pub mod lookup;

pub use compress::{Compression, Decoder, PeekReader};
pub use cpio::{CpioReader, CpioWriter, EntryKind, Header};
pub use extract::{extract, ExtractError, ExtractOptions, ExtractReport, Layout};
pub use initrd::{Entry, InitrdError, InitrdReader, Segment};
pub use lookup::{read_path, LookupError};
