//! A real single-node Ceph for the RBD tests (issue 21): one monitor, one
//! manager and one BlueStore OSD on a sparse file, all in a temporary
//! directory, bound to 127.0.0.1, cephx on, started without systemd.
//!
//! QEMU opens RBD images through librbd, so the tests need a cluster that
//! behaves like a production one in the ways that matter to Tern: cephx
//! keys per client, exclusive locks and blocklisting (the storage-enforced
//! fence). A single OSD only reaches HEALTH_OK with pool size 1 and the
//! redundancy warning off; see [`ceph_config`].
//!
//! Dropping the cluster kills exactly the daemons it started (it holds
//! their [`Child`] handles and waits on them, so no pid is ever guessed)
//! and removes the directory.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The pool every cluster starts with, initialised for RBD.
pub const POOL: &str = "tern";
/// The client id the tests give QEMU (`client.qemu`, `profile rbd` on
/// [`POOL`], and the mon's `osd blocklist` command): a second identity, so fencing one client leaves the admin
/// able to act.
pub const QEMU_ID: &str = "qemu";
/// Size of the OSD's sparse block file: holes cost nothing on disk.
const OSD_BLOCK_BYTES: u64 = 10 << 30;
/// How long a cold start may take; the issue measured about 14 s idle.
const START_TIMEOUT: Duration = Duration::from_secs(180);

/// Monitor ports: `v2` (msgr2) and `v1` (legacy). Clients given a bare
/// `HOST:PORT` (as libvirt's `<host name= port=>` becomes `mon_host`)
/// speak v1 unless the port is 3300, so both are bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MonPorts {
    /// msgr2 port.
    pub v2: u16,
    /// Legacy messenger port; [`CephCluster::mon_addr`] names this one.
    pub v1: u16,
}

/// The cluster's `ceph.conf` for data directory `dir`.
///
/// Why each non-obvious line is there:
/// - pool size 1, `mon allow pool size one`, `osd crush chooseleaf type = 0`
///   and `mon warn on pool no redundancy = false`: one OSD reaches HEALTH_OK;
/// - `mon data avail warn/crit`: a nearly full test disk must not stop the
///   monitor (it refuses to start below 5 % free by default);
/// - `auth allow insecure global id reclaim = false`: else HEALTH_WARN;
/// - `[client] admin socket` with `$pid.$cctid`: QEMU and the `rbd` CLI
///   otherwise fight over one socket path;
/// - the block file lives outside the OSD's data directory, where
///   BlueStore would make `block` a symlink to itself.
pub fn ceph_config(fsid: &str, ports: MonPorts, dir: &Path) -> String {
    let d = dir.display();
    format!(
        "[global]
fsid = {fsid}
mon host = [v2:127.0.0.1:{v2},v1:127.0.0.1:{v1}]
public addr = 127.0.0.1
auth cluster required = cephx
auth service required = cephx
auth client required = cephx
osd pool default size = 1
osd pool default min size = 1
mon allow pool size one = true
osd crush chooseleaf type = 0
mon warn on pool no redundancy = false
mon data avail warn = 1
mon data avail crit = 0
run dir = {d}/run
admin socket = {d}/run/$cluster-$name.asok
log file = {d}/log/$name.log
[client]
admin socket = {d}/run/$cluster-$name.$pid.$cctid.asok
log file = {d}/log/$name.$pid.log
keyring = {d}/$cluster.$name.keyring
[mon]
mon data = {d}/mon/$id
mon allow pool delete = true
auth allow insecure global id reclaim = false
[mgr]
mgr data = {d}/mgr/$id
[osd]
osd data = {d}/osd/$id
osd objectstore = bluestore
bluestore block path = {d}/osd/$id.block
bluestore block create = true
bluestore block size = {OSD_BLOCK_BYTES}
bluestore fsck on mkfs = false
osd memory target = 1073741824
",
        v2 = ports.v2,
        v1 = ports.v1,
    )
}

fn have(prog: &str) -> bool {
    ["/usr/bin", "/usr/sbin", "/bin", "/sbin"]
        .iter()
        .any(|d| Path::new(d).join(prog).exists())
}

