//! `diskless vm`: try an image as a real workstation would boot it, without hardware.
//!
//! [`run`] makes a private network namespace with a tap device ([`netns`]), starts the boot
//! server in it as a child process, PXE-boots a QEMU client on the tap ([`qemu`]), follows the
//! client's serial console ([`console`]) until it reaches multi-user, optionally runs commands
//! in it, and removes the namespace, the tap and every process it started, whatever happens
//! (Ctrl-C included).

pub mod console;
pub mod netns;
pub mod qemu;

use console::Console;
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
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

#[derive(Debug, Clone)]
pub struct VmConfig {
    /// The server command (`diskless serve --interface TAP ...`), started inside the namespace.
    pub server: Vec<String>,
    pub namespace: String,
    pub tap: String,
    /// The server's address on the tap, CIDR.
    pub server_cidr: String,
    pub http_port: u16,
    pub memory_mib: u32,
    pub cpus: u32,
    pub firmware: Firmware,
    pub mac: String,
    pub timeout: Duration,
    /// Commands to run on the client once it reached multi-user.
    pub commands: Vec<String>,
    /// Show the client's console on our stdout.
    pub show_console: bool,
    /// Console and server logs go here.
    pub log_dir: PathBuf,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CommandResult {
    pub command: String,
    pub output: String,
    pub status: i32,
}

#[derive(Debug, Clone, Default)]
pub struct VmReport {
    /// (phase, seconds since QEMU started), in order.
    pub phases: Vec<(String, f64)>,
    pub commands: Vec<CommandResult>,
}

impl VmReport {
    pub fn seconds_to(&self, phase: &str) -> Option<f64> {
        self.phases
            .iter()
            .find(|(p, _)| p == phase)
            .map(|(_, s)| *s)
    }
}

/// Console lines that mark boot phases, in the order they appear.
const PHASES: &[(&str, &str)] = &[
    ("kernel", "Linux version"),
    ("fetch-start", "diskless: fetching"),
    ("fetched", "sha256 verified"),
    ("root-mounted", "diskless: root is an overlay"),
    ("multi-user", "Reached target"),
];

/// Console lines that mean the boot failed.
const FAILURES: &[&str] = &[
    "Failure: diskless:",
    "Kernel panic",
    "(initramfs)",
    "diskless-fetch: ",
];

pub fn run(cfg: &VmConfig) -> Result<VmReport, Error> {
    std::fs::create_dir_all(&cfg.log_dir)
        .map_err(|e| Error::Setup(format!("creating {}: {e}", cfg.log_dir.display())))?;
    let ns = netns::Netns::create(&cfg.namespace, &cfg.tap, &cfg.server_cidr)?;
    ns.enter()?;
    let server_ip = cfg
        .server_cidr
        .split('/')
        .next()
        .unwrap_or_default()
        .to_string();

    let server_log = cfg.log_dir.join("server.log");
    let log = std::fs::File::create(&server_log)
        .map_err(|e| Error::Setup(format!("creating {}: {e}", server_log.display())))?;
    let (program, args) = cfg
        .server
        .split_first()
        .ok_or_else(|| Error::Setup("no server command".into()))?;
    let server = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(|e| Error::Setup(e.to_string()))?)
        .stderr(log)
        .spawn()
        .map_err(|e| Error::Setup(format!("starting the server {program}: {e}")))?;
    let mut server = Guarded {
        name: "server",
        child: server,
    };
    wait_for_http(&mut server, &server_ip, cfg.http_port, &server_log)?;

