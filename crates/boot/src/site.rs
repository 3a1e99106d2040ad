//! The site: the config resolved once, against the served interface's address, into the typed
//! values every part of the server reads.
//!
//! [`Site::resolve`] fills in the default pool, picks the one [`Mode`], builds the authorities
//! clients are given (`10.0.0.1` or `10.0.0.1:8080`) and indexes the `[[client]]` table by
//! MAC. It parses nothing: the config's values were typed when it was read. Nothing re-reads
//! the [`Config`] afterwards.
//!
//! The server holds the current `Arc<Site>` in a `tokio::sync::watch` channel: a reload
//! (`diskless_server::SiteHandle::reload`) swaps it, and each DHCP request and each script
//! request reads the site current at that moment ([`crate::decision`]). What a reload cannot
//! change without new sockets (interface, ports, mode) is named by [`Site::restart_needed`].

use crate::accounts::Accounts;
use crate::config::{
    ClientConfig, Config, DhcpSection, ImageProtocol, IpxeSection, RecordSection, UnknownClients,
};
use crate::routes::{accounts_url, Route};
use diskless_dhcp::{DhcpConfig, Mac, Mode, Reservation};
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

/// A config that cannot be resolved on this interface.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SiteError {
    /// No interface was given.
    #[error("no interface given: use --interface or set interface in the config")]
    NoInterface,
    /// Full mode without a range, on a subnet too small for the default pool.
    #[error(
        "the subnet of {ip}/{netmask} is too small for the default pool (.100 to .199): set [dhcp] range"
    )]
    NoDefaultRange {
        /// The server's address.
        ip: Ipv4Addr,
        /// Its netmask.
        netmask: Ipv4Addr,
    },
}

/// Whose IPv6 router solicitations the server answers, each answer saying "no router, no
/// DHCPv6 here" (`ipv6_ra`; the server's `ra` module has why iPXE needs one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ipv6Ra {
    /// Nobody (`ipv6_ra = false`).
    Off,
    /// Everyone, to all nodes: a network we own (full mode, or `ipv6_ra = true`).
    All,
    /// Only the iPXE clients this server has just answered, each once and unicast: on a
    /// network we do not own (proxy mode), where the site may have an IPv6 router of its own
    /// whose flags an advertisement to all nodes would contradict.
    Booting,
}

impl Ipv6Ra {
    /// Whose solicitations `config` has answered: `ipv6_ra` if set, else everyone's in full
    /// mode and only booting clients' in proxy mode. Known from the config alone, before the
    /// interface is read: `serve` decides from it whether to keep CAP_NET_RAW.
    pub fn of(config: &Config) -> Ipv6Ra {
        match (config.ipv6_ra, config.mode) {
            (Some(false), _) => Ipv6Ra::Off,
            (Some(true), _) | (None, Mode::Full) => Ipv6Ra::All,
            (None, Mode::Proxy) => Ipv6Ra::Booting,
        }
    }
}

