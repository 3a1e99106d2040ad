//! `get --multicast JOIN_URL`: the image from the boot server's multicast session, holes
//! repaired with HTTP Range, every block checked against its sha256 on arrival and the whole
//! image against `--sha256` at the end (protocol: `diskless_multicast`, docs/MULTICAST.md).
//!
//! 1. GET the join URL: the session, group, port and layout; GET the block digests.
//! 2. Join the group on the interface that reaches the server (IGMP, so snooping switches
//!    forward it to this port) and write each fragment at its offset in the RAM copy. A
//!    block counts once its sha256 matches; a forged or damaged fragment fails its block,
//!    whose bytes come again.
//! 3. Stop listening when the sender has gone once round the image since our first packet,
//!    or after [`SILENCE`] without a packet; leave the group, and tell the server (the
//!    session stops once every seat that joined has left).
//! 4. Ask the image URLs for what is missing, by byte ranges; check those blocks.
//! 5. Hash the whole file and compare with `--sha256`, as every other transport does.
//!
//! Nothing on the group within [`FIRST_PACKET_WAIT`] means a network that does not carry
//! multicast to this seat: the caller then fetches by HTTP as without multicast, and says so.

use crate::http;
use crate::progress::Progress;
use crate::ram;
use crate::sink::verify;
use crate::source::Source;
use diskless_multicast::wire::Packet;
use diskless_multicast::{Layout, Receiver};
use sha2::{Digest, Sha256};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::FromRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

/// How long a seat waits for its first packet before deciding multicast does not reach it.
pub const FIRST_PACKET_WAIT: Duration = Duration::from_secs(3);
/// Silence after which a seat stops listening (the session stopped, or the network did).
pub const SILENCE: Duration = Duration::from_secs(2);
/// The receive buffer asked for: a few milliseconds of a fast session. An unpaced burst of
/// 1,000 datagrams reached receivers with the default buffer as 93 (measured between
/// namespaces), so the buffer is sized as well as the sender paced.
const RECEIVE_BUFFER: usize = 8 << 20;
/// The most join answer and digest list we read (a 64 GiB image's list is 32 MiB).
const MAX_JOIN_BYTES: u64 = 4096;
const MAX_DIGEST_BYTES: u64 = 32 << 20;

/// What the join answer says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Join {
    pub session: u64,
    pub group: Ipv4Addr,
    pub port: u16,
    pub layout: Layout,
    /// Path of the block digests on the same server.
    pub blocks: String,
    /// Path (and query) to say this seat is done, on the same server.
    pub leave: Option<String>,
}

impl Join {
    /// Parse the `key=value` lines of a join answer (unknown keys are ignored: a later
    /// server may say more).
    pub fn parse(text: &str) -> Result<Join, String> {
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix('='))
                .ok_or_else(|| format!("multicast join answer without {name}="))
        };
        fn number<T: std::str::FromStr>(name: &str, v: &str) -> Result<T, String> {
            v.parse()
                .map_err(|_| format!("multicast join answer: {name}={v:?} is not a number"))
        }
        let session = u64::from_str_radix(field("session")?, 16)
            .map_err(|_| "multicast join answer: session= is not hex".to_string())?;
        let group: Ipv4Addr = field("group")?
            .parse()
            .map_err(|_| "multicast join answer: group= is not an IPv4 address".to_string())?;
        if !group.is_multicast() {
            return Err(format!(
                "multicast join answer: {group} is not a multicast group"
            ));
        }
        let layout = Layout::new(
            number("image_len", field("image_len")?)?,
            number("block_size", field("block_size")?)?,
            number("fragment_size", field("fragment_size")?)?,
        )
        .map_err(|e| format!("multicast join answer: {e}"))?;
        Ok(Join {
            session,
            group,
            port: number("port", field("port")?)?,
            layout,
            blocks: field("blocks")?.to_string(),
            leave: field("leave").ok().map(str::to_string),
        })
    }
}

/// How a multicast fetch ended.
pub enum Outcome {
    /// The image is in and verified.
    Done(Stats),
    /// Nothing arrived on the group: fetch by HTTP and say so.
    Unreachable(String),
}

/// Where the image's bytes came from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stats {
    pub image_bytes: u64,
    pub multicast_bytes: u64,
    pub http_bytes: u64,
    pub seconds: f64,
}

