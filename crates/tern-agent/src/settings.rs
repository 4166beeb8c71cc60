//! `ternd --config FILE`: the API server's access rules and processing
//! limits, in TOML, with the key names of libvirtd.conf.
//!
//! ```toml
//! # Connections at once, authenticated or not.
//! max_clients = 5000
//! # Connections still in their TLS handshake; beyond this the oldest is dropped.
//! max_anonymous_clients = 20
//! # Requests served at once, and extra workers only destroy/domjobabort may use.
//! max_workers = 20
//! prio_workers = 5
//! min_workers = 5            # accepted for libvirtd.conf compatibility; workers are tasks
//! max_client_requests = 5    # HTTP/1.1 runs one request at a time per connection
//! max_request_bytes = 4194304
//! auth_timeout = 10          # seconds a connection may take to finish its TLS handshake
//! max_ro_clients = 100       # read-only connections: their own share, apart from max_clients
//! ro_workers = 5             # read-only requests run on their own workers
//! idle_timeout = 60          # seconds a connection may wait before (or while) sending a request head
//! request_timeout = 30       # seconds a request body may take to arrive
//! unix_sock_group = "tern"   # optional
//! unix_sock_rw_perms = "0700"
//! unix_sock_ro_perms = "0777"
//! tls_allowed_dn_list = ["admin", "host*"]   # certificate CNs; empty: any the CA signed
//! tls_readonly_dn_list = ["monitor"]
//! ```

use crate::access::TlsRules;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;
use thiserror::Error;

/// Why the configuration file was refused.
#[derive(Debug, Error)]
pub enum SettingsError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Not TOML, or an unknown key, or a wrong type.
    #[error("config file {path} is invalid: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message (names the key and line).
        message: String,
    },
    /// A value out of range.
    #[error("config key {key} = {value} is invalid: {why}")]
    Value {
        /// The key.
        key: &'static str,
        /// The value as written.
        value: String,
        /// What to do.
        why: &'static str,
    },
}

/// The file as written; every key optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    max_clients: Option<usize>,
    max_anonymous_clients: Option<usize>,
    max_workers: Option<usize>,
    min_workers: Option<usize>,
    prio_workers: Option<usize>,
    max_client_requests: Option<usize>,
    max_request_bytes: Option<usize>,
    auth_timeout: Option<u64>,
    max_ro_clients: Option<usize>,
    ro_workers: Option<usize>,
    idle_timeout: Option<u64>,
    request_timeout: Option<u64>,
    unix_sock_group: Option<String>,
    unix_sock_rw_perms: Option<String>,
    unix_sock_ro_perms: Option<String>,
    tls_allowed_dn_list: Option<Vec<String>>,
    tls_readonly_dn_list: Option<Vec<String>>,
    qemu: Option<crate::confine::QemuSettings>,
}

/// The connection limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Connections at once.
    pub max_clients: usize,
    /// Connections not yet authenticated (in their TLS handshake).
    pub max_anonymous_clients: usize,
    /// Requests served at once.
    pub max_workers: usize,
    /// Extra workers for priority requests (destroy, job abort).
    pub prio_workers: usize,
    /// Requests in flight per connection (HTTP/1.1: effectively 1).
    pub max_client_requests: usize,
    /// Largest request body.
    pub max_request_bytes: usize,
    /// Time a connection has to authenticate.
    pub auth_timeout: Duration,
    /// Read-only connections at once (counted apart from `max_clients`,
    /// so readers cannot crowd out administrators).
    pub max_ro_clients: usize,
    /// Requests of read-only connections served at once (apart from
    /// `max_workers`).
    pub ro_workers: usize,
    /// Longest wait for a request head, from the connection's start or its
    /// last answer: an idle or slow client is disconnected after it.
    pub idle_timeout: Duration,
    /// Longest time a request body may take to arrive.
    pub request_timeout: Duration,
}

impl Default for Limits {
    /// libvirtd's defaults.
    fn default() -> Self {
        Limits {
            max_clients: 5000,
            max_anonymous_clients: 20,
            max_workers: 20,
            prio_workers: 5,
            max_client_requests: 5,
            max_request_bytes: 4 << 20,
            auth_timeout: Duration::from_secs(10),
            max_ro_clients: 100,
            ro_workers: 5,
            idle_timeout: Duration::from_secs(60),
            request_timeout: Duration::from_secs(30),
        }
    }
}

/// Everything the configuration file sets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSettings {
    /// Limits.
    pub limits: Limits,
    /// TLS identity rules.
    pub tls: TlsRules,
    /// Group owning both unix sockets.
    pub unix_sock_group: Option<String>,
    /// Mode of the read-write socket.
    pub unix_sock_rw_perms: u32,
    /// Mode of the read-only socket.
    pub unix_sock_ro_perms: u32,
    /// How QEMU is confined (the `[qemu]` table).
    pub qemu: crate::confine::QemuSettings,
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            limits: Limits::default(),
            tls: TlsRules::default(),
            unix_sock_group: None,
            unix_sock_rw_perms: 0o700,
            unix_sock_ro_perms: 0o777,
            qemu: crate::confine::QemuSettings::default(),
        }
    }
}

impl ServerSettings {
    /// Reads and checks a configuration file.
    pub fn load(path: &Path) -> Result<ServerSettings, SettingsError> {
        let text = std::fs::read_to_string(path).map_err(|source| SettingsError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text).map_err(|e| match e {
            SettingsError::Parse { message, .. } => SettingsError::Parse {
                path: path.to_path_buf(),
                message,
            },
            other => other,
        })
    }

