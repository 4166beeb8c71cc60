//! `tern-bench converge`: does a live migration finish, and at what cost
//! (issue 6)?
//!
//! A 2 GiB guest dirtying 0, 50 and 200 MiB/s over an unlimited link, and
//! one dirtying faster than a bandwidth limit, each migrated three ways in
//! the same run:
//!
//! - **tern**: `tern migrate --live --postcopy` with the convergence policy
//!   (the default); `--postcopy` only *allows* post-copy, the policy decides
//!   whether to switch. `tern migrate-forecast` is asked first.
//! - **qemu**: QEMU driven directly over QMP with its defaults: downtime
//!   limit 300 ms, nothing else.
//! - **nova**: the same, with Nova's stepped downtime (`live_migration_downtime`
//!   500 ms in 10 steps, `live_migration_downtime_delay` 75 s per GiB of
//!   data, at least 2 GiB: 50 ms at the start, +45 ms every 150 s).
//!
//! Every method gets the same bandwidth limit (QEMU's, in pre-copy; with
//! `--shaped`, a real link that limits post-copy too). Total time is the wall
//! clock from the command to the guest running on the destination, with
//! the destination QEMU's start-up for the direct methods too (Tern's
//! includes it). A migration still copying
//! after `--give-up` seconds (10 minutes by default) is cancelled and counts
//! as not completed.
//!
//! Each row also shows the pause the guest saw (the longest wait between
//! two of its heartbeats, which it prints every 50 ms, `tern.hb_ms`) beside
//! QEMU's downtime, Tern's forecast as a median with its p10-p90 span, and
//! the error of the forecasts Tern's source agent made during the run, at
//! 25, 50 and 75 % of QEMU's total time, on the time that followed
//! (`domjobinfo --completed --json`'s `forecast_updates`). Below the table,
//! one line per case checks the targets of issue 22: median forecast
//! against median total, Tern's median downtime against the lower of QEMU's
//! defaults and Nova's steps, Tern's median total against the fastest, and
//! the guest's pause against QEMU's downtime plus 60 ms.
//!
//! One migration of each method warms the machine up first and is not
//! counted (`--warm-up`). Every migration boots a fresh guest, and the methods take turns
//! migration by migration (`--repeat` rounds, the first method rotating),
//! so that drifts in the machine's speed fall on every method alike; the
//! table shows each cell's median, and Tern's ratio to QEMU's defaults is
//! also given round by round.

use crate::guest::Case;
use crate::live::direct::{self, Plan};
use crate::live::report::{Outcome, Run};
use crate::live::{tern, Bench, BenchSetup};
use anyhow::{bail, Context, Result};
use clap::Args;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tern_migrate::MigrateOptions;

