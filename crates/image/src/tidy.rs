//! The changes an image needs that its source must not get, planned as mksquashfs exclusions
//! and pseudo files: the source tree is read, never written.
//!
//! Why each change: a root or swap line in fstab makes systemd wait 90 s for a disk the client
//! does not have; a resume device in the initramfs config delays boot the same way; a shared
//! machine-id or ssh host key makes every client the same machine to the network; the
//! master's random seed and DHCP leases would make every client start from the same seed and
//! ask for the master's address. From a running system the users' files (`/home/*`, `/root`)
//! stay on the master, and in every image the password hashes of `/etc/shadow` are replaced:
//! the image is served to anyone on the boot network, without authentication. What still looks
//! like a secret afterwards (private keys, Wi-Fi and VPN credentials) is listed, with the
//! `--exclude` that leaves it out.

use crate::error::{io_at, Result};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// How the source tree is to be read.
#[derive(Debug, Clone, Default)]
pub struct TidyOptions {
    /// The source is a running system's `/`: stay on its filesystem and leave out runtime state.
    pub running_system: bool,
    /// More paths (relative to the source, wildcards allowed) to leave out.
    pub extra_excludes: Vec<String>,
    /// Paths under the source to leave out because they are ours (the store, the boot
    /// server's state directory and store, the cache), as the filesystem resolves them.
    pub own_paths: Vec<PathBuf>,
    /// From a running system, keep what is in `/home/*` and `/root` (left out by default).
    pub include_home: bool,
    /// Keep the password hashes of `/etc/shadow` and `/etc/gshadow` (replaced by `!`, which
    /// no password matches, by default).
    pub keep_password_hashes: bool,
}

/// The plan: what mksquashfs leaves out, what it adds, and the report for the user.
#[derive(Debug, Default)]
pub struct Plan {
    /// Patterns for `-wildcards -ef`, relative to the source root.
    pub excludes: Vec<String>,
    /// Lines for `-pf`: files the image gets instead of the source's.
    pub pseudo: Vec<String>,
    /// One line per change, shown to the user and kept in the manifest.
    pub changes: Vec<String>,
    /// What still looks like a secret in the image, one line each with the way to leave it out.
    pub secrets: Vec<String>,
}

impl Plan {
    /// Whether `rel` (relative to the source) is left out by an exclusion, itself or through
    /// one of its directories, matched as mksquashfs `-wildcards` does (fnmatch with
    /// FNM_PATHNAME and FNM_PERIOD: `*` stops at '/' and does not match a leading '.').
    pub fn leaves_out(&self, rel: &str) -> bool {
        let opts = glob::MatchOptions {
            case_sensitive: true,
            require_literal_separator: true,
            require_literal_leading_dot: true,
        };
        let patterns: Vec<glob::Pattern> = self
            .excludes
            .iter()
            .filter_map(|e| glob::Pattern::new(e).ok())
            .collect();
        Path::new(rel).ancestors().any(|a| {
            let a = a.to_string_lossy();
            !a.is_empty() && patterns.iter().any(|p| p.matches_with(&a, opts))
        })
    }
}

/// Leave out the contents of these directories but keep the directories (mount points).
const RUNTIME_DIRS: &[&str] = &["proc", "sys", "dev", "run", "tmp", "var/tmp"];
/// Left out of every image: package downloads, and our own bootstrap bookkeeping.
const ALWAYS_EXCLUDED: &[&str] = &[
    "var/cache/apt/archives/*.deb",
    "var/cache/apt/archives/partial/*",
    "debootstrap",
    crate::bootstrap::MARKER,
];
/// Only from a running system: removable and manual mount points, lost+found.
const RUNNING_SYSTEM_EXCLUDED: &[&str] = &["mnt/*", "media/*", "lost+found", "var/lib/diskless/*"];

