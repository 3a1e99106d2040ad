//! `diskless image bootstrap`: a Debian workstation root made by debootstrap.

use crate::command::{self, CommandError};
use crate::error::{io_at, Error, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// What a workstation needs on top of minbase to boot from diskless: a kernel and its stock
/// initrd (initramfs-tools, with busybox for the boot script's tools), systemd as init, udev,
/// kmod, and iproute2; openssh-server, since a lab's machines are run from afar (each
/// client makes its own host keys at boot: the image ships none); and sshfs, with which a
/// login of one of the lab's accounts mounts the user's home from the server (`[accounts]`,
/// docs/ARCHITECTURE.md; openssh-client and fuse3 come with it, about 1 MB).
pub const DEFAULT_PACKAGES: &[&str] = &[
    "linux-image-amd64",
    "initramfs-tools",
    "busybox",
    "zstd",
    "systemd-sysv",
    "udev",
    "kmod",
    "iproute2",
    "openssh-server",
    "sshfs",
];

/// Written into the tree when debootstrap finished, so a rerun knows the tree is whole.
pub const MARKER: &str = ".diskless-bootstrap";

#[derive(Debug, Clone)]
pub struct BootstrapConfig {
    pub target: PathBuf,
    pub suite: String,
    /// None: the host's own mirror, from its apt sources.
    pub mirror: Option<String>,
    /// Where debootstrap keeps downloaded .debs between runs.
    pub cache_dir: Option<PathBuf>,
    pub extra_packages: Vec<String>,
}

impl BootstrapConfig {
    pub fn packages(&self) -> Vec<String> {
        let mut all: Vec<String> = DEFAULT_PACKAGES.iter().map(|p| p.to_string()).collect();
        for p in &self.extra_packages {
            if !all.contains(p) {
                all.push(p.clone());
            }
        }
        all
    }

    /// The marker's content: a tree made with other settings is not reused.
    fn marker_text(&self) -> String {
        format!(
            "suite={}\npackages={}\n",
            self.suite,
            self.packages().join(",")
        )
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Created,
    AlreadyThere,
}

/// Is `target` a finished bootstrap made with these settings?
pub fn is_complete(cfg: &BootstrapConfig) -> bool {
    std::fs::read_to_string(cfg.target.join(MARKER)).is_ok_and(|t| t == cfg.marker_text())
}

pub fn resolve_mirror(cfg: &BootstrapConfig) -> Result<String> {
    if let Some(m) = &cfg.mirror {
        return Ok(m.clone());
    }
    crate::apt_sources::host_mirror(Path::new("/")).ok_or_else(|| {
        Error::Invalid(
            "no Debian mirror found in /etc/apt/sources.list or /etc/apt/sources.list.d: \
             pass --mirror URL"
                .into(),
        )
    })
}

pub fn bootstrap(cfg: &BootstrapConfig) -> Result<Outcome> {
    if is_complete(cfg) {
        return Ok(Outcome::AlreadyThere);
    }
    let target = &cfg.target;
    if target.exists() {
        let has_marker = target.join(MARKER).exists();
        let empty = std::fs::read_dir(target)
            .map_err(io_at(target))?
            .next()
            .is_none();
        // A tree left by an interrupted run of ours is redone; anything else is not ours to
        // delete.
        let interrupted = target.join("debootstrap").is_dir();
        if !empty && !interrupted && !has_marker {
            return Err(Error::Invalid(format!(
                "{} exists and is not a bootstrap made by diskless: choose an empty directory",
                target.display()
            )));
        }
        if !empty {
            std::fs::remove_dir_all(target).map_err(io_at(target))?;
        }
    }
    let mirror = resolve_mirror(cfg)?;
    let mut cmd = Command::new("debootstrap");
    cmd.arg("--variant=minbase")
        .arg(format!("--include={}", cfg.packages().join(",")));
    if let Some(cache) = &cfg.cache_dir {
        std::fs::create_dir_all(cache).map_err(io_at(cache))?;
        let cache = std::fs::canonicalize(cache).map_err(io_at(cache))?;
        cmd.arg(format!("--cache-dir={}", cache.display()));
    }
    cmd.arg(&cfg.suite).arg(target).arg(&mirror);
    command::run_visible(&mut cmd).map_err(|e: CommandError| Error::Command(e))?;
    // The .debs live in the cache dir; nothing from apt's own cache belongs in an image.
    let _ = command::output(
        Command::new("chroot")
            .arg(target)
            .args(["apt-get", "clean"]),
    );
    let marker = target.join(MARKER);
    std::fs::write(&marker, cfg.marker_text()).map_err(io_at(&marker))?;
    Ok(Outcome::Created)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(target: PathBuf) -> BootstrapConfig {
        BootstrapConfig {
            target,
            suite: "bookworm".into(),
            mirror: Some("http://mirror.invalid/debian".into()),
            cache_dir: None,
            extra_packages: vec!["vim-tiny".into(), "kmod".into()],
        }
    }

    #[test]
    fn extra_packages_are_added_once() {
        let c = cfg(PathBuf::from("/x"));
        let p = c.packages();
        assert_eq!(p.iter().filter(|p| *p == "kmod").count(), 1);
        assert!(p.contains(&"vim-tiny".to_string()));
        assert!(p.contains(&"linux-image-amd64".to_string()));
    }

    #[test]
    fn completed_tree_is_reused_only_with_same_settings() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = cfg(dir.path().to_path_buf());
        std::fs::write(dir.path().join(MARKER), c.marker_text()).unwrap();
        assert!(is_complete(&c));
        assert_eq!(bootstrap(&c).unwrap(), Outcome::AlreadyThere);
        c.suite = "trixie".into();
        assert!(!is_complete(&c));
    }

    #[test]
    fn refuses_a_foreign_non_empty_directory() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("precious"), "data").unwrap();
        let err = bootstrap(&cfg(dir.path().to_path_buf())).unwrap_err();
        assert!(
            err.to_string().contains("not a bootstrap made by diskless"),
            "{err}"
        );
        assert!(dir.path().join("precious").exists());
    }
}
