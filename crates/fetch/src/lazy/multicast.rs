//! `lazy --multicast JOIN_URL`: the RAM copy filled from the boot server's multicast session
//! (the same member and receive loop as `get --multicast`: `crate::multicast`), while the
//! kernel's reads go on by HTTP at once.
//!
//! A fragment is written into the copy only where its chunk is missing: neither in the copy
//! nor being fetched by HTTP (a fetcher writes its chunk whole, under the plan's lock, as
//! the fragments here are written). A completed block is checked against the session's
//! digest and then against the image's hash tree, so against the root hash on the kernel
//! command line, as every block the helper serves; a chunk is in the copy once every block
//! of it passed both. What the session did not bring, the fill fetches by HTTP after it.

use super::tree::{Leaves, BLOCK_SIZE};
use super::RamCopy;
use crate::fetch::{NOTE_FAILED, NOTE_UNREACHABLE};
use crate::multicast::{split_note, Member, Target};
use diskless_multicast::{Layout, Receiver};
use std::os::unix::fs::FileExt;

/// How the session went for the copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Bytes of the data the session put in the copy (whole chunks, checked).
    Joined { multicast_bytes: u64 },
    /// Nothing arrived on the group: the fill is all HTTP.
    Unreachable(String),
    /// The session could not be used.
    Failed(String),
}

impl Outcome {
    /// What the `filled` report adds to its detail, as the `fetched` report of `get` does
    /// (read back by `diskless_boot::multicast::MulticastFetch`): the session's bytes and the
    /// rest of the image's `image_len` (the tree, the kernel's demands, the fill's repairs)
    /// by HTTP, or why HTTP did it all.
    pub fn note(&self, image_len: u64) -> String {
        match self {
            Outcome::Joined { multicast_bytes } => {
                split_note(*multicast_bytes, image_len.saturating_sub(*multicast_bytes))
            }
            Outcome::Unreachable(_) => NOTE_UNREACHABLE.to_string(),
            Outcome::Failed(_) => NOTE_FAILED.to_string(),
        }
    }
}

/// Join the session at `join_url` and put what it sends into `copy` (the first `data_len`
/// bytes of the image: the tree is in the copy already), until the sender has gone round
/// once, the copy is whole, or silence; then leave it.
pub(super) fn fill(join_url: &str, copy: &RamCopy, leaves: &Leaves, data_len: u64) -> Outcome {
    let mut member = match Member::join(join_url) {
        Ok(m) => m,
        Err(e) => return Outcome::Failed(e),
    };
    let layout = member.join.layout;
    if layout.image_len < data_len {
        member.leave();
        return Outcome::Failed(format!(
            "the session sends {} bytes, the image's data is {data_len}",
            layout.image_len
        ));
    }
    let mut target = CopyTarget::new(copy, leaves, layout, data_len);
    let heard = member.receive(&mut target);
    let unreachable = member.unreachable();
    member.leave();
    match heard {
        Err(e) => Outcome::Failed(e),
        Ok(false) => Outcome::Unreachable(unreachable),
        Ok(true) => Outcome::Joined {
            multicast_bytes: target.bytes,
        },
    }
}

/// The lazy copy as a session's target.
struct CopyTarget<'a> {
    copy: &'a RamCopy,
    leaves: &'a Leaves,
    layout: Layout,
    data_len: u64,
    /// Per block of the session: passed its digest and the tree.
    checked: Vec<bool>,
    buf: Vec<u8>,
    /// Bytes of the chunks the session made present.
    bytes: u64,
}

impl<'a> CopyTarget<'a> {
    fn new(copy: &'a RamCopy, leaves: &'a Leaves, layout: Layout, data_len: u64) -> Self {
        CopyTarget {
            copy,
            leaves,
            layout,
            data_len,
            checked: vec![false; layout.blocks() as usize],
            buf: vec![0u8; layout.block_size as usize],
            bytes: 0,
        }
    }
}

