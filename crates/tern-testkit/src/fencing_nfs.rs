//! Host-down tests on NFS, where QEMU reaches the guest's disk over
//! `nfs://` and no image lock reaches across hosts: only fencing keeps a
//! second copy from starting while the first runs.

use crate::cluster::{enable_host_down_policy, wait_server, LONG};
use crate::fencing::wait_lease_file;
use crate::netns::{Lab, Side};
use crate::nfs::{walk_through_pool, NfsServer};
use crate::{build_or_reuse, BuildOptions, GuestSpec, TernHost, TestController, TestDisk};
use std::path::PathBuf;

/// A controller in namespace C next to the NFS server, agents `a` (in A)
/// and `b` (in B) joined to it, the netfs pool `nfspool` on both, guest
/// `vm` running on `a` from a qcow2 volume of the pool (disk checks on),
/// and `a`'s host-down policy on with its lease on the export armed.
/// Fields drop in order: agents, controller, server, directories, lab.
pub struct NfsArmedPair {
    /// The host whose death the test stages; `vm` runs here.
    pub a: TernHost,
    /// The other host.
    pub b: TernHost,
    /// The controller.
    pub c: TestController,
    /// The NFS server.
    pub nfs: NfsServer,
    /// The pool's target directory on both hosts.
    pub target: PathBuf,
    /// Holds the target.
    pub root: tempfile::TempDir,
    /// The namespaces.
    pub lab: Lab,
}

impl NfsArmedPair {
    /// Starts it, with extra `ternd` arguments for `a`.
    pub fn start(a_args: &[&str]) -> NfsArmedPair {
        let lab = Lab::start();
        let nfs = NfsServer::start(&lab.ns(Side::C), lab.host_addr(Side::C));
        let c = TestController::file_in_netns(&lab.ns(Side::C), lab.host_addr(Side::C), &[]);
        let root = tempfile::tempdir().expect("temp dir");
        let target = root.path().join("nfspool");
        let mut a_opts = lab.host_options(Side::A, "a");
        a_opts
            .extra_args
            .extend(a_args.iter().map(|s| s.to_string()));
        let a = TestController::join(&[&c], a_opts);
        let b = TestController::join(&[&c], lab.host_options(Side::B, "b"));
        for h in [&a, &b] {
            walk_through_pool(h, "nfspool", &nfs, &target);
        }
        a.ok(&[
            "vol-create-as",
            "nfspool",
            "vm01",
            "64M",
            "--format",
            "qcow2",
        ]);
        let img = build_or_reuse(&BuildOptions::default()).expect("test guest");
        let mut spec = GuestSpec::new("vm", &img).workload(
            "tern.mem=16 tern.dirty=0 tern.disk=/dev/vda tern.disk_mb=2 tern.verify_rate=8",
        );
        spec.memory_mib = 128;
        spec.disks.push(TestDisk {
            path: target.join("vm01"),
            format: "qcow2".into(),
            target: "vda".into(),
            cache: "none".into(),
        });
        a.define_guest(&spec);
        a.ok(&["start", "vm"]);
        crate::checks::wait_disk_ok(&a, "vm", 1);
        wait_server(&c, "vm", "a", "running");
        enable_host_down_policy(&c, "a");
        let p = NfsArmedPair {
            a,
            b,
            c,
            nfs,
            target,
            root,
            lab,
        };
        wait_lease_file(&p.lease_path("a"), "a's lease armed", LONG, |l| {
            l["armed"] == true
        });
        p
    }

    /// `host`'s lease at the top of the export (written by its fence with
    /// the agent's NFS client, `tern_api::fence::nfs_lease_name`), read
    /// here from the server's directory.
    pub fn lease_path(&self, host: &str) -> PathBuf {
        self.nfs
            .export_dir()
            .join(format!(".tern-fence-{host}.lease"))
    }
}
