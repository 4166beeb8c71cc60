//! Which connection URIs a host or the controller follows when the URI
//! came from someone else (a host report, a peer's migration request).
//!
//! A `tern+ssh://` URI runs a program (`ssh`, or whatever `?command=`
//! names) as the daemon's user, and `?pkipath=` makes the daemon present
//! certificates from a directory the sender chose. Neither may come from
//! another host: peers are reached over `tern+tls://` with the daemon's own
//! certificates (plain `tern+tcp://` for development clusters, and the
//! local unix socket for agents sharing one machine), and nothing else.

use crate::{Client, ClientError};
use tern_model::uri::{ConnectUri, Transport};
use tern_pki::PkiDir;

/// Why `uri`, received from another party, may not be followed; `None`
/// when it may.
pub fn refusal(uri: &ConnectUri) -> Option<String> {
    if uri.transport == Transport::Ssh {
        return Some(
            "tern+ssh:// runs a local program and is never followed from another host; use tern+tls://"
                .into(),
        );
    }
    uri.params
        .iter()
        .find(|(k, _)| refusal_of(uri.transport, k).is_some())
        .map(|(k, _)| {
            format!(
                "parameter ?{k}= is never followed from another host (peers use this daemon's own certificates)"
            )
        })
}

/// The destination URI a client hands to the source agent, which runs the
/// migration with its own certificates: the client's own parameters
/// (`?pkipath=` and the like) are dropped, since they name this client's
/// files, and ssh, which runs a local program, is refused with what to use.
pub fn for_source(uri: &ConnectUri) -> Result<ConnectUri, String> {
    if uri.transport == Transport::Ssh {
        return Err(format!(
            "the source agent runs the migration and never follows tern+ssh:// ({uri}); give the destination as tern+tls://HOST/system"
        ));
    }
    let mut u = uri.clone();
    u.params
        .retain(|(k, _)| refusal_of(u.transport, k).is_none());
    Ok(u)
}

/// Why parameter `k` of a URI with `transport` is not followed from
/// another host, if it is not.
fn refusal_of(transport: Transport, k: &str) -> Option<()> {
    let allowed: &[&str] = match transport {
        Transport::Unix => &["socket"],
        Transport::Ssh | Transport::Tcp | Transport::Tls => &[],
    };
    (!allowed.contains(&k)).then_some(())
}

/// A client for a URI another party gave us: refused unless [`refusal`]
/// finds nothing, then built with this daemon's own certificates.
pub fn client(uri: &ConnectUri, pki: &PkiDir) -> Result<Client, ClientError> {
    if let Some(reason) = refusal(uri) {
        return Err(ClientError::Untrusted {
            target: uri.to_string(),
            reason,
        });
    }
    Client::from_uri_with_pki(uri, pki)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> Option<String> {
        refusal(&s.parse().unwrap())
    }

    #[test]
    fn the_source_gets_the_destination_without_the_clients_own_parameters() {
        let u = |s: &str| for_source(&s.parse().unwrap()).map(|u| u.to_string());
        let tls = u("tern+tls://10.0.0.2:16714/system?pkipath=/home/op/pki").unwrap();
        assert!(!tls.contains("pkipath"), "{tls}");
        assert_eq!(r(&tls), None);
        let unix = u("tern+unix:///system?socket=/run/t.sock").unwrap();
        assert!(unix.contains("socket=/run/t.sock"), "{unix}");
        assert!(u("tern+ssh://root@h/system")
            .unwrap_err()
            .contains("tern+tls://"));
    }

    #[test]
    fn only_plain_uris_from_peers_are_followed() {
        assert_eq!(r("tern+tls://10.0.0.2:16714/system"), None);
        assert_eq!(r("tern+tcp://10.0.0.2/system"), None);
        assert_eq!(r("tern+unix:///system?socket=/run/t.sock"), None);
        assert!(r("tern+ssh://root@h/system").unwrap().contains("ssh"));
        assert!(r("tern+ssh://h/system?command=/bin/sh")
            .unwrap()
            .contains("ssh"));
        assert!(r("tern+tls://h/system?pkipath=/tmp/x")
            .unwrap()
            .contains("pkipath"));
        assert!(r("tern+tcp://h/system?command=x")
            .unwrap()
            .contains("command"));
    }
}
