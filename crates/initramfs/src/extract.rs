//! Unpacking an initrd into a directory, safely.
//!
//! Entries are written as the kernel would write them into its rootfs (the
//! last copy of a path wins, hard links join entries of one archive), with
//! modes, symlinks, device nodes (as root), ownership (as root) and mtimes.
//!
//! Nothing is written outside the target directory: names that are absolute
//! or contain `..` are refused, and so is an entry whose path goes through an
//! already extracted symlink that leads outside (an absolute target, or a
//! relative one climbing above the target). Symlinks that stay inside are
//! followed, as `cpio -i` follows them. Errors name the entry.

use std::collections::HashMap;
use std::ffi::{CString, OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};

use crate::compress::Compression;
use crate::cpio::{EntryKind, Header};
use crate::initrd::{InitrdError, InitrdReader, Segment};

/// Where each segment's entries go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Layout {
    /// Like `unmkinitramfs`: when the initrd starts with plain archives
    /// (early microcode), the first goes to `early/`, the next ones to
    /// `early2/`, `early3/`…, and everything from the first compressed
    /// segment on to `main/`. An initrd without a plain prefix is unpacked
    /// straight into the directory.
    #[default]
    Unmkinitramfs,
    /// Everything into the directory, as the kernel unpacks it into its
    /// rootfs.
    Merged,
}

/// Settings of [`extract`].
#[derive(Debug, Clone)]
pub struct ExtractOptions {
    /// Where each segment goes.
    pub layout: Layout,
    /// Set owners from the archive (needs root).
    pub preserve_owner: bool,
    /// Create character and block devices (needs root); when false they
    /// are counted in [`ExtractReport::skipped_devices`].
    pub make_devices: bool,
}

impl Default for ExtractOptions {
    /// unmkinitramfs layout; owners and devices only when running as root.
    fn default() -> Self {
        // SAFETY: geteuid has no preconditions and cannot fail.
        let root = unsafe { libc::geteuid() } == 0;
        ExtractOptions {
            layout: Layout::default(),
            preserve_owner: root,
            make_devices: root,
        }
    }
}

/// What [`extract`] did.
#[derive(Debug, Clone, Default)]
pub struct ExtractReport {
    /// Entries written.
    pub entries: u64,
    /// Device nodes not created (not root).
    pub skipped_devices: u64,
    /// The initrd's segments.
    pub segments: Vec<Segment>,
}

/// Why extraction stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExtractError {
    /// The initrd could not be read.
    #[error(transparent)]
    Initrd(#[from] InitrdError),
    /// The entry's name is absolute or climbs with `..`.
    #[error(
        "entry {name:?} (segment {segment}): refusing a name that is absolute or contains '..'"
    )]
    UnsafeName {
        /// The entry's name.
        name: String,
        /// Its segment.
        segment: usize,
    },
    /// The entry's path goes through a symlink leading outside the target.
    #[error(
        "entry {name:?} (segment {segment}): refusing to write through symlink {link:?} -> \
         {target:?}, which leads outside the target directory"
    )]
    SymlinkEscape {
        /// The entry's name.
        name: String,
        /// Its segment.
        segment: usize,
        /// The symlink on the way, relative to the target.
        link: String,
        /// What it points to.
        target: String,
    },
    /// Writing the entry failed.
    #[error("entry {name:?} (segment {segment}): {path}: {source}")]
    Write {
        /// The entry's name.
        name: String,
        /// Its segment.
        segment: usize,
        /// The path being written.
        path: PathBuf,
        /// The failure.
        #[source]
        source: io::Error,
    },
    /// Creating or finishing the target directory failed.
    #[error("{path}: {source}")]
    Target {
        /// The directory.
        path: PathBuf,
        /// The failure.
        #[source]
        source: io::Error,
    },
}

/// Splits an entry name into its normal components, or `None` when the
/// name is absolute or has a `..` component. `.` and empty components are
/// dropped, so "./usr//bin" gives ["usr", "bin"] and "." gives [].
pub fn safe_components(name: &[u8]) -> Option<Vec<&OsStr>> {
    let path = Path::new(OsStr::from_bytes(name));
    let mut out = Vec::new();
    for c in path.components() {
        match c {
            Component::Normal(c) => out.push(c),
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) | Component::ParentDir => return None,
        }
    }
    Some(out)
}

/// Most symlinks followed while resolving one path (Linux's limit).
const MAX_SYMLINKS: u32 = 40;

/// One destination directory (the target, or `early/`, `main/`…).
struct Root {
    dir: PathBuf,
    /// Hard-link groups of the current archive: (dev, ino) -> first path.
    links: HashMap<(u32, u32, u32), PathBuf>,
    links_archive: u32,
}

