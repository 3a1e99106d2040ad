//! The seat's side: which fragments it holds, which blocks are verified, what is missing.
//!
//! The caller writes an accepted fragment at its offset in the RAM copy; when a block's last
//! fragment is in, it reads the block back and hands it to [`Receiver::check_block`]. Only a
//! block whose sha256 matches the digest list counts as present: a forged or damaged
//! fragment makes its block fail, the block's fragments are forgotten and come again (next
//! round, or HTTP). The RAM copy is mounted only after the whole image's sha256 matched too.

use crate::layout::DIGEST_LEN;
use crate::wire::Packet;
use crate::{Layout, LayoutError};
use sha2::{Digest, Sha256};
use std::ops::Range;

/// A seat's state of one image (see the module docs).
#[derive(Debug, Clone)]
pub struct Receiver {
    layout: Layout,
    session: u64,
    digests: Vec<[u8; DIGEST_LEN]>,
    /// Per block: bit `f` set when fragment `f` is written.
    held: Vec<u64>,
    verified: Vec<bool>,
    verified_blocks: u32,
    /// Round, block and fragment of the first packet accepted.
    first: Option<(u32, u32, u16)>,
    lapped: bool,
    /// Bytes of fragments accepted and new.
    received_bytes: u64,
    /// Blocks that failed their digest.
    failed_blocks: u64,
}

/// Where an accepted packet's payload goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placed {
    /// Its first byte in the image.
    pub offset: u64,
    /// False for a fragment already held: nothing to write.
    pub new: bool,
    /// The block this fragment completed: read it back and [`Receiver::check_block`] it.
    pub completes: Option<u32>,
}

/// Why a packet or block is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RejectError {
    /// A packet of another session (another image, version, or a restarted sender).
    #[error("packet of session {got:016x}, this seat joined {expected:016x}")]
    WrongSession {
        /// The packet's.
        got: u64,
        /// The seat's.
        expected: u64,
    },
    /// A block number past the image.
    #[error("block {block} is past the image's {blocks} blocks")]
    Block {
        /// The packet's.
        block: u32,
        /// The layout's.
        blocks: u32,
    },
    /// A fragment number past its block, or a payload of the wrong length for it.
    #[error("block {block} fragment {fragment}: {len} bytes do not fit the layout")]
    Fragment {
        /// The packet's block.
        block: u32,
        /// The packet's fragment.
        fragment: u16,
        /// The payload's length.
        len: usize,
    },
    /// A block whose bytes do not match its digest.
    #[error("block {0} does not match its sha256: dropped, to be received again")]
    Digest(u32),
}

impl Receiver {
    /// A seat that joined `session`, with the image's block digests (one per block).
    pub fn new(
        layout: Layout,
        session: u64,
        digests: Vec<[u8; DIGEST_LEN]>,
    ) -> Result<Receiver, LayoutError> {
        let blocks = layout.blocks() as usize;
        if digests.len() != blocks {
            return Err(LayoutError::DigestList {
                got: digests.len() * DIGEST_LEN,
                expected: layout.digest_list_len(),
            });
        }
        Ok(Receiver {
            layout,
            session,
            digests,
            held: vec![0; blocks],
            verified: vec![false; blocks],
            verified_blocks: 0,
            first: None,
            lapped: false,
            received_bytes: 0,
            failed_blocks: 0,
        })
    }

    /// The layout.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Every block verified.
    pub fn is_complete(&self) -> bool {
        self.verified_blocks == self.layout.blocks()
    }

    /// Blocks verified so far.
    pub fn verified_blocks(&self) -> u32 {
        self.verified_blocks
    }

    /// Bytes of new fragments accepted from packets.
    pub fn received_bytes(&self) -> u64 {
        self.received_bytes
    }

    /// Blocks that failed their digest so far.
    pub fn failed_blocks(&self) -> u64 {
        self.failed_blocks
    }

    /// The sender has gone once round the whole image since this seat's first packet: what
    /// was not received by now is lost and worth repairing.
    pub fn has_lapped(&self) -> bool {
        self.lapped
    }

    fn all_fragments(&self, block: u32) -> u64 {
        let n = self.layout.fragments(block);
        if n == 64 {
            u64::MAX
        } else {
            (1u64 << n) - 1
        }
    }

