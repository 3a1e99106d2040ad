//! Client side of a read transfer: a sans-IO [`Transfer`] and a blocking [`fetch`].
//!
//! [`fetch`] uses only `std::net`, so the initramfs helper can use it without tokio
//! (`default-features = false`). It asks for `blksize`, `windowsize` and `tsize`; a
//! server that ignores options (or some of them) gets a lock-step RFC 1350 transfer.
//!
//! ```no_run
//! use diskless_tftp::client::{self, Options};
//! let mut out = Vec::new();
//! let summary = client::fetch(
//!     "192.0.2.1:69".parse().unwrap(),
//!     "images/root.squashfs",
//!     &Options::default(),
//!     &mut out,
//!     &mut |p| {
//!         // Refuse a file larger than we can hold before any data arrives.
//!         match p.tsize {
//!             Some(t) if t > 1 << 30 => Err("image larger than RAM allows".into()),
//!             _ => Ok(()),
//!         }
//!     },
//! )
//! .unwrap();
//! println!("{} bytes, blksize {}", summary.bytes, summary.blksize);
//! ```

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use crate::rtt::{RttConfig, RttEstimator};
use crate::wire::{
    self, ErrorCode, Lossy, Mode, Opcode, Packet, RequestOptions, DEFAULT_BLKSIZE, MAX_BLKSIZE,
};

/// What to ask the server for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// Requested block size (8..=65464); 512 sends no `blksize` option.
    pub blksize: u16,
    /// Requested window (RFC 7440); 1 sends no `windowsize` option.
    pub windowsize: u16,
    /// Longest wait between retransmissions; sent as the RFC 2349 `timeout` option.
    pub timeout: Duration,
    /// Ask for the RFC 2349 transfer size.
    pub request_tsize: bool,
    /// Consecutive timeouts before giving up.
    pub max_retries: u32,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            // Fits a 1500-byte Ethernet MTU without IP fragmentation.
            blksize: 1468,
            // Each window costs a round trip, long in an emulated guest; 64 blocks (94 KB)
            // fit the receive buffer and a virtio RX ring (256). QEMU TCG guest, 192 MiB:
            // 18.5 MB/s with 16, 22.5 MB/s with 64.
            windowsize: 64,
            timeout: Duration::from_secs(3),
            request_tsize: true,
            max_retries: 10,
        }
    }
}

/// Reported to the progress callback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Bytes received so far.
    pub bytes: u64,
    /// Size announced by the server, if it answered `tsize`.
    pub tsize: Option<u64>,
}

/// A finished transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    /// Bytes received.
    pub bytes: u64,
    /// Size the server announced, if any.
    pub tsize: Option<u64>,
    /// Block size used.
    pub blksize: u16,
    /// Window size used (1 when the server refused the option).
    pub windowsize: u16,
    /// Time from the request to the last block.
    pub elapsed: Duration,
    /// Timeouts that fired.
    pub timeouts: u64,
}

/// Why a transfer failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The server answered with an ERROR packet.
    #[error("server error {code:?}: {message}")]
    Server {
        /// Its code.
        code: ErrorCode,
        /// Its message.
        message: String,
    },
    /// No answer after all retries.
    #[error("timed out after {retries} retries ({bytes} bytes received)")]
    TimedOut {
        /// Retries made.
        retries: u32,
        /// Bytes received before.
        bytes: u64,
    },
    /// The server broke the protocol.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The progress callback stopped the transfer.
    #[error("aborted: {0}")]
    Aborted(String),
    /// Socket or sink failure.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: &'static str,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// What the client state machine wants done after an input.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Step<'a> {
    /// Payload to append to the output, in order.
    pub data: Option<&'a [u8]>,
    /// Packet to send to the server.
    pub send: Option<Vec<u8>>,
    /// Options were just settled (OACK or first DATA): report `tsize` now.
    pub negotiated: bool,
    /// The last block arrived (its ACK is in `send`).
    pub done: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// RRQ sent, nothing back yet.
    Requested,
    /// Receiving blocks.
    Receiving,
    /// Last block received and acknowledged.
    Done,
}

