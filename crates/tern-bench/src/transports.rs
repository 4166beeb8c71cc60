//! `tern-bench transports` (issue 5): the throughput of one live migration
//! of the same guest over each transport, in the same run — native TCP,
//! native `--tls` (QEMU's TLS), `--tunnelled` (the agents' mutual-TLS
//! tunnel) and `--tunnelled --parallel 4` — idle and dirtying.
//!
//! Every migration is `tern migrate --live --p2p` between two agents on this
//! machine (both with certificates of one CA), so the transports differ in
//! nothing else. MiB/s is QEMU's `ram.transferred` over its `total-time`;
//! wall time is the CLI's. A line for the tunnel alone (no QEMU: bytes
//! pushed through `tern-tunnel` in this process) shows its ceiling here.
//!
//! Issue 19 adds libvirt's own tunnel (`virsh migrate --live --p2p
//! --tunnelled` between two libvirtds in network namespaces, the same
//! guest) and, for every row, the CPU seconds per GiB moved on each side:
//! the agent (or libvirtd) and every QEMU it runs, from their cgroups
//! ([`crate::cpu`]), read just before and just after each migration.

use crate::cpu::{self, Cost, CpuGroup, Meter};
use crate::guest::Case;
use crate::libvirt::LibvirtPair;
use crate::live::report::{aggregate, unfinished_cells, Outcome};
use crate::live::{self, Bench, BenchSetup};
use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tern_testkit::pki::TestPki;

/// A way of moving the guest's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Transport {
    /// QEMU to QEMU over plain TCP.
    Tcp,
    /// QEMU to QEMU over QEMU's own TLS (`--tls`).
    Tls,
    /// Through the agents' TLS tunnel (`--tunnelled`).
    Tunnel,
    /// Through the tunnel with four multifd channels.
    TunnelParallel,
    /// libvirt's tunnel: `virsh migrate --live --p2p --tunnelled` between
    /// two libvirtds (skipped with a note when libvirtd is not installed).
    Libvirt,
}

impl Transport {
    fn label(self) -> &'static str {
        match self {
            Transport::Tcp => "native TCP",
            Transport::Tls => "native --tls",
            Transport::Tunnel => "--tunnelled",
            Transport::TunnelParallel => "--tunnelled --parallel 4",
            Transport::Libvirt => "libvirt --p2p --tunnelled",
        }
    }

    fn flags(self) -> Vec<String> {
        self.flags_str().iter().map(|s| s.to_string()).collect()
    }

    /// The migrate command's flags for this transport.
    fn flags_str(self) -> &'static [&'static str] {
        match self {
            Transport::Tcp => &["--p2p"],
            Transport::Tls => &["--p2p", "--tls"],
            Transport::Tunnel => &["--p2p", "--tunnelled"],
            Transport::TunnelParallel => &[
                "--p2p",
                "--tunnelled",
                "--parallel",
                "--parallel-connections",
                "4",
            ],
            Transport::Libvirt => &["--p2p", "--tunnelled"],
        }
    }
}

/// `tern-bench transports` options. The defaults are the documented run.
#[derive(Args, Debug)]
pub struct TransportsArgs {
    /// Guest RAM, MiB (the guest fills half of it).
    #[arg(long, default_value_t = 2048)]
    memory: u64,
    /// Dirty rates (`tern.dirty`), MiB/s: idle and dirtying.
    #[arg(long, value_delimiter = ',', default_value = "0,20")]
    rates: Vec<u64>,
    /// Transports, in order.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "tcp,tls,tunnel,tunnel-parallel,libvirt"
    )]
    transports: Vec<Transport>,
    /// Migrations per cell (back and forth); the table shows medians.
    #[arg(long, default_value_t = 3)]
    repeat: u32,
    /// Seconds the guest runs after TERN-READY (and between migrations).
    #[arg(long, default_value_t = 3)]
    settle: u64,
    /// Seconds after which a migration is cancelled.
    #[arg(long, default_value_t = 300)]
    timeout: u64,
    /// `tern.verify_rate`, MiB/s.
    #[arg(long, default_value_t = 8)]
    verify_rate: u64,
    /// MiB pushed through the tunnel alone (0: skip that line).
    #[arg(long, default_value_t = 2048)]
    raw_mib: u64,
    /// Keep every migration's console logs in this directory.
    #[arg(long)]
    logs: Option<PathBuf>,
    /// Measure only the tunnel alone (no agents, no guest).
    #[arg(long)]
    raw_only: bool,
}