/// The units that give every client its own ssh host keys at boot, by file name. ed25519 and
/// ECDSA keys take milliseconds and are made before sshd starts; an RSA key takes seconds (7 s
/// on an emulated CPU), so it is made once the client reached multi-user and sshd is reloaded
/// to offer it. A persistent writable layer keeps the keys: then nothing is generated.
pub const SSH_KEYGEN_UNITS: &[(&str, &str)] = &[
    (
        "diskless-ssh-keygen.service",
        "[Unit]
Description=Generate this client's own ssh host keys (diskless images ship none)
Before=ssh.service
ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key

[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -q -t ed25519 -N \"\" -f /etc/ssh/ssh_host_ed25519_key
ExecStart=/bin/sh -c 'test -e /etc/ssh/ssh_host_ecdsa_key || exec /usr/bin/ssh-keygen -q -t ecdsa -N \"\" -f /etc/ssh/ssh_host_ecdsa_key'

[Install]
WantedBy=multi-user.target
",
    ),
    (
        "diskless-ssh-keygen-rsa.service",
        "[Unit]
Description=Generate this client's own RSA ssh host key, after boot (it takes seconds)
After=multi-user.target ssh.service
ConditionPathExists=!/etc/ssh/ssh_host_rsa_key

[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -q -t rsa -N \"\" -f /etc/ssh/ssh_host_rsa_key
ExecStart=-/bin/systemctl try-reload-or-restart ssh.service

[Install]
WantedBy=multi-user.target
",
    ),
];

/// What every image switches off, in systemd's own way (a link to /dev/null in /etc), each
/// with why: (directory under /usr/lib/systemd, name, why). Only what the source has is
/// masked, so an image of a release without it is unchanged.
///
/// systemd-ssh-generator (systemd 256 and later: trixie, not bookworm) makes sshd listen on
/// AF_VSOCK when it finds itself in a VM and on a local AF_UNIX socket: on a seat in QEMU
/// without a vsock device it fails at every boot (`Failed to query local AF_VSOCK CID`,
/// issue 23), and a seat is reached over the network by openssh-server's own ssh.service.
///
/// The `ConditionNeedsUpdate=` units (systemd 257: trixie ships them, bookworm's systemd 252
/// package did not) rebuild caches when /usr is newer than /etc/.updated or /var/.updated,
/// which systemd-update-done.service writes. On a seat those files never survive (every boot
/// starts from the image under a fresh RAM overlay, and a tree made by debootstrap has none),
/// so each one ran at every boot: ldconfig.service (6.4 s) and systemd-update-done.service
/// (2.0 s) in the critical chain to multi-user of a trixie seat, and
/// systemd-journal-catalog-update.service (4.8 s) beside it (`systemd-analyze blame` and
/// `critical-chain` of a seat under TCG on a loaded machine, issue 23). The image's caches are
/// current already: dpkg's triggers rebuild them in the master at every install (ldconfig,
/// `journalctl --update-catalog`, `systemd-hwdb update`).
pub const MASKED: &[(&str, &str, &str)] = &[
    (
        "system-generators",
        "systemd-ssh-generator",
        "sshd on AF_VSOCK and a local socket: seats are reached by ssh.service over the network",
    ),
    (
        "system",
        "ldconfig.service",
        "would rebuild /etc/ld.so.cache at every boot; dpkg's trigger keeps it current",
    ),
    (
        "system",
        "systemd-update-done.service",
        "its stamps never survive a boot of a seat, so it would run at every boot",
    ),
    (
        "system",
        "systemd-journal-catalog-update.service",
        "would rebuild the journal catalog at every boot; dpkg's trigger keeps it current",
    ),
    (
        "system",
        "systemd-hwdb-update.service",
        "would rebuild hwdb.bin at every boot; dpkg's trigger keeps it current",
    ),
];

pub fn plan(source: &Path, stage: &Path, opts: &TidyOptions) -> Result<Plan> {
    let mut plan = Plan::default();
    for dir in RUNTIME_DIRS {
        plan.excludes.push(format!("{dir}/*"));
    }
    plan.excludes
        .extend(ALWAYS_EXCLUDED.iter().map(|s| s.to_string()));
    if opts.running_system {
        plan.excludes
            .extend(RUNNING_SYSTEM_EXCLUDED.iter().map(|s| s.to_string()));
        for swap in swap_files(source) {
            plan.changes.push(format!("left out swap file /{swap}"));
            plan.excludes.push(swap);
        }
        mount_points(source, &mut plan);
        if !opts.include_home {
            homes(source, &mut plan);
        }
    }
    for own in &opts.own_paths {
        if let Ok(rel) = own.strip_prefix(source) {
            if !rel.as_os_str().is_empty() {
                plan.excludes
                    .push(glob::Pattern::escape(&rel.display().to_string()));
            }
        }
    }
    plan.excludes.extend(
        opts.extra_excludes
            .iter()
            .map(|e| e.trim_start_matches('/').to_string()),
    );

    fstab(source, stage, &mut plan)?;
    resume(source, &mut plan);
    machine_id(source, stage, &mut plan)?;
    ssh_host_keys(source, stage, &mut plan)?;
    hostname(source, &mut plan);
    masked(source, &mut plan);
    machine_state(source, &mut plan);
    boot_files(source, &mut plan);
    crate::credentials::leave_out_state(source, &mut plan);
    password_hashes(source, stage, opts.keep_password_hashes, &mut plan)?;
    secrets(source, &mut plan);
    Ok(plan)
}

/// Replace `rel` in the image with `content`, keeping the source file's mode and owner.
fn replace_file(
    source: &Path,
    stage: &Path,
    rel: &str,
    content: &str,
    plan: &mut Plan,
) -> Result<()> {
    let (mode, uid, gid) = match fs::symlink_metadata(source.join(rel)) {
        Ok(m) => (m.mode() & 0o7777, m.uid(), m.gid()),
        Err(_) => (0o644, 0, 0),
    };
    if let Some(parent) = Path::new(rel).parent() {
        ensure_dirs(source, &parent.display().to_string(), plan);
    }
    let staged = stage.join(rel.replace('/', "__"));
    fs::write(&staged, content).map_err(io_at(&staged))?;
    plan.excludes.push(rel.to_string());
    plan.pseudo.push(format!(
        "{rel} f {mode:o} {uid} {gid} cat {}",
        staged.display()
    ));
    Ok(())
}

/// The fstab without root and swap lines; returns the lines removed.
pub fn strip_fstab(text: &str) -> (String, Vec<String>) {
    let mut kept = String::new();
    let mut removed = Vec::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let is_entry = !line.trim_start().starts_with('#') && fields.len() >= 3;
        if is_entry && (fields[1] == "/" || fields[2] == "swap") {
            removed.push(line.trim().to_string());
        } else {
            kept.push_str(line);
            kept.push('\n');
        }
    }
    (kept, removed)
}

/// What a seat's fstab adds to the options of the master's other local disks.
pub const SEAT_MOUNT_OPTIONS: &[&str] = &["nofail", "x-systemd.device-timeout=10s"];

/// The fstab with the master's other local disks made harmless on a seat that lacks them: a
/// line whose source is a block device (`/dev/...`, `UUID=`, `LABEL=`, `PARTUUID=`,
/// `PARTLABEL=`, `ID=`) and that is mounted at boot (no `noauto`) gets [`SEAT_MOUNT_OPTIONS`]
/// it lacks. Without them systemd waits 90 s for the device and then stops the boot in
/// emergency mode (`Dependency failed for local-fs.target`); with them it waits 10 s and
/// boots without the mount. A seat that has the disk mounts it as the master does. Network
/// filesystems, bind mounts and pseudo filesystems are left as they are. Returns the lines
/// changed, as they were.
pub fn soften_fstab(text: &str) -> (String, Vec<String>) {
    let mut out = String::with_capacity(text.len());
    let mut changed = Vec::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let is_entry = !line.trim_start().starts_with('#') && fields.len() >= 3;
        let block_device = is_entry
            && (fields[0].starts_with("/dev/")
                || ["UUID=", "LABEL=", "PARTUUID=", "PARTLABEL=", "ID="]
                    .iter()
                    .any(|p| fields[0].starts_with(p)));
        let options: Vec<&str> = fields
            .get(3)
            .map(|o| o.split(',').collect())
            .unwrap_or_else(|| vec!["defaults"]);
        // An option by its name: `x-systemd.device-timeout=30s` is already a timeout.
        let key = |o: &str| o.split('=').next().unwrap_or(o).to_string();
        let has = |name: &str| options.iter().any(|o| key(o) == key(name));
        let missing: Vec<&str> = SEAT_MOUNT_OPTIONS
            .iter()
            .copied()
            .filter(|o| !has(o))
            .collect();
        if !block_device || has("noauto") || missing.is_empty() {
            out.push_str(line);
            out.push('\n');
            continue;
        }
        let mut fields: Vec<String> = fields.iter().map(|f| f.to_string()).collect();
        let options = [options.join(","), missing.join(",")].join(",");
        match fields.get_mut(3) {
            Some(o) => *o = options,
            None => fields.push(options),
        }
        out.push_str(&fields.join(" "));
        out.push('\n');
        changed.push(line.trim().to_string());
    }
    (out, changed)
}

