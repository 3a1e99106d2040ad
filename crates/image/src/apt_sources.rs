//! The host's Debian mirror, read from its apt sources, so we never hard-code a mirror host.
//!
//! Both formats are read: one-line `deb URI SUITE COMPONENTS` (sources.list, *.list) and
//! deb822 stanzas (`Types: deb` / `URIs:` / `Suites:`, *.sources).

use std::path::Path;

/// The first `deb` mirror found for the Debian archive (not the security archive).
pub fn host_mirror(root: &Path) -> Option<String> {
    let mut files = vec![root.join("etc/apt/sources.list")];
    if let Ok(dir) = std::fs::read_dir(root.join("etc/apt/sources.list.d")) {
        let mut more: Vec<_> = dir.filter_map(|e| e.ok()).map(|e| e.path()).collect();
        more.sort();
        files.extend(more);
    }
    let mut found = Vec::new();
    for file in files {
        let Ok(text) = std::fs::read_to_string(&file) else {
            continue;
        };
        match file.extension().and_then(|e| e.to_str()) {
            Some("sources") => found.extend(deb822_uris(&text)),
            Some("list") | None => found.extend(one_line_uris(&text)),
            _ => {}
        }
    }
    found.into_iter().find(|uri| !uri.contains("security"))
}

fn one_line_uris(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| l.starts_with("deb "))
        .filter_map(|l| {
            // deb [options] URI suite components
            let rest = l.trim_start_matches("deb ").trim_start();
            let rest = if rest.starts_with('[') {
                rest.split_once(']')?.1.trim_start()
            } else {
                rest
            };
            rest.split_whitespace().next().map(str::to_string)
        })
        .collect()
}

fn deb822_uris(text: &str) -> Vec<String> {
    let mut uris = Vec::new();
    for stanza in text.split("\n\n") {
        let mut is_deb = false;
        let mut enabled = true;
        let mut stanza_uris = Vec::new();
        for line in stanza.lines().filter(|l| !l.trim_start().starts_with('#')) {
            let Some((key, value)) = line.split_once(':') else {
                continue;
            };
            match key.trim().to_ascii_lowercase().as_str() {
                "types" => is_deb = value.split_whitespace().any(|t| t == "deb"),
                "uris" => stanza_uris.extend(value.split_whitespace().map(str::to_string)),
                "enabled" => enabled = value.trim() != "no",
                _ => {}
            }
        }
        if is_deb && enabled {
            uris.extend(stanza_uris);
        }
    }
    uris
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_format_with_options() {
        let text = "# comment\ndeb [arch=amd64 signed-by=/k.gpg] http://mirror.example/debian bookworm main\ndeb-src http://x/ bookworm main\n";
        assert_eq!(one_line_uris(text), vec!["http://mirror.example/debian"]);
    }

    #[test]
    fn deb822_format_skips_disabled_and_comments() {
        let text = "Types: deb\n# URIs: http://commented/\nURIs: http://a.example/debian\nSuites: bookworm\n\nTypes: deb\nURIs: http://b.example/\nEnabled: no\n";
        assert_eq!(deb822_uris(text), vec!["http://a.example/debian"]);
    }

    #[test]
    fn security_archive_is_not_the_mirror() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("etc/apt/sources.list.d")).unwrap();
        std::fs::write(
            dir.path().join("etc/apt/sources.list.d/debian.sources"),
            "Types: deb\nURIs: http://sec.example/debian-security\n\nTypes: deb\nURIs: http://main.example/debian\n",
        )
        .unwrap();
        assert_eq!(
            host_mirror(dir.path()).as_deref(),
            Some("http://main.example/debian")
        );
        assert_eq!(host_mirror(Path::new("/nonexistent")), None);
    }
}
