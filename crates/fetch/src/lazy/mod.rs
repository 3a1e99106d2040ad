//! `lazy` and `network`: the root is mounted at once from a block device the helper serves,
//! while the image is still on the server.
//!
//! ```text
//! squashfs -> dm-verity (diskless-root) -> dm-linear (diskless-lazy) -> /dev/nbdN
//!                                                                         | socketpair
//!                                  helper: NBD requests -> HTTP Range requests, each 4 KiB
//!                                          block checked against the image's hash tree
//!                                          lazy: -> the RAM copy, filled behind the boot
//! ```
//!
//! `lazy` fills a RAM copy of the image (a file in the tmpfs `whole` fetches into): what the
//! kernel waits for first, then the rest in order ([`plan`]). When the copy is whole, the
//! linear device's table is switched from the NBD device to a loop device over the copy
//! (load, suspend, resume), NBD is disconnected and the helper exits: the seat then runs
//! as a `whole` seat does, off the network. `network` keeps no copy: every block the page
//! cache lacks comes from the server, so an image bigger than RAM boots.
//!
//! The boot script runs `diskless-fetch lazy ...`, which starts the server as a child whose
//! argv[0] begins with '@' (systemd's ROOT_STORAGE_DAEMONS convention: kept across
//! switch_root and not killed at shutdown) and prints the verity device once the child has
//! set it up. Everything the child needs after switch_root (the device-mapper control, the
//! loop device over the copy) is opened or attached before: /dev and /run move under the
//! new root and the helper's own root is left behind. NBD is configured and released by
//! netlink ([`netlink`]), by its index.

pub mod multicast;
pub mod nbd;
pub mod netlink;
pub mod plan;
pub mod ranges;
pub mod tree;

use crate::progress::Progress;
use crate::source::Source;
use crate::verity;
use plan::{Fill, Plan};
use ranges::{Ranges, Refused, Tally};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::ops::Range;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;
use tree::{Leaves, BLOCK_SIZE};

/// The linear device between dm-verity and the NBD (later the loop) device.
pub const LINEAR_NAME: &str = "diskless-lazy";
/// HTTP connections filling the RAM copy in order at once (besides the one that fetches what
/// the kernel waits for).
const WORKERS: usize = 2;
/// Every worker of a fill with no multicast session: the demand's and [`WORKERS`] fill ones.
const ALL_ROLES: [Role; 1 + WORKERS] = [Role::Demand, Role::Fill, Role::Fill];
const SECTOR: u64 = 512;
/// The fill's progress on the console at most this often (a sysadmin at a seat's console
/// sees it; the kernel's messages and a login prompt share the screen).
const FILL_PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_secs(5);
/// Reported when the RAM copy is whole, with `seconds= bytes= fetched= demanded=`.
pub const STAGE_FILLED: &str = "filled";
/// Reported when the root reads the RAM copy and NBD is disconnected.
pub const STAGE_NETWORK_RELEASED: &str = "network-released";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A RAM copy filled behind the boot; off the network once it is whole.
    Lazy,
    /// No copy: the server answers every read the page cache does not.
    Network,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Lazy => "lazy",
            Mode::Network => "network",
        }
    }
}

/// What `diskless-fetch lazy|network` is asked.
#[derive(Debug)]
pub struct Request {
    pub mode: Mode,
    pub params: verity::Params,
    /// The RAM copy (lazy).
    pub ram: Option<PathBuf>,
    pub report_url: Option<String>,
    pub sources: Vec<Source>,
    /// The boot server's multicast join URL (lazy): the fill comes from the session first
    /// ([`multicast`]).
    pub multicast: Option<String>,
}

impl Request {
    /// `ROOTHASH DATA_BLOCKS:SALT [--ram FILE] [--report URL] [--multicast URL] URL...`
    pub fn parse(mode: Mode, args: &[String]) -> Result<Request, String> {
        let [root_hash, layout, rest @ ..] = args else {
            return Err(format!("{}: ROOTHASH DATA_BLOCKS:SALT needed", mode.name()));
        };
        let params = verity::Params::parse(root_hash, layout)?;
        let (mut ram, mut report_url, mut multicast, mut urls) = (None, None, None, Vec::new());
        let mut it = rest.iter();
        while let Some(arg) = it.next() {
            let mut value = |name: &str| crate::flag_value(&mut it, name);
            match arg.as_str() {
                "--ram" => ram = Some(PathBuf::from(value("--ram")?)),
                "--report" => report_url = Some(value("--report")?),
                "--multicast" => multicast = Some(value("--multicast")?),
                flag if flag.starts_with("--") => return Err(format!("unknown option {flag}")),
                url => urls.push(Source::parse(url)?),
            }
        }
        if urls.is_empty() {
            return Err(format!("{}: no image URL given", mode.name()));
        }
        if mode == Mode::Lazy && ram.is_none() {
            return Err("lazy: --ram FILE (the RAM copy) is required".into());
        }
        if mode == Mode::Network && multicast.is_some() {
            return Err("network: --multicast fills a RAM copy, which network has none of".into());
        }
        Ok(Request {
            mode,
            params,
            ram,
            report_url,
            sources: urls,
            multicast,
        })
    }

