//! The heartbeat thread: one `TERN-HB` line every period.

use crate::clock;
use crate::console::{self, DIRTIED_BYTES, HB_SEQ, MEM_PASSES};
use std::sync::atomic::Ordering;

/// Format one heartbeat line (without newline).
pub fn line(seq: u64, up_ms: u64, mem_passes: u64, dirtied_mib: u64) -> String {
    format!("TERN-HB seq={seq} up_ms={up_ms} mem_passes={mem_passes} dirtied_mib={dirtied_mib}")
}

/// Give the calling thread a real-time priority so busy threads cannot starve it.
/// Failure is harmless (the thread then runs at normal priority).
fn make_realtime() -> bool {
    let param = libc::sched_param { sched_priority: 10 };
    // SAFETY: pid 0 means the calling thread; `param` is valid.
    unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) == 0 }
}

/// Start the heartbeat thread. `seq` starts at 1 and only ever grows.
pub fn spawn(period_ms: u64) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("heartbeat".into())
        .spawn(move || {
            if !make_realtime() {
                console::emit("TERN-INFO heartbeat runs without real-time priority");
            }
            let period_ns = period_ms * 1_000_000;
            let mut next = clock::mono_ns();
            loop {
                let seq = HB_SEQ.fetch_add(1, Ordering::Relaxed) + 1;
                console::emit(&line(
                    seq,
                    clock::boottime_ms(),
                    console::get(&MEM_PASSES),
                    console::get(&DIRTIED_BYTES) >> 20,
                ));
                next += period_ns;
                let now = clock::mono_ns();
                if next <= now {
                    // We fell behind (e.g. the VM was paused): don't burst to catch up.
                    next = now + period_ns;
                }
                clock::sleep_until(next);
            }
        })
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    #[test]
    fn heartbeat_line_format() {
        assert_eq!(
            super::line(7, 1234, 2, 40),
            "TERN-HB seq=7 up_ms=1234 mem_passes=2 dirtied_mib=40"
        );
    }
}
