//! `tern-bench soak` (issue 13): many live migrations of one guest, back
//! and forth, counting what goes wrong.
//!
//! Two agents share a pool and each has a local pool; one test guest
//! (`--mem-mib` of RAM, half of it self-checking memory, dirtying
//! `--dirty-mibps`, rewriting and re-reading checksummed blocks on its
//! disk) boots on host A and is migrated `--runs` times between the hosts
//! with `tern migrate`. The methods take turns, each turn a round trip (out
//! and back, two migrations), so that drifts in the machine's speed fall on
//! every method alike:
//!
//! - **managed**: `--live`, the CLI drives both agents;
//! - **p2p**: `--live --p2p`, the source agent drives;
//! - **storage**: `--live --copy-storage-all`: the disk is mirrored out of
//!   the shared pool into the destination's local pool (`--target-pool
//!   local`) and, on the way back, into the shared pool again (the stale
//!   copy each side left behind is deleted first, as an operator would);
//! - **postcopy**: `--live --postcopy --postcopy-after-precopy`.
//!
//! A guest on a local disk can only move with its disk, so after a failed
//! storage migration the next one is a storage migration too.
//!
//! What counts, after every migration:
//!
//! - a **failed migration**: `tern migrate` failed, ran past `--give-up`
//!   (then `domjobabort`), or the hosts did not settle, checked as the
//!   tests check: one live QEMU in all, the guest running where it should
//!   be, no migration record or transient domain left on the other host;
//! - a **guest failure**: what the guest itself says on its console: a
//!   `TERN-FAIL` line (memory or disk verification, anywhere in its stay on
//!   a host), its heartbeat counter going backwards (a reset or a second
//!   copy), a kernel crash, no heartbeat on the destination, or no full
//!   memory pass and disk check within a time limit after the migration.
//!
//! Every failure is printed as it happens (stderr) and again at the end
//! (stdout), before the table: per method, migrations run, failed
//! migrations, guest failures, median total time (the `tern migrate`
//! command's wall clock) and median downtime (QEMU's, from `domjobinfo
//! --completed` on the source), and for storage copy and post-copy in how
//! many migrations the source's job events show the mirror completed or
//! the switch to post-copy. A guest that settles on neither host ends
//! the soak early. The run exits non-zero when anything failed.

use crate::guest::{after_migration, AfterMigration, CRASH_MARKERS};
use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};
use tern_testkit::pair::{boot_guest_sized, HostPair, Which};
use tern_testkit::watch::ConsoleWatcher;
use tern_testkit::SerialLog;

/// The guest's name on both hosts.
const NAME: &str = "soak";
/// Its disk's volume name (what [`boot_guest_sized`] creates).
const VOLUME: &str = "soak.raw";
/// The verifier rate the pass limit assumes when the guest verifies as
/// fast as it can (`--verify-mibps 0`): a floor, not a promise.
const SLOWEST_VERIFY: u64 = 32;
/// How long the hosts may take to settle after `tern migrate` returned.
const SETTLE_LIMIT: Duration = Duration::from_secs(120);
/// How long `tern migrate` may take to return after `domjobabort`.
const ABORT_WAIT: Duration = Duration::from_secs(30);

/// Options. The defaults are the target run.
#[derive(Args, Debug)]
pub struct SoakArgs {
    /// Migrations in all (each method's turn is a round trip of two).
    #[arg(long, default_value_t = 100)]
    runs: u32,
    /// Guest RAM, MiB (the guest fills and checks half of it).
    #[arg(long, default_value_t = 2048)]
    mem_mib: u64,
    /// MiB/s the guest rewrites (`tern.dirty`).
    #[arg(long, default_value_t = 100)]
    dirty_mibps: u64,
    /// Methods taking turns, in this order.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "managed,p2p,storage,postcopy"
    )]
    methods: Vec<Method>,
    /// MiB/s the guest's memory verifier reads (`tern.verify_rate`; 0 =
    /// as fast as its vCPU allows, at nice 19 behind the dirtier). Each
    /// migration waits for two whole passes, so this sets the soak's pace.
    #[arg(long, default_value_t = 32)]
    verify_mibps: u64,
    /// Seconds the guest runs on a host after its checks passed, before
    /// the next migration.
    #[arg(long, default_value_t = 2)]
    settle: u64,
    /// Seconds after which a migration still running is aborted and
    /// counted as failed.
    #[arg(long, default_value_t = 600)]
    give_up: u64,
}

