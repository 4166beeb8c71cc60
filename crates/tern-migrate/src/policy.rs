//! The convergence policy: a pure function from what QEMU reports about a
//! running migration to the next step that makes it finish in time.
//!
//! Pre-copy converges when the link carries pages faster than the guest
//! dirties them: each pass sends what the previous pass left dirty, so the
//! remainder shrinks by `dirty / bandwidth` per pass until it fits in the
//! downtime budget. When it does not, something must give. The steps, in
//! order of cost to the guest:
//!
//! 1. **Raise the downtime limit** toward the operator's `--max-downtime`
//!    (a slightly longer pause, nothing else changes).
//! 2. **Throttle the vCPUs** (auto-converge): the guest runs slower, so it
//!    dirties less. Tern raises QEMU's `max-cpu-throttle` ceiling in steps.
//! 3. **Post-copy**, if the operator allowed it: the guest runs on the
//!    destination at once and pulls the missing pages (no pause, but a
//!    lost link then loses the guest, hence opt-in).
//! 4. **Pause and finish** at the deadline: the guest is stopped so the rest
//!    is sent in one go — the last resort, a long pause but a finished move.
//!
//! Flags the operator gave win: a knob set on the command line is never
//! touched (see [`Knobs`]). [`predict`] is the same model run forward,
//! used for `migrate-forecast` and to decide whether a step is needed.

use serde::{Deserialize, Serialize};

/// One look at a running migration (from `query-migrate`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
pub struct Observation {
    /// Milliseconds since the migration started.
    pub elapsed_ms: u64,
    /// Pre-copy pass number (QEMU's dirty-sync-count).
    pub iteration: u64,
    /// Bytes still to send.
    pub remaining: u64,
    /// Transfer rate, bytes/s.
    pub bandwidth: u64,
    /// Dirtying rate, bytes/s.
    pub dirty_rate: u64,
    /// Current auto-converge throttle, percent.
    pub throttle: u64,
    /// Bytes sent so far (QEMU's ram.transferred); 0 in older traces.
    #[serde(default)]
    pub transferred: u64,
    /// Zero pages sent so far (QEMU's ram.duplicate).
    #[serde(default)]
    pub zero_pages: u64,
    /// Guest memory, bytes (QEMU's ram.total).
    #[serde(default)]
    pub memory: u64,
    /// Page size, bytes (0: 4 KiB).
    #[serde(default)]
    pub page_size: u64,
}

/// Which knobs the policy may turn (false: the operator set it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Knobs {
    /// Downtime limit.
    pub downtime: bool,
    /// CPU throttle ceiling.
    pub throttle: bool,
    /// Post-copy switch (only if the operator allowed post-copy).
    pub postcopy: bool,
    /// Pause-and-finish at the deadline.
    pub pause: bool,
}

/// The policy's settings for one migration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyConfig {
    /// Finish within this many ms.
    pub deadline_ms: u64,
    /// Never set a downtime limit above this, ms.
    pub max_downtime_ms: u64,
    /// What may be changed.
    pub knobs: Knobs,
}

/// What the policy has done so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyState {
    /// Current downtime limit, ms.
    pub downtime_ms: u64,
    /// Current throttle ceiling, percent (1 = off).
    pub max_throttle: u64,
    /// Post-copy started.
    pub postcopy: bool,
    /// Guest paused to finish.
    pub paused: bool,
    /// When the last step was taken, ms (steps are spaced out).
    pub last_step_ms: u64,
    /// The pass last seen, and what was left when it began.
    #[serde(default)]
    pub pass: u64,
    /// Bytes left when [`PolicyState::pass`] began.
    #[serde(default)]
    pub pass_start_remaining: u64,
    /// Passes in a row that did not shrink the remainder by a fifth: the
    /// evidence that pre-copy is not converging, which a switch to
    /// post-copy waits for (QEMU's figures early on are noisy).
    #[serde(default)]
    pub stalled_passes: u32,
    /// QEMU's send rate, smoothed over the looks (its own figure jumps
    /// by a factor of five from one look to the next under TCG), bytes/s.
    #[serde(default)]
    pub bandwidth_avg: u64,
    /// Bytes sent and ms at the last look, for the send rate from QEMU's
    /// byte count (its own figure lags a pass behind).
    #[serde(default)]
    pub last_sent: (u64, u64),
}

