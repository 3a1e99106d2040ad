//! The host's Debian mirror and its components, read from its apt sources, so we never
//! hard-code a mirror host nor assume a component the site did not choose.
//!
//! Both formats are read: one-line `deb URI SUITE COMPONENTS` (sources.list, *.list) and
//! deb822 stanzas (`Types: deb` / `URIs:` / `Suites:` / `Components:`, *.sources).

use std::path::Path;

/// One `deb` source: its URI and the components it names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub uri: String,
    pub components: Vec<String>,
}

/// Every enabled `deb` source of the host's apt configuration under `root`, in apt's order.
pub fn host_sources(root: &Path) -> Vec<Source> {
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
            Some("sources") => found.extend(deb822_sources(&text)),
            Some("list") | None => found.extend(one_line_sources(&text)),
            _ => {}
        }
    }
    found
}

/// The first `deb` mirror found for the Debian archive (not the security archive).
pub fn host_mirror(root: &Path) -> Option<String> {
    host_sources(root)
        .into_iter()
        .map(|s| s.uri)
        .find(|uri| !uri.contains("security"))
}

/// Whether the host's source for `mirror` names `component` (non-free-firmware, say).
pub fn host_has_component(root: &Path, mirror: &str, component: &str) -> bool {
    host_sources(root)
        .iter()
        .any(|s| s.uri == mirror && s.components.iter().any(|c| c == component))
}

fn one_line_sources(text: &str) -> Vec<Source> {
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
            let mut words = rest.split_whitespace();
            let uri = words.next()?.to_string();
            let _suite = words.next();
            Some(Source {
                uri,
                components: words.map(str::to_string).collect(),
            })
        })
        .collect()
}

fn deb822_sources(text: &str) -> Vec<Source> {
    let mut sources = Vec::new();
    for stanza in text.split("\n\n") {
        let mut is_deb = false;
        let mut enabled = true;
        let mut stanza_uris = Vec::new();
        let mut components = Vec::new();
        for line in stanza.lines().filter(|l| !l.trim_start().starts_with('#')) {
            let Some((key, value)) = line.split_once(':') else {
                continue;
            };
            let words = || value.split_whitespace().map(str::to_string);
            match key.trim().to_ascii_lowercase().as_str() {
                "types" => is_deb = value.split_whitespace().any(|t| t == "deb"),
                "uris" => stanza_uris.extend(words()),
                "components" => components.extend(words()),
                "enabled" => enabled = value.trim() != "no",
                _ => {}
            }
        }
        if is_deb && enabled {
            sources.extend(stanza_uris.into_iter().map(|uri| Source {
                uri,
                components: components.clone(),
            }));
        }
    }
    sources
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uris(sources: Vec<Source>) -> Vec<String> {
        sources.into_iter().map(|s| s.uri).collect()
    }

    #[test]
    fn one_line_format_with_options() {
        let text = "# comment\ndeb [arch=amd64 signed-by=/k.gpg] http://mirror.example/debian bookworm main\ndeb-src http://x/ bookworm main\n";
        assert_eq!(
            uris(one_line_sources(text)),
            vec!["http://mirror.example/debian"]
        );
    }

    #[test]
    fn deb822_format_skips_disabled_and_comments() {
        let text = "Types: deb\n# URIs: http://commented/\nURIs: http://a.example/debian\nSuites: bookworm\n\nTypes: deb\nURIs: http://b.example/\nEnabled: no\n";
        assert_eq!(uris(deb822_sources(text)), vec!["http://a.example/debian"]);
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

    #[test]
    fn components_of_the_mirror_in_both_formats() {
        let one = "deb http://a.example/debian bookworm main non-free-firmware\n";
        assert_eq!(
            one_line_sources(one)[0].components,
            ["main", "non-free-firmware"]
        );
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("etc/apt/sources.list.d")).unwrap();
        std::fs::write(
            dir.path().join("etc/apt/sources.list.d/debian.sources"),
            "Types: deb\nURIs: http://main.example/debian\nSuites: bookworm\nComponents: main contrib non-free-firmware\n\nTypes: deb\nURIs: http://other.example/debian\nComponents: main\n",
        )
        .unwrap();
        let root = dir.path();
        assert!(host_has_component(
            root,
            "http://main.example/debian",
            "non-free-firmware"
        ));
        assert!(!host_has_component(
            root,
            "http://other.example/debian",
            "non-free-firmware"
        ));
        assert!(!host_has_component(
            root,
            "http://main.example/debian",
            "non-free"
        ));
    }
}
