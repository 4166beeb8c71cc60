//! `tern-bench live --only libvirt` / `--only libvirt-p2p` (issue 19): the
//! same guests and cases as Tern's live runs, migrated by libvirt
//! (`virsh migrate --live`, managed, or with `--p2p`) between two
//! libvirtds in network namespaces, with the same columns.

use super::migrate::{self, Plan};
use super::LibvirtPair;
use crate::guest::{Case, GuestSetup};
use crate::live::report::{aggregate, control_ms, unfinished_cells, Outcome};
use anyhow::{Context, Result};
use std::time::{Duration, Instant};
use tern_testkit::BuildOptions;

/// What the live benchmark passes on.
pub struct LiveSetup {
    /// Guest RAM sizes, MiB.
    pub sizes: Vec<u64>,
    /// Dirty rates, MiB/s.
    pub rates: Vec<u64>,
    /// `tern.verify_rate`, MiB/s.
    pub verify_rate: u64,
    /// Settle time before each migration.
    pub settle: Duration,
    /// Deadline for one migration.
    pub timeout: Duration,
    /// Migrations per case.
    pub repeat: u32,
    /// `--p2p` (the source daemon drives), else managed (virsh drives).
    pub p2p: bool,
}

/// One case's migrations.
struct Row {
    case: Case,
    runs: Vec<Outcome>,
    notes: Vec<String>,
    load: Option<f64>,
    other_qemus: usize,
}

/// Runs every case through libvirt and prints the table.
pub async fn run(s: LiveSetup) -> Result<()> {
    if let Some(why) = super::unavailable() {
        anyhow::bail!("cannot measure libvirt: {why}");
    }
    let image = tern_testkit::build_or_reuse(&BuildOptions {
        progress: true,
        ..Default::default()
    })
    .context("build the test guest")?;
    let pool = crate::guest::scratch("tern-bench-libvirt-pool-")?;
    let disk = pool.path().join("bench.img");
    std::fs::File::create(&disk)
        .and_then(|f| f.set_len(16 << 20))
        .context("create the guest's disk")?;
    let guest = GuestSetup {
        image,
        disk,
        verify_rate: s.verify_rate,
    };
    eprintln!("tern-bench: starting two libvirtds in network namespaces ...");
    let pair = LibvirtPair::start()?;
    let flags: &[&str] = if s.p2p { &["--p2p"] } else { &[] };
    let plan = Plan {
        guest: &guest,
        settle: s.settle,
        timeout: s.timeout,
        repeat: s.repeat.max(1),
        meter: None,
    };
    let started = Instant::now();
    let mut rows = Vec::new();
    for &memory_mib in &s.sizes {
        for &dirty_mib_s in &s.rates {
            let case = Case {
                memory_mib,
                dirty_mib_s,
            };
            let (load, other_qemus) = (crate::sys::loadavg(), crate::sys::qemu_processes());
            let mut notes = Vec::new();
            eprintln!("tern-bench: {memory_mib} MiB, dirty {dirty_mib_s} MiB/s: virsh migrate ...");
            let runs = migrate::run(&pair, &plan, case, flags, &mut notes)
                .await
                .unwrap_or_else(|e| vec![Outcome::Failed(format!("{e:#}"))]);
            for o in &runs {
                eprintln!("tern-bench: libvirt: {}", crate::live::summary(o));
            }
            rows.push(Row {
                case,
                runs,
                notes,
                load,
                other_qemus,
            });
        }
    }
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "Live migration by libvirt ({}), shared storage: {cores} cores, TCG, two libvirtds in \
         network namespaces, median of {} migrations per cell, settle {} s, \
         tern.verify_rate={} MiB/s, tern.mem = RAM/2; whole run {} s\n",
        if s.p2p {
            "virsh migrate --live --p2p"
        } else {
            "virsh migrate --live, managed"
        },
        plan.repeat,
        s.settle.as_secs(),
        s.verify_rate,
        started.elapsed().as_secs()
    );
    println!("{}", table(&rows));
    Ok(())
}

/// The table: the columns of Tern's side of `tern-bench live`, plus the
/// control time (wall minus libvirt's job time), load and notes.
fn table(rows: &[Row]) -> String {
    let mut out = String::from(
        "| RAM MiB | dirty MiB/s | libvirt wall ms | job time ms | downtime ms | MiB sent | iter | guest gap ms | wall − job ms | load (1 min) | other QEMUs | notes |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n",
    );
    for r in rows {
        let cells = match aggregate(&r.runs) {
            Some(Outcome::Done(x)) => format!(
                "{} | {} | {} | {:.0} | {} | {}",
                x.wall.as_millis(),
                x.figures.total_ms,
                x.figures.downtime_ms,
                x.figures.bytes as f64 / 1048576.0,
                x.figures.iterations,
                x.gap.map_or("none".into(), |g| g.as_millis().to_string()),
            ),
            o => unfinished_cells(o.as_ref(), 6).unwrap_or_default(),
        };
        out.push_str(&format!(
            "| {} | {} | {cells} | {} | {} | {} | {} |\n",
            r.case.memory_mib,
            r.case.dirty_mib_s,
            control_ms(&r.runs).map_or(String::new(), |c| c.to_string()),
            r.load.map_or("?".into(), |l| format!("{l:.2}")),
            r.other_qemus,
            r.notes.join("; ").replace('|', "/"),
        ));
    }
    out
}
