//! The GRUB configs of the Secure Boot chain: firmware → Debian's signed shim → Debian's
//! signed GRUB network image → the image's signed kernel. The same decisions as the iPXE
//! script ([`crate::script`]): image, version, sha256, machine-id, kernel command line, report
//! URL, `diskless.cpio` when the version has one.
//!
//! How the binaries find their files: read in shim 16.1 and GRUB 2.06 sources and in the
//! binaries Debian 12 ships, and seen in a Secure Boot OVMF client booted from dnsmasq's TFTP
//! server (its log lists every file asked for), and, for UEFI HTTP Boot, in our server's log
//! with Debian 13's shim and GRUB (every path asked for logged, for that trial):
//!
//! - shim (`shim-signed`: /usr/lib/shim/shimx64.efi.signed) loads its second stage by the
//!   compiled-in name `\grubx64.efi` (`strings -el` shows it) from the server it was loaded
//!   from. Over PXE, Debian's shim 16.1 asked for `grubx64.efi` at the TFTP root although its
//!   boot file was `boot/shimx64.efi`, after `revocations_sku.efi`, `revocations_sbat.efi`
//!   and `shim_certificate_0.efi` (optional: "not found" is fine). So the server serves
//!   `grubnetx64.efi.signed` as [`SHIM_SECOND_STAGE`] at the root. shim fetches it with
//!   512-byte blocks (netboot.c's `blksz = 512`): 3.8 MB took 4.4 s under TCG, where the
//!   firmware took shim at blksize 1468 and windowsize 4. Over UEFI HTTP Boot
//!   (httpboot.c) it keeps the boot URL up to its last `/` and appends the name with its
//!   backslash made a slash, and needs a 200 answer with a Content-Length: from the boot file
//!   `http://SERVER/shimx64.efi`, trixie's shim (16.1, OVMF with Secure Boot, PXE off) asked
//!   our server for `/revocations_sku.efi`, `/revocations_sbat.efi`,
//!   `/shim_certificate_0.efi` (404s, fine as over TFTP), then `//grubx64.efi` (the double
//!   slash: [`Route::ShimSecondStage`] takes it).
//! - Debian's `grubnetx64.efi.signed` (grub-efi-amd64-signed) has the prefix `/grub` and an
//!   embedded config `normal (memdisk)/grub.cfg`, whose memdisk `grub.cfg` sources
//!   `$prefix/x86_64-efi/grub.cfg` if `[ -e ]` finds it (never on a network device: GRUB's
//!   network "filesystem" lists no directory, and no request for it was seen), else
//!   `$prefix/grub.cfg` (read from the image's `mods` section). After PXE the prefix is
//!   `(tftp,SERVER)/grub`, SERVER the DHCP answer's `siaddr`, also `$net_default_server`.
//!   After UEFI HTTP Boot, Debian 13's GRUB 2.12 takes its device from the boot URL: the
//!   prefix is `(http,SERVER)/grub` (its next requests were `/grub/x86_64-efi/command.lst`,
//!   `fs.lst`, `crypto.lst`, `terminal.lst`, 404s it prints as "file not found" and goes
//!   on, then `/grub/grub.cfg`, all over HTTP), and the dispatcher's echo showed
//!   `$net_default_server` as the server's address, so the dispatcher and the client's
//!   config work there unchanged (then `(http,SERVER)` for kernel and initrds, no TFTP
//!   request at all). As
//!   `normal` is given a file, GRUB's own per-client search (`grub.cfg-01-MAC`,
//!   `grub.cfg-HEXIP`, net.c's `grub_net_search_config_file`) never runs: every client reads
//!   [`Route::GrubDispatcher`] ([`dispatcher`]), which hands over to the client's own file by
//!   `$net_default_mac` ([`Route::GrubConfig`]). Both are routes of [`crate::routes`], served
//!   over TFTP and HTTP alike.
//! - Its modules (the `mods` section of Debian 12's image): tftp, efinet, linux, ... but no
//!   http. GRUB loads a missing protocol module on first use from `$prefix` (net.c,
//!   `grub_net_open_real`; the client asked for `grub/x86_64-efi/http.mod` over TFTP), and
//!   under Secure Boot shim_lock refuses modules anyway. So the dispatcher tries the client's
//!   config over HTTP first, and the kernel and initrds follow over HTTP where GRUB has it;
//!   with Debian 12's image they come over TFTP (lock-step 1024-byte blocks: the 30 MB
//!   stock initrd took 14 s, 2.2 MB/s, in the QEMU test). Debian 13's signed image (GRUB
//!   2.12, `grub-efi-amd64-signed` 1+2.12+9+deb13u4) has http among its modules: it reads
//!   the client's config from the HTTP server ([`crate::Route::GrubConfig`]), then the
//!   kernel and initrds. Which image a server has is read from its modules at start
//!   ([`GrubNet::of_image`]): without http a Secure Boot client cannot come by UEFI HTTP
//!   Boot (after HTTP Boot its only device is the HTTP server), so it keeps iPXE's row
//!   (`crate::decision`) and the server says so. `insmod http`
//!   cannot decide this: it returns success even when loading fails (the client printed the
//!   "not found" error and took the `then` branch of `if insmod http`).
//! - GRUB 2.06 names a network device `(PROTOCOL,HOST)`, without a port: HTTP is tried only
//!   on port 80; TFTP is port 69 (the firmware's PXE and shim use 69 too). HTTP Boot with
//!   shim is offered on port 80 only for the same reason (GRUB 2.12 with another port was
//!   not tried).
//! - The kernel gets its initrds from GRUB (`initrd A B` concatenates them); the EFI stub's
//!   `initrd=NAME` of the iPXE command line would look for files on a boot device that a
//!   network boot does not have, so those words are left out.

