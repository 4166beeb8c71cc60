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
use tern_testkit::netns::skip_unless_root;
use tern_testkit::pair::{interrupt, kill9, try_state, wait_memory_sent, wait_mirror_active};
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
    /// The a–b link goes down for [`CUT_FOR`], in a lab where the agents
    /// and the driver (in namespace C) talk over TCP: B is parted from
    /// both.
    CutLink,
}

/// How long a cut link stays down: longer than the orphan timeout, so
/// both sides act on their own before they can talk again.
const CUT_FOR: Duration = Duration::from_secs(8);

/// When it goes wrong.
#[derive(Debug, Clone, Copy)]
enum Moment {
    /// An agent holds at a fault point.
    Point(Which, &'static str),
    /// QEMU is sending memory (a 16 MiB/s cap makes this last seconds).
    Precopy,
    /// The same, in a `--p2p` migration (the source agent drives).
    PrecopyP2p,
    /// A `--copy-storage-all` migration of a guest on a local disk, while
    /// the disk mirror runs (capped at 4 MiB/s).
    Mirror,
    /// Post-copy, once the destination runs the guest: a guest dirtying
    /// 40 MiB/s, switched after one pre-copy pass, pages pulled at 4 MiB/s.
    Postcopy,
}

/// The flags of a second migration after the fault.
fn again_flags(m: Moment) -> &'static [&'static str] {
    match m {
        Moment::Mirror => &["--live", "--copy-storage-all"],
        Moment::Postcopy => &["--live", "--postcopy", "--postcopy-after-precopy"],
        _ => &["--live"],
    }
}

