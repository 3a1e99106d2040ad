//! `diskless vm`: try an image as a real workstation would boot it, without hardware.
//!
//! [`run`] makes a private network namespace with a tap device ([`netns`]), starts the boot
//! server in it as a child process, PXE-boots a QEMU client on the tap ([`qemu`]), follows the
//! client's serial console ([`console`]) until it reaches multi-user, optionally runs commands
//! in it, and removes the namespace, the tap and every process it started, whatever happens
//! (Ctrl-C included).
//!
//! The same harness tries a lab's conditions: several clients on one bridge
//! ([`VmConfig::clients`], each followed on its own thread), a site DHCP server beside ours
//! (dnsmasq, [`VmConfig::site_dhcp`], for proxy mode), a lossy network
//! ([`VmConfig::loss_percent`], nftables in the namespace) and a server killed and restarted
//! in the middle of the image download ([`VmConfig::restart_server_during_fetch`]).
//!
//! The server may also be one already running in a namespace the caller made
//! ([`Server::Running`], [`run_in`]): the package test boots a client from the installed
//! `diskless.service`, in a container joined to the namespace.

pub mod console;
pub mod netns;
pub mod qemu;
pub mod qmp;

use console::Console;
use diskless_boot::config::AddressRange;
use diskless_boot::{Mac, Mode, Stage};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub use qemu::Firmware;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("{0}")]
    Setup(String),
    #[error("timed out {0}")]
    Timeout(String),
    #[error("the client stopped (QEMU exited)")]
    ClientStopped,
    #[error("interrupted")]
    Interrupted,
    #[error("the client failed to boot: {0}")]
    BootFailed(String),
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Has Ctrl-C (SIGINT) or SIGTERM arrived?
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Turn SIGINT and SIGTERM into [`Error::Interrupted`], so cleanup runs.
pub fn catch_signals() {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
}

/// A child process that is stopped when dropped: SIGTERM, then SIGKILL after 3 s.
pub struct Guarded {
    pub name: &'static str,
    pub child: Child,
}

impl Drop for Guarded {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // SAFETY: signalling our own child by pid.
            unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(3);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// One QEMU client on its own tap.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub mac: Mac,
    pub tap: String,
    pub memory_mib: u32,
    pub cpus: u32,
    pub firmware: Firmware,
    /// Raw disk images attached as virtio disks (a local image source, a persistent layer).
    pub disks: Vec<PathBuf>,
    /// A VGA display (for desktop images), read with [`VmConfig::screendumps`].
    pub display: bool,
    /// Its port drops multicast: every UDP datagram to 224.0.0.0/4 leaving for its tap is
    /// dropped ([`netns::block_multicast`]), as on a switch port that does not carry the
    /// group. Its fetch helper hears nothing and falls back to HTTP.
    pub block_multicast: bool,
    /// Its port's rate towards it (`tc`'s units, e.g. `2mbit`: a tbf on its tap) once its
    /// image download starts (its boot files come at full speed): a slow link for the image,
    /// e.g. to keep a lazy seat's fill under way at multi-user. Over the rate of
    /// [`VmConfig::restart_server_during_fetch`] for its tap.
    pub rate_limit: Option<String>,
    /// Once at multi-user it is powered off from its console (`systemctl poweroff`, see
    /// [`power_off`]) instead of running [`VmConfig::commands`].
    pub power_off: bool,
}

/// The site's own DHCP server (dnsmasq), for trying proxy mode: it hands out the addresses,
/// our server only answers the boot questions.
#[derive(Debug, Clone)]
pub struct SiteDhcp {
    /// Its pool.
    pub range: AddressRange,
}

/// Who answers the clients.
#[derive(Debug, Clone)]
pub enum Server {
    /// This command (`diskless serve --interface IF ...`), started inside the namespace and
    /// stopped at the end.
    Command(Vec<String>),
    /// A server already running in the namespace (a service in a container joined to it):
    /// only its HTTP port is waited for.
    Running,
}

#[derive(Debug, Clone)]
pub struct VmConfig {
    pub server: Server,
    pub namespace: String,
    /// The server's interface: the tap itself with one client, a bridge of the taps with more.
    pub interface: String,
    /// The server's address on `interface`, CIDR.
    pub server_cidr: String,
    pub http_port: u16,
    /// The server's TFTP port: requests to it are counted ([`VmReport::tftp_requests`]).
    pub tftp_port: u16,
    /// The clients, booted together; each gets its own console log.
    pub clients: Vec<ClientConfig>,
    pub timeout: Duration,
    /// Commands to run on every client once it reached multi-user.
    pub commands: Vec<String>,
    /// Show the first client's console on our stdout.
    pub show_console: bool,
    /// Console and server logs go here.
    pub log_dir: PathBuf,
    /// Run dnsmasq beside the server as the site's DHCP server (the server runs in proxy mode).
    pub site_dhcp: Option<SiteDhcp>,
    /// Drop this percentage of the packets arriving on `interface`, at random (nftables).
    pub loss_percent: u8,
    /// Kill the server once the first client's image download is under way (with
    /// diskless.fetch=lazy: once the root is served from the network, while the RAM copy
    /// fills) and start it again after this pause: the fetch helper has to resume.
    pub restart_server_during_fetch: Option<Duration>,
    /// Once the commands ran, save the first client's display to these files (PNG for
    /// `.png`, else PPM); the client needs [`ClientConfig::display`].
    pub screendumps: Vec<PathBuf>,
    /// The server's admin listener: once every client is done, and before the server stops,
    /// its `/metrics` is saved as `metrics.txt` in the log directory (the server's own
    /// counters of the run: bytes sent by HTTP and multicast, ...).
    pub metrics: Option<SocketAddr>,
}

