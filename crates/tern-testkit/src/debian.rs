//! The Debian test guest that `scripts/debian-guest.sh` builds: Debian's
//! systemd, udev and qemu-guest-agent on an ext4 root, booted with
//! Debian's kernel and initrd, reporting `TERN-READY` and `TERN-HB` lines
//! on its serial console; and the domain XML virt-install writes for it.

use crate::guest::workspace_root;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The built guest: its root image and boot files.
#[derive(Debug, Clone)]
pub struct DebianGuest {
    /// The cache directory (one build per version of the script).
    pub dir: PathBuf,
    /// The root filesystem, a raw ext4 image (use it as a backing file).
    pub root: PathBuf,
    /// Debian's kernel.
    pub kernel: PathBuf,
    /// Debian's initrd.
    pub initrd: PathBuf,
}

/// Builds the guest once (debootstrap: minutes; the script says so) or
/// reuses the cached build. Panics with the script's output on failure.
pub fn debian_guest() -> DebianGuest {
    static BUILT: OnceLock<DebianGuest> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let dir = run_cache_script("scripts/debian-guest.sh");
            DebianGuest {
                root: dir.join("root.raw"),
                kernel: dir.join("vmlinuz"),
                initrd: dir.join("initrd.img"),
                dir,
            }
        })
        .clone()
}

/// The guest on a disk that boots through GRUB (scripts/debian-grub-disk.sh,
/// cached): GPT, GRUB for SeaBIOS and for OVMF, the same root filesystem
/// as partition 3. Returns the raw disk (use it as a backing file).
pub fn debian_grub_disk() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| run_cache_script("scripts/debian-grub-disk.sh").join("disk.raw"))
        .clone()
}

/// Runs `path args...` in the guest through its agent (`guest-exec`) and
/// returns what it printed: the guest's own account, not the host's.
pub fn agent_exec(host: &crate::TernHost, name: &str, path: &str, args: &[&str]) -> String {
    let request = serde_json::json!({
        "execute": "guest-exec",
        "arguments": {"path": path, "arg": args, "capture-output": true},
    });
    let started: serde_json::Value =
        serde_json::from_str(&host.ok(&["qemu-agent-command", name, &request.to_string()]))
            .expect("guest-exec reply");
    let pid = started["return"]["pid"].as_u64().expect("guest-exec pid");
    let status = format!(r#"{{"execute":"guest-exec-status","arguments":{{"pid":{pid}}}}}"#);
    for _ in 0..300 {
        let st: serde_json::Value =
            serde_json::from_str(&host.ok(&["qemu-agent-command", name, &status]))
                .expect("guest-exec-status reply");
        if st["return"]["exited"] == true {
            let out = base64_decode(st["return"]["out-data"].as_str().unwrap_or_default())
                .expect("base64 output");
            return String::from_utf8_lossy(&out).to_string();
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    panic!("guest-exec of {path} never exited");
}

/// The domain XML `virt-install --print-xml` writes for
/// `virt-install --name NAME --osinfo debian12 --memory 1024 --vcpus 1
/// --boot uefi,kernel=K,initrd=I,kernel_args="root=/dev/vda rw
/// console=ttyS0" --disk path=DISK,format=qcow2,bus=virtio,discard=unmap
/// --network user,model=virtio --graphics none --channel
/// unix,target.type=virtio,name=org.qemu.guest_agent.0 --tpm default`,
/// double quotes and all.
pub fn virt_install_xml(name: &str, disk: &Path, g: &DebianGuest) -> String {
    let root_ports = "    <controller type=\"pci\" model=\"pcie-root-port\"/>\n".repeat(14);
    format!(
        r#"<domain type="kvm">
  <name>{name}</name>
  <uuid>5b2d7c1e-3f4a-4b6c-9d8e-0f1a2b3c4d16</uuid>
  <metadata>
    <libosinfo:libosinfo xmlns:libosinfo="http://libosinfo.org/xmlns/libvirt/domain/1.0">
      <libosinfo:os id="http://debian.org/debian/12"/>
    </libosinfo:libosinfo>
  </metadata>
  <memory>1048576</memory>
  <currentMemory>1048576</currentMemory>
  <vcpu>1</vcpu>
  <os firmware="efi">
    <type arch="x86_64" machine="q35">hvm</type>
    <firmware>
      <feature enabled="no" name="enrolled-keys"/>
      <feature enabled="no" name="secure-boot"/>
    </firmware>
    <kernel>{kernel}</kernel>
    <initrd>{initrd}</initrd>
    <cmdline>root=/dev/vda rw console=ttyS0</cmdline>
  </os>
  <features>
    <acpi/>
    <apic/>
    <vmport state="off"/>
  </features>
  <cpu mode="host-passthrough"/>
  <clock offset="utc">
    <timer name="rtc" tickpolicy="catchup"/>
    <timer name="pit" tickpolicy="delay"/>
    <timer name="hpet" present="no"/>
  </clock>
  <pm>
    <suspend-to-mem enabled="no"/>
    <suspend-to-disk enabled="no"/>
  </pm>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type="file" device="disk">
      <driver name="qemu" type="qcow2" discard="unmap"/>
      <source file="{disk}"/>
      <target dev="vda" bus="virtio"/>
    </disk>
    <controller type="usb" model="qemu-xhci" ports="15"/>
    <controller type="pci" model="pcie-root"/>
{root_ports}    <interface type="user">
      <mac address="52:54:00:4e:16:01"/>
      <model type="virtio"/>
    </interface>
    <console type="pty"/>
    <channel type="unix">
      <source mode="bind"/>
      <target type="virtio" name="org.qemu.guest_agent.0"/>
    </channel>
    <tpm model="tpm-crb">
      <backend type="emulator"/>
    </tpm>
    <memballoon model="virtio"/>
    <rng model="virtio">
      <backend model="random">/dev/urandom</backend>
    </rng>
  </devices>
</domain>
"#,
        kernel = g.kernel.display(),
        initrd = g.initrd.display(),
        disk = disk.display(),
    )
}

/// Decodes standard base64 (what qemu-guest-agent's `guest-exec-status`
/// returns as `out-data`); `None` on a character outside the alphabet.
pub fn base64_decode(s: &str) -> Option<Vec<u8>> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes().filter(|c| !c.is_ascii_whitespace() && *c != b'=') {
        let v = ALPHABET.iter().position(|a| *a == c)? as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

/// Runs one of the caching build scripts and returns the path its last
/// line prints (relative to the workspace). Panics with its output on
/// failure.
fn run_cache_script(script: &str) -> PathBuf {
    let script = workspace_root().join(script);
    let out = std::process::Command::new(&script)
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", script.display()));
    assert!(
        out.status.success(),
        "{} failed:\n{}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    workspace_root().join(stdout.lines().last().unwrap_or_default().trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_decodes_with_and_without_padding() {
        assert_eq!(base64_decode("MTIuMzQgNS42Nwo=").unwrap(), b"12.34 5.67\n");
        assert_eq!(base64_decode("YWI").unwrap(), b"ab");
        assert_eq!(base64_decode("a!"), None);
    }
}
