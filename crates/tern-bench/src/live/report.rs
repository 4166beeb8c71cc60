//! What one migration measured, and how repeated runs fold into one row.

use super::Driver;
use crate::guest::Case;
use serde_json::Value;
use std::time::Duration;
use tern_migrate::JobInfo;

/// QEMU's own figures for a migration.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Figures {
    /// `total-time`, ms.
    pub total_ms: u64,
    /// `downtime`, ms.
    pub downtime_ms: u64,
    /// `ram.transferred`, bytes.
    pub bytes: u64,
    /// `ram.dirty-sync-count`.
    pub iterations: u64,
}

impl Figures {
    /// From a `query-migrate` reply.
    pub fn from_query(q: &Value) -> Figures {
        let u = |v: &Value| v.as_u64().unwrap_or(0);
        Figures {
            total_ms: u(&q["total-time"]),
            downtime_ms: u(&q["downtime"]),
            bytes: u(&q["ram"]["transferred"]),
            iterations: u(&q["ram"]["dirty-sync-count"]),
        }
    }

    /// From `tern domjobinfo --completed --json`.
    pub fn from_jobinfo(j: &JobInfo) -> Figures {
        Figures {
            total_ms: j.time_elapsed_ms,
            downtime_ms: j.downtime_ms.unwrap_or(0),
            bytes: j.memory_processed,
            iterations: j.iteration,
        }
    }

    /// A completed migration cannot take 0 ms: QEMU answered before it had
    /// computed its times (see `docs/BENCHMARKS.md`).
    pub fn times_missing(&self) -> bool {
        self.total_ms == 0
    }
}

/// Where a migration's wall-clock time went, phase by phase (ms; `None`
/// when a phase does not apply to the driver or an event was not found).
/// Tern's phases come from the two agents' job events; the QMP driver's
/// from its own clock.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Breakdown {
    /// Tern: CLI start to the source's Begin (CLI start-up, connecting,
    /// the request).
    pub start: Option<u64>,
    /// Tern: the source's Begin to the destination's Prepare (the source's
    /// checks, the destination's machine types, the Prepare request).
    pub begin: Option<u64>,
    /// Prepare: destination QEMU started, capabilities set, listening
    /// (QMP: launching the destination QEMU, its capabilities,
    /// `migrate-incoming`).
    pub prepare: Option<u64>,
    /// Listening to the source's `migrate` (Tern: the Prepare reply and
    /// Perform's set-up; QMP: the source's capabilities and parameters).
    pub handoff: Option<u64>,
    /// `migrate` to QEMU's "completed" seen (QEMU's total-time plus the
    /// time to notice).
    pub copy: Option<u64>,
    /// QEMU completed to the guest running on the destination (Finish and
    /// `cont`).
    pub resume: Option<u64>,
    /// Tern: guest running to the source's job ending (Confirm: the source
    /// QEMU quits and is reaped).
    pub confirm: Option<u64>,
    /// Tern: the source's job ending to the CLI's exit (the CLI noticing).
    pub exit: Option<u64>,
    /// QEMU's total-time of the same run, ms (0 when QEMU did not say).
    pub qemu_total_ms: u64,
}

/// A migration that completed.
#[derive(Debug, Clone, Default)]
pub struct Run {
    /// Wall clock: the `tern migrate` command, or `migrate` to `cont`.
    pub wall: Duration,
    /// QEMU's figures.
    pub figures: Figures,
    /// Longest wait between heartbeats on the consoles, if the guest was
    /// seen running on the destination.
    pub gap: Option<Duration>,
    /// The guest's own clock across the same two heartbeats: `gap` minus
    /// this is the time the guest was frozen ([`tern_testkit::WatchReport`]).
    pub gap_guest: Option<Duration>,
    /// The source QEMU's STOP to the destination QEMU's RESUME, ms, from
    /// their events: QEMU's downtime plus the destination's last load and
    /// the `cont`.
    pub stopped_ms: Option<u64>,
    /// The phases of its wall-clock time.
    pub breakdown: Option<Breakdown>,
    /// The first `query-migrate` that said "completed" had no total-time
    /// yet (QEMU 7.2 sets the status before the times).
    pub times_late: bool,
    /// The console line that shows the guest broke after arriving.
    pub crash: Option<String>,
    /// MiB/s the guest's dirtier managed while it ran on the source during
    /// the migration (from its heartbeats), if it printed two.
    pub workload_mib_s: Option<f64>,
    /// Tern only, when asked: `tern migrate-forecast`'s total time, ms.
    pub forecast_ms: Option<u64>,
    /// Tern only, when asked: the forecast's p10 and p90, ms.
    pub forecast_span: Option<(u64, u64)>,
    /// Tern only: the error of the forecasts in force at 25, 50 and 75 %
    /// of QEMU's run, on the time that followed ((forecast - real) / real).
    pub run_errors: [Option<f64>; 3],
}

