//! The QEMU command line of a test client.
//!
//! Always TCG: on these machines KVM is paravirtual and hangs in firmware or the kernel's
//! decompressor.

use diskless_boot::Mac;
use std::path::PathBuf;
use std::process::Command;

/// How the client starts: which firmware, and which of its network boot paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Firmware {
    /// SeaBIOS with the iPXE option ROM of the virtio NIC (Debian's ipxe-qemu).
    Bios,
    /// OVMF (Debian's ovmf), booting with its own UEFI PXE client (TFTP).
    Uefi,
    /// OVMF's UEFI HTTP Boot: PXE switched off, so the firmware asks for its boot file with
    /// vendor class `HTTPClient` and fetches the URL it gets over HTTP.
    UefiHttp,
    /// OVMF with Secure Boot enforced: the SMM build and Microsoft's keys enrolled, as
    /// Debian's ovmf ships them; its own PXE client, so only signed binaries run.
    SecureBoot,
    /// [`Firmware::SecureBoot`]'s OVMF doing [`Firmware::UefiHttp`]'s HTTP Boot (PXE off).
    SecureBootHttp,
}

impl Firmware {
    /// Every firmware, by its command-line name.
    pub const ALL: [Firmware; 5] = [
        Firmware::Bios,
        Firmware::Uefi,
        Firmware::UefiHttp,
        Firmware::SecureBoot,
        Firmware::SecureBootHttp,
    ];

    /// The name `diskless vm --firmware` takes.
    pub fn as_str(self) -> &'static str {
        match self {
            Firmware::Bios => "bios",
            Firmware::Uefi => "uefi",
            Firmware::UefiHttp => "uefi-http",
            Firmware::SecureBoot => "uefi-secureboot",
            Firmware::SecureBootHttp => "uefi-secureboot-http",
        }
    }

    pub fn is_uefi(self) -> bool {
        self != Firmware::Bios
    }

    /// Whether Secure Boot is enforced: only signed binaries run.
    pub fn secure_boot(self) -> bool {
        matches!(self, Firmware::SecureBoot | Firmware::SecureBootHttp)
    }

    /// Whether the firmware boots by UEFI HTTP Boot, its PXE clients switched off.
    pub fn http_boot(self) -> bool {
        matches!(self, Firmware::UefiHttp | Firmware::SecureBootHttp)
    }

    /// OVMF's code image (read only) for this firmware; None for SeaBIOS.
    pub fn ovmf_code(self) -> Option<&'static str> {
        match self {
            Firmware::Bios => None,
            Firmware::Uefi | Firmware::UefiHttp => Some(OVMF_CODE),
            Firmware::SecureBoot | Firmware::SecureBootHttp => Some(OVMF_CODE_SECURE_BOOT),
        }
    }

    /// The variable store each client gets a private copy of; None for SeaBIOS.
    pub fn ovmf_vars_template(self) -> Option<&'static str> {
        match self {
            Firmware::Bios => None,
            Firmware::Uefi | Firmware::UefiHttp => Some(OVMF_VARS),
            Firmware::SecureBoot | Firmware::SecureBootHttp => Some(OVMF_VARS_MS_KEYS),
        }
    }
}

impl std::fmt::Display for Firmware {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Firmware {
    type Err = String;
    fn from_str(s: &str) -> Result<Firmware, String> {
        Firmware::ALL
            .into_iter()
            .find(|f| f.as_str() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Firmware::ALL.iter().map(|f| f.as_str()).collect();
                format!(
                    "unknown firmware {s:?} (expected one of {})",
                    names.join(", ")
                )
            })
    }
}

