//! The one [`Booter`] (pixiecore's `Booter`): DHCP, the HTTP script route and the TFTP/GRUB
//! hook ask it, and nothing else decides what a client boots.
//!
//! ```text
//! DHCP responder ── BootPolicy::boot ──► Booter::offer ──► Site::first_stage
//!                                        ◄── BootOffer::Tftp(path) | BootOffer::Url(url)
//! GET /boot/MAC.ipxe (HTTP) ───────────► Booter::boot_file(mac, peer, Loader::Ipxe)
//! /grub/clients/MAC.cfg (TFTP or HTTP) ► Booter::chain_file ─► boot_file(.., Loader::ShimGrub)
//!                                          Site::boot_spec, once: refused, or the image
//!                                          the store's current version of it
//!                                          Boots::issue: the boot's report token
//!                                          BootEvent::Script to the recorder
//!                                        ◄── the iPXE script or GRUB config (or a refusal)
//! /grub/grub.cfg, shimx64.efi, grubx64.efi ─► Booter::chain_file ◄── ChainAnswer
//!   (TFTP or HTTP)
//! ```
//!
//! Per boot the site is asked two questions, each once per request: at DHCP time what the
//! firmware loads first ([`diskless_boot::Site::first_stage`], no boot spec, no token), and
//! when the client asks for its boot file what it boots
//! ([`diskless_boot::Site::boot_spec`]). That one decision gives the file's text, the boot's
//! token and the record of it: a boot is one token, one decision and one
//! [`BootEvent::Script`]. Each question reads the site current when it is asked, so a reload
//! applies to the next one.

use crate::recorder::{BootEvent, Recorder};
use crate::tokens::Boots;
use diskless_boot::grub::{self, ChainFile};
use diskless_boot::script::{self, ImageRef, ScriptParams, VerityRef};
use diskless_boot::{Loader, Mac, Machine, Site};
use diskless_dhcp::{BootOffer, BootPolicy, ClientInfo};
use diskless_image::Store;
use std::net::IpAddr;
use std::sync::Arc;
use tokio::sync::watch;

/// The one object every protocol asks what a client boots. Cheap to share (`Arc`).
pub struct Booter {
    /// The current site; a reload replaces it.
    site: watch::Receiver<Arc<Site>>,
    /// Where the images' current versions are looked up.
    store: Store,
    /// Told of each boot ([`BootEvent::Script`]).
    recorder: Recorder,
    /// Issues each boot's report token.
    boots: Arc<Boots>,
    /// What the served GRUB network image fetches with, read at start: whether Secure Boot
    /// clients may come by UEFI HTTP Boot ([`Site::first_stage`]).
    grub: grub::GrubNet,
}

/// A file of the Secure Boot chain, as the protocol serves it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChainAnswer {
    /// A signed binary, sent from its package's path as it is.
    File(&'static str),
    /// A generated GRUB config.
    Text(String),
}

impl Booter {
    pub fn new(
        site: watch::Receiver<Arc<Site>>,
        store: Store,
        recorder: Recorder,
        boots: Arc<Boots>,
        grub: grub::GrubNet,
    ) -> Booter {
        Booter {
            site,
            store,
            recorder,
            boots,
            grub,
        }
    }

    fn current(&self) -> Arc<Site> {
        self.site.borrow().clone()
    }

    /// What the firmware of the DHCP client `client` loads first; None: nothing (refused, or
    /// no loader for its firmware).
    pub fn offer(&self, client: &ClientInfo) -> Option<BootOffer> {
        self.current()
            .first_stage(&Machine::from(client), self.grub)
    }

    /// The boot file `mac` asked for from `peer`: its iPXE script ([`Loader::Ipxe`]) or its
    /// GRUB config ([`Loader::ShimGrub`]), both from one boot decision (image, version,
    /// sha256, machine-id, command line) with a new report token; or the refusal that says
    /// why not, which starts no boot.
    pub fn boot_file(&self, mac: Mac, peer: Option<IpAddr>, loader: Loader) -> String {
        self.boot_file_on(&self.current(), mac, peer, loader)
    }

