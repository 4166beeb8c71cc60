//! A QEMU process launched by the benchmark itself, with the command line
//! `ternd` would use, killed when dropped.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tern_model::Domain;
use tern_qemu::cmdline::{self, Accel, LaunchSpec};
use tern_qemu::Qmp;

/// How long QEMU may take to open its monitor (as `ternd` allows).
const QMP_WAIT: Duration = Duration::from_secs(30);

/// A running QEMU and its monitor. Dropping it kills the process.
#[derive(Debug)]
pub struct QemuProc {
    /// The monitor connection.
    pub qmp: Qmp,
    /// Its run directory (QMP socket, pid file, console log).
    pub run_dir: PathBuf,
    // Held for its Drop: kills QEMU when the guard goes.
    _child: KillOnDrop,
}

/// Kills and reaps a child process when dropped.
#[derive(Debug)]
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl QemuProc {
    /// Starts `qemu` for `domain` with TCG in `run_dir` (created), as a
    /// migration destination when `incoming`, and connects to its monitor.
    pub async fn launch(
        qemu: &Path,
        domain: &Domain,
        run_dir: &Path,
        incoming: bool,
    ) -> Result<QemuProc> {
        std::fs::create_dir_all(run_dir)
            .with_context(|| format!("create {}", run_dir.display()))?;
        let spec = LaunchSpec {
            domain,
            accel: Accel::Tcg,
            run_dir: run_dir.to_path_buf(),
            nets: Vec::new(),
            vnc_display: None,
            spice_port: None,
            incoming,
            paused: false,
            mem_path: None,
        };
        let args = cmdline::build_command_line(&spec);
        let log_path = cmdline::qemu_log(run_dir);
        let log = std::fs::File::create(&log_path)
            .with_context(|| format!("create {}", log_path.display()))?;
        let child = Command::new(qemu)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("duplicate the log file")?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("run {}", qemu.display()))?;
        let mut child = KillOnDrop(child);
        let sock = cmdline::qmp_socket(run_dir);
        let deadline = Instant::now() + QMP_WAIT;
        let qmp = loop {
            if let Some(st) = child.0.try_wait().context("wait for QEMU")? {
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                bail!(
                    "QEMU exited at start ({st}): {}",
                    tern_testkit::tail(&log, 5)
                );
            }
            if sock.exists() {
                if let Ok(q) = Qmp::connect(&sock).await {
                    break q;
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "QEMU did not open its monitor within {} s; see {}",
                    QMP_WAIT.as_secs(),
                    log_path.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        Ok(QemuProc {
            qmp,
            run_dir: run_dir.to_path_buf(),
            _child: child,
        })
    }

    /// The serial console log.
    pub fn console_log(&self) -> PathBuf {
        cmdline::console_log(&self.run_dir, 0)
    }
}
