//! Case (a): `tern migrate --live` between two test hosts.

use super::report::{Breakdown, Figures, Outcome, Run};
use super::Bench;
use crate::guest::{after_migration, wait_ready, AfterMigration, Case};
use anyhow::{Context, Result};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tern_migrate::{JobEvent, JobInfo};
use tern_testkit::watch::ConsoleWatcher;
use tern_testkit::{bin, TernHost};

/// How long `tern migrate` may take to return after `domjobabort`.
const ABORT_WAIT: Duration = Duration::from_secs(30);

/// Removes a case's guest from both hosts, whatever state it is in.
struct Cleanup<'a> {
    a: &'a TernHost,
    b: &'a TernHost,
    name: String,
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        for (h, verb) in [
            (self.b, "destroy"),
            (self.a, "destroy"),
            (self.a, "undefine"),
            (self.b, "undefine"),
        ] {
            // Most of these fail (not running, not defined there); that is fine.
            let _ = h.tern(&[verb, &self.name]);
        }
    }
}

/// Boots the case's guest on host A, lets it settle, and migrates it with
/// `tern migrate --live` `bench.repeat` times, A to B and back, letting it
/// settle again between migrations. Stops at the first migration that
/// does not complete or after which the guest crashed.
pub async fn run(
    bench: &Bench,
    case: Case,
    flags: &[String],
    notes: &mut Vec<String>,
) -> Result<Vec<Outcome>> {
    let (a, b) = (&bench.a, &bench.b);
    let name = case.name("tern");
    a.define_guest(&case.spec(&name, &bench.guest));
    let _cleanup = Cleanup {
        a,
        b,
        name: name.clone(),
    };
    a.ok(&["start", &name]);
    wait_ready(&a.console_log(&name)).await?;
    let mut out = Vec::new();
    for i in 0..bench.repeat {
        tokio::time::sleep(bench.settle).await;
        let (from, to) = if i % 2 == 0 { (a, b) } else { (b, a) };
        let who = if flags.is_empty() {
            format!("tern #{}", i + 1)
        } else {
            format!("tern {} #{}", flags.join(" "), i + 1)
        };
        let o = migrate_once(bench, (from, to), &name, &who, flags, notes)
            .await
            .unwrap_or_else(|e| Outcome::Failed(format!("{e:#}")));
        bench.keep_logs(
            &format!("{name}-r{}", i + 1),
            &from.console_log(&name),
            &to.console_log(&name),
        );
        // A guest that crashed or did not arrive cannot be measured again.
        let go_on = matches!(&o, Outcome::Done(r) if r.crash.is_none() && r.gap.is_some());
        out.push(o);
        if !go_on {
            break;
        }
    }
    Ok(out)
}

