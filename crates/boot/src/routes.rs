//! Every URL the boot server serves, built and parsed here and nowhere else.
//!
//! ```text
//! GET  /                                   a line saying what this is
//! GET  /boot/{mac}.ipxe                    the client's iPXE script ({mac}: aa-bb-cc-dd-ee-ff)
//! GET  /images/{name}/{version}/{file}     an ImageFile of a stored version (HTTP and TFTP)
//! GET  /ipxe/{file}                        iPXE binaries (UEFI HTTP boot; TFTP: ipxe/{file})
//! POST /api/report/{mac}?token={token}     stage=...&detail=... from the client, with its
//!                                          boot's token (see diskless_server::tokens)
//! GET  /api/clients                        every client's ClientRecord, as JSON
//! GET  /accounts/{file}                    the lab's accounts (an AccountsFile), with [accounts]
//! GET  /shimx64.efi                        Debian's signed shim (Secure Boot chain; HTTP and TFTP)
//! GET  /grubx64.efi                        Debian's signed GRUB network image, which shim
//!                                          fetches beside itself (HTTP and TFTP)
//! GET  /grub/grub.cfg                      GRUB's dispatcher (Secure Boot chain; HTTP and TFTP)
//! GET  /grub/clients/{mac}.cfg             the client's GRUB config ({mac}: aa:bb:cc:dd:ee:ff,
//!                                          as GRUB spells $net_default_mac; HTTP and TFTP)
//! GET  /api/multicast/{name}/{version}/join    a seat joins the version's multicast session:
//!                                          its group, port, layout (text, `key=value` lines)
//! GET  /api/multicast/{name}/{version}/blocks  the sha256 of every block of root.squashfs,
//!                                          32 bytes each, end to end
//! POST /api/multicast/{name}/{version}/leave?session={hex}  a seat has its image: the
//!                                          session stops once every seat that joined left
//! ```
//!
//! [`Route::path`] builds a path, [`Route::parse`] reads one back (`parse(path()) == route`,
//! tested below), [`Route::url`] and [`Route::tftp_path`] put it in the form a client is given.
//! [`ImageFile`] names the files of a stored image version: the manifest, the script generator
//! and the HTTP allow-list all use it.

use crate::grub::{SHIM_BOOT_FILE, SHIM_SECOND_STAGE};
use crate::names::check_name;
use diskless_dhcp::{BadMac, Mac};
use std::fmt;

/// The files of a stored image version, the only ones served from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ImageFile {
    /// `root.squashfs`: the root file system the initramfs downloads.
    Squashfs,
    /// `vmlinuz`: the kernel.
    Kernel,
    /// `initrd.img`: the image's own initramfs.
    Initrd,
    /// `diskless.cpio`: our boot script and fetch helper, loaded after `initrd.img` (absent
    /// when the image's own initrd carries them: `diskless initrd install`).
    BootCpio,
}

impl ImageFile {
    /// Every image file.
    pub const ALL: [ImageFile; 4] = [
        ImageFile::Squashfs,
        ImageFile::Kernel,
        ImageFile::Initrd,
        ImageFile::BootCpio,
    ];

    /// Its file name in the store and in URLs.
    pub const fn name(self) -> &'static str {
        match self {
            ImageFile::Squashfs => "root.squashfs",
            ImageFile::Kernel => "vmlinuz",
            ImageFile::Initrd => "initrd.img",
            ImageFile::BootCpio => "diskless.cpio",
        }
    }

    /// The image file called `name`, if it is one.
    pub fn from_name(name: &str) -> Option<ImageFile> {
        ImageFile::ALL.into_iter().find(|f| f.name() == name)
    }
}

impl fmt::Display for ImageFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What the boot script reads of the lab's accounts (`[accounts]`, `crate::accounts`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AccountsFile {
    /// `passwd`: the lab's users, `x` as the password.
    Passwd,
    /// `group`: their groups.
    Group,
    /// `ssh_known_hosts`: the SSH server's host keys, pinned by the clients.
    KnownHosts,
}

