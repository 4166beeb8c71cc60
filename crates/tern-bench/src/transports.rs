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

use crate::guest::Case;
use crate::live::report::{aggregate, Outcome};
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
}

impl Transport {
    fn label(self) -> &'static str {
        match self {
            Transport::Tcp => "native TCP",
            Transport::Tls => "native --tls",
            Transport::Tunnel => "--tunnelled",
            Transport::TunnelParallel => "--tunnelled --parallel 4",
        }
    }

    fn flags(self) -> Vec<String> {
        let f: &[&str] = match self {
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
        };
        f.iter().map(|s| s.to_string()).collect()
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
        default_value = "tcp,tls,tunnel,tunnel-parallel"
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
    let bench = Bench::start(BenchSetup {
        verify_rate: a.verify_rate,
        settle: Duration::from_secs(a.settle),
        timeout: Duration::from_secs(a.timeout),
        qemu: "qemu-system-x86_64".into(),
        repeat: a.repeat.max(1),
        logs: a.logs.clone(),
        pki_dir: Some(dir),
    })?;
    let started = Instant::now();
    let mut cells = Vec::new();
    for &dirty in &a.rates {
        let case = Case {
            memory_mib: a.memory,
            dirty_mib_s: dirty,
        };
        for &t in &a.transports {
            let label = format!("{} MiB, dirty {dirty} MiB/s, {}", a.memory, t.label());
            eprintln!("tern-bench: {label} ...");
            let (load, other_qemus) = (crate::sys::loadavg(), crate::sys::qemu_processes());
            let mut notes = Vec::new();
            let runs = live::tern::run(&bench, case, &t.flags(), &mut notes)
                .await
                .unwrap_or_else(|e| vec![Outcome::Failed(format!("{e:#}"))]);
            for o in &runs {
                eprintln!("tern-bench: {label}: {}", live::summary(o));
            }
            cells.push(Cell {
                transport: t,
                case,
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
         `tern migrate --live --p2p` between two agents on loopback, median of {} migrations \
         per cell; load average {} before the run; whole run {} s\n",
        a.memory,
        bench.repeat,
        load_before.map_or("?".into(), |l| format!("{l:.2}")),
        started.elapsed().as_secs()
    );
    println!("{}", table(&cells));
    if let Some((mib, secs, cpu)) = raw {
        println!(
            "Tunnel alone (no QEMU; one stream, both TLS ends in one process): \
             {mib} MiB in {secs:.2} s = {:.0} MiB/s; {:.0} MiB per CPU second \
             (writer, both TLS ends and the sink together)\n",
            mib as f64 / secs,
            mib as f64 / cpu
        );
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
        let guest = if c.case.dirty_mib_s == 0 {
            "idle".to_string()
        } else {
            format!("dirty {} MiB/s", c.case.dirty_mib_s)
        };
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
            Some(Outcome::DidNotConverge { after, .. }) => {
                format!("did not converge in {} s | | | | |", after.as_secs())
            }
            Some(Outcome::Failed(e)) => format!("failed: {} | | | | |", e.replace('|', "/")),
            None => "no run | | | | |".into(),
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
