//! The sender's side: which fragment goes next ([`Carousel`]) and when ([`Pacer`]).

use crate::wire::Packet;
use crate::Layout;
use std::ops::Range;
use std::time::{Duration, Instant};

/// Goes through every fragment of every block in order, then starts again (a new round).
/// A seat that joins mid-round takes the rest of this round and the start of the next.
#[derive(Debug, Clone)]
pub struct Carousel {
    layout: Layout,
    session: u64,
    block: u32,
    fragment: u16,
    round: u32,
}

/// One fragment to send: where its bytes are in the image, and its header values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fragment {
    /// The session sending it.
    pub session: u64,
    /// Block number.
    pub block: u32,
    /// Fragment number in the block.
    pub fragment: u16,
    /// Round number.
    pub round: u32,
    /// Its first byte in the image.
    pub offset: u64,
    /// Its length.
    pub len: u16,
}

impl Fragment {
    /// Its bytes in the image.
    pub fn byte_range(&self) -> Range<u64> {
        self.offset..self.offset + u64::from(self.len)
    }

    /// The packet carrying `payload` (the image's bytes at [`Fragment::byte_range`]).
    pub fn packet<'a>(&self, payload: &'a [u8]) -> Packet<'a> {
        debug_assert_eq!(payload.len(), usize::from(self.len));
        Packet {
            session: self.session,
            block: self.block,
            fragment: self.fragment,
            round: self.round,
            payload,
        }
    }
}

impl Carousel {
    /// A carousel over `layout`, stamping packets with `session`, starting at block 0.
    pub fn new(layout: Layout, session: u64) -> Carousel {
        Carousel {
            layout,
            session,
            block: 0,
            fragment: 0,
            round: 0,
        }
    }

    /// Rounds completed so far.
    pub fn rounds(&self) -> u32 {
        self.round
    }

    /// The next fragment to send; moves on.
    pub fn next_fragment(&mut self) -> Fragment {
        let range = self.layout.fragment_range(self.block, self.fragment);
        let next = Fragment {
            session: self.session,
            block: self.block,
            fragment: self.fragment,
            round: self.round,
            offset: range.start,
            len: (range.end - range.start) as u16,
        };
        self.fragment += 1;
        if self.fragment == self.layout.fragments(self.block) {
            self.fragment = 0;
            self.block += 1;
            if self.block == self.layout.blocks() {
                self.block = 0;
                self.round = self.round.wrapping_add(1);
            }
        }
        next
    }
}

/// Paces a sender at a rate in bytes per second.
///
/// The sender may send whenever [`Pacer::wait`] is zero; each send pushes the next allowed
/// time on by its bytes at the rate. Sleeping is coarse (tens of microseconds at best,
/// a fragment at 1 Gbit/s takes 8), so a sender late on its schedule may catch up in a
/// burst, but never by more than `slack` worth of bytes: an unpaced burst of 1,000 datagrams
/// reached each of two receivers as 93 (measured between namespaces on a bridge), so bursts
/// must stay well under a receive buffer.
#[derive(Debug, Clone)]
pub struct Pacer {
    bytes_per_second: u64,
    slack: Duration,
    next_at: Option<Instant>,
}

impl Pacer {
    /// A pacer at `bytes_per_second` (at least 1) that lets a late sender catch up by at most
    /// `slack`.
    pub fn new(bytes_per_second: u64, slack: Duration) -> Pacer {
        Pacer {
            bytes_per_second: bytes_per_second.max(1),
            slack,
            next_at: None,
        }
    }

    /// How long to wait at `now` before the next send.
    pub fn wait(&self, now: Instant) -> Duration {
        self.next_at
            .map_or(Duration::ZERO, |at| at.saturating_duration_since(now))
    }

    /// `bytes` were sent at `now`.
    pub fn sent(&mut self, now: Instant, bytes: usize) {
        let earliest = now.checked_sub(self.slack).unwrap_or(now);
        let from = self.next_at.map_or(now, |at| at.max(earliest));
        let cost = Duration::from_secs_f64(bytes as f64 / self.bytes_per_second as f64);
        self.next_at = Some(from + cost);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn goes_round_every_fragment_in_order() {
        let layout = Layout::new(5000, 2048, 1024).unwrap();
        let mut c = Carousel::new(layout, 3);
        let sent: Vec<(u32, u16, u32, u64, u16)> = (0..7)
            .map(|_| {
                let f = c.next_fragment();
                (f.block, f.fragment, f.round, f.offset, f.len)
            })
            .collect();
        assert_eq!(
            sent,
            [
                (0, 0, 0, 0, 1024),
                (0, 1, 0, 1024, 1024),
                (1, 0, 0, 2048, 1024),
                (1, 1, 0, 3072, 1024),
                (2, 0, 0, 4096, 904),
                (0, 0, 1, 0, 1024),
                (0, 1, 1, 1024, 1024),
            ]
        );
        assert_eq!(c.rounds(), 1);
    }

    #[test]
    fn the_pacer_holds_the_rate_and_bounds_a_catch_up() {
        let t0 = Instant::now();
        let mut p = Pacer::new(1_000_000, Duration::from_millis(2));
        assert_eq!(p.wait(t0), Duration::ZERO);
        p.sent(t0, 1000);
        assert_eq!(p.wait(t0), Duration::from_millis(1));
        assert_eq!(p.wait(t0 + Duration::from_millis(1)), Duration::ZERO);
        // A sender back after a long stall may send 2 ms worth at once, not 100 ms worth.
        let late = t0 + Duration::from_millis(100);
        let mut burst = 0;
        while p.wait(late).is_zero() {
            p.sent(late, 1000);
            burst += 1;
        }
        assert_eq!(
            burst, 3,
            "2 ms of slack at 1 MB/s: two fragments late, one on time"
        );
    }
}
