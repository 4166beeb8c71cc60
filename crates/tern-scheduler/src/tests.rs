use super::*;

fn host(name: &str) -> HostView {
    HostView {
        name: name.into(),
        schedulable: true,
        cpu_model: "Xeon".into(),
        microcode: "0x1".into(),
        kernel: "6.1.0".into(),
        page_size: 4096,
        qemu_version: "7.2.22".into(),
        vcpus_total: 8,
        vcpus_used: 0,
        memory_total_mib: 8192,
        memory_used_mib: 0,
        pools: vec![
            PoolView {
                name: "shared".into(),
                shared: true,
                free_bytes: 1 << 40,
                identity: None,
            },
            PoolView {
                name: "local".into(),
                shared: false,
                free_bytes: 10 << 30,
                identity: None,
            },
        ],
        networks: vec!["br0".into()],
        machines: vec!["pc-q35-10.0".into(), "pc-q35-7.2".into(), "q35".into()],
        inbound: 0,
        outbound: 0,
    }
}

fn server(on: &str) -> ServerView {
    ServerView {
        name: "vm".into(),
        host: on.into(),
        vcpus: 2,
        memory_mib: 1024,
        disks: vec![DiskNeed {
            pool: "shared".into(),
            shared: true,
            bytes: 1 << 30,
        }],
        networks: vec!["br0".into()],
        machine: Some("pc-q35-10.0".into()),
    }
}

fn live() -> MoveRequest {
    MoveRequest {
        kind: MoveKind::Live,
        ..Default::default()
    }
}

fn reject<'a>(
    req: &'a MoveRequest,
    s: &'a ServerView,
    src: &'a HostView,
    c: &'a HostView,
) -> Option<Rejection<'a>> {
    filters::check(req, s, Some(src), c).err()
}

#[test]
fn current_host_and_preferred() {
    let (a, b) = (host("a"), host("b"));
    let s = server("a");
    assert_eq!(reject(&live(), &s, &a, &a), Some(Rejection::CurrentHost));
    assert_eq!(reject(&live(), &s, &a, &b), None);
    let req = MoveRequest {
        prefer_host: Some("c".into()),
        ..live()
    };
    assert!(matches!(
        reject(&req, &s, &a, &b),
        Some(Rejection::NotPreferred { .. })
    ));
}

#[test]
fn resources_are_checked() {
    let a = host("a");
    let s = server("a");
    let mut b = host("b");
    b.vcpus_used = 7;
    assert_eq!(
        reject(&live(), &s, &a, &b),
        Some(Rejection::Cpu { need: 2, free: 1 })
    );
    let mut b = host("b");
    b.memory_used_mib = 8000;
    assert!(matches!(
        reject(&live(), &s, &a, &b),
        Some(Rejection::Memory { .. })
    ));
    let mut b = host("b");
    b.schedulable = false;
    assert_eq!(reject(&live(), &s, &a, &b), Some(Rejection::Unschedulable));
}

#[test]
fn a_shared_pool_of_the_same_name_on_another_ceph_cluster_is_other_storage() {
    let s = server("a");
    let (mut a, mut b) = (host("a"), host("b"));
    a.pools[0].identity = Some("ceph:1111/vms".into());
    b.pools[0].identity = Some("ceph:2222/vms".into());
    let req = live();
    let r = reject(&req, &s, &a, &b);
    assert_eq!(
        r,
        Some(Rejection::SharedPoolOther {
            pool: "shared".into()
        })
    );
    assert!(r.unwrap().to_string().contains("fsid"));
    b.pools[0].identity = Some("ceph:1111/vms".into());
    assert_eq!(reject(&live(), &s, &a, &b), None);
    // Unknown on either side (a cluster that did not answer): the name decides.
    b.pools[0].identity = None;
    assert_eq!(reject(&live(), &s, &a, &b), None);
}

