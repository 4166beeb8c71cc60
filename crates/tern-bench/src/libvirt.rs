//! libvirt beside Tern (issue 19): two real `libvirtd`s, one per side of a
//! testkit [`Lab`], migrating the same test guest with `virsh migrate`.
//!
//! Each daemon runs in its side's network namespace and in a mount
//! namespace of its own, where a tmpfs covers `/run` and temporary
//! directories are bound over `/etc/libvirt`, `/var/lib/libvirt`,
//! `/var/log/libvirt` and `/var/cache/libvirt`: nothing it writes reaches
//! the host's libvirt state, and the host's networking is not touched
//! (no networks, no firewall rules; the lab's namespaces are deleted on
//! drop). The daemons listen on plain TCP with no authentication, on
//! addresses that exist only inside the lab. Each runs in a cgroup of its
//! own ([`CpuGroup`]) with every QEMU it starts, which both measures their
//! CPU time and ends every one of them on drop.

pub mod live;
pub mod migrate;

use crate::cpu::{CpuGroup, Meter};
use anyhow::{bail, Context, Result};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tern_testkit::netns::{Lab, Side};

/// The daemon; Debian's `libvirt-daemon` package (scripts/install-deps.sh).
pub const LIBVIRTD: &str = "/usr/sbin/libvirtd";
/// libvirtd's TCP port.
pub const PORT: u16 = 16509;
/// How long a daemon may take to answer (it probes QEMU's capabilities).
const START_TIMEOUT: Duration = Duration::from_secs(90);

/// Why libvirt cannot be measured here, if it cannot: not installed, not
/// root, or no cgroup v2 hierarchy.
pub fn unavailable() -> Option<String> {
    if !Path::new(LIBVIRTD).is_file() {
        return Some(format!(
            "{LIBVIRTD} is not installed (scripts/install-deps.sh installs libvirt-daemon)"
        ));
    }
    if Command::new("virsh").arg("--version").output().is_err() {
        return Some("virsh is not installed (libvirt-clients)".into());
    }
    if !tern_testkit::netns::is_root() {
        return Some("the libvirt baseline needs root (namespaces, cgroups)".into());
    }
    None
}

/// `libvirtd.conf`: plain TCP on the side's lab address, no authentication
/// (the address exists only inside the lab), logs in the private log dir.
pub fn libvirtd_conf(addr: Ipv4Addr) -> String {
    format!(
        "listen_tls = 0\nlisten_tcp = 1\nlisten_addr = \"{addr}\"\ntcp_port = \"{PORT}\"\n\
         auth_tcp = \"none\"\nauth_unix_rw = \"none\"\nauth_unix_ro = \"none\"\n\
         log_outputs = \"3:file:/var/log/libvirt/libvirtd.log\"\n"
    )
}

/// `qemu.conf`: QEMU as root with no security driver, no cgroups of
/// libvirt's own, no per-QEMU mount namespace and no virtlogd (so the
/// daemon runs in a container, and its QEMUs stay in the daemon's cgroup),
/// incoming migrations on the side's lab address.
pub fn qemu_conf(addr: Ipv4Addr) -> String {
    format!(
        "user = \"root\"\ngroup = \"root\"\ndynamic_ownership = 0\nremember_owner = 0\n\
         security_driver = \"none\"\nnamespaces = [ ]\ncgroup_controllers = [ ]\n\
         stdio_handler = \"file\"\nmigration_address = \"{addr}\"\nmigration_host = \"{addr}\"\n"
    )
}

/// The shell script run in the daemon's new mount namespace: private
/// `/run` and libvirt directories, then the daemon in the foreground.
fn mount_script(root: &Path) -> String {
    let r = root.display();
    format!(
        "set -e\n\
         mount -t tmpfs tern-libvirt /run\n\
         mkdir -p /run/libvirt\n\
         mount --bind {r}/etc /etc/libvirt\n\
         mount --bind {r}/lib /var/lib/libvirt\n\
         mount --bind {r}/log /var/log/libvirt\n\
         mount --bind {r}/cache /var/cache/libvirt\n\
         exec {LIBVIRTD} --listen -f /etc/libvirt/libvirtd.conf\n"
    )
}

/// One running `libvirtd` in a side of the lab.
#[derive(Debug)]
pub struct Libvirtd {
    /// Its lab side.
    pub side: Side,
    ns: String,
    addr: Ipv4Addr,
    group: Arc<CpuGroup>,
    child: Option<Child>,
    // Removed last, once the daemon and its QEMUs are gone.
    root: tempfile::TempDir,
}

