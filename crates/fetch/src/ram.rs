//! How much room there is for the image: free RAM and free space on the tmpfs.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Memory kept free for the kernel and the booted system, beyond the image itself.
pub const RESERVE: u64 = 96 * 1024 * 1024;

const MIB: u64 = 1024 * 1024;

/// `MemAvailable` from /proc/meminfo, in bytes.
pub fn mem_available() -> Result<u64, String> {
    let text = std::fs::read_to_string("/proc/meminfo")
        .map_err(|e| format!("reading /proc/meminfo: {e}"))?;
    parse_meminfo(&text).ok_or_else(|| "/proc/meminfo has no MemAvailable line".to_string())
}

fn parse_meminfo(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Bytes free on the filesystem holding `dir` (the tmpfs sized by `diskless.size=`).
pub fn tmpfs_free(dir: &Path) -> Result<u64, String> {
    let c = CString::new(dir.as_os_str().as_bytes()).map_err(|_| "path has a NUL byte")?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: c is a valid C string and st a valid, writable statvfs.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(format!(
            "statvfs {}: {}",
            dir.display(),
            std::io::Error::last_os_error()
        ));
    }
    Ok(st.f_bavail as u64 * st.f_frsize as u64)
}

/// The decision, kept pure so it can be tested: does an image of `total` bytes, `written` of
/// which already sit on the RAM disk (a resumed download), fit? Only what is still to come
/// needs room: the partial file is already counted in the tmpfs's used space, and in
/// `MemAvailable` too (tmpfs pages are shared memory, not reclaimable cache).
pub fn fits(total: u64, written: u64, tmpfs_free: u64, mem_available: u64) -> Result<(), String> {
    let rest = total.saturating_sub(written);
    let needs = if written > 0 {
        format!(
            "the image needs {} MiB more ({} MiB of {} MiB already written)",
            rest.div_ceil(MIB),
            written / MIB,
            total.div_ceil(MIB)
        )
    } else {
        format!("the image needs {} MiB", total.div_ceil(MIB))
    };
    if rest > tmpfs_free {
        return Err(format!(
            "{needs} but the RAM disk has only {} MiB free: \
             raise diskless.size= on the kernel command line (for example diskless.size={}M)",
            tmpfs_free / MIB,
            (total + RESERVE).div_ceil(MIB)
        ));
    }
    let usable = mem_available.saturating_sub(RESERVE);
    if rest > usable {
        return Err(format!(
            "{needs} of RAM but only {} MiB is available ({} MiB kept for the \
             system): give this machine at least {} MiB more RAM or build a smaller image",
            mem_available / MIB,
            RESERVE / MIB,
            (rest - usable).div_ceil(MIB)
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_parsing() {
        let text = "MemTotal:        1000 kB\nMemFree:  10 kB\nMemAvailable:     2048 kB\n";
        assert_eq!(parse_meminfo(text), Some(2048 * 1024));
        assert_eq!(parse_meminfo("MemTotal: 1 kB\n"), None);
    }

    #[test]
    fn refuses_image_larger_than_tmpfs_and_names_the_parameter() {
        let err = fits(200 * MIB, 0, 100 * MIB, 4096 * MIB).unwrap_err();
        assert!(err.contains("diskless.size="), "{err}");
        assert!(err.contains("200 MiB"), "{err}");
    }

    #[test]
    fn refuses_image_larger_than_ram() {
        let err = fits(900 * MIB, 0, 4096 * MIB, 512 * MIB).unwrap_err();
        assert!(err.contains("RAM"), "{err}");
        assert!(err.contains("900 MiB"), "{err}");
    }

    #[test]
    fn accepts_image_that_fits() {
        assert!(fits(100 * MIB, 0, 200 * MIB, 1024 * MIB).is_ok());
    }

    #[test]
    fn a_resumed_image_needs_room_only_for_the_rest() {
        // The measurement: 161 MiB image, 100 MiB written, 61 MiB left on the disk.
        assert!(fits(161 * MIB, 100 * MIB, 61 * MIB, 4096 * MIB).is_ok());
        let err = fits(161 * MIB, 90 * MIB, 61 * MIB, 4096 * MIB).unwrap_err();
        assert!(
            err.starts_with("the image needs 71 MiB more (90 MiB of 161 MiB already written)"),
            "{err}"
        );
        let err = fits(161 * MIB, 90 * MIB, 4096 * MIB, 96 * MIB + 61 * MIB).unwrap_err();
        assert!(err.contains("at least 10 MiB more RAM"), "{err}");
    }

    #[test]
    fn tmpfs_free_reads_a_real_filesystem() {
        assert!(tmpfs_free(Path::new("/")).unwrap() > 0);
        assert!(tmpfs_free(Path::new("/no/such/dir")).is_err());
    }
}
