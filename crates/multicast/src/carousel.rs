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

/// When a session may stop: once every seat that joined has said it is done (left), or once
/// the sender has sent a whole round, plus `slack`, since the last seat joined. A seat that
/// joined then has had every fragment once (the rest of the round it joined in and the start
/// of the next), and fetches whatever it lost over HTTP; sending on would cost the link
/// rounds nobody needs. The slack covers the moments between a seat's join and its first
/// packet (its IGMP join), so a seat that lost nothing is lapped before the sender stops.
///
/// Counted in fragments sent, not in time, so a sender that falls behind its rate still
/// gives every seat its round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Audience {
    per_round: u64,
    slack: u64,
    sent: u64,
    until: u64,
    active: u64,
    joined: u64,
}

impl Audience {
    /// Nobody yet, for a layout of `layout`; the sender gives a late joiner `slack_fragments`
    /// beyond its round.
    pub fn new(layout: &Layout, slack_fragments: u64) -> Audience {
        Audience {
            per_round: layout.fragments_per_round(),
            slack: slack_fragments,
            sent: 0,
            until: 0,
            active: 0,
            joined: 0,
        }
    }

    /// A seat joins: the sender owes everyone a round from here.
    pub fn join(&mut self) {
        self.active += 1;
        self.joined += 1;
        self.until = self.until.max(self.sent + self.per_round + self.slack);
    }

    /// A seat says it is done; false when every seat that joined had already said so (a seat
    /// that leaves twice does not end the others' session).
    pub fn leave(&mut self) -> bool {
        match self.active.checked_sub(1) {
            Some(n) => {
                self.active = n;
                true
            }
            None => false,
        }
    }

    /// One fragment sent.
    pub fn sent(&mut self) {
        self.sent += 1;
    }

    /// Fragments sent so far.
    pub fn fragments_sent(&self) -> u64 {
        self.sent
    }

    /// Seats that joined so far.
    pub fn joined(&self) -> u64 {
        self.joined
    }

    /// Seats joined and not done.
    pub fn active(&self) -> u64 {
        self.active
    }

    /// Nothing more to send: every seat is done, or has had its round since it joined.
    pub fn is_done(&self) -> bool {
        self.active == 0 || self.sent >= self.until
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
    fn a_session_ends_when_its_seats_are_done_or_have_had_their_round() {
        // 5 blocks of 2 fragments: 10 fragments a round.
        let layout = Layout::new(10 * 1024, 2048, 1024).unwrap();
        assert_eq!(layout.fragments_per_round(), 10);
        let mut a = Audience::new(&layout, 2);
        assert!(a.is_done(), "nobody joined");
        a.join();
        for _ in 0..4 {
            a.sent();
        }
        // A late joiner: the rest of this round and the start of the next, plus the slack.
        a.join();
        assert_eq!(a.joined(), 2);
        let mut more = 0;
        while !a.is_done() {
            a.sent();
            more += 1;
        }
        assert_eq!(more, 10 + 2, "one round and the slack after the last join");
        assert_eq!(a.fragments_sent(), 16);

        // Both seats say they are done before that: it ends at once.
        let mut b = Audience::new(&layout, 2);
        b.join();
        b.join();
        b.sent();
        assert!(b.leave());
        assert!(!b.is_done(), "one seat still listens");
        assert!(b.leave());
        assert!(b.is_done());
        assert!(!b.leave(), "a third leave is not a seat");
        assert_eq!(b.active(), 0);
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