impl AccountsFile {
    /// Every file.
    pub const ALL: [AccountsFile; 3] = [
        AccountsFile::Passwd,
        AccountsFile::Group,
        AccountsFile::KnownHosts,
    ];

    /// Its name in URLs (the boot script appends it to `diskless.accounts=`).
    pub const fn name(self) -> &'static str {
        match self {
            AccountsFile::Passwd => "passwd",
            AccountsFile::Group => "group",
            AccountsFile::KnownHosts => "ssh_known_hosts",
        }
    }
}

/// The directory of the accounts files in URLs.
pub const ACCOUNTS_DIR: &str = "accounts";

/// `http://{authority}/accounts`: what `diskless.accounts=` names.
pub fn accounts_url(authority: &str) -> String {
    format!("http://{authority}/{ACCOUNTS_DIR}")
}

/// One URL path the server answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `/`.
    Index,
    /// `/boot/{mac}.ipxe`: the client's iPXE script.
    BootScript(Mac),
    /// `/images/{image}/{version}/{file}`.
    ImageFile {
        /// Image name (checked by [`check_name`]).
        image: String,
        /// Version (checked by [`check_name`]; never `current`).
        version: String,
        /// Which file.
        file: ImageFile,
    },
    /// `/ipxe/{file}`: an iPXE binary (a plain file name; the server checks its allow-list).
    Ipxe(String),
    /// `/api/report/{mac}`: a stage report from the client.
    Report(Mac),
    /// `/api/clients`: every client's `ClientRecord` (the admin listener's `/api/clients`,
    /// the dashboard's `ClientView`s, is not on the boot network).
    ClientRecords,
    /// `/accounts/{file}`: the lab's accounts.
    Accounts(AccountsFile),
    /// `/shimx64.efi`: Debian's signed shim, what a Secure Boot client's firmware loads
    /// (`crate::grub`).
    Shim,
    /// `/grubx64.efi`: Debian's signed GRUB network image, which shim loads by this name from
    /// the directory it came from (`crate::grub::SHIM_SECOND_STAGE`).
    ShimSecondStage,
    /// `/grub/grub.cfg`: the config every GRUB of the Secure Boot chain reads first
    /// (`crate::grub::dispatcher`), at `$prefix/grub.cfg`.
    GrubDispatcher,
    /// `/grub/clients/{mac}.cfg`: a client's own GRUB config, named by `$net_default_mac`
    /// (the colon form, [`Mac`]'s `Display`).
    GrubConfig(Mac),
    /// `/api/multicast/{image}/{version}/join`: a seat joins the multicast session.
    MulticastJoin {
        /// Image name (checked by [`check_name`]).
        image: String,
        /// Version (checked by [`check_name`]).
        version: String,
    },
    /// `/api/multicast/{image}/{version}/blocks`: the block digests of its root.squashfs.
    MulticastBlocks {
        /// Image name (checked by [`check_name`]).
        image: String,
        /// Version (checked by [`check_name`]).
        version: String,
    },
    /// `/api/multicast/{image}/{version}/leave`: a seat is done with the session.
    MulticastLeave {
        /// Image name (checked by [`check_name`]).
        image: String,
        /// Version (checked by [`check_name`]).
        version: String,
    },
}

/// The last segment of [`Route::MulticastLeave`].
pub const MULTICAST_LEAVE: &str = "leave";
/// The last segment of [`Route::MulticastJoin`].
pub const MULTICAST_JOIN: &str = "join";
/// The last segment of [`Route::MulticastBlocks`].
pub const MULTICAST_BLOCKS: &str = "blocks";

