//! Issue 25's failures, in one run of two seats on one bridge, 512 MiB each: a
//! `diskless.fetch=lazy` seat and a `diskless.fetch=network` seat (each set by its
//! [[client]] entry). The server is killed once the lazy seat's root is served from the
//! network, while its RAM copy fills, and started again 3 s later; the second of the
//! image's URLs is a cache that damages every block it sends. The helper refuses the cache's
//! blocks (they do not match the image's hash tree), waits for the server, and the lazy seat
//! still fills its copy, moves its root onto it, lets go of the network and reaches
//! multi-user; its filled report counts the refused blocks, and so does the server's
//! `diskless_lazy_refused_blocks_total`; the network seat boots in 512 MiB with its root on
//! NBD. That lazy seats boot and leave the network with BIOS and UEFI is checked by pxe.rs (`uefi_full_mode`,
//! `bios_proxy_mode_beside_dnsmasq`).
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
             [[client]]\nmac = \"{NETWORK}\"\nfetch = \"network\"\n"
        ),
    )
    .unwrap();
    let logs = work.path().join("logs");
    let mut vm = vm("test", &store, &logs, &[BLOCK_PATH, "cat /proc/cmdline"]);
    vm.args(["--mac", LAZY, "--mac", NETWORK, "--memory", "512"])
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
    let [lazy, network] = &report.clients[..] else {
        panic!("two seats expected: {:?}", report.clients);
    };
    for client in [lazy, network] {
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
}