impl Libvirtd {
    /// Starts a daemon in `side` of `lab` and waits until it answers.
    pub fn start(lab: &Lab, side: Side) -> Result<Libvirtd> {
        let addr = lab.host_addr(side);
        let root = crate::guest::scratch("tern-bench-libvirtd-")?;
        // log/qemu: the consoles' directory, which libvirt does not create.
        for d in ["etc", "lib", "log/qemu", "cache"] {
            std::fs::create_dir_all(root.path().join(d)).context("create libvirt dirs")?;
        }
        std::fs::write(root.path().join("etc/libvirtd.conf"), libvirtd_conf(addr))?;
        std::fs::write(root.path().join("etc/qemu.conf"), qemu_conf(addr))?;
        // The mount points themselves; empty where libvirt-daemon-system
        // (which would create them) is not installed.
        for d in [
            "/etc/libvirt",
            "/var/lib/libvirt",
            "/var/log/libvirt",
            "/var/cache/libvirt",
        ] {
            std::fs::create_dir_all(d).with_context(|| format!("create {d}"))?;
        }
        let letter = lab.ns(side).chars().last().unwrap_or('x');
        let group = Arc::new(CpuGroup::create(&format!("libvirtd-{letter}"))?);
        let ns = lab.ns(side);
        let stderr = std::fs::File::create(root.path().join("stderr"))?;
        // The shell joins the cgroup, then becomes `ip netns exec`, which
        // becomes `unshare`, then the script, then libvirtd: one process,
        // already in the group before anything forks.
        let child = Command::new("sh")
            .args(["-c", "echo $$ > \"$1\" && shift && exec \"$@\"", "sh"])
            .arg(group.path().join("cgroup.procs"))
            .args(["ip", "netns", "exec", &ns, "unshare", "-m"])
            .args(["--propagation", "private", "sh", "-c"])
            .arg(mount_script(root.path()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .context("start libvirtd")?;
        let mut d = Libvirtd {
            side,
            ns,
            addr,
            group,
            child: Some(child),
            root,
        };
        d.wait_up(lab)?;
        // libvirtd probes QEMU's capabilities the first time it needs them:
        // on the destination that is the first incoming migration, which
        // would carry seconds of probing (time and CPU) that no later one
        // does. Probe now, outside every measured span.
        let o = d.virsh(
            lab,
            &["domcapabilities", "--virttype", "qemu", "--arch", "x86_64"],
        );
        if !o.status.success() {
            bail!(
                "libvirtd in {} cannot probe QEMU: {}",
                d.ns,
                String::from_utf8_lossy(&o.stderr).trim()
            );
        }
        Ok(d)
    }

    /// `qemu+tcp://ADDR/system`, reachable from inside the lab.
    pub fn uri(&self) -> String {
        format!("qemu+tcp://{}/system", self.addr)
    }

    /// Where the daemon's private `/var/log/libvirt` is on the host.
    pub fn log_dir(&self) -> PathBuf {
        self.root.path().join("log")
    }

    /// The cgroup the daemon and its QEMUs run in.
    pub fn group(&self) -> Arc<CpuGroup> {
        self.group.clone()
    }

    /// Waits for the TCP port and for `virsh list` to answer.
    fn wait_up(&mut self, lab: &Lab) -> Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        let sa = SocketAddr::from((self.addr, PORT));
        loop {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(st)) = c.try_wait() {
                    bail!(
                        "libvirtd in {} exited at start ({st}): {}{}",
                        self.ns,
                        std::fs::read_to_string(self.root.path().join("stderr"))
                            .unwrap_or_default(),
                        tern_testkit::tail(
                            &std::fs::read_to_string(self.log_dir().join("libvirtd.log"))
                                .unwrap_or_default(),
                            5
                        )
                    );
                }
            }
            let open = lab
                .in_ns(self.side, || {
                    TcpStream::connect_timeout(&sa, Duration::from_millis(200)).is_ok()
                })
                .unwrap_or(false);
            if open && self.virsh(lab, &["list", "--all"]).status.success() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "libvirtd in {} did not answer on {sa} within {} s",
                    self.ns,
                    START_TIMEOUT.as_secs()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `virsh -c <this daemon> ARGS`, run inside the daemon's namespace.
    pub fn virsh_cmd(&self, lab: &Lab) -> Command {
        let mut c = lab.cmd(self.side, "virsh");
        c.args(["-q", "-c", &self.uri()]);
        c
    }

    /// Runs `virsh -c <this daemon> ARGS` and returns its output.
    pub fn virsh(&self, lab: &Lab, args: &[&str]) -> Output {
        self.virsh_cmd(lab)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| Output {
                status: std::os::unix::process::ExitStatusExt::from_raw(1 << 8),
                stdout: Vec::new(),
                stderr: format!("cannot run virsh: {e}").into_bytes(),
            })
    }
}

