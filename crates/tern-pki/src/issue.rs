//! Making the CA and issuing certificates (`tern pki ...`).

use crate::layout::PkiDir;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use thiserror::Error;
use time::{Duration, OffsetDateTime};

/// Why a certificate could not be made.
#[derive(Debug, Error)]
pub enum IssueError {
    /// `init` found a CA already.
    #[error("a CA already exists at {0}; remove it first if you really want a new one (every certificate it issued stops working)")]
    CaExists(PathBuf),
    /// Issuing needs the CA, which is missing.
    #[error(
        "cannot read {path}: {source}; run `tern pki init --dir DIR` first or pass the CA's --dir"
    )]
    NoCa {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A file exists but does not hold what it should.
    #[error("{path} is not a usable PEM {what}: {source}")]
    BadPem {
        /// The file.
        path: PathBuf,
        /// "certificate" or "key".
        what: &'static str,
        /// Cause.
        #[source]
        source: rcgen::Error,
    },
    /// The host or client name cannot go into a certificate.
    #[error("'{0}' is not a valid {1}; use a DNS name or an IP address for servers and a plain name for clients")]
    BadName(String, &'static str),
    /// `--days` of 0 or absurdly many.
    #[error("validity of {0} days is out of range; use 1 to 36500")]
    BadDays(u32),
    /// rcgen refused the parameters.
    #[error("cannot make the certificate: {0}")]
    Generate(#[source] rcgen::Error),
    /// Writing failed.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// When a certificate is valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    /// Start.
    pub not_before: OffsetDateTime,
    /// End.
    pub not_after: OffsetDateTime,
}

impl Validity {
    /// From a minute ago (tolerating small clock skew) for `days` days.
    pub fn days(days: u32) -> Result<Validity, IssueError> {
        if days == 0 || days > 36500 {
            return Err(IssueError::BadDays(days));
        }
        let now = OffsetDateTime::now_utc();
        Ok(Validity {
            not_before: now - Duration::minutes(1),
            not_after: now + Duration::days(days as i64),
        })
    }

    /// A window that ended `days_ago` days before now (for tests of expiry).
    pub fn expired(days_ago: u32) -> Validity {
        let ago = Duration::days(days_ago as i64);
        let now = OffsetDateTime::now_utc();
        Validity {
            not_before: now - ago - Duration::days(1),
            not_after: now - ago,
        }
    }
}

/// The organizational unit of host certificates: a client certificate
/// carrying it is a cluster host named by its CN (see
/// [`crate::tls::PeerIdentity`]); only the CA can put it there.
pub const HOST_OU: &str = "Tern hosts";

fn dn(cn: &str, host: bool) -> DistinguishedName {
    let mut d = DistinguishedName::new();
    d.push(DnType::OrganizationName, "Tern");
    if host {
        d.push(DnType::OrganizationalUnitName, HOST_OU);
    }
    d.push(DnType::CommonName, cn);
    d
}

/// Makes a new CA in `dir` (cacert.pem, private/cakey.pem); refuses to
/// replace an existing one.
pub fn init_ca(dir: &PkiDir, cn: &str, validity: Validity) -> Result<(), IssueError> {
    check_plain_name(cn, "CA name")?;
    if dir.ca_cert().exists() || dir.ca_key().exists() {
        return Err(IssueError::CaExists(dir.ca_cert()));
    }
    let key = KeyPair::generate().map_err(IssueError::Generate)?;
    let mut p = CertificateParams::default();
    p.distinguished_name = dn(cn, false);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p.not_before = validity.not_before;
    p.not_after = validity.not_after;
    let cert = p.self_signed(&key).map_err(IssueError::Generate)?;
    write_private(dir, &dir.ca_key(), &key.serialize_pem())?;
    write_public(&dir.ca_cert(), &cert.pem())
}

/// What a leaf certificate is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Server,
    Client,
    /// A client certificate naming a cluster host.
    Host,
}

/// Issues `out/servercert.pem` and `out/private/serverkey.pem` for `host`
/// (its SAN, DNS name or IP address, and its CN), signed by the CA in `ca`,
/// and copies the CA certificate to `out`.
pub fn issue_server(
    ca: &PkiDir,
    out: &PkiDir,
    host: &str,
    validity: Validity,
) -> Result<(), IssueError> {
    issue(ca, out, host, Role::Server, validity)
}

/// Issues `out/clientcert.pem` and `out/private/clientkey.pem` with CN
/// `name`, signed by the CA in `ca`, and copies the CA certificate to `out`.
pub fn issue_client(
    ca: &PkiDir,
    out: &PkiDir,
    name: &str,
    validity: Validity,
) -> Result<(), IssueError> {
    issue(ca, out, name, Role::Client, validity)
}

/// Issues a host's client certificate (`out/clientcert.pem`): CN `name`
/// and OU [`HOST_OU`]. The controller accepts reports only for the host
/// this certificate names; agents present it to each other and to QEMU.
pub fn issue_host(
    ca: &PkiDir,
    out: &PkiDir,
    name: &str,
    validity: Validity,
) -> Result<(), IssueError> {
    issue(ca, out, name, Role::Host, validity)
}

fn issue(
    ca: &PkiDir,
    out: &PkiDir,
    name: &str,
    role: Role,
    validity: Validity,
) -> Result<(), IssueError> {
    let mut p = CertificateParams::default();
    match role {
        Role::Server => {
            let san = match name.parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => {
                    check_dns_name(name)?;
                    SanType::DnsName(
                        name.try_into()
                            .map_err(|_| IssueError::BadName(name.into(), "host name"))?,
                    )
                }
            };
            p.subject_alt_names = vec![san];
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        }
        Role::Client | Role::Host => {
            check_plain_name(name, "client name")?;
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        }
    }
    p.distinguished_name = dn(name, role == Role::Host);
    p.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    p.not_before = validity.not_before;
    p.not_after = validity.not_after;

    let ca_pem = read(&ca.ca_cert())?;
    let ca_key_pem = read(&ca.ca_key())?;
    let ca_key = KeyPair::from_pem(&ca_key_pem).map_err(|source| IssueError::BadPem {
        path: ca.ca_key(),
        what: "key",
        source,
    })?;
    let ca_cert = CertificateParams::from_ca_cert_pem(&ca_pem)
        .and_then(|cp| cp.self_signed(&ca_key))
        .map_err(|source| IssueError::BadPem {
            path: ca.ca_cert(),
            what: "certificate",
            source,
        })?;
    let key = KeyPair::generate().map_err(IssueError::Generate)?;
    let cert = p
        .signed_by(&key, &ca_cert, &ca_key)
        .map_err(IssueError::Generate)?;
    let (cert_path, key_path) = match role {
        Role::Server => (out.server_cert(), out.server_key()),
        Role::Client | Role::Host => (out.client_cert(), out.client_key()),
    };
    write_private(out, &key_path, &key.serialize_pem())?;
    write_public(&cert_path, &cert.pem())?;
    if out.ca_cert() != ca.ca_cert() {
        write_public(&out.ca_cert(), &ca_pem)?;
    }
    Ok(())
}

