//! Prometheus metrics of the agent, served in the text exposition format on
//! `--metrics-listen ADDR` at `/metrics`.
//!
//! Counters and histograms are fed where migrations start and end
//! ([`crate::migration::Jobs`]) and where API requests are answered
//! ([`crate::server`]); the per-migration gauges are rebuilt at each scrape
//! from the jobs under way, so a finished migration leaves no stale series.
//! The fence's series mirror what the fence process (`tern-fence`, a
//! process of its own) last wrote to its status file
//! ([`crate::fence::config::FenceStatus`]), read at each scrape.
//! One agent runs per process, so the registry is process-wide: the code
//! that counts does not need a handle threaded through it.

use crate::fence::config::{FenceDir, FenceStatus};
use crate::migration::{Job, Jobs};
use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response};
use hyper_util::rt::TokioIo;
use prometheus::{
    exponential_buckets, Encoder, Gauge, GaugeVec, HistogramOpts, HistogramVec, IntCounter,
    IntCounterVec, Opts, Registry, TextEncoder,
};
use std::sync::{Arc, OnceLock};
use tern_migrate::{MigrateOptions, Phase, Role};
use tokio::net::TcpListener;

/// Labels of the per-kind migration series.
const MIGRATION_LABELS: &[&str] = &["role", "kind", "flow"];
/// Labels of the per-migration gauges.
const JOB_LABELS: &[&str] = &["domain", "role"];

/// Every metric family of the agent.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    started: IntCounterVec,
    completed: IntCounterVec,
    failed: IntCounterVec,
    cancelled: IntCounterVec,
    duration: HistogramVec,
    downtime: HistogramVec,
    bytes: HistogramVec,
    remaining: GaugeVec,
    rate: GaugeVec,
    dirty_rate: GaugeVec,
    iteration: GaugeVec,
    throttle: GaugeVec,
    running: GaugeVec,
    cold_bytes: IntCounterVec,
    cold_rate: GaugeVec,
    requests: IntCounterVec,
    fence: FenceMetrics,
}

/// The fence process's series.
#[derive(Debug)]
struct FenceMetrics {
    fencings: IntCounter,
    renewals: IntCounter,
    failures: IntCounter,
    last_renewal: Gauge,
    armed: Gauge,
    fenced: Gauge,
    pools: Gauge,
    watchdog: Gauge,
}

fn plain_counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("valid counter");
    r.register(Box::new(c.clone())).expect("unique name");
    c
}

fn plain_gauge(r: &Registry, name: &str, help: &str) -> Gauge {
    let g = Gauge::new(name, help).expect("valid gauge");
    r.register(Box::new(g.clone())).expect("unique name");
    g
}

/// Sets a counter to a count kept elsewhere (a lower one is a reset: the
/// fence process restarted).
fn mirror(c: &IntCounter, v: u64) {
    if v < c.get() {
        c.reset();
    }
    c.inc_by(v - c.get());
}

impl FenceMetrics {
    fn new(r: &Registry) -> FenceMetrics {
        FenceMetrics {
            fencings: plain_counter(r, "tern_agent_fencing_events_total", "Times this host's fence killed its guests (it could not renew its storage lease in time)."),
            renewals: plain_counter(r, "tern_fence_lease_renewals_total", "Renewals of this host's storage lease that landed on every shared pool in time."),
            failures: plain_counter(r, "tern_fence_lease_renewal_failures_total", "Renewals of this host's storage lease that failed or were too slow on some pool."),
            last_renewal: plain_gauge(r, "tern_fence_last_renewal_timestamp_seconds", "When the last renewal that counted started (0: none yet)."),
            armed: plain_gauge(r, "tern_fence_armed", "1 when the fence kills the guests if it cannot renew (the host's auto-migrate-on-host-down policy)."),
            fenced: plain_gauge(r, "tern_fence_fenced", "1 when the fence killed the guests and waits for the agent to be back in the cluster."),
            pools: plain_gauge(r, "tern_fence_lease_pools", "Shared pools carrying this host's lease."),
            watchdog: plain_gauge(r, "tern_fence_watchdog_timeout_seconds", "Timeout of the watchdog the fence feeds (0: none armed; an armed fence without one does not survive its own death with the agent's)."),
        }
    }

    fn refresh(&self, s: &FenceStatus) {
        mirror(&self.fencings, s.fencings);
        mirror(&self.renewals, s.renewals);
        mirror(&self.failures, s.renewal_failures);
        let secs = s.last_renewal_ms.unwrap_or(0) as f64 / 1000.0;
        self.last_renewal.set(secs);
        self.armed.set(f64::from(u8::from(s.armed)));
        self.fenced.set(f64::from(u8::from(s.fenced)));
        self.pools.set(s.pools as f64);
        self.watchdog.set(s.watchdog_ms as f64 / 1000.0);
    }
}

/// The process-wide metrics.
pub fn metrics() -> &'static Metrics {
    static M: OnceLock<Metrics> = OnceLock::new();
    M.get_or_init(Metrics::new)
}

fn counter(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid counter");
    r.register(Box::new(c.clone())).expect("unique name");
    c
}