impl Target for CopyTarget<'_> {
    fn store(&mut self, offset: u64, bytes: &[u8]) -> Result<(), String> {
        let range = offset..offset + bytes.len() as u64;
        if range.end > self.data_len {
            return Ok(()); // the tree, in the copy since the start, checked
        }
        let plan = self.copy.plan.lock().expect("plan lock");
        if plan.is_missing(&range) {
            self.copy
                .file
                .write_all_at(bytes, offset)
                .map_err(|e| format!("writing the RAM copy: {e}"))?;
        }
        Ok(())
    }

    fn complete(&mut self, receiver: &mut Receiver, block: u32) -> Result<(), String> {
        let range = self.layout.block_range(block);
        if range.start >= self.data_len {
            return Ok(());
        }
        let data = range.start..range.end.min(self.data_len);
        let bytes = &mut self.buf[..(range.end - range.start) as usize];
        {
            let plan = self.copy.plan.lock().expect("plan lock");
            if !plan.is_missing(&data) {
                // HTTP has (or is fetching) these bytes: its copy is the one that counts.
                return Ok(());
            }
            // A block past the data's end reads the tree after it, in place since the start.
            self.copy
                .file
                .read_exact_at(bytes, range.start)
                .map_err(|e| format!("reading the RAM copy: {e}"))?;
        }
        if let Err(e) = receiver.check_block(block, bytes) {
            eprintln!("diskless: multicast: {e}");
            return Ok(());
        }
        let len = (data.end - data.start) as usize;
        if let Some(&bad) = self
            .leaves
            .bad_blocks(data.start / BLOCK_SIZE, &bytes[..len])
            .first()
        {
            eprintln!(
                "diskless: warning: multicast: block {bad} matches the session's digest but not \
                 the image's hash tree: refused, to be fetched by HTTP"
            );
            return Ok(());
        }
        self.checked[block as usize] = true;
        let size = u64::from(self.layout.block_size);
        let mut plan = self.copy.plan.lock().expect("plan lock");
        for c in plan.chunks_of(&data) {
            let chunk = plan.range(c);
            let mut blocks = chunk.start / size..chunk.end.div_ceil(size);
            if plan.is_missing(&chunk) && blocks.all(|b| self.checked[b as usize]) {
                plan.done(c, std::time::Instant::now());
                self.bytes += chunk.end - chunk.start;
            }
        }
        self.copy.changed.notify_all();
        Ok(())
    }

    fn is_whole(&self) -> bool {
        self.copy.plan.lock().expect("plan lock").is_whole()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::multicast::take;
    use diskless_boot::multicast::MulticastFetch;
    use diskless_multicast::{block_digests, Carousel};

    /// 300 data blocks (five chunks, the last short) and their tree, the RAM copy of them
    /// with the tree in place, and the leaves checked against the root hash.
    struct Seat {
        image: Vec<u8>,
        data_len: u64,
        leaves: Leaves,
        copy: RamCopy,
        _dir: tempfile::TempDir,
    }

    fn seat() -> Seat {
        let data: Vec<u8> = (0..300 * 4096).map(|i| (i * 37 % 251) as u8).collect();
        let salt = [5u8; 32];
        let (tree, root) = diskless_image::verity::tree(&data, &salt);
        let leaves = Leaves::check(&tree, 300, &salt, &root).unwrap();
        let image = [data.clone(), tree.clone()].concat();
        let dir = tempfile::tempdir().unwrap();
        let copy = RamCopy::create(
            &dir.path().join("root.squashfs"),
            image.len() as u64,
            data.len() as u64,
            &tree,
        )
        .unwrap();
        Seat {
            image,
            data_len: data.len() as u64,
            leaves,
            copy,
            _dir: dir,
        }
    }

    /// `rounds` rounds of a session sending `sent` (digests of `sent` too), into the copy.
    fn session(seat: &Seat, sent: &[u8], rounds: u64, forged_first: bool) -> u64 {
        let layout = Layout::new(sent.len() as u64, 65536, 1024).unwrap();
        let mut receiver = Receiver::new(layout, 9, block_digests(&layout, sent)).unwrap();
        let mut target = CopyTarget::new(&seat.copy, &seat.leaves, layout, seat.data_len);
        let mut sender = Carousel::new(layout, 9);
        let mut buf = [0u8; 2048];
        if forged_first {
            // A fragment of block 0 that is not the image's: the block fails its digest,
            // is forgotten, and the next round brings it.
            let junk = [0x66u8; 1024];
            let len = diskless_multicast::wire::Packet {
                session: 9,
                block: 0,
                fragment: 5,
                round: 0,
                payload: &junk,
            }
            .emit(&mut buf);
            take(&mut receiver, &buf[..len], &mut target)
                .unwrap()
                .unwrap();
        }
        for _ in 0..rounds * layout.fragments_per_round() {
            let f = sender.next_fragment();
            let r = f.byte_range();
            let len = f
                .packet(&sent[r.start as usize..r.end as usize])
                .emit(&mut buf);
            take(&mut receiver, &buf[..len], &mut target)
                .unwrap()
                .unwrap();
        }
        target.bytes
    }

    #[test]
    fn the_session_fills_the_copy_by_checked_chunks_around_what_http_fetches() {
        let s = seat();
        // The kernel waits for chunk 1: HTTP is fetching it when the session starts.
        {
            let mut plan = s.copy.plan.lock().unwrap();
            assert!(!plan.demand(300_000..300_001));
            assert_eq!(plan.next_demanded(std::time::Instant::now()), Some(1));
        }
        let chunk = super::super::plan::CHUNK;
        let by_session = session(&s, &s.image, 2, true);
        assert_eq!(
            by_session,
            s.data_len - chunk,
            "every chunk but the demanded one"
        );
        {
            let plan = s.copy.plan.lock().unwrap();
            assert!(!plan.is_whole());
            assert!(!plan.is_missing(&(chunk..chunk + 1)), "left to HTTP");
        }
        // Chunk 1's fetcher writes it whole: the copy is the image, the tree untouched.
        let range = chunk as usize..2 * chunk as usize;
        s.copy
            .file
            .write_all_at(&s.image[range.clone()], chunk)
            .unwrap();
        s.copy
            .plan
            .lock()
            .unwrap()
            .done(1, std::time::Instant::now());
        assert!(s.copy.plan.lock().unwrap().is_whole());
        let mut copy = vec![0u8; s.image.len()];
        s.copy.file.read_exact_at(&mut copy, 0).unwrap();
        assert_eq!(copy, s.image);
    }

    #[test]
    fn a_block_the_session_vouches_for_but_the_tree_does_not_is_left_to_http() {
        let s = seat();
        // A session of another image with digests of its own (a forged server): one byte
        // of chunk 3 differs.
        let mut other = s.image.clone();
        other[3 * 262_144 + 70_000] ^= 1;
        let by_session = session(&s, &other, 1, false);
        let chunk = super::super::plan::CHUNK;
        assert_eq!(by_session, s.data_len - chunk);
        let plan = s.copy.plan.lock().unwrap();
        assert!(
            plan.is_missing(&(3 * chunk..4 * chunk)),
            "refused by the tree"
        );
        assert!(!plan.is_missing(&(0..1)));
    }

    #[test]
    fn the_filled_report_says_how_multicast_went_as_the_fetched_one_does() {
        let detail = format!(
            "seconds=40.0 bytes=1000 fetched=130 demanded=100{}",
            Outcome::Joined {
                multicast_bytes: 900
            }
            .note(1000)
        );
        let filled = diskless_boot::FilledDetail::parse(&detail).unwrap();
        assert_eq!((filled.bytes, filled.fetched), (1000, 130));
        assert_eq!(
            MulticastFetch::parse(&detail),
            Some(MulticastFetch::Joined {
                multicast_bytes: 900,
                http_bytes: 100
            })
        );
        for (outcome, said) in [
            (
                Outcome::Unreachable(String::new()),
                MulticastFetch::Unreachable,
            ),
            (Outcome::Failed(String::new()), MulticastFetch::Failed),
        ] {
            let detail = format!(
                "seconds=1.0 bytes=1 fetched=1 demanded=0{}",
                outcome.note(1)
            );
            assert!(diskless_boot::FilledDetail::parse(&detail).is_some());
            assert_eq!(MulticastFetch::parse(&detail), Some(said));
        }
    }
}