/// Options. The defaults are the documented run.
#[derive(Args, Debug)]
pub struct ConvergeArgs {
    /// Guest RAM, MiB (the guest fills half of it).
    #[arg(long, default_value_t = 2048)]
    memory: u64,
    /// Dirty rates over an unlimited link, MiB/s (`--rates ""`: none).
    #[arg(long, value_delimiter = ',', default_value = "0,50,200")]
    rates: Vec<String>,
    /// Cases faster than the link, as DIRTY@BANDWIDTH in MiB/s.
    #[arg(long, value_delimiter = ',', default_value = "200@100")]
    over: Vec<String>,
    /// Seconds after which a migration still copying is cancelled.
    #[arg(long, default_value_t = 600)]
    give_up: u64,
    /// Seconds the guest runs after TERN-READY before it is migrated.
    #[arg(long, default_value_t = 5)]
    settle: u64,
    /// `tern.verify_rate`, MiB/s.
    #[arg(long, default_value_t = 8)]
    verify_rate: u64,
    /// Only these methods (tern, qemu, nova; also qemu-postcopy: QEMU's
    /// defaults with the postcopy-ram capability on both sides, as Tern
    /// sets it with `--postcopy`, to weigh what the capability costs).
    #[arg(long, value_delimiter = ',', default_value = "tern,qemu,nova")]
    methods: Vec<String>,
    /// Keep every migration's console logs in this directory.
    #[arg(long)]
    logs: Option<PathBuf>,
    /// QEMU for the direct methods.
    #[arg(long, default_value = "qemu-system-x86_64")]
    qemu: PathBuf,
    /// Allow post-copy in Tern's runs (`--postcopy`); QEMU then needs the
    /// postcopy-ram capability from the start, on both sides.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    tern_postcopy: bool,
    /// In the cases over a slower link, the link's rate caps post-copy
    /// too (`--postcopy-bandwidth`), as a real link would; false leaves
    /// post-copy uncapped on loopback (QEMU applies `--bandwidth` only in
    /// pre-copy), as every session measured the capped case. Off by
    /// default: QEMU's own rate limit in post-copy holds the guest's page
    /// requests back too (pauses of 0.8-1.3 s in session 19, against
    /// 0.17-0.23 s over a link shaped to the same rate, `--shaped`).
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set)]
    link_caps_postcopy: bool,
    /// Migrations per case and method, the methods taking turns; the table
    /// shows the median. A migration that does not finish ends its method's
    /// turns in that case.
    #[arg(long, default_value_t = 3)]
    repeat: u32,
    /// Migrations of each method, on the first case, before any is
    /// counted: the first migrations of a run meet cold caches (QEMU's
    /// binary and firmware, the agents' first guest), and the method that
    /// goes first in round 1 would carry that alone.
    #[arg(long, default_value_t = 1)]
    warm_up: u32,
    /// The agents run in two network namespaces joined by a veth link,
    /// and a case over a slower link shapes it (tbf, both ways, a 20 ms
    /// queue) instead of passing `--bandwidth`: the link then limits
    /// everything, post-copy's page requests included, as a real one
    /// does. Tern only: the direct methods run their QEMUs on loopback.
    #[arg(long)]
    shaped: bool,
}

/// One case: a dirty rate and a bandwidth limit.
#[derive(Debug, Clone, Copy)]
struct Load {
    dirty: u64,
    bandwidth: Option<u64>,
    /// The limit is a shaped veth link, not QEMU's rate limit.
    shaped: bool,
}

impl Load {
    fn label(&self) -> String {
        let how = match (self.shaped, self.bandwidth) {
            (false, _) => "",
            (true, Some(_)) => " (shaped veth)",
            (true, None) => " (veth)",
        };
        match self.bandwidth {
            Some(b) => format!("{} MiB/s over a {b} MiB/s link{how}", self.dirty),
            None => format!("{} MiB/s, unlimited link{how}", self.dirty),
        }
    }
}

/// Nova's `downtime_steps(data_gb)` with its defaults: (delay, downtime ms).
pub fn nova_steps(data_gib: u64) -> Vec<(Duration, u64)> {
    let (downtime, steps, delay) = (500.0_f64, 10u64, 75u64);
    let delay = delay * data_gib.max(2);
    let base = downtime / steps as f64;
    let offset = (downtime - base) / steps as f64;
    (0..=steps)
        .map(|i| {
            (
                Duration::from_secs(delay * i),
                (base + offset * i as f64) as u64,
            )
        })
        .collect()
}

/// "1.8 (1.5-2.4)": the forecast's median and span, s.
fn forecast_cell(r: &Run) -> String {
    let s = |ms: u64| format!("{:.1}", ms as f64 / 1000.0);
    match (r.forecast_ms, r.forecast_span) {
        (Some(m), Some((lo, hi))) => format!("{} ({}-{})", s(m), s(lo), s(hi)),
        (Some(m), None) => s(m),
        _ => "–".into(),
    }
}

/// "+12 / -3 / +40": the in-run forecasts' errors, percent.
fn errors_cell(e: &[Option<f64>; 3]) -> String {
    if e.iter().all(Option::is_none) {
        return "–".into();
    }
    e.iter()
        .map(|x| x.map_or("–".into(), |v| format!("{:+.0}", v * 100.0)))
        .collect::<Vec<_>>()
        .join(" / ")
}

/// One measured migration.
struct Cell {
    load: Load,
    method: &'static str,
    outcome: Outcome,
    notes: Vec<String>,
}

