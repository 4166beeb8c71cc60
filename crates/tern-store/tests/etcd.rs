//! The etcd store against a real etcd on loopback ports.

use std::sync::Arc;
use std::time::Duration;
use tern_store::{Election, EtcdStore, Store, StoreError};
use tern_testkit::Etcd;

async fn store(e: &Etcd, prefix: &str) -> Arc<dyn Store> {
    Arc::new(
        EtcdStore::connect(std::slice::from_ref(&e.url), prefix)
            .await
            .unwrap(),
    )
}

#[tokio::test]
async fn kv_cas_and_prefix_lists() {
    let e = Etcd::start();
    let s = store(&e, "/t1/").await;
    assert!(s.get("a").await.unwrap().is_none());
    let r1 = s.put("a", b"1".to_vec(), None).await.unwrap();
    assert_eq!(s.get("a").await.unwrap().unwrap().revision, r1);
    assert!(s
        .compare_and_swap("a", None, b"x".to_vec(), None)
        .await
        .unwrap()
        .is_none());
    let r2 = s
        .compare_and_swap("a", Some(r1), b"2".to_vec(), None)
        .await
        .unwrap()
        .unwrap();
    assert!(r2 > r1);
    assert!(s
        .compare_and_swap("a", Some(r1), b"3".to_vec(), None)
        .await
        .unwrap()
        .is_none());
    assert!(s
        .compare_and_swap("n", None, b"new".to_vec(), None)
        .await
        .unwrap()
        .is_some());
    s.put("b/1", b"x".to_vec(), None).await.unwrap();
    s.put("b/2", b"y".to_vec(), None).await.unwrap();
    // Another prefix is another namespace.
    store(&e, "/t2/")
        .await
        .put("b/3", b"z".to_vec(), None)
        .await
        .unwrap();
    let keys: Vec<String> = s
        .list("b/")
        .await
        .unwrap()
        .into_iter()
        .map(|x| x.key)
        .collect();
    assert_eq!(keys, vec!["b/1", "b/2"]);
    assert!(s.delete("b/1").await.unwrap());
    assert!(!s.delete("b/1").await.unwrap());
}

/// Revisions without values, and chosen keys with them, in one
/// transaction per 128 keys (etcd's default `--max-txn-ops`), so 300 keys
/// need three.
#[tokio::test]
async fn revisions_come_without_values_in_chunks_etcd_accepts() {
    let e = Etcd::start();
    let s = store(&e, "/t3/").await;
    let mut keys = Vec::new();
    let mut want = Vec::new();
    for i in 0..300 {
        let k = format!("k/{i:03}");
        // Every third key is never written.
        let rev = match i % 3 {
            0 => None,
            _ => Some(s.put(&k, vec![b'x'; 100], None).await.unwrap()),
        };
        keys.push(k);
        want.push(rev);
    }
    assert_eq!(s.revisions(&keys).await.unwrap(), want);
    // The same keys with their values, also three transactions.
    let got = s.get_many(&keys).await.unwrap();
    let got: Vec<Option<(String, u64, usize)>> = got
        .into_iter()
        .map(|e| e.map(|e| (e.key, e.revision, e.value.len())))
        .collect();
    let with_values: Vec<Option<(String, u64, usize)>> = keys
        .iter()
        .zip(&want)
        .map(|(k, r)| r.map(|r| (k.clone(), r, 100)))
        .collect();
    assert_eq!(got, with_values);
    let listed = s.list_revisions("k/").await.unwrap();
    let expected: Vec<(String, u64)> = keys
        .iter()
        .zip(&want)
        .filter_map(|(k, r)| r.map(|r| (k.clone(), r)))
        .collect();
    assert_eq!(listed, expected);
}

/// All or nothing, in transactions of 64 keys (a compare and a put each).
#[tokio::test]
async fn create_all_writes_all_or_nothing() {
    let e = Etcd::start();
    let s = store(&e, "/t4/").await;
    let entries = |n: usize, from: usize| -> Vec<(String, Vec<u8>)> {
        (from..from + n)
            .map(|i| (format!("s/{i:03}"), b"v".to_vec()))
            .collect()
    };
    assert!(s.create_all(&entries(100, 0)).await.unwrap());
    assert_eq!(s.list("s/").await.unwrap().len(), 100);
    // Keys 99 and 100: one exists, so nothing of its transaction is written.
    assert!(!s.create_all(&entries(2, 99)).await.unwrap());
    assert!(s.get("s/100").await.unwrap().is_none());
}

