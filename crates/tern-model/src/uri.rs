//! Connection URIs in libvirt's grammar:
//! `driver[+transport]://[user@][host][:port]/system[?key=value&...]`.
//!
//! The driver is `tern` (or `qemu`, accepted for virsh muscle memory). Without
//! `+transport` the transport is `unix` when no host is given and `tls` when
//! one is, as in libvirt. Query parameters are percent-decoded; `socket=`
//! overrides the agent's UNIX socket path.
//!
//! ```
//! use tern_model::uri::{ConnectUri, Transport};
//!
//! let uri: ConnectUri = "tern+ssh://admin@host2/system".parse()?;
//! assert_eq!(uri.transport, Transport::Ssh);
//! assert_eq!(uri.user.as_deref(), Some("admin"));
//! assert_eq!(uri.port_or_default(), 22);
//! assert_eq!(uri.to_string(), "tern+ssh://admin@host2/system");
//! # Ok::<(), tern_model::uri::UriError>(())
//! ```

use crate::text::one_line;
use std::fmt;
use std::net::Ipv6Addr;
use std::path::PathBuf;
use std::str::FromStr;
use thiserror::Error;

/// The URI `tern` uses when none is given: the local agent's system instance.
pub const DEFAULT_URI: &str = "tern:///system";
/// Agent port for `tern+tcp://` when the URI names none.
pub const DEFAULT_TCP_PORT: u16 = 16709;
/// Agent port for `tern+tls://` when the URI names none.
pub const DEFAULT_TLS_PORT: u16 = 16714;
/// SSH port for `tern+ssh://` when the URI names none.
pub const DEFAULT_SSH_PORT: u16 = 22;

/// Drivers accepted before `://` (lower case).
const DRIVERS: &[&str] = &["tern", "qemu"];
/// The only path Tern serves.
const SYSTEM_PATH: &str = "/system";

/// How the client reaches the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// The agent's local UNIX socket.
    Unix,
    /// Plain TCP (trusted networks only).
    Tcp,
    /// TCP with TLS.
    Tls,
    /// A tunnel through `ssh` to the remote agent's UNIX socket.
    Ssh,
}

