//! `tern`: the virsh-style command line.

use clap::Parser;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let cli = tern_cli::args::Cli::parse();
    if let Err(e) = tern_cli::run(cli).await {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
