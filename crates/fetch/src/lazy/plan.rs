//! The fill plan of the RAM copy, sans-IO: which chunks of the image are in RAM, which are
//! being fetched, and which to fetch next (what the kernel is waiting for first, then the
//! rest in order).
//!
//! A chunk is the unit of a Range request and of the bookkeeping: [`CHUNK`] bytes, also the
//! read-ahead of a read the kernel is waiting for (it asks for 4-128 KiB at a time; the
//! chunk around it usually holds what it asks for next). Anything that has the bytes of a
//! chunk (an HTTP worker, later a multicast receiver) writes them to the copy and calls
//! [`Plan::done`]; the plan does not care where they came from.
//!
//! The kernel's reads pre-empt the fill ([`Plan::next_in_order`]): on a slow or congested
//! link, chunks of the fill in flight on the same link delay every read the boot waits for.
//! Seen at 2 Mbit/s under QEMU (lazy.rs's power-off seat, issue 25 item 8, with the fill
//! not held back): the two fill workers got a chunk each every 2 s while each demanded
//! chunk took 22-29 s to come (a new TCP flow behind two that fill the port's queue; the
//! kernel logged "Possible stuck request ... Runtime 60 seconds"), and the seat reached
//! multi-user 527 s after its root was mounted (its two peers at full speed: 248 and 261 s
//! after power-on). So no fill chunk starts while a demanded chunk is wanted or being
//! fetched, nor within a quiet spell after the last one: [`QUIET_FACTOR`] times what it
//! took, at most [`QUIET_MAX`]; and after a slow demanded chunk ([`SLOW_CHUNK`]) one fill
//! chunk at most is in flight. On a fast link a chunk takes milliseconds and the fill
//! barely pauses; on a slow one it waits for the boot's reads to pause.

use std::collections::VecDeque;
use std::ops::Range;
use std::time::{Duration, Instant};

/// Bytes a chunk holds: 256 KiB (64 blocks).
pub const CHUNK: u64 = 256 * 1024;

/// The fill waits this many times what the last demanded chunk took after it...
pub const QUIET_FACTOR: u32 = 4;
/// ...at most this long: long enough to span the gaps between a boot's reads on a slow link
/// (5-10 s apart in the first 2 minutes of a 2 Mbit/s seat under TCG, one chunk taking 1-3
/// s), short enough that the fill goes on while the seat idles.
pub const QUIET_MAX: Duration = Duration::from_secs(10);
/// A demanded chunk that took this long or more means a slow link (256 KiB in 250 ms: 8
/// Mbit/s): one fill chunk at most in flight then, the most a new demand can find ahead of
/// it on the link.
pub const SLOW_CHUNK: Duration = Duration::from_millis(250);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Missing,
    /// Fetched by the fill.
    Fetching,
    /// Fetched because the kernel waits for it.
    Demanded,
    Present,
}

