//! Mount the image through dm-verity: a device-mapper `verity` target over the image's loop
//! device, made with the kernel's device-mapper ioctls.
//!
//! Debian's stock initrd has no dmsetup or veritysetup (and no libdevmapper to link a static
//! helper against), so we issue the three ioctls dmsetup would: DM_DEV_CREATE,
//! DM_TABLE_LOAD, DM_DEV_SUSPEND (which, without DM_SUSPEND_FLAG, resumes: makes the loaded
//! table live). The layouts and numbers are the kernel's uapi header
//! include/uapi/linux/dm-ioctl.h; the table line is the one
//! Documentation/admin-guide/device-mapper/verity.rst describes:
//!
//! ```text
//! verity <version> <data_dev> <hash_dev> <data_block_size> <hash_block_size>
//!        <num_data_blocks> <hash_start_block> <algorithm> <root_digest> <salt>
//! ```
//!
//! The image file carries its hash tree after its data blocks (diskless_image::verity), so
//! one loop device is both the data and the hash device, and the tree starts at block
//! `num_data_blocks`. Every read of the mapped device is checked up the tree to the root hash
//! from the kernel command line; a block that does not match fails with EIO and marks the
//! target corrupted (its status `C`, which [`status`] reads back for the boot's report).

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// The name of the mapped root device (/sys/block/dm-N/dm/name).
pub const DEVICE_NAME: &str = "diskless-root";
/// Data and hash block size: the only layout the image builder writes.
const BLOCK_SIZE: u64 = 4096;
const SECTOR_SIZE: u64 = 512;

/// dm-ioctl.h: DM_VERSION_MAJOR; the kernel accepts any minor up to its own.
const DM_VERSION: [u32; 3] = [4, 0, 0];
/// dm-ioctl.h: DM_READONLY_FLAG (verity refuses a writable table: "Device must be readonly").
const DM_READONLY_FLAG: u32 = 1 << 0;
/// dm-ioctl.h: DM_SUSPEND_FLAG (DM_DEV_SUSPEND suspends; without it, it resumes).
const DM_SUSPEND_FLAG: u32 = 1 << 1;
/// dm-ioctl.h: DM_BUFFER_FULL_FLAG, set by the kernel when the status did not fit.
const DM_BUFFER_FULL_FLAG: u32 = 1 << 8;

/// `_IOWR(DM_IOCTL = 0xfd, nr, struct dm_ioctl)`: direction 3 << 30, size 312 << 16.
const fn dm_ioctl_number(nr: u32) -> libc::c_ulong {
    ((3u32 << 30) | ((DM_IOCTL_SIZE as u32) << 16) | (0xfd << 8) | nr) as libc::c_ulong
}
const DM_DEV_CREATE: libc::c_ulong = dm_ioctl_number(3);
const DM_DEV_REMOVE: libc::c_ulong = dm_ioctl_number(4);
const DM_DEV_SUSPEND: libc::c_ulong = dm_ioctl_number(6);
const DM_TABLE_LOAD: libc::c_ulong = dm_ioctl_number(9);
const DM_TABLE_STATUS: libc::c_ulong = dm_ioctl_number(12);

/// `struct dm_ioctl` from dm-ioctl.h (the header of every device-mapper ioctl's buffer).
#[repr(C)]
#[derive(Clone, Copy)]
struct DmIoctl {
    version: [u32; 3],
    /// Total size of the buffer, this header included.
    data_size: u32,
    /// Where the payload (target specs) starts, from the start of this header.
    data_start: u32,
    target_count: u32,
    open_count: i32,
    flags: u32,
    event_nr: u32,
    padding: u32,
    /// The device, huge_encode_dev'd (out).
    dev: u64,
    name: [u8; 128],
    uuid: [u8; 129],
    data: [u8; 7],
}
const DM_IOCTL_SIZE: usize = std::mem::size_of::<DmIoctl>();

/// `struct dm_target_spec` from dm-ioctl.h; its parameter string follows it.
#[repr(C)]
#[derive(Clone, Copy)]
struct DmTargetSpec {
    sector_start: u64,
    length: u64,
    status: i32,
    /// Offset of the next spec from the start of this one.
    next: u32,
    target_type: [u8; 16],
}
const DM_TARGET_SPEC_SIZE: usize = std::mem::size_of::<DmTargetSpec>();