fn fstab(source: &Path, stage: &Path, plan: &mut Plan) -> Result<()> {
    let Ok(text) = fs::read_to_string(source.join("etc/fstab")) else {
        return Ok(());
    };
    let (kept, removed) = strip_fstab(&text);
    let (kept, softened) = soften_fstab(&kept);
    if removed.is_empty() && softened.is_empty() {
        return Ok(());
    }
    replace_file(source, stage, "etc/fstab", &kept, plan)?;
    for line in removed {
        plan.changes.push(format!("etc/fstab: removed {line:?}"));
    }
    let added = SEAT_MOUNT_OPTIONS.join(",");
    for line in softened {
        plan.changes.push(format!(
            "etc/fstab: {line:?} gets {added} (a seat without that disk boots without the \
             mount instead of stopping in emergency mode)"
        ));
    }
    Ok(())
}

fn resume(source: &Path, plan: &mut Plan) {
    for rel in ["etc/initramfs-tools/conf.d/resume", "etc/uswsusp.conf"] {
        if source.join(rel).exists() {
            leave_out(plan, rel, "removed (no resume device on a diskless client)");
        }
    }
}

fn machine_id(source: &Path, stage: &Path, plan: &mut Plan) -> Result<()> {
    let etc = source.join("etc/machine-id");
    if fs::metadata(&etc).is_ok_and(|m| m.len() > 0) {
        replace_file(source, stage, "etc/machine-id", "", plan)?;
        plan.changes.push(
            "etc/machine-id: emptied (each client gets its own, from systemd.machine_id=)".into(),
        );
    }
    // dbus keeps its own copy unless it is a link to /etc/machine-id.
    let dbus = "var/lib/dbus/machine-id";
    if fs::symlink_metadata(source.join(dbus)).is_ok_and(|m| m.file_type().is_file()) {
        leave_out(plan, dbus, "removed (dbus falls back to /etc/machine-id)");
    }
    Ok(())
}

fn ssh_host_keys(source: &Path, stage: &Path, plan: &mut Plan) -> Result<()> {
    for key in names_in(source, "etc/ssh", |n, _| n.starts_with("ssh_host_")) {
        leave_out(
            plan,
            &format!("etc/ssh/{key}"),
            "removed (shared host keys)",
        );
    }
    if source.join("etc/ssh/sshd_config").exists() {
        let wants = "etc/systemd/system/multi-user.target.wants";
        ensure_dirs(source, wants, plan);
        for (name, content) in SSH_KEYGEN_UNITS {
            let unit = format!("etc/systemd/system/{name}");
            replace_file(source, stage, &unit, content, plan)?;
            plan.pseudo
                .push(format!("{wants}/{name} s 777 0 0 ../{name}"));
            plan.changes.push(format!(
                "{unit}: added (each client generates its own ssh host keys)"
            ));
        }
    }
    Ok(())
}

/// Mask each of [`MASKED`] the source has, unless its /etc already has that name (an admin's
/// own mask or override stays).
fn masked(source: &Path, plan: &mut Plan) {
    for (dir, name, why) in MASKED {
        let shipped = ["usr/lib/systemd", "lib/systemd"]
            .iter()
            .any(|lib| source.join(lib).join(dir).join(name).exists());
        let rel = format!("etc/systemd/{dir}/{name}");
        if !shipped || fs::symlink_metadata(source.join(&rel)).is_ok() {
            continue;
        }
        ensure_dirs(source, &format!("etc/systemd/{dir}"), plan);
        plan.pseudo.push(format!("{rel} s 777 0 0 /dev/null"));
        plan.changes.push(format!("{rel}: masked ({why})"));
    }
}

/// mksquashfs skips a pseudo file whose directory is in neither the source nor the pseudo
/// list: add the missing directories of `rel_dir`, outermost first.
fn ensure_dirs(source: &Path, rel_dir: &str, plan: &mut Plan) {
    let mut dir = PathBuf::new();
    for part in Path::new(rel_dir).components() {
        dir.push(part);
        let line = format!("{} d 755 0 0", dir.display());
        if !source.join(&dir).is_dir() && !plan.pseudo.contains(&line) {
            plan.pseudo.push(line);
        }
    }
}

/// mksquashfs 4.5's `-one-file-system` leaves a mount point out altogether, and a root
/// without /proc, /sys, /dev or /run cannot boot (the initramfs moves those mounts into it):
/// put each mount point on the source's filesystem back as an empty directory.
fn mount_points(source: &Path, plan: &mut Plan) {
    let Ok(root) = fs::metadata(source) else {
        return;
    };
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for rel in mount_points_below(&mountinfo, source) {
        let (path, parent) = (source.join(&rel), source.join(&rel).join(".."));
        let (Ok(meta), Ok(parent)) = (fs::metadata(&path), fs::metadata(parent)) else {
            continue;
        };
        if meta.dev() == root.dev() || parent.dev() != root.dev() {
            continue; // crossed by mksquashfs anyway, or inside another mount
        }
        let line = format!(
            "{rel} d {:o} {} {}",
            meta.mode() & 0o7777,
            meta.uid(),
            meta.gid()
        );
        if !plan.pseudo.contains(&line) {
            plan.pseudo.push(line);
        }
    }
}

/// The mount points strictly below `source` in a /proc/self/mountinfo text, relative to it,
/// in mount order. Paths with characters a pseudo file line cannot hold are skipped.
pub fn mount_points_below(mountinfo: &str, source: &Path) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for line in mountinfo.lines() {
        let Some(field) = line.split(' ').nth(4) else {
            continue;
        };
        let point = unescape_mountinfo(field);
        let Ok(rel) = Path::new(&point).strip_prefix(source) else {
            continue;
        };
        let rel = rel.display().to_string();
        let plain = !rel.is_empty() && !rel.chars().any(|c| c.is_whitespace() || c == '"');
        if plain && !out.contains(&rel) {
            out.push(rel);
        }
    }
    out
}

