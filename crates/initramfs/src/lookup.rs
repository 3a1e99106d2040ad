//! Reading one file out of an initrd, as the booted system would see it at
//! that path: the last copy wins, hard links share data, and symlinks on the
//! way (or at the end) are followed inside the initrd.

use std::collections::HashMap;
use std::io::{self, Read};

use crate::cpio::EntryKind;
use crate::extract::safe_components;
use crate::initrd::{InitrdError, InitrdReader};

/// Why [`read_path`] found no file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LookupError {
    /// The initrd could not be read.
    #[error(transparent)]
    Initrd(#[from] InitrdError),
    /// Opening the initrd (again) failed.
    #[error("opening the initrd: {0}")]
    Open(#[source] io::Error),
    /// Reading the entry's data failed.
    #[error("reading {path:?}: {source}")]
    Read {
        /// The entry.
        path: String,
        /// The failure.
        #[source]
        source: io::Error,
    },
    /// The path is empty or contains `..`.
    #[error("{0:?} is not a plain path inside the initrd")]
    BadPath(String),
    /// No entry at that path.
    #[error("{0:?}: no such file in the initrd")]
    NotFound(String),
    /// The path names something other than a regular file.
    #[error("{path:?} is a {kind:?}, not a regular file")]
    NotAFile {
        /// The resolved path.
        path: String,
        /// What it is.
        kind: EntryKind,
    },
    /// Symlinks loop, or nest too deep.
    #[error("{0:?}: too many levels of symbolic links")]
    SymlinkLoop(String),
}

/// Normalised key of a name: its components joined by '/'.
fn key(name: &[u8]) -> Option<Vec<u8>> {
    let comps = safe_components(name)?;
    Some(
        comps
            .iter()
            .map(|c| c.as_encoded_bytes())
            .collect::<Vec<_>>()
            .join(&b'/'),
    )
}

#[derive(Clone)]
struct Meta {
    kind: EntryKind,
    target: Vec<u8>,
}

/// One pass over the initrd: the data `wanted` ends up with, and (when
/// `meta` is given) the last kind of every path.
fn scan<R: Read>(
    reader: R,
    wanted: &[u8],
    mut meta: Option<&mut HashMap<Vec<u8>, Meta>>,
) -> Result<Option<Vec<u8>>, LookupError> {
    let mut r = InitrdReader::new(reader);
    let mut found: Option<Vec<u8>> = None;
    // Hard-link group of the wanted entry: (archive, dev major, minor, ino).
    let mut group: Option<(u32, u32, u32, u32)> = None;
    // Data of hard-linked entries of the current archive.
    let mut linked: HashMap<(u32, u32, u32, u32), Vec<u8>> = HashMap::new();
    let mut archive = u32::MAX;
    let read_err = |e| LookupError::Read {
        path: String::from_utf8_lossy(wanted).into_owned(),
        source: e,
    };
    while let Some(entry) = r.next_entry()? {
        if entry.archive != archive {
            archive = entry.archive;
            linked.clear();
        }
        let h = &entry.header;
        let Some(k) = key(&h.name) else { continue };
        let g = (entry.archive, h.devmajor, h.devminor, h.ino);
        let is_wanted = k == wanted;
        let kind = h.kind();
        if let Some(meta) = meta.as_deref_mut() {
            let target = if kind == EntryKind::Symlink {
                r.read_data_to_vec().map_err(read_err)?
            } else {
                Vec::new()
            };
            if is_wanted && kind == EntryKind::Symlink {
                found = None;
            }
            meta.insert(k, Meta { kind, target });
        }
        if kind != EntryKind::File {
            if is_wanted {
                found = None;
                group = None;
            }
            continue;
        }
        let hardlinked = h.nlink >= 2;
        if is_wanted || hardlinked {
            let data = if h.filesize > 0 || !hardlinked {
                Some(r.read_data_to_vec().map_err(read_err)?)
            } else {
                None
            };
            if hardlinked {
                if let Some(d) = &data {
                    linked.insert(g, d.clone());
                }
            }
            if is_wanted {
                group = hardlinked.then_some(g);
                // A link without data shares what its group already has.
                found = Some(data.or_else(|| linked.get(&g).cloned()).unwrap_or_default());
            } else if group == Some(g) {
                if let Some(d) = data {
                    found = Some(d);
                }
            }
        }
    }
    Ok(found)
}

/// Resolves symlinks in `path` using the initrd's final view.
fn resolve(
    meta: &HashMap<Vec<u8>, Meta>,
    path: &[u8],
    shown: &str,
) -> Result<Vec<u8>, LookupError> {
    let mut todo: Vec<Vec<u8>> = path
        .split(|&b| b == b'/')
        .rev()
        .map(<[u8]>::to_vec)
        .collect();
    let mut done: Vec<Vec<u8>> = Vec::new();
    let mut followed = 0;
    while let Some(c) = todo.pop() {
        match c.as_slice() {
            b"" | b"." => continue,
            // The kernel's rootfs: ".." of "/" is "/".
            b".." => {
                done.pop();
                continue;
            }
            _ => {}
        }
        done.push(c);
        let here = done.join(&b'/');
        if let Some(m) = meta.get(&here) {
            if m.kind == EntryKind::Symlink {
                followed += 1;
                if followed > 40 {
                    return Err(LookupError::SymlinkLoop(shown.to_owned()));
                }
                done.pop();
                if m.target.starts_with(b"/") {
                    done.clear();
                }
                todo.extend(m.target.split(|&b| b == b'/').rev().map(<[u8]>::to_vec));
            }
        }
    }
    Ok(done.join(&b'/'))
}

/// Returns the contents of the regular file at `path` in the initrd.
/// `open` is called once, or twice when symlinks must be followed (the
/// first pass learns the links, the second reads the data).
pub fn read_path<R: Read>(
    mut open: impl FnMut() -> io::Result<R>,
    path: &str,
) -> Result<Vec<u8>, LookupError> {
    let wanted = key(path.trim_start_matches('/').as_bytes())
        .filter(|k| !k.is_empty())
        .ok_or_else(|| LookupError::BadPath(path.to_owned()))?;
    let mut meta = HashMap::new();
    let data = scan(open().map_err(LookupError::Open)?, &wanted, Some(&mut meta))?;
    let resolved = resolve(&meta, &wanted, path)?;
    let shown = String::from_utf8_lossy(&resolved).into_owned();
    match meta.get(&resolved) {
        None => return Err(LookupError::NotFound(path.to_owned())),
        Some(m) if m.kind != EntryKind::File => {
            return Err(LookupError::NotAFile {
                path: shown,
                kind: m.kind,
            })
        }
        Some(_) => {}
    }
    if resolved == wanted {
        return Ok(data.unwrap_or_default());
    }
    let data = scan(open().map_err(LookupError::Open)?, &resolved, None)?;
    data.ok_or(LookupError::NotFound(path.to_owned()))
}
