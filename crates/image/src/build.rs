//! `diskless image build`: a root tree in, a verified store version out.

use crate::bootcpio;
use crate::error::{io_at, Error, Result};
use crate::kernel;
use crate::manifest::{self, hash_file, Manifest, BOOT_CPIO, INITRD, KERNEL, SQUASHFS};
use crate::squash;
use crate::store::Store;
use crate::tidy::{self, TidyOptions};
use crate::verity;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::str::FromStr;
use std::time::Instant;

/// mksquashfs compressors we offer; zstd decompresses fastest for the size on a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    #[default]
    Zstd,
    Xz,
    Gzip,
    Lz4,
}

impl Compression {
    pub fn as_str(self) -> &'static str {
        match self {
            Compression::Zstd => "zstd",
            Compression::Xz => "xz",
            Compression::Gzip => "gzip",
            Compression::Lz4 => "lz4",
        }
    }
}

impl FromStr for Compression {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "zstd" => Ok(Compression::Zstd),
            "xz" => Ok(Compression::Xz),
            "gzip" => Ok(Compression::Gzip),
            "lz4" => Ok(Compression::Lz4),
            other => Err(format!(
                "unknown compression {other:?}: use zstd, xz, gzip or lz4"
            )),
        }
    }
}

#[derive(Debug, Clone)]
pub struct BuildConfig {
    pub source: PathBuf,
    pub name: String,
    pub compression: Compression,
    /// mksquashfs block size in bytes (4 KiB to 1 MiB, a power of two); None: its default.
    pub block_size: Option<u32>,
    pub tidy: TidyOptions,
    /// The static `diskless-fetch` binary that goes into diskless.cpio.
    pub fetch_helper: PathBuf,
    /// None: all cores.
    pub processors: Option<usize>,
    /// Let mksquashfs draw its progress bar (on a terminal); otherwise progress is printed
    /// as plain `diskless: mksquashfs NN%` lines on stderr.
    pub progress_bar: bool,
}

#[derive(Debug)]
pub struct BuildReport {
    pub manifest: Manifest,
    pub version_dir: PathBuf,
    pub total_seconds: f64,
    /// What went into the image, uncompressed (data and metadata), as mksquashfs counted it;
    /// None for a refresh, or if mksquashfs did not print its statistics.
    pub source_bytes: Option<u64>,
    /// What still looks like a secret in the image, each with the way to leave it out
    /// ([`tidy::Plan::secrets`]); empty for a refresh, which reuses the image unread.
    pub secrets: Vec<String>,
}

impl BuildReport {
    /// root.squashfs size / uncompressed size of what went in.
    pub fn ratio(&self) -> Option<f64> {
        let source = self.source_bytes.filter(|&b| b > 0)?;
        Some(self.manifest.squashfs().size as f64 / source as f64)
    }
}

pub fn validate_block_size(size: u32) -> Result<()> {
    if size.is_power_of_two() && (4096..=1 << 20).contains(&size) {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "block size {size} must be a power of two from 4096 to 1048576"
        )))
    }
}

