//! Byte streams to an agent: unix socket, TCP, mutual TLS, or an `ssh`
//! child process whose stdio reaches the remote agent through
//! `tern proxy` (see the CLI's proxy module).

use std::path::PathBuf;
use std::pin::Pin;
use std::process::Stdio;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::process::{Child, ChildStderr, ChildStdin, ChildStdout};

/// Any stream the HTTP client can run over.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// How to reach an agent over TLS.
#[derive(Clone)]
pub struct TlsTarget {
    /// Host dialled and verified against the server certificate.
    pub host: String,
    /// Port.
    pub port: u16,
    /// CA, client certificate and key.
    pub config: Arc<rustls::ClientConfig>,
    /// Where the files came from, for messages.
    pub pki_dir: PathBuf,
}

impl std::fmt::Debug for TlsTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsTarget")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("pki_dir", &self.pki_dir)
            .finish()
    }
}

/// How to reach an agent through ssh.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshTarget {
    /// `user@`, if given.
    pub user: Option<String>,
    /// Host.
    pub host: String,
    /// sshd port.
    pub port: u16,
    /// The remote agent's socket (`?socket=`), else the remote default.
    pub socket: Option<String>,
    /// `?keyfile=`: identity file for ssh.
    pub keyfile: Option<String>,
    /// `?no_verify=1`: do not check the host key (as libvirt's no_verify).
    pub no_verify: bool,
    /// `?proxy=`: the remote `tern` binary (default: `tern` on the remote PATH).
    pub proxy: String,
    /// `?command=`: the local ssh binary (default `ssh`, as libvirt).
    pub ssh: String,
}

impl SshTarget {
    /// The ssh command line: batch mode (a password prompt would hang the
    /// API), no tty, no escape character (the stream is binary).
    pub fn command_line(&self) -> Vec<String> {
        let mut a = vec![
            self.ssh.clone(),
            "-T".into(),
            "-e".into(),
            "none".into(),
            "-o".into(),
            "BatchMode=yes".into(),
            "-p".into(),
            self.port.to_string(),
        ];
        if let Some(u) = &self.user {
            a.extend(["-l".into(), u.clone()]);
        }
        if let Some(k) = &self.keyfile {
            a.extend(["-i".into(), k.clone()]);
        }
        if self.no_verify {
            a.extend([
                "-o".into(),
                "StrictHostKeyChecking=no".into(),
                "-o".into(),
                "UserKnownHostsFile=/dev/null".into(),
            ]);
        }
        a.push("--".into());
        a.push(self.host.clone());
        // One remote command string: sshd hands it to the user's shell.
        let mut remote = format!("{} proxy", shell_quote(&self.proxy));
        if let Some(s) = &self.socket {
            remote.push_str(&format!(" --socket {}", shell_quote(s)));
        }
        a.push(remote);
        a
    }
}

/// Quotes a word for a POSIX shell unless it is plainly safe.
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+=:,@".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// An ssh child process as one byte stream; killed when dropped.
pub struct SshStream {
    child: Child,
    stdin: ChildStdin,
    stdout: ChildStdout,
    stderr: Option<ChildStderr>,
}

impl SshStream {
    /// Starts ssh.
    pub fn spawn(t: &SshTarget) -> std::io::Result<SshStream> {
        let argv = t.command_line();
        let mut child = tokio::process::Command::new(&argv[0])
            .args(&argv[1..])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let missing = || std::io::Error::other("ssh child has no stdio");
        let stdin = child.stdin.take().ok_or_else(missing)?;
        let stdout = child.stdout.take().ok_or_else(missing)?;
        let stderr = child.stderr.take();
        Ok(SshStream {
            child,
            stdin,
            stdout,
            stderr,
        })
    }

    /// Takes the stderr pipe, to explain a failure after the fact.
    pub fn take_stderr(&mut self) -> Option<ChildStderr> {
        self.stderr.take()
    }
}

impl Drop for SshStream {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// The last non-empty line ssh (or the remote proxy) wrote to stderr.
pub async fn last_stderr_line(stderr: Option<ChildStderr>) -> Option<String> {
    let mut s = stderr?;
    let mut text = String::new();
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(2),
        s.read_to_string(&mut text),
    )
    .await;
    if read.is_err() {
        return None;
    }
    text.lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(str::to_string)
}

impl AsyncRead for SshStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stdout).poll_read(cx, buf)
    }
}

impl AsyncWrite for SshStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stdin).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stdin).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stdin).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssh_command_line_quotes_the_remote_command() {
        let t = SshTarget {
            user: Some("root".into()),
            host: "h".into(),
            port: 2222,
            socket: Some("/tmp/a b/ternd.sock".into()),
            keyfile: Some("/k".into()),
            no_verify: true,
            proxy: "/opt/tern/bin/tern".into(),
            ssh: "ssh".into(),
        };
        let a = t.command_line();
        assert_eq!(a[0], "ssh");
        assert!(a.windows(2).any(|w| w == ["-p", "2222"]));
        assert!(a.windows(2).any(|w| w == ["-l", "root"]));
        assert!(a.windows(2).any(|w| w == ["-i", "/k"]));
        assert!(a.contains(&"StrictHostKeyChecking=no".to_string()));
        assert_eq!(
            a.last().unwrap(),
            "/opt/tern/bin/tern proxy --socket '/tmp/a b/ternd.sock'"
        );
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
    }
}
