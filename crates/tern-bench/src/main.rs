//! `tern-bench`: Tern's benchmarks, one subcommand per measurement.
//!
//! Tests assert behaviour; figures belong here and in `docs/BENCHMARKS.md`,
//! where every section names the command that produced it. Run with:
//!
//! ```sh
//! cargo build --release --workspace && cargo run --release -p tern-bench -- live
//! ```
//!
//! The benchmark drives the real `ternd` and `tern` binaries found next to
//! its own executable (so build the workspace with the same profile first),
//! or in `$TERN_BIN_DIR`.

mod converge;
mod cpu;
mod engine;
mod guest;
mod hostdown;
mod libvirt;
mod live;
mod nfs;
mod qemu;
mod rbd;
mod scale;
mod soak;
mod storage;
mod sys;
mod transports;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// Command line.
#[derive(Parser, Debug)]
#[command(
    name = "tern-bench",
    about = "Tern benchmarks; results go to docs/BENCHMARKS.md"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

/// One subcommand per benchmark.
#[derive(Subcommand, Debug)]
enum Cmd {
    /// Live migration with shared storage (issue 3): `tern migrate --live`
    /// against the same migration driven directly over QMP.
    Live(live::LiveArgs),
    /// Storage (issue 4): cold copy between two agents against cp, and a
    /// live migration with the disk mirrored.
    Storage(storage::StorageArgs),
    /// Convergence (issue 6): Tern's policy against QEMU's defaults and
    /// Nova's stepped downtime, with the forecast.
    Converge(converge::ConvergeArgs),
    /// The cold-copy engine alone (in process) against cp, rsync and scp.
    Engine(engine::EngineArgs),
    /// Transports (issue 5): native TCP, native --tls, --tunnelled,
    /// --tunnelled --parallel 4 and libvirt's --p2p --tunnelled, idle and
    /// dirtying, in one run, with CPU seconds per GiB (issue 19).
    Transports(transports::TransportsArgs),
    /// Soak (issue 13): many live migrations back and forth across
    /// managed, p2p, storage copy and post-copy, counting failed
    /// migrations and what the guest reports.
    Soak(soak::SoakArgs),
    /// NFS (issue 20): live migration with the disk on an NFS export
    /// against a local shared directory.
    Nfs(nfs::NfsArgs),
    /// Host down (issue 14): host death to its guest running elsewhere,
    /// with the host proven fenced first.
    Hostdown(hostdown::HostDownArgs),
    /// RBD (issue 21): live migration with the disk on Ceph RBD (shared)
    /// against NFS (shared) and a local dir pool with `--copy-storage-all`.
    Rbd(rbd::RbdArgs),
    /// Cluster scale (issue 19): N simulated agents over mutual TLS
    /// against one controller, on the file store and a three-member etcd.
    ClusterScale(scale::ScaleArgs),
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let work = async {
        match cli.cmd {
            Cmd::Live(a) => live::run(a).await,
            Cmd::Storage(a) => storage::run(a).await,
            Cmd::Converge(a) => converge::run(a).await,
            Cmd::Transports(a) => transports::run(a).await,
            Cmd::Soak(a) => soak::run(a).await,
            Cmd::Hostdown(a) => hostdown::run(a).await,
            Cmd::Nfs(a) => nfs::run(a).await,
            Cmd::Rbd(a) => rbd::run(a).await,
            Cmd::ClusterScale(a) => scale::run(a).await,
            Cmd::Engine(a) => tokio::task::spawn_blocking(move || engine::run(a)).await?,
        }
    };
    // On Ctrl-C or SIGTERM the benchmark's future is dropped, and with it
    // every guard: the agents' QEMUs (which run in their own sessions), our
    // own QEMUs, and the temporary directories.
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    let r = tokio::select! {
        r = work => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted; cleaned up")),
        _ = term => Err(anyhow::anyhow!("terminated; cleaned up")),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tern-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}