/// By its name (`bios`, `uefi-http`), in the run's [`crate::Report`].
impl serde::Serialize for Firmware {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for Firmware {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Firmware, D::Error> {
        let name = String::deserialize(d)?;
        name.parse().map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Clone)]
pub struct QemuConfig {
    pub memory_mib: u32,
    pub cpus: u32,
    pub firmware: Firmware,
    pub tap: String,
    pub mac: Mac,
    /// A writable copy of OVMF's variable store (UEFI only).
    pub ovmf_vars: Option<PathBuf>,
    /// Raw disk images, attached as virtio disks in this order.
    pub disks: Vec<PathBuf>,
    /// A standard VGA card (Linux drives it with bochs-drm, Xorg with modesetting), shown
    /// nowhere: its picture is read with a screendump over `qmp`.
    pub display: bool,
    /// A QMP socket QEMU listens on.
    pub qmp: Option<PathBuf>,
}

// What Debian 12's ovmf (2022.11) ships in /usr/share/OVMF (`dpkg -L ovmf`): OVMF_CODE.fd,
// OVMF_CODE_4M.fd and their .secboot.fd (SMM, Secure Boot capable), .ms.fd and .snakeoil.fd
// variants, and the variable stores OVMF_VARS{,_4M}.fd (no keys), OVMF_VARS{,_4M}.ms.fd
// (Microsoft's KEK and db enrolled, Secure Boot on: what shipped PCs have) and
// OVMF_VARS_4M.snakeoil.fd (a test key). The 4M builds are the ones Debian's
// qemu/firmware descriptors pick.
pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";
pub const OVMF_CODE_SECURE_BOOT: &str = "/usr/share/OVMF/OVMF_CODE_4M.secboot.fd";
pub const OVMF_VARS_MS_KEYS: &str = "/usr/share/OVMF/OVMF_VARS_4M.ms.fd";

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
    if cfg.display {
        cmd.args(["-device", "VGA"]);
    }
    if let Some(qmp) = &cfg.qmp {
        cmd.args(["-qmp", &crate::qmp::qmp_option(qmp)]);
    }
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
        Firmware::Uefi | Firmware::UefiHttp => {
            cmd.args(["-machine", "q35"]);
        }
        Firmware::SecureBoot | Firmware::SecureBootHttp => {
            // The .secboot build keeps its variables in SMM, where the OS cannot write them
            // (README.Debian of ovmf): q35 with SMM, and the flash writable from SMM only.
            // S3 off, as that README says for this build.
            cmd.args(["-machine", "q35,smm=on"])
                .args(["-global", "driver=cfi.pflash01,property=secure,value=on"])
                .args(["-global", "ICH9-LPC.disable_s3=1"]);
        }
    }
    if cfg.firmware.http_boot() {
        // OVMF reads these fw_cfg knobs at start (NetworkPkg's PcdIPv4PXESupport and
        // PcdIPv6PXESupport): with both PXE clients off, its only network boot options
        // are HTTP Boot, over IPv4 first.
        cmd.args(["-fw_cfg", "name=opt/org.tianocore/IPv4PXESupport,string=no"])
            .args(["-fw_cfg", "name=opt/org.tianocore/IPv6PXESupport,string=no"]);
    }
    if let Some(code) = cfg.firmware.ovmf_code() {
        cmd.args([
            "-drive",
            &format!("if=pflash,format=raw,unit=0,readonly=on,file={code}"),
        ]);
        if let Some(vars) = &cfg.ovmf_vars {
            cmd.args([
                "-drive",
                &format!("if=pflash,format=raw,unit=1,file={}", vars.display()),
            ]);
        }
    }
    cmd
}

