//! The forecast's inputs from what the agent measured just before: each
//! figure with its spread and where it came from.

use super::{Estimate, Inputs, SWITCH_MS};
use crate::policy::SETUP_MS;

/// What a forecast measured on the source just before.
#[derive(Debug, Clone, PartialEq)]
pub struct Measured {
    /// Guest memory, bytes.
    pub memory: u64,
    /// Fraction of the sampled pages that were all zero.
    pub zero_fraction: f64,
    /// Places sampled (pages come in runs, so these count, not pages).
    pub zero_samples: u64,
    /// QEMU's `calc-dirty-rate`, bytes/s.
    pub dirty_rate: u64,
    /// This host's single-thread copy speed now, bytes/s (see
    /// [`THREAD_PER_CPU`]).
    pub cpu_rate: u64,
    /// The ratio of migration pace to copy speed this host's past
    /// migrations showed, if any.
    pub learned_ratio: Option<f64>,
    /// The ratio of migration pace to the loopback probe this host's past
    /// migrations showed, if any (see [`THREAD_PER_LOOPBACK_PROBE`]).
    pub learned_probe_ratio: Option<f64>,
    /// The pace this host's past migrations achieved (effective bytes/s of
    /// copying time, [`crate::jobinfo::JobInfo::pace_sample`]), if any.
    pub learned_pace: Option<u64>,
    /// How far each of the two thread-rate estimates missed on this host's
    /// past migrations (see [`EstimateErrors`]), if both were tried.
    pub learned_errors: Option<EstimateErrors>,
    /// The link to the destination, bytes/s, or why it is not known.
    pub probe: Result<u64, String>,
    /// The probe's sink was on this host's loopback: the probe then
    /// measured this host's CPUs, as the migration will use them (see
    /// [`THREAD_PER_LOOPBACK_PROBE`]).
    pub probe_loopback: bool,
    /// The operator's `--bandwidth`, bytes/s.
    pub cap: Option<u64>,
    /// The operator's `--postcopy-bandwidth`, bytes/s.
    pub postcopy_cap: Option<u64>,
}

/// One migration thread's pace (normal pages, bytes/s) over this host's
/// single-thread copy speed measured just before ([`Measured::cpu_rate`]):
/// QEMU scans the dirty bitmap, checks each page for zeros, copies it into
/// its stream and the destination copies it out again, with the guest's
/// vCPU thread competing for the same cores. Measured with
/// `tern-bench converge` on the two-core TCG machine under load (an idle
/// 2 GiB guest: 390 MiB/s against a copy speed of 6.7 GiB/s,
/// docs/BENCHMARKS.md).
pub const THREAD_PER_CPU: f64 = 0.06;

/// One migration thread's pace (effective bytes/s) over a loopback probe
/// measured just before: both push bytes through the kernel from one
/// process to another on the same CPUs, so both move together with the
/// host's load. Five `tern-bench converge` migrations under load (load
/// average 8-14) gave 0.19, 0.27, 0.28, 0.37 and 0.38; the single-thread
/// copy speed's ratio varied three times as much (0.06-0.17).
pub const THREAD_PER_LOOPBACK_PROBE: (f64, f64, f64) = (0.2, 0.28, 0.38);

/// What a guest under TCG dirties while it migrates, as a fraction of what
/// `calc-dirty-rate` measured just before (p10, median, p90): the
/// migration's dirty tracking and its thread take CPU from the guest
/// (`tern-bench converge` under load: 37 of 44 MiB/s, 74 of 149).
pub const DIRTY_WHILE_MIGRATING: (f64, f64, f64) = (0.45, 0.7, 1.0);

/// One migration thread's pace on a quiet machine, bytes/s (`tern-bench
/// converge` session 4: 845-885 MiB/s). Fixed costs scale with how much
/// slower the host is now.
pub const QUIET_THREAD_RATE: f64 = 870.0 * 1048576.0;

/// Learned ratios are kept within this range: one odd migration (a guest
/// that stopped, a host swapping) must not throw the next forecast off by
/// more than the calibration's own spread. The floor is below every ratio
/// seen: on the two-core machine of sessions 14-19 the copy speed reads
/// 25-30 GB/s (a cache-resident copy) against a pace of 370-410 MiB/s, a
/// ratio of 0.013-0.016; a floor of 0.02 held the learned ratio above
/// that and forecast 510-590 MiB/s (-25 % and -29 % forecasts, session 19).
pub const LEARNED_RATIO_BOUNDS: (f64, f64) = (0.002, 1.0);

