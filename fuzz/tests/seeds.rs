//! Writes the seed inputs of the binary targets with the real encoders:
//! `cargo test --manifest-path fuzz/Cargo.toml --test seeds -- --ignored`.
//! Run once when a format changes; the files are committed.

use std::path::{Path, PathBuf};

fn corpus(target: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
#[ignore]
fn write_seeds() {
    use tern_transfer::wire::{frame_header, preface, ChunkHeader, Hello, Kind};
    let hello = Hello {
        flags: 3,
        session: [1; 16],
        stream_index: 0,
        stream_count: 2,
        chunk_size: 1 << 20,
        file_size: 5 << 20,
        chunk_count: 5,
        data_bytes: 3 << 20,
        fingerprint: [2; 32],
    };
    let chunk = ChunkHeader {
        index: 1,
        offset: 1 << 20,
        len: 16,
        flags: 0,
        zero_mask: 0,
        hash: [3; 32],
    };
    let frame = |kind: Kind, body: &[u8]| {
        let mut v = frame_header(kind, body.len()).to_vec();
        v.extend_from_slice(body);
        v
    };
    let mut stream = preface().to_vec();
    stream.extend(frame(Kind::Hello, &hello.encode()));
    let mut c = chunk.encode().to_vec();
    c.extend_from_slice(&[0xab; 16]);
    stream.extend(frame(Kind::Chunk, &c));
    stream.extend(frame(Kind::End, &[]));
    stream.extend(frame(Kind::Error, b"disk full"));
    let d = corpus("transfer_frames");
    std::fs::write(d.join("stream"), &stream).unwrap();
    std::fs::write(d.join("hello"), frame(Kind::Hello, &hello.encode())).unwrap();
    std::fs::write(d.join("preface"), preface()).unwrap();

    use tern_transfer::journal::{Header, Journal};
    let hdr = Header {
        session: [7; 16],
        fingerprint: [9; 32],
        file_size: 1 << 30,
        chunk_size: 1 << 20,
        chunk_count: 1024,
    };
    let d = corpus("transfer_journal");
    let p = d.join("three-records");
    let mut j = Journal::create(&p, &hdr).unwrap();
    j.append(&[(0, [1; 32]), (5, [2; 32]), (1023, [3; 32])])
        .unwrap();
    drop(j);
    let full = std::fs::read(&p).unwrap();
    std::fs::write(d.join("torn-tail"), &full[..full.len() - 7]).unwrap();
    let mut other = hdr.clone();
    other.session = [8; 16];
    Journal::create(&d.join("other-session"), &other).unwrap();

    use tern_api::cluster::{ClusterRequest, DiskReport, DomainReport, HostReport};
    let report = HostReport {
        name: "host-a".into(),
        api_uri: "tern+tcp://10.0.0.1:16509/system".into(),
        domains: vec![DomainReport {
            name: "vm1".into(),
            uuid: "6d2f4c8e-0000-4000-8000-000000000001".into(),
            active: true,
            vcpus: 2,
            memory_mib: 512,
            disks: vec![DiskReport {
                target: "vda".into(),
                path: "/pool/vm1.qcow2".into(),
                pool: Some("images".into()),
                shared: true,
                bytes: 1 << 30,
            }],
            networks: vec!["br0".into()],
            xml: "<domain type='kvm'><name>vm1</name></domain>".into(),
            machine: Some("pc-q35-10.0".into()),
        }],
        ..Default::default()
    };
    let d = corpus("cluster_messages");
    let reqs = [
        (
            "register",
            ClusterRequest::Register {
                report: report.clone(),
            },
        ),
        (
            "heartbeat",
            ClusterRequest::Heartbeat {
                host: "host-a".into(),
                lease: 7,
                report: Some(report.clone()),
                digest: report.digest(),
            },
        ),
        ("host-list", ClusterRequest::HostList),
        (
            "server-show",
            ClusterRequest::ServerShow { id: "vm1".into() },
        ),
    ];
    for (name, r) in reqs {
        std::fs::write(d.join(name), serde_json::to_vec(&r).unwrap()).unwrap();
    }
    std::fs::write(d.join("report"), serde_json::to_vec(&report).unwrap()).unwrap();

    // tunnel_records: mode (odd = records to seal), read size, then
    // records as kind (0 data, 1 alert, 2 handshake; bit 7 corrupts),
    // two length bytes and the payload.
    let script = |mode: u8, step: u8, recs: &[(u8, &[u8])]| {
        let mut v = vec![mode, step];
        for (k, d) in recs {
            v.push(*k);
            v.extend_from_slice(&(d.len() as u16).to_be_bytes());
            v.extend_from_slice(d);
        }
        v
    };
    let big = vec![0x61u8; 16384];
    let d = corpus("tunnel_records");
    let close: &[u8] = &[1, 0];
    let seeds: [(&str, Vec<u8>); 6] = [
        (
            "stream",
            script(1, 3, &[(0, b"hello"), (0, &big), (1, close)]),
        ),
        (
            "corrupt-second",
            script(1, 0, &[(0, b"hello"), (0x80, b"world"), (1, close)]),
        ),
        ("alert", script(1, 200, &[(0, b"x"), (1, &[2, 40])])),
        (
            "key-update",
            script(1, 1, &[(2, &[24, 0, 0, 1, 0]), (0, b"after")]),
        ),
        ("truncated", script(1, 255, &[(0, &big)])),
        ("raw", vec![0, 7, 0x17, 3, 3, 0x40, 0, 1, 2, 3, 4, 5]),
    ];
    for (name, v) in seeds {
        std::fs::write(d.join(name), v).unwrap();
    }
}
