//! The Debian test guest ([`crate::debian::debian_guest`]) booted as a
//! test *host*: QEMU under TCG started directly by the test (no `ternd`
//! around it), so that code which needs a real kernel feature this machine
//! lacks (the kernel NFS client) can run inside it.
//!
//! - Network: QEMU's user-mode network. Inside the guest `10.0.2.2` is the
//!   loopback of the network namespace QEMU runs in, so a server the test
//!   starts on that loopback is reachable, and nothing else is.
//! - Binaries: the directory holding the workspace's binaries
//!   ([`crate::host::bin_dir`]) is shared read-only over virtio-9p; the
//!   guest mounts it on [`BIN_MOUNT`].
//! - Commands: run as root through the guest's qemu-guest-agent
//!   (`guest-exec`, output captured), over a virtio-serial channel.
//!
//! Dropping the [`DebianVm`] kills QEMU and removes its overlay and sockets.

use crate::debian::{base64_decode, debian_guest};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where the guest sees the host's binaries after [`DebianVm::mount_bins`].
pub const BIN_MOUNT: &str = "/mnt/tern-bin";
/// The 9p mount tag of the binaries' share.
const BIN_TAG: &str = "ternbin";
/// The guest's address of the loopback of QEMU's network namespace.
pub const HOST_LOOPBACK: &str = "10.0.2.2";

/// A running Debian guest; see the module documentation.
#[derive(Debug)]
pub struct DebianVm {
    child: Option<Child>,
    dir: tempfile::TempDir,
    disks: usize,
}

/// How to boot a [`DebianVm`] beyond the defaults.
#[derive(Debug, Clone, Default)]
pub struct VmOptions {
    /// The network namespace QEMU runs in (`None`: the test's own).
    pub netns: Option<String>,
    /// Extra blank virtio disks of these sizes in MiB (sparse raw files in
    /// the VM's temporary directory), seen in the guest as
    /// [`DebianVm::extra_disk`] `0, 1, ...` (`/dev/vdb`, `/dev/vdc`, ...).
    pub disks_mib: Vec<u64>,
    /// Extra read-only 9p shares, (mount tag, host directory); mounted in
    /// the guest with [`DebianVm::mount_share`].
    pub shares: Vec<(String, std::path::PathBuf)>,
}

/// What a command run in the guest did.
#[derive(Debug, Clone)]
pub struct GuestOutput {
    /// Exit status (`-1` when killed by a signal).
    pub code: i64,
    /// Its standard output.
    pub stdout: String,
    /// Its standard error.
    pub stderr: String,
}

impl DebianVm {
    /// Boots the guest in network namespace `netns` (or the test's own)
    /// and waits until systemd says it finished booting (TCG: minutes on
    /// a busy machine). Panics with the console's tail if it does not.
    pub fn boot(netns: Option<&str>) -> DebianVm {
        Self::boot_with(&VmOptions {
            netns: netns.map(str::to_string),
            ..Default::default()
        })
    }

