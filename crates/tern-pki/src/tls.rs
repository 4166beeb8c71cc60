//! Mutual-TLS configurations for servers (agents) and clients (the CLI, and
//! agents calling agents), and plain-language explanations of handshake
//! failures.
//!
//! Both sides speak TLS 1.3 only. A server requires a client certificate
//! chained to `cacert.pem`; a client verifies the server against the same CA
//! and the host name it dialled. Names, not addresses, identify clients:
//! [`peer_common_name`] gives the CN the server's access rules match.

use crate::layout::PkiDir;
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{AlertDescription, CertificateError, ClientConfig, RootCertStore, ServerConfig};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use thiserror::Error;

/// Why a TLS configuration could not be built.
#[derive(Debug, Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}; create it with `tern pki` or point --pki-dir / ?pkipath= / TERN_PKI_DIR at the right directory")]
    Read {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A file holds no certificate or key.
    #[error("{path} holds no PEM {what}; re-issue it with `tern pki`")]
    Empty {
        /// The file.
        path: PathBuf,
        /// "certificate" or "private key".
        what: &'static str,
    },
    /// rustls refused the certificate or key.
    #[error("cannot use the certificates in {dir}: {source}")]
    Config {
        /// The PKI directory.
        dir: PathBuf,
        /// Cause.
        #[source]
        source: rustls::Error,
    },
    /// The CA certificate could not be used as a trust anchor.
    #[error("cannot trust {path}: {message}")]
    Verifier {
        /// The CA file.
        path: PathBuf,
        /// What the verifier said.
        message: String,
    },
    /// The host to connect to is no valid TLS server name.
    #[error("'{0}' is not a host name or IP address TLS can verify")]
    ServerName(String),
}

/// The crypto provider every Tern TLS endpoint uses. AES-128-GCM comes
/// first (ring's default order puts AES-256 first): migration streams
/// are bulk data, and ten AES rounds instead of fourteen are a third less
/// cipher work per byte at a security level TLS 1.3 deems sufficient.
pub fn provider() -> Arc<CryptoProvider> {
    let mut p = rustls::crypto::ring::default_provider();
    p.cipher_suites.sort_by_key(|s| match s.suite() {
        rustls::CipherSuite::TLS13_AES_128_GCM_SHA256 => 0,
        rustls::CipherSuite::TLS13_AES_256_GCM_SHA384 => 1,
        _ => 2,
    });
    Arc::new(p)
}

/// Reads every certificate of a PEM file.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let data = std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut data.as_slice())
        .filter_map(Result::ok)
        .collect();
    if certs.is_empty() {
        return Err(TlsError::Empty {
            path: path.to_path_buf(),
            what: "certificate",
        });
    }
    Ok(certs)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let data = std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    match rustls_pemfile::private_key(&mut data.as_slice()) {
        Ok(Some(k)) => Ok(k),
        _ => Err(TlsError::Empty {
            path: path.to_path_buf(),
            what: "private key",
        }),
    }
}

/// The CA of `dir` as a root store.
pub fn load_roots(dir: &PkiDir) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for c in load_certs(&dir.ca_cert())? {
        roots.add(c).map_err(|e| TlsError::Verifier {
            path: dir.ca_cert(),
            message: e.to_string(),
        })?;
    }
    Ok(Arc::new(roots))
}

/// A server configuration from `dir`: serves `servercert.pem` and requires
/// a client certificate signed by `cacert.pem`.
pub fn server_config(dir: &PkiDir) -> Result<Arc<ServerConfig>, TlsError> {
    server_config_with(dir, true)
}

/// As [`server_config`], but a client certificate is asked for, not
/// required (the web console: browsers without one log in with a password).
pub fn server_config_optional_client(dir: &PkiDir) -> Result<Arc<ServerConfig>, TlsError> {
    server_config_with(dir, false)
}

