//! `<cputune>` and `<vcpu cpuset=>`: pinning vCPU and emulator threads to
//! host CPUs, which the agent does with `sched_setaffinity` on QEMU's
//! threads (no cgroups needed). Scheduler shares, bandwidth quotas and
//! cache or memory tuning need libvirt's cgroup and resctrl plumbing and
//! are refused by name.

use super::export::Writer;
use super::import::{elements, invalid, parse_number, Result};
use super::XmlError;
use crate::domain::{CpuTune, VcpuPin};
use roxmltree::Node;

/// Host CPU numbers of a libvirt cpuset (`0-3,^2,5`), sorted, or what is
/// wrong with it.
pub fn parse_cpuset(spec: &str) -> std::result::Result<Vec<u32>, String> {
    let bad = || format!("cpuset '{spec}' is not a list such as '0-3,^2,5'");
    let mut on = std::collections::BTreeSet::new();
    let mut off = Vec::new();
    for part in spec.split(',').map(str::trim) {
        let (neg, part) = match part.strip_prefix('^') {
            Some(p) => (true, p),
            None => (false, part),
        };
        let (lo, hi) = match part.split_once('-') {
            Some((a, b)) => (a.parse::<u32>(), b.parse::<u32>()),
            None => (part.parse::<u32>(), part.parse::<u32>()),
        };
        let (Ok(lo), Ok(hi)) = (lo, hi) else {
            return Err(bad());
        };
        if lo > hi || hi >= 4096 || (neg && lo != hi) {
            return Err(bad());
        }
        if neg {
            off.push(lo);
        } else {
            on.extend(lo..=hi);
        }
    }
    for c in off {
        on.remove(&c);
    }
    if on.is_empty() {
        return Err(format!("cpuset '{spec}' leaves no CPU"));
    }
    Ok(on.into_iter().collect())
}

fn refuse(what: &str, why: &str) -> XmlError {
    XmlError::Unsupported {
        what: format!("<cputune><{what}>{why}"),
        fix: "remove it from <cputune>".to_string(),
    }
}

fn cpuset_attr(node: Node, what: &str) -> Result<String> {
    let raw = node.attribute("cpuset").unwrap_or_default();
    parse_cpuset(raw)
        .map_err(|e| invalid(what, raw, &format!("{e}; write host CPUs such as '0-3,^2'")))?;
    Ok(raw.to_string())
}

/// `<cputune>`: `<vcpupin>` and `<emulatorpin>`.
pub(super) fn parse_cputune(node: Node) -> Result<CpuTune> {
    let mut t = CpuTune::default();
    for child in elements(node) {
        match child.tag_name().name() {
            "vcpupin" => {
                let vcpu: u32 = parse_number(
                    child.attribute("vcpu").unwrap_or_default(),
                    "<vcpupin vcpu=>",
                )?;
                if t.vcpupins.iter().any(|p| p.vcpu == vcpu) {
                    return Err(invalid(
                        "<vcpupin vcpu=>",
                        &vcpu.to_string(),
                        "pin each vCPU once",
                    ));
                }
                let cpuset = cpuset_attr(child, "<vcpupin cpuset=>")?;
                t.vcpupins.push(VcpuPin { vcpu, cpuset });
            }
            "emulatorpin" => t.emulatorpin = Some(cpuset_attr(child, "<emulatorpin cpuset=>")?),
            "iothreadpin" => return Err(refuse("iothreadpin", " (no I/O threads)")),
            name @ ("shares" | "period" | "quota" | "global_period" | "global_quota"
            | "emulator_period" | "emulator_quota" | "iothread_period"
            | "iothread_quota") => {
                return Err(refuse(name, " (CPU bandwidth needs libvirt's cgroups)"))
            }
            name @ ("vcpusched" | "iothreadsched" | "emulatorsched") => {
                return Err(refuse(name, " (real-time scheduling)"))
            }
            name @ ("cachetune" | "memorytune") => {
                return Err(refuse(name, " (resctrl cache and memory bandwidth)"))
            }
            other => return Err(refuse(other, "")),
        }
    }
    Ok(t)
}

/// `<cputune>` back.
pub(super) fn write_cputune(w: &mut Writer, t: &CpuTune) {
    if t.vcpupins.is_empty() && t.emulatorpin.is_none() {
        return;
    }
    w.open("cputune", vec![]);
    for p in &t.vcpupins {
        w.empty(
            "vcpupin",
            vec![("vcpu", p.vcpu.to_string()), ("cpuset", p.cpuset.clone())],
        );
    }
    if let Some(e) = &t.emulatorpin {
        w.empty("emulatorpin", vec![("cpuset", e.clone())]);
    }
    w.close("cputune");
}

