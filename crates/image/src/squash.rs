//! Running mksquashfs and reading what it prints.
//!
//! mksquashfs (4.5) draws its progress bar on stdout even when stdout is a pipe: segments like
//! `[=====/      ] 120/486  24%` separated by `\r`, then its statistics. We always read its
//! stdout: on a terminal the bytes are passed through unchanged (the user sees the bar), and
//! otherwise [`Progress`] turns the bar into a plain line now and then, for logs. The
//! statistics give the uncompressed size of the tree ([`Stats`]), for the ratio.

use crate::command::{self, CommandError};
use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// What mksquashfs reports at the end of a build.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stats {
    /// Bytes of the image as mksquashfs counts them (`Filesystem size`).
    pub image_bytes: u64,
    /// Bytes of what went in (`of uncompressed filesystem size`): data plus metadata.
    pub uncompressed_bytes: u64,
}

/// `Filesystem size 19000.60 Kbytes (18.56 Mbytes)` and
/// `31.40% of uncompressed filesystem size (60518.07 Kbytes)`.
pub fn parse_stats(text: &str) -> Option<Stats> {
    let kbytes = |line: &str, prefix: &str| -> Option<u64> {
        let rest = line.trim().strip_prefix(prefix)?;
        let number = rest.trim_start_matches('(').split_whitespace().next()?;
        Some((number.parse::<f64>().ok()? * 1024.0).round() as u64)
    };
    let mut image = None;
    let mut uncompressed = None;
    for line in text.lines() {
        if let Some(v) = kbytes(line, "Filesystem size ") {
            image = Some(v);
        }
        if let Some((_, tail)) = line.split_once("% of uncompressed filesystem size ") {
            uncompressed = kbytes(tail, "");
        }
    }
    Some(Stats {
        image_bytes: image?,
        uncompressed_bytes: uncompressed?,
    })
}

/// The percentage at the end of one progress bar segment: `[==|  ] 12/486  2%` -> 2.
fn bar_percent(segment: &str) -> Option<u32> {
    let s = segment.trim();
    if !s.starts_with('[') {
        return None;
    }
    s.strip_suffix('%')?.rsplit(' ').next()?.parse().ok()
}

/// Turns mksquashfs's progress bar into plain lines: one at the first figure, then whenever
/// it has moved 10 points, or moved at all after 5 s of silence, and one at 100 %.
#[derive(Debug, Default)]
pub struct Progress {
    partial: Vec<u8>,
    shown: Option<(u32, Instant)>,
}

/// Lines are printed at most this often unless the figure moved [`Progress::STEP`] points.
const QUIET_FOR: Duration = Duration::from_secs(5);

impl Progress {
    /// Percentage points between two lines when they come fast.
    pub const STEP: u32 = 10;

    /// Feed bytes of mksquashfs's stdout read at `now`; returns the percentages to print.
    pub fn feed(&mut self, bytes: &[u8], now: Instant) -> Vec<u32> {
        let mut out = Vec::new();
        for &b in bytes {
            if b == b'\r' || b == b'\n' {
                let segment = std::mem::take(&mut self.partial);
                if let Some(p) = bar_percent(&String::from_utf8_lossy(&segment)) {
                    if self.should_show(p, now) {
                        self.shown = Some((p, now));
                        out.push(p);
                    }
                }
            } else if self.partial.len() < 4096 {
                self.partial.push(b);
            }
        }
        out
    }

    fn should_show(&self, p: u32, now: Instant) -> bool {
        match self.shown {
            None => true,
            Some((last, _)) if p <= last => false,
            Some((last, at)) => {
                p >= last + Self::STEP || p == 100 || now.duration_since(at) >= QUIET_FOR
            }
        }
    }
}

/// How mksquashfs's output reaches the user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Display {
    /// Pass its stdout through: the bar on a terminal.
    Bar,
    /// `diskless: mksquashfs NN%` lines on stderr, for logs.
    Lines,
}

