//! Who may fetch what: with `unknown_clients = "ignore"`, HTTP (boot scripts, image files,
//! iPXE binaries, the client API) and TFTP answer only the machines the config lists as
//! `[[client]]`; DHCP already offers them nothing ([`Site::serves`]). With `"boot"` (the
//! default) everyone is served and nothing here runs.
//!
//! HTTP and TFTP see an IP address, the config lists MAC addresses: [`mac_of`] is the one
//! place that maps one to the other, from what the server knows, in this order:
//!
//! 1. **The kernel's neighbour table** (`/proc/self/net/arp`), complete entries on the served
//!    interface: who holds the address on the boot link now. A peer that sends us a TCP
//!    segment or a TFTP request on that link has usually made the entry itself (it asked for
//!    our MAC, and Linux keeps the asker's). Full and proxy mode.
//! 2. **The server's own leases** (`STATE/leases.json`, full mode): the bound, unexpired
//!    lease of that address, for a peer the table does not list (yet, or any more).
//!
//! Not the recorder's last-seen address of a client: script requests and reports name their
//! MAC in the URL, so that address is what a peer claimed, not what the server observed.
//!
//! A peer on another link (through a router) shows up as the router's MAC or not at all, and
//! is refused: only clients on the boot link can be identified. Nothing here authenticates: a
//! host on the boot link that takes a listed MAC or a listed client's address passes. This is
//! access control against mistakes and casual hosts (a visitor's laptop set to network boot),
//! not against an attacker on the segment (see docs/SECURITY.md).
//!
//! A refused request is logged, counted in `diskless_access_refused_total{protocol}` and
//! answered 403 (HTTP) or with TFTP error 2, access violation.

use crate::metrics::Metrics;
use diskless_boot::config::UnknownClients;
use diskless_boot::{Mac, Mode, Site};
use diskless_dhcp::lease::{LeaseState, LeaseStore};
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::Arc;

/// The kernel's IPv4 neighbour table, as procfs shows it. Through `self`, not `/proc/net`:
/// the unit's `ProcSubset=pid` mounts procfs with `subset=pid`, which hides `/proc/net` but
/// keeps `/proc/self/net/arp` (tried with `mount -t proc -o subset=pid`, Linux 6.x).
pub const ARP_TABLE: &str = "/proc/self/net/arp";

/// `ATF_COM` in the Flags column: the entry has a hardware address (include/uapi/linux/if_arp.h).
const ATF_COM: u32 = 0x2;

/// One complete entry of the neighbour table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Neighbour {
    pub ip: Ipv4Addr,
    pub mac: Mac,
}

/// The complete entries on `interface` of a `/proc/net/arp` text (a header line, then
/// `IP  HW-type  Flags  HW-address  Mask  Device`); lines that do not parse are skipped.
pub fn parse_arp(text: &str, interface: &str) -> Vec<Neighbour> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let [ip, _, flags, mac, _, device] = f[..] else {
                return None;
            };
            let flags = u32::from_str_radix(flags.trim_start_matches("0x"), 16).ok()?;
            if device != interface || flags & ATF_COM == 0 {
                return None;
            }
            Some(Neighbour {
                ip: ip.parse().ok()?,
                mac: mac.parse().ok()?,
            })
        })
        .collect()
}

/// Where a peer's MAC came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The kernel's neighbour table.
    Neighbour,
    /// The server's bound lease of that address (full mode).
    Lease,
}

/// The MAC of the peer at `ip`: the neighbour table first, then the leases (full mode only;
/// a bound lease unexpired at `now`, Unix seconds). None: the server cannot tell.
pub fn mac_of(
    ip: IpAddr,
    neighbours: &[Neighbour],
    leases: Option<&LeaseStore>,
    now: u64,
) -> Option<(Mac, Source)> {
    let IpAddr::V4(ip) = ip else {
        return None;
    };
    if let Some(n) = neighbours.iter().find(|n| n.ip == ip) {
        return Some((n.mac, Source::Neighbour));
    }
    leases?
        .holder_of(ip)
        .filter(|l| l.state == LeaseState::Bound && l.expires > now)
        .map(|l| (l.mac, Source::Lease))
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The peer's MAC could not be found.
    Unmapped,
    /// The peer is a machine the config does not list.
    Unlisted(Mac),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Unmapped => write!(
                f,
                "this server answers only the clients it lists, and cannot tell this one's MAC"
            ),
            Refusal::Unlisted(mac) => write!(f, "{mac} is not a client of this server"),
        }
    }
}

