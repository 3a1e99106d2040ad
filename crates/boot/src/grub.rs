//! The GRUB configs of the Secure Boot chain: firmware → Debian's signed shim → Debian's
//! signed GRUB network image → the image's signed kernel. The same decisions as the iPXE
//! script ([`crate::script`]): image, version, sha256, machine-id, kernel command line, report
//! URL, `diskless.cpio` when the version has one.
//!
//! How the binaries find their files (read in shim 16.1 and GRUB 2.06 sources, and in the
//! binaries Debian 12 ships):
//!
//! - shim (`shim-signed`: /usr/lib/shim/shimx64.efi.signed) loads its second stage by the
//!   compiled-in name `\grubx64.efi` (`strings -el` shows it), from the same place it was
//!   loaded from: over PXE (netboot.c) by TFTP from the boot server (`siaddr`) in the
//!   directory of the DHCP boot file name (the proxy offer's when the address server gave
//!   none); over UEFI HTTP Boot (httpboot.c) from the boot URL with its last path segment
//!   replaced, only on a 200 answer with a Content-Length (no redirects, no chunks). So the
//!   server serves `grubnetx64.efi.signed` under the name `grubx64.efi` beside shim.
//! - Debian's `grubnetx64.efi.signed` (grub-efi-amd64-signed) has the prefix `/grub` and an
//!   embedded config `normal (memdisk)/grub.cfg` whose memdisk `grub.cfg` sources
//!   `$prefix/x86_64-efi/grub.cfg` if it exists, else `$prefix/grub.cfg` (read from the
//!   image's `mods` section). The prefix's device is where GRUB was loaded from:
//!   `(tftp,SERVER)` after PXE (the DHCP ACK's `siaddr`, also `$net_default_server`). As
//!   `normal` is given a file, GRUB's per-client search (`grub.cfg-01-MAC`, `grub.cfg-HEXIP`,
//!   net.c's `grub_net_search_config_file`) never runs: every client reads `/grub/grub.cfg`,
//!   which is [`dispatcher`], and it hands over to the client's own file by
//!   `$net_default_mac` ([`client_config_path`]).
//! - Its modules (the `mods` section of Debian 12's image): tftp, efinet, linux, ... but no
//!   http. GRUB loads a missing protocol module on first use from `$prefix` (net.c,
//!   `grub_net_open_real`), and Secure Boot (shim_lock) forbids loading modules at all. So
//!   the per-client config tries `insmod http` and fetches the kernel and initrds over HTTP
//!   where that works (a GRUB with http built in), over TFTP otherwise: with Debian 12's
//!   image, lock-step 1024-byte TFTP blocks.
//! - GRUB 2.06 names a network device `(PROTOCOL,HOST)`, without a port: HTTP is used only
//!   on port 80, TFTP only on port 69 (the firmware's PXE and shim use 69 too).

use crate::mac::Mac;
use crate::script::{file_path, kernel_cmdline, ScriptParams};

/// Where every GRUB client looks first: `$prefix/grub.cfg`.
pub const DISPATCHER_PATH: &str = "/grub/grub.cfg";

/// The name shim loads its second stage by, in the directory it was loaded from.
pub const SHIM_SECOND_STAGE: &str = "grubx64.efi";

/// The path of a client's own config, as [`dispatcher`] asks for it (GRUB spells
/// `$net_default_mac` `aa:bb:cc:dd:ee:ff`).
pub fn client_config_path(mac: Mac) -> String {
    format!("/grub/clients/{mac}.cfg")
}

/// The MAC of a client config path (`/grub/clients/MAC.cfg`), if it is one.
pub fn client_config_mac(path: &str) -> Option<Mac> {
    path.strip_prefix("/grub/clients/")?
        .strip_suffix(".cfg")?
        .parse()
        .ok()
}

/// `/grub/grub.cfg`, the same for every client: on to the client's own config.
pub fn dispatcher() -> String {
    "# diskless: every client's GRUB reads this; its own config is named after its MAC.\n\
     echo \"diskless: GRUB on ${net_default_mac}, server ${net_default_server}\"\n\
     configfile \"$prefix/clients/${net_default_mac}.cfg\"\n"
        .to_string()
}

