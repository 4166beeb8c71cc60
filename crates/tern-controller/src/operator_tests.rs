//! Operator requests that write jobs (queue, cancel) carry a term, on a
//! real (file) store: a controller that still believes it leads after
//! another took over writes nothing; one that knows it follows writes
//! under the current leader's term.

use crate::inventory::{HOSTS, JOBS, SERVERS};
use crate::{jobs, Controller, ControllerConfig, ELECTION};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tern_api::cluster::{
    DiskReport, DomainReport, HostRecord, HostReport, JobRecord, JobState, ServerRecord,
    ServerState,
};
use tern_store::{Election, StoreError};

async fn cluster(dir: &std::path::Path) -> Arc<Controller> {
    let cfg = ControllerConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        &format!("file:{}", dir.display()),
    );
    let ctl = Controller::open(cfg).await.unwrap();
    let host = HostRecord::online(
        HostReport {
            name: "a".into(),
            ..Default::default()
        },
        0,
    );
    ctl.inv.put(&format!("{HOSTS}a"), &host).await.unwrap();
    let server = ServerRecord {
        domain: DomainReport {
            name: "vm".into(),
            uuid: String::new(),
            active: false,
            vcpus: 1,
            memory_mib: 128,
            disks: vec![DiskReport {
                target: "vda".into(),
                path: "/p/vm.raw".into(),
                pool: Some("p".into()),
                shared: true,
                bytes: 1 << 20,
            }],
            networks: vec![],
            machine: None,
            xml: String::new(),
        },
        host: "a".into(),
        state: ServerState::Ready,
        error: None,
        rescued_from: None,
    };
    ctl.inv.put(&format!("{SERVERS}vm"), &server).await.unwrap();
    ctl
}

/// Makes `ctl` lead, as its run loop does on winning the election.
pub(crate) async fn lead(ctl: &Controller, id: &str) -> u64 {
    let e = Election::new(ctl.inv.store.clone(), ELECTION, ctl.cfg.leader_ttl);
    let l = e
        .try_campaign(id)
        .await
        .unwrap()
        .expect("the election is free");
    *ctl.guard.lock().unwrap() = Some(l.guard());
    ctl.leader.store(true, Ordering::Relaxed);
    l.term
}

/// Another controller takes over: the election key is made again.
async fn depose(ctl: &Controller) -> u64 {
    let key = format!("election/{ELECTION}");
    ctl.inv.store.delete(&key).await.unwrap();
    let e = Election::new(ctl.inv.store.clone(), ELECTION, ctl.cfg.leader_ttl);
    e.try_campaign("other").await.unwrap().unwrap().term
}

fn deposed<T: std::fmt::Debug>(r: crate::error::Result<T>) -> bool {
    matches!(
        r,
        Err(crate::error::CtlError::Store(StoreError::Deposed(_)))
    )
}

#[tokio::test]
async fn a_deposed_leader_can_neither_queue_nor_cancel_a_job() {
    let dir = tempfile::tempdir().unwrap();
    let ctl = cluster(dir.path()).await;
    let mine = lead(&ctl, "c1").await;
    // While it leads, its job carries its term.
    let j = jobs::create(&ctl, "vm", false, Default::default())
        .await
        .unwrap();
    assert_eq!(j.term, Some(mine));
    let theirs = depose(&ctl).await;
    assert_ne!(mine, theirs);

    // Still believing it leads: the cancel is refused and changes nothing.
    assert!(deposed(jobs::cancel(&ctl, &j.id).await));
    let (_, stored) = ctl
        .inv
        .get::<JobRecord>(&format!("{JOBS}{}", j.id))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.state, JobState::Queued);
    assert_eq!(stored.term, Some(mine));

    // Nor can it queue another job once the first is gone.
    ctl.inv
        .store
        .delete(&format!("{JOBS}{}", j.id))
        .await
        .unwrap();
    ctl.inv
        .update_server("vm", |s| {
            s.state = ServerState::Ready;
            Ok(true)
        })
        .await
        .unwrap();
    assert!(deposed(
        jobs::create(&ctl, "vm", false, Default::default()).await
    ));
    assert!(ctl.inv.jobs().await.unwrap().is_empty());
    assert_eq!(
        ctl.inv.server("vm").await.unwrap().state,
        ServerState::Ready
    );

    // Knowing it follows, it writes under the current leader's term.
    ctl.leader.store(false, Ordering::Relaxed);
    let j = jobs::create(&ctl, "vm", false, Default::default())
        .await
        .unwrap();
    assert_eq!(j.term, Some(theirs));
    let c = jobs::cancel(&ctl, &j.id).await.unwrap();
    assert_eq!(c.state, JobState::Cancelled);
    assert_eq!(c.term, Some(theirs));
}

#[tokio::test]
async fn with_no_leader_an_operator_write_is_refused_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let ctl = cluster(dir.path()).await;
    let e = jobs::create(&ctl, "vm", false, Default::default())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("no controller leads"), "{e}");
    assert_eq!(
        ctl.inv.server("vm").await.unwrap().state,
        ServerState::Ready
    );
}
