//! Reading what the daemons expose for monitoring: a plain HTTP GET on
//! loopback (a Prometheus scrape) and Debian's `promtool` lint of the
//! exposition text.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};

/// `GET path` on `addr` with HTTP/1.0; returns the status and the body.
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    http_request(addr, "GET", path, None)
}

/// `METHOD path` on `addr` with HTTP/1.0 and an optional JSON body; reads
/// until the server closes (an event stream: until it ends); returns the
/// status and the body.
pub fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    json: Option<&str>,
) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    let body = json.unwrap_or("");
    let ctype = match json {
        Some(_) => "Content-Type: application/json\r\n",
        None => "",
    };
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\n{ctype}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("send request");
    let mut raw = String::new();
    s.read_to_string(&mut raw).expect("read answer");
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, body.to_string())
}

/// A free loopback address for a daemon's `--metrics-listen`.
pub fn metrics_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], crate::free_port()))
}

/// `/metrics` at `addr`, which must answer 200.
pub fn scrape(addr: SocketAddr) -> String {
    let (status, body) = http_get(addr, "/metrics");
    assert_eq!(status, 200, "{body}");
    body
}

/// The value of the sample of family `name` whose labels include every
/// pair of `labels` (e.g. `("role", "source")`), if the text has one.
pub fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (series, value) = l.rsplit_once(' ')?;
        let (n, rest) = series.split_once('{').unwrap_or((series, "}"));
        let all = labels
            .iter()
            .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
        (n == name && all).then(|| value.parse().ok())?
    })
}

/// Scrapes `addr`'s `/metrics` until `ready` holds for the text (what the
/// daemon reports, not a clock, decides); panics after `timeout` with the
/// last text and `what` was awaited.
pub fn wait_metrics(
    addr: SocketAddr,
    what: &str,
    timeout: std::time::Duration,
    ready: impl Fn(&str) -> bool,
) -> String {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let (status, text) = http_get(addr, "/metrics");
        assert_eq!(status, 200, "{text}");
        if ready(&text) {
            return text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no {what} within {timeout:?}:\n{text}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// Runs `promtool check metrics` on the text; returns its verdict (Ok
/// when it found nothing to say).
pub fn promtool_check(text: &str) -> Result<(), String> {
    let mut c = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool (Debian package prometheus; scripts/install-deps.sh installs it)");
    c.stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("feed promtool");
    let out = c.wait_with_output().expect("promtool output");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() && said.trim().is_empty() {
        Ok(())
    } else {
        Err(said)
    }
}

/// `METHOD url` over mutual TLS with `curl`: the CA of `ca_dir`
/// (`cacert.pem`) and the client certificate of `cert_dir` (`tern pki`
/// layout); reads until the server closes (an event stream: until it
/// ends); returns the status and the body.
pub fn https_request(
    ca_dir: &std::path::Path,
    cert_dir: &std::path::Path,
    method: &str,
    url: &str,
    json: Option<&str>,
) -> (u16, String) {
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "-N", "-o", "-", "-w", "\n%{http_code}", "--cacert"])
        .arg(ca_dir.join("cacert.pem"))
        .arg("--cert")
        .arg(cert_dir.join("clientcert.pem"))
        .arg("--key")
        .arg(cert_dir.join("private/clientkey.pem"))
        .args(["-X", method]);
    if let Some(body) = json {
        cmd.args(["-H", "Content-Type: application/json", "--data", body]);
    }
    let o = cmd
        .arg(url)
        .output()
        .expect("run curl (scripts/install-deps.sh installs it)");
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}