use crate::routes::{grub_config_path, ImageFile, Route};
use crate::script::{kernel_cmdline, ScriptParams};
use diskless_dhcp::Mac;

/// The name shim loads its second stage by, at the root of the server it came from.
pub const SHIM_SECOND_STAGE: &str = "grubx64.efi";

/// Debian's signed shim (package `shim-signed`), served as it is: never copied or re-signed.
pub const SHIM_SIGNED: &str = "/usr/lib/shim/shimx64.efi.signed";

/// Debian's signed GRUB network image (package `grub-efi-amd64-signed`).
pub const GRUBNET_SIGNED: &str = "/usr/lib/grub/x86_64-efi-signed/grubnetx64.efi.signed";

/// The boot file DHCP gives a Secure Boot client: shim, at the TFTP root, where shim then
/// looks for [`SHIM_SECOND_STAGE`].
pub const SHIM_BOOT_FILE: &str = "shimx64.efi";

/// A file of the Secure Boot chain, by the name a client asks for it (relative to the
/// server's root, as the TFTP server checked it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChainFile {
    /// A signed binary, served from its package's path.
    Package(&'static str),
    /// [`dispatcher`].
    Dispatcher,
    /// [`client_config`] of this client.
    ClientConfig(Mac),
}

/// What a requested name is in the Secure Boot chain, if anything (other names are the
/// store's files: the kernel and initrds GRUB loads). A TFTP name (no leading `/`) or a path.
pub fn chain_file(name: &str) -> Option<ChainFile> {
    ChainFile::of_route(&Route::parse(&format!("/{}", name.trim_start_matches('/'))).ok()?)
}

impl ChainFile {
    /// The chain's file a route names, if it is one (served over TFTP and HTTP alike).
    pub fn of_route(route: &Route) -> Option<ChainFile> {
        match route {
            Route::Shim => Some(ChainFile::Package(SHIM_SIGNED)),
            Route::ShimSecondStage => Some(ChainFile::Package(GRUBNET_SIGNED)),
            Route::GrubDispatcher => Some(ChainFile::Dispatcher),
            Route::GrubConfig(mac) => Some(ChainFile::ClientConfig(*mac)),
            _ => None,
        }
    }
}

