//! Who may call the cluster API, and what they may do.
//!
//! The API is served on mutual TLS with the `tern pki` CA; the client
//! certificate is the identity (`--auth none` on plain HTTP is for
//! development only). Two kinds of identities, as in Kubernetes's node
//! authorizer:
//!
//! - **Hosts** present a certificate issued by `tern pki issue-host NAME`
//!   (CN = the host's name, OU = [`tern_pki::HOST_OU`]). A host may
//!   register, heartbeat and announce its shutdown for the host its
//!   certificate names and no other, and read. It cannot migrate or
//!   evacuate anything.
//! - **Operators** present any other certificate of the CA. Their CN is
//!   matched against `--tls-readonly-dn` (read-only) and
//!   `--tls-allowed-dn` (read-write; when empty, every operator
//!   certificate the CA signed), with the agent's `tls_*_dn_list` rules.
//!
//! Which requests read and which change is [`crate::console::access`]'s
//! classification, shared with the web console.

use crate::console::{access, Access};
use tern_api::cluster::ClusterRequest;
use tern_api::{ApiError, ErrorCode};
use tern_pki::PeerIdentity;

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// Plain HTTP with `--auth none`: anyone, for anything.
    Unauthenticated,
    /// A host certificate naming this host.
    Host(String),
    /// An operator allowed to change things.
    ReadWrite(String),
    /// An operator who may only look.
    ReadOnly(String),
    /// A certificate of the CA that no rule lets in; the reason.
    Refused(String),
}

impl Caller {
    /// For logs.
    pub fn name(&self) -> &str {
        match self {
            Caller::Unauthenticated => "unauthenticated",
            Caller::Host(n) | Caller::ReadWrite(n) | Caller::ReadOnly(n) => n,
            Caller::Refused(_) => "refused",
        }
    }
}

/// The operator rules (`--tls-allowed-dn`, `--tls-readonly-dn`): patterns
/// on the certificate's CN, `name` or `CN=name`, with `*` and `?`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rules {
    /// Read-write operators (empty: every operator certificate).
    pub allowed: Vec<String>,
    /// Read-only operators (checked first).
    pub read_only: Vec<String>,
}

impl Rules {
    /// The caller a verified client certificate makes.
    pub fn caller(&self, id: Option<&PeerIdentity>) -> Caller {
        let Some(id) = id else {
            return Caller::Refused(
                "the client certificate has no common name (CN); issue one with `tern pki issue-client NAME`".into(),
            );
        };
        if id.host {
            return Caller::Host(id.cn.clone());
        }
        let any = |list: &[String]| {
            list.iter()
                .any(|p| tern_pki::names::glob(strip_cn(p), &id.cn))
        };
        if any(&self.read_only) {
            Caller::ReadOnly(id.cn.clone())
        } else if self.allowed.is_empty() || any(&self.allowed) {
            Caller::ReadWrite(id.cn.clone())
        } else {
            Caller::Refused(format!(
                "certificate name '{}' is not in this controller's --tls-allowed-dn; ask its administrator to add it",
                id.cn
            ))
        }
    }
}

fn strip_cn(p: &str) -> &str {
    let p = p.trim();
    match p.get(..3) {
        Some(head) if head.eq_ignore_ascii_case("cn=") => &p[3..],
        _ => p,
    }
}

/// The host a host request speaks for (every name it carries must agree).
fn host_named(r: &ClusterRequest) -> Vec<&str> {
    match r {
        ClusterRequest::Register { report } => vec![&report.name],
        ClusterRequest::Heartbeat { host, report, .. } => {
            let mut names = vec![host.as_str()];
            names.extend(report.iter().map(|r| r.name.as_str()));
            names
        }
        ClusterRequest::HostShutdown { host } => vec![host],
        _ => Vec::new(),
    }
}

fn forbidden(msg: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::Forbidden, msg)
}

/// Whether `caller` may send `req`; a clear refusal otherwise.
pub fn check(caller: &Caller, req: &ClusterRequest) -> Result<(), ApiError> {
    let need = access(req);
    match (caller, need) {
        (Caller::Unauthenticated, _) => Ok(()),
        (Caller::Refused(why), _) => Err(forbidden(why.clone())),
        (_, Access::Read) => Ok(()),
        (Caller::Host(me), Access::Refused) => {
            match host_named(req).into_iter().find(|n| n != me) {
                None => Ok(()),
                Some(other) => Err(forbidden(format!(
                    "operation forbidden: this certificate belongs to host '{me}' and cannot speak for host '{other}'"
                ))),
            }
        }
        (Caller::Host(me), Access::Write) => Err(forbidden(format!(
            "operation forbidden: '{me}' is a host certificate; hosts cannot migrate or evacuate (use an operator certificate)"
        ))),
        (Caller::ReadWrite(_), Access::Write) => Ok(()),
        (Caller::ReadOnly(_), Access::Write) => Err(forbidden(
            "operation forbidden: read-only identity",
        )),
        (Caller::ReadWrite(n) | Caller::ReadOnly(n), Access::Refused) => Err(forbidden(format!(
            "operation forbidden: only a host certificate (`tern pki issue-host NAME`) may register or report; '{n}' is an operator"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_api::cluster::HostReport;

    fn id(cn: &str, host: bool) -> PeerIdentity {
        PeerIdentity {
            cn: cn.into(),
            host,
            dn: format!("CN={cn}"),
        }
    }

    fn register(name: &str) -> ClusterRequest {
        ClusterRequest::Register {
            report: HostReport {
                name: name.into(),
                ..Default::default()
            },
        }
    }

    #[test]
    fn hosts_speak_only_for_themselves_and_cannot_migrate() {
        let r = Rules::default();
        let a = r.caller(Some(&id("a", true)));
        assert_eq!(a, Caller::Host("a".into()));
        assert!(check(&a, &register("a")).is_ok());
        let e = check(&a, &register("b")).unwrap_err();
        assert!(e.message.contains("cannot speak for host 'b'"), "{e}");
        let hb = ClusterRequest::Heartbeat {
            host: "a".into(),
            lease: 1,
            report: Some(HostReport {
                name: "b".into(),
                ..Default::default()
            }),
            digest: String::new(),
        };
        assert!(check(&a, &hb).is_err());
        assert!(check(&a, &ClusterRequest::JobList).is_ok());
        let mig = ClusterRequest::ServerLiveMigrate {
            id: "vm".into(),
            opts: Default::default(),
        };
        assert!(check(&a, &mig).is_err());
    }

    #[test]
    fn operators_by_rule() {
        let r = Rules {
            allowed: vec!["CN=admin".into()],
            read_only: vec!["view*".into()],
        };
        let mig = ClusterRequest::HostMaintenance { id: "a".into() };
        let admin = r.caller(Some(&id("admin", false)));
        assert!(check(&admin, &mig).is_ok());
        assert!(check(&admin, &register("admin")).is_err());
        let viewer = r.caller(Some(&id("viewer", false)));
        assert_eq!(viewer, Caller::ReadOnly("viewer".into()));
        assert!(check(&viewer, &ClusterRequest::ServerList).is_ok());
        let e = check(&viewer, &mig).unwrap_err();
        assert!(e.message.contains("read-only"), "{e}");
        let m = r.caller(Some(&id("mallory", false)));
        assert!(check(&m, &ClusterRequest::ServerList).is_err());
        assert!(matches!(r.caller(None), Caller::Refused(_)));
    }
}