impl Drop for Libvirtd {
    /// Ends the daemon and every QEMU it started (all in its cgroup).
    fn drop(&mut self) {
        self.group.kill_all(Duration::from_secs(10));
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Two daemons, one each in sides A and B of a lab of their own.
#[derive(Debug)]
pub struct LibvirtPair {
    /// The daemon in side A.
    pub a: Libvirtd,
    /// The daemon in side B.
    pub b: Libvirtd,
    // Deleted after the daemons have ended.
    lab: Lab,
}

impl LibvirtPair {
    /// Builds the lab and starts both daemons.
    pub fn start() -> Result<LibvirtPair> {
        if let Some(why) = unavailable() {
            bail!("{why}");
        }
        let lab = Lab::start();
        let a = Libvirtd::start(&lab, Side::A)?;
        let b = Libvirtd::start(&lab, Side::B)?;
        Ok(LibvirtPair { a, b, lab })
    }

    /// The lab the daemons run in.
    pub fn lab(&self) -> &Lab {
        &self.lab
    }

    /// A meter over both daemons' cgroups (their QEMUs included).
    pub fn meter(&self) -> Meter {
        Meter::new(self.a.group(), self.b.group())
    }
}

/// The test guest's libvirt XML as libvirt must run it here: TCG
/// (`type='qemu'`), QEMU's `max` CPU as Tern uses under TCG, no USB and no
/// balloon (Tern adds neither), and serial port 0 written to `console`, a
/// path under `/var/log/libvirt` that is private to each daemon, so the
/// source and destination consoles are two files on the host.
pub fn domain_xml(spec_xml: &str, console: &str) -> Result<String> {
    const PTY: &str = "    <serial type='pty'>\n      <target port='0'/>\n    </serial>\n    <console type='pty'>\n      <target type='serial' port='0'/>\n    </console>\n";
    if !spec_xml.contains(PTY) || !spec_xml.contains("<domain type='kvm'>") {
        bail!("the test guest's XML changed shape; update libvirt::domain_xml");
    }
    let devices = format!(
        "    <serial type='file'>\n      <source path='{console}'/>\n      <target port='0'/>\n    </serial>\n    \
         <controller type='usb' model='none'/>\n    <memballoon model='none'/>\n"
    );
    Ok(spec_xml
        .replacen("<domain type='kvm'>", "<domain type='qemu'>", 1)
        .replacen(
            "  </os>\n",
            "  </os>\n  <cpu mode='maximum' migratable='on'/>\n",
            1,
        )
        .replacen(PTY, &devices, 1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_testkit::{GuestImage, GuestSpec};

    #[test]
    fn the_guest_runs_under_tcg_with_a_file_console() {
        let image = GuestImage {
            kernel: "/k".into(),
            initrd: "/i".into(),
        };
        let xml = GuestSpec::new("g", &image).to_xml();
        let out = domain_xml(&xml, "/var/log/libvirt/qemu/g.console").unwrap();
        assert!(out.starts_with("<domain type='qemu'>"), "{out}");
        assert!(out.contains("<source path='/var/log/libvirt/qemu/g.console'/>"));
        assert!(out.contains("<cpu mode='maximum'"));
        assert!(!out.contains("pty"), "{out}");
        assert!(out.contains("<kernel>/k</kernel>"));
        assert!(domain_xml("<domain/>", "/c").is_err());
    }

    #[test]
    fn daemons_listen_only_on_their_lab_address() {
        let a = Ipv4Addr::new(10, 77, 5, 2);
        let c = libvirtd_conf(a);
        assert!(c.contains("listen_addr = \"10.77.5.2\""));
        assert!(c.contains("listen_tls = 0"));
        let q = qemu_conf(a);
        assert!(q.contains("migration_host = \"10.77.5.2\""));
        assert!(q.contains("cgroup_controllers = [ ]"));
        let s = mount_script(Path::new("/tmp/x"));
        assert!(s.contains("mount --bind /tmp/x/lib /var/lib/libvirt"));
        assert!(s.starts_with("set -e\nmount -t tmpfs"));
    }
}
