//! The site and its one boot decision: which client boots what, through which URLs, with
//! which iPXE script and kernel command line.
//!
//! - [`config`]: `/etc/diskless/diskless.toml`, parsed strictly; errors name file, line, reason.
//! - [`site`]: the config resolved once against the served interface ([`Site`]): range,
//!   [`Mode`], authorities, the `[[client]]` table by [`Mac`]. The server swaps it on reload.
//! - [`decision`]: [`Site::boot_spec`] (pixiecore's `BootSpec(Machine)`): what a [`Machine`]
//!   boots or that it is refused; [`Site::first_stage`]: what each firmware loads first, a
//!   typed [`diskless_dhcp::BootOffer`]. The server's one `Booter` asks both, for DHCP, the
//!   HTTP script route and the TFTP/GRUB hook.
//! - [`routes`]: every URL the server serves, built and parsed in one place, and the
//!   [`ImageFile`]s of a stored version.
//! - [`script`]: the iPXE script a client gets, and its kernel command line (`boot=diskless`,
//!   the image URL and sha256, a per-client machine-id).
//! - [`stage`]: the stages of a boot ([`Stage`]) and why one failed ([`FailureReason`]), for
//!   the recorder, the metrics, the report tokens, the dashboard and the QEMU harness.
//! - [`names`]: the rule image names and versions follow (store, URLs, config).
//! - [`grub`]: the same decisions as GRUB configs, for the Secure Boot chain (shim, then
//!   Debian's signed GRUB network image); their paths are [`Route`]s.
//!
//! - [`accounts`]: the lab's passwd and group entries as clients get them (never a password),
//!   and the SSH host keys they pin.
//!
//! Nothing here does I/O beyond reading the config file: the server crate feeds it.

pub mod accounts;
pub mod config;
pub mod decision;
pub mod grub;
pub mod multicast;
pub mod names;
pub mod routes;
pub mod script;
pub mod site;
pub mod stage;

pub use config::{Config, ConfigError, Mode};
pub use decision::{BootSpec, Loader, Machine};
pub use diskless_dhcp::Mac;
pub use routes::{AccountsFile, ImageFile, Route};
pub use site::Site;
pub use stage::{FailureCode, FailureReason, FetchedDetail, FilledDetail, Stage};
