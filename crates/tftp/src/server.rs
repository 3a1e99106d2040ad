//! The tokio server: one socket for requests, one thread and one port per transfer.
//!
//! [`serve`] reads requests on the caller's socket with tokio. Each read request gets
//! its own thread with a blocking socket bound to the address the request arrived on
//! (learned with
//! `IP_PKTINFO`/`IPV6_PKTINFO` when the server socket is bound to a wildcard), so a
//! multi-homed server answers from the address the client talked to; firmware drops
//! replies from any other. That socket is connected to the client, so the kernel
//! filters out strangers (their packets never reach the transfer).
//!
//! Why a thread per transfer rather than a task: a lock-step transfer is one round trip
//! per block, and the latency of each wake-up is the throughput. Measured on loopback
//! with busybox at blksize 1468, a tokio task reached 29 MB/s where a blocking
//! `recv` with `SO_RCVTIMEO` reaches the speed of tftpd-hpa and beyond: the reactor
//! adds an `epoll_wait` and a cross-thread wake to every block.
//!
//! Memory per transfer is one send buffer of `4 + blksize` bytes, a read buffer of
//! 64 KiB (or one block, if larger; windows use a GSO buffer of the same size), a small
//! receive buffer, the [`Session`] and a thread with a 256 KiB stack; files are read a
//! chunk at a time with `pread`, never loaded whole, and at most
//! [`ServerConfig::max_transfers`] run at once.

use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::sync::atomic::{AtomicBool, Ordering};
use tokio::io::Interest;
use tokio::net::UdpSocket;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::admission::{Admission, SourceLimits};
use crate::root::{self, BlockSource, MemorySource, NetasciiSource, OctetSource, PathError};
use crate::session::{Outcome, Session, SessionConfig, Transmit};
use crate::wire::{self, ErrorCode, Lossy, Mode, Packet, RequestOptions};

/// Server settings.
#[derive(Clone)]
pub struct ServerConfig {
    /// Directory served; nothing outside it is ever read.
    pub root: PathBuf,
    /// Limits on negotiated options and timers.
    pub session: SessionConfig,
    /// Transfers running at once; further requests are dropped (clients retry). Each
    /// running transfer holds two descriptors (its socket and the file it reads).
    pub max_transfers: usize,
    /// Limits per source address (new transfers a second, transfers running); requests
    /// over them are dropped like those over `max_transfers`.
    pub per_source: SourceLimits,
    /// Called when each request ends, served or refused.
    pub on_transfer_done: Option<TransferHook>,
    /// Files served beside the root, asked first: a boot server's generated configs, or
    /// binaries it serves from the paths their packages installed them at.
    pub virtual_files: Option<VirtualFiles>,
    /// Asked first, before any file is looked for: `Err(reason)` refuses the request with
    /// error 2, access violation (a boot server that answers only the clients it lists).
    pub allow: Option<AllowHook>,
}

/// Given a requested name (checked as for [`VirtualFiles`]) and the client, whether to serve
/// it; `Err` carries the reason sent in the error packet.
pub type AllowHook = Arc<dyn Fn(&std::path::Path, SocketAddr) -> Result<(), String> + Send + Sync>;

/// Given a requested name (already checked by [`root::sanitize`]: relative, no `..`, no
/// hidden component) and the client, what to serve instead of a file of the root; `None`
/// falls through to the root.
pub type VirtualFiles = Arc<dyn Fn(&std::path::Path, SocketAddr) -> Option<Virtual> + Send + Sync>;

/// What [`VirtualFiles`] serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Virtual {
    /// This file, wherever it is (the hook chose it; the client's name does not reach it).
    File(PathBuf),
    /// These bytes.
    Bytes(Vec<u8>),
}

impl std::fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerConfig")
            .field("root", &self.root)
            .field("session", &self.session)
            .field("max_transfers", &self.max_transfers)
            .field("per_source", &self.per_source)
            .field("on_transfer_done", &self.on_transfer_done.is_some())
            .field("virtual_files", &self.virtual_files.is_some())
            .field("allow", &self.allow.is_some())
            .finish()
    }
}

/// A callback for each finished request (e.g. to record which client fetched what).
/// It runs on the transfer's thread, after the last packet: keep it short.
pub type TransferHook = Arc<dyn Fn(&TransferLog) + Send + Sync>;

/// Default for [`ServerConfig::max_transfers`].
pub const DEFAULT_MAX_TRANSFERS: usize = 1024;