impl Transport {
    /// The name used after `+` in a URI.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Unix => "unix",
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
            Transport::Ssh => "ssh",
        }
    }

    /// The port used when the URI names none; `None` for `unix`.
    pub fn default_port(self) -> Option<u16> {
        match self {
            Transport::Unix => None,
            Transport::Tcp => Some(DEFAULT_TCP_PORT),
            Transport::Tls => Some(DEFAULT_TLS_PORT),
            Transport::Ssh => Some(DEFAULT_SSH_PORT),
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        match name.to_ascii_lowercase().as_str() {
            "unix" => Some(Transport::Unix),
            "tcp" => Some(Transport::Tcp),
            "tls" => Some(Transport::Tls),
            "ssh" => Some(Transport::Ssh),
            _ => None,
        }
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A parsed connection URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectUri {
    /// "tern" or "qemu", lower case.
    pub driver: String,
    /// How to reach the agent.
    pub transport: Transport,
    /// `user@`, percent-decoded (meaningful for ssh).
    pub user: Option<String>,
    /// Host name or address; IPv6 literals without their brackets.
    pub host: Option<String>,
    /// `:port`, when given.
    pub port: Option<u16>,
    /// Always "/system".
    pub path: String,
    /// Query parameters in order, percent-decoded.
    pub params: Vec<(String, String)>,
}

/// Why a connection URI was refused. Every message quotes the input.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum UriError {
    /// Nothing was given.
    #[error("the connection URI is empty; use e.g. {DEFAULT_URI} or tern+ssh://user@host/system")]
    Empty,
    /// Not in the `driver[+transport]://[user@][host][:port]/system[?params]` shape.
    #[error("connection URI '{}' is malformed: {reason}; use driver[+transport]://[user@][host][:port]/system, e.g. {DEFAULT_URI}", one_line(.uri))]
    Malformed {
        /// The input.
        uri: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A driver other than tern or qemu.
    #[error("connection URI '{}' uses driver '{}', which Tern does not serve; use tern:// (e.g. {DEFAULT_URI})", one_line(.uri), one_line(.driver))]
    UnknownDriver {
        /// The input.
        uri: String,
        /// The driver found.
        driver: String,
    },
    /// A `+transport` other than unix, tcp, tls or ssh.
    #[error("connection URI '{}' uses unknown transport '{}'; use one of unix, tcp, tls, ssh (e.g. tern+ssh://host/system)", one_line(.uri), one_line(.transport))]
    UnknownTransport {
        /// The input.
        uri: String,
        /// The transport found.
        transport: String,
    },
    /// A path other than /system.
    #[error("connection URI '{}' has path '{}', but Tern only serves /system; use e.g. {DEFAULT_URI}", one_line(.uri), one_line(.path))]
    BadPath {
        /// The input.
        uri: String,
        /// The path found (empty if none).
        path: String,
    },
    /// A host together with the unix transport.
    #[error("connection URI '{}' names a host but uses the unix transport; drop the host or use tcp, tls or ssh", one_line(.uri))]
    HostWithUnix {
        /// The input.
        uri: String,
    },
    /// A network transport without a host.
    #[error("connection URI '{}' uses the {transport} transport but names no host; add one, e.g. tern+{transport}://host/system", one_line(.uri))]
    MissingHost {
        /// The input.
        uri: String,
        /// The transport that needs a host.
        transport: Transport,
    },
    /// A port that is not a number from 1 to 65535.
    #[error("connection URI '{}' has invalid port '{}'; use a number from 1 to 65535 or leave the port out", one_line(.uri), one_line(.port))]
    BadPort {
        /// The input.
        uri: String,
        /// The port text found.
        port: String,
    },
}

impl ConnectUri {
    /// Parses a connection URI; see the module documentation for the grammar.
    pub fn parse(s: &str) -> Result<Self, UriError> {
        parse(s)
    }

    /// The value of query parameter `key` (the last one if repeated).
    pub fn param(&self, key: &str) -> Option<&str> {
        self.params
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The agent socket path given with `socket=`, if any.
    pub fn socket_path(&self) -> Option<PathBuf> {
        self.param("socket").map(PathBuf::from)
    }

    /// The port to connect to: the URI's own, else the transport's default
    /// ([`DEFAULT_TCP_PORT`], [`DEFAULT_TLS_PORT`], [`DEFAULT_SSH_PORT`]);
    /// 0 for the unix transport, which has no port.
    pub fn port_or_default(&self) -> u16 {
        self.port
            .or_else(|| self.transport.default_port())
            .unwrap_or(0)
    }

    /// Whether the URI addresses the local agent over its UNIX socket.
    pub fn is_local(&self) -> bool {
        self.transport == Transport::Unix
    }
}

impl Default for ConnectUri {
    /// The local system agent, i.e. [`DEFAULT_URI`].
    fn default() -> Self {
        ConnectUri {
            driver: "tern".to_string(),
            transport: Transport::Unix,
            user: None,
            host: None,
            port: None,
            path: SYSTEM_PATH.to_string(),
            params: Vec::new(),
        }
    }
}

impl FromStr for ConnectUri {
    type Err = UriError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse(s)
    }
}

impl fmt::Display for ConnectUri {
    /// Prints the URI back in canonical form: `+unix` is left implicit, other
    /// transports are spelled out, parameters are percent-encoded as needed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.driver)?;
        if self.transport != Transport::Unix {
            write!(f, "+{}", self.transport)?;
        }
        f.write_str("://")?;
        if let Some(user) = &self.user {
            write!(f, "{}@", percent_encode(user, b""))?;
        }
        match &self.host {
            Some(host) if host.contains(':') => write!(f, "[{host}]")?,
            Some(host) => f.write_str(host)?,
            None => {}
        }
        if let Some(port) = self.port {
            write!(f, ":{port}")?;
        }
        f.write_str(&self.path)?;
        for (i, (key, value)) in self.params.iter().enumerate() {
            let separator = if i == 0 { '?' } else { '&' };
            write!(
                f,
                "{separator}{}={}",
                percent_encode(key, b"/:@,"),
                percent_encode(value, b"/:@,")
            )?;
        }
        Ok(())
    }
}

/// Parses a connection URI; same as [`ConnectUri::parse`].
pub fn parse(s: &str) -> Result<ConnectUri, UriError> {
    if s.trim().is_empty() {
        return Err(UriError::Empty);
    }
    let uri = || s.to_string();
    let malformed = |reason: &str| UriError::Malformed {
        uri: uri(),
        reason: reason.to_string(),
    };

    let (scheme, rest) = s
        .split_once("://")
        .ok_or_else(|| malformed("it has no \"://\""))?;
    let (driver, transport) = match scheme.split_once('+') {
        Some((driver, transport)) => (driver, Some(transport)),
        None => (scheme, None),
    };
    if driver.is_empty() {
        return Err(malformed("it names no driver before \"://\""));
    }
    let driver = driver.to_ascii_lowercase();
    if !DRIVERS.contains(&driver.as_str()) {
        return Err(UriError::UnknownDriver { uri: uri(), driver });
    }
    let explicit_transport = transport
        .map(|name| {
            Transport::from_name(name).ok_or_else(|| UriError::UnknownTransport {
                uri: uri(),
                transport: name.to_string(),
            })
        })
        .transpose()?;
    if rest.contains('#') {
        return Err(malformed("fragments (#...) are not allowed"));
    }

    let (before_query, query) = match rest.split_once('?') {
        Some((before, query)) => (before, Some(query)),
        None => (rest, None),
    };
    let (authority, path) = before_query
        .find('/')
        .map_or((before_query, ""), |i| before_query.split_at(i));
    let Authority { user, host, port } = parse_authority(authority, s)?;
    if path != SYSTEM_PATH {
        return Err(UriError::BadPath {
            uri: uri(),
            path: path.to_string(),
        });
    }

    let transport = explicit_transport.unwrap_or(if host.is_some() {
        Transport::Tls
    } else {
        Transport::Unix
    });
    match (transport, &host) {
        (Transport::Unix, Some(_)) => return Err(UriError::HostWithUnix { uri: uri() }),
        (Transport::Unix, None) if user.is_some() || port.is_some() => {
            return Err(malformed("a user or port needs a host"))
        }
        (Transport::Tcp | Transport::Tls | Transport::Ssh, None) => {
            return Err(UriError::MissingHost {
                uri: uri(),
                transport,
            })
        }
        _ => {}
    }

    let params = match query {
        Some(query) => parse_params(query).ok_or_else(|| {
            malformed("a query parameter has a bad %-escape or is not UTF-8 once decoded")
        })?,
        None => Vec::new(),
    };
    Ok(ConnectUri {
        driver,
        transport,
        user,
        host,
        port,
        path: path.to_string(),
        params,
    })
}

/// The `[user@][host][:port]` part.
struct Authority {
    user: Option<String>,
    host: Option<String>,
    port: Option<u16>,
}

fn parse_authority(authority: &str, uri: &str) -> Result<Authority, UriError> {
    let malformed = |reason: &str| UriError::Malformed {
        uri: uri.to_string(),
        reason: reason.to_string(),
    };
    let (user, host_port) = match authority.rsplit_once('@') {
        Some(("", _)) => return Err(malformed("the user name before '@' is empty")),
        Some((user, host_port)) => {
            let user = percent_decode(user)
                .ok_or_else(|| malformed("the user name has a bad %-escape"))?;
            (Some(user), host_port)
        }
        None => (None, authority),
    };

    let (host, port) = if let Some(bracketed) = host_port.strip_prefix('[') {
        let (host, after) = bracketed
            .split_once(']')
            .ok_or_else(|| malformed("an IPv6 host is missing its closing ']'"))?;
        if host.parse::<Ipv6Addr>().is_err() {
            return Err(malformed("brackets must hold an IPv6 address, e.g. [::1]"));
        }
        let port = match after {
            "" => None,
            _ => Some(
                after
                    .strip_prefix(':')
                    .ok_or_else(|| malformed("only ':port' may follow an IPv6 host"))?,
            ),
        };
        (host, port)
    } else {
        if host_port.matches(':').count() > 1 {
            return Err(malformed("IPv6 hosts must be in brackets, e.g. [::1]"));
        }
        match host_port.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (host_port, None),
        }
    };
    let is_host_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | ':');
    if !host.chars().all(is_host_char) {
        return Err(malformed(
            "the host contains characters not allowed in a host name",
        ));
    }
    let port = port
        .map(|p| match p.parse::<u16>() {
            Ok(port) if port != 0 && p.bytes().all(|b| b.is_ascii_digit()) => Ok(port),
            _ => Err(UriError::BadPort {
                uri: uri.to_string(),
                port: p.to_string(),
            }),
        })
        .transpose()?;
    Ok(Authority {
        user,
        host: (!host.is_empty()).then(|| host.to_string()),
        port,
    })
}

/// Splits `key=value&key=value`, percent-decoding both sides; `None` on a
/// bad escape. A key without '=' gets an empty value; empty pieces are skipped.
fn parse_params(query: &str) -> Option<Vec<(String, String)>> {
    query
        .split('&')
        .filter(|piece| !piece.is_empty())
        .map(|piece| {
            let (key, value) = piece.split_once('=').unwrap_or((piece, ""));
            Some((percent_decode(key)?, percent_decode(value)?))
        })
        .collect()
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Decodes `%XX` escapes; `None` on a truncated or non-hex escape or if the
/// result is not UTF-8. `+` is kept as is, as libvirt does.
fn percent_decode(s: &str) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        if b == b'%' {
            let high = hex_value(bytes.next()?)?;
            let low = hex_value(bytes.next()?)?;
            out.push(high << 4 | low);
        } else {
            out.push(b);
        }
    }
    String::from_utf8(out).ok()
}

/// Escapes everything but RFC 3986 unreserved characters and `keep`.
fn percent_encode(s: &str, keep: &[u8]) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') || keep.contains(&b)
        {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests;