    /// Check a packet against the session and layout; say where its payload goes.
    pub fn accept(&mut self, packet: &Packet<'_>) -> Result<Placed, RejectError> {
        if packet.session != self.session {
            return Err(RejectError::WrongSession {
                got: packet.session,
                expected: self.session,
            });
        }
        let blocks = self.layout.blocks();
        if packet.block >= blocks {
            return Err(RejectError::Block {
                block: packet.block,
                blocks,
            });
        }
        let (block, fragment) = (packet.block, packet.fragment);
        let range = self.layout.fragment_range(block, fragment);
        if fragment >= self.layout.fragments(block)
            || packet.payload.len() as u64 != range.end - range.start
        {
            return Err(RejectError::Fragment {
                block,
                fragment,
                len: packet.payload.len(),
            });
        }
        let here = (packet.round, block, fragment);
        match self.first {
            None => self.first = Some(here),
            Some((round, b, f)) => {
                let past_start = (block, fragment) >= (b, f);
                let later = packet.round.wrapping_sub(round);
                if (later == 1 && past_start) || (2..u32::MAX / 2).contains(&later) {
                    self.lapped = true;
                }
            }
        }
        let bit = 1u64 << fragment;
        if self.verified[block as usize] || self.held[block as usize] & bit != 0 {
            return Ok(Placed {
                offset: range.start,
                new: false,
                completes: None,
            });
        }
        self.held[block as usize] |= bit;
        self.received_bytes += range.end - range.start;
        let completes = (self.held[block as usize] == self.all_fragments(block)).then_some(block);
        Ok(Placed {
            offset: range.start,
            new: true,
            completes,
        })
    }

    /// Verify a complete block's bytes (as read back from the RAM copy). On a mismatch its
    /// fragments are forgotten, so they are received (or repaired) again.
    pub fn check_block(&mut self, block: u32, data: &[u8]) -> Result<(), RejectError> {
        let b = block as usize;
        if self.verified[b] {
            return Ok(());
        }
        if Sha256::digest(data).as_slice() == self.digests[b] {
            self.verified[b] = true;
            self.verified_blocks += 1;
            self.held[b] = self.all_fragments(block);
            Ok(())
        } else {
            self.held[b] = 0;
            self.failed_blocks += 1;
            Err(RejectError::Digest(block))
        }
    }

    /// The byte ranges not yet held, whole fragments, adjacent ones merged: what to ask the
    /// HTTP server for.
    pub fn missing_ranges(&self) -> Vec<Range<u64>> {
        let mut ranges: Vec<Range<u64>> = Vec::new();
        for block in 0..self.layout.blocks() {
            if self.verified[block as usize] {
                continue;
            }
            for fragment in 0..self.layout.fragments(block) {
                if self.held[block as usize] & (1u64 << fragment) != 0 {
                    continue;
                }
                let r = self.layout.fragment_range(block, fragment);
                match ranges.last_mut() {
                    Some(last) if last.end == r.start => last.end = r.end,
                    _ => ranges.push(r),
                }
            }
        }
        ranges
    }

    /// Bytes not yet held.
    pub fn missing_bytes(&self) -> u64 {
        self.missing_ranges().iter().map(|r| r.end - r.start).sum()
    }

