//! `diskless serve` started as root becomes an ordinary user that keeps only the capabilities
//! the server uses, at most the two `diskless.service` grants (packaging/diskless.service says
//! how they were measured): the service user by default ([`SERVICE_USER`]), `--user` another.
//! Which ones it needs follows from the config ([`needed`]): `CAP_NET_BIND_SERVICE` always,
//! `CAP_NET_RAW` only when it answers router solicitations (`ipv6_ra`, its raw ICMPv6 socket)
//! or queries IGMP (`[multicast] querier`, its raw IGMP socket).
//! Started as the user with both (the unit's ambient capabilities), it gives up the one it
//! does not need ([`keep_only`]).
//!
//! **When.** Capabilities, the bounding set, `no_new_privs` and the keep-capabilities flag
//! belong to threads, not to the process: a thread started later inherits its creator's. The
//! drop therefore happens while the process has one thread, before the tokio runtime starts
//! its workers, and every thread of the server is then the user with the capabilities kept.
//! Dropping after the workers exist (after the sockets are bound) would leave the workers
//! with an empty permitted set but a full bounding set and no `no_new_privs`: a worker that
//! executed a set-uid program would be root again. Binding needs no more than the
//! capabilities kept (ports below 1024: `CAP_NET_BIND_SERVICE`; the raw ICMPv6 socket:
//! `CAP_NET_RAW`; DHCP's `SO_BINDTODEVICE` on a socket not yet tied to a device needs none
//! since Linux 5.7), so the process binds its sockets right after the drop, exactly as it
//! does under systemd, where it starts as the user with those capabilities ambient.
//!
//! **What it may write.** Before it drops, root makes the state directory (leases,
//! `clients.json`, the server's secret) and the store's `ipxe/` directory (its copies of the
//! iPXE binaries) the user's, as `StateDirectory=` and packaging/tmpfiles.conf do for the
//! service; the store's images stay root's and must be readable by the user (`image build`
//! writes them 0755/0644). After the drop, [`check_access`] says what the user cannot reach.

use anyhow::{bail, Context, Result};
use caps::{CapSet, Capability, CapsHashSet};
use std::ffi::{CStr, CString};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

/// The user the package creates (packaging/sysusers.conf) and `serve` becomes by default.
pub const SERVICE_USER: &str = "diskless";

/// The capabilities the server may keep: ports below 1024, and the raw ICMPv6 socket of the
/// router advertisements ([`needed`] says which of them a config uses).
pub const KEPT: [Capability; 2] = [Capability::CAP_NET_BIND_SERVICE, Capability::CAP_NET_RAW];

/// What the server serving `ra` needs of [`KEPT`]: `CAP_NET_RAW` only for the router
/// advertisements' raw socket, or the IGMP querier's (`igmp_querier`: `[multicast] querier`
/// on). The Ethernet frame of a wake request (an `AF_PACKET` socket)
/// would need it too, but it is optional (the UDP broadcast goes anyway, and the reply says
/// the frame was not sent) and the unit's `RestrictAddressFamilies` never allowed it.
pub fn needed(ra: diskless_boot::site::Ipv6Ra, igmp_querier: bool) -> CapsHashSet {
    let raw = ra != diskless_boot::site::Ipv6Ra::Off || igmp_querier;
    KEPT.into_iter()
        .filter(|c| *c != Capability::CAP_NET_RAW || raw)
        .collect()
}

/// The capabilities in `set`, by name, in [`KEPT`]'s order (`none` for none): for the log.
pub fn names(set: &CapsHashSet) -> String {
    let names: Vec<String> = KEPT
        .iter()
        .filter(|c| set.contains(c))
        .map(|c| c.to_string())
        .collect();
    if names.is_empty() {
        "none".to_string()
    } else {
        names.join(" and ")
    }
}

/// A user from the password database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub uid: libc::uid_t,
    pub gid: libc::gid_t,
}

/// Look `name` up in the password database; `None` when there is no such user.
pub fn lookup(name: &str) -> Result<Option<User>> {
    let cname = CString::new(name).with_context(|| format!("user name {name:?}"))?;
    let mut buf = vec![0u8; 16 * 1024];
    // SAFETY: getpwnam_r writes into `pwd` and `buf`, both ours and large enough as told.
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    let rc = unsafe {
        libc::getpwnam_r(
            cname.as_ptr(),
            &mut pwd,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut found,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::from_raw_os_error(rc))
            .with_context(|| format!("looking up user {name}"));
    }
    if found.is_null() {
        return Ok(None);
    }
    // SAFETY: pw_name points into `buf`, NUL-terminated, as getpwnam_r succeeded.
    let name = unsafe { CStr::from_ptr(pwd.pw_name) }
        .to_string_lossy()
        .into_owned();
    Ok(Some(User {
        name,
        uid: pwd.pw_uid,
        gid: pwd.pw_gid,
    }))
}