/// The decision: whether the site serves the peer whose MAC is `mapped` (the one boot
/// decision, [`Site::serves`]; a peer whose MAC is unknown only where it matters).
pub fn decide(site: &Site, mapped: Option<Mac>) -> Result<(), Refusal> {
    match mapped {
        _ if site.unknown_clients == UnknownClients::Boot => Ok(()),
        None => Err(Refusal::Unmapped),
        Some(mac) if site.serves(mac) => Ok(()),
        Some(mac) => Err(Refusal::Unlisted(mac)),
    }
}

/// The protocol a request came in on (the counter's label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http,
    Tftp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http => "http",
            Protocol::Tftp => "tftp",
        }
    }
}

/// The check the HTTP and TFTP servers make, with its I/O: the neighbour table and the
/// leases are read at each request of a site that ignores unknown clients. Cheap to clone.
#[derive(Clone)]
pub struct Access {
    /// The neighbour table's file ([`ARP_TABLE`]; tests give another).
    pub arp_table: PathBuf,
    pub metrics: Arc<Metrics>,
}

impl Access {
    pub fn new(metrics: Arc<Metrics>) -> Access {
        Access {
            arp_table: ARP_TABLE.into(),
            metrics,
        }
    }

    /// Whether `site` serves `peer` (None: unknown, refused when it matters); a refusal is
    /// logged with `what` (the path or file asked for) and counted.
    pub fn check(
        &self,
        site: &Site,
        peer: Option<IpAddr>,
        protocol: Protocol,
        what: &str,
    ) -> Result<(), Refusal> {
        if site.unknown_clients == UnknownClients::Boot {
            return Ok(());
        }
        let mapped = peer.and_then(|ip| self.lookup(site, ip));
        let verdict = decide(site, mapped.map(|(mac, _)| mac));
        if let Err(refusal) = &verdict {
            self.metrics.access_refused(protocol.as_str());
            tracing::warn!(
                peer = ?peer, mac = ?mapped.map(|(m, _)| m.to_string()), from = ?mapped.map(|(_, s)| s),
                protocol = protocol.as_str(), %what, "refused (unknown_clients = \"ignore\"): {refusal}"
            );
        }
        verdict
    }