/// What the GRUB network image a server serves fetches files with, read from the image
/// ([`GrubNet::of_image`]): whether a Secure Boot client may come by UEFI HTTP Boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrubNet {
    /// TFTP only (Debian 12's GRUB 2.06, which has no http module).
    Tftp,
    /// TFTP and HTTP (Debian 13's GRUB 2.12).
    TftpAndHttp,
}

impl GrubNet {
    /// Whether the GRUB EFI image `image` (a PE file, signed or not) has the http module
    /// among its built-in modules.
    pub fn of_image(image: &[u8]) -> Result<GrubNet, GrubImageError> {
        Ok(if modules(image)?.iter().any(|m| m == "http") {
            GrubNet::TftpAndHttp
        } else {
            GrubNet::Tftp
        })
    }
}

/// A file that is not a GRUB EFI image as `grub-mkimage` makes them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a GRUB EFI image: {0}")]
pub struct GrubImageError(&'static str);

/// The names of the modules built into the GRUB EFI image `image`: `grub-mkimage` puts them
/// in the PE section `mods`, a module info header (magic `mimg`, offset and size of the
/// objects) then objects (type, size, body); each module (type 0) is an ELF object whose
/// `.modname` section holds its name (GRUB's include/grub/kernel.h and util/mkimage.c).
pub fn modules(image: &[u8]) -> Result<Vec<String>, GrubImageError> {
    const MODULE_INFO_MAGIC: u32 = 0x676d_696d;
    const OBJ_TYPE_ELF: u32 = 0;
    let mods = pe_section(image, b"mods").ok_or(GrubImageError("no mods section"))?;
    if u32_at(mods, 0) != Some(MODULE_INFO_MAGIC) {
        return Err(GrubImageError("no module info in its mods section"));
    }
    let bad = GrubImageError("a module header points outside its mods section");
    let (offset, size) = (u64_at(mods, 8).ok_or(bad.clone())?, u64_at(mods, 16));
    let end = usize::try_from(size.ok_or(bad.clone())?)
        .ok()
        .filter(|&e| e <= mods.len())
        .ok_or(bad.clone())?;
    let mut at = usize::try_from(offset).map_err(|_| bad.clone())?;
    let mut names = Vec::new();
    while at + 8 <= end {
        let (kind, len) = (u32_at(mods, at), u32_at(mods, at + 4));
        let len = len.ok_or(bad.clone())? as usize;
        if len < 8 || at + len > end {
            return Err(bad);
        }
        if kind == Some(OBJ_TYPE_ELF) {
            let elf = &mods[at + 8..at + len];
            names.push(elf_modname(elf).ok_or(GrubImageError("a module without .modname"))?);
        }
        at += len;
    }
    Ok(names)
}

/// The bytes of the PE section `name` as stored in the file.
fn pe_section<'a>(pe: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    let header = u32_at(pe, 0x3c)? as usize;
    if pe.get(header..header + 4)? != b"PE\0\0" {
        return None;
    }
    let sections = u16_at(pe, header + 6)? as usize;
    let first = header + 24 + u16_at(pe, header + 20)? as usize;
    (0..sections).find_map(|i| {
        let s = first + 40 * i;
        let raw_name = pe.get(s..s + 8)?;
        if raw_name.split(|&b| b == 0).next()? != name {
            return None;
        }
        let virtual_size = u32_at(pe, s + 8)? as usize;
        let (raw_size, raw_at) = (u32_at(pe, s + 16)? as usize, u32_at(pe, s + 20)? as usize);
        pe.get(raw_at..raw_at + raw_size.min(virtual_size))
    })
}