/// What the kernel command line says about the image's tree (`diskless.roothash=`,
/// `diskless.verity=DATA_BLOCKS:SALT`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Params {
    pub root_hash: String,
    pub salt: String,
    pub data_blocks: u64,
}

impl Params {
    pub fn parse(root_hash: &str, verity: &str) -> Result<Params, String> {
        let hex = |what: &str, s: &str| {
            if !s.is_empty() && s.len() % 2 == 0 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
                Ok(s.to_ascii_lowercase())
            } else {
                Err(format!("{what} {s:?} is not hex"))
            }
        };
        let root_hash = hex("the root hash", root_hash)?;
        if root_hash.len() != 64 {
            return Err(format!(
                "the root hash must be a sha256 (64 hex digits), got {} digits",
                root_hash.len()
            ));
        }
        let (blocks, salt) = verity
            .split_once(':')
            .ok_or_else(|| format!("diskless.verity={verity:?} is not DATA_BLOCKS:SALT"))?;
        let data_blocks = blocks
            .parse()
            .map_err(|_| format!("diskless.verity: {blocks:?} is not a block count"))?;
        Ok(Params {
            root_hash,
            salt: hex("the salt", salt)?,
            data_blocks,
        })
    }

    /// The verity target's table line (verity.rst), data and hash on one device `dev`
    /// (`MAJOR:MINOR`), the tree right after the data.
    pub fn table(&self, dev: &str) -> String {
        format!(
            "1 {dev} {dev} {BLOCK_SIZE} {BLOCK_SIZE} {n} {n} sha256 {root} {salt}",
            n = self.data_blocks,
            root = self.root_hash,
            salt = self.salt
        )
    }

    /// The mapped device's length in 512-byte sectors: the data blocks only.
    pub fn sectors(&self) -> u64 {
        self.data_blocks * (BLOCK_SIZE / SECTOR_SIZE)
    }
}

/// Map `device` (the image's loop device) through a verity target named `name`
/// ([`DEVICE_NAME`] at boot); returns the mapped device's node, /dev/dm-N.
pub fn open(device: &Path, params: &Params, name: &str) -> Result<PathBuf, String> {
    let meta =
        std::fs::metadata(device).map_err(|e| format!("reading {}: {e}", device.display()))?;
    if !meta.file_type().is_block_device() {
        return Err(format!("{} is not a block device", device.display()));
    }
    let (major, minor) = (libc::major(meta.rdev()), libc::minor(meta.rdev()));
    let needed = (params.data_blocks + tree_blocks(params.data_blocks)) * BLOCK_SIZE;
    let size = device_size(device)?;
    if size < needed {
        return Err(format!(
            "{} has {size} bytes, the image and its hash tree need {needed}: the image file \
             is not the one the root hash is for",
            device.display()
        ));
    }
    let table = params.table(&format!("{major}:{minor}"));
    create(&control()?, name, params.sectors(), "verity", &table)
}

/// Create the device-mapper device `name` with one read-only target `target` of `sectors`
/// sectors and parameters `table`, and make it live; returns its node, /dev/dm-N.
pub(crate) fn create(
    control: &File,
    name: &str,
    sectors: u64,
    target: &str,
    table: &str,
) -> Result<PathBuf, String> {
    let created = ioctl(control, DM_DEV_CREATE, &mut header_bytes(&header(name, 0)))
        .map_err(|e| format!("creating device-mapper device {name}: {e}"))?;
    let dev = created.dev;
    let mut load = table_load(name, sectors, target, table);
    let activated = ioctl(control, DM_TABLE_LOAD, &mut load)
        .map_err(|e| {
            format!("loading the {target} table ({table}): {e} (the kernel's log says why)")
        })
        .and_then(|_| {
            ioctl(control, DM_DEV_SUSPEND, &mut header_bytes(&header(name, 0)))
                .map_err(|e| format!("activating {name}: {e}"))
        });
    if let Err(e) = activated {
        let _ = remove(name);
        return Err(e);
    }
    // dm-ioctl.c returns huge_encode_dev(): minor bits 0-7 and 20-31, major bits 8-19.
    let dm_minor = (dev & 0xff) | ((dev >> 12) & 0xfff00);
    let node = PathBuf::from(format!("/dev/dm-{dm_minor}"));
    crate::loopdev::wait_for_device(&node)?;
    Ok(node)
}

