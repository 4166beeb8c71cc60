//! `<memoryBacking>` and `<vcpu>` attributes: how guest RAM is backed on
//! the host. Honoured: `<hugepages>` (guest RAM on hugetlbfs, one page
//! size for all of it), `<nosharepages/>` (no KSM merging) and
//! `<allocation mode=>` (preallocation). The rest needs libvirt's own
//! plumbing (memfd sharing for vhost-user, mlock limits) and is refused
//! by name.

use super::export::{Attrs, Writer};
use super::import::{elements, invalid, parse_number, Result};
use super::units::to_kib;
use super::XmlError;
use crate::domain::{Hugepages, MemoryBacking, NumaTune};
use roxmltree::Node;

fn refuse(what: &str, why: &str) -> XmlError {
    XmlError::Unsupported {
        what: format!("<memoryBacking><{what}>{why}"),
        fix: "remove it from <memoryBacking>".to_string(),
    }
}

/// `<memoryBacking>`.
pub(super) fn parse_memory_backing(node: Node) -> Result<MemoryBacking> {
    let mut mb = MemoryBacking::default();
    for child in elements(node) {
        match child.tag_name().name() {
            "hugepages" => mb.hugepages = Some(parse_hugepages(child)?),
            "nosharepages" => mb.nosharepages = true,
            "allocation" => {
                if child.attribute("threads").is_some() {
                    return Err(refuse("allocation threads=", " (preallocation threads)"));
                }
                mb.preallocate = match child.attribute("mode") {
                    None | Some("ondemand") => false,
                    Some("immediate") => true,
                    Some(other) => {
                        return Err(invalid(
                            "<memoryBacking><allocation mode=>",
                            other,
                            "use 'immediate' or 'ondemand'",
                        ))
                    }
                };
            }
            "source" => return Err(refuse("source", " (file or memfd RAM for vhost-user)")),
            "access" => return Err(refuse("access", " (RAM shared with other processes)")),
            "locked" => return Err(refuse("locked", " (RAM locked in host memory)")),
            "discard" => return Err(refuse("discard", " (RAM discarded on shutdown)")),
            other => return Err(refuse(other, "")),
        }
    }
    Ok(mb)
}

/// `<hugepages>` with at most one `<page size= unit=>` and no `nodeset=`.
fn parse_hugepages(node: Node) -> Result<Hugepages> {
    let mut page_size_kib = None;
    for page in elements(node) {
        if page.tag_name().name() != "page" {
            return Err(refuse(
                &format!("hugepages><{}", page.tag_name().name()),
                "",
            ));
        }
        if page.attribute("nodeset").is_some() {
            return Err(refuse(
                "hugepages><page nodeset=",
                " (per-NUMA-node page sizes)",
            ));
        }
        if page_size_kib.is_some() {
            return Err(refuse(
                "hugepages> with several <page",
                " (one page size per guest)",
            ));
        }
        let raw = page
            .attribute("size")
            .ok_or_else(|| invalid("<hugepages><page size=>", "", "give size='2048' unit='KiB'"))?;
        let n: u64 = parse_number(raw, "<hugepages><page size=>")?;
        let kib = to_kib(n, page.attribute("unit")).map_err(|_| {
            invalid(
                "<hugepages><page unit=>",
                page.attribute("unit").unwrap_or_default(),
                "use KiB, MiB or GiB",
            )
        })?;
        if kib == 0 {
            return Err(invalid(
                "<hugepages><page size=>",
                raw,
                "give size='2048' unit='KiB'",
            ));
        }
        page_size_kib = Some(kib);
    }
    Ok(Hugepages { page_size_kib })
}

/// `<numatune>` with one `<memory mode= nodeset=>`. Per-guest-node
/// `<memnode>` (the guest has no NUMA cells), `mode='restrictive'` (a
/// cgroup setting) and `placement='auto'` (numad) are refused by name.
pub(super) fn parse_numatune(node: Node) -> Result<NumaTune> {
    let refuse = |what: &str, why: &str| XmlError::Unsupported {
        what: format!("<numatune><{what}>{why}"),
        fix: "remove it from <numatune>".to_string(),
    };
    let mut out = None;
    for child in elements(node) {
        match child.tag_name().name() {
            "memory" => {
                if child.attribute("placement") == Some("auto") {
                    return Err(refuse("memory placement='auto'", " (numad placement)"));
                }
                let mode = child.attribute("mode").unwrap_or("strict");
                if mode == "restrictive" {
                    return Err(refuse(
                        "memory mode='restrictive'",
                        " (a cgroup memory policy)",
                    ));
                }
                if !["strict", "preferred", "interleave"].contains(&mode) {
                    return Err(invalid(
                        "<numatune><memory mode=>",
                        mode,
                        "use strict, preferred or interleave",
                    ));
                }
                let nodeset = child.attribute("nodeset").unwrap_or_default();
                super::cputune::parse_cpuset(nodeset).map_err(|e| {
                    invalid(
                        "<numatune><memory nodeset=>",
                        nodeset,
                        &format!("{e}; write host NUMA nodes such as '0' or '0-1'"),
                    )
                })?;
                out = Some(NumaTune {
                    mode: mode.to_string(),
                    nodeset: nodeset.to_string(),
                });
            }
            "memnode" => {
                return Err(refuse(
                    "memnode",
                    " (per guest NUMA cell; the guest has none)",
                ))
            }
            other => return Err(refuse(other, "")),
        }
    }
    out.ok_or_else(|| invalid("<numatune>", "", "give <memory mode='strict' nodeset='0'/>"))
}

