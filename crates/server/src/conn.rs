//! The HTTP connection loop of the boot and admin listeners: timeouts and connection caps.
//!
//! `axum::serve` gives hyper no timer, so hyper's header-read timeout is silently off, and
//! it has no idle timeout and no connection limit: 1,100 idle connections from one host
//! used up the 1,024 descriptors of the server, and every other client's request timed out
//! (issue 22). Here each accepted connection is served by hyper's HTTP/1 server with:
//!
//! - a **header-read timeout** ([`Limits::header_read`]): a request's headers must arrive
//!   whole within it (a client dripping a header a byte at a time is closed);
//! - an **idle timeout** ([`Limits::idle`]): a connection on which no byte moved either
//!   way for that long is closed, whether it waits between requests or a response is
//!   stalled (a reader that stopped reading);
//! - **no absolute limit on a request's total time while it makes progress**: a 2 GB
//!   image over 10 Mbit takes about 30 minutes and must finish. The total-request limit
//!   is the progress rule instead: every [`Limits::idle`] interval, bytes must have moved.
//!   A reader slow enough to move a byte a minute still holds its connection, but only
//!   within its address's cap.
//! - a **per-address cap** ([`Limits::per_address`]) and a **global cap**
//!   ([`Limits::total`], from [`DescriptorBudget`]): a connection over either is closed at
//!   once, before any byte is read.
//!
//! A failing `accept` (out of descriptors) is logged once per episode, not per attempt, and
//! the loop waits before the next try instead of spinning.

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tower::ServiceExt;

/// Timeouts and caps of one listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Time a request's headers may take to arrive, from their first byte (or from the
    /// connection's start or the previous response).
    pub header_read: Duration,
    /// Time with no byte moving either way before a connection is closed.
    pub idle: Duration,
    /// Connections open at once from one address.
    pub per_address: usize,
    /// Connections open at once on this listener.
    pub total: usize,
}

/// Connections one address may hold on the boot listener. Seats talk to the server
/// directly (the boot network is one segment: DHCP does not cross a NAT), but a room cache
/// (docs/nginx-cache.conf) fetches for a whole room from one address, and 50 seats
/// reporting at once from one address is what the run tests do; 256 fits a large room and
/// still keeps one host far below the global cap.
pub const PER_ADDRESS: usize = 256;

/// The admin listener serves a few browsers and a Prometheus scraper.
pub const ADMIN_PER_ADDRESS: usize = 64;

impl Limits {
    /// The boot listener's limits within `budget`. One address never gets more than a
    /// quarter of the listener (a small budget: 48 of 192 at 1,024 descriptors).
    pub fn boot(budget: &DescriptorBudget) -> Limits {
        Limits {
            header_read: Duration::from_secs(10),
            idle: Duration::from_secs(60),
            per_address: PER_ADDRESS.min(budget.http_connections / 4).max(1),
            total: budget.http_connections,
        }
    }

    /// The admin listener's limits within `budget`.
    pub fn admin(budget: &DescriptorBudget) -> Limits {
        Limits {
            per_address: ADMIN_PER_ADDRESS.min(budget.admin_connections / 4).max(1),
            total: budget.admin_connections,
            ..Limits::boot(budget)
        }
    }
}

/// How the process's descriptors are shared between the listeners.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DescriptorBudget {
    /// The soft `RLIMIT_NOFILE` the budget was made from.
    pub nofile: u64,
    /// HTTP connections on the boot listener (two descriptors each: the socket, and the
    /// image or file it sends).
    pub http_connections: usize,
    /// Connections on the admin listener (one descriptor each).
    pub admin_connections: usize,
    /// TFTP transfers at once (two descriptors each: the transfer's socket and its file).
    pub tftp_transfers: usize,
}

/// Descriptors kept out of the budget: the listening and DHCP sockets, the state files
/// being written, the store's files opened for a check, the runtime's own.
const RESERVED: u64 = 256;