    fn boot_file_on(&self, site: &Site, mac: Mac, peer: Option<IpAddr>, loader: Loader) -> String {
        let refusal = |reason: &str| match loader {
            Loader::Ipxe => script::refusal_script(mac, reason),
            Loader::ShimGrub => grub::refusal(mac, reason),
        };
        let Some((spec, image)) = site
            .boot_spec(&Machine::ipxe(mac, peer))
            .and_then(|spec| Some((spec.clone(), spec.image?)))
        else {
            tracing::info!(%mac, "not booting: unknown client (unknown_clients = \"ignore\") or no image");
            return refusal("this client is not configured to boot here");
        };
        let manifest = match self.store.current(&image) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(%mac, %image, error = %e, "no image to boot");
                return refusal(&format!("image {image} is not in the store"));
            }
        };
        let token = self.boots.issue(mac);
        let report_token = token.to_string();
        let params = ScriptParams {
            http_authority: &site.http_authority,
            tftp_authority: &site.tftp_authority,
            protocol: site.image_protocol,
            mac,
            boot: &spec,
            image: ImageRef {
                name: &manifest.name,
                version: &manifest.version,
                squashfs_sha256: &manifest.squashfs().sha256,
                boot_cpio: manifest.has_boot_cpio(),
                verity: manifest.verity.as_ref().map(|v| VerityRef {
                    root_hash: &v.root_hash,
                    salt: &v.salt,
                    data_blocks: v.data_blocks,
                }),
            },
            report_token: &report_token,
            multicast: site
                .multicast_for(diskless_boot::decision::ipv4_of(peer))
                .is_some(),
        };
        let (name, version) = (&manifest.name, &manifest.version);
        let body = match loader {
            Loader::Ipxe => {
                tracing::info!(%mac, image = %name, %version, "iPXE script");
                script::ipxe_script(&params)
            }
            Loader::ShimGrub => {
                tracing::info!(%mac, image = %name, %version, "GRUB config");
                grub::client_config(&params)
            }
        };
        // A Secure Boot client's shim refuses an unsigned kernel after GRUB, with nothing on
        // the server's side: the record says so, for the dashboard and `diskless clients`.
        let secure_boot = loader == Loader::ShimGrub;
        let kernel_signed = secure_boot
            .then(|| self.store.kernel_signed(name, version).ok())
            .flatten();
        self.recorder.record(BootEvent::Script {
            mac,
            client: peer,
            hostname: spec.hostname.clone(),
            image: name.clone(),
            version: version.clone(),
            boot: token.boot,
            secure_boot,
            kernel_signed,
        });
        body
    }

    /// A file of the Secure Boot chain (see [`diskless_boot::grub`]), asked for over TFTP or
    /// HTTP from `peer`: shim and GRUB from their Debian packages' paths, GRUB's dispatcher,
    /// a client's GRUB config ([`Booter::boot_file`]). None when no client boots that chain.
    pub fn chain_file(&self, file: ChainFile, peer: Option<IpAddr>) -> Option<ChainAnswer> {
        let site = self.current();
        if !site.secure_boot_used() {
            return None;
        }
        Some(match file {
            ChainFile::Package(path) => ChainAnswer::File(path),
            ChainFile::Dispatcher => ChainAnswer::Text(grub::dispatcher(&site.http_authority)),
            ChainFile::ClientConfig(mac) => {
                ChainAnswer::Text(self.boot_file_on(&site, mac, peer, Loader::ShimGrub))
            }
        })
    }
}

/// The DHCP core asks the Booter.
impl BootPolicy for Booter {
    fn boot(&self, client: &ClientInfo) -> Option<BootOffer> {
        self.offer(client)
    }

