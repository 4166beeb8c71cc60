
#[test]
fn vcpu_hotplug_maximum_and_topology_reach_smp() {
    let mut d = guest();
    d.vcpus = 4;
    d.vcpus_current = Some(2);
    d.cpu = Some(Cpu {
        mode: CpuMode::Custom,
        model: Some("Westmere".into()),
        features: vec![
            CpuFeature {
                policy: "require".into(),
                name: "avx".into(),
            },
            CpuFeature {
                policy: "disable".into(),
                name: "vmx".into(),
            },
        ],
        match_mode: Some("exact".into()),
        check: None,
        topology: Some(CpuTopology {
            sockets: 2,
            dies: 1,
            clusters: 1,
            cores: 2,
            threads: 1,
        }),
    });
    let a = line(&d);
    assert!(a.contains("-smp 2,maxcpus=4,sockets=2,cores=2,threads=1"), "{a}");
    assert!(a.contains("-cpu Westmere,+avx,-vmx"), "{a}");
}