/// How one migration ended.
// A benchmark holds a few dozen of these: their size does not matter,
// and boxing `Run` would touch every place one is built.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum Outcome {
    /// Completed, guest running on the destination.
    Done(Run),
    /// Still copying at the deadline; cancelled. The figures are QEMU's at
    /// the end.
    DidNotConverge {
        /// Deadline.
        after: Duration,
        /// Figures when cancelled.
        figures: Figures,
    },
    /// Something went wrong.
    Failed(String),
}

/// A table row's cells for a migration that did not finish (it did not
/// converge, failed, or never ran), the reason first and then empty cells
/// up to `width` columns; `None` for a finished one, whose cells each
/// table writes itself.
pub fn unfinished_cells(o: Option<&Outcome>, width: usize) -> Option<String> {
    let first = match o {
        Some(Outcome::Done(_)) => return None,
        Some(Outcome::DidNotConverge { after, .. }) => {
            format!("did not converge in {} s", after.as_secs())
        }
        Some(Outcome::Failed(e)) => format!("failed: {}", e.replace('|', "/").replace('\n', " ")),
        None => "no run".into(),
    };
    Some(format!("{first}{}", " |".repeat(width.saturating_sub(1))))
}

/// The median of some values (the upper one of the middle two).
fn median<T: Ord + Copy>(mut v: Vec<T>) -> Option<T> {
    v.sort_unstable();
    v.get(v.len() / 2).copied()
}

/// Folds repeated migrations of one case into one outcome: the first that
/// did not complete, else the median of every figure separately (runs in
/// which QEMU had not filled in its times do not count for those), and the
/// phase breakdown of the run with the median control time (wall clock
/// minus QEMU's total-time, see [`control_ms`]).
pub fn aggregate(runs: &[Outcome]) -> Option<Outcome> {
    if let Some(bad) = runs.iter().find(|o| !matches!(o, Outcome::Done(_))) {
        return Some(bad.clone());
    }
    let done: Vec<&Run> = runs
        .iter()
        .filter_map(|o| match o {
            Outcome::Done(r) => Some(r),
            _ => None,
        })
        .collect();
    if done.is_empty() {
        return None;
    }
    let with_times: Vec<&&Run> = done.iter().filter(|r| !r.figures.times_missing()).collect();
    let m = |f: &dyn Fn(&Run) -> u64| median(done.iter().map(|r| f(r)).collect()).unwrap_or(0);
    let mt =
        |f: &dyn Fn(&Run) -> u64| median(with_times.iter().map(|r| f(r)).collect()).unwrap_or(0);
    // The phases of one run add up; medians taken phase by phase would not.
    let mut by_control = done.clone();
    by_control.sort_by_key(|r| overhead_ms(r));
    let mid = by_control[by_control.len() / 2];
    Some(Outcome::Done(Run {
        wall: median(done.iter().map(|r| r.wall).collect()).unwrap_or_default(),
        figures: Figures {
            total_ms: mt(&|r| r.figures.total_ms),
            downtime_ms: mt(&|r| r.figures.downtime_ms),
            bytes: m(&|r| r.figures.bytes),
            iterations: m(&|r| r.figures.iterations),
        },
        gap: median(done.iter().filter_map(|r| r.gap).collect()),
        // Belongs to one pause; a median of each would pair two runs.
        gap_guest: None,
        stopped_ms: median(done.iter().filter_map(|r| r.stopped_ms).collect()),
        times_late: done.iter().any(|r| r.times_late),
        crash: done.iter().find_map(|r| r.crash.clone()),
        breakdown: mid.breakdown,
        workload_mib_s: mid.workload_mib_s,
        forecast_ms: mid.forecast_ms,
        forecast_span: mid.forecast_span,
        run_errors: mid.run_errors,
    }))
}

