//! Server side of one read transfer, without I/O.
//!
//! A [`Session`] is created once the request has been accepted and the size of the
//! bytes to send is known. The driver then loops:
//!
//! 1. [`Session::poll_transmit`] until it returns `None`, sending each [`Transmit`]
//!    (for [`Transmit::Data`] it reads `len` bytes at `offset` of the file, so the
//!    session never holds file contents);
//! 2. waits for a datagram from the client or for [`Session::deadline`];
//! 3. feeds it to [`Session::handle`] or calls [`Session::on_timeout`];
//!
//! until [`Session::outcome`] is `Some`. Every method takes `now`; none reads a clock.
//!
//! Rules kept here:
//! - a window of `windowsize` blocks (RFC 7440; 1 = RFC 1350 lock-step) is sent, then
//!   the session waits for the ACK of its last block; an ACK of an earlier block of the
//!   window restarts the window after it (go-back-N);
//! - a duplicate ACK never triggers a retransmission (Sorcerer's Apprentice, RFC 1123
//!   §4.2.3.1): only the timer does, so traffic cannot multiply;
//! - block numbers wrap from 65535 to 0; the session counts blocks in 64 bits;
//! - an ERROR from the client ends the transfer at once (UEFI firmware asks for `tsize`
//!   in a first request, then aborts it with ERROR 8 and asks again);
//! - retransmissions are bounded: after `max_retries` consecutive timeouts it gives up,
//!   and after `max_unanswered_retries` while the client has not answered once. A read
//!   request is one UDP datagram whose source anyone can forge: until an ACK (or ERROR)
//!   proves the requester is there, each retransmission is traffic toward whoever the
//!   request named. With 12 retries a 45-byte request drew 13 DATA packets of 516
//!   bytes over ~95 s; with 2 it draws 3 (docs/BENCHMARKS.md, TFTP amplification).

use std::time::{Duration, Instant};

use crate::rtt::{RttConfig, RttEstimator};
use crate::wire::{self, ErrorCode, Opcode, Packet, RequestOptions, DEFAULT_BLKSIZE};

/// Limits the server applies to what clients ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionConfig {
    /// Largest block size granted (clients asking more get this).
    pub max_blksize: u16,
    /// Largest window granted.
    pub max_windowsize: u16,
    /// Consecutive timeouts before giving up.
    pub max_retries: u32,
    /// Timeouts before giving up while the client has not acknowledged anything yet (the
    /// request's source may be forged): at most this many retransmissions of the first
    /// packet.
    pub max_unanswered_retries: u32,
    /// Retransmission timer limits.
    pub rtt: RttConfig,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            max_blksize: wire::MAX_BLKSIZE,
            max_windowsize: 64,
            max_retries: 12,
            max_unanswered_retries: 2,
            rtt: RttConfig::default(),
        }
    }
}

/// What was agreed for a transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Negotiated {
    /// Bytes per DATA block.
    pub blksize: u16,
    /// Blocks sent before waiting for an ACK.
    pub windowsize: u16,
    /// The options echoed in the OACK; empty when no OACK is sent.
    pub oack: RequestOptions,
}

/// Decides the transfer parameters for a request of `size` bytes.
pub fn negotiate(requested: &RequestOptions, size: u64, config: &SessionConfig) -> Negotiated {
    let mut oack = RequestOptions::default();
    let mut blksize = DEFAULT_BLKSIZE;
    let mut windowsize = 1;
    if let Some(b) = requested.blksize {
        blksize = b.min(config.max_blksize).max(wire::MIN_BLKSIZE);
        oack.blksize = Some(blksize);
    }
    if let Some(w) = requested.windowsize {
        windowsize = w.min(config.max_windowsize).max(1);
        oack.windowsize = Some(windowsize);
    }
    if requested.tsize.is_some() {
        oack.tsize = Some(size);
    }
    if let Some(t) = requested.timeout {
        oack.timeout = Some(t);
    }
    Negotiated {
        blksize,
        windowsize,
        oack,
    }
}

/// Something for the driver to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transmit {
    /// A control packet (OACK or ERROR), ready to send.
    Packet(Vec<u8>),
    /// A DATA packet: header for `block`, then `len` bytes of the file at `offset`.
    Data {
        /// Block number on the wire.
        block: u16,
        /// Offset of the payload in the transferred bytes.
        offset: u64,
        /// Payload length (the last block is shorter than blksize, possibly 0).
        len: usize,
    },
}

