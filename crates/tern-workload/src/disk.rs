//! The disk workload: a region of checksummed [`block`]s at the start of a
//! block device, opened with `O_DIRECT` so every read comes from the device.

use crate::block::{self, BLOCK_BYTES};
use crate::clock;
use crate::console;
use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::mpsc::Sender;
use std::sync::Mutex;
use std::time::Duration;

/// Held while the disk thread does I/O; the power-off path takes it (and
/// never gives it back) so the guest never powers off in the middle of a
/// write, nor reports errors from a device the kernel is shutting down.
pub static IO_GATE: Mutex<()> = Mutex::new(());

/// Blocks per read or write during format and full verification (256 KiB).
const CHUNK_BLOCKS: usize = 64;
/// Most `TERN-FAIL disk block=...` lines printed per check.
const MAX_FAIL_LINES: u64 = 16;
const SLICE_NS: u64 = 10_000_000;

/// A heap buffer aligned to 4096 bytes, as `O_DIRECT` requires.
struct AlignedBuf {
    ptr: *mut u8,
    layout: std::alloc::Layout,
}

impl AlignedBuf {
    fn new(len: usize) -> AlignedBuf {
        let layout = std::alloc::Layout::from_size_align(len.max(BLOCK_BYTES), BLOCK_BYTES)
            .expect("constant alignment is a power of two");
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        if ptr.is_null() {
            std::alloc::handle_alloc_error(layout);
        }
        AlignedBuf { ptr, layout }
    }

    fn slice(&mut self, len: usize) -> &mut [u8] {
        assert!(len <= self.layout.size());
        // SAFETY: `ptr` is valid for `layout.size()` bytes and borrowed mutably.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { std::alloc::dealloc(self.ptr, self.layout) }
    }
}

/// Simple xorshift64 generator for picking blocks.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

struct Disk {
    file: File,
    gens: Vec<u64>,
    buf: AlignedBuf,
    writes: u64,
    verified: u64,
    failures: u64,
}

impl Disk {
    fn blocks(&self) -> u64 {
        self.gens.len() as u64
    }

    /// Read `n` blocks starting at `first` into the buffer.
    fn read(&mut self, first: u64, n: usize) -> std::io::Result<()> {
        let buf = self.buf.slice(n * BLOCK_BYTES);
        self.file.read_exact_at(buf, first * BLOCK_BYTES as u64)
    }

    /// Encode blocks `first..first+n` at the generations in `gens` and write them.
    fn write(&mut self, first: u64, n: usize) -> std::io::Result<()> {
        let buf = self.buf.slice(n * BLOCK_BYTES);
        for (k, b) in buf.chunks_exact_mut(BLOCK_BYTES).enumerate() {
            let i = first + k as u64;
            block::encode(b, i, self.gens[i as usize]);
        }
        self.file.write_all_at(buf, first * BLOCK_BYTES as u64)
    }

    fn report(&mut self, detail: String) {
        self.failures += 1;
        if self.failures <= MAX_FAIL_LINES || self.failures % 1000 == 0 {
            console::fail("disk", &detail);
        }
    }

    /// Write the whole region at generation 1.
    fn format(&mut self) -> std::io::Result<()> {
        self.gens.fill(1);
        let mut first = 0;
        while first < self.blocks() {
            let n = CHUNK_BLOCKS.min((self.blocks() - first) as usize);
            self.write(first, n)?;
            first += n as u64;
        }
        self.file.sync_data()
    }

    /// Verify every block's self-checksum and adopt the generations found.
    /// Bad blocks are reported and rewritten. Returns the number of bad blocks.
    fn verify_all(&mut self) -> std::io::Result<u64> {
        let mut bad = Vec::new();
        let mut first = 0;
        while first < self.blocks() {
            let n = CHUNK_BLOCKS.min((self.blocks() - first) as usize);
            self.read(first, n)?;
            let buf = self.buf.slice(n * BLOCK_BYTES);
            for (k, b) in buf.chunks_exact(BLOCK_BYTES).enumerate() {
                let i = first + k as u64;
                match block::decode(b, i) {
                    Ok(gen) => self.gens[i as usize] = gen,
                    Err(e) => bad.push((i, e)),
                }
            }
            first += n as u64;
        }
        for &(i, e) in &bad {
            self.report(format!("block={i} {e}"));
            self.gens[i as usize] = 1;
            self.write(i, 1)?;
        }
        if !bad.is_empty() {
            self.file.sync_data()?;
        }
        Ok(bad.len() as u64)
    }

