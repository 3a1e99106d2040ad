//! `diskless image export`: one stored version laid out for a static web server (an origin
//! or a mirror: nginx, a CDN bucket), `DIR/images/NAME/VERSION/{files, manifest.json}`, the
//! same paths as the boot server's `/images/...` URLs ([`diskless_boot::routes`]).
//!
//! Each file is copied into a temporary file next to its target while its sha256 is taken,
//! checked against the manifest, synced and renamed into place: a copy that does not match
//! never appears under its name. An existing file that is the manifest's is left as it is
//! (an export can be repeated or resumed); one that differs is refused, never overwritten.

use crate::error::{io_at, Error, Result};
use crate::manifest::{hash_copy, hash_file, MANIFEST};
use crate::store::Store;
use diskless_boot::routes::ImageFile;
use std::path::{Path, PathBuf};

/// What [`export`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exported {
    /// `DIR/images/NAME/VERSION`.
    pub dir: PathBuf,
    /// Files copied (the manifest included).
    pub copied: Vec<String>,
    /// Files that were there already, identical.
    pub kept: Vec<String>,
}

/// Export version `version` (default: the current one) of image `name` from `store` into
/// `dest` (see the module docs).
pub fn export(store: &Store, name: &str, version: Option<&str>, dest: &Path) -> Result<Exported> {
    let version = match version {
        Some(v) => v.to_string(),
        None => store.current_version(name)?,
    };
    let manifest = store.manifest(name, &version).map_err(|e| match e {
        Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
            Error::NoSuchVersion {
                name: name.to_string(),
                version: version.clone(),
            }
        }
        e => e,
    })?;
    let from = store.version_dir(name, &version);
    let dir = dest.join("images").join(name).join(&version);
    std::fs::create_dir_all(&dir).map_err(io_at(&dir))?;
    let mut done = Exported {
        dir: dir.clone(),
        copied: Vec::new(),
        kept: Vec::new(),
    };
    for (file, entry) in &manifest.files {
        // Only the files the server would serve (a manifest names nothing else; this keeps a
        // name like `../x` from leaving DIR).
        if ImageFile::from_name(file).is_none() {
            return Err(Error::Invalid(format!(
                "{}: names {file:?}, which is not an image file",
                from.join(MANIFEST).display()
            )));
        }
        let target = dir.join(file);
        if target.exists() {
            entry.check(&target, &hash_file(&target)?).map_err(refuse)?;
            done.kept.push(file.clone());
            continue;
        }
        let source = from.join(file);
        let tmp = dir.join(format!(".{file}.tmp.{}", std::process::id()));
        let copied = (|| {
            let mut out = std::fs::File::create(&tmp).map_err(io_at(&tmp))?;
            let actual = hash_copy(&source, &mut out, &tmp)?;
            entry.check(&source, &actual)?;
            out.sync_all().map_err(io_at(&tmp))?;
            std::fs::rename(&tmp, &target).map_err(io_at(&target))
        })();
        if copied.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        copied?;
        done.copied.push(file.clone());
    }
    // The manifest last: its presence says the version is complete.
    let text = std::fs::read(from.join(MANIFEST)).map_err(io_at(&from))?;
    let target = dir.join(MANIFEST);
    match std::fs::read(&target) {
        Ok(existing) if existing == text => done.kept.push(MANIFEST.into()),
        Ok(_) => {
            return Err(refuse(Error::Invalid(format!(
                "{}: differs from the store's manifest",
                target.display()
            ))))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            diskless_dhcp::state_file::write_atomic(&target, &text).map_err(|e| Error::Io {
                path: e.path,
                source: e.source,
            })?;
            done.copied.push(MANIFEST.into());
        }
        Err(e) => return Err(io_at(&target)(e)),
    }
    Ok(done)
}

