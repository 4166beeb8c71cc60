//! Test controllers: a `tern-controller` on a free loopback port, and
//! agents that join it. Dropping a [`TestController`] kills the process.
//!
//! Every controller gets its own CA ([`TestPki`]) and runs on mutual TLS as
//! in production: its own server and client certificates, an operator
//! `admin` (read-write, what [`TestController::tern`] uses) and `viewer`
//! (read-only, `--tls-readonly-dn viewer`); agents that join get a server
//! certificate for their address and a host certificate for their name.

use crate::free_port;
use crate::host::{bin, HostOptions, TernHost};
use crate::pki::TestPki;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

/// The CA of each etcd store's controllers, while any of them lives.
static SHARED_CA: Mutex<Option<HashMap<String, Weak<TestPki>>>> = Mutex::new(None);

/// The CA for a controller on `store`: one per etcd store, a new one for
/// every embedded store.
fn ca_for(store: &Option<String>) -> Arc<TestPki> {
    let Some(store) = store else {
        return Arc::new(TestPki::new());
    };
    let mut g = SHARED_CA.lock().unwrap_or_else(|p| p.into_inner());
    let map = g.get_or_insert_with(HashMap::new);
    if let Some(p) = map.get(store).and_then(Weak::upgrade) {
        return p;
    }
    let p = Arc::new(TestPki::new());
    map.insert(store.clone(), Arc::downgrade(&p));
    p
}
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A running `tern-controller`.
#[derive(Debug)]
pub struct TestController {
    /// `https://127.0.0.1:PORT`.
    pub url: String,
    /// The cluster's CA and certificates (shared by controllers of one
    /// etcd store, whose agents join them all).
    pub pki: Arc<TestPki>,
    /// The controller's own certificates (`--pki-dir`).
    pki_dir: PathBuf,
    /// `file:DIR` or `etcd:URL`.
    pub store: String,
    /// Its log.
    pub log: PathBuf,
    args: Vec<String>,
    child: Option<Child>,
    /// Network namespace it (and `tern` talking to it) runs in.
    netns: Option<String>,
    _tmp: tempfile::TempDir,
}

impl TestController {
    /// Starts a controller on the embedded store in a private directory.
    pub fn file(extra: &[&str]) -> TestController {
        Self::start(None, extra)
    }

    /// Starts a controller on an etcd store.
    pub fn etcd(etcd_url: &str, extra: &[&str]) -> TestController {
        Self::start(Some(format!("etcd:{etcd_url}")), extra)
    }

    /// Starts a controller on the embedded store inside network namespace
    /// `ns`, listening on `addr` (agents in a [`crate::Lab`] reach it there;
    /// `tern` calls to it run in the namespace too).
    pub fn file_in_netns(ns: &str, addr: std::net::Ipv4Addr, extra: &[&str]) -> TestController {
        Self::start_at(None, extra, Some((ns.to_string(), format!("{addr}:16800"))))
    }

    fn start(store: Option<String>, extra: &[&str]) -> TestController {
        Self::start_at(store, extra, None)
    }

    fn start_at(
        store: Option<String>,
        extra: &[&str],
        at: Option<(String, String)>,
    ) -> TestController {
        let tmp = tempfile::Builder::new()
            .prefix("tern-ctl-")
            .tempdir()
            .expect("temp dir");
        let pki = ca_for(&store);
        let store = store.unwrap_or_else(|| format!("file:{}", tmp.path().join("store").display()));
        let (netns, listen) = match at {
            Some((ns, listen)) => (Some(ns), listen),
            None => (None, format!("127.0.0.1:{}", free_port())),
        };
        let (ip, port) = listen.rsplit_once(':').unwrap_or(("127.0.0.1", "0"));
        let own = format!("controller-{port}");
        let pki_dir = pki.server(&own, ip);
        pki.client(&own, "tern-controller");
        pki.client("admin", "admin");
        pki.client("viewer", "viewer");
        let mut c = TestController {
            url: format!("https://{listen}"),
            pki,
            pki_dir,
            netns,
            store,
            log: tmp.path().join("controller.log"),
            args: extra.iter().map(|s| s.to_string()).collect(),
            child: None,
            _tmp: tmp,
        };
        c.spawn();
        c
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("controller log");
        let listen = self.url.trim_start_matches("https://").to_string();
        let child = self
            .command(bin("tern-controller"))
            .args(["--listen", &listen, "--store", &self.store])
            .arg("--pki-dir")
            .arg(&self.pki_dir)
            .args(["--tls-readonly-dn", "viewer"])
            .args(&self.args)
            .env("TERN_CONTROLLER_LOG", "info,tern_controller=debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup"))
            .stderr(log)
            .spawn()
            .expect("spawn tern-controller");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let connect = || std::net::TcpStream::connect(&listen).is_ok();
            let up = match &self.netns {
                Some(ns) => crate::netns::in_netns(ns, connect).unwrap_or(false),
                None => connect(),
            };
            if up {
                return;
            }
            if let Some(Ok(Some(st))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!(
                    "tern-controller exited ({st}): {}",
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("tern-controller did not listen within 30 s");
    }

    /// Kills it with SIGKILL.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Its pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Waits (up to `timeout`) for it to exit by itself; its status.
    pub fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(Ok(Some(st))) = self.child.as_mut().map(|c| c.try_wait()) {
                self.child = None;
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "tern-controller did not exit within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts it again on the same store and port with other extra arguments.
    pub fn restart_with(&mut self, extra: &[&str]) {
        self.kill9();
        self.args = extra.iter().map(|s| s.to_string()).collect();
        self.spawn();
    }

    /// Starts it again on the same store and port.
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// `prog`, run inside the controller's namespace if it has one.
    fn command(&self, prog: PathBuf) -> Command {
        match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(prog);
                c
            }
            None => Command::new(prog),
        }
    }

