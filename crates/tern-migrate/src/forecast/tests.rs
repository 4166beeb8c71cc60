use super::*;
use crate::policy::Knobs;

const MIB: f64 = (1u64 << 20) as f64;

fn cfg() -> PolicyConfig {
    PolicyConfig {
        deadline_ms: 300_000,
        max_downtime_ms: 1000,
        knobs: Knobs {
            downtime: true,
            throttle: false,
            postcopy: true,
            pause: true,
        },
    }
}

/// The idle 2 GiB guest of `tern-bench converge` (half its memory
/// filled, 43 % of the samples zero) on a loaded two-core machine, where
/// one migration thread moved about 190 MiB/s.
fn idle_loaded() -> Inputs {
    Inputs {
        memory: 2 << 30,
        zero_fraction: Estimate::around(0.43, 0.04, 0.0, 1.0, "sampled"),
        send_rate: Estimate::spread(190.0 * MIB, 0.2, "thread"),
        thread_rate: Estimate::spread(190.0 * MIB, 0.2, "thread"),
        dirty_rate: Estimate::spread(0.0, 0.3, "calc-dirty-rate"),
        setup_ms: Estimate::spread(400.0, 0.3, "setup"),
        switch_ms: Estimate::spread(20.0, 0.5, "switch"),
        postcopy_rate: Estimate::spread(570.0 * MIB, 0.2, "thread x3"),
    }
}

#[test]
fn the_inverse_normal_has_its_landmarks() {
    assert!(inverse_normal(0.5).abs() < 1e-9);
    assert!((inverse_normal(0.9) - Z90).abs() < 1e-6);
    assert!((inverse_normal(0.1) + Z90).abs() < 1e-6);
    assert!((inverse_normal(0.001) + 3.090_232).abs() < 1e-4);
}

#[test]
fn an_estimate_keeps_its_median_and_tens() {
    let e = Estimate::spread(100.0, 0.25, "x");
    assert!((e.at(0.0) - 100.0).abs() < 1e-9);
    assert!((e.at(Z90) - 125.0).abs() < 1e-9);
    assert!((e.at(-Z90) - 80.0).abs() < 1e-9);
    assert_eq!(Estimate::around(0.02, 0.05, 0.0, 1.0, "z").p10, 0.0);
    assert!(e.at(-50.0) >= 0.0);
}

#[test]
fn exact_inputs_give_a_point_and_spreads_give_a_range() {
    let mut exact = idle_loaded();
    for e in [
        &mut exact.zero_fraction,
        &mut exact.send_rate,
        &mut exact.thread_rate,
        &mut exact.dirty_rate,
        &mut exact.setup_ms,
        &mut exact.switch_ms,
    ] {
        e.p10 = e.p50;
        e.p90 = e.p50;
    }
    let p = range(&cfg(), &exact);
    assert_eq!(p.total.p10_ms, p.total.p90_ms, "{p:?}");
    let r = range(&cfg(), &idle_loaded());
    assert!(r.total.p10_ms < r.total.p50_ms && r.total.p50_ms < r.total.p90_ms);
    assert!(r.total.p10_ms <= p.total.p50_ms && p.total.p50_ms <= r.total.p90_ms);
    // The same inputs, the same range.
    assert_eq!(range(&cfg(), &idle_loaded()), r);
}

#[test]
fn an_idle_guest_pays_the_fixed_costs_and_the_zero_page_scan() {
    // Measured: 5.5 s of QEMU time, 5.9 s in all (traces/idle-unlimited).
    let r = range(&cfg(), &idle_loaded());
    let data_s = 2048.0 * 0.57 / 190.0;
    let zero_s = 2048.0 * 0.43 * ZERO_PAGE_COST / 190.0;
    let expect = ((data_s + zero_s) * 1000.0) as u64 + 400 + 20;
    let m = r.total.p50_ms;
    assert!(m.abs_diff(expect) <= expect / 20, "{r:?} against {expect}");
    assert!(
        (4_700..=7_100).contains(&m),
        "5.9 s measured, forecast {r:?}"
    );
    // The pause: the switch-over, nothing left to send.
    assert!(r.downtime.p50_ms <= 40, "{r:?}");
    assert_eq!(r.downtime_limit_ms, crate::downtime::START_MS);
}

