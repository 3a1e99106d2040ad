//! `manifest.json`: what one stored image version is made of, with sizes and sha256 digests.

use crate::error::{io_at, Error, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;

use crate::verity::Verity;
use diskless_boot::ImageFile;

/// The files of a version, by the names clients fetch them under (the names of
/// [`ImageFile`], the one list the server's routes and the boot script use too).
pub const SQUASHFS: &str = ImageFile::Squashfs.name();
pub const KERNEL: &str = ImageFile::Kernel.name();
pub const INITRD: &str = ImageFile::Initrd.name();
pub const BOOT_CPIO: &str = ImageFile::BootCpio.name();
pub const MANIFEST: &str = "manifest.json";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    pub size: u64,
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub name: String,
    pub version: String,
    /// UTC, RFC 3339.
    pub created: String,
    pub kernel_version: String,
    pub compression: String,
    pub source: String,
    /// Seconds mksquashfs took.
    pub build_seconds: f64,
    pub files: BTreeMap<String, FileEntry>,
    /// The image-only changes made (fstab lines removed, keys removed, ...).
    pub changes: Vec<String>,
    /// The dm-verity hash tree appended to root.squashfs ([`crate::verity`]): seats mount the
    /// image through dm-verity with its root hash. None for images built before it, which
    /// seats check by their sha256 before mounting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verity: Option<Verity>,
}

impl Manifest {
    pub fn squashfs(&self) -> &FileEntry {
        &self.files[SQUASHFS]
    }

    /// False for an image whose own initrd carries the boot script (`diskless initrd
    /// install`): clients then load initrd.img alone.
    pub fn has_boot_cpio(&self) -> bool {
        self.files.contains_key(BOOT_CPIO)
    }

    pub fn load(path: &Path) -> Result<Manifest> {
        let text = std::fs::read_to_string(path).map_err(io_at(path))?;
        serde_json::from_str(&text).map_err(|e| Error::Corrupt {
            path: path.to_path_buf(),
            what: format!("not a valid manifest: {e}"),
        })
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self).expect("manifest serializes");
        std::fs::write(path, text + "\n").map_err(io_at(path))
    }

    /// Check every file of the version in `dir` against its size and digest.
    pub fn verify(&self, dir: &Path) -> Result<()> {
        for (name, entry) in &self.files {
            let path = dir.join(name);
            entry.check(&path, &hash_file(&path)?)?;
        }
        Ok(())
    }
}

impl FileEntry {
    /// `actual` (what `path` holds) is this entry, or [`Error::Corrupt`] says how not.
    pub fn check(&self, path: &Path, actual: &FileEntry) -> Result<()> {
        if actual == self {
            return Ok(());
        }
        Err(Error::Corrupt {
            path: path.to_path_buf(),
            what: format!(
                "expected {} bytes with sha256 {}, found {} bytes with sha256 {}",
                self.size, self.sha256, actual.size, actual.sha256
            ),
        })
    }
}

/// Size and sha256 of a file, read in blocks.
pub fn hash_file(path: &Path) -> Result<FileEntry> {
    hash_copy(path, &mut std::io::sink(), path)
}

/// Size and sha256 of the file at `path`, read in blocks, each also written to `out`
/// (which is `out_path` in errors): a copy checked while it is made.
pub fn hash_copy(path: &Path, out: &mut impl Write, out_path: &Path) -> Result<FileEntry> {
    let mut file = std::fs::File::open(path).map_err(io_at(path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf).map_err(io_at(path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n]).map_err(io_at(out_path))?;
        size += n as u64;
    }
    Ok(FileEntry {
        size,
        sha256: hex::encode(hasher.finalize()),
    })
}

/// Now as RFC 3339 UTC, and as a compact version stamp `YYYYMMDD-HHMMSS`.
pub fn now_stamps() -> (String, String) {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    stamps(secs)
}

fn stamps(secs: u64) -> (String, String) {
    let (days, rem) = (secs / 86400, secs % 86400);
    let (h, m, s) = (rem / 3600, rem % 3600 / 60, rem % 60);
    let (y, mo, d) = civil_from_days(days as i64);
    (
        format!("{y:04}-{mo:02}-{d:02}T{h:02}:{m:02}:{s:02}Z"),
        format!("{y:04}{mo:02}{d:02}-{h:02}{m:02}{s:02}"),
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        assert_eq!(stamps(0).0, "1970-01-01T00:00:00Z");
        assert_eq!(
            stamps(1_795_638_896),
            ("2026-11-25T20:34:56Z".into(), "20261125-203456".into())
        );
        assert_eq!(stamps(951_782_400).0, "2000-02-29T00:00:00Z");
    }

    #[test]
    fn verify_catches_a_changed_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(SQUASHFS), b"image").unwrap();
        let mut m = Manifest {
            name: "n".into(),
            version: "v".into(),
            created: String::new(),
            kernel_version: String::new(),
            compression: "zstd".into(),
            source: "/".into(),
            build_seconds: 0.0,
            files: BTreeMap::new(),
            changes: vec![],
            verity: None,
        };
        m.files.insert(
            SQUASHFS.into(),
            hash_file(&dir.path().join(SQUASHFS)).unwrap(),
        );
        m.verify(dir.path()).unwrap();
        std::fs::write(dir.path().join(SQUASHFS), b"imagf").unwrap();
        let err = m.verify(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("root.squashfs") && err.contains("sha256"),
            "{err}"
        );
        let saved = dir.path().join(MANIFEST);
        m.save(&saved).unwrap();
        assert_eq!(Manifest::load(&saved).unwrap(), m);
        std::fs::write(&saved, "{").unwrap();
        assert!(Manifest::load(&saved)
            .unwrap_err()
            .to_string()
            .contains("not a valid manifest"));
    }

    #[test]
    fn the_verity_fields_round_trip_and_old_manifests_have_none() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(MANIFEST);
        let old = r#"{"name":"n","version":"v","created":"","kernel_version":"","compression":"zstd",
            "source":"/","build_seconds":0.0,"files":{},"changes":[]}"#;
        std::fs::write(&path, old).unwrap();
        let mut m = Manifest::load(&path).unwrap();
        assert_eq!(m.verity, None);
        m.save(&path).unwrap();
        assert!(!std::fs::read_to_string(&path).unwrap().contains("verity"));
        m.verity = Some(Verity {
            format: 1,
            hash_algorithm: "sha256".into(),
            data_block_size: 4096,
            hash_block_size: 4096,
            data_blocks: 3,
            hash_offset: 3 * 4096,
            root_hash: "ab".repeat(32),
            salt: "cd".repeat(32),
        });
        m.save(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        for field in [
            r#""root_hash": "ababab"#,
            r#""salt": "cdcd"#,
            r#""data_blocks": 3"#,
            r#""hash_offset": 12288"#,
            r#""data_block_size": 4096"#,
            r#""hash_block_size": 4096"#,
            r#""hash_algorithm": "sha256""#,
            r#""format": 1"#,
        ] {
            assert!(text.contains(field), "{field} in {text}");
        }
        assert_eq!(Manifest::load(&path).unwrap(), m);
    }
}
