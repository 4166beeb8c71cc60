//! Connection URIs (`tern -c URI`, `--p2p` destinations): parsing never
//! panics, and what parses prints back to a URI that parses to the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tern_model::uri::ConnectUri;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(u) = s.parse::<ConnectUri>() {
        let printed = u.to_string();
        let again: ConnectUri = printed
            .parse()
            .unwrap_or_else(|e| panic!("{s:?} parsed, printed as {printed:?}, which fails: {e}"));
        assert_eq!(again, u, "{s:?} -> {printed:?}");
        let _ = u.socket_path();
        let _ = u.port_or_default();
        let _ = u.is_local();
    }
});
