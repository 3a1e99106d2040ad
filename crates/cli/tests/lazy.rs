//! Issue 25's failures, in one run of two seats on one bridge, 512 MiB each: a
//! `diskless.fetch=lazy` seat and a `diskless.fetch=network` seat (each set by its
//! [[client]] entry). The server is killed once the lazy seat's root is served from the
//! network, while its RAM copy fills, and started again 3 s later; the second of the
//! image's URLs is a cache that damages every block it sends. The helper refuses the cache's
//! blocks (they do not match the image's hash tree), waits for the server, and the lazy seat
//! still fills its copy, moves its root onto it, lets go of the network and reaches
//! multi-user; its filled report counts the refused blocks, and so does the server's
//! `diskless_lazy_refused_blocks_total`; the network seat boots in 512 MiB with its root on
//! NBD. A third seat, lazy, on a slow port once its root is served (2 Mbit/s: its boot's
//! reads pre-empt the fill), is powered off (`systemctl poweroff`) as soon as it reaches
//! multi-user, its helper still filling: the shutdown is clean (the kernel's "reboot: Power
//! down", nbd0 kept through systemd-shutdown's signals, no I/O error of its root, no hang,
//! no `filled`). That lazy seats boot and leave the network with BIOS and UEFI is checked
//! by pxe.rs (`uefi_full_mode`, `bios_proxy_mode_beside_dnsmasq`).
//!
//! Run by scripts/test (`cargo test -p diskless --test lazy -- --ignored`): it needs root,
//! network namespaces, QEMU and minutes. The image is the shared test image
//! (`DISKLESS_TEST_STORE` / `DISKLESS_TEST_IMAGE`), whose diskless.cpio carries nbd.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

mod common;
use common::{
    add_image, assert_lazy_seat_off_the_network, assert_namespace_gone, assert_root_on_verity,
    command_output, enter_netns, read_report, record, sample, stages, vm, Booting, Work,
    BLOCK_PATH,
};
use diskless_boot::{FilledDetail, Stage};

const LAZY: &str = "52:54:00:00:00:01";
const NETWORK: &str = "52:54:00:00:00:02";
/// Lazy, powered off while its copy fills: once its root is served its port is slow enough
/// (2 Mbit/s: the image in 11 minutes at least) that the fill is under way when it reaches
/// multi-user, under TCG on a loaded machine too (at 10 Mbit/s it was whole first).
const POWER_OFF: &str = "52:54:00:00:00:03";
/// The damaging cache, beside `diskless vm`'s server (10.77.0.1) in its namespace.
const CACHE_PORT: u16 = 8081;

/// A cache in network namespace `ns` on port [`CACHE_PORT`], serving `store` (the server's
/// paths: /images/NAME/VERSION/FILE), keep-alive, as the helper asks. It damages every
/// Range of root.squashfs it sends: the first byte flipped (a broken disk or proxy). Other
/// files come whole and intact (iPXE may go to it when the server is away). Counts the
/// Ranges of root.squashfs it sent.
fn damaging_cache(ns: String, store: PathBuf) -> Arc<AtomicUsize> {
    let answered = Arc::new(AtomicUsize::new(0));
    let count = answered.clone();
    std::thread::spawn(move || {
        // This thread (and the ones it starts) in the vm's namespace: the socket stays there.
        enter_netns(&ns);
        let listener = TcpListener::bind(("0.0.0.0", CACHE_PORT)).unwrap();
        for conn in listener.incoming().flatten() {
            let (store, count) = (store.clone(), count.clone());
            std::thread::spawn(move || {
                let _ = serve_damaged(conn, &store, &count);
            });
        }
    });
    answered
}

