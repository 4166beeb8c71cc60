//! Parsing of the `tern.*` parameters on the kernel command line.
//!
//! Pure code: [`parse`] never fails. A bad value is reported as a warning
//! (printed by the caller as `TERN-FAIL param ...`) and the default is used.

use std::net::Ipv4Addr;

/// Everything the workload can be told through `/proc/cmdline`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Params {
    /// `tern.hb_ms`: heartbeat period in milliseconds.
    pub hb_ms: u64,
    /// `tern.mem`: MiB of self-checking anonymous memory (0 = none).
    pub mem_mib: u64,
    /// `tern.dirty`: MiB/s of page rewrites (0 = idle).
    pub dirty_mibps: u64,
    /// `tern.verify_rate`: MiB/s the memory verifier may read (0 = as fast as it can).
    pub verify_mibps: u64,
    /// `tern.disk`: block device holding the checksummed region (none = no disk workload).
    pub disk: Option<String>,
    /// `tern.disk_mb`: size of the region at the start of the device, in MiB.
    pub disk_mb: u64,
    /// `tern.disk_rate`: KiB/s of random block rewrites.
    pub disk_rate_kibps: u64,
    /// `tern.disk_verify_rate`: KiB/s of read-back verification.
    pub disk_verify_kibps: u64,
    /// `tern.disk_hotplug`: the disk arrives later (`attach-device`): wait
    /// for it without holding up `TERN-READY`.
    pub disk_hotplug: bool,
    /// `tern.ip`: IPv4 address with prefix length, e.g. `10.0.0.2/24` (none = no network).
    pub ip: Option<(Ipv4Addr, u8)>,
    /// `tern.gw`: default gateway (used by the init script only).
    pub gw: Option<Ipv4Addr>,
    /// `tern.port`: TCP port of the echo server.
    pub port: u16,
    /// `tern.ignore_acpi`: ignore the ACPI power button.
    pub ignore_acpi: bool,
    /// `tern.efivar`: a value to keep in a UEFI variable (see `efivar`).
    pub efivar: Option<String>,
    /// `tern.qga`: answer on the guest-agent port (see `qga`).
    pub qga: bool,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            hb_ms: 50,
            mem_mib: 0,
            dirty_mibps: 0,
            verify_mibps: 0,
            disk: None,
            disk_mb: 16,
            disk_rate_kibps: 256,
            disk_verify_kibps: 1024,
            disk_hotplug: false,
            ip: None,
            gw: None,
            port: 7777,
            ignore_acpi: false,
            efivar: None,
            qga: true,
        }
    }
}

/// Parse an unsigned integer parameter within `min..=max`.
fn number(key: &str, value: &str, min: u64, max: u64) -> Result<u64, String> {
    match value.parse::<u64>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        Ok(n) => Err(format!(
            "{key}={n} is out of range {min}..={max}, using the default"
        )),
        Err(_) => Err(format!(
            "{key}={value:?} is not a whole number, using the default"
        )),
    }
}

fn flag(key: &str, value: &str) -> Result<bool, String> {
    match value {
        "1" | "yes" | "true" | "on" | "" => Ok(true),
        "0" | "no" | "false" | "off" => Ok(false),
        _ => Err(format!("{key}={value:?} is not 0 or 1, using the default")),
    }
}

fn ipv4_with_prefix(key: &str, value: &str) -> Result<(Ipv4Addr, u8), String> {
    let err = || format!("{key}={value:?} is not like 10.0.0.2/24, ignoring it");
    let (addr, prefix) = value.split_once('/').unwrap_or((value, "24"));
    let addr: Ipv4Addr = addr.parse().map_err(|_| err())?;
    let prefix: u8 = prefix.parse().map_err(|_| err())?;
    if prefix > 32 {
        return Err(err());
    }
    Ok((addr, prefix))
}