#[test]
fn a_hot_guest_over_a_slow_link_is_forecast_through_postcopy() {
    let hot = Inputs {
        send_rate: Estimate::spread(100.0 * MIB, 0.05, "--bandwidth"),
        dirty_rate: Estimate::spread(150.0 * MIB, 0.3, "calc-dirty-rate"),
        ..idle_loaded()
    };
    let r = range(&cfg(), &hot);
    // Measured 31 s; converges only through post-copy.
    assert!((20_000..45_000).contains(&r.total.p50_ms), "{r:?}");
    assert!(r.downtime.p90_ms <= 100, "{r:?}");
}

fn trace(name: &str) -> Vec<Observation> {
    let path = format!("{}/traces/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{path}: {e}: {l}")))
        .collect()
}

/// Replays a trace through a follower; the updates it would record.
fn follow(obs: &[Observation], prior: Prior, limit: u64) -> Vec<ForecastUpdate> {
    let mut f = Follower::new(prior);
    let mut out: Vec<ForecastUpdate> = Vec::new();
    for o in obs {
        f.see(o);
        if let Some(u) = f.forecast(&cfg(), limit) {
            if worth_recording(out.last(), &u) {
                out.push(u);
            }
        }
    }
    out
}

#[test]
fn following_the_idle_run_forecasts_what_followed() {
    // Recorded with QEMU 10 under TCG on a loaded machine (load average
    // 14); QEMU completed at 5489 ms with a 300 ms limit.
    let obs = trace("idle-unlimited.jsonl");
    let prior = Prior {
        zero_fraction: Some(0.43),
        dirty_rate: 0,
        send_rate: 0,
        later_pass_speedup: 0.0,
        postcopy_rate: 0,
    };
    let ups = follow(&obs, prior, 300);
    assert!(ups.len() > 10);
    for at in [0.25, 0.5, 0.75] {
        let c = check_at(&ups, 5489, at).expect("a forecast by then");
        assert!(c.error.abs() <= 0.35, "at {at}: {c:?}");
    }
}

#[test]
fn following_the_hot_run_forecasts_what_followed() {
    // 200 MiB/s asked, about 40 MiB/s managed under load; QEMU completed
    // at 7436 ms with a 300 ms limit.
    let obs = trace("dirty-200-unlimited.jsonl");
    let prior = Prior {
        zero_fraction: Some(0.43),
        dirty_rate: 44 << 20,
        send_rate: 0,
        later_pass_speedup: 0.0,
        postcopy_rate: 0,
    };
    let ups = follow(&obs, prior, 300);
    // The passes after the first went twice as fast as the first on that
    // loaded machine (QEMU's 290-470 MB/s against 165): a forecast made
    // during the first pass could not know, and is a half too long.
    for at in [0.25, 0.5, 0.75] {
        let c = check_at(&ups, 7436, at).expect("a forecast by then");
        assert!(c.error.abs() <= 0.6, "at {at}: {c:?}");
    }
    // Once the dirty rate is known the pause is forecast: what is left
    // within the limit, plus the switch-over.
    let last = ups.last().unwrap();
    assert!(last.downtime_ms <= 300 + SWITCH_MS, "{last:?}");
}

#[test]
fn a_check_uses_the_last_forecast_made_by_then() {
    let u = |at_ms, remaining_ms| ForecastUpdate {
        at_ms,
        remaining_ms,
        downtime_ms: 10,
    };
    let ups = [u(100, 900), u(500, 600), u(900, 50)];
    let c = check_at(&ups, 1000, 0.5).unwrap();
    assert_eq!(c.update.at_ms, 500);
    assert_eq!(c.actual_remaining_ms, 500);
    assert!((c.error - 0.2).abs() < 1e-9);
    assert!(check_at(&ups, 1000, 0.05).is_none());
    assert!(worth_recording(None, &ups[0]));
    assert!(!worth_recording(Some(&ups[0]), &u(250, 1)));
}