impl ServerConfig {
    /// Serves `root` with default limits.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        ServerConfig {
            root: root.into(),
            session: SessionConfig::default(),
            max_transfers: DEFAULT_MAX_TRANSFERS,
            per_source: SourceLimits::default(),
            on_transfer_done: None,
            virtual_files: None,
            allow: None,
        }
    }
}

/// The record of one request.
#[derive(Debug, Clone)]
pub struct TransferLog {
    /// Client address and port.
    pub client: SocketAddr,
    /// Our address the request arrived on.
    pub local: IpAddr,
    /// Requested name, as text.
    pub filename: String,
    /// Transfer mode.
    pub mode: Mode,
    /// Options the client asked for (known ones).
    pub requested: RequestOptions,
    /// Block size used.
    pub blksize: u16,
    /// Window size used.
    pub windowsize: u16,
    /// Size of the file in transfer bytes, if opened.
    pub size: Option<u64>,
    /// Bytes the client acknowledged.
    pub bytes: u64,
    /// From request to end.
    pub elapsed: Duration,
    /// DATA packets sent again.
    pub retransmitted: u64,
    /// Retransmission timeouts that fired.
    pub timeouts: u64,
    /// ACKs short of the window end that restarted the window (gaps at the client).
    pub rewinds: u64,
    /// Duplicate ACKs.
    pub duplicate_acks: u64,
    /// How it ended.
    pub outcome: TransferOutcome,
}

/// How a request ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransferOutcome {
    /// Every byte acknowledged.
    Complete,
    /// Refused with this error (not found, traversal, write request, ...).
    Refused {
        /// Code sent.
        code: ErrorCode,
        /// Reason (also sent).
        reason: String,
    },
    /// The client ended it with an ERROR (e.g. a UEFI `tsize` probe).
    ClientAborted {
        /// Client's code.
        code: ErrorCode,
        /// Client's message.
        message: String,
    },
    /// The client stopped answering. With `all_sent`, every block went out and only the
    /// last ACK is missing: the client most likely has the whole file (clients do not
    /// all wait to repeat a lost last ACK).
    TimedOut {
        /// Every block was sent.
        all_sent: bool,
    },
    /// Reading the file or the socket failed.
    Failed(String),
}

/// Why the server stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The root cannot be opened.
    #[error("cannot open root {path}: {source}")]
    Root {
        /// The root.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// Socket setup or receive failure.
    #[error("{context}: {source}")]
    Socket {
        /// What was being done.
        context: &'static str,
        /// Cause.
        #[source]
        source: io::Error,
    },
}

/// Binds a server socket on `addr` with address reuse and `IP_PKTINFO` on, ready for
/// [`serve`]. (A socket bound elsewhere works too, but requests that arrive before
/// `serve` turns `IP_PKTINFO` on are answered from the address routing picks.)
pub fn bind(addr: SocketAddr) -> io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    s.set_reuse_address(true)?;
    if addr.is_ipv6() {
        s.set_only_v6(false).ok();
    }
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    let socket = UdpSocket::from_std(s.into())?;
    enable_pktinfo(&socket, addr)?;
    Ok(socket)
}

/// Serves read requests arriving on `socket` until `shutdown` completes; running
/// transfers are then cancelled.
pub async fn serve(
    socket: UdpSocket,
    config: ServerConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    let root = root::open_root(&config.root).map_err(|source| Error::Root {
        path: config.root.clone(),
        source,
    })?;
    let local = socket.local_addr().map_err(|source| Error::Socket {
        context: "reading the server address",
        source,
    })?;
    enable_pktinfo(&socket, local).map_err(|source| Error::Socket {
        context: "enabling IP_PKTINFO",
        source,
    })?;
    let shared = Arc::new(Shared {
        root,
        limit: Arc::new(Semaphore::new(config.max_transfers)),
        admission: std::sync::Mutex::new(Admission::new(config.per_source, MAX_SOURCES)),
        stopping: AtomicBool::new(false),
        config,
    });
    tracing::info!(listen = %local, root = %shared.config.root.display(), "tftp: serving");
    let mut buf = vec![0u8; 65536];
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            r = recv_with_dst(&socket, &mut buf) => {
                let (n, client, dst) = match r {
                    Ok(r) => r,
                    Err(e) => {
                        // ICMP errors from earlier sends surface here; keep serving.
                        tracing::debug!(error = %e, "tftp: receive error");
                        continue;
                    }
                };
                let local_ip = dst.unwrap_or(local.ip());
                handle_request(&shared, &buf[..n], client, local_ip);
            }
        }
    }
    // Transfers notice within one poll interval and return their permits.
    shared.stopping.store(true, Ordering::Relaxed);
    let all = u32::try_from(shared.config.max_transfers).unwrap_or(u32::MAX);
    let _ = shared.limit.acquire_many(all).await;
    tracing::info!(listen = %local, "tftp: stopped");
    Ok(())
}

