//! `tern.efivar=VALUE`: a UEFI variable the guest keeps in its firmware's
//! variable store (the host's NVRAM file), so tests can see the store
//! survive a migration or a restart through what the guest reads back.
//!
//! At start, on a guest booted by UEFI firmware (the init script mounts
//! efivarfs), the workload prints `TERN-EFIVAR found value=<v>` or
//! `TERN-EFIVAR absent` for its variable; with `tern.efivar=` it then
//! writes the value and prints `TERN-EFIVAR wrote value=<v>`.

use crate::console;
use std::io::Write;
use std::path::Path;

/// The variable, named `TernTest` under a GUID of its own.
const VAR: &str = "/sys/firmware/efi/efivars/TernTest-5d1c3e7a-2b8f-4c6e-9a1d-7465726e0016";
/// EFI_VARIABLE_NON_VOLATILE | BOOTSERVICE_ACCESS | RUNTIME_ACCESS.
const ATTRIBUTES: u32 = 0x7;

/// Reads the variable, then writes `value` if given.
pub fn run(value: Option<&str>) {
    if !Path::new("/sys/firmware/efi/efivars").is_dir() {
        if value.is_some() {
            console::fail("efivar", "no efivarfs: the guest did not boot through UEFI");
        }
        return;
    }
    match std::fs::read(VAR) {
        Ok(b) if b.len() >= 4 => console::emit(&format!(
            "TERN-EFIVAR found value={}",
            String::from_utf8_lossy(&b[4..])
        )),
        Ok(b) => console::fail("efivar", &format!("variable has {} bytes", b.len())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => console::emit("TERN-EFIVAR absent"),
        Err(e) => console::fail("efivar", &format!("cannot read {VAR}: {e}")),
    }
    let Some(v) = value else { return };
    // efivarfs takes the attributes and the data in one write(2).
    let mut buf = ATTRIBUTES.to_le_bytes().to_vec();
    buf.extend_from_slice(v.as_bytes());
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(VAR)
        .and_then(|mut f| f.write(&buf));
    match written {
        Ok(n) if n == buf.len() => console::emit(&format!("TERN-EFIVAR wrote value={v}")),
        Ok(n) => console::fail("efivar", &format!("short write of {n} bytes")),
        Err(e) => console::fail("efivar", &format!("cannot write {VAR}: {e}")),
    }
}
