//! `tern-workload`: the program Tern's test guest runs.
//!
//! It is built statically (`RUSTFLAGS=-C target-feature=+crt-static`) by
//! `tern-testkit` and started by the guest's `/init` with stdout and stderr on
//! `/dev/console` (the serial port). Tests believe the guest only through the
//! lines it prints there, so every line starts with a `TERN-` word.
//!
//! # Parameters (kernel command line)
//!
//! | parameter | default | meaning |
//! |---|---|---|
//! | `tern.hb_ms=N` | 50 | heartbeat period in ms (1..=60000) |
//! | `tern.mem=N` | 0 | MiB of self-checking anonymous memory (0 = no memory workload) |
//! | `tern.dirty=R` | 0 | MiB/s of page rewrites with a bumped generation (0 = idle) |
//! | `tern.verify_rate=R` | 0 | MiB/s the memory verifier reads (0 = as fast as it can, at nice 19) |
//! | `tern.disk=/dev/X` | none | block device for the checksummed-block region |
//! | `tern.disk_mb=M` | 16 | size of that region (from offset 0), MiB; keep it the same across boots |
//! | `tern.disk_rate=K` | 256 | KiB/s of random block rewrites (0 = none) |
//! | `tern.disk_verify_rate=K` | 1024 | KiB/s of read-back verification (a sweep over the region) |
//! | `tern.ip=A/P` | none | IPv4 address/prefix of eth0 (set by /init); starts the echo server |
//! | `tern.gw=A` | none | default gateway (set by /init) |
//! | `tern.port=N` | 7777 | TCP port of the echo server |
//! | `tern.ignore_acpi=1` | 0 | ignore the ACPI power button (so `system_powerdown` does nothing) |
//! | `tern.efivar=V` | none | keep `V` (letters, digits, `-`) in a UEFI variable; see `efivar` |
//! | `tern.qga=0` | 1 | do not answer on the guest-agent port (as a guest without qemu-ga) |
//! | `tern.watchdog_stall=N` | none | read by the guest's `/init`: arm the i6300esb watchdog, stop pinging it after N s |
//!
//! A bad or unknown `tern.*` parameter prints `TERN-FAIL param ...` and the
//! default is used; the workload never panics on its input.
//!
//! # Console lines
//!
//! - `TERN-START <all parameters as key=value>`: first line.
//! - `TERN-HB seq=<n> up_ms=<ms> mem_passes=<n> dirtied_mib=<n>`: every
//!   `hb_ms`, from a real-time thread; `seq` starts at 1 and never resets while
//!   the guest runs; `up_ms` is CLOCK_BOOTTIME.
//! - `TERN-MEM filled pages=<n>`: the memory area is filled (generation 1).
//! - `TERN-MEM ok passes=<n> pages=<n>`: a clean full verification pass (at most one line a second).
//! - `TERN-DISK formatted blocks=<n>` or `TERN-DISK verified blocks=<n> ok`: disk region set up.
//! - `TERN-DISK ok writes=<n> verified=<n>`: every second while no disk failure happened in that second.
//! - `TERN-NET listening <ip>:<port>`: the echo server is up.
//! - `TERN-READY up_ms=<ms>`: everything above is set up.
//! - `TERN-EFIVAR found value=<v>` / `absent` / `wrote value=<v>`: the UEFI
//!   variable at start (UEFI guests only).
//! - `TERN-QGA listening <dev>` and `TERN-QGA <command>`: the guest-agent
//!   stand-in found its virtio-serial port, and answered a command.
//! - `TERN-POWEROFF`: the power button was pressed; the guest syncs and powers off.
//! - `TERN-INFO ...`: informational.
//! - `TERN-FAIL <area> ...`: something is wrong (`param`, `mem`, `disk`, `net`,
//!   `power`, `hb`, `panic`; `/init` prints `init`). Tests should treat any
//!   such line as a failure.
//!
//! # Echo server (with `tern.ip=`)
//!
//! Listens on `0.0.0.0:<tern.port>`. Per connection it sends
//! `TERN-HELLO seq=<hb seq>`, then echoes every line, except the line `seq`,
//! answered with `TERN-SEQ seq=<current hb seq>`.
//!
//! # Failure lines
//!
//! Exact `TERN-FAIL` forms: `TERN-FAIL mem page=<i> expected_gen=<g>
//! found_index=<i> found_gen=<g> bad_words=<n> first_bad_word=<k>` (then
//! `TERN-FAIL mem pass=<n> bad_pages=<n> total_bad_pages=<n>`), `TERN-FAIL
//! disk block=<i> [expected_gen=<g>] found_gen=<g> reason=stale|bad-checksum`
//! or `reason=no-magic|wrong-index`, `TERN-FAIL disk verify bad_blocks=<n>
//! blocks=<n>`, `TERN-FAIL disk io error: ...`.

