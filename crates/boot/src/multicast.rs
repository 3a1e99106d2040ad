//! `[multicast]`: the image sent once to a multicast group for every seat that boots it
//! (docs/MULTICAST.md). Off by default: a network must carry multicast for it to help.
//!
//! ```toml
//! [multicast]
//! enabled = true
//! groups = "239.255.77.0/24"   # one group per image version sent at once
//! port = 5940
//! rate = 500                   # megabits per second per session
//! ttl = 1                      # the lab's subnet only; routed campuses: docs/SCALING.md
//! querier = false              # send IGMP queries where no router or switch does
//! ```

use crate::config::MulticastGroups;
use serde::Deserialize;
use std::net::Ipv4Addr;
use std::num::{NonZeroU16, NonZeroU32, NonZeroU8};

/// The `[multicast]` section as written, each value checked as it is read (a mistake is
/// reported at its line: `crate::config`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MulticastSection {
    /// Seats may join a session (default false).
    pub enabled: bool,
    /// The groups sessions take, an IPv4 network inside 239.0.0.0/8 (administratively scoped,
    /// RFC 2365: never routed off the site).
    pub groups: MulticastGroups,
    /// UDP port every session sends to.
    pub port: NonZeroU16,
    /// Megabits per second a session sends at.
    pub rate: NonZeroU32,
    /// IP TTL of the datagrams: 1 keeps them on the seats' subnet.
    pub ttl: NonZeroU8,
    /// The server sends IGMP General Queries on its interface, for a network with no querier
    /// of its own (docs/SCALING.md: snooping switches age memberships out without one).
    pub querier: bool,
}

impl Default for MulticastSection {
    fn default() -> Self {
        MulticastSection {
            enabled: false,
            groups: "239.255.77.0/24".parse().expect("a scoped network"),
            port: NonZeroU16::new(5940).expect("not 0"),
            rate: NonZeroU32::new(500).expect("not 0"),
            ttl: NonZeroU8::MIN,
            querier: false,
        }
    }
}

/// `[subnet.multicast]`: what a `[[subnet]]`'s seats get instead of `[multicast]`'s values,
/// key by key (a key left out keeps `[multicast]`'s). A lab whose switch carries multicast
/// beside an office that does not: `enabled = false` there; a subnet behind a router: its own
/// `ttl`; a room with 100 Mbit ports: its own `rate`; its own `groups`, so its sessions do
/// not share a group with another subnet's.
///
/// ```toml
/// [[subnet]]
/// cidr = "10.2.0.0/16"
/// image_urls = ["http://cache-b02"]
/// [subnet.multicast]
/// enabled = true
/// groups = "239.255.78.0/24"
/// rate = 90
/// ttl = 4
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SubnetMulticast {
    /// Seats of this subnet may join.
    pub enabled: Option<bool>,
    /// Their sessions' groups.
    pub groups: Option<MulticastGroups>,
    /// Megabits per second their sessions send at.
    pub rate: Option<NonZeroU32>,
    /// IP TTL of their sessions' datagrams.
    pub ttl: Option<NonZeroU8>,
}

impl SubnetMulticast {
    /// `[multicast]` with this subnet's values in place of its own; `None` when that is off.
    pub fn over(&self, site: &MulticastSection) -> Option<Multicast> {
        MulticastSection {
            enabled: self.enabled.unwrap_or(site.enabled),
            groups: self.groups.unwrap_or(site.groups),
            rate: self.rate.unwrap_or(site.rate),
            ttl: self.ttl.unwrap_or(site.ttl),
            ..site.clone()
        }
        .resolve()
    }
}

/// `[multicast]` as the server's sessions use it (a subnet's, when it has its own values:
/// sessions with other values are other sessions).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Multicast {
    /// The group range.
    pub groups: ipnet::Ipv4Net,
    /// UDP port.
    pub port: u16,
    /// Bytes per second a session sends.
    pub bytes_per_second: u64,
    /// IP TTL.
    pub ttl: u8,
    /// Send IGMP General Queries.
    pub querier: bool,
}

impl MulticastSection {
    /// What the sessions use; `None` when disabled. (Nothing left to check: the values were
    /// checked when the config was read.)
    pub fn resolve(&self) -> Option<Multicast> {
        self.enabled.then(|| Multicast {
            groups: self.groups.net(),
            port: self.port.get(),
            bytes_per_second: u64::from(self.rate.get()) * 1_000_000 / 8,
            ttl: self.ttl.get(),
            querier: self.querier,
        })
    }
}

impl Multicast {
    /// The `n`-th group of the range, wrapping round (network and broadcast addresses left
    /// out when the range has room).
    pub fn group(&self, n: u32) -> Ipv4Addr {
        let hosts: Vec<Ipv4Addr> = self.groups.hosts().collect();
        if hosts.is_empty() {
            return self.groups.network();
        }
        hosts[n as usize % hosts.len()]
    }
}

