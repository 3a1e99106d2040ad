//! The image store: every build is a new version, and clients get the `current` one.
//!
//! ```text
//! STORE/images/NAME/VERSION/{root.squashfs, vmlinuz, initrd.img, diskless.cpio, manifest.json}
//! STORE/images/NAME/current -> VERSION
//! STORE/images/NAME/.staging-*/     a build in progress; never served
//! ```
//!
//! A version directory appears by one rename once all its files are written and verified, and
//! `current` is switched by renaming a new symlink over the old one, so a reader sees the old
//! version or the new one, never a mix. Clients get URLs that name the version, so a client in
//! the middle of a boot keeps fetching the files of the version it started with.

use crate::error::{io_at, Error, Result};
use crate::manifest::{Manifest, MANIFEST};
use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
    /// What [`Store::kernel_signed`] found, by image name and version, shared by the clones.
    signed: SignatureCache,
}

/// Whether each version's kernel is signed, read once per version: a GRUB config request
/// (every Secure Boot boot) and the admin pages' image list ask it, and the answer took a
/// read of the whole kernel (~8 MiB) each time (issue 22). A version's files never change
/// once published (a rebuild or `image refresh` publishes a new version), so the first
/// answer stays true. Only answers from a kernel that was read are kept: a read that failed
/// (a descriptor shortage, say) is tried again next time.
#[derive(Debug, Clone, Default)]
struct SignatureCache(Arc<Mutex<HashMap<VersionKey, Signed>>>);

/// An image name and version.
type VersionKey = (String, String);
/// [`Store::kernel_signed`]'s answer.
type Signed = std::result::Result<bool, String>;

impl SignatureCache {
    /// The answer for `name`/`version`, from `check` the first time (`check`'s outer `Err`:
    /// it could not read the kernel, and the answer is not kept).
    fn get(
        &self,
        name: &str,
        version: &str,
        check: impl FnOnce() -> std::result::Result<Signed, String>,
    ) -> Signed {
        let key = (name.to_string(), version.to_string());
        if let Some(known) = self.0.lock().expect("signature cache").get(&key) {
            return known.clone();
        }
        // Not under the lock: another version's answer need not wait for this read.
        let answer = check()?;
        self.0
            .lock()
            .expect("signature cache")
            .insert(key, answer.clone());
        answer
    }
}