/// Binds `addr` and serves (see [`serve`]).
pub async fn serve_addr(
    addr: SocketAddr,
    config: ServerConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    let socket = bind(addr).map_err(|source| Error::Socket {
        context: "binding the server socket",
        source,
    })?;
    serve(socket, config, shutdown).await
}

/// Source addresses [`Admission`] remembers at once (a few hundred bytes of table).
const MAX_SOURCES: usize = 4096;

struct Shared {
    root: std::fs::File,
    config: ServerConfig,
    /// One permit per running transfer.
    limit: Arc<Semaphore>,
    /// Rate and running transfers per source address.
    admission: std::sync::Mutex<Admission>,
    /// Set when `serve` returns: transfers stop at their next wake-up.
    stopping: AtomicBool,
}

fn handle_request(shared: &Arc<Shared>, datagram: &[u8], client: SocketAddr, local: IpAddr) {
    let packet = match Packet::parse(datagram) {
        Ok(p) => p,
        Err(e) => {
            tracing::debug!(%client, error = %e, "tftp: malformed request dropped");
            return;
        }
    };
    let (req, is_write) = match packet {
        Packet::Rrq(r) => (r, false),
        Packet::Wrq(r) => (r, true),
        // DATA/ACK/... on the request port belong to no transfer.
        _ => {
            tracing::debug!(%client, opcode = ?packet.opcode(), "tftp: stray packet on the server port");
            return;
        }
    };
    // Dropped, not refused with an ERROR: an answer to a forged source is what the
    // limit is there to stop. Logged at debug only, as a flood would flood the log too.
    let admitted = shared
        .admission
        .lock()
        .expect("admission lock")
        .admit(client.ip(), Instant::now());
    if let Err(refusal) = admitted {
        tracing::debug!(%client, %refusal, "tftp: request dropped");
        return;
    }
    let Ok(permit) = Arc::clone(&shared.limit).try_acquire_owned() else {
        shared.finished(client.ip());
        tracing::warn!(%client, "tftp: too many transfers, request dropped");
        return;
    };
    let filename = req.filename.to_vec();
    let log = TransferLog {
        client,
        local,
        filename: Lossy(&filename).to_string(),
        mode: req.mode,
        requested: RequestOptions::from_raw(&req.options),
        blksize: wire::DEFAULT_BLKSIZE,
        windowsize: 1,
        size: None,
        bytes: 0,
        elapsed: Duration::ZERO,
        retransmitted: 0,
        timeouts: 0,
        rewinds: 0,
        duplicate_acks: 0,
        outcome: TransferOutcome::Complete,
    };
    let shared2 = Arc::clone(shared);
    let spawned = std::thread::Builder::new()
        .name("tftp-transfer".into())
        .stack_size(256 << 10)
        .spawn(move || run_transfer(shared2, filename, is_write, log, permit));
    if let Err(e) = spawned {
        shared.finished(client.ip());
        tracing::warn!(%client, error = %e, "tftp: cannot start a transfer thread");
    }
}

impl Shared {
    /// A transfer admitted for `source` has ended (or never started).
    fn finished(&self, source: IpAddr) {
        self.admission
            .lock()
            .expect("admission lock")
            .finished(source);
    }
}

fn run_transfer(
    shared: Arc<Shared>,
    filename: Vec<u8>,
    is_write: bool,
    mut log: TransferLog,
    permit: OwnedSemaphorePermit,
) {
    let started = Instant::now();
    log.outcome = transfer(&shared, &filename, is_write, &mut log);
    log.elapsed = started.elapsed();
    report(&shared.config, &log);
    shared.finished(log.client.ip());
    drop(permit);
}

