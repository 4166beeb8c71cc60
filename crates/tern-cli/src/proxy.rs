//! `tern proxy`: the remote end of `tern+ssh://`. The local `tern` runs
//! `ssh host tern proxy --socket PATH` and speaks the host API over ssh's
//! stdio; this splices those bytes to the agent's unix socket, so the
//! remote user's access is exactly what the socket's permissions grant
//! (the read-write socket for root, `<socket>-ro` for read-only).

use crate::{CliError, Result};
use std::path::Path;

/// Copies stdin to the socket and the socket to stdout until either ends.
pub async fn run(socket: &Path) -> Result<()> {
    let s = tokio::net::UnixStream::connect(socket).await.map_err(|e| {
        CliError::Proxy(format!(
            "cannot connect to {}: {e}; is ternd running there?",
            socket.display()
        ))
    })?;
    let (mut rd, mut wr) = s.into_split();
    let mut stdin = tokio::io::stdin();
    let mut stdout = tokio::io::stdout();
    let up = async {
        let r = tokio::io::copy(&mut stdin, &mut wr).await;
        // Half-close so the agent sees the end of the request stream.
        let _ = tokio::io::AsyncWriteExt::shutdown(&mut wr).await;
        r
    };
    let down = async {
        let r = tokio::io::copy(&mut rd, &mut stdout).await;
        let _ = tokio::io::AsyncWriteExt::flush(&mut stdout).await;
        r
    };
    // The reply stream ending means the agent closed the connection: done.
    tokio::select! {
        r = down => r.map(|_| ()).map_err(|e| CliError::Proxy(format!("proxy: {e}"))),
        _ = async { let _ = up.await; std::future::pending::<()>().await } => Ok(()),
    }
}
