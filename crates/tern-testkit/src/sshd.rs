//! A real OpenSSH server on a loopback port for tests of `tern+ssh://`,
//! with a generated host key and a generated client key that may log in
//! as the current user, also used by the benchmarks for rsync and scp.
//! Dropping it kills sshd and removes its files.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Cipher for rsync and scp: AES-GCM is the fastest one OpenSSH offers on
/// AES-NI machines.
const CIPHER: &str = "aes128-gcm@openssh.com";

/// A running sshd.
#[derive(Debug)]
pub struct Sshd {
    /// Its port on 127.0.0.1.
    pub port: u16,
    tmp: tempfile::TempDir,
    child: Child,
}

fn keygen(path: &Path) -> Result<(), String> {
    let o = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(path)
        .output()
        .map_err(|e| format!("cannot run ssh-keygen (install openssh-client): {e}"))?;
    if !o.status.success() {
        return Err(format!(
            "ssh-keygen: {}",
            String::from_utf8_lossy(&o.stderr)
        ));
    }
    Ok(())
}

/// The name of the user running the tests.
pub fn current_user() -> String {
    let o = Command::new("id").arg("-un").output().expect("run id");
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

impl Sshd {
    /// Starts sshd and waits until it greets; panics on failure (tests).
    pub fn start() -> Sshd {
        Sshd::try_start().unwrap_or_else(|e| panic!("{e}"))
    }

    /// Starts sshd and waits until it greets.
    pub fn try_start() -> Result<Sshd, String> {
        let sshd = ["/usr/sbin/sshd", "/usr/bin/sshd"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .ok_or("sshd is not installed; run scripts/install-deps.sh (openssh-server)")?;
        let tmp = tempfile::Builder::new()
            .prefix("tern-sshd-")
            .tempdir()
            .map_err(|e| format!("cannot create a temporary directory: {e}"))?;
        let d = tmp.path();
        keygen(&d.join("host_key"))?;
        keygen(&d.join("client_key"))?;
        std::fs::copy(d.join("client_key.pub"), d.join("authorized_keys"))
            .map_err(|e| format!("cannot write authorized_keys: {e}"))?;
        // sshd insists on its privilege-separation directory.
        let _ = std::fs::create_dir_all("/run/sshd");
        let port = crate::host::free_port();
        let config = format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_key\nPidFile {d}/sshd.pid\n\
             AuthorizedKeysFile {d}/authorized_keys\nPermitRootLogin prohibit-password\n\
             PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n\
             StrictModes no\nPubkeyAuthentication yes\nSubsystem sftp internal-sftp\n\
             LogLevel VERBOSE\n",
            d = d.display()
        );
        let io = |e: std::io::Error| format!("cannot set up sshd: {e}");
        std::fs::write(d.join("sshd_config"), config).map_err(io)?;
        let log = std::fs::File::create(d.join("sshd.log")).map_err(io)?;
        let child = Command::new(sshd)
            .args(["-D", "-e", "-f"])
            .arg(d.join("sshd_config"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(io)?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start sshd: {e}"))?;
        let mut s = Sshd { port, tmp, child };
        s.wait_ready()?;
        Ok(s)
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return Ok(());
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                return Err(format!("sshd exited ({st}): {}", self.log()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(format!("sshd did not listen within 20 s: {}", self.log()))
    }

    /// Client options for rsync and scp; `port_flag` is "-p" for ssh, "-P"
    /// for scp.
    pub fn ssh_args(&self, port_flag: &str) -> Vec<String> {
        let key = self.client_key();
        [
            "-F",
            "/dev/null",
            port_flag,
            &self.port.to_string(),
            "-i",
            &key.to_string_lossy(),
            "-c",
            CIPHER,
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "LogLevel=ERROR",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    /// `user@127.0.0.1:path` (or without `:path` when it is empty).
    pub fn target(&self, path: &str) -> String {
        if path.is_empty() {
            format!("{}@127.0.0.1", current_user())
        } else {
            format!("{}@127.0.0.1:{path}", current_user())
        }
    }

    /// The `-e` argument for rsync.
    pub fn rsync_shell(&self) -> String {
        format!("ssh {}", self.ssh_args("-p").join(" "))
    }

    /// The private key that may log in.
    pub fn client_key(&self) -> PathBuf {
        self.tmp.path().join("client_key")
    }

    /// sshd's log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.tmp.path().join("sshd.log")).unwrap_or_default()
    }

    /// A `tern+ssh://` URI reaching the agent socket `socket` through this
    /// sshd, running the workspace's `tern` as the remote proxy.
    pub fn uri(&self, socket: &Path) -> String {
        format!(
            "tern+ssh://{}@127.0.0.1:{}/system?socket={}&keyfile={}&no_verify=1&proxy={}",
            current_user(),
            self.port,
            socket.display(),
            self.client_key().display(),
            crate::host::bin("tern").display()
        )
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
