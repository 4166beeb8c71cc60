//! Test support for Tern.
//!
//! - [`build_or_reuse`] builds the project's test guest: the host's Debian
//!   kernel (as an uncompressed `vmlinux`, booted through PVH) and a busybox
//!   initramfs whose `/init` runs `tern-workload`. See `README-guest.md` for
//!   the guest's command-line parameters and console lines.
//! - [`SerialLog`] parses what the guest printed on its serial console.
//!
//! ```no_run
//! let image = tern_testkit::build_or_reuse(&tern_testkit::BuildOptions::default())?;
//! let cmdline = tern_testkit::default_cmdline("tern.mem=64 tern.dirty=20");
//! // qemu-system-x86_64 -accel tcg -m 256 -kernel {image.kernel} -initrd {image.initrd} -append {cmdline} ...
//! # Ok::<(), tern_testkit::BuildError>(())
//! ```

pub mod bootsector;
pub mod browser;
pub mod capture;
pub mod ceph;
pub mod checks;
pub mod cluster;
pub mod controller;
pub mod corpus;
mod cpio;
pub mod creds;
pub mod debian;
pub mod debian_vm;
mod domxml;
mod elf;
mod error;
pub mod etcd;
pub mod events;
pub mod fencing;
pub mod fencing_nfs;
pub mod fixtures;
pub mod flood;
mod guest;
pub mod host;
pub mod hugepages;
mod initramfs;
mod kernel;
pub mod lvm;
pub mod netns;
pub mod nfs;
pub mod pair;
pub mod ping;
pub mod pkgroot;
pub mod pki;
pub mod rbd;
pub mod scrape;
mod serial;
pub mod sshd;
pub mod stall;
pub mod vm_lvm;
mod vmlinux;
pub mod watch;

pub use browser::ChromeDriver;
pub use ceph::CephCluster;
pub use controller::{console_passwd, TestController};
pub use cpio::CpioWriter;
pub use domxml::{GuestSpec, TestDisk};
pub use error::BuildError;
pub use etcd::{Etcd, EtcdCluster};
pub use guest::{
    build_or_reuse, build_workload, default_cmdline, workspace_root, BuildOptions, GuestImage,
    GUEST_TARGET,
};
pub use host::{bin, free_port, tail, tern_at, HostOptions, TernHost};
pub use kernel::GUEST_MODULES;
pub use netns::{Lab, Side};
pub use nfs::NfsServer;
pub use pair::{FaultPoint, HostPair, Which};
pub use serial::{field, parse_heartbeat, Heartbeat, SerialLog};
pub use vmlinux::extract as extract_vmlinux;
pub use watch::{ConsoleWatcher, WatchReport};