/// What the fill does next ([`Plan::next_in_order`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fill {
    /// Fetch this chunk (marked as being fetched).
    Chunk(u64),
    /// The kernel's reads go first: ask again at this instant (or when the plan changes).
    PauseUntil(Instant),
    /// Nothing to start: every chunk is present or being fetched (or a demand is), ask
    /// again when the plan changes.
    Wait,
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
    /// Demanded chunks being fetched, and when the last of them started.
    demands_in_flight: u64,
    demand_started: Option<Instant>,
    /// When the fill may start chunks again (after the last demanded chunk's quiet spell).
    fill_from: Option<Instant>,
    /// What the last demanded chunk took, and the fill's chunks being fetched.
    demand_took: Duration,
    fills_in_flight: u64,
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
            demands_in_flight: 0,
            demand_started: None,
            fill_from: None,
            demand_took: Duration::ZERO,
            fills_in_flight: 0,
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
                State::Fetching | State::Demanded => all = false,
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
    /// fetched (from `now`).
    pub fn next_demanded(&mut self, now: Instant) -> Option<u64> {
        while let Some(c) = self.demanded.pop_front() {
            if self.states[c as usize] == State::Missing {
                self.states[c as usize] = State::Demanded;
                self.demanded_bytes += self.range(c).end - self.range(c).start;
                self.demands_in_flight += 1;
                self.demand_started = Some(now);
                return Some(c);
            }
        }
        None
    }

    /// The fill's next chunk at `now`: the first missing one in order, marked as being
    /// fetched, unless the kernel's reads go first (the module's doc).
    pub fn next_in_order(&mut self, now: Instant) -> Fill {
        if !self.demanded.is_empty() || self.demands_in_flight > 0 {
            return Fill::Wait;
        }
        if let Some(from) = self.fill_from.filter(|from| *from > now) {
            return Fill::PauseUntil(from);
        }
        if self.demand_took >= SLOW_CHUNK && self.fills_in_flight >= 1 {
            return Fill::Wait;
        }
        while (self.cursor as usize) < self.states.len() {
            let c = self.cursor;
            self.cursor += 1;
            if self.states[c as usize] == State::Missing {
                self.states[c as usize] = State::Fetching;
                self.fills_in_flight += 1;
                return Fill::Chunk(c);
            }
        }
        Fill::Wait
    }

    /// The next chunk to fetch: a demanded one, else the first missing one in order,
    /// pauses aside; None when nothing is left to start.
    #[cfg(test)]
    pub fn next(&mut self) -> Option<u64> {
        let now = Instant::now();
        self.next_demanded(now)
            .or_else(|| self.next_fill_unpaused(now))
    }

    /// The fill's next chunk at `now`, its quiet spell after a demand aside.
    #[cfg(test)]
    pub fn next_fill_unpaused(&mut self, now: Instant) -> Option<u64> {
        self.fill_from = None;
        match self.next_in_order(now) {
            Fill::Chunk(c) => Some(c),
            Fill::PauseUntil(_) | Fill::Wait => None,
        }
    }

    /// A demanded chunk is no longer being fetched at `now`: the fill's quiet spell starts.
    fn demand_ended(&mut self, now: Instant) {
        self.demands_in_flight -= 1;
        let took = self.demand_started.map_or(Duration::ZERO, |started| {
            now.saturating_duration_since(started)
        });
        self.demand_took = took;
        self.fill_from = Some(now + (took * QUIET_FACTOR).min(QUIET_MAX));
    }

    /// Chunk `index` is in the copy (from whatever source) at `now`.
    pub fn done(&mut self, index: u64, now: Instant) {
        match self.states[index as usize] {
            State::Demanded => self.demand_ended(now),
            State::Fetching => self.fills_in_flight -= 1,
            State::Missing | State::Present => {}
        }
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

    /// Fetching chunk `index` failed at `now`: it is missing again, and fetched first.
    pub fn failed(&mut self, index: u64, now: Instant) {
        match self.states[index as usize] {
            State::Demanded => self.demand_ended(now),
            State::Fetching => self.fills_in_flight -= 1,
            State::Missing | State::Present => {}
        }
        if matches!(
            self.states[index as usize],
            State::Fetching | State::Demanded
        ) {
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

    fn now() -> Instant {
        Instant::now()
    }

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
            p.done(c, now());
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
        // The fill waits for the demanded chunks.
        assert_eq!(p.next(), None);
        for c in [0, 5, 6, 7] {
            p.done(c, now());
        }
        // Then the rest in order, skipping what was fetched on demand.
        assert_eq!(p.next(), Some(1));
        p.done(1, now());
        assert!(p.demand(20..32));
        assert!(p.demand(0..8));
        assert!(p.demand(5..5));
        assert!(!p.demand(0..9));
        assert_eq!(p.next(), Some(2));
        p.done(2, now());
        assert_eq!(
            std::iter::from_fn(|| p.next()).collect::<Vec<_>>(),
            vec![3, 4, 8, 9]
        );
    }

    #[test]
    fn demands_and_the_fill_can_be_taken_apart() {
        let mut p = Plan::new(16, 4);
        assert_eq!(p.next_demanded(now()), None);
        assert_eq!(p.next_fill_unpaused(now()), Some(0));
        assert!(!p.demand(8..9));
        assert_eq!(p.next_demanded(now()), Some(2));
        assert_eq!(p.next_demanded(now()), None);
        p.done(2, now());
        // The fill skips what a demand took.
        assert_eq!(p.next_fill_unpaused(now()), Some(1));
        assert_eq!(p.next_fill_unpaused(now()), Some(3));
        assert_eq!(p.demanded_bytes, 4);
    }

    /// Issue 25, item 8: the fill starts nothing while the kernel waits for a chunk, nor
    /// in the quiet spell after it (4 times what the chunk took, at most 10 s); a chunk the
    /// fill has in flight goes on. On a slow link, one fill chunk at a time.
    #[test]
    fn the_kernels_reads_pre_empt_the_fill() {
        let t0 = now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let mut p = Plan::new(400, 4);
        assert_eq!(p.next_in_order(at(0)), Fill::Chunk(0));
        // A read waits: queued, then fetched (from 10 ms); the fill waits for the plan.
        assert!(!p.demand(200..204));
        assert_eq!(p.next_in_order(at(5)), Fill::Wait);
        assert_eq!(p.next_demanded(at(10)), Some(50));
        assert_eq!(p.next_in_order(at(20)), Fill::Wait);
        // The chunk took 100 ms: the fill pauses 400 ms more.
        p.done(50, at(110));
        assert_eq!(p.next_in_order(at(110)), Fill::PauseUntil(at(510)));
        assert_eq!(p.next_in_order(at(509)), Fill::PauseUntil(at(510)));
        assert_eq!(p.next_in_order(at(510)), Fill::Chunk(1));
        // The fill's chunk 0, in flight all along, is done whenever it is.
        p.done(0, at(600));
        assert_eq!(p.next_in_order(at(600)), Fill::Chunk(2));
        // A slow chunk (3 s): the pause is at most 10 s, and then one fill chunk at a time
        // (a slow link: a new demand finds one at most ahead of it).
        assert!(!p.demand(300..301));
        assert_eq!(p.next_demanded(at(1000)), Some(75));
        p.done(75, at(4000));
        assert_eq!(p.next_in_order(at(4000)), Fill::PauseUntil(at(14_000)));
        p.done(1, at(5000));
        p.done(2, at(5000));
        assert_eq!(p.next_in_order(at(14_000)), Fill::Chunk(3));
        assert_eq!(p.next_in_order(at(14_000)), Fill::Wait);
        p.done(3, at(15_000));
        // A failed demanded chunk is demanded again: the fill still waits.
        assert!(!p.demand(320..321));
        assert_eq!(p.next_demanded(at(15_000)), Some(80));
        p.failed(80, at(15_100));
        assert_eq!(p.next_in_order(at(18_000)), Fill::Wait);
        assert_eq!(p.next_demanded(at(18_000)), Some(80));
        p.done(80, at(18_000));
        // A chunk that took no time: no pause, and a fast link: chunks in parallel.
        assert_eq!(p.next_in_order(at(18_000)), Fill::Chunk(4));
        assert_eq!(p.next_in_order(at(18_000)), Fill::Chunk(5));
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
        p.failed(0, now());
        assert_eq!(p.next(), Some(0));
        p.done(0, now());
        assert_eq!(p.next(), Some(2));
        p.done(1, now());
        p.done(1, now());
        assert!(!p.is_whole(), "counted once");
        // Chunks 0 and 1, once each.
        assert_eq!(p.present_bytes(), 8);
        p.done(2, now());
        assert!(p.is_whole());
    }

    #[test]
    fn another_source_can_fill_chunks() {
        // A chunk marked present by another source (multicast) is skipped by the fill.
        let mut p = Plan::new(12, 4);
        assert!(p.is_missing(&(4..8)));
        assert_eq!(p.chunks_of(&(3..5)), 0..2);
        p.done(1, now());
        assert!(!p.is_missing(&(4..5)));
        assert!(!p.is_missing(&(3..5)), "one chunk of two present");
        assert_eq!(p.next(), Some(0));
        assert_eq!(p.next(), Some(2));
        assert!(!p.is_missing(&(0..1)), "being fetched");
        assert_eq!(p.next(), None);
    }
}
