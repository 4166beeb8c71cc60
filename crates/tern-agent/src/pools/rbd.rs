//! rbd pools: volumes are RBD images in a Ceph pool, managed with the `rbd`
//! and `ceph` CLIs (Debian's ceph-common) and opened by QEMU through librbd.
//!
//! The tools get the monitors with `-m`, the cephx id with `--id` and the
//! key as a file (`--keyfile`: the secret's stored value, mode 0600), never
//! on their command line. `-c /dev/null` keeps a host's own
//! /etc/ceph/ceph.conf out of it, as libvirt does (it sets every option
//! itself).

use super::Secrets;
use crate::error::{AgentError, Result};
use serde::Deserialize;
use std::path::PathBuf;
use tern_model::{RbdSource, VolumeInfo};
use tokio::process::Command;

/// How long one `rbd`/`ceph` call may take: an unreachable monitor
/// otherwise hangs it for minutes.
const CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
/// How long a fence's blocklist entry lasts: ten years, not Ceph's default
/// hour, after which a still-running QEMU of a cut-off host could write
/// again. Tern removes the entry itself once the host is back and its old
/// QEMUs are gone.
const BLOCKLIST_SECONDS: &str = "315360000";
/// librados' own limit on reaching the monitors (`client_mount_timeout`,
/// 300 s by default): a wrong key makes it retry until then, silently.
const MOUNT_TIMEOUT_SECS: &str = "10";
/// librados' own limit on one monitor command once connected
/// (`rados_mon_op_timeout`, none by default). [`CALL_TIMEOUT`] bounds the
/// wait only while this agent lives: a `ceph df` whose agent was killed,
/// and whose monitor went away, was still waiting 25 minutes later.
const MON_OP_TIMEOUT_SECS: &str = "25";

/// Refuses a definition that cannot reach a cluster.
pub(super) fn check_source(src: &RbdSource) -> Result<()> {
    if src.hosts.is_empty() {
        return Err(AgentError::Invalid(
            "an rbd pool needs its monitors; give --source-host MON[:PORT]".into(),
        ));
    }
    for h in &src.hosts {
        let ok = !h.name.is_empty()
            && h.name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._:[]".contains(&b));
        if !ok {
            return Err(AgentError::Invalid(format!(
                "monitor '{}' is not a host name or address; give --source-host MON[:PORT]",
                h.name
            )));
        }
    }
    let name_ok = !src.name.is_empty()
        && src
            .name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if !name_ok {
        return Err(AgentError::Invalid(format!(
            "Ceph pool '{}' is not a plain pool name; give --source-name POOL",
            src.name
        )));
    }
    if let Some(a) = &src.auth {
        a.check().map_err(|e| AgentError::Invalid(e.to_string()))?;
    }
    Ok(())
}

/// What `qemu-img` opens image `image` of `src` by: QEMU's legacy
/// `rbd:POOL/IMAGE:opt=val…` filename, with the monitors, the cephx id and
/// the key as a file (`keyfile`, mode 0600), never the key itself, and no
/// host ceph.conf (`conf=/dev/null`), as the agent's own `rbd` calls.
/// `:` inside a value is escaped as QEMU's parser wants (`\:`).
pub fn img_filename(src: &RbdSource, image: &str, keyfile: Option<&std::path::Path>) -> String {
    let esc = |v: &str| v.replace('\\', "\\\\").replace(':', "\\:");
    let mut s = format!(
        "rbd:{}/{}:conf=/dev/null:mon_host={}:client_mount_timeout={MOUNT_TIMEOUT_SECS}",
        esc(&src.name),
        esc(image),
        esc(&src.mon_host())
    );
    match (&src.auth, keyfile) {
        (Some(a), Some(k)) => {
            s.push_str(&format!(
                ":id={}:keyfile={}",
                esc(&a.username),
                esc(&k.display().to_string())
            ));
        }
        _ => s.push_str(":auth_client_required=none"),
    }
    s
}

/// One rbd pool's view of its cluster.
pub(super) struct Cluster<'a> {
    pool: &'a str,
    /// What messages name: "storage pool 'P'" or "disk 'vda' of domain 'D'".
    what: String,
    src: &'a RbdSource,
    secrets: &'a Secrets,
}

#[derive(Deserialize)]
struct Listed {
    image: String,
    size: u64,
}

#[derive(Deserialize)]
struct Du {
    images: Vec<DuImage>,
}

#[derive(Deserialize)]
struct DuImage {
    #[serde(default)]
    used_size: u64,
    #[serde(default)]
    provisioned_size: u64,
}

