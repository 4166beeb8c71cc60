//! Secrets (`secret-define`, `secret-set-value`, ...): libvirt's model, kept
//! in `<state>/secrets` (mode 0700) as `<uuid>.json` (the definition) and
//! `<uuid>.base64` (the value, mode 0600, base64 as Ceph keyrings and
//! `ceph auth get-key` print it).
//!
//! A value leaves this module only as a file of mode 0600: the `rbd` CLI
//! reads the stored file itself (`--keyfile`), and QEMU a copy in its run
//! directory (`-object secret,file=`). It is never put in a log, an error,
//! a command line or a reply, except `secret-get-value` of a secret that is
//! not private (as in libvirt).

use crate::error::{AgentError, Result};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use tern_api::{ApiError, ErrorCode, SecretRequest};
use tern_model::secret::{parse_secret, parse_uuid};
use tern_model::{DiskRemote, Domain, SecretDef, SecretInfo, SecretRef};

/// The agent's secrets; see the module documentation.
#[derive(Debug)]
pub struct Secrets {
    dir: PathBuf,
    /// Serialises changes (definitions are few and small: read from disk).
    lock: std::sync::Mutex<()>,
}

/// Whether `s` is standard base64 (with padding), as a cephx key is.
pub fn is_base64(s: &str) -> bool {
    let body = s.trim_end_matches('=');
    !s.is_empty()
        && s.len().is_multiple_of(4)
        && s.len() - body.len() <= 2
        && body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
}

/// Writes `data` to `path` created with mode 0600 (never wider, even for
/// a moment), replacing it atomically.
pub fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

impl Secrets {
    /// Opens (and creates, mode 0700) the secrets directory.
    pub fn open(dir: PathBuf) -> Secrets {
        if !dir.is_dir() {
            if let Err(e) = std::fs::DirBuilder::new().mode(0o700).create(&dir) {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot create the secrets directory");
            }
        }
        let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700));
        Secrets {
            dir,
            lock: Default::default(),
        }
    }

    fn def_path(&self, uuid: &str) -> PathBuf {
        self.dir.join(format!("{uuid}.json"))
    }

    fn value_path(&self, uuid: &str) -> PathBuf {
        self.dir.join(format!("{uuid}.base64"))
    }

    /// Every definition, sorted by uuid.
    fn defs(&self) -> Vec<SecretDef> {
        let mut out: Vec<SecretDef> = std::fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.path().extension().and_then(|x| x.to_str()) == Some("json"))
            .filter_map(|e| std::fs::read(e.path()).ok())
            .filter_map(|b| serde_json::from_slice::<SecretDef>(&b).ok())
            .collect();
        out.sort_by(|a, b| a.uuid.cmp(&b.uuid));
        out
    }

    /// `secret-define FILE`: a new secret, or a new definition of an
    /// existing uuid (its value stays). Refuses a usage another secret has.
    pub fn define(&self, xml: &str) -> Result<SecretDef> {
        let def = parse_secret(xml).map_err(|e| AgentError::Invalid(e.to_string()))?;
        let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(other) = self
            .defs()
            .into_iter()
            .find(|o| o.uuid != def.uuid && o.usage.is_some() && o.usage == def.usage)
        {
            return Err(AgentError::Conflict(format!(
                "secret {} already has usage '{}'; undefine it first or give another <name>",
                other.uuid,
                other.usage.as_ref().map(|u| u.name()).unwrap_or_default()
            )));
        }
        let text = serde_json::to_vec_pretty(&def)
            .map_err(|e| AgentError::Failed(format!("cannot serialise secret: {e}")))?;
        let path = self.def_path(&def.uuid);
        write_private(&path, &text).map_err(|e| AgentError::state(&path, e))?;
        tracing::info!(uuid = %def.uuid, "secret defined");
        Ok(def)
    }

    /// The definition a uuid or a usage name designates.
    pub fn find(&self, id: &str) -> Result<SecretDef> {
        let by_uuid = parse_uuid(id).ok();
        self.defs()
            .into_iter()
            .find(|d| {
                Some(&d.uuid) == by_uuid.as_ref() || d.usage.as_ref().is_some_and(|u| u.name() == id)
            })
            .ok_or_else(|| {
                AgentError::Invalid(format!(
                    "secret '{id}' is not defined on this host; see 'tern secret-list', or define it with 'tern secret-define FILE'"
                ))
            })
    }

    /// `secret-set-value`: `value` is base64 (a cephx key as printed by
    /// `ceph auth get-key`).
    pub fn set_value(&self, id: &str, value: &str) -> Result<SecretDef> {
        let def = self.find(id)?;
        let value = value.trim();
        if !is_base64(value) {
            return Err(AgentError::Invalid(
                "the secret value is not base64; give a cephx key as 'ceph auth get-key client.ID' prints it".into(),
            ));
        }
        let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let path = self.value_path(&def.uuid);
        write_private(&path, value.as_bytes()).map_err(|e| AgentError::state(&path, e))?;
        tracing::info!(uuid = %def.uuid, "secret value set");
        Ok(def)
    }

    /// `secret-get-value`: refused for private secrets.
    pub fn get_value(&self, id: &str) -> Result<String> {
        let def = self.find(id)?;
        if def.private {
            return Err(AgentError::Conflict(format!(
                "secret {} is private (private='yes'): its value is never given back",
                def.uuid
            )));
        }
        std::fs::read_to_string(self.value_path(&def.uuid))
            .map(|v| v.trim().to_string())
            .map_err(|_| self.no_value(&def))
    }

    /// `secret-list`.
    pub fn list(&self) -> Vec<SecretInfo> {
        self.defs()
            .into_iter()
            .map(|def| SecretInfo {
                has_value: self.value_path(&def.uuid).is_file(),
                def,
            })
            .collect()
    }

    /// `secret-undefine`: the definition and the value.
    pub fn undefine(&self, id: &str) -> Result<SecretDef> {
        let def = self.find(id)?;
        let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let _ = std::fs::remove_file(self.value_path(&def.uuid));
        let path = self.def_path(&def.uuid);
        std::fs::remove_file(&path).map_err(|e| AgentError::state(&path, e))?;
        tracing::info!(uuid = %def.uuid, "secret undefined");
        Ok(def)
    }

    fn no_value(&self, def: &SecretDef) -> AgentError {
        AgentError::Invalid(format!(
            "secret {} has no value on this host; run 'tern secret-set-value {} --file KEYFILE'",
            def.uuid, def.uuid
        ))
    }

    /// The stored value file of the secret `r` names (mode 0600, base64),
    /// for tools that read a key file themselves (`rbd --keyfile`).
    /// Refuses, naming the secret and the commands that fix it, when the
    /// secret or its value is missing here.
    pub fn value_file(&self, r: &SecretRef) -> Result<PathBuf> {
        let id = match r {
            SecretRef::Uuid(u) | SecretRef::Usage(u) => u,
        };
        let def = self.find(id).map_err(|_| {
            AgentError::Invalid(format!(
                "secret with {r} is not defined on this host; run 'tern secret-define FILE' and 'tern secret-set-value UUID --file KEYFILE' here (with the same uuid and usage as on the other hosts)"
            ))
        })?;
        let path = self.value_path(&def.uuid);
        if !path.is_file() {
            return Err(self.no_value(&def));
        }
        Ok(path)
    }

    /// Copies the value of `r` to `dest` (mode 0600) for QEMU's
    /// `-object secret,file=`.
    pub fn copy_value(&self, r: &SecretRef, dest: &Path) -> Result<()> {
        let src = self.value_file(r)?;
        let v = std::fs::read(&src).map_err(|e| AgentError::state(&src, e))?;
        write_private(dest, &v).map_err(|e| AgentError::state(dest, e))
    }
}

