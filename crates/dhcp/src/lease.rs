//! Leases: who holds which address until when, and their file.
//!
//! Times are whole seconds since the Unix epoch, so a lease written before
//! a restart means the same after it. Only bound leases and declined
//! addresses are saved; offers are held in memory for [`OFFER_HOLD_SECS`].
//! Expired leases are kept as a memory of "this MAC had this address", so a
//! returning client gets its old address back when nobody took it.

use std::collections::HashMap;
use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::Mac;

/// How long an offered address is held for the client that was offered it.
pub const OFFER_HOLD_SECS: u64 = 60;

/// Whether the client has only been offered the address or confirmed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LeaseState {
    /// DHCPOFFER sent, no DHCPREQUEST yet.
    Offered,
    /// DHCPACK sent.
    Bound,
}

/// One client's address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// Client MAC, `aa:bb:cc:dd:ee:ff` in the file.
    pub mac: Mac,
    /// Address.
    pub ip: Ipv4Addr,
    /// Expiry, seconds since the Unix epoch.
    pub expires: u64,
    /// Offered or bound.
    pub state: LeaseState,
    /// Host name sent to the client, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
}

/// An address a client declined (in use by someone else), with the time
/// until which we do not offer it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Declined {
    /// Address.
    pub ip: Ipv4Addr,
    /// Seconds since the Unix epoch.
    pub until: u64,
}

/// The lease file's content.
#[derive(Debug, Serialize, Deserialize)]
struct LeaseFile {
    version: u32,
    leases: Vec<Lease>,
    #[serde(default)]
    declined: Vec<Declined>,
}

const FILE_VERSION: u32 = 1;

/// Lease file trouble, with the path.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LeaseFileError {
    /// Reading, writing, syncing or renaming failed.
    #[error("{op} lease file {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// File concerned.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// Not our JSON.
    #[error("lease file {path} is corrupt: {source}")]
    Corrupt {
        /// File concerned.
        path: PathBuf,
        /// Cause.
        source: serde_json::Error,
    },
    /// Written by a newer version.
    #[error("lease file {path} has version {version}, this build reads version {FILE_VERSION}")]
    Version {
        /// File concerned.
        path: PathBuf,
        /// Version found.
        version: u32,
    },
}

/// All leases, by MAC.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeaseStore {
    by_mac: HashMap<Mac, Lease>,
    declined: HashMap<Ipv4Addr, u64>,
    /// Something that [`LeaseStore::save`] writes changed since the last
    /// [`LeaseStore::take_dirty`].
    dirty: bool,
}

