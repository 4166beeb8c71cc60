//! The web console in a real browser (headless Chromium over WebDriver)
//! against a real controller, real agents and a real guest: log in, see
//! the scheduler's verdicts in the migrate dialog, migrate while watching
//! the progress, cancel a capped migration, and a read-only login that
//! cannot act.
//!
//! Screenshots of each page (1280x800) go to a temporary directory, or to
//! docs/console/ with `TERN_UPDATE_SCREENSHOTS=1`:
//! `TERN_UPDATE_SCREENSHOTS=1 cargo test -p tern-testkit --test console`.

use fantoccini::elements::Element;
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tern_testkit::{
    build_or_reuse, console_passwd, free_port, BuildOptions, ChromeDriver, GuestSpec, SerialLog,
    TernHost, TestController, TestDisk,
};

const LONG: Duration = Duration::from_secs(180);

/// A directory every host sees as the pool "shared".
fn shared_pool(hosts: &[&TernHost]) -> tern_testkit::cluster::SharedDir {
    tern_testkit::cluster::shared_pool(hosts, "shared")
}

/// Boots `name` on `h` with its disk in the shared pool and 64 MiB of
/// touched memory (a migration has that much to send).
fn boot(h: &TernHost, name: &str) {
    let img = build_or_reuse(&BuildOptions::default()).unwrap();
    let mut spec = GuestSpec::new(name, &img);
    spec.memory_mib = 256;
    let vol = format!("{name}.raw");
    h.ok(&["vol-create-as", "shared", &vol, "8M"]);
    let path = h.ok(&["vol-path", &vol, "--pool", "shared"]);
    spec.workload =
        "tern.mem=64 tern.dirty=0 tern.disk=/dev/vda tern.disk_mb=2 tern.verify_rate=8".into();
    spec.disks.push(TestDisk {
        path: path.trim().into(),
        format: "raw".into(),
        target: "vda".into(),
        cache: "none".into(),
    });
    h.define_guest(&spec);
    h.ok(&["start", name]);
    h.wait_console(name, LONG, "TERN-READY", |t| SerialLog::parse(t).ready());
}

/// Defines `name` on `h` without starting it (a stopped server).
fn define_stopped(h: &TernHost, name: &str) {
    let img = build_or_reuse(&BuildOptions::default()).unwrap();
    let mut spec = GuestSpec::new(name, &img);
    spec.memory_mib = 128;
    h.define_guest(&spec);
}

/// Sizes the window so that the page itself is `w`x`h` (the window's
/// frame takes some of its size, and a window has a minimum width).
async fn fit_viewport(c: &Client, w: u32, h: u32) {
    let (mut ww, mut wh) = (w, h);
    for _ in 0..3 {
        c.set_window_size(ww, wh).await.unwrap();
        let r = c
            .execute("return [window.innerWidth, window.innerHeight];", vec![])
            .await
            .unwrap();
        let iw = r[0].as_u64().unwrap_or(0) as u32;
        let ih = r[1].as_u64().unwrap_or(0) as u32;
        if (iw, ih) == (w, h) {
            return;
        }
        ww = (ww + w).saturating_sub(iw);
        wh = (wh + h).saturating_sub(ih);
    }
}

/// Waits for `n` more heartbeats of `name` on `h` than it printed so far.
fn more_heartbeats(h: &TernHost, name: &str, n: usize) {
    let now = SerialLog::parse(&h.ok(&["console", name])).heartbeats.len();
    h.wait_console(name, LONG, "new heartbeats", |t| {
        SerialLog::parse(t).heartbeats.len() >= now + n
    });
}

fn shots_dir(tmp: &Path) -> PathBuf {
    if std::env::var_os("TERN_UPDATE_SCREENSHOTS").is_some() {
        let d = tern_testkit::workspace_root().join("docs/console");
        std::fs::create_dir_all(&d).unwrap();
        d
    } else {
        tmp.to_path_buf()
    }
}

