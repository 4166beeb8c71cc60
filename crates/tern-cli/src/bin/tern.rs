//! `tern`: the virsh-style command line.

use clap::Parser;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    // Like other Unix tools, end quietly when the reader of our output goes
    // away (`tern list | head`) instead of panicking on EPIPE.
    // SAFETY: restoring a signal's default disposition at start-up.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    tern_docgen::generate_if_asked(<tern_cli::args::Cli as clap::CommandFactory>::command, "1");
    let cli = tern_cli::args::Cli::parse();
    if let Err(e) = tern_cli::run(cli).await {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
