//! A 512-byte BIOS boot sector that prints a line on the first serial
//! port and halts: a disk that shows, through the guest's own console,
//! that the firmware booted from it (for boot-order tests).

/// The boot sector for `text` (ASCII, up to 400 bytes): real-mode code at
/// 0x7c00 writing `text` and CR LF to COM1 (I/O port 0x3f8), then halting.
pub fn serial_boot_sector(text: &str) -> [u8; 512] {
    // cld; xor ax,ax; mov ds,ax; mov dx,0x3f8; mov si,0x7c16
    // next: lodsb; test al,al; jz halt; out dx,al; jmp next
    // halt: hlt; jmp halt
    const CODE: [u8; 22] = [
        0xfc, 0x31, 0xc0, 0x8e, 0xd8, 0xba, 0xf8, 0x03, 0xbe, 0x16, 0x7c, 0xac, 0x84, 0xc0, 0x74,
        0x03, 0xee, 0xeb, 0xf8, 0xf4, 0xeb, 0xfd,
    ];
    assert!(
        text.is_ascii() && text.len() <= 400,
        "boot sector text too long"
    );
    let mut sector = [0u8; 512];
    sector[..CODE.len()].copy_from_slice(&CODE);
    let msg = format!("{text}\r\n");
    sector[CODE.len()..CODE.len() + msg.len()].copy_from_slice(msg.as_bytes());
    sector[510] = 0x55;
    sector[511] = 0xaa;
    sector
}
