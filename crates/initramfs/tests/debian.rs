//! The inspector against initramfs-tools on real Debian 12 initrds, built
//! by mkinitramfs with each compression and with early intel/amd microcode
//! (tests/make-debian-initrds.sh; built on first use, slowly, then cached
//! in /var/cache/diskless/test-initrds or $DISKLESS_TEST_INITRDS).
//!
//! `ls` must print what `lsinitramfs` prints, and extraction must give
//! what `unmkinitramfs` gives, file for file.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use common::*;
use diskless_initramfs::listing::{long_line, Names};
use diskless_initramfs::{
    extract, read_path, Compression, Entry, EntryKind, ExtractOptions, InitrdReader, Segment,
};

const IMAGES: [&str; 7] = [
    "debian-gzip.img",
    "debian-xz.img",
    "debian-zstd.img",
    "debian-lz4.img",
    "debian-lzma.img",
    "debian-bzip2.img",
    "debian-gzip-nomicrocode.img",
];

fn cache_dir() -> PathBuf {
    std::env::var_os("DISKLESS_TEST_INITRDS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/diskless/test-initrds"))
}

/// The initrds, built first if missing. None when initramfs-tools is not
/// installed (nothing to compare with).
fn images() -> Option<Vec<PathBuf>> {
    static READY: OnceLock<bool> = OnceLock::new();
    let ready = *READY.get_or_init(|| {
        if Command::new("lsinitramfs").arg("--help").output().is_err() {
            diskless_testkit::skip(
                "lsinitramfs/unmkinitramfs (initramfs-tools-core) not installed",
            );
            return false;
        }
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/make-debian-initrds.sh");
        run_bytes(Command::new(script).arg(cache_dir()));
        true
    });
    ready.then(|| IMAGES.iter().map(|n| cache_dir().join(n)).collect())
}

/// What `diskless initrd ls` prints, and the segment table.
fn our_listing(path: &Path, long: bool, now: i64) -> (Vec<u8>, Vec<Segment>, Vec<Entry>) {
    let mut r = InitrdReader::new(fs::File::open(path).unwrap());
    let mut names = Names::new();
    let mut out = Vec::new();
    let mut entries = Vec::new();
    while let Some(e) = r.next_entry().unwrap() {
        if long {
            let target =
                (e.header.kind() == EntryKind::Symlink).then(|| r.read_data_to_vec().unwrap());
            out.extend(long_line(&e.header, target.as_deref(), now, &mut names));
        } else {
            out.extend_from_slice(&e.header.name);
        }
        out.push(b'\n');
        entries.push(e);
    }
    (out, r.segments().to_vec(), entries)
}

/// Checks the segment table: microcode archives (amd64-microcode's, then
/// intel-microcode's), then the main archive in the chosen compression.
fn check_segments(img: &Path, name: &str, segs: &[Segment], entries: &[Entry]) {
    let kinds: Vec<Compression> = segs.iter().map(|s| s.compression).collect();
    let main = match name.trim_start_matches("debian-").trim_end_matches(".img") {
        "gzip" | "gzip-nomicrocode" => Compression::Gzip,
        "xz" => Compression::Xz,
        "zstd" => Compression::Zstd,
        "lz4" => Compression::Lz4Legacy,
        "lzma" => Compression::Lzma,
        "bzip2" => Compression::Bzip2,
        other => panic!("{other}"),
    };
    if name.contains("nomicrocode") {
        assert_eq!(kinds, [main], "{name}");
    } else {
        assert_eq!(
            kinds,
            [Compression::None, Compression::None, main],
            "{name}"
        );
        let early: Vec<String> = entries
            .iter()
            .filter(|e| e.segment < 2 && e.header.kind() == EntryKind::File)
            .map(|e| e.header.name_lossy().into_owned())
            .collect();
        assert_eq!(
            early,
            [
                "kernel/x86/microcode/AuthenticAMD.bin",
                "kernel/x86/microcode/GenuineIntel.bin"
            ],
            "{name}"
        );
    }
    let last = segs.last().unwrap();
    assert_eq!(last.end, fs::metadata(img).unwrap().len(), "{name}");
    assert!(last.entries > 500, "{name}: {} entries", last.entries);
}

#[test]
fn ls_matches_lsinitramfs_and_segments_are_found() {
    let Some(images) = images() else { return };
    // mkinitramfs sorts its file list (`find . | LC_ALL=C sort`, for reproducible builds), so
    // the six images with microcode list the same entries whatever the compression: one
    // `lsinitramfs` for them (gzip's), one for the image without microcode. Each run of it
    // takes 5-10 s; all seven took most of this test's 48 s.
    let with_microcode = run_bytes(Command::new("lsinitramfs").arg(&images[0]));
    for (img, name) in images.iter().zip(IMAGES) {
        let expected = if name.contains("nomicrocode") {
            run_bytes(Command::new("lsinitramfs").arg(img))
        } else {
            with_microcode.clone()
        };
        let (ours, segs, entries) = our_listing(img, false, 0);
        assert!(
            expected == ours,
            "{}: listing differs from lsinitramfs",
            img.display()
        );
        check_segments(img, name, &segs, &entries);
    }
}

#[test]
fn long_ls_matches_lsinitramfs_l() {
    let Some(images) = images() else { return };
    // One is enough: the entries are the same in every compression.
    let img = &images[1];
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let expected =
        String::from_utf8(run_bytes(Command::new("lsinitramfs").arg("-l").arg(img))).unwrap();
    let ours = String::from_utf8(our_listing(img, true, now).0).unwrap();
    for (i, (e, o)) in expected.lines().zip(ours.lines()).enumerate() {
        assert_eq!(e, o, "line {}", i + 1);
    }
    assert_eq!(expected.lines().count(), ours.lines().count());
}

#[test]
fn extract_matches_unmkinitramfs() {
    let Some(images) = images() else { return };
    // Writing the tree out does not depend on the compression, and the listing tests above
    // decode every archive of every image to its end; so two images: gzip with early
    // microcode, and zstd (each `unmkinitramfs` takes 10-20 s, and all seven took 88 s of CI).
    for img in [&images[0], &images[2]] {
        let dir = tempfile::tempdir_in("/var/tmp").unwrap();
        let reference = dir.path().join("reference");
        let ours = dir.path().join("ours");
        run_bytes(Command::new("unmkinitramfs").arg(img).arg(&reference));
        extract(
            fs::File::open(img).unwrap(),
            &ours,
            &ExtractOptions::default(),
        )
        .unwrap();
        assert_same_tree(&reference, &ours);
    }
}

#[test]
fn cat_matches_unmkinitramfs_files() {
    let Some(images) = images() else { return };
    // zstd: the quickest to scan; every decoder is covered above.
    let img = &images[2];
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    run_bytes(Command::new("unmkinitramfs").arg(img).arg(dir.path()));
    let main = dir.path().join("main");
    // Also through the usr-merge symlinks (bin -> usr/bin).
    for path in [
        "conf/initramfs.conf",
        "init",
        "bin/busybox",
        "sbin/modprobe",
    ] {
        let expected = fs::read(main.join(path)).unwrap();
        let got = read_path(|| fs::File::open(img), path).unwrap();
        assert!(got == expected, "{path} differs");
    }
    let intel = "kernel/x86/microcode/GenuineIntel.bin";
    let expected = fs::read(dir.path().join("early2").join(intel)).unwrap();
    assert!(read_path(|| fs::File::open(img), intel).unwrap() == expected);
}