/// `<numatune>` back.
pub(super) fn write_numatune(w: &mut Writer, t: &NumaTune) {
    w.open("numatune", vec![]);
    w.empty(
        "memory",
        vec![("mode", t.mode.clone()), ("nodeset", t.nodeset.clone())],
    );
    w.close("numatune");
}

/// `<memoryBacking>` back, as libvirt writes it.
pub(super) fn write_memory_backing(w: &mut Writer, mb: &MemoryBacking) {
    if *mb == MemoryBacking::default() {
        return;
    }
    w.open("memoryBacking", vec![]);
    if let Some(h) = &mb.hugepages {
        match h.page_size_kib {
            Some(kib) => {
                w.open("hugepages", vec![]);
                let attrs: Attrs = vec![("size", kib.to_string()), ("unit", "KiB".to_string())];
                w.empty("page", attrs);
                w.close("hugepages");
            }
            None => w.empty("hugepages", vec![]),
        }
    }
    if mb.nosharepages {
        w.empty("nosharepages", vec![]);
    }
    if mb.preallocate {
        w.empty("allocation", vec![("mode", "immediate".to_string())]);
    }
    w.close("memoryBacking");
}

#[cfg(test)]
mod tests {
    use crate::xml::{parse_domain, to_xml};

    fn doc(inner: &str) -> String {
        format!(
            "<domain type='kvm'><name>m</name><memory unit='MiB'>256</memory>\
             {inner}<os><type>hvm</type></os></domain>"
        )
    }

    #[test]
    fn hugepages_of_the_default_and_of_a_given_size_round_trip() {
        let d = parse_domain(&doc("<memoryBacking><hugepages/></memoryBacking>")).unwrap();
        let h = d.memory_backing.as_ref().unwrap().hugepages.unwrap();
        assert_eq!(h.page_size_kib, None);
        let again = parse_domain(&to_xml(&d)).unwrap();
        assert_eq!(again.memory_backing, d.memory_backing);

        let d = parse_domain(&doc(
            "<memoryBacking><hugepages><page size='2' unit='MiB'/></hugepages>\
             <nosharepages/><allocation mode='immediate'/></memoryBacking>",
        ))
        .unwrap();
        let mb = d.memory_backing.clone().unwrap();
        assert_eq!(mb.hugepages.unwrap().page_size_kib, Some(2048));
        assert!(mb.nosharepages && mb.preallocate);
        let xml = to_xml(&d);
        assert!(xml.contains("<page size='2048' unit='KiB'/>"), "{xml}");
        assert_eq!(parse_domain(&xml).unwrap().memory_backing, Some(mb));
    }

    #[test]
    fn what_needs_libvirts_plumbing_is_refused_by_name() {
        for (inner, named) in [
            ("<source type='memfd'/>", "<memoryBacking><source>"),
            ("<access mode='shared'/>", "<memoryBacking><access>"),
            ("<locked/>", "<memoryBacking><locked>"),
            ("<discard/>", "<memoryBacking><discard>"),
            (
                "<hugepages><page size='2048' nodeset='0'/></hugepages>",
                "<memoryBacking><hugepages><page nodeset=>",
            ),
            ("<allocation mode='immediate' threads='4'/>", "threads="),
        ] {
            let e = parse_domain(&doc(&format!("<memoryBacking>{inner}</memoryBacking>")))
                .unwrap_err()
                .to_string();
            assert!(e.contains(named), "{inner}: {e}");
            assert!(e.contains("not supported"), "{e}");
        }
    }

    #[test]
    fn guest_memory_must_fill_whole_huge_pages() {
        let e = parse_domain(&doc(
            "<memoryBacking><hugepages><page size='1' unit='GiB'/></hugepages></memoryBacking>",
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("huge page"), "{e}");
    }

    #[test]
    fn numatune_memory_round_trips_and_the_rest_is_refused_by_name() {
        let d = parse_domain(&doc(
            "<numatune><memory mode='interleave' nodeset='0-1'/></numatune>",
        ))
        .unwrap();
        let t = d.numatune.clone().unwrap();
        assert_eq!((t.mode.as_str(), t.nodeset.as_str()), ("interleave", "0-1"));
        assert_eq!(t.qemu_policy(), "interleave");
        let again = parse_domain(&to_xml(&d)).unwrap();
        assert_eq!(again.numatune, d.numatune);
        for (inner, named) in [
            (
                "<memnode cellid='0' mode='strict' nodeset='0'/>",
                "<numatune><memnode>",
            ),
            (
                "<memory mode='restrictive' nodeset='0'/>",
                "mode='restrictive'",
            ),
            ("<memory placement='auto'/>", "placement='auto'"),
            (
                "<memory mode='strict' nodeset='x'/>",
                "<numatune><memory nodeset=>",
            ),
        ] {
            let e = parse_domain(&doc(&format!("<numatune>{inner}</numatune>")))
                .unwrap_err()
                .to_string();
            assert!(e.contains(named), "{inner}: {e}");
        }
    }

    #[test]
    fn no_memory_backing_writes_none() {
        let d = parse_domain(&doc("")).unwrap();
        assert_eq!(d.memory_backing, None);
        assert!(!to_xml(&d).contains("memoryBacking"));
    }
}
