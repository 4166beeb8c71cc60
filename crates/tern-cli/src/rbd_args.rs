//! `pool-define-as NAME rbd --source-host MON[:PORT][,MON...] [--source-port
//! P] --source-name POOL [--auth-type ceph --auth-username ID
//! --secret-usage NAME | --secret-uuid UUID]`, virsh's spelling of
//! libvirt's `<pool type='rbd'>`.

use crate::{CliError, Result};
use tern_model::{CephAuth, NetHost, PoolInfo, RbdSource, SecretRef};

/// The flags of `pool-define-as` that describe an rbd pool.
#[derive(Debug, Default)]
pub(crate) struct RbdFlags {
    pub host: Option<String>,
    pub port: Option<u16>,
    pub name: Option<String>,
    pub auth_type: Option<String>,
    pub username: Option<String>,
    pub secret_usage: Option<String>,
    pub secret_uuid: Option<String>,
}

impl RbdFlags {
    /// Whether any rbd-only flag was given.
    pub fn any(&self) -> bool {
        self.name.is_some()
            || self.port.is_some()
            || self.auth_type.is_some()
            || self.username.is_some()
            || self.secret_usage.is_some()
            || self.secret_uuid.is_some()
    }
}

fn host(spec: &str, port: Option<u16>) -> Result<NetHost> {
    // `[v6::addr]:port`, `name:port` or a bare name/address.
    let (name, p) = match spec.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') || h.ends_with(']') => {
            let p = p.parse::<u16>().map_err(|_| {
                CliError::Usage(format!(
                    "monitor '{spec}' has a bad port; give --source-host MON[:PORT]"
                ))
            })?;
            (h.to_string(), Some(p))
        }
        _ => (spec.to_string(), port),
    };
    Ok(NetHost { name, port: p })
}

/// The Ceph side of an rbd pool, or a usage error naming what is missing.
pub(crate) fn rbd_source(f: RbdFlags) -> Result<RbdSource> {
    let (Some(hosts), Some(name)) = (f.host.as_deref(), f.name.clone()) else {
        return Err(CliError::Usage(
            "an rbd pool needs --source-host MON[:PORT] and --source-name CEPHPOOL".into(),
        ));
    };
    let hosts = hosts
        .split(',')
        .filter(|h| !h.is_empty())
        .map(|h| host(h, f.port))
        .collect::<Result<Vec<_>>>()?;
    if let Some(t) = f.auth_type.as_deref().filter(|t| *t != "ceph") {
        return Err(CliError::Usage(format!(
            "--auth-type {t} is not supported for rbd pools; give --auth-type ceph"
        )));
    }
    let secret = match (f.secret_usage, f.secret_uuid) {
        (Some(_), Some(_)) => {
            return Err(CliError::Usage(
                "give --secret-usage or --secret-uuid, not both".into(),
            ))
        }
        (Some(u), None) => Some(SecretRef::Usage(u)),
        (None, Some(u)) => Some(SecretRef::Uuid(u)),
        (None, None) => None,
    };
    let auth = match (f.username, secret) {
        (Some(username), Some(secret)) => Some(CephAuth { username, secret }),
        (None, None) => None,
        _ => return Err(CliError::Usage(
            "cephx needs both --auth-username ID and --secret-usage NAME (or --secret-uuid UUID)"
                .into(),
        )),
    };
    Ok(RbdSource { hosts, name, auth })
}

/// `pool-info`'s Source line for an rbd pool.
pub(crate) fn source_text(p: &PoolInfo) -> Option<String> {
    let r = p.def.rbd.as_ref()?;
    let user = r
        .auth
        .as_ref()
        .map(|a| format!(" as client.{} (secret {})", a.username, a.secret))
        .unwrap_or_default();
    Some(format!("{} on {}{user}", r.name, r.mon_host()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags() -> RbdFlags {
        RbdFlags {
            host: Some("10.0.0.1:6789,10.0.0.2".into()),
            name: Some("vms".into()),
            auth_type: Some("ceph".into()),
            username: Some("libvirt".into()),
            secret_usage: Some("client.libvirt secret".into()),
            ..Default::default()
        }
    }

    #[test]
    fn virsh_spelling_defines_an_rbd_pool() {
        let s = rbd_source(flags()).unwrap();
        assert_eq!(s.mon_host(), "10.0.0.1:6789,10.0.0.2:6789");
        assert_eq!(s.name, "vms");
        let a = s.auth.unwrap();
        assert_eq!(a.username, "libvirt");
        assert_eq!(a.secret, SecretRef::Usage("client.libvirt secret".into()));
        let s = rbd_source(RbdFlags {
            host: Some("mon1".into()),
            port: Some(3300),
            name: Some("p".into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(s.mon_host(), "mon1:3300");
        assert!(s.auth.is_none());
    }

    #[test]
    fn half_given_credentials_are_refused() {
        let mut f = flags();
        f.secret_usage = None;
        assert!(rbd_source(f).is_err());
        let mut f = flags();
        f.secret_uuid = Some("u".into());
        assert!(rbd_source(f).is_err());
        let mut f = flags();
        f.name = None;
        assert!(rbd_source(f).is_err());
        let mut f = flags();
        f.auth_type = Some("chap".into());
        assert!(rbd_source(f).is_err());
    }
}
