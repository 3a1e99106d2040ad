//! The server against our own client and hand-made packets, on loopback.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use common::*;
use diskless_tftp::client::{self, Options};
use diskless_tftp::server::{ServerConfig, TransferOutcome};
use diskless_tftp::wire::{ErrorCode, Packet, RequestOptions};

fn fetch(
    addr: SocketAddr,
    path: &str,
    opts: &Options,
) -> Result<(Vec<u8>, client::Summary), client::Error> {
    let mut out = Vec::new();
    let s = client::fetch(addr, path, opts, &mut out, &mut |_| Ok(()))?;
    Ok((out, s))
}

fn opts(blksize: u16, windowsize: u16) -> Options {
    Options {
        blksize,
        windowsize,
        ..Options::default()
    }
}

#[test]
fn byte_exact_across_options_and_sizes() {
    let sizes = [0usize, 1, 511, 512, 513, 1468 * 3, 100_000, 1 << 20];
    let files: Vec<(String, Vec<u8>)> = sizes
        .iter()
        .map(|&n| (format!("f{n}"), pattern(n, n as u64 + 7)))
        .collect();
    let refs: Vec<(&str, &[u8])> = files
        .iter()
        .map(|(n, d)| (n.as_str(), d.as_slice()))
        .collect();
    let root = root_with(&refs);
    let srv = TestServer::start(root.path(), "127.0.0.1:0");
    for (blk, win) in [
        (512, 1),
        (1468, 1),
        (1468, 16),
        (8192, 4),
        (65464, 8),
        (8, 3),
    ] {
        for (name, data) in &files {
            if blk == 8 && data.len() > 100_000 {
                continue;
            }
            let (got, s) = fetch(srv.addr, name, &opts(blk, win)).unwrap();
            assert!(got == *data, "{name} blksize {blk} windowsize {win}");
            assert_eq!(s.bytes, data.len() as u64);
            assert_eq!(s.tsize, Some(data.len() as u64), "{name} {blk} {win}");
            assert_eq!((s.blksize, s.windowsize), (blk, win));
        }
    }
}

#[test]
fn block_numbers_roll_over() {
    // blksize 8: 600_001 bytes are 75_001 blocks, past 65535.
    let data = pattern(600_001, 3);
    let root = root_with(&[("big", &data)]);
    let srv = TestServer::start(root.path(), "127.0.0.1:0");
    for win in [1, 64] {
        let (got, _) = fetch(srv.addr, "big", &opts(8, win)).unwrap();
        assert!(got == data, "windowsize {win}");
    }
    let logs = srv.wait_logs(2);
    assert!(logs
        .iter()
        .all(|l| l.outcome == TransferOutcome::Complete && l.bytes == 600_001));
}

#[test]
fn progress_reports_tsize_first_and_can_abort() {
    let data = pattern(300_000, 9);
    let root = root_with(&[("img", &data)]);
    let srv = TestServer::start(root.path(), "127.0.0.1:0");
    let mut out = Vec::new();
    let mut seen = Vec::new();
    let e = client::fetch(srv.addr, "img", &Options::default(), &mut out, &mut |p| {
        seen.push(p);
        Err("not enough RAM".into())
    })
    .unwrap_err();
    assert!(
        matches!(e, client::Error::Aborted(ref m) if m == "not enough RAM"),
        "{e}"
    );
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].tsize, Some(300_000));
    assert_eq!(seen[0].bytes, 0);
    assert!(out.is_empty(), "nothing written before the callback agreed");
    // The server saw the client's ERROR and ended the transfer at once.
    let logs = srv.wait_logs(1);
    assert!(
        matches!(
            logs[0].outcome,
            TransferOutcome::ClientAborted {
                code: ErrorCode::DiskFull,
                ..
            }
        ),
        "{:?}",
        logs[0]
    );
}

/// A raw client socket with a short timeout.
fn raw() -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    s
}

fn recv(s: &UdpSocket) -> (Vec<u8>, SocketAddr) {
    let mut b = vec![0u8; 70000];
    let (n, from) = s.recv_from(&mut b).expect("reply");
    b.truncate(n);
    (b, from)
}

