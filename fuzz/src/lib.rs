//! The fuzz targets' bodies, one function per target: the `fuzz_targets/`
//! binaries (cargo-fuzz, nightly) call them, and `tests/replay.rs` runs
//! every corpus file through them on a stable toolchain, so CI keeps the
//! corpus passing against the current code without cargo-fuzz.

use std::io::Cursor;

/// A target's body.
pub type Body = fn(&[u8]);

/// Every target: (name, body). The name is the corpus directory.
pub const TARGETS: &[(&str, Body)] = &[
    ("uri", uri),
    ("domain_xml", domain_xml),
    ("migration_protocol", migration_protocol),
    ("api_request", api_request),
    ("agent_config", agent_config),
    ("qemu_img_info", qemu_img_info),
    ("qmp_reply", qmp_reply),
    ("transfer_frames", transfer_frames),
    ("transfer_journal", transfer_journal),
    ("cluster_messages", cluster_messages),
    ("tunnel_records", tunnel_records),
];

fn text(data: &[u8]) -> Option<&str> {
    std::str::from_utf8(data).ok()
}

/// Connection URIs (`tern -c URI`, `--p2p` destinations): parsing never
/// panics, and what parses prints back to a URI that parses to the same.
pub fn uri(data: &[u8]) {
    use tern_model::uri::ConnectUri;
    let Some(s) = text(data) else { return };
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
}

/// Domain XML import (`tern define`, `--xml`): never panics, and a domain
/// that imports and validates exports to XML that imports to the same
/// domain (the property the importer documents).
pub fn domain_xml(data: &[u8]) {
    use tern_model::xml::{parse_domain, to_xml, validate};
    let Some(s) = text(data) else { return };
    if let Ok(d) = parse_domain(s) {
        if validate(&d).is_ok() {
            let x = to_xml(&d);
            let again =
                parse_domain(&x).unwrap_or_else(|e| panic!("export does not import: {e}\n{x}"));
            assert_eq!(again, d, "round trip changed the domain:\n{x}");
        }
    }
}

fn options(o: &tern_migrate::MigrateOptions) {
    if o.validate().is_ok() {
        let _ = o.source_parameters();
        let _ = o.source_capabilities();
        let _ = o.policy_config();
    }
}

