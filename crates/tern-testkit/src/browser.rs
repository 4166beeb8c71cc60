//! A headless Chromium for the web console's tests: Debian's
//! `chromedriver` on a free loopback port with a fresh profile, killed
//! with its browser on drop, and the capabilities a WebDriver client
//! (such as fantoccini) starts the session with.

use crate::free_port;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where Debian installs the browser and its driver.
pub const CHROMIUM: &str = "/usr/bin/chromium";
/// See [`CHROMIUM`].
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// A running chromedriver.
#[derive(Debug)]
pub struct ChromeDriver {
    /// `http://127.0.0.1:PORT`: the WebDriver endpoint.
    pub url: String,
    /// Its log.
    pub log: PathBuf,
    child: Option<Child>,
    profile: tempfile::TempDir,
}

/// Whether Chromium and chromedriver are installed
/// (`scripts/install-deps.sh` installs them).
pub fn available() -> bool {
    std::path::Path::new(CHROMIUM).exists() && std::path::Path::new(CHROMEDRIVER).exists()
}

impl ChromeDriver {
    /// Starts chromedriver on a free loopback port, in its own process
    /// group so that dropping it ends the browsers it started too.
    pub fn start() -> ChromeDriver {
        assert!(
            available(),
            "{CHROMIUM} and {CHROMEDRIVER} are needed; run scripts/install-deps.sh"
        );
        let profile = tempfile::Builder::new()
            .prefix("tern-chromium-")
            .tempdir()
            .expect("temp dir");
        let port = free_port();
        let log = profile.path().join("chromedriver.log");
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .arg(format!("--log-path={}", log.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("spawn chromedriver");
        let d = ChromeDriver {
            url: format!("http://127.0.0.1:{port}"),
            log,
            child: Some(child),
            profile,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        d
    }

    /// Capabilities for a headless Chromium with a `width`x`height`
    /// window, a fresh profile, and nothing that reaches the network on
    /// its own (as root, it also needs `--no-sandbox`).
    pub fn capabilities(
        &self,
        width: u32,
        height: u32,
    ) -> serde_json::Map<String, serde_json::Value> {
        let dir = self.profile.path().join("profile");
        let args = vec![
            "--headless".to_string(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-quic".into(),
            "--no-first-run".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--disable-dev-shm-usage".into(),
            "--hide-scrollbars".into(),
            format!("--window-size={width},{height}"),
            format!("--user-data-dir={}", dir.display()),
        ];
        let caps = serde_json::json!({
            "browserName": "chrome",
            "goog:chromeOptions": { "binary": CHROMIUM, "args": args },
        });
        match caps {
            serde_json::Value::Object(m) => m,
            _ => unreachable!("a JSON object"),
        }
    }
}

impl Drop for ChromeDriver {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill(2) on the process group this driver leads; no
            // memory is touched.
            unsafe {
                libc::kill(-(c.id() as i32), libc::SIGKILL);
            }
            let _ = c.wait();
        }
    }
}