    /// Rewrite `count` random blocks with a bumped generation, then fdatasync.
    fn rewrite_random(&mut self, rng: &mut Rng, count: u64) -> std::io::Result<()> {
        for _ in 0..count {
            let i = rng.below(self.blocks());
            self.gens[i as usize] += 1;
            self.write(i, 1)?;
            self.writes += 1;
        }
        self.file.sync_data()
    }

    /// Read back `n` blocks from `first` and compare with the expected generations.
    fn check(&mut self, first: u64, n: usize) -> std::io::Result<()> {
        self.read(first, n)?;
        let mut bad = Vec::new();
        let buf = self.buf.slice(n * BLOCK_BYTES);
        for (k, b) in buf.chunks_exact(BLOCK_BYTES).enumerate() {
            let i = first + k as u64;
            let expected = self.gens[i as usize];
            match block::decode(b, i) {
                Ok(gen) if gen == expected => {}
                Ok(gen) => bad.push((
                    i,
                    format!("block={i} expected_gen={expected} found_gen={gen} reason=stale"),
                )),
                Err(e) => bad.push((i, format!("block={i} expected_gen={expected} {e}"))),
            }
        }
        self.verified += n as u64;
        for (i, detail) in bad {
            self.report(detail);
            // Rewrite so one lost write is reported once, not on every sweep.
            self.gens[i as usize] += 1;
            self.write(i, 1)?;
            self.file.sync_data()?;
        }
        Ok(())
    }
}

/// Opens the disk, waiting up to `wait_s` for it: for its node to appear
/// and then for the device behind it. A hot-plugged disk's node can exist
/// before its driver has finished setting it up, and opening it then
/// fails with ENXIO ("No such device or address"): the netfs hot-plug
/// test failed so once under load.
fn open_device(dev: &str, wait_s: u64) -> Result<File, String> {
    let path = Path::new(dev);
    let deadline = clock::mono_ns() + wait_s * 1_000_000_000;
    loop {
        let opened = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_DIRECT | libc::O_CLOEXEC)
            .open(path);
        match opened {
            Ok(f) => return Ok(f),
            Err(e) if not_there_yet(&e) && clock::mono_ns() < deadline => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => {
                return Err(format!(
                    "open {dev} failed: {e} (is the virtio disk attached?)"
                ))
            }
        }
    }
}

/// Whether an open failed only because the disk is not (yet) there.
fn not_there_yet(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ENXIO)
}

/// Set up the region (verify or format), signal `ready`, then run forever.
fn run(
    dev: String,
    disk_mb: u64,
    rate_kibps: u64,
    verify_kibps: u64,
    wait_s: u64,
    ready: Sender<()>,
) {
    let file = match open_device(&dev, wait_s) {
        Ok(f) => f,
        Err(e) => {
            console::fail("disk", &e);
            let _ = ready.send(());
            return;
        }
    };
    let size = (&file).seek(SeekFrom::End(0)).unwrap_or(0);
    let mut blocks = disk_mb * (1 << 20) / BLOCK_BYTES as u64;
    if blocks * BLOCK_BYTES as u64 > size {
        console::fail(
            "param",
            &format!("tern.disk_mb={disk_mb} is larger than {dev} ({size} bytes), using the whole device"),
        );
        blocks = size / BLOCK_BYTES as u64;
    }
    if blocks == 0 {
        console::fail("disk", &format!("{dev} is smaller than one block"));
        let _ = ready.send(());
        return;
    }
    let mut disk = Disk {
        file,
        gens: vec![1; blocks as usize],
        buf: AlignedBuf::new(CHUNK_BLOCKS * BLOCK_BYTES),
        writes: 0,
        verified: 0,
        failures: 0,
    };
    let gate = IO_GATE.lock().unwrap_or_else(|e| e.into_inner());
    let setup = disk.read(0, 1).and_then(|()| {
        if block::has_magic(disk.buf.slice(BLOCK_BYTES)) {
            let bad = disk.verify_all()?;
            if bad == 0 {
                console::emit(&format!("TERN-DISK verified blocks={blocks} ok"));
            } else {
                console::fail("disk", &format!("verify bad_blocks={bad} blocks={blocks}"));
            }
        } else {
            disk.format()?;
            console::emit(&format!("TERN-DISK formatted blocks={blocks}"));
        }
        Ok(())
    });
    drop(gate);
    let _ = ready.send(());
    if let Err(e) = setup {
        console::fail("disk", &format!("io error during setup of {dev}: {e}"));
        return;
    }
    steady(&mut disk, rate_kibps, verify_kibps);
}