/// TLS 1.3 only, serving `servercert.pem`, verifying client certificates
/// against `cacert.pem`; `required` says whether a client must show one.
fn server_config_with(dir: &PkiDir, required: bool) -> Result<Arc<ServerConfig>, TlsError> {
    let roots = load_roots(dir)?;
    let mut builder = WebPkiClientVerifier::builder_with_provider(roots, provider());
    if !required {
        builder = builder.allow_unauthenticated();
    }
    let verifier = builder.build().map_err(|e| TlsError::Verifier {
        path: dir.ca_cert(),
        message: e.to_string(),
    })?;
    let chain = load_certs(&dir.server_cert())?;
    let key = load_key(&dir.server_key())?;
    let cfg_err = |source| TlsError::Config {
        dir: dir.root().to_path_buf(),
        source,
    };
    let cfg = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(cfg_err)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(cfg_err)?;
    Ok(Arc::new(cfg))
}

/// A client configuration from `dir`: trusts `cacert.pem` and presents
/// `clientcert.pem`.
pub fn client_config(dir: &PkiDir) -> Result<Arc<ClientConfig>, TlsError> {
    let chain = load_certs(&dir.client_cert())?;
    let key = load_key(&dir.client_key())?;
    let cfg_err = |source| TlsError::Config {
        dir: dir.root().to_path_buf(),
        source,
    };
    let cfg = client_builder(dir)?
        .with_client_auth_cert(chain, key)
        .map_err(cfg_err)?;
    Ok(Arc::new(cfg))
}

/// The part of a client configuration that verifies the server; callers
/// add a client certificate (or, in tests of refusal, none).
pub fn client_builder(
    dir: &PkiDir,
) -> Result<rustls::ConfigBuilder<ClientConfig, rustls::client::WantsClientCert>, TlsError> {
    let roots = load_roots(dir)?;
    let verifier = WebPkiServerVerifier::builder_with_provider(roots, provider())
        .build()
        .map_err(|e| TlsError::Verifier {
            path: dir.ca_cert(),
            message: e.to_string(),
        })?;
    Ok(ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|source| TlsError::Config {
            dir: dir.root().to_path_buf(),
            source,
        })?
        .with_webpki_verifier(verifier))
}

/// The name a client verifies the server's certificate against.
pub fn server_name(host: &str) -> Result<ServerName<'static>, TlsError> {
    ServerName::try_from(host.to_string()).map_err(|_| TlsError::ServerName(host.into()))
}

/// The common name of the peer's end-entity certificate.
pub fn peer_common_name(certs: Option<&[CertificateDer<'_>]>) -> Option<String> {
    let der = certs?.first()?;
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
    let cn = cert.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_string)
}

/// Who a verified peer certificate names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    /// The common name.
    pub cn: String,
    /// Whether the certificate is a host's (OU [`crate::issue::HOST_OU`]).
    pub host: bool,
    /// The subject as QEMU's `tls-authz` compares it: GnuTLS's
    /// `gnutls_x509_crt_get_dn` string, attributes in certificate order
    /// (`O=Tern,OU=Tern hosts,CN=a`; QEMU 10 prints it so when it denies).
    pub dn: String,
}

/// The identity in the peer's end-entity certificate, if it has a CN.
pub fn peer_identity(certs: Option<&[CertificateDer<'_>]>) -> Option<PeerIdentity> {
    let der = certs?.first()?;
    identity_of(der.as_ref())
}

/// The identity in one DER certificate.
pub fn identity_of(der: &[u8]) -> Option<PeerIdentity> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let subject = cert.subject();
    let cn = subject
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_string();
    let host = subject
        .iter_organizational_unit()
        .any(|ou| ou.as_str().ok() == Some(crate::issue::HOST_OU));
    Some(PeerIdentity {
        cn,
        host,
        dn: gnutls_dn(subject),
    })
}

/// The identity of the first certificate of a PEM file (this host's own
/// `clientcert.pem`, say).
pub fn identity_of_file(path: &Path) -> Result<PeerIdentity, TlsError> {
    let certs = load_certs(path)?;
    identity_of(certs[0].as_ref()).ok_or_else(|| TlsError::Empty {
        path: path.to_path_buf(),
        what: "certificate with a common name",
    })
}

