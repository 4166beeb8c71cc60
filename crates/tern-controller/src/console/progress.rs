//! Progress of migration jobs for the console: while a job runs, its
//! source agent's figures (the same `domjobinfo` and `domjobevents` the
//! CLI shows) are sampled into a history; when it ends, the agent's final
//! figures are added and the history is kept in the store, so a finished
//! job keeps its chart. Browsers follow a history as server-sent events.

use super::{Console, Fail};
use crate::evacuate::host_client;
use crate::inventory::now_ms;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tern_api::cluster::{JobKind, JobRecord};
use tern_api::{MigrationRequest, Request};
use tern_migrate::{JobEvent, JobInfo};
use tokio_stream::wrappers::ReceiverStream;

/// Store prefix of finished jobs' histories.
pub const HISTORY: &str = "console/history/";
/// How often running jobs are sampled.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(500);

/// One sample of a running migration, for the charts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// Milliseconds since the epoch.
    pub at_ms: u64,
    /// Bytes sent.
    pub sent: u64,
    /// Bytes left.
    pub remaining: u64,
    /// Transfer rate, bytes/s.
    pub rate: u64,
}

/// What the console knows of one job's progress.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct History {
    /// Samples, oldest first.
    pub samples: Vec<Sample>,
    /// The policy's steps and other events of the source agent's job.
    pub events: Vec<JobEvent>,
    /// The latest figures (the final ones once the job ended).
    pub last: Option<JobInfo>,
    /// The job ended and the final figures are in.
    pub finished: bool,
}

/// Histories of jobs this controller watched.
#[derive(Debug, Default)]
pub struct Histories(Mutex<HashMap<String, History>>);

impl Histories {
    fn get(&self, id: &str) -> Option<History> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
    }

    fn update(&self, id: &str, f: impl FnOnce(&mut History)) -> History {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let h = m.entry(id.to_string()).or_default();
        f(h);
        h.clone()
    }
}

/// The sample a job's figures make, if it moves data now.
pub fn sample(i: &JobInfo, at_ms: u64) -> Option<Sample> {
    if i.kind != tern_migrate::JobKind::Unbounded {
        return None;
    }
    let rate = if i.memory_bandwidth > 0 {
        i.memory_bandwidth
    } else {
        i.disk_rate
    };
    Some(Sample {
        at_ms,
        sent: i.data_processed,
        remaining: i.data_remaining,
        rate,
    })
}

/// Samples every running migration job, forever.
pub async fn record(c: Arc<Console>) {
    loop {
        if let Err(e) = record_once(&c).await {
            tracing::debug!(error = %e.0, "console progress sampling failed");
        }
        tokio::time::sleep(SAMPLE_EVERY).await;
    }
}

