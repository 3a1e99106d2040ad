//! Real TFTP clients against our server, byte-exact: curl, busybox tftp, atftp,
//! tftp-hpa. A test skips (with a message) only when its client is not installed.

mod common;

use common::*;
use diskless_tftp::server::TransferOutcome;

struct Fixture {
    root: tempfile::TempDir,
    out: tempfile::TempDir,
    srv: TestServer,
    files: Vec<(&'static str, Vec<u8>)>,
}

fn fixture() -> Fixture {
    // A multi-block file, one that is an exact multiple of common block sizes, and
    // one bigger than 65535 blocks of 512 bytes would be without a larger blksize.
    let files = vec![
        ("boot/kernel", pattern(3 << 20, 1)),
        ("exact", pattern(512 * 1468 * 2, 2)),
        ("small.cfg", b"DEFAULT linux\n".to_vec()),
    ];
    let refs: Vec<(&str, &[u8])> = files.iter().map(|(n, d)| (*n, d.as_slice())).collect();
    let root = root_with(&refs);
    let srv = TestServer::start(root.path(), "127.0.0.1:0");
    Fixture {
        root,
        out: tempfile::tempdir().unwrap(),
        srv,
        files,
    }
}

fn skip_unless(tool: &str) -> bool {
    if have(tool) {
        return false;
    }
    skip(&format!("{tool} is not installed"));
    true
}

impl Fixture {
    /// Runs `argv` (with `{port}`, `{remote}`, `{local}` substituted) for every file and
    /// compares the result.
    fn each_file(&self, label: &str, argv: &[&str]) {
        for (i, (name, data)) in self.files.iter().enumerate() {
            let local = self.out.path().join(format!("{label}-{i}"));
            let port = self.srv.addr.port().to_string();
            let args: Vec<String> = argv
                .iter()
                .map(|a| {
                    a.replace("{port}", &port)
                        .replace("{remote}", name)
                        .replace("{local}", local.to_str().unwrap())
                })
                .collect();
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            let out = run(60, &refs);
            check(&out, &format!("{label}: {args:?}"));
            let got = std::fs::read(&local).unwrap_or_default();
            assert!(
                got == *data,
                "{label}: {name}: got {} bytes, want {}",
                got.len(),
                data.len()
            );
        }
    }

    fn all_complete(&self, n: usize) {
        let logs = self.srv.wait_logs(n);
        let bad: Vec<_> = logs
            .iter()
            .filter(|l| l.outcome != TransferOutcome::Complete)
            .collect();
        assert!(bad.is_empty(), "{bad:#?}");
        let _ = &self.root;
    }
}

#[test]
fn curl() {
    if skip_unless("curl") {
        return;
    }
    let f = fixture();
    let url = "tftp://127.0.0.1:{port}/{remote}";
    f.each_file("curl-default", &["curl", "-sS", "-o", "{local}", url]);
    for blk in ["512", "1468", "8192", "65464"] {
        f.each_file(
            &format!("curl-{blk}"),
            &["curl", "-sS", "--tftp-blksize", blk, "-o", "{local}", url],
        );
    }
    f.each_file(
        "curl-noopt",
        &["curl", "-sS", "--tftp-no-options", "-o", "{local}", url],
    );
    f.all_complete(f.files.len() * 6);
}

#[test]
fn busybox() {
    if skip_unless("busybox") {
        return;
    }
    let f = fixture();
    for blk in ["512", "1468", "8192", "65464"] {
        f.each_file(
            &format!("busybox-{blk}"),
            &[
                "busybox",
                "tftp",
                "-g",
                "-b",
                blk,
                "-r",
                "{remote}",
                "-l",
                "{local}",
                "127.0.0.1",
                "{port}",
            ],
        );
    }
    f.all_complete(f.files.len() * 4);
}

#[test]
fn atftp_windowsize() {
    if skip_unless("atftp") {
        return;
    }
    let f = fixture();
    for (blk, win) in [("512", "1"), ("1468", "16"), ("8192", "64"), ("1428", "4")] {
        let o1 = format!("blksize {blk}");
        let o2 = format!("windowsize {win}");
        f.each_file(
            &format!("atftp-{blk}-{win}"),
            &[
                "atftp",
                "-g",
                "-r",
                "{remote}",
                "-l",
                "{local}",
                "--option",
                &o1,
                "--option",
                &o2,
                "--option",
                "tsize 0",
                "127.0.0.1",
                "{port}",
            ],
        );
    }
    f.all_complete(f.files.len() * 4);
}

#[test]
fn tftp_hpa() {
    if skip_unless("tftp") {
        return;
    }
    let f = fixture();
    f.each_file(
        "hpa",
        &[
            "tftp",
            "-m",
            "binary",
            "127.0.0.1",
            "{port}",
            "-c",
            "get",
            "{remote}",
            "{local}",
        ],
    );
    // Netascii: tftp-hpa turns CR LF back into LF, so a text file round-trips.
    let text = b"line one\nline two\n\nend\n".repeat(100);
    std::fs::write(f.root.path().join("notes.txt"), &text).unwrap();
    let local = f.out.path().join("notes");
    let port = f.srv.addr.port().to_string();
    let out = run(
        30,
        &[
            "tftp",
            "-m",
            "ascii",
            "127.0.0.1",
            &port,
            "-c",
            "get",
            "notes.txt",
            local.to_str().unwrap(),
        ],
    );
    check(&out, "tftp-hpa ascii");
    assert_eq!(std::fs::read(&local).unwrap(), text);
    f.all_complete(f.files.len() + 1);
}