/// One way of migrating.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Method {
    /// `tern migrate --live`, driven by the CLI.
    Managed,
    /// `--p2p`: the source agent drives.
    P2p,
    /// `--copy-storage-all`: the disk moves along.
    Storage,
    /// `--postcopy --postcopy-after-precopy`.
    Postcopy,
}

impl Method {
    /// What the source's job events say when the migration really used
    /// the method (a post-copy may finish in pre-copy; a disk could be
    /// skipped), if there is such a line.
    fn proof(self) -> Option<&'static str> {
        match self {
            Method::Storage => Some("disk mirrors completed while paused"),
            Method::Postcopy => Some("switching to post-copy"),
            Method::Managed | Method::P2p => None,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Method::Managed => "managed",
            Method::P2p => "p2p",
            Method::Storage => "storage copy",
            Method::Postcopy => "post-copy",
        }
    }
}

/// Where the guest's disk is: the shared pool, or the local pool of the
/// host the guest runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DiskHome {
    Shared,
    Local,
}

/// One host's console log while the guest runs there, and how much of it
/// has been reported.
#[derive(Debug, Clone, Copy)]
struct Stay {
    side: Which,
    failures_seen: usize,
    crashes_seen: usize,
    reset_seen: bool,
}

impl Stay {
    fn on(side: Which) -> Stay {
        Stay {
            side,
            failures_seen: 0,
            crashes_seen: 0,
            reset_seen: false,
        }
    }
}

/// What one migration did.
#[derive(Debug, Clone)]
struct Record {
    n: u32,
    method: Method,
    from: Which,
    /// Wall clock and QEMU's downtime (ms, when known), or why it failed.
    result: Result<(Duration, Option<u64>), String>,
    guest: Vec<String>,
    /// Whether the source's events show the method at work (see
    /// [`Method::proof`]).
    proved: Option<bool>,
}

impl Record {
    fn head(&self) -> String {
        format!(
            "#{} {} {:?}->{:?}",
            self.n,
            self.method.label(),
            self.from,
            self.from.other()
        )
    }
}

/// The soak's hosts, guest and bookkeeping. Fields drop in order: the
/// agents and their QEMUs first, then the pools' directories.
struct Soak {
    pair: HostPair,
    at: Which,
    disk: DiskHome,
    stay: Stay,
    give_up: Duration,
    settle: Duration,
    pass_limit: Duration,
    locals: [tempfile::TempDir; 2],
    work: tempfile::TempDir,
}

