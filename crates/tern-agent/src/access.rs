//! Who may do what on a connection: read-write, read-only, or nothing.
//!
//! Unix sockets decide by which socket was used (the read-write socket
//! with unix_sock_rw_perms, `<socket>-ro` with unix_sock_ro_perms), as
//! libvirtd. TLS decides by the client certificate's common name against
//! `tls_allowed_dn_list` and `tls_readonly_dn_list`. Plain TCP is read-write
//! for anyone, which is why it needs `--auth none` spelled out.

use tern_api::{ApiError, ErrorCode, Request};

/// What a connection may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Grant {
    /// Anything.
    ReadWrite,
    /// Only requests for which [`Request::is_read_only`] holds.
    ReadOnly,
    /// Another cluster host (a certificate of `tern pki issue-host`): reads,
    /// and the destination's side of a migration it drives (Prepare,
    /// Finish, post-copy recovery, the bandwidth probe). It cannot make
    /// this host send a guest away, nor start, stop or define anything else.
    Peer,
    /// Nothing; the reason is told to the client on every request.
    Refused(String),
}

/// The message of a refused change on a read-only connection.
pub const READ_ONLY_REFUSAL: &str = "operation forbidden: read-only connection";

/// The message of a request a peer host may not make.
pub const PEER_REFUSAL: &str =
    "operation forbidden: a host certificate may only read and receive migrations on its peers";

/// What a peer host asks of a destination it migrates to.
fn peer_may(req: &Request) -> bool {
    use tern_api::MigrationRequest as M;
    matches!(
        req,
        Request::Migration(
            M::MigratePrepare { .. }
                | M::MigrateFinish { .. }
                | M::MigrateRecover { .. }
                | M::MigrateQuery { .. }
                | M::ProbeSink {}
        )
    )
}

/// Whether `grant` allows `req`.
pub fn check(grant: &Grant, req: &Request) -> Result<(), ApiError> {
    match grant {
        Grant::ReadWrite => Ok(()),
        Grant::ReadOnly if req.is_read_only() => Ok(()),
        Grant::ReadOnly => Err(ApiError::new(ErrorCode::Forbidden, READ_ONLY_REFUSAL)),
        Grant::Peer if req.is_read_only() || peer_may(req) => Ok(()),
        Grant::Peer => Err(ApiError::new(ErrorCode::Forbidden, PEER_REFUSAL)),
        Grant::Refused(why) => Err(ApiError::new(ErrorCode::Forbidden, why.clone())),
    }
}

/// The TLS identity rules (`tls_allowed_dn_list`, `tls_readonly_dn_list`).
/// Entries are patterns on the certificate's common name, written `name`
/// or `CN=name`, with `*` and `?` wildcards.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsRules {
    /// Names allowed in (empty: every certificate the CA signed).
    pub allowed: Vec<String>,
    /// Names that may only read.
    pub read_only: Vec<String>,
}

impl TlsRules {
    /// The grant of a verified client certificate: a host certificate
    /// (`tern pki issue-host`) is a [`Grant::Peer`] unless a read-only
    /// rule names it; others as [`TlsRules::grant`].
    pub fn grant_identity(&self, id: Option<&tern_pki::PeerIdentity>) -> Grant {
        match id {
            Some(i) if i.host => match self.grant(Some(&i.cn)) {
                Grant::ReadWrite => Grant::Peer,
                other => other,
            },
            other => self.grant(other.map(|i| i.cn.as_str())),
        }
    }

    /// The grant of a client whose certificate (already verified against
    /// the CA) has common name `cn`.
    pub fn grant(&self, cn: Option<&str>) -> Grant {
        let Some(cn) = cn else {
            return Grant::Refused(
                "operation forbidden: the client certificate has no common name (CN); issue one with `tern pki issue-client NAME`".into(),
            );
        };
        let any = |list: &[String]| list.iter().any(|p| glob(strip_cn(p), cn));
        if any(&self.read_only) {
            Grant::ReadOnly
        } else if self.allowed.is_empty() || any(&self.allowed) {
            Grant::ReadWrite
        } else {
            Grant::Refused(format!(
                "operation forbidden: certificate name '{cn}' is not in this agent's tls_allowed_dn_list; ask its administrator to add it"
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

pub use tern_pki::names::glob;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_names() {
        assert!(glob("admin", "admin"));
        assert!(!glob("admin", "admin2"));
        assert!(glob("host*", "host12"));
        assert!(glob("*", ""));
        assert!(glob("h?st-*-a", "host-12-a"));
        assert!(!glob("h?st-*-a", "host-12-b"));
    }

    #[test]
    fn tls_rules_grant_by_common_name() {
        let open = TlsRules::default();
        assert_eq!(open.grant(Some("anyone")), Grant::ReadWrite);
        assert!(matches!(open.grant(None), Grant::Refused(_)));
        let r = TlsRules {
            allowed: vec!["CN=admin".into(), "host*".into()],
            read_only: vec!["monitor".into()],
        };
        assert_eq!(r.grant(Some("admin")), Grant::ReadWrite);
        assert_eq!(r.grant(Some("host7")), Grant::ReadWrite);
        assert_eq!(r.grant(Some("monitor")), Grant::ReadOnly);
        match r.grant(Some("mallory")) {
            Grant::Refused(m) => {
                assert!(m.contains("'mallory'") && m.contains("tls_allowed_dn_list"))
            }
            g => panic!("{g:?}"),
        }
    }

    #[test]
    fn host_certificates_only_receive_migrations() {
        let host = tern_pki::PeerIdentity {
            cn: "b".into(),
            host: true,
            dn: "O=Tern,OU=Tern hosts,CN=b".into(),
        };
        let g = TlsRules::default().grant_identity(Some(&host));
        assert_eq!(g, Grant::Peer);
        let p2p = Request::Migration(tern_api::MigrationRequest::MigrateP2p {
            name: "vm".into(),
            dest_uri: "tern+tls://evil/system".into(),
            options: Default::default(),
            id: None,
        });
        assert_eq!(check(&g, &p2p).unwrap_err().message, PEER_REFUSAL);
        let destroy = Request::Destroy { name: "vm".into() };
        assert!(check(&g, &destroy).is_err());
        assert!(check(&g, &Request::NodeInfo).is_ok());
        assert!(check(
            &g,
            &Request::Migration(tern_api::MigrationRequest::ProbeSink {})
        )
        .is_ok());
    }

    #[test]
    fn read_only_grants_refuse_changes_clearly() {
        let list = Request::List { all: true };
        let start = Request::Start {
            name: "g".into(),
            paused: false,
        };
        assert!(check(&Grant::ReadOnly, &list).is_ok());
        let e = check(&Grant::ReadOnly, &start).unwrap_err();
        assert_eq!(e.message, READ_ONLY_REFUSAL);
        assert_eq!(e.code, ErrorCode::Forbidden);
        assert!(check(&Grant::ReadWrite, &start).is_ok());
        assert!(check(&Grant::Refused("no".into()), &list).is_err());
    }
}
