//! Forecasts as ranges, before and during a migration.
//!
//! Before: every input is an [`Estimate`] (p10, median, p90) that names
//! where it came from. [`range`] runs the convergence model
//! ([`crate::policy::predict_with_policy`]) over a fixed Latin-hypercube
//! set of draws of those inputs and reports the p10, median and p90 of the
//! total time and of the pause. Besides the copy itself the model counts
//! what every migration pays whatever the guest does: starting the
//! destination and the hand-offs ([`Inputs::setup_ms`]), the scan of zero
//! pages at the speed one migration thread has on this host now
//! ([`Inputs::thread_rate`], not the link's), and the switch-over with the
//! device state ([`Inputs::switch_ms`]).
//!
//! During: [`Follower`] turns each look at QEMU's figures into a
//! [`ForecastUpdate`] (time until QEMU completes, and the final pause),
//! from the run in hand only: the rate the run has achieved so far, the
//! zero pages still to scan, and the dirty rate QEMU measures.

use crate::plan::ZERO_PAGE_COST;
use crate::policy::{predict_with_policy, Observation, PolicyConfig, SETUP_MS};
use serde::{Deserialize, Serialize};

mod inputs;
pub use inputs::{
    inputs, learn, learn_error, EstimateErrors, Measured, QUIET_THREAD_RATE, THREAD_PER_CPU,
};

/// One input of a forecast: its likely value, the span it probably falls
/// in, and where it came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Estimate {
    /// Low end (10th percentile).
    pub p10: f64,
    /// Median.
    pub p50: f64,
    /// High end (90th percentile).
    pub p90: f64,
    /// Where the figure came from, for the operator.
    pub source: String,
}

/// The standard normal's 90th percentile.
const Z90: f64 = 1.281_551_565_545;

impl Estimate {
    /// A figure known to within `rel` (0.2: p10 = median / 1.2, p90 =
    /// median * 1.2).
    pub fn spread(p50: f64, rel: f64, source: impl Into<String>) -> Self {
        Estimate {
            p10: p50 / (1.0 + rel),
            p50,
            p90: p50 * (1.0 + rel),
            source: source.into(),
        }
    }

    /// A figure known to within `abs` either way, kept inside `lo..=hi`.
    pub fn around(p50: f64, abs: f64, lo: f64, hi: f64, source: impl Into<String>) -> Self {
        Estimate {
            p10: (p50 - abs).clamp(lo, hi),
            p50,
            p90: (p50 + abs).clamp(lo, hi),
            source: source.into(),
        }
    }

    /// Pure: the value at standard-normal quantile `z` (a split normal:
    /// the median and the two 10 % points hold), never below zero.
    pub fn at(&self, z: f64) -> f64 {
        let v = if z >= 0.0 {
            self.p50 + (self.p90 - self.p50) * z / Z90
        } else {
            self.p50 + (self.p50 - self.p10) * z / Z90
        };
        v.max(0.0)
    }
}

/// p10, median and p90 of a forecast figure, ms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Range {
    /// Low end: one migration in ten is faster.
    pub p10_ms: u64,
    /// Median.
    pub p50_ms: u64,
    /// High end: one migration in ten is slower.
    pub p90_ms: u64,
}

/// What the model needs, each figure with its spread and its source.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Inputs {
    /// Guest memory, bytes (known exactly).
    pub memory: u64,
    /// Fraction of memory in zero pages (sampled).
    pub zero_fraction: Estimate,
    /// Bytes/s normal pages go out at: the link or one migration thread,
    /// whichever is slower.
    pub send_rate: Estimate,
    /// Bytes/s one migration thread moves on this host now; a zero page
    /// costs it [`ZERO_PAGE_COST`] of a normal one.
    pub thread_rate: Estimate,
    /// Bytes/s the guest dirties.
    pub dirty_rate: Estimate,
    /// Ms outside QEMU's copy: starting the destination, the agents'
    /// hand-offs, resuming the guest.
    pub setup_ms: Estimate,
    /// Ms of the final pause whatever is left to send: the last bitmap
    /// sync, the device state, starting the destination's vCPUs.
    pub switch_ms: Estimate,
    /// Bytes/s the destination pulls the rest at once in post-copy: the
    /// link or `--postcopy-bandwidth` (QEMU does not apply `--bandwidth`
    /// there), or one migration thread on pages already placed. Absent
    /// (zero) in a forecast from an older agent.
    #[serde(default)]
    pub postcopy_rate: Estimate,
}

