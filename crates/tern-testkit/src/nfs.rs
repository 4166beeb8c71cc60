//! A real NFS server for tests: nfs-ganesha (VFS backend) with rpcbind,
//! inside a network namespace, exporting a temporary directory over NFSv3
//! (what QEMU's libnfs `nfs://` driver speaks; it asks rpcbind for the
//! MOUNT and NFS ports, so rpcbind is required).
//!
//! Both daemons run in a private mount namespace with a tmpfs on `/run`, so
//! their sockets, pid and lock files never meet the host's or another
//! test's. The export is reachable as `HOST:/nfs` (`Mount_Path_Pseudo`
//! makes NFSv3 mounts use the pseudo path, as the walk-through's
//! `--source-path /nfs` expects). Dropping the server kills both daemons
//! (their process group) and removes the directory.

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The export path clients mount.
pub const EXPORT: &str = "/nfs";
/// A second export, a different directory ([`NfsServer::second_export_path`]).
pub const EXPORT2: &str = "/nfs2";

/// A running ganesha + rpcbind pair; see the module documentation.
#[derive(Debug)]
pub struct NfsServer {
    child: Option<Child>,
    addr: Ipv4Addr,
    dir: tempfile::TempDir,
}

/// ganesha's configuration: NFSv3 (and v4) over TCP on `addr`, no grace
/// period (a fresh server has no clients to wait for), root not squashed
/// (QEMU and the agents run as root).
pub fn ganesha_config(addr: Ipv4Addr, export: &Path, recovery: &Path) -> String {
    let second = export.with_file_name("export2");
    format!(
        r#"NFS_CORE_PARAM {{
  Bind_addr = {addr};
  Protocols = 3, 4;
  Enable_NLM = false;
  Enable_RQUOTA = false;
  Enable_UDP = false;
  Mount_Path_Pseudo = true;
}}
NFSV4 {{
  Graceless = true;
  RecoveryBackend = fs;
  RecoveryRoot = {recovery};
}}
EXPORT {{
  Export_Id = 1;
  Path = {export};
  Pseudo = {EXPORT};
  Access_Type = RW;
  Squash = No_Root_Squash;
  Protocols = 3, 4;
  Transports = TCP;
  SecType = sys;
  FSAL {{ Name = VFS; }}
}}
EXPORT {{
  Export_Id = 2;
  Path = {second};
  Pseudo = {EXPORT2};
  Access_Type = RW;
  Squash = No_Root_Squash;
  Protocols = 3, 4;
  Transports = TCP;
  SecType = sys;
  FSAL {{ Name = VFS; }}
}}
LOG {{ Default_Log_Level = EVENT; }}
"#,
        export = export.display(),
        second = second.display(),
        recovery = recovery.display(),
    )
}

fn have(prog: &str) -> bool {
    ["/usr/bin", "/usr/sbin", "/bin", "/sbin"]
        .iter()
        .any(|d| Path::new(d).join(prog).exists())
}

// ganesha exits when it cannot register with rpcbind, so the script waits
// for rpcbind's socket before starting it (under load rpcbind is slow).

/// For tests: `true` (after saying why) when the NFS server packages are
/// missing; scripts/install-deps.sh installs them.
pub fn skip_without_nfs_server(test: &str) -> bool {
    let missing: Vec<&str> = ["ganesha.nfsd", "rpcbind"]
        .into_iter()
        .filter(|p| !have(p))
        .collect();
    if missing.is_empty() {
        return false;
    }
    eprintln!(
        "skipping {test}: {} not installed (run scripts/install-deps.sh: nfs-ganesha, nfs-ganesha-vfs, rpcbind)",
        missing.join(", ")
    );
    true
}

