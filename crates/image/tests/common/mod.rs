//! Shared by the integration tests: a small tree laid out like an installed system, the mounts
//! a running system has inside it (removed by a guard, also on failure), and readers of the
//! images made from it through the real unsquashfs.

#![allow(dead_code)]

use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

pub const KERNEL_VERSION: &str = "6.1.0-99-amd64";

pub const FSTAB: &str = "# /etc/fstab: static file system information.\n\
UUID=11111111-2222-3333-4444-555555555555 / ext4 errors=remount-ro 0 1\n\
UUID=66666666-7777-8888-9999-000000000000 none swap sw 0 0\n\
/swapfile none swap sw 0 0\n\
LABEL=data /srv/data ext4 defaults,nofail 0 2\n";

/// Why a test cannot run here, or None when it can.
pub fn missing_prerequisite(tools: &[&str]) -> Option<String> {
    if !diskless_testkit::is_root() {
        return Some("needs root (mounts inside the test tree, files owned by root)".into());
    }
    diskless_testkit::missing_tools(tools)
}

/// Skip the test when it cannot run here: loudly, and a failure under CI=true.
#[macro_export]
macro_rules! require {
    ($($tool:expr),*) => {
        if let Some(why) = common::missing_prerequisite(&[$($tool),*]) {
            return diskless_testkit::skip(&why);
        }
    };
}

pub fn write(root: &Path, rel: &str, content: impl AsRef<[u8]>) {
    let path = root.join(rel);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(&path, content).unwrap();
}

/// A small initrd holding `files`: an uncompressed cpio archive.
pub fn initrd(files: &[&str]) -> Vec<u8> {
    let mut w = diskless_initramfs::CpioWriter::new(Vec::new());
    for f in files {
        w.add_file(f, 0o755, b"#!/bin/sh\n").unwrap();
    }
    w.finish().unwrap()
}

/// The least a build needs: a kernel with its initrd, and modules.dep naming the
/// modules diskless.cpio carries (bootcpio only copies their bytes, so small fakes do).
pub fn minimal_tree(root: &Path) {
    write(
        root,
        &format!("boot/vmlinuz-{KERNEL_VERSION}"),
        "fake kernel",
    );
    write(
        root,
        &format!("boot/initrd.img-{KERNEL_VERSION}"),
        initrd(&["init", "scripts/local"]),
    );
    let modules = format!("lib/modules/{KERNEL_VERSION}");
    let mut dep = String::new();
    for m in [
        "kernel/drivers/block/loop.ko",
        "kernel/fs/squashfs/squashfs.ko",
        "kernel/fs/overlayfs/overlay.ko",
        "kernel/drivers/md/dm-mod.ko",
    ] {
        write(root, &format!("{modules}/{m}"), format!("\x7fELF {m}"));
        dep.push_str(&format!("{m}:\n"));
    }
    let verity = "kernel/drivers/md/dm-verity.ko";
    write(
        root,
        &format!("{modules}/{verity}"),
        format!("\x7fELF {verity}"),
    );
    dep.push_str(&format!("{verity}: kernel/drivers/md/dm-mod.ko\n"));
    write(root, &format!("{modules}/modules.dep"), dep);
    write(root, "usr/bin/tool", "#!/bin/sh\necho tool\n");
    for dir in [
        "proc",
        "sys",
        "dev",
        "run",
        "tmp",
        "srv/nested",
        "mnt",
        "home",
    ] {
        fs::create_dir_all(root.join(dir)).unwrap();
    }
}