/// A directory whose mode and mtime are set at the end, once nothing more is
/// written into it.
struct DeferredDir {
    path: PathBuf,
    mode: u32,
    mtime: u32,
    depth: usize,
}

struct Extractor<'a> {
    opts: &'a ExtractOptions,
    target: PathBuf,
    roots: HashMap<String, Root>,
    dirs: Vec<DeferredDir>,
    report: ExtractReport,
}

/// Unpacks the initrd read from `initrd` into `dir` (created if missing).
pub fn extract<R: Read>(
    initrd: R,
    dir: &Path,
    opts: &ExtractOptions,
) -> Result<ExtractReport, ExtractError> {
    fs::create_dir_all(dir).map_err(|source| ExtractError::Target {
        path: dir.to_owned(),
        source,
    })?;
    let mut ex = Extractor {
        opts,
        target: dir.to_owned(),
        roots: HashMap::new(),
        dirs: Vec::new(),
        report: ExtractReport::default(),
    };
    let mut reader = InitrdReader::new(initrd);
    while let Some(entry) = reader.next_entry()? {
        let subdir = subdir_for(opts.layout, reader.segments(), entry.segment);
        ex.entry(
            &mut reader,
            entry.segment,
            entry.archive,
            &entry.header,
            &subdir,
        )?;
    }
    ex.finish()?;
    ex.report.segments = reader.segments().to_vec();
    Ok(ex.report)
}

/// The subdirectory segment `index` goes to (see [`Layout`]); `segments`
/// holds at least the segments up to `index`.
fn subdir_for(layout: Layout, segments: &[Segment], index: usize) -> String {
    let plain = |s: &Segment| s.compression == Compression::None;
    if layout == Layout::Merged || !plain(&segments[0]) {
        return String::new();
    }
    if segments[..=index].iter().all(plain) {
        match index {
            0 => "early".to_owned(),
            n => format!("early{}", n + 1),
        }
    } else {
        "main".to_owned()
    }
}

fn cstr(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))
}

fn cvt(ret: libc::c_int) -> io::Result<()> {
    if ret == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn set_mtime(path: &Path, mtime: u32) -> io::Result<()> {
    let c = cstr(path)?;
    let t = libc::timespec {
        tv_sec: libc::time_t::from(mtime),
        tv_nsec: 0,
    };
    let times = [t, t];
    // SAFETY: valid NUL-terminated path and a two-element timespec array.
    cvt(unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })
}

fn lchown(path: &Path, uid: u32, gid: u32) -> io::Result<()> {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid))
}

fn chmod(path: &Path, mode: u32) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
}

fn mknod(path: &Path, mode: u32, major: u32, minor: u32) -> io::Result<()> {
    let c = cstr(path)?;
    let dev = libc::makedev(major, minor);
    // SAFETY: valid NUL-terminated path.
    cvt(unsafe { libc::mknod(c.as_ptr(), mode as libc::mode_t, dev) })
}