/// Answer one connection's requests as [`damaging_cache`] says, until it closes.
fn serve_damaged(conn: TcpStream, store: &Path, count: &AtomicUsize) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut out = conn;
    loop {
        let (mut path, mut range) = (String::new(), None);
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line)? == 0 {
                return Ok(());
            }
            let line = line.trim();
            if line.is_empty() {
                break;
            }
            if let Some(p) = line.strip_prefix("GET ") {
                path = p.split_whitespace().next().unwrap_or_default().to_string();
            }
            if let Some(r) = line.strip_prefix("Range: bytes=") {
                let (a, b) = r.split_once('-').unwrap_or((r, ""));
                range = a.parse::<u64>().ok().zip(b.parse::<u64>().ok());
            }
        }
        let file = store.join(path.trim_start_matches('/'));
        let opened = std::fs::File::open(&file).and_then(|f| Ok((f.metadata()?.len(), f)));
        let (size, file) = match opened {
            Ok(opened) if !path.contains("..") => opened,
            _ => {
                out.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")?;
                continue;
            }
        };
        let (a, b) = range
            .filter(|(a, b)| a <= b && *b < size)
            .unwrap_or((0, size.saturating_sub(1)));
        let mut body = vec![0u8; (b + 1 - a) as usize];
        file.read_exact_at(&mut body, a)?;
        let head = if range.is_some() {
            if path.ends_with("/root.squashfs") {
                body[0] ^= 0xff;
                count.fetch_add(1, Ordering::SeqCst);
            }
            format!(
                "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {a}-{b}/{size}\r\n\
                 Content-Length: {}\r\n\r\n",
                body.len()
            )
        } else {
            format!("HTTP/1.1 200 OK\r\nContent-Length: {size}\r\n\r\n")
        };
        out.write_all(head.as_bytes())?;
        out.write_all(&body)?;
    }
}

#[test]
#[ignore = "needs root, QEMU and minutes: run by scripts/test"]
fn lazy_and_network_seats_survive_a_restarted_server_and_a_damaging_cache() {
    let work = Work::new();
    let store = work.path().join("store");
    add_image(&store, "test");
    let config = work.path().join("site.toml");
    // The server first; the cache is asked when the server does not answer.
    std::fs::write(
        &config,
        format!(
            "[boot]\nimage_urls = [\"http://10.77.0.1\", \"http://10.77.0.1:{CACHE_PORT}\"]\n\n\
             [[client]]\nmac = \"{LAZY}\"\nfetch = \"lazy\"\n\n\
             [[client]]\nmac = \"{NETWORK}\"\nfetch = \"network\"\n\n\
             [[client]]\nmac = \"{POWER_OFF}\"\nfetch = \"lazy\"\n"
        ),
    )
    .unwrap();
    let logs = work.path().join("logs");
    let mut vm = vm("test", &store, &logs, &[BLOCK_PATH, "cat /proc/cmdline"]);
    vm.args(["--mac", LAZY, "--mac", NETWORK, "--mac", POWER_OFF])
        .args(["--memory", "512", "--power-off", POWER_OFF])
        .arg(format!("--limit-rate={POWER_OFF}=2mbit"))
        .arg("--restart-server-during-fetch")
        .arg("--config")
        .arg(&config);
    let mut booting = Booting::start(&mut vm, &logs);
    let pid = booting.pid();
    let answered = damaging_cache(format!("diskless-vm-{pid}"), store.clone());
    let status = booting.wait();
    let text = std::fs::read_to_string(Booting::output_path(&logs)).unwrap();
    eprintln!("{text}");
    assert!(status.success(), "diskless vm failed ({status}):\n{text}");
    assert_namespace_gone(pid);

    let report = read_report(&logs);
    let [lazy, network, powered_off] = &report.clients[..] else {
        panic!("three seats expected: {:?}", report.clients);
    };
    for client in [lazy, network, powered_off] {
        eprintln!("{}: boot phases {:?}", client.mac, client.phases);
    }
    // The harness killed the server once the lazy seat's root was served, its copy filling.
    assert!(
        lazy.phases.iter().any(|p| p.phase == "server-restarted"),
        "{:?}",
        lazy.phases
    );
    let console_of = |mac: &str| logs.join(format!("console-{}.log", mac.replace(':', "-")));
    assert_lazy_seat_off_the_network(lazy, &logs, &console_of(LAZY));
    let console = std::fs::read_to_string(console_of(LAZY)).unwrap();
    // The fill lost the server, was refused by the cache, and went on once the server was back.
    // ("cannot connect to 10.77.0.1:80: ...", or a request under way cut: "http://10.77.0.1:80/...")
    assert!(
        console
            .lines()
            .any(|l| l.contains("10.77.0.1:80") && l.contains("trying the next URL")),
        "the fill never lost the server:\n{console}"
    );
    assert!(
        console.contains("does not match the image's hash tree; refused, asking the next URL"),
        "no block of the cache was refused:\n{console}"
    );
    assert!(
        answered.load(Ordering::SeqCst) > 0,
        "the cache was never asked"
    );
    // The refused blocks are in the seat's filled report, and the server counted them.
    let filled = record(&logs, LAZY)
        .and_then(|r| r.stages.into_iter().find(|s| s.stage == Stage::Filled))
        .expect("a filled report");
    let refused = FilledDetail::parse(&filled.detail)
        .unwrap_or_else(|| panic!("filled detail {:?}", filled.detail))
        .refused;
    assert!(
        refused > 0,
        "no refused block reported: {:?}",
        filled.detail
    );
    let metrics = std::fs::read_to_string(logs.join("metrics.txt")).unwrap();
    assert_eq!(
        sample(&metrics, "diskless_lazy_refused_blocks_total"),
        refused
    );

    let (cmdline, _) = command_output(network, "cat /proc/cmdline");
    assert!(cmdline.contains("diskless.fetch=network"), "{cmdline}");
    assert_eq!(assert_root_on_verity(network), "nbd0");
    let (out, _) = command_output(network, BLOCK_PATH);
    assert!(out.contains("nbd0 connected"), "{out}");
    let stages = stages(&logs, NETWORK);
    assert!(stages.iter().any(|s| s == "multi-user"), "{stages:?}");
    for never in ["fetched", "filled", "network-released"] {
        assert!(!stages.iter().any(|s| s == never), "{never}: {stages:?}");
    }

    assert_clean_power_off(powered_off, &logs, &console_of(POWER_OFF));
}