/// Everything an installed, running system has that an image must not keep.
pub fn system_tree(root: &Path) {
    minimal_tree(root);
    write(root, "etc/fstab", FSTAB);
    write(root, "swapfile", vec![0u8; 64 * 1024]);
    fs::set_permissions(root.join("swapfile"), fs::Permissions::from_mode(0o600)).unwrap();
    write(root, "etc/machine-id", "0123456789abcdef0123456789abcdef\n");
    write(
        root,
        "var/lib/dbus/machine-id",
        "0123456789abcdef0123456789abcdef\n",
    );
    write(root, "etc/ssh/sshd_config", "PermitRootLogin no\n");
    for key in ["ssh_host_ed25519_key", "ssh_host_rsa_key"] {
        write(
            root,
            &format!("etc/ssh/{key}"),
            "-----BEGIN OPENSSH PRIVATE KEY-----\n",
        );
        fs::set_permissions(
            root.join(format!("etc/ssh/{key}")),
            fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        write(
            root,
            &format!("etc/ssh/{key}.pub"),
            "ssh-ed25519 AAAA master\n",
        );
    }
    write(
        root,
        "etc/initramfs-tools/conf.d/resume",
        "RESUME=UUID=66666666-7777-8888-9999-000000000000\n",
    );
    write(root, "etc/hostname", "master\n");
    write(root, "var/lib/systemd/random-seed", vec![7u8; 512]);
    write(root, "var/lib/systemd/catalog/database", "kept");
    write(
        root,
        "var/lib/dhcp/dhclient.enp3s0.leases",
        "lease { fixed-address 10.0.0.7; }\n",
    );
    write(root, "var/lib/dhcp/dhclient6.conf", "kept");
    write(
        root,
        "var/cache/apt/archives/bash_5.2_amd64.deb",
        "!<arch>\n",
    );
    write(
        root,
        "var/cache/apt/archives/partial/vim_9.0_amd64.deb",
        "!<arch>\n",
    );
    write(root, "var/cache/apt/pkgcache.bin", "cache");
    write(root, "run/lock/something.pid", "42\n");
    write(root, "srv/data/.keep", "");
}

/// Mounts made inside a tree; unmounted (innermost first) when dropped, the test failing
/// or not.
#[derive(Default)]
pub struct Mounts(Vec<PathBuf>);

impl Mounts {
    pub fn mount(&mut self, args: &[&str], target: &Path) {
        fs::create_dir_all(target).unwrap();
        let status = Command::new("mount")
            .args(args)
            .arg(target)
            .status()
            .unwrap();
        assert!(status.success(), "mount {args:?} {}", target.display());
        self.0.push(target.to_path_buf());
    }

    /// What a running system has mounted inside its root, plus a nested tmpfs holding a file.
    pub fn running_system(root: &Path) -> Mounts {
        let mut m = Mounts::default();
        m.mount(&["-t", "proc", "proc"], &root.join("proc"));
        m.mount(&["-t", "sysfs", "sysfs"], &root.join("sys"));
        m.mount(&["--bind", "/dev"], &root.join("dev"));
        m.mount(
            &["-t", "tmpfs", "-o", "size=4m", "tmpfs"],
            &root.join("tmp"),
        );
        m.mount(
            &["-t", "tmpfs", "-o", "size=4m", "tmpfs"],
            &root.join("srv/nested"),
        );
        write(root, "tmp/scratch.txt", "temporary\n");
        write(
            root,
            "srv/nested/on-another-fs.txt",
            "not part of the root fs\n",
        );
        m
    }
}

impl Drop for Mounts {
    fn drop(&mut self) {
        for target in self.0.iter().rev() {
            let ok = Command::new("umount")
                .arg(target)
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                let _ = Command::new("umount").arg("-l").arg(target).status();
            }
        }
    }
}

/// A digest of every entry on the tree's own filesystem: path, type, mode, owner, contents
/// or link target. Mounted filesystems inside are not walked (proc changes by itself).
pub fn tree_digest(root: &Path) -> BTreeMap<String, String> {
    let dev = fs::metadata(root).unwrap().dev();
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let meta = fs::symlink_metadata(&path).unwrap();
            let rel = path.strip_prefix(root).unwrap().display().to_string();
            if meta.dev() != dev {
                out.insert(rel, "a mount point".into());
                continue;
            }
            let mut h = Sha256::new();
            h.update(format!(
                "{:o} {} {} {}",
                meta.mode(),
                meta.uid(),
                meta.gid(),
                meta.mtime()
            ));
            if meta.file_type().is_symlink() {
                h.update(fs::read_link(&path).unwrap().as_os_str().as_encoded_bytes());
            } else if meta.is_file() {
                h.update(fs::read(&path).unwrap());
            } else if meta.is_dir() {
                stack.push(path.clone());
            }
            out.insert(rel, hex::encode(h.finalize()));
        }
    }
    out
}

/// Paths in the image, relative to its root (`unsquashfs -l`).
pub fn image_paths(image: &Path) -> Vec<String> {
    let out = Command::new("unsquashfs")
        .args(["-l", "-d", "ROOT"])
        .arg(image)
        .output()
        .unwrap();
    assert!(out.status.success(), "unsquashfs -l {}", image.display());
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| l.strip_prefix("ROOT/"))
        .map(str::to_string)
        .collect()
}

/// `unsquashfs -ll` lines, for modes and link targets.
pub fn image_long_listing(image: &Path) -> String {
    let out = Command::new("unsquashfs")
        .args(["-ll", "-d", "ROOT"])
        .arg(image)
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

/// A file's contents in the image (`unsquashfs -cat`).
pub fn image_cat(image: &Path, rel: &str) -> String {
    let out = Command::new("unsquashfs")
        .arg("-cat")
        .arg(image)
        .arg(rel)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "unsquashfs -cat {rel}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `unsquashfs -s`: the superblock as text (compressor, block size).
pub fn image_superblock(image: &Path) -> String {
    let out = Command::new("unsquashfs")
        .arg("-s")
        .arg(image)
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

/// Any file stands for the fetch helper: diskless.cpio only copies its bytes.
pub fn fake_helper(dir: &Path) -> PathBuf {
    let path = dir.join("diskless-fetch");
    fs::write(&path, b"\x7fELF fake helper").unwrap();
    path
}
