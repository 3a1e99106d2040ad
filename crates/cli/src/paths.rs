//! Where things live by default, and how we find the fetch helper.

use anyhow::{bail, Result};
use std::path::PathBuf;

pub const DEFAULT_STORE: &str = diskless_boot::config::DEFAULT_STORE;
/// Downloads and bootstrapped trees, kept between runs so repeated runs are fast.
pub const DEFAULT_CACHE: &str = "/var/cache/diskless";
/// The image `vm` boots without `--image`: the one `demo` makes (named after its suite).
pub const DEFAULT_IMAGE: &str = diskless_image::bootstrap::DEFAULT_SUITE;

/// The static `diskless-fetch` that goes into every image's diskless.cpio.
pub fn fetch_helper() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("DISKLESS_FETCH") {
        let path = PathBuf::from(path);
        if !path.is_file() {
            bail!("DISKLESS_FETCH={} does not exist", path.display());
        }
        return Ok(path);
    }
    let exe = std::env::current_exe()?;
    let dir = exe.parent().map(PathBuf::from).unwrap_or_default();
    let candidates = [
        dir.join("diskless-fetch"),
        // target/release/diskless -> target/x86_64-unknown-linux-gnu/release/diskless-fetch
        dir.join("../x86_64-unknown-linux-gnu/release/diskless-fetch"),
        PathBuf::from("/usr/lib/diskless/diskless-fetch"),
    ];
    for c in &candidates {
        if c.is_file() {
            return Ok(c.canonicalize()?);
        }
    }
    bail!(
        "the static fetch helper diskless-fetch was not found (looked in {}); build it with \
         scripts/build or set DISKLESS_FETCH",
        candidates
            .iter()
            .map(|c| c.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )
}
