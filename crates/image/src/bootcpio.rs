//! `diskless.cpio`: the extra initramfs archive that makes an image's stock Debian initrd boot
//! `boot=diskless`. iPXE loads it after the stock initrd; the kernel unpacks both into one
//! rootfs, so our files join the stock ones:
//!
//! ```text
//! scripts/diskless                  the boot script (initramfs-tools/scripts/diskless)
//! diskless/bin/diskless-fetch       the static fetch helper
//! diskless/bin/diskless-home        the PAM helper of the lab's accounts, which the boot
//!                                   script copies into the root (initramfs-tools/diskless-home)
//! diskless/modules/*.ko             loop, squashfs, overlay, dm-verity, nbd and their dependencies,
//! diskless/modules/load-order       decompressed, in the order they must be loaded
//! ```
//!
//! Everything lives under `diskless/` except the script, which initramfs-tools' init looks for
//! at `/scripts/${BOOT}`; nothing of the stock initrd is replaced.

use crate::error::{io_at, Error, Result};
use diskless_initramfs::CpioWriter;
use std::collections::{BTreeMap, HashSet};
use std::io::Read;
use std::path::Path;

/// The boot script, compiled in so the binary and the script always match.
pub const BOOT_SCRIPT: &str = include_str!("../../../initramfs-tools/scripts/diskless");
/// The PAM helper the boot script installs as /usr/local/sbin/diskless-home, compiled in too.
pub const HOME_HELPER: &str = include_str!("../../../initramfs-tools/diskless-home");

/// Where the archive (and an initrd made by `diskless initrd install`) has its files.
pub const SCRIPT_PATH: &str = "scripts/diskless";
pub const HELPER_PATH: &str = "diskless/bin/diskless-fetch";
pub const HOME_HELPER_PATH: &str = "diskless/bin/diskless-home";
pub const MODULES_DIR: &str = "diskless/modules";
/// In [`MODULES_DIR`]: the module files, one per line, in the order they must be loaded.
const LOAD_ORDER: &str = "load-order";

/// The modules the boot script needs and Debian's stock initrd lacks.
/// nbd serves the root of `fetch = "lazy"`/`"network"` (dm-linear is part of dm-mod, which
/// dm-verity depends on).
pub const MODULES: &[&str] = &["loop", "squashfs", "overlay", "dm-verity", "nbd"];

/// Of [`MODULES`], those a kernel may lack: without nbd an image still boots `whole` (the
/// boot script says on the console that lazy and network need nbd and fetches the image
/// whole), so a kernel built without it is no reason to refuse the build.
const OPTIONAL_MODULES: &[&str] = &["nbd"];

/// A file of [`MODULES_DIR`]: a module (decompressed) or the load order; its name there and
/// its bytes.
struct Module {
    file_name: String,
    data: Vec<u8>,
}

/// What the build needs to know of a master's initrd, read in one pass over every segment.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct InitrdFacts {
    /// It carries the boot script and the helper, as one that `diskless initrd install`
    /// regenerated does: it boots `boot=diskless` on its own and the image needs no
    /// diskless.cpio.
    pub has_boot_files: bool,
    /// Its members that hold a key ([`initrd_key_member`]): (member name, what it is).
    pub keys: Vec<(String, &'static str)>,
}

/// Does the initrd at `path` already carry the boot script and the helper? See
/// [`InitrdFacts::has_boot_files`].
pub fn initrd_has_boot_files(path: &Path) -> Result<bool> {
    Ok(inspect_initrd(path)?.has_boot_files)
}