/// Replace the live table of `name` by one target `target` over `sectors` with parameters
/// `table`: load it (inactive), suspend the device (in-flight I/O completes on the old
/// table), resume it (the new table is live). Works on an open `control`, so it also works
/// after switch_root moved /dev away from under the helper.
pub(crate) fn switch(
    control: &File,
    name: &str,
    sectors: u64,
    target: &str,
    table: &str,
) -> Result<(), String> {
    ioctl(
        control,
        DM_TABLE_LOAD,
        &mut table_load(name, sectors, target, table),
    )
    .map_err(|e| format!("loading the new {target} table of {name} ({table}): {e}"))?;
    ioctl(
        control,
        DM_DEV_SUSPEND,
        &mut header_bytes(&header(name, DM_SUSPEND_FLAG)),
    )
    .map_err(|e| format!("suspending {name}: {e}"))?;
    ioctl(control, DM_DEV_SUSPEND, &mut header_bytes(&header(name, 0)))
        .map_err(|e| format!("resuming {name} on its new table: {e}"))?;
    Ok(())
}

/// Hash blocks of the tree over `data_blocks` (verity_ctr's levels: none for one block).
fn tree_blocks(data_blocks: u64) -> u64 {
    crate::lazy::tree::tree_len(data_blocks) / BLOCK_SIZE
}

/// Remove the mapped device `name` (DM_DEV_REMOVE).
pub fn remove(name: &str) -> Result<(), String> {
    ioctl(
        &control()?,
        DM_DEV_REMOVE,
        &mut header_bytes(&header(name, 0)),
    )
    .map(|_| ())
    .map_err(|e| format!("removing device-mapper device {name}: {e}"))
}

/// The status of target `name`: `V` (every block read so far verified) or `C` (a block
/// failed verification).
pub fn status(name: &str) -> Result<String, String> {
    let control = control()?;
    let mut buf = vec![0u8; 16 * 1024];
    let mut h = header(name, 0);
    h.data_size = buf.len() as u32;
    write_header(&mut buf, &h);
    let out = ioctl(&control, DM_TABLE_STATUS, &mut buf)
        .map_err(|e| format!("reading the status of {name}: {e}"))?;
    if out.flags & DM_BUFFER_FULL_FLAG != 0 || out.target_count != 1 {
        return Err(format!(
            "{name}: unexpected status ({} targets)",
            out.target_count
        ));
    }
    let start = out.data_start as usize + DM_TARGET_SPEC_SIZE;
    let text = &buf[start.min(buf.len())..];
    let end = text.iter().position(|&b| b == 0).unwrap_or(text.len());
    Ok(String::from_utf8_lossy(&text[..end]).trim().to_string())
}

pub(crate) fn control() -> Result<File, String> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/mapper/control")
        .map_err(|e| format!("opening /dev/mapper/control (are dm-mod and dm-verity loaded?): {e}"))
}

fn device_size(device: &Path) -> Result<u64, String> {
    use std::io::{Seek, SeekFrom};
    let mut f = File::open(device).map_err(|e| format!("opening {}: {e}", device.display()))?;
    f.seek(SeekFrom::End(0))
        .map_err(|e| format!("sizing {}: {e}", device.display()))
}

/// A header naming device `name`, with no payload.
fn header(name: &str, flags: u32) -> DmIoctl {
    // SAFETY: DmIoctl is plain data; all-zero is a valid value.
    let mut h: DmIoctl = unsafe { std::mem::zeroed() };
    h.version = DM_VERSION;
    h.data_size = DM_IOCTL_SIZE as u32;
    h.data_start = DM_IOCTL_SIZE as u32;
    h.flags = flags;
    let len = name.len().min(127);
    h.name[..len].copy_from_slice(&name.as_bytes()[..len]);
    h
}

fn header_bytes(h: &DmIoctl) -> Vec<u8> {
    let mut buf = vec![0u8; DM_IOCTL_SIZE];
    write_header(&mut buf, h);
    buf
}

fn write_header(buf: &mut [u8], h: &DmIoctl) {
    // SAFETY: DmIoctl is repr(C) plain data of DM_IOCTL_SIZE bytes; buf is at least that long.
    let bytes =
        unsafe { std::slice::from_raw_parts((h as *const DmIoctl).cast::<u8>(), DM_IOCTL_SIZE) };
    buf[..DM_IOCTL_SIZE].copy_from_slice(bytes);
}

