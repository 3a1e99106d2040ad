//! `diskless image bootstrap`: a Debian workstation root made by debootstrap.

use crate::command::{self, CommandError};
use crate::error::{io_at, Error, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The Debian releases diskless makes images of and is tested on, oldest first: the one place
/// they are named (`image bootstrap`'s default, the tests' trees and images).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Release {
    /// Debian 12, oldstable: supported, tested in full.
    Bookworm,
    /// Debian 13, the current stable: `image bootstrap`'s default.
    Trixie,
}

impl Release {
    pub const ALL: [Release; 2] = [Release::Bookworm, Release::Trixie];
    /// What `image bootstrap` and `demo` make without `--suite`: Debian's current stable.
    pub const DEFAULT: Release = Release::Trixie;

    /// The suite's codename, as debootstrap and apt name it.
    pub const fn suite(self) -> &'static str {
        match self {
            Release::Bookworm => "bookworm",
            Release::Trixie => "trixie",
        }
    }

    /// Debian's version number.
    pub const fn version(self) -> u32 {
        match self {
            Release::Bookworm => 12,
            Release::Trixie => 13,
        }
    }

    /// The release a suite name stands for, if diskless is tested on it.
    pub fn from_suite(suite: &str) -> Option<Release> {
        Release::ALL.into_iter().find(|r| r.suite() == suite)
    }
}

/// [`Release::DEFAULT`]'s suite, for command-line defaults.
pub const DEFAULT_SUITE: &str = Release::DEFAULT.suite();

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

/// A desktop for `--desktop`: its Debian task, its display manager, and the few packages a
/// lab seat needs that the task only recommends.
///
/// Why the task and not a longer or shorter list: debootstrap installs Depends only, never
/// Recommends, so `task-xfce-desktop` brings Xorg with every video and input driver
/// (task-desktop: xserver-xorg-video-all, xserver-xorg-input-all, Mesa), the desktop's core and
/// its display manager with a greeter, and leaves out what the task only recommends
/// (LibreOffice, media players, printing, NetworkManager: about as much again). NetworkManager
/// stays out on purpose: the client's network is configured in the initramfs before the image
/// is fetched, and a manager that takes the interface over would cut the client from its
/// server. Added here: a terminal (the task only recommends one), the session bus per user
/// (dbus-user-session, recommended by the sessions), the icon themes the greeters draw with,
/// and the free firmware.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Desktop {
    Xfce,
    Mate,
    Gnome,
    Kde,
}

impl Desktop {
    pub const ALL: [Desktop; 4] = [Desktop::Xfce, Desktop::Mate, Desktop::Gnome, Desktop::Kde];

    /// The name `--desktop` takes.
    pub fn as_str(self) -> &'static str {
        match self {
            Desktop::Xfce => "xfce",
            Desktop::Mate => "mate",
            Desktop::Gnome => "gnome",
            Desktop::Kde => "kde",
        }
    }

    /// The Debian task package (tasksel's).
    pub fn task(self) -> &'static str {
        match self {
            Desktop::Xfce => "task-xfce-desktop",
            Desktop::Mate => "task-mate-desktop",
            Desktop::Gnome => "task-gnome-desktop",
            Desktop::Kde => "task-kde-desktop",
        }
    }

    /// The display manager: its package, which is also the name of its systemd unit.
    pub fn display_manager(self) -> &'static str {
        match self {
            Desktop::Xfce | Desktop::Mate => "lightdm",
            Desktop::Gnome => "gdm3",
            Desktop::Kde => "sddm",
        }
    }

    /// The greeter's process name as `pgrep -x` sees it (the kernel keeps 15 characters).
    pub fn greeter_process(self) -> &'static str {
        match self {
            Desktop::Xfce | Desktop::Mate => "lightdm-gtk-gre",
            Desktop::Gnome => "gnome-shell",
            Desktop::Kde => "sddm-greeter",
        }
    }

    /// Everything this desktop adds to [`DEFAULT_PACKAGES`].
    pub fn packages(self) -> Vec<&'static str> {
        let own: &[&str] = match self {
            Desktop::Xfce => &["lightdm-gtk-greeter", "xfce4-terminal"],
            Desktop::Mate => &["lightdm-gtk-greeter", "mate-terminal"],
            Desktop::Gnome => &["gnome-terminal"],
            Desktop::Kde => &["sddm-theme-debian-breeze", "konsole"],
        };
        let mut all = vec![self.task(), self.display_manager()];
        all.extend_from_slice(own);
        all.extend_from_slice(DESKTOP_PACKAGES);
        all
    }
}

