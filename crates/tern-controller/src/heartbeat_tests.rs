//! Registration and heartbeats on a real (file) store: which server
//! records a report creates and removes, and the digest-only heartbeat.

use crate::api::dispatch;
use crate::inventory::{HOSTS, SERVERS};
use crate::{Controller, ControllerConfig};
use std::sync::Arc;
use tern_api::cluster::{
    ClusterRequest, DomainReport, HeartbeatReply, HostReport, RegisterReply, ServerRecord,
    ServerState,
};
use tern_store::{Entry, Guard, LeaseId, Result as StoreResult, Store};

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

/// A file store whose recent revisions ([`Store::revisions_recent`]) stay
/// as they were when frozen, as an etcd watch's copy that lags; and whose
/// next renewal may find its lease lapsed, as a slow registration's did.
#[derive(Debug)]
struct Behind {
    inner: tern_store::FileStore,
    frozen: std::sync::Mutex<Option<std::collections::HashMap<String, Option<u64>>>>,
    lapse_next_renewal: std::sync::atomic::AtomicBool,
}

impl Behind {
    fn open(dir: &std::path::Path) -> Behind {
        Behind {
            inner: tern_store::FileStore::open(dir.to_str().unwrap()).unwrap(),
            frozen: Default::default(),
            lapse_next_renewal: Default::default(),
        }
    }
}

impl Behind {
    /// From now on, recent answers are the revisions of `keys` as they are now.
    async fn freeze(&self, keys: &[String]) {
        let revs = self.inner.revisions(keys).await.unwrap();
        let m = keys.iter().cloned().zip(revs).collect();
        *self.frozen.lock().unwrap() = Some(m);
    }
}

#[async_trait::async_trait]
impl Store for Behind {
    async fn get(&self, key: &str) -> StoreResult<Option<Entry>> {
        self.inner.get(key).await
    }
    async fn put(&self, key: &str, value: Vec<u8>, lease: Option<LeaseId>) -> StoreResult<u64> {
        self.inner.put(key, value, lease).await
    }
    async fn delete(&self, key: &str) -> StoreResult<bool> {
        self.inner.delete(key).await
    }
    async fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<u64>,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> StoreResult<Option<u64>> {
        self.inner
            .compare_and_swap(key, expected, value, lease)
            .await
    }
    async fn compare_and_swap_guarded(
        &self,
        key: &str,
        expected: Option<u64>,
        value: Vec<u8>,
        guard: &Guard,
    ) -> StoreResult<Option<u64>> {
        self.inner
            .compare_and_swap_guarded(key, expected, value, guard)
            .await
    }
    async fn create_all(&self, entries: &[(String, Vec<u8>)]) -> StoreResult<bool> {
        self.inner.create_all(entries).await
    }
    async fn list(&self, prefix: &str) -> StoreResult<Vec<Entry>> {
        self.inner.list(prefix).await
    }
    async fn revisions(&self, keys: &[String]) -> StoreResult<Vec<Option<u64>>> {
        self.inner.revisions(keys).await
    }
    async fn revisions_recent(&self, keys: &[String]) -> StoreResult<Vec<Option<u64>>> {
        let frozen = self.frozen.lock().unwrap().clone();
        match frozen {
            Some(m) => Ok(keys.iter().map(|k| m.get(k).copied().flatten()).collect()),
            None => self.inner.revisions(keys).await,
        }
    }
    async fn list_revisions(&self, prefix: &str) -> StoreResult<Vec<(String, u64)>> {
        self.inner.list_revisions(prefix).await
    }
    async fn grant(&self, ttl: std::time::Duration) -> StoreResult<LeaseId> {
        self.inner.grant(ttl).await
    }
    async fn keep_alive(&self, lease: LeaseId) -> StoreResult<()> {
        use std::sync::atomic::Ordering;
        if self.lapse_next_renewal.swap(false, Ordering::SeqCst) {
            self.inner.revoke(lease).await?;
        }
        self.inner.keep_alive(lease).await
    }
    async fn revoke(&self, lease: LeaseId) -> StoreResult<()> {
        self.inner.revoke(lease).await
    }
}