/// Seconds since the Unix epoch (0 for times before it).
pub fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl LeaseStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Read `path`; a missing file is an empty store.
    pub fn load(path: &Path) -> Result<Self, LeaseFileError> {
        let text = match fs::read(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::new()),
            Err(source) => {
                return Err(LeaseFileError::Io {
                    op: "reading",
                    path: path.into(),
                    source,
                })
            }
        };
        let file: LeaseFile =
            serde_json::from_slice(&text).map_err(|source| LeaseFileError::Corrupt {
                path: path.into(),
                source,
            })?;
        if file.version != FILE_VERSION {
            return Err(LeaseFileError::Version {
                path: path.into(),
                version: file.version,
            });
        }
        let mut store = Self::new();
        for l in file.leases {
            store.by_mac.insert(l.mac, l);
        }
        for d in file.declined {
            store.declined.insert(d.ip, d.until);
        }
        Ok(store)
    }

    /// Write bound leases and declined addresses to `path` atomically: a
    /// temporary file in the same directory, fsync, rename over `path`,
    /// fsync the directory. A crash leaves the old or the new file, whole.
    pub fn save(&self, path: &Path) -> Result<(), LeaseFileError> {
        let mut leases: Vec<Lease> = self
            .by_mac
            .values()
            .filter(|l| l.state == LeaseState::Bound)
            .cloned()
            .collect();
        leases.sort_by_key(|l| u32::from(l.ip));
        let mut declined: Vec<Declined> = self
            .declined
            .iter()
            .map(|(ip, until)| Declined {
                ip: *ip,
                until: *until,
            })
            .collect();
        declined.sort_by_key(|d| u32::from(d.ip));
        let file = LeaseFile {
            version: FILE_VERSION,
            leases,
            declined,
        };
        let mut json = serde_json::to_vec_pretty(&file).expect("lease file serializes");
        json.push(b'\n');

        crate::state_file::write_atomic(path, &json).map_err(|e| LeaseFileError::Io {
            op: e.op,
            path: e.path,
            source: e.source,
        })
    }

    /// The lease record of `mac`, live or expired.
    pub fn get(&self, mac: Mac) -> Option<&Lease> {
        self.by_mac.get(&mac)
    }

    /// All lease records.
    pub fn iter(&self) -> impl Iterator<Item = &Lease> {
        self.by_mac.values()
    }

    /// Number of lease records.
    pub fn len(&self) -> usize {
        self.by_mac.len()
    }

    /// No lease records.
    pub fn is_empty(&self) -> bool {
        self.by_mac.is_empty()
    }

    /// Record or refresh a lease.
    pub fn insert(&mut self, lease: Lease) {
        // One address, one holder: drop any other record for the address.
        let mut dirty = lease.state == LeaseState::Bound;
        self.by_mac.retain(|m, l| {
            let keep = *m == lease.mac || l.ip != lease.ip;
            dirty |= !keep && l.state == LeaseState::Bound;
            keep
        });
        if let Some(old) = self.by_mac.insert(lease.mac, lease) {
            dirty |= old.state == LeaseState::Bound;
        }
        self.dirty |= dirty;
    }

    /// Forget `mac`'s lease; returns it.
    pub fn remove(&mut self, mac: Mac) -> Option<Lease> {
        let old = self.by_mac.remove(&mac);
        self.dirty |= old.as_ref().is_some_and(|l| l.state == LeaseState::Bound);
        old
    }

    /// Mark `ip` as not to be offered until `until`, dropping its lease.
    pub fn decline(&mut self, ip: Ipv4Addr, until: u64) {
        self.declined.insert(ip, until);
        self.by_mac.retain(|_, l| l.ip != ip);
        self.dirty = true;
    }

    /// Whether the saved content changed since the last call; clears it.
    pub fn take_dirty(&mut self) -> bool {
        std::mem::take(&mut self.dirty)
    }

    /// Whether `ip` is declined at `now`.
    pub fn is_declined(&self, ip: Ipv4Addr, now: u64) -> bool {
        self.declined.get(&ip).is_some_and(|&until| until > now)
    }

    /// The MAC whose record (live or expired) names `ip`, and its expiry.
    pub fn holder_of(&self, ip: Ipv4Addr) -> Option<&Lease> {
        self.by_mac.values().find(|l| l.ip == ip)
    }

    /// Map address -> record, for scanning the pool.
    pub(crate) fn by_ip(&self) -> HashMap<Ipv4Addr, &Lease> {
        self.by_mac.values().map(|l| (l.ip, l)).collect()
    }

    /// Drop declined entries that have run out. Returns whether any did.
    pub(crate) fn expire_declined(&mut self, now: u64) -> bool {
        let before = self.declined.len();
        self.declined.retain(|_, &mut until| until > now);
        let changed = before != self.declined.len();
        self.dirty |= changed;
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(mac_last: u8, ip_last: u8, state: LeaseState) -> Lease {
        Lease {
            mac: Mac([2, 0, 0, 0, 0, mac_last]),
            ip: Ipv4Addr::new(10, 9, 0, ip_last),
            expires: 1_700_000_000,
            state,
            hostname: (mac_last == 1).then(|| "ws1".to_string()),
        }
    }

    #[test]
    fn round_trip_keeps_bound_and_declined_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("leases.json");
        let mut s = LeaseStore::new();
        s.insert(lease(1, 101, LeaseState::Bound));
        s.insert(lease(2, 102, LeaseState::Offered));
        s.decline(Ipv4Addr::new(10, 9, 0, 150), 1_800_000_000);
        s.save(&path).unwrap();

        let back = LeaseStore::load(&path).unwrap();
        assert_eq!(back.len(), 1);
        assert_eq!(
            back.get(Mac([2, 0, 0, 0, 0, 1])),
            Some(&lease(1, 101, LeaseState::Bound))
        );
        assert!(back.is_declined(Ipv4Addr::new(10, 9, 0, 150), 1_700_000_000));
        assert!(!back.is_declined(Ipv4Addr::new(10, 9, 0, 150), 1_800_000_000));
        // No temporary file is left behind.
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("leases.json")]);
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.contains("\"02:00:00:00:00:01\""), "{text}");
    }

    #[test]
    fn missing_file_is_empty_corrupt_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("none.json");
        assert!(LeaseStore::load(&path).unwrap().is_empty());
        fs::write(&path, b"{not json").unwrap();
        let e = LeaseStore::load(&path).unwrap_err();
        assert!(matches!(e, LeaseFileError::Corrupt { .. }));
        assert!(e.to_string().contains("none.json"), "{e}");
    }

    #[test]
    fn save_into_missing_directory_reports_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("no/such/dir/leases.json");
        let e = LeaseStore::new().save(&path).unwrap_err();
        assert!(
            matches!(e, LeaseFileError::Io { op: "creating", .. }),
            "{e}"
        );
    }

    #[test]
    fn one_holder_per_address() {
        let mut s = LeaseStore::new();
        s.insert(lease(1, 101, LeaseState::Bound));
        s.insert(lease(2, 101, LeaseState::Bound));
        assert_eq!(s.len(), 1);
        assert_eq!(
            s.holder_of(Ipv4Addr::new(10, 9, 0, 101)).unwrap().mac.0[5],
            2
        );
    }
}
