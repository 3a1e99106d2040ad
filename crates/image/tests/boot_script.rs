//! The boot script's part for the lab's accounts (`diskless_accounts` in
//! initramfs-tools/scripts/diskless), run by busybox's sh as in the initramfs, on a root made of
//! a Debian system's account files, with a stand-in for `diskless-fetch cat` that answers from
//! a directory: what the server serves is merged without replacing the image's own accounts,
//! with no local password, the PAM line goes before pam_unix, the session line (the home
//! unmounted at the last logout) after the session stack, and a second boot on a kept layer
//! changes nothing. (The whole path, with sshd and sshfs, is `crates/cli/tests/accounts.rs`.)
//! Also the command line's parsing (no globbing) and what the functions leave behind (their
//! documented outputs only).

mod common;

use common::write;
use diskless_image::bootcpio::{BOOT_SCRIPT, HOME_HELPER};
use std::path::Path;
use std::process::Command;

const PASSWD: &str = "root:x:0:0:root:/root:/bin/bash\n\
    sshd:x:100:65534::/run/sshd:/usr/sbin/nologin\n";
const GROUP: &str = "root:x:0:\nsudo:x:27:\n";
const SHADOW: &str = "root:*:20000:0:99999:7:::\nsshd:!:20000::::::\n";
const GSHADOW: &str = "root:*::\nsudo:*::\n";
/// Debian 12's /etc/pam.d/common-auth, comments left out.
const COMMON_AUTH: &str = "auth\t[success=1 default=ignore]\tpam_unix.so nullok\n\
    auth\trequisite\t\t\tpam_deny.so\nauth\trequired\t\t\tpam_permit.so\n";
/// Debian 12's /etc/pam.d/common-session, comments left out.
const COMMON_SESSION: &str = "session\t[default=1]\t\t\tpam_permit.so\n\
    session\trequisite\t\t\tpam_deny.so\nsession\trequired\t\t\tpam_permit.so\n\
    session\trequired\tpam_unix.so\nsession\toptional\tpam_systemd.so\n";

/// What the server serves: one lab user, and what a server must not be able to slip in (root
/// again, a taken uid, a name outside the portable set).
const SERVED_PASSWD: &str = "alice:x:1000:1000:Alice:/home/alice:/bin/bash\n\
    root:x:0:0::/root:/bin/sh\nmallory:x:100:100::/home/m:/bin/sh\nEve:x:1002:1002::/home/e:/bin/sh\n";
const SERVED_GROUP: &str = "alice:x:1000:\nlab:x:1500:alice\nsudo:x:27:alice\n";
const KNOWN_HOSTS: &str = "10.0.0.1 ssh-ed25519 AAAAkey\n";

/// `commands` run by busybox's sh with the boot script sourced as initramfs-tools' init does
/// (its log and panic functions stubbed), `dir` standing in for /diskless (with a stand-in
/// for `diskless-fetch cat` answering from `dir/served`, and the PAM helper), /run/diskless and
/// (`dir/root`) the new root; returns what it said, and whether it succeeded.
fn run_script(dir: &Path, commands: &str) -> (String, bool) {
    let fetch = dir.join("bin/diskless-fetch");
    write(
        dir,
        "bin/diskless-fetch",
        format!(
            "#!/bin/sh\ncat \"{}/${{2##*/}}\"\n",
            dir.join("served").display()
        ),
    );
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&fetch, std::fs::Permissions::from_mode(0o755)).unwrap();
    write(dir, "bin/diskless-home", HOME_HELPER);
    write(dir, "diskless", BOOT_SCRIPT);
    let script = format!(
        "log_success_msg() {{ echo \"$*\"; }}\n\
         log_failure_msg() {{ echo \"FAILED: $*\"; }}\n\
         log_warning_msg() {{ echo \"WARNING: $*\"; }}\n\
         panic() {{ echo \"PANIC: $*\"; exit 1; }}\n\
         . {dir}/diskless\n\
         PATH={dir}/bin:$PATH\n\
         DISKLESS={dir}\n\
         DISKLESS_RUN={dir}/run\n\
         rootmnt={dir}/root\n\
         {commands}",
        dir = dir.display()
    );
    let out = Command::new("busybox")
        .args(["sh", "-c", &script])
        .current_dir(dir)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (text, out.status.success())
}