/// A command run on a client once it was up.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandResult {
    pub command: String,
    /// Its stdout and stderr.
    pub output: String,
    pub status: i32,
}

/// A phase of a boot seen on the console.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Phase {
    /// `kernel`, a [`Stage`]'s label, `server-restarted`, or [`POWERED_OFF`].
    pub phase: String,
    /// Seconds since the client's QEMU started.
    pub seconds: f64,
}

/// What one client did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClientReport {
    pub mac: Mac,
    /// In order.
    pub phases: Vec<Phase>,
    pub commands: Vec<CommandResult>,
}

impl ClientReport {
    pub fn seconds_to(&self, phase: &str) -> Option<f64> {
        self.phases
            .iter()
            .find(|p| p.phase == phase)
            .map(|p| p.seconds)
    }

    /// The output and exit status of `command`, if it ran.
    pub fn command(&self, command: &str) -> Option<&CommandResult> {
        self.commands.iter().find(|c| c.command == command)
    }
}

/// A whole `diskless vm` run as `--report` writes it (JSON), and as the tests and
/// scripts/bench-boot read it back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// The image booted, and its version.
    pub image: String,
    pub version: String,
    pub firmware: Firmware,
    pub mode: Mode,
    /// Read requests to the server's TFTP port (an nftables counter): 0, nothing went over
    /// TFTP.
    pub tftp_requests: u64,
    /// One per client, in the order of their MACs on the command line.
    pub clients: Vec<ClientReport>,
}

impl Report {
    /// The first client's part (the only one, unless several were booted).
    pub fn first(&self) -> &ClientReport {
        &self.clients[0]
    }
}

#[derive(Debug, Clone, Default)]
pub struct VmReport {
    /// One per client, in the order of [`VmConfig::clients`].
    pub clients: Vec<ClientReport>,
    /// TFTP read requests the server's interface received during the run (an nftables
    /// counter on UDP port [`VmConfig::tftp_port`]): 0 means nothing went over TFTP.
    pub tftp_requests: u64,
}

/// Console lines that mark boot phases, in the order they appear; any one of a phase's
/// markers will do. A phase that is a boot stage the server records has the stage's name
/// ([`Stage`]): `fetching` here and in clients.json are the same moment, seen from the console
/// and from the report.
/// `reference:` lines are the reference chain's of scripts/bench-boot (busybox wget, no
/// sha256), booted by `diskless vm --server-command`.
const PHASES: &[(&str, &[&str])] = &[
    ("kernel", &["Linux version"]),
    // The fetch helper's first line: `fetching URL` by HTTP, or, with `diskless.multicast=`,
    // `joined multicast session` (a seat the session reaches prints no `fetching` line).
    (
        Stage::Fetching.label(),
        &[
            "diskless: fetching",
            MULTICAST_JOINED,
            "reference: fetching",
        ],
    ),
    (
        Stage::Fetched.label(),
        // The fetch helper's last line: `sha256 verified`, or for an image with a hash tree
        // `each block to be verified by dm-verity as it is read`; with diskless.fetch=lazy or
        // network nothing is fetched before the root is mounted: the boot script's line that
        // the helper serves the root ends the phase.
        &[
            "sha256 verified",
            "verified by dm-verity as it is read",
            SERVED_FROM_THE_NETWORK,
            "reference: fetched",
        ],
    ),
    (
        Stage::RootMounted.label(),
        &[
            "diskless: root is an overlay",
            "reference: root is an overlay",
        ],
    ),
    // Ours is printed by a unit the boot script adds, ordered after multi-user.target:
    // systemd's own "Reached target Multi-User System" stops appearing once a getty holds the
    // console, which happens before multi-user when a unit is slow. systemd's line still
    // counts, for images made before ours existed.
    (
        Stage::MultiUser.label(),
        &[
            "diskless: reached multi-user",
            "reference: reached multi-user",
            SYSTEMD_REACHED,
        ],
    ),
];

/// The fetch helper's line once it joined the image's multicast session
/// (crates/fetch/src/multicast.rs).
const MULTICAST_JOINED: &str = "diskless: joined multicast session";

/// systemd's status line for every target it reaches; the rest of the line names it.
const SYSTEMD_REACHED: &str = "Reached target";

/// Console lines that mean the boot failed.
const FAILURES: &[&str] = &[
    "Failure: diskless:",
    "Kernel panic",
    "(initramfs)",
    "diskless-fetch: ",
    // The boot script's units, once the root is mounted: emergency mode, or no multi-user in
    // time (initramfs-tools/scripts/diskless, diskless_watch_boot).
    "diskless: boot failed: ",
    // OVMF with Secure Boot refusing an unsigned binary (Debian's ipxe.efi): `BdsDxe: failed
    // to load Boot0001 "UEFI PXEv4 (MAC:...)" from ...: Access Denied`. It would go on to
    // IPv6 PXE and stall; the line says it all.
    "): Access Denied",
];