fn read(path: &Path) -> Result<String, IssueError> {
    std::fs::read_to_string(path).map_err(|source| IssueError::NoCa {
        path: path.to_path_buf(),
        source,
    })
}

fn check_plain_name(name: &str, what: &'static str) -> Result<(), IssueError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || " .-_@".contains(c));
    if ok {
        Ok(())
    } else {
        Err(IssueError::BadName(name.into(), what))
    }
}

fn check_dns_name(name: &str) -> Result<(), IssueError> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        });
    if ok {
        Ok(())
    } else {
        Err(IssueError::BadName(name.into(), "host name"))
    }
}

fn write_public(path: &Path, text: &str) -> Result<(), IssueError> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|source| IssueError::Write {
            path: parent.to_path_buf(),
            source,
        })?;
    }
    write_file(path, text, 0o644)
}

fn write_private(dir: &PkiDir, path: &Path, text: &str) -> Result<(), IssueError> {
    // The directory itself stays readable: it holds the public certificates.
    std::fs::create_dir_all(dir.root()).map_err(|source| IssueError::Write {
        path: dir.root().to_path_buf(),
        source,
    })?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir.private())
        .map_err(|source| IssueError::Write {
            path: dir.private(),
            source,
        })?;
    write_file(path, text, 0o600)
}

/// Writes through a temporary file so a half-written key never replaces a good one.
fn write_file(path: &Path, text: &str, mode: u32) -> Result<(), IssueError> {
    let err = |source| IssueError::Write {
        path: path.to_path_buf(),
        source,
    };
    let tmp = path.with_extension("pem.tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(err)?;
    f.write_all(text.as_bytes()).map_err(err)?;
    f.sync_all().map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn init_then_issue_makes_the_layout_with_private_keys() {
        let t = tempfile::tempdir().unwrap();
        let d = PkiDir::new(t.path());
        init_ca(&d, "Tern test CA", Validity::days(10).unwrap()).unwrap();
        issue_server(&d, &d, "127.0.0.1", Validity::days(10).unwrap()).unwrap();
        issue_server(&d, &d, "host1.example", Validity::days(10).unwrap()).unwrap();
        issue_client(&d, &d, "admin", Validity::days(10).unwrap()).unwrap();
        for f in [d.ca_cert(), d.server_cert(), d.client_cert()] {
            assert!(f.is_file(), "{}", f.display());
        }
        for k in [d.ca_key(), d.server_key(), d.client_key()] {
            let mode = std::fs::metadata(&k).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", k.display());
        }
        let e = init_ca(&d, "again", Validity::days(1).unwrap()).unwrap_err();
        assert!(e.to_string().contains("already exists"), "{e}");
    }

    #[test]
    fn bad_names_and_days_are_refused() {
        let t = tempfile::tempdir().unwrap();
        let d = PkiDir::new(t.path());
        assert!(Validity::days(0).is_err());
        init_ca(&d, "ca", Validity::days(1).unwrap()).unwrap();
        let v = Validity::days(1).unwrap();
        assert!(issue_server(&d, &d, "bad host!", v).is_err());
        assert!(issue_server(&d, &d, "-x.example", v).is_err());
        assert!(issue_client(&d, &d, "", v).is_err());
        assert!(issue_client(&d, &d, "a\nb", v).is_err());
        let other = tempfile::tempdir().unwrap();
        let e = issue_client(&PkiDir::new(other.path()), &d, "x", v).unwrap_err();
        assert!(e.to_string().contains("tern pki init"), "{e}");
    }
}