impl NfsServer {
    /// Starts the server in namespace `ns`, where `addr` is a local
    /// address, and waits until NFS and rpcbind accept connections.
    /// Panics with ganesha's log if it does not come up.
    pub fn start(ns: &str, addr: Ipv4Addr) -> NfsServer {
        let dir = tempfile::Builder::new()
            .prefix("tern-nfs-")
            .tempdir()
            .expect("temporary directory for the NFS server");
        let export = dir.path().join("export");
        let recovery = dir.path().join("recovery");
        std::fs::create_dir_all(&export).unwrap();
        std::fs::create_dir_all(dir.path().join("export2")).unwrap();
        std::fs::create_dir_all(&recovery).unwrap();
        let conf = dir.path().join("ganesha.conf");
        std::fs::write(&conf, ganesha_config(addr, &export, &recovery)).unwrap();
        // rpcbind always listens on loopback; `-h 127.0.0.1` on top makes
        // bookworm's rpcbind abort ("double free") before it serves.
        let only = if addr.is_loopback() {
            String::new()
        } else {
            format!("-h {addr}")
        };
        let script = format!(
            "set -e\n\
             mount -t tmpfs tern-nfs /run\n\
             mkdir -p /run/rpcbind /run/ganesha\n\
             rpcbind -f {only} &\n\
             i=0; while [ ! -S /run/rpcbind.sock ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done\n\
             exec ganesha.nfsd -F -f {conf} -L {log} -p /run/ganesha/ganesha.pid\n",
            conf = conf.display(),
            log = dir.path().join("ganesha.log").display(),
        );
        let child = Command::new("ip")
            .args(["netns", "exec", ns, "unshare", "-m", "sh", "-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("stderr")).unwrap())
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start the NFS server: {e}"));
        let mut s = NfsServer {
            child: Some(child),
            addr,
            dir,
        };
        s.wait_up(ns);
        s
    }

    fn wait_up(&mut self, ns: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let addr = self.addr;
        loop {
            let up = crate::netns::in_netns(ns, || {
                [2049, 111].iter().all(|&p| {
                    TcpStream::connect_timeout(
                        &SocketAddr::from((addr, p)),
                        Duration::from_millis(500),
                    )
                    .is_ok()
                })
            })
            .unwrap_or(false);
            if up {
                return;
            }
            let ended = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if ended.is_some() || Instant::now() > deadline {
                panic!(
                    "the NFS server did not come up ({}): {}\n{}",
                    ended.map_or("still starting".into(), |s| s.to_string()),
                    crate::tail(
                        &std::fs::read_to_string(self.dir.path().join("stderr"))
                            .unwrap_or_default(),
                        20
                    ),
                    crate::tail(&self.log(), 30)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The server's address (give it as `--source-host`).
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// The export path (give it as `--source-path`).
    pub fn export_path(&self) -> &'static str {
        EXPORT
    }

    /// Another export of the same server, a different directory: a pool
    /// defined on it shares nothing with one on [`NfsServer::export_path`].
    pub fn second_export_path(&self) -> &'static str {
        EXPORT2
    }

    /// The exported directory as the server sees it: files the clients
    /// create appear here.
    pub fn export_dir(&self) -> PathBuf {
        self.dir.path().join("export")
    }

    /// ganesha's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("ganesha.log")).unwrap_or_default()
    }
}

impl Drop for NfsServer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let pgid = c.id() as i32;
            // SAFETY: signals our own process group (ganesha, rpcbind, sh).
            unsafe {
                libc::kill(-pgid, libc::SIGKILL);
            }
            let _ = c.wait();
        }
    }
}

/// The walk-through's pool commands on `host`, with `tern` for `virsh`:
/// `pool-define-as NAME --type netfs --source-host H --source-path /nfs
/// --target DIR`, `pool-build`, `pool-start`, `pool-autostart`.
pub fn walk_through_pool(host: &crate::TernHost, name: &str, server: &NfsServer, target: &Path) {
    let t = target.to_str().expect("utf-8 path");
    let h = server.host();
    host.ok(&[
        "pool-define-as",
        name,
        "--type",
        "netfs",
        "--source-host",
        &h,
        "--source-path",
        server.export_path(),
        "--target",
        t,
    ]);
    host.ok(&["pool-build", name]);
    host.ok(&["pool-start", name]);
    host.ok(&["pool-autostart", name]);
}

/// The walk-through's setting: an NFS server in namespace C, agents in A
/// and B, and the netfs pool `nfspool` defined and started on both with
/// the walk-through's commands, its target under a temporary `/mykvm`.
/// Fields drop in order: agents first, then the server, the namespaces.
pub struct NfsPair {
    /// The agent in namespace A.
    pub a: crate::TernHost,
    /// The agent in namespace B.
    pub b: crate::TernHost,
    /// The server both mount (or reach through QEMU).
    pub nfs: NfsServer,
    /// The pool's target directory on both hosts.
    pub target: PathBuf,
    /// The temporary directory holding the target (and test files).
    pub root: tempfile::TempDir,
    /// The namespaces and their links.
    pub lab: crate::Lab,
}

impl NfsPair {
    /// Starts the server, both agents (named `NAME-a`, `NAME-b`) and the pool.
    pub fn start(name: &str) -> NfsPair {
        use crate::netns::Side;
        let lab = crate::Lab::start();
        let nfs = NfsServer::start(&lab.ns(Side::C), lab.host_addr(Side::C));
        let root = tempfile::Builder::new()
            .prefix("tern-mykvm-")
            .tempdir()
            .expect("temp dir");
        let target = root.path().join("nfspool");
        let a = crate::TernHost::start_with(lab.host_options(Side::A, &format!("{name}-a")));
        let b = crate::TernHost::start_with(lab.host_options(Side::B, &format!("{name}-b")));
        for h in [&a, &b] {
            walk_through_pool(h, "nfspool", &nfs, &target);
        }
        NfsPair {
            a,
            b,
            nfs,
            target,
            root,
            lab,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_exports_the_directory_as_nfs_for_v3_mounts() {
        let c = ganesha_config(
            Ipv4Addr::new(10, 77, 1, 3),
            Path::new("/tmp/x/export"),
            Path::new("/tmp/x/rec"),
        );
        for needle in [
            "Bind_addr = 10.77.1.3;",
            "Mount_Path_Pseudo = true;",
            "Path = /tmp/x/export;",
            "Pseudo = /nfs;",
            "Squash = No_Root_Squash;",
            "Graceless = true;",
            "Name = VFS;",
        ] {
            assert!(c.contains(needle), "{needle} missing from\n{c}");
        }
    }
}
