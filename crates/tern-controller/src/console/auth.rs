//! Who may use the console: a password file of argon2 hashes with a role
//! each, and the sessions a login opens.
//!
//! The file has one user a line, `USER:ROLE:PHC-HASH` (`#` starts a
//! comment), where ROLE is `ro` or `rw`. `tern-controller console-passwd`
//! writes it; the controller reads it when the console starts.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use thiserror::Error;

/// What a session may do: as the API's read-only and read-write access.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Look only.
    ReadOnly,
    /// Look and act (migrate, cancel, start, shut down, maintenance).
    ReadWrite,
}

impl std::str::FromStr for Role {
    type Err = AuthError;
    fn from_str(s: &str) -> Result<Role, AuthError> {
        match s {
            "ro" | "read-only" => Ok(Role::ReadOnly),
            "rw" | "read-write" => Ok(Role::ReadWrite),
            _ => Err(AuthError::BadRole(s.to_string())),
        }
    }
}

impl Role {
    fn short(self) -> &'static str {
        match self {
            Role::ReadOnly => "ro",
            Role::ReadWrite => "rw",
        }
    }
}

/// Password-file and login errors.
#[derive(Debug, Error)]
pub enum AuthError {
    /// The file cannot be read or written.
    #[error("password file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A line does not parse.
    #[error("password file {path}, line {line}: {why}; rewrite it with 'tern-controller console-passwd'")]
    Line {
        /// The file.
        path: String,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        why: String,
    },
    /// A role name other than ro and rw.
    #[error("role '{0}' is unknown; use ro (read-only) or rw (read-write)")]
    BadRole(String),
    /// A user name that cannot be stored.
    #[error("user name '{0}' is invalid; use letters, digits, '-', '_' and '.'")]
    BadUser(String),
    /// Hashing failed.
    #[error("cannot hash the password: {0}")]
    Hash(String),
}

/// One user of the password file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// Name.
    pub name: String,
    /// Role.
    pub role: Role,
    /// Argon2 hash in PHC form.
    pub hash: String,
}

fn valid_user(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

/// Parses a password file's text.
pub fn parse_users(path: &str, text: &str) -> Result<Vec<User>, AuthError> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let l = raw.trim();
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        let bad = |why: &str| AuthError::Line {
            path: path.to_string(),
            line: i + 1,
            why: why.to_string(),
        };
        let mut parts = l.splitn(3, ':');
        let (Some(name), Some(role), Some(hash)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(bad("expected USER:ROLE:HASH"));
        };
        if !valid_user(name) {
            return Err(bad("the user name is invalid"));
        }
        let role: Role = role.parse().map_err(|_| bad("the role is not ro or rw"))?;
        PasswordHash::new(hash).map_err(|_| bad("the hash is not an argon2 PHC string"))?;
        out.push(User {
            name: name.to_string(),
            role,
            hash: hash.to_string(),
        });
    }
    Ok(out)
}

/// Reads a password file.
pub fn load_users(path: &Path) -> Result<Vec<User>, AuthError> {
    let text = std::fs::read_to_string(path).map_err(|source| AuthError::Io {
        path: path.display().to_string(),
        source,
    })?;
    parse_users(&path.display().to_string(), &text)
}

/// An argon2id hash of `password` with a fresh random salt.
pub fn hash_password(password: &str) -> Result<String, AuthError> {
    let salt = SaltString::encode_b64(uuid::Uuid::new_v4().as_bytes())
        .map_err(|e| AuthError::Hash(e.to_string()))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| AuthError::Hash(e.to_string()))
}

/// Adds or replaces `user` in the file at `path` (created if absent,
/// mode 0600).
pub fn set_user(path: &Path, user: &str, role: Role, password: &str) -> Result<(), AuthError> {
    if !valid_user(user) {
        return Err(AuthError::BadUser(user.to_string()));
    }
    let io = |source| AuthError::Io {
        path: path.display().to_string(),
        source,
    };
    let mut users = match std::fs::read_to_string(path) {
        Ok(t) => parse_users(&path.display().to_string(), &t)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(io(e)),
    };
    users.retain(|u| u.name != user);
    users.push(User {
        name: user.to_string(),
        role,
        hash: hash_password(password)?,
    });
    let mut text = String::from("# tern-controller console users: USER:ROLE:ARGON2-HASH\n");
    for u in &users {
        text.push_str(&format!("{}:{}:{}\n", u.name, u.role.short(), u.hash));
    }
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io)?;
        f.write_all(text.as_bytes()).map_err(io)?;
    }
    std::fs::rename(&tmp, path).map_err(io)
}

