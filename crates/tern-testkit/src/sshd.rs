//! A real OpenSSH server on a loopback port for tests of `tern+ssh://`,
//! with a generated host key and a generated client key that may log in
//! as the current user. Dropping it kills sshd and removes its files.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running sshd.
#[derive(Debug)]
pub struct Sshd {
    /// Its port on 127.0.0.1.
    pub port: u16,
    tmp: tempfile::TempDir,
    child: Child,
}

fn keygen(path: &Path) {
    let o = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(path)
        .output()
        .expect("run ssh-keygen (install openssh-client)");
    assert!(
        o.status.success(),
        "ssh-keygen: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// The name of the user running the tests.
pub fn current_user() -> String {
    let o = Command::new("id").arg("-un").output().expect("run id");
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

impl Sshd {
    /// Starts sshd and waits until it greets.
    pub fn start() -> Sshd {
        let sshd = ["/usr/sbin/sshd", "/usr/bin/sshd"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("sshd is not installed; run scripts/install-deps.sh (openssh-server)");
        let tmp = tempfile::Builder::new()
            .prefix("tern-sshd-")
            .tempdir()
            .expect("create temp dir");
        let d = tmp.path();
        keygen(&d.join("host_key"));
        keygen(&d.join("client_key"));
        std::fs::copy(d.join("client_key.pub"), d.join("authorized_keys"))
            .expect("write authorized_keys");
        // sshd insists on its privilege-separation directory.
        let _ = std::fs::create_dir_all("/run/sshd");
        let port = crate::host::free_port();
        let config = format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_key\nPidFile {d}/sshd.pid\n\
             AuthorizedKeysFile {d}/authorized_keys\nPermitRootLogin prohibit-password\n\
             PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n\
             StrictModes no\nPubkeyAuthentication yes\nLogLevel VERBOSE\n",
            d = d.display()
        );
        std::fs::write(d.join("sshd_config"), config).expect("write sshd_config");
        let log = std::fs::File::create(d.join("sshd.log")).expect("create sshd.log");
        let child = Command::new(sshd)
            .args(["-D", "-e", "-f"])
            .arg(d.join("sshd_config"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .expect("spawn sshd");
        let mut s = Sshd { port, tmp, child };
        s.wait_ready();
        s
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!("sshd exited ({st}): {}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("sshd did not listen within 20 s: {}", self.log());
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
