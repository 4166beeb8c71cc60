//! A server whose host died in the middle of a migration: where the
//! destination's copy stands, and settling it once the source is proven
//! fenced.
//!
//! The destination is asked with the migration protocol's own query
//! (`migrate-query` with the job's migration id), so "a paused copy" is
//! told apart as complete (its QEMU loaded the whole guest: the source's
//! QEMU had sent everything) or partial. Once the dead source is proven
//! fenced, the controller gives the destination the verdict the driver
//! could not: `migrate-finish` with success for a complete copy (it
//! resumes there, keeping the guest's memory), without for a partial one
//! (it is discarded, and the server is rescued from its shared disks).
//! The decision is written into the migration job's note before the
//! destination is told; the verdict is idempotent on the destination, so a
//! controller that dies in between repeats it harmlessly.

use crate::error::{CtlError, Result};
use crate::evacuate::host_client;
use crate::jobs::migrate_options;
use crate::rescue::DestState;
use crate::Controller;
use std::sync::Arc;
use std::time::Duration;
use tern_api::cluster::{JobKind, JobRecord, JobState, ServerRecord};
use tern_api::{Client, DomainInfo, MigrationRequest, Request};
use tern_migrate::protocol::{check_version, PROTOCOL_VERSION};
use tern_migrate::protocol::{FinishReply, FinishRequest, QueryReply, QueryRequest};
use tern_migrate::recovery::PeerView;
use uuid::Uuid;

/// How long the destination may take to answer a query.
const ASK_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a verdict may take (a resume waits for QEMU's load to end).
const VERDICT_TIMEOUT: Duration = Duration::from_secs(30);

/// A migration of the server that ended in failure around its host's death.
#[derive(Debug, Clone)]
pub struct Interrupted {
    /// The migration job.
    pub job: JobRecord,
    /// Its destination host.
    pub dest: String,
    /// Where the destination's copy stands.
    pub state: DestState,
}

/// The server's interrupted migration, if its last job was one: a failed
/// migration (not a rescue) away from its host that ended at most a
/// minute before the host was declared down, or after.
pub async fn find(
    ctl: &Arc<Controller>,
    jobs: &[JobRecord],
    s: &ServerRecord,
    since_ms: u64,
) -> Option<Interrupted> {
    let j = jobs.iter().rev().find(|j| j.server == s.domain.name)?;
    let recent = j.finished_ms.is_some_and(|f| f + 60_000 >= since_ms);
    if j.kind == JobKind::Rescue || j.state != JobState::Failed || !recent || j.source != s.host {
        return None;
    }
    let dest = j.dest.clone()?;
    let client = ctl
        .lead()
        .host(&dest)
        .await
        .ok()
        .and_then(|h| host_client(&h).ok());
    let state = match client {
        None => DestState::Unreachable,
        Some(c) => dest_state(&c, j).await,
    };
    Some(Interrupted {
        job: j.clone(),
        dest,
        state,
    })
}

/// Where the destination stands, from its own record of the migration
/// (or, when it has none, from whether it runs the guest).
async fn dest_state(c: &Client, j: &JobRecord) -> DestState {
    let Ok(id) = Uuid::parse_str(&j.migration_id) else {
        return DestState::Unreachable;
    };
    let req = QueryRequest {
        version: PROTOCOL_VERSION,
        id,
    };
    let r = c
        .clone()
        .with_timeout(ASK_TIMEOUT)
        .call::<QueryReply>(&Request::Migration(MigrationRequest::MigrateQuery { req }))
        .await;
    match r {
        Ok(r) if check_version(r.version).is_ok() => match from_view(r.view) {
            Some(s) => s,
            None => runs_there(c, &j.server).await,
        },
        _ => DestState::Unreachable,
    }
}

/// The destination's own view of the migration, as a [`DestState`];
/// `None` when it knows nothing of it.
pub fn from_view(v: PeerView) -> Option<DestState> {
    match v {
        PeerView::Owns => Some(DestState::Running),
        PeerView::Prepared { complete } => Some(DestState::Prepared { complete }),
        PeerView::Discarded => Some(DestState::Absent),
        // A source's views: the destination never says these of itself.
        PeerView::Sending | PeerView::Sent => Some(DestState::Prepared { complete: false }),
        PeerView::Unknown => None,
    }
}

async fn runs_there(c: &Client, name: &str) -> DestState {
    let r = c
        .clone()
        .with_timeout(ASK_TIMEOUT)
        .call::<DomainInfo>(&Request::DomInfo {
            name: name.to_string(),
        })
        .await;
    match r {
        Ok(i) if i.summary.state == tern_model::DomainState::Running => DestState::Running,
        Ok(_) => DestState::Prepared { complete: false },
        Err(tern_api::ClientError::Api(e)) if e.code == tern_api::ErrorCode::NotFound => {
            DestState::Absent
        }
        Err(_) => DestState::Unreachable,
    }
}

/// Gives the destination its verdict: `resume` a complete copy, or
/// discard a partial one. Whether the guest now runs there.
pub async fn settle(
    ctl: &Arc<Controller>,
    i: &Interrupted,
    server: &ServerRecord,
    resume: bool,
) -> Result<bool> {
    let host = &i.job.source;
    let note = if resume {
        format!(
            "host {host} died after the guest's memory reached {}; it was proven fenced, so the complete copy resumes there",
            i.dest
        )
    } else {
        format!(
            "host {host} died before the guest's memory reached {}; it was proven fenced, so the partial copy is discarded and the server rescued",
            i.dest
        )
    };
    // The decision is stored before the destination hears it.
    ctl.lead()
        .update_job(&i.job.id, |r| {
            let change = r.note.as_deref() != Some(note.as_str());
            r.note = Some(note.clone());
            Ok(change)
        })
        .await?;
    let h = ctl.lead().host(&i.dest).await?;
    let agent = |source| CtlError::Agent {
        host: i.dest.clone(),
        source,
    };
    let c = host_client(&h).map_err(agent)?;
    let req = FinishRequest {
        version: PROTOCOL_VERSION,
        id: Uuid::parse_str(&i.job.migration_id)
            .map_err(|e| CtlError::Invalid(format!("job {}: {e}", i.job.id)))?,
        name: i.job.server.clone(),
        success: resume,
        options: migrate_options(i.job.kind, &i.job.opts, server),
    };
    tracing::warn!(server = %i.job.server, from = %host, to = %i.dest, resume, "settling the copy of an interrupted migration");
    let r: FinishReply = c
        .with_timeout(VERDICT_TIMEOUT)
        .call(&Request::Migration(MigrationRequest::MigrateFinish { req }))
        .await
        .map_err(agent)?;
    if let Some(e) = &r.error {
        tracing::warn!(server = %i.job.server, to = %i.dest, error = %e, "the destination's verdict");
    }
    Ok(r.resumed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_destinations_view_maps_to_its_state() {
        assert_eq!(from_view(PeerView::Owns), Some(DestState::Running));
        assert_eq!(
            from_view(PeerView::Prepared { complete: true }),
            Some(DestState::Prepared { complete: true })
        );
        assert_eq!(from_view(PeerView::Discarded), Some(DestState::Absent));
        assert_eq!(from_view(PeerView::Unknown), None);
    }
}
