//! The one boot decision: given a client, what it boots, or that it is refused (pixiecore's
//! `Booter.BootSpec(Machine)`).
//!
//! Pure functions of the [`Site`]; the server's `Booter` (crates/server/src/booter.rs) is
//! the one caller, asked by DHCP, the HTTP script route and the TFTP/GRUB hook. Per boot it
//! asks two questions: at DHCP time [`Site::first_stage`] (is the client booted, by which
//! [`Loader`], and what its firmware loads first, a typed [`BootOffer`]), and once, when the
//! client asks for its iPXE script or GRUB config, [`Site::boot_spec`] (what it boots: the
//! boot that gets a report token). The chain a client follows is chosen by its [`Loader`]:
//!
//! | firmware (option 60/77/93) | [`Loader::Ipxe`] gets                                  |
//! |----------------------------|--------------------------------------------------------|
//! | BIOS PXE ROM               | `ipxe/undionly.kpxe` over TFTP (`[ipxe] bios`)          |
//! | UEFI x86-64 PXE            | `ipxe/ipxe.efi` over TFTP (`[ipxe] uefi`: snponly.efi)  |
//! | UEFI x86-64 HTTP boot      | `http://SERVER/ipxe/ipxe.efi`                          |
//! | iPXE                       | `http://SERVER/boot/MAC.ipxe`, its script              |
//! | anything else              | nothing (an address only, in full mode)               |
//!
//! The Secure Boot chain ([`Loader::ShimGrub`], `[boot] secure_boot` or a client's
//! `secure_boot`) changes two rows:
//!
//! | firmware                   | [`Loader::ShimGrub`] gets                              |
//! |----------------------------|--------------------------------------------------------|
//! | UEFI x86-64 PXE            | `shimx64.efi` over TFTP                                |
//! | UEFI x86-64 HTTP boot      | `http://SERVER/shimx64.efi`, when the served GRUB has  |
//! |                            | http ([`GrubNet::TftpAndHttp`]) and HTTP is on port 80 |
//!
//! Debian's signed shim then loads Debian's signed GRUB (`grubx64.efi`) from the same server
//! by the same protocol, which reads the client's GRUB config ([`crate::grub`]). Other
//! firmware keep the iPXE column: BIOS and iPXE have no Secure Boot; an HTTP Boot client
//! keeps it too when the server's GRUB network image has no http module (Debian 12's GRUB
//! 2.06: after HTTP Boot its only device is the HTTP server, so it could read nothing) or
//! when HTTP is on another port (GRUB names `(http,HOST)` without one; the server warns at
//! start in both cases). The boot spec (image, size, options) stays the same.

use crate::config::UnknownClients;
use crate::grub::GrubNet;
use crate::routes::Route;
use crate::site::Site;
use diskless_dhcp::classify::arch;
use diskless_dhcp::{BootOffer, ClientInfo, ClientKind, Mac};
use std::net::{IpAddr, Ipv4Addr};

/// The IPv4 address of a peer (an IPv4-mapped IPv6 one too), which picks its `[[subnet]]`.
pub fn ipv4_of(address: Option<IpAddr>) -> Option<Ipv4Addr> {
    match address {
        Some(IpAddr::V4(ip)) => Some(ip),
        Some(IpAddr::V6(ip)) => ip.to_ipv4_mapped(),
        None => None,
    }
}

/// A client asking to boot: who it is and what its firmware is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Machine {
    /// Its Ethernet address.
    pub mac: Mac,
    /// What its firmware said it is.
    pub firmware: ClientKind,
    /// Option 93 (client architecture), when sent.
    pub arch: Option<u16>,
    /// Its IPv4 address, when it has one (a script request's peer): picks its `[[subnet]]`.
    pub address: Option<Ipv4Addr>,
}

impl Machine {
    /// A client known only by its MAC that already runs iPXE (a script request), from
    /// `address` when known.
    pub fn ipxe(mac: Mac, address: Option<IpAddr>) -> Machine {
        Machine {
            mac,
            firmware: ClientKind::Ipxe,
            arch: None,
            address: ipv4_of(address),
        }
    }
}