    fn hostname(&self, mac: Mac) -> Option<String> {
        self.current().hostname(mac)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::recorder::{Limits, Recorded, RecorderTask};
    use crate::tokens::{BootId, ReportKey, KEY_LEN};
    use diskless_dhcp::classify::arch;
    use diskless_dhcp::fuzzing::client_info;
    use diskless_dhcp::ClientKind;
    use diskless_image::manifest::{BOOT_CPIO, INITRD, KERNEL, SQUASHFS};
    use tokio::sync::broadcast;

    const LISTED: &str = "52:54:00:00:00:01";
    const STRANGER: &str = "52:54:00:99:99:99";

    struct Fixture {
        _dir: tempfile::TempDir,
        booter: Booter,
        boots: Arc<Boots>,
        version: String,
        updates: broadcast::Receiver<Recorded>,
        _recorder: RecorderTask,
    }

    /// A store in `dir`/store holding one version of image `lab` (a 10-byte squashfs), and
    /// that version.
    pub(crate) fn store_with_lab(dir: &std::path::Path) -> (Store, String) {
        let store = Store::open(dir.join("store")).unwrap();
        let files: [(&str, &[u8]); 4] = [
            (SQUASHFS, b"0123456789"),
            (KERNEL, b"kernel"),
            (INITRD, b"initrd"),
            (BOOT_CPIO, b"cpio"),
        ];
        let manifest = store
            .publish_files("lab", "20260101-000000-abcdef01", &files)
            .unwrap();
        (store, manifest.version)
    }

    /// A Booter over [`store_with_lab`], on a site of `config`, with one listed client
    /// ([`LISTED`]).
    fn fixture(config: &str) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let (store, version) = store_with_lab(dir.path());
        let site = Site::for_tests(&format!(
            "http_port = 8080\n{config}\n[[client]]\nmac = \"{LISTED}\"\n"
        ));
        let (recorder, task) = Recorder::start(None, Limits::default());
        let updates = recorder.subscribe();
        let boots = Arc::new(Boots::new(
            ReportKey::from_bytes([5; KEY_LEN]),
            recorder.clone(),
        ));
        let (_, site) = watch::channel(Arc::new(site));
        Fixture {
            _dir: dir,
            booter: Booter::new(
                site,
                store,
                recorder.clone(),
                boots.clone(),
                grub::GrubNet::TftpAndHttp,
            ),
            boots,
            version,
            updates,
            _recorder: task,
        }
    }

    fn mac(s: &str) -> Mac {
        s.parse().unwrap()
    }

    impl Fixture {
        /// The boots the recorder was told of since the last call: (MAC, boot, secure boot).
        async fn boots_recorded(&mut self) -> Vec<(Mac, BootId, bool)> {
            let mut got = Vec::new();
            while let Ok(update) = self.updates.try_recv() {
                if let Recorded::Event(e) = update {
                    if let BootEvent::Script {
                        mac,
                        boot,
                        secure_boot,
                        ..
                    } = &*e
                    {
                        got.push((*mac, *boot, *secure_boot));
                    }
                }
            }
            got
        }
    }

    /// The boot id of the report token in a script or GRUB config.
    fn token_boot(text: &str) -> BootId {
        let token = text
            .split(['?', '\'', ' ', '\n'])
            .find_map(|w| w.strip_prefix("token="))
            .unwrap_or_else(|| panic!("no token in {text}"));
        token.split('.').next().unwrap().parse().unwrap()
    }

    #[tokio::test]
    async fn each_firmware_gets_a_typed_offer_and_no_boot() {
        let f = fixture("[boot]\nimage = \"lab\"\nunknown_clients = \"ignore\"\n");
        let offer = |kind, arch| f.booter.offer(&client_info(mac(LISTED), kind, arch));
        let tftp = |path: &str| Some(BootOffer::Tftp(path.into()));
        let url = |url: &str| Some(BootOffer::Url(url.into()));
        assert_eq!(
            offer(ClientKind::BiosPxe, Some(0)),
            tftp("ipxe/undionly.kpxe")
        );
        assert_eq!(
            offer(ClientKind::UefiPxe, Some(arch::EFI_X86_64)),
            tftp("ipxe/ipxe.efi")
        );
        assert_eq!(
            offer(ClientKind::UefiHttp, Some(arch::EFI_X86_64_HTTP)),
            url("http://10.0.0.1:8080/ipxe/ipxe.efi"),
            "HTTP boot"
        );
        assert_eq!(
            offer(ClientKind::Ipxe, Some(arch::EFI_X86_64)),
            url("http://10.0.0.1:8080/boot/52-54-00-00-00-01.ipxe")
        );
        assert_eq!(offer(ClientKind::Plain, None), None);
        let stranger = client_info(mac(STRANGER), ClientKind::BiosPxe, Some(0));
        assert_eq!(f.booter.offer(&stranger), None, "refused");
        assert_eq!(
            BootPolicy::boot(
                &f.booter,
                &client_info(mac(LISTED), ClientKind::BiosPxe, None)
            ),
            tftp("ipxe/undionly.kpxe"),
            "the DHCP core's question"
        );
        // An offer starts no boot: the token comes with the boot file.
        assert_eq!(f.boots.current(mac(LISTED)), None);
    }