/// The user `serve` is to become, or the error that says how to create it.
pub fn service_user(name: &str) -> Result<User> {
    lookup(name)?.with_context(|| {
        format!(
            "there is no user {name:?} to run the server as: create it (useradd --system \
             --home-dir /var/lib/diskless --shell /usr/sbin/nologin {name}; the Debian package \
             does), or choose another with --user NAME (--user root keeps root)"
        )
    })
}

/// Whether this process runs as root (effective uid 0): the only case where `serve` drops.
pub fn is_root() -> bool {
    // SAFETY: a getter without arguments.
    unsafe { libc::geteuid() == 0 }
}

/// Capabilities are per thread (module docs): a change now must reach every thread the
/// server will have.
fn one_thread() -> Result<()> {
    let threads = threads()?;
    if threads != 1 {
        bail!("changing capabilities needs a process with one thread, this one has {threads}");
    }
    Ok(())
}

/// Not root, started with capabilities (the unit's ambient ones): give up those not in
/// `kept`, from the effective and permitted sets, and clear the ambient and inheritable sets
/// (the server executes no program that needs a capability, as after [`drop_to`]); a thread
/// may always lower them. The bounding set stays (lowering it needs CAP_SETPCAP); with the
/// permitted set lowered and `no_new_privs` (the unit's `NoNewPrivileges=yes`) nothing brings
/// them back. Call while the process has a single thread. Returns what is kept.
pub fn keep_only(kept: &CapsHashSet) -> Result<CapsHashSet> {
    one_thread()?;
    // capset(2) first: where it is refused (the packaged unit's SystemCallFilter) nothing has
    // changed yet, the ambient set included (prctl, allowed), so the process keeps the
    // unit's sets whole.
    caps::clear(None, CapSet::Inheritable).context("clearing the inheritable capabilities")?;
    let permitted = caps::read(None, CapSet::Permitted).context("reading the capabilities")?;
    for cap in permitted.difference(kept) {
        for set in [CapSet::Effective, CapSet::Permitted] {
            caps::drop(None, set, *cap)
                .with_context(|| format!("dropping {cap} from the {set:?} capabilities"))?;
        }
    }
    caps::clear(None, CapSet::Ambient).context("clearing the ambient capabilities")?;
    let now = caps::read(None, CapSet::Permitted).context("reading the capabilities")?;
    if now.iter().any(|c| !kept.contains(c)) {
        bail!("dropping capabilities did not hold: still permitted {now:?}");
    }
    Ok(now)
}

fn check(rc: libc::c_int, what: &str) -> Result<()> {
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context(what.to_string());
    }
    Ok(())
}

/// The number of threads of this process (`Threads:` of /proc/self/status).
fn threads() -> Result<usize> {
    let status =
        std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
        .context("no Threads: line in /proc/self/status")
}

/// Become `user`, with its groups (initgroups, as systemd's `User=` does), keeping `kept` (of
/// [`KEPT`]) as effective and permitted capabilities and nothing else, bounding set included, and set
/// `no_new_privs` (the unit's `NoNewPrivileges=yes`). The inheritable and ambient sets stay
/// empty: the server executes no program that needs a capability. Call it as root, while the
/// process has a single thread (see the module docs).
pub fn drop_to(user: &User, kept: &CapsHashSet) -> Result<()> {
    one_thread()?;
    let kept = kept.clone();
    // Dropping from the bounding set needs CAP_SETPCAP: while still root. By number, up to
    // the kernel's last capability, so that one newer than the caps crate goes too.
    let last = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .context("reading /proc/sys/kernel/cap_last_cap")?;
    let last: u8 = last
        .trim()
        .parse()
        .with_context(|| format!("/proc/sys/kernel/cap_last_cap: {last:?}"))?;
    for cap in (0..=last).filter(|n| !kept.iter().any(|k| k.index() == *n)) {
        // SAFETY: a plain prctl on this thread's bounding set.
        let rc = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, libc::c_ulong::from(cap), 0, 0, 0) };
        check(
            rc,
            &format!("dropping capability {cap} from the bounding set"),
        )?;
    }
    let name = CString::new(user.name.as_str()).context("user name")?;
    // SAFETY: plain system calls on this process's credentials; `name` outlives the call.
    unsafe {
        check(
            libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0),
            "prctl(PR_SET_KEEPCAPS)",
        )?;
        check(
            libc::initgroups(name.as_ptr(), user.gid),
            &format!("setting the groups of {}", user.name),
        )?;
        check(
            libc::setresgid(user.gid, user.gid, user.gid),
            &format!("setresgid({})", user.gid),
        )?;
        check(
            libc::setresuid(user.uid, user.uid, user.uid),
            &format!("setresuid({})", user.uid),
        )?;
        check(
            libc::prctl(libc::PR_SET_KEEPCAPS, 0, 0, 0, 0),
            "prctl(PR_SET_KEEPCAPS, 0)",
        )?;
    }
    caps::set(None, CapSet::Permitted, &kept).context("setting the permitted capabilities")?;
    caps::set(None, CapSet::Effective, &kept).context("setting the effective capabilities")?;
    caps::clear(None, CapSet::Inheritable).context("clearing the inheritable capabilities")?;
    caps::clear(None, CapSet::Ambient).context("clearing the ambient capabilities")?;
    // SAFETY: a plain prctl on this thread.
    check(
        unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) },
        "prctl(PR_SET_NO_NEW_PRIVS)",
    )?;
    // Check, rather than trust, what the kernel now says.
    // SAFETY: getters without arguments.
    let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    let effective = caps::read(None, CapSet::Effective).context("reading the capabilities")?;
    if (uid, gid) != (user.uid, user.gid) || effective != kept {
        bail!(
            "dropping privileges to {} did not hold: uid {uid}, gid {gid}, capabilities {effective:?}",
            user.name
        );
    }
    Ok(())
}

