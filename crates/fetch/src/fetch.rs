//! `diskless-fetch get`: download the image into the RAM disk, checking size and sha256.
//!
//! The order of checks is the point of this file: the size is compared with free RAM and the
//! tmpfs before a byte is written; the digest is computed while writing and compared before
//! the boot script may mount anything; a mismatch deletes the file and retries.

use crate::http;
use crate::multicast;
use crate::progress::Progress;
use crate::sink::{AttemptError, Sink};
use crate::source::Source;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::Duration;

/// The stage this helper reports once the image is in and verified (a name of
/// `diskless_boot::Stage`: a test there reads every `STAGE_` constant of this file).
pub const STAGE_FETCHED: &str = "fetched";

/// Added to the `fetched` detail when multicast was asked for and nothing arrived (read back
/// by `diskless_boot::multicast::MulticastFetch`, tested in `crate::multicast`).
pub const NOTE_UNREACHABLE: &str = " multicast=unreachable";
/// The same when the session could not be used.
pub const NOTE_FAILED: &str = " multicast=failed";

pub struct Request {
    pub sources: Vec<Source>,
    /// None (`--verity`): the image is mounted through dm-verity, which checks each block
    /// against the hash tree when it is read; no whole-file digest is computed.
    pub expected_sha256: Option<[u8; 32]>,
    pub out: PathBuf,
    pub retries: u32,
    /// Where to report "fetched" with the measured rate (best effort).
    pub report_url: Option<String>,
    /// The boot server's multicast join URL: try the session first (`crate::multicast`).
    pub multicast: Option<String>,
}

pub fn parse_sha256(text: &str) -> Result<[u8; 32], String> {
    let text = text.trim();
    if text.len() != 64 {
        return Err(format!(
            "--sha256 must be 64 hex digits, got {} characters",
            text.len()
        ));
    }
    let mut out = [0u8; 32];
    for (i, chunk) in text.as_bytes().chunks(2).enumerate() {
        let pair = std::str::from_utf8(chunk).map_err(|_| "--sha256 is not hex".to_string())?;
        out[i] =
            u8::from_str_radix(pair, 16).map_err(|_| format!("--sha256: {pair:?} is not hex"))?;
    }
    Ok(out)
}

/// How the fetched image is checked, as the console says it.
fn verified_by(req: &Request) -> &'static str {
    match req.expected_sha256 {
        Some(_) => "sha256 verified",
        None => "each block to be verified by dm-verity as it is read",
    }
}

pub fn run(req: Request) -> Result<(), String> {
    // Said in the `fetched` report when multicast was asked for and HTTP did the work.
    let mut multicast_note = "";
    if let Some(join_url) = &req.multicast {
        match multicast::fetch(
            join_url,
            &req.sources,
            req.expected_sha256.as_ref(),
            &req.out,
        ) {
            Ok(multicast::Outcome::Done(stats)) => {
                let detail = stats.report_detail();
                eprintln!(
                    "diskless: fetched {} in {:.1} s: {} by multicast, {} by HTTP, {} ({detail})",
                    Progress::human_bytes(stats.image_bytes),
                    stats.seconds,
                    Progress::human_bytes(stats.multicast_bytes),
                    Progress::human_bytes(stats.http_bytes),
                    verified_by(&req)
                );
                if let Some(url) = &req.report_url {
                    let _ = http::post_report(url, STAGE_FETCHED, &detail);
                }
                return Ok(());
            }
            Ok(multicast::Outcome::Unreachable(why)) => {
                eprintln!("diskless: {why}; fetching by HTTP");
                multicast_note = NOTE_UNREACHABLE;
            }
            Err(e) => {
                eprintln!("diskless: multicast: {e}; fetching by HTTP");
                multicast_note = NOTE_FAILED;
            }
        }
    }
    // What an interrupted HTTP download left, to resume from.
    let mut partial: Option<Sink> = None;
    let mut last_error = String::new();
    let attempts = req.retries + 1;
    for attempt in 1..=attempts {
        for source in &req.sources {
            eprintln!("diskless: fetching {source} (attempt {attempt} of {attempts})");
            match fetch_once(source, &req, &mut partial) {
                Ok(stats) => {
                    eprintln!(
                        "diskless: fetched {} in {:.1} s ({:.1} MB/s), {}",
                        Progress::human_bytes(stats.bytes),
                        stats.seconds,
                        stats.megabytes_per_second(),
                        verified_by(&req)
                    );
                    if let Some(url) = &req.report_url {
                        let detail = format!("{}{multicast_note}", stats.report_detail());
                        let _ = http::post_report(url, STAGE_FETCHED, &detail);
                    }
                    return Ok(());
                }
                Err(AttemptError::Fatal(message)) => return Err(message),
                Err(AttemptError::Retry(message)) => {
                    eprintln!("diskless: {source}: {message}");
                    last_error = format!("{source}: {message}");
                }
            }
        }
        if attempt < attempts {
            let pause = backoff(attempt);
            eprintln!("diskless: retrying in {} s", pause.as_secs());
            std::thread::sleep(pause);
        }
    }
    let _ = fs::remove_file(&req.out);
    Err(format!(
        "could not fetch the image after {attempts} attempts; last error: {last_error}"
    ))
}