/// One cell of the table.
struct Cell {
    transport: Transport,
    case: Case,
    outcome: Option<Outcome>,
    load: Option<f64>,
    other_qemus: usize,
    notes: Vec<String>,
    /// Median CPU seconds per GiB on each side, if measured.
    cost: Option<Cost>,
}

/// Runs every transport on every load and prints the table.
pub async fn run(a: TransportsArgs) -> Result<()> {
    let qemu_version = live::qemu_version(std::path::Path::new("qemu-system-x86_64"))?;
    if let Some(d) = &a.logs {
        std::fs::create_dir_all(d).with_context(|| format!("create {}", d.display()))?;
    }
    let pki = TestPki::new();
    let dir = pki.agent("agents", "127.0.0.1", "bench-agent");
    let load_before = crate::sys::loadavg();
    let raw = if a.raw_mib > 0 {
        eprintln!("tern-bench: {} MiB through the tunnel alone ...", a.raw_mib);
        Some(raw_tunnel(&dir, a.raw_mib).await?)
    } else {
        None
    };
    if a.raw_only {
        if let Some((mib, secs, cpu)) = raw {
            println!(
                "Tunnel alone: {mib} MiB in {secs:.2} s = {:.0} MiB/s, {:.0} MiB per CPU second (load {})",
                mib as f64 / secs,
                mib as f64 / cpu,
                load_before.map_or("?".into(), |l| format!("{l:.2}"))
            );
        }
        return Ok(());
    }
    let mut bench = Bench::start(BenchSetup {
        verify_rate: a.verify_rate,
        settle: Duration::from_secs(a.settle),
        timeout: Duration::from_secs(a.timeout),
        qemu: "qemu-system-x86_64".into(),
        repeat: a.repeat.max(1),
        logs: a.logs.clone(),
        pki_dir: Some(dir),
        lab: false,
    })?;
    let mut run_notes = Vec::new();
    match tern_meter(&bench) {
        Ok(m) => bench.cpu = Some(m),
        Err(e) => run_notes.push(format!("no CPU accounting for Tern's rows: {e:#}")),
    }
    // Declared after the bench: its QEMUs end before the bench's disk goes.
    let mut libvirt = Libvirt::NotStarted;
    let started = Instant::now();
    let mut cells = Vec::new();
    for &dirty in &a.rates {
        let case = Case {
            memory_mib: a.memory,
            dirty_mib_s: dirty,
        };
        for &t in &a.transports {
            let label = format!("{} MiB, dirty {dirty} MiB/s, {}", a.memory, t.label());
            let (load, other_qemus) = (crate::sys::loadavg(), crate::sys::qemu_processes());
            let mut notes = Vec::new();
            let (runs, spans) = if t == Transport::Libvirt {
                let Some((pair, meter)) = libvirt.get(&mut run_notes) else {
                    continue;
                };
                eprintln!("tern-bench: {label} ...");
                if !run_notes.iter().any(|n| n.starts_with(LIBVIRT_TIME)) {
                    run_notes.push(format!("{LIBVIRT_TIME}{LIBVIRT_TIME_WHY}"));
                }
                let plan = crate::libvirt::migrate::Plan {
                    guest: &bench.guest,
                    settle: bench.settle,
                    timeout: bench.timeout,
                    repeat: bench.repeat,
                    meter: Some(meter),
                };
                let flags: Vec<&str> = t.flags_str().to_vec();
                let runs = crate::libvirt::migrate::run(pair, &plan, case, &flags, &mut notes)
                    .await
                    .unwrap_or_else(|e| vec![Outcome::Failed(format!("{e:#}"))]);
                (runs, meter.take())
            } else {
                eprintln!("tern-bench: {label} ...");
                let runs = live::tern::run(&bench, case, &t.flags(), &mut notes)
                    .await
                    .unwrap_or_else(|e| vec![Outcome::Failed(format!("{e:#}"))]);
                (runs, bench.cpu.as_ref().map_or(Vec::new(), |m| m.take()))
            };
            for o in &runs {
                eprintln!("tern-bench: {label}: {}", live::summary(o));
            }
            cells.push(Cell {
                transport: t,
                case,
                cost: cell_cost(&runs, &spans),
                outcome: aggregate(&runs),
                load,
                other_qemus,
                notes,
            });
        }
    }
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "Transports: {cores} cores, TCG, {qemu_version}, {} MiB guest (tern.mem = RAM/2), \
         `tern migrate --live --p2p` between two agents on loopback, libvirt's row between two \
         libvirtds in network namespaces, median of {} migrations per cell; load average {} \
         before the run; whole run {} s\n",
        a.memory,
        bench.repeat,
        load_before.map_or("?".into(), |l| format!("{l:.2}")),
        started.elapsed().as_secs()
    );
    println!("{}", table(&cells));
    println!("{}", cost_table(&cells));
    for line in tunnel_checks(&cells) {
        println!("{line}");
    }
    println!();
    if let Some((mib, secs, cpu)) = raw {
        println!(
            "Tunnel alone (no QEMU; one stream, both TLS ends in one process): \
             {mib} MiB in {secs:.2} s = {:.0} MiB/s; {:.0} MiB per CPU second \
             (writer, both TLS ends and the sink together)\n",
            mib as f64 / secs,
            mib as f64 / cpu
        );
    }
    for n in &run_notes {
        println!("- {n}");
    }
    for c in cells.iter().filter(|c| !c.notes.is_empty()) {
        println!(
            "- {}, dirty {} MiB/s: {}",
            c.transport.label(),
            c.case.dirty_mib_s,
            c.notes.join("; ")
        );
    }
    Ok(())
}