/// mountinfo writes space, tab, newline and backslash as `\040`-style octal escapes.
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|d| {
            std::str::from_utf8(d)
                .ok()
                .and_then(|d| u8::from_str_radix(d, 8).ok())
        });
        match (bytes[i], octal) {
            (b'\\', Some(b)) => {
                out.push(b);
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// State that belongs to the machine the image was made from, by directory: (directory, file
/// name or `*.suffix`, why it goes).
const MACHINE_STATE: &[(&str, &str, &str)] = &[
    (
        "var/lib/systemd",
        "random-seed",
        "every client would start from the same random seed",
    ),
    (
        "var/lib/systemd",
        "credential.secret",
        "the master's key for its host-bound credentials",
    ),
    (
        "var/lib/dhcp",
        "*.leases",
        "the master's DHCP lease: clients would ask for its address",
    ),
    (
        "var/lib/NetworkManager",
        "*.lease",
        "the master's DHCP lease: clients would ask for its address",
    ),
];

fn machine_state(source: &Path, plan: &mut Plan) {
    for (dir, pattern, why) in MACHINE_STATE {
        let wanted = |name: &str, kind: fs::FileType| {
            kind.is_file()
                && match pattern.strip_prefix('*') {
                    Some(suffix) => name.ends_with(suffix),
                    None => name == *pattern,
                }
        };
        for name in names_in(source, dir, wanted) {
            leave_out(plan, &format!("{dir}/{name}"), &format!("removed ({why})"));
        }
    }
}

fn hostname(source: &Path, plan: &mut Plan) {
    if source.join("etc/hostname").exists() {
        leave_out(
            plan,
            "etc/hostname",
            "removed (the name comes from DHCP or the client's config)",
        );
    }
}

/// Clients get the kernel and initrd from the server, never from the image: leaving them out
/// saves ~40 MB (incompressible) that every client would download at every boot.
fn boot_files(source: &Path, plan: &mut Plan) {
    let kernel_or_initrd = |n: &str, _| n.starts_with("vmlinuz-") || n.starts_with("initrd.img-");
    for name in names_in(source, "boot", kernel_or_initrd) {
        leave_out(
            plan,
            &format!("boot/{name}"),
            "left out (clients get it from the server)",
        );
    }
}

/// The names in `source/dir` that `wanted` picks (by name and type), sorted; none when the
/// directory cannot be read.
pub(crate) fn names_in(
    source: &Path,
    dir: &str,
    wanted: impl Fn(&str, fs::FileType) -> bool,
) -> Vec<String> {
    let Ok(entries) = fs::read_dir(source.join(dir)) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| Some((e.file_name().into_string().ok()?, e.file_type().ok()?)))
        .filter(|(name, kind)| wanted(name, *kind))
        .map(|(name, _)| name)
        .collect();
    names.sort();
    names
}

/// The users' home directories of `source`, relative: each directory in /home, and /root.
pub(crate) fn home_dirs(source: &Path) -> Vec<String> {
    let mut homes: Vec<String> = names_in(source, "home", |_, t| t.is_dir())
        .into_iter()
        .map(|n| format!("home/{n}"))
        .collect();
    homes.push("root".into());
    homes
}

/// Leave `rel` out of the image, and say so.
pub(crate) fn leave_out(plan: &mut Plan, rel: &str, what: &str) {
    plan.excludes.push(rel.to_string());
    plan.changes.push(format!("{rel}: {what}"));
}

/// From a running system the users' files stay on the master: what is in each home directory
/// and in /root is left out. The directories themselves stay, with their owner and mode, so
/// the accounts still work on a client (with an empty home).
fn homes(source: &Path, plan: &mut Plan) {
    let mut emptied = Vec::new();
    for name in names_in(source, "home", |_, _| true) {
        let rel = format!("home/{name}");
        let path = source.join(&rel);
        if fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir()) {
            if names_in(source, &rel, |_, _| true).is_empty() {
                continue;
            }
            let dir = glob::Pattern::escape(&rel);
            // Two patterns: mksquashfs's `*` does not match a leading dot.
            plan.excludes.push(format!("{dir}/*"));
            plan.excludes.push(format!("{dir}/.*"));
        } else {
            plan.excludes.push(glob::Pattern::escape(&rel));
        }
        emptied.push(rel);
    }
    if !emptied.is_empty() {
        plan.changes.push(format!(
            "{}: left out (the master's users' files; --include-home keeps them)",
            emptied.join(", ")
        ));
    }
    if !names_in(source, "root", |_, _| true).is_empty() {
        plan.excludes.push("root/*".into());
        plan.excludes.push("root/.*".into());
        plan.changes
            .push("root: its files left out (--include-home keeps them)".into());
    }
}

/// The files that hold password hashes: `name:hash:...` lines.
/// Besides shadow and gshadow, their previous versions (`-`, kept by shadow's tools) and
/// Debian's daily copies (`.bak`, written by /etc/cron.daily/passwd of the passwd package on
/// every installed system).
const PASSWORD_FILES: &[&str] = &[
    "etc/shadow",
    "etc/shadow-",
    "etc/gshadow",
    "etc/gshadow-",
    "var/backups/shadow.bak",
    "var/backups/gshadow.bak",
];

/// `text` (shadow or gshadow lines) with every password hash replaced by `!`, and the names
/// whose hash was replaced. The second field is a hash unless it is `*`, `!`, `!*` or empty
/// (no password, locked, or no password needed); a locked hash (`!$6$...`) is a hash too.
pub fn blank_hashes(text: &str) -> (String, Vec<String>) {
    let mut out = String::with_capacity(text.len());
    let mut names = Vec::new();
    for line in text.lines() {
        let mut fields: Vec<&str> = line.split(':').collect();
        if fields.len() >= 2 && !matches!(fields[1], "*" | "!" | "!*" | "") {
            names.push(fields[0].to_string());
            fields[1] = "!";
        }
        out.push_str(&fields.join(":"));
        out.push('\n');
    }
    (out, names)
}