fn gauge(r: &Registry, name: &str, help: &str, labels: &[&str]) -> GaugeVec {
    let g = GaugeVec::new(Opts::new(name, help), labels).expect("valid gauge");
    r.register(Box::new(g.clone())).expect("unique name");
    g
}

fn histogram(r: &Registry, name: &str, help: &str, buckets: Vec<f64>) -> HistogramVec {
    let h = HistogramVec::new(
        HistogramOpts::new(name, help).buckets(buckets),
        MIGRATION_LABELS,
    )
    .expect("valid histogram");
    r.register(Box::new(h.clone())).expect("unique name");
    h
}

/// `live`, `offline` or `cold`: how the guest moves.
pub fn kind_of(o: &MigrateOptions) -> &'static str {
    if o.cold {
        "cold"
    } else if o.offline {
        "offline"
    } else {
        "live"
    }
}

/// `precopy`, `postcopy` (allowed to switch) or `tunnelled`: how memory flows.
pub fn flow_of(o: &MigrateOptions) -> &'static str {
    if o.postcopy {
        "postcopy"
    } else if o.tunnelled {
        "tunnelled-precopy"
    } else {
        "precopy"
    }
}

fn role_of(r: Role) -> &'static str {
    match r {
        Role::Source => "source",
        Role::Destination => "destination",
    }
}

impl Metrics {
    fn new() -> Metrics {
        let r = Registry::new();
        let m = MIGRATION_LABELS;
        let j = JOB_LABELS;
        let mib = 1024.0 * 1024.0;
        Metrics {
            started: counter(
                &r,
                "tern_migrations_started_total",
                "Migrations started on this host.",
                m,
            ),
            completed: counter(
                &r,
                "tern_migrations_completed_total",
                "Migrations that completed (the guest runs on the destination).",
                m,
            ),
            failed: counter(
                &r,
                "tern_migrations_failed_total",
                "Migrations that failed (the guest stayed on the source).",
                m,
            ),
            cancelled: counter(
                &r,
                "tern_migrations_cancelled_total",
                "Migrations cancelled by an operator.",
                m,
            ),
            duration: histogram(
                &r,
                "tern_migration_duration_seconds",
                "Total time of finished migrations, as this host saw them.",
                exponential_buckets(0.25, 2.0, 14).expect("buckets"),
            ),
            downtime: histogram(
                &r,
                "tern_migration_downtime_seconds",
                "Guest downtime of completed live migrations, as QEMU measured it.",
                exponential_buckets(0.005, 2.0, 13).expect("buckets"),
            ),
            bytes: histogram(
                &r,
                "tern_migration_transferred_bytes",
                "Bytes a finished migration moved (memory and disks).",
                exponential_buckets(mib, 4.0, 12).expect("buckets"),
            ),
            remaining: gauge(
                &r,
                "tern_migration_remaining_bytes",
                "Bytes a running migration has left to send.",
                j,
            ),
            rate: gauge(
                &r,
                "tern_migration_transfer_rate_bytes_per_second",
                "Current transfer rate of a running migration.",
                j,
            ),
            dirty_rate: gauge(
                &r,
                "tern_migration_dirty_rate_bytes_per_second",
                "Rate at which the guest dirties memory during a running migration.",
                j,
            ),
            iteration: gauge(
                &r,
                "tern_migration_iteration",
                "Pre-copy iteration (dirty bitmap sync) of a running migration.",
                j,
            ),
            throttle: gauge(
                &r,
                "tern_migration_cpu_throttle_ratio",
                "Auto-converge vCPU throttle of a running migration (0 to 1).",
                j,
            ),
            running: gauge(
                &r,
                "tern_migrations_running",
                "Migrations under way on this host, by phase.",
                &["role", "phase"],
            ),
            cold_bytes: counter(
                &r,
                "tern_cold_copy_bytes_total",
                "Bytes cold copies sent over the wire.",
                &["role"],
            ),
            cold_rate: gauge(
                &r,
                "tern_cold_copy_rate_bytes_per_second",
                "Current disk copy rate of a running cold copy.",
                j,
            ),
            requests: counter(
                &r,
                "tern_agent_api_requests_total",
                "Host API requests answered, by verb and status.",
                &["verb", "status"],
            ),
            fence: FenceMetrics::new(&r),
            registry: r,
        }
    }

    fn labels(job: &Job) -> [&'static str; 3] {
        [
            role_of(job.role),
            kind_of(&job.options),
            flow_of(&job.options),
        ]
    }

    /// A migration entered the job table.
    pub fn migration_started(&self, job: &Job) {
        self.started.with_label_values(&Self::labels(job)).inc();
    }

