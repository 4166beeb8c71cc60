//! Tern's public-key infrastructure: a small CA, host and client
//! certificates, and the mutual-TLS configurations built from them.
//!
//! Files follow the layout of libvirt's certtool recipe (seed 004), kept in
//! one directory ([`DEFAULT_PKI_DIR`] unless told otherwise):
//!
//! ```text
//! DIR/cacert.pem            the CA certificate (every party trusts it)
//! DIR/private/cakey.pem     the CA key (only where certificates are issued)
//! DIR/servercert.pem        this host's server certificate (SAN = host name or IP)
//! DIR/private/serverkey.pem
//! DIR/clientcert.pem        the certificate this host or user presents as a client
//! DIR/private/clientkey.pem
//! ```
//!
//! Private keys are written with mode 0600 in a 0700 `private/` directory.
//! An agent uses `servercert.pem` to serve and `clientcert.pem` when it calls
//! another agent (`--p2p`), as libvirtd does. TLS is 1.3 only; a server
//! always requires a client certificate signed by the CA, and the client's
//! identity is the certificate's common name (CN).

pub mod handshakes;
pub mod issue;
pub mod layout;
pub mod names;
pub mod tls;

pub use issue::{init_ca, issue_client, issue_host, issue_server, IssueError, Validity, HOST_OU};
pub use layout::{PkiDir, DEFAULT_PKI_DIR, PKI_DIR_ENV};
pub use tls::{
    client_config, explain_tls_failure, peer_common_name, peer_identity, server_config,
    PeerIdentity, TlsError,
};