pub fn build(store: &Store, cfg: &BuildConfig) -> Result<BuildReport> {
    let started = Instant::now();
    let source = std::fs::canonicalize(&cfg.source).map_err(io_at(&cfg.source))?;
    if !source.is_dir() {
        return Err(Error::Invalid(format!(
            "{} is not a directory",
            source.display()
        )));
    }
    if let Some(size) = cfg.block_size {
        validate_block_size(size)?;
    }
    let kernel = kernel::find(&source)?;
    let initrd_name = kernel
        .initrd
        .strip_prefix(&source)
        .unwrap_or(&kernel.initrd)
        .display()
        .to_string();
    // Before anything is built: an initrd we cannot read (lzop, say) is left to the kernel, as
    // any stock one is, and said so; one holding a key is refused.
    let initrd = bootcpio::inspect_initrd(&kernel.initrd);
    if let Ok(facts) = &initrd {
        refuse_initrd_keys(&initrd_name, facts)?;
    }
    let staging = store.begin(&cfg.name)?;
    let work = staging.dir.join(".work");
    std::fs::create_dir(&work).map_err(io_at(&work))?;

    let mut tidy_opts = cfg.tidy.clone();
    // `/` is always read as a running system; any other tree only when asked (a disk of
    // another machine mounted somewhere, or a test tree with mounts inside).
    tidy_opts.running_system |= source == Path::new("/");
    // Ours, compared with the source as the filesystem resolves them: the store, and what
    // the caller named (the server's state and store). One that does not exist holds nothing.
    let mut own_paths = vec![std::fs::canonicalize(store.root()).map_err(io_at(store.root()))?];
    own_paths.extend(
        tidy_opts
            .own_paths
            .iter()
            .filter_map(|p| std::fs::canonicalize(p).ok()),
    );
    tidy_opts.own_paths = own_paths;
    let plan = tidy::plan(&source, &work, &tidy_opts)?;
    let exclude_file = work.join("exclude");
    std::fs::write(&exclude_file, plan.excludes.join("\n") + "\n").map_err(io_at(&exclude_file))?;
    let pseudo_file = work.join("pseudo");
    std::fs::write(&pseudo_file, plan.pseudo.join("\n") + "\n").map_err(io_at(&pseudo_file))?;

    let squashfs = staging.dir.join(SQUASHFS);
    let mut mksquashfs = Command::new("mksquashfs");
    mksquashfs
        .arg(&source)
        .arg(&squashfs)
        .args(["-noappend", "-comp", cfg.compression.as_str()])
        .args(["-wildcards", "-ef"])
        .arg(&exclude_file)
        .arg("-pf")
        .arg(&pseudo_file);
    if let Some(size) = cfg.block_size {
        mksquashfs.args(["-b", &size.to_string()]);
    }
    if let Some(n) = cfg.processors {
        mksquashfs.args(["-processors", &n.to_string()]);
    }
    if tidy_opts.running_system {
        // Mount points inside the tree (proc, a data disk, a nested tmpfs) become empty
        // directories: only the root filesystem goes into the image.
        mksquashfs.arg("-one-file-system");
    }
    let display = if cfg.progress_bar {
        squash::Display::Bar
    } else {
        squash::Display::Lines
    };
    let squash_started = Instant::now();
    let stats = squash::run(&mut mksquashfs, display)?;
    let build_seconds = squash_started.elapsed().as_secs_f64();
    // Seats mount the image through dm-verity: the tree goes at the end of the same file.
    let verity = verity::append(&squashfs, verity::random_salt()?)?;

    copy(&kernel.vmlinuz, &staging.dir.join(KERNEL))?;
    copy(&kernel.initrd, &staging.dir.join(INITRD))?;
    pad_to_4(&staging.dir.join(INITRD))?;
    let mut changes = plan.changes;
    let mut secrets = plan.secrets;
    let mut boot_files = vec![SQUASHFS, KERNEL, INITRD];
    let self_contained = match initrd {
        Ok(facts) => facts.has_boot_files,
        Err(e) => {
            changes.push(format!(
                "{initrd_name}: not inspected ({e}); clients load diskless.cpio after it"
            ));
            secrets.push(format!(
                "{initrd_name}: served as it is, not inspected for keyfiles or private keys ({e})"
            ));
            false
        }
    };
    if self_contained {
        changes.push(format!(
            "{initrd_name}: carries the diskless boot script and helper (diskless initrd \
             install), clients load it without diskless.cpio"
        ));
    } else {
        let cpio = bootcpio::build(&source, &kernel.version, &cfg.fetch_helper)?;
        let cpio_path = staging.dir.join(BOOT_CPIO);
        std::fs::write(&cpio_path, cpio).map_err(io_at(&cpio_path))?;
        boot_files.push(BOOT_CPIO);
    }
    std::fs::remove_dir_all(&work).map_err(io_at(&work))?;

    let mut files = BTreeMap::new();
    for name in boot_files {
        files.insert(name.to_string(), hash_file(&staging.dir.join(name))?);
    }
    let (created, stamp) = manifest::now_stamps();
    let version = format!("{stamp}-{}", &files[SQUASHFS].sha256[..8]);
    let manifest = Manifest {
        name: cfg.name.clone(),
        version,
        created,
        kernel_version: kernel.version.clone(),
        compression: cfg.compression.as_str().to_string(),
        source: source.display().to_string(),
        build_seconds,
        files,
        changes,
        verity: Some(verity),
    };
    let version_dir = store.publish(staging, &manifest)?;
    Ok(BuildReport {
        manifest,
        version_dir,
        total_seconds: started.elapsed().as_secs_f64(),
        source_bytes: stats.map(|s| s.uncompressed_bytes),
        secrets,
    })
}

/// The initrd goes to every client as it is, and anyone on the boot network can download it:
/// one holding a key (a cryptsetup keyfile, a dropbear or ssh host key) is refused, naming
/// the member. It is not rebuilt without them: the keys are there for the master's own boot
/// (unlocking its disk, remote unlock over dropbear), and an initrd rebuilt by us would be
/// one the admin never booted.
pub fn refuse_initrd_keys(initrd_name: &str, facts: &bootcpio::InitrdFacts) -> Result<()> {
    let Some((member, what)) = facts.keys.first() else {
        return Ok(());
    };
    let more = match facts.keys.len() {
        1 => String::new(),
        n => format!(" and {} more key member(s)", n - 1),
    };
    Err(Error::Invalid(format!(
        "the initrd {initrd_name} holds {member} ({what}){more}: every client downloads the \
         initrd without authentication, so it is not copied into the image. Build the image \
         from a tree whose initrd has no keys (a chroot made by `diskless image bootstrap`, or \
         a copy of the master with its initrd regenerated without KEYFILE_PATTERN and \
         dropbear-initramfs)"
    )))
}

