//! `tern-fence`: the host's fence process, started by `ternd` when it
//! joins a cluster (see `docs/FENCING.md`). It outlives `ternd`.

use clap::Parser;
use std::path::PathBuf;

/// Renews this host's storage leases; kills its guests when it cannot.
#[derive(Parser, Debug)]
#[command(name = "tern-fence", version)]
struct Args {
    /// The agent's state directory (the fence keeps its files in STATE/fence).
    #[arg(long, default_value = "/var/lib/tern", env = "TERND_STATE_DIR")]
    state_dir: PathBuf,
}

fn main() {
    // Text on standard error, filtered by TERND_LOG, as ternd logs.
    tern_log::init(tern_log::LogFormat::Text, "TERND_LOG");
    let a = Args::parse();
    if let Err(e) = tern_agent::fence::daemon::run(&a.state_dir) {
        eprintln!("tern-fence: {e}");
        std::process::exit(1);
    }
}