/// The resolved site config (see the module docs).
#[derive(Debug, Clone, PartialEq)]
pub struct Site {
    /// The interface served on.
    pub interface: String,
    /// Our IPv4 address on it: every URL and option 54 name it.
    pub server_ip: Ipv4Addr,
    /// Its netmask.
    pub netmask: Ipv4Addr,
    /// Full DHCP or proxyDHCP.
    pub mode: Mode,
    /// The dynamic pool (full mode only): `[dhcp] range`, or .100 to .199 of the subnet.
    pub range: Option<(Ipv4Addr, Ipv4Addr)>,
    /// HTTP port.
    pub http_port: u16,
    /// TFTP port.
    pub tftp_port: u16,
    /// The admin listener (dashboard, `/metrics`), apart from the boot network; None: off.
    pub admin: Option<SocketAddr>,
    /// Names the admin listener answers to besides its address, lowercase.
    pub admin_names: Vec<String>,
    /// `10.0.0.1` or `10.0.0.1:8080`: how clients reach our HTTP server.
    pub http_authority: String,
    /// The same for TFTP.
    pub tftp_authority: String,
    /// Whose IPv6 router solicitations to answer.
    pub ipv6_ra: Ipv6Ra,
    /// The image store.
    pub store: PathBuf,
    /// Leases and the client record.
    pub state: PathBuf,
    /// Router, DNS, domain, lease time.
    pub dhcp: DhcpSection,
    /// The iPXE binaries.
    pub ipxe: IpxeSection,
    /// The image clients boot unless their entry names another.
    pub default_image: Option<String>,
    /// Whether clients without an entry boot.
    pub unknown_clients: UnknownClients,
    /// RAM disk size unless the client's entry says otherwise.
    pub size: String,
    /// `[boot] fetch`: how clients get the image unless their subnet or entry says.
    pub fetch: crate::config::FetchMode,
    /// Kernel options for every client.
    pub cmdline: String,
    /// How the initramfs fetches the image.
    pub image_protocol: ImageProtocol,
    /// `[boot] secure_boot`: UEFI PXE (and HTTP Boot) clients boot through shim and GRUB.
    pub secure_boot: bool,
    /// Bounds of the client record.
    pub record: RecordSection,
    /// The `[[client]]` entries by MAC.
    pub clients: HashMap<Mac, ClientConfig>,
    /// `[boot] image_urls`: the base URLs clients fetch their files from before this server.
    pub image_urls: Vec<String>,
    /// The `[[subnet]]` entries, the most specific (longest prefix) first.
    pub subnets: Vec<Subnet>,
    /// `[accounts]`: the lab's users, served to the clients and checked at login.
    pub accounts: Option<Accounts>,
    /// `[multicast]`, checked; None: off.
    pub multicast: Option<crate::multicast::Multicast>,
}

/// A `[[subnet]]` entry, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subnet {
    /// Its network.
    pub net: ipnet::Ipv4Net,
    /// The base URLs its clients fetch from before this server.
    pub image_urls: Vec<String>,
    /// Its clients' multicast (`[subnet.multicast]` over `[multicast]`); None: off for them.
    pub multicast: Option<crate::multicast::Multicast>,
    /// How its clients fetch the image, unless their entry says.
    pub fetch: Option<crate::config::FetchMode>,
}

/// The default pool: .100 to .199 of the interface's subnet, clipped to the subnet.
pub fn default_range(ip: Ipv4Addr, netmask: Ipv4Addr) -> Option<(Ipv4Addr, Ipv4Addr)> {
    let mask = u32::from(netmask);
    let network = u32::from(ip) & mask;
    let broadcast = network | !mask;
    let first = network + 100;
    let last = (network + 199).min(broadcast - 1);
    (first < broadcast && first <= last).then(|| (Ipv4Addr::from(first), Ipv4Addr::from(last)))
}

/// `ip` or `ip:port`, leaving out the scheme's default port.
fn authority(ip: Ipv4Addr, port: u16, default: u16) -> String {
    if port == default {
        ip.to_string()
    } else {
        format!("{ip}:{port}")
    }
}