/// A progress line of the fetch helper ("diskless:  11.9% 22.9 MiB of 192.0 MiB at 23.9
/// MB/s, 7 s left"): the download is under way.
const FETCH_PROGRESS: &str = " MiB at ";

/// The boot script's line once the fetch helper serves the root (diskless.fetch=lazy or
/// network): with lazy the RAM copy is filling from then on (its progress lines, which
/// match [`FETCH_PROGRESS`] too, come later), so a restart of the server then happens
/// mid-fill.
const SERVED_FROM_THE_NETWORK: &str = "the root is served from the network";

/// Said (console log and stderr) when a client whose kernel crashed before the boot script
/// ran is powered on once more.
const POWERED_ON_AGAIN: &str =
    "the kernel crashed before the boot script ran: powering the client on once more";

/// Whether the console shows the kernel crashing (a panic or an oops) before the boot script
/// said anything (no `diskless:` line yet): nothing of ours had run, so the boot says nothing
/// about the image or the server, and [`run_in`] powers the client on once more (once). Seen
/// under QEMU TCG with Debian 13's 6.12, two clients in some hundred boots, both in the
/// kernel's own start: "Fatal exception in interrupt" 4.8 s in (CI, 2026-12-07) and "Oops:
/// int3" 3.4 s in (a lazy.rs run); the same tests then passed again and again.
pub fn kernel_crashed_before_the_boot_script(console: &str) -> bool {
    let crash = ["Kernel panic", "Oops: "]
        .iter()
        .filter_map(|marker| console.find(marker))
        .min();
    let Some(crash) = crash else {
        return false;
    };
    !console[..crash]
        .lines()
        .any(|l| l.starts_with("diskless:") || l.contains(": diskless:"))
}

/// The name of client `index`'s console log.
pub fn console_log_name(cfg: &VmConfig, index: usize) -> String {
    if cfg.clients.len() == 1 {
        "console.log".into()
    } else {
        format!("console-{}.log", cfg.clients[index].mac.hyphenated())
    }
}

/// The QMP socket of client `index` (clients with a display only).
fn qmp_socket(cfg: &VmConfig, index: usize) -> PathBuf {
    cfg.log_dir
        .join(format!("qmp-{}.sock", cfg.clients[index].mac.hyphenated()))
}

fn save_screendumps(cfg: &VmConfig, index: usize) -> Result<(), Error> {
    if cfg.screendumps.is_empty() {
        return Ok(());
    }
    if !cfg.clients[index].display {
        return Err(Error::Setup(
            "a screendump needs a client with a display".into(),
        ));
    }
    let socket = qmp_socket(cfg, index);
    for file in &cfg.screendumps {
        let file = std::path::absolute(file)
            .map_err(|e| Error::Setup(format!("{}: {e}", file.display())))?;
        qmp::screendump(&socket, &file).map_err(Error::Setup)?;
    }
    Ok(())
}

/// Make the namespace, boot the clients in it ([`run_in`]), remove the namespace.
pub fn run(cfg: &VmConfig) -> Result<VmReport, Error> {
    let ns = netns::Netns::create(&cfg.namespace, &cfg.interface, &taps(cfg), &cfg.server_cidr)?;
    run_in(cfg, &ns)
}

/// The link's rate when the server is restarted during the download (`tc`'s units).
const RESTART_TEST_RATE: &str = "40mbit";

/// The tap of each client, in order.
pub fn taps(cfg: &VmConfig) -> Vec<String> {
    cfg.clients.iter().map(|c| c.tap.clone()).collect()
}

