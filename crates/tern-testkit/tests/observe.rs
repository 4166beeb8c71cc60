//! What an operator watches: the agents' Prometheus metrics after a real
//! live migration between two agents, linted by Debian's `promtool`, and
//! `tern event --loop` printing a migration's phases as it runs.

use std::time::Duration;
use tern_testkit::cluster::{jobs, wait_server};
use tern_testkit::events::EventStream;
use tern_testkit::fencing::{armed_pair, kill_host, ArmedPair};
use tern_testkit::pair::boot_guest;
use tern_testkit::pair::wait_job_active;
use tern_testkit::scrape::{http_get, metrics_addr, promtool_check, sample, scrape};
use tern_testkit::{FaultPoint, HostPair, TestController, Which::A};

const LONG: Duration = Duration::from_secs(120);

#[test]
fn metrics_show_a_live_migration_and_pass_promtool() {
    let (ma, mb) = (metrics_addr(), metrics_addr());
    let p = HostPair::start(
        "metrics",
        &["--metrics-listen", &ma.to_string()],
        &["--metrics-listen", &mb.to_string()],
    );
    p.boot("met1", "tern.mem=64 tern.dirty=0");
    let out = p.migrate(A, "met1", &["--live"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let info: serde_json::Value =
        serde_json::from_str(&p.a.ok(&["domjobinfo", "--completed", "--json", "met1"]))
            .expect("domjobinfo JSON");
    let src = scrape(ma);
    let dst = scrape(mb);
    let live = [("kind", "live"), ("flow", "precopy")];
    let on = |role| {
        let mut l = live.to_vec();
        l.push(("role", role));
        l
    };
    for (text, role) in [(&src, "source"), (&dst, "destination")] {
        for family in [
            "tern_migrations_started_total",
            "tern_migrations_completed_total",
            "tern_migration_duration_seconds_count",
            "tern_migration_transferred_bytes_count",
        ] {
            assert_eq!(
                sample(text, family, &on(role)),
                Some(1.0),
                "{family} {role}:\n{text}"
            );
        }
        assert_eq!(
            sample(text, "tern_migrations_failed_total", &on(role)),
            None,
            "{text}"
        );
    }
    // The source's histograms hold this migration's own figures.
    let downtime_ms = info["downtime_ms"].as_u64().expect("a downtime");
    let got = sample(&src, "tern_migration_downtime_seconds_sum", &on("source"));
    assert_eq!(got, Some(downtime_ms as f64 / 1000.0), "{src}");
    let moved = info["data_processed"].as_u64().unwrap_or(0);
    assert!(moved > 0, "{info}");
    let got = sample(&src, "tern_migration_transferred_bytes_sum", &on("source"));
    assert_eq!(got, Some(moved as f64), "{src}");
    // The source agent runs the migration: one request starts it.
    let begin = [("verb", "migrate-p2p"), ("status", "ok")];
    assert_eq!(
        sample(&src, "tern_agent_api_requests_total", &begin),
        Some(1.0),
        "{src}"
    );
    let prepare = [("verb", "migrate-prepare"), ("status", "ok")];
    assert_eq!(
        sample(&dst, "tern_agent_api_requests_total", &prepare),
        Some(1.0),
        "{dst}"
    );
    // Nothing runs now: no stale per-migration gauge.
    assert_eq!(
        sample(&src, "tern_migration_remaining_bytes", &[]),
        None,
        "{src}"
    );
    for text in [&src, &dst] {
        promtool_check(text).unwrap_or_else(|e| panic!("promtool: {e}\n{text}"));
    }
    let (status, _) = http_get(ma, "/");
    assert_eq!(status, 404);
}

/// A running migration's gauges, as one scrape saw them.
#[derive(Debug, PartialEq)]
struct Live {
    remaining: Option<f64>,
    rate: Option<f64>,
    dirty: Option<f64>,
    iteration: Option<f64>,
    throttle: Option<f64>,
}

/// What the gauges must say for the job figures `i` (`domjobinfo --json`).
fn live_from_job(i: &serde_json::Value) -> Live {
    let n = |k: &str| i[k].as_u64().unwrap_or(0) as f64;
    Live {
        remaining: Some(n("data_remaining")),
        rate: Some(n("memory_bandwidth").max(n("disk_rate"))),
        dirty: Some(n("dirty_rate")),
        iteration: Some(n("iteration")),
        throttle: Some(n("auto_converge_throttle") / 100.0),
    }
}

fn live_from_metrics(text: &str, l: &[(&str, &str)]) -> Live {
    Live {
        remaining: sample(text, "tern_migration_remaining_bytes", l),
        rate: sample(text, "tern_migration_transfer_rate_bytes_per_second", l),
        dirty: sample(text, "tern_migration_dirty_rate_bytes_per_second", l),
        iteration: sample(text, "tern_migration_iteration", l),
        throttle: sample(text, "tern_migration_cpu_throttle_ratio", l),
    }
}

/// The per-migration gauges carry the running job's own figures while it
/// runs, and vanish when it ends.
#[test]
fn live_gauges_show_the_running_migrations_figures() {
    let ma = metrics_addr();
    let p = HostPair::start("gauges", &["--metrics-listen", &ma.to_string()], &[]);
    p.boot("lg1", "tern.mem=24 tern.dirty=8");
    let child = p.migrate_bg(A, "lg1", &["--live", "--bandwidth", "3", "--no-policy"]);
    wait_job_active(&p.a, "lg1");
    let job = || -> serde_json::Value {
        serde_json::from_str(&p.a.ok(&["domjobinfo", "lg1", "--json"])).expect("domjobinfo JSON")
    };
    let l = [("domain", "lg1"), ("role", "source")];
    // The agent refreshes the job from QEMU a few times a second: compare
    // a scrape taken between two identical job snapshots, once the second
    // pass measured a dirty rate.
    let mut seen = None;
    for _ in 0..600 {
        let before = job();
        let text = scrape(ma);
        let after = job();
        let same = live_from_job(&before) == live_from_job(&after);
        if same && before["iteration"].as_u64().unwrap_or(0) >= 2 {
            seen = Some((before, text));
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let (info, text) = seen.expect("a stable job snapshot in the second pass");
    let want = live_from_job(&info);
    assert_eq!(live_from_metrics(&text, &l), want, "{info}\n{text}");
    assert!(
        want.remaining > Some(0.0) && want.rate > Some(0.0),
        "{info}"
    );
    assert!(want.dirty > Some(0.0), "the guest dirties memory: {info}");
    let running = [("role", "source"), ("phase", "perform")];
    assert_eq!(
        sample(&text, "tern_migrations_running", &running),
        Some(1.0),
        "{text}"
    );
    promtool_check(&text).unwrap_or_else(|e| panic!("promtool: {e}\n{text}"));
    p.a.ok(&["domjobabort", "lg1"]);
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    let text = scrape(ma);
    assert_eq!(
        live_from_metrics(&text, &l),
        Live {
            remaining: None,
            rate: None,
            dirty: None,
            iteration: None,
            throttle: None
        },
        "{text}"
    );
    let cancelled = [("kind", "live"), ("flow", "precopy"), ("role", "source")];
    assert_eq!(
        sample(&text, "tern_migrations_cancelled_total", &cancelled),
        Some(1.0),
        "{text}"
    );
}

/// A host's death shows on the controller: the host down, the leader's
/// declaration counted, and one rescue that succeeded.
#[test]
fn controller_metrics_count_a_hosts_death_and_its_rescue() {
    let m = metrics_addr();
    let c = TestController::file(&["--metrics-listen", &m.to_string()]);
    let ArmedPair {
        mut a,
        b: _b,
        pool: _pool,
    } = armed_pair(&c, &[], &[]);
    let text = scrape(m);
    assert_eq!(
        sample(&text, "tern_controller_hosts_declared_down_total", &[]),
        Some(0.0),
        "{text}"
    );
    kill_host(&mut a);
    wait_server(&c, "vm", "b", "running");
    let rescued = jobs(&c)
        .into_iter()
        .filter(|j| j["kind"] == "rescue" && j["state"] == "succeeded")
        .count();
    assert_eq!(rescued, 1);
    let text = scrape(m);
    let got = |name, labels: &[(&str, &str)]| sample(&text, name, labels);
    assert_eq!(
        got("tern_cluster_rescues", &[("state", "succeeded")]),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        got("tern_cluster_hosts", &[("status", "down")]),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        got("tern_controller_hosts_declared_down_total", &[]),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        got("tern_cluster_servers", &[("state", "running")]),
        Some(1.0),
        "{text}"
    );
    promtool_check(&text).unwrap_or_else(|e| panic!("promtool: {e}\n{text}"));
}

#[test]
fn controller_metrics_count_hosts_servers_and_jobs() {
    let m = metrics_addr();
    let c = TestController::file(&["--metrics-listen", &m.to_string()]);
    let a = TestController::host(&[&c], "a", &[]);
    let b = TestController::host(&[&c], "b", &[]);
    let pool = tempfile::Builder::new()
        .prefix("tern-mshared-")
        .tempdir()
        .unwrap();
    for h in [&a, &b] {
        h.add_pool("shared", pool.path(), true);
    }
    boot_guest(&a, "cm1", "tern.mem=32 tern.dirty=0");
    c.wait_json(&["server-list"], LONG, "cm1 running on a", |v| {
        v.as_array().is_some_and(|s| {
            s.iter()
                .any(|s| s["host"] == "a" && s["state"] == "running")
        })
    });
    c.ok(&["server-live-migrate", "cm1", "--wait"]);
    let text = scrape(m);
    let got = |name, labels: &[(&str, &str)]| sample(&text, name, labels);
    assert_eq!(
        got("tern_cluster_hosts", &[("status", "online")]),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        got("tern_cluster_hosts", &[("status", "down")]),
        Some(0.0),
        "{text}"
    );
    assert_eq!(
        got("tern_cluster_servers", &[("state", "running")]),
        Some(1.0),
        "{text}"
    );
    let done = [("kind", "live-migrate"), ("state", "succeeded")];
    assert_eq!(got("tern_cluster_jobs", &done), Some(1.0), "{text}");
    assert_eq!(got("tern_controller_leader", &[]), Some(1.0), "{text}");
    promtool_check(&text).unwrap_or_else(|e| panic!("promtool: {e}\n{text}"));
}

#[test]
fn tern_event_loop_prints_a_migrations_phases_as_it_runs() {
    let p = HostPair::start("event", &["--fault-stop-at", "source-completed"], &[]);
    p.boot("ev1", "tern.mem=48 tern.dirty=0");
    let mut src = EventStream::start(&p.a.uri(), &["--domain", "ev1", "--timestamp"]);
    let mut dst = EventStream::start(&p.b.uri(), &["--domain", "ev1"]);
    // A lifecycle event each watcher must print: both are listening now.
    p.a.ok(&["suspend", "ev1"]);
    src.wait_for("paused", LONG);
    p.a.ok(&["resume", "ev1"]);
    src.wait_for("'lifecycle' for domain 'ev1': running", LONG);
    // 16 MiB/s: a few seconds of pre-copy, so iterations are reported.
    let mig = p.migrate_bg(A, "ev1", &["--live", "--bandwidth", "16"]);
    src.wait_for("'iteration' for domain 'ev1': iteration 1", LONG);
    // The source holds once QEMU has sent everything, before Confirm: what
    // the watchers printed so far came while the migration ran.
    let hold = FaultPoint::of(&p.a, "source-completed");
    hold.wait_reached(LONG);
    let so_far = src.wait_for("'migration-phase' for domain 'ev1': perform", LONG);
    let begin = "'migration-phase' for domain 'ev1': begin";
    assert!(so_far.iter().any(|l| l.contains(begin)), "{so_far:#?}");
    assert!(
        !so_far.iter().any(|l| l.contains(": completed")),
        "{so_far:#?}"
    );
    assert!(so_far[0].starts_with("20"), "--timestamp: {so_far:#?}");
    dst.wait_for("'migration-phase' for domain 'ev1': prepare", LONG);
    hold.release();
    let out = mig.wait_with_output().expect("tern migrate");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let all = src.wait_for("'migration-phase' for domain 'ev1': completed", LONG);
    let at = |t: &str| {
        all.iter()
            .position(|l| l.contains(t))
            .unwrap_or_else(|| panic!("{t}: {all:#?}"))
    };
    assert!(
        at(": begin") < at(": perform") && at(": perform") < at(": confirm"),
        "{all:#?}"
    );
    assert!(at(": confirm") < at(": completed"), "{all:#?}");
    src.wait_for("'lifecycle' for domain 'ev1': shut off (migrated)", LONG);
    let d = dst.wait_for("'migration-phase' for domain 'ev1': completed", LONG);
    assert!(d.iter().any(|l| l.contains(": finish")), "{d:#?}");
    dst.wait_for("'lifecycle' for domain 'ev1': running", LONG);
    // JSON, one object per line.
    let mut j = EventStream::start(&p.b.uri(), &["--json"]);
    p.b.ok(&["suspend", "ev1"]);
    let l = j.wait_for("lifecycle", LONG);
    let v: serde_json::Value = serde_json::from_str(&l[0]).expect("JSON line");
    assert_eq!(v["domain"], "ev1");
    assert_eq!(v["kind"], "lifecycle");
}

/// Every non-empty line of a log, parsed as JSON (panics on one that is not).
fn json_lines(path: &std::path::Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).expect("read log");
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

#[test]
fn both_daemons_log_json_lines_with_log_format_json() {
    let c = TestController::file(&["--log-format", "json"]);
    let h = tern_testkit::TernHost::start_with(tern_testkit::HostOptions {
        name: "jsonlog".into(),
        extra_args: vec!["--log-format".into(), "json".into()],
        ..Default::default()
    });
    h.ok(&["list", "--all"]);
    for (log, ready) in [
        (h.log(), "ternd ready"),
        (c.log.clone(), "tern-controller ready"),
    ] {
        let lines = json_lines(&log);
        let r = lines
            .iter()
            .find(|v| v["message"] == ready)
            .unwrap_or_else(|| panic!("no '{ready}' in {lines:#?}"));
        assert_eq!(r["level"], "INFO", "{r}");
        assert!(r["timestamp"].is_string(), "{r}");
    }
    // A bad value is refused with the choices.
    let out = std::process::Command::new(tern_testkit::bin("ternd"))
        .args(["--log-format", "xml"])
        .output()
        .expect("run ternd");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("text, json"), "{err}");
}