#[test]
fn storage_shared_local_and_rescue() {
    let a = host("a");
    let mut b = host("b");
    b.pools.retain(|p| p.name != "shared");
    let s = server("a");
    assert_eq!(
        reject(&live(), &s, &a, &b),
        Some(Rejection::SharedPoolUnreachable {
            pool: "shared".into()
        })
    );
    let mut s = server("a");
    s.disks = vec![
        DiskNeed {
            pool: "local".into(),
            shared: false,
            bytes: 6 << 30,
        },
        DiskNeed {
            pool: "local".into(),
            shared: false,
            bytes: 6 << 30,
        },
    ];
    // Two disks of 6 GiB do not fit in 10 GiB: summed per pool.
    assert!(matches!(
        reject(&live(), &s, &a, &host("b")),
        Some(Rejection::Disk { need, .. }) if need == 12 << 30
    ));
    let rescue = MoveRequest {
        kind: MoveKind::Rescue,
        ..Default::default()
    };
    assert!(matches!(
        reject(&rescue, &s, &a, &host("b")),
        Some(Rejection::LocalDisk { .. })
    ));
}

#[test]
fn network_must_exist() {
    let mut b = host("b");
    b.networks.clear();
    assert_eq!(
        reject(&live(), &server("a"), &host("a"), &b),
        Some(Rejection::Network {
            network: "br0".into()
        })
    );
}

#[test]
fn the_machine_type_must_be_offered() {
    let mut b = host("b");
    b.machines = vec!["pc-q35-7.2".into(), "q35".into()];
    assert_eq!(
        reject(&live(), &server("a"), &host("a"), &b),
        Some(Rejection::MachineType {
            machine: "pc-q35-10.0".into()
        })
    );
    // A host that does not report its machines is not judged on them.
    b.machines.clear();
    assert_eq!(reject(&live(), &server("a"), &host("a"), &b), None);
}

#[test]
fn live_checks_and_their_skips() {
    let a = host("a");
    let s = server("a");
    let mut b = host("b");
    b.cpu_model = "EPYC".into();
    assert!(matches!(
        reject(&live(), &s, &a, &b),
        Some(Rejection::CpuModel { .. })
    ));
    let skip = MoveRequest {
        skip_cpu_check: true,
        ..live()
    };
    assert_eq!(reject(&skip, &s, &a, &b), None);
    // Cold moves do not care about the CPU.
    assert_eq!(reject(&MoveRequest::default(), &s, &a, &b), None);
    let mut b = host("b");
    b.microcode = "0x2".into();
    assert!(matches!(
        reject(&live(), &s, &a, &b),
        Some(Rejection::CpuModel { .. })
    ));
    let mut b = host("b");
    b.kernel = "6.2".into();
    assert!(matches!(
        reject(&live(), &s, &a, &b),
        Some(Rejection::Kernel { .. })
    ));
    let skipk = MoveRequest {
        skip_kernel_check: true,
        ..live()
    };
    assert_eq!(reject(&skipk, &s, &a, &b), None);
    let mut b = host("b");
    b.page_size = 65536;
    assert!(matches!(
        reject(&skip, &s, &a, &b),
        Some(Rejection::PageSize { .. })
    ));
    let mut b = host("b");
    b.qemu_version = "7.2.9".into();
    assert!(matches!(
        reject(&live(), &s, &a, &b),
        Some(Rejection::QemuOlder { .. })
    ));
    b.qemu_version = "8.0.0".into();
    assert_eq!(reject(&live(), &s, &a, &b), None);
}

#[test]
fn versions_compare_numerically() {
    assert!(filters::version_key("7.2.22") > filters::version_key("7.2.9"));
    assert_eq!(
        filters::version_key("7.2.22 (Debian 1:7.2+dfsg-7)"),
        vec![7, 2, 22]
    );
    assert_eq!(filters::version_key("QEMU 8.1"), vec![8, 1]);
}

#[test]
fn least_loaded_wins_and_migrations_count() {
    let mut b = host("b");
    b.vcpus_used = 4;
    let c = host("c");
    let hosts = vec![host("a"), b, c.clone()];
    let s = server("a");
    assert_eq!(
        schedule(&live(), &s, &hosts, &Limits::default()).unwrap(),
        "c"
    );
    let mut c2 = c;
    c2.inbound = 1;
    c2.vcpus_used = 1;
    let mut b2 = host("b");
    b2.vcpus_used = 1;
    let hosts = vec![host("a"), c2, b2];
    assert_eq!(
        schedule(&live(), &s, &hosts, &Limits::default()).unwrap(),
        "b"
    );
}