/// DM_TABLE_LOAD's buffer: the header (read-only table), one target spec, its parameters
/// NUL-terminated and padded to 8 bytes (the kernel's next_target() alignment).
fn table_load(name: &str, sectors: u64, target: &str, params: &str) -> Vec<u8> {
    let params_len = (params.len() + 1).next_multiple_of(8);
    let total = DM_IOCTL_SIZE + DM_TARGET_SPEC_SIZE + params_len;
    let mut buf = vec![0u8; total];
    let mut h = header(name, DM_READONLY_FLAG);
    h.data_size = total as u32;
    h.target_count = 1;
    write_header(&mut buf, &h);
    let mut spec = DmTargetSpec {
        sector_start: 0,
        length: sectors,
        status: 0,
        next: (DM_TARGET_SPEC_SIZE + params_len) as u32,
        target_type: [0; 16],
    };
    spec.target_type[..target.len()].copy_from_slice(target.as_bytes());
    // SAFETY: DmTargetSpec is repr(C) plain data.
    let spec_bytes = unsafe {
        std::slice::from_raw_parts(
            (&spec as *const DmTargetSpec).cast::<u8>(),
            DM_TARGET_SPEC_SIZE,
        )
    };
    buf[DM_IOCTL_SIZE..DM_IOCTL_SIZE + DM_TARGET_SPEC_SIZE].copy_from_slice(spec_bytes);
    let p = DM_IOCTL_SIZE + DM_TARGET_SPEC_SIZE;
    buf[p..p + params.len()].copy_from_slice(params.as_bytes());
    buf
}

