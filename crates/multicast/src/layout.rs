//! How an image is cut: blocks of `block_size` bytes (the last one shorter), each verified by
//! its sha256, and each block into fragments of `fragment_size` bytes, one per datagram.

use sha2::{Digest, Sha256};
use std::ops::Range;

/// Bytes of one block digest (sha256).
pub const DIGEST_LEN: usize = 32;

/// The most fragments a block may have: a receiver keeps a block's fragments in one `u64`.
pub const MAX_FRAGMENTS_PER_BLOCK: u32 = 64;

/// The cut of one image, as the server announces it when a seat joins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// Bytes of the whole image.
    pub image_len: u64,
    /// Bytes of every block but the last.
    pub block_size: u32,
    /// Bytes of every fragment but a block's last.
    pub fragment_size: u16,
}

/// A layout that cannot be used, with what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LayoutError {
    /// An empty image, block or fragment.
    #[error("layout: image, block and fragment sizes must be more than 0 (got {0:?})")]
    Zero(Layout),
    /// A block of more fragments than a receiver tracks.
    #[error(
        "layout: a block of {block_size} bytes is more than {MAX_FRAGMENTS_PER_BLOCK} fragments of {fragment_size}"
    )]
    TooManyFragments {
        /// The block size asked for.
        block_size: u32,
        /// The fragment size asked for.
        fragment_size: u16,
    },
    /// More blocks than a `u32` numbers.
    #[error("layout: an image of {0} bytes has too many blocks")]
    TooManyBlocks(u64),
    /// A digest list whose length is not one digest per block.
    #[error("digest list: {got} bytes, expected {expected} ({DIGEST_LEN} per block)")]
    DigestList {
        /// Bytes received.
        got: usize,
        /// Bytes the layout needs.
        expected: usize,
    },
}

impl Layout {
    /// A checked layout.
    pub fn new(image_len: u64, block_size: u32, fragment_size: u16) -> Result<Layout, LayoutError> {
        let layout = Layout {
            image_len,
            block_size,
            fragment_size,
        };
        if image_len == 0 || block_size == 0 || fragment_size == 0 {
            return Err(LayoutError::Zero(layout));
        }
        if block_size.div_ceil(u32::from(fragment_size)) > MAX_FRAGMENTS_PER_BLOCK {
            return Err(LayoutError::TooManyFragments {
                block_size,
                fragment_size,
            });
        }
        if image_len.div_ceil(u64::from(block_size)) > u64::from(u32::MAX) {
            return Err(LayoutError::TooManyBlocks(image_len));
        }
        Ok(layout)
    }

    /// Number of blocks.
    pub fn blocks(&self) -> u32 {
        self.image_len.div_ceil(u64::from(self.block_size)) as u32
    }

    /// The bytes of block `block` in the image.
    pub fn block_range(&self, block: u32) -> Range<u64> {
        let start = u64::from(block) * u64::from(self.block_size);
        start..(start + u64::from(self.block_size)).min(self.image_len)
    }

    /// Number of fragments of block `block`.
    pub fn fragments(&self, block: u32) -> u16 {
        let r = self.block_range(block);
        (r.end - r.start).div_ceil(u64::from(self.fragment_size)) as u16
    }

    /// The bytes of fragment `fragment` of block `block` in the image.
    pub fn fragment_range(&self, block: u32, fragment: u16) -> Range<u64> {
        let block_range = self.block_range(block);
        let start = block_range.start + u64::from(fragment) * u64::from(self.fragment_size);
        start..(start + u64::from(self.fragment_size)).min(block_range.end)
    }

    /// Fragments in one round (every fragment of every block once).
    pub fn fragments_per_round(&self) -> u64 {
        let full = u64::from(self.fragments(0));
        let last = self.blocks() - 1;
        full * u64::from(last) + u64::from(self.fragments(last))
    }

    /// Bytes of the digest list of this layout.
    pub fn digest_list_len(&self) -> usize {
        self.blocks() as usize * DIGEST_LEN
    }

    /// The digest list as sent over HTTP (the digests end to end) cut into digests.
    pub fn parse_digests(&self, list: &[u8]) -> Result<Vec<[u8; DIGEST_LEN]>, LayoutError> {
        if list.len() != self.digest_list_len() {
            return Err(LayoutError::DigestList {
                got: list.len(),
                expected: self.digest_list_len(),
            });
        }
        Ok(list
            .chunks_exact(DIGEST_LEN)
            .map(|c| c.try_into().expect("chunks of DIGEST_LEN"))
            .collect())
    }
}

/// The sha256 of every block of `image` (what the server computes from the stored image).
pub fn block_digests(layout: &Layout, image: &[u8]) -> Vec<[u8; DIGEST_LEN]> {
    (0..layout.blocks())
        .map(|b| {
            let r = layout.block_range(b);
            Sha256::digest(&image[r.start as usize..r.end as usize]).into()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_and_fragments_cover_the_image_exactly() {
        let layout = Layout::new(10_000, 4096, 1000).unwrap();
        assert_eq!(layout.blocks(), 3);
        assert_eq!(layout.block_range(2), 8192..10_000);
        assert_eq!(layout.fragments(0), 5);
        assert_eq!(layout.fragment_range(0, 4), 4000..4096);
        assert_eq!(layout.fragments(2), 2);
        assert_eq!(layout.fragment_range(2, 1), 9192..10_000);
        assert_eq!(layout.fragments_per_round(), 5 + 5 + 2);
        let mut next = 0;
        for b in 0..layout.blocks() {
            for f in 0..layout.fragments(b) {
                let r = layout.fragment_range(b, f);
                assert_eq!(r.start, next);
                next = r.end;
            }
        }
        assert_eq!(next, 10_000);
    }

    #[test]
    fn unusable_layouts_are_refused() {
        assert!(matches!(Layout::new(0, 1, 1), Err(LayoutError::Zero(_))));
        let err = Layout::new(1 << 20, 65 * 1024, 1024).unwrap_err();
        assert!(err.to_string().contains("more than 64 fragments"), "{err}");
        assert!(Layout::new(1 << 20, 64 * 1024, 1024).is_ok());
    }

    #[test]
    fn a_digest_list_of_the_wrong_length_is_refused() {
        let layout = Layout::new(10_000, 4096, 1024).unwrap();
        let err = layout.parse_digests(&[0; 64]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "digest list: 64 bytes, expected 96 (32 per block)"
        );
        assert_eq!(layout.parse_digests(&[7; 96]).unwrap()[2], [7; 32]);
    }
}
