//! Boot policy: which client boots which image, with which kernel command line.
//!
//! - [`config`]: `/etc/diskless/diskless.toml`, parsed strictly; errors name file, line, reason.
//! - [`Mac`]: the client identity everything is keyed by.
//! - [`names`]: the rule image names and versions follow (store, URLs, config).
//! - [`policy`]: from a MAC to a [`policy::ClientBoot`] (image, hostname, options), or nothing
//!   for unknown clients when the site says to ignore them.
//! - [`script`]: the iPXE script a client gets, and its kernel command line (`boot=diskless`,
//!   the image URL and sha256, a per-client machine-id).
//!
//! Nothing here does I/O beyond reading the config file: the server crate feeds it.

pub mod config;
mod mac;
pub mod names;
pub mod policy;
pub mod script;

pub use config::{Config, ConfigError};
pub use mac::Mac;
pub use policy::{ClientBoot, Policy};