impl std::fmt::Display for Desktop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Desktop {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Desktop, String> {
        Desktop::ALL
            .into_iter()
            .find(|d| d.as_str() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Desktop::ALL.iter().map(|d| d.as_str()).collect();
                format!(
                    "unknown desktop {s:?} (expected one of {})",
                    names.join(", ")
                )
            })
    }
}

/// What every desktop gets: see [`Desktop`].
pub const DESKTOP_PACKAGES: &[&str] = &[
    "dbus-user-session",
    "adwaita-icon-theme",
    "tango-icon-theme",
    "firmware-linux-free",
];

/// Firmware a lab's PCs need from Debian's non-free-firmware component (graphics, Wi-Fi and
/// Ethernet chips, CPU microcode); only installed when the host's apt sources name that
/// component for the mirror (a site that left it out chose to).
pub const NON_FREE_FIRMWARE_PACKAGES: &[&str] = &[
    "firmware-misc-nonfree",
    "firmware-amd-graphics",
    "firmware-realtek",
    "firmware-iwlwifi",
    "intel-microcode",
    "amd64-microcode",
];

/// The apt component [`NON_FREE_FIRMWARE_PACKAGES`] come from.
pub const NON_FREE_FIRMWARE: &str = "non-free-firmware";

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
    /// A desktop, its display manager started at boot (graphical.target).
    pub desktop: Option<Desktop>,
    /// With a desktop: install [`NON_FREE_FIRMWARE_PACKAGES`] too (the mirror must offer the
    /// component: see [`host_offers_non_free_firmware`]).
    pub non_free_firmware: bool,
}

impl BootstrapConfig {
    pub fn packages(&self) -> Vec<String> {
        let mut all: Vec<String> = DEFAULT_PACKAGES.iter().map(|p| p.to_string()).collect();
        let mut desktop: Vec<&str> = Vec::new();
        if let Some(d) = self.desktop {
            desktop = d.packages();
            if self.non_free_firmware {
                desktop.extend_from_slice(NON_FREE_FIRMWARE_PACKAGES);
            }
        }
        let desktop = desktop.into_iter().map(str::to_string);
        for p in desktop.chain(self.extra_packages.iter().cloned()) {
            if !all.contains(&p) {
                all.push(p);
            }
        }
        all
    }

    /// The marker's content: a tree made with other settings is not reused.
    fn marker_text(&self) -> String {
        let mut text = format!(
            "suite={}\npackages={}\n",
            self.suite,
            self.packages().join(",")
        );
        if let Some(d) = self.desktop {
            text.push_str(&format!("desktop={d}\ncomponents={}\n", self.components()));
        }
        text
    }

    /// debootstrap's `--components`.
    pub fn components(&self) -> String {
        if self.desktop.is_some() && self.non_free_firmware {
            format!("main,{NON_FREE_FIRMWARE}")
        } else {
            "main".into()
        }
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

/// Whether this host's apt sources name the non-free-firmware component for `mirror`.
pub fn host_offers_non_free_firmware(mirror: &str) -> bool {
    crate::apt_sources::host_has_component(Path::new("/"), mirror, NON_FREE_FIRMWARE)
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
    if cfg.components() != "main" {
        cmd.arg(format!("--components={}", cfg.components()));
    }
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
    if let Some(desktop) = cfg.desktop {
        start_display_manager(target, desktop)?;
    }
    let marker = target.join(MARKER);
    std::fs::write(&marker, cfg.marker_text()).map_err(io_at(&marker))?;
    Ok(Outcome::Created)
}

/// Boot `target` to `desktop`'s display manager: graphical.target as the default target and
/// the display manager as display-manager.service, as its maintainer script makes it on an
/// installed system (done here again, so the tree does not depend on what a postinst could
/// do inside debootstrap's chroot).
pub fn start_display_manager(target: &Path, desktop: Desktop) -> Result<()> {
    let units = target.join("etc/systemd/system");
    std::fs::create_dir_all(&units).map_err(io_at(&units))?;
    let dm = desktop.display_manager();
    let links = [
        (
            "default.target",
            "/lib/systemd/system/graphical.target".to_string(),
        ),
        (
            "display-manager.service",
            format!("/lib/systemd/system/{dm}.service"),
        ),
    ];
    for (name, to) in links {
        let link = units.join(name);
        if std::fs::symlink_metadata(&link).is_ok() {
            std::fs::remove_file(&link).map_err(io_at(&link))?;
        }
        std::os::unix::fs::symlink(&to, &link).map_err(io_at(&link))?;
    }
    let default_dm = target.join("etc/X11/default-display-manager");
    if let Some(dir) = default_dm.parent() {
        std::fs::create_dir_all(dir).map_err(io_at(dir))?;
    }
    std::fs::write(&default_dm, format!("/usr/sbin/{dm}\n")).map_err(io_at(&default_dm))?;
    Ok(())
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
            desktop: None,
            non_free_firmware: false,
        }
    }

