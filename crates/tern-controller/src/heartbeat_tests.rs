//! Registration and heartbeats on a real (file) store: which server
//! records a report creates and removes, and the digest-only heartbeat.

use crate::api::dispatch;
use crate::inventory::SERVERS;
use crate::{Controller, ControllerConfig};
use std::sync::Arc;
use tern_api::cluster::{
    ClusterRequest, DomainReport, HeartbeatReply, HostReport, RegisterReply, ServerRecord,
    ServerState,
};

async fn controller(dir: &std::path::Path) -> Arc<Controller> {
    let cfg = ControllerConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        &format!("file:{}", dir.display()),
    );
    Controller::open(cfg).await.unwrap()
}

/// A report of host `h1` running `domains` (shared with `api`'s tests).
pub(crate) fn report(domains: &[&str]) -> HostReport {
    let d = |n: &&str| DomainReport {
        name: n.to_string(),
        uuid: String::new(),
        active: true,
        vcpus: 1,
        memory_mib: 64,
        disks: vec![],
        networks: vec![],
        machine: None,
        xml: String::new(),
    };
    HostReport {
        name: "h1".into(),
        api_uri: "tern+tcp://127.0.0.1:1/system".into(),
        domains: domains.iter().map(d).collect(),
        ..HostReport::default()
    }
}

async fn call<T: serde::de::DeserializeOwned>(ctl: &Arc<Controller>, req: ClusterRequest) -> T {
    serde_json::from_slice(&dispatch(ctl, req).await.unwrap().into_bytes().unwrap()).unwrap()
}

async fn heartbeat(
    ctl: &Arc<Controller>,
    lease: i64,
    report: Option<HostReport>,
    digest: String,
) -> HeartbeatReply {
    let req = ClusterRequest::Heartbeat {
        host: "h1".into(),
        lease,
        report,
        digest,
    };
    call(ctl, req).await
}

async fn servers(ctl: &Arc<Controller>) -> Vec<String> {
    let mut v: Vec<String> = ctl
        .inv
        .servers_shared()
        .await
        .unwrap()
        .iter()
        .map(|s| s.domain.name.clone())
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn a_heartbeat_sends_its_report_only_when_it_changed() {
    let d = tempfile::tempdir().unwrap();
    let ctl = controller(d.path()).await;
    let r1 = report(&["a", "b"]);
    let reg: RegisterReply = call(&ctl, ClusterRequest::Register { report: r1.clone() }).await;
    assert_eq!(servers(&ctl).await, ["a", "b"]);

    // The same report, by digest only: the lease is renewed, nothing asked.
    let hb = heartbeat(&ctl, reg.lease, None, r1.digest()).await;
    assert!(!hb.reregister && !hb.send_report, "{hb:?}");

    // A digest the controller does not hold: it asks for the report.
    let r2 = report(&["b", "c"]);
    let hb = heartbeat(&ctl, reg.lease, None, r2.digest()).await;
    assert!(hb.send_report && !hb.reregister, "{hb:?}");

    // The changed report: "a" was dropped (found through the stored
    // report), "c" is new.
    let hb = heartbeat(&ctl, reg.lease, Some(r2.clone()), r2.digest()).await;
    assert!(!hb.send_report, "{hb:?}");
    assert_eq!(servers(&ctl).await, ["b", "c"]);
    let hb = heartbeat(&ctl, reg.lease, None, r2.digest()).await;
    assert!(!hb.send_report, "{hb:?}");

    // A wrong lease: register again.
    let hb = heartbeat(&ctl, reg.lease + 1, None, r2.digest()).await;
    assert!(hb.reregister, "{hb:?}");
}

#[tokio::test]
async fn a_returning_host_drops_records_placed_on_it_that_it_no_longer_has() {
    let d = tempfile::tempdir().unwrap();
    let ctl = controller(d.path()).await;
    let _: RegisterReply = call(
        &ctl,
        ClusterRequest::Register {
            report: report(&["a"]),
        },
    )
    .await;
    // A job moved "m" here; the host went away before it reported it.
    let mut moved: ServerRecord = ctl.inv.server("a").await.unwrap();
    moved.domain.name = "m".into();
    moved.state = ServerState::Running;
    ctl.inv.put(&format!("{SERVERS}m"), &moved).await.unwrap();
    // A record of another host is not this host's to remove.
    moved.domain.name = "other".into();
    moved.host = "h2".into();
    ctl.inv
        .put(&format!("{SERVERS}other"), &moved)
        .await
        .unwrap();
    assert_eq!(servers(&ctl).await, ["a", "m", "other"]);

    let _: RegisterReply = call(
        &ctl,
        ClusterRequest::Register {
            report: report(&["a"]),
        },
    )
    .await;
    assert_eq!(servers(&ctl).await, ["a", "other"]);
}