impl<'a> Cluster<'a> {
    /// The cluster of rbd pool `pool`.
    pub(super) fn new(pool: &'a str, src: &'a RbdSource, secrets: &'a Secrets) -> Self {
        Cluster {
            pool,
            what: format!("storage pool '{pool}'"),
            src,
            secrets,
        }
    }

    /// The cluster of a network disk, named `what` in messages.
    pub(super) fn for_disk(what: String, src: &'a RbdSource, secrets: &'a Secrets) -> Self {
        Cluster {
            pool: "",
            what,
            src,
            secrets,
        }
    }

    /// `-c /dev/null -m MONS [--id ID --keyfile FILE]`.
    fn base_args(&self) -> Result<Vec<String>> {
        let mut a: Vec<String> = vec![
            "-c".into(),
            "/dev/null".into(),
            "--client-mount-timeout".into(),
            MOUNT_TIMEOUT_SECS.into(),
            "--rados-mon-op-timeout".into(),
            MON_OP_TIMEOUT_SECS.into(),
        ];
        a.push("-m".into());
        a.push(self.src.mon_host());
        match &self.src.auth {
            Some(auth) => {
                let key: PathBuf = self
                    .secrets
                    .value_file(&auth.secret)
                    .map_err(|e| AgentError::Invalid(format!("{}: {e}", self.what)))?;
                a.extend([
                    "--id".into(),
                    auth.username.clone(),
                    "--keyfile".into(),
                    key.display().to_string(),
                ]);
            }
            None => a.extend(["--auth-client-required".into(), "none".into()]),
        }
        Ok(a)
    }

