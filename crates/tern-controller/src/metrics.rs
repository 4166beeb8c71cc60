//! Prometheus metrics of the controller, served in the text exposition
//! format on `--metrics-listen ADDR` at `/metrics`.
//!
//! The cluster's figures (hosts by status, servers by state, jobs by kind
//! and state, rescues) are read from the store at each scrape, so every
//! controller of a set answers the same; the counters of events this
//! process saw (hosts it declared down) are kept in a process-wide registry.

use crate::Controller;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus::{Encoder, GaugeVec, IntCounter, IntGauge, Opts, Registry, TextEncoder};
use std::borrow::Borrow;
use std::sync::{Arc, OnceLock};
use tern_api::cluster::{HostRecord, HostStatus, JobKind, JobRecord, ServerRecord};

/// Every metric family of the controller.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    hosts: GaugeVec,
    servers: GaugeVec,
    jobs: GaugeVec,
    rescues: GaugeVec,
    leader: IntGauge,
    hosts_down: IntCounter,
}

/// The process-wide metrics.
pub fn metrics() -> &'static Metrics {
    static M: OnceLock<Metrics> = OnceLock::new();
    M.get_or_init(Metrics::new)
}

fn gauge(r: &Registry, name: &str, help: &str, labels: &[&str]) -> GaugeVec {
    let g = GaugeVec::new(Opts::new(name, help), labels).expect("valid gauge");
    r.register(Box::new(g.clone())).expect("unique name");
    g
}

/// `online`, `lapsed` or `down`.
pub fn host_status(s: &HostStatus) -> &'static str {
    match s {
        HostStatus::Online => "online",
        HostStatus::Lapsed { .. } => "lapsed",
        HostStatus::Down { .. } => "down",
    }
}

/// The wire name of a serde enum value (`live-migrate`, `queued`, ...).
fn wire_name<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

impl Metrics {
    fn new() -> Metrics {
        let r = Registry::new();
        let leader = IntGauge::new(
            "tern_controller_leader",
            "1 while this controller leads the cluster.",
        )
        .expect("valid gauge");
        r.register(Box::new(leader.clone())).expect("unique name");
        let hosts_down = IntCounter::new(
            "tern_controller_hosts_declared_down_total",
            "Hosts this controller declared down (and fenced off by their lease), starting their evacuation.",
        )
        .expect("valid counter");
        r.register(Box::new(hosts_down.clone()))
            .expect("unique name");
        Metrics {
            hosts: gauge(
                &r,
                "tern_cluster_hosts",
                "Hosts by health status.",
                &["status"],
            ),
            servers: gauge(&r, "tern_cluster_servers", "Servers by state.", &["state"]),
            jobs: gauge(
                &r,
                "tern_cluster_jobs",
                "Migration jobs in the store by kind and state (queued, running, ...).",
                &["kind", "state"],
            ),
            rescues: gauge(
                &r,
                "tern_cluster_rescues",
                "Rescue jobs (restarts of a dead host's servers) by state.",
                &["state"],
            ),
            leader,
            hosts_down,
            registry: r,
        }
    }

    /// The leader declared a host down.
    pub fn host_declared_down(&self) {
        self.hosts_down.inc();
    }

    /// Sets the cluster gauges from the store's records.
    pub fn set_cluster<H: Borrow<HostRecord>, S: Borrow<ServerRecord>>(
        &self,
        hosts: &[H],
        servers: &[S],
        jobs: &[JobRecord],
    ) {
        for g in [&self.hosts, &self.servers, &self.jobs, &self.rescues] {
            g.reset();
        }
        for s in ["online", "lapsed", "down"] {
            self.hosts.with_label_values(&[s]).set(0.0);
        }
        for h in hosts {
            self.hosts
                .with_label_values(&[host_status(&h.borrow().status)])
                .inc();
        }
        for s in servers {
            self.servers
                .with_label_values(&[&s.borrow().state.to_string()])
                .inc();
        }
        for j in jobs {
            let state = wire_name(&j.state);
            self.jobs
                .with_label_values(&[&wire_name(&j.kind), &state])
                .inc();
            if j.kind == JobKind::Rescue {
                self.rescues.with_label_values(&[&state]).inc();
            }
        }
    }

    /// The exposition text with the store's figures as they stand.
    pub async fn render(&self, ctl: &Controller) -> String {
        let read = async {
            Ok::<_, crate::error::CtlError>((
                ctl.inv.hosts_shared().await?,
                ctl.inv.servers_shared().await?,
                ctl.inv.jobs().await?,
            ))
        };
        match read.await {
            Ok((h, s, j)) => self.set_cluster(&h, &s, &j),
            Err(e) => tracing::warn!(error = %e, "metrics: cannot read the store"),
        }
        self.leader.set(ctl.is_leader() as i64);
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::warn!(error = %e, "cannot encode metrics");
        }
        String::from_utf8_lossy(&out).into_owned()
    }
}

async fn scrape(State(ctl): State<Arc<Controller>>) -> impl IntoResponse {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)],
        metrics().render(&ctl).await,
    )
}

/// Serves `GET /metrics` on `listener` until it fails.
pub async fn serve(ctl: Arc<Controller>, listener: tokio::net::TcpListener) -> std::io::Result<()> {
    let app = Router::new().route("/metrics", get(scrape)).with_state(ctl);
    crate::listen::serve_http(listener, app).await
}
