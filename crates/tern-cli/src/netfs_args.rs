//! `pool-define-as` for netfs pools: the type given positionally (`netfs`)
//! or as `--type netfs`, and the export from `--source-host` and
//! `--source-path`, as the walk-through's virsh commands write them.

use crate::{CliError, Result};
use tern_model::{NetfsAccess, NetfsSource, PoolInfo};

/// The export of a netfs pool, `None` for a dir pool, or a usage error
/// naming what is missing or contradictory.
pub(crate) fn netfs_source(
    positional: Option<&str>,
    flag: Option<&str>,
    host: Option<String>,
    path: Option<String>,
    access: Option<&str>,
) -> Result<Option<NetfsSource>> {
    let kind = match (positional, flag) {
        (Some(a), Some(b)) if a != b => {
            return Err(CliError::Usage(format!(
                "pool type given twice ('{a}' and --type {b}); give it once"
            )))
        }
        (Some(t), _) | (None, Some(t)) => t,
        (None, None) => {
            return Err(CliError::Usage(
                "pool type is missing; give --type dir or --type netfs".into(),
            ))
        }
    };
    if kind != "netfs" {
        if host.is_some() || path.is_some() || access.is_some() {
            return Err(CliError::Usage(
                "--source-host, --source-path and --access apply to netfs pools only; give --type netfs or drop them".into(),
            ));
        }
        return Ok(None);
    }
    let (Some(host), Some(path)) = (host, path) else {
        return Err(CliError::Usage(
            "a netfs pool needs --source-host HOST and --source-path /EXPORT".into(),
        ));
    };
    let access = match access {
        None | Some("auto") => NetfsAccess::Auto,
        Some("mount") => NetfsAccess::Mount,
        Some(_) => NetfsAccess::Qemu,
    };
    Ok(Some(NetfsSource { host, path, access }))
}

/// `pool-info`'s Access line.
pub(crate) fn access_text(p: &PoolInfo) -> String {
    match (&p.def.source, p.access) {
        (None, _) => "-".into(),
        (Some(_), Some(NetfsAccess::Mount)) => "mount (kernel NFS client)".into(),
        (Some(_), Some(NetfsAccess::Qemu)) => "qemu (nfs:// opened by QEMU)".into(),
        (Some(s), _) => format!("{} (when started)", s.access.as_str()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walk_through_forms_define_netfs() {
        let h = || Some("192.168.1.101".to_string());
        let p = || Some("/nfs".to_string());
        let s = netfs_source(None, Some("netfs"), h(), p(), None)
            .unwrap()
            .unwrap();
        assert_eq!(
            (s.host.as_str(), s.path.as_str()),
            ("192.168.1.101", "/nfs")
        );
        assert_eq!(s.access, NetfsAccess::Auto);
        assert!(netfs_source(Some("netfs"), None, h(), p(), Some("qemu"))
            .unwrap()
            .is_some_and(|s| s.access == NetfsAccess::Qemu));
        assert!(netfs_source(Some("dir"), None, None, None, None)
            .unwrap()
            .is_none());
    }

    #[test]
    fn contradictions_and_gaps_are_usage_errors() {
        let h = || Some("h".to_string());
        for r in [
            netfs_source(Some("dir"), Some("netfs"), None, None, None),
            netfs_source(None, None, None, None, None),
            netfs_source(None, Some("netfs"), h(), None, None),
            netfs_source(Some("dir"), None, h(), None, None),
        ] {
            assert!(matches!(r, Err(CliError::Usage(_))), "{r:?}");
        }
    }
}
