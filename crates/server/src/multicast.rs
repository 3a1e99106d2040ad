//! Multicast sessions: one per image version, started by the first seat that joins, sending
//! the version's root.squashfs round and round to a group, paced at `[multicast] rate`, and
//! stopped once every seat that joined has left, or once the sender has gone a whole round
//! (plus [`SLACK_PER_ROUND`]) since the last seat joined: that seat has had every fragment
//! once, and what it lost comes over HTTP (`diskless_multicast::Audience`). A seat that died,
//! or one that multicast does not reach, never holds the session longer than that. The next
//! seat to join after the stop starts a new session. The protocol is `diskless_multicast`'s
//! (docs/MULTICAST.md).
//!
//! The sender is a plain thread, not a tokio task: it sleeps between bursts at a microsecond
//! schedule and reads the image with `pread`, neither of which belongs on the runtime's
//! workers; one thread per image version being sent is a handful at most.
//!
//! A join answers `key=value` lines (the fetch helper has no JSON parser):
//!
//! ```text
//! session=00c0ffee12345678
//! group=239.255.77.1
//! port=5940
//! image_len=353370112
//! block_size=65536
//! fragment_size=1024
//! rate=62500000
//! blocks=/api/multicast/lab/20260101-000000-abcdef01/blocks
//! leave=/api/multicast/lab/20260101-000000-abcdef01/leave?session=00c0ffee12345678
//! ```
//!
//! A seat that has its image says so at `leave`; once every seat that joined has left, the
//! session stops at once, so a storm of seats that joined together costs the link about
//! one round.

use crate::metrics::Metrics;
use diskless_boot::multicast::Multicast;
use diskless_multicast::wire::HEADER_LEN;
use diskless_multicast::{Audience, Carousel, Layout, Pacer, DIGEST_LEN};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Bytes of a block, the unit verified by its sha256: 64 fragments of [`FRAGMENT_SIZE`], a
/// digest list of 0.05 % of the image.
pub const BLOCK_SIZE: u32 = 64 * 1024;
/// Bytes of image per datagram: with the 28-byte header and IP/UDP's 28 the datagram stays
/// under a 1,500-byte MTU, and 64 of them make a block.
pub const FRAGMENT_SIZE: u16 = 1024;
/// How far a late sender may catch up at once (see `diskless_multicast::Pacer`).
const PACER_SLACK: Duration = Duration::from_millis(2);
/// The part of a round sent beyond the last joiner's round: the time between its join and its
/// IGMP join (the helper joins the group right after the join answer, before it fetches the
/// digests), so a seat that lost nothing is lapped, and leaves, before the sender stops.
pub const SLACK_PER_ROUND: u64 = 20;

/// The sessions of this server, by image and version.
#[derive(Default)]
pub struct Sessions {
    /// By image, version and the values they are sent with: seats of subnets with values of
    /// their own (`[subnet.multicast]`) have sessions of their own.
    by_version: tokio::sync::Mutex<HashMap<SessionKey, Arc<Session>>>,
    /// Sessions started so far: the next one takes the next group of the range.
    started: AtomicU32,
    /// Where sessions, seats, rounds and bytes are counted, per image.
    metrics: Arc<Metrics>,
    /// The block digests of the versions sent lately, by file and length: a session stops a
    /// round after its last join, so a lab whose seats come one by one starts one session
    /// after another, and reading and hashing a 2 GB image for each would hold every
    /// joining seat for seconds. (A version's files never change once published.)
    digests: std::sync::Mutex<KeptDigests>,
}

/// Block digests by image file and length.
type KeptDigests = HashMap<(PathBuf, u64), Arc<Vec<u8>>>;

/// Versions whose digests [`Sessions`] keeps (0.05 % of each image).
const DIGESTS_KEPT: usize = 16;

type SessionKey = (String, String, Multicast);

