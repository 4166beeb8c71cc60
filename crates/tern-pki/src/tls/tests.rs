//! Handshakes on loopback: who gets in, who is refused, and how it reads.

use super::*;
use crate::issue::{init_ca, issue_client, issue_server, Validity};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

struct Pki {
    _tmp: tempfile::TempDir,
    ca: PkiDir,
}

fn pki() -> Pki {
    let tmp = tempfile::tempdir().unwrap();
    let ca = PkiDir::new(tmp.path().join("ca"));
    let v = Validity::days(1).unwrap();
    init_ca(&ca, "Tern test CA", v).unwrap();
    issue_server(&ca, &ca, "127.0.0.1", v).unwrap();
    issue_client(&ca, &ca, "alice", v).unwrap();
    Pki { _tmp: tmp, ca }
}

/// Serves one connection: on success answers "pong" and returns the
/// client's CN; on failure returns the server's explanation.
async fn serve_once(l: TcpListener, cfg: Arc<ServerConfig>) -> Result<String, String> {
    let (tcp, _) = l.accept().await.unwrap();
    let mut s = match TlsAcceptor::from(cfg).accept(tcp).await {
        Ok(s) => s,
        Err(e) => return Err(explain_tls_failure(&e, Side::Server).unwrap_or(e.to_string())),
    };
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
    s.write_all(b"pong").await.map_err(|e| e.to_string())?;
    s.shutdown().await.map_err(|e| e.to_string())?;
    Ok(peer_common_name(s.get_ref().1.peer_certificates()).unwrap_or_default())
}

/// Connects, says "ping", expects "pong"; returns the client's explanation
/// of any failure.
async fn ping(port: u16, cfg: Arc<ClientConfig>) -> Result<(), String> {
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let name = server_name("127.0.0.1").unwrap();
    let why = |e: std::io::Error| explain_tls_failure(&e, Side::Client).unwrap_or(e.to_string());
    let mut s = TlsConnector::from(cfg)
        .connect(name, tcp)
        .await
        .map_err(why)?;
    s.write_all(b"ping").await.map_err(why)?;
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf).await.map_err(why)?;
    assert_eq!(&buf, b"pong");
    Ok(())
}

async fn exchange(
    server: &PkiDir,
    client: Arc<ClientConfig>,
) -> (Result<String, String>, Result<(), String>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let srv = tokio::spawn(serve_once(l, server_config(server).unwrap()));
    let cli = ping(port, client).await;
    (srv.await.unwrap(), cli)
}

#[tokio::test]
async fn mutual_tls_on_loopback_names_the_client() {
    let p = pki();
    let (srv, cli) = exchange(&p.ca, client_config(&p.ca).unwrap()).await;
    assert_eq!(cli, Ok(()));
    assert_eq!(srv, Ok("alice".to_string()));
}

#[tokio::test]
async fn a_client_without_certificate_is_refused() {
    let p = pki();
    let cfg = Arc::new(client_builder(&p.ca).unwrap().with_no_client_auth());
    let (srv, cli) = exchange(&p.ca, cfg).await;
    let srv = srv.unwrap_err();
    assert!(srv.contains("presented no certificate"), "{srv}");
    let cli = cli.unwrap_err();
    assert!(cli.contains("requires a client certificate"), "{cli}");
}

#[tokio::test]
async fn a_client_of_another_ca_is_refused() {
    let p = pki();
    let other = PkiDir::new(p.ca.root().with_file_name("other"));
    let v = Validity::days(1).unwrap();
    init_ca(&other, "Other CA", v).unwrap();
    issue_client(&other, &other, "mallory", v).unwrap();
    // Mallory trusts our server, but her certificate comes from her own CA.
    std::fs::copy(p.ca.ca_cert(), other.ca_cert()).unwrap();
    let (srv, cli) = exchange(&p.ca, client_config(&other).unwrap()).await;
    let srv = srv.unwrap_err();
    assert!(srv.contains("not signed by the trusted CA"), "{srv}");
    let cli = cli.unwrap_err();
    assert!(cli.contains("not signed by the server's CA"), "{cli}");
}

#[tokio::test]
async fn an_expired_client_certificate_is_refused() {
    let p = pki();
    let old = PkiDir::new(p.ca.root().with_file_name("old"));
    issue_client(&p.ca, &old, "bob", Validity::expired(2)).unwrap();
    let (srv, cli) = exchange(&p.ca, client_config(&old).unwrap()).await;
    let srv = srv.unwrap_err();
    assert!(srv.contains("has expired"), "{srv}");
    let cli = cli.unwrap_err();
    assert!(cli.contains("has expired"), "{cli}");
}

#[tokio::test]
async fn a_server_of_another_ca_is_refused_by_the_client() {
    let p = pki();
    let other = PkiDir::new(p.ca.root().with_file_name("other"));
    let v = Validity::days(1).unwrap();
    init_ca(&other, "Other CA", v).unwrap();
    issue_client(&other, &other, "carol", v).unwrap();
    let (_srv, cli) = exchange(&p.ca, client_config(&other).unwrap()).await;
    let cli = cli.unwrap_err();
    assert!(cli.contains("server's certificate is not signed"), "{cli}");
}

#[test]
fn missing_files_name_the_path_and_the_fix() {
    let t = tempfile::tempdir().unwrap();
    let e = client_config(&PkiDir::new(t.path()))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("clientcert.pem") && e.contains("tern pki"),
        "{e}"
    );
}

#[tokio::test]
async fn a_client_of_another_ca_with_the_same_name_is_refused() {
    let p = pki();
    let other = PkiDir::new(p.ca.root().with_file_name("twin"));
    let v = Validity::days(1).unwrap();
    init_ca(&other, "Tern test CA", v).unwrap();
    issue_client(&other, &other, "mallory", v).unwrap();
    std::fs::copy(p.ca.ca_cert(), other.ca_cert()).unwrap();
    let (srv, cli) = exchange(&p.ca, client_config(&other).unwrap()).await;
    let srv = srv.unwrap_err();
    assert!(srv.contains("not signed by the trusted CA"), "{srv}");
    let cli = cli.unwrap_err();
    assert!(cli.contains("not signed by the server's CA"), "{cli}");
}

#[test]
fn bulk_streams_prefer_aes_128_gcm() {
    let p = provider();
    assert_eq!(
        p.cipher_suites[0].suite(),
        rustls::CipherSuite::TLS13_AES_128_GCM_SHA256
    );
}

#[test]
fn host_certificates_carry_the_host_mark_and_gnutls_dn() {
    let t = tempfile::tempdir().unwrap();
    let d = PkiDir::new(t.path());
    let v = Validity::days(1).unwrap();
    init_ca(&d, "ca", v).unwrap();
    crate::issue_host(&d, &d, "node-a", v).unwrap();
    let id = identity_of_file(&d.client_cert()).unwrap();
    assert_eq!(id.cn, "node-a");
    assert!(id.host);
    assert_eq!(id.dn, "O=Tern,OU=Tern hosts,CN=node-a");
    issue_client(&d, &d, "admin", v).unwrap();
    let id = identity_of_file(&d.client_cert()).unwrap();
    assert!(!id.host);
    assert_eq!(id.dn, "O=Tern,CN=admin");
}
