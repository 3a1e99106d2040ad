//! The dm-verity hash tree of root.squashfs, appended to the image file itself.
//!
//! The format is the kernel's (Documentation/admin-guide/device-mapper/verity.rst, "Hash
//! tree"), the one `veritysetup format --no-superblock` writes (format version 1, sha256,
//! 4 KiB data and hash blocks), so every part that checks a block checks it against the same
//! tree and the one root hash in the manifest: the kernel on each read, later the helper on
//! arrival (multicast, lazy fill).
//!
//! ```text
//! root.squashfs   [ squashfs, zero-padded to 4 KiB | top level | ... | level 0 ]
//!                   data_blocks blocks               hash_offset = data_blocks * 4096
//! level 0         sha256(salt || data block), 128 to a hash block, the rest zero
//! level i+1       sha256(salt || hash block of level i), likewise, up to one block
//! root hash       sha256(salt || the top level's one block)
//! ```
//!
//! One file, not two: the store, the HTTP and TFTP routes, the caches in front of them and
//! the fetch helper move it as they always did; squashfs reads only the `bytes_used` its
//! superblock names, so a seat mounting the file without dm-verity (an older boot script)
//! still mounts it, and the file's sha256 in the manifest covers the tree too.

use crate::error::{io_at, Error, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

/// Data and hash block size: the page size, which dm-verity's defaults and squashfs's
/// 4 KiB padding share.
pub const BLOCK_SIZE: u64 = 4096;
/// sha256 digests in one hash block (verity.rst: digests padded to a power of two; 32 is).
const HASHES_PER_BLOCK: u64 = BLOCK_SIZE / 32;

/// What a seat needs to set up the dm-verity target over the image (the manifest's
/// `verity`); the table line is `verity 1 DEV DEV 4096 4096 data_blocks data_blocks sha256
/// root_hash salt` (the hash area starts right after the data, in hash blocks).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verity {
    /// dm-verity's hash format version (1: the salt goes before the block).
    pub format: u32,
    pub hash_algorithm: String,
    pub data_block_size: u64,
    pub hash_block_size: u64,
    /// Blocks of the image the tree covers (the squashfs padded to 4 KiB).
    pub data_blocks: u64,
    /// Where the tree starts in root.squashfs, in bytes (= data_blocks * data_block_size).
    pub hash_offset: u64,
    /// Hex.
    pub root_hash: String,
    /// Hex, 32 random bytes.
    pub salt: String,
}

/// The hash tree of `data`, as verity.rst lays it out (top level first), and the root hash.
pub fn tree(data: &[u8], salt: &[u8]) -> (Vec<u8>, [u8; 32]) {
    let leaves: Vec<[u8; 32]> = data
        .chunks(BLOCK_SIZE as usize)
        .map(|block| {
            let mut padded = [0u8; BLOCK_SIZE as usize];
            padded[..block.len()].copy_from_slice(block);
            salted(salt, &padded)
        })
        .collect();
    tree_of_leaves(leaves, salt)
}

fn salted(salt: &[u8], block: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(salt);
    h.update(block);
    h.finalize().into()
}

/// From the digests of the data blocks: the levels (top first) and the root hash.
fn tree_of_leaves(leaves: Vec<[u8; 32]>, salt: &[u8]) -> (Vec<u8>, [u8; 32]) {
    // The kernel (dm-verity-target.c, verity_ctr) makes no level for one data block: the
    // root hash is then that block's digest.
    if leaves.len() <= 1 {
        return (Vec::new(), leaves.first().copied().unwrap_or([0; 32]));
    }
    let mut levels: Vec<Vec<u8>> = Vec::new();
    let mut digests = leaves;
    loop {
        let mut level = Vec::new();
        for group in digests.chunks(HASHES_PER_BLOCK as usize) {
            let mut block = vec![0u8; BLOCK_SIZE as usize];
            for (i, d) in group.iter().enumerate() {
                block[i * 32..(i + 1) * 32].copy_from_slice(d);
            }
            level.push(block);
        }
        digests = level.iter().map(|b| salted(salt, b)).collect();
        levels.push(level.concat());
        if digests.len() == 1 {
            break;
        }
    }
    let tree = levels.into_iter().rev().flatten().collect();
    (tree, digests[0])
}

/// Pad the image at `path` with zeros to a whole number of blocks, append its hash tree and
/// say what the manifest records. Reads the file once, a block at a time.
pub fn append(path: &Path, salt: [u8; 32]) -> Result<Verity> {
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(io_at(path))?;
    let len = file.metadata().map_err(io_at(path))?.len();
    if len == 0 {
        return Err(Error::Invalid(format!(
            "{} is empty: no hash tree to make",
            path.display()
        )));
    }
    // mksquashfs pads to 4 KiB already unless told -nopad; padding is zeros past bytes_used.
    let pad = (BLOCK_SIZE - len % BLOCK_SIZE) % BLOCK_SIZE;
    file.seek(SeekFrom::End(0)).map_err(io_at(path))?;
    file.write_all(&vec![0u8; pad as usize])
        .map_err(io_at(path))?;
    let data_blocks = (len + pad) / BLOCK_SIZE;
    file.seek(SeekFrom::Start(0)).map_err(io_at(path))?;
    let mut leaves = Vec::with_capacity(data_blocks as usize);
    let mut buf = vec![0u8; 256 * BLOCK_SIZE as usize];
    let mut left = data_blocks * BLOCK_SIZE;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        file.read_exact(&mut buf[..n]).map_err(io_at(path))?;
        leaves.extend(
            buf[..n]
                .chunks(BLOCK_SIZE as usize)
                .map(|b| salted(&salt, b)),
        );
        left -= n as u64;
    }
    let (tree, root) = tree_of_leaves(leaves, &salt);
    file.seek(SeekFrom::End(0)).map_err(io_at(path))?;
    file.write_all(&tree).map_err(io_at(path))?;
    file.sync_all().map_err(io_at(path))?;
    Ok(Verity {
        format: 1,
        hash_algorithm: "sha256".into(),
        data_block_size: BLOCK_SIZE,
        hash_block_size: BLOCK_SIZE,
        data_blocks,
        hash_offset: data_blocks * BLOCK_SIZE,
        root_hash: hex::encode(root),
        salt: hex::encode(salt),
    })
}

