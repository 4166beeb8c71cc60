//! The main job: two Tern hosts on this machine, a real guest booted on
//! the first, live-migrated to the second with a progress bar, and what
//! happened: total time, downtime (QEMU's and the one the guest's
//! heartbeats show), bytes moved.

use std::process::Command;
use std::time::{Duration, Instant};
use tern_testkit::{
    bin, build_or_reuse, BuildOptions, ConsoleWatcher, GuestSpec, HostOptions, SerialLog, TernHost,
    TestDisk,
};

fn say(s: &str) {
    println!("\n== {s}");
}

fn show(host: &TernHost, label: &str, args: &[&str]) -> String {
    println!("$ tern -c {label} {}", args.join(" "));
    let out = host.ok(args);
    print!("{out}");
    out
}

fn main() {
    let t_all = Instant::now();
    say("building (or reusing) the test guest: Debian kernel + busybox + tern-workload");
    let img = match build_or_reuse(&BuildOptions::default()) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    };
    println!(
        "kernel {}\ninitrd {}",
        img.kernel.display(),
        img.initrd.display()
    );

    say("starting two hosts (ternd with the embedded defaults, accelerator auto)");
    let host = |name: &str| {
        TernHost::start_with(HostOptions {
            name: name.into(),
            accel: Some("auto".into()),
            ..Default::default()
        })
    };
    let a = host("host-a");
    let b = host("host-b");
    println!("host-a: {}\nhost-b: {}", a.uri(), b.uri());
    let shared = tempfile::Builder::new()
        .prefix("tern-demo-shared-")
        .tempdir()
        .expect("temp dir");
    a.add_pool("shared", shared.path(), true);
    b.add_pool("shared", shared.path(), true);
    show(&a, "host-a", &["pool-list", "--details"]);
    show(&a, "host-a", &["nodeinfo"]);

    say("defining and starting the guest on host-a (256 MiB, 128 MiB pattern, dirtying 20 MiB/s)");
    a.ok(&["vol-create-as", "shared", "demo.raw", "16M"]);
    let mut spec = GuestSpec::new("demo", &img).workload(
        "tern.mem=128 tern.dirty=20 tern.verify_rate=32 tern.disk=/dev/vda tern.disk_mb=4",
    );
    spec.disks.push(TestDisk {
        path: shared.path().join("demo.raw"),
        format: "raw".into(),
        target: "vda".into(),
        cache: "none".into(),
    });
    a.define_guest(&spec);
    show(&a, "host-a", &["start", "demo"]);
    let boot = Instant::now();
    let text = a.wait_console("demo", Duration::from_secs(120), "TERN-READY", |t| {
        let l = SerialLog::parse(t);
        l.ready() && l.count("TERN-MEM ok") >= 1
    });
    println!(
        "guest ready after {:.1} s; its console says:",
        boot.elapsed().as_secs_f64()
    );
    for l in SerialLog::parse(&text).lines.iter().rev().take(3).rev() {
        println!("  {l}");
    }
    show(&a, "host-a", &["list"]);

    say("live migration host-a -> host-b");
    let w = ConsoleWatcher::start();
    w.add(a.console_log("demo"), false);
    w.add(b.console_log("demo"), true);
    let bu = b.uri();
    let args = [
        "migrate",
        "--live",
        "--verbose",
        "--persistent",
        "--undefinesource",
        "demo",
        &bu,
    ];
    println!("$ tern -c host-a {}", args.join(" "));
    let t0 = Instant::now();
    let status = Command::new(bin("tern"))
        .arg("-c")
        .arg(a.uri())
        .args(args)
        .status()
        .expect("run tern");
    let wall = t0.elapsed();
    if !status.success() {
        eprintln!("error: the migration failed (see above)");
        std::process::exit(1);
    }
    // Let a few heartbeats arrive on the destination.
    let text = b.wait_console(
        "demo",
        Duration::from_secs(60),
        "heartbeats on host-b",
        |t| SerialLog::parse(t).count("TERN-MEM ok") >= 1,
    );
    let report = w.finish();
    let job: serde_json::Value =
        serde_json::from_str(&a.ok(&["domjobinfo", "demo", "--completed", "--json"]))
            .unwrap_or_default();

    say("what happened");
    show(&a, "host-a", &["list", "--all"]);
    show(&b, "host-b", &["list", "--all"]);
    let log = SerialLog::parse(&text);
    println!("guest on host-b says:");
    for l in log.lines.iter().rev().take(3).rev() {
        println!("  {l}");
    }
    let mib = |v: &serde_json::Value| v.as_u64().unwrap_or(0) as f64 / 1048576.0;
    println!();
    println!(
        "total time (tern migrate)   {:>8.0} ms",
        wall.as_secs_f64() * 1000.0
    );
    let n = |v: &serde_json::Value| v.as_u64().unwrap_or(0);
    println!(
        "QEMU migration time         {:>8} ms",
        n(&job["time_elapsed_ms"])
    );
    println!(
        "downtime (QEMU)             {:>8} ms",
        n(&job["downtime_ms"])
    );
    if let Some(g) = job["guest_stopped_ms"].as_u64() {
        println!("guest stopped (QEMU events) {g:>8} ms  (the source's STOP to the destination's RESUME)");
    }
    println!(
        "downtime (guest heartbeats) {:>8} ms  (longest wait between two heartbeats, 50 ms apart)",
        report.max_gap.as_millis()
    );
    println!(
        "memory moved                {:>8.1} MiB in {} iterations",
        mib(&job["memory_processed"]),
        job["iteration"]
    );
    println!(
        "heartbeat counter           {} -> {} ({}, {} missed)",
        report.first_seq,
        report.last_seq,
        if report.went_backwards {
            "RESET!"
        } else {
            "never reset"
        },
        report.missing
    );
    let fails = log.failures.len() + report.failures.len();
    println!(
        "memory and disk checks      {}",
        if fails == 0 {
            "all verified on host-b".to_string()
        } else {
            format!("{fails} FAILURES")
        }
    );

    say("shutting the guest down on host-b and cleaning up");
    show(&b, "host-b", &["shutdown", "demo"]);
    drop(a);
    drop(b);
    println!("done in {:.1} s", t_all.elapsed().as_secs_f64());
    if fails > 0 || report.went_backwards {
        std::process::exit(1);
    }
}