/// For tests: `true` (after saying why) when the Ceph packages are
/// missing; scripts/install-deps.sh installs them.
pub fn skip_without_ceph(test: &str) -> bool {
    let missing: Vec<&str> = [
        "ceph-mon",
        "ceph-mgr",
        "ceph-osd",
        "ceph",
        "rbd",
        "ceph-authtool",
        "monmaptool",
    ]
    .into_iter()
    .filter(|p| !have(p))
    .collect();
    if missing.is_empty() {
        return false;
    }
    eprintln!(
        "skipping {test}: {} not installed (run scripts/install-deps.sh: ceph-mon, ceph-mgr, ceph-osd, ceph-common)",
        missing.join(", ")
    );
    true
}

/// One cluster at a time per test process: five started at once by the
/// tests of one binary (about 500 MB each, plus their guests) on the
/// loaded 2-core development machine left every monitor unanswered for
/// 300 s. Held by the cluster, released when it drops.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A running single-node cluster; see the module documentation.
#[derive(Debug)]
pub struct CephCluster {
    /// Released after `Drop::drop` killed the daemons: the next test's
    /// cluster starts once this one's are gone.
    _turn: std::sync::MutexGuard<'static, ()>,
    /// Daemons in start order (mon, mgr, osd); killed in reverse.
    daemons: Vec<(&'static str, Child)>,
    ports: MonPorts,
    fsid: String,
    dir: tempfile::TempDir,
}

fn uuid() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/uuid")
        .expect("a kernel uuid")
        .trim()
        .to_string()
}

