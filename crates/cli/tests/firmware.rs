//! Issue 14, every firmware a lab buys: OVMF's UEFI HTTP Boot (PXE switched off, the NIC
//! without iPXE's option ROM) boots the image to multi-user with our server as the network's
//! DHCP server (full mode) and beside dnsmasq as the site's (proxy mode), with not one TFTP
//! request on the wire.
//!
//! "No TFTP" is read from an nftables counter of the UDP packets to the server's TFTP port in
//! the vm's namespace (`diskless vm` reports it as `tftp_requests`): every TFTP transfer,
//! whoever makes it, starts with a request there. pxe.rs's UEFI PXE tests check that the same
//! counter counts ipxe.efi's request, and here the server's log must show no TFTP transfer
//! either.
//!
//! Then the Secure Boot chain (see `uefi_secure_boot_through_shim_and_grub`): by HTTP Boot on
//! trixie, by PXE on bookworm.
//!
//! Run by scripts/test (`cargo test -p diskless --test firmware -- --ignored
//! --test-threads=1`), sharing the test image with the other boot tests (see common).

mod common;
use common::{
    add_image, cache, command_output, read_report, record, run, run_vm, stages, test_release, vm,
    Overlay, Release, Work,
};
use std::path::{Path, PathBuf};
use std::process::Command;

const MAC: &str = "52:54:00:12:34:56";
const ROOT_FS: &str = "findmnt -n -o FSTYPE /";

/// Boot one client with OVMF's HTTP Boot in `mode`: it reaches multi-user on the overlay,
/// asked for its boot file as an HTTP client, got a URL, and nothing went over TFTP.
fn http_boot_to_multi_user(mode: &str) {
    let work = Work::new();
    let store = work.path().join("store");
    add_image(&store, "test");
    let logs = work.path().join("logs");
    run_vm(vm("test", &store, &logs, &[ROOT_FS]).args([
        "--firmware",
        "uefi-http",
        "--mode",
        mode,
        "--mac",
        MAC,
    ]));
    let report = read_report(&logs);
    eprintln!("uefi-http {mode}: boot phases {:?}", report.first().phases);
    let (fstype, status) = command_output(report.first(), ROOT_FS);
    assert_eq!((fstype.trim(), status), ("overlay", 0));

    // The firmware asked as an HTTP Boot client (vendor class HTTPClient) and was offered a
    // URL (option 67; with vendor class HTTPClient echoed, as edk2's HttpBootDxe requires).
    let record = record(&logs, MAC).unwrap_or_else(|| panic!("no record of {MAC}"));
    let offers: Vec<&str> = record
        .stages
        .iter()
        .filter(|s| s.stage.as_str() == "dhcp-offer")
        .map(|s| s.detail.as_str())
        .collect();
    assert!(
        offers.iter().any(|d| d.starts_with("uefi-http http://")),
        "no HTTP Boot offer with a URL: {offers:?}"
    );
    let stages = stages(&logs, MAC);
    for stage in ["ipxe-script", "fetched", "root-mounted", "multi-user"] {
        assert!(
            stages.iter().any(|s| s == stage),
            "{stage} missing: {stages:?}"
        );
    }

    // Zero TFTP: the counter saw no request, the server sent nothing over TFTP.
    assert_eq!(report.tftp_requests, 0, "TFTP requests during an HTTP Boot");
    let log = std::fs::read_to_string(logs.join("server.log")).unwrap();
    let tftp: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("tftp: sent") || l.contains("tftp: refused"))
        .collect();
    assert!(tftp.is_empty(), "TFTP in the server log: {tftp:?}");
}

#[test]
#[ignore = "needs root, QEMU, OVMF and minutes: run by scripts/test"]
fn uefi_http_boot_full_mode() {
    http_boot_to_multi_user("full");
}

#[test]
#[ignore = "needs root, QEMU, OVMF, dnsmasq and minutes: run by scripts/test"]
fn uefi_http_boot_proxy_mode_beside_dnsmasq() {
    http_boot_to_multi_user("proxy");
}

/// The SecureBoot EFI variable (global variable GUID): 4 attribute bytes, then 1 when on.
const SECURE_BOOT_VAR: &str =
    "od -An -t u1 /sys/firmware/efi/efivars/SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c";
const LOCKDOWN: &str = "cat /sys/kernel/security/lockdown";
const MODULES: &str = "cut -d' ' -f1 /proc/modules";

