//! Where the CA, certificates and keys live.

use std::path::{Path, PathBuf};

/// Directory used when neither a flag, `?pkipath=` nor [`PKI_DIR_ENV`] names one.
pub const DEFAULT_PKI_DIR: &str = "/etc/pki/tern";

/// Environment variable overriding [`DEFAULT_PKI_DIR`] for clients.
pub const PKI_DIR_ENV: &str = "TERN_PKI_DIR";

/// One PKI directory and the names of the files in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PkiDir {
    root: PathBuf,
}

impl PkiDir {
    /// The layout rooted at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        PkiDir { root: root.into() }
    }

    /// The client default: `$TERN_PKI_DIR`, else [`DEFAULT_PKI_DIR`].
    pub fn from_env() -> Self {
        match std::env::var_os(PKI_DIR_ENV) {
            Some(d) if !d.is_empty() => PkiDir::new(d),
            _ => PkiDir::new(DEFAULT_PKI_DIR),
        }
    }

    /// The directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }
    /// `private/`, holding the keys.
    pub fn private(&self) -> PathBuf {
        self.root.join("private")
    }
    /// The CA certificate.
    pub fn ca_cert(&self) -> PathBuf {
        self.root.join("cacert.pem")
    }
    /// The CA key.
    pub fn ca_key(&self) -> PathBuf {
        self.private().join("cakey.pem")
    }
    /// The server certificate.
    pub fn server_cert(&self) -> PathBuf {
        self.root.join("servercert.pem")
    }
    /// The server key.
    pub fn server_key(&self) -> PathBuf {
        self.private().join("serverkey.pem")
    }
    /// The client certificate.
    pub fn client_cert(&self) -> PathBuf {
        self.root.join("clientcert.pem")
    }
    /// The client key.
    pub fn client_key(&self) -> PathBuf {
        self.private().join("clientkey.pem")
    }
}