impl Stats {
    /// The detail of the `fetched` report: the fields every fetch reports, then the split.
    pub fn report_detail(&self) -> String {
        let common = crate::fetch::Stats {
            bytes: self.image_bytes,
            seconds: self.seconds,
        };
        format!(
            "{}{}",
            common.report_detail(),
            split_note(self.multicast_bytes, self.http_bytes)
        )
    }
}

/// What a report adds to its detail when the image came by the session: ` multicast_bytes=N
/// http_bytes=M` (read back by `diskless_boot::multicast::MulticastFetch`; the `fetched`
/// report of `get` and the `filled` report of `lazy` both end with it).
pub fn split_note(multicast_bytes: u64, http_bytes: u64) -> String {
    format!(" multicast_bytes={multicast_bytes} http_bytes={http_bytes}")
}

/// Fetch the image into `out` by multicast from the session `join_url` names, repairing from
/// `sources`, and check it against `expected` (none: the image carries a dm-verity tree, and
/// each block is checked when the kernel reads it). An error leaves no file behind.
pub fn fetch(
    join_url: &str,
    sources: &[Source],
    expected: Option<&[u8; 32]>,
    out: &Path,
) -> Result<Outcome, String> {
    let result = fetch_inner(join_url, sources, expected, out);
    if !matches!(result, Ok(Outcome::Done(_))) {
        let _ = fs::remove_file(out);
    }
    result
}

fn fetch_inner(
    join_url: &str,
    sources: &[Source],
    expected: Option<&[u8; 32]>,
    out: &Path,
) -> Result<Outcome, String> {
    let started = Instant::now();
    let mut member = Member::join(join_url)?;
    let image_len = member.join.layout.image_len;
    let dir = out.parent().unwrap_or(Path::new("/"));
    ram::fits(image_len, 0, ram::tmpfs_free(dir)?, ram::mem_available()?)?;
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(out)
        .map_err(|e| format!("cannot create {}: {e}", out.display()))?;
    file.set_len(image_len)
        .map_err(|e| format!("{}: {e}", out.display()))?;
    let heard = member.receive(&mut WholeFile::new(&file, out, &member.join.layout));
    let unreachable = member.unreachable();
    let mut receiver = member.leave();
    if !heard? {
        return Ok(Outcome::Unreachable(unreachable));
    }
    let multicast_bytes = image_len - receiver.missing_bytes();
    let http_bytes = repair(&mut receiver, sources, &file, out)?;
    file.sync_all()
        .map_err(|e| format!("{}: {e}", out.display()))?;
    if let Some(expected) = expected {
        let digest = hash_file(&file, image_len).map_err(|e| format!("{}: {e}", out.display()))?;
        verify(digest, expected, out).map_err(|e| e.message())?;
    }
    Ok(Outcome::Done(Stats {
        image_bytes: image_len,
        multicast_bytes,
        http_bytes,
        seconds: started.elapsed().as_secs_f64(),
    }))
}

/// Where a session's fragments land: the file `get --multicast` fills ([`WholeFile`]), or
/// the RAM copy of `lazy` (`crate::lazy`), which takes only what it has not got by HTTP.
pub trait Target {
    /// A new fragment for bytes `offset..` of the image: store it, or leave it (the bytes
    /// are there from another source, or are not wanted).
    fn store(&mut self, offset: u64, bytes: &[u8]) -> Result<(), String>;
    /// Every fragment of `block` was given to [`Target::store`]: read it back and check it
    /// (`Receiver::check_block`, and whatever else the target checks), or leave it.
    fn complete(&mut self, receiver: &mut Receiver, block: u32) -> Result<(), String>;
    /// Nothing more is needed: stop listening.
    fn is_whole(&self) -> bool {
        false
    }
}

/// `get --multicast`: every fragment into the file, every completed block checked against
/// its digest (a failed one is received again, or repaired).
struct WholeFile<'a> {
    file: &'a File,
    out: &'a Path,
    block: Vec<u8>,
    progress: Progress,
}

impl<'a> WholeFile<'a> {
    fn new(file: &'a File, out: &'a Path, layout: &Layout) -> WholeFile<'a> {
        WholeFile {
            file,
            out,
            block: vec![0u8; layout.block_size as usize],
            progress: Progress::new(Some(layout.image_len), 0),
        }
    }
}