    /// Runs `tern --controller URL ARGS...` as the operator `admin`.
    pub fn tern(&self, args: &[&str]) -> Output {
        self.tern_as(&self.pki.dir("admin"), args)
    }

    /// Runs `tern --controller URL ARGS...` with the certificates in
    /// `pki_dir` (`TERN_PKI_DIR`): another identity, another CA, or none.
    pub fn tern_as(&self, pki_dir: &std::path::Path, args: &[&str]) -> Output {
        self.command(bin("tern"))
            .arg("--controller")
            .arg(&self.url)
            .args(args)
            .env_remove("TERN_DEFAULT_URI")
            .env_remove("TERN_CONTROLLER")
            .env("TERN_PKI_DIR", pki_dir)
            .output()
            .expect("run tern")
    }

    /// Runs `tern` and returns stdout, panicking with stderr on failure.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.tern(args);
        assert!(
            o.status.success(),
            "tern {} failed: {}\ncontroller log tail:\n{}",
            args.join(" "),
            String::from_utf8_lossy(&o.stderr),
            crate::tail(&std::fs::read_to_string(&self.log).unwrap_or_default(), 30)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Runs `tern`, expects failure, returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let o = self.tern(args);
        assert!(
            !o.status.success(),
            "tern {} should have failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&o.stdout)
        );
        String::from_utf8_lossy(&o.stderr).into_owned()
    }

    /// `--json` output of a verb, parsed.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = args.to_vec();
        a.push("--json");
        serde_json::from_str(&self.ok(&a)).expect("JSON from tern")
    }

    /// Polls until `pred` holds for the JSON of `args`, or panics after `timeout`.
    pub fn wait_json(
        &self,
        args: &[&str],
        timeout: Duration,
        what: &str,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + timeout;
        loop {
            let o = self.tern(&[args, &["--json"]].concat());
            if o.status.success() {
                if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&o.stdout) {
                    if pred(&v) {
                        return v;
                    }
                    if Instant::now() > deadline {
                        panic!("timed out after {timeout:?} waiting for {what}; last: {v:#}");
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {timeout:?} waiting for {what}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until every host in `names` is listed online: an agent that
    /// has only just started may not have registered yet, and verbs that
    /// name it answer "no host" until it has.
    pub fn wait_online(&self, names: &[&str]) {
        let what = format!("hosts {names:?} online");
        self.wait_json(&["host-list"], Duration::from_secs(120), &what, |v| {
            names.iter().all(|n| {
                v.as_array().is_some_and(|hs| {
                    hs.iter()
                        .any(|h| h["report"]["name"] == *n && h["status"] == "online")
                })
            })
        });
    }

    /// Starts an agent named `name` that joins `controllers`, with extra
    /// `ternd` arguments (e.g. `--fact cpu_model=Other`).
    pub fn host(controllers: &[&TestController], name: &str, extra: &[&str]) -> TernHost {
        let mut opts = HostOptions {
            name: name.into(),
            ..Default::default()
        };
        opts.extra_args = extra.iter().map(|s| s.to_string()).collect();
        Self::join(controllers, opts)
    }

    /// Starts an agent inside side `s` of `lab` that joins `controllers`
    /// (which must be reachable from there) under the name `name`, with
    /// extra `ternd` arguments.
    pub fn join_lab(
        controllers: &[&TestController],
        lab: &crate::Lab,
        s: crate::Side,
        name: &str,
        extra: &[&str],
    ) -> TernHost {
        let mut opts = lab.host_options(s, name);
        opts.extra_args.extend(extra.iter().map(|a| a.to_string()));
        Self::join(controllers, opts)
    }

    /// Starts an agent with `opts` that joins `controllers` under the name
    /// `opts.name`, on mutual TLS with certificates of the first
    /// controller's CA: its API on `--listen-tls` (at `opts.listen`'s
    /// address, port 16714, when given, which then replaces the plain TCP
    /// listener; else on a free loopback port).
    pub fn join(controllers: &[&TestController], mut opts: HostOptions) -> TernHost {
        let urls: Vec<&str> = controllers.iter().map(|c| c.url.as_str()).collect();
        opts.extra_args.extend([
            "--controller".to_string(),
            urls.join(","),
            "--host-name".into(),
            opts.name.clone(),
        ]);
        let addr: std::net::SocketAddr = match opts.listen.take() {
            Some(a) => (a.ip(), 16714).into(),
            None => format!("127.0.0.1:{}", free_port())
                .parse()
                .expect("address"),
        };
        opts.listen_tls = Some(addr);
        let pki = &controllers.first().expect("a controller").pki;
        opts.pki_dir = Some(pki.cluster_agent(
            &format!("host-{}", opts.name),
            &addr.ip().to_string(),
            &opts.name,
        ));
        TernHost::start_with(opts)
    }
}

impl Drop for TestController {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Adds `user` with `role` (`ro` or `rw`) and `password` to the web
/// console's password file, as an operator does:
/// `tern-controller console-passwd FILE USER --role ROLE` with the
/// password on standard input.
pub fn console_passwd(file: &std::path::Path, user: &str, role: &str, password: &str) {
    use std::io::Write;
    let mut child = Command::new(bin("tern-controller"))
        .arg("console-passwd")
        .arg(file)
        .args([user, "--role", role])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tern-controller console-passwd");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(format!("{password}\n").as_bytes())
        .expect("write the password");
    let out = child.wait_with_output().expect("console-passwd");
    assert!(
        out.status.success(),
        "console-passwd failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