/// Read every member name of the initrd at `path` (compressed, several segments: an early
/// microcode archive then the main one, as Debian's are).
pub fn inspect_initrd(path: &Path) -> Result<InitrdFacts> {
    let file = std::fs::File::open(path).map_err(io_at(path))?;
    let mut initrd = diskless_initramfs::InitrdReader::new(std::io::BufReader::new(file));
    let corrupt = |e: &dyn std::fmt::Display| {
        Error::Invalid(format!("reading the initrd {}: {e}", path.display()))
    };
    let mut missing: HashSet<&str> = [SCRIPT_PATH, HELPER_PATH].into();
    let mut facts = InitrdFacts::default();
    while let Some(entry) = initrd.next_entry().map_err(|e| corrupt(&e))? {
        if entry.header.kind() != diskless_initramfs::EntryKind::File {
            continue;
        }
        let name = entry.header.name_lossy();
        let name = name
            .trim_start_matches("./")
            .trim_start_matches('/')
            .to_string();
        missing.remove(name.as_str());
        // The old cryptroot hook's config holds key=PATH for each volume: a key only when
        // one is named (key=none is a passphrase typed at boot).
        let what = if name == OLD_CRYPTROOT_CONF {
            let data = initrd.read_data_to_vec().map_err(|e| corrupt(&e))?;
            names_a_keyfile(&String::from_utf8_lossy(&data))
                .then_some("cryptsetup's volume list naming a keyfile (older cryptroot hook)")
        } else {
            initrd_key_member(&name)
        };
        if let Some(what) = what {
            facts.keys.push((name, what));
        }
    }
    facts.has_boot_files = missing.is_empty();
    Ok(facts)
}

/// Where the cryptroot hook of older cryptsetup releases put its volume list.
const OLD_CRYPTROOT_CONF: &str = "conf/conf.d/cryptroot";

/// Whether a `conf/conf.d/cryptroot` text (`target=...,source=...,key=...` lines) names a
/// key file.
fn names_a_keyfile(text: &str) -> bool {
    text.split([',', '\n', ' '])
        .filter_map(|f| f.strip_prefix("key="))
        .any(|k| !k.is_empty() && k != "none")
}

/// Whether an initrd member (a regular file, by its name without a leading `./` or `/`) is a
/// key, and which: cryptsetup-initramfs copies the keyfiles that match its `KEYFILE_PATTERN`
/// to `cryptroot/keyfiles/` (README.initramfs of cryptsetup-initramfs), dropbear-initramfs
/// puts its host keys in `etc/dropbear/` (`dropbear_*_host_key`), and a site's hook may add
/// any `*.key` or the master's own ssh host keys.
pub fn initrd_key_member(name: &str) -> Option<&'static str> {
    let file = name.rsplit('/').next().unwrap_or(name);
    if name.starts_with("cryptroot/keyfiles/") {
        Some("a cryptsetup keyfile (cryptsetup-initramfs KEYFILE_PATTERN)")
    } else if name.starts_with("etc/dropbear/") && file.ends_with("_key") {
        Some("a dropbear host key (dropbear-initramfs)")
    } else if name.starts_with("etc/ssh/")
        && file.starts_with("ssh_host_")
        && file.ends_with("_key")
    {
        Some("an ssh host key")
    } else if file.ends_with(".key") {
        Some("a key file")
    } else {
        None
    }
}

/// Build the archive for kernel `version` of the tree at `root`.
pub fn build(root: &Path, version: &str, fetch_helper: &Path) -> Result<Vec<u8>> {
    let helper = read_helper(fetch_helper)?;
    let mut modules = collect_modules(root, version)?;
    let order: String = modules
        .iter()
        .map(|m| format!("{}\n", m.file_name))
        .collect();
    modules.push(Module {
        file_name: LOAD_ORDER.to_string(),
        data: order.into_bytes(),
    });
    archive(&helper, &modules)
}

/// A new archive with this build's boot script and helper, and the modules of `old` (an
/// archive made by [`build`] for the same kernel).
pub fn refresh(old: &[u8], fetch_helper: &Path) -> Result<Vec<u8>> {
    let helper = read_helper(fetch_helper)?;
    let corrupt = |e: &dyn std::fmt::Display| {
        Error::Invalid(format!("reading the previous diskless.cpio: {e}"))
    };
    let mut reader = diskless_initramfs::CpioReader::new(old);
    let mut modules = Vec::new();
    while let Some(header) = reader.next_entry().map_err(|e| corrupt(&e))? {
        let name = header.name_lossy().into_owned();
        let data = reader.read_data_to_vec().map_err(|e| corrupt(&e))?;
        if let Some(file) = name
            .strip_prefix(MODULES_DIR)
            .and_then(|f| f.strip_prefix('/'))
        {
            if !file.is_empty() {
                modules.push(Module {
                    file_name: file.to_string(),
                    data,
                });
            }
        }
    }
    if !modules.iter().any(|m| m.file_name == LOAD_ORDER) {
        return Err(Error::Invalid(format!(
            "the previous diskless.cpio has no {MODULES_DIR}/{LOAD_ORDER}"
        )));
    }
    archive(&helper, &modules)
}

