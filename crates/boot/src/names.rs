//! The rule for image names and versions. They become directory names in the store, parts of
//! the URLs clients fetch and values in the site config, so all three check them here.

/// `name` (an image name or a version; `kind` says which, for the message) is 1 to 64
/// letters, digits, '-', '_' or '.', does not start with '.', and is not `current` (the
/// store's link to the version clients get).
pub fn check_name(kind: &str, name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name != "current"
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{kind} {name:?} is not valid: use 1 to 64 letters, digits, '-', '_' or '.', \
             not starting with '.', and not \"current\""
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_cannot_leave_their_directory() {
        for good in ["bookworm", "lab-2026_1.0", "20261125-231053-3e3f36d1"] {
            assert!(check_name("image name", good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "../etc",
            "a/b",
            ".hidden",
            "current",
            "x y",
            &"a".repeat(65),
        ] {
            let err = check_name("image name", bad).unwrap_err();
            assert!(err.starts_with("image name "), "{err}");
        }
    }
}