impl From<&ClientInfo> for Machine {
    fn from(client: &ClientInfo) -> Machine {
        Machine {
            mac: client.mac,
            firmware: client.kind,
            arch: client.arch,
            // A DHCP request comes before the address: the first stage needs no subnet.
            address: None,
        }
    }
}

/// The network boot loader a client is chained into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loader {
    /// iPXE (Debian's `ipxe` package), which then fetches `/boot/MAC.ipxe`.
    Ipxe,
    /// Debian's signed shim, then its signed GRUB network image, then the image's signed
    /// kernel: what a Secure Boot machine runs.
    ShimGrub,
}

/// What one client boots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootSpec {
    /// The loader chain it follows.
    pub loader: Loader,
    /// The image it boots; None: no image is configured for it, and the loader tells the
    /// client so on its console instead of booting.
    pub image: Option<String>,
    /// Its host name (option 12).
    pub hostname: Option<String>,
    /// RAM disk size (`diskless.size=`).
    pub size: String,
    /// How it gets the image (`diskless.fetch=`): its entry's, else its most specific
    /// `[[subnet]]`'s, else `[boot]`'s.
    pub fetch: crate::config::FetchMode,
    /// Extra kernel options: the site's, then the client's.
    pub cmdline: String,
    /// Base URLs of store layouts (`diskless image export`) to fetch the kernel, initrds and
    /// image from, in order, before this server (which comes last unless it is listed): the
    /// client's `image_urls`, else its most specific `[[subnet]]`'s, else `[boot]`'s.
    pub image_urls: Vec<String>,
}

impl Site {
    /// Is this client one we boot? Unknown clients may be ignored by the site's choice.
    pub fn serves(&self, mac: Mac) -> bool {
        self.clients.contains_key(&mac) || self.unknown_clients == UnknownClients::Boot
    }

    /// Whether any client boots the Secure Boot chain (`[boot] secure_boot`, or a client's):
    /// without one the server serves none of the chain's files.
    pub fn secure_boot_used(&self) -> bool {
        self.secure_boot || self.clients.values().any(|c| c.secure_boot == Some(true))
    }

    /// The host name of `mac`: its `[[client]]` entry's.
    pub fn hostname(&self, mac: Mac) -> Option<String> {
        self.clients.get(&mac).and_then(|c| c.hostname.clone())
    }

    /// The loader chain `mac` follows ([`Loader::ShimGrub`] with the client's or the site's
    /// `secure_boot`); None: it is refused (an unknown client on a site that ignores them).
    pub fn loader(&self, mac: Mac) -> Option<Loader> {
        if !self.serves(mac) {
            return None;
        }
        let secure_boot = self
            .clients
            .get(&mac)
            .and_then(|c| c.secure_boot)
            .unwrap_or(self.secure_boot);
        Some(if secure_boot {
            Loader::ShimGrub
        } else {
            Loader::Ipxe
        })
    }

    /// The `[[subnet]]` of a client at `address`: the most specific that holds it.
    pub fn subnet_of(&self, address: Option<Ipv4Addr>) -> Option<&crate::site::Subnet> {
        let ip = address?;
        self.subnets.iter().find(|s| s.net.contains(&ip))
    }

    /// The multicast values of a client at `address`: its `[[subnet]]`'s (`[subnet.multicast]`
    /// over `[multicast]`), else `[multicast]`'s; None: off for it.
    pub fn multicast_for(&self, address: Option<Ipv4Addr>) -> Option<crate::multicast::Multicast> {
        self.subnet_of(address)
            .map_or(self.multicast, |s| s.multicast)
    }

