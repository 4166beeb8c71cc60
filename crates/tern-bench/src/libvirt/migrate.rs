//! `virsh migrate --live` of the benchmark guest between the two daemons
//! of a [`LibvirtPair`], with the same figures as Tern's runs.

use super::{domain_xml, LibvirtPair, Libvirtd};
use crate::cpu::Meter;
use crate::guest::{after_migration, wait_ready, AfterMigration, Case, GuestSetup};
use crate::live::report::{Figures, Outcome, Run};
use anyhow::{Context, Result};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};
use tern_testkit::watch::ConsoleWatcher;

/// How long `virsh migrate` may take to return after `domjobabort`.
const ABORT_WAIT: Duration = Duration::from_secs(30);

/// What a libvirt run needs from the benchmark.
pub struct Plan<'a> {
    /// Image, shared disk, verifier rate.
    pub guest: &'a GuestSetup,
    /// Time between TERN-READY (and each migration) and the next migration.
    pub settle: Duration,
    /// Deadline for one migration.
    pub timeout: Duration,
    /// Migrations, back and forth.
    pub repeat: u32,
    /// CPU readings around each migration, if measured.
    pub meter: Option<&'a Meter>,
}

/// The console of the case's guest inside a daemon (`/var/log/libvirt` is
/// private to each), and where that file is on the host.
fn console(d: &Libvirtd, name: &str) -> (String, PathBuf) {
    let file = format!("{name}.console.log");
    (
        format!("/var/log/libvirt/qemu/{file}"),
        d.log_dir().join("qemu").join(file),
    )
}

/// Removes the case's guest from both daemons, whatever state it is in.
struct Cleanup<'a> {
    pair: &'a LibvirtPair,
    name: String,
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        let lab = self.pair.lab();
        for d in [&self.pair.b, &self.pair.a, &self.pair.a, &self.pair.b] {
            // Most of these fail (not running, not defined there); fine.
            let _ = d.virsh(lab, &["destroy", &self.name]);
            let _ = d.virsh(lab, &["undefine", &self.name]);
        }
    }
}

/// Boots the case's guest on daemon A and migrates it `plan.repeat` times
/// with `virsh migrate --live FLAGS --unsafe` (the disk is a local file
/// both daemons see, which libvirt calls unsafe), A to B and back.
pub async fn run(
    pair: &LibvirtPair,
    plan: &Plan<'_>,
    case: Case,
    flags: &[&str],
    notes: &mut Vec<String>,
) -> Result<Vec<Outcome>> {
    let name = case.name("libvirt");
    let (inside, on_a) = console(&pair.a, &name);
    let xml = domain_xml(&case.spec(&name, plan.guest).to_xml(), &inside)?;
    let scratch = crate::guest::scratch("tern-bench-libvirt-xml-")?;
    let xml_path = scratch.path().join(format!("{name}.xml"));
    std::fs::write(&xml_path, xml).context("write the domain XML")?;
    let _cleanup = Cleanup {
        pair,
        name: name.clone(),
    };
    let lab = pair.lab();
    for args in [
        vec!["define", xml_path.to_str().unwrap_or_default()],
        vec!["start", name.as_str()],
    ] {
        let o = pair.a.virsh(lab, &args);
        anyhow::ensure!(
            o.status.success(),
            "virsh {} failed: {}",
            args[0],
            String::from_utf8_lossy(&o.stderr).trim()
        );
    }
    wait_ready(&on_a).await?;
    let mut out = Vec::new();
    for i in 0..plan.repeat {
        tokio::time::sleep(plan.settle).await;
        let (from, to) = if i % 2 == 0 {
            (&pair.a, &pair.b)
        } else {
            (&pair.b, &pair.a)
        };
        let who = format!("libvirt #{}", i + 1);
        let o = once(pair, plan, (from, to), &name, flags, &who, notes)
            .await
            .unwrap_or_else(|e| Outcome::Failed(format!("{e:#}")));
        let go_on = matches!(&o, Outcome::Done(r) if r.crash.is_none() && r.gap.is_some());
        out.push(o);
        if !go_on {
            break;
        }
    }
    Ok(out)
}

