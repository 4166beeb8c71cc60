//! See `tern_fuzz::qemu_img_info`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| tern_fuzz::qemu_img_info(data));
