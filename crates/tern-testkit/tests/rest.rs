//! The controller's REST resources against a real cluster: hosts and
//! servers as agents report them, a live migration started with `POST
//! /v1/servers/{id}/migrate` and followed to its end on the job's SSE
//! stream, and the OpenAPI document served beside them.

use std::net::SocketAddr;
use std::time::Duration;
use tern_testkit::pair::boot_guest;
use tern_testkit::scrape::{http_get, http_request};
use tern_testkit::TestController;

const LONG: Duration = Duration::from_secs(120);

fn json(addr: SocketAddr, path: &str) -> serde_json::Value {
    let (status, body) = http_get(addr, path);
    assert_eq!(status, 200, "GET {path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
}

#[test]
fn rest_resources_migrate_a_server_and_stream_its_job() {
    let c = TestController::file(&[]);
    let addr: SocketAddr = c
        .url
        .trim_start_matches("http://")
        .parse()
        .expect("controller address");
    let a = TestController::host(&[&c], "a", &[]);
    let b = TestController::host(&[&c], "b", &[]);
    let pool = tempfile::Builder::new()
        .prefix("tern-rshared-")
        .tempdir()
        .unwrap();
    for h in [&a, &b] {
        h.add_pool("shared", pool.path(), true);
    }
    boot_guest(&a, "rs1", "tern.mem=32 tern.dirty=0");
    c.wait_json(&["server-list"], LONG, "rs1 running on a", |v| {
        v.as_array().is_some_and(|s| {
            s.iter()
                .any(|s| s["host"] == "a" && s["state"] == "running")
        })
    });
    let hosts = json(addr, "/v1/hosts");
    let names: Vec<_> = hosts
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["report"]["name"].clone())
        .collect();
    assert!(
        names.contains(&"a".into()) && names.contains(&"b".into()),
        "{hosts}"
    );
    let s = json(addr, "/v1/servers/rs1");
    assert_eq!(
        (s["host"].as_str(), s["state"].as_str()),
        (Some("a"), Some("running")),
        "{s}"
    );
    let (status, body) = http_get(addr, "/v1/servers/nosuch");
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("nosuch"), "{body}");

    // Bad options are refused and change nothing.
    let (status, body) = http_request(
        addr,
        "POST",
        "/v1/servers/rs1/migrate",
        Some(r#"{"options":{"bogus":1}}"#),
    );
    assert!((400..500).contains(&status), "{status} {body}");
    assert_eq!(json(addr, "/v1/jobs").as_array().map(Vec::len), Some(0));

    let (status, body) = http_request(addr, "POST", "/v1/servers/rs1/migrate", Some("{}"));
    assert_eq!(status, 202, "{body}");
    let job: serde_json::Value = serde_json::from_str(&body).expect("job JSON");
    assert_eq!(
        job["kind"], "live-migrate",
        "running: live by default: {job}"
    );
    let id = job["id"].as_str().expect("job id").to_string();
    // The SSE stream: one `job` event per change, ending with the last state.
    let (status, stream) = http_get(addr, &format!("/v1/jobs/{id}/events"));
    assert_eq!(status, 200, "{stream}");
    let states: Vec<String> = stream
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(|d| {
            serde_json::from_str::<serde_json::Value>(d).expect("event JSON")["state"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert!(stream.contains("event: job"), "{stream}");
    assert_eq!(
        states.last().map(String::as_str),
        Some("succeeded"),
        "{stream}"
    );
    let s = json(addr, "/v1/servers/rs1");
    assert_eq!(
        (s["host"].as_str(), s["state"].as_str()),
        (Some("b"), Some("running")),
        "{s}"
    );
    assert_eq!(json(addr, &format!("/v1/jobs/{id}"))["state"], "succeeded");

    let doc = json(addr, "/v1/openapi.json");
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"), "{doc}");
    assert!(
        doc["paths"]["/v1/jobs/{id}/events"]["get"].is_object(),
        "{doc}"
    );
    // The RPC endpoint still answers beside the resources.
    assert!(c.ok(&["job-list"]).contains(&id));
}
