//! A peer cannot make an agent write or read outside its pools and state
//! directory: Prepare requests crafted the way a hostile or broken source
//! agent could send them, straight to a real `ternd`'s API.

use tern_api::{Client, MigrationRequest, Request};
use tern_migrate::protocol::{CopyMode, DiskCopy, PrepareReply, PrepareRequest, PROTOCOL_VERSION};
use tern_migrate::MigrateOptions;
use tern_testkit::{build_or_reuse, BuildOptions, GuestSpec, TernHost};

fn prepare(h: &TernHost, req: PrepareRequest) -> String {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let r = rt.block_on(
        Client::unix(h.socket()).call::<PrepareReply>(&Request::Migration(
            MigrationRequest::MigratePrepare { req },
        )),
    );
    match r {
        Ok(reply) => panic!("prepare was accepted: {reply:?}"),
        Err(e) => e.to_string(),
    }
}

fn request(name: &str, disks: Vec<DiskCopy>, o: MigrateOptions) -> PrepareRequest {
    let img = build_or_reuse(&BuildOptions::default()).unwrap();
    let mut domain = tern_model::xml::parse_domain(&GuestSpec::new("pp", &img).to_xml()).unwrap();
    domain.name = name.into();
    PrepareRequest {
        version: PROTOCOL_VERSION,
        id: uuid::Uuid::new_v4(),
        domain,
        options: o,
        source_host: "hostile".into(),
        disks,
        files: vec![],
        source_uri: None,
        source_name: None,
        source_tls_identity: None,
        source_nvram_dir: None,
        source_ceph_fsids: Default::default(),
        source_addresses: Vec::new(),
    }
}

fn disk(volume: &str, mode: CopyMode, backing: Option<&str>) -> DiskCopy {
    DiskCopy {
        target: "vda".into(),
        pool: Some("images".into()),
        volume: volume.into(),
        format: "qcow2".into(),
        virtual_size: 1 << 20,
        backing: backing.map(|b| (b.into(), "raw".into())),
        mode,
    }
}

#[test]
fn prepare_refuses_names_and_paths_outside_pools() {
    let h = TernHost::start("ppaths");
    let pool = tempfile::Builder::new()
        .prefix("tern-ppaths-")
        .tempdir()
        .unwrap();
    h.add_pool("images", pool.path(), false);
    let live = MigrateOptions {
        live: true,
        ..Default::default()
    };

    // A domain name that would put its run directory elsewhere.
    let e = prepare(&h, request("../../escape", vec![], live.clone()));
    assert!(e.contains("domain name") && e.contains("refuses"), "{e}");
    assert!(!h.root.join("escape").exists());

    // A volume name that climbs out of the pool.
    let all = MigrateOptions {
        copy_storage_all: true,
        ..live.clone()
    };
    let e = prepare(
        &h,
        request(
            "pp1",
            vec![disk("../evil.qcow2", CopyMode::Full, None)],
            all.clone(),
        ),
    );
    assert!(e.contains("volume") && e.contains("../evil.qcow2"), "{e}");
    assert!(!pool.path().join("../evil.qcow2").exists());
    let e = prepare(
        &h,
        request(
            "pp2",
            vec![disk("/tmp/evil.qcow2", CopyMode::Full, None)],
            all,
        ),
    );
    assert!(e.contains("volume"), "{e}");

    // A backing file outside every pool, which QEMU would read for the guest.
    let inc = MigrateOptions {
        copy_storage_inc: true,
        ..live
    };
    let e = prepare(
        &h,
        request(
            "pp3",
            vec![disk("top.qcow2", CopyMode::Top, Some("/etc/hostname"))],
            inc,
        ),
    );
    assert!(
        e.contains("/etc/hostname") && e.contains("not in a storage pool"),
        "{e}"
    );
    assert!(!pool.path().join("top.qcow2").exists());

    // Nothing was left behind: no domain, no QEMU, no job.
    assert_eq!(h.ok(&["list", "--all", "--name"]).trim(), "");
    assert!(h.qemu_pids().is_empty());
}