/// A forecast range with the inputs behind it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RangeForecast {
    /// Total time, from the command to the guest running on the
    /// destination.
    pub total: Range,
    /// The guest's pause.
    pub downtime: Range,
    /// The downtime limit the policy is expected to settle on, ms.
    pub downtime_limit_ms: u64,
    /// The inputs, with their sources.
    pub inputs: Inputs,
}

/// One draw of every input.
#[derive(Debug, Clone, Copy)]
struct Draw {
    zero_fraction: f64,
    send: f64,
    thread: f64,
    dirty: f64,
    setup: f64,
    switch: f64,
    postcopy: f64,
}

/// Of what the guest dirties during the first pass, the fraction the next
/// pass must send again: a page written before the pass reached it goes
/// once, so a guest writing evenly over its memory leaves half of its
/// writes behind (the hot trace: 185 MB left after 7 s at 39 MB/s).
pub const FIRST_PASS_REDIRTY: f64 = 0.5;

/// Draws per forecast (odd, so the median is one of them).
pub const DRAWS: usize = 199;

/// Pure: the total time and pause of one draw, ms, and the downtime limit
/// the policy would use.
fn model(cfg: &PolicyConfig, memory: u64, d: &Draw) -> (u64, u64, u64) {
    let send = d.send.max(1.0);
    let thread = d.thread.max(1.0);
    let zf = d.zero_fraction.clamp(0.0, 1.0);
    let data = memory as f64 * (1.0 - zf);
    let zero = memory as f64 * zf;
    // The first pass: normal pages at the send rate, zero pages scanned at
    // the thread's speed; counted in bytes at the send rate.
    let first_pass_s = data / send + zero * ZERO_PAGE_COST / thread;
    let effective = (first_pass_s * send) as u64;
    let (send, dirty) = (send as u64, d.dirty as u64);
    // The limit the policy settles on for what the first pass leaves.
    let left = (d.dirty * first_pass_s * FIRST_PASS_REDIRTY).min(data) as u64;
    let limit = crate::downtime::lowest_that_pays(
        left,
        send,
        dirty,
        crate::downtime::START_MS,
        cfg.max_downtime_ms,
        (first_pass_s * 1000.0) as u64,
    )
    .unwrap_or(cfg.max_downtime_ms);
    let p = predict_with_policy(cfg, effective, send, dirty, limit, d.postcopy as u64);
    let copy = p.total_ms.saturating_sub(SETUP_MS);
    let pause = p.downtime_ms + d.switch as u64;
    (copy + d.setup as u64 + d.switch as u64, pause, limit)
}

/// Pure: the inverse of the standard normal distribution (Acklam's
/// rational approximation, relative error below 1.2e-9).
pub fn inverse_normal(p: f64) -> f64 {
    const A: [f64; 6] = [
        -3.969_683_028_665_376e1,
        2.209_460_984_245_205e2,
        -2.759_285_104_469_687e2,
        1.383_577_518_672_69e2,
        -3.066_479_806_614_716e1,
        2.506_628_277_459_239,
    ];
    const B: [f64; 5] = [
        -5.447_609_879_822_406e1,
        1.615_858_368_580_409e2,
        -1.556_989_798_598_866e2,
        6.680_131_188_771_972e1,
        -1.328_068_155_288_572e1,
    ];
    const C: [f64; 6] = [
        -7.784_894_002_430_293e-3,
        -3.223_964_580_411_365e-1,
        -2.400_758_277_161_838,
        -2.549_732_539_343_734,
        4.374_664_141_464_968,
        2.938_163_982_698_783,
    ];
    const D: [f64; 4] = [
        7.784_695_709_041_462e-3,
        3.224_671_290_700_398e-1,
        2.445_134_137_142_996,
        3.754_408_661_907_416,
    ];
    let p = p.clamp(1e-12, 1.0 - 1e-12);
    let tail = |q: f64| {
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    };
    if p < 0.02425 {
        tail((-2.0 * p.ln()).sqrt())
    } else if p > 1.0 - 0.02425 {
        -tail((-2.0 * (1.0 - p).ln()).sqrt())
    } else {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    }
}