impl PolicyState {
    /// Initial state: the given downtime limit, throttling off.
    pub fn new(downtime_ms: u64) -> Self {
        PolicyState {
            downtime_ms,
            max_throttle: THROTTLE_OFF,
            postcopy: false,
            paused: false,
            last_step_ms: 0,
            pass: 0,
            pass_start_remaining: 0,
            stalled_passes: 0,
            bandwidth_avg: 0,
            last_sent: (0, 0),
        }
    }
}

/// QEMU's smallest throttle ceiling: auto-converge is on but inert.
pub const THROTTLE_OFF: u64 = 1;
/// Throttle ceilings, in order.
pub const THROTTLE_STEPS: [u64; 5] = [30, 50, 70, 85, 99];
/// Steps are at least this far apart, so QEMU's figures reflect the last one.
pub const STEP_GAP_MS: u64 = 1500;
/// Passes without progress before the policy gives up on pre-copy early
/// (it still does at the deadline).
pub const STALLED_PASSES_FOR_POSTCOPY: u32 = 2;

/// Follows pass boundaries: a pass that began with at least four fifths of
/// what the previous one began with made no real progress.
fn track_passes(st: &mut PolicyState, obs: &Observation) {
    let sample = send_rate_sample(st.last_sent, obs);
    st.last_sent = (obs.transferred, obs.elapsed_ms);
    // The first pass's rate (zero pages send no bytes) says little about
    // the later ones: the average starts again with the second.
    if obs.iteration == 2 && st.pass < 2 {
        st.bandwidth_avg = 0;
    }
    if sample > 0 {
        st.bandwidth_avg = match st.bandwidth_avg {
            0 => sample,
            a => (a * 3 + sample) / 4,
        };
    }
    if obs.iteration == st.pass {
        return;
    }
    if st.pass > 0 && obs.remaining * 5 >= st.pass_start_remaining * 4 {
        st.stalled_passes += 1;
    } else {
        st.stalled_passes = 0;
    }
    st.pass = obs.iteration;
    st.pass_start_remaining = obs.remaining;
}

/// Pure: the send rate since the last look from QEMU's byte count, or
/// QEMU's own figure when the count is missing (older traces) or stood
/// still.
fn send_rate_sample((sent, at): (u64, u64), obs: &Observation) -> u64 {
    let dt = obs.elapsed_ms.saturating_sub(at);
    if sent > 0 && obs.transferred > sent && dt > 0 {
        (obs.transferred - sent) * 1000 / dt
    } else {
        obs.bandwidth
    }
}

/// One step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "action")]
pub enum Action {
    /// Set QEMU's `downtime-limit`.
    SetDowntime {
        /// Milliseconds.
        ms: u64,
    },
    /// Set QEMU's `max-cpu-throttle`.
    SetMaxThrottle {
        /// Percent.
        percent: u64,
    },
    /// `migrate-start-postcopy`.
    StartPostcopy,
    /// Stop the guest so the rest goes in one pass.
    PauseAndFinish,
}

/// A step and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    /// What to do.
    pub action: Action,
    /// One line with the figures behind it.
    pub reason: String,
}

/// What the model expects.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
pub struct Prediction {
    /// Whether pre-copy alone reaches the downtime budget.
    pub converges: bool,
    /// Passes until it does (or the cap).
    pub iterations: u64,
    /// Time to finish, ms (including the final pause).
    pub total_ms: u64,
    /// The final pause, ms.
    pub downtime_ms: u64,
}

