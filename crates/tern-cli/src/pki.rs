//! `tern pki`: a CA and certificates in the layout `ternd --listen-tls` and
//! `tern+tls://` read (see the `tern_pki` crate for the files).

use crate::Result;
use clap::Subcommand;
use std::path::PathBuf;
use tern_pki::{PkiDir, Validity};

/// `tern pki` verbs.
#[derive(Subcommand, Debug)]
pub enum PkiCmd {
    /// Make a new CA (cacert.pem, private/cakey.pem).
    Init {
        /// PKI directory.
        #[arg(long, default_value = tern_pki::DEFAULT_PKI_DIR)]
        dir: PathBuf,
        /// The CA's common name.
        #[arg(long, default_value = "Tern CA")]
        cn: String,
        /// Days the CA is valid.
        #[arg(long, default_value_t = 3650)]
        days: u32,
    },
    /// Issue a server certificate for HOST (DNS name or IP address).
    IssueServer {
        /// Host name or IP address clients dial (SAN and CN).
        host: String,
        /// PKI directory holding the CA.
        #[arg(long, default_value = tern_pki::DEFAULT_PKI_DIR)]
        dir: PathBuf,
        /// Where to write the certificate, key and a copy of cacert.pem
        /// (default: the CA's directory).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Days the certificate is valid.
        #[arg(long, default_value_t = 365)]
        days: u32,
    },
    /// Issue a client certificate whose common name NAME is the identity
    /// agents check (tls_allowed_dn_list, tls_readonly_dn_list).
    IssueClient {
        /// Identity (CN).
        name: String,
        /// PKI directory holding the CA.
        #[arg(long, default_value = tern_pki::DEFAULT_PKI_DIR)]
        dir: PathBuf,
        /// Where to write the certificate, key and a copy of cacert.pem
        /// (default: the CA's directory).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Days the certificate is valid.
        #[arg(long, default_value_t = 365)]
        days: u32,
    },
    /// Issue a cluster host's client certificate: CN HOST plus the host
    /// mark (OU "Tern hosts"). The controller accepts reports only for the
    /// host a certificate names, and gives host certificates no operator
    /// rights; agents present it to each other and QEMU's tls-authz checks it.
    IssueHost {
        /// The host's name in the cluster (`ternd --host-name`).
        name: String,
        /// PKI directory holding the CA.
        #[arg(long, default_value = tern_pki::DEFAULT_PKI_DIR)]
        dir: PathBuf,
        /// Where to write the certificate, key and a copy of cacert.pem
        /// (default: the CA's directory).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Days the certificate is valid.
        #[arg(long, default_value_t = 365)]
        days: u32,
    },
}

/// Runs a `tern pki` verb.
pub fn run(cmd: PkiCmd) -> Result<()> {
    match cmd {
        PkiCmd::Init { dir, cn, days } => {
            let d = PkiDir::new(dir);
            tern_pki::init_ca(&d, &cn, Validity::days(days)?)?;
            println!("CA created in {}", d.root().display());
        }
        PkiCmd::IssueServer {
            host,
            dir,
            out,
            days,
        } => issue(
            tern_pki::issue_server,
            "server",
            &host,
            dir,
            out,
            days,
            |o| o.server_cert(),
        )?,
        PkiCmd::IssueClient {
            name,
            dir,
            out,
            days,
        } => issue(
            tern_pki::issue_client,
            "client",
            &name,
            dir,
            out,
            days,
            |o| o.client_cert(),
        )?,
        PkiCmd::IssueHost {
            name,
            dir,
            out,
            days,
        } => issue(tern_pki::issue_host, "host", &name, dir, out, days, |o| {
            o.client_cert()
        })?,
    }
    Ok(())
}

/// One `tern pki issue-*` verb: `f` issues the certificate for `subject`
/// from the CA in `dir` into `out` (default: `dir`); `cert` names the file
/// written, for the line printed.
fn issue(
    f: fn(&PkiDir, &PkiDir, &str, Validity) -> std::result::Result<(), tern_pki::IssueError>,
    kind: &str,
    subject: &str,
    dir: PathBuf,
    out: Option<PathBuf>,
    days: u32,
    cert: fn(&PkiDir) -> PathBuf,
) -> Result<()> {
    let ca = PkiDir::new(&dir);
    let out = PkiDir::new(out.unwrap_or(dir));
    f(&ca, &out, subject, Validity::days(days)?)?;
    println!(
        "{kind} certificate for {subject} in {}",
        cert(&out).display()
    );
    Ok(())
}
