//! `tern-bench live`: live migration with shared storage (issues 3 and 19).
//!
//! For every guest size and dirty rate, the same guest is migrated by each
//! [`Driver`] in turn: `tern migrate --live` between two `ternd`s (managed,
//! and `--p2p`), and this program over QMP, with the QEMU command line,
//! capabilities and parameters Tern would use, the destination QEMU's
//! start-up included (the floor). Each flow's control overhead is its wall
//! clock minus QEMU's own total-time; the difference from the floor's is
//! what Tern adds.

pub mod direct;
pub mod report;
mod table;
pub mod tern;

use crate::guest::{AfterMigration, Case, GuestSetup};
use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use report::{DriverRuns, Outcome, Row};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tern_testkit::watch::WatchReport;
use tern_testkit::{BuildOptions, TernHost};

/// Which way to migrate. Each driver is measured by [`run_driver`], the
/// one place that maps a driver to its code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Driver {
    /// `tern migrate --live` between two agents (the managed flow).
    Tern,
    /// `tern migrate --live --p2p` between two agents.
    TernP2p,
    /// QMP from this program: the floor every flow is compared with.
    Qmp,
    /// `virsh migrate --live` between two libvirtds (issue 19), alone.
    Libvirt,
    /// `virsh migrate --live --p2p` between two libvirtds, alone.
    LibvirtP2p,
}

impl Driver {
    /// How the tables name it.
    pub fn label(self) -> &'static str {
        match self {
            Driver::Tern => "tern",
            Driver::TernP2p => "tern --p2p",
            Driver::Qmp => "QMP",
            Driver::Libvirt => "libvirt",
            Driver::LibvirtP2p => "libvirt --p2p",
        }
    }
}

/// Measures `case` with one driver: each migration's outcome, and what was
/// odd into `notes`. A new driver is one arm here.
async fn run_driver(
    bench: &Bench,
    case: Case,
    driver: Driver,
    notes: &mut Vec<String>,
) -> Result<Vec<Outcome>> {
    match driver {
        Driver::Tern => tern::run(bench, case, &[], notes).await,
        Driver::TernP2p => tern::run(bench, case, &["--p2p".to_string()], notes).await,
        Driver::Qmp => direct::run(bench, case, &direct::Plan::tern_defaults(), notes)
            .await
            .map(|d| d.outcomes),
        // They bring their own two libvirtds: [`run`] runs them after ours.
        Driver::Libvirt | Driver::LibvirtP2p => {
            bail!("the libvirt drivers run after the others, not case by case")
        }
    }
}

/// `tern-bench live` options. The defaults are the documented run.
#[derive(Args, Debug)]
pub struct LiveArgs {
    /// Guest RAM sizes, MiB (the guest fills half of it).
    #[arg(long, value_delimiter = ',', default_value = "512,2048")]
    sizes: Vec<u64>,
    /// Dirty rates (`tern.dirty`), MiB/s.
    #[arg(long, value_delimiter = ',', default_value = "0,20,100")]
    rates: Vec<u64>,
    /// Seconds the guest runs after TERN-READY before it is migrated.
    #[arg(long, default_value_t = 3)]
    settle: u64,
    /// Seconds after which a migration that has not converged is cancelled.
    #[arg(long, default_value_t = 120)]
    timeout: u64,
    /// `tern.verify_rate`, MiB/s: keeps the guest's memory verifier from
    /// taking a whole core.
    #[arg(long, default_value_t = 8)]
    verify_rate: u64,
    /// Migrations per case and driver: the guest moves back and forth
    /// (settling in between) and the table shows medians.
    #[arg(long, default_value_t = 3)]
    repeat: u32,
    /// Keep every migration's two console logs in this directory.
    #[arg(long)]
    logs: Option<PathBuf>,
    /// Drivers, in the order they run each case (`--only` is an alias);
    /// libvirt's run after the others, on the same cases, and are skipped
    /// with a note when libvirt is not installed.
    #[arg(
        long,
        alias = "only",
        value_enum,
        value_delimiter = ',',
        default_value = "tern,tern-p2p,qmp,libvirt,libvirt-p2p"
    )]
    drivers: Vec<Driver>,
    /// Before each case, wait up to this many seconds for other people's
    /// QEMUs to end (on a shared machine they compete for the cores; the
    /// conditions table records how many ran either way).
    #[arg(long, default_value_t = 0)]
    quiet_wait: u64,
    /// QEMU for the direct case (what `ternd` runs by default).
    #[arg(long, default_value = "qemu-system-x86_64")]
    qemu: PathBuf,
}

