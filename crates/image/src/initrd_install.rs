//! `diskless initrd install`: teach a root tree's own initrd to boot `boot=diskless` by itself.
//!
//! iPXE clients get the image's stock initrd plus `diskless.cpio` ([`crate::bootcpio`]); a boot
//! loader that takes one initrd (pxelinux, GRUB) needs both in one file. This installs an
//! initramfs-tools hook and the boot script into the tree and regenerates its initrds:
//!
//! ```text
//! ROOT/etc/initramfs-tools/hooks/diskless     the hook (initramfs-tools/hooks/diskless)
//! ROOT/etc/initramfs-tools/scripts/diskless   the boot script (becomes /scripts/diskless)
//! ROOT/usr/lib/diskless/diskless-fetch        the static helper the hook copies
//! ROOT/usr/lib/diskless/diskless-home         the PAM helper the hook copies
//! ```
//!
//! and then `update-initramfs -u -k all` (in a `chroot` unless ROOT is `/`). The hook puts the
//! helpers at `/diskless/bin/diskless-fetch` and `/diskless/bin/diskless-home`, and loop,
//! squashfs, overlay and dm-verity at `/diskless/modules` with their load order, the layout
//! `diskless.cpio` has, so the boot script works the same from either.

use crate::command;
use crate::error::{io_at, Error, Result};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The hook, compiled in so the binary and the hook always match.
pub const HOOK: &str = include_str!("../../../initramfs-tools/hooks/diskless");
/// Where the hook is installed, relative to the root.
pub const HOOK_PATH: &str = "etc/initramfs-tools/hooks/diskless";
/// Where the boot script is installed, relative to the root.
pub const SCRIPT_PATH: &str = "etc/initramfs-tools/scripts/diskless";
/// Where the fetch helper is installed, relative to the root (the hook reads it there).
pub const HELPER_PATH: &str = "usr/lib/diskless/diskless-fetch";
/// Where the PAM helper of the lab's accounts is installed, relative to the root (the hook
/// reads it there).
pub const HOME_HELPER_PATH: &str = "usr/lib/diskless/diskless-home";

/// What to install where.
#[derive(Debug, Clone)]
pub struct InstallOptions {
    /// The root tree whose initrds are regenerated: a chroot, or `/`.
    pub root: PathBuf,
    /// The static `diskless-fetch` binary.
    pub fetch_helper: PathBuf,
    /// Run update-initramfs afterwards (false: only install the files).
    pub update: bool,
}

/// What was done.
#[derive(Debug)]
pub struct Installed {
    /// The files written, absolute.
    pub files: Vec<PathBuf>,
    /// The root's initrds (`boot/initrd.img-*`) after the update.
    pub initrds: Vec<PathBuf>,
}

/// Install the hook, script and helper into `opts.root` and regenerate its initrds.
pub fn install(opts: &InstallOptions) -> Result<Installed> {
    let root = std::fs::canonicalize(&opts.root).map_err(io_at(&opts.root))?;
    let conf = root.join("etc/initramfs-tools");
    if !conf.is_dir() || !root.join("usr/sbin/update-initramfs").exists() {
        return Err(Error::Invalid(format!(
            "{} has no initramfs-tools (no {} or usr/sbin/update-initramfs): install the \
             initramfs-tools package in it first",
            root.display(),
            conf.display()
        )));
    }
    let helper = std::fs::read(&opts.fetch_helper).map_err(|e| {
        Error::Invalid(format!(
            "cannot read the fetch helper {}: {e} (build it with scripts/build, or set DISKLESS_FETCH)",
            opts.fetch_helper.display()
        ))
    })?;
    let mut files = Vec::new();
    for (rel, data) in [
        (HELPER_PATH, &helper[..]),
        (HOME_HELPER_PATH, crate::bootcpio::HOME_HELPER.as_bytes()),
        (SCRIPT_PATH, crate::bootcpio::BOOT_SCRIPT.as_bytes()),
        (HOOK_PATH, HOOK.as_bytes()),
    ] {
        let path = root.join(rel);
        write_executable(&path, data)?;
        files.push(path);
    }
    if opts.update {
        command::run_visible(&mut update_command(&root))?;
    }
    Ok(Installed {
        files,
        initrds: initrds(&root)?,
    })
}

