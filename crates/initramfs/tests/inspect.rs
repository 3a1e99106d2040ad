//! The inspector on small initrds: the committed multi-segment fixture
//! (see fixtures/multi-segment.gen.sh), archives compressed by the real
//! command-line tools, and hostile archives.

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use common::*;
use diskless_initramfs::initrd::list;
use diskless_initramfs::{
    extract, read_path, Compression, CpioWriter, EntryKind, ExtractError, ExtractOptions,
    InitrdError, Layout, LookupError,
};

const MODE_DIR: u32 = 0o040_755;
const MODE_FILE: u32 = 0o100_644;
const MODE_LINK: u32 = 0o120_777;

fn multi() -> Vec<u8> {
    fs::read(fixture("multi-segment.img")).unwrap()
}

fn names(entries: &[diskless_initramfs::Entry], segment: usize) -> Vec<String> {
    entries
        .iter()
        .filter(|e| e.segment == segment)
        .map(|e| e.header.name_lossy().into_owned())
        .collect()
}

#[test]
fn fixture_segment_table() {
    let img = multi();
    let (entries, segs) = list(&img[..]).unwrap();
    let table: Vec<_> = segs
        .iter()
        .map(|s| (s.compression, s.archives, s.entries))
        .collect();
    assert_eq!(
        table,
        [
            (Compression::None, 1, 5),
            (Compression::Gzip, 1, 23),
            (Compression::Zstd, 1, 3)
        ]
    );
    // cpio pads the plain archive to 512 bytes, then the script adds 1000
    // zeros: the gzip stream starts after both.
    assert_eq!(segs[0].offset, 0);
    assert_eq!(segs[1].offset, segs[0].end.next_multiple_of(512) + 1000);
    assert_eq!(&img[segs[1].offset as usize..][..2], [0x1f, 0x8b]);
    assert_eq!(segs[2].offset, segs[1].end);
    assert_eq!(segs[2].end, img.len() as u64);
    assert_eq!(entries.len(), 31);
    assert_eq!(names(&entries, 2), [".", "etc", "etc/motd"]);
}

/// Cuts each segment out with our offsets, decompresses it with the real
/// tool and lists it with GNU cpio: the same names must come out.
#[test]
fn fixture_listing_matches_gnu_tools_segment_by_segment() {
    let img = multi();
    let (entries, segs) = list(&img[..]).unwrap();
    for s in &segs {
        let bytes = &img[s.offset as usize..s.end as usize];
        let plain = match s.compression {
            Compression::None => bytes.to_vec(),
            Compression::Gzip => run_with_input(&["gzip", "-dc"], bytes),
            Compression::Zstd => run_with_input(&["zstd", "-dcq"], bytes),
            c => panic!("unexpected {c}"),
        };
        assert_eq!(plain.len() as u64, s.unpacked, "segment {}", s.index);
        let listed = run_with_input(&["cpio", "-t", "--quiet"], &plain);
        let listed: Vec<String> = String::from_utf8(listed)
            .unwrap()
            .lines()
            .map(String::from)
            .collect();
        assert_eq!(listed, names(&entries, s.index), "segment {}", s.index);
    }
}

