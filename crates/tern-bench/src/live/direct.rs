//! The floor: the same QEMU migration driven directly over QMP, with the
//! command line, capabilities and parameters Tern uses, and no agent. Its
//! clock runs from launching the destination QEMU to its `cont`, as
//! Tern's includes starting the destination.

use super::report::{Breakdown, Figures, Outcome, Run};
use super::Bench;
use crate::guest::{after_migration, wait_ready, AfterMigration, Case};
use crate::qemu::QemuProc;
use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tern_migrate::MigrateOptions;
use tern_qemu::{Qmp, QmpEvent};
use tern_testkit::watch::ConsoleWatcher;
use tokio::sync::broadcast::Receiver;

/// How often `query-migrate` is asked without a `MIGRATION` event.
const POLL: Duration = Duration::from_millis(100);
/// How long the destination may take to finish loading after the source
/// completed, and QEMU to settle after `migrate_cancel`.
const SETTLE_WAIT: Duration = Duration::from_secs(10);

/// How the direct driver sets QEMU up for a migration.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Capabilities and parameters, as Tern's agents would set them.
    pub options: MigrateOptions,
    /// Downtime limits (ms) to set as the migration's clock passes each
    /// time, in order (Nova's stepped downtime); empty: never changed.
    pub downtime_steps: Vec<(Duration, u64)>,
}

impl Plan {
    /// What Tern's agents set for a plain `migrate --live`.
    pub fn tern_defaults() -> Plan {
        Plan {
            options: MigrateOptions {
                live: true,
                ..Default::default()
            },
            downtime_steps: Vec::new(),
        }
    }
}

/// What the direct case measured.
#[derive(Debug, Default)]
pub struct Direct {
    /// How each migration ended; the wall clock includes launching the
    /// destination QEMU (the breakdown's Prepare).
    pub outcomes: Vec<Outcome>,
}

/// Boots the case's guest in a QEMU of our own, lets it settle, and
/// migrates it `bench.repeat` times, each time to a fresh destination
/// QEMU, letting it settle again between migrations. Stops at the first
/// migration that does not complete or after which the guest crashed.
pub async fn run(
    bench: &Bench,
    case: Case,
    plan: &Plan,
    notes: &mut Vec<String>,
) -> Result<Direct> {
    let name = case.name("qmp");
    let spec = case.spec(&name, &bench.guest);
    let domain = tern_model::xml::parse_domain(&spec.to_xml())
        .context("parse the guest XML into a domain")?;
    let tmp = crate::guest::scratch("tern-bench-qmp-")?;
    let mut src = QemuProc::launch(&bench.qemu, &domain, &tmp.path().join("q0"), false).await?;
    wait_ready(&src.console_log()).await?;
    let mut d = Direct::default();
    for i in 1..=bench.repeat {
        tokio::time::sleep(bench.settle).await;
        let t_dst = Instant::now();
        let dst_dir = tmp.path().join(format!("q{i}"));
        let dst = QemuProc::launch(&bench.qemu, &domain, &dst_dir, true).await?;
        let who = format!("QMP #{i}");
        let o = migrate_once(bench, (&src, &dst), t_dst, &who, plan, notes)
            .await
            .unwrap_or_else(|e| Outcome::Failed(format!("{e:#}")));
        bench.keep_logs(
            &format!("{name}-r{i}"),
            &src.console_log(),
            &dst.console_log(),
        );
        // A guest that crashed or did not arrive cannot be measured again.
        let go_on = matches!(&o, Outcome::Done(r) if r.crash.is_none() && r.gap.is_some());
        d.outcomes.push(o);
        if !go_on {
            break;
        }
        // The old source is paused in "postmigrate"; it goes now.
        src = dst;
    }
    Ok(d)
}