/// A session as the dashboard shows it (`/api/multicast` on the admin listener): running
/// ones, and those stopped since the last join.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SessionView {
    pub image: String,
    pub version: String,
    /// The session id, hex, as in the join answer.
    pub session: String,
    pub group: Ipv4Addr,
    pub port: u16,
    pub rate_mbit: u64,
    pub running: bool,
    /// Seats that joined, and of them those that said they were done.
    pub seats: u64,
    pub seats_done: u64,
    pub rounds: u64,
    pub bytes_sent: u64,
    pub image_len: u64,
}

/// One image version being sent.
pub struct Session {
    /// Stamped on every packet; new for each session.
    pub id: u64,
    /// Where it sends.
    pub group: Ipv4Addr,
    /// UDP port.
    pub port: u16,
    /// How the image is cut.
    pub layout: Layout,
    /// Bytes per second.
    pub bytes_per_second: u64,
    /// The block digests, end to end.
    pub digests: Arc<Vec<u8>>,
    /// The path seats fetch them from.
    pub blocks_path: String,
    /// The path seats say they are done at (`?session=` added).
    pub leave_path: String,
    /// Who listens, and whether the sender stopped: one lock, so a seat never joins a
    /// session whose sender has just decided to stop.
    state: Mutex<State>,
    /// Rounds completed.
    pub rounds: AtomicU64,
    /// Datagram bytes sent (headers included).
    pub bytes_sent: AtomicU64,
}

impl Session {
    /// The join answer (module docs).
    pub fn join_answer(&self) -> String {
        format!(
            "session={:016x}\ngroup={}\nport={}\nimage_len={}\nblock_size={}\nfragment_size={}\nrate={}\nblocks={}\nleave={}?session={:016x}\n",
            self.id,
            self.group,
            self.port,
            self.layout.image_len,
            self.layout.block_size,
            self.layout.fragment_size,
            self.bytes_per_second,
            self.blocks_path,
            self.leave_path,
            self.id
        )
    }

    /// Still sending.
    pub fn is_running(&self) -> bool {
        !self.state().stopped
    }

    /// Seats that joined.
    pub fn seats(&self) -> u64 {
        self.state().audience.joined()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("multicast session state")
    }

    /// A seat joins, unless the sender stopped: then false, and the seat needs a new session.
    fn try_join(&self) -> bool {
        let mut state = self.state();
        if state.stopped {
            return false;
        }
        state.audience.join();
        true
    }
}

struct State {
    audience: Audience,
    stopped: bool,
}