/// Renewals after the first go over the stream the first one opened.
#[tokio::test]
async fn a_lease_renewed_on_its_kept_stream_outlives_its_ttl() {
    let e = Etcd::start();
    let s = store(&e, "/t5/").await;
    let l = s.grant(Duration::from_secs(1)).await.unwrap();
    s.put("alive/h1", b"1".to_vec(), Some(l)).await.unwrap();
    for _ in 0..10 {
        s.keep_alive(l).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(s.get("alive/h1").await.unwrap().is_some());
    s.revoke(l).await.unwrap();
    assert!(s.get("alive/h1").await.unwrap().is_none());
    let r = s.keep_alive(l).await;
    assert!(matches!(r, Err(StoreError::LeaseExpired(_))), "{r:?}");
}

#[tokio::test]
async fn lease_keys_vanish_when_not_renewed() {
    let e = Etcd::start();
    let s = store(&e, "/t/").await;
    let l = s.grant(Duration::from_secs(1)).await.unwrap();
    s.put("alive/h1", b"1".to_vec(), Some(l)).await.unwrap();
    s.keep_alive(l).await.unwrap();
    assert!(s.get("alive/h1").await.unwrap().is_some());
    // Wait for the expiry as etcd reports it (no timing assumption beyond "eventually").
    let mut gone = false;
    for _ in 0..100 {
        if s.get("alive/h1").await.unwrap().is_none() {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(gone, "lease key outlived its lease");
    let r = s.keep_alive(l).await;
    assert!(matches!(r, Err(StoreError::LeaseExpired(_))), "{r:?}");
    assert!(matches!(
        s.put("x", b"1".to_vec(), Some(l)).await,
        Err(StoreError::LeaseExpired(_))
    ));
}

#[tokio::test]
async fn election_hands_over_when_the_leader_stops_renewing() {
    let e = Etcd::start();
    let a = Election::new(store(&e, "/t/").await, "ctl", Duration::from_secs(1));
    let b = Election::new(store(&e, "/t/").await, "ctl", Duration::from_secs(1));
    let la = a
        .try_campaign("ctl-a")
        .await
        .unwrap()
        .expect("a leads first");
    assert!(b.try_campaign("ctl-b").await.unwrap().is_none());
    assert_eq!(b.leader().await.unwrap().as_deref(), Some("ctl-a"));
    la.renew().await.unwrap();
    // A stops renewing (as if it died): B's campaign wins once A's lease ends.
    let lb = b
        .campaign("ctl-b", Duration::from_millis(100))
        .await
        .unwrap();
    assert_eq!(a.leader().await.unwrap().as_deref(), Some("ctl-b"));
    assert!(
        la.renew().await.is_err(),
        "the old leader must learn it lost"
    );
    lb.resign().await.unwrap();
    assert_eq!(a.leader().await.unwrap(), None);
}

/// Every lease's renewals go on one keep-alive stream (etcd counts the
/// streams it served): fifty hosts' leases renewed together, round after
/// round past their TTL, open one stream, not fifty. A lease revoked
/// among them is reported expired; the others live on.
#[tokio::test]
async fn many_leases_are_renewed_on_one_stream() {
    let e = Etcd::start();
    let s = store(&e, "/t6/").await;
    let streams = || {
        tern_testkit::etcd::metric(
            &e.url,
            "grpc_server_started_total{grpc_method=\"LeaseKeepAlive\",grpc_service=\"etcdserverpb.Lease\",grpc_type=\"bidi_stream\"}",
        )
        .expect("etcd counts the keep-alive streams it served")
    };
    let before = streams();
    let mut leases = Vec::new();
    for i in 0..50 {
        let l = s.grant(Duration::from_secs(1)).await.unwrap();
        s.put(&format!("alive/h{i}"), b"1".to_vec(), Some(l))
            .await
            .unwrap();
        leases.push(l);
    }
    for round in 0..8 {
        if round == 3 {
            s.revoke(leases[0]).await.unwrap();
        }
        let mut set = tokio::task::JoinSet::new();
        for &l in &leases {
            let s = s.clone();
            set.spawn(async move { (l, s.keep_alive(l).await) });
        }
        while let Some(r) = set.join_next().await {
            let (l, r) = r.unwrap();
            match (l == leases[0] && round >= 3, r) {
                (true, Err(StoreError::LeaseExpired(_))) | (false, Ok(())) => {}
                (revoked, r) => panic!("round {round}, lease {l:x} (revoked {revoked}): {r:?}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(s.get("alive/h0").await.unwrap().is_none());
    assert_eq!(s.list("alive/").await.unwrap().len(), 49);
    let opened = streams() - before;
    assert!(
        (1.0..=2.0).contains(&opened),
        "{opened} keep-alive streams for 50 leases"
    );
}