fn read_helper(fetch_helper: &Path) -> Result<Vec<u8>> {
    std::fs::read(fetch_helper).map_err(|e| {
        Error::Invalid(format!(
            "cannot read the fetch helper {}: {e} (build it with scripts/build, or set DISKLESS_FETCH)",
            fetch_helper.display()
        ))
    })
}

/// The archive: the boot script, `helper`, the PAM helper, and the files of [`MODULES_DIR`], in
/// this order.
fn archive(helper: &[u8], modules: &[Module]) -> Result<Vec<u8>> {
    let io = |e: std::io::Error| Error::Invalid(format!("writing diskless.cpio: {e}"));
    let mut cpio = CpioWriter::new(Vec::new());
    cpio.add_file(SCRIPT_PATH, 0o755, BOOT_SCRIPT.as_bytes())
        .map_err(io)?;
    cpio.add_file(HELPER_PATH, 0o755, helper).map_err(io)?;
    cpio.add_file(HOME_HELPER_PATH, 0o755, HOME_HELPER.as_bytes())
        .map_err(io)?;
    cpio.add_dir(MODULES_DIR, 0o755).map_err(io)?;
    for m in modules {
        cpio.add_file(&format!("{MODULES_DIR}/{}", m.file_name), 0o644, &m.data)
            .map_err(io)?;
    }
    cpio.finish().map_err(io)
}

/// Does `cpio` (an image's diskless.cpio) already hold this build's boot script and
/// `fetch_helper`? (Archives are reproducible: refreshing a current one changes nothing.)
pub fn is_current(cpio: &[u8], fetch_helper: &Path) -> Result<bool> {
    Ok(refresh(cpio, fetch_helper)? == cpio)
}

/// Resolve MODULES and their dependencies through modules.dep, dependencies first.
fn collect_modules(root: &Path, version: &str) -> Result<Vec<Module>> {
    let dir = root.join("lib/modules").join(version);
    let dep_path = dir.join("modules.dep");
    let dep_text = std::fs::read_to_string(&dep_path).map_err(io_at(&dep_path))?;
    let deps = parse_modules_dep(&dep_text);
    let builtin = std::fs::read_to_string(dir.join("modules.builtin")).unwrap_or_default();
    let mut order = Vec::new();
    let mut seen = HashSet::new();
    for name in MODULES {
        match deps
            .keys()
            .find(|path| module_name(path) == module_name(name))
        {
            Some(path) => visit(path, &deps, &mut seen, &mut order),
            None if builtin.lines().any(|l| module_name(l) == module_name(name)) => {} // built into the kernel
            None if OPTIONAL_MODULES.contains(name) => {}
            None => {
                return Err(Error::Invalid(format!(
                    "kernel {version} has no {name} module in {} and does not build it in",
                    dep_path.display()
                )))
            }
        }
    }
    order
        .into_iter()
        .map(|rel| {
            let path = dir.join(&rel);
            let data = read_module(&path)?;
            Ok(Module {
                file_name: format!("{}.ko", module_name(&rel)),
                data,
            })
        })
        .collect()
}

fn visit(
    path: &str,
    deps: &BTreeMap<String, Vec<String>>,
    seen: &mut HashSet<String>,
    order: &mut Vec<String>,
) {
    if !seen.insert(path.to_string()) {
        return;
    }
    for dep in deps.get(path).into_iter().flatten() {
        visit(dep, deps, seen, order);
    }
    order.push(path.to_string());
}

/// `kernel/fs/overlayfs/overlay.ko.xz: dep1.ko dep2.ko` lines.
pub fn parse_modules_dep(text: &str) -> BTreeMap<String, Vec<String>> {
    text.lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(m, d)| {
            (
                m.trim().to_string(),
                d.split_whitespace().map(str::to_string).collect(),
            )
        })
        .collect()
}

/// "kernel/fs/overlayfs/overlay.ko.xz" -> "overlay"; module names treat - and _ alike.
pub fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    file.split(".ko").next().unwrap_or(file).replace('-', "_")
}

