//! Every string of a definition that ends up inside a QEMU option is either
//! one of the values below or escaped by the command-line builder.
//!
//! The XML import already refuses most odd values, but a definition also
//! arrives as JSON from a peer during migration, and only [`validate`]
//! stands between that JSON and the command line. A NIC model such as
//! `virtio-net-pci,romfile=/etc/shadow` would otherwise add an option that
//! reads a host file into the guest.
//!
//! [`validate`]: super::validate

use super::{one_of, Result, ValidationError};
use crate::domain::Domain;
use crate::xml::guest_devices::WATCHDOG_ACTIONS;
use crate::xml::platform::{HYPERV_FEATURES, SYSINFO_BIOS, SYSINFO_SYSTEM};
use std::net::IpAddr;

/// libvirt NIC models Tern maps to QEMU devices.
pub const NIC_MODELS: &[&str] = &[
    "virtio",
    "virtio-net-pci",
    "e1000",
    "e1000e",
    "rtl8139",
    "ne2k_pci",
    "pcnet",
    "vmxnet3",
    "igb",
];

/// libvirt video models Tern maps to QEMU devices.
pub const VIDEO_MODELS: &[&str] = &["none", "cirrus", "vga", "virtio", "qxl", "bochs", "ramfb"];

/// Host audio back ends; the others write files or reach host services.
pub const AUDIO_KINDS: &[&str] = &["none", "spice"];

/// Longest CPU model, CPU feature or machine type name.
const MAX_TOKEN: usize = 64;

/// Whether `s` is a plain QEMU identifier (CPU models like
/// `Skylake-Server-v4`, features like `sse4.2`, machines like
/// `pc-q35-10.0`): no `,` `=` or spaces that would start another option.
pub fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_TOKEN
        && s.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn token(what: &'static str, value: &str, expected: &'static str) -> Result {
    if is_token(value) {
        Ok(())
    } else {
        Err(ValidationError::Unsupported {
            what,
            value: value.to_string(),
            expected,
        })
    }
}

/// A graphics listen address must be an IP address (QEMU's `-vnc` and
/// `-spice addr=` parse anything else as more options).
fn listen_ip(value: &str) -> Result {
    if value.is_empty() || value.parse::<IpAddr>().is_ok() {
        Ok(())
    } else {
        Err(ValidationError::Unsupported {
            what: "graphics listen address",
            value: value.to_string(),
            expected: "use an IP address such as 127.0.0.1 or ::1 (host names are not accepted)",
        })
    }
}

/// The checks; see the module documentation.
pub(super) fn validate_qemu_values(d: &Domain) -> Result {
    if let Some(m) = &d.os.machine {
        token(
            "machine type",
            m,
            "use a machine type from 'qemu-system-x86_64 -machine help', such as q35 or pc",
        )?;
    }
    validate_cpu(d)?;
    for t in &d.clock_timers {
        one_of(
            "timer",
            &t.name,
            &[
                "rtc",
                "pit",
                "hpet",
                "kvmclock",
                "hypervclock",
                "tsc",
                "platform",
            ],
            "use rtc, pit, hpet, kvmclock, hypervclock or tsc",
        )?;
        if let Some(p) = &t.tickpolicy {
            one_of(
                "timer tickpolicy",
                p,
                &["delay", "catchup", "merge", "discard"],
                "use delay, catchup, merge or discard",
            )?;
        }
    }
    for i in &d.devices.interfaces {
        if let Some(m) = &i.model {
            one_of(
                "NIC model",
                m,
                NIC_MODELS,
                "use virtio, e1000, e1000e, rtl8139, ne2k_pci, pcnet, vmxnet3 or igb",
            )?;
        }
    }
    for v in &d.devices.videos {
        one_of(
            "video model",
            &v.model,
            VIDEO_MODELS,
            "use virtio, vga, qxl, cirrus, bochs, ramfb or none",
        )?;
    }
    for g in &d.devices.graphics {
        if let Some(l) = &g.listen {
            listen_ip(l)?;
        }
        if let Some(c) = g
            .spice
            .as_ref()
            .and_then(|s| s.image_compression.as_deref())
        {
            one_of(
                "SPICE image compression",
                c,
                &["auto_glz", "auto_lz", "quic", "glz", "lz", "off"],
                "use auto_glz, auto_lz, quic, glz, lz or off",
            )?;
        }
    }
    validate_disk_options(d)?;
    validate_misc_devices(d)?;
    if let Some(s) = &d.sysinfo {
        for (k, _) in &s.bios {
            one_of(
                "sysinfo bios entry",
                k,
                SYSINFO_BIOS,
                "use vendor, version, date or release",
            )?;
        }
        for (k, _) in &s.system {
            one_of(
                "sysinfo system entry",
                k,
                SYSINFO_SYSTEM,
                "use manufacturer, product, version, serial, uuid, sku or family",
            )?;
        }
    }
    Ok(())
}