/// `update-initramfs -u -k all`, inside `root` unless it is this system.
pub fn update_command(root: &Path) -> Command {
    let mut cmd = if root == Path::new("/") {
        Command::new("update-initramfs")
    } else {
        let mut c = Command::new("chroot");
        c.arg(root).arg("update-initramfs");
        c
    };
    cmd.args(["-u", "-k", "all"]);
    cmd
}

/// `boot/initrd.img-*` of a root, sorted.
fn initrds(root: &Path) -> Result<Vec<PathBuf>> {
    let boot = root.join("boot");
    let mut found: Vec<PathBuf> = std::fs::read_dir(&boot)
        .map_err(io_at(&boot))?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("initrd.img-"))
        .map(|e| e.path())
        .collect();
    found.sort();
    Ok(found)
}

/// Write by rename, so an update-initramfs running meanwhile sees the old file or the new.
fn write_executable(path: &Path, data: &[u8]) -> Result<()> {
    let dir = path.parent().expect("installed paths have a directory");
    std::fs::create_dir_all(dir).map_err(io_at(dir))?;
    let tmp = dir.join(format!(
        ".{}.diskless-new",
        path.file_name().unwrap_or_default().to_string_lossy()
    ));
    std::fs::write(&tmp, data).map_err(io_at(&tmp))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).map_err(io_at(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io_at(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn installs_files_without_updating() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("etc/initramfs-tools/scripts")).unwrap();
        std::fs::create_dir_all(root.path().join("usr/sbin")).unwrap();
        std::fs::create_dir_all(root.path().join("boot")).unwrap();
        std::fs::write(root.path().join("usr/sbin/update-initramfs"), "").unwrap();
        std::fs::write(root.path().join("boot/initrd.img-6.1.0-9-amd64"), "").unwrap();
        let helper = root.path().join("helper");
        std::fs::write(&helper, "static helper").unwrap();
        let done = install(&InstallOptions {
            root: root.path().into(),
            fetch_helper: helper,
            update: false,
        })
        .unwrap();
        assert_eq!(done.files.len(), 4);
        let hook = root.path().join(HOOK_PATH);
        assert_eq!(std::fs::read_to_string(&hook).unwrap(), HOOK);
        let mode = std::fs::metadata(&hook).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o755);
        assert_eq!(
            std::fs::read_to_string(root.path().join(HELPER_PATH)).unwrap(),
            "static helper"
        );
        assert_eq!(
            std::fs::read_to_string(root.path().join(SCRIPT_PATH)).unwrap(),
            crate::bootcpio::BOOT_SCRIPT
        );
        assert_eq!(
            std::fs::read_to_string(root.path().join(HOME_HELPER_PATH)).unwrap(),
            crate::bootcpio::HOME_HELPER
        );
        assert_eq!(done.initrds.len(), 1);
    }

    #[test]
    fn a_root_without_initramfs_tools_is_refused() {
        let root = tempfile::tempdir().unwrap();
        let helper = root.path().join("helper");
        std::fs::write(&helper, "x").unwrap();
        let err = install(&InstallOptions {
            root: root.path().into(),
            fetch_helper: helper,
            update: false,
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("install the initramfs-tools package"), "{err}");
    }

    #[test]
    fn update_runs_in_the_chroot_unless_root_is_this_system() {
        let argv = |root: &str| command::argv(&update_command(Path::new(root)));
        assert_eq!(argv("/"), "update-initramfs -u -k all");
        assert_eq!(
            argv("/srv/roots/lab"),
            "chroot /srv/roots/lab update-initramfs -u -k all"
        );
    }
}