/// Runs the soak and prints every failure and the table.
pub async fn run(a: SoakArgs) -> Result<()> {
    // Let main's signal handlers be installed before the blocking set-up,
    // so that Ctrl-C during it still ends in the clean-up.
    tokio::task::yield_now().await;
    if a.methods.is_empty() || a.runs == 0 || a.mem_mib < 128 {
        bail!("--runs must be at least 1, --methods not empty and --mem-mib at least 128");
    }
    let qemu_version = crate::live::qemu_version(std::path::Path::new("qemu-system-x86_64"))?;
    crate::live::check_binaries()?;
    // Other people's guests compete for the cores; the header says so.
    let others = crate::sys::qemu_processes();
    let mut soak = Soak::start(&a)?;
    let started = Instant::now();
    let mut records: Vec<Record> = Vec::new();
    let mut lost = None;
    for i in 0..a.runs {
        let mut method = a.methods[(i as usize / 2) % a.methods.len()];
        if soak.disk == DiskHome::Local {
            method = Method::Storage;
        }
        eprintln!(
            "tern-bench: soak #{}/{} {} {:?}->{:?} ...",
            i + 1,
            a.runs,
            method.label(),
            soak.at,
            soak.at.other()
        );
        let (rec, gone) = soak.one(i + 1, method).await;
        print_record(&rec);
        records.push(rec);
        if let Some(why) = gone {
            eprintln!("tern-bench: soak stopped: {why}");
            lost = Some(why);
            break;
        }
        tokio::time::sleep(soak.settle).await;
    }
    // The last stay's lines count too.
    let tail = soak.scan_stay();
    if let Some(r) = records.last_mut() {
        r.guest.extend(tail);
    }
    println!(
        "Soak: {} migrations of a {} MiB guest (tern.mem {} MiB) dirtying {} MiB/s, \
         verifier {}, methods {}, TCG, {qemu_version}, {} cores, {others} other QEMUs at the start, \
         load average {} at the end; whole run {} s\n",
        records.len(),
        a.mem_mib,
        a.mem_mib / 2,
        a.dirty_mibps,
        match a.verify_mibps {
            0 => "as fast as the vCPU allows".to_string(),
            r => format!("{r} MiB/s"),
        },
        a.methods
            .iter()
            .map(|m| m.label())
            .collect::<Vec<_>>()
            .join(", "),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        crate::sys::loadavg().map_or("?".into(), |l| format!("{l:.1}")),
        started.elapsed().as_secs()
    );
    let (failed, guest) = print_failures(&records);
    if let Some(why) = &lost {
        println!("- the soak stopped early: {why}");
    }
    println!();
    print_table(&a.methods, &records);
    if failed + guest > 0 || lost.is_some() {
        bail!("{failed} failed migrations, {guest} guest failures");
    }
    Ok(())
}

impl Soak {
    /// Starts two agents sharing a pool, each with a local pool, and boots
    /// the guest on A.
    fn start(a: &SoakArgs) -> Result<Soak> {
        let locals = [local_dir()?, local_dir()?];
        let work = crate::guest::scratch("tern-bench-soak-")?;
        eprintln!("tern-bench: starting two agents");
        let pair = HostPair::start("soak", &[], &[]);
        pair.a.add_pool("local", locals[0].path(), false);
        pair.b.add_pool("local", locals[1].path(), false);
        eprintln!("tern-bench: booting a {} MiB guest on A", a.mem_mib);
        let fill = a.mem_mib / 2;
        boot_guest_sized(
            &pair.a,
            NAME,
            &format!(
                "tern.mem={fill} tern.dirty={} tern.verify_rate={}",
                a.dirty_mibps, a.verify_mibps
            ),
            Some(a.mem_mib),
        );
        // Two passes at the verifier's rate, three times over for TCG
        // and a busy vCPU, and a minute for the disk check.
        let rate = if a.verify_mibps == 0 {
            SLOWEST_VERIFY
        } else {
            a.verify_mibps
        };
        let pass_limit = Duration::from_secs(60 + 6 * fill / rate);
        Ok(Soak {
            pair,
            at: Which::A,
            disk: DiskHome::Shared,
            stay: Stay::on(Which::A),
            give_up: Duration::from_secs(a.give_up),
            settle: Duration::from_secs(a.settle),
            pass_limit,
            locals,
            work,
        })
    }

    fn console(&self, side: Which) -> PathBuf {
        self.pair.host(side).console_log(NAME)
    }

    fn local_dir(&self, side: Which) -> PathBuf {
        match side {
            Which::A => self.locals[0].path().to_path_buf(),
            Which::B => self.locals[1].path().to_path_buf(),
        }
    }