    fn data_len(&self) -> u64 {
        self.params.data_blocks * BLOCK_SIZE
    }

    fn image_len(&self) -> u64 {
        self.data_len() + tree::tree_len(self.params.data_blocks)
    }
}

/// `diskless-fetch lazy|network ARGS`: start the server (argv[0] `@diskless-fetch`), print
/// the verity device it set up, and leave it running.
pub fn start(mode: Mode, args: &[String]) -> Result<(), String> {
    Request::parse(mode, args)?;
    let mut child = std::process::Command::new("/proc/self/exe")
        .arg0("@diskless-fetch")
        .arg(format!("{}-server", mode.name()))
        .args(args)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("starting the {} server: {e}", mode.name()))?;
    let mut line = String::new();
    let stdout = child.stdout.take().expect("piped");
    BufReader::new(stdout)
        .read_line(&mut line)
        .map_err(|e| format!("reading the server's device: {e}"))?;
    if line.trim().is_empty() {
        let status = child.wait().map_err(|e| e.to_string())?;
        return Err(format!(
            "the {} server stopped before the root device was ready ({status})",
            mode.name()
        ));
    }
    println!("{}", line.trim());
    Ok(())
}

/// The server (`lazy-server`/`network-server`): set up the devices, print the verity
/// device, serve until the copy is whole (lazy) or forever (network).
pub fn serve(mode: Mode, args: &[String]) -> Result<(), String> {
    let started = Instant::now();
    let req = Request::parse(mode, args)?;
    // Out of the boot script's session: its end must not end the server.
    // SAFETY: setsid has no memory effects.
    unsafe { libc::setsid() };
    let mut ranges = Ranges::new(req.sources.clone());
    let (data_len, image_len) = (req.data_len(), req.image_len());
    // The line `diskless vm` (and a reader of the console) takes for the fetch's start.
    eprintln!(
        "diskless: fetching {} on demand (diskless.fetch={}): the hash tree first, then the \
         blocks the kernel reads{}",
        req.sources[0],
        mode.name(),
        if mode == Mode::Lazy {
            ", and a RAM copy behind the boot"
        } else {
            ""
        }
    );
    let (tree, leaves) = checked_tree(&req, &mut ranges)?;
    match req.mode {
        Mode::Network => {
            let direct = Arc::new(Direct {
                ranges: Mutex::new(ranges),
                leaves,
                tree,
                data_len,
            });
            let exposed = expose(&req, direct)?;
            let _ = exposed.server.join();
            Err("the network server stopped: the kernel disconnected".into())
        }
        Mode::Lazy => {
            let ram = req.ram.as_ref().expect("parsed");
            let copy = Arc::new(RamCopy::create(ram, image_len, data_len, &tree)?);
            let loop_dev = attach_loop(ram)?;
            // The workers first: the kernel reads (a partition scan) as soon as the NBD
            // device starts, and opening it for dm-linear waits for those reads (a boot
            // hung here, "Possible stuck request ... read@0" until they ran). With a
            // multicast session, the fill waits for it: the session brings the rest.
            let roles: &[Role] = match req.multicast {
                Some(_) => &[Role::Demand],
                None => &ALL_ROLES,
            };
            let mut workers = start_workers(&copy, &leaves, &req.sources, roles);
            let session = req.multicast.clone().map(|url| {
                let (copy, leaves) = (copy.clone(), leaves.clone());
                std::thread::spawn(move || multicast::fill(&url, &copy, &leaves, data_len))
            });
            let exposed = expose(&req, copy.clone())?;
            let mut note = String::new();
            if let Some(session) = session {
                let outcome = session
                    .join()
                    .unwrap_or_else(|_| multicast::Outcome::Failed("the session panicked".into()));
                match &outcome {
                    multicast::Outcome::Joined { multicast_bytes } => eprintln!(
                        "diskless: multicast: {} of the copy by the session; the rest by HTTP",
                        crate::progress::Progress::human_bytes(*multicast_bytes)
                    ),
                    multicast::Outcome::Unreachable(why) => {
                        eprintln!("diskless: {why}; filling by HTTP")
                    }
                    multicast::Outcome::Failed(why) => {
                        eprintln!("diskless: multicast: {why}; filling by HTTP")
                    }
                }
                note = outcome.note(image_len);
                workers.extend(start_workers(
                    &copy,
                    &leaves,
                    &req.sources,
                    &[Role::Fill; WORKERS],
                ));
            }
            let mut tally = ranges.tally;
            for worker in workers {
                tally.add(&worker.join().unwrap_or_default());
            }
            let demanded = copy.plan.lock().expect("plan lock").demanded_bytes;
            let detail =
                filled_detail(started.elapsed().as_secs_f64(), image_len, &tally, demanded) + &note;
            eprintln!("diskless: the RAM copy is whole ({detail})");
            for (source, refused) in req.sources.iter().zip(&tally.refused) {
                if *refused > 0 {
                    eprintln!(
                        "diskless: warning: {source} sent {refused} block(s) that did not \
                         match the image's hash tree (each fetched again elsewhere)"
                    );
                }
            }
            report(&req, STAGE_FILLED, &detail);
            verity::switch(
                &exposed.control,
                LINEAR_NAME,
                image_len / SECTOR,
                "linear",
                &format!("{loop_dev} 0"),
            )?;
            netlink::disconnect(exposed.nbd_index)
                .map_err(|e| format!("disconnecting nbd{}: {e}", exposed.nbd_index))?;
            let _ = exposed.server.join();
            let detail = format!(
                "seconds={:.1} device={loop_dev}",
                started.elapsed().as_secs_f64()
            );
            eprintln!("diskless: the root is on the RAM copy, off the network ({detail})");
            report(&req, STAGE_NETWORK_RELEASED, &detail);
            Ok(())
        }
    }
}