fn report(config: &ServerConfig, log: &TransferLog) {
    let secs = log.elapsed.as_secs_f64();
    let rate = if secs > 0.0 {
        log.bytes as f64 / secs / 1e6
    } else {
        0.0
    };
    let opts = format!(
        "blksize={} windowsize={}{}{}",
        log.blksize,
        log.windowsize,
        log.requested
            .tsize
            .map(|_| " tsize".to_string())
            .unwrap_or_default(),
        log.requested
            .timeout
            .map(|t| format!(" timeout={t}"))
            .unwrap_or_default()
    );
    match &log.outcome {
        TransferOutcome::Complete => tracing::info!(
            client = %log.client, local = %log.local, file = %log.filename, mode = log.mode.as_str(),
            options = %opts, bytes = log.bytes, seconds = format!("{secs:.3}"),
            rate = format!("{rate:.1} MB/s"), retransmitted = log.retransmitted,
            timeouts = log.timeouts, rewinds = log.rewinds, duplicate_acks = log.duplicate_acks,
            "tftp: sent"
        ),
        TransferOutcome::Refused { code, reason } => {
            if matches!(code, ErrorCode::AccessViolation) {
                tracing::warn!(client = %log.client, file = %log.filename, %reason, "tftp: refused")
            } else {
                tracing::info!(client = %log.client, file = %log.filename, %reason, "tftp: refused")
            }
        }
        TransferOutcome::ClientAborted { code, message } => tracing::info!(
            client = %log.client, file = %log.filename, options = %opts, bytes = log.bytes,
            code = ?code, %message, "tftp: client ended the transfer"
        ),
        TransferOutcome::TimedOut { all_sent } => tracing::warn!(
            client = %log.client, file = %log.filename, options = %opts, bytes = log.bytes,
            all_sent,
            seconds = format!("{secs:.3}"), "tftp: client stopped answering"
        ),
        TransferOutcome::Failed(e) => tracing::warn!(
            client = %log.client, file = %log.filename, bytes = log.bytes, error = %e,
            "tftp: transfer failed"
        ),
    }
    if let Some(cb) = &config.on_transfer_done {
        cb(log);
    }
}

/// Opens what `filename` names, a virtual file or one under the root, for `mode`.
fn open_source(
    shared: &Shared,
    filename: &[u8],
    mode: Mode,
    client: SocketAddr,
) -> Result<Box<dyn BlockSource>, (ErrorCode, String)> {
    let refuse = |e: PathError| {
        let code = match e {
            PathError::NotFound => ErrorCode::FileNotFound,
            PathError::Io(_) => ErrorCode::NotDefined,
            _ => ErrorCode::AccessViolation,
        };
        (code, e.to_string())
    };
    let rel = root::sanitize(filename).map_err(refuse)?;
    if let Some(allow) = &shared.config.allow {
        allow(&rel, client).map_err(|reason| (ErrorCode::AccessViolation, reason))?;
    }
    let io = |e: io::Error| (ErrorCode::NotDefined, e.to_string());
    let found = shared
        .config
        .virtual_files
        .as_ref()
        .and_then(|files| files(&rel, client));
    let file = match found {
        None => root::open_beneath(&shared.root, &rel).map_err(refuse)?,
        Some(_) if mode != Mode::Octet => {
            return Err((
                ErrorCode::IllegalOperation,
                "this file is served in octet mode only".into(),
            ))
        }
        Some(Virtual::Bytes(bytes)) => return Ok(Box::new(MemorySource::new(bytes))),
        Some(Virtual::File(path)) => std::fs::File::open(&path)
            .map_err(|e| io(io::Error::new(e.kind(), format!("{}: {e}", path.display()))))?,
    };
    Ok(match mode {
        Mode::Octet => Box::new(OctetSource::new(file).map_err(io)?),
        Mode::Netascii => Box::new(NetasciiSource::new(file).map_err(io)?),
        Mode::Mail => {
            return Err((
                ErrorCode::IllegalOperation,
                "mail mode is not supported".into(),
            ))
        }
    })
}

fn transfer(
    shared: &Shared,
    filename: &[u8],
    is_write: bool,
    log: &mut TransferLog,
) -> TransferOutcome {
    let sock = match transfer_socket(log.local, log.client) {
        Ok(s) => s,
        Err(e) => return TransferOutcome::Failed(format!("transfer socket: {e}")),
    };
    let opened = if is_write {
        Err((
            ErrorCode::AccessViolation,
            "read-only server: write requests are refused".to_string(),
        ))
    } else {
        open_source(shared, filename, log.mode, log.client)
    };
    let mut source = match opened {
        Ok(s) => s,
        Err((code, reason)) => {
            let _ = sock.send(&wire::error_packet(code, &reason));
            return TransferOutcome::Refused { code, reason };
        }
    };
    let size = source.len();
    log.size = Some(size);
    let mut config = shared.config.session;
    let running = shared.config.max_transfers - shared.limit.available_permits();
    let blksize = crate::session::negotiate(&log.requested, size, &config).blksize;
    config.max_windowsize = fair_window(config.max_windowsize, running, blksize);
    let mut session = Session::new(&log.requested, size, &config);
    log.blksize = session.negotiated().blksize;
    log.windowsize = session.negotiated().windowsize;
    let result = drive(&sock, &mut session, source.as_mut(), &shared.stopping);
    log.bytes = session.acked_bytes();
    log.retransmitted = session.stats().retransmitted;
    log.timeouts = session.stats().timeouts;
    log.rewinds = session.stats().rewinds;
    log.duplicate_acks = session.stats().duplicate_acks;
    match result {
        Err(e) => {
            let _ = sock.send(&crate::session::io_error_packet());
            TransferOutcome::Failed(e.to_string())
        }
        Ok(()) => match session.outcome() {
            Some(Outcome::Complete) => TransferOutcome::Complete,
            Some(Outcome::ClientError { code, message }) => TransferOutcome::ClientAborted {
                code: *code,
                message: message.clone(),
            },
            Some(Outcome::TimedOut { all_sent }) => TransferOutcome::TimedOut {
                all_sent: *all_sent,
            },
            None => TransferOutcome::Failed("server shutting down".into()),
        },
    }
}

