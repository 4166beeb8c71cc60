//! The controller's REST resources against a real cluster: hosts and
//! servers as agents report them, a live migration started with `POST
//! /v1/servers/{id}/migrate` and followed to its end on the job's SSE
//! stream, and the OpenAPI document served beside them.

use std::time::Duration;
use tern_testkit::pair::boot_guest;
use tern_testkit::scrape::https_request;
use tern_testkit::TestController;

const LONG: Duration = Duration::from_secs(120);

/// A request to the controller's API as the identity `who` (`admin`:
/// read-write, `viewer`: read-only), over its mutual TLS.
fn req(
    c: &TestController,
    who: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> (u16, String) {
    https_request(
        &c.pki.ca(),
        &c.pki.dir(who),
        method,
        &format!("{}{path}", c.url),
        body,
    )
}

fn json(c: &TestController, path: &str) -> serde_json::Value {
    let (status, body) = req(c, "admin", "GET", path, None);
    assert_eq!(status, 200, "GET {path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
}

#[test]
fn rest_resources_migrate_a_server_and_stream_its_job() {
    let c = TestController::file(&[]);
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
    let hosts = json(&c, "/v1/hosts");
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
    let s = json(&c, "/v1/servers/rs1");
    assert_eq!(
        (s["host"].as_str(), s["state"].as_str()),
        (Some("a"), Some("running")),
        "{s}"
    );
    let (status, body) = req(&c, "admin", "GET", "/v1/servers/nosuch", None);
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("nosuch"), "{body}");

    // The scheduler's verdicts: b qualifies (a is where it runs).
    let (status, body) = req(&c, "viewer", "POST", "/v1/servers/rs1/forecast", Some("{}"));
    assert_eq!(status, 200, "{body}");
    let rows: serde_json::Value = serde_json::from_str(&body).expect("forecast JSON");
    assert!(
        rows.as_array()
            .unwrap()
            .iter()
            .any(|r| r["host"] == "b" && r["ok"] == true),
        "{rows}"
    );
    assert!(json(&c, "/v1/status")["id"].is_string());

    // Bad options are refused and change nothing.
    // A read-only identity may look but not migrate.
    let (status, body) = req(&c, "viewer", "POST", "/v1/servers/rs1/migrate", Some("{}"));
    assert_eq!(status, 403, "{body}");
    let (status, _) = req(&c, "viewer", "GET", "/v1/hosts", None);
    assert_eq!(status, 200);
    let bogus = Some(r#"{"options":{"bogus":1}}"#);
    let (status, body) = req(&c, "admin", "POST", "/v1/servers/rs1/migrate", bogus);
    assert!((400..500).contains(&status), "{status} {body}");
    assert_eq!(json(&c, "/v1/jobs").as_array().map(Vec::len), Some(0));

    let (status, body) = req(&c, "admin", "POST", "/v1/servers/rs1/migrate", Some("{}"));
    assert_eq!(status, 202, "{body}");
    let job: serde_json::Value = serde_json::from_str(&body).expect("job JSON");
    assert_eq!(
        job["kind"], "live-migrate",
        "running: live by default: {job}"
    );
    let id = job["id"].as_str().expect("job id").to_string();
    // The SSE stream: one `job` event per change, ending with the last state.
    let (status, stream) = req(&c, "admin", "GET", &format!("/v1/jobs/{id}/events"), None);
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
    let s = json(&c, "/v1/servers/rs1");
    assert_eq!(
        (s["host"].as_str(), s["state"].as_str()),
        (Some("b"), Some("running")),
        "{s}"
    );
    assert_eq!(json(&c, &format!("/v1/jobs/{id}"))["state"], "succeeded");

    let doc = json(&c, "/v1/openapi.json");
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"), "{doc}");
    assert!(
        doc["paths"]["/v1/jobs/{id}/events"]["get"].is_object(),
        "{doc}"
    );
    // `tern --controller` reads the same resources.
    assert!(c.ok(&["job-list"]).contains(&id));
}
