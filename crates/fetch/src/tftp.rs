//! `tftp://` sources, through the TFTP crate's blocking client: blksize and windowsize are
//! negotiated (the client falls back to lock-step when the server refuses), and the size the
//! server announces (tsize) is checked against RAM before the first block is written.

use crate::sink::{AttemptError, Sink};
use crate::source::Source;
use diskless_tftp::client::{self, Options};
use std::cell::RefCell;
use std::io::{self, Write};

/// The sink as the TFTP client's writer, while its progress callback may also reach it (the
/// client calls them one after the other, never at once).
struct Shared<'a>(&'a RefCell<&'a mut Sink>);

impl Write for Shared<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.borrow_mut().write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.borrow_mut().flush()
    }
}

/// Fetch `source` into `sink`.
pub fn fetch(source: &Source, sink: &mut Sink) -> Result<(), AttemptError> {
    let Source::Tftp { path, .. } = source else {
        return Err(AttemptError::Fatal("not a tftp source".into()));
    };
    let server = source.socket_addr().map_err(AttemptError::Retry)?;
    let sink = RefCell::new(sink);
    let mut size_checked = false;
    let mut on_progress = |p: client::Progress| -> Result<(), String> {
        if !size_checked {
            size_checked = true;
            if let Some(total) = p.tsize {
                sink.borrow_mut()
                    .expect_total(total)
                    .map_err(AttemptError::message)?;
            }
        }
        Ok(())
    };
    // RFC 3617: the path of a tftp:// URL is the file name without its leading slash.
    let name = path.trim_start_matches('/');
    let drops_before = udp_receive_drops();
    let summary = match client::fetch(
        server,
        name,
        &Options::default(),
        &mut Shared(&sink),
        &mut on_progress,
    ) {
        Ok(s) => s,
        Err(client::Error::Aborted(reason)) => {
            sink.borrow().discard();
            return Err(AttemptError::Fatal(reason));
        }
        Err(e) => return Err(AttemptError::Retry(e.to_string())),
    };
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
    Ok(())
}

/// `RcvbufErrors` of the `Udp:` lines in `/proc/net/snmp`, if readable.
fn udp_receive_drops() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/net/snmp").ok()?;
    let mut udp = text.lines().filter(|l| l.starts_with("Udp:"));
    let (names, values) = (udp.next()?, udp.next()?);
    let i = names.split_whitespace().position(|n| n == "RcvbufErrors")?;
    values.split_whitespace().nth(i)?.parse().ok()
}