/// Checks a login; the user's role if the password matches.
pub fn check(users: &[User], name: &str, password: &str) -> Option<Role> {
    let u = users.iter().find(|u| u.name == name)?;
    let h = PasswordHash::new(&u.hash).ok()?;
    Argon2::default()
        .verify_password(password.as_bytes(), &h)
        .ok()
        .map(|_| u.role)
}

/// A logged-in browser.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Session {
    /// User name.
    pub user: String,
    /// Role.
    pub role: Role,
    #[serde(skip)]
    expires: Instant,
}

/// Open sessions by token. Kept in memory: a restarted controller asks
/// browsers to log in again.
#[derive(Debug, Default)]
pub struct Sessions {
    map: Mutex<HashMap<String, Session>>,
}

/// How long a session lasts without use.
pub const SESSION_IDLE: Duration = Duration::from_secs(8 * 3600);

impl Sessions {
    /// Opens a session; its token (two random v4 UUIDs, 244 random bits).
    pub fn open(&self, user: &str, role: Role) -> String {
        let token = format!(
            "{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        );
        let mut m = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        m.retain(|_, s| s.expires > now);
        m.insert(
            token.clone(),
            Session {
                user: user.to_string(),
                role,
                expires: now + SESSION_IDLE,
            },
        );
        token
    }

    /// The session of a token, renewed; `None` if unknown or expired.
    pub fn get(&self, token: &str) -> Option<Session> {
        let mut m = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let s = m.get_mut(token)?;
        if s.expires <= now {
            m.remove(token);
            return None;
        }
        s.expires = now + SESSION_IDLE;
        Some(s.clone())
    }

    /// Ends a session.
    pub fn close(&self, token: &str) {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(token);
    }
}

/// The session token in a `Cookie` header, if any.
pub fn cookie_token<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').find_map(|kv| {
        let (k, v) = kv.trim().split_once('=')?;
        (k == name).then_some(v)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_file_round_trips_and_checks_passwords() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("users");
        set_user(&f, "alice", Role::ReadWrite, "s3cret").unwrap();
        set_user(&f, "bob", Role::ReadOnly, "pw").unwrap();
        set_user(&f, "alice", Role::ReadWrite, "new").unwrap();
        let u = load_users(&f).unwrap();
        assert_eq!(u.len(), 2);
        assert_eq!(check(&u, "alice", "new"), Some(Role::ReadWrite));
        assert_eq!(check(&u, "alice", "s3cret"), None);
        assert_eq!(check(&u, "bob", "pw"), Some(Role::ReadOnly));
        assert_eq!(check(&u, "carol", "pw"), None);
        assert!(set_user(&f, "no:colon", Role::ReadOnly, "x").is_err());
    }

    #[test]
    fn bad_lines_name_the_line() {
        let e = parse_users("f", "# c\n\nalice:admin:$argon2id$x\n").unwrap_err();
        assert!(e.to_string().contains("line 3"), "{e}");
        let e = parse_users("f", "alice:rw:plain\n").unwrap_err();
        assert!(e.to_string().contains("argon2"), "{e}");
        assert!(parse_users("f", "alice\n").is_err());
    }

    #[test]
    fn sessions_and_cookies() {
        let s = Sessions::default();
        let t = s.open("alice", Role::ReadOnly);
        assert_eq!(s.get(&t).unwrap().role, Role::ReadOnly);
        s.close(&t);
        assert!(s.get(&t).is_none());
        assert_eq!(
            cookie_token("a=1; tern_session=xyz", "tern_session"),
            Some("xyz")
        );
        assert_eq!(cookie_token("a=1", "tern_session"), None);
    }
}