/// Runs every case and method and prints the table.
pub async fn run(a: ConvergeArgs) -> Result<()> {
    let mut loads = Vec::new();
    for r in a.rates.iter().filter(|r| !r.is_empty()) {
        loads.push(Load {
            dirty: r
                .parse()
                .with_context(|| format!("--rates {r}: not a rate in MiB/s"))?,
            bandwidth: None,
            shaped: a.shaped,
        });
    }
    for o in a.over.iter().filter(|o| !o.is_empty()) {
        let (d, b) = o
            .split_once('@')
            .with_context(|| format!("--over {o}: expected DIRTY@BANDWIDTH, e.g. 200@100"))?;
        loads.push(Load {
            dirty: d
                .parse()
                .with_context(|| format!("--over {o}: bad dirty rate"))?,
            bandwidth: Some(
                b.parse()
                    .with_context(|| format!("--over {o}: bad bandwidth"))?,
            ),
            shaped: a.shaped,
        });
    }
    if a.shaped {
        if let Some(m) = a.methods.iter().find(|m| m.as_str() != "tern") {
            bail!("--shaped measures Tern only (the direct methods' QEMUs run on loopback): drop {m} from --methods");
        }
    }
    if let Some(d) = &a.logs {
        std::fs::create_dir_all(d).with_context(|| format!("create {}", d.display()))?;
    }
    let mut bench = Bench::start(BenchSetup {
        verify_rate: a.verify_rate,
        settle: Duration::from_secs(a.settle),
        timeout: Duration::from_secs(a.give_up),
        qemu: a.qemu.clone(),
        repeat: a.repeat.max(1),
        logs: a.logs.clone(),
        pki_dir: None,
        lab: a.shaped,
    })?;
    bench.forecast = true;
    // Each migration boots its own guest, and the methods take turns
    // migration by migration (the first method rotating with each round):
    // the machine's speed drifts by more than the 10 % being measured over
    // a half-hour run, and taking turns puts the drift on every method alike.
    let rounds = bench.repeat;
    bench.repeat = 1;
    let started = Instant::now();
    if let Some(&load) = loads.first() {
        let case = Case {
            memory_mib: a.memory,
            dirty_mib_s: load.dirty,
        };
        for _ in 0..a.warm_up {
            for m in &a.methods {
                let o = one(&bench, &a, case, load, m, &mut Vec::new()).await?;
                eprintln!(
                    "tern-bench: warm-up, not counted: {}: {m}: {}",
                    load.label(),
                    brief(&o)
                );
            }
        }
    }
    let mut cells = Vec::new();
    for &load in &loads {
        let case = Case {
            memory_mib: a.memory,
            dirty_mib_s: load.dirty,
        };
        if let Some(lab) = &bench.lab {
            lab.shape_link(load.bandwidth.map(|b| b << 20));
        }
        let n = a.methods.len();
        let mut runs: Vec<Vec<Outcome>> = vec![Vec::new(); n];
        let mut notes: Vec<Vec<String>> = vec![Vec::new(); n];
        for round in 0..rounds as usize {
            for k in 0..n {
                let i = (round + k) % n;
                // A method that did not finish once is not asked again.
                if runs[i].last().is_some_and(|o| done(o).is_none()) {
                    continue;
                }
                let m = a.methods[i].as_str();
                eprintln!(
                    "tern-bench: {}: {m}, round {}/{rounds} ...",
                    load.label(),
                    round + 1
                );
                let o = one(&bench, &a, case, load, m, &mut notes[i]).await?;
                eprintln!("tern-bench: {}: {m}: {}", load.label(), brief(&o));
                runs[i].push(o);
            }
        }
        let pairs = paired_ratios(&a.methods, &runs);
        for (i, (m, v)) in a.methods.iter().zip(runs).enumerate() {
            let mut n = std::mem::take(&mut notes[i]);
            if m == "tern" {
                if let Some(p) = &pairs {
                    n.push(p.clone());
                }
            }
            let outcome = median(Ok(v), &mut n);
            cells.push(Cell {
                load,
                method: static_name(m),
                outcome,
                notes: n,
            });
        }
    }
    println!(
        "Convergence: {} MiB guest (tern.mem {} MiB), TCG, {} cores, give up after {} s; \
         load average {}; whole run {} s\n",
        a.memory,
        a.memory / 2,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        a.give_up,
        crate::sys::loadavg().map_or("?".into(), |l| format!("{l:.1}")),
        started.elapsed().as_secs()
    );
    print_table(&cells, a.give_up);
    if let Some(d) = &a.logs {
        // The agents' logs hold the policy's observations (one JSON line per
        // look, target tern_agent::policy_trace).
        for (h, n) in [(&bench.a, "agent-a.log"), (&bench.b, "agent-b.log")] {
            if let Err(e) = std::fs::copy(h.log(), d.join(n)) {
                eprintln!("tern-bench: cannot keep {}: {e}", h.log().display());
            }
        }
    }
    Ok(())
}

