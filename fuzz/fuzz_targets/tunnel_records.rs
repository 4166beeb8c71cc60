//! See `tern_fuzz::tunnel_records`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| tern_fuzz::tunnel_records(data));