    /// Parses configuration text.
    pub fn parse(text: &str) -> Result<ServerSettings, SettingsError> {
        let f: File = toml::from_str(text).map_err(|e| SettingsError::Parse {
            path: PathBuf::new(),
            message: e.message().to_string()
                + &e.span()
                    .map(|s| format!(" (at byte {})", s.start))
                    .unwrap_or_default(),
        })?;
        let d = ServerSettings::default();
        let l = d.limits;
        let at_least_one = |key: &'static str, v: Option<usize>, dflt: usize| match v {
            Some(0) => Err(SettingsError::Value {
                key,
                value: "0".into(),
                why: "use 1 or more",
            }),
            Some(n) => Ok(n),
            None => Ok(dflt),
        };
        let limits = Limits {
            max_clients: at_least_one("max_clients", f.max_clients, l.max_clients)?,
            max_anonymous_clients: at_least_one(
                "max_anonymous_clients",
                f.max_anonymous_clients,
                l.max_anonymous_clients,
            )?,
            max_workers: at_least_one("max_workers", f.max_workers, l.max_workers)?,
            prio_workers: f.prio_workers.unwrap_or(l.prio_workers),
            max_client_requests: at_least_one(
                "max_client_requests",
                f.max_client_requests,
                l.max_client_requests,
            )?,
            max_request_bytes: match f.max_request_bytes {
                Some(n) if n < 4096 => {
                    return Err(SettingsError::Value {
                        key: "max_request_bytes",
                        value: n.to_string(),
                        why: "use at least 4096 (domain XML must fit)",
                    })
                }
                Some(n) => n,
                None => l.max_request_bytes,
            },
            auth_timeout: match f.auth_timeout {
                Some(0) => {
                    return Err(SettingsError::Value {
                        key: "auth_timeout",
                        value: "0".into(),
                        why: "use a number of seconds, 1 or more",
                    })
                }
                Some(s) => Duration::from_secs(s),
                None => l.auth_timeout,
            },
            max_ro_clients: at_least_one("max_ro_clients", f.max_ro_clients, l.max_ro_clients)?,
            ro_workers: at_least_one("ro_workers", f.ro_workers, l.ro_workers)?,
            idle_timeout: seconds("idle_timeout", f.idle_timeout, l.idle_timeout)?,
            request_timeout: seconds("request_timeout", f.request_timeout, l.request_timeout)?,
        };
        if let Some(min) = f.min_workers {
            if min > limits.max_workers {
                return Err(SettingsError::Value {
                    key: "min_workers",
                    value: min.to_string(),
                    why: "must not exceed max_workers",
                });
            }
        }
        if limits.max_anonymous_clients > limits.max_clients {
            return Err(SettingsError::Value {
                key: "max_anonymous_clients",
                value: limits.max_anonymous_clients.to_string(),
                why: "must not exceed max_clients",
            });
        }
        Ok(ServerSettings {
            limits,
            tls: TlsRules {
                allowed: f.tls_allowed_dn_list.unwrap_or_default(),
                read_only: f.tls_readonly_dn_list.unwrap_or_default(),
            },
            unix_sock_group: f.unix_sock_group,
            unix_sock_rw_perms: perms("unix_sock_rw_perms", f.unix_sock_rw_perms, 0o700)?,
            unix_sock_ro_perms: perms("unix_sock_ro_perms", f.unix_sock_ro_perms, 0o777)?,
            qemu: f.qemu.unwrap_or_default(),
        })
    }
}

fn seconds(key: &'static str, v: Option<u64>, dflt: Duration) -> Result<Duration, SettingsError> {
    match v {
        Some(0) => Err(SettingsError::Value {
            key,
            value: "0".into(),
            why: "use a number of seconds, 1 or more",
        }),
        Some(s) => Ok(Duration::from_secs(s)),
        None => Ok(dflt),
    }
}

fn perms(key: &'static str, v: Option<String>, dflt: u32) -> Result<u32, SettingsError> {
    let Some(s) = v else { return Ok(dflt) };
    match u32::from_str_radix(s.trim_start_matches("0o"), 8) {
        Ok(m) if m <= 0o777 => Ok(m),
        _ => Err(SettingsError::Value {
            key,
            value: s,
            why: "use an octal mode such as \"0770\"",
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_file_gives_libvirtd_defaults() {
        let s = ServerSettings::parse("").unwrap();
        assert_eq!(s, ServerSettings::default());
        assert_eq!(s.limits.max_anonymous_clients, 20);
    }

    #[test]
    fn keys_are_read_and_checked() {
        let s = ServerSettings::parse(
            "max_clients = 10\nmax_anonymous_clients = 3\nmax_workers = 2\nprio_workers = 1\nmin_workers = 1\nauth_timeout = 2\nunix_sock_ro_perms = \"0770\"\ntls_allowed_dn_list = [\"a*\"]\ntls_readonly_dn_list = [\"mon\"]\n",
        )
        .unwrap();
        assert_eq!(s.limits.max_clients, 10);
        assert_eq!(s.limits.auth_timeout, Duration::from_secs(2));
        assert_eq!(s.unix_sock_ro_perms, 0o770);
        assert_eq!(s.tls.read_only, vec!["mon".to_string()]);
        let e = ServerSettings::parse("max_clinets = 1")
            .unwrap_err()
            .to_string();
        assert!(e.contains("max_clinets"), "{e}");
        let e = ServerSettings::parse("max_workers = 0")
            .unwrap_err()
            .to_string();
        assert!(e.contains("max_workers"), "{e}");
        let e = ServerSettings::parse("unix_sock_rw_perms = \"9\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("octal"), "{e}");
        let e = ServerSettings::parse("max_clients = 2\nmax_anonymous_clients = 3")
            .unwrap_err()
            .to_string();
        assert!(e.contains("max_anonymous_clients"), "{e}");
    }
}