/// A controller on a [`Behind`] store in `dir`.
fn on_behind(dir: &std::path::Path) -> (Arc<Behind>, Arc<Controller>) {
    let cfg = ControllerConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        &format!("file:{}", dir.display()),
    );
    let store = Arc::new(Behind::open(dir));
    let ctl = Controller::on_store(cfg, store.clone());
    (store, ctl)
}

/// A heartbeat reads revisions that may be a moment old. One that
/// predates the host's new registration finds the old lease in the
/// record: that must not send the agent to register again (which, at
/// thousands of hosts, would feed on itself). Only a linearizable read
/// may; the old lease is still told to go.
#[tokio::test]
async fn a_moment_old_read_never_sends_an_agent_to_register_again() {
    let d = tempfile::tempdir().unwrap();
    let (store, ctl) = on_behind(d.path());
    let r = report(&["a"]);
    let first: RegisterReply = call(&ctl, ClusterRequest::Register { report: r.clone() }).await;
    let hb = heartbeat(&ctl, first.lease, None, r.digest()).await;
    assert!(!hb.reregister, "{hb:?}");

    store
        .freeze(&[format!("{HOSTS}h1"), format!("{SERVERS}a")])
        .await;
    let again: RegisterReply = call(&ctl, ClusterRequest::Register { report: r.clone() }).await;
    assert_ne!(again.lease, first.lease);
    let hb = heartbeat(&ctl, again.lease, None, r.digest()).await;
    assert!(!hb.reregister, "the new lease was sent away: {hb:?}");
    let hb = heartbeat(&ctl, first.lease, None, r.digest()).await;
    assert!(hb.reregister, "the old lease was kept: {hb:?}");
}

/// When registrations are queued past their wait, a newcomer is refused
/// as busy at once, having changed nothing, and registers once there is
/// room. (The clock is Tokio's paused one: the wait passes as soon as
/// nothing else can run.)
#[tokio::test(start_paused = true)]
async fn a_registration_that_cannot_get_a_turn_is_refused_as_busy() {
    let d = tempfile::tempdir().unwrap();
    let ctl = controller(d.path()).await;
    let all = crate::api::REGISTRATIONS_AT_ONCE as u32;
    let held = ctl.registering.acquire_many(all).await.unwrap();
    let req = ClusterRequest::Register {
        report: report(&["a"]),
    };
    let refused = dispatch(&ctl, req.clone()).await.expect_err("refused");
    let e = tern_api::ApiError::from(refused);
    assert_eq!(e.code, tern_api::ErrorCode::Timeout, "{e:?}");
    assert!(
        e.message.contains("busy") && e.message.contains("retry"),
        "{e:?}"
    );
    assert!(
        servers(&ctl).await.is_empty(),
        "a refused registration wrote"
    );
    drop(held);
    let _: RegisterReply = call(&ctl, req).await;
    assert_eq!(servers(&ctl).await, ["a"]);
}

/// A registration slow enough that its lease lapsed before the reply: the
/// host gets a fresh lease (alive key and record), not one that is gone,
/// and a heartbeat on it is answered.
#[tokio::test]
async fn a_lease_that_lapsed_while_registering_is_replaced() {
    let d = tempfile::tempdir().unwrap();
    let (store, ctl) = on_behind(d.path());
    store
        .lapse_next_renewal
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let r = report(&["a"]);
    let reg: RegisterReply = call(&ctl, ClusterRequest::Register { report: r.clone() }).await;
    let rec = ctl.inv.host("h1").await.unwrap();
    assert_eq!(rec.lease, reg.lease, "the record names the fresh lease");
    assert_eq!(rec.status, tern_api::cluster::HostStatus::Online);
    let alive = store
        .get(&format!("{}h1", crate::inventory::ALIVE))
        .await
        .unwrap();
    assert_eq!(
        alive.and_then(|e| e.lease),
        Some(reg.lease),
        "the alive key is on it"
    );
    assert!(ctl.lease_ends.end_of("h1", reg.lease).is_some());
    let hb = heartbeat(&ctl, reg.lease, None, r.digest()).await;
    assert!(!hb.reregister, "{hb:?}");
}