/// Run mksquashfs (`cmd` is complete, progress bar not disabled); returns its statistics
/// when it printed them. Errors keep the argv and the tail of stderr.
pub fn run(cmd: &mut Command, display: Display) -> Result<Option<Stats>, CommandError> {
    let shown = command::argv(cmd);
    let fail = |reason: String, stderr: String| CommandError {
        argv: shown.clone(),
        reason,
        stderr,
    };
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| fail(command::start_reason(&e), String::new()))?;
    let mut stderr_pipe = child.stderr.take().expect("stderr is piped");
    let stderr_reader = std::thread::spawn(move || {
        let mut text = Vec::new();
        let _ = stderr_pipe.read_to_end(&mut text);
        text
    });
    let mut stdout_pipe = child.stdout.take().expect("stdout is piped");
    let mut progress = Progress::default();
    // The statistics are in the last few KiB; the bar before them can be long.
    let mut tail: Vec<u8> = Vec::new();
    let mut buf = [0u8; 8192];
    let mut terminal = std::io::stdout();
    loop {
        let n = match stdout_pipe.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        let chunk = &buf[..n];
        match display {
            Display::Bar => {
                let _ = terminal.write_all(chunk);
                let _ = terminal.flush();
            }
            Display::Lines => {
                for p in progress.feed(chunk, Instant::now()) {
                    eprintln!("diskless: mksquashfs {p}%");
                }
            }
        }
        tail.extend_from_slice(chunk);
        if tail.len() > 1 << 16 {
            tail.drain(..tail.len() - (1 << 15));
        }
    }
    let status = child
        .wait()
        .map_err(|e| fail(format!("could not wait for it: {e}"), String::new()))?;
    let stderr = stderr_reader.join().unwrap_or_default();
    if !status.success() {
        return Err(fail(status.to_string(), command::tail(&stderr)));
    }
    Ok(parse_stats(
        &String::from_utf8_lossy(&tail).replace('\r', "\n"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATS: &str =
        "\nExportable Squashfs 4.0 filesystem, gzip compressed, data block size 131072\n\
\tcompressed data, compressed metadata, compressed fragments,\n\
Filesystem size 19000.60 Kbytes (18.56 Mbytes)\n\
\t31.40% of uncompressed filesystem size (60518.07 Kbytes)\n\
Inode table size 676 bytes (0.66 Kbytes)\n\
\t23.04% of uncompressed inode table size (2934 bytes)\n";

    #[test]
    fn stats_from_mksquashfs_output() {
        let s = parse_stats(STATS).unwrap();
        assert_eq!(s.image_bytes, 19_456_614);
        assert_eq!(s.uncompressed_bytes, 61_970_504);
        assert_eq!(
            parse_stats("Parallel mksquashfs: Using 2 processors\n"),
            None
        );
    }

    #[test]
    fn bar_segments() {
        assert_eq!(bar_percent("[====|     ] 120/486  24%"), Some(24));
        assert_eq!(bar_percent("[===|] 486/486 100%"), Some(100));
        assert_eq!(bar_percent("\t31.40% of uncompressed"), None);
        assert_eq!(bar_percent("[broken"), None);
    }

    #[test]
    fn progress_lines_every_ten_points_or_after_five_seconds() {
        let t0 = Instant::now();
        let mut p = Progress::default();
        let bar = |n: u32| format!("\r[===   ] {n}/100 {n}%");
        assert_eq!(
            p.feed(b"Parallel mksquashfs: Using 2 processors\n", t0),
            [0u32; 0]
        );
        assert_eq!(
            p.feed(bar(1).as_bytes(), t0),
            [0u32; 0],
            "segment not ended yet"
        );
        assert_eq!(p.feed(b"\r", t0), [1]);
        let mut got = Vec::new();
        for n in 2..=30 {
            got.extend(p.feed(format!("{}\r", bar(n)).as_bytes(), t0));
        }
        assert_eq!(got, [11, 21]);
        // Slow progress: a line once 5 s have passed, not before.
        let t1 = t0 + Duration::from_secs(4);
        assert_eq!(p.feed(format!("{}\r", bar(22)).as_bytes(), t1), [0u32; 0]);
        let t2 = t0 + Duration::from_secs(6);
        assert_eq!(p.feed(format!("{}\r", bar(23)).as_bytes(), t2), [23]);
        // No news after 5 s is not a line; the end always is.
        let t3 = t2 + Duration::from_secs(10);
        assert_eq!(p.feed(format!("{}\r", bar(23)).as_bytes(), t3), [0u32; 0]);
        assert_eq!(p.feed(format!("{}\n", bar(100)).as_bytes(), t3), [100]);
        assert_eq!(
            p.feed(format!("{}\n{STATS}", bar(100)).as_bytes(), t3),
            [0u32; 0]
        );
    }
}