    /// A migration reached its terminal phase: outcome, time, downtime, bytes.
    pub fn migration_finished(&self, job: &Job) {
        let l = Self::labels(job);
        let info = job.info();
        match job.phase() {
            Phase::Completed => self.completed.with_label_values(&l).inc(),
            Phase::Cancelled => self.cancelled.with_label_values(&l).inc(),
            _ => self.failed.with_label_values(&l).inc(),
        }
        self.duration
            .with_label_values(&l)
            .observe(job.started.elapsed().as_secs_f64());
        if let (Phase::Completed, Some(d)) = (job.phase(), info.downtime_ms) {
            self.downtime
                .with_label_values(&l)
                .observe(d as f64 / 1000.0);
        }
        let moved = info.data_processed.max(info.wire_bytes);
        self.bytes.with_label_values(&l).observe(moved as f64);
        if job.options.cold && info.wire_bytes > 0 {
            self.cold_bytes
                .with_label_values(&[l[0]])
                .inc_by(info.wire_bytes);
        }
    }

    /// One answered API request; `status` is `ok` or the error code.
    pub fn api_request(&self, verb: &str, status: &str) {
        self.requests.with_label_values(&[verb, status]).inc();
    }

    /// Rebuilds the per-migration gauges from the jobs under way.
    fn refresh(&self, jobs: &Jobs) {
        for g in [
            &self.remaining,
            &self.rate,
            &self.dirty_rate,
            &self.iteration,
            &self.throttle,
            &self.running,
            &self.cold_rate,
        ] {
            g.reset();
        }
        for job in jobs.running() {
            let i = job.info();
            let l = [job.domain.as_str(), role_of(job.role)];
            let phase = job.phase().to_string();
            self.running
                .with_label_values(&[role_of(job.role), &phase])
                .inc();
            if job.options.cold {
                self.cold_rate.with_label_values(&l).set(i.disk_rate as f64);
            }
            self.remaining
                .with_label_values(&l)
                .set(i.data_remaining as f64);
            self.rate
                .with_label_values(&l)
                .set(i.memory_bandwidth.max(i.disk_rate) as f64);
            self.dirty_rate
                .with_label_values(&l)
                .set(i.dirty_rate as f64);
            self.iteration.with_label_values(&l).set(i.iteration as f64);
            let t = i.auto_converge_throttle.unwrap_or(0) as f64 / 100.0;
            self.throttle.with_label_values(&l).set(t);
        }
    }

    /// The exposition text, with the gauges of `jobs` and the fence's
    /// series as they stand.
    pub fn render(&self, jobs: &Jobs, fence: &FenceStatus) -> String {
        self.refresh(jobs);
        self.fence.refresh(fence);
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::warn!(error = %e, "cannot encode metrics");
        }
        String::from_utf8_lossy(&out).into_owned()
    }
}

/// The request's verb, as the API names it (`op`), for the request counter.
pub fn verb_of(req: &tern_api::Request) -> String {
    serde_json::to_value(req)
        .ok()
        .and_then(|v| v.get("op").and_then(|o| o.as_str().map(str::to_string)))
        .unwrap_or_else(|| "unknown".into())
}

/// Serves `GET /metrics` on `listener` forever.
pub async fn serve(agent: Arc<crate::Agent>, listener: TcpListener) {
    loop {
        let (s, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "metrics accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let agent = agent.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                let agent = agent.clone();
                async move { Ok::<_, std::convert::Infallible>(answer(&agent, &req)) }
            });
            // Idle and slow-header scrapers are closed, as on the API.
            let _ = http1::Builder::new()
                .max_buf_size(64 << 10)
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(60))
                .serve_connection(TokioIo::new(s), svc)
                .await;
        });
    }
}

fn answer<B>(agent: &crate::Agent, req: &Request<B>) -> Response<Full<Bytes>> {
    let (status, ctype, body) = if req.method() == Method::GET && req.uri().path() == "/metrics" {
        let fence = FenceDir::of(&agent.cfg.state_dir)
            .load_status()
            .unwrap_or_default();
        (
            200,
            prometheus::TEXT_FORMAT,
            metrics().render(&agent.jobs, &fence),
        )
    } else {
        (
            404,
            "text/plain",
            "only GET /metrics is served here\n".into(),
        )
    };
    Response::builder()
        .status(status)
        .header("content-type", ctype)
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_conventions() {
        metrics().api_request("list", "ok");
        let text = metrics().render(&Jobs::default(), &FenceStatus::default());
        assert!(
            text.contains("# TYPE tern_agent_api_requests_total counter"),
            "{text}"
        );
        assert!(text.contains("tern_agent_api_requests_total{status=\"ok\",verb=\"list\"}"));
        assert!(text.contains("tern_agent_fencing_events_total 0"), "{text}");
    }

    #[test]
    fn fence_counters_mirror_the_fence_process_and_its_restarts() {
        let c = IntCounter::new("x_total", "x").unwrap();
        mirror(&c, 5);
        assert_eq!(c.get(), 5);
        mirror(&c, 7);
        assert_eq!(c.get(), 7);
        // A new fence process counts from 0 again.
        mirror(&c, 2);
        assert_eq!(c.get(), 2);
    }

    #[test]
    fn kind_and_flow_name_the_options() {
        let mut o = MigrateOptions::default();
        assert_eq!((kind_of(&o), flow_of(&o)), ("live", "precopy"));
        o.postcopy = true;
        o.offline = true;
        assert_eq!((kind_of(&o), flow_of(&o)), ("offline", "postcopy"));
        o.cold = true;
        assert_eq!(kind_of(&o), "cold");
    }
}