/// Make `dir` (created if missing; its mode `mode`) and the regular files directly in it
/// `user`'s, as root, before the drop: what the server writes there must stay its own.
/// Refused, changing nothing, when `dir` holds anything else (a subdirectory, a link) not
/// already the user's: a state directory set by mistake to a shared one (`/var/lib`, `/tmp`)
/// must not change owner. Refused too when a file to be given has more than one hard link:
/// the other name may be anywhere on the filesystem (`/etc/shadow` linked in by whoever holds
/// the service user), and the owner belongs to the file, not to the name. `dir` itself may be
/// a link to a directory.
pub fn give_dir(dir: &Path, mode: u32, user: &User) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let meta = std::fs::metadata(dir).with_context(|| format!("{}", dir.display()))?;
    if !meta.is_dir() {
        bail!("{} is not a directory", dir.display());
    }
    let owned = |m: &std::fs::Metadata| (m.uid(), m.gid()) == (user.uid, user.gid);
    let mut files = Vec::new();
    let mut foreign = None;
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry.with_context(|| format!("reading {}", dir.display()))?;
        let path = entry.path();
        let entry_meta =
            std::fs::symlink_metadata(&path).with_context(|| format!("{}", path.display()))?;
        if entry_meta.is_file() {
            files.push((path, entry_meta));
        } else if !owned(&entry_meta) {
            foreign.get_or_insert(path);
        }
    }
    let done = owned(&meta)
        && meta.permissions().mode() & 0o7777 == mode
        && files.iter().all(|(_, m)| owned(m));
    if done {
        return Ok(());
    }
    if let Some((path, m)) = files.iter().find(|(_, m)| !owned(m) && m.nlink() > 1) {
        bail!(
            "{} has {} hard links: the server gives user {} only files of its own, and this \
             one is also another name elsewhere; remove it (or copy it over itself: cp {} \
             {}.new && mv {}.new {}) and start again",
            path.display(),
            m.nlink(),
            user.name,
            path.display(),
            path.display(),
            path.display(),
            path.display()
        );
    }
    if let Some(other) = foreign {
        bail!(
            "{} holds {}, which is not a file the server wrote: the server makes the \
             directories it writes user {}'s only when they hold nothing but its files; \
             choose a directory of its own (--state), or chown -R {} it yourself",
            dir.display(),
            other.display(),
            user.name,
            user.name
        );
    }
    if meta.permissions().mode() & 0o7777 != mode {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
            .with_context(|| format!("setting the mode of {}", dir.display()))?;
    }
    let give = |path: &Path, result: std::io::Result<()>| {
        result.with_context(|| format!("giving {} to user {}", path.display(), user.name))
    };
    if !owned(&meta) {
        give(
            dir,
            std::os::unix::fs::chown(dir, Some(user.uid), Some(user.gid)),
        )?;
    }
    for (path, _) in files.iter().filter(|(_, m)| !owned(m)) {
        give(path, give_file(path, user))?;
    }
    Ok(())
}

/// Chown the regular file `path`, through a descriptor: what is chowned is the file checked
/// (one link, not a symlink), even if the name was replaced since it was listed.
fn give_file(path: &Path, user: &User) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() || meta.nlink() != 1 {
        return Err(std::io::Error::other(format!(
            "changed while being given away: now {} with {} links",
            if meta.is_file() {
                "a file"
            } else {
                "not a file"
            },
            meta.nlink()
        )));
    }
    std::os::unix::fs::fchown(&file, Some(user.uid), Some(user.gid))
}

