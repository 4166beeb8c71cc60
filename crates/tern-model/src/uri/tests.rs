use super::*;

fn ok(s: &str) -> ConnectUri {
    parse(s).unwrap_or_else(|e| panic!("{s:?} refused: {e}"))
}

/// Parses `s`, expecting an error whose one-line message quotes the input
/// (when printable) and contains `needle`.
fn refused(s: &str, needle: &str) -> UriError {
    let err = match parse(s) {
        Ok(u) => panic!("{s:?} accepted as {u:?}"),
        Err(e) => e,
    };
    let message = err.to_string();
    assert!(message.contains(needle), "{message:?} lacks {needle:?}");
    assert!(!message.contains('\n'), "multi-line message: {message:?}");
    if !s.trim().is_empty() && !s.chars().any(char::is_control) {
        assert!(
            message.contains(&format!("'{s}'")),
            "{message:?} does not quote {s:?}"
        );
    }
    err
}

fn assert_round_trip(s: &str) {
    let uri = ok(s);
    let printed = uri.to_string();
    assert_eq!(ok(&printed), uri, "{s:?} printed as {printed:?}");
    assert_eq!(
        ok(&printed).to_string(),
        printed,
        "printing is not stable for {s:?}"
    );
}

#[test]
fn local_default() {
    let uri = ok(DEFAULT_URI);
    assert_eq!(uri, ConnectUri::default());
    assert_eq!(uri.driver, "tern");
    assert_eq!(uri.transport, Transport::Unix);
    assert_eq!((uri.user, uri.host, uri.port), (None, None, None));
    assert_eq!(uri.path, "/system");
    assert!(uri.params.is_empty());
    assert_eq!(ConnectUri::default().to_string(), DEFAULT_URI);
    assert_eq!(ok(DEFAULT_URI).port_or_default(), 0);
    assert!(ok(DEFAULT_URI).is_local());
}

#[test]
fn unix_with_socket() {
    let uri = ok("tern+unix:///system?socket=/tmp/x.sock");
    assert_eq!(uri.transport, Transport::Unix);
    assert_eq!(uri.param("socket"), Some("/tmp/x.sock"));
    assert_eq!(uri.socket_path(), Some(PathBuf::from("/tmp/x.sock")));
    assert_eq!(uri.to_string(), "tern:///system?socket=/tmp/x.sock");

    let encoded = ok("tern:///system?socket=%2Frun%2Fx.sock&mode=a%20b&flag");
    assert_eq!(encoded.socket_path(), Some(PathBuf::from("/run/x.sock")));
    assert_eq!(encoded.param("mode"), Some("a b"));
    assert_eq!(encoded.param("flag"), Some(""));
    assert_eq!(encoded.param("missing"), None);
    assert_eq!(
        ok("tern:///system?a=1&&a=2").param("a"),
        Some("2"),
        "last one wins"
    );
    assert_eq!(ok("tern:///system").socket_path(), None);
}

#[test]
fn tcp_and_tls() {
    let tcp = ok("tern+tcp://host/system");
    assert_eq!(tcp.transport, Transport::Tcp);
    assert_eq!(tcp.host.as_deref(), Some("host"));
    assert_eq!(tcp.port, None);
    assert_eq!(tcp.port_or_default(), DEFAULT_TCP_PORT);

    let with_port = ok("tern+tcp://10.0.0.1:1234/system");
    assert_eq!(with_port.host.as_deref(), Some("10.0.0.1"));
    assert_eq!(with_port.port, Some(1234));
    assert_eq!(with_port.port_or_default(), 1234);

    let tls = ok("tern+tls://h/system");
    assert_eq!(tls.transport, Transport::Tls);
    assert_eq!(tls.port_or_default(), DEFAULT_TLS_PORT);
    assert_eq!(tls.to_string(), "tern+tls://h/system");

    // A host without +transport means TLS, as in libvirt.
    let implicit = ok("tern://h/system");
    assert_eq!(implicit.transport, Transport::Tls);
    assert_eq!(implicit, tls);
    assert!(!implicit.is_local());
}

#[test]
fn ssh_and_qemu_alias() {
    let ssh = ok("tern+ssh://user@h:2222/system");
    assert_eq!(ssh.transport, Transport::Ssh);
    assert_eq!(ssh.user.as_deref(), Some("user"));
    assert_eq!(ssh.host.as_deref(), Some("h"));
    assert_eq!(ssh.port_or_default(), 2222);

    let qemu = ok("qemu+ssh://u@h/system");
    assert_eq!(qemu.driver, "qemu");
    assert_eq!(qemu.transport, Transport::Ssh);
    assert_eq!(qemu.user.as_deref(), Some("u"));
    assert_eq!(qemu.port_or_default(), DEFAULT_SSH_PORT);
    assert_eq!(qemu.to_string(), "qemu+ssh://u@h/system");

    assert_eq!(ok("QEMU:///system").driver, "qemu");
    assert_eq!(ok("tern+SSH://h/system").transport, Transport::Ssh);
    assert_eq!(ok("tern+ssh://a%40b@h/system").user.as_deref(), Some("a@b"));
}

