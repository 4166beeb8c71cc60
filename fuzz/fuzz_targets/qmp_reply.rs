//! See `tern_fuzz::qmp_reply`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| tern_fuzz::qmp_reply(data));