/// Issue a device-mapper ioctl on `buf` (a header and its payload); returns the header the
/// kernel wrote back.
fn ioctl(control: &File, request: libc::c_ulong, buf: &mut [u8]) -> std::io::Result<DmIoctl> {
    assert!(buf.len() >= DM_IOCTL_SIZE);
    // SAFETY: buf is valid for its whole length, which its header's data_size says.
    let rc = unsafe { libc::ioctl(control.as_raw_fd(), request as _, buf.as_mut_ptr()) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: buf holds at least one DmIoctl; read_unaligned copes with the Vec's alignment.
    Ok(unsafe { std::ptr::read_unaligned(buf.as_ptr().cast::<DmIoctl>()) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn structs_have_the_kernel_layout() {
        // dm-ioctl.h: 12 + 6 * 4 + 4 (padding) + 8 + 128 + 129 + 7 = 312 bytes; the spec 40.
        assert_eq!(DM_IOCTL_SIZE, 312);
        assert_eq!(DM_TARGET_SPEC_SIZE, 40);
        // <linux/dm-ioctl.h> as the C compiler sees it: DM_DEV_CREATE is 0xc138fd03.
        assert_eq!(DM_DEV_CREATE, 0xc138_fd03);
        assert_eq!(DM_TABLE_LOAD, 0xc138_fd09);
    }

    #[test]
    fn the_table_load_buffer_is_one_spec_and_its_parameters() {
        let buf = table_load(DEVICE_NAME, 80, "verity", "1 7:0 7:0");
        assert_eq!(buf.len(), 312 + 40 + 16);
        assert_eq!(&buf[12..16], &(buf.len() as u32).to_ne_bytes()); // data_size
        assert_eq!(&buf[16..20], &312u32.to_ne_bytes()); // data_start
        assert_eq!(&buf[20..24], &1u32.to_ne_bytes()); // target_count
        assert_eq!(&buf[28..32], &DM_READONLY_FLAG.to_ne_bytes()); // flags
        assert_eq!(&buf[48..48 + 13], b"diskless-root");
        assert_eq!(&buf[312 + 8..312 + 16], &80u64.to_ne_bytes()); // length
        assert_eq!(&buf[312 + 24..312 + 30], b"verity");
        assert_eq!(&buf[352..361], b"1 7:0 7:0");
        assert_eq!(buf[361], 0);
    }

    #[test]
    fn params_parse_and_make_the_table() {
        let root = "AB".repeat(32);
        let p = Params::parse(&root, "300:0a0b").unwrap();
        assert_eq!(p.data_blocks, 300);
        assert_eq!(p.sectors(), 2400);
        assert_eq!(
            p.table("7:0"),
            format!(
                "1 7:0 7:0 4096 4096 300 300 sha256 {} 0a0b",
                "ab".repeat(32)
            )
        );
        assert!(Params::parse("abc", "1:00")
            .unwrap_err()
            .contains("not hex"));
        assert!(Params::parse(&"ab".repeat(16), "1:00")
            .unwrap_err()
            .contains("64 hex digits"));
        assert!(Params::parse(&root, "300")
            .unwrap_err()
            .contains("DATA_BLOCKS:SALT"));
        assert!(Params::parse(&root, "x:00")
            .unwrap_err()
            .contains("block count"));
    }

    #[test]
    fn tree_sizes_follow_the_levels() {
        assert_eq!(tree_blocks(1), 0);
        assert_eq!(tree_blocks(2), 1);
        assert_eq!(tree_blocks(128), 1);
        assert_eq!(tree_blocks(129), 3);
        assert_eq!(tree_blocks(301), 4);
    }

    /// The kernel takes the tree the image builder appends, and refuses a changed block:
    /// the read fails (EIO) and the target's status turns from V to C.
    ///
    /// Ignored: it needs the host's kernel to have device-mapper, and the VM kernel CI runs
    /// on has none (`/dev/mapper/control`: ENODEV). The same path in Debian's own kernel is
    /// what the QEMU boots check: e2e.rs (the root through dm-verity) and failures.rs
    /// (`a_corrupted_image_is_never_mounted`). Run it by hand on a kernel with dm-verity:
    /// `cargo test -p diskless-fetch -- --ignored the_kernel_verifies`.
    #[test]
    #[ignore = "needs device-mapper in the host's kernel (CI's has none; the QEMU boots cover it)"]
    fn the_kernel_verifies_the_built_tree_and_refuses_a_corrupt_block() {
        use std::io::{Read, Seek, SeekFrom, Write};
        if !diskless_testkit::is_root() {
            return diskless_testkit::skip("not root: loop and device-mapper need it");
        }
        if let Err(e) = control() {
            panic!("this kernel has no device-mapper: {e}");
        }
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("root.squashfs");
        let data: Vec<u8> = (0..300 * BLOCK_SIZE as usize)
            .map(|i| (i % 253) as u8)
            .collect();
        std::fs::write(&image, &data).unwrap();
        let v = diskless_image::verity::append(&image, [7; 32]).unwrap();
        let layout = format!("{}:{}", v.data_blocks, v.salt);
        let params = Params::parse(&v.root_hash, &layout).unwrap();
        let name = format!("diskless-test-{}", std::process::id());
        let mapped_read = |corrupt: bool| {
            let device = crate::loopdev::attach_read_only(&image).unwrap();
            let node = open(&device, &params, &name).unwrap();
            let mut f = File::open(&node).unwrap();
            let mut first = vec![0u8; BLOCK_SIZE as usize];
            f.read_exact(&mut first).unwrap();
            assert_eq!(first, data[..BLOCK_SIZE as usize]);
            f.seek(SeekFrom::Start(200 * BLOCK_SIZE)).unwrap();
            let mut block = vec![0u8; BLOCK_SIZE as usize];
            let read = f.read_exact(&mut block);
            let status = status(&name).unwrap();
            drop(f);
            remove(&name).unwrap();
            detach(&device);
            if corrupt {
                let err = read.unwrap_err();
                assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
                assert_eq!(status, "C");
            } else {
                read.unwrap();
                assert_eq!(block, data[200 * 4096..201 * 4096]);
                assert_eq!(status, "V");
            }
        };
        mapped_read(false);
        let mut f = OpenOptions::new().write(true).open(&image).unwrap();
        f.seek(SeekFrom::Start(200 * BLOCK_SIZE + 17)).unwrap();
        f.write_all(&[data[200 * 4096 + 17] ^ 1]).unwrap();
        f.sync_all().unwrap();
        drop(f);
        mapped_read(true);
        // A root hash of another image is refused at the first block.
        let mut wrong = params.clone();
        wrong.root_hash = "00".repeat(32);
        let device = crate::loopdev::attach_read_only(&image).unwrap();
        let node = open(&device, &wrong, &name).unwrap();
        let mut first = vec![0u8; 4096];
        let err = File::open(&node)
            .unwrap()
            .read_exact(&mut first)
            .unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
        remove(&name).unwrap();
        detach(&device);
    }

    /// LOOP_CLR_FD (<linux/loop.h>), for the test's clean-up.
    fn detach(device: &Path) {
        let f = File::open(device).unwrap();
        // SAFETY: a valid fd, no argument.
        assert!(unsafe { libc::ioctl(f.as_raw_fd(), 0x4C01 as _) } >= 0);
    }
}