async fn shot(c: &Client, dir: &Path, name: &str) {
    let png = c.screenshot().await.expect("screenshot");
    std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
}

async fn wait(c: &Client, css: &str) -> Element {
    c.wait()
        .at_most(LONG)
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("no '{css}' on the page: {e}"))
}

/// Clicks `css`, again if a refresh replaced the element meanwhile.
async fn click(c: &Client, css: &str) {
    let deadline = Instant::now() + LONG;
    loop {
        let r = match wait(c, css).await.click().await {
            Ok(()) => return,
            Err(e) => e,
        };
        assert!(Instant::now() < deadline, "cannot click '{css}': {r}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn text(c: &Client, css: &str) -> String {
    // A refresh may replace the element between finding and reading it.
    wait(c, css).await.text().await.unwrap_or_default()
}

async fn fill(c: &Client, css: &str, value: &str) {
    let e = wait(c, css).await;
    e.clear().await.unwrap();
    e.send_keys(value).await.unwrap();
}

async fn log_in(c: &Client, base: &str, user: &str, pw: &str) {
    c.goto(&format!("{base}/#/servers")).await.unwrap();
    fill(c, "#login-user", user).await;
    fill(c, "#login-password", pw).await;
    click(c, "#login-submit").await;
    wait(c, "#who:not([hidden])").await;
}

/// Follows a job's progress page to its end; the distinct "Sent" figures
/// seen, and the job's final state. Takes a screenshot once the page
/// has shown three updates.
async fn follow_progress(c: &Client, dir: Option<&Path>) -> (Vec<String>, String) {
    let mut seen: Vec<String> = Vec::new();
    let deadline = Instant::now() + LONG;
    loop {
        let sent = text(c, "#f-sent").await;
        if sent != "–" && seen.last() != Some(&sent) {
            seen.push(sent);
            if seen.len() == 3 {
                if let Some(d) = dir {
                    shot(c, d, "progress").await;
                }
            }
        }
        let ended = wait(c, "#progress").await.attr("data-ended").await.unwrap();
        if let Some(state) = ended {
            return (seen, state);
        }
        assert!(Instant::now() < deadline, "the job did not end: {seen:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn open_migrate(c: &Client, base: &str, server: &str) {
    c.goto(&format!("{base}/#/servers")).await.unwrap();
    wait(c, &format!("#menu-{server} > summary")).await;
    if c.find(Locator::Css(&format!("#menu-{server}[open]")))
        .await
        .is_err()
    {
        click(c, &format!("#menu-{server} > summary")).await;
    }
    click(c, &format!("#migrate-{server}")).await;
    wait(c, "#verdicts tr[data-host]").await;
}

/// The cluster the browser drives: a controller with the console, hosts
/// a and b alike, x with another CPU model, vm running on a and archive
/// stopped on b.
struct Lab {
    ctl: TestController,
    a: TernHost,
    b: TernHost,
    x: TernHost,
    base: String,
    dir: PathBuf,
    _pool: tern_testkit::cluster::SharedDir,
    _tmp: tempfile::TempDir,
}

fn lab() -> Lab {
    let tmp = tempfile::Builder::new()
        .prefix("tern-console-")
        .tempdir()
        .unwrap();
    let users = tmp.path().join("users");
    console_passwd(&users, "admin", "rw", "admin-pw");
    console_passwd(&users, "viewer", "ro", "viewer-pw");
    let listen = format!("127.0.0.1:{}", free_port());
    let ctl = TestController::file(&[
        "--console-listen",
        &listen,
        "--console-users",
        users.to_str().unwrap(),
    ]);
    let a = TestController::host(&[&ctl], "a", &["--labels", "rack=r1"]);
    let b = TestController::host(&[&ctl], "b", &["--labels", "rack=r2"]);
    let x = TestController::host(&[&ctl], "x", &["--fact", "cpu_model=Other CPU"]);
    let pool = shared_pool(&[&a, &b, &x]);
    boot(&a, "vm");
    define_stopped(&b, "archive");
    ctl.wait_json(&["server-show", "vm"], LONG, "vm running on a", |v| {
        v["host"] == "a" && v["state"] == "running"
    });
    Lab {
        dir: shots_dir(tmp.path()),
        base: format!("http://{listen}"),
        ctl,
        a,
        b,
        x,
        _pool: pool,
        _tmp: tmp,
    }
}

async fn browser(driver: &ChromeDriver, extra_arg: Option<&str>) -> Client {
    let mut caps = driver.capabilities(1280, 800);
    if let Some(arg) = extra_arg {
        caps["goog:chromeOptions"]["args"]
            .as_array_mut()
            .unwrap()
            .push(arg.into());
    }
    let c = ClientBuilder::new(HttpConnector::new())
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .expect("WebDriver session");
    fit_viewport(&c, 1280, 800).await;
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_migrates_with_live_progress_cancels_and_keeps_read_only_users_out() {
    let l = lab();
    let driver = ChromeDriver::start();
    let c = browser(&driver, None).await;
    hosts_and_servers(&l, &c).await;
    migrate_dialog(&l, &c).await;
    let first_job = migrate_watching_progress(&l, &c).await;
    cancel_capped_migration(&l, &c).await;
    jobs_keep_final_figures(&l, &c, &first_job).await;
    cold_migrate_and_start(&l, &c).await;
    phone_width(&l, &c).await;
    read_only(&l, &c).await;
    c.close().await.unwrap();
    dark_mode(&l, &driver, &first_job).await;
}

/// Logs in; the hosts page (maintenance entered and left) and the
/// servers page with a row menu open.
async fn hosts_and_servers(l: &Lab, c: &Client) {
    c.goto(&format!("{}/", l.base)).await.unwrap();
    wait(c, "#login:not([hidden])").await;
    shot(c, &l.dir, "login").await;
    assert!(!wait(c, "#nav").await.is_displayed().await.unwrap());
    log_in(c, &l.base, "admin", "admin-pw").await;
    c.goto(&format!("{}/#/hosts", l.base)).await.unwrap();
    for h in ["a", "b", "x"] {
        wait(c, &format!("#hosts-table tr[data-host='{h}'] .s-online")).await;
    }
    // Maintenance on x (it runs nothing), shown, then left again.
    click(c, "#maint-x").await;
    c.accept_alert().await.unwrap();
    wait(c, "#hosts-table tr[data-host='x'] .s-maintenance").await;
    wait(c, "#leave-x").await;
    shot(c, &l.dir, "hosts").await;
    click(c, "#leave-x").await;
    wait(c, "#hosts-table tr[data-host='x'] .s-online").await;
    wait(c, "#maint-x").await;
    c.goto(&format!("{}/#/servers", l.base)).await.unwrap();
    wait(
        c,
        "#servers-body tr[data-server='vm'][data-state='running']",
    )
    .await;
    wait(
        c,
        "#servers-body tr[data-server='archive'][data-state='ready']",
    )
    .await;
    click(c, "#menu-vm > summary").await;
    wait(c, "#shutdown-vm").await;
    shot(c, &l.dir, "servers").await;
}

/// The migrate dialog: b qualifies, x is rejected for its CPU, a time
/// forecast towards b.
async fn migrate_dialog(l: &Lab, c: &Client) {
    open_migrate(c, &l.base, "vm").await;
    wait(c, "#verdicts tr[data-host='b'][data-ok='1']").await;
    let why = text(c, "#verdicts tr[data-host='x'][data-ok='0'] .reason").await;
    assert!(why.contains("--skip-cpu-check"), "x's reason: {why}");
    let why = text(c, "#verdicts tr[data-host='a'] .reason").await;
    assert!(why.contains("already on this host"), "a's reason: {why}");
    // A live migration has no auto-start (that is for cold ones).
    assert!(!wait(c, "#opt-autostart")
        .await
        .is_displayed()
        .await
        .unwrap());
    click(c, "#dest-pick").await;
    click(c, "#dest-b").await;
    fill(c, "#opt-bw", "16").await;
    click(c, "#forecast-run").await;
    let deadline = Instant::now() + LONG;
    let forecast = loop {
        let t = text(c, "#forecast-text").await;
        if t.starts_with("To b:") {
            break t;
        }
        assert!(
            !t.contains("failed") && Instant::now() < deadline,
            "forecast: {t}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(forecast.contains("downtime"), "{forecast}");
    // A range, and each input with its source.
    assert!(forecast.contains("median"), "{forecast}");
    let inputs = text(c, "#forecast-inputs").await;
    assert!(
        inputs.contains("Send rate") && inputs.contains("--bandwidth") && inputs.contains("Setup"),
        "{inputs}"
    );
    shot(c, &l.dir, "migrate").await;
}

/// Migrates, watching the progress page; the job's fragment.
async fn migrate_watching_progress(l: &Lab, c: &Client) -> String {
    // Migrate, watching the progress page.
    click(c, "#migrate-ok").await;
    wait(c, "#progress").await;
    let first_job = c
        .current_url()
        .await
        .unwrap()
        .fragment()
        .unwrap_or("")
        .to_string();
    let (seen, end) = follow_progress(c, Some(&l.dir)).await;
    assert_eq!(end, "succeeded", "figures seen: {seen:?}");
    assert!(
        seen.len() >= 3,
        "progress updated {} times: {seen:?}",
        seen.len()
    );
    let total = text(c, "#f-total").await;
    assert_ne!(total, "–", "a finished job shows its total time");
    l.ctl
        .wait_json(&["server-show", "vm"], LONG, "vm running on b", |v| {
            v["host"] == "b" && v["state"] == "running"
        });
    more_heartbeats(&l.b, "vm", 3);

    first_job
}

/// A capped migration cancelled from the page: the guest stays on b.
async fn cancel_capped_migration(l: &Lab, c: &Client) {
    // A capped migration cancelled from the page: the guest stays on b.
    open_migrate(c, &l.base, "vm").await;
    wait(c, "#verdicts tr[data-host='a'][data-ok='1']").await;
    fill(c, "#opt-bw", "1").await;
    click(c, "#migrate-ok").await;
    wait(c, "#progress").await;
    let deadline = Instant::now() + LONG;
    while text(c, "#f-sent").await == "–" {
        assert!(
            Instant::now() < deadline,
            "the capped migration never moved"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    click(c, "#job-cancel").await;
    let (_, end) = follow_progress(c, None).await;
    assert_eq!(end, "cancelled");
    l.ctl.wait_json(
        &["server-show", "vm"],
        LONG,
        "vm back to running on b",
        |v| v["host"] == "b" && v["state"] == "running",
    );
    more_heartbeats(&l.b, "vm", 3);
}

async fn jobs_keep_final_figures(l: &Lab, c: &Client, first_job: &str) {
    // Jobs: both finished, the first with its final figures.
    c.goto(&format!("{}/#/jobs", l.base)).await.unwrap();
    wait(c, "#jobs-finished tbody tr:nth-child(2)").await;
    shot(c, &l.dir, "jobs").await;
    c.goto(&format!("{}/#{first_job}", l.base)).await.unwrap();
    wait(c, "#progress[data-ended='succeeded']").await;
    assert_ne!(text(c, "#f-downtime").await, "–");
    shot(c, &l.dir, "progress-finished").await;
}

async fn cold_migrate_and_start(l: &Lab, c: &Client) {
    // A stopped server moves cold (no time forecast, auto-start offered)
    // to the scheduler's pick, then starts there from its row menu.
    open_migrate(c, &l.base, "archive").await;
    assert!(text(c, "#migrate-kind").await.starts_with("Cold migration"));
    assert!(wait(c, "#opt-autostart")
        .await
        .is_displayed()
        .await
        .unwrap());
    assert!(!wait(c, "#forecast-run").await.is_displayed().await.unwrap());
    click(c, "#migrate-ok").await;
    wait(c, "#progress[data-ended='succeeded']").await;
    let s = l.ctl.json(&["server-show", "archive"]);
    assert_eq!(s["state"], "ready", "{s}");
    let dest = s["host"].as_str().unwrap().to_string();
    assert_ne!(dest, "b");
    c.goto(&format!("{}/#/servers", l.base)).await.unwrap();
    let row = "#servers-body tr[data-server='archive'][data-state='ready'] td.host";
    let deadline = Instant::now() + LONG;
    while text(c, row).await != dest {
        assert!(Instant::now() < deadline, "archive never showed on {dest}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    click(c, "#menu-archive > summary").await;
    click(c, "#start-archive").await;
    wait(
        c,
        "#servers-body tr[data-server='archive'][data-state='running']",
    )
    .await;
    let host = [&l.a, &l.b, &l.x]
        .into_iter()
        .find(|h| h.opts.name == dest)
        .unwrap();
    host.wait_console("archive", LONG, "TERN-READY", |t| {
        SerialLog::parse(t).ready()
    });
}

async fn phone_width(l: &Lab, c: &Client) {
    // Phone width.
    fit_viewport(c, 390, 844).await;
    c.goto(&format!("{}/#/servers", l.base)).await.unwrap();
    wait(c, "#servers-body tr[data-server='vm']").await;
    shot(c, &l.dir, "servers-phone").await;
    fit_viewport(c, 1280, 800).await;
}

async fn read_only(l: &Lab, c: &Client) {
    // Read-only: no Migrate action, and the API refuses it anyway.
    click(c, "#logout").await;
    log_in(c, &l.base, "viewer", "viewer-pw").await;
    click(c, "#menu-vm > summary").await;
    wait(c, "#output-vm").await;
    assert!(c.find(Locator::Css("#migrate-vm")).await.is_err());
    assert!(c.find(Locator::Css("#shutdown-vm")).await.is_err());
    let r = c
        .execute_async(
            r#"const done = arguments[0];
               fetch("/v1/servers/vm/migrate", {method: "POST",
                 headers: {"content-type": "application/json", "x-tern-console": "1"},
                 body: JSON.stringify({live: true})})
               .then(async (r) => done([r.status, await r.text()]));"#,
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(r[0], 403, "{r}");
    assert!(r[1].as_str().unwrap().contains("read-only"), "{r}");
    let s = l.ctl.json(&["server-show", "vm"]);
    assert_eq!(s["host"], "b");
    // Console output follows the guest's serial log.
    click(c, "#output-vm").await;
    let deadline = Instant::now() + LONG;
    while !text(c, "#output-text").await.contains("TERN-HB") {
        assert!(
            Instant::now() < deadline,
            "no heartbeats in the console output"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    shot(c, &l.dir, "console-output").await;
}

/// Dark mode follows the browser's setting.
async fn dark_mode(l: &Lab, driver: &ChromeDriver, first_job: &str) {
    let c = browser(driver, Some("--force-dark-mode")).await;
    log_in(&c, &l.base, "admin", "admin-pw").await;
    c.goto(&format!("{}/#{first_job}", l.base)).await.unwrap();
    wait(&c, "#progress[data-ended='succeeded']").await;
    let dark = c
        .execute(
            "return matchMedia('(prefers-color-scheme: dark)').matches;",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(dark, true, "--force-dark-mode makes the page dark");
    shot(&c, &l.dir, "progress-dark").await;
    c.close().await.unwrap();
}