/// The image's hash tree, fetched first and checked up to the root hash (every block after it
/// is checked against it), and its leaves.
fn checked_tree(req: &Request, ranges: &mut Ranges) -> Result<(Vec<u8>, Arc<Leaves>), String> {
    let root = hex_bytes(&req.params.root_hash)?
        .try_into()
        .map_err(|_| "the root hash is not 32 bytes")?;
    let salt = hex_bytes(&req.params.salt)?;
    let checked = std::cell::RefCell::new(None);
    let tree = ranges.get_checked(req.data_len()..req.image_len(), |tree| {
        // A tree refused counts as one block: the check stops at its first wrong one.
        let leaves = Leaves::check(tree, req.params.data_blocks, &salt, &root)
            .map_err(|why| Refused { blocks: 1, why })?;
        *checked.borrow_mut() = Some(leaves);
        Ok(())
    });
    let leaves = Arc::new(checked.into_inner().expect("set by the accepted check"));
    Ok((tree, leaves))
}

/// `diskless-fetch lazy-fill ARGS` (`lazy`'s arguments): a lazy seat's fetch without its
/// kernel devices, for scripts/bench-storm's many seats on one host, where NBD devices and
/// device-mapper names are the host's, enough for one seat at a time. The tree first, then
/// the image's first block asked for as the kernel's mount asks for it (the moment a seat
/// has its root: the reads that follow up to multi-user are not replayed), while the
/// workers fill the RAM copy. Prints `root=S filled=S fetched=BYTES` (seconds since start).
pub fn fill_only(args: &[String]) -> Result<(), String> {
    let started = Instant::now();
    let req = Request::parse(Mode::Lazy, args)?;
    let mut ranges = Ranges::new(req.sources.clone());
    let (tree, leaves) = checked_tree(&req, &mut ranges)?;
    let ram = req.ram.as_ref().expect("parsed");
    let copy = Arc::new(RamCopy::create(
        ram,
        req.image_len(),
        req.data_len(),
        &tree,
    )?);
    let workers = start_workers(&copy, &leaves, &req.sources, &ALL_ROLES);
    copy.read(0..BLOCK_SIZE);
    let root = started.elapsed().as_secs_f64();
    let mut tally = ranges.tally;
    for worker in workers {
        tally.add(&worker.join().unwrap_or_default());
    }
    let fetched = tally.received;
    println!(
        "root={root:.3} filled={:.3} fetched={fetched}",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The detail of the `filled` report, `seconds=S bytes=N fetched=F demanded=D refused=R`
/// (`R`: blocks refused, from every URL): what the server reads back with
/// `diskless_boot::FilledDetail::parse` (tested below). With a multicast session,
/// [`multicast::Outcome::note`] follows.
fn filled_detail(seconds: f64, bytes: u64, tally: &Tally, demanded: u64) -> String {
    format!(
        "seconds={seconds:.1} bytes={bytes} fetched={} demanded={demanded} refused={}",
        tally.received,
        tally.refused_blocks()
    )
}

fn report(req: &Request, stage: &str, detail: &str) {
    if let Some(url) = &req.report_url {
        if let Err(e) = crate::http::post_report(url, stage, detail) {
            eprintln!("diskless: warning: report {stage} not delivered: {e}");
        }
    }
}

/// The devices the kernel reads the root through, and the threads that serve them.
struct Exposed {
    control: File,
    /// The NBD device's index (`/dev/nbdN`).
    nbd_index: u32,
    /// Answers the kernel until it disconnects.
    server: std::thread::JoinHandle<()>,
}

/// Serve `blocks` on an NBD device, put dm-linear and dm-verity over it, print the verity
/// device and send stdout nowhere.
fn expose(req: &Request, blocks: Arc<dyn Blocks>) -> Result<Exposed, String> {
    let image_len = req.image_len();
    let control = verity::control()?;
    // The server first: the kernel reads (a partition scan) as soon as the device is
    // connected.
    let (nbd_index, nbd_dev, server_end) = attach_nbd(image_len)?;
    let server = std::thread::spawn(move || {
        if let Err(e) = answer(server_end, &*blocks, image_len) {
            eprintln!("diskless: warning: serving the root stopped: {e}");
        }
    });
    wait_for_size(&format!("/dev/nbd{nbd_index}"))?;
    let linear = verity::create(
        &control,
        LINEAR_NAME,
        image_len / SECTOR,
        "linear",
        &format!("{nbd_dev} 0"),
    )?;
    let root_device = verity::open(&linear, &req.params, verity::DEVICE_NAME)?;
    // The boot script reads this line; stdout goes nowhere after it (the reader exits).
    println!("{}", root_device.display());
    std::io::stdout().flush().ok();
    if let Ok(null) = OpenOptions::new().write(true).open("/dev/null") {
        // SAFETY: dup2 onto stdout of a valid fd.
        unsafe { libc::dup2(std::os::fd::AsRawFd::as_raw_fd(&null), 1) };
    }
    Ok(Exposed {
        control,
        nbd_index,
        server,
    })
}

/// A free NBD device given one end of a new socketpair, as a disk of `len` bytes (by
/// netlink, [`netlink::connect`]): its index, its `MAJOR:MINOR`, and the other end for the
/// server.
fn attach_nbd(len: u64) -> Result<(u32, String, UnixStream), String> {
    // The module was loaded a moment ago: devtmpfs adds its nodes asynchronously.
    crate::loopdev::wait_for_device(std::path::Path::new("/dev/nbd0"))
        .map_err(|e| format!("{e} (is the nbd module loaded?)"))?;
    let mut last = "no /dev/nbd0 to /dev/nbd15 to connect".to_string();
    for index in 0..16 {
        let path = format!("/dev/nbd{index}");
        // Not opened before the connect: an open device has a configuration, and the
        // kernel refuses to connect it (EBUSY).
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        let (kernel_end, server_end) =
            UnixStream::pair().map_err(|e| format!("creating a socketpair: {e}"))?;
        let fd = std::os::fd::AsRawFd::as_raw_fd(&kernel_end);
        match netlink::connect(index, fd, len, BLOCK_SIZE) {
            Ok(()) => {
                // The kernel holds its own reference to the socket now.
                drop(kernel_end);
                let rdev = meta.rdev();
                let dev = format!("{}:{}", libc::major(rdev), libc::minor(rdev));
                return Ok((index, dev, server_end));
            }
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                last = format!("{path}: in use ({e})")
            }
            Err(e) => return Err(format!("{path}: connecting NBD by netlink: {e}")),
        }
    }
    Err(last)
}

/// The NBD device has its size once it is connected; checked before dm-linear goes over it
/// (a device of size 0 would make a table the kernel refuses).
fn wait_for_size(path: &str) -> Result<(), String> {
    let device = File::open(path).map_err(|e| format!("{path}: {e}"))?;
    for _ in 0..500 {
        if nbd::size(&device) > 0 {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    Err(format!("{path} has no size 5 s after its connect"))
}

/// Where the server gets the bytes it answers with.
trait Blocks: Send + Sync {
    /// Bytes `range` of the image, checked; waits as long as it takes.
    fn read(&self, range: Range<u64>) -> Vec<u8>;
}

/// Answer the kernel's requests on `socket` from `blocks` until it disconnects.
fn answer(mut socket: UnixStream, blocks: &dyn Blocks, size: u64) -> Result<(), String> {
    let mut header = [0u8; nbd::REQUEST_LEN];
    loop {
        match socket.read_exact(&mut header) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(format!("reading an NBD request: {e}")),
        }
        let request = nbd::Request::parse(&header)?;
        if request.command == nbd::Command::Disconnect {
            return Ok(());
        }
        let mut reply = vec![0u8; nbd::REPLY_LEN];
        let error = nbd::refusal(&request, size);
        let reply_header: &mut [u8; nbd::REPLY_LEN] =
            (&mut reply[..]).try_into().expect("REPLY_LEN bytes");
        nbd::emit_reply(request.handle, error.unwrap_or(0), reply_header);
        if error.is_none() {
            let end = request.offset + u64::from(request.length);
            reply.extend_from_slice(&blocks.read(request.offset..end));
        }
        socket
            .write_all(&reply)
            .map_err(|e| format!("answering an NBD request: {e}"))?;
    }
}

/// The blocks of `range` (a byte range within the data) that hold it: their first index and
/// their byte range.
fn covering_blocks(range: &Range<u64>) -> (u64, Range<u64>) {
    let first = range.start / BLOCK_SIZE;
    (
        first,
        first * BLOCK_SIZE..range.end.div_ceil(BLOCK_SIZE) * BLOCK_SIZE,
    )
}

/// The check of data blocks from block `first` on: refused if any does not match `leaves`.
fn refuse_bad_blocks(leaves: &Leaves, first: u64) -> impl Fn(&[u8]) -> Result<(), Refused> + '_ {
    move |data| match leaves.bad_blocks(first, data)[..] {
        [] => Ok(()),
        [block] => Err(Refused {
            blocks: 1,
            why: format!("block {block} does not match the image's hash tree"),
        }),
        [block, ref more @ ..] => Err(Refused {
            blocks: 1 + more.len() as u64,
            why: format!(
                "block {block} and {} more do not match the image's hash tree",
                more.len()
            ),
        }),
    }
}

/// `network`: every read from the server, checked; the tree from memory.
struct Direct {
    ranges: Mutex<Ranges>,
    leaves: Arc<Leaves>,
    tree: Vec<u8>,
    data_len: u64,
}

impl Blocks for Direct {
    fn read(&self, range: Range<u64>) -> Vec<u8> {
        let mut out = Vec::with_capacity((range.end - range.start) as usize);
        if range.start < self.data_len {
            let data = range.start..range.end.min(self.data_len);
            let (first, blocks) = covering_blocks(&data);
            let got = self
                .ranges
                .lock()
                .expect("ranges lock")
                .get_checked(blocks.clone(), refuse_bad_blocks(&self.leaves, first));
            let skip = (data.start - blocks.start) as usize;
            out.extend_from_slice(&got[skip..skip + (data.end - data.start) as usize]);
        }
        if range.end > self.data_len {
            let from = range.start.max(self.data_len) - self.data_len;
            out.extend_from_slice(&self.tree[from as usize..(range.end - self.data_len) as usize]);
        }
        out
    }
}

/// `lazy`: the RAM copy, its fill plan, and the loop device over it.
struct RamCopy {
    file: File,
    plan: Mutex<Plan>,
    changed: Condvar,
    progress: Mutex<Progress>,
}

/// What a worker of the RAM copy fetches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// What the kernel waits for, at the boot's priority.
    Demand,
    /// The rest in order, at the lowest priority.
    Fill,
}