/// The note on libvirt's times, once per run.
const LIBVIRT_TIME: &str = "libvirt's \"QEMU total\" is libvirt's job time";
const LIBVIRT_TIME_WHY: &str = " (`time_elapsed`: from the start of its migration job, the \
    destination's QEMU start included, to QEMU's completion; libvirt does not report QEMU's own \
    total-time), so its MiB/s is a lower bound.";

/// The libvirt baseline, started at its first row.
enum Libvirt {
    NotStarted,
    Running(Box<LibvirtPair>, Meter),
    Unavailable,
}

impl Libvirt {
    /// The daemons and their meter; starts them the first time. When they
    /// cannot run, says why once in the run's notes and skips the rows.
    fn get(&mut self, notes: &mut Vec<String>) -> Option<(&LibvirtPair, &Meter)> {
        if matches!(self, Libvirt::NotStarted) {
            eprintln!("tern-bench: starting two libvirtds in network namespaces ...");
            *self = match LibvirtPair::start() {
                Ok(p) => {
                    let m = p.meter();
                    Libvirt::Running(Box::new(p), m)
                }
                Err(e) => {
                    notes.push(format!("libvirt's row skipped: {e:#}"));
                    eprintln!("tern-bench: libvirt's row skipped: {e:#}");
                    Libvirt::Unavailable
                }
            };
        }
        match self {
            Libvirt::Running(p, m) => Some((&**p, &*m)),
            _ => None,
        }
    }
}

/// Both agents' cgroups (each `ternd` with every QEMU it starts later).
fn tern_meter(bench: &Bench) -> Result<Meter> {
    let group = |name: &str, h: &tern_testkit::TernHost| -> Result<CpuGroup> {
        let g = CpuGroup::create(name)?;
        g.add(h.pid().context("the agent is not running")?)?;
        Ok(g)
    };
    Ok(Meter::new(
        group("ternd-a", &bench.a)?.into(),
        group("ternd-b", &bench.b)?.into(),
    ))
}

/// The median cost of a cell's completed migrations; run `i` went from A
/// to B when `i` is even (both drivers go back and forth). `spans[i]` are
/// the readings around run `i`.
fn cell_cost(runs: &[Outcome], spans: &[cpu::Span]) -> Option<Cost> {
    let costs: Vec<Cost> = runs
        .iter()
        .zip(spans)
        .enumerate()
        .filter_map(|(i, (o, s))| match o {
            Outcome::Done(r) => Cost::from_readings(*s, i % 2 == 0, r.figures.bytes),
            _ => None,
        })
        .collect();
    Cost::median(&costs)
}

/// The guest column's text for a case.
fn guest_label(case: Case) -> String {
    if case.dirty_mib_s == 0 {
        "idle".to_string()
    } else {
        format!("dirty {} MiB/s", case.dirty_mib_s)
    }
}

/// CPU seconds per GiB moved, per side and together, and the cores each
/// host would keep busy at 25 Gbit/s.
fn cost_table(cells: &[Cell]) -> String {
    let mut out = format!(
        "CPU seconds per GiB moved (QEMU's ram.transferred), each side's agent or libvirtd \
         with its QEMUs, median; cores = CPU s/GiB × {:.2} GiB/s (25 Gbit/s):\n\n\
         | guest | transport | source CPU s/GiB | destination CPU s/GiB | both | source cores at 25 Gbit/s | destination cores at 25 Gbit/s |\n\
         |---|---|---:|---:|---:|---:|---:|\n",
        cpu::LINK_25G_GIB_S
    );
    for c in cells {
        let cols = match c.cost {
            Some(k) => format!(
                "{:.2} | {:.2} | {:.2} | {:.1} | {:.1}",
                k.src,
                k.dst,
                k.total(),
                cpu::cores_for(k.src, cpu::LINK_25G_GIB_S),
                cpu::cores_for(k.dst, cpu::LINK_25G_GIB_S)
            ),
            None => "? | ? | ? | ? | ?".into(),
        };
        out.push_str(&format!(
            "| {} | {} | {cols} |\n",
            guest_label(c.case),
            c.transport.label()
        ));
    }
    out
}

