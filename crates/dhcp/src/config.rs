//! Server settings and their validation.

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::time::Duration;

use crate::Mac;

/// Full DHCP or proxyDHCP (`mode = "full"` or `"proxy"` in the site config).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// We are the network's DHCP server: we hand out addresses.
    #[default]
    Full,
    /// Another server hands out addresses; we only add boot information
    /// for network-boot clients (PXE spec section 2.2.4), on port 67 and
    /// on the PXE boot-server port 4011.
    Proxy,
}

/// A fixed address (and optional host name) for one MAC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    /// Client Ethernet address.
    pub mac: Mac,
    /// Address it always gets.
    pub ip: Ipv4Addr,
    /// Option 12 host name.
    pub hostname: Option<String>,
}

/// Everything the DHCP core needs to know about the network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DhcpConfig {
    /// Full or proxy.
    pub mode: Mode,
    /// Our address on the served interface: option 54, `siaddr`.
    pub server_ip: Ipv4Addr,
    /// Subnet mask of the served network (option 1).
    pub netmask: Ipv4Addr,
    /// Default gateway (option 3).
    pub router: Option<Ipv4Addr>,
    /// DNS servers (option 6).
    pub dns: Vec<Ipv4Addr>,
    /// Domain name (option 15).
    pub domain: Option<String>,
    /// Dynamic pool, inclusive. Required in full mode, absent in proxy mode.
    pub range: Option<(Ipv4Addr, Ipv4Addr)>,
    /// Lease time (option 51).
    pub lease_time: Duration,
    /// Fixed addresses by MAC (full mode only).
    pub reservations: Vec<Reservation>,
}

/// Largest dynamic pool accepted: the allocator scans it linearly.
pub const MAX_POOL: u32 = 65_536;
/// Shortest lease accepted.
pub const MIN_LEASE: Duration = Duration::from_secs(60);

/// A configuration that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The netmask has holes (like 255.0.255.0) or is /0 or /32.
    #[error("netmask {0} is not a usable contiguous mask")]
    BadNetmask(Ipv4Addr),
    /// Server address is the subnet's network or broadcast address.
    #[error("server address {0} is the network or broadcast address of its subnet")]
    BadServerIp(Ipv4Addr),
    /// Full mode without a pool.
    #[error("full DHCP mode needs an address range")]
    MissingRange,
    /// Proxy mode with a pool or reservations: proxyDHCP never hands out
    /// addresses.
    #[error("proxy mode never hands out addresses: remove the {0}")]
    AddressesInProxyMode(&'static str),
    /// Range start after end.
    #[error("range {0} - {1} is reversed")]
    ReversedRange(Ipv4Addr, Ipv4Addr),
    /// An address that must be inside the server's subnet is not.
    #[error("{what} {ip} is outside the subnet {network}/{prefix}")]
    OutsideSubnet {
        /// Which setting.
        what: &'static str,
        /// The address.
        ip: Ipv4Addr,
        /// The subnet's network address.
        network: Ipv4Addr,
        /// Prefix length.
        prefix: u32,
    },
    /// Range covers the network or broadcast address.
    #[error("range {0} - {1} includes the network or broadcast address")]
    RangeIncludesNetworkOrBroadcast(Ipv4Addr, Ipv4Addr),
    /// Range larger than [`MAX_POOL`].
    #[error("range of {0} addresses is larger than the {MAX_POOL} supported")]
    RangeTooLarge(u32),
    /// A reservation for the server's own, the network or the broadcast
    /// address.
    #[error("reservation for {mac} uses {ip}, which is the server, network or broadcast address")]
    ReservedSpecialAddress {
        /// MAC, formatted.
        mac: String,
        /// The address.
        ip: Ipv4Addr,
    },
    /// Two reservations for one MAC.
    #[error("two reservations for {0}")]
    DuplicateMac(String),
    /// Two reservations for one address.
    #[error("two reservations for {0}")]
    DuplicateIp(Ipv4Addr),
    /// A host name or domain that is not a valid DNS name.
    #[error(
        "{what} {name:?} is not a valid host name (letters, digits, '-', '.'; labels of 1-63)"
    )]
    BadName {
        /// Which setting.
        what: &'static str,
        /// The value.
        name: String,
    },
    /// Lease shorter than [`MIN_LEASE`] or longer than option 51 can carry.
    #[error("lease time {0:?} is out of range (60 s to 2^32-2 s)")]
    BadLeaseTime(Duration),
}

