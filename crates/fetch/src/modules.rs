//! Load a kernel module from a file with finit_module(2).
//!
//! The stock Debian initrd has no overlay, squashfs or loop module and its modules.dep does
//! not list ours, so modprobe cannot find them; we load the files diskless.cpio carries
//! directly. The image builder decompresses them, so no in-kernel decompression is needed.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;

pub fn load(path: &Path) -> Result<(), String> {
    let file = File::open(path).map_err(|e| format!("opening module {}: {e}", path.display()))?;
    let params = c"";
    // SAFETY: a valid open fd and a NUL-terminated parameter string.
    let rc = unsafe { libc::syscall(libc::SYS_finit_module, file.as_raw_fd(), params.as_ptr(), 0) };
    if rc == 0 {
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EEXIST) {
        return Ok(()); // already loaded (or built in): what we wanted
    }
    Err(format!("loading module {}: {err}", path.display()))
}