/// Pure: `n` strata in an order fixed by `seed` (xorshift, Fisher-Yates).
fn shuffled(n: usize, seed: u64) -> Vec<usize> {
    let mut v: Vec<usize> = (0..n).collect();
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    for i in (1..n).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.swap(i, (x % (i as u64 + 1)) as usize);
    }
    v
}

/// Pure: p10, median and p90 of some values.
fn percentiles(mut v: Vec<u64>) -> Range {
    v.sort_unstable();
    let at = |q: f64| v.get(((v.len() - 1) as f64 * q).round() as usize).copied();
    Range {
        p10_ms: at(0.1).unwrap_or(0),
        p50_ms: at(0.5).unwrap_or(0),
        p90_ms: at(0.9).unwrap_or(0),
    }
}

/// Pure: the forecast range for these inputs under the policy `cfg`.
/// The draws are the same every time (a Latin hypercube with fixed
/// seeds), so the same inputs give the same range.
pub fn range(cfg: &PolicyConfig, inputs: &Inputs) -> RangeForecast {
    let strata: Vec<Vec<usize>> = (0..7).map(|j| shuffled(DRAWS, j as u64 + 1)).collect();
    let z = |j: usize, i: usize| inverse_normal((strata[j][i] as f64 + 0.5) / DRAWS as f64);
    let mut totals = Vec::with_capacity(DRAWS);
    let mut pauses = Vec::with_capacity(DRAWS);
    for i in 0..DRAWS {
        let d = Draw {
            zero_fraction: inputs.zero_fraction.at(z(0, i)),
            send: inputs.send_rate.at(z(1, i)),
            thread: inputs.thread_rate.at(z(2, i)),
            dirty: inputs.dirty_rate.at(z(3, i)),
            setup: inputs.setup_ms.at(z(4, i)),
            switch: inputs.switch_ms.at(z(5, i)),
            postcopy: inputs.postcopy_rate.at(z(6, i)),
        };
        let (t, p, _) = model(cfg, inputs.memory, &d);
        totals.push(t);
        pauses.push(p);
    }
    let median = Draw {
        zero_fraction: inputs.zero_fraction.p50,
        send: inputs.send_rate.p50,
        thread: inputs.thread_rate.p50,
        dirty: inputs.dirty_rate.p50,
        setup: inputs.setup_ms.p50,
        switch: inputs.switch_ms.p50,
        postcopy: inputs.postcopy_rate.p50,
    };
    let (_, _, limit) = model(cfg, inputs.memory, &median);
    RangeForecast {
        total: percentiles(totals),
        downtime: percentiles(pauses),
        downtime_limit_ms: limit,
        inputs: inputs.clone(),
    }
}

/// The final pause whatever is left to send, ms: QEMU 10 under TCG
/// paused an idle guest for 4-6 ms on a quiet machine and 20-60 ms on a
/// loaded one (`tern-bench converge`, docs/BENCHMARKS.md).
pub const SWITCH_MS: u64 = 20;

/// Seconds post-copy took after the switch, recorded over a 100 MiB/s cap
/// (traces/dirty-200-over-100: 30.1 s to 30.9 s).
const POSTCOPY_TAIL_S: f64 = 1.0;

/// One forecast made during a migration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForecastUpdate {
    /// When it was made: ms of QEMU's total time.
    pub at_ms: u64,
    /// Expected time until QEMU completes, ms.
    pub remaining_ms: u64,
    /// Expected final pause, ms.
    pub downtime_ms: u64,
}