/// Bytes of DATA all windows together may put on the wire at once: about the 1000
/// frames of a Linux interface's default queue (txqueuelen), the queue in front of the
/// server's link in a boot storm.
const WINDOWS_BUDGET: usize = 1000 * 1468;
/// Smallest window a storm brings a transfer down to.
const MIN_FAIR_WINDOW: u16 = 4;

/// The window a new transfer may have while `running` transfers (itself included) share
/// the link: the budget split evenly, never above `max` nor below [`MIN_FAIR_WINDOW`].
///
/// Each window leaves as one burst; when the bursts of all transfers together exceed the
/// queue in front of the link, its tail is dropped, and a window whose last blocks are
/// lost waits for a timeout. 200 clients asking for 64 blocks of 1468 bytes put 19 MB
/// into a queue of 1.5 MB: on a 100 Mbit link (scripts/bench-storm) they reached 63 % of
/// it, every transfer timing out 2 to 10 times.
fn fair_window(max: u16, running: usize, blksize: u16) -> u16 {
    let per_transfer = WINDOWS_BUDGET / running.max(1) / usize::from(blksize).max(1);
    let share = u16::try_from(per_transfer).unwrap_or(u16::MAX);
    max.min(share.max(MIN_FAIR_WINDOW))
}

/// Longest blocking wait, so that a shutdown is noticed.
const POLL_INTERVAL: Duration = Duration::from_millis(200);