    let vars = cfg.log_dir.join("OVMF_VARS.fd");
    if cfg.firmware == Firmware::Uefi {
        std::fs::copy(qemu::OVMF_VARS, &vars).map_err(|e| {
            Error::Setup(format!("copying {}: {e} (install ovmf)", qemu::OVMF_VARS))
        })?;
    }
    let qemu_cfg = qemu::QemuConfig {
        memory_mib: cfg.memory_mib,
        cpus: cfg.cpus,
        firmware: cfg.firmware,
        tap: cfg.tap.clone(),
        mac: cfg.mac.clone(),
        ovmf_vars: (cfg.firmware == Firmware::Uefi).then_some(vars),
    };
    let started = Instant::now();
    let mut qemu = qemu::command(&qemu_cfg)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            Error::Setup(format!(
                "starting qemu-system-x86_64: {e} (install qemu-system-x86)"
            ))
        })?;
    let stdout = qemu.stdout.take().expect("piped");
    let stdin = qemu.stdin.take().expect("piped");
    let stderr = qemu.stderr.take().expect("piped");
    let qemu = Guarded {
        name: "qemu",
        child: qemu,
    };
    let console_log = cfg.log_dir.join("console.log");
    let mut echo: Vec<Box<dyn Write + Send>> = vec![Box::new(
        std::fs::File::create(&console_log)
            .map_err(|e| Error::Setup(format!("{}: {e}", console_log.display())))?,
    )];
    if cfg.show_console {
        echo.push(Box::new(std::io::stdout()));
    }
    let mut console = Console::start(stdout, stdin, echo);
    let qemu_errors = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut { stderr }, &mut text);
        text
    });

    let deadline = started + cfg.timeout;
    let mut report = VmReport::default();
    let mut from = 0;
    let mut next_phase = 0;
    let result = loop {
        let mut patterns: Vec<&str> = FAILURES.to_vec();
        let Some((phase, marker)) = PHASES.get(next_phase) else {
            break Ok(());
        };
        patterns.push(marker);
        match console.wait_for(&patterns, from, deadline) {
            Ok((i, _)) if i < FAILURES.len() => {
                // Give the failure message a moment to arrive whole.
                std::thread::sleep(Duration::from_millis(500));
                break Err(Error::BootFailed(console.tail(15)));
            }
            Ok((_, end)) => {
                from = end;
                if *phase == "multi-user" {
                    // "Reached target" is printed for every target: read the rest of the line.
                    let line_end = match console.wait_for(&["\n"], end, deadline) {
                        Ok((_, eol)) => eol,
                        Err(e) => break Err(e),
                    };
                    let line = console.text_from(end);
                    if !reached_multi_user(&line[..(line_end - end).min(line.len())]) {
                        continue;
                    }
                }
                report
                    .phases
                    .push((phase.to_string(), started.elapsed().as_secs_f64()));
                next_phase += 1;
            }
            Err(Error::Timeout(what)) => {
                let reached = report
                    .phases
                    .last()
                    .map(|(p, _)| p.as_str())
                    .unwrap_or("nothing");
                break Err(Error::Timeout(format!(
                    "after {} s ({what}); last phase reached: {reached}",
                    cfg.timeout.as_secs()
                )));
            }
            Err(e) => break Err(e),
        }
    };
    let result = result.and_then(|()| {
        if cfg.commands.is_empty() {
            return Ok(());
        }
        console.wait_for_shell(deadline)?;
        for command in &cfg.commands {
            let (output, status) = console.run(command, Duration::from_secs(120))?;
            report.commands.push(CommandResult {
                command: command.clone(),
                output,
                status,
            });
        }
        Ok(())
    });
    // Stop the client first, then the server; the namespace goes last (Drop order).
    drop(qemu);
    let qemu_stderr = qemu_errors.join().unwrap_or_default();
    drop(server);
    drop(ns);
    match result {
        Err(Error::ClientStopped) => Err(Error::BootFailed(format!(
            "QEMU exited before multi-user.\n{}\n{}",
            qemu_stderr.trim(),
            console.tail(15)
        ))),
        Err(e) => Err(e),
        Ok(()) => Ok(report),
    }
}

/// The rest of a "Reached target" line names the multi-user target.
fn reached_multi_user(rest_of_line: &str) -> bool {
    rest_of_line.contains("multi-user.target") || rest_of_line.contains("Multi-User System")
}

/// Wait until the server answers HTTP; fail early, with its log, if it exits.
fn wait_for_http(
    server: &mut Guarded,
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
        if let Ok(Some(status)) = server.child.try_wait() {
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
    fn multi_user_is_recognised_in_both_spellings() {
        assert!(reached_multi_user(
            " multi-user.target - Multi-User System.\r\n"
        ));
        assert!(reached_multi_user(" Multi-User System.\r\n"));
        assert!(!reached_multi_user(" basic.target - Basic System.\r\n"));
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
}