fn rrq(name: &[u8], opts: &[(&str, &str)]) -> Vec<u8> {
    let mut v = vec![0, 1];
    v.extend_from_slice(name);
    v.extend_from_slice(b"\0octet\0");
    for (n, val) in opts {
        v.extend_from_slice(n.as_bytes());
        v.push(0);
        v.extend_from_slice(val.as_bytes());
        v.push(0);
    }
    v
}

fn expect_error(reply: &[u8], code: ErrorCode) {
    match Packet::parse(reply).unwrap() {
        Packet::Error { code: c, .. } => assert_eq!(c, code),
        p => panic!("expected error {code:?}, got {p:?}"),
    }
}

#[test]
fn traversal_and_writes_are_refused() {
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret"), b"secret").unwrap();
    let root = root_with(&[("ok", b"fine"), ("sub/f", b"x")]);
    std::os::unix::fs::symlink(outside.path().join("secret"), root.path().join("link")).unwrap();
    std::os::unix::fs::symlink(outside.path(), root.path().join("dirlink")).unwrap();
    let srv = TestServer::start(root.path(), "127.0.0.1:0");
    let s = raw();
    let cases: &[&[u8]] = &[
        b"../../etc/shadow",
        b"..\\..\\etc\\shadow",
        b"sub/../../x",
        b"/../etc/passwd",
        b"link",
        b"dirlink/secret",
    ];
    for name in cases {
        s.send_to(&rrq(name, &[]), srv.addr).unwrap();
        let (reply, _) = recv(&s);
        expect_error(&reply, ErrorCode::AccessViolation);
    }
    // Write request: error 2, nothing created.
    let mut wrq = rrq(b"new", &[]);
    wrq[1] = 2;
    s.send_to(&wrq, srv.addr).unwrap();
    let (reply, _) = recv(&s);
    expect_error(&reply, ErrorCode::AccessViolation);
    assert!(!root.path().join("new").exists());
    // NUL inside the name makes the mode invalid: nothing is served, no reply needed.
    s.send_to(b"\x00\x01ok\x00../x\x00octet\x00", srv.addr)
        .unwrap();
    // Missing file: error 1; a rooted name is looked up beneath the root, never in /.
    // Backslashes are separators.
    for name in [&b"missing"[..], b"/etc/passwd", b"\\etc\\passwd"] {
        s.send_to(&rrq(name, &[]), srv.addr).unwrap();
        expect_error(&recv(&s).0, ErrorCode::FileNotFound);
    }
    s.send_to(&rrq(b"sub\\f", &[]), srv.addr).unwrap();
    let (reply, from) = recv(&s);
    assert_eq!(
        Packet::parse(&reply).unwrap(),
        Packet::Data {
            block: 1,
            data: b"x"
        }
    );
    assert_ne!(from, srv.addr, "transfer on its own port");
    s.send_to(&Packet::Ack { block: 1 }.to_vec(), from).unwrap();
    let logs = srv.wait_logs(cases.len() + 5);
    let refused = logs
        .iter()
        .filter(|l| {
            matches!(
                l.outcome,
                TransferOutcome::Refused {
                    code: ErrorCode::AccessViolation,
                    ..
                }
            )
        })
        .count();
    assert_eq!(refused, cases.len() + 1);
}