/// The contents of the `.modname` section of a 64-bit little-endian ELF object, up to its NUL.
fn elf_modname(elf: &[u8]) -> Option<String> {
    let section_headers = usize::try_from(u64_at(elf, 0x28)?).ok()?;
    let entry_size = u16_at(elf, 0x3a)? as usize;
    let (count, names_index) = (u16_at(elf, 0x3c)? as usize, u16_at(elf, 0x3e)? as usize);
    // Each section header: name offset (u32) at 0, file offset (u64) at 24, size (u64) at 32.
    let section = |i: usize| -> Option<(usize, &[u8])> {
        let h = section_headers.checked_add(i.checked_mul(entry_size)?)?;
        let at = usize::try_from(u64_at(elf, h + 24)?).ok()?;
        let size = usize::try_from(u64_at(elf, h + 32)?).ok()?;
        Some((
            u32_at(elf, h)? as usize,
            elf.get(at..at.checked_add(size)?)?,
        ))
    };
    let (_, names) = section(names_index)?;
    (0..count).find_map(|i| {
        let (name_at, body) = section(i)?;
        let name = names.get(name_at..)?.split(|&b| b == 0).next()?;
        (name == b".modname").then(|| {
            let text = body.split(|&b| b == 0).next().unwrap_or_default();
            String::from_utf8_lossy(text).into_owned()
        })
    })
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// `/grub/grub.cfg`, the same for every client: on to the client's own config, over HTTP
/// when this GRUB speaks it and our HTTP server is on port 80, else over TFTP from the server
/// GRUB was loaded from. `$diskless_files` tells the client's config where its kernel and
/// initrds are: the same place.
pub fn dispatcher(http_authority: &str) -> String {
    let mut cfg = String::from(
        "# diskless: every client's GRUB reads this; its own config is named after its MAC.\n\
         echo \"diskless: GRUB on ${net_default_mac}, server ${net_default_server}\"\n",
    );
    let own = grub_config_path("${net_default_mac}");
    if let Some(host) = without_port(http_authority, "80") {
        // A GRUB without http (Debian 12's) prints "disk not found" here and goes on.
        cfg.push_str(&format!(
            "set diskless_files=(http,{host})\n\
             source \"${{diskless_files}}{own}\"\n"
        ));
    }
    cfg.push_str(&format!(
        "set diskless_files=\"(tftp,${{net_default_server}})\"\n\
         source \"${{diskless_files}}{own}\"\n"
    ));
    cfg
}

/// `host` of `host:port` when the port is `default_port` or absent.
fn without_port<'a>(authority: &'a str, default_port: &str) -> Option<&'a str> {
    match authority.rsplit_once(':') {
        None => Some(authority),
        Some((host, port)) if port == default_port => Some(host),
        Some(_) => None,
    }
}

/// A client's config: the kernel with the same command line as the iPXE script (less its
/// `initrd=` names), the stock initrd and `diskless.cpio`, from `$diskless_files`, which
/// [`dispatcher`] set to where this config came from.
pub fn client_config(p: &ScriptParams) -> String {
    let file = |file| format!("${{diskless_files}}{}", p.image.route(file).path());
    let mut initrds = vec![file(ImageFile::Initrd)];
    if p.image.boot_cpio {
        initrds.push(file(ImageFile::BootCpio));
    }
    let cmdline: Vec<String> = kernel_cmdline(p)
        .split(' ')
        .filter(|w| !w.is_empty() && !w.starts_with("initrd="))
        .map(quote)
        .collect();
    format!(
        "# diskless: {mac} boots image {name} version {version}\n\
         echo \"diskless: loading {name} {version} from ${{diskless_files}}\"\n\
         linux {kernel} {cmdline}\n\
         initrd {initrds}\n\
         boot\n",
        mac = p.mac,
        name = p.image.name,
        version = p.image.version,
        kernel = file(ImageFile::Kernel),
        cmdline = cmdline.join(" "),
        initrds = initrds.join(" "),
    )
}

/// The config for a client we do not boot: it says why and returns to the firmware, which
/// tries its next boot option.
pub fn refusal(mac: Mac, reason: &str) -> String {
    format!(
        "echo {}\nsleep 5\nexit\n",
        quote(&format!("diskless: not booting {mac}: {reason}"))
    )
}

