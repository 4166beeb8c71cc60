//! See `tern_fuzz::cluster_messages`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| tern_fuzz::cluster_messages(data));
