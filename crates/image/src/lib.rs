//! Build, verify and store the squashfs root images that diskless clients boot.
//!
//! An image is made in three steps, each in its own module:
//!
//! - [`bootstrap`]: debootstrap a workstation root into a directory, from the host's own apt
//!   mirror (never a hard-coded one), with a package cache so reruns are fast.
//! - [`build`]: turn a root tree into a store version: `root.squashfs` made by mksquashfs
//!   straight from the tree, with the image-only changes of [`tidy`] applied as mksquashfs
//!   exclusions and pseudo files, so the source is never modified; the tree's kernel and stock
//!   initrd; `diskless.cpio` ([`bootcpio`]) that teaches the stock initrd `boot=diskless`; and
//!   a [`manifest`] with sizes and sha256 digests.
//! - [`store`]: versions under `images/NAME/VERSION/`, with a `current` link switched
//!   atomically only once a version is complete and verified.
//!
//! External tools run through [`command`], whose errors carry the full argv and stderr.

pub mod apt_sources;
pub mod bootcpio;
pub mod bootstrap;
pub mod build;
pub mod command;
mod credentials;
mod error;
pub mod export;
pub mod initrd_install;
pub mod kernel;
pub mod manifest;
pub mod squash;
pub mod store;
pub mod tidy;
pub mod verity;

pub use error::{Error, Result};
pub use manifest::Manifest;
pub use store::Store;