impl Extractor<'_> {
    fn root(&mut self, subdir: &str) -> Result<&mut Root, ExtractError> {
        if !self.roots.contains_key(subdir) {
            let dir = self.target.join(subdir);
            fs::create_dir_all(&dir).map_err(|source| ExtractError::Target {
                path: dir.clone(),
                source,
            })?;
            self.roots.insert(
                subdir.to_owned(),
                Root {
                    dir,
                    links: HashMap::new(),
                    links_archive: u32::MAX,
                },
            );
        }
        Ok(self.roots.get_mut(subdir).expect("just inserted"))
    }

    fn entry<R: Read>(
        &mut self,
        reader: &mut InitrdReader<R>,
        segment: usize,
        archive: u32,
        h: &Header,
        subdir: &str,
    ) -> Result<(), ExtractError> {
        let name = h.name_lossy().into_owned();
        let Some(comps) = safe_components(&h.name) else {
            return Err(ExtractError::UnsafeName { name, segment });
        };
        let root = self.root(subdir)?;
        let root_dir = root.dir.clone();
        if root.links_archive != archive {
            // The kernel forgets hard-link candidates at each trailer.
            root.links.clear();
            root.links_archive = archive;
        }
        let Some((last, parents)) = comps.split_last() else {
            // "." is the target itself: leave its mode alone.
            return Ok(());
        };
        let werr = |path: &Path, source: io::Error| ExtractError::Write {
            name: name.clone(),
            segment,
            path: path.to_owned(),
            source,
        };
        let parent = resolve_parent(&root_dir, parents).map_err(|e| match e {
            Resolve::Escape { link, target } => ExtractError::SymlinkEscape {
                name: name.clone(),
                segment,
                link,
                target,
            },
            Resolve::Io(path, source) => werr(&path, source),
        })?;
        let path = parent.join(last);
        let kind = h.kind();

        // Clear the way as the kernel's clean_path() does: whatever is there
        // goes, unless a directory meets a directory.
        match fs::symlink_metadata(&path) {
            Ok(meta) if meta.is_dir() && kind == EntryKind::Dir => {}
            Ok(meta) if meta.is_dir() => fs::remove_dir(&path).map_err(|e| werr(&path, e))?,
            Ok(_) => fs::remove_file(&path).map_err(|e| werr(&path, e))?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(werr(&path, e)),
        }

        let perm = h.permissions();
        match kind {
            EntryKind::Dir => {
                if !path.is_dir() {
                    fs::DirBuilder::new()
                        .mode(0o700)
                        .create(&path)
                        .map_err(|e| werr(&path, e))?;
                }
                self.dirs.push(DeferredDir {
                    depth: path.components().count(),
                    path: path.clone(),
                    mode: perm,
                    mtime: h.mtime,
                });
            }
            EntryKind::File => {
                let key = (h.devmajor, h.devminor, h.ino);
                let root = self.roots.get_mut(subdir).expect("root exists");
                // A later link of a group joins the first path, if that is
                // still the regular file we made (a later entry may have
                // replaced it with a symlink: linking to that, then writing
                // through it, would escape).
                let first = match root.links.get(&key) {
                    Some(first) if h.nlink >= 2 => fs::symlink_metadata(first)
                        .ok()
                        .filter(|m| m.is_file())
                        .map(|_| first.clone()),
                    _ => None,
                };
                let mut file = match first {
                    Some(first) => {
                        fs::hard_link(&first, &path).map_err(|e| werr(&path, e))?;
                        OpenOptions::new()
                            .write(true)
                            .custom_flags(libc::O_NOFOLLOW)
                            .open(&path)
                    }
                    None => {
                        if h.nlink >= 2 {
                            root.links.insert(key, path.clone());
                        }
                        // create_new never follows a symlink planted at `path`.
                        OpenOptions::new()
                            .write(true)
                            .create_new(true)
                            .mode(0o600)
                            .open(&path)
                    }
                }
                .map_err(|e| werr(&path, e))?;
                copy_data(reader, &mut file).map_err(|e| werr(&path, e))?;
                drop(file);
            }
            EntryKind::Symlink => {
                let target = reader.read_data_to_vec().map_err(|e| werr(&path, e))?;
                std::os::unix::fs::symlink(OsStr::from_bytes(&target), &path)
                    .map_err(|e| werr(&path, e))?;
            }
            EntryKind::CharDevice | EntryKind::BlockDevice => {
                if !self.opts.make_devices {
                    self.report.skipped_devices += 1;
                    return Ok(());
                }
                mknod(&path, h.mode, h.rdevmajor, h.rdevminor).map_err(|e| werr(&path, e))?;
            }
            EntryKind::Fifo | EntryKind::Socket => {
                mknod(&path, h.mode, 0, 0).map_err(|e| werr(&path, e))?;
            }
            EntryKind::Unknown(_) => {
                return Err(werr(
                    &path,
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("unknown file type in mode {:o}", h.mode),
                    ),
                ));
            }
        }
        if kind != EntryKind::Dir {
            if self.opts.preserve_owner {
                lchown(&path, h.uid, h.gid).map_err(|e| werr(&path, e))?;
            }
            // After chown, which clears setuid bits.
            if kind != EntryKind::Symlink {
                chmod(&path, perm).map_err(|e| werr(&path, e))?;
            }
            set_mtime(&path, h.mtime).map_err(|e| werr(&path, e))?;
        } else if self.opts.preserve_owner {
            lchown(&path, h.uid, h.gid).map_err(|e| werr(&path, e))?;
        }
        self.report.entries += 1;
        Ok(())
    }

    /// Sets directory modes and mtimes, deepest first so that setting a
    /// child does not bump its parent's mtime afterwards.
    fn finish(&mut self) -> Result<(), ExtractError> {
        self.dirs.sort_by_key(|d| std::cmp::Reverse(d.depth));
        for d in &self.dirs {
            let fail = |source| ExtractError::Target {
                path: d.path.clone(),
                source,
            };
            // A later entry may have replaced the directory (with a symlink,
            // say): chmod would follow it.
            match fs::symlink_metadata(&d.path) {
                Ok(m) if m.is_dir() => {}
                _ => continue,
            }
            chmod(&d.path, d.mode).map_err(fail)?;
            set_mtime(&d.path, d.mtime).map_err(fail)?;
        }
        Ok(())
    }
}