#[test]
fn following_runs_with_byte_counts_uses_them() {
    // Recorded with QEMU's byte counts (transferred, zero pages, memory):
    // the idle guest (QEMU completed at 4639 ms) and the hot one, whose
    // passes after the first went at 508 MiB/s against 150 in the first
    // (5484 ms; the first forecasts could not know).
    let idle = trace("idle-unlimited-counts.jsonl");
    let prior = Prior {
        zero_fraction: Some(0.43),
        dirty_rate: 0,
        send_rate: 0,
        later_pass_speedup: 0.0,
        postcopy_rate: 0,
    };
    let ups = follow(&idle, prior, 30);
    for at in [0.25, 0.5, 0.75] {
        let c = check_at(&ups, 4639, at).expect("a forecast by then");
        assert!(c.error.abs() <= 0.3, "idle at {at}: {c:?}");
    }
    let hot = trace("dirty-200-unlimited-fast-pass2.jsonl");
    let prior = Prior {
        zero_fraction: Some(0.44),
        dirty_rate: 71 << 20,
        send_rate: 0,
        later_pass_speedup: 0.0,
        postcopy_rate: 0,
    };
    let ups = follow(&hot, prior, 30);
    let c = check_at(&ups, 5484, 0.75).expect("a forecast by then");
    assert!(c.error.abs() <= 0.5, "hot at 0.75: {c:?}");
}

#[test]
fn later_passes_priced_faster_than_the_first_follow_the_hot_run() {
    // The hot guest on QEMU 10 (session 14): the first pass at 370 MiB/s,
    // the second at 1.2-1.5 GB/s; QEMU completed at about 3 771 ms.
    let hot = trace("dirty-200-unlimited-fast-pass2-qemu10.jsonl");
    let prior = |speedup| Prior {
        zero_fraction: Some(0.43),
        dirty_rate: 192 << 20,
        send_rate: 425 << 20,
        later_pass_speedup: speedup,
        postcopy_rate: 0,
    };
    let errors = |speedup| -> Vec<f64> {
        let ups = follow(&hot, prior(speedup), 30);
        [0.25, 0.5, 0.75]
            .iter()
            .map(|at| check_at(&ups, 3771, *at).expect("a forecast by then").error)
            .collect()
    };
    // Priced at the first pass's rate: about twice what followed.
    let flat = errors(1.0);
    assert!(flat.iter().all(|e| *e > 0.6), "{flat:?}");
    let sped = errors(LATER_PASS_SPEEDUP);
    assert!(sped.iter().all(|e| e.abs() < 0.4), "{sped:?}");
}

#[test]
fn following_a_guest_faster_than_the_link_expects_postcopy() {
    // 200 MiB/s asked over a 100 MiB/s cap (traces/dirty-200-over-100):
    // the policy switched to post-copy at 30.1 s, QEMU completed at about
    // 30.9 s. Pre-copy alone would converge only in minutes; the forecast
    // follows the policy instead.
    let obs = trace("dirty-200-over-100.jsonl");
    // The dirty rate the forecast before the run sampled: 184-208 MiB/s
    // in session 17's capped runs (QEMU's own figure in the later passes
    // is per pass, about 100 MiB/s, the guest rewriting its 1 GiB).
    let prior = Prior {
        zero_fraction: Some(0.43),
        dirty_rate: 200 << 20,
        send_rate: 100 << 20,
        later_pass_speedup: 0.0,
        postcopy_rate: 0,
    };
    let ups = follow(&obs, prior, 1000);
    // At a quarter the first pass still runs: the two stalled passes to
    // come are priced too.
    for at in [0.25, 0.5, 0.75] {
        let c = check_at(&ups, 30_900, at).expect("a forecast by then");
        eprintln!("at {at}: {:+.0} %", c.error * 100.0);
        assert!(c.error.abs() <= 0.3, "at {at}: {c:?}");
    }
}

