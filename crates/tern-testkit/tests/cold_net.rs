//! Cold migration across a network-namespace link that is cut mid-copy:
//! the copy fails clearly, and the same command afterwards resumes without
//! resending what already arrived. Needs root (skips otherwise).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tern_testkit::fixtures::write_random;
use tern_testkit::netns::{skip_unless_root, Lab, Side};
use tern_testkit::{build_or_reuse, BuildOptions, GuestSpec, TernHost, TestDisk};

#[test]
fn cut_link_mid_copy_then_the_same_command_resumes() {
    if skip_unless_root("cut_link_mid_copy_then_the_same_command_resumes") {
        return;
    }
    let lab = Lab::start();
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let start = |side: Side, n: &str| {
        let mut o = lab.host_options(side, n);
        o.extra_args
            .extend(["--stall-timeout".to_string(), "3".to_string()]);
        TernHost::start_with(o)
    };
    let a = start(Side::A, "cres-a");
    let b = start(Side::B, "cres-b");
    a.add_pool("images", da.path(), false);
    b.add_pool("images", db.path(), false);

    // A raw disk holding 48 MiB of incompressible data in a 128 MiB file.
    let disk = da.path().join("data.raw");
    write_random(&disk, 48, 0x1234_5678_9abc_def1, Some(128 << 20));
    let img = build_or_reuse(&BuildOptions::default()).unwrap();
    let mut g = GuestSpec::new("cres", &img);
    g.disks.push(TestDisk {
        path: disk.clone(),
        format: "raw".into(),
        target: "vda".into(),
        cache: "none".into(),
    });
    a.define_guest(&g);

    let migrate = || {
        Command::new(tern_testkit::bin("tern"))
            .args([
                "-c",
                &a.uri(),
                "migrate",
                "--cold",
                "--bandwidth",
                "6",
                "cres",
                &b.uri(),
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let child = migrate();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let j: serde_json::Value =
            serde_json::from_str(&a.ok(&["domjobinfo", "cres", "--json"])).unwrap();
        if j["disk_processed"].as_u64().unwrap_or(0) > 12 << 20 {
            break;
        }
        assert!(Instant::now() < deadline, "copy never progressed: {j}");
        std::thread::sleep(Duration::from_millis(100));
    }
    lab.cut_link();
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    println!("first attempt failed: {}", err.trim());
    assert!(
        !db.path().join("data.raw").exists(),
        "an unverified copy became the volume"
    );
    assert!(a.ok(&["list", "--all", "--name"]).contains("cres"));
    assert!(!b.ok(&["list", "--all", "--name"]).contains("cres"));

    lab.restore_link();
    let out = migrate().wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{}", String::from_utf8_lossy(&out.stdout).trim());
    let j: serde_json::Value =
        serde_json::from_str(&a.ok(&["domjobinfo", "cres", "--completed", "--json"])).unwrap();
    let wire = j["wire_bytes"].as_u64().unwrap();
    let resumed = j["resumed_bytes"].as_u64().unwrap();
    println!(
        "second attempt: {} MiB on the wire, {} MiB resumed",
        wire >> 20,
        resumed >> 20
    );
    assert!(resumed > 0, "nothing was resumed: {j}");
    assert!(wire < 48 << 20, "the second attempt resent everything: {j}");
    let st = Command::new("cmp")
        .arg(&disk)
        .arg(db.path().join("data.raw"))
        .status()
        .unwrap();
    assert!(st.success(), "the copy differs from the source");
    assert!(b.ok(&["list", "--all", "--name"]).contains("cres"));
}
