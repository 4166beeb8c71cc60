//! See `tern_fuzz::migration_protocol`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| tern_fuzz::migration_protocol(data));