#[test]
fn post_copy_over_a_real_link_is_priced_at_the_link() {
    // The same capped run, had the cap been the link (or
    // `--postcopy-bandwidth`): the 1.07 GB left at the switch then takes
    // about 10 s more, not the recorded second.
    let obs = trace("dirty-200-over-100.jsonl");
    let prior = |postcopy_rate| Prior {
        zero_fraction: Some(0.43),
        dirty_rate: 200 << 20,
        send_rate: 100 << 20,
        later_pass_speedup: 0.0,
        postcopy_rate,
    };
    let fast = follow(&obs, prior(0), 1000);
    let link = follow(&obs, prior(100 << 20), 1000);
    for at in [0.25, 0.5, 0.75] {
        let a = check_at(&fast, 30_900, at).expect("a forecast by then");
        let b = check_at(&link, 30_900, at).expect("a forecast by then");
        let more = b.update.remaining_ms as i64 - a.update.remaining_ms as i64;
        assert!((7_000..11_000).contains(&more), "at {at}: {more} ms");
    }
    // At the look where the policy switches (the second stalled pass
    // seen), only post-copy is left: 1.07 GB at 100 MiB/s, not that plus
    // a pass of pre-copy.
    let last = link.last().expect("forecasts");
    assert_eq!(last.at_ms, 30_053);
    assert!((9_500..11_000).contains(&last.remaining_ms), "{last:?}");
}

#[test]
fn only_a_thread_bound_first_pass_expects_faster_later_passes() {
    let est = |p50: f64| Estimate::spread(p50, 0.1, "test");
    let inputs = |send: f64, thread: f64| Inputs {
        memory: 1 << 30,
        zero_fraction: est(0.4),
        send_rate: est(send),
        thread_rate: est(thread),
        dirty_rate: est(0.0),
        setup_ms: est(100.0),
        switch_ms: est(30.0),
        postcopy_rate: est(thread * 3.0),
    };
    assert_eq!(
        later_pass_speedup(&inputs(400.0, 400.0)),
        LATER_PASS_SPEEDUP
    );
    // A 100 MiB/s cap or link under a 400 MiB/s thread: no faster later.
    assert_eq!(later_pass_speedup(&inputs(100.0, 400.0)), 1.0);
}

/// A run started without a forecast (no `migrate-forecast` first, as a
/// plain `tern migrate` is) has no zero fraction: it priced every page
/// left as data, and an idle guest's last pages are mostly zero. The
/// source samples the fraction in the background during the run and
/// hands it to the follower: the forecasts after that are as good as with
/// a forecast before the run.
#[test]
fn a_run_without_a_forecast_learns_the_zero_fraction_during_it() {
    let idle = trace("idle-unlimited-counts.jsonl");
    let unknown = follow(&idle, Prior::default(), 30);
    let blind = check_at(&unknown, 4639, 0.75).expect("a forecast by then");
    assert!(blind.error > 0.6, "priced as data: {blind:?}");

    let mut f = Follower::new(Prior::default());
    let mut ups: Vec<ForecastUpdate> = Vec::new();
    for (i, o) in idle.iter().enumerate() {
        if i == 2 {
            f.learn_zero_fraction(0.43);
        }
        f.see(o);
        if let Some(u) = f.forecast(&cfg(), 30) {
            if worth_recording(ups.last(), &u) {
                ups.push(u);
            }
        }
    }
    for at in [0.25, 0.5, 0.75] {
        let c = check_at(&ups, 4639, at).expect("a forecast by then");
        assert!(c.error.abs() <= 0.3, "learned, at {at}: {c:?}");
    }
}