/// Runs a session to its end over a connected blocking socket.
fn drive(
    sock: &std::net::UdpSocket,
    session: &mut Session,
    source: &mut dyn BlockSource,
    stopping: &AtomicBool,
) -> io::Result<()> {
    let blksize = usize::from(session.negotiated().blksize);
    let windowed = session.negotiated().windowsize > 1;
    let mut out = vec![0u8; wire::DATA_HEADER_LEN + blksize];
    // Lock-step: the file is read a chunk of blocks at a time, and the next chunk is read
    // while the client handles the last block of this one, so that when an ACK arrives
    // only the send is left on the round trip.
    let mut chunk = Chunk::new(blksize);
    let mut last_data: Option<u64> = None;
    // Windows go out in batches: one preadv and one UDP GSO send per batch.
    let mut batch = if windowed {
        Batch::new(sock, blksize)
    } else {
        None
    };
    // ACKs are 4 bytes and ERRORs short; anything longer is truncated harmlessly.
    let mut inbuf = [0u8; 1024];
    let mut timeout_set: Option<Duration> = None;
    loop {
        let now = Instant::now();
        while let Some(t) = session.poll_transmit(now) {
            match t {
                Transmit::Packet(p) => {
                    if let Some(b) = batch.as_mut() {
                        b.flush(sock, source)?;
                    }
                    send(sock, &p)?
                }
                Transmit::Data { block, offset, len } => {
                    if let Some(b) = batch.as_mut() {
                        if !b.push(block, offset, len) {
                            b.flush(sock, source)?;
                            let pushed = b.push(block, offset, len);
                            debug_assert!(pushed);
                        }
                        continue;
                    }
                    let end = wire::DATA_HEADER_LEN + len;
                    if !chunk.holds(offset, len) {
                        chunk.fill(source, offset, session.size())?;
                    }
                    out[wire::DATA_HEADER_LEN..end].copy_from_slice(chunk.get(offset, len));
                    wire::emit_data_header(&mut out, block);
                    send(sock, &out[..end])?;
                    if !windowed {
                        last_data = Some(offset + len as u64);
                    }
                }
            }
        }
        if let Some(b) = batch.as_mut() {
            b.flush(sock, source)?;
            if b.gso_failed {
                // The path MTU is below one segment: send block by block from now on.
                batch = None;
            }
        }
        if let Some(next) = last_data.take() {
            let len = (session.size().saturating_sub(next)).min(blksize as u64) as usize;
            if !chunk.holds(next, len) {
                chunk.fill(source, next, session.size())?;
            }
        }
        if session.outcome().is_some() {
            return Ok(());
        }
        if stopping.load(Ordering::Relaxed) {
            return Ok(());
        }
        let now = Instant::now();
        let wait = match session.deadline() {
            // Unless an ACK is waiting: then the thread was late, not the client.
            Some(d) if d <= now && !crate::client::readable_now(sock) => {
                session.on_timeout(now);
                continue;
            }
            Some(d) => d.saturating_duration_since(now).min(POLL_INTERVAL),
            None => POLL_INTERVAL,
        };
        // Setting SO_RCVTIMEO costs a syscall; a timer that fires a little early only
        // costs one extra loop, so reuse the last value while it is close enough.
        if timeout_set.is_none_or(|t| t > wait + wait / 4 || t < wait / 2) {
            sock.set_read_timeout(Some(wait.max(Duration::from_micros(50))))?;
            timeout_set = Some(wait);
        }
        match sock.recv(&mut inbuf) {
            Ok(n) => {
                if let Ok(p) = Packet::parse(&inbuf[..n]) {
                    session.handle(Instant::now(), &p);
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                session.on_timeout(Instant::now());
            }
            // ICMP port unreachable from an earlier send: the client may be gone; the
            // timer decides.
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Bytes of the file around the block being sent (lock-step): one `pread` per chunk
/// instead of one per block. With busybox at blksize 1468 the server made three system
/// calls per block (strace -c: `sendto`, `recvfrom`, `pread64`, each 65 000 times for
/// 100 MB); now it makes two, and one `pread` of 64 KiB per 44 blocks.
struct Chunk {
    buf: Vec<u8>,
    /// File offset of `buf[0]`.
    start: u64,
    /// Valid bytes in `buf`.
    len: usize,
}

/// Bytes read at once (rounded down to whole blocks, at least one block).
const CHUNK_BYTES: usize = 64 << 10;

impl Chunk {
    fn new(blksize: usize) -> Chunk {
        let size = (CHUNK_BYTES / blksize).max(1) * blksize;
        Chunk {
            buf: vec![0u8; size],
            start: 0,
            len: 0,
        }
    }

    /// Whether `len` bytes at `offset` are here (an empty block always is).
    fn holds(&self, offset: u64, len: usize) -> bool {
        len == 0 || (offset >= self.start && offset + len as u64 <= self.start + self.len as u64)
    }

    fn get(&self, offset: u64, len: usize) -> &[u8] {
        if len == 0 {
            return &[];
        }
        let at = (offset - self.start) as usize;
        &self.buf[at..at + len]
    }

    /// Reads the chunk that starts at `offset` (up to the end of the `size` bytes).
    fn fill(&mut self, source: &mut dyn BlockSource, offset: u64, size: u64) -> io::Result<()> {
        let len = (size.saturating_sub(offset)).min(self.buf.len() as u64) as usize;
        source.read_exact_at(offset, &mut self.buf[..len])?;
        self.start = offset;
        self.len = len;
        Ok(())
    }
}

/// Consecutive DATA packets sent with one `preadv` and one UDP GSO `send`: the kernel
/// cuts the buffer into datagrams of `UDP_SEGMENT` bytes (4-byte header + blksize),
/// the last one possibly shorter, which is exactly a window of DATA packets.
struct Batch {
    buf: Vec<u8>,
    /// Bytes of one segment (header + blksize).
    stride: usize,
    max_segments: usize,
    /// (block, offset, len) of the queued packets, contiguous in the file.
    queued: Vec<(u16, u64, usize)>,
    gso_failed: bool,
}

/// Most segments one GSO send may carry (`UDP_MAX_SEGMENTS` is 64 on older kernels).
const MAX_GSO_SEGMENTS: usize = 64;
/// Most bytes one GSO send may carry (64 KiB less IP and UDP headers, with margin).
const MAX_GSO_BYTES: usize = 65000;

impl Batch {
    /// `None` when batching gains nothing (one block per 64 KiB) or GSO is unavailable.
    fn new(sock: &std::net::UdpSocket, blksize: usize) -> Option<Batch> {
        let stride = wire::DATA_HEADER_LEN + blksize;
        let max_segments = (MAX_GSO_BYTES / stride).min(MAX_GSO_SEGMENTS);
        if max_segments < 2 {
            return None;
        }
        let _ = sock;
        Some(Batch {
            buf: vec![0u8; stride * max_segments],
            stride,
            max_segments,
            queued: Vec::with_capacity(max_segments),
            gso_failed: false,
        })
    }

    /// Queues a packet; false if it does not fit or does not follow the last one.
    fn push(&mut self, block: u16, offset: u64, len: usize) -> bool {
        if let Some(&(_, o, l)) = self.queued.last() {
            let full_before = l == self.stride - wire::DATA_HEADER_LEN;
            if self.queued.len() == self.max_segments || o + l as u64 != offset || !full_before {
                return false;
            }
        }
        self.queued.push((block, offset, len));
        true
    }

    fn flush(
        &mut self,
        sock: &std::net::UdpSocket,
        source: &mut dyn BlockSource,
    ) -> io::Result<()> {
        let Some(&(_, first, _)) = self.queued.first() else {
            return Ok(());
        };
        let stride = self.stride;
        let total: usize = self
            .queued
            .iter()
            .map(|&(_, _, l)| wire::DATA_HEADER_LEN + l)
            .sum();
        {
            let mut slots: Vec<&mut [u8]> = Vec::with_capacity(self.queued.len());
            for (chunk, &(block, _, len)) in self.buf.chunks_mut(stride).zip(&self.queued) {
                wire::emit_data_header(chunk, block);
                slots.push(&mut chunk[wire::DATA_HEADER_LEN..wire::DATA_HEADER_LEN + len]);
            }
            source.read_vectored_exact_at(first, &mut slots)?;
        }
        let result = if self.queued.len() == 1 || self.gso_failed {
            Err(io::Error::from_raw_os_error(libc::EINVAL))
        } else {
            send_gso(sock, &self.buf[..total], stride)
        };
        match result {
            Ok(()) => {}
            // EINVAL: a segment exceeds the path MTU (GSO does not fragment); EIO: the
            // device cannot checksum it. Send the packets one by one instead.
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EINVAL) | Some(libc::EIO) | Some(libc::EMSGSIZE)
                ) =>
            {
                if self.queued.len() > 1 {
                    self.gso_failed = true;
                }
                let mut at = 0;
                for &(_, _, len) in &self.queued {
                    send(sock, &self.buf[at..at + wire::DATA_HEADER_LEN + len])?;
                    at += stride;
                }
            }
            Err(e) => return Err(e),
        }
        self.queued.clear();
        Ok(())
    }
}

/// Sends `buf` as datagrams of `segment` bytes (UDP GSO, `UDP_SEGMENT` control message).
fn send_gso(sock: &std::net::UdpSocket, buf: &[u8], segment: usize) -> io::Result<()> {
    // SAFETY: msghdr points at live buffers; the control buffer is large and aligned
    // enough for one cmsg carrying a u16, written through the CMSG_* helpers.
    unsafe {
        let mut iov = libc::iovec {
            iov_base: buf.as_ptr() as *mut libc::c_void,
            iov_len: buf.len(),
        };
        let mut control = [0u64; 4];
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
        msg.msg_controllen = libc::CMSG_SPACE(std::mem::size_of::<u16>() as u32) as _;
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_UDP;
        (*cmsg).cmsg_type = libc::UDP_SEGMENT;
        (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<u16>() as u32) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg) as *mut u16, segment as u16);
        loop {
            let r = libc::sendmsg(sock.as_raw_fd(), &msg, 0);
            if r >= 0 {
                return Ok(());
            }
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::Interrupted | io::ErrorKind::ConnectionRefused => continue,
                _ => return Err(e),
            }
        }
    }
}