/// 32 bytes from the kernel's random pool (getrandom(2)), for a new image's salt.
pub fn random_salt() -> Result<[u8; 32]> {
    let mut salt = [0u8; 32];
    // SAFETY: the buffer is valid for 32 bytes.
    let n = unsafe { libc::getrandom(salt.as_mut_ptr().cast(), salt.len(), 0) };
    if n != 32 {
        return Err(Error::Invalid(format!(
            "getrandom for the hash tree's salt: {}",
            std::io::Error::last_os_error()
        )));
    }
    Ok(salt)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Not a multiple of 4 KiB, and more than 128 blocks: two levels, a partial last block.
    fn sample() -> Vec<u8> {
        (0..300 * BLOCK_SIZE as usize + 1000)
            .map(|i| (i * 7 % 251) as u8)
            .collect()
    }

    #[test]
    fn levels_and_root_follow_the_kernel_layout() {
        let salt = [5u8; 32];
        let data = sample();
        let (tree, root) = tree(&data, &salt);
        // 301 data blocks: level 0 has 3 hash blocks, level 1 one; top level first.
        assert_eq!(tree.len(), 4 * BLOCK_SIZE as usize);
        let top = &tree[..BLOCK_SIZE as usize];
        assert_eq!(root, salted(&salt, top));
        let level0 = &tree[BLOCK_SIZE as usize..];
        assert_eq!(&top[..32], &salted(&salt, &level0[..BLOCK_SIZE as usize]));
        assert_eq!(
            &top[3 * 32..],
            &[0u8; 4096 - 96][..],
            "unused digests are zero"
        );
        assert_eq!(&level0[..32], &salted(&salt, &data[..4096]));
    }

    #[test]
    fn append_pads_and_matches_the_tree() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("root.squashfs");
        let data = sample();
        std::fs::write(&path, &data).unwrap();
        let salt = [9u8; 32];
        let v = append(&path, salt).unwrap();
        let written = std::fs::read(&path).unwrap();
        let (tree, root) = tree(&data, &salt);
        assert_eq!(v.data_blocks, 301);
        assert_eq!(v.hash_offset, 301 * BLOCK_SIZE);
        assert_eq!(v.root_hash, hex::encode(root));
        assert_eq!(v.salt, hex::encode(salt));
        assert_eq!(&written[..data.len()], &data[..]);
        assert!(written[data.len()..v.hash_offset as usize]
            .iter()
            .all(|&b| b == 0));
        assert_eq!(&written[v.hash_offset as usize..], &tree[..]);
    }

    /// Byte for byte what cryptsetup's `veritysetup format` writes, and the same root hash.
    #[test]
    fn the_tree_is_what_veritysetup_writes() {
        if let Some(why) = diskless_testkit::missing_tools(&["veritysetup"]) {
            return diskless_testkit::skip(&format!(
                "{why} (scripts/install-deps: cryptsetup-bin)"
            ));
        }
        let dir = tempfile::tempdir().unwrap();
        for blocks in [2usize, 128, 129, 301, 128 * 128 + 1] {
            let data: Vec<u8> = (0..blocks * BLOCK_SIZE as usize)
                .map(|i| (i * 13 % 241) as u8)
                .collect();
            let (data_path, hash_path) = (dir.path().join("data"), dir.path().join("hash"));
            std::fs::write(&data_path, &data).unwrap();
            let _ = std::fs::remove_file(&hash_path);
            let salt = [0xa5u8; 32];
            let out = std::process::Command::new("veritysetup")
                .args(["format", "--no-superblock", "--hash=sha256"])
                .args(["--data-block-size=4096", "--hash-block-size=4096"])
                .arg(format!("--salt={}", hex::encode(salt)))
                .arg(&data_path)
                .arg(&hash_path)
                .output()
                .unwrap();
            assert!(out.status.success(), "{out:?}");
            let stdout = String::from_utf8_lossy(&out.stdout);
            let (tree, root) = tree(&data, &salt);
            assert!(
                stdout.contains(&format!("Root hash:      \t{}", hex::encode(root))),
                "{blocks} blocks: {stdout}"
            );
            assert_eq!(
                std::fs::read(&hash_path).unwrap(),
                tree,
                "{blocks} blocks: the hash file differs"
            );
        }
    }
}