/// How a transfer ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The client acknowledged the last block.
    Complete,
    /// The client sent an ERROR.
    ClientError {
        /// Its error code.
        code: ErrorCode,
        /// Its message.
        message: String,
    },
    /// The client stopped answering.
    TimedOut {
        /// Whether every block had been sent and only the last ACK was missing.
        all_sent: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// OACK to send or sent, waiting for ACK 0.
    Oack { sent: bool },
    /// Sending or waiting for the ACK of a window.
    Data,
}

/// Counters of one transfer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// DATA packets sent, including retransmissions.
    pub packets_sent: u64,
    /// DATA packets sent more than once.
    pub retransmitted: u64,
    /// Timeouts that fired.
    pub timeouts: u64,
    /// Duplicate ACKs ignored.
    pub duplicate_acks: u64,
    /// ACKs short of the window end that restarted it (a gap at the client).
    pub rewinds: u64,
}

/// One read transfer, server side.
#[derive(Debug)]
pub struct Session {
    negotiated: Negotiated,
    max_retries: u32,
    max_unanswered_retries: u32,
    /// The client has sent a valid ACK (of the OACK or of a block) at least once.
    answered: bool,
    size: u64,
    /// Index of the final block (1-based); it is shorter than blksize.
    last_block: u64,
    state: State,
    oack: Vec<u8>,
    /// Highest block acknowledged (0 = none, or the OACK).
    acked: u64,
    /// Next block to send.
    next: u64,
    /// Highest block sent so far (to count retransmissions).
    high_sent: u64,
    /// Last block of the current window.
    window_end: u64,
    deadline: Option<Instant>,
    /// When the current window (or OACK) was completely sent, if sent only once.
    sample_from: Option<Instant>,
    rtt: RttEstimator,
    retries: u32,
    outcome: Option<Outcome>,
    stats: Stats,
}

impl Session {
    /// Starts a transfer of `size` bytes with the options the client asked for.
    pub fn new(requested: &RequestOptions, size: u64, config: &SessionConfig) -> Session {
        let negotiated = negotiate(requested, size, config);
        let mut rtt = RttEstimator::new(config.rtt);
        if let Some(t) = requested.timeout {
            // The client retransmits after `t` seconds; never wait longer than it.
            rtt.cap(Duration::from_secs(t.into()));
        }
        let blk = u64::from(negotiated.blksize);
        let (state, oack) = if negotiated.oack.is_empty() {
            (State::Data, Vec::new())
        } else {
            let pairs = negotiated.oack.to_pairs();
            (
                State::Oack { sent: false },
                wire::emit_with_options(Opcode::Oack, None, &pairs),
            )
        };
        let last_block = size / blk + 1;
        Session {
            negotiated,
            max_retries: config.max_retries,
            max_unanswered_retries: config.max_unanswered_retries,
            answered: false,
            size,
            last_block,
            state,
            oack,
            acked: 0,
            next: 1,
            high_sent: 0,
            window_end: last_block.min(u64::from(negotiated.windowsize)),
            deadline: None,
            sample_from: None,
            rtt,
            retries: 0,
            outcome: None,
            stats: Stats::default(),
        }
    }

    /// The agreed parameters.
    pub fn negotiated(&self) -> &Negotiated {
        &self.negotiated
    }

    /// Bytes to transfer.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Transfer counters.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Bytes the client has acknowledged.
    pub fn acked_bytes(&self) -> u64 {
        (self.acked * u64::from(self.negotiated.blksize)).min(self.size)
    }

    /// How the transfer ended, once it has.
    pub fn outcome(&self) -> Option<&Outcome> {
        self.outcome.as_ref()
    }

    /// When [`on_timeout`](Self::on_timeout) is due, if waiting.
    pub fn deadline(&self) -> Option<Instant> {
        if self.outcome.is_some() {
            None
        } else {
            self.deadline
        }
    }

    /// The current retransmission timeout.
    pub fn rto(&self) -> Duration {
        self.rtt.rto()
    }