async fn record_once(c: &Arc<Console>) -> Result<(), Fail> {
    for j in c.ctl.inv.jobs().await? {
        if j.kind == JobKind::Rescue {
            continue;
        }
        let known = c.history.get(&j.id);
        match (j.state, &known) {
            (tern_api::cluster::JobState::Running, _) => poll(c, &j, false).await?,
            (s, Some(h)) if s.is_terminal() && !h.finished => poll(c, &j, true).await?,
            (s, None) if s.is_terminal() => {
                // Ended before this controller sampled it: the agent's final
                // figures are this job's only if it ended just now.
                let recent = j
                    .finished_ms
                    .is_some_and(|f| now_ms().saturating_sub(f) < 30_000);
                let stored = c
                    .ctl
                    .inv
                    .get::<History>(&format!("{HISTORY}{}", j.id))
                    .await?;
                match stored {
                    Some((_, h)) => {
                        c.history.update(&j.id, |m| *m = h);
                    }
                    None if recent => poll(c, &j, true).await?,
                    None => {
                        c.history.update(&j.id, |m| m.finished = true);
                    }
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// One look at the source agent's job; `ended` fetches the final figures
/// and keeps the history in the store.
async fn poll(c: &Arc<Console>, j: &JobRecord, ended: bool) -> Result<(), Fail> {
    let src = c.ctl.inv.host(&j.source).await?;
    let Ok(agent) = host_client(&src) else {
        return Ok(());
    };
    let info: JobInfo = agent
        .call(&Request::Migration(MigrationRequest::JobInfo {
            name: j.server.clone(),
            completed: ended,
            wait_ms: 0,
        }))
        .await
        .unwrap_or_default();
    let since = c.history.get(&j.id).map_or(0, |h| h.events.len());
    let events: Vec<JobEvent> = agent
        .call(&Request::Migration(MigrationRequest::JobEvents {
            name: j.server.clone(),
            since,
        }))
        .await
        .unwrap_or_default();
    let h = c.history.update(&j.id, |h| {
        if let Some(s) = sample(&info, now_ms()) {
            h.samples.push(s);
        }
        h.events.extend(events);
        if info.kind != tern_migrate::JobKind::None {
            h.last = Some(info);
        }
        h.finished = ended;
    });
    if ended {
        c.ctl.inv.put(&format!("{HISTORY}{}", j.id), &h).await?;
    }
    Ok(())
}

async fn load(c: &Console, id: &str) -> Result<History, Fail> {
    if let Some(h) = c.history.get(id) {
        return Ok(h);
    }
    Ok(c.ctl
        .inv
        .get::<History>(&format!("{HISTORY}{id}"))
        .await?
        .map(|(_, h)| h)
        .unwrap_or_default())
}

/// `GET /api/jobs/:id/history`: what is known of a job's progress.
pub async fn history(
    State(c): State<Arc<Console>>,
    h: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, Fail> {
    c.session(&h)?;
    Ok(Json(load(&c, &id).await?).into_response())
}

fn event(name: &str, v: &impl Serialize) -> Event {
    Event::default()
        .event(name)
        .data(serde_json::to_string(v).unwrap_or_default())
}

/// `GET /api/jobs/:id/events`: the job's record (`job`), figures
/// (`info`), samples (`sample`) and steps (`step`) as they come; `end`
/// once the job is over and its final figures are in.
pub async fn events(
    State(c): State<Arc<Console>>,
    h: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, Fail> {
    c.session(&h)?;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Event, Infallible>>(64);
    tokio::spawn(async move {
        let (mut samples, mut steps, mut last_job, mut last_info) = (0, 0, None, None);
        loop {
            let Ok(Some((_, job))) = c
                .ctl
                .inv
                .get::<JobRecord>(&format!("{}{id}", crate::inventory::JOBS))
                .await
            else {
                let _ = tx.send(Ok(event("gone", &id))).await;
                return;
            };
            let hist = load(&c, &id).await.unwrap_or_default();
            let mut out = Vec::new();
            if last_job.as_ref() != Some(&job) {
                out.push(event("job", &job));
                last_job = Some(job.clone());
            }
            if hist.last.is_some() && hist.last != last_info {
                out.push(event("info", &hist.last));
                last_info = hist.last.clone();
            }
            for s in hist.samples.iter().skip(samples) {
                out.push(event("sample", s));
            }
            samples = hist.samples.len();
            for e in hist.events.iter().skip(steps) {
                out.push(event("step", e));
            }
            steps = hist.events.len();
            let over = job.state.is_terminal() && (hist.finished || job.kind == JobKind::Rescue);
            if over {
                out.push(event("end", &job));
            }
            for e in out {
                if tx.send(Ok(e)).await.is_err() {
                    return;
                }
            }
            if over {
                return;
            }
            tokio::time::sleep(SAMPLE_EVERY / 2).await;
        }
    });
    Ok(Sse::new(ReceiverStream::new(rx))
        .keep_alive(KeepAlive::default())
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_moving_jobs_make_samples() {
        let mut i = JobInfo {
            kind: tern_migrate::JobKind::Unbounded,
            data_processed: 10,
            data_remaining: 90,
            disk_rate: 7,
            ..Default::default()
        };
        assert_eq!(sample(&i, 1).unwrap().rate, 7);
        i.memory_bandwidth = 5;
        assert_eq!(
            sample(&i, 1),
            Some(Sample {
                at_ms: 1,
                sent: 10,
                remaining: 90,
                rate: 5
            })
        );
        i.kind = tern_migrate::JobKind::Completed;
        assert!(sample(&i, 1).is_none());
    }
}
