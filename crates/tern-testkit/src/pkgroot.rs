//! A clean Debian root for package tests: a copy of the root that
//! `scripts/pkgtest-root.sh` prepares (debootstrap minbase plus the Debian
//! packages Tern's .debs depend on), into which a test `dpkg -i`s
//! `target/debian/*.deb` and starts services from their units' ExecStart
//! lines. Commands run under `chroot` in a private mount namespace (with
//! its own /proc and /dev/pts), so nothing is left mounted on the host; a service also
//! gets its own PID and network namespaces (loopback only) and dies with
//! its handle. The copy is removed on drop.

use crate::guest::workspace_root;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

/// The prepared root, under the workspace's target directory.
pub fn prepared_root() -> PathBuf {
    workspace_root().join("target/pkgroot/deps")
}

/// The packages `scripts/package.sh` built.
pub fn built_packages() -> Vec<PathBuf> {
    let dir = workspace_root().join("target/debian");
    let mut debs: Vec<PathBuf> = ["ternd_", "tern_", "tern-controller_"]
        .iter()
        .map(|prefix| {
            std::fs::read_dir(&dir)
                .ok()
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path())
                .find(|p| {
                    let n = p.file_name().unwrap_or_default().to_string_lossy();
                    n.starts_with(prefix) && n.ends_with(".deb")
                })
                .unwrap_or_else(|| {
                    panic!(
                        "no {prefix}*.deb in {}: run scripts/package.sh --dev",
                        dir.display()
                    )
                })
        })
        .collect();
    debs.sort();
    debs
}

/// A throw-away copy of the prepared root.
pub struct PackageRoot {
    dir: tempfile::TempDir,
}

impl PackageRoot {
    /// Copies the prepared root (panics, saying what to run, if it is missing).
    pub fn new() -> PackageRoot {
        let src = prepared_root();
        assert!(
            src.join(".tern-deps").exists(),
            "{} is not prepared: run scripts/package.sh --dev && scripts/pkgtest-root.sh",
            src.display()
        );
        let dir = tempfile::Builder::new()
            .prefix("run-")
            .tempdir_in(src.parent().expect("target/pkgroot"))
            .expect("temp dir under target/pkgroot");
        let st = Command::new("cp")
            .arg("-a")
            .arg(format!("{}/.", src.display()))
            .arg(dir.path())
            .status()
            .expect("cp -a");
        assert!(st.success(), "copying {} failed", src.display());
        PackageRoot { dir }
    }

    /// The root's directory on the host.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A path inside the root, on the host.
    pub fn join(&self, inside: &str) -> PathBuf {
        self.path().join(inside.trim_start_matches('/'))
    }

    /// Runs `argv` in the root (chroot, private mounts, /proc).
    pub fn run(&self, argv: &[&str]) -> Output {
        self.command(&[], argv, None)
            .output()
            .expect("run a command in the package root")
    }

    /// Copies `debs` into the root and `dpkg -i`s them all at once.
    pub fn install(&self, debs: &[PathBuf]) -> Output {
        let mut inside = vec!["dpkg".to_string(), "-i".to_string()];
        for d in debs {
            let name = d.file_name().expect("deb name").to_string_lossy();
            std::fs::copy(d, self.join(&format!("tmp/{name}"))).expect("copy deb");
            inside.push(format!("/tmp/{name}"));
        }
        let argv: Vec<&str> = inside.iter().map(String::as_str).collect();
        self.run(&argv)
    }