impl DescriptorBudget {
    /// Shares `nofile` descriptors: [`RESERVED`] kept, then half for HTTP, a quarter for
    /// TFTP, an eighth for the admin listener (an eighth spare). With 1,024 (the default of
    /// a systemd unit without `LimitNOFILE`): 192 HTTP connections, 96 TFTP transfers, 96
    /// admin connections. With the unit's 65,536: 16,320 HTTP connections, 1,024 TFTP
    /// transfers (the TFTP server's own default cap), 8,160 admin connections.
    pub fn from_nofile(nofile: u64) -> DescriptorBudget {
        let spare = nofile.saturating_sub(RESERVED);
        let count = |n: u64| usize::try_from(n).unwrap_or(usize::MAX).max(1);
        DescriptorBudget {
            nofile,
            http_connections: count(spare / 2 / 2),
            admin_connections: count(spare / 8),
            tftp_transfers: count(spare / 4 / 2).min(diskless_tftp::server::DEFAULT_MAX_TRANSFERS),
        }
    }

    /// Raises the soft descriptor limit to the hard one (what systemd's `LimitNOFILE` sets
    /// both to), then shares it. Under the packaged unit the two are equal already, and its
    /// `SystemCallFilter=~@resources` would refuse `setrlimit` (EPERM) anyway: a limit that
    /// cannot be raised is used as it is.
    pub fn of_this_process() -> DescriptorBudget {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit/setrlimit with a valid pointer to a local rlimit.
        unsafe {
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
                return DescriptorBudget::from_nofile(1024);
            }
            if lim.rlim_cur < lim.rlim_max {
                let raised = libc::rlimit {
                    rlim_cur: lim.rlim_max,
                    rlim_max: lim.rlim_max,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                    lim.rlim_cur = lim.rlim_max;
                }
            }
        }
        DescriptorBudget::from_nofile(lim.rlim_cur)
    }
}

/// Connections open per address and in all, shared by a listener's connection tasks.
#[derive(Debug, Default)]
struct Open {
    per_address: HashMap<IpAddr, usize>,
    total: usize,
}

/// A connection counted in [`Open`] until dropped.
struct Slot {
    open: Arc<Mutex<Open>>,
    ip: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.open.lock().expect("connection table");
        open.total -= 1;
        if let Some(n) = open.per_address.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.per_address.remove(&self.ip);
            }
        }
    }
}

fn take_slot(open: &Arc<Mutex<Open>>, ip: IpAddr, limits: &Limits) -> Option<Slot> {
    let mut table = open.lock().expect("connection table");
    let mine = table.per_address.get(&ip).copied().unwrap_or(0);
    if table.total >= limits.total || mine >= limits.per_address {
        return None;
    }
    table.total += 1;
    *table.per_address.entry(ip).or_insert(0) += 1;
    Some(Slot {
        open: open.clone(),
        ip,
    })
}