impl Target for WholeFile<'_> {
    fn store(&mut self, offset: u64, bytes: &[u8]) -> Result<(), String> {
        self.file
            .write_all_at(bytes, offset)
            .map_err(|e| format!("writing {}: {e}", self.out.display()))
    }

    fn complete(&mut self, receiver: &mut Receiver, block: u32) -> Result<(), String> {
        let layout = *receiver.layout();
        let range = layout.block_range(block);
        let data = &mut self.block[..(range.end - range.start) as usize];
        self.file
            .read_exact_at(data, range.start)
            .map_err(|e| format!("reading {}: {e}", self.out.display()))?;
        if let Err(e) = receiver.check_block(block, data) {
            eprintln!("diskless: multicast: {e}");
        }
        self.progress
            .update(u64::from(receiver.verified_blocks()) * u64::from(layout.block_size));
        Ok(())
    }
}

/// A seat in a session: the group joined, the block digests fetched, what it holds.
pub struct Member {
    /// The join answer.
    pub join: Join,
    socket: UdpSocket,
    receiver: Receiver,
    /// The boot server, as the join URL names it.
    server: Source,
}

impl Member {
    /// Steps 1 and 2: ask to join, join the group, fetch the block digests.
    pub fn join(join_url: &str) -> Result<Member, String> {
        let server = Source::parse(join_url)?;
        if !matches!(server, Source::Http { .. }) {
            return Err(format!("{join_url}: the join URL must be http://"));
        }
        let answer = http::get_whole(&server, MAX_JOIN_BYTES)
            .map_err(|e| format!("joining the multicast session: {e}"))?;
        let join = Join::parse(&String::from_utf8_lossy(&answer))?;
        // The group first, the digests after: the sender owes this seat one round from its
        // join (and a twentieth more), so the sooner we listen, the surer that round is
        // whole; what arrives meanwhile waits in the socket's buffer.
        let socket = join_group(&join, &server)?;
        let blocks_source = server.with_path(&join.blocks);
        let list = http::get_whole(&blocks_source, MAX_DIGEST_BYTES)
            .map_err(|e| format!("the block digests: {e}"))?;
        let digests = join
            .layout
            .parse_digests(&list)
            .map_err(|e| format!("{blocks_source}: {e}"))?;
        let receiver = Receiver::new(join.layout, join.session, digests)
            .map_err(|e| format!("{blocks_source}: {e}"))?;
        eprintln!(
            "diskless: joined multicast session {:016x} on {}:{} ({} in {} blocks)",
            join.session,
            join.group,
            join.port,
            Progress::human_bytes(join.layout.image_len),
            join.layout.blocks()
        );
        Ok(Member {
            join,
            socket,
            receiver,
            server,
        })
    }

    /// Step 3: receive into `target` until the sender lapped us, the image is whole, the
    /// target has all it needs, or silence. False when nothing came at all.
    pub fn receive(&mut self, target: &mut dyn Target) -> Result<bool, String> {
        let mut buf = vec![0u8; 65536];
        let mut heard = false;
        let mut refused = 0u64;
        let mut last_refusal = String::new();
        while !self.receiver.is_complete() && !self.receiver.has_lapped() && !target.is_whole() {
            let wait = if heard { SILENCE } else { FIRST_PACKET_WAIT };
            self.socket
                .set_read_timeout(Some(wait))
                .map_err(|e| format!("udp socket: {e}"))?;
            let n = match self.socket.recv(&mut buf) {
                Ok(n) => n,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    break
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(format!("receiving: {e}")),
            };
            match take(&mut self.receiver, &buf[..n], target)? {
                Ok(()) => heard = true,
                Err(why) => {
                    // Another program on the port, another session: not ours, counted.
                    refused += 1;
                    last_refusal = why;
                }
            }
        }
        if refused > 0 {
            eprintln!("diskless: multicast: {refused} datagrams refused, the last: {last_refusal}");
        }
        Ok(heard)
    }

    /// What to say when [`Member::receive`] heard nothing.
    pub fn unreachable(&self) -> String {
        format!(
            "multicast does not reach this seat: nothing on {}:{} in {} s",
            self.join.group,
            self.join.port,
            FIRST_PACKET_WAIT.as_secs()
        )
    }