/// One boot's `diskless_accounts` on `dir/root`; returns its output.
fn boot(dir: &Path) -> String {
    let (text, ok) = run_script(
        dir,
        "diskless_accounts_url=http://10.0.0.1/accounts\n\
         diskless_sshfs=10.0.0.1:22\n\
         diskless_accounts\n",
    );
    assert!(ok, "{text}");
    text
}

/// Whether busybox (the initramfs's shell) is here; when not, the test is skipped.
fn have_busybox() -> bool {
    let why = diskless_testkit::missing_tools(&["busybox"]);
    if let Some(why) = &why {
        diskless_testkit::skip(&format!(
            "{why}: install busybox-static (scripts/install-deps)"
        ));
    }
    why.is_none()
}

/// A Debian system's account and PAM files in `dir/root/etc`, and what the server serves in
/// `dir/served`.
fn lab_tree(dir: &Path) {
    let etc = dir.join("root/etc");
    for (file, text) in [
        ("passwd", PASSWD),
        ("group", GROUP),
        ("shadow", SHADOW),
        ("gshadow", GSHADOW),
        ("pam.d/common-auth", COMMON_AUTH),
        ("pam.d/common-session", COMMON_SESSION),
    ] {
        write(&etc, file, text);
    }
    for (file, text) in [
        ("passwd", SERVED_PASSWD),
        ("group", SERVED_GROUP),
        ("ssh_known_hosts", KNOWN_HOSTS),
    ] {
        write(&dir.join("served"), file, text);
    }
}

fn read(dir: &Path, file: &str) -> String {
    std::fs::read_to_string(dir.join("root/etc").join(file)).unwrap()
}

#[test]
fn the_lab_accounts_are_added_without_passwords_and_only_once() {
    if let Some(why) = diskless_testkit::missing_tools(&["busybox", "shellcheck"]) {
        diskless_testkit::skip(&format!(
            "{why}: install busybox-static and shellcheck (scripts/install-deps --test)"
        ));
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    lab_tree(dir);

    let said = boot(dir);
    assert!(said.contains("1 lab accounts"), "{said}");
    assert_eq!(
        read(dir, "passwd"),
        format!("{PASSWD}alice:x:1000:1000:Alice:/home/alice:/bin/bash\n"),
        "only the new, well-formed entry is added"
    );
    assert_eq!(
        read(dir, "group"),
        format!("{GROUP}alice:x:1000:\nlab:x:1500:alice\n")
    );
    assert_eq!(read(dir, "shadow"), format!("{SHADOW}alice:*:::::::\n"));
    assert_eq!(
        read(dir, "gshadow"),
        format!("{GSHADOW}alice:!::\nlab:!::alice\n")
    );
    assert_eq!(read(dir, "diskless/users"), "alice\n");
    assert_eq!(read(dir, "diskless/sshfs"), "10.0.0.1:22\n");
    assert_eq!(read(dir, "ssh/ssh_known_hosts"), KNOWN_HOSTS);
    let auth = read(dir, "pam.d/common-auth");
    assert_eq!(
        auth.lines().next().unwrap(),
        "auth\t[success=2 default=ignore]\tpam_exec.so expose_authtok quiet \
         /usr/local/sbin/diskless-home",
        "a checked login jumps over pam_unix and pam_deny to pam_permit"
    );
    assert!(auth.ends_with(COMMON_AUTH), "{auth}");
    assert_eq!(
        read(dir, "pam.d/common-session"),
        format!(
            "{COMMON_SESSION}session\toptional\tpam_exec.so quiet /usr/local/sbin/diskless-home\n"
        ),
        "every session of a lab user is counted, and the last one unmounts the home"
    );
    let helper = dir.join("root/usr/local/sbin/diskless-home");
    assert_eq!(std::fs::read_to_string(&helper).unwrap(), HOME_HELPER);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&helper).unwrap().permissions().mode() & 0o777,
        0o755
    );
    let checked = Command::new("shellcheck")
        .args(["-s", "sh"])
        .arg(&helper)
        .output()
        .unwrap();
    assert!(
        checked.status.success(),
        "shellcheck on the PAM helper the boot script writes:\n{}",
        String::from_utf8_lossy(&checked.stdout)
    );

    // A kept writable layer (diskless.upper=) boots again: nothing is added twice.
    let files = [
        "passwd",
        "group",
        "shadow",
        "gshadow",
        "pam.d/common-auth",
        "pam.d/common-session",
    ];
    let before: Vec<String> = files.iter().map(|f| read(dir, f)).collect();
    boot(dir);
    let after: Vec<String> = files.iter().map(|f| read(dir, f)).collect();
    assert_eq!(before, after);
    assert_eq!(read(dir, "diskless/users"), "alice\n");
}