/// 1, 2, 4, 8 ... seconds, capped at 30: a server being restarted gets time to come back.
fn backoff(attempt: u32) -> Duration {
    Duration::from_secs((1u64 << (attempt - 1).min(5)).min(30))
}

pub struct Stats {
    pub bytes: u64,
    pub seconds: f64,
}

impl Stats {
    pub fn megabytes_per_second(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.seconds.max(1e-6)
    }

    /// The detail of the `fetched` report, `bytes=N seconds=S mbps=M`: what the server reads
    /// back with `diskless_boot::FetchedDetail::parse` (tested below; the helper stays free of
    /// the server's crates).
    pub fn report_detail(&self) -> String {
        format!(
            "bytes={} seconds={:.2} mbps={:.1}",
            self.bytes,
            self.seconds,
            self.megabytes_per_second()
        )
    }
}

fn fetch_once(
    source: &Source,
    req: &Request,
    partial: &mut Option<Sink>,
) -> Result<Stats, AttemptError> {
    let started = std::time::Instant::now();
    let resume_from = match (source, partial.as_ref()) {
        (Source::Http { .. }, Some(p)) => p.bytes(),
        _ => 0,
    };
    let mut body = match source {
        Source::Http { .. } => http::get(source, resume_from).map_err(AttemptError::Retry)?,
        Source::Tftp { .. } => {
            // TFTP cannot resume: start over.
            *partial = None;
            let mut sink = Sink::create(&req.out, req.expected_sha256.is_some())?;
            crate::tftp::fetch(source, &mut sink)?;
            return finish(sink, req, started);
        }
        Source::File { path } => {
            *partial = None;
            local_file(path)?
        }
    };
    // The server may ignore the Range request and send the whole file again.
    let mut sink = match partial.take() {
        Some(sink) if resume_from > 0 && body.resumed => {
            eprintln!(
                "diskless: resuming at {}",
                Progress::human_bytes(sink.bytes())
            );
            sink
        }
        _ => Sink::create(&req.out, req.expected_sha256.is_some())?,
    };
    if let Some(total) = body.total_len {
        sink.expect_total(total)?;
    }
    let (result, sink) = pump(&mut body, sink);
    if let Err(e) = result.and_then(|()| sink.check_complete()) {
        // Keep what we have: the next HTTP attempt asks only for the rest.
        *partial = Some(sink);
        return Err(e);
    }
    finish(sink, req, started)
}

