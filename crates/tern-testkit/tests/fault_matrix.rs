//! The fault matrix: one process dies (or the driver is interrupted, or a
//! state directory fills) at one named moment of a live migration between
//! two real agents with a real guest, and the guest must end up running on
//! exactly one host, whole, with nothing left on the other; then it must
//! migrate again. docs/FAULTS.md lists every cell and its outcome.
//!
//! Agents hold at a moment with `--fault-stop-at POINT` (see
//! `tern_agent::faults`); moments without a point (pre-copy) are reached by
//! a bandwidth cap and waiting for the job to move memory. Both agents run
//! with `--orphan-timeout 3`, so a migration whose driver vanished settles
//! within seconds.

use std::process::Child;
use std::time::{Duration, Instant};
use tern_testkit::pair::{interrupt, kill9, wait_job_active};
use tern_testkit::{FaultPoint, HostPair, Which};

/// What goes wrong.
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// `kill -9` of a host's agent, which is then started again.
    KillAgent(Which),
    /// `kill -9` of a host's QEMU for the guest.
    KillQemu(Which),
    /// `kill -9` of the managed `tern migrate`.
    KillDriver,
    /// Ctrl-C on `tern migrate`.
    CtrlC,
}

/// When it goes wrong.
#[derive(Debug, Clone, Copy)]
enum Moment {
    /// An agent holds at a fault point.
    Point(Which, &'static str),
    /// QEMU is sending memory (a 16 MiB/s cap makes this last seconds).
    Precopy,
}

struct Cell {
    name: &'static str,
    fault: Fault,
    moment: Moment,
    /// Where the guest must run afterwards.
    expect: Which,
}

const ORPHAN: &[&str] = &["--orphan-timeout", "3"];

fn run(cell: &Cell) {
    let mut a_args: Vec<&str> = ORPHAN.to_vec();
    let mut b_args: Vec<&str> = ORPHAN.to_vec();
    if let Moment::Point(w, point) = cell.moment {
        let args = match w {
            Which::A => &mut a_args,
            Which::B => &mut b_args,
        };
        args.extend(["--fault-stop-at", point]);
    }
    let mut p = HostPair::start(cell.name, &a_args, &b_args);
    let name = cell.name.replace('_', "-");
    let name = &name[..name.len().min(40)];
    p.boot(name, "tern.mem=48 tern.dirty=0");
    let flags: &[&str] = match cell.moment {
        Moment::Precopy => &["--live", "--bandwidth", "16"],
        Moment::Point(..) => &["--live"],
    };
    let mut driver = p.migrate_bg(Which::A, name, flags);
    let point = match cell.moment {
        Moment::Point(w, pt) => {
            let fp = FaultPoint::of(p.host(w), pt);
            fp.wait_reached(Duration::from_secs(90));
            Some(fp)
        }
        Moment::Precopy => {
            wait_job_active(&p.a, name);
            None
        }
    };
    match cell.fault {
        Fault::KillAgent(w) => p.kill9_and_restart(w),
        Fault::KillQemu(w) => {
            for pid in p.host(w).qemu_pids() {
                kill9(pid);
            }
        }
        Fault::KillDriver => {
            let _ = driver.kill();
        }
        Fault::CtrlC => interrupt(&driver),
    }
    if let Some(fp) = &point {
        fp.release();
    }
    let out = wait_child(&mut driver, Duration::from_secs(120));
    println!("{}: driver said: {out}", cell.name);
    p.wait_settled_on(cell.expect, name, Duration::from_secs(90));
    p.assert_guest_whole_on(cell.expect, name);
    // And it moves again.
    let again = p.migrate(cell.expect, name, &["--live"]);
    assert!(
        again.status.success(),
        "{}: second migration failed: {}\n{}",
        cell.name,
        String::from_utf8_lossy(&again.stderr),
        p.events(name)
    );
    p.wait_settled_on(cell.expect.other(), name, Duration::from_secs(60));
    p.assert_guest_whole_on(cell.expect.other(), name);
}

/// Waits for the driver to end (killing it after `timeout`); its exit
/// status and its last words.
fn wait_child(c: &mut Child, timeout: Duration) -> String {
    use std::io::Read;
    let deadline = Instant::now() + timeout;
    while !matches!(c.try_wait(), Ok(Some(_))) {
        if Instant::now() > deadline {
            let _ = c.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let status = c.wait().map(|s| s.to_string()).unwrap_or_default();
    let mut err = String::new();
    if let Some(e) = c.stderr.as_mut() {
        let _ = e.read_to_string(&mut err);
    }
    format!("{status}: {}", err.trim())
}

macro_rules! cells {
    ($($name:ident: $fault:expr, $moment:expr => $expect:expr;)*) => {
        $(
            #[test]
            fn $name() {
                run(&Cell {
                    name: stringify!($name),
                    fault: $fault,
                    moment: $moment,
                    expect: $expect,
                });
            }
        )*
    };
}

use Fault::*;
use Moment::*;
use Which::{A, B};

cells! {
    source_agent_killed_in_precopy: KillAgent(A), Precopy => A;
    source_agent_killed_after_qemu_completed: KillAgent(A), Point(A, "source-completed") => A;
    source_agent_killed_in_confirm: KillAgent(A), Point(A, "source-before-quit") => B;
    dest_agent_killed_in_prepare: KillAgent(B), Point(B, "dest-prepared") => A;
    dest_agent_killed_in_precopy: KillAgent(B), Precopy => B;
    dest_agent_killed_before_cont: KillAgent(B), Point(B, "dest-before-cont") => B;
    dest_agent_killed_after_cont: KillAgent(B), Point(B, "dest-after-cont") => B;
    source_qemu_killed_after_completion: KillQemu(A), Point(A, "source-completed") => B;
    dest_qemu_killed_before_cont: KillQemu(B), Point(B, "dest-before-cont") => A;
    driver_killed_in_precopy: KillDriver, Precopy => B;
    driver_killed_after_prepare: KillDriver, Point(B, "dest-prepared") => A;
    driver_killed_before_cont: KillDriver, Point(B, "dest-before-cont") => B;
    ctrl_c_in_precopy: CtrlC, Precopy => A;
}
