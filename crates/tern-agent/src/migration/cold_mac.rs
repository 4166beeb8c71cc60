//! Keys that authenticate cold copies.
//!
//! Each file's copy gets a 256-bit MAC key derived from a secret only this
//! host knows (`<state dir>/cold-copy.key`, 32 random bytes, mode 0600,
//! made on first use) and the copy's session id. The source puts it in
//! Begin's reply; the driver hands it to the destination in Prepare, over
//! the agents' authenticated API (unix socket or mutual TLS), never over
//! the data connection. The receiver then accepts only a sender that holds
//! the key, and checks a keyed BLAKE3 MAC on every chunk (see
//! `tern_transfer::Checksum::Mac`). Deriving rather than drawing the key
//! keeps it stable across retries, so an interrupted copy still resumes.

use crate::error::{AgentError, Result};
use crate::Agent;
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use tern_migrate::protocol::SecretHex;
use tern_transfer::MacKey;

const SECRET_FILE: &str = "cold-copy.key";

/// This host's secret, created on first use.
fn host_secret(agent: &Agent) -> Result<[u8; 32]> {
    let path = agent.cfg.state_dir.join(SECRET_FILE);
    let mut secret = [0u8; 32];
    match std::fs::read(&path) {
        Ok(b) if b.len() == 32 => {
            secret.copy_from_slice(&b);
            return Ok(secret);
        }
        Ok(_) => {
            return Err(AgentError::Failed(format!(
                "{} is not 32 bytes; remove it and a new one is made",
                path.display()
            )))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(AgentError::state(&path, e)),
    }
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut secret))
        .map_err(|e| AgentError::Failed(format!("cannot read /dev/urandom: {e}")))?;
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| f.write_all(&secret).and_then(|_| f.sync_all()))
        .and_then(|_| std::fs::rename(&tmp, &path))
        .map_err(|e| AgentError::state(&path, e))?;
    Ok(secret)
}

/// The MAC key of the copy with `session` (hex), as the source sends it.
pub fn key_for(agent: &Agent, session: &str) -> Result<SecretHex> {
    let secret = host_secret(agent)?;
    let mut h = Sha256::new();
    h.update(b"tern cold-copy mac key\0");
    h.update(secret);
    h.update(session.as_bytes());
    Ok(SecretHex(
        h.finalize().iter().map(|b| format!("{b:02x}")).collect(),
    ))
}

/// The key a request carries; a copy without one is refused (an agent
/// of an older version, or a request that was tampered with).
pub fn parse(key: Option<&SecretHex>) -> Result<MacKey> {
    let bad = || {
        AgentError::Invalid(
            "the cold copy carries no valid MAC key (mac_key); both agents must be of this version"
                .into(),
        )
    };
    let hex = &key.ok_or_else(bad)?.0;
    if hex.len() != 64 {
        return Err(bad());
    }
    let mut k = [0u8; 32];
    for (i, b) in k.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
    }
    Ok(MacKey(k))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_parse_and_missing_ones_are_refused() {
        let k = parse(Some(&SecretHex("ab".repeat(32)))).unwrap();
        assert_eq!(k.0, [0xab; 32]);
        assert!(parse(None).is_err());
        assert!(parse(Some(&SecretHex("zz".repeat(32)))).is_err());
        assert_eq!(format!("{:?}", SecretHex("ab".into())), "SecretHex(..)");
    }
}
