//! Cluster scale (issue 19): N simulated agents against one real
//! `tern-controller`, on the embedded file store and on a three-member
//! etcd, N = 100, 1 000 and 5 000 by default.
//!
//! Each agent is a tokio task ([`agent`]) speaking the real protocol over
//! mutual TLS with its own host certificate and a real-shaped report. One
//! run per store and size: start the store and the controller, issue the
//! certificates, start every agent at once and time until all are
//! registered; record heartbeat round trips, controller CPU and store
//! writes over a window; stop one agent's heartbeats and time until the
//! controller lists its host down; then time `server-list` and
//! `migrate-forecast`. Prints one markdown table per store ([`report`]).

mod agent;
pub(crate) mod probe;
mod report;

use agent::{Agent, AgentState, Shared};
use anyhow::{bail, Context, Result};
use clap::Args;
use probe::{Proc, Writes};
use report::{percentile, rate, Figures};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tern_api::cluster::{
    controller_client_with_pki, ClusterRequest, ForecastRow, HostRecord, HostStatus, ServerRecord,
};
use tern_api::Client;
use tern_pki::PkiDir;
use tern_testkit::{EtcdCluster, TestController};

/// Options.
#[derive(Args, Debug)]
pub struct ScaleArgs {
    /// Cluster sizes, simulated hosts.
    #[arg(long, value_delimiter = ',', default_value = "100,1000,5000")]
    hosts: Vec<usize>,
    /// Stores: `file` (embedded) and/or `etcd` (three members).
    #[arg(long, value_delimiter = ',', default_value = "file,etcd")]
    stores: Vec<String>,
    /// Servers each host reports (10 × 5 000 hosts = 50 000 servers).
    #[arg(long, default_value_t = 10)]
    servers_per_host: usize,
    /// Seconds of steady heartbeats measured.
    #[arg(long, default_value_t = 10)]
    window: u64,
    /// Give up registering after this many seconds (and measure the rest
    /// on the hosts registered by then).
    #[arg(long, default_value_t = 300)]
    register_timeout: u64,
    /// The controller's host lease, ms (`--lease-ttl-ms`).
    #[arg(long, default_value_t = 3000)]
    lease_ttl_ms: u64,
    /// The controller's grace after a lapse, ms (`--grace-ms`).
    #[arg(long, default_value_t = 2000)]
    grace_ms: u64,
    /// Another `tern-controller` argument (repeat it), e.g.
    /// `--controller-arg=--max-anonymous-clients --controller-arg=200`.
    #[arg(long = "controller-arg", allow_hyphen_values = true)]
    controller_args: Vec<String>,
}

/// Which store a run uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StoreKind {
    File,
    Etcd,
}

impl StoreKind {
    fn parse(s: &str) -> Result<StoreKind> {
        match s {
            "file" => Ok(StoreKind::File),
            "etcd" => Ok(StoreKind::Etcd),
            other => bail!("unknown store '{other}' in --stores; give file and/or etcd"),
        }
    }

    fn title(self) -> &'static str {
        match self {
            StoreKind::File => "file store",
            StoreKind::Etcd => "etcd (3 members)",
        }
    }
}