/// Read a module, decompressing it when its first bytes say it is compressed (Debian ships
/// `.ko.xz`, other kernels `.ko.zst` or `.ko.gz`; the magic decides, not the name):
/// finit_module gets a plain ELF.
pub fn read_module(path: &Path) -> Result<Vec<u8>> {
    use diskless_initramfs::{Compression, Decoder, PeekReader};
    let raw = std::fs::read(path).map_err(io_at(path))?;
    let compression = match Compression::sniff(&raw) {
        None | Some(Compression::None) => return Ok(raw),
        Some(c) => c,
    };
    let mut out = Vec::new();
    Decoder::new(PeekReader::new(&raw[..]), compression)
        .and_then(|mut d| d.read_to_end(&mut out))
        .map_err(|e| Error::Corrupt {
            path: path.to_path_buf(),
            what: format!("cannot decompress module ({compression}): {e}"),
        })?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn dependencies_come_first() {
        let deps = parse_modules_dep(
            "kernel/fs/overlayfs/overlay.ko.xz: kernel/lib/a.ko.xz\nkernel/lib/a.ko.xz: kernel/lib/b.ko.xz\nkernel/lib/b.ko.xz:\n",
        );
        let mut order = Vec::new();
        visit(
            "kernel/fs/overlayfs/overlay.ko.xz",
            &deps,
            &mut HashSet::new(),
            &mut order,
        );
        assert_eq!(
            order,
            [
                "kernel/lib/b.ko.xz",
                "kernel/lib/a.ko.xz",
                "kernel/fs/overlayfs/overlay.ko.xz"
            ]
        );
    }

    #[test]
    fn a_self_contained_initrd_is_recognised_behind_microcode() {
        let dir = tempfile::tempdir().unwrap();
        let archive = |files: &[&str]| {
            let mut w = CpioWriter::new(Vec::new());
            for f in files {
                w.add_file(f, 0o755, b"x").unwrap();
            }
            w.finish().unwrap()
        };
        // An early microcode segment, then the main archive gzip-compressed, as Debian's are.
        let initrd = |main: &[&str]| {
            let mut bytes = archive(&["kernel/x86/microcode/GenuineIntel.bin"]);
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            gz.write_all(&archive(main)).unwrap();
            bytes.extend(gz.finish().unwrap());
            let path = dir.path().join("initrd");
            std::fs::write(&path, bytes).unwrap();
            path
        };
        let stock = initrd(&["init", "scripts/local"]);
        assert!(!initrd_has_boot_files(&stock).unwrap());
        let script_only = initrd(&["init", "scripts/diskless"]);
        assert!(!initrd_has_boot_files(&script_only).unwrap());
        let installed = initrd(&["init", "scripts/diskless", "diskless/bin/diskless-fetch"]);
        assert!(initrd_has_boot_files(&installed).unwrap());
        std::fs::write(&installed, b"not an initrd at all, just text").unwrap();
        let err = initrd_has_boot_files(&installed).unwrap_err().to_string();
        assert!(err.contains("reading the initrd"), "{err}");
    }

    #[test]
    fn keys_in_an_initrd_are_found_in_every_segment() {
        let archive = |files: &[(&str, &str)]| {
            let mut w = CpioWriter::new(Vec::new());
            for (f, data) in files {
                w.add_file(f, 0o600, data.as_bytes()).unwrap();
            }
            w.finish().unwrap()
        };
        let dir = tempfile::tempdir().unwrap();
        let initrd = |main: &[(&str, &str)]| {
            let mut bytes = archive(&[("kernel/x86/microcode/GenuineIntel.bin", "x")]);
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            gz.write_all(&archive(main)).unwrap();
            bytes.extend(gz.finish().unwrap());
            let path = dir.path().join("initrd");
            std::fs::write(&path, bytes).unwrap();
            inspect_initrd(&path).unwrap()
        };
        let stock = initrd(&[
            ("init", ""),
            ("scripts/local-top/cryptroot", ""),
            (
                "conf/conf.d/cryptroot",
                "target=root,source=UUID=1,key=none\n",
            ),
            ("etc/ssh/ssh_config", ""),
        ]);
        assert_eq!(stock.keys, Vec::new());
        let keyed = initrd(&[
            ("init", ""),
            ("cryptroot/keyfiles/data_crypt.key", "K"),
            ("etc/dropbear/dropbear_ed25519_host_key", "K"),
            ("etc/ssh/ssh_host_rsa_key", "K"),
            ("etc/luks.key", "K"),
            (
                "conf/conf.d/cryptroot",
                "target=data,source=UUID=2,key=/etc/k\n",
            ),
        ]);
        let names: Vec<&str> = keyed.keys.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "cryptroot/keyfiles/data_crypt.key",
                "etc/dropbear/dropbear_ed25519_host_key",
                "etc/ssh/ssh_host_rsa_key",
                "etc/luks.key",
                "conf/conf.d/cryptroot",
            ]
        );
        assert!(!keyed.has_boot_files);
        let err = crate::build::refuse_initrd_keys("boot/initrd.img-6.1.0-9-amd64", &keyed)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("the initrd boot/initrd.img-6.1.0-9-amd64 holds cryptroot/keyfiles/data_crypt.key (a cryptsetup keyfile")
                && err.contains("and 4 more"),
            "{err}"
        );
        assert!(crate::build::refuse_initrd_keys("x", &stock).is_ok());
    }

    #[test]
    fn module_names() {
        assert_eq!(module_name("kernel/fs/overlayfs/overlay.ko.xz"), "overlay");
        assert_eq!(module_name("kernel/drivers/block/loop.ko"), "loop");
        assert_eq!(module_name("kernel/x/snd-hda.ko.zst"), "snd_hda");
    }

    #[test]
    fn builds_archive_from_a_tree_with_compressed_and_builtin_modules() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("lib/modules/6.1.0-9-amd64/kernel");
        std::fs::create_dir_all(dir.join("fs")).unwrap();
        let mut xz = liblzma::write::XzEncoder::new(Vec::new(), 6);
        xz.write_all(b"\x7fELF squashfs module").unwrap();
        std::fs::write(dir.join("fs/squashfs.ko.xz"), xz.finish().unwrap()).unwrap();
        // Compressed under a plain name: the magic decides, not the suffix.
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(b"\x7fELF overlay").unwrap();
        std::fs::write(dir.join("fs/overlay.ko"), gz.finish().unwrap()).unwrap();
        let top = dir.parent().unwrap();
        std::fs::write(
            top.join("modules.dep"),
            "kernel/fs/squashfs.ko.xz:\nkernel/fs/overlay.ko:\n",
        )
        .unwrap();
        std::fs::write(
            top.join("modules.builtin"),
            "kernel/drivers/block/loop.ko\nkernel/drivers/md/dm-verity.ko\nkernel/drivers/block/nbd.ko\n",
        )
        .unwrap();
        let helper = root.path().join("helper");
        std::fs::write(&helper, b"#!helper").unwrap();
        let archive = build(root.path(), "6.1.0-9-amd64", &helper).unwrap();
        let mut reader = diskless_initramfs::CpioReader::new(&archive[..]);
        let mut files = BTreeMap::new();
        while let Some(h) = reader.next_entry().unwrap() {
            let name = h.name_lossy().into_owned();
            files.insert(name, reader.read_data_to_vec().unwrap());
        }
        assert_eq!(
            files["diskless/modules/squashfs.ko"],
            b"\x7fELF squashfs module"
        );
        assert_eq!(files["diskless/modules/overlay.ko"], b"\x7fELF overlay");
        assert_eq!(
            files["diskless/modules/load-order"],
            b"squashfs.ko\noverlay.ko\n"
        );
        assert_eq!(files["scripts/diskless"], BOOT_SCRIPT.as_bytes());
        assert_eq!(files["diskless/bin/diskless-fetch"], b"#!helper");
        assert_eq!(files["diskless/bin/diskless-home"], HOME_HELPER.as_bytes());
    }

    #[test]
    fn refresh_keeps_modules_and_replaces_script_and_helper() {
        let root = tempfile::tempdir().unwrap();
        let top = root.path().join("lib/modules/v");
        std::fs::create_dir_all(top.join("kernel")).unwrap();
        for m in ["loop", "squashfs", "overlay", "dm-mod", "dm-verity", "nbd"] {
            std::fs::write(top.join(format!("kernel/{m}.ko")), m).unwrap();
        }
        std::fs::write(
            top.join("modules.dep"),
            "kernel/loop.ko:\nkernel/squashfs.ko:\nkernel/overlay.ko:\nkernel/dm-mod.ko:\n\
             kernel/dm-verity.ko: kernel/dm-mod.ko\nkernel/nbd.ko:\n",
        )
        .unwrap();
        let old_helper = root.path().join("old");
        std::fs::write(&old_helper, b"old helper").unwrap();
        let old = build(root.path(), "v", &old_helper).unwrap();
        let new_helper = root.path().join("new");
        std::fs::write(&new_helper, b"new helper").unwrap();
        let new = refresh(&old, &new_helper).unwrap();
        let mut reader = diskless_initramfs::CpioReader::new(&new[..]);
        let mut files = BTreeMap::new();
        while let Some(h) = reader.next_entry().unwrap() {
            files.insert(
                h.name_lossy().into_owned(),
                reader.read_data_to_vec().unwrap(),
            );
        }
        assert_eq!(files["diskless/bin/diskless-fetch"], b"new helper");
        assert_eq!(files["diskless/bin/diskless-home"], HOME_HELPER.as_bytes());
        assert_eq!(files["diskless/modules/squashfs.ko"], b"squashfs");
        assert_eq!(
            files["diskless/modules/load-order"],
            b"loop.ko\nsquashfs.ko\noverlay.ko\ndm_mod.ko\ndm_verity.ko\nnbd.ko\n"
        );
        assert!(refresh(b"garbage", &new_helper).is_err());
    }

    #[test]
    fn a_kernel_without_nbd_gets_an_archive_without_it_one_without_loop_none() {
        let root = tempfile::tempdir().unwrap();
        let top = root.path().join("lib/modules/v");
        std::fs::create_dir_all(top.join("kernel")).unwrap();
        let mut dep = String::new();
        for m in ["loop", "squashfs", "overlay", "dm-verity"] {
            std::fs::write(top.join(format!("kernel/{m}.ko")), m).unwrap();
            dep.push_str(&format!("kernel/{m}.ko:\n"));
        }
        std::fs::write(top.join("modules.dep"), &dep).unwrap();
        let helper = root.path().join("helper");
        std::fs::write(&helper, b"helper").unwrap();
        let cpio = build(root.path(), "v", &helper).unwrap();
        let mut reader = diskless_initramfs::CpioReader::new(&cpio[..]);
        let mut files = BTreeMap::new();
        while let Some(h) = reader.next_entry().unwrap() {
            files.insert(
                h.name_lossy().into_owned(),
                reader.read_data_to_vec().unwrap(),
            );
        }
        assert_eq!(
            files["diskless/modules/load-order"],
            b"loop.ko\nsquashfs.ko\noverlay.ko\ndm_verity.ko\n"
        );
        std::fs::write(
            top.join("modules.dep"),
            dep.replace("kernel/loop.ko:\n", ""),
        )
        .unwrap();
        let err = build(root.path(), "v", &helper).unwrap_err().to_string();
        assert!(err.contains("no loop module"), "{err}");
    }

    #[test]
    fn an_archive_is_current_only_with_this_script_and_helper() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let modules = root.join("lib/modules/6.1.0-9-amd64");
        std::fs::create_dir_all(modules.join("kernel")).unwrap();
        let mut dep = String::new();
        for m in MODULES {
            std::fs::write(modules.join(format!("kernel/{m}.ko")), m).unwrap();
            dep.push_str(&format!("kernel/{m}.ko:\n"));
        }
        std::fs::write(modules.join("modules.dep"), dep).unwrap();
        let helper = dir.path().join("helper");
        std::fs::write(&helper, "helper v1").unwrap();
        let cpio = build(&root, "6.1.0-9-amd64", &helper).unwrap();
        assert!(is_current(&cpio, &helper).unwrap());
        std::fs::write(&helper, "helper v2").unwrap();
        assert!(!is_current(&cpio, &helper).unwrap());
        let refreshed = refresh(&cpio, &helper).unwrap();
        assert!(is_current(&refreshed, &helper).unwrap());
    }

    #[test]
    fn missing_module_is_named() {
        let root = tempfile::tempdir().unwrap();
        let top = root.path().join("lib/modules/v");
        std::fs::create_dir_all(&top).unwrap();
        std::fs::write(top.join("modules.dep"), "").unwrap();
        let helper = root.path().join("helper");
        std::fs::write(&helper, b"x").unwrap();
        let err = build(root.path(), "v", &helper).unwrap_err().to_string();
        assert!(err.contains("no loop module"), "{err}");
    }
}