/// How a seat that was given `diskless.multicast=` got its image, from the detail of its
/// `fetched` report, or of its `filled` report for a lazy seat, whose RAM copy the session
/// filled (`Stage::reports_multicast`; the fetch helper writes both, and tests there parse
/// its text with this).
/// As JSON (the dashboard's per-seat table): `{"outcome": "joined", "multicast_bytes": N,
/// "http_bytes": M}`, `{"outcome": "unreachable"}`, `{"outcome": "failed"}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "outcome", rename_all = "kebab-case")]
pub enum MulticastFetch {
    /// By the session: `multicast_bytes=N http_bytes=M` (M repaired over HTTP).
    Joined {
        /// Bytes taken from the group.
        multicast_bytes: u64,
        /// Bytes repaired over HTTP Range.
        http_bytes: u64,
    },
    /// `multicast=unreachable`: nothing arrived on the group; the image came by HTTP.
    Unreachable,
    /// `multicast=failed`: the session could not be used (join refused, a block still wrong
    /// after repair ...); the image came by HTTP.
    Failed,
}

impl MulticastFetch {
    /// What a `fetched` detail says of multicast; `None` for a seat that did not try.
    pub fn parse(detail: &str) -> Option<MulticastFetch> {
        let field = |name: &str| {
            detail
                .split_whitespace()
                .find_map(|w| w.strip_prefix(name)?.strip_prefix('='))
        };
        match field("multicast") {
            Some("unreachable") => return Some(MulticastFetch::Unreachable),
            Some("failed") => return Some(MulticastFetch::Failed),
            _ => {}
        }
        Some(MulticastFetch::Joined {
            multicast_bytes: field("multicast_bytes")?.parse().ok()?,
            http_bytes: field("http_bytes")?.parse().ok()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fetched_detail_says_how_multicast_went() {
        assert_eq!(
            MulticastFetch::parse("bytes=10 seconds=1.00 mbps=0.0 multicast_bytes=9 http_bytes=1"),
            Some(MulticastFetch::Joined {
                multicast_bytes: 9,
                http_bytes: 1
            })
        );
        assert_eq!(
            MulticastFetch::parse("bytes=10 seconds=1.00 mbps=0.0 multicast=unreachable"),
            Some(MulticastFetch::Unreachable)
        );
        assert_eq!(
            MulticastFetch::parse("bytes=10 multicast=failed"),
            Some(MulticastFetch::Failed)
        );
        assert_eq!(
            MulticastFetch::parse("bytes=10 seconds=1.00 mbps=0.0"),
            None
        );
        // The dashboard reads these names.
        assert_eq!(
            serde_json::to_value(MulticastFetch::Joined {
                multicast_bytes: 9,
                http_bytes: 1
            })
            .unwrap(),
            serde_json::json!({"outcome": "joined", "multicast_bytes": 9, "http_bytes": 1})
        );
        assert_eq!(
            serde_json::to_value(MulticastFetch::Unreachable).unwrap(),
            serde_json::json!({"outcome": "unreachable"})
        );
        assert_eq!(
            MulticastFetch::parse("multicast_bytes=x http_bytes=1"),
            None
        );
    }

    #[test]
    fn off_by_default_and_resolved_when_on() {
        assert_eq!(MulticastSection::default().resolve(), None);
        let on = MulticastSection {
            enabled: true,
            ..Default::default()
        };
        let m = on.resolve().unwrap();
        assert_eq!(m.bytes_per_second, 62_500_000);
        assert_eq!(m.ttl, 1);
        assert_eq!(m.group(0), Ipv4Addr::new(239, 255, 77, 1));
        assert_eq!(m.group(254), Ipv4Addr::new(239, 255, 77, 1), "wraps round");
        assert!(!m.querier, "no IGMP queries unless asked");
        let asked = crate::config::Config::parse(
            "[multicast]\nenabled = true\nquerier = true\n",
            std::path::Path::new("t.toml"),
        )
        .unwrap();
        assert!(asked.multicast.resolve().unwrap().querier);
    }

    /// Mistakes are reported where they are written (the config's file:line).
    #[test]
    fn a_bad_section_is_refused_at_its_line() {
        for (text, line, said) in [
            (
                "[multicast]\ngroups = \"224.1.2.0/24\"\n",
                2,
                "outside 239.0.0.0/8",
            ),
            (
                "[multicast]\ngroups = \"239.1.1.1-239.1.1.9\"\n",
                2,
                "not an IPv4 network",
            ),
            ("[multicast]\nenabled = true\nrate = 0\n", 3, "nonzero"),
            ("[multicast]\nttl = 0\n", 2, "nonzero"),
            ("[multicast]\nport = 0\n", 2, "nonzero"),
        ] {
            let e = crate::config::Config::parse(text, std::path::Path::new("t.toml")).unwrap_err();
            assert_eq!(e.line, Some(line), "{text}: {e}");
            assert!(e.to_string().contains(said), "{text}: {e}");
        }
    }
}