/// Parse the kernel command line. Returns the parameters and one warning per
/// bad or unknown `tern.*` word (to be printed after `TERN-FAIL param `).
pub fn parse(cmdline: &str) -> (Params, Vec<String>) {
    let mut p = Params::default();
    let mut warnings = Vec::new();
    for word in cmdline.split_ascii_whitespace() {
        let Some(rest) = word.strip_prefix("tern.") else {
            continue;
        };
        let (name, value) = rest.split_once('=').unwrap_or((rest, ""));
        let key = format!("tern.{name}");
        let result: Result<(), String> = match name {
            "hb_ms" => number(&key, value, 1, 60_000).map(|n| p.hb_ms = n),
            "mem" => number(&key, value, 0, 1 << 20).map(|n| p.mem_mib = n),
            "dirty" => number(&key, value, 0, 1 << 20).map(|n| p.dirty_mibps = n),
            "verify_rate" => number(&key, value, 0, 1 << 20).map(|n| p.verify_mibps = n),
            "disk" => {
                if value.starts_with("/dev/") && value.len() > 5 {
                    p.disk = Some(value.to_string());
                    Ok(())
                } else {
                    Err(format!("{key}={value:?} is not a /dev/ path, ignoring it"))
                }
            }
            "disk_mb" => number(&key, value, 1, 1 << 20).map(|n| p.disk_mb = n),
            "disk_rate" => number(&key, value, 0, 1 << 30).map(|n| p.disk_rate_kibps = n),
            "disk_verify_rate" => number(&key, value, 0, 1 << 30).map(|n| p.disk_verify_kibps = n),
            "disk_hotplug" => flag(&key, value).map(|b| p.disk_hotplug = b),
            "ip" => ipv4_with_prefix(&key, value).map(|ip| p.ip = Some(ip)),
            "gw" => value
                .parse::<Ipv4Addr>()
                .map(|gw| p.gw = Some(gw))
                .map_err(|_| format!("{key}={value:?} is not an IPv4 address, ignoring it")),
            "port" => number(&key, value, 1, 65_535).map(|n| p.port = n as u16),
            "ignore_acpi" => flag(&key, value).map(|b| p.ignore_acpi = b),
            "qga" => flag(&key, value).map(|b| p.qga = b),
            "efivar" => {
                if !value.is_empty()
                    && value
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                {
                    p.efivar = Some(value.to_string());
                    Ok(())
                } else {
                    Err(format!(
                        "{key}={value:?} is not letters, digits and '-', ignoring it"
                    ))
                }
            }
            // Read by the guest's /init, which drives the watchdog.
            "watchdog_stall" => number(&key, value, 1, 3600).map(|_| ()),
            // Read by the guest's /init, which configures a NIC plugged in later.
            "net_hotplug" => flag(&key, value).map(|_| ()),
            _ => Err(format!("unknown parameter {key}, ignoring it")),
        };
        if let Err(w) = result {
            warnings.push(w);
        }
    }
    (p, warnings)
}

impl Params {
    /// One-line summary printed in the `TERN-START` line.
    pub fn summary(&self) -> String {
        let ip = self
            .ip
            .map(|(a, n)| format!("{a}/{n}"))
            .unwrap_or_else(|| "none".into());
        format!(
            "hb_ms={} mem={} dirty={} verify_rate={} disk={} disk_mb={} disk_rate={} \
             disk_verify_rate={} ip={} port={} ignore_acpi={}",
            self.hb_ms,
            self.mem_mib,
            self.dirty_mibps,
            self.verify_mibps,
            self.disk.as_deref().unwrap_or("none"),
            self.disk_mb,
            self.disk_rate_kibps,
            self.disk_verify_kibps,
            ip,
            self.port,
            u8::from(self.ignore_acpi),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_when_nothing_given() {
        let (p, w) = parse("console=ttyS0 quiet panic=-1");
        assert_eq!(p, Params::default());
        assert!(w.is_empty());
        assert_eq!(p.hb_ms, 50);
        assert_eq!(p.disk_mb, 16);
        assert_eq!(p.disk_rate_kibps, 256);
        assert_eq!(p.port, 7777);
    }

    #[test]
    fn all_parameters() {
        let (p, w) = parse(
            "console=ttyS0 tern.hb_ms=20 tern.mem=64 tern.dirty=20 tern.verify_rate=100 \
             tern.disk=/dev/vda tern.disk_mb=8 tern.disk_rate=512 tern.disk_verify_rate=2048 \
             tern.ip=10.0.0.2/24 tern.gw=10.0.0.1 tern.port=9000 tern.ignore_acpi=1\n",
        );
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(
            p,
            Params {
                hb_ms: 20,
                mem_mib: 64,
                dirty_mibps: 20,
                verify_mibps: 100,
                disk: Some("/dev/vda".into()),
                disk_mb: 8,
                disk_rate_kibps: 512,
                disk_verify_kibps: 2048,
                disk_hotplug: false,
                ip: Some((Ipv4Addr::new(10, 0, 0, 2), 24)),
                gw: Some(Ipv4Addr::new(10, 0, 0, 1)),
                port: 9000,
                ignore_acpi: true,
                efivar: None,
                qga: true,
            }
        );
    }

    #[test]
    fn bad_values_warn_and_keep_defaults() {
        let (p, w) = parse(
            "tern.hb_ms=0 tern.mem=lots tern.disk=vda tern.ip=10.0.0.300/24 \
             tern.port=70000 tern.ignore_acpi=maybe tern.bogus=1 tern.disk_mb=-1",
        );
        assert_eq!(p, Params::default());
        assert_eq!(w.len(), 8, "{w:?}");
        assert!(w.iter().any(|m| m.contains("unknown parameter tern.bogus")));
        assert!(w.iter().any(|m| m.contains("tern.hb_ms=0 is out of range")));
    }

    #[test]
    fn last_value_wins_and_prefix_defaults_to_24() {
        let (p, w) = parse("tern.mem=1 tern.mem=2 tern.ip=192.168.1.5 tern.ignore_acpi");
        assert!(w.is_empty());
        assert_eq!(p.mem_mib, 2);
        assert_eq!(p.ip, Some((Ipv4Addr::new(192, 168, 1, 5), 24)));
        assert!(p.ignore_acpi);
        assert!(p.summary().contains("ip=192.168.1.5/24"));
    }
}