fn static_name(m: &str) -> &'static str {
    match m {
        "tern" => "tern (policy)",
        "qemu" => "QEMU defaults",
        "qemu-postcopy" => "QEMU defaults + postcopy-ram",
        _ => "Nova steps",
    }
}

/// One migration of `case` by method `m`, on a freshly booted guest.
async fn one(
    bench: &Bench,
    a: &ConvergeArgs,
    case: Case,
    load: Load,
    m: &str,
    notes: &mut Vec<String>,
) -> Result<Outcome> {
    let r = match m {
        "tern" => {
            let mut flags = Vec::new();
            if a.tern_postcopy {
                flags.push("--postcopy".to_string());
            }
            if let Some(b) = load.bandwidth.filter(|_| !load.shaped) {
                flags.extend(["--bandwidth".to_string(), b.to_string()]);
                if a.tern_postcopy && a.link_caps_postcopy {
                    flags.extend(["--postcopy-bandwidth".to_string(), b.to_string()]);
                }
            }
            tern::run(bench, case, &flags, notes).await
        }
        "qemu" | "qemu-postcopy" | "nova" => {
            let mut plan = Plan {
                options: MigrateOptions {
                    live: true,
                    no_policy: true,
                    bandwidth_mib: load.bandwidth,
                    ..Default::default()
                },
                downtime_steps: Vec::new(),
            };
            plan.options.postcopy = m == "qemu-postcopy";
            if m == "nova" {
                let steps = nova_steps(a.memory.div_ceil(1024));
                plan.options.max_downtime_ms = steps.first().map(|s| s.1);
                plan.downtime_steps = steps.into_iter().skip(1).collect();
            }
            // The direct driver's clock includes starting the destination
            // QEMU, as Tern's does.
            direct::run(bench, case, &plan, notes)
                .await
                .map(|d| d.outcomes)
        }
        other => anyhow::bail!("unknown method {other:?}: use tern, qemu, qemu-postcopy or nova"),
    };
    Ok(match r {
        Ok(v) => v
            .into_iter()
            .next()
            .unwrap_or_else(|| Outcome::Failed("no migration ran".into())),
        Err(e) => Outcome::Failed(format!("{e:#}")),
    })
}

/// Tern's total over QEMU's defaults' in the same round, when both
/// finished every round: each ratio, and their median.
fn paired_ratios(methods: &[String], runs: &[Vec<Outcome>]) -> Option<String> {
    let at = |name: &str| methods.iter().position(|m| m == name);
    let (t, q) = (&runs[at("tern")?], &runs[at("qemu")?]);
    let mut ratios: Vec<f64> = t
        .iter()
        .zip(q)
        .map(|(t, q)| Some(done(t)?.wall.as_secs_f64() / done(q)?.wall.as_secs_f64().max(1e-3)))
        .collect::<Option<_>>()?;
    if ratios.len() < 2 {
        return None;
    }
    let each = ratios
        .iter()
        .map(|r| format!("{r:.2}"))
        .collect::<Vec<_>>()
        .join(" / ");
    ratios.sort_by(f64::total_cmp);
    Some(format!(
        "tern / QEMU defaults round by round: {each}; median {:.2}x",
        ratios[ratios.len() / 2]
    ))
}

