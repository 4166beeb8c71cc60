//! The memory workload: a verifier thread and a dirtier thread over an
//! anonymous area filled with the self-checking [`pattern`].
//!
//! Races: each page has an `AtomicU64` holding its expected generation plus a
//! lock bit. The dirtier and the verifier only touch a page while holding its
//! lock bit, so the verifier never sees a half-written page. The dirtier never
//! waits for a lock (it moves on to its next page); the verifier retries.

use crate::clock;
use crate::console::{self, DIRTIED_BYTES, MEM_PASSES};
use crate::pattern::{self, PAGE_BYTES, PAGE_WORDS};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

const LOCK: u64 = 1 << 63;
/// Most `TERN-FAIL mem` lines printed per pass (a summary line follows).
const MAX_FAIL_LINES_PER_PASS: u64 = 16;

/// An anonymous memory area of self-checking pages.
pub struct MemArea {
    base: *mut u64,
    pages: usize,
    gens: Vec<AtomicU64>,
}

// SAFETY: page contents are only accessed while holding that page's lock bit.
unsafe impl Send for MemArea {}
// SAFETY: as above.
unsafe impl Sync for MemArea {}

impl MemArea {
    /// Map `mib` MiB of anonymous memory and fill every page (generation 1).
    pub fn new(mib: u64) -> std::io::Result<MemArea> {
        let bytes = (mib as usize).saturating_mul(1 << 20);
        // SAFETY: anonymous private mapping; the result is checked.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let pages = bytes / PAGE_BYTES;
        let area = MemArea {
            base: base.cast(),
            pages,
            gens: (0..pages).map(|_| AtomicU64::new(1)).collect(),
        };
        for i in 0..pages {
            // SAFETY: no other thread exists yet.
            pattern::fill(unsafe { area.page_mut(i) }, i as u64, 1);
        }
        Ok(area)
    }

    /// Number of pages.
    pub fn pages(&self) -> usize {
        self.pages
    }

    /// # Safety
    /// The caller must hold page `i`'s lock (or be the only thread).
    #[allow(clippy::mut_from_ref)]
    unsafe fn page_mut(&self, i: usize) -> &mut [u64] {
        // SAFETY: page `i` lies inside the mapping, and the caller holds its
        // lock, so no other reference to it exists.
        unsafe { std::slice::from_raw_parts_mut(self.base.add(i * PAGE_WORDS), PAGE_WORDS) }
    }

    /// Take page `i`'s lock if it is free; returns its expected generation.
    fn try_lock(&self, i: usize) -> Option<u64> {
        let g = self.gens[i].load(Ordering::Relaxed);
        if g & LOCK != 0 {
            return None;
        }
        self.gens[i]
            .compare_exchange(g, g | LOCK, Ordering::Acquire, Ordering::Relaxed)
            .ok()
    }

    fn unlock(&self, i: usize, gen: u64) {
        self.gens[i].store(gen, Ordering::Release);
    }

    /// Lock page `i`, waiting (briefly sleeping) while the dirtier holds it.
    fn lock(&self, i: usize) -> u64 {
        let mut spins = 0u32;
        loop {
            if let Some(g) = self.try_lock(i) {
                return g;
            }
            spins += 1;
            if spins < 64 {
                std::hint::spin_loop();
            } else {
                std::thread::sleep(Duration::from_micros(50));
            }
        }
    }

    /// Verify page `i`; on mismatch rewrite it with a new generation (so a
    /// single corruption is reported once) and return the mismatch.
    fn check_page(&self, i: usize) -> Result<(), (u64, pattern::Mismatch)> {
        let gen = self.lock(i);
        // SAFETY: we hold the page lock.
        let page = unsafe { self.page_mut(i) };
        match pattern::verify(page, i as u64, gen) {
            Ok(()) => {
                self.unlock(i, gen);
                Ok(())
            }
            Err(m) => {
                let new_gen = gen.wrapping_add(1).max(1) & !LOCK;
                pattern::fill(page, i as u64, new_gen);
                self.unlock(i, new_gen);
                Err((gen, m))
            }
        }
    }

    /// Rewrite page `i` with the next generation unless it is locked.
    fn try_dirty(&self, i: usize) -> bool {
        let Some(gen) = self.try_lock(i) else {
            return false;
        };
        let new_gen = (gen + 1) & !LOCK;
        // SAFETY: we hold the page lock.
        pattern::fill(unsafe { self.page_mut(i) }, i as u64, new_gen);
        self.unlock(i, new_gen);
        true
    }
}

impl Drop for MemArea {
    fn drop(&mut self) {
        // SAFETY: `base` came from mmap with this length and is no longer used.
        unsafe { libc::munmap(self.base.cast(), self.pages * PAGE_BYTES) };
    }
}

