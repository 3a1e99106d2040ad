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
