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

/// Whether a PE image (an EFI binary, a kernel with its EFI stub) carries an Authenticode
/// signature: its certificate table (data directory 4, a file offset, not an address) holds a
/// `WIN_CERTIFICATE` of type PKCS#7 signed data. Secure Boot firmware and shim run nothing
/// else; whether the signature is one they trust is theirs to check. `Err` when the bytes are
/// not a 64-bit PE image.
pub fn authenticode_signed(image: &[u8]) -> std::result::Result<bool, String> {
    use object::pe::IMAGE_DIRECTORY_ENTRY_SECURITY;
    /// wCertificateType of a PKCS#7 SignedData (Authenticode) entry (PE format, "The
    /// Attribute Certificate Table").
    const WIN_CERT_TYPE_PKCS_SIGNED_DATA: u16 = 0x0002;
    let pe = object::read::pe::PeFile64::parse(image)
        .map_err(|e| format!("not a 64-bit PE (EFI) image: {e}"))?;
    let Some(table) = pe.data_directory(IMAGE_DIRECTORY_ENTRY_SECURITY) else {
        return Ok(false);
    };
    let (start, size) = table.address_range();
    let end = start as usize + size as usize;
    let certificates = image
        .get(start as usize..end)
        .ok_or_else(|| format!("the certificate table ({start}+{size}) is past the file's end"))?;
    // WIN_CERTIFICATE: dwLength (u32), wRevision (u16), wCertificateType (u16), data; each
    // entry padded to 8 bytes.
    let mut rest = certificates;
    while rest.len() >= 8 {
        let length = u32::from_le_bytes(rest[0..4].try_into().expect("4 bytes")) as usize;
        let kind = u16::from_le_bytes(rest[6..8].try_into().expect("2 bytes"));
        if kind == WIN_CERT_TYPE_PKCS_SIGNED_DATA {
            return Ok(true);
        }
        if length < 8 {
            break;
        }
        rest = rest.get(length.next_multiple_of(8)..).unwrap_or_default();
    }
    Ok(false)
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

    /// EFI binaries of Debian packages diskless depends on: shim-signed's (signed by
    /// Microsoft) and ipxe's (unsigned).
    fn debian_efi(path: &str, package: &str) -> Vec<u8> {
        std::fs::read(path)
            .unwrap_or_else(|e| panic!("{path}: {e} (install {package}: scripts/install-deps)"))
    }

    #[test]
    fn authenticode_signatures_are_found_in_signed_efi_binaries_only() {
        let shim = debian_efi("/usr/lib/shim/shimx64.efi.signed", "shim-signed");
        assert_eq!(authenticode_signed(&shim), Ok(true));
        let ipxe = debian_efi("/usr/lib/ipxe/ipxe.efi", "ipxe");
        assert_eq!(authenticode_signed(&ipxe), Ok(false));
        // The same binary with its certificate table cut off.
        let pe = object::read::pe::PeFile64::parse(&*shim).unwrap();
        let (start, _) = pe
            .data_directory(object::pe::IMAGE_DIRECTORY_ENTRY_SECURITY)
            .unwrap()
            .address_range();
        let err = authenticode_signed(&shim[..start as usize]).unwrap_err();
        assert!(err.contains("past the file's end"), "{err}");
        let err = authenticode_signed(b"MZ not a kernel").unwrap_err();
        assert!(err.contains("not a 64-bit PE"), "{err}");
    }
}
