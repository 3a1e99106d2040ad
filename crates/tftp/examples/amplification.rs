//! What read requests that are never acknowledged make the server send, as a forged
//! request would (docs/BENCHMARKS.md, "TFTP amplification"):
//!
//! `cargo run --release -p diskless-tftp --example amplification [-- --before]`
//!
//! On loopback: (1) one request without options, (2) 200 requests from one address within
//! a second. Nothing is ever acknowledged; the bytes that come back are counted until the
//! server has been silent for 12 s (above its longest retransmission interval, 10 s).
//! Bytes are counted both ways as UDP payload and as IPv4 packets (28 bytes of IPv4 and UDP
//! headers more per packet). The request names a file as long as a real one
//! (`debian-installer/amd64/bootnetx64.efi`, a 46-byte request). `--before` runs the server as it was before
//! issue 22 (12 retransmissions whether or not the client ever answered, no limit per
//! source) for comparison.

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use diskless_tftp::admission::SourceLimits;
use diskless_tftp::server::{self, ServerConfig};

/// A read request for `name`, octet mode, no options: the smallest that draws a DATA packet.
fn rrq(name: &str) -> Vec<u8> {
    let mut p = vec![0, 1];
    p.extend_from_slice(name.as_bytes());
    p.push(0);
    p.extend_from_slice(b"octet\0");
    p
}

/// A real netboot path: the request is 46 bytes, as long as the issue's ~45.
const NAME: &str = "debian-installer/amd64/bootnetx64.efi";

/// IPv4 and UDP headers in front of each payload.
const HEADERS: usize = 28;

struct Count {
    bytes_in: usize,
    bytes_out: usize,
    packets_out: usize,
    seconds: f64,
}

/// Sends `requests` read requests from one socket within about a second, acknowledges
/// nothing and counts what arrives until 12 s of silence.
fn measure(server: SocketAddr, requests: usize) -> Count {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let req = rrq(NAME);
    let started = Instant::now();
    for _ in 0..requests {
        sock.send_to(&req, server).unwrap();
        if requests > 1 {
            std::thread::sleep(Duration::from_secs(1) / requests as u32);
        }
    }
    let bytes_in = req.len() * requests;
    let (mut bytes_out, mut packets_out) = (0, 0);
    let mut buf = [0u8; 2048];
    let mut last = Instant::now();
    sock.set_read_timeout(Some(Duration::from_secs(12)))
        .unwrap();
    while let Ok((n, _)) = sock.recv_from(&mut buf) {
        bytes_out += n;
        packets_out += 1;
        last = Instant::now();
    }
    Count {
        bytes_in,
        bytes_out,
        packets_out,
        seconds: (last - started).as_secs_f64(),
    }
}

fn main() {
    let before = std::env::args().any(|a| a == "--before");
    let root = std::env::temp_dir().join(format!("amplification-{}", std::process::id()));
    std::fs::create_dir_all(&root).unwrap();
    let file = root.join(NAME);
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    std::fs::write(&file, vec![0x5a; 1 << 20]).unwrap();
    let mut config = ServerConfig::new(&root);
    if before {
        config.session.max_unanswered_retries = config.session.max_retries;
        config.per_source = SourceLimits::unlimited();
    }
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let sock = server::bind("127.0.0.1:0".parse().unwrap()).unwrap();
            tx.send(sock.local_addr().unwrap()).unwrap();
            server::serve(sock, config, std::future::pending()).await
        })
        .unwrap();
    });
    let server = rx.recv().unwrap();
    println!(
        "server: {}",
        if before {
            "as before issue 22"
        } else {
            "as built"
        }
    );
    println!("| requests | bytes in (UDP payload) | packets out | bytes out (UDP payload) | out/in (payload) | out/in (IPv4) | last packet after (s) |");
    println!("|---|---|---|---|---|---|---|");
    for requests in [1, 200] {
        let c = measure(server, requests);
        println!(
            "| {requests} | {} | {} | {} | {:.1} | {:.1} | {:.1} |",
            c.bytes_in,
            c.packets_out,
            c.bytes_out,
            c.bytes_out as f64 / c.bytes_in as f64,
            (c.bytes_out + HEADERS * c.packets_out) as f64
                / (c.bytes_in + HEADERS * requests) as f64,
            c.seconds
        );
    }
    let _ = std::fs::remove_dir_all(&root);
}