#[test]
fn extract_merged_keeps_modes_links_and_devices() {
    let dir = tempfile::tempdir().unwrap();
    let opts = ExtractOptions {
        layout: Layout::Merged,
        ..ExtractOptions::default()
    };
    let report = extract(&multi()[..], dir.path(), &opts).unwrap();
    let p = dir.path();
    let mode = |rel: &str| {
        fs::symlink_metadata(p.join(rel))
            .unwrap()
            .permissions()
            .mode()
    };

    // The zstd segment's copy wins.
    assert_eq!(fs::read(p.join("etc/motd")).unwrap(), b"replaced\n");
    assert_eq!(
        fs::read(p.join("kernel/x86/microcode/GenuineIntel.bin")).unwrap(),
        b"not really microcode\n"
    );
    assert_eq!(
        fs::read(p.join("usr/lib/modules/big.ko")).unwrap(),
        vec![b'x'; 70001]
    );
    assert_eq!(fs::read(p.join("scripts/local-top/odd")).unwrap(), b"abc");
    assert_eq!(fs::metadata(p.join("etc/fstab")).unwrap().len(), 0);
    assert_eq!(mode("usr/bin/su"), 0o104_755);
    assert_eq!(mode("root"), 0o040_700);
    assert_eq!(mode("usr/bin/busybox"), 0o100_755);
    // Three names, one inode, data from the last entry of the group.
    let ino = fs::metadata(p.join("usr/bin/busybox")).unwrap().ino();
    for n in ["usr/bin/sh", "usr/bin/mount"] {
        assert_eq!(fs::metadata(p.join(n)).unwrap().ino(), ino, "{n}");
    }
    assert_eq!(fs::metadata(p.join("usr/bin/busybox")).unwrap().nlink(), 3);
    assert_eq!(
        fs::read(p.join("usr/bin/mount")).unwrap(),
        b"#!/bin/sh\necho busybox\n"
    );
    assert_eq!(fs::read_link(p.join("bin")).unwrap(), Path::new("usr/bin"));
    assert_eq!(
        fs::read_link(p.join("etc/mtab")).unwrap(),
        Path::new("/proc/mounts")
    );
    assert_eq!(mode("dev/initctl") & 0o170_000, 0o010_000);
    // The generator stamps everything 1700000000.
    assert_eq!(
        fs::metadata(p.join("usr/lib/modules/big.ko"))
            .unwrap()
            .mtime(),
        1_700_000_000
    );
    assert_eq!(
        fs::metadata(p.join("usr/lib")).unwrap().mtime(),
        1_700_000_000
    );
    if is_root() {
        let console = fs::metadata(p.join("dev/console")).unwrap();
        assert_eq!(console.rdev(), libc::makedev(5, 1));
        assert_eq!(console.mode(), 0o020_600);
        assert_eq!(
            fs::metadata(p.join("dev/loop0")).unwrap().rdev(),
            libc::makedev(7, 0)
        );
        assert_eq!(report.skipped_devices, 0);
    } else {
        assert_eq!(report.skipped_devices, 2);
    }
    assert_eq!(report.segments.len(), 3);
}

#[test]
fn extract_matches_gnu_cpio_per_segment_in_unmkinitramfs_layout() {
    let dir = tempfile::tempdir().unwrap();
    let ours = dir.path().join("ours");
    extract(&multi()[..], &ours, &ExtractOptions::default()).unwrap();
    let mut subdirs: Vec<String> = fs::read_dir(&ours)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    subdirs.sort();
    assert_eq!(subdirs, ["early", "main"]);
    assert_eq!(fs::read(ours.join("main/etc/motd")).unwrap(), b"replaced\n");

    // Reference: GNU cpio on each segment, the later ones over main/.
    let reference = dir.path().join("reference");
    let img = multi();
    let (_, segs) = list(&img[..]).unwrap();
    for (s, sub) in segs.iter().zip(["early", "main", "main"]) {
        let bytes = &img[s.offset as usize..s.end as usize];
        let plain = match s.compression {
            Compression::None => bytes.to_vec(),
            Compression::Gzip => run_with_input(&["gzip", "-dc"], bytes),
            _ => run_with_input(&["zstd", "-dcq"], bytes),
        };
        let to = reference.join(sub);
        fs::create_dir_all(&to).unwrap();
        let argv = [
            "sh",
            "-c",
            "cd \"$0\" && cpio -i --quiet --preserve-modification-time --no-absolute-filenames -u",
            to.to_str().unwrap(),
        ];
        run_with_input(&argv, &plain);
    }
    if is_root() {
        assert_same_tree(&reference, &ours);
    }
}