    #[tokio::test]
    async fn a_secure_boot_client_gets_shim_over_pxe_and_ipxe_elsewhere() {
        let f = fixture("[boot]\nimage = \"lab\"\nsecure_boot = true\n");
        let offer = |kind, arch| f.booter.offer(&client_info(mac(LISTED), kind, arch));
        assert_eq!(
            offer(ClientKind::UefiPxe, Some(arch::EFI_BC)),
            Some(BootOffer::Tftp("shimx64.efi".into()))
        );
        assert_eq!(
            offer(ClientKind::BiosPxe, Some(0)),
            Some(BootOffer::Tftp("ipxe/undionly.kpxe".into())),
            "no Secure Boot on BIOS"
        );
        assert_eq!(
            offer(ClientKind::UefiHttp, None),
            Some(BootOffer::Url("http://10.0.0.1:8080/ipxe/ipxe.efi".into())),
            "GRUB cannot name HTTP on port 8080: HTTP boot stays on iPXE"
        );
    }

    #[tokio::test]
    async fn one_boot_is_one_decision_one_token_one_record() {
        let mut f = fixture("[boot]\nimage = \"lab\"\n");
        let m = mac(LISTED);
        let script = f.booter.boot_file(m, None, Loader::Ipxe);
        assert!(script.starts_with("#!ipxe\n"), "{script}");
        assert!(script.contains(&f.version), "{script}");
        let first = token_boot(&script);
        assert_eq!(f.boots.current(m).map(|b| b.id), Some(first));
        assert_eq!(f.boots_recorded().await, [(m, first, false)]);
        // The next request is the next boot: a new token, recorded once.
        let second = token_boot(&f.booter.boot_file(m, None, Loader::Ipxe));
        assert_ne!(second, first);
        assert_eq!(f.boots.current(m).map(|b| b.id), Some(second));
        assert_eq!(f.boots_recorded().await, [(m, second, false)]);
    }

    #[tokio::test]
    async fn the_grub_config_is_the_same_decision_on_the_secure_boot_chain() {
        let mut f = fixture("[boot]\nimage = \"lab\"\nsecure_boot = true\n");
        let m = mac(LISTED);
        let Some(ChainAnswer::Text(cfg)) = f.booter.chain_file(ChainFile::ClientConfig(m), None)
        else {
            panic!("no GRUB config");
        };
        assert!(
            cfg.contains(&format!("/images/lab/{}/vmlinuz", f.version)),
            "{cfg}"
        );
        let boot = token_boot(&cfg);
        assert_eq!(f.boots.current(m).map(|b| b.id), Some(boot));
        assert_eq!(f.boots_recorded().await, [(m, boot, true)]);
        assert_eq!(
            f.booter
                .chain_file(ChainFile::Package(grub::SHIM_SIGNED), None),
            Some(ChainAnswer::File(grub::SHIM_SIGNED))
        );
        let Some(ChainAnswer::Text(dispatcher)) = f.booter.chain_file(ChainFile::Dispatcher, None)
        else {
            panic!("no dispatcher");
        };
        assert_eq!(dispatcher, grub::dispatcher("10.0.0.1:8080"));
        // Without a Secure Boot client the chain does not exist.
        let plain = fixture("[boot]\nimage = \"lab\"\n");
        assert_eq!(
            plain.booter.chain_file(ChainFile::ClientConfig(m), None),
            None
        );
        assert_eq!(plain.booter.chain_file(ChainFile::Dispatcher, None), None);
    }

    #[tokio::test]
    async fn refused_clients_get_a_refusal_and_no_boot() {
        let mut f = fixture("[boot]\nimage = \"lab\"\nunknown_clients = \"ignore\"\n");
        let stranger = mac(STRANGER);
        let script = f.booter.boot_file(stranger, None, Loader::Ipxe);
        assert!(script.contains("not booting"), "{script}");
        assert!(!script.contains("token="), "{script}");
        let cfg = f.booter.boot_file(stranger, None, Loader::ShimGrub);
        assert!(cfg.starts_with("echo 'diskless: not booting"), "{cfg}");
        // An image missing from the store: refused too, with the reason.
        let missing = fixture("[boot]\nimage = \"gone\"\n");
        let script = missing.booter.boot_file(mac(LISTED), None, Loader::Ipxe);
        assert!(
            script.contains("image gone is not in the store"),
            "{script}"
        );
        assert_eq!(f.boots.current(stranger), None);
        assert_eq!(missing.boots.current(mac(LISTED)), None);
        assert_eq!(f.boots_recorded().await, []);
    }
}