/// Why a seat could not join.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// The image file could not be read.
    #[error("reading {path}: {source}")]
    Image {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The multicast socket could not be set up.
    #[error("multicast socket: {0}")]
    Socket(std::io::Error),
    /// The image cannot be cut (empty).
    #[error(transparent)]
    Layout(#[from] diskless_multicast::LayoutError),
}

/// The sha256 of every block of the file at `path`, end to end.
pub fn digest_file(path: &Path, layout: &Layout) -> std::io::Result<Vec<u8>> {
    let mut file = File::open(path)?;
    let mut out = Vec::with_capacity(layout.digest_list_len());
    let mut buf = vec![0u8; layout.block_size as usize];
    for block in 0..layout.blocks() {
        let r = layout.block_range(block);
        let data = &mut buf[..(r.end - r.start) as usize];
        file.read_exact(data)?;
        out.extend_from_slice(&Sha256::digest(data));
    }
    debug_assert_eq!(out.len(), layout.blocks() as usize * DIGEST_LEN);
    Ok(out)
}

fn session_id() -> u64 {
    let mut bytes = [0u8; 8];
    // A session id tells sessions apart (a restarted server's from the last one's); it is no
    // secret, the block digests keep forged packets out.
    if getrandom::getrandom(&mut bytes).is_err() {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        bytes = (nanos as u64 ^ u64::from(std::process::id())).to_be_bytes();
    }
    u64::from_be_bytes(bytes)
}

impl Sessions {
    /// No session yet; counts go to `metrics`.
    pub fn new(metrics: Arc<Metrics>) -> Sessions {
        Sessions {
            metrics,
            ..Sessions::default()
        }
    }

    /// The running session of `image`/`version` (file `path`), started if there is none; a
    /// join either way. `interface` is the address the datagrams leave from.
    pub async fn join(
        &self,
        config: &Multicast,
        interface: Ipv4Addr,
        image: &str,
        version: &str,
        path: PathBuf,
    ) -> Result<Arc<Session>, JoinError> {
        // Held while a new session digests its image (a second or so for 300 MiB): the
        // version's other seats wait for that session instead of starting their own.
        let mut sessions = self.by_version.lock().await;
        sessions.retain(|_, s| s.is_running());
        let key = (image.to_string(), version.to_string(), *config);
        if let Some(session) = sessions.get(&key).filter(|s| s.try_join()) {
            self.metrics
                .multicast_seats
                .with_label_values(&[image])
                .inc();
            return Ok(session.clone());
        }
        let image_err = |path: &Path, source| JoinError::Image {
            path: path.to_path_buf(),
            source,
        };
        let len = std::fs::metadata(&path)
            .map_err(|e| image_err(&path, e))?
            .len();
        let layout = Layout::new(len, BLOCK_SIZE, FRAGMENT_SIZE)?;
        let known = (path.clone(), len);
        let cached = self.digests_kept().get(&known).cloned();
        let digests = match cached {
            Some(digests) => digests,
            None => {
                let digest_path = path.clone();
                let digests = Arc::new(
                    tokio::task::spawn_blocking(move || digest_file(&digest_path, &layout))
                        .await
                        .expect("digest task")
                        .map_err(|e| image_err(&path, e))?,
                );
                let mut kept = self.digests_kept();
                if kept.len() >= DIGESTS_KEPT {
                    kept.clear();
                }
                kept.insert(known, digests.clone());
                digests
            }
        };
        let socket = sender_socket(config, interface).map_err(JoinError::Socket)?;
        let file = File::open(&path).map_err(|e| image_err(&path, e))?;
        let n = self.started.fetch_add(1, Ordering::Relaxed);
        let session = Arc::new(Session {
            id: session_id(),
            group: config.group(n),
            port: config.port,
            layout,
            bytes_per_second: config.bytes_per_second,
            digests,
            blocks_path: diskless_boot::Route::MulticastBlocks {
                image: image.to_string(),
                version: version.to_string(),
            }
            .path(),
            leave_path: diskless_boot::Route::MulticastLeave {
                image: image.to_string(),
                version: version.to_string(),
            }
            .path(),
            state: Mutex::new(State {
                audience: {
                    let mut audience =
                        Audience::new(&layout, layout.fragments_per_round() / SLACK_PER_ROUND);
                    audience.join();
                    audience
                },
                stopped: false,
            }),
            rounds: AtomicU64::new(0),
            bytes_sent: AtomicU64::new(0),
        });
        let sender = session.clone();
        let name = format!("{image}/{version}");
        let counters = SessionCounters {
            rounds: self.metrics.multicast_rounds.with_label_values(&[image]),
            bytes: self.metrics.multicast_bytes.with_label_values(&[image]),
        };
        std::thread::Builder::new()
            .name(format!("multicast {name}"))
            .spawn(move || send(&sender, &socket, &file, &name, &counters))
            .map_err(JoinError::Socket)?;
        self.metrics
            .multicast_sessions
            .with_label_values(&[image])
            .inc();
        self.metrics
            .multicast_seats
            .with_label_values(&[image])
            .inc();
        tracing::info!(
            image,
            version,
            group = %session.group,
            port = session.port,
            session = format_args!("{:016x}", session.id),
            "multicast session started"
        );
        sessions.insert(key, session.clone());
        Ok(session)
    }

    fn digests_kept(&self) -> std::sync::MutexGuard<'_, KeptDigests> {
        self.digests.lock().expect("multicast digests")
    }

    /// A seat of session `id` of `image`/`version` has its image. True as well when that
    /// session has stopped already (the seat had its round: nothing is wrong); false when `id`
    /// is no session of this version's (a restarted server's, or one replaced since).
    pub async fn leave(&self, image: &str, version: &str, id: u64) -> bool {
        let session = {
            let sessions = self.by_version.lock().await;
            sessions
                .iter()
                .find(|((i, v, _), s)| i == image && v == version && s.id == id)
                .map(|(_, s)| s.clone())
        };
        match session {
            Some(session) => {
                session.state().audience.leave();
                true
            }
            None => false,
        }
    }

    /// Every session kept: running, or stopped since the last join.
    pub async fn views(&self) -> Vec<SessionView> {
        let sessions = self.by_version.lock().await;
        let mut views: Vec<SessionView> = sessions
            .iter()
            .map(|((image, version, _), s)| {
                let (running, seats, active) = {
                    let state = s.state();
                    (
                        !state.stopped,
                        state.audience.joined(),
                        state.audience.active(),
                    )
                };
                SessionView {
                    image: image.clone(),
                    version: version.clone(),
                    session: format!("{:016x}", s.id),
                    group: s.group,
                    port: s.port,
                    rate_mbit: s.bytes_per_second * 8 / 1_000_000,
                    running,
                    seats,
                    seats_done: seats - active,
                    rounds: s.rounds.load(Ordering::Relaxed),
                    bytes_sent: s.bytes_sent.load(Ordering::Relaxed),
                    image_len: s.layout.image_len,
                }
            })
            .collect();
        views.sort_by(|a, b| {
            (&a.image, &a.version, &a.session).cmp(&(&b.image, &b.version, &b.session))
        });
        views
    }

    /// A running session of `image`/`version`, if any (each has the same layout and
    /// digests, whatever values it is sent with).
    pub async fn get(&self, image: &str, version: &str) -> Option<Arc<Session>> {
        let sessions = self.by_version.lock().await;
        sessions
            .iter()
            .find(|((i, v, _), s)| i == image && v == version && s.is_running())
            .map(|(_, s)| s.clone())
    }
}