/// Boot the clients in `ns`, made by the caller with [`netns::Netns::create`] from
/// `cfg.namespace`, `cfg.interface`, [`taps`] and `cfg.server_cidr`; the calling thread
/// enters it. Every process started here is stopped before it returns; the namespace stays
/// the caller's to remove.
pub fn run_in(cfg: &VmConfig, ns: &netns::Netns) -> Result<VmReport, Error> {
    if cfg.clients.is_empty() {
        return Err(Error::Setup("no client to boot".into()));
    }
    if matches!(cfg.server, Server::Running) && cfg.restart_server_during_fetch.is_some() {
        return Err(Error::Setup(
            "a server this harness did not start cannot be restarted by it".into(),
        ));
    }
    std::fs::create_dir_all(&cfg.log_dir)
        .map_err(|e| Error::Setup(format!("creating {}: {e}", cfg.log_dir.display())))?;
    ns.enter()?;
    if cfg.loss_percent > 0 {
        netns::drop_at_random(&cfg.interface, cfg.loss_percent)?;
    }
    netns::count_tftp_requests(&cfg.interface, cfg.tftp_port)?;
    for client in cfg.clients.iter().filter(|c| c.block_multicast) {
        netns::block_multicast(&client.tap)?;
    }
    if cfg.restart_server_during_fetch.is_some() {
        // 162 MiB at 40 Mbit/s: about 34 s, time for the harness to stop and restart the
        // server while the image is still coming.
        for tap in taps(cfg) {
            netns::limit_rate(&tap, RESTART_TEST_RATE)?;
        }
    }
    let server_ip = cfg
        .server_cidr
        .split('/')
        .next()
        .unwrap_or_default()
        .to_string();

    let site_dhcp = match &cfg.site_dhcp {
        Some(site) => Some(start_dnsmasq(cfg, site)?),
        None => None,
    };
    let server_log = cfg.log_dir.join("server.log");
    let mut server = match &cfg.server {
        Server::Command(command) => Some(start_server(command, &server_log)?),
        Server::Running => None,
    };
    wait_for_http(server.as_mut(), &server_ip, cfg.http_port, &server_log)?;
    let server = Mutex::new(server);

    let mut qemus = Vec::new();
    let mut consoles = Vec::new();
    for (index, client) in cfg.clients.iter().enumerate() {
        let (qemu, console, started) = start_client(cfg, index, client, false)?;
        qemus.push(qemu);
        consoles.push((console, started));
    }

    let deadline = Instant::now() + cfg.timeout;
    let restart = || -> Result<(), Error> {
        let pause = cfg.restart_server_during_fetch.unwrap_or_default();
        let Server::Command(command) = &cfg.server else {
            return Err(Error::Setup("no server command to restart".into()));
        };
        let mut guard = server.lock().expect("server lock");
        if let Some(running) = guard.as_mut() {
            // SIGKILL, as a crash or a power cut: no graceful end of the transfer under way.
            let _ = running.child.kill();
            let _ = running.child.wait();
        }
        std::thread::sleep(pause);
        *guard = Some(start_server(command, &server_log)?);
        wait_for_http(guard.as_mut(), &server_ip, cfg.http_port, &server_log)
    };
    let outcomes: Vec<Outcome> = std::thread::scope(|scope| {
        let handles: Vec<_> = consoles
            .into_iter()
            .zip(qemus)
            .zip(&cfg.clients)
            .enumerate()
            .map(|(index, (((mut console, mut started), qemu), client))| {
                let restart = &restart;
                let restart_hook: Option<&(dyn Fn() -> Result<(), Error> + Sync)> =
                    (index == 0 && cfg.restart_server_during_fetch.is_some()).then_some(restart);
                let slow = |rate: &String| netns::limit_rate(&client.tap, rate);
                scope.spawn(move || {
                    let limit = || client.rate_limit.as_ref().map_or(Ok(()), slow);
                    let hooks = OnFetching {
                        restart: restart_hook,
                        limit_rate: client.rate_limit.is_some().then_some(&limit),
                    };
                    // Nothing to run: no wait for the download's progress either.
                    let hook =
                        (hooks.restart.is_some() || hooks.limit_rate.is_some()).then_some(&hooks);
                    let mut qemu = Some(qemu);
                    let mut report = ClientReport {
                        mac: client.mac,
                        phases: Vec::new(),
                        commands: Vec::new(),
                    };
                    let mut result = follow_boot(
                        &mut console,
                        started,
                        deadline,
                        cfg.timeout,
                        hook,
                        &mut report,
                    );
                    if matches!(result, Err(Error::BootFailed(_) | Error::ClientStopped))
                        && kernel_crashed_before_the_boot_script(&console.text_from(0))
                    {
                        eprintln!(
                            "diskless: client {}: {POWERED_ON_AGAIN} (its console log keeps the \
                             crash)",
                            client.mac
                        );
                        // The crashed QEMU stops before its successor starts.
                        qemu = None;
                        result = match start_client(cfg, index, client, true) {
                            Ok((again, new_console, new_started)) => {
                                qemu = Some(again);
                                console = new_console;
                                started = new_started;
                                report.phases.clear();
                                follow_boot(
                                    &mut console,
                                    started,
                                    deadline,
                                    cfg.timeout,
                                    hook,
                                    &mut report,
                                )
                            }
                            Err(e) => Err(e),
                        };
                    }
                    let result = result
                        .and_then(|()| {
                            if client.power_off {
                                return power_off(&mut console, started, deadline, &mut report);
                            }
                            run_commands(&mut console, &cfg.commands, deadline, &mut report)
                        })
                        .and_then(|()| {
                            if index > 0 {
                                return Ok(());
                            }
                            save_screendumps(cfg, index)
                        });
                    (result, report, console, qemu)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("client thread"))
            .collect()
    });
    // Stop the clients first, then the servers; the namespace goes last (the caller's).
    let mut qemu_errors = Vec::new();
    let outcomes: Vec<_> = outcomes
        .into_iter()
        .map(|(result, report, console, qemu)| {
            let errors = qemu.map(|(guard, errors)| {
                drop(guard);
                errors.join().unwrap_or_default()
            });
            qemu_errors.push(errors.unwrap_or_default());
            (result, report, console)
        })
        .collect();
    let metrics = cfg
        .metrics
        .map(|admin| save_metrics(admin, &cfg.log_dir.join(METRICS_FILE)));
    drop(server);
    drop(site_dhcp);
    let tftp_requests = netns::tftp_requests();
    if cfg.loss_percent > 0 {
        // The drop counters, as evidence that the loss was real.
        let _ = netns::save_loss_counters(&cfg.log_dir.join("loss.txt"));
    }
    if let Some(Err(e)) = metrics {
        // After the clients' own outcome: a boot that failed says why first.
        if outcomes.iter().all(|(result, _, _)| result.is_ok()) {
            return Err(e);
        }
    }
    let many = cfg.clients.len() > 1;
    let mut report = VmReport {
        tftp_requests: tftp_requests?,
        ..VmReport::default()
    };
    for ((result, client_report, console), qemu_stderr) in outcomes.into_iter().zip(qemu_errors) {
        let who = |e: Error| -> Error {
            if !many {
                return e;
            }
            match e {
                Error::BootFailed(m) => {
                    Error::BootFailed(format!("client {}: {m}", client_report.mac))
                }
                Error::Timeout(m) => Error::Timeout(format!("{m} (client {})", client_report.mac)),
                e => e,
            }
        };
        match result {
            Err(Error::ClientStopped) => {
                return Err(who(Error::BootFailed(format!(
                    "QEMU exited before multi-user.\n{}\n{}",
                    qemu_stderr.trim(),
                    console.tail(15)
                ))))
            }
            Err(e) => return Err(who(e)),
            Ok(()) => report.clients.push(client_report),
        }
    }
    Ok(report)
}

/// A client's QEMU: the process (stopped on drop) and the thread reading its stderr.
type Qemu = (Guarded, std::thread::JoinHandle<String>);

/// How a client's boot ended, its report, its console and its QEMU (none when powering it on
/// once more failed).
type Outcome = (Result<(), Error>, ClientReport, Console, Option<Qemu>);

/// Start client `index`'s QEMU and follow its serial console into its console log (`again`:
/// it is powered on once more after a crash, and the log goes on).
fn start_client(
    cfg: &VmConfig,
    index: usize,
    client: &ClientConfig,
    again: bool,
) -> Result<(Qemu, Console, Instant), Error> {
    let vars = cfg
        .log_dir
        .join(format!("OVMF_VARS-{}.fd", client.mac.hyphenated()));
    // Each client gets its own copy of the variable store: the firmware writes its boot
    // options there, and the one in /usr/share stays as Debian shipped it.
    if let Some(template) = client.firmware.ovmf_vars_template() {
        std::fs::copy(template, &vars)
            .map_err(|e| Error::Setup(format!("copying {template}: {e} (install ovmf)")))?;
    }
    let qemu_cfg = qemu::QemuConfig {
        memory_mib: client.memory_mib,
        cpus: client.cpus,
        firmware: client.firmware,
        tap: client.tap.clone(),
        mac: client.mac,
        ovmf_vars: client.firmware.is_uefi().then_some(vars),
        disks: client.disks.clone(),
        display: client.display,
        qmp: client.display.then(|| qmp_socket(cfg, index)),
    };
    let started = Instant::now();
    let mut child = qemu::command(&qemu_cfg)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            Error::Setup(format!(
                "starting qemu-system-x86_64: {e} (install qemu-system-x86)"
            ))
        })?;
    let stdout = child.stdout.take().expect("piped");
    let stdin = child.stdin.take().expect("piped");
    let stderr = child.stderr.take().expect("piped");
    let errors = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut { stderr }, &mut text);
        text
    });
    let console_log = cfg.log_dir.join(console_log_name(cfg, index));
    // Powered on again: the log goes on after the crash, which stays as the evidence.
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .append(again)
        .truncate(!again)
        .open(&console_log)
        .map_err(|e| Error::Setup(format!("{}: {e}", console_log.display())))?;
    if again {
        let _ = writeln!(log, "\n{POWERED_ON_AGAIN}");
    }
    let mut echo: Vec<Box<dyn Write + Send>> = vec![Box::new(log)];
    if cfg.show_console && index == 0 {
        echo.push(Box::new(std::io::stdout()));
    }
    let qemu = (
        Guarded {
            name: "qemu",
            child,
        },
        errors,
    );
    Ok((qemu, Console::start(stdout, stdin, echo), started))
}

