//! Any datagram: parsing never panics, and what parses emits back to bytes that parse
//! to the same packet. Option interpretation never panics either.
#![no_main]

use diskless_tftp::wire::{Packet, RequestOptions};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(p) = Packet::parse(data) else {
        return;
    };
    let bytes = p.to_vec();
    assert_eq!(bytes.len(), p.buffer_len());
    let again = Packet::parse(&bytes).expect("emitted packet parses");
    assert_eq!(again, p);
    match &p {
        Packet::Rrq(r) | Packet::Wrq(r) => {
            let o = RequestOptions::from_raw(&r.options);
            if let Some(b) = o.blksize {
                assert!((8..=65464).contains(&b));
            }
        }
        Packet::Oack { options } => {
            let _ = RequestOptions::from_raw(options);
        }
        _ => {}
    }
});
