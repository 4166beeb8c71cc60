//! The policy's start plan: what must be decided before a migration starts.
//!
//! QEMU accepts `migrate-set-capabilities` only while no migration runs, so
//! the convergence steps that are capabilities — XBZRLE delta encoding,
//! multifd channels, multifd compression — cannot be taken mid-flight the
//! way [`crate::policy::decide`] raises the downtime or the throttle. They
//! are decided here, from a sample of the guest taken shortly before
//! (`migrate-forecast`, or `migrate --dry-run`):
//!
//! - **XBZRLE** when pre-copy will struggle and the pages the guest
//!   rewrites change only in small parts (it then sends deltas of re-sent
//!   pages instead of whole pages);
//! - **multifd with zstd** when the link is the limit, the pages compress,
//!   and the source has cores to spare for compressing;
//! - **multifd alone** when the link is faster than one migration thread
//!   can fill and there are cores to spare.
//!
//! The operator's flags win: a migration that names `--compressed`,
//! `--parallel` or `--no-policy` gets no plan.
//!
//! Post-copy is the same kind of decision: QEMU needs the postcopy-ram
//! capability on both sides before the start, and arming it costs pre-copy
//! time even when no switch happens (QEMU 10 under TCG: an idle 2 GiB guest
//! took about 0.3 s longer, 1.3 s instead of 1.0 s). So `--postcopy` only
//! *allows* it: [`arm_postcopy`] leaves it unarmed when the sample shows
//! pre-copy alone finishing well inside the deadline.

use crate::policy::{predict, PolicyConfig};
use serde::{Deserialize, Serialize};

/// What a short look at the guest and the link showed.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
pub struct Sample {
    /// Bytes pre-copy must send (zero pages discounted).
    pub effective_memory: u64,
    /// Dirty rate, bytes/s.
    pub dirty_rate: u64,
    /// Link estimate, bytes/s.
    pub bandwidth: u64,
    /// Of the sampled pages that changed between two reads, the mean
    /// fraction of their bytes that changed (None: none changed).
    pub delta_fraction: Option<f64>,
    /// How much the sampled pages shrink with zstd level 1 (2.0 = half).
    pub compress_ratio: f64,
    /// CPU cores on the source host.
    pub cores: u32,
}

/// Capabilities to turn on before the migration starts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StartPlan {
    /// XBZRLE with a cache of this many bytes.
    pub xbzrle_cache: Option<u64>,
    /// Multifd channels.
    pub multifd_channels: Option<u32>,
    /// zstd on the multifd channels.
    pub zstd: bool,
    /// One line with the figures behind it.
    pub reason: String,
}

/// One migration thread fills about this much of a link, bytes/s.
pub const ONE_THREAD_RATE: u64 = 1 << 30;
/// How much cheaper a zero page is to send than a normal one: QEMU sends a
/// flag instead of 4 KiB, the cost left is scanning it. The forecast counts
/// memory in these "effective" bytes, and the pace a host remembers is
/// measured in the same unit.
pub const ZERO_PAGE_COST: f64 = 0.08;
/// The forecast's figure for the link, and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkEstimate {
    /// Bytes/s, in effective bytes (see [`ZERO_PAGE_COST`]).
    pub bandwidth: u64,
    /// Where it came from, for the operator.
    pub source: String,
    /// The link, not QEMU's thread, is the limit: zero pages then cost
    /// nothing of it (their scan overlaps the wait for the link).
    pub link_bound: bool,
}

/// Pure: the link figure a forecast uses. In order of evidence: the
/// operator's `--bandwidth` cap; the probe of the link to the destination,
/// when it is slower than what this host's migrations achieved; else the
/// pace this host's past migrations achieved (what one migration really
/// fills here, above or below the fixed figure); else, without multifd,
/// [`ONE_THREAD_RATE`] when the probe says more.
pub fn link_estimate(
    probe: Result<u64, String>,
    pace: Option<u64>,
    cap: Option<u64>,
    parallel: bool,
) -> LinkEstimate {
    let est = |bandwidth: u64, source: &str, link_bound: bool| LinkEstimate {
        bandwidth,
        source: source.to_string(),
        link_bound,
    };
    let mut e = match (probe, pace) {
        (Ok(p), Some(pace)) if p <= pace => est(p, "measured to the destination", true),
        (_, Some(pace)) => est(pace, "past migrations' pace on this host", false),
        (Ok(p), None) if !parallel && p > ONE_THREAD_RATE => est(
            ONE_THREAD_RATE,
            "one migration thread's rate (the link measured faster)",
            false,
        ),
        (Ok(p), None) => est(p, "measured to the destination", p < ONE_THREAD_RATE),
        (Err(why), None) => est(ONE_THREAD_RATE, &why, false),
    };
    if let Some(c) = cap.filter(|&c| c < e.bandwidth) {
        e = est(c, "--bandwidth", true);
    }
    e
}