/// The run with the median total time when every run finished, else the
/// first that did not; every run's total goes into the notes.
fn median(r: Result<Vec<Outcome>>, notes: &mut Vec<String>) -> Outcome {
    let v = match r {
        Ok(v) if !v.is_empty() => v,
        Ok(_) => return Outcome::Failed("no migration ran".into()),
        Err(e) => return Outcome::Failed(format!("{e:#}")),
    };
    if let Some(bad) = v.iter().position(|o| done(o).is_none()) {
        return v
            .into_iter()
            .nth(bad)
            .unwrap_or(Outcome::Failed(String::new()));
    }
    let mut runs: Vec<Run> = v
        .into_iter()
        .filter_map(|o| match o {
            Outcome::Done(r) => Some(r),
            _ => None,
        })
        .collect();
    if runs.len() > 1 {
        notes.push(format!(
            "totals of {} runs, in order (QEMU's own total-time; downtime, pause seen by the guest, of which frozen): {}",
            runs.len(),
            runs.iter()
                .map(|r| format!(
                    "{:.2} s (QEMU {:.2} s; {} ms, {})",
                    r.wall.as_secs_f64(),
                    r.figures.total_ms as f64 / 1000.0,
                    r.figures.downtime_ms,
                    crate::live::report::pause_text(r)
                ))
                .collect::<Vec<_>>()
                .join(" / ")
        ));
    }
    let medians = Medians::of(&runs);
    runs.sort_by_key(|r| r.wall);
    let mut mid = runs.swap_remove(runs.len() / 2);
    medians.apply(&mut mid);
    Outcome::Done(mid)
}

/// Each figure's median over a cell's runs: the row shows the run with
/// the median total, with these in place of its own downtime, pause,
/// forecast and forecast errors (the acceptance lines of issue 22 are
/// about each figure's median, not the figures of one run).
struct Medians {
    downtime_ms: Option<u64>,
    gap: Option<Duration>,
    forecast_ms: Option<u64>,
    forecast_span: Option<(u64, u64)>,
    run_errors: [Option<f64>; 3],
}

fn mid<T: Copy + PartialOrd>(mut v: Vec<T>) -> Option<T> {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    v.get(v.len() / 2).copied()
}

impl Medians {
    fn of(runs: &[Run]) -> Medians {
        let timed: Vec<&Run> = runs.iter().filter(|r| !r.figures.times_missing()).collect();
        Medians {
            downtime_ms: mid(timed.iter().map(|r| r.figures.downtime_ms).collect()),
            gap: mid(runs.iter().filter_map(|r| r.gap).collect()),
            forecast_ms: mid(runs.iter().filter_map(|r| r.forecast_ms).collect()),
            forecast_span: mid(runs.iter().filter_map(|r| r.forecast_span).collect()),
            run_errors: [0, 1, 2]
                .map(|k| mid(runs.iter().filter_map(|r| r.run_errors[k]).collect())),
        }
    }

    fn apply(self, r: &mut Run) {
        if let Some(d) = self.downtime_ms {
            r.figures.downtime_ms = d;
        }
        if self.gap.is_some() {
            // The median pause is another run's: its split is not this one's.
            r.gap = self.gap;
            r.gap_guest = None;
        }
        r.forecast_ms = self.forecast_ms.or(r.forecast_ms);
        r.forecast_span = self.forecast_span.or(r.forecast_span);
        r.run_errors = self.run_errors;
    }
}

fn brief(o: &Outcome) -> String {
    match o {
        Outcome::Done(r) => format!(
            "{:.1} s, downtime {} ms",
            r.wall.as_secs_f64(),
            r.figures.downtime_ms
        ),
        Outcome::DidNotConverge { after, .. } => format!("not done after {} s", after.as_secs()),
        Outcome::Failed(e) => format!("failed: {e}"),
    }
}

fn done(o: &Outcome) -> Option<&Run> {
    match o {
        Outcome::Done(r) if r.crash.is_none() => Some(r),
        _ => None,
    }
}