/// What a forecast made before the migration knew that QEMU's figures do
/// not say at first.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
pub struct Prior {
    /// Fraction of memory in zero pages.
    pub zero_fraction: Option<f64>,
    /// Dirty rate, bytes/s.
    pub dirty_rate: u64,
    /// The send rate it forecast, bytes/s: used until the run has shown
    /// its own.
    #[serde(default)]
    pub send_rate: u64,
    /// How much faster than the first pass the later passes are expected
    /// to go ([`LATER_PASS_SPEEDUP`] when one migration thread, not the
    /// link or a cap, set the first pass's pace; 1 or 0 otherwise).
    #[serde(default)]
    pub later_pass_speedup: f64,
    /// The post-copy rate it forecast, bytes/s ([`Inputs::postcopy_rate`]);
    /// 0: not known, and post-copy's tail is [`POSTCOPY_TAIL_S`].
    #[serde(default)]
    pub postcopy_rate: u64,
}

/// How much faster the passes after the first went than the first, when
/// one migration thread set the pace: the destination's first touch of
/// each page (the kernel allocating it) costs only in the first pass.
/// Recorded: 150 then 508 MiB/s (3.4x, session 10,
/// `traces/dirty-200-unlimited-fast-pass2.jsonl`), 370 then 1 200-1 500
/// MiB/s (about 4x, session 14, `...-fast-pass2-qemu10.jsonl`). The lower
/// figure: a forecast made in the first pass priced the later passes at
/// the first pass's rate, and came out twice what followed.
pub const LATER_PASS_SPEEDUP: f64 = 3.0;

/// Pure: how much faster than the first pass a follower expects the later
/// passes, after a forecast with these inputs: [`LATER_PASS_SPEEDUP`] only
/// when one migration thread set the pace; a link or a `--bandwidth` cap
/// that is slower is as slow in every pass.
pub fn later_pass_speedup(inputs: &Inputs) -> f64 {
    if inputs.send_rate.p50 >= inputs.thread_rate.p50 {
        LATER_PASS_SPEEDUP
    } else {
        1.0
    }
}

/// Follows a migration look by look (pure state, no I/O): what the run
/// has achieved so far, to forecast the rest from.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Follower {
    prior: Prior,
    /// The first look: (elapsed ms, bytes sent, zero pages, remaining).
    first: Option<(u64, u64, u64, u64)>,
    last: Option<Observation>,
    /// QEMU's send rate smoothed over the looks after the first pass,
    /// bytes/s (0 until then): what the remaining passes go at.
    tail_rate: u64,
    /// The pass last seen and what was left when it began.
    pass: (u64, u64),
    /// Passes in a row that did not shrink the remainder by a fifth, as
    /// the policy counts them (it switches to post-copy after two).
    stalled: u32,
}

/// Below this much run time, the rate so far says little: the prior and
/// QEMU's instantaneous figure are used instead.
const MIN_RUN_MS: u64 = 300;

impl Follower {
    /// A follower that knows what the forecast before the run sampled.
    pub fn new(prior: Prior) -> Self {
        Follower {
            prior,
            ..Default::default()
        }
    }

    /// The zero fraction, sampled during the run when no forecast before
    /// it did (a prior one stays: it was sampled before the pass began).
    pub fn learn_zero_fraction(&mut self, fraction: f64) {
        if self.prior.zero_fraction.is_none() {
            self.prior.zero_fraction = Some(fraction.clamp(0.0, 1.0));
        }
    }

    /// Takes one look in.
    pub fn see(&mut self, obs: &Observation) {
        if self.first.is_none() {
            self.first = Some((
                obs.elapsed_ms,
                obs.transferred,
                obs.zero_pages,
                obs.remaining,
            ));
        }
        if obs.iteration != self.pass.0 {
            let (p, start) = self.pass;
            self.stalled = if p > 0 && obs.remaining * 5 >= start * 4 {
                self.stalled + 1
            } else {
                0
            };
            self.pass = (obs.iteration, obs.remaining);
        }
        if obs.iteration >= 2 && obs.bandwidth > 0 {
            self.tail_rate = match self.tail_rate {
                0 => obs.bandwidth,
                a => (a * 3 + obs.bandwidth) / 4,
            };
        }
        self.last = Some(*obs);
    }