    /// One migration from where the guest is, with its checks. The second
    /// value says why the soak cannot go on (the guest settled nowhere).
    async fn one(&mut self, n: u32, method: Method) -> (Record, Option<String>) {
        let (from, to) = (self.at, self.at.other());
        let mut rec = Record {
            n,
            method,
            from,
            result: Err(String::new()),
            guest: Vec::new(),
            proved: None,
        };
        let flags = self.flags(method, to);
        let watcher = ConsoleWatcher::start();
        watcher.add(self.console(from), false);
        let dest_log = self.console(to);
        watcher.add(dest_log.clone(), !dest_log.exists());
        rec.result = self.migrate(from, &flags).await;
        let end = Instant::now();
        if rec.result.is_ok() {
            rec.proved = method.proof().map(|p| {
                crate::live::tern::events(self.pair.host(from), NAME)
                    .iter()
                    .any(|e| e.message.contains(p))
            });
            match after_migration(&watcher, &dest_log, end).await {
                // Crash and TERN-FAIL lines are counted by the stay scans.
                AfterMigration::Running | AfterMigration::Crashed(_) => {}
                AfterMigration::Silent => rec.guest.push(format!(
                    "no heartbeat on {to:?} within {} s of the migration's end",
                    crate::guest::RESUME_TIMEOUT.as_secs()
                )),
            }
        }
        let seen = watcher.finish();
        if seen.went_backwards {
            rec.guest
                .push("heartbeat counter went backwards across the migration".into());
        }
        let expect = if rec.result.is_ok() { to } else { from };
        let side = match self.settle_where(expect).await {
            Ok(side) => side,
            Err(why) => {
                if rec.result.is_ok() {
                    rec.result = Err(format!("migrated, but {why}"));
                }
                rec.guest.extend(self.scan_stay());
                return (
                    rec,
                    Some(format!("the guest settled on neither host: {why}")),
                );
            }
        };
        if side != expect {
            rec.result = Err(match rec.result {
                Ok(_) => format!("succeeded, but the guest runs on {side:?}"),
                Err(e) => format!("{e}; yet the guest runs on {side:?}"),
            });
        }
        if side != self.at {
            rec.guest.extend(self.scan_stay());
            self.stay = Stay::on(side);
            self.at = side;
            if method == Method::Storage {
                self.disk = match self.disk {
                    DiskHome::Shared => DiskHome::Local,
                    DiskHome::Local => DiskHome::Shared,
                };
            }
        }
        if let Err(e) = self.wait_passes().await {
            rec.guest.push(e);
        }
        rec.guest.extend(self.scan_stay());
        (rec, None)
    }