fn send(sock: &std::net::UdpSocket, pkt: &[u8]) -> io::Result<()> {
    loop {
        match sock.send(pkt) {
            Ok(_) => return Ok(()),
            // A refused earlier datagram is reported on the next send; the timer
            // handles a client that went away.
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => continue,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// A socket on a new port of `local`, connected to `client`.
fn transfer_socket(local: IpAddr, client: SocketAddr) -> io::Result<std::net::UdpSocket> {
    let local = match (local, client) {
        // A v4 request on a dual-stack socket: answer in kind.
        (IpAddr::V6(v6), SocketAddr::V4(_)) => match v6.to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), 0),
            None => SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), 0),
        },
        (IpAddr::V6(v6), SocketAddr::V6(c)) => {
            SocketAddrV6::new(v6, 0, 0, if is_link_local(&v6) { c.scope_id() } else { 0 }).into()
        }
        (ip, _) => SocketAddr::new(ip, 0),
    };
    let client = match client {
        SocketAddr::V6(c) if local.is_ipv4() => match c.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), c.port()),
            None => client,
        },
        c => c,
    };
    let s = std::net::UdpSocket::bind(local)?;
    s.connect(client)?;
    Ok(s)
}

fn is_link_local(ip: &Ipv6Addr) -> bool {
    (ip.segments()[0] & 0xffc0) == 0xfe80
}

