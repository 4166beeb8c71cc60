//! A tiny stand-in for qemu-guest-agent on the virtio-serial port named
//! `org.qemu.guest_agent.0`, so tests can see the agent channel answer
//! (and reconnect after a migration) without a distribution in the guest.
//!
//! It answers `guest-sync-delimited` (0xFF, then the id), `guest-sync`,
//! `guest-ping`, `guest-info`, `guest-get-time`,
//! `guest-network-get-interfaces` (the guest's interfaces and IPv4
//! addresses, read from its kernel) and `guest-fsfreeze-freeze`/`-thaw`
//! (0: the initramfs has no filesystem to freeze); anything else gets
//! QEMU's `CommandNotFound` error. Each command other than a sync is also
//! printed as `TERN-QGA <command>`. `TERN-QGA listening <dev>` says the
//! port was found.

use crate::console;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::Duration;

const PORT_NAME: &str = "org.qemu.guest_agent.0";

/// Looks for the agent's port for a while; serves it if it appears.
pub fn spawn() {
    let _ = std::thread::Builder::new().name("qga".into()).spawn(|| {
        // The port appears once the host's virtio-serial announces it.
        for _ in 0..100 {
            if let Some(dev) = find_port() {
                return serve(dev);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    });
}

fn find_port() -> Option<PathBuf> {
    for e in std::fs::read_dir("/sys/class/virtio-ports").ok()?.flatten() {
        let name = std::fs::read_to_string(e.path().join("name")).unwrap_or_default();
        if name.trim() == PORT_NAME {
            return Some(PathBuf::from("/dev").join(e.file_name()));
        }
    }
    None
}

fn serve(dev: PathBuf) {
    let mut port = match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&dev)
    {
        Ok(f) => f,
        Err(e) => return console::fail("qga", &format!("cannot open {}: {e}", dev.display())),
    };
    console::emit(&format!("TERN-QGA listening {}", dev.display()));
    let mut pending = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match port.read(&mut buf) {
            // Nobody on the host side (between connections, or while the
            // guest moves): the port reads as closed until someone connects.
            Ok(0) | Err(_) => std::thread::sleep(Duration::from_millis(100)),
            Ok(n) => pending.extend_from_slice(&buf[..n]),
        }
        while let Some(end) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line);
            if let Some(answer) = answer(line.trim()) {
                let _ = port.write_all(&answer);
            }
        }
    }
}

/// The bytes to send back for one request line (`None` for blank lines).
fn answer(line: &str) -> Option<Vec<u8>> {
    let line = line.trim_start_matches('\u{ff}').trim();
    if line.is_empty() {
        return None;
    }
    let cmd = string_field(line, "execute").unwrap_or_default();
    let mut out = Vec::new();
    let body = match cmd.as_str() {
        "guest-sync-delimited" => {
            out.push(0xff);
            format!("{{\"return\": {}}}", number_field(line, "id").unwrap_or(0))
        }
        "guest-sync" => format!("{{\"return\": {}}}", number_field(line, "id").unwrap_or(0)),
        "guest-ping" => "{\"return\": {}}".to_string(),
        "guest-info" => {
            "{\"return\": {\"version\": \"tern-workload\", \"supported_commands\": []}}".to_string()
        }
        "guest-network-get-interfaces" => format!("{{\"return\": {}}}", interfaces_json()),
        "guest-fsfreeze-freeze" | "guest-fsfreeze-thaw" => "{\"return\": 0}".to_string(),
        "guest-get-time" => {
            let ns = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            format!("{{\"return\": {ns}}}")
        }
        other => format!(
            "{{\"error\": {{\"class\": \"CommandNotFound\", \"desc\": \"The command {other} has not been found\"}}}}"
        ),
    };
    if !cmd.starts_with("guest-sync") {
        console::emit(&format!("TERN-QGA {cmd}"));
    }
    out.extend_from_slice(body.as_bytes());
    out.push(b'\n');
    Some(out)
}