#[test]
fn cat_follows_symlinks_hard_links_and_last_copy() {
    let path = fixture("multi-segment.img");
    let open = || fs::File::open(&path);
    let busybox = b"#!/bin/sh\necho busybox\n";
    assert_eq!(read_path(open, "etc/motd").unwrap(), b"replaced\n");
    assert_eq!(read_path(open, "/etc/motd").unwrap(), b"replaced\n");
    // bin -> usr/bin, and sh is a hard link whose data came later.
    assert_eq!(read_path(open, "bin/sh").unwrap(), busybox);
    assert_eq!(read_path(open, "usr/bin/busybox").unwrap(), busybox);
    assert_eq!(read_path(open, "./usr//bin/mount").unwrap(), busybox);
    assert_eq!(read_path(open, "etc/fstab").unwrap(), b"");
    assert!(matches!(
        read_path(open, "etc/mtab"),
        Err(LookupError::NotFound(_))
    ));
    assert!(matches!(
        read_path(open, "nope"),
        Err(LookupError::NotFound(_))
    ));
    assert!(matches!(
        read_path(open, "usr"),
        Err(LookupError::NotAFile {
            kind: EntryKind::Dir,
            ..
        })
    ));
    assert!(matches!(
        read_path(open, "../etc/motd"),
        Err(LookupError::BadPath(_))
    ));
}

fn writer_archive(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut w = CpioWriter::new(Vec::new());
    for (n, d) in files {
        w.add_file(n, 0o644, d).unwrap();
    }
    w.finish().unwrap()
}

/// Each compression as its command-line tool makes it (lz4 in the legacy
/// format mkinitramfs and the kernel use), one after another.
#[test]
fn segments_from_every_compression_tool() {
    let tools: [(&[&str], Compression); 6] = [
        (&["gzip", "-c"], Compression::Gzip),
        (&["xz", "--check=crc32", "-c"], Compression::Xz),
        (&["zstd", "-q", "-c"], Compression::Zstd),
        (&["lz4", "-l", "-q", "-c"], Compression::Lz4Legacy),
        (&["lzma", "-c"], Compression::Lzma),
        (&["bzip2", "-c"], Compression::Bzip2),
    ];
    let mut img = writer_archive(&[("early/plain", b"plain")]);
    let mut expected = vec![(Compression::None, 0u64)];
    for (argv, c) in &tools {
        let name = format!("by/{c}");
        let big = vec![c.name().as_bytes()[0]; 200_000];
        let archive = writer_archive(&[(name.as_str(), c.name().as_bytes()), ("big", &big)]);
        expected.push((*c, img.len() as u64));
        img.extend(run_with_input(argv, &archive));
        // Odd zero padding between segments, as the kernel allows.
        img.extend([0u8; 3]);
    }
    let (entries, segs) = list(&img[..]).unwrap();
    let got: Vec<_> = segs.iter().map(|s| (s.compression, s.offset)).collect();
    assert_eq!(got, expected);
    assert!(segs[1..].iter().all(|s| s.entries == 3 && s.archives == 1));
    assert_eq!(entries.len(), 2 + 3 * tools.len());

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("initrd.img");
    fs::write(&file, &img).unwrap();
    for (_, c) in &tools {
        let got = read_path(|| fs::File::open(&file), &format!("by/{c}")).unwrap();
        assert_eq!(got, c.name().as_bytes());
    }
    // The last "big" wins: bzip2's.
    assert_eq!(
        read_path(|| fs::File::open(&file), "big").unwrap(),
        vec![b'b'; 200_000]
    );
}

#[test]
fn several_archives_in_one_compressed_stream() {
    let mut both = writer_archive(&[("a", b"1")]);
    both.extend([0u8; 8]);
    both.extend(writer_archive(&[("b", b"2")]));
    let img = run_with_input(&["gzip", "-c"], &both);
    let (entries, segs) = list(&img[..]).unwrap();
    assert_eq!(segs.len(), 1);
    assert_eq!(segs[0].archives, 2);
    assert_eq!(segs[0].unpacked, both.len() as u64);
    assert_eq!(
        entries.iter().map(|e| e.archive).collect::<Vec<_>>(),
        [0, 1]
    );
}