/// Pure: the memory a migration has to move, in effective bytes: normal
/// pages whole, zero pages at [`ZERO_PAGE_COST`] unless the link is the
/// limit.
pub fn effective_memory(memory: u64, zero_fraction: f64, link_bound: bool) -> u64 {
    let zero_cost = if link_bound { 0.0 } else { ZERO_PAGE_COST };
    (memory as f64 * ((1.0 - zero_fraction) + zero_fraction * zero_cost)) as u64
}

/// XBZRLE pays off when re-sent pages change in at most this fraction.
pub const XBZRLE_MAX_DELTA: f64 = 0.25;
/// Compression pays off from this ratio on.
pub const MIN_COMPRESS_RATIO: f64 = 2.0;
/// Multifd and compression take cores from the guest: only from this many.
pub const MIN_SPARE_CORES: u32 = 4;
/// Channels the plan asks for.
pub const PLAN_CHANNELS: u32 = 4;

/// Whether to arm post-copy for a migration the operator allowed it for:
/// not when pre-copy alone is predicted to finish within half the deadline
/// (the policy then still has the downtime limit, the throttle and, at the
/// deadline, the pause to finish with).
pub fn arm_postcopy(cfg: &PolicyConfig, s: &Sample, downtime_ms: u64) -> bool {
    !precopy_is_easy(cfg, s, downtime_ms)
}

/// Pre-copy alone is predicted to finish within half the deadline.
fn precopy_is_easy(cfg: &PolicyConfig, s: &Sample, downtime_ms: u64) -> bool {
    let alone = predict(
        s.effective_memory,
        s.bandwidth,
        s.dirty_rate,
        downtime_ms,
        30,
    );
    alone.converges && alone.total_ms <= cfg.deadline_ms / 2
}