/// Runs the benchmark.
pub async fn run(a: ScaleArgs) -> Result<()> {
    let stores: Vec<StoreKind> = a
        .stores
        .iter()
        .map(|s| StoreKind::parse(s))
        .collect::<Result<_>>()?;
    if a.hosts.is_empty() || a.hosts.contains(&0) {
        bail!("--hosts needs sizes of at least 1, e.g. --hosts 100,1000");
    }
    if a.window == 0 {
        bail!("--window must be at least 1 second");
    }
    let build = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    println!(
        "cluster-scale: {} server(s) per host, {} s window, {build} build, load {:.2}",
        a.servers_per_host,
        a.window,
        crate::sys::loadavg().unwrap_or(0.0)
    );
    for store in stores {
        let mut runs: Vec<Figures> = Vec::new();
        let mut skipped = Vec::new();
        for &n in &a.hosts {
            // A store that could not register fewer hosts in time will not
            // register more: its figures would only repeat the timeout.
            if runs.iter().any(|r| r.registered < r.hosts && r.hosts <= n) {
                skipped.push(n);
                continue;
            }
            eprintln!("cluster-scale: {} with {n} hosts", store.title());
            let f = case(store, n, &a).await?;
            eprintln!("cluster-scale: done in {:.1} s", f.wall.as_secs_f64());
            runs.push(f);
        }
        println!("\n{}", report::table(store.title(), &runs));
        if !skipped.is_empty() {
            println!(
                "{}: skipped {:?} hosts (a smaller cluster did not register in time)",
                store.title(),
                skipped
            );
        }
    }
    Ok(())
}

/// The store and controller of one run; dropped (killed) off the runtime.
struct Cluster {
    ctl: TestController,
    etcd: Option<EtcdCluster>,
}

impl Cluster {
    async fn start(store: StoreKind, a: &ScaleArgs) -> Result<Cluster> {
        let mut extra = vec![
            "--lease-ttl-ms".to_string(),
            a.lease_ttl_ms.to_string(),
            "--grace-ms".to_string(),
            a.grace_ms.to_string(),
        ];
        extra.extend(a.controller_args.iter().cloned());
        tokio::task::spawn_blocking(move || {
            let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
            let etcd = (store == StoreKind::Etcd).then(|| EtcdCluster::start(3));
            let ctl = match &etcd {
                Some(e) => TestController::etcd(&e.endpoints(), &extra),
                None => TestController::file(&extra),
            };
            Cluster { ctl, etcd }
        })
        .await
        .context("start the store and the controller")
    }

    async fn stop(self) {
        let _ = tokio::task::spawn_blocking(move || drop((self.ctl, self.etcd))).await;
    }
}

/// Issues `n` host certificates on all cores; their directories.
async fn issue_certs(
    ca: std::path::PathBuf,
    root: std::path::PathBuf,
    n: usize,
) -> Result<Vec<PkiDir>> {
    tokio::task::spawn_blocking(move || {
        let threads = std::thread::available_parallelism().map_or(2, |p| p.get());
        let chunk = n.div_ceil(threads).max(1);
        std::thread::scope(|s| {
            let parts: Vec<_> = (0..n)
                .step_by(chunk)
                .map(|start| {
                    let (ca, root) = (&ca, &root);
                    s.spawn(move || {
                        (start..(start + chunk).min(n))
                            .map(|i| agent::issue_cert(ca, root, i))
                            .collect::<Result<Vec<_>>>()
                    })
                })
                .collect();
            let mut out = Vec::with_capacity(n);
            for p in parts {
                out.extend(
                    p.join()
                        .map_err(|_| anyhow::anyhow!("issuing thread panicked"))??,
                );
            }
            Ok::<_, anyhow::Error>(out)
        })
    })
    .await?
}

/// One store, one size.
async fn case(store: StoreKind, hosts: usize, a: &ScaleArgs) -> Result<Figures> {
    let started = Instant::now();
    let cluster = Cluster::start(store, a).await?;
    let store = cluster.etcd.as_ref().map_or(Vec::new(), |e| e.pids());
    let r = measure(&cluster.ctl, store, hosts, a).await;
    cluster.stop().await;
    let mut f = r?;
    f.wall = started.elapsed();
    Ok(f)
}

/// Counts the store's writes so far, off the runtime (a scrape blocks).
async fn count(w: &Option<Writes>) -> Option<f64> {
    let w = w.clone()?;
    tokio::task::spawn_blocking(move || w.count())
        .await
        .ok()
        .flatten()
}

/// What one run watches.
struct Watch {
    ctl: Proc,
    me: Proc,
    /// The etcd members (none on the file store).
    store: Vec<Proc>,
    writes: Option<Writes>,
    shared: Arc<Shared>,
}

