//! API request bodies exactly as `ternd` parses them, then classified as
//! its access control does (read-only? priority?).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = tern_agent::server::parse_request(data) {
        let _ = req.is_read_only();
        let _ = req.is_priority();
        // What the server would log or echo must serialise.
        let _ = serde_json::to_vec(&req).expect("a parsed request serialises");
    }
});