/// RFC 2236's Query Interval: a querier asks every 125 s, and a snooping switch forgets a
/// membership not reported for twice that plus the 10 s response time (260 s).
pub const QUERY_INTERVAL: Duration = Duration::from_secs(125);
/// The Max Response Time of our queries, in tenths of a second (RFC 2236's default, 10 s).
const QUERY_RESPONSE_TENTHS: u8 = 100;

/// The IGMP querier of `[multicast] querier = true`: a raw IGMP socket, opened at start
/// (it needs CAP_NET_RAW, which the server may give up after), sending General Queries from
/// the boot network's address.
///
/// It does not take part in the querier election of RFC 2236 (a router or switch with a
/// lower address would take over, and we would keep asking): two queriers on a network cost
/// a few bytes every two minutes and answers from every member, nothing worse; the option is
/// for networks that have none.
pub struct Querier {
    socket: socket2::Socket,
    interface: Ipv4Addr,
}

impl Querier {
    /// A raw IGMP socket sending on the interface whose address is `interface`.
    pub fn open(interface: Ipv4Addr) -> std::io::Result<Querier> {
        use socket2::{Domain, Protocol, Socket, Type};
        let socket = Socket::new(
            Domain::IPV4,
            Type::RAW,
            Some(Protocol::from(libc::IPPROTO_IGMP)),
        )?;
        socket.set_multicast_ttl_v4(1)?;
        socket.set_multicast_if_v4(&interface)?;
        // Our own query, looped back, would only wake our own host's members.
        socket.set_multicast_loop_v4(false)?;
        let option = diskless_multicast::igmp::ROUTER_ALERT;
        // SAFETY: IP_OPTIONS takes the option bytes; a buffer of their length.
        let rc = unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&socket),
                libc::IPPROTO_IP,
                libc::IP_OPTIONS,
                option.as_ptr().cast(),
                option.len() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Querier { socket, interface })
    }

    /// Send one General Query.
    pub fn query(&self) -> std::io::Result<()> {
        let query = diskless_multicast::igmp::general_query(QUERY_RESPONSE_TENTHS);
        let to = SocketAddrV4::new(diskless_multicast::igmp::ALL_SYSTEMS, 0);
        self.socket.send_to(&query, &to.into()).map(|_| ())
    }

    /// Query every [`QUERY_INTERVAL`] while the site's `[multicast] querier` is on, until
    /// `stopped` (a reload that turns it off pauses the queries).
    pub async fn run(
        self,
        site: tokio::sync::watch::Receiver<Arc<diskless_boot::Site>>,
        stopped: impl std::future::Future<Output = ()>,
    ) {
        let ask = async {
            let mut failures = 0u64;
            loop {
                let on = site.borrow().multicast.is_some_and(|m| m.querier);
                if on {
                    match self.query() {
                        Ok(()) => failures = 0,
                        Err(e) => {
                            if failures == 0 {
                                tracing::warn!(interface = %self.interface, error = %e, "IGMP querier: sending a query");
                            }
                            failures += 1;
                        }
                    }
                }
                tokio::time::sleep(QUERY_INTERVAL).await;
            }
        };
        tokio::select! {
            () = ask => {}
            () = stopped => {}
        }
    }
}