/// What `migrate-forecast` prints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Forecast {
    /// Guest memory, bytes.
    pub memory: u64,
    /// Fraction of sampled pages that were all zero.
    pub zero_fraction: f64,
    /// Sampled dirty rate, bytes/s.
    pub dirty_rate: u64,
    /// Link estimate, bytes/s (after caps).
    pub bandwidth: u64,
    /// Where the link estimate came from.
    pub bandwidth_source: String,
    /// Downtime limit used, ms.
    pub downtime_limit_ms: u64,
    /// The model's answer.
    pub prediction: Prediction,
    /// One-line verdict.
    pub verdict: String,
    /// Of the sampled pages the guest rewrote while it was watched, the
    /// mean fraction of their bytes that changed.
    #[serde(default)]
    pub delta_fraction: Option<f64>,
    /// How much the sampled pages shrink with zstd.
    #[serde(default)]
    pub compress_ratio: f64,
    /// Capabilities the policy turns on at the start of a migration that
    /// follows this forecast within two minutes.
    #[serde(default)]
    pub plan: Option<crate::plan::StartPlan>,
    /// With `--postcopy`: whether a migration that follows within two
    /// minutes arms post-copy (see [`crate::plan::arm_postcopy`]).
    #[serde(default)]
    pub arm_postcopy: Option<bool>,
    /// The forecast as a range, with every input and its source; its
    /// median is [`Forecast::prediction`].
    #[serde(default)]
    pub range: Option<crate::forecast::RangeForecast>,
    /// This host's single-thread copy speed when the forecast was made,
    /// bytes/s (what one migration thread's rate is scaled from).
    #[serde(default)]
    pub cpu_rate: u64,
    /// The loopback probe's rate when the forecast was made, bytes/s (0:
    /// the probe went to another host or failed): what a migration that
    /// follows learns its thread-to-probe ratio against.
    #[serde(default)]
    pub loopback_probe: u64,
}

/// Runs pre-copy forward: `remaining` bytes to send at `bandwidth`, the
/// guest dirtying `dirty_rate` (bytes/s, after any throttle), until the
/// remainder fits in `downtime_ms`. `max_iterations` bounds a migration
/// that never converges; its total then is the cap's time plus the pause
/// needed for what is left.
pub fn predict(
    remaining: u64,
    bandwidth: u64,
    dirty_rate: u64,
    downtime_ms: u64,
    max_iterations: u64,
) -> Prediction {
    let bw = bandwidth.max(1) as f64;
    let budget = bw * downtime_ms as f64 / 1000.0;
    let mut left = remaining as f64;
    let mut total = 0.0;
    let mut n = 0;
    while left > budget && n < max_iterations {
        let t = left / bw;
        total += t;
        // What the guest dirtied meanwhile, at most its whole memory.
        left = (dirty_rate as f64 * t).min(remaining.max(1) as f64);
        n += 1;
    }
    let pause = left / bw;
    Prediction {
        converges: left <= budget,
        iterations: n + 1,
        total_ms: ((total + pause) * 1000.0) as u64,
        downtime_ms: (pause * 1000.0) as u64,
    }
}

/// Time a migration spends outside QEMU's total-time, ms: starting the
/// destination QEMU, the hand-offs between the agents, and resuming.
/// `tern-bench converge` on a quiet machine measured 100-150 ms between
/// `tern migrate`'s wall clock and QEMU's total-time (docs/BENCHMARKS.md);
/// the pace a forecast uses already includes QEMU's own set-up.
pub const SETUP_MS: u64 = 150;

/// Pause of a switch to post-copy, ms: the device state and the pages the
/// destination asks for first (QEMU 10 measured 2–12 ms under TCG).
pub const POSTCOPY_SWITCH_MS: u64 = 20;

/// [`predict`] with the policy's steps run forward, for `migrate-forecast`:
/// what a migration of `remaining` bytes will take with this configuration,
/// including [`SETUP_MS`]. The policy acts from the second pass on: it
/// raises the downtime limit if that lets pre-copy finish by the deadline;
/// otherwise it switches to post-copy (if allowed: the rest then goes once
/// while the guest runs on the destination), else it pauses the guest at
/// the deadline and sends what is left. `postcopy_rate` is what the
/// destination pulls pages at once in post-copy (bytes/s): the link or
/// `--postcopy-bandwidth`, never `--bandwidth`, which QEMU does not apply
/// there; 0 takes `bandwidth`.
pub fn predict_with_policy(
    cfg: &PolicyConfig,
    remaining: u64,
    bandwidth: u64,
    dirty_rate: u64,
    downtime_ms: u64,
    postcopy_rate: u64,
) -> Prediction {
    let with_setup = |p: Prediction| Prediction {
        total_ms: p.total_ms + SETUP_MS,
        ..p
    };
    // Passes that shrink the remainder by less than a fifth are the
    // evidence the policy switches to post-copy on (two in a row), however
    // slowly pre-copy would converge otherwise.
    let stalls = stalls_for_postcopy(cfg, bandwidth, dirty_rate);
    let plain = predict(remaining, bandwidth, dirty_rate, downtime_ms, 30);
    if plain.converges && plain.total_ms <= cfg.deadline_ms && !stalls {
        return with_setup(plain);
    }
    if cfg.knobs.downtime && !stalls {
        let longer = predict(remaining, bandwidth, dirty_rate, cfg.max_downtime_ms, 30);
        if longer.converges && longer.total_ms <= cfg.deadline_ms {
            return with_setup(longer);
        }
    }
    let bw = bandwidth.max(1) as f64;
    let whole = remaining.max(1) as f64;
    // Two passes before the policy acts (the second is where it sees the
    // remainder does not shrink), then what the guest dirtied meanwhile.
    let t1 = whole / bw;
    let left1 = (dirty_rate as f64 * t1).min(whole);
    if cfg.knobs.postcopy {
        return with_setup(postcopy_prediction(
            (t1, left1),
            bw,
            dirty_rate as f64,
            whole,
            postcopy_rate,
        ));
    }
    let t2 = left1 / bw;
    let left2 = (dirty_rate as f64 * t2).min(whole);
    let ms = |s: f64| (s * 1000.0) as u64;
    // Paused at the deadline: the remainder has settled where the guest
    // re-dirties what each pass sends.
    let pause = left2 / bw;
    with_setup(Prediction {
        converges: cfg.knobs.pause,
        iterations: 30,
        total_ms: cfg.deadline_ms.max(ms(t1 + t2)) + ms(pause),
        downtime_ms: ms(pause),
    })
}

