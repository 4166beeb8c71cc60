//! The cluster controller with real agents, real guests (TCG) and, where
//! it matters, a real etcd. Guests are small and idle: this machine has
//! two cores. Servers are believed through their consoles.

use std::time::{Duration, Instant};
use tern_testkit::cluster::{jobs, shared_pool, wait_server, LONG};
use tern_testkit::{
    build_or_reuse, BuildOptions, Etcd, GuestSpec, SerialLog, TernHost, TestController, TestDisk,
};

/// Defines and starts an idle guest on `h`, its disk in `pool` (skipped
/// when `None`), and waits for it to be ready.
fn boot(h: &TernHost, name: &str, pool: Option<&str>, mem_mib: u64) {
    boot_touching(h, name, pool, mem_mib, 16)
}

/// As [`boot`], with `touched_mib` of memory filled by the workload (so a
/// migration has that much to send).
fn boot_touching(h: &TernHost, name: &str, pool: Option<&str>, mem_mib: u64, touched_mib: u64) {
    let img = build_or_reuse(&BuildOptions::default()).unwrap();
    let mut spec = GuestSpec::new(name, &img);
    spec.memory_mib = mem_mib;
    spec.workload = format!("tern.mem={touched_mib} tern.dirty=0");
    if let Some(pool) = pool {
        let vol = format!("{name}.raw");
        h.ok(&["vol-create-as", pool, &vol, "8M"]);
        let path = h.ok(&["vol-path", &vol, "--pool", pool]);
        spec.workload =
            "tern.mem=16 tern.dirty=0 tern.disk=/dev/vda tern.disk_mb=2 tern.verify_rate=8".into();
        spec.disks.push(TestDisk {
            path: path.trim().into(),
            format: "raw".into(),
            target: "vda".into(),
            cache: "none".into(),
        });
    }
    h.define_guest(&spec);
    h.ok(&["start", name]);
    h.wait_console(name, LONG, "TERN-READY", |t| SerialLog::parse(t).ready());
}

/// New heartbeats on `h`'s console for `name`.
fn wait_heartbeats(h: &TernHost, name: &str) -> String {
    h.wait_console(name, LONG, "heartbeats", |t| {
        SerialLog::parse(t).heartbeats.len() >= 3
    })
}

fn wait_jobs_done(c: &TestController, n: usize) -> Vec<serde_json::Value> {
    c.wait_json(
        &["job-list"],
        Duration::from_secs(300),
        "jobs to end",
        |v| {
            let a = v.as_array().cloned().unwrap_or_default();
            a.len() >= n
                && a.iter().all(|j| {
                    ["succeeded", "failed", "cancelled"]
                        .contains(&j["state"].as_str().unwrap_or(""))
                })
        },
    )
    .as_array()
    .cloned()
    .unwrap_or_default()
}

