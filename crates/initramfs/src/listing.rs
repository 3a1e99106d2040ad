//! Listing lines in the forms `lsinitramfs` prints: the name alone, or the
//! long form of `lsinitramfs -l` (GNU `cpio -tv`).

use std::collections::HashMap;
use std::ffi::CStr;

use crate::cpio::{EntryKind, Header};

/// `ls`-style type and permission string, e.g. `-rwsr-xr-x`.
pub fn mode_string(mode: u32) -> String {
    let t = match EntryKind::from(mode) {
        EntryKind::File => '-',
        EntryKind::Dir => 'd',
        EntryKind::Symlink => 'l',
        EntryKind::CharDevice => 'c',
        EntryKind::BlockDevice => 'b',
        EntryKind::Fifo => 'p',
        EntryKind::Socket => 's',
        EntryKind::Unknown(_) => '?',
    };
    let bit = |m: u32, c: char| if mode & m != 0 { c } else { '-' };
    // Execute bit combined with setuid/setgid/sticky.
    let special = |x: u32, s: u32, on: char, off: char| match (mode & x != 0, mode & s != 0) {
        (true, true) => on,
        (false, true) => off,
        (true, false) => 'x',
        (false, false) => '-',
    };
    [
        t,
        bit(0o400, 'r'),
        bit(0o200, 'w'),
        special(0o100, 0o4000, 's', 'S'),
        bit(0o040, 'r'),
        bit(0o020, 'w'),
        special(0o010, 0o2000, 's', 'S'),
        bit(0o004, 'r'),
        bit(0o002, 'w'),
        special(0o001, 0o1000, 't', 'T'),
    ]
    .iter()
    .collect()
}

/// Formats times like `cpio -tv`: month, day and either the time of day
/// or, for files older than six months or in the future, the year. Uses
/// the local time zone, as cpio does.
pub fn cpio_date(mtime: i64, now: i64) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    // SAFETY: tm is plain data; localtime_r only writes into it.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    let t: libc::time_t = mtime as libc::time_t;
    // SAFETY: both pointers are valid for the call.
    if unsafe { libc::localtime_r(&t, &mut tm) }.is_null() {
        return format!("{mtime:>12}");
    }
    let month = MONTHS.get(tm.tm_mon as usize).copied().unwrap_or("???");
    let age = now - mtime;
    if !(0..=6 * 30 * 24 * 60 * 60).contains(&age) {
        format!("{month} {:2}  {}", tm.tm_mday, tm.tm_year + 1900)
    } else {
        format!(
            "{month} {:2} {:02}:{:02}",
            tm.tm_mday, tm.tm_hour, tm.tm_min
        )
    }
}

/// Caches user and group names from the system's databases.
#[derive(Debug, Default)]
pub struct Names {
    users: HashMap<u32, String>,
    groups: HashMap<u32, String>,
}

impl Names {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// The user's name, or the number when unknown.
    pub fn user(&mut self, uid: u32) -> &str {
        self.users.entry(uid).or_insert_with(|| {
            let mut buf = vec![0 as libc::c_char; 4096];
            // SAFETY: zeroed passwd is valid to pass; getpwuid_r fills it and
            // points its strings into buf, which outlives their use here.
            let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
            let mut out = std::ptr::null_mut();
            let rc =
                unsafe { libc::getpwuid_r(uid, &mut pw, buf.as_mut_ptr(), buf.len(), &mut out) };
            if rc == 0 && !out.is_null() {
                // SAFETY: pw_name is a NUL-terminated string inside buf.
                unsafe { CStr::from_ptr(pw.pw_name) }
                    .to_string_lossy()
                    .into_owned()
            } else {
                uid.to_string()
            }
        })
    }

    /// The group's name, or the number when unknown.
    pub fn group(&mut self, gid: u32) -> &str {
        self.groups.entry(gid).or_insert_with(|| {
            let mut buf = vec![0 as libc::c_char; 4096];
            // SAFETY: as in `user`.
            let mut gr: libc::group = unsafe { std::mem::zeroed() };
            let mut out = std::ptr::null_mut();
            let rc =
                unsafe { libc::getgrgid_r(gid, &mut gr, buf.as_mut_ptr(), buf.len(), &mut out) };
            if rc == 0 && !out.is_null() {
                // SAFETY: gr_name is a NUL-terminated string inside buf.
                unsafe { CStr::from_ptr(gr.gr_name) }
                    .to_string_lossy()
                    .into_owned()
            } else {
                gid.to_string()
            }
        })
    }
}

/// One line of `cpio -tv` for `h` (without the newline); `link_target` is
/// the data of a symlink.
pub fn long_line(h: &Header, link_target: Option<&[u8]>, now: i64, names: &mut Names) -> Vec<u8> {
    let size = match h.kind() {
        EntryKind::CharDevice | EntryKind::BlockDevice => {
            format!("{:3}, {:3}", h.rdevmajor, h.rdevminor)
        }
        _ => format!("{:8}", h.filesize),
    };
    let user = names.user(h.uid).to_owned();
    let group = names.group(h.gid);
    let mut line = format!(
        "{} {:3} {:<8.8} {:<8.8} {} {} ",
        mode_string(h.mode),
        h.nlink,
        user,
        group,
        size,
        cpio_date(i64::from(h.mtime), now)
    )
    .into_bytes();
    line.extend_from_slice(&h.name);
    if let Some(t) = link_target {
        line.extend_from_slice(b" -> ");
        line.extend_from_slice(t);
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes() {
        assert_eq!(mode_string(0o100_644), "-rw-r--r--");
        assert_eq!(mode_string(0o104_755), "-rwsr-xr-x");
        assert_eq!(mode_string(0o041_777), "drwxrwxrwt");
        assert_eq!(mode_string(0o102_644), "-rw-r-Sr--");
        assert_eq!(mode_string(0o020_600), "crw-------");
        assert_eq!(mode_string(0o120_777), "lrwxrwxrwx");
    }

    #[test]
    fn dates_switch_to_year_after_six_months() {
        std::env::set_var("TZ", "UTC");
        extern "C" {
            fn tzset();
        }
        // SAFETY: tzset re-reads TZ; no other test of this crate reads the zone.
        unsafe { tzset() };
        let t = 1_700_000_000; // 2023-11-14 22:13:20 UTC
        assert_eq!(cpio_date(t, t + 60), "Nov 14 22:13");
        assert_eq!(cpio_date(t, t + 200 * 86_400), "Nov 14  2023");
        assert_eq!(cpio_date(t, t - 1), "Nov 14  2023");
        assert_eq!(cpio_date(0, t), "Jan  1  1970");
    }
}