    /// What `machine` boots; None: it is refused (an unknown client on a site that ignores
    /// them).
    pub fn boot_spec(&self, machine: &Machine) -> Option<BootSpec> {
        let loader = self.loader(machine.mac)?;
        let entry = self.clients.get(&machine.mac);
        let extra = entry.and_then(|c| c.cmdline.as_deref()).unwrap_or("");
        let cmdline = [self.cmdline.as_str(), extra]
            .iter()
            .filter(|s| !s.trim().is_empty())
            .map(|s| s.trim())
            .collect::<Vec<_>>()
            .join(" ");
        let subnet = machine
            .address
            .and_then(|ip| self.subnets.iter().find(|s| s.net.contains(&ip)));
        let fetch = entry
            .and_then(|c| c.fetch)
            .or_else(|| subnet.and_then(|s| s.fetch))
            .unwrap_or(self.fetch);
        let image_urls = match entry.and_then(|c| c.image_urls.as_ref()) {
            Some(urls) => urls.clone(),
            None => self
                .subnet_of(machine.address)
                .map_or_else(|| self.image_urls.clone(), |s| s.image_urls.clone()),
        };
        Some(BootSpec {
            loader,
            image: entry
                .and_then(|c| c.image.clone())
                .or_else(|| self.default_image.clone()),
            hostname: entry.and_then(|c| c.hostname.clone()),
            size: entry
                .and_then(|c| c.size.as_ref().map(|s| s.to_string()))
                .unwrap_or_else(|| self.size.clone()),
            fetch,
            cmdline,
            image_urls,
        })
    }

    /// What the firmware of `machine` loads first (the tables in the module docs), typed by
    /// how it fetches it, with `grub` what the server's GRUB network image speaks; None: it is
    /// refused, or nothing fits its firmware.
    pub fn first_stage(&self, machine: &Machine, grub: GrubNet) -> Option<BootOffer> {
        let loader = self.loader(machine.mac)?;
        let ipxe = |file: &str| Route::Ipxe(file.to_string());
        let x86_64_pxe = machine.firmware == ClientKind::UefiPxe
            && matches!(machine.arch, Some(arch::EFI_BC | arch::EFI_X86_64));
        let x86_64_http = machine.firmware == ClientKind::UefiHttp
            && matches!(machine.arch, None | Some(arch::EFI_X86_64_HTTP));
        if loader == Loader::ShimGrub && x86_64_pxe {
            return Some(BootOffer::Tftp(Route::Shim.tftp_path()));
        }
        if loader == Loader::ShimGrub && x86_64_http && self.shim_over_http(grub) {
            return Some(BootOffer::Url(self.url(&Route::Shim)));
        }
        match machine.firmware {
            ClientKind::Plain => None,
            // Whatever its architecture: iPXE already runs, so it goes straight to its
            // script (and never gets the chainloader again).
            ClientKind::Ipxe => Some(BootOffer::Url(self.url(&Route::BootScript(machine.mac)))),
            ClientKind::BiosPxe => Some(BootOffer::Tftp(ipxe(&self.ipxe.bios).tftp_path())),
            // Debian's ipxe package has x86-64 EFI binaries only.
            ClientKind::UefiPxe => match machine.arch {
                Some(arch::EFI_BC | arch::EFI_X86_64) => {
                    Some(BootOffer::Tftp(ipxe(&self.ipxe.uefi).tftp_path()))
                }
                _ => None,
            },
            ClientKind::UefiHttp if x86_64_http => {
                Some(BootOffer::Url(self.url(&ipxe(&self.ipxe.uefi))))
            }
            ClientKind::UefiHttp => None,
        }
    }