/// One read transfer, client side, without I/O.
#[derive(Debug)]
pub struct Transfer {
    opts: Options,
    rrq: Vec<u8>,
    state: State,
    blksize: u16,
    windowsize: u16,
    tsize: Option<u64>,
    /// Next block expected (1-based, 64-bit across wraps).
    expected: u64,
    /// In-order blocks received since the last ACK sent.
    in_window: u16,
    /// An ACK for the current gap was sent already.
    gap_acked: bool,
    bytes: u64,
    deadline: Option<Instant>,
    /// When the last ACK (or RRQ) was sent, if sent once: for RTT samples.
    sample_from: Option<Instant>,
    rtt: RttEstimator,
    retries: u32,
    timeouts: u64,
}

impl Transfer {
    /// Prepares the RRQ for `path`.
    pub fn new(path: &str, opts: &Options) -> Transfer {
        let mut req = RequestOptions::default();
        let blksize = opts.blksize.clamp(wire::MIN_BLKSIZE, MAX_BLKSIZE);
        if blksize != DEFAULT_BLKSIZE {
            req.blksize = Some(blksize);
        }
        if opts.windowsize > 1 {
            req.windowsize = Some(opts.windowsize);
        }
        if opts.request_tsize {
            req.tsize = Some(0);
        }
        let secs = opts.timeout.as_secs().clamp(1, 255);
        req.timeout = Some(secs as u8);
        let rrq = wire::emit_with_options(
            Opcode::Rrq,
            Some((path.as_bytes(), Mode::Octet)),
            &req.to_pairs(),
        );
        let mut rtt = RttEstimator::new(RttConfig {
            initial: Duration::from_millis(500).min(opts.timeout),
            max: opts.timeout,
            ..RttConfig::default()
        });
        rtt.cap(opts.timeout);
        Transfer {
            opts: *opts,
            rrq,
            state: State::Requested,
            blksize: DEFAULT_BLKSIZE,
            windowsize: 1,
            tsize: None,
            expected: 1,
            in_window: 0,
            gap_acked: false,
            bytes: 0,
            deadline: None,
            sample_from: None,
            rtt,
            retries: 0,
            timeouts: 0,
        }
    }

    /// The RRQ to send first; arms the timer.
    pub fn start(&mut self, now: Instant) -> Vec<u8> {
        self.arm(now, true);
        self.rrq.clone()
    }

    fn arm(&mut self, now: Instant, sample: bool) {
        self.deadline = Some(now + self.rtt.rto());
        self.sample_from = (sample && self.retries == 0).then_some(now);
    }

    /// When [`on_timeout`](Self::on_timeout) is due.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Progress so far.
    pub fn progress(&self) -> Progress {
        Progress {
            bytes: self.bytes,
            tsize: self.tsize,
        }
    }

    /// Whether the last block has been received.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// The ACK of the last in-order block.
    fn ack(&self) -> Vec<u8> {
        Packet::Ack {
            block: (self.expected - 1) as u16,
        }
        .to_vec()
    }

    /// The summary, given the elapsed time.
    pub fn summary(&self, elapsed: Duration) -> Summary {
        Summary {
            bytes: self.bytes,
            tsize: self.tsize,
            blksize: self.blksize,
            windowsize: self.windowsize,
            elapsed,
            timeouts: self.timeouts,
        }
    }