fn validate_cpu(d: &Domain) -> Result {
    if let Some(c) = &d.cpu {
        if let Some(m) = &c.model {
            token(
                "CPU model",
                m,
                "use a model from 'qemu-system-x86_64 -cpu help', such as qemu64 or Skylake-Server",
            )?;
        }
        for f in &c.features {
            token(
                "CPU feature",
                &f.name,
                "use a feature name from 'qemu-system-x86_64 -cpu help', such as sse4.2",
            )?;
            one_of(
                "CPU feature policy",
                &f.policy,
                &["force", "require", "optional", "disable", "forbid"],
                "use force, require, optional, disable or forbid",
            )?;
        }
    }
    for h in &d.features.hyperv {
        one_of(
            "Hyper-V feature",
            &h.name,
            HYPERV_FEATURES,
            "use one of the <hyperv> features libvirt documents",
        )?;
    }
    if let Some(m) = &d.features.hyperv_mode {
        one_of(
            "Hyper-V mode",
            m,
            &["custom", "passthrough"],
            "use mode='custom' or 'passthrough'",
        )?;
    }
    Ok(())
}

fn validate_disk_options(d: &Domain) -> Result {
    for disk in &d.devices.disks {
        if let Some(io) = &disk.io {
            one_of(
                "disk io mode",
                io,
                &["native", "threads", "io_uring"],
                "use io='native', 'threads' or 'io_uring'",
            )?;
        }
        if let Some(x) = &disk.discard {
            one_of(
                "disk discard mode",
                x,
                &["unmap", "ignore"],
                "use discard='unmap' or 'ignore'",
            )?;
        }
        if let Some(z) = &disk.detect_zeroes {
            one_of(
                "disk detect_zeroes mode",
                z,
                &["off", "on", "unmap"],
                "use detect_zeroes='off', 'on' or 'unmap'",
            )?;
        }
    }
    Ok(())
}

fn validate_misc_devices(d: &Domain) -> Result {
    let dev = &d.devices;
    for w in &dev.watchdogs {
        one_of(
            "watchdog model",
            &w.model,
            &["i6300esb", "ib700", "itco"],
            "use i6300esb, ib700 or itco",
        )?;
        one_of(
            "watchdog action",
            &w.action,
            WATCHDOG_ACTIONS,
            "use reset, shutdown, poweroff, pause, none or inject-nmi",
        )?;
    }
    for s in &dev.sounds {
        one_of(
            "sound model",
            &s.model,
            &["ich9", "ich6", "ac97"],
            "use ich9, ich6 or ac97",
        )?;
    }
    for a in &dev.audios {
        one_of(
            "audio back end",
            &a.kind,
            AUDIO_KINDS,
            "use <audio type='none'> or 'spice'",
        )?;
    }
    for t in &dev.tpms {
        one_of(
            "TPM model",
            &t.model,
            &["tpm-tis", "tpm-crb"],
            "use tpm-tis or tpm-crb",
        )?;
    }
    for p in &dev.panics {
        one_of(
            "panic model",
            &p.model,
            &["isa", "pvpanic"],
            "use isa or pvpanic",
        )?;
    }
    for r in &dev.rngs {
        let ok = ["/dev/urandom", "/dev/random", "/dev/hwrng"]
            .iter()
            .any(|s| r.source.as_os_str() == *s);
        if !ok {
            return Err(ValidationError::Unsupported {
                what: "rng source",
                value: r.source.display().to_string(),
                expected: "use /dev/urandom, /dev/random or /dev/hwrng",
            });
        }
    }
    if let Some(b) = &dev.memballoon {
        one_of(
            "memballoon model",
            b,
            &["virtio", "none"],
            "use model='virtio' or 'none'",
        )?;
    }
    Ok(())
}
