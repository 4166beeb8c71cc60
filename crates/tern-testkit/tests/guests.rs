//! The VMs operators run: the corpus XML (virt-install, virt-manager,
//! OpenStack Nova, Proxmox) defines unchanged and starts under TCG, and a
//! guest's machine type and CPU are pinned at start and carried by live
//! migration. Real `ternd`, `tern` and QEMU.

use std::time::Duration;
use tern_testkit::corpus::{corpus_for_host, efi_stub_kernel, CORPUS};
use tern_testkit::{
    build_or_reuse, BuildOptions, GuestSpec, HostOptions, SerialLog, TernHost, TestDisk,
};

fn define_xml(host: &TernHost, name: &str, xml: &str) {
    let path = host.root.join(format!("{name}.xml"));
    std::fs::write(&path, xml).unwrap();
    host.ok(&["define", path.to_str().unwrap()]);
}

/// The `<name>` of a document.
fn name_of(xml: &str) -> String {
    let s = xml.find("<name>").unwrap() + "<name>".len();
    xml[s..s + xml[s..].find("</name>").unwrap()].to_string()
}

#[test]
fn corpus_guests_define_unchanged_and_start_under_tcg() {
    let host = TernHost::start("corpus");
    let scratch = tempfile::tempdir().unwrap();
    for doc in CORPUS {
        let xml = corpus_for_host(doc, scratch.path());
        let name = name_of(&xml);
        define_xml(&host, &name, &xml);
        // The stored definition has a full, stable layout.
        let defined = host.ok(&["dumpxml", &name]);
        assert!(defined.contains("<address type='pci'"), "{doc}: {defined}");
        host.ok(&["start", &name]);
        assert_eq!(host.ok(&["domstate", &name]).trim(), "running", "{doc}");
        let live = host.ok(&["dumpxml", &name]);
        // The machine is the versioned type of the QEMU in use, never an alias.
        let machine = live
            .split("machine='")
            .nth(1)
            .and_then(|r| r.split('\'').next())
            .unwrap_or_default()
            .to_string();
        assert!(machine.starts_with("pc-"), "{doc}: machine {machine}");
        assert!(
            !live.contains("mode='host-model'"),
            "{doc}: host-model not pinned:\n{live}"
        );
        // Starting again gives the same layout.
        host.ok(&["destroy", &name]);
        host.ok(&["start", &name]);
        let again = host.ok(&["dumpxml", &name]);
        assert_eq!(
            again, live,
            "{doc}: the live definition changed between starts"
        );
        host.ok(&["destroy", &name]);
    }
    // The UEFI guest got its own variable store from Debian's template.
    let vars = scratch.path().join("virt-install-q35-uefi.xml_VARS.fd");
    let template = std::fs::metadata("/usr/share/OVMF/OVMF_VARS_4M.fd")
        .unwrap()
        .len();
    assert_eq!(
        std::fs::metadata(&vars).expect("NVRAM created").len(),
        template
    );
}

struct Pair {
    a: TernHost,
    b: TernHost,
    _pool: tempfile::TempDir,
}

fn pair(name: &str, b_args: Vec<String>) -> Pair {
    let pool = tempfile::Builder::new()
        .prefix("tern-shared-")
        .tempdir()
        .unwrap();
    let a = TernHost::start(&format!("{name}-a"));
    let b = TernHost::start_with(HostOptions {
        name: format!("{name}-b"),
        extra_args: b_args,
        ..Default::default()
    });
    a.add_pool("shared", pool.path(), true);
    b.add_pool("shared", pool.path(), true);
    Pair { a, b, _pool: pool }
}