/// Pure: post-copy is allowed and the guest dirties at least four fifths
/// of what is sent, so passes will not shrink the remainder by a fifth:
/// the evidence the policy switches to post-copy on, and what the
/// forecasts price as post-copy.
pub fn stalls_for_postcopy(cfg: &PolicyConfig, bandwidth: u64, dirty_rate: u64) -> bool {
    cfg.knobs.postcopy && dirty_rate.saturating_mul(5) >= bandwidth.saturating_mul(4)
}

/// Pure: pre-copy until the policy has seen [`STALLED_PASSES_FOR_POSTCOPY`]
/// passes that do not shrink the remainder (the first pass took `t1` s
/// and left `left1` bytes), then post-copy: what is left goes once, at
/// `postcopy_rate` (0: `bw`). On the recorded capped run the switch came
/// after the third pass with 1.07 GB left, and post-copy took 0.8-1 s.
fn postcopy_prediction(
    (t1, left1): (f64, f64),
    bw: f64,
    dirty: f64,
    whole: f64,
    postcopy_rate: u64,
) -> Prediction {
    let mut s = t1;
    let mut left = left1;
    for _ in 0..STALLED_PASSES_FOR_POSTCOPY {
        let pass = left / bw;
        s += pass;
        left = (dirty * pass).min(whole);
    }
    let pc = match postcopy_rate {
        0 => bw,
        r => r as f64,
    };
    Prediction {
        converges: true,
        iterations: u64::from(STALLED_PASSES_FOR_POSTCOPY) + 2,
        total_ms: ((s + left / pc) * 1000.0) as u64,
        downtime_ms: POSTCOPY_SWITCH_MS,
    }
}