#[test]
fn bad_initrds_give_errors_with_context() {
    let img = multi();
    let (_, segs) = list(&img[..]).unwrap();

    // Cut inside the gzip segment.
    let cut = &img[..(segs[1].offset + segs[1].end) as usize / 2];
    let err = list(cut).unwrap_err();
    match &err {
        InitrdError::Cpio {
            segment: 1,
            compression: Compression::Gzip,
            offset,
            ..
        } => {
            assert_eq!(*offset, segs[1].offset)
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(
        err.to_string().contains("segment 1 (gzip at offset 2024)"),
        "{err}"
    );

    // Trailing garbage.
    let mut junk = img.clone();
    junk.extend_from_slice(b"garbage!");
    let err = list(&junk[..]).unwrap_err();
    assert!(
        matches!(err, InitrdError::UnknownFormat { offset, .. } if offset == img.len() as u64),
        "{err:?}"
    );
    assert!(err.to_string().contains("67 61 72 62 61 67"), "{err}");

    // lzop is recognised but not decoded.
    let mut lzo = writer_archive(&[("a", b"1")]);
    lzo.extend_from_slice(b"\x89LZO\x00\r\n\x1a\n");
    let err = list(&lzo[..]).unwrap_err();
    assert!(matches!(
        err,
        InitrdError::Unsupported {
            segment: 1,
            compression: Compression::Lzo,
            ..
        }
    ));

    // Junk after the trailer inside a compressed stream.
    let mut inner = writer_archive(&[("a", b"1")]);
    inner.extend_from_slice(b"junk");
    let img = run_with_input(&["gzip", "-c"], &inner);
    let err = list(&img[..]).unwrap_err();
    assert!(
        matches!(
            err,
            InitrdError::Junk {
                segment: 0,
                unpacked_offset: 512,
                ..
            }
        ),
        "{err:?}"
    );

    // A bad header names the entry's offset.
    let mut bad = raw_archive(&[("ok", MODE_FILE, b"x"), ("next", MODE_FILE, b"y")]);
    let second = raw_entry("ok", MODE_FILE, b"x").len();
    bad[second + 20] = b'z';
    let err = list(&bad[..]).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains(&format!("cpio entry at offset {second}")),
        "{text}"
    );
    assert!(text.contains("not hexadecimal"), "{text}");
}

fn extract_err(archive: Vec<u8>) -> (ExtractError, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("target");
    let opts = ExtractOptions {
        layout: Layout::Merged,
        ..ExtractOptions::default()
    };
    let err = extract(&archive[..], &target, &opts).unwrap_err();
    (err, dir)
}

/// Nothing exists in the scratch dir but the target itself.
fn assert_nothing_outside(dir: &tempfile::TempDir) {
    let names: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["target"]);
}

#[test]
fn extract_refuses_dot_dot_and_absolute_names() {
    for name in ["../evil", "a/../../evil", "/evil", "a/b/../../../evil"] {
        let (err, dir) = extract_err(raw_archive(&[
            ("a", MODE_DIR, b""),
            (name, MODE_FILE, b"x"),
        ]));
        match &err {
            ExtractError::UnsafeName {
                name: n,
                segment: 0,
            } => assert_eq!(n, name),
            other => panic!("{name}: unexpected {other:?}"),
        }
        assert!(err.to_string().contains(name), "{err}");
        assert_nothing_outside(&dir);
    }
}

/// (name, mode, data) of a hand-made entry.
type RawEntry<'a> = (&'a str, u32, &'a [u8]);

#[test]
fn extract_refuses_writing_through_escaping_symlinks() {
    let cases: [(&[RawEntry], &str); 4] = [
        (&[("lib", MODE_LINK, b"../../outside")], "lib"),
        (&[("lib", MODE_LINK, b"/tmp")], "lib"),
        // Chained: each link alone looks harmless.
        (
            &[
                ("d", MODE_DIR, b""),
                ("d/up", MODE_LINK, b".."),
                ("lib", MODE_LINK, b"d/up/d/up/.."),
            ],
            "lib",
        ),
        (&[("d", MODE_DIR, b""), ("d/x", MODE_LINK, b"../..")], "d/x"),
    ];
    for (links, via) in cases {
        let mut entries = links.to_vec();
        let name = format!("{via}/evil");
        entries.push((&name, MODE_FILE, b"pwned"));
        let (err, dir) = extract_err(raw_archive(&entries));
        let text = err.to_string();
        assert!(
            matches!(err, ExtractError::SymlinkEscape { .. }),
            "{via}: {err:?}"
        );
        assert!(text.contains(&name), "{text}");
        assert_nothing_outside(&dir);
    }
}