/// The test guest with no machine type and `<cpu mode='host-model'/>`,
/// booted on `host` with a disk in the shared pool.
fn boot_host_model_guest(host: &TernHost, name: &str) {
    let img = build_or_reuse(&BuildOptions::default()).unwrap();
    let vol = format!("{name}.raw");
    host.ok(&["vol-create-as", "shared", &vol, "16M"]);
    let path = host.ok(&["vol-path", &vol, "--pool", "shared"]);
    let mut spec = GuestSpec::new(name, &img);
    spec.disks.push(TestDisk {
        path: path.trim().into(),
        format: "raw".into(),
        target: "vda".into(),
        cache: "none".into(),
    });
    let xml = spec
        .to_xml()
        .replace("</features>", "</features>\n  <cpu mode='host-model'/>");
    assert!(!xml.contains("machine="));
    define_xml(host, name, &xml);
    host.ok(&["start", name]);
    host.wait_console(name, Duration::from_secs(90), "TERN-READY", |t| {
        let l = SerialLog::parse(t);
        l.ready() && l.last_seq().is_some_and(|s| s > 2)
    });
}

fn attr_of(xml: &str, attr: &str) -> String {
    xml.split(&format!("{attr}='"))
        .nth(1)
        .and_then(|r| r.split('\'').next())
        .unwrap_or_default()
        .to_string()
}