/// Shared state of a run: the two hosts, the guest, the limits.
pub struct Bench {
    /// Source host.
    pub a: TernHost,
    /// Destination host.
    pub b: TernHost,
    /// Image, shared disk, verifier rate.
    pub guest: GuestSetup,
    /// Time between TERN-READY and the migration.
    pub settle: Duration,
    /// Deadline for one migration.
    pub timeout: Duration,
    /// QEMU binary for the direct case.
    pub qemu: PathBuf,
    /// Migrations per case and driver.
    pub repeat: u32,
    /// Where to keep console logs, if anywhere.
    pub logs: Option<PathBuf>,
    /// Ask `tern migrate-forecast` before each `tern migrate`.
    pub forecast: bool,
    /// CPU readings around each `tern migrate` (issue 19), if measured.
    pub cpu: Option<crate::cpu::Meter>,
    /// The network namespaces the agents run in, when they migrate over a
    /// real (veth) link that a case may shape; dropped after the hosts.
    pub lab: Option<tern_testkit::Lab>,
    // Dropped last: the hosts' QEMUs are gone before the disk is removed.
    _pool: tempfile::TempDir,
}

impl Bench {
    /// Copies a migration's source and destination console logs to the
    /// `--logs` directory, as `<label>-src.log` and `<label>-dst.log`.
    pub fn keep_logs(&self, label: &str, src: &Path, dst: &Path) {
        let Some(dir) = &self.logs else {
            return;
        };
        for (role, p) in [("src", src), ("dst", dst)] {
            let to = dir.join(format!("{label}-{role}.log"));
            if let Err(e) = std::fs::copy(p, &to) {
                eprintln!("tern-bench: cannot keep {}: {e}", p.display());
            }
        }
    }
}

/// What [`Bench::start`] needs.
pub struct BenchSetup {
    /// `tern.verify_rate`, MiB/s.
    pub verify_rate: u64,
    /// Time between TERN-READY and the migration.
    pub settle: Duration,
    /// Deadline for one migration.
    pub timeout: Duration,
    /// QEMU binary for the direct case.
    pub qemu: PathBuf,
    /// Migrations per case and driver.
    pub repeat: u32,
    /// Where to keep console logs, if anywhere.
    pub logs: Option<PathBuf>,
    /// `--pki-dir` of both agents (server and client certificates), for
    /// transports that need them.
    pub pki_dir: Option<PathBuf>,
    /// Run the agents in two network namespaces joined by a veth link
    /// (see [`tern_testkit::Lab`]), so that a case can shape it; the CLI
    /// still reaches them over their unix sockets.
    pub lab: bool,
}

impl Bench {
    /// Checks the binaries are built, builds the test guest, and starts two
    /// agents sharing a pool that holds the guests' disk.
    pub fn start(s: BenchSetup) -> Result<Bench> {
        let bin_dir = check_binaries()?;
        let image = tern_testkit::build_or_reuse(&BuildOptions {
            progress: true,
            ..Default::default()
        })
        .context("build the test guest")?;
        let pool = crate::guest::scratch("tern-bench-pool-")?;
        eprintln!("tern-bench: starting two agents from {}", bin_dir.display());
        let lab = s.lab.then(tern_testkit::Lab::start);
        let host = |name: &str, side| {
            let base = match &lab {
                Some(l) => l.host_options(side, name),
                None => tern_testkit::HostOptions {
                    name: name.into(),
                    ..Default::default()
                },
            };
            TernHost::start_with(tern_testkit::HostOptions {
                pki_dir: s.pki_dir.clone(),
                ..base
            })
        };
        let a = host("bench-a", tern_testkit::Side::A);
        let b = host("bench-b", tern_testkit::Side::B);
        for h in [&a, &b] {
            h.add_pool("shared", pool.path(), true);
        }
        a.ok(&[
            "vol-create-as",
            "shared",
            "bench.img",
            "16M",
            "--format",
            "raw",
        ]);
        Ok(Bench {
            guest: GuestSetup {
                image,
                disk: pool.path().join("bench.img"),
                verify_rate: s.verify_rate,
            },
            a,
            b,
            settle: s.settle,
            timeout: s.timeout,
            qemu: s.qemu,
            repeat: s.repeat,
            logs: s.logs,
            forecast: false,
            cpu: None,
            lab,
            _pool: pool,
        })
    }
}