fn print_table(cells: &[Cell], give_up: u64) {
    println!(
        "| guest dirtying | method | completed | total s | QEMU's total-time s | downtime ms | pause seen by the guest ms | guest MiB/s during | forecast s (p10-p90) | in-run forecast error at 25/50/75 % |"
    );
    println!("|---|---|---|---:|---:|---:|---:|---:|---:|---:|");
    for c in cells {
        let dash = || "–".to_string();
        let (completed, cols) = match &c.outcome {
            Outcome::Done(r) => (
                if r.crash.is_some() {
                    "yes, guest crashed".to_string()
                } else {
                    "yes".to_string()
                },
                [
                    format!("{:.1}", r.wall.as_secs_f64()),
                    format!("{:.1}", r.figures.total_ms as f64 / 1000.0),
                    r.figures.downtime_ms.to_string(),
                    r.gap.map_or_else(dash, |g| g.as_millis().to_string()),
                    r.workload_mib_s.map_or_else(dash, |w| format!("{w:.0}")),
                    forecast_cell(r),
                    errors_cell(&r.run_errors),
                ],
            ),
            Outcome::DidNotConverge { .. } => (
                format!("no (cancelled at {give_up} s)"),
                std::array::from_fn(|_| dash()),
            ),
            Outcome::Failed(e) => (format!("failed: {e}"), std::array::from_fn(|_| dash())),
        };
        println!(
            "| {} | {} | {completed} | {} |",
            c.load.label(),
            c.method,
            cols.join(" | ")
        );
    }
    println!();
    // Tern against QEMU's defaults where those completed, and the forecast.
    let mut labels: Vec<String> = cells.iter().map(|c| c.load.label()).collect();
    labels.dedup();
    for l in labels {
        let get = |m: &str| {
            cells
                .iter()
                .find(|c| c.load.label() == l && c.method == m)
                .and_then(|c| done(&c.outcome))
        };
        if let Some(t) = get("tern (policy)") {
            if let Some(q) = get("QEMU defaults") {
                println!(
                    "- {l}: tern / QEMU defaults = {:.2}x",
                    t.wall.as_secs_f64() / q.wall.as_secs_f64().max(1e-3)
                );
            }
            if let Some(f) = t.forecast_ms {
                let w = t.wall.as_millis() as f64;
                println!(
                    "- {l}: median forecast {:.1} s vs median measured {:.1} s ({:+.0} %; target within ±20 %)",
                    f as f64 / 1000.0,
                    w / 1000.0,
                    (f as f64 - w) / w.max(1.0) * 100.0
                );
            }
            let peers: Vec<&Run> = ["QEMU defaults", "Nova steps"]
                .iter()
                .filter_map(|m| get(m))
                .collect();
            if let Some(low) = peers.iter().map(|r| r.figures.downtime_ms).min() {
                println!(
                    "- {l}: median downtime tern {} ms, lower of QEMU defaults and Nova steps {} ms ({})",
                    t.figures.downtime_ms,
                    low,
                    if t.figures.downtime_ms <= low { "no higher" } else { "HIGHER" }
                );
            }
            if let Some(fast) = peers.iter().map(|r| r.wall).min() {
                let ratio = t.wall.as_secs_f64() / fast.as_secs_f64().max(1e-3);
                println!(
                    "- {l}: median total tern / fastest peer = {ratio:.2}x (target at most 1.10x)"
                );
            }
            if let Some(g) = t.gap {
                let limit = t.figures.downtime_ms + 60;
                println!(
                    "- {l}: pause seen by the guest {} ms, QEMU's downtime + 60 ms = {limit} ms ({})",
                    g.as_millis(),
                    if g.as_millis() as u64 <= limit { "within" } else { "OVER" }
                );
            }
        }
    }
    for c in cells {
        for n in &c.notes {
            println!("- {} / {}: {n}", c.load.label(), c.method);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nova_steps_match_novas_defaults_for_two_gib() {
        let s = nova_steps(2);
        assert_eq!(s.len(), 11);
        assert_eq!(s[0], (Duration::ZERO, 50));
        assert_eq!(s[1], (Duration::from_secs(150), 95));
        assert_eq!(s[10], (Duration::from_secs(1500), 500));
    }
}