/// The check, per guest load: the tunnel (each of Tern's tunnel
/// rows) costs at most QEMU's own TLS per GiB, both sides together.
fn tunnel_checks(cells: &[Cell]) -> Vec<String> {
    let mut cases: Vec<Case> = Vec::new();
    for c in cells {
        if !cases.contains(&c.case) {
            cases.push(c.case);
        }
    }
    let total = |case: Case, t: Transport| {
        cells
            .iter()
            .find(|c| c.case == case && c.transport == t)
            .and_then(|c| c.cost)
            .map(|k| k.total())
    };
    cases
        .into_iter()
        .map(|case| {
            let tunnels =
                [Transport::Tunnel, Transport::TunnelParallel].map(|t| (t.label(), total(case, t)));
            check_line(&guest_label(case), total(case, Transport::Tls), &tunnels)
        })
        .collect()
}

/// One check line: each tunnel's CPU s/GiB against TLS's, and whether it
/// holds ("no figure" where either is missing).
fn check_line(guest: &str, tls: Option<f64>, tunnels: &[(&str, Option<f64>)]) -> String {
    let parts: Vec<String> = tunnels
        .iter()
        .map(|(label, v)| match (v, tls) {
            (Some(v), Some(t)) => format!(
                "{label} {v:.2} vs --tls {t:.2}: {}",
                if cpu::at_most(*v, t) {
                    "holds"
                } else {
                    "does not hold"
                }
            ),
            _ => format!("{label}: no figure"),
        })
        .collect();
    format!(
        "- Check, {guest}: the tunnel costs at most QEMU's own TLS per GiB (CPU s/GiB, both sides): {}",
        parts.join("; ")
    )
}

fn mib_s(o: &Outcome) -> Option<f64> {
    match o {
        Outcome::Done(r) if r.figures.total_ms > 0 => {
            Some(r.figures.bytes as f64 / 1048576.0 / (r.figures.total_ms as f64 / 1000.0))
        }
        _ => None,
    }
}

/// The markdown table: one row per load and transport.
fn table(cells: &[Cell]) -> String {
    let mut out = String::from(
        "| guest | transport | MiB/s | vs native TCP | QEMU total | wall | downtime | sent | load (1 min) | other QEMUs |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for c in cells {
        let base = cells
            .iter()
            .find(|b| b.transport == Transport::Tcp && b.case == c.case)
            .and_then(|b| b.outcome.as_ref())
            .and_then(mib_s);
        let guest = guest_label(c.case);
        let load = c.load.map_or("?".into(), |l| format!("{l:.2}"));
        let row = match &c.outcome {
            Some(o @ Outcome::Done(r)) => {
                let rate = mib_s(o);
                format!(
                    "{} | {} | {:.1} s | {:.1} s | {} ms | {:.0} MiB",
                    rate.map_or("?".into(), |v| format!("{v:.0}")),
                    match (rate, base) {
                        (Some(v), Some(b)) if b > 0.0 => format!("{:.0} %", v / b * 100.0),
                        _ => "?".into(),
                    },
                    r.figures.total_ms as f64 / 1000.0,
                    r.wall.as_secs_f64(),
                    r.figures.downtime_ms,
                    r.figures.bytes as f64 / 1048576.0
                )
            }
            o => unfinished_cells(o.as_ref(), 6).unwrap_or_default(),
        };
        out.push_str(&format!(
            "| {guest} | {} | {row} | {load} | {} |\n",
            c.transport.label(),
            c.other_qemus
        ));
    }
    out
}