/// A worker per role (one for the kernel's demands, [`WORKERS`] for the fill), each with
/// its own connections; they end when the copy is whole, returning what each received and
/// refused.
fn start_workers(
    copy: &Arc<RamCopy>,
    leaves: &Arc<Leaves>,
    sources: &[Source],
    roles: &[Role],
) -> Vec<std::thread::JoinHandle<Tally>> {
    roles
        .iter()
        .map(|&role| {
            let (copy, leaves) = (copy.clone(), leaves.clone());
            let ranges = Ranges::new(sources.to_vec());
            std::thread::spawn(move || copy.fill(ranges, &leaves, role))
        })
        .collect()
}

/// Attach the copy at `path` to a loop device now, while /dev is where the helper sees it
/// (after switch_root it is not); no one reads it until the switch. Returns `MAJOR:MINOR`.
fn attach_loop(path: &std::path::Path) -> Result<String, String> {
    let node = crate::loopdev::attach_read_only(path)?;
    let meta = std::fs::metadata(&node).map_err(|e| format!("{}: {e}", node.display()))?;
    if !meta.file_type().is_block_device() {
        return Err(format!("{} is not a block device", node.display()));
    }
    Ok(format!(
        "{}:{}",
        libc::major(meta.rdev()),
        libc::minor(meta.rdev())
    ))
}