/// One GRUB word, single-quoted: nothing inside is expanded (`$`, `;`, newlines), and a
/// quote ends the quoting, is escaped, and starts it again.
fn quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', "'\\''"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ImageProtocol;
    use crate::decision::BootSpec;
    use crate::script::tests as ipxe;

    fn boot(cmdline: &str) -> BootSpec {
        BootSpec {
            cmdline: cmdline.into(),
            ..ipxe::boot()
        }
    }

    fn params<'a>(boot: &'a BootSpec, http: &'a str) -> ScriptParams<'a> {
        ScriptParams {
            http_authority: http,
            ..ipxe::params(boot, ImageProtocol::Http)
        }
    }

    #[test]
    fn loads_kernel_and_both_initrds_from_where_its_config_came_from() {
        let b = boot("quiet");
        let cfg = client_config(&params(&b, "10.0.0.1"));
        let lines: Vec<&str> = cfg.lines().collect();
        assert_eq!(
            lines[1],
            "echo \"diskless: loading lab 20261125-120000-abcd1234 from ${diskless_files}\""
        );
        let v = "/images/lab/20261125-120000-abcd1234";
        assert!(
            lines[2].starts_with(&format!(
                "linux ${{diskless_files}}{v}/vmlinuz 'boot=diskless' "
            )),
            "{cfg}"
        );
        assert_eq!(
            lines[3],
            format!(
                "initrd ${{diskless_files}}{v}/initrd.img ${{diskless_files}}{v}/diskless.cpio"
            )
        );
        assert_eq!(lines[4], "boot");
        assert!(
            lines[2].contains(" 'panic=30' "),
            "a failed boot reboots: {cfg}"
        );
    }

    #[test]
    fn the_command_line_is_the_ipxe_scripts_without_its_initrd_names() {
        let b = boot("quiet");
        let p = params(&b, "10.0.0.1");
        let cfg = client_config(&p);
        let linux = cfg.lines().find(|l| l.starts_with("linux ")).unwrap();
        let words: Vec<String> = linux
            .split(' ')
            .skip(2)
            .map(|w| w.trim_matches('\'').to_string())
            .collect();
        let ipxe_cmdline = kernel_cmdline(&p);
        let ipxe: Vec<&str> = ipxe_cmdline
            .split(' ')
            .filter(|w| !w.starts_with("initrd="))
            .collect();
        assert_eq!(words, ipxe);
        for word in [
            "diskless.image=http://10.0.0.1/images/lab/20261125-120000-abcd1234/root.squashfs",
            "diskless.sha256=ab12",
            "diskless.report=http://10.0.0.1/api/report/52-54-00-12-34-56?token=0123456789abcdef.42",
            &format!("systemd.machine_id={}", crate::script::machine_id(p.mac)),
        ] {
            assert!(words.iter().any(|w| w == word), "{word} missing: {linux}");
        }
        assert!(!linux.contains("initrd="), "{linux}");
    }

    #[test]
    fn an_initrd_with_the_boot_script_is_loaded_alone() {
        let b = boot("");
        let mut p = params(&b, "10.0.0.1");
        p.image.boot_cpio = false;
        let cfg = client_config(&p);
        assert!(!cfg.contains("diskless.cpio"), "{cfg}");
        assert!(cfg.contains("/initrd.img\n"), "{cfg}");
    }

    #[test]
    fn dispatcher_tries_http_on_port_80_then_tftp() {
        let d = dispatcher("10.0.0.1");
        let lines: Vec<&str> = d.lines().collect();
        assert_eq!(lines[2], "set diskless_files=(http,10.0.0.1)");
        assert_eq!(
            lines[3],
            "source \"${diskless_files}/grub/clients/${net_default_mac}.cfg\""
        );
        assert_eq!(
            lines[4],
            "set diskless_files=\"(tftp,${net_default_server})\""
        );
        assert_eq!(lines[5], lines[3]);
        assert_eq!(dispatcher("10.0.0.1:80"), d);
        // GRUB 2.06 cannot name another port: TFTP only.
        let other = dispatcher("10.0.0.1:8080");
        assert!(!other.contains("(http,"), "{other}");
        assert!(other.contains("(tftp,${net_default_server})"), "{other}");
    }

    #[test]
    fn site_options_cannot_inject_grub_commands() {
        let b = boot("a=$x; reboot b='c'");
        let cfg = client_config(&params(&b, "10.0.0.1"));
        let linux = cfg.lines().find(|l| l.starts_with("linux ")).unwrap();
        assert!(
            linux.ends_with(" 'a=$x;' 'reboot' 'b='\\''c'\\'''"),
            "{cfg}"
        );
        let r = refusal("52:54:00:00:00:01".parse().unwrap(), "no image'; reboot");
        assert_eq!(
            r.lines().next().unwrap(),
            "echo 'diskless: not booting 52:54:00:00:00:01: no image'\\''; reboot'"
        );
    }

    #[test]
    fn chain_files_by_the_names_clients_ask() {
        assert_eq!(
            chain_file("shimx64.efi"),
            Some(ChainFile::Package(SHIM_SIGNED))
        );
        // shim asks for its second stage at the root whatever its own directory was.
        assert_eq!(
            chain_file("grubx64.efi"),
            Some(ChainFile::Package(GRUBNET_SIGNED))
        );
        assert_eq!(chain_file("/grub/grub.cfg"), Some(ChainFile::Dispatcher));
        assert_eq!(chain_file("grub/grub.cfg"), Some(ChainFile::Dispatcher));
        assert_eq!(
            chain_file("/grub/clients/52:54:00:12:34:56.cfg"),
            Some(ChainFile::ClientConfig(
                "52:54:00:12:34:56".parse().unwrap()
            ))
        );
        for other in [
            "images/lab/v1/vmlinuz",
            "grub/x86_64-efi/http.mod",
            "revocations_sbat.efi",
            "grub/clients/nobody.cfg",
            "boot/shimx64.efi",
        ] {
            assert_eq!(chain_file(other), None, "{other}");
        }
    }

    /// A 64-bit ELF object with the sections `.text` and `.modname` (= `name`), as GRUB's
    /// modules are.
    fn elf_module(name: &str) -> Vec<u8> {
        let names = b"\0.text\0.modname\0.shstrtab\0";
        let modname = format!("{name}\0").into_bytes();
        let (names_at, modname_at) = (64, 64 + names.len());
        let headers_at = modname_at + modname.len();
        let mut elf = vec![0u8; 64];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[0x28..0x30].copy_from_slice(&(headers_at as u64).to_le_bytes());
        elf[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
        elf[0x3c..0x3e].copy_from_slice(&4u16.to_le_bytes());
        elf[0x3e..0x40].copy_from_slice(&3u16.to_le_bytes());
        elf.extend_from_slice(names);
        elf.extend_from_slice(&modname);
        // The null section, .text (empty), .modname, .shstrtab.
        for (name, at, size) in [
            (0u32, 0usize, 0usize),
            (1, 0, 0),
            (7, modname_at, modname.len()),
            (16, names_at, names.len()),
        ] {
            let mut h = vec![0u8; 64];
            h[..4].copy_from_slice(&name.to_le_bytes());
            h[24..32].copy_from_slice(&(at as u64).to_le_bytes());
            h[32..40].copy_from_slice(&(size as u64).to_le_bytes());
            elf.extend_from_slice(&h);
        }
        elf
    }

    /// A PE file with a `.text` section and a `mods` section holding `modules` and the
    /// prefix object, as `grub-mkimage` lays them out.
    fn grub_image(modules: &[&str]) -> Vec<u8> {
        let mut objects = Vec::new();
        let mut object = |kind: u32, body: &[u8]| {
            objects.extend_from_slice(&kind.to_le_bytes());
            objects.extend_from_slice(&(8 + body.len() as u32).to_le_bytes());
            objects.extend_from_slice(body);
        };
        for name in modules {
            object(0, &elf_module(name));
        }
        object(3, b"/grub\0\0\0");
        let mut mods = 0x676d_696du32.to_le_bytes().to_vec();
        mods.extend_from_slice(&[0; 4]);
        mods.extend_from_slice(&24u64.to_le_bytes());
        mods.extend_from_slice(&(24 + objects.len() as u64).to_le_bytes());
        mods.extend_from_slice(&objects);
        let (header, optional) = (0x80usize, 240usize);
        let sections_at = header + 24 + optional;
        let mods_at = sections_at + 2 * 40;
        let mut pe = vec![0u8; mods_at];
        pe[..2].copy_from_slice(b"MZ");
        pe[0x3c..0x40].copy_from_slice(&(header as u32).to_le_bytes());
        pe[header..header + 4].copy_from_slice(b"PE\0\0");
        pe[header + 6..header + 8].copy_from_slice(&2u16.to_le_bytes());
        pe[header + 20..header + 22].copy_from_slice(&(optional as u16).to_le_bytes());
        for (i, (name, size, at)) in [(&b".text"[..], 0, 0), (b"mods", mods.len(), mods_at)]
            .into_iter()
            .enumerate()
        {
            let s = sections_at + 40 * i;
            pe[s..s + name.len()].copy_from_slice(name);
            pe[s + 8..s + 12].copy_from_slice(&(size as u32).to_le_bytes());
            pe[s + 16..s + 20].copy_from_slice(&(size as u32).to_le_bytes());
            pe[s + 20..s + 24].copy_from_slice(&(at as u32).to_le_bytes());
        }
        pe.extend_from_slice(&mods);
        pe
    }

    #[test]
    fn the_modules_of_a_grub_image_say_whether_it_speaks_http() {
        let trixie = grub_image(&["efinet", "tftp", "http", "linux"]);
        assert_eq!(
            modules(&trixie).unwrap(),
            ["efinet", "tftp", "http", "linux"]
        );
        assert_eq!(GrubNet::of_image(&trixie), Ok(GrubNet::TftpAndHttp));
        let bookworm = grub_image(&["efinet", "tftp", "linux", "linuxefi"]);
        assert_eq!(GrubNet::of_image(&bookworm), Ok(GrubNet::Tftp));
        // A name that only contains "http" is not the module.
        let other = grub_image(&["tftp", "httpx"]);
        assert_eq!(GrubNet::of_image(&other), Ok(GrubNet::Tftp));
    }

    #[test]
    fn a_file_that_is_no_grub_image_is_an_error() {
        assert!(GrubNet::of_image(b"").is_err());
        assert!(GrubNet::of_image(b"#!/bin/sh\necho not GRUB\n").is_err());
        let mut image = grub_image(&["http"]);
        let at = image.len() - 8 - 8 - elf_module("http").len() - 8 - 24;
        assert_eq!(&image[at..at + 4], &0x676d_696du32.to_le_bytes());
        image[at] ^= 0xff;
        assert!(modules(&image).is_err(), "a wrong magic");
        let mut cut = grub_image(&["http"]);
        cut.truncate(cut.len() - 20);
        assert!(modules(&cut).is_err(), "cut short");
    }

    #[test]
    fn dispatcher_and_client_paths_agree() {
        let mac: Mac = "52:54:00:12:34:56".parse().unwrap();
        let path = Route::GrubConfig(mac).path();
        // What GRUB expands the dispatcher's path to for this client.
        let asked = dispatcher("10.0.0.1")
            .lines()
            .filter_map(|l| l.strip_prefix("source "))
            .map(|l| {
                l.trim_matches('"')
                    .replace("${diskless_files}", "")
                    .replace("${net_default_mac}", &mac.to_string())
            })
            .collect::<Vec<_>>();
        assert_eq!(asked, [path.clone(), path.clone()]);
        assert_eq!(chain_file(&path), Some(ChainFile::ClientConfig(mac)));
    }
}