#[test]
fn ovmf_style_probe_then_download() {
    // EDK2 asks for the size with tsize+blksize+windowsize, gets the OACK, sends
    // ERROR 8 to end the probe, then asks again for the real download.
    let data = pattern(200_000, 5);
    let root = root_with(&[("bootx64.efi", &data)]);
    let srv = TestServer::start(root.path(), "127.0.0.1:0");
    let s = raw();
    let probe = rrq(
        b"bootx64.efi",
        &[("tsize", "0"), ("blksize", "1468"), ("windowsize", "4")],
    );
    s.send_to(&probe, srv.addr).unwrap();
    let (oack, tid) = recv(&s);
    let Packet::Oack { options } = Packet::parse(&oack).unwrap() else {
        panic!("{oack:?}")
    };
    let o = RequestOptions::from_raw(&options);
    assert_eq!(
        (o.tsize, o.blksize, o.windowsize),
        (Some(200_000), Some(1468), Some(4))
    );
    s.send_to(b"\x00\x05\x00\x08tsize probe done\x00", tid)
        .unwrap();
    // Same client port, the real request.
    let real = rrq(b"bootx64.efi", &[("blksize", "1468"), ("windowsize", "4")]);
    s.send_to(&real, srv.addr).unwrap();
    let (oack2, tid2) = recv(&s);
    assert_ne!(tid, tid2);
    assert!(matches!(
        Packet::parse(&oack2).unwrap(),
        Packet::Oack { .. }
    ));
    s.send_to(&[0, 4, 0, 0], tid2).unwrap();
    let mut got = Vec::new();
    let mut expected: u16 = 1;
    loop {
        let (p, from) = recv(&s);
        if from == tid {
            panic!("the aborted probe must not send anything more: {p:?}");
        }
        let Packet::Data { block, data: d } = Packet::parse(&p).unwrap() else {
            panic!()
        };
        assert_eq!(block, expected);
        got.extend_from_slice(d);
        expected = expected.wrapping_add(1);
        if d.len() < 1468 {
            s.send_to(&Packet::Ack { block }.to_vec(), tid2).unwrap();
            break;
        }
        if block % 4 == 0 {
            s.send_to(&Packet::Ack { block }.to_vec(), tid2).unwrap();
        }
    }
    assert!(got == data);
    let logs = srv.wait_logs(2);
    assert!(logs.iter().any(|l| matches!(
        l.outcome,
        TransferOutcome::ClientAborted {
            code: ErrorCode::OptionNegotiation,
            ..
        }
    )));
    assert!(logs
        .iter()
        .any(|l| l.outcome == TransferOutcome::Complete && l.bytes == 200_000));
}

#[test]
fn pxelinux_style_missing_configs_answered_at_once() {
    // pxelinux walks pxelinux.cfg/<uuid>, 01-<mac>, C0A8000A, C0A8000, ... default.
    let root = root_with(&[("pxelinux.cfg/default", b"DEFAULT linux\n")]);
    let srv = TestServer::start(root.path(), "127.0.0.1:0");
    let names = [
        "pxelinux.cfg/a8cf2c6e-6b2b-4d2f-9d4e-0123456789ab",
        "pxelinux.cfg/01-52-54-00-12-34-56",
        "pxelinux.cfg/C0A8000A",
        "pxelinux.cfg/C0A8000",
        "pxelinux.cfg/C0A800",
        "pxelinux.cfg/C0A80",
        "pxelinux.cfg/C0A8",
        "pxelinux.cfg/C0A",
        "pxelinux.cfg/C0",
        "pxelinux.cfg/C",
    ];
    let socks: Vec<UdpSocket> = names.iter().map(|_| raw()).collect();
    // All ten at once, each from its own port with tsize+blksize like pxelinux.
    for (s, n) in socks.iter().zip(names) {
        s.send_to(
            &rrq(n.as_bytes(), &[("tsize", "0"), ("blksize", "1408")]),
            srv.addr,
        )
        .unwrap();
    }
    for s in &socks {
        expect_error(&recv(s).0, ErrorCode::FileNotFound);
    }
    let (got, _) = fetch(srv.addr, "pxelinux.cfg/default", &Options::default()).unwrap();
    assert_eq!(got, b"DEFAULT linux\n");
    let logs = srv.wait_logs(11);
    assert_eq!(
        logs.iter()
            .filter(|l| matches!(
                l.outcome,
                TransferOutcome::Refused {
                    code: ErrorCode::FileNotFound,
                    ..
                }
            ))
            .count(),
        10
    );
}

#[test]
fn duplicate_acks_do_not_multiply_traffic() {
    let data = pattern(512 * 20, 1);
    let root = root_with(&[("f", &data)]);
    // A retransmission timer far longer than the test: any extra packet would come
    // from the duplicate ACKs, not from the timer.
    let mut config = ServerConfig::new(root.path());
    config.session.rtt.min = Duration::from_secs(10);
    config.session.rtt.initial = Duration::from_secs(10);
    let srv = TestServer::start_with(config, "127.0.0.1:0", None);
    let s = raw();
    s.send_to(&rrq(b"f", &[]), srv.addr).unwrap();
    let (p, tid) = recv(&s);
    assert!(matches!(
        Packet::parse(&p).unwrap(),
        Packet::Data { block: 1, .. }
    ));
    // Acknowledge block 1 five times.
    for _ in 0..5 {
        s.send_to(&[0, 4, 0, 1], tid).unwrap();
    }
    let (p, _) = recv(&s);
    assert!(matches!(
        Packet::parse(&p).unwrap(),
        Packet::Data { block: 2, .. }
    ));
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut b = [0u8; 600];
    let extra = s.recv_from(&mut b);
    assert!(
        extra.is_err(),
        "duplicate ACKs caused an extra packet: {:?}",
        Packet::parse(&b[..extra.unwrap().0])
    );
    // Abort to free the transfer.
    s.send_to(b"\x00\x05\x00\x00bye\x00", tid).unwrap();
}