impl DhcpConfig {
    /// Prefix length of the netmask.
    pub fn prefix_len(&self) -> u32 {
        u32::from(self.netmask).leading_ones()
    }

    /// Network address of the served subnet.
    pub fn network(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.server_ip) & u32::from(self.netmask))
    }

    /// Broadcast address of the served subnet.
    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.server_ip) | !u32::from(self.netmask))
    }

    /// Whether `ip` is in the served subnet.
    pub fn in_subnet(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & u32::from(self.netmask) == u32::from(self.network())
    }

    /// Whether `ip` can be given to a client at all: in the subnet, not the
    /// network, broadcast or server address.
    pub fn is_client_address(&self, ip: Ipv4Addr) -> bool {
        self.in_subnet(ip) && ip != self.network() && ip != self.broadcast() && ip != self.server_ip
    }

    /// Whether `ip` is in the dynamic range.
    pub fn in_range(&self, ip: Ipv4Addr) -> bool {
        self.range
            .is_some_and(|(lo, hi)| (u32::from(lo)..=u32::from(hi)).contains(&u32::from(ip)))
    }

    /// The reservation for `mac`, if any.
    pub fn reservation(&self, mac: Mac) -> Option<&Reservation> {
        self.reservations.iter().find(|r| r.mac == mac)
    }

    /// The reservation holding `ip`, if any.
    pub fn reservation_of_ip(&self, ip: Ipv4Addr) -> Option<&Reservation> {
        self.reservations.iter().find(|r| r.ip == ip)
    }

    /// Check the settings; every error names the offending value.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mask = u32::from(self.netmask);
        if mask.leading_ones() + mask.trailing_zeros() != 32 || mask == 0 || mask == u32::MAX {
            return Err(ConfigError::BadNetmask(self.netmask));
        }
        if self.server_ip == self.network() || self.server_ip == self.broadcast() {
            return Err(ConfigError::BadServerIp(self.server_ip));
        }
        let outside = |what, ip| ConfigError::OutsideSubnet {
            what,
            ip,
            network: self.network(),
            prefix: self.prefix_len(),
        };
        if let Some(r) = self.router {
            if !self.in_subnet(r) {
                return Err(outside("router", r));
            }
        }
        if let Some(d) = &self.domain {
            check_name("domain", d)?;
        }
        check_lease_time(self.lease_time)?;
        match self.mode {
            Mode::Proxy => {
                if self.range.is_some() {
                    return Err(ConfigError::AddressesInProxyMode("address range"));
                }
                if !self.reservations.is_empty() {
                    return Err(ConfigError::AddressesInProxyMode("reservations"));
                }
            }
            Mode::Full => {
                let (lo, hi) = self.range.ok_or(ConfigError::MissingRange)?;
                if u32::from(lo) > u32::from(hi) {
                    return Err(ConfigError::ReversedRange(lo, hi));
                }
                for ip in [lo, hi] {
                    if !self.in_subnet(ip) {
                        return Err(outside("range bound", ip));
                    }
                }
                if lo == self.network() || hi == self.broadcast() {
                    return Err(ConfigError::RangeIncludesNetworkOrBroadcast(lo, hi));
                }
                let size = u32::from(hi) - u32::from(lo) + 1;
                if size > MAX_POOL {
                    return Err(ConfigError::RangeTooLarge(size));
                }
            }
        }
        let mut macs = HashSet::new();
        let mut ips = HashSet::new();
        for r in &self.reservations {
            let mac = r.mac.to_string();
            if !self.in_subnet(r.ip) {
                return Err(outside("reservation", r.ip));
            }
            if !self.is_client_address(r.ip) {
                return Err(ConfigError::ReservedSpecialAddress { mac, ip: r.ip });
            }
            if let Some(h) = &r.hostname {
                check_name("host name", h)?;
            }
            if !macs.insert(r.mac) {
                return Err(ConfigError::DuplicateMac(mac));
            }
            if !ips.insert(r.ip) {
                return Err(ConfigError::DuplicateIp(r.ip));
            }
        }
        Ok(())
    }
}