/// One migration from `src` to `dst`, launched at `launched`: timed from
/// then to the destination's `cont`.
async fn migrate_once(
    bench: &Bench,
    (src, dst): (&QemuProc, &QemuProc),
    launched: Instant,
    who: &str,
    plan: &Plan,
    notes: &mut Vec<String>,
) -> Result<Outcome> {
    // What the agents set: the destination before migrate-incoming, the
    // source before migrate (see crates/tern-agent/src/migration).
    let o = &plan.options;
    let mut caps = o.shared_capabilities();
    caps.push(("events", true));
    set_capabilities(&dst.qmp, &caps).await?;
    let shared = o.shared_parameters();
    if !shared.is_empty() {
        dst.qmp
            .execute("migrate-set-parameters", Some(Value::Object(shared)))
            .await?;
    }
    let uri = format!("tcp:127.0.0.1:{}", crate::sys::free_port()?);
    let mut dst_events = dst.qmp.events();
    dst.qmp
        .execute("migrate-incoming", Some(json!({ "uri": uri })))
        .await?;
    let listening = Instant::now();
    set_capabilities(&src.qmp, &o.source_capabilities()).await?;
    src.qmp
        .execute(
            "migrate-set-parameters",
            Some(Value::Object(o.source_parameters())),
        )
        .await?;
    let mut src_events = src.qmp.events();
    // The switch-over's two moments on QEMU's clocks, as Tern's agents
    // take them (`domjobinfo`'s "Guest stopped").
    let mut src_stop = src.qmp.events();

    let watcher = ConsoleWatcher::start();
    watcher.add(src.console_log(), false);
    watcher.add(dst.console_log(), true);
    let log_from = crate::guest::log_len(&src.console_log());
    let t0 = Instant::now();
    src.qmp
        .execute("migrate", Some(json!({ "uri": uri })))
        .await?;
    let mut steps = plan.downtime_steps.iter().peekable();
    let done = loop {
        migration_event(&mut src_events, POLL).await;
        while let Some((_, ms)) = steps.next_if(|(at, _)| t0.elapsed() >= *at) {
            src.qmp
                .execute(
                    "migrate-set-parameters",
                    Some(json!({ "downtime-limit": ms })),
                )
                .await?;
        }
        let q = src.qmp.execute("query-migrate", None).await?;
        match q["status"].as_str().unwrap_or("") {
            "completed" => break q,
            "failed" | "cancelled" => {
                let _ = watcher.finish();
                return Ok(Outcome::Failed(format!(
                    "source QEMU: {}",
                    q["error-desc"].as_str().unwrap_or("migration failed")
                )));
            }
            _ => {}
        }
        if t0.elapsed() >= bench.timeout {
            let figures = cancel(&src.qmp).await;
            let _ = watcher.finish();
            return Ok(Outcome::DidNotConverge {
                after: bench.timeout,
                figures,
            });
        }
    };
    let seen_completed = Instant::now();
    wait_loaded(&dst.qmp, &mut dst_events).await?;
    let mut dst_resume = dst.qmp.events();
    dst.qmp.execute("cont", None).await?;
    let stopped_ms = tern_migrate::jobinfo::guest_stopped_ms(
        last_event(&mut src_stop, "STOP"),
        last_event(&mut dst_resume, "RESUME"),
    );
    let end = Instant::now();
    let wall = end - launched;
    let ms = |a: Instant, b: Instant| Some(b.saturating_duration_since(a).as_millis() as u64);

    let workload_mib_s = crate::guest::workload_rate(&src.console_log(), log_from);
    let times_late = Figures::from_query(&done).times_missing();
    let figures = final_figures(&src.qmp, &done).await?;
    let breakdown = Breakdown {
        prepare: ms(launched, listening),
        handoff: ms(listening, t0),
        copy: ms(t0, seen_completed),
        resume: ms(seen_completed, end),
        qemu_total_ms: figures.total_ms,
        ..Default::default()
    };
    let after = after_migration(&watcher, &dst.console_log(), end).await;
    let rep = watcher.finish();
    super::note_watch(who, &rep, &after, notes);
    Ok(Outcome::Done(Run {
        wall,
        figures,
        gap: (after == AfterMigration::Running).then_some(rep.max_gap),
        gap_guest: (after == AfterMigration::Running).then_some(rep.max_gap_guest),
        stopped_ms,
        breakdown: Some(breakdown),
        times_late,
        crash: match after {
            AfterMigration::Crashed(l) => Some(l),
            _ => None,
        },
        workload_mib_s,
        ..Default::default()
    }))
}

/// `migrate-set-capabilities` as the agents send it.
async fn set_capabilities(qmp: &Qmp, caps: &[(&str, bool)]) -> Result<()> {
    let list: Vec<Value> = caps
        .iter()
        .map(|(c, s)| json!({ "capability": c, "state": s }))
        .collect();
    qmp.execute(
        "migrate-set-capabilities",
        Some(json!({ "capabilities": list })),
    )
    .await?;
    Ok(())
}

/// The time of the last `name` event already received, on QEMU's clock.
fn last_event(rx: &mut Receiver<QmpEvent>, name: &str) -> Option<u64> {
    let mut at = None;
    loop {
        match rx.try_recv() {
            Ok(e) if e.name == name => at = Some(e.timestamp_us),
            Ok(_) => {}
            Err(tokio::sync::broadcast::error::TryRecvError::Lagged(_)) => {}
            Err(_) => return at,
        }
    }
}

/// Returns at the next `MIGRATION` event, or after `wait` (or when events
/// were lost: the caller asks QEMU either way).
async fn migration_event(rx: &mut Receiver<QmpEvent>, wait: Duration) {
    tern_qemu::next_event(rx, "MIGRATION", wait).await;
}

/// Waits until the destination has loaded everything.
async fn wait_loaded(dst: &Qmp, events: &mut Receiver<QmpEvent>) -> Result<()> {
    let deadline = Instant::now() + SETTLE_WAIT;
    loop {
        let q = dst.execute("query-migrate", None).await?;
        match q["status"].as_str().unwrap_or("") {
            "completed" => return Ok(()),
            "failed" => bail!(
                "destination QEMU: {}",
                q["error-desc"]
                    .as_str()
                    .unwrap_or("incoming migration failed")
            ),
            _ if Instant::now() > deadline => {
                bail!("the destination did not finish loading within {SETTLE_WAIT:?}")
            }
            _ => migration_event(events, Duration::from_millis(20)).await,
        }
    }
}

/// The source's figures. QEMU 7.2 can answer "completed" before it has
/// stored total-time and downtime; ask again until they are there.
async fn final_figures(src: &Qmp, first: &Value) -> Result<Figures> {
    let mut f = Figures::from_query(first);
    let t = Instant::now();
    while f.times_missing() && t.elapsed() < Duration::from_secs(2) {
        tokio::time::sleep(Duration::from_millis(10)).await;
        f = Figures::from_query(&src.execute("query-migrate", None).await?);
    }
    Ok(f)
}

/// `migrate_cancel`, then the figures once QEMU has stopped.
async fn cancel(src: &Qmp) -> Figures {
    let _ = src.execute("migrate_cancel", None).await;
    let deadline = Instant::now() + SETTLE_WAIT;
    let mut last = Value::Null;
    while Instant::now() < deadline {
        match src.execute("query-migrate", None).await {
            Ok(q) => {
                let st = q["status"].as_str().unwrap_or("").to_string();
                last = q;
                if matches!(st.as_str(), "cancelled" | "failed" | "completed") {
                    break;
                }
            }
            Err(_) => break,
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Figures::from_query(&last)
}