    /// Runs `prog` with the cluster arguments and `args`; its stdout.
    async fn call(&self, prog: &str, args: &[&str]) -> Result<Vec<u8>> {
        let mut cmd = Command::new(prog);
        cmd.args(self.base_args()?)
            .args(args)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        let out = tokio::time::timeout(CALL_TIMEOUT, cmd.output())
            .await
            .map_err(|_| {
                AgentError::Timeout(format!(
                    "{}: '{prog} {}' got no answer from monitors {} in {}s",
                    self.what,
                    args.first().copied().unwrap_or_default(),
                    self.src.mon_host(),
                    CALL_TIMEOUT.as_secs()
                ))
            })?
            .map_err(|e| {
                AgentError::Failed(format!(
                    "cannot run '{prog}' for {}: {e}; install ceph-common",
                    self.what
                ))
            })?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            let last = err
                .lines()
                .rev()
                .find(|l| {
                    // librados' own timestamped log lines are noise here.
                    let l = l.trim();
                    !l.is_empty()
                        && !l.starts_with(|c: char| c.is_ascii_digit())
                        && !l.contains("did not load config file")
                })
                .unwrap_or("")
                .trim()
                .to_string();
            let hint = if last.contains("couldn't connect to the cluster") {
                let who = self
                    .src
                    .auth
                    .as_ref()
                    .map(|a| format!("client.{} with the key of secret {}", a.username, a.secret))
                    .unwrap_or_else(|| "a client without cephx".into());
                format!(
                    " (monitors {} did not accept {who} within {MOUNT_TIMEOUT_SECS} s: check the key with 'tern secret-set-value', the user and the monitors)",
                    self.src.mon_host()
                )
            } else {
                String::new()
            };
            return Err(AgentError::Failed(format!(
                "{}: {prog} {} failed: {last}{hint}",
                self.what,
                args.first().copied().unwrap_or_default(),
            )));
        }
        Ok(out.stdout)
    }

    fn spec(&self, name: &str) -> String {
        format!("{}/{name}", self.src.name)
    }

    fn no_volume(&self, name: &str) -> AgentError {
        AgentError::NoVolume {
            pool: self.pool.into(),
            name: name.into(),
        }
    }

    /// Before QEMU opens an image: the cluster takes the credentials and
    /// the image exists. QEMU itself would wait for minutes on a wrong key
    /// and then say nothing useful.
    pub(super) async fn probe_image(&self, image: &str) -> Result<()> {
        self.call("rbd", &["info", &self.spec(image)])
            .await
            .map(|_| ())
    }

    /// The cluster's fsid (`ceph fsid`): the identity of the storage.
    pub(super) async fn fsid(&self) -> Result<String> {
        let out = self.call("ceph", &["fsid"]).await?;
        let fsid = String::from_utf8_lossy(&out).trim().to_string();
        if fsid.is_empty() {
            return Err(AgentError::Failed(format!(
                "{}: ceph fsid printed nothing",
                self.what
            )));
        }
        Ok(fsid)
    }

    /// `pool-start`: the cluster answers and the Ceph pool exists.
    pub(super) async fn check(&self) -> Result<()> {
        self.call("rbd", &["ls", &self.src.name]).await.map(|_| ())
    }

    /// (capacity, allocation, available) of the Ceph pool; zeros when the
    /// cluster does not say.
    pub(super) async fn space(&self) -> (u64, u64, u64) {
        let out = match self.call("ceph", &["df", "--format", "json"]).await {
            Ok(o) => o,
            Err(e) => {
                tracing::warn!(pool = %self.what, error = %e, "cannot read Ceph pool space");
                return (0, 0, 0);
            }
        };
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap_or_default();
        let stats = v["pools"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["name"] == self.src.name.as_str()))
            .map(|p| p["stats"].clone())
            .unwrap_or_default();
        let used = stats["bytes_used"].as_u64().unwrap_or(0);
        let avail = stats["max_avail"].as_u64().unwrap_or(0);
        (used + avail, used, avail)
    }

    /// `vol-list`.
    pub(super) async fn list(&self) -> Result<Vec<VolumeInfo>> {
        let out = self
            .call("rbd", &["ls", "-l", "--format", "json", &self.src.name])
            .await?;
        let listed: Vec<Listed> = serde_json::from_slice(&out).unwrap_or_default();
        let mut names: Vec<&Listed> = listed.iter().collect();
        names.sort_by(|a, b| a.image.cmp(&b.image));
        names.dedup_by(|a, b| a.image == b.image);
        Ok(names
            .into_iter()
            .map(|l| self.volume(&l.image, l.size, l.size))
            .collect())
    }

    fn volume(&self, name: &str, capacity: u64, allocation: u64) -> VolumeInfo {
        VolumeInfo {
            name: name.into(),
            // What libvirt's vol-path prints for an rbd volume.
            path: PathBuf::from(self.spec(name)),
            format: "raw".into(),
            capacity,
            allocation,
            backing: None,
        }
    }

    /// `vol-info`: size from `rbd du` (which also tells what is written).
    pub(super) async fn info(&self, name: &str) -> Result<VolumeInfo> {
        tern_model::names::validate_name("volume", name)?;
        let out = match self
            .call("rbd", &["du", "--format", "json", &self.spec(name)])
            .await
        {
            Ok(o) => o,
            Err(e) if e.to_string().contains("No such file") => return Err(self.no_volume(name)),
            Err(e) => return Err(e),
        };
        let du: Du = serde_json::from_slice(&out)
            .map_err(|e| AgentError::Failed(format!("{}: rbd du: {e}", self.what)))?;
        let img = du.images.first().ok_or_else(|| self.no_volume(name))?;
        Ok(self.volume(name, img.provisioned_size, img.used_size))
    }

    /// `vol-create-as`: a raw image (RBD images have no qcow2 layer; clones
    /// of a backing image are `rbd clone`, not offered here).
    pub(super) async fn create(
        &self,
        name: &str,
        capacity: Option<u64>,
        format: &str,
        backing: Option<&str>,
    ) -> Result<VolumeInfo> {
        if format != "raw" || backing.is_some() {
            return Err(AgentError::Invalid(format!(
                "storage pool '{}' is an rbd pool: its volumes are raw RBD images; give --format raw and no backing volume",
                self.pool
            )));
        }
        let bytes = capacity.ok_or_else(|| {
            AgentError::Invalid("volume size is missing; give a size such as 1G".into())
        })?;
        if self.list().await?.iter().any(|v| v.name == name) {
            return Err(AgentError::Conflict(format!(
                "storage volume '{name}' already exists in pool '{}'",
                self.pool
            )));
        }
        // rbd takes sizes in whole units; KiB keeps byte sizes exact enough.
        let size = format!("{}K", bytes.div_ceil(1024));
        self.call("rbd", &["create", "--size", &size, &self.spec(name)])
            .await?;
        self.info(name).await
    }

    /// The client addresses that have image `name` open (its watchers):
    /// what a fence blocklists.
    pub(super) async fn watchers(&self, name: &str) -> Result<Vec<String>> {
        let out = self
            .call("rbd", &["status", "--format", "json", &self.spec(name)])
            .await?;
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap_or_default();
        Ok(v["watchers"]
            .as_array()
            .map(|w| {
                w.iter()
                    .filter_map(|x| x["address"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// The client addresses holding a lock on image `name` (`rbd lock
    /// ls`): on Ceph 16 the exclusive lock a writing QEMU's librbd takes
    /// (`auto COOKIE`) shows there, with its owner's address, and stays
    /// after the owner's watch has expired, until it is broken.
    pub(super) async fn lock_owners(&self, name: &str) -> Result<Vec<String>> {
        let out = self
            .call("rbd", &["lock", "ls", "--format", "json", &self.spec(name)])
            .await?;
        Ok(lock_owners(&out))
    }

    /// Every client of image `name`: its watchers and its lock owners,
    /// each address once.
    pub(super) async fn clients(&self, name: &str) -> Result<Vec<String>> {
        let mut all = self.watchers(name).await?;
        for o in self.lock_owners(name).await? {
            if !all.contains(&o) {
                all.push(o);
            }
        }
        Ok(all)
    }

    /// Adds (or with `remove`, removes) `addrs` to the cluster's OSD
    /// blocklist, then reads the blocklist back: the addresses it confirms
    /// are on it (with `remove`: off it). A blocklisted client's every
    /// write is refused by the OSDs, so a cut-off host cannot corrupt an
    /// image another host now runs (issue 21). Adding needs the mon cap
    /// `profile rbd`; removing needs `allow command "osd blocklist"`.
    pub(super) async fn blocklist(&self, addrs: &[String], remove: bool) -> Result<Vec<String>> {
        for a in addrs {
            check_client_addr(a)?;
            let args: Vec<&str> = if remove {
                vec!["osd", "blocklist", "rm", a]
            } else {
                vec!["osd", "blocklist", "add", a, BLOCKLIST_SECONDS]
            };
            if let Err(e) = self.call("ceph", &args).await {
                // Removing an entry that is gone is not an error.
                if !(remove && e.to_string().contains("isn't blocklisted")) {
                    return Err(e);
                }
            }
        }
        let out = self
            .call("ceph", &["osd", "dump", "--format", "json"])
            .await?;
        let listed = blocklisted(&out);
        Ok(addrs
            .iter()
            .filter(|a| listed.contains(a) != remove)
            .cloned()
            .collect())
    }

    /// `vol-resize`: refused while a QEMU has the image open (the guest
    /// would not learn its new size).
    pub(super) async fn resize(&self, name: &str, bytes: u64, shrink: bool) -> Result<()> {
        let open = self.watchers(name).await?;
        if !open.is_empty() {
            return Err(AgentError::Conflict(format!(
                "storage volume '{name}' of pool '{}' is open ({}), a guest running on some host; stop it first",
                self.pool,
                open.join(", ")
            )));
        }
        let size = format!("{}K", bytes.div_ceil(1024));
        let spec = self.spec(name);
        let mut args = vec!["resize", "--no-progress", "--size", &size];
        if shrink {
            args.push("--allow-shrink");
        }
        args.push(&spec);
        self.call("rbd", &args).await.map(|_| ())
    }

    /// `vol-delete`: refused while a QEMU has the image open.
    pub(super) async fn delete(&self, name: &str) -> Result<()> {
        tern_model::names::validate_name("volume", name)?;
        if !self.list().await?.iter().any(|v| v.name == name) {
            return Err(self.no_volume(name));
        }
        let open = self.watchers(name).await?;
        if !open.is_empty() {
            return Err(AgentError::Conflict(format!(
                "storage volume '{name}' of pool '{}' is open by {} ({}), a guest running on some host; stop it first",
                self.pool,
                if open.len() == 1 { "one client".to_string() } else { format!("{} clients", open.len()) },
                open.join(", ")
            )));
        }
        self.call("rbd", &["rm", "--no-progress", &self.spec(name)])
            .await
            .map(|_| ())
    }
}

/// Refuses what is not a Ceph client address (`IP:PORT/NONCE`, IPv6 in
/// brackets): it goes on a `ceph` command line.
pub fn check_client_addr(a: &str) -> Result<()> {
    let ok = a.contains('/')
        && a.len() < 80
        && a.bytes()
            .all(|b| b.is_ascii_hexdigit() || b":./[]".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(AgentError::Invalid(format!(
            "'{a}' is not a Ceph client address (IP:PORT/NONCE, as 'rbd status' shows watchers)"
        )))
    }
}

/// The lock owners' addresses from `rbd lock ls --format json`: a list of
/// `{id, locker, address}` (Ceph 16), or an object keyed by lock id.
pub fn lock_owners(lock_ls: &[u8]) -> Vec<String> {
    let v: serde_json::Value = serde_json::from_slice(lock_ls).unwrap_or_default();
    let entries: Vec<&serde_json::Value> = match &v {
        serde_json::Value::Array(a) => a.iter().collect(),
        serde_json::Value::Object(m) => m.values().collect(),
        _ => Vec::new(),
    };
    let mut out: Vec<String> = Vec::new();
    for a in entries.iter().filter_map(|e| e["address"].as_str()) {
        if !out.iter().any(|o| o == a) {
            out.push(a.to_string());
        }
    }
    out
}

/// The addresses on the OSD map's blocklist, from `ceph osd dump --format
/// json` (`blocklist`, `blacklist` before Pacific; an object keyed by
/// address, or a list of `{addr}` records).
pub fn blocklisted(osd_dump: &[u8]) -> Vec<String> {
    let v: serde_json::Value = serde_json::from_slice(osd_dump).unwrap_or_default();
    let list = if v["blocklist"].is_null() {
        &v["blacklist"]
    } else {
        &v["blocklist"]
    };
    match list {
        serde_json::Value::Object(m) => m.keys().cloned().collect(),
        serde_json::Value::Array(a) => a
            .iter()
            .filter_map(|e| e["addr"].as_str().map(str::to_string))
            .collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_model::{CephAuth, NetHost, SecretRef};

    fn src(host: &str, name: &str, user: &str) -> RbdSource {
        RbdSource {
            hosts: vec![NetHost {
                name: host.into(),
                port: Some(6789),
            }],
            name: name.into(),
            auth: Some(CephAuth {
                username: user.into(),
                secret: SecretRef::Usage("client.x secret".into()),
            }),
        }
    }

    #[test]
    fn qemu_img_gets_monitors_id_and_key_file_but_never_the_key() {
        let s = src("127.0.0.1", "rbd", "qemu");
        let f = img_filename(
            &s,
            "vm1",
            Some(std::path::Path::new("/var/lib/tern/secrets/u.value")),
        );
        assert_eq!(
            f,
            "rbd:rbd/vm1:conf=/dev/null:mon_host=127.0.0.1\\:6789:client_mount_timeout=10:id=qemu:keyfile=/var/lib/tern/secrets/u.value"
        );
        let mut open = s.clone();
        open.auth = None;
        open.hosts.push(NetHost {
            name: "10.0.0.2".into(),
            port: None,
        });
        assert_eq!(
            img_filename(&open, "vm1", None),
            "rbd:rbd/vm1:conf=/dev/null:mon_host=127.0.0.1\\:6789,10.0.0.2\\:6789:client_mount_timeout=10:auth_client_required=none"
        );
    }

    #[test]
    fn blocklists_are_read_in_both_forms_and_addresses_checked() {
        let obj = br#"{"epoch":9,"blocklist":{"127.0.0.1:0/3012345":"2026-12-06T16:00:00"}}"#;
        assert_eq!(blocklisted(obj), vec!["127.0.0.1:0/3012345".to_string()]);
        let arr = br#"{"blacklist":[{"addr":"10.0.0.2:0/77","until":"x"}]}"#;
        assert_eq!(blocklisted(arr), vec!["10.0.0.2:0/77".to_string()]);
        assert!(blocklisted(b"{}").is_empty());
        assert!(check_client_addr("127.0.0.1:0/3012345").is_ok());
        assert!(check_client_addr("[::1]:0/42").is_ok());
        for bad in ["127.0.0.1", "a;b/1", "1.2.3.4:0/1 --yes", ""] {
            assert!(check_client_addr(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn lock_owners_are_read_in_both_forms() {
        let list = br#"[{"id":"auto 140187866763600","locker":"client.4121","address":"127.0.0.1:0/1174912146"}]"#;
        assert_eq!(
            lock_owners(list),
            vec!["127.0.0.1:0/1174912146".to_string()]
        );
        let obj = br#"{"auto 1":{"locker":"client.9","address":"10.0.0.2:0/7"}}"#;
        assert_eq!(lock_owners(obj), vec!["10.0.0.2:0/7".to_string()]);
        assert!(lock_owners(b"[]").is_empty());
        assert!(lock_owners(b"").is_empty());
    }

    #[test]
    fn definitions_that_cannot_reach_ceph_are_refused() {
        assert!(check_source(&src("127.0.0.1", "rbd", "admin")).is_ok());
        for (h, n, u, want) in [
            ("a b", "rbd", "admin", "--source-host"),
            ("h", "rb/d", "admin", "--source-name"),
            ("h", "", "admin", "--source-name"),
            ("h", "rbd", "client.x,y", "--auth-username"),
        ] {
            let e = check_source(&src(h, n, u)).unwrap_err().to_string();
            assert!(e.contains(want), "{h} {n} {u}: {e}");
        }
        let mut none = src("h", "rbd", "admin");
        none.hosts.clear();
        assert!(check_source(&none).is_err());
    }
}