/// An existing file at an export path that is not the version's.
fn refuse(why: Error) -> Error {
    Error::Invalid(format!(
        "{why}; not this version's file: refusing to overwrite it"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{Manifest, KERNEL, SQUASHFS};
    use std::collections::BTreeMap;

    fn store_with_version(dir: &Path) -> (Store, String) {
        let store = Store::open(dir.join("store")).unwrap();
        let staging = store.begin("lab").unwrap();
        let mut files = BTreeMap::new();
        for (file, content) in [(SQUASHFS, &b"squash"[..]), (KERNEL, b"kernel")] {
            std::fs::write(staging.dir.join(file), content).unwrap();
            files.insert(
                file.to_string(),
                hash_file(&staging.dir.join(file)).unwrap(),
            );
        }
        let manifest = Manifest {
            name: "lab".into(),
            version: "20260101-000000-abcdef01".into(),
            created: String::new(),
            kernel_version: "6.1".into(),
            compression: "zstd".into(),
            source: "/".into(),
            build_seconds: 0.0,
            files,
            changes: Vec::new(),
            verity: None,
        };
        store.publish(staging, &manifest).unwrap();
        (store, manifest.version)
    }

    #[test]
    fn exports_the_store_layout_and_can_be_repeated() {
        let tmp = tempfile::tempdir().unwrap();
        let (store, version) = store_with_version(tmp.path());
        let dest = tmp.path().join("www");
        let done = export(&store, "lab", None, &dest).unwrap();
        let dir = dest.join("images/lab").join(&version);
        assert_eq!(done.dir, dir);
        assert_eq!(done.copied, [SQUASHFS, KERNEL, MANIFEST]);
        assert_eq!(std::fs::read(dir.join(SQUASHFS)).unwrap(), b"squash");
        Manifest::load(&dir.join(MANIFEST))
            .unwrap()
            .verify(&dir)
            .unwrap();
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names.len(), 3, "{names:?}");
        // What an `image_urls` base serving DIR gives clients is exactly these files.
        for file in [ImageFile::Squashfs, ImageFile::Kernel] {
            let route = diskless_boot::Route::ImageFile {
                image: "lab".into(),
                version: version.clone(),
                file,
            };
            let url = route.url_at("http://cache-room1/diskless/");
            let path = url.strip_prefix("http://cache-room1/diskless/").unwrap();
            assert_eq!(
                std::fs::read(dest.join(path)).unwrap(),
                std::fs::read(store.version_dir("lab", &version).join(file.name())).unwrap(),
                "{url}"
            );
        }
        let again = export(&store, "lab", Some(&version), &dest).unwrap();
        assert!(again.copied.is_empty());
        assert_eq!(again.kept, [SQUASHFS, KERNEL, MANIFEST]);
    }

    #[test]
    fn refuses_a_different_file_and_a_corrupt_source() {
        let tmp = tempfile::tempdir().unwrap();
        let (store, version) = store_with_version(tmp.path());
        let dest = tmp.path().join("www");
        let dir = dest.join("images/lab").join(&version);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(KERNEL), b"another").unwrap();
        let err = export(&store, "lab", None, &dest).unwrap_err().to_string();
        assert!(err.contains("refusing to overwrite"), "{err}");
        assert!(err.contains(KERNEL), "{err}");
        assert_eq!(std::fs::read(dir.join(KERNEL)).unwrap(), b"another");

        // A store file that no longer matches its manifest is not exported.
        let dest = tmp.path().join("www2");
        std::fs::write(store.version_dir("lab", &version).join(SQUASHFS), b"squish").unwrap();
        let err = export(&store, "lab", None, &dest).unwrap_err().to_string();
        assert!(err.contains("expected 6 bytes with sha256"), "{err}");
        let dir = dest.join("images/lab").join(&version);
        // root.squashfs comes first: nothing is left, no temporary file, no manifest.
        let left: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
        assert!(left.is_empty(), "{left:?}");

        let err = export(&store, "lab", Some("19990101-000000"), &dest).unwrap_err();
        assert!(err.to_string().contains("no version"), "{err}");
        let err = export(&store, "nope", None, &dest).unwrap_err();
        assert!(err.to_string().contains("no image named"), "{err}");
    }
}
