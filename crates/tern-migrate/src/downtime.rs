//! The downtime limit: start low, raise it only when the measured rates
//! say a higher one pays.
//!
//! A lower limit means a shorter final pause, paid for with more pre-copy
//! passes. While the guest dirties much less than the link carries, those
//! passes are short (each sends what the last one left dirty, a fraction
//! `dirty / bandwidth` of it), so a low limit costs almost nothing. As the
//! dirty rate nears the link's speed each extra pass costs nearly as much
//! as the last, and a higher limit saves real time. Nova steps its
//! `live_migration_downtime` up on a clock whatever the guest does; Tern
//! steps it up at a pass boundary when [`step`] says the lowest limit
//! whose [`cost`] (total time plus [`PAUSE_WEIGHT`] times the pause) is
//! within [`SLACK`] of the cheapest is higher than the current one, with
//! the figures behind it as the reason.

use crate::policy::predict;

/// The limits the policy steps through, ms. The ceiling is the operator's
/// `--max-downtime` (or the policy default), which may fall between them.
pub const STEPS_MS: [u64; 10] = [10, 30, 50, 75, 100, 150, 200, 300, 500, 1000];

/// The limit a migration under the policy starts with, ms: well below
/// Nova's first step (50 ms) and QEMU's default (300 ms). QEMU switches
/// over once what is left fits in the limit at its measured rate, so the
/// limit sets how much the last pass may carry; a guest that dirties
/// less than the link carries pays one or two short passes for it (an
/// A/B of 10 against 30 ms, ten runs each, left the total unchanged and
/// cut the median downtime at 50 and 200 MiB/s from 10-13 to 7 ms; see
/// docs/BENCHMARKS.md). The final pause also holds the device state and
/// the last dirty-bitmap sync, a few ms under TCG (see
/// [`crate::forecast::SWITCH_MS`]).
pub const START_MS: u64 = STEPS_MS[0];

/// A higher limit is only worth it when it saves more than this fraction
/// of the whole migration's time (and at least [`MIN_SAVING_MS`]): the
/// passes a low limit adds are then a small price for a short pause.
pub const SLACK: f64 = 0.05;

/// Savings below this many ms never justify a longer pause.
pub const MIN_SAVING_MS: u64 = 100;

/// A ms of pause weighs this many ms of total time: the pause is what the
/// guest's users feel, the total only the operator's wait. A limit is
/// judged by its total time plus this weight times its pause.
pub const PAUSE_WEIGHT: u64 = 5;

/// Pure: what a limit costs with this prediction, ms: the total time plus
/// [`PAUSE_WEIGHT`] times the pause.
pub fn cost(p: &crate::policy::Prediction) -> u64 {
    p.total_ms + PAUSE_WEIGHT * p.downtime_ms
}

/// A raise and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Raise {
    /// The new limit, ms.
    pub ms: u64,
    /// One line with the figures behind it.
    pub reason: String,
}

/// Pure: the candidate limits from `current` up to `ceiling` (both
/// included).
pub fn candidates(current: u64, ceiling: u64) -> Vec<u64> {
    let mut v: Vec<u64> = std::iter::once(current)
        .chain(
            STEPS_MS
                .iter()
                .copied()
                .filter(|&s| s > current && s < ceiling),
        )
        .collect();
    if ceiling > current {
        v.push(ceiling);
    }
    v
}

/// Pure: the lowest limit from `current` up to `ceiling` whose predicted
/// [`cost`] to finish (`remaining` bytes at `bandwidth`, the guest
/// dirtying `dirty_rate`) is within [`SLACK`] of the whole run's (the
/// `elapsed_ms` so far plus the cheapest finish), or `None` when no limit
/// up to the ceiling lets pre-copy converge (the deadline steps of
/// [`crate::policy::decide`] take over then).
pub fn lowest_that_pays(
    remaining: u64,
    bandwidth: u64,
    dirty_rate: u64,
    current: u64,
    ceiling: u64,
    elapsed_ms: u64,
) -> Option<u64> {
    let options: Vec<(u64, u64)> = candidates(current, ceiling)
        .into_iter()
        .filter_map(|ms| {
            let p = predict(remaining, bandwidth, dirty_rate, ms, 30);
            p.converges.then_some((ms, cost(&p)))
        })
        .collect();
    let best = options.iter().map(|(_, t)| *t).min()?;
    let slack = (((elapsed_ms + best) as f64 * SLACK) as u64).max(MIN_SAVING_MS);
    options
        .iter()
        .find(|(_, t)| *t <= best + slack)
        .map(|(ms, _)| *ms)
}