impl RamCopy {
    /// The copy at `path`, `image_len` bytes, with the checked `tree` in place after the
    /// `data_len` bytes of data still to come.
    fn create(
        path: &std::path::Path,
        image_len: u64,
        data_len: u64,
        tree: &[u8],
    ) -> Result<RamCopy, String> {
        let dir = path.parent().unwrap_or(std::path::Path::new("/"));
        let free = crate::ram::tmpfs_free(dir)?;
        if free < image_len {
            return Err(format!(
                "the RAM disk has {} MiB free, the image needs {} MiB: too little RAM for \
                 diskless.fetch=lazy (network needs no copy)",
                free >> 20,
                image_len >> 20
            ));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .map_err(|e| format!("creating {}: {e}", path.display()))?;
        file.set_len(image_len)
            .map_err(|e| format!("sizing {}: {e}", path.display()))?;
        file.write_all_at(tree, data_len)
            .map_err(|e| format!("writing the hash tree to {}: {e}", path.display()))?;
        Ok(RamCopy {
            file,
            plan: Mutex::new(Plan::new(data_len, plan::CHUNK)),
            changed: Condvar::new(),
            progress: Mutex::new(
                Progress::new(Some(data_len), 0)
                    .every(FILL_PROGRESS_EVERY)
                    .titled("the RAM copy"),
            ),
        })
    }

    /// One worker: fetch the chunks the plan gives it (`role`), check and store them, until
    /// the copy is whole. Returns what it received and refused.
    fn fill(&self, mut ranges: Ranges, leaves: &Leaves, role: Role) -> Tally {
        if role == Role::Fill {
            // The fill is what can wait: on a seat's few CPUs it competes with the boot it
            // runs behind (hashing every block, copying it), so it gets what the boot
            // leaves: nice 19, for this thread only (setpriority on a thread id).
            // SAFETY: plain system calls on this thread's own id.
            unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 19) };
        }
        loop {
            let chunk = {
                let mut plan = self.plan.lock().expect("plan lock");
                loop {
                    if plan.is_whole() {
                        return ranges.tally;
                    }
                    let now = Instant::now();
                    let next = match role {
                        Role::Demand => plan.next_demanded(now).map_or(Fill::Wait, Fill::Chunk),
                        Role::Fill => plan.next_in_order(now),
                    };
                    plan = match next {
                        Fill::Chunk(c) => break c,
                        Fill::PauseUntil(until) => {
                            let pause = until.saturating_duration_since(now);
                            self.changed.wait_timeout(plan, pause).expect("plan lock").0
                        }
                        Fill::Wait => self.changed.wait(plan).expect("plan lock"),
                    };
                }
            };
            let range = self.plan.lock().expect("plan lock").range(chunk);
            let data = ranges.get_checked(
                range.clone(),
                refuse_bad_blocks(leaves, range.start / BLOCK_SIZE),
            );
            let mut plan = self.plan.lock().expect("plan lock");
            let present = match self.file.write_all_at(&data, range.start) {
                Ok(()) => {
                    plan.done(chunk, Instant::now());
                    Some(plan.present_bytes())
                }
                Err(e) => {
                    // tmpfs was sized for the image above; this is not expected.
                    eprintln!("diskless: warning: writing the RAM copy: {e}");
                    plan.failed(chunk, Instant::now());
                    None
                }
            };
            drop(plan);
            self.changed.notify_all();
            // Outside the plan's lock: a line on a serial console takes milliseconds.
            if let Some(present) = present {
                self.progress.lock().expect("progress lock").update(present);
            }
        }
    }
}