/// Decides the next step, if any, and the state after it.
pub fn decide(
    cfg: &PolicyConfig,
    st: &PolicyState,
    obs: &Observation,
) -> (PolicyState, Option<Decision>) {
    let mut next = *st;
    track_passes(&mut next, obs);
    if st.paused || st.postcopy || obs.bandwidth == 0 || obs.iteration < 2 {
        return (next, None);
    }
    // QEMU's per-look figure jumps from 24 to 470 MB/s under TCG: every
    // rule uses the smoothed one (a single low reading once raised the
    // limit to its ceiling on a guest that was converging).
    let bw = next.bandwidth_avg.max(1);
    // At a pass boundary: a higher downtime limit if the measured rates
    // say it saves real time (crate::downtime).
    if cfg.knobs.downtime && obs.iteration != st.pass {
        if let Some(r) = crate::downtime::step(
            obs.remaining,
            bw,
            obs.dirty_rate,
            st.downtime_ms,
            cfg.max_downtime_ms,
            obs.elapsed_ms,
        ) {
            next.downtime_ms = r.ms;
            next.last_step_ms = obs.elapsed_ms;
            return (
                next,
                Some(Decision {
                    action: Action::SetDowntime { ms: r.ms },
                    reason: r.reason,
                }),
            );
        }
    }
    let left_ms = cfg.deadline_ms.saturating_sub(obs.elapsed_ms);
    let dirty = obs.dirty_rate;
    let p = predict(obs.remaining, bw, dirty, st.downtime_ms, 30);
    let fmt = |what: &str| {
        format!(
            "{what}: {} MiB left, link {} MiB/s, guest dirtying {} MiB/s, throttle {}%, pass {}, {} s to the deadline; forecast {} s with {} ms downtime",
            obs.remaining >> 20,
            bw >> 20,
            dirty >> 20,
            obs.throttle,
            obs.iteration,
            left_ms / 1000,
            p.total_ms / 1000,
            p.downtime_ms
        )
    };
    // Last resort first: out of time.
    if left_ms == 0 {
        if cfg.knobs.postcopy {
            next.postcopy = true;
            next.last_step_ms = obs.elapsed_ms;
            return (
                next,
                Some(Decision {
                    action: Action::StartPostcopy,
                    reason: fmt("deadline reached, switching to post-copy"),
                }),
            );
        }
        if cfg.knobs.pause {
            next.paused = true;
            next.last_step_ms = obs.elapsed_ms;
            return (
                next,
                Some(Decision {
                    action: Action::PauseAndFinish,
                    reason: fmt("deadline reached, pausing the guest to finish"),
                }),
            );
        }
        return (next, None);
    }
    let on_track = p.converges && p.total_ms <= left_ms;
    if on_track || obs.elapsed_ms < st.last_step_ms + STEP_GAP_MS {
        return (next, None);
    }
    // The deadline steps need more than one look's figures (QEMU's send
    // rate after a first pass of zero pages reads a quarter of the real
    // one): a pass that did not shrink the remainder, or the deadline
    // close. Without this a hot guest that was converging got the 1000 ms
    // ceiling at pass 2 and paused 576 ms.
    let postcopy_needs_ms = obs.remaining * 1000 / bw * 2;
    if next.stalled_passes == 0 && left_ms > postcopy_needs_ms {
        return (next, None);
    }
    // 1. A longer pause, if it would let the remainder go in one pass.
    if cfg.knobs.downtime && st.downtime_ms < cfg.max_downtime_ms {
        let needed = predict(obs.remaining, bw, dirty, cfg.max_downtime_ms, 30);
        if needed.converges && needed.total_ms <= left_ms {
            let ms = (st.downtime_ms * 2)
                .min(cfg.max_downtime_ms)
                .max(needed.downtime_ms.min(cfg.max_downtime_ms));
            next.downtime_ms = ms;
            next.last_step_ms = obs.elapsed_ms;
            return (
                next,
                Some(Decision {
                    action: Action::SetDowntime { ms },
                    reason: fmt(&format!("raising the downtime limit to {ms} ms")),
                }),
            );
        }
    }
    // 2. Slow the guest down.
    if cfg.knobs.throttle {
        if let Some(&pct) = THROTTLE_STEPS.iter().find(|&&s| s > st.max_throttle) {
            next.max_throttle = pct;
            next.last_step_ms = obs.elapsed_ms;
            return (
                next,
                Some(Decision {
                    action: Action::SetMaxThrottle { percent: pct },
                    reason: fmt(&format!("throttling the guest up to {pct}%")),
                }),
            );
        }
    }
    // 3. Post-copy, when the throttle is at its ceiling and still too slow,
    // once passes have shown the remainder does not shrink (or time is short).
    let evidence =
        next.stalled_passes >= STALLED_PASSES_FOR_POSTCOPY || left_ms <= postcopy_needs_ms;
    if cfg.knobs.postcopy && evidence {
        next.postcopy = true;
        next.last_step_ms = obs.elapsed_ms;
        return (
            next,
            Some(Decision {
                action: Action::StartPostcopy,
                reason: fmt("pre-copy cannot finish in time, switching to post-copy"),
            }),
        );
    }
    // 4. Use the whole downtime budget even if it is not enough yet.
    if cfg.knobs.downtime && st.downtime_ms < cfg.max_downtime_ms {
        next.downtime_ms = cfg.max_downtime_ms;
        next.last_step_ms = obs.elapsed_ms;
        let ms = cfg.max_downtime_ms;
        return (
            next,
            Some(Decision {
                action: Action::SetDowntime { ms },
                reason: fmt(&format!(
                    "raising the downtime limit to its ceiling, {ms} ms"
                )),
            }),
        );
    }
    (next, None)
}

#[cfg(test)]
mod tests;
