//! Reading and writing the initramfs archives the Linux kernel unpacks at
//! boot.
//!
//! - [`CpioWriter`] builds a reproducible cpio "newc" archive (the format the
//!   kernel accepts), adding parent directories before their children.
//! - [`CpioReader`] streams the entries of one archive.
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

pub mod cpio;

pub use cpio::{CpioReader, CpioWriter, EntryKind, Header};
