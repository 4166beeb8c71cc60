//! `--tls` on the native transport: each QEMU gets a `tls-creds-x509`
//! object built from its agent's pki directory — the destination as the
//! server (`servercert.pem`, client certificates required), the source as
//! the client (`clientcert.pem`, the destination's certificate checked
//! against the address it announced), as Cloudpods's `--enable-tls` does.
//!
//! QEMU reads its credentials from a directory with fixed names; Tern copies
//! the files into `<run dir>/migration-tls/` (0700, files 0600) just for
//! `object-add`, which loads them, and removes the directory right after.

use crate::error::{AgentError, Result};
use crate::Agent;
use serde_json::json;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use tern_migrate::options::TLS_CREDS_ID;
use tern_pki::PkiDir;

/// Which end of the migration's TLS a QEMU is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// The destination: listens, requires a client certificate.
    Server,
    /// The source: connects, checks the server's certificate.
    Client,
}

impl Endpoint {
    fn name(self) -> &'static str {
        match self {
            Endpoint::Server => "server",
            Endpoint::Client => "client",
        }
    }

    /// (file in the pki dir, name QEMU expects) pairs.
    fn files(self, pki: &PkiDir) -> [(PathBuf, &'static str); 3] {
        match self {
            Endpoint::Server => [
                (pki.ca_cert(), "ca-cert.pem"),
                (pki.server_cert(), "server-cert.pem"),
                (pki.server_key(), "server-key.pem"),
            ],
            Endpoint::Client => [
                (pki.ca_cert(), "ca-cert.pem"),
                (pki.client_cert(), "client-cert.pem"),
                (pki.client_key(), "client-key.pem"),
            ],
        }
    }
}

/// Copies the credentials QEMU needs into `dir`, each file 0600.
fn stage(pki: &PkiDir, endpoint: Endpoint, dir: &Path) -> Result<()> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(dir)
        .map_err(|e| AgentError::state(dir, e))?;
    for (from, to) in endpoint.files(pki) {
        let data = std::fs::read(&from).map_err(|e| {
            AgentError::Conflict(format!(
                "--tls needs {} on this host: {e}; issue it with `tern pki` or point --pki-dir at it",
                from.display()
            ))
        })?;
        let path = dir.join(to);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| AgentError::state(&path, e))?;
        std::io::Write::write_all(&mut f, &data).map_err(|e| AgentError::state(&path, e))?;
    }
    Ok(())
}

/// Gives `qmp`'s QEMU the migration TLS credentials of `endpoint` (replacing
/// any from an earlier attempt). The staged files are gone when this returns.
pub async fn add_credentials(
    agent: &Agent,
    qmp: &tern_qemu::Qmp,
    run_dir: &Path,
    endpoint: Endpoint,
) -> Result<()> {
    let pki = PkiDir::new(&agent.cfg.pki_dir);
    let dir = run_dir.join("migration-tls");
    // QEMU reads them after it dropped to its own user.
    let staged = stage(&pki, endpoint, &dir).and_then(|()| {
        crate::confine::user::hand_over_dir(&dir, agent.guest_user_at(run_dir)?.as_ref())
            .map_err(|e| AgentError::state(&dir, e))
    });
    let added = match staged {
        Ok(()) => {
            let _ = qmp
                .execute("object-del", Some(json!({ "id": TLS_CREDS_ID })))
                .await;
            qmp.execute(
                "object-add",
                Some(json!({
                    "qom-type": "tls-creds-x509",
                    "id": TLS_CREDS_ID,
                    "dir": dir,
                    "endpoint": endpoint.name(),
                    "verify-peer": true,
                })),
            )
            .await
            .map(|_| ())
            .map_err(|e| {
                AgentError::Failed(format!(
                    "QEMU refused the migration TLS certificates from {}: {e}",
                    pki.root().display()
                ))
            })
        }
        Err(e) => Err(e),
    };
    let _ = std::fs::remove_dir_all(&dir);
    added
}

/// Id of the destination QEMU's `authz-simple` object (`tls-authz`).
pub const TLS_AUTHZ_ID: &str = "tern-migration-authz";

/// The subject DN of this agent's `clientcert.pem`: what its QEMU presents
/// as a migration source, and what the destination lets in.
pub fn own_identity(agent: &Agent) -> Result<String> {
    let pki = PkiDir::new(&agent.cfg.pki_dir);
    tern_pki::tls::identity_of_file(&pki.client_cert())
        .map(|id| id.dn)
        .map_err(|e| {
            AgentError::Conflict(format!("--tls needs this host's client certificate: {e}"))
        })
}

/// Destination: only the certificate whose subject is `identity` (the
/// source agent's, as the driver relayed it from Begin) may send the
/// migration stream or write the NBD exports; any other certificate of
/// the CA, read-only operators' included, is refused by QEMU itself.
/// Returns the authz object's id for `tls-authz`.
pub async fn add_authz(qmp: &tern_qemu::Qmp, identity: Option<&str>) -> Result<&'static str> {
    let identity = identity.ok_or_else(|| {
        AgentError::Invalid(
            "--tls: the migration request does not say which certificate the source presents \
             (source_tls_identity); use a driver of this version"
                .into(),
        )
    })?;
    let _ = qmp
        .execute("object-del", Some(json!({ "id": TLS_AUTHZ_ID })))
        .await;
    qmp.execute(
        "object-add",
        Some(json!({
            "qom-type": "authz-simple",
            "id": TLS_AUTHZ_ID,
            "identity": identity,
        })),
    )
    .await
    .map_err(|e| AgentError::Failed(format!("QEMU refused the migration's tls-authz: {e}")))?;
    Ok(TLS_AUTHZ_ID)
}
