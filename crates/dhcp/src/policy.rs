//! The question the DHCP core asks about each client: which file or URL it
//! boots ([`BootPolicy::boot`]) and its host name ([`BootPolicy::hostname`]).
//!
//! The answer is the caller's: diskless answers it with its one boot
//! decision (`diskless_boot::Site`, which also decides the iPXE script), so
//! this crate holds no boot table of its own. Its own tests, example and
//! fuzz target use [`crate::fuzzing::TestPolicy`].

use crate::classify::ClientInfo;
use crate::Mac;

/// What to boot: a TFTP path (relative to the TFTP root) or a full
/// `http://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootOffer {
    /// TFTP path or full URL.
    pub filename: String,
}

impl BootOffer {
    /// A boot offer for `filename`.
    pub fn new(filename: impl Into<String>) -> Self {
        BootOffer {
            filename: filename.into(),
        }
    }

    /// Whether the file is a URL rather than a TFTP path.
    pub fn is_url(&self) -> bool {
        self.filename.contains("://")
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