impl Blocks for RamCopy {
    fn read(&self, range: Range<u64>) -> Vec<u8> {
        {
            // The tree after the data is in the copy from the start (the plan covers the
            // data only, and ignores the part of a range past it).
            let mut plan = self.plan.lock().expect("plan lock");
            while !plan.demand(range.clone()) {
                self.changed.notify_all();
                plan = self.changed.wait(plan).expect("plan lock");
            }
        }
        let mut out = vec![0u8; (range.end - range.start) as usize];
        // The copy is a tmpfs file: a read of bytes it holds does not fail.
        if let Err(e) = self.file.read_exact_at(&mut out, range.start) {
            eprintln!("diskless: warning: reading the RAM copy: {e}");
        }
        out
    }
}

fn hex_bytes(hex: &str) -> Result<Vec<u8>, String> {
    (0..hex.len())
        .step_by(2)
        .map(|i| {
            hex.get(i..i + 2)
                .and_then(|b| u8::from_str_radix(b, 16).ok())
                .ok_or_else(|| format!("{hex:?} is not hex"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ranges::Damage;

    #[test]
    fn the_arguments_parse() {
        let args = |s: &str| s.split_whitespace().map(String::from).collect::<Vec<_>>();
        let root = "ab".repeat(32);
        let req = Request::parse(
            Mode::Lazy,
            &args(&format!(
                "{root} 300:0a --ram /run/x --report http://s/r http://s/img"
            )),
        )
        .unwrap();
        assert_eq!(req.ram, Some(PathBuf::from("/run/x")));
        assert_eq!(req.sources.len(), 1);
        assert_eq!(req.data_len(), 300 * 4096);
        // 300 blocks: 3 hash blocks in level 0, one above.
        assert_eq!(req.image_len(), 304 * 4096);
        let err =
            Request::parse(Mode::Lazy, &args(&format!("{root} 300:0a http://s/img"))).unwrap_err();
        assert!(err.contains("--ram"), "{err}");
        assert!(
            Request::parse(Mode::Network, &args(&format!("{root} 300:0a http://s/img"))).is_ok()
        );
        let joined = Request::parse(
            Mode::Lazy,
            &args(&format!(
                "{root} 300:0a --ram /run/x --multicast http://s/join http://s/img"
            )),
        )
        .unwrap();
        assert_eq!(joined.multicast.as_deref(), Some("http://s/join"));
        assert_eq!(req.multicast, None);
        let err = Request::parse(
            Mode::Network,
            &args(&format!(
                "{root} 300:0a --multicast http://s/join http://s/img"
            )),
        )
        .unwrap_err();
        assert!(err.contains("no"), "{err}");
        assert!(
            Request::parse(Mode::Network, &args(&format!("{root} 300:0a")))
                .unwrap_err()
                .contains("no image URL")
        );
    }

    #[test]
    fn reads_cover_whole_blocks() {
        assert_eq!(covering_blocks(&(0..4096)), (0, 0..4096));
        assert_eq!(covering_blocks(&(5000..5001)), (1, 4096..8192));
        assert_eq!(covering_blocks(&(4095..8193)), (0, 0..12288));
    }

    /// An image of `blocks` data blocks with its tree, served over HTTP (by a second URL
    /// first, a cache that damages blocks as `cache` says, if any), as the helper sees it.
    struct Served {
        image: Vec<u8>,
        data_len: u64,
        leaves: Arc<Leaves>,
        tree: Vec<u8>,
        sources: Vec<Source>,
        /// What the cache and the server did, in the order of `sources`.
        servers: Vec<Arc<ranges::TestServer>>,
    }

    fn served(blocks: usize, cache: Option<Damage>) -> Served {
        let data: Vec<u8> = (0..blocks * 4096).map(|i| (i * 31 % 255) as u8).collect();
        let salt = [3u8; 32];
        let (tree, root) = diskless_image::verity::tree(&data, &salt);
        let leaves = Leaves::check(&tree, blocks as u64, &salt, &root).unwrap();
        let image = [data.clone(), tree.clone()].concat();
        let (mut sources, mut servers) = (Vec::new(), Vec::new());
        for damage in cache.into_iter().chain([Damage::Nothing]) {
            let (url, seen) = ranges::test_server(image.clone(), 0, damage);
            sources.push(Source::parse(&url).unwrap());
            servers.push(seen);
        }
        Served {
            image,
            data_len: data.len() as u64,
            leaves: Arc::new(leaves),
            tree,
            sources,
            servers,
        }
    }

    /// Send `request` on the kernel's end and read the reply (and `len` bytes of data).
    fn ask(kernel: &mut UnixStream, request: nbd::Request, len: usize) -> (u32, Vec<u8>) {
        let mut buf = [0u8; nbd::REQUEST_LEN];
        request.emit(&mut buf);
        kernel.write_all(&buf).unwrap();
        let mut reply = [0u8; nbd::REPLY_LEN];
        kernel.read_exact(&mut reply).unwrap();
        assert_eq!(reply[8..16], request.handle);
        let error = u32::from_be_bytes(reply[4..8].try_into().unwrap());
        let mut data = vec![0u8; if error == 0 { len } else { 0 }];
        kernel.read_exact(&mut data).unwrap();
        (error, data)
    }

    fn read(offset: u64, length: u32, handle: u8) -> nbd::Request {
        nbd::Request {
            command: nbd::Command::Read,
            handle: [handle; 8],
            offset,
            length,
        }
    }

    /// Reads as the kernel sends them, answered from `blocks` until the disconnect.
    fn reads_are_answered(blocks: Arc<dyn Blocks>, s: &Served) {
        let size = s.image.len() as u64;
        let (mut kernel, server_end) = UnixStream::pair().unwrap();
        let server = std::thread::spawn(move || answer(server_end, &*blocks, size));
        let at = |offset: u64, len: usize| s.image[offset as usize..offset as usize + len].to_vec();
        assert_eq!(ask(&mut kernel, read(0, 4096, 1), 4096), (0, at(0, 4096)));
        // Not block-aligned (512-byte sectors), across chunks, and into the tree.
        assert_eq!(
            ask(&mut kernel, read(262_144 - 512, 1024, 2), 1024),
            (0, at(262_144 - 512, 1024))
        );
        let tail = s.data_len - 512;
        assert_eq!(
            ask(&mut kernel, read(tail, 4608, 3), 4608),
            (0, at(tail, 4608))
        );
        let write = nbd::Request {
            command: nbd::Command::Write,
            ..read(0, 0, 4)
        };
        assert_eq!(ask(&mut kernel, write, 0), (nbd::EPERM, vec![]));
        assert_eq!(
            ask(&mut kernel, read(size, 512, 5), 512),
            (nbd::EINVAL, vec![])
        );
        let mut buf = [0u8; nbd::REQUEST_LEN];
        nbd::Request {
            command: nbd::Command::Disconnect,
            ..read(0, 0, 6)
        }
        .emit(&mut buf);
        kernel.write_all(&buf).unwrap();
        server.join().unwrap().unwrap();
    }

    #[test]
    fn network_reads_come_checked_from_the_next_url_when_one_is_corrupt() {
        let s = served(300, Some(Damage::EveryAnswer));
        let direct = Arc::new(Direct {
            ranges: Mutex::new(Ranges::new(s.sources.clone())),
            leaves: s.leaves.clone(),
            tree: s.tree.clone(),
            data_len: s.data_len,
        });
        reads_are_answered(direct, &s);
    }

    #[test]
    fn the_ram_copy_answers_demands_and_fills_whole() {
        let s = served(300, Some(Damage::EveryAnswer));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("root.squashfs");
        let copy =
            Arc::new(RamCopy::create(&path, s.image.len() as u64, s.data_len, &s.tree).unwrap());
        let workers = start_workers(&copy, &s.leaves, &s.sources, &ALL_ROLES);
        reads_are_answered(copy.clone(), &s);
        for w in workers {
            w.join().unwrap();
        }
        assert!(copy.plan.lock().unwrap().is_whole());
        assert_eq!(std::fs::read(&path).unwrap(), s.image);
    }

    /// Issue 25, item 5: a cache listed first sends a few damaged blocks (a broken disk
    /// under it). Each answer that holds one is refused and asked of the next URL at once
    /// (no round of waiting), the kernel's reads get the image's bytes only, and the copy
    /// keeps none of the damaged ones. Every damaged block the cache sent is counted.
    #[test]
    fn a_refused_block_is_fetched_again_from_the_next_url_and_never_read() {
        use std::sync::atomic::Ordering::SeqCst;
        // Blocks in chunks 0, 1 and 4 (64 blocks a chunk); two in chunk 1.
        let damaged = vec![0, 70, 100, 299];
        let s = served(300, Some(Damage::Blocks(damaged)));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("root.squashfs");
        let copy =
            Arc::new(RamCopy::create(&path, s.image.len() as u64, s.data_len, &s.tree).unwrap());
        let workers = start_workers(&copy, &s.leaves, &s.sources, &ALL_ROLES);
        // Reads of damaged blocks among them (0, and 299 in the last chunk).
        reads_are_answered(copy.clone(), &s);
        let mut tally = Tally::default();
        for w in workers {
            tally.add(&w.join().unwrap());
        }
        assert_eq!(std::fs::read(&path).unwrap(), s.image);
        let [cache, server] = &s.servers[..] else {
            unreachable!()
        };
        // Whoever fetched chunk 0 asked the cache first: at least block 0 came damaged.
        let sent_damaged = cache.damaged_blocks.load(SeqCst);
        assert!(sent_damaged >= 1);
        assert_eq!(tally.refused, [sent_damaged, 0]);
        assert_eq!(tally.waits, 0, "a refused block waited for a round");
        assert!(server.answers.load(SeqCst) > 0);

        // The same through `network`'s direct reads: the kernel's reads of damaged blocks.
        let s = served(300, Some(Damage::Blocks(vec![0, 299])));
        let direct = Arc::new(Direct {
            ranges: Mutex::new(Ranges::new(s.sources.clone())),
            leaves: s.leaves.clone(),
            tree: s.tree.clone(),
            data_len: s.data_len,
        });
        reads_are_answered(direct.clone(), &s);
        let tally = direct.ranges.lock().unwrap().tally.clone();
        assert_eq!(
            tally.refused,
            [1, 0],
            "block 0 from the cache, then the server"
        );
        assert_eq!(tally.waits, 0);
    }

    #[test]
    fn the_filled_detail_parses_back() {
        let tally = Tally {
            received: 180,
            refused: vec![3, 0, 1],
            waits: 2,
        };
        let text = filled_detail(41.44, 170, &tally, 20);
        assert_eq!(
            text,
            "seconds=41.4 bytes=170 fetched=180 demanded=20 refused=4"
        );
        let parsed = diskless_boot::FilledDetail::parse(&text).unwrap();
        assert_eq!(
            (
                parsed.bytes,
                parsed.fetched,
                parsed.demanded,
                parsed.refused
            ),
            (170, 180, 20, 4)
        );
        assert!((parsed.seconds - 41.4).abs() < 1e-9);
    }

    #[test]
    fn hex_decodes() {
        assert_eq!(hex_bytes("0aFF").unwrap(), vec![10, 255]);
        assert!(hex_bytes("0g").is_err());
    }
}
