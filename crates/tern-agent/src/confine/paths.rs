//! Host paths a definition names: each must lie in a storage pool or under
//! an allowed directory, after resolving symlinks and with no `..`.

use std::path::{Component, Path, PathBuf};
use tern_model::{ChannelKind, CharDev, Domain};
use thiserror::Error;

/// Directories firmware packages install UEFI and BIOS images into; a
/// `<loader>` may point there (QEMU opens it read-only).
pub const FIRMWARE_DIRS: &[&str] = &[
    "/usr/share/OVMF",
    "/usr/share/qemu",
    "/usr/share/seabios",
    "/usr/share/edk2",
    "/usr/share/AAVMF",
];

/// Why a path was refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum PathRefusal {
    /// Not absolute, or with a `..` component.
    #[error(
        "{what} '{path}' is not a plain absolute path; write it without '..' and starting with '/'"
    )]
    NotPlain {
        /// What the path is, e.g. "serial file".
        what: &'static str,
        /// The path as written.
        path: String,
    },
    /// Its directory does not exist (so it cannot be checked).
    #[error("{what} '{path}' is in a directory that does not exist; create the directory inside a storage pool first")]
    NoDirectory {
        /// What the path is.
        what: &'static str,
        /// The path as written.
        path: String,
    },
    /// Outside every pool and allowed directory.
    #[error("{what} '{path}' is outside every storage pool{resolved}; move it into a pool (tern pool-list) or add its directory to allowed_paths in the [qemu] table of ternd's --config file")]
    Outside {
        /// What the path is.
        what: &'static str,
        /// The path as written.
        path: String,
        /// ", and resolves to X" when symlinks led elsewhere.
        resolved: String,
    },
}

/// The directories a definition's paths may lie under.
#[derive(Debug, Clone, Default)]
pub struct Roots {
    roots: Vec<PathBuf>,
    /// Roots that do not exist on this host (a netfs pool QEMU reaches
    /// over nfs://): matched by name, as nothing there can be a symlink.
    absent: Vec<PathBuf>,
}

impl Roots {
    /// Roots from directories, resolved so a symlinked pool still
    /// matches; those that do not exist are matched by name.
    pub fn new<I: IntoIterator<Item = PathBuf>>(dirs: I) -> Roots {
        let mut r = Roots::default();
        for d in dirs {
            match std::fs::canonicalize(&d) {
                Ok(c) => r.roots.push(c),
                Err(_) if d.is_absolute() && d.symlink_metadata().is_err() => r.absent.push(d),
                Err(_) => {}
            }
        }
        r
    }

    /// These roots and `more`.
    pub fn with<I: IntoIterator<Item = PathBuf>>(&self, more: I) -> Roots {
        let mut r = self.clone();
        let more = Roots::new(more);
        r.roots.extend(more.roots);
        r.absent.extend(more.absent);
        r
    }

    /// Checks one path; returns where it resolves to.
    pub fn check(&self, what: &'static str, path: &Path) -> Result<PathBuf, PathRefusal> {
        let shown = path.display().to_string();
        if !path.is_absolute() || path.components().any(|c| c == Component::ParentDir) {
            return Err(PathRefusal::NotPlain { what, path: shown });
        }
        if self.absent.iter().any(|r| path.starts_with(r)) && path.symlink_metadata().is_err() {
            return Ok(path.to_path_buf());
        }
        let resolved = resolve(path).ok_or_else(|| PathRefusal::NoDirectory {
            what,
            path: shown.clone(),
        })?;
        if self.roots.iter().any(|r| resolved.starts_with(r)) {
            return Ok(resolved);
        }
        let resolved = if resolved != path {
            format!(", and resolves to '{}'", resolved.display())
        } else {
            String::new()
        };
        Err(PathRefusal::Outside {
            what,
            path: shown,
            resolved,
        })
    }
}

/// The path with symlinks resolved; for a file not created yet (a serial
/// log), its resolved directory and its name.
fn resolve(path: &Path) -> Option<PathBuf> {
    if let Ok(p) = std::fs::canonicalize(path) {
        return Some(p);
    }
    if path.symlink_metadata().is_ok() {
        // A dangling symlink: QEMU would create its target, wherever that is.
        return None;
    }
    let dir = std::fs::canonicalize(path.parent()?).ok()?;
    Some(dir.join(path.file_name()?))
}