#[test]
fn unknown_options_ignored_and_out_of_range_dropped() {
    let data = pattern(2000, 2);
    let root = root_with(&[("f", &data)]);
    let srv = TestServer::start(root.path(), "127.0.0.1:0");
    let s = raw();
    // Only unknown options: no OACK, plain RFC 1350 DATA.
    s.send_to(&rrq(b"f", &[("multicast", ""), ("foo", "bar")]), srv.addr)
        .unwrap();
    let (p, tid) = recv(&s);
    assert!(
        matches!(Packet::parse(&p).unwrap(), Packet::Data { block: 1, data } if data.len() == 512)
    );
    s.send_to(b"\x00\x05\x00\x00bye\x00", tid).unwrap();
    // blksize above the RFC maximum is lowered; unknown option not echoed.
    s.send_to(&rrq(b"f", &[("blksize", "70000"), ("x-y", "1")]), srv.addr)
        .unwrap();
    let (p, tid) = recv(&s);
    assert_eq!(&p[..], b"\x00\x06blksize\x0065464\x00");
    s.send_to(b"\x00\x05\x00\x00bye\x00", tid).unwrap();
}

#[test]
fn replies_leave_from_the_address_the_request_arrived_on() {
    // Bound to the wildcard; 127.0.0.2 and 127.0.0.3 are both local on loopback.
    let data = pattern(3000, 4);
    let root = root_with(&[("f", &data)]);
    let srv = TestServer::start(root.path(), "0.0.0.0:0");
    for ip in ["127.0.0.2", "127.0.0.3"] {
        let s = raw();
        let to: SocketAddr = format!("{ip}:{}", srv.addr.port()).parse().unwrap();
        s.send_to(&rrq(b"f", &[]), to).unwrap();
        let (_, from) = recv(&s);
        assert_eq!(from.ip().to_string(), ip);
        s.send_to(b"\x00\x05\x00\x00bye\x00", from).unwrap();
        let (got, _) = fetch(to, "f", &Options::default()).unwrap();
        assert!(got == data);
    }
}

#[test]
fn netascii_mode() {
    let root = root_with(&[("t.txt", b"a\nb\rc\r\n")]);
    let srv = TestServer::start(root.path(), "127.0.0.1:0");
    let s = raw();
    let mut req = rrq(b"t.txt", &[("tsize", "0")]);
    let at = req.windows(5).position(|w| w == b"octet").unwrap();
    req.splice(at..at + 5, b"netascii".iter().copied());
    s.send_to(&req, srv.addr).unwrap();
    let (p, tid) = recv(&s);
    assert_eq!(&p[..], b"\x00\x06tsize\x0011\x00");
    s.send_to(&[0, 4, 0, 0], tid).unwrap();
    let (p, _) = recv(&s);
    assert_eq!(
        Packet::parse(&p).unwrap(),
        Packet::Data {
            block: 1,
            data: b"a\r\nb\r\0c\r\0\r\n"
        }
    );
    s.send_to(&[0, 4, 0, 1], tid).unwrap();
}