/// A path that is none of the [`Route`]s, with what was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RouteError {
    /// No route has this shape.
    #[error("{0}: no such page")]
    Unknown(String),
    /// `/boot/...` that is not `/boot/{mac}.ipxe`.
    #[error("{0}: expected /boot/aa-bb-cc-dd-ee-ff.ipxe")]
    BootScript(String),
    /// `/images/...` naming something that is not an image file.
    #[error("{0}: no such image file")]
    ImageFile(String),
    /// `/ipxe/...` with something that is not a plain file name.
    #[error("{0}: no such iPXE file")]
    Ipxe(String),
    /// `/api/report/{mac}` with a bad MAC.
    #[error(transparent)]
    Mac(#[from] BadMac),
}

/// The query parameter of a report URL ([`Route::report_url`]) that carries the boot's token.
pub const TOKEN_PARAM: &str = "token";

/// The directory of the iPXE binaries in the TFTP root (the store) and in URLs.
pub const IPXE_DIR: &str = "ipxe";

/// GRUB's `$prefix` on the network (Debian's signed `grubnetx64.efi` has `/grub`).
pub const GRUB_DIR: &str = "grub";

/// The path of a client's GRUB config ([`Route::GrubConfig`]) for `mac`, given as a value or
/// as a GRUB variable the dispatcher leaves to GRUB (`${net_default_mac}`).
pub fn grub_config_path(mac: impl fmt::Display) -> String {
    format!("/{GRUB_DIR}/clients/{mac}.cfg")
}

impl Route {
    /// The URL path, starting with `/`.
    pub fn path(&self) -> String {
        match self {
            Route::Index => "/".into(),
            Route::BootScript(mac) => format!("/boot/{}.ipxe", mac.hyphenated()),
            Route::ImageFile {
                image,
                version,
                file,
            } => format!("/images/{image}/{version}/{file}"),
            Route::Ipxe(file) => format!("/{IPXE_DIR}/{file}"),
            Route::Report(mac) => format!("/api/report/{}", mac.hyphenated()),
            Route::ClientRecords => "/api/clients".into(),
            Route::Accounts(file) => format!("/{ACCOUNTS_DIR}/{}", file.name()),
            Route::Shim => format!("/{SHIM_BOOT_FILE}"),
            Route::ShimSecondStage => format!("/{SHIM_SECOND_STAGE}"),
            Route::GrubDispatcher => format!("/{GRUB_DIR}/grub.cfg"),
            Route::GrubConfig(mac) => grub_config_path(mac),
            Route::MulticastJoin { image, version } => {
                format!("/api/multicast/{image}/{version}/{MULTICAST_JOIN}")
            }
            Route::MulticastBlocks { image, version } => {
                format!("/api/multicast/{image}/{version}/{MULTICAST_BLOCKS}")
            }
            Route::MulticastLeave { image, version } => {
                format!("/api/multicast/{image}/{version}/{MULTICAST_LEAVE}")
            }
        }
    }

    /// `http://{authority}{path}`; `authority` is `host` or `host:port`.
    pub fn url(&self, authority: &str) -> String {
        format!("http://{authority}{}", self.path())
    }

    /// The path under `base`, the URL of a store layout served elsewhere (`diskless image
    /// export DIR` published at `base`): `http://cache-room1/diskless` +
    /// `/images/{image}/{version}/{file}`.
    pub fn url_at(&self, base: &str) -> String {
        format!("{}{}", base.trim_end_matches('/'), self.path())
    }

    /// The URL a client reports its stages to, `http://{authority}/api/report/{mac}?token=..`:
    /// the route with the boot's `token` (lowercase hex and `.`: nothing to escape).
    pub fn report_url(mac: Mac, authority: &str, token: &str) -> String {
        format!(
            "{}?{TOKEN_PARAM}={token}",
            Route::Report(mac).url(authority)
        )
    }

    /// `tftp://{authority}{path}`: the same file from the TFTP server (image files only).
    pub fn tftp_url(&self, authority: &str) -> String {
        format!("tftp://{authority}{}", self.path())
    }