async fn measure(
    ctl: &TestController,
    store: Vec<u32>,
    hosts: usize,
    a: &ScaleArgs,
) -> Result<Figures> {
    let w = Watch {
        ctl: Proc(ctl.pid().context("controller pid")?),
        me: Proc(std::process::id()),
        store: store.into_iter().map(Proc).collect(),
        writes: Writes::for_store(&ctl.store),
        shared: Arc::new(Shared::default()),
    };
    let mut f = Figures {
        hosts,
        servers: hosts * a.servers_per_host,
        lease_plus_grace: Duration::from_millis(a.lease_ttl_ms + a.grace_ms),
        ..Default::default()
    };
    let certs_dir = tempfile::Builder::new().prefix("tern-scale-").tempdir()?;
    let t = Instant::now();
    let pkis = issue_certs(ctl.pki.ca(), certs_dir.path().to_path_buf(), hosts).await?;
    f.certs = t.elapsed();
    let mut tasks = tokio::task::JoinSet::new();
    let mut states = Vec::with_capacity(hosts);
    for (i, pki) in pkis.iter().enumerate() {
        let agent = Agent::new(i, &ctl.url, pki, a.servers_per_host, w.shared.clone())?;
        states.push(agent.state.clone());
        tasks.spawn(agent.run());
    }
    register_all(&w, &mut f, Duration::from_secs(a.register_timeout)).await;
    // Let the first heartbeats (spread over one interval) start.
    tokio::time::sleep(Duration::from_secs(2)).await;
    heartbeats(&w, &mut f, Duration::from_secs(a.window)).await;
    let admin = controller_client_with_pki(&ctl.url, &PkiDir::new(ctl.pki.dir("admin")))?
        .with_timeout(Duration::from_secs(300));
    if f.registered > 0 {
        (f.down_after, f.declared_after) =
            dead_host(&admin, &states[0], f.lease_plus_grace * 4).await;
    }
    queries(&admin, &mut f).await;
    f.cpu_total = w.ctl.cpu();
    f.peak_rss = w.ctl.peak_rss();
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
    Ok(f)
}

