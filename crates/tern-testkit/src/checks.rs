//! What a test asks of a guest and its disks, shared by the storage tests
//! (NFS, RBD, mirrors): new verified disk passes, a clean power-off, a
//! boot that verifies every block written before, and a file's allocation.

use crate::{build_or_reuse, BuildOptions, GuestSpec, SerialLog, TernHost, TestDisk};
use std::path::Path;
use std::time::{Duration, Instant};

/// Number of `TERN-DISK ok` lines in a console text.
pub fn disk_oks(text: &str) -> usize {
    SerialLog::parse(text).count("TERN-DISK ok")
}

/// Waits until the guest on `h` reports `more` new verified disk passes,
/// and fails on any failure it reports.
pub fn wait_disk_ok(h: &TernHost, name: &str, more: usize) {
    let before = disk_oks(&h.ok(&["console", name]));
    h.wait_console(
        name,
        Duration::from_secs(120),
        "more TERN-DISK ok lines",
        |t| disk_oks(t) >= before + more || t.contains("TERN-FAIL"),
    );
    let text = h.ok(&["console", name]);
    assert!(
        SerialLog::parse(&text).failures.is_empty(),
        "guest reported a failure:\n{}",
        crate::tail(&text, 20)
    );
}

/// Shuts the guest down from inside and waits until the host says so.
pub fn shut_off(h: &TernHost, name: &str) {
    h.ok(&["shutdown", name]);
    h.wait_console(name, Duration::from_secs(60), "power off", |t| {
        t.contains("TERN-POWEROFF")
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    while !h.ok(&["domstate", name]).starts_with("shut off") {
        assert!(Instant::now() < deadline, "guest did not stop");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Starts the shut-off guest on `h` and waits until it verified at boot
/// every block it wrote before, and is ready: the disk thread reports
/// "verified" while the workload may still be filling its memory, before
/// it listens to the power button, and a [`shut_off`] then would press a
/// button nobody hears (two CI-style runs failed so, "the guest ignored
/// the ACPI power button").
pub fn boot_and_verify(h: &TernHost, name: &str) {
    h.ok(&["start", name]);
    let text = h.wait_console(
        name,
        Duration::from_secs(90),
        "the disk verified at boot, and TERN-READY",
        |t| {
            (t.contains("TERN-DISK verified") && SerialLog::parse(t).ready())
                || t.contains("TERN-FAIL")
        },
    );
    assert!(SerialLog::parse(&text).failures.is_empty(), "{text}");
    assert!(text.contains("TERN-DISK verified"), "{text}");
}

/// Bytes a file holds on disk (its holes not counted); 0 when it is gone.
pub fn allocated(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).map_or(0, |m| m.blocks() * 512)
}

/// `tern migrate --live --verbose FLAGS NAME DEST` from `from`, which must
/// succeed; its output.
pub fn live_migrate(from: &TernHost, flags: &[&str], name: &str, dest: &str) -> String {
    let mut args = vec!["migrate", "--live", "--verbose"];
    args.extend_from_slice(flags);
    args.extend([name, dest]);
    let out = from.tern(&args);
    assert!(
        out.status.success(),
        "tern {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Defines and boots the test guest on `h` with its disk (vda) at the
/// file `path` of `format`, and waits for it to be ready and for two
/// verified disk passes.
pub fn boot_with_disk(h: &TernHost, name: &str, path: &Path, format: &str) {
    let img = build_or_reuse(&BuildOptions::default()).expect("test guest");
    let mut spec = GuestSpec::new(name, &img)
        .workload("tern.mem=16 tern.dirty=0 tern.disk=/dev/vda tern.disk_mb=4");
    spec.disks.push(TestDisk {
        path: path.to_path_buf(),
        format: format.into(),
        target: "vda".into(),
        cache: "none".into(),
    });
    h.define_guest(&spec);
    h.ok(&["start", name]);
    // Ready first: only then does the guest hear the power button (see
    // `boot_and_verify`).
    h.wait_console(name, Duration::from_secs(90), "TERN-READY", |t| {
        SerialLog::parse(t).ready() || t.contains("TERN-FAIL")
    });
    wait_disk_ok(h, name, 2);
}