/// `[{"name", "hardware-address", "ip-addresses": [...]}]` for every
/// interface in /sys/class/net.
fn interfaces_json() -> String {
    let mut names: Vec<String> = std::fs::read_dir("/sys/class/net")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    let items: Vec<String> = names
        .iter()
        .map(|n| {
            let mac =
                std::fs::read_to_string(format!("/sys/class/net/{n}/address")).unwrap_or_default();
            let addrs = match ipv4_of(n) {
                Some((a, p)) => format!(
                    "{{\"ip-address-type\": \"ipv4\", \"ip-address\": \"{a}\", \"prefix\": {p}}}"
                ),
                None => String::new(),
            };
            format!(
                "{{\"name\": \"{n}\", \"hardware-address\": \"{}\", \"ip-addresses\": [{addrs}]}}",
                mac.trim()
            )
        })
        .collect();
    format!("[{}]", items.join(", "))
}

/// An interface's IPv4 address and prefix length, from the kernel
/// (`SIOCGIFADDR`, `SIOCGIFNETMASK`).
fn ipv4_of(name: &str) -> Option<(std::net::Ipv4Addr, u32)> {
    if name.len() >= libc::IFNAMSIZ {
        return None;
    }
    // SAFETY: a plain socket(2) call; the descriptor is closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0) };
    if fd < 0 {
        return None;
    }
    let ask = |request: libc::c_ulong| -> Option<u32> {
        // SAFETY: ifreq is plain old data; all zeroes is a valid value.
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        for (d, s) in req.ifr_name.iter_mut().zip(name.bytes()) {
            *d = s as libc::c_char;
        }
        // SAFETY: `req` is a live ifreq with a NUL-terminated name, as
        // these ioctls expect; the kernel writes only inside it.
        if unsafe { libc::ioctl(fd, request, &mut req) } < 0 {
            return None;
        }
        // SAFETY: for AF_INET the kernel filled the union's address as a
        // sockaddr_in, which fits inside sockaddr.
        let sin: libc::sockaddr_in =
            unsafe { std::ptr::read_unaligned(std::ptr::addr_of!(req.ifr_ifru.ifru_addr).cast()) };
        Some(u32::from_be(sin.sin_addr.s_addr))
    };
    let addr = ask(libc::SIOCGIFADDR);
    let mask = ask(libc::SIOCGIFNETMASK);
    // SAFETY: `fd` is ours and closed once.
    unsafe { libc::close(fd) };
    Some((std::net::Ipv4Addr::from(addr?), mask?.count_ones()))
}

/// The text after `"key":` up to the next non-space, as a JSON string.
fn after_key<'a>(json: &'a str, key: &str) -> Option<&'a str> {
    let at = json.find(&format!("\"{key}\""))? + key.len() + 2;
    let rest = json[at..].trim_start().strip_prefix(':')?;
    Some(rest.trim_start())
}

fn string_field(json: &str, key: &str) -> Option<String> {
    let rest = after_key(json, key)?.strip_prefix('"')?;
    Some(rest[..rest.find('"')?].to_string())
}

fn number_field(json: &str, key: &str) -> Option<u64> {
    let rest = after_key(json, key)?;
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sync_delimited_answers_with_the_delimiter_and_the_id() {
        let a = answer(r#"{"execute":"guest-sync-delimited","arguments":{"id":1234567}}"#).unwrap();
        assert_eq!(a, b"\xff{\"return\": 1234567}\n");
    }

    #[test]
    fn ping_and_unknown_commands() {
        let a = answer(r#"{ "execute" : "guest-ping" }"#).unwrap();
        assert_eq!(a, b"{\"return\": {}}\n");
        let a = String::from_utf8(answer(r#"{"execute":"guest-exec"}"#).unwrap()).unwrap();
        assert!(
            a.contains("CommandNotFound") && a.contains("guest-exec"),
            "{a}"
        );
        assert_eq!(answer("  "), None);
        let a = answer(r#"{"execute":"guest-fsfreeze-freeze"}"#).unwrap();
        assert_eq!(a, b"{\"return\": 0}\n");
    }

    #[test]
    fn interfaces_are_valid_json_naming_loopback() {
        let a = String::from_utf8(answer(r#"{"execute":"guest-network-get-interfaces"}"#).unwrap())
            .unwrap();
        assert!(
            a.starts_with("{\"return\": [") && a.ends_with("]}\n"),
            "{a}"
        );
        assert!(a.contains("\"name\": \"lo\""), "{a}");
    }
}