fn sender_socket(config: &Multicast, interface: Ipv4Addr) -> std::io::Result<UdpSocket> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)?;
    socket.set_multicast_ttl_v4(u32::from(config.ttl))?;
    // The group leaves from the boot network's interface, whatever the routing table says
    // of 239/8 (usually nothing, or the default route's interface).
    socket.set_multicast_if_v4(&interface)?;
    socket.bind(&SocketAddrV4::new(interface, 0).into())?;
    Ok(socket.into())
}

/// The image's counters of `/metrics` a sender adds to.
struct SessionCounters {
    rounds: prometheus::IntCounter,
    bytes: prometheus::IntCounter,
}

/// The sender thread: round and round until the audience is done (module docs).
fn send(
    session: &Session,
    socket: &UdpSocket,
    file: &File,
    name: &str,
    counters: &SessionCounters,
) {
    let layout = session.layout;
    let mut carousel = Carousel::new(layout, session.id);
    let mut pacer = Pacer::new(session.bytes_per_second, PACER_SLACK);
    let to = SocketAddrV4::new(session.group, session.port);
    // The block being sent, read at once: one pread per 64 fragments, not one per fragment
    // (the sender could not hold 900 Mbit/s on two loaded cores: docs/BENCHMARKS.md).
    let mut block = vec![0u8; layout.block_size as usize];
    let mut block_read: Option<u32> = None;
    let mut datagram = vec![0u8; HEADER_LEN + usize::from(layout.fragment_size)];
    let mut errors = 0u64;
    loop {
        let now = Instant::now();
        let wait = pacer.wait(now);
        if !wait.is_zero() {
            std::thread::sleep(wait);
            continue;
        }
        {
            let mut state = session.state();
            if state.audience.is_done() {
                state.stopped = true;
                break;
            }
            state.audience.sent();
        }
        let fragment = carousel.next_fragment();
        if fragment.round > 0 && fragment.block == 0 && fragment.fragment == 0 {
            session.rounds.fetch_add(1, Ordering::Relaxed);
            counters.rounds.inc();
        }
        let range = layout.block_range(fragment.block);
        if block_read != Some(fragment.block) {
            let whole = &mut block[..(range.end - range.start) as usize];
            if let Err(e) = file.read_exact_at(whole, range.start) {
                tracing::error!(session = name, error = %e, "multicast: reading the image; session stopped");
                break;
            }
            block_read = Some(fragment.block);
        }
        let at = (fragment.offset - range.start) as usize;
        let data = &block[at..at + usize::from(fragment.len)];
        let len = fragment.packet(data).emit(&mut datagram);
        match socket.send_to(&datagram[..len], to) {
            Ok(n) => {
                session.bytes_sent.fetch_add(n as u64, Ordering::Relaxed);
                counters.bytes.inc_by(n as u64);
            }
            Err(e) => {
                // Logged once: a network without a route for the group fails every send.
                if errors == 0 {
                    tracing::warn!(session = name, error = %e, "multicast: sending to {to}");
                }
                errors += 1;
            }
        }
        pacer.sent(now, len);
    }
    // Stopped already when the audience was done; an error stops it here.
    let (seats, left) = {
        let mut state = session.state();
        state.stopped = true;
        (
            state.audience.joined(),
            state.audience.joined() - state.audience.active(),
        )
    };
    let bytes_sent = session.bytes_sent.load(Ordering::Relaxed);
    tracing::info!(
        session = name,
        seats,
        seats_left = left,
        rounds = session.rounds.load(Ordering::Relaxed),
        bytes_sent,
        times_the_image = format_args!("{:.2}", bytes_sent as f64 / layout.image_len as f64),
        send_errors = errors,
        "multicast session stopped: every seat left, or had its round since the last join"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use diskless_multicast::{block_digests, wire::Packet, Receiver};

    #[test]
    fn the_file_digests_are_the_block_digests() {
        let image: Vec<u8> = (0..200_000u32).map(|i| (i % 241) as u8).collect();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("root.squashfs");
        std::fs::write(&path, &image).unwrap();
        let layout = Layout::new(image.len() as u64, BLOCK_SIZE, FRAGMENT_SIZE).unwrap();
        let list = digest_file(&path, &layout).unwrap();
        assert_eq!(
            layout.parse_digests(&list).unwrap(),
            block_digests(&layout, &image)
        );
    }

    /// A network namespace of this test's own (loopback up, with multicast), deleted on drop.
    struct Netns(String);

    impl Netns {
        fn new() -> Netns {
            static NEXT: AtomicU32 = AtomicU32::new(0);
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let name = format!("mcast-unit-{}-{n}", std::process::id());
            let ip = |args: &[&str]| {
                diskless_testkit::run(std::process::Command::new("ip").args(args));
            };
            ip(&["netns", "add", &name]);
            ip(&["-n", &name, "link", "set", "lo", "up", "multicast", "on"]);
            Netns(name)
        }
    }

    impl Drop for Netns {
        fn drop(&mut self) {
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", &self.0])
                .status();
        }
    }

    /// Runs `test` on a runtime inside a namespace of its own (loopback with multicast: the
    /// host's lo has no MULTICAST flag).
    fn in_netns<F: std::future::Future<Output = ()> + 'static>(test: fn() -> F) {
        if !diskless_testkit::root_with_tools(&["ip"]) {
            return;
        }
        let ns = Netns::new();
        let name = ns.0.clone();
        std::thread::spawn(move || {
            diskless_testkit::enter_netns(&name);
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap()
                .block_on(test());
        })
        .join()
        .unwrap();
    }

    /// A receiver on the group gets the whole image; the session stops when it leaves.
    #[test]
    fn a_seat_on_loopback_receives_the_whole_image() {
        in_netns(session_on_loopback);
    }

    /// A session nobody leaves (a seat that died, or that multicast does not reach) stops a
    /// round and its slack after the last join: it sends the image once, not again and again.
    #[test]
    fn a_session_nobody_leaves_stops_after_one_round() {
        in_netns(|| async {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("root.squashfs");
            std::fs::write(&path, vec![7u8; 100_000]).unwrap();
            let config = Multicast {
                groups: "239.255.80.0/24".parse().unwrap(),
                port: 5942,
                bytes_per_second: 10_000_000,
                ttl: 1,
                querier: false,
            };
            let sessions = Sessions::default();
            let session = sessions
                .join(&config, Ipv4Addr::LOCALHOST, "lab", "v1", path.clone())
                .await
                .unwrap();
            while session.is_running() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let layout = session.layout;
            let per_round = layout.fragments_per_round();
            let fragments = per_round + per_round / SLACK_PER_ROUND;
            let sent = session.bytes_sent.load(Ordering::Relaxed);
            // Every fragment once, then the slack's few of the next round, headers included.
            assert_eq!(session.rounds.load(Ordering::Relaxed), 1);
            assert!(
                sent > layout.image_len + fragments * HEADER_LEN as u64
                    && sent <= fragments * (HEADER_LEN as u64 + u64::from(FRAGMENT_SIZE)),
                "{sent} bytes for an image of {}",
                layout.image_len
            );
            assert!(sessions.get("lab", "v1").await.is_none());
            // The next seat starts a new session, with the digests of the last one: the
            // image is not read and hashed again.
            let next = sessions
                .join(&config, Ipv4Addr::LOCALHOST, "lab", "v1", path)
                .await
                .unwrap();
            assert_ne!(next.id, session.id, "a new session");
            assert!(Arc::ptr_eq(&next.digests, &session.digests));
        });
    }

    /// The session stops once every seat that joined has left, not before; a leave naming
    /// another session is refused.
    #[test]
    fn a_session_stops_when_every_seat_has_left() {
        in_netns(|| async {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("root.squashfs");
            // 10 s a round: only the leaves can stop it within the test.
            std::fs::write(&path, vec![7u8; 10_000_000]).unwrap();
            let config = Multicast {
                groups: "239.255.79.0/24".parse().unwrap(),
                port: 5941,
                bytes_per_second: 1_000_000,
                ttl: 1,
                querier: false,
            };
            let sessions = Sessions::default();
            let join = || sessions.join(&config, Ipv4Addr::LOCALHOST, "lab", "v1", path.clone());
            let first = join().await.unwrap();
            let second = join().await.unwrap();
            assert_eq!(first.id, second.id, "one session for both seats");
            let view = &sessions.views().await[0];
            assert_eq!(
                (view.running, view.seats, view.seats_done, view.rate_mbit),
                (true, 2, 0, 8)
            );
            assert_eq!(view.session, format!("{:016x}", first.id));
            // A subnet with values of its own ([subnet.multicast]): a session of its own.
            let faster = Multicast {
                bytes_per_second: 2_000_000,
                ..config
            };
            let other = sessions
                .join(&faster, Ipv4Addr::LOCALHOST, "lab", "v1", path.clone())
                .await
                .unwrap();
            assert_ne!(other.id, first.id, "other values, another session");
            assert_ne!(other.group, first.group);
            assert!(sessions.leave("lab", "v1", other.id).await);
            assert!(!sessions.leave("lab", "v1", first.id ^ 1).await);
            assert!(sessions.leave("lab", "v1", first.id).await);
            assert!(first.is_running(), "one seat is still there");
            assert!(sessions.leave("lab", "v1", first.id).await);
            while first.is_running() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            assert!(
                sessions.leave("lab", "v1", first.id).await,
                "a late leave of the stopped session is no error"
            );
            assert!(sessions.get("lab", "v1").await.is_none(), "it is gone");
            let view = sessions
                .views()
                .await
                .into_iter()
                .find(|v| v.session == format!("{:016x}", first.id))
                .expect("a stopped session is still shown");
            assert_eq!((view.running, view.seats, view.seats_done), (false, 2, 2));
        });
    }

    /// `[multicast] querier`: a General Query of RFC 2236 reaches the link, from our address,
    /// with TTL 1 and the Router Alert option.
    #[test]
    fn the_querier_sends_a_general_query() {
        in_netns(|| async {
            use socket2::{Domain, Protocol, Socket, Type};
            let listen = Socket::new(
                Domain::IPV4,
                Type::RAW,
                Some(Protocol::from(libc::IPPROTO_IGMP)),
            )
            .unwrap();
            listen
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            let querier = Querier::open(Ipv4Addr::LOCALHOST).unwrap();
            querier.query().unwrap();
            let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 256];
            let (n, from) = listen.recv_from(&mut buf).expect("a query within 5 s");
            // SAFETY: recv_from initialised the first n bytes.
            let packet: Vec<u8> = buf[..n]
                .iter()
                .map(|b| unsafe { b.assume_init() })
                .collect();
            assert_eq!(from.as_socket_ipv4().unwrap().ip(), &Ipv4Addr::LOCALHOST);
            let header_len = usize::from(packet[0] & 0x0f) * 4;
            assert_eq!(
                header_len, 24,
                "an IP header with the 4-byte Router Alert option"
            );
            assert_eq!(&packet[20..24], &diskless_multicast::igmp::ROUTER_ALERT);
            assert_eq!(packet[8], 1, "TTL 1");
            assert_eq!(&packet[16..20], &[224, 0, 0, 1]);
            assert_eq!(
                &packet[header_len..],
                &diskless_multicast::igmp::general_query(QUERY_RESPONSE_TENTHS)
            );
        });
    }

    async fn session_on_loopback() {
        let image: Vec<u8> = (0..300_000u32).map(|i| (i * 13 % 251) as u8).collect();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("root.squashfs");
        std::fs::write(&path, &image).unwrap();
        let config = Multicast {
            groups: "239.255.78.0/24".parse().unwrap(),
            port: 5940,
            bytes_per_second: 20_000_000,
            ttl: 1,
            querier: false,
        };
        let group = config.group(0);
        let receiver = UdpSocket::bind(SocketAddrV4::new(group, config.port)).unwrap();
        receiver
            .join_multicast_v4(&group, &Ipv4Addr::LOCALHOST)
            .unwrap();
        receiver
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        // The session sends the image once: with a buffer that holds all of it, a receiving
        // thread starved by a busy machine loses nothing (the default, 208 KiB, lost
        // datagrams at a load of 25 on two cores). SO_RCVBUFFORCE: we are root here.
        let size: libc::c_int = 8 << 20;
        // SAFETY: an int option on our socket.
        let rc = unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&receiver),
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0, "SO_RCVBUFFORCE: {}", std::io::Error::last_os_error());
        let sessions = Sessions::default();
        let session = sessions
            .join(&config, Ipv4Addr::LOCALHOST, "lab", "v1", path)
            .await
            .unwrap();
        assert_eq!(session.group, group);
        let layout = session.layout;
        let mut seat = Receiver::new(
            layout,
            session.id,
            layout.parse_digests(&session.digests).unwrap(),
        )
        .unwrap();
        let mut copy = vec![0u8; image.len()];
        let mut buf = [0u8; 2048];
        tokio::task::spawn_blocking(move || {
            while !seat.is_complete() {
                let n = receiver.recv(&mut buf).expect("a datagram within 5 s");
                let packet = Packet::parse(&buf[..n]).unwrap();
                let placed = seat.accept(&packet).unwrap();
                let at = placed.offset as usize;
                copy[at..at + packet.payload.len()].copy_from_slice(packet.payload);
                if let Some(b) = placed.completes {
                    let r = layout.block_range(b);
                    // Loopback loses nothing, and nothing else sends here: every block holds.
                    seat.check_block(b, &copy[r.start as usize..r.end as usize])
                        .unwrap();
                }
            }
            assert_eq!(copy, image);
        })
        .await
        .unwrap();
        // The session may have stopped already: the seat has had its round.
        sessions.leave("lab", "v1", session.id).await;
        while session.is_running() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(sessions.get("lab", "v1").await.is_none());
        let sent = session.bytes_sent.load(Ordering::Relaxed);
        assert!(
            sent >= layout.image_len && sent * 10 <= layout.image_len * 13,
            "{sent} bytes sent for an image of {}: one round, not more",
            layout.image_len
        );
    }
}