/// Issue 25, item 8: `seat` (lazy) was powered off at multi-user while its helper filled the
/// RAM copy, and the shutdown was clean: the helper (argv[0] '@') was serving the root when
/// `systemctl poweroff` ran, systemd reached the power-off with no I/O error on the root's
/// devices (the helper was not killed before the root was unmounted), within the vm's
/// timeout (no hang), and the copy never became whole.
fn assert_clean_power_off(seat: &diskless_vm::ClientReport, logs: &Path, console: &Path) {
    let phases: Vec<&str> = seat.phases.iter().map(|p| p.phase.as_str()).collect();
    assert!(
        phases.ends_with(&["multi-user", diskless_vm::POWERED_OFF]),
        "{phases:?}"
    );
    let (daemons, _) = command_output(seat, diskless_vm::ROOT_STORAGE_DAEMONS);
    assert!(
        daemons.contains("@diskless-fetch lazy-server") && daemons.contains("nbd0 connected"),
        "the helper was not serving the root when the seat was powered off:\n{daemons}"
    );
    let console =
        std::fs::read_to_string(console).unwrap_or_else(|e| panic!("{}: {e}", console.display()));
    assert!(
        console.contains(diskless_vm::POWER_DOWN),
        "no power-off on the console:\n{console}"
    );
    // The figures of the run, for the log: when the seat got there, and the fill's last
    // progress line before the power-off.
    let at = |phase: &str| {
        seat.phases
            .iter()
            .find(|p| p.phase == phase)
            .map(|p| p.seconds)
    };
    let fill = console
        .lines()
        .rfind(|l| l.contains("diskless: the RAM copy: "))
        .unwrap_or("no progress line");
    eprintln!(
        "powered-off seat: multi-user at {:?} s, powered off at {:?} s; last fill line: {fill}",
        at("multi-user"),
        at(diskless_vm::POWERED_OFF)
    );
    for bad in [
        "I/O error",
        // dm-verity's "data block N is corrupted".
        "is corrupted",
        "SQUASHFS error",
        "Kernel panic",
        "blocked for more than",
        // The kernel let go of nbd0's socket with the root on it: what systemd-shutdown's
        // SIGSTOP did to a helper that configured NBD by ioctls, its thread in NBD_DO_IT
        // (it configures it by netlink now, lazy/netlink.rs).
        "shutting down sockets",
    ] {
        assert!(
            !console.contains(bad),
            "{bad:?} at the shutdown:\n{console}"
        );
    }
    // systemd-shutdown names every process it has to SIGKILL: never the helper.
    let helper = daemons
        .lines()
        .find(|l| l.contains("@diskless-fetch lazy-server"))
        .and_then(|l| l.split_whitespace().next())
        .expect("the helper's pid");
    assert!(
        !console.contains(&format!("Sending SIGKILL to PID {helper} ")),
        "the helper was killed:\n{console}"
    );
    let stages = stages(logs, POWER_OFF);
    assert!(stages.iter().any(|s| s == "multi-user"), "{stages:?}");
    for never in ["filled", "network-released"] {
        assert!(
            !stages.iter().any(|s| s == never),
            "the copy was whole before the power-off (fill too fast for the test): {stages:?}"
        );
    }
}