/// Runs a setup command to completion; panics with its output on failure.
fn run(cmd: &mut Command, what: &str) -> Output {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    if !out.status.success() {
        panic!(
            "{what} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

impl CephCluster {
    /// Creates the keys, the monitor store and the OSD, starts the three
    /// daemons, creates [`POOL`] and waits for HEALTH_OK. Panics with the
    /// daemons' logs if the cluster does not come up.
    pub fn start() -> CephCluster {
        // Before the ports are picked, so none goes stale while waiting.
        let turn = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
        let dir = tempfile::Builder::new()
            .prefix("tern-ceph-")
            .tempdir()
            .expect("temporary directory for Ceph");
        let ports = MonPorts {
            v2: crate::free_port(),
            v1: crate::free_port(),
        };
        let mut c = CephCluster {
            _turn: turn,
            daemons: Vec::new(),
            ports,
            fsid: uuid(),
            dir,
        };
        for sub in ["run", "log", "mon/a", "mgr/x", "osd/0"] {
            std::fs::create_dir_all(c.path().join(sub)).expect("Ceph directories");
        }
        std::fs::write(c.conf(), ceph_config(&c.fsid, ports, c.path())).expect("ceph.conf");
        c.make_keys();
        c.make_mon();
        c.spawn("mon", "ceph-mon", "a");
        c.spawn("mgr", "ceph-mgr", "x");
        c.make_osd();
        c.spawn("osd", "ceph-osd", "0");
        c.admin_ok(&["osd", "pool", "create", POOL, "8"]);
        c.admin_ok(&["osd", "pool", "application", "enable", POOL, "rbd"]);
        c.wait_healthy();
        c
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Keyrings for `mon.`, `client.admin`, `client.qemu` and `mgr.x`, all
    /// imported into the monitor's initial keyring so they exist from the
    /// first moment.
    fn make_keys(&self) {
        let d = self.path();
        let mon_kr = d.join("mon.keyring");
        let rbd_cap = format!("profile rbd pool={POOL}");
        let keys: [(&str, PathBuf, &[&str]); 4] = [
            ("mon.", mon_kr.clone(), &["mon", "allow *"]),
            (
                "client.admin",
                self.keyring("admin"),
                &[
                    "mon", "allow *", "osd", "allow *", "mds", "allow *", "mgr", "allow *",
                ],
            ),
            (
                "client.qemu",
                self.keyring(QEMU_ID),
                // `osd blocklist` on the mon: Tern removes the entries of a
                // fenced host that came back (profile rbd only adds them).
                &[
                    "mon",
                    "profile rbd, allow command \"osd blocklist\"",
                    "osd",
                    &rbd_cap,
                    "mgr",
                    &rbd_cap,
                ],
            ),
            (
                "mgr.x",
                d.join("mgr/x/keyring"),
                &[
                    "mon",
                    "allow profile mgr",
                    "osd",
                    "allow *",
                    "mds",
                    "allow *",
                ],
            ),
        ];
        for (name, path, caps) in &keys {
            let mut cmd = Command::new("ceph-authtool");
            cmd.arg("--create-keyring")
                .arg(path)
                .args(["--gen-key", "-n", name]);
            for pair in caps.chunks(2) {
                cmd.args(["--cap", pair[0], pair[1]]);
            }
            run(&mut cmd, &format!("ceph-authtool for {name}"));
            if *path != mon_kr {
                run(
                    Command::new("ceph-authtool")
                        .arg(&mon_kr)
                        .arg("--import-keyring")
                        .arg(path),
                    "ceph-authtool --import-keyring",
                );
            }
        }
    }

    /// `ceph-mon --mkfs` silently does nothing (exit 0) on a non-empty data
    /// directory, so this checks that the store appeared.
    fn make_mon(&self) {
        let d = self.path();
        let addrs = format!(
            "[v2:127.0.0.1:{},v1:127.0.0.1:{}]",
            self.ports.v2, self.ports.v1
        );
        run(
            Command::new("monmaptool")
                .args(["--create", "--addv", "a", &addrs, "--fsid", &self.fsid])
                .arg(d.join("monmap")),
            "monmaptool --create",
        );
        run(
            Command::new("ceph-mon")
                .arg("-c")
                .arg(self.conf())
                .args(["--mkfs", "-i", "a", "--monmap"])
                .arg(d.join("monmap"))
                .arg("--keyring")
                .arg(d.join("mon.keyring")),
            "ceph-mon --mkfs",
        );
        assert!(
            d.join("mon/a/store.db").exists(),
            "ceph-mon --mkfs made no store in {}",
            d.join("mon/a").display()
        );
    }

    /// Registers osd.0 with a key of our choosing and formats BlueStore.
    /// `ceph-osd --mkfs` keeps the key in `osd_key` but writes no keyring,
    /// which the daemon needs: ceph-authtool writes it.
    fn make_osd(&self) {
        let osd_uuid = uuid();
        let key = run(
            Command::new("ceph-authtool").arg("--gen-print-key"),
            "ceph-authtool --gen-print-key",
        );
        let key = String::from_utf8_lossy(&key.stdout).trim().to_string();
        let secret = self.path().join("osd-secret.json");
        std::fs::write(&secret, format!("{{\"cephx_secret\": \"{key}\"}}")).expect("osd secret");
        let id = self.admin_ok(&[
            "osd",
            "new",
            &osd_uuid,
            "-i",
            secret.to_str().expect("utf-8"),
        ]);
        assert_eq!(id.trim(), "0", "the first OSD's id");
        run(
            Command::new("ceph-authtool")
                .arg("--create-keyring")
                .arg(self.path().join("osd/0/keyring"))
                .args(["--name", "osd.0", "--add-key", &key]),
            "ceph-authtool for osd.0",
        );
        run(
            Command::new("ceph-osd").arg("-c").arg(self.conf()).args([
                "-i",
                "0",
                "--mkfs",
                "--osd-uuid",
                &osd_uuid,
            ]),
            "ceph-osd --mkfs",
        );
    }

    /// Starts a daemon in the foreground (`-f`), so it stays our child.
    fn spawn(&mut self, what: &'static str, prog: &str, id: &str) {
        let err = std::fs::File::create(self.path().join(format!("{what}.stderr")))
            .expect("daemon stderr file");
        let child = Command::new(prog)
            .arg("-c")
            .arg(self.conf())
            .args(["-i", id, "-f"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {prog}: {e}"));
        self.daemons.push((what, child));
    }

    /// Polls `ceph health` until HEALTH_OK; fails fast if a daemon exits.
    fn wait_healthy(&mut self) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            for (what, child) in &mut self.daemons {
                if let Ok(Some(st)) = child.try_wait() {
                    let what = *what;
                    panic!("ceph {what} exited ({st}) during start-up\n{}", self.logs());
                }
            }
            let out = self.admin(&["health", "--connect-timeout", "10"]);
            let last = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if out.status.success() && last.starts_with("HEALTH_OK") {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "Ceph not healthy after {START_TIMEOUT:?}: {last}\n{}",
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// The tails of the daemons' stderr and logs, for failure messages.
    pub fn logs(&self) -> String {
        let mut s = String::new();
        for (file, n) in [
            ("mon.stderr", 10),
            ("mgr.stderr", 10),
            ("osd.stderr", 10),
            ("log/mon.a.log", 20),
            ("log/osd.0.log", 20),
        ] {
            let text = std::fs::read_to_string(self.path().join(file)).unwrap_or_default();
            s.push_str(&format!("--- {file}\n{}\n", crate::tail(&text, n)));
        }
        s
    }

    /// The cluster's configuration file (QEMU's `conf=`, `ceph -c`).
    pub fn conf(&self) -> PathBuf {
        self.path().join("ceph.conf")
    }

    /// The monitor as `127.0.0.1:PORT` (legacy messenger), what a pool's
    /// `--source-host` or a disk's `<host name= port=>` names.
    pub fn mon_addr(&self) -> String {
        format!("127.0.0.1:{}", self.ports.v1)
    }

    /// Both monitor ports.
    pub fn mon_ports(&self) -> MonPorts {
        self.ports
    }

    /// The cluster's fsid: what identifies the storage as shared.
    pub fn fsid(&self) -> &str {
        &self.fsid
    }

    /// The keyring file of `client.ID` (`admin` or [`QEMU_ID`]).
    pub fn keyring(&self, id: &str) -> PathBuf {
        self.path().join(format!("ceph.client.{id}.keyring"))
    }

    /// The base64 cephx key of `client.ID`: the value a Tern/libvirt
    /// secret holds.
    pub fn key(&self, id: &str) -> String {
        let out = run(
            Command::new("ceph-authtool").arg(self.keyring(id)).args([
                "-n",
                &format!("client.{id}"),
                "-p",
            ]),
            "ceph-authtool -p",
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// QEMU's legacy filename for an image in [`POOL`], opened as
    /// `client.ID` through this cluster's configuration.
    pub fn qemu_spec(&self, image: &str, id: &str) -> String {
        format!("rbd:{POOL}/{image}:conf={}:id={id}", self.conf().display())
    }

    /// A `ceph` command as `client.admin`, whatever its outcome.
    pub fn admin(&self, args: &[&str]) -> Output {
        self.tool("ceph", "admin", args)
    }

    /// A `ceph` command as `client.admin` that must succeed; its stdout.
    pub fn admin_ok(&self, args: &[&str]) -> String {
        ok(self.admin(args), "ceph", args)
    }

    /// An `rbd` command as `client.ID`, whatever its outcome.
    pub fn rbd(&self, id: &str, args: &[&str]) -> Output {
        self.tool("rbd", id, args)
    }

    /// An `rbd` command as `client.ID` that must succeed; its stdout.
    pub fn rbd_ok(&self, id: &str, args: &[&str]) -> String {
        ok(self.rbd(id, args), "rbd", args)
    }

    fn tool(&self, prog: &str, id: &str, args: &[&str]) -> Output {
        Command::new(prog)
            .arg("-c")
            .arg(self.conf())
            .args(["--id", id])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {prog}: {e}"))
    }
}

fn ok(out: Output, prog: &str, args: &[&str]) -> String {
    if !out.status.success() {
        panic!(
            "{prog} {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl Drop for CephCluster {
    fn drop(&mut self) {
        // Our own children: kill() signals the pid we still hold unreaped,
        // so it cannot name another process; wait() reaps it.
        while let Some((_, mut child)) = self.daemons.pop() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_lets_one_osd_be_healthy_and_keeps_clients_apart() {
        let c = ceph_config("f00", MonPorts { v2: 4000, v1: 4001 }, Path::new("/tmp/c"));
        for needle in [
            "mon host = [v2:127.0.0.1:4000,v1:127.0.0.1:4001]",
            "osd pool default size = 1",
            "mon allow pool size one = true",
            "osd crush chooseleaf type = 0",
            "mon warn on pool no redundancy = false",
            "auth client required = cephx",
            "admin socket = /tmp/c/run/$cluster-$name.$pid.$cctid.asok",
            "bluestore block path = /tmp/c/osd/$id.block",
        ] {
            assert!(c.contains(needle), "{needle} missing from\n{c}");
        }
    }
}