impl Site {
    /// Resolve a validated `config` for a server at `server_ip`/`netmask` (the interface's
    /// address, looked up by the caller).
    pub fn resolve(
        config: &Config,
        server_ip: Ipv4Addr,
        netmask: Ipv4Addr,
    ) -> Result<Site, SiteError> {
        let interface = config.interface.clone().ok_or(SiteError::NoInterface)?;
        let range = match (config.mode, &config.dhcp.range) {
            (Mode::Proxy, _) => None,
            (Mode::Full, Some(r)) => Some((r.first, r.last)),
            (Mode::Full, None) => Some(default_range(server_ip, netmask).ok_or(
                SiteError::NoDefaultRange {
                    ip: server_ip,
                    netmask,
                },
            )?),
        };
        let mut subnets: Vec<Subnet> = config
            .subnets
            .iter()
            .map(|s| Subnet {
                net: s.cidr.net(),
                image_urls: s.image_urls.clone(),
                multicast: match &s.multicast {
                    Some(own) => own.over(&config.multicast),
                    None => config.multicast.resolve(),
                },
                fetch: s.fetch,
            })
            .collect();
        subnets.sort_by_key(|s| std::cmp::Reverse(s.net.prefix_len()));
        let http_authority = authority(server_ip, config.http_port, 80);
        let accounts = config
            .accounts
            .as_ref()
            .map(|a| Accounts::resolve(a, server_ip));
        // The boot script learns where the accounts are from the kernel command line, after
        // the site's own options.
        let mut cmdline = config.boot.cmdline.clone();
        if let Some(accounts) = &accounts {
            let params = accounts.kernel_params(&accounts_url(&http_authority));
            cmdline = [cmdline.as_str(), &params]
                .into_iter()
                .filter(|w| !w.is_empty())
                .collect::<Vec<_>>()
                .join(" ");
        }
        Ok(Site {
            interface,
            server_ip,
            netmask,
            mode: config.mode,
            range,
            http_port: config.http_port,
            tftp_port: config.tftp_port,
            admin: config.admin_addr(),
            admin_names: config
                .admin_names
                .iter()
                .map(|n| n.to_ascii_lowercase())
                .collect(),
            http_authority,
            tftp_authority: authority(server_ip, config.tftp_port, 69),
            ipv6_ra: Ipv6Ra::of(config),
            store: config.store.clone(),
            state: config.state.clone(),
            dhcp: config.dhcp.clone(),
            ipxe: config.ipxe.clone(),
            default_image: config.boot.image.clone(),
            unknown_clients: config.boot.unknown_clients,
            size: config.boot.size.to_string(),
            fetch: config.boot.fetch,
            cmdline,
            image_protocol: config.boot.image_protocol,
            secure_boot: config.boot.secure_boot,
            record: config.record.clone(),
            clients: config.clients.iter().map(|c| (c.mac, c.clone())).collect(),
            image_urls: config.boot.image_urls.clone(),
            subnets,
            accounts,
            multicast: config.multicast.resolve(),
        })
    }

    /// The DHCP core's settings. Host names are not in the reservations: the DHCP core asks
    /// the boot decision for them ([`crate::decision`]), so they take one route.
    pub fn dhcp_config(&self) -> DhcpConfig {
        let mut reservations: Vec<Reservation> = self
            .clients
            .values()
            .filter_map(|c| {
                Some(Reservation {
                    mac: c.mac,
                    ip: c.ip?,
                    hostname: None,
                })
            })
            .collect();
        reservations.sort_by_key(|r| r.mac);
        DhcpConfig {
            mode: self.mode,
            server_ip: self.server_ip,
            netmask: self.netmask,
            router: self.dhcp.router,
            dns: self.dhcp.dns.clone(),
            domain: self.dhcp.domain.clone(),
            range: self.range,
            lease_time: Duration::from_secs(self.dhcp.lease_time.into()),
            reservations,
        }
    }

    /// The HTTP URL of `route` on this server.
    pub fn url(&self, route: &Route) -> String {
        route.url(&self.http_authority)
    }

