//! `<vcpu current=>`, `<memoryBacking>` and host tuning as virt-install
//! and OpenStack write them: each reaches QEMU (its command line, and
//! what the guest itself reports) or is refused by name. Real `ternd`,
//! `tern`, QEMU and huge pages.

use std::time::Duration;
use tern_testkit::hugepages::{self, HugePages};
use tern_testkit::{build_or_reuse, BuildOptions, GuestSpec, SerialLog, TernHost};

const BOOT: Duration = Duration::from_secs(90);

/// The arguments of `h`'s only QEMU, space-separated.
fn qemu_cmdline(h: &TernHost) -> String {
    let pids = h.qemu_pids();
    assert_eq!(pids.len(), 1, "expected one QEMU");
    std::fs::read(format!("/proc/{}/cmdline", pids[0]))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

/// The test guest's XML (no disk) with `edit` applied, defined on `h`.
fn define(h: &TernHost, name: &str, memory_mib: u64, vcpus: u32, edit: impl Fn(String) -> String) {
    let img = build_or_reuse(&BuildOptions::default()).unwrap();
    let mut spec = GuestSpec::new(name, &img).workload("tern.mem=32 tern.dirty=0");
    spec.memory_mib = memory_mib;
    spec.vcpus = vcpus;
    let path = h.root.join(format!("{name}.xml"));
    std::fs::write(&path, edit(spec.to_xml())).unwrap();
    h.ok(&["define", path.to_str().unwrap()]);
}

fn wait_heartbeats(h: &TernHost, name: &str, n: usize) -> String {
    h.wait_console(name, BOOT, "heartbeats", |t| {
        let l = SerialLog::parse(t);
        l.ready() && l.heartbeats.len() >= n
    })
}

#[test]
fn vcpus_below_the_maximum_boot_online_and_the_rest_stay_pluggable() {
    let h = TernHost::start("vcpus");
    define(&h, "vc1", 256, 2, |x| {
        x.replace(
            "<vcpu>2</vcpu>",
            "<vcpu placement='static' current='1'>2</vcpu>",
        )
    });
    assert!(h.ok(&["dumpxml", "vc1"]).contains("current='1'>2</vcpu>"));
    h.ok(&["start", "vc1"]);
    let console = wait_heartbeats(&h, "vc1", 1);
    // The guest sees one vCPU online and two possible.
    let cpus = SerialLog::parse(&console)
        .find("TERN-CPUS")
        .map(str::to_string)
        .unwrap_or_default();
    assert_eq!(cpus.trim(), "TERN-CPUS online=0 possible=0-1", "{console}");
    assert!(qemu_cmdline(&h).contains("-smp 1,maxcpus=2"));

    // A guest with every vCPU online reports them all.
    define(&h, "vc2", 256, 2, |x| x);
    h.ok(&["destroy", "vc1"]);
    h.ok(&["start", "vc2"]);
    let console = wait_heartbeats(&h, "vc2", 1);
    let cpus = SerialLog::parse(&console)
        .find("TERN-CPUS")
        .map(str::to_string)
        .unwrap_or_default();
    assert_eq!(
        cpus.trim(),
        "TERN-CPUS online=0-1 possible=0-1",
        "{console}"
    );
    h.ok(&["destroy", "vc2"]);
}

#[test]
fn host_tuning_that_needs_libvirts_cgroups_is_refused_by_name() {
    let h = TernHost::start("tuning");
    let img = build_or_reuse(&BuildOptions::default()).unwrap();
    let xml = GuestSpec::new("tu1", &img).to_xml();
    for (edit, named) in [
        (
            xml.replace("<os>", "<cputune><shares>2048</shares></cputune>\n  <os>"),
            "<cputune><shares> (CPU bandwidth needs libvirt's cgroups)",
        ),
        (
            xml.replace(
                "<os>",
                "<numatune><memnode cellid='0' mode='strict' nodeset='0'/></numatune>\n  <os>",
            ),
            "<numatune><memnode>",
        ),
        (
            xml.replace("<vcpu>", "<vcpu placement='auto'>"),
            "<vcpu placement='auto'> (numad placement)",
        ),
        (
            xml.replace("<os>", "<memoryBacking><locked/></memoryBacking>\n  <os>"),
            "<memoryBacking><locked>",
        ),
    ] {
        let path = h.root.join("tu1.xml");
        std::fs::write(&path, edit).unwrap();
        let err = h.fails(&["define", path.to_str().unwrap()]);
        assert!(err.contains(named), "{err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
    }
    assert!(!h.ok(&["list", "--all"]).contains("tu1"));
}

#[test]
fn hugepages_back_guest_ram_and_migrate_or_are_refused_by_name() {
    let huge = |x: String| {
        x.replace(
            "<os>",
            "<memoryBacking><hugepages/><nosharepages/></memoryBacking>\n  <os>",
        )
    };
    // Declared first, dropped last: after the hosts and their QEMUs.
    let mut pages: Option<HugePages> = None;
    let a = TernHost::start("huge-a");
    let b = TernHost::start("huge-b");
    define(&a, "hp1", 128, 1, huge);
    let defined = a.ok(&["dumpxml", "hp1"]);
    assert!(defined.contains("<hugepages/>"), "{defined}");
    assert!(defined.contains("<nosharepages/>"), "{defined}");

    if hugepages::total() == 0 {
        let err = a.fails(&["start", "hp1"]);
        assert!(
            err.contains("domain 'hp1' has <memoryBacking><hugepages>"),
            "{err}"
        );
        assert!(
            err.contains("no huge pages of that size configured"),
            "{err}"
        );
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert_eq!(a.ok(&["domstate", "hp1"]).trim(), "shut off");
    } else {
        eprintln!("this host has huge pages reserved already: refusal not shown");
    }

    // 64 pages of 2 MiB for the guest, on each side during the migration.
    let p = pages.insert(HugePages::reserve(2 * 64 + 8));
    let free_before = hugepages::free();
    a.ok(&["start", "hp1"]);
    wait_heartbeats(&a, "hp1", 2);
    let line = qemu_cmdline(&a);
    let backend = format!(
        "memory-backend-file,id=pc.ram,mem-path={},size=128M,share=off,merge=off",
        p.dir().display()
    );
    assert!(line.contains(&backend), "{line}");
    assert!(line.contains("memory-backend=pc.ram"), "{line}");
    assert!(
        hugepages::free() < free_before,
        "the running guest took no huge pages"
    );

    let out = a.tern(&["migrate", "--live", "hp1", &b.uri()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The destination's console starts at the migration: heartbeats only.
    b.wait_console("hp1", BOOT, "heartbeats on the destination", |t| {
        SerialLog::parse(t).heartbeats.len() >= 2
    });
    assert!(qemu_cmdline(&b).contains(&backend));
    b.ok(&["destroy", "hp1"]);
}

/// (thread name, allowed host CPUs) of every thread of `h`'s only QEMU.
fn thread_cpus(h: &TernHost) -> Vec<(String, String)> {
    let pid = h.qemu_pids()[0];
    let mut out = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
    {
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        let status = std::fs::read_to_string(t.path().join("status")).unwrap_or_default();
        let allowed = status
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
            .unwrap_or_default()
            .trim()
            .to_string();
        let main = t.file_name().to_str() == Some(pid.to_string().as_str());
        let name = if main {
            "main".to_string()
        } else {
            comm.trim().to_string()
        };
        out.push((name, allowed));
    }
    out
}

#[test]
fn vcpu_and_emulator_pins_reach_qemus_threads_or_are_refused_by_name() {
    let online = std::fs::read_to_string("/sys/devices/system/cpu/online").unwrap();
    assert_eq!(
        online.trim(),
        "0-1",
        "this test pins across host CPUs 0 and 1"
    );
    let h = TernHost::start("pins");
    define(&h, "pin1", 256, 2, |x| {
        x.replace(
            "<vcpu>2</vcpu>",
            "<vcpu placement='static' cpuset='0-1'>2</vcpu>\n  <cputune>\n    \
             <vcpupin vcpu='0' cpuset='1'/>\n    <vcpupin vcpu='1' cpuset='0'/>\n    \
             <emulatorpin cpuset='0'/>\n  </cputune>",
        )
    });
    let defined = h.ok(&["dumpxml", "pin1"]);
    assert!(
        defined.contains("<vcpupin vcpu='0' cpuset='1'/>"),
        "{defined}"
    );
    assert!(defined.contains("<emulatorpin cpuset='0'/>"), "{defined}");
    h.ok(&["start", "pin1"]);
    wait_heartbeats(&h, "pin1", 1);
    let threads = thread_cpus(&h);
    let cpus_of = |name: &str| {
        threads
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, c)| c.clone())
            .unwrap_or_else(|| panic!("no thread {name}: {threads:?}"))
    };
    assert_eq!(cpus_of("CPU 0/TCG"), "1", "{threads:?}");
    assert_eq!(cpus_of("CPU 1/TCG"), "0", "{threads:?}");
    assert_eq!(cpus_of("main"), "0", "{threads:?}");
    h.ok(&["destroy", "pin1"]);

    // A host CPU this host lacks: refused at start, by name.
    define(&h, "pin2", 256, 1, |x| {
        x.replace(
            "<vcpu>1</vcpu>",
            "<vcpu>1</vcpu>\n  <cputune><vcpupin vcpu='0' cpuset='63'/></cputune>",
        )
    });
    let err = h.fails(&["start", "pin2"]);
    assert!(err.contains("names host CPU 63"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert_eq!(h.ok(&["domstate", "pin2"]).trim(), "shut off");
}

#[test]
fn numatune_binds_guest_ram_to_a_host_node_or_is_refused_by_name() {
    let h = TernHost::start("numa");
    define(&h, "nu1", 128, 1, |x| {
        x.replace(
            "<os>",
            "<numatune><memory mode='strict' nodeset='0'/></numatune>\n  <os>",
        )
    });
    assert!(h
        .ok(&["dumpxml", "nu1"])
        .contains("<memory mode='strict' nodeset='0'/>"));
    h.ok(&["start", "nu1"]);
    wait_heartbeats(&h, "nu1", 1);
    let line = qemu_cmdline(&h);
    assert!(
        line.contains("memory-backend-ram,id=pc.ram,size=128M,host-nodes=0,policy=bind"),
        "{line}"
    );
    // The kernel holds guest RAM under QEMU's bind policy.
    let pid = h.qemu_pids()[0];
    let maps = std::fs::read_to_string(format!("/proc/{pid}/numa_maps")).unwrap();
    assert!(maps.lines().any(|l| l.contains(" bind:0 ")), "{maps}");
    h.ok(&["destroy", "nu1"]);

    define(&h, "nu2", 128, 1, |x| {
        x.replace(
            "<os>",
            "<numatune><memory mode='strict' nodeset='7'/></numatune>\n  <os>",
        )
    });
    let err = h.fails(&["start", "nu2"]);
    assert!(err.contains("names host NUMA node 7"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

#[test]
fn a_virtio_disk_runs_in_its_io_thread_and_migrates_with_its_storage() {
    let a = TernHost::start("io-a");
    let b = TernHost::start("io-b");
    let (pa, pb) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    a.add_pool("img", pa.path(), false);
    b.add_pool("img", pb.path(), false);
    a.ok(&["vol-create-as", "img", "io1.raw", "16M"]);
    let path = a.ok(&["vol-path", "io1.raw", "--pool", "img"]);
    let img = build_or_reuse(&BuildOptions::default()).unwrap();
    let mut spec = GuestSpec::new("io1", &img)
        .workload("tern.mem=32 tern.dirty=0 tern.disk=/dev/vda tern.disk_mb=4 tern.verify_rate=32");
    spec.disks.push(tern_testkit::TestDisk {
        path: path.trim().into(),
        format: "raw".into(),
        target: "vda".into(),
        cache: "none".into(),
    });
    let xml = spec
        .to_xml()
        .replace("cache='none'/>", "cache='none' iothread='1'/>")
        .replace("<os>", "<iothreads>1</iothreads>\n  <os>");
    let file = a.root.join("io1.xml");
    std::fs::write(&file, xml).unwrap();
    a.ok(&["define", file.to_str().unwrap()]);
    let defined = a.ok(&["dumpxml", "io1"]);
    assert!(defined.contains("<iothreads>1</iothreads>"), "{defined}");
    assert!(defined.contains("iothread='1'"), "{defined}");
    a.ok(&["start", "io1"]);
    tern_testkit::checks::wait_disk_ok(&a, "io1", 1);
    let line = qemu_cmdline(&a);
    assert!(line.contains("-object iothread,id=iothread1"), "{line}");
    assert!(line.contains(",iothread=iothread1"), "{line}");
    let pid = a.qemu_pids()[0];
    let names: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
        .map(|t| std::fs::read_to_string(t.path().join("comm")).unwrap_or_default())
        .collect();
    assert!(
        names.iter().any(|n| n.trim() == "IO iothread1"),
        "{names:?}"
    );

    tern_testkit::checks::live_migrate(&a, &["--copy-storage-all"], "io1", &b.uri());
    b.wait_console("io1", BOOT, "heartbeats on the destination", |t| {
        SerialLog::parse(t).heartbeats.len() >= 2
    });
    tern_testkit::checks::wait_disk_ok(&b, "io1", 1);
    assert!(qemu_cmdline(&b).contains(",iothread=iothread1"));
    b.ok(&["destroy", "io1"]);
}