/// Pure: a learned ratio after one more migration's `sample`, a moving
/// average that gives the newest migration a quarter of the weight (the
/// host's speed drifts; one sample is noisy).
pub fn learn(old: Option<f64>, sample: f64) -> f64 {
    let (lo, hi) = LEARNED_RATIO_BOUNDS;
    let s = sample.clamp(lo, hi);
    match old {
        Some(o) => (o * 3.0 + s) / 4.0,
        None => s,
    }
}

/// How far the two estimates of one migration thread's rate missed the
/// pace that followed, on this host's past migrations: moving averages of
/// the squared logarithm of estimate over achieved pace (0.01 is about
/// 10 % off). On a host whose loopback probe is noisy (a busy guest's
/// vCPU takes the core it runs on: 1.9 to 4.2 GB/s in three runs in a row
/// on the two-core machine) the probe's is large; on a host whose speed
/// drifts between migrations, the learned pace's.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EstimateErrors {
    /// The loopback probe scaled by its learned ratio.
    pub probe: f64,
    /// The pace past migrations achieved.
    pub pace: f64,
}

/// The smallest error an estimate is credited with: two estimates that
/// were both nearly right on the last migrations weigh about the same,
/// and neither ever takes all the weight.
pub const ERROR_FLOOR: f64 = 0.05 * 0.05;

/// Pure: a learned squared error after one more migration, where the
/// estimate made before it was `estimate` and the pace achieved was
/// `achieved`; a quarter of the weight to the newest, as [`learn`].
pub fn learn_error(old: Option<f64>, estimate: f64, achieved: f64) -> Option<f64> {
    if estimate <= 0.0 || achieved <= 0.0 {
        return old;
    }
    let e = (estimate / achieved).ln().powi(2);
    Some(match old {
        Some(o) => (o * 3.0 + e) / 4.0,
        None => e,
    })
}

/// Pure: the probe's share of the blend, by inverse variance: each
/// estimate weighs in proportion to how close it came before; an even
/// split until both were tried.
pub fn probe_weight(errors: Option<EstimateErrors>) -> f64 {
    match errors {
        None => 0.5,
        Some(e) => {
            let p = 1.0 / e.probe.max(ERROR_FLOOR);
            let q = 1.0 / e.pace.max(ERROR_FLOOR);
            p / (p + q)
        }
    }
}

/// Pure: one migration thread's rate from two estimates of it, the
/// loopback probe scaled by its learned ratio (which follows the host's
/// load now) and the pace past migrations achieved (which does not, but
/// is not fooled by what the guest takes from the probe): their geometric
/// mean, the probe weighing `w`. With the guest dirtying 50 MiB/s the
/// probe read 20 % low while the migrations were no slower than idle
/// (+30 % forecasts), and when the host slows between migrations the pace
/// alone reads high: each error is cut (in the logarithm) by the other
/// estimate, the more so the less that estimate missed before.
pub fn blend(probe_scaled: f64, learned_pace: f64, w: f64) -> f64 {
    if probe_scaled <= 0.0 || learned_pace <= 0.0 {
        return probe_scaled.max(learned_pace);
    }
    let w = w.clamp(0.0, 1.0);
    (w * probe_scaled.ln() + (1.0 - w) * learned_pace.ln()).exp()
}