fn enable_pktinfo(socket: &UdpSocket, local: SocketAddr) -> io::Result<()> {
    let on: libc::c_int = 1;
    let (level, name) = if local.is_ipv4() {
        (libc::IPPROTO_IP, libc::IP_PKTINFO)
    } else {
        (libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO)
    };
    // SAFETY: setsockopt on our socket with an int option.
    let r = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            name,
            &on as *const _ as *const libc::c_void,
            std::mem::size_of_val(&on) as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    if local.is_ipv6() {
        // v4 requests on a dual-stack socket carry IP_PKTINFO.
        // SAFETY: as above.
        unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::IPPROTO_IP,
                libc::IP_PKTINFO,
                &on as *const _ as *const libc::c_void,
                std::mem::size_of_val(&on) as libc::socklen_t,
            )
        };
    }
    Ok(())
}

/// Receives one datagram with its source and the local address it was sent to.
async fn recv_with_dst(
    socket: &UdpSocket,
    buf: &mut [u8],
) -> io::Result<(usize, SocketAddr, Option<IpAddr>)> {
    socket
        .async_io(Interest::READABLE, || recvmsg_dst(socket.as_raw_fd(), buf))
        .await
}

fn recvmsg_dst(fd: i32, buf: &mut [u8]) -> io::Result<(usize, SocketAddr, Option<IpAddr>)> {
    // SAFETY: all pointers refer to live, correctly sized buffers for recvmsg, and the
    // control messages are read with the CMSG_* helpers within `control`.
    unsafe {
        let mut addr: libc::sockaddr_storage = std::mem::zeroed();
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr() as *mut libc::c_void,
            iov_len: buf.len(),
        };
        let mut control = [0u64; 16];
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_name = &mut addr as *mut _ as *mut libc::c_void;
        msg.msg_namelen = std::mem::size_of_val(&addr) as libc::socklen_t;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
        msg.msg_controllen = std::mem::size_of_val(&control) as _;
        let n = libc::recvmsg(fd, &mut msg, 0);
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let src = match addr.ss_family as i32 {
            libc::AF_INET => {
                let a = &*(&addr as *const _ as *const libc::sockaddr_in);
                SocketAddr::new(
                    Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)).into(),
                    u16::from_be(a.sin_port),
                )
            }
            libc::AF_INET6 => {
                let a = &*(&addr as *const _ as *const libc::sockaddr_in6);
                SocketAddrV6::new(
                    Ipv6Addr::from(a.sin6_addr.s6_addr),
                    u16::from_be(a.sin6_port),
                    a.sin6_flowinfo,
                    a.sin6_scope_id,
                )
                .into()
            }
            _ => return Err(io::Error::other("unknown address family")),
        };
        let mut dst = None;
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            let c = &*cmsg;
            if c.cmsg_level == libc::IPPROTO_IP && c.cmsg_type == libc::IP_PKTINFO {
                let info =
                    std::ptr::read_unaligned(libc::CMSG_DATA(cmsg) as *const libc::in_pktinfo);
                // ipi_spec_dst is the local address a reply should come from; unlike
                // ipi_addr it is never a broadcast address.
                dst = Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(
                    info.ipi_spec_dst.s_addr,
                ))));
            } else if c.cmsg_level == libc::IPPROTO_IPV6 && c.cmsg_type == libc::IPV6_PKTINFO {
                let info =
                    std::ptr::read_unaligned(libc::CMSG_DATA(cmsg) as *const libc::in6_pktinfo);
                dst = Some(IpAddr::V6(Ipv6Addr::from(info.ipi6_addr.s6_addr)));
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
        Ok((n as usize, src, dst))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_shrink_as_transfers_share_the_link() {
        // Alone or with a few others: what the client asked for, up to the limit.
        assert_eq!(fair_window(64, 1, 1468), 64);
        assert_eq!(fair_window(64, 15, 1468), 64);
        assert_eq!(fair_window(16, 1, 1468), 16);
        // A storm: the 1000-frame budget split evenly.
        assert_eq!(fair_window(64, 20, 1468), 50);
        assert_eq!(fair_window(64, 100, 1468), 10);
        // Never below 4 blocks, and larger blocks mean fewer of them.
        assert_eq!(fair_window(64, 1000, 1468), 4);
        assert_eq!(fair_window(64, 20, 8192), 8);
        assert_eq!(fair_window(1, 200, 512), 1);
    }
}