/// One `tern migrate --live NAME TO` run against FROM, timed, with the
/// guest's heartbeats watched on both consoles.
async fn migrate_once(
    bench: &Bench,
    (from, to): (&TernHost, &TernHost),
    name: &str,
    who: &str,
    flags: &[String],
    notes: &mut Vec<String>,
) -> Result<Outcome> {
    let scratch = crate::guest::scratch("tern-bench-cli-")?;
    let watcher = ConsoleWatcher::start();
    watcher.add(from.console_log(name), false);
    // Coming back to a host, its old console log is still there until the
    // agent starts the destination QEMU (which replaces it): skip it.
    let dest_log = to.console_log(name);
    let stale = dest_log.exists();
    watcher.add(dest_log, !stale);
    let (out_path, err_path) = (scratch.path().join("stdout"), scratch.path().join("stderr"));
    let out = std::fs::File::create(&out_path).context("create the CLI's stdout file")?;
    let err = std::fs::File::create(&err_path).context("create the CLI's stderr file")?;
    let (forecast_ms, forecast_span) = if bench.forecast {
        let f = forecast(from, to, name, flags)?;
        let span = f.range.as_ref().map(|r| (r.total.p10_ms, r.total.p90_ms));
        notes.push(format!(
            "{who}: forecast {} ms (p10-p90 {}) from {} MiB at {} MiB/s ({}), {:.0} % zero pages, dirtying {} MiB/s, copy speed {} MiB/s, downtime {} ms",
            f.prediction.total_ms,
            span.map_or("–".into(), |(a, b)| format!("{a}-{b} ms")),
            f.memory >> 20,
            f.bandwidth >> 20,
            f.bandwidth_source,
            f.zero_fraction * 100.0,
            f.dirty_rate >> 20,
            f.cpu_rate >> 20,
            f.prediction.downtime_ms,
        ));
        if let Some(r) = &f.range {
            notes.push(format!(
                "{who}: forecast's thread rate {} MiB/s: {}",
                r.inputs.thread_rate.p50 as u64 >> 20,
                r.inputs.thread_rate.source
            ));
        }
        (Some(f.prediction.total_ms), span)
    } else {
        (None, None)
    };
    let log_from = crate::guest::log_len(&from.console_log(name));
    let cpu0 = bench.cpu.as_ref().map(|m| m.begin());
    let agents0 = (agent_cpu_ms(from), agent_cpu_ms(to));
    let t0 = Instant::now();
    let t0_ms = epoch_ms();
    let mut child = tokio::process::Command::new(bin("tern"))
        .arg("-c")
        .arg(from.uri())
        .args(["migrate", "--live"])
        .args(flags)
        .args([name, &to.uri()])
        .env_remove("TERN_DEFAULT_URI")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .kill_on_drop(true)
        .spawn()
        .context("run tern migrate")?;
    let status = match tokio::time::timeout(bench.timeout, child.wait()).await {
        Ok(st) => st.context("wait for tern migrate")?,
        Err(_) => {
            let _ = from.tern(&["domjobabort", name]);
            if tokio::time::timeout(ABORT_WAIT, child.wait())
                .await
                .is_err()
            {
                notes.push(format!(
                    "{who}: migrate still running {} s after domjobabort; killed the CLI",
                    ABORT_WAIT.as_secs()
                ));
                let _ = child.kill().await;
            }
            let figures = job_figures(from, name).unwrap_or_default();
            let _ = watcher.finish();
            return Ok(Outcome::DidNotConverge {
                after: bench.timeout,
                figures,
            });
        }
    };
    let wall = t0.elapsed();
    let end = Instant::now();
    let end_ms = epoch_ms();
    if let (Some(f0), Some(t0c), Some(f1), Some(t1c)) =
        (agents0.0, agents0.1, agent_cpu_ms(from), agent_cpu_ms(to))
    {
        // The agents compete with both QEMUs for the cores: what they
        // spend is what Tern adds around QEMU's own copy.
        notes.push(format!(
            "{who}: the agents' own CPU during the migration: source {} ms, destination {} ms (wall {} ms)",
            f1.saturating_sub(f0),
            t1c.saturating_sub(t0c),
            wall.as_millis()
        ));
    }
    if let (Some(m), Some(c0)) = (&bench.cpu, cpu0) {
        m.record(c0);
    }
    if !status.success() {
        let _ = watcher.finish();
        let e = std::fs::read_to_string(&err_path).unwrap_or_default();
        return Ok(Outcome::Failed(format!("{status}: {}", e.trim())));
    }
    let workload_mib_s = crate::guest::workload_rate(&from.console_log(name), log_from);
    let info = job_info(from, name)?;
    let figures = Figures::from_jobinfo(&info);
    let run_errors = run_errors(&info, who, notes);
    let (src_events, dst_events) = (events(from, name), events(to, name));
    // The direct driver does not run Tern's convergence policy: say so
    // when the policy changed anything.
    for e in src_events
        .iter()
        .filter(|e| e.message.starts_with("policy:"))
    {
        notes.push(format!("{who}: {}", e.message));
    }
    let breakdown = Breakdown {
        qemu_total_ms: figures.total_ms,
        ..breakdown(&src_events, &dst_events, t0_ms, end_ms)
    };
    let after = after_migration(&watcher, &to.console_log(name), end).await;
    let rep = watcher.finish();
    super::note_watch(who, &rep, &after, notes);
    Ok(Outcome::Done(Run {
        wall,
        figures,
        gap: (after == AfterMigration::Running).then_some(rep.max_gap),
        gap_guest: (after == AfterMigration::Running).then_some(rep.max_gap_guest),
        stopped_ms: info.guest_stopped_ms,
        breakdown: Some(breakdown),
        times_late: figures.times_missing(),
        crash: match after {
            AfterMigration::Crashed(l) => Some(l),
            _ => None,
        },
        workload_mib_s,
        forecast_ms,
        forecast_span,
        run_errors,
    }))
}

/// The fractions of a run at which its forecasts are checked.
pub const CHECK_AT: [f64; 3] = [0.25, 0.5, 0.75];

/// The errors of the forecasts the source agent made during the run, at
/// [`CHECK_AT`] of QEMU's total time, on the time that really followed;
/// each check goes into the notes.
fn run_errors(info: &JobInfo, who: &str, notes: &mut Vec<String>) -> [Option<f64>; 3] {
    let mut out = [None; 3];
    for (k, at) in CHECK_AT.iter().enumerate() {
        let c = tern_migrate::forecast::check_at(&info.forecast_updates, info.time_elapsed_ms, *at);
        if let Some(c) = c {
            notes.push(format!(
                "{who}: at {:.0} % ({} ms) the forecast said {} ms more and a {} ms pause; {} ms followed ({:+.0} %)",
                at * 100.0,
                c.update.at_ms,
                c.update.remaining_ms,
                c.update.downtime_ms,
                c.actual_remaining_ms,
                c.error * 100.0
            ));
            out[k] = Some(c.error);
        }
    }
    out
}

