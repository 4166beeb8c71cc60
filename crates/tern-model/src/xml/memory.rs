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
use crate::domain::{Hugepages, MemoryBacking};
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
    fn no_memory_backing_writes_none() {
        let d = parse_domain(&doc("")).unwrap();
        assert_eq!(d.memory_backing, None);
        assert!(!to_xml(&d).contains("memoryBacking"));
    }
}