/// Pushes `mib` MiB through a tunnel in this process: a unix socket, the
/// source end, TLS over loopback, the destination end, a unix socket that
/// discards. Returns (MiB, seconds, CPU seconds).
async fn raw_tunnel(pki_dir: &std::path::Path, mib: u64) -> Result<(u64, f64, f64)> {
    use std::sync::Arc;
    use tern_migrate::protocol::StreamKind;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let pki = tern_pki::PkiDir::new(pki_dir);
    let tmp = crate::guest::scratch("tern-bench-tunnel-")?;
    let sink_path = tmp.path().join("sink.sock");
    let sink = tokio::net::UnixListener::bind(&sink_path).context("bind the sink")?;
    tokio::spawn(async move {
        if let Ok((mut s, _)) = sink.accept().await {
            let mut buf = vec![0u8; 1 << 20];
            let mut n = 0u64;
            while let Ok(r) = s.read(&mut buf).await {
                if r == 0 {
                    break;
                }
                n += r as u64;
            }
            let _ = s.write_all(&n.to_le_bytes()).await;
        }
    });
    let id = uuid::Uuid::new_v4();
    let quiet: tern_tunnel::EventSink = Arc::new(|m| eprintln!("tern-bench: tunnel: {m}"));
    let inbound = tern_tunnel::Inbound::bind(
        "127.0.0.1",
        [0u16],
        tern_pki::server_config(&pki)?,
        id,
        tern_tunnel::Routes {
            memory: Some(sink_path),
            nbd: None,
        },
        Arc::new(|_| true),
        quiet.clone(),
    )
    .await?;
    let src = tmp.path().join("src.sock");
    let _out = tern_tunnel::Outbound::listen(
        &src,
        StreamKind::Memory,
        &tern_tunnel::Remote {
            host: "127.0.0.1".into(),
            port: inbound.port(),
            server_name: "127.0.0.1".into(),
        },
        tern_pki::client_config(&pki)?,
        id,
        quiet,
    )?;
    let chunk = vec![0x5au8; 1 << 20];
    let cpu0 = cpu_seconds();
    let t0 = Instant::now();
    let mut s = tokio::net::UnixStream::connect(&src)
        .await
        .context("connect the tunnel")?;
    for _ in 0..mib {
        s.write_all(&chunk).await.context("write into the tunnel")?;
    }
    s.shutdown().await?;
    let mut n = [0u8; 8];
    s.read_exact(&mut n)
        .await
        .context("read the sink's count")?;
    let secs = t0.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu0;
    anyhow::ensure!(
        u64::from_le_bytes(n) == mib << 20,
        "the tunnel lost bytes: {} of {}",
        u64::from_le_bytes(n),
        mib << 20
    );
    Ok((mib, secs, cpu))
}

/// CPU time this process used so far (user + system), seconds: the cost of
/// the tunnel even when other work on the machine stretches wall time.
fn cpu_seconds() -> f64 {
    // SAFETY: getrusage fills the struct we pass; zeroed is a valid start.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above, RUSAGE_SELF with a valid pointer.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let t = |v: libc::timeval| v.tv_sec as f64 + v.tv_usec as f64 / 1e6;
    t(u.ru_utime) + t(u.ru_stime)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::{Reading, Span};
    use crate::live::report::{Figures, Run};

    fn done(bytes: u64) -> Outcome {
        Outcome::Done(Run {
            figures: Figures {
                bytes,
                ..Default::default()
            },
            ..Default::default()
        })
    }

    fn span(a: u64, b: u64) -> Span {
        Span {
            before: Reading::default(),
            after: Reading { a, b },
            vcpu: Reading::default(),
        }
    }

    #[test]
    fn a_cells_cost_follows_each_runs_direction() {
        // Run 1 A to B: A (source) 2 s, B 1 s; run 2 B to A: B (source)
        // 4 s, A 1 s; one GiB each. Medians (upper): source 4, destination 1.
        let runs = [done(1 << 30), done(1 << 30)];
        let spans = [span(2_000_000, 1_000_000), span(1_000_000, 4_000_000)];
        let c = cell_cost(&runs, &spans).unwrap();
        assert_eq!((c.src, c.dst), (4.0, 1.0));
        // A failed run and a run without readings do not count.
        let runs = [done(1 << 30), Outcome::Failed("x".into()), done(1 << 30)];
        let c = cell_cost(&runs, &spans[..1]).unwrap();
        assert_eq!((c.src, c.dst), (2.0, 1.0));
        assert!(cell_cost(&runs, &[]).is_none());
    }

    #[test]
    fn the_check_line_says_which_tunnel_holds() {
        let l = check_line(
            "idle",
            Some(1.5),
            &[
                ("--tunnelled", Some(1.2)),
                ("--tunnelled --parallel 4", Some(1.8)),
            ],
        );
        assert!(l.contains("--tunnelled 1.20 vs --tls 1.50: holds"), "{l}");
        assert!(
            l.contains("--parallel 4 1.80 vs --tls 1.50: does not hold"),
            "{l}"
        );
        let l = check_line("idle", None, &[("--tunnelled", Some(1.2))]);
        assert!(l.contains("--tunnelled: no figure"), "{l}");
    }
}