/// What the dropped process must reach: `writable` directories (each a place it writes) and
/// `readable` paths (the config, read again on SIGHUP; the store's images). An error names
/// the first it cannot reach, as whom, and what to change.
pub fn check_access(user: &User, writable: &[&Path], readable: &[&Path]) -> Result<()> {
    let can = |path: &Path, mode: libc::c_int| -> bool {
        let Ok(c) = CString::new(path.as_os_str().as_bytes()) else {
            return false;
        };
        // SAFETY: access(2) on a NUL-terminated path; it checks the real uid, the user's now.
        unsafe { libc::access(c.as_ptr(), mode) == 0 }
    };
    for dir in writable {
        if !can(dir, libc::W_OK | libc::X_OK) {
            bail!(
                "{} is not writable by user {}: it or a directory above it is closed to that \
                 user; choose another place or open the way (chmod o+x on the parents)",
                dir.display(),
                user.name
            );
        }
    }
    for path in readable {
        let mode = if path.is_dir() {
            libc::R_OK | libc::X_OK
        } else {
            libc::R_OK
        };
        if !can(path, mode) {
            bail!(
                "{} is not readable by user {}, which the server runs as after it starts \
                 (it reads the config again on SIGHUP, the store's images at each request): \
                 make it and the directories above it readable (chmod o+rX, or chgrp {})",
                path.display(),
                user.name,
                user.name
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_net_raw_is_kept_for_router_advertisements_or_the_igmp_querier() {
        use diskless_boot::site::Ipv6Ra;
        let raw = |set: CapsHashSet| set.contains(&Capability::CAP_NET_RAW);
        assert!(!raw(needed(Ipv6Ra::Off, false)));
        assert!(
            raw(needed(Ipv6Ra::Off, true)),
            "the querier's raw IGMP socket"
        );
        assert!(raw(needed(Ipv6Ra::Booting, false)));
        assert!(needed(Ipv6Ra::Off, false).contains(&Capability::CAP_NET_BIND_SERVICE));
    }

    #[test]
    fn root_is_found_and_a_missing_user_is_none() {
        let root = lookup("root").unwrap().unwrap();
        assert_eq!((root.uid, root.gid), (0, 0));
        assert_eq!(lookup("diskless-no-such-user").unwrap(), None);
        assert!(lookup("a\0b").is_err());
        let err = format!("{:#}", service_user("diskless-no-such-user").unwrap_err());
        assert!(
            err.contains("\"diskless-no-such-user\"")
                && err.contains("useradd --system")
                && err.contains("--user"),
            "{err}"
        );
    }

    #[test]
    fn a_shared_directory_is_not_given_away() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("leases.json"), "{}").unwrap();
        std::fs::create_dir(dir.path().join("home")).unwrap();
        let me = User {
            name: "me".into(),
            // SAFETY: getters without arguments.
            uid: unsafe { libc::geteuid() },
            gid: unsafe { libc::getegid() },
        };
        // As root, `me` is root and owns the directory already: another owner stands for
        // the one it would be given to.
        let other = User {
            name: "other".into(),
            uid: me.uid + 4242,
            gid: me.gid + 4242,
        };
        let err = format!("{:#}", give_dir(dir.path(), 0o700, &other).unwrap_err());
        assert!(err.contains("home") && err.contains("--state"), "{err}");
        // Already the user's (chowned by hand): accepted as it is.
        give_dir(dir.path(), 0o700, &me).unwrap();
        std::fs::remove_dir(dir.path().join("home")).unwrap();
        give_dir(dir.path(), 0o700, &me).unwrap();
        let fresh = dir.path().join("new/state");
        give_dir(&fresh, 0o700, &me).unwrap();
        let mode = std::fs::metadata(&fresh).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
    }

    #[test]
    fn a_hard_linked_file_is_not_given_away() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        std::fs::create_dir(&state).unwrap();
        // Another name of a file outside the state directory (a system file, in the attack).
        let outside = dir.path().join("shadow");
        std::fs::write(&outside, "root:$y$hash:::::::\n").unwrap();
        std::fs::hard_link(&outside, state.join("report.key")).unwrap();
        let before = std::fs::metadata(&outside).unwrap();
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).unwrap();
        let other = User {
            name: "other".into(),
            uid: before.uid() + 4242,
            gid: before.gid() + 4242,
        };
        let err = format!("{:#}", give_dir(&state, 0o700, &other).unwrap_err());
        assert!(
            err.starts_with(&format!(
                "{} has 2 hard links",
                state.join("report.key").display()
            )),
            "{err}"
        );
        let after = std::fs::metadata(&outside).unwrap();
        assert_eq!((after.uid(), after.gid()), (before.uid(), before.gid()));
        let mode = std::fs::metadata(&state).unwrap().permissions().mode();
        assert_eq!(
            mode & 0o777,
            0o755,
            "refused before any change, the mode too"
        );
    }
}