/// Pure: the inputs, named by source.
pub fn inputs(m: &Measured) -> Inputs {
    let mib = |b: f64| b / 1048576.0;
    let (ratio, ratio_source, ratio_spread) = match m.learned_ratio {
        Some(r) => (r, "this host's past migrations", 0.2),
        None => (THREAD_PER_CPU, "the calibrated ratio", 0.35),
    };
    let thread_rate = match (&m.probe, m.probe_loopback) {
        (Ok(p), true) if m.learned_probe_ratio.is_some() => {
            let r = m.learned_probe_ratio.unwrap_or(THREAD_PER_LOOPBACK_PROBE.1);
            let scaled = *p as f64 * r;
            match m.learned_pace {
                Some(pace) => {
                    let w = probe_weight(m.learned_errors);
                    Estimate::spread(
                        blend(scaled, pace as f64, w),
                        0.2,
                        format!(
                            "one migration thread here now: the loopback probe measured {:.0} MiB/s, x{r:.2} (this host's past migrations), weighed {:.0} % against the {:.0} MiB/s those migrations achieved (by how close each came before)",
                            mib(*p as f64),
                            w * 100.0,
                            mib(pace as f64)
                        ),
                    )
                }
                None => Estimate::spread(
                    scaled,
                    0.2,
                    format!(
                        "one migration thread here now: the loopback probe measured {:.0} MiB/s, x{r:.2} (this host's past migrations)",
                        mib(*p as f64)
                    ),
                ),
            }
        }
        (Ok(p), true) => {
            let (lo, mid, hi) = THREAD_PER_LOOPBACK_PROBE;
            let p = *p as f64;
            Estimate {
                p10: p * lo,
                p50: p * mid,
                p90: p * hi,
                source: format!(
                    "one migration thread here now: the loopback probe measured {:.0} MiB/s, x{mid} (calibrated)",
                    mib(p)
                ),
            }
        }
        _ => Estimate::spread(
            m.cpu_rate as f64 * ratio,
            ratio_spread,
            format!(
                "one migration thread here now: copy speed measured {:.0} MiB/s x {ratio:.3} ({ratio_source})",
                mib(m.cpu_rate as f64)
            ),
        ),
    };
    let thread = thread_rate.p50;
    let send_rate = match (&m.probe, m.cap) {
        (_, Some(c)) if (c as f64) < thread => Estimate::spread(
            c as f64,
            0.05,
            "--bandwidth (slower than one migration thread)",
        ),
        (Ok(p), _) if (*p as f64) < thread => Estimate::spread(
            *p as f64,
            0.2,
            "measured to the destination (the link is slower than one migration thread)",
        ),
        (Ok(p), _) => Estimate {
            source: format!(
                "one migration thread (the link measured {:.0} MiB/s, faster)",
                mib(*p as f64)
            ),
            ..thread_rate.clone()
        },
        (Err(why), _) => Estimate {
            source: format!("one migration thread (link not measured: {why})"),
            ..thread_rate.clone()
        },
    };
    let z = m.zero_fraction.clamp(0.0, 1.0);
    let n = m.zero_samples.max(1) as f64;
    let zero_fraction = Estimate::around(
        z,
        1.2816 * (z * (1.0 - z) / n).sqrt(),
        0.0,
        1.0,
        format!("{} sampled places of guest memory", m.zero_samples),
    );
    let d = m.dirty_rate as f64;
    let dirty_rate = Estimate {
        p10: d * DIRTY_WHILE_MIGRATING.0,
        p50: d * DIRTY_WHILE_MIGRATING.1,
        p90: d * DIRTY_WHILE_MIGRATING.2,
        source: format!(
            "QEMU's calc-dirty-rate over one second ({:.0} MiB/s), x{:.2}: a guest under TCG dirties less while it migrates",
            mib(d),
            DIRTY_WHILE_MIGRATING.1
        ),
    };
    let slowdown = (QUIET_THREAD_RATE / thread.max(1.0)).max(1.0);
    let setup_ms = Estimate::spread(
        SETUP_MS as f64 * slowdown.sqrt(),
        0.4,
        format!(
            "{SETUP_MS} ms on a quiet host, x{:.1} for this host's speed now",
            slowdown.sqrt()
        ),
    );
    let switch_ms = Estimate::spread(
        SWITCH_MS as f64 * slowdown.sqrt(),
        0.5,
        format!(
            "{SWITCH_MS} ms device state and last sync, x{:.1} for this host's speed now",
            slowdown.sqrt()
        ),
    );
    let postcopy_rate = postcopy_rate(m, &thread_rate);
    Inputs {
        memory: m.memory,
        zero_fraction,
        send_rate,
        thread_rate,
        dirty_rate,
        setup_ms,
        switch_ms,
        postcopy_rate,
    }
}