/// One `virsh migrate`, timed, with the heartbeats watched on both consoles.
async fn once(
    pair: &LibvirtPair,
    plan: &Plan<'_>,
    (from, to): (&Libvirtd, &Libvirtd),
    name: &str,
    flags: &[&str],
    who: &str,
    notes: &mut Vec<String>,
) -> Result<Outcome> {
    let lab = pair.lab();
    let (src_log, dst_log) = (console(from, name).1, console(to, name).1);
    let watcher = ConsoleWatcher::start();
    watcher.add(src_log.clone(), false);
    // Coming back, the old console is still there until QEMU reopens it.
    let stale = dst_log.exists();
    watcher.add(dst_log.clone(), !stale);
    let log_from = crate::guest::log_len(&src_log);
    let mut cmd = tokio::process::Command::from(from.virsh_cmd(lab));
    cmd.args(["migrate", "--live"])
        .args(flags)
        .args(["--unsafe", name, &to.uri()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let cpu0 = plan.meter.map(|m| m.begin());
    let t0 = Instant::now();
    let child = cmd.spawn().context("run virsh migrate")?;
    let waited = tokio::time::timeout(plan.timeout, child.wait_with_output()).await;
    let wall = t0.elapsed();
    let end = Instant::now();
    if let (Some(m), Some(c0)) = (plan.meter, cpu0) {
        m.record(c0);
    }
    let output = match waited {
        Ok(o) => o.context("wait for virsh migrate")?,
        Err(_) => {
            let _ = from.virsh(lab, &["domjobabort", name]);
            tokio::time::sleep(ABORT_WAIT.min(Duration::from_secs(5))).await;
            let _ = watcher.finish();
            return Ok(Outcome::DidNotConverge {
                after: plan.timeout,
                figures: Figures::default(),
            });
        }
    };
    if !output.status.success() {
        let _ = watcher.finish();
        return Ok(Outcome::Failed(format!(
            "virsh migrate: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    let workload_mib_s = crate::guest::workload_rate(&src_log, log_from);
    let figures = job_figures(pair, from, to, name)?;
    let after = after_migration(&watcher, &dst_log, end).await;
    let rep = watcher.finish();
    crate::live::note_watch(who, &rep, &after, notes);
    Ok(Outcome::Done(Run {
        wall,
        figures,
        gap: (after == AfterMigration::Running).then_some(rep.max_gap),
        gap_guest: (after == AfterMigration::Running).then_some(rep.max_gap_guest),
        times_late: figures.times_missing(),
        crash: match after {
            AfterMigration::Crashed(l) => Some(l),
            _ => None,
        },
        workload_mib_s,
        ..Default::default()
    }))
}

/// The completed job's statistics, from the source (which keeps them for
/// the domain it left defined) or else the destination.
fn job_figures(pair: &LibvirtPair, from: &Libvirtd, to: &Libvirtd, name: &str) -> Result<Figures> {
    let mut errors = Vec::new();
    for d in [from, to] {
        let o = d.virsh(
            pair.lab(),
            &["domjobinfo", name, "--completed", "--rawstats"],
        );
        if o.status.success() {
            if let Some(f) = parse_rawstats(&String::from_utf8_lossy(&o.stdout)) {
                return Ok(f);
            }
        }
        errors.push(String::from_utf8_lossy(&o.stderr).trim().to_string());
    }
    anyhow::bail!(
        "no completed job statistics from either daemon: {}",
        errors.join("; ")
    )
}

/// `virsh domjobinfo --completed --rawstats`: `name: value` lines of the
/// job's typed parameters. `memory_processed` is QEMU's `ram.transferred`.
pub fn parse_rawstats(text: &str) -> Option<Figures> {
    let get = |key: &str| {
        text.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == key).then(|| v.trim().parse::<u64>().ok())?
        })
    };
    Some(Figures {
        total_ms: get("time_elapsed")?,
        downtime_ms: get("downtime").unwrap_or(0),
        bytes: get("memory_processed")?,
        iterations: get("memory_iteration").unwrap_or(0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completed_job_statistics_are_read() {
        let text = "Job type:         Completed\n\ntime_elapsed: 1834\ntime_elapsed_net: 1830\n\
                    downtime: 41\nmemory_processed: 287309824\nmemory_iteration: 3\n";
        let f = parse_rawstats(text).unwrap();
        assert_eq!(
            (f.total_ms, f.downtime_ms, f.bytes, f.iterations),
            (1834, 41, 287309824, 3)
        );
        assert_eq!(parse_rawstats("Job type: None\n"), None);
    }
}
