//! Find the kernel and its stock initrd in a root tree.

use crate::error::{io_at, Error, Result};
use std::cmp::Ordering;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kernel {
    pub version: String,
    pub vmlinuz: PathBuf,
    pub initrd: PathBuf,
}

/// The newest kernel in `root/boot` that has an initrd.
pub fn find(root: &Path) -> Result<Kernel> {
    let boot = root.join("boot");
    let mut versions: Vec<String> = std::fs::read_dir(&boot)
        .map_err(io_at(&boot))?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            e.file_name()
                .to_str()?
                .strip_prefix("vmlinuz-")
                .map(str::to_string)
        })
        .collect();
    if versions.is_empty() {
        return Err(Error::Invalid(format!(
            "no kernel (vmlinuz-*) in {}: install linux-image-amd64 in the source",
            boot.display()
        )));
    }
    versions.sort_by(|a, b| compare_versions(b, a));
    let version = versions.remove(0);
    let initrd = boot.join(format!("initrd.img-{version}"));
    if !initrd.is_file() {
        return Err(Error::Invalid(format!(
            "kernel {version} has no initrd ({} is missing): install initramfs-tools in the \
             source and run update-initramfs -c -k {version}",
            initrd.display()
        )));
    }
    Ok(Kernel {
        vmlinuz: boot.join(format!("vmlinuz-{version}")),
        initrd,
        version,
    })
}

/// Compare "6.1.0-50-amd64" and "6.1.0-9-amd64" by their numbers, not as text.
pub fn compare_versions(a: &str, b: &str) -> Ordering {
    let parts = |s: &str| -> Vec<Result<u64, String>> {
        s.split(['.', '-', '+', '~'])
            .map(|p| p.parse::<u64>().map_err(|_| p.to_string()))
            .collect()
    };
    let (pa, pb) = (parts(a), parts(b));
    for (x, y) in pa.iter().zip(pb.iter()) {
        let ord = match (x, y) {
            (Ok(x), Ok(y)) => x.cmp(y),
            (Ok(_), Err(_)) => Ordering::Greater,
            (Err(_), Ok(_)) => Ordering::Less,
            (Err(x), Err(y)) => x.cmp(y),
        };
        if ord != Ordering::Equal {
            return ord;
        }
    }
    pa.len().cmp(&pb.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_version_order() {
        assert_eq!(
            compare_versions("6.1.0-50-amd64", "6.1.0-9-amd64"),
            Ordering::Greater
        );
        assert_eq!(
            compare_versions("6.12.1-amd64", "6.1.0-amd64"),
            Ordering::Greater
        );
        assert_eq!(
            compare_versions("6.1.0-9-amd64", "6.1.0-9-amd64"),
            Ordering::Equal
        );
    }

    #[test]
    fn picks_newest_kernel_with_initrd() {
        let dir = tempfile::tempdir().unwrap();
        let boot = dir.path().join("boot");
        std::fs::create_dir(&boot).unwrap();
        for v in ["6.1.0-9-amd64", "6.1.0-50-amd64"] {
            std::fs::write(boot.join(format!("vmlinuz-{v}")), "k").unwrap();
            std::fs::write(boot.join(format!("initrd.img-{v}")), "i").unwrap();
        }
        assert_eq!(find(dir.path()).unwrap().version, "6.1.0-50-amd64");
    }

    #[test]
    fn missing_kernel_or_initrd_is_explained() {
        let dir = tempfile::tempdir().unwrap();
        let boot = dir.path().join("boot");
        std::fs::create_dir(&boot).unwrap();
        assert!(find(dir.path())
            .unwrap_err()
            .to_string()
            .contains("linux-image-amd64"));
        std::fs::write(boot.join("vmlinuz-6.1.0-9-amd64"), "k").unwrap();
        assert!(find(dir.path())
            .unwrap_err()
            .to_string()
            .contains("update-initramfs"));
    }
}