/// Password hashes would let anyone who downloads the image try passwords offline: they are
/// replaced by `!` unless the build is told to keep them (then they are listed as secrets).
fn password_hashes(source: &Path, stage: &Path, keep: bool, plan: &mut Plan) -> Result<()> {
    for rel in PASSWORD_FILES {
        let Ok(text) = fs::read_to_string(source.join(rel)) else {
            continue;
        };
        let (blanked, names) = blank_hashes(&text);
        if names.is_empty() || plan.leaves_out(rel) {
            continue;
        }
        let names = names.join(", ");
        if keep {
            plan.secrets.push(format!(
                "{rel}: password hashes of {names} (kept by --keep-password-hashes)"
            ));
        } else {
            replace_file(source, stage, rel, &blanked, plan)?;
            plan.changes.push(format!(
                "{rel}: password hashes of {names} replaced by '!' (no password login on \
                 clients; --keep-password-hashes keeps them)"
            ));
        }
    }
    Ok(())
}

/// Keys in NetworkManager connection files and wpa_supplicant.conf that hold a secret.
fn is_secret_key(key: &str) -> bool {
    let key = key.trim().to_ascii_lowercase();
    key == "psk"
        || key.ends_with("-psk")
        || key.ends_with("password")
        || key == "private-key"
        || key.starts_with("wep-key")
}

/// Whether a key=value file has a line setting a secret key (a non-empty value).
fn has_secret_line(path: &Path) -> bool {
    fs::read_to_string(path).is_ok_and(|text| {
        text.lines().any(|l| {
            l.split_once('=')
                .is_some_and(|(k, v)| is_secret_key(k) && !v.trim().is_empty())
        })
    })
}

/// Regular files below `source/dir`, relative to the source, sorted (at most 4 levels down).
pub(crate) fn files_below(source: &Path, dir: &str) -> Vec<String> {
    fn walk(source: &Path, dir: &str, depth: usize, out: &mut Vec<String>) {
        for name in names_in(source, dir, |_, _| true) {
            let rel = format!("{dir}/{name}");
            match fs::symlink_metadata(source.join(&rel)) {
                Ok(m) if m.is_file() => out.push(rel),
                Ok(m) if m.is_dir() && depth < 4 => walk(source, &rel, depth + 1, out),
                _ => {}
            }
        }
    }
    let mut out = Vec::new();
    walk(source, dir, 1, &mut out);
    out
}

/// What still looks like a secret in the image once the plan is made: each is listed with
/// the `--exclude` that leaves it out (the image is served to anyone on the boot network).
fn secrets(source: &Path, plan: &mut Plan) {
    let is_file = |rel: &str| fs::symlink_metadata(source.join(rel)).is_ok_and(|m| m.is_file());
    let mut found: Vec<(String, &str)> = Vec::new();
    for name in names_in(source, "etc/ssl/private", |_, t| t.is_file()) {
        found.push((format!("etc/ssl/private/{name}"), "a TLS private key"));
    }
    for name in names_in(source, "etc/ssh", |n, t| t.is_file() && n.ends_with("_key")) {
        found.push((format!("etc/ssh/{name}"), "an ssh private key"));
    }
    for home in home_dirs(source) {
        let ssh = format!("{home}/.ssh");
        let id =
            |n: &str, t: fs::FileType| t.is_file() && n.starts_with("id_") && !n.ends_with(".pub");
        for name in names_in(source, &ssh, id) {
            found.push((format!("{ssh}/{name}"), "an ssh private key"));
        }
    }
    let nm = "etc/NetworkManager/system-connections";
    for name in names_in(source, nm, |_, t| t.is_file()) {
        let rel = format!("{nm}/{name}");
        if has_secret_line(&source.join(&rel)) {
            found.push((rel, "a network connection with its password or Wi-Fi key"));
        }
    }
    let mut wpa: Vec<String> = names_in(source, "etc/wpa_supplicant", |n, t| {
        t.is_file() && n.ends_with(".conf")
    })
    .into_iter()
    .map(|n| format!("etc/wpa_supplicant/{n}"))
    .collect();
    wpa.push("etc/wpa_supplicant.conf".into());
    for rel in wpa {
        if is_file(&rel) && has_secret_line(&source.join(&rel)) {
            found.push((rel, "Wi-Fi credentials"));
        }
    }
    // The openvpn package ships this script; everything else there is the site's.
    for rel in files_below(source, "etc/openvpn") {
        if rel != "etc/openvpn/update-resolv-conf" {
            found.push((rel, "OpenVPN configuration or keys"));
        }
    }
    for name in names_in(source, "etc/wireguard", |_, t| t.is_file()) {
        found.push((
            format!("etc/wireguard/{name}"),
            "a WireGuard configuration with its private key",
        ));
    }
    found.extend(crate::credentials::listed(source));
    if fs::metadata(source.join("etc/security/opasswd")).is_ok_and(|m| m.is_file() && m.len() > 0) {
        found.push((
            "etc/security/opasswd".into(),
            "old password hashes (pam_pwhistory)",
        ));
    }
    for (rel, what) in found {
        if !plan.leaves_out(&rel) {
            plan.secrets
                .push(format!("{rel}: {what} (--exclude {rel} leaves it out)"));
        }
    }
}