    /// Feeds a packet from the server's transfer port.
    pub fn handle<'a>(&mut self, now: Instant, packet: &Packet<'a>) -> Result<Step<'a>, Error> {
        let mut step = Step::default();
        match (self.state, packet) {
            (_, Packet::Error { code, message }) => {
                return Err(Error::Server {
                    code: *code,
                    message: Lossy(message).to_string(),
                })
            }
            (State::Requested, Packet::Oack { options }) => {
                let got = RequestOptions::from_raw(options);
                if let Some(b) = got.blksize {
                    // RFC 2348: the server may only lower the size.
                    if b > self.opts.blksize.max(DEFAULT_BLKSIZE) {
                        return self.refuse(format!("server chose blksize {b}"));
                    }
                    self.blksize = b;
                }
                if let Some(w) = got.windowsize {
                    if w > self.opts.windowsize {
                        return self.refuse(format!("server chose windowsize {w}"));
                    }
                    self.windowsize = w;
                }
                self.tsize = got.tsize.filter(|_| self.opts.request_tsize);
                self.took_sample(now);
                self.state = State::Receiving;
                step.negotiated = true;
                step.send = Some(Packet::Ack { block: 0 }.to_vec());
                self.arm(now, true);
            }
            (State::Requested, Packet::Data { block: 1, .. }) => {
                // No OACK: the server ignored every option; RFC 1350 defaults apply.
                self.state = State::Receiving;
                step.negotiated = true;
                return self.on_data(now, 1, packet, step);
            }
            (State::Receiving, Packet::Data { block, .. }) => {
                return self.on_data(now, *block, packet, step);
            }
            // Our last ACK was lost and the server resends the last block.
            (State::Done, Packet::Data { block, .. }) if *block == (self.expected - 1) as u16 => {
                step.send = Some(self.ack());
            }
            // A second OACK (duplicate), stray ACKs or requests: nothing to do.
            _ => {}
        }
        Ok(step)
    }

    fn refuse<T>(&mut self, why: String) -> Result<T, Error> {
        Err(Error::Protocol(why))
    }

    fn on_data<'a>(
        &mut self,
        now: Instant,
        block: u16,
        packet: &Packet<'a>,
        mut step: Step<'a>,
    ) -> Result<Step<'a>, Error> {
        let Packet::Data { data, .. } = *packet else {
            unreachable!()
        };
        let ahead = block.wrapping_sub(self.expected as u16);
        if ahead >= 0x8000 {
            // A block we already have. It is not acknowledged: a server restarts its
            // window at any ACK short of the window's end, so answering duplicates
            // feeds back on itself. Our ACK past a gap makes the server resend blocks
            // whose first copies are still on their way; those copies arrive in order,
            // the resent ones as duplicates; an ACK for them restarts the server again,
            // and so on: in QEMU this resent more than the whole image (14615 restarts
            // for 8600 windows). If the server resends because our ACK was lost, our
            // own timer repeats that ACK.
            //
            // The timer restarts, as for any block: duplicates are the copies the
            // server sent before our last ACK reached it, queued ahead of what we
            // asked for. Timing out behind them would ACK again, restart the server
            // again and queue a third copy: through a shared, queueing link (a boot
            // storm: 5 clients behind a 100 Mbit FIFO) that fed back until each block
            // was sent 4 times (scripts/bench-storm).
            self.arm(now, false);
            return Ok(step);
        }
        if ahead != 0 {
            // One past a loss inside the window (RFC 7440 §4): ack the last block in
            // order, once until the next in-order block, so that a burst of such
            // blocks does not become a burst of ACKs; and count the window afresh from
            // there, as the server restarts its window after that ACK.
            if !self.gap_acked {
                self.gap_acked = true;
                self.in_window = 0;
                step.send = Some(self.ack());
            }
            // The server is sending: wait for its answer to that ACK behind these.
            self.arm(now, false);
            return Ok(step);
        }
        if data.len() > usize::from(self.blksize) {
            return self.refuse(format!(
                "block {block} has {} bytes, blksize is {}",
                data.len(),
                self.blksize
            ));
        }
        if self.in_window == 0 {
            self.took_sample(now);
        }
        self.gap_acked = false;
        self.retries = 0;
        self.expected += 1;
        self.bytes += data.len() as u64;
        self.in_window += 1;
        step.data = Some(data);
        if data.len() < usize::from(self.blksize) {
            self.state = State::Done;
            self.deadline = None;
            step.done = true;
            step.send = Some(self.ack());
        } else if self.in_window >= self.windowsize {
            self.in_window = 0;
            step.send = Some(self.ack());
            self.arm(now, true);
        } else {
            // Mid-window: wait for the next block.
            self.arm(now, false);
        }
        Ok(step)
    }

    fn took_sample(&mut self, now: Instant) {
        // After a retransmission there is no sample, and the backed-off timer stays.
        if let Some(t) = self.sample_from.take() {
            self.rtt.sample(now.saturating_duration_since(t));
        }
        self.retries = 0;
    }

    /// The deadline passed: resend the RRQ or the last ACK, or give up.
    pub fn on_timeout(&mut self, now: Instant) -> Result<Option<Vec<u8>>, Error> {
        match self.deadline {
            Some(d) if d <= now => {}
            _ => return Ok(None),
        }
        self.timeouts += 1;
        self.retries += 1;
        if self.retries > self.opts.max_retries {
            return Err(Error::TimedOut {
                retries: self.opts.max_retries,
                bytes: self.bytes,
            });
        }
        self.rtt.on_timeout();
        self.in_window = 0;
        self.gap_acked = false;
        self.arm(now, false);
        Ok(Some(match self.state {
            State::Requested => self.rrq.clone(),
            _ => self.ack(),
        }))
    }
}