/// Issue 14's Secure Boot chain: OVMF with Secure Boot enforced and Microsoft's keys runs
/// Debian's signed shim, which runs Debian's signed GRUB network image, which loads the
/// image's Debian-signed kernel with its initrd and diskless.cpio; the client reaches
/// multi-user with Secure Boot on, the kernel locked down, the modules from diskless.cpio
/// loaded, and `/` the overlay.
///
/// One boot per release (CI's time budget; issue 23): trixie's seat comes by UEFI HTTP Boot
/// (`uefi-secureboot-http`: trixie's GRUB 2.12 has http), every file of the chain over HTTP
/// and not one TFTP request; bookworm's by UEFI PXE (`uefi-secureboot`: its GRUB 2.06 has no
/// http), shim, GRUB and their configs over TFTP.
#[test]
#[ignore = "needs root, QEMU, OVMF, shim-signed, grub-efi-amd64-signed and minutes: run by scripts/test"]
fn uefi_secure_boot_through_shim_and_grub() {
    let work = Work::new();
    let store = work.path().join("store");
    add_image(&store, "test");
    let logs = work.path().join("logs");
    let checks = [ROOT_FS, SECURE_BOOT_VAR, LOCKDOWN, MODULES];
    let release = test_release();
    let over_http = release != Release::Bookworm;
    let firmware = if over_http {
        "uefi-secureboot-http"
    } else {
        "uefi-secureboot"
    };
    let mut vm = vm("test", &store, &logs, &checks);
    vm.args(["--firmware", firmware, "--mac", MAC]);
    match host_release() {
        Some(host) if host == release => run_vm(&mut vm),
        _ => run_vm(&mut with_chain_of(release, &vm, work.path())),
    }
    let report = read_report(&logs);
    eprintln!("{firmware}: boot phases {:?}", report.first().phases);
    let (fstype, status) = command_output(report.first(), ROOT_FS);
    assert_eq!((fstype.trim(), status), ("overlay", 0));
    let (secure_boot, status) = command_output(report.first(), SECURE_BOOT_VAR);
    assert_eq!(status, 0, "{secure_boot}");
    assert_eq!(
        secure_boot.split_whitespace().last(),
        Some("1"),
        "Secure Boot is off: {secure_boot}"
    );
    // Debian's kernel locks itself down when booted with Secure Boot: "[integrity]" (or the
    // stricter confidentiality) is the mode in force.
    let (lockdown, _) = command_output(report.first(), LOCKDOWN);
    assert!(
        lockdown.contains("[integrity]") || lockdown.contains("[confidentiality]"),
        "kernel not locked down: {lockdown}"
    );
    // diskless.cpio's modules loaded under lockdown: they are the image kernel's own,
    // signed by Debian.
    let (modules, _) = command_output(report.first(), MODULES);
    let loaded: Vec<&str> = modules.split_whitespace().collect();
    // (Debian's kernel builds all three as modules.)
    for module in ["loop", "squashfs", "overlay"] {
        assert!(loaded.contains(&module), "{module} not loaded: {loaded:?}");
    }

    // The chain as the server saw it: shim, then GRUB, then GRUB's dispatcher, this
    // client's config and the kernel.
    let log = std::fs::read_to_string(logs.join("server.log")).unwrap();
    let config = format!("grub/clients/{MAC}.cfg");
    if over_http {
        // The server read its GRUB image's modules and found http.
        assert!(
            log.contains("this GRUB has http"),
            "the server did not find http in trixie's GRUB:\n{log}"
        );
        // DHCP gave the HTTP Boot client shim's URL.
        let record = record(&logs, MAC).unwrap_or_else(|| panic!("no record of {MAC}"));
        assert!(
            record
                .stages
                .iter()
                .any(|s| s.stage.as_str() == "dhcp-offer"
                    && s.detail.starts_with("uefi-http http://")
                    && s.detail.ends_with("/shimx64.efi")),
            "no HTTP Boot offer of shim: {:?}",
            record.stages
        );
        // Every file of the chain over HTTP, in the chain's order (shim asked for
        // grubx64.efi beside itself; GRUB's prefix was the HTTP server's /grub).
        let sent: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("http: sending"))
            .collect();
        let at = |file: &str| {
            sent.iter()
                .position(|l| l.contains(&format!("file={file}")))
                .unwrap_or_else(|| panic!("{file} was not sent over HTTP:\n{log}"))
        };
        let order = [
            at("/shimx64.efi"),
            at("/grubx64.efi"),
            at("/grub/grub.cfg"),
            at(&format!("/{config}")),
            at("vmlinuz"),
        ];
        assert!(
            order.windows(2).all(|w| w[0] < w[1]),
            "the chain's files out of order {order:?}:\n{}",
            sent.join("\n")
        );
        // Zero TFTP: the counter saw no request, the server sent nothing over TFTP.
        assert_eq!(report.tftp_requests, 0, "TFTP requests during an HTTP Boot");
        let tftp: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("tftp: sent") || l.contains("tftp: refused"))
            .collect();
        assert!(tftp.is_empty(), "TFTP in the server log: {tftp:?}");
    } else {
        // Bookworm's GRUB has no http: the server says HTTP Boot clients cannot come this way.
        assert!(
            log.contains("has no http module"),
            "no warning about bookworm's GRUB:\n{log}"
        );
        let sent_over_tftp = |file: &str| {
            log.lines()
                .any(|l| l.contains("tftp: sent") && l.contains(file))
        };
        for file in [
            "shimx64.efi",
            "grubx64.efi",
            "grub/grub.cfg",
            &config,
            "/vmlinuz",
        ] {
            assert!(
                sent_over_tftp(file),
                "{file} was not sent over TFTP:\n{log}"
            );
        }
        assert!(report.tftp_requests >= 5);
    }
}