fn nic(cfg: &QemuConfig) -> String {
    let mut nic = format!("virtio-net-pci,netdev=net0,mac={},bootindex=1", cfg.mac);
    if cfg.firmware.is_uefi() {
        // Without the iPXE option ROM, OVMF boots with its own network stack (PXE or HTTP
        // Boot), as real UEFI machines do; with it, iPXE's driver would take the NIC over.
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
            mac: "52:54:00:00:00:01".parse().unwrap(),
            ovmf_vars: firmware.is_uefi().then(|| "/tmp/vars.fd".into()),
            disks: vec!["/tmp/disk.raw".into()],
            display: false,
            qmp: None,
        };
        command(&cfg)
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn always_tcg_never_kvm() {
        for fw in Firmware::ALL {
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
        assert!(!a.contains("PXESupport"), "{a}");
        let b = args(Firmware::Bios).join(" ");
        assert!(b.contains("-boot n") && !b.contains("romfile="), "{b}");
        assert!(!b.contains("pflash"), "{b}");
    }

    #[test]
    fn http_boot_switches_pxe_off() {
        let a = args(Firmware::UefiHttp).join(" ");
        assert!(a.contains("romfile="), "{a}");
        assert!(
            a.contains("-fw_cfg name=opt/org.tianocore/IPv4PXESupport,string=no"),
            "{a}"
        );
        assert!(a.contains(OVMF_CODE), "{a}");
    }

    #[test]
    fn secure_boot_is_the_smm_build_with_microsoft_keys() {
        let a = args(Firmware::SecureBoot).join(" ");
        for part in [
            "-machine q35,smm=on",
            "driver=cfi.pflash01,property=secure,value=on",
            OVMF_CODE_SECURE_BOOT,
            "/tmp/vars.fd",
            "romfile=",
        ] {
            assert!(a.contains(part), "{part} missing: {a}");
        }
        assert_eq!(
            Firmware::SecureBoot.ovmf_vars_template(),
            Some(OVMF_VARS_MS_KEYS)
        );
        assert!(!a.contains("PXESupport"), "{a}");
    }

    #[test]
    fn secure_boot_http_is_the_secure_build_with_pxe_off() {
        let a = args(Firmware::SecureBootHttp).join(" ");
        for part in [
            "-machine q35,smm=on",
            "driver=cfi.pflash01,property=secure,value=on",
            OVMF_CODE_SECURE_BOOT,
            "/tmp/vars.fd",
            "romfile=",
            "-fw_cfg name=opt/org.tianocore/IPv4PXESupport,string=no",
            "-fw_cfg name=opt/org.tianocore/IPv6PXESupport,string=no",
        ] {
            assert!(a.contains(part), "{part} missing: {a}");
        }
        assert_eq!(
            Firmware::SecureBootHttp.ovmf_vars_template(),
            Some(OVMF_VARS_MS_KEYS)
        );
        let secure: Vec<Firmware> = Firmware::ALL
            .into_iter()
            .filter(|f| f.secure_boot())
            .collect();
        assert_eq!(secure, [Firmware::SecureBoot, Firmware::SecureBootHttp]);
    }

    #[test]
    fn a_display_is_a_vga_card_read_over_qmp() {
        assert!(!args(Firmware::Bios)
            .iter()
            .any(|a| a == "VGA" || a == "-qmp"));
        let cfg = QemuConfig {
            memory_mib: 1024,
            cpus: 2,
            firmware: Firmware::Bios,
            tap: "dl0".into(),
            mac: "52:54:00:00:00:01".parse().unwrap(),
            ovmf_vars: None,
            disks: vec![],
            display: true,
            qmp: Some("/tmp/l/qmp.sock".into()),
        };
        let a: Vec<String> = command(&cfg)
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let a = a.join(" ");
        assert!(a.contains("-device VGA"), "{a}");
        assert!(
            a.contains("-qmp unix:/tmp/l/qmp.sock,server=on,wait=off"),
            "{a}"
        );
        // No window: the picture is only read by screendump.
        assert!(
            a.contains("-display none") && a.contains("-nodefaults"),
            "{a}"
        );
    }

    #[test]
    fn names_round_trip() {
        for fw in Firmware::ALL {
            assert_eq!(fw.as_str().parse::<Firmware>(), Ok(fw));
        }
        let err = "efi".parse::<Firmware>().unwrap_err();
        assert!(err.contains("uefi-http"), "{err}");
    }
}