    fn command(&self, unshare_extra: &[&str], argv: &[&str], user: Option<&str>) -> Command {
        let mut c = Command::new("unshare");
        c.args(["--mount", "--fork", "--kill-child"])
            .args(unshare_extra)
            .args(["sh", "-c"])
            .arg(
                "if [ \"$3\" = net ]; then ip link set lo up; fi; \
                 mount -t proc proc \"$1/proc\" && \
                 mkdir -p \"$1/dev/pts\" && \
                 mount -t devpts -o newinstance,ptmxmode=0666,mode=0620 devpts \"$1/dev/pts\" && \
                 touch \"$1/dev/ptmx\" && mount --bind \"$1/dev/pts/ptmx\" \"$1/dev/ptmx\" && \
                 root=\"$1\" && user=\"$2\" && shift 3 && \
                 if [ -n \"$user\" ]; then exec chroot --userspec=\"$user\" \"$root\" \"$@\"; \
                 else exec chroot \"$root\" \"$@\"; fi",
            )
            .arg("-")
            .arg(self.path())
            .arg(user.unwrap_or(""))
            .arg(if unshare_extra.contains(&"--net") {
                "net"
            } else {
                ""
            })
            .args(argv)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("LANG", "C.UTF-8");
        c
    }

    /// Starts the service of the installed unit `unit` (e.g.
    /// `ternd.service`) from its ExecStart line, with the variables of its
    /// EnvironmentFile, as its User=, with a systemd notify socket, in its
    /// own PID and network namespaces.
    pub fn start_service(&self, unit: &str) -> Service {
        self.start_service_with(unit, true)
    }

    /// [`Self::start_service`]; without `own_namespaces` the service shares
    /// the host's PIDs and network, so what it starts (QEMU) outlives it,
    /// as under systemd's KillMode=process.
    pub fn start_service_with(&self, unit: &str, own_namespaces: bool) -> Service {
        let text = std::fs::read_to_string(self.join(&format!("usr/lib/systemd/system/{unit}")))
            .unwrap_or_else(|e| panic!("{unit} is not installed: {e}"));
        let argv = exec_start(&text, |f| std::fs::read_to_string(self.join(f)).ok());
        let user = unit_key(&text, "User").map(|u| {
            let g = unit_key(&text, "Group").unwrap_or_else(|| u.clone());
            format!("{u}:{g}")
        });
        let sock_inside = format!("/run/notify-{}.sock", unit.trim_end_matches(".service"));
        let sock = self.join(&sock_inside);
        std::fs::create_dir_all(sock.parent().expect("run dir")).expect("mkdir /run");
        let _ = std::fs::remove_file(&sock);
        let notify = UnixDatagram::bind(&sock).expect("bind the notify socket");
        if user.is_some() {
            // The service's user must be able to send to it, as with systemd.
            let _ = Command::new("chmod").arg("0666").arg(&sock).status();
        }
        let log = self.join(&format!("var/log/{unit}.log"));
        let out = std::fs::File::create(&log).expect("service log");
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let ns: &[&str] = if own_namespaces {
            &["--pid", "--net"]
        } else {
            &[]
        };
        let child = self
            .command(ns, &argv, user.as_deref())
            .env("NOTIFY_SOCKET", &sock_inside)
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("dup log"))
            .stderr(out)
            .spawn()
            .expect("start the service");
        Service { child, notify, log }
    }
}

impl Drop for PackageRoot {
    fn drop(&mut self) {
        for pid in self.processes() {
            // SAFETY: kill(2) on a process that runs inside our root.
            unsafe {
                libc::kill(pid as i32, libc::SIGKILL);
            }
        }
    }
}

impl PackageRoot {
    /// Processes whose root directory is this root (a service, its QEMUs).
    pub fn processes(&self) -> Vec<u32> {
        let me = std::fs::canonicalize(self.path()).unwrap_or_default();
        std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| std::fs::read_link(format!("/proc/{pid}/root")).is_ok_and(|r| r == me))
            .collect()
    }

    /// The processes in this root whose command name starts with `comm`.
    pub fn processes_named(&self, comm: &str) -> Vec<u32> {
        self.processes()
            .into_iter()
            .filter(|pid| {
                std::fs::read_to_string(format!("/proc/{pid}/comm"))
                    .is_ok_and(|c| c.trim().starts_with(comm))
            })
            .collect()
    }
}

impl Default for PackageRoot {
    fn default() -> Self {
        PackageRoot::new()
    }
}

