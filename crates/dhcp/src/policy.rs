//! The question the DHCP core asks about each client: which file or URL it
//! boots ([`BootPolicy::boot`]) and its host name ([`BootPolicy::hostname`]).
//!
//! The answer is the caller's: diskless answers it with its one boot
//! decision (`diskless_boot::Site`, which also decides the iPXE script), so
//! this crate holds no boot table of its own. Its own tests, example and
//! fuzz target use [`crate::fuzzing::TestPolicy`].

use crate::classify::ClientInfo;
use crate::Mac;

/// What a client's firmware loads first, typed by how it fetches it: the reply is built from
/// the variant, never by looking inside the string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootOffer {
    /// A file of this server's TFTP root, relative to it (`ipxe/undionly.kpxe`): the reply
    /// also names this server as the TFTP server (`siaddr`, option 66).
    Tftp(String),
    /// A full URL (`http://...`), which iPXE and UEFI HTTP boot fetch themselves.
    Url(String),
}

impl BootOffer {
    /// The boot file name as the reply carries it (`file`, option 67).
    pub fn file(&self) -> &str {
        match self {
            BootOffer::Tftp(path) => path,
            BootOffer::Url(url) => url,
        }
    }

    /// [`BootOffer::file`], owned.
    pub fn into_file(self) -> String {
        match self {
            BootOffer::Tftp(path) => path,
            BootOffer::Url(url) => url,
        }
    }
}

/// Decides what each network-boot client gets. Supplied by the caller.
pub trait BootPolicy: Send + Sync {
    /// The boot file for this client, or `None` to give it none (in proxy
    /// mode the client is then ignored altogether).
    fn boot(&self, client: &ClientInfo) -> Option<BootOffer>;

    /// Host name to send in option 12 when no reservation names the client.
    fn hostname(&self, _mac: Mac) -> Option<String> {
        None
    }
}