/// The agent-to-agent protocol as a receiving agent decodes it: tunnel
/// stream headers and replies (the tunnel's record reader starts with
/// them), and every JSON message with the checks a receiver runs.
pub fn migration_protocol(data: &[u8]) {
    use tern_migrate::protocol::{
        check_version, BeginReply, ConfirmRequest, FinishReply, FinishRequest, PerformRequest,
        PrepareReply, PrepareRequest, TunnelHello, TunnelReply, TUNNEL_HELLO_LEN,
    };
    if let Ok(head) = <&[u8; TUNNEL_HELLO_LEN]>::try_from(data) {
        if let Ok(h) = TunnelHello::decode(head) {
            assert_eq!(
                &h.encode(),
                head,
                "a header decoded but encodes differently"
            );
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
}

/// API request bodies exactly as `ternd` parses them, then classified as
/// its access control does (read-only? priority?) and named for its log.
pub fn api_request(data: &[u8]) {
    if let Ok(req) = tern_agent::server::parse_request(data) {
        let _ = req.is_read_only();
        let _ = req.is_priority();
        let _ = tern_agent::server::op_name(&req);
        let _ = serde_json::to_vec(&req).expect("a parsed request serialises");
    }
}

/// `ternd --config` TOML: refused with a message or accepted, never a panic.
pub fn agent_config(data: &[u8]) {
    let Some(s) = text(data) else { return };
    if let Ok(c) = tern_agent::settings::ServerSettings::parse(s) {
        assert!(c.limits.max_clients >= 1 && c.limits.max_workers >= 1);
        let _ = tern_agent::confine::user::qemu_args(&c.qemu, None);
        let _ = tern_agent::confine::guest_uids::UidRange::parse(&c.qemu.uid_range);
    }
}

/// `qemu-img info --output=json` as Tern reads it (a peer's or a damaged
/// image's qemu-img may print anything).
pub fn qemu_img_info(data: &[u8]) {
    let _ = tern_qemu::img::parse_info(data);
    if let Some(s) = text(data) {
        let _ = tern_qemu::img::parse_size(s);
        let _ = tern_qemu::img::parse_block_drivers(s);
    }
}

/// QMP replies and events (one JSON line each) through the typed readers
/// the agent uses for run state, migration status and block jobs.
pub fn qmp_reply(data: &[u8]) {
    use tern_qemu::states::{mirror_end, BlockJob, MigrationStatus, RunState};
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let ret = v.get("return").unwrap_or(&v);
    let m = MigrationStatus::of_reply(ret);
    let _ = (
        m.is_postcopy(),
        m.is_precopy_in_flight(),
        m.is_finished(),
        m.to_string(),
    );
    if let Some(s) = ret.get("status").and_then(|s| s.as_str()) {
        let r = RunState::parse(s);
        let _ = (r.is_running(), r.to_string());
        assert_eq!(
            MigrationStatus::parse(MigrationStatus::parse(s).as_str()).as_str(),
            MigrationStatus::parse(s).as_str()
        );
    }
    let jobs = BlockJob::list(ret);
    let _ = mirror_end(jobs.first());
}

/// The cold-copy engine's framing as a receiver reads it: the preface,
/// then frames (header, body) decoded per kind (hello, chunk headers).
pub fn transfer_frames(data: &[u8]) {
    use tern_transfer::wire::{
        check_preface, read_body, read_frame_header, ChunkHeader, Hello, Kind, PREFACE_LEN,
    };
    if let Ok(p) = <&[u8; PREFACE_LEN]>::try_from(data.get(..PREFACE_LEN).unwrap_or(&[])) {
        let _ = check_preface(p);
    }
    let mut r = Cursor::new(data);
    let mut body = Vec::new();
    for _ in 0..64 {
        let Ok(Ok((kind, len))) = read_frame_header(&mut r) else {
            return;
        };
        // A receiver refuses frames larger than what is left to read here
        // only by failing the read: never by allocating `len` up front.
        if u64::from(len) > data.len() as u64 {
            return;
        }
        if read_body(&mut r, &mut body, len).is_err() {
            return;
        }
        match kind {
            Kind::Hello => {
                if let Ok(h) = Hello::decode(&body) {
                    assert_eq!(Hello::decode(&h.encode()).ok(), Some(h));
                }
            }
            _ => {
                if let Ok(c) = ChunkHeader::decode(&body) {
                    assert_eq!(ChunkHeader::decode(&c.encode()).ok(), Some(c));
                }
            }
        }
    }
}

/// A resume journal as found on disk after a crash: stale, truncated or
/// damaged journals are ignored (`Ok(None)`) or give a valid prefix.
pub fn transfer_journal(data: &[u8]) {
    use tern_transfer::journal::{load, Header};
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("j");
    std::fs::write(&path, data).expect("write journal");
    let hdr = Header {
        session: [7; 16],
        fingerprint: [9; 32],
        file_size: 1 << 30,
        chunk_size: 1 << 20,
        chunk_count: 1024,
    };
    if let Ok(Some((bitmap, valid))) = load(&path, &hdr) {
        assert!(valid <= data.len() as u64);
        assert!(bitmap.count() <= hdr.chunk_count);
    }
}

/// What the controller decodes from clients and agents: cluster requests
/// and host reports (a forged report must fail to parse or parse to
/// something the controller then checks, never panic).
pub fn cluster_messages(data: &[u8]) {
    use tern_api::cluster::{ClusterRequest, HostReport};
    if let Ok(r) = serde_json::from_slice::<ClusterRequest>(data) {
        let _ = serde_json::to_vec(&r).expect("a parsed request serialises");
    }
    if let Ok(r) = serde_json::from_slice::<HostReport>(data) {
        let _ = serde_json::to_vec(&r).expect("a parsed report serialises");
    }
}

/// The tunnel's record reader (`tern_tunnel`, bulk phase) on a peer's
/// bytes, raw or sealed records with some corrupted: never panics, and
/// delivers only a prefix of the application data that was sealed.
pub fn tunnel_records(data: &[u8]) {
    tern_tunnel::fuzz_read_records(data);
}