#[test]
fn live_migrate_picks_the_only_compatible_host_and_forecast_explains() {
    let c = TestController::file(&[]);
    let a = TestController::host(&[&c], "a", &[]);
    let b = TestController::host(&[&c], "b", &["--fact", "cpu_model=Other CPU"]);
    let d = TestController::host(&[&c], "d", &[]);
    let _pool = shared_pool(&[&a, &b, &d], "shared");
    boot(&a, "vm1", Some("shared"), 128);
    wait_server(&c, "vm1", "a", "running");
    c.wait_json(&["host-list"], LONG, "three online hosts", |v| {
        v.as_array().is_some_and(|a| {
            a.len() == 3
                && a.iter().all(|h| {
                    h["status"] == "online" && !h["report"]["pools"].as_array().unwrap().is_empty()
                })
        })
    });

    let f = c.ok(&["migrate-forecast", "vm1"]);
    let line = |h: &str| {
        f.lines()
            .find(|l| l.split_whitespace().next() == Some(h))
            .unwrap_or_else(|| panic!("no row for {h}:\n{f}"))
            .to_string()
    };
    assert!(line("d").contains("yes"), "{f}");
    assert!(
        line("b").contains("no") && line("b").contains("--skip-cpu-check"),
        "{f}"
    );
    assert!(line("a").contains("already on this host"), "{f}");

    c.ok(&["server-live-migrate", "vm1", "--wait"]);
    let s = wait_server(&c, "vm1", "d", "running");
    assert_eq!(s["error"], serde_json::Value::Null);
    wait_heartbeats(&d, "vm1");
    let j = jobs(&c);
    assert_eq!(j[0]["dest"], "d");

    // Pinned to the host with another CPU: refused with the reason...
    let out = c.tern(&["server-live-migrate", "vm1", "--prefer-host", "b", "--wait"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("--skip-cpu-check"),
        "{err}"
    );
    let s = c.json(&["server-show", "vm1"]);
    assert_eq!(s["state"], "migrate_failed");
    assert_eq!(s["host"], "d");
    // ...and accepted with --skip-cpu-check.
    c.ok(&[
        "server-live-migrate",
        "vm1",
        "--prefer-host",
        "b",
        "--skip-cpu-check",
        "--wait",
    ]);
    wait_server(&c, "vm1", "b", "running");
    wait_heartbeats(&b, "vm1");
    let log = SerialLog::parse(&b.ok(&["console", "vm1"]));
    assert!(log.failures.is_empty(), "{:?}", log.failures);
    // Bad requests change nothing and say what to do.
    let e = c.fails(&["server-live-migrate", "nosuch"]);
    assert!(e.contains("no server 'nosuch'"), "{e}");
}

#[test]
fn six_migrations_with_a_per_host_limit_of_two() {
    let c = TestController::file(&[
        "--max-outbound-per-host",
        "2",
        "--max-inbound-per-host",
        "2",
    ]);
    let a = TestController::host(&[&c], "a", &[]);
    let b = TestController::host(&[&c], "b", &[]);
    let d = TestController::host(&[&c], "d", &[]);
    let _pool = shared_pool(&[&a, &b, &d], "shared");
    let names: Vec<String> = (1..=6).map(|i| format!("s{i}")).collect();
    for n in &names {
        boot(&a, n, None, 128);
    }
    for n in &names {
        wait_server(&c, n, "a", "running");
    }
    c.wait_json(&["host-list"], LONG, "three hosts", |v| {
        v.as_array().is_some_and(|a| a.len() == 3)
    });
    for n in &names {
        c.ok(&["server-live-migrate", n]);
    }
    // Watch the jobs: never more than two run at once.
    let mut max_running = 0;
    let mut saw_limit_note = false;
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let j = jobs(&c);
        let running = j.iter().filter(|x| x["state"] == "running").count();
        max_running = max_running.max(running);
        saw_limit_note |= j.iter().any(|x| {
            x["state"] == "queued" && x["note"].as_str().unwrap_or("").contains("sends 2")
        });
        if j.len() == 6 && j.iter().all(|x| x["state"] == "succeeded") {
            break;
        }
        assert!(
            !j.iter().any(|x| x["state"] == "failed"),
            "a migration failed: {j:#?}"
        );
        assert!(
            Instant::now() < deadline,
            "migrations did not finish: {j:#?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(max_running <= 2, "{max_running} migrations ran at once");
    assert!(saw_limit_note, "queued jobs never said why they wait");
    let servers = c.json(&["server-list"]);
    for s in servers.as_array().unwrap() {
        assert_ne!(s["host"], "a", "{s}");
        assert_eq!(s["state"], "running", "{s}");
    }
}

/// The host dies: its fence process, every QEMU and its agent.
fn kill_host(h: &mut TernHost) {
    tern_testkit::fencing::kill_host(h);
}

#[test]
fn host_down_restarts_shared_servers_elsewhere_exactly_once() {
    let c = TestController::file(&[]);
    let mut a = TestController::host(&[&c], "a", &[]);
    let b = TestController::host(&[&c], "b", &[]);
    let _pool = shared_pool(&[&a, &b], "shared");
    let local = tempfile::tempdir().unwrap();
    a.add_pool("local", local.path(), false);
    boot(&a, "web", Some("shared"), 128);
    boot(&a, "db", Some("local"), 128);
    wait_server(&c, "web", "a", "running");
    wait_server(&c, "db", "a", "running");
    c.ok(&[
        "host-auto-migrate-on-host-down",
        "a",
        "--auto-migrate-on-host-down",
        "enable",
    ]);
    // The agent learns about the policy (and arms fencing) on its next heartbeat.
    std::thread::sleep(Duration::from_secs(2));

    let t0 = Instant::now();
    kill_host(&mut a);
    wait_server(&c, "web", "b", "running");
    let elapsed = t0.elapsed();
    println!(
        "host down -> server running elsewhere: {:.1} s",
        elapsed.as_secs_f64()
    );
    let text = b.wait_console("web", LONG, "a memory pass", |t| {
        SerialLog::parse(t).count("TERN-MEM ok") >= 1
    });
    let log = SerialLog::parse(&text);
    assert!(log.failures.is_empty(), "{:?}", log.failures);
    let db = c.wait_json(&["server-show", "db"], LONG, "db lost", |v| {
        v["state"] == "lost"
    });
    assert_eq!(db["host"], "a");
    let hosts = c.json(&["host-list"]);
    assert!(hosts[0]["status"]["down"].is_object(), "{hosts}");

    // The host returns: it does not start the rescued server again, and
    // its stale definition is removed.
    a.restart();
    c.wait_json(&["host-show", "a"], LONG, "a back online", |v| {
        v["status"] == "online"
    });
    let deadline = Instant::now() + LONG;
    while a
        .ok(&["list", "--all", "--name"])
        .lines()
        .any(|l| l.trim() == "web")
    {
        assert!(
            Instant::now() < deadline,
            "stale definition of web stayed on a"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let rescues: Vec<_> = jobs(&c)
        .into_iter()
        .filter(|j| j["kind"] == "rescue")
        .collect();
    assert_eq!(rescues.len(), 1, "{rescues:#?}");
    assert_eq!(rescues[0]["state"], "succeeded");
    assert_eq!(
        b.ok(&["list", "--name"])
            .lines()
            .filter(|l| l.trim() == "web")
            .count(),
        1
    );
    let s = c.json(&["server-show", "web"]);
    assert_eq!(
        (s["host"].as_str(), s["state"].as_str()),
        (Some("b"), Some("running"))
    );
}

#[test]
fn losing_the_controller_and_every_peer_kills_no_guest_while_storage_answers() {
    use tern_testkit::fencing::{fenced_record, wait_armed, wait_lease_counter};
    let mut c = TestController::file(&[]);
    let a = TestController::host(&[&c], "a", &[]);
    let mut b = TestController::host(&[&c], "b", &[]);
    let pool = shared_pool(&[&a, &b], "shared");
    boot(&a, "g", Some("shared"), 128);
    wait_server(&c, "g", "a", "running");
    c.ok(&[
        "host-auto-migrate-on-host-down",
        "a",
        "--auto-migrate-on-host-down",
        "enable",
    ]);
    let armed_at = wait_armed(pool.path(), "a", LONG);
    // a reaches neither the controller nor its peer, only its storage: it
    // is not cut off from what matters, and its fence keeps renewing.
    c.kill9();
    kill_host(&mut b);
    // Twice the promise (5 s at one renewal every 500 ms) goes by.
    wait_lease_counter(pool.path(), "a", armed_at + 20, LONG);
    assert!(fenced_record(&a).is_none(), "a fenced its guests");
    assert!(a.ok(&["domstate", "g"]).starts_with("running"));
    wait_heartbeats(&a, "g");
    c.restart();
    c.wait_json(&["host-show", "a"], LONG, "a online", |v| {
        v["status"] == "online"
    });
}

#[test]
fn cancel_queued_and_running_jobs_then_evacuate_a_host_for_maintenance() {
    let c = TestController::file(&["--max-cluster-migrations", "1"]);
    let a = TestController::host(&[&c], "a", &[]);
    let b = TestController::host(&[&c], "b", &[]);
    let _pool = shared_pool(&[&a, &b], "shared");
    boot_touching(&a, "vm", Some("shared"), 192, 64);
    // A stopped server with its disk in the shared pool.
    let img = build_or_reuse(&BuildOptions::default()).unwrap();
    a.ok(&["vol-create-as", "shared", "cold.raw", "8M"]);
    let path = a.ok(&["vol-path", "cold.raw", "--pool", "shared"]);
    let mut spec = GuestSpec::new("cold", &img);
    spec.memory_mib = 128;
    spec.disks.push(TestDisk {
        path: path.trim().into(),
        format: "raw".into(),
        target: "vda".into(),
        cache: "none".into(),
    });
    a.define_guest(&spec);
    wait_server(&c, "vm", "a", "running");
    wait_server(&c, "cold", "a", "ready");
    c.wait_json(&["host-list"], LONG, "two hosts", |v| {
        v.as_array().is_some_and(|a| a.len() == 2)
    });
    let e = c.fails(&["server-migrate", "vm"]);
    assert!(e.contains("is running"), "{e}");
    let e = c.fails(&["server-live-migrate", "cold"]);
    assert!(e.contains("server-migrate"), "{e}");

    // One slow migration runs; the cluster limit keeps the next queued.
    slow_migration_running(&c, &a);
    c.ok(&["server-migrate", "cold"]);
    c.wait_json(&["job-list"], LONG, "the cold job waiting", |v| {
        v.as_array().is_some_and(|a| {
            a.iter().any(|j| {
                j["server"] == "cold"
                    && j["state"] == "queued"
                    && j["note"]
                        .as_str()
                        .unwrap_or("")
                        .contains("cluster already runs 1")
            })
        })
    });
    assert!(c.ok(&["migrate-cancel", "cold"]).contains("cancelled"));
    assert_eq!(c.json(&["server-show", "cold"])["state"], "ready");
    // Cancelling the running one rolls it back: the guest stays on a.
    c.ok(&["migrate-cancel", "vm"]);
    let done = wait_jobs_done(&c, 2);
    let vm_job = done.iter().find(|j| j["server"] == "vm").unwrap();
    assert_eq!(vm_job["state"], "cancelled", "{done:#?}");
    // The destination's side of the cancelled migration is over too.
    let dj: serde_json::Value =
        serde_json::from_str(&b.ok(&["domjobinfo", "vm", "--json"])).unwrap();
    assert_ne!(dj["phase"], "finish", "{dj}");
    let s = wait_server(&c, "vm", "a", "running");
    assert_eq!(s["error"], serde_json::Value::Null);
    let passes = SerialLog::parse(&a.ok(&["console", "vm"])).count("TERN-MEM ok");
    a.wait_console("vm", LONG, "a new memory pass on a", |t| {
        SerialLog::parse(t).count("TERN-MEM ok") > passes
    });

    // Maintenance: live for the running server, cold for the stopped one.
    c.ok(&["host-maintenance", "a"]);
    let done = wait_jobs_done(&c, 4);
    assert!(
        done[2..].iter().all(|j| j["state"] == "succeeded"),
        "{done:#?}"
    );
    wait_server(&c, "vm", "b", "running");
    wait_server(&c, "cold", "b", "ready");
    wait_heartbeats(&b, "vm");
    assert_eq!(c.json(&["host-show", "a"])["maintenance"], true);
    let f = c.ok(&["migrate-forecast", "vm"]);
    assert!(f.contains("maintenance"), "{f}");
    // The cold server starts on its new host.
    b.ok(&["start", "cold"]);
    b.wait_console("cold", LONG, "TERN-READY", |t| SerialLog::parse(t).ready());
}

#[test]
fn a_host_shutting_down_moves_its_running_servers_away_first() {
    let c = TestController::file(&[]);
    let mut a = TestController::host(&[&c], "a", &["--on-stop", "host-shutdown"]);
    let b = TestController::host(&[&c], "b", &[]);
    let _pool = shared_pool(&[&a, &b], "shared");
    boot(&a, "web", Some("shared"), 128);
    wait_server(&c, "web", "a", "running");
    c.wait_json(&["host-list"], LONG, "two hosts", |v| {
        v.as_array().is_some_and(|a| a.len() == 2)
    });
    // As in Cloudpods: the shutdown policy needs the host-down one.
    let e = c.fails(&[
        "host-auto-migrate-on-host-down",
        "a",
        "--auto-migrate-on-host-shutdown",
        "enable",
    ]);
    assert!(e.contains("--auto-migrate-on-host-down enable"), "{e}");
    let h = c.json(&["host-show", "a"]);
    assert_eq!(h["auto_migrate_on_host_shutdown"], false, "{h}");
    c.ok(&[
        "host-auto-migrate-on-host-down",
        "a",
        "--auto-migrate-on-host-down",
        "enable",
        "--auto-migrate-on-host-shutdown",
        "enable",
    ]);

    // The host shuts down: its agent is stopped, and waits for the move.
    let status = a.terminate(Duration::from_secs(300));
    assert!(
        status.is_some_and(|s| s.success()),
        "ternd on a did not exit cleanly: {status:?}"
    );
    assert!(a.qemu_pids().iter().all(|p| {
        std::fs::read_to_string(format!("/proc/{p}/stat"))
            .map_or(true, |s| s.split_whitespace().nth(2) == Some("Z"))
    }));
    let s = wait_server(&c, "web", "b", "running");
    assert_eq!(s["error"], serde_json::Value::Null);
    let text = wait_heartbeats(&b, "web");
    assert!(SerialLog::parse(&text).failures.is_empty(), "{text}");
    let j = jobs(&c);
    assert_eq!(j.len(), 1, "{j:#?}");
    assert_eq!(
        (j[0]["kind"].as_str(), j[0]["state"].as_str()),
        (Some("live-migrate"), Some("succeeded")),
        "{j:#?}"
    );
    // Not a candidate while it is gone.
    assert_eq!(c.json(&["host-show", "a"])["shutting_down"], true);
}

#[test]
fn enable_tls_migrates_over_qemus_tls() {
    let c = TestController::file(&[]);
    let a = TestController::host(&[&c], "a", &[]);
    let b = TestController::host(&[&c], "b", &[]);
    let _pool = shared_pool(&[&a, &b], "shared");
    boot(&a, "vm", Some("shared"), 128);
    wait_server(&c, "vm", "a", "running");
    c.wait_json(&["host-list"], LONG, "two hosts", |v| {
        v.as_array().is_some_and(|a| a.len() == 2)
    });
    c.ok(&["server-live-migrate", "vm", "--enable-tls", "--wait"]);
    wait_server(&c, "vm", "b", "running");
    wait_heartbeats(&b, "vm");
    let ev = a.ok(&["domjobevents", "vm"]);
    assert!(ev.contains("over QEMU's TLS"), "{ev}");
}

/// `--migration-tls`: the cluster setting encrypts a migration whose
/// request did not ask for it.
#[test]
fn the_migration_tls_cluster_setting_encrypts_every_live_migration() {
    let c = TestController::file(&["--migration-tls"]);
    let a = TestController::host(&[&c], "a", &[]);
    let b = TestController::host(&[&c], "b", &[]);
    let _pool = shared_pool(&[&a, &b], "shared");
    boot(&a, "vm", Some("shared"), 128);
    wait_server(&c, "vm", "a", "running");
    c.wait_json(&["host-list"], LONG, "two hosts", |v| {
        v.as_array().is_some_and(|a| a.len() == 2)
    });
    c.ok(&["server-live-migrate", "vm", "--wait"]);
    wait_server(&c, "vm", "b", "running");
    wait_heartbeats(&b, "vm");
    let ev = a.ok(&["domjobevents", "vm"]);
    assert!(ev.contains("over QEMU's TLS"), "{ev}");
    let ev = b.ok(&["domjobevents", "vm"]);
    assert!(
        ev.contains("only O=Tern,OU=Tern hosts,CN=a may connect"),
        "{ev}"
    );
}

/// Starts a slow live migration of `vm` from `a` and waits until it moves memory.
fn slow_migration_running(c: &TestController, a: &TernHost) {
    c.ok(&["server-live-migrate", "vm", "--max-bandwidth-mb", "4"]);
    let deadline = Instant::now() + LONG;
    loop {
        let j: serde_json::Value =
            serde_json::from_str(&a.ok(&["domjobinfo", "vm", "--json"])).unwrap();
        if j["kind"] == "unbounded" && j["memory_processed"].as_u64().unwrap_or(0) > 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "migration never moved memory: {j}\njobs:\n{}\ncontroller log:\n{}",
            c.ok(&["job-list"]),
            tern_testkit::tail(&std::fs::read_to_string(&c.log).unwrap_or_default(), 40)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn controller_restarted_mid_job_completes_it_embedded_store() {
    let mut c = TestController::file(&[]);
    let a = TestController::host(&[&c], "a", &[]);
    let b = TestController::host(&[&c], "b", &[]);
    let _pool = shared_pool(&[&a, &b], "shared");
    // 64 MiB of guest memory at 4 MB/s: long enough to kill the controller mid-way.
    boot_touching(&a, "vm", Some("shared"), 192, 64);
    wait_server(&c, "vm", "a", "running");
    c.wait_json(&["host-list"], LONG, "two hosts", |v| {
        v.as_array().is_some_and(|a| a.len() == 2)
    });
    slow_migration_running(&c, &a);
    c.restart();
    let done = wait_jobs_done(&c, 1);
    assert_eq!(done[0]["state"], "succeeded", "{done:#?}");
    let log = std::fs::read_to_string(&c.log).unwrap();
    assert!(
        log.contains("resuming a running job"),
        "the restarted controller did not resume the job"
    );
    wait_server(&c, "vm", "b", "running");
    wait_heartbeats(&b, "vm");
    assert!(a
        .qemu_pids()
        .iter()
        .all(|p| !std::path::Path::new(&format!("/proc/{p}")).exists()));
}

#[test]
fn two_controllers_on_etcd_hand_over_mid_job() {
    let e = Etcd::start();
    let c1 = TestController::etcd(&e.url, &["--id", "c1", "--leader-ttl-ms", "2000"]);
    let mut c1 = c1;
    c1.wait_json(&["host-list"], LONG, "c1 answering", |_| true);
    // c1 campaigns first, so it leads.
    std::thread::sleep(Duration::from_millis(500));
    let c2 = TestController::etcd(&e.url, &["--id", "c2", "--leader-ttl-ms", "2000"]);
    let a = TestController::host(&[&c1, &c2], "a", &[]);
    let b = TestController::host(&[&c1, &c2], "b", &[]);
    let _pool = shared_pool(&[&a, &b], "shared");
    boot_touching(&a, "vm", Some("shared"), 192, 64);
    wait_server(&c2, "vm", "a", "running");
    c2.wait_json(&["host-list"], LONG, "two hosts", |v| {
        v.as_array().is_some_and(|a| a.len() == 2)
    });
    slow_migration_running(&c1, &a);
    c1.kill9();
    // c2 takes over the lead and finishes the job c1 was driving.
    let done = wait_jobs_done(&c2, 1);
    assert_eq!(done[0]["state"], "succeeded", "{done:#?}");
    wait_server(&c2, "vm", "b", "running");
    wait_heartbeats(&b, "vm");
    assert!(
        std::fs::read_to_string(&c2.log)
            .unwrap()
            .contains("leading the cluster"),
        "c2 never led"
    );
}
