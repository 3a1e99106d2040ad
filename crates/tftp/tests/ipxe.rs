//! iPXE, the firmware-side client, fetching from our server inside QEMU (TCG).
//!
//! ipxe.lkrn runs the script passed as its initrd. QEMU's user-mode network maps the
//! guest's 10.0.2.2 to the host's loopback, where the server listens. The script
//! fetches a payload, then a marker file whose name tells the outcome; the test reads
//! the server's transfer log. Skips when qemu-system-x86_64 or ipxe.lkrn is missing.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use diskless_tftp::server::TransferOutcome;

const LKRN: &str = "/usr/lib/ipxe/ipxe.lkrn";

#[test]
fn ipxe_fetches_over_tftp() {
    if !have("qemu-system-x86_64") || !std::path::Path::new(LKRN).exists() {
        return skip(&format!(
            "needs qemu-system-x86_64 and {LKRN} (packages qemu-system-x86, ipxe)"
        ));
    }
    let payload = pattern(3 << 20, 77);
    let root = root_with(&[
        ("payload.bin", &payload),
        ("ok-marker", b"ok"),
        ("fail-marker", b"no"),
    ]);
    let srv = TestServer::start(root.path(), "127.0.0.1:0");
    let port = srv.addr.port();
    let work = tempfile::tempdir().unwrap();
    let script = work.path().join("script.ipxe");
    std::fs::write(
        &script,
        format!(
            "#!ipxe\n\
             dhcp || goto fail\n\
             imgfetch tftp://10.0.2.2:{port}/payload.bin || goto fail\n\
             imgfetch tftp://10.0.2.2:{port}/ok-marker || goto fail\n\
             poweroff\n\
             :fail\n\
             imgfetch tftp://10.0.2.2:{port}/fail-marker\n\
             poweroff\n"
        ),
    )
    .unwrap();
    // Never -accel kvm here: TCG only.
    let mut qemu = Command::new("qemu-system-x86_64")
        .args([
            "-accel", "tcg", "-m", "256", "-display", "none", "-serial", "none",
        ])
        .args(["-monitor", "none", "-no-reboot", "-kernel", LKRN, "-initrd"])
        .arg(&script)
        .args(["-netdev", "user,id=n0", "-device", "e1000,netdev=n0"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting qemu");
    let t0 = Instant::now();
    let marker = loop {
        let logs = srv.logs.lock().unwrap().clone();
        if let Some(l) = logs.iter().find(|l| l.filename.ends_with("-marker")) {
            break Some(l.filename.clone());
        }
        if t0.elapsed() > Duration::from_secs(240) || qemu.try_wait().unwrap().is_some() {
            break None;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let _ = qemu.kill();
    let _ = qemu.wait();
    let logs = srv.logs.lock().unwrap().clone();
    assert_eq!(
        marker.as_deref(),
        Some("ok-marker"),
        "iPXE did not fetch the payload; server log: {logs:#?}"
    );
    let got = logs
        .iter()
        .find(|l| l.filename == "payload.bin")
        .expect("payload requested");
    assert_eq!(got.outcome, TransferOutcome::Complete);
    assert_eq!(got.bytes, payload.len() as u64, "every byte acknowledged");
    eprintln!(
        "iPXE: {} bytes, blksize {} windowsize {} tsize {:?}, {:.1} s",
        got.bytes,
        got.blksize,
        got.windowsize,
        got.requested.tsize,
        got.elapsed.as_secs_f64()
    );
}