    /// Pure: the effective rate the run has achieved, bytes/s at the send
    /// rate: normal bytes sent plus zero pages at their scan cost, over
    /// the time since the first look. Older traces without the byte
    /// counts fall back to how fast the remainder shrank.
    fn rate(&self) -> Option<f64> {
        let (t0, sent0, zero0, rem0) = self.first?;
        let o = self.last?;
        let dt = o.elapsed_ms.saturating_sub(t0);
        if dt < MIN_RUN_MS {
            return match (o.bandwidth, self.prior.send_rate) {
                (0, 0) => None,
                (0, p) => Some(p as f64),
                (b, _) => Some(b as f64),
            };
        }
        let secs = dt as f64 / 1000.0;
        if o.transferred > 0 {
            let zero = o.zero_pages.saturating_sub(zero0) as f64 * page(&o) * ZERO_PAGE_COST;
            let sent = o.transferred.saturating_sub(sent0) as f64;
            return Some(((sent + zero) / secs).max(1.0));
        }
        (o.iteration <= 1)
            .then(|| rem0.saturating_sub(o.remaining) as f64 / secs)
            .filter(|r| *r > 0.0)
            .or((o.bandwidth > 0).then_some(o.bandwidth as f64))
    }

    /// Pure: the forecast at the last look, with the downtime limit in
    /// force, or `None` before QEMU reported anything useful.
    pub fn forecast(&self, cfg: &PolicyConfig, limit_ms: u64) -> Option<ForecastUpdate> {
        let o = self.last?;
        let rate = self.rate()?;
        // Until a later pass has shown its rate, the first pass's, sped up
        // as past runs showed the later passes go.
        let bw = match self.tail_rate {
            0 => (rate * self.prior.later_pass_speedup.max(1.0)) as u64,
            t => t,
        };
        let dirty = if o.iteration >= 2 {
            o.dirty_rate
        } else {
            self.prior.dirty_rate
        };
        // First pass: what is left of it, zero pages at their scan cost.
        // Older traces do not carry the memory size: the first look's
        // remainder is the whole memory.
        let memory = match (o.memory, self.first) {
            (0, Some((_, _, _, rem0))) => rem0,
            (m, _) => m,
        };
        let (first_left_s, after_first) = if o.iteration <= 1 {
            let zero_total = self.prior.zero_fraction.unwrap_or(0.0) * memory as f64;
            let zero_sent = o.zero_pages as f64 * page(&o);
            let zero_left = (zero_total - zero_sent).clamp(0.0, o.remaining as f64);
            let data_left = o.remaining as f64 - zero_left;
            let s = (data_left + zero_left * ZERO_PAGE_COST) / rate;
            let pass_s = o.elapsed_ms as f64 / 1000.0 + s;
            let data = (memory as f64 - zero_total).max(0.0);
            (
                s,
                (dirty as f64 * pass_s * FIRST_PASS_REDIRTY).min(data) as u64,
            )
        } else {
            (0.0, o.remaining)
        };
        let left_cfg = PolicyConfig {
            deadline_ms: cfg.deadline_ms.saturating_sub(o.elapsed_ms),
            ..*cfg
        };
        let first = (first_left_s, after_first);
        if let Some(u) = self.postcopy_ahead(cfg, &o, bw, dirty, first) {
            return Some(u);
        }
        // The policy's steps run forward: a longer pause, post-copy on
        // stalled passes, the pause at the deadline.
        let p = predict_with_policy(
            &left_cfg,
            after_first,
            bw,
            dirty,
            limit_ms,
            self.prior.postcopy_rate,
        );
        let tail = crate::policy::Prediction {
            total_ms: p.total_ms.saturating_sub(SETUP_MS),
            ..p
        };
        Some(ForecastUpdate {
            at_ms: o.elapsed_ms,
            remaining_ms: (first_left_s * 1000.0) as u64 + tail.total_ms + SWITCH_MS,
            downtime_ms: tail.downtime_ms + SWITCH_MS,
        })
    }
}