/// Waits until every agent (spawned just now) registered, or `limit`.
async fn register_all(w: &Watch, f: &mut Figures, limit: Duration) {
    let w0 = count(&w.writes).await;
    let t0 = Instant::now();
    while w.shared.registered.load(Ordering::Relaxed) < f.hosts && t0.elapsed() < limit {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    f.register = t0.elapsed();
    f.registered = w.shared.registered.load(Ordering::Relaxed);
    f.register_failures = w.shared.register_failures.load(Ordering::Relaxed);
    if let Some(e) = take_first(&w.shared.first_register_error) {
        eprintln!("cluster-scale: first failed register call: {e}");
    }
    let w1 = count(&w.writes).await;
    f.register_writes_per_s = w0.zip(w1).map(|(a, b)| rate(b - a, f.register));
}

/// The first error kept in `slot`, taken.
fn take_first(slot: &std::sync::Mutex<Option<String>>) -> Option<String> {
    slot.lock().unwrap_or_else(|p| p.into_inner()).take()
}

/// Records heartbeats, CPU and writes over `window`.
async fn heartbeats(w: &Watch, f: &mut Figures, window: Duration) {
    let store_cpu = || w.store.iter().map(Proc::cpu).sum::<f64>();
    let (cpu0, my0, disk0) = (w.ctl.cpu(), w.me.cpu(), w.ctl.write_bytes());
    let store0 = store_cpu();
    let w0 = count(&w.writes).await;
    w.shared.recording.store(true, Ordering::Relaxed);
    tokio::time::sleep(window).await;
    w.shared.recording.store(false, Ordering::Relaxed);
    let (cpu1, my1, disk1) = (w.ctl.cpu(), w.me.cpu(), w.ctl.write_bytes());
    let store1 = store_cpu();
    let w1 = count(&w.writes).await;
    let mut samples =
        std::mem::take(&mut *w.shared.samples.lock().unwrap_or_else(|p| p.into_inner()));
    f.hb_rate = rate(samples.len() as f64, window);
    f.hb_p50_us = percentile(&mut samples, 0.50);
    f.hb_p99_us = percentile(&mut samples, 0.99);
    f.hb_failures = w.shared.hb_failures.load(Ordering::Relaxed);
    if let Some(e) = take_first(&w.shared.first_error) {
        eprintln!("cluster-scale: first failed heartbeat of the window: {e}");
    }
    f.cpu_per_s = rate(cpu1 - cpu0, window);
    f.bench_cpu_per_s = rate(my1 - my0, window);
    f.store_cpu_per_s = (!w.store.is_empty()).then(|| rate(store1 - store0, window));
    f.writes_per_s = w0.zip(w1).map(|(a, b)| rate(b - a, window));
    f.disk_bytes_per_s = disk0.zip(disk1).map(|(a, b)| rate(b - a, window));
}

/// Times `server-list` and `migrate-forecast` (failures are printed and
/// leave the cell empty).
async fn queries(admin: &Client, f: &mut Figures) {
    let list = timed3(|| async move {
        let l: Vec<ServerRecord> = admin.call_json(&ClusterRequest::ServerList).await?;
        Ok(l.len())
    })
    .await;
    match list {
        Ok((t, n)) => (f.server_list, f.listed) = (t, n.unwrap_or(0)),
        Err(e) => eprintln!("cluster-scale: server-list failed: {e:#}"),
    }
    let target = &agent::server_name(f.hosts / 2, 0);
    let forecast = timed3(|| async move {
        let req = ClusterRequest::MigrateForecast {
            id: target.clone(),
            live: Some(true),
            opts: Default::default(),
        };
        let rows: Vec<ForecastRow> = admin.call_json(&req).await?;
        Ok(rows.len())
    })
    .await;
    match forecast {
        Ok((t, _)) => f.forecast = t,
        Err(e) => eprintln!("cluster-scale: migrate-forecast failed: {e:#}"),
    }
}

/// Stops `victim`'s heartbeats; the time from its last answered one until
/// the controller lists its host down (`None`: not within `limit`), and
/// until the moment the controller's record says it declared it down
/// (the listing adds up to one 50 ms poll and the call's own time).
async fn dead_host(
    admin: &Client,
    victim: &AgentState,
    limit: Duration,
) -> (Option<Duration>, Option<Duration>) {
    victim.stopped.store(true, Ordering::Relaxed);
    let host = agent::host_name(0);
    let t = Instant::now();
    while t.elapsed() < limit {
        let req = ClusterRequest::HostShow { id: host.clone() };
        let rec = admin.call_json::<_, HostRecord>(&req).await;
        if let Ok(HostRecord {
            status: HostStatus::Down { since_ms },
            ..
        }) = rec
        {
            let seen = Instant::now();
            let Some(last) = *victim.last_ok.lock().unwrap_or_else(|p| p.into_inner()) else {
                return (None, None);
            };
            // The last answer on the controller's clock (the same host's).
            let now_ms = crate::live::tern::epoch_ms();
            let last_ms = now_ms.saturating_sub(last.elapsed().as_millis() as u64);
            let declared = Duration::from_millis(since_ms.saturating_sub(last_ms));
            return (Some(seen - last), Some(declared));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (None, None)
}

/// The median of three timed calls, and what the last one returned.
async fn timed3<F, Fut>(f: F) -> Result<(Option<Duration>, Option<usize>)>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<usize>>,
{
    let mut times = Vec::new();
    let mut last = None;
    for _ in 0..3 {
        let t = Instant::now();
        last = Some(f().await?);
        times.push(t.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
    }
    let median = percentile(&mut times, 0.5).map(|us| Duration::from_micros(u64::from(us)));
    Ok((median, last))
}
