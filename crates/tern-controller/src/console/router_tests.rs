//! The console's routes in process, on a real (file) store: login,
//! roles on the REST resources, the cross-site header, and errors as the
//! API's JSON.

use super::auth::{hash_password, Role, User};
use super::{router, Console, CSRF_HEADER};
use crate::{Controller, ControllerConfig};
use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::Router;
use tower::ServiceExt;

async fn console(dir: &std::path::Path) -> Router {
    console_and_controller(dir).await.0
}

async fn console_and_controller(dir: &std::path::Path) -> (Router, std::sync::Arc<Controller>) {
    let cfg = ControllerConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        &format!("file:{}", dir.display()),
    );
    let ctl = Controller::open(cfg).await.unwrap();
    let users = vec![
        User {
            name: "admin".into(),
            role: Role::ReadWrite,
            hash: hash_password("pw-rw").unwrap(),
        },
        User {
            name: "viewer".into(),
            role: Role::ReadOnly,
            hash: hash_password("pw-ro").unwrap(),
        },
    ];
    (router(Console::new(ctl.clone(), users)), ctl)
}

fn post(path: &str, cookie: Option<&str>, body: &str) -> Request<Body> {
    with("POST", path, cookie, body)
}

/// `method` on `path` as the console's page sends it (with its header).
fn with(method: &str, path: &str, cookie: Option<&str>, body: &str) -> Request<Body> {
    let mut r = Request::builder()
        .method(method)
        .uri(path)
        .header(header::CONTENT_TYPE, "application/json")
        .header(CSRF_HEADER, "1");
    if let Some(c) = cookie {
        r = r.header(header::COOKIE, c);
    }
    r.body(Body::from(body.to_string())).unwrap()
}

fn get(path: &str, cookie: Option<&str>) -> Request<Body> {
    let mut r = Request::get(path);
    if let Some(c) = cookie {
        r = r.header(header::COOKIE, c);
    }
    r.body(Body::empty()).unwrap()
}

async fn send(app: &Router, r: Request<Body>) -> (StatusCode, Option<String>, serde_json::Value) {
    let resp = app.clone().oneshot(r).await.unwrap();
    let status = resp.status();
    let cookie = resp
        .headers()
        .get(header::SET_COOKIE)
        .map(|v| v.to_str().unwrap().to_string());
    let b = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    let v = serde_json::from_slice(&b).unwrap_or(serde_json::Value::Null);
    (status, cookie, v)
}