#[test]
fn a_server_without_the_accounts_leaves_the_image_as_it_is_and_the_boot_goes_on() {
    if !have_busybox() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    write(dir, "root/etc/passwd", PASSWD);
    write(dir, "root/etc/pam.d/common-auth", COMMON_AUTH);
    std::fs::create_dir_all(dir.join("served")).unwrap();
    let said = boot(dir);
    assert!(
        said.contains("WARNING: diskless: cannot fetch the lab's accounts"),
        "{said}"
    );
    assert_eq!(read(dir, "passwd"), PASSWD);
    assert_eq!(read(dir, "pam.d/common-auth"), COMMON_AUTH);
}

/// The shell variables `commands` leave set that were not set before, by name.
fn new_variables(dir: &Path, commands: &str) -> (Vec<String>, String) {
    // `set` lists the variables; a value spanning lines is quoted, so only a line that starts
    // a name is one.
    let names = "set | sed -n 's/^\\([a-z_][a-z0-9_]*\\)=.*/\\1/p' | sort";
    let (text, ok) = run_script(
        dir,
        &format!(
            "{names} > {dir}/before\n{commands}\n{names} > {dir}/after\n\
             comm -13 {dir}/before {dir}/after | sed 's/^/NEW /'\n",
            dir = dir.display()
        ),
    );
    assert!(ok, "{text}");
    let new = text
        .lines()
        .filter_map(|l| l.strip_prefix("NEW "))
        .map(String::from)
        .collect();
    (new, text)
}

#[test]
fn the_command_line_is_split_into_words_that_are_not_globs() {
    if !have_busybox() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    // Files a glob in a parameter would match, in the directory the script runs in.
    write(dir, "diskless.size=9G", "");
    write(dir, "diskless.sha256=abcd", "");
    write(
        dir,
        "cmdline",
        "boot=diskless diskless.image=http://10.0.0.1/a.squashfs diskless.sha256=ab* \
         diskless.size=?G diskless.report=http://10.0.0.1/api/report/x?token=1.2\n",
    );
    let (text, ok) = run_script(
        dir,
        &format!(
            "DISKLESS_CMDLINE={}/cmdline\ndiskless_parse_cmdline\n\
             echo \"sha256=$diskless_sha256 size=$diskless_size report=$diskless_report_url\"\n\
             echo globs: *.size=*\n",
            dir.display()
        ),
    );
    assert!(ok, "{text}");
    assert!(
        text.contains("sha256=ab* size=?G report=http://10.0.0.1/api/report/x?token=1.2\n"),
        "{text}"
    );
    assert!(
        text.contains("globs: diskless.size=9G\n"),
        "globbing is back on after the parsing: {text}"
    );
}

