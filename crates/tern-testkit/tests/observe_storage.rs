//! The agent's storage-side metrics against real agents: the cold-copy
//! families after a real cold migration between two agents, and the
//! fence's lease renewals (and a fencing) as the host's real fence process
//! writes its lease on a shared pool; both linted by `promtool`.

use std::time::Duration;
use tern_testkit::fencing::cut_lease;
use tern_testkit::scrape::{metrics_addr, promtool_check, sample, scrape, wait_metrics};
use tern_testkit::{HostPair, TestController, Which::A};

const LONG: Duration = Duration::from_secs(120);

#[test]
fn cold_copy_metrics_show_the_bytes_of_a_cold_migration() {
    let (ma, mb) = (metrics_addr(), metrics_addr());
    let mut p = HostPair::start(
        "coldmetrics",
        &["--metrics-listen", &ma.to_string()],
        &["--metrics-listen", &mb.to_string()],
    );
    p.add_local_pools();
    // 4 MiB of the disk written and checked by the guest, then stopped.
    p.boot_local("cm1", "tern.mem=16", 4);
    p.a.ok(&["destroy", "cm1"]);
    let out = p.migrate(A, "cm1", &["--cold"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let info: serde_json::Value =
        serde_json::from_str(&p.a.ok(&["domjobinfo", "--completed", "--json", "cm1"]))
            .expect("domjobinfo JSON");
    let wire = info["wire_bytes"].as_u64().expect("wire bytes");
    assert!(wire > 0, "{info}");
    let src = scrape(ma);
    let dst = scrape(mb);
    // The source counts the bytes its cold copy put on the wire, as its
    // job reported them.
    let source = [("role", "source")];
    assert_eq!(
        sample(&src, "tern_cold_copy_bytes_total", &source),
        Some(wire as f64),
        "{src}"
    );
    let cold = [("role", "source"), ("kind", "cold")];
    assert_eq!(
        sample(&src, "tern_migrations_completed_total", &cold),
        Some(1.0),
        "{src}"
    );
    let dest = [("role", "destination"), ("kind", "cold")];
    assert_eq!(
        sample(&dst, "tern_migrations_completed_total", &dest),
        Some(1.0),
        "{dst}"
    );
    // Over: no stale per-copy rate.
    for text in [&src, &dst] {
        assert_eq!(
            sample(text, "tern_cold_copy_rate_bytes_per_second", &[]),
            None,
            "{text}"
        );
        promtool_check(text).unwrap_or_else(|e| panic!("promtool: {e}\n{text}"));
    }
}

#[test]
fn fence_metrics_count_the_lease_renewals_and_a_fencing() {
    let m = metrics_addr();
    let c = TestController::file(&[]);
    let a = TestController::host(&[&c], "a", &["--metrics-listen", &m.to_string()]);
    let pool = tempfile::Builder::new()
        .prefix("tern-fmshared-")
        .tempdir()
        .unwrap();
    a.add_pool("shared", pool.path(), true);
    c.wait_online(&["a"]);
    c.ok(&[
        "host-auto-migrate-on-host-down",
        "a",
        "--auto-migrate-on-host-down",
        "enable",
    ]);
    let got = |t: &str, name| sample(t, name, &[]).unwrap_or(0.0);
    let text = wait_metrics(m, "armed fence renewing one pool's lease", LONG, |t| {
        got(t, "tern_fence_armed") == 1.0
            && got(t, "tern_fence_lease_pools") == 1.0
            && got(t, "tern_fence_lease_renewals_total") >= 3.0
    });
    assert!(
        got(&text, "tern_fence_last_renewal_timestamp_seconds") > 0.0,
        "{text}"
    );
    assert_eq!(got(&text, "tern_fence_fenced"), 0.0, "{text}");
    // The lease on the pool agrees: the fence's counter there is at least
    // the renewals the metrics counted (it renewed again since).
    let lease: serde_json::Value = serde_json::from_slice(
        &std::fs::read(pool.path().join(".tern-fence/a.lease")).expect("a's lease"),
    )
    .expect("lease JSON");
    let renewals = got(&text, "tern_fence_lease_renewals_total");
    assert!(
        lease["counter"].as_f64().unwrap_or(0.0) >= renewals,
        "{lease} vs {renewals}"
    );
    promtool_check(&text).unwrap_or_else(|e| panic!("promtool: {e}\n{text}"));

    // The lease cannot be written any more: the renewals fail, and the
    // armed fence kills the host's guests (it runs none) before its promise.
    let cut = cut_lease(pool.path(), "a");
    let text = wait_metrics(m, "a fencing", LONG, |t| {
        got(t, "tern_agent_fencing_events_total") >= 1.0
    });
    assert!(
        got(&text, "tern_fence_lease_renewal_failures_total") >= 1.0,
        "{text}"
    );
    drop(cut);
    promtool_check(&text).unwrap_or_else(|e| panic!("promtool: {e}\n{text}"));
}