/// Where `ternd` and `tern` are, or an error saying how to build them.
pub fn check_binaries() -> Result<PathBuf> {
    let bin_dir = tern_testkit::host::bin_dir();
    for b in ["ternd", "tern"] {
        if !bin_dir.join(b).is_file() {
            bail!(
                "{} is not built; build the workspace with the same profile as tern-bench \
                 (`cargo build --release --workspace`) or set TERN_BIN_DIR",
                bin_dir.join(b).display()
            );
        }
    }
    Ok(bin_dir)
}

/// Runs the matrix and prints the tables on stdout (progress on stderr).
pub async fn run(args: LiveArgs) -> Result<()> {
    let is_libvirt = |d: &Driver| matches!(d, Driver::Libvirt | Driver::LibvirtP2p);
    let libvirt: Vec<Driver> = args.drivers.iter().copied().filter(is_libvirt).collect();
    let ours: Vec<Driver> = args
        .drivers
        .iter()
        .copied()
        .filter(|d| !is_libvirt(d))
        .collect();
    if !ours.is_empty() {
        run_ours(&args, &ours).await?;
    }
    // libvirt's drivers bring their own two libvirtds, so they run after
    // ours, on the same cases, with the same columns.
    for d in libvirt {
        if let Some(why) = crate::libvirt::unavailable() {
            if ours.is_empty() {
                bail!("cannot measure libvirt: {why}");
            }
            println!("\n{}: not measured ({why})", d.label());
            continue;
        }
        println!("\nThe same cases with `virsh migrate` ({}):\n", d.label());
        crate::libvirt::live::run(crate::libvirt::live::LiveSetup {
            sizes: args.sizes.clone(),
            rates: args.rates.clone(),
            verify_rate: args.verify_rate,
            settle: Duration::from_secs(args.settle),
            timeout: Duration::from_secs(args.timeout),
            repeat: args.repeat,
            p2p: d == Driver::LibvirtP2p,
        })
        .await?;
    }
    Ok(())
}

/// Runs the matrix with Tern's flows and QMP, and prints their tables.
async fn run_ours(args: &LiveArgs, drivers: &[Driver]) -> Result<()> {
    let qemu_version = qemu_version(&args.qemu)?;
    if let Some(d) = &args.logs {
        std::fs::create_dir_all(d).with_context(|| format!("create {}", d.display()))?;
    }
    let bench = Bench::start(BenchSetup {
        verify_rate: args.verify_rate,
        settle: Duration::from_secs(args.settle),
        timeout: Duration::from_secs(args.timeout),
        qemu: args.qemu.clone(),
        repeat: args.repeat.max(1),
        logs: args.logs.clone(),
        pki_dir: None,
        lab: false,
    })?;

    let started = Instant::now();
    let mut rows = Vec::new();
    for &memory_mib in &args.sizes {
        for &dirty_mib_s in &args.rates {
            let case = Case {
                memory_mib,
                dirty_mib_s,
            };
            wait_quiet(Duration::from_secs(args.quiet_wait)).await;
            rows.push(measure(&bench, case, drivers).await);
        }
    }
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "Live migration, shared storage: {cores} cores, TCG, {qemu_version}, median of {} \
         migrations per cell, settle {} s, tern.verify_rate={} MiB/s, tern.mem = RAM/2; \
         whole run {} s\n",
        bench.repeat,
        args.settle,
        args.verify_rate,
        started.elapsed().as_secs()
    );
    println!("{}", table::results_table(&rows));
    println!(
        "Where the wall-clock time goes (ms; Tern's from the agents' job events, QMP's from \
         its own clock; the run with the median overhead):\n"
    );
    println!("{}", table::breakdown_table(&rows));
    println!("{}", table::conditions_table(&rows));
    println!("Issue 19's targets, per flow:\n");
    for l in table::check_lines(&rows) {
        println!("- {l}");
    }
    Ok(())
}