    /// `range` (one of [`Receiver::missing_ranges`]) was written from another source: its
    /// fragments are held. Returns the blocks now complete, to [`Receiver::check_block`].
    pub fn filled(&mut self, range: Range<u64>) -> Vec<u32> {
        let mut complete = Vec::new();
        let block_size = u64::from(self.layout.block_size);
        let first = (range.start / block_size) as u32;
        let last = ((range.end.max(1) - 1) / block_size) as u32;
        for block in first..=last.min(self.layout.blocks() - 1) {
            if self.verified[block as usize] {
                continue;
            }
            for fragment in 0..self.layout.fragments(block) {
                let r = self.layout.fragment_range(block, fragment);
                if r.start >= range.start && r.end <= range.end {
                    self.held[block as usize] |= 1u64 << fragment;
                }
            }
            if self.held[block as usize] == self.all_fragments(block) {
                complete.push(block);
            }
        }
        complete
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{block_digests, Carousel};

    fn image() -> Vec<u8> {
        (0..10_000u32).map(|i| (i * 31 % 253) as u8).collect()
    }

    fn setup() -> (Vec<u8>, Layout, Receiver) {
        let image = image();
        let layout = Layout::new(image.len() as u64, 4096, 1024).unwrap();
        let receiver = Receiver::new(layout, 42, block_digests(&layout, &image)).unwrap();
        (image, layout, receiver)
    }

    /// Feeds `packet` as a seat would: write it into `copy`, check a block it completes.
    fn deliver(r: &mut Receiver, copy: &mut [u8], packet: &Packet<'_>) -> Result<(), RejectError> {
        let placed = r.accept(packet)?;
        if placed.new {
            let at = placed.offset as usize;
            copy[at..at + packet.payload.len()].copy_from_slice(packet.payload);
        }
        if let Some(block) = placed.completes {
            let range = r.layout().block_range(block);
            r.check_block(block, &copy[range.start as usize..range.end as usize])?;
        }
        Ok(())
    }

    fn fragment<'a>(
        image: &'a [u8],
        layout: &Layout,
        session: u64,
        block: u32,
        fragment: u16,
    ) -> Packet<'a> {
        let r = layout.fragment_range(block, fragment);
        Packet {
            session,
            block,
            fragment,
            round: 0,
            payload: &image[r.start as usize..r.end as usize],
        }
    }

    #[test]
    fn a_seat_joining_mid_round_completes_in_the_next_and_knows_it_lapped() {
        let (image, layout, mut r) = setup();
        let mut sender = Carousel::new(layout, 42);
        for _ in 0..5 {
            sender.next_fragment(); // sent before the seat joined
        }
        let mut copy = vec![0u8; image.len()];
        let mut sent = 0;
        while !r.is_complete() {
            let f = sender.next_fragment();
            let range = f.byte_range();
            deliver(
                &mut r,
                &mut copy,
                &f.packet(&image[range.start as usize..range.end as usize]),
            )
            .unwrap();
            sent += 1;
        }
        assert_eq!(copy, image);
        assert_eq!(sent, 10, "exactly one pass over the 10 fragments");
        assert!(!r.has_lapped(), "not yet back at its first fragment");
        let f = sender.next_fragment();
        let range = f.byte_range();
        r.accept(&f.packet(&image[range.start as usize..range.end as usize]))
            .unwrap();
        assert!(r.has_lapped());
    }

    #[test]
    fn a_forged_packet_never_counts_and_its_block_comes_again() {
        let (image, layout, mut r) = setup();
        let mut copy = vec![0u8; image.len()];
        let forged_bytes = vec![0x66u8; 1024];
        let mut forged = fragment(&image, &layout, 42, 1, 2);
        forged.payload = &forged_bytes;
        for f in [0, 1, 3] {
            deliver(&mut r, &mut copy, &fragment(&image, &layout, 42, 1, f)).unwrap();
        }
        assert_eq!(
            deliver(&mut r, &mut copy, &forged),
            Err(RejectError::Digest(1))
        );
        assert_eq!(r.verified_blocks(), 0);
        assert_eq!(r.failed_blocks(), 1);
        // The whole block is missing again, and the genuine fragments fill it.
        assert_eq!(r.missing_bytes(), 10_000, "block 1 is all missing again");
        for f in 0..4 {
            deliver(&mut r, &mut copy, &fragment(&image, &layout, 42, 1, f)).unwrap();
        }
        assert_eq!(r.verified_blocks(), 1);
        assert_eq!(&copy[4096..8192], &image[4096..8192]);
    }

    #[test]
    fn packets_of_another_session_or_outside_the_layout_are_refused() {
        let (image, layout, mut r) = setup();
        let other = fragment(&image, &layout, 43, 0, 0);
        assert_eq!(
            r.accept(&other).unwrap_err().to_string(),
            "packet of session 000000000000002b, this seat joined 000000000000002a"
        );
        let mut past = fragment(&image, &layout, 42, 0, 0);
        past.block = 3;
        assert_eq!(
            r.accept(&past),
            Err(RejectError::Block {
                block: 3,
                blocks: 3
            })
        );
        let mut short = fragment(&image, &layout, 42, 0, 0);
        short.payload = &image[..1000];
        assert!(matches!(
            r.accept(&short),
            Err(RejectError::Fragment { len: 1000, .. })
        ));
        let mut beyond = fragment(&image, &layout, 42, 2, 0);
        beyond.fragment = 2; // block 2 has fragments 0 and 1
        assert!(matches!(
            r.accept(&beyond),
            Err(RejectError::Fragment { .. })
        ));
        assert_eq!(r.received_bytes(), 0);
        assert_eq!(r.missing_bytes(), 10_000);
    }

    #[test]
    fn missing_ranges_merge_and_filling_them_completes_the_blocks() {
        let (image, layout, mut r) = setup();
        let mut copy = vec![0u8; image.len()];
        for (b, f) in [(0, 0), (0, 1), (0, 2), (0, 3), (1, 1), (2, 1)] {
            deliver(&mut r, &mut copy, &fragment(&image, &layout, 42, b, f)).unwrap();
        }
        assert_eq!(r.missing_ranges(), [4096..5120, 6144..9216]);
        let mut to_check = Vec::new();
        for range in r.missing_ranges() {
            copy[range.start as usize..range.end as usize]
                .copy_from_slice(&image[range.start as usize..range.end as usize]);
            to_check.extend(r.filled(range));
        }
        assert_eq!(to_check, [1, 2]);
        for b in to_check {
            let range = layout.block_range(b);
            r.check_block(b, &copy[range.start as usize..range.end as usize])
                .unwrap();
        }
        assert!(r.is_complete());
        assert!(r.missing_ranges().is_empty());
    }

    #[test]
    fn a_duplicate_is_not_written_twice() {
        let (image, layout, mut r) = setup();
        let p = fragment(&image, &layout, 42, 0, 0);
        assert!(r.accept(&p).unwrap().new);
        assert!(!r.accept(&p).unwrap().new);
        assert_eq!(r.received_bytes(), 1024);
    }
}