/// Pure: the policy's downtime step at a pass boundary, if the measured
/// rates call for one.
pub fn step(
    remaining: u64,
    bandwidth: u64,
    dirty_rate: u64,
    current: u64,
    ceiling: u64,
    elapsed_ms: u64,
) -> Option<Raise> {
    if bandwidth == 0 || current >= ceiling {
        return None;
    }
    let ms = lowest_that_pays(
        remaining, bandwidth, dirty_rate, current, ceiling, elapsed_ms,
    )?;
    if ms <= current {
        return None;
    }
    let now = predict(remaining, bandwidth, dirty_rate, current, 30);
    let then = predict(remaining, bandwidth, dirty_rate, ms, 30);
    let now_text = if now.converges {
        format!("{} ms ({} passes)", now.total_ms, now.iterations)
    } else {
        "never".to_string()
    };
    Some(Raise {
        ms,
        reason: format!(
            "raising the downtime limit from {current} to {ms} ms: guest dirtying {} MiB/s against {} MiB/s sent ({:.0} %), {} MiB left after {} ms; finishing at {current} ms takes {now_text}, at {ms} ms {} ms",
            dirty_rate >> 20,
            bandwidth >> 20,
            dirty_rate as f64 * 100.0 / bandwidth as f64,
            remaining >> 20,
            elapsed_ms,
            then.total_ms
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn candidates_run_from_the_current_limit_to_the_ceiling() {
        assert_eq!(candidates(30, 300), vec![30, 50, 75, 100, 150, 200, 300]);
        assert_eq!(candidates(100, 120), vec![100, 120]);
        assert_eq!(candidates(300, 300), vec![300]);
    }

    #[test]
    fn a_guest_far_below_the_link_keeps_the_low_limit() {
        // Dirtying a fifth of what is sent: each extra pass is short.
        assert_eq!(
            step(200 * MIB, 200 * MIB, 40 * MIB, START_MS, 1000, 5000),
            None
        );
        // Idle.
        assert_eq!(step(20 * MIB, 200 * MIB, 0, START_MS, 1000, 5000), None);
    }

    #[test]
    fn a_guest_near_the_link_gets_a_higher_limit_with_the_figures() {
        // Dirtying 90 % of the link: at the start limit pre-copy never
        // converges; the cheapest limit, pause weighed in, is higher.
        let r = step(300 * MIB, 200 * MIB, 180 * MIB, START_MS, 1000, 5000).expect("a raise");
        assert!(r.ms > START_MS && r.ms <= 1000, "{r:?}");
        assert!(r.reason.contains("180 MiB/s") && !r.reason.contains('\n'));
        assert!(!predict(300 * MIB, 200 * MIB, 180 * MIB, START_MS, 30).converges);
    }

    #[test]
    fn a_long_pause_is_not_bought_with_a_little_time() {
        // The hot guest recorded under load (dirty-200-unlimited-fast-pass2):
        // 634 MiB left at pass 2, 141 MiB/s dirtied of 348 sent. A 500 ms
        // limit would finish 0.2 s sooner with a 0.3 s pause: not worth it.
        assert_eq!(
            step(634 * MIB, 348 * MIB, 141 * MIB, START_MS, 1000, 4577),
            None
        );
    }

    #[test]
    fn the_longer_the_run_the_less_a_few_extra_passes_matter() {
        // The hot case recorded under load (traces/dirty-200-unlimited):
        // 132 MiB left after 7.2 s, 40 of 250 MiB/s dirtied. The start
        // limit costs a few short passes, well inside 5 % of the run.
        assert_eq!(
            step(132 * MIB, 250 * MIB, 40 * MIB, START_MS, 1000, 7200),
            None
        );
        // Dirtying 85 % of what is sent: at the start limit many passes;
        // a longer run absorbs more of them before a longer pause pays.
        let early = step(132 * MIB, 250 * MIB, 212 * MIB, START_MS, 1000, 0);
        let late = step(132 * MIB, 250 * MIB, 212 * MIB, START_MS, 1000, 60_000);
        assert!(early.is_some(), "{early:?}");
        assert!(
            late.as_ref()
                .is_none_or(|l| l.ms <= early.as_ref().unwrap().ms),
            "{late:?}"
        );
    }

    #[test]
    fn no_limit_helps_a_guest_faster_than_the_link() {
        assert_eq!(
            step(1 << 30, 100 * MIB, 150 * MIB, START_MS, 1000, 5000),
            None
        );
    }

    #[test]
    fn the_ceiling_is_never_passed() {
        let r = step(300 * MIB, 200 * MIB, 190 * MIB, START_MS, 120, 5000);
        assert!(r.as_ref().is_none_or(|r| r.ms <= 120), "{r:?}");
        assert_eq!(step(300 * MIB, 200 * MIB, 190 * MIB, 120, 120, 5000), None);
    }
}