/// Decides the start plan, or `None` when plain pre-copy will do (or
/// nothing would help).
pub fn start_plan(cfg: &PolicyConfig, s: &Sample, downtime_ms: u64) -> Option<StartPlan> {
    // Comfortably inside the deadline: nothing to pay for.
    if precopy_is_easy(cfg, s, downtime_ms) {
        return None;
    }
    let mib = |b: u64| b >> 20;
    let figures = format!(
        "{} MiB to send, link {} MiB/s, guest dirtying {} MiB/s, pages compress {:.1}x, {} cores",
        mib(s.effective_memory),
        mib(s.bandwidth),
        mib(s.dirty_rate),
        s.compress_ratio,
        s.cores
    );
    let spare = s.cores >= MIN_SPARE_CORES;
    let link_bound = s.bandwidth < ONE_THREAD_RATE;
    let mut plan = StartPlan {
        xbzrle_cache: None,
        multifd_channels: None,
        zstd: false,
        reason: String::new(),
    };
    let mut why = Vec::new();
    if let Some(d) = s.delta_fraction.filter(|d| *d <= XBZRLE_MAX_DELTA) {
        // Room for what one pass re-sends, at most a quarter of memory.
        let cache = (s.effective_memory / 4).clamp(64 << 20, 1 << 30);
        plan.xbzrle_cache = Some(cache);
        why.push(format!(
            "XBZRLE ({} MiB cache): rewritten pages change in {:.0} % of their bytes",
            mib(cache),
            d * 100.0
        ));
    }
    if spare && link_bound && s.compress_ratio >= MIN_COMPRESS_RATIO {
        plan.multifd_channels = Some(PLAN_CHANNELS);
        plan.zstd = true;
        why.push(format!(
            "{PLAN_CHANNELS} multifd channels with zstd: the link is the limit and pages compress"
        ));
    } else if spare && !link_bound {
        plan.multifd_channels = Some(PLAN_CHANNELS);
        why.push(format!(
            "{PLAN_CHANNELS} multifd channels: the link is faster than one migration thread"
        ));
    }
    // XBZRLE and multifd do not combine in QEMU; multifd wins when both
    // were chosen (it helps every page, XBZRLE only re-sent ones).
    if plan.multifd_channels.is_some() && plan.xbzrle_cache.is_some() {
        plan.xbzrle_cache = None;
        why.retain(|w| !w.starts_with("XBZRLE"));
    }
    if why.is_empty() {
        return None;
    }
    plan.reason = format!("start plan: {}; {figures}", why.join(", "));
    Some(plan)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Knobs;

    const MIB: u64 = 1 << 20;

    #[test]
    fn the_link_figure_prefers_evidence_over_assumptions() {
        let gib = 1u64 << 30;
        // Loopback probe, no history: one thread's rate.
        let e = link_estimate(Ok(3 * gib), None, None, false);
        assert_eq!((e.bandwidth, e.link_bound), (ONE_THREAD_RATE, false));
        // With multifd the probe stands.
        assert_eq!(
            link_estimate(Ok(3 * gib), None, None, true).bandwidth,
            3 * gib
        );
        // This host's past migrations did better than the fixed figure.
        let e = link_estimate(Ok(3 * gib), Some(gib + gib / 5), None, false);
        assert_eq!((e.bandwidth, e.link_bound), (gib + gib / 5, false));
        // A link slower than past migrations' pace is the limit.
        let e = link_estimate(Ok(100 * MIB), Some(gib), None, false);
        assert_eq!((e.bandwidth, e.link_bound), (100 * MIB, true));
        // The operator's cap wins when lower.
        let e = link_estimate(Ok(3 * gib), Some(gib), Some(100 * MIB), false);
        assert_eq!(
            (e.bandwidth, e.source.as_str(), e.link_bound),
            (100 * MIB, "--bandwidth", true)
        );
        // No probe: assumed, and said so.
        let e = link_estimate(
            Err("assumed 1 GiB/s (no destination given)".into()),
            None,
            None,
            false,
        );
        assert!(e.source.starts_with("assumed"));
    }

    #[test]
    fn zero_pages_cost_only_when_the_thread_is_the_limit() {
        let half = effective_memory(2048 * MIB, 0.5, false);
        // 1024 MiB of data and 1024 MiB of zero pages at 8 %.
        assert_eq!(half, (2048.0 * MIB as f64 * 0.54) as u64);
        assert_eq!(effective_memory(2048 * MIB, 0.5, true), 1024 * MIB);
    }

    fn cfg() -> PolicyConfig {
        PolicyConfig {
            deadline_ms: 300_000,
            max_downtime_ms: 1000,
            knobs: Knobs {
                downtime: true,
                throttle: true,
                postcopy: false,
                pause: true,
            },
        }
    }

    fn sample() -> Sample {
        Sample {
            effective_memory: 2048 * MIB,
            dirty_rate: 200 * MIB,
            bandwidth: 100 * MIB,
            delta_fraction: Some(1.0),
            compress_ratio: 1.0,
            cores: 2,
        }
    }

    #[test]
    fn an_easy_migration_gets_no_plan() {
        let s = Sample {
            dirty_rate: 10 * MIB,
            bandwidth: 1 << 30,
            ..sample()
        };
        assert_eq!(start_plan(&cfg(), &s, 300), None);
    }

    #[test]
    fn postcopy_is_armed_only_when_precopy_may_not_finish() {
        let easy = Sample {
            dirty_rate: 50 * MIB,
            bandwidth: 1 << 30,
            ..sample()
        };
        assert!(!arm_postcopy(&cfg(), &easy, 300));
        // Faster than the link: pre-copy alone never ends.
        assert!(arm_postcopy(&cfg(), &sample(), 300));
        // Converges, but not within half the deadline.
        let slow = Sample {
            dirty_rate: 0,
            bandwidth: 10 * MIB,
            ..sample()
        };
        assert!(arm_postcopy(&cfg(), &slow, 300));
    }

    #[test]
    fn small_deltas_get_xbzrle() {
        let s = Sample {
            delta_fraction: Some(0.05),
            ..sample()
        };
        let p = start_plan(&cfg(), &s, 300).expect("a plan");
        assert_eq!(p.xbzrle_cache, Some(512 * MIB));
        assert!(p.multifd_channels.is_none());
        assert!(p.reason.contains("XBZRLE") && !p.reason.contains('\n'));
    }

    #[test]
    fn whole_page_rewrites_on_two_cores_get_nothing() {
        // Random rewrites, incompressible, no cores to spare: nothing helps
        // before the start; the running policy takes over.
        assert_eq!(start_plan(&cfg(), &sample(), 300), None);
    }

    #[test]
    fn a_slow_link_with_compressible_pages_and_spare_cores_gets_zstd() {
        let s = Sample {
            compress_ratio: 3.5,
            cores: 8,
            delta_fraction: Some(0.1),
            ..sample()
        };
        let p = start_plan(&cfg(), &s, 300).expect("a plan");
        assert_eq!(p.multifd_channels, Some(PLAN_CHANNELS));
        assert!(p.zstd);
        // Multifd and XBZRLE do not combine.
        assert_eq!(p.xbzrle_cache, None);
    }

    #[test]
    fn a_fast_link_gets_more_channels_without_compression() {
        let s = Sample {
            bandwidth: 4 << 30,
            dirty_rate: 3 << 30,
            effective_memory: 256 << 30,
            cores: 16,
            ..sample()
        };
        let p = start_plan(&cfg(), &s, 300).expect("a plan");
        assert_eq!(p.multifd_channels, Some(PLAN_CHANNELS));
        assert!(!p.zstd);
    }
}