/// Waits until no other QEMU runs, at most `max`.
async fn wait_quiet(max: Duration) {
    let deadline = Instant::now() + max;
    let n = crate::sys::qemu_processes();
    if n > 0 && !max.is_zero() {
        eprintln!(
            "tern-bench: {n} other QEMU(s) running; waiting up to {} s for them to end",
            max.as_secs()
        );
    }
    while crate::sys::qemu_processes() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Measures one case with every driver asked for, in turn.
async fn measure(bench: &Bench, case: Case, drivers: &[Driver]) -> Row {
    let mut row = Row {
        case,
        drivers: Vec::new(),
        other_qemus: crate::sys::qemu_processes(),
        load: crate::sys::loadavg(),
    };
    let label = format!("{} MiB, dirty {} MiB/s", case.memory_mib, case.dirty_mib_s);
    for &driver in drivers {
        eprintln!("tern-bench: {label}: {} ...", driver.label());
        let mut notes = Vec::new();
        let outcomes = run_driver(bench, case, driver, &mut notes)
            .await
            .unwrap_or_else(|e| vec![Outcome::Failed(format!("{e:#}"))]);
        for o in &outcomes {
            eprintln!("tern-bench: {label}: {}: {}", driver.label(), summary(o));
        }
        row.drivers.push(DriverRuns {
            driver,
            outcomes,
            notes,
        });
    }
    row
}

/// One line for the progress log.
pub(crate) fn summary(o: &Outcome) -> String {
    match o {
        Outcome::Done(r) => format!(
            "{} ms wall, QEMU {} ms, overhead {}, downtime {} ms, {:.0} MiB, {} iterations, gap {}{}",
            r.wall.as_millis(),
            r.figures.total_ms,
            report::overhead_ms(r).map_or("?".into(), |o| format!("{o} ms")),
            r.figures.downtime_ms,
            r.figures.bytes as f64 / 1048576.0,
            r.figures.iterations,
            report::pause_text(r),
            r.breakdown
                .map(|b| format!("; phases {}", table::phases_brief(&b)))
                .unwrap_or_default()
        ),
        Outcome::DidNotConverge { after, .. } => {
            format!("did not converge in {} s; cancelled", after.as_secs())
        }
        Outcome::Failed(e) => format!("failed: {e}"),
    }
}

/// Adds what the heartbeats and the destination console showed beyond the
/// gap to a row's notes.
pub fn note_watch(who: &str, r: &WatchReport, after: &AfterMigration, notes: &mut Vec<String>) {
    match after {
        AfterMigration::Running => {}
        AfterMigration::Crashed(l) => {
            notes.push(format!("{who}: guest crashed on the destination: {l}"));
        }
        AfterMigration::Silent => notes.push(format!("{who}: no heartbeat from the destination")),
    }
    if r.went_backwards {
        notes.push(format!("{who}: heartbeat counter went backwards"));
    }
    if r.missing > 0 {
        notes.push(format!("{who}: {} heartbeats missing", r.missing));
    }
    for f in r.failures.iter().take(3) {
        notes.push(format!("{who}: {f}"));
    }
}

/// `qemu-system-x86_64 --version`, e.g. "QEMU 7.2.22".
pub fn qemu_version(qemu: &std::path::Path) -> Result<String> {
    let o = std::process::Command::new(qemu)
        .arg("--version")
        .output()
        .with_context(|| format!("run {} --version", qemu.display()))?;
    let text = String::from_utf8_lossy(&o.stdout);
    let v = text
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(3))
        .unwrap_or("unknown version");
    Ok(format!("QEMU {v}"))
}