#[test]
fn functions_leave_only_their_documented_outputs() {
    if !have_busybox() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    lab_tree(dir);
    write(
        dir,
        "cmdline",
        "boot=diskless diskless.image=dev:LABEL=img:/images/root.squashfs,http://10.0.0.1/r \
         diskless.sha256=ab diskless.upper=LABEL=up diskless.accounts=http://10.0.0.1/accounts \
         diskless.sshfs=10.0.0.1:22\n",
    );
    // The disks: findfs finds each label, mount and its helpers do nothing.
    let stubs = "findfs() { echo \"/dev/disk-${1#LABEL=}\"; }\n\
                 get_fstype() { echo ext4; }\nmodprobe() { :; }\nmount() { :; }\n";
    let (new, text) = new_variables(
        dir,
        &format!(
            "{stubs}DISKLESS_CMDLINE={dir}/cmdline\ndiskless_parse_cmdline\n\
             diskless_resolve_sources\ndiskless_writable_layer\n\
             HOSTNAME=pc01\ndiskless_configure_root\ndiskless_accounts\n\
             echo \"sources=$diskless_sources upper=$diskless_upperdir\"",
            dir = dir.display()
        ),
    );
    // The disk found is passed on by its name, not through a global.
    let run = dir.join("run");
    assert!(
        text.contains(&format!(
            "sources= file://{0}/dev/disk-img/images/root.squashfs http://10.0.0.1/r \
             upper={0}/persist/upper\n",
            run.display()
        )),
        "{text}"
    );
    let documented = [
        "diskless_accounts_url",
        "diskless_autologin",
        "diskless_boot_timeout",
        "diskless_fetch",
        "diskless_image",
        "diskless_multicast_url",
        "diskless_needs_network",
        "diskless_report_url",
        "diskless_root_node",
        "diskless_roothash",
        "diskless_sha256",
        "diskless_size",
        "diskless_sources",
        "diskless_sshfs",
        "diskless_upper",
        "diskless_upper_reset",
        "diskless_upperdir",
        "diskless_verity",
        "diskless_workdir",
    ];
    let leaked: Vec<&String> = new
        .iter()
        .filter(|n| !documented.contains(&n.as_str()))
        .collect();
    assert!(leaked.is_empty(), "leaked globals {leaked:?}:\n{text}");
}