    #[test]
    fn the_default_is_the_current_stable_and_bookworm_stays() {
        assert_eq!(DEFAULT_SUITE, "trixie");
        assert_eq!(Release::DEFAULT.version(), 13);
        assert_eq!(Release::from_suite("bookworm"), Some(Release::Bookworm));
        assert_eq!(Release::from_suite("trixie"), Some(Release::Trixie));
        assert_eq!(Release::from_suite("buster"), None);
        // Oldest first, the default the newest.
        assert_eq!(Release::ALL.last(), Some(&Release::DEFAULT));
    }

    #[test]
    fn a_console_tree_keeps_its_marker_and_components() {
        // The caches of trees bootstrapped before desktops existed stay valid.
        let c = cfg(PathBuf::from("/x"));
        assert_eq!(
            c.marker_text(),
            format!("suite=bookworm\npackages={}\n", c.packages().join(","))
        );
        assert_eq!(c.components(), "main");
        let with_firmware = BootstrapConfig {
            non_free_firmware: true,
            ..c.clone()
        };
        assert_eq!(
            with_firmware.packages(),
            c.packages(),
            "firmware is for desktops"
        );
    }

    #[test]
    fn each_desktop_has_its_task_and_display_manager() {
        let expected = [
            (Desktop::Xfce, "task-xfce-desktop", "lightdm"),
            (Desktop::Mate, "task-mate-desktop", "lightdm"),
            (Desktop::Gnome, "task-gnome-desktop", "gdm3"),
            (Desktop::Kde, "task-kde-desktop", "sddm"),
        ];
        for (desktop, task, dm) in expected {
            let c = BootstrapConfig {
                desktop: Some(desktop),
                ..cfg(PathBuf::from("/x"))
            };
            let p = c.packages();
            for wanted in [
                task,
                dm,
                "firmware-linux-free",
                "linux-image-amd64",
                "vim-tiny",
            ] {
                assert!(
                    p.iter().any(|x| x == wanted),
                    "{desktop}: {wanted} missing: {p:?}"
                );
            }
            assert!(!p.iter().any(|x| x == "network-manager"), "{p:?}");
            assert!(!p.iter().any(|x| x.starts_with("firmware-misc")), "{p:?}");
            let mut unique = p.clone();
            unique.sort();
            unique.dedup();
            assert_eq!(unique.len(), p.len(), "{p:?}");
            assert!(c.marker_text().contains(&format!("desktop={desktop}\n")));
            assert_eq!(desktop.as_str().parse::<Desktop>(), Ok(desktop));
        }
        let err = "lxde".parse::<Desktop>().unwrap_err();
        assert!(err.contains("xfce, mate, gnome, kde"), "{err}");
    }

    #[test]
    fn non_free_firmware_only_with_the_component() {
        let c = BootstrapConfig {
            desktop: Some(Desktop::Xfce),
            non_free_firmware: true,
            ..cfg(PathBuf::from("/x"))
        };
        assert_eq!(c.components(), "main,non-free-firmware");
        let p = c.packages();
        for fw in NON_FREE_FIRMWARE_PACKAGES {
            assert!(p.iter().any(|x| x == fw), "{fw} missing: {p:?}");
        }
        let without = BootstrapConfig {
            non_free_firmware: false,
            ..c.clone()
        };
        assert_eq!(without.components(), "main");
        assert!(!without.packages().iter().any(|x| x == "firmware-realtek"));
        assert_ne!(c.marker_text(), without.marker_text());
    }

    #[test]
    fn display_manager_and_graphical_target_are_enabled() {
        let dir = tempfile::tempdir().unwrap();
        let units = dir.path().join("etc/systemd/system");
        std::fs::create_dir_all(&units).unwrap();
        // A stale link (another display manager) is replaced.
        std::os::unix::fs::symlink(
            "/lib/systemd/system/gdm3.service",
            units.join("display-manager.service"),
        )
        .unwrap();
        start_display_manager(dir.path(), Desktop::Xfce).unwrap();
        assert_eq!(
            std::fs::read_link(units.join("default.target")).unwrap(),
            Path::new("/lib/systemd/system/graphical.target")
        );
        assert_eq!(
            std::fs::read_link(units.join("display-manager.service")).unwrap(),
            Path::new("/lib/systemd/system/lightdm.service")
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join("etc/X11/default-display-manager")).unwrap(),
            "/usr/sbin/lightdm\n"
        );
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