/// The rbd disks of `d` (as QEMU opens them) that carry credentials.
fn auth_disks(d: &Domain) -> impl Iterator<Item = (&str, &tern_model::CephAuth)> {
    d.devices
        .disks
        .iter()
        .filter_map(|disk| match &disk.remote {
            Some(DiskRemote::Network(n)) if disk.source.is_none() => {
                n.auth.as_ref().map(|a| (disk.target_dev.as_str(), a))
            }
            _ => None,
        })
}

impl Secrets {
    /// Refuses `d` (with its disks resolved, see
    /// [`crate::pools::Pools::resolve_disks`]) when a disk names a secret
    /// this host lacks or has no value for, naming the disk, the secret
    /// and the commands that fix it. Run before anything starts: at launch
    /// and when a migration's destination admits the guest.
    pub fn check_domain(&self, d: &Domain) -> Result<()> {
        for (dev, auth) in auth_disks(d) {
            self.value_file(&auth.secret).map_err(|e| {
                AgentError::Invalid(format!(
                    "disk '{dev}' of domain '{}' authenticates as client.{} with a secret this host cannot give it: {e}",
                    d.name, auth.username
                ))
            })?;
        }
        Ok(())
    }

    /// Writes each rbd disk's key where QEMU's `-object secret,file=`
    /// reads it ([`tern_qemu::cmdline::disk_secret_file`], mode 0600, given
    /// to QEMU's user); the files written, to remove once QEMU has read them.
    pub fn stage_for_qemu(
        &self,
        d: &Domain,
        run_dir: &Path,
        user: Option<&crate::confine::user::QemuUser>,
    ) -> Result<Vec<PathBuf>> {
        let mut staged = Vec::new();
        for (dev, _) in auth_disks(d) {
            match self.stage_disk(d, dev, run_dir, user) {
                Ok(f) => staged.extend(f),
                Err(e) => {
                    remove_staged(&staged);
                    return Err(e);
                }
            }
        }
        Ok(staged)
    }