/// The control time of a driver: the median over completed runs of wall
/// clock minus QEMU's own total-time, i.e. everything around QEMU's copy
/// (starting the destination, hand-offs, noticing completion, resuming).
/// Unlike the wall clock it does not move with QEMU's copy speed, which
/// varies a lot on a loaded machine.
pub fn control_ms(runs: &[Outcome]) -> Option<i64> {
    if runs.iter().any(|o| !matches!(o, Outcome::Done(_))) {
        return None;
    }
    median(
        runs.iter()
            .filter_map(|o| match o {
                Outcome::Done(r) => overhead_ms(r),
                _ => None,
            })
            .collect(),
    )
}

/// Wall clock minus QEMU's total-time of one run, ms (`None` when QEMU
/// did not give its times).
pub fn overhead_ms(r: &Run) -> Option<i64> {
    (!r.figures.times_missing()).then(|| r.wall.as_millis() as i64 - r.figures.total_ms as i64)
}

/// The guest's pause as a progress note: "111 ms (frozen 58 ms, QEMU's
/// STOP to RESUME 52 ms)", where frozen is the part its own clock did not
/// see (QEMU stopped, or the destination not yet resumed), measured from
/// the heartbeats, and the last figure is the same stop timed by the two
/// QEMUs' events; the rest of the pause is the heartbeat period plus
/// however late the guest itself was. "not seen" without a pause.
pub fn pause_text(r: &Run) -> String {
    let stopped = r
        .stopped_ms
        .map_or(String::new(), |s| format!(", QEMU's STOP to RESUME {s} ms"));
    match (r.gap, r.gap_guest) {
        (Some(g), Some(guest)) => format!(
            "{} ms (frozen {} ms{stopped})",
            g.as_millis(),
            g.saturating_sub(guest).as_millis()
        ),
        (Some(g), None) => format!("{} ms", g.as_millis()),
        (None, _) => "not seen".into(),
    }
}

/// How many completed runs first saw "completed" without QEMU's times.
pub fn times_late(runs: &[Outcome]) -> usize {
    runs.iter()
        .filter(|o| matches!(o, Outcome::Done(r) if r.times_late))
        .count()
}

/// One driver's migrations of a case.
#[derive(Debug, Clone)]
pub struct DriverRuns {
    /// Who migrated.
    pub driver: Driver,
    /// Each repetition.
    pub outcomes: Vec<Outcome>,
    /// Oddities: `TERN-FAIL` lines, heartbeats going backwards, failures.
    pub notes: Vec<String>,
}

/// One row: a case measured by every driver asked for, plus what else was
/// going on.
#[derive(Debug, Clone)]
pub struct Row {
    /// Guest RAM and dirty rate.
    pub case: Case,
    /// Each driver's migrations, in the order they ran.
    pub drivers: Vec<DriverRuns>,
    /// Other processes' QEMUs running when the case started.
    pub other_qemus: usize,
    /// 1-minute load average when the case started.
    pub load: Option<f64>,
}

impl Row {
    /// The migrations of driver `d`, if it ran.
    pub fn of(&self, d: Driver) -> Option<&DriverRuns> {
        self.drivers.iter().find(|r| r.driver == d)
    }
}

/// How much more than the floor's control time a flow may take (issue 19).
pub const OVERHEAD_MARGIN_MS: i64 = 40;
/// How much longer than QEMU's downtime the guest may see itself paused
/// (issue 19).
pub const PAUSE_MARGIN_MS: u64 = 60;