/// A version being built; dropped without `Store::publish`, it is removed.
#[derive(Debug)]
pub struct Staging {
    pub dir: PathBuf,
    published: bool,
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.published {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(io_at(path))
}

/// Image names and versions become path components and URL segments: keep them plain.
pub fn validate_name(kind: &str, name: &str) -> Result<()> {
    diskless_boot::names::check_name(kind, name).map_err(Error::BadName)
}

impl Store {
    pub fn open(root: impl Into<PathBuf>) -> Result<Store> {
        let root = root.into();
        let images = root.join("images");
        std::fs::create_dir_all(&images).map_err(io_at(&images))?;
        Ok(Store {
            root,
            signed: SignatureCache::default(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn image_dir(&self, name: &str) -> PathBuf {
        self.root.join("images").join(name)
    }

    pub fn version_dir(&self, name: &str, version: &str) -> PathBuf {
        self.image_dir(name).join(version)
    }

    /// The names of all images that have a current version.
    pub fn images(&self) -> Result<Vec<String>> {
        let dir = self.root.join("images");
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .map_err(io_at(&dir))?
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| !n.starts_with('.') && self.image_dir(n).join("current").exists())
            .collect();
        names.sort();
        Ok(names)
    }

    pub fn begin(&self, name: &str) -> Result<Staging> {
        validate_name("image name", name)?;
        let image = self.image_dir(name);
        std::fs::create_dir_all(&image).map_err(io_at(&image))?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let dir = image.join(format!(".staging-{}-{nanos}", std::process::id()));
        std::fs::create_dir(&dir).map_err(io_at(&dir))?;
        Ok(Staging {
            dir,
            published: false,
        })
    }

    /// Verify the staged files against the manifest, move them into place as a new version
    /// and make it current.
    pub fn publish(&self, mut staging: Staging, manifest: &Manifest) -> Result<PathBuf> {
        validate_name("version", &manifest.version)?;
        manifest.verify(&staging.dir)?;
        manifest.save(&staging.dir.join(MANIFEST))?;
        let target = self.version_dir(&manifest.name, &manifest.version);
        if target.exists() {
            return Err(Error::VersionExists(target));
        }
        // The server reads the store as its own user (`diskless`), whatever umask root built
        // with: what it serves is public anyway (any host on the boot network fetches it).
        for entry in std::fs::read_dir(&staging.dir).map_err(io_at(&staging.dir))? {
            let path = entry.map_err(io_at(&staging.dir))?.path();
            set_mode(&path, 0o644)?;
        }
        set_mode(&staging.dir, 0o755)?;
        for dir in [
            self.root.clone(),
            self.root.join("images"),
            self.image_dir(&manifest.name),
        ] {
            let mode = std::fs::metadata(&dir)
                .map_err(io_at(&dir))?
                .permissions()
                .mode();
            if mode & 0o055 != 0o055 {
                set_mode(&dir, (mode | 0o055) & 0o7777)?;
            }
        }
        std::fs::rename(&staging.dir, &target).map_err(io_at(&target))?;
        staging.published = true;
        self.set_current(&manifest.name, &manifest.version)?;
        Ok(target)
    }

    /// Publish `version` of image `name` made of `files` (name, content), as a build would
    /// (staged, hashed, verified, made current), with placeholder build facts: the store of a
    /// test or of the fuzzer, without a squashfs to build.
    pub fn publish_files(
        &self,
        name: &str,
        version: &str,
        files: &[(&str, &[u8])],
    ) -> Result<Manifest> {
        let staging = self.begin(name)?;
        let mut hashes = std::collections::BTreeMap::new();
        for (file, content) in files {
            let path = staging.dir.join(file);
            std::fs::write(&path, content).map_err(io_at(&path))?;
            hashes.insert(file.to_string(), crate::manifest::hash_file(&path)?);
        }
        let manifest = Manifest {
            name: name.into(),
            version: version.into(),
            created: "2026-01-01T00:00:00Z".into(),
            kernel_version: "6.1.0-9-amd64".into(),
            compression: "zstd".into(),
            source: "/".into(),
            build_seconds: 1.0,
            files: hashes,
            changes: vec![],
            verity: None,
        };
        self.publish(staging, &manifest)?;
        Ok(manifest)
    }

    /// Point `current` at `version`, atomically.
    pub fn set_current(&self, name: &str, version: &str) -> Result<()> {
        validate_name("image name", name)?;
        validate_name("version", version)?;
        let dir = self.version_dir(name, version);
        if !dir.join(MANIFEST).is_file() {
            return Err(Error::NoSuchVersion {
                name: name.to_string(),
                version: version.to_string(),
            });
        }
        let image = self.image_dir(name);
        let tmp = image.join(format!(".current-{}", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(version, &tmp).map_err(io_at(&tmp))?;
        let current = image.join("current");
        std::fs::rename(&tmp, &current).map_err(io_at(&current))
    }

    /// The version `current` points at.
    pub fn current_version(&self, name: &str) -> Result<String> {
        validate_name("image name", name)?;
        let link = self.image_dir(name).join("current");
        let target = std::fs::read_link(&link).map_err(|_| Error::NoSuchImage {
            name: name.to_string(),
            store: self.root.clone(),
        })?;
        Ok(target.to_string_lossy().into_owned())
    }

    pub fn manifest(&self, name: &str, version: &str) -> Result<Manifest> {
        validate_name("image name", name)?;
        validate_name("version", version)?;
        Manifest::load(&self.version_dir(name, version).join(MANIFEST))
    }

    pub fn current(&self, name: &str) -> Result<Manifest> {
        self.manifest(name, &self.current_version(name)?)
    }

    /// Whether the kernel of an image version carries an Authenticode signature
    /// ([`crate::kernel::authenticode_signed`]): a Secure Boot client's shim runs nothing else.
    /// `Err` says why it cannot tell (no kernel file, not a PE image). The kernel is read
    /// once per version ([`SignatureCache`]).
    pub fn kernel_signed(&self, name: &str, version: &str) -> std::result::Result<bool, String> {
        let kernel = self
            .version_dir(name, version)
            .join(crate::manifest::KERNEL);
        self.signed.get(name, version, || {
            let bytes = std::fs::read(&kernel).map_err(|e| format!("{}: {e}", kernel.display()))?;
            Ok(crate::kernel::authenticode_signed(&bytes))
        })
    }

    /// All complete versions of an image, oldest first.
    pub fn versions(&self, name: &str) -> Result<Vec<Manifest>> {
        validate_name("image name", name)?;
        let dir = self.image_dir(name);
        let mut versions: Vec<Manifest> = std::fs::read_dir(&dir)
            .map_err(io_at(&dir))?
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| !n.starts_with('.'))
            .filter_map(|n| self.manifest(name, &n).ok())
            .collect();
        versions.sort_by(|a, b| a.created.cmp(&b.created).then(a.version.cmp(&b.version)));
        Ok(versions)
    }

    /// Make the version before the current one current again.
    pub fn rollback(&self, name: &str) -> Result<String> {
        let current = self.current_version(name)?;
        let versions = self.versions(name)?;
        let pos = versions
            .iter()
            .position(|m| m.version == current)
            .unwrap_or(0);
        let previous = pos
            .checked_sub(1)
            .and_then(|i| versions.get(i))
            .ok_or_else(|| Error::NoOlderVersion {
                name: name.to_string(),
                current: current.clone(),
            })?;
        self.set_current(name, &previous.version)?;
        Ok(previous.version.clone())
    }

    /// Remove all but the newest `keep` versions; the current one is always kept.
    pub fn prune(&self, name: &str, keep: usize) -> Result<Vec<String>> {
        let current = self.current_version(name)?;
        let versions = self.versions(name)?;
        let cut = versions.len().saturating_sub(keep);
        let mut removed = Vec::new();
        for m in &versions[..cut] {
            if m.version == current {
                continue;
            }
            let dir = self.version_dir(name, &m.version);
            std::fs::remove_dir_all(&dir).map_err(io_at(&dir))?;
            removed.push(m.version.clone());
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{hash_file, SQUASHFS};
    use std::collections::BTreeMap;

    fn publish(store: &Store, version: &str, created: &str, content: &[u8]) -> Result<PathBuf> {
        let staging = store.begin("lab")?;
        std::fs::write(staging.dir.join(SQUASHFS), content).unwrap();
        // As a build with umask 077 leaves it: publish opens it to the server's user.
        set_mode(&staging.dir.join(SQUASHFS), 0o600).unwrap();
        set_mode(&staging.dir, 0o700).unwrap();
        let mut files = BTreeMap::new();
        files.insert(
            SQUASHFS.to_string(),
            hash_file(&staging.dir.join(SQUASHFS))?,
        );
        let m = Manifest {
            name: "lab".into(),
            version: version.into(),
            created: created.into(),
            kernel_version: "k".into(),
            compression: "zstd".into(),
            source: "/src".into(),
            build_seconds: 1.0,
            files,
            changes: vec![],
            verity: None,
        };
        store.publish(staging, &m)
    }

    #[test]
    fn publish_rollback_and_prune() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        publish(&store, "v1", "2026-01-01T00:00:00Z", b"one").unwrap();
        publish(&store, "v2", "2026-01-02T00:00:00Z", b"two").unwrap();
        publish(&store, "v3", "2026-01-03T00:00:00Z", b"three").unwrap();
        assert_eq!(store.current_version("lab").unwrap(), "v3");
        let mode = |p: PathBuf| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let v3 = store.version_dir("lab", "v3");
        assert_eq!(mode(v3.clone()), 0o755);
        assert_eq!(mode(v3.join(SQUASHFS)), 0o644);
        assert_eq!(mode(v3.join(MANIFEST)), 0o644);
        assert_eq!(store.images().unwrap(), vec!["lab"]);
        assert_eq!(store.rollback("lab").unwrap(), "v2");
        assert_eq!(store.current("lab").unwrap().version, "v2");
        // Keeping one keeps the newest and the current (v2) version.
        let removed = store.prune("lab", 1).unwrap();
        assert_eq!(removed, vec!["v1"]);
        let left: Vec<_> = store
            .versions("lab")
            .unwrap()
            .into_iter()
            .map(|m| m.version)
            .collect();
        assert_eq!(left, ["v2", "v3"]);
    }

    #[test]
    fn what_a_caller_can_act_on_has_its_own_error() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert!(matches!(
            store.current("lab"),
            Err(Error::NoSuchImage { .. })
        ));
        assert!(matches!(store.current("../x"), Err(Error::BadName(_))));
        publish(&store, "v1", "2026-01-01T00:00:00Z", b"one").unwrap();
        assert!(matches!(
            publish(&store, "v1", "2026-01-01T00:00:00Z", b"one"),
            Err(Error::VersionExists(_))
        ));
        assert!(matches!(
            store.set_current("lab", "v9"),
            Err(Error::NoSuchVersion { .. })
        ));
        let err = store.rollback("lab").unwrap_err();
        assert!(matches!(err, Error::NoOlderVersion { .. }), "{err}");
        assert_eq!(err.to_string(), "image lab has no version older than v1");
    }

    #[test]
    fn a_failed_build_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let staging = store.begin("lab").unwrap();
        let staged = staging.dir.clone();
        drop(staging);
        assert!(!staged.exists());
        assert!(store.current_version("lab").is_err());
    }

    #[test]
    fn names_cannot_escape_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        for bad in ["../etc", "a/b", ".hidden", "", "current"] {
            assert!(store.begin(bad).is_err(), "{bad:?} accepted");
        }
        assert!(store
            .manifest("lab", "../../etc")
            .unwrap_err()
            .to_string()
            .contains("not valid"));
    }

    #[test]
    fn corrupt_staged_file_is_not_published() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        publish(&store, "v1", "2026-01-01T00:00:00Z", b"one").unwrap();
        let staging = store.begin("lab").unwrap();
        std::fs::write(staging.dir.join(SQUASHFS), b"two").unwrap();
        let mut files = BTreeMap::new();
        files.insert(
            SQUASHFS.to_string(),
            crate::manifest::FileEntry {
                size: 3,
                sha256: "0".repeat(64),
            },
        );
        let m = Manifest {
            version: "v2".into(),
            files,
            ..store.current("lab").unwrap()
        };
        assert!(store.publish(staging, &m).is_err());
        assert_eq!(store.current_version("lab").unwrap(), "v1");
        assert!(!store.version_dir("lab", "v2").exists());
    }

    #[test]
    fn a_versions_kernel_is_read_once_for_its_signature() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        publish(&store, "v1", "2026-01-01T00:00:00Z", b"one").unwrap();
        publish(&store, "v2", "2026-01-02T00:00:00Z", b"two").unwrap();
        let kernel = |v: &str| store.version_dir("lab", v).join(crate::manifest::KERNEL);
        let efi = |path: &str| {
            std::fs::read(path).unwrap_or_else(|e| panic!("{path}: {e} (scripts/install-deps)"))
        };
        let (signed, unsigned) = (
            efi("/usr/lib/shim/shimx64.efi.signed"),
            efi("/usr/lib/ipxe/ipxe.efi"),
        );
        // No kernel yet: an error, not kept.
        let err = store.kernel_signed("lab", "v1").unwrap_err();
        assert!(err.contains("vmlinuz"), "{err}");
        std::fs::write(kernel("v1"), &signed).unwrap();
        assert_eq!(store.kernel_signed("lab", "v1"), Ok(true));
        // The file is not read again: an answer that changed with it would show a second read.
        std::fs::write(kernel("v1"), &unsigned).unwrap();
        assert_eq!(store.kernel_signed("lab", "v1"), Ok(true));
        assert_eq!(
            store.clone().kernel_signed("lab", "v1"),
            Ok(true),
            "clones share it"
        );
        // Another version is read on its own.
        std::fs::write(kernel("v2"), &unsigned).unwrap();
        assert_eq!(store.kernel_signed("lab", "v2"), Ok(false));
        // Another store (a restarted server) reads the file as it is now.
        let fresh = Store::open(dir.path()).unwrap();
        assert_eq!(fresh.kernel_signed("lab", "v1"), Ok(false));
    }
}
