//! Options: validation, what reaches QEMU, and the choices Begin makes.

use super::*;

/// A live migration that allows post-copy, and nothing else.
fn live_postcopy() -> MigrateOptions {
    MigrateOptions {
        live: true,
        postcopy: true,
        ..Default::default()
    }
}

#[test]
fn preempt_only_where_chosen_and_where_it_fits() {
    let post = live_postcopy();
    let cap = |o: &MigrateOptions| {
        o.shared_capabilities()
            .into_iter()
            .find(|(c, _)| *c == "postcopy-preempt")
            .map(|(_, on)| on)
    };
    assert_eq!(cap(&post), Some(false), "not chosen");
    assert_eq!(post.incoming_streams(), 1);
    let chosen = MigrateOptions {
        postcopy_preempt: true,
        ..post.clone()
    };
    assert_eq!(cap(&chosen), Some(true));
    assert_eq!(chosen.incoming_streams(), 2);
    for no in [
        MigrateOptions {
            postcopy: false,
            ..chosen.clone()
        },
        MigrateOptions {
            parallel: true,
            ..chosen.clone()
        },
        MigrateOptions {
            tunnelled: true,
            p2p: true,
            ..chosen.clone()
        },
    ] {
        assert_eq!(cap(&no), Some(false), "{no:?}");
    }
    let parallel = MigrateOptions {
        parallel: true,
        parallel_connections: Some(4),
        ..chosen
    };
    assert_eq!(parallel.incoming_streams(), 5);
}

#[test]
fn preempt_is_wanted_when_postcopy_is_sure_or_foreseen() {
    let allowed = live_postcopy();
    assert!(!allowed.wants_preempt(false), "merely allowed");
    assert!(allowed.wants_preempt(true), "foreseen");
    let sure = MigrateOptions {
        postcopy_after_precopy: true,
        ..allowed.clone()
    };
    assert!(sure.wants_preempt(false));
    let parallel = MigrateOptions {
        parallel: true,
        ..sure
    };
    assert!(!parallel.wants_preempt(true), "does not fit");
}

#[test]
fn a_machine_the_destination_lacks_is_refused_by_name() {
    let mut o = MigrateOptions::default();
    assert_eq!(
        o.machine_refusal("g", Some("pc-q35-10.0")),
        None,
        "unknown offer"
    );
    o.dest_machines = Some(vec!["pc-q35-7.2".into(), "q35".into()]);
    assert_eq!(o.machine_refusal("g", None), None);
    assert_eq!(o.machine_refusal("g", Some("pc-q35-7.2")), None);
    let why = o.machine_refusal("g", Some("pc-q35-10.0")).unwrap();
    assert!(
        why.contains("'pc-q35-10.0'") && why.contains("domain 'g'"),
        "{why}"
    );
}

#[test]
fn defaults_never_inherit_qemus_bandwidth_cap() {
    let o = MigrateOptions {
        live: true,
        ..Default::default()
    };
    let p = o.source_parameters();
    assert_eq!(p["max-bandwidth"], json!(UNLIMITED_BANDWIDTH));
    // The policy starts low (crate::downtime); without it, QEMU's 300 ms.
    assert_eq!(p["downtime-limit"], json!(crate::downtime::START_MS));
    let plain = MigrateOptions {
        no_policy: true,
        ..o.clone()
    };
    assert_eq!(plain.source_parameters()["downtime-limit"], json!(300));
    assert!(!p.contains_key("multifd-channels"));
}

#[test]
fn options_map_to_qemu_settings() {
    let o = MigrateOptions {
        live: true,
        parallel: true,
        parallel_connections: Some(4),
        parallel_compression: Some("zstd".into()),
        auto_converge: true,
        auto_converge_initial: Some(30),
        bandwidth_mib: Some(100),
        max_downtime_ms: Some(50),
        postcopy: true,
        ..Default::default()
    };
    o.validate().unwrap();
    let p = o.source_parameters();
    assert_eq!(p["multifd-channels"], json!(4));
    assert_eq!(p["multifd-compression"], json!("zstd"));
    assert_eq!(p["max-bandwidth"], json!(100u64 << 20));
    // Under the policy --max-downtime is the ceiling; it starts lower.
    assert_eq!(p["downtime-limit"], json!(crate::downtime::START_MS));
    assert_eq!(p["cpu-throttle-initial"], json!(30));
    let caps = o.source_capabilities();
    assert!(caps.contains(&("multifd", true)));
    assert!(caps.contains(&("postcopy-ram", true)));
    assert!(caps.contains(&("auto-converge", true)));
    assert_eq!(o.shared_parameters().len(), 2);
}

#[test]
fn bad_combinations_are_refused_like_virsh() {
    let off = MigrateOptions {
        offline: true,
        ..Default::default()
    };
    assert_eq!(
        off.validate(),
        Err(OptionsError::Needs("offline", "persistent"))
    );
    let pc = MigrateOptions {
        postcopy_after_precopy: true,
        ..Default::default()
    };
    assert!(pc.validate().is_err());
    let t = MigrateOptions {
        timeout_action: TimeoutAction::Postcopy,
        ..Default::default()
    };
    assert!(t.validate().is_err());
    let comp = MigrateOptions {
        parallel: true,
        parallel_compression: Some("lz4".into()),
        ..Default::default()
    };
    assert!(comp.validate().unwrap_err().to_string().contains("zstd"));
}

#[test]
fn transports_need_what_virsh_needs() {
    let t = MigrateOptions {
        live: true,
        tunnelled: true,
        ..Default::default()
    };
    assert_eq!(t.validate(), Err(OptionsError::Needs("tunnelled", "p2p")));
    assert_eq!(
        t.validate().unwrap_err().to_string(),
        "--tunnelled needs --p2p"
    );
    let ok = MigrateOptions {
        p2p: true,
        parallel: true,
        copy_storage_all: true,
        ..t.clone()
    };
    ok.validate().unwrap();
    let both = MigrateOptions {
        tls: true,
        ..ok.clone()
    };
    assert_eq!(
        both.validate(),
        Err(OptionsError::Exclusive("tunnelled", "tls"))
    );
    let uri = MigrateOptions {
        migrate_uri: Some("tcp://h:1".into()),
        ..ok
    };
    assert!(uri.validate().is_err());
    let tls = MigrateOptions {
        live: true,
        tls: true,
        ..Default::default()
    };
    tls.validate().unwrap();
    assert_eq!(tls.source_parameters()["tls-creds"], json!(TLS_CREDS_ID));
    assert_eq!(
        MigrateOptions::default().source_parameters()["tls-creds"],
        json!("")
    );
}

#[test]
fn migrate_uris_parse() {
    assert_eq!(
        parse_migrate_uri("tcp://10.0.0.2:49152").unwrap(),
        TcpTarget {
            host: "10.0.0.2".into(),
            port: Some(49152)
        }
    );
    assert_eq!(parse_migrate_uri("tcp:h").unwrap().port, None);
    assert_eq!(parse_migrate_uri("tcp://[::1]:5").unwrap().host, "::1");
    assert!(parse_migrate_uri("rdma://x").is_err());
    assert!(parse_migrate_uri("tcp://h:0").is_err());
    assert!(parse_migrate_uri("tcp://:5").is_err());
}
