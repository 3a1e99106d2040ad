//! The stage names the boot script and the fetch helper can send, read from their text, are
//! [`Stage`]s the server knows (not `other`), and the failure codes the script sends are
//! [`FailureCode`]s: a stage renamed on one side only fails here, not on a lab's dashboard.

use diskless_boot::{FailureCode, Stage};
use std::path::PathBuf;

fn repo_file(path: &str) -> String {
    let file = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(path);
    std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()))
}

/// Words of `text` that follow `marker` (up to a space, quote or end of line).
fn words_after<'a>(text: &'a str, marker: &str) -> Vec<&'a str> {
    text.match_indices(marker)
        .map(|(i, _)| {
            let rest = &text[i + marker.len()..];
            let end = rest
                .find(|c: char| c.is_whitespace() || c == '"' || c == '\'')
                .unwrap_or(rest.len());
            &rest[..end]
        })
        .collect()
}

/// Stage names in the boot script: `diskless_report NAME ...`, the booted system's
/// `diskless-fetch report URL NAME` (the ready unit), and `failed` from `diskless_fail`.
fn script_stages(script: &str) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for line in script.lines().map(str::trim) {
        if line.starts_with('#') {
            continue;
        }
        if let Some(rest) = line.split("diskless_report ").nth(1) {
            let name = rest.split_whitespace().next().unwrap_or("");
            // The function's own definition passes "$1" on.
            if !name.starts_with('"') {
                names.push(name.to_string());
            }
        }
        if let Some(rest) = line.split("diskless-fetch report ").nth(1) {
            let words: Vec<&str> = rest.split_whitespace().collect();
            if let Some(name) = words.get(1).filter(|w| !w.starts_with('"')) {
                names.push(name.trim_end_matches('"').to_string());
            }
        }
        if line.contains("diskless_fail ") {
            names.push("failed".into());
        }
    }
    names.sort();
    names.dedup();
    names
}

#[test]
fn the_boot_script_sends_only_known_stages() {
    let script = repo_file("initramfs-tools/scripts/diskless");
    let names = script_stages(&script);
    for expected in [
        "network-up",
        "fetching",
        "root-mounted",
        "multi-user",
        "failed",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} not found in the script: the parse below reads nothing ({names:?})"
        );
    }
    for name in &names {
        let stage = Stage::parse(name).unwrap_or_else(|e| panic!("{name:?}: {e}"));
        assert!(
            !matches!(stage, Stage::Other(_)),
            "the boot script sends {name:?}, which diskless_boot::Stage does not know"
        );
    }
    // Failure codes: `reason=CODE`, or a code as diskless_fail's first, unquoted word
    // (variables and placeholders left out: only literal codes can be checked).
    let code: String = script
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n");
    let mut codes = words_after(&code, "reason=");
    codes.extend(words_after(&code, "diskless_fail "));
    let literal =
        |w: &&str| !w.is_empty() && w.bytes().all(|c| c.is_ascii_lowercase() || c == b'-');
    for code in codes.into_iter().filter(literal) {
        // A code the type does not know parses as `other`, whose name differs from it.
        assert_eq!(
            FailureCode::parse(code).as_str(),
            code,
            "the boot script sends the failure code {code:?}, which FailureCode does not know"
        );
    }
}

#[test]
fn the_fetch_helper_sends_only_known_stages() {
    let helper =
        repo_file("crates/fetch/src/fetch.rs") + &repo_file("crates/fetch/src/lazy/mod.rs");
    let names: Vec<&str> = helper
        .lines()
        .filter_map(|l| l.trim().strip_prefix("pub const STAGE_"))
        .filter_map(|l| l.split('"').nth(1))
        .collect();
    for expected in ["fetched", "filled", "network-released"] {
        assert!(names.contains(&expected), "{expected} not in {names:?}");
    }
    for name in names {
        assert!(
            matches!(Stage::parse(name), Ok(s) if !matches!(s, Stage::Other(_))),
            "the fetch helper sends {name:?}, which diskless_boot::Stage does not know"
        );
    }
    // It reports through its constants, never a literal name.
    assert!(
        !helper.contains("post_report(url, \""),
        "the fetch helper posts a stage by a literal name"
    );
}

#[test]
fn the_parse_reads_stage_names_of_each_form() {
    let script = "diskless_report network-up \"ip=x\"\n\
                  \tdiskless-fetch report \"$1\" \"$2\"\n\
                  x=\"ExecStart=-/bin/diskless-fetch report ${url} multi-user\"\n\
                  # diskless_report commented-out\n\
                  diskless_fail \"no network\"\n";
    assert_eq!(
        script_stages(script),
        ["failed", "multi-user", "network-up"]
    );
}
