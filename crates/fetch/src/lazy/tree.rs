//! The image's dm-verity hash tree, checked in userspace: every data block the helper
//! receives is checked against it before the kernel gets it or the RAM copy keeps it.
//!
//! The layout is the one diskless_image::verity appends to root.squashfs (the kernel's
//! format 1: levels top first after the data, `sha256(salt || block)`, 128 digests to a
//! 4 KiB hash block). The helper fetches the whole tree first (a few hundred KiB for an
//! image of hundreds of MiB), checks every level up to the root hash from the command line,
//! and then keeps only level 0: one digest for each data block.

use sha2::{Digest, Sha256};

pub const BLOCK_SIZE: u64 = 4096;
const DIGEST: usize = 32;
const PER_BLOCK: u64 = BLOCK_SIZE / DIGEST as u64;

/// Blocks in each level of the tree over `data_blocks`, from level 0 (the data's digests)
/// up; none for one block (verity_ctr makes no level then).
pub fn level_blocks(data_blocks: u64) -> Vec<u64> {
    let mut levels = Vec::new();
    let mut n = data_blocks;
    while n > 1 {
        n = n.div_ceil(PER_BLOCK);
        levels.push(n);
    }
    levels
}

/// Bytes of the tree over `data_blocks`.
pub fn tree_len(data_blocks: u64) -> u64 {
    level_blocks(data_blocks).iter().sum::<u64>() * BLOCK_SIZE
}

fn salted(salt: &[u8], block: &[u8]) -> [u8; DIGEST] {
    let mut h = Sha256::new();
    h.update(salt);
    h.update(block);
    h.finalize().into()
}

/// The checked digests of the data blocks.
pub struct Leaves {
    salt: Vec<u8>,
    digests: Vec<[u8; DIGEST]>,
}

impl Leaves {
    /// Check `tree` (the image's bytes after its `data_blocks` data blocks) level by level
    /// up to `root`; the tree is refused if any block of it does not match.
    pub fn check(
        tree: &[u8],
        data_blocks: u64,
        salt: &[u8],
        root: &[u8; DIGEST],
    ) -> Result<Leaves, String> {
        let levels = level_blocks(data_blocks);
        if tree.len() as u64 != tree_len(data_blocks) {
            return Err(format!(
                "the hash tree has {} bytes, {} data blocks need {}",
                tree.len(),
                data_blocks,
                tree_len(data_blocks)
            ));
        }
        if levels.is_empty() {
            // One data block: the root hash is its digest.
            return Ok(Leaves {
                salt: salt.to_vec(),
                digests: vec![*root],
            });
        }
        // Levels are stored top first: find where each starts.
        let bs = BLOCK_SIZE as usize;
        let mut starts = vec![0usize; levels.len()];
        let mut at = 0usize;
        for (i, &n) in levels.iter().enumerate().rev() {
            starts[i] = at;
            at += n as usize * bs;
        }
        let level = |i: usize| &tree[starts[i]..starts[i] + levels[i] as usize * bs];
        let top = levels.len() - 1;
        if salted(salt, level(top)) != *root {
            return Err("the hash tree's top block does not match diskless.roothash=".into());
        }
        for i in (0..top).rev() {
            let parent = level(i + 1);
            for (j, block) in level(i).chunks(bs).enumerate() {
                if salted(salt, block)[..] != parent[j * DIGEST..(j + 1) * DIGEST] {
                    return Err(format!(
                        "hash block {j} of level {i} of the tree does not match its parent"
                    ));
                }
            }
        }
        let digests = level(0)
            .chunks(DIGEST)
            .take(data_blocks as usize)
            .map(|d| d.try_into().expect("32 bytes"))
            .collect();
        Ok(Leaves {
            salt: salt.to_vec(),
            digests,
        })
    }

    /// Check the data blocks starting at block `first`: the indexes of those that do not
    /// match, in order.
    pub fn bad_blocks(&self, first: u64, data: &[u8]) -> Vec<u64> {
        data.chunks(BLOCK_SIZE as usize)
            .enumerate()
            .filter(|(i, block)| {
                let index = first + *i as u64;
                block.len() != BLOCK_SIZE as usize
                    || self
                        .digests
                        .get(index as usize)
                        .is_none_or(|d| salted(&self.salt, block) != *d)
            })
            .map(|(i, _)| first + i as u64)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(blocks: usize) -> (Vec<u8>, Vec<u8>, [u8; 32]) {
        let data: Vec<u8> = (0..blocks * 4096).map(|i| (i * 13 % 253) as u8).collect();
        let (tree, root) = diskless_image::verity::tree(&data, &[7; 32]);
        (data, tree, root)
    }

    #[test]
    fn the_builders_tree_is_accepted_and_checks_blocks() {
        for blocks in [1, 2, 128, 129, 301] {
            let (data, tree, root) = image(blocks);
            assert_eq!(
                tree.len() as u64,
                tree_len(blocks as u64),
                "{blocks} blocks"
            );
            let leaves = Leaves::check(&tree, blocks as u64, &[7; 32], &root).unwrap();
            assert!(leaves.bad_blocks(0, &data).is_empty(), "{blocks} blocks");
            let mut bad = data.clone();
            let last = blocks - 1;
            bad[last * 4096 + 5] ^= 1;
            assert_eq!(leaves.bad_blocks(0, &bad), [last as u64]);
            if last > 0 {
                // Every bad block is named, not only the first.
                bad[5] ^= 1;
                assert_eq!(leaves.bad_blocks(0, &bad), [0, last as u64]);
            }
            assert!(leaves
                .bad_blocks(last as u64, &data[last * 4096..])
                .is_empty());
            // A block past the data, or a short one, is never right.
            assert_eq!(
                leaves.bad_blocks(blocks as u64, &data[..4096]),
                [blocks as u64]
            );
            assert_eq!(leaves.bad_blocks(0, &data[..100]), [0]);
        }
    }

    #[test]
    fn a_changed_tree_or_root_is_refused() {
        let (_, tree, root) = image(301);
        let mut wrong_root = root;
        wrong_root[0] ^= 1;
        assert!(Leaves::check(&tree, 301, &[7; 32], &wrong_root)
            .err()
            .unwrap()
            .contains("roothash"));
        // The last block of level 0 (stored last).
        let mut bad = tree.clone();
        let n = bad.len();
        bad[n - 1] ^= 1;
        assert!(Leaves::check(&bad, 301, &[7; 32], &root)
            .err()
            .unwrap()
            .contains("level 0"));
        assert!(Leaves::check(&tree[..4096], 301, &[7; 32], &root)
            .err()
            .unwrap()
            .contains("need"));
        assert!(Leaves::check(&tree, 301, &[8; 32], &root).is_err());
    }
}