    /// The next packet to send, if any.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Transmit> {
        if self.outcome.is_some() {
            return None;
        }
        match self.state {
            State::Oack { sent: false } => {
                self.state = State::Oack { sent: true };
                self.arm(now);
                Some(Transmit::Packet(self.oack.clone()))
            }
            State::Oack { sent: true } => None,
            State::Data => {
                if self.next > self.window_end {
                    return None;
                }
                let idx = self.next;
                self.next += 1;
                self.stats.packets_sent += 1;
                if idx <= self.high_sent {
                    self.stats.retransmitted += 1;
                } else {
                    self.high_sent = idx;
                }
                if self.next > self.window_end {
                    self.arm(now);
                }
                let blk = u64::from(self.negotiated.blksize);
                let offset = (idx - 1) * blk;
                Some(Transmit::Data {
                    block: idx as u16,
                    offset,
                    len: (self.size - offset).min(blk) as usize,
                })
            }
        }
    }

    fn arm(&mut self, now: Instant) {
        self.deadline = Some(now + self.rtt.rto());
        // Karn: a round trip is only measured on a first transmission.
        self.sample_from = if self.retries == 0 { Some(now) } else { None };
    }

    /// Feeds a packet received from the client (on this transfer's port).
    pub fn handle(&mut self, now: Instant, packet: &Packet<'_>) {
        if self.outcome.is_some() {
            return;
        }
        match *packet {
            Packet::Error { code, message } => {
                self.outcome = Some(Outcome::ClientError {
                    code,
                    message: String::from_utf8_lossy(message).into_owned(),
                });
            }
            Packet::Ack { block } => self.on_ack(now, block),
            // Anything else on a read transfer is noise (a retransmitted RRQ arrives on
            // the server port, not here); ignoring it keeps the transfer alive.
            _ => {}
        }
    }

    fn on_ack(&mut self, now: Instant, block: u16) {
        match self.state {
            State::Oack { sent } => {
                if block == 0 && sent {
                    self.answered = true;
                    self.took_sample(now);
                    self.state = State::Data;
                    self.deadline = None;
                }
            }
            State::Data => {
                // Map the 16-bit number onto [acked, high_sent]: at most 65536 values
                // because a window is at most 65535 blocks.
                let span = self.high_sent - self.acked;
                let delta = u64::from(block.wrapping_sub(self.acked as u16));
                if delta > span {
                    return; // stale, from before the last wrap
                }
                if delta == 0 {
                    // Duplicate: the timer alone decides on retransmission.
                    self.stats.duplicate_acks += 1;
                    return;
                }
                let idx = self.acked + delta;
                self.answered = true;
                if idx == self.window_end && self.next > self.window_end {
                    self.took_sample(now);
                } else {
                    self.retries = 0;
                }
                if idx < self.next - 1 && idx < self.last_block {
                    self.stats.rewinds += 1;
                }
                self.acked = idx;
                if idx >= self.last_block {
                    self.outcome = Some(Outcome::Complete);
                    self.deadline = None;
                    return;
                }
                self.next = idx + 1;
                self.window_end = self
                    .last_block
                    .min(idx + u64::from(self.negotiated.windowsize));
                self.deadline = None;
            }
        }
    }

    fn took_sample(&mut self, now: Instant) {
        // After a retransmission there is no sample, and the backed-off timer stays.
        if let Some(t) = self.sample_from.take() {
            self.rtt.sample(now.saturating_duration_since(t));
        }
        self.retries = 0;
    }

    /// The deadline passed: retransmit the window (or OACK), or give up.
    pub fn on_timeout(&mut self, now: Instant) {
        if self.outcome.is_some() {
            return;
        }
        match self.deadline {
            Some(d) if d <= now => {}
            _ => return,
        }
        self.stats.timeouts += 1;
        self.retries += 1;
        let limit = if self.answered {
            self.max_retries
        } else {
            self.max_retries.min(self.max_unanswered_retries)
        };
        if self.retries > limit {
            self.outcome = Some(Outcome::TimedOut {
                all_sent: self.high_sent >= self.last_block,
            });
            return;
        }
        self.rtt.on_timeout();
        self.sample_from = None;
        self.deadline = None;
        match self.state {
            State::Oack { .. } => self.state = State::Oack { sent: false },
            State::Data => self.next = self.acked + 1,
        }
    }
}

