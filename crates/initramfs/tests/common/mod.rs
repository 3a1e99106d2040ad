//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use diskless_initramfs::cpio::Header;

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

/// What a tree holds at one path, in the terms GNU cpio preserves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub kind: &'static str,
    pub perm: u32,
    pub uid: u32,
    pub gid: u32,
    /// Hash of a file's contents, a symlink's target, a device's number.
    pub content: String,
    /// mtime of files and devices (cpio sets neither symlink nor directory
    /// times).
    pub mtime: Option<i64>,
}

/// Every path below `root` (root itself excluded), and the groups of paths
/// sharing an inode.
pub fn snapshot(root: &Path) -> (BTreeMap<String, Node>, BTreeSet<Vec<String>>) {
    let mut nodes = BTreeMap::new();
    let mut inodes: HashMap<u64, Vec<String>> = HashMap::new();
    let mut todo = vec![root.to_owned()];
    while let Some(dir) = todo.pop() {
        for e in fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            let m = fs::symlink_metadata(&p).unwrap();
            let ft = m.file_type();
            let (kind, content, mtime) = if ft.is_dir() {
                todo.push(p.clone());
                ("dir", String::new(), None)
            } else if ft.is_symlink() {
                (
                    "symlink",
                    fs::read_link(&p).unwrap().to_string_lossy().into_owned(),
                    None,
                )
            } else if ft.is_file() {
                let mut h = std::collections::hash_map::DefaultHasher::new();
                fs::read(&p).unwrap().hash(&mut h);
                inodes.entry(m.ino()).or_default().push(rel.clone());
                (
                    "file",
                    format!("{:016x}/{}", h.finish(), m.len()),
                    Some(m.mtime()),
                )
            } else if ft.is_char_device() {
                ("char", format!("{:x}", m.rdev()), Some(m.mtime()))
            } else if ft.is_block_device() {
                ("block", format!("{:x}", m.rdev()), Some(m.mtime()))
            } else if ft.is_fifo() {
                ("fifo", String::new(), Some(m.mtime()))
            } else {
                ("socket", String::new(), Some(m.mtime()))
            };
            nodes.insert(
                rel,
                Node {
                    kind,
                    perm: m.mode() & 0o7777,
                    uid: m.uid(),
                    gid: m.gid(),
                    content,
                    mtime,
                },
            );
        }
    }
    let links = inodes
        .into_values()
        .filter(|v| v.len() > 1)
        .map(|mut v| {
            v.sort();
            v
        })
        .collect();
    (nodes, links)
}

/// Asserts two trees are the same file for file, naming the differences.
pub fn assert_same_tree(expected: &Path, actual: &Path) {
    let (a, la) = snapshot(expected);
    let (b, lb) = snapshot(actual);
    let mut diffs = Vec::new();
    for k in a.keys().chain(b.keys()).collect::<BTreeSet<_>>() {
        if a.get(k) != b.get(k) {
            diffs.push(format!("{k}: expected {:?}, got {:?}", a.get(k), b.get(k)));
        }
    }
    assert!(
        diffs.is_empty(),
        "{} differences:\n{}",
        diffs.len(),
        diffs[..diffs.len().min(20)].join("\n")
    );
    assert_eq!(la, lb, "hard-link groups differ");
    assert!(!a.is_empty(), "empty trees compared");
}

/// Runs `argv` with `input` on stdin; returns stdout, panicking with
/// stderr on failure.
pub fn run_with_input(argv: &[&str], input: &[u8]) -> Vec<u8> {
    let mut child = Command::new(argv[0])
        .args(&argv[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{argv:?}: {e}"));
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let feeder = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output().unwrap();
    feeder.join().unwrap().unwrap();
    assert!(
        out.status.success(),
        "{argv:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

#[allow(unused_imports)] // not every test file uses each
pub use diskless_testkit::{is_root, run_bytes};

/// One raw newc entry, name as given (for archives our writer refuses to
/// make).
pub fn raw_entry(name: &str, mode: u32, data: &[u8]) -> Vec<u8> {
    raw_linked_entry(name, mode, 1, 0, data)
}

/// A raw entry with a link count and inode number (hard links).
pub fn raw_linked_entry(name: &str, mode: u32, nlink: u32, ino: u32, data: &[u8]) -> Vec<u8> {
    let h = Header {
        crc_format: false,
        ino,
        mode,
        uid: 0,
        gid: 0,
        nlink,
        mtime: 0,
        filesize: data.len() as u32,
        devmajor: 0,
        devminor: 0,
        rdevmajor: 0,
        rdevminor: 0,
        check: 0,
        name: name.as_bytes().to_vec(),
    };
    let mut out = Vec::new();
    h.emit(&mut out).unwrap();
    out.extend_from_slice(data);
    while out.len() % 4 != 0 {
        out.push(0);
    }
    out
}

/// A raw archive of `entries`, closed by a trailer.
pub fn raw_archive(entries: &[(&str, u32, &[u8])]) -> Vec<u8> {
    let mut out: Vec<u8> = entries
        .iter()
        .flat_map(|(n, m, d)| raw_entry(n, *m, d))
        .collect();
    out.extend(raw_entry("TRAILER!!!", 0, b""));
    out
}