/// The Debian release of this machine (`VERSION_CODENAME` of /etc/os-release), if diskless
/// makes images of it.
fn host_release() -> Option<Release> {
    let text = std::fs::read_to_string("/etc/os-release").ok()?;
    let codename = text
        .lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME="))?;
    Release::from_suite(codename.trim_matches('"'))
}

/// `vm` run with the Secure Boot chain of `release` (issue 23): a lab's server serves its own
/// Debian's shim and GRUB network image from their packages' paths, so seats of `release`
/// booted from a server of `release` get that release's. When the host is another release
/// (trixie seats from the bookworm host CI runs on), `release`'s shim-signed and
/// grub-efi-amd64-signed are mounted over the host's files for the vm alone: `diskless vm`
/// runs in a mount namespace of its own (slave, so the host's mounts still reach it and its
/// own stay in). Trixie's differ from bookworm's: shim built for trixie, GRUB 2.12 whose
/// signed network image has the http module (bookworm's GRUB 2.06 has none).
fn with_chain_of(release: Release, vm: &Command, dir: &Path) -> Command {
    use diskless_boot::grub::{GRUBNET_SIGNED, SHIM_SIGNED};
    let chain = secure_boot_packages(release, dir);
    let mut script = String::from("set -e\n");
    for path in [SHIM_SIGNED, GRUBNET_SIGNED] {
        let ours = chain.join(path.trim_start_matches('/'));
        assert!(ours.is_file(), "{} missing", ours.display());
        script.push_str(&format!("mount --bind '{}' '{path}'\n", ours.display()));
    }
    script.push_str("exec \"$@\"\n");
    let mut wrapped = Command::new("unshare");
    wrapped
        .args([
            "--mount",
            "--propagation",
            "slave",
            "sh",
            "-c",
            &script,
            "sh",
        ])
        .arg(vm.get_program())
        .args(vm.get_args());
    wrapped
}

/// `release`'s shim-signed and grub-efi-amd64-signed unpacked into
/// $DISKLESS_CACHE/secure-boot/SUITE (downloaded once): apt in the release's bootstrapped
/// tree, under an overlay in `dir` so that the cached tree is not changed.
fn secure_boot_packages(release: Release, dir: &Path) -> PathBuf {
    let unpacked = cache().join("secure-boot").join(release.suite());
    let done = unpacked.join(".unpacked");
    if done.is_file() {
        return unpacked;
    }
    let tree = common::bootstrapped_tree(release);
    let overlay = Overlay::mount(&tree, &dir.join("secure-boot-apt"));
    std::fs::copy("/etc/resolv.conf", overlay.merged.join("etc/resolv.conf"))
        .expect("/etc/resolv.conf for apt in the tree");
    std::fs::create_dir_all(overlay.merged.join("tmp/debs")).unwrap();
    run(Command::new("chroot").arg(&overlay.merged).args([
        "sh",
        "-c",
        "apt-get update -q && cd /tmp/debs && \
         apt-get download -q shim-signed grub-efi-amd64-signed",
    ]));
    let _ = std::fs::remove_dir_all(&unpacked);
    std::fs::create_dir_all(&unpacked).unwrap();
    for deb in std::fs::read_dir(overlay.merged.join("tmp/debs")).unwrap() {
        let deb = deb.unwrap().path();
        run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpacked));
        eprintln!(
            "Secure Boot chain of {}: {}",
            release.suite(),
            deb.display()
        );
    }
    std::fs::write(&done, "").unwrap();
    unpacked
}