/// The ERROR packet for an I/O failure mid-transfer.
pub fn io_error_packet() -> Vec<u8> {
    wire::error_packet(ErrorCode::NotDefined, "read error")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(blksize: Option<u16>, windowsize: Option<u16>, tsize: bool) -> RequestOptions {
        RequestOptions {
            blksize,
            windowsize,
            tsize: tsize.then_some(0),
            timeout: None,
        }
    }

    fn drain(s: &mut Session, now: Instant) -> Vec<Transmit> {
        std::iter::from_fn(|| s.poll_transmit(now)).collect()
    }

    fn blocks(t: &[Transmit]) -> Vec<u16> {
        t.iter()
            .map(|t| match t {
                Transmit::Data { block, .. } => *block,
                Transmit::Packet(p) => panic!("unexpected {p:?}"),
            })
            .collect()
    }

    /// Sends the OACK and acknowledges it.
    fn past_oack(s: &mut Session, now: Instant) {
        let t = drain(s, now);
        assert!(
            matches!(&t[..], [Transmit::Packet(p)] if p[1] == 6),
            "{t:?}"
        );
        s.handle(now, &ack(0));
    }

    fn ack(b: u16) -> Packet<'static> {
        Packet::Ack { block: b }
    }

    #[test]
    fn lock_step_without_options() {
        let t0 = Instant::now();
        let mut s = Session::new(&RequestOptions::default(), 1024, &SessionConfig::default());
        let t = drain(&mut s, t0);
        assert_eq!(
            t,
            vec![Transmit::Data {
                block: 1,
                offset: 0,
                len: 512
            }]
        );
        assert!(s.deadline().is_some());
        s.handle(t0, &ack(1));
        assert_eq!(
            drain(&mut s, t0),
            vec![Transmit::Data {
                block: 2,
                offset: 512,
                len: 512
            }]
        );
        s.handle(t0, &ack(2));
        // 1024 is a multiple of 512: an empty block ends the transfer.
        assert_eq!(
            drain(&mut s, t0),
            vec![Transmit::Data {
                block: 3,
                offset: 1024,
                len: 0
            }]
        );
        assert_eq!(s.outcome(), None);
        s.handle(t0, &ack(3));
        assert_eq!(s.outcome(), Some(&Outcome::Complete));
        assert_eq!(s.deadline(), None);
    }

    #[test]
    fn oack_then_window() {
        let t0 = Instant::now();
        let mut s = Session::new(
            &opts(Some(1000), Some(4), true),
            9500,
            &SessionConfig::default(),
        );
        let t = drain(&mut s, t0);
        assert_eq!(
            t,
            vec![Transmit::Packet(
                b"\x00\x06blksize\x001000\x00tsize\x009500\x00windowsize\x004\x00".to_vec()
            )]
        );
        // ACK of a block that was never sent is ignored while the OACK is pending.
        s.handle(t0, &ack(3));
        assert!(drain(&mut s, t0).is_empty());
        s.handle(t0, &ack(0));
        assert_eq!(blocks(&drain(&mut s, t0)), vec![1, 2, 3, 4]);
        // Partial ACK: block 3 was lost, client acks 2; resend from 3.
        s.handle(t0, &ack(2));
        assert_eq!(blocks(&drain(&mut s, t0)), vec![3, 4, 5, 6]);
        assert_eq!(s.stats().retransmitted, 2);
        s.handle(t0, &ack(6));
        let t = drain(&mut s, t0);
        assert_eq!(blocks(&t), vec![7, 8, 9, 10]);
        assert_eq!(
            t[3],
            Transmit::Data {
                block: 10,
                offset: 9000,
                len: 500
            }
        );
        s.handle(t0, &ack(10));
        assert_eq!(s.outcome(), Some(&Outcome::Complete));
    }

    #[test]
    fn duplicate_acks_do_not_multiply_traffic() {
        let t0 = Instant::now();
        let mut s = Session::new(
            &opts(None, Some(8), false),
            100_000,
            &SessionConfig::default(),
        );
        past_oack(&mut s, t0);
        assert_eq!(drain(&mut s, t0).len(), 8);
        s.handle(t0, &ack(8));
        assert_eq!(drain(&mut s, t0).len(), 8);
        for _ in 0..5 {
            s.handle(t0, &ack(8));
            assert!(drain(&mut s, t0).is_empty());
        }
        assert_eq!(s.stats().duplicate_acks, 5);
        // Lock-step too.
        let mut s = Session::new(
            &RequestOptions::default(),
            100_000,
            &SessionConfig::default(),
        );
        drain(&mut s, t0);
        s.handle(t0, &ack(1));
        assert_eq!(blocks(&drain(&mut s, t0)), vec![2]);
        s.handle(t0, &ack(1));
        s.handle(t0, &ack(1));
        assert!(drain(&mut s, t0).is_empty());
    }

    #[test]
    fn timeout_retransmits_then_gives_up() {
        let t0 = Instant::now();
        let cfg = SessionConfig {
            max_retries: 3,
            ..SessionConfig::default()
        };
        let mut s = Session::new(&opts(None, Some(2), false), 10_000, &cfg);
        past_oack(&mut s, t0);
        assert_eq!(blocks(&drain(&mut s, t0)), vec![1, 2]);
        let d1 = s.deadline().unwrap();
        // Early call does nothing.
        s.on_timeout(t0);
        assert!(drain(&mut s, t0).is_empty());
        s.on_timeout(d1);
        assert_eq!(blocks(&drain(&mut s, d1)), vec![1, 2]);
        let d2 = s.deadline().unwrap();
        assert_eq!(d2 - d1, 2 * (d1 - t0), "backoff doubles");
        s.on_timeout(d2);
        drain(&mut s, d2);
        let d3 = s.deadline().unwrap();
        s.on_timeout(d3);
        drain(&mut s, d3);
        let d4 = s.deadline().unwrap();
        s.on_timeout(d4);
        assert_eq!(s.outcome(), Some(&Outcome::TimedOut { all_sent: false }));
        assert!(drain(&mut s, d4).is_empty());
    }

    /// Counts what a session sends to a client that never answers, until it gives up.
    fn sent_to_silent_client(requested: &RequestOptions) -> (usize, Outcome) {
        let mut s = Session::new(requested, 1 << 20, &SessionConfig::default());
        let mut now = Instant::now();
        let mut sent = drain(&mut s, now).len();
        while let Some(d) = s.deadline() {
            now = d;
            s.on_timeout(now);
            sent += drain(&mut s, now).len();
        }
        (sent, s.outcome().unwrap().clone())
    }

    #[test]
    fn an_unanswered_request_draws_at_most_three_packets() {
        // A forged request: the first packet and two retransmissions, then silence.
        let timed_out = Outcome::TimedOut { all_sent: false };
        assert_eq!(
            sent_to_silent_client(&RequestOptions::default()),
            (3, timed_out.clone())
        );
        // With options, the OACK is what goes out three times.
        assert_eq!(
            sent_to_silent_client(&opts(Some(1468), Some(16), true)),
            (3, timed_out)
        );
    }

    #[test]
    fn an_answering_client_keeps_the_full_retry_budget() {
        // Once the client has acknowledged a block, a stall gets all `max_retries`.
        let t0 = Instant::now();
        let cfg = SessionConfig::default();
        let mut s = Session::new(&RequestOptions::default(), 1 << 20, &cfg);
        drain(&mut s, t0);
        s.handle(t0, &ack(1));
        let mut now = t0;
        let mut sent = drain(&mut s, now).len();
        while let Some(d) = s.deadline() {
            now = d;
            s.on_timeout(now);
            sent += drain(&mut s, now).len();
        }
        assert_eq!(sent as u32, 1 + cfg.max_retries);
        // An ACK of the OACK counts as an answer too.
        let mut s = Session::new(&opts(Some(1468), None, false), 1 << 20, &cfg);
        past_oack(&mut s, t0);
        drain(&mut s, t0);
        for _ in 0..cfg.max_unanswered_retries + 1 {
            let d = s.deadline().unwrap();
            s.on_timeout(d);
            drain(&mut s, d);
        }
        assert_eq!(s.outcome(), None);
    }

    /// A lock-step session of 1 MiB whose first 20 blocks came back in 200 µs each, and
    /// the time the last ACK arrived.
    fn settled_at_200us() -> (Session, Instant) {
        let mut s = Session::new(
            &RequestOptions::default(),
            1 << 20,
            &SessionConfig::default(),
        );
        let mut now = Instant::now();
        for b in 1..=20u16 {
            drain(&mut s, now);
            now += Duration::from_micros(200);
            s.handle(now, &ack(b));
        }
        (s, now)
    }

    #[test]
    fn rtt_is_measured_and_used() {
        let (mut s, now) = settled_at_200us();
        drain(&mut s, now);
        // 200 µs round trips: the timer sits at its 10 ms floor, not at seconds.
        assert_eq!(s.deadline().unwrap() - now, Duration::from_millis(10));
    }

    #[test]
    fn backoff_lasts_until_a_clean_round_trip() {
        // The round trip grew from 200 µs to 30 ms (a queue filled): the 10 ms timer
        // fires, the block goes again, the first copy's ACK comes back. The next block
        // must wait the doubled timer, not the 10 ms that just proved too short.
        let (mut s, mut now) = settled_at_200us();
        assert_eq!(blocks(&drain(&mut s, now)), vec![21]);
        now += Duration::from_millis(10);
        s.on_timeout(now);
        assert_eq!(blocks(&drain(&mut s, now)), vec![21]);
        now += Duration::from_millis(20);
        s.handle(now, &ack(21));
        assert_eq!(blocks(&drain(&mut s, now)), vec![22]);
        assert_eq!(s.deadline().unwrap() - now, Duration::from_millis(20));
        // An answer to a block sent once is a sample again, and ends the backoff.
        now += Duration::from_micros(200);
        s.handle(now, &ack(22));
        drain(&mut s, now);
        assert_eq!(s.deadline().unwrap() - now, Duration::from_millis(10));
    }

    #[test]
    fn client_error_ends_at_once() {
        // UEFI: RRQ with tsize, OACK, then ERROR 8 to abort the probe.
        let t0 = Instant::now();
        let mut s = Session::new(
            &opts(Some(1468), None, true),
            5000,
            &SessionConfig::default(),
        );
        assert_eq!(drain(&mut s, t0).len(), 1);
        s.handle(
            t0,
            &Packet::Error {
                code: ErrorCode::OptionNegotiation,
                message: b"aborted",
            },
        );
        assert_eq!(
            s.outcome(),
            Some(&Outcome::ClientError {
                code: ErrorCode::OptionNegotiation,
                message: "aborted".into()
            })
        );
        assert_eq!(s.deadline(), None);
        assert!(drain(&mut s, t0).is_empty());
    }

    #[test]
    fn block_numbers_roll_over() {
        let t0 = Instant::now();
        let size = 70_000 * 8 + 3;
        let mut s = Session::new(
            &opts(Some(8), Some(64), false),
            size,
            &SessionConfig::default(),
        );
        drain(&mut s, t0);
        s.handle(t0, &ack(0));
        let mut sent = 0u64;
        loop {
            let t = drain(&mut s, t0);
            if t.is_empty() {
                break;
            }
            let Transmit::Data { block, offset, .. } = *t.last().unwrap() else {
                panic!()
            };
            sent += t.len() as u64;
            assert_eq!(offset, (sent - 1) * 8);
            assert_eq!(block, sent as u16);
            s.handle(t0, &ack(block));
        }
        assert_eq!(sent, 70_001);
        assert_eq!(s.outcome(), Some(&Outcome::Complete));
        assert_eq!(s.stats().retransmitted, 0);
    }

    #[test]
    fn stale_ack_after_wrap_is_ignored() {
        let t0 = Instant::now();
        let mut s = Session::new(
            &opts(Some(8), Some(1), false),
            70_000 * 8,
            &SessionConfig::default(),
        );
        drain(&mut s, t0);
        s.handle(t0, &ack(0));
        for i in 1..=65540u64 {
            let t = drain(&mut s, t0);
            assert_eq!(blocks(&t), vec![i as u16]);
            s.handle(t0, &ack(i as u16));
        }
        // ACK 65535 (block 65535 from before the wrap) now is stale.
        drain(&mut s, t0);
        s.handle(t0, &ack(65535));
        assert!(drain(&mut s, t0).is_empty());
        assert_eq!(s.acked_bytes(), 65540 * 8);
    }

    #[test]
    fn negotiation_limits() {
        let cfg = SessionConfig {
            max_blksize: 1468,
            max_windowsize: 16,
            ..SessionConfig::default()
        };
        let n = negotiate(&opts(Some(65464), Some(1000), true), 42, &cfg);
        assert_eq!(n.blksize, 1468);
        assert_eq!(n.windowsize, 16);
        assert_eq!(n.oack.tsize, Some(42));
    }
}
