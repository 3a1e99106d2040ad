//! The invariants of the cargo-fuzz targets (fuzz/fuzz_targets/tftp_*.rs), checked on
//! stable over deterministic mutations of real packets, so CI exercises them too.

use std::time::{Duration, Instant};

use diskless_tftp::client::{Options, Transfer};
use diskless_tftp::session::{Session, SessionConfig, Transmit};
use diskless_tftp::wire::{Packet, RequestOptions};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

const SEEDS: &[&[u8]] = &[
    b"\x00\x01pxelinux.0\x00octet\x00tsize\x000\x00blksize\x001468\x00windowsize\x0016\x00",
    b"\x00\x02up\x00netascii\x00",
    b"\x00\x03\x00\x01hello",
    b"\x00\x04\xff\xff",
    b"\x00\x05\x00\x08abort\x00",
    b"\x00\x06blksize\x008\x00tsize\x00100\x00windowsize\x004\x00",
];

fn mutate(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
    let mut v = seed.to_vec();
    for _ in 0..1 + rng.below(4) {
        match rng.below(4) {
            0 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] = rng.next() as u8;
            }
            1 if !v.is_empty() => {
                v.truncate(rng.below(v.len()));
            }
            2 => {
                let i = rng.below(v.len() + 1);
                v.insert(i, [0u8, b'0', b'9', 0xff][rng.below(4)]);
            }
            _ => {
                let i = rng.below(v.len() + 1);
                v.insert(i, rng.next() as u8);
            }
        }
    }
    v
}

#[test]
fn parse_emit_roundtrip() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for i in 0..200_000 {
        let data = mutate(&mut rng, SEEDS[i % SEEDS.len()]);
        let Ok(p) = Packet::parse(&data) else {
            continue;
        };
        let bytes = p.to_vec();
        assert_eq!(bytes.len(), p.buffer_len());
        assert_eq!(Packet::parse(&bytes).unwrap(), p, "input {data:?}");
        if let Packet::Rrq(r) = &p {
            if let Some(b) = RequestOptions::from_raw(&r.options).blksize {
                assert!((8..=65464).contains(&b));
            }
        }
    }
}

#[test]
fn state_machines_survive_arbitrary_packets() {
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    for _ in 0..2_000 {
        let requested = RequestOptions {
            blksize: Some(8 + rng.below(2000) as u16).filter(|_| rng.below(2) == 0),
            windowsize: Some(1 + rng.below(70) as u16).filter(|_| rng.below(2) == 0),
            tsize: Some(0).filter(|_| rng.below(2) == 0),
            timeout: None,
        };
        let size = rng.below(100_000) as u64;
        let mut s = Session::new(&requested, size, &SessionConfig::default());
        let blksize = s.negotiated().blksize;
        let mut c = Transfer::new("f", &Options::default());
        let mut now = Instant::now();
        c.start(now);
        for _ in 0..200 {
            now += Duration::from_micros(rng.below(20_000) as u64);
            while let Some(t) = s.poll_transmit(now) {
                if let Transmit::Data { offset, len, .. } = t {
                    assert!(len <= usize::from(blksize));
                    assert!(offset + len as u64 <= size);
                }
            }
            // Mostly plausible ACKs, sometimes mutated garbage.
            let pkt = if rng.below(3) == 0 {
                let seed = SEEDS[rng.below(SEEDS.len())];
                mutate(&mut rng, seed)
            } else {
                vec![0, 4, rng.next() as u8 & 3, rng.next() as u8]
            };
            match rng.below(4) {
                0 => s.on_timeout(now),
                1 | 2 => {
                    if let Ok(p) = Packet::parse(&pkt) {
                        s.handle(now, &p);
                    }
                }
                _ => {
                    if let Ok(p) = Packet::parse(&pkt) {
                        let _ = c.handle(now, &p);
                    }
                    let _ = c.on_timeout(now);
                }
            }
            if s.outcome().is_some() {
                assert!(s.poll_transmit(now).is_none());
                assert!(s.deadline().is_none());
            }
        }
    }
}
