//! The ACPI power button: QEMU's `system_powerdown` presses it, and the
//! guest powers off cleanly (sync + `reboot(RB_POWER_OFF)`).

use crate::clock;
use crate::console;
use crate::disk::IO_GATE;
use std::fs::File;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::time::Duration;

const EV_KEY: u16 = 1;
const KEY_POWER: u16 = 116;
/// `struct input_event` on 64-bit Linux: timeval (16) + type + code + value.
const EVENT_BYTES: usize = 24;

/// Decode one `struct input_event`; true if it is a KEY_POWER press.
pub fn is_power_press(ev: &[u8]) -> bool {
    if ev.len() < EVENT_BYTES {
        return false;
    }
    let ty = u16::from_ne_bytes([ev[16], ev[17]]);
    let code = u16::from_ne_bytes([ev[18], ev[19]]);
    let value = i32::from_ne_bytes([ev[20], ev[21], ev[22], ev[23]]);
    ty == EV_KEY && code == KEY_POWER && value == 1
}

/// `/dev/input/eventN` nodes whose device name is "Power Button".
fn find_power_buttons() -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(dir) = std::fs::read_dir("/sys/class/input") else {
        return found;
    };
    for entry in dir.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with("event") {
            continue;
        }
        let dev_name =
            std::fs::read_to_string(entry.path().join("device/name")).unwrap_or_default();
        if dev_name.trim() == "Power Button" {
            found.push(PathBuf::from("/dev/input").join(&name));
        }
    }
    found.sort();
    found
}

/// Print `TERN-POWEROFF`, wait for in-flight disk writes, sync and power off.
fn power_off() -> ! {
    console::emit("TERN-POWEROFF");
    let gate = IO_GATE.lock().unwrap_or_else(|e| e.into_inner());
    std::mem::forget(gate);
    // SAFETY: plain syscalls; reboot only returns on error.
    unsafe {
        libc::sync();
        libc::reboot(libc::RB_POWER_OFF);
    }
    console::fail(
        "power",
        &format!(
            "reboot(RB_POWER_OFF) failed: {}",
            std::io::Error::last_os_error()
        ),
    );
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

fn watch(mut files: Vec<File>) {
    let mut ev = [0u8; EVENT_BYTES * 16];
    loop {
        let mut fds: Vec<libc::pollfd> = files
            .iter()
            .map(|f| libc::pollfd {
                fd: f.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        // SAFETY: `fds` is a valid array of `fds.len()` pollfds.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if rc < 0 {
            continue;
        }
        for (i, pfd) in fds.iter().enumerate() {
            if pfd.revents == 0 {
                continue;
            }
            match files[i].read(&mut ev) {
                Ok(n) if ev[..n].chunks_exact(EVENT_BYTES).any(is_power_press) => power_off(),
                Ok(_) => {}
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }
}

/// Find the power button(s) and watch them on a background thread.
/// Prints `TERN-FAIL power ...` if there is none.
pub fn start() {
    let deadline = clock::mono_ns() + 5_000_000_000;
    let files = loop {
        let files: Vec<File> = find_power_buttons()
            .iter()
            .filter_map(|p| File::open(p).ok())
            .collect();
        if !files.is_empty() || clock::mono_ns() >= deadline {
            break files;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    if files.is_empty() {
        console::fail(
            "power",
            "no input device named \"Power Button\" (are the button and evdev modules loaded and ACPI on?)",
        );
        return;
    }
    let spawned = std::thread::Builder::new()
        .name("power".into())
        .spawn(move || watch(files));
    if let Err(e) = spawned {
        console::fail(
            "power",
            &format!("cannot start the power button thread: {e}"),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(ty: u16, code: u16, value: i32) -> Vec<u8> {
        let mut e = vec![0u8; 16];
        e.extend_from_slice(&ty.to_ne_bytes());
        e.extend_from_slice(&code.to_ne_bytes());
        e.extend_from_slice(&value.to_ne_bytes());
        e
    }

    #[test]
    fn only_a_power_key_press_counts() {
        assert!(is_power_press(&event(1, 116, 1)));
        assert!(!is_power_press(&event(1, 116, 0)));
        assert!(!is_power_press(&event(1, 115, 1)));
        assert!(!is_power_press(&event(0, 116, 1)));
        assert!(!is_power_press(&[0u8; 8]));
    }
}