/// A lease time option 51 can carry, and at least [`MIN_LEASE`].
pub fn check_lease_time(lease_time: Duration) -> Result<(), ConfigError> {
    if lease_time < MIN_LEASE || lease_time.as_secs() >= u64::from(u32::MAX) {
        return Err(ConfigError::BadLeaseTime(lease_time));
    }
    Ok(())
}

/// A DNS name (a host name, a domain) as option 12 and 15 carry it; `what` names the setting.
pub fn check_name(what: &'static str, name: &str) -> Result<(), ConfigError> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        });
    if ok {
        Ok(())
    } else {
        Err(ConfigError::BadName {
            what,
            name: name.to_string(),
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn full() -> DhcpConfig {
        DhcpConfig {
            mode: Mode::Full,
            server_ip: Ipv4Addr::new(10, 9, 0, 1),
            netmask: Ipv4Addr::new(255, 255, 255, 0),
            router: Some(Ipv4Addr::new(10, 9, 0, 254)),
            dns: vec![Ipv4Addr::new(10, 9, 0, 1)],
            domain: Some("lab.example".into()),
            range: Some((Ipv4Addr::new(10, 9, 0, 100), Ipv4Addr::new(10, 9, 0, 102))),
            lease_time: Duration::from_secs(3600),
            reservations: vec![Reservation {
                mac: Mac([2, 0, 0, 0, 0, 7]),
                ip: Ipv4Addr::new(10, 9, 0, 7),
                hostname: Some("ws7".into()),
            }],
        }
    }

    #[test]
    fn good_configs_pass() {
        full().validate().unwrap();
        let mut p = full();
        p.mode = Mode::Proxy;
        p.range = None;
        p.reservations.clear();
        p.validate().unwrap();
    }

    #[test]
    fn errors_name_the_problem() {
        let mut c = full();
        c.range = Some((Ipv4Addr::new(10, 9, 0, 100), Ipv4Addr::new(10, 9, 1, 5)));
        let e = c.validate().unwrap_err();
        assert_eq!(
            e.to_string(),
            "range bound 10.9.1.5 is outside the subnet 10.9.0.0/24"
        );

        let mut c = full();
        c.reservations[0].ip = c.server_ip;
        assert!(matches!(
            c.validate(),
            Err(ConfigError::ReservedSpecialAddress { .. })
        ));

        let mut c = full();
        c.reservations[0].ip = Ipv4Addr::new(192, 168, 1, 1);
        assert!(matches!(
            c.validate(),
            Err(ConfigError::OutsideSubnet {
                what: "reservation",
                ..
            })
        ));

        let mut c = full();
        c.range = None;
        assert_eq!(c.validate(), Err(ConfigError::MissingRange));

        let mut c = full();
        c.mode = Mode::Proxy;
        assert_eq!(
            c.validate(),
            Err(ConfigError::AddressesInProxyMode("address range"))
        );

        let mut c = full();
        c.netmask = Ipv4Addr::new(255, 0, 255, 0);
        assert!(matches!(c.validate(), Err(ConfigError::BadNetmask(_))));

        let mut c = full();
        c.range = Some((Ipv4Addr::new(10, 9, 0, 0), Ipv4Addr::new(10, 9, 0, 9)));
        assert!(matches!(
            c.validate(),
            Err(ConfigError::RangeIncludesNetworkOrBroadcast(..))
        ));

        let mut c = full();
        c.reservations.push(c.reservations[0].clone());
        assert!(matches!(c.validate(), Err(ConfigError::DuplicateMac(_))));

        let mut c = full();
        c.reservations[0].hostname = Some("bad name".into());
        assert!(matches!(c.validate(), Err(ConfigError::BadName { .. })));

        let mut c = full();
        c.lease_time = Duration::from_secs(5);
        assert!(matches!(c.validate(), Err(ConfigError::BadLeaseTime(_))));
    }
}
