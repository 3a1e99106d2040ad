use std::path::PathBuf;

/// Everything that can go wrong while making or storing an image.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file or directory operation failed.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// An external tool (debootstrap, mksquashfs, ...) failed.
    #[error("{0}")]
    Command(#[from] crate::command::CommandError),
    /// The input is not usable; the message says why and what to do.
    #[error("{0}")]
    Invalid(String),
    /// An image name or version breaks the naming rule (`diskless_boot::names`).
    #[error("{0}")]
    BadName(String),
    /// The store has no image of this name (no `current` link).
    #[error("no image named {name:?} in {store}")]
    NoSuchImage { name: String, store: PathBuf },
    /// The image has no such version.
    #[error("image {name} has no version {version}")]
    NoSuchVersion { name: String, version: String },
    /// Publishing a version that is already stored.
    #[error("version {0} already exists")]
    VersionExists(PathBuf),
    /// A rollback with nothing older to go back to.
    #[error("image {name} has no version older than {current}")]
    NoOlderVersion { name: String, current: String },
    /// A stored file does not match its manifest.
    #[error("{path}: {what}")]
    Corrupt { path: PathBuf, what: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Attach a path to an io::Error: `.map_err(io_at(&path))`.
pub(crate) fn io_at(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}
