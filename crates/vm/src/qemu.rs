//! The QEMU command line of a test client.
//!
//! Always TCG: on these machines KVM is paravirtual and hangs in firmware or the kernel's
//! decompressor.

use std::path::PathBuf;
use std::process::Command;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Firmware {
    /// SeaBIOS with the iPXE option ROM of the virtio NIC (Debian's ipxe-qemu).
    Bios,
    /// OVMF (Debian's ovmf), booting with its own UEFI network stack.
    Uefi,
}

#[derive(Debug, Clone)]
pub struct QemuConfig {
    pub memory_mib: u32,
    pub cpus: u32,
    pub firmware: Firmware,
    pub tap: String,
    pub mac: String,
    /// A writable copy of OVMF's variable store (UEFI only).
    pub ovmf_vars: Option<PathBuf>,
    /// Raw disk images, attached as virtio disks in this order.
    pub disks: Vec<PathBuf>,
}

pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";

pub fn command(cfg: &QemuConfig) -> Command {
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args([
        "-accel",
        "tcg",
        "-nodefaults",
        "-display",
        "none",
        "-serial",
        "stdio",
        "-no-reboot",
    ])
    .args([
        "-m",
        &cfg.memory_mib.to_string(),
        "-smp",
        &cfg.cpus.to_string(),
    ])
    .args([
        "-netdev",
        &format!("tap,id=net0,ifname={},script=no,downscript=no", cfg.tap),
    ])
    .args(["-device", &nic(cfg)]);
    for disk in &cfg.disks {
        cmd.args([
            "-drive",
            &format!("if=virtio,format=raw,file={}", disk.display()),
        ]);
    }
    match cfg.firmware {
        Firmware::Bios => {
            cmd.args(["-boot", "n"]);
        }
        Firmware::Uefi => {
            cmd.args(["-machine", "q35"]).args([
                "-drive",
                &format!("if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}"),
            ]);
            if let Some(vars) = &cfg.ovmf_vars {
                cmd.args([
                    "-drive",
                    &format!("if=pflash,format=raw,unit=1,file={}", vars.display()),
                ]);
            }
        }
    }
    cmd
}

fn nic(cfg: &QemuConfig) -> String {
    let mut nic = format!("virtio-net-pci,netdev=net0,mac={},bootindex=1", cfg.mac);
    if cfg.firmware == Firmware::Uefi {
        // Without the iPXE option ROM, OVMF boots with its own PXE client, as real UEFI
        // machines do: it fetches ipxe.efi over TFTP first.
        nic.push_str(",romfile=");
    }
    nic
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(firmware: Firmware) -> Vec<String> {
        let cfg = QemuConfig {
            memory_mib: 1024,
            cpus: 2,
            firmware,
            tap: "dl0".into(),
            mac: "52:54:00:00:00:01".into(),
            ovmf_vars: Some("/tmp/vars.fd".into()),
            disks: vec!["/tmp/disk.raw".into()],
        };
        command(&cfg)
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn always_tcg_never_kvm() {
        for fw in [Firmware::Bios, Firmware::Uefi] {
            let a = args(fw);
            assert!(a.windows(2).any(|w| w == ["-accel", "tcg"]));
            assert!(!a.iter().any(|x| x.contains("kvm")), "{a:?}");
        }
    }

    #[test]
    fn uefi_uses_ovmf_and_its_own_pxe() {
        let a = args(Firmware::Uefi).join(" ");
        assert!(
            a.contains(OVMF_CODE) && a.contains("/tmp/vars.fd") && a.contains("romfile="),
            "{a}"
        );
        let b = args(Firmware::Bios).join(" ");
        assert!(b.contains("-boot n") && !b.contains("romfile="), "{b}");
    }
}