    fn lookup(&self, site: &Site, ip: IpAddr) -> Option<(Mac, Source)> {
        let neighbours = std::fs::read_to_string(&self.arp_table)
            .map(|text| parse_arp(&text, &site.interface))
            .unwrap_or_else(|e| {
                tracing::warn!(file = %self.arp_table.display(), error = %e, "cannot read the neighbour table");
                Vec::new()
            });
        let leases = (site.mode == Mode::Full)
            .then(|| LeaseStore::load(&site.state.join("leases.json")).ok())
            .flatten();
        let now = diskless_dhcp::lease::unix_secs(std::time::SystemTime::now());
        mac_of(ip, &neighbours, leases.as_ref(), now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use diskless_dhcp::lease::Lease;

    const ARP: &str = "\
IP address       HW type     Flags       HW address            Mask     Device
10.0.0.51        0x1         0x2         52:54:00:00:00:01     *        eth0
10.0.0.52        0x1         0x0         00:00:00:00:00:00     *        eth0
10.0.0.53        0x1         0x2         52:54:00:00:00:03     *        eth1
10.0.0.54        0x1         0x6         52:54:00:99:99:99     *        eth0
garbage line
";

    fn mac(s: &str) -> Mac {
        s.parse().unwrap()
    }

    #[test]
    fn the_arp_table_gives_complete_entries_of_the_interface() {
        let n = parse_arp(ARP, "eth0");
        assert_eq!(
            n,
            [
                Neighbour {
                    ip: "10.0.0.51".parse().unwrap(),
                    mac: mac("52:54:00:00:00:01")
                },
                Neighbour {
                    ip: "10.0.0.54".parse().unwrap(),
                    mac: mac("52:54:00:99:99:99")
                },
            ]
        );
        assert_eq!(parse_arp(ARP, "eth1").len(), 1);
        assert!(parse_arp("", "eth0").is_empty());
    }

    #[test]
    fn the_neighbour_table_comes_first_then_a_bound_lease() {
        let neighbours = parse_arp(ARP, "eth0");
        let mut leases = LeaseStore::new();
        for (m, ip, state, expires) in [
            ("52:54:00:00:00:07", "10.0.0.51", LeaseState::Bound, 2000),
            ("52:54:00:00:00:08", "10.0.0.60", LeaseState::Bound, 2000),
            ("52:54:00:00:00:09", "10.0.0.61", LeaseState::Offered, 2000),
            ("52:54:00:00:00:0a", "10.0.0.62", LeaseState::Bound, 500),
        ] {
            leases.insert(Lease {
                mac: mac(m),
                ip: ip.parse().unwrap(),
                expires,
                state,
                hostname: None,
            });
        }
        let of = |ip: &str, leases: Option<&LeaseStore>| {
            mac_of(ip.parse().unwrap(), &neighbours, leases, 1000)
        };
        assert_eq!(
            of("10.0.0.51", Some(&leases)),
            Some((mac("52:54:00:00:00:01"), Source::Neighbour))
        );
        assert_eq!(
            of("10.0.0.60", Some(&leases)),
            Some((mac("52:54:00:00:00:08"), Source::Lease))
        );
        assert_eq!(of("10.0.0.60", None), None, "proxy mode: no leases");
        assert_eq!(of("10.0.0.61", Some(&leases)), None, "only offered");
        assert_eq!(of("10.0.0.62", Some(&leases)), None, "expired");
        assert_eq!(of("10.0.0.52", Some(&leases)), None, "incomplete entry");
        assert_eq!(of("::1", Some(&leases)), None);
    }

    #[test]
    fn only_listed_clients_pass_when_unknown_ones_are_ignored() {
        let clients = "[[client]]\nmac = \"52:54:00:00:00:01\"\n";
        let ignore = Site::for_tests(&format!("[boot]\nunknown_clients = \"ignore\"\n{clients}"));
        assert_eq!(decide(&ignore, Some(mac("52:54:00:00:00:01"))), Ok(()));
        assert_eq!(
            decide(&ignore, Some(mac("52:54:00:99:99:99"))),
            Err(Refusal::Unlisted(mac("52:54:00:99:99:99")))
        );
        assert_eq!(decide(&ignore, None), Err(Refusal::Unmapped));
        let boot = Site::for_tests(clients);
        assert_eq!(decide(&boot, None), Ok(()));
        assert_eq!(decide(&boot, Some(mac("52:54:00:99:99:99"))), Ok(()));
    }

    #[test]
    fn a_refusal_is_counted_and_a_listed_neighbour_passes() {
        let dir = tempfile::tempdir().unwrap();
        let arp = dir.path().join("arp");
        std::fs::write(&arp, ARP).unwrap();
        let access = Access {
            arp_table: arp,
            metrics: Arc::new(Metrics::new()),
        };
        let site = Site::for_tests(
            "mode = \"proxy\"\n[boot]\nunknown_clients = \"ignore\"\n\
             [[client]]\nmac = \"52:54:00:00:00:01\"\n",
        );
        let ip = |s: &str| Some(s.parse().unwrap());
        assert_eq!(
            access.check(&site, ip("10.0.0.51"), Protocol::Http, "/"),
            Ok(())
        );
        assert!(access
            .check(&site, ip("10.0.0.54"), Protocol::Http, "/")
            .is_err());
        assert!(access
            .check(&site, ip("10.0.0.53"), Protocol::Tftp, "x")
            .is_err());
        assert!(access.check(&site, None, Protocol::Http, "/").is_err());
        let text = access.metrics.render();
        assert!(
            text.contains("diskless_access_refused_total{protocol=\"http\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("diskless_access_refused_total{protocol=\"tftp\"} 1"),
            "{text}"
        );
    }
}