/// The migration flags of a moment (also those of the second migration).
fn flags(m: Moment) -> &'static [&'static str] {
    match m {
        Moment::Precopy => &["--live", "--bandwidth", "16"],
        Moment::PrecopyP2p => &["--live", "--p2p", "--bandwidth", "16"],
        Moment::Mirror => &["--live", "--copy-storage-all", "--bandwidth", "4"],
        Moment::Postcopy => &[
            "--live",
            "--postcopy",
            "--postcopy-after-precopy",
            "--no-policy",
            "--bandwidth",
            "20",
            "--postcopy-bandwidth",
            "4",
        ],
        Moment::Point(..) => &["--live"],
    }
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
    if matches!(cell.fault, Fault::CutLink) && skip_unless_root(cell.name) {
        return;
    }
    let mut a_args: Vec<&str> = ORPHAN.to_vec();
    let mut b_args: Vec<&str> = ORPHAN.to_vec();
    if let Moment::Point(w, point) = cell.moment {
        let args = match w {
            Which::A => &mut a_args,
            Which::B => &mut b_args,
        };
        args.extend(["--fault-stop-at", point]);
    }
    let short = &cell.name[..cell.name.len().min(24)];
    let mut p = match cell.fault {
        Fault::CutLink => HostPair::start_in_lab(short, &a_args, &b_args),
        _ => HostPair::start(short, &a_args, &b_args),
    };
    // Initials keep QEMU's socket paths under 108 bytes.
    let name: String = cell
        .name
        .split('_')
        .filter_map(|w| w.chars().next())
        .collect();
    let name = &format!("fm-{name}");
    let mirror = matches!(cell.moment, Moment::Mirror);
    if mirror {
        p.add_local_pools();
        p.boot_local(name, "tern.mem=48 tern.dirty=0", 16);
    } else if let Moment::Postcopy = cell.moment {
        p.boot(name, "tern.mem=64 tern.dirty=40 tern.verify_rate=32");
    } else {
        p.boot(name, "tern.mem=48 tern.dirty=0");
    }
    let mut driver = p.migrate_bg(Which::A, name, flags(cell.moment));
    let point = match cell.moment {
        Moment::Point(w, pt) => {
            let fp = FaultPoint::of(p.host(w), pt);
            fp.wait_reached(Duration::from_secs(90));
            Some(fp)
        }
        Moment::Precopy | Moment::PrecopyP2p => {
            // Memory moving means the destination QEMU reads the stream:
            // before the guard has handed it the socket, killing the
            // destination agent ends the migration (guest on the source),
            // after it the copy goes on (guest on the destination).
            wait_memory_sent(&p.a, name, 24 << 20);
            None
        }
        Moment::Mirror => {
            wait_mirror_active(&p.a, name);
            None
        }
        Moment::Postcopy => {
            wait_postcopy_running(&p, name);
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
        Fault::CutLink => p.lab().cut_link(),
    }
    if let Some(fp) = &point {
        fp.release();
    }
    if let Fault::CutLink = cell.fault {
        std::thread::sleep(CUT_FOR);
        p.lab().restore_link();
    }
    let out = wait_child(&mut driver, Duration::from_secs(120));
    println!("{}: driver said: {out}", cell.name);
    p.wait_settled_on(cell.expect, name, Duration::from_secs(90));
    p.assert_guest_whole_on(cell.expect, name);
    let vol = format!("{name}.raw");
    match (mirror, cell.expect) {
        (true, Which::A) => {
            // The rolled-back destination deleted the volume it created.
            let vols = p.b.ok(&["vol-list", "images"]);
            assert!(!vols.contains(&vol), "{vols}");
        }
        (true, Which::B) => {
            // As with virsh, the source keeps its (now stale) disk; the
            // way back needs the name free.
            p.a.ok(&["vol-delete", &vol, "--pool", "images"]);
        }
        _ => {}
    }
    // And it moves again.
    let again = p.migrate(cell.expect, name, again_flags(cell.moment));
    assert!(
        again.status.success(),
        "{}: second migration failed: {}\n{}",
        cell.name,
        String::from_utf8_lossy(&again.stderr),
        p.events(name)
    );
    p.wait_settled_on(cell.expect.other(), name, Duration::from_secs(60));
    p.assert_guest_whole_on(cell.expect.other(), name);
    // The finished job outlives its agent.
    p.kill9_and_restart(cell.expect);
    let done = p
        .host(cell.expect)
        .ok(&["domjobinfo", name, "--completed", "--json"]);
    assert!(done.contains("\"completed\""), "{done}");
}

/// Waits until the source's QEMU is in post-copy and the destination runs
/// the guest (from QEMU's switch on: its Finish may still be under way),
/// with pages still to pull.
fn wait_postcopy_running(p: &HostPair, name: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let j = p.a.ok(&["domjobinfo", name, "--json"]);
        let j: serde_json::Value = serde_json::from_str(&j).unwrap_or_default();
        let runs = try_state(&p.b, name).is_ok_and(|s| s.starts_with("running"));
        if j["qemu_status"] == "postcopy-active" && runs {
            return;
        }
        assert!(Instant::now() < deadline, "post-copy never ran: {j}");
        std::thread::sleep(Duration::from_millis(100));
    }
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
    p2p_source_agent_killed_in_precopy: KillAgent(A), PrecopyP2p => A;
    // QEMU holds the stream's socket itself (the guard hands it over), so
    // the copy goes on without the agent and its restarted self finishes it.
    p2p_dest_agent_killed_in_precopy: KillAgent(B), PrecopyP2p => B;
    source_agent_killed_after_qemu_completed: KillAgent(A), Point(A, "source-completed") => B;
    source_agent_killed_in_confirm: KillAgent(A), Point(A, "source-before-quit") => B;
    dest_agent_killed_in_prepare: KillAgent(B), Point(B, "dest-prepared") => A;
    dest_agent_killed_in_precopy: KillAgent(B), Precopy => B;
    dest_agent_killed_before_cont: KillAgent(B), Point(B, "dest-before-cont") => B;
    dest_agent_killed_after_cont: KillAgent(B), Point(B, "dest-after-cont") => B;
    source_qemu_killed_after_completion: KillQemu(A), Point(A, "source-completed") => B;
    dest_qemu_killed_before_cont: KillQemu(B), Point(B, "dest-before-cont") => A;
    driver_killed_in_precopy: KillDriver, Precopy => B;
    driver_killed_after_prepare: KillDriver, Point(B, "dest-prepared") => B;
    driver_killed_before_cont: KillDriver, Point(B, "dest-before-cont") => B;
    ctrl_c_in_precopy: CtrlC, Precopy => A;
    link_cut_after_qemu_completed: CutLink, Point(A, "source-completed") => A;
    link_cut_before_cont: CutLink, Point(B, "dest-before-cont") => B;
    link_cut_in_confirm: CutLink, Point(A, "source-before-quit") => B;
    source_agent_killed_in_mirror: KillAgent(A), Mirror => A;
    dest_agent_killed_in_mirror: KillAgent(B), Mirror => A;
    dest_qemu_killed_in_mirror: KillQemu(B), Mirror => A;
    driver_killed_in_mirror: KillDriver, Mirror => B;
    source_agent_killed_in_postcopy: KillAgent(A), Postcopy => B;
    dest_agent_killed_in_postcopy: KillAgent(B), Postcopy => B;
}

/// The destination's state directory is full when Prepare must record the
/// migration: Prepare refuses, names the directory, and creates nothing;
/// the guest never stops on the source.
#[test]
fn dest_state_dir_full_in_prepare() {
    let p = HostPair::start("fullprep", ORPHAN, ORPHAN);
    let name = "fullprep";
    p.boot(name, "tern.mem=48 tern.dirty=0");
    let full = tern_testkit::pair::FullDir::over(&p.b.state_dir().join("jobs"));
    let out = p.migrate(Which::A, name, &["--live"]);
    assert!(
        !out.status.success(),
        "migrated into a full state directory"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot record migration") && err.contains("free space"),
        "{err}"
    );
    p.wait_settled_on(Which::A, name, Duration::from_secs(30));
    p.assert_guest_whole_on(Which::A, name);
    drop(full);
    let again = p.migrate(Which::A, name, &["--live"]);
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    p.wait_settled_on(Which::B, name, Duration::from_secs(60));
    p.assert_guest_whole_on(Which::B, name);
}