mod block;
mod clock;
mod console;
mod disk;
mod efivar;
mod heartbeat;
mod mem;
mod net;
mod params;
mod pattern;
mod power;
mod qga;

use std::time::Duration;

/// `MemAvailable` from /proc/meminfo, in MiB.
fn mem_available_mib() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

fn main() {
    std::panic::set_hook(Box::new(|info| {
        console::fail("panic", &info.to_string().replace('\n', " "));
    }));

    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_else(|e| {
        console::fail(
            "param",
            &format!("cannot read /proc/cmdline: {e}, using defaults"),
        );
        String::new()
    });
    let (mut p, warnings) = params::parse(&cmdline);
    console::emit(&format!("TERN-START {}", p.summary()));
    for w in warnings {
        console::fail("param", &w);
    }
    if let Err(e) = heartbeat::spawn(p.hb_ms) {
        console::fail("hb", &format!("cannot start the heartbeat thread: {e}"));
    }

    efivar::run(p.efivar.as_deref());
    if p.qga {
        qga::spawn();
    }

    let (disk_ready_tx, disk_ready) = std::sync::mpsc::channel();
    if let Some(dev) = p.disk.clone() {
        if let Err(e) = disk::spawn(
            dev,
            p.disk_mb,
            p.disk_rate_kibps,
            p.disk_verify_kibps,
            p.disk_hotplug,
            disk_ready_tx,
        ) {
            console::fail("disk", &format!("cannot start the disk thread: {e}"));
        }
    } else {
        drop(disk_ready_tx);
    }

    if let Some(avail) = mem_available_mib() {
        // Leave room for the kernel, the initramfs and the other threads.
        if p.mem_mib > 0 && p.mem_mib + 32 > avail {
            console::fail(
                "param",
                &format!(
                    "tern.mem={} does not fit in the guest's {avail} MiB of available memory, using the default (0); give the VM more memory",
                    p.mem_mib
                ),
            );
            p.mem_mib = 0;
        }
    }
    if p.dirty_mibps > 0 && p.mem_mib == 0 {
        console::emit("TERN-INFO tern.dirty has no effect without tern.mem");
    }
    if p.mem_mib > 0 {
        match mem::start(p.mem_mib, p.dirty_mibps, p.verify_mibps) {
            Ok(pages) => console::emit(&format!("TERN-MEM filled pages={pages}")),
            Err(e) => console::fail("mem", &format!("cannot map {} MiB: {e}", p.mem_mib)),
        }
    }

    if let Some((ip, _prefix)) = p.ip {
        if let Err(e) = net::start(ip, p.port) {
            console::fail("net", &format!("cannot listen on port {}: {e}", p.port));
        }
    } else if p.port != params::Params::default().port {
        console::emit("TERN-INFO tern.port given without tern.ip: no echo server");
    }

    if p.ignore_acpi {
        console::emit("TERN-INFO ignoring the ACPI power button (tern.ignore_acpi=1)");
    } else {
        power::start();
    }

    // Wait for the disk region to be verified or formatted (no-op without disk).
    let _ = disk_ready.recv();
    console::emit(&format!("TERN-READY up_ms={}", clock::boottime_ms()));

    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}
