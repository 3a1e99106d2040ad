//! The boot decision: which file or URL a network-boot client gets.
//!
//! The DHCP core asks a [`BootPolicy`]; [`StandardPolicy`] implements the
//! usual iPXE chainload:
//!
//! | client            | gets                                       |
//! |-------------------|--------------------------------------------|
//! | BIOS PXE ROM      | `undionly.kpxe` over TFTP                  |
//! | UEFI x86-64 PXE   | `ipxe.efi` (or `snponly.efi`) over TFTP    |
//! | UEFI HTTP boot    | an HTTP URL (of iPXE's EFI binary, say)    |
//! | iPXE              | the URL of its per-client boot script      |
//! | anything else     | no boot file                               |
//!
//! iPXE is recognised before its architecture is looked at, so it never
//! gets the chainloader again.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use crate::classify::{arch, ClientInfo, ClientKind};

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
    fn hostname(&self, _mac: [u8; 6]) -> Option<String> {
        None
    }
}

/// The standard iPXE chainload policy (see the module docs).
///
/// Templates may use `{mac}` (`aa-bb-cc-dd-ee-ff`), `{mac_hex}`
/// (`aabbccddeeff`), `{arch}` (option 93 in decimal, empty if absent) and
/// `{server}` (the server address given to [`StandardPolicy::new`]).
#[derive(Debug, Clone)]
pub struct StandardPolicy {
    /// Server address substituted for `{server}`.
    pub server: Ipv4Addr,
    /// TFTP path for BIOS PXE ROMs. Default `undionly.kpxe` (Debian's
    /// `ipxe` package ships it in /usr/lib/ipxe/).
    pub bios_file: String,
    /// TFTP path for x86-64 UEFI PXE clients. Default `ipxe.efi`;
    /// `snponly.efi` uses the firmware's network driver instead of iPXE's.
    pub uefi_file: String,
    /// URL template of the per-client iPXE script. Default
    /// `http://{server}/boot/{mac}.ipxe`.
    pub script_url_template: String,
    /// URL template for UEFI HTTP-boot clients (x86-64). Default
    /// `http://{server}/ipxe.efi`; `None` ignores such clients.
    pub http_boot_url: Option<String>,
    /// Host names by MAC, for option 12.
    pub hostnames: HashMap<[u8; 6], String>,
}

impl StandardPolicy {
    /// The defaults above for a server at `server`.
    pub fn new(server: Ipv4Addr) -> Self {
        StandardPolicy {
            server,
            bios_file: "undionly.kpxe".into(),
            uefi_file: "ipxe.efi".into(),
            script_url_template: "http://{server}/boot/{mac}.ipxe".into(),
            http_boot_url: Some("http://{server}/ipxe.efi".into()),
            hostnames: HashMap::new(),
        }
    }

    fn expand(&self, template: &str, client: &ClientInfo) -> String {
        let m = client.mac;
        template
            .replace(
                "{mac}",
                &format!(
                    "{:02x}-{:02x}-{:02x}-{:02x}-{:02x}-{:02x}",
                    m[0], m[1], m[2], m[3], m[4], m[5]
                ),
            )
            .replace(
                "{mac_hex}",
                &m.iter().map(|b| format!("{b:02x}")).collect::<String>(),
            )
            .replace(
                "{arch}",
                &client.arch.map(|a| a.to_string()).unwrap_or_default(),
            )
            .replace("{server}", &self.server.to_string())
    }
}

impl BootPolicy for StandardPolicy {
    fn boot(&self, client: &ClientInfo) -> Option<BootOffer> {
        let file = match client.kind {
            ClientKind::Plain => return None,
            // Whatever its architecture: iPXE already runs, so it goes
            // straight to its script.
            ClientKind::Ipxe => self.expand(&self.script_url_template, client),
            ClientKind::BiosPxe => self.expand(&self.bios_file, client),
            // Debian's ipxe package has x86-64 EFI binaries only.
            ClientKind::UefiPxe => match client.arch {
                Some(arch::EFI_BC | arch::EFI_X86_64) => self.expand(&self.uefi_file, client),
                _ => return None,
            },
            ClientKind::UefiHttp => match client.arch {
                None | Some(arch::EFI_X86_64_HTTP) => {
                    self.expand(self.http_boot_url.as_deref()?, client)
                }
                _ => return None,
            },
        };
        Some(BootOffer::new(file))
    }

    fn hostname(&self, mac: [u8; 6]) -> Option<String> {
        self.hostnames.get(&mac).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::classify;
    use crate::classify::tests::*;
    use crate::wire::parse;

    fn policy() -> StandardPolicy {
        StandardPolicy::new(Ipv4Addr::new(10, 9, 0, 1))
    }

    fn boot(p: &StandardPolicy, pkt: &[u8]) -> Option<String> {
        p.boot(&classify(&parse(pkt).unwrap()).unwrap())
            .map(|o| o.filename)
    }

    #[test]
    fn bios_gets_undionly() {
        assert_eq!(
            boot(&policy(), &bios_pxe_discover()).as_deref(),
            Some("undionly.kpxe")
        );
    }

    #[test]
    fn uefi_gets_ipxe_efi_or_configured_snponly() {
        let mut p = policy();
        assert_eq!(boot(&p, &uefi_pxe_discover()).as_deref(), Some("ipxe.efi"));
        p.uefi_file = "snponly.efi".into();
        assert_eq!(
            boot(&p, &uefi_pxe_discover()).as_deref(),
            Some("snponly.efi")
        );
    }

    #[test]
    fn ipxe_gets_its_script_and_never_the_chainloader() {
        let f = boot(&policy(), &ipxe_discover()).unwrap();
        assert_eq!(f, "http://10.9.0.1/boot/52-54-00-ab-cd-ef.ipxe");
        assert!(!f.ends_with(".kpxe") && !f.ends_with(".efi"));
    }

    #[test]
    fn uefi_http_gets_a_url() {
        let f = boot(&policy(), &uefi_http_discover()).unwrap();
        assert_eq!(f, "http://10.9.0.1/ipxe.efi");
        let mut p = policy();
        p.http_boot_url = None;
        assert_eq!(boot(&p, &uefi_http_discover()), None);
    }

    #[test]
    fn plain_and_unsupported_arch_get_nothing() {
        assert_eq!(boot(&policy(), &udhcpc_discover()), None);
        let arm = crate::wire::tests::raw_request(1, MAC, [0; 4], &[(53, &[1]), (93, &[0, 11])]);
        assert_eq!(boot(&policy(), &arm), None);
    }

    #[test]
    fn template_placeholders() {
        let mut p = policy();
        p.script_url_template = "http://{server}:8080/s?mac={mac_hex}&arch={arch}".into();
        assert_eq!(
            boot(&p, &ipxe_discover()).unwrap(),
            "http://10.9.0.1:8080/s?mac=525400abcdef&arch=0"
        );
    }
}