#[test]
fn extract_follows_symlinks_that_stay_inside_and_replaces_planted_ones() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("target");
    let archive = raw_archive(&[
        ("usr", MODE_DIR, b""),
        ("usr/bin", MODE_DIR, b""),
        ("bin", MODE_LINK, b"usr/bin"),
        ("bin/tool", MODE_FILE, b"tool"),
        ("usr/sub", MODE_DIR, b""),
        ("usr/sub/up", MODE_LINK, b"../bin"),
        ("usr/sub/up/other", MODE_FILE, b"other"),
        // A symlink at a file's own name is replaced, not written through.
        ("passwd", MODE_LINK, b"/etc/passwd"),
        ("passwd", MODE_FILE, b"mine"),
    ]);
    let opts = ExtractOptions {
        layout: Layout::Merged,
        ..ExtractOptions::default()
    };
    extract(&archive[..], &target, &opts).unwrap();
    assert_eq!(fs::read(target.join("usr/bin/tool")).unwrap(), b"tool");
    assert_eq!(fs::read(target.join("usr/bin/other")).unwrap(), b"other");
    let m = fs::symlink_metadata(target.join("passwd")).unwrap();
    assert!(m.is_file());
    assert_eq!(fs::read(target.join("passwd")).unwrap(), b"mine");
    assert_nothing_outside(&dir);
}

/// Tricks with entries replaced after the fact: a directory turned into a
/// symlink before its mode is applied, and the first name of a hard-link
/// group turned into a symlink before the next link writes the data.
#[test]
fn extract_does_not_follow_symlinks_that_replaced_earlier_entries() {
    let dir = tempfile::tempdir().unwrap();
    let victim_dir = dir.path().join("victim-dir");
    fs::create_dir(&victim_dir).unwrap();
    fs::set_permissions(&victim_dir, fs::Permissions::from_mode(0o700)).unwrap();
    let victim_file = dir.path().join("victim-file");
    fs::write(&victim_file, b"original").unwrap();

    let mut archive = Vec::new();
    archive.extend(raw_entry("d", 0o040_777, b""));
    archive.extend(raw_entry(
        "d",
        MODE_LINK,
        victim_dir.to_str().unwrap().as_bytes(),
    ));
    archive.extend(raw_linked_entry("a", MODE_FILE, 2, 5, b""));
    archive.extend(raw_entry(
        "a",
        MODE_LINK,
        victim_file.to_str().unwrap().as_bytes(),
    ));
    archive.extend(raw_linked_entry("b", 0o100_666, 2, 5, b"pwned"));
    archive.extend(raw_entry("TRAILER!!!", 0, b""));

    let target = dir.path().join("target");
    let opts = ExtractOptions {
        layout: Layout::Merged,
        ..ExtractOptions::default()
    };
    extract(&archive[..], &target, &opts).unwrap();
    let mode = fs::metadata(&victim_dir).unwrap().permissions().mode();
    assert_eq!(mode & 0o7777, 0o700);
    assert_eq!(fs::read(&victim_file).unwrap(), b"original");
    let perm = fs::metadata(&victim_file).unwrap().permissions().mode();
    assert_ne!(perm & 0o7777, 0o666);
    // The data still lands, inside the target, in a file of its own.
    assert_eq!(fs::read(target.join("b")).unwrap(), b"pwned");
    assert!(fs::symlink_metadata(target.join("b")).unwrap().is_file());
}

#[test]
fn gnu_cpio_and_kernel_style_parents() {
    // Names with "./" prefixes (find . | cpio without stripping) extract to
    // the same place.
    let dir = tempfile::tempdir().unwrap();
    let archive = raw_archive(&[
        ("./a", MODE_DIR, b""),
        ("./a/f", MODE_FILE, b"x"),
        ("b/c/g", MODE_FILE, b"y"),
    ]);
    let opts = ExtractOptions {
        layout: Layout::Merged,
        ..ExtractOptions::default()
    };
    extract(&archive[..], dir.path(), &opts).unwrap();
    assert_eq!(fs::read(dir.path().join("a/f")).unwrap(), b"x");
    // Missing parents are made, as cpio -id would.
    assert_eq!(fs::read(dir.path().join("b/c/g")).unwrap(), b"y");
}