async fn login(app: &Router, user: &str, pw: &str) -> String {
    let body = format!(r#"{{"user":"{user}","password":"{pw}"}}"#);
    let (s, cookie, _) = send(app, post("/api/login", None, &body)).await;
    assert_eq!(s, StatusCode::OK);
    let c = cookie.expect("a session cookie");
    assert!(
        c.contains("HttpOnly") && c.contains("SameSite=Strict"),
        "{c}"
    );
    c.split(';').next().unwrap().to_string()
}

#[tokio::test]
async fn roles_decide_what_a_session_may_send() {
    let d = tempfile::tempdir().unwrap();
    let app = console(d.path()).await;
    let list = "/v1/servers";
    let migrate = "/v1/servers/nosuch/migrate";
    let live = r#"{"live":true}"#;

    // Nobody logged in: refused.
    let (s, _, v) = send(&app, get(list, None)).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert!(v["message"].as_str().unwrap().contains("log in"), "{v}");
    // A wrong password changes nothing.
    let (s, cookie, _) = send(
        &app,
        post("/api/login", None, r#"{"user":"admin","password":"no"}"#),
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert!(cookie.is_none());

    // Read-only: reads, but may not act.
    let ro = login(&app, "viewer", "pw-ro").await;
    let (s, _, v) = send(&app, get(list, Some(&ro))).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v, serde_json::json!([]));
    let (s, _, v) = send(&app, post(migrate, Some(&ro), live)).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    assert!(v["message"].as_str().unwrap().contains("read-only"), "{v}");

    // Read-write: the API's own answer (and its one-line message).
    let rw = login(&app, "admin", "pw-rw").await;
    let (s, _, v) = send(&app, post(migrate, Some(&rw), live)).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    assert_eq!(v["message"], "no server 'nosuch'; see 'tern server-list'");
    // A malformed body is refused, not replaced by the defaults.
    let (s, _, v) = send(&app, post(migrate, Some(&rw), r#"{"bogus":1}"#)).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    // The agents' RPC endpoint is not the console's: nothing answers there.
    let hb = r#"{"op":"host-shutdown","host":"a"}"#;
    let (s, _, _) = send(&app, post("/api/call", Some(&rw), hb)).await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // A request that acts without the console's header (a cross-site
    // form) is refused, whatever its method.
    for method in ["POST", "DELETE", "PATCH"] {
        let r = Request::builder()
            .method(method)
            .uri("/v1/hosts/h1/maintenance")
            .header(header::COOKIE, &rw)
            .body(Body::from(live))
            .unwrap();
        let (s, _, v) = send(&app, r).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{method}: {v}");
        assert!(v["message"].as_str().unwrap().contains(CSRF_HEADER), "{v}");
    }

    // Logged out: the cookie no longer works.
    let (s, _, _) = send(&app, post("/api/logout", Some(&rw), "{}")).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _, _) = send(&app, get(list, Some(&rw))).await;
    assert_eq!(s, StatusCode::FORBIDDEN);

    // The page itself needs no login, and loads nothing from elsewhere.
    let r = Request::get("/").body(Body::empty()).unwrap();
    let resp = app.clone().oneshot(r).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let csp = resp.headers()[header::CONTENT_SECURITY_POLICY]
        .to_str()
        .unwrap()
        .to_string();
    assert!(csp.starts_with("default-src 'self'"), "{csp}");
}

#[tokio::test]
async fn maintenance_is_entered_and_left_from_the_console() {
    use tern_api::cluster::{HostRecord, HostReport};
    let d = tempfile::tempdir().unwrap();
    let (app, ctl) = console_and_controller(d.path()).await;
    let rec = HostRecord::online(
        HostReport {
            name: "h1".into(),
            api_uri: "tern+tcp://127.0.0.1:9".into(),
            ..Default::default()
        },
        0,
    );
    ctl.inv
        .create(&format!("{}h1", crate::inventory::HOSTS), &rec)
        .await
        .unwrap();
    let rw = login(&app, "admin", "pw-rw").await;
    let ro = login(&app, "viewer", "pw-ro").await;
    let path = "/v1/hosts/h1/maintenance";
    let (s, _, _) = send(&app, post(path, Some(&ro), "")).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _, v) = send(&app, post(path, Some(&rw), "")).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    assert!(ctl.inv.host("h1").await.unwrap().maintenance);
    let (s, _, v) = send(&app, with("DELETE", path, Some(&rw), "")).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["maintenance"], false);
    assert!(!ctl.inv.host("h1").await.unwrap().maintenance);
    let nosuch = "/v1/hosts/nosuch/maintenance";
    let (s, _, v) = send(&app, with("DELETE", nosuch, Some(&rw), "")).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    // The evacuation policy: the shutdown one needs the host-down one.
    let policy = "/v1/hosts/h1/auto-migrate";
    let (s, _, v) = send(
        &app,
        with("PATCH", policy, Some(&rw), r#"{"on_host_shutdown":true}"#),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let both = r#"{"on_host_down":true,"on_host_shutdown":true}"#;
    let (s, _, v) = send(&app, with("PATCH", policy, Some(&ro), both)).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    let (s, _, v) = send(&app, with("PATCH", policy, Some(&rw), both)).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        (
            &v["auto_migrate_on_host_down"],
            &v["auto_migrate_on_host_shutdown"]
        ),
        (&serde_json::json!(true), &serde_json::json!(true))
    );
    // The scheduler's view of each host comes with its record.
    let r = Request::get("/api/hosts")
        .header(header::COOKIE, &ro)
        .body(Body::empty())
        .unwrap();
    let (s, _, v) = send(&app, r).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v[0]["view"]["name"], "h1");
    assert_eq!(v[0]["view"]["schedulable"], true);
}

#[tokio::test]
async fn a_finished_jobs_history_is_read_back_from_the_store() {
    use super::progress::{History, Sample, HISTORY};
    let d = tempfile::tempdir().unwrap();
    let (app, ctl) = console_and_controller(d.path()).await;
    let h = History {
        samples: vec![Sample {
            at_ms: 1,
            sent: 10,
            remaining: 90,
            rate: 5,
        }],
        finished: true,
        ..Default::default()
    };
    ctl.inv.put(&format!("{HISTORY}job1"), &h).await.unwrap();
    let ro = login(&app, "viewer", "pw-ro").await;
    let get = |path: &str| {
        Request::get(path)
            .header(header::COOKIE, &ro)
            .body(Body::empty())
            .unwrap()
    };
    let (s, _, v) = send(&app, get("/api/jobs/job1/history")).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(serde_json::from_value::<History>(v).unwrap(), h);
    // A job never seen has an empty history, not an error.
    let (s, _, v) = send(&app, get("/api/jobs/other/history")).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["finished"], false);
}