/// Every host path of `d` that QEMU (or swtpm) opens, with what it is and
/// whether firmware directories are also fine for it.
pub fn domain_paths(d: &Domain) -> Vec<(&'static str, &Path, bool)> {
    let mut out: Vec<(&'static str, &Path, bool)> = Vec::new();
    for disk in &d.devices.disks {
        if let Some(src) = &disk.source {
            out.push(("disk source", src, false));
        }
    }
    if let Some(k) = &d.os.kernel {
        out.push(("kernel", k, false));
    }
    if let Some(i) = &d.os.initrd {
        out.push(("initrd", i, false));
    }
    if let Some(l) = &d.os.loader {
        out.push(("firmware loader", &l.path, true));
    }
    if let Some(n) = &d.os.nvram {
        out.push(("NVRAM file", &n.path, false));
        if let Some(t) = &n.template {
            out.push(("NVRAM template", t, true));
        }
    }
    let serials = d.devices.serials.iter().map(|s| &s.kind);
    for kind in serials.chain(d.devices.consoles.iter().map(|c| &c.kind)) {
        if let CharDev::File { path } = kind {
            out.push(("serial file", path, false));
        }
    }
    for c in &d.devices.channels {
        if let ChannelKind::Unix { path: Some(p) } = &c.kind {
            out.push(("channel socket", p, false));
        }
    }
    out
}

/// Checks every path of `d` against `roots` (and, for firmware,
/// [`FIRMWARE_DIRS`]); the first refusal names the path and the fix.
pub fn check_domain(d: &Domain, roots: &Roots) -> Result<(), PathRefusal> {
    let firmware = roots.with(FIRMWARE_DIRS.iter().map(PathBuf::from));
    for (what, path, fw) in domain_paths(d) {
        if fw {
            firmware.check(what, path)?;
        } else {
            roots.check(what, path)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_must_resolve_inside_a_root() {
        let t = tempfile::tempdir().unwrap();
        let pool = t.path().join("pool");
        std::fs::create_dir(&pool).unwrap();
        std::fs::write(pool.join("a.img"), b"x").unwrap();
        let roots = Roots::new([pool.clone(), t.path().join("missing")]);
        assert!(roots.check("disk source", &pool.join("a.img")).is_ok());
        // Not yet created, in the pool: fine (a serial log).
        assert!(roots.check("serial file", &pool.join("new.log")).is_ok());
        let e = roots
            .check("serial file", Path::new("/etc/shadow"))
            .unwrap_err();
        assert!(e
            .to_string()
            .contains("'/etc/shadow' is outside every storage pool"));
        assert!(e.to_string().contains("allowed_paths"));
        let e = roots
            .check("disk source", &pool.join("../pool/a.img"))
            .unwrap_err();
        assert!(matches!(e, PathRefusal::NotPlain { .. }), "{e}");
        assert!(roots.check("kernel", Path::new("rel/k")).is_err());
        // A symlink out of the pool is judged by its target.
        std::os::unix::fs::symlink("/etc/shadow", pool.join("link")).unwrap();
        let e = roots.check("kernel", &pool.join("link")).unwrap_err();
        assert!(e.to_string().contains("resolves to '/etc/shadow'"), "{e}");
        // A dangling symlink would let QEMU create a file anywhere.
        std::os::unix::fs::symlink("/etc/tern-nope", pool.join("dangling")).unwrap();
        assert!(roots.check("serial file", &pool.join("dangling")).is_err());
        // A symlinked pool directory still matches its own files.
        let alias = t.path().join("alias");
        std::os::unix::fs::symlink(&pool, &alias).unwrap();
        assert!(Roots::new([alias.clone()])
            .check("disk source", &alias.join("a.img"))
            .is_ok());
        assert!(roots
            .check("serial file", &t.path().join("nodir/x.log"))
            .is_err());
        // A root absent from this host (a netfs pool reached over nfs://)
        // matches by name; other absent paths still do not.
        let absent = t.path().join("missing");
        assert!(roots.check("disk source", &absent.join("v.qcow2")).is_ok());
        assert!(roots
            .check("disk source", &t.path().join("other/v.qcow2"))
            .is_err());
    }
}