impl Follower {
    /// Pure: with post-copy allowed and passes that cannot shrink the
    /// remainder, the policy switches after two stalled passes: the rest
    /// of this pass, the passes still to stall, and post-copy's tail. In
    /// the first pass (`first`: the seconds left of it, and what it will
    /// leave), the dirty rate is the forecast's, and both later passes
    /// are still to come: pricing them as pre-copy at the policy's
    /// ceiling instead said +60 % at a quarter of the capped run.
    fn postcopy_ahead(
        &self,
        cfg: &PolicyConfig,
        o: &Observation,
        bw: u64,
        dirty: u64,
        first: (f64, u64),
    ) -> Option<ForecastUpdate> {
        if !crate::policy::stalls_for_postcopy(cfg, bw, dirty) || dirty == 0 {
            return None;
        }
        let bw = bw.max(1) as f64;
        let passes = crate::policy::STALLED_PASSES_FOR_POSTCOPY;
        // After the switch the destination pulls the rest at post-copy's
        // own pace, which `--bandwidth` does not cap (the recorded capped
        // run: under a second for what a pass took 10 s to send), but the
        // link and `--postcopy-bandwidth` do.
        let s = if o.iteration <= 1 {
            let (first_left_s, after_first) = first;
            first_left_s
                + f64::from(passes) * after_first as f64 / bw
                + self.postcopy_tail_s(after_first)
        } else if self.stalled >= passes {
            // The policy switches at this look: what is left goes once,
            // in post-copy, not in this pass.
            self.postcopy_tail_s(o.remaining)
        } else {
            let pass_s = self.pass.1 as f64 / bw;
            let more = passes - (self.stalled + 1);
            // Passes that stall leave as much as they began with.
            let left_at_switch = self.pass.1.max(o.remaining);
            o.remaining as f64 / bw
                + f64::from(more) * pass_s
                + self.postcopy_tail_s(left_at_switch)
        };
        Some(ForecastUpdate {
            at_ms: o.elapsed_ms,
            remaining_ms: (s * 1000.0) as u64,
            downtime_ms: crate::policy::POSTCOPY_SWITCH_MS,
        })
    }

    /// Pure: seconds post-copy takes for `left` bytes at the prior's
    /// post-copy rate, [`POSTCOPY_TAIL_S`] when that is not known.
    fn postcopy_tail_s(&self, left: u64) -> f64 {
        match self.prior.postcopy_rate {
            0 => POSTCOPY_TAIL_S,
            r => left as f64 / r as f64,
        }
    }
}

fn page(o: &Observation) -> f64 {
    if o.page_size == 0 {
        4096.0
    } else {
        o.page_size as f64
    }
}

/// How a forecast made during a run compared with what followed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Check {
    /// Fraction of the run at which the forecast was made (0.25...).
    pub at: f64,
    /// The forecast used (the last one made by then).
    pub update: ForecastUpdate,
    /// Time that really followed until QEMU completed, ms.
    pub actual_remaining_ms: u64,
    /// (forecast - actual) / actual of the remaining time.
    pub error: f64,
}

/// Pure: the forecast in force at `fraction` of a run that took
/// `total_ms` (the last update made by then), against what followed.
pub fn check_at(updates: &[ForecastUpdate], total_ms: u64, fraction: f64) -> Option<Check> {
    let when = (total_ms as f64 * fraction) as u64;
    let u = updates.iter().rev().find(|u| u.at_ms <= when)?;
    let actual = total_ms.saturating_sub(u.at_ms);
    Some(Check {
        at: fraction,
        update: *u,
        actual_remaining_ms: actual,
        error: (u.remaining_ms as f64 - actual as f64) / (actual.max(1) as f64),
    })
}

/// Pure: whether a new update is worth recording: the first, then one
/// every [`RECORD_EVERY_MS`].
pub fn worth_recording(last: Option<&ForecastUpdate>, u: &ForecastUpdate) -> bool {
    last.is_none_or(|l| u.at_ms >= l.at_ms + RECORD_EVERY_MS)
}

/// Updates are recorded at most this often, ms.
pub const RECORD_EVERY_MS: u64 = 200;

/// Updates kept per migration (a 5-minute deadline at one per
/// [`RECORD_EVERY_MS`] fits).
pub const MAX_UPDATES: usize = 1600;

#[cfg(test)]
mod tests;
