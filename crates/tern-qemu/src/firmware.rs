//! UEFI firmware: what `<os firmware='efi'>` means on this host (Debian's
//! OVMF images), and the guest's own variable store created from the
//! template, as libvirt does at define and start.

use std::path::{Path, PathBuf};
use tern_model::{Domain, Loader, Nvram};
use thiserror::Error;

/// Where Debian's `ovmf` package puts its images.
pub const OVMF_DIR: &str = "/usr/share/OVMF";

/// Firmware problems, each naming the file and the fix.
#[derive(Debug, Error)]
pub enum FirmwareError {
    /// The OVMF image or template is not installed.
    #[error("UEFI firmware '{}' is missing; install the ovmf package (scripts/install-deps.sh)", .0.display())]
    Missing(PathBuf),
    /// The NVRAM file could not be created.
    #[error("cannot create the UEFI variable store '{}' from '{}': {source}", .path.display(), .template.display())]
    Create {
        /// The per-guest file.
        path: PathBuf,
        /// Its template.
        template: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

fn feature(d: &Domain, name: &str) -> bool {
    d.os.firmware_features
        .iter()
        .any(|f| f.name == name && f.enabled)
}

/// Fills in `<loader>` and `<nvram>` for `<os firmware='efi'>`, and an
/// `<nvram>` for a writable-variables pflash loader without one. The
/// variable store lives in `nvram_dir` as `<name>_VARS.fd`. Idempotent.
pub fn complete_firmware(d: &mut Domain, nvram_dir: &Path) {
    let secure = feature(d, "secure-boot");
    if d.os.firmware.as_deref() == Some("efi") && d.os.loader.is_none() {
        let code = if secure {
            "OVMF_CODE_4M.secboot.fd"
        } else {
            "OVMF_CODE_4M.fd"
        };
        d.os.loader = Some(Loader {
            path: Path::new(OVMF_DIR).join(code),
            readonly: true,
            loader_type: "pflash".into(),
            secure: Some(secure),
        });
    }
    if secure {
        // Secure boot needs System Management Mode to protect the variables.
        d.features.smm = Some(true);
    }
    let Some(loader) = &d.os.loader else { return };
    if loader.loader_type != "pflash" || !loader.readonly || d.os.nvram.is_some() {
        return;
    }
    let code = loader.path.to_string_lossy();
    let vars = match (code.contains("_4M"), feature(d, "enrolled-keys")) {
        (true, true) => "OVMF_VARS_4M.ms.fd",
        (true, false) => "OVMF_VARS_4M.fd",
        (false, true) => "OVMF_VARS.ms.fd",
        (false, false) => "OVMF_VARS.fd",
    };
    d.os.nvram = Some(Nvram {
        path: nvram_dir.join(format!("{}_VARS.fd", d.name)),
        template: Some(Path::new(OVMF_DIR).join(vars)),
    });
}

/// Checks the firmware exists and creates the guest's variable store from
/// its template if it does not exist yet (its variables then persist).
pub fn prepare_firmware(d: &Domain) -> Result<(), FirmwareError> {
    if let Some(loader) = &d.os.loader {
        if !loader.path.is_file() {
            return Err(FirmwareError::Missing(loader.path.clone()));
        }
    }
    let Some(nvram) = &d.os.nvram else {
        return Ok(());
    };
    if nvram.path.exists() {
        return Ok(());
    }
    let Some(template) = &nvram.template else {
        return Err(FirmwareError::Missing(nvram.path.clone()));
    };
    if !template.is_file() {
        return Err(FirmwareError::Missing(template.clone()));
    }
    let create = || -> std::io::Result<()> {
        if let Some(dir) = nvram.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::copy(template, &nvram.path).map(|_| ())
    };
    create().map_err(|source| FirmwareError::Create {
        path: nvram.path.clone(),
        template: template.clone(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn efi_guest(features: &[(&str, bool)]) -> Domain {
        let xml = "<domain type='kvm'><name>g</name><memory>1024</memory>\
                   <os firmware='efi'><type>hvm</type></os></domain>";
        let mut d = tern_model::xml::parse_domain(xml).unwrap();
        for (name, enabled) in features {
            d.os.firmware_features.push(tern_model::FirmwareFeature {
                name: name.to_string(),
                enabled: *enabled,
            });
        }
        d
    }

    #[test]
    fn efi_gets_debian_ovmf_and_a_per_guest_store() {
        let mut d = efi_guest(&[("secure-boot", false)]);
        complete_firmware(&mut d, Path::new("/var/lib/tern/nvram"));
        let loader = d.os.loader.clone().unwrap();
        assert_eq!(loader.path, Path::new("/usr/share/OVMF/OVMF_CODE_4M.fd"));
        assert!(loader.readonly);
        let nvram = d.os.nvram.clone().unwrap();
        assert_eq!(nvram.path, Path::new("/var/lib/tern/nvram/g_VARS.fd"));
        assert_eq!(
            nvram.template.as_deref(),
            Some(Path::new("/usr/share/OVMF/OVMF_VARS_4M.fd"))
        );
        let before = d.clone();
        complete_firmware(&mut d, Path::new("/elsewhere"));
        assert_eq!(d, before, "idempotent");
    }

    #[test]
    fn secure_boot_uses_the_secboot_image_and_smm() {
        let mut d = efi_guest(&[("secure-boot", true), ("enrolled-keys", true)]);
        complete_firmware(&mut d, Path::new("/n"));
        assert!(d
            .os
            .loader
            .unwrap()
            .path
            .ends_with("OVMF_CODE_4M.secboot.fd"));
        assert!(d
            .os
            .nvram
            .unwrap()
            .template
            .unwrap()
            .ends_with("OVMF_VARS_4M.ms.fd"));
        assert_eq!(d.features.smm, Some(true));
    }

    #[test]
    fn the_store_is_created_from_the_template_once() {
        let dir = tempfile::tempdir().unwrap();
        let template = dir.path().join("VARS.fd");
        std::fs::write(&template, b"empty-store").unwrap();
        let mut d = efi_guest(&[]);
        d.os.loader = Some(Loader {
            path: template.clone(),
            readonly: true,
            loader_type: "pflash".into(),
            secure: None,
        });
        d.os.nvram = Some(Nvram {
            path: dir.path().join("sub/g_VARS.fd"),
            template: Some(template),
        });
        prepare_firmware(&d).unwrap();
        let store = dir.path().join("sub/g_VARS.fd");
        assert_eq!(std::fs::read(&store).unwrap(), b"empty-store");
        std::fs::write(&store, b"guest-wrote-this").unwrap();
        prepare_firmware(&d).unwrap();
        assert_eq!(std::fs::read(&store).unwrap(), b"guest-wrote-this");
    }
}