    /// The path as a TFTP file name (relative to the TFTP root: no leading `/`), which is
    /// how PXE firmware asks for its boot file.
    pub fn tftp_path(&self) -> String {
        self.path().trim_start_matches('/').to_string()
    }

    /// The route `path` names (a raw request path: percent escapes are not decoded, so an
    /// encoded `/` or `..` stays inside one segment and fails the name check).
    pub fn parse(path: &str) -> Result<Route, RouteError> {
        let unknown = || RouteError::Unknown(path.to_string());
        let parts: Vec<&str> = path
            .strip_prefix('/')
            .ok_or_else(unknown)?
            .split('/')
            .collect();
        match parts.as_slice() {
            [""] => Ok(Route::Index),
            [SHIM_BOOT_FILE] => Ok(Route::Shim),
            // Over UEFI HTTP Boot shim asks for `//grubx64.efi`: httpboot.c keeps its own URL
            // up to the last '/' and appends its loader's name, `\\grubx64.efi` with the
            // backslash made a slash (seen in the server log; see crate::grub).
            [SHIM_SECOND_STAGE] | ["", SHIM_SECOND_STAGE] => Ok(Route::ShimSecondStage),
            ["boot", file] => file
                .strip_suffix(".ipxe")
                .and_then(|m| m.parse().ok())
                .map(Route::BootScript)
                .ok_or_else(|| RouteError::BootScript(file.to_string())),
            ["images", image, version, file] => {
                let bad = || RouteError::ImageFile(path.to_string());
                check_name("image name", image).map_err(|_| bad())?;
                check_name("version", version).map_err(|_| bad())?;
                Ok(Route::ImageFile {
                    image: image.to_string(),
                    version: version.to_string(),
                    file: ImageFile::from_name(file).ok_or_else(bad)?,
                })
            }
            [dir, file] if *dir == IPXE_DIR => {
                if file.is_empty() || file.starts_with('.') || file.contains(['\\', '%']) {
                    return Err(RouteError::Ipxe(file.to_string()));
                }
                Ok(Route::Ipxe(file.to_string()))
            }
            ["api", "report", mac] => Ok(Route::Report(mac.parse()?)),
            ["api", "clients"] => Ok(Route::ClientRecords),
            ["api", "multicast", image, version, what] => {
                check_name("image name", image).map_err(|_| unknown())?;
                check_name("version", version).map_err(|_| unknown())?;
                let (image, version) = (image.to_string(), version.to_string());
                match *what {
                    MULTICAST_JOIN => Ok(Route::MulticastJoin { image, version }),
                    MULTICAST_BLOCKS => Ok(Route::MulticastBlocks { image, version }),
                    MULTICAST_LEAVE => Ok(Route::MulticastLeave { image, version }),
                    _ => Err(unknown()),
                }
            }
            [dir, file] if *dir == ACCOUNTS_DIR => AccountsFile::ALL
                .into_iter()
                .find(|f| f.name() == *file)
                .map(Route::Accounts)
                .ok_or_else(unknown),
            [dir, "grub.cfg"] if *dir == GRUB_DIR => Ok(Route::GrubDispatcher),
            [dir, "clients", file] if *dir == GRUB_DIR => file
                .strip_suffix(".cfg")
                .and_then(|m| m.parse().ok())
                .map(Route::GrubConfig)
                .ok_or_else(unknown),
            _ => Err(unknown()),
        }
    }
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.path())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mac() -> Mac {
        "52:54:00:12:34:56".parse().unwrap()
    }

    #[test]
    fn every_route_parses_back_from_its_path() {
        let routes = [
            Route::Index,
            Route::BootScript(mac()),
            Route::ImageFile {
                image: "lab".into(),
                version: "20260101-000000-abcdef01".into(),
                file: ImageFile::Squashfs,
            },
            Route::Ipxe("ipxe.efi".into()),
            Route::Report(mac()),
            Route::ClientRecords,
            Route::Shim,
            Route::ShimSecondStage,
            Route::GrubDispatcher,
            Route::GrubConfig(mac()),
            Route::Accounts(AccountsFile::Passwd),
            Route::Accounts(AccountsFile::Group),
            Route::Accounts(AccountsFile::KnownHosts),
            Route::MulticastJoin {
                image: "lab".into(),
                version: "v1".into(),
            },
            Route::MulticastBlocks {
                image: "lab".into(),
                version: "v1".into(),
            },
            Route::MulticastLeave {
                image: "lab".into(),
                version: "v1".into(),
            },
        ];
        for route in routes {
            assert_eq!(Route::parse(&route.path()), Ok(route.clone()), "{route}");
        }
        assert_eq!(
            Route::BootScript(mac()).url("10.0.0.1:8080"),
            "http://10.0.0.1:8080/boot/52-54-00-12-34-56.ipxe"
        );
        let squashfs = Route::ImageFile {
            image: "lab".into(),
            version: "v1".into(),
            file: ImageFile::Squashfs,
        };
        for base in ["http://cache:8080/diskless", "http://cache:8080/diskless/"] {
            assert_eq!(
                squashfs.url_at(base),
                "http://cache:8080/diskless/images/lab/v1/root.squashfs"
            );
        }
        assert_eq!(
            Route::Accounts(AccountsFile::Group).url("10.0.0.1"),
            format!("{}/group", accounts_url("10.0.0.1"))
        );
        assert_eq!(
            Route::Ipxe("undionly.kpxe".into()).tftp_path(),
            "ipxe/undionly.kpxe"
        );
        assert_eq!(Route::GrubDispatcher.path(), "/grub/grub.cfg");
        assert_eq!(
            Route::Shim.url("10.0.0.1"),
            "http://10.0.0.1/shimx64.efi",
            "at the root, where shim looks for grubx64.efi"
        );
        assert_eq!(Route::ShimSecondStage.tftp_path(), "grubx64.efi");
        assert_eq!(
            Route::parse("//grubx64.efi"),
            Ok(Route::ShimSecondStage),
            "as shim asks for it over HTTP"
        );
        assert_eq!(
            Route::GrubConfig(mac()).path(),
            "/grub/clients/52:54:00:12:34:56.cfg",
            "as GRUB spells $net_default_mac"
        );
    }

    #[test]
    fn paths_outside_the_routes_are_refused() {
        for bad in [
            "/images/lab/current/root.squashfs",
            "/images/lab/v1/manifest.json",
            "/images/lab/..%2F..%2Fsecret/vmlinuz",
            "/images/../../secret",
            "/images/lab/.staging-1/root.squashfs",
            "/ipxe/..%2Fsecret",
            "/ipxe/.hidden",
            "/boot/not-a-mac.ipxe",
            "/boot/52-54-00-12-34-56.cfg",
            "/api/report/zz",
            "/api/clients/x",
            "/accounts/shadow",
            "/accounts/",
            "/accounts/passwd/x",
            "/grub/clients/nobody.cfg",
            "/grub/clients/../x.cfg",
            "/grub/clients/52:54:00:12:34:56",
            "/grub/x86_64-efi/http.mod",
            "/grub/grub.cfg/x",
            "/boot/shimx64.efi",
            "/shimx64.efi/x",
            "/api/multicast/lab/v1/stop",
            "/api/multicast/lab/current/join",
            "/api/multicast/../v1/join",
            "",
            "boot",
        ] {
            assert!(Route::parse(bad).is_err(), "{bad} parsed");
        }
        assert!(matches!(
            Route::parse("/api/report/zz"),
            Err(RouteError::Mac(_))
        ));
    }

    #[test]
    fn image_files_by_name() {
        for file in ImageFile::ALL {
            assert_eq!(ImageFile::from_name(file.name()), Some(file));
        }
        assert_eq!(ImageFile::from_name("manifest.json"), None);
    }
}