fn io_err(context: &'static str) -> impl FnOnce(io::Error) -> Error {
    move |source| Error::Io { context, source }
}

/// Downloads `path` from the TFTP server at `server` into `sink`, blocking.
///
/// `progress` is called once the options are settled (with `tsize` if the server
/// announced it, before any data is written) and then about every 4 MiB and at the
/// end; returning `Err(reason)` aborts the transfer: an ERROR is sent to the server
/// and [`Error::Aborted`] returned. `path` is the TFTP filename as the server
/// expects it (for a `tftp://host/dir/file` URL that is `dir/file`, RFC 3617).
pub fn fetch(
    server: SocketAddr,
    path: &str,
    opts: &Options,
    sink: &mut dyn io::Write,
    progress: &mut dyn FnMut(Progress) -> Result<(), String>,
) -> Result<Summary, Error> {
    let bind: SocketAddr = if server.is_ipv4() {
        "0.0.0.0:0".parse().unwrap()
    } else {
        "[::]:0".parse().unwrap()
    };
    let sock = UdpSocket::bind(bind).map_err(io_err("binding a UDP socket"))?;
    grow_receive_buffer(&sock, RECEIVE_BUFFER);
    let mut t = Transfer::new(path, opts);
    let start = Instant::now();
    sock.send_to(&t.start(start), server)
        .map_err(io_err("sending the request"))?;
    let mut buf = vec![0u8; wire::DATA_HEADER_LEN + usize::from(MAX_BLKSIZE) + 1];
    // The server answers from a new port (its transfer ID); lock onto it.
    let mut tid: Option<SocketAddr> = None;
    let mut reported = 0u64;
    let mut last_timeout: Option<Duration> = None;
    loop {
        let now = Instant::now();
        // A deadline that passed while this process was not running (a slow guest) is no
        // timeout if a packet is waiting: read it first.
        if t.deadline().is_some_and(|d| d <= now) && !readable_now(&sock) {
            if let Some(p) = t.on_timeout(now)? {
                sock.send_to(&p, tid.unwrap_or(server))
                    .map_err(io_err("retransmitting"))?;
            }
            continue;
        }
        let wait = t
            .deadline()
            .map(|d| d.saturating_duration_since(now))
            .unwrap_or(Duration::from_secs(1))
            .max(Duration::from_micros(100));
        // Changing the timeout costs a syscall; skip it when close enough.
        if last_timeout.is_none_or(|l| l.abs_diff(wait) > wait / 4) {
            sock.set_read_timeout(Some(wait))
                .map_err(io_err("setting the socket timeout"))?;
            last_timeout = Some(wait);
        }
        let (n, from) = match sock.recv_from(&mut buf) {
            Ok(r) => r,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            // An ICMP error from an earlier send; the timer handles it.
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => continue,
            Err(e) => {
                return Err(Error::Io {
                    context: "receiving",
                    source: e,
                })
            }
        };
        match tid {
            Some(t) if t != from => {
                // RFC 1350: a packet from a stranger gets ERROR 5 and changes nothing.
                let e = wire::error_packet(ErrorCode::UnknownTid, "unknown transfer ID");
                let _ = sock.send_to(&e, from);
                continue;
            }
            None if from.ip() != server.ip() => continue,
            _ => {}
        }
        let Ok(packet) = Packet::parse(&buf[..n]) else {
            continue;
        };
        let now = Instant::now();
        let step = match t.handle(now, &packet) {
            Ok(s) => s,
            Err(e) => {
                if !matches!(e, Error::Server { .. }) {
                    let msg = e.to_string();
                    let _ = sock.send_to(
                        &wire::error_packet(ErrorCode::OptionNegotiation, &msg),
                        from,
                    );
                }
                return Err(e);
            }
        };
        tid.get_or_insert(from);
        if step.negotiated {
            if let Err(why) = progress(t.progress()) {
                let _ = sock.send_to(&wire::error_packet(ErrorCode::DiskFull, &why), from);
                return Err(Error::Aborted(why));
            }
        }
        if let Some(d) = step.data {
            sink.write_all(d).map_err(io_err("writing the output"))?;
        }
        if let Some(p) = &step.send {
            sock.send_to(p, from).map_err(io_err("sending an ACK"))?;
        }
        if t.progress().bytes - reported >= 4 << 20 || step.done {
            reported = t.progress().bytes;
            if let Err(why) = progress(t.progress()) {
                if !step.done {
                    let _ = sock.send_to(&wire::error_packet(ErrorCode::NotDefined, &why), from);
                }
                return Err(Error::Aborted(why));
            }
        }
        if step.done {
            let elapsed = start.elapsed();
            dally(&sock, &mut t, from, &mut buf);
            return Ok(t.summary(elapsed));
        }
    }
}

