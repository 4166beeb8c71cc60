//! Leaders and the store under faults: a three-member etcd cluster whose
//! raft leader dies in the middle of an evacuation, and a controller
//! paused (SIGSTOP) past its lease that must write nothing once resumed.
//! Real etcd, real agents, real guests (TCG).

use std::time::Duration;
use tern_testkit::cluster::{
    boot_on_pool, enable_host_down_policy, jobs, more_heartbeats, rescues_succeeded, shared_pool,
    wait_log, wait_rescue_waiting, wait_server, LONG,
};
use tern_testkit::fencing::{kill_host, wait_armed, CopyCounter};
use tern_testkit::{Etcd, EtcdCluster, TestController};

#[test]
fn etcd_leader_killed_mid_evacuation_still_rescues_exactly_once() {
    let mut etcd = EtcdCluster::start(3);
    let eps = etcd.endpoints();
    let c1 = TestController::etcd(&eps, &["--id", "c1"]);
    let c2 = TestController::etcd(&eps, &["--id", "c2"]);
    let mut a = TestController::host(&[&c1, &c2], "a", &[]);
    let b = TestController::host(&[&c1, &c2], "b", &[]);
    let pool = shared_pool(&[&a, &b], "shared");
    boot_on_pool(&a, "vm", "shared");
    wait_server(&c1, "vm", "a", "running");
    enable_host_down_policy(&c1, "a");
    wait_armed(pool.path(), "a", LONG);
    let copies = CopyCounter::start(&[&a, &b], "vm");

    kill_host(&mut a);
    // The evacuation is stored and waits for the fencing proof...
    wait_rescue_waiting(&c1, "vm");
    // ...when the store's own leader dies.
    let l = etcd.leader().expect("an etcd leader");
    etcd.kill(l);
    wait_server(&c2, "vm", "b", "running");
    more_heartbeats(&b, "vm", 3);
    assert_eq!(rescues_succeeded(&c2), 1);
    assert_eq!(copies.max(), 1);
}

/// The term a controller's log says it leads with.
fn term_of(log: &str) -> u64 {
    log.lines()
        .rev()
        .find(|l| l.contains("leading the cluster"))
        .and_then(|l| l.split("term=").nth(1))
        .and_then(|t| t.split_whitespace().next())
        .and_then(|t| t.trim_matches('"').parse().ok())
        .unwrap_or_else(|| panic!("no term in the log:\n{log}"))
}

#[test]
fn a_leader_paused_past_its_lease_writes_nothing_once_resumed() {
    let etcd = Etcd::start();
    let ttl = ["--leader-ttl-ms", "2000"];
    let c1 = TestController::etcd(&etcd.url, &[&["--id", "c1"][..], &ttl].concat());
    wait_log(&c1.log, 0, "leading the cluster");
    let c2 = TestController::etcd(&etcd.url, &[&["--id", "c2"][..], &ttl].concat());
    let a = TestController::host(&[&c1, &c2], "a", &[]);
    let b = TestController::host(&[&c1, &c2], "b", &[]);
    let _pool = shared_pool(&[&a, &b], "shared");
    boot_on_pool(&a, "vm", "shared");
    wait_server(&c1, "vm", "a", "running");
    c2.wait_json(&["host-list"], LONG, "two hosts", |v| {
        v.as_array().is_some_and(|a| a.len() == 2)
    });
    // c1 leads and drives a slow live migration.
    c2.ok(&["server-live-migrate", "vm", "--max-bandwidth-mb", "2"]);
    wait_log(&c1.log, 0, "job starts");
    let pid = c1.pid().expect("c1 runs") as i32;
    // SAFETY: our own child process.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let c2_log = wait_log(&c2.log, 0, "leading the cluster");
    let new_term = term_of(&c2_log);
    // c2 finishes (or rolls back) the job c1 was driving.
    c2.wait_json(
        &["job-list"],
        Duration::from_secs(300),
        "the job to end",
        |v| {
            v.as_array().is_some_and(|a| {
                a.iter()
                    .all(|j| ["succeeded", "failed"].contains(&j["state"].as_str().unwrap_or("")))
            })
        },
    );
    let before = jobs(&c2);
    let mark = std::fs::read_to_string(&c1.log).unwrap_or_default().len();
    // SAFETY: our own child process.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    let after = wait_log(&c1.log, mark, "lost leadership");
    // Whatever c1 was doing when it stopped (its runner may even reach
    // the job's end and try to record it), nothing it writes lands.
    println!("c1 after resuming:\n{}", &after[mark..]);
    // One more leader tick of c2 later, the records are c2's.
    wait_log(&c2.log, 0, "leading the cluster");
    let now = jobs(&c2);
    assert_eq!(before, now, "a job changed after c1 resumed");
    for j in &now {
        assert_eq!(j["term"].as_u64(), Some(new_term), "{j:#}");
    }
    more_heartbeats(
        if now[0]["state"] == "succeeded" {
            &b
        } else {
            &a
        },
        "vm",
        2,
    );
}