    /// Step 4's start: leave the group (the switch stops sending it here) and tell the
    /// server (best effort: the session stops when every seat has left, or else a round
    /// after the last join). Returns what the seat holds.
    pub fn leave(self) -> Receiver {
        drop(self.socket);
        if let Some(leave) = &self.join.leave {
            if let Err(e) = http::post_form(&self.server.with_path(leave), "") {
                eprintln!("diskless: warning: leaving the multicast session: {e}");
            }
        }
        self.receiver
    }
}

/// One datagram: parsed, accepted by `receiver`, its payload stored in `target`, the block
/// it completes checked. The outer error is the target's (the seat cannot go on); the inner
/// one says why the datagram was refused (not ours).
pub fn take(
    receiver: &mut Receiver,
    datagram: &[u8],
    target: &mut dyn Target,
) -> Result<Result<(), String>, String> {
    let packet = match Packet::parse(datagram) {
        Ok(p) => p,
        Err(e) => return Ok(Err(e.to_string())),
    };
    let placed = match receiver.accept(&packet) {
        Ok(placed) => placed,
        Err(e) => return Ok(Err(e.to_string())),
    };
    if placed.new {
        target.store(placed.offset, packet.payload)?;
    }
    if let Some(block) = placed.completes {
        target.complete(receiver, block)?;
    }
    Ok(Ok(()))
}