/// Issue 19's two targets for one flow of a case: its median control time
/// within [`OVERHEAD_MARGIN_MS`] of the floor's (`floor`: QEMU driven
/// directly), and its median guest-visible pause within
/// [`PAUSE_MARGIN_MS`] of its median downtime. One line, or `None` when
/// the flow did not complete every run.
pub fn check_line(label: &str, runs: &[Outcome], floor: Option<&[Outcome]>) -> Option<String> {
    let mine = control_ms(runs)?;
    let Some(Outcome::Done(agg)) = aggregate(runs) else {
        return None;
    };
    let verdict = |ok: bool| if ok { "holds" } else { "OVER" };
    let overhead = match floor.and_then(control_ms) {
        Some(f) => format!(
            "median overhead {mine} ms, QMP's {f} + {OVERHEAD_MARGIN_MS} = {} ms: {}",
            f + OVERHEAD_MARGIN_MS,
            verdict(mine <= f + OVERHEAD_MARGIN_MS)
        ),
        None => format!("median overhead {mine} ms, no QMP floor measured"),
    };
    let pause = match agg.gap {
        Some(g) if !agg.figures.times_missing() => {
            let (g, d) = (g.as_millis() as u64, agg.figures.downtime_ms);
            format!(
                "guest pause {g} ms, downtime {d} + {PAUSE_MARGIN_MS} = {} ms: {}",
                d + PAUSE_MARGIN_MS,
                verdict(g <= d + PAUSE_MARGIN_MS)
            )
        }
        _ => "guest pause not measured".into(),
    };
    Some(format!("{label}: {overhead}; {pause}"))
}

#[cfg(test)]
mod tests {

    #[test]
    fn an_unfinished_migration_fills_its_row_with_the_reason() {
        let late = Outcome::DidNotConverge {
            after: Duration::from_secs(90),
            figures: Figures::default(),
        };
        assert_eq!(
            unfinished_cells(Some(&late), 6).as_deref(),
            Some("did not converge in 90 s | | | | |")
        );
        let failed = Outcome::Failed("a|b\nc".into());
        assert_eq!(
            unfinished_cells(Some(&failed), 6).as_deref(),
            Some("failed: a/b c | | | | |")
        );
        assert_eq!(
            unfinished_cells(None, 6).as_deref(),
            Some("no run | | | | |")
        );
    }

    use super::*;
    use serde_json::json;

    #[test]
    fn figures_from_query_migrate() {
        let q = json!({"status": "completed", "total-time": 1077, "downtime": 49,
            "ram": {"transferred": 404170408u64, "dirty-sync-count": 3}});
        let f = Figures::from_query(&q);
        assert_eq!((f.total_ms, f.downtime_ms, f.iterations), (1077, 49, 3));
        assert!(!f.times_missing());
        assert!(Figures::from_query(&json!({"status": "completed"})).times_missing());
    }

    #[test]
    fn control_time_ignores_runs_without_qemu_times() {
        let run = |w: u64, t: u64| {
            Outcome::Done(Run {
                wall: Duration::from_millis(w),
                figures: Figures {
                    total_ms: t,
                    ..Default::default()
                },
                ..Default::default()
            })
        };
        let runs = [run(1500, 1200), run(1400, 1300), run(1600, 0)];
        assert_eq!(control_ms(&runs), Some(300));
        let failed = [run(1500, 1200), Outcome::Failed("x".into())];
        assert_eq!(control_ms(&failed), None);
    }

    #[test]
    fn check_line_compares_with_the_floor_and_the_downtime() {
        let run = |w: u64, t: u64, down: u64, gap: u64| {
            Outcome::Done(Run {
                wall: Duration::from_millis(w),
                figures: Figures {
                    total_ms: t,
                    downtime_ms: down,
                    ..Default::default()
                },
                gap: Some(Duration::from_millis(gap)),
                ..Default::default()
            })
        };
        let floor = [run(600, 500, 90, 150), run(590, 500, 90, 150)];
        // Overheads 130, 150, 140: median 140 <= 100 + 40.
        let good = [
            run(630, 500, 80, 130),
            run(650, 500, 90, 160),
            run(640, 500, 100, 150),
        ];
        let l = check_line("tern", &good, Some(&floor)).unwrap();
        assert!(
            l.contains("median overhead 140 ms, QMP's 100 + 40 = 140 ms: holds"),
            "{l}"
        );
        assert!(
            l.contains("guest pause 150 ms, downtime 90 + 60 = 150 ms: holds"),
            "{l}"
        );
        let slow = [run(700, 500, 20, 200)];
        let l = check_line("tern --p2p", &slow, Some(&floor)).unwrap();
        assert!(l.contains("200 ms, QMP's 100 + 40 = 140 ms: OVER"), "{l}");
        assert!(l.contains("downtime 20 + 60 = 80 ms: OVER"), "{l}");
        assert!(check_line("x", &[Outcome::Failed("no".into())], Some(&floor)).is_none());
    }
}
