//! `tftp://` sources, through the TFTP crate's blocking client: blksize and windowsize are
//! negotiated (the client falls back to lock-step when the server refuses), and the size the
//! server announces (tsize) is checked against RAM before the first block is written.

use crate::fetch::{check_fits, verify, AttemptError, Request, Stats};
use crate::progress::Progress;
use crate::source::Source;
use diskless_tftp::client::{self, Options};
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{self, Write};
use std::time::Instant;

/// Writes to the image file and hashes what it writes.
struct HashingFile {
    file: File,
    hasher: Sha256,
}

impl Write for HashingFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

pub fn fetch(source: &Source, req: &Request, started: Instant) -> Result<Stats, AttemptError> {
    let Source::Tftp { path, .. } = source else {
        return Err(AttemptError::Fatal("not a tftp source".into()));
    };
    let server = source.socket_addr().map_err(AttemptError::Retry)?;
    let file = File::create(&req.out)
        .map_err(|e| AttemptError::Fatal(format!("cannot create {}: {e}", req.out.display())))?;
    let mut sink = HashingFile {
        file,
        hasher: Sha256::new(),
    };
    let mut progress = Progress::new(None, 0);
    let mut size_checked = false;
    let mut on_progress = |p: client::Progress| -> Result<(), String> {
        if !size_checked {
            size_checked = true;
            if let Some(total) = p.tsize {
                progress = Progress::new(Some(total), 0);
                if let Err(AttemptError::Fatal(m) | AttemptError::Retry(m)) =
                    check_fits(total, &req.out)
                {
                    return Err(m);
                }
            }
        }
        progress.update(p.bytes);
        Ok(())
    };
    // RFC 3617: the path of a tftp:// URL is the file name without its leading slash.
    let name = path.trim_start_matches('/');
    let drops_before = udp_receive_drops();
    let summary = match client::fetch(
        server,
        name,
        &Options::default(),
        &mut sink,
        &mut on_progress,
    ) {
        Ok(s) => s,
        Err(client::Error::Aborted(reason)) => {
            let _ = std::fs::remove_file(&req.out);
            return Err(AttemptError::Fatal(reason));
        }
        Err(e) => return Err(AttemptError::Retry(e.to_string())),
    };
    sink.file.sync_all()?;
    progress.finish(summary.bytes);
    // Datagrams the kernel dropped for a full receive buffer during the transfer (all
    // UDP sockets, but nothing else is busy in the initramfs): each one costs a gap.
    let drops = match (drops_before, udp_receive_drops()) {
        (Some(a), Some(b)) => format!(", {} UDP receive-buffer drops", b.saturating_sub(a)),
        _ => String::new(),
    };
    eprintln!(
        "diskless: tftp blksize {} windowsize {}, {} timeouts{drops}",
        summary.blksize, summary.windowsize, summary.timeouts
    );
    verify(
        sink.hasher.finalize().into(),
        &req.expected_sha256,
        &req.out,
    )?;
    Ok(Stats {
        bytes: summary.bytes,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// `RcvbufErrors` of the `Udp:` lines in `/proc/net/snmp`, if readable.
fn udp_receive_drops() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/net/snmp").ok()?;
    let mut udp = text.lines().filter(|l| l.starts_with("Udp:"));
    let (names, values) = (udp.next()?, udp.next()?);
    let i = names.split_whitespace().position(|n| n == "RcvbufErrors")?;
    values.split_whitespace().nth(i)?.parse().ok()
}