/// A subject as GnuTLS's `gnutls_x509_crt_get_dn` writes it: attributes
/// in certificate order, `,` between them, special characters escaped.
fn gnutls_dn(name: &x509_parser::x509::X509Name<'_>) -> String {
    let mut parts: Vec<String> = Vec::new();
    for rdn in name.iter() {
        for a in rdn.iter() {
            let key = match a.attr_type().to_id_string().as_str() {
                "2.5.4.3" => "CN",
                "2.5.4.11" => "OU",
                "2.5.4.10" => "O",
                "2.5.4.6" => "C",
                "2.5.4.7" => "L",
                "2.5.4.8" => "ST",
                other => return format!("unsupported attribute {other}"),
            };
            let v = a.as_str().unwrap_or("");
            let mut esc = String::new();
            for (i, c) in v.chars().enumerate() {
                if ",+\"<>;=".contains(c) || (i == 0 && (c == '#' || c == ' ')) {
                    esc.push('\\');
                }
                esc.push(c);
            }
            parts.push(format!("{key}={esc}"));
        }
    }
    parts.join(",")
}

/// Which end of a handshake is explaining a failure: the same rustls error
/// means "your certificate" on one side and "theirs" on the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The connecting party.
    Client,
    /// The listening party.
    Server,
}

/// Finds a rustls error anywhere in `err`'s chain (also inside
/// `std::io::Error`s, whose `source()` skips the error they wrap).
pub fn find_rustls_error<'a>(
    err: &'a (dyn std::error::Error + 'static),
) -> Option<&'a rustls::Error> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(r) = e.downcast_ref::<rustls::Error>() {
            return Some(r);
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if let Some(inner) = io.get_ref() {
                if let Some(r) = inner.downcast_ref::<rustls::Error>() {
                    return Some(r);
                }
            }
        }
        cur = e.source();
    }
    None
}

/// One sentence saying why a TLS exchange failed, from `side`'s point of
/// view, if the failure was a TLS one.
pub fn explain_tls_failure(err: &(dyn std::error::Error + 'static), side: Side) -> Option<String> {
    find_rustls_error(err).map(|e| explain(e, side))
}

fn explain(e: &rustls::Error, side: Side) -> String {
    use rustls::Error as E;
    let cert_problem = |c: &CertificateError| match c {
        CertificateError::Expired | CertificateError::ExpiredContext { .. } => "has expired",
        CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
            "is not valid yet (check the clocks)"
        }
        // A CA of the same name but another key fails on the signature.
        CertificateError::UnknownIssuer | CertificateError::BadSignature => {
            "is not signed by the trusted CA (cacert.pem)"
        }
        CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
            "is not valid for the host name dialled"
        }
        CertificateError::Revoked => "has been revoked",
        _ => "is invalid",
    };
    match (side, e) {
        (Side::Client, E::AlertReceived(AlertDescription::CertificateRequired)) => {
            "the server requires a client certificate and none was presented; issue one with `tern pki issue-client NAME`".into()
        }
        (Side::Client, E::AlertReceived(AlertDescription::UnknownCA)) => {
            "the server refused our client certificate: it is not signed by the server's CA".into()
        }
        (Side::Client, E::AlertReceived(AlertDescription::DecryptError)) => {
            "the server refused our client certificate: it is not signed by the server's CA (its signature does not verify; a CA of the same name but another key?)".into()
        }
        (Side::Client, E::AlertReceived(AlertDescription::CertificateExpired)) => {
            "the server refused our client certificate: it has expired or is not valid yet; issue a new one with `tern pki issue-client NAME`".into()
        }
        (Side::Client, E::AlertReceived(a)) => {
            format!("the server ended the TLS handshake ({a:?}); check its log")
        }
        (Side::Client, E::InvalidCertificate(c)) => {
            format!("the server's certificate {}", cert_problem(c))
        }
        (Side::Server, E::NoCertificatesPresented) => {
            "the client presented no certificate".into()
        }
        (Side::Server, E::InvalidCertificate(c)) => {
            format!("the client's certificate {}", cert_problem(c))
        }
        (Side::Server, E::AlertReceived(a)) => {
            format!("the client ended the TLS handshake ({a:?}); it probably does not trust our certificate")
        }
        (_, other) => format!("TLS failed: {other}"),
    }
}

#[cfg(test)]
mod tests;
