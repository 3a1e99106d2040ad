//! Issue 25: `diskless.fetch=lazy`. The seat mounts its root at once from the fetch helper's
//! NBD device (dm-verity over dm-linear over /dev/nbd0), reaches multi-user, fills its RAM
//! copy behind the boot, then moves the root onto a loop device over the copy and lets go of
//! the network device.
//!
//! Run by scripts/test (`cargo test -p diskless --test lazy -- --ignored`): it needs root,
//! network namespaces, QEMU and minutes. The image is the shared test image
//! (`DISKLESS_TEST_STORE` / `DISKLESS_TEST_IMAGE`), whose diskless.cpio carries nbd.

mod common;
use common::{add_image, command_output, read_report, run_vm, stages, vm, Work};

const MAC: &str = "52:54:00:12:34:56";

/// Run on the seat once it is up: wait until the helper (argv[0] `@diskless-fetch`) has
/// exited, then show what each device-mapper device sits on, whether nbd0 is still
/// connected (its `pid` file exists only then) and what the root was mounted from.
const CHECK: &str = "while grep -qs '^@diskless-fetch' /proc/[0-9]*/cmdline; do sleep 1; done; \
     for d in /sys/block/dm-*; do echo \"$(cat $d/dm/name) on $(ls $d/slaves)\"; done; \
     [ -e /sys/block/nbd0/pid ] && echo nbd0 connected || echo nbd0 disconnected";

#[test]
#[ignore = "needs root, QEMU and minutes: run by scripts/test"]
fn a_lazy_seat_boots_at_once_then_runs_from_its_ram_copy() {
    let work = Work::new();
    let store = work.path().join("store");
    add_image(&store, "test");
    let logs = work.path().join("logs");
    run_vm(
        vm("test", &store, &logs, &[CHECK])
            .args(["--mac", MAC])
            .args(["--cmdline", "diskless.fetch=lazy"]),
    );
    let report = read_report(&logs);
    let (out, status) = command_output(report.first(), CHECK);
    assert_eq!(status, 0, "{out}");
    // Before the switch the linear device sat on nbd0; now on a loop device over the copy.
    assert!(out.contains("diskless-lazy on loop"), "{out}");
    assert!(out.contains("diskless-root on dm-"), "{out}");
    assert!(out.contains("nbd0 disconnected"), "{out}");
    let console = std::fs::read_to_string(logs.join("console.log")).unwrap();
    assert!(
        console.contains("the root is served from the network (diskless.fetch=lazy)"),
        "the seat fetched the image whole:\n{console}"
    );
    assert!(
        console.contains("the root is on the RAM copy, off the network"),
        "{console}"
    );
    let stages = stages(&logs, MAC);
    for stage in ["root-mounted", "multi-user", "filled", "network-released"] {
        assert!(stages.iter().any(|s| s == stage), "no {stage}: {stages:?}");
    }
    assert!(!stages.iter().any(|s| s == "fetched"), "{stages:?}");
}