/// What runs once a client's image download shows progress, or its fetch helper serves the
/// root from the network (lazy, network).
struct OnFetching<'a> {
    /// Kill and restart the server (adds the phase `server-restarted`).
    restart: Option<&'a (dyn Fn() -> Result<(), Error> + Sync)>,
    /// Limit the rate of the client's port ([`ClientConfig::rate_limit`]).
    limit_rate: Option<&'a dyn Fn() -> Result<(), Error>>,
}

/// Follow one client's console through [`PHASES`] to multi-user, or to a failure marker;
/// `on_fetching` runs as it says.
fn follow_boot(
    console: &mut Console,
    started: Instant,
    deadline: Instant,
    timeout: Duration,
    on_fetching: Option<&OnFetching>,
    report: &mut ClientReport,
) -> Result<(), Error> {
    let mut from = 0;
    let mut next_phase = 0;
    loop {
        let mut patterns: Vec<&str> = FAILURES.to_vec();
        let Some((phase, markers)) = PHASES.get(next_phase) else {
            return Ok(());
        };
        patterns.extend_from_slice(markers);
        match console.wait_for(&patterns, from, deadline) {
            Ok((i, end)) if i < FAILURES.len() => {
                // Let the whole story arrive: the helper's last error comes before the boot
                // script's "Failure:" line, and the panic ends with a reboot (QEMU exits).
                let soon = (Instant::now() + Duration::from_secs(8)).min(deadline);
                let _ = console.wait_for(&["Rebooting", "reboot: "], end, soon);
                return Err(Error::BootFailed(console.tail(15)));
            }
            Ok((i, end)) => {
                from = end;
                if patterns[i] == SYSTEMD_REACHED {
                    let (_, line_end) = console.wait_for(&["\n"], end, deadline)?;
                    let line = console.text_from(end);
                    if !reached_multi_user(&line[..(line_end - end).min(line.len())]) {
                        continue;
                    }
                }
                report.phases.push(Phase {
                    phase: phase.to_string(),
                    seconds: started.elapsed().as_secs_f64(),
                });
                next_phase += 1;
                if let (Some(hook), true) = (on_fetching, *phase == Stage::Fetching.label()) {
                    let mut progress = FAILURES.to_vec();
                    progress.extend_from_slice(&[FETCH_PROGRESS, SERVED_FROM_THE_NETWORK]);
                    if let Ok((i, _)) = console.wait_for(&progress, from, deadline) {
                        if i >= FAILURES.len() {
                            if let Some(limit) = hook.limit_rate {
                                limit()?;
                            }
                            if let Some(restart) = hook.restart {
                                restart()?;
                                report.phases.push(Phase {
                                    phase: "server-restarted".into(),
                                    seconds: started.elapsed().as_secs_f64(),
                                });
                            }
                        }
                    }
                }
            }
            Err(Error::Timeout(what)) => {
                let reached = report
                    .phases
                    .last()
                    .map(|p| p.phase.as_str())
                    .unwrap_or("nothing");
                let diagnosis = if reached == Stage::RootMounted.label() {
                    diagnose_stalled_boot(console)
                } else {
                    String::new()
                };
                return Err(Error::Timeout(format!(
                    "after {} s ({what}); last phase reached: {reached}{diagnosis}",
                    timeout.as_secs()
                )));
            }
            Err(e) => return Err(e),
        }
    }
}