#[test]
fn machine_alias_and_host_model_are_pinned_and_the_destination_gets_them() {
    let p = pair("pin", vec![]);
    boot_host_model_guest(&p.a, "pin1");
    let live = p.a.ok(&["dumpxml", "pin1"]);
    let machine = attr_of(&live, "machine");
    let pc_alias = std::process::Command::new("qemu-system-x86_64")
        .args(["-machine", "help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&pc_alias.stdout);
    assert!(
        help.lines()
            .any(|l| l.starts_with("pc ") && l.contains(&format!("(alias of {machine})"))),
        "machine {machine} is not what 'pc' stands for:\n{help}"
    );
    assert!(
        live.contains("<cpu mode='custom' match='exact' check='full'>"),
        "{live}"
    );
    let model = live
        .split("<model>")
        .nth(1)
        .and_then(|r| r.split("</model>").next())
        .unwrap();
    assert!(
        !model.is_empty() && model != "max" && model != "host",
        "{live}"
    );

    let out = p.a.tern(&["migrate", "--live", "pin1", &p.b.uri()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dest = p.b.ok(&["dumpxml", "pin1"]);
    assert_eq!(attr_of(&dest, "machine"), machine);
    let cpu = |x: &str| x[x.find("<cpu").unwrap()..x.find("</cpu>").unwrap()].to_string();
    assert_eq!(cpu(&dest), cpu(&live), "the destination runs another CPU");
    p.b.wait_console(
        "pin1",
        Duration::from_secs(60),
        "heartbeats on the destination",
        |t| SerialLog::parse(t).heartbeats.len() >= 3,
    );
    p.b.ok(&["destroy", "pin1"]);
}

#[test]
fn a_destination_without_the_pinned_machine_refuses_naming_it() {
    // Host B's QEMU lacks the current i440fx machine (as an older QEMU would).
    let dir = tempfile::tempdir().unwrap();
    let wrapper = dir.path().join("qemu-older");
    std::fs::write(
        &wrapper,
        "#!/bin/sh\nif [ \"$1\" = -machine ] && [ \"$2\" = help ]; then\n  qemu-system-x86_64 -machine help | grep -v 'pc-i440fx-10.0'\n  exit 0\nfi\nexec qemu-system-x86_64 \"$@\"\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let p = pair(
        "pinold",
        vec!["--qemu".into(), wrapper.display().to_string()],
    );
    boot_host_model_guest(&p.a, "old1");
    let machine = attr_of(&p.a.ok(&["dumpxml", "old1"]), "machine");
    assert_eq!(machine, "pc-i440fx-10.0");
    let out = p.a.tern(&["migrate", "--live", "old1", &p.b.uri()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    // Refused by the source in Begin, before the destination prepared
    // anything (Prepare's refusal starts "destination refused").
    assert!(
        err.contains(
            "runs machine type 'pc-i440fx-10.0', which the destination's QEMU does not offer"
        ),
        "{err}"
    );
    assert!(!err.contains("destination refused"), "{err}");
    assert!(!p.b.ok(&["list", "--all", "--name"]).contains("old1"));
    assert_eq!(p.a.ok(&["domstate", "old1"]).trim(), "running");
    p.a.ok(&["destroy", "old1"]);
}

#[test]
fn on_poweroff_restart_boots_the_guest_again() {
    let host = TernHost::start("onoff");
    let img = build_or_reuse(&BuildOptions::default()).unwrap();
    let spec = GuestSpec::new("onoff1", &img);
    let xml = spec.to_xml().replace(
        "<on_poweroff>destroy</on_poweroff>",
        "<on_poweroff>restart</on_poweroff>",
    );
    define_xml(&host, "onoff1", &xml);
    host.ok(&["start", "onoff1"]);
    host.wait_console("onoff1", Duration::from_secs(90), "TERN-READY", |t| {
        SerialLog::parse(t).ready()
    });
    // The guest powers off (ACPI button); on_poweroff=restart boots it again.
    let _ = host.tern(&["shutdown", "onoff1", "--timeout", "2"]);
    let text = host.wait_console("onoff1", Duration::from_secs(120), "a second boot", |t| {
        t.contains("TERN-POWEROFF") && t.matches("TERN-READY").count() >= 2
    });
    assert!(text.contains("TERN-POWEROFF"));
    assert_eq!(host.ok(&["domstate", "onoff1"]).trim(), "running");
    host.ok(&["destroy", "onoff1"]);
}

#[test]
fn the_guest_agent_channel_is_wired_and_named_in_errors() {
    let host = TernHost::start("qga");
    let img = build_or_reuse(&BuildOptions::default()).unwrap();
    // `tern.qga=0`: the workload's stand-in agent stays silent, as a guest
    // without qemu-guest-agent would.
    let spec = GuestSpec::new("qga1", &img).workload("tern.qga=0");
    let plain = spec.to_xml();
    define_xml(&host, "qga1", &plain);
    host.ok(&["start", "qga1"]);
    let err = host.fails(&["qemu-agent-command", "qga1", r#"{"execute":"guest-ping"}"#]);
    assert!(err.contains("has no guest agent channel"), "{err}");
    host.ok(&["destroy", "qga1"]);
    host.ok(&["undefine", "qga1"]);

    // With the channel QEMU serves its socket; no agent answers in this
    // guest, so the command times out saying so.
    let with_channel = plain.replace(
        "  </devices>",
        "    <channel type='unix'>\n      <target type='virtio' name='org.qemu.guest_agent.0'/>\n    </channel>\n  </devices>",
    );
    define_xml(&host, "qga1", &with_channel);
    host.ok(&["start", "qga1"]);
    let live = host.ok(&["dumpxml", "qga1"]);
    assert!(
        live.contains("<address type='virtio-serial' controller='0' bus='0' port='1'/>"),
        "{live}"
    );
    assert!(host
        .state_dir()
        .join("run/qga1/org.qemu.guest_agent.0.sock")
        .exists());
    let err = host.fails(&[
        "qemu-agent-command",
        "qga1",
        r#"{"execute":"guest-ping"}"#,
        "--timeout",
        "1",
    ]);
    assert!(
        err.contains("is qemu-guest-agent running in the guest?"),
        "{err}"
    );
    let err = host.fails(&["qemu-agent-command", "qga1", "not json"]);
    assert!(err.contains("is not JSON"), "{err}");
    host.ok(&["destroy", "qga1"]);
}

/// The test guest booted by OVMF (its kernel is the distribution's
/// bzImage, loaded through its EFI stub), keeping `efivar` in a UEFI
/// variable, with the guest-agent channel; `extra` goes into `<devices>`.
fn uefi_guest(name: &str, disk: Option<&str>, efivar: &str, extra: &str) -> String {
    let img = build_or_reuse(&BuildOptions::default()).unwrap();
    let mut spec = GuestSpec::new(name, &img).workload(&format!("tern.efivar={efivar}"));
    if let Some(path) = disk {
        spec.disks.push(TestDisk {
            path: path.into(),
            format: "raw".into(),
            target: "vda".into(),
            cache: "none".into(),
        });
    }
    spec.to_xml()
        .replace("<os>", "<os firmware='efi'>")
        .replace(
            &format!("<kernel>{}</kernel>", img.kernel.display()),
            &format!("<kernel>{}</kernel>", efi_stub_kernel().display()),
        )
        .replace("<type arch='x86_64'>", "<type arch='x86_64' machine='q35'>")
        .replace(
            "  </devices>",
            &format!("    <channel type='unix'>\n      <target type='virtio' name='org.qemu.guest_agent.0'/>\n    </channel>\n{extra}  </devices>"),
        )
}

/// Waits for the guest's heartbeats after `boots` boots on `host`'s console.
fn wait_booted(host: &TernHost, name: &str, what: &str, boots: usize) -> String {
    host.wait_console(name, Duration::from_secs(240), what, |t| {
        let l = SerialLog::parse(t);
        t.matches("TERN-READY").count() >= boots && l.last_seq().is_some_and(|s| s > 2)
    })
}

/// Asks the guest agent (the workload's stand-in) for a ping.
fn agent_ping(host: &TernHost, name: &str) {
    let out = host.ok(&["qemu-agent-command", name, r#"{"execute":"guest-ping"}"#]);
    assert!(out.contains(r#""return""#), "guest-ping on {name}: {out}");
}

#[test]
fn uefi_guest_with_tpm_boots_under_ovmf_migrates_and_undefines_its_nvram() {
    let p = pair("uefi", vec![]);
    p.a.ok(&["vol-create-as", "shared", "uefi1.raw", "16M"]);
    let path = p.a.ok(&["vol-path", "uefi1.raw", "--pool", "shared"]);
    let tpm =
        "    <tpm model='tpm-crb'>\n      <backend type='emulator' version='2.0'/>\n    </tpm>\n";
    let xml = uefi_guest("uefi1", Some(path.trim()), "live-1", tpm);
    define_xml(&p.a, "uefi1", &xml);
    let defined = p.a.ok(&["dumpxml", "uefi1"]);
    assert!(defined.contains("<loader readonly='yes' secure='no' type='pflash'>/usr/share/OVMF/OVMF_CODE_4M.fd</loader>"), "{defined}");
    let nvram = p.a.state_dir().join("nvram/uefi1_VARS.fd");
    assert!(
        defined.contains(&format!(">{}</nvram>", nvram.display())),
        "{defined}"
    );
    p.a.ok(&["start", "uefi1"]);
    assert!(nvram.exists(), "NVRAM not created from the template");
    // OVMF loads the kernel: the guest's own heartbeats prove it booted,
    // and it wrote its variable through the firmware.
    let text = wait_booted(&p.a, "uefi1", "TERN-READY under OVMF", 1);
    assert!(text.contains("TERN-EFIVAR absent"), "{text}");
    assert!(text.contains("TERN-EFIVAR wrote value=live-1"), "{text}");
    // The agent channel answers before the migration.
    agent_ping(&p.a, "uefi1");
    let out = p.a.tern(&[
        "migrate",
        "--live",
        "--persistent",
        "--undefinesource",
        "uefi1",
        &p.b.uri(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    p.b.wait_console(
        "uefi1",
        Duration::from_secs(60),
        "heartbeats on the destination",
        |t| SerialLog::parse(t).heartbeats.len() >= 3,
    );
    let live = p.b.ok(&["dumpxml", "uefi1"]);
    assert!(live.contains("machine='pc-q35-"), "{live}");
    assert!(live.contains("<tpm model='tpm-crb'>"), "{live}");
    // The agent channel reconnects on the destination: the guest answers
    // there, and says so on its console.
    agent_ping(&p.b, "uefi1");
    p.b.wait_console(
        "uefi1",
        Duration::from_secs(30),
        "the ping on the destination",
        |t| t.contains("TERN-QGA guest-ping"),
    );
    // The agent verbs, answered by the guest on the destination.
    let ifaddr = p.b.ok(&["domifaddr", "uefi1", "--source", "agent"]);
    assert!(
        ifaddr
            .lines()
            .any(|l| l.contains("lo") && l.contains("127.0.0.1/8")),
        "{ifaddr}"
    );
    assert!(p
        .b
        .ok(&["domfsfreeze", "uefi1"])
        .contains("Froze 0 filesystem(s)"));
    assert!(p
        .b
        .ok(&["domfsthaw", "uefi1"])
        .contains("Thawed 0 filesystem(s)"));
    // The store is the destination agent's own, where its definition says.
    let dest_nvram = p.b.state_dir().join("nvram/uefi1_VARS.fd");
    assert!(
        live.contains(&format!(">{}</nvram>", dest_nvram.display())),
        "{live}"
    );
    assert!(dest_nvram.exists(), "no NVRAM on the destination");
    // Booted again from the destination's store, the guest finds the
    // variable it wrote on the source.
    p.b.ok(&["destroy", "uefi1"]);
    p.b.ok(&["start", "uefi1"]);
    let text = wait_booted(&p.b, "uefi1", "a boot on the destination", 1);
    assert!(text.contains("TERN-EFIVAR found value=live-1"), "{text}");
    p.b.ok(&["destroy", "uefi1"]);
    p.b.ok(&["undefine", "uefi1", "--nvram"]);
    assert!(
        !dest_nvram.exists(),
        "undefine --nvram left the variable store"
    );
}

#[test]
fn cold_migration_carries_the_uefi_variable_store() {
    let p = pair("uefic", vec![]);
    define_xml(&p.a, "uefic1", &uefi_guest("uefic1", None, "cold-1", ""));
    p.a.ok(&["start", "uefic1"]);
    let text = wait_booted(&p.a, "uefic1", "TERN-READY under OVMF", 1);
    assert!(text.contains("TERN-EFIVAR wrote value=cold-1"), "{text}");
    p.a.ok(&["destroy", "uefic1"]);
    let source_nvram = p.a.state_dir().join("nvram/uefic1_VARS.fd");
    let out = p.a.tern(&[
        "migrate",
        "--cold",
        "--undefinesource",
        "uefic1",
        &p.b.uri(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dest_nvram = p.b.state_dir().join("nvram/uefic1_VARS.fd");
    let defined = p.b.ok(&["dumpxml", "uefic1"]);
    assert!(
        defined.contains(&format!(">{}</nvram>", dest_nvram.display())),
        "{defined}"
    );
    assert_eq!(
        std::fs::read(&dest_nvram).expect("the store arrived"),
        std::fs::read(&source_nvram).unwrap()
    );
    // Booted on the destination, the guest reads the variable it wrote on
    // the source.
    p.b.ok(&["start", "uefic1"]);
    let text = wait_booted(&p.b, "uefic1", "a boot on the destination", 1);
    assert!(text.contains("TERN-EFIVAR found value=cold-1"), "{text}");
    p.b.ok(&["destroy", "uefic1"]);
}

#[test]
fn a_migrating_guest_never_takes_another_guests_uefi_store() {
    let p = pair("uefio", vec![]);
    // B has its own guest named like the one coming, under another uuid.
    define_xml(&p.b, "uefio1", &uefi_guest("uefio1", None, "b", ""));
    define_xml(&p.a, "uefio1", &uefi_guest("uefio1", None, "a", ""));
    // Renamed on the way, its store would land on B's guest's store.
    let err = p.a.fails(&[
        "migrate",
        "--cold",
        "--dname",
        "uefio2",
        "uefio1",
        &p.b.uri(),
    ]);
    assert!(err.contains("belongs to domain 'uefio1'"), "{err}");
    assert!(!p.b.ok(&["list", "--all", "--name"]).contains("uefio2"));
}

/// The test guest with a `<panic>` device whose kernel panics on an
/// unknown NMI (`unknown_nmi_panic`).
fn crashable_guest(name: &str, on_crash: &str) -> String {
    let img = build_or_reuse(&BuildOptions::default()).unwrap();
    GuestSpec::new(name, &img)
        .workload("unknown_nmi_panic=1")
        .to_xml()
        .replace(
            "<on_crash>destroy</on_crash>",
            &format!("<on_crash>{on_crash}</on_crash>"),
        )
        .replace("  </devices>", "    <panic model='isa'/>\n  </devices>")
}

/// Boots the guest, then makes its kernel panic. The panic reaches QEMU
/// through the guest's pvpanic driver; QEMU stops the vCPUs at once, so
/// the panic text may stay in the guest's log buffer.
fn boot_and_crash(host: &TernHost, name: &str, on_crash: &str) {
    define_xml(host, name, &crashable_guest(name, on_crash));
    host.ok(&["start", name]);
    host.wait_console(name, Duration::from_secs(90), "TERN-READY", |t| {
        SerialLog::parse(t).ready()
    });
    host.ok(&["inject-nmi", name]);
}

#[test]
fn on_crash_follows_a_guest_kernel_panic() {
    let host = TernHost::start("crash");
    // destroy: QEMU goes, and the domain is shut off as crashed.
    boot_and_crash(&host, "crash1", "destroy");
    let mut state = String::new();
    for _ in 0..300 {
        state = host
            .ok(&["domstate", "crash1", "--reason"])
            .trim()
            .to_string();
        if state.starts_with("shut off") {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(state, "shut off (crashed)");
    // restart: the guest is reset and boots again in the same QEMU.
    boot_and_crash(&host, "crash2", "restart");
    host.wait_console("crash2", Duration::from_secs(90), "a second boot", |t| {
        t.matches("TERN-READY").count() >= 2
    });
    assert_eq!(host.ok(&["domstate", "crash2"]).trim(), "running");
    host.ok(&["destroy", "crash2"]);
    // preserve: the crashed guest stays, paused, for inspection.
    boot_and_crash(&host, "crash3", "preserve");
    let mut state = String::new();
    for _ in 0..300 {
        state = host
            .ok(&["domstate", "crash3", "--reason"])
            .trim()
            .to_string();
        if state == "paused (crashed)" {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(state, "paused (crashed)");
    host.ok(&["destroy", "crash3"]);
}

#[test]
fn the_watchdog_action_follows_a_hung_guest() {
    let host = TernHost::start("wdog");
    let img = build_or_reuse(&BuildOptions::default()).unwrap();
    let with_watchdog = |name: &str, action: &str| {
        GuestSpec::new(name, &img)
            .workload("tern.watchdog_stall=3")
            .to_xml()
            .replace(
                "  </devices>",
                &format!("    <watchdog model='i6300esb' action='{action}'/>\n  </devices>"),
            )
    };
    // reset: the guest stops pinging, the watchdog resets it, it boots again.
    define_xml(&host, "wd1", &with_watchdog("wd1", "reset"));
    host.ok(&["start", "wd1"]);
    host.wait_console(
        "wd1",
        Duration::from_secs(120),
        "a boot after the watchdog reset",
        |t| t.contains("TERN-WATCHDOG stalled") && t.matches("TERN-READY").count() >= 2,
    );
    host.ok(&["destroy", "wd1"]);
    // poweroff: the hung guest is powered off.
    define_xml(&host, "wd2", &with_watchdog("wd2", "poweroff"));
    host.ok(&["start", "wd2"]);
    host.wait_console("wd2", Duration::from_secs(120), "the stall", |t| {
        t.contains("TERN-WATCHDOG stalled")
    });
    let mut state = String::new();
    for _ in 0..300 {
        state = host.ok(&["domstate", "wd2"]).trim().to_string();
        if state == "shut off" {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(state, "shut off");
    assert_eq!(
        SerialLog::parse(&host.ok(&["console", "wd2"])).count("TERN-READY"),
        1
    );
}

/// Seconds between the guest's clock (read from its RTC at boot and
/// printed by the guest) and the host's.
fn guest_clock_offset(host: &TernHost, name: &str, offset: &str) -> i64 {
    let img = build_or_reuse(&BuildOptions::default()).unwrap();
    let xml = GuestSpec::new(name, &img).to_xml().replace(
        "<on_poweroff>",
        &format!("<clock offset='{offset}'/>\n  <on_poweroff>"),
    );
    define_xml(host, name, &xml);
    host.ok(&["start", name]);
    let text = host.wait_console(name, Duration::from_secs(90), "TERN-CLOCK", |t| {
        t.contains("TERN-CLOCK")
    });
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    host.ok(&["destroy", name]);
    let guest: i64 = text
        .split("TERN-CLOCK epoch=")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("the guest printed its clock");
    guest - now
}

#[test]
fn clock_offset_localtime_gives_the_guest_local_time() {
    // The host's time zone is UTC+5 (POSIX writes it "-5").
    let host = TernHost::start_with(HostOptions {
        name: "clock".into(),
        env: vec![("TZ".into(), "TERN-5".into())],
        ..Default::default()
    });
    let utc = guest_clock_offset(&host, "clk-utc", "utc");
    let local = guest_clock_offset(&host, "clk-local", "localtime");
    // The guest's clock has a second's resolution and boots in a few.
    assert!(utc.abs() < 600, "utc guest is {utc} s off");
    assert!(
        (local - 5 * 3600).abs() < 600,
        "localtime guest is {local} s off, not 5 h ahead"
    );
}

#[test]
fn boot_order_decides_which_disk_the_firmware_boots() {
    let host = TernHost::start("bootord");
    let dir = tempfile::tempdir().unwrap();
    for name in ["A", "B"] {
        let mut image =
            tern_testkit::bootsector::serial_boot_sector(&format!("TERN-BOOTED-{name}")).to_vec();
        image.resize(1 << 20, 0);
        std::fs::write(dir.path().join(format!("{name}.raw")), image).unwrap();
    }
    let disk = |name: &str, target: &str, order: u32| {
        format!(
            "    <disk type='file' device='disk'>\n      <driver name='qemu' type='raw'/>\n      <source file='{}'/>\n      <target dev='{target}' bus='virtio'/>\n      <boot order='{order}'/>\n    </disk>\n",
            dir.path().join(format!("{name}.raw")).display()
        )
    };
    for (vm, first) in [("boot-b", "B"), ("boot-a", "A")] {
        let (order_a, order_b) = if first == "A" { (1, 2) } else { (2, 1) };
        let xml = format!(
            "<domain type='kvm'>\n  <name>{vm}</name>\n  <memory unit='MiB'>64</memory>\n  <os>\n    <type arch='x86_64'>hvm</type>\n  </os>\n  <devices>\n{}{}    <serial type='pty'/>\n  </devices>\n</domain>\n",
            disk("A", "vda", order_a),
            disk("B", "vdb", order_b),
        );
        define_xml(&host, vm, &xml);
        host.ok(&["start", vm]);
        let text = host.wait_console(vm, Duration::from_secs(60), "a boot sector's line", |t| {
            t.contains("TERN-BOOTED-")
        });
        assert!(
            text.contains(&format!("TERN-BOOTED-{first}")),
            "{vm}: {text}"
        );
        host.ok(&["destroy", vm]);
    }
}