    /// `tern migrate`'s flags for `method` towards `to`. For a storage
    /// copy, the stale copy the guest left in the target pool last time
    /// is deleted first.
    fn flags(&self, method: Method, to: Which) -> Vec<&'static str> {
        let mut flags = vec!["--live"];
        match method {
            Method::Managed => {}
            Method::P2p => flags.push("--p2p"),
            Method::Postcopy => flags.extend(["--postcopy", "--postcopy-after-precopy"]),
            Method::Storage => {
                let (pool, dir) = match self.disk {
                    DiskHome::Shared => ("local", self.local_dir(to)),
                    DiskHome::Local => ("shared", self.pair.pool_dir().to_path_buf()),
                };
                let _ = std::fs::remove_file(dir.join(VOLUME));
                flags.extend(["--copy-storage-all", "--target-pool", pool]);
            }
        }
        flags
    }

    /// `tern migrate FLAGS soak TO` against `from`, within `--give-up`:
    /// the wall clock and QEMU's downtime, or why it failed.
    async fn migrate(
        &self,
        from: Which,
        flags: &[&str],
    ) -> Result<(Duration, Option<u64>), String> {
        let err_path = self.work.path().join("migrate.stderr");
        let err = std::fs::File::create(&err_path).map_err(|e| format!("stderr file: {e}"))?;
        let mut cmd: tokio::process::Command = self.pair.migrate_cmd(from, NAME, flags).into();
        let t0 = Instant::now();
        let mut child = cmd
            .env_remove("TERN_DEFAULT_URI")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("run tern migrate: {e}"))?;
        let src = self.pair.host(from);
        let status = match tokio::time::timeout(self.give_up, child.wait()).await {
            Ok(st) => st.map_err(|e| format!("wait for tern migrate: {e}"))?,
            Err(_) => {
                let _ = src.tern(&["domjobabort", NAME]);
                if tokio::time::timeout(ABORT_WAIT, child.wait())
                    .await
                    .is_err()
                {
                    let _ = child.kill().await;
                }
                return Err(format!(
                    "still running after {} s; aborted",
                    self.give_up.as_secs()
                ));
            }
        };
        let wall = t0.elapsed();
        if !status.success() {
            let e = std::fs::read_to_string(&err_path).unwrap_or_default();
            return Err(format!("tern migrate: {status}: {}", e.trim()));
        }
        let downtime = crate::live::tern::job_figures(src, NAME)
            .ok()
            .map(|f| f.downtime_ms);
        Ok((wall, downtime))
    }

    /// Waits until the guest runs on one host alone with nothing left on
    /// the other, `expect` first; says which, or why neither.
    async fn settle_where(&self, expect: Which) -> Result<Which, String> {
        let deadline = Instant::now() + SETTLE_LIMIT;
        loop {
            let why = match self.pair.unsettled(expect, NAME) {
                None => return Ok(expect),
                Some(why) => why,
            };
            if self.pair.unsettled(expect.other(), NAME).is_none() {
                return Ok(expect.other());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "not settled on {expect:?} after {} s: {why}",
                    SETTLE_LIMIT.as_secs()
                ));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Waits for two more full memory passes (the second one wholly after
    /// the migration) and one more disk check on the guest's console.
    async fn wait_passes(&self) -> Result<(), String> {
        let path = self.console(self.at);
        let counts = |l: &SerialLog| (l.count("TERN-MEM ok"), l.count("TERN-DISK ok"));
        let (mem0, disk0) = counts(&SerialLog::read(&path).unwrap_or_default());
        let deadline = Instant::now() + self.pass_limit;
        loop {
            let log = SerialLog::read(&path).unwrap_or_default();
            let (mem, disk) = counts(&log);
            if mem >= mem0 + 2 && disk > disk0 {
                return Ok(());
            }
            if !log.failures.is_empty() && log.failures.len() > self.stay.failures_seen {
                // Reported by the stay scan; no point waiting on.
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "the guest stopped reporting on {:?}: {} new memory passes and {} disk \
                     checks in {} s (wanted 2 and 1)",
                    self.at,
                    mem - mem0,
                    disk - disk0,
                    self.pass_limit.as_secs()
                ));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// New `TERN-FAIL` lines, and a first heartbeat reset, in the console
    /// of the guest's current stay.
    fn scan_stay(&mut self) -> Vec<String> {
        let bytes = std::fs::read(self.console(self.stay.side)).unwrap_or_default();
        self.stay.news(&String::from_utf8_lossy(&bytes))
    }
}

impl Stay {
    /// What `text` (the stay's console so far) shows that was not
    /// reported yet: `TERN-FAIL` lines, kernel crash lines, and the first
    /// heartbeat counter reset.
    fn news(&mut self, text: &str) -> Vec<String> {
        let log = SerialLog::parse(text);
        let mut out = Vec::new();
        if !self.reset_seen && log.seq_went_backwards() {
            self.reset_seen = true;
            out.push(format!("heartbeat counter reset on {:?}", self.side));
        }
        let seen = self.failures_seen.min(log.failures.len());
        out.extend(
            log.failures[seen..]
                .iter()
                .map(|f| format!("on {:?}: {f}", self.side)),
        );
        self.failures_seen = log.failures.len();
        let crashes: Vec<&str> = text
            .lines()
            .filter(|l| !l.contains("TERN-") && CRASH_MARKERS.iter().any(|m| l.contains(m)))
            .collect();
        let seen = self.crashes_seen.min(crashes.len());
        out.extend(
            crashes[seen..]
                .iter()
                .map(|l| format!("on {:?}: guest kernel: {}", self.side, l.trim())),
        );
        self.crashes_seen = crashes.len();
        out
    }
}

fn local_dir() -> Result<tempfile::TempDir> {
    tempfile::Builder::new()
        .prefix("tern-bench-local-")
        .tempdir()
        .context("create a local pool directory")
}

/// One migration's line on stderr, and each failure.
fn print_record(r: &Record) {
    match &r.result {
        Ok((wall, down)) => eprintln!(
            "tern-bench: {}: {:.1} s, downtime {} ms",
            r.head(),
            wall.as_secs_f64(),
            down.map_or("?".into(), |d| d.to_string())
        ),
        Err(e) => eprintln!("tern-bench: {}: FAILED MIGRATION: {e}", r.head()),
    }
    for g in &r.guest {
        eprintln!("tern-bench: {}: GUEST FAILURE: {g}", r.head());
    }
}

/// Every failure again, on stdout; their counts.
fn print_failures(records: &[Record]) -> (usize, usize) {
    let (mut failed, mut guest) = (0, 0);
    for r in records {
        if let Err(e) = &r.result {
            failed += 1;
            println!("- {}: failed migration: {e}", r.head());
        }
        for g in &r.guest {
            guest += 1;
            println!("- {}: guest failure: {g}", r.head());
        }
    }
    if failed + guest == 0 {
        println!("- no failed migration, no guest failure");
    }
    (failed, guest)
}

fn print_table(methods: &[Method], records: &[Record]) {
    println!(
        "| method | migrations | failed migrations | guest failures | median total s | median downtime ms | used the method |"
    );
    println!("|---|---:|---:|---:|---:|---:|---|");
    let mut order: Vec<Method> = methods.to_vec();
    if records.iter().any(|r| r.method == Method::Storage) && !order.contains(&Method::Storage) {
        order.push(Method::Storage);
    }
    for m in order {
        let rs: Vec<&Record> = records.iter().filter(|r| r.method == m).collect();
        let ok: Vec<(Duration, Option<u64>)> =
            rs.iter().filter_map(|r| r.result.clone().ok()).collect();
        let walls = ok.iter().map(|o| o.0.as_secs_f64()).collect();
        let downs = ok.iter().filter_map(|o| o.1.map(|d| d as f64)).collect();
        let proved = match m.proof() {
            Some(p) => format!(
                "{} of {} (\"{p}\")",
                rs.iter().filter(|r| r.proved == Some(true)).count(),
                ok.len()
            ),
            None => "–".into(),
        };
        println!(
            "| {} | {} | {} | {} | {} | {} | {proved} |",
            m.label(),
            rs.len(),
            rs.len() - ok.len(),
            rs.iter().map(|r| r.guest.len()).sum::<usize>(),
            median(walls).map_or("–".into(), |s| format!("{s:.1}")),
            median(downs).map_or("–".into(), |d| format!("{d:.0}")),
        );
    }
}

/// The median (the upper of the middle two).
fn median(mut v: Vec<f64>) -> Option<f64> {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stay_reports_each_failure_and_reset_once() {
        let mut st = Stay::on(Which::B);
        let hb = |s: u64| format!("TERN-HB seq={s} up_ms={s} mem_passes=0 dirtied_mib=0\n");
        let mut text = hb(1) + &hb(2);
        assert!(st.news(&text).is_empty());
        text += "TERN-FAIL mem pass=3 bad_pages=1 total_bad_pages=1\n";
        text += &hb(1);
        let n = st.news(&text);
        assert_eq!(n.len(), 2, "{n:?}");
        assert!(n[0].contains("reset on B") && n[1].contains("TERN-FAIL mem"));
        text += &hb(2);
        assert!(st.news(&text).is_empty());
        text += "TERN-FAIL disk block=3 expected_gen=2 found_gen=1 reason=stale\n";
        assert_eq!(st.news(&text).len(), 1);
        text += "[   12.3] BUG: unable to handle page fault\n";
        let n = st.news(&text);
        assert!(
            n.len() == 1 && n[0].contains("guest kernel: [   12.3] BUG:"),
            "{n:?}"
        );
        assert!(st.news(&text).is_empty());
    }

    #[test]
    fn median_takes_the_upper_middle() {
        assert_eq!(median(vec![]), None);
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), Some(3.0));
    }
}