/// A client's config: the kernel with the same command line as the iPXE script, the stock
/// initrd and `diskless.cpio`, over HTTP where this GRUB can, else over TFTP.
pub fn client_config(p: &ScriptParams) -> String {
    let host = |authority: &str, default_port: &str| -> Option<String> {
        match authority.rsplit_once(':') {
            None => Some(authority.to_string()),
            Some((host, port)) if port == default_port => Some(host.to_string()),
            Some(_) => None,
        }
    };
    let tftp = host(p.tftp_authority, "69").map(|h| format!("(tftp,{h})"));
    let http = host(p.http_authority, "80").map(|h| format!("(http,{h})"));
    let choose = match (&http, &tftp) {
        (Some(http), Some(tftp)) => format!(
            "if insmod http; then\n  set diskless_files={http}\nelse\n  \
             echo 'diskless: no http module in this GRUB: kernel and initrd over TFTP'\n  \
             set diskless_files={tftp}\nfi\n"
        ),
        (Some(http), None) => format!("insmod http\nset diskless_files={http}\n"),
        (None, Some(tftp)) => format!("set diskless_files={tftp}\n"),
        // GRUB cannot reach the server on these ports; the server refuses such a setup at
        // start, so this only says why the boot stops.
        (None, None) => {
            "echo 'diskless: GRUB reaches HTTP on port 80 and TFTP on port 69 only'\n".to_string()
        }
    };
    let file = |name: &str| format!("${{diskless_files}}{}", file_path(&p.image, name));
    let mut initrds = vec![file("initrd.img")];
    if p.image.boot_cpio {
        initrds.push(file("diskless.cpio"));
    }
    // GRUB hands the initrds to the kernel itself; the `initrd=NAME` words of the iPXE
    // command line would send the EFI stub looking for files on the boot device, which a
    // network boot does not have.
    let cmdline: Vec<String> = kernel_cmdline(p)
        .split(' ')
        .filter(|w| !w.is_empty() && !w.starts_with("initrd="))
        .map(quote)
        .collect();
    format!(
        "# diskless: {mac} boots image {name} version {version}\n\
         {choose}\
         echo {loading}\n\
         linux {kernel} {cmdline}\n\
         initrd {initrds}\n\
         boot\n",
        mac = p.mac,
        name = p.image.name,
        version = p.image.version,
        loading = quote(&format!(
            "diskless: loading {} {}",
            p.image.name, p.image.version
        )),
        kernel = file("vmlinuz"),
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
    use crate::policy::ClientBoot;
    use crate::script::ImageRef;

    fn boot(cmdline: &str) -> ClientBoot {
        ClientBoot {
            image: "lab".into(),
            hostname: None,
            size: "3G".into(),
            cmdline: cmdline.into(),
        }
    }

    fn params<'a>(boot: &'a ClientBoot, http: &'a str) -> ScriptParams<'a> {
        ScriptParams {
            http_authority: http,
            tftp_authority: "10.0.0.1",
            protocol: ImageProtocol::Http,
            mac: "52:54:00:12:34:56".parse().unwrap(),
            boot,
            image: ImageRef {
                name: "lab",
                version: "20261125-120000-abcd1234",
                squashfs_sha256: "ab12",
                boot_cpio: true,
            },
        }
    }

    #[test]
    fn loads_kernel_and_both_initrds_over_http_or_tftp() {
        let b = boot("quiet");
        let cfg = client_config(&params(&b, "10.0.0.1"));
        let lines: Vec<&str> = cfg.lines().collect();
        assert_eq!(lines[1], "if insmod http; then");
        assert_eq!(lines[2], "  set diskless_files=(http,10.0.0.1)");
        assert_eq!(lines[5], "  set diskless_files=(tftp,10.0.0.1)");
        let v = "/images/lab/20261125-120000-abcd1234";
        let linux = lines.iter().find(|l| l.starts_with("linux ")).unwrap();
        assert!(
            linux.starts_with(&format!(
                "linux ${{diskless_files}}{v}/vmlinuz 'boot=diskless' "
            )),
            "{linux}"
        );
        let initrd = lines.iter().find(|l| l.starts_with("initrd ")).unwrap();
        assert_eq!(
            *initrd,
            format!(
                "initrd ${{diskless_files}}{v}/initrd.img ${{diskless_files}}{v}/diskless.cpio"
            )
        );
        assert_eq!(*lines.last().unwrap(), "boot");
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
            "diskless.report=http://10.0.0.1/api/report/52-54-00-12-34-56",
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
    fn http_on_another_port_falls_back_to_tftp() {
        let b = boot("");
        let cfg = client_config(&params(&b, "10.0.0.1:8080"));
        assert!(!cfg.contains("(http,"), "{cfg}");
        assert!(
            cfg.contains("set diskless_files=(tftp,10.0.0.1)\n"),
            "{cfg}"
        );
        // The image itself still comes over HTTP from the initramfs, which knows ports.
        assert!(
            cfg.contains("diskless.image=http://10.0.0.1:8080/"),
            "{cfg}"
        );
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
    fn dispatcher_and_client_paths_agree() {
        let mac: Mac = "52:54:00:12:34:56".parse().unwrap();
        let path = client_config_path(mac);
        assert_eq!(path, "/grub/clients/52:54:00:12:34:56.cfg");
        assert_eq!(client_config_mac(&path), Some(mac));
        assert_eq!(client_config_mac("/grub/clients/../x.cfg"), None);
        assert_eq!(client_config_mac("/grub/grub.cfg"), None);
        // What GRUB expands the dispatcher's path to for this client.
        let asked = dispatcher()
            .lines()
            .find_map(|l| l.strip_prefix("configfile "))
            .unwrap()
            .trim_matches('"')
            .replace("$prefix", "/grub")
            .replace("${net_default_mac}", &mac.to_string());
        assert_eq!(asked, path);
    }
}