    /// [`DebianVm::boot`] with extra disks and shares.
    pub fn boot_with(opts: &VmOptions) -> DebianVm {
        let netns = opts.netns.as_deref();
        let g = debian_guest();
        let dir = tempfile::Builder::new()
            .prefix("tern-debvm-")
            .tempdir()
            .expect("temp dir");
        let top = dir.path().join("root.qcow2");
        let made = Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
            .arg(&g.root)
            .arg(&top)
            .status()
            .expect("qemu-img");
        assert!(made.success(), "qemu-img create {}", top.display());
        let mut cmd = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "qemu-system-x86_64"]);
                c
            }
            None => Command::new("qemu-system-x86_64"),
        };
        let p = |x: &Path| x.display().to_string();
        cmd.args([
            "-accel", "tcg", "-machine", "q35", "-m", "1024", "-smp", "1",
        ])
        .args(["-nodefaults", "-no-user-config", "-display", "none"])
        .args(["-kernel", &p(&g.kernel), "-initrd", &p(&g.initrd)])
        .args(["-append", "root=/dev/vda rw console=ttyS0"])
        .args([
            "-drive",
            &format!("file={},if=virtio,format=qcow2", p(&top)),
        ])
        .args([
            "-netdev",
            "user,id=n0",
            "-device",
            "virtio-net-pci,netdev=n0",
        ])
        .args(["-device", "virtio-rng-pci"])
        .args([
            "-virtfs",
            &format!(
                "local,path={},mount_tag={BIN_TAG},security_model=none,readonly=on",
                p(&crate::host::bin_dir())
            ),
        ])
        .args([
            "-chardev",
            &format!(
                "socket,id=qga0,path={},server=on,wait=off",
                p(&dir.path().join("qga.sock"))
            ),
            "-device",
            "virtio-serial-pci",
            "-device",
            "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0",
        ])
        .args([
            "-serial",
            &format!("file:{}", p(&dir.path().join("console.log"))),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("qemu.stderr")).expect("stderr file"));
        for (i, mib) in opts.disks_mib.iter().enumerate() {
            let file = dir.path().join(format!("disk{i}.raw"));
            std::fs::File::create(&file)
                .and_then(|f| f.set_len(mib << 20))
                .expect("extra disk file");
            // Writeback caching: the file is scratch, gone with the VM.
            cmd.args([
                "-drive",
                &format!("file={},if=virtio,format=raw,cache=unsafe", p(&file)),
            ]);
        }
        for (tag, path) in &opts.shares {
            cmd.args([
                "-virtfs",
                &format!(
                    "local,path={},mount_tag={tag},security_model=none,readonly=on",
                    p(path)
                ),
            ]);
        }
        let child = cmd.spawn().expect("spawn qemu-system-x86_64");
        let mut vm = DebianVm {
            child: Some(child),
            dir,
            disks: opts.disks_mib.len(),
        };
        vm.wait_ready(Duration::from_secs(900));
        vm
    }

    /// What the guest printed on its serial console so far.
    pub fn console(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("console.log")).unwrap_or_default()
    }

    fn wait_ready(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let text = self.console();
            if text.contains("TERN-READY") {
                return;
            }
            let ended = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if ended.is_some() || Instant::now() > deadline {
                panic!(
                    "the Debian guest did not finish booting ({}):\n{}\nQEMU: {}",
                    ended.map_or("still booting".into(), |s| s.to_string()),
                    crate::tail(&text, 40),
                    std::fs::read_to_string(self.dir.path().join("qemu.stderr"))
                        .unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// One guest-agent exchange: sync (discarding anything stale in the
    /// channel), then `request`; returns the answer's `return`.
    fn agent(&self, request: &Value) -> Value {
        let sock = self.dir.path().join("qga.sock");
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            match agent_exchange(&sock, request) {
                Ok(v) => {
                    if let Some(e) = v.get("error") {
                        panic!("guest agent refused {request}: {e}");
                    }
                    return v["return"].clone();
                }
                Err(e) if Instant::now() > deadline => {
                    panic!("guest agent: {e} (request {request})")
                }
                Err(_) => std::thread::sleep(Duration::from_millis(500)),
            }
        }
    }

    /// Runs `/bin/sh -c script` in the guest as root and waits for it.
    pub fn sh(&self, script: &str) -> GuestOutput {
        let started = self.agent(&json!({
            "execute": "guest-exec",
            "arguments": {"path": "/bin/sh", "arg": ["-c", script], "capture-output": true}
        }));
        let pid = started["pid"].as_i64().expect("guest-exec pid");
        let status = json!({"execute": "guest-exec-status", "arguments": {"pid": pid}});
        loop {
            let st = self.agent(&status);
            if st["exited"] == true {
                let text = |k: &str| {
                    let raw = base64_decode(st[k].as_str().unwrap_or_default()).unwrap_or_default();
                    String::from_utf8_lossy(&raw).into_owned()
                };
                return GuestOutput {
                    code: st["exitcode"].as_i64().unwrap_or(-1),
                    stdout: text("out-data"),
                    stderr: text("err-data"),
                };
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// [`DebianVm::sh`], panicking with its stderr unless it exits 0;
    /// returns stdout.
    pub fn sh_ok(&self, script: &str) -> String {
        let o = self.sh(script);
        assert!(
            o.code == 0,
            "in the guest, `{script}` exited {}: {}{}",
            o.code,
            o.stdout,
            o.stderr
        );
        o.stdout
    }

    /// Writes `text` to `path` in the guest (through the agent's
    /// `guest-file-*` calls, so any content goes).
    pub fn write_file(&self, path: &str, text: &str) {
        let h = self.agent(&json!({
            "execute": "guest-file-open",
            "arguments": {"path": path, "mode": "w"}
        }));
        let handle = h.as_i64().expect("guest-file-open handle");
        self.agent(&json!({
            "execute": "guest-file-write",
            "arguments": {"handle": handle, "buf-b64": base64_encode(text.as_bytes())}
        }));
        self.agent(&json!({"execute": "guest-file-close", "arguments": {"handle": handle}}));
    }

    /// Mounts the share of the host's binaries on [`BIN_MOUNT`] (once;
    /// later calls find it mounted).
    pub fn mount_bins(&self) {
        self.mount_share(BIN_TAG, BIN_MOUNT);
    }

    /// Mounts 9p share `tag` (see [`VmOptions::shares`]) read-only on `at`,
    /// unless something is mounted there already.
    pub fn mount_share(&self, tag: &str, at: &str) {
        self.sh_ok(&format!(
            "mkdir -p {at} && {{ mountpoint -q {at} || mount -t 9p -o trans=virtio,version=9p2000.L,ro {tag} {at}; }}"
        ));
    }

    /// The guest's device of extra disk `i` ([`VmOptions::disks_mib`]).
    pub fn extra_disk(&self, i: usize) -> String {
        assert!(i < self.disks, "the VM has {} extra disks", self.disks);
        // vda is the root; the extra disks follow in order.
        format!("/dev/vd{}", (b'b' + i as u8) as char)
    }
}

/// Connects, syncs with `guest-sync-delimited` and sends `request`.
fn agent_exchange(sock: &Path, request: &Value) -> std::io::Result<Value> {
    let stream = UnixStream::connect(sock)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut w = stream.try_clone()?;
    let mut r = BufReader::new(stream);
    let id = u64::from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(7),
    ) | 1;
    let sync = json!({"execute": "guest-sync-delimited", "arguments": {"id": id}});
    writeln!(w, "{sync}")?;
    loop {
        let mut junk = Vec::new();
        r.read_until(0xff, &mut junk)?;
        if junk.last() != Some(&0xff) {
            return Err(std::io::Error::other("the channel closed during sync"));
        }
        if read_json(&mut r)?["return"].as_u64() == Some(id) {
            break;
        }
    }
    writeln!(w, "{request}")?;
    read_json(&mut r)
}

fn read_json(r: &mut impl BufRead) -> std::io::Result<Value> {
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Err(std::io::Error::other("the channel closed"));
        }
        if !line.trim().is_empty() {
            return serde_json::from_str(line.trim()).map_err(std::io::Error::other);
        }
    }
}

impl Drop for DebianVm {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A `ternd` running inside a [`DebianVm`] as a systemd unit, with the
/// binaries from the share, and the `tern` CLI pointed at it. Several can
/// run side by side ([`GuestAgent::start_as`]), each its own unit, state
/// directory and socket.
pub struct GuestAgent<'a> {
    vm: &'a DebianVm,
    unit: String,
    socket: String,
}

impl<'a> GuestAgent<'a> {
    /// Mounts the binaries and starts `ternd` (unit `ternd`, state in
    /// /var/lib/ternd, socket /run/ternd.sock, TCG); waits for its socket.
    pub fn start(vm: &'a DebianVm) -> GuestAgent<'a> {
        Self::start_as(vm, "ternd", None)
    }

    /// Starts a `ternd` as unit `unit`, with state in /var/lib/UNIT, its
    /// API on /run/UNIT.sock and, when given, `config` (TOML) as its
    /// `--config` file; waits for its socket.
    pub fn start_as(vm: &'a DebianVm, unit: &str, config: Option<&str>) -> GuestAgent<'a> {
        vm.mount_bins();
        // What scripts/install-deps.sh does on a host: the QEMU user.
        vm.sh_ok("id tern-qemu >/dev/null 2>&1 || useradd --system --user-group tern-qemu");
        let socket = format!("/run/{unit}.sock");
        let config_arg = match config {
            Some(text) => {
                let file = format!("/etc/{unit}.toml");
                vm.write_file(&file, text);
                format!("--config {file}")
            }
            None => String::new(),
        };
        vm.sh_ok(&format!(
            "systemd-run --unit={unit} --setenv=TERND_LOG=info,tern_agent=debug \
             {BIN_MOUNT}/ternd --state-dir /var/lib/{unit} --socket {socket} --accel tcg {config_arg} \
             || exit 1; i=0; while [ ! -S {socket} ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done; \
             test -S {socket} || {{ journalctl -u {unit} --no-pager | tail -30 >&2; exit 1; }}"
        ));
        let agent = GuestAgent {
            vm,
            unit: unit.into(),
            socket,
        };
        agent.ok(&["pool-list", "--all"]);
        agent
    }

    /// The URI `tern` (and a migration's source agent) reaches this agent
    /// at, inside the guest.
    pub fn uri(&self) -> String {
        format!("tern+unix:///system?socket={}", self.socket)
    }

    /// Restarts `ternd` (as a host reboot or an upgrade would) and waits
    /// until it answers again.
    pub fn restart(&self) {
        self.vm.sh_ok(&format!("systemctl restart {}", self.unit));
        for _ in 0..300 {
            if self.tern(&["pool-list", "--all"]).code == 0 {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        self.ok(&["pool-list", "--all"]);
    }

    /// Runs `tern ARGS...` in the guest against this agent.
    pub fn tern(&self, args: &[&str]) -> GuestOutput {
        let quoted: Vec<String> = args.iter().map(|a| shell_quote(a)).collect();
        self.vm.sh(&format!(
            "{BIN_MOUNT}/tern -c {} {}",
            shell_quote(&self.uri()),
            quoted.join(" ")
        ))
    }

    /// [`GuestAgent::tern`], panicking with stderr on failure; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.tern(args);
        if o.code != 0 {
            panic!(
                "tern {} in the guest failed ({}): {}\nternd's journal:\n{}",
                args.join(" "),
                o.code,
                o.stderr,
                crate::tail(&self.log(), 30)
            );
        }
        o.stdout
    }

    /// Polls `tern console DOMAIN` in the guest until `pred` holds; panics
    /// with the console's tail after `timeout` (nested TCG is slow).
    pub fn wait_console(
        &self,
        domain: &str,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let text = self.tern(&["console", domain]).stdout;
            if pred(&text) {
                return text;
            }
            if Instant::now() > deadline {
                panic!(
                    "timed out after {timeout:?} waiting for {what} on {domain}'s console in the guest:\n{}",
                    crate::tail(&text, 20)
                );
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    }

    /// The agent's log so far (its journal).
    pub fn log(&self) -> String {
        self.vm
            .sh(&format!("journalctl -u {} --no-pager", self.unit))
            .stdout
    }
}

impl Drop for GuestAgent<'_> {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = self.vm.sh(&format!("systemctl stop {}", self.unit));
        }
    }
}

/// Standard base64 with padding (what `guest-file-write` takes).
fn base64_encode(data: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// `'text'` for /bin/sh.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips() {
        for s in ["", "a", "ab", "abc", "<domain>\n</domain>\n"] {
            let enc = base64_encode(s.as_bytes());
            assert_eq!(base64_decode(&enc).unwrap(), s.as_bytes(), "{enc}");
        }
        assert_eq!(base64_encode(b"ab"), "YWI=");
    }

    #[test]
    fn shell_quote_survives_quotes() {
        assert_eq!(shell_quote("a'b"), "'a'\\''b'");
        assert_eq!(shell_quote("x y"), "'x y'");
    }
}
