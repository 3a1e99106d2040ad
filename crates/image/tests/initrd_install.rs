//! `initrd_install::install` on a copy (an overlay) of the bootstrapped Debian tree, with the
//! tree's own update-initramfs, checked with lsinitramfs and unmkinitramfs: the regenerated
//! initrd carries the boot script, the helper and the modules, laid out as diskless.cpio.

mod common;

use common::*;
use diskless_image::bootcpio::{module_name, read_module, BOOT_SCRIPT, HOME_HELPER};
use diskless_image::initrd_install::{self, InstallOptions, HOOK_PATH};
use diskless_image::manifest::hash_file;
use std::path::PathBuf;
use std::process::Command;

/// The default release's bootstrapped tree (trixie's), which scripts/test bootstraps before
/// this test runs.
fn bootstrapped_tree() -> PathBuf {
    let cache = std::env::var_os("DISKLESS_CACHE").unwrap_or("/var/cache/diskless".into());
    PathBuf::from(cache)
        .join("roots")
        .join(diskless_image::bootstrap::DEFAULT_SUITE)
}

#[test]
#[ignore = "needs the default release's bootstrapped tree: run by scripts/test after its bootstrap"]
fn installed_hook_makes_one_initrd_that_boots_diskless() {
    require!("mount", "umount", "chroot", "lsinitramfs", "unmkinitramfs");
    let lower = bootstrapped_tree();
    if !lower.join("usr/sbin/update-initramfs").exists() {
        return diskless_testkit::skip(&format!(
            "no bootstrapped tree at {} (made by the end-to-end test or \
             `diskless image bootstrap`)",
            lower.display()
        ));
    }
    let kernel = diskless_image::kernel::find(&lower).unwrap();
    let stock_initrd = hash_file(&kernel.initrd).unwrap();

    // The shared tree stays read-only: everything is written to the overlay's upper layer.
    let work = tempfile::tempdir().unwrap();
    let (upper, ovl_work, root) = (
        work.path().join("upper"),
        work.path().join("work"),
        work.path().join("root"),
    );
    std::fs::create_dir_all(&upper).unwrap();
    std::fs::create_dir_all(&ovl_work).unwrap();
    let mut mounts = Mounts::default();
    let options = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.display(),
        upper.display(),
        ovl_work.display()
    );
    mounts.mount(&["-t", "overlay", "overlay", "-o", &options], &root);
    let helper = fake_helper(work.path());

    let done = initrd_install::install(&InstallOptions {
        root: root.clone(),
        fetch_helper: helper.clone(),
        update: true,
    })
    .unwrap();

    let initrd = root.join(format!("boot/initrd.img-{}", kernel.version));
    assert_eq!(done.initrds, std::slice::from_ref(&initrd));
    assert_ne!(hash_file(&initrd).unwrap(), stock_initrd, "not regenerated");
    let listing = Command::new("lsinitramfs").arg(&initrd).output().unwrap();
    assert!(listing.status.success());
    let listing = String::from_utf8(listing.stdout).unwrap();
    let has = |p: &str| listing.lines().any(|l| l == p);
    for expected in [
        "scripts/diskless",
        "diskless/bin/diskless-fetch",
        "diskless/bin/diskless-home",
        "diskless/modules/load-order",
        "diskless/modules/loop.ko",
        "diskless/modules/squashfs.ko",
        "diskless/modules/overlay.ko",
    ] {
        assert!(has(expected), "{expected} not in the initrd");
    }
    // modprobe finds them too, as the kernel ships them (Debian 13's xz-compressed).
    for module in ["loop.ko", "squashfs.ko", "overlay.ko"] {
        assert!(
            listing.lines().any(|l| l.starts_with("usr/lib/modules/")
                && ["", ".xz", ".zst", ".gz"]
                    .iter()
                    .any(|c| l.ends_with(&format!("{module}{c}")))),
            "{module} not under usr/lib/modules"
        );
    }

    // The contents are the ones we installed, and the tree's modules, decompressed.
    let unpacked = work.path().join("unpacked");
    let status = Command::new("unmkinitramfs")
        .arg(&initrd)
        .arg(&unpacked)
        .status()
        .unwrap();
    assert!(status.success());
    let main = if unpacked.join("main").is_dir() {
        unpacked.join("main")
    } else {
        unpacked.clone()
    };
    assert_eq!(
        std::fs::read_to_string(main.join("scripts/diskless")).unwrap(),
        BOOT_SCRIPT
    );
    assert_eq!(
        std::fs::read(main.join("diskless/bin/diskless-fetch")).unwrap(),
        std::fs::read(&helper).unwrap()
    );
    assert_eq!(
        std::fs::read_to_string(main.join("diskless/bin/diskless-home")).unwrap(),
        HOME_HELPER
    );
    let order = std::fs::read_to_string(main.join("diskless/modules/load-order")).unwrap();
    let listed: Vec<&str> = order.lines().collect();
    for module in ["loop.ko", "squashfs.ko", "overlay.ko"] {
        assert!(
            listed.contains(&module),
            "{module} not in load-order {listed:?}"
        );
    }
    let modules_dir = lower.join("lib/modules").join(&kernel.version);
    let dep = std::fs::read_to_string(modules_dir.join("modules.dep")).unwrap();
    // (Debian 12's kernel ships them as they are, Debian 13's xz-compressed.)
    for module in ["squashfs", "overlay"] {
        let rel = dep
            .lines()
            .filter_map(|l| l.split_once(':'))
            .map(|(m, _)| m)
            .find(|m| module_name(m) == module)
            .unwrap_or_else(|| panic!("{module} not in modules.dep"));
        assert_eq!(
            std::fs::read(main.join("diskless/modules").join(format!("{module}.ko"))).unwrap(),
            read_module(&modules_dir.join(rel)).unwrap(),
            "{module}"
        );
    }

    // The shared tree was not written.
    assert!(!lower.join(HOOK_PATH).exists());
    assert!(upper.join(HOOK_PATH).exists());
    assert_eq!(hash_file(&kernel.initrd).unwrap(), stock_initrd);
}