/// `tern migrate-forecast --json` with the migration's bandwidth limit.
fn forecast(
    from: &TernHost,
    to: &TernHost,
    name: &str,
    flags: &[String],
) -> Result<tern_migrate::policy::Forecast> {
    let mut args = vec!["migrate-forecast", "--json", name];
    let to_uri = to.uri();
    args.push(&to_uri);
    for flag in ["--bandwidth", "--postcopy-bandwidth"] {
        if let Some(i) = flags.iter().position(|f| f == flag) {
            if let Some(bw) = flags.get(i + 1) {
                args.extend([flag, bw.as_str()]);
            }
        }
    }
    if flags.iter().any(|f| f == "--postcopy") {
        args.push("--postcopy");
    }
    let o = from.tern(&args);
    anyhow::ensure!(
        o.status.success(),
        "tern migrate-forecast failed: {}",
        String::from_utf8_lossy(&o.stderr).trim()
    );
    let f: tern_migrate::policy::Forecast =
        serde_json::from_slice(&o.stdout).context("parse tern migrate-forecast --json")?;
    Ok(f)
}

/// QEMU's figures as `tern domjobinfo --completed --json` reports them.
pub(crate) fn job_figures(src: &TernHost, name: &str) -> Result<Figures> {
    job_info(src, name).map(|j| Figures::from_jobinfo(&j))
}

/// `tern domjobinfo --completed --json`.
pub(crate) fn job_info(src: &TernHost, name: &str) -> Result<JobInfo> {
    let o = src.tern(&["domjobinfo", name, "--completed", "--json"]);
    anyhow::ensure!(
        o.status.success(),
        "tern domjobinfo --completed failed: {}",
        String::from_utf8_lossy(&o.stderr).trim()
    );
    serde_json::from_slice(&o.stdout).context("parse tern domjobinfo --completed --json")
}

/// Milliseconds since the Unix epoch, the agents' event clock.
pub fn epoch_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A host's job events for a domain (its last job).
pub fn events(h: &TernHost, name: &str) -> Vec<JobEvent> {
    let o = h.tern(&["domjobevents", name, "--json"]);
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Splits the CLI's wall clock at the agents' job events. The events are
/// matched by the start of their message, as the agents word them today.
fn breakdown(es: &[JobEvent], ed: &[JobEvent], t0_ms: u64, end_ms: u64) -> Breakdown {
    let at = |ev: &[JobEvent], prefix: &str| {
        ev.iter()
            .find(|e| e.message.starts_with(prefix))
            .map(|e| e.at_ms)
    };
    let span = |from: Option<u64>, to: Option<u64>| to?.checked_sub(from?);
    let begin = at(es, "phase begin");
    let prepare = at(ed, "phase prepare");
    let listening = at(ed, "QEMU listening");
    let sending = at(es, "sending memory");
    let completed = at(es, "QEMU completed");
    let runs = at(ed, "guest runs on this host");
    let stopped = at(es, "source stopped");
    Breakdown {
        start: span(Some(t0_ms), begin),
        begin: span(begin, prepare),
        prepare: span(prepare, listening),
        handoff: span(listening, sending),
        copy: span(sending, completed),
        resume: span(completed, runs),
        confirm: span(runs, stopped),
        exit: span(stopped, Some(end_ms)),
        qemu_total_ms: 0,
    }
}

/// CPU milliseconds (user + system) a host's `ternd` itself has used.
fn agent_cpu_ms(host: &TernHost) -> Option<u64> {
    let secs = crate::scale::probe::Proc(host.pid()?).cpu();
    Some((secs * 1000.0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn breakdown_splits_the_wall_clock_at_the_events() {
        let ev = |at_ms, message: &str| JobEvent {
            at_ms,
            phase: String::new(),
            message: message.into(),
        };
        let src = [
            ev(1010, "phase begin"),
            ev(1200, "sending memory to tcp:x"),
            ev(1700, "QEMU completed: downtime 50 ms"),
            ev(
                1790,
                "source stopped and cleaned; the guest runs on the destination",
            ),
        ];
        let dst = [
            ev(1030, "phase prepare"),
            ev(1150, "QEMU listening on tcp:x"),
            ev(1720, "guest runs on this host"),
        ];
        let b = breakdown(&src, &dst, 1000, 1900);
        assert_eq!(
            [b.start, b.begin, b.prepare, b.handoff, b.copy, b.resume, b.confirm, b.exit],
            [10, 20, 120, 50, 500, 20, 70, 110].map(Some)
        );
    }
}
