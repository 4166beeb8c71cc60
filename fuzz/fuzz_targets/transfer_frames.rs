//! See `tern_fuzz::transfer_frames`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| tern_fuzz::transfer_frames(data));
