//! Certificates for tests, made with the real `tern pki` verbs in a
//! temporary directory that is removed on drop.

use crate::host::bin;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A CA and directories of issued certificates.
#[derive(Debug)]
pub struct TestPki {
    tmp: tempfile::TempDir,
}

impl TestPki {
    /// Makes a CA.
    pub fn new() -> TestPki {
        let tmp = tempfile::Builder::new()
            .prefix("tern-pki-")
            .tempdir()
            .expect("create temp dir");
        let p = TestPki { tmp };
        p.run(&["init", "--dir", p.s(&p.ca()), "--cn", "Tern test CA"]);
        p
    }

    fn s<'a>(&self, p: &'a Path) -> &'a str {
        p.to_str().expect("utf-8 path")
    }

    fn run(&self, args: &[&str]) {
        let o = Command::new(bin("tern"))
            .arg("pki")
            .args(args)
            .output()
            .expect("run tern pki");
        assert!(
            o.status.success(),
            "tern pki {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&o.stderr)
        );
    }

    /// The CA's directory.
    pub fn ca(&self) -> PathBuf {
        self.tmp.path().join("ca")
    }

    /// A directory `name` under the temporary root.
    pub fn dir(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    /// Issues a server certificate for `host` into `dir(name)`; returns it.
    pub fn server(&self, name: &str, host: &str) -> PathBuf {
        self.issue("issue-server", name, host)
    }

    /// Issues a client certificate with CN `cn` into `dir(name)`; returns it.
    pub fn client(&self, name: &str, cn: &str) -> PathBuf {
        self.issue("issue-client", name, cn)
    }

    /// Issues a cluster host's certificate (`tern pki issue-host HOST`:
    /// CN `host` and the host mark) into `dir(name)`; returns it.
    pub fn host(&self, name: &str, host: &str) -> PathBuf {
        self.issue("issue-host", name, host)
    }

    /// `tern pki ISSUE SUBJECT --dir CA --out dir(name)`.
    fn issue(&self, issue: &str, name: &str, subject: &str) -> PathBuf {
        let out = self.dir(name);
        let ca = self.ca();
        self.run(&[issue, subject, "--dir", self.s(&ca), "--out", self.s(&out)]);
        out
    }

    /// A cluster agent's directory: a server certificate for `addr` and
    /// the host certificate of `host`.
    pub fn cluster_agent(&self, name: &str, addr: &str, host: &str) -> PathBuf {
        self.server(name, addr);
        self.host(name, host)
    }

    /// An agent's directory: a server certificate for `host` and a client
    /// certificate named `cn` (presented when it calls other agents).
    pub fn agent(&self, name: &str, host: &str, cn: &str) -> PathBuf {
        self.server(name, host);
        self.client(name, cn)
    }
}

impl Default for TestPki {
    fn default() -> Self {
        Self::new()
    }
}