fn finish(sink: Sink, req: &Request, started: std::time::Instant) -> Result<Stats, AttemptError> {
    let bytes = sink.finish(req.expected_sha256.as_ref())?;
    Ok(Stats {
        bytes,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Buffers in flight between the reading and the hashing thread.
const PIPELINE_DEPTH: usize = 8;
const BUFFER_SIZE: usize = 256 * 1024;

/// Copy `body` into `sink`. Reading the network and hashing + writing run on two threads,
/// so a slow hash (or a slow tmpfs) does not stall the TCP window and a slow network does not
/// leave the hash idle. Returns the sink, holding exactly the bytes written, whatever
/// happened.
fn pump(body: &mut dyn Read, mut sink: Sink) -> (Result<(), AttemptError>, Sink) {
    let (full_tx, full_rx) = std::sync::mpsc::sync_channel::<(Vec<u8>, usize)>(PIPELINE_DEPTH);
    let (empty_tx, empty_rx) = std::sync::mpsc::channel::<Vec<u8>>();
    for _ in 0..PIPELINE_DEPTH {
        let _ = empty_tx.send(vec![0u8; BUFFER_SIZE]);
    }
    let writer = std::thread::spawn(move || {
        let mut result = Ok(());
        for (buf, n) in full_rx {
            if result.is_ok() {
                if let Err(e) = sink.write_all(&buf[..n]) {
                    result = Err(sink.write_error(e));
                }
            }
            let _ = empty_tx.send(buf);
        }
        (result, sink)
    });
    let mut read_result = Ok(());
    while let Ok(mut buf) = empty_rx.recv() {
        match body.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if full_tx.send((buf, n)).is_err() {
                    break; // the writer stopped on an error: it reports it
                }
            }
            Err(e) => {
                read_result = Err(AttemptError::Retry(format!("download interrupted: {e}")));
                break;
            }
        }
    }
    drop(full_tx);
    let (write_result, sink) = writer.join().expect("writer thread");
    (write_result.and(read_result), sink)
}

/// A local file (an image on the client's own disk) as a download body.
fn local_file(path: &str) -> Result<http::Body, AttemptError> {
    let file = File::open(path).map_err(|e| AttemptError::Retry(format!("opening {path}: {e}")))?;
    let len = file
        .metadata()
        .map_err(|e| AttemptError::Retry(format!("{path}: {e}")))?
        .len();
    Ok(http::Body::from_reader(Box::new(file), len))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};
    use std::io::{BufRead, BufReader};
    use std::net::TcpListener;
    use std::path::Path;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[test]
    fn the_fetched_report_is_what_the_server_parses() {
        let stats = Stats {
            bytes: 161 << 20,
            seconds: 6.5,
        };
        let parsed = diskless_boot::FetchedDetail::parse(&stats.report_detail())
            .expect("the server reads the helper's detail");
        assert_eq!(parsed.bytes, stats.bytes);
        assert_eq!(parsed.seconds, stats.seconds);
        assert_eq!(
            diskless_boot::Stage::parse(STAGE_FETCHED),
            Ok(diskless_boot::Stage::Fetched)
        );
    }

    /// An HTTP server on loopback that serves `data`, honours Range, and cuts the first
    /// `cut_first` connections off after `cut_at` bytes (a server stopped mid-download).
    fn server(data: Vec<u8>, cut_first: usize, cut_at: usize) -> (String, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/root.squashfs", listener.local_addr().unwrap());
        let requests = Arc::new(AtomicUsize::new(0));
        let count = requests.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let mut conn = conn.unwrap();
                let n = count.fetch_add(1, Ordering::SeqCst);
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut start = 0usize;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap() == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some(r) = line.strip_prefix("Range: bytes=") {
                        start = r.trim().trim_end_matches('-').parse().unwrap();
                    }
                }
                let body = &data[start..];
                let head = if start > 0 {
                    format!(
                        "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {start}-{}/{}\r\nContent-Length: {}\r\n\r\n",
                        data.len() - 1,
                        data.len(),
                        body.len()
                    )
                } else {
                    format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len())
                };
                let _ = conn.write_all(head.as_bytes());
                let send = if n < cut_first {
                    &body[..cut_at.min(body.len())]
                } else {
                    body
                };
                let _ = conn.write_all(send);
            }
        });
        (url, requests)
    }

    fn request(url: &str, data: &[u8], dir: &Path) -> Request {
        Request {
            sources: vec![Source::parse(url).unwrap()],
            expected_sha256: Some(Sha256::digest(data).into()),
            out: dir.join("root.squashfs"),
            retries: 3,
            report_url: None,
            multicast: None,
        }
    }

    fn payload() -> Vec<u8> {
        (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect()
    }

    #[test]
    fn downloads_and_verifies() {
        let data = payload();
        let (url, _) = server(data.clone(), 0, 0);
        let dir = tempfile::tempdir().unwrap();
        run(request(&url, &data, dir.path())).unwrap();
        assert_eq!(fs::read(dir.path().join("root.squashfs")).unwrap(), data);
    }

    #[test]
    fn an_interrupted_download_resumes_with_range() {
        let data = payload();
        let (url, requests) = server(data.clone(), 1, 1_000_000);
        let dir = tempfile::tempdir().unwrap();
        run(request(&url, &data, dir.path())).unwrap();
        assert_eq!(fs::read(dir.path().join("root.squashfs")).unwrap(), data);
        assert_eq!(
            requests.load(Ordering::SeqCst),
            2,
            "one cut, one resumed request"
        );
    }

    /// A tmpfs mounted on a fresh directory for one test, unmounted when dropped.
    struct Tmpfs(tempfile::TempDir);

    impl Tmpfs {
        fn mount(size: &str) -> Tmpfs {
            let dir = tempfile::tempdir().unwrap();
            let status = std::process::Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
                .arg(dir.path())
                .status()
                .unwrap();
            assert!(status.success(), "mount tmpfs on {}", dir.path().display());
            Tmpfs(dir)
        }
    }

    impl Drop for Tmpfs {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg(self.0.path())
                .status();
        }
    }

    #[test]
    fn a_download_resumes_on_a_ram_disk_with_room_only_for_the_rest() {
        if !diskless_testkit::root_with_tools(&["mount", "umount"]) {
            return;
        }
        let data = payload();
        // The RAM disk 1.3 times the image, the server stopped two thirds of the way: the
        // room left after the partial file is less than the whole image, more than the rest.
        let ram_disk = Tmpfs::mount("3900k");
        let cut_at = 2_000_000;
        let (url, requests) = server(data.clone(), 1, cut_at);
        run(request(&url, &data, ram_disk.0.path())).unwrap();
        assert_eq!(
            fs::read(ram_disk.0.path().join("root.squashfs")).unwrap(),
            data
        );
        assert_eq!(
            requests.load(Ordering::SeqCst),
            2,
            "one cut, one resumed request"
        );
    }

    #[test]
    fn a_corrupt_image_is_refused_and_removed() {
        let data = payload();
        let (url, requests) = server(data.clone(), 0, 0);
        let dir = tempfile::tempdir().unwrap();
        let mut req = request(&url, b"another image", dir.path());
        req.retries = 1;
        let err = run(req).unwrap_err();
        assert!(err.contains("sha256 mismatch"), "{err}");
        assert!(!dir.path().join("root.squashfs").exists());
        assert_eq!(requests.load(Ordering::SeqCst), 2, "retried once");
    }

    #[test]
    fn downloads_over_tftp_from_our_server() {
        let data = payload();
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("images")).unwrap();
        std::fs::write(root.path().join("images/root.squashfs"), &data).unwrap();
        let config = diskless_tftp::server::ServerConfig::new(root.path());
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        // Bound before the client starts: no race with its first request.
        let socket = runtime
            .block_on(async { diskless_tftp::server::bind("127.0.0.1:0".parse().unwrap()) })
            .unwrap();
        let addr = socket.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = runtime.spawn(diskless_tftp::server::serve(socket, config, async {
            let _ = stopped.await;
        }));
        let dir = tempfile::tempdir().unwrap();
        let url = format!("tftp://{addr}/images/root.squashfs");
        run(request(&url, &data, dir.path())).unwrap();
        assert_eq!(fs::read(dir.path().join("root.squashfs")).unwrap(), data);
        let _ = stop.send(());
        runtime.block_on(server).unwrap().unwrap();
    }

    #[test]
    fn copies_a_local_image_with_the_same_checks() {
        let data = payload();
        let disk = tempfile::tempdir().unwrap();
        let image = disk.path().join("root.squashfs");
        fs::write(&image, &data).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}", image.display());
        run(request(&url, &data, dir.path())).unwrap();
        assert_eq!(fs::read(dir.path().join("root.squashfs")).unwrap(), data);
        let mut wrong = request(&url, b"other", dir.path());
        wrong.retries = 0;
        assert!(run(wrong).unwrap_err().contains("sha256 mismatch"));
    }

    #[test]
    fn falls_back_to_the_next_server() {
        let data = payload();
        let dead = TcpListener::bind("127.0.0.1:0").unwrap();
        let dead_url = format!("http://{}/x", dead.local_addr().unwrap());
        drop(dead);
        let (url, _) = server(data.clone(), 0, 0);
        let dir = tempfile::tempdir().unwrap();
        let mut req = request(&url, &data, dir.path());
        req.sources.insert(0, Source::parse(&dead_url).unwrap());
        run(req).unwrap();
        assert_eq!(fs::read(dir.path().join("root.squashfs")).unwrap(), data);
    }

    #[test]
    fn sha256_parsing_rejects_bad_input() {
        assert!(parse_sha256("abc").unwrap_err().contains("64 hex digits"));
        assert!(parse_sha256(&"zz".repeat(32))
            .unwrap_err()
            .contains("not hex"));
        let ok = parse_sha256(&"0f".repeat(32)).unwrap();
        assert_eq!(ok, [0x0f; 32]);
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        assert_eq!(backoff(1), Duration::from_secs(1));
        assert_eq!(backoff(3), Duration::from_secs(4));
        assert_eq!(backoff(20), Duration::from_secs(30));
    }
}
