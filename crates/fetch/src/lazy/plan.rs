//! The fill plan of the RAM copy, sans-IO: which chunks of the image are in RAM, which are
//! being fetched, and which to fetch next (what the kernel is waiting for first, then the
//! rest in order).
//!
//! A chunk is the unit of a Range request and of the bookkeeping: [`CHUNK`] bytes, also the
//! read-ahead of a read the kernel is waiting for (it asks for 4-128 KiB at a time; the
//! chunk around it usually holds what it asks for next). Anything that has the bytes of a
//! chunk (an HTTP worker, later a multicast receiver) writes them to the copy and calls
//! [`Plan::done`]; the plan does not care where they came from.

use std::collections::VecDeque;
use std::ops::Range;

/// Bytes a chunk holds: 256 KiB (64 blocks).
pub const CHUNK: u64 = 256 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Missing,
    Fetching,
    Present,
}

/// The state of every chunk of an image of `len` bytes.
#[derive(Debug)]
pub struct Plan {
    len: u64,
    chunk: u64,
    states: Vec<State>,
    /// Chunks the kernel waits for, oldest first (each at most once).
    demanded: VecDeque<u64>,
    /// Every chunk before it is fetching or present.
    cursor: u64,
    present: u64,
    /// Bytes of the chunks present.
    present_bytes: u64,
    /// Bytes fetched because the kernel was waiting for them.
    pub demanded_bytes: u64,
}

impl Plan {
    pub fn new(len: u64, chunk: u64) -> Plan {
        let n = len.div_ceil(chunk);
        Plan {
            len,
            chunk,
            states: vec![State::Missing; n as usize],
            demanded: VecDeque::new(),
            cursor: 0,
            present: 0,
            present_bytes: 0,
            demanded_bytes: 0,
        }
    }

    /// The byte range chunk `index` covers (the last one may be short).
    pub fn range(&self, index: u64) -> Range<u64> {
        index * self.chunk..((index + 1) * self.chunk).min(self.len)
    }

    fn chunks(&self, bytes: &Range<u64>) -> Range<u64> {
        if bytes.start >= bytes.end {
            return 0..0;
        }
        bytes.start / self.chunk..bytes.end.min(self.len).div_ceil(self.chunk)
    }

    /// The chunks that hold `bytes`.
    pub fn chunks_of(&self, bytes: &Range<u64>) -> Range<u64> {
        self.chunks(bytes)
    }

    /// No chunk that holds `bytes` is present or being fetched: another source may write
    /// there (a chunk being fetched is written whole by its fetcher).
    pub fn is_missing(&self, bytes: &Range<u64>) -> bool {
        self.chunks(bytes)
            .all(|c| self.states[c as usize] == State::Missing)
    }

    /// The kernel waits for `bytes`: their missing chunks go first. Returns whether they are
    /// all present already.
    pub fn demand(&mut self, bytes: Range<u64>) -> bool {
        let mut all = true;
        for c in self.chunks(&bytes) {
            match self.states[c as usize] {
                State::Present => {}
                State::Fetching => all = false,
                State::Missing => {
                    all = false;
                    if !self.demanded.contains(&c) {
                        self.demanded.push_back(c);
                    }
                }
            }
        }
        all
    }

    /// The oldest chunk the kernel waits for that no one fetches yet, marked as being
    /// fetched.
    pub fn next_demanded(&mut self) -> Option<u64> {
        while let Some(c) = self.demanded.pop_front() {
            if self.states[c as usize] == State::Missing {
                self.states[c as usize] = State::Fetching;
                self.demanded_bytes += self.range(c).end - self.range(c).start;
                return Some(c);
            }
        }
        None
    }

    /// The first missing chunk in order, marked as being fetched.
    pub fn next_in_order(&mut self) -> Option<u64> {
        while (self.cursor as usize) < self.states.len() {
            let c = self.cursor;
            self.cursor += 1;
            if self.states[c as usize] == State::Missing {
                self.states[c as usize] = State::Fetching;
                return Some(c);
            }
        }
        None
    }

    /// The next chunk to fetch: a demanded one, else the first missing one in order; None
    /// when nothing is left to start.
    #[cfg(test)]
    pub fn next(&mut self) -> Option<u64> {
        self.next_demanded().or_else(|| self.next_in_order())
    }

    /// Chunk `index` is in the copy (from whatever source).
    pub fn done(&mut self, index: u64) {
        if self.states[index as usize] != State::Present {
            self.states[index as usize] = State::Present;
            self.present += 1;
            let range = self.range(index);
            self.present_bytes += range.end - range.start;
        }
    }

