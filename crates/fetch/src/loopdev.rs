//! Attach a file to a free loop device, read-only, with the kernel's loop ioctls.
//!
//! klibc's mount has no `-o loop` and busybox may be missing from an image's initrd, so we do
//! what losetup does: ask /dev/loop-control for a free device and hand it the file.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

const LOOP_SET_FD: libc::c_ulong = 0x4C00;
const LOOP_SET_STATUS64: libc::c_ulong = 0x4C04;
const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;

/// `struct loop_info64` from <linux/loop.h>.
#[repr(C)]
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; 64],
    lo_crypt_name: [u8; 64],
    lo_encrypt_key: [u8; 32],
    lo_init: [u64; 2],
}

pub fn attach_read_only(file: &Path) -> Result<PathBuf, String> {
    let backing = File::open(file).map_err(|e| format!("opening {}: {e}", file.display()))?;
    let control = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/loop-control")
        .map_err(|e| format!("opening /dev/loop-control (is the loop module loaded?): {e}"))?;
    // SAFETY: ioctl on a valid fd with no argument.
    let number = unsafe { libc::ioctl(control.as_raw_fd(), LOOP_CTL_GET_FREE as _) };
    if number < 0 {
        return Err(format!(
            "no free loop device: {}",
            std::io::Error::last_os_error()
        ));
    }
    let device = PathBuf::from(format!("/dev/loop{number}"));
    let loop_file = wait_for_device(&device)?;
    // SAFETY: both fds are valid for the duration of the calls.
    if unsafe { libc::ioctl(loop_file.as_raw_fd(), LOOP_SET_FD as _, backing.as_raw_fd()) } < 0 {
        return Err(format!(
            "attaching {} to {}: {}",
            file.display(),
            device.display(),
            std::io::Error::last_os_error()
        ));
    }
    // The device is read-only because the backing file was opened read-only. No AUTOCLEAR:
    // it would detach the device as soon as this process closes it, before mount opens it.
    // SAFETY: LoopInfo64 is plain data; all-zero is a valid value.
    let mut info: LoopInfo64 = unsafe { std::mem::zeroed() };
    let name = file.as_os_str().as_encoded_bytes();
    let len = name.len().min(63);
    info.lo_file_name[..len].copy_from_slice(&name[..len]);
    // SAFETY: info is a valid loop_info64 for the duration of the call.
    if unsafe { libc::ioctl(loop_file.as_raw_fd(), LOOP_SET_STATUS64 as _, &info) } < 0 {
        return Err(format!(
            "naming the backing file of {}: {}",
            device.display(),
            std::io::Error::last_os_error()
        ));
    }
    Ok(device)
}

/// devtmpfs creates the node asynchronously after LOOP_CTL_GET_FREE adds a device.
pub fn wait_for_device(device: &Path) -> Result<File, String> {
    let mut last = None;
    for _ in 0..50 {
        match OpenOptions::new().read(true).open(device) {
            Ok(f) => return Ok(f),
            Err(e) => last = Some(e),
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    Err(format!(
        "opening {}: {}",
        device.display(),
        last.expect("tried at least once")
    ))
}

#[cfg(test)]
mod tests {
    #[test]
    fn loop_info64_has_the_kernel_layout() {
        // <linux/loop.h>: 5 u64 + 4 u32 + 64 + 64 + 32 bytes + 2 u64 = 232 bytes.
        assert_eq!(std::mem::size_of::<super::LoopInfo64>(), 232);
    }
}