/// `diskless_watch_boot`, run by busybox's sh as in the initramfs, then the script it leaves
/// for the booted system run with stand-ins for systemctl and diskless-fetch: the units are
/// written and enabled, emergency mode is reported `failed` with `reason=emergency` and the
/// failed units, once per boot; a timeout says nothing once multi-user is reached, and is
/// reported `reason=timeout` otherwise. (A real boot: crates/cli/tests/failures.rs.)
#[test]
fn the_autologin_console_waits_for_its_device_as_long_as_it_takes() {
    if let Some(why) = diskless_testkit::missing_tools(&["busybox"]) {
        diskless_testkit::skip(&format!(
            "{why}: install busybox-static (scripts/install-deps)"
        ));
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    write(dir, "diskless", BOOT_SCRIPT);
    let script = format!(
        ". {dir}/diskless\n\
         DISKLESS={dir}/initrd\n\
         DISKLESS_RUN={dir}/run\n\
         rootmnt={dir}/root\n\
         HOSTNAME=\n\
         diskless_report_url=\n\
         diskless_autologin=ttyS0\n\
         diskless_configure_root\n",
        dir = dir.display()
    );
    let out = Command::new("busybox")
        .args(["sh", "-c", &script])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let units = dir.join("root/etc/systemd/system");
    let device =
        std::fs::read_to_string(units.join("dev-ttyS0.device.d/diskless-autologin.conf")).unwrap();
    assert_eq!(
        device,
        "[Unit]\nJobTimeoutSec=infinity\nJobRunningTimeoutSec=infinity\n"
    );
    let getty =
        std::fs::read_to_string(units.join("serial-getty@ttyS0.service.d/diskless-autologin.conf"))
            .unwrap();
    assert!(getty.contains("--autologin root"), "{getty}");
}

#[test]
fn a_boot_stopped_after_the_root_is_mounted_is_reported_once_with_its_reason() {
    if let Some(why) = diskless_testkit::missing_tools(&["busybox"]) {
        diskless_testkit::skip(&format!(
            "{why}: install busybox-static (scripts/install-deps)"
        ));
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let exe = |dir: &Path, rel: &str, text: String| {
        write(dir, rel, text);
        std::fs::set_permissions(dir.join(rel), std::fs::Permissions::from_mode(0o755)).unwrap();
    };
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let calls = dir.join("calls");
    exe(
        dir,
        "initrd/bin/diskless-fetch",
        format!(
            "#!/bin/sh\nprintf '%s|' \"$@\" >> {}\necho >> {0}\n",
            calls.display()
        ),
    );
    write(dir, "diskless", BOOT_SCRIPT);
    let url = "http://10.0.0.1/api/report/52:54:00:12:34:56?token=a.b";
    let script = format!(
        ". {dir}/diskless\n\
         DISKLESS={dir}/initrd\n\
         DISKLESS_RUN={dir}/run\n\
         rootmnt={dir}/root\n\
         diskless_report_url='{url}'\n\
         diskless_watch_boot\n",
        dir = dir.display()
    );
    let out = Command::new("busybox")
        .args(["sh", "-c", &script])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let units = dir.join("root/etc/systemd/system");
    let link = |rel: &str| std::fs::read_link(units.join(rel)).unwrap();
    assert_eq!(
        link("emergency.target.wants/diskless-emergency.service"),
        Path::new("../diskless-emergency.service")
    );
    assert_eq!(
        link("sysinit.target.wants/diskless-boot-timeout.timer"),
        Path::new("../diskless-boot-timeout.timer")
    );
    let timer = std::fs::read_to_string(units.join("diskless-boot-timeout.timer")).unwrap();
    assert!(timer.contains("\nOnActiveSec=600\n"), "{timer}");
    let failed = dir.join("run/ram/bin/diskless-boot-failed");
    let service = std::fs::read_to_string(units.join("diskless-emergency.service")).unwrap();
    assert!(
        service.contains(&format!("\nExecStart=-{} emergency\n", failed.display())),
        "{service}"
    );

    // The booted system: systemctl says which units failed and whether multi-user is active;
    // the console is a file.
    let console = dir.join("console");
    let text = std::fs::read_to_string(&failed)
        .unwrap()
        .replace("/dev/console", &console.display().to_string());
    exe(dir, "run/ram/bin/diskless-boot-failed", text);
    let run = |reason: &str, multi_user: bool| {
        let systemctl = format!(
            "#!/bin/sh\ncase \"$*\" in\n\
             *is-active*) exit {} ;;\n\
             *list-units*) echo 'local-fs.target loaded failed failed Local File Systems'; \
             echo 'data.mount loaded failed failed /data' ;;\n\
             esac\n",
            if multi_user { 0 } else { 3 }
        );
        exe(dir, "sbin/systemctl", systemctl);
        let out = Command::new("busybox")
            .args(["sh", &failed.display().to_string(), reason])
            .env("PATH", format!("{}/sbin:/usr/bin:/bin", dir.display()))
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        std::fs::read_to_string(&calls).unwrap_or_default()
    };
    assert_eq!(run("timeout", true), "", "multi-user was reached");
    let expected = "reason=emergency the boot stopped in emergency mode; \
                    failed units: local-fs.target data.mount";
    assert_eq!(
        run("emergency", false),
        format!("report|{url}|failed|{expected}|\n")
    );
    assert_eq!(
        std::fs::read_to_string(&console).unwrap(),
        format!("diskless: boot failed: {expected}\n")
    );
    assert_eq!(
        run("timeout", false),
        format!("report|{url}|failed|{expected}|\n"),
        "a second failure of the same boot is not reported"
    );

    std::fs::remove_file(dir.join("run/boot-failed")).unwrap();
    std::fs::remove_file(&calls).unwrap();
    assert_eq!(
        run("timeout", false),
        format!(
            "report|{url}|failed|reason=timeout multi-user not reached 600 s after systemd \
             started; failed units: local-fs.target data.mount|\n"
        )
    );
}