/// Pure: what post-copy's background copy runs at, the slowest of one
/// migration thread on pages the destination has placed before (as the
/// later passes go, [`super::LATER_PASS_SPEEDUP`]), the link when the
/// probe crossed one, and `--postcopy-bandwidth`. `--bandwidth` is not
/// among them: QEMU applies only `max-postcopy-bandwidth` in post-copy.
fn postcopy_rate(m: &Measured, thread_rate: &Estimate) -> Estimate {
    let mib = |b: f64| b / 1048576.0;
    let speedup = super::LATER_PASS_SPEEDUP;
    let mut best = Estimate {
        p10: thread_rate.p10 * speedup,
        p50: thread_rate.p50 * speedup,
        p90: thread_rate.p90 * speedup,
        source: format!(
            "one migration thread on pages placed before ({:.0} MiB/s x{speedup})",
            mib(thread_rate.p50)
        ),
    };
    if let (Ok(p), false) = (&m.probe, m.probe_loopback) {
        if (*p as f64) < best.p50 {
            best = Estimate::spread(
                *p as f64,
                0.2,
                format!("the link, measured {:.0} MiB/s", mib(*p as f64)),
            );
        }
    }
    if let Some(c) = m.postcopy_cap.filter(|c| (*c as f64) < best.p50) {
        best = Estimate::spread(c as f64, 0.05, "--postcopy-bandwidth");
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn measured() -> Measured {
        Measured {
            memory: 2048 * MIB,
            zero_fraction: 0.43,
            zero_samples: 256,
            dirty_rate: 0,
            cpu_rate: 4000 * MIB,
            learned_ratio: None,
            learned_probe_ratio: None,
            learned_pace: None,
            learned_errors: None,
            probe: Ok(700 * MIB),
            probe_loopback: false,
            cap: None,
            postcopy_cap: None,
        }
    }

    #[test]
    fn the_thread_not_a_fast_probe_sets_the_pace_and_says_so() {
        let i = inputs(&measured());
        let thread = 4000.0 * THREAD_PER_CPU * MIB as f64;
        assert!((i.send_rate.p50 - thread).abs() < 1.0);
        assert!(
            i.send_rate.source.contains("link measured 700 MiB/s"),
            "{i:?}"
        );
        assert!(i.thread_rate.source.contains("calibrated"));
    }

    #[test]
    fn a_slower_link_or_cap_sets_the_pace() {
        let slow = inputs(&Measured {
            probe: Ok(50 * MIB),
            ..measured()
        });
        assert_eq!(slow.send_rate.p50, (50 * MIB) as f64);
        let capped = inputs(&Measured {
            cap: Some(20 * MIB),
            ..measured()
        });
        assert!(capped.send_rate.source.starts_with("--bandwidth"));
        let local = inputs(&Measured {
            probe_loopback: true,
            ..measured()
        });
        assert!((local.thread_rate.p50 - 700.0 * 0.28 * MIB as f64).abs() < 1.0);
        assert!(local.send_rate.source.starts_with("one migration thread"));
        assert!(local.thread_rate.source.contains("loopback probe"));
        let learned = inputs(&Measured {
            learned_ratio: Some(0.1),
            ..measured()
        });
        assert!(learned.thread_rate.source.contains("past migrations"));
        let local_learned = inputs(&Measured {
            probe_loopback: true,
            learned_probe_ratio: Some(0.41),
            ..measured()
        });
        assert!((local_learned.thread_rate.p50 - 700.0 * 0.41 * MIB as f64).abs() < 1.0);
        assert!(local_learned.thread_rate.source.contains("past migrations"));
        // With the pace those migrations achieved: between the two.
        let paced = inputs(&Measured {
            probe_loopback: true,
            learned_probe_ratio: Some(0.41),
            learned_pace: Some(400 * MIB),
            ..measured()
        });
        let scaled = 700.0 * 0.41 * MIB as f64;
        let want = (scaled * (400 * MIB) as f64).sqrt();
        assert!((paced.thread_rate.p50 - want).abs() < 1.0);
        assert!(paced
            .thread_rate
            .source
            .contains("400 MiB/s those migrations achieved"));
    }

    #[test]
    fn a_blend_is_the_geometric_mean_and_survives_a_missing_side() {
        assert!((blend(100.0, 400.0, 0.5) - 200.0).abs() < 1e-9);
        assert!((blend(100.0, 400.0, 1.0) - 100.0).abs() < 1e-9);
        assert!((blend(100.0, 400.0, 0.0) - 400.0).abs() < 1e-9);
        assert_eq!(blend(0.0, 400.0, 0.5), 400.0);
        assert_eq!(blend(100.0, 0.0, 0.5), 100.0);
    }

    #[test]
    fn the_estimate_that_missed_less_weighs_more() {
        assert_eq!(probe_weight(None), 0.5);
        // The probe missed by ~40 %, the pace by ~5 %: the pace leads.
        let noisy_probe = EstimateErrors {
            probe: 0.4f64.powi(2),
            pace: 0.05f64.powi(2),
        };
        let w = probe_weight(Some(noisy_probe));
        assert!(w < 0.05, "{w}");
        // Both nearly right: about even, whatever the exact figures.
        let both_good = EstimateErrors {
            probe: 0.0,
            pace: 0.0001,
        };
        assert_eq!(probe_weight(Some(both_good)), 0.5);
    }

    #[test]
    fn an_error_is_learned_in_the_logarithm_a_quarter_at_a_time() {
        let e = learn_error(None, 200.0, 100.0).unwrap();
        assert!((e - 2f64.ln().powi(2)).abs() < 1e-12);
        // As far off above as below.
        assert!((learn_error(None, 50.0, 100.0).unwrap() - e).abs() < 1e-12);
        let next = learn_error(Some(e), 100.0, 100.0).unwrap();
        assert!((next - e * 0.75).abs() < 1e-12);
        // No estimate: nothing learned.
        assert_eq!(learn_error(Some(0.3), 0.0, 100.0), Some(0.3));
    }

    #[test]
    fn learning_weighs_the_newest_migration_a_quarter_and_bounds_it() {
        assert_eq!(learn(None, 0.4), 0.4);
        assert!((learn(Some(0.28), 0.4) - 0.31).abs() < 1e-9);
        assert_eq!(learn(None, 50.0), LEARNED_RATIO_BOUNDS.1);
        assert_eq!(learn(None, 0.0), LEARNED_RATIO_BOUNDS.0);
        // What the two-core machine's migrations showed (pace 370 MiB/s,
        // copy speed 27 GB/s) is learned as it is.
        let r = 370.0 / 27_000.0;
        assert_eq!(learn(None, r), r);
    }

    #[test]
    fn post_copy_goes_at_the_link_or_its_own_cap_never_the_bandwidth_cap() {
        let thread = inputs(&measured()).thread_rate.p50;
        // A fast link with `--bandwidth`: one thread on placed pages.
        let capped = inputs(&Measured {
            cap: Some(100 * MIB),
            probe: Ok(10_000 * MIB),
            ..measured()
        });
        assert!((capped.postcopy_rate.p50 - 3.0 * thread).abs() < 1.0);
        // `--postcopy-bandwidth` below that.
        let own = inputs(&Measured {
            postcopy_cap: Some(100 * MIB),
            ..measured()
        });
        assert_eq!(own.postcopy_rate.p50, 100.0 * MIB as f64);
        assert_eq!(own.postcopy_rate.source, "--postcopy-bandwidth");
        // A remote link slower than the thread.
        let link = inputs(&Measured {
            probe: Ok(50 * MIB),
            probe_loopback: false,
            ..measured()
        });
        assert_eq!(link.postcopy_rate.p50, 50.0 * MIB as f64);
    }

    #[test]
    fn a_slow_host_pays_more_fixed_time() {
        let quiet = inputs(&Measured {
            cpu_rate: (QUIET_THREAD_RATE / THREAD_PER_CPU) as u64,
            ..measured()
        });
        assert!((quiet.setup_ms.p50 - SETUP_MS as f64).abs() < 1.0);
        let busy = inputs(&Measured {
            cpu_rate: (QUIET_THREAD_RATE / THREAD_PER_CPU / 4.0) as u64,
            ..measured()
        });
        assert!((busy.setup_ms.p50 - 2.0 * SETUP_MS as f64).abs() < 1.0);
        assert!(busy.zero_fraction.p10 < 0.43 && busy.zero_fraction.p90 > 0.43);
    }
}