#[cfg(test)]
mod tests {
    use super::parse_cpuset;
    use crate::xml::{parse_domain, to_xml};

    fn doc(vcpu: &str, inner: &str) -> String {
        format!(
            "<domain type='kvm'><name>c</name><memory unit='MiB'>256</memory>\
             {vcpu}{inner}<os><type>hvm</type></os></domain>"
        )
    }

    #[test]
    fn cpusets_follow_libvirts_syntax() {
        assert_eq!(parse_cpuset("0-3,^2,5").unwrap(), vec![0, 1, 3, 5]);
        assert_eq!(parse_cpuset("1").unwrap(), vec![1]);
        for bad in ["", "a", "3-1", "0-", "^1", "0,^0", "99999"] {
            assert!(parse_cpuset(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn pins_round_trip() {
        let d = parse_domain(&doc(
            "<vcpu placement='static' cpuset='0-1'>2</vcpu>",
            "<cputune><vcpupin vcpu='0' cpuset='1'/><vcpupin vcpu='1' cpuset='0'/>\
             <emulatorpin cpuset='0-1'/></cputune>",
        ))
        .unwrap();
        assert_eq!(d.vcpu_cpuset.as_deref(), Some("0-1"));
        let t = d.cputune.clone().unwrap();
        assert_eq!(t.vcpupins.len(), 2);
        assert_eq!(t.emulatorpin.as_deref(), Some("0-1"));
        let xml = to_xml(&d);
        assert!(xml.contains("cpuset='0-1'>2</vcpu>"), "{xml}");
        assert!(xml.contains("<vcpupin vcpu='1' cpuset='0'/>"), "{xml}");
        let again = parse_domain(&xml).unwrap();
        assert_eq!(
            (again.cputune, again.vcpu_cpuset),
            (d.cputune, d.vcpu_cpuset)
        );
    }

    #[test]
    fn iothreads_and_the_disks_in_them_round_trip() {
        let d = parse_domain(&doc(
            "<vcpu>1</vcpu><iothreads>2</iothreads>",
            "<devices><disk type='file'><driver name='qemu' type='raw' iothread='2'/>\
             <source file='/a'/><target dev='vda' bus='virtio'/></disk></devices>",
        ))
        .unwrap();
        assert_eq!(d.iothreads, 2);
        assert_eq!(d.devices.disks[0].iothread, Some(2));
        let xml = to_xml(&d);
        assert!(xml.contains("<iothreads>2</iothreads>"), "{xml}");
        assert!(xml.contains("iothread='2'"), "{xml}");
        let again = parse_domain(&xml).unwrap();
        assert_eq!(again.iothreads, 2);
        assert_eq!(again.devices.disks[0].iothread, Some(2));
    }

    #[test]
    fn what_needs_cgroups_or_a_wrong_pin_is_refused_by_name() {
        for (inner, named) in [
            ("<shares>1024</shares>", "<cputune><shares> (CPU bandwidth"),
            ("<quota>-1</quota>", "<cputune><quota>"),
            (
                "<vcpusched vcpus='0' scheduler='fifo'/>",
                "<cputune><vcpusched>",
            ),
            (
                "<iothreadpin iothread='1' cpuset='0'/>",
                "<cputune><iothreadpin>",
            ),
            ("<cachetune vcpus='0'/>", "<cputune><cachetune>"),
            ("<vcpupin vcpu='0' cpuset='x'/>", "<vcpupin cpuset=>"),
            ("<vcpupin vcpu='2' cpuset='0'/>", "vCPU 2"),
            (
                "<vcpupin vcpu='0' cpuset='0'/><vcpupin vcpu='0' cpuset='1'/>",
                "pin each vCPU once",
            ),
        ] {
            let e = parse_domain(&doc(
                "<vcpu>2</vcpu>",
                &format!("<cputune>{inner}</cputune>"),
            ))
            .unwrap_err()
            .to_string();
            assert!(e.contains(named), "{inner}: {e}");
            assert!(!e.contains('\n'));
        }
        let e = parse_domain(&doc("<vcpu cpuset='^0'>1</vcpu>", ""))
            .unwrap_err()
            .to_string();
        assert!(e.contains("<vcpu cpuset=>"), "{e}");
    }
}