/// The destination cannot store the definition after `cont` (its
/// definitions directory is full, `--persistent`): the guest runs there
/// and only there, the migration succeeds with a warning, and the source
/// does not resume a second copy.
#[test]
fn dest_state_dir_full_in_finish() {
    let p = HostPair::start("fullfin", ORPHAN, ORPHAN);
    let name = "fullfin";
    p.boot(name, "tern.mem=48 tern.dirty=0");
    let full = tern_testkit::pair::FullDir::over(&p.b.state_dir().join("domains"));
    let out = p.migrate(Which::A, name, &["--live", "--persistent"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}\n{}", p.events(name));
    assert!(
        err.contains("warning") && err.contains("could not be stored"),
        "{err}"
    );
    p.wait_settled_on(Which::B, name, Duration::from_secs(30));
    p.assert_guest_whole_on(Which::B, name);
    drop(full);
    let again = p.migrate(Which::B, name, &["--live"]);
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    p.wait_settled_on(Which::A, name, Duration::from_secs(60));
}

/// The destination's pool has room for the volume Prepare creates (raw
/// and sparse) but not for what the mirror writes into it: the mirror
/// fails, the guest keeps running on the source, the destination deletes
/// the volume it created, and the error names what ran out.
#[test]
fn dest_pool_fills_during_mirror() {
    let mut p = HostPair::start("poolfull", ORPHAN, ORPHAN);
    let name = "poolfull";
    let (_, ib) = p.add_local_pools();
    p.boot_local(name, "tern.mem=48 tern.dirty=0", 16);
    let full = tern_testkit::pair::FullDir::small(&ib, 2048);
    let out = p.migrate(Which::A, name, &["--live", "--copy-storage-all"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "migrated into a full pool");
    assert!(
        err.contains("No space left") || err.contains("space"),
        "{err}"
    );
    p.wait_settled_on(Which::A, name, Duration::from_secs(60));
    p.assert_guest_whole_on(Which::A, name);
    let vols = p.b.ok(&["vol-list", "images"]);
    assert!(!vols.contains(&format!("{name}.raw")), "{vols}");
    drop(full);
    let again = p.migrate(Which::A, name, &["--live", "--copy-storage-all"]);
    assert!(
        again.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&again.stderr),
        p.events(name)
    );
    p.wait_settled_on(Which::B, name, Duration::from_secs(60));
    p.assert_guest_whole_on(Which::B, name);
}

/// A verdict that reaches the destination while its Prepare is still under
/// way (held at `dest-prepared`, before its answer) waits for the
/// destination's run to take it: it is applied after the answer, never
/// beside a Prepare half done. The verdict here is "failed" (as a
/// controller rolling back sends it), so the destination gives everything
/// up, the source's Perform fails, and the guest stays whole on A.
#[test]
fn a_verdict_during_prepare_waits_for_its_answer() {
    use tern_api::{Client, MigrationRequest, Request};
    use tern_migrate::protocol::{FinishReply, FinishRequest, PROTOCOL_VERSION};
    let mut b_args: Vec<&str> = ORPHAN.to_vec();
    b_args.extend(["--fault-stop-at", "dest-prepared"]);
    let p = HostPair::start("verdict-wait", ORPHAN, &b_args);
    let name = "fm-vw";
    p.boot(name, "tern.mem=48 tern.dirty=0");
    let mut driver = p.migrate_bg(Which::A, name, &["--live"]);
    let fp = FaultPoint::of(&p.b, "dest-prepared");
    fp.wait_reached(Duration::from_secs(90));
    let rec = p.b.state_dir().join("jobs").join(format!("{name}.json"));
    let rec: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&rec).expect("B's job record")).unwrap();
    let req = FinishRequest {
        version: PROTOCOL_VERSION,
        id: rec["id"].as_str().unwrap().parse().unwrap(),
        name: name.to_string(),
        success: false,
        options: serde_json::from_value(rec["options"].clone()).unwrap(),
    };
    let (tx, rx) = std::sync::mpsc::channel();
    let socket = p.b.socket();
    let finisher = std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let r = rt.block_on(
            Client::unix(socket)
                .call::<FinishReply>(&Request::Migration(MigrationRequest::MigrateFinish { req })),
        );
        let _ = tx.send(r.map_err(|e| e.to_string()));
    });
    // Held before its answer, the run takes no verdict.
    if let Ok(r) = rx.recv_timeout(Duration::from_secs(3)) {
        panic!("a verdict was applied before Prepare answered: {r:?}");
    }
    fp.release();
    let r = rx
        .recv_timeout(Duration::from_secs(90))
        .expect("the verdict was never answered")
        .expect("Finish failed");
    assert!(!r.resumed, "{r:?}");
    let _ = finisher.join();
    println!(
        "driver said: {}",
        wait_child(&mut driver, Duration::from_secs(120))
    );
    p.wait_settled_on(Which::A, name, Duration::from_secs(90));
    p.assert_guest_whole_on(Which::A, name);
}