/// Copies the current entry's data into `out`.
fn copy_data<R: Read>(reader: &mut InitrdReader<R>, out: &mut File) -> io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut data = reader.data();
    loop {
        let n = match data.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        out.write_all(&buf[..n])?;
    }
}

enum Resolve {
    Escape { link: String, target: String },
    Io(PathBuf, io::Error),
}

/// Walks `parents` below `root`, creating missing directories and following
/// symlinks only while they stay below `root`. Returns the real directory.
fn resolve_parent(root: &Path, parents: &[&OsStr]) -> Result<PathBuf, Resolve> {
    let mut todo: Vec<OsString> = parents.iter().rev().map(|c| c.to_os_string()).collect();
    // Components of the resolved directory, relative to root.
    let mut stack: Vec<OsString> = Vec::new();
    let mut followed = 0;
    let mut last_link: Option<(String, String)> = None;
    let here = |stack: &[OsString]| -> PathBuf {
        let mut p = root.to_owned();
        p.extend(stack);
        p
    };
    while let Some(comp) = todo.pop() {
        if comp == "." || comp.is_empty() {
            continue;
        }
        if comp == ".." {
            if stack.pop().is_none() {
                // Only reachable through a symlink (names with .. are
                // refused before): blame the last one followed.
                let (link, target) = last_link.unwrap_or_default();
                return Err(Resolve::Escape { link, target });
            }
            continue;
        }
        let path = here(&stack).join(&comp);
        match fs::symlink_metadata(&path) {
            Ok(meta) if meta.file_type().is_symlink() => {
                let target = fs::read_link(&path).map_err(|e| Resolve::Io(path.clone(), e))?;
                let rel = {
                    let mut r = PathBuf::new();
                    r.extend(&stack);
                    r.push(&comp);
                    r.to_string_lossy().into_owned()
                };
                followed += 1;
                if followed > MAX_SYMLINKS {
                    return Err(Resolve::Io(
                        path,
                        io::Error::new(
                            io::ErrorKind::InvalidInput,
                            "too many levels of symbolic links",
                        ),
                    ));
                }
                if target.is_absolute() {
                    return Err(Resolve::Escape {
                        link: rel,
                        target: target.to_string_lossy().into_owned(),
                    });
                }
                // Check the climb now, so the error names this link.
                let mut depth = stack.len() as isize;
                for c in target.components() {
                    match c {
                        Component::ParentDir => depth -= 1,
                        Component::Normal(_) => depth += 1,
                        _ => {}
                    }
                    if depth < 0 {
                        return Err(Resolve::Escape {
                            link: rel,
                            target: target.to_string_lossy().into_owned(),
                        });
                    }
                }
                for c in target.components().rev() {
                    todo.push(c.as_os_str().to_os_string());
                }
                last_link = Some((rel, target.to_string_lossy().into_owned()));
            }
            Ok(meta) if meta.is_dir() => stack.push(comp),
            Ok(_) => {
                return Err(Resolve::Io(
                    path,
                    io::Error::other("a parent is not a directory"),
                ))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // The kernel needs parents listed first; be lenient and make
                // them, as `cpio -id` would.
                fs::DirBuilder::new()
                    .mode(0o755)
                    .create(&path)
                    .map_err(|e| Resolve::Io(path.clone(), e))?;
                stack.push(comp);
            }
            Err(e) => return Err(Resolve::Io(path, e)),
        }
    }
    Ok(here(&stack))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segs(kinds: &[Compression]) -> Vec<Segment> {
        kinds
            .iter()
            .enumerate()
            .map(|(index, &compression)| Segment {
                index,
                offset: 0,
                end: 0,
                compression,
                archives: 1,
                entries: 1,
                unpacked: 0,
            })
            .collect()
    }

    #[test]
    fn unmkinitramfs_layout_names() {
        use Compression::{Gzip, None as Plain};
        let s = segs(&[Plain, Plain, Gzip, Plain]);
        let names: Vec<String> = (0..4)
            .map(|i| subdir_for(Layout::Unmkinitramfs, &s, i))
            .collect();
        assert_eq!(names, ["early", "early2", "main", "main"]);
        let s = segs(&[Gzip, Plain]);
        assert_eq!(subdir_for(Layout::Unmkinitramfs, &s, 1), "");
        let s = segs(&[Plain, Gzip]);
        assert_eq!(subdir_for(Layout::Merged, &s, 0), "");
        assert_eq!(subdir_for(Layout::Merged, &s, 1), "");
    }

    #[test]
    fn safe_names() {
        let c = |n: &str| safe_components(n.as_bytes()).map(|v| v.len());
        assert_eq!(c("./usr//bin/"), Some(2));
        assert_eq!(c("."), Some(0));
        assert_eq!(c("a/../b"), None);
        assert_eq!(c("/etc"), None);
    }
}