    /// Bytes of the image in the copy.
    pub fn present_bytes(&self) -> u64 {
        self.present_bytes
    }

    /// Bytes the plan covers (the image's data).
    #[cfg(test)]
    pub fn total_bytes(&self) -> u64 {
        self.len
    }

    /// Fetching chunk `index` failed: it is missing again, and fetched first.
    pub fn failed(&mut self, index: u64) {
        if self.states[index as usize] == State::Fetching {
            self.states[index as usize] = State::Missing;
            self.demanded.push_front(index);
        }
    }

    /// Every chunk is present.
    pub fn is_whole(&self) -> bool {
        self.present == self.states.len() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fill_goes_in_order() {
        let mut p = Plan::new(10, 4);
        assert_eq!(p.range(2), 8..10);
        assert_eq!(p.next(), Some(0));
        assert_eq!(p.next(), Some(1));
        assert_eq!(p.next(), Some(2));
        assert_eq!(p.next(), None);
        assert!(!p.is_whole());
        for c in 0..3 {
            p.done(c);
        }
        assert!(p.is_whole());
        // The last chunk is short: 10 bytes, not 12.
        assert_eq!((p.present_bytes(), p.total_bytes()), (10, 10));
        assert_eq!(p.demanded_bytes, 0);
    }

    #[test]
    fn demanded_chunks_come_first_once() {
        let mut p = Plan::new(40, 4);
        assert_eq!(p.next(), Some(0));
        // Bytes 21-29 are chunks 5-7; asked twice, queued once.
        assert!(!p.demand(21..29));
        assert!(!p.demand(21..29));
        assert_eq!(p.next(), Some(5));
        assert_eq!(p.next(), Some(6));
        assert_eq!(p.next(), Some(7));
        assert_eq!(p.demanded_bytes, 12);
        // Then the rest in order, skipping what was fetched on demand.
        assert_eq!(p.next(), Some(1));
        for c in [0, 1, 5, 6, 7] {
            p.done(c);
        }
        assert!(p.demand(20..32));
        assert!(p.demand(0..8));
        assert!(p.demand(5..5));
        assert!(!p.demand(0..9));
        assert_eq!(
            std::iter::from_fn(|| p.next()).collect::<Vec<_>>(),
            vec![2, 3, 4, 8, 9]
        );
    }

    #[test]
    fn demands_and_the_fill_can_be_taken_apart() {
        let mut p = Plan::new(16, 4);
        assert_eq!(p.next_demanded(), None);
        assert!(!p.demand(8..9));
        assert_eq!(p.next_in_order(), Some(0));
        assert_eq!(p.next_demanded(), Some(2));
        assert_eq!(p.next_demanded(), None);
        // The fill skips what a demand took.
        assert_eq!(p.next_in_order(), Some(1));
        assert_eq!(p.next_in_order(), Some(3));
        assert_eq!(p.demanded_bytes, 4);
    }

    #[test]
    fn a_chunk_being_fetched_is_not_demanded_again() {
        let mut p = Plan::new(8, 4);
        assert_eq!(p.next(), Some(0));
        assert!(!p.demand(0..4));
        assert_eq!(p.next(), Some(1));
        assert_eq!(p.next(), None);
    }

    #[test]
    fn a_failed_chunk_is_fetched_again_first() {
        let mut p = Plan::new(12, 4);
        assert_eq!(p.next(), Some(0));
        assert_eq!(p.next(), Some(1));
        p.failed(0);
        assert_eq!(p.next(), Some(0));
        assert_eq!(p.next(), Some(2));
        p.done(1);
        p.done(1);
        p.done(2);
        assert!(!p.is_whole(), "counted once");
        // Chunks 1 and 2, once each.
        assert_eq!(p.present_bytes(), 8);
        p.done(0);
        assert!(p.is_whole());
    }

    #[test]
    fn another_source_can_fill_chunks() {
        // A chunk marked present by another source (multicast) is skipped by the fill.
        let mut p = Plan::new(12, 4);
        assert!(p.is_missing(&(4..8)));
        assert_eq!(p.chunks_of(&(3..5)), 0..2);
        p.done(1);
        assert!(!p.is_missing(&(4..5)));
        assert!(!p.is_missing(&(3..5)), "one chunk of two present");
        assert_eq!(p.next(), Some(0));
        assert_eq!(p.next(), Some(2));
        assert!(!p.is_missing(&(0..1)), "being fetched");
        assert_eq!(p.next(), None);
    }
}
