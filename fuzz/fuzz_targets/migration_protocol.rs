//! The agent-to-agent protocol as a receiving agent decodes it: tunnel
//! stream headers and replies (binary), and every JSON message (with the
//! checks a receiver runs before acting: version, options).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tern_migrate::protocol::{
    check_version, BeginReply, ConfirmRequest, FinishReply, FinishRequest, PerformRequest,
    PrepareReply, PrepareRequest, TunnelHello, TunnelReply, TUNNEL_HELLO_LEN,
};
use tern_migrate::MigrateOptions;

fn options(o: &MigrateOptions) {
    if o.validate().is_ok() {
        let _ = o.source_parameters();
        let _ = o.source_capabilities();
        let _ = o.policy_config();
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(head) = <&[u8; TUNNEL_HELLO_LEN]>::try_from(data) {
        if let Ok(h) = TunnelHello::decode(head) {
            assert_eq!(&h.encode(), head, "a header decoded but encodes differently");
        }
    }
    if let Some(&b) = data.first() {
        if let Some(r) = TunnelReply::from_code(b) {
            assert_eq!(r.code(), b);
        }
    }
    if let Ok(m) = serde_json::from_slice::<PrepareRequest>(data) {
        let _ = check_version(m.version);
        options(&m.options);
        let _ = tern_model::validate::validate(&m.domain);
    }
    if let Ok(m) = serde_json::from_slice::<PerformRequest>(data) {
        options(&m.options);
        let _ = m.target.qemu_uri();
    }
    if let Ok(m) = serde_json::from_slice::<FinishRequest>(data) {
        options(&m.options);
    }
    if let Ok(m) = serde_json::from_slice::<ConfirmRequest>(data) {
        options(&m.options);
    }
    let _ = serde_json::from_slice::<BeginReply>(data);
    let _ = serde_json::from_slice::<PrepareReply>(data);
    let _ = serde_json::from_slice::<FinishReply>(data);
});
