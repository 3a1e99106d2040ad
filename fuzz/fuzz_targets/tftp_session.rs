//! Drives a server session and a client transfer with arbitrary packets and clock
//! steps. Invariants: no panic; every DATA the session asks for lies inside the file
//! and within blksize; once ended, nothing more is sent.
#![no_main]

use std::time::{Duration, Instant};

use diskless_tftp::client::{Options, Transfer};
use diskless_tftp::session::{Session, SessionConfig, Transmit};
use diskless_tftp::wire::{Packet, RequestOptions};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 8 {
        return;
    }
    let (head, mut rest) = data.split_at(8);
    let requested = RequestOptions {
        blksize: Some(u16::from_le_bytes([head[0], head[1]]).max(8)).filter(|_| head[6] & 1 != 0),
        windowsize: Some(u16::from(head[2]).max(1)).filter(|_| head[6] & 2 != 0),
        tsize: (head[6] & 4 != 0).then_some(0),
        timeout: None,
    };
    let size = u64::from(u32::from_le_bytes([head[3], head[4], head[5], 0]));
    let mut session = Session::new(&requested, size, &SessionConfig::default());
    let blksize = session.negotiated().blksize;
    let mut client = Transfer::new("f", &Options::default());
    let mut now = Instant::now();
    client.start(now);
    while rest.len() >= 2 {
        let kind = rest[0];
        let len = usize::from(rest[1]).min(rest.len() - 2);
        let payload = &rest[2..2 + len];
        rest = &rest[2 + len..];
        now += Duration::from_micros(u64::from(kind) * 97);
        while let Some(t) = session.poll_transmit(now) {
            if let Transmit::Data { offset, len, .. } = t {
                assert!(len <= usize::from(blksize));
                assert!(offset + len as u64 <= size);
            }
        }
        match kind % 4 {
            0 => session.on_timeout(now),
            1 => {
                if let Ok(p) = Packet::parse(payload) {
                    session.handle(now, &p);
                }
            }
            2 => {
                if let Ok(p) = Packet::parse(payload) {
                    let _ = client.handle(now, &p);
                }
            }
            _ => {
                let _ = client.on_timeout(now);
            }
        }
        if session.outcome().is_some() {
            assert!(session.poll_transmit(now).is_none());
        }
    }
});