#[test]
fn forecast_explains_every_host() {
    let mut b = host("b");
    b.cpu_model = "EPYC".into();
    let hosts = vec![host("a"), b, host("c")];
    let v = forecast(&live(), &server("a"), &hosts, &Limits::default());
    assert_eq!(v[0].host, "c");
    assert!(v[0].result.is_ok());
    let why: Vec<String> = v[1..]
        .iter()
        .map(|x| x.result.clone().unwrap_err().to_string())
        .collect();
    assert!(
        why.iter().any(|w| w.contains("already on this host")),
        "{why:?}"
    );
    assert!(
        why.iter().any(|w| w.contains("--skip-cpu-check")),
        "{why:?}"
    );
    let e = schedule(&live(), &server("a"), &hosts[..2], &Limits::default()).unwrap_err();
    assert!(e.to_string().contains("b: CPU 'EPYC"), "{e}");
}

#[test]
fn plan_respects_every_limit() {
    let limits = Limits {
        per_host_outbound: 2,
        per_host_inbound: 2,
        cluster: 5,
    };
    let hosts = vec![host("a"), host("b"), host("c")];
    let q: Vec<Queued> = (0..6)
        .map(|i| Queued {
            id: format!("j{i}"),
            server: ServerView {
                name: format!("vm{i}"),
                vcpus: 1,
                memory_mib: 128,
                ..server("a")
            },
            req: live(),
        })
        .collect();
    let steps = plan(&q, &hosts, 0, &limits);
    let started: Vec<_> = steps
        .iter()
        .filter(|s| matches!(s, Step::Start { .. }))
        .collect();
    assert_eq!(started.len(), 2, "{steps:?}");
    assert!(matches!(&steps[2], Step::Wait { why, .. } if why.contains("sends 2")));
    // Inbound: all from different sources to one possible destination.
    let hosts = vec![host("a"), host("b"), host("c"), host("d")];
    let q: Vec<Queued> = ["a", "b", "c"]
        .iter()
        .enumerate()
        .map(|(i, h)| Queued {
            id: format!("j{i}"),
            server: ServerView {
                name: format!("vm{i}"),
                ..server(h)
            },
            req: MoveRequest {
                prefer_host: Some("d".into()),
                ..live()
            },
        })
        .collect();
    let steps = plan(&q, &hosts, 0, &limits);
    assert!(matches!(&steps[0], Step::Start { dest, .. } if dest == "d"));
    assert!(matches!(&steps[1], Step::Start { .. }));
    assert!(matches!(&steps[2], Step::Wait { .. }), "{steps:?}");
    // Cluster limit.
    let steps = plan(&q, &hosts, 5, &limits);
    assert!(steps
        .iter()
        .all(|s| matches!(s, Step::Wait { why, .. } if why.contains("cluster"))));
    // Impossible jobs fail rather than wait forever.
    let mut q1 = q[0].clone();
    q1.req.prefer_host = Some("zz".into());
    assert!(matches!(
        &plan(&[q1], &hosts, 0, &limits)[0],
        Step::Fail { .. }
    ));
}

#[test]
fn rescues_bypass_limits_and_spread() {
    let hosts = vec![host("a"), host("b"), host("c")];
    let q: Vec<Queued> = (0..4)
        .map(|i| Queued {
            id: format!("r{i}"),
            server: ServerView {
                name: format!("vm{i}"),
                ..server("a")
            },
            req: MoveRequest {
                kind: MoveKind::Rescue,
                ..Default::default()
            },
        })
        .collect();
    let steps = plan(&q, &hosts, 5, &Limits::default());
    let dests: Vec<&str> = steps
        .iter()
        .map(|s| match s {
            Step::Start { dest, .. } => dest.as_str(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(dests, vec!["b", "c", "b", "c"]);
}