/// A stream that counts the bytes moved through it, for the idle timeout.
struct Counted {
    inner: TcpStream,
    moved: Arc<AtomicU64>,
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            self.moved.fetch_add(n as u64, Ordering::Relaxed);
        }
        r
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            self.moved.fetch_add(n as u64, Ordering::Relaxed);
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = r {
            self.moved.fetch_add(n as u64, Ordering::Relaxed);
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Waits until no byte has moved through `moved` for `idle`.
async fn idle_for(moved: &AtomicU64, idle: Duration) {
    let tick = idle / 4;
    let mut last = moved.load(Ordering::Relaxed);
    let mut quiet = Duration::ZERO;
    loop {
        tokio::time::sleep(tick).await;
        let now = moved.load(Ordering::Relaxed);
        if now == last {
            quiet += tick;
            if quiet >= idle {
                return;
            }
        } else {
            last = now;
            quiet = Duration::ZERO;
        }
    }
}

/// Serves `router` on `listener` within `limits` until `shutdown` completes; it returns when
/// the open connections have finished the request they are on (the caller bounds how long
/// it waits: dropping the future ends them).
/// Handlers see the client's address as `ConnectInfo<SocketAddr>`.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let open = Arc::new(Mutex::new(Open::default()));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::pin!(shutdown);
    let mut accept_failing = false;
    // The connections' tasks: dropping this future (a caller giving up waiting) ends them.
    let mut connections = tokio::task::JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        let (stream, remote) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => {
                    accept_failing = false;
                    a
                }
                Err(e) => {
                    // EMFILE/ENFILE/ENOBUFS: the connection stays in the backlog; try again
                    // after a pause instead of spinning, and say so once per episode.
                    if !accept_failing {
                        tracing::warn!(error = %e, "http: cannot accept connections (retrying every 100 ms)");
                        accept_failing = true;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Some(slot) = take_slot(&open, remote.ip(), &limits) else {
            tracing::debug!(%remote, "http: connection over the cap closed");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let mut stop = stop_rx.clone();
        connections.spawn(async move {
            let _slot = slot;
            let moved = Arc::new(AtomicU64::new(0));
            let io = TokioIo::new(Counted {
                inner: stream,
                moved: moved.clone(),
            });
            let service = hyper::service::service_fn(move |mut request: hyper::Request<_>| {
                request.extensions_mut().insert(ConnectInfo(remote));
                router.clone().oneshot(request.map(axum::body::Body::new))
            });
            // Title-case header names (`Content-Length`, not hyper's `content-length`): GRUB
            // 2.12's http module (Debian 13's signed network image) compares them
            // case-sensitively, so it missed the length, read to the connection's close and
            // asked again, four times (tcpdump of a Secure Boot seat; http.c `parse_line`).
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read)
                .title_case_headers(true)
                .serve_connection(io, service);
            tokio::pin!(conn);
            let idle = idle_for(&moved, limits.idle);
            tokio::pin!(idle);
            let mut stopping = false;
            loop {
                tokio::select! {
                    r = conn.as_mut() => {
                        if let Err(e) = r {
                            tracing::debug!(%remote, error = %e, "http: connection ended");
                        }
                        break;
                    }
                    _ = &mut idle => {
                        tracing::debug!(%remote, "http: idle connection closed");
                        break;
                    }
                    changed = stop.changed(), if !stopping => {
                        let _ = changed;
                        stopping = true;
                        conn.as_mut().graceful_shutdown();
                    }
                }
            }
        });
    }
    // Idle connections close at once, the others after the request they are on.
    let _ = stop_tx.send(true);
    while connections.join_next().await.is_some() {}
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;
    use std::net::SocketAddr;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A server with a fast route and a slow one (a chunk every 400 ms, six chunks).
    async fn start(limits: Limits) -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
        let router = Router::new().route("/", get(|| async { "ok" })).route(
            "/slow",
            get(|| async {
                let chunks = futures_util::stream::unfold(0u8, |i| async move {
                    if i == 6 {
                        return None;
                    }
                    tokio::time::sleep(Duration::from_millis(400)).await;
                    Some((Ok::<_, std::io::Error>(vec![b'a' + i; 1000]), i + 1))
                });
                axum::body::Body::from_stream(chunks)
            }),
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(serve(listener, router, limits, async {
            let _ = stopped.await;
        }));
        (addr, stop)
    }

    async fn connect_from(ip: &str, to: SocketAddr) -> TcpStream {
        let s = tokio::net::TcpSocket::new_v4().unwrap();
        s.bind(SocketAddr::new(ip.parse().unwrap(), 0)).unwrap();
        s.connect(to).await.unwrap()
    }

    /// Whether the server closed `stream` within `wait` (whatever it sent first).
    async fn closed_within(stream: &mut TcpStream, wait: Duration) -> bool {
        let mut buf = [0u8; 4096];
        tokio::time::timeout(wait, async {
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await
        .is_ok()
    }

    /// `GET path` from `ip` on a connection of its own; the whole answer.
    async fn get_from(ip: &str, to: SocketAddr, path: &str) -> String {
        let mut s = connect_from(ip, to).await;
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.unwrap();
        String::from_utf8_lossy(&out).into_owned()
    }

    const LONG: Limits = Limits {
        header_read: Duration::from_secs(60),
        idle: Duration::from_secs(120),
        per_address: PER_ADDRESS,
        total: 100_000,
    };

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_host_holding_thousands_of_connections_stops_no_one_else() {
        // Both ends live in this process: 3,000 client sockets and the server's.
        let budget = DescriptorBudget::of_this_process();
        assert!(
            budget.nofile >= 8192,
            "the test needs 8,192 descriptors (ulimit -Hn is {})",
            budget.nofile
        );
        let (addr, _stop) = start(LONG).await;
        // 127.0.0.2 opens 1,500 idle connections and 1,500 with a request whose headers
        // never end.
        let mut held = Vec::new();
        for i in 0..3000 {
            let mut s = connect_from("127.0.0.2", addr).await;
            if i % 2 == 1 {
                // A closed socket refuses the write: it is counted as closed below.
                let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await;
            }
            held.push(s);
        }
        // Another client is served meanwhile.
        let answer = get_from("127.0.0.1", addr, "/").await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.ends_with("ok"), "{answer}");
        // Of the 3,000, the server kept its cap for one address open and closed the rest.
        let checks = held
            .iter_mut()
            .map(|s| closed_within(s, Duration::from_secs(2)));
        let closed = futures_util::future::join_all(checks)
            .await
            .into_iter()
            .filter(|c| *c)
            .count();
        assert_eq!(3000 - closed, PER_ADDRESS);
    }

    #[tokio::test]
    async fn header_names_are_title_case_as_grub_reads_them() {
        let (addr, _stop) = start(LONG).await;
        let answer = get_from("127.0.0.1", addr, "/").await;
        let head = answer.split("\r\n\r\n").next().unwrap();
        assert!(head.contains("\r\nContent-Length: 2\r\n"), "{head}");
    }

    #[tokio::test]
    async fn the_cap_for_all_addresses_holds() {
        let (addr, _stop) = start(Limits { total: 5, ..LONG }).await;
        let mut held = Vec::new();
        for i in 0..8 {
            held.push(connect_from(&format!("127.0.0.{}", 2 + i), addr).await);
        }
        let mut open = 0;
        for s in &mut held {
            if !closed_within(s, Duration::from_secs(1)).await {
                open += 1;
            }
        }
        assert_eq!(open, 5);
        drop(held);
        // The slots came back.
        let mut answer = String::new();
        for _ in 0..100 {
            answer = get_from("127.0.0.1", addr, "/").await;
            if !answer.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn slow_headers_and_idle_connections_are_closed_a_slow_download_is_not() {
        let (addr, _stop) = start(Limits {
            header_read: Duration::from_millis(500),
            idle: Duration::from_secs(1),
            ..LONG
        })
        .await;
        // Headers that never end: closed by the header-read timeout.
        let mut slow = connect_from("127.0.0.1", addr).await;
        slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        // Headers dripped a byte every 200 ms: progress, but the headers never complete in
        // time, so the header-read timeout (not the idle one) closes it.
        let mut drip = connect_from("127.0.0.1", addr).await;
        let dripping = tokio::spawn(async move {
            for b in b"GET / HTTP/1.1\r\nHost: x\r\nX-Long: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" {
                if drip.write_all(&[*b]).await.is_err() {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            false
        });
        // A connection that says nothing: closed by the idle timeout.
        let mut silent = connect_from("127.0.0.1", addr).await;
        // A response that takes 2.4 s, longer than both timeouts, but moves every 400 ms:
        // it is served whole.
        let answer = get_from("127.0.0.1", addr, "/slow").await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        for c in b'a'..b'a' + 6 {
            let chunk = String::from_utf8(vec![c; 1000]).unwrap();
            assert!(answer.contains(&chunk), "chunk {} missing", c as char);
        }
        let wait = Duration::from_secs(30);
        assert!(closed_within(&mut slow, wait).await, "slow headers kept");
        assert!(
            closed_within(&mut silent, wait).await,
            "idle connection kept"
        );
        assert!(
            dripping.await.unwrap(),
            "dripped headers accepted to the end"
        );
    }

    #[test]
    fn the_budget_keeps_every_listener_inside_the_descriptors() {
        for nofile in [1024, 4096, 65536, 1 << 20] {
            let b = DescriptorBudget::from_nofile(nofile);
            let used = 2 * b.http_connections + b.admin_connections + 2 * b.tftp_transfers;
            assert!(
                used as u64 + RESERVED <= nofile,
                "{nofile}: {b:?} uses {used} descriptors"
            );
        }
        // The systemd unit's 1,024 default still serves a room.
        let b = DescriptorBudget::from_nofile(1024);
        assert_eq!(
            (b.http_connections, b.tftp_transfers, b.admin_connections),
            (192, 96, 96)
        );
        assert_eq!(DescriptorBudget::from_nofile(65536).tftp_transfers, 1024);
        // No one address takes a small listener whole.
        assert_eq!(Limits::boot(&b).per_address, 48);
        assert_eq!(Limits::admin(&b).per_address, 24);
        let big = DescriptorBudget::from_nofile(65536);
        assert_eq!(Limits::boot(&big).per_address, PER_ADDRESS);
        assert_eq!(Limits::admin(&big).per_address, ADMIN_PER_ADDRESS);
    }
}