/// The verifier loop: re-check all pages forever.
fn verifier(area: Arc<MemArea>, verify_mibps: u64) {
    clock::make_background();
    let pages = area.pages();
    let mut last_print_ns = 0u64;
    let mut total_bad = 0u64;
    // Pacing: pages allowed per 10 ms slice (0 = unlimited).
    let per_slice = (verify_mibps * 256 / 100).max(1) as usize;
    loop {
        let mut bad_this_pass = 0u64;
        let mut slice_start = clock::mono_ns();
        for i in 0..pages {
            if let Err((expected, m)) = area.check_page(i) {
                bad_this_pass += 1;
                if bad_this_pass <= MAX_FAIL_LINES_PER_PASS {
                    console::fail(
                        "mem",
                        &format!(
                            "page={i} expected_gen={expected} found_index={} found_gen={} \
                             bad_words={} first_bad_word={}",
                            m.found_index, m.found_gen, m.bad_words, m.first_bad_word
                        ),
                    );
                }
            }
            if verify_mibps > 0 && (i + 1) % per_slice == 0 {
                slice_start += 10_000_000;
                clock::sleep_until(slice_start);
            }
        }
        let passes = MEM_PASSES.fetch_add(1, Ordering::Relaxed) + 1;
        let now = clock::mono_ns();
        if bad_this_pass > 0 {
            total_bad += bad_this_pass;
            console::fail(
                "mem",
                &format!("pass={passes} bad_pages={bad_this_pass} total_bad_pages={total_bad}"),
            );
        } else if last_print_ns == 0 || now - last_print_ns >= 1_000_000_000 {
            console::emit(&format!("TERN-MEM ok passes={passes} pages={pages}"));
            last_print_ns = now;
        }
    }
}

/// Smallest stride >= 0.618 * pages that is coprime with `pages`: walking by
/// it visits every page once per round, spread over the whole area.
pub fn spread_stride(pages: usize) -> usize {
    fn gcd(a: usize, b: usize) -> usize {
        if b == 0 {
            a
        } else {
            gcd(b, a % b)
        }
    }
    if pages <= 1 {
        return 1;
    }
    let mut s = (pages as u128 * 618 / 1000) as usize;
    s = s.max(1);
    while gcd(s, pages) != 1 {
        s += 1;
    }
    s
}

/// The dirtier loop: rewrite pages at `mibps` MiB/s in 10 ms slices.
fn dirtier(area: Arc<MemArea>, mibps: u64) {
    const SLICE_NS: u64 = 10_000_000;
    let pages = area.pages();
    let stride = spread_stride(pages);
    let pages_per_sec = mibps * 256;
    let max_backlog = (pages_per_sec / 10).max(1); // at most 100 ms of catch-up
    let start = clock::mono_ns();
    let mut done = 0u64;
    let mut cursor = 0usize;
    let mut next = start;
    loop {
        let now = clock::mono_ns();
        let due = ((now - start) as u128 * pages_per_sec as u128 / 1_000_000_000) as u64;
        if due > done + max_backlog {
            done = due - max_backlog;
        }
        let mut misses = 0;
        while done < due && misses < pages {
            cursor = (cursor + stride) % pages;
            if area.try_dirty(cursor) {
                done += 1;
                DIRTIED_BYTES.fetch_add(PAGE_BYTES as u64, Ordering::Relaxed);
            } else {
                misses += 1;
            }
        }
        next += SLICE_NS;
        if next <= now {
            next = now + SLICE_NS;
        }
        clock::sleep_until(next);
    }
}

/// Fill the area and start the verifier and (if `dirty_mibps > 0`) the dirtier.
pub fn start(mib: u64, dirty_mibps: u64, verify_mibps: u64) -> std::io::Result<usize> {
    let area = Arc::new(MemArea::new(mib)?);
    let pages = area.pages();
    if pages == 0 {
        return Ok(0);
    }
    let a = Arc::clone(&area);
    std::thread::Builder::new()
        .name("mem-verify".into())
        .spawn(move || verifier(a, verify_mibps))?;
    if dirty_mibps > 0 {
        std::thread::Builder::new()
            .name("mem-dirty".into())
            .spawn(move || dirtier(area, dirty_mibps))?;
    }
    Ok(pages)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stride_visits_every_page() {
        for pages in [1usize, 2, 3, 10, 256, 16384, 16385] {
            let s = spread_stride(pages);
            let mut seen = vec![false; pages];
            let mut c = 0;
            for _ in 0..pages {
                c = (c + s) % pages;
                seen[c] = true;
            }
            assert!(seen.iter().all(|&b| b), "pages={pages} stride={s}");
        }
    }

    #[test]
    fn concurrent_dirty_and_verify_never_mismatch() {
        let area = Arc::new(MemArea::new(1).expect("mmap 1 MiB"));
        let a = Arc::clone(&area);
        let writer = std::thread::spawn(move || {
            let mut n = 0;
            for round in 0..200 {
                for i in 0..a.pages() {
                    if a.try_dirty((i * 7 + round) % a.pages()) {
                        n += 1;
                    }
                }
            }
            n
        });
        for _ in 0..50 {
            for i in 0..area.pages() {
                assert!(area.check_page(i).is_ok(), "false failure on page {i}");
            }
        }
        assert!(writer.join().expect("writer thread") > 0);
    }

    #[test]
    fn corruption_is_reported_once_then_repaired() {
        let area = MemArea::new(1).expect("mmap 1 MiB");
        // SAFETY: single-threaded test.
        unsafe { area.page_mut(3)[100] ^= 0xff };
        let (expected, m) = area.check_page(3).unwrap_err();
        assert_eq!((expected, m.first_bad_word, m.bad_words), (1, 100, 1));
        assert!(area.check_page(3).is_ok());
    }
}
