//! The leader's health tick on a real (file) store, against agents that
//! accept a connection and never answer.

use crate::inventory::HOSTS;
use crate::operator_tests::lead;
use crate::{evacuate, Controller, ControllerConfig};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tern_api::cluster::{HostRecord, HostReport, HostStatus};

/// A port whose "agent" accepts and says nothing, so each probe waits out
/// its whole timeout. Notes when each connection came.
struct SilentAgent {
    port: u16,
    accepted: Arc<Mutex<Vec<Instant>>>,
}

impl SilentAgent {
    fn start() -> SilentAgent {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let accepted = Arc::new(Mutex::new(Vec::new()));
        let seen = accepted.clone();
        std::thread::spawn(move || {
            let mut open: Vec<TcpStream> = Vec::new();
            for s in l.incoming() {
                let Ok(s) = s else { return };
                seen.lock().unwrap().push(Instant::now());
                open.push(s);
            }
        });
        SilentAgent { port, accepted }
    }
}

/// Several hosts whose grace ran out at once, their agents silent: the
/// tick probes them together, and declares every one down.
#[tokio::test]
async fn silent_hosts_are_probed_together_and_all_declared_down() {
    let d = tempfile::tempdir().unwrap();
    let mut cfg = ControllerConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        &format!("file:{}", d.path().display()),
    );
    // Nothing renews the term here: it must outlast probes one at a time.
    cfg.leader_ttl = std::time::Duration::from_secs(30);
    let ctl = Controller::open(cfg).await.unwrap();
    lead(&ctl, "c1").await;
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