/// A UDP socket bound to the group's port with a large receive buffer, member of the group on
/// the interface whose address reaches the server.
fn join_group(join: &Join, server: &Source) -> Result<UdpSocket, String> {
    let local = {
        let probe = UdpSocket::bind("0.0.0.0:0").map_err(|e| format!("udp socket: {e}"))?;
        probe
            .connect(server.socket_addr()?)
            .map_err(|e| format!("no route to the boot server: {e}"))?;
        match probe.local_addr() {
            Ok(std::net::SocketAddr::V4(a)) => *a.ip(),
            _ => Ipv4Addr::UNSPECIFIED,
        }
    };
    // SAFETY: a new socket; on success its descriptor is owned by the UdpSocket below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(format!("udp socket: {}", io::Error::last_os_error()));
    }
    // SAFETY: fd is a socket we own.
    let socket = unsafe { UdpSocket::from_raw_fd(fd) };
    let set = |level, name, value: libc::c_int| {
        // SAFETY: an int option on our socket.
        let rc = unsafe {
            libc::setsockopt(
                fd,
                level,
                name,
                (&value as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    };
    // Another seat process on this host (tests) may listen on the same group and port.
    set(libc::SOL_SOCKET, libc::SO_REUSEADDR, 1).map_err(|e| format!("SO_REUSEADDR: {e}"))?;
    // FORCE passes net.core.rmem_max (212,992 bytes by default), and we are root in the
    // initramfs; the plain option, capped, is the fallback.
    let size = RECEIVE_BUFFER as libc::c_int;
    if set(libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, size).is_err() {
        let _ = set(libc::SOL_SOCKET, libc::SO_RCVBUF, size);
    }
    // Bound to the group, not the wildcard: only this group's datagrams arrive here.
    let addr = SocketAddrV4::new(join.group, join.port);
    let sockaddr = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: join.port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(join.group).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: binding our socket to a sockaddr_in of the right size.
    let rc = unsafe {
        libc::bind(
            fd,
            (&sockaddr as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(format!("binding {addr}: {}", io::Error::last_os_error()));
    }
    socket
        .join_multicast_v4(&join.group, &local)
        .map_err(|e| format!("joining {} on {local}: {e}", join.group))?;
    Ok(socket)
}

/// Fetch every missing range from the first source that gives it; check the blocks it
/// completes. Returns the bytes fetched.
fn repair(
    receiver: &mut Receiver,
    sources: &[Source],
    file: &File,
    out: &Path,
) -> Result<u64, String> {
    let layout = *receiver.layout();
    let missing = receiver.missing_ranges();
    let total: u64 = missing.iter().map(|r| r.end - r.start).sum();
    if total > 0 {
        eprintln!(
            "diskless: repairing {} in {} ranges over HTTP",
            Progress::human_bytes(total),
            missing.len()
        );
    }
    let http: Vec<&Source> = sources
        .iter()
        .filter(|s| matches!(s, Source::Http { .. }))
        .collect();
    let mut buf = vec![0u8; layout.block_size as usize];
    for range in missing {
        let mut data = Vec::with_capacity((range.end - range.start) as usize);
        let mut errors = Vec::new();
        for source in &http {
            data.clear();
            match http::get_range(source, range.clone()).and_then(|mut body| {
                body.read_to_end(&mut data)
                    .map_err(|e| format!("{source}: {e}"))
            }) {
                Ok(_) => break,
                Err(e) => errors.push(e),
            }
        }
        if data.len() as u64 != range.end - range.start {
            return Err(format!(
                "repairing bytes {}-{}: {}",
                range.start,
                range.end - 1,
                if errors.is_empty() {
                    "no http:// image URL".to_string()
                } else {
                    errors.join("; ")
                }
            ));
        }
        file.write_all_at(&data, range.start)
            .map_err(|e| format!("writing {}: {e}", out.display()))?;
        for b in receiver.filled(range) {
            let r = layout.block_range(b);
            let block = &mut buf[..(r.end - r.start) as usize];
            file.read_exact_at(block, r.start)
                .map_err(|e| format!("reading {}: {e}", out.display()))?;
            receiver
                .check_block(b, block)
                .map_err(|e| format!("after the HTTP repair: {e}"))?;
        }
    }
    Ok(total)
}

fn hash_file(file: &File, len: u64) -> io::Result<[u8; 32]> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut at = 0u64;
    while at < len {
        let n = buf.len().min((len - at) as usize);
        file.read_exact_at(&mut buf[..n], at)?;
        hasher.update(&buf[..n]);
        at += n as u64;
    }
    Ok(hasher.finalize().into())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ANSWER: &str = "session=00c0ffee12345678\ngroup=239.255.77.1\nport=5940\n\
        image_len=200000\nblock_size=65536\nfragment_size=1024\nrate=62500000\n\
        blocks=/api/multicast/lab/v1/blocks\n";

    #[test]
    fn the_join_answer_is_read_and_checked() {
        let join = Join::parse(ANSWER).unwrap();
        assert_eq!(join.session, 0x00c0ffee12345678);
        assert_eq!(join.group, Ipv4Addr::new(239, 255, 77, 1));
        assert_eq!(join.port, 5940);
        assert_eq!(join.layout.blocks(), 4);
        assert_eq!(join.blocks, "/api/multicast/lab/v1/blocks");
        assert_eq!(join.leave, None, "a server that has no leave");
        let with_leave =
            format!("{ANSWER}leave=/api/multicast/lab/v1/leave?session=00c0ffee12345678\n");
        assert_eq!(
            Join::parse(&with_leave).unwrap().leave.as_deref(),
            Some("/api/multicast/lab/v1/leave?session=00c0ffee12345678")
        );
        let unicast = ANSWER.replace("239.255.77.1", "10.0.0.1");
        assert!(Join::parse(&unicast)
            .unwrap_err()
            .contains("not a multicast group"));
        let no_port = ANSWER.replace("port=5940\n", "");
        assert_eq!(
            Join::parse(&no_port).unwrap_err(),
            "multicast join answer without port="
        );
        let huge_block = ANSWER.replace("block_size=65536", "block_size=1048576");
        assert!(Join::parse(&huge_block).unwrap_err().contains("fragments"));
    }

    #[test]
    fn the_report_adds_the_split_to_the_usual_fields() {
        let stats = Stats {
            image_bytes: 1000,
            multicast_bytes: 900,
            http_bytes: 100,
            seconds: 2.0,
        };
        let detail = stats.report_detail();
        assert!(
            detail.ends_with(" multicast_bytes=900 http_bytes=100"),
            "{detail}"
        );
        let parsed = diskless_boot::FetchedDetail::parse(&detail).unwrap();
        assert_eq!(parsed.bytes, 1000);
        use diskless_boot::multicast::MulticastFetch;
        assert_eq!(
            MulticastFetch::parse(&detail),
            Some(MulticastFetch::Joined {
                multicast_bytes: 900,
                http_bytes: 100
            })
        );
        for (note, said) in [
            (crate::fetch::NOTE_UNREACHABLE, MulticastFetch::Unreachable),
            (crate::fetch::NOTE_FAILED, MulticastFetch::Failed),
        ] {
            let detail = format!("bytes=1 seconds=1.00 mbps=0.0{note}");
            assert_eq!(MulticastFetch::parse(&detail), Some(said));
        }
    }
}