    /// [`Secrets::stage_for_qemu`] for disk `target` alone, into `dir`;
    /// `None` when the disk carries no credentials.
    pub fn stage_disk(
        &self,
        d: &Domain,
        target: &str,
        dir: &Path,
        user: Option<&crate::confine::user::QemuUser>,
    ) -> Result<Option<PathBuf>> {
        let Some((dev, auth)) = auth_disks(d).find(|(dev, _)| *dev == target) else {
            return Ok(None);
        };
        let f = tern_qemu::cmdline::disk_secret_file(dir, dev);
        let done = self.copy_value(&auth.secret, &f).and_then(|_| {
            crate::confine::user::hand_over(&f, user).map_err(|e| AgentError::state(&f, e))
        });
        if let Err(e) = done {
            remove_staged(std::slice::from_ref(&f));
            return Err(e);
        }
        Ok(Some(f))
    }
}

/// Removes keys staged for QEMU (it reads them once, at start).
pub fn remove_staged(files: &[PathBuf]) {
    for f in files {
        let _ = std::fs::remove_file(f);
    }
}

/// Answers a secret request; the reply never holds a value except
/// `secret-get-value` of a secret that is not private.
pub fn dispatch(s: &Secrets, r: SecretRequest) -> std::result::Result<Vec<u8>, ApiError> {
    let json = |v: serde_json::Value| {
        serde_json::to_vec(&v).map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))
    };
    let def = |d: SecretDef| serde_json::to_value(d).unwrap_or_default();
    match r {
        SecretRequest::SecretDefine { xml } => json(def(s.define(&xml)?)),
        SecretRequest::SecretSetValue { secret, value } => json(def(s.set_value(&secret, &value)?)),
        SecretRequest::SecretGetValue { secret } => {
            json(serde_json::json!({ "value": s.get_value(&secret)? }))
        }
        SecretRequest::SecretList => json(serde_json::to_value(s.list()).unwrap_or_default()),
        SecretRequest::SecretDumpXml { secret } => json(serde_json::Value::String(
            tern_model::secret::secret_to_xml(&s.find(&secret)?),
        )),
        SecretRequest::SecretUndefine { secret } => json(def(s.undefine(&secret)?)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    const XML: &str = "<secret ephemeral='no' private='yes'><uuid>2ec115d7-3a88-3ceb-bc12-0ac909a6fd87</uuid><usage type='ceph'><name>client.qemu secret</name></usage></secret>";
    const KEY: &str = "AQBzpXBnAAAAABAAp1Yp+eFmiQzLbdh4vDlzSg==";

    #[test]
    fn values_are_private_files_and_never_given_back() {
        let t = tempfile::tempdir().unwrap();
        let s = Secrets::open(t.path().join("secrets"));
        let d = s.define(XML).unwrap();
        let r = SecretRef::Usage("client.qemu secret".into());
        let e = s.value_file(&r).unwrap_err().to_string();
        assert!(e.contains("tern secret-set-value"), "{e}");
        assert!(s.set_value(&d.uuid, "not base64!").is_err());
        s.set_value(&d.uuid, &format!("{KEY}\n")).unwrap();
        let f = s.value_file(&r).unwrap();
        assert_eq!(std::fs::metadata(&f).unwrap().mode() & 0o777, 0o600);
        let dir_mode = std::fs::metadata(t.path().join("secrets")).unwrap().mode();
        assert_eq!(dir_mode & 0o777, 0o700);
        assert_eq!(std::fs::read_to_string(&f).unwrap(), KEY);
        let e = s.get_value(&d.uuid).unwrap_err().to_string();
        assert!(e.contains("private") && !e.contains(KEY), "{e}");
        assert!(s.list()[0].has_value);
        let copy = t.path().join("copy.key");
        s.copy_value(&SecretRef::Uuid(d.uuid.clone()), &copy)
            .unwrap();
        assert_eq!(std::fs::metadata(&copy).unwrap().mode() & 0o777, 0o600);
        // A second secret with the same usage is refused.
        let dup = XML.replace("2ec115d7", "3ec115d7");
        assert!(s.define(&dup).is_err());
        s.undefine("client.qemu secret").unwrap();
        assert!(s.list().is_empty());
        assert!(!f.exists());
    }

    #[test]
    fn public_values_come_back() {
        let t = tempfile::tempdir().unwrap();
        let s = Secrets::open(t.path().to_path_buf());
        let d = s
            .define(&XML.replace("private='yes'", "private='no'"))
            .unwrap();
        s.set_value(&d.uuid, KEY).unwrap();
        assert_eq!(s.get_value(&d.uuid).unwrap(), KEY);
    }

    #[test]
    fn base64_is_checked() {
        assert!(is_base64(KEY));
        assert!(is_base64("YQ=="));
        assert!(!is_base64("YQ="));
        assert!(!is_base64(""));
        assert!(!is_base64("a b="));
    }
}
