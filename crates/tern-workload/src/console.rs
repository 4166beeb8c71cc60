//! Console output and the counters shared between the workload's threads.
//!
//! Every line goes out with a single `write(2)` on stdout, which the init
//! script connects to `/dev/console` (the serial port). The tty layer keeps
//! one `write(2)` together, so lines from different threads never interleave.

use std::sync::atomic::{AtomicU64, Ordering};

/// Heartbeat counter: the `seq` of the last `TERN-HB` line.
pub static HB_SEQ: AtomicU64 = AtomicU64::new(0);
/// Full verification passes over the memory area.
pub static MEM_PASSES: AtomicU64 = AtomicU64::new(0);
/// Bytes rewritten by the memory dirtier.
pub static DIRTIED_BYTES: AtomicU64 = AtomicU64::new(0);

/// Print one line (a newline is added) with a single `write(2)` on fd 1.
pub fn emit(line: &str) {
    let mut buf = Vec::with_capacity(line.len() + 1);
    buf.extend_from_slice(line.as_bytes());
    buf.push(b'\n');
    let mut rest: &[u8] = &buf;
    while !rest.is_empty() {
        // SAFETY: the pointer and length describe the live slice `rest`.
        let n = unsafe { libc::write(1, rest.as_ptr().cast(), rest.len()) };
        if n < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return;
        }
        rest = &rest[n as usize..];
    }
}

/// Print a `TERN-FAIL <what> <detail>` line.
pub fn fail(what: &str, detail: &str) {
    emit(&format!("TERN-FAIL {what} {detail}"));
}

/// Read a counter.
pub fn get(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}
