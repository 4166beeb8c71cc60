//! Guest RAM from `<memoryBacking>` and `<numatune>`: huge pages (a
//! `memory-backend-file` on the hugetlbfs the agent picked),
//! preallocation, KSM merging and the host NUMA nodes it comes from.

use super::{escape_comma, LaunchSpec};

/// The RAM backend's id: the name QEMU gives the default RAM block, so
/// the migration stream names guest RAM the same whatever backs it (as
/// libvirt does).
pub const RAM_ID: &str = "pc.ram";

/// The `-object` of an explicit RAM backend when the guest needs one
/// (huge pages or preallocation), and what `-machine` gets added:
/// `memory-backend=` for the backend, `mem-merge=off` for
/// `<nosharepages/>` when QEMU makes the RAM itself.
pub fn memory_args(spec: &LaunchSpec<'_>) -> (Option<String>, String) {
    let d = spec.domain;
    let mb = d.memory_backing.clone().unwrap_or_default();
    let size = format!("{}M", d.memory_kib.div_ceil(1024));
    let merge = if mb.nosharepages { ",merge=off" } else { "" };
    let prealloc = if mb.preallocate { ",prealloc=on" } else { "" };
    // `<numatune>`: QEMU binds guest RAM itself (mbind), one
    // `host-nodes=` per node.
    let numa = d
        .numatune
        .as_ref()
        .and_then(|t| {
            let nodes = tern_model::xml::parse_cpuset(&t.nodeset).ok()?;
            let list: String = nodes.iter().map(|n| format!(",host-nodes={n}")).collect();
            Some(format!("{list},policy={}", t.qemu_policy()))
        })
        .unwrap_or_default();
    let object = match (&mb.hugepages, &spec.mem_path) {
        (Some(_), Some(dir)) => format!(
            "memory-backend-file,id={RAM_ID},mem-path={},size={size},share=off{prealloc}{merge}{numa}",
            escape_comma(&dir.display().to_string())
        ),
        _ if mb.preallocate || !numa.is_empty() => {
            format!("memory-backend-ram,id={RAM_ID},size={size}{prealloc}{merge}{numa}")
        }
        _ if mb.nosharepages => return (None, ",mem-merge=off".into()),
        _ => return (None, String::new()),
    };
    (Some(object), format!(",memory-backend={RAM_ID}"))
}