    /// What a reload to `new` cannot change on running sockets and tasks, if anything: the
    /// interface, the ports (HTTP, TFTP, the admin listener), the mode, the network's DHCP
    /// settings and the store and state directories need a restart. The boot decision (images, clients, options) does not.
    pub fn restart_needed(&self, new: &Site) -> Option<&'static str> {
        if self.interface != new.interface || self.server_ip != new.server_ip {
            Some("interface")
        } else if self.http_port != new.http_port
            || self.tftp_port != new.tftp_port
            || self.admin != new.admin
            || self.admin_names != new.admin_names
        {
            Some("ports")
        } else if self.mode != new.mode || self.dhcp_config() != new.dhcp_config() {
            Some("DHCP settings")
        } else if self.store != new.store || self.state != new.state {
            Some("store or state directory")
        } else if self.ipv6_ra != new.ipv6_ra || self.record != new.record {
            Some("ipv6_ra or [record]")
        } else {
            None
        }
    }

    /// A site for tests: `config` (TOML) served on `eth0` at 10.0.0.1/24.
    #[doc(hidden)]
    pub fn for_tests(config: &str) -> Site {
        let mut config =
            Config::parse(config, std::path::Path::new("test.toml")).expect("test config");
        config.interface.get_or_insert_with(|| "eth0".into());
        Site::resolve(
            &config,
            Ipv4Addr::new(10, 0, 0, 1),
            Ipv4Addr::new(255, 255, 255, 0),
        )
        .expect("test site")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_pool_is_inside_the_subnet() {
        let r =
            default_range(Ipv4Addr::new(10, 77, 0, 1), Ipv4Addr::new(255, 255, 255, 0)).unwrap();
        assert_eq!(
            r,
            (Ipv4Addr::new(10, 77, 0, 100), Ipv4Addr::new(10, 77, 0, 199))
        );
        let r = default_range(
            Ipv4Addr::new(10, 77, 0, 1),
            Ipv4Addr::new(255, 255, 255, 128),
        )
        .unwrap();
        assert_eq!(
            r,
            (Ipv4Addr::new(10, 77, 0, 100), Ipv4Addr::new(10, 77, 0, 126))
        );
        assert_eq!(
            default_range(
                Ipv4Addr::new(10, 77, 0, 1),
                Ipv4Addr::new(255, 255, 255, 192)
            ),
            None
        );
    }

    #[test]
    fn resolved_once_with_authorities_range_and_reservations() {
        let site = Site::for_tests(
            "http_port = 8080\n[dhcp]\nrange = \"10.0.0.10-10.0.0.20\"\n\
             [[client]]\nmac = \"52:54:00:00:00:01\"\nip = \"10.0.0.5\"\nhostname = \"pc01\"\n",
        );
        assert_eq!(site.http_authority, "10.0.0.1:8080");
        assert_eq!(site.tftp_authority, "10.0.0.1");
        assert_eq!(site.ipv6_ra, Ipv6Ra::All, "on in full mode by default");
        let dhcp = site.dhcp_config();
        assert_eq!(
            dhcp.range,
            Some((Ipv4Addr::new(10, 0, 0, 10), Ipv4Addr::new(10, 0, 0, 20)))
        );
        assert_eq!(dhcp.reservations.len(), 1);
        assert_eq!(
            dhcp.reservations[0].hostname, None,
            "one route for host names"
        );
        dhcp.validate().unwrap();
        let proxy = Site::for_tests("mode = \"proxy\"\n");
        assert_eq!((proxy.range, proxy.ipv6_ra), (None, Ipv6Ra::Booting));
        let off = Site::for_tests("mode = \"proxy\"\nipv6_ra = false\n");
        assert_eq!(off.ipv6_ra, Ipv6Ra::Off);
        let all = Site::for_tests("mode = \"proxy\"\nipv6_ra = true\n");
        assert_eq!(all.ipv6_ra, Ipv6Ra::All);
        proxy.dhcp_config().validate().unwrap();
    }

    #[test]
    fn a_reload_names_what_needs_a_restart() {
        let site = Site::for_tests("[boot]\nimage = \"lab\"\n");
        assert_eq!(
            site.restart_needed(&Site::for_tests("[boot]\nimage = \"other\"\n")),
            None
        );
        assert_eq!(
            site.restart_needed(&Site::for_tests("http_port = 8080\n")),
            Some("ports")
        );
        assert_eq!(
            site.restart_needed(&Site::for_tests("mode = \"proxy\"\n")),
            Some("DHCP settings")
        );
    }
}