/// The value of `Key=` in a unit file (the last one wins, as in systemd).
pub fn unit_key(unit: &str, key: &str) -> Option<String> {
    unit.lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix(&format!("{key}=")))
        .map(str::to_string)
}

/// A unit's ExecStart as argv, with `$VAR` words replaced (split on
/// whitespace) by the values `read` finds in its EnvironmentFile.
pub fn exec_start(unit: &str, read: impl Fn(&str) -> Option<String>) -> Vec<String> {
    let mut env = std::collections::HashMap::new();
    if let Some(f) = unit_key(unit, "EnvironmentFile") {
        for l in read(f.trim_start_matches('-')).unwrap_or_default().lines() {
            if let Some((k, v)) = l.trim().split_once('=') {
                if !k.starts_with('#') {
                    env.insert(k.to_string(), v.trim_matches('"').to_string());
                }
            }
        }
    }
    let line = unit_key(unit, "ExecStart").expect("an ExecStart line");
    line.split_whitespace()
        .flat_map(|w| match w.strip_prefix('$') {
            Some(var) => env
                .get(var)
                .map(|v| v.split_whitespace().map(str::to_string).collect())
                .unwrap_or_default(),
            None => vec![w.to_string()],
        })
        .collect()
}

/// A service started from its unit, killed (with its namespaces) on drop.
pub struct Service {
    child: Child,
    notify: UnixDatagram,
    /// Its standard output and error.
    pub log: PathBuf,
}

impl Service {
    /// Stops the service as systemd does with KillMode=process: SIGTERM to
    /// the main process alone; waits for it to exit.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let id = self.child.id();
        let children = std::fs::read_to_string(format!("/proc/{id}/task/{id}/children"));
        for pid in children.unwrap_or_default().split_whitespace() {
            if let Ok(pid) = pid.parse::<i32>() {
                // SAFETY: kill(2) on our child's child, the service.
                unsafe {
                    libc::kill(pid, libc::SIGTERM);
                }
            }
        }
        self.child.wait().expect("wait for the service")
    }

    /// Waits for the service's `READY=1` on the notify socket, as systemd
    /// does for Type=notify; panics with its log if it never comes.
    pub fn wait_ready(&mut self, timeout: Duration) -> String {
        self.notify
            .set_read_timeout(Some(timeout))
            .expect("socket timeout");
        let mut buf = [0u8; 4096];
        loop {
            match self.notify.recv(&mut buf) {
                Ok(n) => {
                    let msg = String::from_utf8_lossy(&buf[..n]).to_string();
                    if msg.lines().any(|l| l == "READY=1") {
                        return msg;
                    }
                }
                Err(e) => panic!(
                    "no READY=1 ({e}); exit: {:?}; log:\n{}",
                    self.child.try_wait(),
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                ),
            }
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        // The service is unshare's child and PID 1 of its namespace:
        // killing it ends the namespace. unshare's --kill-child alone is not
        // enough when chroot --userspec changed the credentials (that
        // clears the parent-death signal).
        let id = self.child.id();
        let children = std::fs::read_to_string(format!("/proc/{id}/task/{id}/children"));
        for pid in children.unwrap_or_default().split_whitespace() {
            if let Ok(pid) = pid.parse::<i32>() {
                // SAFETY: kill(2) on a pid we just read as our child's child.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_start_expands_the_environment_file() {
        let unit =
            "[Service]\nEnvironmentFile=-/etc/default/x\nExecStart=/usr/sbin/x --a 1 $X_OPTS\n";
        let argv = exec_start(unit, |f| {
            assert_eq!(f, "/etc/default/x");
            Some("# c\nX_OPTS=\"--b 2\"\n".into())
        });
        assert_eq!(argv, ["/usr/sbin/x", "--a", "1", "--b", "2"]);
        assert_eq!(exec_start(unit, |_| None), ["/usr/sbin/x", "--a", "1"]);
    }
}