    /// Whether a Secure Boot client may come by UEFI HTTP Boot: the GRUB network image has
    /// http, and our HTTP server is where GRUB looks for it, port 80 ([`crate::grub`]).
    pub fn shim_over_http(&self, grub: GrubNet) -> bool {
        grub == GrubNet::TftpAndHttp && self.http_port == 80
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::FetchMode;

    /// Debian 13's GRUB network image, with http.
    const GRUB: GrubNet = GrubNet::TftpAndHttp;

    const CONFIG: &str = r#"
[boot]
image = "lab"
cmdline = "quiet"
size = "3G"
[[client]]
mac = "52:54:00:00:00:01"
hostname = "pc01"
image = "render"
cmdline = "nomodeset"
size = "8G"
[[client]]
mac = "52:54:00:00:00:02"
"#;

    fn site(extra: &str) -> Site {
        Site::for_tests(&format!("{extra}{CONFIG}"))
    }

    fn spec(site: &Site, mac: &str) -> Option<BootSpec> {
        site.boot_spec(&Machine::ipxe(mac.parse().unwrap(), None))
    }

    fn machine(firmware: ClientKind, arch: Option<u16>) -> Machine {
        Machine {
            mac: "52:54:00:ab:cd:ef".parse().unwrap(),
            firmware,
            arch,
            address: None,
        }
    }

    #[test]
    fn known_client_gets_its_own_settings() {
        let boot = spec(&site(""), "52:54:00:00:00:01").unwrap();
        assert_eq!(boot.image.as_deref(), Some("render"));
        assert_eq!(boot.hostname.as_deref(), Some("pc01"));
        assert_eq!(boot.size, "8G");
        assert_eq!(boot.cmdline, "quiet nomodeset");
    }

    #[test]
    fn fetch_comes_from_the_client_else_its_subnet_else_boot() {
        let lab = Site::for_tests(&format!(
            "[[subnet]]\ncidr = \"10.9.0.0/16\"\nimage_urls = []\nfetch = \"network\"\n\
             [[client]]\nmac = \"52:54:00:00:00:09\"\nfetch = \"whole\"\n\
             {}",
            CONFIG.replace("size = \"3G\"", "size = \"3G\"\nfetch = \"lazy\"")
        ));
        let at = |mac: &str, ip: Option<&str>| {
            let mut m = Machine::ipxe(mac.parse().unwrap(), None);
            m.address = ip.map(|ip| ip.parse().unwrap());
            lab.boot_spec(&m).unwrap().fetch
        };
        assert_eq!(at("52:54:00:00:00:02", None), FetchMode::Lazy);
        assert_eq!(
            at("52:54:00:00:00:02", Some("10.9.1.1")),
            FetchMode::Network
        );
        assert_eq!(at("52:54:00:00:00:09", Some("10.9.1.1")), FetchMode::Whole);
        // Without any `fetch`, whole.
        assert_eq!(
            spec(&site(""), "52:54:00:00:00:02").unwrap().fetch,
            FetchMode::Whole
        );
    }

    #[test]
    fn client_without_image_gets_the_default() {
        let boot = spec(&site(""), "52:54:00:00:00:02").unwrap();
        assert_eq!(
            (
                boot.image.as_deref(),
                boot.size.as_str(),
                boot.cmdline.as_str()
            ),
            (Some("lab"), "3G", "quiet")
        );
    }

    #[test]
    fn unknown_clients_boot_or_are_ignored() {
        let stranger = "52:54:00:99:99:99";
        assert_eq!(
            spec(&site(""), stranger).unwrap().image.as_deref(),
            Some("lab")
        );
        let s = Site::for_tests(&CONFIG.replace("[boot]", "[boot]\nunknown_clients = \"ignore\""));
        assert!(spec(&s, stranger).is_none());
        assert!(!s.serves(stranger.parse().unwrap()));
        assert!(spec(&s, "52:54:00:00:00:02").is_some());
    }

    #[test]
    fn multicast_from_the_subnet_key_by_key_or_the_site() {
        let s = Site::for_tests(
            r#"
[boot]
image = "lab"
[multicast]
enabled = true
rate = 500
[[subnet]]
cidr = "10.1.0.0/16"
image_urls = []
[subnet.multicast]
rate = 80
ttl = 3
groups = "239.255.90.0/24"
[[subnet]]
cidr = "10.2.0.0/16"
image_urls = []
[subnet.multicast]
enabled = false
[[subnet]]
cidr = "10.3.0.0/16"
image_urls = []
"#,
        );
        let at = |ip: &str| s.multicast_for(Some(ip.parse().unwrap()));
        let site = s.multicast.unwrap();
        assert_eq!(s.multicast_for(None), Some(site));
        assert_eq!(at("10.9.0.5"), Some(site), "no subnet: [multicast]");
        assert_eq!(
            at("10.3.0.5"),
            Some(site),
            "a subnet without its own values"
        );
        assert_eq!(at("10.2.0.5"), None, "off for that subnet");
        let own = at("10.1.0.5").unwrap();
        assert_eq!(own.bytes_per_second, 10_000_000);
        assert_eq!(own.ttl, 3);
        assert_eq!(own.group(0), "239.255.90.1".parse::<Ipv4Addr>().unwrap());
        assert_eq!(own.port, site.port, "a key left out keeps [multicast]'s");
        // And the other way round: on for one subnet only.
        let s = Site::for_tests(
            "[boot]\nimage = \"lab\"\n[[subnet]]\ncidr = \"10.1.0.0/16\"\nimage_urls = []\n\
             [subnet.multicast]\nenabled = true\n",
        );
        assert!(s.multicast.is_none());
        assert!(s.multicast_for(Some("10.1.0.5".parse().unwrap())).is_some());
        assert!(s.multicast_for(Some("10.2.0.5".parse().unwrap())).is_none());
    }

    #[test]
    fn image_urls_from_the_client_its_subnet_or_the_site() {
        let s = Site::for_tests(
            r#"
[boot]
image = "lab"
image_urls = ["http://origin"]
[[subnet]]
cidr = "10.1.0.0/16"
image_urls = ["http://cache-building1"]
[[subnet]]
cidr = "10.1.2.0/24"
image_urls = ["http://cache-room2", "http://cache-building1"]
[[subnet]]
cidr = "10.9.0.0/16"
image_urls = []
[[client]]
mac = "52:54:00:00:00:01"
image_urls = ["http://teacher-cache"]
"#,
        );
        let urls = |mac: &str, ip: Option<&str>| {
            let ip = ip.map(|ip| ip.parse::<IpAddr>().unwrap());
            s.boot_spec(&Machine::ipxe(mac.parse().unwrap(), ip))
                .unwrap()
                .image_urls
        };
        let other = "52:54:00:00:00:09";
        assert_eq!(urls(other, None), ["http://origin"]);
        assert_eq!(urls(other, Some("10.2.0.5")), ["http://origin"]);
        assert_eq!(urls(other, Some("10.1.7.5")), ["http://cache-building1"]);
        assert_eq!(
            urls(other, Some("10.1.2.5")),
            ["http://cache-room2", "http://cache-building1"],
            "the most specific subnet"
        );
        assert_eq!(
            urls(other, Some("::ffff:10.1.2.5")),
            ["http://cache-room2", "http://cache-building1"],
            "an IPv4-mapped peer"
        );
        assert!(
            urls(other, Some("10.9.3.3")).is_empty(),
            "an empty list: this server only"
        );
        assert_eq!(
            urls("52:54:00:00:00:01", Some("10.1.2.5")),
            ["http://teacher-cache"],
            "the client's own list first"
        );
    }

    #[test]
    fn each_firmware_gets_its_first_stage() {
        let s = Site::for_tests("http_port = 8080\n");
        let tftp = |path: &str| Some(BootOffer::Tftp(path.into()));
        let url = |url: &str| Some(BootOffer::Url(url.into()));
        assert_eq!(
            s.first_stage(&machine(ClientKind::BiosPxe, None), GRUB),
            tftp("ipxe/undionly.kpxe")
        );
        assert_eq!(
            s.first_stage(&machine(ClientKind::UefiPxe, Some(arch::EFI_X86_64)), GRUB),
            tftp("ipxe/ipxe.efi")
        );
        assert_eq!(
            s.first_stage(
                &machine(ClientKind::UefiHttp, Some(arch::EFI_X86_64_HTTP)),
                GRUB
            ),
            url("http://10.0.0.1:8080/ipxe/ipxe.efi")
        );
        // iPXE never gets the chainloader again, whatever its architecture.
        for arch in [None, Some(0), Some(7), Some(9)] {
            assert_eq!(
                s.first_stage(&machine(ClientKind::Ipxe, arch), GRUB),
                url("http://10.0.0.1:8080/boot/52-54-00-ab-cd-ef.ipxe")
            );
        }
        assert_eq!(s.first_stage(&machine(ClientKind::Plain, None), GRUB), None);
        assert_eq!(
            s.first_stage(&machine(ClientKind::UefiPxe, Some(11)), GRUB),
            None,
            "arm64"
        );
        let snp = Site::for_tests("[ipxe]\nuefi = \"snponly.efi\"\n");
        let m = machine(ClientKind::UefiPxe, Some(arch::EFI_BC));
        assert_eq!(snp.first_stage(&m, GRUB), tftp("ipxe/snponly.efi"));
    }

    #[test]
    fn ignored_clients_get_no_offer_and_hostnames_one_route() {
        let s = Site::for_tests(&CONFIG.replace("[boot]", "[boot]\nunknown_clients = \"ignore\""));
        let stranger = Machine {
            mac: "52:54:00:99:99:99".parse().unwrap(),
            firmware: ClientKind::BiosPxe,
            arch: None,
            address: None,
        };
        assert!(s.boot_spec(&stranger).is_none());
        assert_eq!(s.loader(stranger.mac), None);
        assert_eq!(s.first_stage(&stranger, GRUB), None);
        assert_eq!(
            s.hostname("52:54:00:00:00:01".parse().unwrap()).as_deref(),
            Some("pc01")
        );
    }

    #[test]
    fn secure_boot_clients_get_shim_over_pxe_and_http_boot_and_ipxe_elsewhere() {
        let sb = Site::for_tests("[boot]\nimage = \"lab\"\nsecure_boot = true\n");
        let mut pxe = machine(ClientKind::UefiPxe, Some(arch::EFI_BC));
        let spec = sb.boot_spec(&pxe).unwrap();
        assert_eq!(spec.loader, Loader::ShimGrub);
        assert_eq!(
            sb.first_stage(&pxe, GRUB),
            Some(BootOffer::Tftp("shimx64.efi".into()))
        );
        // UEFI HTTP Boot: shim from the root of the HTTP server, where it finds grubx64.efi.
        let http = machine(ClientKind::UefiHttp, Some(arch::EFI_X86_64_HTTP));
        assert_eq!(
            sb.first_stage(&http, GRUB),
            Some(BootOffer::Url("http://10.0.0.1/shimx64.efi".into()))
        );
        assert_eq!(
            sb.first_stage(&machine(ClientKind::UefiHttp, None), GRUB),
            Some(BootOffer::Url("http://10.0.0.1/shimx64.efi".into())),
            "no option 93: HTTPClient alone"
        );
        assert_eq!(
            sb.first_stage(&machine(ClientKind::UefiHttp, Some(19)), GRUB),
            None,
            "arm64 HTTP Boot"
        );
        // Debian 12's GRUB has no http: such a client keeps iPXE's row.
        assert_eq!(
            sb.first_stage(&http, GrubNet::Tftp),
            Some(BootOffer::Url("http://10.0.0.1/ipxe/ipxe.efi".into()))
        );
        // Nor can GRUB reach HTTP on another port.
        let port =
            Site::for_tests("http_port = 8080\n[boot]\nimage = \"lab\"\nsecure_boot = true\n");
        assert_eq!(
            port.first_stage(&http, GRUB),
            Some(BootOffer::Url("http://10.0.0.1:8080/ipxe/ipxe.efi".into()))
        );
        // PXE gets shim over TFTP whatever GRUB speaks.
        assert_eq!(
            sb.first_stage(&pxe, GrubNet::Tftp),
            Some(BootOffer::Tftp("shimx64.efi".into()))
        );
        let bios = machine(ClientKind::BiosPxe, Some(0));
        assert_eq!(
            sb.first_stage(&bios, GRUB),
            Some(BootOffer::Tftp("ipxe/undionly.kpxe".into()))
        );
        // A client entry overrides the site.
        pxe.mac = "52:54:00:00:00:01".parse().unwrap();
        let off = Site::for_tests(&format!(
            "[boot]\nimage = \"lab\"\n[[client]]\nmac = \"{}\"\nsecure_boot = false\n",
            pxe.mac
        ));
        assert_eq!(off.boot_spec(&pxe).unwrap().loader, Loader::Ipxe);
        let on = Site::for_tests(&format!(
            "[boot]\nimage = \"lab\"\n[[client]]\nmac = \"{}\"\nsecure_boot = true\n",
            pxe.mac
        ));
        assert_eq!(on.boot_spec(&pxe).unwrap().loader, Loader::ShimGrub);
        assert_eq!(
            site("").boot_spec(&pxe).unwrap().loader,
            Loader::Ipxe,
            "iPXE stays the default"
        );
    }
}