#[test]
fn many_concurrent_transfers() {
    let data = pattern(1 << 20, 11);
    let root = root_with(&[("img", &data)]);
    let srv = TestServer::start(root.path(), "127.0.0.1:0");
    let addr = srv.addr;
    let handles: Vec<_> = (0..50)
        .map(|i| {
            let data = data.clone();
            std::thread::spawn(move || {
                let (got, _) =
                    fetch(addr, "img", &opts(1468, if i % 2 == 0 { 16 } else { 1 })).unwrap();
                assert!(got == data);
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let logs = srv.wait_logs(50);
    assert_eq!(
        logs.iter()
            .filter(|l| l.outcome == TransferOutcome::Complete)
            .count(),
        50
    );
}

fn rss_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = s.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn thousand_concurrent_transfers_bounded_memory() {
    // 1000 clients ask for a 64 MiB file at the largest block size and then stall
    // after the first block, so all 1000 transfers are alive at once. The file is
    // never loaded whole: the server's memory grows by the per-transfer buffers only.
    let big = tempfile::NamedTempFile::new().unwrap();
    big.as_file().set_len(64 << 20).unwrap();
    let root = tempfile::tempdir().unwrap();
    std::fs::hard_link(big.path(), root.path().join("big")).unwrap();
    let mut config = ServerConfig::new(root.path());
    config.max_transfers = 1000;
    // All from one address, as no real source would: the global cap is what is tested.
    config.per_source = diskless_tftp::admission::SourceLimits::unlimited();
    config.session.rtt.initial = Duration::from_secs(30);
    config.session.rtt.min = Duration::from_secs(30);
    let srv = TestServer::start_with(config, "127.0.0.1:0", None);
    let before = rss_kib();
    let socks: Vec<UdpSocket> = (0..1001).map(|_| raw()).collect();
    let mut tids = Vec::new();
    for s in &socks[..1000] {
        s.send_to(&rrq(b"big", &[("blksize", "65464")]), srv.addr)
            .unwrap();
        let (p, tid) = recv(s);
        assert!(matches!(Packet::parse(&p).unwrap(), Packet::Oack { .. }));
        s.send_to(&[0, 4, 0, 0], tid).unwrap();
        tids.push(tid);
    }
    for s in &socks[..1000] {
        let (p, _) = recv(s);
        assert!(matches!(
            Packet::parse(&p).unwrap(),
            Packet::Data { block: 1, .. }
        ));
    }
    // The 1001st is over the limit: dropped, not answered.
    let last = &socks[1000];
    last.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    last.send_to(&rrq(b"big", &[]), srv.addr).unwrap();
    let mut b = [0u8; 600];
    assert!(
        last.recv_from(&mut b).is_err(),
        "request over max_transfers was served"
    );
    let grown_mib = rss_kib().saturating_sub(before) / 1024;
    eprintln!("1000 live transfers of a 64 MiB file: RSS grew by {grown_mib} MiB");
    // Two 64 KiB buffers and a small stack each: well under 256 KiB per transfer,
    // and nowhere near 1000 copies of the file (64 GiB).
    assert!(grown_mib < 250, "RSS grew by {grown_mib} MiB");
    for (s, tid) in socks.iter().zip(&tids) {
        s.send_to(b"\x00\x05\x00\x00bye\x00", tid).unwrap();
    }
    let logs = srv.wait_logs(1000);
    assert_eq!(logs.len(), 1000);
}

/// Virtual files come first (generated bytes, a file outside the root the hook chose), for
/// rooted names too (GRUB asks "/grub/grub.cfg"); other names fall through to the root.
#[test]
fn virtual_files_before_the_root() {
    use diskless_tftp::server::Virtual;
    use std::path::Path;
    let outside = tempfile::tempdir().unwrap();
    let package_file = outside.path().join("grubnetx64.efi.signed");
    let binary = pattern(70_000, 9);
    std::fs::write(&package_file, &binary).unwrap();
    let root = root_with(&[("ok", b"fine"), ("grubx64.efi", b"shadowed")]);
    let mut config = ServerConfig::new(root.path());
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen2 = seen.clone();
    config.virtual_files = Some(std::sync::Arc::new(move |name: &Path, client| {
        seen2.lock().unwrap().push((name.to_path_buf(), client));
        match name.to_str()? {
            "grub/grub.cfg" => Some(Virtual::Bytes(b"configfile x\n".to_vec())),
            "grubx64.efi" => Some(Virtual::File(package_file.clone())),
            "gone" => Some(Virtual::File("/nonexistent/gone".into())),
            _ => None,
        }
    }));
    let srv = TestServer::start_with(config, "127.0.0.1:0", None);
    let (got, _) = fetch(srv.addr, "/grub/grub.cfg", &opts(1024, 1)).unwrap();
    assert_eq!(got, b"configfile x\n");
    let (got, s) = fetch(srv.addr, "grubx64.efi", &opts(1468, 8)).unwrap();
    assert!(got == binary);
    assert_eq!(s.tsize, Some(binary.len() as u64));
    let (got, _) = fetch(srv.addr, "ok", &opts(512, 1)).unwrap();
    assert_eq!(got, b"fine");
    assert!(fetch(srv.addr, "gone", &opts(512, 1)).is_err());
    // The hook never sees a name that leaves the root.
    assert!(fetch(srv.addr, "../grub/grub.cfg", &opts(512, 1)).is_err());
    srv.wait_logs(5);
    let names: Vec<String> = seen
        .lock()
        .unwrap()
        .iter()
        .map(|(n, _)| n.display().to_string())
        .collect();
    assert_eq!(names, ["grub/grub.cfg", "grubx64.efi", "ok", "gone"]);
}

/// The allow hook is asked before any file: a refusal is error 2, access violation, with its
/// reason, and nothing is read.
#[test]
fn the_allow_hook_refuses_with_access_violation() {
    let root = root_with(&[("ok", b"fine"), ("private", b"not for you")]);
    let mut config = ServerConfig::new(root.path());
    config.allow = Some(std::sync::Arc::new(|name: &std::path::Path, _client| {
        if name == std::path::Path::new("private") {
            Err("not a client of this server".to_string())
        } else {
            Ok(())
        }
    }));
    let srv = TestServer::start_with(config, "127.0.0.1:0", None);
    let (got, _) = fetch(srv.addr, "ok", &opts(512, 1)).unwrap();
    assert_eq!(got, b"fine");
    // The client hears the refusal, with its reason (not a timeout).
    let refusal = fetch(srv.addr, "private", &opts(512, 1)).unwrap_err();
    assert!(
        matches!(
            &refusal,
            client::Error::Server { code: ErrorCode::AccessViolation, message }
                if message == "not a client of this server"
        ),
        "{refusal:?}"
    );
    let logs = srv.wait_logs(2);
    let refused = logs
        .iter()
        .find(|l| l.filename == "private")
        .expect("the refused request is logged");
    assert!(
        matches!(
            &refused.outcome,
            TransferOutcome::Refused { code: ErrorCode::AccessViolation, reason }
                if reason == "not a client of this server"
        ),
        "{:?}",
        refused.outcome
    );
    assert_eq!(refused.bytes, 0);
}

#[test]
fn new_transfers_are_limited_per_source_address() {
    // Ten requests from one address against a burst of five and no refill: five are
    // answered, the rest dropped; another address is still served. The timer is long, so
    // nothing is retransmitted while the test counts.
    let root = root_with(&[("f", &pattern(100_000, 3))]);
    let mut config = ServerConfig::new(root.path());
    config.per_source = diskless_tftp::admission::SourceLimits {
        burst: 5,
        per_second: 0,
        max_running: 100,
    };
    config.session.rtt.initial = Duration::from_secs(30);
    config.session.rtt.min = Duration::from_secs(30);
    let srv = TestServer::start_with(config, "127.0.0.1:0", None);
    let flood = raw();
    for _ in 0..10 {
        flood.send_to(&rrq(b"f", &[]), srv.addr).unwrap();
    }
    flood
        .set_read_timeout(Some(Duration::from_millis(1500)))
        .unwrap();
    let mut tids = Vec::new();
    let mut b = [0u8; 600];
    while let Ok((_, tid)) = flood.recv_from(&mut b) {
        tids.push(tid);
    }
    tids.sort();
    tids.dedup();
    assert_eq!(tids.len(), 5, "transfers started for one address: {tids:?}");
    let other = UdpSocket::bind("127.0.0.2:0").unwrap();
    other
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    other.send_to(&rrq(b"f", &[]), srv.addr).unwrap();
    let (p, tid) = recv(&other);
    assert!(matches!(
        Packet::parse(&p).unwrap(),
        Packet::Data { block: 1, .. }
    ));
    for t in tids.iter().chain([&tid]) {
        let s = if *t == tid { &other } else { &flood };
        s.send_to(b"\x00\x05\x00\x00bye\x00", t).unwrap();
    }
    assert_eq!(srv.wait_logs(6).len(), 6);
}