/// What systemd still waits for on a client that mounted its root but never reached
/// multi-user: its pending jobs, and the kernel stack of every process stuck in the kernel.
/// Empty when no shell answers (the autologin getty starts before multi-user).
const STALL_DIAGNOSIS: &str = r#"systemctl list-jobs --no-pager;
show() { echo "$1 pid $2: $(tr '\0' ' ' < /proc/$2/cmdline) $(grep ^State /proc/$2/status) wchan=$(cat /proc/$2/wchan)"; cat /proc/$2/stack; };
systemctl list-jobs --no-legend | while read -r job unit type state; do
  [ "$state" = running ] || continue;
  for p in $(systemctl show -p MainPID -p ControlPID --value "$unit"); do
    [ "$p" -gt 0 ] || continue; show "== $unit" "$p";
    for c in $(cat /proc/$p/task/*/children); do show "   child" "$c"; done;
  done;
done;
for p in /proc/[0-9]*; do grep -q '^State:.D' $p/status 2>/dev/null && show "== stuck in the kernel," "${p#/proc/}"; done"#;

fn diagnose_stalled_boot(console: &mut Console) -> String {
    let soon = Instant::now() + Duration::from_secs(20);
    if console.wait_for_shell(soon).is_err() {
        return String::new();
    }
    match console.run(&STALL_DIAGNOSIS.replace('\n', " "), Duration::from_secs(30)) {
        Ok((text, _)) => format!("\nwhat the client was still doing:\n{}", text.trim_end()),
        Err(_) => String::new(),
    }
}

fn run_commands(
    console: &mut Console,
    commands: &[String],
    deadline: Instant,
    report: &mut ClientReport,
) -> Result<(), Error> {
    if commands.is_empty() {
        return Ok(());
    }
    console.wait_for_shell(deadline)?;
    for command in commands {
        let (output, status) = console.run(command, Duration::from_secs(120))?;
        report.commands.push(CommandResult {
            command: command.clone(),
            output,
            status,
        });
    }
    Ok(())
}

/// What [`power_off`] runs first, as a command of the client's report: the processes whose
/// argv[0] begins with '@' (root-storage daemons, systemd's ROOT_STORAGE_DAEMONS: a lazy
/// root's fetch helper), `PID ARGV`, and whether nbd0 serves a root; bash builtins only (with
/// a `tr` per /proc entry the list took over 60 s on a 2 Mbit/s seat under load).
pub const ROOT_STORAGE_DAEMONS: &str = "for p in /proc/[0-9]*; do \
     mapfile -d '' -t a 2>/dev/null < $p/cmdline || continue; \
     case ${a[0]} in @*) echo \"${p#/proc/} ${a[*]}\";; esac; \
     done; [ -e /sys/block/nbd0/pid ] && echo nbd0 connected || echo nbd0 disconnected";

/// The phase [`power_off`] adds once the client powered off.
pub const POWERED_OFF: &str = "powered-off";

/// The kernel's last line of a clean power-off.
pub const POWER_DOWN: &str = "reboot: Power down";

/// Power a client at multi-user off as a user would, from its shell: `systemctl poweroff`,
/// its kernel's messages back on the console (the shell turned them off: an I/O error at
/// shutdown must show), after [`ROOT_STORAGE_DAEMONS`] ran. Done when the kernel says
/// [`POWER_DOWN`] or QEMU exits (`-no-reboot`), which adds the phase [`POWERED_OFF`]; a
/// client still up at `deadline` is a timeout (a hung shutdown).
fn power_off(
    console: &mut Console,
    started: Instant,
    deadline: Instant,
    report: &mut ClientReport,
) -> Result<(), Error> {
    console.wait_for_shell(deadline)?;
    // Up to the run's deadline: on a slow port (--limit-rate) the seat may still be reading
    // its root for a while after multi-user (60 s were too few for 2 Mbit/s under load).
    let left = deadline.saturating_duration_since(Instant::now());
    let (output, status) = console.run(ROOT_STORAGE_DAEMONS, left)?;
    report.commands.push(CommandResult {
        command: ROOT_STORAGE_DAEMONS.into(),
        output,
        status,
    });
    let from = console.position();
    console.send("dmesg -n 7; systemctl poweroff\n")?;
    match console.wait_for(&[POWER_DOWN], from, deadline) {
        Ok(_) | Err(Error::ClientStopped) => {}
        Err(Error::Timeout(_)) => {
            return Err(Error::Timeout(format!(
                "powering the client off: still up\n{}",
                console.tail(15)
            )))
        }
        Err(e) => return Err(e),
    }
    report.phases.push(Phase {
        phase: POWERED_OFF.into(),
        seconds: started.elapsed().as_secs_f64(),
    });
    Ok(())
}

/// The file in the log directory where [`VmConfig::metrics`] saves the server's `/metrics`.
pub const METRICS_FILE: &str = "metrics.txt";

/// GET `/metrics` from the admin listener at `admin` (HTTP/1.0: the answer ends when the
/// server closes) and write its body to `path`.
fn save_metrics(admin: SocketAddr, path: &std::path::Path) -> Result<(), Error> {
    use std::io::Read;
    let failed = |e: std::io::Error| Error::Setup(format!("reading http://{admin}/metrics: {e}"));
    // An unspecified address (0.0.0.0) listens on loopback too; the Host header names the
    // listener's own address, which its Host check always accepts.
    let mut to = admin;
    if to.ip().is_unspecified() {
        to.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let mut stream = TcpStream::connect_timeout(&to, Duration::from_secs(5)).map_err(failed)?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(failed)?;
    write!(
        stream,
        "GET /metrics HTTP/1.0\r\nHost: {admin}\r\nConnection: close\r\n\r\n"
    )
    .map_err(failed)?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).map_err(failed)?;
    let text = String::from_utf8_lossy(&answer);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    if !head.starts_with("HTTP/1.") || head.split_whitespace().nth(1) != Some("200") {
        return Err(Error::Setup(format!(
            "http://{admin}/metrics answered: {}",
            head.lines().next().unwrap_or_default()
        )));
    }
    std::fs::write(path, body).map_err(|e| Error::Setup(format!("writing {}: {e}", path.display())))
}

/// Start the server command, its output appended to `log` (a restarted server keeps one log).
fn start_server(command: &[String], log: &std::path::Path) -> Result<Guarded, Error> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| Error::Setup(format!("opening {}: {e}", log.display())))?;
    let (program, args) = command
        .split_first()
        .ok_or_else(|| Error::Setup("no server command".into()))?;
    let child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(file.try_clone().map_err(|e| Error::Setup(e.to_string()))?)
        .stderr(file)
        .spawn()
        .map_err(|e| Error::Setup(format!("starting the server {program}: {e}")))?;
    Ok(Guarded {
        name: "server",
        child,
    })
}

/// dnsmasq as the site's DHCP server: addresses only (no DNS, no boot options), its leases
/// and log in the log directory.
fn start_dnsmasq(cfg: &VmConfig, site: &SiteDhcp) -> Result<Guarded, Error> {
    let log_path = cfg.log_dir.join("dnsmasq.log");
    let log = std::fs::File::create(&log_path)
        .map_err(|e| Error::Setup(format!("creating {}: {e}", log_path.display())))?;
    let args = dnsmasq_args(cfg, site);
    let child = Command::new("dnsmasq")
        .args(&args)
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(|e| Error::Setup(e.to_string()))?)
        .stderr(log)
        .spawn()
        .map_err(|e| Error::Setup(format!("starting dnsmasq: {e} (install dnsmasq-base)")))?;
    let mut guard = Guarded {
        name: "dnsmasq",
        child,
    };
    std::thread::sleep(Duration::from_millis(300));
    if let Ok(Some(status)) = guard.child.try_wait() {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        return Err(Error::Setup(format!(
            "dnsmasq {} exited ({status}):\n{}",
            args.join(" "),
            text.trim()
        )));
    }
    Ok(guard)
}

fn dnsmasq_args(cfg: &VmConfig, site: &SiteDhcp) -> Vec<String> {
    vec![
        "--no-daemon".into(),
        "--conf-file=/dev/null".into(),
        // No DNS: only the DHCP server of a site network is needed.
        "--port=0".into(),
        format!("--interface={}", cfg.interface),
        // Bound to the interface, beside our server's own port-67 socket.
        "--bind-interfaces".into(),
        format!("--dhcp-range={},{},1h", site.range.first, site.range.last),
        format!(
            "--dhcp-leasefile={}",
            cfg.log_dir.join("dnsmasq.leases").display()
        ),
        "--pid-file=".into(),
        "--user=root".into(),
        "--log-facility=-".into(),
        "--log-dhcp".into(),
    ]
}

/// The rest of a "Reached target" line names the multi-user target.
fn reached_multi_user(rest_of_line: &str) -> bool {
    rest_of_line.contains("multi-user.target") || rest_of_line.contains("Multi-User System")
}

/// Wait until the server answers HTTP; fail early, with its log, if it is ours and exits.
fn wait_for_http(
    mut server: Option<&mut Guarded>,
    ip: &str,
    port: u16,
    log: &std::path::Path,
) -> Result<(), Error> {
    let addr: SocketAddr = format!("{ip}:{port}")
        .parse()
        .map_err(|_| Error::Setup(format!("bad server address {ip}:{port}")))?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if let Some(Ok(Some(status))) = server.as_mut().map(|s| s.child.try_wait()) {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            return Err(Error::Setup(format!(
                "the server exited ({status}):\n{}",
                text.trim()
            )));
        }
        if interrupted() {
            return Err(Error::Interrupted);
        }
        if Instant::now() > deadline {
            return Err(Error::Timeout(format!("waiting for the server on {addr}")));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_after_the_kernel_are_the_stages_of_the_same_name() {
        assert_eq!(PHASES[0].0, "kernel");
        for (phase, _) in &PHASES[1..] {
            let stage = Stage::parse(phase).unwrap();
            assert!(!matches!(stage, Stage::Other(_)), "{phase} is no stage");
        }
    }

    #[test]
    fn a_kernel_crash_before_the_boot_script_is_told_from_a_failed_boot() {
        let early = "[    3.4] Oops: int3: 0000 [#1] PREEMPT SMP NOPTI\n\
                     [    4.7] Kernel panic - not syncing: Fatal exception in interrupt\n";
        assert!(kernel_crashed_before_the_boot_script(early));
        let ours = "Begin: Running /scripts/local-top ... done.\n\
                    diskless: fetching http://10.77.0.1/root.squashfs (attempt 1 of 4)\n\
                    Failure: diskless: the image could not be fetched\n\
                    [   20.1] Kernel panic - not syncing: Attempted to kill init!\n";
        assert!(!kernel_crashed_before_the_boot_script(ours));
        assert!(!kernel_crashed_before_the_boot_script(
            "[    1.0] Linux version 6.12\nReached target multi-user.target\n"
        ));
    }

    #[test]
    fn multi_user_is_recognised_in_both_spellings() {
        assert!(reached_multi_user(
            " multi-user.target - Multi-User System.\r\n"
        ));
        assert!(reached_multi_user(" Multi-User System.\r\n"));
        assert!(!reached_multi_user(" basic.target - Basic System.\r\n"));
    }

    #[test]
    fn the_reference_chain_prints_a_marker_of_every_phase_after_the_kernel() {
        let script = include_str!("../../../scripts/reference-boot");
        for (phase, markers) in &PHASES[1..] {
            assert!(
                markers
                    .iter()
                    .any(|m| m.starts_with("reference: ") && script.contains(m)),
                "scripts/reference-boot prints no marker of {phase}: {markers:?}"
            );
        }
    }

    /// A seat that gets its image by multicast prints no `fetching` line: the helper's join
    /// line starts the phase (without it the vm waited for `fetching` until its timeout).
    #[test]
    fn the_fetch_helper_prints_the_multicast_marker() {
        let helper = include_str!("../../fetch/src/multicast.rs");
        let printed = MULTICAST_JOINED.strip_prefix("diskless: ").unwrap();
        assert!(
            helper.contains(&format!("\"diskless: {printed} ")),
            "crates/fetch/src/multicast.rs no longer prints {MULTICAST_JOINED:?}"
        );
        let fetching = PHASES
            .iter()
            .find(|(phase, _)| *phase == Stage::Fetching.label())
            .unwrap();
        assert!(fetching.1.contains(&MULTICAST_JOINED));
    }

    #[test]
    fn guarded_children_are_stopped_on_drop() {
        let child = Command::new("sleep").arg("60").spawn().unwrap();
        let pid = child.id() as i32;
        drop(Guarded {
            name: "sleep",
            child,
        });
        // SAFETY: probing a pid with signal 0.
        assert_ne!(unsafe { libc::kill(pid, 0) }, 0, "child still running");
    }

    /// The report is written as JSON and read back as the same type; scripts/bench-boot reads
    /// `clients[0].phases[].phase`/`.seconds` and `tftp_requests` by these names.
    #[test]
    fn the_report_reads_back_as_written() {
        let report = Report {
            image: "lab".into(),
            version: "20260101-1".into(),
            firmware: Firmware::UefiHttp,
            mode: Mode::Proxy,
            tftp_requests: 0,
            clients: vec![ClientReport {
                mac: "52:54:00:12:34:56".parse().unwrap(),
                phases: vec![Phase {
                    phase: Stage::MultiUser.label().into(),
                    seconds: 12.5,
                }],
                commands: vec![CommandResult {
                    command: "hostname".into(),
                    output: "pc01\n".into(),
                    status: 0,
                }],
            }],
        };
        let text = serde_json::to_string_pretty(&report).unwrap();
        assert_eq!(serde_json::from_str::<Report>(&text).unwrap(), report);
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            (&json["firmware"], &json["mode"], &json["tftp_requests"]),
            (
                &serde_json::json!("uefi-http"),
                &serde_json::json!("proxy"),
                &serde_json::json!(0)
            )
        );
        assert_eq!(
            json["clients"][0]["phases"][0],
            serde_json::json!({"phase": "multi-user", "seconds": 12.5})
        );
        assert_eq!(json["clients"][0]["mac"], "52:54:00:12:34:56");
        assert_eq!(report.first().command("hostname").unwrap().output, "pc01\n");
        assert!(serde_json::from_str::<Report>(&text.replace("uefi-http", "efi")).is_err());
    }
}
