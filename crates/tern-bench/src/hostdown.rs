//! Host death to guest running elsewhere, with fencing proven (issue 14).
//!
//! Each round: a controller (embedded store), two agents, one small guest
//! with its disk in a shared pool, auto-migrate-on-host-down enabled and
//! the fence armed. At t=0 the whole host dies (its fence process, QEMU
//! and agent: SIGKILL), so its storage lease stops. Timed: the controller
//! declares the host down; the rescue starts (the host is proven fenced:
//! its lease stood still past its promise); the server runs on the other
//! host; the guest there prints TERN-READY. Prints a table with the median
//! and the worst of each column.
//!
//! `--storage rbd` (issue 21): the guest's disk is a volume of an rbd pool
//! on the test kit's single-node Ceph instead, with no lease: the host is
//! proven fenced once the controller has blocklisted the Ceph client its
//! agent reported for the guest.

use anyhow::{bail, Result};
use clap::Args;
use std::time::{Duration, Instant};
use tern_testkit::ceph::{skip_without_ceph, CephCluster};
use tern_testkit::cluster::{boot_on_pool, enable_host_down_policy, shared_pool, wait_server};
use tern_testkit::fencing::{kill_host, wait_armed};
use tern_testkit::rbd::{add_rbd_pool, define_guest_with_disk, volume_disk_xml, RBD_POOL};
use tern_testkit::{SerialLog, TestController};

/// Options.
#[derive(Args, Debug)]
pub struct HostDownArgs {
    /// Rounds (the target run is 10).
    #[arg(long, default_value_t = 10)]
    rounds: usize,
    /// Where the guest's disk lives: `dir` (a shared directory, fenced by
    /// its lease) or `rbd` (Ceph, fenced by the OSD blocklist).
    #[arg(long, default_value = "dir")]
    storage: String,
}

/// The moments of one round, from the host's death.
#[derive(Debug, Clone, Copy)]
struct Round {
    down: Duration,
    rescue_started: Duration,
    running: Duration,
    ready: Duration,
}

fn wait<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> Result<T> {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("timed out waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn json(c: &TestController, args: &[&str]) -> serde_json::Value {
    let o = c.tern(&[args, &["--json"]].concat());
    serde_json::from_slice(&o.stdout).unwrap_or(serde_json::Value::Null)
}

fn round(i: usize, ceph: Option<&CephCluster>) -> Result<Round> {
    let c = TestController::file(&[]);
    let (na, nb) = (format!("a{i}"), format!("b{i}"));
    let mut a = TestController::host(&[&c], &na, &[]);
    let b = TestController::host(&[&c], &nb, &[]);
    let pool = match ceph {
        None => {
            let pool = shared_pool(&[&a, &b], "shared");
            boot_on_pool(&a, "vm", "shared");
            Some(pool)
        }
        Some(ceph) => {
            for h in [&a, &b] {
                add_rbd_pool(h, ceph);
            }
            let vol = format!("hd{i}-disk");
            a.ok(&["vol-create-as", RBD_POOL, &vol, "16M"]);
            define_guest_with_disk(
                &a,
                "vm",
                "tern.mem=16 tern.dirty=0",
                2,
                &volume_disk_xml(&vol, "vda"),
            );
            a.ok(&["start", "vm"]);
            None
        }
    };
    wait_server(&c, "vm", &na, "running");
    enable_host_down_policy(&c, &na);
    match &pool {
        Some(p) => {
            wait_armed(p.path(), &na, Duration::from_secs(60));
        }
        // Fenced by Ceph: the controller must know the guest's client.
        None => {
            wait("the guest's RBD client reported", || {
                json(&c, &["host-show", &na])["report"]["rbd_clients"]
                    .as_array()
                    .is_some_and(|l| !l.is_empty())
                    .then_some(())
            })?;
        }
    }
    let t0 = Instant::now();
    let wall0 = std::time::SystemTime::now();
    kill_host(&mut a);
    let down = wait("host down", || {
        json(&c, &["host-show", &na])["status"]["down"]
            .is_object()
            .then(|| t0.elapsed())
    })?;
    let running = wait("server running elsewhere", || {
        let v = json(&c, &["server-show", "vm"]);
        (v["host"] == nb.as_str() && v["state"] == "running").then(|| t0.elapsed())
    })?;
    let started_ms = json(&c, &["job-list"])
        .as_array()
        .and_then(|a| a.iter().find(|j| j["kind"] == "rescue").cloned())
        .and_then(|j| j["started_ms"].as_u64())
        .unwrap_or(0);
    let wall0_ms = wall0
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let rescue_started = Duration::from_millis(started_ms.saturating_sub(wall0_ms));
    let ready = wait("guest ready elsewhere", || {
        let t = b.ok(&["console", "vm"]);
        SerialLog::parse(&t).ready().then(|| t0.elapsed())
    })?;
    drop((b, a, c, pool));
    Ok(Round {
        down,
        rescue_started,
        running,
        ready,
    })
}

/// Median and worst of a column.
fn stats(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    (median, v[n - 1])
}

/// Runs the benchmark.
pub async fn run(a: HostDownArgs) -> Result<()> {
    tokio::task::yield_now().await;
    if a.rounds == 0 {
        bail!("--rounds must be at least 1");
    }
    let rbd = match a.storage.as_str() {
        "dir" => false,
        "rbd" => true,
        other => bail!("unknown --storage '{other}'; give dir or rbd"),
    };
    if rbd && skip_without_ceph("tern-bench hostdown --storage rbd") {
        bail!("Ceph is not installed");
    }
    let rounds = tokio::task::spawn_blocking(move || {
        let ceph = rbd.then(CephCluster::start);
        println!("| round | host down | proven fenced, rescue starts | server running elsewhere | guest ready elsewhere |");
        println!("|------:|----------:|-----------------------------:|------------------------:|----------------------:|");
        let mut out = Vec::new();
        for i in 0..a.rounds {
            let r = round(i, ceph.as_ref())?;
            println!(
                "| {i:>5} | {:>7.1} s | {:>26.1} s | {:>21.1} s | {:>19.1} s |",
                r.down.as_secs_f64(),
                r.rescue_started.as_secs_f64(),
                r.running.as_secs_f64(),
                r.ready.as_secs_f64()
            );
            out.push(r);
        }
        Ok::<_, anyhow::Error>(out)
    })
    .await??;
    let col =
        |f: fn(&Round) -> Duration| stats(rounds.iter().map(|r| f(r).as_secs_f64()).collect());
    for (name, (m, w)) in [
        ("host down", col(|r| r.down)),
        ("rescue starts", col(|r| r.rescue_started)),
        ("server running elsewhere", col(|r| r.running)),
        ("guest ready elsewhere", col(|r| r.ready)),
    ] {
        println!(
            "{name}: median {m:.1} s, worst {w:.1} s (n={})",
            rounds.len()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn median_and_worst() {
        assert_eq!(super::stats(vec![3.0, 1.0, 2.0]), (2.0, 3.0));
        assert_eq!(super::stats(vec![4.0, 1.0, 2.0, 3.0]), (2.5, 4.0));
    }
}