#[test]
fn ipv6_hosts() {
    let uri = ok("tern+tcp://[::1]:5/system");
    assert_eq!(uri.host.as_deref(), Some("::1"));
    assert_eq!(uri.port, Some(5));
    assert_eq!(uri.to_string(), "tern+tcp://[::1]:5/system");
    assert_eq!(
        ok("tern+ssh://root@[fe80::1]/system").host.as_deref(),
        Some("fe80::1")
    );
}

#[test]
fn display_round_trips() {
    for s in [
        "tern:///system",
        "tern+unix:///system?socket=/tmp/x.sock",
        "tern:///system?socket=%2Frun%2Fx.sock",
        "tern+tcp://host/system",
        "tern+tcp://10.0.0.1:1234/system",
        "tern+tls://h/system",
        "tern://h/system",
        "tern+ssh://user@h:2222/system",
        "qemu+ssh://u@h/system",
        "tern+tcp://[::1]:5/system",
        "tern+ssh://a%40b%3Ac@h/system?k%26=v%3D1&x=%E2%9C%93&empty=&plus=a+b",
        "tern:///system?a=1&a=2",
    ] {
        assert_round_trip(s);
    }
    let odd = ConnectUri {
        params: vec![("k&=".into(), "v #?%".into())],
        ..ConnectUri::default()
    };
    assert_eq!(ok(&odd.to_string()), odd);
}

#[test]
fn refuses_malformed_input() {
    assert_eq!(refused("", "empty"), UriError::Empty);
    refused("   ", "empty");
    refused("tern", "no \"://\"");
    refused("tern:/system", "no \"://\"");
    refused("://h/system", "no driver");
    refused("tern+tcp://h:99999/system", "invalid port '99999'");
    refused("tern+tcp://h:abc/system", "invalid port 'abc'");
    refused("tern+tcp://h:/system", "invalid port ''");
    refused("tern+tcp://h:0/system", "invalid port '0'");
    refused("tern+tcp://h:+5/system", "invalid port '+5'");
    refused("tern+tcp://[::1/system", "closing ']'");
    refused("tern+tcp://[nothost]/system", "IPv6 address");
    refused("tern+tcp://[::1]x/system", "only ':port'");
    refused("tern+tcp://::1/system", "must be in brackets");
    refused("tern+tcp://ho st/system", "not allowed in a host name");
    refused("tern+ssh://@h/system", "user name before '@' is empty");
    refused("tern:///system?socket=%zz", "%-escape");
    refused("tern:///system?socket=%2", "%-escape");
    refused("tern:///system?socket=%FF", "not UTF-8");
    refused("tern+tcp://h/system#top", "fragments");
    refused("tern://user@/system", "needs a host");
    let err = refused("tern:///sys\ntem", "only serves /system");
    assert!(err.to_string().contains("sys\\ntem"));
}

#[test]
fn refuses_unknown_driver_and_transport() {
    let err = refused("xen:///system", "driver 'xen'");
    assert!(err.to_string().contains("use tern://"));
    refused("lxc+ssh://h/system", "driver 'lxc'");
    refused(
        "tern+foo://h/system",
        "unknown transport 'foo'; use one of unix, tcp, tls, ssh",
    );
    refused("tern+://h/system", "unknown transport ''");
}

#[test]
fn refuses_bad_paths_and_host_transport_mismatch() {
    refused(
        "tern:///session",
        "path '/session', but Tern only serves /system",
    );
    refused("tern+tcp://h", "path ''");
    refused("tern+tcp://h?x=1", "path ''");
    refused("tern:///system/", "path '/system/'");
    refused(
        "tern+unix://h/system",
        "names a host but uses the unix transport",
    );
    assert_eq!(
        refused("tern+tcp:///system", "names no host"),
        UriError::MissingHost {
            uri: "tern+tcp:///system".into(),
            transport: Transport::Tcp
        }
    );
    refused("tern+tls:///system", "tern+tls://host/system");
    refused("qemu+ssh://cliu8@/system", "tern+ssh://host/system");
}

#[test]
fn from_str_matches_parse() {
    let uri: ConnectUri = "tern+ssh://u@h/system".parse().expect("parses");
    assert_eq!(Ok(uri), ConnectUri::parse("tern+ssh://u@h/system"));
}
