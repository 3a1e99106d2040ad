//! Any text through the config parser (`Config::parse`: TOML, then the checks TOML types
//! cannot make) and, when it is accepted, through `Site::resolve` as `diskless serve` does at
//! start and on every reload. Invariants: no panic; an error names a line that exists in the
//! text (1 up to one past the last line) and a column on it, a non-empty one-line message,
//! and a field name only when it has one; a config that parses is
//! accepted again when parsed a second time (the checks are deterministic), and resolving it
//! either succeeds or fails with an error, never a panic.
#![no_main]

use diskless_boot::config::Config;
use diskless_boot::Site;
use libfuzzer_sys::fuzz_target;
use std::net::Ipv4Addr;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new("fuzz.toml");
    match Config::parse(text, path) {
        Err(e) => {
            assert!(!e.message.is_empty(), "an error without a message");
            if let Some(line) = e.line {
                let lines = text.lines().count().max(1);
                assert!(
                    (1..=lines + 1).contains(&line),
                    "error on line {line} of a {lines}-line text: {e}"
                );
                let width = text
                    .split('\n')
                    .nth(line - 1)
                    .map_or(0, |l| l.chars().count());
                assert!(
                    e.column.is_some_and(|c| (1..=width + 1).contains(&c)),
                    "error at column {:?} of a {width}-character line: {e}",
                    e.column
                );
            }
            assert!(!e.message.contains('\n'), "a message of several lines: {e}");
            assert!(
                e.field.as_ref().is_none_or(|f| !f.is_empty()),
                "an empty field name: {e:?}"
            );
            assert_eq!(e.path, path);
        }
        Ok(mut config) => {
            assert_eq!(Config::parse(text, path).as_ref(), Ok(&config));
            config.interface.get_or_insert_with(|| "eth0".into());
            for (ip, mask) in [
                ([10, 0, 0, 1], [255, 255, 255, 0]),
                ([192, 168, 7, 254], [255, 255, 0, 0]),
                ([10, 9, 8, 7], [255, 255, 255, 252]),
            ] {
                let _ = Site::resolve(&config, Ipv4Addr::from(ip), Ipv4Addr::from(mask));
            }
        }
    }
});