/// The steady state: rewrite random blocks at the write rate and sweep the
/// region at the verify rate, in 10 ms slices.
fn steady(disk: &mut Disk, rate_kibps: u64, verify_kibps: u64) {
    let mut rng = Rng(clock::mono_ns() | 1);
    let start = clock::mono_ns();
    let (mut writes_done, mut reads_done, mut cursor) = (0u64, 0u64, 0u64);
    let mut last_status = start;
    let mut failures_at_status = disk.failures;
    let mut next = start;
    loop {
        let now = clock::mono_ns();
        let elapsed = (now - start) as u128;
        let due = |kibps: u64| (elapsed * kibps as u128 / 4 / 1_000_000_000) as u64;
        // Never carry more than ~1 s of backlog (e.g. after the VM was paused).
        let (due_w, due_r) = (due(rate_kibps), due(verify_kibps));
        writes_done = writes_done.max(due_w.saturating_sub(rate_kibps / 4 + 1));
        reads_done = reads_done.max(due_r.saturating_sub(verify_kibps / 4 + 1));
        // All device I/O happens under the gate: once power-off holds it,
        // this thread stops touching a device that is being shut down.
        let gate = IO_GATE.lock().unwrap_or_else(|e| e.into_inner());
        let result = (|| -> std::io::Result<()> {
            if due_w > writes_done {
                let n = (due_w - writes_done).min(CHUNK_BLOCKS as u64);
                disk.rewrite_random(&mut rng, n)?;
                writes_done += n;
            }
            if due_r > reads_done {
                let n = (due_r - reads_done)
                    .min(CHUNK_BLOCKS as u64)
                    .min(disk.blocks() - cursor);
                disk.check(cursor, n as usize)?;
                reads_done += n;
                cursor = (cursor + n) % disk.blocks();
            }
            Ok(())
        })();
        drop(gate);
        if let Err(e) = result {
            disk.report(format!("io error: {e}"));
            std::thread::sleep(Duration::from_secs(1));
        }
        if now - last_status >= 1_000_000_000 {
            if disk.failures == failures_at_status {
                console::emit(&format!(
                    "TERN-DISK ok writes={} verified={}",
                    disk.writes, disk.verified
                ));
            }
            failures_at_status = disk.failures;
            last_status = now;
        }
        next += SLICE_NS;
        if next <= now {
            next = now + SLICE_NS;
        }
        clock::sleep_until(next);
    }
}

/// Start the disk thread. `ready` receives one message once the region has
/// been verified or formatted (or the device could not be used).
pub fn spawn(
    dev: String,
    disk_mb: u64,
    rate_kibps: u64,
    verify_kibps: u64,
    hotplug: bool,
    ready: Sender<()>,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("disk".into())
        .spawn(move || {
            // A disk plugged in later must not hold up TERN-READY; wait
            // for it as long as the guest lives.
            let wait_s = if hotplug {
                let _ = ready.send(());
                console::emit(&format!("TERN-DISK waiting for {dev}"));
                u64::MAX / 2_000_000_000
            } else {
                10
            };
            run(dev, disk_mb, rate_kibps, verify_kibps, wait_s, ready)
        })
        .map(|_| ())
}