/// Whether a datagram is queued on `sock`, without waiting or consuming it. Checked
/// before acting on a deadline: a thread that was not scheduled for longer than the
/// timeout finds its deadline passed with the awaited packet already queued.
pub(crate) fn readable_now(sock: &UdpSocket) -> bool {
    use std::os::fd::AsRawFd;
    let mut byte = 0u8;
    // SAFETY: a one-byte peek into a local buffer on our own socket.
    let n = unsafe {
        libc::recv(
            sock.as_raw_fd(),
            (&mut byte as *mut u8).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    n >= 0
}

/// Receive buffer asked for: a few windows of the largest blocks. A window arrives as
/// one burst; a slow receiver (an emulated guest) drains it much later, and a burst
/// past the default buffer (~200 KiB, and each datagram is charged its whole
/// buffer, ~2-4 KiB) is dropped and costs a timeout.
const RECEIVE_BUFFER: usize = 4 << 20;

/// Raises `SO_RCVBUF`, past `net.core.rmem_max` when privileged (`SO_RCVBUFFORCE`, which
/// the initramfs helper is, as root); best effort: the default buffer still works.
fn grow_receive_buffer(sock: &UdpSocket, bytes: usize) {
    use std::os::fd::AsRawFd;
    let v = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    for opt in [libc::SO_RCVBUFFORCE, libc::SO_RCVBUF] {
        // SAFETY: setsockopt on our own socket with an int option.
        let r = unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&v as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if r == 0 {
            return;
        }
    }
}

/// After the last ACK, answer a retransmitted last block for a short while, in case
/// that ACK was lost (otherwise the server retries until it gives up).
fn dally(sock: &UdpSocket, t: &mut Transfer, from: SocketAddr, buf: &mut [u8]) {
    let until = Instant::now() + (t.rtt.rto() * 2).min(Duration::from_millis(500));
    loop {
        let now = Instant::now();
        if now >= until || sock.set_read_timeout(Some(until - now)).is_err() {
            return;
        }
        let Ok((n, src)) = sock.recv_from(buf) else {
            return;
        };
        if src != from {
            continue;
        }
        if let Ok(p) = Packet::parse(&buf[..n]) {
            if let Ok(Step {
                send: Some(ack), ..
            }) = t.handle(now, &p)
            {
                let _ = sock.send_to(&ack, from);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(block: u16, d: &[u8]) -> Packet<'_> {
        Packet::Data { block, data: d }
    }

    #[test]
    fn rrq_carries_options() {
        let mut t = Transfer::new("a/b", &Options::default());
        let rrq = t.start(Instant::now());
        assert_eq!(
            &rrq[..],
            b"\x00\x01a/b\x00octet\x00blksize\x001468\x00timeout\x003\x00tsize\x000\x00windowsize\x0064\x00"
        );
    }

    #[test]
    fn falls_back_to_lock_step() {
        let t0 = Instant::now();
        let mut t = Transfer::new("f", &Options::default());
        t.start(t0);
        // Server knows blksize only (like tftpd-hpa without windowsize).
        let oack = b"\x00\x06blksize\x001468\x00tsize\x003000\x00";
        let s = t.handle(t0, &Packet::parse(oack).unwrap()).unwrap();
        assert!(s.negotiated);
        assert_eq!(s.send.as_deref(), Some(&[0, 4, 0, 0][..]));
        assert_eq!(t.progress().tsize, Some(3000));
        let block = vec![7u8; 1468];
        let s = t.handle(t0, &data(1, &block)).unwrap();
        assert_eq!(s.data.map(<[u8]>::len), Some(1468));
        assert_eq!(s.send.as_deref(), Some(&[0, 4, 0, 1][..]), "window of 1");
        let s = t.handle(t0, &data(2, &block)).unwrap();
        assert_eq!(s.send.as_deref(), Some(&[0, 4, 0, 2][..]));
        let s = t.handle(t0, &data(3, &block[..64])).unwrap();
        assert!(s.done);
        assert_eq!(t.summary(Duration::ZERO).bytes, 1468 * 2 + 64);
        assert_eq!(t.summary(Duration::ZERO).windowsize, 1);
    }

    #[test]
    fn no_oack_means_rfc1350() {
        let t0 = Instant::now();
        let mut t = Transfer::new("f", &Options::default());
        t.start(t0);
        let s = t.handle(t0, &data(1, &[1; 512])).unwrap();
        assert!(s.negotiated);
        assert_eq!(s.send.as_deref(), Some(&[0, 4, 0, 1][..]));
        let s = t.handle(t0, &data(2, &[1; 100])).unwrap();
        assert!(s.done);
    }

    /// A transfer that asked for, and got, blocks of 8 bytes in windows of 4.
    fn windowed(t0: Instant) -> Transfer {
        let opts = Options {
            blksize: 8,
            windowsize: 4,
            ..Options::default()
        };
        let mut t = Transfer::new("f", &opts);
        t.start(t0);
        t.handle(
            t0,
            &Packet::parse(b"\x00\x06blksize\x008\x00windowsize\x004\x00").unwrap(),
        )
        .unwrap();
        t
    }

    #[test]
    fn window_gap_acks_once() {
        let t0 = Instant::now();
        let mut t = windowed(t0);
        let b = [0u8; 8];
        assert_eq!(t.handle(t0, &data(1, &b)).unwrap().send, None);
        // Block 2 lost: 3 and 4 arrive; only the first triggers ACK 1.
        let s = t.handle(t0, &data(3, &b)).unwrap();
        assert_eq!(s.send.as_deref(), Some(&[0, 4, 0, 1][..]));
        assert_eq!(s.data, None);
        assert_eq!(t.handle(t0, &data(4, &b)).unwrap().send, None);
        // A duplicate of block 1 is not answered.
        assert_eq!(t.handle(t0, &data(1, &b)).unwrap().send, None);
        // Server restarts at 2.
        for blk in 2..=5 {
            let s = t.handle(t0, &data(blk, &b)).unwrap();
            assert!(s.data.is_some());
            // The window restarted after block 1, so it ends at block 5.
            assert_eq!(s.send.is_some(), blk == 5, "block {blk}");
        }
        // The first copies of 3 and 4, still on their way, are duplicates now: no ACK
        // (it would restart the server's window once more).
        for blk in [3, 4] {
            let s = t.handle(t0, &data(blk, &b)).unwrap();
            assert_eq!((s.send, s.data), (None, None), "block {blk}");
        }
    }

    #[test]
    fn duplicates_restart_the_timer() {
        // After our ACK restarted the server, the copies it sent before are still
        // arriving: while they do, our timer must not fire (its ACK would restart the
        // server once more).
        let t0 = Instant::now();
        let mut t = windowed(t0);
        let b = [0u8; 8];
        for blk in 1..=4 {
            t.handle(t0, &data(blk, &b)).unwrap();
        }
        let rto = t.deadline().unwrap() - t0;
        let later = t0 + rto * 3 / 4;
        assert_eq!(t.handle(later, &data(2, &b)).unwrap().send, None);
        assert_eq!(t.deadline(), Some(later + rto));
        // Past a gap, too: the answer to our gap ACK is behind these blocks.
        let gap = later + rto * 3 / 4;
        assert!(t.handle(gap, &data(7, &b)).unwrap().send.is_some());
        let after = gap + rto * 3 / 4;
        assert_eq!(t.handle(after, &data(8, &b)).unwrap().send, None);
        assert_eq!(t.deadline(), Some(after + rto));
        assert_eq!(t.on_timeout(after + rto / 2).unwrap(), None);
    }

    #[test]
    fn refuses_larger_blksize_and_reports_server_error() {
        let t0 = Instant::now();
        let mut t = Transfer::new("f", &Options::default());
        t.start(t0);
        let e = t
            .handle(t0, &Packet::parse(b"\x00\x06blksize\x009000\x00").unwrap())
            .unwrap_err();
        assert!(matches!(e, Error::Protocol(_)), "{e}");
        let mut t = Transfer::new("f", &Options::default());
        t.start(t0);
        let e = t
            .handle(t0, &Packet::parse(b"\x00\x05\x00\x01nope\x00").unwrap())
            .unwrap_err();
        assert!(
            matches!(e, Error::Server { code: ErrorCode::FileNotFound, ref message } if message == "nope")
        );
    }

    #[test]
    fn timeout_resends_then_fails() {
        let t0 = Instant::now();
        let opts = Options {
            max_retries: 2,
            ..Options::default()
        };
        let mut t = Transfer::new("f", &opts);
        let rrq = t.start(t0);
        let d = t.deadline().unwrap();
        assert_eq!(t.on_timeout(t0).unwrap(), None);
        assert_eq!(t.on_timeout(d).unwrap(), Some(rrq));
        let d = t.deadline().unwrap();
        t.on_timeout(d).unwrap();
        let d = t.deadline().unwrap();
        assert!(matches!(
            t.on_timeout(d),
            Err(Error::TimedOut { retries: 2, .. })
        ));
    }
}

#[cfg(test)]
mod against_session {
    //! The client state machine against the server's, packets in order, with our
    //! ACKs reaching the server while the rest of a window is still queued for us.
    use super::*;
    use crate::session::{Session, SessionConfig, Transmit};
    use std::collections::VecDeque;

    /// Runs a transfer of `file`; `stall_at` makes the client's timer fire (as after a
    /// scheduling stall) when it has received that many blocks. Returns what the
    /// client received and the server's counters.
    fn transfer(file: &[u8], stall_at: u64) -> (Vec<u8>, crate::session::Stats) {
        let t0 = Instant::now();
        let opts = Options {
            blksize: 8,
            windowsize: 8,
            ..Options::default()
        };
        let mut client = Transfer::new("f", &opts);
        let rrq = client.start(t0);
        let Ok(Packet::Rrq(req)) = Packet::parse(&rrq) else {
            panic!("not an RRQ")
        };
        let mut server = Session::new(
            &RequestOptions::from_raw(&req.options),
            file.len() as u64,
            &SessionConfig::default(),
        );
        let mut queue: VecDeque<Vec<u8>> = VecDeque::new();
        let mut got = Vec::new();
        let mut received = 0u64;
        let pump = |server: &mut Session, queue: &mut VecDeque<Vec<u8>>| {
            while let Some(t) = server.poll_transmit(t0) {
                queue.push_back(match t {
                    Transmit::Packet(p) => p,
                    Transmit::Data { block, offset, len } => {
                        let o = offset as usize;
                        Packet::Data {
                            block,
                            data: &file[o..o + len],
                        }
                        .to_vec()
                    }
                });
            }
        };
        pump(&mut server, &mut queue);
        while !client.is_done() {
            let bytes = queue.pop_front().expect("the transfer stalled");
            let step = client.handle(t0, &Packet::parse(&bytes).unwrap()).unwrap();
            let mut send = step.send;
            if let Some(d) = step.data {
                got.extend_from_slice(d);
                received += 1;
                if received == stall_at {
                    let at = client.deadline().unwrap();
                    send = client.on_timeout(at).unwrap();
                }
            }
            if let Some(ack) = send {
                server.handle(t0, &Packet::parse(&ack).unwrap());
                pump(&mut server, &mut queue);
            }
        }
        (got, server.stats())
    }

    #[test]
    fn one_early_ack_costs_at_most_a_window() {
        let file: Vec<u8> = (0..8 * 8 * 50).map(|i| (i * 7 % 251) as u8).collect();
        let (got, clean) = transfer(&file, 0);
        assert!(got == file);
        assert_eq!(clean.retransmitted, 0);
        // An ACK in the middle of the second window: the server restarts there and
        // resends what is still queued for us. Those copies arrive as duplicates and
        // must not be acknowledged, or each such ACK restarts the server again, to
        // the end of the file.
        let (got, stalled) = transfer(&file, 11);
        assert!(got == file);
        assert!(
            stalled.retransmitted <= 8 && stalled.rewinds == 1,
            "{stalled:?}"
        );
    }
}