/// Whether the current version of image `name` has the boot files of this diskless build (an
/// image whose own initrd carries the boot script has nothing to compare and counts as
/// current).
pub fn boot_files_current(store: &Store, name: &str, fetch_helper: &Path) -> Result<bool> {
    let current = store.current(name)?;
    if !current.has_boot_cpio() {
        return Ok(true);
    }
    let path = store.version_dir(name, &current.version).join(BOOT_CPIO);
    let cpio = std::fs::read(&path).map_err(io_at(&path))?;
    bootcpio::is_current(&cpio, fetch_helper)
}

/// A new version of image `name` with the boot files of this diskless build (script and fetch
/// helper in diskless.cpio) and everything else from the current version, hard-linked.
pub fn refresh(store: &Store, name: &str, fetch_helper: &Path) -> Result<BuildReport> {
    let started = Instant::now();
    let current = store.current(name)?;
    if !current.has_boot_cpio() {
        return Err(Error::Invalid(format!(
            "image {name} version {} boots from its own initrd (made by `diskless initrd \
             install`), which holds the boot script: run `diskless initrd install` on its \
             source tree again and rebuild the image",
            current.version
        )));
    }
    let from = store.version_dir(name, &current.version);
    let staging = store.begin(name)?;
    for file in [SQUASHFS, KERNEL, INITRD] {
        let (src, dst) = (from.join(file), staging.dir.join(file));
        if std::fs::hard_link(&src, &dst).is_err() {
            copy(&src, &dst)?;
        }
    }
    // Versions built before initrd.img was padded get a padded copy.
    let initrd = staging.dir.join(INITRD);
    if std::fs::metadata(&initrd).map_err(io_at(&initrd))?.len() % 4 != 0 {
        std::fs::remove_file(&initrd).map_err(io_at(&initrd))?;
        copy(&from.join(INITRD), &initrd)?;
        pad_to_4(&initrd)?;
    }
    let old_cpio_path = from.join(BOOT_CPIO);
    let old_cpio = std::fs::read(&old_cpio_path).map_err(io_at(&old_cpio_path))?;
    let cpio_path = staging.dir.join(BOOT_CPIO);
    std::fs::write(&cpio_path, bootcpio::refresh(&old_cpio, fetch_helper)?)
        .map_err(io_at(&cpio_path))?;
    let mut files = current.files.clone();
    files.insert(BOOT_CPIO.to_string(), hash_file(&cpio_path)?);
    files.insert(INITRD.to_string(), hash_file(&initrd)?);
    let (created, stamp) = manifest::now_stamps();
    let mut changes = current.changes.clone();
    changes.push(format!(
        "diskless.cpio refreshed from version {}",
        current.version
    ));
    let manifest = Manifest {
        version: format!("{stamp}-{}", &files[SQUASHFS].sha256[..8]),
        created,
        files,
        changes,
        ..current
    };
    let version_dir = store.publish(staging, &manifest)?;
    Ok(BuildReport {
        manifest,
        version_dir,
        total_seconds: started.elapsed().as_secs_f64(),
        source_bytes: None,
        secrets: Vec::new(),
    })
}

/// Pad the stock initrd with zeros to a multiple of 4 bytes.
///
/// UEFI iPXE (Debian's 1.0.0+git-20190125) hands the initrds to the kernel's EFI stub by name
/// (`initrd=initrd.img initrd=diskless.cpio`), and the stub loads them back to back with no
/// alignment. The kernel's unpacker (init/initramfs.c, unpack_to_rootfs) only takes a cpio
/// header at a 4-byte-aligned offset, so diskless.cpio behind an initrd.img of odd length
/// fails with "Initramfs unpacking failed: invalid magic at start of compressed archive" and
/// the boot dies with "can't open '/scripts/diskless'" (seen with OVMF in `diskless vm
/// --firmware uefi`). The unpacker skips zero bytes between archives, so the padding changes
/// nothing for BIOS iPXE, which aligns initrds itself.
fn pad_to_4(path: &Path) -> Result<()> {
    use std::io::Write;
    let len = std::fs::metadata(path).map_err(io_at(path))?.len();
    let pad = ((4 - len % 4) % 4) as usize;
    if pad > 0 {
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(io_at(path))?;
        file.write_all(&[0u8; 3][..pad]).map_err(io_at(path))?;
    }
    Ok(())
}

fn copy(from: &Path, to: &Path) -> Result<()> {
    std::fs::copy(from, to).map_err(io_at(from))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compression_names() {
        for c in ["zstd", "xz", "gzip", "lz4"] {
            assert_eq!(Compression::from_str(c).unwrap().as_str(), c);
        }
        assert!(Compression::from_str("bzip9")
            .unwrap_err()
            .contains("zstd, xz, gzip or lz4"));
    }

    #[test]
    fn block_sizes() {
        assert!(validate_block_size(131072).is_ok());
        assert!(validate_block_size(1000).is_err());
        assert!(validate_block_size(2 << 20).is_err());
    }
}
