//! `tern-watchdog`: a stand-in for a watchdog device, fed by the host's
//! fence process (`ternd --fence-watchdog guests`). When the fence stops
//! feeding it (killed or frozen), it kills the host's guests, as a reset
//! would. See `docs/FENCING.md`.

use clap::Parser;
use std::path::PathBuf;

/// Kills this host's guests when the fence stops feeding it.
#[derive(Parser, Debug)]
#[command(name = "tern-watchdog", version)]
struct Args {
    /// The agent's state directory (the pipe is STATE/fence/watchdog).
    #[arg(long, default_value = "/var/lib/tern", env = "TERND_STATE_DIR")]
    state_dir: PathBuf,
}

fn main() {
    // Text on standard error, filtered by TERND_LOG, as ternd logs.
    tern_log::init(tern_log::LogFormat::Text, "TERND_LOG");
    let a = Args::parse();
    if let Err(e) = tern_agent::fence::standin::run(&a.state_dir) {
        eprintln!("tern-watchdog: {e}");
        std::process::exit(1);
    }
}
