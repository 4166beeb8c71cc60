//! A throwaway sshd on a high loopback port with temporary keys, for rsync and scp.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Cipher for rsync and scp: AES-GCM is the fastest one OpenSSH offers on AES-NI machines.
const CIPHER: &str = "aes128-gcm@openssh.com";

/// A running sshd; killed and its files removed on drop.
pub struct Sshd {
    child: Child,
    dir: PathBuf,
    port: u16,
    user: String,
    made_run_dir: bool,
}

fn run(cmd: &mut Command) -> Result<(), String> {
    let out = cmd.output().map_err(|e| format!("running {cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

impl Sshd {
    /// Starts sshd with keys in `dir` (created, removed on drop).
    pub fn start(dir: &Path) -> Result<Sshd, String> {
        let sshd = Path::new("/usr/sbin/sshd");
        if !sshd.exists() {
            return Err("sshd is not installed (apt-get install openssh-server)".into());
        }
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        for key in ["host_key", "client_key"] {
            run(Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(dir.join(key)))?;
        }
        std::fs::copy(dir.join("client_key.pub"), dir.join("authorized_keys"))
            .map_err(|e| e.to_string())?;
        // Privilege separation directory, normally made at boot.
        let run_dir = Path::new("/run/sshd");
        let made_run_dir = !run_dir.exists();
        if made_run_dir {
            std::fs::create_dir_all(run_dir).map_err(|e| format!("creating /run/sshd: {e}"))?;
        }
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| e.to_string())?
            .port();
        let d = dir.display();
        let config = format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_key\nPidFile {d}/sshd.pid\n\
             AuthorizedKeysFile {d}/authorized_keys\nPasswordAuthentication no\n\
             KbdInteractiveAuthentication no\nPubkeyAuthentication yes\n\
             PermitRootLogin prohibit-password\nStrictModes no\nUsePAM no\n\
             Subsystem sftp internal-sftp\nLogLevel ERROR\n"
        );
        std::fs::write(dir.join("sshd_config"), config).map_err(|e| e.to_string())?;
        let child = Command::new(sshd)
            .arg("-D")
            .arg("-e")
            .arg("-f")
            .arg(dir.join("sshd_config"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("starting sshd: {e}"))?;
        let user = String::from_utf8_lossy(
            &Command::new("id")
                .arg("-un")
                .output()
                .map_err(|e| e.to_string())?
                .stdout,
        )
        .trim()
        .to_string();
        let s = Sshd {
            child,
            dir: dir.to_path_buf(),
            port,
            user,
            made_run_dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                return Err("sshd did not start listening within 10 s".into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        run(Command::new("ssh")
            .args(s.ssh_args("-p"))
            .arg(s.target(""))
            .arg("true"))?;
        Ok(s)
    }

    /// Client options; `port_flag` is "-p" for ssh, "-P" for scp.
    pub fn ssh_args(&self, port_flag: &str) -> Vec<String> {
        let key = self.dir.join("client_key");
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
            format!("{}@127.0.0.1", self.user)
        } else {
            format!("{}@127.0.0.1:{path}", self.user)
        }
    }

    /// The `-e` argument for rsync.
    pub fn rsync_shell(&self) -> String {
        format!("ssh {}", self.ssh_args("-p").join(" "))
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
        if self.made_run_dir {
            let _ = std::fs::remove_dir("/run/sshd");
        }
    }
}
