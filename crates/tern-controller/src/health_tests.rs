//! The leader's health tick on a real (file) store, against agents that
//! accept a connection and never answer.

use crate::inventory::{now_ms, ALIVE, HOSTS};
use crate::operator_tests::lead;
use crate::{evacuate, Controller, ControllerConfig};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tern_api::cluster::{HostRecord, HostReport, HostStatus};

/// A port whose "agent" accepts and says nothing, so each probe waits out
/// its whole timeout. Notes when each connection came.
struct SilentAgent {
    port: u16,
    accepted: Arc<Mutex<Vec<Instant>>>,
    /// When the first connection came, in ms since the epoch.
    first_ms: Arc<Mutex<Option<u64>>>,
}

impl SilentAgent {
    fn start() -> SilentAgent {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let accepted = Arc::new(Mutex::new(Vec::new()));
        let first_ms = Arc::new(Mutex::new(None));
        let (seen, first) = (accepted.clone(), first_ms.clone());
        std::thread::spawn(move || {
            let mut open: Vec<TcpStream> = Vec::new();
            for s in l.incoming() {
                let Ok(s) = s else { return };
                seen.lock().unwrap().push(Instant::now());
                first.lock().unwrap().get_or_insert_with(now_ms);
                open.push(s);
            }
        });
        SilentAgent {
            port,
            accepted,
            first_ms,
        }
    }
}

/// A controller on a fresh file store, leading.
async fn leading(d: &tempfile::TempDir, lease_ttl: Duration) -> Arc<Controller> {
    let mut cfg = ControllerConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        &format!("file:{}", d.path().display()),
    );
    // Nothing renews the term here: it must outlast probes one at a time.
    cfg.leader_ttl = Duration::from_secs(30);
    cfg.lease_ttl = lease_ttl;
    let ctl = Controller::open(cfg).await.unwrap();
    lead(&ctl, "c1").await;
    ctl
}

/// A host whose lease this controller renewed, then let run out, with a
/// silent agent: the leader notices the lapse late, yet counts the grace
/// from the lease's end; it probes within the grace, and declares the
/// host down when the grace is over, never before.
#[tokio::test]
async fn the_grace_counts_from_the_lease_end_and_the_probe_fits_in_it() {
    let d = tempfile::tempdir().unwrap();
    let ttl = Duration::from_millis(300);
    let ctl = leading(&d, ttl).await;
    let agent = SilentAgent::start();
    let report = HostReport {
        name: "h0".into(),
        api_uri: format!("tern+tcp://127.0.0.1:{}/system", agent.port),
        ..HostReport::default()
    };
    let sent = now_ms();
    let lease = ctl.inv.store.grant(ttl).await.unwrap();
    let alive = format!("{ALIVE}h0");
    ctl.inv
        .store
        .put(&alive, b"1".to_vec(), Some(lease))
        .await
        .unwrap();
    ctl.lease_renewed("h0", lease, sent);
    let rec = HostRecord::online(report, lease);
    ctl.inv.put(&format!("{HOSTS}h0"), &rec).await.unwrap();
    // The lease runs out; the leader looks well after.
    while ctl.inv.store.get(&alive).await.unwrap().is_some() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    evacuate::health_tick(&ctl).await.unwrap();
    let since = match ctl.inv.host("h0").await.unwrap().status {
        HostStatus::Lapsed { since_ms } => since_ms,
        s => panic!("not lapsed: {s:?}"),
    };
    assert_eq!(since, sent + 300, "the lapse is dated at the lease's end");
    // The next ticks probe (the grace's last probe timeout plus a tick
    // are already under way) and wait out the grace.
    let grace = ctl.cfg.grace.as_millis() as u64;
    let down = loop {
        evacuate::health_tick(&ctl).await.unwrap();
        if let HostStatus::Down { since_ms } = ctl.inv.host("h0").await.unwrap().status {
            break since_ms;
        }
        tokio::time::sleep(ctl.cfg.tick).await;
    };
    let probed = agent
        .first_ms
        .lock()
        .unwrap()
        .expect("the agent was probed");
    assert!(
        probed < since + grace,
        "probed at {probed}, after the grace"
    );
    assert!(
        down >= since + grace,
        "down at {down}, before the grace ended"
    );
}

/// Several hosts whose grace ran out at once, their agents silent: the
/// tick probes them together, and declares every one down.
#[tokio::test]
async fn silent_hosts_are_probed_together_and_all_declared_down() {
    let d = tempfile::tempdir().unwrap();
    let ctl = leading(&d, crate::DEFAULT_LEASE_TTL).await;
    let agent = SilentAgent::start();
    let names: Vec<String> = (0..4).map(|i| format!("h{i}")).collect();
    for n in &names {
        let report = HostReport {
            name: n.clone(),
            api_uri: format!("tern+tcp://127.0.0.1:{}/system", agent.port),
            ..HostReport::default()
        };
        let mut rec = HostRecord::online(report, 0);
        // Lapsed long ago, no lease key: the grace is over.
        rec.status = HostStatus::Lapsed { since_ms: 1 };
        ctl.inv.put(&format!("{HOSTS}{n}"), &rec).await.unwrap();
    }
    evacuate::health_tick(&ctl).await.unwrap();
    for n in &names {
        let h = ctl.inv.host(n).await.unwrap();
        assert!(
            matches!(h.status, HostStatus::Down { .. }),
            "{n}: {:?}",
            h.status
        );
    }
    // One at a time, each probe would start after the last one's timeout.
    let at = agent.accepted.lock().unwrap().clone();
    assert_eq!(at.len(), names.len(), "one probe per host");
    let span = *at.last().unwrap() - at[0];
    assert!(
        span < evacuate::PROBE_TIMEOUT,
        "the last probe began {span:?} after the first: they ran one at a time"
    );
}
