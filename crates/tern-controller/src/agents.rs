//! Clients for the agents' APIs, built only from URIs that may be
//! followed ([`tern_api::peer`]: never `ssh`, `?pkipath=` or `?command=`,
//! which would come from a host's report) and with the controller's own
//! certificates.
//!
//! The certificate directory is set once at start-up ([`use_pki`]) rather
//! than threaded through every caller: the evacuation, job and sync code
//! all reach agents through [`crate::evacuate::host_client`].

use std::sync::OnceLock;
use tern_api::{Client, ClientError};
use tern_model::uri::ConnectUri;
use tern_pki::PkiDir;

static PKI: OnceLock<PkiDir> = OnceLock::new();

/// Makes `dir` the certificates the controller presents to agents (its
/// `clientcert.pem`, checked by agents against their CA). Set once; later
/// calls are ignored.
pub fn use_pki(dir: PkiDir) {
    let _ = PKI.set(dir);
}

fn pki() -> PkiDir {
    PKI.get().cloned().unwrap_or_else(PkiDir::from_env)
}

/// A client for the agent at `uri`, a URI from a host's report.
pub fn client(uri: &str) -> Result<Client, ClientError> {
    let parsed: ConnectUri =
        uri.parse()
            .map_err(|e: tern_model::uri::UriError| ClientError::Http {
                target: uri.to_string(),
                message: e.to_string(),
            })?;
    tern_api::peer::client(&parsed, &pki())
}
