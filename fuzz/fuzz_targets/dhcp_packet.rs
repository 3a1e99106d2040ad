//! Any bytes through the DHCP parser, both responders (full and proxy) and
//! both ports, checking the invariants in `diskless_dhcp::fuzzing`: no
//! panic, replies at least 300 bytes that parse back, no address from a
//! proxy, leases only for valid addresses, one holder per address.
//!
//! Each input is split on the byte string "DHCP" into several packets fed
//! in turn to the same responders, so state (offers, leases, declines)
//! carries between them.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut h = diskless_dhcp::fuzzing::Harness::new();
    let mut rest = data;
    while let Some(i) = rest.windows(4).position(|w| w == b"DHCP") {
        h.packet(&rest[..i]);
        rest = &rest[i + 4..];
    }
    h.packet(rest);
});