/// Swap files named in /proc/swaps (when the source is this system) or in the source's fstab.
fn swap_files(source: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut consider = |path: &str| {
        let rel = path.trim_start_matches('/');
        if path.starts_with('/') && source.join(rel).is_file() && !found.contains(&rel.to_string())
        {
            found.push(rel.to_string());
        }
    };
    if source == Path::new("/") {
        if let Ok(text) = fs::read_to_string("/proc/swaps") {
            text.lines()
                .skip(1)
                .filter_map(|l| l.split_whitespace().next())
                .for_each(&mut consider);
        }
    }
    if let Ok(text) = fs::read_to_string(source.join("etc/fstab")) {
        text.lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .filter(|f| f.len() >= 3 && f[2] == "swap" && !f[0].starts_with('#'))
            .for_each(|f| consider(f[0]));
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    const FSTAB: &str = "# /etc/fstab\nUUID=1234 / ext4 errors=remount-ro 0 1\nUUID=5678 none swap sw 0 0\n/swapfile none swap sw 0 0\nLABEL=data /srv/data ext4 defaults 0 2\n";

    #[test]
    fn fstab_loses_root_and_swap_and_keeps_the_rest() {
        let (kept, removed) = strip_fstab(FSTAB);
        assert_eq!(
            kept,
            "# /etc/fstab\nLABEL=data /srv/data ext4 defaults 0 2\n"
        );
        assert_eq!(removed.len(), 3);
        assert!(removed[0].contains("UUID=1234 /"));
    }

    #[test]
    fn a_seat_lacking_the_masters_other_disks_boots_without_them() {
        let fstab = "UUID=1234 / ext4 errors=remount-ro 0 1\n\
/dev/sdb1 /data ext4 defaults 0 2\n\
LABEL=scratch /scratch xfs\n\
UUID=9 /srv ext4 defaults,nofail 0 2\n\
PARTUUID=8 /opt ext4 x-systemd.device-timeout=30s 0 2\n\
/dev/sdc1 /backup ext4 noauto 0 0\n\
server:/home /home nfs4 defaults 0 0\n\
/srv/a /srv/b none bind 0 0\n\
tmpfs /tmp tmpfs defaults 0 0\n\
# /dev/sdd1 /old ext4 defaults 0 2\n";
        let (kept, _) = strip_fstab(fstab);
        let (seat, changed) = soften_fstab(&kept);
        assert_eq!(
            seat,
            "/dev/sdb1 /data ext4 defaults,nofail,x-systemd.device-timeout=10s 0 2\n\
LABEL=scratch /scratch xfs defaults,nofail,x-systemd.device-timeout=10s\n\
UUID=9 /srv ext4 defaults,nofail,x-systemd.device-timeout=10s 0 2\n\
PARTUUID=8 /opt ext4 x-systemd.device-timeout=30s,nofail 0 2\n\
/dev/sdc1 /backup ext4 noauto 0 0\n\
server:/home /home nfs4 defaults 0 0\n\
/srv/a /srv/b none bind 0 0\n\
tmpfs /tmp tmpfs defaults 0 0\n\
# /dev/sdd1 /old ext4 defaults 0 2\n"
        );
        assert_eq!(changed.len(), 4, "{changed:?}");
        assert_eq!(changed[0], "/dev/sdb1 /data ext4 defaults 0 2");
        assert_eq!(soften_fstab(&seat).1, Vec::<String>::new(), "idempotent");

        // The build replaces the fstab and says so, for a master with only a data disk too.
        let src = tempfile::tempdir().unwrap();
        let stage = tempfile::tempdir().unwrap();
        fs::create_dir_all(src.path().join("etc")).unwrap();
        fs::write(
            src.path().join("etc/fstab"),
            "/dev/sdb1 /data ext4 defaults 0 2\n",
        )
        .unwrap();
        let plan = plan(src.path(), stage.path(), &TidyOptions::default()).unwrap();
        assert_eq!(
            fs::read_to_string(stage.path().join("etc__fstab")).unwrap(),
            "/dev/sdb1 /data ext4 defaults,nofail,x-systemd.device-timeout=10s 0 2\n"
        );
        assert!(
            plan.changes.iter().any(|c| c.starts_with(
                "etc/fstab: \"/dev/sdb1 /data ext4 defaults 0 2\" gets nofail,x-systemd.device-timeout=10s"
            )),
            "{:?}",
            plan.changes
        );
    }

    #[test]
    fn plan_for_a_running_system_like_tree() {
        let src = tempfile::tempdir().unwrap();
        let stage = tempfile::tempdir().unwrap();
        let s = src.path();
        for d in ["etc/ssh", "etc/initramfs-tools/conf.d", "var/lib/dbus"] {
            fs::create_dir_all(s.join(d)).unwrap();
        }
        fs::write(s.join("etc/fstab"), FSTAB).unwrap();
        fs::write(s.join("swapfile"), "x").unwrap();
        fs::write(
            s.join("etc/machine-id"),
            "0123456789abcdef0123456789abcdef\n",
        )
        .unwrap();
        fs::write(s.join("var/lib/dbus/machine-id"), "0123\n").unwrap();
        fs::write(
            s.join("etc/initramfs-tools/conf.d/resume"),
            "RESUME=UUID=5678\n",
        )
        .unwrap();
        fs::write(s.join("etc/ssh/sshd_config"), "").unwrap();
        fs::write(s.join("etc/ssh/ssh_host_ed25519_key"), "secret").unwrap();
        fs::write(s.join("etc/hostname"), "master\n").unwrap();
        let opts = TidyOptions {
            running_system: true,
            ..Default::default()
        };
        let plan = plan(s, stage.path(), &opts).unwrap();
        for expected in [
            "etc/fstab",
            "swapfile",
            "etc/machine-id",
            "var/lib/dbus/machine-id",
            "etc/initramfs-tools/conf.d/resume",
            "etc/ssh/ssh_host_ed25519_key",
            "etc/hostname",
            "proc/*",
            "mnt/*",
        ] {
            assert!(
                plan.excludes.iter().any(|e| e == expected),
                "{expected} not excluded: {:?}",
                plan.excludes
            );
        }
        let staged_fstab = fs::read_to_string(stage.path().join("etc__fstab")).unwrap();
        assert!(!staged_fstab.contains(" / "));
        assert!(staged_fstab.contains("/srv/data"));
        assert!(plan
            .pseudo
            .iter()
            .any(|p| p.starts_with("etc/machine-id f ")));
        assert!(plan
            .pseudo
            .iter()
            .any(|p| p.contains("diskless-ssh-keygen.service s 777")));
        assert!(plan
            .pseudo
            .iter()
            .any(|p| p.contains("diskless-ssh-keygen-rsa.service s 777")));
        assert!(plan.changes.len() >= 8, "{:#?}", plan.changes);
        // The source is untouched.
        assert_eq!(fs::read_to_string(s.join("etc/fstab")).unwrap(), FSTAB);
        assert!(s.join("etc/ssh/ssh_host_ed25519_key").exists());
    }

    #[test]
    fn mount_points_from_mountinfo() {
        let info = "22 1 252:0 / / rw,relatime shared:1 - ext4 /dev/vda rw\n\
23 22 0:21 / /proc rw,nosuid shared:12 - proc proc rw\n\
24 23 0:22 / /proc/sys/fs/binfmt_misc rw - autofs systemd-1 rw\n\
25 22 0:23 / /srv/my\\040disk rw - ext4 /dev/vdb rw\n\
26 22 0:24 / /srvx rw - tmpfs tmpfs rw\n\
27 22 0:24 / /srv/tmp rw - tmpfs tmpfs rw\n";
        assert_eq!(
            mount_points_below(info, Path::new("/")),
            ["proc", "proc/sys/fs/binfmt_misc", "srvx", "srv/tmp"],
            "the path with a space is skipped"
        );
        assert_eq!(mount_points_below(info, Path::new("/srv")), ["tmp"]);
        assert_eq!(unescape_mountinfo("/a\\040b\\134c"), "/a b\\c");
    }

    #[test]
    fn a_pseudo_file_gets_its_missing_directories() {
        let src = tempfile::tempdir().unwrap();
        let stage = tempfile::tempdir().unwrap();
        fs::create_dir_all(src.path().join("etc/ssh")).unwrap();
        fs::write(src.path().join("etc/ssh/sshd_config"), "").unwrap();
        let plan = plan(src.path(), stage.path(), &TidyOptions::default()).unwrap();
        let dirs: Vec<&str> = plan
            .pseudo
            .iter()
            .filter(|p| p.ends_with(" d 755 0 0"))
            .map(|p| p.split(' ').next().unwrap())
            .collect();
        assert_eq!(
            dirs,
            [
                "etc/systemd",
                "etc/systemd/system",
                "etc/systemd/system/multi-user.target.wants"
            ]
        );
    }

    #[test]
    fn kernels_and_initrds_stay_out_of_the_image() {
        let src = tempfile::tempdir().unwrap();
        let stage = tempfile::tempdir().unwrap();
        fs::create_dir_all(src.path().join("boot")).unwrap();
        for f in [
            "vmlinuz-6.1.0-9-amd64",
            "initrd.img-6.1.0-9-amd64",
            "config-6.1.0-9-amd64",
        ] {
            fs::write(src.path().join("boot").join(f), "x").unwrap();
        }
        let plan = plan(src.path(), stage.path(), &TidyOptions::default()).unwrap();
        assert!(plan
            .excludes
            .contains(&"boot/vmlinuz-6.1.0-9-amd64".to_string()));
        assert!(plan
            .excludes
            .contains(&"boot/initrd.img-6.1.0-9-amd64".to_string()));
        assert!(!plan.excludes.iter().any(|e| e.contains("config-")));
        assert_eq!(plan.changes.len(), 2, "{:?}", plan.changes);
    }

    #[test]
    fn a_clean_chroot_needs_few_changes() {
        let src = tempfile::tempdir().unwrap();
        let stage = tempfile::tempdir().unwrap();
        fs::create_dir_all(src.path().join("etc")).unwrap();
        fs::write(
            src.path().join("etc/fstab"),
            "# UNCONFIGURED FSTAB FOR BASE SYSTEM\n",
        )
        .unwrap();
        fs::write(src.path().join("etc/machine-id"), "").unwrap();
        let plan = plan(src.path(), stage.path(), &TidyOptions::default()).unwrap();
        assert!(plan.pseudo.is_empty(), "{:?}", plan.pseudo);
        assert!(plan.changes.is_empty(), "{:?}", plan.changes);
        assert!(!plan.excludes.iter().any(|e| e == "mnt/*"));
    }

    #[test]
    fn the_ssh_generator_is_masked_where_the_release_has_it() {
        let src = tempfile::tempdir().unwrap();
        let stage = tempfile::tempdir().unwrap();
        let generators = src.path().join("usr/lib/systemd/system-generators");
        fs::create_dir_all(&generators).unwrap();
        fs::write(generators.join("systemd-fstab-generator"), "").unwrap();
        // bookworm's systemd 252 has no ssh generator: nothing to mask.
        let bookworm = plan(src.path(), stage.path(), &TidyOptions::default()).unwrap();
        assert!(bookworm.pseudo.is_empty(), "{:?}", bookworm.pseudo);

        fs::write(generators.join("systemd-ssh-generator"), "").unwrap();
        let trixie = plan(src.path(), stage.path(), &TidyOptions::default()).unwrap();
        assert_eq!(
            trixie.pseudo,
            [
                "etc d 755 0 0",
                "etc/systemd d 755 0 0",
                "etc/systemd/system-generators d 755 0 0",
                "etc/systemd/system-generators/systemd-ssh-generator s 777 0 0 /dev/null",
            ]
        );
        assert_eq!(trixie.changes.len(), 1, "{:?}", trixie.changes);
        assert!(!trixie.leaves_out("usr/lib/systemd/system-generators/systemd-ssh-generator"));

        // An admin's own file of that name in /etc is theirs.
        let etc = src.path().join("etc/systemd/system-generators");
        fs::create_dir_all(&etc).unwrap();
        std::os::unix::fs::symlink("/dev/null", etc.join("systemd-ssh-generator")).unwrap();
        let admin = plan(src.path(), stage.path(), &TidyOptions::default()).unwrap();
        assert!(admin.pseudo.is_empty(), "{:?}", admin.pseudo);
    }

    #[test]
    fn the_update_units_are_masked_where_the_release_has_them() {
        let src = tempfile::tempdir().unwrap();
        let stage = tempfile::tempdir().unwrap();
        let units = src.path().join("usr/lib/systemd/system");
        fs::create_dir_all(&units).unwrap();
        fs::create_dir_all(src.path().join("etc/systemd/system")).unwrap();
        fs::write(units.join("ssh.service"), "").unwrap();
        // bookworm's systemd 252 package ships none of them.
        let bookworm = plan(src.path(), stage.path(), &TidyOptions::default()).unwrap();
        assert!(bookworm.pseudo.is_empty(), "{:?}", bookworm.pseudo);

        let names = [
            "ldconfig.service",
            "systemd-update-done.service",
            "systemd-journal-catalog-update.service",
            "systemd-hwdb-update.service",
        ];
        for name in names {
            fs::write(units.join(name), "[Unit]\nConditionNeedsUpdate=/etc\n").unwrap();
        }
        let trixie = plan(src.path(), stage.path(), &TidyOptions::default()).unwrap();
        let expected: Vec<String> = names
            .iter()
            .map(|n| format!("etc/systemd/system/{n} s 777 0 0 /dev/null"))
            .collect();
        assert_eq!(trixie.pseudo, expected);
        assert_eq!(trixie.changes.len(), names.len(), "{:?}", trixie.changes);
    }

    const SHADOW: &str = "root:$y$j9T$abc$def:19000:0:99999:7:::\n\
daemon:*:19000:0:99999:7:::\n\
alice:!$6$salt$hash:19000:0:99999:7:::\n\
bob:!:19000::::::\n\
carol::19000::::::\n\
dave:!*:19000::::::\n";

    #[test]
    fn password_hashes_are_replaced_and_markers_kept() {
        let (blanked, names) = blank_hashes(SHADOW);
        assert_eq!(names, ["root", "alice"]);
        assert_eq!(
            blanked,
            "root:!:19000:0:99999:7:::\ndaemon:*:19000:0:99999:7:::\nalice:!:19000:0:99999:7:::\n\
bob:!:19000::::::\ncarol::19000::::::\ndave:!*:19000::::::\n"
        );
        assert_eq!(blank_hashes("root:*:1::::::\n").1, Vec::<String>::new());
    }

    #[test]
    fn exclusions_match_as_mksquashfs_does() {
        let plan = Plan {
            excludes: vec![
                "home/alice/*".into(),
                "root/.*".into(),
                "etc/ssl/private".into(),
            ],
            ..Default::default()
        };
        assert!(plan.leaves_out("home/alice/notes"));
        assert!(
            plan.leaves_out("home/alice/docs/a.txt"),
            "below an excluded directory"
        );
        assert!(
            !plan.leaves_out("home/alice/.ssh/id_rsa"),
            "* does not match a leading dot"
        );
        assert!(plan.leaves_out("root/.ssh/id_rsa"));
        assert!(!plan.leaves_out("root/notes"));
        assert!(plan.leaves_out("etc/ssl/private/x.key"));
        assert!(!plan.leaves_out("home/alice"), "the directory itself stays");
    }

    #[test]
    fn secrets_still_in_the_image_are_listed_with_their_way_out() {
        let src = tempfile::tempdir().unwrap();
        let stage = tempfile::tempdir().unwrap();
        let s = src.path();
        let put = |rel: &str, content: &str| {
            fs::create_dir_all(s.join(rel).parent().unwrap()).unwrap();
            fs::write(s.join(rel), content).unwrap();
        };
        put("etc/shadow", SHADOW);
        put(
            "etc/ssl/private/ssl-cert-snakeoil.key",
            "-----BEGIN PRIVATE KEY-----",
        );
        put("etc/ssh/ssh_host_ed25519_key", "host key");
        put("etc/ssh/backup_key", "another key");
        put("home/alice/.ssh/id_ed25519", "key");
        put("home/alice/.ssh/id_ed25519.pub", "public");
        put("root/.ssh/id_rsa", "key");
        put(
            "etc/NetworkManager/system-connections/office.nmconnection",
            "[wifi-security]\nkey-mgmt=wpa-psk\npsk=hunter22\n",
        );
        put(
            "etc/NetworkManager/system-connections/wired.nmconnection",
            "[ethernet]\n",
        );
        put(
            "etc/wpa_supplicant/wpa_supplicant.conf",
            "network={\n ssid=\"x\"\n psk=\"secret\"\n}\n",
        );
        put("etc/openvpn/update-resolv-conf", "#!/bin/sh");
        put("etc/openvpn/client/site.conf", "remote vpn.example 1194");
        put("etc/wireguard/wg0.conf", "[Interface]\nPrivateKey = abc\n");

        // A chroot: homes stay (and their keys are listed); hashes are replaced.
        let chroot = super::plan(s, stage.path(), &TidyOptions::default()).unwrap();
        let listed: Vec<&str> = chroot
            .secrets
            .iter()
            .map(|l| l.split(':').next().unwrap())
            .collect();
        assert_eq!(
            listed,
            [
                "etc/ssl/private/ssl-cert-snakeoil.key",
                "etc/ssh/backup_key",
                "home/alice/.ssh/id_ed25519",
                "root/.ssh/id_rsa",
                "etc/NetworkManager/system-connections/office.nmconnection",
                "etc/wpa_supplicant/wpa_supplicant.conf",
                "etc/openvpn/client/site.conf",
                "etc/wireguard/wg0.conf",
            ],
            "{:#?}",
            chroot.secrets
        );
        assert!(chroot.secrets[0]
            .ends_with("(--exclude etc/ssl/private/ssl-cert-snakeoil.key leaves it out)"));
        assert!(
            chroot
                .changes
                .iter()
                .any(|c| c.starts_with("etc/shadow: password hashes of root, alice replaced")),
            "{:?}",
            chroot.changes
        );
        assert!(fs::read_to_string(stage.path().join("etc__shadow"))
            .unwrap()
            .starts_with("root:!:"));

        // A running system: homes and root are emptied, so their keys are no longer listed;
        // what the user leaves out is not listed either; kept hashes are.
        let opts = TidyOptions {
            running_system: true,
            keep_password_hashes: true,
            extra_excludes: vec!["etc/wireguard".into()],
            ..Default::default()
        };
        let plan = super::plan(s, stage.path(), &opts).unwrap();
        let all = plan.secrets.join("\n");
        assert!(
            !all.contains("id_ed25519") && !all.contains("id_rsa") && !all.contains("wg0"),
            "{all}"
        );
        assert!(
            all.contains(
                "etc/shadow: password hashes of root, alice (kept by --keep-password-hashes)"
            ),
            "{all}"
        );
        for gone in ["home/alice/*", "home/alice/.*", "root/*", "root/.*"] {
            assert!(
                plan.excludes.iter().any(|e| e == gone),
                "{gone}: {:?}",
                plan.excludes
            );
        }
        assert!(
            plan.changes
                .iter()
                .any(|c| c.starts_with("home/alice: left out")),
            "{:?}",
            plan.changes
        );
        assert!(!plan.pseudo.iter().any(|p| p.starts_with("etc/shadow ")));

        // --include-home keeps them.
        let opts = TidyOptions {
            running_system: true,
            include_home: true,
            ..Default::default()
        };
        let plan = super::plan(s, stage.path(), &opts).unwrap();
        assert!(!plan
            .excludes
            .iter()
            .any(|e| e.starts_with("home/") || e.starts_with("root/")));
        assert!(plan
            .secrets
            .iter()
            .any(|l| l.starts_with("root/.ssh/id_rsa")));
    }
}