/// The etcd store refuses a guarded write once the guard key was deleted
/// and created again (another leader's term), and writes nothing.
#[tokio::test]
async fn etcd_refuses_a_write_from_a_past_term() {
    use tern_store::{Guard, StoreError};
    let etcd = Etcd::start();
    let s = tern_store::open(&format!("etcd:{}", etcd.url))
        .await
        .unwrap();
    let term = s
        .compare_and_swap("election/x", None, b"c1".to_vec(), None)
        .await
        .unwrap()
        .unwrap();
    let g = Guard {
        key: "election/x".into(),
        revision: term,
    };
    let r = s
        .compare_and_swap_guarded("jobs/1", None, b"a".to_vec(), &g)
        .await;
    assert!(r.unwrap().is_some());
    // The key's own condition failing is not a lost term.
    let r = s
        .compare_and_swap_guarded("jobs/1", None, b"b".to_vec(), &g)
        .await;
    assert_eq!(r.unwrap(), None);
    s.delete("election/x").await.unwrap();
    s.compare_and_swap("election/x", None, b"c2".to_vec(), None)
        .await
        .unwrap()
        .unwrap();
    let r = s
        .compare_and_swap_guarded("jobs/2", None, b"c".to_vec(), &g)
        .await;
    assert!(matches!(r, Err(StoreError::Deposed(_))), "{r:?}");
    assert!(s.get("jobs/2").await.unwrap().is_none());
    assert_eq!(s.get("jobs/1").await.unwrap().unwrap().value, b"a");
}

/// A store connected to three members keeps answering once the member it
/// talks to dies: after the survivors elect a leader, every read and write
/// succeeds (a client that keeps picking the dead member fails a share of
/// them, and a controller whose store fails cannot rescue anything).
#[tokio::test]
async fn the_etcd_store_fails_over_when_a_member_dies() {
    let mut etcd = EtcdCluster::start(3);
    let s = tern_store::open(&format!("etcd:{}", etcd.endpoints()))
        .await
        .unwrap();
    for i in 0..30 {
        s.put(&format!("k/{i}"), b"v".to_vec(), None).await.unwrap();
    }
    let l = etcd.leader().expect("an etcd leader");
    etcd.kill(l);
    // The survivors need a moment to elect a new leader.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while s.get("k/0").await.is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "no answer after a member died"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut failed = Vec::new();
    for i in 0..100 {
        if let Err(e) = s.get(&format!("k/{}", i % 30)).await {
            failed.push(format!("get: {e}"));
        }
        if let Err(e) = s.put(&format!("k/{}", i % 30), b"w".to_vec(), None).await {
            failed.push(format!("put: {e}"));
        }
        if let Err(e) = s.list("k/").await {
            failed.push(format!("list: {e}"));
        }
    }
    assert!(
        failed.is_empty(),
        "{} of 300 calls failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
}

/// A heartbeat's revisions come from a watch
/// (`Store::revisions_recent`). When the member that watch follows
/// freezes, connections open and silent, the copy must stop answering and
/// follow the new leader: a write made through the survivors shows within
/// seconds. A copy that trusted its watch would answer the old revision
/// for as long as the member stays frozen.
#[tokio::test]
async fn recent_revisions_follow_writes_and_leave_a_frozen_member() {
    let etcd = EtcdCluster::start(3);
    let s = tern_store::open(&format!("etcd:{}", etcd.endpoints()))
        .await
        .unwrap();
    let keys = vec!["h/a".to_string(), "h/b".to_string()];
    let wait = Duration::from_secs(10);
    wait_recent_revisions(&*s, &keys, &[None, None], wait).await;
    let ra = s.put("h/a", b"1".to_vec(), None).await.unwrap();
    let rb = s.put("h/b", b"1".to_vec(), None).await.unwrap();
    wait_recent_revisions(&*s, &keys, &[Some(ra), Some(rb)], wait).await;
    assert!(s.delete("h/a").await.unwrap());
    wait_recent_revisions(&*s, &keys, &[None, Some(rb)], wait).await;

    // The store pins the leader, and its watch runs there.
    let l = etcd.leader().expect("an etcd leader");
    etcd.signal(l, libc::SIGSTOP);
    let survivors: Vec<&str> = (0..3)
        .filter(|i| *i != l)
        .map(|i| etcd.urls[i].as_str())
        .collect();
    let t = tern_store::open(&format!("etcd:{}", survivors.join(",")))
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let rb2 = loop {
        // The survivors need a moment to elect a new leader.
        match t.put("h/b", b"2".to_vec(), None).await {
            Ok(r) => break r,
            Err(e) => assert!(std::time::Instant::now() < deadline, "no write: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    wait_recent_revisions(&*s, &keys, &[None, Some(rb2)], Duration::from_secs(30)).await;
    etcd.signal(l, libc::SIGCONT);
}

/// Waits until `store`'s recent revisions of `keys`
/// ([`tern_store::Store::revisions_recent`]) are `want`; panics with the
/// last answer after `timeout`.
async fn wait_recent_revisions(
    store: &dyn tern_store::Store,
    keys: &[String],
    want: &[Option<u64>],
    timeout: Duration,
) {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let got = store.revisions_recent(keys).await;
        if matches!(&got, Ok(g) if g == want) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "recent revisions of {keys:?} are {got:?}, not {want:?}, after {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
