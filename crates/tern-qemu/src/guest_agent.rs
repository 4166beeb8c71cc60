//! Talking to the QEMU guest agent over its virtio-serial channel (the
//! unix socket QEMU serves for `<channel type='unix'>` named
//! `org.qemu.guest_agent.0`).
//!
//! The channel is a byte pipe that outlives the agent inside the guest, so
//! a stale half-answer may sit in it. Every exchange therefore starts with
//! `guest-sync-delimited`: the agent answers with a 0xFF byte (which never
//! occurs in JSON) and the id we sent, and everything before is discarded.

use serde_json::{json, Value};
use std::path::Path;
use std::time::Duration;
use thiserror::Error;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

/// Why a guest-agent command failed.
#[derive(Debug, Error)]
pub enum GuestAgentError {
    /// The channel socket is missing or refused the connection.
    #[error("cannot reach the guest agent channel {path}: {source}")]
    Connect {
        /// The socket.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// No answer in time: usually no agent runs in the guest.
    #[error(
        "the guest agent did not answer within {0} s; is qemu-guest-agent running in the guest?"
    )]
    Timeout(u64),
    /// The channel closed or carried something that is not the protocol.
    #[error("guest agent protocol error: {0}")]
    Protocol(String),
}

/// Commands the agent answers without a reply (the guest goes away).
const NO_REPLY: &[&str] = &[
    "guest-shutdown",
    "guest-suspend-disk",
    "guest-suspend-ram",
    "guest-suspend-hybrid",
];

/// Sends `request` (a QMP-style `{"execute": ...}` object) to the guest
/// agent behind `sock` and returns its whole answer (`{"return": ...}` or
/// `{"error": ...}`); `Value::Null` for commands that never answer.
pub async fn command(
    sock: &Path,
    request: &Value,
    timeout: Duration,
) -> Result<Value, GuestAgentError> {
    let stream = UnixStream::connect(sock)
        .await
        .map_err(|source| GuestAgentError::Connect {
            path: sock.display().to_string(),
            source,
        })?;
    tokio::time::timeout(timeout, exchange(stream, request))
        .await
        .map_err(|_| GuestAgentError::Timeout(timeout.as_secs()))?
}

async fn exchange(stream: UnixStream, request: &Value) -> Result<Value, GuestAgentError> {
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);
    let id = sync_id();
    let sync = json!({"execute": "guest-sync-delimited", "arguments": {"id": id}});
    send(&mut write, &sync).await?;
    loop {
        // Skip to the delimiter, then read the sync answer.
        let mut junk = Vec::new();
        read.read_until(0xff, &mut junk).await.map_err(io)?;
        if junk.last() != Some(&0xff) {
            return Err(GuestAgentError::Protocol(
                "the channel closed during sync".into(),
            ));
        }
        let answer = read_json(&mut read).await?;
        if answer["return"].as_u64() == Some(id) {
            break;
        }
    }
    send(&mut write, request).await?;
    if NO_REPLY.contains(&request["execute"].as_str().unwrap_or_default()) {
        return Ok(Value::Null);
    }
    read_json(&mut read).await
}

async fn send(
    write: &mut tokio::net::unix::OwnedWriteHalf,
    v: &Value,
) -> Result<(), GuestAgentError> {
    let mut line = v.to_string();
    line.push('\n');
    write.write_all(line.as_bytes()).await.map_err(io)
}

async fn read_json(
    read: &mut BufReader<tokio::net::unix::OwnedReadHalf>,
) -> Result<Value, GuestAgentError> {
    loop {
        let mut line = String::new();
        if read.read_line(&mut line).await.map_err(io)? == 0 {
            return Err(GuestAgentError::Protocol("the channel closed".into()));
        }
        if line.trim().is_empty() {
            continue;
        }
        return serde_json::from_str(line.trim())
            .map_err(|e| GuestAgentError::Protocol(e.to_string()));
    }
}

fn io(e: std::io::Error) -> GuestAgentError {
    GuestAgentError::Protocol(e.to_string())
}

/// A sync id unlikely to match a stale answer.
fn sync_id() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(7);
    u64::from(nanos) | 1
}

/// One guest interface from `guest-network-get-interfaces`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestInterface {
    /// Name inside the guest, e.g. "eth0".
    pub name: String,
    /// MAC address.
    pub mac: String,
    /// (family "ipv4"/"ipv6", address/prefix).
    pub addresses: Vec<(String, String)>,
}

/// Reads `guest-network-get-interfaces`' answer.
pub fn parse_interfaces(answer: &Value) -> Vec<GuestInterface> {
    let mut out = Vec::new();
    for i in answer["return"].as_array().into_iter().flatten() {
        let addresses = i["ip-addresses"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|a| {
                (
                    a["ip-address-type"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                    format!(
                        "{}/{}",
                        a["ip-address"].as_str().unwrap_or_default(),
                        a["prefix"].as_u64().unwrap_or(0)
                    ),
                )
            })
            .collect();
        out.push(GuestInterface {
            name: i["name"].as_str().unwrap_or_default().to_string(),
            mac: i["hardware-address"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            addresses,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio::net::UnixListener;

    /// A stand-in for qemu-ga on the other end of the channel: a stale
    /// half-answer first, then the protocol.
    async fn fake_agent(listener: UnixListener) {
        let (s, _) = listener.accept().await.unwrap();
        let (r, mut w) = s.into_split();
        let mut r = BufReader::new(r);
        w.write_all(b"{\"return\": {\"stale\"").await.unwrap();
        loop {
            let mut line = String::new();
            if r.read_line(&mut line).await.unwrap() == 0 {
                return;
            }
            let req: Value = serde_json::from_str(&line).unwrap();
            let reply = match req["execute"].as_str().unwrap() {
                "guest-sync-delimited" => {
                    w.write_all(&[0xff]).await.unwrap();
                    json!({"return": req["arguments"]["id"]})
                }
                "guest-network-get-interfaces" => json!({"return": [{
                    "name": "eth0", "hardware-address": "52:54:00:12:34:56",
                    "ip-addresses": [{"ip-address-type": "ipv4", "ip-address": "10.0.0.5", "prefix": 24}]
                }]}),
                _ => json!({"error": {"class": "CommandNotFound", "desc": "nope"}}),
            };
            w.write_all(format!("{reply}\n").as_bytes()).await.unwrap();
        }
    }

    #[tokio::test]
    async fn syncs_past_stale_bytes_then_answers() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("ga.sock");
        let listener = UnixListener::bind(&sock).unwrap();
        tokio::spawn(fake_agent(listener));
        let req = json!({"execute": "guest-network-get-interfaces"});
        let answer = command(&sock, &req, Duration::from_secs(5)).await.unwrap();
        let ifs = parse_interfaces(&answer);
        assert_eq!(ifs[0].name, "eth0");
        assert_eq!(
            ifs[0].addresses,
            vec![("ipv4".to_string(), "10.0.0.5/24".to_string())]
        );
    }

    #[tokio::test]
    async fn a_silent_channel_times_out_naming_the_agent() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("ga.sock");
        let listener = UnixListener::bind(&sock).unwrap();
        let _hold = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 256];
            while s.read(&mut buf).await.unwrap_or(0) > 0 {}
        });
        let req = json!({"execute": "guest-ping"});
        let err = command(&sock, &req, Duration::from_millis(300))
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("is qemu-guest-agent running"),
            "{err}"
        );
    }
}
